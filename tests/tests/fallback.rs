//! Where io_uring is refused (a container's seccomp profile, `kernel.io_uring_disabled`), both
//! servers still serve at their defaults: `--backend auto` runs on epoll and says why, and an
//! explicit `--backend uring` fails naming the cause and the way out.
//!
//! The refusal is real: the test sets `kernel.io_uring_disabled` to 2 (Linux 6.6; root), which
//! refuses io_uring_setup to every process, and puts the old value back on every way out of
//! the test, a failed assertion included. It is the only test in this file (this binary's
//! tests run in parallel threads, and each would see io_uring gone).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ringwork_e2e::{binary, exchange, fresh_dir, http, raise_nofile_limit, terminate, Server};

const KNOB: &str = "/proc/sys/kernel/io_uring_disabled";

/// Sets `kernel.io_uring_disabled` for as long as it lives; the old value comes back on drop
/// (also when the test panics: drop runs during unwinding).
struct IoUringDisabled {
    before: String,
}

impl IoUringDisabled {
    /// `None` where this kernel has no such knob (before Linux 6.6).
    fn set(value: &str) -> Option<Self> {
        let before = std::fs::read_to_string(KNOB).ok()?;
        std::fs::write(KNOB, value)
            .unwrap_or_else(|e| panic!("cannot write {KNOB} (the test needs root): {e}"));
        Some(Self { before })
    }
}

impl Drop for IoUringDisabled {
    fn drop(&mut self) {
        std::fs::write(KNOB, self.before.trim()).expect("restore kernel.io_uring_disabled");
    }
}

/// The reason line a server prints on stderr when it falls back.
fn fallback_line(server: &Server, name: &str) -> String {
    let prefix = format!("{name}: io_uring unavailable, running on epoll: ");
    let mut found = None;
    let seen = server.wait_until(Duration::from_secs(5), |s| {
        found = s
            .stderr()
            .lines
            .iter()
            .find(|l| l.starts_with(&prefix))
            .cloned();
        found.is_some()
    });
    assert!(
        seen,
        "{name} said nothing of the fallback: {:?}",
        server.stderr().lines
    );
    found.expect("seen")
}

fn echo_serves_on_epoll() {
    // Stderr is captured only under a descriptor limit: this process' own, so nothing changes.
    let nofile = raise_nofile_limit();
    let server = Server::start_with_nofile("ringwork-echo", &["--listen", "127.0.0.1:0"], nofile);
    let why = fallback_line(&server, "ringwork-echo");
    assert!(why.contains("io_uring_disabled is 2"), "{why}");
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(exchange(server.addr, &payload, None), payload);
    // An io_uring worker prints its features line before `listening on`; epoll has none.
    let early = server.stdout_lines();
    assert!(
        !early.iter().any(|l| l.starts_with("io_uring:")),
        "{early:?}"
    );
    let stats = terminate(server);
    assert!(stats.contains("bytes=100000"), "{stats}");
}

fn files_serve_on_epoll(root: &Path) {
    let nofile = raise_nofile_limit();
    let root_arg = root.to_str().expect("utf-8 temp dir");
    let server = Server::start_with_nofile(
        "ringwork-files",
        &[root_arg, "--listen", "127.0.0.1:0"],
        nofile,
    );
    let why = fallback_line(&server, "ringwork-files");
    assert!(why.contains("io_uring_disabled is 2"), "{why}");
    let mut client = http::Client::connect(server.addr);
    let r = client.get("/page.html", "");
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body, std::fs::read(root.join("page.html")).unwrap());
    let big = client.get("/big.bin", "");
    assert_eq!(big.status, 200, "{}", big.head);
    assert_eq!(big.body, std::fs::read(root.join("big.bin")).unwrap());
    assert!(
        server
            .stdout_lines()
            .iter()
            .any(|l| l.starts_with("epoll backend")),
        "{:?}",
        server.stdout_lines()
    );
    terminate(server);
}

/// `--backend uring` where io_uring is refused: exit 1, a message with the cause and the way
/// out, and no `stats:` line (nothing was served).
fn explicit_uring_fails_with_the_way_out(name: &str, args: &[&str]) {
    let out = Command::new(binary(name))
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--backend", "uring"])
        .output()
        .expect("run the server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
    assert!(
        stderr.contains("io_uring_disabled is 2") && stderr.contains("--backend epoll"),
        "{name}: {stderr}"
    );
    assert!(!stdout.contains("stats:"), "{name}: {stdout}");
}

/// A flag only io_uring has, given where io_uring is refused, is an error, not ignored.
fn uring_only_flag_is_refused(name: &str, args: &[&str]) {
    let out = Command::new(binary(name))
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--zerocopy"])
        .output()
        .expect("run the server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
    assert!(
        stderr.contains("--zerocopy needs io_uring") && stderr.contains("io_uring_disabled"),
        "{name}: {stderr}"
    );
}

#[test]
fn with_io_uring_refused_both_servers_serve_on_epoll_and_say_why() {
    let root = fresh_dir("ringwork-fallback-");
    std::fs::write(root.join("page.html"), b"<p>served without io_uring</p>\n").unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(root.join("big.bin"), &big).unwrap();
    let root_arg = root.to_str().expect("utf-8 temp dir").to_owned();

    let Some(_refused) = IoUringDisabled::set("2") else {
        panic!(
            "{KNOB} is missing: this kernel (before Linux 6.6) cannot refuse io_uring by \
             sysctl, so the fallback cannot be forced here"
        );
    };
    echo_serves_on_epoll();
    files_serve_on_epoll(&root);
    explicit_uring_fails_with_the_way_out("ringwork-echo", &[]);
    explicit_uring_fails_with_the_way_out("ringwork-files", &[&root_arg]);
    uring_only_flag_is_refused("ringwork-echo", &[]);
    uring_only_flag_is_refused("ringwork-files", &[&root_arg]);
}
