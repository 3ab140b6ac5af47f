//! What a file engine publishes for the metrics endpoint ([`crate::metrics`]) after the
//! loop's values ([`crate::worker::live`]), and how a file server's sums are written as
//! Prometheus text: requests by status, their body bytes and durations, bytes on the
//! sockets, the open-file cache, and the engine's own counters.

use ringwork_core::filesvc::FileService;
use ringwork_core::metrics::{Exposition, Histogram, RequestTally, LATENCY_BUCKETS};

use super::FileStats;
use crate::worker::live::{render_loop, Values};

/// Writes a worker's file counters: its engine's (`stats`) and its file service's.
pub fn put_files(stats: &FileStats, svc: &FileService, out: &mut Values<'_>) {
    let tally = svc.tally();
    for v in tally.by_status {
        out.put(v);
    }
    out.put(tally.body_bytes);
    for v in tally.latency.counts {
        out.put(v);
    }
    out.put(tally.latency.sum_us);
    for v in counters(stats, svc) {
        out.put(v);
    }
    out.put(stats.cache_entries);
}

/// The plain counters, in [`COUNTERS`]' order.
fn counters(stats: &FileStats, svc: &FileService) -> [u64; COUNTERS.len()] {
    let (c, s, t) = (svc.cache_stats(), svc.stats(), svc.tls_stats());
    [
        stats.bytes_received,
        stats.bytes_sent,
        c.hits,
        c.misses,
        c.opened,
        c.evicted,
        c.expired,
        c.invalidated,
        c.revalidated,
        c.absent_hits,
        s.body_hits,
        s.chunk_waits,
        s.head_waits,
        stats.file_sends,
        stats.file_cold,
        stats.file_send_waits,
        stats.inline_lookups,
        stats.enters,
        stats.cq_overflows,
        stats.busy_retries,
        stats.link_cancels,
        stats.zc_notifs,
        stats.zc_copied,
        stats.refused,
        t.handshakes,
        t.failures,
        t.truncated,
    ]
}

/// Name and help of each plain counter, in the order [`put_files`] writes them.
pub const COUNTERS: [(&str, &str); 27] = [
    ("received_bytes_total", "Bytes received from clients (request heads)."),
    (
        "sent_bytes_total",
        "Bytes handed to the kernel for clients (heads and bodies).",
    ),
    (
        "open_file_cache_hits_total",
        "Lookups answered from a fresh open-file cache entry, with no system call.",
    ),
    (
        "open_file_cache_misses_total",
        "Lookups the open-file cache could not answer (the path was stat'ed).",
    ),
    (
        "open_file_cache_opens_total",
        "Files opened into the open-file cache.",
    ),
    (
        "open_file_cache_evictions_total",
        "Cached files closed to make room (or to free descriptors).",
    ),
    (
        "open_file_cache_inactive_expiries_total",
        "Cached files closed for being unused for --open-file-cache-inactive-ms.",
    ),
    (
        "open_file_cache_invalidations_total",
        "Cached files dropped because their path changed or vanished.",
    ),
    (
        "open_file_cache_revalidations_total",
        "Stats that found a cached file unchanged.",
    ),
    (
        "open_file_cache_absent_hits_total",
        "Lookups answered from a remembered absence (a missing precompressed sibling, mostly).",
    ),
    (
        "body_hits_total",
        "Reads answered from a cached file's bytes in memory.",
    ),
    (
        "chunk_waits_total",
        "Reads that waited for a chunk buffer (io_uring).",
    ),
    (
        "head_waits_total",
        "Head receives that found the provided buffer ring empty and waited (io_uring).",
    ),
    (
        "file_sends_total",
        "Body sends straight from the file (--sendfile), EAGAIN retries included.",
    ),
    (
        "file_cold_total",
        "Sends from the file declined because the next page was not in memory (io_uring).",
    ),
    (
        "file_send_waits_total",
        "Sends from the file that waited for room in the socket (io_uring, --file-send sendfile).",
    ),
    (
        "inline_lookups_total",
        "Misses whose stat and open were answered at once from the kernel's lookup cache (io_uring).",
    ),
    (
        "enters_total",
        "io_uring_enter calls (epoll: 0).",
    ),
    (
        "cq_overflows_total",
        "Times the completion queue was seen overflowed into the kernel's backlog.",
    ),
    (
        "busy_retries_total",
        "io_uring_enter calls refused with EBUSY and retried after reaping.",
    ),
    (
        "link_cancels_total",
        "Reads linked behind an open that failed, cancelled.",
    ),
    ("zc_notifs_total", "SEND_ZC notifications (--zerocopy)."),
    (
        "zc_copied_total",
        "SEND_ZC notifications saying the kernel copied after all.",
    ),
    (
        "refused_events_total",
        "Completions a connection refused as impossible in its state (a bug; each is said on stderr).",
    ),
    ("tls_handshakes_total", "TLS handshakes completed."),
    (
        "tls_failures_total",
        "TLS sessions that failed: records that are not TLS or do not decrypt, a failed handshake, a fatal alert from the client.",
    ),
    (
        "tls_truncated_total",
        "TLS connections the client ended without a close_notify after the handshake.",
    ),
];

/// A file server's metrics from the workers' summed values (`values`, as
/// [`crate::metrics::Board::sum`] gives them), every name behind `prefix`.
pub fn render_files(values: &mut [u64], prefix: &str, out: &mut String) {
    let mut values = Values::new(values);
    let mut e = Exposition::new(out, prefix);
    // Writing into a String cannot fail.
    let _ = render_loop(&mut values, &mut e);
    let mut tally = RequestTally::default();
    for v in tally.by_status.iter_mut() {
        *v = values.take();
    }
    tally.body_bytes = values.take();
    let mut latency = Histogram::default();
    for v in latency.counts.iter_mut().take(LATENCY_BUCKETS) {
        *v = values.take();
    }
    latency.sum_us = values.take();
    let labels: Vec<(String, u64)> = tally
        .codes()
        .map(|(code, n)| {
            let label = if code == 0 {
                "other".to_string()
            } else {
                code.to_string()
            };
            (label, n)
        })
        .collect();
    let _ = e.labelled_counter(
        "requests_total",
        "Requests answered in full, by status code (a response cut short is not counted).",
        "code",
        labels.iter().map(|(l, n)| (l.as_str(), *n)),
    );
    let _ = e.counter(
        "response_body_bytes_total",
        "Body bytes of the requests answered (none for HEAD, 304 and 416).",
        tally.body_bytes,
    );
    let _ = e.histogram_seconds(
        "request_duration_seconds",
        "From the loop turn that completed a request's head to the one that saw the last byte \
         of its response handed to the kernel (the turn's clock: see docs/METRICS.md).",
        &latency,
    );
    for (name, help) in COUNTERS {
        let _ = e.counter(name, help, values.take());
    }
    let _ = e.gauge(
        "open_file_cache_entries",
        "Files in the open-file caches (looked at every tick, at most 100 ms old).",
        values.take(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Board, VALUES};
    use ringwork_core::filecache::CacheConfig;
    use ringwork_core::filesvc::{FileSend, ServiceConfig};
    use std::time::Instant;

    fn service() -> FileService {
        FileService::new(ServiceConfig {
            cache: CacheConfig {
                entries: 1000,
                valid_ms: 1000,
                inactive_ms: 60_000,
                body_budget: 1 << 20,
                body_max: 65536,
                max_path: 4096,
            },
            chunks: 64,
            file_send: FileSend::Descriptor,
        })
    }

    /// What a file worker publishes comes back under the names it belongs to.
    #[test]
    fn file_values_come_back_under_their_names() {
        let stats = FileStats {
            bytes_received: 11,
            bytes_sent: 22,
            cache_entries: 3,
            refused: 1,
            ..FileStats::default()
        };
        let mut buf = [0u64; VALUES];
        let mut v = Values::new(&mut buf);
        for loop_value in [5, 6, 7] {
            v.put(loop_value);
        }
        put_files(&stats, &service(), &mut v);
        let mut out = String::new();
        render_files(&mut buf, "f_", &mut out);
        for line in [
            "f_connections_open 5\n",
            "f_connections_accepted_total 6\n",
            "f_connections_refused_total 7\n",
            "f_requests_total{code=\"200\"} 0\n",
            "f_requests_total{code=\"other\"} 0\n",
            "f_request_duration_seconds_count 0\n",
            "f_received_bytes_total 11\n",
            "f_sent_bytes_total 22\n",
            "f_refused_events_total 1\n",
            "f_open_file_cache_entries 3\n",
        ] {
            assert!(out.contains(line), "{line:?} in {out}");
        }
    }

    /// What a publication and a scrape cost (run in release: `cargo test --release -p
    /// ringwork-sys --lib publication_cost -- --ignored --nocapture`): a worker publishes at
    /// most 1,000 times a second, so 1 µs each would be 0.1% of its core.
    #[test]
    #[ignore = "a measurement: run in release"]
    fn publication_cost() {
        let (stats, svc, board) = (FileStats::default(), service(), Board::new(1));
        let n = 1_000_000u32;
        let started = Instant::now();
        for i in 0..n {
            let mut buf = [0u64; VALUES];
            let mut v = Values::new(&mut buf);
            for loop_value in [u64::from(i), 1, 2] {
                v.put(loop_value);
            }
            put_files(&stats, &svc, &mut v);
            let len = v.len();
            board.slot(0).publish(std::hint::black_box(&buf[..len]));
        }
        let publish = started.elapsed() / n;
        let started = Instant::now();
        let mut out = String::new();
        for _ in 0..1000 {
            out.clear();
            render_files(&mut board.sum(), "ringwork_files_", &mut out);
        }
        let scrape = started.elapsed() / 1000;
        // What every request adds (metrics on or off): its record into the tally.
        let mut tally = RequestTally::default();
        let started = Instant::now();
        for i in 0..n {
            let answered = ringwork_core::metrics::Answered {
                status: if i % 8 == 0 { 404 } else { 200 },
                body_bytes: 4096,
                latency_us: std::hint::black_box(i % 3000),
            };
            tally.record(std::hint::black_box(&answered));
        }
        let record = started.elapsed() / n;
        assert_eq!(tally.requests(), u64::from(n));
        println!(
            "publication: {publish:?}; scrape (sum and text): {scrape:?}; a request's record: {record:?}"
        );
        assert!(publish.as_micros() < 10, "{publish:?} per publication");
    }
}
