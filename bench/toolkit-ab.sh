#!/usr/bin/env bash
# The toolkit's examples beside the same programs on tokio, side by side in one run:
# examples/uppercase against bench/peers tokio-uppercase (`ringwork-bench echo --lines`: every
# answer checked byte for byte, upper-cased), and examples/http-hello against
# tokio-http-hello (`ringwork-bench http`: every response's status and length checked).
# For each round, each server in turn: started pinned to CPU 1, loaded from CPU 0, stopped;
# alternated for ROUNDS rounds so that machine noise spreads over both. Prints the
# generator's table per run (requests or messages/s, p99, server CPU per request).
#
# Usage: bench/toolkit-ab.sh [ROUNDS] [SECONDS] [CONNS]
# Release builds (the peers' own workspace builds tokio from its lock file); loopback only;
# each run bounded by SECONDS (+1 s warm-up).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"; secs="${2:-4}"; conns="${3:-50}"
cargo build --release -q -p ringwork-examples -p ringwork-bench
(cd bench/peers && cargo build --release -q --locked)
bin=target/release
peers=bench/peers/target/release
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; true' EXIT
start() {
    local port="$1"; shift
    taskset -c 1 "$@" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "server did not start: $*" >&2
    exit 1
}
# SIGINT, then SIGKILL after 3 s (the tokio peers have no signal handling to drain with).
stop() {
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=
}
lines() {
    local label="$1"; shift
    start 7890 "$@"
    echo "== uppercase $label"
    taskset -c 0 "$bin/ringwork-bench" echo --lines --addr 127.0.0.1:7890 --size 64 \
        --conns "$conns" --depth 1 --duration "$secs" --warmup 1 --server-pid "$pid" | grep '^|'
    stop
}
hello() {
    local label="$1"; shift
    start 7891 "$@"
    echo "== http-hello $label"
    taskset -c 0 "$bin/ringwork-bench" http --url http://127.0.0.1:7891/ \
        --conns "$conns" --duration "$secs" --warmup 1 --server-pid "$pid" | grep '^|'
    stop
}
for r in $(seq "$rounds"); do
    echo "# round $r, $(cut -d' ' -f1-3 /proc/loadavg) load"
    lines ringwork "$bin/uppercase" 127.0.0.1:7890 uring
    lines tokio "$peers/tokio-uppercase" --listen 127.0.0.1:7890
    hello ringwork "$bin/http-hello" 127.0.0.1:7891 uring
    hello tokio "$peers/tokio-http-hello" --listen 127.0.0.1:7891
done
