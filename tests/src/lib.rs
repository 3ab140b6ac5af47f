//! Shared helpers for the end-to-end tests in `tests/tests/`: locate the binaries that
//! `cargo test --workspace` built, start them on an ephemeral loopback port (optionally under a
//! low RLIMIT_NOFILE, with stderr captured), count their open fds and sockets, and stop them.
//!
//! Starting, reading lines, stopping and /proc readings are ringwork-harness's, shared with
//! ringwork-bench; this library adds what only tests want (a served file's descriptor is not a
//! leak, a socket's state by /proc/net/tcp) and turns the harness's errors into panics.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use ringwork_harness::{proc, raise_nofile_limit};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::time::Timespec;

pub mod pki;

/// The servers' I/O backends (`--backend`); most scenarios run on each.
pub const BACKENDS: [&str; 2] = ["uring", "epoll"];

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

/// A running server ([`ringwork_harness::Server`], which it derefs to: `addr`, `addrs`,
/// `pid`, `signal`, `wait_exit`, `wait_for_line`, `stdout_lines`, `stderr`), killed (SIGKILL)
/// on drop if still running, with what the tests ask of its descriptors and sockets.
pub struct Server {
    process: ringwork_harness::Server,
}

impl std::ops::Deref for Server {
    type Target = ringwork_harness::Server;

    fn deref(&self) -> &Self::Target {
        &self.process
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.process
    }
}

impl Server {
    /// Starts binary `name` with `args` and waits (up to 10 s) for its `listening on` line.
    pub fn start(name: &str, args: &[&str]) -> Server {
        Self::launch(name, args, None)
    }

    /// As [`Server::start`], but under RLIMIT_NOFILE `nofile` (soft and hard, set before the
    /// server runs, through the `ringwork-e2e-nofile` launcher), with its stderr captured for
    /// `stderr()`.
    pub fn start_with_nofile(name: &str, args: &[&str], nofile: u64) -> Server {
        Self::launch(name, args, Some(nofile))
    }

    /// As [`Server::start`], with its stderr captured for `stderr()`.
    pub fn start_capturing(name: &str, args: &[&str]) -> Server {
        let process = ringwork_harness::Server::start(
            Command::new(binary(name)).args(args).stderr(Stdio::piped()),
        )
        .unwrap_or_else(|e| panic!("{name} {e}"));
        Server { process }
    }

    fn launch(name: &str, args: &[&str], nofile: Option<u64>) -> Server {
        let mut command = match nofile {
            None => Command::new(binary(name)),
            Some(limit) => {
                let mut c = Command::new(binary("ringwork-e2e-nofile"));
                c.arg(limit.to_string()).arg(binary(name));
                c
            }
        };
        let stderr = if nofile.is_some() {
            Stdio::piped()
        } else {
            Stdio::inherit()
        };
        let process = ringwork_harness::Server::start(command.args(args).stderr(stderr))
            .unwrap_or_else(|e| panic!("{name} {e}"));
        Server { process }
    }

    /// CPU time the server's threads have used ([`proc::cpu_time`]).
    pub fn cpu_time(&self) -> Duration {
        proc::cpu_time(self.pid()).unwrap_or_default()
    }

    /// Open fds of the server process (entries of /proc/PID/fd), but the files it holds open
    /// under the temporary directory (the tests' served roots), which ringwork-files'
    /// open-file cache keeps open by design: [`Server::cached_file_fds`] counts those.
    pub fn fd_count(&self) -> usize {
        self.fds().filter(|p| !Self::is_served_file(p)).count()
    }

    /// Descriptors of files under the temporary directory (ringwork-files' open-file cache,
    /// without registered files, holds up to `--open-file-cache` per thread).
    pub fn cached_file_fds(&self) -> usize {
        self.fds().filter(|p| Self::is_served_file(p)).count()
    }

    fn fds(&self) -> impl Iterator<Item = PathBuf> {
        proc::fd_targets(self.pid()).into_iter()
    }

    fn is_served_file(target: &Path) -> bool {
        target.starts_with(std::env::temp_dir()) && target.is_file()
    }

    /// How many listening sockets the server holds on `addr`'s port (its fds matched with
    /// /proc/net/tcp and tcp6 by inode). Only the port is compared: descriptors the process
    /// inherited from the test process cannot be on a port the server chose itself.
    pub fn listeners_on(&self, addr: SocketAddr) -> usize {
        self.sockets_on(addr.port(), |state| state == "0A")
    }

    /// How many accepted connections on its own port the server still holds a descriptor
    /// for (any TCP state but LISTEN).
    pub fn connections_held(&self) -> usize {
        self.sockets_on(self.addr.port(), |state| state != "0A")
    }

    /// Where the server side of the connection from `client` (the client's own address)
    /// stands: still in a listen backlog (no descriptor yet: inode 0), accepted and held by
    /// the server, or neither (closed, or held by another process).
    pub fn connection_state(&self, client: SocketAddr) -> &'static str {
        let inodes = self.socket_inodes();
        let (local, remote) = (
            format!(":{:04X}", self.addr.port()),
            format!(":{:04X}", client.port()),
        );
        for f in tcp_rows() {
            if f[1].ends_with(&local) && f[2].ends_with(&remote) {
                return if f[9] == "0" {
                    "in a listen backlog, not accepted"
                } else if inodes.contains(&f[9]) {
                    "accepted, held by the server"
                } else {
                    "held by no descriptor of the server"
                };
            }
        }
        "no server-side socket"
    }

    /// The inodes of the server's sockets (its fds' `socket:[INODE]` links).
    fn socket_inodes(&self) -> Vec<String> {
        self.fds()
            .filter_map(|l| {
                let l = l.display().to_string();
                Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
            })
            .collect()
    }

    /// The server's TCP sockets with local port `port` whose state (the hex code of
    /// /proc/net/tcp) passes `state`.
    fn sockets_on(&self, port: u16, state: impl Fn(&str) -> bool) -> usize {
        let inodes = self.socket_inodes();
        let port = format!(":{port:04X}");
        // local_address, state, inode.
        tcp_rows()
            .filter(|f| f[1].ends_with(&port) && state(&f[3]) && inodes.contains(&f[9]))
            .count()
    }

    /// The idle baseline after earlier clients, whose closes the server may not have seen
    /// yet: waits (up to 15 s, else panics) until the server holds no connection on its port,
    /// then returns the fd count once it has held still for 300 ms (up to 10 s more). Waiting
    /// for the connections first keeps a server that a loaded machine left a few closes behind
    /// from setting a baseline above its idle count.
    pub fn settled_fd_count(&self) -> usize {
        let idle = self.wait_until(Duration::from_secs(15), |s| s.connections_held() == 0);
        assert!(
            idle,
            "the server still holds {} connections 15 s after its clients closed them",
            self.connections_held()
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut count = self.fd_count();
        let mut since = Instant::now();
        while Instant::now() < deadline && since.elapsed() < Duration::from_millis(300) {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.fd_count();
            if now != count {
                (count, since) = (now, Instant::now());
            }
        }
        count
    }

    /// Private resident memory in KiB ([`proc::private_rss_kib`]).
    pub fn rss_kib(&self) -> u64 {
        proc::private_rss_kib(self.pid()).unwrap_or(0)
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

/// Most descriptors of served files a test server may hold once its clients are gone: what
/// ringwork-files' open-file cache keeps for the few files a test serves, far below what a
/// descriptor leaked per request would leave.
pub const MAX_CACHED_FILE_FDS: usize = 256;

/// Waits for the server's fd count to return to `baseline`, failing with the count it had.
pub fn assert_fds_return(server: &Server, baseline: usize, what: &str) {
    let ok = server.wait_until(Duration::from_secs(15), |s| s.fd_count() == baseline);
    if !ok {
        let mut held: Vec<String> = server.fds().map(|p| p.display().to_string()).collect();
        held.sort();
        panic!(
            "{what}: server holds {} fds besides served files, baseline {baseline}; all: {}",
            server.fd_count(),
            held.join(" ")
        );
    }
    // Cached files are bounded: a descriptor leaked per request would pile up past this.
    let cached = server.cached_file_fds();
    assert!(
        cached <= MAX_CACHED_FILE_FDS,
        "{what}: server holds {cached} descriptors of served files"
    );
}

/// Sends `payload` and reads the echo concurrently (one nonblocking socket, poll), then
/// half-closes and reads to EOF. `rcvbuf` shrinks the client's receive buffer so that the
/// server meets short sends.
pub fn exchange(addr: SocketAddr, payload: &[u8], rcvbuf: Option<usize>) -> Vec<u8> {
    let stream = connect(addr, rcvbuf);
    stream.set_nonblocking(true).unwrap();
    let mut got = Vec::with_capacity(payload.len());
    let mut sent = 0;
    let mut half_closed = false;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "exchange of {} bytes stuck",
            payload.len()
        );
        if sent == payload.len() && !half_closed {
            stream.shutdown(Shutdown::Write).unwrap();
            half_closed = true;
        }
        let mut flags = PollFlags::IN;
        if !half_closed {
            flags |= PollFlags::OUT;
        }
        let mut fds = [PollFd::new(&stream, flags)];
        let ts = Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        poll(&mut fds, Some(&ts)).unwrap();
        let revents = fds[0].revents();
        if !half_closed && revents.contains(PollFlags::OUT) {
            match (&stream).write(&payload[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("write: {e}"),
            }
        }
        if revents.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
            match (&stream).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }
    assert!(half_closed, "server closed before all was sent");
    got
}

/// Connects to `addr`; `rcvbuf` sets SO_RCVBUF before connecting.
pub fn connect(addr: SocketAddr, rcvbuf: Option<usize>) -> TcpStream {
    match rcvbuf {
        None => TcpStream::connect(addr).unwrap(),
        Some(size) => {
            // SO_RCVBUF must be set before connect to shape the advertised window.
            let fd = rustix::net::socket(
                rustix::net::AddressFamily::INET,
                rustix::net::SocketType::STREAM,
                None,
            )
            .unwrap();
            rustix::net::sockopt::set_socket_recv_buffer_size(&fd, size).unwrap();
            rustix::net::connect(&fd, &addr).unwrap();
            TcpStream::from(fd)
        }
    }
}

/// `clients` concurrent clients, each exchanging its payload; every echo is compared.
pub fn run_clients(
    addr: SocketAddr,
    clients: usize,
    rcvbuf: Option<usize>,
    size: fn(usize) -> usize,
) {
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    let payload = random_bytes(i as u64 + 1, size(i));
                    let echoed = exchange(addr, &payload, rcvbuf);
                    assert_eq!(echoed.len(), payload.len(), "client {i}: length");
                    assert!(echoed == payload, "client {i}: bytes differ");
                })
                .unwrap()
        })
        .collect();
    for h in handles {
        h.join().expect("client failed");
    }
}

/// Removes the directories `PREFIX<pid>` of earlier test processes that have exited (a static cannot clean up
/// after itself at exit).
fn remove_stale_dirs(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(prefix) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Stops a server (ringwork-echo or ringwork-files) with SIGTERM; returns its `stats:` line
/// after checking exit code 0.
pub fn terminate(mut server: Server) -> String {
    server
        .process
        .terminate(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("the server {e}"))
}

/// The value of `key=N` in a `stats:` line.
pub fn stat(line: &str, key: &str) -> u64 {
    ringwork_harness::server::stat(line, key).unwrap_or_else(|| panic!("{key} missing in {line:?}"))
}

/// A fresh directory `$TMPDIR/<prefix><pid>` for this test process, after removing those of
/// earlier test processes that have exited.
pub fn fresh_dir(prefix: &str) -> PathBuf {
    remove_stale_dirs(prefix);
    let dir = std::env::temp_dir().join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A std-only HTTP/1.1 client for ringwork-files.
pub mod http {
    use super::*;

    #[derive(Debug)]
    pub struct Response {
        /// The status code.
        pub status: u16,
        /// Status line and headers, CRLFs included.
        pub head: String,
        /// The body (empty for HEAD).
        pub body: Vec<u8>,
    }

    impl Response {
        /// The value of header `name` (case-insensitive), trimmed.
        pub fn header(&self, name: &str) -> Option<&str> {
            self.head.lines().find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim())
            })
        }
    }

    /// A keep-alive client connection.
    pub struct Client {
        /// The connection, buffered for reading.
        pub reader: BufReader<TcpStream>,
    }

    impl Client {
        /// Connects, with a 20 s read timeout.
        pub fn connect(addr: SocketAddr) -> Client {
            let s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            Client {
                reader: BufReader::new(s),
            }
        }

        /// Writes `raw` as is.
        pub fn send(&mut self, raw: &[u8]) {
            self.reader.get_mut().write_all(raw).unwrap();
        }

        /// Reads one response; `head_only` for HEAD requests (no body despite Content-Length).
        pub fn read(&mut self, head_only: bool) -> std::io::Result<Response> {
            read_response(&mut self.reader, head_only)
        }

        /// A GET of `target` with `extra` header lines (each ending in CRLF).
        pub fn get(&mut self, target: &str, extra: &str) -> Response {
            self.send(format!("GET {target} HTTP/1.1\r\nHost: t\r\n{extra}\r\n").as_bytes());
            self.read(false).unwrap()
        }
    }

    /// Reads one response from `reader`; `head_only` for HEAD requests.
    pub fn read_response(reader: &mut impl BufRead, head_only: bool) -> std::io::Result<Response> {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let status = head[9..12].parse().unwrap();
        let mut r = Response {
            status,
            head,
            body: Vec::new(),
        };
        if !head_only {
            let len: usize = r.header("Content-Length").map_or(0, |v| v.parse().unwrap());
            r.body = vec![0; len];
            reader.read_exact(&mut r.body)?;
        }
        Ok(r)
    }

    /// One request on a fresh connection.
    pub fn once(addr: SocketAddr, raw: &[u8]) -> Response {
        let mut c = Client::connect(addr);
        c.send(raw);
        c.read(raw.starts_with(b"HEAD")).unwrap()
    }
}

/// The rows of /proc/net/tcp and tcp6 (header skipped), split into fields; rows too short to
/// hold an inode (field 9) are left out.
fn tcp_rows() -> impl Iterator<Item = Vec<String>> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .into_iter()
        .flat_map(|table| {
            let text = std::fs::read_to_string(table).unwrap_or_default();
            text.lines()
                .skip(1)
                .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        })
        .filter(|f| f.len() > 9)
}
