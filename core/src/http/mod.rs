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
//!   the served root (and [`slash_redirect_location`] the safe `Location` of a directory
//!   requested without its slash), [`parse_range`] reads a single `Range: bytes=` spec, [`parse_http_date`]
//!   and [`format_http_date`] convert HTTP-dates without libc, and [`content_type`] maps file
//!   extensions to media types.
//! - [`ETag`] gives a file nginx's validator; [`client_is_fresh`] decides a 304 from
//!   `If-None-Match` and `If-Modified-Since` (the tag first, RFC 9110 §13.2.2), and
//!   [`if_range_holds`] whether a `Range` behind an `If-Range` is served.
//! - [`preferred_codings`] reads `Accept-Encoding` into the precompressed [`ContentCoding`]s
//!   (`FILE.br`, `FILE.gz`) the client takes, best first.
//! - [`ResponseHead::write`], [`error_response`] and [`redirect_response`] write responses into
//!   a caller's buffer.
//! - [`Rules`]: an operator's response rules (headers and lifetimes by path glob, error pages,
//!   a fallback file), parsed once and written per response without allocating.
//!
//! What it deliberately does not do: read the clock (the current time is an argument), touch
//! files (the server opens them with openat2 `RESOLVE_BENEATH`, which is the real guard against
//! escapes; the `..` check here is defence in depth), allocate (but [`Rules`] while it is
//! built), decode request bodies (a static
//! server has no use for them), evaluate `If-Match` or `If-Unmodified-Since` (they make
//! state-changing requests conditional; GET and HEAD change nothing), or send multi-range
//! responses (RFC 9110 lets a server ignore those and send the whole representation).

mod conditional;
mod date;
mod encoding;
mod mime;
mod path;
mod range;
mod request;
mod response;
mod rules;

pub use conditional::{client_is_fresh, if_none_match_matches, if_range_holds, ETag};
pub use date::{format_http_date, format_log_date, not_modified, parse_http_date, MAX_HTTP_DATE};
pub use encoding::{preferred_codings, Codings, ContentCoding};
pub use mime::content_type;
pub use path::{is_directory_request, normalize_path, slash_redirect_location};
pub use range::{parse_range, RangeResult};
pub use request::{parse_request, HttpError, Limits, Method, Parsed, Request, MAX_HEADERS};
pub use response::{
    error_response, redirect_response, ContentRange, Decimal, ErrorResponseLen, HeadTooSmall,
    ResponseHead, Status, ALLOW,
};
pub use rules::{glob_matches, RuleError, Rules};

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
