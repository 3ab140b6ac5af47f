//! The epoll echo driver, the benchmark baseline: the same `ringwork_core::conn::EchoConn` as
//! the io_uring driver, driven by edge-triggered epoll and nonblocking accept4/read/send.
//!
//! The machine's operations map as its module docs say: ArmRecv sets readable interest (and
//! reads at once: with edge triggering the edge may already have passed), Send writes now or
//! when EPOLLOUT says so, a cancel takes effect at once and is reported as
//! `RecvErr { ECANCELED, more: false }` then `CancelDone` (CancelAll also ends a write waiting
//! for EPOLLOUT with `SendDone { ECANCELED }`), Close closes and reports `Closed`.
//! Receive buffers come from a per-thread pool of the same count and size as the io_uring
//! provided ring, so memory per connection is bounded the same way; a read that finds the
//! pool empty is reported as ENOBUFS, and the connection waits in a `Starved` set until the
//! pool can re-arm, as with the ring. At the end of a shutdown's grace period every
//! connection gets `Event::Abort`, as with io_uring. Accepting (and backing off
//! when it fails for lack of descriptors or memory) is `ringwork_sys::EpollAcceptor`'s, as in
//! ringwork-files' epoll driver.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ringwork_core::buf::{BufId, FixedPool, Lease};
use ringwork_core::conn::{ChunkQueues, Config, EchoConn, Event, Op, Starved};
use ringwork_core::errno::RawErrno;
use ringwork_core::shutdown::{Drain, DrainAction};
use ringwork_core::slab::Slab;
use ringwork_core::token::{Generation, OpKind, Slot, Token, UserData};
use ringwork_sys::driver::StopNotice;
use ringwork_sys::epoll::{Epoll, Interest};
use ringwork_sys::EpollAcceptor;
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use rustix::net::SendFlags;

use crate::{Shared, WorkerConfig, WorkerStats};

/// Events per epoll_wait.
const BATCH: usize = 256;
/// The epoll keys of the worker's own descriptors: tokens of the worker's slot, as the
/// io_uring driver's accepts and wake-up read carry (a listener's with its index in `sub`).
/// A connection's key is its token.
fn listener_key(index: u16) -> UserData {
    Token {
        sub: index,
        ..Token::new(OpKind::Accept, Slot::WORKER, Generation::ZERO)
    }
    .encode()
}
const WAKE_KEY: UserData = Token::new(OpKind::Read, Slot::WORKER, Generation::ZERO).encode();

struct Conn {
    /// None once closed (Op::Close).
    fd: Option<OwnedFd>,
    machine: EchoConn,
    /// Readable interest: the machine has a "recv" armed.
    armed: bool,
    /// The socket may have bytes (or EOF) to read: set by EPOLLIN, cleared by EAGAIN.
    readable: bool,
    /// A send that met EAGAIN, retried on EPOLLOUT.
    pending_send: Option<(BufId, u32, u32)>,
}

struct Worker<'a> {
    ep: Epoll,
    conns: Slab<Conn>,
    pool: FixedPool,
    memory: Vec<u8>,
    buf_size: usize,
    leases: Vec<Option<Lease>>,
    /// The chunks every connection holds: one per pool buffer at most.
    chunks: ChunkQueues,
    /// Connections whose read found the pool empty, to wake once it can re-arm.
    starved: Starved,
    /// The connections being woken, reused.
    woken: Vec<Token>,
    /// One per listener (`--listen` may be given more than once).
    acceptors: Vec<EpollAcceptor>,
    /// The main thread's word that the process is stopping.
    stop: StopNotice,
    drain: Drain,
    /// The worker's clock: `Drain` and the acceptors count milliseconds from here.
    epoch: Instant,
    cfg: WorkerConfig,
    shared: &'a Shared,
    stats: WorkerStats,
    /// Events a connection's operations produced synchronously, fed back in order.
    queue: VecDeque<Event>,
}

/// Runs one worker until shutdown has closed every connection.
pub fn run(
    cfg: WorkerConfig,
    listeners: Vec<OwnedFd>,
    stop: StopNotice,
    shared: &Shared,
    gate: &ringwork_sys::driver::StartGate,
) -> ringwork_sys::Result<WorkerStats> {
    let ep = Epoll::new(BATCH)?;
    // One per listener; `main` keeps their number within a u16.
    let acceptors = listeners
        .into_iter()
        .zip(0u16..)
        .map(|(listener, index)| {
            EpollAcceptor::new(
                &ep,
                listener,
                listener_key(index).0,
                Interest::IN | Interest::ET,
            )
        })
        .collect::<ringwork_sys::Result<Vec<_>>>()?;
    ep.add(&stop, WAKE_KEY.0, Interest::IN | Interest::ET)?;
    let buf_size = cfg.buffer_size as usize;
    let mut w = Worker {
        ep,
        conns: Slab::new(cfg.max_conns),
        pool: FixedPool::new(usize::from(cfg.buffers)),
        memory: vec![0; usize::from(cfg.buffers) * buf_size],
        buf_size,
        leases: (0..cfg.buffers).map(|_| None).collect(),
        chunks: ChunkQueues::new(usize::from(cfg.buffers)),
        starved: Starved::new(cfg.max_conns),
        woken: Vec::with_capacity(cfg.max_conns),
        acceptors,
        stop,
        drain: Drain::new(cfg.shutdown_grace.as_millis() as u64),
        epoch: Instant::now(),
        cfg,
        shared,
        stats: WorkerStats::default(),
        queue: VecDeque::new(),
    };
    // Accept only once every worker is set up (see `StartGate`).
    if gate.arrive().is_err() {
        return Ok(w.stats);
    }
    let mut events: Vec<(u64, Interest)> = Vec::with_capacity(BATCH);
    // Read once per turn of the loop, after the wait.
    let mut now_ms = 0;
    while !w.drain.finished(w.conns.len(), false, false) {
        let timeout = w.drain.stopping().then_some(Duration::from_millis(100));
        // Backing off: the pause must end on time even when nothing happens.
        let deadline = w.acceptors.iter().fold(None, |d, a| {
            ringwork_core::accept::earliest(d, a.next_deadline_ms())
        });
        let timeout = ringwork_core::accept::timeout_until(deadline, now_ms, timeout);
        events.clear();
        events.extend(w.ep.wait(timeout)?);
        now_ms = w.epoch.elapsed().as_millis() as u64;
        w.stats.completions += events.len() as u64;
        for &(key, flags) in &events {
            let listener = Token::decode(UserData(key))
                .ok()
                .filter(|t| t.kind == OpKind::Accept && t.slot == Slot::WORKER)
                .map(|t| usize::from(t.sub))
                .filter(|&i| i < w.acceptors.len());
            match (listener, UserData(key)) {
                (Some(i), _) => w.accept_all(i, now_ms)?,
                (None, WAKE_KEY) => w.on_wake(now_ms)?,
                (None, key) => w.on_conn_event(key, flags),
            }
        }
        w.wake_starved();
        for a in &mut w.acceptors {
            a.poll(&w.ep, w.conns.len(), now_ms)?;
        }
        w.report_accept();
        if w.drain.on_tick(now_ms) == Some(DrainAction::Abort) {
            w.force_close_all();
        }
    }
    w.stats.enters = w.ep.waits();
    Ok(w.stats)
}

fn errno(e: Errno) -> RawErrno {
    RawErrno(e.raw_os_error())
}

impl Worker<'_> {
    /// Accepts until none is waiting (edge-triggered), or until the acceptor pauses: then the
    /// listener is out of the epoll set, and back (reporting what waits) when the pause ends.
    fn accept_all(&mut self, listener: usize, now_ms: u64) -> ringwork_sys::Result<()> {
        while let Some(fd) = self.acceptors[listener].accept(&self.ep, self.conns.len(), now_ms)? {
            self.admit(fd)?;
        }
        Ok(())
    }

    /// Prints what the acceptor has to say (back-off episodes) on stderr.
    fn report_accept(&mut self) {
        for notice in self.acceptors.iter_mut().flat_map(EpollAcceptor::notices) {
            eprintln!("ringwork-echo: {notice}");
        }
    }

    fn admit(&mut self, fd: OwnedFd) -> ringwork_sys::Result<()> {
        if self.drain.stopping() || !self.shared.try_admit(self.cfg.max_conns) {
            self.stats.rejected += 1;
            return Ok(()); // dropped: closed
        }
        let _ = ringwork_sys::net::set_nodelay(&fd);
        let conn = Conn {
            fd: None,
            machine: EchoConn::new(Config::default()),
            armed: false,
            readable: true,
            pending_send: None,
        };
        let Some((slot, generation)) = self.conns.insert(conn) else {
            self.shared.release();
            self.stats.rejected += 1;
            return Ok(());
        };
        let token = Token::new(OpKind::Recv, slot, generation);
        let interest = Interest::IN | Interest::OUT | Interest::RDHUP | Interest::ET;
        if let Err(e) = self.ep.add(&fd, token.encode().0, interest) {
            eprintln!("ringwork-echo: {e}");
            self.conns.remove(slot);
            self.shared.release();
            return Ok(());
        }
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.fd = Some(fd);
        }
        self.stats.conns += 1;
        self.drive(token, Some(Event::Opened));
        Ok(())
    }

    fn on_wake(&mut self, now_ms: u64) -> ringwork_sys::Result<()> {
        if !self.stop.given() || self.drain.on_stop(now_ms) != Some(DrainAction::BeginDrain) {
            return Ok(());
        }
        for a in &mut self.acceptors {
            a.stop(&self.ep, now_ms)?;
        }
        for token in self.live_tokens() {
            self.drive(token, Some(Event::Shutdown));
        }
        Ok(())
    }

    fn live_tokens(&self) -> Vec<Token> {
        (0..self.conns.capacity() as u32)
            .map(Slot)
            .filter(|&s| self.conns.get(s).is_some())
            .map(|s| Token::new(OpKind::Recv, s, self.conns.generation(s)))
            .collect()
    }

    /// Grace is over: every connection aborts (its write waiting for a peer that does not
    /// read is cancelled, and it closes).
    fn force_close_all(&mut self) {
        for token in self.live_tokens() {
            self.drive(token, Some(Event::Abort));
        }
    }

    fn on_conn_event(&mut self, key: UserData, flags: Interest) {
        let Ok(token) = Token::decode(key) else {
            self.stats.stale += 1;
            return;
        };
        let Some(conn) = self.conns.get_checked_mut(&token) else {
            self.stats.stale += 1;
            return;
        };
        if flags.intersects(Interest::IN | Interest::RDHUP | Interest::HUP | Interest::ERR) {
            conn.readable = true;
        }
        let mut first = None;
        if flags.intersects(Interest::OUT | Interest::HUP | Interest::ERR) {
            if let Some((buf, offset, len)) = conn.pending_send {
                if let Some(res) = self.try_send(token, buf, offset, len) {
                    if let Some(conn) = self.conns.get_checked_mut(&token) {
                        conn.pending_send = None;
                    }
                    first = Some(Event::SendDone { res });
                }
            }
        }
        self.drive(token, first);
    }

    /// Writes `buf[offset..offset + len]`; None on EAGAIN.
    fn try_send(
        &mut self,
        token: Token,
        buf: BufId,
        offset: u32,
        len: u32,
    ) -> Option<Result<u32, RawErrno>> {
        let conn = self.conns.get_checked(&token)?;
        let fd = conn.fd.as_ref()?;
        let start = usize::from(buf.0) * self.buf_size + offset as usize;
        let bytes = &self.memory[start..start + len as usize];
        loop {
            match rustix::net::send(fd, bytes, SendFlags::NOSIGNAL) {
                Ok(n) => {
                    self.stats.bytes += n as u64;
                    return Some(Ok(n as u32));
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return None,
                Err(e) => return Some(Err(errno(e))),
            }
        }
    }

    /// One read into a pool buffer; the event it produced, or None on EAGAIN.
    fn read_once(&mut self, token: Token) -> Option<Event> {
        let Some(lease) = self.pool.acquire() else {
            // The pool is dry: like ENOBUFS from a provided ring (the machine then says
            // AwaitBuffers).
            self.stats.nobufs += 1;
            if let Some(conn) = self.conns.get_checked_mut(&token) {
                conn.armed = false;
            }
            return Some(Event::RecvErr {
                errno: RawErrno::NOBUFS,
                more: false,
            });
        };
        let id = lease.id();
        let start = usize::from(id.0) * self.buf_size;
        let conn = self.conns.get_checked_mut(&token)?;
        let fd = conn.fd.as_ref()?;
        let res = loop {
            match rustix::io::read(fd, &mut self.memory[start..start + self.buf_size]) {
                Err(Errno::INTR) => continue,
                other => break other,
            }
        };
        match res {
            Ok(n) if n > 0 => {
                self.leases[usize::from(id.0)] = Some(lease);
                Some(Event::Recv {
                    buf: id,
                    offset: 0,
                    len: n as u32,
                    more: true,
                })
            }
            Ok(_) => {
                self.pool.release(lease);
                conn.armed = false;
                Some(Event::RecvEof { more: false })
            }
            Err(Errno::AGAIN) => {
                self.pool.release(lease);
                conn.readable = false;
                None
            }
            Err(e) => {
                self.pool.release(lease);
                conn.armed = false;
                Some(Event::RecvErr {
                    errno: errno(e),
                    more: false,
                })
            }
        }
    }

    /// Feeds `first` (if any) and every event the resulting operations produce, reading while
    /// the machine wants bytes and the socket has them.
    fn drive(&mut self, token: Token, first: Option<Event>) {
        let mut queue = std::mem::take(&mut self.queue);
        queue.extend(first);
        loop {
            while let Some(event) = queue.pop_front() {
                self.feed(token, event, &mut queue);
            }
            let Some(conn) = self.conns.get_checked(&token) else {
                break;
            };
            if !(conn.armed && conn.readable) {
                break;
            }
            match self.read_once(token) {
                Some(event) => queue.push_back(event),
                None => break,
            }
        }
        queue.clear();
        self.queue = queue;
    }

    fn feed(&mut self, token: Token, event: Event, queue: &mut VecDeque<Event>) {
        let Some(conn) = self.conns.get_checked_mut(&token) else {
            return;
        };
        if let Err(e) = conn.machine.on_event(&mut self.chunks, event) {
            eprintln!("ringwork-echo: {e}");
            self.stats.refused += 1;
            if let Event::Recv { buf, .. } = event {
                self.recycle(buf);
            }
            return;
        }
        // Free removes the connection: it is the last operation.
        while let Some(conn) = self.conns.get_checked_mut(&token) {
            let Some(op) = conn.machine.poll_op(&mut self.chunks) else {
                break;
            };
            self.perform(token, op, queue);
        }
    }

    /// Performs one of a connection's operations; the events it produces at once go to
    /// `queue`.
    fn perform(&mut self, token: Token, op: Op, queue: &mut VecDeque<Event>) {
        match op {
            Op::ArmRecv => {
                if let Some(conn) = self.conns.get_checked_mut(&token) {
                    conn.armed = true;
                }
            }
            Op::Send { buf, offset, len } => match self.try_send(token, buf, offset, len) {
                Some(res) => queue.push_back(Event::SendDone { res }),
                None => {
                    if let Some(conn) = self.conns.get_checked_mut(&token) {
                        conn.pending_send = Some((buf, offset, len));
                    }
                }
            },
            Op::Recycle(buf) => self.recycle(buf),
            Op::AwaitBuffers => self.starved.wait(token),
            Op::CancelRecv | Op::CancelAll => {
                if let Some(conn) = self.conns.get_checked_mut(&token) {
                    // Dropping interest is synchronous: the "recv" ends now.
                    if conn.armed {
                        conn.armed = false;
                        queue.push_back(Event::RecvErr {
                            errno: RawErrno::CANCELED,
                            more: false,
                        });
                    }
                    // A write waiting for EPOLLOUT is abandoned (the kernel has none of
                    // it); one that completed is already queued.
                    if op == Op::CancelAll && conn.pending_send.take().is_some() {
                        queue.push_back(Event::SendDone {
                            res: Err(RawErrno::CANCELED),
                        });
                    }
                }
                queue.push_back(Event::CancelDone);
            }
            Op::Close => {
                if let Some(conn) = self.conns.get_checked_mut(&token) {
                    // close(2) also removes it from the epoll set.
                    drop(conn.fd.take());
                }
                queue.push_back(Event::Closed);
            }
            Op::Free => {
                self.conns.remove(token.slot);
                self.shared.release();
            }
        }
    }

    fn recycle(&mut self, buf: BufId) {
        let lease = self.leases[usize::from(buf.0)]
            .take()
            .expect("the machine recycles only buffers it holds");
        self.pool.release(lease);
    }

    /// Wakes connections that found the pool dry once it can re-arm (`Starved` and
    /// `FixedPool::can_rearm` decide: a quarter free).
    fn wake_starved(&mut self) {
        if self.starved.is_empty() {
            return;
        }
        let mut woken = std::mem::take(&mut self.woken);
        self.starved.wake(self.pool.can_rearm(), &mut woken);
        for token in woken.drain(..) {
            self.drive(token, Some(Event::BuffersAvailable));
        }
        self.woken = woken;
    }
}
