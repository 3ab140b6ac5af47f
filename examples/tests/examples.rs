//! Runs each example as a user would and checks what it prints.

use std::process::Command;

#[test]
fn read_file_prints_the_size_and_checksum_std_computes() {
    let dir = std::env::temp_dir().join(format!("ringwork-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("data.bin");
    // Not a multiple of the example's chunk, so the last read is short.
    let bytes: Vec<u8> = (0..300_001u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &bytes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_read-file"))
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let sum = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("300001 bytes, fnv1a64 {sum:016x}")
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn read_file_names_what_went_wrong() {
    let out = Command::new(env!("CARGO_BIN_EXE_read-file"))
        .arg("/nonexistent/ringwork")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("read-file: "));
}
