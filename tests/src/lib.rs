//! Shared helpers for the end-to-end tests in `tests/tests/`: locate the binaries that
//! `cargo test --workspace` built, start them on an ephemeral loopback port, read the address
//! they print, count their open fds, and stop them.
//!
//! Every server prints a line containing `listening on ADDR` on stdout once it accepts
//! connections; [`Server::start`] waits for it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The path of a workspace binary, next to the test executable's `deps/` directory.
///
/// # Panics
/// When the binary was not built; `cargo test --workspace` builds every server because each
/// server package has an integration test of its own.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo test --workspace` (or `cargo build --workspace`) first",
        path.display()
    );
    path
}

/// A running server process, killed (SIGKILL) on drop if still running.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    lines: mpsc::Receiver<String>,
}

impl Server {
    /// Starts binary `name` with `args` and waits (up to 10 s) for its `listening on` line.
    pub fn start(name: &str, args: &[&str]) -> Server {
        let mut child = Command::new(binary(name))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        forward_lines(stdout, tx);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        let addr_text = rest
                            .trim()
                            .trim_start_matches("http://")
                            .trim_end_matches('/')
                            .split_whitespace()
                            .next()
                            .unwrap_or("");
                        let addr = addr_text.parse().unwrap_or_else(|e| {
                            panic!("{name} printed a bad address {line:?}: {e}")
                        });
                        return Server { child, addr, lines };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("{name} did not print `listening on ADDR` within 10 s");
                }
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Open fds of the server process (entries of /proc/PID/fd).
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Resident set size in KiB (VmRSS of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits up to `timeout` for `check` to hold, polling every 20 ms.
    pub fn wait_until(&self, timeout: Duration, mut check: impl FnMut(&Server) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        check(self)
    }

    /// Sends `signal` (e.g. `rustix::process::Signal::TERM`) to the server.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        rustix::process::kill_process(pid, signal).expect("kill");
    }

    /// Waits up to `timeout` for the process to exit; returns its exit code (None: killed by a
    /// signal). Panics if it does not exit in time.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lines the server printed on stdout after its `listening on` line, so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }
}

fn forward_lines(stdout: ChildStdout, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Raises this process's RLIMIT_NOFILE soft limit to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    lim.current = lim.maximum;
    let _ = setrlimit(Resource::Nofile, lim);
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce from the seed.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
