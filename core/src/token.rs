//! `user_data` tokens: which operation, on which slot, of which generation, and which of the
//! slot's operations of that kind.
//!
//! Every SQE carries a 64-bit `user_data` that comes back in its CQE. Ringwork packs four
//! things into it, for every operation of both servers (connection ops, a connection's
//! zero-copy sends, the worker's own accept and wake-up, and the keys of the epoll backends):
//!
//! ```text
//!  63      56 55            40 39            24 23                        0
//! +----------+----------------+----------------+---------------------------+
//! |  OpKind  | generation (16)|    sub (16)    |         slot (24)         |
//! +----------+----------------+----------------+---------------------------+
//! ```
//!
//! - `slot` names the owner: a connection's index in its table (below [`Slot::MAX_TABLE`]),
//!   or [`Slot::WORKER`] (`Slot(u32::MAX)`, stored as the all-ones field) for the worker's
//!   own operations, which no table hands out.
//! - `generation` is what makes slot reuse safe: a slot's generation is bumped every time the
//!   slot is freed, so a CQE that was in flight when its connection died decodes to an old
//!   generation and [`Generations::is_current`] says so, instead of the completion landing on
//!   the connection that reused the slot (a closed descriptor's number, and its slot, may be
//!   reused while a completion for the old one is still queued). Sixteen bits: a slot is
//!   freed only once nothing is in flight on it, so the generation is a second line of
//!   defence, and a stale CQE would have to outlive 65,536 reuses of its slot to be taken for
//!   current.
//! - `sub` tells apart several operations of one kind and one owner whose completions must
//!   each find their own bookkeeping: a SEND_ZC's tracker slot ([`crate::buf::ZcSlot`]), whose
//!   notification may come after later sends of the same connection. Zero where unused.
//!
//! This module does not decide when a slot may be freed; the connection state machines do
//! (only after every in-flight operation has completed).

use alloc::{vec, vec::Vec};
use core::fmt;

/// A raw `user_data` value, as the kernel stores it in SQEs and CQEs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct UserData(pub u64);

/// Index of a connection, request or other owner of in-flight operations: below
/// [`Slot::MAX_TABLE`], or [`Slot::WORKER`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Slot(pub u32);

impl Slot {
    /// Number of bits a slot occupies in `user_data`.
    pub const BITS: u32 = 24;

    /// Most slots a table may hold (numbered from 0): every one fits the slot field, and the
    /// all-ones value stays [`Slot::WORKER`]'s.
    pub const MAX_TABLE: u32 = (1 << Self::BITS) - 1;

    /// The owner of a worker's own operations (accept, wake-up read, epoll keys of the
    /// listener), which no table hands out. It is `u32::MAX` (what "not a connection" always
    /// was here) and is stored as the all-ones slot field.
    pub const WORKER: Slot = Slot(u32::MAX);
}

/// A slot's generation, 16 bits wide, wrapping.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Generation(u32);

impl Generation {
    /// Number of bits a generation occupies in `user_data`.
    pub const BITS: u32 = 16;
    const MASK: u32 = (1 << Self::BITS) - 1;

    /// The first generation of a fresh slot.
    pub const ZERO: Self = Self(0);

    /// A generation from a raw value; bits above [`Generation::BITS`] are dropped.
    #[inline]
    pub const fn new(raw: u32) -> Self {
        Self(raw & Self::MASK)
    }

    /// The raw 16-bit value.
    #[inline]
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The next generation, wrapping at 2^16.
    #[inline]
    #[must_use]
    pub const fn next(self) -> Self {
        Self((self.0 + 1) & Self::MASK)
    }
}

macro_rules! op_kinds {
    ($( $(#[$doc:meta])* $name:ident = $val:expr, )*) => {
        /// What an SQE was for. Stored in the top byte of `user_data`.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        #[repr(u8)]
        pub enum OpKind {
            $( $(#[$doc])* $name = $val, )*
        }

        impl OpKind {
            /// Every kind, for tests and tables.
            pub const ALL: &'static [OpKind] = &[$(OpKind::$name,)*];

            /// The kind with this wire value, if any.
            #[inline]
            pub const fn from_u8(v: u8) -> Option<Self> {
                match v {
                    $( $val => Some(OpKind::$name), )*
                    _ => None,
                }
            }
        }
    };
}

op_kinds! {
    /// A NOP (tests, wake-ups).
    Nop = 1,
    /// Accept on a listening socket (single-shot or multishot).
    Accept = 2,
    /// Receive on a connection.
    Recv = 3,
    /// Send on a connection.
    Send = 4,
    /// Zero-copy send (two CQEs: result and notification).
    SendZc = 5,
    /// Close of a descriptor or fixed-file slot.
    Close = 6,
    /// Async cancel request.
    Cancel = 7,
    /// File read (plain or fixed buffer).
    Read = 8,
    /// File write (plain or fixed buffer).
    Write = 9,
    /// openat2.
    Open = 10,
    /// statx.
    Statx = 11,
    /// Timeout or link timeout.
    Timeout = 12,
    /// Shutdown of a socket.
    Shutdown = 13,
    /// Anything a caller defines for itself.
    Other = 14,
    /// Send on a connection from bytes the operation owns (not a provided buffer).
    SendOwned = 15,
}

/// Why a `user_data` value is not a Ringwork token.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TokenError {
    /// The top byte names no [`OpKind`].
    UnknownKind(u8),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::UnknownKind(k) => write!(f, "user_data names unknown op kind {k}"),
        }
    }
}

/// A decoded `user_data`: operation kind, owning slot, the slot's generation at submit time,
/// and the sub-index (see the module docs for the layout).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Token {
    /// What the operation was.
    pub kind: OpKind,
    /// Who owns it (below 2^24).
    pub slot: Slot,
    /// The owner's generation when it was submitted.
    pub generation: Generation,
    /// Which of the owner's operations of this kind (a SEND_ZC's tracker slot); 0 where a
    /// kind has one at a time.
    pub sub: u16,
}

const SLOT_MASK: u64 = (1 << Slot::BITS) - 1;
const SUB_SHIFT: u32 = Slot::BITS;
const GENERATION_SHIFT: u32 = SUB_SHIFT + 16;
const KIND_SHIFT: u32 = 56;
// The fields fill the 64 bits exactly, none overlapping.
const _: () = assert!(GENERATION_SHIFT + Generation::BITS == KIND_SHIFT);

impl Token {
    /// A token for `kind` on `slot` at `generation`, sub-index 0.
    #[inline]
    pub const fn new(kind: OpKind, slot: Slot, generation: Generation) -> Self {
        Self {
            kind,
            slot,
            generation,
            sub: 0,
        }
    }

    /// The same token with sub-index `sub`.
    #[inline]
    #[must_use]
    pub const fn with_sub(self, sub: u16) -> Self {
        Self { sub, ..self }
    }

    /// The same owner and generation, another kind (sub-index 0): the token of a sibling
    /// operation, e.g. the cancel of a recv.
    #[inline]
    #[must_use]
    pub const fn with_kind(self, kind: OpKind) -> Self {
        Self::new(kind, self.slot, self.generation)
    }

    /// Packs the token into `user_data`.
    ///
    /// A slot neither below [`Slot::MAX_TABLE`] nor [`Slot::WORKER`] does not fit: its high
    /// bits are dropped (a caller bug; tables are smaller, and debug builds assert it).
    #[inline]
    pub const fn encode(self) -> UserData {
        debug_assert!(
            self.slot.0 < Slot::MAX_TABLE || self.slot.0 == Slot::WORKER.0,
            "slot beyond the token's 24 bits"
        );
        UserData(
            ((self.kind as u64) << KIND_SHIFT)
                | ((self.generation.get() as u64) << GENERATION_SHIFT)
                | ((self.sub as u64) << SUB_SHIFT)
                | (self.slot.0 as u64 & SLOT_MASK),
        )
    }

    /// Unpacks `user_data`; fails only when the kind byte is not one of ours.
    #[inline]
    pub const fn decode(ud: UserData) -> Result<Self, TokenError> {
        let kind_byte = (ud.0 >> KIND_SHIFT) as u8;
        let kind = match OpKind::from_u8(kind_byte) {
            Some(k) => k,
            None => return Err(TokenError::UnknownKind(kind_byte)),
        };
        Ok(Self {
            kind,
            generation: Generation::new((ud.0 >> GENERATION_SHIFT) as u32),
            sub: (ud.0 >> SUB_SHIFT) as u16,
            slot: match (ud.0 & SLOT_MASK) as u32 {
                Slot::MAX_TABLE => Slot::WORKER,
                slot => Slot(slot),
            },
        })
    }
}

/// The current generation of every slot in a table, for stale-completion detection.
///
/// The table is allocated once, at construction; nothing on the hot path allocates.
#[derive(Debug, Clone)]
pub struct Generations {
    current: Vec<Generation>,
}

impl Generations {
    /// A table of `slots` slots, every one at generation zero.
    ///
    /// # Panics
    /// When `slots` exceeds [`Slot::MAX_TABLE`]: slot numbers must fit the token's 24 bits
    /// and stay clear of [`Slot::WORKER`].
    pub fn new(slots: usize) -> Self {
        assert!(
            slots <= Slot::MAX_TABLE as usize,
            "a slot table holds at most 2^24 - 1 slots"
        );
        Self {
            current: vec![Generation::ZERO; slots],
        }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.current.len()
    }

    /// True when there are no slots.
    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    /// A token for an operation of `kind` on `slot` at its current generation.
    ///
    /// # Panics
    /// When `slot` is out of range: a caller bug, never input-driven.
    pub fn token(&self, kind: OpKind, slot: Slot) -> Token {
        Token::new(kind, slot, self.current[slot.0 as usize])
    }

    /// True when `token` was issued for the slot's current incarnation; false for a stale
    /// completion (the slot was freed since) or a slot outside the table.
    pub fn is_current(&self, token: &Token) -> bool {
        self.current
            .get(token.slot.0 as usize)
            .is_some_and(|g| *g == token.generation)
    }

    /// Retires the slot's current incarnation: tokens issued before this are stale from now on.
    pub fn retire(&mut self, slot: Slot) {
        let g = &mut self.current[slot.0 as usize];
        *g = g.next();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_kind() -> impl Strategy<Value = OpKind> {
        proptest::sample::select(OpKind::ALL)
    }

    fn any_slot() -> impl Strategy<Value = Slot> {
        prop_oneof![
            9 => (0..Slot::MAX_TABLE).prop_map(Slot),
            1 => Just(Slot::WORKER),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(
            kind in any_kind(),
            slot in any_slot(),
            generation in any::<u32>(),
            sub in any::<u16>(),
        ) {
            let t = Token::new(kind, slot, Generation::new(generation)).with_sub(sub);
            let back = Token::decode(t.encode()).unwrap();
            prop_assert_eq!(back, t);
            prop_assert_eq!(back.generation.get(), generation & 0xffff);
            // Each field lands in its own bits: changing one changes nothing else.
            let other = Token::decode(t.with_sub(sub ^ 1).encode()).unwrap();
            prop_assert_eq!((other.kind, other.slot, other.generation), (kind, slot, t.generation));
            prop_assert_eq!(t.with_kind(OpKind::Cancel).with_kind(kind), t.with_sub(0));
        }

        #[test]
        fn decode_never_panics_and_reencodes(raw in any::<u64>()) {
            match Token::decode(UserData(raw)) {
                Ok(t) => {
                    prop_assert!(t.slot.0 < Slot::MAX_TABLE || t.slot == Slot::WORKER);
                    prop_assert_eq!(t.encode(), UserData(raw));
                }
                Err(TokenError::UnknownKind(k)) => {
                    prop_assert_eq!(k, (raw >> 56) as u8);
                    prop_assert!(OpKind::from_u8(k).is_none());
                }
            }
        }

        /// A token survives any number of retirements of other slots, and is stale after
        /// retiring its own slot (until the 16-bit generation wraps all the way round),
        /// whatever its kind and sub-index; the worker's tokens are never a slot's.
        #[test]
        fn stale_after_retire(
            slot in 0u32..4,
            kind in any_kind(),
            sub in any::<u16>(),
            others in proptest::collection::vec(0u32..4, 0..20),
        ) {
            let mut gens = Generations::new(4);
            let t = gens.token(kind, Slot(slot)).with_sub(sub);
            let decoded = Token::decode(t.encode()).unwrap();
            for o in others.iter().filter(|o| **o != slot) {
                gens.retire(Slot(*o));
            }
            prop_assert!(gens.is_current(&decoded));
            gens.retire(Slot(slot));
            prop_assert!(!gens.is_current(&decoded));
            prop_assert!(!gens.is_current(&decoded.with_sub(0)));
            let fresh = gens.token(OpKind::Recv, Slot(slot));
            prop_assert!(gens.is_current(&fresh));
            prop_assert!(gens.is_current(&fresh.with_kind(kind).with_sub(sub)));
            let worker = Token::new(kind, Slot::WORKER, fresh.generation).with_sub(sub);
            prop_assert!(!gens.is_current(&Token::decode(worker.encode()).unwrap()));
        }
    }

    #[test]
    fn generation_wraps_at_16_bits() {
        assert_eq!(Generation::new(0xffff).next(), Generation::ZERO);
        assert_eq!(Generation::new(0x1_ffff).get(), 0xffff);
        let mut gens = Generations::new(1);
        let t = gens.token(OpKind::Send, Slot(0));
        for _ in 0..1 << 16 {
            gens.retire(Slot(0));
        }
        assert!(
            gens.is_current(&t),
            "a full wrap makes an old token look current"
        );
    }

    #[test]
    fn unknown_kind_is_an_error() {
        assert_eq!(Token::decode(UserData(0)), Err(TokenError::UnknownKind(0)));
        assert_eq!(
            Token::decode(UserData(0xff << 56)),
            Err(TokenError::UnknownKind(0xff))
        );
    }

    #[test]
    fn out_of_range_slot_is_not_current() {
        let gens = Generations::new(2);
        let t = Token::new(OpKind::Send, Slot(7), Generation::ZERO);
        assert!(!gens.is_current(&t));
    }

    #[test]
    #[should_panic(expected = "2^24 - 1")]
    fn tables_stay_below_the_worker_slot() {
        let _ = Generations::new(Slot::MAX_TABLE as usize + 1);
    }
}
