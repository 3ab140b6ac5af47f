//! File engines: core's file service ([`FileService`]) performed on the worker loop, once
//! per backend. A server built on `ringwork_core::filesvc` (ringwork-files is one) gives a
//! [`FilesConfig`] and its [`FileHooks`] (an access log, counters) and runs [`serve`] on
//! each worker thread; everything between HttpConn's operations and the kernel is here:
//!
//! - [`uring`]: STATX, OPENAT2 into registered-file slots, linked open → read chains,
//!   READ(_FIXED) into the ring's chunk buffers, SEND / SEND_ZC, sends from a cached file's
//!   mapping (FIXED_FD_INSTALL), request heads into a provided buffer ring.
//! - [`epoll`]: the same operations as nonblocking syscalls (statx, openat2, pread,
//!   sendfile) on an edge-triggered epoll set.
//!
//! Nothing here decides anything about files or HTTP: the file service says what to do next,
//! and every completion goes back to it or to the connection's HttpConn through its checked
//! door ([`HttpConn::on_event`]).

use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringwork_core::conn::ConnError;
use ringwork_core::file::Alignment;
use ringwork_core::filecache::{CacheConfig, FileId};
use ringwork_core::filesvc::{FileConn, FileService};
use ringwork_core::httpconn::{Config, FileInfo, FileKind, HttpConn, Time};
use ringwork_core::token::Token;
use rustix::fd::AsFd;
use rustix::fs::{FileType, OFlags, ResolveFlags, Statx, StatxFlags};

use crate::backend::Backend;
use crate::driver::ServerRingConfig;
use crate::error::Result;
use crate::metrics::Board;
use crate::ring::{Cqe, LegacyFeatures, Ring, TaskRun};
use crate::worker::{run_engine, Admission, Engine, LoopConfig, WorkerIo, WorkerStart};
use crate::Error;

pub mod epoll;
pub mod live;
pub mod uring;

/// What a file engine serves and how: the same for every worker of a server.
#[derive(Clone, Copy, Debug)]
pub struct FilesConfig<'a> {
    /// The server's name, in front of the lines it prints.
    pub name: &'static str,
    /// The directory served: every path is opened beneath it (RESOLVE_BENEATH).
    pub root: BorrowedFd<'a>,
    /// HttpConn's settings (the engine turns off what its backend cannot do).
    pub http: Config,
    /// The open-file cache of each worker.
    pub cache: CacheConfig,
    /// Most connections per worker.
    pub max_conns: u32,
    /// io_uring: chunk buffers in each worker's pool (epoll makes them as reads need them).
    pub chunk_buffers: u16,
    /// io_uring: how the ring is set up and which features it uses.
    pub uring: UringSetup,
    /// Graceful drain: how long connections may finish after the stop notice.
    pub shutdown_grace: Duration,
    /// The workers' clock starts here (HttpConn's deadlines are on it).
    pub epoch: Instant,
    /// Where each worker publishes its counters for the metrics endpoint (its slot by its
    /// index); None: nowhere.
    pub live: Option<&'a Board>,
    /// HTTPS: which listeners speak TLS, and the configuration their sessions get.
    #[cfg(feature = "tls")]
    pub tls: Option<FilesTls<'a>>,
}

/// The TLS listeners of a file engine ([`FilesConfig::tls`]).
#[cfg(feature = "tls")]
#[derive(Clone, Copy, Debug)]
pub struct FilesTls<'a> {
    /// What every new TLS connection's session is made with (its certificate can be
    /// replaced while the server runs: [`crate::tls::TlsConfig::reload`]).
    pub config: &'a crate::tls::TlsConfig,
    /// A worker's listeners from this index on speak TLS (the plain ones come first).
    pub first_listener: u16,
}

impl FilesConfig<'_> {
    /// The time now, on the workers' clock, with the wall clock's seconds (for dates).
    pub fn now(&self) -> Time {
        let since = self.epoch.elapsed();
        Time {
            mono_ms: since.as_millis() as u64,
            mono_us: since.as_micros() as u64,
            unix_secs: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// A new connection's side of the file service, accepted from listener `listener`:
    /// its HttpConn (made from `http`, then the hooks'), plain or behind a TLS session. A TLS
    /// connection's HttpConn sends nothing straight from files or with SEND_ZC: every byte
    /// it sends is encrypted.
    pub fn file_conn<H: FileHooks>(
        &self,
        http: Config,
        hooks: &mut H,
        listener: u16,
        now: Time,
    ) -> FileConn {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.filter(|t| listener >= t.first_listener) {
            let http = Config {
                file_send: false,
                zerocopy: false,
                ..http
            };
            let conn = hooks.new_conn(HttpConn::new(http, now));
            let session = ringwork_core::tls::TlsSession::new(
                tls.config.server_config(),
                now.mono_ms,
                http.header_timeout_ms,
            )
            // Guard: `TlsConfig::load` built this configuration and made a session with it.
            .expect("a session of a checked configuration");
            return FileConn::with_tls(conn, session).expect("no plaintext sends");
        }
        let _ = listener;
        FileConn::new(hooks.new_conn(HttpConn::new(http, now)))
    }

    /// How often the worker does its periodic work (the cache's inactive entries, the chunk
    /// buffers' trim): a tenth of the shortest timeout, between 5 ms and 100 ms.
    pub fn tick_interval(&self) -> Duration {
        let shortest = self.http.header_timeout_ms.min(self.http.idle_timeout_ms);
        Duration::from_millis((shortest / 10).clamp(5, 100))
    }
}

/// How a file engine's ring is set up, and which io_uring features it uses (each is probed,
/// and falls back where the kernel lacks it; `false` forces the fallback).
#[derive(Clone, Copy, Debug)]
pub struct UringSetup {
    /// The ring itself: its size, SQPOLL, the task-run mode, kernel features left unused.
    pub ring: ServerRingConfig,
    /// Multishot accept (else single-shot, re-armed per connection).
    pub multishot_accept: bool,
    /// A registered file table (files opened into slots; else plain descriptors).
    pub fixed_files: bool,
    /// Registered chunk buffers where they pay (O_DIRECT, SEND_ZC).
    pub fixed_buffers: bool,
    /// Linked open → read chains.
    pub links: bool,
    /// Request heads into a provided buffer ring (else a buffer per connection).
    pub pbuf_ring: bool,
    /// A miss's stat answered at once where the path is in the kernel's lookup cache
    /// (openat2 RESOLVE_CACHED, Linux 5.12, then statx of the file it opened), instead of
    /// IORING_OP_STATX on io-wq.
    pub inline_lookups: bool,
    /// How a body past its first chunk goes straight from a cached file's pages (when
    /// HttpConn's `file_send` is on).
    pub file_send: UringFileSend,
}

/// How the io_uring engine sends a body straight from the page cache: of the pages
/// mincore(2) finds resident only, either way (the rest is read into chunk buffers on
/// io-wq), so that the loop never waits on the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UringFileSend {
    /// IORING_OP_SEND from a shared mapping of the cached file: one copy, page cache to
    /// socket, in the ring.
    #[default]
    Mapping,
    /// sendfile(2) on this thread (the socket nonblocking for the call), nginx's path: the
    /// socket takes references to the page cache's pages, no copy on the send side; a full
    /// socket waits for IORING_OP_POLL_ADD (POLLOUT).
    Sendfile,
}

impl Default for UringSetup {
    fn default() -> Self {
        Self {
            ring: ServerRingConfig {
                sq_entries: 1024,
                sqpoll: None,
                task_run: TaskRun::Defer,
                legacy: LegacyFeatures::default(),
            },
            multishot_accept: true,
            fixed_files: true,
            fixed_buffers: true,
            links: true,
            pbuf_ring: true,
            inline_lookups: true,
            file_send: UringFileSend::Mapping,
        }
    }
}

/// A worker's counters of what its engine did, handed to [`FileHooks::finish`] (the file
/// service's own counters are in [`FileService::stats`] and [`FileService::cache_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStats {
    /// io_uring_enter calls.
    pub enters: u64,
    /// Times the kernel reported dropped completions.
    pub cq_overflows: u64,
    /// Submissions retried after EBUSY.
    pub busy_retries: u64,
    /// Linked reads cancelled because their open failed.
    pub link_cancels: u64,
    /// SEND_ZC notifications.
    pub zc_notifs: u64,
    /// Of those, the ones where the kernel copied after all.
    pub zc_copied: u64,
    /// Sends straight from a file (a mapping on io_uring, sendfile(2) on epoll).
    pub file_sends: u64,
    /// Sends from a mapping declined because the range was not in the page cache.
    pub file_cold: u64,
    /// Completions HttpConn refused (a driver bug, printed on stderr as it happened).
    pub refused: u64,
    /// Misses whose stat (and open) was answered at once from the kernel's lookup cache,
    /// with no thread hop.
    pub inline_lookups: u64,
    /// Bytes received (request heads, and what a closing connection discards).
    pub bytes_received: u64,
    /// Bytes the kernel took from sends (heads and bodies).
    pub bytes_sent: u64,
    /// Entries in the open-file cache, as of the last tick.
    pub cache_entries: u64,
    /// io_uring with [`UringFileSend::Sendfile`]: sends from a file that waited for room in
    /// the socket (IORING_OP_POLL_ADD for POLLOUT).
    pub file_send_waits: u64,
}

impl FileStats {
    /// Counts and prints a completion HttpConn refused (`r`).
    fn checked(&mut self, name: &str, r: core::result::Result<(), ConnError>) {
        if let Err(e) = r {
            eprintln!("{name}: {e}");
            self.refused += 1;
        }
    }
}

/// What a server adds to a file engine. Every method has a default that does nothing.
pub trait FileHooks {
    /// Whether [`FileHooks::answered`] wants each connection's peer address (looked up once,
    /// when the connection is accepted).
    fn wants_peer(&self) -> bool {
        false
    }

    /// A new connection's HttpConn, made from the engine's settings: the hooks may add
    /// what is the server's (response rules, say).
    fn new_conn(&mut self, http: HttpConn) -> HttpConn {
        http
    }

    /// The connection (from `peer`) may have answered requests since the last call: its
    /// records are HttpConn's (an access log takes them here). Called after each time the
    /// connection was driven, before it is freed.
    fn answered(&mut self, _peer: Option<IpAddr>, _http: &mut HttpConn) {}

    /// The end of each turn of the loop: `ring` is the worker's on io_uring (operations the
    /// hooks submit go through it, with tokens [`FileHooks::owns`] claims), `None` on epoll.
    /// `stopping`: the loop ends once nothing is in flight and [`FileHooks::busy`] is false.
    fn end_of_turn(&mut self, _ring: Option<&mut Ring>, _stopping: bool) -> Result<()> {
        Ok(())
    }

    /// Whether `token` names an operation the hooks submitted.
    fn owns(&self, _token: &Token) -> bool {
        false
    }

    /// The completion of an operation the hooks submitted.
    fn on_cqe(&mut self, _ring: &mut Ring, _cqe: &Cqe) -> Result<()> {
        Ok(())
    }

    /// An operation of the hooks' is still in flight: the loop does not end yet.
    fn busy(&self) -> bool {
        false
    }

    /// After the loop: the engine's counters and the file service's.
    fn finish(&mut self, _stats: &FileStats, _svc: &FileService) {}
}

/// Runs one worker on `backend` ([`uring`] or [`epoll`]) until the stop notice, then
/// drains: sets up its ring or epoll set, meets the other workers at the start gate, and serves on the one worker loop
/// ([`run_engine`]), each connection's HttpConn made from `cfg.http`.
pub fn serve<H: FileHooks>(
    cfg: &FilesConfig<'_>,
    backend: Backend,
    hooks: H,
    start: WorkerStart<'_>,
) -> Result<()> {
    let (gate, live) = (start.gate, cfg.live.map(|b| b.slot(start.index)));
    match backend {
        Backend::Uring => run(cfg, uring::UringFiles::new(cfg, hooks, start)?, gate, live),
        Backend::Epoll => run(cfg, epoll::EpollFiles::new(cfg, hooks, start)?, gate, live),
    }
}

/// The loop, with one worker's admission (`--max-conns` is per worker).
fn run<E: Engine<Error = Error>>(
    cfg: &FilesConfig<'_>,
    engine: E,
    gate: &crate::driver::StartGate,
    live: Option<&crate::metrics::Slot>,
) -> Result<()> {
    let slots = cfg.max_conns as usize;
    let loop_cfg = LoopConfig {
        name: cfg.name,
        slots,
        max_conns: slots,
        shutdown_grace: cfg.shutdown_grace,
        epoch: cfg.epoch,
    };
    let admission = Admission::default();
    let io = WorkerIo {
        admission: &admission,
        gate,
        live,
    };
    run_engine(&loop_cfg, engine, io).map(|_| ())
}

/// A worker's periodic work on its open-file cache, at the end of a turn: every tick, the
/// entries no request has used for the inactive period are dropped (`last` is when that
/// last ran); `out_of_fds` (the acceptor paused for lack of descriptors, and cached files
/// hold descriptors), the files no request uses are closed so that connections get theirs.
/// The cache's entries are counted then too (`stats.cache_entries`: a scan of the cache, too
/// much for every turn).
fn tidy_cache(
    svc: &mut FileService,
    cfg: &FilesConfig<'_>,
    (last, stats): (&mut u64, &mut FileStats),
    now_ms: u64,
    out_of_fds: bool,
) {
    if out_of_fds {
        svc.evict_unused();
    }
    if now_ms.saturating_sub(*last) >= cfg.tick_interval().as_millis() as u64 {
        *last = now_ms;
        svc.expire(now_ms);
        stats.cache_entries = svc.cache_len() as u64;
    }
}

/// What HttpConn needs of a stat.
pub fn file_info(stx: &Statx) -> FileInfo {
    let kind = match FileType::from_raw_mode(u32::from(stx.stx_mode)) {
        FileType::RegularFile => FileKind::Regular,
        FileType::Directory => FileKind::Directory,
        _ => FileKind::Other,
    };
    let (mem, offset) = (stx.stx_dio_mem_align, stx.stx_dio_offset_align);
    let dio = (mem != 0 && offset != 0 && mem.is_power_of_two() && offset.is_power_of_two())
        .then_some(Alignment { mem, offset });
    FileInfo {
        kind,
        size: stx.stx_size,
        mtime_secs: u64::try_from(stx.stx_mtime.tv_sec).unwrap_or(0),
        dio,
    }
}

/// What a stat asks for.
pub const STATX_MASK: StatxFlags = StatxFlags::TYPE
    .union(StatxFlags::SIZE)
    .union(StatxFlags::MTIME)
    .union(StatxFlags::INO)
    .union(StatxFlags::DIOALIGN);

/// Which file a stat saw (the open-file cache's check that a path still names it).
pub fn file_id(stx: &Statx) -> FileId {
    let t = stx.stx_mtime;
    FileId {
        dev: u64::from(stx.stx_dev_major) << 32 | u64::from(stx.stx_dev_minor),
        ino: stx.stx_ino,
        mtime_ns: (t.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(u64::from(t.tv_nsec)),
    }
}

/// How a file is opened: read-only beneath the root, no magic links (a symlink out of the
/// root fails), O_DIRECT when asked.
fn open_flags(direct: bool) -> (OFlags, ResolveFlags) {
    let mut flags = OFlags::RDONLY | OFlags::CLOEXEC;
    if direct {
        flags |= OFlags::DIRECT;
    }
    (flags, ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS)
}

/// What a worker has said about O_DIRECT, so that it says each once.
#[derive(Default)]
struct DirectNotes {
    used: bool,
    refused: bool,
}

impl DirectNotes {
    /// The first open says whether O_DIRECT (`requested`) is used for it (`direct`).
    fn opening(&mut self, requested: bool, direct: bool) {
        if requested && !self.used {
            self.used = true;
            if direct {
                println!("O_DIRECT in use (statx reports alignments that fit the chunk size)");
            } else {
                println!(
                    "O_DIRECT requested but not used: statx reports no usable O_DIRECT alignment \
                     (STATX_DIOALIGN) for a file, or it does not divide the chunk size; serving buffered"
                );
            }
        }
    }

    /// An O_DIRECT open the file system refused (EINVAL).
    fn refused(&mut self) {
        if !self.refused {
            self.refused = true;
            println!("O_DIRECT open refused by the file system (EINVAL): serving buffered");
        }
    }
}

/// The peer address of `sock`, when it has one.
fn peer_ip(sock: impl AsFd) -> Option<IpAddr> {
    let addr = rustix::net::getpeername(sock).ok()??;
    std::net::SocketAddr::try_from(addr).ok().map(|a| a.ip())
}

/// An engine's bookkeeping found what cannot happen.
fn broken(what: impl Into<String>) -> Error {
    Error::Broken(what.into())
}
