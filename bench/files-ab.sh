#!/usr/bin/env bash
# A/B of two ringwork-files configurations (or binaries), side by side in one run: per round,
# start the server with A, load it with `ringwork-bench http`, stop it; then B; alternate for
# ROUNDS rounds so that machine noise spreads over both. Server: one worker pinned to CPU 1;
# generator pinned to CPU 0. Files: random content, made once in a temporary root and read
# once before the runs (warm page cache). Prints one table row per run (requests/s, latency,
# server CPU per request) and the server's `stats:` line.
#
# Usage: bench/files-ab.sh "FLAGS_A" "FLAGS_B" [FILE_KIB] [CONNS] [ROUNDS] [SECONDS]
#   e.g. bench/files-ab.sh "" "--disable links" 4 100 3 4
# FILES_A / FILES_B name other server binaries for A and B (default: this tree's release
# build), e.g. FILES_A=/tmp/before/ringwork-files bench/files-ab.sh "" "" for a before/after.
# FILES_SITE=DIR serves that directory instead of one file and requests all of it
# (`ringwork-bench http --site`; FILE_KIB is then ignored), uniformly or, with FILES_ZIPF=S,
# Zipf-distributed; e.g. `ringwork-bench site --out /tmp/site` makes one (read into the page
# cache before every run).
# Loopback only; each run bounded by SECONDS (+1 s warm-up).
set -euo pipefail
cd "$(dirname "$0")/.."
a="$1"; b="$2"; kib="${3:-4}"; conns="${4:-100}"; rounds="${5:-3}"; secs="${6:-4}"
cargo build --release -q -p ringwork-files -p ringwork-bench
bin=target/release
root=$(mktemp -d)
log=$(mktemp)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$root" "$log"' EXIT
# What the server serves: the temporary root with one file, or the site (never removed).
serve="$root"
if [ -n "${FILES_SITE:-}" ]; then
    serve="$FILES_SITE"
    load=(--site "$serve" ${FILES_ZIPF:+--zipf "$FILES_ZIPF"})
    what="site${FILES_ZIPF:+ zipf $FILES_ZIPF}"
else
    head -c $((kib * 1024)) /dev/urandom >"$root/f.bin"
    cat "$root/f.bin" >/dev/null
    load=()
    what="${kib}KiB"
fi
run() {
    local flags="$1" label="$2" server="$3"
    # The site's pages back in the page cache before every run (this VM gives them back
    # between runs), so that neither side of a pair starts colder.
    if [ -n "${FILES_SITE:-}" ]; then
        find "$serve" -type f -exec cat {} + >/dev/null
    fi
    # shellcheck disable=SC2086 # flags are words on purpose
    taskset -c 1 "$server" "$serve" --listen 127.0.0.1:0 --threads 1 $flags >"$log" 2>&1 &
    pid=$!
    local addr=
    for _ in $(seq 50); do
        addr=$(sed -n 's#^ringwork-files serving .*, listening on http://\([^/]*\)/.*#\1#p' "$log" | head -1)
        [ -n "$addr" ] && break
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "server did not start: $(cat "$log")" >&2; exit 1; }
    local out
    local url="http://$addr/f.bin"
    [ ${#load[@]} -gt 0 ] && url="http://$addr/"
    out=$(taskset -c 0 "$bin/ringwork-bench" http --url "$url" "${load[@]}" --conns "$conns" \
        --duration "$secs" --warmup 1 --server-pid "$pid" 2>&1) \
        || echo "ringwork-bench failed: $out" >&2
    local rss
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    kill -TERM "$pid"; wait "$pid" || true
    pid=
    echo "== $label [$flags] file=$what conns=$conns rss_kib=$rss"
    echo "$out" | grep -E '^\| [0-9]' | head -1
    grep "^stats:" "$log" || true
}
echo "| requests/s | MB/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/req | errors | connect errors | conns held |"
for r in $(seq "$rounds"); do
    run "$a" "A$r" "${FILES_A:-$bin/ringwork-files}"
    run "$b" "B$r" "${FILES_B:-$bin/ringwork-files}"
done
