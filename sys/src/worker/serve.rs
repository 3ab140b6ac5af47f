//! A whole stream server in one call: listeners, one worker thread each, SIGINT/SIGTERM, the
//! drain, the summed counters.

use std::net::SocketAddr;
use std::sync::Arc;

use ringwork_core::conn::StreamMachine;

use super::{run_on, Admission, StreamConfig, StreamStats, WorkerIo};
use crate::backend::Backend;
use crate::driver::{stop_notices, StartGate};
use crate::error::Error;
use crate::signal::ShutdownSignals;

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
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Sys(e) => e.fmt(f),
            ServeError::Listen(e) => e.fmt(f),
            ServeError::Thread(e) => write!(f, "cannot start a thread: {e}"),
            ServeError::Panicked => f.write_str("a worker thread panicked"),
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
/// use ringwork_core::conn::{Config, EchoConn};
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
/// .run(|| EchoConn::new(Config::default()), |addrs| println!("listening on {addrs:?}"))?;
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
    /// returns the workers' summed counters. `listening` is called with the bound addresses
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
        let signals = ShutdownSignals::new()?;
        raise_nofile_limit();
        let nonblocking = self.backend == Backend::Epoll;
        let listeners = crate::net::reuseport_listeners(self.listen, threads, nonblocking)
            .map_err(ServeError::Listen)?;
        let (stop, notices) = stop_notices(threads)?;
        let stop = Arc::new(stop);
        let admission = Arc::new(Admission::default());
        // No worker accepts before every one is set up, and `listening` waits for them all.
        let gate = Arc::new(StartGate::new(threads));
        let mut workers = Vec::with_capacity(threads);
        for (i, (listener, notice)) in listeners.per_thread.into_iter().zip(notices).enumerate() {
            let (admission, gate, stop) =
                (Arc::clone(&admission), Arc::clone(&gate), Arc::clone(&stop));
            let (cfg, backend, new_machine) = (self.cfg, self.backend, new_machine.clone());
            let worker = std::thread::Builder::new()
                .name(format!("{}-{i}", cfg.name))
                .spawn(move || {
                    let _gate = gate.exit_guard();
                    let io = WorkerIo {
                        admission: &admission,
                        gate: &gate,
                    };
                    let result = run_on(backend, &cfg, listener, notice, io, new_machine);
                    if result.is_err() {
                        // The others would serve on, and `run` would wait for them forever.
                        stop.notify();
                    }
                    result
                })
                .map_err(ServeError::Thread)?;
            workers.push(worker);
        }
        if gate.wait_open() {
            listening(&listeners.bound);
        }
        // SIGINT/SIGTERM (blocked in every thread) arrive through the signalfd: one thread
        // waits there and relays them as the stop notice. It ends with the process.
        std::thread::Builder::new()
            .name(format!("{name}-signals"))
            .spawn(move || {
                if let Ok(signo) = signals.wait() {
                    eprintln!("{name}: signal {signo}: stopping");
                    stop.notify();
                }
            })
            .map_err(ServeError::Thread)?;
        let mut total = StreamStats::default();
        let mut failure = None;
        for worker in workers {
            match worker.join() {
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

/// Raises RLIMIT_NOFILE's soft limit to the hard limit: each connection is a descriptor.
fn raise_nofile_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    lim.current = lim.maximum;
    let _ = setrlimit(Resource::Nofile, lim);
}
