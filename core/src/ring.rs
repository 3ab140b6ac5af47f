//! The SQ/CQ index protocol: one producer, one consumer, free-running u32 indices.
//!
//! io_uring's submission and completion queues are the same structure seen from opposite
//! ends. Each has a `head` (written by the consumer) and a `tail` (written by the producer),
//! both free-running `u32`s in shared memory; the slot of index `i` is `i & mask`, and the
//! number of entries is `tail.wrapping_sub(head)`, which stays right across the u32 wrap.
//!
//! - SQ: the application produces (writes SQEs, then publishes `tail`), the kernel consumes.
//! - CQ: the kernel produces, the application consumes (reads CQEs, then publishes `head`).
//!
//! The ordering rules, each written beside the load or store that needs it:
//! - a producer writes entries, *then* stores `tail` with Release; the consumer loads `tail`
//!   with Acquire before reading entries, so it never reads an unpublished one;
//! - a consumer reads entries, *then* stores `head` with Release; the producer loads `head`
//!   with Acquire before reusing slots, so it never overwrites an unconsumed one.
//!
//! The code is generic over [`AtomicIndex`] so that the same protocol runs over the kernel's
//! mmap'd `AtomicU32`s in `ringwork-sys` and over loom's atomics in the model tests
//! (`core/tests/loom_ring.rs`). This module never touches the entries themselves: it says
//! which slot to write or read, and the caller does the (unsafe, in sys) memory access.

use core::sync::atomic::{AtomicU32, Ordering};

/// The two operations the protocol needs from a shared `u32` index.
pub trait AtomicIndex {
    /// Loads the index with `order`.
    fn load(&self, order: Ordering) -> u32;
    /// Stores `value` with `order`.
    fn store(&self, value: u32, order: Ordering);
}

impl AtomicIndex for AtomicU32 {
    #[inline]
    fn load(&self, order: Ordering) -> u32 {
        AtomicU32::load(self, order)
    }
    #[inline]
    fn store(&self, value: u32, order: Ordering) {
        AtomicU32::store(self, value, order)
    }
}

/// Number of entries between `head` and `tail`, correct across the u32 wrap.
#[inline]
pub const fn occupied(head: u32, tail: u32) -> u32 {
    tail.wrapping_sub(head)
}

/// Checks a ring size the way the kernel defines it: a non-zero power of two.
///
/// # Panics
/// When `entries` is zero or not a power of two.
#[inline]
fn mask_for(entries: u32) -> u32 {
    assert!(
        entries.is_power_of_two(),
        "ring entries must be a non-zero power of two, got {entries}"
    );
    entries - 1
}

/// The producing end of a ring: reserves slots, then publishes them in one store.
#[derive(Debug)]
pub struct Producer<'a, A: AtomicIndex> {
    /// The consumer's index; only loaded.
    head: &'a A,
    /// Our index; only stored (we are its single writer).
    tail: &'a A,
    mask: u32,
    /// Reserved but not yet published.
    local_tail: u32,
    /// Last head we saw; refreshed only when the ring looks full.
    cached_head: u32,
}

impl<'a, A: AtomicIndex> Producer<'a, A> {
    /// The producer of a ring of `entries` slots whose shared indices are `head` and `tail`.
    ///
    /// # Panics
    /// When `entries` is not a power of two.
    pub fn new(head: &'a A, tail: &'a A, entries: u32) -> Self {
        let mask = mask_for(entries);
        // Relaxed: we are the only writer of `tail`, so this reads our own last store.
        let local_tail = tail.load(Ordering::Relaxed);
        // Acquire: pairs with the consumer's Release store of head (see free_slots).
        let cached_head = head.load(Ordering::Acquire);
        Self {
            head,
            tail,
            mask,
            local_tail,
            cached_head,
        }
    }

    /// Number of slots in the ring.
    #[inline]
    pub fn entries(&self) -> u32 {
        self.mask + 1
    }

    /// Free slots now, refreshing the consumer's head.
    #[inline]
    pub fn free_slots(&mut self) -> u32 {
        // Acquire: pairs with the consumer's Release store of head, so that its reads of
        // the slots it released happen before our writes into them.
        self.cached_head = self.head.load(Ordering::Acquire);
        self.entries() - occupied(self.cached_head, self.local_tail)
    }

    /// Reserves the next slot and returns its index in the entry array, or `None` when the
    /// ring is full. The caller writes the entry, then calls [`Producer::publish`].
    #[inline]
    pub fn reserve(&mut self) -> Option<u32> {
        if occupied(self.cached_head, self.local_tail) == self.entries() && self.free_slots() == 0 {
            return None;
        }
        let slot = self.local_tail & self.mask;
        self.local_tail = self.local_tail.wrapping_add(1);
        Some(slot)
    }

    /// Reserved entries not yet published.
    #[inline]
    pub fn unpublished(&self) -> u32 {
        // Relaxed: our own index.
        occupied(self.tail.load(Ordering::Relaxed), self.local_tail)
    }

    /// Makes every reserved entry visible to the consumer; returns how many were published.
    #[inline]
    pub fn publish(&mut self) -> u32 {
        let n = self.unpublished();
        // Release: publishes the entry writes; pairs with the consumer's Acquire load of tail.
        self.tail.store(self.local_tail, Ordering::Release);
        n
    }

    /// The index the next reservation will get (free-running).
    #[inline]
    pub fn local_tail(&self) -> u32 {
        self.local_tail
    }
}

/// The consuming end of a ring: sees published entries, then releases their slots.
#[derive(Debug)]
pub struct Consumer<'a, A: AtomicIndex> {
    /// Our index; only stored (we are its single writer).
    head: &'a A,
    /// The producer's index; only loaded.
    tail: &'a A,
    mask: u32,
    /// Consumed but not yet released.
    local_head: u32,
}

impl<'a, A: AtomicIndex> Consumer<'a, A> {
    /// The consumer of a ring of `entries` slots whose shared indices are `head` and `tail`.
    ///
    /// # Panics
    /// When `entries` is not a power of two.
    pub fn new(head: &'a A, tail: &'a A, entries: u32) -> Self {
        let mask = mask_for(entries);
        // Relaxed: our own index.
        let local_head = head.load(Ordering::Relaxed);
        Self {
            head,
            tail,
            mask,
            local_head,
        }
    }

    /// Number of slots in the ring.
    #[inline]
    pub fn entries(&self) -> u32 {
        self.mask + 1
    }

    /// Published entries not yet consumed.
    #[inline]
    pub fn ready(&self) -> u32 {
        // Acquire: pairs with the producer's Release store of tail, so that the entry writes
        // it published are visible before we read them.
        let tail = self.tail.load(Ordering::Acquire);
        occupied(self.local_head, tail)
    }

    /// The slot of the next published entry, or `None` when nothing is ready. Call
    /// [`Consumer::advance`] once the entry has been read.
    #[inline]
    pub fn peek(&self) -> Option<u32> {
        if self.ready() == 0 {
            None
        } else {
            Some(self.local_head & self.mask)
        }
    }

    /// Marks `n` more entries as read; they are returned to the producer by
    /// [`Consumer::release`].
    #[inline]
    pub fn advance(&mut self, n: u32) {
        debug_assert!(n <= self.ready(), "consumed past the producer's tail");
        self.local_head = self.local_head.wrapping_add(n);
    }

    /// Hands every consumed slot back to the producer.
    #[inline]
    pub fn release(&mut self) {
        // Release: our reads of the consumed entries happen before the producer, which loads
        // head with Acquire, overwrites them.
        self.head.store(self.local_head, Ordering::Release);
    }

    /// The index of the next entry to consume (free-running).
    #[inline]
    pub fn local_head(&self) -> u32 {
        self.local_head
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn occupied_wraps() {
        assert_eq!(occupied(u32::MAX, 1), 2);
        assert_eq!(occupied(u32::MAX - 3, u32::MAX), 3);
        assert_eq!(occupied(5, 5), 0);
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn rejects_non_power_of_two() {
        let (h, t) = (AtomicU32::new(0), AtomicU32::new(0));
        let _ = Producer::new(&h, &t, 6);
    }

    #[test]
    fn full_ring_refuses_reservations() {
        let (h, t) = (AtomicU32::new(0), AtomicU32::new(0));
        let mut p = Producer::new(&h, &t, 4);
        for i in 0..4 {
            assert_eq!(p.reserve(), Some(i));
        }
        assert_eq!(p.reserve(), None);
        assert_eq!(p.publish(), 4);
        let mut c = Consumer::new(&h, &t, 4);
        assert_eq!(c.ready(), 4);
        c.advance(1);
        assert_eq!(
            p.reserve(),
            None,
            "consumed but not released is still occupied"
        );
        c.release();
        assert_eq!(p.reserve(), Some(0));
    }

    proptest! {
        /// Starting anywhere in u32 space (including just below the wrap), a producer and a
        /// consumer moving in random steps agree on slots, never exceed capacity, and deliver
        /// every published value exactly once in order.
        #[test]
        fn index_arithmetic_across_wrap(
            start in prop_oneof![Just(u32::MAX - 5), Just(0u32), any::<u32>()],
            log2 in 0u32..4,
            steps in proptest::collection::vec((0u32..6, 0u32..6), 1..60),
        ) {
            let entries = 1u32 << log2;
            let (h, t) = (AtomicU32::new(start), AtomicU32::new(start));
            let mut p = Producer::new(&h, &t, entries);
            let mut c = Consumer::new(&h, &t, entries);
            let mut slots = [u64::MAX; 8];
            let (mut next_value, mut expect_value) = (0u64, 0u64);
            for (produce, consume) in steps {
                for _ in 0..produce {
                    match p.reserve() {
                        Some(slot) => {
                            prop_assert!(slot < entries);
                            slots[slot as usize] = next_value;
                            next_value += 1;
                        }
                        None => prop_assert_eq!(occupied(h.load(Ordering::Relaxed), p.local_tail()), entries),
                    }
                }
                p.publish();
                prop_assert!(c.ready() <= entries);
                for _ in 0..consume {
                    let Some(slot) = c.peek() else { break };
                    prop_assert_eq!(slots[slot as usize], expect_value);
                    expect_value += 1;
                    c.advance(1);
                }
                c.release();
                prop_assert_eq!(u64::from(c.ready()), next_value - expect_value);
            }
        }
    }
}
