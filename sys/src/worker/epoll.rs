//! The epoll backend of the worker loop, the baseline every io_uring figure is measured
//! against: the same machines, driven by edge-triggered epoll and nonblocking
//! accept4/read/send.
//!
//! A machine's operations map as `ringwork_core::conn` documents: ArmRecv sets readable
//! interest (and the loop reads at once through [`Backend::pump`]: with edge triggering the
//! edge may already have passed), Send writes now or when EPOLLOUT says so, a cancel takes
//! effect at once and is reported as `RecvErr { ECANCELED, more: false }` then `CancelDone`
//! (CancelAll also ends a write waiting for EPOLLOUT with `SendDone { ECANCELED }`), Close
//! closes and reports `Closed`. Receive buffers come from a per-thread pool of the same count
//! and size as the io_uring provided ring, so memory per connection is bounded the same way; a
//! read that finds the pool empty is reported as ENOBUFS, as with the ring.

use std::collections::VecDeque;
use std::time::Duration;

use ringwork_core::buf::{BufId, FixedPool, Lease};
use ringwork_core::conn::{Event, Op, OutBytes};
use ringwork_core::errno::RawErrno;
use ringwork_core::token::{Generation, OpKind, Slot, Token, UserData};
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use rustix::net::SendFlags;

use super::{AcceptParts, Backend, Happening, Readiness, StreamConfig, StreamStats};
use crate::accept::{Acceptors, EpollAcceptor};
use crate::driver::StopNotice;
use crate::epoll::{Epoll, Interest};
use crate::error::Result;

/// Events per epoll_wait.
const BATCH: usize = 256;

/// The epoll keys of the worker's own descriptors: tokens of the worker's slot, as the
/// io_uring backend's accepts and stop poll carry (a listener's with its index in `sub`). A
/// connection's key is its token.
fn listener_key(index: u16) -> UserData {
    Token {
        sub: index,
        ..Token::new(OpKind::Accept, Slot::WORKER, Generation::ZERO)
    }
    .encode()
}
const WAKE_KEY: UserData = Token::new(OpKind::Read, Slot::WORKER, Generation::ZERO).encode();

/// What the backend remembers of a connection between readiness events.
#[derive(Debug)]
pub struct EpollConn {
    /// None once closed (Op::Close).
    fd: Option<OwnedFd>,
    /// Readable interest: the machine has a "recv" armed.
    armed: bool,
    /// The socket may have bytes (or EOF) to read: set by EPOLLIN, cleared by EAGAIN.
    readable: bool,
    /// A send that met EAGAIN, retried on EPOLLOUT.
    pending_send: Option<Pending>,
    /// EPOLLOUT (or an error) came since the pending send last met EAGAIN.
    writable: bool,
}

/// A send waiting for room in the socket.
#[derive(Debug)]
enum Pending {
    /// `buf[offset..offset + len]` of a pool buffer.
    Provided(BufId, u32, u32),
    /// `data[offset..]` of bytes the connection handed over.
    Owned(OutBytes, u32),
}

/// The epoll backend: the epoll set, the acceptors, the receive buffer pool.
pub struct EpollBackend {
    ep: Epoll,
    pool: FixedPool,
    memory: Vec<u8>,
    buf_size: usize,
    leases: Vec<Option<Lease>>,
    acceptors: Acceptors<EpollAcceptor>,
    stop: StopNotice,
    events: Vec<(u64, Interest)>,
}

impl EpollBackend {
    /// The epoll set with the listeners and the stop notice in it, and the buffer pool.
    pub fn new(cfg: &StreamConfig, listeners: Vec<OwnedFd>, stop: StopNotice) -> Result<Self> {
        let ep = Epoll::new(BATCH)?;
        // One per listener; the server keeps their number within a u16.
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
            .collect::<Result<Vec<_>>>()?;
        let buf_size = cfg.buffer_size as usize;
        Ok(Self {
            ep,
            pool: FixedPool::new(usize::from(cfg.buffers)),
            memory: vec![0; usize::from(cfg.buffers) * buf_size],
            buf_size,
            leases: (0..cfg.buffers).map(|_| None).collect(),
            acceptors: Acceptors(acceptors),
            stop,
            events: Vec::with_capacity(BATCH),
        })
    }

    /// Writes what `send` names; None on EAGAIN.
    fn try_send(
        &mut self,
        io: &EpollConn,
        send: &Pending,
        stats: &mut StreamStats,
    ) -> Option<Result<u32, RawErrno>> {
        let fd = io.fd.as_ref()?;
        let bytes = match send {
            &Pending::Provided(buf, offset, len) => {
                let start = usize::from(buf.0) * self.buf_size + offset as usize;
                &self.memory[start..start + len as usize]
            }
            Pending::Owned(data, offset) => &data.as_slice()[*offset as usize..],
        };
        loop {
            match rustix::net::send(fd, bytes, SendFlags::NOSIGNAL) {
                Ok(n) => {
                    stats.bytes += n as u64;
                    return Some(Ok(n as u32));
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return None,
                Err(e) => return Some(Err(errno(e))),
            }
        }
    }

    /// One read into a pool buffer; the event it produced, or None on EAGAIN.
    fn read_once(&mut self, io: &mut EpollConn, stats: &mut StreamStats) -> Option<Event> {
        let Some(lease) = self.pool.acquire() else {
            // The pool is dry: like ENOBUFS from a provided ring (the machine then says
            // AwaitBuffers).
            stats.nobufs += 1;
            io.armed = false;
            return Some(Event::RecvErr {
                errno: RawErrno::NOBUFS,
                more: false,
            });
        };
        let id = lease.id();
        let start = usize::from(id.0) * self.buf_size;
        let Some(fd) = io.fd.as_ref() else {
            self.pool.release(lease);
            return None;
        };
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
                io.armed = false;
                Some(Event::RecvEof { more: false })
            }
            Err(Errno::AGAIN) => {
                self.pool.release(lease);
                io.readable = false;
                None
            }
            Err(e) => {
                self.pool.release(lease);
                io.armed = false;
                Some(Event::RecvErr {
                    errno: errno(e),
                    more: false,
                })
            }
        }
    }
}

/// A send's completion, with the bytes it named when they were handed over.
fn send_done(send: Pending, res: Result<u32, RawErrno>) -> Event {
    match send {
        Pending::Provided(..) => Event::SendDone { res },
        Pending::Owned(data, _) => Event::SendOwnedDone { res, data },
    }
}

fn errno(e: Errno) -> RawErrno {
    RawErrno(e.raw_os_error())
}

impl Backend for EpollBackend {
    type ConnIo = EpollConn;
    type Accept = EpollAcceptor;

    fn start(&mut self) -> Result<()> {
        self.ep
            .add(&self.stop, WAKE_KEY.0, Interest::IN | Interest::ET)
    }

    fn wait(&mut self, timeout: Option<Duration>, stats: &mut StreamStats) -> Result<()> {
        self.events.clear();
        self.events.extend(self.ep.wait(timeout)?);
        stats.completions += self.events.len() as u64;
        Ok(())
    }

    fn harvest(
        &mut self,
        _live: &dyn Fn(&Token) -> bool,
        open: usize,
        now_ms: u64,
        out: &mut Vec<Happening>,
        stats: &mut StreamStats,
    ) -> Result<()> {
        for &(key, flags) in &self.events {
            let listener = Token::decode(UserData(key))
                .ok()
                .filter(|t| t.kind == OpKind::Accept && t.slot == Slot::WORKER)
                .map(|t| usize::from(t.sub))
                .filter(|&i| i < self.acceptors.0.len());
            match (listener, UserData(key)) {
                // Accepts until none is waiting (edge-triggered), or until the acceptor
                // pauses: then the listener is out of the epoll set, and back (reporting
                // what waits) when the pause ends.
                (Some(i), _) => {
                    while let Some(fd) = self.acceptors.0[i].accept(&self.ep, open, now_ms)? {
                        out.push(Happening::Accepted(fd, i as u16));
                    }
                }
                (None, WAKE_KEY) => {
                    if self.stop.given() {
                        out.push(Happening::Stop);
                    }
                }
                (None, key) => {
                    let Ok(token) = Token::decode(key) else {
                        stats.stale += 1;
                        continue;
                    };
                    let failed = Interest::HUP | Interest::ERR;
                    let ready = Readiness {
                        readable: flags.intersects(Interest::IN | Interest::RDHUP | failed),
                        writable: flags.intersects(Interest::OUT | failed),
                    };
                    out.push(Happening::Ready(token, ready));
                }
            }
        }
        Ok(())
    }

    fn adopt(&mut self, sock: OwnedFd) -> EpollConn {
        EpollConn {
            fd: Some(sock),
            armed: false,
            readable: true,
            pending_send: None,
            writable: false,
        }
    }

    fn register(&mut self, token: Token, io: &mut EpollConn) -> bool {
        let interest = Interest::IN | Interest::OUT | Interest::RDHUP | Interest::ET;
        let Some(fd) = io.fd.as_ref() else {
            return false;
        };
        match self.ep.add(fd, token.encode().0, interest) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("epoll: {e}");
                false
            }
        }
    }

    fn reject(&mut self, sock: OwnedFd) -> Result<()> {
        drop(sock);
        Ok(())
    }

    fn perform(
        &mut self,
        _token: Token,
        io: &mut EpollConn,
        op: Op,
        events: &mut VecDeque<Event>,
        stats: &mut StreamStats,
    ) -> Result<()> {
        match op {
            Op::ArmRecv => io.armed = true,
            Op::Send { buf, offset, len } => {
                let send = Pending::Provided(buf, offset, len);
                match self.try_send(io, &send, stats) {
                    Some(res) => events.push_back(Event::SendDone { res }),
                    None => io.pending_send = Some(send),
                }
            }
            Op::SendOwned { data, offset } => {
                let send = Pending::Owned(data, offset);
                match self.try_send(io, &send, stats) {
                    Some(res) => events.push_back(send_done(send, res)),
                    None => io.pending_send = Some(send),
                }
            }
            Op::CancelRecv | Op::CancelAll => {
                // Dropping interest is synchronous: the "recv" ends now.
                if io.armed {
                    io.armed = false;
                    events.push_back(Event::RecvErr {
                        errno: RawErrno::CANCELED,
                        more: false,
                    });
                }
                // A write waiting for EPOLLOUT is abandoned (the kernel has none of it); one
                // that completed is already queued.
                if op == Op::CancelAll {
                    if let Some(send) = io.pending_send.take() {
                        events.push_back(send_done(send, Err(RawErrno::CANCELED)));
                    }
                }
                events.push_back(Event::CancelDone);
            }
            Op::Close => {
                // close(2) also removes it from the epoll set.
                drop(io.fd.take());
                events.push_back(Event::Closed);
            }
            Op::Recycle(_) | Op::AwaitBuffers | Op::Free => {
                unreachable!("the loop performs {op:?} itself")
            }
        }
        Ok(())
    }

    fn ready(&mut self, io: &mut EpollConn, ready: Readiness) {
        io.readable |= ready.readable;
        io.writable |= ready.writable;
    }

    fn pump(
        &mut self,
        _token: Token,
        io: &mut EpollConn,
        stats: &mut StreamStats,
    ) -> Option<Event> {
        if io.writable {
            if let Some(send) = io.pending_send.take() {
                io.writable = false;
                match self.try_send(io, &send, stats) {
                    Some(res) => return Some(send_done(send, res)),
                    None => io.pending_send = Some(send),
                }
            }
        }
        if io.armed && io.readable {
            return self.read_once(io, stats);
        }
        None
    }

    fn received(&mut self, buf: BufId, offset: u32, len: u32) -> &[u8] {
        assert!(
            self.leases[usize::from(buf.0)].is_some(),
            "the machine reads only buffers it holds"
        );
        let start = usize::from(buf.0) * self.buf_size + offset as usize;
        &self.memory[start..start + len as usize]
    }

    fn recycle(&mut self, buf: BufId, _stats: &mut StreamStats) {
        let lease = self.leases[usize::from(buf.0)]
            .take()
            .expect("the machine recycles only buffers it holds");
        self.pool.release(lease);
    }

    fn can_rearm(&mut self) -> bool {
        self.pool.can_rearm()
    }

    fn end_of_batch(&mut self) -> Result<()> {
        Ok(())
    }

    fn accept(&mut self) -> AcceptParts<'_, EpollAcceptor> {
        (&mut self.acceptors, &mut self.ep)
    }

    fn acceptors(&self) -> &Acceptors<EpollAcceptor> {
        &self.acceptors
    }

    fn busy(&self) -> bool {
        false
    }

    fn finish(&mut self, stats: &mut StreamStats) {
        stats.enters = self.ep.waits();
    }
}
