//! Measurement helpers shared by every benchmark: latency summaries from HDR histograms,
//! process CPU time from /proc, and the machine facts every report starts with.

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

/// CPU time a process has used: the sum of its threads' run time from
/// /proc/PID/task/*/schedstat (nanoseconds, exact), or where that is missing (no
/// CONFIG_SCHEDSTATS) user + system time from /proc/PID/stat in clock ticks.
///
/// Ticks are sampled (a thread is charged the whole 10 ms tick if it runs when the tick
/// fires): on a loaded machine a server sharing its CPU with other work was charged nothing,
/// or double, over a 4 s window. The run time is exact, but covers only the threads alive when
/// it is read: measure servers whose threads (io-wq workers and SQPOLL pollers included) live
/// through the window.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    run_time(pid).or_else(|| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parse_cpu_ticks(&stat).map(ticks_to_duration)
    })
}

/// Sum of every live thread's time on a CPU.
fn run_time(pid: u32) -> Option<Duration> {
    let mut total = Duration::ZERO;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        // A thread that exited since the listing: its time is gone either way.
        if let Some(t) = task_run_time(&task.ok()?.path()) {
            total += t;
        }
    }
    Some(total)
}

/// The first field of a thread's `schedstat`: its time on a CPU (sum_exec_runtime), in ns.
pub(crate) fn task_run_time(task_dir: &std::path::Path) -> Option<Duration> {
    let line = std::fs::read_to_string(task_dir.join("schedstat")).ok()?;
    let ns = line.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// CPU time of this process.
pub fn self_cpu() -> Duration {
    // CLOCK_PROCESS_CPUTIME_ID: exact, and it keeps the time of threads that have exited
    // (the generator's load threads are joined before it is read).
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn ticks_to_duration(ticks: u64) -> Duration {
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz)
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // After the name: field 3 (state) is index 0, so utime (14) is index 11, stime index 12.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPUs online, read from /sys (not the affinity mask, which the benchmarks narrow by pinning).
pub fn cpu_count() -> usize {
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT.get_or_init(|| {
        // "0-1" or "0,2-5": count the CPUs in each range.
        std::fs::read_to_string("/sys/devices/system/cpu/online")
            .ok()
            .and_then(|list| {
                list.trim()
                    .split(',')
                    .map(|r| match r.split_once('-') {
                        Some((a, b)) => {
                            Some(b.parse::<usize>().ok()? - a.parse::<usize>().ok()? + 1)
                        }
                        None => r.parse::<usize>().ok().map(|_| 1),
                    })
                    .sum::<Option<usize>>()
            })
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    })
}

/// One line describing the machine: kernel, CPUs, and what the figures should be read with.
pub fn machine_line() -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "kernel {}, {} CPUs",
        ringwork_sys::kernel_release(),
        cpu_count()
    );
    if let Ok(cpu) = std::fs::read_to_string("/proc/cpuinfo") {
        if let Some(model) = cpu.lines().find_map(|l| l.strip_prefix("model name")) {
            let _ = write!(s, " ({})", model.trim_start_matches([' ', '\t', ':']));
        }
    }
    s
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
    fn cpu_ticks_skip_names_with_spaces_and_parens() {
        let line = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 111 222 0 0 20 0 1 0 100 0";
        assert_eq!(parse_cpu_ticks(line), Some(333));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn own_cpu_time_is_readable() {
        // Burn a little CPU so that at least the parse path sees a real line.
        assert!(process_cpu(std::process::id()).is_some());
    }

    #[test]
    fn run_time_is_the_threads_exact_cpu_time() {
        use rustix::time::{clock_gettime, ClockId};
        let thread_cpu = || {
            let t = clock_gettime(ClockId::ThreadCPUTime);
            Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
        };
        let me = std::path::PathBuf::from(format!(
            "/proc/self/task/{}",
            rustix::thread::gettid().as_raw_nonzero()
        ));
        let before = task_run_time(&me).expect("schedstat on this kernel");
        let cpu0 = thread_cpu();
        // Spin until this thread has had 20 ms on a CPU, however busy the machine is.
        let mut x = 0u64;
        while thread_cpu() - cpu0 < Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let by_clock = thread_cpu() - cpu0;
        let by_schedstat = task_run_time(&me).unwrap() - before;
        // Both read the same counter (sum_exec_runtime): equal to well under a tick.
        let diff = by_clock.abs_diff(by_schedstat);
        assert!(
            diff < Duration::from_millis(2),
            "{by_clock:?} vs {by_schedstat:?}"
        );
        assert!(run_time(std::process::id()).unwrap() >= by_schedstat);
    }

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
