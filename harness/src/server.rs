//! A server process started by a benchmark or a test: spawned, waited for until it serves,
//! its stdout (and, when piped, stderr) read line by line on threads of their own, stopped
//! with SIGTERM.
//!
//! Every Ringwork server prints a line containing `listening on ADDR` on stdout once it
//! accepts connections ([`Server::start`] waits for it), and a `stats: key=N ...` line as it
//! exits after SIGTERM ([`Server::terminate`] returns it). Servers that print nothing
//! (another project's, started from a command line) are waited for by connecting
//! ([`Server::start_at`]).
//!
//! Errors are phrases without a subject ("did not print `listening on ADDR` within 10 s"): the
//! caller knows what it started and puts the name in front.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::Signal;

/// How long a server has to start serving.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running server process; stopped when dropped (SIGKILL, or SIGTERM first after
/// [`Server::terminate_when_dropped`]).
pub struct Server {
    child: Child,
    /// Where it listens (the first of [`Server::addrs`]).
    pub addr: SocketAddr,
    /// Every address its `listening on` line names, in order (`--listen` given more than
    /// once); the one address of [`Server::start_at`].
    pub addrs: Vec<SocketAddr>,
    /// Behind a lock so that threads sharing a `&Server` may read its fields.
    stdout: Mutex<Stdout>,
    /// What it wrote on stderr, when the command piped it.
    stderr: Option<Arc<Mutex<StderrLog>>>,
    /// How long a dropped server that is still running gets to exit after SIGTERM; `None`:
    /// SIGKILL at once.
    drop_grace: Option<Duration>,
}

/// The server's stdout lines not taken yet.
struct Stdout {
    /// Lines printed before `listening on` (a worker's `io_uring:` features line, which the
    /// workers print while setting up), not yet taken by [`Server::wait_for_line`].
    early: VecDeque<String>,
    /// Every later line, as the reading thread forwards it.
    lines: mpsc::Receiver<String>,
}

/// A server's stderr as captured when its command piped it: every line is counted, the first
/// [`StderrLog::KEPT`] are kept (a server that floods stderr must not flood its reader).
#[derive(Clone, Debug, Default)]
pub struct StderrLog {
    /// The first lines, in order.
    pub lines: Vec<String>,
    /// How many lines it wrote in all.
    pub total: usize,
    /// Its stderr reached its end (the server, and whatever inherited the pipe, exited).
    pub ended: bool,
}

impl StderrLog {
    /// Lines kept.
    pub const KEPT: usize = 200;
}

impl Server {
    /// Starts `command` with stdout piped and waits (up to [`START_TIMEOUT`]) for its
    /// `listening on ADDR` line. Its stderr is captured for [`Server::stderr`] when `command`
    /// pipes it.
    pub fn start(command: &mut Command) -> Result<Server, String> {
        let mut server = Self::spawn(command.stdout(Stdio::piped()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let stdout = server.stdout.get_mut().expect("stdout lines");
            let line = match stdout.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "did not print `listening on ADDR` within {} s",
                        START_TIMEOUT.as_secs()
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err("exited before printing `listening on ADDR`".into())
                }
            };
            let Some(addrs) = listening_addrs(&line) else {
                stdout.early.push_back(line);
                continue;
            };
            let Some(&addr) = addrs.first() else {
                return Err(format!("printed no address: {line:?}"));
            };
            server.addr = addr;
            server.addrs = addrs;
            return Ok(server);
        }
    }

    /// Starts `command`, which is to listen on `addr` and may print nothing, and waits (up to
    /// [`START_TIMEOUT`]) until `addr` accepts a connection.
    pub fn start_at(command: &mut Command, addr: SocketAddr) -> Result<Server, String> {
        let mut server = Self::spawn(command)?;
        server.addr = addr;
        server.addrs = vec![addr];
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("exited at start ({status})"));
            }
            if TcpStream::connect(addr).is_ok() {
                return Ok(server);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "did not accept connections on {addr} within {} s",
                    START_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Spawns `command` and starts reading what it pipes; the address is not known yet.
    fn spawn(command: &mut Command) -> Result<Server, String> {
        let mut child = command
            .spawn()
            .map_err(|e| format!("could not be started: {e}"))?;
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            forward_lines(stdout, tx);
        }
        let stderr = child.stderr.take().map(collect_stderr);
        Ok(Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            addrs: Vec::new(),
            stdout: Mutex::new(Stdout {
                early: VecDeque::new(),
                lines,
            }),
            stderr,
            drop_grace: None,
        })
    }

    /// When dropped while still running, the server gets SIGTERM and `grace` to exit before
    /// SIGKILL (a benchmark's servers drain their connections; another project's server may
    /// ignore SIGTERM).
    #[must_use]
    pub fn terminate_when_dropped(mut self, grace: Duration) -> Server {
        self.drop_grace = Some(grace);
        self
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. [`Signal::TERM`]) to the server.
    ///
    /// # Panics
    /// When the kernel refuses: the server has been waited for already (its pid may be
    /// another process's now).
    pub fn signal(&self, signal: Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        rustix::process::kill_process(pid, signal).expect("kill");
    }

    /// Waits up to `timeout` for the process to exit; returns its exit code (`None`: killed by
    /// a signal), or an error when it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| format!("wait: {e}"))? {
                self.read_to_the_end(Duration::from_secs(2));
                return Ok(status.code());
            }
            if Instant::now() >= deadline {
                return Err(format!("did not exit within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the server with SIGTERM, waits up to `timeout` for exit code 0 and returns its
    /// `stats:` line.
    pub fn terminate(&mut self, timeout: Duration) -> Result<String, String> {
        self.signal(Signal::TERM);
        match self.wait_exit(timeout)? {
            Some(0) => {}
            code => return Err(format!("exited with {code:?} after SIGTERM, not 0")),
        }
        self.stdout_lines()
            .into_iter()
            .find(|l| l.starts_with("stats:"))
            .ok_or_else(|| "printed no `stats:` line".into())
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; returns whether it exited within `grace`
    /// (or had exited before).
    pub fn stop(&mut self, grace: Duration) -> bool {
        // One that exited is reaped already: its pid may be another process's now.
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        self.signal(Signal::TERM);
        if self.wait_exit(grace).is_ok() {
            return true;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }

    /// Waits up to `timeout` for a stdout line that `pick` accepts, the lines printed before
    /// `listening on` first; lines before it are consumed.
    pub fn wait_for_line(
        &self,
        timeout: Duration,
        mut pick: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        let mut stdout = self.stdout.lock().expect("stdout lines");
        while let Some(line) = stdout.early.pop_front() {
            if pick(&line) {
                return Some(line);
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = stdout.lines.recv_timeout(left).ok()?;
            if pick(&line) {
                return Some(line);
            }
        }
    }

    /// Lines the server printed on stdout so far, not taken yet (those before its
    /// `listening on` line first).
    pub fn stdout_lines(&self) -> Vec<String> {
        let mut stdout = self.stdout.lock().expect("stdout lines");
        let mut lines: Vec<String> = stdout.early.drain(..).collect();
        lines.extend(stdout.lines.try_iter());
        lines
    }

    /// Once the process has exited: waits (up to `timeout`) until the reading threads have
    /// passed on everything it wrote, so that its last lines are there to read (they are
    /// read on threads of their own, which may lag behind its exit).
    fn read_to_the_end(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        {
            let mut stdout = self.stdout.lock().expect("stdout lines");
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match stdout.lines.recv_timeout(left) {
                    Ok(line) => stdout.early.push_back(line),
                    // Disconnected: the reader met the end; Timeout: give up waiting.
                    Err(_) => break,
                }
            }
        }
        let Some(log) = self.stderr.as_ref() else {
            return;
        };
        while !log.lock().expect("stderr log").ended && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// What the server wrote on stderr so far.
    ///
    /// # Panics
    /// When its command did not pipe stderr (nothing was captured).
    pub fn stderr(&self) -> StderrLog {
        let log = self.stderr.as_ref().expect("stderr captured");
        log.lock().expect("stderr log").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(grace) = self.drop_grace {
            self.stop(grace);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The addresses of a `listening on` line (`... listening on ADDR (...)` or
/// `... listening on http://ADDR/ https://ADDR/ ...`: the addresses lead), in order; `None`
/// for any other line.
pub fn listening_addrs(line: &str) -> Option<Vec<SocketAddr>> {
    let rest = line.split("listening on ").nth(1)?;
    Some(
        rest.split_whitespace()
            .map(|w| {
                w.trim_start_matches("https://")
                    .trim_start_matches("http://")
            })
            .map(|w| w.trim_end_matches('/'))
            .map_while(|w| w.parse().ok())
            .collect(),
    )
}

/// The value of `key=N` in a `stats:` line.
pub fn stat(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// A free loopback port (bound, read, released: the server binds it a moment later).
pub fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("pick a port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("pick a port: {e}"))
}

/// Sends each line of `stdout` to `tx` from a thread of its own, to its end: the server never
/// blocks on a full pipe, whether or not anyone reads the lines.
fn forward_lines(stdout: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // The server was dropped: keep reading so that it does not block on the pipe.
            let _ = tx.send(line);
        }
    });
}

/// Reads `stderr` to its end on a thread of its own (a server that floods it must not block on
/// a full pipe), counting every line and keeping the first [`StderrLog::KEPT`].
fn collect_stderr(stderr: impl Read + Send + 'static) -> Arc<Mutex<StderrLog>> {
    let log = Arc::new(Mutex::new(StderrLog::default()));
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let mut log = sink.lock().expect("stderr log");
            log.total += 1;
            if log.lines.len() < StderrLog::KEPT {
                log.lines.push(line);
            }
        }
        sink.lock().expect("stderr log").ended = true;
    });
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.arg("-c").arg(script);
        command
    }

    #[test]
    fn listening_lines_give_every_address_in_order() {
        assert_eq!(
            listening_addrs("ringwork-echo (uring): listening on 127.0.0.1:7878 (1 thread)"),
            Some(vec!["127.0.0.1:7878".parse().unwrap()])
        );
        assert_eq!(
            listening_addrs("listening on http://127.0.0.1:1/ http://[::1]:2/ (2 threads)"),
            Some(vec![
                "127.0.0.1:1".parse().unwrap(),
                "[::1]:2".parse().unwrap()
            ])
        );
        assert_eq!(
            listening_addrs("listening on http://127.0.0.1:1/ https://127.0.0.1:3/"),
            Some(vec![
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:3".parse().unwrap()
            ])
        );
        assert_eq!(listening_addrs("listening on nothing"), Some(vec![]));
        assert_eq!(listening_addrs("io_uring: features ..."), None);
    }

    #[test]
    fn stats_values_parse() {
        let line = "stats: accepted=12 closed=3 bytes_in=99";
        assert_eq!(stat(line, "accepted"), Some(12));
        assert_eq!(stat(line, "bytes_in"), Some(99));
        assert_eq!(stat(line, "bytes"), None);
        assert_eq!(stat(line, "missing"), None);
    }

    /// A stand-in server: prints a line first, its address, then a stats line on SIGTERM.
    #[test]
    fn a_started_server_gives_its_lines_and_its_stats_line_on_sigterm() {
        let script = "trap 'echo stats: accepted=7; exit 0' TERM; echo 'io_uring: on'; \
                      echo 'x: listening on 127.0.0.1:9 [::1]:10 (2 threads)'; \
                      echo oops >&2; while :; do sleep 0.05; done";
        let mut command = sh(script);
        command.stderr(Stdio::piped());
        let mut server = Server::start(&mut command).unwrap();
        assert_eq!(server.addr, "127.0.0.1:9".parse().unwrap());
        assert_eq!(server.addrs.len(), 2);
        let early = server.wait_for_line(Duration::from_secs(1), |l| l.starts_with("io_uring"));
        assert_eq!(early.as_deref(), Some("io_uring: on"));
        let stats = server.terminate(Duration::from_secs(5)).unwrap();
        assert_eq!(stat(&stats, "accepted"), Some(7));
        assert_eq!(server.stderr().lines, ["oops"]);
    }

    #[test]
    fn a_server_that_exits_or_stays_silent_is_an_error() {
        let exited = Server::start(&mut sh("echo hello")).err().unwrap();
        assert!(exited.contains("exited before"), "{exited}");
        let refused = Server::start(&mut Command::new("/nonexistent/server"))
            .err()
            .unwrap();
        assert!(refused.contains("could not be started"), "{refused}");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
        let at_start = Server::start_at(&mut sh("exit 3"), addr).err().unwrap();
        assert!(at_start.contains("exited at start"), "{at_start}");
    }

    #[test]
    fn a_server_that_ignores_sigterm_is_killed_after_the_grace() {
        let script = "trap '' TERM; echo 'listening on 127.0.0.1:1'; exec sleep 30";
        let mut server = Server::start(&mut sh(script)).unwrap();
        let started = Instant::now();
        assert!(!server.stop(Duration::from_millis(200)));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(server.stop(Duration::from_millis(200)), "reaped already");
    }
}
