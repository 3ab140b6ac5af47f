//! Live metrics, the logic: a latency histogram with fixed buckets, the tally of answered
//! requests a file service keeps, the Prometheus text exposition (format 0.0.4) they are
//! read in, and the answer to a scraper's request.
//!
//! Workers count into plain values here ([`Histogram`], [`RequestTally`]); publishing them
//! to another thread and serving the endpoint is `ringwork_sys::metrics`'. Nothing here reads
//! a clock: a request's duration comes in as a number of microseconds.
//!
//! What it deliberately does not do: quantiles (Prometheus computes them from the buckets),
//! labels beyond a status code, or any metric type but counter, gauge and histogram.

use core::fmt::{self, Write};

use crate::http::{parse_request, HttpError, Limits, Method, Parsed, Status};

/// Upper bounds of the latency buckets, in microseconds (a last, unbounded bucket follows):
/// roughly three per decade from 25 µs to 10 s, as Prometheus' client libraries space theirs.
pub const LATENCY_BOUNDS_US: [u64; 18] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Buckets of a [`Histogram`]: one per bound and the unbounded one (`le="+Inf"`).
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// Durations counted in fixed buckets ([`LATENCY_BOUNDS_US`]), with their sum.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Histogram {
    /// Durations per bucket (not cumulative): `counts[i]` those at most bound `i` and above
    /// bound `i - 1`; the last, those above every bound.
    pub counts: [u64; LATENCY_BUCKETS],
    /// The durations' sum, in microseconds.
    pub sum_us: u64,
}

impl Histogram {
    /// Counts one duration of `us` microseconds.
    pub fn record(&mut self, us: u64) {
        // Most durations are short: the first bounds are looked at first.
        let ix = LATENCY_BOUNDS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        self.counts[ix] += 1;
        self.sum_us = self.sum_us.wrapping_add(us);
    }

    /// Durations counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl core::ops::AddAssign<&Histogram> for Histogram {
    fn add_assign(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(o.counts) {
            *a += b;
        }
        self.sum_us = self.sum_us.wrapping_add(o.sum_us);
    }
}

/// One answered request, as counters see it: from `HttpConn::take_answered`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Answered {
    /// The status answered.
    pub status: u16,
    /// Body bytes sent (none for HEAD, 304 and 416).
    pub body_bytes: u64,
    /// Microseconds from the turn of the loop that completed the request's head to the one
    /// that saw its last byte handed to the kernel (the times the driver passed in).
    pub latency_us: u32,
}

/// Status codes a [`RequestTally`] counts by name, in [`Status::ALL`]'s order; any other is
/// counted as `other` (none is answered today).
const STATUS_SLOTS: usize = Status::ALL.len() + 1;

/// Answered requests, by status, with their body bytes and their durations.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RequestTally {
    /// Requests per status: `by_status[i]` answered [`Status::ALL`]`[i]`, the last any other.
    pub by_status: [u64; STATUS_SLOTS],
    /// Body bytes of the answers.
    pub body_bytes: u64,
    /// How long each took ([`Answered::latency_us`]).
    pub latency: Histogram,
}

impl Default for RequestTally {
    fn default() -> Self {
        Self {
            by_status: [0; STATUS_SLOTS],
            body_bytes: 0,
            latency: Histogram::default(),
        }
    }
}

impl RequestTally {
    /// Counts one answered request.
    pub fn record(&mut self, a: &Answered) {
        let ix = Status::ALL
            .iter()
            .position(|s| s.code() == a.status)
            .unwrap_or(Status::ALL.len());
        self.by_status[ix] += 1;
        self.body_bytes += a.body_bytes;
        self.latency.record(u64::from(a.latency_us));
    }

    /// Requests answered.
    pub fn requests(&self) -> u64 {
        self.by_status.iter().sum()
    }

    /// Each status code with its count, `0` standing for any code not in [`Status::ALL`].
    pub fn codes(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        Status::ALL
            .iter()
            .map(|s| s.code())
            .chain([0])
            .zip(self.by_status.iter().copied())
    }
}

/// Writes metrics in Prometheus' text exposition format (version 0.0.4): each family's
/// `# HELP` and `# TYPE` lines, then its samples, every name behind `prefix`.
pub struct Exposition<'a, W: Write> {
    out: &'a mut W,
    prefix: &'a str,
}

impl<'a, W: Write> Exposition<'a, W> {
    /// Metrics written to `out`, their names behind `prefix` (`ringwork_files_`).
    pub fn new(out: &'a mut W, prefix: &'a str) -> Self {
        Self { out, prefix }
    }

    fn family(&mut self, name: &str, kind: &str, help: &str) -> fmt::Result {
        let p = self.prefix;
        writeln!(self.out, "# HELP {p}{name} {help}")?;
        writeln!(self.out, "# TYPE {p}{name} {kind}")
    }

    /// A counter (only ever grows while the process lives).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        self.family(name, "counter", help)?;
        writeln!(self.out, "{}{name} {value}", self.prefix)
    }

    /// A gauge (a level: goes up and down).
    pub fn gauge(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        self.family(name, "gauge", help)?;
        writeln!(self.out, "{}{name} {value}", self.prefix)
    }

    /// A counter with one label: a sample per `(label value, count)`.
    pub fn labelled_counter<'v>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'v str, u64)>,
    ) -> fmt::Result {
        self.family(name, "counter", help)?;
        for (v, n) in values {
            writeln!(self.out, "{}{name}{{{label}=\"{v}\"}} {n}", self.prefix)?;
        }
        Ok(())
    }

    /// A histogram of durations, in seconds: cumulative `_bucket{le=..}` samples, `_sum`
    /// and `_count` (the `+Inf` bucket's, so the two always agree).
    pub fn histogram_seconds(&mut self, name: &str, help: &str, h: &Histogram) -> fmt::Result {
        self.family(name, "histogram", help)?;
        let p = self.prefix;
        let mut cumulative = 0;
        for (bound, n) in LATENCY_BOUNDS_US.iter().zip(h.counts) {
            cumulative += n;
            writeln!(
                self.out,
                "{p}{name}_bucket{{le=\"{}\"}} {cumulative}",
                Seconds(*bound)
            )?;
        }
        cumulative += h.counts[LATENCY_BOUNDS_US.len()];
        writeln!(self.out, "{p}{name}_bucket{{le=\"+Inf\"}} {cumulative}")?;
        writeln!(self.out, "{p}{name}_sum {}", Seconds(h.sum_us))?;
        writeln!(self.out, "{p}{name}_count {cumulative}")
    }
}

/// Microseconds written as seconds, with no trailing zeros (`0.00025`, `1`, `2.5`).
struct Seconds(u64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, mut frac) = (self.0 / 1_000_000, self.0 % 1_000_000);
        write!(f, "{whole}")?;
        if frac == 0 {
            return Ok(());
        }
        let mut digits = 6;
        while frac % 10 == 0 {
            frac /= 10;
            digits -= 1;
        }
        write!(f, ".{frac:0digits$}")
    }
}

/// The path metrics are served at.
pub const METRICS_PATH: &str = "/metrics";

/// What to answer a scraper's request with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Scrape {
    /// No complete head yet: read more (within the endpoint's limits).
    Partial,
    /// `GET /metrics` (or `HEAD`: the head only): 200 with the metrics.
    Metrics {
        /// HEAD: no body.
        head_only: bool,
    },
    /// Anything else worth an answer, with this status (404 for another path, 405 for
    /// another method, 400 for garbage); the connection closes after it.
    Refuse(Status),
}

/// What a scraper's request, received so far into `buf`, asks for. A query string is
/// ignored (`/metrics?x` is `/metrics`).
pub fn scrape(buf: &[u8]) -> Scrape {
    let limits = Limits::default();
    let request = match parse_request(buf, &limits) {
        Ok(Parsed::Partial) => return Scrape::Partial,
        Ok(Parsed::Complete { request, .. }) => request,
        Err(HttpError::HeadTooLarge) => return Scrape::Refuse(Status::HeaderFieldsTooLarge),
        Err(_) => return Scrape::Refuse(Status::BadRequest),
    };
    let head_only = match request.method {
        Method::Get => false,
        Method::Head => true,
        Method::Other => return Scrape::Refuse(Status::MethodNotAllowed),
    };
    let path = request.target.split('?').next().unwrap_or_default();
    if path == METRICS_PATH {
        Scrape::Metrics { head_only }
    } else {
        Scrape::Refuse(Status::NotFound)
    }
}

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    #[test]
    fn a_duration_lands_in_the_first_bucket_that_holds_it() {
        let mut h = Histogram::default();
        for us in [0, 25, 26, 1_000, 10_000_000, 10_000_001] {
            h.record(us);
        }
        assert_eq!(h.counts[0], 2, "0 and 25 are at most 25");
        assert_eq!(h.counts[1], 1, "26");
        assert_eq!(h.counts[5], 1, "1000 is at most 1 ms");
        assert_eq!(h.counts[LATENCY_BOUNDS_US.len() - 1], 1, "10 s");
        assert_eq!(h.counts[LATENCY_BOUNDS_US.len()], 1, "over 10 s");
        assert_eq!(h.count(), 6);
        assert_eq!(h.sum_us, 25 + 26 + 1_000 + 10_000_000 + 10_000_001);
    }

    #[test]
    fn seconds_are_written_without_trailing_zeros() {
        let s = |us| alloc::format!("{}", Seconds(us));
        assert_eq!(s(25), "0.000025");
        assert_eq!(s(250_000), "0.25");
        assert_eq!(s(1_000_000), "1");
        assert_eq!(s(2_500_000), "2.5");
        assert_eq!(s(0), "0");
    }

    #[test]
    fn the_tally_counts_by_status_and_other() {
        let mut t = RequestTally::default();
        let a = |status| Answered {
            status,
            body_bytes: 10,
            latency_us: 30,
        };
        t.record(&a(200));
        t.record(&a(404));
        t.record(&a(404));
        t.record(&a(999));
        let codes: alloc::vec::Vec<_> = t.codes().filter(|c| c.1 > 0).collect();
        assert_eq!(codes, [(200, 1), (404, 2), (0, 1)]);
        assert_eq!(t.requests(), 4);
        assert_eq!(t.body_bytes, 40);
        assert_eq!(t.latency.count(), 4);
    }

    #[test]
    fn a_histogram_is_cumulative_and_its_count_is_the_inf_bucket() {
        let mut h = Histogram::default();
        h.record(30);
        h.record(20_000_000);
        let mut out = String::new();
        let mut e = Exposition::new(&mut out, "rw_");
        e.histogram_seconds("seconds", "How long.", &h).unwrap();
        e.counter("total", "Things.", 7).unwrap();
        assert!(out.starts_with("# HELP rw_seconds How long.\n# TYPE rw_seconds histogram\n"));
        assert!(
            out.contains("rw_seconds_bucket{le=\"0.000025\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("rw_seconds_bucket{le=\"0.00005\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("rw_seconds_bucket{le=\"10\"} 1\n"), "{out}");
        assert!(out.contains("rw_seconds_bucket{le=\"+Inf\"} 2\n"), "{out}");
        assert!(out.contains("rw_seconds_sum 20.00003\n"), "{out}");
        assert!(out.contains("rw_seconds_count 2\n"), "{out}");
        assert!(
            out.ends_with("# TYPE rw_total counter\nrw_total 7\n"),
            "{out}"
        );
    }

    #[test]
    fn a_scraper_gets_metrics_only_at_the_metrics_path() {
        assert_eq!(scrape(b"GET /metr"), Scrape::Partial);
        assert_eq!(
            scrape(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Scrape::Metrics { head_only: false }
        );
        assert_eq!(
            scrape(b"HEAD /metrics?name[]=x HTTP/1.0\r\n\r\n"),
            Scrape::Metrics { head_only: true }
        );
        assert_eq!(
            scrape(b"GET / HTTP/1.1\r\nHost: m\r\n\r\n"),
            Scrape::Refuse(Status::NotFound)
        );
        assert_eq!(
            scrape(b"POST /metrics HTTP/1.1\r\nHost: m\r\n\r\n"),
            Scrape::Refuse(Status::MethodNotAllowed)
        );
        assert_eq!(
            scrape(b"\x16\x03\x01garbage\r\n\r\n"),
            Scrape::Refuse(Status::BadRequest)
        );
        let big = alloc::vec![b'a'; Limits::default().max_head_bytes + 1];
        assert!(matches!(scrape(&big), Scrape::Refuse(_)));
    }
}
