//! Accepting connections, once for both servers: the io_uring [`Acceptor`] and the epoll
//! [`EpollAcceptor`], the kernel side of the accept policy in `ringwork_core::accept`.
//!
//! The io_uring acceptor keeps one IORING_OP_ACCEPT armed (multishot where the kernel has it,
//! falling back to single-shot when the probe or the kernel says no), re-arms it on a CQE
//! without F_MORE, cancels it to pause or stop, and adopts each accepted descriptor as an
//! `OwnedFd`. The epoll acceptor accepts with accept4(2) and takes its listener out of the
//! epoll set to pause. Both follow core's [`Backoff`] when accepting fails for lack of a
//! resource, and core's [`Capacity`] at the connection limit.
//!
//! What this module deliberately does not do: decide when to pause, for how long, or what to
//! tell a person (core's policy does; see its module docs), read a clock (methods that need
//! the time take `now_ms`, milliseconds on the worker's monotonic clock, the one its
//! `ringwork_core::shutdown::Drain` gets), decide what to do with an accepted connection, or
//! print: [`AcceptNotice`]s go to the binaries, which print them.
//!
//! # References
//! accept(2); io_uring_prep_multishot_accept(3).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use ringwork_core::accept::{Backoff, Capacity, Failure};
use ringwork_core::errno::RawErrno;
use ringwork_core::token::{Generation, OpKind, Slot, Token, UserData};
use rustix::io::Errno;
use rustix::io_uring::IoringOp;
use rustix::net::SocketFlags;

/// What the acceptors hand out to be printed; core's, so that every backend says the same.
pub use ringwork_core::accept::AcceptNotice;

use crate::epoll::{Epoll, Interest};
use crate::error::Result;
use crate::op::SafeSqe;
use crate::register::Probe;
use crate::ring::{Cqe, Ring};
use crate::sqe::Target;

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
/// turn of its loop, waits no longer than [`Acceptor::next_deadline_ms`] (see
/// `ringwork_core::accept::timeout_until`), and prints [`Acceptor::notices`].
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

/// How an [`Acceptor`] accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptMode {
    /// One IORING_OP_ACCEPT with IORING_ACCEPT_MULTISHOT (Linux 5.19) where the kernel has
    /// it, re-armed whenever a completion ends it; single-shot otherwise.
    Multishot,
    /// One single-shot accept per connection, re-armed after each (the fallback, forced).
    Single,
}

impl Acceptor {
    /// An acceptor of `listener` whose tokens name `slot`. [`AcceptMode::Multishot`] is used
    /// where `probe` says the kernel has it: it has no opcode of its own and arrived in 5.19
    /// together with IORING_OP_SOCKET, so that opcode's presence is the answer. Nothing is
    /// submitted until [`Acceptor::start`].
    pub fn new(listener: OwnedFd, slot: Slot, probe: &Probe, mode: AcceptMode) -> Self {
        let multishot = mode == AcceptMode::Multishot;
        let supported = probe.supports(IoringOp::Socket);
        let mut backoff = Backoff::new();
        if multishot && !supported {
            backoff.push_notice(AcceptNotice::MultishotUnsupported);
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
            capacity: Capacity::unlimited(),
        }
    }

    /// Stops accepting while `max` connections are open, instead of accepting connections
    /// only to close them: the kernel's listen backlog holds new ones until
    /// [`Acceptor::poll`] sees one close. (A multishot accept is cancelled at capacity; the
    /// few connections it may still bring before the cancel lands are the caller's to refuse.)
    #[must_use]
    pub fn with_capacity(mut self, max: usize) -> Self {
        self.capacity = Capacity::new(max);
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
        self.capacity.is_full()
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

    /// A CQE of the acceptor's (see [`Acceptor::owns`]), harvested at `now_ms`, with
    /// `open_conns` connections open. Returns the accepted connection, if the CQE brought one;
    /// re-arms the accept when its request ended (a CQE without F_MORE: only that ends a
    /// multishot, even an error with F_MORE does not), unless accepting is paused or stopped.
    pub fn on_cqe(
        &mut self,
        ring: &mut Ring,
        cqe: &Cqe,
        open_conns: usize,
        now_ms: u64,
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
                self.backoff.on_success(now_ms);
            }
            Err(RawErrno::INVAL) if self.multishot && !self.accepted_any => {
                // The probe said yes but this kernel refuses multishot accept (kernels differ
                // in what they backport): fall back, and say so.
                self.multishot = false;
                self.backoff.push_notice(AcceptNotice::MultishotRefused);
            }
            // Our cancel (pausing or stopping), or the ring's teardown.
            Err(RawErrno::CANCELED) => {}
            Err(errno) => {
                self.stats.failed += 1;
                if Failure::of(errno) == Failure::Persistent {
                    self.backoff.on_failure(errno, now_ms, open_conns);
                }
            }
        }
        if self.stopped {
            self.close_if_done();
        } else if self.backoff.is_paused() || self.capacity.is_full() {
            // A failure that left a multishot armed: the kernel would go on failing; stop it
            // until the pause ends. At capacity likewise, until a connection closes.
            self.cancel(ring)?;
        } else if !self.armed {
            self.arm(ring)?;
        }
        Ok(accepted)
    }

    /// Call on every turn of the loop, with the connections open and the turn's time: ends a
    /// pause that is due (or that a closed connection ended early) by re-arming, and reports
    /// an episode that is over.
    pub fn poll(&mut self, ring: &mut Ring, open_conns: usize, now_ms: u64) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        // `resume` first: it clears the full state whether or not an accept is armed now.
        if self.capacity.resume(open_conns) && !self.armed && !self.backoff.is_paused() {
            self.arm(ring)?;
        }
        // Connections another acceptor of the worker brought may have filled it: stop too.
        if !self.capacity.is_full() && self.capacity.check(open_conns) {
            self.cancel(ring)?;
        }
        if self.backoff.poll(now_ms, open_conns) && !self.armed && !self.capacity.is_full() {
            self.arm(ring)?;
        }
        Ok(())
    }

    /// When the loop must wake for [`Acceptor::poll`] at the latest, on the clock of `now_ms`
    /// (a wait without a timeout would leave a pause unended): `None` while there is nothing
    /// to wake for.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        if self.stopped {
            return None;
        }
        self.backoff.deadline_ms()
    }

    /// Stops accepting (shutdown) at `now_ms`: cancels the accept in flight; the listener is
    /// closed once the accept's last CQE and the cancel's are in (new connections are refused
    /// from then on). The caller submits, and goes on handing the acceptor its CQEs until
    /// [`Acceptor::is_idle`].
    pub fn stop(&mut self, ring: &mut Ring, now_ms: u64) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        self.backoff.stop(now_ms);
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
    /// Registers `listener` (which must be nonblocking: `net::reuseport_listener(addr, SocketMode::Nonblocking)`)
    /// in `ep` with `interest`, tagged `key`.
    pub fn new(ep: &Epoll, listener: OwnedFd, key: u64, interest: Interest) -> Result<Self> {
        ep.add(&listener, key, interest)?;
        Ok(Self {
            listener: Some(listener),
            key,
            interest,
            watched: true,
            backoff: Backoff::new(),
            capacity: Capacity::unlimited(),
        })
    }

    /// Stops accepting while `max` connections are open (the listener leaves the set; the
    /// kernel's listen backlog holds new connections until [`EpollAcceptor::poll`] sees one
    /// close).
    #[must_use]
    pub fn with_capacity(mut self, max: usize) -> Self {
        self.capacity = Capacity::new(max);
        self
    }

    /// Accepts one connection (SOCK_NONBLOCK | SOCK_CLOEXEC) at `now_ms`, with `open_conns`
    /// connections open. `None`: none is waiting, accepting is paused, or stopped. A failure
    /// for lack of a resource pauses accepting (the listener leaves `ep` until
    /// [`EpollAcceptor::poll`] brings it back); a failure of the connection alone moves on to
    /// the next one.
    pub fn accept(
        &mut self,
        ep: &Epoll,
        open_conns: usize,
        now_ms: u64,
    ) -> Result<Option<OwnedFd>> {
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
                    self.backoff.on_success(now_ms);
                    return Ok(Some(fd));
                }
                Err(Errno::AGAIN) => return Ok(None),
                Err(errno) => {
                    let errno = RawErrno(errno.raw_os_error());
                    if Failure::of(errno) == Failure::Transient {
                        continue;
                    }
                    self.backoff.on_failure(errno, now_ms, open_conns);
                    ep.delete(listener)?;
                    self.watched = false;
                    return Ok(None);
                }
            }
        }
    }

    /// Call on every turn of the loop, with the connections open and the turn's time: ends a
    /// pause that is due (or that a closed connection ended early) by watching the listener
    /// again, and reports an episode that is over.
    pub fn poll(&mut self, ep: &Epoll, open_conns: usize, now_ms: u64) -> Result<()> {
        let mut rewatch = false;
        if self.capacity.resume(open_conns) {
            rewatch = !self.backoff.is_paused();
        }
        if self.backoff.poll(now_ms, open_conns) {
            rewatch = !self.capacity.is_full();
        }
        if rewatch && !self.watched {
            if let Some(listener) = &self.listener {
                ep.add(listener, self.key, self.interest)?;
                self.watched = true;
            }
        }
        Ok(())
    }

    /// When the loop must wake for [`EpollAcceptor::poll`] at the latest, on the clock of
    /// `now_ms`; `None` while there is nothing to wake for.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.backoff.deadline_ms()
    }

    /// Stops accepting (shutdown) at `now_ms`: the listener leaves `ep` and is closed, so new
    /// connections are refused.
    pub fn stop(&mut self, ep: &Epoll, now_ms: u64) -> Result<()> {
        self.backoff.stop(now_ms);
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

/// One acceptor as a worker drives all of its acceptors together ([`Acceptors`]), whatever
/// it accepts through.
pub trait AcceptSide {
    /// What accepting goes through: the ring, or the epoll set.
    type Via;
    /// [`Acceptor::poll`], [`EpollAcceptor::poll`].
    fn poll_at(&mut self, via: &mut Self::Via, open_conns: usize, now_ms: u64) -> Result<()>;
    /// [`Acceptor::stop`], [`EpollAcceptor::stop`].
    fn stop_at(&mut self, via: &mut Self::Via, now_ms: u64) -> Result<()>;
    /// When the loop must wake for the next poll at the latest.
    fn deadline_ms(&self) -> Option<u64>;
    /// The notices since the last call.
    fn take_notices(&mut self) -> Vec<AcceptNotice>;
    /// An accept is in flight (being cancelled, in a drain): the worker may not end yet.
    fn in_flight(&self) -> bool;
}

impl AcceptSide for Acceptor {
    type Via = Ring;
    fn poll_at(&mut self, ring: &mut Ring, open_conns: usize, now_ms: u64) -> Result<()> {
        self.poll(ring, open_conns, now_ms)
    }
    fn stop_at(&mut self, ring: &mut Ring, now_ms: u64) -> Result<()> {
        self.stop(ring, now_ms)
    }
    fn deadline_ms(&self) -> Option<u64> {
        self.next_deadline_ms()
    }
    fn take_notices(&mut self) -> Vec<AcceptNotice> {
        self.notices().collect()
    }
    fn in_flight(&self) -> bool {
        !self.is_idle()
    }
}

impl AcceptSide for EpollAcceptor {
    type Via = Epoll;
    fn poll_at(&mut self, ep: &mut Epoll, open_conns: usize, now_ms: u64) -> Result<()> {
        self.poll(ep, open_conns, now_ms)
    }
    fn stop_at(&mut self, ep: &mut Epoll, now_ms: u64) -> Result<()> {
        self.stop(ep, now_ms)
    }
    fn deadline_ms(&self) -> Option<u64> {
        self.next_deadline_ms()
    }
    fn take_notices(&mut self) -> Vec<AcceptNotice> {
        self.notices().collect()
    }
    fn in_flight(&self) -> bool {
        // Synchronous: nothing of it is ever in flight.
        false
    }
}

/// A worker's acceptors, one per listener, polled, stopped and reported together.
#[derive(Debug)]
pub struct Acceptors<A>(pub Vec<A>);

impl Acceptors<Acceptor> {
    /// Every acceptor accepts with multishot (for the features line).
    pub fn multishot(&self) -> bool {
        self.0.iter().all(Acceptor::multishot)
    }
}

impl<A: AcceptSide> Acceptors<A> {
    /// Every acceptor's [`AcceptSide::poll_at`], once a turn.
    pub fn poll(&mut self, via: &mut A::Via, open_conns: usize, now_ms: u64) -> Result<()> {
        self.0
            .iter_mut()
            .try_for_each(|a| a.poll_at(via, open_conns, now_ms))
    }

    /// Stops every acceptor (the drain).
    pub fn stop(&mut self, via: &mut A::Via, now_ms: u64) -> Result<()> {
        self.0.iter_mut().try_for_each(|a| a.stop_at(via, now_ms))
    }

    /// The earliest time the loop must wake for [`Acceptors::poll`].
    pub fn deadline_ms(&self) -> Option<u64> {
        self.0.iter().fold(None, |d, a| {
            ringwork_core::accept::earliest(d, a.deadline_ms())
        })
    }

    /// An accept is in flight (being cancelled, in a drain).
    pub fn accepting(&self) -> bool {
        self.0.iter().any(A::in_flight)
    }

    /// Prints what the acceptors have to say (back-off episodes, fallbacks) on stderr,
    /// behind `name`.
    pub fn report(&mut self, name: &str) {
        for a in &mut self.0 {
            for notice in a.take_notices() {
                eprintln!("{name}: {notice}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{local_addr, reuseport_listener, SocketMode};
    use crate::ring::RingParams;
    use ringwork_core::accept::FIRST_PAUSE_MS;
    use rustix::io_uring::IoringCqeFlags;
    use std::net::TcpStream;
    use std::time::Duration;

    /// core's errno numbers are the kernel's: the policy classifies what rustix reports.
    #[test]
    fn core_errnos_are_the_kernels() {
        for (core, kernel) in [
            (RawErrno::MFILE, Errno::MFILE),
            (RawErrno::NFILE, Errno::NFILE),
            (RawErrno::NOBUFS, Errno::NOBUFS),
            (RawErrno::NOMEM, Errno::NOMEM),
            (RawErrno::CONNABORTED, Errno::CONNABORTED),
            (RawErrno::INTR, Errno::INTR),
            (RawErrno::AGAIN, Errno::AGAIN),
            (RawErrno::PERM, Errno::PERM),
            (RawErrno::PROTO, Errno::PROTO),
            (RawErrno::NETDOWN, Errno::NETDOWN),
            (RawErrno::NOPROTOOPT, Errno::NOPROTOOPT),
            (RawErrno::HOSTDOWN, Errno::HOSTDOWN),
            (RawErrno::NONET, Errno::NONET),
            (RawErrno::HOSTUNREACH, Errno::HOSTUNREACH),
            (RawErrno::OPNOTSUPP, Errno::OPNOTSUPP),
            (RawErrno::NETUNREACH, Errno::NETUNREACH),
            (RawErrno::TIMEDOUT, Errno::TIMEDOUT),
        ] {
            assert_eq!(core.0, kernel.raw_os_error(), "{core:?}");
        }
    }

    // ---- Acceptor: a real ring and listener; failures as the kernel would post them ----

    fn ring() -> Ring {
        RingParams::new(8).build().unwrap()
    }

    fn acceptor(ring: &mut Ring, mode: AcceptMode) -> (Acceptor, std::net::SocketAddr) {
        let listener =
            reuseport_listener("127.0.0.1:0".parse().unwrap(), SocketMode::Blocking).unwrap();
        let addr = local_addr(&listener).unwrap();
        let probe = ring.probe().unwrap();
        (Acceptor::new(listener, Slot(u32::MAX), probe, mode), addr)
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

    /// The time the tests hand the acceptors (any point on a monotonic clock).
    const T0: u64 = 50_000;

    /// Submits and waits for `n` CQEs, handing the acceptor's to it at [`T0`]; returns the fds.
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
                fds.extend(a.on_cqe(ring, &cqe, 0, T0).unwrap());
            }
        }
        fds
    }

    #[test]
    fn multishot_accepts_many_and_stop_cancels_and_closes_the_listener() {
        let mut ring = ring();
        let (mut a, addr) = acceptor(&mut ring, AcceptMode::Multishot);
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
        a.stop(&mut ring, T0).unwrap();
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
        let v4 = reuseport_listener("127.0.0.1:0".parse().unwrap(), SocketMode::Blocking).unwrap();
        let v6 = reuseport_listener("[::1]:0".parse().unwrap(), SocketMode::Blocking).unwrap();
        let addrs = [local_addr(&v4).unwrap(), local_addr(&v6).unwrap()];
        let mut acceptors = [
            Acceptor::new(v4, Slot::WORKER, probe, AcceptMode::Multishot).with_capacity(2),
            Acceptor::new(v6, Slot::WORKER, probe, AcceptMode::Multishot)
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
                if let Some(fd) = acceptors[i].on_cqe(&mut ring, &cqe, open, T0).unwrap() {
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
            a.poll(&mut ring, open, T0).unwrap();
            assert!(a.is_full(), "the other's connection counts too");
        }
    }

    #[test]
    fn single_shot_is_re_armed_per_connection() {
        let mut ring = ring();
        let (mut a, addr) = acceptor(&mut ring, AcceptMode::Single);
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
        let (mut a, _addr) = acceptor(&mut ring, AcceptMode::Multishot);
        a.start(&mut ring).unwrap();
        assert_eq!(queued(&mut ring), 1);
        let failed = accept_cqe(&a, -Errno::MFILE.raw_os_error(), false);
        assert!(a.on_cqe(&mut ring, &failed, 7, T0).unwrap().is_none());
        assert_eq!(queued(&mut ring), 1, "re-armed at once after EMFILE");
        let deadline = a.next_deadline_ms().expect("a deadline to wake for");
        assert_eq!(deadline, T0 + FIRST_PAUSE_MS);
        a.poll(&mut ring, 7, deadline - 1).unwrap();
        assert_eq!(queued(&mut ring), 1, "re-armed before the pause ended");
        assert_eq!(
            a.notices().collect::<Vec<_>>(),
            [AcceptNotice::Pausing {
                errno: RawErrno::MFILE
            }]
        );
        a.poll(&mut ring, 7, deadline).unwrap();
        assert_eq!(queued(&mut ring), 2, "not re-armed when the pause ended");
        assert_eq!(a.stats().failed, 1);
    }

    #[test]
    fn a_closed_connection_re_arms_during_a_pause() {
        let mut ring = ring();
        let (mut a, _addr) = acceptor(&mut ring, AcceptMode::Multishot);
        a.start(&mut ring).unwrap();
        let failed = accept_cqe(&a, -Errno::NFILE.raw_os_error(), false);
        a.on_cqe(&mut ring, &failed, 7, T0).unwrap();
        a.poll(&mut ring, 7, T0 + 1).unwrap();
        assert_eq!(queued(&mut ring), 1);
        a.poll(&mut ring, 6, T0 + 2).unwrap();
        assert_eq!(queued(&mut ring), 2, "a close did not end the pause");
    }

    /// Only a CQE without F_MORE ends a multishot: an error that keeps it armed is not re-armed
    /// (that would be two accepts); a persistent one is cancelled for the pause instead.
    #[test]
    fn an_error_with_more_is_not_re_armed() {
        let mut ring = ring();
        let (mut a, _addr) = acceptor(&mut ring, AcceptMode::Multishot);
        a.start(&mut ring).unwrap();
        let aborted = accept_cqe(&a, -Errno::CONNABORTED.raw_os_error(), true);
        a.on_cqe(&mut ring, &aborted, 0, T0).unwrap();
        assert_eq!(
            queued(&mut ring),
            1,
            "re-armed a multishot that is still armed"
        );
        assert!(a.next_deadline_ms().is_none(), "a transient failure paused");
        let emfile = accept_cqe(&a, -Errno::MFILE.raw_os_error(), true);
        a.on_cqe(&mut ring, &emfile, 0, T0).unwrap();
        assert_eq!(
            queued(&mut ring),
            2,
            "the armed multishot was not cancelled"
        );
        assert!(!a.is_idle());
        let aborted = accept_cqe(&a, -Errno::CONNABORTED.raw_os_error(), false);
        a.on_cqe(&mut ring, &aborted, 0, T0).unwrap();
        assert_eq!(queued(&mut ring), 2, "re-armed during the pause");
    }

    #[test]
    fn einval_before_any_success_falls_back_to_single_shot() {
        let mut ring = ring();
        let (mut a, _addr) = acceptor(&mut ring, AcceptMode::Multishot);
        a.start(&mut ring).unwrap();
        let refused = accept_cqe(&a, -Errno::INVAL.raw_os_error(), false);
        a.on_cqe(&mut ring, &refused, 0, T0).unwrap();
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
        let mut a = Acceptor::new(not_listening(false), Slot(7), probe, AcceptMode::Single);
        a.start(&mut ring).unwrap();
        assert!(harvest(&mut ring, &mut a, 1).is_empty());
        assert!(a.is_idle(), "re-armed at once after a persistent failure");
        assert_eq!(a.next_deadline_ms(), Some(T0 + FIRST_PAUSE_MS));
        assert_eq!(
            a.notices().collect::<Vec<_>>(),
            [AcceptNotice::Pausing {
                errno: RawErrno::INVAL
            }]
        );
        assert_eq!(a.stats().failed, 1);
        a.poll(&mut ring, 0, T0 + FIRST_PAUSE_MS).unwrap();
        assert_eq!(queued(&mut ring), 1, "not re-armed when the pause ended");
    }

    // ---- EpollAcceptor: a real epoll set ----

    #[test]
    fn epoll_accepts_until_none_is_waiting() {
        let ep = Epoll::new(4).unwrap();
        let listener =
            reuseport_listener("127.0.0.1:0".parse().unwrap(), SocketMode::Nonblocking).unwrap();
        let addr = local_addr(&listener).unwrap();
        let mut a = EpollAcceptor::new(&ep, listener, 9, Interest::IN).unwrap();
        let _c = TcpStream::connect(addr).unwrap();
        let fd = a
            .accept(&ep, 0, T0)
            .unwrap()
            .expect("the waiting connection");
        assert!(rustix::fs::fcntl_getfl(&fd)
            .unwrap()
            .contains(rustix::fs::OFlags::NONBLOCK));
        assert!(a.accept(&ep, 1, T0).unwrap().is_none());
        a.stop(&ep, T0).unwrap();
        assert!(a.is_stopped());
        assert!(TcpStream::connect(addr).is_err(), "still listening");
    }

    /// A failing listener leaves the epoll set for the pause (a level-triggered one would
    /// otherwise wake every wait), and comes back when it ends.
    #[test]
    fn epoll_failure_stops_watching_until_the_pause_ends() {
        let mut ep = Epoll::new(4).unwrap();
        let mut a = EpollAcceptor::new(&ep, not_listening(true), 9, Interest::IN).unwrap();
        assert!(a.accept(&ep, 3, T0).unwrap().is_none());
        assert!(!a.watched);
        let deadline = a.next_deadline_ms().expect("a deadline");
        assert_eq!(deadline, T0 + FIRST_PAUSE_MS);
        assert_eq!(
            a.notices().collect::<Vec<_>>(),
            [AcceptNotice::Pausing {
                errno: RawErrno::INVAL
            }]
        );
        // Paused: no accept is tried.
        assert!(a.accept(&ep, 3, T0 + 1).unwrap().is_none());
        assert_eq!(
            a.next_deadline_ms(),
            Some(deadline),
            "a second failure counted"
        );
        a.poll(&ep, 3, deadline - 1).unwrap();
        assert!(!a.watched, "watched again before the pause ended");
        a.poll(&ep, 3, deadline).unwrap();
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

    /// At capacity during an episode's quiet while (accepting worked again, the episode not
    /// yet told over): a close brings the listener back, without waiting for the episode.
    #[test]
    fn epoll_capacity_resumes_during_a_quiet_while() {
        let ep = Epoll::new(4).unwrap();
        let listener =
            reuseport_listener("127.0.0.1:0".parse().unwrap(), SocketMode::Nonblocking).unwrap();
        let addr = local_addr(&listener).unwrap();
        let mut a = EpollAcceptor::new(&ep, listener, 9, Interest::IN)
            .unwrap()
            .with_capacity(1);
        // An episode that recovered: paused, resumed, then a success.
        a.backoff.on_failure(RawErrno::MFILE, T0, 0);
        a.poll(&ep, 0, T0 + FIRST_PAUSE_MS).unwrap();
        let _first = TcpStream::connect(addr).unwrap();
        let held = a.accept(&ep, 0, T0 + FIRST_PAUSE_MS).unwrap();
        assert!(held.is_some(), "the first connection");
        assert!(
            a.next_deadline_ms().is_some(),
            "the quiet while is under way"
        );
        let _second = TcpStream::connect(addr).unwrap();
        let now = T0 + FIRST_PAUSE_MS + 1;
        assert!(
            a.accept(&ep, 1, now).unwrap().is_none(),
            "accepted past capacity"
        );
        assert!(!a.watched && a.capacity.is_full());
        drop(held);
        a.poll(&ep, 0, now + 1).unwrap();
        assert!(
            a.watched,
            "a close during the quiet while left the listener out"
        );
        assert!(
            a.accept(&ep, 0, now + 1).unwrap().is_some(),
            "the second connection"
        );
    }
}
