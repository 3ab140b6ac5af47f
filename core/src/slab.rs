//! A fixed-capacity table of connections (or any per-slot state) addressed by [`Slot`], with
//! generations so that stale completions do not resolve.
//!
//! Everything is allocated in [`Slab::new`]; `insert` and `remove` only move ids between the
//! table and a free list whose capacity is already reserved, so nothing allocates afterwards.
//! Removing a slot retires its generation ([`Generations::retire`]): a [`Token`] issued before
//! the removal no longer resolves through [`Slab::get_checked`], even after the slot is reused
//! (PITFALLS.md, "close() does not cancel in-flight requests").
//!
//! What it deliberately does not do: decide when a slot may be removed (for connections, only
//! after [`crate::conn::Op::Free`]), or grow.

use alloc::vec::Vec;

use crate::token::{Generation, Generations, OpKind, Slot, Token};

/// A fixed-capacity slot table. See the module docs.
#[derive(Debug, Clone)]
pub struct Slab<T> {
    /// Slots used so far (vacant ones are None); reserved for every slot at construction and
    /// grown in place, so that a slot's memory is touched only once a connection first uses
    /// it: a table sized for 20,000 connections costs nothing resident until they come.
    entries: Vec<Option<T>>,
    /// Vacant slots among `entries`, popped from the end; when none is, the next slot after
    /// them (so slot 0 is used first).
    free: Vec<Slot>,
    capacity: usize,
    generations: Generations,
}

impl<T> Slab<T> {
    /// A table of `capacity` slots, all vacant, at generation zero.
    ///
    /// # Panics
    /// When `capacity` exceeds [`Slot::MAX_TABLE`] (2^24 - 1): slots must fit a token's slot
    /// field and stay clear of [`Slot::WORKER`].
    pub fn new(capacity: usize) -> Self {
        assert!(
            capacity <= Slot::MAX_TABLE as usize,
            "slab capacity must fit a token's slot field (2^24 - 1 slots)"
        );
        Self {
            entries: Vec::with_capacity(capacity),
            free: Vec::with_capacity(capacity),
            capacity,
            generations: Generations::new(capacity),
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Occupied slots.
    pub fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// True when no slot is occupied.
    pub fn is_empty(&self) -> bool {
        self.free.len() == self.entries.len()
    }

    /// Stores `value` in a vacant slot; `None` (and `value` dropped) when the table is full.
    pub fn insert(&mut self, value: T) -> Option<(Slot, Generation)> {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.entries[slot.0 as usize] = Some(value);
                slot
            }
            None if self.entries.len() < self.capacity => {
                // `capacity` fits a slot (checked in `new`); the push stays within what was
                // reserved, so the table never moves.
                let slot = Slot(self.entries.len() as u32);
                self.entries.push(Some(value));
                slot
            }
            None => return None,
        };
        Some((slot, self.generation(slot)))
    }

    /// The slot's current generation (to build tokens with [`Token::new`]).
    ///
    /// # Panics
    /// When `slot` is out of range.
    pub fn generation(&self, slot: Slot) -> Generation {
        // Generations hands out generations only inside tokens; the kind is irrelevant here.
        self.generations.token(OpKind::Other, slot).generation
    }

    /// The value in `slot`, if occupied. No generation check: for the slab's owner, not for
    /// completions (use [`Slab::get_checked`]).
    pub fn get(&self, slot: Slot) -> Option<&T> {
        self.entries.get(slot.0 as usize)?.as_ref()
    }

    /// Mutable [`Slab::get`].
    pub fn get_mut(&mut self, slot: Slot) -> Option<&mut T> {
        self.entries.get_mut(slot.0 as usize)?.as_mut()
    }

    /// The value `token` was issued for: `None` when the slot has been removed since (stale
    /// generation), is vacant, or is out of range.
    pub fn get_checked(&self, token: &Token) -> Option<&T> {
        if !self.generations.is_current(token) {
            return None;
        }
        self.get(token.slot)
    }

    /// Mutable [`Slab::get_checked`].
    pub fn get_checked_mut(&mut self, token: &Token) -> Option<&mut T> {
        if !self.generations.is_current(token) {
            return None;
        }
        self.get_mut(token.slot)
    }

    /// Takes the value out of `slot` and retires the slot's generation, so every token issued
    /// for it so far is stale. `None` (and nothing retired) when the slot is vacant or out of
    /// range.
    pub fn remove(&mut self, slot: Slot) -> Option<T> {
        let value = self.entries.get_mut(slot.0 as usize)?.take()?;
        self.generations.retire(slot);
        // Cannot allocate: `free` was reserved for every slot, and a slot is pushed only when
        // it leaves the table.
        self.free.push(slot);
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::vec::Vec;

    #[test]
    fn insert_get_remove() {
        let mut slab = Slab::new(2);
        let (a, ga) = slab.insert("a").unwrap();
        let (b, _) = slab.insert("b").unwrap();
        assert_eq!((a, b), (Slot(0), Slot(1)));
        assert!(slab.insert("c").is_none(), "full");
        let ta = Token::new(OpKind::Recv, a, ga);
        assert_eq!(slab.get_checked(&ta), Some(&"a"));
        *slab.get_mut(b).unwrap() = "B";
        assert_eq!(slab.remove(a), Some("a"));
        assert_eq!(slab.remove(a), None, "removed twice");
        assert_eq!(slab.get_checked(&ta), None, "stale after remove");
        let (a2, ga2) = slab.insert("a2").unwrap();
        assert_eq!(a2, a, "slot reused");
        assert_ne!(ga2, ga);
        assert_eq!(slab.get_checked(&ta), None, "stale after reuse");
        assert_eq!(slab.get(b), Some(&"B"));
        assert_eq!(slab.get(Slot(7)), None);
        assert_eq!(slab.len(), 2);
    }

    proptest! {
        /// Under random inserts and removes, a token resolves exactly while its incarnation
        /// is live, and the table never reallocates.
        #[test]
        fn stale_tokens_never_resolve(ops in proptest::collection::vec((any::<bool>(), 0usize..8), 0..300)) {
            let mut slab = Slab::new(4);
            let (entries_cap, free_cap) = (slab.entries.capacity(), slab.free.capacity());
            let mut live: HashMap<Slot, (Token, u32)> = HashMap::new();
            let mut dead: Vec<Token> = Vec::new();
            let mut next = 0u32;
            for (insert, i) in ops {
                if insert {
                    match slab.insert(next) {
                        Some((slot, generation)) => {
                            prop_assert!(!live.contains_key(&slot), "slot handed out twice");
                            live.insert(slot, (Token::new(OpKind::Recv, slot, generation), next));
                        }
                        None => prop_assert_eq!(live.len(), 4),
                    }
                    next += 1;
                } else {
                    let slot = Slot((i % 4) as u32);
                    match live.remove(&slot) {
                        Some((token, value)) => {
                            prop_assert_eq!(slab.remove(slot), Some(value));
                            dead.push(token);
                        }
                        None => prop_assert_eq!(slab.remove(slot), None),
                    }
                }
                for (token, value) in live.values() {
                    prop_assert_eq!(slab.get_checked(token), Some(value));
                }
                for token in &dead {
                    prop_assert_eq!(slab.get_checked(token), None);
                }
                prop_assert_eq!(slab.len(), live.len());
                prop_assert_eq!(slab.entries.capacity(), entries_cap);
                prop_assert_eq!(slab.free.capacity(), free_cap);
            }
        }
    }
}
