//! The io_uring echo driver: one ring per thread, everything through the ring.
//!
//! The loop: submit and wait (for one completion, or under load for up to `--batch` within
//! `--batch-wait-us`; with SQPOLL not at all while completions are ready; never past the
//! acceptor's deadline while it backs off), route each CQE by its token's kind (accept, for
//! `ringwork_sys::Acceptor`; wake-up; or a connection's recv/send/cancel/close), feed
//! connection completions to `ringwork_core::conn::EchoConn`, turn the operations it returns
//! into SQEs, publish recycled buffers, repeat. No protocol decision is made here. With
//! `--zerocopy`, SEND_ZC results and notifications go through `ringwork_core::buf::ZcTracker`,
//! which decides when a sent buffer may go back to the ring.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ringwork_core::buf::{BufGroup, BufId, IncTracker, Lease, ZcSlot, ZcTracker};
use ringwork_core::conn::{Config, EchoConn, Event, Op, QUEUE_CAPACITY};
use ringwork_core::errno::RawErrno;
use ringwork_core::slab::Slab;
use ringwork_core::token::{Generation, OpKind, Slot, Token, UserData};
use ringwork_sys::{
    Acceptor, Cqe, ProvideMode, Ring, RingParams, SelectedBuf, Sqe, Target,
    PROVIDE_BUFFERS_USER_DATA,
};
use rustix::fd::OwnedFd;
use rustix::io_uring::{
    IoringFeatureFlags, IoringOp, IoringSetupFlags, IORING_NOTIF_USAGE_ZC_COPIED,
};
use rustix::net::SendFlags;

use crate::{Shared, WorkerConfig, WorkerStats};

const GROUP: BufGroup = BufGroup(0);
/// Slot of the worker's own operations (accept, wake-up read): they are not connections.
const WORKER_SLOT: Slot = Slot(u32::MAX);
/// After a shutdown signal, how long connections may take to flush before their remaining
/// operations are cancelled (a peer that never reads would otherwise hold the process).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Overall timeout of a batched wait: long, only there so that the kernel has one (see
/// `Worker::wait`); a wait that times out just loops.
const IDLE_WAIT_TIMEOUT: Duration = Duration::from_secs(1);

fn worker_token(kind: OpKind) -> UserData {
    Token::new(kind, WORKER_SLOT, Generation::ZERO).encode()
}

struct Conn {
    fd: RawFd,
    machine: EchoConn,
    /// Receive events held back, in order, while the machine's queue is full.
    ///
    /// The kernel fills provided buffers for a multishot recv in bursts (up to 32 per wake-up,
    /// more under DEFER_TASKRUN) before we see any of them, so with a shared ring
    /// `conn::CANCEL_SLACK` is regularly exceeded by a bulk sender and the machine would fail
    /// closed with `QueueOverflow`. Parking keeps the bytes and their order; the buffers stay
    /// the ring's (so the ring bounds the memory), and ENOBUFS then throttles the sender.
    parked: VecDeque<Event>,
}

struct Worker<'a> {
    ring: Ring,
    conns: Slab<Conn>,
    /// Leases of the provided buffers connections hold, by buffer id.
    leases: Vec<Option<Lease>>,
    /// Connections whose recv ended with ENOBUFS, to wake once buffers are back.
    starved: Vec<Token>,
    /// The listener and its accept (tokens of kind Accept on `WORKER_SLOT`).
    acceptor: Acceptor,
    wake: OwnedFd,
    /// The eventfd read's target; the kernel writes it until the read completes.
    wake_buf: Box<[u8; 8]>,
    /// Multishot recv (probed, unless `--disable multishot-recv`); else single-shot recvs,
    /// which the machine re-arms after each completion like an ended multishot.
    multishot_recv: bool,
    /// Receive bundles: a recv completion may span several consecutive ring buffers.
    bundle: bool,
    /// Leases of the buffers of one bundle, reused.
    bundle_leases: Vec<Lease>,
    /// Incremental buffer consumption (`--incremental`): the slices connections hold.
    inc: Option<IncTracker>,
    /// Completions to wait for per enter (1 when the kernel cannot bound the wait).
    batch: u32,
    /// Completions the last wait brought: whether the load is high enough to batch.
    last_harvest: u32,
    /// Worker-owned ops in flight whose completions carry no state (closes of rejected
    /// sockets, forced cancels at shutdown).
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
    let acceptor = Acceptor::new(listener, WORKER_SLOT, probe, !cfg.force_single_accept);
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
        leases: (0..cfg.buffers).map(|_| None).collect(),
        starved: Vec::new(),
        acceptor,
        wake,
        wake_buf: Box::new([0; 8]),
        multishot_recv,
        bundle,
        bundle_leases: Vec::new(),
        inc: (mode == ProvideMode::RingIncremental).then(|| IncTracker::new(cfg.buffers)),
        batch,
        last_harvest: 0,
        misc_in_flight: 0,
        stopping: None,
        forced: false,
        zc,
        zc_report_usage,
        cfg,
        shared,
        stats: WorkerStats::default(),
    };
    w.acceptor.start(&mut w.ring)?;
    w.report_accept();
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
        // until the CQE is harvested: provided buffers (leased in `leases` until Op::Recycle,
        // which the state machine issues only after the send's completion) and `wake_buf`
        // (boxed, dropped after the loop, which ends only once the read completed).
        unsafe { self.ring.push_or_submit(sqe) }
    }

    /// Prints what the acceptor has to say (back-off episodes, accept fallbacks) on stderr.
    fn report_accept(&mut self) {
        for notice in self.acceptor.notices() {
            eprintln!("ringwork-echo: {notice}");
        }
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
            && self.acceptor.is_idle()
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
            for cqe in cqes.iter_mut() {
                self.on_cqe(cqe)?;
            }
            self.ring.publish_buffers(GROUP)?;
            self.wake_starved()?;
            self.acceptor.poll(&mut self.ring, self.conns.len())?;
            self.report_accept();
        }
        Ok(())
    }

    /// Submits what is queued and waits for work, no longer than the acceptor's deadline.
    fn wait(&mut self) -> ringwork_sys::Result<()> {
        let accept_deadline = self.acceptor.next_deadline();
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
            let timeout =
                ringwork_sys::accept::timeout_until(accept_deadline, Some(IDLE_WAIT_TIMEOUT));
            self.ring
                .submit_and_wait_min(self.batch, self.cfg.batch_wait, timeout)?;
        } else if let Some(timeout) = ringwork_sys::accept::timeout_until(accept_deadline, None) {
            // Backing off: a pause must end on time even when nothing completes.
            self.ring.submit_and_wait_timeout(1, timeout)?;
        } else {
            self.ring.submit_and_wait(1)?;
        }
        Ok(())
    }

    fn on_cqe(&mut self, cqe: &mut Cqe) -> ringwork_sys::Result<()> {
        if cqe.user_data() == PROVIDE_BUFFERS_USER_DATA {
            // Only failures reach us (the ring's SQEs skip success CQEs, or the ring consumes
            // them where the kernel cannot skip them): buffers the bookkeeping counts as
            // the kernel's never reached it, and receives would starve. Nothing to retry.
            return Err(ringwork_sys::Error::Syscall {
                what: "IORING_OP_PROVIDE_BUFFERS (returning receive buffers)",
                errno: rustix::io::Errno::from_raw_os_error(-cqe.res()),
            });
        }
        let Ok(token) = Token::decode(cqe.user_data()) else {
            self.stats.stale += 1;
            return Ok(());
        };
        if token.kind == OpKind::SendZc {
            return self.on_send_zc(ZcSlot(token.slot.0), cqe);
        }
        if token.slot == WORKER_SLOT {
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

    /// The acceptor re-arms (or backs off) itself; a connection it brings is admitted.
    fn on_accept(&mut self, cqe: &Cqe) -> ringwork_sys::Result<()> {
        let open = self.conns.len();
        match self.acceptor.on_cqe(&mut self.ring, cqe, open)? {
            Some(fd) => self.admit(fd),
            None => Ok(()),
        }
    }

    /// A SEND_ZC's result (to its connection as `SendDone`) or its notification (which may
    /// release a deferred recycle). Its token names the tracker's slot, not the connection:
    /// the notification can come after the connection is gone.
    fn on_send_zc(&mut self, slot: ZcSlot, cqe: &Cqe) -> ringwork_sys::Result<()> {
        let Some(zc) = self.zc.as_mut() else {
            self.stats.stale += 1;
            return Ok(());
        };
        if cqe.is_notification() {
            self.stats.zc_notifs += 1;
            // IORING_SEND_ZC_REPORT_USAGE: bit 31 of `res` says the kernel copied after all
            // (always, on loopback).
            if cqe.res() & IORING_NOTIF_USAGE_ZC_COPIED != 0 {
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
        self.deliver(done.owner, Event::SendDone { res: cqe.result() })?;
        self.unpark(done.owner)
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
            parked: VecDeque::new(),
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
        self.acceptor.stop(&mut self.ring)?;
        self.report_accept();
        for i in 0..self.conns.capacity() as u32 {
            let slot = Slot(i);
            if self.conns.get(slot).is_some() {
                let token = Token::new(OpKind::Recv, slot, self.conns.generation(slot));
                self.deliver(token, Event::Shutdown)?;
            }
        }
        Ok(())
    }

    /// The grace period is over: cancel everything still in flight on every connection, so
    /// that sends to peers that do not read fail and the connections close.
    fn force_close_all(&mut self) -> ringwork_sys::Result<()> {
        self.forced = true;
        for i in 0..self.conns.capacity() as u32 {
            let slot = Slot(i);
            if let Some(fd) = self.conns.get(slot).map(|conn| conn.fd) {
                let generation = self.conns.generation(slot);
                self.misc_in_flight += 1;
                self.cancel_conn_ops(fd, slot, generation, worker_token(OpKind::Cancel))?;
            }
        }
        Ok(())
    }

    /// Cancels everything in flight on connection `slot`'s socket `fd`; the cancel with
    /// user_data `done` is the one whose completion reports it. Without
    /// IORING_ASYNC_CANCEL_FD (before Linux 5.19) the recv and the send (the machine keeps at
    /// most one of each; SEND_ZC, by its own tokens, needs 6.0 and so never meets this path)
    /// are cancelled by their user_data instead, the send's cancel completing as worker
    /// business.
    fn cancel_conn_ops(
        &mut self,
        fd: RawFd,
        slot: Slot,
        generation: Generation,
        done: UserData,
    ) -> ringwork_sys::Result<()> {
        if self.ring.can_cancel_fd() {
            return self.push(&Sqe::cancel_fd(Target::Fd(fd)).user_data(done));
        }
        let ud = |kind| Token::new(kind, slot, generation).encode();
        self.push(&Sqe::cancel(ud(OpKind::Recv)).user_data(done))?;
        self.misc_in_flight += 1;
        self.push(&Sqe::cancel(ud(OpKind::Send)).user_data(worker_token(OpKind::Cancel)))
    }

    fn on_conn_cqe(&mut self, token: Token, cqe: &mut Cqe) -> ringwork_sys::Result<()> {
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
                Ok(len) => {
                    let buf_more = cqe.buf_more();
                    let Some(selected) = cqe.take_buffer() else {
                        eprintln!("ringwork-echo: recv completion without a buffer");
                        self.stats.refused += 1;
                        return Ok(());
                    };
                    let id = selected.id();
                    if self.bundle {
                        return self.on_recv_bundle(token, selected, more);
                    }
                    let Some(br) = self.ring.buf_ring(GROUP) else {
                        unreachable!("the group is registered before the loop starts")
                    };
                    // Incremental consumption: a slice of the buffer, where the kernel's
                    // previous receives into it stopped; else the whole buffer, leased.
                    if buf_more {
                        self.stats.buf_more += 1;
                    }
                    let offset = match self.inc.as_mut() {
                        Some(inc) => br
                            .take_incremental(inc, selected)
                            .map_err(|e| e.to_string()),
                        None => br
                            .take(selected)
                            .map(|lease| self.leases[id.0 as usize] = Some(lease))
                            .map(|()| 0)
                            .map_err(|e| e.to_string()),
                    };
                    match offset {
                        Ok(offset) => Event::Recv {
                            buf: id,
                            offset,
                            len,
                            more,
                        },
                        Err(e) => {
                            eprintln!("ringwork-echo: {e}");
                            self.stats.refused += 1;
                            return Ok(());
                        }
                    }
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
        self.route(token, event)
    }

    /// A receive bundle of `len` bytes from buffer `first` on: one receive event per buffer,
    /// in ring order, each full but the last; only the last can say the multishot ended.
    fn on_recv_bundle(
        &mut self,
        token: Token,
        selected: SelectedBuf,
        more: bool,
    ) -> ringwork_sys::Result<()> {
        let len = selected.len();
        let Some(br) = self.ring.buf_ring(GROUP) else {
            unreachable!("the group is registered before the loop starts")
        };
        let size = br.buf_size();
        let mut leases = std::mem::take(&mut self.bundle_leases);
        if let Err(e) = br.take_bundle(selected, |lease| leases.push(lease)) {
            eprintln!("ringwork-echo: {e}");
            self.stats.refused += 1;
            self.bundle_leases = leases;
            return Ok(());
        }
        let count = leases.len();
        if count > 1 {
            self.stats.bundles += 1;
        }
        let mut left = len;
        for (i, lease) in leases.drain(..).enumerate() {
            let id = lease.id();
            self.leases[id.0 as usize] = Some(lease);
            let this = left.min(size);
            left -= this;
            let more = more || i + 1 < count;
            self.route(
                token,
                Event::Recv {
                    buf: id,
                    offset: 0,
                    len: this,
                    more,
                },
            )?;
        }
        self.bundle_leases = leases;
        Ok(())
    }

    /// Delivers a connection's event, parking receives behind earlier parked ones or while
    /// the machine's queue is full.
    fn route(&mut self, token: Token, event: Event) -> ringwork_sys::Result<()> {
        if let Event::Recv { .. } | Event::RecvEof { .. } | Event::RecvErr { .. } = event {
            let Some(conn) = self.conns.get_checked_mut(&token) else {
                // Freed by an earlier event of the same bundle: return the buffer.
                if let Event::Recv { buf, .. } = event {
                    self.recycle(buf);
                }
                return Ok(());
            };
            if !conn.parked.is_empty() || conn.machine.queued_buffers() >= QUEUE_CAPACITY {
                conn.parked.push_back(event);
                return Ok(());
            }
        }
        self.deliver(token, event)?;
        self.unpark(token)
    }

    /// Delivers parked receive events while the machine has room for them.
    fn unpark(&mut self, token: Token) -> ringwork_sys::Result<()> {
        loop {
            let Some(conn) = self.conns.get_checked_mut(&token) else {
                return Ok(());
            };
            if conn.machine.queued_buffers() >= QUEUE_CAPACITY {
                return Ok(());
            }
            let Some(event) = conn.parked.pop_front() else {
                return Ok(());
            };
            self.deliver(token, event)?;
        }
    }

    /// The buffers the kernel filled for a completion nobody will consume (a stale one, or an
    /// EOF that names a buffer): back to the ring, all of a bundle's, and with incremental
    /// consumption the bytes accounted as a slice released at once.
    fn return_selected(&mut self, cqe: &mut Cqe) {
        let Some(selected) = cqe.take_buffer() else {
            return;
        };
        let (id, len) = (selected.id(), selected.len());
        let Some(br) = self.ring.buf_ring(GROUP) else {
            return;
        };
        if let Some(inc) = self.inc.as_mut() {
            if br.take_incremental(inc, selected).is_ok() && len > 0 {
                if let Ok(Some(lease)) = inc.release(id) {
                    br.recycle(lease);
                }
            }
        } else if self.bundle && len > 0 {
            let mut leases = std::mem::take(&mut self.bundle_leases);
            let _ = br.take_bundle(selected, |lease| leases.push(lease));
            for lease in leases.drain(..) {
                br.recycle(lease);
            }
            self.bundle_leases = leases;
        } else if let Ok(lease) = br.take(selected) {
            br.recycle(lease);
        }
    }

    /// Feeds `event` to the connection `token` names and performs its operations.
    fn deliver(&mut self, token: Token, event: Event) -> ringwork_sys::Result<()> {
        let Some(conn) = self.conns.get_checked_mut(&token) else {
            // Freed since (a starved connection that closed meanwhile): nothing to do.
            return Ok(());
        };
        let fd = conn.fd;
        if let Event::RecvErr {
            errno: RawErrno::NOBUFS,
            more: false,
        } = event
        {
            // Registered here, when the machine sees the ENOBUFS, not when its CQE arrives:
            // the event may have been parked behind earlier receives, and a BuffersAvailable
            // delivered before it would be lost and leave the connection without a recv.
            self.starved.push(token);
        }
        let ops = match conn.machine.on_event(event) {
            Ok(ops) => ops,
            Err(e) => {
                eprintln!("ringwork-echo: {e}");
                self.stats.refused += 1;
                if let Event::Recv { buf, .. } = event {
                    self.recycle(buf);
                }
                return Ok(());
            }
        };
        let (slot, generation) = (token.slot, token.generation);
        let ud = |kind| Token::new(kind, slot, generation).encode();
        for op in ops {
            match op {
                Op::ArmRecv => {
                    let mut sqe = Sqe::recv_select(Target::Fd(fd), GROUP, self.multishot_recv);
                    if self.bundle {
                        sqe = sqe.recv_bundle();
                    }
                    let sqe = sqe.user_data(ud(OpKind::Recv));
                    self.push(&sqe)?;
                }
                Op::Send { buf, offset, len } => {
                    // The machine sends only bytes it was handed: a leased buffer, or a slice
                    // of one with incremental consumption.
                    let handed = match &self.inc {
                        Some(inc) => inc.held(buf) > 0,
                        None => self.leases[buf.0 as usize].is_some(),
                    };
                    assert!(handed, "the machine sends only buffers it was handed");
                    let zc_slot = match self.zc.as_mut().map(|zc| zc.submit(token, buf)) {
                        Some(Ok(slot)) => slot,
                        Some(Err(e)) => unreachable!("buffer ids come from the ring: {e}"),
                        None => None,
                    };
                    let target = Target::Fd(fd);
                    let sqe = match zc_slot {
                        Some(slot) => self
                            .ring
                            .send_zc_provided(
                                target,
                                GROUP,
                                buf,
                                offset,
                                len,
                                self.zc_report_usage,
                            )?
                            .user_data(
                                Token::new(OpKind::SendZc, Slot(slot.0), Generation::ZERO).encode(),
                            ),
                        // Plain, or every tracker slot is in flight: send this one by copy.
                        None => self
                            .ring
                            .send_provided(target, GROUP, buf, offset, len)?
                            .user_data(ud(OpKind::Send)),
                    };
                    self.ring.push_safe(sqe.send_flags(SendFlags::NOSIGNAL))?;
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
                Op::CancelRecv => {
                    let sqe = Sqe::cancel(ud(OpKind::Recv)).user_data(ud(OpKind::Cancel));
                    self.push(&sqe)?;
                }
                Op::CancelAll => {
                    self.cancel_conn_ops(fd, slot, generation, ud(OpKind::Cancel))?;
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
                    let conn = self.conns.remove(slot);
                    debug_assert!(conn.is_some_and(|c| c.parked.is_empty()));
                    self.shared.release();
                }
            }
        }
        Ok(())
    }

    fn recycle(&mut self, buf: BufId) {
        let lease = match self.inc.as_mut() {
            // One slice of it: the buffer goes back with its last slice, once the kernel
            // has finished with it.
            Some(inc) => match inc.release(buf) {
                Ok(lease) => lease,
                Err(e) => {
                    eprintln!("ringwork-echo: {e}");
                    self.stats.refused += 1;
                    None
                }
            },
            None => Some(
                self.leases[buf.0 as usize]
                    .take()
                    .expect("the machine recycles only buffers it holds"),
            ),
        };
        if let (Some(lease), Some(br)) = (lease, self.ring.buf_ring(GROUP)) {
            br.recycle(lease);
        }
    }

    /// Wakes connections whose recv ended with ENOBUFS once the ring has enough buffers
    /// (PITFALLS #3).
    fn wake_starved(&mut self) -> ringwork_sys::Result<()> {
        if self.starved.is_empty() {
            return Ok(());
        }
        let ready = self
            .ring
            .buf_ring(GROUP)
            .is_some_and(|br| br.book().can_rearm());
        if !ready {
            return Ok(());
        }
        let starved = std::mem::take(&mut self.starved);
        for token in starved {
            self.deliver(token, Event::BuffersAvailable)?;
        }
        Ok(())
    }
}

fn conn_reason(conns: &Slab<Conn>, slot: Slot) -> Option<ringwork_core::conn::CloseReason> {
    conns.get(slot)?.machine.close_reason()
}
