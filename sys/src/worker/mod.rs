//! The worker loop, written once: one thread's connections, driven on io_uring or epoll.
//!
//! [`run`] takes a [`StreamMachine`] per connection (core's `EchoConn`, or a protocol of your
//! own) and does everything else: the connection table with generations (a late completion
//! for a recycled slot is recognised and its buffer goes back), the acceptors with their
//! back-off, the wait (batched on io_uring) bounded by the next deadline it owes (an accept
//! pause's end, the drain's clock), receive buffers and the connections starved of them, the
//! stop notice, the graceful drain and the abort at the end of its grace period, and the
//! counters. A [`Backend`] only performs: it turns a machine's [`Op`]s into submissions (or
//! nonblocking syscalls) and what the kernel says back into [`Event`]s. The two backends are
//! [`uring`] and [`epoll`]; each is written once, for every protocol.
//!
//! What the loop does not do: decide. When to receive, what to send, when a buffer goes back
//! and when a connection is freed are the machine's; the loop performs its operations in the
//! order it asks for them, and frees the connection at [`Op::Free`].
//!
//! The loop reads the clock once per turn and passes the time in; nothing in core reads one.

pub mod epoll;
mod serve;
pub mod uring;

pub use serve::{Crew, Serve, ServeError, WorkerStart};

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ringwork_core::accept::timeout_until;
use ringwork_core::buf::BufId;
use ringwork_core::conn::{ChunkQueues, Event, Op, Starved, StreamMachine};
use ringwork_core::shutdown::{Drain, DrainAction};
use ringwork_core::slab::Slab;
use ringwork_core::token::{OpKind, Slot, Token};
use rustix::fd::OwnedFd;

use crate::accept::AcceptMode;
use crate::backend::Backend as BackendKind;
use crate::driver::{StartGate, StopNotice};
use crate::error::Result;
use crate::ring::{LegacyFeatures, SqPoll, TaskRun};

/// How often a draining worker looks at the clock.
const DRAIN_TICK: Duration = Duration::from_millis(100);

/// What every worker of a stream server needs, fixed at start. [`StreamConfig::default`] is
/// what ringwork-echo runs with when given no flags.
#[derive(Clone, Copy, Debug)]
pub struct StreamConfig {
    /// The server's name, in front of every line it prints (`ringwork-echo`).
    pub name: &'static str,
    /// Receive buffers per worker (a provided buffer ring on io_uring, a pool on epoll); a
    /// power of two.
    pub buffers: u16,
    /// The size of each receive buffer in bytes.
    pub buffer_size: u32,
    /// Most connections open at once in the process ([`Admission`]) and in one worker.
    pub max_conns: usize,
    /// Graceful drain: how long connections may finish after the stop notice.
    pub shutdown_grace: Duration,
    /// io_uring's options (epoll has none).
    pub uring: UringOptions,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            name: "ringwork",
            buffers: 1024,
            buffer_size: 4096,
            max_conns: 20_000,
            shutdown_grace: Duration::from_secs(3),
            uring: UringOptions::default(),
        }
    }
}

/// How the io_uring backend sets up its ring and which of its features it uses; each is
/// probed, and turned off where the kernel lacks it (or where a field says so, to test the
/// fallback).
#[derive(Clone, Copy, Debug)]
pub struct UringOptions {
    /// Submission queue entries (the completion queue gets four times as many).
    pub sq_entries: u32,
    /// How the acceptors accept (multishot where the kernel has it, unless told otherwise).
    pub accept: AcceptMode,
    /// Completions to wait for per io_uring_enter (1: plain waits), for at most
    /// `batch_wait` ([`crate::driver::Waiter`]).
    pub batch: u32,
    /// How long a wait may hold out for `batch` completions.
    pub batch_wait: Duration,
    /// SQPOLL, when asked for (no fallback: a refusal is an error).
    pub sqpoll: Option<SqPoll>,
    /// SEND_ZC instead of SEND (Linux 6.0).
    pub zerocopy: bool,
    /// Multishot recv where the kernel has it (else single-shot, re-armed per completion).
    pub multishot_recv: bool,
    /// The best task-run mode allowed.
    pub task_run: TaskRun,
    /// Kernel features left unused so that their fallbacks run.
    pub legacy: LegacyFeatures,
    /// A provided buffer ring (falls back to PROVIDE_BUFFERS SQEs where refused).
    pub pbuf_ring: bool,
    /// Receive bundles (IORING_RECVSEND_BUNDLE, Linux 6.10).
    pub bundle: bool,
    /// Incremental buffer consumption (IOU_PBUF_RING_INC, Linux 6.12).
    pub incremental: bool,
}

impl Default for UringOptions {
    fn default() -> Self {
        Self {
            sq_entries: 1024,
            accept: AcceptMode::Multishot,
            batch: 16,
            batch_wait: Duration::from_micros(50),
            sqpoll: None,
            zerocopy: false,
            multishot_recv: true,
            task_run: TaskRun::Defer,
            legacy: LegacyFeatures::default(),
            pbuf_ring: true,
            bundle: false,
            incremental: false,
        }
    }
}

/// Connections open in the whole process, shared by its workers, for
/// [`StreamConfig::max_conns`].
#[derive(Debug, Default)]
pub struct Admission {
    live: AtomicUsize,
}

impl Admission {
    /// Reserves room for one more connection; false when the process is at `max`.
    pub fn try_admit(&self, max: usize) -> bool {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Releases a connection admitted by [`Admission::try_admit`].
    pub fn release(&self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A worker's counters; the workers' sum is the `stats:` line (`Display`: `key=value` pairs).
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamStats {
    /// Connections accepted and served.
    pub conns: u64,
    /// Connections closed at once because of `max_conns` or shutdown.
    pub rejected: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// io_uring_enter calls (epoll: epoll_wait calls).
    pub enters: u64,
    /// SQEs submitted.
    pub submitted: u64,
    /// CQEs harvested (epoll: events).
    pub completions: u64,
    /// Completions for an earlier incarnation of a slot, ignored.
    pub stale: u64,
    /// Events the connection state machine refused (driver bugs; logged).
    pub refused: u64,
    /// Receives that found no buffer (ENOBUFS).
    pub nobufs: u64,
    /// SEND_ZC notifications harvested.
    pub zc_notifs: u64,
    /// SEND_ZC notifications saying the kernel copied anyway (IORING_NOTIF_USAGE_ZC_COPIED).
    pub zc_copied: u64,
    /// Times the CQ was seen full with completions in the kernel's overflow backlog.
    pub cq_overflows: u64,
    /// io_uring_enter calls refused with EBUSY and retried after reaping.
    pub busy_retries: u64,
    /// SQEs that complete silently on success (IOSQE_CQE_SKIP_SUCCESS).
    pub skip_success: u64,
    /// Receive completions that filled more than one buffer (bundles).
    pub bundles: u64,
    /// Receive completions into a buffer the kernel has not used up (IORING_CQE_F_BUF_MORE).
    pub buf_more: u64,
}

impl std::ops::AddAssign for StreamStats {
    fn add_assign(&mut self, o: Self) {
        self.conns += o.conns;
        self.rejected += o.rejected;
        self.bytes += o.bytes;
        self.enters += o.enters;
        self.submitted += o.submitted;
        self.completions += o.completions;
        self.stale += o.stale;
        self.refused += o.refused;
        self.nobufs += o.nobufs;
        self.zc_notifs += o.zc_notifs;
        self.zc_copied += o.zc_copied;
        self.cq_overflows += o.cq_overflows;
        self.busy_retries += o.busy_retries;
        self.skip_success += o.skip_success;
        self.bundles += o.bundles;
        self.buf_more += o.buf_more;
    }
}

impl fmt::Display for StreamStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "conns={} rejected={} bytes={} enters={} submitted={} completions={} stale={} \
             refused={} nobufs={} cq_overflows={} busy_retries={} skip_success={} bundles={} \
             buf_more={} zc_copied={} zc_notifs={}",
            self.conns,
            self.rejected,
            self.bytes,
            self.enters,
            self.submitted,
            self.completions,
            self.stale,
            self.refused,
            self.nobufs,
            self.cq_overflows,
            self.busy_retries,
            self.skip_success,
            self.bundles,
            self.buf_more,
            self.zc_copied,
            self.zc_notifs
        )
    }
}

/// What happened in the kernel since the last wait, as a backend tells the loop.
#[derive(Debug)]
pub enum Happening {
    /// A connection was accepted (not yet admitted: the loop decides).
    Accepted(OwnedFd),
    /// The stop notice was given.
    Stop,
    /// Drive connection `Token` with this event first.
    Drive(Token, Event),
    /// A readiness backend saw connection `Token`'s socket become ready: the backend notes
    /// it ([`Backend::ready`]) and the loop drives the connection ([`Backend::pump`]).
    Ready(Token, Readiness),
}

/// What a readiness backend saw of a connection's socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Bytes, an EOF or an error to read.
    pub readable: bool,
    /// Room to send, or an error to find by sending.
    pub writable: bool,
}

/// One I/O model under the loop: what [`run`] needs from io_uring or epoll. It performs, it
/// does not decide: every choice of what to do next is the machine's or the loop's.
pub trait Backend {
    /// What the backend keeps per connection (its socket, and what a readiness backend must
    /// remember between events).
    type ConnIo;

    /// Starts accepting and listening for the stop notice (after the start gate).
    fn start(&mut self) -> Result<()>;

    /// Submits what is queued and waits for work, at most `timeout`.
    fn wait(&mut self, timeout: Option<Duration>, stats: &mut StreamStats) -> Result<()>;

    /// What happened, in order, appended to `out`; `live` says whether a token still names
    /// a connection (a completion for a freed one gives back what it holds, here).
    fn harvest(
        &mut self,
        live: &dyn Fn(&Token) -> bool,
        open: usize,
        now_ms: u64,
        out: &mut Vec<Happening>,
        stats: &mut StreamStats,
    ) -> Result<()>;

    /// Makes a new connection's socket the backend's.
    fn adopt(&mut self, sock: OwnedFd) -> Self::ConnIo;

    /// Tells the backend the token of a connection [`Backend::adopt`] took, before its
    /// first event; false when it cannot take it (the connection is dropped, which closes
    /// its socket).
    fn register(&mut self, token: Token, io: &mut Self::ConnIo) -> bool;

    /// Closes a socket the loop would not admit.
    fn reject(&mut self, sock: OwnedFd) -> Result<()>;

    /// Performs `op` (never [`Op::Free`], [`Op::Recycle`] or [`Op::AwaitBuffers`]: the loop
    /// does those) for connection `token`; events it produces at once go to `events`.
    fn perform(
        &mut self,
        token: Token,
        io: &mut Self::ConnIo,
        op: Op,
        events: &mut VecDeque<Event>,
        stats: &mut StreamStats,
    ) -> Result<()>;

    /// Notes what a [`Happening::Ready`] said of a connection's socket (a completion backend
    /// has no such happening).
    fn ready(&mut self, io: &mut Self::ConnIo, ready: Readiness) {
        let _ = (io, ready);
    }

    /// A readiness backend's next event for a connection: a send that waited for room, or
    /// a receive while the machine wants bytes and the socket may have them. A completion
    /// backend has none.
    fn pump(
        &mut self,
        token: Token,
        io: &mut Self::ConnIo,
        stats: &mut StreamStats,
    ) -> Option<Event>;

    /// Gives receive buffer `buf` back (with SEND_ZC, once its last notification is in).
    fn recycle(&mut self, buf: BufId, stats: &mut StreamStats);

    /// Enough buffers are back for starved connections to receive again.
    fn can_rearm(&mut self) -> bool;

    /// After a batch: publishes returned buffers.
    fn end_of_batch(&mut self) -> Result<()>;

    /// Resumes accepting after a pause, or at capacity once below it.
    fn poll_accept(&mut self, open: usize, now_ms: u64) -> Result<()>;

    /// When the accept side next needs the loop awake (a pause's end), on the loop's clock.
    fn accept_deadline_ms(&self) -> Option<u64>;

    /// Stops accepting (the drain).
    fn stop_accepting(&mut self, now_ms: u64) -> Result<()>;

    /// Prints what the acceptors have to say (back-off episodes, fallbacks).
    fn report(&mut self, name: &str);

    /// An acceptor has an accept in flight (being cancelled, in a drain).
    fn accepting(&self) -> bool;

    /// Something of the worker's own is still in flight (a close, the stop notice's poll, a
    /// SEND_ZC notification owed): the worker may not end yet.
    fn busy(&self) -> bool;

    /// Final counters of the backend's own (enters, submissions, overflows).
    fn finish(&mut self, stats: &mut StreamStats);
}

/// Where a worker gets its connections and its stop from.
pub struct WorkerIo<'a> {
    /// The process' connection count, shared by its workers.
    pub admission: &'a Admission,
    /// Where every worker meets after set-up, before its first accept.
    pub gate: &'a StartGate,
}

struct Conn<M, C> {
    machine: M,
    io: C,
}

/// Runs one worker on `backend` until its drain has closed every connection; each accepted
/// connection gets a machine from `new_machine`.
pub fn run<B: Backend, M: StreamMachine>(
    cfg: &StreamConfig,
    mut backend: B,
    io: WorkerIo<'_>,
    mut new_machine: impl FnMut() -> M,
) -> Result<StreamStats> {
    let mut w = Worker {
        conns: Slab::new(cfg.max_conns),
        chunks: ChunkQueues::new(chunk_table_size(cfg)),
        starved: Starved::new(cfg.max_conns),
        woken: Vec::with_capacity(cfg.max_conns),
        events: VecDeque::new(),
        drain: Drain::new(cfg.shutdown_grace.as_millis() as u64),
        epoch: Instant::now(),
        now_ms: 0,
        stats: StreamStats::default(),
        name: cfg.name,
        max_conns: cfg.max_conns,
        admission: io.admission,
    };
    // Accept only once every worker is set up (see `StartGate`).
    if io.gate.arrive().is_err() {
        return Ok(w.stats);
    }
    backend.start()?;
    backend.report(w.name);
    let mut happenings = Vec::new();
    while !w
        .drain
        .finished(w.conns.len(), backend.accepting(), backend.busy())
    {
        let drain_tick = w.drain.stopping().then_some(DRAIN_TICK);
        let timeout = timeout_until(backend.accept_deadline_ms(), w.now_ms, drain_tick);
        backend.wait(timeout, &mut w.stats)?;
        // The clock, once a turn: what follows sees the time the wait ended.
        w.now_ms = w.epoch.elapsed().as_millis() as u64;
        let conns = &w.conns;
        backend.harvest(
            &|t| conns.get_checked(t).is_some(),
            w.conns.len(),
            w.now_ms,
            &mut happenings,
            &mut w.stats,
        )?;
        for happening in happenings.drain(..) {
            w.on_happening(&mut backend, happening, &mut new_machine)?;
        }
        backend.end_of_batch()?;
        w.wake_starved(&mut backend)?;
        backend.poll_accept(w.conns.len(), w.now_ms)?;
        backend.report(w.name);
        if w.drain.on_tick(w.now_ms) == Some(DrainAction::Abort) {
            w.each_conn(&mut backend, Event::Abort)?;
        }
    }
    backend.finish(&mut w.stats);
    Ok(w.stats)
}

/// How many chunks the connections of one worker may hold at once. With whole buffers (and
/// bundles) each chunk holds a distinct buffer, so their count bounds them exactly.
/// Incremental consumption puts several slices in one buffer: there the table is a margin,
/// room for every connection to queue twice its backpressure threshold on top of one chunk
/// per buffer (a connection whose receive finds it full fails closed, `QueueOverflow`).
fn chunk_table_size(cfg: &StreamConfig) -> usize {
    let buffers = usize::from(cfg.buffers);
    if cfg.uring.incremental {
        cfg.max_conns
            .saturating_mul(2 * ringwork_core::conn::DEFAULT_MAX_QUEUED)
            .saturating_add(buffers)
    } else {
        buffers
    }
}

struct Worker<'a, M, C> {
    conns: Slab<Conn<M, C>>,
    /// The chunks every connection holds (received, not yet sent on).
    chunks: ChunkQueues,
    /// Connections whose receive found no buffer, to wake once buffers are back.
    starved: Starved,
    /// The connections being woken, reused.
    woken: Vec<Token>,
    /// Events a connection's operations produced at once, fed back in order.
    events: VecDeque<Event>,
    drain: Drain,
    /// The worker's clock: the drain and the acceptors count milliseconds from here.
    epoch: Instant,
    /// Milliseconds since `epoch` when the last wait ended.
    now_ms: u64,
    stats: StreamStats,
    name: &'static str,
    max_conns: usize,
    admission: &'a Admission,
}

impl<M: StreamMachine, C> Worker<'_, M, C> {
    fn on_happening<B: Backend<ConnIo = C>>(
        &mut self,
        backend: &mut B,
        happening: Happening,
        new_machine: &mut impl FnMut() -> M,
    ) -> Result<()> {
        match happening {
            Happening::Accepted(sock) => self.admit(backend, sock, new_machine),
            Happening::Stop => {
                if self.drain.on_stop(self.now_ms) == Some(DrainAction::BeginDrain) {
                    backend.stop_accepting(self.now_ms)?;
                    backend.report(self.name);
                    self.each_conn(backend, Event::Shutdown)?;
                }
                Ok(())
            }
            Happening::Drive(token, event) => self.drive(backend, token, Some(event)),
            Happening::Ready(token, ready) => {
                let Some(conn) = self.conns.get_checked_mut(&token) else {
                    self.stats.stale += 1;
                    return Ok(());
                };
                backend.ready(&mut conn.io, ready);
                self.drive(backend, token, None)
            }
        }
    }

    fn admit<B: Backend<ConnIo = C>>(
        &mut self,
        backend: &mut B,
        sock: OwnedFd,
        new_machine: &mut impl FnMut() -> M,
    ) -> Result<()> {
        if self.drain.stopping() || !self.admission.try_admit(self.max_conns) {
            self.stats.rejected += 1;
            return backend.reject(sock);
        }
        // Not fatal for the connection: Nagle only delays.
        let _ = crate::net::set_nodelay(&sock);
        let conn = Conn {
            machine: new_machine(),
            io: backend.adopt(sock),
        };
        let Some((slot, generation)) = self.conns.insert(conn) else {
            // A full table: the connection is dropped, and its socket closed, at once.
            self.admission.release();
            self.stats.rejected += 1;
            return Ok(());
        };
        let token = Token::new(OpKind::Recv, slot, generation);
        let registered = self
            .conns
            .get_mut(slot)
            .is_some_and(|c| backend.register(token, &mut c.io));
        if !registered {
            self.conns.remove(slot);
            self.admission.release();
            return Ok(());
        }
        self.stats.conns += 1;
        self.drive(backend, token, Some(Event::Opened))
    }

    /// Delivers `event` to every open connection (the stop, the abort: twice a lifetime).
    fn each_conn<B: Backend<ConnIo = C>>(&mut self, backend: &mut B, event: Event) -> Result<()> {
        for i in 0..self.conns.capacity() as u32 {
            let slot = Slot(i);
            if self.conns.get(slot).is_some() {
                let token = Token::new(OpKind::Recv, slot, self.conns.generation(slot));
                self.drive(backend, token, Some(event))?;
            }
        }
        Ok(())
    }

    /// Feeds `first` (if any) and every event the resulting operations produce at once, and
    /// what the backend has for the connection while it wants bytes.
    fn drive<B: Backend<ConnIo = C>>(
        &mut self,
        backend: &mut B,
        token: Token,
        first: Option<Event>,
    ) -> Result<()> {
        let mut events = std::mem::take(&mut self.events);
        events.extend(first);
        let result = loop {
            let mut fed = Ok(());
            while let Some(event) = events.pop_front() {
                fed = self.feed(backend, token, event, &mut events);
                if fed.is_err() {
                    break;
                }
            }
            if fed.is_err() {
                break fed;
            }
            let Some(conn) = self.conns.get_checked_mut(&token) else {
                break Ok(());
            };
            match backend.pump(token, &mut conn.io, &mut self.stats) {
                Some(event) => events.push_back(event),
                None => break Ok(()),
            }
        };
        events.clear();
        self.events = events;
        result
    }

    /// Feeds one event to connection `token` and performs the operations it asks for.
    fn feed<B: Backend<ConnIo = C>>(
        &mut self,
        backend: &mut B,
        token: Token,
        event: Event,
        events: &mut VecDeque<Event>,
    ) -> Result<()> {
        let Some(conn) = self.conns.get_checked_mut(&token) else {
            // Freed since (by an earlier piece of the same bundle, or a starved connection
            // that closed meanwhile): a buffer it was handed goes back.
            if let Event::Recv { buf, .. } = event {
                backend.recycle(buf, &mut self.stats);
            }
            return Ok(());
        };
        if let Err(e) = conn.machine.on_event(&mut self.chunks, event) {
            eprintln!("{}: {e}", self.name);
            self.stats.refused += 1;
            if let Event::Recv { buf, .. } = event {
                backend.recycle(buf, &mut self.stats);
            }
            return Ok(());
        }
        // Free removes the connection: it is the last operation.
        while let Some(conn) = self.conns.get_checked_mut(&token) {
            let Some(op) = conn.machine.poll_op(&mut self.chunks) else {
                break;
            };
            match op {
                Op::Free => {
                    self.conns.remove(token.slot);
                    self.admission.release();
                }
                Op::Recycle(buf) => backend.recycle(buf, &mut self.stats),
                Op::AwaitBuffers => self.starved.wait(token),
                op => {
                    if op == Op::Close && std::env::var_os("RINGWORK_DEBUG").is_some() {
                        if let Some(reason) = conn.machine.close_reason() {
                            eprintln!("{}: closing a connection: {reason}", self.name);
                        }
                    }
                    backend.perform(token, &mut conn.io, op, events, &mut self.stats)?;
                }
            }
        }
        Ok(())
    }

    /// Wakes connections whose receive found no buffer once enough are back.
    fn wake_starved<B: Backend<ConnIo = C>>(&mut self, backend: &mut B) -> Result<()> {
        if self.starved.is_empty() {
            return Ok(());
        }
        let mut woken = std::mem::take(&mut self.woken);
        self.starved.wake(backend.can_rearm(), &mut woken);
        let mut result = Ok(());
        for token in woken.drain(..) {
            if result.is_ok() {
                result = self.drive(backend, token, Some(Event::BuffersAvailable));
            }
        }
        self.woken = woken;
        result
    }
}

/// Runs one worker of a stream server on the backend `kind` names (see
/// [`crate::backend::choose`]), set up from `cfg`, until its drain is over.
pub fn run_on<M: StreamMachine>(
    kind: BackendKind,
    cfg: &StreamConfig,
    listeners: Vec<OwnedFd>,
    stop: StopNotice,
    io: WorkerIo<'_>,
    new_machine: impl FnMut() -> M,
) -> Result<StreamStats> {
    match kind {
        BackendKind::Uring => {
            let backend = uring::UringBackend::new(cfg, listeners, stop)?;
            run(cfg, backend, io, new_machine)
        }
        BackendKind::Epoll => {
            let backend = epoll::EpollBackend::new(cfg, listeners, stop)?;
            run(cfg, backend, io, new_machine)
        }
    }
}
