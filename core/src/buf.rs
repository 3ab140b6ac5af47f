//! Buffer ownership: the registered (fixed) buffer pool and provided-buffer-ring bookkeeping.
//!
//! A buffer the kernel may write into (or read from) must not be touched, reused or freed
//! until the completion that ends the kernel's use has been harvested (PITFALLS.md, "A buffer is
//! the kernel's until its CQE"), and for
//! SEND_ZC not until the notification CQE (PITFALLS.md, "SEND_ZC gives two CQEs, and the buffer is
//! the kernel's until the second"). This module makes that rule a
//! matter of types:
//!
//! - A [`Lease`] is the application's right to use one buffer. It is neither `Copy` nor
//!   `Clone`, and only a pool makes one.
//! - Handing a buffer to the kernel *consumes* the lease ([`FixedPool::submit`]); the only way
//!   to get it back is the matching completion ([`FixedPool::complete`] with the same
//!   `user_data`), so "reuse before the CQE" cannot be written.
//! - Every buffer is in exactly one [`BufState`] at any time; proptest checks that under random
//!   sequences.
//!
//! The memory itself lives in `ringwork-sys`; this module owns only the bookkeeping.

use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::token::UserData;

/// Index of a buffer within its pool or provided ring (the kernel's `bid` / `buf_index`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct BufId(pub u16);

/// A provided-buffer group id (`bgid`), named in SQEs with IOSQE_BUFFER_SELECT.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct BufGroup(pub u16);

/// Who owns a buffer right now.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BufState {
    /// In the pool's free list: nobody uses it.
    Free,
    /// The application holds a [`Lease`] on it.
    App,
    /// Named by the in-flight operation with this `user_data`; only its CQE returns it.
    InFlight(UserData),
    /// A SEND_ZC's result CQE has arrived but its notification has not: the kernel may still
    /// read the buffer.
    AwaitingNotif(UserData),
    /// Published in a provided buffer ring: the kernel may pick it for any receive.
    Kernel,
    /// Recycled by the application, waiting to be published back to the provided ring.
    Returning,
}

/// Which pool (a [`FixedPool`] or a [`ProvidedRing`]) issued a [`Lease`]: unique per pool
/// made in this process, so a lease from one pool is refused by every other.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PoolId(u32);

impl PoolId {
    fn fresh() -> Self {
        // Relaxed: only uniqueness matters, not ordering with other memory.
        static NEXT: AtomicU32 = AtomicU32::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// The application's exclusive right to use one buffer of one pool. Not `Copy`, not `Clone`,
/// and tied to the pool that issued it: every pool method that takes a lease back checks
/// that it is its own (a foreign lease is a bug and panics, before any state changes).
#[derive(PartialEq, Eq, Debug)]
#[must_use = "a lease dropped without recycle() leaks its buffer"]
pub struct Lease {
    id: BufId,
    pool: PoolId,
}

impl Lease {
    /// The buffer this lease is for.
    #[inline]
    pub fn id(&self) -> BufId {
        self.id
    }

    /// The pool that issued it.
    #[inline]
    pub fn pool(&self) -> PoolId {
        self.pool
    }
}

/// Why a buffer operation was refused. Each one is a bug in the caller or the kernel, so the
/// caller should report it rather than carry on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BufError {
    /// The id is outside the pool.
    OutOfRange(BufId),
    /// A completion named a buffer that was not in flight for that `user_data`.
    NotInFlight {
        /// The buffer named.
        id: BufId,
        /// Its actual state.
        state: BufState,
    },
    /// The kernel reported selecting a buffer that was not published to it.
    NotKernelOwned {
        /// The buffer named.
        id: BufId,
        /// Its actual state.
        state: BufState,
    },
}

impl fmt::Display for BufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BufError::OutOfRange(id) => write!(f, "buffer id {} is outside the pool", id.0),
            BufError::NotInFlight { id, state } => write!(
                f,
                "completion for buffer {} which is not in flight (state {state:?})",
                id.0
            ),
            BufError::NotKernelOwned { id, state } => write!(
                f,
                "kernel selected buffer {} which was not published to it (state {state:?})",
                id.0
            ),
        }
    }
}

/// The registered-buffer pool (IORING_REGISTER_BUFFERS): which buffer indices are free, leased,
/// or named by an in-flight READ_FIXED / WRITE_FIXED / SEND_ZC.
///
/// Not `Clone`: a copy would issue leases the original accepts.
#[derive(Debug)]
pub struct FixedPool {
    id: PoolId,
    states: Vec<BufState>,
    free: Vec<BufId>,
}

impl FixedPool {
    /// A pool of `count` buffers, all free.
    ///
    /// # Panics
    /// When `count` exceeds 65,536 (buffer indices are u16).
    pub fn new(count: usize) -> Self {
        assert!(
            count <= 1 << 16,
            "a fixed-buffer pool holds at most 65536 buffers"
        );
        Self {
            id: PoolId::fresh(),
            states: alloc::vec![BufState::Free; count],
            // Popped from the back: hand out low ids first.
            free: (0..count as u32).rev().map(|i| BufId(i as u16)).collect(),
        }
    }

    /// Number of buffers in the pool.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// This pool's identity, which its leases carry.
    pub fn id(&self) -> PoolId {
        self.id
    }

    /// True when `lease` was issued by this pool.
    pub fn owns(&self, lease: &Lease) -> bool {
        lease.pool == self.id
    }

    fn check(&self, lease: &Lease) {
        assert!(self.owns(lease), "a lease of another buffer pool");
    }

    /// True for an empty pool.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Number of free buffers.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// The state of buffer `id`.
    pub fn state(&self, id: BufId) -> Option<BufState> {
        self.states.get(id.0 as usize).copied()
    }

    /// Takes a free buffer, or `None` when all are in use.
    pub fn acquire(&mut self) -> Option<Lease> {
        let id = self.free.pop()?;
        self.states[id.0 as usize] = BufState::App;
        Some(Lease { id, pool: self.id })
    }

    /// Hands the buffer to the kernel for the operation `ud`; the lease is gone until
    /// [`FixedPool::complete`] returns it.
    pub fn submit(&mut self, lease: Lease, ud: UserData) -> BufId {
        self.check(&lease);
        let id = lease.id;
        assert_eq!(self.states[id.0 as usize], BufState::App);
        self.states[id.0 as usize] = BufState::InFlight(ud);
        id
    }

    /// The CQE of operation `ud` on buffer `id` arrived: the lease comes back.
    pub fn complete(&mut self, id: BufId, ud: UserData) -> Result<Lease, BufError> {
        let state = self.state(id).ok_or(BufError::OutOfRange(id))?;
        match state {
            BufState::InFlight(owner) if owner == ud => {
                self.states[id.0 as usize] = BufState::App;
                Ok(Lease { id, pool: self.id })
            }
            _ => Err(BufError::NotInFlight { id, state }),
        }
    }

    /// A SEND_ZC result CQE (with IORING_CQE_F_MORE) arrived: the kernel keeps the buffer until
    /// its notification, so no lease comes back yet.
    pub fn complete_awaiting_notif(&mut self, id: BufId, ud: UserData) -> Result<(), BufError> {
        let state = self.state(id).ok_or(BufError::OutOfRange(id))?;
        match state {
            BufState::InFlight(owner) if owner == ud => {
                self.states[id.0 as usize] = BufState::AwaitingNotif(ud);
                Ok(())
            }
            _ => Err(BufError::NotInFlight { id, state }),
        }
    }

    /// The SEND_ZC notification CQE (IORING_CQE_F_NOTIF) for `ud` arrived: the lease comes back.
    pub fn notified(&mut self, id: BufId, ud: UserData) -> Result<Lease, BufError> {
        let state = self.state(id).ok_or(BufError::OutOfRange(id))?;
        match state {
            BufState::AwaitingNotif(owner) if owner == ud => {
                self.states[id.0 as usize] = BufState::App;
                Ok(Lease { id, pool: self.id })
            }
            _ => Err(BufError::NotInFlight { id, state }),
        }
    }

    /// True when a receive that found the pool empty may try again: at least a quarter of
    /// the buffers are free (every buffer, for pools smaller than four). The same policy as
    /// [`ProvidedRing::can_rearm`], for drivers that receive into a pool (epoll).
    pub fn can_rearm(&self) -> bool {
        self.free.len() >= rearm_threshold(self.states.len())
    }

    /// Gives a buffer back to the free list.
    pub fn release(&mut self, lease: Lease) {
        self.check(&lease);
        let id = lease.id;
        assert_eq!(self.states[id.0 as usize], BufState::App);
        self.states[id.0 as usize] = BufState::Free;
        self.free.push(id);
    }
}

/// A quarter of `buffers`, rounded up: how many must be back before a receive that ran out is
/// tried again, and below how many the kernel's share is replenished at once.
fn rearm_threshold(buffers: usize) -> usize {
    buffers.div_ceil(4)
}

/// Bookkeeping for one provided buffer ring (IORING_REGISTER_PBUF_RING).
///
/// Buffers cycle `Kernel → App → Returning → Kernel`: the kernel picks one for a receive (the
/// CQE names it), the application holds a lease while the bytes are used, recycles it, and
/// the driver publishes recycled ids back into the ring's shared memory in a batch
/// ([`ProvidedRing::take_returns`] followed by one store-release of the ring tail).
///
/// The replenish policy: when fewer than a quarter of the buffers are with the kernel,
/// recycled buffers should be published now ([`ProvidedRing::needs_replenish`]); after an
/// ENOBUFS, a receive is re-armed only once at least a quarter are back
/// ([`ProvidedRing::can_rearm`]), so a starved ring is not hammered with receives that fail.
///
/// Not `Clone`: a copy would issue leases the original accepts.
#[derive(Debug)]
pub struct ProvidedRing {
    id: PoolId,
    group: BufGroup,
    states: Vec<BufState>,
    returning: Vec<BufId>,
    in_kernel: usize,
    /// Free-running u16 ring tail, as the kernel reads it.
    tail: u16,
    /// The id last published at each ring index: a receive bundle (IORING_RECVSEND_BUNDLE)
    /// names only its first buffer, and the rest are the ones at the following indices.
    at_index: Vec<BufId>,
    /// The ring index each id was last published at.
    index_of: Vec<u16>,
}

impl ProvidedRing {
    /// Bookkeeping for a ring of `entries` buffers in group `group`; every buffer starts out
    /// `Returning`, so the first [`ProvidedRing::take_returns`] publishes them all.
    ///
    /// # Panics
    /// When `entries` is zero, not a power of two, or above 32,768 (the kernel's limit).
    pub fn new(group: BufGroup, entries: u16) -> Self {
        assert!(
            entries.is_power_of_two() && entries <= 1 << 15,
            "provided buffer ring entries must be a power of two no larger than 32768"
        );
        Self {
            id: PoolId::fresh(),
            group,
            states: alloc::vec![BufState::Returning; entries as usize],
            returning: (0..entries).map(BufId).collect(),
            in_kernel: 0,
            tail: 0,
            at_index: alloc::vec![BufId(0); entries as usize],
            index_of: alloc::vec![0; entries as usize],
        }
    }

    /// The buffer group id.
    pub fn group(&self) -> BufGroup {
        self.group
    }

    /// This ring's identity, which its leases carry.
    pub fn id(&self) -> PoolId {
        self.id
    }

    /// True when `lease` was issued by this ring.
    pub fn owns(&self, lease: &Lease) -> bool {
        lease.pool == self.id
    }

    /// Number of buffers.
    pub fn entries(&self) -> u16 {
        self.states.len() as u16
    }

    /// Ring mask (`entries - 1`).
    pub fn mask(&self) -> u16 {
        self.entries() - 1
    }

    /// Buffers the kernel can pick from now.
    pub fn in_kernel(&self) -> usize {
        self.in_kernel
    }

    /// Buffers recycled and waiting to be published.
    pub fn returning(&self) -> usize {
        self.returning.len()
    }

    /// The state of buffer `id`.
    pub fn state(&self, id: BufId) -> Option<BufState> {
        self.states.get(id.0 as usize).copied()
    }

    /// A quarter of the ring, rounded up: the replenish threshold.
    pub fn replenish_threshold(&self) -> usize {
        rearm_threshold(self.states.len())
    }

    /// True when recycled buffers are waiting and the kernel has fewer than a quarter.
    pub fn needs_replenish(&self) -> bool {
        !self.returning.is_empty() && self.in_kernel < self.replenish_threshold()
    }

    /// True when a receive that failed with ENOBUFS may be re-armed: at least a quarter of the
    /// buffers are published (or every buffer is, for rings smaller than four).
    pub fn can_rearm(&self) -> bool {
        self.in_kernel >= self.replenish_threshold()
    }

    /// The kernel picked buffer `id` for a completion (IORING_CQE_F_BUFFER): the application
    /// now holds it.
    pub fn on_selected(&mut self, id: BufId) -> Result<Lease, BufError> {
        let state = self.state(id).ok_or(BufError::OutOfRange(id))?;
        if state != BufState::Kernel {
            return Err(BufError::NotKernelOwned { id, state });
        }
        self.states[id.0 as usize] = BufState::App;
        self.in_kernel -= 1;
        Ok(Lease { id, pool: self.id })
    }

    /// The kernel filled a receive bundle (IORING_RECVSEND_BUNDLE, Linux 6.10) of `count`
    /// buffers, naming only the first: the others are the ones published right after it, in
    /// ring order, since the kernel consumes the ring in order. `take(lease)` is called for
    /// each, first to last, once all have been checked to be the kernel's (so that a bad
    /// completion changes nothing).
    ///
    /// Sound without knowing the kernel's head: an index is republished only when a buffer
    /// comes back, and while a bundle's completion is unseen its buffers still count as the
    /// kernel's here, so the ring cannot wrap over them.
    pub fn on_selected_bundle(
        &mut self,
        first: BufId,
        count: u16,
        mut take: impl FnMut(Lease),
    ) -> Result<(), BufError> {
        let start = *self
            .index_of
            .get(first.0 as usize)
            .ok_or(BufError::OutOfRange(first))?;
        let mask = self.mask();
        let ids = (0..count).map(|i| self.at_index[(start.wrapping_add(i) & mask) as usize]);
        for id in ids.clone() {
            let state = self.states[id.0 as usize];
            if state != BufState::Kernel || count > self.entries() {
                return Err(BufError::NotKernelOwned { id, state });
            }
        }
        for id in ids {
            self.states[id.0 as usize] = BufState::App;
            self.in_kernel -= 1;
            take(Lease { id, pool: self.id });
        }
        Ok(())
    }

    /// The application is done with the bytes: queue the buffer for publishing.
    ///
    /// # Panics
    /// When `lease` is another pool's, or its buffer is not the application's (it would be
    /// published twice).
    pub fn recycle(&mut self, lease: Lease) {
        assert!(self.owns(&lease), "a lease of another buffer ring");
        let id = lease.id;
        assert_eq!(self.states[id.0 as usize], BufState::App);
        self.states[id.0 as usize] = BufState::Returning;
        self.returning.push(id);
    }

    /// Drains the recycled buffers for publishing: `publish(ring_index, id)` is called for each
    /// (the driver writes the ring entry at `ring_index`), and the new tail is returned for the
    /// driver to store with release ordering after all entries are written.
    pub fn take_returns(&mut self, mut publish: impl FnMut(u16, BufId)) -> u16 {
        let mask = self.mask();
        for id in self.returning.drain(..) {
            let index = self.tail & mask;
            self.at_index[index as usize] = id;
            self.index_of[id.0 as usize] = index;
            publish(index, id);
            self.tail = self.tail.wrapping_add(1);
            self.states[id.0 as usize] = BufState::Kernel;
            self.in_kernel += 1;
        }
        self.tail
    }
}

/// Bookkeeping for a provided buffer ring with incremental consumption (IOU_PBUF_RING_INC,
/// Linux 6.12): the kernel fills a buffer a receive at a time, each receive continuing where
/// the last one stopped (possibly for another socket), and sets IORING_CQE_F_BUF_MORE on every
/// completion but the one that used the buffer up. So one buffer holds several slices, and it
/// may go back to the ring only when the kernel has finished with it *and* every slice has
/// been released. Until the kernel has finished, the buffer stays `Kernel` in the
/// [`ProvidedRing`] (the kernel still picks from it); its lease is taken then, and handed back
/// for recycling with the last slice.
///
/// A completion of 0 bytes consumes nothing (Linux 6.18 and the stable kernels that have
/// commit 3ecd3e03144b; before it the kernel wrongly retired the buffer, which is then lost to
/// the ring: safe, but its capacity shrinks).
#[derive(Debug)]
pub struct IncTracker {
    bufs: Vec<IncBuf>,
}

#[derive(Debug, Default)]
struct IncBuf {
    /// Where the kernel's next bytes in this buffer land.
    next: u32,
    /// Slices handed out and not yet released.
    held: u32,
    /// The kernel has finished with the buffer: its lease, until the last slice goes.
    lease: Option<Lease>,
}

/// Why an incremental-consumption completion or release was refused (a driver or kernel bug).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IncError {
    /// The ring's bookkeeping refused the buffer.
    Buf(BufError),
    /// A release of a buffer that has no slice out.
    NothingHeld(BufId),
}

impl fmt::Display for IncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IncError::Buf(e) => write!(f, "incremental buffer: {e}"),
            IncError::NothingHeld(id) => {
                write!(f, "released a slice of buffer {} which has none out", id.0)
            }
        }
    }
}

impl IncTracker {
    /// For a ring of `entries` buffers.
    pub fn new(entries: u16) -> Self {
        Self {
            bufs: (0..entries).map(|_| IncBuf::default()).collect(),
        }
    }

    /// A receive completion named buffer `id` with `len` bytes; `buf_more` is
    /// IORING_CQE_F_BUF_MORE. Returns where in the buffer the bytes are; unless `len` is 0,
    /// the caller now holds a slice, to give back with [`IncTracker::release`].
    pub fn on_recv(
        &mut self,
        ring: &mut ProvidedRing,
        id: BufId,
        len: u32,
        buf_more: bool,
    ) -> Result<u32, IncError> {
        let state = ring
            .state(id)
            .ok_or(IncError::Buf(BufError::OutOfRange(id)))?;
        if state != BufState::Kernel {
            return Err(IncError::Buf(BufError::NotKernelOwned { id, state }));
        }
        let b = &mut self.bufs[id.0 as usize];
        let offset = b.next;
        if len == 0 {
            return Ok(offset);
        }
        b.next += len;
        b.held += 1;
        if !buf_more {
            // The kernel is done with it: the rest of it is ours too.
            b.lease = Some(ring.on_selected(id).map_err(IncError::Buf)?);
        }
        Ok(offset)
    }

    /// Gives back one slice of buffer `id`; returns the buffer's lease when that was the last
    /// slice of a buffer the kernel has finished with: recycle it.
    pub fn release(&mut self, id: BufId) -> Result<Option<Lease>, IncError> {
        let b = self
            .bufs
            .get_mut(id.0 as usize)
            .ok_or(IncError::Buf(BufError::OutOfRange(id)))?;
        if b.held == 0 {
            return Err(IncError::NothingHeld(id));
        }
        b.held -= 1;
        if b.held > 0 || b.lease.is_none() {
            return Ok(None);
        }
        b.next = 0;
        Ok(b.lease.take())
    }

    /// Slices of buffer `id` handed out and not released.
    pub fn held(&self, id: BufId) -> u32 {
        self.bufs.get(id.0 as usize).map_or(0, |b| b.held)
    }

    /// Bytes of buffer `id` the kernel has filled so far in this round of use: where its next
    /// receive into it lands.
    pub fn filled(&self, id: BufId) -> u32 {
        self.bufs.get(id.0 as usize).map_or(0, |b| b.next)
    }
}

/// How a provided buffer ring's receive completions name their buffers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RecvMode {
    /// One whole buffer per completion.
    Whole,
    /// Receive bundles (IORING_RECVSEND_BUNDLE, Linux 6.10): one completion may fill several
    /// consecutive ring buffers, naming only the first.
    Bundle,
    /// Incremental consumption (IOU_PBUF_RING_INC, Linux 6.12): a completion fills part of a
    /// buffer ([`IncTracker`]).
    Incremental,
}

/// What a receive CQE says about the buffers it filled.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RecvCompletion {
    /// The buffer the kernel picked (IORING_CQE_F_BUFFER): the first of a bundle.
    pub first: BufId,
    /// Bytes received: the CQE's `res` when not negative, else 0.
    pub bytes: u32,
    /// IORING_CQE_F_MORE: the multishot receive is still armed.
    pub more: bool,
    /// IORING_CQE_F_BUF_MORE: with incremental consumption, the kernel still fills `first`.
    pub buf_more: bool,
}

/// One buffer's share of a receive completion, as a connection's receive event carries it:
/// `len` bytes at `offset` in `buf`. `more` is the completion's F_MORE on the last piece, and
/// set on every piece before it: only the last piece of a bundle can say the multishot ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RecvPiece {
    /// The buffer.
    pub buf: BufId,
    /// Where the bytes start in it (0 but with incremental consumption).
    pub offset: u32,
    /// How many bytes (at least 1).
    pub len: u32,
    /// The receive is still armed after this piece.
    pub more: bool,
}

/// Why [`RecvBuffers`] refused a completion or a recycle: a driver or kernel bug. Nothing was
/// changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RecvError {
    /// The ring's bookkeeping refused a buffer the completion named.
    Buf(BufError),
    /// A recycle of a buffer (or slice) nobody holds.
    NothingHeld(BufId),
    /// [`RecvBuffers::on_recv`] of a completion without bytes (use
    /// [`RecvBuffers::return_unconsumed`]).
    Empty,
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Buf(e) => write!(f, "receive completion: {e}"),
            RecvError::NothingHeld(id) => {
                write!(f, "recycled buffer {} which nobody holds", id.0)
            }
            RecvError::Empty => f.write_str("a receive of no bytes holds no buffer"),
        }
    }
}

impl From<IncError> for RecvError {
    fn from(e: IncError) -> Self {
        match e {
            IncError::Buf(e) => RecvError::Buf(e),
            IncError::NothingHeld(id) => RecvError::NothingHeld(id),
        }
    }
}

/// The receive side of one provided buffer ring, above its [`ProvidedRing`] bookkeeping:
/// turns a receive completion into the per-buffer [`RecvPiece`]s a connection is handed
/// (splitting bundles, locating incremental slices), holds the leases of the pieces handed
/// out until they are recycled, and gives back the buffers of a completion that nobody will
/// consume (a stale one, or an end of stream that names a buffer).
///
/// Invariants (proptest below, and the `provided_buffers` fuzz target): every piece names
/// exactly the bytes the kernel wrote, in ring order; a buffer goes back to the ring only once
/// every piece of it is recycled and the kernel has finished with it; none is lost or doubled.
#[derive(Debug)]
pub struct RecvBuffers {
    mode: RecvMode,
    buf_size: u32,
    /// Whole buffers handed out (whole and bundle modes), by id.
    leases: Vec<Option<Lease>>,
    inc: Option<IncTracker>,
    /// The leases of an unconsumed bundle on their way back (capacity reserved: a bundle
    /// spans at most the whole ring).
    unconsumed: Vec<Lease>,
}

impl RecvBuffers {
    /// For a ring of `entries` buffers of `buf_size` bytes each, received in `mode`.
    ///
    /// # Panics
    /// When `buf_size` is 0.
    pub fn new(entries: u16, buf_size: u32, mode: RecvMode) -> Self {
        assert!(buf_size > 0, "receive buffers need a size");
        Self {
            mode,
            buf_size,
            leases: (0..entries).map(|_| None).collect(),
            inc: (mode == RecvMode::Incremental).then(|| IncTracker::new(entries)),
            unconsumed: Vec::with_capacity(match mode {
                RecvMode::Bundle => usize::from(entries),
                _ => 0,
            }),
        }
    }

    /// The receive mode.
    pub fn mode(&self) -> RecvMode {
        self.mode
    }

    /// A receive completion of at least one byte: `piece` is called for each buffer it
    /// filled, in the order of the bytes; the caller now holds each piece until
    /// [`RecvBuffers::recycle`]. Returns how many pieces there were. On error nothing was
    /// taken and `piece` was not called.
    pub fn on_recv(
        &mut self,
        ring: &mut ProvidedRing,
        c: RecvCompletion,
        mut piece: impl FnMut(RecvPiece),
    ) -> Result<u16, RecvError> {
        if c.bytes == 0 {
            return Err(RecvError::Empty);
        }
        match self.mode {
            RecvMode::Whole => {
                let lease = ring.on_selected(c.first).map_err(RecvError::Buf)?;
                self.leases[c.first.0 as usize] = Some(lease);
                piece(RecvPiece {
                    buf: c.first,
                    offset: 0,
                    len: c.bytes,
                    more: c.more,
                });
                Ok(1)
            }
            RecvMode::Bundle => {
                let count = self.bundle_count(c.bytes);
                let (size, leases) = (self.buf_size, &mut self.leases);
                let (mut left, mut i) = (c.bytes, 0u16);
                ring.on_selected_bundle(c.first, count, |lease| {
                    let buf = lease.id();
                    leases[buf.0 as usize] = Some(lease);
                    let len = left.min(size);
                    left -= len;
                    i += 1;
                    piece(RecvPiece {
                        buf,
                        offset: 0,
                        len,
                        more: c.more || i < count,
                    });
                })
                .map_err(RecvError::Buf)?;
                Ok(count)
            }
            RecvMode::Incremental => {
                let Some(inc) = self.inc.as_mut() else {
                    unreachable!("incremental mode has a tracker (new)")
                };
                let offset = inc.on_recv(ring, c.first, c.bytes, c.buf_more)?;
                piece(RecvPiece {
                    buf: c.first,
                    offset,
                    len: c.bytes,
                    more: c.more,
                });
                Ok(1)
            }
        }
    }

    /// A receive completion nobody will consume (a stale one, or an end of stream or error
    /// that names a buffer): what it filled goes back to the ring (with incremental
    /// consumption: the bytes count as a slice released at once, and the buffer goes back
    /// when the kernel has finished with it and no other slice is out).
    pub fn return_unconsumed(
        &mut self,
        ring: &mut ProvidedRing,
        c: RecvCompletion,
    ) -> Result<(), RecvError> {
        match self.mode {
            RecvMode::Incremental => {
                let Some(inc) = self.inc.as_mut() else {
                    unreachable!("incremental mode has a tracker (new)")
                };
                inc.on_recv(ring, c.first, c.bytes, c.buf_more)?;
                if c.bytes > 0 {
                    if let Some(lease) = inc.release(c.first)? {
                        ring.recycle(lease);
                    }
                }
            }
            // Even a completion of no bytes that names a buffer took it from the ring.
            RecvMode::Bundle if c.bytes > 0 => {
                let count = self.bundle_count(c.bytes);
                let unconsumed = &mut self.unconsumed;
                ring.on_selected_bundle(c.first, count, |lease| unconsumed.push(lease))
                    .map_err(RecvError::Buf)?;
                for lease in self.unconsumed.drain(..) {
                    ring.recycle(lease);
                }
            }
            RecvMode::Whole | RecvMode::Bundle => {
                let lease = ring.on_selected(c.first).map_err(RecvError::Buf)?;
                ring.recycle(lease);
            }
        }
        Ok(())
    }

    /// The holder is done with a piece of `buf`: back to the ring now, or (incremental) with
    /// the buffer's last piece once the kernel has finished with it.
    pub fn recycle(&mut self, ring: &mut ProvidedRing, buf: BufId) -> Result<(), RecvError> {
        let lease = match self.inc.as_mut() {
            Some(inc) => inc.release(buf)?,
            None => Some(
                self.leases
                    .get_mut(buf.0 as usize)
                    .and_then(Option::take)
                    .ok_or(RecvError::NothingHeld(buf))?,
            ),
        };
        if let Some(lease) = lease {
            ring.recycle(lease);
        }
        Ok(())
    }

    /// True when a piece of `buf` is handed out (the holder may send from it).
    pub fn holds(&self, buf: BufId) -> bool {
        match &self.inc {
            Some(inc) => inc.held(buf) > 0,
            None => self.leases.get(buf.0 as usize).is_some_and(Option::is_some),
        }
    }

    /// Buffers a bundle of `bytes` spans (at least one).
    fn bundle_count(&self, bytes: u32) -> u16 {
        u16::try_from(bytes.div_ceil(self.buf_size).max(1)).unwrap_or(u16::MAX)
    }
}

/// Index of one in-flight SEND_ZC in a [`ZcTracker`]; the driver puts it in the send's
/// `user_data`, so that both of its CQEs (result and notification) name exactly one send even
/// when several sends of one buffer, or of one connection, await notifications at once.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct ZcSlot(pub u32);

/// Why a [`ZcTracker`] refused a completion: each is a driver or kernel bug.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ZcError {
    /// The slot names no send in flight.
    UnknownSlot(ZcSlot),
    /// A second result CQE for one send.
    DuplicateResult(ZcSlot),
    /// A notification for a send whose result said none would follow, or a second one.
    UnexpectedNotification(ZcSlot),
    /// A buffer id outside the tracker.
    OutOfRange(BufId),
}

impl fmt::Display for ZcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZcError::UnknownSlot(s) => write!(f, "SEND_ZC completion for unknown slot {}", s.0),
            ZcError::DuplicateResult(s) => write!(f, "second SEND_ZC result for slot {}", s.0),
            ZcError::UnexpectedNotification(s) => {
                write!(f, "unexpected SEND_ZC notification for slot {}", s.0)
            }
            ZcError::OutOfRange(id) => write!(f, "buffer id {} is outside the tracker", id.0),
        }
    }
}

/// Where one in-flight SEND_ZC stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ZcPhase {
    /// Submitted; neither CQE seen.
    Submitted,
    /// The result CQE carried IORING_CQE_F_MORE: the notification is still to come.
    AwaitingNotif,
    /// The notification came first (the kernel does not promise the order): only the
    /// result is still to come.
    NotifFirst,
}

#[derive(Clone, Copy, Debug)]
struct ZcSend<T> {
    owner: T,
    buf: BufId,
    phase: ZcPhase,
}

/// What a SEND_ZC's result CQE means for the driver.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ZcResult<T> {
    /// Who sent (for the driver: which connection gets `SendDone`).
    pub owner: T,
    /// The buffer the send named.
    pub buf: BufId,
    /// A deferred recycle that may happen now (the send ended without a notification and it
    /// was the last one holding the buffer).
    pub recycle: Option<BufId>,
}

/// SEND_ZC bookkeeping for buffers that a connection returns by "recycle" (provided-buffer
/// rings), where [`FixedPool`]'s `AwaitingNotif` state does not apply: the connection state
/// machine recycles a buffer after its last send's *result*, but with SEND_ZC the kernel may
/// read the buffer until that send's *notification* (PITFALLS.md, "SEND_ZC gives two CQEs, and the
/// buffer is the kernel's until the second"). The driver asks
/// [`ZcTracker::recycle`] instead of recycling, and recycles only what the tracker hands back,
/// now or from a later [`ZcTracker::on_notification`].
///
/// Invariants (proptest below): a buffer is never released for recycling while a notification
/// for a send that named it is outstanding, and every recycle asked for is released exactly
/// once, in whatever order results and notifications arrive.
///
/// `T` is whatever identifies the sender to the driver (a connection token). Capacity is fixed
/// at construction: when every slot is in flight [`ZcTracker::submit`] says so, and the driver
/// can send that one by copy instead.
#[derive(Debug, Clone)]
pub struct ZcTracker<T> {
    sends: Vec<Option<ZcSend<T>>>,
    free: Vec<ZcSlot>,
    /// Per buffer: sends naming it that are not finished (result and, if promised,
    /// notification seen).
    outstanding: Vec<u32>,
    /// Per buffer: the connection recycled it while sends were outstanding.
    recycle_wanted: Vec<bool>,
}

impl<T: Copy> ZcTracker<T> {
    /// A tracker for buffer ids `0..buffers` with room for `max_sends` sends in flight.
    pub fn new(buffers: u16, max_sends: u32) -> Self {
        Self {
            sends: alloc::vec![None; max_sends as usize],
            free: (0..max_sends).rev().map(ZcSlot).collect(),
            outstanding: alloc::vec![0; buffers as usize],
            recycle_wanted: alloc::vec![false; buffers as usize],
        }
    }

    /// Sends not yet finished (the driver must not tear down buffers before this is 0).
    pub fn in_flight(&self) -> usize {
        self.sends.len() - self.free.len()
    }

    /// True when `buf` was recycled by its owner and waits for notifications.
    pub fn is_deferred(&self, buf: BufId) -> bool {
        self.recycle_wanted
            .get(buf.0 as usize)
            .copied()
            .unwrap_or(false)
    }

    /// A SEND_ZC of `buf` by `owner` is about to be submitted: its slot, or `None` when every
    /// slot is in flight (send this one by copy instead).
    pub fn submit(&mut self, owner: T, buf: BufId) -> Result<Option<ZcSlot>, ZcError> {
        let count = self
            .outstanding
            .get_mut(buf.0 as usize)
            .ok_or(ZcError::OutOfRange(buf))?;
        let Some(slot) = self.free.pop() else {
            return Ok(None);
        };
        *count += 1;
        self.sends[slot.0 as usize] = Some(ZcSend {
            owner,
            buf,
            phase: ZcPhase::Submitted,
        });
        Ok(Some(slot))
    }

    /// The result CQE of the send in `slot` arrived; `more` is its IORING_CQE_F_MORE (a
    /// notification follows; without it the send ended, e.g. with an error).
    pub fn on_result(&mut self, slot: ZcSlot, more: bool) -> Result<ZcResult<T>, ZcError> {
        let send = self.send_mut(slot)?;
        let (owner, buf) = (send.owner, send.buf);
        let finished = match (send.phase, more) {
            (ZcPhase::Submitted, true) => {
                send.phase = ZcPhase::AwaitingNotif;
                false
            }
            // No notification promised: done. (A notification that came first with a result
            // that then says "none follows" would be a kernel bug; finish either way.)
            (ZcPhase::Submitted, false) | (ZcPhase::NotifFirst, _) => true,
            (ZcPhase::AwaitingNotif, _) => return Err(ZcError::DuplicateResult(slot)),
        };
        let recycle = if finished { self.finish(slot) } else { None };
        Ok(ZcResult {
            owner,
            buf,
            recycle,
        })
    }

    /// The notification CQE (IORING_CQE_F_NOTIF) of the send in `slot` arrived: the kernel is
    /// done reading its buffer. Returns the buffer when its recycle was deferred and no other
    /// send still holds it: recycle it now.
    pub fn on_notification(&mut self, slot: ZcSlot) -> Result<Option<BufId>, ZcError> {
        let send = self.send_mut(slot)?;
        match send.phase {
            ZcPhase::Submitted => {
                send.phase = ZcPhase::NotifFirst;
                Ok(None)
            }
            ZcPhase::AwaitingNotif => Ok(self.finish(slot)),
            ZcPhase::NotifFirst => Err(ZcError::UnexpectedNotification(slot)),
        }
    }

    /// The owner is done with `buf` (its `Recycle`): true to recycle now, false when sends
    /// still hold it (the tracker hands it back later, exactly once).
    pub fn recycle(&mut self, buf: BufId) -> Result<bool, ZcError> {
        let i = buf.0 as usize;
        let count = *self.outstanding.get(i).ok_or(ZcError::OutOfRange(buf))?;
        if count == 0 {
            return Ok(true);
        }
        debug_assert!(!self.recycle_wanted[i], "buffer {} recycled twice", buf.0);
        self.recycle_wanted[i] = true;
        Ok(false)
    }

    fn send_mut(&mut self, slot: ZcSlot) -> Result<&mut ZcSend<T>, ZcError> {
        self.sends
            .get_mut(slot.0 as usize)
            .and_then(Option::as_mut)
            .ok_or(ZcError::UnknownSlot(slot))
    }

    /// Frees `slot`; returns its buffer when that released a deferred recycle.
    fn finish(&mut self, slot: ZcSlot) -> Option<BufId> {
        let send = self.sends[slot.0 as usize].take()?;
        self.free.push(slot);
        let i = send.buf.0 as usize;
        self.outstanding[i] -= 1;
        if self.outstanding[i] == 0 && self.recycle_wanted[i] {
            self.recycle_wanted[i] = false;
            return Some(send.buf);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    // A lease is tied to the pool that issued it: another pool refuses it before any state
    // changes, so a foreign lease can never publish a buffer twice or free one in flight.
    #[test]
    #[should_panic(expected = "a lease of another buffer ring")]
    fn provided_ring_refuses_a_foreign_lease() {
        let mut a = ProvidedRing::new(BufGroup(0), 4);
        let mut b = ProvidedRing::new(BufGroup(0), 4);
        a.take_returns(|_, _| {});
        b.take_returns(|_, _| {});
        let lease = a.on_selected(BufId(1)).unwrap();
        // Same group, same id, and b's buffer 1 is the kernel's: recycling would publish it
        // a second time.
        b.recycle(lease);
    }

    #[test]
    #[should_panic(expected = "a lease of another buffer pool")]
    fn fixed_pool_refuses_a_foreign_lease() {
        let mut a = FixedPool::new(2);
        let mut b = FixedPool::new(2);
        let lease = a.acquire().unwrap();
        let _in_flight = b.acquire().unwrap();
        b.release(lease);
    }

    #[test]
    fn leases_name_their_pool() {
        let mut a = FixedPool::new(1);
        let b = FixedPool::new(1);
        let lease = a.acquire().unwrap();
        assert!(a.owns(&lease) && !b.owns(&lease));
        assert_ne!(a.id(), b.id());
        a.release(lease);
    }

    #[test]
    fn fixed_pool_lease_cycle() {
        let mut pool = FixedPool::new(2);
        let a = pool.acquire().unwrap();
        let b = pool.acquire().unwrap();
        assert!(pool.acquire().is_none(), "both leased");
        let (ida, idb) = (a.id(), b.id());
        assert_ne!(ida, idb);
        let ud = UserData(7);
        pool.submit(a, ud);
        // Wrong user_data: the completion of some other op cannot free this buffer.
        assert!(pool.complete(ida, UserData(8)).is_err());
        let a = pool.complete(ida, ud).unwrap();
        // A second completion for the same op is refused.
        assert!(pool.complete(ida, ud).is_err());
        pool.release(a);
        pool.release(b);
        assert_eq!(pool.available(), 2);
        assert!(pool.complete(BufId(9), ud).is_err());
        let _ = idb;
    }

    #[test]
    fn send_zc_buffer_waits_for_notification() {
        let mut pool = FixedPool::new(1);
        let l = pool.acquire().unwrap();
        let id = pool.submit(l, UserData(1));
        pool.complete_awaiting_notif(id, UserData(1)).unwrap();
        assert_eq!(pool.state(id), Some(BufState::AwaitingNotif(UserData(1))));
        assert!(
            pool.acquire().is_none(),
            "buffer not free before the notification"
        );
        assert!(pool.complete(id, UserData(1)).is_err());
        let l = pool.notified(id, UserData(1)).unwrap();
        pool.release(l);
        assert_eq!(pool.available(), 1);
    }

    #[test]
    fn provided_ring_publishes_and_recycles() {
        let mut ring = ProvidedRing::new(BufGroup(3), 4);
        assert_eq!(ring.in_kernel(), 0);
        let mut published = Vec::new();
        let tail = ring.take_returns(|idx, id| published.push((idx, id)));
        assert_eq!(tail, 4);
        assert_eq!(published.len(), 4);
        assert!(ring.can_rearm());
        let l = ring.on_selected(BufId(2)).unwrap();
        assert!(ring.on_selected(BufId(2)).is_err(), "selected twice");
        ring.recycle(l);
        let tail = ring.take_returns(|idx, id| {
            assert_eq!(idx, 0, "wraps to ring index 0");
            assert_eq!(id, BufId(2));
        });
        assert_eq!(tail, 5);
    }

    #[test]
    fn replenish_threshold_is_a_quarter() {
        let mut ring = ProvidedRing::new(BufGroup(0), 8);
        ring.take_returns(|_, _| {});
        let mut leases = Vec::new();
        for i in 0..7 {
            leases.push(ring.on_selected(BufId(i)).unwrap());
        }
        // One in the kernel, threshold two: ENOBUFS re-arm must wait.
        assert!(!ring.can_rearm());
        assert!(!ring.needs_replenish(), "nothing recycled yet");
        ring.recycle(leases.pop().unwrap());
        assert!(ring.needs_replenish());
        ring.take_returns(|_, _| {});
        assert!(ring.can_rearm());
        for l in leases {
            ring.recycle(l);
        }
    }

    #[derive(Debug, Clone)]
    enum PoolOp {
        Acquire,
        Submit(usize),
        Complete(usize),
        CompleteWrongUd(usize),
        Release(usize),
    }

    fn pool_op() -> impl Strategy<Value = PoolOp> {
        prop_oneof![
            Just(PoolOp::Acquire),
            (0usize..8).prop_map(PoolOp::Submit),
            (0usize..8).prop_map(PoolOp::Complete),
            (0usize..8).prop_map(PoolOp::CompleteWrongUd),
            (0usize..8).prop_map(PoolOp::Release),
        ]
    }

    proptest! {
        /// Under any sequence of lease/submit/complete/release, every buffer is in exactly
        /// one place: free list, an app lease, or in flight for exactly one user_data.
        #[test]
        fn fixed_pool_ownership(ops in proptest::collection::vec(pool_op(), 0..200)) {
            let n = 4;
            let mut pool = FixedPool::new(n);
            let mut held: Vec<Lease> = Vec::new();
            let mut inflight: Vec<(BufId, UserData)> = Vec::new();
            let mut next_ud = 1u64;
            for op in ops {
                match op {
                    PoolOp::Acquire => {
                        let had = pool.available();
                        match pool.acquire() {
                            Some(l) => held.push(l),
                            None => prop_assert_eq!(had, 0),
                        }
                    }
                    PoolOp::Submit(i) if !held.is_empty() => {
                        let l = held.swap_remove(i % held.len());
                        let ud = UserData(next_ud);
                        next_ud += 1;
                        let id = pool.submit(l, ud);
                        inflight.push((id, ud));
                    }
                    PoolOp::Complete(i) if !inflight.is_empty() => {
                        let (id, ud) = inflight.swap_remove(i % inflight.len());
                        held.push(pool.complete(id, ud).unwrap());
                    }
                    PoolOp::CompleteWrongUd(i) if !inflight.is_empty() => {
                        let (id, _) = inflight[i % inflight.len()];
                        prop_assert!(pool.complete(id, UserData(0)).is_err());
                    }
                    PoolOp::Release(i) if !held.is_empty() => {
                        pool.release(held.swap_remove(i % held.len()));
                    }
                    _ => {}
                }
                let mut seen = [0u8; 4];
                for l in &held {
                    prop_assert_eq!(pool.state(l.id()), Some(BufState::App));
                    seen[l.id().0 as usize] += 1;
                }
                for (id, ud) in &inflight {
                    prop_assert_eq!(pool.state(*id), Some(BufState::InFlight(*ud)));
                    seen[id.0 as usize] += 1;
                }
                for (id, count) in seen.iter_mut().enumerate() {
                    if pool.state(BufId(id as u16)) == Some(BufState::Free) {
                        *count += 1;
                    }
                }
                prop_assert_eq!(seen, [1u8; 4], "each buffer in exactly one place");
                prop_assert_eq!(pool.available() + held.len() + inflight.len(), n);
            }
        }

        /// The provided ring never hands the same buffer out twice, never loses one, and the
        /// published ring indices run consecutively (mod entries) from the free-running tail.
        #[test]
        fn provided_ring_ownership(ops in proptest::collection::vec((0u8..3, 0usize..64), 0..300)) {
            let mut ring = ProvidedRing::new(BufGroup(1), 8);
            // The "kernel": ids published, in publish order, consumed FIFO like the real ring.
            let mut kernel: std::collections::VecDeque<BufId> = Default::default();
            let mut held: Vec<Lease> = Vec::new();
            let mut expected_tail = 0u16;
            let publish = |ring: &mut ProvidedRing, kernel: &mut std::collections::VecDeque<BufId>, expected_tail: &mut u16| {
                let t = ring.take_returns(|idx, id| {
                    assert_eq!(idx, *expected_tail & 7);
                    *expected_tail = expected_tail.wrapping_add(1);
                    kernel.push_back(id);
                });
                assert_eq!(t, *expected_tail);
            };
            publish(&mut ring, &mut kernel, &mut expected_tail);
            for (op, i) in ops {
                match op {
                    0 => if let Some(id) = kernel.pop_front() {
                        held.push(ring.on_selected(id).unwrap());
                    } else {
                        // The kernel would answer ENOBUFS; the ring agrees nothing is there.
                        prop_assert_eq!(ring.in_kernel(), 0);
                    },
                    1 if !held.is_empty() => ring.recycle(held.swap_remove(i % held.len())),
                    2 => publish(&mut ring, &mut kernel, &mut expected_tail),
                    _ => {}
                }
                prop_assert_eq!(ring.in_kernel(), kernel.len());
                prop_assert_eq!(ring.in_kernel() + held.len() + ring.returning(), 8);
                for id in &kernel {
                    prop_assert_eq!(ring.state(*id), Some(BufState::Kernel));
                }
            }
        }
    }

    proptest! {
        /// Receive bundles: the kernel takes runs of buffers in ring order and names only the
        /// first; the bookkeeping must name exactly the buffers the kernel filled, in order,
        /// whatever the order of recycling and publishing before.
        #[test]
        fn provided_ring_bundles_name_the_kernels_buffers(
            ops in proptest::collection::vec((0u8..3, 1usize..6, 0usize..64), 0..300)
        ) {
            const N: u16 = 8;
            let mut ring = ProvidedRing::new(BufGroup(1), N);
            let mut kernel: std::collections::VecDeque<BufId> = Default::default();
            let mut held: Vec<Lease> = Vec::new();
            ring.take_returns(|_, id| kernel.push_back(id));
            for (op, n, i) in ops {
                match op {
                    0 if !kernel.is_empty() => {
                        let n = n.min(kernel.len());
                        let filled: Vec<BufId> = kernel.drain(..n).collect();
                        let mut named = Vec::new();
                        ring.on_selected_bundle(filled[0], n as u16, |l| {
                            named.push(l.id());
                            held.push(l);
                        }).unwrap();
                        prop_assert_eq!(named, filled);
                    }
                    1 if !held.is_empty() => ring.recycle(held.swap_remove(i % held.len())),
                    2 => { ring.take_returns(|_, id| kernel.push_back(id)); }
                    _ => {}
                }
                prop_assert_eq!(ring.in_kernel(), kernel.len());
                prop_assert_eq!(ring.in_kernel() + held.len() + ring.returning(), N as usize);
            }
        }
    }

    proptest! {
        /// Incremental consumption against a simulated kernel: receives of random sizes take
        /// the rest of the head buffer or part of it; slices are released in random order. Each
        /// slice's offset is where the kernel put its bytes, a buffer goes back to the ring
        /// only once the kernel is done with it and its last slice is released, and every
        /// buffer comes back in the end.
        #[test]
        fn incremental_slices_and_recycling(
            ops in proptest::collection::vec((0u8..3, 0u32..300, 0usize..64), 0..400)
        ) {
            const N: u16 = 4;
            const SIZE: u32 = 256;
            let mut ring = ProvidedRing::new(BufGroup(2), N);
            let mut inc = IncTracker::new(N);
            // Kernel model: the ring in order, and how much of the head buffer is used.
            let mut kernel: std::collections::VecDeque<BufId> = Default::default();
            let mut head_used = 0u32;
            let mut slices: Vec<(BufId, u32, u32)> = Vec::new();
            ring.take_returns(|_, id| kernel.push_back(id));
            for (op, len, i) in ops {
                match op {
                    0 if !kernel.is_empty() => {
                        let id = kernel[0];
                        let take = len.min(SIZE - head_used);
                        let offset = head_used;
                        head_used += take;
                        let more = head_used < SIZE;
                        if !more {
                            kernel.pop_front();
                            head_used = 0;
                        }
                        let got = inc.on_recv(&mut ring, id, take, more).unwrap();
                        prop_assert_eq!(got, offset);
                        if take > 0 {
                            slices.push((id, offset, take));
                        }
                    }
                    1 if !slices.is_empty() => {
                        let (id, _, _) = slices.swap_remove(i % slices.len());
                        if let Some(lease) = inc.release(id).unwrap() {
                            prop_assert!(!kernel.contains(&id), "recycled while the kernel fills it");
                            prop_assert!(!slices.iter().any(|s| s.0 == id), "recycled with a slice out");
                            ring.recycle(lease);
                        }
                    }
                    2 => { ring.take_returns(|_, id| kernel.push_back(id)); }
                    _ => {}
                }
                // Slices of one buffer never overlap.
                for a in &slices {
                    for b in &slices {
                        if a != b && a.0 == b.0 {
                            prop_assert!(a.1 + a.2 <= b.1 || b.1 + b.2 <= a.1);
                        }
                    }
                }
            }
            // Release everything left; every buffer the kernel finished with comes back.
            for (id, _, _) in slices.drain(..) {
                if let Some(lease) = inc.release(id).unwrap() {
                    ring.recycle(lease);
                }
            }
            ring.take_returns(|_, id| kernel.push_back(id));
            prop_assert_eq!(ring.in_kernel(), N as usize);
        }
    }

    /// One step of the receive model below.
    #[derive(Clone, Copy, Debug)]
    enum RecvStep {
        /// A completion of up to `len` bytes (0: an end of stream naming a buffer);
        /// `consume` hands it to a connection, else it is stale and given back.
        Recv { len: u32, more: bool, consume: bool },
        /// The `i`-th piece held is recycled.
        Recycle { i: usize },
        /// Recycled buffers are published.
        Publish,
    }

    fn recv_step() -> impl Strategy<Value = RecvStep> {
        prop_oneof![
            4 => (0u32..200, any::<bool>(), proptest::bool::weighted(0.8))
                .prop_map(|(len, more, consume)| RecvStep::Recv { len, more, consume }),
            3 => (0usize..64).prop_map(|i| RecvStep::Recycle { i }),
            2 => Just(RecvStep::Publish),
        ]
    }

    fn recv_mode() -> impl Strategy<Value = RecvMode> {
        prop_oneof![
            Just(RecvMode::Whole),
            Just(RecvMode::Bundle),
            Just(RecvMode::Incremental)
        ]
    }

    proptest! {
        /// Receive completions in every mode against a model kernel that consumes the ring in
        /// order: each piece names exactly the buffer, offset and length the model filled, in
        /// order, with only a bundle's last piece free to end the multishot; stale completions
        /// and recycled pieces give their buffers back only once the kernel has finished with
        /// them and no piece is out; in the end every buffer is the kernel's again, once.
        #[test]
        fn receive_pieces_match_the_kernel_and_every_buffer_comes_back(
            mode in recv_mode(),
            log2_entries in 0u32..4,
            steps in proptest::collection::vec(recv_step(), 0..300),
        ) {
            const SIZE: u32 = 64;
            let entries = 1u16 << log2_entries;
            let mut ring = ProvidedRing::new(BufGroup(0), entries);
            let mut rb = RecvBuffers::new(entries, SIZE, mode);
            let mut kernel: std::collections::VecDeque<BufId> = Default::default();
            let mut head_used = 0u32;
            let mut held: Vec<RecvPiece> = Vec::new();
            ring.take_returns(|_, id| kernel.push_back(id));
            for step in steps {
                match step {
                    RecvStep::Recv { len, more, consume } if !kernel.is_empty() => {
                        // What the model kernel fills, and what the pieces must say.
                        let mut want: Vec<RecvPiece> = Vec::new();
                        let first = kernel[0];
                        let (bytes, buf_more) = match mode {
                            RecvMode::Whole => {
                                kernel.pop_front();
                                let bytes = len.min(SIZE);
                                want.push(RecvPiece { buf: first, offset: 0, len: bytes, more });
                                (bytes, false)
                            }
                            RecvMode::Bundle => {
                                let count = len.div_ceil(SIZE).max(1).min(kernel.len() as u32);
                                let bytes = len.min(count * SIZE);
                                let mut left = bytes;
                                for i in 0..count {
                                    let buf = kernel.pop_front().unwrap();
                                    let this = left.min(SIZE);
                                    left -= this;
                                    let more = more || i + 1 < count;
                                    want.push(RecvPiece { buf, offset: 0, len: this, more });
                                }
                                (bytes, false)
                            }
                            RecvMode::Incremental => {
                                let bytes = len.min(SIZE - head_used);
                                let offset = head_used;
                                head_used += bytes;
                                let buf_more = head_used < SIZE;
                                if !buf_more {
                                    kernel.pop_front();
                                    head_used = 0;
                                }
                                want.push(RecvPiece { buf: first, offset, len: bytes, more });
                                (bytes, buf_more)
                            }
                        };
                        let c = RecvCompletion { first, bytes, more, buf_more };
                        if consume && bytes > 0 {
                            let mut got = Vec::new();
                            let n = rb.on_recv(&mut ring, c, |p| got.push(p)).unwrap();
                            prop_assert_eq!(usize::from(n), got.len());
                            prop_assert_eq!(&got, &want);
                            for p in &got {
                                prop_assert!(rb.holds(p.buf));
                            }
                            held.extend(got);
                        } else {
                            if bytes == 0 {
                                let refused = rb.on_recv(&mut ring, c, |_| panic!("no piece"));
                                prop_assert_eq!(refused, Err(RecvError::Empty));
                            }
                            // Stale, or an end of stream that names a buffer.
                            rb.return_unconsumed(&mut ring, c).unwrap();
                        }
                    }
                    RecvStep::Recycle { i } if !held.is_empty() => {
                        let p = held.swap_remove(i % held.len());
                        rb.recycle(&mut ring, p.buf).unwrap();
                        let in_use = held.iter().any(|h| h.buf == p.buf);
                        let filling = mode == RecvMode::Incremental
                            && kernel.front() == Some(&p.buf);
                        prop_assert_eq!(rb.holds(p.buf), in_use);
                        if in_use || filling {
                            prop_assert_ne!(ring.state(p.buf), Some(BufState::Returning));
                        } else {
                            prop_assert_eq!(ring.state(p.buf), Some(BufState::Returning));
                        }
                    }
                    RecvStep::Publish => {
                        ring.take_returns(|_, id| kernel.push_back(id));
                    }
                    _ => {}
                }
                // Every buffer in exactly one place: the kernel's, returning, or held.
                let mut app: Vec<BufId> = held.iter().map(|p| p.buf)
                    .filter(|b| !kernel.contains(b)).collect();
                app.sort_unstable();
                app.dedup();
                prop_assert_eq!(ring.in_kernel(), kernel.len());
                prop_assert_eq!(ring.in_kernel() + ring.returning() + app.len(), usize::from(entries));
            }
            for p in held.drain(..) {
                rb.recycle(&mut ring, p.buf).unwrap();
            }
            prop_assert_eq!(rb.recycle(&mut ring, BufId(0)), Err(RecvError::NothingHeld(BufId(0))));
            ring.take_returns(|_, id| kernel.push_back(id));
            let mut ids: Vec<u16> = kernel.iter().map(|b| b.0).collect();
            ids.sort_unstable();
            ids.dedup();
            prop_assert_eq!(ids.len(), usize::from(entries), "a buffer lost or doubled");
        }
    }

    #[test]
    fn a_stale_bundle_returns_every_buffer_it_spans() {
        let mut ring = ProvidedRing::new(BufGroup(0), 4);
        let mut rb = RecvBuffers::new(4, 10, RecvMode::Bundle);
        ring.take_returns(|_, _| {});
        let c = RecvCompletion {
            first: BufId(0),
            bytes: 25,
            more: true,
            buf_more: false,
        };
        rb.return_unconsumed(&mut ring, c).unwrap();
        assert_eq!((ring.in_kernel(), ring.returning()), (1, 3));
        // A completion naming a buffer the kernel no longer has changes nothing.
        assert!(rb.return_unconsumed(&mut ring, c).is_err());
        assert_eq!((ring.in_kernel(), ring.returning()), (1, 3));
        let mut pieces = Vec::new();
        let c = RecvCompletion {
            first: BufId(3),
            bytes: 5,
            more: false,
            buf_more: false,
        };
        assert_eq!(rb.on_recv(&mut ring, c, |p| pieces.push(p)), Ok(1));
        assert_eq!(
            pieces,
            [RecvPiece {
                buf: BufId(3),
                offset: 0,
                len: 5,
                more: false
            }]
        );
    }

    #[test]
    fn fixed_pool_rearms_at_a_quarter_free() {
        let mut pool = FixedPool::new(8);
        let leases: Vec<Lease> = (0..8).map(|_| pool.acquire().unwrap()).collect();
        assert!(!pool.can_rearm());
        let mut leases = leases.into_iter();
        pool.release(leases.next().unwrap());
        assert!(!pool.can_rearm(), "one of eight is below a quarter");
        pool.release(leases.next().unwrap());
        assert!(pool.can_rearm());
        for l in leases {
            pool.release(l);
        }
    }

    #[test]
    fn an_incremental_buffer_waits_for_the_kernel_and_every_slice() {
        let mut ring = ProvidedRing::new(BufGroup(0), 2);
        let mut inc = IncTracker::new(2);
        ring.take_returns(|_, _| {});
        let b = BufId(0);
        assert_eq!(inc.on_recv(&mut ring, b, 100, true), Ok(0));
        assert_eq!(
            inc.on_recv(&mut ring, b, 0, true),
            Ok(100),
            "EOF consumes nothing"
        );
        assert_eq!(inc.on_recv(&mut ring, b, 50, true), Ok(100));
        assert_eq!(inc.release(b), Ok(None), "the kernel still fills it");
        assert_eq!(ring.state(b), Some(BufState::Kernel));
        assert_eq!(inc.on_recv(&mut ring, b, 10, false), Ok(150));
        assert_eq!(ring.state(b), Some(BufState::App));
        assert_eq!(inc.release(b), Ok(None), "one slice still out");
        let lease = inc
            .release(b)
            .unwrap()
            .expect("last slice of a finished buffer");
        assert_eq!(lease.id(), b);
        assert_eq!(inc.release(b), Err(IncError::NothingHeld(b)));
        ring.recycle(lease);
        ring.take_returns(|_, _| {});
        assert_eq!(inc.on_recv(&mut ring, b, 7, true), Ok(0), "a fresh start");
    }

    #[test]
    fn a_bundle_naming_a_buffer_the_kernel_does_not_hold_changes_nothing() {
        let mut ring = ProvidedRing::new(BufGroup(0), 4);
        ring.take_returns(|_, _| {});
        let first = ring.on_selected(BufId(0)).unwrap();
        // Ids 2 and 3 follow 1 in the ring; 4 buffers from 1 would wrap onto 0, which we hold.
        let err = ring.on_selected_bundle(BufId(1), 4, |_| panic!("nothing taken"));
        assert!(matches!(
            err,
            Err(BufError::NotKernelOwned { id: BufId(0), .. })
        ));
        assert_eq!(ring.in_kernel(), 3);
        let mut got = Vec::new();
        ring.on_selected_bundle(BufId(1), 3, |l| got.push(l.id()))
            .unwrap();
        assert_eq!(got, [BufId(1), BufId(2), BufId(3)]);
        assert_eq!(ring.in_kernel(), 0);
        ring.recycle(first);
    }

    #[test]
    fn zc_recycle_waits_for_every_notification_of_the_buffer() {
        let mut zc: ZcTracker<u32> = ZcTracker::new(2, 8);
        let b = BufId(1);
        // A short send and its remainder: two sends of one buffer, both awaiting notification.
        let s1 = zc.submit(7, b).unwrap().unwrap();
        let r = zc.on_result(s1, true).unwrap();
        assert_eq!((r.owner, r.buf, r.recycle), (7, b, None));
        let s2 = zc.submit(7, b).unwrap().unwrap();
        assert_ne!(s1, s2);
        assert_eq!(zc.on_result(s2, true).unwrap().recycle, None);
        assert_eq!(
            zc.recycle(b),
            Ok(false),
            "deferred: notifications outstanding"
        );
        assert!(zc.is_deferred(b));
        // Notifications out of order.
        assert_eq!(zc.on_notification(s2), Ok(None), "s1 still holds it");
        assert_eq!(zc.on_notification(s1), Ok(Some(b)));
        assert_eq!(zc.in_flight(), 0);
        assert!(!zc.is_deferred(b));
        assert_eq!(zc.on_notification(s1), Err(ZcError::UnknownSlot(s1)));
        // No sends outstanding: recycle at once.
        assert_eq!(zc.recycle(BufId(0)), Ok(true));
    }

    #[test]
    fn zc_notification_before_result_and_failed_sends() {
        let mut zc: ZcTracker<u32> = ZcTracker::new(1, 2);
        let b = BufId(0);
        let s = zc.submit(1, b).unwrap().unwrap();
        assert_eq!(zc.on_notification(s), Ok(None));
        assert_eq!(
            zc.on_notification(s),
            Err(ZcError::UnexpectedNotification(s))
        );
        assert_eq!(zc.on_result(s, true).unwrap().recycle, None);
        assert_eq!(zc.in_flight(), 0);
        // A failed send (no F_MORE) promises no notification.
        let s = zc.submit(1, b).unwrap().unwrap();
        assert_eq!(zc.on_result(s, false).unwrap().recycle, None);
        assert_eq!(zc.recycle(b), Ok(true));
        // Full: the driver sends by copy.
        let _a = zc.submit(1, b).unwrap().unwrap();
        let _b = zc.submit(1, b).unwrap().unwrap();
        assert_eq!(zc.submit(1, b), Ok(None));
        assert_eq!(zc.submit(1, BufId(5)), Err(ZcError::OutOfRange(BufId(5))));
    }

    #[derive(Debug, Clone, Copy)]
    struct ModelSend {
        slot: ZcSlot,
        buf: usize,
        notifies: bool,
        result_seen: bool,
        notif_seen: bool,
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum ModelBuf {
        /// The connection holds it (it may send from it).
        Held,
        /// The connection recycled it; not yet released by the tracker.
        RecycleAsked,
        /// Released: back with the kernel.
        Released,
    }

    proptest! {
        /// Random interleavings of submits, results, notifications (before or after their
        /// result, in any order across sends), recycles and re-selections: a buffer is never
        /// released while a notification for it is outstanding, and every recycle is
        /// released exactly once.
        #[test]
        fn zc_tracker_never_releases_early_and_releases_once(
            ops in proptest::collection::vec((0u8..5, 0usize..16, any::<bool>()), 0..300)
        ) {
            const N: usize = 4;
            let mut zc: ZcTracker<usize> = ZcTracker::new(N as u16, 6);
            let mut bufs = [ModelBuf::Held; N];
            let mut sends: Vec<ModelSend> = Vec::new();
            let mut releases = [0u32; N];
            let mut asks = [0u32; N];
            fn check_release(
                id: BufId,
                bufs: &mut [ModelBuf; N],
                sends: &[ModelSend],
                releases: &mut [u32; N],
            ) -> Result<(), TestCaseError> {
                let b = id.0 as usize;
                prop_assert_eq!(bufs[b], ModelBuf::RecycleAsked, "released without a recycle");
                prop_assert!(
                    !sends.iter().any(|s| s.buf == b && s.notifies && !s.notif_seen),
                    "released before a notification"
                );
                bufs[b] = ModelBuf::Released;
                releases[b] += 1;
                Ok(())
            }
            // The connection sends from a buffer only while no send of it awaits its result
            // (one send in flight per connection, PITFALLS.md, "Short sends happen; overlapping
            // sends reorder"), and recycles only then.
            let result_pending = |sends: &[ModelSend], b: usize| {
                sends.iter().any(|s| s.buf == b && !s.result_seen)
            };
            for (op, i, flag) in ops {
                let b = i % N;
                match op {
                    0 if bufs[b] == ModelBuf::Held && !result_pending(&sends, b) => {
                        if let Some(slot) = zc.submit(b, BufId(b as u16)).unwrap() {
                            prop_assert!(!sends.iter().any(|s| s.slot == slot), "slot reused early");
                            sends.push(ModelSend { slot, buf: b, notifies: flag, result_seen: false, notif_seen: false });
                        } else {
                            prop_assert_eq!(zc.in_flight(), 6);
                        }
                    }
                    1 => {
                        let open: Vec<usize> = (0..sends.len()).filter(|&k| !sends[k].result_seen).collect();
                        if let Some(&k) = open.get(i % open.len().max(1)) {
                            sends[k].result_seen = true;
                            let s = sends[k];
                            let r = zc.on_result(s.slot, s.notifies).unwrap();
                            prop_assert_eq!((r.owner, r.buf), (s.buf, BufId(s.buf as u16)));
                            if let Some(id) = r.recycle {
                                check_release(id, &mut bufs, &sends, &mut releases)?;
                            }
                        }
                    }
                    2 => {
                        let open: Vec<usize> = (0..sends.len()).filter(|&k| sends[k].notifies && !sends[k].notif_seen).collect();
                        if let Some(&k) = open.get(i % open.len().max(1)) {
                            sends[k].notif_seen = true;
                            if let Some(id) = zc.on_notification(sends[k].slot).unwrap() {
                                check_release(id, &mut bufs, &sends, &mut releases)?;
                            }
                        }
                    }
                    3 if bufs[b] == ModelBuf::Held && !result_pending(&sends, b) => {
                        bufs[b] = ModelBuf::RecycleAsked;
                        asks[b] += 1;
                        if zc.recycle(BufId(b as u16)).unwrap() {
                            check_release(BufId(b as u16), &mut bufs, &sends, &mut releases)?;
                        }
                    }
                    // The kernel picks a released buffer for a new receive.
                    4 if bufs[b] == ModelBuf::Released => bufs[b] = ModelBuf::Held,
                    _ => {}
                }
                // Forget finished sends so that slots may be reused.
                sends.retain(|s| !(s.result_seen && (!s.notifies || s.notif_seen)));
                prop_assert_eq!(zc.in_flight(), sends.len());
            }
            // Drain: every result, then every notification.
            for k in 0..sends.len() {
                if !sends[k].result_seen {
                    sends[k].result_seen = true;
                    let s = sends[k];
                    if let Some(id) = zc.on_result(s.slot, s.notifies).unwrap().recycle {
                        check_release(id, &mut bufs, &sends, &mut releases)?;
                    }
                }
            }
            for k in 0..sends.len() {
                if sends[k].notifies && !sends[k].notif_seen {
                    sends[k].notif_seen = true;
                    if let Some(id) = zc.on_notification(sends[k].slot).unwrap() {
                        check_release(id, &mut bufs, &sends, &mut releases)?;
                    }
                }
            }
            prop_assert_eq!(zc.in_flight(), 0);
            prop_assert_eq!(releases, asks, "every recycle released exactly once");
            prop_assert!(!bufs.contains(&ModelBuf::RecycleAsked));
        }
    }
}
