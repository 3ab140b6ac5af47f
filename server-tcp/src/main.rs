//! ringwork-echo: a TCP echo server, thread-per-core, on io_uring (or the epoll baseline).
//!
//! `main` parses flags, opens one SO_REUSEPORT listener per worker thread (or takes the
//! sockets systemd passes), starts the workers, and waits for SIGTERM, SIGINT or SIGQUIT on a
//! signalfd (SIGHUP, SIGUSR1 and SIGUSR2 are said and ignored); it then gives every worker the stop notice
//! (`ringwork_sys::driver::stop_notices`), joins them and prints one `stats:` line summed over
//! threads. The connection machine is `ringwork_core::protocol::ProtocolConn` running
//! `Echo`, which sends every received byte back from the buffer it arrived in; each worker is
//! `ringwork_sys::worker`'s loop on the io_uring or epoll backend (`--backend`), which performs
//! the machine's operations, accepts, and drains on the stop notice. What is left here is
//! flags, their checks, and the threads.
//!
//! No `unsafe` here, and no loop: a protocol of your own runs the same way.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use ringwork_core::protocol::{Echo, Limits, ProtocolConn};
use ringwork_sys::backend::Backend;
use ringwork_sys::cli::{self, BackendArg, Feature, RingFlags};
use ringwork_sys::worker::{self, Serve, StreamConfig, UringOptions};

/// How the io_uring backend accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum AcceptMode {
    /// Multishot when the kernel has it (probed), single-shot otherwise.
    Auto,
    /// Always single-shot (the fallback path, forced for testing).
    Single,
}

/// TCP echo server on io_uring, thread-per-core.
#[derive(Parser, Debug)]
#[command(name = "ringwork-echo", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port and prints it); give it again for more
    /// addresses (IPv4 and IPv6 side by side: an IPv6 listener is IPV6_V6ONLY). Every thread
    /// accepts on every address. Not used when systemd passes listening sockets (socket
    /// activation: LISTEN_PID and LISTEN_FDS), which are served instead.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: Vec<SocketAddr>,
    /// Worker threads, each with its own ring and SO_REUSEPORT listener [default: CPUs].
    #[arg(long)]
    threads: Option<usize>,
    /// I/O backend.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Receive buffers per thread (provided buffer ring / epoll pool); a power of two.
    #[arg(long, default_value_t = 1024)]
    buffers: u16,
    /// Size of each receive buffer in bytes.
    #[arg(long, default_value_t = 4096)]
    buffer_size: u32,
    /// Most connections open at once in this process; more are closed as soon as accepted.
    #[arg(long, default_value_t = 20_000)]
    max_conns: usize,
    /// io_uring (epoll ignores it): completions to wait for per io_uring_enter, for at most
    /// `--batch-wait-us`; once that has passed, any one completion ends the wait. 1 waits for
    /// one completion, as a plain loop does. Used only while the load fills half a batch per
    /// wait. Needs IORING_FEAT_MIN_TIMEOUT (Linux 6.12); without it the server says so and
    /// waits for one. Why this default: docs/PERFORMANCE.md, "Batched waits".
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    batch: u32,
    /// io_uring: how long (µs) a wait may hold out for `--batch` completions before any one
    /// completion ends it.
    #[arg(long, default_value_t = DEFAULT_BATCH_WAIT_US)]
    batch_wait_us: u32,
    /// On SIGTERM, SIGINT or SIGQUIT: stop accepting, let connections send back what they
    /// received, and close whatever is still open after this many milliseconds (SIGHUP,
    /// SIGUSR1 and SIGUSR2 are said on stderr and ignored).
    #[arg(long, default_value_t = 3000)]
    shutdown_grace_ms: u64,
    /// io_uring: send with IORING_OP_SEND_ZC (Linux 6.0) and IORING_SEND_ZC_REPORT_USAGE; a
    /// received buffer goes back to the ring only after its notification. Off by default (on
    /// loopback the kernel copies anyway; figures in docs/PERFORMANCE.md).
    #[arg(long)]
    zerocopy: bool,
    /// io_uring: receive bundles (IORING_RECVSEND_BUNDLE, Linux 6.10): one receive completion
    /// may fill several consecutive ring buffers. Off by default (figures in
    /// docs/PERFORMANCE.md). Needs the buffer ring (not with `--disable pbuf-ring`).
    #[arg(long)]
    bundle: bool,
    /// io_uring: incremental buffer consumption (IOU_PBUF_RING_INC, Linux 6.12): each receive
    /// takes only the bytes it needs from the head buffer, so one buffer holds many small
    /// messages (of several connections) and goes back once the kernel has used it up and
    /// every message in it was echoed. Off by default. Not with `--bundle`, `--zerocopy` or
    /// `--disable pbuf-ring`.
    #[arg(long)]
    incremental: bool,
    #[command(flatten)]
    ring: RingFlags,
    /// Serve live counters (connections, receives, bytes, ENOBUFS waits, the ring's own) in
    /// Prometheus' text format at `http://ADDR/metrics`, from a thread of their own. Bound
    /// by the server itself, under socket activation too (never taken from LISTEN_FDS). No
    /// authentication: bind it to an address only monitoring reaches. Default: off.
    /// Metrics: docs/METRICS.md.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// io_uring accept mode (testing aid).
    #[arg(long, value_enum, default_value_t = AcceptMode::Auto, hide = true)]
    accept_mode: AcceptMode,
}

/// The io_uring features ringwork-echo can `--disable` (it opens no files).
const USES: [Feature; 8] = [
    Feature::MultishotAccept,
    Feature::MultishotRecv,
    Feature::SendZc,
    Feature::Sqpoll,
    Feature::DeferTaskrun,
    Feature::CoopTaskrun,
    Feature::PbufRing,
    Feature::CancelFd,
];

/// `--batch` default; the measurements behind it: docs/PERFORMANCE.md, "Batched waits".
const DEFAULT_BATCH: u32 = 16;
/// `--batch-wait-us` default: a fraction of a loopback round trip under load, so that p99
/// does not move (docs/PERFORMANCE.md, "Batched waits").
const DEFAULT_BATCH_WAIT_US: u32 = 50;

fn main() -> ExitCode {
    cli::exit("ringwork-echo", run(Args::parse()))
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if !args.buffers.is_power_of_two() || args.buffers > 1 << 15 {
        return Err("--buffers must be a power of two no larger than 32768".into());
    }
    if args.buffer_size == 0 {
        return Err("--buffer-size must be at least 1".into());
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    // Each address is a listener per thread; a worker numbers its acceptors with a u16.
    const MAX_LISTEN: usize = 64;
    if args.listen.len() > MAX_LISTEN {
        return Err(format!("--listen may be given at most {MAX_LISTEN} times").into());
    }
    let backend = choose_backend(&args)?;

    check_combinations(&args, backend)?;
    let cfg = stream_config(&args);
    let label = match (backend, cfg.uring.sqpoll, cfg.uring.zerocopy) {
        (Backend::Uring, None, false) => "uring",
        (Backend::Uring, Some(_), false) => "uring+sqpoll",
        (Backend::Uring, None, true) => "uring+zerocopy",
        (Backend::Uring, Some(_), true) => "uring+sqpoll+zerocopy",
        (Backend::Epoll, _, _) => "epoll",
    };
    let server = Serve {
        listen: &args.listen,
        threads,
        backend,
        cfg,
    };
    let limits = echo_limits(args.buffer_size);
    let total = server.run(
        move || ProtocolConn::new(Echo, limits),
        // Once every worker is set up: the line means "serving", and the idle fd count and
        // RSS are final. Scripts and tests read the addresses (space-separated) from it.
        |bound| {
            let addrs: Vec<String> = bound.iter().map(ToString::to_string).collect();
            println!(
                "ringwork-echo listening on {} (backend {label}, {threads} threads)",
                addrs.join(" ")
            );
        },
    )?;
    println!("stats: {total}");
    Ok(())
}

/// A connection's limits: receiving pauses while more than 8 buffers' worth of bytes wait to
/// go back (a client that does not read), and resumes at 4. Echo consumes every byte, so
/// no input is kept; no idle timeout (an echo client may be quiet for as long as it likes).
fn echo_limits(buffer_size: u32) -> Limits {
    let buffer = buffer_size as usize;
    Limits {
        high_water: 8 * buffer,
        low_water: 4 * buffer,
        max_input: buffer,
        idle_timeout_ms: None,
        message_timeout_ms: None,
    }
}

/// What each worker runs with, from the flags (a disabled feature wins over the flag that
/// asks for it).
fn stream_config(args: &Args) -> StreamConfig {
    let disabled = |f| args.ring.disabled(f);
    let ring = args.ring.ring_config();
    StreamConfig {
        name: "ringwork-echo",
        buffers: args.buffers,
        buffer_size: args.buffer_size,
        max_conns: args.max_conns,
        shutdown_grace: std::time::Duration::from_millis(args.shutdown_grace_ms),
        metrics_listen: args.metrics_listen,
        uring: UringOptions {
            sq_entries: ring.sq_entries,
            accept: if args.accept_mode == AcceptMode::Single || disabled(Feature::MultishotAccept)
            {
                ringwork_sys::accept::AcceptMode::Single
            } else {
                ringwork_sys::accept::AcceptMode::Multishot
            },
            batch: args.batch.max(1),
            batch_wait: std::time::Duration::from_micros(u64::from(args.batch_wait_us)),
            sqpoll: ring.sqpoll,
            zerocopy: args.zerocopy && !disabled(Feature::SendZc),
            multishot_recv: !disabled(Feature::MultishotRecv),
            task_run: ring.task_run,
            legacy: ring.legacy,
            pbuf_ring: !disabled(Feature::PbufRing),
            bundle: args.bundle,
            incremental: args.incremental,
        },
    }
}

/// Flags that cannot go together, or not on `backend`.
fn check_combinations(args: &Args, backend: Backend) -> Result<(), String> {
    let disabled = |f| args.ring.disabled(f);
    // --batch has a default and epoll ignores it (epoll_wait already returns every ready
    // event); SQPOLL is something an epoll run cannot give, so asking for it is an error
    // (RingFlags::check).
    args.ring.check("ringwork-echo", backend, &USES)?;
    if args.bundle && disabled(Feature::PbufRing) {
        return Err(
            "--bundle needs the provided buffer ring: drop `pbuf-ring` from --disable \
                    (a bundle names only its first buffer; the ring's order says the rest)"
                .into(),
        );
    }
    if args.incremental && (args.bundle || args.zerocopy || disabled(Feature::PbufRing)) {
        return Err(
            "--incremental works alone: not with --bundle (bundles of partly used \
                    buffers), --zerocopy (SEND_ZC notifications are tracked per whole buffer) \
                    or --disable pbuf-ring (it is a buffer ring mode)"
                .into(),
        );
    }
    if backend == Backend::Epoll && (args.bundle || args.incremental) {
        return Err("--bundle and --incremental apply to --backend uring only".into());
    }
    if backend == Backend::Epoll && args.zerocopy {
        return Err("--zerocopy applies to --backend uring only".into());
    }
    Ok(())
}

/// The backend `--backend` asks for, io_uring probed (with what the io_uring backend cannot
/// do without) unless epoll was named; on `auto`, the fallback is printed with its reason. A
/// flag only io_uring has is an error on epoll, named or fallen back to.
fn choose_backend(args: &Args) -> Result<Backend, String> {
    let also = [
        ("--zerocopy", args.zerocopy),
        ("--bundle", args.bundle),
        ("--incremental", args.incremental),
    ];
    let required = &worker::uring::REQUIRED;
    cli::choose_backend("ringwork-echo", args.backend, required, &args.ring, &also)
}
