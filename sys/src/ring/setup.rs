//! Setting a ring up: [`RingParams`] and its builder, the task-run modes, and [`Ring::new`]
//! (io_uring_setup, the three mappings, the probe of the cancel flags).

use core::sync::atomic::AtomicU32;
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::time::Duration;

use ringwork_core::ring::{Consumer, Producer};
use rustix::io::Errno;
use rustix::io_uring::{
    io_uring_cqe, io_uring_params, io_uring_setup, io_uring_sqe, IoringFeatureFlags, IoringOp,
    IoringSetupFlags, IORING_OFF_CQ_RING, IORING_OFF_SQES, IORING_OFF_SQ_RING,
};

use crate::error::{Error, Result};
use crate::mmap::Mmap;
use crate::op::OwnedOps;
use crate::register::Registered;

use super::{Ring, RingStats};

/// How long a dropped [`Ring`] waits for its operations to finish before it leaks their
/// memory instead; see [`RingParams::teardown_timeout`].
pub const DEFAULT_TEARDOWN_TIMEOUT: Duration = Duration::from_secs(2);

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

impl Ring {
    /// Sets up a ring as `params` say.
    pub fn new(params: RingParams) -> Result<Self> {
        let mut p = params.setup_params()?;
        let RingParams {
            sq_entries,
            sqpoll,
            single_issuer,
            defer_taskrun,
            coop_taskrun,
            legacy,
            teardown_timeout,
            ..
        } = params;
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

        let RingMaps {
            sq: sq_map,
            cq: cq_map,
            sqes: sqe_map,
        } = RingMaps::new(&fd, &p)?;
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
        ring.detect_cancel_flags(legacy);
        Ok(ring)
    }

    /// Sets `cancel_fd` and `cancel_fd_fixed` from the probe. The cancel flags have no
    /// feature bit. They came in 5.19 together with IORING_OP_SOCKET, and CANCEL_FD_FIXED in
    /// 6.0 together with IORING_OP_SEND_ZC: the opcodes vouch. Without a probe (before 5.6)
    /// there is neither.
    fn detect_cancel_flags(&mut self, legacy: LegacyFeatures) {
        if let Ok(probe) = self.probe() {
            let (fd, fixed) = (
                probe.supports(IoringOp::Socket),
                probe.supports(IoringOp::SendZc),
            );
            self.cancel_fd = fd && !legacy.no_cancel_fd;
            self.cancel_fd_fixed = self.cancel_fd && fixed;
        }
    }
}

impl RingParams {
    /// Checks the sizes and turns the settings into io_uring_setup's parameters.
    fn setup_params(&self) -> Result<io_uring_params> {
        let sq_entries = self.sq_entries;
        if !sq_entries.is_power_of_two() {
            return Err(Error::InvalidConfig("sq entries must be a power of two"));
        }
        let cq_entries = self.cq_entries.unwrap_or(sq_entries * 2);
        if cq_entries < sq_entries * 2 || !cq_entries.is_power_of_two() {
            return Err(Error::InvalidConfig(
                "cq entries must be a power of two at least twice the sq entries",
            ));
        }
        let mut p = io_uring_params::default();
        p.flags = IoringSetupFlags::CQSIZE;
        p.cq_entries = cq_entries;
        if let Some(sp) = self.sqpoll {
            p.flags |= IoringSetupFlags::SQPOLL;
            p.sq_thread_idle = sp.idle_ms;
            if let Some(cpu) = sp.cpu {
                p.flags |= IoringSetupFlags::SQ_AFF;
                p.sq_thread_cpu = cpu;
            }
        }
        if self.single_issuer {
            p.flags |= IoringSetupFlags::SINGLE_ISSUER;
        }
        if self.defer_taskrun {
            p.flags |= IoringSetupFlags::DEFER_TASKRUN;
        }
        if self.coop_taskrun {
            p.flags |= IoringSetupFlags::COOP_TASKRUN;
        }
        Ok(p)
    }
}

/// The three regions a ring's fd offers for mmap. With IORING_FEAT_SINGLE_MMAP (Linux 5.4)
/// the SQ and CQ rings share one mapping and `cq` is `None`.
struct RingMaps {
    sq: Mmap,
    cq: Option<Mmap>,
    sqes: Mmap,
}

impl RingMaps {
    /// Maps the regions of the ring `fd`, sized from the offsets and entry counts the kernel
    /// filled into `p`.
    fn new(fd: &OwnedFd, p: &io_uring_params) -> Result<Self> {
        let sq_len = p.sq_off.array as usize + p.sq_entries as usize * 4;
        let cq_len =
            p.cq_off.cqes as usize + p.cq_entries as usize * core::mem::size_of::<io_uring_cqe>();
        let single = p.features.contains(IoringFeatureFlags::SINGLE_MMAP);
        let (sq, cq) = if single {
            let len = sq_len.max(cq_len);
            (
                Mmap::ring_region(fd, len, IORING_OFF_SQ_RING, "mmap rings")?,
                None,
            )
        } else {
            (
                Mmap::ring_region(fd, sq_len, IORING_OFF_SQ_RING, "mmap SQ ring")?,
                Some(Mmap::ring_region(
                    fd,
                    cq_len,
                    IORING_OFF_CQ_RING,
                    "mmap CQ ring",
                )?),
            )
        };
        let sqes = Mmap::ring_region(
            fd,
            p.sq_entries as usize * core::mem::size_of::<io_uring_sqe>(),
            IORING_OFF_SQES,
            "mmap SQE array",
        )?;
        Ok(Self { sq, cq, sqes })
    }
}
