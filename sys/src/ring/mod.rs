//! The io_uring instance: setup, the shared-memory mappings, submission, completion.
//!
//! [`Ring`] owns the ring fd and its mappings and drives both queues through
//! `ringwork_core::ring`'s index protocol over the kernel's `AtomicU32`s. It does not decide
//! what to submit; servers do that through core's state machines and `crate::sqe`.
//!
//! # References
//! - io_uring_setup(2), io_uring_enter(2), io_uring(7)
//! - liburing's `src/setup.c` and `src/queue.c` for the mapping sizes and the SQPOLL
//!   wake-up protocol.
//!
//! One file per role: `setup.rs` ([`RingParams`], [`Ring::new`]), `submit.rs` (queueing SQEs,
//! SQPOLL's wake-ups), `enter.rs` (io_uring_enter and its retries), `completion.rs` ([`Cqe`],
//! harvesting the CQ), `probe.rs` (what the kernel can do), `teardown.rs` ([`Ring::quiesce`],
//! `Drop`). This file holds the [`Ring`] itself and its plain accessors.

use core::sync::atomic::AtomicU32;
use std::collections::VecDeque;
use std::time::Duration;

use ringwork_core::ring::{Consumer, Producer};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
#[cfg(test)]
use rustix::io::Errno;
use rustix::io_uring::{
    io_uring_cqe, io_uring_params, io_uring_sqe, IoringFeatureFlags, IoringSetupFlags,
};

use crate::mmap::Mmap;
use crate::op::OwnedOps;
use crate::register::Registered;

mod completion;
mod enter;
mod probe;
mod setup;
mod submit;
mod teardown;

pub use completion::{Completions, Cqe, SelectedBuf};
pub use probe::IORING_FEAT_MIN_TIMEOUT;
pub use setup::{LegacyFeatures, RingParams, SqPoll, TaskRun, DEFAULT_TEARDOWN_TIMEOUT};
pub use teardown::QUIESCE_CANCEL_USER_DATA;

/// What the ring has done, for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// io_uring_enter calls made.
    pub enters: u64,
    /// SQEs handed to the kernel.
    pub submitted: u64,
    /// CQEs harvested.
    pub completions: u64,
    /// Times the kernel said its CQ backlog was in use (IORING_SQ_CQ_OVERFLOW) and we flushed it.
    pub overflow_flushes: u64,
    /// io_uring_enter calls refused with EBUSY/EAGAIN and retried after reaping.
    pub busy_retries: u64,
    /// Times the kernel's CQ overflow backlog was seen in use (IORING_SQ_CQ_OVERFLOW set when
    /// we looked, before entering or harvesting): the CQ really was full. PITFALLS.md, "CQ overflow
    /// is silent unless checked".
    pub overflow_seen: u64,
    /// SQEs pushed with IOSQE_CQE_SKIP_SUCCESS (Linux 5.17), which complete silently when
    /// they succeed: `submitted - skip_success` CQEs are owed, not `submitted`.
    pub skip_success: u64,
    /// SQPOLL wake-ups (IORING_ENTER_SQ_WAKEUP).
    pub sqpoll_wakeups: u64,
}

/// An io_uring instance.
///
/// ```
/// use ringwork_core::token::UserData;
/// use ringwork_sys::{RingParams, SafeSqe};
///
/// let mut ring = RingParams::new(8).build()?;
/// ring.push_safe(SafeSqe::nop().user_data(UserData(42)))?;
/// ring.submit_and_wait(1)?;
/// let cqe = ring.completions().next().expect("the nop completed");
/// assert_eq!((cqe.user_data(), cqe.result()), (UserData(42), Ok(0)));
/// assert_eq!(ring.in_flight(), 0);
/// # Ok::<(), ringwork_sys::Error>(())
/// ```
///
/// # Operations in flight, and dropping
/// The ring counts the operations it has not seen finish ([`Ring::in_flight`]): one per
/// pushed SQE, less one per harvested CQE without IORING_CQE_F_MORE. That one rule covers
/// single-shot requests, multishot ones (only the last CQE lacks F_MORE), SEND_ZC (the result
/// carries F_MORE when a notification follows), link chains (every member posts its CQE) and
/// cancels (the cancel posts one, and so does its target). An SQE pushed with
/// IOSQE_CQE_SKIP_SUCCESS stays counted, because a success posts nothing: a ring that used
/// them can never prove itself idle. (The ring's own PROVIDE_BUFFERS SQEs with SKIP_SUCCESS
/// are the exception: they complete at submission, so they are not counted, and idle only
/// needs them submitted.) CQEs that no SQE of this ring asked for, such as
/// IORING_OP_MSG_RING's from another ring, are not supported.
///
/// **A Ring dropped with operations in flight quiesces first or leaks what it cannot prove
/// idle.** `Drop` runs [`Ring::quiesce`] for the ring's teardown timeout
/// ([`RingParams::teardown_timeout`], [`DEFAULT_TEARDOWN_TIMEOUT`]): it cancels everything
/// and reaps until nothing is in flight. Then, when idle, it unregisters and frees what it
/// owns; when not (the timeout passed, completions were lost, or SKIP_SUCCESS SQEs made the
/// count unprovable) it leaks every piece of memory an SQE may name (provided buffers and
/// their rings, fixed buffers) rather than hand it back to the allocator while the kernel may
/// still write it, prints one line saying so, and closes the fd. Memory the *caller* lent to
/// SQEs is the caller's to keep alive, as [`Ring::push`] says; dropping the ring first
/// (quiescing it) is how a caller ends that duty early. A ring set up with
/// IORING_SETUP_SINGLE_ISSUER can only quiesce on the thread that created it: dropped on
/// another with operations in flight, it leaks.
///
/// Field order matters for drop: registrations are undone (in `Drop`, through the still-open
/// fd) before the mappings are unmapped and the fd is closed.
pub struct Ring {
    /// Memory that SQEs pushed with [`Ring::push_safe`] name, until their last CQE;
    /// `Drop` frees it only once the ring is idle (see `leak_owned_memory`).
    owned: OwnedOps,
    registered: Registered,
    sq: Producer<'static, AtomicU32>,
    cq: Consumer<'static, AtomicU32>,
    sq_flags: &'static AtomicU32,
    sq_dropped: &'static AtomicU32,
    cq_overflow: &'static AtomicU32,
    sqes: *mut io_uring_sqe,
    cqes: *const io_uring_cqe,
    /// CQEs moved out of the CQ while retrying an EBUSY submit; served before the CQ.
    stash: VecDeque<Cqe>,
    stats: RingStats,
    dropped_seen: u32,
    /// Operations not yet seen finished; see the type's docs.
    in_flight: u64,
    /// The ring's own PROVIDE_BUFFERS SQEs, sent without CQE_SKIP_SUCCESS (an older kernel,
    /// or [`LegacyFeatures::no_cqe_skip`]), whose CQEs have not come back yet.
    provide_cqes_owed: u64,
    /// [`QUIESCE_CANCEL_USER_DATA`] cancels whose CQEs have not come back yet.
    quiesce_cancels_owed: u32,
    /// IOSQE_CQE_SKIP_SUCCESS is usable for the ring's PROVIDE_BUFFERS SQEs.
    provide_skips_success: bool,
    /// IORING_ASYNC_CANCEL_FD / _ALL / _ANY (Linux 5.19) are usable.
    cancel_fd: bool,
    /// IORING_ASYNC_CANCEL_FD_FIXED (Linux 6.0) is usable.
    cancel_fd_fixed: bool,
    teardown_timeout: Duration,
    /// Tests only: errnos the next io_uring_enter calls return instead of entering.
    #[cfg(test)]
    injected_enter_errors: Vec<Errno>,
    params: io_uring_params,
    sqpoll: bool,
    _sqe_map: Mmap,
    _cq_map: Option<Mmap>,
    _sq_map: Mmap,
    fd: OwnedFd,
}

// SAFETY: the raw pointers and 'static views point into mappings owned by the Ring itself;
// moving the Ring to another thread moves them all together. (Not Sync: one issuer.)
unsafe impl Send for Ring {}

impl Ring {
    /// The ring fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// What the kernel reported it supports (IORING_FEAT_*).
    pub fn features(&self) -> IoringFeatureFlags {
        self.params.features
    }

    /// The setup flags in force.
    pub fn setup_flags(&self) -> IoringSetupFlags {
        self.params.flags
    }

    /// SQ size.
    pub fn sq_entries(&self) -> u32 {
        self.params.sq_entries
    }

    /// CQ size.
    pub fn cq_entries(&self) -> u32 {
        self.params.cq_entries
    }

    /// Counters since setup.
    pub fn stats(&self) -> RingStats {
        self.stats
    }

    /// Operations pushed whose last CQE has not been harvested yet (see the type's docs for
    /// the counting rule). A completion counts as harvested once the ring took it out of the
    /// CQ, also into its stash, before [`Ring::completions`] hands it over.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    pub(crate) fn registered_mut(&mut self) -> &mut Registered {
        &mut self.registered
    }

    pub(crate) fn registered(&self) -> &Registered {
        &self.registered
    }

    pub(crate) fn owned_mut(&mut self) -> &mut OwnedOps {
        &mut self.owned
    }

    pub(crate) fn owned_ref(&self) -> &OwnedOps {
        &self.owned
    }
}
