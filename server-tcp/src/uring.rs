//! The io_uring echo driver: one ring per thread, everything through the ring.
//!
//! The loop (`ringwork_sys::driver::Waiter`): submit and wait (for one completion, or under
//! load for up to `--batch` within `--batch-wait-us`; with SQPOLL not at all while completions
//! are ready), route each CQE by its token (the acceptor's, the stop notice's, or a
//! connection's recv/send/cancel/close), feed connection completions to
//! `ringwork_core::conn::EchoConn`, turn the operations it returns into SQEs, publish recycled
//! buffers, repeat. No protocol decision is made here, and no `unsafe`: every SQE goes
//! through safe submission (`ringwork_sys::SafeSqe`) and names only the ring's own buffers.
//! With `--zerocopy`, SEND_ZC results and notifications go through
//! `ringwork_core::buf::ZcTracker`, which decides when a sent buffer may go back to the ring.
//! Stopping is `ringwork_core::shutdown::Drain`: on the stop notice the acceptor stops and
//! every connection drains; after the grace period every connection aborts.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use ringwork_core::buf::{BufGroup, BufId, RecvBuffers, RecvMode, RecvPiece, ZcSlot, ZcTracker};
use ringwork_core::conn::{ChunkQueues, Config, EchoConn, Event, Op, Starved, DEFAULT_MAX_QUEUED};
use ringwork_core::errno::RawErrno;
use ringwork_core::shutdown::{Drain, DrainAction};
use ringwork_core::slab::Slab;
use ringwork_core::token::{Generation, OpKind, Slot, Token, UserData};
use ringwork_sys::backend::RequiredOp;
use ringwork_sys::driver::{self, FeatureLine, ServerRingConfig, StopNotice, Waiter};
use ringwork_sys::{
    Acceptor, Cqe, ProvideMode, Ring, SafeSqe, SelectedBuf, Target, PROVIDE_BUFFERS_USER_DATA,
};
use rustix::fd::OwnedFd;
use rustix::io_uring::{IoringFeatureFlags, IoringOp, IORING_NOTIF_USAGE_ZC_COPIED};
use rustix::net::SendFlags;

use crate::{Shared, WorkerConfig, WorkerStats};

/// What this backend cannot run without; where the kernel lacks one, `--backend auto` runs
/// on epoll.
pub const REQUIRED: [RequiredOp; 4] = [
    RequiredOp::new(IoringOp::Accept, "IORING_OP_ACCEPT", "5.5"),
    RequiredOp::new(IoringOp::Recv, "IORING_OP_RECV", "5.6"),
    RequiredOp::new(IoringOp::AsyncCancel, "IORING_OP_ASYNC_CANCEL", "5.5"),
    RequiredOp::new(IoringOp::PollAdd, "IORING_OP_POLL_ADD", "5.1"),
];

const GROUP: BufGroup = BufGroup(0);
/// How often a draining worker looks at the clock.
const DRAIN_TICK: Duration = Duration::from_millis(100);

/// The token of one of the worker's own operations (the stop notice's poll, closes of
/// rejected sockets, cancels of a connection's send): they are not connections'.
fn worker_token(kind: OpKind) -> UserData {
    Token::new(kind, Slot::WORKER, Generation::ZERO).encode()
}

struct Conn {
    /// The socket; given to the ring's close by Op::Close.
    sock: Option<OwnedFd>,
    /// Its number, for the SQEs that name it until the close.
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
    /// One per listener (`--listen` may be given more than once), with its accept (tokens
    /// of kind Accept on `Slot::WORKER`, the listener's index in `sub`).
    acceptors: Vec<Acceptor>,
    /// The main thread's word that the process is stopping.
    stop: StopNotice,
    /// Multishot recv (probed, unless `--disable multishot-recv`); else single-shot recvs,
    /// which the machine re-arms after each completion like an ended multishot.
    multishot_recv: bool,
    waiter: Waiter,
    /// Worker-owned ops in flight whose completions carry no state (closes of rejected
    /// sockets).
    misc_in_flight: u64,
    /// The stop notice's poll is armed.
    stop_armed: bool,
    drain: Drain,
    /// The worker's clock: `Drain` and the acceptors count milliseconds from here.
    epoch: Instant,
    /// Milliseconds since `epoch`, read once per turn of the loop (after the wait).
    now_ms: u64,
    /// With `--zerocopy`: the SEND_ZCs in flight and the recycles that wait for their
    /// notifications (PITFALLS.md, "SEND_ZC gives two CQEs, and the buffer is the kernel's until
    /// the second"). The machine recycles a buffer after its last send's result;
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
    listeners: Vec<OwnedFd>,
    stop: StopNotice,
    shared: &Shared,
    gate: &ringwork_sys::driver::StartGate,
) -> ringwork_sys::Result<WorkerStats> {
    let (mut ring, note) = driver::server_ring(ServerRingConfig {
        sq_entries: cfg.sq_entries,
        sqpoll: cfg.sqpoll,
        task_run: cfg.task_run,
        legacy: cfg.legacy,
    })?;
    if let Some(note) = note {
        eprintln!("ringwork-echo: {note}");
    }
    let waiter = Waiter::new(&ring, cfg.batch, cfg.batch_wait);
    if cfg.batch > 1 && waiter.batch() == 1 {
        eprintln!(
            "ringwork-echo: --batch {}: {}; waiting for one completion at a time",
            cfg.batch,
            ringwork_sys::Error::unsupported("IORING_FEAT_MIN_TIMEOUT", "6.12")
        );
    }
    let probe = ring.probe()?;
    for r in REQUIRED {
        probe.require(r.op, r.name, r.since)?;
    }
    // One per listener; `main` keeps their number within a u16.
    let acceptors: Vec<Acceptor> = listeners
        .into_iter()
        .zip(0u16..)
        .map(|(listener, index)| {
            Acceptor::new(listener, Slot::WORKER, probe, !cfg.force_single_accept)
                .with_listener_index(index)
        })
        .collect();
    // Multishot recv (6.0) has no opcode of its own; SEND_ZC arrived in the same release.
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
            "ringwork-echo: --zerocopy: {}; zc_copied will stay 0",
            ringwork_sys::Error::unsupported("IORING_SEND_ZC_REPORT_USAGE", "6.2")
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
            // A kernel without buffer rings (before 5.19) still has the legacy way to provide
            // the same buffers (PITFALLS.md, "Kernels differ, and have bugs in the edges").
            eprintln!(
                "ringwork-echo: {e}: providing buffers with IORING_OP_PROVIDE_BUFFERS SQEs \
                 instead"
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
    println!(
        "{}",
        FeatureLine::new(&ring)
            .with(
                "multishot_accept",
                acceptors.iter().all(Acceptor::multishot)
            )
            .with("multishot_recv", multishot_recv)
            .with("pbuf_ring", mode != ProvideMode::Sqe)
            .with("incremental", mode == ProvideMode::RingIncremental)
            .with("bundle", bundle)
            .with("zerocopy", zc.is_some())
            .with("batch", waiter.batch() > 1)
    );
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
        acceptors,
        stop,
        multishot_recv,
        waiter,
        misc_in_flight: 0,
        stop_armed: false,
        drain: Drain::new(cfg.shutdown_grace.as_millis() as u64),
        epoch: Instant::now(),
        now_ms: 0,
        zc,
        zc_report_usage,
        cfg,
        shared,
        stats: WorkerStats::default(),
    };
    // Accept only once every worker has its ring (see `StartGate`).
    if gate.arrive().is_err() {
        return Ok(w.stats);
    }
    for a in &mut w.acceptors {
        a.start(&mut w.ring)?;
    }
    w.report_accept();
    w.stop.arm(&mut w.ring, worker_token(OpKind::Read))?;
    w.stop_armed = true;
    w.ring.submit()?;
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
    /// Prints what the acceptor has to say (back-off episodes, accept fallbacks) on stderr.
    fn report_accept(&mut self) {
        for notice in self.acceptors.iter_mut().flat_map(Acceptor::notices) {
            eprintln!("ringwork-echo: {notice}");
        }
    }

    fn done(&self) -> bool {
        self.drain.finished(
            self.conns.len(),
            !self.acceptors.iter().all(Acceptor::is_idle),
            self.misc_in_flight > 0
                || self.stop_armed
                // Buffers a notification has yet to release belong to the kernel until then.
                || self.zc.as_ref().is_some_and(|zc| zc.in_flight() > 0),
        )
    }

    fn run_loop(&mut self) -> ringwork_sys::Result<()> {
        let mut cqes: Vec<Cqe> = Vec::with_capacity(self.ring.cq_entries() as usize);
        while !self.done() {
            // The wait ends in time for an accept pause's end, and for the drain's clock.
            let drain_tick = self.drain.stopping().then_some(DRAIN_TICK);
            let deadline = self.acceptors.iter().fold(None, |d, a| {
                ringwork_core::accept::earliest(d, a.next_deadline_ms())
            });
            let timeout = ringwork_core::accept::timeout_until(deadline, self.now_ms, drain_tick);
            self.waiter.wait(&mut self.ring, timeout)?;
            self.now_ms = self.epoch.elapsed().as_millis() as u64;
            self.waiter.harvest(&mut self.ring, &mut cqes);
            for cqe in cqes.iter_mut() {
                self.on_cqe(cqe)?;
            }
            self.ring.publish_buffers(GROUP)?;
            self.wake_starved()?;
            for a in &mut self.acceptors {
                a.poll(&mut self.ring, self.conns.len(), self.now_ms)?;
            }
            self.report_accept();
            if self.drain.on_tick(self.now_ms) == Some(DrainAction::Abort) {
                self.each_conn(Event::Abort)?;
            }
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
        if let Some(acceptor) = self.acceptors.iter_mut().find(|a| a.owns(&token)) {
            let open = self.conns.len();
            return match acceptor.on_cqe(&mut self.ring, cqe, open, self.now_ms)? {
                Some(fd) => self.admit(fd),
                None => Ok(()),
            };
        }
        if token.kind == OpKind::SendZc {
            // Before the connection lookup: a notification may come after its connection
            // was freed (the tracker, not the connection, holds the buffer until then).
            return self.on_send_zc(ZcSlot(u32::from(token.sub)), cqe);
        }
        if token.slot == Slot::WORKER {
            return match token.kind {
                OpKind::Read => self.on_stop_notice(),
                _ => {
                    self.misc_in_flight -= 1;
                    Ok(())
                }
            };
        }
        self.on_conn_cqe(token, cqe)
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
        self.deliver(done.owner, Event::SendDone { res: cqe.result() })
    }

    fn admit(&mut self, sock: OwnedFd) -> ringwork_sys::Result<()> {
        if self.drain.stopping() || !self.shared.try_admit(self.cfg.max_conns) {
            return self.reject(sock);
        }
        // Not fatal for the connection: Nagle only delays.
        let _ = ringwork_sys::net::set_nodelay(&sock);
        let conn = Conn {
            fd: sock.as_raw_fd(),
            sock: Some(sock),
            machine: EchoConn::new(Config::default()),
        };
        let Some((slot, generation)) = self.conns.insert(conn) else {
            self.shared.release();
            // A full table: the connection is dropped, and its socket closed, at once.
            return Ok(());
        };
        self.stats.conns += 1;
        self.deliver(Token::new(OpKind::Recv, slot, generation), Event::Opened)
    }

    fn reject(&mut self, sock: OwnedFd) -> ringwork_sys::Result<()> {
        self.stats.rejected += 1;
        self.misc_in_flight += 1;
        self.ring
            .push_safe(SafeSqe::close(sock).user_data(worker_token(OpKind::Close)))
    }

    /// The stop notice's poll completed: stop accepting and drain, if the notice was given.
    fn on_stop_notice(&mut self) -> ringwork_sys::Result<()> {
        self.stop_armed = false;
        if !self.stop.given() {
            // Spurious: poll again.
            self.stop.arm(&mut self.ring, worker_token(OpKind::Read))?;
            self.stop_armed = true;
            return Ok(());
        }
        if self.drain.on_stop(self.now_ms) == Some(DrainAction::BeginDrain) {
            for a in &mut self.acceptors {
                a.stop(&mut self.ring, self.now_ms)?;
            }
            self.report_accept();
            self.each_conn(Event::Shutdown)?;
        }
        Ok(())
    }

    /// Delivers `event` to every open connection.
    fn each_conn(&mut self, event: Event) -> ringwork_sys::Result<()> {
        for i in 0..self.conns.capacity() as u32 {
            let slot = Slot(i);
            if self.conns.get(slot).is_some() {
                let token = Token::new(OpKind::Recv, slot, self.conns.generation(slot));
                self.deliver(token, event)?;
            }
        }
        Ok(())
    }

    fn on_conn_cqe(&mut self, token: Token, cqe: &mut Cqe) -> ringwork_sys::Result<()> {
        if self.conns.get_checked(&token).is_none() {
            // A completion for an earlier incarnation of the slot (PITFALLS.md, "close() does
            // not cancel in-flight requests").
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
                    if cqe.buf_more() {
                        self.stats.buf_more += 1;
                    }
                    let Some(selected) = cqe.take_buffer() else {
                        eprintln!("ringwork-echo: recv completion without a buffer");
                        self.stats.refused += 1;
                        return Ok(());
                    };
                    return self.on_recv(token, selected, more);
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
    fn on_recv(
        &mut self,
        token: Token,
        selected: SelectedBuf,
        more: bool,
    ) -> ringwork_sys::Result<()> {
        let Some(br) = self.ring.buf_ring(GROUP) else {
            unreachable!("the group is registered before the loop starts")
        };
        let mut pieces = std::mem::take(&mut self.pieces);
        match br.take_recv(&mut self.recv, selected, more, |p| pieces.push(p)) {
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
    fn return_selected(&mut self, cqe: &mut Cqe) {
        let more = cqe.more();
        let (Some(selected), Some(br)) = (cqe.take_buffer(), self.ring.buf_ring(GROUP)) else {
            return;
        };
        if let Err(e) = br.return_recv(&mut self.recv, selected, more) {
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
        let slot = token.slot;
        let ud = |kind| token.with_kind(kind).encode();
        match op {
            Op::ArmRecv => {
                let mut sqe = SafeSqe::recv_select(Target::Fd(fd), GROUP, self.multishot_recv);
                if self.recv.mode() == RecvMode::Bundle {
                    sqe = sqe.recv_bundle();
                }
                self.ring.push_safe(sqe.user_data(ud(OpKind::Recv)))?;
            }
            Op::Send { buf, offset, len } => {
                // The machine sends only bytes it was handed: a leased buffer, or a slice
                // of one with incremental consumption.
                assert!(
                    self.recv.holds(buf),
                    "the machine sends only buffers it was handed"
                );
                let zc_slot = match self.zc.as_mut().map(|zc| zc.submit(token, buf)) {
                    Some(Ok(slot)) => slot,
                    Some(Err(e)) => unreachable!("buffer ids come from the ring: {e}"),
                    None => None,
                };
                let target = Target::Fd(fd);
                let sqe = match zc_slot {
                    Some(slot) => {
                        // The tracker holds at most 2 x 32768 sends: its slots fit `sub`.
                        let sub = u16::try_from(slot.0).expect("ZcTracker sized for u16");
                        self.ring
                            .send_zc_provided(
                                target,
                                GROUP,
                                buf,
                                offset,
                                len,
                                self.zc_report_usage,
                            )?
                            .user_data(token.with_kind(OpKind::SendZc).with_sub(sub).encode())
                    }
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
            Op::AwaitBuffers => self.starved.wait(token),
            Op::CancelRecv => {
                let sqe = SafeSqe::cancel(ud(OpKind::Recv)).user_data(ud(OpKind::Cancel));
                self.ring.push_safe(sqe)?;
            }
            Op::CancelAll => {
                let sock = self.conns.get(slot).and_then(|c| c.sock.as_ref());
                let sock = sock.expect("the machine cancels before it closes");
                let sqe = driver::cancel_socket_ops(&self.ring, sock.as_fd());
                self.ring.push_safe(sqe.user_data(ud(OpKind::Cancel)))?;
            }
            Op::Close => {
                if let Some(reason) = conn_reason(&self.conns, slot) {
                    if reason.is_fatal() && std::env::var_os("RINGWORK_DEBUG").is_some() {
                        eprintln!("ringwork-echo: closing a connection: {reason}");
                    }
                }
                let sock = self
                    .conns
                    .get_mut(slot)
                    .and_then(|c| c.sock.take())
                    .expect("the machine closes a connection once");
                self.ring
                    .push_safe(SafeSqe::close(sock).user_data(ud(OpKind::Close)))?;
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
        if let Err(e) = br.recycle_recv(&mut self.recv, buf) {
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
