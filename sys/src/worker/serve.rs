//! A whole stream server in one call: listeners, one worker thread each, the operator's
//! signals (SIGINT/SIGTERM/SIGQUIT drain; SIGHUP/SIGUSR1/SIGUSR2 are said and ignored), the
//! drain, the summed counters.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use ringwork_core::conn::StreamMachine;
use ringwork_core::protocol::{Limits, Protocol, ProtocolConn};

use super::{run_on, Admission, StreamConfig, StreamStats, WorkerIo};
use crate::backend::{Backend, BackendRequest, UringRefused};
use crate::driver::{stop_notices, StartGate, StopNotice, StopSender};
use crate::error::Error;
use crate::metrics::{Board, Endpoint};
use crate::net::SocketMode;
use crate::signal::{ServerSignals, Signal};

/// What [`Serve::run`] failed at.
#[derive(Debug)]
pub enum ServeError {
    /// Setting up or running a worker (its ring, a syscall).
    Sys(Error),
    /// A listener could not be made (the address is taken, or not this host's).
    Listen(crate::net::ListenError),
    /// A thread could not be started.
    Thread(std::io::Error),
    /// A worker thread panicked.
    Panicked,
    /// io_uring was asked for by name and refused ([`BackendRequest::Uring`]).
    Backend(UringRefused),
    /// The metrics endpoint could not be set up ([`StreamConfig::metrics_listen`]).
    Metrics(String),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Sys(e) => e.fmt(f),
            ServeError::Listen(e) => e.fmt(f),
            ServeError::Thread(e) => write!(f, "cannot start a thread: {e}"),
            ServeError::Panicked => f.write_str("a worker thread panicked"),
            ServeError::Backend(e) => e.fmt(f),
            ServeError::Metrics(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for ServeError {}

impl From<Error> for ServeError {
    fn from(e: Error) -> Self {
        ServeError::Sys(e)
    }
}

/// A stream server: every thread accepts on every address (SO_REUSEPORT listeners, one per
/// thread and address) and runs its connections on its own ring or epoll set.
///
/// ```no_run
/// use ringwork_core::protocol::{Echo, Limits, ProtocolConn};
/// use ringwork_sys::backend::{self, BackendRequest};
/// use ringwork_sys::worker::{Serve, StreamConfig};
///
/// let chosen = backend::choose(BackendRequest::Auto, &ringwork_sys::worker::uring::REQUIRED)?;
/// let listen = ["127.0.0.1:7879".parse()?];
/// let stats = Serve {
///     listen: &listen,
///     threads: 2,
///     backend: chosen.backend,
///     cfg: StreamConfig { name: "echo", ..StreamConfig::default() },
/// }
/// .run(|| ProtocolConn::new(Echo, Limits::default()), |addrs| println!("on {addrs:?}"))?;
/// println!("stats: {stats}"); // after SIGINT or SIGTERM, and the drain
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Serve<'a> {
    /// Where to listen (port 0: the kernel picks one, `listening` is told which).
    pub listen: &'a [SocketAddr],
    /// Worker threads (at least 1).
    pub threads: usize,
    /// The backend every worker runs on.
    pub backend: Backend,
    /// The workers' configuration.
    pub cfg: StreamConfig,
}

impl Serve<'_> {
    /// Serves until SIGINT or SIGTERM, then drains (for `cfg.shutdown_grace` at most) and
    /// returns the workers' summed counters. Started by systemd with listening sockets
    /// (`LISTEN_PID`, `LISTEN_FDS`: [`crate::activation`]), it serves those instead of
    /// binding `listen`. `listening` is called with the bound addresses
    /// once every worker is set up and accepting. A worker that fails stops the others and
    /// its error is returned once they have drained.
    pub fn run<M: StreamMachine>(
        self,
        new_machine: impl Fn() -> M + Clone + Send + 'static,
        listening: impl FnOnce(&[SocketAddr]),
    ) -> Result<StreamStats, ServeError> {
        let threads = self.threads.max(1);
        let name = self.cfg.name;
        // Before any thread starts, so that every thread inherits the blocked mask.
        let signals = ServerSignals::new()?;
        raise_nofile_limit();
        let mode = SocketMode::for_backend(self.backend);
        // Sockets passed in by systemd (socket activation) take the place of `listen`.
        let listeners = match crate::activation::listeners(threads, mode)? {
            Some(passed) => passed,
            None => crate::net::reuseport_listeners(self.listen, threads, mode)
                .map_err(ServeError::Listen)?,
        };
        let (cfg, backend) = (self.cfg, self.backend);
        let admission = Arc::new(Admission::default());
        let board = Arc::new(Board::new(threads));
        // After the listeners: a bad address fails the start, before any worker runs.
        if let Some(addr) = cfg.metrics_listen {
            serve_metrics(name, addr, &board)?;
        }
        let published = Arc::clone(&board);
        let metrics = cfg.metrics_listen.is_some();
        let crew = Crew::start(name, listeners.per_thread, move |start| {
            let io = WorkerIo {
                admission: &admission,
                gate: start.gate,
                live: metrics.then(|| published.slot(start.index)),
            };
            run_on(
                backend,
                &cfg,
                start.listeners,
                start.stop,
                io,
                new_machine.clone(),
            )
        })?;
        // No worker accepts before every one is set up, and `listening` waits for them all.
        if crew.wait_open() {
            listening(&listeners.bound);
        }
        crew.stop_on(signals, name)?;
        let mut total = StreamStats::default();
        let mut failure = None;
        for worker in crew.join() {
            match worker {
                Ok(Ok(stats)) => total += stats,
                Ok(Err(e)) => failure = Some(ServeError::Sys(e)),
                Err(_) => failure = Some(ServeError::Panicked),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }
}

/// A stream server set up with defaults, for a protocol of your own: the listen addresses,
/// the threads (one per CPU unless told), the backend (io_uring, or epoll where io_uring is
/// refused, with one line saying why) and the workers' configuration; [`Server::run_protocol`]
/// runs a [`Protocol`] per connection, [`Server::run`] any [`StreamMachine`]. Everything
/// [`Serve`] does comes with it: SO_REUSEPORT listeners per thread, the accept back-off when
/// descriptors run out, SIGINT/SIGTERM with a graceful drain, the summed counters.
///
/// ```no_run
/// use ringwork_core::protocol::{Output, Protocol};
/// use ringwork_sys::worker::Server;
///
/// /// Answers every chunk of bytes with its length.
/// struct Count;
/// impl Protocol for Count {
///     fn on_data(&mut self, input: &[u8], out: &mut Output<'_>) -> usize {
///         use std::fmt::Write;
///         let _ = writeln!(out, "{}", input.len());
///         input.len()
///     }
/// }
///
/// let stats = Server::new("count")
///     .listen("127.0.0.1:7000".parse()?)
///     .threads(2)
///     .run_protocol(|| Count, |addrs| println!("listening on {addrs:?}"))?;
/// println!("stats: {stats}"); // after SIGINT or SIGTERM, and the drain
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
#[must_use = "a server does nothing until it is run"]
pub struct Server {
    listen: Vec<SocketAddr>,
    threads: usize,
    backend: BackendRequest,
    cfg: StreamConfig,
    limits: Limits,
}

impl Server {
    /// A server called `name` (in front of every line it prints), with no address yet.
    pub fn new(name: &'static str) -> Self {
        Self {
            listen: Vec::new(),
            threads: std::thread::available_parallelism().map_or(1, usize::from),
            backend: BackendRequest::Auto,
            cfg: StreamConfig {
                name,
                ..StreamConfig::default()
            },
            limits: Limits::default(),
        }
    }

    /// Listens on `addr` too (port 0: the kernel picks one; `listening` is told which).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen.push(addr);
        self
    }

    /// Worker threads (at least 1; default: one per CPU this process may run on).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The backend (default [`BackendRequest::Auto`]).
    pub fn backend(mut self, backend: BackendRequest) -> Self {
        self.backend = backend;
        self
    }

    /// The workers' configuration (buffers, connection limit, drain, io_uring options); the
    /// name given to [`Server::new`] is kept.
    pub fn config(mut self, cfg: StreamConfig) -> Self {
        self.cfg = StreamConfig {
            name: self.cfg.name,
            ..cfg
        };
        self
    }

    /// Serves live counters in Prometheus' text format at `http://ADDR/metrics`
    /// ([`StreamConfig::metrics_listen`]; default: off).
    pub fn metrics_listen(mut self, addr: SocketAddr) -> Self {
        self.cfg.metrics_listen = Some(addr);
        self
    }

    /// Each [`ProtocolConn`]'s limits for [`Server::run_protocol`] (water marks, input,
    /// idle timeout).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Serves a [`ProtocolConn`] per connection, its protocol from `new_protocol`, until
    /// SIGINT or SIGTERM and the drain; see [`Serve::run`].
    pub fn run_protocol<P: Protocol + 'static>(
        self,
        new_protocol: impl Fn() -> P + Clone + Send + 'static,
        listening: impl FnOnce(&[SocketAddr]),
    ) -> Result<StreamStats, ServeError> {
        let limits = self.limits;
        self.run(move || ProtocolConn::new(new_protocol(), limits), listening)
    }

    /// Serves a machine per connection from `new_machine`; see [`Serve::run`].
    pub fn run<M: StreamMachine>(
        self,
        new_machine: impl Fn() -> M + Clone + Send + 'static,
        listening: impl FnOnce(&[SocketAddr]),
    ) -> Result<StreamStats, ServeError> {
        let chosen = crate::backend::choose(self.backend, &super::uring::REQUIRED)
            .map_err(ServeError::Backend)?;
        if let Some(note) = chosen.note() {
            eprintln!("{}: {note}", self.cfg.name);
        }
        Serve {
            listen: &self.listen,
            threads: self.threads,
            backend: chosen.backend,
            cfg: self.cfg,
        }
        .run(new_machine, listening)
    }
}

/// What a worker thread of a [`Crew`] starts with.
pub struct WorkerStart<'a> {
    /// The worker's number, from 0.
    pub index: usize,
    /// Its listeners, one per address.
    pub listeners: Vec<OwnedFd>,
    /// Its side of the stop notice.
    pub stop: StopNotice,
    /// Where it meets the others after set-up, before its first accept.
    pub gate: &'a StartGate,
}

/// Worker threads that meet at a start gate and stop on one notice: a server's threads,
/// whatever each runs. A worker that fails (or panics) releases the others from the gate
/// and gives the stop notice, so that the process drains instead of serving half its
/// threads, or waiting for one that is gone.
pub struct Crew<T> {
    workers: Vec<JoinHandle<T>>,
    stop: Arc<StopSender>,
    gate: Arc<StartGate>,
}

impl<R: Send + 'static, E: Send + 'static> Crew<Result<R, E>> {
    /// One thread per entry of `per_thread` (its listeners), named `NAME-i`, each running
    /// `work`.
    pub fn start(
        name: &str,
        per_thread: Vec<Vec<OwnedFd>>,
        work: impl Fn(WorkerStart<'_>) -> Result<R, E> + Clone + Send + 'static,
    ) -> Result<Self, ServeError> {
        let (stop, notices) = stop_notices(per_thread.len())?;
        let stop = Arc::new(stop);
        let gate = Arc::new(StartGate::new(per_thread.len()));
        let mut workers = Vec::with_capacity(per_thread.len());
        for (index, (listeners, notice)) in per_thread.into_iter().zip(notices).enumerate() {
            let (stop, gate, work) = (Arc::clone(&stop), Arc::clone(&gate), work.clone());
            let worker = std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || {
                    // However the worker ends (an error, a panic), the others do not wait for
                    // it at the gate (once open, this changes nothing).
                    let _gate = gate.exit_guard();
                    let result = work(WorkerStart {
                        index,
                        listeners,
                        stop: notice,
                        gate: &gate,
                    });
                    if result.is_err() {
                        // The others would serve on, and the join would wait forever.
                        stop.notify();
                    }
                    result
                })
                .map_err(ServeError::Thread)?;
            workers.push(worker);
        }
        Ok(Self {
            workers,
            stop,
            gate,
        })
    }
}

impl<T> Crew<T> {
    /// Waits until every worker is set up (true), or one has failed (false).
    pub fn wait_open(&self) -> bool {
        self.gate.wait_open()
    }

    /// Relays SIGINT/SIGTERM/SIGQUIT (blocked in every thread since `signals` was made) as the
    /// stop notice, from a thread of its own that ends with the process; says so on stderr
    /// behind `name`. SIGHUP, SIGUSR1 and SIGUSR2 are said and ignored: a stream server has
    /// no log to reopen and nothing to reload.
    pub fn stop_on(&self, signals: ServerSignals, name: &'static str) -> Result<(), ServeError> {
        self.stop_on_with(signals, name, move |signal| {
            eprintln!("{name}: {signal}: ignored (nothing to reopen or reload)");
        })
    }

    /// As [`Crew::stop_on`], with `other` called (on the signal thread) for each SIGHUP,
    /// SIGUSR1 and SIGUSR2, before and during the drain.
    pub fn stop_on_with(
        &self,
        signals: ServerSignals,
        name: &'static str,
        mut other: impl FnMut(Signal) + Send + 'static,
    ) -> Result<(), ServeError> {
        let stop = Arc::clone(&self.stop);
        std::thread::Builder::new()
            .name(format!("{name}-signals"))
            .spawn(move || {
                let mut stopping = false;
                while let Ok(signal) = signals.wait() {
                    match signal {
                        Signal::Stop(_) if !stopping => {
                            eprintln!("{name}: {signal}: stopping");
                            stopping = true;
                            stop.notify();
                        }
                        // A second stop signal during the drain changes nothing.
                        Signal::Stop(_) => {}
                        _ => other(signal),
                    }
                }
            })
            .map(drop)
            .map_err(ServeError::Thread)
    }

    /// Waits for every worker to end; their results in order (`Err`: it panicked).
    pub fn join(self) -> Vec<std::thread::Result<T>> {
        self.workers.into_iter().map(JoinHandle::join).collect()
    }
}

/// Binds the metrics endpoint at `addr`, says where on standard output, and serves the
/// stream counters the workers publish on `board`.
fn serve_metrics(name: &str, addr: SocketAddr, board: &Arc<Board>) -> Result<(), ServeError> {
    let endpoint = Endpoint::bind(addr).map_err(ServeError::Metrics)?;
    println!(
        "{name}: metrics on http://{}/metrics",
        endpoint.local_addr()
    );
    let (board, prefix) = (Arc::clone(board), super::live::prefix(name));
    endpoint
        .spawn(name, move |out| {
            super::live::render_stream(&mut board.sum(), &prefix, out)
        })
        .map_err(ServeError::Metrics)
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit: each connection is a descriptor.
fn raise_nofile_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    lim.current = lim.maximum;
    let _ = setrlimit(Resource::Nofile, lim);
}
