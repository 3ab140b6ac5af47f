//! `Range: bytes=` values: [`parse_range`] reads a single range against a file's length.
//! Multiple ranges (multipart/byteranges) are deliberately ignored, as RFC 9110 allows.

use super::trim_ows;

/// What to do with a `Range` header for a file of a given length.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum RangeResult {
    /// Serve the whole file (200): no range, or one we ignore (multiple ranges, another unit,
    /// or invalid syntax, all of which RFC 9110 §14.2 lets a server ignore).
    Full,
    /// Serve bytes `start..=end_inclusive` (206); always `start <= end_inclusive < file_len`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end_inclusive: u64,
    },
    /// 416, with `Content-Range: bytes */file_len`.
    Unsatisfiable,
}

/// Reads a single-range `Range` value (`bytes=a-b`, `bytes=a-`, `bytes=-n`) against a file of
/// `file_len` bytes. Numbers too large for u64 saturate, which makes a huge first position
/// unsatisfiable and a huge last position or suffix mean "to the end".
pub fn parse_range(value: &[u8], file_len: u64) -> RangeResult {
    let value = trim_ows(value);
    let Some(eq) = value.iter().position(|b| *b == b'=') else {
        return RangeResult::Full;
    };
    if !trim_ows(&value[..eq]).eq_ignore_ascii_case(b"bytes") {
        return RangeResult::Full;
    }
    let spec = trim_ows(&value[eq + 1..]);
    if spec.contains(&b',') {
        // Multiple ranges: serving them needs multipart/byteranges; ignoring is allowed.
        return RangeResult::Full;
    }
    let Some(dash) = spec.iter().position(|b| *b == b'-') else {
        return RangeResult::Full;
    };
    let (first, last) = (trim_ows(&spec[..dash]), trim_ows(&spec[dash + 1..]));
    let digits = |v: &[u8]| -> Option<u64> {
        if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(v.iter().fold(0u64, |n, d| {
            n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        }))
    };
    match (first.is_empty(), last.is_empty()) {
        // `-n`: the last n bytes.
        (true, false) => {
            let Some(n) = digits(last) else {
                return RangeResult::Full;
            };
            if n == 0 || file_len == 0 {
                return RangeResult::Unsatisfiable;
            }
            RangeResult::Partial {
                start: file_len - n.min(file_len),
                end_inclusive: file_len - 1,
            }
        }
        // `a-` or `a-b`.
        (false, _) => {
            let Some(start) = digits(first) else {
                return RangeResult::Full;
            };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match digits(last) {
                    Some(end) if end >= start => end,
                    // `b < a` is an invalid range-spec (RFC 9110 §14.1.1): ignore it.
                    _ => return RangeResult::Full,
                }
            };
            if start >= file_len {
                return RangeResult::Unsatisfiable;
            }
            RangeResult::Partial {
                start,
                end_inclusive: end.min(file_len - 1),
            }
        }
        // A lone `-`.
        (true, true) => RangeResult::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Status;
    use proptest::prelude::*;
    use std::{format, string::String};

    // --- ranges ---

    #[test]
    fn range_forms() {
        use RangeResult::*;
        let p = |start, end_inclusive| Partial {
            start,
            end_inclusive,
        };
        assert_eq!(parse_range(b"bytes=0-9", 100), p(0, 9));
        assert_eq!(parse_range(b"bytes=90-", 100), p(90, 99));
        assert_eq!(parse_range(b"bytes=90-1000", 100), p(90, 99));
        assert_eq!(parse_range(b"bytes=-10", 100), p(90, 99));
        assert_eq!(parse_range(b"bytes=-1000", 100), p(0, 99));
        assert_eq!(parse_range(b"Bytes = 5-5", 100), p(5, 5));
        assert_eq!(
            parse_range(b"bytes=0-99999999999999999999999", 100),
            p(0, 99)
        );
    }

    #[test]
    fn range_unsatisfiable() {
        use RangeResult::Unsatisfiable;
        assert_eq!(parse_range(b"bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range(b"bytes=100-200", 100), Unsatisfiable);
        assert_eq!(parse_range(b"bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range(b"bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range(b"bytes=-5", 0), Unsatisfiable);
        assert_eq!(
            parse_range(b"bytes=99999999999999999999999-", 100),
            Unsatisfiable
        );
        assert_eq!(Status::RangeNotSatisfiable.code(), 416);
    }

    #[test]
    fn range_ignored() {
        for v in [
            &b""[..],
            b"bytes=0-1,5-6",
            b"items=0-1",
            b"bytes=5-1",
            b"bytes=-",
            b"bytes=a-b",
            b"bytes=1",
            b"bytes=--1",
            b"bytes 0-1",
        ] {
            assert_eq!(parse_range(v, 100), RangeResult::Full, "{:?}", v);
        }
    }

    proptest! {
        #[test]
        fn partial_ranges_are_within_the_file(
            file_len in 0u64..10_000,
            a in proptest::option::of(0u64..12_000),
            b in proptest::option::of(0u64..12_000),
        ) {
            let mut v = String::from("bytes=");
            if let Some(a) = a { v += &format!("{a}"); }
            v.push('-');
            if let Some(b) = b { v += &format!("{b}"); }
            if let RangeResult::Partial { start, end_inclusive } = parse_range(v.as_bytes(), file_len) {
                prop_assert!(start <= end_inclusive);
                prop_assert!(end_inclusive < file_len);
            }
        }

        #[test]
        fn parse_range_never_panics(v in proptest::collection::vec(any::<u8>(), 0..40), len in any::<u64>()) {
            if let RangeResult::Partial { start, end_inclusive } = parse_range(&v, len) {
                prop_assert!(start <= end_inclusive && end_inclusive < len);
            }
        }
    }
}
