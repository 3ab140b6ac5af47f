//! Arbitrary request targets through path normalisation: the result is always relative, has
//! no `..` or `.` segment, no empty segment, no NUL or control byte, and normalising it again
//! (percent-encoded where needed) changes nothing: confinement is idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringwork_core::http::normalize_path;

fuzz_target!(|target: &[u8]| {
    let mut out = [0u8; 8192];
    let Ok(path) = normalize_path(target, &mut out) else {
        return;
    };
    let path = path.to_owned();
    assert!(!path.starts_with('/'), "absolute: {path:?}");
    for seg in path.split('/') {
        assert!(seg != ".." && seg != ".", "dot segment in {path:?}");
        if !path.is_empty() {
            assert!(!seg.is_empty(), "empty segment in {path:?}");
        }
    }
    assert!(
        !path.bytes().any(|b| b < 0x20 || b == 0x7f),
        "control byte in {path:?}"
    );
    let mut again = [0u8; 8192];
    // Re-encode what decoding produced and a target gives meaning to ('%', '?', '#').
    let reencoded = path
        .replace('%', "%25")
        .replace('?', "%3F")
        .replace('#', "%23");
    let slash = format!("/{reencoded}");
    let twice =
        normalize_path(slash.as_bytes(), &mut again).expect("a normalised path stays valid");
    assert_eq!(twice, path);
});
