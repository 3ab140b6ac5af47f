//! The file service: what one worker decides between its [`HttpConn`]s and the kernel.
//!
//! An [`HttpConn`] asks for a stat, an open, a read, a send from its file, a close. Much of
//! that needs no system call: the open-file cache ([`FileCache`]) answers a stat of a fresh
//! path, the open of a file it holds, a read of a small file whose bytes it keeps, the close
//! of a cached file. Reads need a chunk buffer from the worker's pool, which may be empty:
//! they wait in arrival order. A send straight from a cached file needs the backend's
//! mapping of it (or its descriptor, for sendfile(2)), which is made once per entry.
//!
//! [`FileService`] makes those decisions, once, for both backends: a backend calls
//! [`FileService::next`] instead of [`HttpConn::poll_op`] and gets the [`FileOp`]s that need
//! the kernel, each naming where its file is ([`FileRef`]) and whether its read takes a
//! chunk buffer from the pool; it reports what the kernel said back through the service
//! where the service keeps something of it ([`FileService::on_stat`],
//! [`FileService::on_open`], [`FileService::on_read`]) and to the [`HttpConn`] otherwise.
//! Worker-wide work (an entry's file to close, a mapping to make) comes from
//! [`FileService::poll_worker_op`].
//!
//! Each connection's side of it is a [`FileConn`]: the [`HttpConn`], its hold on the cache,
//! which chunk buffers it holds, and the operation it parked (a read waiting for a buffer, a
//! receive that found no head buffer).
//!
//! What it does not do: hold memory or descriptors (the backend's), read a clock, or log.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::conn::ConnError;
use crate::errno::RawErrno;
use crate::filecache::{CacheConfig, CacheRef, CacheStats, EntryIx, FileCache, FileId};
use crate::httpconn::HttpEvent;
use crate::httpconn::{BufIx, FileInfo, HttpConn, Op, Scratch, SendSrc, Time};
use crate::metrics::RequestTally;
use crate::token::Token;

/// How the backend sends file bytes straight from the file ([`SendSrc::File`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FileSend {
    /// It cannot: every such send is declined for good and the body goes through chunk
    /// buffers.
    Off,
    /// From any open file, by its descriptor (sendfile(2)).
    Descriptor,
    /// From cached files only, through a mapping the backend makes once per entry
    /// ([`WorkerOp::Map`]); a file the cache does not hold goes through chunk buffers.
    Mapped,
}

/// Settings of a [`FileService`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ServiceConfig {
    /// The open-file cache.
    pub cache: CacheConfig,
    /// Chunk buffers in the worker's pool (`usize::MAX`: the backend makes them as needed).
    pub chunks: usize,
    /// How file bytes are sent straight from the file.
    pub file_send: FileSend,
}

/// Where an operation's file is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum FileRef {
    /// The connection's own (uncached) file: its file slot or descriptor.
    Own,
    /// The file of cache entry `EntryIx`, shared by every request for its path.
    Entry(EntryIx),
}

/// An operation of one connection for the backend to perform: [`Op`] with what the service
/// answered taken out and where each file is said.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum FileOp {
    /// [`Op::Recv`]; report to the [`HttpConn`], or [`FileService::on_recv_nobufs`] when no
    /// head buffer was free.
    Recv {
        /// Most bytes the connection can take now.
        max: u32,
    },
    /// [`Op::Stat`] of [`HttpConn::path`]; report with [`FileService::on_stat`].
    Stat,
    /// [`Op::Open`], the file going `into` an entry or the connection's own slot; report
    /// with [`FileService::on_open`].
    Open {
        /// O_DIRECT.
        direct: bool,
        /// The next op (its first read) is linked behind this open.
        link_next: bool,
        /// Where the file goes.
        into: FileRef,
    },
    /// [`Op::Read`] from a file; report with [`FileService::on_read`].
    Read(ChunkRead),
    /// A read answered from the bytes the cache keeps: copy them with
    /// [`FileService::read_kept`] (`lease` as for [`FileOp::Read`]).
    ReadKept {
        /// Which chunk buffer.
        buf: BufIx,
        /// Position in the buffer.
        buf_pos: u32,
        /// Most bytes.
        len: u32,
        /// Take a chunk buffer from the pool for `buf` first.
        lease: bool,
    },
    /// [`Op::Send`] of the head or a chunk buffer (never [`SendSrc::File`]).
    Send(SendSrc),
    /// A send of `len` bytes at `offset` straight from `file` (sendfile(2), or the entry's
    /// mapping). A backend that cannot now reports
    /// [`HttpConn::on_file_send_declined`] instead of a result.
    SendFile {
        /// The file.
        file: FileRef,
        /// File offset.
        offset: u64,
        /// Byte count.
        len: u32,
    },
    /// [`Op::SendZc`], as is.
    SendZc(Op),
    /// [`Op::CloseFile`] of the connection's own file (a cached one is answered here).
    CloseFile,
    /// [`Op::Cancel`].
    Cancel,
    /// [`Op::Shutdown`].
    Shutdown,
    /// [`Op::Close`].
    Close {
        /// Reset instead of a graceful close.
        reset: bool,
    },
    /// Chunk buffer `BufIx` goes back to the pool: the connection no longer uses it.
    Release(BufIx),
    /// A TLS connection's send of the head or a chunk buffer (never [`SendSrc::File`]):
    /// nothing for the kernel; hand the bytes to [`FileService::seal`], which encrypts them.
    Seal(SendSrc),
    /// A TLS connection's records to the socket: take them with [`FileConn::take_records`],
    /// send the buffer from its offset, report [`FileService::on_records_sent`] with it.
    SendRecords {
        /// Wait for room in the socket as any send does; false: best effort (MSG_DONTWAIT,
        /// and a socket with no room ends it), for the last records of a closing session.
        wait: bool,
    },
    /// [`Op::Free`]: the connection's chunk buffers went back with it.
    Free,
}

/// A read of a chunk of a file into a chunk buffer ([`FileOp::Read`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ChunkRead {
    /// Which chunk buffer.
    pub buf: BufIx,
    /// File offset.
    pub offset: u64,
    /// Bytes to read.
    pub len: u32,
    /// Position in the buffer.
    pub buf_pos: u32,
    /// The file.
    pub file: FileRef,
    /// Take a chunk buffer from the pool for `buf` first (there is one: the service counted
    /// it).
    pub lease: bool,
}

/// Work of the worker's own, not of one connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WorkerOp {
    /// Close entry `EntryIx`'s file (no request uses it; drop its mapping too), then report
    /// [`FileService::on_entry_closed`].
    CloseEntry(EntryIx),
    /// Make a mapping of entry `EntryIx`'s file for sends from it, then report
    /// [`FileService::on_mapped`].
    Map(EntryIx),
}

/// What became of a [`WorkerOp::Map`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mapped {
    /// Made: the entry's sends go from it.
    Ready,
    /// Not now (out of descriptors): the next send from the file asks again.
    Retry,
    /// Never for this entry (not the entry's file any more, empty, refused).
    Failed,
}

/// An entry's mapping, as the service tracks it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
enum MapState {
    #[default]
    None,
    Making,
    Ready,
    Failed,
}

/// Counters, beside the cache's.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ServiceStats {
    /// Reads answered from kept bytes.
    pub body_hits: u64,
    /// Reads that waited for a chunk buffer.
    pub chunk_waits: u64,
    /// Receives that found no head buffer and waited.
    pub head_waits: u64,
}

/// Most ciphertext one TLS receive asks for: a whole record (16 KiB of plaintext, RFC 8446
/// section 5.2) with its expansion.
pub const TLS_RECV_MAX: u32 = 16_384 + 256;

/// Counters of a worker's TLS connections.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct TlsStats {
    /// Handshakes completed.
    pub handshakes: u64,
    /// Sessions that failed: bad records, a failed handshake, a fatal alert from the peer.
    pub failures: u64,
    /// Connections the peer ended without a close_notify after the handshake.
    pub truncated: u64,
    /// Buffers of records sent (handshake flights, responses, alerts, close_notify).
    pub record_sends: u64,
}

/// An operation set aside until the worker can perform it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
enum Parked {
    #[default]
    None,
    /// A read (or an open with its linked read) waiting for a chunk buffer.
    Read(Op, Option<Op>),
    /// A receive that found no head buffer, with its `max`.
    Recv(u32),
}

/// One connection's side of the service; see the module docs.
#[derive(Debug)]
pub struct FileConn {
    http: HttpConn,
    cache: CacheRef,
    /// Chunk buffers 0 and 1 are leased from the pool.
    held: [bool; 2],
    parked: Parked,
    /// Its parked operation may go now (its turn in the queue, or buffers are back).
    go: bool,
    /// The read linked behind the open just returned.
    ahead: Option<FileOp>,
    /// The last receive's `max`, for its resubmission.
    recv_max: u32,
    /// The read in flight: its file offset and position in the buffer.
    read_at: (u64, u32),
    /// The TLS layer in front of `http`, on a TLS connection.
    #[cfg(feature = "tls")]
    tls: Option<alloc::boxed::Box<tls::TlsLink>>,
}

impl FileConn {
    /// A new connection's side: `http` with no hold and no buffers.
    pub fn new(http: HttpConn) -> Self {
        Self {
            http,
            cache: CacheRef::default(),
            held: [false; 2],
            parked: Parked::None,
            go: false,
            ahead: None,
            recv_max: 0,
            read_at: (0, 0),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The connection.
    pub fn http(&self) -> &HttpConn {
        &self.http
    }

    /// The connection, to report completions the service keeps nothing of.
    pub fn http_mut(&mut self) -> &mut HttpConn {
        &mut self.http
    }

    /// Whether chunk buffer `buf` is leased.
    pub fn holds(&self, buf: BufIx) -> bool {
        self.held[usize::from(buf.0)]
    }

    /// Whether the connection speaks TLS ([`FileConn::with_tls`]).
    pub fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// [`FileOp::SendRecords`]: the records to send, as a buffer and the offset of its first
    /// unsent byte. The buffer goes with the send and comes back through
    /// [`FileService::on_records_sent`]. `None` when there are none (a bug of the caller).
    pub fn take_records(&mut self) -> Option<(Vec<u8>, usize)> {
        #[cfg(feature = "tls")]
        return self.take_records_tls();
        #[cfg(not(feature = "tls"))]
        None
    }

    /// When the connection next needs [`FileConn::on_tick`] (as
    /// [`HttpConn::next_deadline_ms`], and a TLS handshake's deadline).
    pub fn deadline_ms(&self) -> Option<u64> {
        let http = self.http.next_deadline_ms();
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls_deadline_ms() {
            return Some(http.map_or(tls, |h| h.min(tls)));
        }
        http
    }

    /// The clock reached `now`: HttpConn's timeouts ([`HttpConn::on_tick`]), and a TLS
    /// handshake past its deadline, which closes the connection as a slow head does.
    pub fn on_tick(&mut self, now: Time) {
        #[cfg(feature = "tls")]
        if !self.tls_in_time(now.mono_ms) {
            self.http.abort();
            return;
        }
        self.http.on_tick(now);
    }
}

/// One worker's file service; see the module docs.
#[derive(Debug)]
pub struct FileService {
    cfg: ServiceConfig,
    cache: FileCache,
    /// Chunk buffers leased, and the most at once since [`FileService::take_peak`].
    in_use: usize,
    peak: usize,
    /// Connections whose read waits for a chunk buffer, first come first served.
    waiting: VecDeque<Token>,
    /// Connections whose receive waits for head buffers.
    starved: Vec<Token>,
    maps: Vec<MapState>,
    /// Mappings to make.
    to_map: Vec<EntryIx>,
    /// Request buffers idle connections gave up, lent to the next request that comes in.
    scratch: Vec<Scratch>,
    stats: ServiceStats,
    /// The requests its connections answered.
    tally: RequestTally,
    tls_stats: TlsStats,
    /// Buffers TLS records went out in, for the next connection's records.
    #[cfg(feature = "tls")]
    spare_records: Vec<Vec<u8>>,
    /// A TLS response's head and small body, joined to be sealed as one record.
    #[cfg(feature = "tls")]
    joined: Vec<u8>,
}

/// Most request-buffer sets a worker keeps for its connections' next requests (each a few
/// KiB; past this many, what idle connections give up is freed).
const SCRATCH_KEPT: usize = 256;

fn same(a: &Token, b: &Token) -> bool {
    (a.slot, a.generation) == (b.slot, b.generation)
}

impl FileService {
    /// A service with an empty cache and every chunk buffer free.
    pub fn new(cfg: ServiceConfig) -> Self {
        Self {
            cfg,
            cache: FileCache::new(cfg.cache),
            in_use: 0,
            peak: 0,
            waiting: VecDeque::new(),
            starved: Vec::new(),
            maps: (0..cfg.cache.entries).map(|_| MapState::None).collect(),
            to_map: Vec::new(),
            scratch: Vec::new(),
            stats: ServiceStats::default(),
            tally: RequestTally::default(),
            tls_stats: TlsStats::default(),
            #[cfg(feature = "tls")]
            spare_records: Vec::new(),
            #[cfg(feature = "tls")]
            joined: Vec::new(),
        }
    }

    /// A receive of connection `c` completed (`res`, its bytes or why not): to its HttpConn,
    /// lent request buffers from the worker's spares first when bytes came and it holds
    /// none, so that a request allocates nothing.
    pub fn on_recv(
        &mut self,
        c: &mut FileConn,
        now: Time,
        res: Result<&[u8], RawErrno>,
    ) -> Result<(), ConnError> {
        #[cfg(feature = "tls")]
        if c.tls.is_some() {
            return self.tls_recv(c, now, res);
        }
        if res.is_ok_and(|b| !b.is_empty()) && c.http.wants_scratch() {
            if let Some(s) = self.scratch.pop() {
                c.http.lend_scratch(s);
            }
        }
        c.http.on_event(now, HttpEvent::Recv(res))
    }

    /// The cache's counters.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// The service's own counters.
    pub fn stats(&self) -> ServiceStats {
        self.stats
    }

    /// The requests its connections answered (by status, body bytes, durations): each
    /// connection's [`HttpConn::take_answered`], taken by [`FileService::next`].
    pub fn tally(&self) -> &RequestTally {
        &self.tally
    }

    /// Entries in the open-file cache's index (a scan of the cache: for a periodic look,
    /// not every request).
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// The file identity the cache holds for entry `ix` (to check a mapping against).
    pub fn file_id(&self, ix: EntryIx) -> Option<FileId> {
        self.cache.file_id(ix)
    }

    /// Chunk buffers leased now.
    pub fn chunks_in_use(&self) -> usize {
        self.in_use
    }

    /// The most chunk buffers leased at once since the last call; starts again from now.
    pub fn take_peak(&mut self) -> usize {
        core::mem::replace(&mut self.peak, self.in_use)
    }

    /// The next operation of connection `c` (whose token is `token`) that needs the
    /// backend; everything the service can answer is answered on the way.
    pub fn next(&mut self, c: &mut FileConn, token: Token, now: Time) -> Option<FileOp> {
        if let Some(s) = c.http.take_scratch() {
            if self.scratch.len() < SCRATCH_KEPT {
                self.scratch.push(s);
            }
        }
        loop {
            // A request is answered only by a send's completion, reported before this
            // call: no event goes untaken (the engines call this after every one).
            if let Some(answered) = c.http.take_answered() {
                self.tally.record(&answered);
            }
            if let Some(op) = c.ahead.take() {
                return Some(op);
            }
            if let Some(op) = self.unpark(c, token, now) {
                return Some(op);
            }
            #[cfg(feature = "tls")]
            match self.tls_step(c, now) {
                tls::Step::Op(op) => return Some(op),
                tls::Step::Perform(op) => match self.perform(c, token, now, op) {
                    Some(op) => return Some(op),
                    None => continue,
                },
                tls::Step::Wait => return self.release_idle(c),
                tls::Step::Poll => {}
            }
            let Some(op) = c.http.poll_op() else {
                return self.release_idle(c);
            };
            #[cfg(feature = "tls")]
            let op = match self.tls_take(c, now, op) {
                tls::Taken::Perform(op) => op,
                tls::Taken::Give(op) => return Some(op),
                tls::Taken::Done => continue,
            };
            if let Some(op) = self.perform(c, token, now, op) {
                return Some(op);
            }
        }
    }

    /// `op` of connection `c`, answered here (`None`) or for the backend.
    fn perform(&mut self, c: &mut FileConn, token: Token, now: Time, op: Op) -> Option<FileOp> {
        match op {
            Op::Recv { max } => {
                c.recv_max = max;
                Some(FileOp::Recv { max })
            }
            Op::Stat => {
                // A stat while the request holds an entry (found by an earlier stat, never
                // opened by it: an open is followed by its response, then its CloseFile):
                // the request looks up another path instead (an error page, the fallback
                // file, after `/file.txt/`'s 404), and its hold on the first ends here.
                self.cache.forget(&mut c.cache);
                let path = c.http.path();
                let Some(answer) = self.cache.stat_from_cache(&mut c.cache, path, now.mono_ms)
                else {
                    return Some(FileOp::Stat);
                };
                c.http.on_stat(now, answer);
                None
            }
            // Open in its entry already; a linked read, queued next, goes on its own.
            Op::Open { .. } if c.cache.is_open() => {
                c.http.on_open(now, Ok(()));
                None
            }
            Op::Open { link_next, .. } => {
                let read = if link_next {
                    // Guard: HttpConn queues the linked read right behind its open.
                    let read = c.http.poll_op();
                    debug_assert!(matches!(read, Some(Op::Read { .. })), "{read:?}");
                    read
                } else {
                    None
                };
                self.open(c, token, op, read)
            }
            Op::Read { .. } => self.read(c, token, op, None),
            Op::Send(SendSrc::File { offset, len }) => match self.send_file(c, offset, len) {
                Ok(op) => Some(op),
                Err(again) => {
                    c.http.on_file_send_declined(now, again);
                    None
                }
            },
            Op::Send(src) => Some(FileOp::Send(src)),
            Op::SendZc { .. } => Some(FileOp::SendZc(op)),
            Op::CloseFile => {
                if !self.cache.close_file(&mut c.cache) {
                    return Some(FileOp::CloseFile);
                }
                c.http.on_file_closed(now);
                None
            }
            Op::Cancel => Some(FileOp::Cancel),
            Op::Shutdown => Some(FileOp::Shutdown),
            Op::Close { reset } => Some(FileOp::Close { reset }),
            Op::Free => {
                self.cache.forget(&mut c.cache);
                for held in &mut c.held {
                    if core::mem::take(held) {
                        self.in_use -= 1;
                    }
                }
                Some(FileOp::Free)
            }
        }
    }

    /// An open; with `read`, its linked first read, which needs a chunk buffer first.
    fn open(
        &mut self,
        c: &mut FileConn,
        token: Token,
        open: Op,
        read: Option<Op>,
    ) -> Option<FileOp> {
        let Op::Open { direct, link_next } = open else {
            return None;
        };
        let into = c.cache.opening().map_or(FileRef::Own, FileRef::Entry);
        if let Some(read) = read {
            let op = self.read(c, token, read, Some(open))?;
            c.ahead = Some(op);
        }
        Some(FileOp::Open {
            direct,
            link_next,
            into,
        })
    }

    /// Read `op`, with a chunk buffer for it; or parked (with `open`, the open it is linked
    /// behind) until one is free, in turn.
    fn read(&mut self, c: &mut FileConn, token: Token, op: Op, open: Option<Op>) -> Option<FileOp> {
        let Op::Read {
            buf,
            offset,
            len,
            buf_pos,
        } = op
        else {
            return None;
        };
        let b = usize::from(buf.0);
        // A connection that holds the buffer already takes nothing from the pool, so it
        // jumps no queue: queued, it would hold that buffer idle while everyone ahead waits.
        let lease = !c.held[b];
        if lease {
            let turn = core::mem::take(&mut c.go) || self.waiting.is_empty();
            if !turn || self.in_use >= self.cfg.chunks {
                c.parked = match open {
                    Some(open) => Parked::Read(open, Some(op)),
                    None => Parked::Read(op, None),
                };
                self.waiting.push_back(token);
                return None;
            }
            self.in_use += 1;
            self.peak = self.peak.max(self.in_use);
            c.held[b] = true;
        }
        c.read_at = (offset, buf_pos);
        if self.cache.kept_body(&c.cache).is_some() {
            return Some(FileOp::ReadKept {
                buf,
                buf_pos,
                len,
                lease,
            });
        }
        let file = c.cache.entry().map_or(FileRef::Own, FileRef::Entry);
        Some(FileOp::Read(ChunkRead {
            buf,
            offset,
            len,
            buf_pos,
            file,
            lease,
        }))
    }

    /// The connection's parked operation, if it may go now: a closing connection's completes
    /// cancelled (it never reached the kernel, and waiting for a buffer would wait behind the
    /// other closing connections, each holding its own buffers until then).
    fn unpark(&mut self, c: &mut FileConn, token: Token, now: Time) -> Option<FileOp> {
        if c.parked == Parked::None {
            return None;
        }
        if c.http.is_closing() {
            match core::mem::take(&mut c.parked) {
                Parked::Recv(_) => {
                    let _ = self.on_recv(c, now, Err(RawErrno::CANCELED));
                }
                Parked::Read(first, second) => {
                    self.waiting.retain(|t| !same(t, &token));
                    for op in [Some(first), second].into_iter().flatten() {
                        match op {
                            // Its entry, reserved for it, is free again.
                            Op::Open { .. } => {
                                self.cache.open_done(&mut c.cache, false);
                                c.http.on_open(now, Err(RawErrno::CANCELED));
                            }
                            Op::Read { buf, .. } => {
                                c.http.on_read(now, buf, Err(RawErrno::CANCELED));
                            }
                            _ => {}
                        }
                    }
                }
                Parked::None => {}
            }
            c.go = false;
            return None;
        }
        if !c.go {
            return None;
        }
        match core::mem::take(&mut c.parked) {
            Parked::Recv(max) => {
                c.go = false;
                Some(FileOp::Recv { max })
            }
            Parked::Read(first, second) => {
                self.stats.chunk_waits += 1;
                match second {
                    Some(read) => self.open(c, token, first, Some(read)),
                    None => self.read(c, token, first, None),
                }
            }
            Parked::None => None,
        }
    }

    /// A chunk buffer the connection holds and no longer uses, to go back to the pool.
    fn release_idle(&mut self, c: &mut FileConn) -> Option<FileOp> {
        (0..2u8).map(BufIx).find_map(|buf| {
            let held = &mut c.held[usize::from(buf.0)];
            (*held && c.http.buf_free(buf)).then(|| {
                *held = false;
                self.in_use -= 1;
                FileOp::Release(buf)
            })
        })
    }

    /// A send straight from the connection's file, or why not: `Err(true)`, this chunk goes
    /// through a buffer and the file is tried again for the next; `Err(false)`, the rest of
    /// the body goes through buffers.
    fn send_file(&mut self, c: &FileConn, offset: u64, len: u32) -> Result<FileOp, bool> {
        let file = match (self.cfg.file_send, c.cache.entry()) {
            (FileSend::Off, _) => return Err(false),
            (FileSend::Descriptor, entry) => entry.map_or(FileRef::Own, FileRef::Entry),
            (FileSend::Mapped, Some(ix)) if c.cache.is_open() => {
                let state = &mut self.maps[ix.0 as usize];
                match *state {
                    MapState::Ready => FileRef::Entry(ix),
                    MapState::Failed => return Err(false),
                    MapState::Making => return Err(true),
                    MapState::None => {
                        *state = MapState::Making;
                        self.to_map.push(ix);
                        return Err(true);
                    }
                }
            }
            // Only a cached file is mapped.
            (FileSend::Mapped, _) => return Err(false),
        };
        Ok(FileOp::SendFile { file, offset, len })
    }

    /// The backend's mapping of entry `ix` no longer covers its file (it grew): it is made
    /// again for the next send.
    pub fn remap(&mut self, ix: EntryIx) {
        if let Some(state @ MapState::Ready) = self.maps.get_mut(ix.0 as usize) {
            *state = MapState::None;
        }
    }

    /// What became of a [`WorkerOp::Map`]: false when the entry's file was closed meanwhile
    /// (drop the mapping).
    pub fn on_mapped(&mut self, ix: EntryIx, outcome: Mapped) -> bool {
        let state = &mut self.maps[ix.0 as usize];
        if *state != MapState::Making {
            return false;
        }
        *state = match outcome {
            Mapped::Ready => MapState::Ready,
            Mapped::Retry => MapState::None,
            Mapped::Failed => MapState::Failed,
        };
        outcome == Mapped::Ready
    }

    /// Worker-wide work: an entry's file to close (first), a mapping to make.
    pub fn poll_worker_op(&mut self) -> Option<WorkerOp> {
        if let Some(ix) = self.cache.poll_close() {
            // Sends in flight hold their own reference to the mapping.
            self.maps[ix.0 as usize] = MapState::None;
            return Some(WorkerOp::CloseEntry(ix));
        }
        while let Some(ix) = self.to_map.pop() {
            if self.maps[ix.0 as usize] == MapState::Making {
                return Some(WorkerOp::Map(ix));
            }
        }
        None
    }

    /// Entry `ix`'s file is closed: the entry may be reused.
    pub fn on_entry_closed(&mut self, ix: EntryIx) {
        self.maps[ix.0 as usize] = MapState::None;
        self.cache.on_closed(ix);
    }

    /// The stat of the connection's path completed: what it found, with the file's identity.
    /// Refused (nothing changed) when the connection has no stat in flight.
    pub fn on_stat(
        &mut self,
        c: &mut FileConn,
        now: Time,
        seen: Result<(FileInfo, FileId), RawErrno>,
    ) -> Result<(), ConnError> {
        let event = HttpEvent::Stat(seen.map(|(info, _)| info));
        if c.http.stat_in_flight() {
            // The cache learns what the path names now (before the connection, which may
            // go on to another path): the same file (a hit), a new one (opened into an
            // entry), or nothing it keeps.
            self.cache
                .stat_done(&mut c.cache, c.http.path(), seen, now.mono_ms);
        }
        c.http.on_event(now, event)
    }

    /// The open completed; the file (when `res` is Ok) belongs where the returned
    /// [`FileRef`] says. Refused (nothing changed) when the connection has no open in flight.
    pub fn on_open(
        &mut self,
        c: &mut FileConn,
        now: Time,
        res: Result<(), RawErrno>,
    ) -> Result<FileRef, ConnError> {
        c.http.on_event(now, HttpEvent::Open(res))?;
        let into = self.cache.open_done(&mut c.cache, res.is_ok());
        Ok(into.map_or(FileRef::Own, FileRef::Entry))
    }

    /// The read into `buf` completed; `chunk` is the buffer's memory (a small file read
    /// whole from its start is kept, for the hits to come).
    pub fn on_read(
        &mut self,
        c: &mut FileConn,
        now: Time,
        buf: BufIx,
        res: Result<u32, RawErrno>,
        chunk: &[u8],
    ) -> Result<(), ConnError> {
        c.http.on_event(now, HttpEvent::Read { buf, res })?;
        let (offset, pos) = c.read_at;
        if let Ok(n) = res {
            let bytes = chunk
                .get(pos as usize..(pos + n) as usize)
                .unwrap_or_default();
            self.cache.read_done(&c.cache, offset, bytes);
        }
        Ok(())
    }

    /// Performs a [`FileOp::ReadKept`]: copies the kept bytes into `dst` (the buffer from the
    /// op's position, as many bytes as the op's `len`) and reports the read.
    pub fn read_kept(&mut self, c: &mut FileConn, now: Time, buf: BufIx, dst: &mut [u8]) {
        let offset = c.read_at.0;
        let res = match self.cache.kept_body(&c.cache) {
            Some(body) => {
                let from = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(body.len());
                let n = (body.len() - from).min(dst.len());
                dst[..n].copy_from_slice(&body[from..from + n]);
                self.stats.body_hits += 1;
                Ok(n as u32)
            }
            // Guard: the op is performed at once, while the connection holds the entry.
            None => Err(RawErrno::BADF),
        };
        c.http.on_read(now, buf, res);
    }

    /// The receive found no head buffer (ENOBUFS): it waits, parked, for
    /// [`FileService::take_starved`] to hand it back.
    pub fn on_recv_nobufs(&mut self, c: &mut FileConn, token: Token) {
        c.parked = Parked::Recv(c.recv_max);
        self.stats.head_waits += 1;
        self.starved.push(token);
    }

    /// The connections whose receive waited for head buffers, now that they are back: each
    /// is [`FileService::wake`]d and driven.
    pub fn take_starved(&mut self, out: &mut Vec<Token>) {
        out.append(&mut self.starved);
    }

    /// The connection next in line for a chunk buffer, once one is free: [`FileService::wake`]
    /// it and drive it (its read takes the buffer).
    pub fn next_waiting(&mut self) -> Option<Token> {
        (self.in_use < self.cfg.chunks)
            .then(|| self.waiting.pop_front())
            .flatten()
    }

    /// Lets connection `c`'s parked operation go at its next [`FileService::next`].
    pub fn wake(&mut self, c: &mut FileConn) {
        c.go = c.parked != Parked::None;
    }

    /// The TLS counters of this worker's connections.
    pub fn tls_stats(&self) -> TlsStats {
        self.tls_stats
    }

    /// Performs a [`FileOp::Seal`] of connection `c`: encrypts HttpConn's bytes (the head's,
    /// and a chunk buffer's, whose memory is `chunk`: the whole buffer, or empty for a send of
    /// the head alone) into records, which [`FileOp::SendRecords`] sends.
    pub fn seal(&mut self, c: &mut FileConn, now: Time, src: SendSrc, chunk: &[u8]) {
        #[cfg(feature = "tls")]
        self.seal_tls(c, now, src, chunk);
        #[cfg(not(feature = "tls"))]
        let _ = (c, now, src, chunk);
    }

    /// A [`FileOp::SendRecords`] of connection `c` completed (`res`) and gave its buffer
    /// (and offset) back. A nonblocking backend that found the socket full reports
    /// `Err(AGAIN)` and sends again once it has room, taking the records again with
    /// [`FileConn::take_records`].
    pub fn on_records_sent(
        &mut self,
        c: &mut FileConn,
        now: Time,
        res: Result<u32, RawErrno>,
        records: (Vec<u8>, usize),
    ) -> Result<(), ConnError> {
        #[cfg(feature = "tls")]
        return self.records_sent_tls(c, now, res, records);
        #[cfg(not(feature = "tls"))]
        {
            let _ = (c, now, res, records);
            Err(ConnError::UnexpectedHttp {
                phase: "plain",
                event: "RecordsSent",
            })
        }
    }

    /// A cancel's completion on connection `c` ([`FileOp::Cancel`]): HttpConn's
    /// ([`HttpEvent::CancelDone`]), or the TLS layer's own.
    pub fn on_cancel_done(&mut self, c: &mut FileConn, now: Time) -> Result<(), ConnError> {
        #[cfg(feature = "tls")]
        if Self::own_cancel_done(c) {
            return Ok(());
        }
        c.http.on_event(now, HttpEvent::CancelDone)
    }

    /// Drops cache entries unused for the inactive period (their files come from
    /// [`FileService::poll_worker_op`]); how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        self.cache.expire_inactive(now_ms)
    }

    /// Out of descriptors: drops the cached files no request uses; how many.
    pub fn evict_unused(&mut self) -> usize {
        self.cache.evict_unused()
    }
}

#[cfg(test)]
mod tests;
#[cfg(feature = "tls")]
mod tls;
#[cfg(all(test, feature = "tls"))]
mod tls_tests;
