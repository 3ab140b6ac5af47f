//! Response rules an operator sets: headers added to file responses by path (`--header`),
//! caching lifetimes (`--expires`: `Cache-Control: max-age` and `Expires`), error pages
//! (`--error-page 404=/404.html`) and a fallback for paths that name nothing (`--fallback
//! /index.html`, a single-page application's `try_files $uri /index.html`).
//!
//! A GLOB is matched against the file's path from the root, as the request named it after
//! normalisation (`/assets/app.js`; a directory's index is `/docs/index.html`; a
//! precompressed sibling matches as its file): `*` matches any run of characters, `/`
//! included, `?` any one character, everything else itself. So `*.js` is every JavaScript
//! file, `/assets/*` everything under `/assets/`, `*` everything.
//!
//! As nginx's `add_header` and `expires` without `always`, headers and lifetimes go on file
//! responses (200, 206, 304), not on errors or redirects. Every matching `--header` adds its
//! line, in the order given; of the matching `--expires`, the last given wins. Writing them
//! allocates nothing ([`Rules::write_headers`]).
//!
//! What it deliberately does not do: regular expressions, conditions on the request, or
//! headers that frame the response (`Content-Length`, `Transfer-Encoding`, `Connection`,
//! `Content-Range` are refused: the server writes those).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use super::format_http_date;
use super::response::{HeadTooSmall, Status};

/// Bytes of an HTTP-date (`Sun, 06 Nov 1994 08:49:37 GMT`).
const HTTP_DATE_LEN: usize = 29;

/// What is wrong with a rule.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RuleError {
    /// `--header` wants `GLOB: Name: value`.
    HeaderShape,
    /// A header name must be a token (letters, digits, `!#$%&'*+-.^_`|~`).
    HeaderName,
    /// A header value must be visible ASCII, spaces or tabs (no CR, LF or control bytes).
    HeaderValue,
    /// A header the server writes itself (framing).
    ReservedHeader,
    /// `--expires` wants `GLOB=DURATION`.
    ExpiresShape,
    /// A duration is a number with an optional unit: s, m, h, d, w, y (`30d`, `3600`).
    Duration,
    /// `--error-page` wants `CODE=/path`, CODE one of 403, 404.
    ErrorPage,
    /// A page or fallback path starts with `/` and names no `..`.
    PagePath,
    /// An empty glob.
    Glob,
    /// A rules file line starts with none of `header`, `expires`, `error-page`, `fallback`.
    Directive,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuleError::HeaderShape => "a header rule is `GLOB: Name: value`",
            RuleError::HeaderName => "a header name is a token (letters, digits, !#$%&'*+-.^_`|~)",
            RuleError::HeaderValue => "a header value is visible ASCII, spaces and tabs",
            RuleError::ReservedHeader => {
                "Content-Length, Transfer-Encoding, Connection and Content-Range are the server's"
            }
            RuleError::ExpiresShape => "an expires rule is `GLOB=DURATION` (`*.css=7d`)",
            RuleError::Duration => {
                "a duration is a number with an optional unit s, m, h, d, w or y (`30d`, `3600`)"
            }
            RuleError::ErrorPage => "an error page is `CODE=/path`, CODE 403 or 404",
            RuleError::PagePath => "a page path starts with `/` and has no `..` segment",
            RuleError::Glob => "an empty glob (`*` matches every path)",
            RuleError::Directive => {
                "a rules line is `header GLOB: Name: value`, `expires GLOB=DURATION`, \
                 `error-page CODE=/path` or `fallback /path` (`#` starts a comment)"
            }
        })
    }
}

/// The statuses an error page may be given for: what a lookup answers.
const PAGE_STATUSES: [Status; 2] = [Status::Forbidden, Status::NotFound];

/// Headers the server writes itself, to frame or describe the body.
const RESERVED: [&str; 4] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "content-range",
];

#[derive(Clone, PartialEq, Eq, Debug)]
struct HeaderRule {
    glob: String,
    /// `Name: value\r\n`, ready to copy.
    line: String,
}

#[derive(Clone, PartialEq, Eq, Debug)]
struct ExpiresRule {
    glob: String,
    secs: u64,
}

/// A server's response rules; see the module docs. Built once (from flags and a rules file),
/// shared by every connection, consulted per response without allocating.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Rules {
    headers: Vec<HeaderRule>,
    expires: Vec<ExpiresRule>,
    error_pages: Vec<(Status, String)>,
    fallback: Option<String>,
}

impl Rules {
    /// No rule at all: responses are as without rules.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
            && self.expires.is_empty()
            && self.error_pages.is_empty()
            && self.fallback.is_none()
    }

    /// Adds `GLOB: Name: value` (`--header`).
    pub fn add_header(&mut self, spec: &str) -> Result<(), RuleError> {
        let (glob, header) = spec.split_once(':').ok_or(RuleError::HeaderShape)?;
        let (name, value) = header.split_once(':').ok_or(RuleError::HeaderShape)?;
        let (glob, name, value) = (glob.trim(), name.trim(), value.trim());
        if glob.is_empty() {
            return Err(RuleError::Glob);
        }
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(RuleError::HeaderName);
        }
        if !value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        {
            return Err(RuleError::HeaderValue);
        }
        if RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r)) {
            return Err(RuleError::ReservedHeader);
        }
        let mut line = String::with_capacity(name.len() + value.len() + 4);
        line.push_str(name);
        line.push_str(": ");
        line.push_str(value);
        line.push_str("\r\n");
        self.headers.push(HeaderRule {
            glob: glob.into(),
            line,
        });
        Ok(())
    }

    /// Adds `GLOB=DURATION` (`--expires`).
    pub fn add_expires(&mut self, spec: &str) -> Result<(), RuleError> {
        let (glob, duration) = spec.rsplit_once('=').ok_or(RuleError::ExpiresShape)?;
        let glob = glob.trim();
        if glob.is_empty() {
            return Err(RuleError::Glob);
        }
        let secs = parse_duration(duration.trim())?;
        self.expires.push(ExpiresRule {
            glob: glob.into(),
            secs,
        });
        Ok(())
    }

    /// Adds `CODE=/path` (`--error-page`); a later page for the same code replaces it.
    pub fn add_error_page(&mut self, spec: &str) -> Result<(), RuleError> {
        let (code, path) = spec.split_once('=').ok_or(RuleError::ErrorPage)?;
        let status = PAGE_STATUSES
            .into_iter()
            .find(|s| code.trim().parse() == Ok(s.code()))
            .ok_or(RuleError::ErrorPage)?;
        let path = page_path(path.trim())?;
        self.error_pages.retain(|(s, _)| *s != status);
        self.error_pages.push((status, path));
        Ok(())
    }

    /// Sets `/path` (`--fallback`), served with 200 for a path that names nothing.
    pub fn set_fallback(&mut self, path: &str) -> Result<(), RuleError> {
        self.fallback = Some(page_path(path.trim())?);
        Ok(())
    }

    /// Adds the rules of a rules file: one per line, `header GLOB: Name: value`,
    /// `expires GLOB=DURATION`, `error-page CODE=/path` or `fallback /path`; blank lines and
    /// lines starting with `#` are skipped. On an error, the line number (from 1) and what is
    /// wrong, and nothing is added.
    pub fn add_file(&mut self, text: &str) -> Result<(), (usize, RuleError)> {
        let mut next = self.clone();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (directive, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let added = match directive {
                "header" => next.add_header(rest),
                "expires" => next.add_expires(rest),
                "error-page" => next.add_error_page(rest),
                "fallback" => next.set_fallback(rest),
                _ => Err(RuleError::Directive),
            };
            added.map_err(|e| (i + 1, e))?;
        }
        *self = next;
        Ok(())
    }

    /// The page for `status`, relative to the root (no leading `/`).
    pub fn error_page(&self, status: Status) -> Option<&str> {
        self.error_pages
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, p)| p.as_str())
    }

    /// The fallback file, relative to the root (no leading `/`).
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// The most bytes [`Rules::write_headers`] writes for any path.
    pub fn max_header_bytes(&self) -> usize {
        let expires = if self.expires.is_empty() {
            0
        } else {
            "Cache-Control: max-age=\r\nExpires: \r\n".len() + 20 + HTTP_DATE_LEN
        };
        self.headers.iter().map(|h| h.line.len()).sum::<usize>() + expires
    }

    /// Writes the header lines (each ending in CRLF) the rules give `path` (relative to the
    /// root, as [`HttpConn::path`](crate::httpconn::HttpConn::path) names it) at `now` (Unix
    /// seconds) into `out`; returns their length. `out` of [`Rules::max_header_bytes`] is
    /// always enough.
    pub fn write_headers(
        &self,
        path: &str,
        now: u64,
        out: &mut [u8],
    ) -> Result<usize, HeadTooSmall> {
        let mut len = 0;
        let mut put = |bytes: &[u8]| -> Result<(), HeadTooSmall> {
            out.get_mut(len..len + bytes.len())
                .ok_or(HeadTooSmall)?
                .copy_from_slice(bytes);
            len += bytes.len();
            Ok(())
        };
        for rule in self.headers.iter().filter(|r| glob_matches(&r.glob, path)) {
            put(rule.line.as_bytes())?;
        }
        if let Some(rule) = self
            .expires
            .iter()
            .rev()
            .find(|r| glob_matches(&r.glob, path))
        {
            put(b"Cache-Control: max-age=")?;
            let mut digits = [0u8; 20];
            put(decimal(rule.secs, &mut digits))?;
            put(b"\r\nExpires: ")?;
            let mut date = [0u8; HTTP_DATE_LEN];
            format_http_date(now.saturating_add(rule.secs), &mut date);
            put(&date)?;
            put(b"\r\n")?;
        }
        Ok(len)
    }
}

fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &digits[i..];
        }
    }
}

/// `/404.html` → `404.html`, refusing what is not a plain absolute path.
fn page_path(path: &str) -> Result<String, RuleError> {
    let rel = path.strip_prefix('/').ok_or(RuleError::PagePath)?;
    if rel.is_empty()
        || rel.ends_with('/')
        || rel
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        || rel.bytes().any(|b| b < b' ' || b == 0x7f)
    {
        return Err(RuleError::PagePath);
    }
    Ok(rel.into())
}

/// `30`, `30s`, `10m`, `2h`, `7d`, `4w`, `1y` (365 days) in seconds.
fn parse_duration(s: &str) -> Result<u64, RuleError> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = digits.parse().map_err(|_| RuleError::Duration)?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "y" => 365 * 86_400,
        _ => return Err(RuleError::Duration),
    };
    n.checked_mul(scale).ok_or(RuleError::Duration)
}

/// Whether `glob` (see the module docs) matches `path`, which is relative to the root; a
/// glob's leading `/` stands for the root.
pub fn glob_matches(glob: &str, path: &str) -> bool {
    let glob = glob.as_bytes();
    let glob = glob.strip_prefix(b"/").unwrap_or(glob);
    let path = path.as_bytes();
    // The classic linear-time wildcard match: on a mismatch, go back to just after the last
    // `*` and let it take one more byte.
    let (mut g, mut p) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while p < path.len() {
        match glob.get(g) {
            Some(b'*') => {
                star = Some((g, p));
                g += 1;
            }
            Some(&c) if c == b'?' || c == path[p] => {
                g += 1;
                p += 1;
            }
            _ => match star {
                Some((sg, sp)) => {
                    g = sg + 1;
                    p = sp + 1;
                    star = Some((sg, sp + 1));
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_matches("*.js", "assets/app.js"));
        assert!(glob_matches("*.js", "app.js"));
        assert!(!glob_matches("*.js", "app.json"));
        assert!(glob_matches("/assets/*", "assets/a/b.css"));
        assert!(!glob_matches("/assets/*", "other/assets/a.css"));
        assert!(glob_matches("*", "index.html"));
        assert!(glob_matches("/index.html", "index.html"));
        assert!(glob_matches("/f?.txt", "f1.txt"));
        assert!(!glob_matches("/f?.txt", "f12.txt"));
        assert!(glob_matches("*a*b*c", "xaxbxbxc"));
        assert!(!glob_matches("*a*b*c", "xaxbxbx"));
    }

    #[test]
    fn headers_are_written_for_matching_paths_in_order() {
        let mut r = Rules::default();
        r.add_header("*: X-Frame-Options: DENY").unwrap();
        r.add_header("*.js: Access-Control-Allow-Origin: *")
            .unwrap();
        let mut out = [0u8; 256];
        let n = r.write_headers("app.js", 0, &mut out).unwrap();
        assert_eq!(
            &out[..n],
            b"X-Frame-Options: DENY\r\nAccess-Control-Allow-Origin: *\r\n"
        );
        let n = r.write_headers("a.css", 0, &mut out).unwrap();
        assert_eq!(&out[..n], b"X-Frame-Options: DENY\r\n");
        assert!(n <= r.max_header_bytes());
        assert_eq!(
            r.write_headers("app.js", 0, &mut out[..10]),
            Err(HeadTooSmall)
        );
    }

    #[test]
    fn the_last_matching_expires_wins() {
        let mut r = Rules::default();
        r.add_expires("*=1h").unwrap();
        r.add_expires("*.css=7d").unwrap();
        let mut out = [0u8; 256];
        let n = r.write_headers("a.css", 1_000_000_000, &mut out).unwrap();
        assert_eq!(
            core::str::from_utf8(&out[..n]).unwrap(),
            "Cache-Control: max-age=604800\r\nExpires: Sun, 16 Sep 2001 01:46:40 GMT\r\n"
        );
        let n = r.write_headers("a.html", 1_000_000_000, &mut out).unwrap();
        assert!(out[..n].starts_with(b"Cache-Control: max-age=3600\r\n"));
        assert!(n <= r.max_header_bytes());
    }

    #[test]
    fn bad_rules_are_refused() {
        let mut r = Rules::default();
        assert_eq!(r.add_header("*.js"), Err(RuleError::HeaderShape));
        assert_eq!(r.add_header(": X: y"), Err(RuleError::Glob));
        assert_eq!(r.add_header("*: X Y: z"), Err(RuleError::HeaderName));
        assert_eq!(r.add_header("*: X: a\rb"), Err(RuleError::HeaderValue));
        assert_eq!(
            r.add_header("*: content-length: 5"),
            Err(RuleError::ReservedHeader)
        );
        assert_eq!(r.add_expires("*.css"), Err(RuleError::ExpiresShape));
        assert_eq!(r.add_expires("*.css=7q"), Err(RuleError::Duration));
        assert_eq!(r.add_expires("*.css=d"), Err(RuleError::Duration));
        assert_eq!(r.add_error_page("500=/500.html"), Err(RuleError::ErrorPage));
        assert_eq!(r.add_error_page("404=404.html"), Err(RuleError::PagePath));
        assert_eq!(r.set_fallback("/../index.html"), Err(RuleError::PagePath));
        assert_eq!(r.set_fallback("/"), Err(RuleError::PagePath));
        assert!(r.is_empty());
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("2w"), Ok(14 * 86_400));
    }

    #[test]
    fn pages_and_fallback() {
        let mut r = Rules::default();
        r.add_error_page("404=/errors/404.html").unwrap();
        r.add_error_page("404 = /404.html").unwrap();
        r.set_fallback("/index.html").unwrap();
        assert_eq!(r.error_page(Status::NotFound), Some("404.html"));
        assert_eq!(r.error_page(Status::Forbidden), None);
        assert_eq!(r.fallback(), Some("index.html"));
    }

    #[test]
    fn a_rules_file_is_taken_whole_or_not_at_all() {
        let mut r = Rules::default();
        r.add_header("*: X-A: 1").unwrap();
        let text = "# site rules\n\nheader *.js: X-B: 2\nexpires *.css=1d\n\
                    error-page 404=/404.html\nfallback /index.html\n";
        r.add_file(text).unwrap();
        assert_eq!(r.headers.len(), 2);
        assert_eq!(r.fallback(), Some("index.html"));
        let before = r.clone();
        assert_eq!(
            r.add_file("header *: X-C: 3\nbogus line\n"),
            Err((2, RuleError::Directive))
        );
        assert_eq!(r, before, "nothing of a bad file is taken");
    }
}
