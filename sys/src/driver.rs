//! The pieces every Ringwork server worker repeats, written once: the ring a server wants
//! with its fallbacks and one features line, the wait (submit, batched wait, timers,
//! harvest), and the stop notice that starts the one shutdown path
//! (`ringwork_core::shutdown::Drain`). The acceptor is [`crate::accept`].
//!
//! The skeleton of a worker loop on these pieces:
//!
//! ```
//! use std::time::Duration;
//! use ringwork_core::token::UserData;
//! use ringwork_sys::driver::{self, FeatureLine, ServerRingConfig, Waiter};
//! use ringwork_sys::TaskRun;
//!
//! let (mut ring, note) = driver::server_ring(ServerRingConfig {
//!     sq_entries: 64,
//!     sqpoll: None,
//!     task_run: TaskRun::Defer,
//!     legacy: Default::default(),
//! })?;
//! if let Some(note) = note {
//!     eprintln!("{note}"); // e.g. DEFER_TASKRUN refused: using COOP_TASKRUN
//! }
//! println!("{}", FeatureLine::new(&ring).with("multishot_accept", true));
//! let (stop, mut notices) = driver::stop_notices(1)?;
//! let notice = notices.pop().expect("one per worker");
//! const STOP: UserData = UserData(1);
//! notice.arm(&mut ring, STOP)?;
//! stop.notify(); // what main does on SIGTERM
//! let mut waiter = Waiter::new(&ring, 16, Duration::from_micros(50));
//! let mut cqes = Vec::new();
//! loop {
//!     waiter.wait(&mut ring, Some(Duration::from_secs(1)))?;
//!     waiter.harvest(&mut ring, &mut cqes);
//!     // ... feed each CQE to its state machine, push what it asks for ...
//!     if cqes.iter().any(|c| c.user_data() == STOP) && notice.given() {
//!         break; // begin the drain (ringwork_core::shutdown::Drain)
//!     }
//! }
//! # Ok::<(), ringwork_sys::Error>(())
//! ```
//!
//! What this module does not do: decide protocol. A server's backend maps its state
//! machine's operations to SQEs and completions back to events; everything else it needs
//! from the kernel side is here or in [`crate::Ring`].

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringwork_core::token::UserData;
use rustix::event::{eventfd, EventfdFlags, PollFlags};
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::io_uring::IoringSetupFlags;

use crate::error::Result;
use crate::op::SafeSqe;
use crate::ring::{Cqe, LegacyFeatures, Ring, RingParams, SqPoll, TaskRun};
use crate::sqe::Target;

/// How a server worker's ring is set up.
#[derive(Clone, Copy, Debug)]
pub struct ServerRingConfig {
    /// SQ entries (a power of two); the CQ gets four times as many, so that bursts of
    /// multishot completions rarely overflow it.
    pub sq_entries: u32,
    /// Kernel-side submission polling, when asked for (no fallback: see
    /// [`RingParams::build_server`]).
    pub sqpoll: Option<SqPoll>,
    /// The best task-run mode allowed ([`TaskRun::allowed`]).
    pub task_run: TaskRun,
    /// Kernel features left unused so that their fallbacks run (a server's `--disable`).
    pub legacy: LegacyFeatures,
}

/// Sets a server worker's ring up ([`RingParams::build_server`]); the second value, when
/// present, says in words which setup flag was refused and what the ring uses instead, for
/// the server to print once.
pub fn server_ring(cfg: ServerRingConfig) -> Result<(Ring, Option<String>)> {
    let (ring, refused) = RingParams::new(cfg.sq_entries)
        .cq_entries(cfg.sq_entries * 4)
        .legacy_features(cfg.legacy)
        .build_server(cfg.sqpoll, cfg.task_run)?;
    let note = refused.map(|e| {
        let got = if ring.setup_flags().contains(IoringSetupFlags::COOP_TASKRUN) {
            "COOP_TASKRUN"
        } else {
            "a plain ring"
        };
        format!("{e}: using {got}")
    });
    Ok((ring, note))
}

/// The one `io_uring:` line a worker prints: the ring's sizes and setup flags, then each
/// feature the server chose (`name=on|off`), in the order added.
pub struct FeatureLine {
    line: String,
}

impl FeatureLine {
    /// Starts with what the ring itself says: `sq`, `cq`, `defer_taskrun`, `coop_taskrun`,
    /// `sqpoll`, `cancel_fd` (cancel by descriptor, else shutdown: [`cancel_socket_ops`]).
    pub fn new(ring: &Ring) -> Self {
        let flags = ring.setup_flags();
        let mut line = format!(
            "io_uring: sq={} cq={}",
            ring.sq_entries(),
            ring.cq_entries()
        );
        let mut me = Self {
            line: String::new(),
        };
        for (name, on) in [
            (
                "defer_taskrun",
                flags.contains(IoringSetupFlags::DEFER_TASKRUN),
            ),
            (
                "coop_taskrun",
                flags.contains(IoringSetupFlags::COOP_TASKRUN),
            ),
            ("sqpoll", flags.contains(IoringSetupFlags::SQPOLL)),
            ("cancel_fd", ring.can_cancel_fd()),
        ] {
            let _ = write!(line, " {name}={}", on_off(on));
        }
        me.line = line;
        me
    }

    /// Adds `name=on` or `name=off`.
    #[must_use]
    pub fn with(mut self, name: &str, on: bool) -> Self {
        let _ = write!(self.line, " {name}={}", on_off(on));
        self
    }
}

impl fmt::Display for FeatureLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line)
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// The SQE that ends every operation in flight on socket `sock`, for a connection that is
/// closing: its completion, under whatever `user_data` the caller gives it, comes once the
/// kernel has been asked, and the operations it ended complete on their own (the caller waits
/// for them before the close, as cancel-then-close requires).
///
/// Linux 5.19 and later: one IORING_OP_ASYNC_CANCEL with IORING_ASYNC_CANCEL_FD | _ALL (they
/// complete with ECANCELED). Before 5.19 no cancel takes a descriptor, and a cancel by
/// `user_data` finds only the operations whose exact `user_data` the caller can name (a
/// SEND_ZC's carries its tracker slot; a send it forgets stays stuck on a peer that never
/// reads). There shutdown(2) with SHUT_RDWR ends every receive and send waiting on the socket
/// (a receive completes with 0, a send with EPIPE, as if the peer had gone), and the SQE is a
/// NOP. [`LegacyFeatures::no_cancel_fd`] forces that path on newer kernels, for tests.
pub fn cancel_socket_ops(ring: &Ring, sock: BorrowedFd<'_>) -> SafeSqe {
    if ring.can_cancel_fd() {
        return SafeSqe::cancel_fd(Target::Fd(sock.as_raw_fd()));
    }
    // ENOTCONN: never connected, or already shut down both ways; nothing waits on it then
    // that a shutdown would wake.
    let _ = rustix::net::shutdown(sock, rustix::net::Shutdown::Both);
    SafeSqe::nop()
}

/// How long a wait may last when nothing else bounds it: only there so that the kernel has a
/// timeout for batched waits (see [`Waiter::wait`]); a wait that times out just loops.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// The loop's wait: submit what is queued and wait for completions, batching under load.
///
/// With `batch > 1` and a kernel that honours a minimum wait (IORING_FEAT_MIN_TIMEOUT, Linux
/// 6.12), a wait that follows a harvest of at least half a batch waits up to `batch_wait` for
/// a whole batch, saving enters under load; at low load it waits for the first completion
/// (a min-wait timer there only adds work). With SQPOLL and completions already posted, it
/// submits without waiting (free unless the poller sleeps).
#[derive(Clone, Copy, Debug)]
pub struct Waiter {
    batch: u32,
    batch_wait: Duration,
    sqpoll: bool,
    last_harvest: u32,
}

impl Waiter {
    /// A waiter for `ring`; `batch` of 1 turns batching off. A batch the kernel cannot bound
    /// (no IORING_FEAT_MIN_TIMEOUT) is turned off too: see [`Waiter::batch`].
    pub fn new(ring: &Ring, batch: u32, batch_wait: Duration) -> Self {
        let batch = if ring.has_min_timeout() {
            batch.max(1)
        } else {
            1
        };
        Self {
            batch,
            batch_wait,
            sqpoll: ring.setup_flags().contains(IoringSetupFlags::SQPOLL),
            last_harvest: 0,
        }
    }

    /// Completions a batched wait asks for (1: no batching).
    pub fn batch(&self) -> u32 {
        self.batch
    }

    /// Submits and waits for work, at most `timeout` when given (a timer the caller must
    /// wake for: a tick, a drain deadline, an accept back-off).
    pub fn wait(&mut self, ring: &mut Ring, timeout: Option<Duration>) -> Result<()> {
        if self.sqpoll && ring.ready() > 0 {
            ring.submit()?;
        } else if self.batch > 1 && self.last_harvest >= self.batch / 2 {
            let timeout = Some(timeout.map_or(IDLE_WAIT, |t| t.min(IDLE_WAIT)));
            ring.submit_and_wait_min(self.batch, self.batch_wait, timeout)?;
        } else {
            match timeout {
                Some(t) => ring.submit_and_wait_timeout(1, t)?,
                None => ring.submit_and_wait(1)?,
            };
        }
        Ok(())
    }

    /// Moves every ready completion into `into` (cleared first); returns how many.
    pub fn harvest(&mut self, ring: &mut Ring, into: &mut Vec<Cqe>) -> usize {
        into.clear();
        into.extend(ring.completions());
        self.last_harvest = into.len() as u32;
        into.len()
    }
}

/// The main thread's side of the stop notice: [`StopSender::notify`] wakes every worker once.
pub struct StopSender {
    flag: Arc<AtomicBool>,
    fds: Vec<OwnedFd>,
}

/// A worker's side of the stop notice: an eventfd, polled by the ring (or registered with
/// epoll), and a flag that says the notice was given (so that a spurious wake-up is told
/// apart).
pub struct StopNotice {
    flag: Arc<AtomicBool>,
    fd: OwnedFd,
}

/// One notice per worker, and the sender that gives them all.
pub fn stop_notices(workers: usize) -> Result<(StopSender, Vec<StopNotice>)> {
    let flag = Arc::new(AtomicBool::new(false));
    let mut fds = Vec::with_capacity(workers);
    let mut notices = Vec::with_capacity(workers);
    for _ in 0..workers {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(crate::Error::syscall("eventfd"))?;
        let worker = rustix::io::fcntl_dupfd_cloexec(&fd, 0)
            .map_err(crate::Error::syscall("dup eventfd"))?;
        fds.push(fd);
        notices.push(StopNotice {
            flag: Arc::clone(&flag),
            fd: worker,
        });
    }
    Ok((StopSender { flag, fds }, notices))
}

impl StopSender {
    /// Tells every worker to stop (idempotent).
    pub fn notify(&self) {
        // Release: pairs with the Acquire in `StopNotice::given`.
        self.flag.store(true, Ordering::Release);
        for fd in &self.fds {
            // A full counter (never, for one write) or a worker already gone: nothing to do.
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        }
    }
}

impl StopNotice {
    /// True once [`StopSender::notify`] was called.
    pub fn given(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Arms a one-shot poll of the notice's eventfd on `ring` (IORING_OP_POLL_ADD, no user
    /// memory); its completion, with `ud`, means "look at [`StopNotice::given`]".
    pub fn arm(&self, ring: &mut Ring, ud: UserData) -> Result<()> {
        let target = Target::Fd(self.fd.as_raw_fd());
        ring.push_safe(SafeSqe::poll_add(target, PollFlags::IN).user_data(ud))
    }
}

impl AsFd for StopNotice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_line_names_ring_flags_then_features() {
        let ring = RingParams::new(8).build().unwrap();
        let line = FeatureLine::new(&ring)
            .with("multishot_accept", true)
            .with("zerocopy", false)
            .to_string();
        assert_eq!(
            line,
            "io_uring: sq=8 cq=16 defer_taskrun=off coop_taskrun=off sqpoll=off \
             cancel_fd=on multishot_accept=on zerocopy=off"
        );
    }

    /// A receive waiting on a socket whose peer says nothing ends when the connection
    /// cancels everything: by descriptor (ECANCELED) where the kernel can, by shutdown (EOF)
    /// where it cannot; the cancel's own completion comes either way.
    #[test]
    fn cancel_socket_ops_ends_a_waiting_receive_with_and_without_cancel_by_fd() {
        for no_cancel_fd in [false, true] {
            let mut ring = RingParams::new(8)
                .legacy_features(LegacyFeatures {
                    no_cancel_fd,
                    ..Default::default()
                })
                .build()
                .unwrap();
            let (_peer, sock) = std::os::unix::net::UnixStream::pair().unwrap();
            let (recv, cancel) = (UserData(1), UserData(2));
            ring.push_safe(
                SafeSqe::recv(Target::Fd(sock.as_raw_fd()), vec![0; 16], 16).user_data(recv),
            )
            .unwrap();
            ring.submit().unwrap();
            let sqe = cancel_socket_ops(&ring, sock.as_fd());
            ring.push_safe(sqe.user_data(cancel)).unwrap();
            let mut results = Vec::new();
            while results.len() < 2 {
                ring.submit_and_wait_timeout(1, Duration::from_secs(5))
                    .unwrap();
                results.extend(ring.completions().map(|c| (c.user_data(), c.res())));
                assert!(results.len() <= 2);
            }
            let recv_res = results
                .iter()
                .find(|(ud, _)| *ud == recv)
                .expect("recv ended");
            let want = if no_cancel_fd { 0 } else { -libc::ECANCELED };
            assert_eq!(recv_res.1, want, "no_cancel_fd={no_cancel_fd}: {results:?}");
            assert!(results.iter().any(|(ud, _)| *ud == cancel), "{results:?}");
            let _ = ring.take_bytes(recv);
        }
    }

    #[test]
    fn a_stop_notice_wakes_a_polling_ring() {
        let (sender, mut notices) = stop_notices(1).unwrap();
        let notice = notices.pop().unwrap();
        let mut ring = RingParams::new(8).build().unwrap();
        notice.arm(&mut ring, UserData(5)).unwrap();
        ring.submit_and_wait_timeout(1, Duration::from_millis(50))
            .unwrap();
        assert_eq!(ring.completions().count(), 0, "nothing before the notice");
        assert!(!notice.given());
        sender.notify();
        ring.submit_and_wait(1).unwrap();
        let c = ring.completions().next().unwrap();
        assert_eq!(c.user_data(), UserData(5));
        assert!(c.res() & i32::from(PollFlags::IN.bits()) != 0, "{c:?}");
        assert!(notice.given());
    }
}

/// Holds every worker back from accepting until all have set up (ring or epoll set,
/// registrations, buffers), so that one worker's connections cannot use up the descriptors
/// (RLIMIT_NOFILE is the process') another still needs for its ring: before this gate a
/// worker that came up first could accept to the limit and the next one's io_uring_setup
/// failed with EMFILE, taking the server down. The main thread waits on it too, so that its
/// `listening on` line means every worker is serving.
#[derive(Debug)]
pub struct StartGate {
    workers: usize,
    state: std::sync::Mutex<GateState>,
    changed: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    arrived: usize,
    failed: bool,
}

/// See [`StartGate::exit_guard`].
#[derive(Debug)]
pub struct GateExitGuard<'a>(&'a StartGate);

impl Drop for GateExitGuard<'_> {
    fn drop(&mut self) {
        self.0.fail();
    }
}

/// Another worker failed to set up: this one should return without serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateClosed;

impl StartGate {
    /// A gate for `workers` workers.
    pub fn new(workers: usize) -> Self {
        Self {
            workers,
            state: std::sync::Mutex::new(GateState::default()),
            changed: std::sync::Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // The state is two plain fields updated whole: a panic elsewhere cannot leave it
        // half-written, so a poisoned lock is still good.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This worker is set up: waits until every worker is (then it may accept), or until
    /// one has failed ([`GateClosed`]).
    pub fn arrive(&self) -> core::result::Result<(), GateClosed> {
        let mut s = self.lock();
        s.arrived += 1;
        self.changed.notify_all();
        loop {
            if s.failed {
                return Err(GateClosed);
            }
            if s.arrived >= self.workers {
                return Ok(());
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// This worker could not set up (or stopped before [`StartGate::arrive`]): the others'
    /// waits end with [`GateClosed`]. Harmless once the gate is open.
    pub fn fail(&self) {
        let mut s = self.lock();
        if s.arrived < self.workers {
            s.failed = true;
        }
        self.changed.notify_all();
    }

    /// A guard for a worker thread that calls [`StartGate::fail`] when dropped, however the
    /// worker ends (an error in its set-up, a panic): the others never wait for a worker
    /// that is gone. Once the gate is open, dropping it changes nothing.
    pub fn exit_guard(&self) -> GateExitGuard<'_> {
        GateExitGuard(self)
    }

    /// For the main thread: waits until every worker has arrived (true) or one has failed
    /// (false).
    pub fn wait_open(&self) -> bool {
        let mut s = self.lock();
        loop {
            if s.failed {
                return false;
            }
            if s.arrived >= self.workers {
                return true;
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod gate_tests {
    use super::*;

    #[test]
    fn the_gate_opens_when_every_worker_has_arrived() {
        let gate = Arc::new(StartGate::new(3));
        let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (gate, opened) = (Arc::clone(&gate), Arc::clone(&opened));
                std::thread::spawn(move || {
                    assert_eq!(gate.arrive(), Ok(()));
                    opened.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(opened.load(Ordering::SeqCst), 0, "two of three: still shut");
        let last = {
            let gate = Arc::clone(&gate);
            std::thread::spawn(move || gate.arrive())
        };
        assert!(gate.wait_open());
        assert_eq!(last.join().unwrap(), Ok(()));
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(opened.load(Ordering::SeqCst), 2);
        gate.fail();
        assert!(
            gate.wait_open(),
            "a failure after the gate opened changes nothing"
        );
    }

    #[test]
    fn a_failed_worker_releases_the_others_and_main() {
        let gate = Arc::new(StartGate::new(3));
        let waiting = {
            let gate = Arc::clone(&gate);
            std::thread::spawn(move || gate.arrive())
        };
        std::thread::sleep(Duration::from_millis(20));
        gate.fail();
        assert_eq!(waiting.join().unwrap(), Err(GateClosed));
        assert!(!gate.wait_open());
        assert_eq!(gate.arrive(), Err(GateClosed), "a late arrival too");
    }

    #[test]
    fn a_worker_that_panics_before_arriving_releases_the_others() {
        let gate = Arc::new(StartGate::new(2));
        let dying = {
            let gate = Arc::clone(&gate);
            std::thread::spawn(move || {
                let _guard = gate.exit_guard();
                panic!("set-up failed");
            })
        };
        assert!(dying.join().is_err());
        assert_eq!(gate.arrive(), Err(GateClosed));
        assert!(!gate.wait_open());
    }
}
