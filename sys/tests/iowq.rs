//! io-wq worker limits (`Ring::register_iowq_max_workers`) against the real kernel: limits
//! are set and read back, and with many operations blocked in io-wq at once the number of
//! the submitting thread's `iou-wrk-TID` threads stays at the cap, where without one it
//! grows with the blocked operations. Both classes: unbounded work (splices from an empty
//! pipe) and bounded work (opens of a FIFO that has no writer yet, forced into io-wq); and
//! an io-wq affinity keeps the workers on its CPUs.
//!
//! Each phase runs on its own thread: io-wq belongs to the submitting thread, names its
//! workers after it, and goes away with it, so the counts of one phase see no other's.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use ringwork_core::token::UserData;
use ringwork_sys::{IowqWorkers, OpenArgs, Ring, RingParams, SafeSqe, SqeFlags, Target};
use rustix::fs::{FileType, Mode, OFlags, CWD};
use rustix::io_uring::open_how;
use rustix::pipe::{pipe, SpliceFlags};

mod common;
use common::wait_cqes;

/// Operations blocked at once in each phase.
const BLOCKED: usize = 256;

/// The calling thread's io-wq workers: threads of this process named `iou-wrk-TID` (the
/// name cut to the 15 bytes a thread name holds).
fn my_workers() -> usize {
    let mut name = format!("iou-wrk-{}", rustix::thread::gettid().as_raw_nonzero());
    name.truncate(15);
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

/// Samples [`my_workers`] for `window`, or until `enough` are seen; returns the most seen.
fn most_workers(window: Duration, enough: usize) -> usize {
    let end = Instant::now() + window;
    let mut most = 0;
    while Instant::now() < end && most < enough {
        most = most.max(my_workers());
        std::thread::sleep(Duration::from_millis(10));
    }
    most
}

fn ring_with(cap: Option<IowqWorkers>) -> Ring {
    let mut ring = RingParams::new(BLOCKED as u32).build().unwrap();
    if let Some(cap) = cap {
        ring.register_iowq_max_workers(cap.bounded, cap.unbounded)
            .unwrap();
    }
    ring
}

/// Unbounded work: BLOCKED splices from one empty pipe into /dev/null (neither end a regular
/// file), each blocking a worker until the pipe's write end closes. Returns the most
/// workers seen while they were blocked.
fn blocked_splices(cap: Option<IowqWorkers>) -> usize {
    let mut ring = ring_with(cap);
    let (pr, pw) = pipe().unwrap();
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap();
    for i in 0..BLOCKED {
        let sqe = SafeSqe::splice(
            Target::Fd(pr.as_raw_fd()),
            None,
            Target::Fd(null.as_raw_fd()),
            None,
            4096,
            SpliceFlags::empty(),
        )
        .user_data(UserData(i as u64));
        ring.push_safe(sqe).unwrap();
    }
    ring.submit().unwrap();
    let most = match cap {
        Some(_) => most_workers(Duration::from_millis(500), usize::MAX),
        None => most_workers(Duration::from_secs(10), BLOCKED),
    };
    // End of file for every splice, blocked or still queued.
    drop(pw);
    for c in wait_cqes(&mut ring, BLOCKED) {
        assert_eq!(c.result(), Ok(0), "a splice from a pipe without writers");
    }
    most
}

/// Bounded work: BLOCKED opens (IOSQE_ASYNC, so each runs in io-wq, where an open waits)
/// of a FIFO for reading, each blocking a worker until a writer opens it. Work that names no
/// file is bounded. Returns the most workers seen while they were blocked.
fn blocked_fifo_opens(cap: Option<IowqWorkers>) -> usize {
    let mut ring = ring_with(cap);
    let path = std::env::temp_dir().join(format!(
        "ringwork-{}-fifo-{}",
        std::process::id(),
        rustix::thread::gettid().as_raw_nonzero()
    ));
    let _ = std::fs::remove_file(&path);
    rustix::fs::mknodat(CWD, &path, FileType::Fifo, Mode::RUSR | Mode::WUSR, 0).unwrap();
    let mut how = open_how::default();
    how.flags = u64::from((OFlags::RDONLY | OFlags::CLOEXEC).bits());
    let path_bytes = path.as_os_str().as_encoded_bytes();
    for i in 0..BLOCKED {
        let sqe = SafeSqe::openat2(CWD.as_raw_fd(), path_bytes, how, None, OpenArgs::new())
            .unwrap()
            .flags(SqeFlags::ASYNC)
            .user_data(UserData(i as u64));
        ring.push_safe(sqe).unwrap();
    }
    ring.submit().unwrap();
    let most = match cap {
        Some(_) => most_workers(Duration::from_millis(500), usize::MAX),
        // Uncapped, bounded work may have min(SQ size, 4 × CPUs) workers: at least 4.
        None => most_workers(Duration::from_secs(10), 4),
    };
    // A writer lets every open for reading through, blocked or still queued.
    let writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for c in wait_cqes(&mut ring, BLOCKED) {
        assert!(c.result().is_ok(), "open of the FIFO: {:?}", c.result());
        let mut args = ring.take_open_args(c.user_data()).unwrap();
        drop(args.take_fd());
    }
    drop(writer);
    let _ = std::fs::remove_file(&path);
    most
}

fn on_own_thread(f: impl FnOnce() -> usize + Send + 'static) -> usize {
    std::thread::spawn(f).join().unwrap()
}

#[test]
fn limits_are_set_and_read_back() {
    on_own_thread(|| {
        let mut ring = RingParams::new(8).build().unwrap();
        let defaults = ring.register_iowq_max_workers(0, 0).unwrap();
        assert!(
            defaults.bounded > 0 && defaults.unbounded > 0,
            "a new ring's thread has io-wq and its default limits: {defaults:?}"
        );
        let previous = ring.register_iowq_max_workers(3, 5).unwrap();
        assert_eq!(previous, defaults, "setting returns the limits before");
        assert_eq!(
            ring.register_iowq_max_workers(0, 0).unwrap(),
            IowqWorkers {
                bounded: 3,
                unbounded: 5
            }
        );
        // 0 leaves one limit alone.
        ring.register_iowq_max_workers(0, 7).unwrap();
        assert_eq!(
            ring.register_iowq_max_workers(0, 0).unwrap(),
            IowqWorkers {
                bounded: 3,
                unbounded: 7
            }
        );
        0
    });
}

#[test]
fn limits_above_i32_max_are_refused_before_the_kernel() {
    let mut ring = RingParams::new(8).build().unwrap();
    assert!(matches!(
        ring.register_iowq_max_workers(u32::MAX, 0),
        Err(ringwork_sys::Error::InvalidConfig(_))
    ));
}

// One test for the counts: phases must not overlap (each counts only its own thread's
// workers, but a machine busy creating 256 threads slows the others' sampling).
#[test]
fn a_cap_holds_the_worker_threads_where_without_one_they_grow() {
    let cap = IowqWorkers {
        bounded: 2,
        unbounded: 4,
    };

    let uncapped = on_own_thread(|| blocked_splices(None));
    let capped = on_own_thread(move || blocked_splices(Some(cap)));
    eprintln!("unbounded work: {uncapped} workers without a cap, {capped} with {cap:?}");
    assert!(
        capped <= cap.unbounded as usize,
        "unbounded: {capped} workers under a cap of {}",
        cap.unbounded
    );
    assert!(capped >= 1, "the blocked splices ran in io-wq");
    assert!(
        uncapped > 4 * cap.unbounded as usize,
        "unbounded without a cap: only {uncapped} workers for {BLOCKED} blocked splices"
    );

    let uncapped = on_own_thread(|| blocked_fifo_opens(None));
    let capped = on_own_thread(move || blocked_fifo_opens(Some(cap)));
    eprintln!("bounded work: {uncapped} workers without a cap, {capped} with {cap:?}");
    assert!(
        capped <= cap.bounded as usize,
        "bounded: {capped} workers under a cap of {}",
        cap.bounded
    );
    assert!(capped >= 1, "the blocked opens ran in io-wq");
    assert!(
        uncapped > cap.bounded as usize,
        "bounded without a cap: only {uncapped} workers for {BLOCKED} blocked opens"
    );
}

/// The CPUs a thread may run on, as /proc/self/task/TID/status lists them ("0-1", "1").
fn cpus_allowed(task: &std::path::Path) -> String {
    std::fs::read_to_string(task.join("status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn an_affinity_keeps_the_workers_on_its_cpus() {
    on_own_thread(|| {
        let allowed = rustix::thread::sched_getaffinity(None).unwrap();
        let cpu = (0..rustix::thread::CpuSet::MAX_CPU)
            .rev()
            .find(|&c| allowed.is_set(c))
            .unwrap();
        let mut ring = RingParams::new(8).build().unwrap();
        assert!(matches!(
            ring.register_iowq_affinity(&[]),
            Err(ringwork_sys::Error::InvalidConfig(_))
        ));
        ring.register_iowq_affinity(&[cpu]).unwrap();
        let (pr, pw) = pipe().unwrap();
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        for i in 0..4 {
            let sqe = SafeSqe::splice(
                Target::Fd(pr.as_raw_fd()),
                None,
                Target::Fd(null.as_raw_fd()),
                None,
                4096,
                SpliceFlags::empty(),
            )
            .user_data(UserData(i));
            ring.push_safe(sqe).unwrap();
        }
        ring.submit().unwrap();
        assert_eq!(most_workers(Duration::from_secs(10), 4), 4);
        let mut name = format!("iou-wrk-{}", rustix::thread::gettid().as_raw_nonzero());
        name.truncate(15);
        let mut checked = 0;
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let task = task.unwrap().path();
            let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
            if comm.trim_end() == name {
                assert_eq!(cpus_allowed(&task), cpu.to_string(), "{}", task.display());
                checked += 1;
            }
        }
        assert_eq!(checked, 4);
        drop(pw);
        wait_cqes(&mut ring, 4);
        0
    });
}
