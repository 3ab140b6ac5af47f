//! What the worker loop publishes for the metrics endpoint ([`crate::metrics`]), in which
//! order, and how a stream server's sums are written as Prometheus text.
//!
//! A worker's values go in a fixed order: the loop's own (`put_loop`: connections open,
//! accepted, refused), then its engine's ([`Engine::publish`]): a stream server's are
//! [`put_stream`]'s, the file engines' are `files::live`'s. Whoever writes a part reads it
//! back in the same order ([`Values::take`]) to render it.

use std::fmt::Write;

use ringwork_core::metrics::Exposition;

use super::{Engine, StreamStats};
use crate::metrics::{Slot, PUBLISH_EVERY, VALUES};

/// A worker's values, written (or read back) in order.
pub struct Values<'a> {
    values: &'a mut [u64],
    at: usize,
}

impl<'a> Values<'a> {
    /// Values written into (or read from) `values`, from its start.
    pub fn new(values: &'a mut [u64]) -> Self {
        Self { values, at: 0 }
    }

    /// Appends `v` (past the slot's end, dropped: a debug build stops there).
    pub fn put(&mut self, v: u64) {
        debug_assert!(self.at < self.values.len(), "more values than a slot holds");
        if let Some(slot) = self.values.get_mut(self.at) {
            *slot = v;
        }
        self.at += 1;
    }

    /// The next value, read back in the order it was put.
    pub fn take(&mut self) -> u64 {
        let v = self.values.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        v
    }

    /// Values put (or taken) so far.
    pub fn len(&self) -> usize {
        self.at
    }

    /// Nothing put or taken yet.
    pub fn is_empty(&self) -> bool {
        self.at == 0
    }
}

/// Publishes a worker's values into its slot, at most once every [`PUBLISH_EVERY`].
pub(super) struct Publisher<'a> {
    slot: Option<&'a Slot>,
    /// The loop's clock at the last publication.
    last_ms: Option<u64>,
    /// A turn ended since the last publication: something may be unpublished.
    owed: bool,
}

impl<'a> Publisher<'a> {
    pub(super) fn new(slot: Option<&'a Slot>) -> Self {
        Self {
            slot,
            last_ms: None,
            owed: false,
        }
    }

    /// How soon the loop must wake to publish what it owes.
    pub(super) fn wake(&self) -> Option<std::time::Duration> {
        self.owed.then_some(PUBLISH_EVERY)
    }

    /// The end of a turn at `now_ms`: publishes unless the last publication was this
    /// millisecond (the loop then wakes within [`Publisher::wake`] to do it).
    pub(super) fn turn_ended<E: Engine>(
        &mut self,
        now_ms: u64,
        engine: &E,
        stats: &StreamStats,
        open: usize,
    ) {
        if self.slot.is_none() {
            return;
        }
        let every = PUBLISH_EVERY.as_millis() as u64;
        if self.last_ms.is_some_and(|last| now_ms < last + every) {
            self.owed = true;
            return;
        }
        self.last_ms = Some(now_ms);
        self.publish(engine, stats, open);
    }

    /// Publishes now.
    pub(super) fn publish<E: Engine>(&mut self, engine: &E, stats: &StreamStats, open: usize) {
        let Some(slot) = self.slot else {
            return;
        };
        self.owed = false;
        let mut buf = [0u64; VALUES];
        let mut values = Values::new(&mut buf);
        put_loop(stats, open, &mut values);
        engine.publish(stats, &mut values);
        let n = values.len();
        slot.publish(&buf[..n]);
    }
}

/// The loop's own values: connections open now, accepted, refused.
fn put_loop(stats: &StreamStats, open: usize, out: &mut Values<'_>) {
    out.put(open as u64);
    out.put(stats.conns);
    out.put(stats.rejected);
}

/// Writes the loop's values (read back from `values`) as Prometheus metrics.
pub fn render_loop<W: Write>(
    values: &mut Values<'_>,
    e: &mut Exposition<'_, W>,
) -> std::fmt::Result {
    e.gauge("connections_open", "Connections open now.", values.take())?;
    e.counter(
        "connections_accepted_total",
        "Connections accepted and served.",
        values.take(),
    )?;
    e.counter(
        "connections_refused_total",
        "Connections closed as soon as accepted: at the connection limit, or while stopping.",
        values.take(),
    )
}

/// A stream engine's values: what [`StreamStats`] counts beyond the loop's.
pub fn put_stream(stats: &StreamStats, out: &mut Values<'_>) {
    for v in stream_values(stats) {
        out.put(v);
    }
}

/// [`StreamStats`]' counters in [`STREAM_METRICS`]' order.
fn stream_values(s: &StreamStats) -> [u64; STREAM_METRICS.len()] {
    [
        s.receives,
        s.bytes_received,
        s.bytes,
        s.nobufs,
        s.enters,
        s.submitted,
        s.completions,
        s.stale,
        s.refused,
        s.cq_overflows,
        s.busy_retries,
        s.bundles,
        s.buf_more,
        s.zc_notifs,
        s.zc_copied,
    ]
}

/// Name and help of each stream counter, in the order [`put_stream`] writes them.
pub const STREAM_METRICS: [(&str, &str); 15] = [
    (
        "receives_total",
        "Receive completions that brought bytes (a message each, for a client that waits for each answer).",
    ),
    ("received_bytes_total", "Bytes received."),
    ("sent_bytes_total", "Bytes sent."),
    (
        "nobufs_total",
        "Receives that found no receive buffer (ENOBUFS) and waited for one.",
    ),
    (
        "enters_total",
        "io_uring_enter calls (epoll: epoll_wait calls).",
    ),
    ("submitted_total", "SQEs submitted (epoll: 0)."),
    ("completions_total", "CQEs harvested (epoll: events)."),
    (
        "stale_completions_total",
        "Completions for a connection closed since, ignored.",
    ),
    (
        "refused_events_total",
        "Events a connection's state machine refused (a bug; each is said on stderr).",
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
        "bundles_total",
        "Receive completions that filled more than one buffer (--bundle).",
    ),
    (
        "buf_more_total",
        "Receives into a buffer the kernel has not used up (--incremental).",
    ),
    ("zc_notifs_total", "SEND_ZC notifications (--zerocopy)."),
    (
        "zc_copied_total",
        "SEND_ZC notifications saying the kernel copied after all.",
    ),
];

/// A stream server's metrics from the workers' summed values (`values`, as
/// [`crate::metrics::Board::sum`] gives them), every name behind `prefix`.
pub fn render_stream(values: &mut [u64], prefix: &str, out: &mut String) {
    let mut values = Values::new(values);
    let mut e = Exposition::new(out, prefix);
    // Writing into a String cannot fail.
    let _ = render_loop(&mut values, &mut e);
    for (name, help) in STREAM_METRICS {
        let _ = e.counter(name, help, values.take());
    }
}

/// `ringwork-echo` as a metric name prefix: `ringwork_echo_`.
pub fn prefix(name: &str) -> String {
    let mut p: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    p.push('_');
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a stream worker publishes comes back under the names it belongs to.
    #[test]
    fn stream_values_come_back_under_their_names() {
        let stats = StreamStats {
            conns: 7,
            rejected: 1,
            bytes: 300,
            bytes_received: 300,
            receives: 3,
            nobufs: 2,
            ..StreamStats::default()
        };
        let mut buf = [0u64; VALUES];
        let mut v = Values::new(&mut buf);
        put_loop(&stats, 4, &mut v);
        put_stream(&stats, &mut v);
        let mut out = String::new();
        render_stream(&mut buf, "rw_", &mut out);
        for line in [
            "rw_connections_open 4\n",
            "rw_connections_accepted_total 7\n",
            "rw_connections_refused_total 1\n",
            "rw_receives_total 3\n",
            "rw_received_bytes_total 300\n",
            "rw_sent_bytes_total 300\n",
            "rw_nobufs_total 2\n",
        ] {
            assert!(out.contains(line), "{line:?} in {out}");
        }
        assert_eq!(prefix("ringwork-echo"), "ringwork_echo_");
    }
}
