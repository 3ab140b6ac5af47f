//! What /proc says about a process: its CPU time, its resident memory, its open descriptors.
//!
//! Readers of a process that has exited return `None` (or nothing): a caller measuring a
//! server decides whether that is an error. Parsing is split from reading so that the odd
//! lines (a command name with spaces and parentheses) are tested without a process.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// CPU time a process has used: the sum of its threads' run time from
/// /proc/PID/task/*/schedstat (nanoseconds, exact), or where that is missing (no
/// CONFIG_SCHEDSTATS) user + system time from /proc/PID/stat in clock ticks.
///
/// Ticks are sampled (a thread is charged the whole 10 ms tick if it runs when the tick
/// fires): on a loaded machine a server sharing its CPU with other work was charged nothing,
/// or double, over a 4 s window. The run time is exact, but covers only the threads alive when
/// it is read: measure servers whose threads (io-wq workers and SQPOLL pollers included) live
/// through the window.
pub fn cpu_time(pid: u32) -> Option<Duration> {
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

/// The first field of a thread's `schedstat` (`task_dir` is /proc/PID/task/TID): its time on
/// a CPU (sum_exec_runtime), in ns.
pub fn task_run_time(task_dir: &Path) -> Option<Duration> {
    let line = std::fs::read_to_string(task_dir.join("schedstat")).ok()?;
    let ns = line.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
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

/// Resident memory of `pid` in KiB: VmRSS of /proc/PID/status, the page-cache pages of the
/// files it maps included (what `ps` and `top` show).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// Private resident memory of `pid` in KiB: RssAnon of /proc/PID/status (heap, stacks,
/// anonymous mappings such as chunk buffers). Not VmRSS: that also counts the page-cache
/// pages of files the process maps (ringwork-files sends large cached files from a mapping),
/// which are the page cache's, shared, and reclaimable, not the process' growth.
pub fn private_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "RssAnon")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    parse_status_kib(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        field,
    )
}

/// The value of a `FIELD:  N kB` line of a /proc/PID/status text, in KiB.
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What each open descriptor of `pid` refers to (the links of /proc/PID/fd: a path,
/// `socket:[INODE]`, `pipe:[INODE]`, `anon_inode:[io_uring]`...); empty once it has exited.
pub fn fd_targets(pid: u32) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .collect()
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
        assert!(cpu_time(std::process::id()).is_some());
    }

    #[test]
    fn run_time_is_the_threads_exact_cpu_time() {
        use rustix::time::{clock_gettime, ClockId};
        let thread_cpu = || {
            let t = clock_gettime(ClockId::ThreadCPUTime);
            Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
        };
        let me = PathBuf::from(format!(
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
    fn status_fields_parse() {
        let status = "Name:\tnginx\nVmPeak:\t  20000 kB\nVmRSS:\t    5120 kB\nRssAnon:\t  900 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(5120));
        assert_eq!(parse_status_kib(status, "RssAnon"), Some(900));
        assert_eq!(parse_status_kib(status, "Vm"), None);
        assert_eq!(parse_status_kib("Name: x\n", "VmRSS"), None);
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        assert!(private_rss_kib(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn own_descriptors_are_listed() {
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let mine = fd_targets(std::process::id());
        assert!(mine.iter().any(|t| t.starts_with("/proc")), "{mine:?}");
        drop(file);
    }
}
