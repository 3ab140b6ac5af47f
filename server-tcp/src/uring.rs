//! The io_uring echo driver: one ring per thread, everything through the ring.
//!
//! The loop: submit and wait (for one completion, or under load for up to `--batch` within
//! `--batch-wait-us`; with SQPOLL not at all while completions are ready), route each CQE by its token's kind (accept,
//! wake-up, or a connection's recv/send/cancel/close), feed connection completions to
//! `ringwork_core::conn::EchoConn`, turn the operations it returns into SQEs, publish recycled
//! buffers, repeat. No protocol decision is made here. With `--zerocopy`, SEND_ZC results and
//! notifications go through `ringwork_core::buf::ZcTracker`, which decides when a sent buffer
//! may go back to the ring.

use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ringwork_core::buf::{
    BufGroup, BufId, RecvBuffers, RecvCompletion, RecvMode, RecvPiece, ZcSlot, ZcTracker,
};
use ringwork_core::conn::{ChunkQueues, Config, EchoConn, Event, Op, Starved, DEFAULT_MAX_QUEUED};
use ringwork_core::errno::RawErrno;
use ringwork_core::slab::Slab;
use ringwork_core::token::{Generation, OpKind, Slot, Token, UserData};
use ringwork_sys::{Cqe, ProvideMode, Ring, RingParams, Sqe, Target, PROVIDE_BUFFERS_USER_DATA};
use rustix::fd::OwnedFd;
use rustix::io_uring::{
    IoringFeatureFlags, IoringOp, IoringSetupFlags, IORING_NOTIF_USAGE_ZC_COPIED,
};
use rustix::net::{SendFlags, SocketFlags};

use crate::{Shared, WorkerConfig, WorkerStats};

const GROUP: BufGroup = BufGroup(0);
/// After a shutdown signal, how long connections may take to flush before their remaining
/// operations are cancelled (a peer that never reads would otherwise hold the process).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Overall timeout of a batched wait: long, only there so that the kernel has one (see
/// `Worker::wait`); a wait that times out just loops.
const IDLE_WAIT_TIMEOUT: Duration = Duration::from_secs(1);

/// The token of one of the worker's own operations (accept, wake-up read, closes of rejected
/// sockets): they are not connections'.
fn worker_token(kind: OpKind) -> UserData {
    Token::new(kind, Slot::WORKER, Generation::ZERO).encode()
}

struct Conn {
    fd: RawFd,
    machine: EchoConn,
}

struct Worker<'a> {
    ring: Ring,
    conns: Slab<Conn>,
    /// The provided buffers connections hold: which pieces a completion filled, their
    /// leases, and what goes back to the ring.
    recv: RecvBuffers,
    /// The pieces of the completion being routed, reused.
    pieces: Vec<RecvPiece>,
    /// The chunks every connection holds (received, not yet echoed), sized to what the ring
    /// can hand out.
    chunks: ChunkQueues,
    /// Connections whose recv ended with ENOBUFS, to wake once buffers are back.
    starved: Starved,
    /// The connections being woken, reused.
    woken: Vec<Token>,
    listener: OwnedFd,
    wake: OwnedFd,
    /// The eventfd read's target; the kernel writes it until the read completes.
    wake_buf: Box<[u8; 8]>,
    multishot_accept: bool,
    /// Multishot recv (probed, unless `--disable multishot-recv`); else single-shot recvs,
    /// which the machine re-arms after each completion like an ended multishot.
    multishot_recv: bool,
    /// Completions to wait for per enter (1 when the kernel cannot bound the wait).
    batch: u32,
    /// Completions the last wait brought: whether the load is high enough to batch.
    last_harvest: u32,
    accept_armed: bool,
    /// Accept completions seen that succeeded (a multishot EINVAL before any means the kernel
    /// refuses multishot: fall back).
    accepted_any: bool,
    /// Worker-owned ops in flight whose completions carry no state (closes of rejected
    /// sockets, cancels of the accept).
    misc_in_flight: u64,
    stopping: Option<Instant>,
    forced: bool,
    /// With `--zerocopy`: the SEND_ZCs in flight and the recycles that wait for their
    /// notifications (PITFALLS #4). The machine recycles a buffer after its last send's result;
    /// the kernel may read it until the notification, so recycles go through this.
    zc: Option<ZcTracker<Token>>,
    /// SEND_ZC with IORING_SEND_ZC_REPORT_USAGE (Linux 6.2): notifications say whether the
    /// kernel copied.
    zc_report_usage: bool,
    cfg: WorkerConfig,
    shared: &'a Shared,
    stats: WorkerStats,
}

/// Runs one worker until shutdown has closed every connection.
pub fn run(
    cfg: WorkerConfig,
    listener: OwnedFd,
    wake: OwnedFd,
    shared: &Shared,
    ready: std::sync::mpsc::Sender<()>,
) -> ringwork_sys::Result<WorkerStats> {
    // SQPOLL alone when asked (no fallback: a run that asked for it and silently measured
    // without it would mislead; the error names the likely cause), else SINGLE_ISSUER |
    // DEFER_TASKRUN (completion work runs only when we wait, in this thread), falling back to
    // COOP_TASKRUN, then a plain ring.
    let (mut ring, refused) = RingParams::new(cfg.sq_entries)
        .cq_entries(cfg.sq_entries * 4)
        .build_server(cfg.sqpoll, cfg.task_run)?;
    if let Some(e) = refused {
        let flags = ring.setup_flags();
        let got = if flags.contains(IoringSetupFlags::COOP_TASKRUN) {
            "COOP_TASKRUN"
        } else {
            "a plain ring"
        };
        eprintln!("ringwork-echo: {e}: using {got}");
    }
    let batch = if cfg.batch > 1 && !ring.has_min_timeout() {
        eprintln!(
            "ringwork-echo: --batch {}: this kernel ({}) lacks IORING_FEAT_MIN_TIMEOUT (Linux \
             6.12); waiting for one completion at a time",
            cfg.batch,
            ringwork_sys::kernel_release()
        );
        1
    } else {
        cfg.batch
    };
    let probe = ring.probe()?;
    probe.require(IoringOp::Accept, "IORING_OP_ACCEPT", "5.5")?;
    probe.require(IoringOp::Recv, "IORING_OP_RECV", "5.6")?;
    probe.require(IoringOp::AsyncCancel, "IORING_OP_ASYNC_CANCEL", "5.5")?;
    // Multishot accept has no opcode of its own; it arrived in 5.19 together with
    // IORING_OP_SOCKET, so that opcode's presence is the probe's answer.
    let multishot_accept = !cfg.force_single_accept && probe.supports(IoringOp::Socket);
    // Likewise multishot recv (6.0) has no opcode; SEND_ZC arrived in the same release.
    let multishot_recv = cfg.multishot_recv && probe.supports(IoringOp::SendZc);
    let zc = if cfg.zerocopy {
        probe.require(IoringOp::SendZc, "IORING_OP_SEND_ZC (--zerocopy)", "6.0")?;
        // Two sends per buffer in flight (a short send and its remainder, each awaiting its
        // notification) cover the common case; beyond that a send goes by copy.
        Some(ZcTracker::new(cfg.buffers, u32::from(cfg.buffers) * 2))
    } else {
        None
    };
    // On 6.0 and 6.1 the flag would fail every send with EINVAL: send without it there.
    let zc_report_usage = zc.is_some() && ring.send_zc_reports_usage()?;
    if zc.is_some() && !zc_report_usage {
        eprintln!(
            "ringwork-echo: --zerocopy: this kernel ({}) lacks IORING_SEND_ZC_REPORT_USAGE \
             (Linux 6.2); zc_copied will stay 0",
            ringwork_sys::kernel_release()
        );
    }
    let mode = match (cfg.pbuf_ring, cfg.incremental) {
        (true, true) => ProvideMode::RingIncremental,
        (true, false) => ProvideMode::Ring,
        (false, _) => ProvideMode::Sqe,
    };
    let bundle = cfg.bundle
        && ring
            .features()
            .contains(IoringFeatureFlags::RECVSEND_BUNDLE);
    if cfg.bundle && !bundle {
        return Err(ringwork_sys::Error::unsupported(
            "IORING_RECVSEND_BUNDLE (--bundle)",
            "6.10",
        ));
    }
    let mode = match ring.add_provided_buffers(GROUP, cfg.buffers, cfg.buffer_size, mode) {
        // Incremental consumption was asked for by name: no silent fallback (the error names
        // IOU_PBUF_RING_INC and Linux 6.12).
        Err(e @ ringwork_sys::Error::Unsupported { .. }) if mode == ProvideMode::Ring => {
            // PITFALLS #8: a kernel without buffer rings (before 5.19) still has the legacy
            // way to provide the same buffers.
            eprintln!(
                "ringwork-echo: {e} (kernel {}): providing buffers with \
                 IORING_OP_PROVIDE_BUFFERS SQEs instead",
                ringwork_sys::kernel_release()
            );
            if bundle {
                // Bundles name only their first buffer; without a ring's order the rest are
                // unknown.
                return Err(e);
            }
            ring.add_provided_buffers(GROUP, cfg.buffers, cfg.buffer_size, ProvideMode::Sqe)?;
            ProvideMode::Sqe
        }
        r => r.map(|()| mode)?,
    };
    debug_assert!(!bundle || mode == ProvideMode::Ring);
    let mut w = Worker {
        ring,
        conns: Slab::new(cfg.max_conns),
        recv: RecvBuffers::new(
            cfg.buffers,
            cfg.buffer_size,
            match (bundle, mode) {
                (true, _) => RecvMode::Bundle,
                (false, ProvideMode::RingIncremental) => RecvMode::Incremental,
                (false, _) => RecvMode::Whole,
            },
        ),
        pieces: Vec::with_capacity(usize::from(cfg.buffers)),
        chunks: ChunkQueues::new(chunk_table_size(&cfg, mode)),
        starved: Starved::new(cfg.max_conns),
        woken: Vec::with_capacity(cfg.max_conns),
        listener,
        wake,
        wake_buf: Box::new([0; 8]),
        multishot_accept,
        multishot_recv,
        batch,
        last_harvest: 0,
        accept_armed: false,
        accepted_any: false,
        misc_in_flight: 0,
        stopping: None,
        forced: false,
        zc,
        zc_report_usage,
        cfg,
        shared,
        stats: WorkerStats::default(),
    };
    w.arm_accept()?;
    w.arm_wake()?;
    w.ring.submit()?;
    let _ = ready.send(());
    w.run_loop()?;
    let rs = w.ring.stats();
    w.stats.enters = rs.enters;
    w.stats.submitted = rs.submitted;
    w.stats.completions = rs.completions;
    w.stats.cq_overflows = rs.overflow_seen;
    w.stats.busy_retries = rs.busy_retries;
    w.stats.skip_success = rs.skip_success;
    Ok(w.stats)
}

impl Worker<'_> {
    fn push(&mut self, sqe: &Sqe) -> ringwork_sys::Result<()> {
        // SAFETY: every SQE built in this module points only at memory the worker keeps alive
        // until the CQE is harvested: provided buffers (leased in `recv` until Op::Recycle,
        // which the state machine issues only after the send's completion) and `wake_buf`
        // (boxed, dropped after the loop, which ends only once the read completed).
        unsafe { self.ring.push_or_submit(sqe) }
    }

    fn arm_accept(&mut self) -> ringwork_sys::Result<()> {
        let sqe = Sqe::accept(
            Target::Fd(self.listener.as_raw_fd()),
            SocketFlags::CLOEXEC,
            self.multishot_accept,
            false,
        )
        .user_data(worker_token(OpKind::Accept));
        self.push(&sqe)?;
        self.accept_armed = true;
        Ok(())
    }

    fn arm_wake(&mut self) -> ringwork_sys::Result<()> {
        let sqe = Sqe::read(
            Target::Fd(self.wake.as_raw_fd()),
            self.wake_buf.as_mut_ptr(),
            8,
            0,
        )
        .user_data(worker_token(OpKind::Read));
        self.push(&sqe)
    }

    fn done(&self) -> bool {
        self.stopping.is_some()
            && self.conns.is_empty()
            && !self.accept_armed
            && self.misc_in_flight == 0
            // Buffers a notification has yet to release belong to the kernel until then.
            && !self.zc.as_ref().is_some_and(|zc| zc.in_flight() > 0)
    }

    fn run_loop(&mut self) -> ringwork_sys::Result<()> {
        let mut cqes: Vec<Cqe> = Vec::with_capacity(self.ring.cq_entries() as usize);
        while !self.done() {
            match self.stopping {
                None => self.wait()?,
                Some(since) => {
                    self.ring
                        .submit_and_wait_timeout(1, Duration::from_millis(100))?;
                    if !self.forced && since.elapsed() > SHUTDOWN_GRACE {
                        self.force_close_all()?;
                    }
                }
            }
            cqes.clear();
            cqes.extend(self.ring.completions());
            self.last_harvest = cqes.len() as u32;
            for cqe in &cqes {
                self.on_cqe(cqe)?;
            }
            self.ring.publish_buffers(GROUP)?;
            self.wake_starved()?;
        }
        Ok(())
    }

    /// Submits what is queued and waits for work.
    fn wait(&mut self) -> ringwork_sys::Result<()> {
        if self.cfg.sqpoll.is_some() && self.ring.ready() > 0 {
            // The poller posted completions while we handled the last batch: submitting is
            // free (no enter unless the poller sleeps), so take them without a syscall.
            self.ring.submit()?;
        } else if self.batch > 1 && self.last_harvest >= self.batch / 2 {
            // Only under load: when the last wait brought half a batch or more, waiting a
            // little for a full one costs nothing in latency and saves enters. At low load
            // (a few completions per wait) the min-wait timer only adds work: measured at
            // 1000 connections x 5000 msgs/s, batched waits there cost ~1.6x the CPU/msg.
            // An overall timeout keeps the kernel asleep when min_wait passes with nothing
            // ready (without one it returns to us at every min_wait, and Ring waits again):
            // an idle or lightly loaded server then costs one timer tick per wait, not a
            // return to user space and a second io_uring_enter.
            self.ring.submit_and_wait_min(
                self.batch,
                self.cfg.batch_wait,
                Some(IDLE_WAIT_TIMEOUT),
            )?;
        } else {
            self.ring.submit_and_wait(1)?;
        }
        Ok(())
    }

    fn on_cqe(&mut self, cqe: &Cqe) -> ringwork_sys::Result<()> {
        if cqe.user_data == PROVIDE_BUFFERS_USER_DATA {
            // Only failures complete (CQE_SKIP_SUCCESS): buffers the bookkeeping counts as
            // the kernel's never reached it, and receives would starve. Nothing to retry.
            return Err(ringwork_sys::Error::Syscall {
                what: "IORING_OP_PROVIDE_BUFFERS (returning receive buffers)",
                errno: rustix::io::Errno::from_raw_os_error(-cqe.res),
            });
        }
        let Ok(token) = Token::decode(cqe.user_data) else {
            self.stats.stale += 1;
            return Ok(());
        };
        if token.kind == OpKind::SendZc {
            // Before the connection lookup: a notification may come after its connection
            // was freed (the tracker, not the connection, holds the buffer until then).
            return self.on_send_zc(ZcSlot(u32::from(token.sub)), cqe);
        }
        if token.slot == Slot::WORKER {
            return match token.kind {
                OpKind::Accept => self.on_accept(cqe),
                OpKind::Read => self.on_wake(),
                _ => {
                    self.misc_in_flight -= 1;
                    Ok(())
                }
            };
        }
        self.on_conn_cqe(token, cqe)
    }

    fn on_accept(&mut self, cqe: &Cqe) -> ringwork_sys::Result<()> {
        if !cqe.more() {
            self.accept_armed = false;
        }
        match cqe.result() {
            Ok(fd) => {
                self.accepted_any = true;
                // SAFETY: a successful accept CQE's result is a new descriptor we now own.
                let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
                self.admit(fd)?;
            }
            Err(RawErrno::INVAL) if self.multishot_accept && !self.accepted_any => {
                // PITFALLS #8: the probe said yes but the kernel refuses multishot accept.
                eprintln!("ringwork-echo: multishot accept refused; using single-shot accept");
                self.multishot_accept = false;
            }
            Err(RawErrno::CANCELED) => {}
            Err(e) => eprintln!("ringwork-echo: accept failed: {e}"),
        }
        // PITFALLS #2: only a CQE without F_MORE ends the multishot accept.
        if !self.accept_armed && self.stopping.is_none() {
            self.arm_accept()?;
        }
        Ok(())
    }

    /// A SEND_ZC's result (to its connection as `SendDone`) or its notification (which may
    /// release a deferred recycle). Its token names the connection and, in `sub`, the
    /// tracker's slot, which is what both CQEs are matched by: the notification can come
    /// after the connection is gone.
    fn on_send_zc(&mut self, slot: ZcSlot, cqe: &Cqe) -> ringwork_sys::Result<()> {
        let Some(zc) = self.zc.as_mut() else {
            self.stats.stale += 1;
            return Ok(());
        };
        if cqe.is_notification() {
            self.stats.zc_notifs += 1;
            // IORING_SEND_ZC_REPORT_USAGE: bit 31 of `res` says the kernel copied after all
            // (always, on loopback).
            if cqe.res & IORING_NOTIF_USAGE_ZC_COPIED != 0 {
                self.stats.zc_copied += 1;
            }
            match zc.on_notification(slot) {
                Ok(Some(buf)) => self.recycle(buf),
                Ok(None) => {}
                Err(e) => {
                    eprintln!("ringwork-echo: {e}");
                    self.stats.refused += 1;
                }
            }
            return Ok(());
        }
        let done = match zc.on_result(slot, cqe.more()) {
            Ok(done) => done,
            Err(e) => {
                eprintln!("ringwork-echo: {e}");
                self.stats.refused += 1;
                return Ok(());
            }
        };
        if let Some(buf) = done.recycle {
            self.recycle(buf);
        }
        if let Ok(n) = cqe.result() {
            self.stats.bytes += u64::from(n);
        }
        self.deliver(done.owner, Event::SendDone { res: cqe.result() })
    }

    fn admit(&mut self, fd: OwnedFd) -> ringwork_sys::Result<()> {
        if self.stopping.is_some() || !self.shared.try_admit(self.cfg.max_conns) {
            return self.reject(fd);
        }
        // Not fatal for the connection: Nagle only delays.
        let _ = ringwork_sys::net::set_nodelay(&fd);
        let raw = fd.as_raw_fd();
        let conn = Conn {
            fd: raw,
            machine: EchoConn::new(Config::default()),
        };
        let Some((slot, generation)) = self.conns.insert(conn) else {
            self.shared.release();
            return self.reject(fd);
        };
        // From here the descriptor is closed through the ring, by Op::Close.
        std::mem::forget(fd);
        self.stats.conns += 1;
        self.deliver(Token::new(OpKind::Recv, slot, generation), Event::Opened)
    }

    fn reject(&mut self, fd: OwnedFd) -> ringwork_sys::Result<()> {
        self.stats.rejected += 1;
        let raw = fd.as_raw_fd();
        std::mem::forget(fd);
        self.misc_in_flight += 1;
        self.push(&Sqe::close(Target::Fd(raw)).user_data(worker_token(OpKind::Close)))
    }

    /// The eventfd read completed: the process is stopping.
    fn on_wake(&mut self) -> ringwork_sys::Result<()> {
        if !self.shared.stopping.load(Ordering::Acquire) {
            // Spurious: read again.
            return self.arm_wake();
        }
        self.stopping = Some(Instant::now());
        if self.accept_armed {
            self.misc_in_flight += 1;
            let sqe =
                Sqe::cancel(worker_token(OpKind::Accept)).user_data(worker_token(OpKind::Cancel));
            self.push(&sqe)?;
        }
        for i in 0..self.conns.capacity() as u32 {
            let slot = Slot(i);
            if self.conns.get(slot).is_some() {
                let token = Token::new(OpKind::Recv, slot, self.conns.generation(slot));
                self.deliver(token, Event::Shutdown)?;
            }
        }
        Ok(())
    }

    /// The grace period is over: every connection aborts (cancels everything still in flight,
    /// so that sends to peers that do not read fail, and closes).
    fn force_close_all(&mut self) -> ringwork_sys::Result<()> {
        self.forced = true;
        for i in 0..self.conns.capacity() as u32 {
            let slot = Slot(i);
            if self.conns.get(slot).is_some() {
                let token = Token::new(OpKind::Recv, slot, self.conns.generation(slot));
                self.deliver(token, Event::Abort)?;
            }
        }
        Ok(())
    }

    fn on_conn_cqe(&mut self, token: Token, cqe: &Cqe) -> ringwork_sys::Result<()> {
        if self.conns.get_checked(&token).is_none() {
            // A completion for an earlier incarnation of the slot (PITFALLS #5).
            self.stats.stale += 1;
            self.return_selected(cqe);
            return Ok(());
        }
        let more = cqe.more();
        let event = match token.kind {
            OpKind::Recv => match cqe.result() {
                Ok(0) => {
                    self.return_selected(cqe);
                    Event::RecvEof { more }
                }
                Ok(_) => {
                    let Some(c) = recv_completion(cqe) else {
                        eprintln!("ringwork-echo: recv completion without a buffer");
                        self.stats.refused += 1;
                        return Ok(());
                    };
                    if c.buf_more {
                        self.stats.buf_more += 1;
                    }
                    return self.on_recv(token, c);
                }
                Err(errno) => {
                    if errno == RawErrno::NOBUFS {
                        self.stats.nobufs += 1;
                    }
                    Event::RecvErr { errno, more }
                }
            },
            OpKind::Send => {
                if let Ok(n) = cqe.result() {
                    self.stats.bytes += u64::from(n);
                }
                Event::SendDone { res: cqe.result() }
            }
            OpKind::Cancel => Event::CancelDone,
            OpKind::Close => Event::Closed,
            _ => {
                self.stats.stale += 1;
                return Ok(());
            }
        };
        self.deliver(token, event)
    }

    /// A receive completion of at least one byte: one receive event per buffer it filled
    /// (a bundle spans several, each full but the last), in order.
    fn on_recv(&mut self, token: Token, c: RecvCompletion) -> ringwork_sys::Result<()> {
        let Some(br) = self.ring.buf_ring(GROUP) else {
            unreachable!("the group is registered before the loop starts")
        };
        let mut pieces = std::mem::take(&mut self.pieces);
        match self.recv.on_recv(br.book_mut(), c, |p| pieces.push(p)) {
            Ok(count) if count > 1 => self.stats.bundles += 1,
            Ok(_) => {}
            Err(e) => {
                eprintln!("ringwork-echo: {e}");
                self.stats.refused += 1;
            }
        }
        let mut result = Ok(());
        for p in pieces.drain(..) {
            let event = Event::Recv {
                buf: p.buf,
                offset: p.offset,
                len: p.len,
                more: p.more,
            };
            if result.is_ok() {
                result = self.deliver(token, event);
            }
        }
        self.pieces = pieces;
        result
    }

    /// The buffers the kernel filled for a completion nobody will consume (a stale one, or an
    /// EOF that names a buffer): back to the ring (`RecvBuffers` says which).
    fn return_selected(&mut self, cqe: &Cqe) {
        let (Some(c), Some(br)) = (recv_completion(cqe), self.ring.buf_ring(GROUP)) else {
            return;
        };
        if let Err(e) = self.recv.return_unconsumed(br.book_mut(), c) {
            eprintln!("ringwork-echo: {e}");
            self.stats.refused += 1;
        }
    }

    /// Feeds `event` to the connection `token` names and performs its operations.
    fn deliver(&mut self, token: Token, event: Event) -> ringwork_sys::Result<()> {
        let Some(conn) = self.conns.get_checked_mut(&token) else {
            // Freed since: by an earlier piece of the same bundle (its buffer goes back), or
            // a starved connection that closed meanwhile.
            if let Event::Recv { buf, .. } = event {
                self.recycle(buf);
            }
            return Ok(());
        };
        let fd = conn.fd;
        if let Err(e) = conn.machine.on_event(&mut self.chunks, event) {
            eprintln!("ringwork-echo: {e}");
            self.stats.refused += 1;
            if let Event::Recv { buf, .. } = event {
                self.recycle(buf);
            }
            return Ok(());
        }
        // Free removes the connection: it is the last operation.
        while let Some(conn) = self.conns.get_checked_mut(&token) {
            let Some(op) = conn.machine.poll_op(&mut self.chunks) else {
                break;
            };
            self.perform(token, fd, op)?;
        }
        Ok(())
    }

    /// Turns one of a connection's operations into an SQE (or bookkeeping).
    fn perform(&mut self, token: Token, fd: RawFd, op: Op) -> ringwork_sys::Result<()> {
        let (slot, generation) = (token.slot, token.generation);
        let ud = |kind| Token::new(kind, slot, generation).encode();
        match op {
            Op::ArmRecv => {
                let mut sqe = Sqe::recv_select(Target::Fd(fd), GROUP, self.multishot_recv);
                if self.recv.mode() == RecvMode::Bundle {
                    sqe = sqe.recv_bundle();
                }
                let sqe = sqe.user_data(ud(OpKind::Recv));
                self.push(&sqe)?;
            }
            Op::Send { buf, offset, len } => {
                // The machine sends only bytes it was handed: a leased buffer, or a slice
                // of one with incremental consumption.
                assert!(
                    self.recv.holds(buf),
                    "the machine sends only buffers it was handed"
                );
                let Some(br) = self.ring.buf_ring(GROUP) else {
                    unreachable!("the group is registered before the loop starts")
                };
                let ptr = br.buf_ptr(buf).wrapping_add(offset as usize);
                let zc_slot = match self.zc.as_mut().map(|zc| zc.submit(token, buf)) {
                    Some(Ok(slot)) => slot,
                    Some(Err(e)) => unreachable!("buffer ids come from the ring: {e}"),
                    None => None,
                };
                let sqe = match zc_slot {
                    Some(slot) => {
                        // The tracker holds at most 2 x 32768 sends: its slots fit `sub`.
                        let sub = u16::try_from(slot.0).expect("ZcTracker sized for u16");
                        Sqe::send_zc(Target::Fd(fd), ptr, len, self.zc_report_usage, None)
                            .user_data(token.with_kind(OpKind::SendZc).with_sub(sub).encode())
                    }
                    // Plain, or every tracker slot is in flight: send this one by copy.
                    None => Sqe::send(Target::Fd(fd), ptr, len).user_data(ud(OpKind::Send)),
                };
                self.push(&sqe.send_flags(SendFlags::NOSIGNAL))?;
            }
            Op::Recycle(buf) => {
                // With SEND_ZC the kernel may still read the buffer: the tracker says
                // whether it goes back now or on its last notification.
                let now = self.zc.as_mut().map_or(Ok(true), |zc| zc.recycle(buf));
                match now {
                    Ok(true) => self.recycle(buf),
                    Ok(false) => {}
                    Err(e) => unreachable!("buffer ids come from the ring: {e}"),
                }
            }
            Op::AwaitBuffers => self.starved.wait(token),
            Op::CancelRecv => {
                let sqe = Sqe::cancel(ud(OpKind::Recv)).user_data(ud(OpKind::Cancel));
                self.push(&sqe)?;
            }
            Op::CancelAll => {
                let sqe = Sqe::cancel_fd(Target::Fd(fd)).user_data(ud(OpKind::Cancel));
                self.push(&sqe)?;
            }
            Op::Close => {
                if let Some(reason) = conn_reason(&self.conns, slot) {
                    if reason.is_fatal() && std::env::var_os("RINGWORK_DEBUG").is_some() {
                        eprintln!("ringwork-echo: closing a connection: {reason}");
                    }
                }
                let sqe = Sqe::close(Target::Fd(fd)).user_data(ud(OpKind::Close));
                self.push(&sqe)?;
            }
            Op::Free => {
                self.conns.remove(slot);
                self.shared.release();
            }
        }
        Ok(())
    }

    fn recycle(&mut self, buf: BufId) {
        let Some(br) = self.ring.buf_ring(GROUP) else {
            unreachable!("the group is registered before the loop starts")
        };
        // With incremental consumption one slice: the buffer goes back with its last slice,
        // once the kernel has finished with it.
        if let Err(e) = self.recv.recycle(br.book_mut(), buf) {
            eprintln!("ringwork-echo: {e}");
            self.stats.refused += 1;
        }
    }

    /// Wakes connections whose recv ended with ENOBUFS once the ring has enough buffers back
    /// (`Starved` and `ProvidedRing::can_rearm` decide).
    fn wake_starved(&mut self) -> ringwork_sys::Result<()> {
        if self.starved.is_empty() {
            return Ok(());
        }
        let ready = self
            .ring
            .buf_ring(GROUP)
            .is_some_and(|br| br.book().can_rearm());
        let mut woken = std::mem::take(&mut self.woken);
        self.starved.wake(ready, &mut woken);
        let mut result = Ok(());
        for token in woken.drain(..) {
            if result.is_ok() {
                result = self.deliver(token, Event::BuffersAvailable);
            }
        }
        self.woken = woken;
        result
    }
}

/// How many chunks the connections of one worker may hold at once. With whole buffers (and
/// bundles) each chunk holds a distinct ring buffer, so the ring's size bounds them exactly.
/// Incremental consumption puts several slices in one buffer: there the table is a margin,
/// room for every connection to queue twice its backpressure threshold on top of one chunk per
/// buffer (a connection whose receive finds it full fails closed, `QueueOverflow`).
fn chunk_table_size(cfg: &WorkerConfig, mode: ProvideMode) -> usize {
    let buffers = usize::from(cfg.buffers);
    match mode {
        ProvideMode::RingIncremental => cfg
            .max_conns
            .saturating_mul(2 * DEFAULT_MAX_QUEUED)
            .saturating_add(buffers),
        ProvideMode::Ring | ProvideMode::Sqe => buffers,
    }
}

fn conn_reason(conns: &Slab<Conn>, slot: Slot) -> Option<ringwork_core::conn::CloseReason> {
    conns.get(slot)?.machine.close_reason()
}

/// What a receive CQE says about the buffers it filled; None when it names none.
fn recv_completion(cqe: &Cqe) -> Option<RecvCompletion> {
    Some(RecvCompletion {
        first: cqe.buffer_id()?,
        bytes: cqe.result().unwrap_or(0),
        more: cqe.more(),
        buf_more: cqe.buf_more(),
    })
}
