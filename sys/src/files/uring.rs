//! The io_uring file engine: turns the file service's operations into SQEs and completions
//! back into its connections' input, on the worker loop every Ringwork server shares
//! ([`run_engine`](crate::worker::run_engine): the connection table, admission, the wait, ticks, the
//! stop and the drain are the loop's).
//!
//! - Ring: SINGLE_ISSUER | DEFER_TASKRUN unless refused (logged) or disabled; `--sqpoll`
//!   instead when asked (`ringwork_sys::driver::server_ring`). One `io_uring:` line per
//!   worker (`driver::FeatureLine`) says which features are in use.
//! - Memory: every SQE goes through safe submission (`ringwork_sys::SafeSqe`). The memory an
//!   operation names travels with it and comes back with its completion: the statx target,
//!   the openat2 arguments, the response head being sent (kept per worker for the next
//!   request, not per connection), and a chunk buffer's lease while a read fills it. Chunk
//!   buffers and head buffers are the ring's; sends from them name the ring's memory. No
//!   `unsafe` here.
//! - Accept: `ringwork_sys::Acceptor`, as in ringwork-echo: one multishot IORING_OP_ACCEPT,
//!   re-armed whenever a CQE lacks F_MORE (single-shot, re-armed per connection, without Linux
//!   5.19 or with `--disable multishot-accept`); out of descriptors or memory it pauses (the
//!   loop's wait never outlasts the pause) and says so on stderr, once per episode.
//! - Files: what is decided about them is `ringwork_core::filesvc::FileService`'s, which the
//!   engine asks for each connection's next operation instead of HttpConn: its open-file
//!   cache answers a fresh entry's stat, open and close at once, and a small file's reads
//!   from its kept bytes; a path found missing within the period answers ENOENT. A miss is
//!   looked up inline first: openat2 (RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS |
//!   RESOLVE_CACHED, nonblocking) and statx of the file it opened, on this thread, where
//!   every component of the path is in the kernel's lookup cache; the descriptor then serves
//!   the open the stat leads to (kept as the cache entry's, or the connection's). Otherwise
//!   IORING_OP_STATX by path relative to the root (on io-wq), then IORING_OP_OPENAT2 straight
//!   into the cache entry's registered-file slot (after the connections' slots), or,
//!   uncached, into slot N for connection slot N, closed with IORING_OP_CLOSE when the
//!   response is done (HttpConn never opens before the previous close completed, so a slot
//!   never holds the wrong file). A cache entry's slot is closed (a worker-slot CLOSE) once
//!   the entry is dropped and no request uses it, and reused only after that CQE; a
//!   descriptor is closed at once. With `--disable fixed-files`, or when the table cannot be
//!   registered, openat2 returns a plain descriptor (O_CLOEXEC) instead.
//! - Links: with registered files HttpConn plans the response at stat time and queues the
//!   open with `link_next`, then the file's first read; both go in as one IOSQE_IO_LINK chain
//!   (`Ring::push_safe_chain`), so the read needs no round trip through this loop. The
//!   read names slot N before the open has filled it: since Linux 5.18 a linked request's
//!   fixed file is looked up at issue, not at submission (sys/tests/links.rs checks it).
//!   A failed open (a symlink out of the root) cancels the read (-ECANCELED, counted as
//!   `link_cancels`); HttpConn answers once both CQEs are in. `--disable links` submits the
//!   read after the open's CQE instead.
//! - Reads: into chunk buffers leased from the worker's pool (`--buffer-memory`) only while
//!   a read fills one or its bytes go out; an empty pool makes reads wait in order (the file
//!   service counts the buffers and keeps the queue). The pool
//!   is adopted unregistered (IORING_OP_READ; pages resident as used, trimmed every second),
//!   or with `--direct` / `--zerocopy` registered (IORING_OP_READ_FIXED); should that fail
//!   (RLIMIT_MEMLOCK) it is adopted, and the reason logged.
//! - Sockets: plain fds. Request heads: IORING_OP_RECV with buffer selection from the
//!   worker's provided buffer ring, capped at HttpConn's room (`select_len`); ENOBUFS waits
//!   for buffers and resubmits. Without buffer rings (Linux 5.19) or with `--disable
//!   pbuf-ring`, a buffer per connection. Responses: IORING_OP_SEND.
//!   With `--zerocopy`, HttpConn sends file chunks as [`Op::SendZc`]: IORING_OP_SEND_ZC
//!   straight from the registered chunk buffer (IORING_RECVSEND_FIXED_BUF with its index;
//!   plain SEND_ZC when the buffers are not registered). Its token names the connection and,
//!   in its sub-index, the send's `ZcSlot`; its result and its notification go back to HttpConn (which
//!   refills the buffer only after the notification), and the connection counts it in flight
//!   until the notification. Notifications with IORING_NOTIF_USAGE_ZC_COPIED are counted for
//!   the `stats:` line.
//! - Bodies past the first chunk (`--sendfile`, on by default; not with `--direct` or
//!   `--zerocopy`): HttpConn's [`SendSrc::File`] goes out as one IORING_OP_SEND straight from
//!   a shared mapping of the cached file (`ringwork_sys::FileMap`), the page cache copied
//!   into the socket once, with no read into a chunk buffer. The mapping is asked for
//!   (`WorkerOp::Map`) the first time a cached entry's file is to be sent from (that chunk
//!   goes by READ meanwhile) and kept with the entry until its close; it
//!   faults nothing in (no MAP_POPULATE), and each send names only the prefix of its range
//!   that mincore(2) says is in the page cache, so that no send waits on the disk in this
//!   thread: a range that starts with a page out of memory is declined (`file_cold`) and that
//!   chunk goes by READ (on io-wq, which pulls it in) instead. With registered files the
//!   entry's slot gets a plain descriptor for the mmap through IORING_OP_FIXED_FD_INSTALL
//!   (Linux 6.8; without it, bodies go through chunk buffers and the features line says
//!   `file_send=off`), checked against the entry's device and inode by statx and closed once
//!   mapped. Uncached responses (`--open-file-cache 0`, a full cache) read into chunk
//!   buffers. A send's `Arc` of the mapping keeps it mapped until the send's CQE; a file cut
//!   short under it fails the send (EFAULT) and closes that connection.
//!   With [`UringFileSend::Sendfile`] (`--file-send sendfile`) the same resident prefix goes
//!   by sendfile(2) on this thread instead (the mapping serves mincore only; the descriptor
//!   installed from the slot is kept with the entry): the socket is O_NONBLOCK for the call
//!   only, since the ring's own sends and receives on an O_NONBLOCK socket can fail with
//!   EAGAIN where io-wq runs them; a full socket waits for IORING_OP_POLL_ADD (POLLOUT),
//!   whose CQE (kind Send, `sub` `WRITABLE_SUB`) is the send's completion; at most one
//!   sendfile(2) per connection per completion, so that one fast reader does not hold the
//!   loop. A file cut short under it sends 0 bytes, which closes that connection.
//! - Time: `driver::Waiter` waits with the loop's timeout (EXT_ARG), which ends at the
//!   earliest connection deadline (`HttpConn::next_deadline_ms`); the clock is read once per
//!   batch of completions.
//! - io-wq: at most `IOWQ_WORKERS` workers of each kind per ring.
//! - Stopping (SIGINT/SIGTERM, relayed by the main thread as the stop notice, polled on the
//!   ring): the loop's graceful drain. The acceptor cancels its accept and closes the
//!   listener once it has ended (new connections are refused); every connection gets
//!   [`HttpConn::on_shutdown`](ringwork_core::httpconn::HttpConn::on_shutdown) (responses
//!   in flight finish, then the connection closes); after `--shutdown-grace-ms` the rest get
//!   [`HttpConn::abort`](ringwork_core::httpconn::HttpConn::abort) (their socket ops
//!   cancelled). The worker returns once every connection is freed and the accept has ended.
//!
//! Every completion goes back to HttpConn (cancel and shutdown CQEs included), which counts its
//! own operations in flight: its `Op::Close { reset }` closes the socket (abortively when
//! SEND_ZC notifications are still owed), and a connection is freed only on its `Op::Free`,
//! once nothing of it is in flight. Until then its buffers, statx struct, open_how and path
//! stay where the kernel was told they are. No count is kept here.

use std::ffi::CStr;
use std::sync::Arc;
use std::time::Duration;

use rustix::fd::{AsFd, AsRawFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::io_uring::{open_how, IoringOp, IORING_NOTIF_USAGE_ZC_COPIED};
use rustix::net::SendFlags;

use ringwork_core::buf::{BufGroup, Lease, ZcSlot};
use ringwork_core::errno::RawErrno;
use ringwork_core::filecache::{EntryIx, FileId};
use ringwork_core::filesvc::{
    ChunkRead, FileConn, FileOp, FileRef, FileSend, FileService, Mapped, ServiceConfig, WorkerOp,
};
use ringwork_core::httpconn::{
    BufIx, FileInfo, FileKind, HttpEvent, Op, SendSrc, HEAD_ROOM, ZC_SENDS,
};
use ringwork_core::token::{Generation, OpKind, Slot, Token};

use super::{
    broken, file_id, file_info, open_flags, DirectNotes, FileHooks, FileStats, FilesConfig,
    UringFileSend,
};
use crate::accept::{AcceptMode, Acceptors};
use crate::backend::RequiredOp;
use crate::driver::{self, FeatureLine, StopNotice, Waiter};
use crate::error::Result;
use crate::worker::live::Values;
use crate::worker::{AcceptParts, Engine, Happening, Input, StreamStats, WorkerStart};
use crate::{
    Acceptor, Error, FileMap, FixedBuffers, OpMemory, OpenArgs, ProvideMode, Ring, SafeSqe,
    StatxTarget, Target,
};

/// One connection: its HttpConn and what the ring holds for it.
pub struct Conn {
    /// HttpConn, with its hold on the open-file cache and its chunk buffers as the file
    /// service counts them.
    fc: FileConn,
    /// The socket, until HttpConn says Close.
    sock: Option<OwnedFd>,
    /// Without a head buffer ring: the head receive buffer, with the ring while a receive is
    /// in flight (made for the first receive).
    recv_buf: Option<Vec<u8>>,
    /// The connection's chunk buffers (HttpConn's `BufIx` 0 and 1), leased from the worker's
    /// pool when the file service says; a lease is with the ring while a read fills its
    /// buffer.
    chunks: [Option<Lease>; 2],
    /// The buffer the read in flight writes (HttpConn keeps at most one read in flight).
    read_buf: BufIx,
    /// The open in flight asked for O_DIRECT.
    direct: bool,
    /// Without registered files: the connection's own open file (closed through the ring by
    /// Op::CloseFile).
    file: Option<OwnedFd>,
    /// The client's address, when the hooks want it.
    peer: Option<std::net::IpAddr>,
    /// `UringFileSend::Sendfile`: a sendfile(2) (of up to `FILE_SEND_MAX` bytes) went on
    /// this thread since the connection's last completion; the next waits for POLLOUT
    /// (at once, where the socket has room), so that one fast reader does not hold the loop
    /// for a whole file (nginx's `sendfile_max_chunk`).
    sent_this_turn: bool,
    /// TLS: the offset in the records buffer its send in flight went from.
    records_at: usize,
}

/// A send of `len` bytes at `offset` of cache entry `ix`'s file (HttpConn's
/// [`FileOp::SendFile`]).
#[derive(Clone, Copy, Debug)]
struct FileSendAt {
    ix: EntryIx,
    offset: u64,
    len: u32,
}

/// What became of a sendfile(2) ([`UringFiles::sendfile_now`]).
enum Sent {
    /// The send's result, for HttpConn.
    Done(core::result::Result<u32, RawErrno>),
    /// Not sent from the file (HttpConn's `again`).
    Declined(bool),
    /// The socket is full: wait for POLLOUT.
    Full,
}

/// The sub-index of a connection's POLL_ADD for POLLOUT, under `OpKind::Send`: its
/// completion is that of the send from a file that waited for it.
const WRITABLE_SUB: u16 = 1;

/// The sub-index of a TLS connection's send of records ([`FileOp::SendRecords`]), under
/// `OpKind::Send`.
const RECORDS_SUB: u16 = 2;

/// The io_uring file engine of one worker: its ring and what it keeps beside the
/// connections (the loop keeps those).
pub struct UringFiles<'a, H> {
    cfg: FilesConfig<'a>,
    hooks: H,
    stats: FileStats,
    ring: Ring,
    /// Files open into registered-file slot N for connection slot N (else plain fds).
    fixed_files: bool,
    /// SEND_ZC with IORING_SEND_ZC_REPORT_USAGE (Linux 6.2).
    zc_report_usage: bool,
    /// HttpConn's settings for this ring (`link_open_read` where it can chain).
    http_cfg: ringwork_core::httpconn::Config,
    /// One per listener, with its accept (tokens of kind Accept on `Slot::WORKER`, the
    /// listener's index in `sub`); each closes its listener once its accept has ended
    /// during a drain.
    acceptors: Acceptors<Acceptor>,
    /// The main thread's word that the process is stopping.
    stop: StopNotice,
    waiter: Waiter,
    direct: DirectNotes,
    /// The open-file cache, the chunk-buffer queue and the entries' mappings: what is
    /// decided about files, in core.
    svc: FileService,
    /// A miss's stat tries a synchronous cached-only open first ([`UringFiles::stat_now`]).
    inline_lookups: bool,
    /// The file that open found, for the open the stat leads to, and its path.
    opened: Option<OwnedFd>,
    opened_path: Vec<u8>,
    /// Cache entry N's file: in registered-file slot `cache_base + N` or in `cache_fds[N]`
    /// (without registered files, or opened by [`UringFiles::stat_now`]), and its mapping
    /// once made.
    cache_base: u32,
    cache_fds: Vec<Option<OwnedFd>>,
    maps: Vec<Option<Arc<FileMap>>>,
    /// Bodies straight from the page cache go by sendfile(2), the mapping serving mincore
    /// only (else by sends from the mapping).
    sendfile: bool,
    /// With registered files and `sendfile`: entry N's descriptor from
    /// IORING_OP_FIXED_FD_INSTALL, kept after its mapping for sendfile(2).
    send_fds: Vec<Option<OwnedFd>>,
    /// With `sendfile`: the sends from a file that wait for room in their socket (a
    /// POLL_ADD in flight), by connection slot. Here, not in `Conn`: an idle connection
    /// carries nothing for them.
    waiting_sends: std::collections::HashMap<Slot, FileSendAt>,
    /// Request heads are received into buffers the kernel picks from the HEAD_GROUP ring
    /// (else into a buffer per connection).
    head_ring: bool,
    /// The time, read once per batch of completions.
    now: ringwork_core::httpconn::Time,
    /// Memory the connections' operations borrow for a while (statx targets, openat2
    /// arguments, response heads), kept for the next request instead of per connection.
    spare: Spares,
    /// Connections whose head receive may go again (buffers are back), to wake.
    woken: Vec<Token>,
    cqes: Vec<crate::Cqe>,
    /// When the cache last dropped its inactive entries, and the chunk buffers last gave
    /// their pages back.
    last_expire: u64,
    last_trim: u64,
    /// Connections accepted in the batch being harvested (the loop admits them after it).
    accepted: usize,
}

/// A connection's completion, with what it brought back: the memory its operation named,
/// and the head buffer a receive filled.
#[derive(Debug)]
pub struct Completion {
    kind: OpKind,
    /// A SEND_ZC's tracker slot.
    sub: u16,
    res: core::result::Result<u32, RawErrno>,
    /// The raw result (a SEND_ZC notification's usage bit).
    raw: i32,
    more: bool,
    notif: bool,
    mem: Option<OpMemory>,
    head: Option<Lease>,
}

/// Operation memory no connection holds, for the next that needs it (boxed as the
/// operations take it).
#[derive(Default)]
#[allow(clippy::vec_box)]
struct Spares {
    stat: Vec<Box<StatxTarget>>,
    open: Vec<Box<OpenArgs>>,
    head: Vec<Vec<u8>>,
}

/// Most of each kind of operation memory kept spare.
const SPARES: usize = 256;

fn keep<T>(list: &mut Vec<T>, item: T) {
    if list.len() < SPARES {
        list.push(item);
    }
}

/// How often unused chunk buffers give their pages back, and how many free ones stay
/// resident beyond those used since the last time.
const TRIM_INTERVAL_MS: u64 = 1000;
const TRIM_SPARE: usize = 4;

/// Most io-wq workers per ring, of each kind (bounded: file I/O; unbounded: the rest).
const IOWQ_WORKERS: u32 = 16;

/// The provided buffer ring request heads are received into.
const HEAD_GROUP: BufGroup = BufGroup(0);
/// Its buffers: enough for a burst of receives completing in one batch; a head longer than
/// one buffer takes several receives.
const HEAD_BUFFERS: u16 = 1024;
const HEAD_BUFFER_SIZE: u32 = 2048;

/// What this engine cannot run without; where the kernel lacks one, a server's `--backend
/// auto` runs on epoll.
pub const REQUIRED: [RequiredOp; 8] = [
    RequiredOp::new(IoringOp::Accept, "IORING_OP_ACCEPT", "5.5"),
    RequiredOp::new(IoringOp::Openat2, "IORING_OP_OPENAT2", "5.6"),
    RequiredOp::new(IoringOp::Statx, "IORING_OP_STATX", "5.6"),
    RequiredOp::new(IoringOp::Read, "IORING_OP_READ", "5.6"),
    RequiredOp::new(IoringOp::Send, "IORING_OP_SEND", "5.6"),
    RequiredOp::new(IoringOp::Recv, "IORING_OP_RECV", "5.6"),
    RequiredOp::new(IoringOp::Close, "IORING_OP_CLOSE", "5.6"),
    RequiredOp::new(IoringOp::PollAdd, "IORING_OP_POLL_ADD", "5.1"),
];

impl<'a, H: FileHooks> UringFiles<'a, H> {
    /// Sets up one worker's ring (its features probed, each refusal said in one line, and
    /// one `io_uring:` line with the features in use), its acceptors and its file service.
    pub fn new(cfg: &FilesConfig<'a>, hooks: H, start: WorkerStart<'_>) -> Result<Self> {
        let WorkerStart {
            listeners, stop, ..
        } = start;
        let slots = cfg.max_conns;
        let uc = cfg.uring;
        let (mut ring, note) = driver::server_ring(uc.ring)?;
        if let Some(note) = note {
            println!("{note}");
        }
        let (acceptors, links) = acceptors_and_links(&mut ring, cfg, listeners)?;
        let acceptors = Acceptors(acceptors);
        let zc_report_usage = cfg.http.zerocopy && zc_reports_usage(&mut ring)?;
        let cache_entries = cfg.cache.entries;
        let fixed_files = uc.fixed_files && file_table(&mut ring, slots + cache_entries);
        let fixed = chunk_buffers(&mut ring, cfg)?;
        let head_ring = uc.pbuf_ring && head_ring(&mut ring);
        // Opens, stats and cold reads that block run on io-wq threads: capped, so that a
        // burst of them (10,000 connections missing the cache at once) queues instead of
        // starting a thread each. Before Linux 5.15 the kernel's own limits stand.
        let iowq = ring.register_iowq_max_workers(IOWQ_WORKERS, IOWQ_WORKERS);
        if let Err(e) = &iowq {
            println!("{e}: io-wq workers not capped");
        }
        // A chain is two SQEs: a one-entry SQ cannot hold one.
        let links = links && fixed_files && ring.sq_entries() >= 2;
        let file_send = cfg.http.file_send
            && cache_entries > 0
            && (!fixed_files || can_install_fds(&mut ring)?);
        let http_cfg = ringwork_core::httpconn::Config {
            link_open_read: links,
            file_send,
            ..cfg.http
        };
        println!(
            "{}",
            FeatureLine::new(&ring)
                .with("multishot_accept", acceptors.multishot())
                .with("fixed_files", fixed_files)
                .with("fixed_buffers", fixed)
                .with("pbuf_ring", head_ring)
                .with("zerocopy", cfg.http.zerocopy)
                .with("links", links)
                .with("file_send", file_send)
                .with(
                    "sendfile",
                    file_send && uc.file_send == UringFileSend::Sendfile
                )
                .with("inline_lookups", uc.inline_lookups)
        );
        let waiter = Waiter::new(&ring, 1, Duration::ZERO);
        let svc = FileService::new(ServiceConfig {
            cache: cfg.cache,
            chunks: usize::from(cfg.chunk_buffers),
            file_send: if file_send {
                FileSend::Mapped
            } else {
                FileSend::Off
            },
        });
        let now = cfg.now();
        Ok(Self {
            cfg: *cfg,
            hooks,
            stats: FileStats::default(),
            cqes: Vec::with_capacity(ring.cq_entries() as usize),
            ring,
            fixed_files,
            zc_report_usage,
            http_cfg,
            acceptors,
            stop,
            waiter,
            direct: DirectNotes::default(),
            svc,
            inline_lookups: uc.inline_lookups,
            opened: None,
            opened_path: Vec::new(),
            cache_base: slots,
            cache_fds: (0..cache_entries).map(|_| None).collect(),
            maps: (0..cache_entries).map(|_| None).collect(),
            sendfile: uc.file_send == UringFileSend::Sendfile,
            send_fds: (0..cache_entries).map(|_| None).collect(),
            waiting_sends: std::collections::HashMap::new(),
            head_ring,
            now,
            spare: Spares::default(),
            woken: Vec::new(),
            last_expire: now.mono_ms,
            last_trim: now.mono_ms,
            accepted: 0,
        })
    }
}

/// Sends from a mapping of a cached file need a descriptor for the mmap, which a registered
/// slot gives through IORING_OP_FIXED_FD_INSTALL (Linux 6.8); without it, bodies go through
/// chunk buffers.
fn can_install_fds(ring: &mut Ring) -> Result<bool> {
    let can = ring.probe()?.supports(IoringOp::FixedFdInstall);
    if !can {
        println!(
            "{}: file bodies go through chunk buffers",
            unsupported("IORING_OP_FIXED_FD_INSTALL", "6.8")
        );
    }
    Ok(can)
}

/// SEND_ZC with IORING_SEND_ZC_REPORT_USAGE (Linux 6.2): on 6.0 and 6.1 the flag would fail
/// every send with EINVAL, so sends go without it there.
fn zc_reports_usage(ring: &mut Ring) -> Result<bool> {
    let reports = ring.send_zc_reports_usage()?;
    if !reports {
        println!(
            "--zerocopy: {}: zc_copied will stay 0",
            unsupported("IORING_SEND_ZC_REPORT_USAGE", "6.2")
        );
    }
    Ok(reports)
}

/// Registers a sparse file table of `slots` (connection N's file in slot N, the open-file
/// cache's entries after them); false: files are opened into plain descriptors. Opening
/// straight into a file slot is Linux 5.15, sparse tables 5.19: a refusal says which.
fn file_table(ring: &mut Ring, slots: u32) -> bool {
    match ring.register_files_sparse(slots) {
        Ok(()) => true,
        Err(e) => {
            println!("registering a file table of {slots} slots failed ({e}): opening into plain descriptors");
            false
        }
    }
}

/// The stop notice poll's token: the worker's, not a connection's.
const STOP_TOKEN: Token = Token::new(
    OpKind::Read,
    Slot::WORKER,
    ringwork_core::token::Generation::ZERO,
);

impl<H: FileHooks> Engine for UringFiles<'_, H> {
    /// Boxed: the table is sized for `--max-conns` up front, and an empty slot should cost
    /// a pointer, not a connection.
    type Conn = Box<Conn>;
    type Completion = Completion;
    type Error = Error;
    type Accept = Acceptor;

    fn start(&mut self) -> Result<()> {
        for a in &mut self.acceptors.0 {
            a.start(&mut self.ring)?;
        }
        self.arm_stop()
    }

    fn wait(&mut self, timeout: Option<Duration>, _: &mut StreamStats) -> Result<()> {
        match self.waiter.wait(&mut self.ring, timeout) {
            Err(e) if e.errno() != Some(rustix::io::Errno::INTR) => Err(e),
            _ => Ok(()),
        }
    }

    fn harvest(
        &mut self,
        _: &dyn Fn(&Token) -> bool,
        open: usize,
        now_ms: u64,
        out: &mut Vec<Happening<Completion>>,
        _: &mut StreamStats,
    ) -> Result<()> {
        let mut cqes = std::mem::take(&mut self.cqes);
        self.waiter.harvest(&mut self.ring, &mut cqes);
        // One clock reading per batch: timeouts are in milliseconds, dates in seconds.
        self.now = self.cfg.now();
        self.accepted = 0;
        let mut result = Ok(());
        for cqe in cqes.drain(..) {
            result = self.on_cqe(cqe, open, now_ms, out);
            if result.is_err() {
                break;
            }
        }
        self.cqes = cqes;
        result
    }

    fn adopt(&mut self, sock: OwnedFd, listener: u16) -> Box<Conn> {
        let peer = if self.hooks.wants_peer() {
            super::peer_ip(&sock)
        } else {
            None
        };
        Box::new(Conn {
            fc: (self.cfg).file_conn(self.http_cfg, &mut self.hooks, listener, self.now),
            records_at: 0,
            sock: Some(sock),
            recv_buf: None,
            chunks: [None, None],
            read_buf: BufIx(0),
            direct: false,
            file: None,
            peer,
            sent_this_turn: false,
        })
    }

    fn register(&mut self, _: Token, _: &mut Box<Conn>) -> bool {
        true
    }

    fn reject(&mut self, sock: OwnedFd) -> Result<()> {
        // Closing it refuses it (the loop admits none while draining or at capacity).
        drop(sock);
        Ok(())
    }

    fn drive(
        &mut self,
        token: Token,
        c: &mut Box<Conn>,
        input: Input<Completion>,
        _: &mut StreamStats,
    ) -> Result<bool> {
        let now = self.now;
        let http = c.fc.http_mut();
        // The stop, the abort and the ticks are for connections HttpConn has not closed.
        let open = !http.is_closed();
        match input {
            Input::Opened | Input::Ready(_) => {}
            Input::Completion(done) => self.complete(token, c, done)?,
            Input::Shutdown if open => http.on_shutdown(),
            Input::Abort if open => http.abort(),
            Input::Tick if open => c.fc.on_tick(now),
            Input::Shutdown | Input::Abort | Input::Tick => return Ok(false),
            Input::Wake => self.svc.wake(&mut c.fc),
        }
        self.perform(token, c)
    }

    fn stale(&mut self, done: Completion, _: &mut StreamStats) {
        // Cannot happen while connections are freed only once nothing of them is in
        // flight; should it, what the completion brought goes back.
        if let (Some(lease), Some(br)) = (done.head, self.ring.buf_ring(HEAD_GROUP)) {
            br.recycle(lease);
        }
        if let Some(OpMemory::Fixed(lease)) = done.mem {
            self.buffers().release(lease);
        }
    }

    fn deadline_ms(&self, c: &Box<Conn>) -> Option<u64> {
        c.fc.deadline_ms()
    }

    fn wake_interval(&self) -> Option<Duration> {
        // For the cache's inactive entries and the chunk buffers' trim.
        Some(self.cfg.tick_interval())
    }

    fn end_of_turn(&mut self, stopping: bool, _: &mut StreamStats) -> Result<()> {
        if self.head_ring {
            // The head buffers taken since the last turn go back to the kernel; the
            // receives that found none go again (the file service resubmits them, or
            // completes them cancelled for a closing connection).
            self.ring.publish_buffers(HEAD_GROUP)?;
            self.svc.take_starved(&mut self.woken);
        }
        // The hooks' work (an access log's write through the ring).
        self.hooks.end_of_turn(Some(&mut self.ring), stopping)?;
        // Cached files held as descriptors (without registered files, or opened by inline
        // lookups) give theirs up when the acceptor is out of them.
        let now = self.now.mono_ms;
        let fds = !self.fixed_files || self.inline_lookups;
        let out_of_fds = fds && self.acceptors.deadline_ms().is_some();
        super::tidy_cache(
            &mut self.svc,
            &self.cfg,
            (&mut self.last_expire, &mut self.stats),
            now,
            out_of_fds,
        );
        self.worker_ops();
        if now.saturating_sub(self.last_trim) >= TRIM_INTERVAL_MS {
            self.last_trim = now;
            self.trim_chunks()?;
        }
        Ok(())
    }

    fn next_wake(&mut self) -> Option<Token> {
        // Head receives first (their buffers are back), then the reads that waited for a
        // chunk buffer, in their order, while the pool has one for the next.
        self.woken.pop().or_else(|| self.svc.next_waiting())
    }

    fn accept(&mut self) -> AcceptParts<'_, Acceptor> {
        (&mut self.acceptors, &mut self.ring)
    }

    fn acceptors(&self) -> &Acceptors<Acceptor> {
        &self.acceptors
    }

    fn busy(&self) -> bool {
        // An operation of the hooks' (a log write) names memory the ring holds until its
        // CQE. The stop notice's poll stays armed until the notice: it is no connection's,
        // and the ring drops (cancelling it) when the loop ends.
        self.hooks.busy()
    }

    /// After the loop: the ring's counters and the file service's, to the hooks.
    fn finish(&mut self, _: &mut StreamStats) {
        self.stats = self.stats_now();
        self.hooks.finish(&self.stats, &self.svc);
    }

    fn publish(&self, _: &StreamStats, out: &mut Values<'_>) {
        super::live::put_files(&self.stats_now(), &self.svc, out);
    }
}

impl<H: FileHooks> UringFiles<'_, H> {
    /// The engine's counters with the ring's.
    fn stats_now(&self) -> FileStats {
        let rs = self.ring.stats();
        FileStats {
            enters: rs.enters,
            cq_overflows: rs.overflow_seen,
            busy_retries: rs.busy_retries,
            ..self.stats
        }
    }

    fn push(&mut self, sqe: SafeSqe) -> Result<()> {
        self.ring.push_safe(sqe)
    }

    fn arm_stop(&mut self) -> Result<()> {
        self.stop.arm(&mut self.ring, STOP_TOKEN.encode())
    }

    /// One completion: an accept, the stop notice, the log's write, an entry's descriptor or
    /// close, or a connection's (to drive, with the memory it brought back).
    fn on_cqe(
        &mut self,
        mut cqe: crate::Cqe,
        open: usize,
        now_ms: u64,
        out: &mut Vec<Happening<Completion>>,
    ) -> Result<()> {
        let Ok(token) = Token::decode(cqe.user_data()) else {
            return Ok(());
        };
        // A head buffer the kernel picked goes back to the ring whatever becomes of it.
        let head = match cqe.take_buffer().map(|sel| {
            self.ring
                .buf_ring(HEAD_GROUP)
                .expect("only head receives select buffers")
                .take(sel)
        }) {
            Some(Ok(lease)) => Some(lease),
            Some(Err(e)) => return Err(broken(format!("a head buffer went astray: {e}"))),
            None => None,
        };
        if let Some((i, acceptor)) =
            (self.acceptors.0.iter_mut().enumerate()).find(|(_, a)| a.owns(&token))
        {
            // The acceptor re-arms, backs off, or (draining) closes the listener itself.
            // The connections accepted earlier in this batch count: the acceptor stops at
            // capacity (the listen backlog holds the rest) instead of the loop refusing them.
            let open = open + self.accepted;
            if let Some(sock) = acceptor.on_cqe(&mut self.ring, &cqe, open, now_ms)? {
                self.accepted += 1;
                out.push(Happening::Accepted(sock, i as u16));
            }
            return Ok(());
        }
        if token == STOP_TOKEN {
            if self.stop.given() {
                out.push(Happening::Stop);
                return Ok(());
            }
            // Spurious: poll again.
            return self.arm_stop();
        }
        if self.hooks.owns(&token) {
            return self.hooks.on_cqe(&mut self.ring, &cqe);
        }
        if token.slot == Slot::WORKER && token.kind == OpKind::Open {
            // A cache entry's file got a descriptor, for its mapping.
            let fd = match self.ring.take_memory(cqe.user_data()) {
                Some(OpMemory::Installed(fd)) => fd,
                _ => None,
            };
            self.on_installed(EntryIx(u32::from(token.sub)), cqe.result(), fd);
            return Ok(());
        }
        if token.slot == Slot::WORKER && token.kind == OpKind::Close {
            // A cached file's slot closed (whatever the result: the slot is empty now).
            self.svc.on_entry_closed(EntryIx(u32::from(token.sub)));
            return Ok(());
        }
        // The memory the operation named comes back with its last completion.
        let mem = (!cqe.more())
            .then(|| self.ring.take_memory(cqe.user_data()))
            .flatten();
        let done = Completion {
            kind: token.kind,
            sub: token.sub,
            res: cqe.result(),
            raw: cqe.res(),
            more: cqe.more(),
            notif: cqe.is_notification(),
            mem,
            head,
        };
        // A completion for a connection freed since comes back through `Engine::stale`.
        out.push(Happening::Drive(token, done));
        Ok(())
    }

    /// A completion of one of connection `c`'s operations, back to its HttpConn (through the
    /// file service where it keeps something of it) with the memory it named.
    fn complete(&mut self, token: Token, c: &mut Conn, done: Completion) -> Result<()> {
        let now = self.now;
        let Completion {
            kind,
            sub,
            res,
            raw,
            more,
            notif,
            mem,
            head,
        } = done;
        c.sent_this_turn = false;
        if (kind, sub) == (OpKind::Send, WRITABLE_SUB) {
            return self.writable(token, c, res);
        }
        // A SEND_ZC's token names the connection, and the send in `sub`.
        let zc_slot = ZcSlot(u32::from(sub));
        let http = c.fc.http_mut();
        let reported = match (kind, mem) {
            (OpKind::SendZc, _) if notif => {
                self.stats.zc_notifs += 1;
                // IORING_SEND_ZC_REPORT_USAGE: bit 31 of `res` says the kernel copied after
                // all (always, on loopback).
                if raw & IORING_NOTIF_USAGE_ZC_COPIED != 0 {
                    self.stats.zc_copied += 1;
                }
                http.on_event(now, HttpEvent::SendNotif(zc_slot))
            }
            (OpKind::SendZc, _) => {
                self.stats.bytes_sent += u64::from(res.unwrap_or(0));
                let event = HttpEvent::SendZc {
                    slot: zc_slot,
                    res,
                    more,
                };
                http.on_event(now, event)
            }
            (OpKind::Recv, Some(OpMemory::Bytes(buf))) => {
                self.received(token, c, res, Some(buf), None)
            }
            (OpKind::Recv, None) => self.received(token, c, res, None, head),
            (OpKind::Send, Some(OpMemory::Bytes(buf))) if sub == RECORDS_SUB => {
                self.stats.bytes_sent += u64::from(res.unwrap_or(0));
                let records = (buf, c.records_at);
                self.svc.on_records_sent(&mut c.fc, now, res, records)
            }
            (OpKind::Send, mem) => {
                if let Some(OpMemory::Bytes(buf)) = mem {
                    keep(&mut self.spare.head, buf);
                }
                self.stats.bytes_sent += u64::from(res.unwrap_or(0));
                http.on_event(now, HttpEvent::Send(res))
            }
            (OpKind::Statx, Some(OpMemory::Statx(target))) => {
                let seen = res.map(|_| (file_info(target.statx()), file_id(target.statx())));
                keep(&mut self.spare.stat, target);
                self.svc.on_stat(&mut c.fc, now, seen)
            }
            (OpKind::Open, Some(OpMemory::Open(args))) => self.opened(c, res, args),
            (OpKind::Read, Some(OpMemory::Fixed(lease))) => self.read_done(c, res, lease)?,
            // The descriptor is gone whatever the result (close(2) never leaves it open).
            (OpKind::Close, _) => http.on_event(now, HttpEvent::FileClosed),
            // Whatever their results (the cancelled op reports on its own): HttpConn closes
            // the socket only once these requests that name it are done.
            (OpKind::Cancel, _) => self.svc.on_cancel_done(&mut c.fc, now),
            (OpKind::Shutdown, _) => http.on_event(now, HttpEvent::ShutdownDone),
            (kind, mem) => {
                return Err(broken(format!(
                    "a {kind:?} completion came back with {mem:?}: memory went astray"
                )))
            }
        };
        self.stats.checked(self.cfg.name, reported);
        Ok(())
    }

    /// A head receive completed: its bytes (in `buf`, the connection's own buffer, or `head`,
    /// the head ring's) to HttpConn through the file service; ENOBUFS (the head ring was
    /// empty) parks the receive until buffers are back (HttpConn still counts it in flight;
    /// PITFALLS.md, "ENOBUFS from a provided buffer ring is not fatal").
    fn received(
        &mut self,
        token: Token,
        c: &mut Conn,
        res: core::result::Result<u32, RawErrno>,
        buf: Option<Vec<u8>>,
        head: Option<Lease>,
    ) -> core::result::Result<(), ringwork_core::conn::ConnError> {
        let now = self.now;
        self.stats.bytes_received += u64::from(res.unwrap_or(0));
        if let Some(buf) = buf {
            let r = self
                .svc
                .on_recv(&mut c.fc, now, res.map(|n| &buf[..n as usize]));
            c.recv_buf = Some(buf);
            return r;
        }
        if res == Err(RawErrno::NOBUFS) {
            self.svc.on_recv_nobufs(&mut c.fc, token);
            return Ok(());
        }
        match (head, self.ring.buf_ring(HEAD_GROUP)) {
            (Some(lease), Some(br)) => {
                let r = self
                    .svc
                    .on_recv(&mut c.fc, now, res.map(|n| br.bytes(&lease, n)));
                br.recycle(lease);
                r
            }
            // End of stream or an error: no buffer was picked.
            _ => self.svc.on_recv(&mut c.fc, now, res.map(|_| &[][..])),
        }
    }

    /// An OPENAT2 completed: registered files are in their slot already; a descriptor is
    /// kept where the file service says (or, refused, closed with `args`).
    fn opened(
        &mut self,
        c: &mut Conn,
        res: core::result::Result<u32, RawErrno>,
        mut args: Box<OpenArgs>,
    ) -> core::result::Result<(), ringwork_core::conn::ConnError> {
        if c.direct && res == Err(RawErrno::INVAL) {
            self.direct.refused();
        }
        let into = self.svc.on_open(&mut c.fc, self.now, res.map(|_| ()));
        match into {
            Ok(_) if self.fixed_files => {}
            Ok(FileRef::Entry(ix)) => self.cache_fds[ix.0 as usize] = args.take_fd(),
            Ok(FileRef::Own) => c.file = args.take_fd(),
            Err(_) => {}
        }
        keep(&mut self.spare.open, args);
        into.map(|_| ())
    }

    /// A READ into chunk buffer `lease` completed: to the file service, the buffer back
    /// with the connection.
    fn read_done(
        &mut self,
        c: &mut Conn,
        res: core::result::Result<u32, RawErrno>,
        lease: Lease,
    ) -> Result<core::result::Result<(), ringwork_core::conn::ConnError>> {
        if res == Err(RawErrno::CANCELED) {
            self.stats.link_cancels += 1;
        }
        let buffers = self
            .ring
            .fixed_buffers()
            .ok_or(broken("no chunk buffers"))?;
        let (buf, bytes) = (c.read_buf, buffers.bytes(&lease));
        let r = self.svc.on_read(&mut c.fc, self.now, buf, res, bytes);
        match &mut c.chunks[usize::from(buf.0)] {
            slot @ None => *slot = Some(lease),
            // Guard: a refused read's buffer cannot be the one held.
            Some(_) => buffers.release(lease),
        }
        Ok(r)
    }

    /// Gives the pages of the chunk buffers not needed since the last trim back to the system
    /// (unregistered buffers only): a burst's memory does not stay resident once it is over.
    /// The buffers that were in use at the peak and are free now stay, with a few spare.
    fn trim_chunks(&mut self) -> Result<()> {
        let in_use = self.svc.chunks_in_use();
        let keep = self.svc.take_peak().saturating_sub(in_use) + TRIM_SPARE;
        self.ring.trim_fixed_buffers(keep).map(|_| ())
    }

    /// Performs the file service's worker-wide work: closes the files of the cache entries
    /// no request holds any more (each entry is reusable once its close completes), makes
    /// the mappings sends from a cached file wait for.
    fn worker_ops(&mut self) {
        while let Some(op) = self.svc.poll_worker_op() {
            match op {
                WorkerOp::CloseEntry(ix) => {
                    // Sends in flight hold their own reference; it is unmapped after the last.
                    self.maps[ix.0 as usize] = None;
                    self.send_fds[ix.0 as usize] = None;
                    if self.cache_fds[ix.0 as usize].take().is_some() || !self.fixed_files {
                        // A descriptor: close(2) of a regular file, at once.
                        self.svc.on_entry_closed(ix);
                        continue;
                    }
                    let token = Token::new(OpKind::Close, Slot::WORKER, Generation::ZERO)
                        .with_sub(ix.0 as u16);
                    let sqe =
                        SafeSqe::close_fixed(self.cache_base + ix.0).user_data(token.encode());
                    // A full SQ is submitted to make room; should even that fail, the slot
                    // stays taken (the entry is never reused) rather than misnamed.
                    let _ = self.ring.push_safe(sqe);
                }
                WorkerOp::Map(ix) => self.map(ix),
            }
        }
    }

    /// Maps entry `ix`'s file: a plain descriptor at once; a registered slot once
    /// IORING_OP_FIXED_FD_INSTALL has given it a descriptor ([`UringFiles::on_installed`]).
    fn map(&mut self, ix: EntryIx) {
        if let Some(fd) = &self.cache_fds[ix.0 as usize] {
            let map = map_entry(fd, self.svc.file_id(ix));
            self.mapped(ix, map);
            return;
        }
        let token = Token::new(OpKind::Open, Slot::WORKER, Generation::ZERO).with_sub(ix.0 as u16);
        let sqe = SafeSqe::fixed_fd_install(self.cache_base + ix.0).user_data(token.encode());
        if self.ring.push_safe(sqe).is_err() {
            self.svc.on_mapped(ix, Mapped::Retry);
        }
    }

    /// What became of entry `ix`'s mapping, to the file service.
    fn mapped(&mut self, ix: EntryIx, map: core::result::Result<Arc<FileMap>, Mapped>) {
        match map {
            Ok(m) if self.svc.on_mapped(ix, Mapped::Ready) => self.maps[ix.0 as usize] = Some(m),
            Ok(_) => {}
            Err(outcome) => {
                self.svc.on_mapped(ix, outcome);
            }
        }
    }

    /// The IORING_OP_FIXED_FD_INSTALL of entry `ix`'s slot completed (`res`, and `fd`, the
    /// descriptor it installed). The descriptor is closed once mapped (the mapping holds the
    /// file), or kept for sendfile(2) with the entry. Out of descriptors, the next send from
    /// the file tries again.
    fn on_installed(
        &mut self,
        ix: EntryIx,
        res: core::result::Result<u32, RawErrno>,
        fd: Option<OwnedFd>,
    ) {
        let map = match (fd, res) {
            (Some(fd), _) => {
                let map = map_entry(&fd, self.svc.file_id(ix));
                if self.sendfile && map.is_ok() {
                    self.send_fds[ix.0 as usize] = Some(fd);
                }
                map
            }
            (None, Err(RawErrno::MFILE | RawErrno::NFILE)) => Err(Mapped::Retry),
            (None, _) => Err(Mapped::Failed),
        };
        self.mapped(ix, map);
    }

    /// Performs what the file service hands out for connection `c` (`token`): SQEs, a chain
    /// for an open with its linked read (the service decides what is chained; this only
    /// submits it), chunk buffers leased and given back, kept bytes copied. True at its
    /// Free (its chunk buffers are back in the pool).
    fn perform(&mut self, token: Token, c: &mut Conn) -> Result<bool> {
        // What the connection answered since the last time (an access log's lines).
        self.hooks.answered(c.peer, c.fc.http_mut());
        let mut freed = false;
        while let Some(op) = self.svc.next(&mut c.fc, token, self.now) {
            // The file an inline stat opened serves only the open that comes right after it.
            let opened = self.opened.take();
            match op {
                FileOp::Open {
                    direct: false,
                    link_next,
                    ..
                } if opened.is_some() && c.fc.http().path() == self.opened_path.as_slice() => {
                    self.opened_now(token, c, opened, link_next)?;
                }
                FileOp::Free => {
                    let buffers = self.buffers();
                    for lease in c.chunks.iter_mut().filter_map(Option::take) {
                        buffers.release(lease);
                    }
                    freed = true;
                    break;
                }
                FileOp::Release(buf) => {
                    if let Some(lease) = c.chunks[usize::from(buf.0)].take() {
                        self.buffers().release(lease);
                    }
                }
                FileOp::Seal(src) => self.seal(c, src)?,
                FileOp::ReadKept {
                    buf,
                    buf_pos,
                    len,
                    lease,
                } => {
                    self.lease(c, buf, lease)?;
                    let buffers = self
                        .ring
                        .fixed_buffers()
                        .expect("the chunk buffers are set up before the loop");
                    let dst = &mut buffers.bytes_mut(chunk(c, buf)?)[buf_pos as usize..];
                    self.svc
                        .read_kept(&mut c.fc, self.now, buf, &mut dst[..len as usize]);
                }
                FileOp::Open {
                    link_next: true, ..
                } => {
                    let Some(read) = self.svc.next(&mut c.fc, token, self.now) else {
                        return Err(broken("an open with link_next and no read"));
                    };
                    if let FileOp::Read(ChunkRead { buf, lease, .. }) = read {
                        self.lease(c, buf, lease)?;
                    }
                    let first = self.build_sqe(token, c, op)?;
                    let second = self.build_sqe(token, c, read)?;
                    let (Some(first), Some(second)) = (first, second) else {
                        return Err(broken("an open's linked read was not a read"));
                    };
                    self.ring.push_safe_chain(vec![first, second], false)?;
                }
                op => {
                    if let FileOp::Read(ChunkRead { buf, lease, .. }) = op {
                        self.lease(c, buf, lease)?;
                    }
                    if let Some(sqe) = self.build_sqe(token, c, op)? {
                        self.push(sqe)?;
                    }
                }
            }
        }
        self.worker_ops();
        Ok(freed)
    }

    /// A TLS connection's send, encrypted into its records from the head and the chunk
    /// buffer it names.
    fn seal(&mut self, c: &mut Conn, src: SendSrc) -> Result<()> {
        let chunk: &[u8] = match src {
            SendSrc::Buf { buf, .. } | SendSrc::HeadAndBuf { buf, .. } => {
                let lease = chunk(c, buf)?;
                let buffers = self
                    .ring
                    .fixed_buffers()
                    .ok_or(broken("no chunk buffers"))?;
                buffers.bytes(lease)
            }
            _ => &[],
        };
        self.svc.seal(&mut c.fc, self.now, src, chunk);
        Ok(())
    }

    fn buffers(&mut self) -> &mut FixedBuffers {
        self.ring
            .fixed_buffers()
            .expect("the chunk buffers are set up before the loop")
    }

    /// Takes a chunk buffer from the pool for connection `c`'s buffer `buf` when `lease`
    /// (the file service counted one free).
    fn lease(&mut self, c: &mut Conn, buf: BufIx, lease: bool) -> Result<()> {
        if lease {
            let lease = self.buffers().acquire().ok_or(broken(
                "the chunk pool is empty where the file service counted one free",
            ))?;
            c.chunks[usize::from(buf.0)] = Some(lease);
        }
        Ok(())
    }

    /// A send of `range` of cache entry `ix`'s file straight from its mapping; or why not:
    /// `Err(true)`, this chunk goes by a read and the file is tried again for the next;
    /// `Err(false)`, the rest of the body goes by reads.
    fn send_from_map(
        &mut self,
        ix: EntryIx,
        sock: Target,
        range: std::ops::Range<usize>,
    ) -> core::result::Result<SafeSqe, bool> {
        let start = range.start;
        let (m, n) = self.resident(ix, range)?;
        self.stats.file_sends += 1;
        Ok(SafeSqe::send_mapped(sock, &m, start..start + n).send_flags(SendFlags::NOSIGNAL))
    }

    /// Entry `ix`'s mapping and how much of `range` (from its start) is in the page cache;
    /// or why nothing is sent from it, as [`UringFiles::send_from_map`] says.
    fn resident(
        &mut self,
        ix: EntryIx,
        range: std::ops::Range<usize>,
    ) -> core::result::Result<(Arc<FileMap>, usize), bool> {
        let (start, end) = (range.start, range.end);
        let map = &mut self.maps[ix.0 as usize];
        let m = match map {
            Some(m) if end <= m.len() => Arc::clone(m),
            // The file grew since it was mapped (rewritten in place): map it again.
            Some(_) => {
                *map = None;
                self.svc.remap(ix);
                return Err(true);
            }
            None => return Err(false),
        };
        // Only what is in memory: a fault on a page out of it would read the disk in this
        // thread. A range that starts out of memory goes by a read (io-wq).
        let n = m.resident(start..end);
        if n == 0 {
            self.stats.file_cold += 1;
            return Err(true);
        }
        Ok((m, n))
    }

    /// HttpConn's send from cache entry `at.ix`'s file: from its mapping, or by sendfile(2)
    /// ([`UringFiles::send_file`]); `None` when reported already (declined, or sent).
    fn file_send_sqe(&mut self, token: Token, c: &mut Conn, at: FileSendAt) -> Option<SafeSqe> {
        if self.sendfile {
            return self.send_file(token, c, at);
        }
        let sock = Target::Fd(c.sock.as_ref().map_or(-1, |s| s.as_raw_fd()));
        let start = at.offset as usize;
        match self.send_from_map(at.ix, sock, start..start + at.len as usize) {
            Ok(sqe) => Some(sqe.user_data(token.with_kind(OpKind::Send).encode())),
            Err(again) => {
                c.fc.http_mut().on_file_send_declined(self.now, again);
                None
            }
        }
    }

    /// HttpConn's send from a file by sendfile(2): at once, unless one went already since
    /// the connection was last woken; a full socket waits for POLLOUT. `None`: reported.
    fn send_file(&mut self, token: Token, c: &mut Conn, at: FileSendAt) -> Option<SafeSqe> {
        let sent = match c.sent_this_turn {
            true => Sent::Full,
            false => self.sendfile_now(c, at),
        };
        self.report_sent(token, c, at, sent)
    }

    /// The POLL_ADD (POLLOUT) a send from a file waited for completed (`res`): the send
    /// goes now, or waits again; a failed or cancelled poll is that send's result.
    fn writable(
        &mut self,
        token: Token,
        c: &mut Conn,
        res: core::result::Result<u32, RawErrno>,
    ) -> Result<()> {
        let at = self
            .waiting_sends
            .remove(&token.slot)
            .ok_or_else(|| broken("a POLLOUT with no send waiting for it"))?;
        let sent = match res {
            Ok(_) => self.sendfile_now(c, at),
            Err(e) => Sent::Done(Err(e)),
        };
        if let Some(sqe) = self.report_sent(token, c, at, sent) {
            self.push(sqe)?;
        }
        Ok(())
    }

    /// `sent` to HttpConn; or, the socket full, the POLL_ADD to wait with.
    fn report_sent(
        &mut self,
        token: Token,
        c: &mut Conn,
        at: FileSendAt,
        sent: Sent,
    ) -> Option<SafeSqe> {
        let http = c.fc.http_mut();
        match sent {
            Sent::Done(res) => {
                let reported = http.on_event(self.now, HttpEvent::Send(res));
                self.stats.checked(self.cfg.name, reported);
                None
            }
            Sent::Declined(again) => {
                http.on_file_send_declined(self.now, again);
                None
            }
            Sent::Full => {
                self.stats.file_send_waits += 1;
                self.waiting_sends.insert(token.slot, at);
                let sock = Target::Fd(c.sock.as_ref().map_or(-1, |s| s.as_raw_fd()));
                let ud = token.with_kind(OpKind::Send).with_sub(WRITABLE_SUB);
                let poll = SafeSqe::poll_add(sock, rustix::event::PollFlags::OUT);
                Some(poll.user_data(ud.encode()))
            }
        }
    }

    /// sendfile(2) of the prefix of `at` in the page cache, on this thread: the socket is
    /// nonblocking for the call only (the ring's sends and receives on an O_NONBLOCK socket
    /// could fail with EAGAIN where io-wq runs them), so it never waits for room, and
    /// mincore(2) first, so it never waits on the disk.
    fn sendfile_now(&mut self, c: &mut Conn, at: FileSendAt) -> Sent {
        let start = at.offset as usize;
        let (_map, n) = match self.resident(at.ix, start..start + at.len as usize) {
            Ok(found) => found,
            Err(again) => return Sent::Declined(again),
        };
        let ix = at.ix.0 as usize;
        let (Some(fd), Some(sock)) = (
            self.cache_fds[ix].as_ref().or(self.send_fds[ix].as_ref()),
            c.sock.as_ref(),
        ) else {
            // Guard: mapped entries keep a descriptor (`send_fds`), and HttpConn sends only
            // before its Close.
            return Sent::Declined(false);
        };
        c.sent_this_turn = true;
        // The ring's accept gives blocking sockets (no SOCK_NONBLOCK) and nothing sets
        // other status flags on them: empty flags restore what was there.
        let flags = |f| rustix::fs::fcntl_setfl(sock, f);
        let sent = flags(OFlags::NONBLOCK)
            .and_then(|()| rustix::fs::sendfile(sock, fd, Some(&mut { at.offset }), n));
        let restored = flags(OFlags::empty());
        match (sent, restored) {
            (Err(Errno::AGAIN), Ok(())) => Sent::Full,
            (Ok(n), Ok(())) => {
                self.stats.file_sends += 1;
                // 0 (the file cut short under the response) closes the connection.
                Sent::Done(Ok(n as u32))
            }
            (Err(e), _) | (_, Err(e)) => Sent::Done(Err(RawErrno(e.raw_os_error()))),
        }
    }

    /// A miss's stat answered at once, where the path's every component is in the kernel's
    /// lookup cache: openat2 with RESOLVE_CACHED (Linux 5.12; it fails with EAGAIN rather
    /// than read the disk) and statx of the file it opened, as nginx opens then fstat()s.
    /// A regular file stays open for the open the stat leads to ([`UringFiles::opened_now`]).
    /// `None`: the ring's IORING_OP_STATX answers instead (on io-wq, a thread hop): the
    /// lookup needs the disk, or the open failed for a reason statx by path may not share
    /// (a symlink out of the root, permissions).
    fn stat_now(&mut self, c: &Conn) -> Option<core::result::Result<(FileInfo, FileId), RawErrno>> {
        if !self.inline_lookups || self.cfg.http.direct {
            return None;
        }
        let path = CStr::from_bytes_with_nul(c.fc.http().path()).ok()?;
        let (flags, resolve) = open_flags(false);
        // Nonblocking, as nginx opens: a FIFO must not hold the loop. Cleared again below
        // for a regular file: on a file system without nowait support, the ring's reads of
        // an O_NONBLOCK file fail with EAGAIN instead of waiting for the disk (ext4, xfs and
        // btrfs have it, and there the flag changes nothing).
        let flags = flags | OFlags::NONBLOCK;
        let resolve = resolve | ResolveFlags::CACHED;
        let fd = match rustix::fs::openat2(self.cfg.root, path, flags, Mode::empty(), resolve) {
            Ok(fd) => fd,
            Err(e @ (Errno::NOENT | Errno::NOTDIR)) => {
                self.stats.inline_lookups += 1;
                return Some(Err(RawErrno(e.raw_os_error())));
            }
            Err(Errno::INVAL) => {
                // RESOLVE_CACHED unknown to this kernel.
                self.inline_lookups = false;
                println!(
                    "{}: every miss is stat'ed on io-wq",
                    unsupported("openat2 RESOLVE_CACHED", "5.12")
                );
                return None;
            }
            Err(_) => return None,
        };
        let stx = rustix::fs::statx(&fd, "", AtFlags::EMPTY_PATH, super::STATX_MASK).ok()?;
        let info = file_info(&stx);
        if info.kind == FileKind::Regular {
            rustix::fs::fcntl_setfl(&fd, OFlags::empty()).ok()?;
            self.opened = Some(fd);
            self.opened_path.clear();
            self.opened_path.extend_from_slice(path.to_bytes_with_nul());
        }
        self.stats.inline_lookups += 1;
        Some(Ok((info, file_id(&stx))))
    }

    /// The open after an inline stat ([`UringFiles::stat_now`]), with the file it opened:
    /// completed at once, the descriptor kept where the file service says; a linked read
    /// goes on its own.
    fn opened_now(
        &mut self,
        token: Token,
        c: &mut Conn,
        fd: Option<OwnedFd>,
        link_next: bool,
    ) -> Result<()> {
        match self.svc.on_open(&mut c.fc, self.now, Ok(())) {
            Ok(FileRef::Entry(ix)) => self.cache_fds[ix.0 as usize] = fd,
            Ok(FileRef::Own) => c.file = fd,
            // Refused (a bug, said and counted): the descriptor is closed.
            Err(e) => self.stats.checked(self.cfg.name, Err(e)),
        }
        if link_next {
            let Some(read) = self.svc.next(&mut c.fc, token, self.now) else {
                return Err(broken("an open with link_next and no read"));
            };
            if let FileOp::Read(ChunkRead { buf, lease, .. }) = read {
                self.lease(c, buf, lease)?;
            }
            match self.build_sqe(token, c, read)? {
                Some(sqe) => self.push(sqe)?,
                None => return Err(broken("an open's linked read was not a read")),
            }
        }
        Ok(())
    }

    /// The OPENAT2 of connection `c`'s path beneath the root, `into` the cache entry its
    /// stat reserved or the connection's own file slot `own` (or a plain descriptor).
    fn open_sqe(
        &mut self,
        c: &mut Conn,
        own: Slot,
        direct: bool,
        into: FileRef,
    ) -> Result<SafeSqe> {
        let (fixed_files, root) = (self.fixed_files, self.cfg.root.as_raw_fd());
        self.direct.opening(self.cfg.http.direct, direct);
        let (mut flags, resolve) = open_flags(direct);
        if fixed_files {
            // A direct descriptor has no close-on-exec bit; the kernel refuses
            // O_CLOEXEC with a file slot (EINVAL).
            flags -= rustix::fs::OFlags::CLOEXEC;
        }
        c.direct = direct;
        let mut how = open_how::default();
        how.flags = u64::from(flags.bits());
        how.resolve = resolve;
        let args = self.spare.open.pop().unwrap_or_default();
        let file_slot = match into {
            FileRef::Entry(ix) => self.cache_base + ix.0,
            FileRef::Own => own.0,
        };
        let file_slot = fixed_files.then_some(file_slot);
        SafeSqe::openat2(root, c.fc.http().path(), how, file_slot, args)
    }

    /// Where connection `c`'s `file` is: a registered-file slot (its own is `own`) or a
    /// descriptor.
    fn file_target(&self, c: &Conn, own: Slot, file: FileRef) -> Result<Target> {
        let fd = match file {
            FileRef::Entry(ix) => self.cache_fds[ix.0 as usize].as_ref(),
            FileRef::Own => c.file.as_ref(),
        };
        match (fd, file) {
            (Some(fd), _) => Ok(Target::Fd(fd.as_raw_fd())),
            (None, FileRef::Entry(ix)) if self.fixed_files => {
                Ok(Target::Fixed(self.cache_base + ix.0))
            }
            (None, FileRef::Own) if self.fixed_files => Ok(Target::Fixed(own.0)),
            // HttpConn reads only after a successful open, which gave the fd.
            (None, _) => Err(broken("a read of a file that is not open")),
        }
    }

    /// The READ of a chunk of connection `c`'s file into the chunk buffer HttpConn names.
    fn read_sqe(&mut self, c: &mut Conn, own: Slot, read: ChunkRead) -> Result<SafeSqe> {
        let ChunkRead {
            buf,
            offset,
            len,
            buf_pos,
            file,
            ..
        } = read;
        let file = self.file_target(c, own, file)?;
        c.read_buf = buf;
        let lease = c.chunks[usize::from(buf.0)]
            .take()
            .ok_or_else(|| broken("HttpConn read into a buffer a read is filling"))?;
        Ok(self.ring.read_fixed(file, lease, buf_pos, len, offset))
    }

    /// The SEND of a response head (copied into memory that goes with the send), of a head
    /// in front of its first chunk (one send for both), or of a chunk.
    fn send_sqe(&mut self, c: &Conn, sock: Target, src: SendSrc) -> Result<SafeSqe> {
        let sqe = match src {
            SendSrc::Head { start, len } => {
                // The head is copied out of HttpConn, into memory that goes with the send.
                let mut buf = self.spare.head.pop().unwrap_or_default();
                buf.clear();
                let start = start as usize;
                buf.extend_from_slice(&c.fc.http().head_bytes()[start..start + len as usize]);
                let len = buf.len();
                SafeSqe::send(sock, buf, 0..len)
            }
            SendSrc::HeadAndBuf { buf, start, len } => {
                // The head goes into the room in front of the chunk. The lease proves no
                // operation names the buffer while it is written.
                let lease = chunk(c, buf)?;
                let head = c.fc.http().head_bytes();
                let head_len = head.len() as u32;
                let from = start
                    .checked_sub(head_len)
                    .ok_or_else(|| broken("a head longer than the room in front of its chunk"))?;
                let buffers = self.buffers();
                buffers.bytes_mut(lease)[from as usize..start as usize].copy_from_slice(head);
                self.ring.send_fixed(sock, lease, from, head_len + len)
            }
            SendSrc::Buf { buf, start, len } => {
                let lease = chunk(c, buf)?;
                self.ring.send_fixed(sock, lease, start, len)
            }
            SendSrc::File { .. } => return Err(broken("the file service sends files itself")),
        };
        Ok(sqe.send_flags(SendFlags::NOSIGNAL))
    }

    /// The SQE (user_data set) for `op` of connection `c` (`token`); `None` for an op
    /// performed here and now (a close of the socket, a send from a file declined).
    fn build_sqe(&mut self, token: Token, c: &mut Conn, op: FileOp) -> Result<Option<SafeSqe>> {
        let root = self.cfg.root.as_raw_fd();
        // HttpConn emits nothing after Close, and only Close takes the socket.
        let sock = Target::Fd(c.sock.as_ref().map_or(-1, |s| s.as_raw_fd()));
        let (kind, sqe) = match op {
            FileOp::SendZc(Op::SendZc {
                buf,
                start,
                len,
                slot: zc,
            }) => {
                // Straight from the chunk buffer, registered where it is.
                let (lease, usage) = (chunk(c, buf)?, self.zc_report_usage);
                let sqe = self.ring.send_zc_fixed(sock, lease, start, len, usage);
                let sqe = sqe.send_flags(SendFlags::NOSIGNAL);
                // `sub` names the send, so that its notification finds it (HttpConn's slots
                // are below ZC_SENDS).
                debug_assert!(zc.0 < ZC_SENDS);
                let ud = token.with_kind(OpKind::SendZc).with_sub(zc.0 as u16);
                return Ok(Some(sqe.user_data(ud.encode())));
            }
            FileOp::Recv { max } if self.head_ring => (
                OpKind::Recv,
                SafeSqe::recv_select(sock, HEAD_GROUP, false).select_len(max),
            ),
            FileOp::Recv { max } => {
                let buf = c
                    .recv_buf
                    .take()
                    .unwrap_or_else(|| vec![0; self.http_cfg.limits.max_head_bytes + 1]);
                (OpKind::Recv, SafeSqe::recv(sock, buf, max as usize))
            }
            FileOp::Send(src) => (OpKind::Send, self.send_sqe(c, sock, src)?),
            FileOp::SendRecords { wait } => {
                let (buf, at) =
                    c.fc.take_records()
                        .ok_or_else(|| broken("a send of records with none"))?;
                c.records_at = at;
                let len = buf.len();
                // Best effort: a socket with no room fails with EAGAIN instead of waiting.
                let flags = match wait {
                    true => SendFlags::NOSIGNAL,
                    false => SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
                };
                let sqe = SafeSqe::send(sock, buf, at..len).send_flags(flags);
                let ud = token.with_kind(OpKind::Send).with_sub(RECORDS_SUB);
                return Ok(Some(sqe.user_data(ud.encode())));
            }
            FileOp::SendFile {
                file: FileRef::Entry(ix),
                offset,
                len,
            } => return Ok(self.file_send_sqe(token, c, FileSendAt { ix, offset, len })),
            FileOp::Stat => {
                if let Some(seen) = self.stat_now(c) {
                    let reported = self.svc.on_stat(&mut c.fc, self.now, seen);
                    self.stats.checked(self.cfg.name, reported);
                    return Ok(None);
                }
                let mask = super::STATX_MASK;
                let target = self.spare.stat.pop().unwrap_or_else(StatxTarget::new);
                let sqe = SafeSqe::statx(root, c.fc.http().path(), AtFlags::empty(), mask, target)?;
                (OpKind::Statx, sqe)
            }
            FileOp::Open { direct, into, .. } => {
                (OpKind::Open, self.open_sqe(c, token.slot, direct, into)?)
            }
            FileOp::Read(read) => (OpKind::Read, self.read_sqe(c, token.slot, read)?),
            FileOp::CloseFile => {
                let sqe = match c.file.take() {
                    Some(file) => SafeSqe::close(file),
                    None if self.fixed_files => SafeSqe::close_fixed(token.slot.0),
                    // HttpConn closes only after a successful open, which gave the fd.
                    None => return Err(broken("a file close with no file open")),
                };
                (OpKind::Close, sqe)
            }
            FileOp::Cancel => {
                let sock = c
                    .sock
                    .as_ref()
                    .ok_or_else(|| broken("a cancel after the close"))?;
                (
                    OpKind::Cancel,
                    driver::cancel_socket_ops(&self.ring, sock.as_fd()),
                )
            }
            FileOp::Shutdown => (OpKind::Shutdown, SafeSqe::shutdown(sock, 1)),
            FileOp::Close { reset } => {
                // Nothing names the socket any more (HttpConn waited for its cancel and
                // shutdown CQEs): dropping it closes it. With `reset`, SEND_ZC notifications
                // are owed and bytes of ours still queued hold them back (a peer that does
                // not read may never take them): SO_LINGER 0 makes the close a reset, so the
                // kernel drops them and the notifications come. The chunk buffers stay
                // untouched until Op::Free.
                if let Some(sock) = c.sock.take() {
                    if reset {
                        let _ =
                            rustix::net::sockopt::set_socket_linger(&sock, Some(Duration::ZERO));
                    }
                }
                return Ok(None);
            }
            op => return Err(broken(format!("{op:?} is not for the ring"))),
        };
        Ok(Some(sqe.user_data(token.with_kind(kind).encode())))
    }
}

/// The acceptors (one per listener; `main` keeps their number within a u16), after checking
/// the operations this backend needs; and whether open → read chains can be linked.
fn acceptors_and_links(
    ring: &mut Ring,
    cfg: &FilesConfig<'_>,
    listeners: Vec<OwnedFd>,
) -> Result<(Vec<Acceptor>, bool)> {
    let want = cfg.uring;
    let slots = cfg.max_conns;
    let probe = ring.probe()?;
    for r in REQUIRED {
        probe.require(r.op, r.name, r.since)?;
    }
    // At capacity the acceptor stops, and the listen backlog holds new connections.
    // One per listener; `main` keeps their number within a u16.
    let mode = if want.multishot_accept {
        AcceptMode::Multishot
    } else {
        AcceptMode::Single
    };
    let acceptors: Vec<Acceptor> = listeners
        .into_iter()
        .zip(0u16..)
        .map(|(listener, index)| {
            Acceptor::new(listener, Slot::WORKER, probe, mode)
                .with_listener_index(index)
                .with_capacity(slots as usize)
        })
        .collect();
    if cfg.http.zerocopy {
        probe.require(IoringOp::SendZc, "IORING_OP_SEND_ZC (--zerocopy)", "6.0")?;
    }
    // Linked open → read from the slot the open fills needs the read's fixed file looked
    // up at issue, not at submission (Linux 5.18); 5.19's IORING_OP_SOCKET vouches.
    let deferred_file_assignment = probe.supports(IoringOp::Socket);
    if want.links && !deferred_file_assignment {
        println!(
            "{}: no linked open → read chains",
            unsupported(
                "fixed-file assignment at issue time for linked requests",
                "5.18"
            )
        );
    }
    Ok((acceptors, want.links && deferred_file_assignment))
}

/// One shared pool of chunk buffers per thread, sized by the memory budget: a connection
/// holds one only while a read fills it or its bytes go out. True when it is registered.
fn chunk_buffers(ring: &mut Ring, cfg: &FilesConfig<'_>) -> Result<bool> {
    let want = cfg.uring;
    let count = cfg.chunk_buffers;
    // Room in front of each chunk for the response head (HttpConn's head_with_body).
    let new_buffers = || FixedBuffers::new(count, (cfg.http.chunk + HEAD_ROOM) as usize);
    let buffers = new_buffers()?;
    let total = buffers.buf_size() * usize::from(count);
    // The ring owns the chunk buffers either way: registered (READ_FIXED, sends from
    // registered memory) or adopted unregistered (plain READ into the same kind of memory).
    // Registration pins the whole budget resident up front; it pays only where the kernel
    // would otherwise pin pages per operation (O_DIRECT reads, SEND_ZC). Buffered reads and
    // copying sends cost the same either way (bench/files-ab.sh, docs/PERFORMANCE.md), so
    // without those the buffers stay unregistered and a page is resident once used.
    let fixed = if !want.fixed_buffers || !(cfg.http.direct || cfg.http.zerocopy) {
        ring.adopt_buffers(buffers)?;
        false
    } else if !ring.probe()?.supports(IoringOp::ReadFixed) {
        println!(
            "{}: reading with IORING_OP_READ",
            unsupported("IORING_OP_READ_FIXED", "5.1")
        );
        ring.adopt_buffers(buffers)?;
        false
    } else {
        match ring.register_buffers(buffers) {
            Ok(()) => true,
            Err(e) => {
                // The ring keeps the buffers only when the registration succeeds: the same
                // memory is made again, unregistered.
                println!(
                    "registering {} KiB of fixed buffers failed ({e}): \
                     reading with IORING_OP_READ instead of READ_FIXED",
                    total / 1024
                );
                ring.adopt_buffers(new_buffers()?)?;
                false
            }
        }
    };
    Ok(fixed)
}

/// Request heads into a provided buffer ring (Linux 5.19), so that a connection waiting for
/// its next request holds no buffer; false: into a buffer of its own.
fn head_ring(ring: &mut Ring) -> bool {
    match ring.add_provided_buffers(
        HEAD_GROUP,
        HEAD_BUFFERS,
        HEAD_BUFFER_SIZE,
        ProvideMode::Ring,
    ) {
        Ok(_) => true,
        Err(e) => {
            println!("{e}: receiving request heads into a buffer per connection");
            false
        }
    }
}

/// A lazy mapping of the whole of `fd`, when it is the file the cache entry holds (`id`:
/// same device and inode) and not empty.
fn map_entry(
    fd: &OwnedFd,
    id: Option<ringwork_core::filecache::FileId>,
) -> core::result::Result<Arc<FileMap>, Mapped> {
    let stx = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, super::STATX_MASK)
        .map_err(|_| Mapped::Failed)?;
    let seen = file_id(&stx);
    match id {
        Some(id) if (id.dev, id.ino) == (seen.dev, seen.ino) && stx.stx_size > 0 => {
            FileMap::lazy(fd, stx.stx_size as usize)
                .map(Arc::new)
                .map_err(|_| Mapped::Failed)
        }
        _ => Err(Mapped::Failed),
    }
}

/// The lease of chunk buffer `buf`, which a send names (HttpConn never sends from a buffer a
/// read is filling).
fn chunk(c: &Conn, buf: BufIx) -> Result<&Lease> {
    c.chunks[usize::from(buf.0)]
        .as_ref()
        .ok_or_else(|| broken("HttpConn sent from a buffer a read is filling"))
}

/// "FEATURE needs Linux X; this kernel is Y", the same words as the errors.
fn unsupported(feature: &'static str, since: &'static str) -> String {
    Error::unsupported(feature, since).to_string()
}
