#!/usr/bin/env bash
# Long connection-churn run by hand: 100,000 connect/request/close cycles per backend against
# ringwork-echo and ringwork-files (clean closes, resets via SO_LINGER 0, server-side closes),
# then checks that each server's fd count is back at its idle baseline and its RSS grew by
# less than 2 MiB. It runs the churn tests of tests/tests/faults.rs with
# RINGWORK_CHURN_CYCLES (default here 100000; the test suite uses 5,000).
#
# Usage: bench/churn.sh [CYCLES]        (from anywhere in the repository)
#   --release is used so that the servers, not the debug build, set the pace; per-backend
#   fd/RSS figures are printed. Loopback only; client source addresses are spread over
#   127.0.0.0/8 so that TIME_WAIT does not exhaust ports.
set -euo pipefail
cd "$(dirname "$0")/.."
cycles="${1:-100000}"
# The test finds the servers beside its own executable: build them in the same profile.
cargo build --release -p ringwork-echo -p ringwork-files
RINGWORK_CHURN_CYCLES="$cycles" cargo test --release -p ringwork-e2e --test faults \
    -- --nocapture --test-threads 1 churn_returns_to_baseline
