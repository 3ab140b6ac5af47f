//! The one shutdown path of a server worker: serve, then drain for a grace period, then abort.
//!
//! On a stop request (SIGINT/SIGTERM, relayed to each worker) a worker stops accepting and
//! lets every connection finish what it is doing ([`DrainAction::BeginDrain`]); once the
//! grace period has passed, whatever is still open is cut ([`DrainAction::Abort`]: cancel its
//! operations and close it), because a peer that never reads would otherwise hold the process
//! forever. The worker exits when [`Drain::finished`] says so: stopping, nothing accepting,
//! no connection left and nothing of the kernel's still in flight.
//!
//! Time comes in as milliseconds on a monotonic clock; this module reads no clock.
//!
//! ```
//! use ringwork_core::shutdown::{Drain, DrainAction};
//!
//! let mut drain = Drain::new(3_000); // a 3 s grace period
//! assert_eq!(drain.on_stop(1_000), Some(DrainAction::BeginDrain)); // SIGTERM at t = 1 s
//! assert_eq!(drain.on_tick(2_000), None); // connections are finishing
//! assert_eq!(drain.deadline_ms(), Some(4_000)); // wake up by then
//! assert_eq!(drain.on_tick(4_000), Some(DrainAction::Abort)); // cut what is left
//! assert!(drain.finished(0, false, false));
//! ```

/// Where a worker is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepting and serving.
    Serving,
    /// Stop requested at `since_ms`: no new connections, open ones finish.
    Draining {
        /// When the stop request arrived.
        since_ms: u64,
    },
    /// The grace period ran out: open connections were cut.
    Aborted {
        /// When the stop request arrived.
        since_ms: u64,
    },
}

/// What the worker must do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum DrainAction {
    /// Stop accepting; tell every connection to finish and close.
    BeginDrain,
    /// Cancel every connection's operations and close it.
    Abort,
}

/// The drain state machine; see the module docs.
#[derive(Clone, Copy, Debug)]
pub struct Drain {
    phase: Phase,
    grace_ms: u64,
}

impl Drain {
    /// A serving worker whose drain, once begun, lasts at most `grace_ms`.
    pub fn new(grace_ms: u64) -> Self {
        Self {
            phase: Phase::Serving,
            grace_ms,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// True once a stop was requested.
    pub fn stopping(&self) -> bool {
        self.phase != Phase::Serving
    }

    /// Whether a connection the kernel accepted now is to be served: while serving, and while
    /// draining (an accept already in flight when the stop came may still complete, and
    /// closing what it took would refuse a client the listener had let in); not once the
    /// drain was cut short.
    pub fn admits(&self) -> bool {
        !matches!(self.phase, Phase::Aborted { .. })
    }

    /// A stop request arrived; the first one begins the drain, later ones change nothing.
    pub fn on_stop(&mut self, now_ms: u64) -> Option<DrainAction> {
        match self.phase {
            Phase::Serving => {
                self.phase = Phase::Draining { since_ms: now_ms };
                Some(DrainAction::BeginDrain)
            }
            Phase::Draining { .. } | Phase::Aborted { .. } => None,
        }
    }

    /// Time passed: past the grace period a drain turns into an abort, once.
    pub fn on_tick(&mut self, now_ms: u64) -> Option<DrainAction> {
        match self.phase {
            Phase::Draining { since_ms } if now_ms.saturating_sub(since_ms) >= self.grace_ms => {
                self.phase = Phase::Aborted { since_ms };
                Some(DrainAction::Abort)
            }
            _ => None,
        }
    }

    /// When [`Drain::on_tick`] next has something to do: the worker's wait must end by then.
    pub fn deadline_ms(&self) -> Option<u64> {
        match self.phase {
            Phase::Draining { since_ms } => Some(since_ms.saturating_add(self.grace_ms)),
            _ => None,
        }
    }

    /// True when the worker may exit: stopping, with no connection left, nothing accepting,
    /// and no operation of the kernel's still in flight (its memory must outlive it).
    pub fn finished(&self, connections: usize, accepting: bool, in_flight: bool) -> bool {
        self.stopping() && connections == 0 && !accepting && !in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_drain_abort() {
        let mut d = Drain::new(3000);
        assert_eq!(d.on_tick(10_000), None, "no abort while serving");
        assert!(
            !d.finished(0, false, false),
            "a serving worker never finishes"
        );
        assert!(d.admits());
        assert_eq!(d.on_stop(100), Some(DrainAction::BeginDrain));
        assert!(
            d.admits(),
            "a connection accepted during the drain is served"
        );
        assert_eq!(d.on_stop(200), None, "a second signal changes nothing");
        assert_eq!(d.deadline_ms(), Some(3100));
        assert_eq!(d.on_tick(3099), None);
        assert_eq!(d.on_tick(3100), Some(DrainAction::Abort));
        assert!(!d.admits(), "none once the drain is cut short");
        assert_eq!(d.on_tick(9999), None, "abort once");
        assert_eq!(d.phase(), Phase::Aborted { since_ms: 100 });
        assert_eq!(d.deadline_ms(), None);
    }

    #[test]
    fn finished_needs_everything_quiet() {
        let mut d = Drain::new(0);
        let _ = d.on_stop(0);
        assert!(!d.finished(1, false, false), "a connection left");
        assert!(!d.finished(0, true, false), "the accept has not ended");
        assert!(!d.finished(0, false, true), "the kernel still holds memory");
        assert!(d.finished(0, false, false));
    }

    #[test]
    fn zero_grace_aborts_at_the_first_tick() {
        let mut d = Drain::new(0);
        assert_eq!(d.on_stop(50), Some(DrainAction::BeginDrain));
        assert_eq!(d.on_tick(50), Some(DrainAction::Abort));
    }
}
