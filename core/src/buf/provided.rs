//! [`ProvidedRing`]: a provided buffer ring's ownership bookkeeping and replenish policy.

use alloc::vec::Vec;

use super::{rearm_threshold, BufError, BufGroup, BufId, BufState, Lease, PoolId};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::fixtures::published_ring;
    use proptest::prelude::*;
    use std::vec::Vec;

    // A lease is tied to the pool that issued it: another pool refuses it before any state
    // changes, so a foreign lease can never publish a buffer twice or free one in flight.
    #[test]
    #[should_panic(expected = "a lease of another buffer ring")]
    fn provided_ring_refuses_a_foreign_lease() {
        let (mut a, _) = published_ring(BufGroup(0), 4);
        let (mut b, _) = published_ring(BufGroup(0), 4);
        let lease = a.on_selected(BufId(1)).unwrap();
        // Same group, same id, and b's buffer 1 is the kernel's: recycling would publish it
        // a second time.
        b.recycle(lease);
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
        let (mut ring, _) = published_ring(BufGroup(0), 8);
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

    #[test]
    fn a_bundle_naming_a_buffer_the_kernel_does_not_hold_changes_nothing() {
        let (mut ring, _) = published_ring(BufGroup(0), 4);
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

    proptest! {
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
            let (mut ring, mut kernel) = published_ring(BufGroup(1), N);
            let mut held: Vec<Lease> = Vec::new();
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
}
