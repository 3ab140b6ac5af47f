//! Measurement helpers shared by every benchmark: latency summaries from HDR histograms,
//! this process's CPU time, and the machine facts every report starts with. Another
//! process's CPU time is ringwork-harness's ([`ringwork_harness::proc::cpu_time`]).

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use hdrhistogram::Histogram;

/// A new latency histogram in nanoseconds, 1 ns to 60 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 95th percentile.
    pub p95_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Maximum.
    pub max_us: f64,
    /// Number of samples.
    pub count: u64,
}

impl Latency {
    /// Summarises `h` (recorded in nanoseconds).
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50_us: us(h.value_at_quantile(0.50)),
            p95_us: us(h.value_at_quantile(0.95)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            count: h.len(),
        }
    }

    /// JSON object text.
    pub fn json(&self) -> String {
        format!(
            "{{\"p50_us\":{:.1},\"p95_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"max_us\":{:.1},\"count\":{}}}",
            self.p50_us, self.p95_us, self.p99_us, self.p999_us, self.max_us, self.count
        )
    }
}

/// `n` per second over `elapsed`.
pub fn per_sec(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Microseconds of `cpu` per unit of work, when the CPU time is known.
pub fn cpu_us_per(cpu: Option<Duration>, units: u64) -> Option<f64> {
    cpu.map(|c| c.as_secs_f64() * 1e6 / units.max(1) as f64)
}

/// CPU time of this process.
pub fn self_cpu() -> Duration {
    // CLOCK_PROCESS_CPUTIME_ID: exact, and it keeps the time of threads that have exited
    // (the generator's load threads are joined before it is read).
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// One line describing the machine: kernel, CPUs, and what the figures should be read with.
pub fn machine_line() -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "kernel {}, {} CPUs",
        ringwork_sys::kernel_release(),
        ringwork_harness::pin::online_cpus()
    );
    if let Ok(cpu) = std::fs::read_to_string("/proc/cpuinfo") {
        if let Some(model) = cpu.lines().find_map(|l| l.strip_prefix("model name")) {
            let _ = write!(s, " ({})", model.trim_start_matches([' ', '\t', ':']));
        }
    }
    s
}

/// The 1-minute load average: how much other work shared the CPUs.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The median of repeated measurements and how far they spread.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// The middle value (the mean of the two middle ones for an even count).
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

impl Spread {
    /// Of `values`; None when there are none.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => return None,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    /// (max - min) / median, in percent: how much the runs disagreed.
    pub fn range_pct(&self) -> f64 {
        (self.max - self.min) / self.median.abs().max(1e-12) * 100.0
    }
}

/// "±N%", half the range around the median; "-" for a single run.
pub fn spread_cell(s: &Spread, runs: usize) -> String {
    if runs < 2 {
        "-".into()
    } else {
        format!("±{:.0}%", s.range_pct() / 2.0)
    }
}

/// The index of the median run of `values` (the lower middle one for an even count), so that
/// a report can show that run's other figures beside the median.
pub fn median_index(values: &[f64]) -> Option<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    idx.get(values.len().saturating_sub(1) / 2).copied()
}

/// Formats a count with thousands separators, for tables people read.
pub fn thousands(n: f64) -> String {
    let whole = n.round() as u64;
    let digits = whole.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `perf stat` of a process's syscalls over `window`, started now, in a thread that joins to
/// (all syscalls, io_uring_enter calls). None when perf is not installed.
pub fn perf_syscalls(
    pid: u32,
    window: Duration,
) -> Option<std::thread::JoinHandle<Option<(u64, u64)>>> {
    Command::new("perf").arg("--version").output().ok()?;
    Some(std::thread::spawn(move || {
        let out = Command::new("perf")
            .args([
                "stat",
                "-x,",
                "-e",
                "raw_syscalls:sys_enter",
                "-e",
                "syscalls:sys_enter_io_uring_enter",
                "-p",
                &pid.to_string(),
                "--",
                "sleep",
                &format!("{:.3}", window.as_secs_f64()),
            ])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stderr);
        let count = |event: &str| {
            text.lines()
                .find(|l| l.contains(event))
                .and_then(|l| l.split(',').next())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Some((
            count("raw_syscalls:sys_enter")?,
            count("sys_enter_io_uring_enter").unwrap_or(0),
        ))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_from_known_samples() {
        let mut h = latency_histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let l = Latency::from_histogram(&h);
        assert_eq!(l.count, 1000);
        assert!((l.p50_us - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_us - 990.0).abs() < 2.0, "{l:?}");
        assert!((l.max_us - 1000.0).abs() < 1.0, "{l:?}");
        assert!(l.json().contains("\"count\":1000"));
    }

    #[test]
    fn medians_and_spreads() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert!((s.range_pct() - 100.0).abs() < 1e-9);
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(Spread::of(&[7.0]).unwrap().range_pct(), 0.0);
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(median_index(&[30.0, 10.0, 20.0]), Some(2));
        assert_eq!(
            median_index(&[40.0, 10.0, 20.0, 30.0]),
            Some(2),
            "lower middle"
        );
        assert_eq!(median_index(&[5.0]), Some(0));
        assert_eq!(median_index(&[]), None);
        assert_eq!(spread_cell(&s, 3), "±50%");
        assert_eq!(spread_cell(&s, 1), "-");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.4), "1,234,567");
    }
}
