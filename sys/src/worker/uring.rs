//! The io_uring backend of the worker loop: one ring per thread, everything through it.
//!
//! Accepts are the shared [`Acceptor`]'s (multishot, re-armed when a CQE ends it, single-shot
//! where the kernel lacks it). Receives are multishot (single-shot where disabled or missing)
//! from a provided buffer ring (or PROVIDE_BUFFERS SQEs before Linux 5.19), as whole buffers,
//! bundles or incremental slices ([`RecvBuffers`] turns a completion into pieces). Sends name
//! the received buffer (or a slice of it), or bytes the machine handed over
//! ([`Op::SendOwned`]: the ring holds them until the completion, which hands them back to the
//! machine); with SEND_ZC, results and notifications go through [`ZcTracker`], which says
//! when a sent buffer may go back (the kernel may read it until the notification). A closing
//! connection's operations are ended by [`crate::driver::cancel_socket_ops`], and its socket
//! is closed through the ring.
//!
//! No protocol decision is made here: each completion becomes an [`Event`] for the
//! connection its token names, and each [`Op`] an SQE.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use ringwork_core::buf::{BufGroup, BufId, RecvBuffers, RecvMode, RecvPiece, ZcSlot, ZcTracker};
use ringwork_core::conn::{Event, Op};
use ringwork_core::errno::RawErrno;
use ringwork_core::token::{Generation, OpKind, Slot, Token, UserData};
use rustix::io_uring::{IoringFeatureFlags, IoringOp, IORING_NOTIF_USAGE_ZC_COPIED};
use rustix::net::SendFlags;

use super::{AcceptParts, Backend, Happening, StreamConfig, StreamStats};
use crate::accept::{Acceptor, Acceptors};
use crate::backend::RequiredOp;
use crate::driver::{self, FeatureLine, ServerRingConfig, StopNotice, Waiter};
use crate::error::{Error, Result};
use crate::op::{OpMemory, SafeSqe};
use crate::register::{BufRingHandle, ProvideMode, PROVIDE_BUFFERS_USER_DATA};
use crate::ring::{Cqe, Ring, SelectedBuf};
use crate::sqe::Target;

/// What this backend cannot run without; where the kernel lacks one,
/// [`crate::backend::BackendRequest::Auto`] runs on epoll.
pub const REQUIRED: [RequiredOp; 4] = [
    RequiredOp::new(IoringOp::Accept, "IORING_OP_ACCEPT", "5.5"),
    RequiredOp::new(IoringOp::Recv, "IORING_OP_RECV", "5.6"),
    RequiredOp::new(IoringOp::AsyncCancel, "IORING_OP_ASYNC_CANCEL", "5.5"),
    RequiredOp::new(IoringOp::PollAdd, "IORING_OP_POLL_ADD", "5.1"),
];

const GROUP: BufGroup = BufGroup(0);

/// The token of one of the worker's own operations (the stop notice's poll, closes of
/// rejected sockets): they are not connections'.
fn worker_token(kind: OpKind) -> UserData {
    Token::new(kind, Slot::WORKER, Generation::ZERO).encode()
}

/// A connection's socket, given to the ring's close by [`Op::Close`].
#[derive(Debug)]
pub struct UringConn {
    sock: Option<OwnedFd>,
}

/// The io_uring backend: a server ring with its fallbacks, the acceptors, the receive buffer
/// ring and the SEND_ZC tracker.
pub struct UringBackend {
    ring: Ring,
    /// The receive buffers' group on `ring`.
    bufs: BufRingHandle,
    /// The provided buffers connections hold: which pieces a completion filled, their
    /// leases, and what goes back to the ring.
    recv: RecvBuffers,
    /// The pieces of the completion being routed, reused.
    pieces: Vec<RecvPiece>,
    cqes: Vec<Cqe>,
    acceptors: Acceptors<Acceptor>,
    stop: StopNotice,
    /// Multishot recv, or single-shot recvs the machine re-arms after each completion.
    multishot_recv: bool,
    waiter: Waiter,
    /// Worker-owned ops in flight whose completions carry no state (closes of rejected
    /// sockets).
    misc_in_flight: u64,
    /// The stop notice's poll is armed.
    stop_armed: bool,
    /// With SEND_ZC: the sends in flight and the recycles that wait for notifications.
    zc: Option<ZcTracker<Token>>,
    /// SEND_ZC with IORING_SEND_ZC_REPORT_USAGE (Linux 6.2).
    zc_report_usage: bool,
    name: &'static str,
}

impl UringBackend {
    /// Sets the ring, its buffers and the acceptors up as `cfg` says, falling back where the
    /// kernel refuses (each fallback printed once, behind `cfg.name`), and prints the
    /// features line.
    pub fn new(cfg: &StreamConfig, listeners: Vec<OwnedFd>, stop: StopNotice) -> Result<Self> {
        let name = cfg.name;
        let opts = cfg.uring;
        let (mut ring, note) = driver::server_ring(ServerRingConfig {
            sq_entries: opts.sq_entries,
            sqpoll: opts.sqpoll,
            task_run: opts.task_run,
            legacy: opts.legacy,
        })?;
        if let Some(note) = note {
            eprintln!("{name}: {note}");
        }
        let waiter = Waiter::new(&ring, opts.batch, opts.batch_wait);
        if opts.batch > 1 && waiter.batch() == 1 {
            eprintln!(
                "{name}: --batch {}: {}; waiting for one completion at a time",
                opts.batch,
                Error::unsupported("IORING_FEAT_MIN_TIMEOUT", "6.12")
            );
        }
        let probe = ring.probe()?;
        for r in REQUIRED {
            probe.require(r.op, r.name, r.since)?;
        }
        // One per listener; the server keeps their number within a u16.
        let mode = opts.accept;
        let acceptors = listeners
            .into_iter()
            .zip(0u16..)
            .map(|(listener, index)| {
                Acceptor::new(listener, Slot::WORKER, probe, mode).with_listener_index(index)
            })
            .collect();
        let acceptors = Acceptors(acceptors);
        // Multishot recv (6.0) has no opcode of its own; SEND_ZC arrived in the same release.
        let multishot_recv = opts.multishot_recv && probe.supports(IoringOp::SendZc);
        let zc = if opts.zerocopy {
            probe.require(IoringOp::SendZc, "IORING_OP_SEND_ZC (--zerocopy)", "6.0")?;
            // Two sends per buffer in flight (a short send and its remainder, each awaiting
            // its notification) cover the common case; beyond that a send goes by copy.
            Some(ZcTracker::new(cfg.buffers, u32::from(cfg.buffers) * 2))
        } else {
            None
        };
        // On 6.0 and 6.1 the flag would fail every send with EINVAL: send without it there.
        let zc_report_usage = zc.is_some() && ring.send_zc_reports_usage()?;
        if zc.is_some() && !zc_report_usage {
            eprintln!(
                "{name}: --zerocopy: {}; zc_copied will stay 0",
                Error::unsupported("IORING_SEND_ZC_REPORT_USAGE", "6.2")
            );
        }
        let bundle = opts.bundle
            && ring
                .features()
                .contains(IoringFeatureFlags::RECVSEND_BUNDLE);
        if opts.bundle && !bundle {
            return Err(Error::unsupported(
                "IORING_RECVSEND_BUNDLE (--bundle)",
                "6.10",
            ));
        }
        let (mode, bufs) = provide_buffers(&mut ring, cfg, bundle)?;
        println!(
            "{}",
            FeatureLine::new(&ring)
                .with("multishot_accept", acceptors.multishot())
                .with("multishot_recv", multishot_recv)
                .with("pbuf_ring", mode != ProvideMode::Sqe)
                .with("incremental", mode == ProvideMode::RingIncremental)
                .with("bundle", bundle)
                .with("zerocopy", zc.is_some())
                .with("batch", waiter.batch() > 1)
        );
        let recv_mode = match (bundle, mode) {
            (true, _) => RecvMode::Bundle,
            (false, ProvideMode::RingIncremental) => RecvMode::Incremental,
            (false, _) => RecvMode::Whole,
        };
        Ok(Self {
            bufs,
            cqes: Vec::with_capacity(ring.cq_entries() as usize),
            ring,
            recv: RecvBuffers::new(cfg.buffers, cfg.buffer_size, recv_mode),
            pieces: Vec::with_capacity(usize::from(cfg.buffers)),
            acceptors,
            stop,
            multishot_recv,
            waiter,
            misc_in_flight: 0,
            stop_armed: false,
            zc,
            zc_report_usage,
            name,
        })
    }

    /// A SEND_ZC's result (to its connection as `SendDone`) or its notification (which may
    /// release a deferred recycle). Its token names the connection and, in `sub`, the
    /// tracker's slot, which is what both CQEs are matched by: the notification can come
    /// after the connection is gone.
    fn on_send_zc(
        &mut self,
        slot: ZcSlot,
        cqe: &Cqe,
        out: &mut Vec<Happening>,
        stats: &mut StreamStats,
    ) {
        let Some(zc) = self.zc.as_mut() else {
            stats.stale += 1;
            return;
        };
        if cqe.is_notification() {
            stats.zc_notifs += 1;
            // IORING_SEND_ZC_REPORT_USAGE: bit 31 of `res` says the kernel copied after all
            // (always, on loopback).
            if cqe.res() & IORING_NOTIF_USAGE_ZC_COPIED != 0 {
                stats.zc_copied += 1;
            }
            match zc.on_notification(slot) {
                Ok(Some(buf)) => self.recycle_now(buf, stats),
                Ok(None) => {}
                Err(e) => {
                    eprintln!("{}: {e}", self.name);
                    stats.refused += 1;
                }
            }
            return;
        }
        let done = match zc.on_result(slot, cqe.more()) {
            Ok(done) => done,
            Err(e) => {
                eprintln!("{}: {e}", self.name);
                stats.refused += 1;
                return;
            }
        };
        if let Some(buf) = done.recycle {
            self.recycle_now(buf, stats);
        }
        if let Ok(n) = cqe.result() {
            stats.bytes += u64::from(n);
        }
        out.push(Happening::Drive(
            done.owner,
            Event::SendDone { res: cqe.result() },
        ));
    }

    /// A connection's completion as events (a receive may bring several: one per buffer a
    /// bundle filled).
    fn on_conn_cqe(
        &mut self,
        token: Token,
        cqe: &mut Cqe,
        out: &mut Vec<Happening>,
        stats: &mut StreamStats,
    ) {
        let more = cqe.more();
        let event = match token.kind {
            OpKind::Recv => match cqe.result() {
                Ok(0) => {
                    self.return_selected(cqe, stats);
                    Event::RecvEof { more }
                }
                Ok(_) => {
                    if cqe.buf_more() {
                        stats.buf_more += 1;
                    }
                    match cqe.take_buffer() {
                        Some(selected) => self.on_recv(token, selected, more, out, stats),
                        None => {
                            eprintln!("{}: recv completion without a buffer", self.name);
                            stats.refused += 1;
                        }
                    }
                    return;
                }
                Err(errno) => {
                    if errno == RawErrno::NOBUFS {
                        stats.nobufs += 1;
                    }
                    Event::RecvErr { errno, more }
                }
            },
            OpKind::Send => {
                if let Ok(n) = cqe.result() {
                    stats.bytes += u64::from(n);
                }
                Event::SendDone { res: cqe.result() }
            }
            OpKind::SendOwned => {
                if let Ok(n) = cqe.result() {
                    stats.bytes += u64::from(n);
                }
                let Some(OpMemory::Out(data)) = self.ring.take_memory(cqe.user_data()) else {
                    eprintln!(
                        "{}: an owned send's completion without its bytes",
                        self.name
                    );
                    stats.refused += 1;
                    return;
                };
                Event::SendOwnedDone {
                    res: cqe.result(),
                    data,
                }
            }
            OpKind::Cancel => Event::CancelDone,
            OpKind::Close => Event::Closed,
            _ => {
                stats.stale += 1;
                return;
            }
        };
        out.push(Happening::Drive(token, event));
    }

    /// A receive completion of at least one byte: one receive event per buffer it filled (a
    /// bundle spans several, each full but the last), in order.
    fn on_recv(
        &mut self,
        token: Token,
        selected: SelectedBuf,
        more: bool,
        out: &mut Vec<Happening>,
        stats: &mut StreamStats,
    ) {
        let br = self.ring.bufs(self.bufs);
        let pieces = &mut self.pieces;
        match br.take_recv(&mut self.recv, selected, more, |p| pieces.push(p)) {
            Ok(count) if count > 1 => stats.bundles += 1,
            Ok(_) => {}
            Err(e) => {
                eprintln!("{}: {e}", self.name);
                stats.refused += 1;
            }
        }
        out.extend(self.pieces.drain(..).map(|p| {
            Happening::Drive(
                token,
                Event::Recv {
                    buf: p.buf,
                    offset: p.offset,
                    len: p.len,
                    more: p.more,
                },
            )
        }));
    }

    /// The buffers the kernel filled for a completion nobody will consume (a stale one, or
    /// an EOF that names a buffer): back to the ring.
    fn return_selected(&mut self, cqe: &mut Cqe, stats: &mut StreamStats) {
        let more = cqe.more();
        let Some(selected) = cqe.take_buffer() else {
            return;
        };
        let br = self.ring.bufs(self.bufs);
        if let Err(e) = br.return_recv(&mut self.recv, selected, more) {
            eprintln!("{}: {e}", self.name);
            stats.refused += 1;
        }
    }

    fn recycle_now(&mut self, buf: BufId, stats: &mut StreamStats) {
        let br = self.ring.bufs(self.bufs);
        // With incremental consumption one slice: the buffer goes back with its last slice,
        // once the kernel has finished with it.
        if let Err(e) = br.recycle_recv(&mut self.recv, buf) {
            eprintln!("{}: {e}", self.name);
            stats.refused += 1;
        }
    }

    fn send_sqe(
        &mut self,
        token: Token,
        fd: Target,
        buf: BufId,
        offset: u32,
        len: u32,
    ) -> Result<SafeSqe> {
        // The machine sends only bytes it was handed: a leased buffer, or a slice of one
        // with incremental consumption.
        assert!(
            self.recv.holds(buf),
            "the machine sends only buffers it was handed"
        );
        let zc_slot = match self.zc.as_mut().map(|zc| zc.submit(token, buf)) {
            Some(Ok(slot)) => slot,
            Some(Err(e)) => unreachable!("buffer ids come from the ring: {e}"),
            None => None,
        };
        let sqe = match zc_slot {
            Some(slot) => {
                // The tracker holds at most 2 x 32768 sends: its slots fit `sub`.
                let sub = u16::try_from(slot.0).expect("ZcTracker sized for u16");
                self.ring
                    .send_zc_provided(fd, GROUP, buf, offset, len, self.zc_report_usage)?
                    .user_data(token.with_kind(OpKind::SendZc).with_sub(sub).encode())
            }
            // Plain, or every tracker slot is in flight: send this one by copy.
            None => self
                .ring
                .send_provided(fd, GROUP, buf, offset, len)?
                .user_data(token.with_kind(OpKind::Send).encode()),
        };
        Ok(sqe.send_flags(SendFlags::NOSIGNAL))
    }
}

/// Registers the receive buffers: a provided buffer ring (incremental when asked), or
/// PROVIDE_BUFFERS SQEs where the kernel has no rings (before 5.19).
fn provide_buffers(
    ring: &mut Ring,
    cfg: &StreamConfig,
    bundle: bool,
) -> Result<(ProvideMode, BufRingHandle)> {
    let mode = match (cfg.uring.pbuf_ring, cfg.uring.incremental) {
        (true, true) => ProvideMode::RingIncremental,
        (true, false) => ProvideMode::Ring,
        (false, _) => ProvideMode::Sqe,
    };
    match ring.add_provided_buffers(GROUP, cfg.buffers, cfg.buffer_size, mode) {
        // Incremental consumption was asked for by name: no silent fallback (the error names
        // IOU_PBUF_RING_INC and Linux 6.12).
        Err(e @ Error::Unsupported { .. }) if mode == ProvideMode::Ring => {
            eprintln!(
                "{}: {e}: providing buffers with IORING_OP_PROVIDE_BUFFERS SQEs instead",
                cfg.name
            );
            if bundle {
                // Bundles name only their first buffer; without a ring's order the rest are
                // unknown.
                return Err(e);
            }
            let bufs =
                ring.add_provided_buffers(GROUP, cfg.buffers, cfg.buffer_size, ProvideMode::Sqe)?;
            Ok((ProvideMode::Sqe, bufs))
        }
        r => r.map(|bufs| (mode, bufs)),
    }
}

impl Backend for UringBackend {
    type ConnIo = UringConn;
    type Accept = Acceptor;

    fn start(&mut self) -> Result<()> {
        for a in &mut self.acceptors.0 {
            a.start(&mut self.ring)?;
        }
        self.stop.arm(&mut self.ring, worker_token(OpKind::Read))?;
        self.stop_armed = true;
        self.ring.submit()?;
        Ok(())
    }

    fn wait(&mut self, timeout: Option<Duration>, _stats: &mut StreamStats) -> Result<()> {
        self.waiter.wait(&mut self.ring, timeout)
    }

    fn harvest(
        &mut self,
        live: &dyn Fn(&Token) -> bool,
        open: usize,
        now_ms: u64,
        out: &mut Vec<Happening>,
        stats: &mut StreamStats,
    ) -> Result<()> {
        let mut cqes = std::mem::take(&mut self.cqes);
        self.waiter.harvest(&mut self.ring, &mut cqes);
        let mut result = Ok(());
        for cqe in cqes.iter_mut() {
            result = self.on_cqe(cqe, live, open, now_ms, out, stats);
            if result.is_err() {
                break;
            }
        }
        self.cqes = cqes;
        result
    }

    fn adopt(&mut self, sock: OwnedFd) -> UringConn {
        UringConn { sock: Some(sock) }
    }

    fn register(&mut self, _token: Token, _io: &mut UringConn) -> bool {
        true
    }

    fn reject(&mut self, sock: OwnedFd) -> Result<()> {
        self.misc_in_flight += 1;
        self.ring
            .push_safe(SafeSqe::close(sock).user_data(worker_token(OpKind::Close)))
    }

    fn perform(
        &mut self,
        token: Token,
        io: &mut UringConn,
        op: Op,
        _events: &mut VecDeque<Event>,
        _stats: &mut StreamStats,
    ) -> Result<()> {
        let ud = |kind| token.with_kind(kind).encode();
        let sock = io
            .sock
            .as_ref()
            .expect("the machine closes a connection once, last");
        let fd = Target::Fd(sock.as_raw_fd());
        let sqe = match op {
            Op::ArmRecv => {
                let mut sqe = SafeSqe::recv_select(fd, GROUP, self.multishot_recv);
                if self.recv.mode() == RecvMode::Bundle {
                    sqe = sqe.recv_bundle();
                }
                sqe.user_data(ud(OpKind::Recv))
            }
            Op::Send { buf, offset, len } => self.send_sqe(token, fd, buf, offset, len)?,
            // The ring holds the bytes until the completion, which hands them back.
            Op::SendOwned { data, offset } => SafeSqe::send_bytes(fd, data, offset as usize)
                .user_data(ud(OpKind::SendOwned))
                .send_flags(SendFlags::NOSIGNAL),
            Op::CancelRecv => SafeSqe::cancel(ud(OpKind::Recv)).user_data(ud(OpKind::Cancel)),
            Op::CancelAll => {
                driver::cancel_socket_ops(&self.ring, sock.as_fd()).user_data(ud(OpKind::Cancel))
            }
            Op::Close => {
                let sock = io.sock.take().expect("checked above");
                SafeSqe::close(sock).user_data(ud(OpKind::Close))
            }
            Op::Recycle(_) | Op::AwaitBuffers | Op::Free => {
                unreachable!("the loop performs {op:?} itself")
            }
        };
        self.ring.push_safe(sqe)
    }

    fn pump(&mut self, _: Token, _: &mut UringConn, _: &mut StreamStats) -> Option<Event> {
        None
    }

    fn received(&mut self, buf: BufId, offset: u32, len: u32) -> &[u8] {
        let br = self.ring.bufs(self.bufs);
        br.piece_bytes(&self.recv, buf, offset, len)
    }

    fn recycle(&mut self, buf: BufId, stats: &mut StreamStats) {
        // With SEND_ZC the kernel may still read the buffer: the tracker says whether it goes
        // back now or on its last notification.
        let now = self.zc.as_mut().map_or(Ok(true), |zc| zc.recycle(buf));
        match now {
            Ok(true) => self.recycle_now(buf, stats),
            Ok(false) => {}
            Err(e) => unreachable!("buffer ids come from the ring: {e}"),
        }
    }

    fn can_rearm(&mut self) -> bool {
        self.ring.bufs(self.bufs).book().can_rearm()
    }

    fn end_of_batch(&mut self) -> Result<()> {
        self.ring.publish_buffers(GROUP)
    }

    fn accept(&mut self) -> AcceptParts<'_, Acceptor> {
        (&mut self.acceptors, &mut self.ring)
    }

    fn acceptors(&self) -> &Acceptors<Acceptor> {
        &self.acceptors
    }

    fn busy(&self) -> bool {
        self.misc_in_flight > 0
            || self.stop_armed
            // Buffers a notification has yet to release belong to the kernel until then.
            || self.zc.as_ref().is_some_and(|zc| zc.in_flight() > 0)
    }

    fn finish(&mut self, stats: &mut StreamStats) {
        let rs = self.ring.stats();
        stats.enters = rs.enters;
        stats.submitted = rs.submitted;
        stats.completions = rs.completions;
        stats.cq_overflows = rs.overflow_seen;
        stats.busy_retries = rs.busy_retries;
        stats.skip_success = rs.skip_success;
    }
}

impl UringBackend {
    fn on_cqe(
        &mut self,
        cqe: &mut Cqe,
        live: &dyn Fn(&Token) -> bool,
        open: usize,
        now_ms: u64,
        out: &mut Vec<Happening>,
        stats: &mut StreamStats,
    ) -> Result<()> {
        if cqe.user_data() == PROVIDE_BUFFERS_USER_DATA {
            // Only failures reach us (the ring's SQEs skip success CQEs, or the ring consumes
            // them where the kernel cannot skip them): buffers the bookkeeping counts as the
            // kernel's never reached it, and receives would starve. Nothing to retry.
            return Err(Error::Syscall {
                what: "IORING_OP_PROVIDE_BUFFERS (returning receive buffers)",
                errno: rustix::io::Errno::from_raw_os_error(-cqe.res()),
            });
        }
        let Ok(token) = Token::decode(cqe.user_data()) else {
            stats.stale += 1;
            return Ok(());
        };
        if let Some((i, acceptor)) =
            (self.acceptors.0.iter_mut().enumerate()).find(|(_, a)| a.owns(&token))
        {
            if let Some(sock) = acceptor.on_cqe(&mut self.ring, cqe, open, now_ms)? {
                out.push(Happening::Accepted(sock, i as u16));
            }
            return Ok(());
        }
        if token.kind == OpKind::SendZc {
            // Before the connection lookup: a notification may come after its connection
            // was freed (the tracker, not the connection, holds the buffer until then).
            self.on_send_zc(ZcSlot(u32::from(token.sub)), cqe, out, stats);
            return Ok(());
        }
        if token.slot == Slot::WORKER {
            if token.kind != OpKind::Read {
                self.misc_in_flight -= 1;
                return Ok(());
            }
            // The stop notice's poll.
            self.stop_armed = false;
            if self.stop.given() {
                out.push(Happening::Stop);
            } else {
                // Spurious: poll again.
                self.stop.arm(&mut self.ring, worker_token(OpKind::Read))?;
                self.stop_armed = true;
            }
            return Ok(());
        }
        if !live(&token) {
            // A completion for an earlier incarnation of the slot (close() does not cancel
            // what is in flight): what it filled goes back.
            stats.stale += 1;
            self.return_selected(cqe, stats);
            if token.kind == OpKind::SendOwned {
                // The kernel is done with the bytes: dropped.
                drop(self.ring.take_memory(cqe.user_data()));
            }
            return Ok(());
        }
        self.on_conn_cqe(token, cqe, out, stats);
        Ok(())
    }
}
