//! Request heads: [`parse_request`] with httparse into a [`Request`] borrowing the receive
//! buffer, the framing rules whose violation makes a connection unusable (request smuggling,
//! oversized heads, unsupported versions), and [`Request::check_servable`], the static
//! server's method and body policy. It does not interpret the target (see `path`) or the
//! header values it keeps (see `range`, `date`).

use alloc::vec::Vec;
use core::fmt;
use core::mem::MaybeUninit;

use super::{trim_ows, Status};

/// Header lines parsed in place, with no allocation; a head with more (within
/// [`Limits::max_head_bytes`]) is parsed again with room for all of them.
pub const MAX_HEADERS: usize = 64;

/// Size limits for request heads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Limits {
    /// Largest request head (request line, headers and the blank line) in bytes; a longer
    /// head, complete or not, is answered with 431.
    pub max_head_bytes: usize,
    /// Longest request target in bytes; a longer one is answered with 414.
    pub max_target_len: usize,
}

impl Default for Limits {
    /// 8 KiB heads and 2 KiB targets: what common servers accept, and well below PATH_MAX.
    fn default() -> Self {
        Self {
            max_head_bytes: 8192,
            max_target_len: 2048,
        }
    }
}

/// Why a request is refused. Every variant maps to one [`Status`] through
/// [`HttpError::status`]; after any of them the server should close the connection once the
/// error response is sent, because the request's framing can no longer be trusted (405 on a
/// request without a body is the one case where keeping it open would be safe).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum HttpError {
    /// httparse rejected the head (bad token, bad header name or value, bad line ending;
    /// obs-fold continuation lines are rejected here too). 400.
    Malformed,
    /// The target is not origin-form (`/path`) or absolute-form (`http://host/path`). 400.
    BadTarget,
    /// A `%` not followed by two hex digits. 400.
    BadPercentEncoding,
    /// The decoded path contains NUL or another control byte. 400.
    ControlByteInPath,
    /// The decoded path is not UTF-8. 400.
    PathNotUtf8,
    /// The decoded path has a `..` segment. 400: the request is refused as malformed rather
    /// than forbidden, so nothing about what lies outside the root is revealed.
    DotDotSegment,
    /// Content-Length is not a plain decimal number, or appears more than once. 400.
    BadContentLength,
    /// Both Transfer-Encoding and Content-Length: the classic request-smuggling ambiguity
    /// (RFC 9112 §6.3 lets us reject it; proxies that disagree on which wins are the attack). 400.
    ContentLengthWithTransferEncoding,
    /// An HTTP/1.1 request without exactly one Host header (RFC 9112 §3.2). 400.
    BadHost,
    /// A GET or HEAD with a body (nonzero Content-Length or any Transfer-Encoding). 400:
    /// a static server has no use for the body, and skipping a chunked body would mean
    /// decoding it; refusing it (and closing) is simpler and leaves no framing to get wrong.
    BodyNotAllowed,
    /// A method other than GET or HEAD. 405.
    MethodNotAllowed,
    /// The target is longer than [`Limits::max_target_len`], or its normalised form does not
    /// fit the caller's path buffer. 414.
    TargetTooLong,
    /// The head is longer than [`Limits::max_head_bytes`]. 431.
    HeadTooLarge,
    /// More header lines than [`Limits::max_head_bytes`] can hold (one per 4 bytes: `a:` and
    /// CRLF). 431. The head's size is the limit on its lines, as nginx's buffers are.
    TooManyHeaders,
    /// Not HTTP/1.0 or HTTP/1.1. 505.
    VersionNotSupported,
}

impl HttpError {
    /// The status to answer with.
    pub const fn status(self) -> Status {
        match self {
            HttpError::Malformed
            | HttpError::BadTarget
            | HttpError::BadPercentEncoding
            | HttpError::ControlByteInPath
            | HttpError::PathNotUtf8
            | HttpError::DotDotSegment
            | HttpError::BadContentLength
            | HttpError::ContentLengthWithTransferEncoding
            | HttpError::BadHost
            | HttpError::BodyNotAllowed => Status::BadRequest,
            HttpError::MethodNotAllowed => Status::MethodNotAllowed,
            HttpError::TargetTooLong => Status::UriTooLong,
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => Status::HeaderFieldsTooLarge,
            HttpError::VersionNotSupported => Status::VersionNotSupported,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            HttpError::Malformed => "malformed request head",
            HttpError::BadTarget => "request target is not a path",
            HttpError::BadPercentEncoding => "malformed percent-encoding in path",
            HttpError::ControlByteInPath => "control byte in path",
            HttpError::PathNotUtf8 => "path is not UTF-8",
            HttpError::DotDotSegment => "path has a '..' segment",
            HttpError::BadContentLength => "invalid or repeated Content-Length",
            HttpError::ContentLengthWithTransferEncoding => {
                "both Transfer-Encoding and Content-Length"
            }
            HttpError::BadHost => "HTTP/1.1 request without exactly one Host",
            HttpError::BodyNotAllowed => "GET or HEAD with a body",
            HttpError::MethodNotAllowed => "method not allowed",
            HttpError::TargetTooLong => "request target too long",
            HttpError::HeadTooLarge => "request head too large",
            HttpError::TooManyHeaders => "too many header lines",
            HttpError::VersionNotSupported => "HTTP version not supported",
        };
        write!(f, "{what} ({})", self.status())
    }
}

/// The request method, as far as a static server cares.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Method {
    /// GET.
    Get,
    /// HEAD: the same head as GET, no body.
    Head,
    /// Anything else (answered with 405 by [`Request::check_servable`]).
    Other,
}

/// One parsed request head, borrowing the receive buffer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Request<'a> {
    /// The method.
    pub method: Method,
    /// The method as sent (for an access log: what a 405 was for).
    pub method_name: &'a str,
    /// The raw request target, still percent-encoded; see [`normalize_path`](super::normalize_path).
    pub target: &'a str,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
    /// Whether the connection stays open after the response: HTTP/1.1 unless
    /// `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// The raw `Range` value, if exactly one was sent (two are ignored, as an invalid range
    /// may be); see [`parse_range`](super::parse_range).
    pub range: Option<&'a [u8]>,
    /// The raw `If-Modified-Since` value (the first one); see [`not_modified`](super::not_modified).
    pub if_modified_since: Option<&'a [u8]>,
    /// The raw `If-None-Match` value; see [`client_is_fresh`](super::client_is_fresh). When
    /// the header is repeated this is `Some(b"")`, which matches nothing: the lines form one
    /// list, and answering the full response is right whatever they hold.
    pub if_none_match: Option<&'a [u8]>,
    /// The raw `If-Range` value; see [`if_range_holds`](super::if_range_holds). `Some(b"")`
    /// when repeated, which never holds (the whole file is sent).
    pub if_range: Option<&'a [u8]>,
    /// The raw `Accept-Encoding` value; see
    /// [`preferred_codings`](super::preferred_codings). `Some(b"")` when repeated, which
    /// accepts no coding (the plain file is sent).
    pub accept_encoding: Option<&'a [u8]>,
    /// The raw `Referer` value (the first one), for an access log.
    pub referer: Option<&'a [u8]>,
    /// The raw `User-Agent` value (the first one), for an access log.
    pub user_agent: Option<&'a [u8]>,
    /// True when a body follows the head (nonzero Content-Length or any Transfer-Encoding).
    /// The body has not been consumed: a server that answers such a request must close.
    pub has_body: bool,
}

impl Request<'_> {
    /// The static server's policy, applied after a successful parse: GET and HEAD only
    /// (405 otherwise), and no body (400).
    pub fn check_servable(&self) -> Result<(), HttpError> {
        match (self.method, self.has_body) {
            (Method::Other, _) => Err(HttpError::MethodNotAllowed),
            (_, true) => Err(HttpError::BodyNotAllowed),
            (_, false) => Ok(()),
        }
    }
}

/// The result of feeding the bytes received so far to [`parse_request`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Parsed<'a> {
    /// The head is not complete yet: receive more and parse again from the start.
    Partial,
    /// A complete head of `head_len` bytes; a pipelined next request starts at `head_len`.
    Complete {
        /// The request.
        request: Request<'a>,
        /// Bytes the head occupied, including leading empty lines and the final CRLF.
        head_len: usize,
    },
}

/// Parses one request head from the start of `buf`.
///
/// Framing problems are errors here; method and body policy is [`Request::check_servable`],
/// so a 405 is only ever sent for a request that parsed.
pub fn parse_request<'a>(buf: &'a [u8], limits: &Limits) -> Result<Parsed<'a>, HttpError> {
    // Left uninitialised: httparse writes only the headers it finds.
    let mut headers = [const { MaybeUninit::<httparse::Header<'a>>::uninit() }; MAX_HEADERS];
    let mut many: Vec<MaybeUninit<httparse::Header<'a>>> = Vec::new();
    let mut req = httparse::Request::new(&mut []);
    let mut parsed = req.parse_with_uninit_headers(buf, &mut headers);
    if parsed == Err(httparse::Error::TooManyHeaders) {
        // Rare: room for every line the head's byte limit allows.
        many.resize_with(limits.max_head_bytes / 4, MaybeUninit::uninit);
        req = httparse::Request::new(&mut []);
        parsed = req.parse_with_uninit_headers(buf, &mut many);
    }
    let head_len = match parsed {
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.max_head_bytes {
                Err(HttpError::HeadTooLarge)
            } else {
                Ok(Parsed::Partial)
            };
        }
        Ok(httparse::Status::Complete(n)) => n,
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        // httparse reports any request line whose version is not `HTTP/1.0` or `HTTP/1.1`
        // this way, which includes `HTTP/2.0` (505) but also garbage like `FOO/1.1`; 505 is
        // an acceptable answer to either.
        Err(httparse::Error::Version) => return Err(HttpError::VersionNotSupported),
        Err(_) => return Err(HttpError::Malformed),
    };
    if head_len > limits.max_head_bytes {
        return Err(HttpError::HeadTooLarge);
    }
    // A complete parse fills all three; `ok_or` keeps a future httparse change from panicking.
    let method = req.method.ok_or(HttpError::Malformed)?;
    let target = req.path.ok_or(HttpError::Malformed)?;
    let version_minor = req.version.ok_or(HttpError::Malformed)?;
    if version_minor > 1 {
        return Err(HttpError::VersionNotSupported);
    }
    if target.len() > limits.max_target_len {
        return Err(HttpError::TargetTooLong);
    }
    let method_name = method;
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };

    let fields = HeaderFields::scan(req.headers)?;
    if fields.transfer_encoding && fields.content_length.is_some() {
        return Err(HttpError::ContentLengthWithTransferEncoding);
    }
    if version_minor == 1 && fields.hosts != 1 {
        return Err(HttpError::BadHost);
    }
    let range = if fields.ranges > 1 {
        None
    } else {
        fields.range
    };
    let keep_alive = match version_minor {
        1 => !fields.conn_close,
        _ => fields.conn_keep_alive && !fields.conn_close,
    };
    let has_body = fields.transfer_encoding || fields.content_length.is_some_and(|n| n > 0);
    Ok(Parsed::Complete {
        request: Request {
            method,
            method_name,
            target,
            version_minor,
            keep_alive,
            range,
            if_modified_since: fields.if_modified_since,
            if_none_match: fields.if_none_match,
            if_range: fields.if_range,
            accept_encoding: fields.accept_encoding,
            referer: fields.referer,
            user_agent: fields.user_agent,
            has_body,
        },
        head_len,
    })
}

/// What [`parse_request`] takes from the header lines, before the checks that depend on the
/// version. Values are trimmed of optional whitespace; a repeated `If-None-Match`, `If-Range`
/// or `Accept-Encoding` becomes `Some(b"")` (see [`Request`]'s fields for why), and only the
/// first `If-Modified-Since`, `Referer` and `User-Agent` count.
#[derive(Default)]
struct HeaderFields<'a> {
    content_length: Option<u64>,
    transfer_encoding: bool,
    /// `Host` lines seen: HTTP/1.1 requires exactly one.
    hosts: u32,
    conn_close: bool,
    conn_keep_alive: bool,
    /// The last `Range`; ignored when `ranges` is over 1.
    range: Option<&'a [u8]>,
    ranges: u32,
    if_modified_since: Option<&'a [u8]>,
    if_none_match: Option<&'a [u8]>,
    if_range: Option<&'a [u8]>,
    accept_encoding: Option<&'a [u8]>,
    referer: Option<&'a [u8]>,
    user_agent: Option<&'a [u8]>,
}

impl<'a> HeaderFields<'a> {
    /// Reads every header line; fails only on a bad or repeated `Content-Length`.
    fn scan(headers: &[httparse::Header<'a>]) -> Result<Self, HttpError> {
        let mut f = Self::default();
        for h in headers {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                if f.content_length.is_some() {
                    // Even identical repeats are refused: RFC 9112 §6.3 allows collapsing
                    // them, but a front proxy that picked the other copy is how smuggling
                    // starts.
                    return Err(HttpError::BadContentLength);
                }
                f.content_length = Some(parse_decimal(h.value).ok_or(HttpError::BadContentLength)?);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                f.transfer_encoding = true;
            } else if name.eq_ignore_ascii_case(b"host") {
                f.hosts += 1;
            } else if name.eq_ignore_ascii_case(b"connection") {
                for token in h.value.split(|b| *b == b',') {
                    let token = trim_ows(token);
                    if token.eq_ignore_ascii_case(b"close") {
                        f.conn_close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        f.conn_keep_alive = true;
                    }
                }
            } else if name.eq_ignore_ascii_case(b"range") {
                f.ranges += 1;
                f.range = Some(trim_ows(h.value));
            } else if name.eq_ignore_ascii_case(b"if-modified-since")
                && f.if_modified_since.is_none()
            {
                f.if_modified_since = Some(trim_ows(h.value));
            } else if name.eq_ignore_ascii_case(b"if-none-match") {
                f.if_none_match = Some(if f.if_none_match.is_some() {
                    b""
                } else {
                    trim_ows(h.value)
                });
            } else if name.eq_ignore_ascii_case(b"if-range") {
                f.if_range = Some(if f.if_range.is_some() {
                    b""
                } else {
                    trim_ows(h.value)
                });
            } else if name.eq_ignore_ascii_case(b"referer") {
                f.referer = f.referer.or(Some(trim_ows(h.value)));
            } else if name.eq_ignore_ascii_case(b"user-agent") {
                f.user_agent = f.user_agent.or(Some(trim_ows(h.value)));
            } else if name.eq_ignore_ascii_case(b"accept-encoding") {
                f.accept_encoding = Some(if f.accept_encoding.is_some() {
                    b""
                } else {
                    trim_ows(h.value)
                });
            }
        }
        Ok(f)
    }
}

/// A decimal number with no sign, spaces or separators, at most 19 digits (fits in u64).
fn parse_decimal(v: &[u8]) -> Option<u64> {
    let v = trim_ows(v);
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::{format, vec::Vec};

    fn limits() -> Limits {
        Limits::default()
    }

    /// Parses a complete head and applies the server policy, as the server does.
    fn serve(raw: &[u8]) -> Result<Request<'_>, HttpError> {
        match parse_request(raw, &limits())? {
            Parsed::Complete { request, head_len } => {
                assert_eq!(head_len, raw.len(), "test heads are exactly one request");
                request.check_servable()?;
                Ok(request)
            }
            Parsed::Partial => panic!("test head is incomplete"),
        }
    }

    fn status_of(raw: &[u8]) -> u16 {
        match serve(raw) {
            Ok(_) => 200,
            Err(e) => e.status().code(),
        }
    }

    // --- parsing: success paths ---

    #[test]
    fn simple_get() {
        let r = serve(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.target, "/index.html");
        assert_eq!(r.version_minor, 1);
        assert!(r.keep_alive);
        assert!(!r.has_body);
        assert_eq!(r.range, None);
    }

    #[test]
    fn head_with_range_and_ims() {
        let r = serve(
            b"HEAD /a HTTP/1.1\r\nHost: x\r\nRange:  bytes=0-9 \r\n\
              If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.method, Method::Head);
        assert_eq!(r.range, Some(&b"bytes=0-9"[..]));
        assert_eq!(
            r.if_modified_since,
            Some(&b"Sun, 06 Nov 1994 08:49:37 GMT"[..])
        );
    }

    #[test]
    fn keep_alive_defaults() {
        let ka = |raw: &[u8]| serve(raw).unwrap().keep_alive;
        assert!(ka(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, CLOSE\r\n\r\n"
        ));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
        ));
    }

    #[test]
    fn zero_content_length_is_no_body() {
        let r = serve(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(!r.has_body);
    }

    #[test]
    fn partial_until_blank_line() {
        let full = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 0..full.len() {
            assert_eq!(
                parse_request(&full[..cut], &limits()),
                Ok(Parsed::Partial),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn pipelined_requests_parse_one_after_another() {
        let buf = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c";
        let mut at = 0;
        let mut seen = Vec::new();
        while let Parsed::Complete { request, head_len } =
            parse_request(&buf[at..], &limits()).unwrap()
        {
            seen.push((request.method, request.target));
            at += head_len;
        }
        assert_eq!(seen, [(Method::Get, "/a"), (Method::Head, "/b")]);
        assert_eq!(&buf[at..], b"GET /c");
    }

    // --- parsing: every refusal ---

    #[test]
    fn malformed_is_400() {
        assert_eq!(status_of(b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
        assert_eq!(status_of(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"), 400);
        assert_eq!(status_of(b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
        assert_eq!(status_of(b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
        assert_eq!(status_of(b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    }

    #[test]
    fn obs_fold_is_refused() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  continued\r\n\r\n";
        assert_eq!(status_of(raw), 400);
    }

    #[test]
    fn host_rules() {
        assert_eq!(
            serve(b"GET / HTTP/1.1\r\n\r\n"),
            Err(HttpError::BadHost),
            "HTTP/1.1 needs Host"
        );
        assert_eq!(
            serve(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(HttpError::BadHost)
        );
        assert!(serve(b"GET / HTTP/1.0\r\n\r\n").is_ok(), "1.0 needs none");
    }

    #[test]
    fn smuggling_cl_and_te() {
        let raw =
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            serve(raw),
            Err(HttpError::ContentLengthWithTransferEncoding)
        );
        let raw =
            b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(status_of(raw), 400);
    }

    #[test]
    fn smuggling_duplicate_content_length() {
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
        ] {
            assert_eq!(serve(raw), Err(HttpError::BadContentLength));
        }
    }

    #[test]
    fn bodies_on_get_and_head_are_400() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(serve(raw), Err(HttpError::BodyNotAllowed));
        let raw = b"HEAD / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(serve(raw), Err(HttpError::BodyNotAllowed));
    }

    #[test]
    fn other_methods_are_405_after_parsing() {
        let raw = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n";
        let Ok(Parsed::Complete { request, .. }) = parse_request(raw, &limits()) else {
            panic!("POST parses")
        };
        assert_eq!(request.method, Method::Other);
        assert!(request.has_body, "so the server knows to close");
        assert_eq!(status_of(raw), 405);
        assert_eq!(status_of(b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n"), 405);
        // Malformed beats 405: the method check needs a successful parse.
        assert_eq!(status_of(b"POST / HTTP/1.1\r\nBad Header: x\r\n\r\n"), 400);
    }

    #[test]
    fn long_target_is_414() {
        let l = Limits {
            max_head_bytes: 8192,
            max_target_len: 16,
        };
        let ok = b"GET /0123456789abcde HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(parse_request(ok, &l), Ok(Parsed::Complete { .. })));
        let long = b"GET /0123456789abcdef HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse_request(long, &l), Err(HttpError::TargetTooLong));
        assert_eq!(HttpError::TargetTooLong.status().code(), 414);
    }

    #[test]
    fn large_heads_are_431() {
        let l = Limits {
            max_head_bytes: 64,
            max_target_len: 64,
        };
        // Complete but too large.
        let mut raw = Vec::from(&b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: "[..]);
        raw.extend_from_slice(&[b'a'; 60]);
        raw.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_request(&raw, &l), Err(HttpError::HeadTooLarge));
        // Incomplete and already too large: no point waiting for the rest.
        assert_eq!(
            parse_request(&raw[..raw.len() - 2], &l),
            Err(HttpError::HeadTooLarge)
        );
        assert_eq!(
            parse_request(&raw[..40], &l),
            Ok(Parsed::Partial),
            "within the limit, still waiting"
        );
    }

    /// Header lines are limited by the head's bytes: 300 short ones fit in 8 KiB and are
    /// served; more than fit are 431 for the size; only a larger byte limit meets the count.
    #[test]
    fn header_lines_are_limited_by_the_head_size() {
        let head = |lines: usize| {
            let mut raw = Vec::from(&b"GET / HTTP/1.1\r\nHost: x\r\n"[..]);
            for i in 0..lines {
                raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
            }
            raw.extend_from_slice(b"\r\n");
            raw
        };
        let many = head(300);
        assert!(many.len() < Limits::default().max_head_bytes);
        assert!(serve(&many).is_ok(), "300 header lines within 8 KiB");
        assert_eq!(status_of(&head(1000)), 431);
        assert_eq!(serve(&head(1000)), Err(HttpError::HeadTooLarge));
        let roomy = Limits {
            max_head_bytes: 1 << 20,
            ..Limits::default()
        };
        assert!(
            parse_request(&head(1000), &roomy).is_ok(),
            "1,000 lines within a 1 MiB head"
        );
        // A head of 4-byte lines, more of them than its byte limit holds.
        let tight = Limits {
            max_head_bytes: 400,
            ..Limits::default()
        };
        let mut raw = Vec::from(&b"GET / HTTP/1.1\r\nHost: x\r\n"[..]);
        raw.extend_from_slice(&b"a:\r\n".repeat(100));
        raw.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&raw, &tight), Err(HttpError::TooManyHeaders));
    }

    #[test]
    fn other_versions_are_505() {
        assert_eq!(status_of(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"), 505);
        assert_eq!(status_of(b"GET / HTTP/1.2\r\nHost: x\r\n\r\n"), 505);
        assert_eq!(status_of(b"GET / HTTP/0.9\r\n\r\n"), 505);
    }

    #[test]
    fn validators_are_kept_and_repeats_match_nothing() {
        let r = serve(
            b"GET / HTTP/1.1\r\nHost: x\r\nIf-None-Match:  W/\"a\", \"b\" \r\nIf-Range: \"c\"\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.if_none_match, Some(&b"W/\"a\", \"b\""[..]));
        assert_eq!(r.if_range, Some(&b"\"c\""[..]));
        let r = serve(
            b"GET / HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a\"\r\nif-none-match: *\r\n\
              If-Range: \"c\"\r\nIF-RANGE: \"c\"\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (r.if_none_match, r.if_range),
            (Some(&b""[..]), Some(&b""[..]))
        );
        let r = serve(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!((r.if_none_match, r.if_range), (None, None));
        assert_eq!(r.accept_encoding, None);
        let r = serve(b"GET / HTTP/1.1\r\nHost: x\r\nAccept-Encoding:  gzip, br \r\n\r\n").unwrap();
        assert_eq!(r.accept_encoding, Some(&b"gzip, br"[..]));
        let r = serve(
            b"GET / HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nAccept-Encoding: br\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.accept_encoding, Some(&b""[..]));
        let r = serve(b"DELETE /x HTTP/1.1\r\nHost: x\r\nReferer: http://a/\r\nUser-Agent: curl/8 \r\nUser-Agent: other\r\n\r\n");
        assert_eq!(r, Err(HttpError::MethodNotAllowed));
        let Ok(Parsed::Complete { request, .. }) = parse_request(
            b"DELETE /x HTTP/1.1\r\nHost: x\r\nReferer: http://a/\r\nUser-Agent: curl/8 \r\nUser-Agent: other\r\n\r\n",
            &limits(),
        ) else {
            panic!("parses")
        };
        assert_eq!(request.method_name, "DELETE");
        assert_eq!(request.referer, Some(&b"http://a/"[..]));
        assert_eq!(request.user_agent, Some(&b"curl/8"[..]), "the first");
    }

    #[test]
    fn duplicate_range_is_ignored() {
        let r = serve(b"GET / HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\nRange: bytes=2-3\r\n\r\n")
            .unwrap();
        assert_eq!(r.range, None);
    }

    #[test]
    fn every_error_has_a_status_and_message() {
        use HttpError::*;
        let all = [
            Malformed,
            BadTarget,
            BadPercentEncoding,
            ControlByteInPath,
            PathNotUtf8,
            DotDotSegment,
            BadContentLength,
            ContentLengthWithTransferEncoding,
            BadHost,
            BodyNotAllowed,
            MethodNotAllowed,
            TargetTooLong,
            HeadTooLarge,
            TooManyHeaders,
            VersionNotSupported,
        ];
        for e in all {
            let code = e.status().code();
            assert!([400, 405, 414, 431, 505].contains(&code));
            assert!(format!("{e}").contains(&format!("{code}")));
        }
    }

    proptest! {
        #[test]
        fn parse_request_never_panics(v in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Parsed::Complete { head_len, .. }) = parse_request(&v, &limits()) {
                prop_assert!(head_len <= v.len());
            }
        }
    }
}
