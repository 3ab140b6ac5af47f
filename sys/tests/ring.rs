//! ringwork-sys against this machine's real io_uring: no mocks.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

use ringwork_core::buf::{BufGroup, IncTracker};
use ringwork_core::errno::RawErrno;
use ringwork_core::token::UserData;
use ringwork_sys::{
    FixedBuffers, LegacyFeatures, ProvideMode, Ring, RingParams, Sqe, Target, TaskRun,
};
use rustix::io_uring::IoringOp;

mod common;
use common::{pattern, tcp_pair, TempFile};

#[test]
fn twenty_four_sqes_in_one_enter() {
    let f = TempFile::with_pattern("batch", 16 * 4096);
    let mut ring = RingParams::new(32).build().unwrap();
    let mut bufs = vec![vec![0u8; 4096]; 16];
    for i in 0..8u64 {
        // SAFETY: NOPs reference no memory.
        unsafe {
            ring.push(&Sqe::nop().user_data(UserData(1000 + i)))
                .unwrap()
        };
    }
    for (i, b) in bufs.iter_mut().enumerate() {
        let sqe = Sqe::read(
            Target::Fd(f.file.as_raw_fd()),
            b.as_mut_ptr(),
            4096,
            i as u64 * 4096,
        )
        .user_data(UserData(i as u64));
        // SAFETY: `bufs` outlives the wait below, which harvests every CQE.
        unsafe { ring.push(&sqe).unwrap() };
    }
    let before = ring.stats().enters;
    let submitted = ring.submit_and_wait(24).unwrap();
    assert_eq!(submitted, 24);
    assert_eq!(
        ring.stats().enters - before,
        1,
        "one io_uring_enter for all 24"
    );
    let mut seen: HashMap<u64, i32> = HashMap::new();
    while seen.len() < 24 {
        let got: Vec<_> = ring.completions().collect();
        if got.is_empty() {
            ring.submit_and_wait(1).unwrap();
        }
        for c in got {
            assert!(
                seen.insert(c.user_data().0, c.res()).is_none(),
                "duplicate CQE"
            );
        }
    }
    let want = pattern(16 * 4096);
    for i in 0..16u64 {
        assert_eq!(seen[&i], 4096);
        assert_eq!(
            bufs[i as usize],
            want[i as usize * 4096..(i as usize + 1) * 4096]
        );
    }
    for i in 0..8u64 {
        assert_eq!(seen[&(1000 + i)], 0);
    }
}

#[test]
fn read_fixed_write_fixed_round_trip() {
    let f = TempFile::with_pattern("fixed", 3 * 4096 + 100);
    let mut ring = RingParams::new(8).build().unwrap();
    ring.register_buffers(FixedBuffers::new(4, 4096).unwrap())
        .unwrap();
    let fd = Target::Fd(f.file.as_raw_fd());
    let want = pattern(3 * 4096 + 100);

    // Read the tail end (a short read: 100 bytes) into a fixed buffer.
    // The lease travels with the read (safe submission) and comes back with its CQE.
    let lease = ring.fixed_buffers().unwrap().acquire().unwrap();
    let id = lease.id();
    let sqe = ring
        .read_fixed(fd, lease, 0, 4096, 3 * 4096)
        .user_data(UserData(1));
    ring.push_safe(sqe).unwrap();
    assert_eq!(ring.owned_in_flight(), 1);
    ring.submit_and_wait(1).unwrap();
    let c = ring.completions().next().unwrap();
    assert_eq!(c.result(), Ok(100));
    assert_eq!(
        c.user_data(),
        UserData(1),
        "the caller's user_data comes back"
    );
    assert_eq!(ring.owned_in_flight(), 0);
    let lease = ring
        .take_lease(UserData(1))
        .expect("the lease comes back with the CQE");
    let fixed = ring.fixed_buffers().unwrap();
    let ptr = fixed.bytes_mut(&lease).as_mut_ptr();
    assert_eq!(&fixed.bytes(&lease)[..100], &want[3 * 4096..]);

    // Write a new pattern with WRITE_FIXED at offset 4096, read it back with plain pread.
    for (i, b) in fixed.bytes_mut(&lease).iter_mut().enumerate() {
        *b = (i % 13) as u8 ^ 0x5a;
    }
    let written = fixed.bytes(&lease).to_vec();
    let sqe = Sqe::write_fixed(fd, ptr, 4096, 4096, id.0).user_data(UserData(2));
    // SAFETY: the lease (held here, untouched until the CQE) keeps the buffer ours; the ring
    // owns its memory.
    unsafe { ring.push(&sqe).unwrap() };
    ring.submit_and_wait(1).unwrap();
    let c = ring.completions().next().unwrap();
    assert_eq!(c.result(), Ok(4096));
    ring.fixed_buffers().unwrap().release(lease);
    let mut back = vec![0u8; 4096];
    rustix::io::pread(&f.file, &mut back, 4096).unwrap();
    assert_eq!(back, written, "byte-exact");
}

#[test]
fn provided_buffer_ring_recv_enobufs_and_replenish() {
    provided_buffers_recv_enobufs_and_replenish(ProvideMode::Ring);
}

#[test]
fn provide_buffers_sqes_recv_enobufs_and_replenish() {
    provided_buffers_recv_enobufs_and_replenish(ProvideMode::Sqe);
}

/// The PROVIDE_BUFFERS path as a kernel before 5.17 runs it: no IOSQE_CQE_SKIP_SUCCESS, the
/// ring consumes the success CQEs, and the receives see nothing of them.
#[test]
fn provide_buffers_sqes_without_skip_success_recv_enobufs_and_replenish() {
    let legacy = LegacyFeatures {
        no_cqe_skip: true,
        ..Default::default()
    };
    let mut ring = provided_buffers_recv_enobufs_and_replenish_on(
        RingParams::new(8).legacy_features(legacy),
        ProvideMode::Sqe,
    );
    assert_eq!(ring.stats().skip_success, 0, "{:?}", ring.stats());
    // Left: the last recv, queued after the socket closed (EBADF once submitted), and
    // perhaps a PROVIDE_BUFFERS not yet submitted, whose CQE is the ring's own.
    assert!(ring.quiesce(Duration::from_secs(2)).unwrap());
    let rest: Vec<_> = ring.completions().collect();
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0].user_data(), UserData(9));
}

/// Recv with buffer selection through ENOBUFS and back, with the buffers handed over by a
/// buffer ring or by IORING_OP_PROVIDE_BUFFERS SQEs: the same bytes, the same ids.
fn provided_buffers_recv_enobufs_and_replenish(mode: ProvideMode) {
    provided_buffers_recv_enobufs_and_replenish_on(RingParams::new(8), mode);
}

fn provided_buffers_recv_enobufs_and_replenish_on(params: RingParams, mode: ProvideMode) -> Ring {
    const GROUP: BufGroup = BufGroup(7);
    const ENTRIES: u16 = 4;
    const SIZE: u32 = 64;
    let (mut client, server) = tcp_pair();
    let mut ring = params.build().unwrap();
    ring.probe()
        .unwrap()
        .require(IoringOp::Recv, "IORING_OP_RECV", "5.6")
        .unwrap();
    ring.add_provided_buffers(GROUP, ENTRIES, SIZE, mode)
        .unwrap();
    assert_eq!(ring.buf_ring(GROUP).unwrap().mode(), mode);
    let target = Target::Fd(server.as_raw_fd());

    // 10 messages of 64 bytes, more than the 4 buffers can hold at once.
    let payload: Vec<u8> = pattern(640);
    let mut received = Vec::new();
    let mut held = Vec::new();
    let mut saw_enobufs = false;
    let mut ids_seen = std::collections::HashSet::new();
    let mut sent = 0;
    let arm = |ring: &mut Ring| {
        let sqe = Sqe::recv_select(target, GROUP, false).user_data(UserData(9));
        // SAFETY: buffer selection: the kernel writes only into provided buffers, which the
        // ring owns and which stay registered for its lifetime.
        unsafe { ring.push(&sqe).unwrap() };
    };
    arm(&mut ring);
    while received.len() < payload.len() {
        if sent < payload.len() {
            client.write_all(&payload[sent..sent + 64]).unwrap();
            sent += 64;
            // Let the bytes land in the socket so each recv takes one message.
            std::thread::sleep(Duration::from_millis(2));
        }
        ring.submit_and_wait(1).unwrap();
        let cqes: Vec<_> = ring.completions().collect();
        for mut c in cqes {
            // PROVIDE_BUFFERS succeeds silently (CQE_SKIP_SUCCESS, or consumed by the ring
            // without it): only the recv completes.
            assert_eq!(c.user_data(), UserData(9), "{c:?}");
            match c.result() {
                Ok(n) => {
                    let sel = c
                        .take_buffer()
                        .expect("IORING_CQE_F_BUFFER set on a selected recv");
                    ids_seen.insert(sel.id());
                    let br = ring.buf_ring(GROUP).unwrap();
                    let lease = br.take(sel).unwrap();
                    received.extend_from_slice(br.bytes(&lease, n));
                    // Hold buffers until the ring runs dry, to provoke ENOBUFS.
                    held.push(lease);
                    if saw_enobufs {
                        let br = ring.buf_ring(GROUP).unwrap();
                        for l in held.drain(..) {
                            br.recycle(l);
                        }
                        ring.publish_buffers(GROUP).unwrap();
                    }
                }
                Err(RawErrno::NOBUFS) => {
                    saw_enobufs = true;
                    assert_eq!(
                        held.len(),
                        ENTRIES as usize,
                        "ENOBUFS only once all are held"
                    );
                    let br = ring.buf_ring(GROUP).unwrap();
                    assert_eq!(br.book().in_kernel(), 0);
                    for l in held.drain(..) {
                        br.recycle(l);
                    }
                    assert!(br.book().needs_replenish());
                    ring.publish_buffers(GROUP).unwrap();
                    assert!(ring.buf_ring(GROUP).unwrap().book().can_rearm());
                }
                Err(e) => panic!("recv failed: {e}"),
            }
            arm(&mut ring);
        }
    }
    assert!(saw_enobufs, "exhausting the ring must produce ENOBUFS");
    assert_eq!(
        received, payload,
        "every byte intact and in order across ENOBUFS"
    );
    assert_eq!(
        ids_seen.len(),
        ENTRIES as usize,
        "all buffer ids used and recycled"
    );
    ring
}

/// Incremental consumption (IOU_PBUF_RING_INC, Linux 6.12) on the real kernel: receives fill
/// one buffer a piece at a time with IORING_CQE_F_BUF_MORE, the piece that uses it up has no
/// BUF_MORE, and the next receive moves to the next buffer; `IncTracker` places every piece
/// where the kernel wrote it.
#[test]
fn incremental_buffer_ring_fills_a_buffer_piece_by_piece() {
    const GROUP: BufGroup = BufGroup(9);
    const SIZE: u32 = 256;
    let (mut client, server) = tcp_pair();
    let mut ring = RingParams::new(8).build().unwrap();
    ring.add_provided_buffers(GROUP, 4, SIZE, ProvideMode::RingIncremental)
        .expect("IOU_PBUF_RING_INC needs Linux 6.12: this kernel refused it");
    let mut inc = IncTracker::new(4);
    let target = Target::Fd(server.as_raw_fd());
    let payload = pattern(600);
    let mut received = Vec::new();
    let mut pieces = Vec::new();
    let mut chunks = payload.chunks(100);
    while received.len() < payload.len() {
        if let Some(chunk) = chunks.next() {
            client.write_all(chunk).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        let sqe = Sqe::recv_select(target, GROUP, false).user_data(UserData(3));
        // SAFETY: buffer selection: the kernel writes only into the group's buffers, which the
        // ring owns for its lifetime.
        unsafe { ring.push(&sqe).unwrap() };
        ring.submit_and_wait(1).unwrap();
        let mut c = ring.completions().next().unwrap();
        let len = c.result().unwrap();
        let sel = c.take_buffer().unwrap();
        let id = sel.id();
        let br = ring.buf_ring(GROUP).unwrap();
        let offset = br.take_incremental(&mut inc, sel).unwrap();
        received.extend_from_slice(br.slice(&inc, id, offset, len));
        pieces.push((id, offset, len, c.buf_more()));
    }
    assert_eq!(received, payload, "every piece where the kernel put it");
    // 256-byte buffers, 100 bytes written before each recv: 100 | 100 | 56 (used up: a recv
    // takes only what fits), then the next buffer gets the 44 left plus the next 100.
    let (first, second) = (pieces[0].0, pieces[3].0);
    assert_ne!(first, second, "the next buffer after the first was used up");
    assert_eq!(
        pieces[..3],
        [
            (first, 0, 100, true),
            (first, 100, 100, true),
            (first, 200, 56, false)
        ]
    );
    assert_eq!(
        pieces[3],
        (second, 0, 144, true),
        "the rest, in the next buffer"
    );
    // The first buffer comes back only with its last slice released.
    assert!(inc.release(first).unwrap().is_none());
    assert!(inc.release(first).unwrap().is_none());
    let lease = inc.release(first).unwrap().expect("used up and released");
    let br = ring.buf_ring(GROUP).unwrap();
    br.recycle(lease);
    ring.publish_buffers(GROUP).unwrap();
}

#[test]
fn cq_overflow_is_flushed_not_lost() {
    // A CQ of 4 entries, 64 NOPs submitted without reaping in between.
    let mut ring = RingParams::new(2).cq_entries(4).build().unwrap();
    let total = 64u64;
    let mut next = 0u64;
    let mut seen = std::collections::BTreeSet::new();
    while next < total {
        for _ in 0..2 {
            if next < total {
                // SAFETY: NOPs reference no memory.
                unsafe {
                    ring.push_or_submit(&Sqe::nop().user_data(UserData(next)))
                        .unwrap()
                };
                next += 1;
            }
        }
        ring.submit().unwrap();
    }
    assert!(
        ring.cq_overflowed() || ring.stats().busy_retries > 0,
        "64 completions into a 4-entry CQ must overflow into the kernel backlog"
    );
    // Harvest everything: the backlog must be flushed into the CQ.
    for _ in 0..1000 {
        let got: Vec<_> = ring.completions().collect();
        for c in got {
            assert_eq!(c.res(), 0);
            assert!(
                seen.insert(c.user_data().0),
                "duplicate completion {}",
                c.user_data().0
            );
        }
        if seen.len() as u64 == total {
            break;
        }
    }
    assert_eq!(seen.len() as u64, total, "every completion harvested");
    assert_eq!(ring.dropped().0, 0, "none dropped (IORING_FEAT_NODROP)");
    ring.check_overflow().unwrap();
    assert!(!ring.cq_overflowed());
}

#[test]
fn cancel_pending_recv_gives_ecanceled() {
    let (_client, server) = tcp_pair();
    let mut ring = RingParams::new(4).build().unwrap();
    let mut buf = [0u8; 16];
    let recv =
        Sqe::recv(Target::Fd(server.as_raw_fd()), buf.as_mut_ptr(), 16).user_data(UserData(1));
    // SAFETY: `buf` outlives the loop below, which harvests the recv's CQE.
    unsafe { ring.push(&recv).unwrap() };
    ring.submit().unwrap();
    // SAFETY: cancel references no memory.
    unsafe {
        ring.push(&Sqe::cancel(UserData(1)).user_data(UserData(2)))
            .unwrap()
    };
    ring.submit_and_wait(2).unwrap();
    let mut results = HashMap::new();
    while results.len() < 2 {
        for c in ring.completions() {
            results.insert(c.user_data().0, c.result());
        }
        if results.len() < 2 {
            ring.submit_and_wait(1).unwrap();
        }
    }
    assert_eq!(results[&1], Err(RawErrno::CANCELED));
    assert_eq!(results[&2], Ok(0), "the cancel found its target");
}

#[test]
fn wait_with_timeout_returns() {
    let mut ring = RingParams::new(4).build().unwrap();
    let t = std::time::Instant::now();
    ring.submit_and_wait_timeout(1, Duration::from_millis(20))
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(15));
    assert_eq!(ring.ready(), 0);
}

#[test]
fn probe_knows_the_basics() {
    let mut ring = RingParams::new(4).build().unwrap();
    let probe = ring.probe().unwrap();
    assert!(probe.supports(IoringOp::Nop));
    assert!(probe.supports(IoringOp::ReadFixed));
    assert!(probe.last_op() >= IoringOp::ReadFixed as u8);
}

/// `submit_and_wait_min` on this kernel, or None (after saying why) where it lacks
/// IORING_FEAT_MIN_TIMEOUT, in which case the call must be refused, not silently ignored.
fn min_wait_ring(defer_taskrun: bool) -> Option<Ring> {
    let mut ring = RingParams::new(8)
        .single_issuer(defer_taskrun)
        .defer_taskrun(defer_taskrun)
        .build()
        .unwrap();
    if ring.has_min_timeout() {
        return Some(ring);
    }
    let err = ring
        .submit_and_wait_min(1, Duration::from_millis(1), None)
        .unwrap_err();
    assert!(
        matches!(err, ringwork_sys::Error::Unsupported { .. }),
        "{err}"
    );
    eprintln!("skipped: kernel lacks IORING_FEAT_MIN_TIMEOUT (Linux 6.12)");
    None
}

/// Fewer completions than asked for: the call holds them for min_wait, then returns with
/// what there is. One enter.
fn min_wait_holds_then_returns(defer_taskrun: bool) {
    let Some(mut ring) = min_wait_ring(defer_taskrun) else {
        return;
    };
    // SAFETY: NOPs reference no memory.
    unsafe { ring.push(&Sqe::nop().user_data(UserData(7))).unwrap() };
    let before = ring.stats().enters;
    let t = std::time::Instant::now();
    ring.submit_and_wait_min(4, Duration::from_millis(40), Some(Duration::from_secs(5)))
        .unwrap();
    let waited = t.elapsed();
    assert_eq!(ring.stats().enters - before, 1);
    assert!(
        waited >= Duration::from_millis(35),
        "returned before min_wait with 1 of 4: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(2),
        "waited for the overall timeout: {waited:?}"
    );
    assert_eq!(ring.completions().count(), 1);

    // want=1 with one completion ready (a NOP completes inline): no waiting at all.
    // SAFETY: NOPs reference no memory.
    unsafe { ring.push(&Sqe::nop().user_data(UserData(8))).unwrap() };
    let t = std::time::Instant::now();
    ring.submit_and_wait_min(1, Duration::from_millis(200), None)
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(ring.completions().count(), 1);
}

#[test]
fn min_wait_holds_then_returns_plain() {
    min_wait_holds_then_returns(false);
}

#[test]
fn min_wait_holds_then_returns_defer_taskrun() {
    min_wait_holds_then_returns(true);
}

/// Nothing ready when min_wait passes: the call keeps waiting, and returns at the first
/// completion after it (not at min_wait, not at the timeout, not for all `want`).
fn min_wait_then_first_completion(defer_taskrun: bool, timeout: Option<Duration>) {
    let Some(mut ring) = min_wait_ring(defer_taskrun) else {
        return;
    };
    let (mut client, server) = tcp_pair();
    let mut buf = vec![0u8; 64];
    let sqe =
        Sqe::recv(Target::Fd(server.as_raw_fd()), buf.as_mut_ptr(), 64).user_data(UserData(1));
    // SAFETY: `buf` and `server` outlive the wait below, which harvests the CQE.
    unsafe { ring.push(&sqe).unwrap() };
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        client.write_all(b"hello").unwrap();
        client
    });
    let t = std::time::Instant::now();
    ring.submit_and_wait_min(8, Duration::from_millis(10), timeout)
        .unwrap();
    let waited = t.elapsed();
    let _client = writer.join().unwrap();
    assert!(
        waited >= Duration::from_millis(140),
        "returned with nothing ready: {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    let cqes: Vec<_> = ring.completions().collect();
    assert_eq!(cqes.len(), 1);
    assert_eq!(cqes[0].result(), Ok(5));
    assert_eq!(&buf[..5], b"hello");
}

#[test]
fn min_wait_then_first_completion_plain() {
    min_wait_then_first_completion(false, Some(Duration::from_secs(10)));
    min_wait_then_first_completion(false, None);
}

#[test]
fn min_wait_then_first_completion_defer_taskrun() {
    min_wait_then_first_completion(true, Some(Duration::from_secs(10)));
    min_wait_then_first_completion(true, None);
}

/// With SQPOLL the kernel's poller consumes the SQ on its own schedule: pushing far more SQEs
/// than the SQ holds must wait for room (IORING_ENTER_SQ_WAIT), never fail, and every
/// completion must arrive.
#[test]
fn sqpoll_push_waits_for_sq_space() {
    use ringwork_sys::SqPoll;
    let mut ring = match RingParams::new(4)
        .sqpoll(SqPoll {
            idle_ms: 10,
            cpu: None,
        })
        .build()
    {
        Ok(r) => r,
        Err(e) => panic!("IORING_SETUP_SQPOLL refused on this kernel: {e}"),
    };
    let total = 256u64;
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..total {
        // SAFETY: NOPs reference no memory.
        unsafe {
            ring.push_or_submit(&Sqe::nop().user_data(UserData(i)))
                .unwrap()
        };
        // Harvest as we go so the CQ (8 entries) does not back up.
        for c in ring.completions() {
            assert!(seen.insert(c.user_data().0));
        }
    }
    ring.submit().unwrap();
    while (seen.len() as u64) < total {
        ring.submit_and_wait(1).unwrap();
        for c in ring.completions() {
            assert_eq!(c.res(), 0);
            assert!(seen.insert(c.user_data().0), "duplicate completion");
        }
    }
    assert_eq!(seen.len() as u64, total);
}

#[test]
fn build_server_grants_defer_taskrun_and_names_a_refused_sqpoll() {
    use rustix::io_uring::IoringSetupFlags;
    let (ring, refused) = RingParams::new(8)
        .cq_entries(32)
        .build_server(None, TaskRun::Defer)
        .unwrap();
    // Linux 6.1+ (this machine runs 6.18): granted, nothing to log.
    assert!(refused.is_none(), "{refused:?}");
    let flags = ring.setup_flags();
    assert!(flags.contains(IoringSetupFlags::SINGLE_ISSUER | IoringSetupFlags::DEFER_TASKRUN));
    let (coop, refused) = RingParams::new(8)
        .build_server(None, TaskRun::Coop)
        .unwrap();
    assert!(refused.is_none(), "COOP_TASKRUN is Linux 5.19: {refused:?}");
    let flags = coop.setup_flags();
    assert!(flags.contains(IoringSetupFlags::SINGLE_ISSUER | IoringSetupFlags::COOP_TASKRUN));
    assert!(!flags.contains(IoringSetupFlags::DEFER_TASKRUN));
    let (plain, _) = RingParams::new(8)
        .build_server(None, TaskRun::Plain)
        .unwrap();
    assert!(!plain.setup_flags().intersects(
        IoringSetupFlags::DEFER_TASKRUN
            | IoringSetupFlags::COOP_TASKRUN
            | IoringSetupFlags::SINGLE_ISSUER
    ));
    // A poller pinned to a CPU that does not exist: refused, and the message says why.
    let sp = ringwork_sys::SqPoll {
        idle_ms: 10,
        cpu: Some(100_000),
    };
    let Err(err) = RingParams::new(8).build_server(Some(sp), TaskRun::Defer) else {
        panic!("SQPOLL on CPU 100000 was granted");
    };
    assert!(
        matches!(err, ringwork_sys::Error::SqPollRefused { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("SQPOLL") && msg.contains("CPU 100000"),
        "{msg}"
    );
}

/// A buffer-select receive capped with `select_len` takes no more than the cap, though the
/// buffer and the socket hold more: the rest waits for the next receive.
#[test]
fn a_capped_buffer_select_recv_takes_only_the_cap() {
    const GROUP: BufGroup = BufGroup(3);
    let (mut client, server) = tcp_pair();
    let mut ring = RingParams::new(8).build().unwrap();
    ring.add_provided_buffers(GROUP, 2, 256, ProvideMode::Ring)
        .unwrap();
    let payload = pattern(100);
    client.write_all(&payload).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let target = Target::Fd(server.as_raw_fd());
    let mut got = Vec::new();
    for (cap, want) in [(10u32, 10usize), (0, 90)] {
        let sqe = ringwork_sys::SafeSqe::recv_select(target, GROUP, false)
            .select_len(cap)
            .user_data(UserData(5));
        ring.push_safe(sqe).unwrap();
        ring.submit_and_wait(1).unwrap();
        let mut c = ring.completions().next().expect("a completion");
        assert_eq!(c.result(), Ok(want as u32), "cap {cap}");
        let sel = c.take_buffer().expect("a selected buffer");
        let br = ring.buf_ring(GROUP).unwrap();
        let lease = br.take(sel).unwrap();
        got.extend_from_slice(br.bytes(&lease, want as u32));
        br.recycle(lease);
        ring.publish_buffers(GROUP).unwrap();
    }
    assert_eq!(got, payload);
}
