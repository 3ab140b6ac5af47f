//! Accepting connections, once for both servers: the io_uring [`Acceptor`], the epoll
//! [`EpollAcceptor`], and the [`Backoff`] both follow when accepting fails for lack of a
//! resource.
//!
//! # Back-off
//! An accept that fails with EMFILE, ENFILE, ENOBUFS or ENOMEM fails the same way when retried
//! at once: the process (or the system) first has to close something. Retrying at once is a
//! busy loop: a multishot accept ends with such an error, and re-arming it fails again before
//! it even looks at the backlog (the kernel reserves the descriptor first), so a server at its
//! descriptor limit burned a whole core and wrote a line per failure to stderr. nginx, on
//! EMFILE/ENFILE, stops accepting for `accept_mutex_delay` (500 ms) and then tries again. We
//! pause for [`FIRST_PAUSE`], doubling up to [`MAX_PAUSE`] while the failures persist, and resume
//! at once when one of our connections closes (that frees what the accept lacked). While
//! paused the kernel's listen backlog holds new connections, and the open ones are served on.
//! Each episode is logged twice: once when it begins and once, [`QUIET`] after the first
//! success that no failure followed, with how long it lasted and how many accepts failed.
//!
//! Failures that concern only the connection being accepted (ECONNABORTED, or a network error
//! already pending on it, as accept(2) lists them) consumed that connection: the next accept
//! is retried at once, and cannot spin for it. Any other failure (a broken listener) is
//! treated like lack of a resource: paused and logged, never retried in a loop.
//!
//! What this module deliberately does not do: decide what to do with an accepted connection
//! (admit it, or close it at `--max-conns`), or print. It hands out [`AcceptNotice`]s, which
//! both binaries print to stderr behind their name, so that they say the same words.
//!
//! # References
//! accept(2); io_uring_prep_multishot_accept(3); nginx's `ngx_event_accept.c`
//! (`ngx_disable_accept_events`).

use std::collections::VecDeque;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use ringwork_core::errno::RawErrno;
use ringwork_core::token::{Generation, OpKind, Slot, Token, UserData};
use rustix::io::Errno;
use rustix::io_uring::IoringOp;
use rustix::net::SocketFlags;

use crate::epoll::{Epoll, Interest};
use crate::error::Result;
use crate::op::SafeSqe;
use crate::register::Probe;
use crate::ring::{Cqe, Ring};
use crate::sqe::Target;

/// The first pause after an accept failed for lack of a resource.
pub const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause: each failure in an episode doubles the pause up to this.
pub const MAX_PAUSE: Duration = Duration::from_secs(1);
/// How long accepting must succeed without a failure before an episode counts as over (and is
/// reported): a server at its limit accepts one connection per close and fails on the next,
/// which is one episode, not one per close.
pub const QUIET: Duration = MAX_PAUSE;

/// What a failed accept says about the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Only the connection being accepted failed, and it is gone: retry at once.
    Transient,
    /// The next accept would fail the same way (out of descriptors or memory, or a broken
    /// listener): pause.
    Persistent,
}

impl Failure {
    /// Classifies an accept's errno. EAGAIN ("nothing to accept") is no failure: callers of a
    /// nonblocking accept handle it before asking.
    pub fn of(errno: Errno) -> Self {
        match errno {
            // accept(2): "Linux accept() passes already-pending network errors on the new
            // socket as an error code from accept() ... should be treated like EAGAIN by
            // retrying"; ECONNABORTED: the peer gave up while queued; EPERM: a firewall rule.
            Errno::CONNABORTED
            | Errno::INTR
            | Errno::AGAIN
            | Errno::PERM
            | Errno::PROTO
            | Errno::NETDOWN
            | Errno::NOPROTOOPT
            | Errno::HOSTDOWN
            | Errno::NONET
            | Errno::HOSTUNREACH
            | Errno::OPNOTSUPP
            | Errno::NETUNREACH
            | Errno::TIMEDOUT => Failure::Transient,
            _ => Failure::Persistent,
        }
    }
}

/// Something about accepting that a person should know, for the binaries to print (stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptNotice {
    /// Accepting failed with `errno` and pauses ([`FIRST_PAUSE`], doubling up to
    /// [`MAX_PAUSE`]) until it succeeds again.
    Pausing {
        /// The first failure of the episode.
        errno: Errno,
    },
    /// The episode that began with `errno` is over: accepting works again, or (`stopping`) the
    /// server stopped accepting before it did.
    Over {
        /// The first failure of the episode.
        errno: Errno,
        /// Accepts that failed during the episode.
        failures: u64,
        /// From the first failure to the first success that no failure followed (to the stop,
        /// when stopping).
        lasted: Duration,
        /// The server stopped accepting during the episode.
        stopping: bool,
    },
    /// The probe said multishot accept exists but the kernel refused it (EINVAL before any
    /// success): single-shot accepts from now on.
    MultishotRefused,
    /// This kernel lacks multishot accept (Linux 5.19): single-shot accepts.
    MultishotUnsupported,
}

/// The C name of an errno, and what it means for a server, for the errnos that pause accepting.
fn errno_meaning(errno: Errno) -> Option<(&'static str, &'static str)> {
    Some(match errno {
        Errno::MFILE => ("EMFILE", "the process is at RLIMIT_NOFILE, see `ulimit -n`"),
        Errno::NFILE => (
            "ENFILE",
            "the system's file table is full, see /proc/sys/fs/file-max",
        ),
        Errno::NOBUFS => ("ENOBUFS", "the kernel has no socket buffer memory left"),
        Errno::NOMEM => ("ENOMEM", "the kernel is out of memory"),
        _ => return None,
    })
}

/// An errno by its C name where it is one that pauses accepting, else as the OS says it.
struct ErrnoName(Errno);

impl fmt::Display for ErrnoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match errno_meaning(self.0) {
            Some((name, _)) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

/// A pause length as a person reads it: "100 ms", "1 s".
struct Span(Duration);

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.subsec_millis() == 0 {
            write!(f, "{} s", self.0.as_secs())
        } else {
            write!(f, "{} ms", self.0.as_millis())
        }
    }
}

impl fmt::Display for AcceptNotice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            AcceptNotice::Pausing { errno } => {
                write!(f, "accept failed: {}", ErrnoName(errno))?;
                if let Some((_, meaning)) = errno_meaning(errno) {
                    write!(f, " ({meaning})")?;
                }
                write!(
                    f,
                    "; pausing accepts for {} to {} until it clears (new connections wait in \
                     the listen backlog; open ones are served on)",
                    Span(FIRST_PAUSE),
                    Span(MAX_PAUSE)
                )
            }
            AcceptNotice::Over {
                errno,
                failures,
                lasted,
                stopping,
            } => {
                let what = if stopping {
                    "stopped accepting"
                } else {
                    "accepting again"
                };
                write!(
                    f,
                    "{what} after {:.1} s of {}: {failures} accepts failed meanwhile",
                    lasted.as_secs_f64(),
                    ErrnoName(errno)
                )
            }
            AcceptNotice::MultishotRefused => {
                f.write_str("multishot accept refused; using single-shot accept")
            }
            AcceptNotice::MultishotUnsupported => write!(
                f,
                "{}: single-shot accept",
                crate::Error::unsupported("multishot accept", "5.19")
            ),
        }
    }
}

/// One episode of failing accepts.
#[derive(Clone, Copy, Debug)]
struct Episode {
    errno: Errno,
    started: Instant,
    failures: u64,
    /// The pause the next failure gets.
    next_pause: Duration,
    /// The first success after the last failure: the episode ends [`QUIET`] after it.
    recovered: Option<Instant>,
}

/// The back-off of one listener: pure state, the time passed in, so that the io_uring and the
/// epoll acceptors behave alike (and tests need no clock). See the module docs for the policy.
#[derive(Debug, Default)]
pub struct Backoff {
    episode: Option<Episode>,
    /// Accepting is paused until then.
    paused_until: Option<Instant>,
    /// Connections open when the pause began: fewer means one closed.
    open_at_pause: usize,
    notices: VecDeque<AcceptNotice>,
}

impl Backoff {
    /// Not paused, no episode.
    pub fn new() -> Self {
        Self::default()
    }

    /// An accept failed persistently at `now`, with `open_conns` connections open: pauses
    /// accepting (the caller stops accepting until [`Backoff::poll`] says otherwise), and
    /// returns when the pause ends at the latest.
    pub fn on_failure(&mut self, errno: Errno, now: Instant, open_conns: usize) -> Instant {
        if self.episode.is_none() {
            self.notices.push_back(AcceptNotice::Pausing { errno });
        }
        let episode = self.episode.get_or_insert(Episode {
            errno,
            started: now,
            failures: 0,
            next_pause: FIRST_PAUSE,
            recovered: None,
        });
        episode.failures += 1;
        episode.recovered = None;
        let pause = episode.next_pause;
        episode.next_pause = (pause * 2).min(MAX_PAUSE);
        let until = now + pause;
        self.paused_until = Some(until);
        self.open_at_pause = open_conns;
        until
    }

    /// An accept succeeded at `now`.
    pub fn on_success(&mut self, now: Instant) {
        if let Some(episode) = &mut self.episode {
            episode.recovered.get_or_insert(now);
        }
    }

    /// Accepting is paused.
    pub fn is_paused(&self) -> bool {
        self.paused_until.is_some()
    }

    /// An episode is under way (accepts failed, and no quiet while has passed since).
    pub fn in_episode(&self) -> bool {
        self.episode.is_some()
    }

    /// When [`Backoff::poll`] has something to do: the end of the pause, or of the quiet while
    /// that ends an episode. `None`: nothing to wake for.
    pub fn deadline(&self) -> Option<Instant> {
        let quiet_end = self
            .episode
            .and_then(|e| e.recovered)
            .map(|since| since + QUIET);
        match (self.paused_until, quiet_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Ends the pause when it is due or when fewer than the `open_conns` of its start are open
    /// (one of ours closed); ends the episode (with a notice) once it has been quiet for
    /// [`QUIET`]. True when the pause just ended: the caller accepts again.
    pub fn poll(&mut self, now: Instant, open_conns: usize) -> bool {
        let mut resume = false;
        if let Some(until) = self.paused_until {
            if now >= until || open_conns < self.open_at_pause {
                self.paused_until = None;
                resume = true;
            }
        }
        if let Some(episode) = self.episode {
            if episode.recovered.is_some_and(|since| now >= since + QUIET) {
                self.end_episode(now, false);
            }
        }
        resume
    }

    /// The listener stops accepting: ends the pause, and an episode under way with a notice.
    pub fn stop(&mut self, now: Instant) {
        self.paused_until = None;
        if self.episode.is_some() {
            self.end_episode(now, true);
        }
    }

    fn end_episode(&mut self, now: Instant, stopping: bool) {
        let Some(episode) = self.episode.take() else {
            return;
        };
        let until = episode.recovered.filter(|_| !stopping).unwrap_or(now);
        self.notices.push_back(AcceptNotice::Over {
            errno: episode.errno,
            failures: episode.failures,
            lasted: until.saturating_duration_since(episode.started),
            stopping,
        });
    }

    /// The notices since the last call, oldest first.
    pub fn notices(&mut self) -> impl Iterator<Item = AcceptNotice> + '_ {
        self.notices.drain(..)
    }
}

/// The `generation` of an [`Acceptor`]'s tokens says which of its two requests a CQE is for.
const ACCEPT_REQUEST: Generation = Generation::new(0);
const CANCEL_REQUEST: Generation = Generation::new(1);

/// What an [`Acceptor`] has done, for a server's `stats:` line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Accepts that failed (CANCELED and the multishot fallback not counted).
    pub failed: u64,
    /// Accept SQEs submitted (one per multishot that ended, or per connection when
    /// single-shot).
    pub armed: u64,
}

/// The accept of an io_uring server: owns the listener, keeps one IORING_OP_ACCEPT armed on it
/// (multishot where the kernel has it, else single-shot), and backs off on failures.
///
/// Its CQEs carry `Token { kind: OpKind::Accept, slot, sub }`, the slot given at construction
/// (the worker's own, never a connection's) and the listener's number among the worker's
/// ([`Acceptor::with_listener_index`], 0 by default): a worker with several listeners has one
/// acceptor each. [`Acceptor::owns`] says whether a token is one of its.
/// The driver hands each such CQE to [`Acceptor::on_cqe`], calls [`Acceptor::poll`] on every
/// turn of its loop, waits no longer than [`Acceptor::next_deadline`], and prints
/// [`Acceptor::notices`].
#[derive(Debug)]
pub struct Acceptor {
    /// Closed once the acceptor has stopped and its requests have ended.
    listener: Option<OwnedFd>,
    slot: Slot,
    /// The listener's number among the worker's: tokens carry it in `sub`.
    index: u16,
    multishot: bool,
    accepted_any: bool,
    /// The accept request has not posted its last CQE (one without F_MORE).
    armed: bool,
    /// The cancel of the accept request has not posted its CQE.
    cancel_in_flight: bool,
    stopped: bool,
    backoff: Backoff,
    stats: AcceptStats,
    /// At capacity, not accepting until a connection closes ([`Acceptor::with_capacity`]).
    capacity: Capacity,
}

impl Acceptor {
    /// An acceptor of `listener` whose tokens name `slot`. Multishot accept when `multishot` is
    /// asked for and `probe` says the kernel has it: it has no opcode of its own and arrived
    /// in 5.19 together with IORING_OP_SOCKET, so that opcode's presence is the answer. Nothing
    /// is submitted until [`Acceptor::start`].
    pub fn new(listener: OwnedFd, slot: Slot, probe: &Probe, multishot: bool) -> Self {
        let supported = probe.supports(IoringOp::Socket);
        let mut backoff = Backoff::new();
        if multishot && !supported {
            backoff
                .notices
                .push_back(AcceptNotice::MultishotUnsupported);
        }
        Self {
            listener: Some(listener),
            slot,
            index: 0,
            multishot: multishot && supported,
            accepted_any: false,
            armed: false,
            cancel_in_flight: false,
            stopped: false,
            backoff,
            stats: AcceptStats::default(),
            capacity: Capacity::default(),
        }
    }

    /// Stops accepting while `max` connections are open, instead of accepting connections
    /// only to close them: the kernel's listen backlog holds new ones until
    /// [`Acceptor::poll`] sees one close. (A multishot accept is cancelled at capacity; the
    /// few connections it may still bring before the cancel lands are the caller's to refuse.)
    #[must_use]
    pub fn with_capacity(mut self, max: usize) -> Self {
        self.capacity = Capacity::of(max);
        self
    }

    /// The listener's number among the worker's, carried in the `sub` of its tokens, so that
    /// acceptors of several listeners on one ring (and slot) own their own CQEs.
    #[must_use]
    pub fn with_listener_index(mut self, index: u16) -> Self {
        self.index = index;
        self
    }

    /// At capacity: not accepting until a connection closes.
    pub fn is_full(&self) -> bool {
        self.capacity.full
    }

    /// Multishot accept is in use (it can turn off once: [`AcceptNotice::MultishotRefused`]).
    pub fn multishot(&self) -> bool {
        self.multishot
    }

    /// The listener, until the acceptor has stopped and closed it.
    pub fn listener(&self) -> Option<BorrowedFd<'_>> {
        self.listener.as_ref().map(|l| l.as_fd())
    }

    /// What it has done so far.
    pub fn stats(&self) -> AcceptStats {
        self.stats
    }

    fn user_data(&self, request: Generation) -> UserData {
        Token {
            sub: self.index,
            ..Token::new(OpKind::Accept, self.slot, request)
        }
        .encode()
    }

    /// Whether a CQE with this token is the acceptor's (its accept or the accept's cancel).
    pub fn owns(&self, token: &Token) -> bool {
        token.kind == OpKind::Accept && token.slot == self.slot && token.sub == self.index
    }

    /// Queues the first accept (the caller submits).
    pub fn start(&mut self, ring: &mut Ring) -> Result<()> {
        if self.armed || self.stopped {
            return Ok(());
        }
        self.arm(ring)
    }

    fn arm(&mut self, ring: &mut Ring) -> Result<()> {
        debug_assert!(!self.armed, "one accept request at a time");
        let Some(listener) = &self.listener else {
            return Ok(());
        };
        // No peer address is asked for: the accept names no memory (safe submission).
        let sqe = SafeSqe::accept(
            Target::Fd(listener.as_raw_fd()),
            SocketFlags::CLOEXEC,
            self.multishot,
            false,
        )
        .user_data(self.user_data(ACCEPT_REQUEST));
        ring.push_safe(sqe)?;
        self.armed = true;
        self.stats.armed += 1;
        Ok(())
    }

    fn cancel(&mut self, ring: &mut Ring) -> Result<()> {
        if !self.armed || self.cancel_in_flight {
            return Ok(());
        }
        let sqe = SafeSqe::cancel(self.user_data(ACCEPT_REQUEST))
            .user_data(self.user_data(CANCEL_REQUEST));
        ring.push_safe(sqe)?;
        self.cancel_in_flight = true;
        Ok(())
    }

    /// A CQE of the acceptor's (see [`Acceptor::owns`]), with `open_conns` connections open.
    /// Returns the accepted connection, if the CQE brought one; re-arms the accept when its
    /// request ended (a CQE without F_MORE: only that ends a multishot, even an error with
    /// F_MORE does not), unless accepting is paused or stopped.
    pub fn on_cqe(
        &mut self,
        ring: &mut Ring,
        cqe: &Cqe,
        open_conns: usize,
    ) -> Result<Option<OwnedFd>> {
        let token = Token::decode(cqe.user_data());
        debug_assert!(token.is_ok_and(|t| self.owns(&t)), "not the acceptor's CQE");
        if token.is_ok_and(|t| t.generation == CANCEL_REQUEST) {
            // Whether it found the accept or not, the accept's own last CQE says it ended.
            self.cancel_in_flight = false;
            self.close_if_done();
            return Ok(None);
        }
        if !cqe.more() {
            self.armed = false;
        }
        let mut accepted = None;
        match cqe.result() {
            Ok(fd) => {
                // SAFETY: a successful accept without a file index (`Sqe::accept(.., false)`)
                // completes with a descriptor the kernel just installed in our table for the new
                // connection: nothing else owns it, and every CQE carries a different one.
                accepted = Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
                self.accepted_any = true;
                self.stats.accepted += 1;
                // With this one, the server may be at capacity: then stop until one closes.
                self.capacity.check(open_conns + 1);
                if self.backoff.in_episode() {
                    self.backoff.on_success(Instant::now());
                }
            }
            Err(RawErrno::INVAL) if self.multishot && !self.accepted_any => {
                // The probe said yes but this kernel refuses multishot accept (kernels differ
                // in what they backport): fall back, and say so.
                self.multishot = false;
                self.backoff
                    .notices
                    .push_back(AcceptNotice::MultishotRefused);
            }
            // Our cancel (pausing or stopping), or the ring's teardown.
            Err(RawErrno::CANCELED) => {}
            Err(e) => {
                let errno = Errno::from_raw_os_error(e.0);
                self.stats.failed += 1;
                if Failure::of(errno) == Failure::Persistent {
                    self.backoff.on_failure(errno, Instant::now(), open_conns);
                }
            }
        }
        if self.stopped {
            self.close_if_done();
        } else if self.backoff.is_paused() || self.capacity.full {
            // A failure that left a multishot armed: the kernel would go on failing; stop it
            // until the pause ends. At capacity likewise, until a connection closes.
            self.cancel(ring)?;
        } else if !self.armed {
            self.arm(ring)?;
        }
        Ok(accepted)
    }

    /// Call on every turn of the loop, with the connections open: ends a pause that is due (or
    /// that a closed connection ended early) by re-arming, and reports an episode that is over.
    /// Reads the clock only while there is a deadline.
    pub fn poll(&mut self, ring: &mut Ring, open_conns: usize) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        // `resume` first: it clears the full state whether or not an accept is armed now.
        if self.capacity.resume(open_conns) && !self.armed && !self.backoff.is_paused() {
            self.arm(ring)?;
        }
        // Connections another acceptor of the worker brought may have filled it: stop too.
        if !self.capacity.full && self.capacity.check(open_conns) {
            self.cancel(ring)?;
        }
        if self.backoff.deadline().is_none() {
            return Ok(());
        }
        if self.backoff.poll(Instant::now(), open_conns) && !self.armed && !self.capacity.full {
            self.arm(ring)?;
        }
        Ok(())
    }

    /// When the loop must wake for [`Acceptor::poll`] at the latest (a wait without a
    /// timeout would leave a pause unended): `None` while there is nothing to wake for.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        self.backoff.deadline()
    }

    /// Stops accepting (shutdown): cancels the accept in flight; the listener is closed once
    /// the accept's last CQE and the cancel's are in (new connections are refused from then
    /// on). The caller submits, and goes on handing the acceptor its CQEs until
    /// [`Acceptor::is_idle`].
    pub fn stop(&mut self, ring: &mut Ring) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        self.backoff.stop(Instant::now());
        self.cancel(ring)?;
        self.close_if_done();
        Ok(())
    }

    /// No request of the acceptor's is in the kernel.
    pub fn is_idle(&self) -> bool {
        !self.armed && !self.cancel_in_flight
    }

    fn close_if_done(&mut self) {
        if self.stopped && self.is_idle() {
            self.listener = None;
        }
    }

    /// The notices since the last call, for the binary to print (stderr, behind its name).
    pub fn notices(&mut self) -> impl Iterator<Item = AcceptNotice> + '_ {
        self.backoff.notices()
    }
}

/// The accept of an epoll server: owns the nonblocking listener and its registration in the
/// epoll set, accepts with accept4(2), and backs off on failures by leaving the set while
/// paused (a level-triggered listener would otherwise wake every wait; an edge-triggered one
/// would get no new edge for the connections already queued). Re-adding it at the end of the
/// pause reports the listener at once if connections wait.
#[derive(Debug)]
pub struct EpollAcceptor {
    /// None once stopped (closed).
    listener: Option<OwnedFd>,
    key: u64,
    interest: Interest,
    /// The listener is in the epoll set.
    watched: bool,
    backoff: Backoff,
    /// At capacity, the listener out of the set until a connection closes
    /// ([`EpollAcceptor::with_capacity`]).
    capacity: Capacity,
}

impl EpollAcceptor {
    /// Registers `listener` (which must be nonblocking: `net::reuseport_listener(addr, true)`)
    /// in `ep` with `interest`, tagged `key`.
    pub fn new(ep: &Epoll, listener: OwnedFd, key: u64, interest: Interest) -> Result<Self> {
        ep.add(&listener, key, interest)?;
        Ok(Self {
            listener: Some(listener),
            key,
            interest,
            watched: true,
            backoff: Backoff::new(),
            capacity: Capacity::default(),
        })
    }

    /// Stops accepting while `max` connections are open (the listener leaves the set; the
    /// kernel's listen backlog holds new connections until [`EpollAcceptor::poll`] sees one
    /// close).
    #[must_use]
    pub fn with_capacity(mut self, max: usize) -> Self {
        self.capacity = Capacity::of(max);
        self
    }

    /// Accepts one connection (SOCK_NONBLOCK | SOCK_CLOEXEC), with `open_conns` connections
    /// open. `None`: none is waiting, accepting is paused, or stopped. A failure for lack of
    /// a resource pauses accepting (the listener leaves `ep` until [`EpollAcceptor::poll`]
    /// brings it back); a failure of the connection alone moves on to the next one.
    pub fn accept(&mut self, ep: &Epoll, open_conns: usize) -> Result<Option<OwnedFd>> {
        loop {
            let Some(listener) = self.listener.as_ref().filter(|_| self.watched) else {
                return Ok(None);
            };
            if self.capacity.check(open_conns) {
                ep.delete(listener)?;
                self.watched = false;
                return Ok(None);
            }
            match rustix::net::accept_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
                Ok(fd) => {
                    if self.backoff.in_episode() {
                        self.backoff.on_success(Instant::now());
                    }
                    return Ok(Some(fd));
                }
                Err(Errno::AGAIN) => return Ok(None),
                Err(errno) if Failure::of(errno) == Failure::Transient => continue,
                Err(errno) => {
                    self.backoff.on_failure(errno, Instant::now(), open_conns);
                    ep.delete(listener)?;
                    self.watched = false;
                    return Ok(None);
                }
            }
        }
    }

    /// Call on every turn of the loop, with the connections open: ends a pause that is due
    /// (or that a closed connection ended early) by watching the listener again, and reports
    /// an episode that is over. Reads the clock only while there is a deadline.
    pub fn poll(&mut self, ep: &Epoll, open_conns: usize) -> Result<()> {
        let mut rewatch = false;
        if self.capacity.resume(open_conns) {
            rewatch = self.backoff.deadline().is_none();
        }
        if self.backoff.deadline().is_some() && self.backoff.poll(Instant::now(), open_conns) {
            rewatch = !self.capacity.full;
        }
        if rewatch && !self.watched {
            if let Some(listener) = &self.listener {
                ep.add(listener, self.key, self.interest)?;
                self.watched = true;
            }
        }
        Ok(())
    }

    /// When the loop must wake for [`EpollAcceptor::poll`] at the latest; `None` while there
    /// is nothing to wake for.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.backoff.deadline()
    }

    /// Stops accepting (shutdown): the listener leaves `ep` and is closed, so new connections
    /// are refused.
    pub fn stop(&mut self, ep: &Epoll) -> Result<()> {
        self.backoff.stop(Instant::now());
        if let Some(listener) = self.listener.take() {
            if self.watched {
                ep.delete(&listener)?;
            }
        }
        self.watched = false;
        Ok(())
    }

    /// Stopped: the listener is closed.
    pub fn is_stopped(&self) -> bool {
        self.listener.is_none()
    }

    /// The notices since the last call, for the binary to print (stderr, behind its name).
    pub fn notices(&mut self) -> impl Iterator<Item = AcceptNotice> + '_ {
        self.backoff.notices()
    }
}

/// The most connections a server holds, and whether it holds that many now (both acceptors
/// stop at capacity instead of accepting connections only to close them).
#[derive(Clone, Copy, Debug, Default)]
struct Capacity {
    max: Option<usize>,
    full: bool,
}

impl Capacity {
    fn of(max: usize) -> Self {
        Self {
            max: Some(max.max(1)),
            full: false,
        }
    }

    /// With `open` connections: at capacity (now or already)?
    fn check(&mut self, open: usize) -> bool {
        if self.max.is_some_and(|max| open >= max) {
            self.full = true;
        }
        self.full
    }

    /// With `open` connections: true when it was at capacity and no longer is.
    fn resume(&mut self, open: usize) -> bool {
        let resumed = self.full && self.max.is_some_and(|max| open < max);
        if resumed {
            self.full = false;
        }
        resumed
    }
}

/// The earlier of two optional deadlines.
pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `timeout` shortened so that a wait wakes by `deadline`: `None` (wait without timeout) only
/// when both are `None`.
pub fn timeout_until(deadline: Option<Instant>, timeout: Option<Duration>) -> Option<Duration> {
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    match (left, timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_stops_at_the_limit_and_resumes_below_it() {
        let mut c = Capacity::of(3);
        assert!(!c.check(2));
        assert!(c.check(3), "at the limit");
        assert!(!c.resume(3), "still at it");
        assert!(c.check(2), "stays full until resumed");
        assert!(c.resume(2), "one closed");
        assert!(!c.full);
        let mut none = Capacity::default();
        assert!(!none.check(usize::MAX), "no limit");
    }
    use crate::net::{local_addr, reuseport_listener};
    use crate::ring::RingParams;
    use rustix::io_uring::IoringCqeFlags;
    use std::net::TcpStream;

    const MS: Duration = Duration::from_millis(1);

    fn notices(b: &mut Backoff) -> Vec<AcceptNotice> {
        b.notices().collect()
    }

    // ---- Backoff: pure policy, simulated time ----

    #[test]
    fn pauses_double_up_to_the_cap_while_failures_persist() {
        let mut b = Backoff::new();
        let t0 = Instant::now();
        let mut now = t0;
        let mut pauses = Vec::new();
        for _ in 0..6 {
            let until = b.on_failure(Errno::MFILE, now, 10);
            assert!(b.is_paused());
            assert_eq!(b.deadline(), Some(until));
            assert!(!b.poll(until - MS, 10), "resumed before the pause ended");
            assert!(b.poll(until, 10), "not resumed when the pause ended");
            assert!(!b.is_paused());
            pauses.push(until - now);
            now = until;
        }
        assert_eq!(
            pauses,
            [100, 200, 400, 800, 1000, 1000].map(Duration::from_millis)
        );
        // One line for the whole episode so far.
        assert_eq!(
            notices(&mut b),
            [AcceptNotice::Pausing {
                errno: Errno::MFILE
            }]
        );
    }

    #[test]
    fn a_closed_connection_ends_the_pause_at_once() {
        let mut b = Backoff::new();
        let now = Instant::now();
        b.on_failure(Errno::MFILE, now, 10);
        assert!(!b.poll(now + MS, 10), "same connections: still paused");
        assert!(!b.poll(now + MS, 11), "more connections: still paused");
        assert!(b.poll(now + 2 * MS, 9), "one closed: resume");
    }

    #[test]
    fn an_episode_ends_after_a_quiet_while_and_says_what_it_cost() {
        let mut b = Backoff::new();
        let t0 = Instant::now();
        b.on_failure(Errno::NFILE, t0, 3);
        let t1 = t0 + FIRST_PAUSE;
        assert!(b.poll(t1, 3));
        b.on_failure(Errno::MFILE, t1, 3);
        let t2 = t1 + 2 * FIRST_PAUSE;
        assert!(b.poll(t2, 3));
        // Recovered: one success, then another later; the quiet while counts from the first.
        b.on_success(t2 + MS);
        b.on_success(t2 + 500 * MS);
        assert_eq!(b.deadline(), Some(t2 + MS + QUIET));
        b.poll(t2 + QUIET, 3);
        assert!(b.in_episode(), "ended before the quiet while was over");
        b.poll(t2 + MS + QUIET, 3);
        assert!(!b.in_episode());
        assert_eq!(b.deadline(), None, "nothing left to wake for");
        assert_eq!(
            notices(&mut b),
            [
                AcceptNotice::Pausing {
                    errno: Errno::NFILE
                },
                AcceptNotice::Over {
                    errno: Errno::NFILE,
                    failures: 2,
                    lasted: t2 + MS - t0,
                    stopping: false
                }
            ]
        );
        // The next failure is a new episode, starting from the first pause again.
        let t3 = t2 + 10 * QUIET;
        assert_eq!(b.on_failure(Errno::MFILE, t3, 3), t3 + FIRST_PAUSE);
        assert_eq!(notices(&mut b).len(), 1);
    }

    /// At its limit a server accepts one connection per close and fails on the next accept:
    /// one episode, with the pause still growing, not a pair of lines per close.
    #[test]
    fn success_then_failure_within_the_quiet_while_is_the_same_episode() {
        let mut b = Backoff::new();
        let mut now = Instant::now();
        let mut pauses = Vec::new();
        for _ in 0..5 {
            let until = b.on_failure(Errno::MFILE, now, 5);
            pauses.push(until - now);
            assert!(b.poll(now + MS, 4), "a close resumes");
            b.on_success(now + 2 * MS);
            now += 3 * MS;
        }
        assert_eq!(
            pauses,
            [100, 200, 400, 800, 1000].map(Duration::from_millis)
        );
        assert_eq!(notices(&mut b).len(), 1, "one Pausing line");
        b.poll(now + QUIET, 5);
        match notices(&mut b)[..] {
            [AcceptNotice::Over { failures: 5, .. }] => {}
            ref other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stopping_ends_the_pause_and_reports_the_episode() {
        let mut b = Backoff::new();
        let t0 = Instant::now();
        b.on_failure(Errno::NOBUFS, t0, 1);
        b.stop(t0 + 50 * MS);
        assert!(!b.is_paused());
        assert_eq!(b.deadline(), None);
        assert_eq!(
            notices(&mut b)[1],
            AcceptNotice::Over {
                errno: Errno::NOBUFS,
                failures: 1,
                lasted: 50 * MS,
                stopping: true
            }
        );
    }

    #[test]
    fn failures_of_one_connection_retry_and_resource_failures_pause() {
        for errno in [
            Errno::CONNABORTED,
            Errno::PROTO,
            Errno::NETUNREACH,
            Errno::PERM,
        ] {
            assert_eq!(Failure::of(errno), Failure::Transient, "{errno:?}");
        }
        for errno in [
            Errno::MFILE,
            Errno::NFILE,
            Errno::NOBUFS,
            Errno::NOMEM,
            Errno::BADF,
            Errno::INVAL,
        ] {
            assert_eq!(Failure::of(errno), Failure::Persistent, "{errno:?}");
        }
    }

    #[test]
    fn notices_name_the_errno_and_what_it_cost() {
        let start = AcceptNotice::Pausing {
            errno: Errno::MFILE,
        }
        .to_string();
        assert_eq!(
            start,
            "accept failed: EMFILE (the process is at RLIMIT_NOFILE, see `ulimit -n`); \
             pausing accepts for 100 ms to 1 s until it clears (new connections wait in the \
             listen backlog; open ones are served on)"
        );
        let over = AcceptNotice::Over {
            errno: Errno::MFILE,
            failures: 12,
            lasted: Duration::from_millis(2340),
            stopping: false,
        }
        .to_string();
        assert_eq!(
            over,
            "accepting again after 2.3 s of EMFILE: 12 accepts failed meanwhile"
        );
        let other = AcceptNotice::Pausing { errno: Errno::BADF }.to_string();
        assert!(
            other.starts_with("accept failed: Bad file descriptor"),
            "{other}"
        );
    }

    #[test]
    fn deadlines_combine() {
        let t = Instant::now();
        assert_eq!(earliest(None, None), None);
        assert_eq!(earliest(Some(t), None), Some(t));
        assert_eq!(earliest(Some(t + MS), Some(t)), Some(t));
        assert_eq!(timeout_until(None, None), None);
        assert_eq!(timeout_until(None, Some(MS)), Some(MS));
        assert_eq!(timeout_until(Some(t), Some(QUIET)), Some(Duration::ZERO));
        assert!(timeout_until(Some(Instant::now() + QUIET), None).is_some_and(|d| d <= QUIET));
    }

    // ---- Acceptor: a real ring and listener; failures as the kernel would post them ----

    fn ring() -> Ring {
        RingParams::new(8).build().unwrap()
    }

    fn acceptor(ring: &mut Ring, multishot: bool) -> (Acceptor, std::net::SocketAddr) {
        let listener = reuseport_listener("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = local_addr(&listener).unwrap();
        let probe = ring.probe().unwrap();
        (
            Acceptor::new(listener, Slot(u32::MAX), probe, multishot),
            addr,
        )
    }

    /// A CQE of the acceptor's accept request, as the kernel posts it.
    fn accept_cqe(a: &Acceptor, res: i32, more: bool) -> Cqe {
        let flags = if more {
            IoringCqeFlags::MORE
        } else {
            IoringCqeFlags::empty()
        };
        Cqe::new(a.user_data(ACCEPT_REQUEST), res, flags)
    }

    /// SQEs queued and not yet submitted.
    fn queued(ring: &mut Ring) -> u32 {
        ring.sq_entries() - ring.sq_space()
    }

    /// Submits and waits for `n` CQEs, handing the acceptor's to it; returns the fds.
    fn harvest(ring: &mut Ring, a: &mut Acceptor, n: usize) -> Vec<OwnedFd> {
        let mut fds = Vec::new();
        let mut seen = 0;
        while seen < n {
            ring.submit_and_wait_timeout(1, Duration::from_secs(5))
                .unwrap();
            let cqes: Vec<Cqe> = ring.completions().collect();
            assert!(!cqes.is_empty(), "no CQE within 5 s");
            for cqe in cqes {
                seen += 1;
                let token = Token::decode(cqe.user_data()).unwrap();
                assert!(a.owns(&token));
                fds.extend(a.on_cqe(ring, &cqe, 0).unwrap());
            }
        }
        fds
    }

    #[test]
    fn multishot_accepts_many_and_stop_cancels_and_closes_the_listener() {
        let mut ring = ring();
        let (mut a, addr) = acceptor(&mut ring, true);
        assert!(a.multishot(), "this kernel has multishot accept");
        a.start(&mut ring).unwrap();
        let clients: Vec<_> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let fds = harvest(&mut ring, &mut a, 3);
        assert_eq!(fds.len(), 3);
        assert_eq!(a.stats().armed, 1, "one multishot for all three");
        for (fd, c) in fds.iter().zip(&clients) {
            let peer = rustix::net::getpeername(fd).unwrap().expect("a peer");
            assert_eq!(
                std::net::SocketAddr::try_from(peer).unwrap(),
                c.local_addr().unwrap()
            );
        }
        a.stop(&mut ring).unwrap();
        assert!(!a.is_idle());
        // The accept ends with ECANCELED, and the cancel posts its own CQE.
        harvest(&mut ring, &mut a, 2);
        assert!(a.is_idle());
        assert!(a.listener().is_none(), "listener closed once idle");
        assert!(TcpStream::connect(addr).is_err(), "still listening");
        assert!(a.notices().next().is_none());
    }

    /// Two listeners on one ring, one acceptor each: each owns exactly its own CQEs, and a
    /// connection another acceptor brought in stops both at capacity.
    #[test]
    fn acceptors_of_two_listeners_share_a_ring() {
        let mut ring = ring();
        let probe = ring.probe().unwrap();
        let v4 = reuseport_listener("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let v6 = reuseport_listener("[::1]:0".parse().unwrap(), false).unwrap();
        let addrs = [local_addr(&v4).unwrap(), local_addr(&v6).unwrap()];
        let mut acceptors = [
            Acceptor::new(v4, Slot::WORKER, probe, true).with_capacity(2),
            Acceptor::new(v6, Slot::WORKER, probe, true)
                .with_listener_index(1)
                .with_capacity(2),
        ];
        for a in &mut acceptors {
            a.start(&mut ring).unwrap();
        }
        let _clients: Vec<_> = addrs
            .iter()
            .map(|a| TcpStream::connect(a).unwrap())
            .collect();
        let mut got = [Vec::new(), Vec::new()];
        let mut open = 0;
        while open < 2 {
            ring.submit_and_wait_timeout(1, Duration::from_secs(5))
                .unwrap();
            let cqes: Vec<Cqe> = ring.completions().collect();
            assert!(!cqes.is_empty(), "no CQE within 5 s");
            for cqe in cqes {
                let token = Token::decode(cqe.user_data()).unwrap();
                let owners: Vec<usize> = (0..2).filter(|&i| acceptors[i].owns(&token)).collect();
                assert_eq!(owners.len(), 1, "{token:?} owned by {owners:?}");
                let i = owners[0];
                if let Some(fd) = acceptors[i].on_cqe(&mut ring, &cqe, open).unwrap() {
                    got[i].push(local_addr(&fd).unwrap());
                    open += 1;
                }
            }
        }
        assert_eq!(
            got,
            [[addrs[0]], [addrs[1]]],
            "each listener's connection its own"
        );
        for a in &mut acceptors {
            a.poll(&mut ring, open).unwrap();
            assert!(a.is_full(), "the other's connection counts too");
        }
    }

    #[test]
    fn single_shot_is_re_armed_per_connection() {
        let mut ring = ring();
        let (mut a, addr) = acceptor(&mut ring, false);
        assert!(!a.multishot());
        a.start(&mut ring).unwrap();
        let _clients: Vec<_> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let fds = harvest(&mut ring, &mut a, 2);
        assert_eq!(fds.len(), 2);
        assert_eq!(
            a.stats().armed,
            3,
            "the first, then one after each connection"
        );
    }

    #[test]
    fn emfile_pauses_instead_of_re_arming_and_the_deadline_re_arms() {
        let mut ring = ring();
        let (mut a, _addr) = acceptor(&mut ring, true);
        a.start(&mut ring).unwrap();
        assert_eq!(queued(&mut ring), 1);
        let before = Instant::now();
        let failed = accept_cqe(&a, -Errno::MFILE.raw_os_error(), false);
        assert!(a.on_cqe(&mut ring, &failed, 7).unwrap().is_none());
        assert_eq!(queued(&mut ring), 1, "re-armed at once after EMFILE");
        let deadline = a.next_deadline().expect("a deadline to wake for");
        assert!(deadline >= before + FIRST_PAUSE && deadline <= Instant::now() + FIRST_PAUSE);
        a.poll(&mut ring, 7).unwrap();
        assert_eq!(queued(&mut ring), 1, "re-armed before the pause ended");
        assert_eq!(
            a.notices().collect::<Vec<_>>(),
            [AcceptNotice::Pausing {
                errno: Errno::MFILE
            }]
        );
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        a.poll(&mut ring, 7).unwrap();
        assert_eq!(queued(&mut ring), 2, "not re-armed when the pause ended");
        assert_eq!(a.stats().failed, 1);
    }

    #[test]
    fn a_closed_connection_re_arms_during_a_pause() {
        let mut ring = ring();
        let (mut a, _addr) = acceptor(&mut ring, true);
        a.start(&mut ring).unwrap();
        let failed = accept_cqe(&a, -Errno::NFILE.raw_os_error(), false);
        a.on_cqe(&mut ring, &failed, 7).unwrap();
        a.poll(&mut ring, 7).unwrap();
        assert_eq!(queued(&mut ring), 1);
        a.poll(&mut ring, 6).unwrap();
        assert_eq!(queued(&mut ring), 2, "a close did not end the pause");
    }

    /// Only a CQE without F_MORE ends a multishot: an error that keeps it armed is not re-armed
    /// (that would be two accepts); a persistent one is cancelled for the pause instead.
    #[test]
    fn an_error_with_more_is_not_re_armed() {
        let mut ring = ring();
        let (mut a, _addr) = acceptor(&mut ring, true);
        a.start(&mut ring).unwrap();
        let aborted = accept_cqe(&a, -Errno::CONNABORTED.raw_os_error(), true);
        a.on_cqe(&mut ring, &aborted, 0).unwrap();
        assert_eq!(
            queued(&mut ring),
            1,
            "re-armed a multishot that is still armed"
        );
        assert!(a.next_deadline().is_none(), "a transient failure paused");
        let emfile = accept_cqe(&a, -Errno::MFILE.raw_os_error(), true);
        a.on_cqe(&mut ring, &emfile, 0).unwrap();
        assert_eq!(
            queued(&mut ring),
            2,
            "the armed multishot was not cancelled"
        );
        assert!(!a.is_idle());
        let aborted = accept_cqe(&a, -Errno::CONNABORTED.raw_os_error(), false);
        a.on_cqe(&mut ring, &aborted, 0).unwrap();
        assert_eq!(queued(&mut ring), 2, "re-armed during the pause");
    }

    #[test]
    fn einval_before_any_success_falls_back_to_single_shot() {
        let mut ring = ring();
        let (mut a, _addr) = acceptor(&mut ring, true);
        a.start(&mut ring).unwrap();
        let refused = accept_cqe(&a, -Errno::INVAL.raw_os_error(), false);
        a.on_cqe(&mut ring, &refused, 0).unwrap();
        assert!(!a.multishot());
        assert_eq!(queued(&mut ring), 2, "the single-shot accept was not armed");
        assert_eq!(
            a.notices().collect::<Vec<_>>(),
            [AcceptNotice::MultishotRefused]
        );
    }

    /// A socket that is not listening: accept fails on it for real, with EINVAL, every time.
    fn not_listening(nonblocking: bool) -> OwnedFd {
        let flags = if nonblocking {
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK
        } else {
            SocketFlags::CLOEXEC
        };
        rustix::net::socket_with(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::STREAM,
            flags,
            None,
        )
        .unwrap()
    }

    #[test]
    fn a_kernel_failure_pauses_the_ring_accept() {
        let mut ring = ring();
        let probe = ring.probe().unwrap();
        let mut a = Acceptor::new(not_listening(false), Slot(7), probe, false);
        a.start(&mut ring).unwrap();
        assert!(harvest(&mut ring, &mut a, 1).is_empty());
        assert!(a.is_idle(), "re-armed at once after a persistent failure");
        assert!(a.next_deadline().is_some());
        assert_eq!(
            a.notices().collect::<Vec<_>>(),
            [AcceptNotice::Pausing {
                errno: Errno::INVAL
            }]
        );
        assert_eq!(a.stats().failed, 1);
    }

    // ---- EpollAcceptor: a real epoll set ----

    #[test]
    fn epoll_accepts_until_none_is_waiting() {
        let ep = Epoll::new(4).unwrap();
        let listener = reuseport_listener("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let addr = local_addr(&listener).unwrap();
        let mut a = EpollAcceptor::new(&ep, listener, 9, Interest::IN).unwrap();
        let _c = TcpStream::connect(addr).unwrap();
        let fd = a.accept(&ep, 0).unwrap().expect("the waiting connection");
        assert!(rustix::fs::fcntl_getfl(&fd)
            .unwrap()
            .contains(rustix::fs::OFlags::NONBLOCK));
        assert!(a.accept(&ep, 1).unwrap().is_none());
        a.stop(&ep).unwrap();
        assert!(a.is_stopped());
        assert!(TcpStream::connect(addr).is_err(), "still listening");
    }

    /// A failing listener leaves the epoll set for the pause (a level-triggered one would
    /// otherwise wake every wait), and comes back when it ends.
    #[test]
    fn epoll_failure_stops_watching_until_the_pause_ends() {
        let mut ep = Epoll::new(4).unwrap();
        let mut a = EpollAcceptor::new(&ep, not_listening(true), 9, Interest::IN).unwrap();
        assert!(a.accept(&ep, 3).unwrap().is_none());
        assert!(!a.watched);
        let deadline = a.next_deadline().expect("a deadline");
        assert_eq!(
            a.notices().collect::<Vec<_>>(),
            [AcceptNotice::Pausing {
                errno: Errno::INVAL
            }]
        );
        // Paused: no accept is tried.
        assert!(a.accept(&ep, 3).unwrap().is_none());
        a.poll(&ep, 3).unwrap();
        assert!(!a.watched, "watched again before the pause ended");
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        a.poll(&ep, 3).unwrap();
        assert!(a.watched, "not watched again after the pause");
        // Re-added: epoll reports the socket (a socket that is not listening reads as hung up),
        // so a driver would try again.
        let keys: Vec<u64> = ep
            .wait(Some(Duration::ZERO))
            .unwrap()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(keys, [9]);
    }
}
