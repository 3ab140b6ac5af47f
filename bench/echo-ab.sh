#!/usr/bin/env bash
# A/B of two ringwork-echo configurations, side by side in one run: for each round, start the
# server with flags A, load it, stop it; then the same with flags B; alternate for ROUNDS
# rounds so that machine noise spreads over both. Server: one worker pinned to CPU 1;
# generator (`ringwork-bench echo`): pinned to CPU 0. Prints one line per run (messages/s,
# p99, server CPU per message, server RSS) and the server's `stats:` line.
#
# Usage: bench/echo-ab.sh "FLAGS_A" "FLAGS_B" [SIZE] [CONNS] [DEPTH] [ROUNDS] [SECONDS]
#   e.g. bench/echo-ab.sh "" "--bundle" 4096 50 8 3 4
# ECHO_A / ECHO_B name other server binaries for A and B (default: this tree's release build),
# e.g. ECHO_A=/tmp/before/ringwork-echo bench/echo-ab.sh "" "" 64 50 1 3 4 for a before/after.
# Release build; loopback only; each run bounded by SECONDS (+1 s warm-up).
set -euo pipefail
cd "$(dirname "$0")/.."
a="$1"; b="$2"; size="${3:-64}"; conns="${4:-50}"; depth="${5:-1}"; rounds="${6:-3}"; secs="${7:-4}"
cargo build --release -q -p ringwork-echo -p ringwork-bench
bin=target/release
log=$(mktemp)
pid=
# A server must not outlive the script (a stale one on a reused port would take connections).
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -f "$log"' EXIT
run() {
    local flags="$1" label="$2" server="$3"
    # Port 0: the kernel picks a free port, the server prints it.
    # shellcheck disable=SC2086 # flags are words on purpose
    taskset -c 1 "$server" --listen 127.0.0.1:0 --threads 1 $flags >"$log" 2>&1 &
    pid=$!
    local addr=
    for _ in $(seq 50); do
        addr=$(sed -n 's/^ringwork-echo listening on \([^ ]*\) .*/\1/p' "$log")
        [ -n "$addr" ] && break
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "server did not start: $(cat "$log")" >&2; exit 1; }
    local out
    out=$(taskset -c 0 "$bin/ringwork-bench" echo --addr "$addr" --size "$size" \
        --conns "$conns" --depth "$depth" --duration "$secs" --warmup 1 --server-pid "$pid" 2>&1) \
        || echo "ringwork-bench failed: $out" >&2
    local rss
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    kill -TERM "$pid"; wait "$pid" || true
    pid=
    echo "== $label [$flags] size=$size conns=$conns depth=$depth rss_kib=$rss"
    echo "$out" | grep -E '^\| [0-9]' | head -1
    grep "^stats:" "$log" || true
}
echo "| msgs/s | MB/s | p50 µs | p95 µs | p99 µs | p99.9 µs | max µs | server CPU µs/msg | server syscalls/msg | server io_uring_enter/msg | client CPU s | errors | reconnects |"
for r in $(seq "$rounds"); do
    run "$a" "A$r" "${ECHO_A:-$bin/ringwork-echo}"
    run "$b" "B$r" "${ECHO_B:-$bin/ringwork-echo}"
done
