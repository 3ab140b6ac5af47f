//! The epoll echo driver, the benchmark baseline: the same `ringwork_core::conn::EchoConn` as
//! the io_uring driver, driven by edge-triggered epoll and nonblocking accept4/read/send.
//!
//! The machine's operations map as its module docs say: ArmRecv sets readable interest (and
//! reads at once: with edge triggering the edge may already have passed), Send writes now or
//! when EPOLLOUT says so, a cancel takes effect at once and is reported as
//! `RecvErr { ECANCELED, more: false }` then `CancelDone`, Close closes and reports `Closed`.
//! Receive buffers come from a per-thread pool of the same count and size as the io_uring
//! provided ring, so memory per connection is bounded the same way. Accepting (and backing off
//! when it fails for lack of descriptors or memory) is `ringwork_sys::EpollAcceptor`'s, as in
//! ringwork-files' epoll driver.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ringwork_core::buf::{BufId, FixedPool, Lease};
use ringwork_core::conn::{Config, EchoConn, Event, Op};
use ringwork_core::errno::RawErrno;
use ringwork_core::slab::Slab;
use ringwork_core::token::{OpKind, Slot, Token};
use ringwork_sys::epoll::{Epoll, Interest};
use ringwork_sys::EpollAcceptor;
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use rustix::net::SendFlags;

use crate::{Shared, WorkerConfig, WorkerStats};

/// Events per epoll_wait.
const BATCH: usize = 256;
const LISTENER_KEY: u64 = u64::MAX;
const WAKE_KEY: u64 = u64::MAX - 1;
/// As in the io_uring driver: how long connections may flush after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

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
    starved: Vec<Token>,
    acceptor: EpollAcceptor,
    wake: OwnedFd,
    stopping: Option<Instant>,
    forced: bool,
    cfg: WorkerConfig,
    shared: &'a Shared,
    stats: WorkerStats,
    /// Events a connection's operations produced synchronously, fed back in order.
    queue: VecDeque<Event>,
}

/// Runs one worker until shutdown has closed every connection.
pub fn run(
    cfg: WorkerConfig,
    listener: OwnedFd,
    wake: OwnedFd,
    shared: &Shared,
    ready: std::sync::mpsc::Sender<()>,
) -> ringwork_sys::Result<WorkerStats> {
    let ep = Epoll::new(BATCH)?;
    let acceptor = EpollAcceptor::new(&ep, listener, LISTENER_KEY, Interest::IN | Interest::ET)?;
    ep.add(&wake, WAKE_KEY, Interest::IN | Interest::ET)?;
    let buf_size = cfg.buffer_size as usize;
    let mut w = Worker {
        ep,
        conns: Slab::new(cfg.max_conns),
        pool: FixedPool::new(usize::from(cfg.buffers)),
        memory: vec![0; usize::from(cfg.buffers) * buf_size],
        buf_size,
        leases: (0..cfg.buffers).map(|_| None).collect(),
        starved: Vec::new(),
        acceptor,
        wake,
        stopping: None,
        forced: false,
        cfg,
        shared,
        stats: WorkerStats::default(),
        queue: VecDeque::new(),
    };
    let _ = ready.send(());
    let mut events: Vec<(u64, Interest)> = Vec::with_capacity(BATCH);
    while !(w.stopping.is_some() && w.conns.is_empty()) {
        let timeout = w.stopping.map(|_| Duration::from_millis(100));
        // Backing off: the pause must end on time even when nothing happens.
        let timeout = ringwork_sys::accept::timeout_until(w.acceptor.next_deadline(), timeout);
        events.clear();
        events.extend(w.ep.wait(timeout)?);
        w.stats.completions += events.len() as u64;
        for &(key, flags) in &events {
            match key {
                LISTENER_KEY => w.accept_all()?,
                WAKE_KEY => w.on_wake()?,
                _ => w.on_conn_event(key, flags),
            }
        }
        w.wake_starved();
        w.acceptor.poll(&w.ep, w.conns.len())?;
        w.report_accept();
        if let Some(since) = w.stopping {
            if !w.forced && since.elapsed() > SHUTDOWN_GRACE {
                w.force_close_all();
            }
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
    fn accept_all(&mut self) -> ringwork_sys::Result<()> {
        while let Some(fd) = self.acceptor.accept(&self.ep, self.conns.len())? {
            self.admit(fd)?;
        }
        Ok(())
    }

    /// Prints what the acceptor has to say (back-off episodes) on stderr.
    fn report_accept(&mut self) {
        for notice in self.acceptor.notices() {
            eprintln!("ringwork-echo: {notice}");
        }
    }

    fn admit(&mut self, fd: OwnedFd) -> ringwork_sys::Result<()> {
        if self.stopping.is_some() || !self.shared.try_admit(self.cfg.max_conns) {
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

    fn on_wake(&mut self) -> ringwork_sys::Result<()> {
        let mut word = [0u8; 8];
        let _ = rustix::io::read(&self.wake, &mut word);
        if !self.shared.stopping.load(Ordering::Acquire) || self.stopping.is_some() {
            return Ok(());
        }
        self.stopping = Some(Instant::now());
        self.acceptor.stop(&self.ep)?;
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

    /// Grace is over: fail the sends still waiting for a peer that does not read.
    fn force_close_all(&mut self) {
        self.forced = true;
        for token in self.live_tokens() {
            let Some(conn) = self.conns.get_checked_mut(&token) else {
                continue;
            };
            if conn.pending_send.take().is_some() {
                self.drive(
                    token,
                    Some(Event::SendDone {
                        res: Err(RawErrno::CANCELED),
                    }),
                );
            }
        }
    }

    fn on_conn_event(&mut self, key: u64, flags: Interest) {
        let Ok(token) = Token::decode(ringwork_core::token::UserData(key)) else {
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
            // The pool is dry: like ENOBUFS from a provided ring (PITFALLS #3).
            self.stats.nobufs += 1;
            self.starved.push(token);
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
        let ops = match conn.machine.on_event(event) {
            Ok(ops) => ops,
            Err(e) => {
                eprintln!("ringwork-echo: {e}");
                self.stats.refused += 1;
                if let Event::Recv { buf, .. } = event {
                    self.recycle(buf);
                }
                return;
            }
        };
        for op in ops {
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
    }

    fn recycle(&mut self, buf: BufId) {
        let lease = self.leases[usize::from(buf.0)]
            .take()
            .expect("the machine recycles only buffers it holds");
        self.pool.release(lease);
    }

    /// Wakes connections that found the pool dry once a quarter of it is free again.
    fn wake_starved(&mut self) {
        if self.starved.is_empty() || self.pool.available() < self.pool.len().div_ceil(4) {
            return;
        }
        for token in std::mem::take(&mut self.starved) {
            self.drive(token, Some(Event::BuffersAvailable));
        }
    }
}
