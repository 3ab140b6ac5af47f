//! HTTP/1.1 for a static file server: request heads in, response heads out.
//!
//! What this module does:
//! - [`parse_request`] parses one request head with httparse into a [`Request`] that borrows
//!   the receive buffer, and enforces the framing rules whose violation makes a connection
//!   unusable (request smuggling, oversized heads, unsupported versions). `head_len` in
//!   [`Parsed::Complete`] lets the caller advance past the head, so pipelined requests are
//!   parsed one after another from the same buffer.
//! - [`Request::check_servable`] applies the static server's policy: only GET and HEAD (405),
//!   and no request bodies (400).
//! - [`normalize_path`] turns a request target into a relative path that cannot climb out of
//!   the served root, [`parse_range`] reads a single `Range: bytes=` spec, [`parse_http_date`]
//!   and [`format_http_date`] convert HTTP-dates without libc, and [`content_type`] maps file
//!   extensions to media types.
//! - [`ResponseHead::write`] and [`error_response`] write responses into a caller's buffer.
//!
//! What it deliberately does not do: read the clock (the current time is an argument), touch
//! files (the server opens them with openat2 `RESOLVE_BENEATH`, which is the real guard against
//! escapes; the `..` check here is defence in depth), allocate, decode request bodies (a static
//! server has no use for them), or implement conditional requests beyond If-Modified-Since
//! (no ETag, no If-Range) or multi-range responses (RFC 9110 lets a server ignore those and
//! send the whole representation).

use core::fmt;

/// How many header lines a request may carry; one more is answered with 431.
pub const MAX_HEADERS: usize = 32;

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
    /// More than [`MAX_HEADERS`] header lines. 431.
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
    /// The raw request target, still percent-encoded; see [`normalize_path`].
    pub target: &'a str,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
    /// Whether the connection stays open after the response: HTTP/1.1 unless
    /// `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// The raw `Range` value, if exactly one was sent (two are ignored, as an invalid range
    /// may be); see [`parse_range`].
    pub range: Option<&'a [u8]>,
    /// The raw `If-Modified-Since` value (the first one); see [`not_modified`].
    pub if_modified_since: Option<&'a [u8]>,
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
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
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
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };

    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut hosts = 0u32;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut range: Option<&[u8]> = None;
    let mut ranges = 0u32;
    let mut if_modified_since: Option<&[u8]> = None;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                // Even identical repeats are refused: RFC 9112 §6.3 allows collapsing them,
                // but a front proxy that picked the other copy is how smuggling starts.
                return Err(HttpError::BadContentLength);
            }
            content_length = Some(parse_decimal(h.value).ok_or(HttpError::BadContentLength)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = trim_ows(token);
                if token.eq_ignore_ascii_case(b"close") {
                    conn_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    conn_keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"range") {
            ranges += 1;
            range = Some(trim_ows(h.value));
        } else if name.eq_ignore_ascii_case(b"if-modified-since") && if_modified_since.is_none() {
            if_modified_since = Some(trim_ows(h.value));
        }
    }
    if transfer_encoding && content_length.is_some() {
        return Err(HttpError::ContentLengthWithTransferEncoding);
    }
    if version_minor == 1 && hosts != 1 {
        return Err(HttpError::BadHost);
    }
    if ranges > 1 {
        range = None;
    }
    let keep_alive = match version_minor {
        1 => !conn_close,
        _ => conn_keep_alive && !conn_close,
    };
    let has_body = transfer_encoding || content_length.is_some_and(|n| n > 0);
    Ok(Parsed::Complete {
        request: Request {
            method,
            target,
            version_minor,
            keep_alive,
            range,
            if_modified_since,
            has_body,
        },
        head_len,
    })
}

/// A decimal number with no sign, spaces or separators, at most 19 digits (fits in u64).
fn parse_decimal(v: &[u8]) -> Option<u64> {
    let v = trim_ows(v);
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Strips optional whitespace (SP and HTAB) from both ends.
fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// The path part of a target: everything before `?` or `#`, with an absolute-form
/// `scheme://authority` prefix removed. `None` when the target is neither form.
fn path_part(target: &[u8]) -> Option<&[u8]> {
    let end = target
        .iter()
        .position(|b| *b == b'?' || *b == b'#')
        .unwrap_or(target.len());
    let mut path = &target[..end];
    for scheme in [&b"http://"[..], &b"https://"[..]] {
        if path.len() >= scheme.len() && path[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &path[scheme.len()..];
            // An absolute-form target with no path means the root (RFC 9112 §3.2.2).
            path = match rest.iter().position(|b| *b == b'/') {
                Some(slash) => &rest[slash..],
                None => b"/",
            };
            break;
        }
    }
    (path.first() == Some(&b'/')).then_some(path)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Turns a request target into a path relative to the served root, in `out`.
///
/// Strips the query and fragment (and an absolute-form `http://host` prefix), percent-decodes,
/// splits on `/` *after* decoding (so `%2F` separates segments like `/` does, and `..%2F`
/// cannot smuggle a parent segment past the check), drops empty and `.` segments, and refuses
/// `..` segments outright rather than resolving them: browsers resolve dot segments before
/// sending, so a `..` that arrives was sent on purpose. Decoded control bytes (NUL above all,
/// which would truncate the path at the syscall) and non-UTF-8 paths are refused. Backslashes
/// are ordinary filename bytes on Linux and are kept.
///
/// The result has no leading or trailing `/`; the empty string is the root directory. Whether
/// a directory maps to `index.html` is the server's decision (see [`is_directory_request`]).
/// The server still opens the result with openat2 `RESOLVE_BENEATH`: this check is defence in
/// depth, not the only guard (symlinks inside the root are not visible here).
pub fn normalize_path<'o>(target: &[u8], out: &'o mut [u8]) -> Result<&'o str, HttpError> {
    let path = path_part(target).ok_or(HttpError::BadTarget)?;

    // Pass 1: percent-decode into `out`.
    let mut len = 0;
    let mut i = 0;
    while i < path.len() {
        let b = match path[i] {
            b'%' => {
                let hi = path.get(i + 1).copied().and_then(hex_value);
                let lo = path.get(i + 2).copied().and_then(hex_value);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => {
                        i += 3;
                        hi << 4 | lo
                    }
                    _ => return Err(HttpError::BadPercentEncoding),
                }
            }
            b => {
                i += 1;
                b
            }
        };
        if b < 0x20 || b == 0x7f {
            return Err(HttpError::ControlByteInPath);
        }
        *out.get_mut(len).ok_or(HttpError::TargetTooLong)? = b;
        len += 1;
    }

    // Pass 2: compact segments in place. The write index never passes the read index, since
    // segments are only dropped or moved left, so `copy_within` never overwrites unread bytes.
    let mut write = 0;
    let mut read = 0;
    while read < len {
        let seg_end = out[read..len]
            .iter()
            .position(|b| *b == b'/')
            .map_or(len, |p| read + p);
        match &out[read..seg_end] {
            b"" | b"." => {}
            b".." => return Err(HttpError::DotDotSegment),
            seg => {
                let seg_len = seg.len();
                if write > 0 {
                    out[write] = b'/';
                    write += 1;
                }
                out.copy_within(read..seg_end, write);
                write += seg_len;
            }
        }
        read = seg_end + 1;
    }
    core::str::from_utf8(&out[..write]).map_err(|_| HttpError::PathNotUtf8)
}

/// True when the target names a directory explicitly: its path ends with `/` (the root `/`
/// included). A target like `/docs` may still turn out to be a directory when opened; the
/// server then decides between a redirect to `/docs/` and a 404.
pub fn is_directory_request(target: &[u8]) -> bool {
    path_part(target).is_some_and(|p| p.last() == Some(&b'/'))
}

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

/// The largest time an IMF-fixdate can show: 9999-12-31 23:59:59 UTC.
pub const MAX_HTTP_DATE: u64 = 253_402_300_799;

const DAY_NAMES: [&[u8; 3]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
const LONG_DAY_NAMES: [&[u8]; 7] = [
    b"Sunday",
    b"Monday",
    b"Tuesday",
    b"Wednesday",
    b"Thursday",
    b"Friday",
    b"Saturday",
];
const MONTH_NAMES: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// (year, month 1..=12, day 1..=31) from days since 1970-01-01, for days >= 0.
/// Howard Hinnant's `civil_from_days`, restricted to the proleptic Gregorian years we need.
fn civil_from_days(days: u64) -> (u64, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a date in 1970 or later (the inverse of [`civil_from_days`]).
fn days_from_civil(year: u64, month: u32, day: u32) -> u64 {
    let y = year - u64::from(month <= 2);
    let era = y / 400;
    let yoe = y - era * 400;
    let m = u64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + u64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: u64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Writes `unix_secs` as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`). Times after
/// [`MAX_HTTP_DATE`] are written as that (a four-digit year is all the format has).
pub fn format_http_date(unix_secs: u64, out: &mut [u8; 29]) {
    let t = unix_secs.min(MAX_HTTP_DATE);
    let days = t / 86_400;
    let secs = t % 86_400;
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = ((days + 4) % 7) as usize;
    let two = |v: u64| [b'0' + (v / 10) as u8, b'0' + (v % 10) as u8];
    out[0..3].copy_from_slice(DAY_NAMES[weekday]);
    out[3..5].copy_from_slice(b", ");
    out[5..7].copy_from_slice(&two(u64::from(day)));
    out[7] = b' ';
    out[8..11].copy_from_slice(MONTH_NAMES[month as usize - 1]);
    out[11] = b' ';
    out[12..14].copy_from_slice(&two(year / 100));
    out[14..16].copy_from_slice(&two(year % 100));
    out[16] = b' ';
    out[17..19].copy_from_slice(&two(secs / 3600));
    out[19] = b':';
    out[20..22].copy_from_slice(&two(secs / 60 % 60));
    out[22] = b':';
    out[23..25].copy_from_slice(&two(secs % 60));
    out[25..29].copy_from_slice(b" GMT");
}

/// Parses an HTTP-date (RFC 9110 §5.6.7) into Unix seconds: IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), and the obsolete RFC 850 (`Sunday, 06-Nov-94 08:49:37
/// GMT`) and asctime (`Sun Nov  6 08:49:37 1994`) forms that recipients must still accept.
///
/// `None` for anything else, including dates before 1970 (a server then ignores the
/// condition, which is the safe choice). The weekday name must be valid but need not match
/// the date. RFC 850 two-digit years are read as 1970–2069: without a clock, the "50 years in
/// the future" rule of RFC 9110 cannot be applied, and this window is right until 2069.
pub fn parse_http_date(v: &[u8]) -> Option<u64> {
    let v = trim_ows(v);
    let (year, month, day, time) = if v.len() == 29 && v[3] == b',' {
        // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
        day_name(&v[..3])?;
        expect(&v[3..5], b", ")?;
        let day = num(&v[5..7])?;
        expect(&v[7..8], b" ")?;
        let month = month_name(&v[8..11])?;
        expect(&v[11..12], b" ")?;
        let year = num(&v[12..16])?;
        expect(&v[16..17], b" ")?;
        let time = &v[17..25];
        expect(&v[25..], b" GMT")?;
        (year, month, day, time)
    } else if v.len() == 24 && v[3] == b' ' {
        // asctime: "Sun Nov  6 08:49:37 1994" (day padded with a space)
        day_name(&v[..3])?;
        let month = month_name(&v[4..7])?;
        expect(&v[7..8], b" ")?;
        let day = match v[8] {
            b' ' => num(&v[9..10])?,
            _ => num(&v[8..10])?,
        };
        expect(&v[10..11], b" ")?;
        let time = &v[11..19];
        expect(&v[19..20], b" ")?;
        let year = num(&v[20..24])?;
        (year, month, day, time)
    } else {
        // RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT"
        let comma = v.iter().position(|b| *b == b',')?;
        if !LONG_DAY_NAMES
            .iter()
            .any(|n| n.eq_ignore_ascii_case(&v[..comma]))
        {
            return None;
        }
        let rest = &v[comma..];
        if rest.len() != 24 {
            return None;
        }
        expect(&rest[..2], b", ")?;
        let day = num(&rest[2..4])?;
        expect(&rest[4..5], b"-")?;
        let month = month_name(&rest[5..8])?;
        expect(&rest[8..9], b"-")?;
        let yy = num(&rest[9..11])?;
        expect(&rest[11..12], b" ")?;
        let time = &rest[12..20];
        expect(&rest[20..], b" GMT")?;
        let year = if yy < 70 { 2000 + yy } else { 1900 + yy };
        (year, month, day, time)
    };
    expect(&time[2..3], b":")?;
    expect(&time[5..6], b":")?;
    let (hour, minute, second) = (num(&time[..2])?, num(&time[3..5])?, num(&time[6..8])?);
    // Second 60 is a leap second, which the grammar allows and Unix time folds into the next.
    if year < 1970 || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let month = month as u32;
    if day == 0 || day > u64::from(days_in_month(year, month)) {
        return None;
    }
    let days = days_from_civil(year, month, day as u32);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

fn expect(got: &[u8], want: &[u8]) -> Option<()> {
    (got == want).then_some(())
}

fn num(v: &[u8]) -> Option<u64> {
    v.iter().try_fold(0u64, |n, d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

fn day_name(v: &[u8]) -> Option<()> {
    DAY_NAMES.iter().any(|n| &n[..] == v).then_some(())
}

/// Month 1..=12 from its three-letter name.
fn month_name(v: &[u8]) -> Option<u64> {
    MONTH_NAMES
        .iter()
        .position(|n| &n[..] == v)
        .map(|i| i as u64 + 1)
}

/// True when a 304 is the answer: `If-Modified-Since` is present and parses, and the file
/// (its mtime truncated to whole seconds, as Last-Modified shows it) is not newer than it.
/// An unparsable date is ignored (RFC 9110 §13.1.3), so the full response is sent.
pub fn not_modified(if_modified_since: Option<&[u8]>, mtime_secs: u64) -> bool {
    if_modified_since
        .and_then(parse_http_date)
        .is_some_and(|since| mtime_secs <= since)
}

/// The media type for a path, by its extension (case-insensitive); text types say UTF-8.
/// Unknown or missing extensions are `application/octet-stream`, so browsers do not sniff.
pub fn content_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    let Some((_, ext)) = name.rsplit_once('.') else {
        return "application/octet-stream";
    };
    let mut lower = [0u8; 5];
    if ext.len() > lower.len() {
        return "application/octet-stream";
    }
    for (l, b) in lower.iter_mut().zip(ext.bytes()) {
        *l = b.to_ascii_lowercase();
    }
    match &lower[..ext.len()] {
        b"html" | b"htm" => "text/html; charset=utf-8",
        b"css" => "text/css; charset=utf-8",
        b"js" | b"mjs" => "text/javascript; charset=utf-8",
        b"json" => "application/json",
        b"txt" => "text/plain; charset=utf-8",
        b"md" => "text/markdown; charset=utf-8",
        b"xml" => "application/xml",
        b"svg" => "image/svg+xml",
        b"png" => "image/png",
        b"jpg" | b"jpeg" => "image/jpeg",
        b"gif" => "image/gif",
        b"webp" => "image/webp",
        b"ico" => "image/x-icon",
        b"wasm" => "application/wasm",
        b"pdf" => "application/pdf",
        b"zip" => "application/zip",
        b"gz" => "application/gzip",
        b"tar" => "application/x-tar",
        b"mp4" => "video/mp4",
        b"webm" => "video/webm",
        b"mp3" => "audio/mpeg",
        b"woff" => "font/woff",
        b"woff2" => "font/woff2",
        _ => "application/octet-stream",
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
    /// `Content-Type`, usually from [`content_type`].
    pub content_type: Option<&'a str>,
    /// `Last-Modified`, in Unix seconds.
    pub last_modified: Option<u64>,
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

    fn num(&mut self, mut n: u64) -> Result<(), HeadTooSmall> {
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
        self.put(&digits[i..])
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
    use proptest::prelude::*;
    use std::{format, string::String, vec::Vec};

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

    fn norm(target: &str) -> Result<String, HttpError> {
        let mut out = [0u8; 256];
        normalize_path(target.as_bytes(), &mut out).map(String::from)
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

    #[test]
    fn too_many_headers_is_431() {
        let mut raw = Vec::from(&b"GET / HTTP/1.1\r\nHost: x\r\n"[..]);
        for i in 0..MAX_HEADERS {
            raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        assert_eq!(status_of(&raw), 431);
        assert_eq!(serve(&raw), Err(HttpError::TooManyHeaders));
    }

    #[test]
    fn other_versions_are_505() {
        assert_eq!(status_of(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"), 505);
        assert_eq!(status_of(b"GET / HTTP/1.2\r\nHost: x\r\n\r\n"), 505);
        assert_eq!(status_of(b"GET / HTTP/0.9\r\n\r\n"), 505);
    }

    #[test]
    fn duplicate_range_is_ignored() {
        let r = serve(b"GET / HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\nRange: bytes=2-3\r\n\r\n")
            .unwrap();
        assert_eq!(r.range, None);
    }

    // --- paths ---

    #[test]
    fn normalize_basics() {
        assert_eq!(norm("/").unwrap(), "");
        assert_eq!(norm("/index.html").unwrap(), "index.html");
        assert_eq!(norm("/a/b/").unwrap(), "a/b");
        assert_eq!(norm("/a//./b/.").unwrap(), "a/b");
        assert_eq!(norm("/a%20b?x=/../y#..").unwrap(), "a b");
        assert_eq!(norm("/caf%C3%A9").unwrap(), "café");
        assert_eq!(norm("/a%2Fb").unwrap(), "a/b", "an encoded slash separates");
        assert_eq!(
            norm("/a\\b").unwrap(),
            "a\\b",
            "backslash is a filename byte"
        );
        assert_eq!(norm("/...").unwrap(), "...", "three dots is a name");
        assert_eq!(norm("/.hidden/..x").unwrap(), ".hidden/..x");
        assert_eq!(norm("http://example.com/a/b").unwrap(), "a/b");
        assert_eq!(norm("HTTP://example.com").unwrap(), "");
    }

    #[test]
    fn escape_attempts_are_refused() {
        for t in [
            "/../etc/passwd",
            "/%2e%2e/x",
            "/a/%2E%2E/%2e%2e/b",
            "/a/..",
            "/a/..%2Fb",
            "/a%2F..%2F..%2Fetc",
            "/.%2e/x",
        ] {
            assert_eq!(norm(t), Err(HttpError::DotDotSegment), "{t}");
        }
        assert_eq!(HttpError::DotDotSegment.status(), Status::BadRequest);
        // Relative to the root, so harmless.
        assert_eq!(norm("//etc/passwd").unwrap(), "etc/passwd");
    }

    #[test]
    fn bad_bytes_are_refused() {
        assert_eq!(norm("/a%00b"), Err(HttpError::ControlByteInPath));
        assert_eq!(norm("/a%0a"), Err(HttpError::ControlByteInPath));
        assert_eq!(norm("/a%7F"), Err(HttpError::ControlByteInPath));
        assert_eq!(norm("/%zz"), Err(HttpError::BadPercentEncoding));
        assert_eq!(norm("/%4"), Err(HttpError::BadPercentEncoding));
        assert_eq!(norm("/%"), Err(HttpError::BadPercentEncoding));
        assert_eq!(norm("/%ff%fe"), Err(HttpError::PathNotUtf8));
        assert_eq!(norm("a/b"), Err(HttpError::BadTarget));
        assert_eq!(norm("*"), Err(HttpError::BadTarget));
        let mut small = [0u8; 4];
        assert_eq!(
            normalize_path(b"/abcdef", &mut small),
            Err(HttpError::TargetTooLong)
        );
    }

    #[test]
    fn directory_requests() {
        assert!(is_directory_request(b"/"));
        assert!(is_directory_request(b"/docs/?x"));
        assert!(!is_directory_request(b"/docs"));
        assert!(!is_directory_request(b"/docs?a/"));
        assert!(is_directory_request(b"http://h"));
    }

    proptest! {
        /// Whatever the target, a normalised path is relative, has no empty, `.` or `..`
        /// segment, and has no NUL.
        #[test]
        fn normalized_paths_stay_beneath(target in "/[a-z./%0-9A-F\\\\]{0,40}") {
            let mut out = [0u8; 128];
            if let Ok(p) = normalize_path(target.as_bytes(), &mut out) {
                prop_assert!(!p.starts_with('/'));
                prop_assert!(!p.contains('\0'));
                if !p.is_empty() {
                    for seg in p.split('/') {
                        prop_assert!(!seg.is_empty() && seg != "." && seg != "..", "{:?} -> {:?}", target, p);
                    }
                }
            }
        }
    }

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

    // --- dates ---

    #[test]
    fn date_vectors() {
        let cases: [(u64, &str); 6] = [
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (1_700_000_000, "Tue, 14 Nov 2023 22:13:20 GMT"),
            (4_107_542_400, "Mon, 01 Mar 2100 00:00:00 GMT"),
            (MAX_HTTP_DATE, "Fri, 31 Dec 9999 23:59:59 GMT"),
        ];
        for (secs, text) in cases {
            let mut out = [0u8; 29];
            format_http_date(secs, &mut out);
            assert_eq!(core::str::from_utf8(&out).unwrap(), text);
            assert_eq!(parse_http_date(text.as_bytes()), Some(secs), "{text}");
        }
        let mut out = [0u8; 29];
        format_http_date(u64::MAX, &mut out);
        assert_eq!(&out, b"Fri, 31 Dec 9999 23:59:59 GMT", "clamped");
    }

    #[test]
    fn obsolete_date_forms() {
        assert_eq!(
            parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date(b"Sun Nov  6 08:49:37 1994"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date(b"Tue Nov 14 22:13:20 2023"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn bad_dates() {
        for d in [
            &b""[..],
            b"yesterday",
            b"Sun, 06 Nov 1994 08:49:37 UTC",
            b"Sun, 31 Nov 1994 08:49:37 GMT",
            b"Sun, 29 Feb 1900 08:49:37 GMT",
            b"Sun, 06 Nov 1994 24:00:00 GMT",
            b"Sun, 06 Foo 1994 08:49:37 GMT",
            b"Xyz, 06 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1969 08:49:37 GMT",
            b"Sun, 0x Nov 1994 08:49:37 GMT",
            b"Funday, 06-Nov-94 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(d), None, "{:?}", core::str::from_utf8(d));
        }
    }

    #[test]
    fn if_modified_since() {
        let ims = Some(&b"Sun, 06 Nov 1994 08:49:37 GMT"[..]);
        assert!(not_modified(ims, 784_111_777));
        assert!(not_modified(ims, 784_111_000));
        assert!(!not_modified(ims, 784_111_778));
        assert!(!not_modified(None, 0));
        assert!(!not_modified(Some(b"garbage"), 0), "unparsable is ignored");
        assert_eq!(Status::NotModified.code(), 304);
    }

    proptest! {
        #[test]
        fn date_round_trip(secs in 0u64..=MAX_HTTP_DATE) {
            let mut out = [0u8; 29];
            format_http_date(secs, &mut out);
            prop_assert_eq!(parse_http_date(&out), Some(secs));
        }

        #[test]
        fn parse_http_date_never_panics(v in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = parse_http_date(&v);
        }
    }

    // --- content types ---

    #[test]
    fn content_types() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("a/B.HTM"), "text/html; charset=utf-8");
        assert_eq!(content_type("app.mjs"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("x.woff2"), "font/woff2");
        assert_eq!(content_type("x.tar.gz"), "application/gzip");
        assert_eq!(content_type("photo.JPEG"), "image/jpeg");
        assert_eq!(content_type("Makefile"), "application/octet-stream");
        assert_eq!(content_type("dir.d/file"), "application/octet-stream");
        assert_eq!(content_type("x.unknownext"), "application/octet-stream");
        assert_eq!(content_type(""), "application/octet-stream");
    }

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

        #[test]
        fn parse_request_never_panics(v in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Parsed::Complete { head_len, .. }) = parse_request(&v, &limits()) {
                prop_assert!(head_len <= v.len());
            }
        }
    }
}
