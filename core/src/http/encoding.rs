//! Content codings for precompressed files (as nginx's `gzip_static` and `brotli_static`):
//! [`preferred_codings`] reads `Accept-Encoding` (RFC 9110 §12.5.3) and says which of the
//! codings this server can serve from a sibling file (`FILE.br`, `FILE.gz`) the client takes,
//! best first.
//!
//! It deliberately does not compress anything: a coding is only ever served from a file that
//! is already on disk. Identity is always acceptable to this server (a client that refuses it
//! with `identity;q=0` still gets the plain file when no sibling exists: RFC 9110 lets a server
//! send it rather than a 415).

use super::trim_ows;

/// A coding a sibling file may hold.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ContentCoding {
    /// Brotli (`FILE.br`), RFC 7932.
    Br,
    /// gzip (`FILE.gz`), RFC 1952.
    Gzip,
}

impl ContentCoding {
    /// Every coding, in the order preferred when the client weighs them equally (brotli is
    /// the smaller).
    pub const ALL: [ContentCoding; 2] = [ContentCoding::Br, ContentCoding::Gzip];

    /// The `Content-Encoding` value.
    pub const fn name(self) -> &'static str {
        match self {
            ContentCoding::Br => "br",
            ContentCoding::Gzip => "gzip",
        }
    }

    /// The sibling file's suffix.
    pub const fn suffix(self) -> &'static str {
        match self {
            ContentCoding::Br => ".br",
            ContentCoding::Gzip => ".gz",
        }
    }
}

/// The codings a request accepts, best first: at most one of each, `Copy`, so a connection
/// can walk them without allocating.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Codings {
    list: [Option<ContentCoding>; 2],
}

impl Codings {
    /// The `i`th best coding, if there are that many.
    pub fn get(&self, i: usize) -> Option<ContentCoding> {
        self.list.get(i).copied().flatten()
    }

    /// No coding is acceptable (or no header was sent).
    pub fn is_empty(&self) -> bool {
        self.list[0].is_none()
    }
}

/// A qvalue (RFC 9110 §12.4.2: `0[.ddd]` or `1[.000]`) in thousandths; `None` when malformed.
fn qvalue(v: &[u8]) -> Option<u16> {
    let (int, frac) = match v.iter().position(|b| *b == b'.') {
        Some(dot) => (&v[..dot], &v[dot + 1..]),
        None => (v, &[][..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths = 0u16;
    for i in 0..3 {
        thousandths = thousandths * 10 + frac.get(i).map_or(0, |d| u16::from(d - b'0'));
    }
    match int {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// Reads an `Accept-Encoding` value: each listed coding with its weight (`q`, 1 when absent;
/// `q=0` refuses it), `*` standing for any coding not listed, `x-gzip` for `gzip`. Returns the
/// acceptable [`ContentCoding`]s, highest weight first, ties in [`ContentCoding::ALL`] order.
/// An element that does not parse (a malformed qvalue, say) counts as absent, so a broken
/// header never makes the server send an encoding the client did not ask for.
pub fn preferred_codings(value: &[u8]) -> Codings {
    // The weight each coding was given, explicitly or by `*`.
    let mut listed: [Option<u16>; 2] = [None; 2];
    let mut star: Option<u16> = None;
    for element in value.split(|b| *b == b',') {
        let mut parts = element.split(|b| *b == b';');
        let coding = trim_ows(parts.next().unwrap_or_default());
        if coding.is_empty() {
            continue;
        }
        let mut q = Some(1000);
        for param in parts {
            let param = trim_ows(param);
            match param.iter().position(|b| *b == b'=') {
                Some(eq) if trim_ows(&param[..eq]).eq_ignore_ascii_case(b"q") => {
                    q = qvalue(trim_ows(&param[eq + 1..]));
                }
                // Other parameters are not defined for codings: ignore them.
                _ => {}
            }
        }
        let Some(q) = q else { continue };
        if coding == b"*" {
            star = Some(q);
        }
        for (i, c) in ContentCoding::ALL.iter().enumerate() {
            let alias = *c == ContentCoding::Gzip && coding.eq_ignore_ascii_case(b"x-gzip");
            if coding.eq_ignore_ascii_case(c.name().as_bytes()) || alias {
                // Listed twice: the later weight wins (the RFC does not say; either is fine).
                listed[i] = Some(q);
            }
        }
    }
    let mut weighted: [(u16, usize); 2] = [(0, 0); 2];
    let mut n = 0;
    for (i, w) in listed.iter().enumerate() {
        let q = w.or(star).unwrap_or(0);
        if q > 0 {
            weighted[n] = (q, i);
            n += 1;
        }
    }
    // Two at most: one comparison sorts them (stable: ALL order on ties).
    if n == 2 && weighted[1].0 > weighted[0].0 {
        weighted.swap(0, 1);
    }
    let mut out = Codings::default();
    for (slot, (_, i)) in out.list.iter_mut().zip(&weighted[..n]) {
        *slot = Some(ContentCoding::ALL[*i]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;
    use ContentCoding::{Br, Gzip};

    fn pref(v: &str) -> Vec<ContentCoding> {
        let c = preferred_codings(v.as_bytes());
        (0..2).filter_map(|i| c.get(i)).collect()
    }

    #[test]
    fn codings_by_weight() {
        assert_eq!(pref("gzip, deflate, br"), [Br, Gzip], "ties: brotli first");
        assert_eq!(pref("gzip"), [Gzip]);
        assert_eq!(pref("br;q=0.5, gzip;q=0.8"), [Gzip, Br]);
        assert_eq!(pref("BR ; Q = 1 , GZip;q=0.001"), [Br, Gzip]);
        assert_eq!(pref("x-gzip"), [Gzip]);
        assert_eq!(pref("deflate, identity"), []);
        assert_eq!(pref(""), []);
    }

    #[test]
    fn q_zero_refuses_and_star_fills_in() {
        assert_eq!(pref("gzip;q=0, br"), [Br]);
        assert_eq!(pref("gzip;q=0.000"), []);
        assert_eq!(pref("*"), [Br, Gzip]);
        assert_eq!(pref("*;q=0.5, gzip"), [Gzip, Br]);
        assert_eq!(pref("*;q=0"), []);
        assert_eq!(pref("br;q=0, *"), [Gzip], "listed beats *");
        assert_eq!(pref("*;q=0, gzip;q=0.1"), [Gzip]);
    }

    #[test]
    fn malformed_elements_count_as_absent() {
        assert_eq!(pref("gzip;q="), []);
        assert_eq!(pref("gzip;q=2"), []);
        assert_eq!(pref("gzip;q=1.5"), []);
        assert_eq!(pref("gzip;q=0.0001"), [], "four decimals");
        assert_eq!(pref("gzip;q=-1, br"), [Br]);
        assert_eq!(pref(";;;,,,"), []);
        assert_eq!(pref("gzip;level=9"), [Gzip], "unknown parameters ignored");
        assert_eq!(qvalue(b"1.000"), Some(1000));
        assert_eq!(qvalue(b"0.5"), Some(500));
        assert_eq!(qvalue(b"1.001"), None);
        assert_eq!(qvalue(b""), None);
    }

    #[test]
    fn names_and_suffixes() {
        assert_eq!((Br.name(), Br.suffix()), ("br", ".br"));
        assert_eq!((Gzip.name(), Gzip.suffix()), ("gzip", ".gz"));
    }

    proptest! {
        /// Whatever the header, each coding appears at most once, and one the header gives
        /// `q=0` explicitly (as the last word on it) never appears.
        #[test]
        fn never_a_refused_or_doubled_coding(v in proptest::collection::vec(any::<u8>(), 0..60)) {
            let mut v = v;
            v.extend_from_slice(b", gzip;q=0");
            let got = pref(&std::string::String::from_utf8_lossy(&v));
            prop_assert!(!got.contains(&Gzip), "{:?}", got);
            prop_assert!(got.len() <= 1);
            let c = preferred_codings(&v);
            prop_assert!(c.get(0) != c.get(1) || c.get(0).is_none());
        }
    }
}
