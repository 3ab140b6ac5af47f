//! Arbitrary user_data values: decoding never panics, and whatever decodes re-encodes to the
//! same bits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringwork_core::token::{Token, UserData};

fuzz_target!(|raw: u64| {
    if let Ok(t) = Token::decode(UserData(raw)) {
        assert_eq!(t.encode(), UserData(raw));
    }
});
