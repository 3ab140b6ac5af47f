//! Arbitrary bytes as an HTTP request head: parsing never panics, a complete request's head
//! length lies within the input, every error maps to a 4xx/5xx status, and a response head
//! for whatever status results can be written.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringwork_core::http::{error_response, normalize_path, parse_request, Limits, Parsed};

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
            let _ = request.check_servable();
        }
        Err(e) => {
            let status = e.status();
            assert!(status.code() >= 400, "{e:?} maps to {}", status.code());
            let len = error_response(status, false, 0, &mut out).expect("error response fits 1 KiB");
            assert!(len.head <= len.total && len.total <= out.len());
        }
    }
});
