//! The worker loop, written once: one thread's connections, driven on io_uring or epoll.
//!
//! [`run`] takes a [`StreamMachine`] per connection (core's `ProtocolConn` running a protocol of your
//! own) and does everything else: the connection table with generations (a late completion
//! for a recycled slot is recognised and its buffer goes back), the acceptors with their
//! back-off, the wait (batched on io_uring) bounded by the next deadline it owes (an accept
//! pause's end, the drain's clock), receive buffers and the connections starved of them, the
//! stop notice, the graceful drain and the abort at the end of its grace period, and the
//! counters. A [`Backend`] only performs: it turns a machine's [`Op`]s into submissions (or
//! nonblocking syscalls) and what the kernel says back into [`Event`]s. The two backends are
//! [`uring`] and [`epoll`]; each is written once, for every protocol.
//!
//! [`run_engine`] is the same loop for any [`Engine`]: [`run`] gives it a [`StreamEngine`]
//! (a [`Backend`] with a [`StreamMachine`] per connection); a server whose connections do
//! more than stream I/O (ringwork-files' stats, opens and reads) brings an engine of its own
//! per backend and keeps the table, admission, the wait, the stop, the drain and the
//! deadlines from here: each connection is ticked when the deadline its engine reports
//! ([`Engine::deadline_ms`]) comes, from a heap, never all of them at once.
//!
//! What the loop does not do: decide. When to receive, what to send, when a buffer goes back
//! and when a connection is freed are the machine's; the loop performs its operations in the
//! order it asks for them, and frees the connection at [`Op::Free`].
//!
//! The loop reads the clock once per turn and passes the time in; nothing in core reads one.

pub mod epoll;
pub mod live;
mod serve;
pub mod uring;

mod stream;

pub use serve::{Crew, Serve, ServeError, Server, WorkerStart};
pub use stream::StreamEngine;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ringwork_core::accept::{earliest, timeout_until};
use ringwork_core::buf::BufId;
use ringwork_core::conn::{Event, Op, StreamMachine};
use ringwork_core::shutdown::{Drain, DrainAction};
use ringwork_core::slab::Slab;
use ringwork_core::token::{OpKind, Slot, Token, UserData};
use rustix::fd::OwnedFd;

use crate::accept::{AcceptMode, AcceptSide, Acceptors};
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
    /// Where to serve live counters in Prometheus' text format (`GET /metrics`,
    /// [`crate::metrics`]); None (the default): nowhere, and the workers publish nothing.
    pub metrics_listen: Option<std::net::SocketAddr>,
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
            metrics_listen: None,
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
    /// Receives that brought bytes (live metrics only: not on the `stats:` line).
    pub receives: u64,
    /// Bytes received (live metrics only: not on the `stats:` line).
    pub bytes_received: u64,
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
        self.receives += o.receives;
        self.bytes_received += o.bytes_received;
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

/// What happened in the kernel since the last wait, as a backend tells the loop; `C` is what
/// a completion brings a connection (core's [`Event`] for a [`StreamMachine`]).
#[derive(Debug)]
pub enum Happening<C = Event> {
    /// A connection was accepted (not yet admitted: the loop decides) from listener `u16`
    /// (its index among the worker's listeners).
    Accepted(OwnedFd, u16),
    /// The stop notice was given.
    Stop,
    /// Drive connection `Token` with this completion first.
    Drive(Token, C),
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

    /// The bytes of a receive piece the connection holds (`buf[offset..offset + len]`, as
    /// its [`Event::Recv`] named them), for a machine that reads what it receives.
    fn received(&mut self, buf: BufId, offset: u32, len: u32) -> &[u8];

    /// Gives receive buffer `buf` back (with SEND_ZC, once its last notification is in).
    fn recycle(&mut self, buf: BufId, stats: &mut StreamStats);

    /// Enough buffers are back for starved connections to receive again.
    fn can_rearm(&mut self) -> bool;

    /// After a batch: publishes returned buffers.
    fn end_of_batch(&mut self) -> Result<()>;

    /// How the backend accepts (its acceptors' kind).
    type Accept: AcceptSide;

    /// Its acceptors and what they accept through (the ring, the epoll set): the loop polls,
    /// stops and reports them.
    fn accept(&mut self) -> AcceptParts<'_, Self::Accept>;

    /// Its acceptors.
    fn acceptors(&self) -> &Acceptors<Self::Accept>;

    /// Something of the worker's own is still in flight (a close, the stop notice's poll, a
    /// SEND_ZC notification owed): the worker may not end yet.
    fn busy(&self) -> bool;

    /// Final counters of the backend's own (enters, submissions, overflows).
    fn finish(&mut self, stats: &mut StreamStats);
}

/// A worker's acceptors and what they accept through.
pub type AcceptParts<'a, A> = (&'a mut Acceptors<A>, &'a mut <A as AcceptSide>::Via);

/// Where a worker gets its connections and its stop from.
pub struct WorkerIo<'a> {
    /// The process' connection count, shared by its workers.
    pub admission: &'a Admission,
    /// Where every worker meets after set-up, before its first accept.
    pub gate: &'a StartGate,
    /// Where the worker publishes its counters for the metrics endpoint (None: nowhere).
    pub live: Option<&'a crate::metrics::Slot>,
}

/// What the loop hands a connection to act on.
#[derive(Debug)]
pub enum Input<C> {
    /// It was just admitted.
    Opened,
    /// One of its operations completed.
    Completion(C),
    /// A readiness backend saw its socket become ready.
    Ready(Readiness),
    /// The stop notice: finish what is in flight, then close.
    Shutdown,
    /// The drain's grace period is over: close now.
    Abort,
    /// Its deadline ([`Engine::deadline_ms`]) has come: its timeouts.
    Tick,
    /// What it waited for (receive buffers, a chunk buffer) is there
    /// ([`Engine::next_wake`]).
    Wake,
}

/// The loop's view of one I/O model together with the connections' state machines: what
/// [`run_engine`] needs. A stream protocol gets one from [`run`] ([`StreamEngine`]: a
/// [`Backend`] and a [`StreamMachine`] per connection); a server whose machines do more than
/// stream I/O (ringwork-files: stats, opens, reads) implements it for each backend.
///
/// The loop owns what every server needs and none should write again: the connection table
/// with generations (a completion for a freed connection is handed back through
/// [`Engine::stale`]), admission, the wait bounded by the deadlines it owes, the stop, the
/// drain and the abort, ticks, and the order of everything in a turn. An engine only turns
/// what its connections ask for into I/O and what the kernel says into their input.
pub trait Engine {
    /// A connection: its machine and what the backend keeps for it.
    type Conn;
    /// What a completion brings a connection.
    type Completion;
    /// What the engine fails with (the loop's own failures are ringwork-sys errors).
    type Error: From<crate::error::Error>;

    /// Starts accepting and listening for the stop notice (after the start gate).
    fn start(&mut self) -> std::result::Result<(), Self::Error>;

    /// Submits what is queued and waits for work, at most `timeout`.
    fn wait(
        &mut self,
        timeout: Option<Duration>,
        stats: &mut StreamStats,
    ) -> std::result::Result<(), Self::Error>;

    /// What happened, in order, appended to `out` (`live`: whether a token names a
    /// connection still).
    fn harvest(
        &mut self,
        live: &dyn Fn(&Token) -> bool,
        open: usize,
        now_ms: u64,
        out: &mut Vec<Happening<Self::Completion>>,
        stats: &mut StreamStats,
    ) -> std::result::Result<(), Self::Error>;

    /// A new connection on `sock`, accepted from listener `listener` (its index among the
    /// worker's listeners).
    fn adopt(&mut self, sock: OwnedFd, listener: u16) -> Self::Conn;

    /// Tells the engine the token of a connection [`Engine::adopt`] made, before its first
    /// input; false when it cannot take it (it is dropped, which closes its socket).
    fn register(&mut self, token: Token, conn: &mut Self::Conn) -> bool;

    /// Closes a socket the loop would not admit.
    fn reject(&mut self, sock: OwnedFd) -> std::result::Result<(), Self::Error>;

    /// Gives connection `token` its input and performs what its machine asks for; true once
    /// it is to be freed (nothing of it is in flight any more).
    fn drive(
        &mut self,
        token: Token,
        conn: &mut Self::Conn,
        input: Input<Self::Completion>,
        stats: &mut StreamStats,
    ) -> std::result::Result<bool, Self::Error>;

    /// A completion for a connection freed since: what it holds goes back.
    fn stale(&mut self, completion: Self::Completion, stats: &mut StreamStats);

    /// When connection `conn` next needs [`Input::Tick`], in milliseconds on the loop's
    /// clock ([`LoopConfig::epoch`]); asked after each time it is driven. None: no timeout
    /// runs. The loop wakes for the earliest and ticks only the connections whose deadline
    /// has come: no scan of every connection.
    fn deadline_ms(&self, conn: &Self::Conn) -> Option<u64> {
        let _ = conn;
        None
    }

    /// How often the loop wakes at the least, for the engine's own periodic work in
    /// [`Engine::end_of_turn`] (None: only for what happens and the deadlines).
    fn wake_interval(&self) -> Option<Duration> {
        None
    }

    /// After each turn's happenings: the engine's own work (buffers back to the kernel,
    /// logs, caches); `stopping` once the drain has begun.
    fn end_of_turn(
        &mut self,
        stopping: bool,
        stats: &mut StreamStats,
    ) -> std::result::Result<(), Self::Error>;

    /// A connection whose wait is over, to drive with [`Input::Wake`]; asked for again after
    /// each is driven, until none.
    fn next_wake(&mut self) -> Option<Token>;

    /// How the engine accepts (its acceptors' kind).
    type Accept: AcceptSide;

    /// Its acceptors and what they accept through (the ring, the epoll set): the loop polls,
    /// stops and reports them.
    fn accept(&mut self) -> AcceptParts<'_, Self::Accept>;

    /// Its acceptors.
    fn acceptors(&self) -> &Acceptors<Self::Accept>;

    /// Something of the worker's own is still in flight: the worker may not end yet.
    fn busy(&self) -> bool;

    /// Final counters of the engine's own.
    fn finish(&mut self, stats: &mut StreamStats);

    /// Writes the engine's counters for the metrics endpoint after the loop's own
    /// ([`live`]); `stats` are the loop's so far. Called at most once a millisecond, at the
    /// end of a turn: it must not allocate or wait.
    fn publish(&self, stats: &StreamStats, out: &mut live::Values<'_>) {
        let _ = (stats, out);
    }
}

/// What the loop itself needs to know.
#[derive(Clone, Copy, Debug)]
pub struct LoopConfig {
    /// The server's name, in front of every line the loop prints.
    pub name: &'static str,
    /// Connections one worker's table holds.
    pub slots: usize,
    /// Connections open at once in the whole process ([`Admission`]).
    pub max_conns: usize,
    /// Graceful drain: how long connections may finish after the stop notice.
    pub shutdown_grace: Duration,
    /// The loop's clock counts milliseconds from here (the engine's deadlines too).
    pub epoch: Instant,
}

/// Runs one worker of a stream protocol on `backend` until its drain has closed every
/// connection; each accepted connection gets a machine from `new_machine`.
pub fn run<B: Backend, M: StreamMachine>(
    cfg: &StreamConfig,
    backend: B,
    io: WorkerIo<'_>,
    new_machine: impl FnMut() -> M,
) -> Result<StreamStats> {
    let lc = LoopConfig {
        name: cfg.name,
        slots: cfg.max_conns,
        max_conns: cfg.max_conns,
        shutdown_grace: cfg.shutdown_grace,
        epoch: Instant::now(),
    };
    run_engine(&lc, StreamEngine::new(cfg, backend, new_machine), io)
}

/// Runs one worker on `engine` until its drain has closed every connection.
pub fn run_engine<E: Engine>(
    cfg: &LoopConfig,
    mut engine: E,
    io: WorkerIo<'_>,
) -> std::result::Result<StreamStats, E::Error> {
    let mut w = Worker {
        conns: Slab::new(cfg.slots),
        timers: BinaryHeap::new(),
        due: Vec::new(),
        drain: Drain::new(cfg.shutdown_grace.as_millis() as u64),
        epoch: cfg.epoch,
        now_ms: cfg.epoch.elapsed().as_millis() as u64,
        stats: StreamStats::default(),
        name: cfg.name,
        max_conns: cfg.max_conns,
        admission: io.admission,
    };
    // Accept only once every worker is set up (see `StartGate`).
    if io.gate.arrive().is_err() {
        return Ok(w.stats);
    }
    engine.start()?;
    engine.accept().0.report(w.name);
    let interval = engine.wake_interval();
    let mut happenings = Vec::new();
    let mut publisher = live::Publisher::new(io.live);
    while !w
        .drain
        .finished(w.conns.len(), engine.acceptors().accepting(), engine.busy())
    {
        let drain_tick = w.drain.stopping().then_some(DRAIN_TICK);
        // Back soon enough to publish what this turn could not.
        let wake = [interval, drain_tick, publisher.wake()]
            .into_iter()
            .flatten()
            .min();
        // Never past an accept pause's end or the earliest connection deadline.
        let deadline = earliest(
            engine.acceptors().deadline_ms(),
            w.timers.peek().map(|t| t.0 .0),
        );
        let timeout = timeout_until(deadline, w.now_ms, wake);
        engine.wait(timeout, &mut w.stats)?;
        // The clock, once a turn: what follows sees the time the wait ended.
        w.now_ms = w.epoch.elapsed().as_millis() as u64;
        let conns = &w.conns;
        engine.harvest(
            &|t| conns.get_checked(t).is_some(),
            w.conns.len(),
            w.now_ms,
            &mut happenings,
            &mut w.stats,
        )?;
        for happening in happenings.drain(..) {
            w.on_happening(&mut engine, happening)?;
        }
        engine.end_of_turn(w.drain.stopping(), &mut w.stats)?;
        while let Some(token) = engine.next_wake() {
            w.drive(&mut engine, token, Input::Wake)?;
        }
        let (acceptors, via) = engine.accept();
        acceptors.poll(via, w.conns.len(), w.now_ms)?;
        acceptors.report(w.name);
        if w.drain.on_tick(w.now_ms) == Some(DrainAction::Abort) {
            w.each_conn(&mut engine, || Input::Abort)?;
        }
        w.expire(&mut engine)?;
        publisher.turn_ended(w.now_ms, &engine, &w.stats, w.conns.len());
    }
    engine.finish(&mut w.stats);
    publisher.publish(&engine, &w.stats, w.conns.len());
    Ok(w.stats)
}

/// A connection in the loop's table, with the deadline it is filed under.
struct Entry<C> {
    conn: C,
    /// The earliest deadline in `Worker::timers` for it (a later one is filed when this one
    /// comes); None: none filed.
    timer: Option<u64>,
}

struct Worker<'a, C> {
    conns: Slab<Entry<C>>,
    /// Connection deadlines, earliest first: (milliseconds, the connection's token). One
    /// that no longer matches its entry's `timer` is stale and skipped.
    timers: BinaryHeap<Reverse<(u64, u64)>>,
    /// The connections whose deadline has come, being ticked.
    due: Vec<Token>,
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

impl<C> Worker<'_, C> {
    fn on_happening<E: Engine<Conn = C>>(
        &mut self,
        engine: &mut E,
        happening: Happening<E::Completion>,
    ) -> std::result::Result<(), E::Error> {
        match happening {
            Happening::Accepted(sock, listener) => self.admit(engine, sock, listener),
            Happening::Stop => {
                if self.drain.on_stop(self.now_ms) == Some(DrainAction::BeginDrain) {
                    let (acceptors, via) = engine.accept();
                    acceptors.stop(via, self.now_ms)?;
                    acceptors.report(self.name);
                    self.each_conn(engine, || Input::Shutdown)?;
                }
                Ok(())
            }
            Happening::Drive(token, c) => self.drive(engine, token, Input::Completion(c)),
            Happening::Ready(token, ready) => self.drive(engine, token, Input::Ready(ready)),
        }
    }

    fn admit<E: Engine<Conn = C>>(
        &mut self,
        engine: &mut E,
        sock: OwnedFd,
        listener: u16,
    ) -> std::result::Result<(), E::Error> {
        // Accepted during the drain (the accept in flight when the stop came): served, and
        // told at once that the server is stopping.
        if !self.drain.admits() || !self.admission.try_admit(self.max_conns) {
            self.stats.rejected += 1;
            return engine.reject(sock);
        }
        // Not fatal for the connection: Nagle only delays.
        let _ = crate::net::set_nodelay(&sock);
        let entry = Entry {
            conn: engine.adopt(sock, listener),
            timer: None,
        };
        let Some((slot, generation)) = self.conns.insert(entry) else {
            // A full table: the connection is dropped, and its socket closed, at once.
            self.admission.release();
            self.stats.rejected += 1;
            return Ok(());
        };
        let token = Token::new(OpKind::Recv, slot, generation);
        let registered = self
            .conns
            .get_mut(slot)
            .is_some_and(|e| engine.register(token, &mut e.conn));
        if !registered {
            self.conns.remove(slot);
            self.admission.release();
            return Ok(());
        }
        self.stats.conns += 1;
        self.drive(engine, token, Input::Opened)?;
        if self.drain.stopping() {
            self.drive(engine, token, Input::Shutdown)?;
        }
        Ok(())
    }

    /// Gives every open connection `input` (the stop, the abort, a tick).
    fn each_conn<E: Engine<Conn = C>>(
        &mut self,
        engine: &mut E,
        input: impl Fn() -> Input<E::Completion>,
    ) -> std::result::Result<(), E::Error> {
        for i in 0..self.conns.capacity() as u32 {
            let slot = Slot(i);
            if self.conns.get(slot).is_some() {
                let token = Token::new(OpKind::Recv, slot, self.conns.generation(slot));
                self.drive(engine, token, input())?;
            }
        }
        Ok(())
    }

    /// Drives connection `token` (if it is still open) with `input`; frees it when its
    /// engine says.
    fn drive<E: Engine<Conn = C>>(
        &mut self,
        engine: &mut E,
        token: Token,
        input: Input<E::Completion>,
    ) -> std::result::Result<(), E::Error> {
        let Some(entry) = self.conns.get_checked_mut(&token) else {
            match input {
                // Freed since (by an earlier completion of the same batch, a piece of the
                // same bundle): what it brought goes back. A backend counts the completions
                // it finds stale itself.
                Input::Completion(c) => engine.stale(c, &mut self.stats),
                _ => self.stats.stale += 1,
            }
            return Ok(());
        };
        if engine.drive(token, &mut entry.conn, input, &mut self.stats)? {
            self.conns.remove(token.slot);
            self.admission.release();
            return Ok(());
        }
        // Its deadline may have moved: an earlier one is filed now; a later one when the
        // filed one comes (so that the heap holds about one per connection).
        if let Some(d) = engine.deadline_ms(&entry.conn) {
            // One that has passed without closing it (a machine's own clock a hair behind)
            // is looked at again a millisecond on, not at once and again.
            let d = d.max(self.now_ms + 1);
            if entry.timer.map_or(true, |t| d < t) {
                entry.timer = Some(d);
                self.timers.push(Reverse((d, token.encode().0)));
            }
        }
        Ok(())
    }

    /// Ticks the connections whose deadline has come; files the later deadline of those
    /// whose filed one has moved on.
    fn expire<E: Engine<Conn = C>>(&mut self, engine: &mut E) -> std::result::Result<(), E::Error> {
        let mut due = std::mem::take(&mut self.due);
        while let Some(&Reverse((d, ud))) = self.timers.peek() {
            if d > self.now_ms {
                break;
            }
            self.timers.pop();
            let Ok(token) = Token::decode(UserData(ud)) else {
                continue;
            };
            let Some(entry) = self.conns.get_checked_mut(&token) else {
                continue;
            };
            if entry.timer != Some(d) {
                // Superseded by an earlier one, already ticked.
                continue;
            }
            entry.timer = None;
            match engine.deadline_ms(&entry.conn) {
                Some(later) if later > self.now_ms => {
                    entry.timer = Some(later);
                    self.timers.push(Reverse((later, ud)));
                }
                Some(_) => due.push(token),
                None => {}
            }
        }
        let mut result = Ok(());
        for token in due.drain(..) {
            if result.is_ok() {
                result = self.drive(engine, token, Input::Tick);
            }
        }
        self.due = due;
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
