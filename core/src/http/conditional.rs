//! Validators and conditional requests (RFC 9110 §8.8, §13): the [`ETag`] this server gives
//! a file, `If-None-Match` and `If-Modified-Since` together ([`client_is_fresh`]: 304 or not),
//! and `If-Range` ([`if_range_holds`]: the range, or the whole file).
//!
//! Every invalid or unusable value errs towards the full response: a 304 or a 206 is only
//! ever the answer when the client's validator provably matches, so a broken header can cost
//! bytes but never serve a client a stale or mixed copy. `If-Match` and
//! `If-Unmodified-Since` are not evaluated: they exist to make state-changing requests
//! conditional, and a static server's GET and HEAD change nothing.

use super::{parse_http_date, trim_ows};

/// Longest [`ETag`]: two quotes, 16 hex digits of mtime, a dash, 16 hex digits of size.
const ETAG_MAX: usize = 2 + 16 + 1 + 16;

/// A strong entity tag as nginx makes them: `"<mtime hex>-<size hex>"` (lowercase, no
/// leading zeros), so a cache that moves between nginx and this server keeps its validators.
/// Any change of the file's size or modification second changes it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ETag {
    bytes: [u8; ETAG_MAX],
    len: u8,
}

impl ETag {
    /// The tag of a file of `size` bytes last modified at `mtime_secs`.
    pub fn new(mtime_secs: u64, size: u64) -> Self {
        let mut t = Self {
            bytes: [0; ETAG_MAX],
            len: 0,
        };
        t.push(b'"');
        t.hex(mtime_secs);
        t.push(b'-');
        t.hex(size);
        t.push(b'"');
        t
    }

    fn push(&mut self, b: u8) {
        self.bytes[usize::from(self.len)] = b;
        self.len += 1;
    }

    fn hex(&mut self, n: u64) {
        let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
        for i in (0..digits).rev() {
            self.push(b"0123456789abcdef"[((n >> (i * 4)) & 15) as usize]);
        }
    }

    /// The tag as sent in the `ETag` header, quotes included.
    pub fn as_str(&self) -> &str {
        // Only quotes, hex digits and a dash were pushed.
        core::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("\"\"")
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// One entity-tag at the start of `v`: (weak, the quoted opaque-tag with its quotes, the
/// rest). `None` when `v` does not start with one (RFC 9110 §8.8.3: `[W/] DQUOTE *etagc
/// DQUOTE`, etagc being any visible byte but `"`, and obs-text).
fn entity_tag(v: &[u8]) -> Option<(bool, &[u8], &[u8])> {
    let (weak, v) = match v {
        [b'W', b'/', rest @ ..] => (true, rest),
        _ => (false, v),
    };
    if v.first() != Some(&b'"') {
        return None;
    }
    let close = 1 + v[1..].iter().position(|b| *b == b'"')?;
    let opaque = &v[..=close];
    if !opaque[1..close]
        .iter()
        .all(|b| *b == 0x21 || (0x23..=0x7e).contains(b) || *b >= 0x80)
    {
        return None;
    }
    Some((weak, opaque, &v[close + 1..]))
}

/// True when an `If-None-Match` value matches `etag` by weak comparison (RFC 9110 §8.8.3.2:
/// `W/` prefixes are ignored), or is `*` (the file exists, which is the only case this is
/// asked in). A value that does not parse as a list of entity-tags matches nothing.
pub fn if_none_match_matches(value: &[u8], etag: &ETag) -> bool {
    let mut v = trim_ows(value);
    if v == b"*" {
        return true;
    }
    loop {
        // The list may have empty elements (RFC 9110 §5.6.1): skip commas and spaces.
        while let [b',' | b' ' | b'\t', rest @ ..] = v {
            v = rest;
        }
        if v.is_empty() {
            return false;
        }
        let Some((_weak, opaque, rest)) = entity_tag(v) else {
            return false;
        };
        if opaque == etag.as_bytes() {
            return true;
        }
        v = trim_ows(rest);
        if !v.is_empty() && v[0] != b',' {
            return false;
        }
    }
}

/// True when the client's cached copy is current and the answer is 304 (RFC 9110 §13.2.2):
/// with `If-None-Match` present, when it matches `etag`, and `If-Modified-Since` is then
/// ignored (a matching date cannot outvote a tag that differs); without it, by
/// `If-Modified-Since` (see [`not_modified`](super::not_modified)).
pub fn client_is_fresh(
    if_none_match: Option<&[u8]>,
    if_modified_since: Option<&[u8]>,
    etag: &ETag,
    mtime_secs: u64,
) -> bool {
    match if_none_match {
        Some(inm) => if_none_match_matches(inm, etag),
        None => super::not_modified(if_modified_since, mtime_secs),
    }
}

/// True when a `Range` is to be served given the request's `If-Range` value (RFC 9110
/// §13.1.5): an entity-tag must equal `etag` by strong comparison (a weak tag never does), an
/// HTTP-date must equal the file's `Last-Modified` exactly. Anything else, an invalid value
/// included, means the representation may have changed: send all of it (200).
pub fn if_range_holds(value: &[u8], etag: &ETag, mtime_secs: u64) -> bool {
    let v = trim_ows(value);
    if let Some((weak, opaque, rest)) = entity_tag(v) {
        return !weak && rest.is_empty() && opaque == etag.as_bytes();
    }
    parse_http_date(v) == Some(mtime_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::format;

    #[test]
    fn etags_are_nginx_format() {
        assert_eq!(ETag::new(0, 0).as_str(), "\"0-0\"");
        // nginx for a 12-byte file last modified at 1700000000: "6553f100-c".
        assert_eq!(ETag::new(1_700_000_000, 12).as_str(), "\"6553f100-c\"");
        assert_eq!(
            ETag::new(u64::MAX, u64::MAX).as_str(),
            "\"ffffffffffffffff-ffffffffffffffff\""
        );
        assert_ne!(ETag::new(1, 2), ETag::new(2, 1));
    }

    #[test]
    fn if_none_match_lists() {
        let e = ETag::new(0x6553f100, 12);
        let m = |v: &str| if_none_match_matches(v.as_bytes(), &e);
        assert!(m("\"6553f100-c\""));
        assert!(m(" W/\"6553f100-c\" "), "weak comparison");
        assert!(m("\"x\", \"6553f100-c\""));
        assert!(
            m(",, \"a,b\" ,W/\"6553f100-c\","),
            "commas inside tags, empty elements"
        );
        assert!(m("*"));
        assert!(!m("\"6553f100-d\""));
        assert!(!m("6553f100-c"), "unquoted");
        assert!(!m("\"6553f100-c"), "unterminated");
        assert!(!m("\"x\" \"6553f100-c\""), "no comma between");
        assert!(!m("*, \"x\""), "`*` only alone");
        assert!(!m(""));
        assert!(!m("w/\"6553f100-c\""), "W/ is case-sensitive");
    }

    #[test]
    fn if_none_match_beats_if_modified_since() {
        let e = ETag::new(1000, 5);
        let old = Some(&b"Thu, 01 Jan 1970 00:00:00 GMT"[..]);
        let new = Some(&b"Sat, 01 Jan 2000 00:00:00 GMT"[..]);
        let tag = Some(e.as_str().as_bytes());
        assert!(
            client_is_fresh(tag, old, &e, 1000),
            "tag matches, date ignored"
        );
        assert!(
            !client_is_fresh(Some(b"\"other\""), new, &e, 1000),
            "tag differs"
        );
        assert!(client_is_fresh(None, new, &e, 1000), "no tag: by date");
        assert!(!client_is_fresh(None, old, &e, 1000));
        assert!(!client_is_fresh(None, None, &e, 1000));
        assert!(
            !client_is_fresh(Some(b"\"broken"), new, &e, 1000),
            "broken: full answer"
        );
    }

    #[test]
    fn if_range_is_strong_or_an_exact_date() {
        let e = ETag::new(784_111_777, 100);
        let h = |v: &str| if_range_holds(v.as_bytes(), &e, 784_111_777);
        assert!(h(e.as_str()));
        assert!(h(&format!(" {} ", e.as_str())));
        assert!(
            !h(&format!("W/{}", e.as_str())),
            "weak never matches strongly"
        );
        assert!(!h("\"2ebc0a21-63\""));
        assert!(h("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert!(!h("Sun, 06 Nov 1994 08:49:38 GMT"), "exact only");
        assert!(!h("Sat, 05 Nov 1994 08:49:37 GMT"), "earlier too");
        assert!(!h(""));
        assert!(!h("garbage"));
        assert!(!h(&format!("{}, \"x\"", e.as_str())), "one tag only");
    }

    proptest! {
        /// A tag is always quoted lowercase hex around one dash, matches itself by both
        /// comparisons, and matches no tag of another (mtime, size).
        #[test]
        fn etags_match_themselves_only(a in any::<(u64, u64)>(), b in any::<(u64, u64)>()) {
            let ea = ETag::new(a.0, a.1);
            let s = ea.as_str();
            prop_assert!(s.len() >= 5 && s.starts_with('"') && s.ends_with('"'));
            prop_assert!(s[1..s.len() - 1].bytes().all(|c| c == b'-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
            prop_assert!(if_none_match_matches(s.as_bytes(), &ea));
            prop_assert!(if_range_holds(s.as_bytes(), &ea, a.0));
            let eb = ETag::new(b.0, b.1);
            prop_assert_eq!(if_none_match_matches(eb.as_str().as_bytes(), &ea), a == b);
            prop_assert_eq!(if_range_holds(eb.as_str().as_bytes(), &ea, a.0 ^ 1), a == b);
        }

        #[test]
        fn arbitrary_values_never_panic(v in proptest::collection::vec(any::<u8>(), 0..80), m in any::<u64>()) {
            let e = ETag::new(m, m / 3);
            let _ = if_none_match_matches(&v, &e);
            let _ = if_range_holds(&v, &e, m);
        }
    }
}
