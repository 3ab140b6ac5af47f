//! The command line: every flag is documented in `--help`. (Also makes `cargo test
//! --workspace` build the binary for the end-to-end tests in `tests/`.)

use std::process::Command;

#[test]
fn help_mentions_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringwork-echo"))
        .arg("--help")
        .output()
        .expect("run ringwork-echo --help");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--threads",
        "--backend",
        "--buffers",
        "--buffer-size",
        "--max-conns",
        "--sq-entries",
        "--batch",
        "--batch-wait-us",
        "--sqpoll",
        "--sqpoll-cpu",
        "--zerocopy",
        "--bundle",
        "--incremental",
        "--disable",
        "pbuf-ring",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    assert!(help.contains("uring") && help.contains("epoll"));
}

#[test]
fn refuses_a_buffer_count_that_is_not_a_power_of_two() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringwork-echo"))
        .args(["--listen", "127.0.0.1:0", "--buffers", "3"])
        .output()
        .expect("run ringwork-echo");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));
}

/// Flags that cannot work together, or a feature the kernel refuses: an error that says why,
/// and no server.
#[test]
fn refuses_impossible_combinations_with_the_reason() {
    for (args, says) in [
        (
            &["--sqpoll", "--sqpoll-cpu", "99999"][..],
            "CPU 99999 is not online",
        ),
        (
            &["--bundle", "--disable", "pbuf-ring"][..],
            "needs the provided buffer ring",
        ),
        (
            &["--incremental", "--zerocopy"][..],
            "--incremental works alone",
        ),
        (&["--incremental", "--backend", "epoll"][..], "uring only"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ringwork-echo"))
            .args(["--listen", "127.0.0.1:0", "--threads", "1"])
            .args(args)
            .output()
            .expect("run ringwork-echo");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started a server");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
