//! ringwork-files: an HTTP/1.1 static file server.
//!
//! Every protocol decision is `ringwork_core::httpconn::HttpConn`'s, every file decision
//! `ringwork_core::filesvc::FileService`'s; this binary parses the command line, binds the
//! listeners (one per thread, SO_REUSEPORT) and runs a worker per thread on one of the two
//! file engines of `ringwork_sys::files` (io_uring or epoll), which perform what those
//! describe. It adds its access log and counters ([`hooks`]).
#![forbid(unsafe_code)]

mod accesslog;
mod hooks;
mod rules;

use ringwork_sys::rustix;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use ringwork_core::filecache::CacheConfig;
use ringwork_core::http::Limits;
use ringwork_core::httpconn::Config;
use ringwork_sys::backend::Backend;
use ringwork_sys::cli::{self, BackendArg, Feature, RingFlags};
use ringwork_sys::files::{self, FileStats, FilesConfig, UringFileSend, UringSetup};
use ringwork_sys::metrics::{Board, Endpoint};
use ringwork_sys::net::SocketMode;
use ringwork_sys::tls::TlsConfig;
use ringwork_sys::worker::Crew;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::OFlags;

/// Serve a directory over HTTP/1.1 (GET, HEAD, single ranges, keep-alive).
#[derive(Parser, Debug, Clone)]
#[command(name = "ringwork-files", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port and prints it); give it again for more
    /// addresses (IPv4 and IPv6 side by side: an IPv6 listener is IPV6_V6ONLY). Every thread
    /// accepts on every address. Not used when systemd passes listening sockets
    /// (socket activation: LISTEN_PID and LISTEN_FDS), which are served instead. Default:
    /// 127.0.0.1:8080, unless `--tls-listen` is given (then only what is asked for).
    #[arg(long)]
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
    /// closes its file). nginx's `open_file_cache max=` (off unless configured there). The
    /// default holds the working set of a site of tens of thousands of pages; it is lowered
    /// to a quarter of RLIMIT_NOFILE (per thread where each thread holds its own descriptors)
    /// (said on stderr when the number was given), since every cached file is a descriptor.
    /// An unused entry costs about 150 bytes; entries unused for
    /// --open-file-cache-inactive-ms are closed. [default: 10000]
    #[arg(long, value_name = "FILES")]
    open_file_cache: Option<u32>,
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
    /// io_uring: send file chunks with IORING_OP_SEND_ZC (Linux 6.0) straight from the
    /// registered chunk buffer, with IORING_SEND_ZC_REPORT_USAGE (6.2); a buffer is refilled
    /// only after its notification. Off by default. The `stats:` line at shutdown says how
    /// often the kernel copied anyway (always, on loopback).
    #[arg(long)]
    zerocopy: bool,
    #[command(flatten)]
    ring: RingFlags,
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
    /// io_uring: how `--sendfile` sends from the page cache, of the pages mincore(2) finds
    /// resident only, either way. `mapping`: IORING_OP_SEND from a shared mapping of the
    /// cached file (one copy, page cache to socket). `sendfile`: sendfile(2) on the worker
    /// thread, the socket nonblocking for the call, IORING_OP_POLL_ADD (POLLOUT) when it is
    /// full (nginx's path: the socket takes page references, no copy on the send side; on
    /// loopback it measured dearer, docs/PERFORMANCE.md).
    #[arg(long, value_enum, default_value_t = FileSendPath::Mapping, value_name = "HOW")]
    file_send: FileSendPath,
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
    /// Serve live counters (connections, requests by status, bytes, the open-file cache, a
    /// request duration histogram) in Prometheus' text format at `http://ADDR/metrics`, from
    /// a thread of their own. Bound by the server itself, under socket activation too (never
    /// taken from LISTEN_FDS). No authentication: bind it to an address only monitoring
    /// reaches. Default: off. Metrics: docs/METRICS.md.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// HTTPS: the certificate chain, PEM, the server's certificate first and then each
    /// intermediate that issued the one before it (RSA, ECDSA or Ed25519 keys). Read and
    /// checked at start: a missing file, one without a certificate, a chain out of order or a
    /// key of another certificate stops the server with a line naming the file. SIGHUP reads
    /// both files again (new handshakes get the new certificate; a bad file keeps the old).
    /// TLS 1.2 and 1.3, ALPN http/1.1, resumption by tickets and session IDs (docs/TLS.md).
    /// Default: none.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// HTTPS: the private key of `--tls-cert`'s first certificate, PEM (PKCS#8, PKCS#1 RSA or
    /// SEC1 EC). Default: none.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// HTTPS: an address to serve TLS on with `--tls-cert` and `--tls-key`, beside the plain
    /// `--listen` ones (none unless given); give it again for more. Bodies on TLS
    /// connections go through chunk buffers (`--file-send` and `--zerocopy` apply to plain
    /// connections only). Not with socket activation. Default: none.
    #[arg(long, value_name = "ADDR", requires = "tls_cert")]
    tls_listen: Vec<SocketAddr>,
    /// Directory to serve.
    #[arg(default_value = ".")]
    root: PathBuf,
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
    uring: UringSetup,
    /// Each worker's open-file cache.
    cache: CacheConfig,
    /// The drain's grace period (`--shutdown-grace-ms`).
    shutdown_grace: Duration,
    start: Instant,
    stats: Stats,
    /// Each worker's counters as published for `--metrics-listen` (None: off).
    board: Option<Board>,
    /// `--tls-cert` and `--tls-key` (reloaded on SIGHUP), for the listeners from
    /// `first_tls_listener` on.
    tls: Option<TlsConfig>,
    first_tls_listener: u16,
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
    /// Misses whose stat and open were answered at once from the kernel's lookup cache.
    inline_lookups: AtomicU64,
    /// io_uring `--file-send sendfile`: sends from the file that waited for room in the
    /// socket (IORING_OP_POLL_ADD).
    file_send_waits: AtomicU64,
    /// TLS handshakes completed, sessions that failed, and connections ended without a
    /// close_notify.
    tls_handshakes: AtomicU64,
    tls_failures: AtomicU64,
    tls_truncated: AtomicU64,
}

impl Stats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn line(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "stats: enters={} cq_overflows={} busy_retries={} link_cancels={} chunk_waits={} head_waits={} zc_notifs={} zc_copied={} \
             cache_hits={} cache_revalidated={} cache_opened={} cache_invalidated={} cache_evicted={} cache_absent={} cache_expired={} body_hits={} file_sends={} file_cold={} refused={} inline_lookups={} file_send_waits={} \
             tls_handshakes={} tls_failures={} tls_truncated={}",
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
            get(&self.inline_lookups),
            get(&self.file_send_waits),
            get(&self.tls_handshakes),
            get(&self.tls_failures),
            get(&self.tls_truncated),
        )
    }

    /// Adds what a worker's file service and its open-file cache counted.
    fn add_files(&self, st: &FileStats) {
        Self::add(&self.enters, st.enters);
        Self::add(&self.cq_overflows, st.cq_overflows);
        Self::add(&self.busy_retries, st.busy_retries);
        Self::add(&self.link_cancels, st.link_cancels);
        Self::add(&self.zc_notifs, st.zc_notifs);
        Self::add(&self.zc_copied, st.zc_copied);
        Self::add(&self.file_sends, st.file_sends);
        Self::add(&self.file_cold, st.file_cold);
        Self::add(&self.refused, st.refused);
        Self::add(&self.inline_lookups, st.inline_lookups);
        Self::add(&self.file_send_waits, st.file_send_waits);
    }

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
        let t = svc.tls_stats();
        Self::add(&self.tls_handshakes, t.handshakes);
        Self::add(&self.tls_failures, t.failures);
        Self::add(&self.tls_truncated, t.truncated);
    }
}

impl Shared {
    /// What the file engines serve and how.
    fn files(&self) -> FilesConfig<'_> {
        FilesConfig {
            name: "ringwork-files",
            root: self.root.as_fd(),
            http: self.cfg,
            cache: self.cache,
            max_conns: self.max_conns,
            chunk_buffers: self.chunk_buffers,
            uring: self.uring,
            shutdown_grace: self.shutdown_grace,
            epoch: self.start,
            live: self.board.as_ref(),
            tls: self.tls.as_ref().map(|config| files::FilesTls {
                config,
                first_listener: self.first_tls_listener,
            }),
        }
    }
}

/// Most `--listen` addresses: each is a listener per thread, and a worker's acceptors are
/// numbered with a u16 in their tokens.
const MAX_LISTEN: usize = 64;

fn main() -> ExitCode {
    cli::exit("ringwork-files", run(Args::parse()))
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

/// `--tls-cert` and `--tls-key`, read and checked: a file that does not pass stops the start
/// with the reason.
fn tls_config(args: &Args) -> Result<Option<TlsConfig>, String> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let files = ringwork_sys::tls::CertFiles {
        cert: cert.clone(),
        key: key.clone(),
    };
    let config = TlsConfig::load(&files).map_err(|e| e.to_string())?;
    if args.tls_listen.is_empty() {
        return Err("--tls-cert and --tls-key need --tls-listen ADDR to serve on".into());
    }
    Ok(Some(config))
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
    let tls = tls_config(&args)?;
    let backend = choose_backend(&args)?;
    let sizing = Sizing::of(&args, backend, threads);
    check_flags(&args, backend)?;
    let (root_path, root) = open_root(&args)?;
    // Before any thread starts, so that every thread inherits the blocked mask.
    let signals = ringwork_sys::signal::ServerSignals::new().map_err(|e| e.to_string())?;
    let listeners = listeners(&args, backend, threads)?;
    // After the listeners (socket activation's descriptors are taken first); a bad address
    // fails the start here.
    let metrics = args.metrics_listen.map(Endpoint::bind).transpose()?;
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
        board: metrics.as_ref().map(|_| Board::new(threads)),
        tls,
        first_tls_listener: listeners.first_tls,
    });
    if let Some(endpoint) = metrics {
        serve_metrics(endpoint, &shared)?;
    }
    println!(
        "{} backend, {} thread(s), {}-byte chunks, kernel {}",
        backend.name(),
        threads,
        args.chunk,
        ringwork_sys::kernel_release()
    );
    if shared.tls.is_some() {
        println!("{}", ringwork_sys::tls::KernelTls::probe().describe());
    }
    let crew = start_workers(&shared, backend, listeners.per_thread)?;
    // Every worker set up (or one failed, and says why when joined).
    let serving = crew.wait_open();
    if serving {
        // The last line of startup, and exactly this shape: scripts and tests wait for it (one
        // `http://ADDR/` per address, space-separated).
        let first_tls = usize::from(listeners.first_tls);
        let urls: Vec<String> = (listeners.bound.iter().enumerate())
            .map(|(i, a)| match i < first_tls {
                true => format!("http://{a}/"),
                false => format!("https://{a}/"),
            })
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
    let failure = crew.join().into_iter().fold(None, |failure, w| match w {
        Ok(Ok(())) => failure,
        Ok(Err(e)) => Some(e),
        Err(_) => Some("a worker thread panicked".to_string()),
    });
    let log_dropped = shared
        .access_log
        .as_ref()
        .map_or(0, accesslog::Sink::dropped);
    // Counters of a server that never served would only hide the error below them.
    if serving {
        println!("{} log_dropped={log_dropped}", shared.stats.line());
    }
    failure.map_or(Ok(()), Err)
}

/// Says where the metrics are served, then serves them from the workers' published
/// counters.
fn serve_metrics(endpoint: Endpoint, shared: &Arc<Shared>) -> Result<(), String> {
    println!(
        "ringwork-files: metrics on http://{}/metrics",
        endpoint.local_addr()
    );
    let shared = Arc::clone(shared);
    endpoint.spawn("ringwork-files", move |out| {
        if let Some(board) = &shared.board {
            files::live::render_files(&mut board.sum(), "ringwork_files_", out);
        }
    })
}

/// The root directory: its canonical path (for the serving line) and a descriptor every
/// path is opened beneath.
fn open_root(args: &Args) -> Result<(PathBuf, OwnedFd), String> {
    let root_path = std::fs::canonicalize(&args.root)
        .map_err(|e| format!("cannot serve {}: {e}", args.root.display()))?;
    let root = rustix::fs::open(
        &root_path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| format!("cannot open {} as a directory: {e}", root_path.display()))?;
    Ok((root_path, root))
}

/// The server's listeners, and from which one on they speak TLS.
struct Bound {
    bound: Vec<SocketAddr>,
    per_thread: Vec<Vec<OwnedFd>>,
    /// `--listen`'s come first, then `--tls-listen`'s.
    first_tls: u16,
}

/// The listeners: the sockets systemd passed in (LISTEN_FDS), or one SO_REUSEPORT listener
/// per thread and `--listen` and `--tls-listen` address, as ringwork-echo makes them.
fn listeners(args: &Args, backend: Backend, threads: usize) -> Result<Bound, String> {
    let mut plain = args.listen.clone();
    if plain.is_empty() && args.tls_listen.is_empty() {
        plain.push(SocketAddr::from(([127, 0, 0, 1], 8080)));
    }
    let all = [&plain[..], &args.tls_listen[..]].concat();
    if all.len() > MAX_LISTEN {
        return Err(format!(
            "--listen and --tls-listen may name at most {MAX_LISTEN} addresses"
        ));
    }
    let mode = SocketMode::for_backend(backend);
    let passed = ringwork_sys::activation::listeners(threads, mode)
        .map_err(|e| format!("socket activation: {e}"))?;
    let (listeners, first_tls) = match passed {
        Some(_) if !args.tls_listen.is_empty() => {
            return Err(
                "--tls-listen cannot be served with socket activation (LISTEN_FDS): \
                        every socket passed in is served as plain HTTP"
                    .into(),
            )
        }
        Some(passed) => (passed, u16::MAX),
        None => (
            ringwork_sys::net::reuseport_listeners(&all, threads, mode)
                .map_err(|e| e.to_string())?,
            plain.len() as u16,
        ),
    };
    Ok(Bound {
        bound: listeners.bound,
        per_thread: listeners.per_thread,
        first_tls,
    })
}

/// One worker thread per listener set, each on the file engine of `backend`.
fn start_workers(
    shared: &Arc<Shared>,
    backend: Backend,
    per_thread: Vec<Vec<OwnedFd>>,
) -> Result<Crew<Result<(), String>>, String> {
    let shared = Arc::clone(shared);
    Crew::start("files", per_thread, move |start| {
        // Accept only once every worker has its ring (`serve` waits at the gate): connections
        // accepted here must not take the descriptors another worker's io_uring_setup needs.
        let hooks = hooks::Hooks::new(&shared);
        files::serve(&shared.files(), backend, hooks, start).map_err(|e| e.to_string())
    })
    .map_err(|e| e.to_string())
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
            if let Some(tls) = &shared.tls {
                match tls.reload() {
                    Ok(()) => eprintln!(
                        "ringwork-files: {signal}: certificate reloaded from {} and {} (for \
                         handshakes from now on)",
                        tls.files().cert.display(),
                        tls.files().key.display()
                    ),
                    Err(e) => eprintln!("ringwork-files: {signal}: {e}; the old certificate stays"),
                }
            }
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
        // io_uring without registered files or with inline lookups: every thread's), or as
        // slots of each ring's
        // registered file table, which the kernel sizes within RLIMIT_NOFILE beside the
        // connections' slots. Out of descriptors, the cache gives up the files no request uses.
        let cache_fds = backend == Backend::Epoll
            || args.ring.disabled(Feature::FixedFiles)
            || !args.ring.disabled(Feature::InlineLookups);
        let asked = args.open_file_cache.unwrap_or(DEFAULT_OPEN_FILE_CACHE);
        let cache_entries = asked.min(u32::from(u16::MAX)).min(
            (nofile / 4 / if cache_fds { threads as u64 } else { 1 }).min(u64::from(u16::MAX))
                as u32,
        );
        if cache_entries < asked && args.open_file_cache.is_some() {
            eprintln!(
                "ringwork-files: RLIMIT_NOFILE is {nofile}: the open-file cache keeps \
                 {cache_entries} files per thread, not {asked} (raise the limit)"
            );
        }
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

/// The io_uring features ringwork-files can `--disable` (it receives request heads with
/// single-shot IORING_OP_RECV, so not multishot-recv).
const USES: [Feature; 11] = [
    Feature::MultishotAccept,
    Feature::FixedFiles,
    Feature::FixedBuffers,
    Feature::Sqpoll,
    Feature::DeferTaskrun,
    Feature::CoopTaskrun,
    Feature::SendZc,
    Feature::Links,
    Feature::PbufRing,
    Feature::CancelFd,
    Feature::InlineLookups,
];

/// Flags that cannot go together, or not on `backend`.
fn check_flags(args: &Args, backend: Backend) -> Result<(), String> {
    if backend == Backend::Epoll && args.zerocopy {
        return Err("--zerocopy applies to --backend uring only".into());
    }
    args.ring.check("ringwork-files", backend, &USES)
}

/// `--file-send`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum FileSendPath {
    /// IORING_OP_SEND from a mapping of the cached file.
    Mapping,
    /// sendfile(2) on the worker thread.
    Sendfile,
}

/// How the io_uring backend sets up its rings (a disabled feature wins over the flag that
/// asks for it).
fn uring_config(args: &Args) -> UringSetup {
    let on = |f| !args.ring.disabled(f);
    UringSetup {
        ring: args.ring.ring_config(),
        multishot_accept: on(Feature::MultishotAccept),
        fixed_files: on(Feature::FixedFiles),
        fixed_buffers: on(Feature::FixedBuffers),
        links: on(Feature::Links),
        pbuf_ring: on(Feature::PbufRing),
        inline_lookups: on(Feature::InlineLookups),
        file_send: match args.file_send {
            FileSendPath::Mapping => UringFileSend::Mapping,
            FileSendPath::Sendfile => UringFileSend::Sendfile,
        },
    }
}

/// What every connection's HttpConn runs with.
fn http_config(args: &Args, access_log: bool) -> Config {
    let zerocopy = args.zerocopy && !args.ring.disabled(Feature::SendZc);
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

/// The backend `--backend` asks for, io_uring probed (with what the io_uring file engine
/// cannot do without) unless epoll was named; on `auto`, the fallback is printed with its
/// reason. A flag only io_uring has is an error on epoll, named or fallen back to.
fn choose_backend(args: &Args) -> Result<Backend, String> {
    let also = [("--zerocopy", args.zerocopy)];
    let required = &files::uring::REQUIRED;
    cli::choose_backend("ringwork-files", args.backend, required, &args.ring, &also)
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit; returns the limit in force.
fn raise_nofile_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    lim.current = lim.maximum;
    let _ = setrlimit(Resource::Nofile, lim);
    getrlimit(Resource::Nofile).current.unwrap_or(1 << 20)
}

/// `--open-file-cache`'s default: enough for the pages a site's visitors keep asking for (the
/// benchmark site's 30,000 files are mostly asked for among their first few thousand under
/// Zipf 1), where nginx's usual `max=1000` makes every other request an open and a close.
const DEFAULT_OPEN_FILE_CACHE: u32 = 10_000;

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
