//! The access log (`--access-log PATH|-|off`): one line per answered request in nginx's
//! combined format,
//!
//! ```text
//! 127.0.0.1 - - [02/Dec/2026:06:30:00 +0000] "GET /a.txt HTTP/1.1" 200 4096 "-" "curl/8.5.0"
//! ```
//!
//! written in batches off the request path. HttpConn keeps what a line needs
//! (`HttpConn::drain_log`); a worker formats the lines of every event into its [`Batch`],
//! and at the end of a turn of its loop, once the batch holds [`FLUSH_BYTES`] or its first
//! line is [`FLUSH_AFTER`] old (as nginx's `buffer=` and `flush=`), hands it to the kernel:
//! through the ring as one IORING_OP_WRITE ([`RingLog`], the io_uring backend), or with one
//! write(2) (the epoll backend, [`Batch::write_now`]). A stopping server writes what is
//! left. Every thread writes its own batches to the one descriptor, opened O_APPEND, so each
//! batch lands whole at the end of the file; lines of one thread are in order, lines of two
//! threads may interleave out of order (by up to a batch).
//!
//! Times are UTC (`+0000`): the server reads no time zone. Values from the client
//! (the request line, Referer, User-Agent) are escaped as nginx does: `"`, `\` and bytes
//! outside printable ASCII become `\xHH`, so a line is one line whatever was sent. A request
//! whose head did not parse has `-` for its request line.
//!
//! SIGUSR1 (and SIGHUP) reopen a log file ([`Sink::reopen`]): after logrotate renames it,
//! the path is opened anew. As nginx's buffered logs do, a worker writes the lines it
//! formatted before the reopen to the old file first (a batch notes where the reopen fell
//! when its next line goes in), and then every line after it to the new one; a write already
//! handed to the kernel finishes into the old file (its descriptor stays open until the
//! write's CQE), and the old descriptor is closed once no worker and no write holds it. No
//! line is lost or written twice. Standard output is not reopened.
//!
//! A log that cannot be written (a full disk, a closed pipe) is reported once on stderr and
//! its lines are dropped; serving goes on. So are lines beyond [`MAX_BATCH`] while a write is
//! still in flight: the `stats:` line counts them (`log_dropped`).
//!
//! What it deliberately does not do: rotate (logrotate renames, the server reopens), log
//! requests whose
//! response was cut short, or resolve names.

use ringwork_sys::rustix;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringwork_core::http::format_log_date;
use ringwork_core::httpconn::{HttpConn, LogEntry};
use ringwork_core::token::{Generation, OpKind, Slot, Token};
use ringwork_sys::{OpMemory, Ring, SafeSqe, Target};
use rustix::fd::{AsRawFd, OwnedFd};
use rustix::fs::{Mode, OFlags};

/// Where `--access-log` sends the lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// No log (the default).
    Off,
    /// Standard output (`-`).
    Stdout,
    /// A file, created if missing and appended to.
    File(PathBuf),
}

impl std::str::FromStr for Destination {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "off" => Destination::Off,
            "-" => Destination::Stdout,
            "" => return Err("an empty path; `off` turns the log off".into()),
            path => Destination::File(PathBuf::from(path)),
        })
    }
}

/// Most bytes a worker's batch holds while its last write is still in flight; lines beyond
/// are dropped (and counted), so that a log slower than the server cannot eat its memory.
pub const MAX_BATCH: usize = 4 << 20;

/// A batch this large is written at the end of the loop's turn.
pub const FLUSH_BYTES: usize = 64 << 10;

/// A batch whose first line is this old is written at the end of the loop's turn (which
/// comes at least every tick: a tenth of the shortest timeout, at most 100 ms).
pub const FLUSH_AFTER: Duration = Duration::from_millis(100);

/// The log every worker writes to: the descriptor (replaced by [`Sink::reopen`]), and what
/// went wrong with it.
#[derive(Debug)]
pub struct Sink {
    /// The file to reopen; `None` for standard output.
    path: Option<PathBuf>,
    /// The descriptor new batches go to. Workers keep a clone until they see `generation`
    /// change, and each write in flight keeps the one it writes to.
    current: Mutex<Arc<OwnedFd>>,
    /// Bumped by each reopen, so that a worker looks at `current` only when it changed.
    generation: AtomicU64,
    /// A write failed and that was reported (once per process, or per reopen).
    reported: AtomicBool,
    /// Lines dropped: unwritable, or over [`MAX_BATCH`].
    dropped: AtomicU64,
}

/// Opens a log file for appending, creating it.
fn open_file(path: &Path) -> Result<OwnedFd, String> {
    rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(|e| format!("--access-log {}: {e}", path.display()))
}

impl Sink {
    /// Opens `dest` for appending; `None` for [`Destination::Off`].
    pub fn open(dest: &Destination) -> Result<Option<Sink>, String> {
        let (fd, path) = match dest {
            Destination::Off => return Ok(None),
            Destination::File(path) => (open_file(path)?, Some(path.clone())),
            Destination::Stdout => {
                let fd = rustix::io::dup(std::io::stdout())
                    .map_err(|e| format!("--access-log -: {e}"))?;
                // Every thread writes at the file position (offset -1): on a regular file
                // that is only safe with O_APPEND, under which each write lands whole at the
                // end; a pipe or terminal has no position. See PITFALLS.md, "A read at
                // offset -1 moves the file position".
                let regular = rustix::fs::fstat(&fd).is_ok_and(|st| {
                    rustix::fs::FileType::from_raw_mode(st.st_mode)
                        == rustix::fs::FileType::RegularFile
                });
                if regular {
                    let flags = rustix::fs::fcntl_getfl(&fd).map_err(|e| e.to_string())?;
                    rustix::fs::fcntl_setfl(&fd, flags | OFlags::APPEND)
                        .map_err(|e| format!("--access-log -: setting O_APPEND: {e}"))?;
                }
                (fd, None)
            }
        };
        Ok(Some(Sink::with_fd(fd, path)))
    }

    fn with_fd(fd: OwnedFd, path: Option<PathBuf>) -> Sink {
        Sink {
            path,
            current: Mutex::new(Arc::new(fd)),
            generation: AtomicU64::new(0),
            reported: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        }
    }

    /// Opens the log's path again (created if logrotate moved it away) and sends the
    /// workers' next batches there; the old file gets what is already being written to it.
    /// Returns the path reopened (`None` for standard output, which is kept). On an error
    /// the old file stays in use.
    pub fn reopen(&self) -> Result<Option<&Path>, String> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let fd = Arc::new(open_file(path)?);
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        *current = fd;
        // Under the lock: a worker that sees the new generation finds the new descriptor.
        self.generation.fetch_add(1, Ordering::Release);
        // A new file may well be writable where the old one was not.
        self.reported.store(false, Ordering::Relaxed);
        Ok(Some(path))
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The descriptor to write to, refreshed in `held` when a reopen replaced it: one atomic
    /// load when nothing changed.
    fn target(&self, held: &mut Option<(u64, Arc<OwnedFd>)>) -> Arc<OwnedFd> {
        // Acquire: pairs with the Release in `reopen`, after the descriptor was replaced.
        let generation = self.generation.load(Ordering::Acquire);
        match held {
            Some((seen, fd)) if *seen == generation => Arc::clone(fd),
            _ => {
                let fd = Arc::clone(&self.current.lock().unwrap_or_else(|e| e.into_inner()));
                *held = Some((generation, Arc::clone(&fd)));
                fd
            }
        }
    }

    /// Whether a reopen came after `held` was seen (one atomic load).
    fn reopened_since(&self, held: &Option<(u64, Arc<OwnedFd>)>) -> bool {
        held.as_ref()
            .is_some_and(|(seen, _)| *seen != self.generation.load(Ordering::Acquire))
    }

    /// The descriptor `held` names, as it is (the old file after a reopen); the current one
    /// if none is held yet.
    fn held(&self, held: &mut Option<(u64, Arc<OwnedFd>)>) -> Arc<OwnedFd> {
        match held {
            Some((_, fd)) => Arc::clone(fd),
            None => self.target(held),
        }
    }

    /// A write failed: say so once for the whole process, and count the lines lost.
    fn failed(&self, err: impl std::fmt::Display, lines: u64) {
        self.dropped.fetch_add(lines, Ordering::Relaxed);
        if !self.reported.swap(true, Ordering::Relaxed) {
            eprintln!(
                "ringwork-files: cannot write the access log ({err}); \
                 its lines are dropped from now on, serving goes on"
            );
        }
    }
}

/// The lines a worker has formatted and not yet handed to a write.
#[derive(Debug, Default)]
pub struct Batch {
    buf: Vec<u8>,
    lines: u64,
    /// When the first line went in.
    since: Option<Instant>,
    /// The last second formatted, and how it looked.
    date: Option<(u64, [u8; 26])>,
    /// The last client address formatted, and how it looked.
    peer: Option<(IpAddr, Vec<u8>)>,
    /// The log's descriptor as last seen, and the reopen generation it belongs to: where
    /// the batch's lines (those before `split`) go.
    fd: Option<(u64, Arc<OwnedFd>)>,
    /// A reopen came after this many bytes (and lines) of the batch: those go to `fd`, the
    /// old file, and the rest to the new one.
    split: Option<(usize, u64)>,
}

impl Batch {
    /// Appends the line of `entry`, from `peer`, answered at `unix_secs`; counts it as
    /// dropped instead when the batch is over [`MAX_BATCH`].
    pub fn push(&mut self, sink: &Sink, peer: Option<IpAddr>, unix_secs: u64, e: &LogEntry<'_>) {
        if self.buf.len() >= MAX_BATCH {
            sink.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let date = match self.date {
            Some((secs, text)) if secs == unix_secs => text,
            _ => {
                let mut text = [0u8; 26];
                format_log_date(unix_secs, &mut text);
                self.date = Some((unix_secs, text));
                text
            }
        };
        if self.since.is_none() {
            self.since = Some(Instant::now());
        }
        if self.fd.is_none() {
            // The file this line belongs to: the one open now.
            sink.target(&mut self.fd);
        }
        if !self.buf.is_empty() && self.split.is_none() && sink.reopened_since(&self.fd) {
            self.split = Some((self.buf.len(), self.lines));
        }
        match peer {
            Some(ip) => {
                if !matches!(&self.peer, Some((last, _)) if *last == ip) {
                    self.peer = Some((ip, ip.to_string().into_bytes()));
                }
                let text = self.peer.as_ref().map_or(&b"-"[..], |(_, t)| &t[..]);
                self.buf.extend_from_slice(text);
            }
            None => self.buf.push(b'-'),
        }
        format_line(&mut self.buf, &date, e);
        self.lines += 1;
    }

    /// Nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Time to write: [`FLUSH_BYTES`] are waiting, or the first line is [`FLUSH_AFTER`] old.
    pub fn due(&self) -> bool {
        self.buf.len() >= FLUSH_BYTES || self.since.is_some_and(|t| t.elapsed() >= FLUSH_AFTER)
    }

    /// The epoll backend's flush: one blocking write(2) of the whole batch (a short write is
    /// continued), then the batch is empty. A failure is reported once and drops the batch.
    pub fn write_now(&mut self, sink: &Sink) {
        if let Some((len, lines)) = self.split.take() {
            // The lines before a reopen, to the old file first.
            let old = sink.held(&mut self.fd);
            write_all(sink, &old, &self.buf[..len], lines);
            self.buf.drain(..len);
            self.lines -= lines;
            sink.target(&mut self.fd);
        }
        let fd = sink.held(&mut self.fd);
        write_all(sink, &fd, &self.buf, self.lines);
        // The next lines go to the file open now.
        sink.target(&mut self.fd);
        self.buf.clear();
        self.lines = 0;
        self.since = None;
    }
}

/// One blocking write(2) of `bytes` (`lines` lines), a short write continued; a failure is
/// reported once and drops them.
fn write_all(sink: &Sink, fd: &OwnedFd, bytes: &[u8], lines: u64) {
    let mut at = 0;
    while at < bytes.len() {
        match rustix::io::write(fd, &bytes[at..]) {
            Ok(0) => {
                sink.failed("a write of no bytes", lines);
                break;
            }
            Ok(n) => at += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                sink.failed(e, lines);
                break;
            }
        }
    }
}

/// The lines of `http`'s answered requests, from `peer`, into `batch`.
pub fn collect(sink: &Sink, batch: &mut Batch, peer: Option<IpAddr>, http: &mut HttpConn) {
    let mut now = None;
    http.drain_log(|e| {
        let secs = *now.get_or_insert_with(unix_secs);
        batch.push(sink, peer, secs, e);
    });
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One combined-format line after the client's address, newline included.
fn format_line(out: &mut Vec<u8>, date: &[u8; 26], e: &LogEntry<'_>) {
    out.extend_from_slice(b" - - [");
    out.extend_from_slice(date);
    out.extend_from_slice(b"] \"");
    if e.method.is_empty() {
        out.push(b'-');
    } else {
        escaped(out, e.method);
        out.push(b' ');
        escaped(out, e.target);
        out.extend_from_slice(if e.version_minor == 0 {
            b" HTTP/1.0"
        } else {
            b" HTTP/1.1"
        });
    }
    out.extend_from_slice(b"\" ");
    decimal(out, u64::from(e.status));
    out.push(b' ');
    decimal(out, e.body_bytes);
    out.extend_from_slice(b" \"");
    quoted_or_dash(out, e.referer);
    out.extend_from_slice(b"\" \"");
    quoted_or_dash(out, e.user_agent);
    out.extend_from_slice(b"\"\n");
}

fn decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(ringwork_core::http::Decimal::new(n).as_bytes());
}

fn quoted_or_dash(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        Some(v) if !v.is_empty() => escaped(out, v),
        _ => out.push(b'-'),
    }
}

/// nginx's escaping of logged values: `"`, `\` and bytes outside 0x20..=0x7e as `\xHH`.
fn escaped(out: &mut Vec<u8>, v: &[u8]) {
    for &b in v {
        if b == b'"' || b == b'\\' || !(0x20..=0x7e).contains(&b) {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        } else {
            out.push(b);
        }
    }
}

/// The token of a worker's log write: no connection's.
const WRITE_TOKEN: Token = Token::new(OpKind::Write, Slot::WORKER, Generation::ZERO);

/// The io_uring backend's log: the worker's batch, and the one IORING_OP_WRITE of an earlier
/// batch that may be in flight (its buffer is the ring's until the CQE: PITFALLS.md, "A
/// buffer is the kernel's until its CQE").
#[derive(Debug, Default)]
pub struct RingLog {
    /// The lines formatted since the last write was submitted.
    pub batch: Batch,
    /// The buffer of the last write, back from the ring, reused for the next batch.
    spare: Vec<u8>,
    /// A write is in flight: its lines, how far into its buffer it started, and the
    /// descriptor it writes to (kept open until its CQE, whatever a reopen does meanwhile).
    in_flight: Option<(u64, usize, Arc<OwnedFd>)>,
}

impl RingLog {
    /// A write is in flight (the worker must not exit before its CQE).
    pub fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether a CQE is the log write's.
    pub fn owns(token: &Token) -> bool {
        *token == WRITE_TOKEN
    }

    /// At the end of each turn of the loop: submits the batch as one write when it is
    /// [`Batch::due`] (any batch with `now`: a stopping worker), unless a write is in flight
    /// (the batch then waits for its CQE).
    pub fn flush(&mut self, sink: &Sink, ring: &mut Ring, now: bool) -> Result<(), String> {
        if self.in_flight.is_some() || self.batch.is_empty() || !(now || self.batch.due()) {
            return Ok(());
        }
        let spare = std::mem::take(&mut self.spare);
        let mut buf = std::mem::replace(&mut self.batch.buf, spare);
        // The file these lines belong to (the old one, when a reopen came since they were
        // formatted); the lines after go to the file open now.
        let fd = sink.held(&mut self.batch.fd);
        sink.target(&mut self.batch.fd);
        let lines = match self.batch.split.take() {
            Some((len, lines)) => {
                // Only the lines before the reopen: the rest stays in the batch for the next
                // flush (after this write's CQE), to the new file.
                self.batch.buf.extend_from_slice(&buf[len..]);
                buf.truncate(len);
                self.batch.lines -= lines;
                lines
            }
            None => {
                self.batch.since = None;
                std::mem::take(&mut self.batch.lines)
            }
        };
        self.submit(ring, fd, buf, 0, lines)
    }

    fn submit(
        &mut self,
        ring: &mut Ring,
        fd: Arc<OwnedFd>,
        buf: Vec<u8>,
        from: usize,
        lines: u64,
    ) -> Result<(), String> {
        let len = buf.len();
        // Offset -1: at the file position, which O_APPEND puts at the end (see Sink::open).
        let sqe = SafeSqe::write(Target::Fd(fd.as_raw_fd()), buf, from..len, u64::MAX)
            .user_data(WRITE_TOKEN.encode());
        ring.push_safe(sqe)
            .map_err(|e| format!("io_uring submit: {e}"))?;
        self.in_flight = Some((lines, from, fd));
        Ok(())
    }

    /// The write's CQE: a short write continues with the rest; a failure is reported (once)
    /// and its lines dropped; then the buffer is kept for the next batch.
    pub fn on_cqe(
        &mut self,
        sink: &Sink,
        ring: &mut Ring,
        cqe: &ringwork_sys::Cqe,
    ) -> Result<(), String> {
        let Some((lines, from, fd)) = self.in_flight.take() else {
            return Ok(());
        };
        let Some(OpMemory::Bytes(mut buf)) = ring.take_memory(cqe.user_data()) else {
            // Guard: the write carried its buffer; without it there is nothing to resume.
            return Ok(());
        };
        match cqe.result() {
            Ok(n) if n > 0 && from + (n as usize) < buf.len() => {
                // The rest goes to the same file, reopened or not.
                return self.submit(ring, fd, buf, from + n as usize, lines);
            }
            Ok(0) => sink.failed("a write of no bytes", lines),
            Ok(_) => {}
            Err(e) => sink.failed(rustix::io::Errno::from_raw_os_error(e.0), lines),
        }
        buf.clear();
        self.spare = buf;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(method: &'a [u8], target: &'a [u8]) -> LogEntry<'a> {
        LogEntry {
            method,
            target,
            version_minor: 1,
            status: 200,
            body_bytes: 4096,
            referer: None,
            user_agent: Some(b"curl/8.5.0"),
        }
    }

    fn sink() -> Sink {
        Sink::with_fd(rustix::io::dup(std::io::stderr()).unwrap(), None)
    }

    fn line(peer: Option<IpAddr>, e: &LogEntry<'_>) -> String {
        let mut b = Batch::default();
        b.push(&sink(), peer, 1_796_193_000, e);
        String::from_utf8(b.buf).unwrap()
    }

    #[test]
    fn a_batch_is_due_by_size_or_age() {
        let mut b = Batch::default();
        assert!(!b.due());
        b.push(&sink(), None, 0, &entry(b"GET", b"/"));
        assert!(!b.due(), "one fresh line");
        std::thread::sleep(FLUSH_AFTER);
        assert!(b.due(), "old enough");
        let mut b = Batch::default();
        let long = vec![b'a'; FLUSH_BYTES];
        b.push(&sink(), None, 0, &entry(b"GET", &long));
        assert!(b.due(), "large enough");
    }

    #[test]
    fn combined_format() {
        let e = entry(b"GET", b"/a.txt?x=1");
        assert_eq!(
            line(Some("127.0.0.1".parse().unwrap()), &e),
            "127.0.0.1 - - [02/Dec/2026:06:30:00 +0000] \"GET /a.txt?x=1 HTTP/1.1\" 200 4096 \"-\" \"curl/8.5.0\"\n"
        );
        let e = LogEntry {
            version_minor: 0,
            status: 404,
            body_bytes: 14,
            referer: Some(b"http://r/"),
            user_agent: None,
            ..entry(b"HEAD", b"/x")
        };
        assert_eq!(
            line(Some("::1".parse().unwrap()), &e),
            "::1 - - [02/Dec/2026:06:30:00 +0000] \"HEAD /x HTTP/1.0\" 404 14 \"http://r/\" \"-\"\n"
        );
        let garbage = LogEntry {
            status: 400,
            ..entry(b"", b"")
        };
        assert!(line(None, &garbage).starts_with("- - - [02/Dec/2026:06:30:00 +0000] \"-\" 400 "));
    }

    #[test]
    fn client_values_cannot_break_the_line() {
        let e = LogEntry {
            referer: Some(b"a\"b\\c\r\nd"),
            user_agent: Some(b"\xff\x7f\x01"),
            ..entry(b"GET", b"/")
        };
        let l = line(None, &e);
        assert!(
            l.ends_with("\"a\\x22b\\x5Cc\\x0D\\x0Ad\" \"\\xFF\\x7F\\x01\"\n"),
            "{l}"
        );
        assert_eq!(l.matches('\n').count(), 1);
    }

    #[test]
    fn destinations() {
        assert_eq!("off".parse(), Ok(Destination::Off));
        assert_eq!("-".parse(), Ok(Destination::Stdout));
        assert_eq!(
            "/tmp/a.log".parse(),
            Ok(Destination::File("/tmp/a.log".into()))
        );
        assert!("".parse::<Destination>().is_err());
    }

    /// A fresh directory `$TMPDIR/<prefix>-<pid>` and a log sink on `access.log` in it.
    fn log_in(prefix: &str) -> (std::path::PathBuf, std::path::PathBuf, Sink) {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let _ = std::fs::remove_file(&path);
        let sink = Sink::open(&Destination::File(path.clone()))
            .unwrap()
            .unwrap();
        (dir, path, sink)
    }

    /// logrotate's rename, then a reopen: the batch written before it is in the renamed
    /// file, the one after in a new file at the old path, nothing in both.
    #[test]
    fn a_reopen_sends_the_next_batch_to_a_new_file() {
        let (dir, path, sink) = log_in("ringwork-reopen");
        let mut b = Batch::default();
        b.push(&sink, None, 0, &entry(b"GET", b"/before"));
        b.write_now(&sink);
        std::fs::rename(&path, dir.join("access.log.1")).unwrap();
        b.push(&sink, None, 0, &entry(b"GET", b"/renamed"));
        b.write_now(&sink);
        b.push(&sink, None, 0, &entry(b"GET", b"/buffered"));
        assert_eq!(sink.reopen().unwrap(), Some(path.as_path()));
        b.push(&sink, None, 0, &entry(b"GET", b"/after"));
        b.write_now(&sink);
        let old = std::fs::read_to_string(dir.join("access.log.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(old.contains("/before") && old.contains("/renamed"), "{old}");
        assert!(
            old.contains("/buffered"),
            "formatted before the reopen: {old}"
        );
        assert!(!old.contains("/after"), "{old}");
        assert_eq!(new.lines().count(), 1, "{new}");
        assert!(new.contains("/after"), "{new}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A reopen between a batch's last line and its write: the whole batch is the old
    /// file's, and the next line the new file's.
    #[test]
    fn a_batch_formatted_before_a_reopen_goes_to_the_old_file() {
        let (dir, path, sink) = log_in("ringwork-reopen2");
        let mut b = Batch::default();
        b.push(&sink, None, 0, &entry(b"GET", b"/late"));
        std::fs::rename(&path, dir.join("old.log")).unwrap();
        sink.reopen().unwrap();
        b.write_now(&sink);
        b.push(&sink, None, 0, &entry(b"GET", b"/next"));
        b.write_now(&sink);
        let old = std::fs::read_to_string(dir.join("old.log")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(old.contains("/late") && !old.contains("/next"), "{old}");
        assert!(new.contains("/next") && !new.contains("/late"), "{new}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn standard_output_is_not_reopened() {
        assert_eq!(sink().reopen(), Ok(None));
    }

    #[test]
    fn a_full_batch_drops_and_counts() {
        let sink = sink();
        let mut b = Batch::default();
        let e = entry(b"GET", b"/");
        while b.buf.len() < MAX_BATCH {
            b.push(&sink, None, 0, &e);
        }
        let lines = b.lines;
        b.push(&sink, None, 0, &e);
        assert_eq!((b.lines, sink.dropped()), (lines, 1));
    }
}
