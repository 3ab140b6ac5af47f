//! The epoll file engine: performs the file service's operations with nonblocking syscalls,
//! on the worker loop every Ringwork server shares ([`run_engine`](crate::worker::run_engine):
//! the connection table, admission, the wait, ticks, the stop and the drain are the loop's).
//!
//! Sockets are edge-triggered (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET): a receive or send
//! that meets EAGAIN waits for the next edge; everything else (statx, openat2, pread, close,
//! and the cancel and shutdown requests) runs synchronously and its completion is fed straight
//! back. A connection is removed (its socket closed) on HttpConn's `Op::Free`. Timeouts come
//! from the loop, which ticks a connection when its deadline (`HttpConn::next_deadline_ms`)
//! comes.
//!
//! Fairness: a connection answers at most one request per turn of the loop. The receive for
//! its next request is not performed inline but deferred to the run queue, which is served
//! after the next (then non-blocking) `epoll_wait`, behind every other connection's events.
//! Performing it inline let one keep-alive client whose next request was always already there
//! keep the loop to itself for seconds while every other connection (and the listener) waited
//! unread; the io_uring driver is fair by construction (one completion per CQE per turn).
//! For the same reason the listener is level-triggered and a turn accepts at most
//! `ACCEPT_BATCH` connections: draining the backlog to EAGAIN, while each new connection's
//! request was served inline, let clients that reconnect at once keep the loop in accept for
//! as long as they churned; the closes of the connections they left were not read, piled up
//! past `--max-conns`, and new connections were reset (found by tests/tests/faults.rs).
//! Accepting is [`EpollAcceptor`]'s, as in ringwork-echo's epoll driver: out of
//! descriptors or memory it takes the listener out of the epoll set for a pause (level
//! triggering would otherwise wake every wait for the connections still queued) and says so on
//! stderr, once per episode.
//!
//! Stopping (SIGINT/SIGTERM) is the loop's graceful drain: the acceptor closes the listener
//! (new connections are refused), every connection gets
//! [`HttpConn::on_shutdown`](ringwork_core::httpconn::HttpConn::on_shutdown), those still
//! open after `--shutdown-grace-ms` get
//! [`HttpConn::abort`](ringwork_core::httpconn::HttpConn::abort), and the worker returns once none
//! is left.

use std::ffi::CStr;
use std::time::Duration;

use ringwork_core::errno::RawErrno;
use ringwork_core::filesvc::{
    ChunkRead, FileConn, FileOp, FileRef, FileSend, FileService, ServiceConfig, WorkerOp,
};
use ringwork_core::httpconn::{BufIx, HttpEvent, SendSrc, Time, HEAD_ROOM};
use ringwork_core::token::{Generation, OpKind, Slot, Token, UserData};
use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, Mode};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};

use super::{file_id, file_info, open_flags, DirectNotes, FileHooks, FileStats, FilesConfig};
use crate::accept::Acceptors;
use crate::driver::StopNotice;
use crate::epoll::{Epoll, Interest};
use crate::error::Result;
use crate::worker::live::Values;
use crate::worker::{AcceptParts, Engine, Happening, Input, Readiness, StreamStats, WorkerStart};
use crate::{EpollAcceptor, Error};

/// Page alignment for O_DIRECT buffers.
const ALIGN: usize = 4096;

/// A buffer whose usable part starts at a page boundary (for O_DIRECT preads).
struct AlignedBuf {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let mem = vec![0u8; len + ALIGN];
        let start = mem.as_ptr().align_offset(ALIGN);
        Self { mem, start, len }
    }

    fn bytes(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + self.len]
    }
}

/// One connection: its HttpConn, its socket and what its operations wait on.
pub struct Conn {
    /// HttpConn, with its hold on the open-file cache.
    fc: FileConn,
    sock: OwnedFd,
    file: Option<OwnedFd>,
    /// The chunk buffers, made when a read needs one and dropped when HttpConn no longer
    /// uses it: an idle connection holds none.
    bufs: [Option<AlignedBuf>; 2],
    /// A receive waiting for EPOLLIN, or on the run queue when deferred (its `max`).
    pending_recv: Option<u32>,
    /// A send waiting for EPOLLOUT (a `FileOp::Send` or `FileOp::SendFile`).
    pending_send: Option<FileOp>,
    /// HttpConn said Free: remove the connection (which closes the socket).
    freed: bool,
    /// The client's address, when the hooks want it.
    peer: Option<std::net::IpAddr>,
}

/// What a worker keeps beside its connections.
struct Local<'a> {
    cfg: FilesConfig<'a>,
    stats: FileStats,
    /// The worker's clock, read once a turn of the loop (after the wait): every event of the
    /// turn happened "now".
    now: Time,
    direct: DirectNotes,
    /// The open-file cache: what is decided about files, in core. Entry N's file is in
    /// `cache_fds[N]`.
    svc: FileService,
    cache_fds: Vec<Option<OwnedFd>>,
}

impl<'a> Local<'a> {
    fn new(cfg: &FilesConfig<'a>) -> Self {
        Self {
            cfg: *cfg,
            stats: FileStats::default(),
            now: cfg.now(),
            direct: DirectNotes::default(),
            svc: FileService::new(ServiceConfig {
                cache: cfg.cache,
                // Made as reads need them (no pool to wait for).
                chunks: usize::MAX,
                file_send: if cfg.http.file_send {
                    FileSend::Descriptor
                } else {
                    FileSend::Off
                },
            }),
            cache_fds: (0..cfg.cache.entries).map(|_| None).collect(),
        }
    }

    /// Counts and prints a report HttpConn refused.
    fn checked(&mut self, r: core::result::Result<(), ringwork_core::conn::ConnError>) {
        self.stats.checked(self.cfg.name, r);
    }

    /// Closes the files of the cache entries no request holds any more (close(2) of a
    /// regular file: at once). Nothing is mapped here: sendfile(2) needs no mapping.
    fn worker_ops(&mut self) {
        while let Some(op) = self.svc.poll_worker_op() {
            if let WorkerOp::CloseEntry(ix) = op {
                self.cache_fds[ix.0 as usize] = None;
                self.svc.on_entry_closed(ix);
            }
        }
    }
}

fn raw(e: Errno) -> RawErrno {
    RawErrno(e.raw_os_error())
}

impl Conn {
    fn new(fc: FileConn, sock: OwnedFd) -> Self {
        Self {
            fc,
            sock,
            file: None,
            bufs: [None, None],
            pending_recv: None,
            pending_send: None,
            freed: false,
            peer: None,
        }
    }
}

/// Connections whose receive was deferred ([`drive`] said so), by token.
type RunQueue = Vec<Token>;

/// Listener `index`'s epoll key: a token of the worker's slot with the index in `sub`, as the
/// io_uring driver's accepts carry. A connection's key is its token (kind `Recv`: readiness
/// of its socket).
fn listener_key(index: u16) -> UserData {
    Token {
        sub: index,
        ..Token::new(OpKind::Accept, Slot::WORKER, Generation::ZERO)
    }
    .encode()
}

/// The stop notice's epoll key.
const STOP_KEY: UserData = Token::new(OpKind::Read, Slot::WORKER, Generation::ZERO).encode();

/// Runs one worker until SIGINT/SIGTERM.
/// The epoll file engine of one worker: its epoll set and what it keeps beside the
/// connections (the loop keeps those).
pub struct EpollFiles<'a, H> {
    hooks: H,
    ep: Epoll,
    acceptors: Acceptors<EpollAcceptor>,
    stop: StopNotice,
    /// The stop notice was passed on to the loop.
    stopped: bool,
    /// The last wait's events.
    events: Vec<(u64, Interest)>,
    /// Connections whose receive was deferred to the next turn.
    run_queue: RunQueue,
    /// When the cache last dropped its inactive entries.
    last_expire: u64,
    local: Local<'a>,
}

impl<'a, H: FileHooks> EpollFiles<'a, H> {
    /// Sets up one worker's epoll set, with its acceptors and its file service.
    pub fn new(cfg: &FilesConfig<'a>, hooks: H, start: WorkerStart<'_>) -> Result<Self> {
        let ep = Epoll::new(256)?;
        // The stop notice wakes the wait once (edge-triggered); `given` says what it meant.
        ep.add(&start.stop, STOP_KEY.0, Interest::IN | Interest::ET)?;
        let acceptors = acceptors(cfg, &ep, start.listeners)?;
        Ok(Self {
            hooks,
            ep,
            acceptors,
            stop: start.stop,
            stopped: false,
            events: Vec::with_capacity(256),
            run_queue: RunQueue::new(),
            last_expire: 0,
            local: Local::new(cfg),
        })
    }
}

/// A deferred receive's turn has come (the only completion this engine hands the loop:
/// everything else is performed at once).
#[derive(Debug)]
pub struct Deferred;

impl<H: FileHooks> Engine for EpollFiles<'_, H> {
    type Conn = Conn;
    type Completion = Deferred;
    type Error = Error;
    type Accept = EpollAcceptor;

    fn start(&mut self) -> Result<()> {
        Ok(())
    }

    fn wait(&mut self, timeout: Option<Duration>, _: &mut StreamStats) -> Result<()> {
        // With deferred receives queued, epoll_wait only collects what is ready and returns.
        let timeout = if self.run_queue.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        self.events.clear();
        self.events.extend(self.ep.wait(timeout)?);
        Ok(())
    }

    fn harvest(
        &mut self,
        _: &dyn Fn(&Token) -> bool,
        open: usize,
        now_ms: u64,
        out: &mut Vec<Happening<Deferred>>,
        _: &mut StreamStats,
    ) -> Result<()> {
        // The worker's clock, read once per turn (after the wait).
        self.local.now = self.local.cfg.now();
        if self.stop.given() && !self.stopped {
            self.stopped = true;
            out.push(Happening::Stop);
        }
        for &(key, flags) in &self.events {
            let token = Token::decode(UserData(key));
            match token {
                Ok(t) if t.kind == OpKind::Accept && t.slot == Slot::WORKER => {
                    if let Some(a) = self.acceptors.0.get_mut(usize::from(t.sub)) {
                        accept_batch(&self.ep, (a, t.sub), open, now_ms, out)?;
                    }
                }
                Ok(t) if t.slot != Slot::WORKER => {
                    let gone = flags.intersects(Interest::ERR | Interest::HUP);
                    let ready = Readiness {
                        readable: gone || flags.intersects(Interest::IN | Interest::RDHUP),
                        writable: gone || flags.contains(Interest::OUT),
                    };
                    out.push(Happening::Ready(t, ready));
                }
                // The stop notice (read above), or not ours.
                _ => {}
            }
        }
        // The deferred receives, each behind the events just handled.
        out.extend(
            self.run_queue
                .drain(..)
                .map(|token| Happening::Drive(token, Deferred)),
        );
        Ok(())
    }

    fn adopt(&mut self, sock: OwnedFd, listener: u16) -> Conn {
        let (cfg, now) = (&self.local.cfg, self.local.now);
        let fc = cfg.file_conn(cfg.http, &mut self.hooks, listener, now);
        let mut conn = Conn::new(fc, sock);
        if self.hooks.wants_peer() {
            conn.peer = super::peer_ip(&conn.sock);
        }
        conn
    }

    fn register(&mut self, token: Token, c: &mut Conn) -> bool {
        let interest = Interest::IN | Interest::OUT | Interest::RDHUP | Interest::ET;
        self.ep.add(&c.sock, token.encode().0, interest).is_ok()
    }

    fn reject(&mut self, sock: OwnedFd) -> Result<()> {
        drop(sock);
        Ok(())
    }

    fn drive(
        &mut self,
        token: Token,
        c: &mut Conn,
        input: Input<Deferred>,
        _: &mut StreamStats,
    ) -> Result<bool> {
        let w = &mut self.local;
        let turn_start = c.fc.http().requests();
        let http = c.fc.http_mut();
        match input {
            Input::Opened => {}
            Input::Ready(ready) => {
                if ready.readable {
                    if let Some(max) = c.pending_recv.take() {
                        do_recv(w, c, max);
                    }
                }
                if ready.writable {
                    if let Some(op) = c.pending_send.take() {
                        do_send(w, c, op);
                    }
                }
            }
            // A connection that got an EPOLLIN meanwhile has already received.
            Input::Completion(Deferred) => match c.pending_recv.take() {
                Some(max) => do_recv(w, c, max),
                None => return Ok(c.freed),
            },
            Input::Shutdown => http.on_shutdown(),
            Input::Abort => http.abort(),
            Input::Tick => c.fc.on_tick(w.now),
            Input::Wake => w.svc.wake(&mut c.fc),
        }
        let deferred = drive(c, token, turn_start, w);
        // What this turn answered, before a Free removes the connection.
        self.hooks.answered(c.peer, c.fc.http_mut());
        if deferred {
            self.run_queue.push(token);
        }
        Ok(c.freed)
    }

    fn stale(&mut self, _: Deferred, _: &mut StreamStats) {}

    fn deadline_ms(&self, c: &Conn) -> Option<u64> {
        c.fc.deadline_ms()
    }

    fn wake_interval(&self) -> Option<Duration> {
        // For the cache's inactive entries and the chunk buffers' trim.
        Some(self.local.cfg.tick_interval())
    }

    fn end_of_turn(&mut self, stopping: bool, _: &mut StreamStats) -> Result<()> {
        // The hooks' work (an access log's write, when due).
        self.hooks.end_of_turn(None, stopping)?;
        let w = &mut self.local;
        let out_of_fds = self.acceptors.deadline_ms().is_some();
        super::tidy_cache(
            &mut w.svc,
            &w.cfg,
            (&mut self.last_expire, &mut w.stats),
            w.now.mono_ms,
            out_of_fds,
        );
        w.worker_ops();
        Ok(())
    }

    fn next_wake(&mut self) -> Option<Token> {
        self.local.svc.next_waiting()
    }

    fn accept(&mut self) -> AcceptParts<'_, EpollAcceptor> {
        (&mut self.acceptors, &mut self.ep)
    }

    fn acceptors(&self) -> &Acceptors<EpollAcceptor> {
        &self.acceptors
    }

    fn busy(&self) -> bool {
        self.hooks.busy()
    }

    fn finish(&mut self, _: &mut StreamStats) {
        self.hooks.finish(&self.local.stats, &self.local.svc);
    }

    fn publish(&self, _: &StreamStats, out: &mut Values<'_>) {
        super::live::put_files(&self.local.stats, &self.local.svc, out);
    }
}

/// One acceptor per listener (`main` keeps their number within a u16), level-triggered: a
/// turn that stops at ACCEPT_BATCH is woken again for the rest. At capacity an acceptor stops
/// watching its listener; the listen backlog holds new connections until one closes.
fn acceptors(
    cfg: &FilesConfig<'_>,
    ep: &Epoll,
    listeners: Vec<OwnedFd>,
) -> Result<Acceptors<EpollAcceptor>> {
    listeners
        .into_iter()
        .zip(0u16..)
        .map(|(listener, index)| {
            Ok(
                EpollAcceptor::new(ep, listener, listener_key(index).0, Interest::IN)?
                    .with_capacity(cfg.max_conns as usize),
            )
        })
        .collect::<Result<_>>()
        .map(Acceptors)
}

/// A stat of the connection's path beneath the root: statx(2).
fn do_stat(c: &mut Conn, w: &mut Local) {
    let res = CStr::from_bytes_with_nul(c.fc.http().path())
        .map_err(|_| RawErrno::INVAL)
        .and_then(|path| {
            rustix::fs::statx(w.cfg.root, path, AtFlags::empty(), super::STATX_MASK).map_err(raw)
        });
    let seen = res.map(|s| (file_info(&s), file_id(&s)));
    let reported = w.svc.on_stat(&mut c.fc, w.now, seen);
    w.checked(reported);
}

/// An open of the connection's path beneath the root (openat2 with RESOLVE_BENEATH), into
/// the cache entry its stat reserved or the connection's own descriptor.
fn do_open(c: &mut Conn, w: &mut Local, direct: bool) {
    w.direct.opening(w.cfg.http.direct, direct);
    let (flags, resolve) = open_flags(direct);
    // Nonblocking: should the path have become a FIFO since the stat, the open
    // must not block this thread (pread ignores O_NONBLOCK on regular files).
    let flags = flags | rustix::fs::OFlags::NONBLOCK;
    let res = CStr::from_bytes_with_nul(c.fc.http().path())
        .map_err(|_| RawErrno::INVAL)
        .and_then(|path| {
            rustix::fs::openat2(w.cfg.root, path, flags, Mode::empty(), resolve).map_err(raw)
        });
    if direct && res.as_ref().err() == Some(&RawErrno::INVAL) {
        w.direct.refused();
    }
    let (fd, res) = match res {
        Ok(fd) => (Some(fd), Ok(())),
        Err(e) => (None, Err(e)),
    };
    match w.svc.on_open(&mut c.fc, w.now, res) {
        Ok(FileRef::Entry(ix)) => w.cache_fds[ix.0 as usize] = fd,
        Ok(FileRef::Own) => c.file = fd,
        // Refused: the descriptor it opened is closed.
        Err(e) => w.checked(Err(e)),
    }
}

/// Reports the result of an operation just performed to connection `c`, through its
/// checked door.
fn report(w: &mut Local, c: &mut Conn, event: HttpEvent<'_>) {
    let reported = c.fc.http_mut().on_event(w.now, event);
    w.checked(reported);
}

/// A spare chunk buffer of the right size (room in front of each chunk for the response
/// head: `head_with_body`).
fn new_chunk(cfg: &FilesConfig<'_>) -> AlignedBuf {
    spare_buf((cfg.http.chunk + HEAD_ROOM) as usize)
}

/// A read of a chunk of the connection's file: pread(2).
fn do_read(c: &mut Conn, w: &mut Local, read: ChunkRead) {
    let ChunkRead {
        buf,
        offset,
        len,
        buf_pos,
        file,
        ..
    } = read;
    let b = c.bufs[usize::from(buf.0)].get_or_insert_with(|| new_chunk(&w.cfg));
    let fd = match file {
        FileRef::Entry(ix) => w.cache_fds[ix.0 as usize].as_ref(),
        FileRef::Own => c.file.as_ref(),
    };
    let at = buf_pos as usize..(buf_pos + len) as usize;
    let res = match fd {
        Some(fd) => rustix::io::pread(fd, &mut b.bytes_mut()[at], offset)
            .map(|n| n as u32)
            .map_err(raw),
        None => Err(RawErrno::BADF),
    };
    let reported = w.svc.on_read(&mut c.fc, w.now, buf, res, b.bytes());
    w.checked(reported);
}

/// A read answered from the cached file's kept bytes.
fn read_kept(c: &mut Conn, w: &mut Local, buf: BufIx, at: std::ops::Range<u32>) {
    let b = c.bufs[usize::from(buf.0)].get_or_insert_with(|| new_chunk(&w.cfg));
    let dst = &mut b.bytes_mut()[at.start as usize..at.end as usize];
    w.svc.read_kept(&mut c.fc, w.now, buf, dst);
}

/// Most connections accepted per turn of the loop (see the module docs).
const ACCEPT_BATCH: usize = 32;

/// Up to [`ACCEPT_BATCH`] connections from `acceptor`'s listener, for the loop to admit
/// (`open`: the worker's connections before these).
fn accept_batch(
    ep: &Epoll,
    (acceptor, index): (&mut EpollAcceptor, u16),
    open: usize,
    now_ms: u64,
    out: &mut Vec<Happening<Deferred>>,
) -> Result<()> {
    for n in 0..ACCEPT_BATCH {
        // None: nothing waits, or the acceptor paused (out of descriptors or memory) or is
        // at capacity.
        match acceptor.accept(ep, open + n, now_ms)? {
            Some(sock) => out.push(Happening::Accepted(sock, index)),
            None => break,
        }
    }
    Ok(())
}

thread_local! {
    /// The worker's receive buffer: a receive is synchronous here, and HttpConn keeps what it
    /// needs of the bytes, so no connection needs one of its own.
    static RECV: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn do_recv(w: &mut Local, c: &mut Conn, max: u32) {
    RECV.with(|b| {
        let mut buf = b.borrow_mut();
        if buf.is_empty() {
            buf.resize(w.cfg.http.limits.max_head_bytes + 1, 0);
        }
        let max = (max as usize).min(buf.len());
        match rustix::net::recv(&c.sock, &mut buf[..max], RecvFlags::empty()) {
            Ok((n, _)) => {
                w.stats.bytes_received += n as u64;
                let reported = w.svc.on_recv(&mut c.fc, w.now, Ok(&buf[..n]));
                w.checked(reported);
            }
            Err(Errno::AGAIN) => c.pending_recv = Some(max as u32),
            Err(e) => {
                let reported = w.svc.on_recv(&mut c.fc, w.now, Err(raw(e)));
                w.checked(reported);
            }
        }
    });
}

/// Performs a send of connection `c`'s response: `op` is a [`FileOp::Send`] or a
/// [`FileOp::SendFile`] (the file of a cached entry is in `cache_fds`).
fn do_send(w: &mut Local, c: &mut Conn, op: FileOp) {
    let res = match op {
        FileOp::SendFile { file, offset, len } => {
            // sendfile(2): page cache to socket, no chunk buffer; a full socket is EAGAIN,
            // and the send waits for the next EPOLLOUT edge like any other.
            let fd = match file {
                FileRef::Entry(ix) => w.cache_fds[ix.0 as usize].as_ref(),
                FileRef::Own => c.file.as_ref(),
            };
            let Some(fd) = fd else {
                // Guard: HttpConn sends from the file only while it is open.
                let declined = HttpEvent::FileSendDeclined { again: false };
                return report(w, c, declined);
            };
            w.stats.file_sends += 1;
            rustix::fs::sendfile(&c.sock, fd, Some(&mut { offset }), len as usize)
        }
        FileOp::Send(src) => {
            let bytes = send_bytes(&c.fc, &mut c.bufs, src);
            rustix::net::send(&c.sock, bytes, SendFlags::NOSIGNAL)
        }
        FileOp::SendRecords { .. } => return send_records(w, c, op),
        _ => return,
    };
    match res {
        Ok(n) => {
            w.stats.bytes_sent += n as u64;
            report(w, c, HttpEvent::Send(Ok(n as u32)));
        }
        Err(Errno::AGAIN) => c.pending_send = Some(op),
        Err(e) => report(w, c, HttpEvent::Send(Err(raw(e)))),
    }
}

/// A TLS connection's records to its socket (nonblocking: a socket with no room waits for
/// the next EPOLLOUT edge, or for a best-effort send ends it).
fn send_records(w: &mut Local, c: &mut Conn, op: FileOp) {
    let Some((buf, at)) = c.fc.take_records() else {
        return w.checked(Err(ringwork_core::conn::ConnError::UnexpectedHttp {
            phase: "TLS",
            event: "SendRecords",
        }));
    };
    let res = match rustix::net::send(&c.sock, &buf[at..], SendFlags::NOSIGNAL) {
        Ok(n) => {
            w.stats.bytes_sent += n as u64;
            Ok(n as u32)
        }
        Err(e) => {
            if e == Errno::AGAIN && op == (FileOp::SendRecords { wait: true }) {
                c.pending_send = Some(op);
            }
            Err(raw(e))
        }
    };
    let reported = w.svc.on_records_sent(&mut c.fc, w.now, res, (buf, at));
    w.checked(reported);
}

/// A TLS connection's send of records waiting for room, cancelled.
fn cancel_records(w: &mut Local, c: &mut Conn) {
    if let Some(records) = c.fc.take_records() {
        let reported = w
            .svc
            .on_records_sent(&mut c.fc, w.now, Err(RawErrno::CANCELED), records);
        w.checked(reported);
    }
}

/// A TLS connection's send, encrypted into its records from the head and the chunk buffer
/// it names.
fn seal(w: &mut Local, c: &mut Conn, src: SendSrc) {
    let chunk: &[u8] = match src {
        SendSrc::Buf { buf, .. } | SendSrc::HeadAndBuf { buf, .. } => {
            filled(&mut c.bufs, buf).bytes()
        }
        _ => &[],
    };
    w.svc.seal(&mut c.fc, w.now, src, chunk);
}

/// Chunk buffer `buf`, which a send names (HttpConn sends only from a buffer it read into).
fn filled(bufs: &mut [Option<AlignedBuf>; 2], buf: BufIx) -> &mut AlignedBuf {
    bufs[usize::from(buf.0)]
        .as_mut()
        .expect("a send from a buffer a read filled")
}

/// The bytes of a send from the head (`fc`'s) or a chunk buffer (of `bufs`).
fn send_bytes<'a>(
    fc: &'a FileConn,
    bufs: &'a mut [Option<AlignedBuf>; 2],
    src: SendSrc,
) -> &'a [u8] {
    match src {
        SendSrc::Head { start, len } => {
            &fc.http().head_bytes()[start as usize..(start + len) as usize]
        }
        SendSrc::Buf { buf, start, len } => {
            &filled(bufs, buf).bytes()[start as usize..(start + len) as usize]
        }
        SendSrc::HeadAndBuf { buf, start, len } => {
            // The head goes into the room in front of the chunk: one send for both (again,
            // and the same, when a send that met EAGAIN is retried).
            let head = fc.http().head_bytes();
            let b = filled(bufs, buf);
            let from = start as usize - head.len();
            b.bytes_mut()[from..start as usize].copy_from_slice(head);
            &b.bytes()[from..(start + len) as usize]
        }
        // Guard: the file service turns these into FileOp::SendFile.
        SendSrc::File { .. } => &[],
    }
}

/// Performs every operation the connection has queued, except a receive once a request has
/// been answered since `turn_start` (the [`HttpConn::requests`] count when this turn began):
/// that one is left in `pending_recv` and `true` is returned, meaning "put me on the run
/// queue". It cannot wait for EPOLLIN: the next request may already be in the socket, its
/// edge consumed while no receive was pending.
#[must_use]
fn drive(c: &mut Conn, token: Token, turn_start: u64, w: &mut Local) -> bool {
    let mut deferred = false;
    while let Some(op) = w.svc.next(&mut c.fc, token, w.now) {
        match op {
            FileOp::Recv { max } if c.fc.http().requests() != turn_start => {
                c.pending_recv = Some(max);
                deferred = true;
            }
            FileOp::Recv { max } => do_recv(w, c, max),
            FileOp::Send(_) | FileOp::SendFile { .. } | FileOp::SendRecords { .. } => {
                do_send(w, c, op)
            }
            FileOp::Seal(src) => seal(w, c, src),
            // Guard: only Config::zerocopy makes HttpConn emit it, and main refuses
            // --zerocopy with --backend epoll.
            FileOp::SendZc(_) => unreachable!("SEND_ZC with the epoll backend"),
            FileOp::Stat => do_stat(c, w),
            // `link_next` is never set: this backend's Config has no link_open_read.
            FileOp::Open { direct, .. } => do_open(c, w, direct),
            FileOp::Read(read) => do_read(c, w, read),
            FileOp::ReadKept {
                buf, buf_pos, len, ..
            } => read_kept(c, w, buf, buf_pos..buf_pos + len),
            FileOp::CloseFile => {
                c.file = None;
                report(w, c, HttpEvent::FileClosed);
            }
            FileOp::Cancel => {
                // A deferred receive is cancelled the same way; its run-queue entry then
                // finds no pending_recv and is skipped.
                if c.pending_recv.take().is_some() {
                    let reported = w.svc.on_recv(&mut c.fc, w.now, Err(RawErrno::CANCELED));
                    w.checked(reported);
                }
                match c.pending_send.take() {
                    Some(FileOp::SendRecords { .. }) => cancel_records(w, c),
                    Some(_) => report(w, c, HttpEvent::Send(Err(RawErrno::CANCELED))),
                    None => {}
                }
                // Synchronous, so the request itself is done too.
                let reported = w.svc.on_cancel_done(&mut c.fc, w.now);
                w.checked(reported);
            }
            FileOp::Shutdown => {
                let _ = rustix::net::shutdown(&c.sock, rustix::net::Shutdown::Write);
                report(w, c, HttpEvent::ShutdownDone);
            }
            // No SEND_ZC here (so never `reset`): Free follows at once, and removing the
            // connection then closes the socket.
            FileOp::Close { reset } => debug_assert!(!reset, "SEND_ZC with the epoll backend"),
            // Buffers HttpConn no longer uses go, so that an idle connection holds none.
            FileOp::Release(buf) => {
                if let Some(b) = c.bufs[usize::from(buf.0)].take() {
                    return_buf(b);
                }
            }
            FileOp::Free => {
                c.bufs
                    .iter_mut()
                    .filter_map(Option::take)
                    .for_each(return_buf);
                c.freed = true;
            }
        }
    }
    w.worker_ops();
    deferred && c.pending_recv.is_some()
}

/// Chunk buffers no connection uses, kept for the next (this worker's thread only): making
/// and zeroing 64 KiB per response would cost more than the response.
const SPARE_BUFS: usize = 256;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<AlignedBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A chunk buffer of `len` bytes: a spare one, or a new one.
fn spare_buf(len: usize) -> AlignedBuf {
    SPARE
        .with(|s| s.borrow_mut().pop())
        .filter(|b| b.len == len)
        .unwrap_or_else(|| AlignedBuf::new(len))
}

/// Keeps `buf` for the next connection that needs one (up to `SPARE_BUFS`).
fn return_buf(buf: AlignedBuf) {
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SPARE_BUFS {
            s.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    use ringwork_core::httpconn::Config;

    /// A root holding `f` (10 bytes), served with 16 KiB chunks.
    fn root() -> (OwnedFd, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "ringwork-files-epoll-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), b"0123456789").unwrap();
        let root = rustix::fs::open(
            &dir,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        (root, dir)
    }

    fn config(root: &OwnedFd) -> FilesConfig<'_> {
        FilesConfig {
            name: "test",
            root: root.as_fd(),
            http: Config {
                chunk: 16384,
                ..Config::default()
            },
            cache: ringwork_core::filecache::CacheConfig {
                entries: 4,
                valid_ms: 1000,
                body_budget: 1 << 20,
                body_max: 16384,
                max_path: 64,
                inactive_ms: 0,
            },
            max_conns: 1,
            chunk_buffers: 2,
            uring: super::super::UringSetup::default(),
            shutdown_grace: Duration::from_secs(1),
            epoch: Instant::now(),
            live: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The regression behind "49 of 50 connections unread for seconds": a client whose next
    /// request is always already in the socket must not keep `drive` (and so the whole loop)
    /// to itself. Each request here is too long for one receive to hold two, so every request
    /// after the first needs a receive of its own: exactly one is answered per turn, and the
    /// next receive is handed to the run queue instead of being performed inline.
    #[test]
    fn a_buffered_next_request_waits_for_the_next_turn() {
        let (root, dir) = root();
        let cfg = config(&root);
        let (server, mut client) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let http = ringwork_core::httpconn::HttpConn::new(cfg.http, cfg.now());
        let mut c = Conn::new(FileConn::new(http), OwnedFd::from(server));
        let mut w = Local::new(&cfg);
        let pad = "a".repeat(6000);
        let req = format!("GET /f HTTP/1.1\r\nHost: t\r\nX-Pad: {pad}\r\n\r\n");
        assert!(2 * req.len() > cfg.http.limits.max_head_bytes + 1);
        client.write_all(req.repeat(3).as_bytes()).unwrap();
        let token = Token::new(OpKind::Recv, Slot(0), Generation::ZERO);

        // The accept-time turn: the first receive is inline, the second deferred.
        assert!(drive(&mut c, token, 0, &mut w), "next receive deferred");
        assert_eq!(c.fc.http().requests(), 1, "one request per turn");
        for n in 2..=3 {
            // What the run queue does for this connection on the next turn.
            let max = c.pending_recv.take().expect("deferred receive");
            let turn_start = c.fc.http().requests();
            do_recv(&mut w, &mut c, max);
            assert!(drive(&mut c, token, turn_start, &mut w));
            assert_eq!(c.fc.http().requests(), n, "one request per turn");
        }
        // Nothing more buffered: the deferred receive meets EAGAIN and waits for EPOLLIN.
        let max = c.pending_recv.take().expect("deferred receive");
        do_recv(&mut w, &mut c, max);
        assert_eq!(c.pending_recv, Some(max));
        let turn_start = c.fc.http().requests();
        assert!(!drive(&mut c, token, turn_start, &mut w));
        assert_eq!(w.stats.refused, 0);

        drop(c);
        let mut out = Vec::new();
        client.read_to_end(&mut out).unwrap();
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text}");
        assert_eq!(text.matches("0123456789").count(), 3, "{text}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
