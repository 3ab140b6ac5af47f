//! The ring's in-flight count and `Ring::quiesce` on the real kernel: the count across
//! single-shot, multishot, SEND_ZC, link chains, cancels and the ring's internal SQEs, and
//! quiescing rings with work armed on sockets, queued to io-wq, or unprovable.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use ringwork_core::buf::BufGroup;
use ringwork_core::errno::RawErrno;
use ringwork_core::token::UserData;
use ringwork_sys::sqe::KernelTimespec;
use ringwork_sys::{
    Cqe, LegacyFeatures, ProvideMode, Ring, RingParams, Sqe, SqeFlags, Target,
    PROVIDE_BUFFERS_USER_DATA, QUIESCE_CANCEL_USER_DATA,
};
use rustix::io_uring::IoringTimeoutFlags;

mod common;
use common::{tcp_pair, TempFile};

/// Waits (5 s at most per round) until `n` more CQEs are harvested; returns them.
fn harvest(ring: &mut Ring, n: usize) -> Vec<Cqe> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        ring.submit_and_wait_timeout(1, Duration::from_secs(5))
            .unwrap();
        let before = got.len();
        got.extend(ring.completions());
        assert!(got.len() > before, "no completion within 5 s; have {got:?}");
    }
    got
}

const GROUP: BufGroup = BufGroup(5);

#[test]
fn nops_count_in_until_harvested() {
    let mut ring = RingParams::new(8).build().unwrap();
    assert_eq!(ring.in_flight(), 0);
    for i in 0..3 {
        // SAFETY: NOPs name no memory.
        unsafe { ring.push(&Sqe::nop().user_data(UserData(i))).unwrap() };
    }
    assert_eq!(
        ring.in_flight(),
        3,
        "pushed, not yet submitted, still counts"
    );
    ring.submit_and_wait(3).unwrap();
    assert_eq!(ring.in_flight(), 3, "completed but not harvested");
    let first = ring.completions().next().unwrap();
    assert_eq!(first.res(), 0);
    assert_eq!(ring.in_flight(), 2);
    assert_eq!(ring.completions().count(), 2);
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn multishot_recv_counts_once_until_its_last_cqe() {
    let (mut client, server) = tcp_pair();
    let mut ring = RingParams::new(8).build().unwrap();
    ring.add_provided_buffers(GROUP, 8, 64, ProvideMode::Ring)
        .unwrap();
    let recv = Sqe::recv_select(Target::Fd(server.as_raw_fd()), GROUP, true).user_data(UserData(1));
    // SAFETY: buffer selection: the kernel writes only into the ring's own buffers.
    unsafe { ring.push(&recv).unwrap() };
    ring.submit().unwrap();
    for round in 0..3 {
        client.write_all(&[round; 10]).unwrap();
        let mut c = harvest(&mut ring, 1).swap_remove(0);
        assert_eq!(c.result(), Ok(10));
        assert!(c.more(), "still armed: {c:?}");
        assert_eq!(ring.in_flight(), 1, "an armed multishot is one operation");
        let selected = c.take_buffer().unwrap();
        let br = ring.buf_ring(GROUP).unwrap();
        let lease = br.take(selected).unwrap();
        br.recycle(lease);
        ring.publish_buffers(GROUP).unwrap();
    }
    // SAFETY: a cancel names no memory.
    unsafe {
        ring.push(&Sqe::cancel(UserData(1)).user_data(UserData(2)))
            .unwrap()
    };
    assert_eq!(ring.in_flight(), 2);
    let cqes = harvest(&mut ring, 2);
    let recv_end = cqes.iter().find(|c| c.user_data() == UserData(1)).unwrap();
    assert_eq!(recv_end.result(), Err(RawErrno::CANCELED));
    assert!(!recv_end.more());
    assert_eq!(
        ring.in_flight(),
        0,
        "cancel and its target both done: {cqes:?}"
    );
}

#[test]
fn send_zc_counts_until_its_notification() {
    let (mut client, server) = tcp_pair();
    let mut ring = RingParams::new(8).build().unwrap();
    let payload = vec![7u8; 1000];
    let sqe = Sqe::send_zc(
        Target::Fd(server.as_raw_fd()),
        payload.as_ptr(),
        1000,
        false,
        None,
    )
    .user_data(UserData(1));
    // SAFETY: `payload` outlives the notification harvested below.
    unsafe { ring.push(&sqe).unwrap() };
    let mut cqes = harvest(&mut ring, 1);
    let result = cqes.remove(0);
    assert!(!result.is_notification());
    assert_eq!(result.result(), Ok(1000));
    assert!(result.more(), "a notification follows a successful SEND_ZC");
    if cqes.is_empty() {
        assert_eq!(ring.in_flight(), 1, "the notification is still owed");
        let mut sink = vec![0u8; 1000];
        std::io::Read::read_exact(&mut client, &mut sink).unwrap();
        cqes.extend(harvest(&mut ring, 1));
    }
    assert_eq!(
        cqes.len(),
        1,
        "the notification, after the result: {cqes:?}"
    );
    assert!(cqes[0].is_notification(), "{cqes:?}");
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn link_chain_with_link_timeout_counts_every_member() {
    let (_client, server) = tcp_pair();
    let mut ring = RingParams::new(8).build().unwrap();
    let mut buf = [0u8; 16];
    let ts = KernelTimespec::from_duration(Duration::from_millis(10));
    let chain = [
        Sqe::recv(Target::Fd(server.as_raw_fd()), buf.as_mut_ptr(), 16).user_data(UserData(1)),
        Sqe::link_timeout(&ts, IoringTimeoutFlags::empty()).user_data(UserData(2)),
    ];
    // SAFETY: `buf` and `ts` outlive `harvest`, which reaps both CQEs.
    unsafe { ring.push_chain(&chain, false).unwrap() };
    // SAFETY: NOPs name no memory.
    unsafe {
        ring.push_chain(
            &[
                Sqe::nop().user_data(UserData(3)),
                Sqe::nop().user_data(UserData(4)),
                Sqe::nop().user_data(UserData(5)),
            ],
            true,
        )
        .unwrap()
    };
    assert_eq!(ring.in_flight(), 5);
    let cqes = harvest(&mut ring, 5);
    assert_eq!(ring.in_flight(), 0, "{cqes:?}");
}

#[test]
fn report_usage_probe_leaves_the_count_as_it_was() {
    let mut ring = RingParams::new(8).build().unwrap();
    // SAFETY: NOPs name no memory.
    unsafe { ring.push(&Sqe::nop().user_data(UserData(1))).unwrap() };
    let _ = ring.send_zc_reports_usage().unwrap();
    // The probe met the NOP's CQE while waiting and kept it in the stash: harvested, as far as
    // the kernel is concerned, and still the caller's to see.
    assert_eq!(ring.in_flight(), 0, "the probe's own SQE and CQEs balance");
    let cqes: Vec<_> = ring.completions().collect();
    assert_eq!(cqes.len(), 1, "{cqes:?}");
    assert_eq!(cqes[0].user_data(), UserData(1));
}

#[test]
fn own_provide_buffers_sqes_never_count() {
    let mut ring = RingParams::new(8).build().unwrap();
    ring.add_provided_buffers(GROUP, 4, 64, ProvideMode::Sqe)
        .unwrap();
    assert!(ring.skips_provide_success());
    assert_eq!(ring.in_flight(), 0, "completes at submission, silently");
    ring.submit().unwrap();
    assert_eq!(ring.in_flight(), 0);
    assert!(ring.quiesce(Duration::from_millis(100)).unwrap());
}

/// The PROVIDE_BUFFERS fallback without IOSQE_CQE_SKIP_SUCCESS (kernels before 5.17, forced
/// here): the success CQE is the ring's, and a wait for one completion waits for a real one
/// instead of returning on it.
#[test]
fn provide_buffers_without_skip_success_are_consumed_by_the_ring() {
    let legacy = LegacyFeatures {
        no_cqe_skip: true,
        ..Default::default()
    };
    let mut ring = RingParams::new(8).legacy_features(legacy).build().unwrap();
    assert!(!ring.skips_provide_success());
    ring.add_provided_buffers(GROUP, 4, 64, ProvideMode::Sqe)
        .unwrap();
    assert_eq!(ring.stats().skip_success, 0, "no SKIP_SUCCESS flag sent");
    assert_eq!(ring.in_flight(), 1, "its CQE is owed");
    let ts = KernelTimespec::from_duration(Duration::from_millis(30));
    // SAFETY: `ts` outlives the wait below, which reaps the timeout's CQE.
    unsafe {
        ring.push(&Sqe::timeout(&ts, 0, IoringTimeoutFlags::empty()).user_data(UserData(7)))
            .unwrap()
    };
    let t = Instant::now();
    ring.submit_and_wait(1).unwrap();
    let cqes: Vec<_> = ring.completions().collect();
    assert!(
        t.elapsed() >= Duration::from_millis(20),
        "returned on the PROVIDE_BUFFERS completion after {:?}",
        t.elapsed()
    );
    assert_eq!(cqes.len(), 1, "{cqes:?}");
    assert_eq!(cqes[0].user_data(), UserData(7));
    assert_eq!(cqes[0].result(), Err(RawErrno::TIME));
    assert!(cqes
        .iter()
        .all(|c| c.user_data() != PROVIDE_BUFFERS_USER_DATA));
    assert_eq!(ring.in_flight(), 0);
    assert_eq!(ring.stats().completions, 2, "both CQEs harvested");
}

#[test]
fn quiesce_cancels_an_armed_recv_and_keeps_its_completion() {
    let (_client, server) = tcp_pair();
    let mut ring = RingParams::new(8).build().unwrap();
    assert!(
        ring.can_cancel_fd(),
        "IORING_ASYNC_CANCEL_ANY is Linux 5.19"
    );
    ring.add_provided_buffers(GROUP, 4, 64, ProvideMode::Ring)
        .unwrap();
    let recv = Sqe::recv_select(Target::Fd(server.as_raw_fd()), GROUP, true).user_data(UserData(1));
    // SAFETY: buffer selection: the kernel writes only into the ring's own buffers.
    unsafe { ring.push(&recv).unwrap() };
    ring.submit().unwrap();
    assert_eq!(ring.in_flight(), 1);
    let t = Instant::now();
    assert!(ring.quiesce(Duration::from_secs(2)).unwrap(), "idle");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(ring.in_flight(), 0);
    let cqes: Vec<_> = ring.completions().collect();
    assert_eq!(
        cqes.len(),
        1,
        "the recv's end, and not the cancel's own: {cqes:?}"
    );
    assert_eq!(cqes[0].user_data(), UserData(1));
    assert_eq!(cqes[0].result(), Err(RawErrno::CANCELED));
    assert!(cqes
        .iter()
        .all(|c| c.user_data() != QUIESCE_CANCEL_USER_DATA));
}

#[test]
fn quiesce_submits_what_was_only_pushed() {
    let mut ring = RingParams::new(8).build().unwrap();
    // SAFETY: NOPs name no memory.
    unsafe { ring.push(&Sqe::nop().user_data(UserData(1))).unwrap() };
    assert!(ring.quiesce(Duration::from_secs(1)).unwrap());
    let cqes: Vec<_> = ring.completions().collect();
    assert_eq!(cqes.len(), 1);
    assert_eq!(cqes[0].user_data(), UserData(1));
}

/// STATX always runs in io-wq: quiesce waits for it (done or cancelled, whichever the kernel
/// managed first) and hands its completion over.
#[test]
fn quiesce_waits_for_a_statx_in_io_wq() {
    let f = TempFile::with_pattern("quiesce-statx", 4096);
    let path = std::ffi::CString::new(f.path.as_os_str().as_encoded_bytes()).unwrap();
    let mut ring = RingParams::new(8).build().unwrap();
    let mut stx = Box::new(std::mem::MaybeUninit::<rustix::fs::Statx>::zeroed());
    let sqe = Sqe::statx(
        libc::AT_FDCWD,
        path.as_ptr().cast(),
        rustix::fs::AtFlags::empty(),
        rustix::fs::StatxFlags::SIZE,
        stx.as_mut_ptr(),
    )
    .user_data(UserData(1));
    // SAFETY: `path` and `stx` outlive the quiesce below, which reaps the CQE.
    unsafe { ring.push(&sqe).unwrap() };
    assert!(ring.quiesce(Duration::from_secs(2)).unwrap());
    assert_eq!(ring.in_flight(), 0);
    let cqes: Vec<_> = ring.completions().collect();
    assert_eq!(cqes.len(), 1, "{cqes:?}");
    match cqes[0].result() {
        Ok(0) => {
            // SAFETY: the kernel filled it: the statx succeeded.
            let stx = unsafe { stx.assume_init_ref() };
            assert_eq!(stx.stx_size, 4096);
        }
        Err(RawErrno::CANCELED) => {}
        other => panic!("statx: {other:?}"),
    }
}

/// An op that succeeded with IOSQE_CQE_SKIP_SUCCESS posts nothing: the ring cannot tell it
/// finished, and says so instead of claiming idle.
#[test]
fn quiesce_cannot_prove_a_skip_success_ring_idle() {
    // Dropping it will not prove it idle either: keep that wait short.
    let mut ring = RingParams::new(8)
        .teardown_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    // SAFETY: NOPs name no memory.
    unsafe {
        ring.push(
            &Sqe::nop()
                .flags(SqeFlags::CQE_SKIP_SUCCESS)
                .user_data(UserData(1)),
        )
        .unwrap()
    };
    let t = Instant::now();
    assert!(!ring.quiesce(Duration::from_millis(100)).unwrap());
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert_eq!(ring.in_flight(), 1);
    assert_eq!(ring.completions().count(), 0);
}

/// Without IORING_ASYNC_CANCEL_ANY (before 5.19, forced here) quiesce can only wait: an armed
/// recv on a quiet socket keeps the ring busy, and a drop would leak.
#[test]
fn without_cancel_any_quiesce_only_waits() {
    let (mut client, server) = tcp_pair();
    let legacy = LegacyFeatures {
        no_cancel_fd: true,
        ..Default::default()
    };
    let mut ring = RingParams::new(8).legacy_features(legacy).build().unwrap();
    assert!(!ring.can_cancel_fd());
    assert!(!ring.can_cancel_fd_fixed());
    let mut buf = [0u8; 16];
    let recv =
        Sqe::recv(Target::Fd(server.as_raw_fd()), buf.as_mut_ptr(), 16).user_data(UserData(1));
    // SAFETY: `buf` outlives the harvest below, which reaps the recv's CQE.
    unsafe { ring.push(&recv).unwrap() };
    assert!(!ring.quiesce(Duration::from_millis(100)).unwrap());
    assert_eq!(ring.in_flight(), 1);
    // What finishes by itself still ends it.
    client.write_all(b"hello").unwrap();
    assert!(ring.quiesce(Duration::from_secs(2)).unwrap());
    let cqes: Vec<_> = ring.completions().collect();
    assert_eq!(cqes.len(), 1);
    assert_eq!(cqes[0].result(), Ok(5));
}

/// Where the ring says cancel-by-fd works, one SQE ends every request on the socket.
#[test]
fn cancel_by_fd_where_supported() {
    let (_client, server) = tcp_pair();
    let mut ring = RingParams::new(8).build().unwrap();
    assert!(ring.can_cancel_fd());
    assert!(
        ring.can_cancel_fd_fixed(),
        "IORING_ASYNC_CANCEL_FD_FIXED is Linux 6.0"
    );
    let mut bufs = [[0u8; 16]; 2];
    for (i, b) in bufs.iter_mut().enumerate() {
        let recv = Sqe::recv(Target::Fd(server.as_raw_fd()), b.as_mut_ptr(), 16)
            .user_data(UserData(i as u64));
        // SAFETY: `bufs` outlives the harvest below, which reaps both recvs.
        unsafe { ring.push(&recv).unwrap() };
    }
    // SAFETY: a cancel names no memory.
    unsafe {
        ring.push(&Sqe::cancel_fd(Target::Fd(server.as_raw_fd())).user_data(UserData(9)))
            .unwrap()
    };
    let cqes = harvest(&mut ring, 3);
    let cancel = cqes.iter().find(|c| c.user_data() == UserData(9)).unwrap();
    assert_eq!(cancel.result(), Ok(2), "both recvs found: {cqes:?}");
    assert_eq!(ring.in_flight(), 0);
}
