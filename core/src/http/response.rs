//! Response heads: the [`Status`]es this server sends, [`ResponseHead::write`] and
//! [`error_response`], written into a caller's buffer without allocating.

use core::fmt;

use super::format_http_date;

/// A response status this server sends.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Status {
    /// 200 OK.
    Ok,
    /// 206 Partial Content (a satisfiable `Range`).
    PartialContent,
    /// 301 Moved Permanently (a directory requested without its trailing slash).
    MovedPermanently,
    /// 304 Not Modified (If-Modified-Since).
    NotModified,
    /// 400 Bad Request.
    BadRequest,
    /// 403 Forbidden.
    Forbidden,
    /// 404 Not Found.
    NotFound,
    /// 405 Method Not Allowed.
    MethodNotAllowed,
    /// 414 URI Too Long.
    UriTooLong,
    /// 416 Range Not Satisfiable.
    RangeNotSatisfiable,
    /// 431 Request Header Fields Too Large.
    HeaderFieldsTooLarge,
    /// 500 Internal Server Error.
    InternalServerError,
    /// 503 Service Unavailable.
    ServiceUnavailable,
    /// 505 HTTP Version Not Supported.
    VersionNotSupported,
}

impl Status {
    /// Every status, for tests and tables.
    pub const ALL: &'static [Status] = &[
        Status::Ok,
        Status::PartialContent,
        Status::MovedPermanently,
        Status::NotModified,
        Status::BadRequest,
        Status::Forbidden,
        Status::NotFound,
        Status::MethodNotAllowed,
        Status::UriTooLong,
        Status::RangeNotSatisfiable,
        Status::HeaderFieldsTooLarge,
        Status::InternalServerError,
        Status::ServiceUnavailable,
        Status::VersionNotSupported,
    ];

    /// The numeric status code.
    pub const fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::PartialContent => 206,
            Status::MovedPermanently => 301,
            Status::NotModified => 304,
            Status::BadRequest => 400,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::UriTooLong => 414,
            Status::RangeNotSatisfiable => 416,
            Status::HeaderFieldsTooLarge => 431,
            Status::InternalServerError => 500,
            Status::ServiceUnavailable => 503,
            Status::VersionNotSupported => 505,
        }
    }

    /// The reason phrase (RFC 9110 / RFC 6585 wording).
    pub const fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::PartialContent => "Partial Content",
            Status::MovedPermanently => "Moved Permanently",
            Status::NotModified => "Not Modified",
            Status::BadRequest => "Bad Request",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::UriTooLong => "URI Too Long",
            Status::RangeNotSatisfiable => "Range Not Satisfiable",
            Status::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            Status::InternalServerError => "Internal Server Error",
            Status::ServiceUnavailable => "Service Unavailable",
            Status::VersionNotSupported => "HTTP Version Not Supported",
        }
    }

    /// True for statuses whose responses never carry a body (RFC 9110 §6.4.1: 1xx, 204, 304).
    pub const fn forbids_body(self) -> bool {
        matches!(self, Status::NotModified)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.reason())
    }
}

/// The `Content-Range` of a 206 or 416 response.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ContentRange {
    /// `bytes start-end_inclusive/complete_len` (206).
    Bytes {
        /// First byte sent.
        start: u64,
        /// Last byte sent, inclusive.
        end_inclusive: u64,
        /// The whole file's length.
        complete_len: u64,
    },
    /// `bytes */complete_len` (416).
    Unsatisfied {
        /// The whole file's length.
        complete_len: u64,
    },
}

/// The caller's buffer cannot hold the response head.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct HeadTooSmall;

impl fmt::Display for HeadTooSmall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("response head does not fit the buffer")
    }
}

/// A response head, written by [`ResponseHead::write`] without allocating.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ResponseHead<'a> {
    /// The status line's status.
    pub status: Status,
    /// `Content-Length`: the body length a GET gets (a HEAD response says the same and sends
    /// nothing). Not written for 304.
    pub content_length: u64,
    /// `Content-Type`, usually from [`content_type`](super::content_type).
    pub content_type: Option<&'a str>,
    /// `Last-Modified`, in Unix seconds.
    pub last_modified: Option<u64>,
    /// `ETag`, quotes included (from [`ETag::as_str`](super::ETag::as_str)).
    pub etag: Option<&'a str>,
    /// `Content-Encoding`, for a precompressed sibling (from
    /// [`ContentCoding::name`](super::ContentCoding::name)).
    pub content_encoding: Option<&'a str>,
    /// `Vary: Accept-Encoding`: the answer depends on the request's `Accept-Encoding`.
    pub vary_accept_encoding: bool,
    /// `Content-Range`, for 206 and 416.
    pub content_range: Option<ContentRange>,
    /// `Accept-Ranges: bytes`, for file responses.
    pub accept_ranges: bool,
    /// `Location`, for redirects.
    pub location: Option<&'a str>,
    /// `Allow`, for 405 (for example `GET, HEAD`).
    pub allow: Option<&'a str>,
    /// `Connection: keep-alive` or `Connection: close`.
    pub keep_alive: bool,
    /// `Date`: the current time in Unix seconds, passed in (core reads no clock).
    pub date: u64,
}

impl<'a> ResponseHead<'a> {
    /// A head with `status` at time `now`, an empty body, no optional headers, and
    /// `Connection: close`; set the public fields for the rest.
    pub fn new(status: Status, now: u64) -> Self {
        Self {
            status,
            content_length: 0,
            content_type: None,
            last_modified: None,
            etag: None,
            content_encoding: None,
            vary_accept_encoding: false,
            content_range: None,
            accept_ranges: false,
            location: None,
            allow: None,
            keep_alive: false,
            date: now,
        }
    }

    /// Writes the head, including the blank line that ends it, at the start of `out`;
    /// returns its length.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, HeadTooSmall> {
        let mut w = Writer { out, len: 0 };
        w.put(b"HTTP/1.1 ")?;
        w.num(u64::from(self.status.code()))?;
        w.put(b" ")?;
        w.put(self.status.reason().as_bytes())?;
        w.put(b"\r\nServer: ringwork\r\nDate: ")?;
        w.date(self.date)?;
        // A 304 carries no Content-Length: RFC 9110 §8.6 allows one only if it equals the
        // 200's, and leaving it out cannot be wrong (clients know a 304 has no body).
        if !self.status.forbids_body() {
            w.put(b"\r\nContent-Length: ")?;
            w.num(self.content_length)?;
        }
        if let Some(ct) = self.content_type {
            w.header(b"Content-Type", ct.as_bytes())?;
        }
        if let Some(lm) = self.last_modified {
            w.put(b"\r\nLast-Modified: ")?;
            w.date(lm)?;
        }
        if let Some(etag) = self.etag {
            w.header(b"ETag", etag.as_bytes())?;
        }
        if let Some(coding) = self.content_encoding {
            w.header(b"Content-Encoding", coding.as_bytes())?;
        }
        if self.vary_accept_encoding {
            w.header(b"Vary", b"Accept-Encoding")?;
        }
        if self.accept_ranges {
            w.header(b"Accept-Ranges", b"bytes")?;
        }
        match self.content_range {
            Some(ContentRange::Bytes {
                start,
                end_inclusive,
                complete_len,
            }) => {
                w.put(b"\r\nContent-Range: bytes ")?;
                w.num(start)?;
                w.put(b"-")?;
                w.num(end_inclusive)?;
                w.put(b"/")?;
                w.num(complete_len)?;
            }
            Some(ContentRange::Unsatisfied { complete_len }) => {
                w.put(b"\r\nContent-Range: bytes */")?;
                w.num(complete_len)?;
            }
            None => {}
        }
        if let Some(location) = self.location {
            w.header(b"Location", location.as_bytes())?;
        }
        if let Some(allow) = self.allow {
            w.header(b"Allow", allow.as_bytes())?;
        }
        let connection: &[u8] = if self.keep_alive {
            b"keep-alive"
        } else {
            b"close"
        };
        w.header(b"Connection", connection)?;
        w.put(b"\r\n\r\n")?;
        Ok(w.len)
    }
}

/// Appends to a fixed buffer, failing instead of truncating.
struct Writer<'o> {
    out: &'o mut [u8],
    len: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), HeadTooSmall> {
        let end = self.len + bytes.len();
        self.out
            .get_mut(self.len..end)
            .ok_or(HeadTooSmall)?
            .copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    fn header(&mut self, name: &[u8], value: &[u8]) -> Result<(), HeadTooSmall> {
        self.put(b"\r\n")?;
        self.put(name)?;
        self.put(b": ")?;
        self.put(value)
    }

    fn num(&mut self, n: u64) -> Result<(), HeadTooSmall> {
        self.put(Decimal::new(n).as_bytes())
    }

    fn date(&mut self, unix_secs: u64) -> Result<(), HeadTooSmall> {
        let mut d = [0u8; 29];
        format_http_date(unix_secs, &mut d);
        self.put(&d)
    }
}

/// The lengths [`error_response`] wrote.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ErrorResponseLen {
    /// Bytes of head; for a HEAD request send only these.
    pub head: usize,
    /// Bytes of head and body.
    pub total: usize,
}

/// The `Allow` value of this server's 405s.
pub const ALLOW: &str = "GET, HEAD";

/// Writes a complete small error response (`404 Not Found\n` as a plain-text body) for
/// `status` into `out`. A 405 says `Allow: GET, HEAD`; a 416 should come from
/// [`ResponseHead`] instead, since it needs the file length.
pub fn error_response(
    status: Status,
    keep_alive: bool,
    now: u64,
    out: &mut [u8],
) -> Result<ErrorResponseLen, HeadTooSmall> {
    small_response(status, None, keep_alive, now, out)
}

/// Writes a complete 301 to `location` (from [`slash_redirect_location`], which makes it a
/// safe header value) with a plain-text body, as [`error_response`] does.
///
/// [`slash_redirect_location`]: super::slash_redirect_location
pub fn redirect_response(
    location: &str,
    keep_alive: bool,
    now: u64,
    out: &mut [u8],
) -> Result<ErrorResponseLen, HeadTooSmall> {
    small_response(
        Status::MovedPermanently,
        Some(location),
        keep_alive,
        now,
        out,
    )
}

fn small_response(
    status: Status,
    location: Option<&str>,
    keep_alive: bool,
    now: u64,
    out: &mut [u8],
) -> Result<ErrorResponseLen, HeadTooSmall> {
    let reason = status.reason().as_bytes();
    let body_len = if status.forbids_body() {
        0
    } else {
        3 + 1 + reason.len() + 1
    };
    let mut head = ResponseHead::new(status, now);
    head.content_length = body_len as u64;
    head.content_type = (body_len > 0).then_some("text/plain; charset=utf-8");
    head.keep_alive = keep_alive;
    head.location = location;
    if status == Status::MethodNotAllowed {
        head.allow = Some(ALLOW);
    }
    let head_len = head.write(out)?;
    let mut w = Writer { out, len: head_len };
    if body_len > 0 {
        w.num(u64::from(status.code()))?;
        w.put(b" ")?;
        w.put(reason)?;
        w.put(b"\n")?;
    }
    Ok(ErrorResponseLen {
        head: head_len,
        total: w.len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{content_type, parse_http_date, MAX_HTTP_DATE};
    use proptest::prelude::*;
    use std::{format, string::String, vec::Vec};

    // --- response heads ---

    fn parse_response(raw: &[u8]) -> (u16, Vec<(String, String)>, usize) {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(n) = resp.parse(raw).unwrap() else {
            panic!("incomplete head")
        };
        let code = resp.code.unwrap();
        let hs = resp
            .headers
            .iter()
            .map(|h| {
                (
                    String::from(h.name),
                    String::from(core::str::from_utf8(h.value).unwrap()),
                )
            })
            .collect();
        (code, hs, n)
    }

    fn header<'h>(hs: &'h [(String, String)], name: &str) -> Option<&'h str> {
        hs.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn partial_content_head() {
        let mut head = ResponseHead::new(Status::PartialContent, 784_111_777);
        head.content_length = 10;
        head.content_type = Some(content_type("a.txt"));
        head.last_modified = Some(0);
        head.etag = Some("\"0-64\"");
        head.content_encoding = Some("br");
        head.vary_accept_encoding = true;
        head.content_range = Some(ContentRange::Bytes {
            start: 0,
            end_inclusive: 9,
            complete_len: 100,
        });
        head.accept_ranges = true;
        head.keep_alive = true;
        let mut out = [0u8; 512];
        let n = head.write(&mut out).unwrap();
        let (code, hs, len) = parse_response(&out[..n]);
        assert_eq!((code, len), (206, n));
        assert_eq!(header(&hs, "content-range"), Some("bytes 0-9/100"));
        assert_eq!(header(&hs, "content-length"), Some("10"));
        assert_eq!(header(&hs, "accept-ranges"), Some("bytes"));
        assert_eq!(header(&hs, "etag"), Some("\"0-64\""));
        assert_eq!(header(&hs, "content-encoding"), Some("br"));
        assert_eq!(header(&hs, "vary"), Some("Accept-Encoding"));
        assert_eq!(header(&hs, "connection"), Some("keep-alive"));
        assert_eq!(header(&hs, "server"), Some("ringwork"));
        assert_eq!(header(&hs, "date"), Some("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert_eq!(
            header(&hs, "last-modified"),
            Some("Thu, 01 Jan 1970 00:00:00 GMT")
        );
        // Every byte short of the full head fails instead of truncating.
        for short in 0..n {
            assert_eq!(head.write(&mut out[..short]), Err(HeadTooSmall));
        }
    }

    #[test]
    fn unsatisfiable_head() {
        let mut head = ResponseHead::new(Status::RangeNotSatisfiable, 0);
        head.content_range = Some(ContentRange::Unsatisfied { complete_len: 42 });
        let mut out = [0u8; 512];
        let n = head.write(&mut out).unwrap();
        let (code, hs, _) = parse_response(&out[..n]);
        assert_eq!(code, 416);
        assert_eq!(header(&hs, "content-range"), Some("bytes */42"));
        assert_eq!(header(&hs, "connection"), Some("close"));
    }

    #[test]
    fn error_responses() {
        let mut out = [0u8; 512];
        let w = error_response(Status::NotFound, true, 0, &mut out).unwrap();
        let (code, hs, head) = parse_response(&out[..w.total]);
        assert_eq!((code, head), (404, w.head));
        assert_eq!(&out[w.head..w.total], b"404 Not Found\n");
        assert_eq!(header(&hs, "content-length"), Some("14"));
        assert_eq!(header(&hs, "connection"), Some("keep-alive"));

        let w = error_response(Status::MethodNotAllowed, false, 0, &mut out).unwrap();
        let (code, hs, _) = parse_response(&out[..w.total]);
        assert_eq!(code, 405);
        assert_eq!(header(&hs, "allow"), Some("GET, HEAD"));
        assert_eq!(&out[w.head..w.total], b"405 Method Not Allowed\n");

        let w = error_response(Status::NotModified, true, 0, &mut out).unwrap();
        assert_eq!(w.head, w.total, "304 has no body");
        let (_, hs, _) = parse_response(&out[..w.total]);
        assert_eq!(header(&hs, "content-length"), None, "nor a Content-Length");

        for status in Status::ALL {
            let w = error_response(*status, false, 0, &mut out).unwrap();
            let (code, hs, _) = parse_response(&out[..w.total]);
            assert_eq!(code, status.code());
            let cl: usize = header(&hs, "content-length").map_or(0, |v| v.parse().unwrap());
            assert_eq!(cl, w.total - w.head);
        }
        assert_eq!(
            error_response(Status::NotFound, true, 0, &mut out[..10]),
            Err(HeadTooSmall)
        );
    }

    fn any_status() -> impl Strategy<Value = Status> {
        proptest::sample::select(Status::ALL)
    }

    proptest! {
        /// Whatever the fields, the head parses back as an HTTP response whose
        /// Content-Length and status are the ones written.
        #[test]
        fn head_parses_back(
            status in any_status(),
            content_length in any::<u64>(),
            ct in proptest::option::of(proptest::sample::select(&["text/html; charset=utf-8", "image/png"][..])),
            last_modified in proptest::option::of(0u64..=MAX_HTTP_DATE),
            range in proptest::option::of((any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>())),
            accept_ranges in any::<bool>(),
            keep_alive in any::<bool>(),
            date in any::<u64>(),
        ) {
            let mut head = ResponseHead::new(status, date);
            head.content_length = content_length;
            head.content_type = ct;
            head.last_modified = last_modified;
            head.content_range = range.map(|(a, b, c, sat)| if sat {
                ContentRange::Bytes { start: a, end_inclusive: b, complete_len: c }
            } else {
                ContentRange::Unsatisfied { complete_len: c }
            });
            head.accept_ranges = accept_ranges;
            head.keep_alive = keep_alive;
            let mut out = [0u8; 512];
            let n = head.write(&mut out).unwrap();
            let (code, hs, len) = parse_response(&out[..n]);
            prop_assert_eq!(code, status.code());
            prop_assert_eq!(len, n);
            let expected_cl = format!("{content_length}");
            let expected_cl = (!status.forbids_body()).then_some(expected_cl.as_str());
            prop_assert_eq!(header(&hs, "content-length"), expected_cl);
            prop_assert_eq!(header(&hs, "connection"), Some(if keep_alive { "keep-alive" } else { "close" }));
            if let Some(lm) = last_modified {
                prop_assert_eq!(parse_http_date(header(&hs, "last-modified").unwrap().as_bytes()), Some(lm));
            }
        }

    }

    #[test]
    fn redirect_responses() {
        let mut out = [0u8; 512];
        let w = redirect_response("/sub/?q=1", true, 0, &mut out).unwrap();
        let (code, hs, head) = parse_response(&out[..w.total]);
        assert_eq!((code, head), (301, w.head));
        assert_eq!(header(&hs, "location"), Some("/sub/?q=1"));
        assert_eq!(header(&hs, "connection"), Some("keep-alive"));
        assert_eq!(&out[w.head..w.total], b"301 Moved Permanently\n");
    }
}

/// A number's decimal digits, formatted without allocating (for response heads and log
/// lines).
#[derive(Clone, Copy, Debug)]
pub struct Decimal {
    digits: [u8; 20],
    start: u8,
}

impl Decimal {
    /// The digits of `n`.
    pub fn new(mut n: u64) -> Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Self {
            digits,
            start: i as u8,
        }
    }

    /// The digits, most significant first.
    pub fn as_bytes(&self) -> &[u8] {
        &self.digits[usize::from(self.start)..]
    }
}

#[cfg(test)]
mod decimal_tests {
    use super::Decimal;

    #[test]
    fn formats_every_width() {
        assert_eq!(Decimal::new(0).as_bytes(), b"0");
        assert_eq!(Decimal::new(7).as_bytes(), b"7");
        assert_eq!(Decimal::new(1_000_000).as_bytes(), b"1000000");
        assert_eq!(Decimal::new(u64::MAX).as_bytes(), b"18446744073709551615");
    }
}
