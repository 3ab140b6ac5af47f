//! `user_data` tokens: which operation, on which slot, of which generation.
//!
//! Every SQE carries a 64-bit `user_data` that comes back in its CQE. Ringwork packs three
//! things into it:
//!
//! ```text
//!  63      56 55                    32 31                              0
//! +----------+------------------------+--------------------------------+
//! |  OpKind  |   generation (24 bit)  |          slot (32 bit)         |
//! +----------+------------------------+--------------------------------+
//! ```
//!
//! The generation is what makes slot reuse safe: a slot's generation is bumped every time
//! the slot is freed, so a CQE that was in flight when its connection died decodes to an old
//! generation and [`Generations::is_current`] says so, instead of the completion landing on the
//! connection that reused the slot (PITFALLS.md #5).
//!
//! This module does not decide when a slot may be freed; `conn` does (only after every
//! in-flight operation has completed).

use alloc::{vec, vec::Vec};
use core::fmt;

/// A raw `user_data` value, as the kernel stores it in SQEs and CQEs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct UserData(pub u64);

/// Index of a connection, request or other owner of in-flight operations.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Slot(pub u32);

/// A slot's generation, 24 bits wide, wrapping.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Generation(u32);

impl Generation {
    /// Number of bits a generation occupies in `user_data`.
    pub const BITS: u32 = 24;
    const MASK: u32 = (1 << Self::BITS) - 1;

    /// The first generation of a fresh slot.
    pub const ZERO: Self = Self(0);

    /// A generation from a raw value; bits above [`Generation::BITS`] are dropped.
    #[inline]
    pub const fn new(raw: u32) -> Self {
        Self(raw & Self::MASK)
    }

    /// The raw 24-bit value.
    #[inline]
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The next generation, wrapping at 2^24.
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

/// A decoded `user_data`: operation kind, owning slot and the slot's generation at submit time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Token {
    /// What the operation was.
    pub kind: OpKind,
    /// Who owns it.
    pub slot: Slot,
    /// The owner's generation when it was submitted.
    pub generation: Generation,
}

impl Token {
    /// A token for `kind` on `slot` at `generation`.
    #[inline]
    pub const fn new(kind: OpKind, slot: Slot, generation: Generation) -> Self {
        Self {
            kind,
            slot,
            generation,
        }
    }

    /// Packs the token into `user_data`.
    #[inline]
    pub const fn encode(self) -> UserData {
        UserData(
            ((self.kind as u64) << 56)
                | ((self.generation.get() as u64) << 32)
                | (self.slot.0 as u64),
        )
    }

    /// Unpacks `user_data`; fails only when the kind byte is not one of ours.
    #[inline]
    pub const fn decode(ud: UserData) -> Result<Self, TokenError> {
        let kind_byte = (ud.0 >> 56) as u8;
        let kind = match OpKind::from_u8(kind_byte) {
            Some(k) => k,
            None => return Err(TokenError::UnknownKind(kind_byte)),
        };
        Ok(Self {
            kind,
            generation: Generation::new((ud.0 >> 32) as u32),
            slot: Slot(ud.0 as u32),
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
    pub fn new(slots: usize) -> Self {
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

    proptest! {
        #[test]
        fn round_trip(kind in any_kind(), slot in any::<u32>(), generation in any::<u32>()) {
            let t = Token::new(kind, Slot(slot), Generation::new(generation));
            let back = Token::decode(t.encode()).unwrap();
            prop_assert_eq!(back, t);
            prop_assert_eq!(back.generation.get(), generation & 0xff_ffff);
        }

        #[test]
        fn decode_never_panics_and_reencodes(raw in any::<u64>()) {
            match Token::decode(UserData(raw)) {
                Ok(t) => prop_assert_eq!(t.encode(), UserData(raw)),
                Err(TokenError::UnknownKind(k)) => {
                    prop_assert_eq!(k, (raw >> 56) as u8);
                    prop_assert!(OpKind::from_u8(k).is_none());
                }
            }
        }

        /// A token survives any number of retirements of other slots, and is stale after
        /// retiring its own slot (until the 24-bit generation wraps all the way round).
        #[test]
        fn stale_after_retire(slot in 0u32..4, others in proptest::collection::vec(0u32..4, 0..20)) {
            let mut gens = Generations::new(4);
            let t = gens.token(OpKind::Recv, Slot(slot));
            for o in others.iter().filter(|o| **o != slot) {
                gens.retire(Slot(*o));
            }
            prop_assert!(gens.is_current(&t));
            gens.retire(Slot(slot));
            prop_assert!(!gens.is_current(&t));
            let fresh = gens.token(OpKind::Recv, Slot(slot));
            prop_assert!(gens.is_current(&fresh));
        }
    }

    #[test]
    fn generation_wraps_at_24_bits() {
        assert_eq!(Generation::new(0xff_ffff).next(), Generation::ZERO);
        assert_eq!(Generation::new(0x1ff_ffff).get(), 0xff_ffff);
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
}
