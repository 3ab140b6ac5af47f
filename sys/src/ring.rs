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

use core::sync::atomic::{fence, AtomicU32, Ordering};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ringwork_core::buf::BufId;
use ringwork_core::errno::RawErrno;
use ringwork_core::ring::{Consumer, Producer};
use ringwork_core::token::UserData;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::io::Errno;
use rustix::io_uring::{
    io_uring_cqe, io_uring_enter, io_uring_enter_arg, io_uring_getevents_arg, io_uring_params,
    io_uring_ptr, io_uring_setup, io_uring_sqe, IoringCqeFlags, IoringEnterFlags,
    IoringFeatureFlags, IoringOp, IoringSetupFlags, IoringSqFlags, IoringSqeFlags,
    IORING_CQE_BUFFER_SHIFT, IORING_OFF_CQ_RING, IORING_OFF_SQES, IORING_OFF_SQ_RING,
};

use crate::error::{Error, Result};
use crate::mmap::Mmap;

/// IORING_FEAT_MIN_TIMEOUT (Linux 6.12): `io_uring_getevents_arg.min_wait_usec` is honoured.
/// Value from include/uapi/linux/io_uring.h (`#define IORING_FEAT_MIN_TIMEOUT (1U << 15)`);
/// rustix 1.1 has no constant for it.
pub const IORING_FEAT_MIN_TIMEOUT: IoringFeatureFlags =
    IoringFeatureFlags::from_bits_retain(1 << 15);
use crate::op::OwnedOps;
use crate::register::{Registered, PROVIDE_BUFFERS_USER_DATA};
use crate::sqe::Sqe;

/// `user_data` of the IORING_OP_ASYNC_CANCEL that [`Ring::quiesce`] submits; its completion
/// is the ring's own and never reaches the caller. Reserved, like
/// [`PROVIDE_BUFFERS_USER_DATA`].
pub const QUIESCE_CANCEL_USER_DATA: UserData = UserData(u64::MAX - 2);

/// How long a dropped [`Ring`] waits for its operations to finish before it leaks their
/// memory instead; see [`RingParams::teardown_timeout`].
pub const DEFAULT_TEARDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// While quiescing, how often a cancel is sent again when operations are still in flight:
/// a link chain's later members, or work that was already running at the first cancel, only
/// become cancellable later.
const QUIESCE_CANCEL_EVERY: Duration = Duration::from_millis(50);

/// How to set a ring up. `RingParams::new(sq_entries)`, then setters, then [`RingParams::build`].
#[derive(Clone, Debug)]
pub struct RingParams {
    sq_entries: u32,
    cq_entries: Option<u32>,
    sqpoll: Option<SqPoll>,
    single_issuer: bool,
    defer_taskrun: bool,
    coop_taskrun: bool,
    legacy: LegacyFeatures,
    teardown_timeout: Duration,
}

/// Kernel features a ring leaves unused even where the kernel has them, so that the
/// fallbacks written for older kernels run, and are tested, on this one. The default uses
/// everything the kernel offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LegacyFeatures {
    /// Act as if IORING_FEAT_CQE_SKIP (Linux 5.17) were missing: the ring's
    /// IORING_OP_PROVIDE_BUFFERS SQEs go without IOSQE_CQE_SKIP_SUCCESS, and the ring consumes
    /// their success completions itself ([`Ring::skips_provide_success`]).
    pub no_cqe_skip: bool,
    /// Act as if IORING_ASYNC_CANCEL_FD / _ALL / _ANY (Linux 5.19) were missing:
    /// [`Ring::can_cancel_fd`] says no, and [`Ring::quiesce`] cannot cancel, only wait.
    pub no_cancel_fd: bool,
}

/// Kernel-side submission polling (IORING_SETUP_SQPOLL, Linux 5.1; unprivileged since 5.11).
#[derive(Clone, Copy, Debug)]
pub struct SqPoll {
    /// Milliseconds the poller spins without work before it sleeps (`sq_thread_idle`).
    pub idle_ms: u32,
    /// CPU to pin the poller to (IORING_SETUP_SQ_AFF).
    pub cpu: Option<u32>,
}

impl RingParams {
    /// A ring with `sq_entries` submission slots (a power of two) and, unless
    /// [`RingParams::cq_entries`] says otherwise, a completion queue twice that size.
    pub fn new(sq_entries: u32) -> Self {
        Self {
            sq_entries,
            cq_entries: None,
            sqpoll: None,
            single_issuer: false,
            defer_taskrun: false,
            coop_taskrun: false,
            legacy: LegacyFeatures::default(),
            teardown_timeout: DEFAULT_TEARDOWN_TIMEOUT,
        }
    }

    /// Kernel features to leave unused, to exercise the older kernels' paths on this one.
    pub fn legacy_features(mut self, legacy: LegacyFeatures) -> Self {
        self.legacy = legacy;
        self
    }

    /// How long dropping the ring may wait ([`Ring::quiesce`]) for its operations in flight
    /// before it leaks the memory they may name; [`DEFAULT_TEARDOWN_TIMEOUT`] unless set.
    pub fn teardown_timeout(mut self, timeout: Duration) -> Self {
        self.teardown_timeout = timeout;
        self
    }

    /// Completion-queue size (IORING_SETUP_CQSIZE, Linux 5.5); must be at least twice the SQ.
    pub fn cq_entries(mut self, n: u32) -> Self {
        self.cq_entries = Some(n);
        self
    }

    /// Enables SQPOLL.
    pub fn sqpoll(mut self, sqpoll: SqPoll) -> Self {
        self.sqpoll = Some(sqpoll);
        self
    }

    /// IORING_SETUP_SINGLE_ISSUER (Linux 6.0): only the creating thread submits.
    pub fn single_issuer(mut self, on: bool) -> Self {
        self.single_issuer = on;
        self
    }

    /// IORING_SETUP_DEFER_TASKRUN (Linux 6.1; needs SINGLE_ISSUER): completion work runs only
    /// when this thread enters the kernel to wait.
    pub fn defer_taskrun(mut self, on: bool) -> Self {
        self.defer_taskrun = on;
        self
    }

    /// IORING_SETUP_COOP_TASKRUN (Linux 5.19): no IPI to interrupt us for task work.
    pub fn coop_taskrun(mut self, on: bool) -> Self {
        self.coop_taskrun = on;
        self
    }

    /// Sets the ring up.
    pub fn build(self) -> Result<Ring> {
        Ring::new(self)
    }

    /// Sets up the ring of one thread-per-core server worker, the way both Ringwork servers
    /// want it (on top of what `self` already says: sizes):
    /// - with `sqpoll`: IORING_SETUP_SQPOLL alone (the kernel refuses DEFER_TASKRUN with
    ///   SQPOLL: completion work would wait for a thread that never submits), and no fallback:
    ///   a run that asked for SQPOLL and silently ran without it would mislead, so a refusal
    ///   is [`Error::SqPollRefused`], naming the likely cause;
    /// - else as `task_run` says, falling back along [`TaskRun::Defer`] → [`TaskRun::Coop`] →
    ///   [`TaskRun::Plain`] while the kernel refuses; the first refusal comes back beside the
    ///   ring for the caller to log.
    ///
    /// The ring's [`Ring::setup_flags`] say what was granted.
    pub fn build_server(
        self,
        sqpoll: Option<SqPoll>,
        task_run: TaskRun,
    ) -> Result<(Ring, Option<Error>)> {
        if let Some(sp) = sqpoll {
            return match self.sqpoll(sp).build() {
                Ok(ring) => Ok((ring, None)),
                Err(Error::Syscall { errno, .. }) => {
                    Err(Error::SqPollRefused { errno, cpu: sp.cpu })
                }
                Err(e) => Err(e),
            };
        }
        let mut refused = None;
        let mut want = task_run;
        loop {
            let params = match want {
                TaskRun::Defer => self.clone().single_issuer(true).defer_taskrun(true),
                TaskRun::Coop => self.clone().single_issuer(true).coop_taskrun(true),
                TaskRun::Plain => return Ok((self.build()?, refused)),
            };
            match params.build() {
                Ok(ring) => return Ok((ring, refused)),
                Err(e @ (Error::Unsupported { .. } | Error::Syscall { .. })) => {
                    refused.get_or_insert(e);
                    want = match want {
                        TaskRun::Defer => TaskRun::Coop,
                        _ => TaskRun::Plain,
                    };
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// How completion work (task work) reaches a server worker's thread; see
/// [`RingParams::build_server`]. All but `Plain` add IORING_SETUP_SINGLE_ISSUER (Linux 6.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskRun {
    /// IORING_SETUP_DEFER_TASKRUN (Linux 6.1): completion work waits until the thread enters
    /// the kernel to wait for completions, and runs there in a batch: no interruptions.
    Defer,
    /// IORING_SETUP_COOP_TASKRUN (Linux 5.19): completion work is not forced onto the thread
    /// with an interrupt while it runs in user space; it runs at its next kernel entry.
    Coop,
    /// Neither: the kernel signals the thread (task_work with TWA_SIGNAL) as work arrives.
    Plain,
}

impl TaskRun {
    /// The best mode a server may ask for, given which of the two a person turned off
    /// (`--disable defer-taskrun`, `--disable coop-taskrun`).
    pub fn allowed(defer: bool, coop: bool) -> Self {
        match (defer, coop) {
            (true, _) => TaskRun::Defer,
            (false, true) => TaskRun::Coop,
            (false, false) => TaskRun::Plain,
        }
    }
}

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
    /// Sets up a ring as `params` say.
    pub fn new(params: RingParams) -> Result<Self> {
        let RingParams {
            sq_entries,
            cq_entries,
            sqpoll,
            single_issuer,
            defer_taskrun,
            coop_taskrun,
            legacy,
            teardown_timeout,
        } = params;
        if !sq_entries.is_power_of_two() {
            return Err(Error::InvalidConfig("sq entries must be a power of two"));
        }
        let cq_entries = cq_entries.unwrap_or(sq_entries * 2);
        if cq_entries < sq_entries * 2 || !cq_entries.is_power_of_two() {
            return Err(Error::InvalidConfig(
                "cq entries must be a power of two at least twice the sq entries",
            ));
        }
        let mut p = io_uring_params::default();
        p.flags = IoringSetupFlags::CQSIZE;
        p.cq_entries = cq_entries;
        if let Some(sp) = sqpoll {
            p.flags |= IoringSetupFlags::SQPOLL;
            p.sq_thread_idle = sp.idle_ms;
            if let Some(cpu) = sp.cpu {
                p.flags |= IoringSetupFlags::SQ_AFF;
                p.sq_thread_cpu = cpu;
            }
        }
        if single_issuer {
            p.flags |= IoringSetupFlags::SINGLE_ISSUER;
        }
        if defer_taskrun {
            p.flags |= IoringSetupFlags::DEFER_TASKRUN;
        }
        if coop_taskrun {
            p.flags |= IoringSetupFlags::COOP_TASKRUN;
        }
        // SAFETY: ATTACH_WQ is never set, so wq_fd is not read.
        let fd = unsafe { io_uring_setup(sq_entries, &mut p) }.map_err(|errno| match errno {
            Errno::INVAL if defer_taskrun || single_issuer || coop_taskrun => Error::unsupported(
                "IORING_SETUP_SINGLE_ISSUER/DEFER_TASKRUN/COOP_TASKRUN",
                "6.1",
            ),
            errno => Error::Syscall {
                what: "io_uring_setup",
                errno,
            },
        })?;

        let sq_len = p.sq_off.array as usize + p.sq_entries as usize * 4;
        let cq_len =
            p.cq_off.cqes as usize + p.cq_entries as usize * core::mem::size_of::<io_uring_cqe>();
        let single = p.features.contains(IoringFeatureFlags::SINGLE_MMAP);
        let (sq_map, cq_map) = if single {
            let len = sq_len.max(cq_len);
            (
                Mmap::ring_region(&fd, len, IORING_OFF_SQ_RING, "mmap rings")?,
                None,
            )
        } else {
            (
                Mmap::ring_region(&fd, sq_len, IORING_OFF_SQ_RING, "mmap SQ ring")?,
                Some(Mmap::ring_region(
                    &fd,
                    cq_len,
                    IORING_OFF_CQ_RING,
                    "mmap CQ ring",
                )?),
            )
        };
        let sqe_map = Mmap::ring_region(
            &fd,
            p.sq_entries as usize * core::mem::size_of::<io_uring_sqe>(),
            IORING_OFF_SQES,
            "mmap SQE array",
        )?;
        let cq_region = cq_map.as_ref().unwrap_or(&sq_map);

        // SAFETY (for every `&*` below): the offsets come from the kernel for these mappings,
        // `Mmap::at` bounds-checks them, the fields are 4-byte aligned u32s the kernel
        // accesses atomically, and the mappings live exactly as long as the Ring (they are
        // fields of it, dropped after every view). The 'static lifetime never escapes the Ring.
        let atomic = |m: &Mmap, off: u32| -> &'static AtomicU32 {
            // SAFETY: see above: kernel-given, bounds-checked, aligned, outlived by the Ring.
            unsafe { &*m.at::<AtomicU32>(off) }
        };
        let sq_head = atomic(&sq_map, p.sq_off.head);
        let sq_tail = atomic(&sq_map, p.sq_off.tail);
        let sq_flags = atomic(&sq_map, p.sq_off.flags);
        let sq_dropped = atomic(&sq_map, p.sq_off.dropped);
        let cq_head = atomic(cq_region, p.cq_off.head);
        let cq_tail = atomic(cq_region, p.cq_off.tail);
        let cq_overflow = atomic(cq_region, p.cq_off.overflow);

        // Identity indirection: SQE slot i is array entry i, written once here, so that
        // submission only writes the SQE and the tail.
        let array: *mut u32 = sq_map.at(p.sq_off.array);
        for i in 0..p.sq_entries {
            // SAFETY: `array` has sq_entries u32s (sq_len above covers them); nothing else
            // writes it and the kernel reads it only for published entries.
            unsafe { array.add(i as usize).write(i) };
        }
        let cqes: *const io_uring_cqe = cq_region.at(p.cq_off.cqes);

        let mut ring = Self {
            owned: OwnedOps::default(),
            registered: Registered::default(),
            sq: Producer::new(sq_head, sq_tail, p.sq_entries),
            cq: Consumer::new(cq_head, cq_tail, p.cq_entries),
            sq_flags,
            sq_dropped,
            cq_overflow,
            sqes: sqe_map.as_ptr().cast(),
            cqes,
            stash: VecDeque::with_capacity(p.cq_entries as usize),
            stats: RingStats::default(),
            dropped_seen: 0,
            in_flight: 0,
            provide_cqes_owed: 0,
            quiesce_cancels_owed: 0,
            provide_skips_success: p.features.contains(IoringFeatureFlags::CQE_SKIP)
                && !legacy.no_cqe_skip,
            cancel_fd: false,
            cancel_fd_fixed: false,
            teardown_timeout,
            #[cfg(test)]
            injected_enter_errors: Vec::new(),
            params: p,
            sqpoll: sqpoll.is_some(),
            _sqe_map: sqe_map,
            _cq_map: cq_map,
            _sq_map: sq_map,
            fd,
        };
        // The cancel flags have no feature bit. They came in 5.19 together with
        // IORING_OP_SOCKET, and CANCEL_FD_FIXED in 6.0 together with IORING_OP_SEND_ZC: the
        // opcodes vouch. Without a probe (before 5.6) there is neither.
        if let Ok(probe) = ring.probe() {
            let (fd, fixed) = (
                probe.supports(IoringOp::Socket),
                probe.supports(IoringOp::SendZc),
            );
            ring.cancel_fd = fd && !legacy.no_cancel_fd;
            ring.cancel_fd_fixed = ring.cancel_fd && fixed;
        }
        Ok(ring)
    }

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

    /// True when IORING_OP_ASYNC_CANCEL takes IORING_ASYNC_CANCEL_FD | _ALL (Linux 5.19), so
    /// that [`Sqe::cancel_fd`] cancels every request on a plain descriptor. Without it that
    /// SQE fails (EINVAL) and cancels nothing: cancel each request by its `user_data`
    /// ([`Sqe::cancel`]) instead. A registered-file target needs more:
    /// [`Ring::can_cancel_fd_fixed`].
    pub fn can_cancel_fd(&self) -> bool {
        self.cancel_fd
    }

    /// True when [`Sqe::cancel_fd`] also takes a registered-file target
    /// (IORING_ASYNC_CANCEL_FD_FIXED, Linux 6.0).
    pub fn can_cancel_fd_fixed(&self) -> bool {
        self.cancel_fd_fixed
    }

    /// True when the ring's IORING_OP_PROVIDE_BUFFERS SQEs carry IOSQE_CQE_SKIP_SUCCESS
    /// (IORING_FEAT_CQE_SKIP, Linux 5.17) and so complete silently. Without it their success
    /// CQEs come back with [`PROVIDE_BUFFERS_USER_DATA`] and the ring consumes them itself;
    /// either way, a caller sees that `user_data` only on failure.
    pub fn skips_provide_success(&self) -> bool {
        self.provide_skips_success
    }

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

    pub(crate) fn registered_mut(&mut self) -> &mut Registered {
        &mut self.registered
    }

    pub(crate) fn registered(&self) -> &Registered {
        &self.registered
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

    pub(crate) fn owned_mut(&mut self) -> &mut OwnedOps {
        &mut self.owned
    }

    pub(crate) fn owned_ref(&self) -> &OwnedOps {
        &self.owned
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
    fn wait_for_sq_space(&mut self, slots: u32) -> Result<()> {
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

    /// Publishes queued SQEs and tells the kernel about them; returns how many it consumed.
    pub fn submit(&mut self) -> Result<u32> {
        self.submit_and_wait(0)
    }

    /// Publishes queued SQEs, submits them, and waits until at least `want` completions are
    /// ready (or stashed). One io_uring_enter for both, unless SQPOLL makes the submit free.
    pub fn submit_and_wait(&mut self, want: u32) -> Result<u32> {
        self.enter_with(want, None)
    }

    /// As [`Ring::submit_and_wait`], but gives up waiting after `timeout`
    /// (IORING_ENTER_EXT_ARG, Linux 5.11). A timeout is not an error.
    pub fn submit_and_wait_timeout(&mut self, want: u32, timeout: Duration) -> Result<u32> {
        if !self.features().contains(IoringFeatureFlags::EXT_ARG) {
            return Err(Error::unsupported("IORING_FEAT_EXT_ARG", "5.11"));
        }
        self.enter_with(want, Some(timeout))
    }

    /// True when SEND_ZC accepts IORING_SEND_ZC_REPORT_USAGE (Linux 6.2; SEND_ZC itself is
    /// 6.0, and the opcode probe cannot tell the two apart). Asks the kernel: a SEND_ZC with the
    /// flag to fd -1 fails in its preparation with EINVAL when the flag is unknown, and only
    /// later, at issue, with EBADF when it is known. Submits what is queued; completions of
    /// other requests met while waiting are kept for [`Ring::completions`].
    pub fn send_zc_reports_usage(&mut self) -> Result<bool> {
        const PROBE: UserData = UserData(u64::MAX);
        let sqe = Sqe::send_zc(crate::sqe::Target::Fd(-1), core::ptr::null(), 0, true, None)
            .user_data(PROBE);
        // SAFETY: zero bytes from a null pointer to no descriptor: the SQE names no memory.
        unsafe { self.push_or_submit_impl(&sqe)? };
        let mut others = Vec::new();
        let mut res = None;
        // A failure after preparation can still post a notification (the result then carries
        // F_MORE): wait for it too, so that nothing of the probe reaches the caller.
        let (mut more, mut notified) = (false, false);
        while res.is_none() || (more && !notified) {
            self.submit_and_wait(1)?;
            for cqe in self.completions() {
                if cqe.user_data != PROBE {
                    others.push(cqe);
                } else if cqe.is_notification() {
                    notified = true;
                } else {
                    res = Some(cqe.res);
                    more = cqe.more();
                }
            }
        }
        // Served before anything still in the CQ, in the order they were posted.
        for cqe in others.into_iter().rev() {
            self.stash.push_front(cqe);
            self.stats.completions -= 1;
        }
        Ok(res != Some(-Errno::INVAL.raw_os_error()))
    }

    /// True when the kernel honours a minimum wait ([`Ring::submit_and_wait_min`]).
    pub fn has_min_timeout(&self) -> bool {
        self.features().contains(IORING_FEAT_MIN_TIMEOUT)
    }

    /// Publishes and submits queued SQEs, then waits up to `min_wait` for `want` completions;
    /// once `min_wait` has passed, returns as soon as at least one completion is ready, or
    /// when `timeout` (counted from the call) expires. Without a `timeout` it waits for that
    /// first completion however long it takes. As liburing's
    /// `io_uring_submit_and_wait_min_timeout`: one io_uring_enter (IORING_ENTER_EXT_ARG with
    /// `min_wait_usec`), two when the kernel's min-wait timer ends an idle wait early and no
    /// `timeout` was given (the second is a plain wait for one completion).
    ///
    /// Needs IORING_FEAT_MIN_TIMEOUT (Linux 6.12); refused with [`Error::Unsupported`] without.
    /// A timeout is not an error.
    pub fn submit_and_wait_min(
        &mut self,
        want: u32,
        min_wait: Duration,
        timeout: Option<Duration>,
    ) -> Result<u32> {
        if !self.has_min_timeout() {
            return Err(Error::unsupported("IORING_FEAT_MIN_TIMEOUT", "6.12"));
        }
        // The kernel counts in whole microseconds and treats 0 as "no minimum".
        let min_wait_usec = u32::try_from(min_wait.as_micros())
            .unwrap_or(u32::MAX)
            .max(1);
        let n = self.enter_with_min(want, timeout, min_wait_usec)?;
        if timeout.is_none() && want > 0 && self.ready() == 0 {
            // With no overall timeout the kernel's min-wait timer ends the wait even when
            // nothing completed (io_cqring_min_timer_wakeup: "no general timeout ... we are
            // done"); our contract is to wait for the first completion, so wait for it.
            self.enter_with(1, None)?;
        }
        Ok(n)
    }

    fn enter_with(&mut self, want: u32, timeout: Option<Duration>) -> Result<u32> {
        self.enter_with_min(want, timeout, 0)
    }

    fn enter_with_min(
        &mut self,
        want: u32,
        timeout: Option<Duration>,
        min_wait_usec: u32,
    ) -> Result<u32> {
        self.sq.publish();
        self.check_overflow()?;
        if self.cq_overflowed() {
            self.stats.overflow_seen += 1;
        }
        let pending = self.sq_pending();
        let mut flags = IoringEnterFlags::empty();
        let mut to_submit = pending;
        if self.sqpoll {
            // The poller consumes the SQ itself; enter only to wake it or to wait.
            to_submit = 0;
            if pending > 0 && self.sqpoll_needs_wakeup() {
                flags |= IoringEnterFlags::SQ_WAKEUP;
                self.stats.sqpoll_wakeups += 1;
            }
        }
        let want = if self.stash.is_empty() { want } else { 0 };
        if want > 0 {
            flags |= IoringEnterFlags::GETEVENTS;
        }
        if to_submit == 0 && flags.is_empty() {
            self.stats.submitted += u64::from(pending);
            return Ok(pending);
        }
        // Taken before entering: the CQEs of PROVIDE_BUFFERS SQEs submitted by this very call
        // count toward `want` in the kernel too.
        let provide_cqes_owed = self.provide_cqes_owed > 0;
        let deadline = timeout.map(|t| Instant::now() + t);
        let n = self.enter(to_submit, want, flags, timeout, min_wait_usec)?;
        self.stats.submitted += u64::from(if self.sqpoll { pending } else { n });
        if want > 0 && provide_cqes_owed {
            // After a min-wait, one completion is what the caller waits for.
            let want = if min_wait_usec > 0 { 1 } else { want };
            self.wait_past_provide_cqes(want, deadline)?;
        }
        Ok(n)
    }

    /// The kernel counts the CQEs of the ring's own PROVIDE_BUFFERS SQEs (sent without
    /// SKIP_SUCCESS) toward a wait's `want`, but their successes never reach the caller: moves
    /// what is ready into the stash, which consumes them, and waits on until `want` others
    /// are there or `deadline` passes.
    fn wait_past_provide_cqes(&mut self, want: u32, deadline: Option<Instant>) -> Result<()> {
        loop {
            self.stash_ready();
            let have = self.stash.len() as u32;
            if have >= want {
                return Ok(());
            }
            let timeout = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Ok(()),
                },
            };
            self.enter(0, want - have, IoringEnterFlags::GETEVENTS, timeout, 0)?;
            if timeout.is_some() && self.cq.ready() == 0 {
                // Timed out with nothing new.
                return Ok(());
            }
        }
    }

    /// SQEs published but not yet consumed by the kernel.
    fn sq_pending(&mut self) -> u32 {
        let free = self.sq.free_slots();
        self.sq.entries() - free
    }

    fn sqpoll_needs_wakeup(&self) -> bool {
        // A full fence between our tail store (publish) and this load of the flags: pairs with
        // the kernel's barrier between setting NEED_WAKEUP and re-checking the tail before the
        // poller sleeps. Without it the poller may sleep with our entries queued (PITFALLS.md,
        // "SQPOLL wake-up needs a full fence").
        fence(Ordering::SeqCst);
        IoringSqFlags::from_bits_retain(self.sq_flags.load(Ordering::Relaxed))
            .contains(IoringSqFlags::NEED_WAKEUP)
    }

    /// io_uring_enter, retrying EINTR, and EBUSY/EAGAIN by reaping into the stash first.
    /// `timeout` or a nonzero `min_wait_usec` (only set when the kernel has
    /// IORING_FEAT_MIN_TIMEOUT) go through IORING_ENTER_EXT_ARG.
    fn enter(
        &mut self,
        to_submit: u32,
        min_complete: u32,
        flags: IoringEnterFlags,
        timeout: Option<Duration>,
        min_wait_usec: u32,
    ) -> Result<u32> {
        let (mut min_complete, mut flags) = (min_complete, flags);
        let mut busy_rounds = 0u32;
        loop {
            self.stats.enters += 1;
            let r = match self.injected_enter_error() {
                Some(errno) => Err(errno),
                None => self.enter_once(to_submit, min_complete, flags, timeout, min_wait_usec),
            };
            match r {
                Ok(n) => return Ok(n),
                Err(Errno::INTR) => continue,
                Err(Errno::TIME) => return Ok(0),
                Err(Errno::BADR) => return Err(self.completions_lost()),
                Err(Errno::BUSY) | Err(Errno::AGAIN) => {
                    // The CQ is backed up (or the overflow backlog is): move every ready CQE
                    // out of the way, flush the backlog, and try again.
                    self.stats.busy_retries += 1;
                    busy_rounds += 1;
                    let mut moved = self.stash_ready();
                    if moved == 0 && busy_rounds > 1 {
                        self.flush_overflow()?;
                        moved += self.stash_ready();
                    }
                    (min_complete, flags) = wait_left_after_stashing(min_complete, flags, moved);
                    if to_submit == 0 && (flags - IoringEnterFlags::EXT_ARG).is_empty() {
                        // Nothing to submit, and what the caller waits for is in the stash.
                        return Ok(0);
                    }
                    if busy_rounds > 1000 {
                        return Err(Error::Syscall {
                            what: "io_uring_enter (CQ backed up)",
                            errno: Errno::BUSY,
                        });
                    }
                }
                Err(errno) => {
                    return Err(Error::Syscall {
                        what: "io_uring_enter",
                        errno,
                    })
                }
            }
        }
    }

    /// One io_uring_enter, as [`Ring::enter`] describes.
    fn enter_once(
        &mut self,
        to_submit: u32,
        min_complete: u32,
        flags: IoringEnterFlags,
        timeout: Option<Duration>,
        min_wait_usec: u32,
    ) -> rustix::io::Result<u32> {
        if timeout.is_none() && min_wait_usec == 0 {
            // SAFETY: no EXT_ARG flag; every SQE was pushed under push()'s contract.
            return unsafe { io_uring_enter(&self.fd, to_submit, min_complete, flags) };
        }
        let ts = timeout.map(|t| rustix::fs::Timespec {
            tv_sec: t.as_secs() as i64,
            tv_nsec: t.subsec_nanos() as _,
        });
        let ts_ptr = ts.as_ref().map_or(core::ptr::null_mut(), |ts| {
            (ts as *const rustix::fs::Timespec).cast_mut().cast()
        });
        let arg = io_uring_getevents_arg {
            ts: io_uring_ptr::new(ts_ptr),
            min_wait_usec,
            ..Default::default()
        };
        // SAFETY: EXT_ARG with a valid getevents_arg whose ts (or null: no timeout) outlives
        // the call and no sigmask; SQEs were pushed under push()'s contract.
        unsafe {
            io_uring_enter_arg(
                &self.fd,
                to_submit,
                min_complete,
                flags | IoringEnterFlags::EXT_ARG,
                Some(&arg),
            )
        }
    }

    /// The kernel failed to keep completions (-EBADR from io_uring_enter: its overflow
    /// backlog could not take them) and dropped them: the count it reports, as an error.
    fn completions_lost(&mut self) -> Error {
        let dropped = self.cq_overflow.load(Ordering::Acquire);
        self.dropped_seen = dropped;
        Error::CompletionsLost { dropped }
    }

    /// Tests only: the next injected errno, which the next io_uring_enter returns instead of
    /// entering.
    #[cfg(test)]
    fn injected_enter_error(&mut self) -> Option<Errno> {
        (!self.injected_enter_errors.is_empty()).then(|| self.injected_enter_errors.remove(0))
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn injected_enter_error(&mut self) -> Option<Errno> {
        None
    }

    /// Moves every ready CQE into the stash; returns how many.
    fn stash_ready(&mut self) -> u32 {
        let mut n = 0;
        while let Some(cqe) = self.pop_cq() {
            self.stash.push_back(cqe);
            n += 1;
        }
        self.cq.release();
        n
    }

    /// Asks the kernel to move its overflow backlog into the CQ.
    fn flush_overflow(&mut self) -> Result<()> {
        self.stats.overflow_flushes += 1;
        self.stats.enters += 1;
        // SAFETY: no EXT_ARG; submits nothing.
        match unsafe { io_uring_enter(&self.fd, 0, 0, IoringEnterFlags::GETEVENTS) } {
            Ok(_) | Err(Errno::INTR) | Err(Errno::BUSY) | Err(Errno::AGAIN) => Ok(()),
            Err(Errno::BADR) => Err(self.completions_lost()),
            Err(errno) => Err(Error::Syscall {
                what: "io_uring_enter (flush CQ overflow)",
                errno,
            }),
        }
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

/// What is left to wait for after a busy io_uring_enter moved `moved` completions into the
/// stash: they are ready for the caller, so the retry waits for that many fewer, and not at
/// all (no GETEVENTS) once the stash holds all it wanted. Waiting for the full count again
/// would wait for completions that may never come.
fn wait_left_after_stashing(
    min_complete: u32,
    flags: IoringEnterFlags,
    moved: u32,
) -> (u32, IoringEnterFlags) {
    let left = min_complete.saturating_sub(moved);
    if left == 0 {
        (0, flags - IoringEnterFlags::GETEVENTS)
    } else {
        (left, flags)
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
    /// 5.19, or with [`LegacyFeatures::no_cancel_fd`]) nothing can be cancelled wholesale:
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` NOPs, submitted and completed, their CQEs left in the CQ.
    fn ring_with_ready_nops(n: u32) -> Ring {
        let mut ring = RingParams::new(8).build().unwrap();
        for i in 0..n {
            // SAFETY: NOPs name no memory.
            unsafe {
                ring.push(&Sqe::nop().user_data(UserData(u64::from(i))))
                    .unwrap()
            };
        }
        ring.submit().unwrap();
        assert_eq!(ring.ready(), n, "NOPs complete at submission");
        ring
    }

    #[test]
    fn a_busy_retry_waits_only_for_what_is_not_stashed() {
        let flags = IoringEnterFlags::GETEVENTS;
        assert_eq!(wait_left_after_stashing(4, flags, 1), (3, flags));
        assert_eq!(
            wait_left_after_stashing(4, flags, 4),
            (0, IoringEnterFlags::empty())
        );
        assert_eq!(
            wait_left_after_stashing(2, flags | IoringEnterFlags::EXT_ARG, 5),
            (0, IoringEnterFlags::EXT_ARG)
        );
        assert_eq!(
            wait_left_after_stashing(0, IoringEnterFlags::empty(), 3).0,
            0
        );
    }

    /// The kernel refuses the enter (EBUSY: its CQ is backed up) while the completions the
    /// caller waits for are already in the CQ: the retry moves them into the stash and must
    /// not wait for as many again (which here would never come: nothing else is in flight).
    /// Before the fix the retry waited out the whole timeout.
    #[test]
    fn busy_enter_with_the_wanted_completions_ready_returns_at_once() {
        let mut ring = ring_with_ready_nops(4);
        ring.injected_enter_errors.push(Errno::BUSY);
        let t = Instant::now();
        ring.submit_and_wait_timeout(4, Duration::from_secs(2))
            .unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "waited {:?} for completions already stashed",
            t.elapsed()
        );
        assert_eq!(ring.stats().busy_retries, 1);
        assert_eq!(ring.completions().count(), 4);
        assert_eq!(ring.in_flight(), 0);
    }

    /// As above with one of the wanted completions still to come: the retry waits for it.
    #[test]
    fn busy_enter_waits_for_the_rest() {
        let mut ring = ring_with_ready_nops(2);
        let ts = crate::sqe::KernelTimespec::from_duration(Duration::from_millis(30));
        let timeout = Sqe::timeout(&ts, 0, rustix::io_uring::IoringTimeoutFlags::empty())
            .user_data(UserData(9));
        // SAFETY: `ts` outlives the wait below, which harvests the timeout's CQE.
        unsafe { ring.push(&timeout).unwrap() };
        ring.submit().unwrap();
        ring.injected_enter_errors.push(Errno::AGAIN);
        let t = Instant::now();
        ring.submit_and_wait_timeout(3, Duration::from_secs(2))
            .unwrap();
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(20) && waited < Duration::from_secs(1),
            "{waited:?}"
        );
        let cqes: Vec<_> = ring.completions().collect();
        assert_eq!(cqes.len(), 3, "{cqes:?}");
        assert_eq!(cqes[2].user_data, UserData(9));
    }

    /// -EBADR from io_uring_enter means the kernel dropped completions. The real condition
    /// (the overflow backlog failing to allocate) cannot be forced from a test, so the errno
    /// is injected; what is checked is how the ring reports it.
    #[test]
    fn ebadr_from_enter_is_lost_completions() {
        let mut ring = ring_with_ready_nops(1);
        ring.injected_enter_errors.push(Errno::BADR);
        match ring.submit_and_wait(1) {
            Err(Error::CompletionsLost { dropped }) => assert_eq!(dropped, 0),
            other => panic!("want CompletionsLost, got {other:?}"),
        }
        // Reported once; the ring still works.
        ring.submit_and_wait(1).unwrap();
        assert_eq!(ring.completions().count(), 1);
    }

    #[test]
    fn legacy_features_turn_the_gated_paths_off() {
        let ring = RingParams::new(4).build().unwrap();
        assert!(
            ring.skips_provide_success(),
            "IORING_FEAT_CQE_SKIP is Linux 5.17"
        );
        assert!(ring.can_cancel_fd(), "IORING_ASYNC_CANCEL_FD is Linux 5.19");
        let legacy = LegacyFeatures {
            no_cqe_skip: true,
            no_cancel_fd: true,
        };
        let ring = RingParams::new(4).legacy_features(legacy).build().unwrap();
        assert!(!ring.skips_provide_success());
        assert!(!ring.can_cancel_fd());
        assert!(!ring.can_cancel_fd_fixed());
    }
}
