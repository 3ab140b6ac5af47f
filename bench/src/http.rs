//! `ringwork-bench http`: a keep-alive HTTP/1.1 load generator for file servers.
//!
//! Closed loop: every connection sends one GET, reads the whole response (head, then exactly
//! Content-Length body bytes), and sends the next. Each request's path is chosen by an
//! [`Order`]: in turn per connection, or drawn uniformly or Zipf-distributed (seeded) from the
//! list, which may be a whole site ([`crate::site`]). Every response must be `200` or `206` and
//! its body length must match Content-Length and, per path, the file's size when it is known
//! (`--site`), else the first length seen; anything else counts as an error and the
//! connection is re-made.
//!
//! One thread holds every connection (10,000 and more): nonblocking sockets on edge-triggered
//! epoll, one shared read buffer, requests formatted once per path. Connections are opened
//! nonblocking, at most [`CONNECT_BATCH`] at a time (a burst of thousands of SYNs overflows a
//! server's listen backlog, and a dropped SYN costs a one-second retransmit), and each binds its
//! source address first: a loopback target is reached from 127.0.0.1, then from further
//! addresses in 127.0.0.0/8 when one address's ephemeral ports would run short. A connect that
//! fails counts as an error and is retried after a pause, never in a tight loop. Connecting is
//! not measured: the warm-up starts once every connection's first connect has come up or
//! failed (or [`CONNECT_PHASE_LIMIT`] has passed), and the run ends at a fixed time whatever
//! the server does.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use ringwork_harness::proc::cpu_time;

use crate::site::{Order, Picker};
use crate::stats::{
    cpu_us_per, latency_histogram, machine_line, per_sec, self_cpu, thousands, Latency,
};
use crate::tls::{Handshake, TlsClient, TlsOptions, TlsStream, Versions};

/// Connects in flight at once.
pub const CONNECT_BATCH: usize = 256;

/// How long a connection waits after a failure before it connects again: a refusing server
/// slows the generator down instead of making it spin.
const RETRY_DELAY: Duration = Duration::from_millis(20);

/// The longest the generator waits for every connection to come up before it starts the clock
/// anyway (connections still missing then are counted as errors when the run ends).
pub const CONNECT_PHASE_LIMIT: Duration = Duration::from_secs(30);

/// Descriptors the process needs besides its connections (epoll, stdio, files, a margin).
const SPARE_FDS: u64 = 64;

/// How to load the server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Server address.
    pub addr: SocketAddr,
    /// Paths to GET.
    pub paths: Vec<String>,
    /// Which path each request asks for.
    pub order: Order,
    /// Each path's size, when known: a response with another Content-Length is an error.
    pub sizes: Option<Vec<u64>>,
    /// Connections.
    pub conns: usize,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time before it.
    pub warmup: Duration,
    /// Server process whose CPU time is reported per request.
    pub server_pid: Option<u32>,
    /// TLS on every connection, or plain HTTP.
    pub tls: Option<TlsClient>,
    /// Every request on a connection of its own: connect, (handshake,) one request, close;
    /// latency is then measured from the connect.
    pub conn_per_request: bool,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Responses completed and checked within the window.
    pub requests: u64,
    /// Body bytes within the window.
    pub body_bytes: u64,
    /// Measured window.
    pub elapsed: Duration,
    /// Request-to-last-byte latency.
    pub latency: Latency,
    /// Bad statuses, wrong lengths, resets, failed connects.
    pub errors: u64,
    /// Of `errors`, connects that failed or had not completed when the run ended.
    pub connect_errors: u64,
    /// Of `errors`, responses whose length was not the path's size (or first length seen).
    pub length_errors: u64,
    /// The fewest connections that were up at any moment of the measured window.
    pub conns_held: usize,
    /// Generator CPU during the window.
    pub client_cpu: Duration,
    /// Server CPU during the window, when its pid was given.
    pub server_cpu: Option<Duration>,
    /// TLS handshakes completed within the window that were full (no resumption).
    pub handshakes_full: u64,
    /// TLS handshakes completed within the window that resumed a session.
    pub handshakes_resumed: u64,
    /// Of `errors`, TLS failures: handshakes refused, certificates not trusted, bad records.
    pub tls_errors: u64,
    /// The first TLS failure, in rustls' words.
    pub first_tls_error: Option<String>,
    /// What the first completed handshake negotiated ([`TlsStream::describe`]).
    pub tls_session: Option<String>,
}

impl Outcome {
    /// Requests per second.
    pub fn rps(&self) -> f64 {
        per_sec(self.requests, self.elapsed)
    }

    /// Body megabytes per second.
    pub fn mb_per_sec(&self) -> f64 {
        per_sec(self.body_bytes, self.elapsed) / 1e6
    }

    /// Server CPU microseconds per request.
    pub fn server_us_per_req(&self) -> Option<f64> {
        cpu_us_per(self.server_cpu, self.requests)
    }

    /// TLS handshakes completed within the window, full and resumed.
    pub fn handshakes(&self) -> u64 {
        self.handshakes_full + self.handshakes_resumed
    }

    /// TLS handshakes per second.
    pub fn handshakes_per_sec(&self) -> f64 {
        per_sec(self.handshakes(), self.elapsed)
    }

    /// Server CPU microseconds per TLS handshake (with the request each one carried, when
    /// every request has a connection of its own).
    pub fn server_us_per_handshake(&self) -> Option<f64> {
        if self.handshakes() == 0 {
            return None;
        }
        cpu_us_per(self.server_cpu, self.handshakes())
    }

    /// JSON object text.
    pub fn json(&self) -> String {
        format!(
            "{{\"requests\":{},\"secs\":{:.3},\"rps\":{:.0},\"mb_per_s\":{:.2},\"latency\":{},\"errors\":{},\"connect_errors\":{},\"length_errors\":{},\"conns_held\":{},\"client_cpu_s\":{:.3},\"server_us_per_req\":{},\"handshakes_full\":{},\"handshakes_resumed\":{},\"server_us_per_handshake\":{},\"tls_errors\":{},\"tls\":{}}}",
            self.requests,
            self.elapsed.as_secs_f64(),
            self.rps(),
            self.mb_per_sec(),
            self.latency.json(),
            self.errors,
            self.connect_errors,
            self.length_errors,
            self.conns_held,
            self.client_cpu.as_secs_f64(),
            self.server_us_per_req().map_or("null".into(), |v| format!("{v:.3}")),
            self.handshakes_full,
            self.handshakes_resumed,
            self.server_us_per_handshake()
                .map_or("null".into(), |v| format!("{v:.3}")),
            self.tls_errors,
            self.tls_session
                .as_ref()
                .map_or("null".into(), |t| format!("\"{}\"", t.replace('"', "'"))),
        )
    }

    /// The TLS figures, for a TLS run: what was negotiated, and with `handshake_rate` (a
    /// connection per request, where the server's CPU goes to handshakes) the handshakes
    /// and their cost.
    pub fn tls_table(&self, handshake_rate: bool) -> String {
        let negotiated = format!(
            "TLS: {}\n",
            self.tls_session
                .as_deref()
                .unwrap_or("no handshake completed")
        );
        let first_error = self
            .first_tls_error
            .as_ref()
            .map_or(String::new(), |e| format!("first TLS error: {e}\n"));
        if !handshake_rate {
            return format!("{negotiated}TLS errors: {}\n{first_error}", self.tls_errors);
        }
        let resumed_share = self.handshakes_resumed as f64 / self.handshakes().max(1) as f64;
        format!(
            "{negotiated}\n\
             | handshakes/s | full | resumed | resumed share | server CPU µs/handshake | TLS errors |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: |\n\
             | {} | {} | {} | {:.1}% | {} | {} |\n{first_error}",
            thousands(self.handshakes_per_sec()),
            thousands(self.handshakes_full as f64),
            thousands(self.handshakes_resumed as f64),
            resumed_share * 100.0,
            self.server_us_per_handshake()
                .map_or("-".into(), |v| format!("{v:.1}")),
            self.tls_errors,
        )
    }

    /// The human table.
    pub fn table(&self) -> String {
        format!(
            "| requests/s | MB/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/req | errors | connect errors | conns held |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n\
             | {} | {:.1} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |\n",
            thousands(self.rps()),
            self.mb_per_sec(),
            self.latency.p50_us,
            self.latency.p99_us,
            self.latency.p999_us,
            self.server_us_per_req()
                .map_or("-".into(), |v| format!("{v:.1}")),
            self.errors,
            self.connect_errors,
            self.conns_held,
        )
    }
}

/// Parses a complete response head: (status, content length).
pub fn parse_head(head: &[u8]) -> Option<(u16, u64)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    let mut len = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok();
            }
        }
    }
    Some((status, len.unwrap_or(0)))
}

/// The longest response head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// Where a response stands.
#[derive(Debug, Default)]
struct Response {
    /// Head bytes so far, while the head is split over reads.
    head: Vec<u8>,
    /// Body bytes still to come, once the head is parsed.
    body_left: Option<u64>,
    body_len: u64,
}

/// What a read did to a response.
#[derive(Debug, PartialEq)]
enum Feed {
    /// More bytes are due.
    More,
    /// The response ended exactly at the end of the bytes fed.
    Complete,
    /// Not a good response: bad head, status other than 200/206, or bytes past its body.
    Bad,
}

fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
}

impl Response {
    /// Takes the next bytes of the connection's stream. Closed loop at depth 1: nothing may
    /// follow the body.
    fn feed(&mut self, mut data: &[u8]) -> Feed {
        if self.body_left.is_none() {
            // The head is searched in place when it arrives whole (the usual case), so that
            // body bytes read with it are not copied.
            let parsed = if self.head.is_empty() {
                match head_end(data) {
                    Some(end) => {
                        let p = parse_head(&data[..end]);
                        data = &data[end..];
                        p
                    }
                    None => {
                        self.head.extend_from_slice(data);
                        return self.head_pending();
                    }
                }
            } else {
                let from = self.head.len().saturating_sub(3);
                self.head.extend_from_slice(data);
                match head_end(&self.head[from..]) {
                    Some(end) => {
                        let end = from + end;
                        let body_here = self.head.len() - end;
                        data = &data[data.len() - body_here..];
                        parse_head(&self.head[..end])
                    }
                    None => return self.head_pending(),
                }
            };
            match parsed {
                Some((200 | 206, len)) => {
                    self.body_left = Some(len);
                    self.body_len = len;
                }
                _ => return Feed::Bad,
            }
        }
        let left = self.body_left.unwrap_or(0);
        let Some(rest) = left.checked_sub(data.len() as u64) else {
            return Feed::Bad;
        };
        self.body_left = Some(rest);
        if rest == 0 {
            Feed::Complete
        } else {
            Feed::More
        }
    }

    fn head_pending(&self) -> Feed {
        if self.head.len() > MAX_HEAD {
            Feed::Bad
        } else {
            Feed::More
        }
    }
}

/// The ephemeral port range from `ip_local_port_range` ("32768\t60999").
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    (hi >= lo && lo > 0).then_some((lo, hi))
}

/// Usable ports per source address in `range`: 70% of it, leaving room for sockets in
/// TIME_WAIT and other users of the machine.
pub fn ports_per_source((lo, hi): (u16, u16)) -> usize {
    ((usize::from(hi - lo) + 1) * 7 / 10).max(1)
}

/// Source addresses needed for `conns` connections at `per_source` ports each.
pub fn source_count(conns: usize, per_source: usize) -> usize {
    conns.div_ceil(per_source.max(1)).max(1)
}

/// The `k`th client source address in 127.0.0.0/8: 127.0.0.1, 127.0.0.2, ..., skipping
/// addresses ending in .0 and .255.
pub fn source_addr(k: usize) -> Ipv4Addr {
    let k = k % (254 * 65536);
    let low = (k % 254) as u8 + 1;
    let mid = (k / 254) % 256;
    let high = k / (254 * 256);
    Ipv4Addr::new(127, high as u8, mid as u8, low)
}

/// The port after `port` in `lo..=hi`, wrapping.
pub fn next_port(port: u16, (lo, hi): (u16, u16)) -> u16 {
    if port >= hi || port < lo {
        lo
    } else {
        port + 1
    }
}

/// Where connections to one target bind: source addresses, each with a cursor walking the
/// ephemeral port range. Ports are chosen here because bind() with port 0 searches the range
/// for a free port under the kernel's locks: with 10,000 sockets bound it cost 0.7 ms a call
/// (7.5 s for 10,000 connects) and stalled the connect phase past servers' header timeouts.
struct Binder {
    range: (u16, u16),
    /// Per source address, the last port tried.
    cursors: Vec<(Ipv4Addr, u16)>,
}

/// Ports tried per connect before the connect counts as failed (EADDRINUSE: the port is
/// bound by another socket of this machine).
const BIND_TRIES: usize = 64;

impl Binder {
    /// Binding for `conns` connections to `target`; None (let connect pick) for targets
    /// outside 127.0.0.0/8.
    fn new(target: SocketAddr, conns: usize) -> Option<Self> {
        let SocketAddr::V4(a) = target else {
            return None;
        };
        if !a.ip().is_loopback() {
            return None;
        }
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| parse_port_range(&r))
            .unwrap_or((32768, 60999));
        let span = usize::from(range.1 - range.0) + 1;
        // Start each run somewhere else in the range: the last run's ports may still be in
        // TIME_WAIT (reusable on loopback, but a fresh port needs no check at all).
        let seed = std::process::id() as usize ^ (self_cpu().subsec_nanos() as usize);
        let cursors = (0..source_count(conns, ports_per_source(range)))
            .map(|k| {
                let start = range.0 + ((seed.wrapping_mul(7919) + k * 4099) % span) as u16;
                (source_addr(k), start)
            })
            .collect();
        Some(Self { range, cursors })
    }

    /// Binds `sock` for connection `i`: its source address, the next free port there.
    fn bind(&mut self, sock: &OwnedFd, i: usize) -> Result<(), Errno> {
        let n = self.cursors.len();
        let (src, cursor) = &mut self.cursors[i % n];
        let mut last = Errno::ADDRINUSE;
        for _ in 0..BIND_TRIES {
            *cursor = next_port(*cursor, self.range);
            match rustix::net::bind(sock, &SocketAddr::from((*src, *cursor))) {
                Ok(()) => return Ok(()),
                Err(e @ Errno::ADDRINUSE) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }
}

/// How many local ports a run may hold at once: one per connection; with a new connection
/// per request, every port it closed stays in TIME_WAIT for a minute, so enough sources for
/// a minute of 5,000 connections a second.
fn bound_sockets(cfg: &Config) -> usize {
    if cfg.conn_per_request {
        cfg.conns.max(CHURN_PORTS)
    } else {
        cfg.conns
    }
}

/// Ports for a minute of connections at 5,000 a second ([`bound_sockets`]).
const CHURN_PORTS: usize = 5_000 * 60;

/// Fails early, with the limit named, when RLIMIT_NOFILE cannot hold `conns` sockets.
fn check_fd_limit(conns: usize) -> Result<(), String> {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let need = conns as u64 + SPARE_FDS;
    match lim.current {
        Some(cur) if cur < need => Err(format!(
            "{conns} connections need RLIMIT_NOFILE of at least {need}; the soft limit is {cur} \
             (hard {}): raise the hard limit (ulimit -Hn, or LimitNOFILE=)",
            lim.maximum.map_or("unlimited".into(), |m| m.to_string())
        )),
        _ => Ok(()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// In the connect queue (not yet connected, or waiting after a failure).
    Queued,
    /// Nonblocking connect in progress.
    Connecting,
    /// A request is out.
    Busy,
    /// Up, with no request out: connected while the others still connect, or answered once
    /// ([`hold_idle`]).
    Idle,
}

struct Conn {
    sock: Option<OwnedFd>,
    state: State,
    /// Its place in the paths, for [`Order::Cycle`].
    cursor: usize,
    /// The path of the request out.
    path: usize,
    /// Bytes of the current request sent (plain HTTP; TLS queues it whole).
    sent: usize,
    /// Where its latency is measured from: the request's send, or the connect with
    /// [`Config::conn_per_request`].
    started: Instant,
    resp: Response,
    /// Its first connect has succeeded or failed.
    tried: bool,
    /// The TLS side, while connected with `--tls`.
    tls: Option<TlsStream>,
    /// Its TLS handshake has been counted (once per connection).
    handshake_noted: bool,
}

/// What a connection's response bytes came to.
#[derive(Debug, PartialEq)]
enum Flow {
    /// More is due.
    More,
    /// The response is complete, checked and counted: the connection's next step is due.
    Done,
    /// The connection failed, was closed and queued to connect again.
    Failed,
}

/// The measured window, once it is set.
struct Window {
    start: Instant,
    end: Instant,
    opened: bool,
}

struct Generator<'a> {
    cfg: &'a Config,
    ep: OwnedFd,
    conns: Vec<Conn>,
    /// The request for each path, formatted once.
    requests: Vec<Vec<u8>>,
    /// Per path, the body length expected: its size when given, else that of its first
    /// response.
    lengths: Vec<Option<u64>>,
    /// Chooses each request's path.
    picker: Picker,
    /// Connections to (re)connect, each with the earliest time to do it.
    queue: VecDeque<(Instant, usize)>,
    binder: Option<Binder>,
    connecting: usize,
    connected: usize,
    idle: usize,
    /// Connections whose first connect has succeeded or failed.
    tried: usize,
    /// Stop after one response per connection.
    one_shot: bool,
    /// The connect phase is over: connections send requests as soon as they are up.
    started: bool,
    window: Option<Window>,
    hist: Histogram<u64>,
    out: Outcome,
    buf: Vec<u8>,
}

const EVENTS: epoll::EventFlags = epoll::EventFlags::IN
    .union(epoll::EventFlags::OUT)
    .union(epoll::EventFlags::ET);

impl<'a> Generator<'a> {
    fn new(cfg: &'a Config, one_shot: bool) -> Result<Self, String> {
        if cfg.paths.is_empty() {
            return Err("no paths to request".into());
        }
        if cfg.conns == 0 {
            return Err("--conns must be at least 1".into());
        }
        check_fd_limit(cfg.conns)?;
        let now = Instant::now();
        Ok(Self {
            cfg,
            ep: epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| format!("epoll: {e}"))?,
            conns: (0..cfg.conns)
                .map(|i| Conn {
                    sock: None,
                    state: State::Queued,
                    cursor: i % cfg.paths.len(),
                    path: 0,
                    sent: 0,
                    started: now,
                    resp: Response::default(),
                    tried: false,
                    tls: None,
                    handshake_noted: false,
                })
                .collect(),
            requests: cfg
                .paths
                .iter()
                .map(|p| {
                    format!(
                        "GET {p} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ringwork-bench\r\n\r\n",
                        cfg.addr
                    )
                    .into_bytes()
                })
                .collect(),
            lengths: match &cfg.sizes {
                Some(sizes) if sizes.len() == cfg.paths.len() => {
                    sizes.iter().copied().map(Some).collect()
                }
                Some(_) => return Err("one size per path".into()),
                None => vec![None; cfg.paths.len()],
            },
            picker: Picker::new(cfg.paths.len(), cfg.order),
            queue: (0..cfg.conns).map(|i| (now, i)).collect(),
            binder: Binder::new(cfg.addr, bound_sockets(cfg)),
            connecting: 0,
            connected: 0,
            idle: 0,
            tried: 0,
            one_shot,
            started: false,
            window: None,
            hist: latency_histogram(),
            out: Outcome::default(),
            buf: vec![0u8; 128 * 1024],
        })
    }

    /// Starts queued connects whose time has come, up to [`CONNECT_BATCH`] in flight.
    fn start_connects(&mut self, now: Instant) -> Result<(), String> {
        while self.connecting < CONNECT_BATCH {
            match self.queue.front() {
                Some(&(at, i)) if at <= now => {
                    self.queue.pop_front();
                    self.open(i, now)?;
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// A nonblocking socket bound to connection `i`'s source address, connecting.
    fn socket(&mut self, i: usize) -> Result<OwnedFd, Errno> {
        let family = match self.cfg.addr {
            SocketAddr::V4(_) => AddressFamily::INET,
            SocketAddr::V6(_) => AddressFamily::INET6,
        };
        let sock = rustix::net::socket_with(
            family,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )?;
        rustix::net::sockopt::set_tcp_nodelay(&sock, true)?;
        if let Some(binder) = &mut self.binder {
            // A port in TIME_WAIT from an earlier connection may be bound again only with
            // SO_REUSEADDR (connect then checks the four-tuple, which loopback may reuse).
            rustix::net::sockopt::set_socket_reuseaddr(&sock, true)?;
            binder.bind(&sock, i)?;
        }
        match rustix::net::connect(&sock, &self.cfg.addr) {
            Ok(()) | Err(Errno::INPROGRESS) => Ok(sock),
            Err(e) => Err(e),
        }
    }

    fn open(&mut self, i: usize, now: Instant) -> Result<(), String> {
        match self.socket(i) {
            Ok(sock) => {
                // Readiness that is already there is reported at once: a connect that
                // completed immediately still gets its OUT event.
                epoll::add(&self.ep, &sock, epoll::EventData::new_u64(i as u64), EVENTS)
                    .map_err(|e| format!("epoll_ctl: {e}"))?;
                let tls = match &self.cfg.tls {
                    Some(client) => Some(client.connect(i)?),
                    None => None,
                };
                let c = &mut self.conns[i];
                c.sock = Some(sock);
                c.tls = tls;
                c.handshake_noted = false;
                c.started = now;
                c.state = State::Connecting;
                self.connecting += 1;
            }
            Err(_) => {
                self.conns[i].state = State::Connecting;
                self.connecting += 1;
                self.fail(i, now);
            }
        }
        Ok(())
    }

    /// Closes connection `i` after a failure and queues it to connect again.
    fn fail(&mut self, i: usize, now: Instant) {
        let c = &self.conns[i];
        match c.state {
            State::Connecting => {
                self.connecting -= 1;
                self.out.connect_errors += 1;
                self.mark_tried(i);
            }
            State::Busy => self.connected -= 1,
            State::Idle => {
                self.connected -= 1;
                self.idle -= 1;
            }
            State::Queued => return,
        }
        let c = &mut self.conns[i];
        // Closing the socket takes it out of the epoll set.
        c.sock = None;
        c.tls = None;
        c.state = State::Queued;
        self.out.errors += 1;
        self.queue.push_back((now + RETRY_DELAY, i));
    }

    /// [`Generator::fail`] for a TLS failure, which the outcome also counts apart.
    fn fail_tls(&mut self, i: usize, why: String) {
        self.out.tls_errors += 1;
        self.out.first_tls_error.get_or_insert(why);
        self.fail(i, Instant::now());
    }

    /// Closes connection `i`, whose one request was answered ([`Config::conn_per_request`]),
    /// and queues it to connect again at once.
    fn reconnect(&mut self, i: usize, now: Instant, tls: Option<&mut TlsStream>) {
        let c = &mut self.conns[i];
        if let (Some(t), Some(sock)) = (tls, &c.sock) {
            t.close(sock);
        }
        c.sock = None;
        c.tls = None;
        c.state = State::Queued;
        self.connected -= 1;
        self.queue.push_back((now, i));
    }

    /// Whether `now` is within the measured window.
    fn in_window(&self, now: Instant) -> bool {
        self.window
            .as_ref()
            .is_some_and(|w| now >= w.start && now < w.end)
    }

    fn mark_tried(&mut self, i: usize) {
        if !self.conns[i].tried {
            self.conns[i].tried = true;
            self.tried += 1;
        }
    }

    /// Sends connection `i`'s next request.
    fn request(&mut self, i: usize, now: Instant) -> Result<(), Errno> {
        // Out for the call, so that the TLS and plain paths share `request_over`; it never
        // closes the connection.
        let mut tls = self.conns[i].tls.take();
        let sent = self.request_over(i, now, tls.as_mut());
        self.conns[i].tls = tls;
        sent
    }

    /// Sends connection `i`'s next request, over `tls` (the connection's own, taken out of
    /// it by the caller) or plain.
    fn request_over(
        &mut self,
        i: usize,
        now: Instant,
        tls: Option<&mut TlsStream>,
    ) -> Result<(), Errno> {
        let c = &mut self.conns[i];
        c.path = self.picker.next(&mut c.cursor);
        c.sent = 0;
        if !self.cfg.conn_per_request {
            c.started = now;
        }
        c.resp = Response::default();
        c.state = State::Busy;
        match (tls, &c.sock) {
            (Some(t), Some(sock)) => {
                t.queue(&self.requests[c.path]);
                t.send(sock)
            }
            _ => self.flush(i),
        }
    }

    /// Sends what is left of connection `i`'s request (plain) or its TLS records, as far
    /// as the socket takes them.
    fn flush(&mut self, i: usize) -> Result<(), Errno> {
        let c = &mut self.conns[i];
        let Some(sock) = &c.sock else { return Ok(()) };
        if let Some(t) = &mut c.tls {
            return t.send(sock);
        }
        let req = &self.requests[c.path];
        while c.state == State::Busy && c.sent < req.len() {
            match rustix::net::send(sock, &req[c.sent..], rustix::net::SendFlags::NOSIGNAL) {
                Ok(n) => c.sent += n,
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn on_event(&mut self, i: usize, flags: epoll::EventFlags) {
        let now = Instant::now();
        match self.conns[i].state {
            // A stale event for a socket closed earlier in this batch.
            State::Queued => {}
            State::Connecting => {
                let Some(sock) = &self.conns[i].sock else {
                    return;
                };
                let failed = epoll::EventFlags::ERR | epoll::EventFlags::HUP;
                if !flags.intersects(failed | epoll::EventFlags::OUT) {
                    // Not a connect's outcome (SO_ERROR would read 0 while it is pending).
                    return;
                }
                let outcome = if flags.intersects(failed) {
                    Err(Errno::CONNREFUSED)
                } else {
                    rustix::net::sockopt::socket_error(sock).unwrap_or(Err(Errno::NOTCONN))
                };
                match outcome {
                    Ok(()) => {
                        self.connecting -= 1;
                        self.connected += 1;
                        self.mark_tried(i);
                        // TLS: the ClientHello (plain: nothing is out yet).
                        if self.flush(i).is_err() {
                            self.fail(i, now);
                            return;
                        }
                        if !self.started {
                            // Requests wait for the others: a server busy answering the
                            // first connections may accept the rest slowly, and the connect
                            // phase would drag on and overflow its backlog.
                            self.conns[i].state = State::Idle;
                            self.idle += 1;
                            return;
                        }
                        if self.request(i, now).is_err() {
                            self.fail(i, now);
                            return;
                        }
                        self.read(i);
                    }
                    Err(_) => self.fail(i, now),
                }
            }
            State::Busy | State::Idle => {
                if self.flush(i).is_err() {
                    self.fail(i, now);
                    return;
                }
                self.read(i);
            }
        }
    }

    /// Reads connection `i` until the socket is drained (edge-triggered), completing
    /// responses and sending the next requests.
    fn read(&mut self, i: usize) {
        // The shared buffer is out for the call, so that the bytes read can be handed to
        // methods of the generator.
        let mut buf = std::mem::take(&mut self.buf);
        match self.conns[i].tls.take() {
            None => self.read_plain(i, &mut buf),
            Some(mut tls) => {
                self.read_tls(i, &mut tls, &mut buf);
                // Still this connection's unless it failed or closed meanwhile (a new
                // connection is only opened from the connect queue, later).
                if self.conns[i].sock.is_some() {
                    self.conns[i].tls = Some(tls);
                }
            }
        }
        self.buf = buf;
    }

    /// Reads one socket read's worth; `None`: nothing more now, or the connection failed.
    fn read_socket(&mut self, i: usize, buf: &mut [u8]) -> Option<usize> {
        loop {
            let sock = self.conns[i].sock.as_ref()?;
            match rustix::io::read(sock, &mut *buf) {
                Ok(0) => break,
                Ok(n) => return Some(n),
                Err(Errno::AGAIN) => return None,
                Err(Errno::INTR) => continue,
                Err(_) => break,
            }
        }
        // The server closed or reset: a response, if one was due, is cut short.
        self.fail(i, Instant::now());
        None
    }

    fn read_plain(&mut self, i: usize, buf: &mut [u8]) {
        while let Some(n) = self.read_socket(i, buf) {
            match self.take_response_bytes(i, &buf[..n]) {
                Flow::More => {}
                Flow::Failed => return,
                Flow::Done => {
                    if !self.after_response(i, None) {
                        return;
                    }
                }
            }
        }
    }

    /// Reads connection `i`'s records, answers its handshake, and takes the plaintext as
    /// responses. `tls` is the connection's, taken out of it for the call.
    fn read_tls(&mut self, i: usize, tls: &mut TlsStream, buf: &mut [u8]) {
        while let Some(n) = self.read_socket(i, buf) {
            let mut data = &buf[..n];
            while !data.is_empty() {
                if let Err(e) = tls.receive(&mut data) {
                    return self.fail_tls(i, e.to_string());
                }
                self.note_handshake(i, tls);
                // Handshake messages (the client's Finished), and a request queued while
                // the handshake went on.
                let Some(sock) = &self.conns[i].sock else {
                    return;
                };
                if let Err(e) = tls.send(sock) {
                    return self.fail_tls(i, format!("send: {e}"));
                }
                if !self.take_plaintext(i, tls) {
                    return;
                }
            }
        }
    }

    /// Takes the plaintext `tls` has decrypted as response bytes; false when the connection
    /// is no longer up (failed, or closed after its one request).
    fn take_plaintext(&mut self, i: usize, tls: &mut TlsStream) -> bool {
        loop {
            let flow = match tls.plaintext() {
                Ok(None) => return true,
                Ok(Some([])) => {
                    // close_notify: the server ended the connection, mid-response or
                    // while none was due.
                    self.fail(i, Instant::now());
                    return false;
                }
                Ok(Some(bytes)) => {
                    let len = bytes.len();
                    let flow = self.take_response_bytes(i, bytes);
                    tls.consume(len);
                    flow
                }
                Err(e) => {
                    self.fail_tls(i, e.to_string());
                    return false;
                }
            };
            match flow {
                Flow::More => {}
                Flow::Failed => return false,
                Flow::Done => {
                    if !self.after_response(i, Some(tls)) {
                        return false;
                    }
                }
            }
        }
    }

    /// Counts connection `i`'s handshake once it is done: full or resumed, when within the
    /// window; the first one's parameters for the report.
    fn note_handshake(&mut self, i: usize, tls: &TlsStream) {
        if self.conns[i].handshake_noted {
            return;
        }
        let Some(kind) = tls.handshake() else {
            return;
        };
        self.conns[i].handshake_noted = true;
        if self.out.tls_session.is_none() {
            self.out.tls_session = Some(tls.describe());
        }
        if self.in_window(Instant::now()) {
            match kind {
                Handshake::Full => self.out.handshakes_full += 1,
                Handshake::Resumed => self.out.handshakes_resumed += 1,
            }
        }
    }

    /// Takes bytes of connection `i`'s response: checks and counts it once complete.
    fn take_response_bytes(&mut self, i: usize, data: &[u8]) -> Flow {
        let c = &mut self.conns[i];
        if c.state != State::Busy {
            // Bytes nobody asked for.
            self.fail(i, Instant::now());
            return Flow::Failed;
        }
        match c.resp.feed(data) {
            Feed::More => Flow::More,
            Feed::Bad => {
                self.fail(i, Instant::now());
                Flow::Failed
            }
            Feed::Complete => {
                let now = Instant::now();
                let len = c.resp.body_len;
                let expected = *self.lengths[c.path].get_or_insert(len);
                if expected != len {
                    self.out.length_errors += 1;
                    self.fail(i, now);
                    return Flow::Failed;
                }
                let started = c.started;
                if self.in_window(now) {
                    self.out.requests += 1;
                    self.out.body_bytes += len;
                    let _ = self
                        .hist
                        .record(now.duration_since(started).as_nanos().max(1) as u64);
                }
                Flow::Done
            }
        }
    }

    /// Connection `i`'s next step after a complete response: idle ([`hold_idle`]), closed
    /// and queued again ([`Config::conn_per_request`]), or its next request. False when
    /// the connection is no longer up.
    fn after_response(&mut self, i: usize, tls: Option<&mut TlsStream>) -> bool {
        let now = Instant::now();
        if self.one_shot {
            self.conns[i].state = State::Idle;
            self.idle += 1;
            return true;
        }
        if self.cfg.conn_per_request {
            self.reconnect(i, now, tls);
            return false;
        }
        if self.request_over(i, now, tls).is_err() {
            self.fail(i, now);
            return false;
        }
        true
    }

    /// Ends the connect phase: every connection that is up sends its first request.
    fn begin(&mut self) {
        self.started = true;
        let now = Instant::now();
        for i in 0..self.conns.len() {
            if self.conns[i].state == State::Idle {
                self.idle -= 1;
                // Latency from a connect (conn_per_request) counts from now for connections
                // that waited for the others.
                self.conns[i].started = now;
                if self.request(i, now).is_err() {
                    // Counted as up and busy, so that `fail` takes it down once.
                    self.fail(i, now);
                }
            }
        }
    }

    /// One round of the event loop: start due connects, wait up to 5 ms, handle events.
    fn turn(&mut self, events: &mut Vec<epoll::Event>) -> Result<(), String> {
        self.start_connects(Instant::now())?;
        events.clear();
        let ts = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 5_000_000,
        };
        match epoll::wait(&self.ep, rustix::buffer::spare_capacity(events), Some(&ts)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(format!("epoll_wait: {e}")),
        }
        for ev in events.iter() {
            self.on_event(ev.data.u64() as usize, ev.flags);
        }
        Ok(())
    }

    /// Connects still pending when the run ends never came up: errors too.
    fn count_missing(&mut self) {
        self.out.errors += self.connecting as u64;
        self.out.connect_errors += self.connecting as u64;
    }
}

/// Runs the load on one thread (HTTP responses are large enough that one generator thread
/// keeps a file server busy on this class of machine).
pub fn run(cfg: &Config) -> Result<Outcome, String> {
    let mut g = Generator::new(cfg, false)?;
    let mut events = Vec::with_capacity(1024);
    let connect_deadline = Instant::now() + CONNECT_PHASE_LIMIT;
    let (mut client0, mut server0) = (Duration::ZERO, None);
    g.out.conns_held = cfg.conns;
    loop {
        let now = Instant::now();
        // Every first connect has come up or failed (failed ones retry in the background and
        // count as errors), or the connect phase ran out of time.
        if g.window.is_none() && (g.tried == cfg.conns || now >= connect_deadline) {
            g.begin();
            let start = now + cfg.warmup;
            g.window = Some(Window {
                start,
                end: start + cfg.duration,
                opened: false,
            });
        }
        if let Some(w) = &mut g.window {
            if now >= w.end {
                break;
            }
            if !w.opened && now >= w.start {
                w.opened = true;
                client0 = self_cpu();
                server0 = cfg.server_pid.and_then(cpu_time);
            }
        }
        if g.window.as_ref().is_some_and(|w| w.opened) {
            g.out.conns_held = g.out.conns_held.min(g.connected);
        }
        g.turn(&mut events)?;
    }
    g.count_missing();
    let mut out = std::mem::take(&mut g.out);
    out.elapsed = cfg.duration;
    out.client_cpu = self_cpu().saturating_sub(client0);
    out.server_cpu = match (cfg.server_pid.and_then(cpu_time), server0) {
        (Some(b), Some(a)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    out.latency = Latency::from_histogram(&g.hist);
    Ok(out)
}

/// Opens `cfg.conns` keep-alive connections, completes one request on each (so the server
/// has set each one up), and calls `hold` while all of them are open and idle; they close
/// after it returns. Returns what `hold` returned and the errors met on the way (failed
/// connects and bad responses, each retried; connections not idle after
/// [`CONNECT_PHASE_LIMIT`] count too). `cfg.duration` and `cfg.warmup` are not used.
pub fn hold_idle<T>(cfg: &Config, hold: impl FnOnce() -> T) -> Result<(T, u64), String> {
    let mut g = Generator::new(cfg, true)?;
    let mut events = Vec::with_capacity(1024);
    let deadline = Instant::now() + CONNECT_PHASE_LIMIT;
    while Instant::now() < deadline {
        if !g.started && g.tried == cfg.conns {
            g.begin();
        }
        if g.started && g.idle == cfg.conns {
            break;
        }
        g.turn(&mut events)?;
    }
    let answered = if g.started { g.idle } else { 0 };
    let missing = (cfg.conns - answered) as u64;
    let value = hold();
    Ok((value, g.out.errors + missing))
}

/// `ringwork-bench http`'s options.
#[derive(clap::Args)]
pub struct Args {
    /// Base URL, e.g. http://127.0.0.1:8080/ (paths are appended).
    #[arg(long, default_value = "http://127.0.0.1:8080/")]
    url: String,
    /// Paths to request in turn, comma-separated [default: the URL's own path].
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["paths_file", "site"])]
    paths: Vec<String>,
    /// A file of URL paths, one a line (`#` comments), requested uniformly at random (or
    /// by --zipf) [default: none: the paths of --paths].
    #[arg(long, value_name = "FILE", conflicts_with = "site")]
    paths_file: Option<PathBuf>,
    /// A directory: every regular file under it, its path relative to DIR as the URL path on
    /// --url's host, requested uniformly at random (or by --zipf); each response's
    /// Content-Length must be the file's size (a mismatch is an error). Symbolic links are
    /// not followed [default: none].
    #[arg(long, value_name = "DIR")]
    site: Option<PathBuf>,
    /// Zipf-distributed requests with exponent S (1: the classic web popularity) over a
    /// ranking of the paths shuffled with --seed, instead of uniform or in turn [default:
    /// none: uniform over --site or --paths-file, in turn over --paths].
    #[arg(long, value_name = "S")]
    zipf: Option<f64>,
    /// Seed of the random draws and the Zipf ranking: the same seed, paths and connections
    /// give the same ranking and draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Connections.
    #[arg(long, default_value_t = 50)]
    conns: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Unmeasured seconds first.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// The server's pid, to report its CPU time per request (default: none).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the result as JSON here too (default: the table only).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Every request on a connection of its own: connect, (TLS handshake,) one GET, close
    /// (after a close_notify with TLS), connect again. Latency is then from the connect to
    /// the response's last byte; with --tls the handshakes per second are reported.
    #[arg(long)]
    new_conn_per_request: bool,
    /// HTTPS: TLS 1.2/1.3 on every connection (rustls on aws-lc-rs, ALPN http/1.1); an
    /// https:// --url means the same. Needs --tls-ca.
    #[arg(long)]
    tls: bool,
    /// PEM certificates to trust: the server's own certificate when it is self-signed, or
    /// the CA that issued it (no system roots are loaded) [default: none; required with
    /// TLS].
    #[arg(long, value_name = "PATH")]
    tls_ca: Option<PathBuf>,
    /// The name the server's certificate is checked against, also sent as SNI [default:
    /// the URL's IP address, checked against the certificate's IP addresses; no SNI].
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
    /// Resumption: each connection slot is a client with a session store of its own, so
    /// that its next connection resumes (TLS 1.3 tickets; TLS 1.2 tickets or session IDs)
    /// [default: no store, every handshake full].
    #[arg(long)]
    tls_resume: bool,
    /// TLS versions offered.
    #[arg(long, value_enum, default_value_t = Versions::Both)]
    tls_version: Versions,
    /// Key exchange groups offered, in order, comma-separated: x25519, x25519mlkem768,
    /// secp256r1, secp384r1 [default: aws-lc-rs' list: x25519mlkem768, secp384r1, x25519,
    /// secp256r1].
    #[arg(long, value_name = "GROUPS", value_delimiter = ',', value_parser = crate::tls::parse_kx)]
    tls_kx: Vec<String>,
}

impl Args {
    /// The TLS options, when the run is TLS (`--tls` or an https:// URL); the TLS flags
    /// without TLS are refused rather than ignored.
    fn tls_options(&self, https: bool) -> Result<Option<TlsOptions>, String> {
        if !(self.tls || https) {
            let stray = [
                ("--tls-ca", self.tls_ca.is_some()),
                ("--tls-server-name", self.tls_server_name.is_some()),
                ("--tls-resume", self.tls_resume),
                ("--tls-version", self.tls_version != Versions::Both),
                ("--tls-kx", !self.tls_kx.is_empty()),
            ];
            return match stray.iter().find(|(_, given)| *given) {
                Some((flag, _)) => Err(format!(
                    "{flag} needs TLS: add --tls or use an https:// --url"
                )),
                None => Ok(None),
            };
        }
        let ca = self.tls_ca.clone().ok_or(
            "TLS needs --tls-ca PATH: the server's certificate (self-signed) or its CA, PEM",
        )?;
        Ok(Some(TlsOptions {
            ca,
            server_name: self.tls_server_name.clone(),
            resume: self.tls_resume,
            versions: self.tls_version,
            kx: self.tls_kx.clone(),
        }))
    }
}

/// `ringwork-bench http`: one run against a running server, its table on stdout.
pub fn run_command(args: Args) -> Result<(), String> {
    ringwork_harness::raise_nofile_limit();
    let (scheme, addr, url_path) = parse_url(&args.url)?;
    let tls = match args.tls_options(scheme == Scheme::Https)? {
        Some(opts) => Some(TlsClient::new(&opts, addr.ip())?.clients(args.conns)),
        None => None,
    };
    let (paths, sizes) = if let Some(dir) = &args.site {
        let files = crate::site::scan(dir)?;
        println!(
            "# site {}: {}",
            dir.display(),
            crate::site::SizeStats::of(files.iter().map(|f| f.size))
        );
        files.into_iter().map(|f| (f.url_path, f.size)).unzip()
    } else if let Some(file) = &args.paths_file {
        (crate::site::read_paths_file(file)?, Vec::new())
    } else if args.paths.is_empty() {
        (vec![url_path], Vec::new())
    } else {
        (args.paths, Vec::new())
    };
    let order = match args.zipf {
        Some(exponent) if exponent.is_finite() && exponent >= 0.0 => Order::Zipf {
            exponent,
            seed: args.seed,
        },
        Some(s) => return Err(format!("--zipf wants a finite exponent >= 0, got {s}")),
        None if args.site.is_some() || args.paths_file.is_some() => {
            Order::Uniform { seed: args.seed }
        }
        None => Order::Cycle,
    };
    let cfg = Config {
        addr,
        order,
        sizes: (!sizes.is_empty()).then_some(sizes),
        paths,
        conns: args.conns,
        duration: Duration::from_secs_f64(args.duration),
        warmup: Duration::from_secs_f64(args.warmup),
        server_pid: args.server_pid,
        tls,
        conn_per_request: args.new_conn_per_request,
    };
    println!("# ringwork-bench http on {}", machine_line());
    if cfg.paths.len() <= 10 {
        println!(
            "# {}: {} conns, paths {:?} {}",
            args.url, cfg.conns, cfg.paths, cfg.order
        );
    } else {
        println!(
            "# {}: {} conns, {} paths {} (seed {})",
            args.url,
            cfg.conns,
            thousands(cfg.paths.len() as f64),
            cfg.order,
            args.seed
        );
    }
    if let Some(line) = connections_line(&cfg) {
        println!("{line}");
    }
    let out = run(&cfg)?;
    print!("{}", out.table());
    if cfg.tls.is_some() {
        print!("\n{}", out.tls_table(cfg.conn_per_request));
    }
    if cfg.sizes.is_some() {
        println!(
            "length mismatches (counted in errors): {}",
            out.length_errors
        );
    }
    if let Some(path) = args.json {
        crate::write_json(&path, &out.json())?;
    }
    if out.errors > 0 {
        return Err(format!("{} bad responses or connection errors", out.errors));
    }
    Ok(())
}

/// "# TLS, no session store (full handshakes), a new connection per request": how the
/// connections are made, when not plain keep-alive.
fn connections_line(cfg: &Config) -> Option<String> {
    let per_request = if cfg.conn_per_request {
        "a new connection per request"
    } else {
        "keep-alive"
    };
    match &cfg.tls {
        Some(tls) if tls.resume => Some(format!(
            "# TLS, a session store per connection slot (resumption), {per_request}"
        )),
        Some(_) => Some(format!(
            "# TLS, no session store (full handshakes), {per_request}"
        )),
        None if cfg.conn_per_request => Some(format!("# {per_request}")),
        None => None,
    }
}

/// A URL's scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

/// `http://HOST:PORT/path` or `https://...` -> (scheme, address, path). Only numeric
/// addresses: the benchmark never resolves names.
fn parse_url(url: &str) -> Result<(Scheme, SocketAddr, String), String> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        return Err(format!(
            "--url must start with http:// or https://, got {url:?}"
        ));
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = host
        .parse()
        .map_err(|e| format!("--url host must be IP:PORT ({host:?}): {e}"))?;
    Ok((scheme, addr, path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::CertPair;
    use std::io::{Read, Write};

    #[test]
    fn urls_parse() {
        let (s, a, p) = parse_url("http://127.0.0.1:8080/x/y.html").unwrap();
        assert_eq!((s, a.port()), (Scheme::Http, 8080));
        assert_eq!(p, "/x/y.html");
        assert_eq!(parse_url("http://127.0.0.1:80").unwrap().2, "/");
        let (s, a, p) = parse_url("https://127.0.0.1:8443/small.bin").unwrap();
        assert_eq!(
            (s, a.port(), p.as_str()),
            (Scheme::Https, 8443, "/small.bin")
        );
        assert_eq!(parse_url("https://[::1]:443").unwrap().1.port(), 443);
        assert!(parse_url("http://localhost:1/").is_err());
        assert!(parse_url("ftp://127.0.0.1:1/").is_err());
        assert!(
            parse_url("HTTPS://127.0.0.1:1/").is_err(),
            "schemes are lower case"
        );
    }

    #[test]
    fn heads_parse() {
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"),
            Some((200, 12))
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 404 Not Found\r\ncontent-length:3\r\n\r\n"),
            Some((404, 3))
        );
        assert_eq!(parse_head(b"garbage\r\n\r\n"), None);
    }

    const OK5: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

    #[test]
    fn responses_complete_however_the_reads_split_them() {
        for cut1 in 0..OK5.len() {
            for cut2 in cut1..OK5.len() {
                let mut r = Response::default();
                let parts = [&OK5[..cut1], &OK5[cut1..cut2], &OK5[cut2..]];
                let feeds: Vec<Feed> = parts.iter().map(|p| r.feed(p)).collect();
                assert_eq!(feeds[2], Feed::Complete, "cuts {cut1} {cut2}: {feeds:?}");
                assert!(feeds[..2].iter().all(|f| *f == Feed::More), "{feeds:?}");
                assert_eq!(r.body_len, 5);
            }
        }
    }

    #[test]
    fn bad_responses_are_refused() {
        let mut r = Response::default();
        assert_eq!(
            r.feed(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
            Feed::Bad
        );
        let mut r = Response::default();
        let mut extra = OK5.to_vec();
        extra.push(b'!');
        assert_eq!(r.feed(&extra), Feed::Bad, "a byte past the body");
        let mut r = Response::default();
        assert_eq!(
            r.feed(&[b'x'; MAX_HEAD + 1]),
            Feed::Bad,
            "a head without end"
        );
    }

    #[test]
    fn port_ranges_parse() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("junk"), None);
        assert_eq!(ports_per_source((32768, 60999)), 19_762);
        assert_eq!(ports_per_source((1024, 1024)), 1);
    }

    #[test]
    fn ports_walk_the_range_and_wrap() {
        assert_eq!(next_port(100, (100, 102)), 101);
        assert_eq!(next_port(102, (100, 102)), 100);
        assert_eq!(next_port(7, (100, 102)), 100, "a cursor outside the range");
        let mut p = 100;
        let seen: std::collections::HashSet<u16> = (0..6)
            .map(|_| {
                p = next_port(p, (100, 102));
                p
            })
            .collect();
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn sources_spread_over_127_slash_8_only_when_ports_run_short() {
        assert_eq!(source_count(100, 19_762), 1);
        assert_eq!(source_count(10_000, 19_762), 1);
        assert_eq!(source_count(19_763, 19_762), 2);
        assert_eq!(source_count(50_000, 19_762), 3);
        assert_eq!(source_count(0, 19_762), 1);
        assert_eq!(source_addr(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_addr(1), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(253), Ipv4Addr::new(127, 0, 0, 254));
        assert_eq!(source_addr(254), Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(source_addr(254 * 256), Ipv4Addr::new(127, 1, 0, 1));
        for k in 0..100_000 {
            let a = source_addr(k);
            assert!(a.is_loopback());
            assert!(a.octets()[3] != 0 && a.octets()[3] != 255, "{a}");
        }
        // Nothing bound for targets off loopback.
        assert!(Binder::new("10.0.0.1:80".parse().unwrap(), 10).is_none());
        assert_eq!(
            Binder::new("127.0.0.1:80".parse().unwrap(), 10)
                .unwrap()
                .cursors
                .len(),
            1
        );
        assert_eq!(
            Binder::new("127.0.0.1:80".parse().unwrap(), 45_000)
                .unwrap()
                .cursors
                .iter()
                .map(|c| c.0)
                .collect::<Vec<_>>(),
            [1, 2, 3].map(|d| Ipv4Addr::new(127, 0, 0, d)),
            "with the default 28,232-port range"
        );
    }

    #[test]
    fn binds_skip_ports_in_use() {
        // Two ports, one of them taken: every bind lands on the other.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let mut b = Binder {
            range: (port, port + 1),
            cursors: vec![(Ipv4Addr::LOCALHOST, port + 1)],
        };
        let sock = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
        match b.bind(&sock, 0) {
            Ok(()) => assert_eq!(b.cursors[0].1, port + 1),
            // port + 1 happened to be taken by someone else too.
            Err(e) => assert_eq!(e, Errno::ADDRINUSE),
        }
    }

    /// A tiny keep-alive server answering every request with the same body.
    fn server(body: &'static [u8], status: &'static str) -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { break };
                std::thread::spawn(move || answer(s, body, status));
            }
        });
        addr
    }

    /// Answers every request on `s` with `body` until the client closes.
    fn answer(mut s: impl Read + Write, body: &[u8], status: &str) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while let Ok(n) = s.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                buf.drain(..p + 4);
                // One write: head and body in two small writes would meet Nagle and
                // delayed ACKs (40 ms per response).
                let mut resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                resp.extend_from_slice(body);
                if s.write_all(&resp).and_then(|()| s.flush()).is_err() {
                    return;
                }
            }
        }
    }

    /// [`server`] over TLS with ringwork-files' own configuration
    /// (`ringwork_sys::tls::TlsConfig`: TLS 1.2/1.3, ALPN http/1.1, session IDs and
    /// tickets) and `cert`.
    fn tls_server(body: &'static [u8], cert: &CertPair) -> SocketAddr {
        let files = ringwork_sys::tls::CertFiles {
            cert: cert.cert.clone(),
            key: cert.key.clone(),
        };
        let config = ringwork_sys::tls::TlsConfig::load(&files)
            .unwrap()
            .server_config();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { break };
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                std::thread::spawn(move || {
                    answer(rustls::StreamOwned::new(conn, s), body, "200 OK")
                });
            }
        });
        addr
    }

    fn tls_client(cert: &CertPair, resume: bool, versions: Versions) -> TlsClient {
        let opts = TlsOptions {
            ca: cert.cert.clone(),
            server_name: Some("localhost".into()),
            resume,
            versions,
            kx: Vec::new(),
        };
        TlsClient::new(&opts, [127, 0, 0, 1].into()).unwrap()
    }

    fn tls_config(addr: SocketAddr, tls: TlsClient, conn_per_request: bool) -> Config {
        Config {
            addr,
            paths: vec!["/a".into()],
            order: Order::Cycle,
            sizes: None,
            conns: 4,
            duration: Duration::from_millis(600),
            warmup: Duration::from_millis(100),
            server_pid: Some(std::process::id()),
            tls: Some(tls),
            conn_per_request,
        }
    }

    /// Keep-alive over TLS: every response checked, its bytes counted; a body that spans
    /// records (40,000 bytes: three records at least) arrives whole.
    #[test]
    fn keep_alive_requests_complete_over_tls() {
        let (_dir, cert) = crate::tls::tests::test_cert("http-tls");
        let addr = tls_server(&[7u8; 40_000], &cert);
        let out = run(&tls_config(
            addr,
            tls_client(&cert, false, Versions::Both),
            false,
        ))
        .unwrap();
        assert_eq!((out.errors, out.tls_errors), (0, 0), "{out:?}");
        assert!(out.requests > 20, "{out:?}");
        assert_eq!(out.body_bytes, out.requests * 40_000);
        assert_eq!(out.conns_held, 4);
        let session = out.tls_session.as_deref().unwrap();
        assert!(session.starts_with("TLSv1_3 "), "{session}");
        assert!(session.ends_with("ALPN http/1.1"), "{session}");
    }

    /// A connection per request: every handshake full without a session store, resumed
    /// with one (TLS 1.3 tickets, TLS 1.2 session IDs or tickets).
    #[test]
    fn new_connections_handshake_in_full_or_resume() {
        let (_dir, cert) = crate::tls::tests::test_cert("http-tls-resume");
        let addr = tls_server(b"hello", &cert);
        let full = run(&tls_config(
            addr,
            tls_client(&cert, false, Versions::Both),
            true,
        ))
        .unwrap();
        assert_eq!(full.errors, 0, "{full:?}");
        assert!(full.handshakes_full > 10, "{full:?}");
        assert_eq!(full.handshakes_resumed, 0, "{full:?}");
        // One request per handshake, give or take those across the window's edges.
        assert!(full.requests.abs_diff(full.handshakes()) <= 8, "{full:?}");
        assert!(full.server_us_per_handshake().is_some());
        for versions in [Versions::Tls13, Versions::Tls12] {
            let resumed = run(&tls_config(addr, tls_client(&cert, true, versions), true)).unwrap();
            assert_eq!(resumed.errors, 0, "{versions:?} {resumed:?}");
            assert!(
                resumed.handshakes_resumed > resumed.handshakes_full,
                "{versions:?} {resumed:?}"
            );
            let tls12 = resumed
                .tls_session
                .as_deref()
                .unwrap()
                .starts_with("TLSv1_2");
            assert_eq!(tls12, versions == Versions::Tls12, "{resumed:?}");
        }
    }

    /// A server whose certificate the client does not trust: TLS errors, counted apart,
    /// with rustls' reason; no request completes.
    #[test]
    fn untrusted_certificates_are_tls_errors() {
        let (_dir, cert) = crate::tls::tests::test_cert("http-tls-served");
        let (_other_dir, other) = crate::tls::tests::test_cert("http-tls-other");
        let addr = tls_server(b"hello", &cert);
        let mut cfg = tls_config(addr, tls_client(&other, false, Versions::Both), false);
        cfg.warmup = Duration::ZERO;
        let out = run(&cfg).unwrap();
        assert_eq!(out.requests, 0, "{out:?}");
        assert!(out.tls_errors > 0, "{out:?}");
        assert!(out.errors >= out.tls_errors);
        let why = out.first_tls_error.unwrap();
        assert!(why.contains("invalid peer certificate"), "{why}");
    }

    /// A plain HTTP server where TLS was expected: its answer to the ClientHello is no TLS
    /// record, a TLS error rather than a hang.
    #[test]
    fn plain_servers_are_tls_errors() {
        let (_dir, cert) = crate::tls::tests::test_cert("http-tls-plain");
        // As a plain HTTP server answers bytes that are no request.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { break };
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            }
        });
        let mut cfg = tls_config(addr, tls_client(&cert, false, Versions::Both), false);
        cfg.warmup = Duration::ZERO;
        let out = run(&cfg).unwrap();
        assert_eq!(out.requests, 0, "{out:?}");
        assert!(out.tls_errors > 0, "{out:?}");
    }

    /// `http`'s options, parsed as the command line gives them.
    #[derive(clap::Parser)]
    struct HttpCli {
        #[command(flatten)]
        args: Args,
    }

    fn args(line: &[&str]) -> Result<Args, clap::Error> {
        use clap::Parser as _;
        HttpCli::try_parse_from(std::iter::once("http").chain(line.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn tls_flags_parse_and_need_tls() {
        let a = args(&[
            "--tls",
            "--tls-ca",
            "ca.pem",
            "--tls-resume",
            "--tls-kx",
            "X25519,secp256r1",
        ])
        .unwrap();
        let o = a.tls_options(false).unwrap().unwrap();
        assert_eq!(o.ca, PathBuf::from("ca.pem"));
        assert!(o.resume);
        assert_eq!(o.kx, ["x25519", "secp256r1"]);
        assert_eq!(o.versions, Versions::Both);
        // An https:// URL is TLS without --tls.
        let a = args(&[
            "--url",
            "https://127.0.0.1:1/",
            "--tls-ca",
            "ca.pem",
            "--tls-version",
            "1.2",
        ])
        .unwrap();
        assert_eq!(
            a.tls_options(true).unwrap().unwrap().versions,
            Versions::Tls12
        );
        let e = args(&["--tls"]).unwrap().tls_options(false).unwrap_err();
        assert!(e.contains("--tls-ca"), "{e}");
        let e = args(&["--tls-resume"])
            .unwrap()
            .tls_options(false)
            .unwrap_err();
        assert!(e.contains("--tls-resume needs TLS"), "{e}");
        assert_eq!(args(&[]).unwrap().tls_options(false).unwrap(), None);
        assert!(args(&["--tls-kx", "ffdhe2048"]).is_err());
        assert!(args(&["--tls-version", "1.1"]).is_err());
        assert!(
            args(&["--new-conn-per-request"])
                .unwrap()
                .new_conn_per_request
        );
    }

    #[test]
    fn keep_alive_requests_complete() {
        let cfg = Config {
            addr: server(&[7u8; 5000], "200 OK"),
            paths: vec!["/a".into(), "/b".into()],
            order: Order::Cycle,
            sizes: None,
            conns: 4,
            duration: Duration::from_millis(300),
            warmup: Duration::from_millis(50),
            server_pid: Some(std::process::id()),
            tls: None,
            conn_per_request: false,
        };
        let out = run(&cfg).unwrap();
        assert_eq!(out.errors, 0);
        assert_eq!(out.conns_held, 4);
        assert!(out.requests > 50, "{out:?}");
        assert_eq!(out.body_bytes, out.requests * 5000);
        assert!(out.table().contains("| 0 | 0 | 4 |"), "{}", out.table());
    }

    /// With sizes given (`--site`), a response of another length is an error, counted as a
    /// length mismatch; drawn orders reach every path.
    #[test]
    fn responses_of_another_size_than_the_file_are_errors() {
        let addr = server(&[7u8; 5000], "200 OK");
        let cfg = |sizes: Vec<u64>, order| Config {
            addr,
            paths: vec!["/a".into(), "/b".into()],
            order,
            sizes: Some(sizes),
            conns: 2,
            duration: Duration::from_millis(300),
            warmup: Duration::ZERO,
            server_pid: None,
            tls: None,
            conn_per_request: false,
        };
        let good = run(&cfg(vec![5000, 5000], Order::Uniform { seed: 1 })).unwrap();
        assert_eq!((good.errors, good.length_errors), (0, 0), "{good:?}");
        assert!(good.requests > 20, "{good:?}");
        let zipf = Order::Zipf {
            exponent: 1.0,
            seed: 1,
        };
        let bad = run(&cfg(vec![5000, 4999], zipf)).unwrap();
        assert!(bad.length_errors > 0, "{bad:?}");
        assert!(bad.errors >= bad.length_errors);
        assert!(bad.requests > 0, "/a still answers: {bad:?}");
        assert!(
            run(&cfg(vec![5000], Order::Cycle)).is_err(),
            "one size per path"
        );
    }

    #[test]
    fn error_statuses_count_as_errors() {
        let cfg = Config {
            addr: server(b"nope", "404 Not Found"),
            paths: vec!["/missing".into()],
            order: Order::Cycle,
            sizes: None,
            conns: 1,
            // Long enough for a first response on a loaded machine (100 ms once saw none).
            duration: Duration::from_millis(1000),
            warmup: Duration::ZERO,
            server_pid: None,
            tls: None,
            conn_per_request: false,
        };
        let out = run(&cfg).unwrap();
        assert!(out.errors > 0);
        assert_eq!(out.connect_errors, 0);
        assert_eq!(out.requests, 0);
    }

    #[test]
    fn refused_connects_count_as_errors_without_spinning() {
        // A port nobody listens on: every connect is refused.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let cfg = Config {
            addr,
            paths: vec!["/".into()],
            order: Order::Cycle,
            sizes: None,
            conns: 2,
            duration: Duration::from_millis(300),
            warmup: Duration::ZERO,
            server_pid: None,
            tls: None,
            conn_per_request: false,
        };
        let t0 = Instant::now();
        let out = run(&cfg).unwrap();
        // The clock starts once both first connects have failed, not after the phase limit.
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(out.connect_errors > 0, "{out:?}");
        assert_eq!(out.errors, out.connect_errors);
        assert_eq!(out.requests, 0);
        assert_eq!(out.conns_held, 0);
        // Retries wait RETRY_DELAY: each connection retries about 50 times a second, not
        // thousands of times.
        let bound = 2 * t0.elapsed().as_millis() as u64 / RETRY_DELAY.as_millis() as u64 + 4;
        assert!(out.connect_errors <= bound, "{out:?}");
    }

    #[test]
    fn idle_connections_are_held_while_asked() {
        let addr = server(b"abc", "200 OK");
        let cfg = Config {
            addr,
            paths: vec!["/x".into()],
            order: Order::Cycle,
            sizes: None,
            conns: 300,
            duration: Duration::ZERO,
            warmup: Duration::ZERO,
            server_pid: None,
            tls: None,
            conn_per_request: false,
        };
        let me = std::process::id();
        let fds = || ringwork_harness::proc::fd_targets(me).len();
        let before = fds();
        let (during, errors) = hold_idle(&cfg, fds).unwrap();
        assert_eq!(errors, 0);
        assert!(
            during >= before + 300,
            "{before} fds before, {during} while held"
        );
    }
}
