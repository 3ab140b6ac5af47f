//! ringwork-files: an HTTP/1.1 static file server.
//!
//! Every protocol decision is `ringwork_core::httpconn::HttpConn`'s; this binary parses the
//! command line, binds the listeners (one per thread, SO_REUSEPORT) and runs one of two
//! drivers that perform the operations HttpConn describes: io_uring ([`uring`]) or epoll
//! ([`epoll`]).
#![forbid(unsafe_code)]

mod accesslog;
mod epoll;
mod rules;
mod uring;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use ringwork_core::file::Alignment;
use ringwork_core::filecache::{CacheConfig, FileId};
use ringwork_core::http::Limits;
use ringwork_core::httpconn::{Config, FileInfo, FileKind, Time};
use ringwork_sys::backend::{Backend, BackendRequest};
use ringwork_sys::driver::StartGate;
use ringwork_sys::net::SocketMode;
use ringwork_sys::worker::{run_engine, Admission, Crew, Engine, LoopConfig, WorkerIo};
use rustix::fd::OwnedFd;
use rustix::fs::{FileType, OFlags, ResolveFlags, Statx, StatxFlags};

/// Serve a directory over HTTP/1.1 (GET, HEAD, single ranges, keep-alive).
#[derive(Parser, Debug, Clone)]
#[command(name = "ringwork-files", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port and prints it); give it again for more
    /// addresses (IPv4 and IPv6 side by side: an IPv6 listener is IPV6_V6ONLY). Every thread
    /// accepts on every address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: Vec<SocketAddr>,
    /// Worker threads, each with its own listener (SO_REUSEPORT) and ring (default: one per
    /// CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// Open files with O_DIRECT where the file system allows it (STATX_DIOALIGN); off by
    /// default (reads go through the page cache).
    #[arg(long)]
    direct: bool,
    /// I/O backend.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Bytes per file read: the size of each chunk buffer. A response streams through at most
    /// two; a connection holds them only while it sends a file.
    #[arg(long, default_value_t = 65536)]
    chunk: u32,
    /// io_uring: memory for chunk buffers per thread, in MiB: a ceiling, resident only as
    /// used and given back a second after a burst (registered up front with --direct or
    /// --zerocopy; plain reads when RLIMIT_MEMLOCK refuses it). When every buffer is in use,
    /// reads wait their turn.
    #[arg(long, default_value_t = 32)]
    buffer_memory: u32,
    /// Open files each thread keeps open (with their stat) for the requests that follow,
    /// least recently used first out; 0 turns the cache off (every request stats, opens and
    /// closes its file).
    #[arg(long, default_value_t = 1000, value_name = "FILES")]
    open_file_cache: u32,
    /// How long a cached file is served without looking at its path again, in milliseconds:
    /// a file replaced, deleted, rewritten in place or turned into a symlink, or created where
    /// a request found none, is seen once this has passed. Until then a file rewritten in
    /// place goes out with its old length (its old bytes, when they are kept in memory; else
    /// the new bytes cut to the old length, or a response that ends early, the connection
    /// closed, where the file shrank): deploy by writing a new file and renaming it over the
    /// old one. nginx's `open_file_cache_valid`.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    open_file_cache_valid_ms: u64,
    /// A cached file no request has used for this many milliseconds is closed, so that a
    /// deleted file's space comes back even if nobody asks for it again; 0: kept until evicted.
    /// nginx's `open_file_cache inactive=`.
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    open_file_cache_inactive_ms: u64,
    /// Memory per thread, in MiB, for the bytes of cached files that fit in one chunk: such
    /// a file is then sent from memory, with no read. 0 keeps none.
    #[arg(long, default_value_t = 16, value_name = "MIB")]
    file_cache_memory: u32,
    /// Drop a connection whose request head is not complete after this many milliseconds.
    #[arg(long, default_value_t = 10_000)]
    header_timeout_ms: u64,
    /// Drop an idle keep-alive connection after this many milliseconds.
    #[arg(long, default_value_t = 60_000)]
    idle_timeout_ms: u64,
    /// On SIGTERM, SIGINT or SIGQUIT, how long responses in flight may take to finish (new connections are
    /// refused at once); connections still open after this are closed, then the server exits.
    #[arg(long, default_value_t = 5_000)]
    shutdown_grace_ms: u64,
    /// Most connections per thread; at that many the server stops accepting until one closes
    /// (the listen backlog holds new ones). Default: what RLIMIT_NOFILE allows, shared among
    /// the threads.
    #[arg(long)]
    max_conns: Option<u32>,
    /// io_uring: submission queue entries per ring, a power of two up to 16384 (the
    /// completion queue gets four times as many). Connections wait for room when a burst
    /// fills it; nothing is lost.
    #[arg(long, default_value_t = 1024)]
    sq_entries: u32,
    /// io_uring: kernel-side submission polling (IORING_SETUP_SQPOLL) with this idle time in
    /// ms before the poller sleeps (`--sqpoll` alone: 10 ms; off by default). Without
    /// DEFER_TASKRUN (the kernel refuses the pair). When the kernel refuses SQPOLL the server
    /// exits with the reason.
    #[arg(long, value_name = "IDLE_MS", num_args = 0..=1, default_missing_value = "10", require_equals = true)]
    sqpoll: Option<u32>,
    /// io_uring, with `--sqpoll`: CPU to pin each SQPOLL poller to (IORING_SETUP_SQ_AFF).
    /// Default: none, and the poller may run on any CPU.
    #[arg(long, value_name = "CPU", requires = "sqpoll")]
    sqpoll_cpu: Option<u32>,
    /// io_uring: send file chunks with IORING_OP_SEND_ZC (Linux 6.0) straight from the
    /// registered chunk buffer, with IORING_SEND_ZC_REPORT_USAGE (6.2); a buffer is refilled
    /// only after its notification. Off by default. The `stats:` line at shutdown says how
    /// often the kernel copied anyway (always, on loopback).
    #[arg(long)]
    zerocopy: bool,
    /// io_uring: turn features off, forcing their fallbacks (comma-separated; default: none,
    /// every feature the kernel has is used). A disabled feature wins over the flag that asks
    /// for it (`--sqpoll`, `--zerocopy`).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "FEATURE[,FEATURE]"
    )]
    disable: Vec<Feature>,
    /// Serve precompressed siblings: `FILE.br` or `FILE.gz` beside FILE, when the request's
    /// Accept-Encoding takes that coding (nginx's gzip_static / brotli_static); every file
    /// answer says `Vary: Accept-Encoding`. No compression on the fly. `false`: never.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    precompressed: bool,
    /// Send file bodies after their first chunk straight from the page cache, instead of
    /// reading them into a chunk buffer and sending that (nginx's `sendfile`): sendfile(2)
    /// on the epoll backend; on io_uring, a send from a mapping of the cached file, of the
    /// pages already in memory (the others are read as before), so uncached responses
    /// (`--open-file-cache 0`) go through chunk buffers there. Not with `--direct` or
    /// `--zerocopy`. `false`: never.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    sendfile: bool,
    /// Access log in nginx's combined format: a file (appended to), `-` for standard output,
    /// or `off`. Lines are written in batches, once per turn of a worker's loop; times are UTC.
    /// SIGUSR1 (and SIGHUP) reopen the file: rename it, then signal (logrotate's
    /// `postrotate`).
    #[arg(long, value_name = "PATH|-|off", default_value = "off")]
    access_log: accesslog::Destination,
    /// Add a header to file responses (200, 206, 304) whose path matches GLOB, as
    /// `GLOB: Name: value` (`'*.js: Access-Control-Allow-Origin: *'`); give it again for
    /// more. GLOB is matched against the path from the root (`/assets/app.js`): `*` matches
    /// any run of characters, `/` included, `?` one. Every matching rule adds its header.
    /// Default: none.
    #[arg(long = "header", value_name = "GLOB: NAME: VALUE")]
    headers: Vec<String>,
    /// Cache lifetime of file responses whose path matches GLOB, as `GLOB=DURATION`
    /// (`'*.css=7d'`; units s, m, h, d, w, y; none: seconds): `Cache-Control: max-age` and
    /// `Expires`. Of the matching rules, the last given wins. Default: none.
    #[arg(long = "expires", value_name = "GLOB=DURATION")]
    expires: Vec<String>,
    /// Answer a 404 or 403 with this file from the root, sent with that status
    /// (`404=/404.html`); when the page is missing, the plain answer. Default: none.
    #[arg(long = "error-page", value_name = "CODE=/PATH")]
    error_pages: Vec<String>,
    /// Answer a path that names nothing with this file and 200 (a single-page
    /// application's `/index.html`). Default: none (404).
    #[arg(long, value_name = "/PATH")]
    fallback: Option<String>,
    /// More rules from FILE, one per line: `header GLOB: Name: value`, `expires
    /// GLOB=DURATION`, `error-page CODE=/PATH`, `fallback /PATH` (`#` comments). Read at start
    /// and again on SIGHUP (connections accepted after it get the new rules; a file that
    /// does not parse leaves the old ones). Flags' rules come first and are not reloaded.
    /// Default: none.
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// Directory to serve.
    #[arg(default_value = ".")]
    root: PathBuf,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum BackendArg {
    /// io_uring where this process may use it, else epoll (one line on stderr says why).
    Auto,
    /// io_uring, or exit naming why not: openat2/statx/read/send through the ring.
    Uring,
    /// epoll (edge-triggered) with nonblocking syscalls.
    Epoll,
}

/// How the io_uring backend sets up its rings and which of its features it uses.
#[derive(Clone, Copy, Debug)]
struct UringConfig {
    sq_entries: u32,
    /// SQPOLL, when asked for (and not disabled).
    sqpoll: Option<ringwork_sys::SqPoll>,
    /// How completion work reaches the worker (falling back while the kernel refuses).
    task_run: ringwork_sys::TaskRun,
    /// Kernel features left unused so that their fallbacks run (`--disable cancel-fd`).
    legacy: ringwork_sys::LegacyFeatures,
    features: Features,
}

impl Default for UringConfig {
    fn default() -> Self {
        Self {
            sq_entries: 1024,
            sqpoll: None,
            task_run: ringwork_sys::TaskRun::Defer,
            legacy: ringwork_sys::LegacyFeatures::default(),
            features: Features::default(),
        }
    }
}

/// An io_uring feature `--disable` turns off, forcing its fallback path (for tests, and for
/// kernels where the feature misbehaves: PITFALLS.md, "Kernels differ, and have bugs in the
/// edges"). The names are ringwork-echo's where
/// they apply.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Feature {
    /// Multishot accept (Linux 5.19): single-shot accept, re-armed after each connection.
    MultishotAccept,
    /// Registered files: openat2 into a plain descriptor (O_CLOEXEC), reads and close by fd.
    FixedFiles,
    /// Registered buffers (used with --direct or --zerocopy): IORING_OP_READ instead of
    /// READ_FIXED, SEND_ZC without IORING_RECVSEND_FIXED_BUF.
    FixedBuffers,
    /// SQPOLL: no kernel poller even with `--sqpoll`.
    Sqpoll,
    /// SINGLE_ISSUER | DEFER_TASKRUN (Linux 6.1): COOP_TASKRUN instead (or a plain ring with
    /// `coop-taskrun` disabled too).
    DeferTaskrun,
    /// SINGLE_ISSUER | COOP_TASKRUN (Linux 5.19), the fallback from DEFER_TASKRUN: a plain
    /// ring instead.
    CoopTaskrun,
    /// SEND_ZC: plain sends even with `--zerocopy`.
    SendZc,
    /// Linked OPENAT2 → first READ chains (IOSQE_IO_LINK): the read is submitted after the
    /// open's completion instead.
    Links,
    /// ringwork-echo's; refused here (ringwork-files receives request heads with plain recv).
    #[value(hide = true)]
    MultishotRecv,
    /// Provided buffer ring for request heads (Linux 5.19): each connection receives into a
    /// buffer of its own, which it holds while it waits for its next request.
    PbufRing,
    /// Cancel by descriptor (IORING_ASYNC_CANCEL_FD, Linux 5.19): a closing connection's
    /// receive and send are ended by shutdown(2) instead, as on older kernels.
    CancelFd,
}

/// Which io_uring features the backend uses (each probed; `--disable` forces the fallback).
#[derive(Clone, Copy, Debug)]
struct Features {
    multishot_accept: bool,
    fixed_files: bool,
    fixed_buffers: bool,
    links: bool,
    pbuf_ring: bool,
}

impl Default for Features {
    fn default() -> Self {
        Self {
            multishot_accept: true,
            fixed_files: true,
            fixed_buffers: true,
            links: true,
            pbuf_ring: true,
        }
    }
}

/// What every worker thread shares.
struct Shared {
    root: OwnedFd,
    /// `--access-log`, unless off.
    access_log: Option<accesslog::Sink>,
    /// The response rules in force (reloaded on SIGHUP).
    rules: rules::RuleSet,
    cfg: Config,
    max_conns: u32,
    /// io_uring: chunk buffers in each worker's pool (`--buffer-memory` / `--chunk`).
    chunk_buffers: u16,
    uring: UringConfig,
    /// Each worker's open-file cache.
    cache: CacheConfig,
    /// The drain's grace period (`--shutdown-grace-ms`).
    shutdown_grace: Duration,
    start: Instant,
    stats: Stats,
}

/// Counters the workers add to, printed as one `stats:` line at shutdown.
#[derive(Default)]
struct Stats {
    /// SEND_ZC notifications harvested.
    zc_notifs: AtomicU64,
    /// Notifications saying the kernel copied anyway (IORING_NOTIF_USAGE_ZC_COPIED).
    zc_copied: AtomicU64,
    /// io_uring_enter calls.
    enters: AtomicU64,
    /// Times the CQ was seen overflowed into the kernel's backlog (IORING_SQ_CQ_OVERFLOW).
    cq_overflows: AtomicU64,
    /// io_uring_enter calls refused with EBUSY and retried after reaping.
    busy_retries: AtomicU64,
    /// Reads linked behind an open that failed, completed with ECANCELED (broken chains).
    link_cancels: AtomicU64,
    /// io_uring: reads that waited for a chunk buffer from the pool.
    chunk_waits: AtomicU64,
    /// io_uring: head receives that found the provided buffer ring empty and waited.
    head_waits: AtomicU64,
    /// Requests whose file came from the open-file cache without a stat.
    cache_hits: AtomicU64,
    /// Stats that found a cached file unchanged.
    cache_revalidated: AtomicU64,
    /// Files opened into the cache.
    cache_opened: AtomicU64,
    /// Cached files dropped because their path changed or vanished.
    cache_invalidated: AtomicU64,
    /// Cached files closed to make room.
    cache_evicted: AtomicU64,
    /// Stats answered from a remembered absence (a missing precompressed sibling, mostly).
    cache_absent: AtomicU64,
    /// Cached files closed for being unused for `--open-file-cache-inactive-ms`.
    cache_expired: AtomicU64,
    /// Reads answered from a cached file's bytes in memory.
    body_hits: AtomicU64,
    /// Body sends straight from the file (`--sendfile`), EAGAIN retries included.
    file_sends: AtomicU64,
    /// io_uring: sends from the file declined because its next page was not in memory
    /// (that chunk was read instead).
    file_cold: AtomicU64,
    /// Completions a connection refused as impossible in its state (a bug; each is said on
    /// stderr).
    refused: AtomicU64,
}

impl Stats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn line(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "stats: enters={} cq_overflows={} busy_retries={} link_cancels={} chunk_waits={} head_waits={} zc_notifs={} zc_copied={} \
             cache_hits={} cache_revalidated={} cache_opened={} cache_invalidated={} cache_evicted={} cache_absent={} cache_expired={} body_hits={} file_sends={} file_cold={} refused={}",
            get(&self.enters),
            get(&self.cq_overflows),
            get(&self.busy_retries),
            get(&self.link_cancels),
            get(&self.chunk_waits),
            get(&self.head_waits),
            get(&self.zc_notifs),
            get(&self.zc_copied),
            get(&self.cache_hits),
            get(&self.cache_revalidated),
            get(&self.cache_opened),
            get(&self.cache_invalidated),
            get(&self.cache_evicted),
            get(&self.cache_absent),
            get(&self.cache_expired),
            get(&self.body_hits),
            get(&self.file_sends),
            get(&self.file_cold),
            get(&self.refused),
        )
    }

    /// Adds what a worker's file service and its open-file cache counted.
    fn add_service(&self, svc: &ringwork_core::filesvc::FileService) {
        let (c, s) = (svc.cache_stats(), svc.stats());
        Self::add(&self.cache_hits, c.hits);
        Self::add(&self.cache_revalidated, c.revalidated);
        Self::add(&self.cache_opened, c.opened);
        Self::add(&self.cache_invalidated, c.invalidated);
        Self::add(&self.cache_evicted, c.evicted);
        Self::add(&self.cache_absent, c.absent_hits);
        Self::add(&self.cache_expired, c.expired);
        Self::add(&self.body_hits, s.body_hits);
        Self::add(&self.chunk_waits, s.chunk_waits);
        Self::add(&self.head_waits, s.head_waits);
    }
}

/// What became of a completion reported to a connection through its checked door
/// (`HttpConn::on_event`): one that cannot happen in its state (a bug, here or in the kernel)
/// is refused, said on stderr and counted, and the connection goes on unchanged.
fn checked(shared: &Shared, r: Result<(), ringwork_core::conn::ConnError>) {
    if let Err(e) = r {
        eprintln!("ringwork-files: {e}");
        Stats::add(&shared.stats.refused, 1);
    }
}

/// What a worker's engine fails with: a message for stderr.
#[derive(Debug)]
struct Failure(String);

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure(s)
    }
}

impl From<ringwork_sys::Error> for Failure {
    fn from(e: ringwork_sys::Error) -> Self {
        Failure(e.to_string())
    }
}

/// Runs one worker's `engine` (io_uring or epoll) on the worker loop every Ringwork server
/// shares (`ringwork_sys::worker::run_engine`): the connection table, admission (per
/// thread: `--max-conns` is per thread), the wait, ticks, the stop and the drain.
fn serve_worker<E: Engine<Error = Failure>>(
    shared: &Shared,
    engine: E,
    gate: &StartGate,
) -> Result<(), String> {
    let slots = shared.max_conns as usize;
    let cfg = LoopConfig {
        name: "ringwork-files",
        slots,
        max_conns: slots,
        shutdown_grace: shared.shutdown_grace,
        // HttpConn's deadlines are on the workers' clock (`Shared::now`).
        epoch: shared.start,
    };
    let admission = Admission::default();
    let io = WorkerIo {
        admission: &admission,
        gate,
    };
    run_engine(&cfg, engine, io).map(|_| ()).map_err(|e| e.0)
}

impl Shared {
    fn now(&self) -> Time {
        Time {
            mono_ms: self.start.elapsed().as_millis() as u64,
            unix_secs: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// The statx fields HttpConn needs.
fn file_info(stx: &Statx) -> FileInfo {
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

/// What both drivers ask statx for: what HttpConn needs, and the inode for the cache.
const STATX_MASK: StatxFlags = StatxFlags::TYPE
    .union(StatxFlags::SIZE)
    .union(StatxFlags::MTIME)
    .union(StatxFlags::INO)
    .union(StatxFlags::DIOALIGN);

/// What identifies the file a statx describes, and its version, for the open-file cache.
fn file_id(stx: &Statx) -> FileId {
    let t = stx.stx_mtime;
    FileId {
        dev: u64::from(stx.stx_dev_major) << 32 | u64::from(stx.stx_dev_minor),
        ino: stx.stx_ino,
        mtime_ns: (t.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(u64::from(t.tv_nsec)),
    }
}

/// The open flags and resolve flags for serving a file: read-only, beneath the root.
fn open_flags(direct: bool) -> (OFlags, ResolveFlags) {
    let mut flags = OFlags::RDONLY | OFlags::CLOEXEC;
    if direct {
        flags |= OFlags::DIRECT;
    }
    (flags, ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS)
}

/// Says once per thread whether `--direct` takes effect, so a person knows which path served.
fn note_direct(said: &mut bool, requested: bool, direct: bool) {
    if requested && !*said {
        *said = true;
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

/// Most `--listen` addresses: each is a listener per thread, and a worker's acceptors are
/// numbered with a u16 in their tokens.
const MAX_LISTEN: usize = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringwork-files: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The thread count, once the values no flag parser checks are in range.
fn threads(args: &Args) -> Result<usize, String> {
    if args.chunk == 0 || args.chunk > 1 << 24 {
        return Err("--chunk must be between 1 and 16777216 bytes".into());
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    if args.buffer_memory == 0 {
        return Err("--buffer-memory must be at least 1 MiB".into());
    }
    Ok(threads)
}

/// Each worker's open-file cache.
fn cache_config(args: &Args, entries: u32) -> CacheConfig {
    CacheConfig {
        entries,
        valid_ms: args.open_file_cache_valid_ms,
        inactive_ms: args.open_file_cache_inactive_ms,
        body_budget: args.file_cache_memory as usize * 1024 * 1024,
        // A kept body is sent the way a first chunk is: it must fit in one.
        body_max: args.chunk,
        max_path: Limits::default().max_target_len + "/index.html".len(),
    }
}

fn run(args: Args) -> Result<(), String> {
    let threads = threads(&args)?;
    let backend = choose_backend(&args)?;
    let sizing = Sizing::of(&args, backend, threads);
    check_flags(&args, backend)?;
    let root_path = std::fs::canonicalize(&args.root)
        .map_err(|e| format!("cannot serve {}: {e}", args.root.display()))?;
    let root = rustix::fs::open(
        &root_path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| format!("cannot open {} as a directory: {e}", root_path.display()))?;
    // Before any thread starts, so that every thread inherits the blocked mask.
    let signals = ringwork_sys::signal::ServerSignals::new().map_err(|e| e.to_string())?;

    // One SO_REUSEPORT listener per thread and address, as ringwork-echo makes them.
    if args.listen.len() > MAX_LISTEN {
        return Err(format!("--listen may be given at most {MAX_LISTEN} times"));
    }
    let listeners = ringwork_sys::net::reuseport_listeners(
        &args.listen,
        threads,
        SocketMode::for_backend(backend),
    )
    .map_err(|e| e.to_string())?;
    let access_log = accesslog::Sink::open(&args.access_log)?;
    let rules = rules::RuleSet::load(&rules::RuleFlags {
        headers: args.headers.clone(),
        expires: args.expires.clone(),
        error_pages: args.error_pages.clone(),
        fallback: args.fallback.clone(),
        file: args.rules.clone(),
    })?;
    let shared = Arc::new(Shared {
        root,
        rules,
        cfg: http_config(&args, access_log.is_some()),
        access_log,
        max_conns: sizing.max_conns,
        chunk_buffers: sizing.chunk_buffers,
        uring: uring_config(&args),
        cache: cache_config(&args, sizing.cache_entries),
        shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
        start: Instant::now(),
        stats: Stats::default(),
    });

    println!(
        "{} backend, {} thread(s), {}-byte chunks, kernel {}",
        backend.name(),
        threads,
        args.chunk,
        ringwork_sys::kernel_release()
    );

    let crew = {
        let shared = Arc::clone(&shared);
        Crew::start("files", listeners.per_thread, move |start| match backend {
            Backend::Uring => uring::run(&shared, start),
            Backend::Epoll => epoll::run(&shared, start),
        })
        .map_err(|e| e.to_string())?
    };
    // Every worker set up (or one failed, and says why when joined).
    let serving = crew.wait_open();
    if serving {
        // The last line of startup, and exactly this shape: scripts and tests wait for it (one
        // `http://ADDR/` per address, space-separated).
        let urls: Vec<String> = listeners
            .bound
            .iter()
            .map(|a| format!("http://{a}/"))
            .collect();
        println!(
            "ringwork-files serving {}, listening on {}",
            root_path.display(),
            urls.join(" ")
        );
        let _ = std::io::stdout().flush();
    }
    {
        let shared = Arc::clone(&shared);
        crew.stop_on_with(signals, "ringwork-files", move |signal| {
            operator_signal(&shared, signal)
        })
        .map_err(|e| e.to_string())?;
    }
    let mut failure = None;
    for w in crew.join() {
        match w {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("a worker thread panicked".into()),
        }
    }
    let log_dropped = shared
        .access_log
        .as_ref()
        .map_or(0, accesslog::Sink::dropped);
    // Counters of a server that never served would only hide the error below them.
    if serving {
        println!("{} log_dropped={log_dropped}", shared.stats.line());
    }
    match failure {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// SIGUSR1 reopens the access log; SIGHUP reopens it too and reloads the rules file;
/// SIGUSR2 is said and ignored. Each says on stderr what it did (the stop signals are the
/// crew's).
fn operator_signal(shared: &Shared, signal: ringwork_sys::signal::Signal) {
    use ringwork_sys::signal::Signal;
    let reopen = || match shared.access_log.as_ref().map(accesslog::Sink::reopen) {
        Some(Ok(Some(path))) => eprintln!(
            "ringwork-files: {signal}: access log reopened ({})",
            path.display()
        ),
        Some(Ok(None)) | None => {}
        Some(Err(e)) => eprintln!("ringwork-files: {signal}: {e}; the old log stays in use"),
    };
    match signal {
        Signal::User1 => reopen(),
        Signal::Hangup => {
            reopen();
            match shared.rules.reload() {
                Ok(Some(file)) => eprintln!(
                    "ringwork-files: {signal}: rules reloaded from {} (for connections \
                     accepted from now on)",
                    file.display()
                ),
                Ok(None) => {}
                Err(e) => eprintln!("ringwork-files: {signal}: {e}; the old rules stay"),
            }
        }
        // Stop signals are the crew's and never come here.
        Signal::User2 | Signal::Stop(_) => {
            eprintln!("ringwork-files: {signal}: ignored");
        }
    }
}

/// How many connections, cached files and chunk buffers a worker may have, from the flags
/// and what RLIMIT_NOFILE allows.
struct Sizing {
    cache_entries: u32,
    max_conns: u32,
    chunk_buffers: u16,
}

impl Sizing {
    fn of(args: &Args, backend: Backend, threads: usize) -> Self {
        // Each connection is a descriptor (two while it sends a file without registered files).
        let nofile = raise_nofile_limit();
        // Token sub-indexes name cache entries (16 bits); cached files take at most a quarter of
        // what RLIMIT_NOFILE allows. They count against it either way: as descriptors (epoll, or
        // io_uring without registered files: every thread's), or as slots of each ring's
        // registered file table, which the kernel sizes within RLIMIT_NOFILE beside the
        // connections' slots. Out of descriptors, the cache gives up the files no request uses.
        let cache_fds = backend == Backend::Epoll || args.disable.contains(&Feature::FixedFiles);
        let cache_entries = args.open_file_cache.min(u32::from(u16::MAX)).min(
            (nofile / 4 / if cache_fds { threads as u64 } else { 1 }).min(u64::from(u16::MAX))
                as u32,
        );
        let held = u64::from(cache_entries) * if cache_fds { threads as u64 } else { 1 };
        let max_conns = match args.max_conns {
            Some(n) => n.max(1),
            None => {
                let n = default_max_conns(nofile.saturating_sub(held), threads);
                if n < LOW_MAX_CONNS {
                    eprintln!(
                        "ringwork-files: RLIMIT_NOFILE is {nofile}: at most {n} connections per \
                         thread ({threads} threads); raise the limit (ulimit -n, systemd's \
                         LimitNOFILE=) or set --max-conns"
                    );
                }
                n
            }
        };
        // Chunk buffers are page-rounded (O_DIRECT alignment); at least two, at most what a
        // registered-buffer index holds.
        // Each buffer also has room for the response head in front of its chunk.
        let chunk_bytes = (u64::from(args.chunk) + u64::from(ringwork_core::httpconn::HEAD_ROOM))
            .div_ceil(4096)
            * 4096;
        let chunk_buffers = (u64::from(args.buffer_memory) * 1024 * 1024 / chunk_bytes)
            .clamp(2, u64::from(u16::MAX)) as u16;
        Self {
            cache_entries,
            max_conns,
            chunk_buffers,
        }
    }
}

/// Flags that cannot go together, or not on `backend`.
fn check_flags(args: &Args, backend: Backend) -> Result<(), String> {
    if !args.sq_entries.is_power_of_two() || args.sq_entries > 16384 {
        return Err("--sq-entries must be a power of two from 1 to 16384".into());
    }
    if backend == Backend::Epoll && args.sqpoll.is_some() {
        return Err("--sqpoll applies to --backend uring only".into());
    }
    if backend == Backend::Epoll && args.zerocopy {
        return Err("--zerocopy applies to --backend uring only".into());
    }
    if backend == Backend::Epoll && !args.disable.is_empty() {
        return Err("--disable applies to --backend uring only".into());
    }
    for (feature, name, why) in [(
        Feature::MultishotRecv,
        "multishot-recv",
        "it receives request heads with single-shot IORING_OP_RECV",
    )] {
        if args.disable.contains(&feature) {
            return Err(format!(
                "--disable {name}: ringwork-files does not use {name} ({why}); \
                 features it can disable: multishot-accept, fixed-files, fixed-buffers, \
                 sqpoll, defer-taskrun, coop-taskrun, send-zc, links, pbuf-ring, cancel-fd"
            ));
        }
    }
    Ok(())
}

/// How the io_uring backend sets up its rings (a disabled feature wins over the flag that
/// asks for it).
fn uring_config(args: &Args) -> UringConfig {
    let disabled = |f| args.disable.contains(&f);
    UringConfig {
        sq_entries: args.sq_entries,
        sqpoll: args
            .sqpoll
            .filter(|_| !disabled(Feature::Sqpoll))
            .map(|idle_ms| ringwork_sys::SqPoll {
                idle_ms,
                cpu: args.sqpoll_cpu,
            }),
        task_run: ringwork_sys::TaskRun::allowed(
            !disabled(Feature::DeferTaskrun),
            !disabled(Feature::CoopTaskrun),
        ),
        legacy: ringwork_sys::LegacyFeatures {
            no_cancel_fd: disabled(Feature::CancelFd),
            ..Default::default()
        },
        features: Features {
            multishot_accept: !disabled(Feature::MultishotAccept),
            fixed_files: !disabled(Feature::FixedFiles),
            fixed_buffers: !disabled(Feature::FixedBuffers),
            links: !disabled(Feature::Links),
            pbuf_ring: !disabled(Feature::PbufRing),
        },
    }
}

/// What every connection's HttpConn runs with.
fn http_config(args: &Args, access_log: bool) -> Config {
    let zerocopy = args.zerocopy && !args.disable.contains(&Feature::SendZc);
    Config {
        limits: Limits::default(),
        chunk: args.chunk,
        header_timeout_ms: args.header_timeout_ms,
        idle_timeout_ms: args.idle_timeout_ms,
        direct: args.direct,
        zerocopy,
        // The io_uring driver turns it on where it can chain (registered files).
        link_open_read: false,
        // Both drivers send the head and the first chunk at once.
        head_with_body: true,
        precompressed: args.precompressed,
        access_log,
        // Not with O_DIRECT or SEND_ZC (HttpConn would ignore it; the features line says
        // what is in use). The io_uring driver keeps it where it can map cached files.
        file_send: args.sendfile && !args.direct && !zerocopy,
    }
}

/// The backend `--backend` asks for, io_uring probed (with what the io_uring backend cannot
/// do without) unless epoll was named; on `auto`, the fallback is printed with its reason. A
/// flag only io_uring has is an error on epoll, named or fallen back to.
fn choose_backend(args: &Args) -> Result<Backend, String> {
    let request = match args.backend {
        BackendArg::Auto => BackendRequest::Auto,
        BackendArg::Uring => BackendRequest::Uring,
        BackendArg::Epoll => BackendRequest::Epoll,
    };
    let chosen =
        ringwork_sys::backend::choose(request, &uring::REQUIRED).map_err(|e| e.to_string())?;
    if let Some(note) = chosen.note() {
        let uring_only = [
            ("--sqpoll", args.sqpoll.is_some()),
            ("--zerocopy", args.zerocopy),
            ("--disable", !args.disable.is_empty()),
        ];
        if let Some((flag, _)) = uring_only.iter().find(|(_, given)| *given) {
            return Err(format!("{flag} needs io_uring: {note}"));
        }
        eprintln!("ringwork-files: {note}");
    }
    Ok(chosen.backend)
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit; returns the limit in force.
fn raise_nofile_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    lim.current = lim.maximum;
    let _ = setrlimit(Resource::Nofile, lim);
    getrlimit(Resource::Nofile).current.unwrap_or(1 << 20)
}

/// Below this many connections per thread the default `--max-conns` is worth a warning: a few
/// idle keep-alive clients would hold the server.
const LOW_MAX_CONNS: u32 = 256;

/// Connections per thread the descriptor limit allows, keeping some for the server itself
/// (stdio, the root, the access log, and per thread its listeners, ring or epoll set, stop
/// notice) and at most what a connection table holds. Under a small limit the reserve shrinks
/// to a quarter of it rather than leaving the connections next to nothing.
fn default_max_conns(nofile: u64, threads: usize) -> u32 {
    let reserved = (16 + 8 * threads as u64).min(nofile / 4);
    let per_thread = nofile.saturating_sub(reserved) / threads as u64;
    per_thread.clamp(1, 1 << 20) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small descriptor limit still leaves most of itself to connections; a large one keeps
    /// the full reserve; the default never reaches 0.
    #[test]
    fn the_default_connection_limit_follows_the_descriptor_limit() {
        // 64 descriptors, 16 of them for cached files, two threads: 18 connections each, where
        // a fixed reserve of 64 left one.
        assert_eq!(default_max_conns(48, 2), 18);
        assert_eq!(default_max_conns(20_000 - 1_000, 2), (19_000 - 32) / 2);
        assert_eq!(default_max_conns(0, 4), 1);
        assert!(default_max_conns(48, 2) < LOW_MAX_CONNS, "this one warns");
    }
}
