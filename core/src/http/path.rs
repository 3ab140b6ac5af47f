//! Request targets to paths: [`normalize_path`] turns a target into a relative path that
//! cannot climb out of the served root, [`is_directory_request`] tells a target that names a
//! directory. It does not touch files: the server's openat2 `RESOLVE_BENEATH` is the real
//! guard, this is defence in depth.

use super::HttpError;

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
/// included), or with a `.` segment (`/docs/.`, `%2e` too), which [`normalize_path`] drops
/// but which still says "this directory". A target like `/docs` may still turn out to be a
/// directory when opened; the server then decides between a redirect to `/docs/` and a 404.
/// A regular file asked for as a directory (`/file.txt/`) is not found, as nginx answers.
pub fn is_directory_request(target: &[u8]) -> bool {
    path_part(target).is_some_and(|p| {
        let last = p.rsplit(|&b| b == b'/').next().unwrap_or(p);
        last.is_empty() || last == b"." || last.eq_ignore_ascii_case(b"%2e")
    })
}

/// The `Location` of the 301 that adds the trailing slash to a directory requested without
/// one: the target's own path (an absolute-form `http://host` prefix dropped), `/`, then its
/// query; the fragment is dropped. Bytes go out as the client sent them (its percent-encoding
/// is kept, not re-encoded from the normalised path) except bytes outside visible ASCII and
/// `\`, which are percent-encoded: so no CR, LF or space can reach the header, whatever let
/// the target through. A leading run of slashes becomes one, so that `//host/dir` cannot turn
/// into a scheme-relative redirect to another host (`\` is encoded for the same reason:
/// browsers read `/\host` as `//host`).
///
/// `None` when the target is not a path or `out` is too small; three bytes per target byte
/// and two more always suffice.
pub fn slash_redirect_location<'o>(target: &[u8], out: &'o mut [u8]) -> Option<&'o str> {
    let path = path_part(target)?;
    // The query: from a `?` that comes before any `#`, up to the `#` (the path ends where
    // path_part cut it, but may not lie in `target`: an absolute-form target without a path
    // means `/`).
    let end = target
        .iter()
        .position(|b| *b == b'?' || *b == b'#')
        .unwrap_or(target.len());
    let query = match target.get(end) {
        Some(b'?') => {
            let rest = &target[end..];
            &rest[..rest.iter().position(|b| *b == b'#').unwrap_or(rest.len())]
        }
        _ => &[][..],
    };
    let mut path = path;
    while let [b'/', rest @ ..] = path {
        path = rest;
    }
    let mut len = 0;
    let mut put = |b: u8| -> Option<()> {
        *out.get_mut(len)? = b;
        len += 1;
        Some(())
    };
    put(b'/')?;
    // The root, or a path that has its slash already, gets none added.
    let slash: &[u8] = match path.last() {
        None | Some(b'/') => b"",
        Some(_) => b"/",
    };
    for &b in path.iter().chain(slash).chain(query) {
        if b <= b' ' || b >= 0x7f || b == b'\\' {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            put(b'%')?;
            put(HEX[usize::from(b >> 4)])?;
            put(HEX[usize::from(b & 15)])?;
        } else {
            put(b)?;
        }
    }
    // Only visible ASCII was written.
    core::str::from_utf8(&out[..len]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Status;
    use proptest::prelude::*;
    use std::string::String;

    fn norm(target: &str) -> Result<String, HttpError> {
        let mut out = [0u8; 256];
        normalize_path(target.as_bytes(), &mut out).map(String::from)
    }

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
        assert!(
            is_directory_request(b"/f.txt/."),
            "a dot segment names the directory"
        );
        assert!(is_directory_request(b"/d/%2E?q"));
        assert!(!is_directory_request(b"/a.b"));
        assert!(!is_directory_request(b"/d/.hidden"));
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

    fn location(target: &[u8]) -> Option<String> {
        let mut out = [0u8; 256];
        slash_redirect_location(target, &mut out).map(String::from)
    }

    #[test]
    fn slash_redirects_keep_the_query_and_the_encoding() {
        assert_eq!(location(b"/sub").as_deref(), Some("/sub/"));
        assert_eq!(location(b"/a/b?x=1&y").as_deref(), Some("/a/b/?x=1&y"));
        assert_eq!(location(b"/a%20b?q#frag").as_deref(), Some("/a%20b/?q"));
        assert_eq!(location(b"/a#f?g").as_deref(), Some("/a/"));
        assert_eq!(location(b"http://h.example/d?q").as_deref(), Some("/d/?q"));
        // Absolute-form without a path is the root (found by fuzzing: the path is then no
        // slice of the target).
        assert_eq!(location(b"http://h.example").as_deref(), Some("/"));
        assert_eq!(location(b"HTTP://h?q#f").as_deref(), Some("/?q"));
        assert_eq!(location(b"/caf\xc3\xa9").as_deref(), Some("/caf%C3%A9/"));
        assert_eq!(location(b"/d/."), Some(String::from("/d/./")));
        assert_eq!(location(b"*"), None);
        assert_eq!(location(b"d"), None);
        let mut small = [0u8; 5];
        assert_eq!(slash_redirect_location(b"/abcd", &mut small), None);
        assert_eq!(slash_redirect_location(b"/abc", &mut small), Some("/abc/"));
    }

    #[test]
    fn slash_redirects_stay_on_this_host() {
        assert_eq!(
            location(b"//evil.example").as_deref(),
            Some("/evil.example/")
        );
        assert_eq!(
            location(b"///evil.example/x").as_deref(),
            Some("/evil.example/x/")
        );
        assert_eq!(
            location(b"/\\evil.example").as_deref(),
            Some("/%5Cevil.example/")
        );
        assert_eq!(
            location(b"/a\r\nSet-Cookie: x").as_deref(),
            Some("/a%0D%0ASet-Cookie:%20x/")
        );
    }

    proptest! {
        /// Whatever the target, the Location is visible ASCII starting with exactly one `/`,
        /// and it names a directory (so following it cannot redirect again).
        #[test]
        fn slash_redirects_are_safe_header_values(
            target in proptest::collection::vec(any::<u8>(), 0..60),
            absolute in any::<bool>(),
            slash in any::<bool>(),
        ) {
            // Origin-form, or absolute-form with or without a path.
            let mut t = if absolute { b"http://h".to_vec() } else { std::vec::Vec::new() };
            if !absolute || slash {
                t.push(b'/');
            }
            t.extend_from_slice(&target);
            let mut out = [0u8; 200];
            let loc = slash_redirect_location(&t, &mut out).expect("3n+2 bytes suffice");
            prop_assert!(loc.bytes().all(|b| b.is_ascii_graphic() && b != b'\\'), "{:?}", loc);
            prop_assert!(loc.starts_with('/') && !loc.starts_with("//"), "{:?}", loc);
            prop_assert!(is_directory_request(loc.as_bytes()), "{:?}", loc);
        }
    }
}
