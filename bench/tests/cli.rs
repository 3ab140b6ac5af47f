//! The ringwork-bench binary's command line (this test also makes `cargo test --workspace`
//! build the binary for the end-to-end suite).

use std::process::Command;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringwork-bench"))
}

#[test]
fn help_lists_every_command() {
    let out = bench().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["compare", "echo", "fileread"] {
        assert!(text.contains(cmd), "--help lacks {cmd}: {text}");
    }
}

#[test]
fn bad_sizes_are_refused_with_a_message() {
    let out = bench().args(["fileread", "--bs", "4x"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown size suffix"));
}

#[test]
fn fileread_runs_every_engine_on_a_small_file() {
    let dir = std::env::temp_dir().join(format!("ringwork-bench-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("data");
    let json = dir.join("out.json");
    let out = bench()
        .args([
            "fileread",
            "--size",
            "1M",
            "--qd",
            "4",
            "--duration",
            "1",
            "--warm",
        ])
        .arg("--file")
        .arg(&file)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    for engine in [
        "| uring |",
        "| uring-fixed |",
        "| pread |",
        "| pread-pool |",
    ] {
        assert!(table.contains(engine), "missing {engine} row: {table}");
    }
    let json = std::fs::read_to_string(&json).unwrap();
    assert_eq!(json.matches("\"engine\"").count(), 5, "{json}");
    let _ = std::fs::remove_dir_all(dir);
}
