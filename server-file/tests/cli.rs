//! The command line: `--help` names every flag, and bad arguments fail with a message.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ringwork-files");

#[test]
fn help_lists_every_flag() {
    let out = Command::new(BIN)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--threads",
        "--direct",
        "--backend",
        "--chunk",
        "--header-timeout-ms",
        "--idle-timeout-ms",
        "[ROOT]",
    ] {
        assert!(
            help.contains(flag),
            "--help does not mention {flag}:\n{help}"
        );
    }
}

#[test]
fn missing_root_is_an_error_a_person_can_act_on() {
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "/nonexistent/ringwork-root"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot serve /nonexistent/ringwork-root"),
        "{err}"
    );
}

#[test]
fn unknown_backend_is_refused() {
    let out = Command::new(BIN)
        .args(["--backend", "select"])
        .output()
        .expect("run");
    assert!(!out.status.success());
}
