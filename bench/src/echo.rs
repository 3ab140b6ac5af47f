//! `ringwork-bench echo`: the load generator for echo servers.
//!
//! Closed loop (`--depth D`: every connection keeps D messages outstanding) measures peak
//! throughput; open loop (`--rate R`: R messages/s spread evenly over all connections) measures
//! latency at a fixed load, from each message's *scheduled* send time, so a server that stalls
//! cannot hide it by slowing the generator down (no coordinated omission, as in wrk2).
//!
//! The generator is built to be cheap per message, because on a small machine it competes
//! with the server for CPU: edge-triggered epoll, nonblocking sockets, reads and writes of up
//! to 64 KiB at a time however many messages that covers. Every echoed byte is verified: each
//! connection's stream is a fixed pseudo-random sequence (a window into one shared pattern),
//! so checking is one `memcmp` per read.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rustix::event::epoll;
use rustix::io::Errno;

use ringwork_harness::proc::cpu_time;

use crate::stats::{
    cpu_us_per, latency_histogram, machine_line, per_sec, perf_syscalls, self_cpu, thousands,
    Latency,
};

/// Pattern period: a prime, so connections' windows do not line up with message sizes.
const PERIOD: usize = 65_521;
/// Largest single read or write.
const CHUNK: usize = 64 * 1024;
/// An open-loop send this far behind its scheduled time is counted as late
/// ([`Outcome::sent_late`]): a tenth of the 10 ms p99 criterion of the 10,000-connection cell.
pub const LATE: Duration = Duration::from_millis(1);

/// How to load the server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Server address.
    pub addr: SocketAddr,
    /// Connections in total.
    pub conns: usize,
    /// Message size in bytes.
    pub size: usize,
    /// Closed loop: messages outstanding per connection.
    pub depth: usize,
    /// Open loop: total messages per second (overrides `depth`).
    pub rate: Option<f64>,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time before it.
    pub warmup: Duration,
    /// Generator threads.
    pub threads: usize,
    /// Server process whose CPU time is reported per message.
    pub server_pid: Option<u32>,
    /// Count the server's syscalls over the measured window with `perf stat`.
    pub count_syscalls: bool,
    /// A line protocol that upper-cases (`--lines`): every message is `size - 1` lowercase
    /// letters and a newline, and the answer expected is the same upper-cased.
    pub lines: bool,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Messages echoed and verified within the measured window.
    pub msgs: u64,
    /// Measured window.
    pub elapsed: Duration,
    /// Round-trip latency (open loop: from the scheduled send time).
    pub latency: Latency,
    /// Connection errors (reset, EOF, wrong bytes).
    pub errors: u64,
    /// Connections re-established after an error.
    pub reconnects: u64,
    /// Generator CPU during the window.
    pub client_cpu: Duration,
    /// Server CPU during the window, when its pid was given.
    pub server_cpu: Option<Duration>,
    /// Message size.
    pub size: usize,
    /// Server (syscalls, io_uring_enter calls) during the window, when counted.
    pub server_syscalls: Option<(u64, u64)>,
    /// Open loop: how far each send of the measured window fell behind its scheduled time
    /// (the clock read just after the send, less the schedule): the generator's own lag,
    /// which the latency (taken from the schedule) includes. Empty in a closed loop.
    pub send_lag: Latency,
    /// Open loop: sends of the measured window more than [`LATE`] behind their schedule.
    pub sent_late: u64,
}

impl Outcome {
    /// Messages per second.
    pub fn msgs_per_sec(&self) -> f64 {
        per_sec(self.msgs, self.elapsed)
    }

    /// Server CPU microseconds per message.
    pub fn server_us_per_msg(&self) -> Option<f64> {
        cpu_us_per(self.server_cpu, self.msgs)
    }

    /// Server (syscalls, io_uring_enter calls) per message, when they were counted.
    pub fn server_syscalls_per_msg(&self) -> Option<(f64, f64)> {
        let msgs = self.msgs.max(1) as f64;
        self.server_syscalls
            .map(|(all, enters)| (all as f64 / msgs, enters as f64 / msgs))
    }

    /// The share of the measured window's open-loop sends that were more than [`LATE`]
    /// behind their schedule, 0 to 1; None in a closed loop.
    pub fn late_share(&self) -> Option<f64> {
        (self.send_lag.count > 0).then(|| self.sent_late as f64 / self.send_lag.count as f64)
    }

    /// The generator's CPU time over the window as a share of one CPU (1.0: a whole CPU).
    pub fn client_cpu_share(&self) -> f64 {
        self.client_cpu.as_secs_f64() / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// JSON object text.
    pub fn json(&self) -> String {
        let per_msg = self.server_syscalls_per_msg();
        format!(
            "{{\"msgs\":{},\"secs\":{:.3},\"msgs_per_s\":{:.0},\"mb_per_s\":{:.2},\"latency\":{},\"errors\":{},\"reconnects\":{},\"client_cpu_s\":{:.3},\"server_cpu_s\":{},\"server_us_per_msg\":{},\"server_syscalls_per_msg\":{},\"server_enters_per_msg\":{},\"send_lag\":{},\"sent_late\":{}}}",
            self.msgs,
            self.elapsed.as_secs_f64(),
            self.msgs_per_sec(),
            self.msgs_per_sec() * self.size as f64 / 1e6,
            self.latency.json(),
            self.errors,
            self.reconnects,
            self.client_cpu.as_secs_f64(),
            self.server_cpu.map_or("null".into(), |c| format!("{:.3}", c.as_secs_f64())),
            self.server_us_per_msg().map_or("null".into(), |c| format!("{c:.3}")),
            per_msg.map_or("null".into(), |p| format!("{:.4}", p.0)),
            per_msg.map_or("null".into(), |p| format!("{:.4}", p.1)),
            self.send_lag.json(),
            self.sent_late,
        )
    }

    /// The human table.
    pub fn table(&self) -> String {
        format!(
            "| msgs/s | MB/s | p50 µs | p95 µs | p99 µs | p99.9 µs | max µs | server CPU µs/msg | server syscalls/msg | server io_uring_enter/msg | client CPU s | errors | reconnects |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n\
             | {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {:.2} | {} | {} |\n",
            thousands(self.msgs_per_sec()),
            self.msgs_per_sec() * self.size as f64 / 1e6,
            self.latency.p50_us,
            self.latency.p95_us,
            self.latency.p99_us,
            self.latency.p999_us,
            self.latency.max_us,
            self.server_us_per_msg().map_or("-".into(), |v| format!("{v:.2}")),
            self.server_syscalls_per_msg().map_or("-".into(), |p| format!("{:.3}", p.0)),
            self.server_syscalls_per_msg().map_or("-".into(), |p| format!("{:.3}", p.1)),
            self.client_cpu.as_secs_f64(),
            self.errors,
            self.reconnects,
        ) + &self.lag_line()
    }

    /// Open loop: the generator's lag behind its schedule, one line; empty in a closed loop.
    fn lag_line(&self) -> String {
        match self.late_share() {
            Some(late) => format!(
                "\nSend lag (send time less scheduled time): p99 {:.0} µs, max {:.0} µs; {:.2}% of \
                 sends more than {} ms late.\n",
                self.send_lag.p99_us,
                self.send_lag.max_us,
                late * 100.0,
                LATE.as_millis()
            ),
            None => String::new(),
        }
    }
}

/// What every connection sends and expects back: `period` pseudo-random bytes, then `CHUNK`
/// more repeating them, so that any window of up to `CHUNK` bytes is one slice
/// (`Conn::expected`) and the byte at stream position p is the same whichever slice it is
/// read through (the writer's split and the reader's differ once messages pile up).
struct Stream {
    sent: Vec<u8>,
    /// The answer: `sent` itself for an echo, upper-cased for `--lines`.
    want: Vec<u8>,
    /// A prime for an echo, so that connections' windows do not line up with message sizes;
    /// a multiple of the message size for `--lines`, so that every message ends a line.
    period: usize,
    /// Connections start at multiples of this in the pattern: 1, or the message size.
    phase_step: usize,
}

impl Stream {
    fn new(lines: bool, size: usize) -> Result<Self, String> {
        let (period, phase_step) = if lines {
            if !(2..=PERIOD).contains(&size) {
                return Err(format!("--lines needs a --size of 2 to {PERIOD} bytes"));
            }
            (PERIOD / size * size, size)
        } else {
            (PERIOD, 1)
        };
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut sent: Vec<u8> = (0..period)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let r = (x >> 32) as u8;
                match lines {
                    false => r,
                    true if (i + 1) % size == 0 => b'\n',
                    true => b'a' + r % 26,
                }
            })
            .collect();
        // CHUNK exceeds the period: extend byte by byte, each copying the one a period back.
        for j in 0..CHUNK {
            sent.push(sent[j]);
        }
        let want = match lines {
            true => sent.to_ascii_uppercase(),
            false => sent.clone(),
        };
        Ok(Self {
            sent,
            want,
            period,
            phase_step,
        })
    }

    /// Where connection `seed`'s stream starts.
    fn phase(&self, seed: usize) -> usize {
        let slots = self.period / self.phase_step;
        (seed.wrapping_mul(7919) % slots) * self.phase_step
    }
}

struct Conn {
    sock: OwnedFd,
    /// Where this connection's stream starts in the pattern.
    phase: usize,
    /// The pattern's period ([`Stream::period`]).
    period: usize,
    /// Stream bytes we want written (messages issued x size).
    target: u64,
    /// Stream bytes written.
    sent: u64,
    /// Stream bytes received and verified.
    verified: u64,
    /// Send (closed loop) or scheduled (open loop) time of each outstanding message.
    started: VecDeque<Instant>,
    broken: bool,
}

impl Conn {
    /// Where stream bytes `pos..pos + len` of this connection sit in the pattern.
    fn expected(&self, pos: u64, len: usize) -> std::ops::Range<usize> {
        let start = (self.phase + (pos % self.period as u64) as usize) % self.period;
        start..start + len
    }

    /// Writes as much of the wanted stream as the socket takes.
    fn flush(&mut self, pat: &[u8]) -> Result<(), Errno> {
        while self.sent < self.target {
            let len = ((self.target - self.sent) as usize).min(CHUNK);
            let range = self.expected(self.sent, len);
            match rustix::net::send(&self.sock, &pat[range], rustix::net::SendFlags::NOSIGNAL) {
                Ok(n) => self.sent += n as u64,
                Err(Errno::AGAIN) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn connect(
    addr: SocketAddr,
    index: usize,
    phase_seed: usize,
    stream_of: &Stream,
) -> std::io::Result<Conn> {
    // Past 20,000 connections, spread source addresses over 127.0.0.x (about 28,000 ephemeral
    // ports each). The first 20,000 do not bind: an explicit bind picks its port without
    // knowing the destination, so TIME_WAIT sockets of earlier runs would block ports that
    // connect() can still use towards a new server port. Bound sockets set SO_REUSEADDR for
    // the same reason.
    let stream = match addr {
        SocketAddr::V4(a) if a.ip().is_loopback() && index >= 20_000 => {
            let sock = rustix::net::socket(
                rustix::net::AddressFamily::INET,
                rustix::net::SocketType::STREAM,
                None,
            )?;
            rustix::net::sockopt::set_socket_reuseaddr(&sock, true)?;
            let src = std::net::Ipv4Addr::new(127, 0, 0, 1 + (index / 20_000) as u8);
            rustix::net::bind(&sock, &SocketAddr::from((src, 0)))?;
            rustix::net::connect(&sock, &addr)?;
            TcpStream::from(sock)
        }
        _ => TcpStream::connect(addr)?,
    };
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    Ok(Conn {
        sock: OwnedFd::from(stream),
        phase: stream_of.phase(phase_seed),
        period: stream_of.period,
        target: 0,
        sent: 0,
        verified: 0,
        started: VecDeque::new(),
        broken: false,
    })
}

struct ThreadResult {
    msgs: u64,
    hist: Histogram<u64>,
    /// Open loop: each measured send's lag behind its schedule, in ns.
    send_lag: Histogram<u64>,
    errors: u64,
    reconnects: u64,
}

/// Runs the load; connections are spread over `cfg.threads` threads.
pub fn run(cfg: &Config) -> Result<Outcome, String> {
    if cfg.size == 0 {
        return Err("--size must be at least 1".into());
    }
    let threads = cfg.threads.clamp(1, cfg.conns.max(1));
    let pat = std::sync::Arc::new(Stream::new(cfg.lines, cfg.size)?);
    // Connect everything before the clock starts; threads wait for t_start.
    let mut per_thread: Vec<Vec<Conn>> = (0..threads).map(|_| Vec::new()).collect();
    for i in 0..cfg.conns {
        let c = connect(cfg.addr, i, i, &pat)
            .map_err(|e| format!("connect #{i} to {}: {e}", cfg.addr))?;
        per_thread[i % threads].push(c);
    }
    let t_start = Instant::now() + Duration::from_millis(20);
    let warm_end = t_start + cfg.warmup;
    let end = warm_end + cfg.duration;

    let handles: Vec<_> = per_thread
        .into_iter()
        .enumerate()
        .map(|(t, conns)| {
            let pat = pat.clone();
            let cfg = cfg.clone();
            let rate = cfg.rate.map(|r| r / threads as f64);
            std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || drive(conns, &pat, &cfg, rate, t_start, warm_end, end))
                .expect("spawn load thread")
        })
        .collect();

    // The measured window, for CPU accounting.
    std::thread::sleep(warm_end.saturating_duration_since(Instant::now()));
    let client0 = self_cpu();
    let server0 = cfg.server_pid.and_then(cpu_time);
    let perf = match (cfg.count_syscalls, cfg.server_pid) {
        (true, Some(pid)) => perf_syscalls(pid, cfg.duration),
        _ => None,
    };
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let client_cpu = self_cpu().saturating_sub(client0);
    let server_cpu = match (cfg.server_pid.and_then(cpu_time), server0) {
        (Some(b), Some(a)) => Some(b.saturating_sub(a)),
        _ => None,
    };

    let mut out = Outcome {
        elapsed: cfg.duration,
        client_cpu,
        server_cpu,
        size: cfg.size,
        ..Default::default()
    };
    out.server_syscalls = perf.and_then(|h| h.join().ok().flatten());
    let mut hist = latency_histogram();
    let mut send_lag = latency_histogram();
    for h in handles {
        let r = h.join().map_err(|_| "load thread panicked")??;
        out.msgs += r.msgs;
        out.errors += r.errors;
        out.reconnects += r.reconnects;
        hist.add(&r.hist).map_err(|e| e.to_string())?;
        send_lag.add(&r.send_lag).map_err(|e| e.to_string())?;
    }
    out.latency = Latency::from_histogram(&hist);
    out.send_lag = Latency::from_histogram(&send_lag);
    out.sent_late = late_count(&send_lag);
    Ok(out)
}

/// Recorded lags (ns) above [`LATE`].
fn late_count(send_lag: &Histogram<u64>) -> u64 {
    let late_ns = LATE.as_nanos() as u64;
    // count_between is inclusive and works on the histogram's buckets: exact to its 3
    // significant digits, which is all a share of late sends needs.
    send_lag.count_between(late_ns + 1, send_lag.high())
}

/// What every connection of a load thread sends and how its echoes are counted; fixed for
/// the whole run.
struct Plan<'a> {
    /// What every connection sends, and what it must get back.
    stream: &'a Stream,
    /// Message size in bytes.
    size: u64,
    /// Closed loop: each echoed message is replaced at once (no `--rate`).
    closed_loop: bool,
    /// Messages echoed in `warm_end..end` are counted and timed.
    warm_end: Instant,
    end: Instant,
}

/// Readiness a load connection is watched for: edge-triggered, so each event is read (or
/// written) until EAGAIN.
const WATCH: epoll::EventFlags = epoll::EventFlags::IN
    .union(epoll::EventFlags::OUT)
    .union(epoll::EventFlags::ET)
    .union(epoll::EventFlags::RDHUP);

impl Conn {
    /// Issues `count` messages at once, started `now` (closed loop: the window of `--depth`).
    fn issue_window(&mut self, count: usize, size: u64, now: Instant) {
        for _ in 0..count {
            self.target += size;
            self.started.push_back(now);
        }
    }
}

/// An epoll instance watching every connection, its index as the event's data.
fn watch_all(conns: &[Conn]) -> Result<OwnedFd, String> {
    let ep =
        epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| format!("epoll_create: {e}"))?;
    for (i, c) in conns.iter().enumerate() {
        epoll::add(&ep, &c.sock, epoll::EventData::new_u64(i as u64), WATCH)
            .map_err(|e| format!("epoll_ctl: {e}"))?;
    }
    Ok(ep)
}

fn drive(
    mut conns: Vec<Conn>,
    stream: &Stream,
    cfg: &Config,
    rate: Option<f64>,
    t_start: Instant,
    warm_end: Instant,
    end: Instant,
) -> Result<ThreadResult, String> {
    let ep = watch_all(&conns)?;
    let mut result = ThreadResult {
        msgs: 0,
        hist: latency_histogram(),
        send_lag: latency_histogram(),
        errors: 0,
        reconnects: 0,
    };
    std::thread::sleep(t_start.saturating_duration_since(Instant::now()));
    let n = conns.len().max(1);
    let interval = rate.map(|r| Duration::from_secs_f64(1.0 / r.max(1e-3)));
    let plan = Plan {
        stream,
        size: cfg.size as u64,
        closed_loop: interval.is_none(),
        warm_end,
        end,
    };
    let mut scheduled = 0u64; // open loop: messages scheduled so far

    // Closed loop: every connection starts with `depth` messages.
    if plan.closed_loop {
        let now = Instant::now();
        for c in conns.iter_mut() {
            c.issue_window(cfg.depth.max(1), plan.size, now);
            if c.flush(&stream.sent).is_err() {
                c.broken = true;
            }
        }
    }
    let mut events = Vec::with_capacity(1024);
    // Indices of connections that broke since the last reconnect pass.
    let mut broken: Vec<usize> = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    let drain_deadline = end + Duration::from_secs(2);
    loop {
        let now = Instant::now();
        let issuing = now < end;
        if !issuing
            && (conns.iter().all(|c| c.started.is_empty() || c.broken) || now > drain_deadline)
        {
            break;
        }
        // Open loop: issue every message whose time has come, on its connection.
        let mut timeout = Duration::from_millis(5);
        if let (Some(iv), true) = (interval, issuing) {
            loop {
                let due = t_start + iv.mul_f64(scheduled as f64);
                if due > now {
                    timeout = due - now;
                    break;
                }
                let i = scheduled as usize % n;
                let c = &mut conns[i];
                scheduled += 1;
                if c.broken {
                    continue;
                }
                c.target += plan.size;
                c.started.push_back(due);
                if c.flush(&stream.sent).is_err() {
                    c.broken = true;
                    broken.push(i);
                    result.errors += 1;
                } else if due >= plan.warm_end {
                    // One clock read per send (tens of ns, against microseconds of syscalls
                    // per message): how far the generator itself fell behind. A message
                    // whose send met a full socket buffer counts from the partial write.
                    let lag = Instant::now().saturating_duration_since(due);
                    let _ = result.send_lag.record(lag.as_nanos().max(1) as u64);
                }
            }
        }
        events.clear();
        let ts = rustix::time::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        match epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), Some(&ts)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(format!("epoll_wait: {e}")),
        }
        for ev in events.iter() {
            // Copies out of the packed kernel struct: no references into it.
            let (data, ev_flags) = (ev.data, ev.flags);
            let i = data.u64() as usize;
            let c = &mut conns[i];
            if c.broken {
                continue;
            }
            if !serve_ready(c, ev_flags, &mut buf, &plan, &mut result) {
                c.broken = true;
                broken.push(i);
                result.errors += 1;
            }
        }
        // Connections that broke are re-established while the run is still issuing.
        for i in broken.drain(..) {
            if issuing && conns[i].broken && reconnect(&ep, &mut conns[i], i, cfg, &plan)? {
                result.reconnects += 1;
            }
        }
    }
    Ok(result)
}

/// Handles one readiness event of a healthy connection: writes what it owes if writable,
/// then reads until EAGAIN, verifying the echo and timing each completed message (and in a
/// closed loop replacing it). False when the connection broke: EOF, a wrong byte, an error.
#[inline]
fn serve_ready(
    c: &mut Conn,
    ev_flags: epoll::EventFlags,
    buf: &mut [u8],
    plan: &Plan<'_>,
    result: &mut ThreadResult,
) -> bool {
    if ev_flags.contains(epoll::EventFlags::OUT) && c.flush(&plan.stream.sent).is_err() {
        return false;
    }
    let size = plan.size;
    loop {
        match rustix::io::read(&c.sock, &mut *buf) {
            Ok(0) => return false,
            Ok(got) => {
                let range = c.expected(c.verified, got);
                if buf[..got] != plan.stream.want[range] {
                    return false;
                }
                let before = c.verified / size;
                c.verified += got as u64;
                let done = c.verified / size - before;
                let now = Instant::now();
                for _ in 0..done {
                    let Some(t0) = c.started.pop_front() else {
                        break;
                    };
                    if now >= plan.warm_end && now < plan.end {
                        result.msgs += 1;
                        let _ = result
                            .hist
                            .record(now.duration_since(t0).as_nanos().max(1) as u64);
                    }
                    // Closed loop: replace it, until the end.
                    if plan.closed_loop && now < plan.end {
                        c.target += size;
                        c.started.push_back(now);
                    }
                }
                if plan.closed_loop && c.flush(&plan.stream.sent).is_err() {
                    return false;
                }
            }
            Err(Errno::AGAIN) => return true,
            Err(Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
}

/// Replaces broken connection `i` (in `slot`) with a new one watched by `ep`, and in a
/// closed loop issues its window. False when the connect failed: the connection stays
/// broken for the rest of the run.
fn reconnect(
    ep: &OwnedFd,
    slot: &mut Conn,
    i: usize,
    cfg: &Config,
    plan: &Plan<'_>,
) -> Result<bool, String> {
    let _ = epoll::delete(ep, &slot.sock);
    let Ok(c) = connect(cfg.addr, i, i + 1, plan.stream) else {
        return Ok(false);
    };
    *slot = c;
    epoll::add(ep, &slot.sock, epoll::EventData::new_u64(i as u64), WATCH)
        .map_err(|e| format!("epoll_ctl: {e}"))?;
    if plan.closed_loop {
        slot.issue_window(cfg.depth.max(1), plan.size, Instant::now());
        let _ = slot.flush(&plan.stream.sent);
    }
    Ok(true)
}

/// `ringwork-bench echo`'s options.
#[derive(clap::Args)]
pub struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: SocketAddr,
    /// Connections.
    #[arg(long, default_value_t = 50)]
    conns: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Closed loop: messages outstanding per connection.
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Open loop: total messages per second, spread evenly over connections; latency is
    /// measured from each message's scheduled time (default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Unmeasured seconds first.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Generator threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The server's pid, to report its CPU time per message (default: none, no server
    /// figures).
    #[arg(long)]
    server_pid: Option<u32>,
    /// With --server-pid: count the server's syscalls over the window with perf stat
    /// (off by default).
    #[arg(long)]
    count_syscalls: bool,
    /// Write the result as JSON here too (default: the table only).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Load a line protocol that upper-cases each line (examples/uppercase and its tokio
    /// peer) instead of an echo: each message is `--size - 1` random lowercase letters and a
    /// newline, and every byte of the answer is checked against it upper-cased.
    #[arg(long)]
    lines: bool,
}

/// `ringwork-bench echo`: one run against a running server, its table on stdout.
pub fn run_command(args: Args) -> Result<(), String> {
    ringwork_harness::raise_nofile_limit();
    let cfg = Config {
        addr: args.addr,
        conns: args.conns,
        size: args.size,
        depth: args.depth,
        rate: args.rate,
        duration: Duration::from_secs_f64(args.duration),
        warmup: Duration::from_secs_f64(args.warmup),
        threads: args.threads,
        server_pid: args.server_pid,
        count_syscalls: args.server_pid.is_some() && args.count_syscalls,
        lines: args.lines,
    };
    println!("# ringwork-bench echo on {}", machine_line());
    println!(
        "# {}: {} conns, {} B, {}",
        cfg.addr,
        cfg.conns,
        cfg.size,
        match cfg.rate {
            Some(r) => format!("open loop at {r} msgs/s"),
            None => format!("closed loop, depth {}", cfg.depth),
        }
    );
    let out = run(&cfg)?;
    print!("{}", out.table());
    if let Some(path) = args.json {
        crate::write_json(&path, &out.json())?;
    }
    if out.errors > 0 {
        return Err(format!("{} connection errors", out.errors));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A tiny blocking echo server on a thread, to check the generator's own accounting.
    fn echo_server() -> SocketAddr {
        transforming_server(|_| {})
    }

    /// A blocking server that sends back every read, changed by `change`.
    fn transforming_server(change: fn(&mut [u8])) -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { break };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf) {
                        change(&mut buf[..n]);
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn closed_loop_counts_and_verifies() {
        let cfg = Config {
            addr: echo_server(),
            conns: 4,
            size: 100,
            depth: 2,
            rate: None,
            duration: Duration::from_millis(300),
            warmup: Duration::from_millis(50),
            threads: 2,
            server_pid: Some(std::process::id()),
            count_syscalls: false,
            lines: false,
        };
        let out = run(&cfg).unwrap();
        assert!(out.msgs > 100, "{out:?}");
        assert_eq!(out.errors, 0);
        assert_eq!(out.latency.count, out.msgs);
        assert!(out.server_cpu.is_some());
        assert!(out.json().contains("\"errors\":0"));
    }

    /// Pipelined large messages: writes and reads split the stream differently and cross the
    /// pattern's period mid-read; no correct echo may be reported as an error (it once was:
    /// the pattern was not periodic, so 8 KiB x 4 failed every connection).
    #[test]
    fn pipelined_large_messages_verify_across_the_period() {
        let cfg = Config {
            addr: echo_server(),
            conns: 3,
            size: 8192,
            depth: 4,
            rate: None,
            duration: Duration::from_millis(300),
            warmup: Duration::from_millis(50),
            threads: 1,
            server_pid: None,
            count_syscalls: false,
            lines: false,
        };
        let out = run(&cfg).unwrap();
        // Past the period several times, so reads straddled it.
        assert!(out.msgs * 8192 > 3 * PERIOD as u64, "{out:?}");
        assert_eq!(out.errors, 0, "{out:?}");
    }

    #[test]
    fn any_window_of_the_stream_reads_the_same_bytes() {
        let pat = Stream::new(false, 64).unwrap().sent;
        for p in [0usize, PERIOD - 1, PERIOD - 100, 3 * PERIOD - 7] {
            let at = |q: usize| pat[q % PERIOD];
            let start = p % PERIOD;
            let window = &pat[start..start + CHUNK];
            assert!(window.iter().enumerate().all(|(k, b)| *b == at(p + k)));
        }
    }

    fn lines_against(addr: SocketAddr) -> Outcome {
        let cfg = Config {
            addr,
            conns: 3,
            size: 40,
            depth: 2,
            rate: None,
            duration: Duration::from_millis(200),
            warmup: Duration::from_millis(20),
            threads: 1,
            server_pid: None,
            count_syscalls: false,
            lines: true,
        };
        run(&cfg).unwrap()
    }

    #[test]
    fn lines_are_checked_upper_cased() {
        let out = lines_against(transforming_server(|b| b.make_ascii_uppercase()));
        assert!(out.msgs > 50 && out.errors == 0, "{out:?}");
        // An echo that does not upper-case is wrong for --lines.
        let out = lines_against(echo_server());
        assert!(out.errors >= 1, "{out:?}");
    }

    #[test]
    fn every_lines_message_is_lowercase_letters_ending_a_line() {
        let size = 100;
        let st = Stream::new(true, size).unwrap();
        assert_eq!(st.period % size, 0);
        for seed in [0, 1, 7, 12_345] {
            let phase = st.phase(seed);
            for m in 0..(2 * st.period / size) {
                let at = |k: usize| st.sent[(phase + m * size + k) % st.period];
                assert_eq!(at(size - 1), b'\n', "seed {seed} message {m}");
                assert!((0..size - 1).all(|k| at(k).is_ascii_lowercase()));
            }
        }
        assert!(Stream::new(true, 1).is_err());
    }

    #[test]
    fn open_loop_holds_the_rate() {
        let cfg = Config {
            addr: echo_server(),
            conns: 10,
            size: 64,
            depth: 1,
            rate: Some(2000.0),
            duration: Duration::from_millis(500),
            warmup: Duration::from_millis(100),
            threads: 1,
            server_pid: None,
            count_syscalls: false,
            lines: false,
        };
        let out = run(&cfg).unwrap();
        assert_eq!(out.errors, 0);
        // 2,000/s for 0.5 s is 1,000 messages; allow for edges of the window.
        assert!((800..=1200).contains(&out.msgs), "{} messages", out.msgs);
        // Every measured send has its lag; the schedule is easy at this rate.
        assert!(
            (800..=1200).contains(&out.send_lag.count),
            "{:?}",
            out.send_lag
        );
        assert!(out.late_share().is_some());
        assert!(out.table().contains("Send lag"), "{}", out.table());
    }

    #[test]
    fn closed_loop_has_no_send_lag() {
        let out = Outcome::default();
        assert_eq!(out.late_share(), None);
        assert!(!out.table().contains("Send lag"));
    }

    #[test]
    fn late_sends_are_those_past_a_millisecond() {
        let mut h = latency_histogram();
        for us in [10u64, 500, 999, 1_500, 40_000] {
            h.record(us * 1000).unwrap();
        }
        assert_eq!(late_count(&h), 2);
        let out = Outcome {
            send_lag: Latency::from_histogram(&h),
            sent_late: late_count(&h),
            ..Default::default()
        };
        assert_eq!(out.late_share(), Some(0.4));
    }

    #[test]
    fn corrupted_echo_is_an_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 64];
                if let Ok(n) = s.read(&mut buf) {
                    buf[0] ^= 0xff;
                    let _ = s.write_all(&buf[..n]);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        let cfg = Config {
            addr,
            conns: 1,
            size: 64,
            depth: 1,
            rate: None,
            duration: Duration::from_millis(200),
            warmup: Duration::ZERO,
            threads: 1,
            server_pid: None,
            count_syscalls: false,
            lines: false,
        };
        let out = run(&cfg).unwrap();
        assert!(out.errors >= 1, "a flipped byte must be caught: {out:?}");
    }
}
