//! `ringwork-bench sendpath`: what sending a large file costs the server, path by path.
//!
//! One io_uring loop on one pinned CPU serves one file again and again over `conns` loopback
//! TCP connections, each connection streaming the file from start to end and over, one
//! chunk at a time; a reader thread pinned to another CPU drains every socket and checks
//! each byte against the file. The paths, alternated within each round so that drift on a
//! shared machine spreads over all of them:
//!
//! - `read-send` (today's ringwork-files path): IORING_OP_READ_FIXED of a chunk into the
//!   connection's registered buffer, then IORING_OP_SEND from it. Two copies on the server
//!   side: page cache → buffer, buffer → socket.
//! - `splice`: a pipe per connection (F_SETPIPE_SZ to the chunk size), and per chunk one
//!   IOSQE_IO_LINK pair: IORING_OP_SPLICE file → pipe (page references, no copy), then
//!   pipe → socket (the pages go into the socket's buffers, no copy). A short first splice
//!   fails the link; what it moved is then sent from the pipe on its own. io_uring runs every
//!   splice in io-wq (it cannot splice without blocking), so part of this path's CPU time is
//!   io-wq workers', counted here with the loop's.
//! - `mmap-send`: IORING_OP_SEND straight from a read-only shared mapping of the file
//!   (`ringwork_sys::FileMap`, pre-faulted): one copy, page cache → socket; each send after
//!   a mincore(2) of its range, as ringwork-files sends from a mapping.
//! - `send-zc`: `read-send` with IORING_OP_SEND_ZC from the registered buffer, the buffer
//!   refilled only after the notification. Loopback delivers to a local socket, where the
//!   kernel copies zero-copy pages anyway, so this measures the notification's price.
//! - `copy-send` (ringwork-files' path for a small file whose bytes it keeps in memory):
//!   the kept bytes copied into the connection's registered buffer, then IORING_OP_SEND
//!   (two copies: kept bytes → buffer, buffer → socket; the head goes in front of the chunk
//!   the same way, here a part of the same copy).
//! - `sendmsg` (the alternative without the copy in user space): IORING_OP_SENDMSG with
//!   two iovecs over the kept bytes, the first head-sized (`HEAD_PART` bytes, as a response
//!   head would be), the second the rest of the chunk.
//! - `sendfile` (nginx's path): synchronous sendfile(2) on the nonblocking socket, called
//!   from the loop thread, of the prefix of each chunk that mincore(2) (of a lazy mapping,
//!   never faulted) finds in the page cache; chunk after chunk until the socket is full
//!   (a short count, or EAGAIN), then IORING_OP_POLL_ADD (POLLOUT) on the socket wakes the
//!   connection. The page cache's pages go into the socket by reference: no copy on the
//!   send side (on loopback the receiver's copy out of them is charged to this CPU, as for
//!   every path).
//!
//! Every path keeps one chunk (one SQE, or one linked pair) in flight per connection, as a
//! server that must not reorder a stream does; a short send continues from where it stopped.
//! `sendfile` has nothing in flight but its poll while the socket is full.
//!
//! Each connection's pass over the file counts as one request: with small files (8 KiB,
//! 16 KiB) the per-operation costs dominate, and the table gives server CPU per request
//! beside CPU per byte.
//!
//! What is measured, over a window after a warm-up, per run: bytes the server's sends
//! completed, per second; and the server's CPU time per byte: the loop thread's own
//! (schedstat-exact) plus everything else this process ran in the window but the reader
//! thread and the idle main thread, which is the io-wq workers'. Unless `--iowq-anywhere`,
//! the io-wq workers are kept on the server's CPU (IORING_REGISTER_IOWQ_AFF), so that every
//! path gets one CPU. The file is read once before every run: the page cache is warm.
//!
//! What it deliberately does not do: HTTP (the response head is the same for every path),
//! opening files per request, disks (a cold cache would make every path wait on the same
//! reads), or anything but loopback. On loopback the receiver's TCP processing runs in
//! softirq on the sending CPU and is charged to the sender: the per-byte figures include
//! it for every path alike.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringwork_core::buf::Lease;
use ringwork_core::errno::RawErrno;
use ringwork_core::token::UserData;
use ringwork_sys::op::OutBytes;
use ringwork_sys::{Cqe, FileMap, FixedBuffers, Ring, RingParams, SafeSqe, Target, TaskRun};
use rustix::io_uring::IoringOp;
use rustix::net::SendFlags;
use rustix::pipe::SpliceFlags;

use crate::drain::median;
use ringwork_harness::pin::{allowed_cpus, pin_thread};
use ringwork_harness::proc::task_run_time;

use crate::stats::{machine_line, self_cpu, thousands};

/// One way to send the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// IORING_OP_READ_FIXED into a registered buffer, then IORING_OP_SEND.
    ReadSend,
    /// Linked IORING_OP_SPLICE file → pipe → socket.
    Splice,
    /// IORING_OP_SEND from a shared mapping of the file.
    MmapSend,
    /// IORING_OP_READ_FIXED, then IORING_OP_SEND_ZC from the registered buffer.
    SendZc,
    /// sendfile(2) from the loop thread of what mincore finds resident; POLL_ADD on EAGAIN.
    Sendfile,
    /// Kept bytes copied into a registered buffer, then IORING_OP_SEND.
    CopySend,
    /// IORING_OP_SENDMSG with two iovecs over the kept bytes.
    Sendmsg,
}

impl Variant {
    /// Every variant, in report order; the first is the baseline of the ratios.
    pub const ALL: [Variant; 7] = [
        Variant::ReadSend,
        Variant::Splice,
        Variant::MmapSend,
        Variant::SendZc,
        Variant::Sendfile,
        Variant::CopySend,
        Variant::Sendmsg,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Variant::ReadSend => "read-send",
            Variant::Splice => "splice",
            Variant::MmapSend => "mmap-send",
            Variant::SendZc => "send-zc",
            Variant::Sendfile => "sendfile",
            Variant::CopySend => "copy-send",
            Variant::Sendmsg => "sendmsg",
        }
    }

    /// What the kernel must have, as (opcode, C name, first Linux).
    fn needs(self) -> &'static [(IoringOp, &'static str, &'static str)] {
        match self {
            Variant::ReadSend => &[
                (IoringOp::ReadFixed, "IORING_OP_READ_FIXED", "5.1"),
                (IoringOp::Send, "IORING_OP_SEND", "5.6"),
            ],
            Variant::Splice => &[(IoringOp::Splice, "IORING_OP_SPLICE", "5.7")],
            Variant::MmapSend => &[(IoringOp::Send, "IORING_OP_SEND", "5.6")],
            Variant::SendZc => &[
                (IoringOp::ReadFixed, "IORING_OP_READ_FIXED", "5.1"),
                (IoringOp::SendZc, "IORING_OP_SEND_ZC", "6.0"),
            ],
            Variant::Sendfile => &[(IoringOp::PollAdd, "IORING_OP_POLL_ADD", "5.1")],
            Variant::CopySend => &[(IoringOp::Send, "IORING_OP_SEND", "5.6")],
            Variant::Sendmsg => &[(IoringOp::Sendmsg, "IORING_OP_SENDMSG", "5.3")],
        }
    }

    fn uses_fixed_buffers(self) -> bool {
        matches!(
            self,
            Variant::ReadSend | Variant::SendZc | Variant::CopySend
        )
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Directory for the files served (one per size, kept for the next run).
    pub dir: PathBuf,
    /// File sizes.
    pub sizes: Vec<u64>,
    /// Loopback connections.
    pub conns: usize,
    /// Bytes per read, splice or send.
    pub chunk: u32,
    /// Measured time per run.
    pub duration: Duration,
    /// Unmeasured time first.
    pub warmup: Duration,
    /// Rounds; the variants alternate within each.
    pub rounds: u32,
    /// The server loop's CPU.
    pub server_cpu: usize,
    /// The reader's CPU.
    pub client_cpu: usize,
    /// Let io-wq workers run on any CPU instead of the server's.
    pub iowq_anywhere: bool,
}

impl Config {
    /// The server and reader CPUs when none are given: the first two this process may use
    /// (the same one when it has only one).
    pub fn default_cpus() -> (usize, usize) {
        let allowed = allowed_cpus();
        let server = allowed.first().copied().unwrap_or(0);
        (server, allowed.get(1).copied().unwrap_or(server))
    }

    fn file_path(&self, size: u64) -> PathBuf {
        self.dir.join(format!("ringwork-sendpath-{size}.dat"))
    }
}

/// One run of one variant on one file size.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Which path.
    pub variant: Variant,
    /// File size.
    pub size: u64,
    /// 1-based round.
    pub round: u32,
    /// Bytes sent in the window.
    pub bytes: u64,
    /// The window.
    pub elapsed: Duration,
    /// The loop thread's CPU time in the window.
    pub loop_cpu: Duration,
    /// Other server CPU time in the window: io-wq workers.
    pub iowq_cpu: Duration,
    /// The reader thread's CPU time in the window.
    pub client_cpu: Duration,
    /// io-wq workers alive at the end of the window.
    pub iowq_threads: usize,
    /// Operations completed in the window (a SEND_ZC notification not counted).
    pub ops: u64,
    /// The longest time in the window without a completion: a stall (the machine busy with
    /// something else, or the path waiting on itself) shows here.
    pub longest_gap: Duration,
}

impl Outcome {
    /// Bytes per second.
    pub fn bytes_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Server CPU (loop and io-wq) in microseconds per MiB sent.
    pub fn server_us_per_mib(&self) -> f64 {
        per_mib(self.loop_cpu + self.iowq_cpu, self.bytes)
    }

    /// Server CPU (loop and io-wq) in microseconds per request: per pass over the file.
    pub fn server_us_per_request(&self) -> f64 {
        let requests = self.bytes as f64 / self.size.max(1) as f64;
        (self.loop_cpu + self.iowq_cpu).as_secs_f64() * 1e6 / requests.max(1e-9)
    }

    /// The share of one CPU the server used.
    pub fn server_busy(&self) -> f64 {
        (self.loop_cpu + self.iowq_cpu).as_secs_f64() / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// JSON object text.
    pub fn json(&self) -> String {
        format!(
            "{{\"variant\":\"{}\",\"size\":{},\"round\":{},\"bytes\":{},\"secs\":{:.3},\"bytes_per_s\":{:.0},\"loop_cpu_us\":{},\"iowq_cpu_us\":{},\"client_cpu_us\":{},\"server_us_per_mib\":{:.1},\"server_us_per_request\":{:.2},\"iowq_threads\":{},\"ops\":{},\"longest_gap_us\":{}}}",
            self.variant.name(),
            self.size,
            self.round,
            self.bytes,
            self.elapsed.as_secs_f64(),
            self.bytes_per_sec(),
            self.loop_cpu.as_micros(),
            self.iowq_cpu.as_micros(),
            self.client_cpu.as_micros(),
            self.server_us_per_mib(),
            self.server_us_per_request(),
            self.iowq_threads,
            self.ops,
            self.longest_gap.as_micros()
        )
    }
}

fn per_mib(cpu: Duration, bytes: u64) -> f64 {
    cpu.as_secs_f64() * 1e6 / (bytes.max(1) as f64 / f64::from(1 << 20))
}

/// The byte at `offset` of a served file: each 8-byte word holds its own index, so a byte
/// sent from the wrong place (by any amount) or twice shows.
fn file_byte(offset: u64) -> u8 {
    ((offset / 8).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> ((offset % 8) * 8)) as u8
}

/// The file of `size` bytes, created unless already there with that size; its bytes.
fn prepare(path: &Path, size: u64) -> Result<Vec<u8>, String> {
    let content: Vec<u8> = (0..size).map(file_byte).collect();
    let fresh = std::fs::metadata(path).is_ok_and(|m| m.len() == size)
        && std::fs::read(path).map_err(|e| e.to_string())? == content;
    if !fresh {
        let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        f.write_all(&content)
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(content)
}

/// Runs every variant for every size, `cfg.rounds` times, alternating the variants.
pub fn run_all(cfg: &Config, variants: &[Variant]) -> Result<Vec<Outcome>, String> {
    check_kernel(variants)?;
    let mut files = Vec::new();
    for &size in &cfg.sizes {
        if size == 0 {
            return Err("file sizes must be at least 1 byte".into());
        }
        let path = cfg.file_path(size);
        let content = Arc::new(prepare(&path, size)?);
        files.push((size, path, content));
    }
    let mut out = Vec::new();
    for round in 1..=cfg.rounds.max(1) {
        for (size, path, content) in &files {
            for &v in variants {
                crate::fileread::warm(path)?;
                let r = run_one(cfg, v, *size, path, content, round)
                    .map_err(|e| format!("{} on {size} bytes: {e}", v.name()))?;
                eprintln!(
                    "round {round} {:>9} {:>9}: {:>8.1} MiB/s, server {:>6.1} µs/MiB, {:>7.2} µs/request ({:.0}% of a CPU)",
                    size_label(*size),
                    v.name(),
                    r.bytes_per_sec() / f64::from(1 << 20),
                    r.server_us_per_mib(),
                    r.server_us_per_request(),
                    r.server_busy() * 100.0
                );
                out.push(r);
            }
        }
    }
    Ok(out)
}

fn check_kernel(variants: &[Variant]) -> Result<(), String> {
    let mut ring = RingParams::new(2).build().map_err(|e| e.to_string())?;
    let probe = ring.probe().map_err(|e| e.to_string())?;
    for v in variants {
        for &(op, name, since) in v.needs() {
            probe
                .require(op, name, since)
                .map_err(|e| format!("{}: {e}", v.name()))?;
        }
    }
    Ok(())
}

/// What the reader saw.
struct ReaderOutcome {
    bytes: u64,
}

/// Drains every socket until each reaches end of file, checking each byte against `content`
/// (every connection streams the file from offset 0, wrapping around).
fn reader(
    socks: Vec<TcpStream>,
    content: &[u8],
    cpu: usize,
    tid: std::sync::mpsc::Sender<i32>,
) -> Result<ReaderOutcome, String> {
    pin_thread(0, cpu)?;
    let _ = tid.send(rustix::thread::gettid().as_raw_nonzero().get());
    for s in &socks {
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
    }
    let size = content.len();
    let mut pos = vec![0usize; socks.len()];
    let mut open: Vec<usize> = (0..socks.len()).collect();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    let stall = rustix::time::Timespec {
        tv_sec: 10,
        tv_nsec: 0,
    };
    while !open.is_empty() {
        let ready: Vec<usize> = {
            let mut fds: Vec<_> = open
                .iter()
                .map(|&i| rustix::event::PollFd::new(&socks[i], rustix::event::PollFlags::IN))
                .collect();
            let n = rustix::event::poll(&mut fds, Some(&stall)).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the reader saw nothing for 10 s: the server is stuck".into());
            }
            fds.iter()
                .zip(&open)
                .filter(|(f, _)| !f.revents().is_empty())
                .map(|(_, &i)| i)
                .collect()
        };
        for i in ready {
            loop {
                match (&socks[i]).read(&mut buf) {
                    Ok(0) => {
                        open.retain(|&o| o != i);
                        break;
                    }
                    Ok(n) => {
                        check_bytes(content, pos[i], &buf[..n])
                            .map_err(|at| format!("connection {i}: {at}"))?;
                        pos[i] = (pos[i] + n) % size;
                        bytes += n as u64;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(format!("connection {i}: {e}")),
                }
            }
        }
    }
    Ok(ReaderOutcome { bytes })
}

/// Checks that `got` is the file's bytes from `pos` on, wrapping at its end.
fn check_bytes(content: &[u8], mut pos: usize, mut got: &[u8]) -> Result<(), String> {
    while !got.is_empty() {
        let n = got.len().min(content.len() - pos);
        if got[..n] != content[pos..pos + n] {
            let off = (0..n).find(|&k| got[k] != content[pos + k]).unwrap_or(0);
            return Err(format!("wrong byte at file offset {}", pos + off));
        }
        got = &got[n..];
        pos = (pos + n) % content.len();
    }
    Ok(())
}

/// Connected loopback pairs: (server sides, client sides).
fn connect(conns: usize) -> Result<(Vec<TcpStream>, Vec<TcpStream>), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (mut servers, mut clients) = (Vec::new(), Vec::new());
    for _ in 0..conns {
        clients.push(TcpStream::connect(addr).map_err(|e| e.to_string())?);
        servers.push(listener.accept().map_err(|e| e.to_string())?.0);
    }
    Ok((servers, clients))
}

fn run_one(
    cfg: &Config,
    variant: Variant,
    size: u64,
    path: &Path,
    content: &Arc<Vec<u8>>,
    round: u32,
) -> Result<Outcome, String> {
    let (servers, clients) = connect(cfg.conns)?;
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let reader = {
        let content = Arc::clone(content);
        let cpu = cfg.client_cpu;
        std::thread::spawn(move || reader(clients, &content, cpu, tid_tx))
    };
    let reader_tid = tid_rx
        .recv()
        .map_err(|_| "the reader thread did not start")?;
    let server = {
        let cfg = cfg.clone();
        let path = path.to_path_buf();
        std::thread::spawn(move || serve(&cfg, variant, size, &path, servers, reader_tid))
    };
    let served = server.join().map_err(|_| "the server thread panicked")?;
    let read = reader.join().map_err(|_| "the reader thread panicked")?;
    let (mut outcome, total_sent) = served?;
    let read = read?;
    if read.bytes != total_sent {
        return Err(format!(
            "the server sent {total_sent} bytes, the reader got {}",
            read.bytes
        ));
    }
    outcome.round = round;
    Ok(outcome)
}

/// What the counters said at one instant.
#[derive(Clone, Copy)]
struct Snapshot {
    at: Instant,
    bytes: u64,
    ops: u64,
    loop_cpu: Duration,
    process_cpu: Duration,
    reader_cpu: Duration,
    main_cpu: Duration,
}

/// Where the run is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Warmup,
    Measure,
    /// No new chunks; waiting for what is in flight.
    Drain,
}

/// What a completion is for, in the low bits of its user_data (the connection above them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read = 0,
    Send = 1,
    SpliceIn = 2,
    SpliceOut = 3,
    /// sendfile: the socket has room again (POLLOUT).
    Writable = 4,
}

fn user_data(conn: usize, kind: Kind) -> UserData {
    UserData(((conn as u64) << 3) | kind as u64)
}

fn decode(ud: UserData) -> (usize, Kind) {
    let kind = match ud.0 & 7 {
        0 => Kind::Read,
        1 => Kind::Send,
        2 => Kind::SpliceIn,
        3 => Kind::SpliceOut,
        _ => Kind::Writable,
    };
    ((ud.0 >> 3) as usize, kind)
}

/// `sendmsg`: the first iovec's length, a response head's.
const HEAD_PART: usize = 256;

/// Most bytes one connection's sendfile(2) calls move before the others get their turn:
/// ringwork-files' largest send from a file (`FILE_SEND_MAX`).
const SENDFILE_TURN: usize = 1 << 20;

/// One connection's state.
struct Conn {
    sock: TcpStream,
    /// Next file offset to read, splice or send from.
    pos: u64,
    /// Completions still to come for what was submitted.
    in_flight: u32,
    /// read-send, send-zc: the registered buffer, when not travelling with a read.
    lease: Option<Lease>,
    /// read-send, send-zc: the part of the buffer still to send.
    pending: core::ops::Range<u32>,
    /// splice: the pipe (read end, write end) and the bytes in it.
    pipe: Option<(OwnedFd, OwnedFd)>,
    in_pipe: u32,
}

/// The server loop of one run.
struct Server {
    variant: Variant,
    ring: Ring,
    file: std::fs::File,
    size: u64,
    chunk: u32,
    map: Option<Arc<FileMap>>,
    /// copy-send, sendmsg: the file's bytes, kept in memory.
    kept: Option<Arc<[u8]>>,
    conns: Vec<Conn>,
    bytes: u64,
    ops: u64,
}

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn task_cpu(tid: i32) -> Duration {
    task_run_time(Path::new(&format!("/proc/self/task/{tid}"))).unwrap_or_default()
}

/// io-wq workers of thread `tid` alive now.
fn iowq_threads(tid: i32) -> usize {
    let mut name = format!("iou-wrk-{tid}");
    name.truncate(15);
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|comm| comm.trim_end() == name)
                .count()
        })
        .unwrap_or(0)
}

/// Runs the server side of one run; returns its outcome and every byte it sent (warm-up
/// and drain included, for the reader's count to match).
fn serve(
    cfg: &Config,
    variant: Variant,
    size: u64,
    path: &Path,
    socks: Vec<TcpStream>,
    reader_tid: i32,
) -> Result<(Outcome, u64), String> {
    pin_thread(0, cfg.server_cpu)?;
    let my_tid = rustix::thread::gettid().as_raw_nonzero().get();
    let main_tid = std::process::id() as i32;
    let mut server = Server::new(cfg, variant, size, path, socks)?;

    let snapshot = |s: &Server| Snapshot {
        at: Instant::now(),
        bytes: s.bytes,
        ops: s.ops,
        loop_cpu: thread_cpu(),
        process_cpu: self_cpu(),
        reader_cpu: task_cpu(reader_tid),
        main_cpu: task_cpu(main_tid),
    };
    let started = Instant::now();
    let measure_at = started + cfg.warmup;
    let end_at = measure_at + cfg.duration;
    let mut phase = Phase::Warmup;
    let (mut first, mut last) = (None, None);
    let mut threads = 0;
    for c in 0..server.conns.len() {
        server.resume(c, true)?;
    }
    let mut cqes: Vec<Cqe> = Vec::new();
    let (mut last_cqe, mut longest_gap) = (Instant::now(), Duration::ZERO);
    loop {
        let now = Instant::now();
        if phase == Phase::Warmup && now >= measure_at {
            first = Some(snapshot(&server));
            phase = Phase::Measure;
        }
        if phase == Phase::Measure && now >= end_at {
            last = Some(snapshot(&server));
            threads = iowq_threads(my_tid);
            phase = Phase::Drain;
        }
        if phase == Phase::Drain && server.conns.iter().all(|c| c.in_flight == 0) {
            break;
        }
        if now > end_at + Duration::from_secs(10) {
            return Err("operations still in flight 10 s after the window".into());
        }
        server
            .ring
            .submit_and_wait_timeout(1, Duration::from_millis(20))
            .map_err(|e| e.to_string())?;
        cqes.extend(server.ring.completions());
        if !cqes.is_empty() {
            let now = Instant::now();
            if phase == Phase::Measure {
                longest_gap = longest_gap.max(now - last_cqe);
            }
            last_cqe = now;
        }
        for c in cqes.drain(..) {
            server.on_cqe(&c, phase != Phase::Drain)?;
        }
    }
    let (first, last) = (first.expect("measured"), last.expect("measured"));
    let loop_cpu = last.loop_cpu - first.loop_cpu;
    let reader_cpu = last.reader_cpu.saturating_sub(first.reader_cpu);
    let main_cpu = last.main_cpu.saturating_sub(first.main_cpu);
    // The process' CPU time counts threads that exited too (io-wq workers may have).
    let iowq_cpu =
        (last.process_cpu - first.process_cpu).saturating_sub(loop_cpu + reader_cpu + main_cpu);
    let total = server.bytes;
    // The ring first (idle now), then the sockets: the reader sees end of file.
    drop(server);
    Ok((
        Outcome {
            variant,
            size,
            round: 0,
            bytes: last.bytes - first.bytes,
            elapsed: last.at - first.at,
            loop_cpu,
            iowq_cpu,
            client_cpu: reader_cpu,
            iowq_threads: threads,
            ops: last.ops - first.ops,
            longest_gap,
        },
        total,
    ))
}

impl Server {
    fn new(
        cfg: &Config,
        variant: Variant,
        size: u64,
        path: &Path,
        socks: Vec<TcpStream>,
    ) -> Result<Self, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let sq = (2 * cfg.conns as u32).max(8).next_power_of_two();
        // As the file server sets its ring up.
        let (mut ring, _) = RingParams::new(sq)
            .build_server(None, TaskRun::Defer)
            .map_err(|e| e.to_string())?;
        if !cfg.iowq_anywhere {
            ring.register_iowq_affinity(&[cfg.server_cpu])
                .map_err(|e| e.to_string())?;
        }
        if variant.uses_fixed_buffers() {
            let count = u16::try_from(cfg.conns).map_err(|_| "too many connections")?;
            let buffers =
                FixedBuffers::new(count, cfg.chunk as usize).map_err(|e| e.to_string())?;
            ring.register_buffers(buffers).map_err(|e| e.to_string())?;
        }
        let map = match variant {
            Variant::MmapSend => Some(Arc::new(
                FileMap::new(&file, size as usize).map_err(|e| e.to_string())?,
            )),
            // For mincore only: nothing is faulted in or read through it.
            Variant::Sendfile => Some(Arc::new(
                FileMap::lazy(&file, size as usize).map_err(|e| e.to_string())?,
            )),
            _ => None,
        };
        let kept = match variant {
            Variant::CopySend | Variant::Sendmsg => Some(Arc::<[u8]>::from(
                std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
            )),
            _ => None,
        };
        let mut chunk = cfg.chunk;
        let mut conns = Vec::with_capacity(socks.len());
        for sock in socks {
            if variant == Variant::Sendfile {
                // sendfile(2) must never wait for room in the socket: EAGAIN instead.
                sock.set_nonblocking(true).map_err(|e| e.to_string())?;
            }
            let lease = match variant.uses_fixed_buffers() {
                true => Some(
                    ring.fixed_buffers()
                        .and_then(|b| b.acquire())
                        .ok_or("a buffer per connection")?,
                ),
                false => None,
            };
            let pipe = match variant {
                Variant::Splice => {
                    let (r, w) = rustix::pipe::pipe().map_err(|e| format!("pipe: {e}"))?;
                    // Whatever the kernel grants (it rounds to pages, and caps unprivileged
                    // users at /proc/sys/fs/pipe-max-size): a splice never asks for more.
                    let granted = rustix::pipe::fcntl_setpipe_size(&w, chunk as usize)
                        .map_err(|e| format!("F_SETPIPE_SZ {chunk}: {e}"))?;
                    chunk = chunk.min(granted as u32);
                    Some((r, w))
                }
                _ => None,
            };
            conns.push(Conn {
                sock,
                pos: 0,
                in_flight: 0,
                lease,
                pending: 0..0,
                pipe,
                in_pipe: 0,
            });
        }
        Ok(Self {
            variant,
            ring,
            file,
            size,
            chunk,
            map,
            kept,
            conns,
            bytes: 0,
            ops: 0,
        })
    }

    fn file(&self) -> Target {
        Target::Fd(self.file.as_raw_fd())
    }

    /// The next chunk's length from `pos`: up to the chunk size, not past the file's end.
    fn next_len(&self, pos: u64) -> u32 {
        (self.size - pos).min(u64::from(self.chunk)) as u32
    }

    fn push(&mut self, c: usize, sqe: SafeSqe) -> Result<(), String> {
        self.ring.push_safe(sqe).map_err(|e| e.to_string())?;
        self.conns[c].in_flight += 1;
        Ok(())
    }

    /// Connection `c` has nothing in flight: finish what its last operation left (a short
    /// send's rest, bytes left in the pipe), else start the next chunk when `more`.
    fn resume(&mut self, c: usize, more: bool) -> Result<(), String> {
        debug_assert_eq!(self.conns[c].in_flight, 0);
        let sock = Target::Fd(self.conns[c].sock.as_raw_fd());
        match self.variant {
            Variant::ReadSend | Variant::SendZc | Variant::CopySend => {
                let rest = self.conns[c].pending.clone();
                if !rest.is_empty() {
                    let lease = self.conns[c]
                        .lease
                        .as_ref()
                        .expect("held between read and send");
                    let sqe = if self.variant != Variant::SendZc {
                        self.ring
                            .send_fixed(sock, lease, rest.start, rest.len() as u32)
                    } else {
                        self.ring
                            .send_zc_fixed(sock, lease, rest.start, rest.len() as u32, false)
                    };
                    let sqe = sqe
                        .send_flags(SendFlags::NOSIGNAL)
                        .user_data(user_data(c, Kind::Send));
                    return self.push(c, sqe);
                }
                if more && self.variant == Variant::CopySend {
                    self.copy_kept(c);
                    return self.resume(c, more);
                }
                if more {
                    let pos = self.conns[c].pos;
                    let len = self.next_len(pos);
                    let lease = self.conns[c].lease.take().expect("back from the last read");
                    let file = self.file();
                    let sqe = self
                        .ring
                        .read_fixed(file, lease, 0, len, pos)
                        .user_data(user_data(c, Kind::Read));
                    return self.push(c, sqe);
                }
            }
            Variant::Splice => return self.resume_splice(c, sock, more),
            Variant::Sendfile => {
                if more {
                    return self.sendfile_until_full(c);
                }
            }
            Variant::Sendmsg => {
                if more {
                    return self.sendmsg_kept(c, sock);
                }
            }
            Variant::MmapSend => {
                if more {
                    let pos = self.conns[c].pos;
                    let len = self.next_len(pos);
                    let map = self.map.as_ref().expect("mapped for this variant");
                    let start = pos as usize;
                    // As ringwork-files does before each send from a mapping: mincore, so
                    // that no send waits on the disk (always resident here).
                    let len = map.resident(start..start + len as usize);
                    let sqe = SafeSqe::send_mapped(sock, map, start..start + len)
                        .send_flags(SendFlags::NOSIGNAL)
                        .user_data(user_data(c, Kind::Send));
                    return self.push(c, sqe);
                }
            }
        }
        Ok(())
    }

    /// splice: bytes left in the pipe go first; else, when `more`, the next chunk as one
    /// linked pair, file → pipe → socket.
    fn resume_splice(&mut self, c: usize, sock: Target, more: bool) -> Result<(), String> {
        let (pipe_r, pipe_w) = {
            let (r, w) = self.conns[c].pipe.as_ref().expect("a pipe per connection");
            (Target::Fd(r.as_raw_fd()), Target::Fd(w.as_raw_fd()))
        };
        let in_pipe = self.conns[c].in_pipe;
        if in_pipe > 0 {
            let sqe = SafeSqe::splice(pipe_r, None, sock, None, in_pipe, SpliceFlags::MOVE)
                .user_data(user_data(c, Kind::SpliceOut));
            return self.push(c, sqe);
        }
        if more {
            let pos = self.conns[c].pos;
            let len = self.next_len(pos);
            let into_pipe =
                SafeSqe::splice(self.file(), Some(pos), pipe_w, None, len, SpliceFlags::MOVE)
                    .user_data(user_data(c, Kind::SpliceIn));
            let out_of_pipe = SafeSqe::splice(pipe_r, None, sock, None, len, SpliceFlags::MOVE)
                .user_data(user_data(c, Kind::SpliceOut));
            self.ring
                .push_safe_chain(vec![into_pipe, out_of_pipe], false)
                .map_err(|e| e.to_string())?;
            self.conns[c].in_flight += 2;
        }
        Ok(())
    }

    /// sendfile(2), chunk after chunk, of the resident prefix of each, until the socket is
    /// full or [`SENDFILE_TURN`] bytes went; then a POLL_ADD for POLLOUT wakes the
    /// connection (at once when the socket still has room: the others get their turn, as
    /// nginx's `sendfile_max_chunk`). A short count means the socket is full (the range was
    /// resident): no second call to learn it from EAGAIN.
    fn sendfile_until_full(&mut self, c: usize) -> Result<(), String> {
        let map = Arc::clone(self.map.as_ref().expect("mapped for this variant"));
        let mut sent = 0;
        while sent < SENDFILE_TURN {
            let pos = self.conns[c].pos;
            let len = self.next_len(pos) as usize;
            let start = pos as usize;
            let resident = map.resident(start..start + len);
            if resident == 0 {
                // The bench warms the file before each run; a cold page here would be a
                // read in this thread.
                return Err(format!(
                    "connection {c}: offset {pos} is not in the page cache"
                ));
            }
            let sock = &self.conns[c].sock;
            match rustix::fs::sendfile(sock, &self.file, Some(&mut { pos }), resident) {
                Ok(0) => return Err(format!("connection {c}: sendfile sent 0")),
                Ok(n) => {
                    self.ops += 1;
                    self.bytes += n as u64;
                    self.advance(c, n as u32);
                    sent += n;
                    if n == resident {
                        continue;
                    }
                }
                Err(rustix::io::Errno::AGAIN) => {}
                Err(e) => return Err(format!("connection {c}: sendfile: {e}")),
            }
            break;
        }
        let sock = Target::Fd(self.conns[c].sock.as_raw_fd());
        let sqe = SafeSqe::poll_add(sock, rustix::event::PollFlags::OUT)
            .user_data(user_data(c, Kind::Writable));
        self.push(c, sqe)
    }

    /// sendmsg: the next chunk of the kept bytes in one SENDMSG of two iovecs, a head-sized
    /// part and the rest.
    fn sendmsg_kept(&mut self, c: usize, sock: Target) -> Result<(), String> {
        let start = self.conns[c].pos as usize;
        let end = start + self.next_len(start as u64) as usize;
        let kept = self.kept.as_ref().expect("kept for this variant");
        let split = (start + HEAD_PART).min(end);
        let sqe = SafeSqe::sendmsg2(
            sock,
            (OutBytes::Shared(Arc::clone(kept)), start..split),
            (OutBytes::Shared(Arc::clone(kept)), split..end),
        )
        .send_flags(SendFlags::NOSIGNAL)
        .user_data(user_data(c, Kind::Send));
        self.push(c, sqe)
    }

    /// copy-send: the next chunk of the kept bytes into connection `c`'s buffer, to send.
    fn copy_kept(&mut self, c: usize) {
        let pos = self.conns[c].pos;
        let len = self.next_len(pos);
        let kept = self.kept.as_ref().expect("kept for this variant");
        let lease = self.conns[c].lease.as_ref().expect("held between sends");
        let buffers = self
            .ring
            .fixed_buffers()
            .expect("registered for this variant");
        let start = pos as usize;
        buffers.bytes_mut(lease)[..len as usize]
            .copy_from_slice(&kept[start..start + len as usize]);
        self.conns[c].pending = 0..len;
        self.ops += 1;
        self.advance(c, len);
    }

    fn advance(&mut self, c: usize, by: u32) {
        let conn = &mut self.conns[c];
        conn.pos = (conn.pos + u64::from(by)) % self.size;
    }

    fn on_cqe(&mut self, cqe: &Cqe, more: bool) -> Result<(), String> {
        let (c, kind) = decode(cqe.user_data());
        if c >= self.conns.len() {
            return Err(format!(
                "a completion for no connection: {:?}",
                cqe.user_data()
            ));
        }
        let fail = |what: &str, e: RawErrno| format!("connection {c}: {what} failed: {e:?}");
        self.conns[c].in_flight -= 1;
        match (self.variant, kind) {
            // A SEND_ZC's buffer is free again: nothing else to account.
            (Variant::SendZc, Kind::Send) if cqe.is_notification() => {}
            (Variant::ReadSend | Variant::SendZc, Kind::Read) => {
                self.ops += 1;
                let lease = self
                    .ring
                    .take_lease(cqe.user_data())
                    .ok_or("a read's buffer did not come back")?;
                self.conns[c].lease = Some(lease);
                match cqe.result() {
                    // Inside the file, a read is short only at its end, which `next_len`
                    // never passes; a 0 would loop forever.
                    Ok(0) => return Err(format!("connection {c}: a read returned 0")),
                    Ok(n) => {
                        self.conns[c].pending = 0..n;
                        self.advance(c, n);
                    }
                    Err(e) => return Err(fail("read", e)),
                }
            }
            (Variant::ReadSend | Variant::SendZc | Variant::CopySend, Kind::Send) => {
                self.ops += 1;
                if cqe.more() {
                    // SEND_ZC: the notification follows; until then the buffer is the kernel's.
                    self.conns[c].in_flight += 1;
                }
                let n = cqe.result().map_err(|e| fail("send", e))?;
                self.bytes += u64::from(n);
                self.conns[c].pending.start += n;
            }
            (Variant::Splice, Kind::SpliceIn) => {
                self.ops += 1;
                match cqe.result() {
                    Ok(0) => return Err(format!("connection {c}: a splice from the file moved 0")),
                    Ok(n) => {
                        self.conns[c].in_pipe += n;
                        self.advance(c, n);
                    }
                    Err(e) => return Err(fail("splice file → pipe", e)),
                }
            }
            (Variant::Splice, Kind::SpliceOut) => match cqe.result() {
                Ok(n) => {
                    self.ops += 1;
                    self.bytes += u64::from(n);
                    self.conns[c].in_pipe -= n;
                }
                // The splice into the pipe was short and broke the link: its bytes are
                // still in the pipe, and `resume` sends them.
                Err(RawErrno::CANCELED) => {}
                Err(e) => return Err(fail("splice pipe → socket", e)),
            },
            // Room in the socket again: `resume` goes on with sendfile.
            (Variant::Sendfile, Kind::Writable) => {
                cqe.result().map_err(|e| fail("poll", e))?;
            }
            (Variant::MmapSend | Variant::Sendmsg, Kind::Send) => {
                self.ops += 1;
                // The send's reference to the mapping or the kept bytes; dropping it is all
                // there is to do.
                drop(self.ring.take_memory(cqe.user_data()));
                let n = cqe.result().map_err(|e| fail("send", e))?;
                self.bytes += u64::from(n);
                self.advance(c, n);
            }
            (v, k) => return Err(format!("a {k:?} completion in {}", v.name())),
        }
        if self.conns[c].in_flight == 0 {
            self.resume(c, more)?;
        }
        Ok(())
    }
}

/// "64 KiB", "16 MiB".
fn size_label(size: u64) -> String {
    match size {
        s if s >= 1 << 30 && s % (1 << 30) == 0 => format!("{} GiB", s >> 30),
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

/// The Markdown report: medians per size and variant with ratios to `read-send`, then
/// every run.
pub fn table(cfg: &Config, results: &[Outcome]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} loopback connections, {} chunks, one chunk in flight per connection; server loop \
         on CPU {}{}, reader on CPU {}; warm page cache (each file read before each run); \
         {:.1} s measured after {:.2} s warm-up per run, {} round(s), variants alternating.\n",
        cfg.conns,
        size_label(u64::from(cfg.chunk)),
        cfg.server_cpu,
        if cfg.iowq_anywhere {
            " (io-wq workers anywhere)"
        } else {
            " with its io-wq workers"
        },
        cfg.client_cpu,
        cfg.duration.as_secs_f64(),
        cfg.warmup.as_secs_f64(),
        cfg.rounds
    );
    s.push_str(
        "Medians over rounds. Server CPU = the loop thread + io-wq workers, per MiB sent; \
         ratios against `read-send` (below 1.00x CPU is cheaper); a request is one pass over \
         the file; spread is the lowest and highest round.\n\n",
    );
    s.push_str("| file | path | MiB/s | vs read-send | server CPU µs/MiB | spread | vs read-send | server µs/request | loop µs/MiB | io-wq µs/MiB | server busy | io-wq threads | reader µs/MiB |\n");
    s.push_str("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for &size in &cfg.sizes {
        let all = |v: Variant, f: &dyn Fn(&Outcome) -> f64| -> Vec<f64> {
            results
                .iter()
                .filter(|r| r.variant == v && r.size == size)
                .map(f)
                .collect()
        };
        let med = |v: Variant, f: &dyn Fn(&Outcome) -> f64| -> Option<f64> {
            let xs = all(v, f);
            (!xs.is_empty()).then(|| median(xs))
        };
        let rate = |r: &Outcome| r.bytes_per_sec() / f64::from(1 << 20);
        let cpu = |r: &Outcome| r.server_us_per_mib();
        let base_rate = med(Variant::ReadSend, &rate);
        let base_cpu = med(Variant::ReadSend, &cpu);
        let ratio = |x: f64, b: Option<f64>| b.map_or("-".into(), |b| format!("{:.2}x", x / b));
        for v in Variant::ALL {
            let Some(mib_s) = med(v, &rate) else {
                continue;
            };
            let us = med(v, &cpu).unwrap_or(0.0);
            let cpus = all(v, &cpu);
            let (lo, hi) = cpus
                .iter()
                .fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.0} | {:.0}–{:.0} | {} | {:.2} | {:.0} | {:.0} | {:.0}% | {:.0} | {:.0} |",
                size_label(size),
                v.name(),
                thousands(mib_s),
                ratio(mib_s, base_rate),
                us,
                lo,
                hi,
                ratio(us, base_cpu),
                med(v, &|r| r.server_us_per_request()).unwrap_or(0.0),
                med(v, &|r| per_mib(r.loop_cpu, r.bytes)).unwrap_or(0.0),
                med(v, &|r| per_mib(r.iowq_cpu, r.bytes)).unwrap_or(0.0),
                med(v, &|r| r.server_busy() * 100.0).unwrap_or(0.0),
                med(v, &|r| r.iowq_threads as f64).unwrap_or(0.0),
                med(v, &|r| per_mib(r.client_cpu, r.bytes)).unwrap_or(0.0),
            );
        }
    }
    s.push_str(&every_run(results));
    s
}

/// The Markdown table of every run, in the order they ran.
fn every_run(results: &[Outcome]) -> String {
    let mut s = String::new();
    s.push_str("\nEvery run:\n\n");
    s.push_str("| round | file | path | MiB/s | server CPU µs/MiB | µs/request | loop µs/MiB | io-wq µs/MiB | ops/s | longest stall ms |\n");
    s.push_str("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for r in results {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {:.2} | {:.0} | {:.0} | {} | {:.1} |",
            r.round,
            size_label(r.size),
            r.variant.name(),
            thousands(r.bytes_per_sec() / f64::from(1 << 20)),
            r.server_us_per_mib(),
            r.server_us_per_request(),
            per_mib(r.loop_cpu, r.bytes),
            per_mib(r.iowq_cpu, r.bytes),
            thousands(r.ops as f64 / r.elapsed.as_secs_f64().max(1e-9)),
            r.longest_gap.as_secs_f64() * 1e3,
        );
    }
    s
}

/// `ringwork-bench sendpath`'s options.
#[derive(clap::Args)]
pub struct Args {
    /// File sizes (suffixes k, M, G), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8k,16k,64k,256k,1M,16M", value_parser = crate::parse_size)]
    sizes: Vec<u64>,
    /// Loopback connections.
    #[arg(long, default_value_t = 8)]
    conns: usize,
    /// Bytes per read, splice or send (ringwork-files' default chunk).
    #[arg(long, default_value = "64k", value_parser = crate::parse_size)]
    chunk: u64,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 1.0)]
    duration: f64,
    /// Unmeasured seconds first, per run.
    #[arg(long, default_value_t = 0.25)]
    warmup: f64,
    /// Rounds; the variants alternate within each.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Variants to run, comma-separated [default: all].
    #[arg(long, value_delimiter = ',')]
    variant: Vec<Variant>,
    /// Directory for the served files.
    #[arg(long, default_value = "/tmp")]
    dir: PathBuf,
    /// CPU of the server loop [default: the first this process may use].
    #[arg(long)]
    server_cpu: Option<usize>,
    /// CPU of the reader [default: the second this process may use].
    #[arg(long)]
    client_cpu: Option<usize>,
    /// Let io-wq workers run on any CPU, not only the server's.
    #[arg(long)]
    iowq_anywhere: bool,
    /// Write results as JSON here too (default: the table only).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// `ringwork-bench sendpath`: every variant asked for on every size, in rounds, the table on
/// stdout.
pub fn run_command(args: Args) -> Result<(), String> {
    if args.conns == 0 || args.rounds == 0 || args.chunk == 0 {
        return Err("--conns, --rounds and --chunk must be at least 1".into());
    }
    let (default_server, default_client) = Config::default_cpus();
    let cfg = Config {
        dir: args.dir,
        sizes: args.sizes,
        conns: args.conns,
        chunk: u32::try_from(args.chunk).map_err(|_| "--chunk too large")?,
        duration: Duration::from_secs_f64(args.duration),
        warmup: Duration::from_secs_f64(args.warmup),
        rounds: args.rounds,
        server_cpu: args.server_cpu.unwrap_or(default_server),
        client_cpu: args.client_cpu.unwrap_or(default_client),
        iowq_anywhere: args.iowq_anywhere,
    };
    let variants = if args.variant.is_empty() {
        Variant::ALL.to_vec()
    } else {
        args.variant
    };
    println!("# ringwork-bench sendpath on {}", machine_line());
    // Other work on the machine moves these figures: say how busy it was.
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_before = load();
    let results = run_all(&cfg, &variants)?;
    println!(
        "# load average before: {}; after: {}",
        load_before.trim(),
        load().trim()
    );
    print!("{}", table(&cfg, &results));
    if let Some(path) = args.json {
        crate::write_json(&path, &crate::json_array(results.iter().map(Outcome::json)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(variant: Variant) -> Outcome {
        // A directory per variant: the tests run in parallel, and each removes its own.
        let dir = std::env::temp_dir().join(format!(
            "ringwork-sendpath-test-{}-{}",
            std::process::id(),
            variant.name()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (server_cpu, client_cpu) = Config::default_cpus();
        let cfg = Config {
            dir: dir.clone(),
            // Not a multiple of the chunk: every path meets a short last chunk.
            sizes: vec![300_001],
            conns: 3,
            chunk: 65536,
            duration: Duration::from_millis(150),
            warmup: Duration::from_millis(20),
            rounds: 1,
            server_cpu,
            client_cpu,
            iowq_anywhere: false,
        };
        let out = run_all(&cfg, &[variant]).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        out.into_iter().next().unwrap()
    }

    // Each run checks every byte the reader got against the file and that the reader got
    // exactly what the server's sends reported; these make sure each path moves data at all.
    #[test]
    fn read_send_serves_the_file_byte_exact() {
        let r = small(Variant::ReadSend);
        assert!(r.bytes > 300_001, "{r:?}");
        assert_eq!(r.iowq_threads, 0, "reads of cached data run inline: {r:?}");
    }

    #[test]
    fn splice_serves_the_file_byte_exact() {
        let r = small(Variant::Splice);
        assert!(r.bytes > 300_001, "{r:?}");
        assert!(r.iowq_threads >= 1, "splices run in io-wq: {r:?}");
    }

    #[test]
    fn mmap_send_serves_the_file_byte_exact() {
        let r = small(Variant::MmapSend);
        assert!(r.bytes > 300_001, "{r:?}");
    }

    #[test]
    fn send_zc_serves_the_file_byte_exact() {
        let r = small(Variant::SendZc);
        assert!(r.bytes > 300_001, "{r:?}");
    }

    #[test]
    fn sendfile_serves_the_file_byte_exact() {
        let r = small(Variant::Sendfile);
        assert!(r.bytes > 300_001, "{r:?}");
        assert_eq!(r.iowq_threads, 0, "sendfile runs on the loop thread: {r:?}");
    }

    #[test]
    fn copy_send_serves_the_file_byte_exact() {
        let r = small(Variant::CopySend);
        assert!(r.bytes > 300_001, "{r:?}");
    }

    #[test]
    fn sendmsg_serves_the_file_byte_exact() {
        let r = small(Variant::Sendmsg);
        assert!(r.bytes > 300_001, "{r:?}");
    }

    #[test]
    fn a_misplaced_byte_is_caught() {
        let content: Vec<u8> = (0..100).map(file_byte).collect();
        assert!(check_bytes(&content, 10, &content[10..50]).is_ok());
        // Wrapping past the end back to 0.
        let mut wrapped = content[90..].to_vec();
        wrapped.extend_from_slice(&content[..20]);
        assert!(check_bytes(&content, 90, &wrapped).is_ok());
        // The same bytes 8 further on: a word's index differs.
        assert!(check_bytes(&content, 10, &content[18..26]).is_err());
        assert!(
            check_bytes(&content, 10, &content[11..19]).is_err(),
            "one byte off"
        );
    }

    #[test]
    fn user_data_round_trips() {
        for kind in [
            Kind::Read,
            Kind::Send,
            Kind::SpliceIn,
            Kind::SpliceOut,
            Kind::Writable,
        ] {
            assert_eq!(decode(user_data(12345, kind)), (12345, kind));
        }
    }

    #[test]
    fn size_labels() {
        assert_eq!(size_label(64 << 10), "64 KiB");
        assert_eq!(size_label(16 << 20), "16 MiB");
        assert_eq!(size_label(300_001), "300001 B");
    }
}
