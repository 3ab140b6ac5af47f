#!/usr/bin/env bash
# What live metrics cost ringwork-files: requests/s (wrk, keep-alive, one 4 KiB file) in three
# configurations, alternated per round so that machine noise spreads over all three:
#   off      no --metrics-listen
#   on       --metrics-listen, nobody scrapes (the workers' publishing alone)
#   scraped  --metrics-listen, and curl fetches /metrics every second during the run
# The order rotates every round. Server: one worker, the whole process (metrics thread included) pinned to CPU 1; wrk and
# the scraper on CPU 0. Prints one line per run and the load average before each round.
#
# Usage: bench/metrics-cost.sh [ROUNDS] [SECONDS] [CONNS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"; secs="${2:-10}"; conns="${3:-50}"
cargo build --release -q -p ringwork-files
bin=target/release/ringwork-files
root=$(mktemp -d)
out=$(mktemp)
pid=; scraper=
trap '[ -n "$scraper" ] && kill "$scraper" 2>/dev/null; [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$root" "$out"' EXIT
head -c 4096 /dev/urandom >"$root/f.bin"
cat "$root/f.bin" >/dev/null
# utime + stime of process $1, in clock ticks.
cpu_ticks() {
    awk '{print $14 + $15}' "/proc/$1/stat"
}
run() {
    local label="$1"; shift
    taskset -c 1 "$bin" --listen 127.0.0.1:0 --threads 1 "$@" "$root" >"$out" 2>&1 &
    pid=$!
    local url=
    for _ in $(seq 100); do
        url=$(grep -o 'listening on http://[0-9.:]*/' "$out" | cut -d' ' -f3 || true)
        [ -n "$url" ] && break
        sleep 0.05
    done
    local metrics
    metrics=$(grep -o 'http://[0-9.:]*/metrics' "$out" || true)
    if [ "$label" = scraped ]; then
        (while sleep 1; do taskset -c 0 curl -s -o /dev/null "$metrics"; done) &
        scraper=$!
    fi
    local before after report rps total
    before=$(cpu_ticks "$pid")
    report=$(taskset -c 0 wrk -t1 -c"$conns" -d"${secs}s" "${url}f.bin")
    after=$(cpu_ticks "$pid")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$report")
    total=$(awk '/requests in/ {print $1}' <<<"$report")
    if [ -n "$scraper" ]; then kill "$scraper"; wait "$scraper" 2>/dev/null || true; scraper=; fi
    local requests=
    [ -n "$metrics" ] && requests=$(curl -s "$metrics" | awk '/^ringwork_files_request_duration_seconds_count/ {print $2}')
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
    # Server CPU per request (user + system, all its threads), in microseconds.
    local cpu_us=$(( (after - before) * 1000000 / $(getconf CLK_TCK) / total ))
    printf -v cpu "%d.%02d" "$cpu_us" $(( ((after - before) * 100000000 / $(getconf CLK_TCK) / total) % 100 ))
    echo "$label req/s=$rps cpu_us/req=$cpu requests=$total${requests:+ scraped_requests=$requests}"
}
# Each round starts with the next configuration, so that none always goes first.
configs=(off on scraped)
for r in $(seq "$rounds"); do
    echo "round $r, load average $(cut -d' ' -f1-3 /proc/loadavg)"
    for i in 0 1 2; do
        case "${configs[$(((i + r) % 3))]}" in
            off) run off ;;
            on) run on --metrics-listen 127.0.0.1:0 ;;
            scraped) run scraped --metrics-listen 127.0.0.1:0 ;;
        esac
    done
done
