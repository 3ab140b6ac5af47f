//! Teardown: [`Ring::quiesce`] (cancel, then reap until idle) and `Drop`, which frees the
//! ring's memory only once the ring is idle and leaks it otherwise.

use std::time::{Duration, Instant};

use ringwork_core::token::UserData;
use rustix::fd::AsFd;
use rustix::io_uring::{IoringEnterFlags, IoringFeatureFlags};

use crate::error::Result;
use crate::sqe::Sqe;

use super::Ring;

/// `user_data` of the IORING_OP_ASYNC_CANCEL that [`Ring::quiesce`] submits; its completion
/// is the ring's own and never reaches the caller. Reserved, like
/// [`PROVIDE_BUFFERS_USER_DATA`](crate::PROVIDE_BUFFERS_USER_DATA).
pub const QUIESCE_CANCEL_USER_DATA: UserData = UserData(u64::MAX - 2);

/// While quiescing, how often a cancel is sent again when operations are still in flight:
/// a link chain's later members, or work that was already running at the first cancel, only
/// become cancellable later.
const QUIESCE_CANCEL_EVERY: Duration = Duration::from_millis(50);

impl Drop for Ring {
    fn drop(&mut self) {
        let idle = self.quiesce(self.teardown_timeout);
        if let Ok(true) = idle {
            let fd = self.fd.as_fd();
            // SAFETY: every registration was made on this fd; the memory behind them is owned
            // by `registered` and freed only after unregistering (inside teardown), and
            // nothing is in flight that could still use it (quiesce said idle).
            unsafe { self.registered.teardown(fd) };
            return;
        }
        let why = match idle {
            Err(e) => format!("quiescing failed: {e}"),
            _ => format!("still there after {:?}", self.teardown_timeout),
        };
        eprintln!(
            "ringwork-sys: a ring was dropped with {} operation(s) in flight ({why}); leaking \
             its buffers rather than freeing memory the kernel may still use",
            self.in_flight
        );
        self.leak_owned_memory();
    }
}

impl Ring {
    /// Cancels every operation in flight and reaps until none is, or until `timeout` has
    /// passed; returns whether the ring is idle (nothing in flight, every SQE taken by the
    /// kernel). SQEs pushed but not yet submitted are submitted first, and cancelled with the
    /// rest.
    ///
    /// The cancel is IORING_OP_ASYNC_CANCEL with IORING_ASYNC_CANCEL_ANY (Linux 5.19), sent
    /// again every 50 ms while operations remain: io-wq work that was already running when
    /// the first came (it is only interrupted, and may finish normally), and the later members
    /// of link chains, become cancellable only later. Without IORING_ASYNC_CANCEL_ANY (before
    /// 5.19, or with [`LegacyFeatures::no_cancel_fd`](super::LegacyFeatures::no_cancel_fd)) nothing can be cancelled wholesale:
    /// quiesce then only submits and waits, which ends only what finishes by itself (an armed
    /// receive on a quiet socket does not). A bounded wait needs IORING_FEAT_EXT_ARG (5.11);
    /// without it quiesce polls every millisecond.
    ///
    /// The completions reaped here stay for the caller: [`Ring::completions`] serves them
    /// next, in order (the cancelled requests' `-ECANCELED`, SEND_ZC notifications, ...), so
    /// that buffer leases and connection state stay right after an explicit quiesce. Only
    /// the cancel's own completion ([`QUIESCE_CANCEL_USER_DATA`]) is the ring's.
    ///
    /// A ring that used IOSQE_CQE_SKIP_SUCCESS on its own SQEs can never prove itself idle
    /// (see the type's docs): quiesce waits out `timeout` and returns false.
    pub fn quiesce(&mut self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        let mut next_cancel = Instant::now();
        loop {
            self.submit()?;
            self.stash_ready();
            if self.in_flight == 0 && self.sq_pending() == 0 {
                return Ok(true);
            }
            let now = Instant::now();
            let Some(left) = deadline
                .checked_duration_since(now)
                .filter(|d| !d.is_zero())
            else {
                return Ok(false);
            };
            if self.in_flight > 0
                && self.cancel_fd
                && self.quiesce_cancels_owed == 0
                && now >= next_cancel
            {
                let cancel = Sqe::cancel_any().user_data(QUIESCE_CANCEL_USER_DATA);
                // SAFETY: a cancel names no memory.
                unsafe { self.push_or_submit_impl(&cancel)? };
                self.quiesce_cancels_owed += 1;
                next_cancel = now + QUIESCE_CANCEL_EVERY;
                // Submitted at the top of the loop.
                continue;
            }
            let slice = left.min(QUIESCE_CANCEL_EVERY);
            if self.in_flight == 0 {
                // Only the ring's own uncounted SQEs are left, still in the SQ: with SQPOLL the
                // poller takes them in its own time.
                if self.sqpoll {
                    self.wait_for_sq_space(self.sq.entries())?;
                } else {
                    std::thread::sleep(slice.min(Duration::from_millis(1)));
                }
            } else if self.features().contains(IoringFeatureFlags::EXT_ARG) {
                self.enter(0, 1, IoringEnterFlags::GETEVENTS, Some(slice), 0)?;
            } else {
                // No bounded wait before 5.11: look (running task work, flushing any
                // backlog), then sleep a little.
                self.enter(0, 0, IoringEnterFlags::GETEVENTS, None, 0)?;
                std::thread::sleep(slice.min(Duration::from_millis(1)));
            }
        }
    }

    /// Gives up for good, without unmapping or unregistering, every piece of memory the ring
    /// owns that an SQE may name, for a ring that could not prove itself idle: the kernel may
    /// still read or write it after the fd is closed (closing cancels asynchronously, and
    /// io-wq work already running runs on). Leaked, it can never become someone else's.
    ///
    /// Every ring-owned field that SQEs in flight may point into belongs here (taken out of
    /// the Ring and forgotten, never dropped); fields added for ring-owned operation memory
    /// plug in beside `registered`.
    fn leak_owned_memory(&mut self) {
        core::mem::forget(core::mem::take(&mut self.registered));
        self.owned.leak_in_flight();
    }
}
