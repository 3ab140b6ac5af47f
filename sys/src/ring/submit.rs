//! Submission: queueing SQEs (one, or a link chain), the `user_data` check, and SQPOLL's
//! wake-up and SQ-space waits. Nothing here enters the kernel except to wait for SQ space.

use core::sync::atomic::{fence, Ordering};

use ringwork_core::token::UserData;
use rustix::io_uring::{IoringEnterFlags, IoringSqFlags, IoringSqeFlags};

use crate::error::{Error, Result};
use crate::sqe::Sqe;

use super::Ring;

/// Refuses `user_data` the ring keeps for itself (see [`crate::op`]).
fn check_user_data(sqe: &Sqe) -> Result<()> {
    let ud = UserData(sqe.raw().user_data.u64_());
    if crate::op::is_internal(ud) {
        return Err(Error::InvalidConfig(
            "user_data with bit 63 set is reserved for the ring",
        ));
    }
    Ok(())
}

impl Ring {
    /// Bookkeeping for one of the ring's own PROVIDE_BUFFERS SQEs, just pushed: with
    /// SKIP_SUCCESS it completes at submission and posts nothing on success, so it is taken
    /// out of the in-flight count (its failure CQE, if any, is then not counted either);
    /// without, its CQE is owed and consumed by the ring on success.
    pub(crate) fn note_provide_buffers_pushed(&mut self) {
        if self.provide_skips_success {
            self.in_flight -= 1;
        } else {
            self.provide_cqes_owed += 1;
        }
    }

    /// Free SQ slots.
    pub fn sq_space(&mut self) -> u32 {
        self.sq.free_slots()
    }

    /// Queues one SQE (not yet visible to the kernel until [`Ring::submit`]). Prefer
    /// [`Ring::push_safe`], which needs no `unsafe`: this is for SQEs it has no builder for.
    ///
    /// # Safety
    /// Every buffer, path, struct and descriptor the SQE points to must stay valid, and must
    /// not be accessed in a way the operation forbids, until its CQE is harvested (for
    /// SEND_ZC: until the notification CQE). A cancel does not end that: only the CQE does.
    /// `user_data` with bit 63 set is the ring's own and refused ([`Error::InvalidConfig`]).
    ///
    /// # References
    /// io_uring_enter(2), "Submission queue entry".
    pub unsafe fn push(&mut self, sqe: &Sqe) -> Result<()> {
        check_user_data(sqe)?;
        // SAFETY: forwarded from the caller.
        unsafe { self.push_impl(sqe) }
    }

    /// Like [`Ring::push`], but submits what is queued to make room when the SQ is full.
    ///
    /// # Safety
    /// As for [`Ring::push`].
    pub unsafe fn push_or_submit(&mut self, sqe: &Sqe) -> Result<()> {
        check_user_data(sqe)?;
        // SAFETY: forwarded from the caller.
        unsafe { self.push_or_submit_impl(sqe) }
    }

    /// Queues `sqes` as one link chain: IOSQE_IO_LINK (or IOSQE_IO_HARDLINK with `hard`) on
    /// every SQE but the last, all or none. A chain split by a submit between its SQEs would
    /// end early (the kernel ends a chain at the end of each submission), so this refuses with
    /// [`Error::SubmissionQueueFull`] before pushing anything when the SQ lacks room.
    ///
    /// A plain link breaks at the first failure (an error, or a short read or write): the
    /// rest complete with `-ECANCELED`. A hard link runs the rest regardless.
    ///
    /// # Safety
    /// As for [`Ring::push`], for every SQE of the chain (a LINK_TIMEOUT's timespec included).
    pub unsafe fn push_chain(&mut self, sqes: &[Sqe], hard: bool) -> Result<()> {
        sqes.iter().try_for_each(check_user_data)?;
        // SAFETY: forwarded from the caller.
        unsafe { self.push_chain_impl(sqes, hard) }
    }

    /// Like [`Ring::push_chain`], but when the SQ lacks room for the whole chain, submits what
    /// is queued (and with SQPOLL waits for the poller to make room) first, so the chain still
    /// goes in one piece. A chain longer than the SQ can never fit: [`Error::InvalidConfig`].
    ///
    /// # Safety
    /// As for [`Ring::push`], for every SQE of the chain.
    pub unsafe fn push_chain_or_submit(&mut self, sqes: &[Sqe], hard: bool) -> Result<()> {
        sqes.iter().try_for_each(check_user_data)?;
        // SAFETY: forwarded from the caller.
        unsafe { self.push_chain_or_submit_impl(sqes, hard) }
    }

    /// [`Ring::push`] without the `user_data` check: the ring's own SQEs use reserved values.
    ///
    /// # Safety
    /// As for [`Ring::push`].
    pub(crate) unsafe fn push_impl(&mut self, sqe: &Sqe) -> Result<()> {
        let slot = self.sq.reserve().ok_or(Error::SubmissionQueueFull)?;
        // SAFETY: `slot < sq_entries` (the protocol masks it); the slot was reserved by the
        // producer so the kernel does not read it until publish.
        unsafe { self.sqes.add(slot as usize).write(*sqe.raw()) };
        self.in_flight += 1;
        if sqe.raw().flags.contains(IoringSqeFlags::CQE_SKIP_SUCCESS) {
            self.stats.skip_success += 1;
        }
        Ok(())
    }

    /// [`Ring::push_or_submit`] without the `user_data` check.
    ///
    /// # Safety
    /// As for [`Ring::push`].
    pub(crate) unsafe fn push_or_submit_impl(&mut self, sqe: &Sqe) -> Result<()> {
        // SAFETY: forwarded from the caller.
        match unsafe { self.push_impl(sqe) } {
            Err(Error::SubmissionQueueFull) => {
                self.submit()?;
                if self.sqpoll {
                    // The poller consumes the SQ in its own time: submit() only woke it.
                    self.wait_for_sq_space(1)?;
                }
                // SAFETY: forwarded from the caller.
                unsafe { self.push_impl(sqe) }
            }
            other => other,
        }
    }

    /// SQPOLL: blocks until at least `slots` SQ entries are free (IORING_ENTER_SQ_WAIT, Linux
    /// 5.10, returns once the poller consumed one or more), waking the poller when it sleeps.
    pub(super) fn wait_for_sq_space(&mut self, slots: u32) -> Result<()> {
        while self.sq.free_slots() < slots {
            let mut flags = IoringEnterFlags::SQ_WAIT;
            if self.sqpoll_needs_wakeup() {
                flags |= IoringEnterFlags::SQ_WAKEUP;
                self.stats.sqpoll_wakeups += 1;
            }
            self.enter(0, 0, flags, None, 0)?;
        }
        Ok(())
    }

    /// Queues `sqes` as one link chain: IOSQE_IO_LINK (or IOSQE_IO_HARDLINK with `hard`) on
    /// every SQE but the last, all or none. A chain split by a submit between its SQEs would
    /// end early (the kernel ends a chain at the end of each submission), so this refuses with
    /// [`Error::SubmissionQueueFull`] before pushing anything when the SQ lacks room.
    ///
    /// A plain link breaks at the first failure (an error, or a short read or write): the
    /// rest complete with `-ECANCELED`. A hard link runs the rest regardless.
    ///
    /// # Safety
    /// As for [`Ring::push`], for every SQE of the chain (a LINK_TIMEOUT's timespec included).
    ///
    /// # References
    /// io_uring_enter(2), IOSQE_IO_LINK and IOSQE_IO_HARDLINK.
    pub(crate) unsafe fn push_chain_impl(&mut self, sqes: &[Sqe], hard: bool) -> Result<()> {
        if sqes.len() as u64 > u64::from(self.sq.free_slots()) {
            return Err(Error::SubmissionQueueFull);
        }
        let link = if hard {
            IoringSqeFlags::IO_HARDLINK
        } else {
            IoringSqeFlags::IO_LINK
        };
        for (i, sqe) in sqes.iter().enumerate() {
            let sqe = if i + 1 < sqes.len() {
                sqe.flags(link)
            } else {
                *sqe
            };
            // SAFETY: forwarded from the caller; room for every SQE was checked above, so
            // this push cannot fail halfway through the chain.
            unsafe { self.push_impl(&sqe)? };
        }
        Ok(())
    }

    /// Like [`Ring::push_chain`], but when the SQ lacks room for the whole chain, submits what
    /// is queued (and with SQPOLL waits for the poller to make room) first, so the chain still
    /// goes in one piece. A chain longer than the SQ can never fit: [`Error::InvalidConfig`].
    ///
    /// # Safety
    /// As for [`Ring::push`], for every SQE of the chain.
    pub(crate) unsafe fn push_chain_or_submit_impl(
        &mut self,
        sqes: &[Sqe],
        hard: bool,
    ) -> Result<()> {
        if sqes.len() as u64 > u64::from(self.sq.entries()) {
            return Err(Error::InvalidConfig("a link chain longer than the SQ"));
        }
        // SAFETY: forwarded from the caller.
        match unsafe { self.push_chain_impl(sqes, hard) } {
            Err(Error::SubmissionQueueFull) => {
                self.submit()?;
                if self.sqpoll {
                    self.wait_for_sq_space(sqes.len() as u32)?;
                }
                // SAFETY: forwarded from the caller.
                unsafe { self.push_chain_impl(sqes, hard) }
            }
            other => other,
        }
    }

    /// SQEs published but not yet consumed by the kernel.
    pub(super) fn sq_pending(&mut self) -> u32 {
        let free = self.sq.free_slots();
        self.sq.entries() - free
    }

    pub(super) fn sqpoll_needs_wakeup(&self) -> bool {
        // A full fence between our tail store (publish) and this load of the flags: pairs with
        // the kernel's barrier between setting NEED_WAKEUP and re-checking the tail before the
        // poller sleeps. Without it the poller may sleep with our entries queued (PITFALLS.md,
        // "SQPOLL wake-up needs a full fence").
        fence(Ordering::SeqCst);
        IoringSqFlags::from_bits_retain(self.sq_flags.load(Ordering::Relaxed))
            .contains(IoringSqFlags::NEED_WAKEUP)
    }
}
