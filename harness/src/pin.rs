//! CPU affinity: which CPUs there are, and pinning a thread or every thread of a process to
//! one (what `taskset -c CPU` does, through sched_setaffinity).
//!
//! Which CPU a server or a load generator gets is the caller's decision; this module only
//! carries it out.

use rustix::process::Pid;
use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

/// CPUs online, read from /sys (not the affinity mask, which pinning narrows); read once.
pub fn online_cpus() -> usize {
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT.get_or_init(|| {
        std::fs::read_to_string("/sys/devices/system/cpu/online")
            .ok()
            .and_then(|list| count_cpu_list(&list))
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    })
}

/// The number of CPUs in a kernel CPU list such as "0-1" or "0,2-5".
fn count_cpu_list(list: &str) -> Option<usize> {
    list.trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => Some(b.parse::<usize>().ok()? - a.parse::<usize>().ok()? + 1),
            None => r.parse::<usize>().ok().map(|_| 1),
        })
        .sum()
}

/// The CPUs the calling thread may run on now, lowest first (`[0]` when the kernel will not
/// say).
pub fn allowed_cpus() -> Vec<usize> {
    match sched_getaffinity(None) {
        Ok(set) => (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
        Err(_) => vec![0],
    }
}

/// Pins thread `tid` (0: the calling thread) to `cpu`. Threads it starts afterwards inherit
/// the pinning.
pub fn pin_thread(tid: u32, cpu: usize) -> Result<(), String> {
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(Pid::from_raw(tid as i32), &set).map_err(|e| format!("pin to CPU {cpu}: {e}"))
}

/// Pins every thread `pid` has now to `cpu`; one that exits meanwhile is passed over.
pub fn pin_process(pid: u32, cpu: usize) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        if let Some(tid) = task.file_name().to_str().and_then(|s| s.parse().ok()) {
            let _ = pin_thread(tid, cpu);
        }
    }
}

/// Lets the calling thread (and threads it starts) run on every online CPU again.
pub fn unpin_thread() {
    let mut set = CpuSet::new();
    for cpu in 0..online_cpus() {
        set.set(cpu);
    }
    let _ = sched_setaffinity(None, &set);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_count() {
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0,2-5"), Some(5));
        assert_eq!(count_cpu_list("3"), Some(1));
        assert_eq!(count_cpu_list("x"), None);
        assert!(online_cpus() >= 1);
    }

    #[test]
    fn a_pinned_thread_runs_where_it_was_put_and_unpins() {
        std::thread::spawn(|| {
            let before = allowed_cpus();
            let cpu = *before.last().unwrap();
            pin_thread(0, cpu).unwrap();
            assert_eq!(allowed_cpus(), [cpu]);
            unpin_thread();
            // A cpuset may hold this process to fewer CPUs than are online: at least those.
            let after = allowed_cpus();
            assert!(
                before.iter().all(|c| after.contains(c)),
                "{before:?} {after:?}"
            );
        })
        .join()
        .unwrap();
    }
}
