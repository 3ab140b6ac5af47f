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
//!
//! One file per piece of bookkeeping: [`FixedPool`] (`fixed.rs`), [`ProvidedRing`]
//! (`provided.rs`), [`IncTracker`] (`incremental.rs`), [`RecvBuffers`] (`recv.rs`) and
//! [`ZcTracker`] (`zerocopy.rs`); this file holds what they share (ids, states, leases, errors).

use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::token::UserData;

mod fixed;
mod incremental;
mod provided;
mod recv;
mod zerocopy;

pub use fixed::FixedPool;
pub use incremental::{IncError, IncTracker};
pub use provided::ProvidedRing;
pub use recv::{RecvBuffers, RecvCompletion, RecvError, RecvMode, RecvPiece};
pub use zerocopy::{ZcError, ZcResult, ZcSlot, ZcTracker};

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

/// A quarter of `buffers`, rounded up: how many must be back before a receive that ran out is
/// tried again, and below how many the kernel's share is replenished at once.
fn rearm_threshold(buffers: usize) -> usize {
    buffers.div_ceil(4)
}

/// What the tests of the buffer modules share.
#[cfg(test)]
mod fixtures {
    use std::collections::VecDeque;

    use super::{BufGroup, BufId, ProvidedRing};

    /// A provided ring of `entries` buffers in `group`, all published, and a model of the
    /// kernel's side of it: the ids it may pick, in the order it consumes them.
    pub(super) fn published_ring(group: BufGroup, entries: u16) -> (ProvidedRing, VecDeque<BufId>) {
        let mut ring = ProvidedRing::new(group, entries);
        let mut kernel = VecDeque::new();
        ring.take_returns(|_, id| kernel.push_back(id));
        (ring, kernel)
    }
}
