//! Arbitrary Range header values against arbitrary file lengths: a satisfiable range always
//! lies inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringwork_core::http::{parse_range, RangeResult};

fuzz_target!(|input: (u64, &[u8])| {
    let (file_len, value) = input;
    match parse_range(value, file_len) {
        RangeResult::Partial {
            start,
            end_inclusive,
        } => {
            assert!(start <= end_inclusive, "{start} > {end_inclusive}");
            assert!(end_inclusive < file_len, "{end_inclusive} past {file_len}");
        }
        RangeResult::Full | RangeResult::Unsatisfiable => {}
    }
});
