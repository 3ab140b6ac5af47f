//! `ringwork-bench http`: a keep-alive HTTP/1.1 load generator for file servers.
//!
//! Closed loop: every connection sends one GET, reads the whole response (head, then exactly
//! Content-Length body bytes), and sends the next, cycling through the given paths. Every
//! response must be `200` or `206` and its body length must match Content-Length and, per path,
//! the first length seen; anything else counts as an error and the connection is re-made.
//! Built like the echo generator: edge-triggered epoll, nonblocking sockets, 64 KiB reads.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rustix::event::epoll;
use rustix::io::Errno;

use crate::stats::{
    cpu_us_per, latency_histogram, per_sec, process_cpu, self_cpu, thousands, Latency,
};

/// How to load the server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Server address.
    pub addr: SocketAddr,
    /// Paths to GET, in turn.
    pub paths: Vec<String>,
    /// Connections.
    pub conns: usize,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time before it.
    pub warmup: Duration,
    /// Server process whose CPU time is reported per request.
    pub server_pid: Option<u32>,
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
    /// Bad statuses, wrong lengths, resets.
    pub errors: u64,
    /// Generator CPU during the window.
    pub client_cpu: Duration,
    /// Server CPU during the window, when its pid was given.
    pub server_cpu: Option<Duration>,
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

    /// JSON object text.
    pub fn json(&self) -> String {
        format!(
            "{{\"requests\":{},\"secs\":{:.3},\"rps\":{:.0},\"mb_per_s\":{:.2},\"latency\":{},\"errors\":{},\"client_cpu_s\":{:.3},\"server_us_per_req\":{}}}",
            self.requests,
            self.elapsed.as_secs_f64(),
            self.rps(),
            self.mb_per_sec(),
            self.latency.json(),
            self.errors,
            self.client_cpu.as_secs_f64(),
            self.server_us_per_req().map_or("null".into(), |v| format!("{v:.3}")),
        )
    }

    /// The human table.
    pub fn table(&self) -> String {
        format!(
            "| requests/s | MB/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/req | errors |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n\
             | {} | {:.1} | {:.0} | {:.0} | {:.0} | {} | {} |\n",
            thousands(self.rps()),
            self.mb_per_sec(),
            self.latency.p50_us,
            self.latency.p99_us,
            self.latency.p999_us,
            self.server_us_per_req()
                .map_or("-".into(), |v| format!("{v:.1}")),
            self.errors
        )
    }
}

/// Where a response stands.
#[derive(Debug, Default)]
struct Response {
    head: Vec<u8>,
    /// Body bytes still to come, once the head is parsed.
    body_left: Option<u64>,
    body_len: u64,
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

struct Conn {
    sock: OwnedFd,
    next_path: usize,
    path: usize,
    started: Instant,
    resp: Response,
    /// Unsent request bytes.
    out: Vec<u8>,
}

fn connect(addr: SocketAddr) -> std::io::Result<OwnedFd> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    Ok(OwnedFd::from(s))
}

impl Conn {
    fn request(&mut self, cfg: &Config, now: Instant) {
        self.path = self.next_path;
        self.next_path = (self.next_path + 1) % cfg.paths.len();
        self.out = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ringwork-bench\r\n\r\n",
            cfg.paths[self.path], cfg.addr
        )
        .into_bytes();
        self.started = now;
        self.resp = Response::default();
    }

    fn flush(&mut self) -> Result<(), Errno> {
        while !self.out.is_empty() {
            match rustix::net::send(&self.sock, &self.out, rustix::net::SendFlags::NOSIGNAL) {
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(Errno::AGAIN) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Runs the load on one thread (HTTP responses are large enough that one generator thread
/// keeps a file server busy on this class of machine).
pub fn run(cfg: &Config) -> Result<Outcome, String> {
    if cfg.paths.is_empty() {
        return Err("no paths to request".into());
    }
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| e.to_string())?;
    let flags = epoll::EventFlags::IN | epoll::EventFlags::OUT | epoll::EventFlags::ET;
    let mut conns = Vec::with_capacity(cfg.conns);
    let now = Instant::now();
    for i in 0..cfg.conns {
        let sock = connect(cfg.addr).map_err(|e| format!("connect to {}: {e}", cfg.addr))?;
        epoll::add(&ep, &sock, epoll::EventData::new_u64(i as u64), flags)
            .map_err(|e| e.to_string())?;
        let mut c = Conn {
            sock,
            next_path: i % cfg.paths.len(),
            path: 0,
            started: now,
            resp: Response::default(),
            out: Vec::new(),
        };
        c.request(cfg, now);
        conns.push(c);
    }
    let mut lengths: Vec<Option<u64>> = vec![None; cfg.paths.len()];
    let t0 = Instant::now();
    let warm_end = t0 + cfg.warmup;
    let end = warm_end + cfg.duration;
    let mut hist: Histogram<u64> = latency_histogram();
    let mut out = Outcome {
        elapsed: cfg.duration,
        ..Default::default()
    };
    let (mut client0, mut server0, mut window_started) = (Duration::ZERO, None, false);
    for c in conns.iter_mut() {
        let _ = c.flush();
    }
    let mut events = Vec::with_capacity(512);
    let mut buf = vec![0u8; 64 * 1024];
    let mut broken = Vec::new();
    loop {
        let now = Instant::now();
        if !window_started && now >= warm_end {
            window_started = true;
            client0 = self_cpu();
            server0 = cfg.server_pid.and_then(process_cpu);
        }
        if now >= end {
            break;
        }
        events.clear();
        let ts = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 5_000_000,
        };
        match epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), Some(&ts)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(format!("epoll_wait: {e}")),
        }
        for ev in events.iter() {
            let data = ev.data;
            let i = data.u64() as usize;
            let c = &mut conns[i];
            if c.flush().is_err() {
                broken.push(i);
                continue;
            }
            'read: loop {
                match rustix::io::read(&c.sock, &mut buf) {
                    Ok(0) => {
                        broken.push(i);
                        break;
                    }
                    Ok(n) => {
                        let mut data = &buf[..n];
                        while !data.is_empty() {
                            match c.resp.body_left {
                                None => {
                                    c.resp.head.extend_from_slice(data);
                                    data = &[];
                                    let Some(pos) =
                                        c.resp.head.windows(4).position(|w| w == b"\r\n\r\n")
                                    else {
                                        if c.resp.head.len() > 16 * 1024 {
                                            broken.push(i);
                                            break 'read;
                                        }
                                        continue;
                                    };
                                    let Some((status, len)) = parse_head(&c.resp.head[..pos + 4])
                                    else {
                                        broken.push(i);
                                        break 'read;
                                    };
                                    if status != 200 && status != 206 {
                                        broken.push(i);
                                        break 'read;
                                    }
                                    let extra = c.resp.head.split_off(pos + 4);
                                    c.resp.body_left = Some(len);
                                    c.resp.body_len = len;
                                    // Re-feed what followed the head as body.
                                    let left = len.min(extra.len() as u64);
                                    if extra.len() as u64 > len {
                                        // Bytes past the body: the server sent more than it said.
                                        broken.push(i);
                                        break 'read;
                                    }
                                    c.resp.body_left = Some(len - left);
                                }
                                Some(left) => {
                                    let take = (data.len() as u64).min(left);
                                    if data.len() as u64 > left {
                                        broken.push(i);
                                        break 'read;
                                    }
                                    data = &data[take as usize..];
                                    c.resp.body_left = Some(left - take);
                                }
                            }
                            if c.resp.body_left == Some(0) {
                                let now = Instant::now();
                                let expected = lengths[c.path].get_or_insert(c.resp.body_len);
                                if *expected != c.resp.body_len {
                                    broken.push(i);
                                    break 'read;
                                }
                                if now >= warm_end && now < end {
                                    out.requests += 1;
                                    out.body_bytes += c.resp.body_len;
                                    let _ = hist.record(
                                        now.duration_since(c.started).as_nanos().max(1) as u64,
                                    );
                                }
                                c.request(cfg, now);
                                if c.flush().is_err() {
                                    broken.push(i);
                                    break 'read;
                                }
                            }
                        }
                    }
                    Err(Errno::AGAIN) => break,
                    Err(Errno::INTR) => continue,
                    Err(_) => {
                        broken.push(i);
                        break;
                    }
                }
            }
        }
        for i in broken.drain(..) {
            out.errors += 1;
            let _ = epoll::delete(&ep, &conns[i].sock);
            let sock = connect(cfg.addr).map_err(|e| format!("reconnect: {e}"))?;
            epoll::add(&ep, &sock, epoll::EventData::new_u64(i as u64), flags)
                .map_err(|e| e.to_string())?;
            conns[i].sock = sock;
            let now = Instant::now();
            conns[i].request(cfg, now);
            let _ = conns[i].flush();
        }
    }
    out.client_cpu = self_cpu().saturating_sub(client0);
    out.server_cpu = match (cfg.server_pid.and_then(process_cpu), server0) {
        (Some(b), Some(a)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    out.latency = Latency::from_histogram(&hist);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

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

    /// A tiny keep-alive server answering every request with the same body.
    fn server(body: &'static [u8], status: &'static str) -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { break };
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while let Ok(n) = s.read(&mut chunk) {
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..p + 4);
                            // One write: head and body in two small writes would meet
                            // Nagle and delayed ACKs (40 ms per response).
                            let mut resp = format!(
                                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n",
                                body.len()
                            )
                            .into_bytes();
                            resp.extend_from_slice(body);
                            if s.write_all(&resp).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn keep_alive_requests_complete() {
        let cfg = Config {
            addr: server(&[7u8; 5000], "200 OK"),
            paths: vec!["/a".into(), "/b".into()],
            conns: 4,
            duration: Duration::from_millis(300),
            warmup: Duration::from_millis(50),
            server_pid: Some(std::process::id()),
        };
        let out = run(&cfg).unwrap();
        assert_eq!(out.errors, 0);
        assert!(out.requests > 50, "{out:?}");
        assert_eq!(out.body_bytes, out.requests * 5000);
        assert!(out.table().contains("| 0 |"));
    }

    #[test]
    fn error_statuses_count_as_errors() {
        let cfg = Config {
            addr: server(b"nope", "404 Not Found"),
            paths: vec!["/missing".into()],
            conns: 1,
            // Long enough for a first response on a loaded machine (100 ms once saw none).
            duration: Duration::from_millis(1000),
            warmup: Duration::ZERO,
            server_pid: None,
        };
        let out = run(&cfg).unwrap();
        assert!(out.errors > 0);
        assert_eq!(out.requests, 0);
    }
}
