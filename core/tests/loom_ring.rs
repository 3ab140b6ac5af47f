//! loom models of the ring index protocol (`ringwork_core::ring`).
//!
//! One thread produces, one consumes, over rings of 2 entries with more values than slots,
//! so every run wraps. Entries live in `loom::cell::UnsafeCell`s: loom fails the model if a
//! read and a write of one entry are not ordered by happens-before, which is exactly what a
//! missing Release/Acquire causes. The model checks, in every interleaving loom explores:
//! the consumer never reads an unpublished entry, the producer never overwrites an
//! unconsumed one, and every value arrives exactly once, in order.
//!
//! A model that cannot fail proves nothing, so the last two tests weaken one ordering each
//! (through a wrapper that turns Release stores into Relaxed ones) and require loom to catch it.

use loom::cell::UnsafeCell;
use loom::sync::atomic::AtomicU32;
use loom::sync::Arc;
use loom::thread;
use ringwork_core::ring::{AtomicIndex, Consumer, Producer};
use std::sync::atomic::Ordering;

/// loom's atomic as a ring index, optionally broken on purpose: with `relaxed_stores` every
/// Release store becomes Relaxed, the bug the model must be able to catch.
struct TestIndex {
    value: AtomicU32,
    relaxed_stores: bool,
}

impl AtomicIndex for TestIndex {
    fn load(&self, order: Ordering) -> u32 {
        self.value.load(order)
    }
    fn store(&self, value: u32, order: Ordering) {
        let order = if self.relaxed_stores && order == Ordering::Release {
            Ordering::Relaxed
        } else {
            order
        };
        self.value.store(value, order)
    }
}

fn index(start: u32, relaxed_stores: bool) -> TestIndex {
    TestIndex {
        value: AtomicU32::new(start),
        relaxed_stores,
    }
}

const ENTRIES: u32 = 2;
/// More values than slots, so the producer must wait for released slots and wrap.
const VALUES: u32 = 3;

struct Shared {
    head: TestIndex,
    tail: TestIndex,
    slots: [UnsafeCell<u32>; ENTRIES as usize],
}

/// Runs one producer and one consumer; `broken_head` / `broken_tail` weaken that index's
/// Release stores.
fn run_model(start: u32, broken_head: bool, broken_tail: bool) {
    let shared = Arc::new(Shared {
        head: index(start, broken_head),
        tail: index(start, broken_tail),
        slots: [UnsafeCell::new(u32::MAX), UnsafeCell::new(u32::MAX)],
    });

    let producer_side = shared.clone();
    let producer = thread::spawn(move || {
        let s = &*producer_side;
        let mut p = Producer::new(&s.head, &s.tail, ENTRIES);
        let mut value = 0;
        while value < VALUES {
            match p.reserve() {
                Some(slot) => {
                    // SAFETY: the protocol reserves this slot for the producer alone until
                    // publish; loom checks that claim and fails the model if it is false.
                    s.slots[slot as usize].with_mut(|ptr| unsafe { *ptr = value });
                    p.publish();
                    value += 1;
                }
                None => thread::yield_now(),
            }
        }
    });

    let s = &*shared;
    let mut c = Consumer::new(&s.head, &s.tail, ENTRIES);
    let mut expected = 0;
    while expected < VALUES {
        match c.peek() {
            Some(slot) => {
                // SAFETY: the protocol gives a published, unreleased slot to the consumer
                // alone; loom checks that claim.
                let got = s.slots[slot as usize].with(|ptr| unsafe { *ptr });
                assert_eq!(got, expected, "value lost, duplicated or read unpublished");
                expected += 1;
                c.advance(1);
                c.release();
            }
            None => thread::yield_now(),
        }
    }
    producer.join().unwrap();
    assert_eq!(c.ready(), 0, "nothing left over");
}

#[test]
fn spsc_ring_is_correct() {
    loom::model(|| run_model(0, false, false));
}

#[test]
fn spsc_ring_is_correct_across_u32_wrap() {
    loom::model(|| run_model(u32::MAX - 1, false, false));
}

/// The producer's tail published with Relaxed: the consumer may see the new tail before the
/// entry write. loom must report it.
#[test]
fn relaxed_tail_publish_is_caught() {
    let caught = std::panic::catch_unwind(|| {
        loom::model(|| run_model(0, false, true));
    });
    assert_causality_violation(caught, "tail publish");
}

/// The consumer's head released with Relaxed: the producer may overwrite an entry the
/// consumer is still reading. loom must report it.
#[test]
fn relaxed_head_release_is_caught() {
    let caught = std::panic::catch_unwind(|| {
        loom::model(|| run_model(0, true, false));
    });
    assert_causality_violation(caught, "head release");
}

/// The model must fail for the right reason: loom's data-race detector, not a timeout or an
/// assertion about values.
fn assert_causality_violation(caught: std::thread::Result<()>, what: &str) {
    let payload = match caught {
        Ok(()) => {
            panic!("loom accepted a Relaxed {what}: the model cannot detect a missing Release")
        }
        Err(p) => p,
    };
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("");
    assert!(
        message.contains("Causality violation"),
        "loom failed the Relaxed {what} model for another reason: {message}"
    );
}
