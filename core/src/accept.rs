//! Accept policy, once for both servers and both backends: what a failed accept says about the
//! next one ([`Failure`]), the back-off after failures for lack of a resource ([`Backoff`]),
//! stopping at the connection limit ([`Capacity`]), and what a person should be told about it
//! ([`AcceptNotice`]).
//!
//! # Back-off
//! An accept that fails with EMFILE, ENFILE, ENOBUFS or ENOMEM fails the same way when retried
//! at once: the process (or the system) first has to close something. Retrying at once is a
//! busy loop: a multishot accept ends with such an error, and re-arming it fails again before
//! it even looks at the backlog (the kernel reserves the descriptor first). nginx, on
//! EMFILE/ENFILE, stops accepting for `accept_mutex_delay` (500 ms) and then tries again. We
//! pause for [`FIRST_PAUSE_MS`], doubling up to [`MAX_PAUSE_MS`] while the failures persist,
//! and resume at once when one of our connections closes (that frees what the accept lacked).
//! While paused the kernel's listen backlog holds new connections, and the open ones are
//! served on. Each episode is told twice: once when it begins and once, [`QUIET_MS`] after the
//! first success that no failure followed, with how long it lasted and how many accepts
//! failed.
//!
//! Failures that concern only the connection being accepted (ECONNABORTED, or a network error
//! already pending on it, as accept(2) lists them) consumed that connection: the next accept
//! is retried at once, and cannot spin for it. Any other failure (a broken listener) is
//! treated like lack of a resource: paused and told, never retried in a loop.
//!
//! # Time
//! Time comes in as milliseconds on a monotonic clock whose epoch the caller keeps, as for
//! [`crate::shutdown::Drain`], so that one reading per turn of a worker's loop serves both.
//! Deadlines go out the same way; [`timeout_until`] turns one into a wait's timeout.
//!
//! What this module deliberately does not do: accept (ringwork-sys's `Acceptor` and
//! `EpollAcceptor` arm, cancel and adopt descriptors, following this policy), decide what to
//! do with an accepted connection beyond counting it, or print: the binaries print
//! [`AcceptNotice`]s to stderr behind their name, so that they say the same words.
//!
//! ```
//! use ringwork_core::accept::{Backoff, FIRST_PAUSE_MS};
//! use ringwork_core::errno::RawErrno;
//!
//! let mut backoff = Backoff::new();
//! // EMFILE at t = 5 s with 10 connections open: stop accepting until t = 5.1 s.
//! assert_eq!(backoff.on_failure(RawErrno::MFILE, 5_000, 10), 5_000 + FIRST_PAUSE_MS);
//! assert_eq!(backoff.deadline_ms(), Some(5_100)); // wake up by then
//! assert!(!backoff.poll(5_050, 10)); // still paused
//! assert!(backoff.poll(5_060, 9)); // one of ours closed: accept again
//! assert_eq!(backoff.notices().count(), 1); // "accept failed: EMFILE (...); pausing ..."
//! ```
//!
//! # References
//! accept(2); nginx's `ngx_event_accept.c` (`ngx_disable_accept_events`).

use core::fmt;
use core::time::Duration;

use arrayvec::ArrayVec;

use crate::errno::RawErrno;

/// The first pause after an accept failed for lack of a resource, in milliseconds.
pub const FIRST_PAUSE_MS: u64 = 100;
/// The longest pause: each failure in an episode doubles the pause up to this.
pub const MAX_PAUSE_MS: u64 = 1_000;
/// How long accepting must succeed without a failure before an episode counts as over (and is
/// told): a server at its limit accepts one connection per close and fails on the next, which
/// is one episode, not one per close.
pub const QUIET_MS: u64 = MAX_PAUSE_MS;

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
    pub fn of(errno: RawErrno) -> Self {
        match errno {
            // accept(2): "Linux accept() passes already-pending network errors on the new
            // socket as an error code from accept() ... should be treated like EAGAIN by
            // retrying"; ECONNABORTED: the peer gave up while queued; EPERM: a firewall rule.
            RawErrno::CONNABORTED
            | RawErrno::INTR
            | RawErrno::AGAIN
            | RawErrno::PERM
            | RawErrno::PROTO
            | RawErrno::NETDOWN
            | RawErrno::NOPROTOOPT
            | RawErrno::HOSTDOWN
            | RawErrno::NONET
            | RawErrno::HOSTUNREACH
            | RawErrno::OPNOTSUPP
            | RawErrno::NETUNREACH
            | RawErrno::TIMEDOUT => Failure::Transient,
            _ => Failure::Persistent,
        }
    }
}

/// How an episode of failing accepts ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpisodeEnd {
    /// Accepting works again: [`QUIET_MS`] passed after a success with no failure since.
    Recovered,
    /// The server stopped accepting (shutdown) before it recovered.
    Stopped,
}

/// Something about accepting that a person should know, for the binaries to print (stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptNotice {
    /// Accepting failed with `errno` and pauses ([`FIRST_PAUSE_MS`], doubling up to
    /// [`MAX_PAUSE_MS`]) until it succeeds again.
    Pausing {
        /// The first failure of the episode.
        errno: RawErrno,
    },
    /// The episode that began with `errno` is over.
    Over {
        /// The first failure of the episode.
        errno: RawErrno,
        /// Accepts that failed during the episode.
        failures: u64,
        /// Milliseconds from the first failure to the first success that no failure followed
        /// (to the stop, when it [`EpisodeEnd::Stopped`]).
        lasted_ms: u64,
        /// Recovered, or stopped first.
        ended: EpisodeEnd,
    },
    /// The probe said multishot accept exists but the kernel refused it (EINVAL before any
    /// success): single-shot accepts from now on.
    MultishotRefused,
    /// This kernel lacks multishot accept (Linux 5.19): single-shot accepts.
    MultishotUnsupported,
}

/// What an errno that pauses accepting means for a server, and where to look.
fn errno_meaning(errno: RawErrno) -> Option<&'static str> {
    Some(match errno {
        RawErrno::MFILE => "the process is at RLIMIT_NOFILE, see `ulimit -n`",
        RawErrno::NFILE => "the system's file table is full, see /proc/sys/fs/file-max",
        RawErrno::NOBUFS => "the kernel has no socket buffer memory left",
        RawErrno::NOMEM => "the kernel is out of memory",
        _ => return None,
    })
}

/// A pause length as a person reads it: "100 ms", "1 s".
struct Span(u64);

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 1_000 == 0 {
            write!(f, "{} s", self.0 / 1_000)
        } else {
            write!(f, "{} ms", self.0)
        }
    }
}

/// Milliseconds as seconds to a tenth, rounded: "2.3 s".
struct Seconds(u64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenths = self.0.saturating_add(50) / 100;
        write!(f, "{}.{} s", tenths / 10, tenths % 10)
    }
}

impl fmt::Display for AcceptNotice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            AcceptNotice::Pausing { errno } => {
                write!(f, "accept failed: {errno}")?;
                if let Some(meaning) = errno_meaning(errno) {
                    write!(f, " ({meaning})")?;
                }
                write!(
                    f,
                    "; pausing accepts for {} to {} until it clears (new connections wait in \
                     the listen backlog; open ones are served on)",
                    Span(FIRST_PAUSE_MS),
                    Span(MAX_PAUSE_MS)
                )
            }
            AcceptNotice::Over {
                errno,
                failures,
                lasted_ms,
                ended,
            } => {
                let what = match ended {
                    EpisodeEnd::Recovered => "accepting again",
                    EpisodeEnd::Stopped => "stopped accepting",
                };
                write!(
                    f,
                    "{what} after {} of {errno}: {failures} accepts failed meanwhile",
                    Seconds(lasted_ms)
                )
            }
            AcceptNotice::MultishotRefused => {
                f.write_str("multishot accept refused; using single-shot accept")
            }
            AcceptNotice::MultishotUnsupported => f.write_str(
                "multishot accept needs Linux 5.19, which this kernel is older than; using \
                 single-shot accept",
            ),
        }
    }
}

/// Notices held for the caller between two [`Backoff::notices`] calls. A loop that drains them
/// every turn sees at most a few at once (an episode's end, a new one's start, a fallback);
/// past this many the oldest give way, so that a caller who never drains costs no memory.
const NOTICES_HELD: usize = 8;

/// One episode of failing accepts.
#[derive(Clone, Copy, Debug)]
struct Episode {
    errno: RawErrno,
    started_ms: u64,
    failures: u64,
    /// The pause the next failure gets.
    next_pause_ms: u64,
    /// The first success after the last failure: the episode ends [`QUIET_MS`] after it.
    recovered_ms: Option<u64>,
}

/// The back-off of one listener (see the module docs for the policy), and the notices about
/// it for the caller to print.
///
/// Invariants: paused only within an episode; while paused, the pause ends by
/// [`Backoff::deadline_ms`], which is at most [`MAX_PAUSE_MS`] after the failure that began it.
#[derive(Clone, Debug, Default)]
pub struct Backoff {
    episode: Option<Episode>,
    /// Accepting is paused until then.
    paused_until_ms: Option<u64>,
    /// Connections open when the pause began: fewer means one closed.
    open_at_pause: usize,
    notices: ArrayVec<AcceptNotice, NOTICES_HELD>,
}

impl Backoff {
    /// Not paused, no episode.
    pub fn new() -> Self {
        Self::default()
    }

    /// An accept failed persistently ([`Failure::Persistent`]) at `now_ms`, with `open_conns`
    /// connections open: pauses accepting (the caller stops accepting until [`Backoff::poll`]
    /// says otherwise), and returns when the pause ends at the latest.
    pub fn on_failure(&mut self, errno: RawErrno, now_ms: u64, open_conns: usize) -> u64 {
        if self.episode.is_none() {
            self.push_notice(AcceptNotice::Pausing { errno });
        }
        let episode = self.episode.get_or_insert(Episode {
            errno,
            started_ms: now_ms,
            failures: 0,
            next_pause_ms: FIRST_PAUSE_MS,
            recovered_ms: None,
        });
        episode.failures += 1;
        episode.recovered_ms = None;
        let pause = episode.next_pause_ms;
        episode.next_pause_ms = pause.saturating_mul(2).min(MAX_PAUSE_MS);
        let until = now_ms.saturating_add(pause);
        self.paused_until_ms = Some(until);
        self.open_at_pause = open_conns;
        until
    }

    /// An accept succeeded at `now_ms`: an episode under way may end [`QUIET_MS`] later.
    pub fn on_success(&mut self, now_ms: u64) {
        if let Some(episode) = &mut self.episode {
            episode.recovered_ms.get_or_insert(now_ms);
        }
    }

    /// Accepting is paused.
    pub fn is_paused(&self) -> bool {
        self.paused_until_ms.is_some()
    }

    /// An episode is under way (accepts failed, and no quiet while has passed since).
    pub fn in_episode(&self) -> bool {
        self.episode.is_some()
    }

    /// When [`Backoff::poll`] has something to do: the end of the pause, or of the quiet while
    /// that ends an episode. `None`: nothing to wake for.
    pub fn deadline_ms(&self) -> Option<u64> {
        let quiet_end = self
            .episode
            .and_then(|e| e.recovered_ms)
            .map(|since| since.saturating_add(QUIET_MS));
        earliest(self.paused_until_ms, quiet_end)
    }

    /// Ends the pause when it is due at `now_ms` or when fewer than the `open_conns` of its
    /// start are open (one of ours closed); ends the episode (with a notice) once it has been
    /// quiet for [`QUIET_MS`]. True when the pause just ended: the caller accepts again.
    /// Afterwards [`Backoff::deadline_ms`] is later than `now_ms` (or `None`): a loop that
    /// waits until it cannot spin.
    pub fn poll(&mut self, now_ms: u64, open_conns: usize) -> bool {
        let mut resume = false;
        if let Some(until) = self.paused_until_ms {
            if now_ms >= until || open_conns < self.open_at_pause {
                self.paused_until_ms = None;
                resume = true;
            }
        }
        if let Some(episode) = self.episode {
            let quiet_end = episode
                .recovered_ms
                .map(|since| since.saturating_add(QUIET_MS));
            if quiet_end.is_some_and(|end| now_ms >= end) {
                self.end_episode(now_ms, EpisodeEnd::Recovered);
            }
        }
        resume
    }

    /// The listener stops accepting at `now_ms`: ends the pause, and an episode under way with
    /// a notice.
    pub fn stop(&mut self, now_ms: u64) {
        self.paused_until_ms = None;
        self.end_episode(now_ms, EpisodeEnd::Stopped);
    }

    fn end_episode(&mut self, now_ms: u64, ended: EpisodeEnd) {
        let Some(episode) = self.episode.take() else {
            return;
        };
        let until = match ended {
            EpisodeEnd::Recovered => episode.recovered_ms.unwrap_or(now_ms),
            EpisodeEnd::Stopped => now_ms,
        };
        self.push_notice(AcceptNotice::Over {
            errno: episode.errno,
            failures: episode.failures,
            lasted_ms: until.saturating_sub(episode.started_ms),
            ended,
        });
    }

    /// Queues a notice of the caller's (an acceptor's multishot fallback), in order with the
    /// back-off's own.
    pub fn push_notice(&mut self, notice: AcceptNotice) {
        if self.notices.is_full() {
            self.notices.remove(0);
        }
        self.notices.push(notice);
    }

    /// The notices since the last call, oldest first.
    pub fn notices(&mut self) -> impl Iterator<Item = AcceptNotice> + '_ {
        self.notices.drain(..)
    }
}

/// The most connections a server holds, and whether it holds that many now: an acceptor
/// stops at capacity instead of accepting connections only to close them, and resumes once
/// one closes. The default has no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    max: Option<usize>,
    full: bool,
}

impl Capacity {
    /// At most `max` connections (at least one: a server that holds none accepts nothing).
    pub fn new(max: usize) -> Self {
        Self {
            max: Some(max.max(1)),
            full: false,
        }
    }

    /// No limit: never full.
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// At capacity: not accepting until [`Capacity::resume`] says so.
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// With `open` connections: at capacity (now, or still since an earlier call)? Full stays
    /// full until [`Capacity::resume`], even when `open` is below the limit.
    pub fn check(&mut self, open: usize) -> bool {
        if self.max.is_some_and(|max| open >= max) {
            self.full = true;
        }
        self.full
    }

    /// With `open` connections: true when it was at capacity and no longer is (the caller
    /// accepts again).
    pub fn resume(&mut self, open: usize) -> bool {
        let resumed = self.full && self.max.is_some_and(|max| open < max);
        if resumed {
            self.full = false;
        }
        resumed
    }
}

/// The earlier of two optional deadlines (milliseconds on the caller's clock).
pub fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `timeout` shortened so that a wait that starts at `now_ms` wakes by `deadline_ms`: zero
/// when the deadline has passed, `None` (wait without timeout) only when both are `None`.
pub fn timeout_until(
    deadline_ms: Option<u64>,
    now_ms: u64,
    timeout: Option<Duration>,
) -> Option<Duration> {
    let left = deadline_ms.map(|d| Duration::from_millis(d.saturating_sub(now_ms)));
    match (left, timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::string::ToString;
    use std::vec::Vec;

    fn notices(b: &mut Backoff) -> Vec<AcceptNotice> {
        b.notices().collect()
    }

    // ---- Failure ----

    #[test]
    fn failures_of_one_connection_retry_and_resource_failures_pause() {
        for errno in [
            RawErrno::CONNABORTED,
            RawErrno::PROTO,
            RawErrno::NETUNREACH,
            RawErrno::PERM,
        ] {
            assert_eq!(Failure::of(errno), Failure::Transient, "{errno:?}");
        }
        for errno in [
            RawErrno::MFILE,
            RawErrno::NFILE,
            RawErrno::NOBUFS,
            RawErrno::NOMEM,
            RawErrno::BADF,
            RawErrno::INVAL,
            RawErrno(9999),
        ] {
            assert_eq!(Failure::of(errno), Failure::Persistent, "{errno:?}");
        }
    }

    // ---- Backoff: simulated time ----

    #[test]
    fn pauses_double_up_to_the_cap_while_failures_persist() {
        let mut b = Backoff::new();
        let mut now = 7_000;
        let mut pauses = Vec::new();
        for _ in 0..6 {
            let until = b.on_failure(RawErrno::MFILE, now, 10);
            assert!(b.is_paused());
            assert_eq!(b.deadline_ms(), Some(until));
            assert!(!b.poll(until - 1, 10), "resumed before the pause ended");
            assert!(b.poll(until, 10), "not resumed when the pause ended");
            assert!(!b.is_paused());
            pauses.push(until - now);
            now = until;
        }
        assert_eq!(pauses, [100, 200, 400, 800, 1000, 1000]);
        // One line for the whole episode so far.
        assert_eq!(
            notices(&mut b),
            [AcceptNotice::Pausing {
                errno: RawErrno::MFILE
            }]
        );
    }

    #[test]
    fn a_closed_connection_ends_the_pause_at_once() {
        let mut b = Backoff::new();
        b.on_failure(RawErrno::MFILE, 0, 10);
        assert!(!b.poll(1, 10), "same connections: still paused");
        assert!(!b.poll(1, 11), "more connections: still paused");
        assert!(b.poll(2, 9), "one closed: resume");
        assert!(!b.poll(3, 8), "resumed once");
    }

    #[test]
    fn an_episode_ends_after_a_quiet_while_and_says_what_it_cost() {
        let mut b = Backoff::new();
        let t0 = 1_000;
        b.on_failure(RawErrno::NFILE, t0, 3);
        let t1 = t0 + FIRST_PAUSE_MS;
        assert!(b.poll(t1, 3));
        b.on_failure(RawErrno::MFILE, t1, 3);
        let t2 = t1 + 2 * FIRST_PAUSE_MS;
        assert!(b.poll(t2, 3));
        // Recovered: one success, then another later; the quiet while counts from the first.
        b.on_success(t2 + 1);
        b.on_success(t2 + 500);
        assert_eq!(b.deadline_ms(), Some(t2 + 1 + QUIET_MS));
        b.poll(t2 + QUIET_MS, 3);
        assert!(b.in_episode(), "ended before the quiet while was over");
        b.poll(t2 + 1 + QUIET_MS, 3);
        assert!(!b.in_episode());
        assert_eq!(b.deadline_ms(), None, "nothing left to wake for");
        assert_eq!(
            notices(&mut b),
            [
                AcceptNotice::Pausing {
                    errno: RawErrno::NFILE
                },
                AcceptNotice::Over {
                    errno: RawErrno::NFILE,
                    failures: 2,
                    lasted_ms: t2 + 1 - t0,
                    ended: EpisodeEnd::Recovered,
                }
            ]
        );
        // The next failure is a new episode, starting from the first pause again.
        let t3 = t2 + 10 * QUIET_MS;
        assert_eq!(b.on_failure(RawErrno::MFILE, t3, 3), t3 + FIRST_PAUSE_MS);
        assert_eq!(notices(&mut b).len(), 1);
    }

    /// At its limit a server accepts one connection per close and fails on the next accept:
    /// one episode, with the pause still growing, not a pair of lines per close.
    #[test]
    fn success_then_failure_within_the_quiet_while_is_the_same_episode() {
        let mut b = Backoff::new();
        let mut now = 0;
        let mut pauses = Vec::new();
        for _ in 0..5 {
            let until = b.on_failure(RawErrno::MFILE, now, 5);
            pauses.push(until - now);
            assert!(b.poll(now + 1, 4), "a close resumes");
            b.on_success(now + 2);
            now += 3;
        }
        assert_eq!(pauses, [100, 200, 400, 800, 1000]);
        assert_eq!(notices(&mut b).len(), 1, "one Pausing line");
        b.poll(now + QUIET_MS, 5);
        match notices(&mut b)[..] {
            [AcceptNotice::Over { failures: 5, .. }] => {}
            ref other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stopping_ends_the_pause_and_reports_the_episode() {
        let mut b = Backoff::new();
        b.on_failure(RawErrno::NOBUFS, 400, 1);
        b.stop(450);
        assert!(!b.is_paused());
        assert!(!b.in_episode());
        assert_eq!(b.deadline_ms(), None);
        assert_eq!(
            notices(&mut b)[1],
            AcceptNotice::Over {
                errno: RawErrno::NOBUFS,
                failures: 1,
                lasted_ms: 50,
                ended: EpisodeEnd::Stopped,
            }
        );
        b.stop(500);
        assert!(notices(&mut b).is_empty(), "stopping twice tells nothing");
    }

    #[test]
    fn a_caller_that_never_drains_keeps_the_newest_notices() {
        let mut b = Backoff::new();
        for i in 0..NOTICES_HELD + 3 {
            let errno = RawErrno(i as i32);
            b.push_notice(AcceptNotice::Pausing { errno });
        }
        let held = notices(&mut b);
        assert_eq!(held.len(), NOTICES_HELD);
        assert_eq!(held[0], AcceptNotice::Pausing { errno: RawErrno(3) });
        assert_eq!(
            held[NOTICES_HELD - 1],
            AcceptNotice::Pausing {
                errno: RawErrno(NOTICES_HELD as i32 + 2)
            }
        );
    }

    #[test]
    fn notices_name_the_errno_and_what_it_cost() {
        let start = AcceptNotice::Pausing {
            errno: RawErrno::MFILE,
        }
        .to_string();
        assert_eq!(
            start,
            "accept failed: EMFILE (the process is at RLIMIT_NOFILE, see `ulimit -n`); \
             pausing accepts for 100 ms to 1 s until it clears (new connections wait in the \
             listen backlog; open ones are served on)"
        );
        let over = AcceptNotice::Over {
            errno: RawErrno::MFILE,
            failures: 12,
            lasted_ms: 2_340,
            ended: EpisodeEnd::Recovered,
        }
        .to_string();
        assert_eq!(
            over,
            "accepting again after 2.3 s of EMFILE: 12 accepts failed meanwhile"
        );
        let stopped = AcceptNotice::Over {
            errno: RawErrno::NOBUFS,
            failures: 1,
            lasted_ms: 960,
            ended: EpisodeEnd::Stopped,
        }
        .to_string();
        assert_eq!(
            stopped,
            "stopped accepting after 1.0 s of ENOBUFS: 1 accepts failed meanwhile"
        );
        let other = AcceptNotice::Pausing {
            errno: RawErrno::BADF,
        }
        .to_string();
        assert!(
            other.starts_with("accept failed: EBADF; pausing"),
            "{other}"
        );
        let unnamed = AcceptNotice::Pausing {
            errno: RawErrno(999),
        }
        .to_string();
        assert!(
            unnamed.starts_with("accept failed: errno 999;"),
            "{unnamed}"
        );
    }

    // ---- Capacity ----

    #[test]
    fn capacity_stops_at_the_limit_and_resumes_below_it() {
        let mut c = Capacity::new(3);
        assert!(!c.check(2));
        assert!(c.check(3), "at the limit");
        assert!(!c.resume(3), "still at it");
        assert!(c.check(2), "stays full until resumed");
        assert!(c.resume(2), "one closed");
        assert!(!c.is_full());
        assert!(!c.resume(1), "resumed once");
        let mut none = Capacity::unlimited();
        assert!(!none.check(usize::MAX), "no limit");
        let mut zero = Capacity::new(0);
        assert!(zero.check(1), "a limit of 0 holds one");
        assert!(!Capacity::new(0).check(0));
    }

    // ---- deadlines ----

    #[test]
    fn deadlines_combine() {
        assert_eq!(earliest(None, None), None);
        assert_eq!(earliest(Some(5), None), Some(5));
        assert_eq!(earliest(None, Some(5)), Some(5));
        assert_eq!(earliest(Some(6), Some(5)), Some(5));
        let ms = Duration::from_millis;
        assert_eq!(timeout_until(None, 100, None), None);
        assert_eq!(timeout_until(None, 100, Some(ms(7))), Some(ms(7)));
        assert_eq!(timeout_until(Some(150), 100, None), Some(ms(50)));
        assert_eq!(timeout_until(Some(150), 100, Some(ms(7))), Some(ms(7)));
        assert_eq!(timeout_until(Some(150), 100, Some(ms(70))), Some(ms(50)));
        assert_eq!(
            timeout_until(Some(90), 100, Some(ms(70))),
            Some(Duration::ZERO),
            "a deadline already passed"
        );
    }

    // ---- properties ----

    /// What happens to a back-off between two polls.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        Fail(RawErrno),
        Succeed,
        /// Time passes and the open connections change by this much.
        Wait {
            ms: u64,
            opened: i8,
        },
        /// The loop's wait times out: time passes to the deadline exactly.
        Sleep,
        Stop,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            prop_oneof![
                Just(RawErrno::MFILE),
                Just(RawErrno::NFILE),
                Just(RawErrno::NOBUFS)
            ]
            .prop_map(Step::Fail),
            Just(Step::Succeed),
            (0u64..1_500, -2i8..3).prop_map(|(ms, opened)| Step::Wait { ms, opened }),
            Just(Step::Sleep),
            Just(Step::Stop),
        ]
    }

    proptest! {
        /// Under any sequence of failures, successes, closes and waits, polled after each step
        /// as a worker's loop does: a pause lasts from FIRST_PAUSE_MS to MAX_PAUSE_MS, doubling
        /// within an episode; it ends by its deadline, or at the first poll that sees a
        /// connection closed; a poll leaves no deadline that is already due (a loop waiting
        /// for it cannot spin); and every episode is told once when it begins and once when it
        /// ends, with its failures counted.
        #[test]
        fn pauses_stay_bounded_and_end_on_time_or_on_close(
            steps in proptest::collection::vec(step(), 0..80),
        ) {
            let mut b = Backoff::new();
            let (mut now, mut open) = (0u64, 20usize);
            let mut last_pause: Option<u64> = None;
            let mut open_at_pause = 0;
            let (mut failures, mut begun, mut told_over) = (0u64, 0u32, 0u32);
            for step in steps {
                let paused_until = b.is_paused().then(|| b.deadline_ms()).flatten();
                match step {
                    Step::Fail(errno) => {
                        let was_in_episode = b.in_episode();
                        let until = b.on_failure(errno, now, open);
                        let pause = until - now;
                        prop_assert!((FIRST_PAUSE_MS..=MAX_PAUSE_MS).contains(&pause));
                        match last_pause.filter(|_| was_in_episode) {
                            Some(last) => prop_assert_eq!(pause, (2 * last).min(MAX_PAUSE_MS)),
                            None => {
                                prop_assert_eq!(pause, FIRST_PAUSE_MS);
                                begun += 1;
                                failures = 0;
                            }
                        }
                        failures += 1;
                        last_pause = Some(pause);
                        open_at_pause = open;
                        prop_assert_eq!(b.deadline_ms(), Some(until));
                    }
                    Step::Succeed => b.on_success(now),
                    Step::Wait { ms, opened } => {
                        now += ms;
                        open = open.saturating_add_signed(isize::from(opened));
                    }
                    Step::Sleep => now = b.deadline_ms().unwrap_or(now),
                    Step::Stop => {
                        b.stop(now);
                        prop_assert!(!b.is_paused() && !b.in_episode());
                    }
                }
                // The loop's poll, after every step.
                let paused = b.is_paused();
                let resumed = b.poll(now, open);
                prop_assert_eq!(resumed, paused && !b.is_paused());
                if paused_until.is_some_and(|until| now >= until) || (paused && open < open_at_pause) {
                    prop_assert!(resumed, "a pause outlived its end or a close");
                }
                prop_assert!(!b.is_paused() || b.in_episode(), "paused outside an episode");
                if let Some(deadline) = b.deadline_ms() {
                    prop_assert!(deadline > now, "due at {} and polled at {}", deadline, now);
                    prop_assert!(deadline <= now + MAX_PAUSE_MS.max(QUIET_MS));
                }
                for notice in b.notices() {
                    match notice {
                        AcceptNotice::Pausing { .. } => {}
                        AcceptNotice::Over { failures: counted, .. } => {
                            told_over += 1;
                            prop_assert_eq!(counted, failures);
                        }
                        other => prop_assert!(false, "{:?}", other),
                    }
                }
                prop_assert_eq!(begun - told_over, u32::from(b.in_episode()));
            }
        }
    }
}
