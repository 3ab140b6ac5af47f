//! Linked and drained SQEs against this machine's real io_uring: how a chain breaks (an error,
//! a short read), the idle-timeout pattern (recv + LINK_TIMEOUT), and IOSQE_IO_DRAIN ordering.
//! Every CQE of every chain is harvested and checked: a chain's cancelled tail still completes.

use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::time::Duration;

use ringwork_core::errno::RawErrno;
use ringwork_core::token::UserData;
use ringwork_sys::sqe::KernelTimespec;
use ringwork_sys::{Cqe, Ring, RingParams, Sqe, SqeFlags, Target};
use rustix::io_uring::IoringTimeoutFlags;

mod common;
use common::{tcp_pair, TempFile};

/// Waits for and returns exactly `n` CQEs, in the order the kernel posted them.
fn harvest(ring: &mut Ring, n: usize) -> Vec<Cqe> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        ring.submit_and_wait_timeout(1, Duration::from_secs(5))
            .unwrap();
        let before = got.len();
        got.extend(ring.completions());
        assert!(
            got.len() > before,
            "no completion within 5 s; have {got:?}, want {n}"
        );
    }
    assert_eq!(got.len(), n, "more completions than SQEs: {got:?}");
    got
}

fn result_of(cqes: &[Cqe], ud: u64) -> Result<u32, RawErrno> {
    cqes.iter()
        .find(|c| c.user_data() == UserData(ud))
        .unwrap_or_else(|| panic!("no CQE for user_data {ud}: {cqes:?}"))
        .result()
}

fn position_of(cqes: &[Cqe], ud: u64) -> usize {
    cqes.iter()
        .position(|c| c.user_data() == UserData(ud))
        .unwrap_or_else(|| panic!("no CQE for user_data {ud}: {cqes:?}"))
}

/// (a) The head of a chain fails (READ on fd -1: EBADF): both linked NOPs behind it complete
/// with ECANCELED, and nothing else of the chain runs.
#[test]
fn failed_head_cancels_the_rest_of_the_chain() {
    let mut ring = RingParams::new(8).build().unwrap();
    let mut buf = [0u8; 16];
    let chain = [
        Sqe::read(Target::Fd(-1), buf.as_mut_ptr(), 16, 0).user_data(UserData(1)),
        Sqe::nop().user_data(UserData(2)),
        Sqe::nop().user_data(UserData(3)),
    ];
    // SAFETY: `buf` outlives `harvest`, which reaps every CQE of the chain; NOPs name no memory.
    unsafe { ring.push_chain(&chain, false).unwrap() };
    let cqes = harvest(&mut ring, 3);
    assert_eq!(result_of(&cqes, 1), Err(RawErrno::BADF), "{cqes:?}");
    assert_eq!(result_of(&cqes, 2), Err(RawErrno::CANCELED), "{cqes:?}");
    assert_eq!(result_of(&cqes, 3), Err(RawErrno::CANCELED), "{cqes:?}");
}

/// The same chain with IOSQE_IO_HARDLINK: the failure does not break it.
#[test]
fn hard_link_survives_a_failed_head() {
    let mut ring = RingParams::new(8).build().unwrap();
    let mut buf = [0u8; 16];
    let chain = [
        Sqe::read(Target::Fd(-1), buf.as_mut_ptr(), 16, 0).user_data(UserData(1)),
        Sqe::nop().user_data(UserData(2)),
        Sqe::nop().user_data(UserData(3)),
    ];
    // SAFETY: as above.
    unsafe { ring.push_chain(&chain, true).unwrap() };
    let cqes = harvest(&mut ring, 3);
    assert_eq!(result_of(&cqes, 1), Err(RawErrno::BADF), "{cqes:?}");
    assert_eq!(result_of(&cqes, 2), Ok(0), "{cqes:?}");
    assert_eq!(result_of(&cqes, 3), Ok(0), "{cqes:?}");
}

/// A chain that does not fit the SQ is refused whole, not pushed in part.
#[test]
fn chain_larger_than_free_slots_is_refused_whole() {
    let mut ring = RingParams::new(2).build().unwrap();
    let chain = [Sqe::nop(), Sqe::nop(), Sqe::nop()];
    // SAFETY: NOPs name no memory.
    let r = unsafe { ring.push_chain(&chain, false) };
    assert!(matches!(r, Err(ringwork_sys::Error::SubmissionQueueFull)));
    assert_eq!(ring.sq_space(), 2, "nothing was pushed");
}

/// (b) A short read breaks its link: READ of 200 bytes from a pipe holding 100, linked to a
/// WRITE of the 200-byte buffer, reads 100 and the write is cancelled. Resubmitting exactly
/// the remainder (the READ of the last 100 bytes into the rest of the buffer, linked to the
/// same WRITE) succeeds once the pipe has the data, and the file holds all 200 bytes.
#[test]
fn short_read_breaks_the_link_and_the_remainder_succeeds() {
    let (read_end, write_end) = rustix::pipe::pipe().unwrap();
    let mut tmp = TempFile::with_pattern("short-read-link", 0);
    let out = &mut tmp.file;
    let payload: Vec<u8> = (0..200u32).map(|i| (i * 13 + 7) as u8).collect();
    rustix::io::write(&write_end, &payload[..100]).unwrap();

    let mut ring = RingParams::new(8).build().unwrap();
    let mut buf = vec![0u8; 200];
    let pipe = Target::Fd(read_end.as_raw_fd());
    let file = Target::Fd(out.as_raw_fd());
    let chain = [
        Sqe::read(pipe, buf.as_mut_ptr(), 200, 0).user_data(UserData(1)),
        Sqe::write(file, buf.as_ptr(), 200, 0).user_data(UserData(2)),
    ];
    // SAFETY: `buf` is neither moved nor touched until `harvest` has reaped both CQEs.
    unsafe { ring.push_chain(&chain, false).unwrap() };
    let cqes = harvest(&mut ring, 2);
    assert_eq!(result_of(&cqes, 1), Ok(100), "short read: {cqes:?}");
    assert_eq!(
        result_of(&cqes, 2),
        Err(RawErrno::CANCELED),
        "a short read fails the link: {cqes:?}"
    );
    assert_eq!(out.metadata().unwrap().len(), 0, "the write never ran");

    // Exactly the remainder, then the write again.
    rustix::io::write(&write_end, &payload[100..]).unwrap();
    let chain = [
        Sqe::read(pipe, buf[100..].as_mut_ptr(), 100, 0).user_data(UserData(3)),
        Sqe::write(file, buf.as_ptr(), 200, 0).user_data(UserData(4)),
    ];
    // SAFETY: as above.
    unsafe { ring.push_chain(&chain, false).unwrap() };
    let cqes = harvest(&mut ring, 2);
    assert_eq!(result_of(&cqes, 3), Ok(100), "{cqes:?}");
    assert_eq!(result_of(&cqes, 4), Ok(200), "{cqes:?}");
    assert_eq!(buf, payload);
    let mut written = Vec::new();
    out.rewind().unwrap();
    out.read_to_end(&mut written).unwrap();
    assert_eq!(written, payload);
}

/// (c) The idle-timeout pattern: a recv on a socket with no data, linked to a LINK_TIMEOUT.
/// The timer fires: the recv ends with ECANCELED, the timeout with ETIME.
#[test]
fn link_timeout_cancels_an_idle_recv() {
    let (_client, server) = tcp_pair();
    let mut ring = RingParams::new(8).build().unwrap();
    let mut buf = [0u8; 64];
    // Kept alive (and unmoved) until the timeout's CQE is reaped: the kernel reads it at
    // submission, but the contract is the CQE.
    let ts = KernelTimespec::from_duration(Duration::from_millis(50));
    let chain = [
        Sqe::recv(Target::Fd(server.as_raw_fd()), buf.as_mut_ptr(), 64).user_data(UserData(1)),
        Sqe::link_timeout(&ts, IoringTimeoutFlags::empty()).user_data(UserData(2)),
    ];
    let start = std::time::Instant::now();
    // SAFETY: `buf` and `ts` outlive `harvest`, which reaps both CQEs.
    unsafe { ring.push_chain(&chain, false).unwrap() };
    let cqes = harvest(&mut ring, 2);
    assert!(start.elapsed() >= Duration::from_millis(40), "fired early");
    assert_eq!(result_of(&cqes, 1), Err(RawErrno::CANCELED), "{cqes:?}");
    assert_eq!(result_of(&cqes, 2), Err(RawErrno::TIME), "{cqes:?}");
}

/// The other outcome of the same pattern: data arrives in time, the recv completes and the
/// timeout is cancelled (ECANCELED), well before it would have fired.
#[test]
fn link_timeout_is_cancelled_when_the_recv_completes() {
    let (mut client, server) = tcp_pair();
    let mut ring = RingParams::new(8).build().unwrap();
    let mut buf = [0u8; 64];
    let ts = KernelTimespec::from_duration(Duration::from_secs(10));
    let chain = [
        Sqe::recv(Target::Fd(server.as_raw_fd()), buf.as_mut_ptr(), 64).user_data(UserData(1)),
        Sqe::link_timeout(&ts, IoringTimeoutFlags::empty()).user_data(UserData(2)),
    ];
    // SAFETY: `buf` and `ts` outlive `harvest`, which reaps both CQEs.
    unsafe { ring.push_chain(&chain, false).unwrap() };
    ring.submit().unwrap();
    client.write_all(b"hello").unwrap();
    let start = std::time::Instant::now();
    let cqes = harvest(&mut ring, 2);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(result_of(&cqes, 1), Ok(5), "{cqes:?}");
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(result_of(&cqes, 2), Err(RawErrno::CANCELED), "{cqes:?}");
}

/// (d) IOSQE_IO_DRAIN: a NOP submitted after a 30 ms TIMEOUT completes before it, but the
/// same NOP with IO_DRAIN waits for the timeout, and a NOP after the drained one waits for it.
#[test]
fn drain_waits_for_everything_before_it() {
    let mut ring = RingParams::new(8).build().unwrap();
    let ts = KernelTimespec::from_duration(Duration::from_millis(30));
    let sqes = [
        Sqe::timeout(&ts, 0, IoringTimeoutFlags::empty()).user_data(UserData(1)),
        Sqe::nop().user_data(UserData(2)),
        Sqe::nop().flags(SqeFlags::IO_DRAIN).user_data(UserData(3)),
        Sqe::nop().user_data(UserData(4)),
    ];
    for sqe in &sqes {
        // SAFETY: `ts` outlives `harvest`, which reaps every CQE; NOPs name no memory.
        unsafe { ring.push(sqe).unwrap() };
    }
    let cqes = harvest(&mut ring, 4);
    assert_eq!(result_of(&cqes, 1), Err(RawErrno::TIME), "{cqes:?}");
    // The undrained NOP overtakes the timeout: the control.
    assert!(position_of(&cqes, 2) < position_of(&cqes, 1), "{cqes:?}");
    // The drained one does not, and neither does what follows it.
    assert!(position_of(&cqes, 3) > position_of(&cqes, 1), "{cqes:?}");
    assert!(position_of(&cqes, 4) > position_of(&cqes, 3), "{cqes:?}");
    for ud in 2..=4 {
        assert_eq!(result_of(&cqes, ud), Ok(0), "{cqes:?}");
    }
}

/// SEND_ZC over loopback TCP: the result CQE (F_MORE) and then, with the same user_data, the
/// notification (F_NOTIF); with REPORT_USAGE the notification says the kernel copied (loopback
/// always does). The peer gets the bytes.
#[test]
fn send_zc_result_then_notification() {
    let mut ring = RingParams::new(8).build().unwrap();
    if !ring
        .probe()
        .unwrap()
        .supports(rustix::io_uring::IoringOp::SendZc)
    {
        eprintln!("skipped: no IORING_OP_SEND_ZC (Linux 6.0) on this kernel");
        return;
    }
    let report = ring.send_zc_reports_usage().unwrap();
    let (mut client, server) = tcp_pair();
    let payload: Vec<u8> = (0..1000u32).map(|i| (i * 31) as u8).collect();
    let sqe = Sqe::send_zc(
        Target::Fd(server.as_raw_fd()),
        payload.as_ptr(),
        1000,
        report,
        None,
    )
    .user_data(UserData(9));
    // SAFETY: `payload` is not touched or dropped until both CQEs (the notification last)
    // are reaped by `harvest`.
    unsafe { ring.push(&sqe).unwrap() };
    let cqes = harvest(&mut ring, 2);
    assert!(
        cqes.iter().all(|c| c.user_data() == UserData(9)),
        "{cqes:?}"
    );
    let result = cqes.iter().find(|c| !c.is_notification()).unwrap();
    let notif = cqes.iter().find(|c| c.is_notification()).unwrap();
    assert_eq!(result.res(), 1000, "{cqes:?}");
    assert!(
        result.more(),
        "the result promises a notification: {cqes:?}"
    );
    assert!(!notif.more(), "{cqes:?}");
    if report {
        assert_ne!(
            notif.res() & rustix::io_uring::IORING_NOTIF_USAGE_ZC_COPIED,
            0,
            "loopback copies: {cqes:?}"
        );
    }
    let mut got = vec![0u8; 1000];
    client.read_exact(&mut got).unwrap();
    assert_eq!(got, payload);
}

/// The REPORT_USAGE probe leaves other completions for the caller, in order.
#[test]
fn report_usage_probe_keeps_other_completions() {
    let mut ring = RingParams::new(8).build().unwrap();
    for ud in 1..=3 {
        // SAFETY: NOPs name no memory.
        unsafe { ring.push(&Sqe::nop().user_data(UserData(ud))).unwrap() };
    }
    let reports = ring.send_zc_reports_usage().unwrap();
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy().into_owned();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().unwrap().parse().unwrap();
    let minor: u32 = parts.next().unwrap().parse().unwrap();
    assert_eq!(reports, (major, minor) >= (6, 2), "kernel {release}");
    let cqes = harvest(&mut ring, 3);
    let uds: Vec<u64> = cqes.iter().map(|c| c.user_data().0).collect();
    assert_eq!(uds, [1, 2, 3]);
}

/// OPENAT2 into registered-file slot 0, linked to a READ of slot 0: the read finds the file
/// the open just installed, because since Linux 5.18 a linked request's fixed file is looked
/// up when it is issued, not when it is submitted (before, it failed with EBADF). And when
/// the open fails (no such file), the linked read completes with ECANCELED and reads nothing.
#[test]
fn open_into_a_fixed_slot_linked_to_a_read_from_it() {
    use rustix::io_uring::open_how;
    let tmp = TempFile::with_pattern("open-read-link", 300);
    let dir = std::fs::File::open(tmp.path.parent().unwrap()).unwrap();
    let name = std::ffi::CString::new(tmp.path.file_name().unwrap().as_encoded_bytes()).unwrap();
    let missing = std::ffi::CString::new("ringwork-no-such-file-for-links").unwrap();
    let mut ring = RingParams::new(8).build().unwrap();
    ring.register_files_sparse(1).unwrap();
    let mut how = open_how::default();
    how.flags = u64::from(rustix::fs::OFlags::RDONLY.bits());
    how.resolve = rustix::fs::ResolveFlags::BENEATH;
    for (path, opened) in [(&name, true), (&missing, false), (&name, true)] {
        let mut buf = vec![0u8; 300];
        let chain = [
            Sqe::openat2(dir.as_raw_fd(), path.as_ptr().cast(), &how, Some(0))
                .user_data(UserData(1)),
            Sqe::read(Target::Fixed(0), buf.as_mut_ptr(), 300, 0).user_data(UserData(2)),
        ];
        // SAFETY: `path`, `how` and `buf` outlive `harvest`, which reaps both CQEs.
        unsafe { ring.push_chain(&chain, false).unwrap() };
        let cqes = harvest(&mut ring, 2);
        if opened {
            assert_eq!(result_of(&cqes, 1), Ok(0), "{cqes:?}");
            assert_eq!(result_of(&cqes, 2), Ok(300), "{cqes:?}");
            assert_eq!(buf, common::pattern(300));
            let close = Sqe::close(Target::Fixed(0)).user_data(UserData(3));
            // SAFETY: names no memory.
            unsafe { ring.push(&close).unwrap() };
            assert_eq!(result_of(&harvest(&mut ring, 1), 3), Ok(0));
        } else {
            assert_eq!(result_of(&cqes, 1), Err(RawErrno::NOENT), "{cqes:?}");
            assert_eq!(result_of(&cqes, 2), Err(RawErrno::CANCELED), "{cqes:?}");
            assert!(buf.iter().all(|&b| b == 0), "a cancelled read wrote");
        }
    }
}
