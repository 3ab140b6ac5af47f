//! Arbitrary bytes as an HTTP request head: parsing never panics, a complete request's head
//! length lies within the input, every error maps to a 4xx/5xx status, and a response head
//! for whatever status results can be written. The trailing-slash redirect's Location for a
//! parsed target is visible ASCII (no CR/LF can reach the head) and stays on this server.
//! If-None-Match and If-Range values are evaluated against an ETag: an If-Range only holds
//! for exactly that tag or the matching date. Accept-Encoding values are read into codings
//! (never one twice).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringwork_core::http::{
    error_response, if_none_match_matches, if_range_holds, is_directory_request, normalize_path,
    parse_http_date, parse_request, preferred_codings, redirect_response, slash_redirect_location,
    ETag, Limits, Parsed,
};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut out = [0u8; 1024];
    match parse_request(data, &limits) {
        Ok(Parsed::Partial) => assert!(data.len() <= limits.max_head_bytes),
        Ok(Parsed::Complete { request, head_len }) => {
            assert!(head_len <= data.len());
            assert!(head_len <= limits.max_head_bytes);
            let mut path = [0u8; 4096];
            if let Ok(p) = normalize_path(request.target.as_bytes(), &mut path) {
                assert!(!p.starts_with('/'));
                assert!(!p.split('/').any(|seg| seg == ".."));
            }
            let target = request.target.as_bytes();
            let mut location = [0u8; 3 * 2048 + 2];
            if let Some(loc) = slash_redirect_location(target, &mut location) {
                assert!(loc.bytes().all(|b| b.is_ascii_graphic() && b != b'\\'));
                assert!(loc.starts_with('/') && !loc.starts_with("//"));
                assert!(is_directory_request(loc.as_bytes()));
                let mut head = [0u8; 8192];
                redirect_response(loc, true, 0, &mut head).expect("a redirect fits 8 KiB");
            }
            let mtime = data.len() as u64 * 7919;
            let etag = ETag::new(mtime, data.len() as u64);
            if let Some(v) = request.if_none_match {
                let _ = if_none_match_matches(v, &etag);
            }
            if let Some(v) = request.if_range {
                if if_range_holds(v, &etag, mtime) {
                    let v = v.trim_ascii();
                    assert!(v == etag.as_str().as_bytes() || parse_http_date(v) == Some(mtime));
                }
            }
            if let Some(v) = request.accept_encoding {
                let c = preferred_codings(v);
                assert!(c.get(0).is_none() || c.get(0) != c.get(1));
            }
            let _ = request.check_servable();
        }
        Err(e) => {
            let status = e.status();
            assert!(status.code() >= 400, "{e:?} maps to {}", status.code());
            let len =
                error_response(status, false, 0, &mut out).expect("error response fits 1 KiB");
            assert!(len.head <= len.total && len.total <= out.len());
        }
    }
});
