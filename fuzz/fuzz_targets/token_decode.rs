//! Arbitrary user_data values: decoding never panics, whatever decodes re-encodes to the same
//! bits (every field, the sub-index included, has its own bits), and a decoded slot always
//! fits the layout (a table slot below `Slot::MAX_TABLE`, or `Slot::WORKER`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringwork_core::token::{Slot, Token, UserData};

fuzz_target!(|raw: u64| {
    if let Ok(t) = Token::decode(UserData(raw)) {
        assert_eq!(t.encode(), UserData(raw));
        assert!(t.slot.0 < Slot::MAX_TABLE || t.slot == Slot::WORKER);
        let other = Token::decode(t.with_sub(t.sub.wrapping_add(1)).encode()).unwrap();
        assert_eq!(
            (other.kind, other.slot, other.generation),
            (t.kind, t.slot, t.generation)
        );
    }
});
