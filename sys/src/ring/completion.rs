//! Completions: [`Cqe`] and the provided buffer it may name, harvesting the CQ (the ring's
//! own completions consumed, the in-flight count kept), the stash, overflow checks.

use core::sync::atomic::Ordering;

use ringwork_core::buf::BufId;
use ringwork_core::errno::RawErrno;
use ringwork_core::token::UserData;
use rustix::io_uring::{IoringCqeFlags, IoringSqFlags, IORING_CQE_BUFFER_SHIFT};

use crate::error::{Error, Result};
use crate::register::PROVIDE_BUFFERS_USER_DATA;

use super::{Ring, QUIESCE_CANCEL_USER_DATA};

/// One completion, copied out of the CQ.
///
/// Only the ring makes one, and it is neither `Copy` nor `Clone`: the provided buffer a
/// receive completion names can be taken once ([`Cqe::take_buffer`]), which is what lets
/// [`crate::ProvidedBuffers::take`] hand out a lease safely.
#[derive(Debug, PartialEq, Eq)]
pub struct Cqe {
    user_data: UserData,
    res: i32,
    flags: IoringCqeFlags,
}

/// The provided buffer a completion filled, taken from its [`Cqe`] (once): what
/// [`crate::ProvidedBuffers::take`] needs to hand out its lease.
#[derive(Debug, PartialEq, Eq)]
pub struct SelectedBuf {
    id: BufId,
    len: u32,
    buf_more: bool,
}

impl SelectedBuf {
    /// The buffer the kernel picked.
    pub fn id(&self) -> BufId {
        self.id
    }

    /// Bytes the completion put there (for a bundle: across all its buffers).
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True when the completion put no bytes there (an EOF that still named a buffer).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// IORING_CQE_F_BUF_MORE: with incremental consumption, the kernel keeps using it.
    pub fn buf_more(&self) -> bool {
        self.buf_more
    }
}

impl Cqe {
    pub(crate) fn new(user_data: UserData, res: i32, flags: IoringCqeFlags) -> Self {
        Self {
            user_data,
            res,
            flags,
        }
    }

    /// The submitting SQE's `user_data`.
    #[inline]
    pub fn user_data(&self) -> UserData {
        self.user_data
    }

    /// A count, or `-errno`.
    #[inline]
    pub fn res(&self) -> i32 {
        self.res
    }

    /// IORING_CQE_F_* flags.
    #[inline]
    pub fn flags(&self) -> IoringCqeFlags {
        self.flags
    }

    /// The result as a count or a typed errno.
    #[inline]
    pub fn result(&self) -> core::result::Result<u32, RawErrno> {
        RawErrno::from_res(self.res)
    }

    /// IORING_CQE_F_MORE: a multishot request is still armed (or, for SEND_ZC, a notification
    /// follows).
    #[inline]
    pub fn more(&self) -> bool {
        self.flags.contains(IoringCqeFlags::MORE)
    }

    /// IORING_CQE_F_NOTIF: this is a SEND_ZC notification; the buffer is ours again.
    #[inline]
    pub fn is_notification(&self) -> bool {
        self.flags.contains(IoringCqeFlags::NOTIF)
    }

    /// IORING_CQE_F_BUF_MORE (Linux 6.12): with incremental buffer consumption, the kernel
    /// has not finished with this completion's buffer.
    #[inline]
    pub fn buf_more(&self) -> bool {
        self.flags.bits() & crate::register::IORING_CQE_F_BUF_MORE != 0
    }

    /// The provided buffer the kernel picked (IORING_CQE_F_BUFFER), if any and not taken.
    #[inline]
    pub fn buffer_id(&self) -> Option<BufId> {
        self.flags
            .contains(IoringCqeFlags::BUFFER)
            .then(|| BufId((self.flags.bits() >> IORING_CQE_BUFFER_SHIFT) as u16))
    }

    /// Takes the provided buffer the kernel picked, once: a second call returns `None`.
    pub fn take_buffer(&mut self) -> Option<SelectedBuf> {
        let id = self.buffer_id()?;
        self.flags.remove(IoringCqeFlags::BUFFER);
        Some(SelectedBuf {
            id,
            len: self.result().unwrap_or(0),
            buf_more: self.buf_more(),
        })
    }
}

/// Iterator over ready completions; see [`Ring::completions`].
pub struct Completions<'r> {
    ring: &'r mut Ring,
}

impl Iterator for Completions<'_> {
    type Item = Cqe;

    fn next(&mut self) -> Option<Cqe> {
        let cqe = match self.ring.stash.pop_front() {
            Some(c) => Some(c),
            None => self.ring.pop_cq(),
        };
        if cqe.is_some() {
            self.ring.stats.completions += 1;
        }
        cqe
    }
}

impl Drop for Completions<'_> {
    fn drop(&mut self) {
        self.ring.cq.release();
    }
}

impl Ring {
    /// Moves every ready CQE into the stash; returns how many.
    pub(super) fn stash_ready(&mut self) -> u32 {
        let mut n = 0;
        while let Some(cqe) = self.pop_cq() {
            self.stash.push_back(cqe);
            n += 1;
        }
        self.cq.release();
        n
    }

    /// True when the kernel holds completions in its overflow backlog (IORING_SQ_CQ_OVERFLOW).
    pub fn cq_overflowed(&self) -> bool {
        IoringSqFlags::from_bits_retain(self.sq_flags.load(Ordering::Acquire))
            .contains(IoringSqFlags::CQ_OVERFLOW)
    }

    /// Completions the kernel dropped outright (the CQ ring's overflow counter), and invalid
    /// SQEs it skipped (the SQ's dropped counter).
    pub fn dropped(&self) -> (u32, u32) {
        (
            self.cq_overflow.load(Ordering::Acquire),
            self.sq_dropped.load(Ordering::Acquire),
        )
    }

    /// Errors once if the kernel dropped completions since the last check: never silent.
    pub fn check_overflow(&mut self) -> Result<()> {
        let dropped = self.cq_overflow.load(Ordering::Acquire);
        if dropped != self.dropped_seen {
            self.dropped_seen = dropped;
            return Err(Error::CompletionsLost { dropped });
        }
        Ok(())
    }

    /// Takes the next CQE out of the CQ, with its bookkeeping ([`Ring::harvested`]); the
    /// completions that are the ring's own are consumed here and never returned.
    fn pop_cq(&mut self) -> Option<Cqe> {
        loop {
            let slot = self.cq.peek()?;
            // SAFETY: `slot < cq_entries`; the Acquire load of the tail inside peek() makes the
            // kernel's write of this entry visible; we copy it before advancing past it.
            let raw = unsafe { &*self.cqes.add(slot as usize) };
            let mut user_data = UserData(raw.user_data.u64_());
            let (res, flags) = (raw.res, raw.flags);
            self.cq.advance(1);
            if crate::op::is_internal(user_data) {
                // An operation whose memory the ring holds: give the caller its own user_data
                // back, and when the operation has ended, move its memory out of flight.
                let more = flags.contains(IoringCqeFlags::MORE);
                match self.owned.on_cqe(user_data, res, more) {
                    Some(ud) => user_data = ud,
                    None => debug_assert!(false, "a CQE for unknown operation memory"),
                }
            }
            let cqe = Cqe::new(user_data, res, flags);
            if self.harvested(&cqe) {
                return Some(cqe);
            }
            self.stats.completions += 1;
        }
    }

    /// The in-flight count for a CQE just taken from the CQ (the kernel is done with it
    /// whether the caller sees it now or from the stash later); false for the ring's own
    /// completions, which the caller never sees: a PROVIDE_BUFFERS success sent without
    /// SKIP_SUCCESS, and quiesce's cancels.
    fn harvested(&mut self, cqe: &Cqe) -> bool {
        let own_provide = cqe.user_data() == PROVIDE_BUFFERS_USER_DATA;
        // A SKIP_SUCCESS PROVIDE_BUFFERS left the count when pushed: its failure CQE does not
        // come off it again.
        let counted = !(own_provide && self.provide_skips_success);
        if counted && !cqe.more() {
            debug_assert!(
                self.in_flight > 0,
                "a CQE no SQE of this ring asked for: {cqe:?}"
            );
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        if own_provide && !self.provide_skips_success {
            self.provide_cqes_owed = self.provide_cqes_owed.saturating_sub(1);
            // A failure still goes to the caller, as with SKIP_SUCCESS: the buffers it named
            // never reached the kernel.
            return cqe.res() < 0;
        }
        if cqe.user_data() == QUIESCE_CANCEL_USER_DATA {
            self.quiesce_cancels_owed = self.quiesce_cancels_owed.saturating_sub(1);
            return false;
        }
        true
    }

    /// Completions ready now, stashed ones first. When the CQ is empty but the kernel reports
    /// a backlog, flushes it first. Consumed entries are handed back to the kernel when the
    /// iterator is dropped.
    pub fn completions(&mut self) -> Completions<'_> {
        if self.cq_overflowed() {
            self.stats.overflow_seen += 1;
            if self.stash.is_empty() && self.cq.ready() == 0 {
                // Errors here surface on the next submit; the backlog stays in the kernel.
                let _ = self.flush_overflow();
            }
        }
        Completions { ring: self }
    }

    /// Completions ready to harvest without entering the kernel (at most: some CQEs in the
    /// CQ may be the ring's own, which [`Ring::completions`] consumes without yielding).
    pub fn ready(&self) -> u32 {
        self.stash.len() as u32 + self.cq.ready()
    }
}
