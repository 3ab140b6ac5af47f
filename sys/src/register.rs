//! Registration: fixed buffers, the registered file table, provided buffer rings, the
//! opcode probe, and io-wq's limits (how many worker threads, on which CPUs). What is registered is owned by the [`Ring`] and unregistered (in reverse
//! order of dependence) before the ring's mappings go away.
//!
//! # References
//! io_uring_register(2); io_uring_register_buf_ring(3); liburing `src/register.c`.

use core::ffi::c_void;
use core::sync::atomic::{AtomicU16, Ordering};

use ringwork_core::buf::{
    BufGroup, BufId, FixedPool, IncTracker, Lease, ProvidedRing, RecvBuffers, RecvCompletion,
    RecvError, RecvPiece,
};
use ringwork_core::token::UserData;
use rustix::fd::{BorrowedFd, RawFd};
use rustix::io::Errno;
use rustix::io_uring::{
    io_uring_buf, io_uring_buf_reg, io_uring_files_update, io_uring_probe, io_uring_probe_op,
    io_uring_ptr, io_uring_register, io_uring_rsrc_register, iovec, IoringOp, IoringOpFlags,
    IoringRegisterOp, IoringRsrcFlags, IoringSqeFlags,
};

use crate::error::{Error, Result};
use crate::mmap::Mmap;
use crate::ring::{Ring, SelectedBuf};
use crate::sqe::Sqe;

/// Incremental buffer consumption for provided buffer rings (`IOU_PBUF_RING_INC`, Linux 6.12),
/// from `include/uapi/linux/io_uring.h`; rustix does not name it yet.
pub const IOU_PBUF_RING_INC: u16 = 2;

/// IORING_CQE_F_BUF_MORE (Linux 6.12, with IOU_PBUF_RING_INC): the buffer is not used up and
/// will be reported again. From `include/uapi/linux/io_uring.h`; rustix does not name it yet.
pub const IORING_CQE_F_BUF_MORE: u32 = 1 << 4;

const PAGE: usize = 4096;

/// A provided buffer group registered on one ring ([`Ring::register_buf_ring`],
/// [`Ring::add_provided_buffers`]): [`Ring::bufs`] turns it into the buffers without an
/// `Option`, and refuses (panics on) a handle of another ring.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BufRingHandle {
    group: BufGroup,
    ring: u64,
}

impl BufRingHandle {
    /// The group's id, as receives select from it ([`crate::SafeSqe::recv_select`]).
    pub fn group(self) -> BufGroup {
        self.group
    }
}

/// What a ring has registered, in one place so that teardown order is written once.
#[derive(Default)]
pub(crate) struct Registered {
    /// This ring among every ring of the process (numbered at the first registration), so
    /// that a [`BufRingHandle`] of another ring is caught.
    ident: Option<u64>,
    buf_rings: Vec<ProvidedBuffers>,
    fixed: Option<FixedBuffers>,
    /// The fixed buffers are registered with the kernel (else adopted: plain reads use them).
    fixed_registered: bool,
    files: Option<u32>,
    probe: Option<Probe>,
}

impl Registered {
    /// Unregisters everything: buffer rings first (they reference nothing else), then fixed
    /// buffers, then the file table. The memory is freed here and when `self` drops
    /// afterwards.
    ///
    /// # Safety
    /// `fd` is the ring everything was registered on, and no operation is in flight on it
    /// (the ring quiesced): nothing the kernel still runs may name this memory.
    pub(crate) unsafe fn teardown(&mut self, fd: BorrowedFd<'_>) {
        for br in self.buf_rings.drain(..) {
            if br.ring_mem.is_none() {
                // PROVIDE_BUFFERS groups have nothing to unregister, and the kernel's list
                // still holds their addresses until the ring goes away. Freeing the memory
                // now is sound only because the ring is idle (the caller's contract): the
                // kernel writes a listed buffer only for a request that selects it, and
                // none is left.
                continue;
            }
            let mut reg = io_uring_buf_reg::default();
            reg.bgid = br.book.group().0;
            // SAFETY: unregistering a group this ring registered; `reg` outlives the call.
            let _ = unsafe {
                io_uring_register(
                    fd,
                    IoringRegisterOp::UnregisterPbufRing,
                    (&reg as *const io_uring_buf_reg).cast(),
                    1,
                )
            };
            drop(br);
        }
        if self.fixed.take().is_some() && core::mem::take(&mut self.fixed_registered) {
            // SAFETY: no argument; the buffers' memory is freed only after this returns.
            let _ = unsafe {
                io_uring_register(
                    fd,
                    IoringRegisterOp::UnregisterBuffers,
                    core::ptr::null(),
                    0,
                )
            };
        }
        if self.files.take().is_some() {
            // SAFETY: no argument.
            let _ = unsafe {
                io_uring_register(fd, IoringRegisterOp::UnregisterFiles, core::ptr::null(), 0)
            };
        }
    }
}

/// Page-aligned memory registered as fixed buffers (IORING_REGISTER_BUFFERS, Linux 5.1),
/// with core's [`FixedPool`] deciding who owns each buffer.
pub struct FixedBuffers {
    mem: Mmap,
    buf_size: usize,
    pool: FixedPool,
}

impl FixedBuffers {
    /// `count` buffers of `buf_size` bytes each (rounded up to a page, so that every buffer is
    /// page-aligned, which O_DIRECT needs).
    pub fn new(count: u16, buf_size: usize) -> Result<Self> {
        if count == 0 || buf_size == 0 {
            return Err(Error::InvalidConfig(
                "fixed buffers need a count and a size",
            ));
        }
        let buf_size = buf_size.div_ceil(PAGE) * PAGE;
        // Registration pins (and so makes) every page; adopted unregistered, a buffer's pages
        // are made when first used.
        let mem = Mmap::anonymous_lazy(buf_size * count as usize, "allocate fixed buffers")?;
        Ok(Self {
            mem,
            buf_size,
            pool: FixedPool::new(count as usize),
        })
    }

    /// Size of each buffer.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// Number of buffers.
    pub fn len(&self) -> usize {
        self.pool.len()
    }

    /// True for no buffers (never: [`FixedBuffers::new`] refuses a count of zero).
    pub fn is_empty(&self) -> bool {
        self.pool.is_empty()
    }

    /// Ownership bookkeeping, read-only: which buffers are free or leased.
    pub fn pool(&self) -> &FixedPool {
        &self.pool
    }

    /// Takes a free buffer, or `None` when all are leased.
    pub fn acquire(&mut self) -> Option<Lease> {
        self.pool.acquire()
    }

    /// Gives a buffer back to the free list.
    ///
    /// # Panics
    /// When `lease` is another pool's.
    pub fn release(&mut self, lease: Lease) {
        self.pool.release(lease);
    }

    /// True when `lease` is one of these buffers'.
    pub fn owns(&self, lease: &Lease) -> bool {
        self.pool.owns(lease)
    }

    /// Start of buffer `id`: a raw address, usable only with [`Ring::push`]'s `unsafe`
    /// contract. Safe code uses [`Ring::read_fixed`], [`Ring::send_fixed`] and the like.
    pub fn ptr(&self, id: BufId) -> *mut u8 {
        assert!((id.0 as usize) < self.pool.len(), "buffer id out of range");
        // SAFETY: in bounds of the mapping (checked above).
        unsafe { self.mem.as_ptr().add(id.0 as usize * self.buf_size) }
    }

    /// The bytes of a buffer the application holds. The lease proves the kernel is not
    /// writing it: a read into a fixed buffer takes the lease with it
    /// ([`crate::Ring::read_fixed`]) until its completion.
    ///
    /// # Panics
    /// When `lease` is another pool's.
    pub fn bytes(&self, lease: &Lease) -> &[u8] {
        assert!(self.owns(lease), "a lease of another buffer pool");
        // SAFETY: the lease is this pool's (checked), so its id is in bounds, and while the
        // application holds it no operation writes the buffer (see above).
        unsafe { core::slice::from_raw_parts(self.ptr(lease.id()), self.buf_size) }
    }

    /// The bytes of a buffer the application holds, writable.
    ///
    /// # Panics
    /// When `lease` is another pool's.
    pub fn bytes_mut(&mut self, lease: &Lease) -> &mut [u8] {
        assert!(self.owns(lease), "a lease of another buffer pool");
        // SAFETY: as for `bytes`; `&mut self` excludes other slices of this pool.
        unsafe { core::slice::from_raw_parts_mut(self.ptr(lease.id()), self.buf_size) }
    }

    fn iovecs(&self) -> Vec<iovec> {
        (0..self.pool.len())
            .map(|i| iovec {
                iov_base: self.ptr(BufId(i as u16)).cast(),
                iov_len: self.buf_size,
            })
            .collect()
    }
}

/// A group of provided buffers: the buffers' memory and core's [`ProvidedRing`] bookkeeping,
/// handed to the kernel either through a provided buffer ring (IORING_REGISTER_PBUF_RING,
/// Linux 5.19: a shared ring of descriptors, returned by a memory store) or, as the fallback,
/// with IORING_OP_PROVIDE_BUFFERS SQEs (Linux 5.7: one SQE per run of returned buffers).
/// Receives select from either the same way (IOSQE_BUFFER_SELECT, the id in the CQE).
///
/// A receive into a buffer ring, the lease of the buffer it filled, and the buffer's way back:
///
/// ```
/// use std::io::Write;
/// use std::os::fd::AsRawFd;
/// use ringwork_core::buf::BufGroup;
/// use ringwork_core::token::UserData;
/// use ringwork_sys::{RingParams, SafeSqe, Target};
///
/// const GROUP: BufGroup = BufGroup(0);
/// let (mut peer, sock) = std::os::unix::net::UnixStream::pair()?;
/// let mut ring = RingParams::new(8).build()?;
/// ring.register_buf_ring(GROUP, 4, 1024)?; // 4 buffers of 1 KiB, all the kernel's
/// let recv = SafeSqe::recv_select(Target::Fd(sock.as_raw_fd()), GROUP, false);
/// ring.push_safe(recv.user_data(UserData(1)))?;
/// peer.write_all(b"hello")?;
/// ring.submit_and_wait(1)?;
/// let mut cqe = ring.completions().next().expect("the recv completed");
/// let selected = cqe.take_buffer().expect("the kernel picked a buffer");
/// let group = ring.buf_ring(GROUP).expect("registered above");
/// let lease = group.take(selected)?; // the buffer is ours until recycled
/// assert_eq!(group.bytes(&lease, 5), b"hello");
/// group.recycle(lease);
/// ring.publish_buffers(GROUP)?; // back in the kernel's ring
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ProvidedBuffers {
    /// The shared descriptor ring; `None` for the PROVIDE_BUFFERS fallback.
    ring_mem: Option<Mmap>,
    /// Registered with IOU_PBUF_RING_INC.
    incremental: bool,
    data: Mmap,
    buf_size: u32,
    book: ProvidedRing,
}

/// How a group of provided buffers reaches the kernel; see [`ProvidedBuffers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProvideMode {
    /// IORING_REGISTER_PBUF_RING (Linux 5.19).
    Ring,
    /// A ring registered with IOU_PBUF_RING_INC (Linux 6.12): buffers are consumed
    /// incrementally, several receives per buffer (see `ringwork_core::buf::IncTracker`).
    RingIncremental,
    /// IORING_OP_PROVIDE_BUFFERS SQEs (Linux 5.7).
    Sqe,
}

/// `user_data` of the PROVIDE_BUFFERS SQEs that [`Ring::publish_buffers`] submits; reserved.
/// Only a failure reaches the caller with this value (they carry IOSQE_CQE_SKIP_SUCCESS
/// where the kernel has it, Linux 5.17; before, the ring consumes their success CQEs
/// itself: [`Ring::skips_provide_success`]); a driver must treat one as fatal for the group
/// (the buffers it named never reached the kernel).
pub const PROVIDE_BUFFERS_USER_DATA: UserData = UserData(u64::MAX - 1);

impl ProvidedBuffers {
    fn new(group: BufGroup, entries: u16, buf_size: u32, mode: ProvideMode) -> Result<Self> {
        if buf_size == 0 {
            return Err(Error::InvalidConfig("provided buffers need a size"));
        }
        if !entries.is_power_of_two() || entries > 1 << 15 {
            return Err(Error::InvalidConfig(
                "provided buffer ring entries must be a power of two up to 32768",
            ));
        }
        let ring_len = (entries as usize * core::mem::size_of::<io_uring_buf>()).max(PAGE);
        let ring_mem = match mode {
            ProvideMode::Ring | ProvideMode::RingIncremental => {
                Some(Mmap::anonymous(ring_len, "allocate provided buffer ring")?)
            }
            ProvideMode::Sqe => None,
        };
        Ok(Self {
            ring_mem,
            incremental: mode == ProvideMode::RingIncremental,
            // The kernel makes a page when it first receives into it.
            data: Mmap::anonymous_lazy(
                entries as usize * buf_size as usize,
                "allocate provided buffers",
            )?,
            buf_size,
            book: ProvidedRing::new(group, entries),
        })
    }

    /// The group id.
    pub fn group(&self) -> BufGroup {
        self.book.group()
    }

    /// How the buffers reach the kernel.
    pub fn mode(&self) -> ProvideMode {
        match (self.ring_mem.is_some(), self.incremental) {
            (true, true) => ProvideMode::RingIncremental,
            (true, false) => ProvideMode::Ring,
            (false, _) => ProvideMode::Sqe,
        }
    }

    /// Start of buffer `id`: a raw address, usable only under [`Ring::push`]'s `unsafe`
    /// contract (or to inspect the mapping). Safe code sends with [`Ring::send_provided`].
    pub fn buf_ptr(&self, id: BufId) -> *const u8 {
        assert!(id.0 < self.book.entries(), "buffer id out of range");
        self.data
            .as_ptr()
            .wrapping_add(usize::from(id.0) * self.buf_size as usize)
    }

    /// Each buffer's size.
    pub fn buf_size(&self) -> u32 {
        self.buf_size
    }

    /// Ownership bookkeeping (replenish policy, counts), read-only: only completions change
    /// which buffers the application holds.
    pub fn book(&self) -> &ProvidedRing {
        &self.book
    }

    /// The kernel filled the buffer `selected` names (taken from its CQE with
    /// [`crate::Cqe::take_buffer`]): the application now holds its lease.
    pub fn take(&mut self, selected: SelectedBuf) -> Result<Lease, ringwork_core::buf::BufError> {
        self.book.on_selected(selected.id())
    }

    /// The kernel filled a receive bundle (IORING_RECVSEND_BUNDLE) of `selected.len()`
    /// bytes starting with buffer `selected.id()`: `take` gets the lease of every buffer it
    /// spans, in order (each full but the last). Ring mode only: PROVIDE_BUFFERS groups do
    /// not say which buffers follow the first.
    pub fn take_bundle(
        &mut self,
        selected: SelectedBuf,
        take: impl FnMut(Lease),
    ) -> Result<(), ringwork_core::buf::BufError> {
        debug_assert!(self.ring_mem.is_some(), "bundles need a buffer ring");
        let count = selected.len().div_ceil(self.buf_size).max(1);
        let count = u16::try_from(count).unwrap_or(u16::MAX);
        self.book.on_selected_bundle(selected.id(), count, take)
    }

    /// With incremental consumption (IOU_PBUF_RING_INC): the slice of the buffer `selected`
    /// names that its completion filled; returns where in the buffer it starts (see
    /// [`ringwork_core::buf::IncTracker::on_recv`]).
    pub fn take_incremental(
        &mut self,
        inc: &mut IncTracker,
        selected: SelectedBuf,
    ) -> Result<u32, ringwork_core::buf::IncError> {
        inc.on_recv(
            &mut self.book,
            selected.id(),
            selected.len(),
            selected.buf_more(),
        )
    }

    /// With incremental consumption: the `len` bytes at `offset` of buffer `id` that a
    /// completion filled, while their slice is held.
    ///
    /// # Panics
    /// When no slice of the buffer is held, or the range is past what the kernel has filled.
    pub fn slice(&self, inc: &IncTracker, id: BufId, offset: u32, len: u32) -> &[u8] {
        assert!(inc.held(id) > 0, "no slice of this buffer is held");
        assert!(
            u64::from(offset) + u64::from(len) <= u64::from(inc.filled(id).min(self.buf_size)),
            "a slice past what the kernel filled"
        );
        // SAFETY: in bounds (checked against what the kernel filled, at most the buffer); the
        // kernel wrote these bytes before posting the completions that reported them, and it
        // writes only past `filled` from now on, so nothing writes them while we read.
        unsafe { core::slice::from_raw_parts(self.buf_ptr(id).add(offset as usize), len as usize) }
    }

    /// The bytes of a receive piece ([`RecvPiece`]: `buf[offset..offset + len]`) the
    /// application holds through `recv`, whatever the receive mode (whole buffers, bundles,
    /// incremental slices).
    ///
    /// # Panics
    /// When `recv` holds no piece of `buf`, or the range is outside the buffer.
    pub fn piece_bytes(&self, recv: &RecvBuffers, buf: BufId, offset: u32, len: u32) -> &[u8] {
        if let Some(inc) = recv.incremental() {
            return self.slice(inc, buf, offset, len);
        }
        assert!(recv.holds(buf), "no piece of this buffer is held");
        assert!(
            u64::from(offset) + u64::from(len) <= u64::from(self.buf_size),
            "a piece past the end of its buffer"
        );
        // SAFETY: in bounds (checked against the buffer size; `holds` says the id is one of
        // this ring's, leased); the lease proves the kernel handed the buffer to us with a
        // harvested CQE and that it has not been given back, so the kernel does not write it
        // while we read.
        unsafe { core::slice::from_raw_parts(self.buf_ptr(buf).add(offset as usize), len as usize) }
    }

    /// A receive completion's buffers, taken into `recv` (which holds their leases, or with
    /// incremental consumption their slices): `piece` gets one receive piece per buffer, in
    /// order (a bundle spans several). `more` is the CQE's IORING_CQE_F_MORE. Returns how many
    /// buffers the completion filled. See [`RecvBuffers::on_recv`].
    pub fn take_recv(
        &mut self,
        recv: &mut RecvBuffers,
        selected: SelectedBuf,
        more: bool,
        piece: impl FnMut(RecvPiece),
    ) -> Result<u16, RecvError> {
        recv.on_recv(&mut self.book, recv_completion(selected, more), piece)
    }

    /// The buffers of a completion nobody will consume (stale, or an EOF that names one):
    /// straight back to the ring. See [`RecvBuffers::return_unconsumed`].
    pub fn return_recv(
        &mut self,
        recv: &mut RecvBuffers,
        selected: SelectedBuf,
        more: bool,
    ) -> Result<(), RecvError> {
        recv.return_unconsumed(&mut self.book, recv_completion(selected, more))
    }

    /// The application is done with the piece of buffer `buf` it holds through `recv`: the
    /// buffer goes back to the ring (with incremental consumption, with its last slice).
    pub fn recycle_recv(&mut self, recv: &mut RecvBuffers, buf: BufId) -> Result<(), RecvError> {
        recv.recycle(&mut self.book, buf)
    }

    /// The first `len` bytes of a buffer the application holds.
    ///
    /// # Panics
    /// When `lease` is another pool's.
    pub fn bytes(&self, lease: &Lease, len: u32) -> &[u8] {
        assert!(self.book.owns(lease), "a lease of another buffer ring");
        let len = len.min(self.buf_size) as usize;
        // SAFETY: the lease is this ring's (checked), so the id is in bounds; it proves the
        // kernel handed this buffer to us (only a harvested CQE's buffer can be taken) and it
        // has not been published back, so the kernel does not write it.
        unsafe { core::slice::from_raw_parts(self.buf_ptr(lease.id()), len) }
    }

    /// Queues a buffer to go back to the kernel; [`Ring::publish_buffers`] makes it visible.
    pub fn recycle(&mut self, lease: Lease) {
        self.book.recycle(lease);
    }

    /// Ring mode: writes every recycled buffer into the shared ring and publishes the new tail.
    fn publish_ring(&mut self) {
        let Some(ring_mem) = &self.ring_mem else {
            return;
        };
        let entries: *mut io_uring_buf = ring_mem.as_ptr().cast();
        let data = self.data.as_ptr();
        let size = self.buf_size;
        let tail = self.book.take_returns(|index, id| {
            // SAFETY: `index < entries` (masked by core); this entry is past the kernel's head
            // (only `entries` buffers exist, and only a buffer the kernel has finished with is
            // recycled, incremental consumption included, so the kernel has consumed the slot's
            // previous occupant), and the kernel reads it only after the tail store below. We
            // write the fields, never the whole struct: in entry 0, `resv` is the shared tail.
            unsafe {
                let e = entries.add(index as usize);
                (*e).addr = io_uring_ptr::new(data.add(id.0 as usize * size as usize).cast());
                (*e).len = size;
                (*e).bid = id.0;
            }
        });
        // The tail is the u16 at byte 14 of the ring (it overlays bufs[0].resv).
        // SAFETY: in bounds, 2-byte aligned, accessed atomically by the kernel.
        let tail_ref: &AtomicU16 = unsafe { &*ring_mem.as_ptr().add(14).cast::<AtomicU16>() };
        // Release: publishes the entry writes above; pairs with the kernel's acquire of the tail.
        tail_ref.store(tail, Ordering::Release);
    }
}

/// Core's view of a receive completion, from the buffer taken out of its CQE.
fn recv_completion(selected: SelectedBuf, more: bool) -> RecvCompletion {
    RecvCompletion {
        first: selected.id(),
        bytes: selected.len(),
        more,
        buf_more: selected.buf_more(),
    }
}

/// Which opcodes this kernel supports (IORING_REGISTER_PROBE, Linux 5.6).
#[derive(Clone, Debug)]
pub struct Probe {
    supported: [bool; 256],
    last_op: u8,
}

impl Probe {
    /// True when the kernel knows opcode `op`.
    pub fn supports(&self, op: IoringOp) -> bool {
        self.supported[op as u8 as usize]
    }

    /// The highest opcode this kernel knows.
    pub fn last_op(&self) -> u8 {
        self.last_op
    }

    /// Ok when `op` is supported, else an error naming the feature and the first Linux that
    /// has it.
    pub fn require(&self, op: IoringOp, name: &'static str, since: &'static str) -> Result<()> {
        if self.supports(op) {
            Ok(())
        } else {
            Err(Error::unsupported(name, since))
        }
    }
}

/// io-wq's worker limits (IORING_REGISTER_IOWQ_MAX_WORKERS), per submitting thread.
///
/// io-wq, the kernel's thread pool behind a ring, runs what cannot complete without
/// blocking: buffered reads of uncached data, opens, statx, every splice. It sorts work into
/// two classes, each with its own limit: *bounded* work completes in bounded time (I/O on a
/// regular file or block device, and work naming no file), limited by default to the
/// smaller of the SQ size and 4 × the CPUs online; *unbounded* work may wait forever (on a
/// socket, pipe or terminal: a splice into a pipe or socket), limited only by RLIMIT_NPROC.
/// Each worker is a thread of this process named `iou-wrk-TID`, after the submitting thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IowqWorkers {
    /// Most workers for bounded work.
    pub bounded: u32,
    /// Most workers for unbounded work.
    pub unbounded: u32,
}

impl Ring {
    /// Caps io-wq at `bounded` workers for bounded work and `unbounded` for unbounded work
    /// (see [`IowqWorkers`]); 0 leaves that limit as it is, so `(0, 0)` only reads them.
    /// Returns the limits as they were before (all zero when the calling thread has no
    /// io-wq yet). The kernel clamps each to RLIMIT_NPROC.
    ///
    /// The limits apply to the calling thread's io-wq, to that of every thread that has
    /// submitted on this ring, and (remembered by the ring) to threads that submit later;
    /// with SQPOLL, to the poller's. Workers beyond a new cap are not stopped, only no new
    /// ones are started: work beyond the cap waits in io-wq's queue. So a cap keeps a storm
    /// of blocking operations from becoming a storm of threads: the server slows down
    /// instead of exhausting RLIMIT_NPROC.
    ///
    /// IORING_REGISTER_IOWQ_MAX_WORKERS needs Linux 5.15.
    ///
    /// # References
    /// io_uring_register(2), "IORING_REGISTER_IOWQ_MAX_WORKERS";
    /// io_uring_register_iowq_max_workers(3).
    pub fn register_iowq_max_workers(
        &mut self,
        bounded: u32,
        unbounded: u32,
    ) -> Result<IowqWorkers> {
        // The kernel refuses values above INT_MAX with EINVAL, which would read as "not
        // supported" below: refuse them here instead.
        if bounded > i32::MAX as u32 || unbounded > i32::MAX as u32 {
            return Err(Error::InvalidConfig("io-wq worker limits above i32::MAX"));
        }
        let mut counts = [bounded, unbounded];
        // SAFETY: the kernel reads and then writes exactly two u32s (nr_args must be 2) at
        // `counts`, which outlives the call.
        unsafe {
            io_uring_register(
                self.fd(),
                IoringRegisterOp::RegisterIowqMaxWorkers,
                counts.as_mut_ptr().cast::<c_void>(),
                2,
            )
        }
        .map_err(|e| match e {
            Errno::INVAL => Error::unsupported("IORING_REGISTER_IOWQ_MAX_WORKERS", "5.15"),
            errno => Error::Syscall {
                what: "register io-wq max workers",
                errno,
            },
        })?;
        Ok(IowqWorkers {
            bounded: counts[0],
            unbounded: counts[1],
        })
    }

    /// Runs the calling thread's io-wq workers (or, with SQPOLL, the poller's) on `cpus` only
    /// (IORING_REGISTER_IOWQ_AFF, Linux 5.14). Without it they run anywhere in the
    /// process' cpuset, whatever the submitting thread's own affinity: a thread pinned to one
    /// CPU may find its blocking work done on another.
    ///
    /// # Errors
    /// An empty `cpus`; and EINVAL when the thread has no io-wq yet, when a CPU is not in
    /// the process' cpuset, or on kernels before 5.14 (which the kernel does not tell apart).
    ///
    /// # References
    /// io_uring_register(2), "IORING_REGISTER_IOWQ_AFF"; io_uring_register_iowq_aff(3).
    pub fn register_iowq_affinity(&mut self, cpus: &[usize]) -> Result<()> {
        let Some(&highest) = cpus.iter().max() else {
            return Err(Error::InvalidConfig("an io-wq affinity with no CPU"));
        };
        // A cpu_set_t-style bitmap in whole u64s: bit `cpu % 64` of word `cpu / 64`, which
        // is the kernel's cpumask layout (an array of unsigned longs) on 64-bit machines.
        let mut mask = vec![0u64; highest / 64 + 1];
        for &cpu in cpus {
            mask[cpu / 64] |= 1 << (cpu % 64);
        }
        let len = u32::try_from(mask.len() * 8)
            .map_err(|_| Error::InvalidConfig("an io-wq affinity CPU out of range"))?;
        // SAFETY: the kernel reads at most `len` bytes at `mask`, which outlives the call.
        unsafe {
            io_uring_register(
                self.fd(),
                IoringRegisterOp::RegisterIowqAff,
                mask.as_ptr().cast::<c_void>(),
                len,
            )
        }
        .map_err(Error::syscall(
            "register io-wq affinity (IORING_REGISTER_IOWQ_AFF: Linux 5.14, CPUs in this \
             process' cpuset, after the thread's first submission)",
        ))?;
        Ok(())
    }
}

impl Ring {
    /// Probes (once) which opcodes the kernel supports.
    pub fn probe(&mut self) -> Result<&Probe> {
        if self.registered().probe.is_none() {
            const OPS: usize = 256;
            // u64 storage keeps the struct aligned.
            let words = (core::mem::size_of::<io_uring_probe>()
                + OPS * core::mem::size_of::<io_uring_probe_op>())
            .div_ceil(8);
            let mut storage = vec![0u64; words];
            let ptr = storage.as_mut_ptr().cast::<c_void>();
            // SAFETY: the kernel writes at most `OPS` entries after the header; storage is
            // zeroed (as the kernel requires) and large enough.
            unsafe {
                io_uring_register(self.fd(), IoringRegisterOp::RegisterProbe, ptr, OPS as u32)
            }
            .map_err(|e| match e {
                Errno::INVAL => Error::unsupported("IORING_REGISTER_PROBE", "5.6"),
                errno => Error::Syscall {
                    what: "register probe",
                    errno,
                },
            })?;
            // SAFETY: the kernel filled the header and `ops_len` entries of the storage.
            let header = unsafe { &*ptr.cast::<io_uring_probe>() };
            // SAFETY: the op array starts right after the header, inside `storage`.
            let ops_ptr = unsafe {
                ptr.cast::<u8>()
                    .add(core::mem::size_of::<io_uring_probe>())
                    .cast::<io_uring_probe_op>()
            };
            let mut supported = [false; 256];
            for i in 0..(header.ops_len as usize).min(OPS) {
                // SAFETY: i < ops_len <= OPS entries written by the kernel.
                let op = unsafe { &*ops_ptr.add(i) };
                if op.flags.contains(IoringOpFlags::SUPPORTED) {
                    supported[op.op as u8 as usize] = true;
                }
            }
            let last_op = header.last_op as u8;
            self.registered_mut().probe = Some(Probe { supported, last_op });
        }
        Ok(self.registered().probe.as_ref().expect("set above"))
    }

    /// Registers `buffers` as the ring's fixed buffers; READ_FIXED / WRITE_FIXED name them by
    /// index. The ring owns them from now on ([`Ring::fixed_buffers`]).
    pub fn register_buffers(&mut self, buffers: FixedBuffers) -> Result<()> {
        if self.registered().fixed.is_some() {
            return Err(Error::InvalidConfig("fixed buffers are already registered"));
        }
        let iov = buffers.iovecs();
        // SAFETY: `iov` describes memory owned by `buffers`, which the ring keeps (and does
        // not free) until after IORING_UNREGISTER_BUFFERS at teardown.
        unsafe {
            io_uring_register(
                self.fd(),
                IoringRegisterOp::RegisterBuffers,
                iov.as_ptr().cast(),
                iov.len() as u32,
            )
        }
        .map_err(Error::syscall("register fixed buffers"))?;
        self.registered_mut().fixed = Some(buffers);
        self.registered_mut().fixed_registered = true;
        Ok(())
    }

    /// Keeps `buffers` without registering them, for when registration is refused
    /// (RLIMIT_MEMLOCK) or turned off: [`Ring::read_fixed`] then reads into them with plain
    /// IORING_OP_READ. The ring owns them from now on, as after [`Ring::register_buffers`].
    pub fn adopt_buffers(&mut self, buffers: FixedBuffers) -> Result<()> {
        if self.registered().fixed.is_some() {
            return Err(Error::InvalidConfig("fixed buffers are already registered"));
        }
        self.registered_mut().fixed = Some(buffers);
        Ok(())
    }

    /// The ring's fixed buffers (registered or adopted), if any.
    pub fn fixed_buffers(&mut self) -> Option<&mut FixedBuffers> {
        self.registered_mut().fixed.as_mut()
    }

    /// True when the ring's fixed buffers are registered with the kernel.
    pub fn fixed_registered(&self) -> bool {
        self.registered().fixed_registered
    }

    /// Gives the pages of the adopted (unregistered) fixed buffers that are free, but the
    /// `keep` most recently freed, back to the system (MADV_DONTNEED): they are made again,
    /// zeroed, when next used. Registered buffers are pinned by the kernel and left alone.
    /// Returns how many buffers were trimmed.
    pub fn trim_fixed_buffers(&mut self, keep: usize) -> Result<usize> {
        if self.fixed_registered() {
            return Ok(0);
        }
        let Some(bufs) = self.fixed_buffers() else {
            return Ok(0);
        };
        let size = bufs.buf_size;
        let mut n = 0;
        for id in bufs.pool.idle(keep) {
            // SAFETY: buffer `id` is free: no lease of it exists, so no SQE names it and no
            // slice of it is borrowed (reads and sends take the lease, `bytes` borrows through
            // one); the range lies inside the private anonymous mapping (`ptr` checks the id).
            // Its contents are meaningless until the next read fills it, so zero pages do.
            unsafe {
                rustix::mm::madvise(bufs.ptr(id).cast(), size, rustix::mm::Advice::LinuxDontNeed)
            }
            .map_err(Error::syscall("madvise(MADV_DONTNEED) fixed buffers"))?;
            n += 1;
        }
        Ok(n)
    }

    /// Registers a sparse file table of `slots` entries (IORING_REGISTER_FILES2 with
    /// IORING_RSRC_REGISTER_SPARSE, Linux 5.19); fill it with [`Ring::update_files`] or
    /// direct accept/open.
    pub fn register_files_sparse(&mut self, slots: u32) -> Result<()> {
        let mut reg = io_uring_rsrc_register::default();
        reg.nr = slots;
        reg.flags = IoringRsrcFlags::REGISTER_SPARSE;
        // SAFETY: `reg` outlives the call; a sparse table needs no data array.
        unsafe {
            io_uring_register(
                self.fd(),
                IoringRegisterOp::RegisterFiles2,
                (&reg as *const io_uring_rsrc_register).cast(),
                core::mem::size_of::<io_uring_rsrc_register>() as u32,
            )
        }
        .map_err(|e| match e {
            Errno::INVAL => Error::unsupported("IORING_RSRC_REGISTER_SPARSE", "5.19"),
            errno => Error::Syscall {
                what: "register files",
                errno,
            },
        })?;
        self.registered_mut().files = Some(slots);
        Ok(())
    }

    /// Puts `fds` into the file table starting at `offset` (IORING_REGISTER_FILES_UPDATE,
    /// Linux 5.5); `-1` empties a slot. The table takes its own reference: the caller may
    /// close its fds afterwards.
    pub fn update_files(&mut self, offset: u32, fds: &[RawFd]) -> Result<u32> {
        let mut up = io_uring_files_update::default();
        up.offset = offset;
        up.fds = io_uring_ptr::new(fds.as_ptr().cast_mut().cast());
        // SAFETY: `up` and `fds` outlive the call.
        unsafe {
            io_uring_register(
                self.fd(),
                IoringRegisterOp::RegisterFilesUpdate,
                (&up as *const io_uring_files_update).cast(),
                fds.len() as u32,
            )
        }
        .map_err(Error::syscall("update registered files"))
    }

    /// Registers a provided buffer ring of `entries` buffers of `buf_size` bytes as `group`,
    /// and publishes every buffer to the kernel. The handle finds it again without an
    /// `Option` ([`Ring::bufs`]).
    ///
    /// ```
    /// use ringwork_core::buf::BufGroup;
    /// use ringwork_sys::RingParams;
    ///
    /// let mut ring = RingParams::new(8).build()?;
    /// let bufs = ring.register_buf_ring(BufGroup(0), 16, 4096)?;
    /// assert_eq!(ring.bufs(bufs).buf_size(), 4096);
    /// # Ok::<(), ringwork_sys::Error>(())
    /// ```
    pub fn register_buf_ring(
        &mut self,
        group: BufGroup,
        entries: u16,
        buf_size: u32,
    ) -> Result<BufRingHandle> {
        self.add_provided_buffers(group, entries, buf_size, ProvideMode::Ring)
    }

    /// `entries` buffers of `buf_size` bytes as `group`, handed over as `mode` says; every
    /// buffer goes to the kernel (ring mode at once, SQE mode with the next submit). Receives
    /// select from the group the same way in both modes.
    pub fn add_provided_buffers(
        &mut self,
        group: BufGroup,
        entries: u16,
        buf_size: u32,
        mode: ProvideMode,
    ) -> Result<BufRingHandle> {
        if self.buf_ring(group).is_some() {
            return Err(Error::InvalidConfig("buffer group already registered"));
        }
        let br = ProvidedBuffers::new(group, entries, buf_size, mode)?;
        let Some(ring_mem) = br.ring_mem.as_ref() else {
            if !self.probe()?.supports(IoringOp::ProvideBuffers) {
                return Err(Error::unsupported("IORING_OP_PROVIDE_BUFFERS", "5.7"));
            }
            self.registered_mut().buf_rings.push(br);
            self.publish_buffers(group)?;
            return Ok(self.buf_ring_handle(group));
        };
        let mut reg = io_uring_buf_reg::default();
        reg.ring_addr = io_uring_ptr::new(ring_mem.as_ptr().cast());
        reg.ring_entries = u32::from(entries);
        reg.bgid = group.0;
        if mode == ProvideMode::RingIncremental {
            reg.flags = IOU_PBUF_RING_INC;
        }
        // SAFETY: the ring memory is page-aligned, large enough for `entries` descriptors, and
        // owned by the Ring until after IORING_UNREGISTER_PBUF_RING at teardown.
        unsafe {
            io_uring_register(
                self.fd(),
                IoringRegisterOp::RegisterPbufRing,
                (&reg as *const io_uring_buf_reg).cast(),
                1,
            )
        }
        .map_err(|e| match e {
            Errno::INVAL if mode == ProvideMode::RingIncremental => {
                Error::unsupported("IOU_PBUF_RING_INC (incremental buffer consumption)", "6.12")
            }
            Errno::INVAL => Error::unsupported("IORING_REGISTER_PBUF_RING", "5.19"),
            errno => Error::Syscall {
                what: "register provided buffer ring",
                errno,
            },
        })?;
        self.registered_mut().buf_rings.push(br);
        self.publish_buffers(group)?;
        Ok(self.buf_ring_handle(group))
    }

    fn buf_ring_handle(&mut self, group: BufGroup) -> BufRingHandle {
        static NEXT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);
        let ring = *self
            .registered_mut()
            .ident
            .get_or_insert_with(|| NEXT.fetch_add(1, core::sync::atomic::Ordering::Relaxed));
        BufRingHandle { group, ring }
    }

    /// The provided buffers `handle` names (registered on this ring, so no `Option`).
    ///
    /// # Panics
    /// When `handle` came from another ring: a caller bug.
    pub fn bufs(&mut self, handle: BufRingHandle) -> &mut ProvidedBuffers {
        assert_eq!(
            self.registered_mut().ident,
            Some(handle.ring),
            "a buffer ring handle of another ring"
        );
        self.buf_ring(handle.group)
            .expect("a handle names a registered group (groups are never unregistered)")
    }

    /// Hands every buffer recycled into `group` since the last call back to the kernel: ring
    /// mode writes the descriptors and stores the tail; SQE mode queues one
    /// IORING_OP_PROVIDE_BUFFERS SQE per run of consecutive ids (with CQE_SKIP_SUCCESS where
    /// the kernel has it; a failure completes with [`PROVIDE_BUFFERS_USER_DATA`], a success
    /// never reaches the caller), submitted with the next enter and executed, in SQ order,
    /// before any receive queued after this call.
    pub fn publish_buffers(&mut self, group: BufGroup) -> Result<()> {
        let Some(br) = self.buf_ring(group) else {
            return Err(Error::InvalidConfig("no such buffer group"));
        };
        if br.book.returning() == 0 {
            return Ok(());
        }
        if br.ring_mem.is_some() {
            br.publish_ring();
            return Ok(());
        }
        let mut ids = Vec::with_capacity(br.book.returning());
        br.book.take_returns(|_, id| ids.push(id.0));
        ids.sort_unstable();
        let (data, size) = (br.data.as_ptr(), br.buf_size);
        let mut start = 0;
        while start < ids.len() {
            let mut end = start + 1;
            while end < ids.len() && ids[end] == ids[end - 1] + 1 {
                end += 1;
            }
            let first = ids[start];
            let mut sqe = Sqe::provide_buffers(
                data.wrapping_add(usize::from(first) * size as usize),
                size,
                (end - start) as u16,
                group,
                BufId(first),
            )
            .user_data(PROVIDE_BUFFERS_USER_DATA);
            // Before Linux 5.17 the flag fails the SQE (EINVAL): the ring then takes the
            // success CQEs itself.
            if self.skips_provide_success() {
                sqe = sqe.flags(IoringSqeFlags::CQE_SKIP_SUCCESS);
            }
            // SAFETY: the buffers lie inside `data`, which the ring owns until it is idle
            // after its last use (or forever, leaked, when it cannot prove that); the
            // bookkeeping just moved them to Kernel, so nothing in user space reads or writes
            // them until a CQE selects one again.
            unsafe { self.push_or_submit_impl(&sqe)? };
            self.note_provide_buffers_pushed();
            start = end;
        }
        Ok(())
    }

    /// The provided buffer ring of `group`.
    pub fn buf_ring(&mut self, group: BufGroup) -> Option<&mut ProvidedBuffers> {
        self.registered_mut()
            .buf_rings
            .iter_mut()
            .find(|b| b.group() == group)
    }
}
