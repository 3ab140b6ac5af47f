//! One HTTP/1.1 static-file connection as a sans-IO state machine.
//!
//! [`HttpConn`] takes what the driver observed (bytes received, a stat result, an open result,
//! a read or send completion, the passing of time) and describes what to do next as [`Op`]s,
//! polled with [`HttpConn::poll_op`]. The io_uring driver turns each op into an SQE and feeds
//! the CQE back; the epoll driver performs it with a nonblocking syscall (or waits for
//! readiness) and feeds the result back. Both run exactly these decisions.
//!
//! A request goes: receive the head → parse (pipelined bytes stay buffered) → [`Op::Stat`] the
//! path → (a directory: stat `index.html` inside it when the target ends with `/`, else a 301
//! to the slashed target) → [`Op::Open`] → send the head and stream
//! the body through two buffers (read the next chunk while the current one is sent, with
//! [`FileRead`] handling short reads and O_DIRECT alignment) → [`Op::CloseFile`] → next
//! request or [`Op::Close`] → [`Op::Free`].
//!
//! The stat comes *before* the open: a FIFO or device is refused without ever being opened (an
//! open of a FIFO blocks), and the driver stats by path because io_uring's STATX cannot name a
//! registered file. The open (openat2 with `RESOLVE_BENEATH`) is what enforces the root: a
//! path the stat resolved outside it (through a symlink) fails to open, and its size is never
//! sent.
//!
//! Ownership: the connection counts its own operations in flight ([`HttpConn::in_flight`]):
//! every op it emits reports exactly one completion (cancel and shutdown requests included,
//! with [`HttpConn::on_cancel_done`] and [`HttpConn::on_shutdown_done`]), and a zero-copy send
//! also its notification when its result promised one, in either order. [`Op::Close`] comes
//! once nothing is in flight on the socket but SEND_ZC notifications, and says whether to
//! reset it: with notifications owed the kernel may still read the chunk buffers, and bytes
//! of ours still queued in the socket hold those notifications back (a peer that does not
//! read would hold the connection forever), so the socket is closed abortively and the
//! kernel drops them. [`Op::Free`] comes once nothing at all is in flight: only then may the
//! driver free the connection, its buffers and its file slot. So no driver counts anything.
//!
//! What it deliberately does not do: hold descriptors or buffers for file data (the driver
//! owns the two chunk buffers, [`BufIx`] 0 and 1, each at least [`Config::chunk`] bytes), read
//! a clock ([`Time`] comes in with every event), or log.

use alloc::vec;
use alloc::vec::Vec;
use arrayvec::ArrayVec;

use crate::buf::{BufId, ZcSlot, ZcTracker};
use crate::errno::RawErrno;
use crate::file::{Alignment, Chunk, FileRead, ReadOutcome};
use crate::http::{
    client_is_fresh, content_type, error_response, if_range_holds, is_directory_request,
    normalize_path, parse_range, parse_request, preferred_codings, redirect_response,
    slash_redirect_location, Codings, ContentCoding, ContentRange, ETag, ErrorResponseLen,
    HttpError, Limits, Method, Parsed, RangeResult, ResponseHead, Status,
};

/// One answered request, as an access log sees it: what nginx's combined format prints
/// but the client's address and the time, which are the driver's. From
/// [`HttpConn::drain_log`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LogEntry<'a> {
    /// The method as sent; empty when the request head did not parse (a 400 or 431).
    pub method: &'a [u8],
    /// The request target as sent; empty when the head did not parse.
    pub target: &'a [u8],
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
    /// The status answered.
    pub status: u16,
    /// Body bytes sent (nginx's `$body_bytes_sent`): none for HEAD, 304 and 416.
    pub body_bytes: u64,
    /// The `Referer` value, if one was sent.
    pub referer: Option<&'a [u8]>,
    /// The `User-Agent` value, if one was sent.
    pub user_agent: Option<&'a [u8]>,
}

/// Which of the connection's two chunk buffers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct BufIx(pub u8);

/// The current time, as the driver read it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Time {
    /// Monotonic milliseconds (for timeouts).
    pub mono_ms: u64,
    /// Wall-clock Unix seconds (for the `Date` header).
    pub unix_secs: u64,
}

/// Per-server settings.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Config {
    /// Request head limits.
    pub limits: Limits,
    /// Bytes per file read; each chunk buffer holds at least this many.
    pub chunk: u32,
    /// A request head must be complete this long after its wait began.
    pub header_timeout_ms: u64,
    /// A keep-alive connection with nothing buffered, or a response making no progress, is
    /// dropped after this long.
    pub idle_timeout_ms: u64,
    /// Open files with O_DIRECT when statx reports alignments that fit the chunk size.
    pub direct: bool,
    /// Send file chunks with [`Op::SendZc`] (zero-copy: the buffer stays the kernel's until
    /// the send's notification). Response heads always go by [`Op::Send`].
    pub zerocopy: bool,
    /// The driver can chain an open with the first read of the file it opens (the read
    /// names the file by something known before the open completes: a registered-file slot,
    /// io_uring's fixed-file assignment at issue time, Linux 5.18). Then the response is
    /// planned at stat time and [`Op::Open`] says `link_next` when a read follows it.
    pub link_open_read: bool,
    /// The driver can send the response head and the first body bytes in one send
    /// ([`SendSrc::HeadAndBuf`]): its chunk buffers have [`HEAD_ROOM`] bytes in front of each
    /// chunk, where it copies the head just before sending. Responses with a body then go
    /// out in one send instead of two (not with zero-copy sends or O_DIRECT reads).
    pub head_with_body: bool,
    /// Serve precompressed siblings (nginx's `gzip_static` / `brotli_static`): for a request
    /// whose `Accept-Encoding` takes brotli or gzip, stat `FILE.br` / `FILE.gz` first (best
    /// coding first) and serve the first that is a regular file, with `Content-Encoding` and
    /// FILE's `Content-Type`; else FILE. Every file answer then says `Vary: Accept-Encoding`.
    /// A sibling that does not exist costs a stat per coding the client takes.
    pub precompressed: bool,
    /// Keep what an access log needs of every answered request, for
    /// [`HttpConn::drain_log`].
    pub access_log: bool,
    /// The driver can send file bytes straight from the open file ([`SendSrc::File`]:
    /// sendfile(2), or a send from a mapping of the file), with no read into a chunk buffer.
    /// The body after the first chunk (which goes with the head) then goes that way, in
    /// sends of up to [`FILE_SEND_MAX`] bytes; a driver that cannot send a range from the
    /// file now says so with [`HttpConn::on_file_send_declined`], and the next chunk (or the
    /// rest of the response) goes through a buffer. Not with zero-copy sends or O_DIRECT.
    pub file_send: bool,
}

/// Most bytes one [`SendSrc::File`] names (the socket takes what fits; the rest goes next).
pub const FILE_SEND_MAX: u32 = 1 << 20;

/// Bytes in front of every chunk read, when [`Config::head_with_body`] is on, where the head
/// goes: chunk buffers must hold `chunk + HEAD_ROOM` bytes. A page, so that reads stay
/// aligned; more than any head this module writes.
pub const HEAD_ROOM: u32 = 4096;

impl Default for Config {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            chunk: 64 * 1024,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            direct: false,
            zerocopy: false,
            link_open_read: false,
            head_with_body: false,
            precompressed: false,
            access_log: false,
            file_send: false,
        }
    }
}

/// What a stat said about a path.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum FileKind {
    /// A regular file: servable.
    Regular,
    /// A directory: serve its `index.html`.
    Directory,
    /// A FIFO, socket, device: refused with 403.
    Other,
}

/// The stat result a driver reports.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct FileInfo {
    /// The file type.
    pub kind: FileKind,
    /// Length in bytes.
    pub size: u64,
    /// Modification time, Unix seconds.
    pub mtime_secs: u64,
    /// O_DIRECT alignment (`STATX_DIOALIGN`), `None` when the file system does not say or
    /// does not support O_DIRECT for this file.
    pub dio: Option<Alignment>,
}

/// Where the bytes of a send are.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum SendSrc {
    /// `HttpConn::head_bytes()[start..start + len]`.
    Head {
        /// First byte.
        start: u32,
        /// Byte count.
        len: u32,
    },
    /// Chunk buffer `buf`, bytes `start..start + len`.
    Buf {
        /// Which buffer.
        buf: BufIx,
        /// First byte.
        start: u32,
        /// Byte count.
        len: u32,
    },
    /// The whole response head ([`HttpConn::head_bytes`]) and then chunk buffer `buf`'s bytes
    /// `start..start + len`, in one send ([`Config::head_with_body`]): the driver copies the
    /// head into the buffer right before `start` (there are [`HEAD_ROOM`] bytes free there)
    /// and sends from `start - head length`.
    HeadAndBuf {
        /// Which buffer.
        buf: BufIx,
        /// First body byte in the buffer.
        start: u32,
        /// Body bytes.
        len: u32,
    },
    /// Bytes `offset..offset + len` of the open file, sent straight from it
    /// ([`Config::file_send`]). A driver that cannot (no mapping of the file yet, its pages
    /// not in memory) reports [`HttpConn::on_file_send_declined`] instead of a result.
    File {
        /// File offset of the first byte.
        offset: u64,
        /// Byte count, at most [`FILE_SEND_MAX`].
        len: u32,
    },
}

/// An operation for the driver to perform; exactly one completion is fed back for each
/// (a [`Op::SendZc`] also reports its notification), except [`Op::Close`] and [`Op::Free`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Op {
    /// Receive at most `max` bytes from the socket; report with [`HttpConn::on_recv`].
    Recv {
        /// Most bytes the connection can take now.
        max: u32,
    },
    /// Stat [`HttpConn::path`] relative to the root (following symlinks); report with
    /// [`HttpConn::on_stat`].
    Stat,
    /// Open [`HttpConn::path`] read-only beneath the root (openat2 `RESOLVE_BENEATH |
    /// RESOLVE_NO_MAGICLINKS`), with O_DIRECT when `direct`; report with [`HttpConn::on_open`].
    Open {
        /// Add O_DIRECT.
        direct: bool,
        /// Submit this open and the next op polled (the file's first [`Op::Read`]) as one
        /// IOSQE_IO_LINK chain: the read runs only once the open succeeded. When the open
        /// fails, the read completes with ECANCELED: report both, in any order (only with
        /// [`Config::link_open_read`]).
        link_next: bool,
    },
    /// Read `len` bytes at file `offset` into buffer `buf` at `buf_pos`; report with
    /// [`HttpConn::on_read`].
    Read {
        /// Which buffer.
        buf: BufIx,
        /// Explicit file offset.
        offset: u64,
        /// Bytes to read.
        len: u32,
        /// Position in the buffer.
        buf_pos: u32,
    },
    /// Send these bytes; report with [`HttpConn::on_send`].
    Send(SendSrc),
    /// Zero-copy send (IORING_OP_SEND_ZC) of chunk buffer `buf`, bytes `start..start + len`
    /// (only with [`Config::zerocopy`]). Report its result with [`HttpConn::on_send_zc`] and,
    /// when that result said a notification follows, the notification with
    /// [`HttpConn::on_send_notif`]: until then the kernel may still read the buffer, and the
    /// connection neither reads into it nor emits [`Op::Close`]. `slot` names this send in
    /// both reports (notifications of several sends may be outstanding, in any order).
    SendZc {
        /// Which buffer.
        buf: BufIx,
        /// First byte.
        start: u32,
        /// Byte count.
        len: u32,
        /// This send's identity, below [`ZC_SENDS`].
        slot: ZcSlot,
    },
    /// Close the open file; report with [`HttpConn::on_file_closed`].
    CloseFile,
    /// Cancel the socket operation in flight (a receive or send, by descriptor); it
    /// completes with an error. Report the cancel request's own completion, whatever its
    /// result, with [`HttpConn::on_cancel_done`].
    Cancel,
    /// Shut down the sending side of the socket (the response is complete and the connection
    /// will close): the client sees end of stream. Report its completion, whatever its
    /// result, with [`HttpConn::on_shutdown_done`].
    Shutdown,
    /// Close the socket now: nothing is in flight on it but SEND_ZC notifications. With
    /// `reset`, some are owed: close it abortively (SO_LINGER 0), so that the kernel drops
    /// the bytes still queued, which hold the notifications back, and keep the chunk buffers
    /// (the kernel may still read them) until [`Op::Free`]. No completion is reported.
    Close {
        /// SEND_ZC notifications are owed: reset instead of a graceful close.
        reset: bool,
    },
    /// Nothing of the connection is in flight any more: free it (its buffers, its file slot,
    /// the memory its SQEs named). The last op; nothing follows.
    Free,
}

/// Where the request stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Waiting for a complete request head; `since` is when the wait began.
    Head { since: u64 },
    /// A stat of the path is in flight; `index` once the path names `index.html` in a
    /// directory; `sibling: Some(i)` while it is the precompressed sibling of the request's
    /// `i`th coding (its suffix appended to the path).
    Stat { index: bool, sibling: Option<u8> },
    /// The open is in flight. `planned`: the response head and body reader were made at stat
    /// time, and the first read may be linked behind the open (and in flight).
    Open {
        info: FileInfo,
        direct: bool,
        planned: bool,
    },
    /// A planned open failed while its linked read was still to report (ECANCELED): `status`
    /// goes out once it has.
    OpenFailed { status: Status },
    /// Sending the response (head, then body chunks).
    Respond,
    /// The response is out; the file close is in flight.
    CloseFile,
    /// An error response went out with `Connection: close`: read and discard what the client
    /// still sends (so that closing does not reset the connection before the client read the
    /// response), until end of stream or the header timeout.
    Drain { since: u64, drained: u32 },
    /// Waiting for in-flight ops to finish, then close.
    Closing,
    /// [`Op::Close`] was emitted; SEND_ZC notifications may still be owed.
    Closed,
    /// [`Op::Free`] was emitted. Terminal.
    Freed,
}

/// What a chunk buffer holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum BufState {
    Free,
    Reading,
    Full(Chunk),
    Sending {
        chunk: Chunk,
        sent: u32,
    },
    /// Sent in full by zero-copy sends whose notifications have not all arrived: the kernel
    /// may still read it, so it is not free (PITFALLS.md, "SEND_ZC gives two CQEs, and the buffer
    /// is the kernel's until the second").
    Notif,
}

/// The request being answered.
#[derive(Clone, Debug, Default)]
struct ReqInfo {
    head_only: bool,
    keep_alive: bool,
    /// The target's path ends with `/`: a directory found there serves its index; without
    /// the slash it is redirected to the slashed path.
    slash: bool,
    range: Option<ArrayVec<u8, 128>>,
    if_modified_since: Option<ArrayVec<u8, 64>>,
    /// Longer than this is kept as an empty list, which matches nothing: the full response.
    if_none_match: Option<ArrayVec<u8, 256>>,
    /// Longer than this is kept empty, which never holds: the whole file.
    if_range: Option<ArrayVec<u8, 64>>,
    /// The precompressed codings the client takes, best first (none without
    /// [`Config::precompressed`]).
    codings: Codings,
    /// The coding of the sibling being served, whose suffix ends the path.
    coding: Option<ContentCoding>,
}

/// The fixed part of a log entry: status (u16), body bytes (u64), version, flags; then four
/// fields, each a u16 length (little-endian) and its bytes: method, target, referer, user
/// agent. Flags: bit 0 a referer was sent, bit 1 a user agent.
const LOG_FIXED: usize = 12;

/// Starts an entry at the end of `log` for `request` (`None`: a head that did not parse);
/// status and body length are filled in when the response is done.
fn log_begin(log: &mut Vec<u8>, request: Option<&crate::http::Request<'_>>) {
    let field = |log: &mut Vec<u8>, v: &[u8]| {
        // A head is at most Limits::max_head_bytes; longer than u16 is cut, not refused.
        let n = v.len().min(usize::from(u16::MAX));
        log.extend_from_slice(&(n as u16).to_le_bytes());
        log.extend_from_slice(&v[..n]);
    };
    let version = request.map_or(1, |r| r.version_minor);
    let referer = request.and_then(|r| r.referer);
    let user_agent = request.and_then(|r| r.user_agent);
    let flags = u8::from(referer.is_some()) | u8::from(user_agent.is_some()) << 1;
    log.extend_from_slice(&[0; 10]);
    log.extend_from_slice(&[version, flags]);
    field(log, request.map_or(&b""[..], |r| r.method_name.as_bytes()));
    field(log, request.map_or(&b""[..], |r| r.target.as_bytes()));
    field(log, referer.unwrap_or_default());
    field(log, user_agent.unwrap_or_default());
}

/// The entry at the start of `log`, and its encoded length (see [`LOG_FIXED`]).
fn log_entry(log: &[u8]) -> (LogEntry<'_>, usize) {
    let mut at = LOG_FIXED;
    let mut field = || {
        let n = usize::from(u16::from_le_bytes([log[at], log[at + 1]]));
        let v = &log[at + 2..at + 2 + n];
        at += 2 + n;
        v
    };
    let (method, target, referer, user_agent) = (field(), field(), field(), field());
    let flags = log[11];
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&log[2..10]);
    let entry = LogEntry {
        method,
        target,
        version_minor: log[10],
        status: u16::from_le_bytes([log[0], log[1]]),
        body_bytes: u64::from_le_bytes(bytes),
        referer: (flags & 1 != 0).then_some(referer),
        user_agent: (flags & 2 != 0).then_some(user_agent),
    };
    (entry, at)
}

/// Most zero-copy sends a connection has unfinished (result or notification outstanding) at
/// once; beyond that a chunk goes by copy ([`Op::Send`]). Sends are one at a time, and a
/// buffer awaiting notifications is not refilled, so 8 is only exceeded by many short sends.
pub const ZC_SENDS: u32 = 8;

/// Longest response head written (no header here is longer than a date or a number).
const HEAD_CAP: usize = 512;
/// Path bytes beyond the normalised target: `/index.html`, a sibling's suffix, the NUL.
const PATH_ROOM: usize = "/index.html".len() + ".br".len() + 1;
const _: () = assert!(".br".len() == ContentCoding::Br.suffix().len());
const _: () = assert!(".gz".len() == ContentCoding::Gzip.suffix().len());
/// Most bytes discarded after an error response before closing anyway.
const DRAIN_LIMIT: u32 = 64 * 1024;

/// One connection; see the module docs.
///
/// A request from receive to the first read, the driver playing the kernel:
///
/// ```
/// use ringwork_core::httpconn::{BufIx, Config, FileInfo, FileKind, HttpConn, Op, Time};
///
/// let now = Time::default();
/// let mut conn = HttpConn::new(Config::default(), now);
/// let mut ops = |c: &mut HttpConn| std::iter::from_fn(|| c.poll_op()).collect::<Vec<_>>();
/// assert!(matches!(ops(&mut conn)[..], [Op::Recv { .. }]));
/// conn.on_recv(now, Ok(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"));
/// assert_eq!(ops(&mut conn), [Op::Stat]);
/// assert_eq!(conn.path(), b"hello.txt\0"); // relative to the root, confined to it
/// let info = FileInfo { kind: FileKind::Regular, size: 12, mtime_secs: 0, dio: None };
/// conn.on_stat(now, Ok(info));
/// assert!(matches!(ops(&mut conn)[..], [Op::Open { .. }]));
/// conn.on_open(now, Ok(()));
/// // The head goes out while the first chunk is read into buffer 0.
/// let ops = ops(&mut conn);
/// assert!(ops.iter().any(|op| matches!(op, Op::Read { buf: BufIx(0), .. })), "{ops:?}");
/// ```
#[derive(Debug)]
pub struct HttpConn {
    cfg: Config,
    phase: Phase,
    ops: ArrayVec<Op, 8>,
    /// Received, not yet consumed bytes: `rbuf[..rlen]`. Empty (unallocated) while nothing
    /// is kept: a head received whole is parsed where the driver received it.
    rbuf: Vec<u8>,
    rlen: usize,
    /// The path to stat and open, NUL-terminated: `path[..path_len + 1]`.
    path: Vec<u8>,
    path_len: usize,
    /// The response head (or whole error response): `head[..head_len]`, `head_sent` out.
    head: Vec<u8>,
    head_len: u32,
    head_sent: u32,
    /// The request being answered (boxed: a connection waiting idle holds none).
    req: Option<alloc::boxed::Box<ReqInfo>>,
    /// The current request's target as received (still percent-encoded): the path the
    /// trailing-slash redirect is made from. Freed, like `path`, while the connection waits
    /// idle.
    target: Vec<u8>,
    /// With [`Config::access_log`]: the answered requests not yet drained, then the one being
    /// answered (from `log_open`), encoded by [`log_begin`].
    log: Vec<u8>,
    log_open: Option<usize>,
    /// The status and body length of the response being sent, for the log.
    log_status: u16,
    log_body: u64,
    file_open: bool,
    read: Option<FileRead>,
    bufs: [BufState; 2],
    /// Where this response's chunks start in their buffers: [`HEAD_ROOM`] when the head goes
    /// out with the first chunk, else 0.
    head_room: u32,
    /// The send in flight is a [`SendSrc::HeadAndBuf`].
    combined_in_flight: bool,
    /// This response's body after its first chunk goes by [`SendSrc::File`]; `file_cold`:
    /// the driver declined one, so the next chunk goes through a buffer first;
    /// `file_in_flight`: the send in flight is one.
    file_send: bool,
    file_cold: bool,
    file_in_flight: bool,
    /// With [`Config::zerocopy`]: the SEND_ZCs not finished, and which buffer waits for them.
    zc: Option<ZcTracker<()>>,
    /// The buffer the next read goes into, and the one whose chunk is sent next.
    read_ix: u8,
    send_ix: u8,
    recv_in_flight: bool,
    send_in_flight: bool,
    cancel_sent: bool,
    /// Ops emitted whose completion has not been reported, SEND_ZCs aside (the tracker
    /// counts those until result and notification are both in).
    pending: u32,
    /// An [`Op::CloseFile`] is queued or in flight.
    file_closing: bool,
    /// After the response: close instead of reading the next request.
    close_after: bool,
    /// Last time anything completed, for the no-progress timeout while responding.
    last_progress: u64,
    requests: u64,
}

impl HttpConn {
    /// A new connection accepted at `now`; poll it for the first [`Op::Recv`].
    pub fn new(cfg: Config, now: Time) -> Self {
        let mut c = Self {
            cfg,
            phase: Phase::Head { since: now.mono_ms },
            ops: ArrayVec::new(),
            // Allocated when a request needs them, freed when the connection waits idle.
            rbuf: Vec::new(),
            rlen: 0,
            path: Vec::new(),
            path_len: 0,
            head: Vec::new(),
            head_len: 0,
            head_sent: 0,
            req: None,
            target: Vec::new(),
            log: Vec::new(),
            log_open: None,
            log_status: 0,
            log_body: 0,
            file_open: false,
            read: None,
            bufs: [BufState::Free; 2],
            head_room: 0,
            combined_in_flight: false,
            file_send: false,
            file_cold: false,
            file_in_flight: false,
            zc: cfg.zerocopy.then(|| ZcTracker::new(2, ZC_SENDS)),
            read_ix: 0,
            send_ix: 0,
            recv_in_flight: false,
            send_in_flight: false,
            cancel_sent: false,
            pending: 0,
            file_closing: false,
            close_after: false,
            last_progress: now.mono_ms,
            requests: 0,
        };
        c.want_head(now);
        c
    }

    /// The next operation to perform, if any. Poll until `None` after every event.
    #[must_use]
    pub fn poll_op(&mut self) -> Option<Op> {
        if self.ops.is_empty() {
            None
        } else {
            Some(self.ops.remove(0))
        }
    }

    /// The path to stat or open, relative to the root, NUL-terminated (`.` for the root);
    /// empty when no request is being answered.
    pub fn path(&self) -> &[u8] {
        self.path.get(..self.path_len + 1).unwrap_or(&[])
    }

    /// Bytes of memory the connection holds beyond its own size (buffers allocated while a
    /// request is received or answered; none while it waits idle).
    pub fn heap_bytes(&self) -> usize {
        self.rbuf.capacity()
            + self.path.capacity()
            + self.head.capacity()
            + self.target.capacity()
            + self.log.capacity()
    }

    /// The receive buffer's size: one byte more than the longest head.
    fn rcap(&self) -> usize {
        self.cfg.limits.max_head_bytes + 1
    }

    /// The response head bytes that [`SendSrc::Head`] refers to.
    pub fn head_bytes(&self) -> &[u8] {
        &self.head[..self.head_len as usize]
    }

    /// True once [`Op::Close`] has been emitted (and perhaps [`Op::Free`]).
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed | Phase::Freed)
    }

    /// True once [`Op::Free`] has been emitted: nothing of the connection is in flight.
    pub fn is_freed(&self) -> bool {
        self.phase == Phase::Freed
    }

    /// True when chunk buffer `buf` holds nothing of this connection's: no read fills it, no
    /// send (or SEND_ZC notification) still names it, and no bytes in it wait to be sent. A
    /// driver may then give its memory to another connection until the next [`Op::Read`] into
    /// it; this connection reads into a buffer before it sends from it, so it never names a
    /// free buffer's old bytes.
    pub fn buf_free(&self, buf: BufIx) -> bool {
        self.bufs[usize::from(buf.0)] == BufState::Free
    }

    /// Operations emitted whose completions have not all been reported: each op counts one,
    /// a SEND_ZC until its result and (when promised) its notification are both in.
    pub fn in_flight(&self) -> u32 {
        self.pending + self.zc_in_flight() as u32
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// With [`Config::access_log`]: calls `f` with every request answered since the last
    /// call, in order, and forgets them. A request is logged once its response is fully
    /// sent; one whose response was cut short (the client left, a drain's abort) is not.
    /// Call after handling each event (nothing is lost by calling later, but entries pile
    /// up in memory until then).
    pub fn drain_log(&mut self, mut f: impl FnMut(&LogEntry<'_>)) {
        let done = self.log_open.unwrap_or(self.log.len());
        let mut at = 0;
        while at < done {
            let (entry, len) = log_entry(&self.log[at..done]);
            f(&entry);
            at += len;
        }
        // The entry being answered moves to the front.
        self.log.copy_within(done.., 0);
        self.log.truncate(self.log.len() - done);
        self.log_open = self.log_open.map(|_| 0);
    }

    fn push(&mut self, op: Op) {
        // Every op reports one completion but these (a SEND_ZC's are the tracker's).
        if !matches!(op, Op::SendZc { .. } | Op::Close { .. } | Op::Free) {
            self.pending += 1;
        }
        // Capacity guard: at most a send, a read and one bookkeeping op are queued at once.
        self.ops.push(op);
    }

    /// One reported completion of a counted op. A stray report (a driver bug) must not make
    /// the connection look idle while something is in flight, nor underflow.
    fn completed(&mut self) {
        self.pending = self.pending.saturating_sub(1);
    }

    /// Bytes arrived (`Ok(&[])`: end of stream) or the receive failed.
    pub fn on_recv(&mut self, now: Time, res: Result<&[u8], RawErrno>) {
        self.completed();
        self.recv_in_flight = false;
        self.last_progress = now.mono_ms;
        match (self.phase, res) {
            (Phase::Head { .. }, Ok(bytes)) if !bytes.is_empty() => {
                if self.rlen == 0 && self.requests > 0 {
                    // The keep-alive wait is over; the head's own clock starts now.
                    self.phase = Phase::Head { since: now.mono_ms };
                }
                // A receive never asks for more than the room left (`Op::Recv`'s max).
                let bytes = &bytes[..bytes.len().min(self.rcap() - self.rlen)];
                if self.rlen == 0 {
                    // Nothing kept: parse in place, keep only what is left over (a partial
                    // head, or the start of a pipelined request).
                    let used = self.start_request(now, bytes);
                    let rest = match used {
                        Some(n) => bytes.get(n..).unwrap_or(&[]),
                        None => bytes,
                    };
                    if !rest.is_empty() {
                        self.keep(rest);
                    }
                    if used.is_none() {
                        self.push_recv();
                    }
                } else {
                    self.keep(bytes);
                    self.want_head(now);
                }
            }
            (Phase::Drain { since, drained }, Ok(bytes)) if !bytes.is_empty() => {
                let drained = drained.saturating_add(bytes.len() as u32);
                if drained > DRAIN_LIMIT {
                    self.close();
                } else {
                    self.phase = Phase::Drain { since, drained };
                    self.push_recv();
                }
            }
            // End of stream, an error or a cancellation: nothing more will come.
            _ => self.close(),
        }
    }

    /// The path names a regular file: open it, and where the driver chains an open to its
    /// first read, plan the response now and queue that read behind the open.
    fn open_regular(&mut self, now: Time, info: FileInfo) {
        let direct = self.cfg.direct
            && info
                .dio
                .is_some_and(|a| self.cfg.chunk % a.unit() == 0 && a.unit() <= 65536);
        if self.cfg.link_open_read && !direct {
            // Everything the response needs is known now: plan it, and let the
            // first read follow the open in one chain (no round trip between them).
            // O_DIRECT opens are not chained: their EINVAL retry would re-plan.
            if !self.plan_response(now, info, false) {
                return self.close();
            }
            self.phase = Phase::Open {
                info,
                direct,
                planned: true,
            };
            let r = usize::from(self.read_ix);
            // Only into a free buffer: one whose SEND_ZC notifications are still out
            // is read into later, by pump, once they are in.
            let next = match self.bufs[r] {
                BufState::Free => self.read.as_mut().and_then(FileRead::next_read),
                _ => None,
            };
            match next {
                Some(req) => {
                    self.push(Op::Open {
                        direct,
                        link_next: true,
                    });
                    self.bufs[r] = BufState::Reading;
                    self.push(Op::Read {
                        buf: BufIx(self.read_ix),
                        offset: req.offset,
                        len: req.len,
                        buf_pos: req.buf_pos + self.head_room,
                    });
                }
                None => self.push(Op::Open {
                    direct,
                    link_next: false,
                }),
            }
        } else {
            self.phase = Phase::Open {
                info,
                direct,
                planned: false,
            };
            self.push(Op::Open {
                direct,
                link_next: false,
            });
        }
    }

    /// The stat of [`HttpConn::path`] completed.
    pub fn on_stat(&mut self, now: Time, res: Result<FileInfo, RawErrno>) {
        self.completed();
        self.last_progress = now.mono_ms;
        let Phase::Stat { index, sibling } = self.phase else {
            // Guard: a stat is only issued in Phase::Stat; a stray one is a driver bug.
            return self.close();
        };
        if let Some(i) = sibling {
            let coding = self
                .req
                .as_ref()
                .and_then(|r| r.codings.get(usize::from(i)));
            match (res, coding) {
                (Ok(info), Some(c)) if info.kind == FileKind::Regular => {
                    // The sibling is served: the path keeps its suffix for the open.
                    if let Some(r) = self.req.as_mut() {
                        r.coding = Some(c);
                    }
                }
                (_, coding) => {
                    // No such sibling (or not a regular file, or not to be read): the next
                    // coding's, then the file itself.
                    self.path_len -= coding.map_or(0, |c| c.suffix().len());
                    self.path[self.path_len] = 0;
                    return self.stat_path(index, usize::from(i) + 1);
                }
            }
        }
        match res {
            Ok(info) if info.kind == FileKind::Regular => self.open_regular(now, info),
            Ok(info)
                if info.kind == FileKind::Directory
                    && !index
                    && !self.req.as_ref().is_some_and(|r| r.slash) =>
            {
                // `/sub` is a directory: relative links in its index resolve against `/sub/`,
                // so send the client there first (as every static server does).
                self.redirect(now)
            }
            Ok(info) if info.kind == FileKind::Directory && !index => {
                // A directory: its index.html, or nothing (no listings).
                let mut len = self.path_len;
                if len == 1 && self.path[0] == b'.' {
                    len = 0;
                } else {
                    self.path[len] = b'/';
                    len += 1;
                }
                self.path[len..len + 10].copy_from_slice(b"index.html");
                self.path_len = len + 10;
                self.path[self.path_len] = 0;
                self.stat_path(true, 0);
            }
            // A directory without index.html, a directory named index.html, a FIFO or device.
            Ok(_) => self.error(now, Status::Forbidden),
            Err(RawErrno::NOENT | RawErrno::NOTDIR | RawErrno::NAMETOOLONG) if index => {
                self.error(now, Status::Forbidden)
            }
            Err(RawErrno::NOENT | RawErrno::NOTDIR | RawErrno::NAMETOOLONG) => {
                self.error(now, Status::NotFound)
            }
            Err(_) => self.error(now, Status::Forbidden),
        }
    }

    /// The open completed; `Err(INVAL)` on an O_DIRECT open makes it retry buffered.
    pub fn on_open(&mut self, now: Time, res: Result<(), RawErrno>) {
        self.completed();
        self.last_progress = now.mono_ms;
        let Phase::Open {
            info,
            direct,
            planned,
        } = self.phase
        else {
            // Aborted while the open was in flight (or a stray report): a file it opened
            // must still be closed.
            self.file_open |= res.is_ok();
            return self.close();
        };
        match res {
            Ok(()) if planned => {
                self.file_open = true;
                if self.head_len == 0 {
                    // The linked read reported a failure although its open succeeded (not
                    // something the kernel does): the plan is gone; close, file included.
                    return self.close();
                }
                // The head is ready and the first read in flight (or done): send.
                self.phase = Phase::Respond;
                self.pump(now);
            }
            Ok(()) => {
                self.file_open = true;
                self.respond(now, info, direct);
            }
            Err(RawErrno::INVAL) if direct => {
                // The file system refused O_DIRECT after all: same bytes, buffered.
                self.phase = Phase::Open {
                    info,
                    direct: false,
                    planned: false,
                };
                self.push(Op::Open {
                    direct: false,
                    link_next: false,
                });
            }
            Err(e) => {
                let status = match e {
                    RawErrno::NOENT | RawErrno::NOTDIR => Status::NotFound,
                    // EXDEV / ELOOP: resolution left the root (a symlink out of it); EACCES.
                    _ => Status::Forbidden,
                };
                if self.bufs.contains(&BufState::Reading) {
                    // The linked read's ECANCELED is still to come: it owns its buffer.
                    self.phase = Phase::OpenFailed { status };
                } else {
                    self.read = None;
                    self.error(now, status);
                }
            }
        }
    }

    /// The read into `buf` completed.
    pub fn on_read(&mut self, now: Time, buf: BufIx, res: Result<u32, RawErrno>) {
        self.completed();
        self.last_progress = now.mono_ms;
        let b = usize::from(buf.0 & 1);
        debug_assert_eq!(self.bufs[b], BufState::Reading);
        match (self.phase, res) {
            // The open failed and this read, linked behind it, was cancelled: now the error
            // response can go.
            (Phase::OpenFailed { status }, _) => {
                self.bufs[b] = BufState::Free;
                self.read = None;
                return self.error(now, status);
            }
            // The linked read reports before its open (the kernel does not promise the
            // order): cancelled because the open failed, which on_open then reports. The
            // plan is dropped (`head_len == 0` marks it).
            (Phase::Open { planned: true, .. }, Err(_)) => {
                self.bufs[b] = BufState::Free;
                self.read = None;
                self.head_len = 0;
                return;
            }
            _ => {}
        }
        let Some(read) = self.read.as_mut() else {
            // Guard: reads are only issued while `read` is set; it is dropped only when none
            // is in flight.
            return self.close();
        };
        match read.on_read(res) {
            ReadOutcome::Chunk(mut chunk) => {
                // The chunk a declined file send asked for is in: the file again after it.
                self.file_cold = false;
                chunk.buf_start += self.head_room;
                self.bufs[b] = BufState::Full(chunk);
                self.read_ix ^= 1;
            }
            // Same buffer, the remainder: `read_ix` still names it.
            ReadOutcome::Resubmit => self.bufs[b] = BufState::Free,
            ReadOutcome::Failed(_) => {
                // The head is already out (or going): the only honest signal left is closing.
                self.bufs[b] = BufState::Free;
                return self.close();
            }
        }
        self.pump(now);
    }

    /// The send completed.
    pub fn on_send(&mut self, now: Time, res: Result<u32, RawErrno>) {
        self.completed();
        self.send_done(now, res);
    }

    /// The driver did not perform the [`SendSrc::File`] send it was given (that is its
    /// completion): the next chunk goes through a buffer and the file is tried again after it
    /// (`again`: the pages were not in memory, say), or, without `again`, the rest of the
    /// response does (the file cannot be sent from).
    pub fn on_file_send_declined(&mut self, now: Time, again: bool) {
        self.completed();
        self.send_in_flight = false;
        self.file_in_flight = false;
        if again {
            self.file_cold = true;
        } else {
            self.file_send = false;
        }
        // Closing, pump finishes the close.
        self.pump(now);
    }

    /// A send's result, by copy or zero copy.
    fn send_done(&mut self, now: Time, res: Result<u32, RawErrno>) {
        self.send_in_flight = false;
        self.last_progress = now.mono_ms;
        let n = match res {
            Ok(n) if n > 0 => n,
            Err(RawErrno::AGAIN | RawErrno::INTR) => 0,
            // Peer gone (EPIPE, ECONNRESET), cancelled, or a zero-byte send.
            _ => return self.close(),
        };
        let mut n = n;
        if self.file_in_flight {
            self.file_in_flight = false;
            if let Some(read) = self.read.as_mut() {
                // Never more than asked: the kernel sends at most the range named.
                let left = read.unread().map_or(0, |(_, left)| left);
                read.skip(u64::from(n).min(left));
            }
            n = 0;
        } else if self.combined_in_flight {
            // Head first, then the chunk: what is left of either goes by the plain sends.
            self.combined_in_flight = false;
            let head = n.min(self.head_len - self.head_sent);
            self.head_sent += head;
            n -= head;
            if self.head_sent < self.head_len {
                // The chunk stays `Sending` with nothing of it sent; the head's rest first.
                debug_assert_eq!(n, 0);
            }
        } else if self.head_sent < self.head_len {
            self.head_sent += n.min(self.head_len - self.head_sent);
            n = 0;
        }
        if n > 0 {
            let s = usize::from(self.send_ix);
            if let BufState::Sending { chunk, sent } = self.bufs[s] {
                let sent = sent + n.min(chunk.len - sent);
                if sent == chunk.len {
                    // Free now, or once the notifications of its zero-copy sends are in.
                    let free = self
                        .zc
                        .as_mut()
                        .map_or(Ok(true), |zc| zc.recycle(BufId(s as u16)));
                    self.bufs[s] = match free {
                        Ok(false) => BufState::Notif,
                        // Ok(true), or Err: an index the tracker does not know was never
                        // sent by zero copy.
                        _ => BufState::Free,
                    };
                    self.send_ix ^= 1;
                } else {
                    self.bufs[s] = BufState::Sending { chunk, sent };
                }
            }
        }
        match self.phase {
            Phase::Respond => self.pump(now),
            Phase::Closing => self.close(),
            _ => self.pump(now),
        }
    }

    /// The result CQE of the [`Op::SendZc`] named `slot` arrived; `more` is its
    /// IORING_CQE_F_MORE (a notification follows). Then as [`HttpConn::on_send`].
    pub fn on_send_zc(&mut self, now: Time, slot: ZcSlot, res: Result<u32, RawErrno>, more: bool) {
        let Some(zc) = self.zc.as_mut() else {
            // Guard: SendZc is only emitted with a tracker; a stray result is a driver bug.
            return self.close();
        };
        match zc.on_result(slot, more) {
            // A result that finishes the send cannot release a deferred buffer: the buffer
            // being sent is not recycled before this very result is handled below.
            Ok(r) => debug_assert!(r.recycle.is_none()),
            Err(_) => return self.close(),
        }
        self.send_done(now, res);
    }

    /// The notification CQE (IORING_CQE_F_NOTIF) of the [`Op::SendZc`] named `slot` arrived:
    /// the kernel is done with that send's bytes. May free its buffer for the next read, and
    /// lets a closing connection finish.
    pub fn on_send_notif(&mut self, now: Time, slot: ZcSlot) {
        let Some(zc) = self.zc.as_mut() else {
            return;
        };
        match zc.on_notification(slot) {
            Ok(Some(buf)) => {
                let b = usize::from(buf.0 & 1);
                debug_assert_eq!(self.bufs[b], BufState::Notif);
                self.bufs[b] = BufState::Free;
            }
            Ok(None) => {}
            // A duplicate or unknown notification: a driver or kernel bug; the tracker is
            // unchanged, and nothing here depends on it.
            Err(_) => return,
        }
        if self.phase == Phase::Closed {
            // The socket is closed; the last notification frees the connection.
            return self.free_when_idle();
        }
        // Reads may proceed into the freed buffer; a closing connection may be done.
        self.pump(now);
    }

    /// The completion of an [`Op::Cancel`] request (whatever its result: the cancelled op
    /// reports on its own).
    pub fn on_cancel_done(&mut self, _now: Time) {
        self.completed();
        if self.phase == Phase::Closing {
            self.close();
        }
    }

    /// The completion of an [`Op::Shutdown`] (whatever its result: a peer that reset the
    /// connection shows in the receive).
    pub fn on_shutdown_done(&mut self, _now: Time) {
        self.completed();
        if self.phase == Phase::Closing {
            self.close();
        }
    }

    /// Zero-copy sends whose result or notification is still to come.
    pub fn zc_in_flight(&self) -> usize {
        self.zc.as_ref().map_or(0, ZcTracker::in_flight)
    }

    /// The file close completed.
    pub fn on_file_closed(&mut self, now: Time) {
        self.completed();
        self.file_open = false;
        self.file_closing = false;
        match self.phase {
            Phase::CloseFile => self.next_request(now),
            _ => self.close(),
        }
    }

    /// Time passed: drop the connection if a head, a keep-alive wait or a response has
    /// taken too long. Call every so often (a tenth of the shortest timeout is plenty).
    pub fn on_tick(&mut self, now: Time) {
        let t = now.mono_ms;
        let expired = match self.phase {
            Phase::Head { since } => {
                // A keep-alive wait with nothing received is idle; anything partial is a head.
                let limit = if self.rlen == 0 && self.requests > 0 {
                    self.cfg.idle_timeout_ms
                } else {
                    self.cfg.header_timeout_ms
                };
                t.saturating_sub(since) >= limit
            }
            Phase::Drain { since, .. } => t.saturating_sub(since) >= self.cfg.header_timeout_ms,
            Phase::Respond => t.saturating_sub(self.last_progress) >= self.cfg.idle_timeout_ms,
            _ => false,
        };
        if expired {
            self.close();
        }
    }

    /// The server is stopping (a graceful drain): a response in progress (or a request being
    /// looked up) is finished and the connection then closes, as after `Connection: close`
    /// (send side shut down, the client's end of stream awaited); a connection waiting for a
    /// request head, idle keep-alive or partial, closes now. Responses not yet begun say
    /// `Connection: close`. How long the drain may take is the driver's to bound, with
    /// [`HttpConn::abort`].
    pub fn on_shutdown(&mut self) {
        match self.phase {
            Phase::Head { .. } => self.close(),
            Phase::Stat { .. }
            | Phase::Open { .. }
            | Phase::OpenFailed { .. }
            | Phase::Respond
            | Phase::CloseFile => {
                self.close_after = true;
            }
            Phase::Drain { .. } | Phase::Closing | Phase::Closed | Phase::Freed => {}
        }
    }

    /// Drop the connection now, whatever it is doing (a drain's grace period is over): the
    /// socket operation in flight is cancelled, reads in flight finish, the file is closed,
    /// then [`Op::Close`].
    pub fn abort(&mut self) {
        self.close();
    }

    fn push_recv(&mut self) {
        if !self.recv_in_flight {
            self.recv_in_flight = true;
            let max = match self.phase {
                Phase::Drain { .. } => self.rcap(),
                _ => self.rcap() - self.rlen,
            };
            self.push(Op::Recv { max: max as u32 });
        }
    }

    /// Appends received bytes to what is kept (allocating the buffer when nothing was).
    fn keep(&mut self, bytes: &[u8]) {
        if self.rbuf.is_empty() {
            self.rbuf = vec![0; self.rcap()];
        }
        self.rbuf[self.rlen..self.rlen + bytes.len()].copy_from_slice(bytes);
        self.rlen += bytes.len();
    }

    /// Gives the request buffers back: a connection waiting for its next request holds none.
    /// (Keeping them for a while instead, for a busy connection's next request, measured no
    /// faster and left 0.5 KiB more per idle connection: docs/PERFORMANCE.md.)
    fn release_idle_buffers(&mut self) {
        self.rbuf = Vec::new();
        self.path = Vec::new();
        self.head = Vec::new();
        self.target = Vec::new();
        self.path_len = 0;
        self.head_len = 0;
    }

    /// Parses what is kept; starts a request, answers an error, or receives more.
    fn want_head(&mut self, now: Time) {
        let kept = core::mem::take(&mut self.rbuf);
        let used = self.start_request(now, &kept[..self.rlen]);
        self.rbuf = kept;
        match used {
            Some(n) if n < self.rlen => {
                // Pipelined bytes move to the front.
                self.rbuf.copy_within(n..self.rlen, 0);
                self.rlen -= n;
            }
            Some(_) => self.rlen = 0,
            None => {
                if self.rlen == 0 {
                    self.release_idle_buffers();
                }
                self.push_recv();
            }
        }
    }

    /// Parses a request head at the start of `src` and starts answering it. `None`: no
    /// complete head yet (nothing done). `Some(n)`: the request's first `n` bytes were its
    /// head (all of `src` after an error: the connection closes after answering it).
    fn start_request(&mut self, now: Time, src: &[u8]) -> Option<usize> {
        let parsed = parse_request(src, &self.cfg.limits);
        let (request, head_len) = match parsed {
            // The buffer is one byte larger than the limit, so a full buffer parsed as
            // Partial is impossible (parse_request reports HeadTooLarge first).
            Ok(Parsed::Partial) => return None,
            Ok(Parsed::Complete { request, head_len }) => (request, head_len),
            Err(e) => {
                self.refuse(now, e, false);
                return Some(src.len());
            }
        };
        if self.cfg.access_log {
            if let Some(start) = self.log_open.take() {
                // Guard: an entry is closed by finish or dropped by close before the next
                // head; should one be left open, it is dropped here.
                self.log.truncate(start);
            }
            self.log_open = Some(self.log.len());
            log_begin(&mut self.log, Some(&request));
        }
        // Room for the decoded path (never longer than the target), `/index.html`, a
        // sibling's suffix and a NUL (PATH_ROOM): sized to this target, so that a
        // connection's memory follows what it asks for.
        let need = request.target.len().min(self.cfg.limits.max_target_len) + PATH_ROOM;
        if self.path.len() < need {
            self.path = vec![0; need];
        }
        let keep_alive = request.keep_alive;
        let head_only = request.method == Method::Head;
        let info = ReqInfo {
            head_only,
            keep_alive,
            slash: is_directory_request(request.target.as_bytes()),
            range: request.range.and_then(|r| ArrayVec::try_from(r).ok()),
            if_modified_since: request
                .if_modified_since
                .and_then(|r| ArrayVec::try_from(r).ok()),
            if_none_match: request
                .if_none_match
                .map(|v| ArrayVec::try_from(v).unwrap_or_default()),
            if_range: request
                .if_range
                .map(|v| ArrayVec::try_from(v).unwrap_or_default()),
            codings: match request.accept_encoding {
                Some(v) if self.cfg.precompressed => preferred_codings(v),
                _ => Codings::default(),
            },
            coding: None,
        };
        let checked = request.check_servable().and_then(|()| {
            let target = request.target.as_bytes();
            let cap = self.path.len() - PATH_ROOM;
            Ok(normalize_path(target, &mut self.path[..cap])?.len())
        });
        self.target.clear();
        self.target.extend_from_slice(request.target.as_bytes());
        // The head is consumed whatever the outcome (the caller moves the rest).
        self.req = Some(alloc::boxed::Box::new(info));
        match checked {
            Ok(len) => {
                if len == 0 {
                    self.path[0] = b'.';
                    self.path_len = 1;
                } else {
                    self.path_len = len;
                }
                self.path[self.path_len] = 0;
                self.stat_path(false, 0);
            }
            Err(e) => {
                self.refuse(now, e, head_only);
                return Some(src.len());
            }
        }
        Some(head_len)
    }

    /// Stats the path, or first its precompressed sibling for the request's `coding`th
    /// coding (appending the suffix), if the client takes that many. A target with a trailing
    /// slash names a directory: no sibling until the path is its `index.html`.
    fn stat_path(&mut self, index: bool, coding: usize) {
        let slash = self.req.as_ref().is_some_and(|r| r.slash);
        let next = self
            .req
            .as_ref()
            .and_then(|r| r.codings.get(coding))
            .filter(|_| index || !slash);
        let sibling = next.map(|c| {
            let suffix = c.suffix().as_bytes();
            // PATH_ROOM keeps room for `/index.html`, a suffix and the NUL.
            self.path[self.path_len..self.path_len + suffix.len()].copy_from_slice(suffix);
            self.path_len += suffix.len();
            self.path[self.path_len] = 0;
            coding as u8
        });
        self.phase = Phase::Stat { index, sibling };
        self.push(Op::Stat);
    }

    /// Answers a request error; the connection closes after it (its framing is suspect).
    fn refuse(&mut self, now: Time, e: HttpError, head_only: bool) {
        if self.cfg.access_log && self.log_open.is_none() {
            // The head did not parse: an entry without a request line.
            self.log_open = Some(self.log.len());
            log_begin(&mut self.log, None);
        }
        // What is kept is dropped by the caller (start_request says it used it all).
        self.close_after = true;
        self.req = Some(alloc::boxed::Box::new(ReqInfo {
            head_only,
            ..ReqInfo::default()
        }));
        self.error(now, e.status());
    }

    /// Sends a small error response for the current request.
    fn error(&mut self, now: Time, status: Status) {
        let (head_only, keep_alive) = self.req.as_ref().map_or((false, false), |r| {
            (r.head_only, r.keep_alive && !self.close_after)
        });
        self.close_after |= !keep_alive;
        self.alloc_head();
        let len = match error_response(status, keep_alive, now.unix_secs, &mut self.head) {
            Ok(l) => self.small_response(status, l, head_only),
            // HEAD_CAP holds any error response; should it not, closing is the fallback.
            Err(_) => return self.close(),
        };
        self.start_head(len);
        self.phase = Phase::Respond;
        self.pump(now);
    }

    /// What of a small response written whole into the head buffer goes out (no body for
    /// HEAD), noted for the log.
    fn small_response(&mut self, status: Status, l: ErrorResponseLen, head_only: bool) -> usize {
        let len = if head_only { l.head } else { l.total };
        self.log_status = status.code();
        self.log_body = (len - l.head) as u64;
        len
    }

    /// Answers a directory requested without its trailing slash with a 301 to the slashed
    /// target (the request's own bytes, made a safe header value by
    /// [`slash_redirect_location`]); the connection stays open as after any response.
    fn redirect(&mut self, now: Time) {
        let (head_only, keep_alive) = self.req.as_ref().map_or((false, false), |r| {
            (r.head_only, r.keep_alive && !self.close_after)
        });
        self.close_after |= !keep_alive;
        self.alloc_head();
        // Rare, so the room for a long Location is made when needed.
        let mut location = vec![0; 3 * self.target.len() + 2];
        let Some(location) = slash_redirect_location(&self.target, &mut location) else {
            // The target parsed as a path before, so this cannot fail; close if it does.
            return self.close();
        };
        if self.head.len() < HEAD_CAP + location.len() {
            self.head.resize(HEAD_CAP + location.len(), 0);
        }
        let len = match redirect_response(location, keep_alive, now.unix_secs, &mut self.head) {
            Ok(l) => self.small_response(Status::MovedPermanently, l, head_only),
            Err(_) => return self.close(),
        };
        self.start_head(len);
        self.phase = Phase::Respond;
        self.pump(now);
    }

    fn alloc_head(&mut self) {
        if self.head.is_empty() {
            self.head = vec![0; HEAD_CAP];
        }
    }

    fn start_head(&mut self, len: usize) {
        self.head_len = len as u32;
        self.head_sent = 0;
        // Alone, unless plan_response finds a body to send it with.
        self.head_room = 0;
        self.combined_in_flight = false;
        // Buffers awaiting zero-copy notifications stay so; the body starts in a free one.
        for b in &mut self.bufs {
            if *b != BufState::Notif {
                *b = BufState::Free;
            }
        }
        let first = u8::from(self.bufs[0] == BufState::Notif && self.bufs[1] == BufState::Free);
        self.read_ix = first;
        self.send_ix = first;
    }

    /// The file is open: decide 200 / 206 / 304 / 416 and start sending.
    fn respond(&mut self, now: Time, info: FileInfo, direct: bool) {
        if !self.plan_response(now, info, direct) {
            return self.close();
        }
        self.phase = Phase::Respond;
        self.pump(now);
    }

    /// Decides 200 / 206 / 304 / 416 from the stat and the request: writes the head and sets
    /// up the body reader. False when the head does not fit (close).
    #[must_use]
    fn plan_response(&mut self, now: Time, info: FileInfo, direct: bool) -> bool {
        let req = self.req.as_deref().cloned().unwrap_or(ReqInfo {
            head_only: true,
            ..ReqInfo::default()
        });
        self.close_after |= !req.keep_alive;
        // A sibling's type is its file's: the path without the coding's suffix.
        let name_len = self.path_len - req.coding.map_or(0, |c| c.suffix().len());
        let path_str = core::str::from_utf8(&self.path[..name_len]).unwrap_or("");
        let mut head = ResponseHead::new(Status::Ok, now.unix_secs);
        // `close_after` also covers a server drain that began while the file was looked up.
        head.keep_alive = !self.close_after;
        head.content_type = Some(content_type(path_str));
        head.last_modified = Some(info.mtime_secs);
        head.accept_ranges = true;
        head.content_encoding = req.coding.map(ContentCoding::name);
        head.vary_accept_encoding = self.cfg.precompressed;
        let etag = ETag::new(info.mtime_secs, info.size);
        head.etag = Some(etag.as_str());
        let mut body: Option<(u64, u64)> = None;
        let fresh = client_is_fresh(
            req.if_none_match.as_deref(),
            req.if_modified_since.as_deref(),
            &etag,
            info.mtime_secs,
        );
        if fresh {
            head.status = Status::NotModified;
        } else {
            // An If-Range that does not hold: the file may have changed, send all of it.
            let range = match (req.range.as_deref(), req.if_range.as_deref()) {
                (Some(r), None) => parse_range(r, info.size),
                (Some(r), Some(v)) if if_range_holds(v, &etag, info.mtime_secs) => {
                    parse_range(r, info.size)
                }
                _ => RangeResult::Full,
            };
            match range {
                RangeResult::Full => {
                    head.content_length = info.size;
                    body = Some((0, info.size));
                }
                RangeResult::Partial {
                    start,
                    end_inclusive,
                } => {
                    head.status = Status::PartialContent;
                    head.content_length = end_inclusive - start + 1;
                    head.content_range = Some(ContentRange::Bytes {
                        start,
                        end_inclusive,
                        complete_len: info.size,
                    });
                    body = Some((start, end_inclusive - start + 1));
                }
                RangeResult::Unsatisfiable => {
                    head.status = Status::RangeNotSatisfiable;
                    head.content_type = None;
                    head.etag = None;
                    head.content_encoding = None;
                    head.content_range = Some(ContentRange::Unsatisfied {
                        complete_len: info.size,
                    });
                }
            }
        }
        self.alloc_head();
        let len = match head.write(&mut self.head) {
            Ok(len) => len,
            Err(_) => return false,
        };
        self.log_status = head.status.code();
        self.log_body = match body {
            Some((_, len)) if !req.head_only => len,
            _ => 0,
        };
        self.start_head(len);
        self.read = match body {
            Some((start, len)) if !req.head_only && len > 0 => {
                let align = if direct { info.dio } else { None };
                Some(FileRead::new(start, len, self.cfg.chunk, align))
            }
            _ => None,
        };
        // The head waits for the first chunk and goes out with it, where the driver can.
        self.head_room = if self.cfg.head_with_body
            && !self.cfg.zerocopy
            && !direct
            && self.read.is_some()
            && self.head_len <= HEAD_ROOM
        {
            HEAD_ROOM
        } else {
            0
        };
        self.file_send = self.cfg.file_send && !self.cfg.zerocopy && !direct && self.read.is_some();
        self.file_cold = false;
        true
    }

    /// Issues the next send and read, or finishes the response.
    fn pump(&mut self, now: Time) {
        if self.phase != Phase::Respond {
            if self.phase == Phase::Closing {
                self.close();
            }
            return;
        }
        let reading = self.bufs.contains(&BufState::Reading);
        // Sends, strictly in order: the head, then chunks alternating between the buffers.
        if !self.send_in_flight {
            if self.head_sent == 0 && self.head_room > 0 {
                // The head goes with the first chunk, once it is read.
                let s = usize::from(self.send_ix);
                if let BufState::Full(chunk) = self.bufs[s] {
                    self.bufs[s] = BufState::Sending { chunk, sent: 0 };
                    self.send_in_flight = true;
                    self.combined_in_flight = true;
                    self.push(Op::Send(SendSrc::HeadAndBuf {
                        buf: BufIx(self.send_ix),
                        start: chunk.buf_start,
                        len: chunk.len,
                    }));
                }
            } else if self.head_sent < self.head_len {
                self.send_in_flight = true;
                self.push(Op::Send(SendSrc::Head {
                    start: self.head_sent,
                    len: self.head_len - self.head_sent,
                }));
            } else {
                let s = usize::from(self.send_ix);
                match self.bufs[s] {
                    BufState::Full(chunk) => {
                        self.bufs[s] = BufState::Sending { chunk, sent: 0 };
                        self.send_chunk(chunk.buf_start, chunk.len);
                    }
                    BufState::Sending { chunk, sent } => {
                        // A short send: exactly the remainder.
                        self.send_chunk(chunk.buf_start + sent, chunk.len - sent);
                    }
                    // Every chunk read is out: the rest from the file itself, when it can.
                    BufState::Free if self.file_send && !self.file_cold && !reading => {
                        let r = self.read.as_ref().and_then(FileRead::unread);
                        let other_free = self.bufs[s ^ 1] == BufState::Free;
                        if let (Some((offset, left)), true) = (r, other_free) {
                            self.send_in_flight = true;
                            self.file_in_flight = true;
                            self.push(Op::Send(SendSrc::File {
                                offset,
                                len: left.min(u64::from(FILE_SEND_MAX)) as u32,
                            }));
                        }
                    }
                    BufState::Free | BufState::Reading | BufState::Notif => {}
                }
            }
        }
        // One read at a time, into the buffer after the last completed chunk, once it is free.
        // Sending from the file, only the first chunk (it goes with the head) and one after
        // each declined file send are read.
        let r = usize::from(self.read_ix);
        let read_wanted = !self.file_send
            || self.file_cold
            || self.read.as_ref().is_some_and(|r| r.delivered() == 0);
        if read_wanted && !reading && self.bufs[r] == BufState::Free && !self.file_in_flight {
            if let Some(req) = self.read.as_mut().and_then(FileRead::next_read) {
                self.bufs[r] = BufState::Reading;
                self.push(Op::Read {
                    buf: BufIx(self.read_ix),
                    offset: req.offset,
                    len: req.len,
                    buf_pos: req.buf_pos + self.head_room,
                });
            }
        }
        let body_done = match &self.read {
            None => true,
            Some(read) => read.done(),
        };
        let idle = !self.send_in_flight && !self.bufs.contains(&BufState::Reading);
        // Buffers awaiting notifications do not hold the response up: its bytes are out.
        let drained = self
            .bufs
            .iter()
            .all(|b| matches!(b, BufState::Free | BufState::Notif));
        if idle && body_done && self.head_sent == self.head_len && drained {
            self.finish(now);
        }
    }

    /// Sends `len` bytes of the chunk buffer `send_ix` from `start`: by zero copy when
    /// configured and a tracker slot is free, else by copy.
    fn send_chunk(&mut self, start: u32, len: u32) {
        self.send_in_flight = true;
        let buf = BufIx(self.send_ix);
        let slot = self
            .zc
            .as_mut()
            .and_then(|zc| zc.submit((), BufId(u16::from(buf.0))).ok().flatten());
        self.push(match slot {
            Some(slot) => Op::SendZc {
                buf,
                start,
                len,
                slot,
            },
            None => Op::Send(SendSrc::Buf { buf, start, len }),
        });
    }

    /// The response is out.
    fn finish(&mut self, now: Time) {
        self.requests += 1;
        if let Some(start) = self.log_open.take() {
            // The entry is complete: its status and body length go in the fixed part.
            self.log[start..start + 2].copy_from_slice(&self.log_status.to_le_bytes());
            self.log[start + 2..start + 10].copy_from_slice(&self.log_body.to_le_bytes());
        }
        self.read = None;
        self.file_send = false;
        if self.file_open {
            self.phase = Phase::CloseFile;
            self.file_closing = true;
            self.push(Op::CloseFile);
        } else {
            self.next_request(now);
        }
    }

    fn next_request(&mut self, now: Time) {
        self.req = None;
        if self.close_after {
            if self.requests > 0 && self.rlen == 0 && !self.cancel_sent {
                // Error responses and `Connection: close` alike: let the client read first.
                self.phase = Phase::Drain {
                    since: now.mono_ms,
                    drained: 0,
                };
                self.push(Op::Shutdown);
                self.push_recv();
            } else {
                self.close();
            }
            return;
        }
        self.phase = Phase::Head { since: now.mono_ms };
        self.want_head(now);
    }

    /// Closes as soon as nothing is in flight: cancels the socket op, waits for reads, closes
    /// the file, waits for the cancel's and a shutdown's own completions; frees once the
    /// notifications are in too.
    fn close(&mut self) {
        if self.is_closed() {
            return;
        }
        if let Some(start) = self.log_open.take() {
            // A response that never finished (the client left, an abort) is not logged.
            self.log.truncate(start);
        }
        self.phase = Phase::Closing;
        let reading = self.bufs.contains(&BufState::Reading);
        if self.recv_in_flight || self.send_in_flight {
            if !self.cancel_sent {
                self.cancel_sent = true;
                self.push(Op::Cancel);
            }
            return;
        }
        if reading {
            // File reads finish on their own; on_read calls back here.
            return;
        }
        if self.file_open {
            // on_file_closed calls back here.
            if !self.file_closing {
                self.file_closing = true;
                self.push(Op::CloseFile);
            }
            return;
        }
        if self.pending > 0 {
            // A stat or open looking the path up, a cancel or shutdown request: each
            // completion calls back here. The socket must outlive requests that name it (a
            // cancel by descriptor would hit a reused number).
            return;
        }
        // SEND_ZC notifications may still be owed (no send result: `send_in_flight` above);
        // see the module docs.
        self.phase = Phase::Closed;
        self.push(Op::Close {
            reset: self.zc_in_flight() > 0,
        });
        self.free_when_idle();
    }

    /// After [`Op::Close`]: [`Op::Free`] once no notification is owed.
    fn free_when_idle(&mut self) {
        if self.phase == Phase::Closed && self.in_flight() == 0 {
            self.phase = Phase::Freed;
            self.push(Op::Free);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    /// A simulated driver: one file `f` of `size` bytes (byte i is `i % 251`), a directory
    /// `d` without index, `x` that stats as a file but fails to open (a symlink out of the
    /// root: EXDEV), everything else missing. Reads and sends are cut short at random.
    /// Linked opens: the linked read runs after a successful open, and after a failed one
    /// completes with ECANCELED, its CQE before or after the open's. Cancel and shutdown
    /// requests complete late, at random, like SEND_ZC notifications; whenever nothing is
    /// queued the connection's in-flight count must match what the simulation owes it.
    struct Sim {
        conn: HttpConn,
        file: Vec<u8>,
        bufs: [Vec<u8>; 2],
        out: Vec<u8>,
        input: Vec<u8>,
        cuts: Vec<u32>,
        cut_ix: usize,
        closed: bool,
        file_open: bool,
        dio: Option<Alignment>,
        direct_open: bool,
        /// Zero-copy sends whose notification is still to come: slot, buffer, and the bytes
        /// the kernel may still read there (position and a snapshot to compare with).
        zc_pending: Vec<(ZcSlot, usize, usize, Vec<u8>)>,
        /// xorshift state choosing when notifications arrive and in which order.
        rng: u64,
        /// A receive is pending (nothing more to give it).
        recv_pending: bool,
        /// Cancel and shutdown requests whose own completions are still to come.
        deferred: Vec<Deferred>,
        /// [`Op::Free`] was performed.
        freed: bool,
        /// Call [`HttpConn::on_shutdown`] when this many ops have been polled.
        shutdown_at: Option<usize>,
        /// The send side was shut down.
        fin: bool,
        /// At the shutdown: requests answered, and whether one was under way.
        at_shutdown: Option<(u64, bool)>,
    }

    #[derive(Clone, Copy, Debug)]
    enum Deferred {
        Cancel,
        Shutdown,
    }

    impl Sim {
        /// One late cancel or shutdown completion, picked at random.
        fn complete_deferred(&mut self) {
            let k = self.rand(self.deferred.len());
            match self.deferred.swap_remove(k) {
                Deferred::Cancel => self.conn.on_cancel_done(Time::default()),
                Deferred::Shutdown => self.conn.on_shutdown_done(Time::default()),
            }
        }

        fn rand(&mut self, n: usize) -> usize {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            (self.rng % n as u64) as usize
        }

        /// One outstanding notification, picked at random (any order): the kernel is done
        /// with the bytes, which must still be the ones it was given.
        fn notify_one(&mut self) {
            let k = self.rand(self.zc_pending.len());
            let (slot, buf, pos, snapshot) = self.zc_pending.swap_remove(k);
            assert_eq!(
                &self.bufs[buf][pos..pos + snapshot.len()],
                &snapshot[..],
                "a buffer was reused before its SEND_ZC notification"
            );
            self.conn.on_send_notif(Time::default(), slot);
        }

        fn cut(&mut self, n: u32) -> u32 {
            let c = self.cuts[self.cut_ix % self.cuts.len()];
            self.cut_ix += 1;
            n.min(c.max(1))
        }

        fn run(&mut self) {
            let now = Time::default();
            let mut steps = 0;
            loop {
                let op = match self.conn.poll_op() {
                    Some(op) => {
                        assert!(!self.freed, "{op:?} after Free");
                        assert!(!self.closed || op == Op::Free, "{op:?} after Close");
                        op
                    }
                    None => {
                        let owed = u32::from(self.recv_pending)
                            + (self.zc_pending.len() + self.deferred.len()) as u32;
                        assert_eq!(self.conn.in_flight(), owed, "in-flight count");
                        // Nothing else to do: what is still owed comes in (notifications
                        // also after Close: the driver keeps the buffers for them).
                        if !self.zc_pending.is_empty() {
                            self.notify_one();
                        } else if !self.deferred.is_empty() {
                            self.complete_deferred();
                        } else {
                            break;
                        }
                        continue;
                    }
                };
                steps += 1;
                assert!(steps < 1_000_000, "no progress");
                // Notifications (and cancel and shutdown completions) also come between other
                // completions, late and out of order; not between Close's emission and its
                // performance, which a driver does at once.
                let closing = matches!(op, Op::Close { .. } | Op::Free);
                if !closing && !self.zc_pending.is_empty() && self.rand(3) == 0 {
                    self.notify_one();
                }
                if !closing && !self.deferred.is_empty() && self.rand(3) == 0 {
                    self.complete_deferred();
                }
                if self.shutdown_at == Some(steps) {
                    // The server starts draining with `op` in flight.
                    let busy = matches!(
                        self.conn.phase,
                        Phase::Stat { .. }
                            | Phase::Open { .. }
                            | Phase::OpenFailed { .. }
                            | Phase::Respond
                    );
                    self.at_shutdown = Some((self.conn.requests(), busy));
                    self.conn.on_shutdown();
                }
                match op {
                    Op::Recv { .. } if self.input.is_empty() => {
                        // Nothing more to receive: the receive stays pending.
                        self.recv_pending = true;
                    }
                    Op::Recv { max } => {
                        let n = self.cut(max).min(self.input.len() as u32) as usize;
                        let bytes: Vec<u8> = self.input.drain(..n).collect();
                        self.conn.on_recv(now, Ok(&bytes));
                    }
                    Op::Stat => {
                        let p = self.conn.path().to_vec();
                        let res = match &p[..] {
                            b"f\0" | b"x\0" | b"f.gz\0" => Ok(FileInfo {
                                kind: FileKind::Regular,
                                size: self.file.len() as u64,
                                mtime_secs: 1_000_000,
                                dio: self.dio,
                            }),
                            b"d\0" | b".\0" => Ok(FileInfo {
                                kind: FileKind::Directory,
                                size: 0,
                                mtime_secs: 0,
                                dio: None,
                            }),
                            _ => Err(RawErrno::NOENT),
                        };
                        self.conn.on_stat(now, res);
                    }
                    Op::Open { link_next, .. } if self.conn.path() == b"x\0" => {
                        assert!(!self.file_open, "the slot must be closed before reuse");
                        if !link_next {
                            self.conn.on_open(now, Err(RawErrno::XDEV));
                            continue;
                        }
                        let Some(Op::Read { buf, .. }) = self.conn.poll_op() else {
                            panic!("link_next without a read behind it");
                        };
                        if self.rand(2) == 0 {
                            self.conn.on_open(now, Err(RawErrno::XDEV));
                            self.conn.on_read(now, buf, Err(RawErrno::CANCELED));
                        } else {
                            self.conn.on_read(now, buf, Err(RawErrno::CANCELED));
                            self.conn.on_open(now, Err(RawErrno::XDEV));
                        }
                    }
                    Op::Open { direct, .. } => {
                        assert!(!self.file_open, "the slot must be closed before reuse");
                        self.file_open = true;
                        self.direct_open = direct;
                        self.conn.on_open(now, Ok(()));
                    }
                    Op::Read {
                        buf,
                        offset,
                        len,
                        buf_pos,
                    } => {
                        assert!(self.file_open);
                        assert!(
                            self.zc_pending.iter().all(|p| p.1 != usize::from(buf.0)),
                            "a read into a buffer with a SEND_ZC notification outstanding"
                        );
                        if self.direct_open {
                            let unit = u64::from(self.dio.unwrap().unit());
                            assert_eq!(offset % unit, 0, "O_DIRECT offset alignment");
                            assert_eq!(u64::from(len) % unit, 0, "O_DIRECT length alignment");
                            assert_eq!(u64::from(buf_pos) % unit, 0, "O_DIRECT buffer alignment");
                        }
                        // Short reads stay aligned under O_DIRECT (the kernel stops at a block
                        // boundary or end of file).
                        let n = match self.direct_open {
                            true => {
                                let unit = self.dio.unwrap().unit();
                                let n = self.cut(len);
                                (n / unit).max(1) * unit
                            }
                            false => self.cut(len),
                        } as usize;
                        let off = offset as usize;
                        let avail = self.file.len().saturating_sub(off).min(n);
                        let b = &mut self.bufs[usize::from(buf.0)];
                        let pos = buf_pos as usize;
                        b[pos..pos + avail].copy_from_slice(&self.file[off..off + avail]);
                        self.conn.on_read(now, buf, Ok(avail as u32));
                    }
                    Op::Send(src) => {
                        let bytes: Vec<u8> = match src {
                            SendSrc::Head { start, len } => self.conn.head_bytes()
                                [start as usize..(start + len) as usize]
                                .to_vec(),
                            SendSrc::Buf { buf, start, len } => self.bufs[usize::from(buf.0)]
                                [start as usize..(start + len) as usize]
                                .to_vec(),
                            SendSrc::HeadAndBuf { buf, start, len } => {
                                // As a driver does: the head into the room before the chunk.
                                let head = self.conn.head_bytes().to_vec();
                                let b = &mut self.bufs[usize::from(buf.0)];
                                let from = start as usize - head.len();
                                b[from..start as usize].copy_from_slice(&head);
                                b[from..(start + len) as usize].to_vec()
                            }
                            SendSrc::File { offset, len } => {
                                assert!(self.file_open, "a file send with no file open");
                                assert!(len > 0 && len <= FILE_SEND_MAX, "file send of {len}");
                                // Sometimes the driver cannot: no mapping yet, pages on disk.
                                match self.rand(8) {
                                    0 => {
                                        self.conn.on_file_send_declined(now, true);
                                        continue;
                                    }
                                    1 if self.rand(4) == 0 => {
                                        self.conn.on_file_send_declined(now, false);
                                        continue;
                                    }
                                    _ => {}
                                }
                                let off = offset as usize;
                                let end = (off + len as usize).min(self.file.len());
                                self.file[off.min(end)..end].to_vec()
                            }
                        };
                        let n = self.cut(bytes.len() as u32) as usize;
                        self.out.extend_from_slice(&bytes[..n]);
                        self.conn.on_send(now, Ok(n as u32));
                    }
                    Op::SendZc {
                        buf,
                        start,
                        len,
                        slot,
                    } => {
                        let b = usize::from(buf.0);
                        let (start, len) = (start as usize, len as usize);
                        let n = self.cut(len as u32) as usize;
                        let bytes = self.bufs[b][start..start + n].to_vec();
                        self.out.extend_from_slice(&bytes);
                        self.zc_pending.push((slot, b, start, bytes));
                        if self.rand(4) == 0 {
                            // The notification before the result (the kernel does not
                            // promise their order).
                            let last = self.zc_pending.len() - 1;
                            self.zc_pending.swap(0, last);
                            let (slot, ..) = self.zc_pending.remove(0);
                            self.conn.on_send_notif(now, slot);
                        }
                        self.conn.on_send_zc(now, slot, Ok(n as u32), true);
                    }
                    Op::CloseFile => {
                        assert!(self.file_open);
                        self.file_open = false;
                        self.conn.on_file_closed(now);
                    }
                    Op::Shutdown => {
                        self.fin = true;
                        self.deferred.push(Deferred::Shutdown);
                    }
                    Op::Cancel if self.recv_pending => {
                        self.recv_pending = false;
                        // The cancel's own completion before or after the receive's.
                        if self.rand(2) == 0 {
                            self.conn.on_cancel_done(now);
                            self.conn.on_recv(now, Err(RawErrno::CANCELED));
                        } else {
                            self.conn.on_recv(now, Err(RawErrno::CANCELED));
                            self.deferred.push(Deferred::Cancel);
                        }
                    }
                    // The receive it meant completed first (the kernel says ENOENT).
                    Op::Cancel => self.deferred.push(Deferred::Cancel),
                    Op::Close { reset } => {
                        assert!(!self.file_open, "file left open at close");
                        assert!(!self.recv_pending, "closed with a receive in flight");
                        assert!(
                            self.deferred.is_empty(),
                            "closed with a cancel or shutdown in flight: {:?}",
                            self.deferred
                        );
                        // Notifications may still be owed (the driver keeps the buffers and
                        // resets the socket), but no send result.
                        assert_eq!(
                            self.conn.zc_in_flight(),
                            self.zc_pending.len(),
                            "closed with a SEND_ZC result outstanding"
                        );
                        assert_eq!(reset, !self.zc_pending.is_empty(), "reset iff owed");
                        self.closed = true;
                    }
                    Op::Free => {
                        assert!(self.closed, "freed before Close");
                        assert!(self.zc_pending.is_empty(), "freed with notifications owed");
                        assert_eq!(self.conn.in_flight(), 0);
                        self.freed = true;
                    }
                }
            }
        }
    }

    /// Splits the output into (status, body) pairs using Content-Length.
    fn responses(mut out: &[u8], head_only: &[bool]) -> Vec<(u16, Vec<u8>)> {
        let mut v = Vec::new();
        while !out.is_empty() {
            let end = out
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("head end")
                + 4;
            let head = String::from_utf8(out[..end].to_vec()).unwrap();
            let status: u16 = head[9..12].parse().unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map_or(0, |l| l.parse().unwrap());
            let len = if head_only.get(v.len()).copied().unwrap_or(false) {
                0
            } else {
                len
            };
            v.push((status, out[end..end + len].to_vec()));
            out = &out[end + len..];
        }
        v
    }

    fn sim(size: usize, chunk: u32, input: Vec<u8>, cuts: Vec<u32>) -> Sim {
        sim_with(size, chunk, None, input, cuts, None, false)
    }

    /// With `dio`, statx reports that O_DIRECT alignment and the server asks for O_DIRECT.
    fn sim_with(
        size: usize,
        chunk: u32,
        dio: Option<Alignment>,
        input: Vec<u8>,
        cuts: Vec<u32>,
        zerocopy_seed: Option<u64>,
        links: bool,
    ) -> Sim {
        let cfg = Config {
            chunk,
            direct: dio.is_some(),
            zerocopy: zerocopy_seed.is_some(),
            link_open_read: links,
            // Half the cases (by the file size proptest picked) send head and first chunk at
            // once, as the servers do; the other half send the head alone.
            head_with_body: size % 2 == 1,
            precompressed: true,
            access_log: true,
            // Two cases in three send the body after the first chunk from the file.
            file_send: size % 3 != 0,
            ..Config::default()
        };
        let buf_len = (chunk + HEAD_ROOM) as usize;
        Sim {
            conn: HttpConn::new(cfg, Time::default()),
            file: (0..size).map(|i| (i % 251) as u8).collect(),
            bufs: [vec![0; buf_len], vec![0; buf_len]],
            out: Vec::new(),
            input,
            cuts,
            cut_ix: 0,
            closed: false,
            file_open: false,
            dio,
            direct_open: false,
            zc_pending: Vec::new(),
            rng: zerocopy_seed.unwrap_or(1) | 1,
            recv_pending: false,
            deferred: Vec::new(),
            freed: false,
            shutdown_at: None,
            fin: false,
            at_shutdown: None,
        }
    }

    #[derive(Clone, Debug)]
    enum Req {
        Get,
        Head,
        Range(u64, u64),
        /// A range behind an If-Range with the file's ETag (true) or another.
        IfRange(u64, u64, bool),
        /// If-None-Match with the file's ETag (true: 304) or another (200), beside an
        /// If-Modified-Since that alone would say 304.
        IfNoneMatch(bool),
        /// Accept-Encoding taking gzip (`f.gz` exists: served) or only brotli (`f.br` does
        /// not: `f` served); the simulated sibling holds the same bytes.
        Encoded(bool),
        Missing,
        Dir,
        DirNoSlash,
        Escape,
    }

    fn req_strategy() -> impl Strategy<Value = Req> {
        prop_oneof![
            4 => Just(Req::Get),
            1 => Just(Req::Head),
            2 => (0u64..20_000, 0u64..20_000).prop_map(|(a, b)| Req::Range(a.min(b), a.max(b))),
            1 => (0u64..20_000, 0u64..20_000, any::<bool>())
                .prop_map(|(a, b, m)| Req::IfRange(a.min(b), a.max(b), m)),
            1 => any::<bool>().prop_map(Req::IfNoneMatch),
            1 => any::<bool>().prop_map(Req::Encoded),
            1 => Just(Req::Missing),
            1 => Just(Req::Dir),
            1 => Just(Req::DirNoSlash),
            1 => Just(Req::Escape),
        ]
    }

    proptest! {
        #[test]
        fn pipelined_requests_get_exact_bytes(
            size in 0usize..20_000,
            chunk in 1u32..5000,
            reqs in proptest::collection::vec(req_strategy(), 1..6),
            cuts in proptest::collection::vec(1u32..9000, 1..8),
            direct in any::<bool>(),
            zerocopy in proptest::option::of(any::<u64>()),
            links in any::<bool>(),
        ) {
            let mut input = Vec::new();
            for r in &reqs {
                let line = match r {
                    Req::Get
                    | Req::Range(..)
                    | Req::IfRange(..)
                    | Req::IfNoneMatch(_)
                    | Req::Encoded(_) => {
                        "GET /f HTTP/1.1"
                    }
                    Req::Head => "HEAD /f HTTP/1.1",
                    Req::Missing => "GET /nope HTTP/1.1",
                    Req::Dir => "GET /d/ HTTP/1.1",
                    Req::DirNoSlash => "GET /d?q=1 HTTP/1.1",
                    Req::Escape => "GET /x HTTP/1.1",
                };
                input.extend_from_slice(line.as_bytes());
                input.extend_from_slice(b"\r\nHost: x\r\n");
                // The simulated file's mtime is 1_000_000 (0xf4240).
                let etag = alloc::format!("\"f4240-{size:x}\"");
                match r {
                    Req::Range(a, b) => {
                        input.extend_from_slice(alloc::format!("Range: bytes={a}-{b}\r\n").as_bytes());
                    }
                    Req::IfRange(a, b, m) => {
                        let v = if *m { etag.as_str() } else { "\"f4240-0x\"" };
                        input.extend_from_slice(
                            alloc::format!("Range: bytes={a}-{b}\r\nIf-Range: {v}\r\n").as_bytes(),
                        );
                    }
                    Req::Encoded(gzip) => {
                        let v = if *gzip { "br;q=0, gzip" } else { "br, gzip;q=0" };
                        input.extend_from_slice(alloc::format!("Accept-Encoding: {v}\r\n").as_bytes());
                    }
                    Req::IfNoneMatch(m) => {
                        let v = if *m { alloc::format!("\"x\", W/{etag}") } else { String::from("\"x\"") };
                        input.extend_from_slice(
                            alloc::format!(
                                "If-None-Match: {v}\r\nIf-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT\r\n"
                            )
                            .as_bytes(),
                        );
                    }
                    _ => {}
                }
                input.extend_from_slice(b"\r\n");
            }
            let dio = direct.then_some(Alignment { mem: 512, offset: 512 });
            let chunk = if direct { chunk.div_ceil(512) * 512 } else { chunk };
            let mut s = sim_with(size, chunk, dio, input, cuts, zerocopy, links);
            s.run();
            // All input consumed; the connection waits for more (keep-alive), never closed.
            prop_assert!(!s.closed);
            prop_assert!(!s.file_open);
            prop_assert_eq!(s.conn.zc_in_flight(), 0);
            prop_assert_eq!(s.conn.in_flight(), 1, "just the receive");
            let head_only: Vec<bool> = reqs.iter().map(|r| matches!(r, Req::Head)).collect();
            let got = responses(&s.out, &head_only);
            prop_assert_eq!(got.len(), reqs.len());
            // The log has every request, in order, with what was answered.
            let mut logged = Vec::new();
            s.conn.drain_log(|e| logged.push((e.status, e.body_bytes, e.method.to_vec())));
            prop_assert_eq!(logged.len(), reqs.len());
            for ((status, body), (lstatus, lbytes, method)) in got.iter().zip(&logged) {
                prop_assert_eq!((*status, body.len() as u64), (*lstatus, *lbytes));
                prop_assert!(method == b"GET" || method == b"HEAD");
            }
            for (r, (status, body)) in reqs.iter().zip(got) {
                match r {
                    Req::Get => {
                        prop_assert_eq!(status, 200);
                        prop_assert_eq!(&body[..], &s.file[..]);
                    }
                    Req::Head => prop_assert_eq!((status, body.len()), (200, 0)),
                    Req::IfRange(_, _, false) | Req::IfNoneMatch(false) | Req::Encoded(_) => {
                        prop_assert_eq!(status, 200);
                        prop_assert_eq!(&body[..], &s.file[..]);
                    }
                    Req::IfNoneMatch(true) => prop_assert_eq!((status, body.len()), (304, 0)),
                    Req::Range(a, b) | Req::IfRange(a, b, true) => {
                        if *a as usize >= size {
                            prop_assert_eq!(status, 416);
                        } else {
                            prop_assert_eq!(status, 206);
                            let end = (*b as usize).min(size - 1);
                            prop_assert_eq!(&body[..], &s.file[*a as usize..=end]);
                        }
                    }
                    Req::Missing => prop_assert_eq!(status, 404),
                    Req::DirNoSlash => {
                        prop_assert_eq!(status, 301);
                        prop_assert_eq!(&body[..], b"301 Moved Permanently\n");
                    }
                    Req::Dir | Req::Escape => prop_assert_eq!(status, 403),
                }
            }
        }

        /// A drain may begin at any point of a pipelined exchange: every response that went
        /// out is complete and right, the one in progress is finished, nothing after it is
        /// begun, and the connection closes (after the client's end of stream when the send
        /// side was shut down) with its file closed.
        #[test]
        fn shutdown_at_any_point_finishes_the_response_in_progress(
            size in 0usize..20_000,
            chunk in 1u32..5000,
            gets in 1usize..5,
            cuts in proptest::collection::vec(1u32..9000, 1..8),
            at in 1usize..300,
            zerocopy in proptest::option::of(any::<u64>()),
            links in any::<bool>(),
        ) {
            // Also with zero-copy sends (notifications may come after Close; the buffers must be
            // untouched until they do) and linked
            // open → read chains in flight when the drain begins.
            let input = b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n".repeat(gets);
            let mut s = sim_with(size, chunk, None, input, cuts, zerocopy, links);
            s.shutdown_at = Some(at);
            s.run();
            if !s.conn.is_closed() && !s.fin {
                // The point was never reached: the drain finds the connection waiting.
                prop_assert!(s.recv_pending);
                s.at_shutdown = Some((s.conn.requests(), false));
                s.conn.on_shutdown();
                s.run();
            }
            if s.fin {
                // Shut down after a response, as after `Connection: close`: the client closes.
                prop_assert!(s.recv_pending);
                s.recv_pending = false;
                s.conn.on_recv(Time::default(), Ok(&[]));
                s.run();
            }
            prop_assert!(s.closed && s.conn.is_closed());
            prop_assert!(s.freed && s.conn.is_freed(), "closed but never freed");
            prop_assert!(!s.file_open);
            let got = responses(&s.out, &[]);
            // Exactly the responses done or under way when the drain began.
            let (done, busy) = s.at_shutdown.unwrap();
            prop_assert_eq!(got.len() as u64, done + u64::from(busy));
            prop_assert_eq!(got.len() as u64, s.conn.requests());
            for (status, body) in got {
                prop_assert_eq!(status, 200);
                prop_assert_eq!(&body[..], &s.file[..]);
            }
        }

        #[test]
        fn garbage_never_panics_and_closes_cleanly(
            input in proptest::collection::vec(any::<u8>(), 0..3000),
            cuts in proptest::collection::vec(1u32..500, 1..4),
        ) {
            let mut s = sim(100, 64, input, cuts);
            s.run();
            prop_assert!(!s.file_open);
        }
    }

    #[test]
    fn malformed_request_gets_400_then_close_after_eof() {
        let mut s = sim(10, 64, b"GARBAGE\r\n\r\n".to_vec(), vec![1000]);
        s.run();
        assert!(s.out.starts_with(b"HTTP/1.1 400"));
        assert!(!s.closed, "draining until the client closes");
        assert!(s.recv_pending);
        s.recv_pending = false;
        s.conn.on_recv(Time::default(), Ok(&[]));
        s.run();
        assert!(s.closed);
    }

    #[test]
    fn header_timeout_cancels_the_receive_then_closes() {
        let cfg = Config {
            header_timeout_ms: 100,
            ..Config::default()
        };
        let mut c = HttpConn::new(cfg, Time::default());
        assert!(matches!(c.poll_op(), Some(Op::Recv { .. })));
        c.on_tick(Time {
            mono_ms: 50,
            unix_secs: 0,
        });
        assert_eq!(c.poll_op(), None);
        c.on_tick(Time {
            mono_ms: 100,
            unix_secs: 0,
        });
        assert_eq!(c.poll_op(), Some(Op::Cancel));
        c.on_recv(Time::default(), Err(RawErrno::CANCELED));
        assert_eq!(
            c.poll_op(),
            None,
            "the cancel's own completion is still to come"
        );
        c.on_cancel_done(Time::default());
        assert_eq!(c.poll_op(), Some(Op::Close { reset: false }));
        assert_eq!(c.poll_op(), Some(Op::Free));
        assert!(c.is_freed());
    }

    fn drain_ops(c: &mut HttpConn) -> Vec<Op> {
        core::iter::from_fn(|| c.poll_op()).collect()
    }

    /// A fresh connection's `GET /f` of a regular file of `size` bytes, up to the open's
    /// completion (no links, no O_DIRECT); returns the ops that follow the open.
    fn open_response(c: &mut HttpConn, size: u64) -> Vec<Op> {
        let now = Time::default();
        assert!(matches!(drain_ops(c)[..], [Op::Recv { .. }]));
        c.on_recv(now, Ok(GET_F));
        assert_eq!(drain_ops(c), [Op::Stat]);
        c.on_stat(now, Ok(regular(size)));
        assert_eq!(
            drain_ops(c),
            [Op::Open {
                direct: false,
                link_next: false
            }]
        );
        c.on_open(now, Ok(()));
        drain_ops(c)
    }

    #[test]
    fn a_failed_send_closes_only_after_the_read_in_flight_and_the_file_close() {
        let now = Time::default();
        let cfg = Config {
            chunk: 4096,
            ..Config::default()
        };
        let mut c = HttpConn::new(cfg, now);
        let ops = open_response(&mut c, 100_000);
        assert!(matches!(
            ops[..],
            [Op::Send(SendSrc::Head { .. }), Op::Read { .. }]
        ));
        c.on_send(now, Err(RawErrno::PIPE));
        assert_eq!(drain_ops(&mut c), [], "the read still owns buffer 0");
        c.on_read(now, BufIx(0), Ok(4096));
        assert_eq!(drain_ops(&mut c), [Op::CloseFile]);
        c.on_file_closed(now);
        assert_eq!(drain_ops(&mut c), [Op::Close { reset: false }, Op::Free]);
        assert!(c.is_freed());
    }

    /// A SEND_ZC chunk whose notification is late: the next read waits for it when it needs
    /// that buffer; a connection that fails meanwhile says Close with it still owed.
    /// With `head_with_body` the head waits for the first chunk and both go in one send;
    /// a short send of it goes on with the head's rest, then the chunk's.
    #[test]
    fn the_head_goes_out_with_the_first_chunk() {
        let now = Time::default();
        let cfg = Config {
            chunk: 4096,
            head_with_body: true,
            ..Config::default()
        };
        let mut c = HttpConn::new(cfg, now);
        let ops = open_response(&mut c, 3000);
        assert!(
            matches!(
                ops[..],
                [Op::Read {
                    buf: BufIx(0),
                    buf_pos: HEAD_ROOM,
                    ..
                }]
            ),
            "no head alone, the chunk read behind the room: {ops:?}"
        );
        c.on_read(now, BufIx(0), Ok(3000));
        let ops = drain_ops(&mut c);
        assert_eq!(
            ops,
            [Op::Send(SendSrc::HeadAndBuf {
                buf: BufIx(0),
                start: HEAD_ROOM,
                len: 3000
            })]
        );
        let head_len = c.head_bytes().len() as u32;
        // Short: part of the head only.
        c.on_send(now, Ok(head_len - 5));
        let ops = drain_ops(&mut c);
        assert_eq!(
            ops,
            [Op::Send(SendSrc::Head {
                start: head_len - 5,
                len: 5
            })]
        );
        c.on_send(now, Ok(5));
        let ops = drain_ops(&mut c);
        assert_eq!(
            ops,
            [Op::Send(SendSrc::Buf {
                buf: BufIx(0),
                start: HEAD_ROOM,
                len: 3000
            })]
        );
        c.on_send(now, Ok(3000));
        assert!(matches!(drain_ops(&mut c)[..], [Op::CloseFile, ..]));
    }

    /// A chunk buffer is free exactly when nothing of the connection's is in it: not while a
    /// read fills it or its bytes wait or go out, and again once they are sent.
    #[test]
    fn the_body_after_the_first_chunk_goes_from_the_file() {
        let now = Time::default();
        let cfg = Config {
            chunk: 1000,
            head_with_body: true,
            file_send: true,
            ..Config::default()
        };
        let mut c = HttpConn::new(cfg, now);
        // The first chunk is read: it goes out with the head.
        let ops = open_response(&mut c, 5000);
        let [Op::Read {
            buf,
            offset: 0,
            len: 1000,
            ..
        }] = ops[..]
        else {
            panic!("{ops:?}")
        };
        c.on_read(now, buf, Ok(1000));
        let ops = drain_ops(&mut c);
        assert!(
            matches!(ops[..], [Op::Send(SendSrc::HeadAndBuf { len: 1000, .. })]),
            "{ops:?}"
        );
        let head = c.head_bytes().len() as u32;
        c.on_send(now, Ok(head + 1000));
        // The rest from the file, no read; a short send goes on where it stopped.
        assert_eq!(
            drain_ops(&mut c),
            [Op::Send(SendSrc::File {
                offset: 1000,
                len: 4000
            })]
        );
        c.on_send(now, Ok(1500));
        assert_eq!(
            drain_ops(&mut c),
            [Op::Send(SendSrc::File {
                offset: 2500,
                len: 2500
            })]
        );
        // Declined (the pages are not in memory): one chunk through a buffer, then the file.
        c.on_file_send_declined(now, true);
        let ops = drain_ops(&mut c);
        let [Op::Read {
            buf,
            offset: 2500,
            len: 1000,
            ..
        }] = ops[..]
        else {
            panic!("{ops:?}")
        };
        c.on_read(now, buf, Ok(1000));
        let ops = drain_ops(&mut c);
        assert!(
            matches!(ops[..], [Op::Send(SendSrc::Buf { len: 1000, .. })]),
            "{ops:?}"
        );
        c.on_send(now, Ok(1000));
        assert_eq!(
            drain_ops(&mut c),
            [Op::Send(SendSrc::File {
                offset: 3500,
                len: 1500
            })]
        );
        // Declined for good: the rest through buffers, two reads in turn.
        c.on_file_send_declined(now, false);
        let ops = drain_ops(&mut c);
        assert!(
            matches!(
                ops[..],
                [Op::Read {
                    offset: 3500,
                    len: 1000,
                    ..
                }]
            ),
            "{ops:?}"
        );
        let mut bufs = [
            vec![0; 1000 + HEAD_ROOM as usize],
            vec![0; 1000 + HEAD_ROOM as usize],
        ];
        let Op::Read { buf, .. } = ops[0] else {
            unreachable!()
        };
        c.on_read(now, buf, Ok(1000));
        let mut out = Vec::new();
        let rest = complete_io(&mut c, &mut bufs, &mut out);
        assert_eq!(out.len(), 1500, "the last 1,500 bytes through buffers");
        assert!(matches!(rest[..], [Op::Recv { .. }]), "{rest:?}");
        assert_eq!(c.requests(), 1);
    }

    #[test]
    fn no_file_sends_with_zero_copy_or_o_direct() {
        let now = Time::default();
        let cfg = Config {
            chunk: 1000,
            file_send: true,
            zerocopy: true,
            ..Config::default()
        };
        let mut c = HttpConn::new(cfg, now);
        let ops = open_response(&mut c, 3000);
        let mut bufs = [vec![0; 1000], vec![0; 1000]];
        let mut out = Vec::new();
        c.ops.extend(ops);
        let rest = complete_io(&mut c, &mut bufs, &mut out);
        assert!(
            rest.iter()
                .all(|op| !matches!(op, Op::Send(SendSrc::File { .. }))),
            "{rest:?}"
        );
    }

    #[test]
    fn a_chunk_buffer_is_free_only_between_uses() {
        let now = Time::default();
        let mut c = HttpConn::new(
            Config {
                chunk: 4096,
                ..Config::default()
            },
            now,
        );
        assert!(
            c.buf_free(BufIx(0)) && c.buf_free(BufIx(1)),
            "idle: both free"
        );
        let ops = open_response(&mut c, 4096);
        assert!(
            matches!(
                ops[..],
                [
                    Op::Send(SendSrc::Head { .. }),
                    Op::Read { buf: BufIx(0), .. }
                ]
            ),
            "{ops:?}"
        );
        assert!(!c.buf_free(BufIx(0)), "a read fills it");
        assert!(c.buf_free(BufIx(1)), "a one-chunk file needs one buffer");
        let head_len = c.head_bytes().len() as u32;
        c.on_send(now, Ok(head_len));
        c.on_read(now, BufIx(0), Ok(4096));
        let ops = drain_ops(&mut c);
        assert!(
            matches!(ops[..], [Op::Send(SendSrc::Buf { buf: BufIx(0), .. }), ..]),
            "{ops:?}"
        );
        assert!(!c.buf_free(BufIx(0)), "its bytes go out");
        c.on_send(now, Ok(4096));
        let _ = drain_ops(&mut c);
        assert!(c.buf_free(BufIx(0)), "sent: free again");
    }

    #[test]
    fn zero_copy_buffers_wait_for_their_notifications() {
        let now = Time::default();
        let cfg = Config {
            chunk: 4096,
            zerocopy: true,
            ..Config::default()
        };
        let mut c = HttpConn::new(cfg, now);
        assert!(matches!(
            open_response(&mut c, 3 * 4096)[..],
            [
                Op::Send(SendSrc::Head { .. }),
                Op::Read { buf: BufIx(0), .. }
            ]
        ));
        let head_len = c.head_bytes().len() as u32;
        c.on_send(now, Ok(head_len));
        c.on_read(now, BufIx(0), Ok(4096));
        let ops = drain_ops(&mut c);
        let slot0 = match ops[..] {
            [Op::SendZc {
                buf: BufIx(0),
                start: 0,
                len: 4096,
                slot,
            }, Op::Read { buf: BufIx(1), .. }] => slot,
            _ => panic!("{ops:?}"),
        };
        // Buffer 0 is out but not notified; buffer 1 fills: its send goes, but the third
        // chunk must not be read into buffer 0 yet.
        c.on_send_zc(now, slot0, Ok(4096), true);
        c.on_read(now, BufIx(1), Ok(4096));
        let ops = drain_ops(&mut c);
        let slot1 = match ops[..] {
            [Op::SendZc {
                buf: BufIx(1),
                slot,
                ..
            }] => slot,
            _ => panic!("{ops:?}"),
        };
        assert_eq!(c.zc_in_flight(), 2);
        c.on_send_notif(now, slot0);
        assert!(matches!(
            drain_ops(&mut c)[..],
            [Op::Read { buf: BufIx(0), .. }]
        ));
        // The peer goes away: the send fails (no notification promised), the read
        // completes, the file closes, and Close follows (nothing owed).
        c.on_send_zc(now, slot1, Err(RawErrno::PIPE), false);
        assert_eq!(c.zc_in_flight(), 0);
        c.on_read(now, BufIx(0), Ok(4096));
        assert_eq!(drain_ops(&mut c), [Op::CloseFile]);
        c.on_file_closed(now);
        assert_eq!(drain_ops(&mut c), [Op::Close { reset: false }, Op::Free]);

        // And with a notification outstanding at the failure: Close comes without it.
        let mut c = HttpConn::new(cfg, now);
        open_response(&mut c, 3 * 4096);
        c.on_send(now, Ok(head_len));
        c.on_read(now, BufIx(0), Ok(4096));
        let Some(Op::SendZc { slot, .. }) = c.poll_op() else {
            panic!("no SendZc")
        };
        drain_ops(&mut c);
        // Short: 100 bytes out, notification owed; the remainder fails.
        c.on_send_zc(now, slot, Ok(100), true);
        let Some(Op::SendZc { slot: rest, .. }) = c.poll_op() else {
            panic!("no remainder")
        };
        c.on_send_zc(now, rest, Err(RawErrno::CONNRESET), false);
        c.on_read(now, BufIx(1), Ok(4096));
        assert_eq!(drain_ops(&mut c), [Op::CloseFile]);
        c.on_file_closed(now);
        // Close comes with the notification still owed: the driver resets the socket (so
        // that the kernel drops the queued bytes and the notification comes) and keeps the
        // buffer, which the kernel may still read, until Free.
        assert_eq!(drain_ops(&mut c), [Op::Close { reset: true }]);
        assert_eq!((c.zc_in_flight(), c.in_flight()), (1, 1));
        assert!(c.is_closed() && !c.is_freed());
        c.on_send_notif(now, slot);
        assert_eq!(c.zc_in_flight(), 0);
        assert_eq!(drain_ops(&mut c), [Op::Free]);
        assert_eq!(drain_ops(&mut c), [], "nothing after Free");
    }

    /// The kernel does not order a SEND_ZC's notification after its result. Notification
    /// first: the send still counts in flight until its result, and a connection that closes
    /// meanwhile is freed exactly when the last of the two is in, whichever it is.
    #[test]
    fn a_notification_before_its_result_is_counted_once() {
        let now = Time::default();
        let cfg = Config {
            chunk: 4096,
            zerocopy: true,
            ..Config::default()
        };
        let mut c = HttpConn::new(cfg, now);
        open_response(&mut c, 4096);
        let head_len = c.head_bytes().len() as u32;
        c.on_send(now, Ok(head_len));
        c.on_read(now, BufIx(0), Ok(4096));
        let ops = drain_ops(&mut c);
        let [Op::SendZc { slot, .. }] = ops[..] else {
            panic!("{ops:?}")
        };
        assert_eq!(c.in_flight(), 1);
        c.on_send_notif(now, slot);
        assert_eq!(c.in_flight(), 1, "the result is still to come");
        assert_eq!(drain_ops(&mut c), []);
        c.on_send_zc(now, slot, Ok(4096), true);
        assert_eq!(c.zc_in_flight(), 0);
        // The response is done: the file closes and the next request is awaited.
        assert_eq!(drain_ops(&mut c), [Op::CloseFile]);
        c.on_file_closed(now);
        assert!(matches!(drain_ops(&mut c)[..], [Op::Recv { .. }]));
        assert_eq!(c.in_flight(), 1, "just the receive");

        // Closing with both CQEs of a send outstanding: the notification comes first, the
        // failed result last (no Close before it: a result is a socket completion), then
        // Close and Free at once.
        let mut c = HttpConn::new(cfg, now);
        open_response(&mut c, 2 * 4096);
        c.on_send(now, Ok(head_len));
        c.on_read(now, BufIx(0), Ok(4096));
        let Some(Op::SendZc { slot, .. }) = c.poll_op() else {
            panic!("no SendZc")
        };
        drain_ops(&mut c);
        c.abort();
        assert_eq!(drain_ops(&mut c), [Op::Cancel]);
        c.on_cancel_done(now);
        c.on_read(now, BufIx(1), Ok(4096));
        c.on_send_notif(now, slot);
        assert_eq!(drain_ops(&mut c), [], "the send's result is still to come");
        assert_eq!(c.in_flight(), 1);
        c.on_send_zc(now, slot, Err(RawErrno::CANCELED), false);
        assert_eq!(drain_ops(&mut c), [Op::CloseFile]);
        c.on_file_closed(now);
        assert_eq!(drain_ops(&mut c), [Op::Close { reset: false }, Op::Free]);
        assert_eq!(c.in_flight(), 0);
    }

    /// A cancel or shutdown request names the socket: the socket is closed only once its
    /// completion is in (a cancel by descriptor on a closed, reused number would hit another
    /// connection), and the connection freed then.
    #[test]
    fn close_waits_for_the_cancel_and_shutdown_completions() {
        let now = Time::default();
        let mut c = HttpConn::new(Config::default(), now);
        drain_ops(&mut c);
        c.abort();
        assert_eq!(drain_ops(&mut c), [Op::Cancel]);
        // The cancel's completion before the receive's.
        c.on_cancel_done(now);
        assert_eq!(drain_ops(&mut c), []);
        c.on_recv(now, Err(RawErrno::CANCELED));
        assert_eq!(drain_ops(&mut c), [Op::Close { reset: false }, Op::Free]);

        // A 404 with `Connection: close`: the send side is shut down and the client's end
        // of stream awaited; it comes before the shutdown's own completion.
        let mut c = HttpConn::new(Config::default(), now);
        drain_ops(&mut c);
        c.on_recv(
            now,
            Ok(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(drain_ops(&mut c), [Op::Stat]);
        c.on_stat(now, Err(RawErrno::NOENT));
        let ops = drain_ops(&mut c);
        let [Op::Send(SendSrc::Head { len, .. })] = ops[..] else {
            panic!("{ops:?}")
        };
        c.on_send(now, Ok(len));
        assert!(matches!(
            drain_ops(&mut c)[..],
            [Op::Shutdown, Op::Recv { .. }]
        ));
        c.on_recv(now, Ok(&[]));
        assert_eq!(drain_ops(&mut c), [], "the shutdown is still in flight");
        assert_eq!(c.in_flight(), 1);
        c.on_shutdown_done(now);
        assert_eq!(drain_ops(&mut c), [Op::Close { reset: false }, Op::Free]);
        // Stray reports change nothing and never underflow.
        c.on_cancel_done(now);
        assert_eq!((c.in_flight(), drain_ops(&mut c)), (0, vec![]));
    }

    /// Aborted while the open is in flight: a file it opened is closed before the
    /// connection is freed (before, its descriptor was left open).
    #[test]
    fn an_abort_during_the_open_closes_the_file_it_opens() {
        let now = Time::default();
        let mut c = HttpConn::new(Config::default(), now);
        drain_ops(&mut c);
        c.on_recv(now, Ok(GET_F));
        assert_eq!(drain_ops(&mut c), [Op::Stat]);
        c.on_stat(now, Ok(regular(10)));
        drain_ops(&mut c);
        c.abort();
        assert_eq!(drain_ops(&mut c), [], "the open is in flight");
        c.on_open(now, Ok(()));
        assert_eq!(drain_ops(&mut c), [Op::CloseFile]);
        c.on_file_closed(now);
        assert_eq!(drain_ops(&mut c), [Op::Close { reset: false }, Op::Free]);
    }

    /// A linked open → read chain: the read is queued right behind its open; when the open
    /// fails its read's ECANCELED (before or after the open's CQE) releases the buffer, the
    /// 403 goes out, and the connection serves its next request.
    #[test]
    fn a_broken_open_read_chain_answers_and_keeps_the_connection() {
        let now = Time::default();
        let cfg = Config {
            chunk: 4096,
            link_open_read: true,
            ..Config::default()
        };
        let info = FileInfo {
            kind: FileKind::Regular,
            size: 5000,
            mtime_secs: 0,
            dio: None,
        };
        for read_first in [false, true] {
            let mut c = HttpConn::new(cfg, now);
            drain_ops(&mut c);
            c.on_recv(now, Ok(b"GET /out HTTP/1.1\r\nHost: x\r\n\r\n"));
            assert_eq!(drain_ops(&mut c), [Op::Stat]);
            c.on_stat(now, Ok(info));
            let ops = drain_ops(&mut c);
            assert!(
                matches!(
                    ops[..],
                    [
                        Op::Open {
                            link_next: true,
                            ..
                        },
                        Op::Read {
                            buf: BufIx(0),
                            offset: 0,
                            len: 4096,
                            ..
                        }
                    ]
                ),
                "{ops:?}"
            );
            if read_first {
                c.on_read(now, BufIx(0), Err(RawErrno::CANCELED));
                assert_eq!(drain_ops(&mut c), []);
                c.on_open(now, Err(RawErrno::XDEV));
            } else {
                c.on_open(now, Err(RawErrno::XDEV));
                assert_eq!(drain_ops(&mut c), [], "the read still owns buffer 0");
                c.on_read(now, BufIx(0), Err(RawErrno::CANCELED));
            }
            let ops = drain_ops(&mut c);
            let [Op::Send(SendSrc::Head { start: 0, len })] = ops[..] else {
                panic!("{ops:?}")
            };
            assert!(c.head_bytes().starts_with(b"HTTP/1.1 403"));
            c.on_send(now, Ok(len));
            // Keep-alive: the next request, linked again, served in full.
            assert!(matches!(drain_ops(&mut c)[..], [Op::Recv { .. }]));
            c.on_recv(now, Ok(b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n"));
            drain_ops(&mut c);
            c.on_stat(now, Ok(info));
            assert_eq!(drain_ops(&mut c).len(), 2);
            c.on_open(now, Ok(()));
            let ops = drain_ops(&mut c);
            assert!(
                matches!(ops[..], [Op::Send(SendSrc::Head { .. })]),
                "{ops:?}"
            );
            assert!(c.head_bytes().starts_with(b"HTTP/1.1 200"));
        }
    }

    const GET_F: &[u8] = b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n";

    fn regular(size: u64) -> FileInfo {
        FileInfo {
            kind: FileKind::Regular,
            size,
            mtime_secs: 0,
            dio: None,
        }
    }

    /// Completes every queued read and send in full (file byte i is `i % 251`) until the
    /// connection wants something else; returns the ops it stopped at and the bytes sent.
    fn complete_io(c: &mut HttpConn, bufs: &mut [Vec<u8>; 2], out: &mut Vec<u8>) -> Vec<Op> {
        let now = Time::default();
        let mut rest = Vec::new();
        let mut queue = drain_ops(c);
        while !queue.is_empty() {
            for op in core::mem::take(&mut queue) {
                match op {
                    Op::Read {
                        buf,
                        offset,
                        len,
                        buf_pos,
                    } => {
                        let b = &mut bufs[usize::from(buf.0)];
                        for i in 0..len as usize {
                            b[buf_pos as usize + i] = ((offset as usize + i) % 251) as u8;
                        }
                        c.on_read(now, buf, Ok(len));
                    }
                    Op::Send(SendSrc::Head { start, len }) => {
                        out.extend_from_slice(
                            &c.head_bytes()[start as usize..(start + len) as usize],
                        );
                        c.on_send(now, Ok(len));
                    }
                    Op::Send(SendSrc::Buf { buf, start, len }) => {
                        out.extend_from_slice(
                            &bufs[usize::from(buf.0)][start as usize..(start + len) as usize],
                        );
                        c.on_send(now, Ok(len));
                    }
                    Op::CloseFile => c.on_file_closed(now),
                    other => rest.push(other),
                }
                queue.extend(drain_ops(c));
            }
        }
        rest
    }

    /// An idle keep-alive connection holds no buffer: the head it received whole was parsed
    /// where the driver received it, and the request's path and head go when it is answered.
    /// A partial head is kept (and a pipelined one parsed from what is kept).
    #[test]
    fn an_idle_connection_holds_no_buffers() {
        let now = Time::default();
        let cfg = Config {
            chunk: 4096,
            ..Config::default()
        };
        let mut c = HttpConn::new(cfg, now);
        assert_eq!(c.heap_bytes(), 0, "a new connection");
        let mut bufs = [vec![0u8; 4096], vec![0u8; 4096]];
        let mut out = Vec::new();
        let ops = open_response(&mut c, 100);
        assert!(c.heap_bytes() > 0, "answering: path and head");
        for op in ops {
            if let Op::Send(SendSrc::Head { len, .. }) = op {
                c.on_send(now, Ok(len));
            } else if let Op::Read { buf, len, .. } = op {
                c.on_read(now, buf, Ok(len));
            }
        }
        let rest = complete_io(&mut c, &mut bufs, &mut out);
        assert!(
            matches!(rest[..], [Op::Recv { max }] if max as usize == cfg.limits.max_head_bytes + 1),
            "{rest:?}"
        );
        assert_eq!(c.heap_bytes(), 0, "idle after the response");
        // Half a head is kept; the rest completes it, with the next request pipelined behind.
        c.on_recv(now, Ok(b"GET /f HT"));
        assert!(
            matches!(drain_ops(&mut c)[..], [Op::Recv { max }] if max as usize == cfg.limits.max_head_bytes + 1 - 9)
        );
        assert!(c.heap_bytes() > cfg.limits.max_head_bytes);
        c.on_recv(
            now,
            Ok(b"TP/1.1\r\nHost: x\r\n\r\nGET /g HTTP/1.1\r\nHost: x\r\n\r\n"),
        );
        assert_eq!(drain_ops(&mut c), [Op::Stat]);
        assert_eq!(c.path(), b"f\0");
        c.on_stat(now, Err(RawErrno::NOENT));
        let rest = complete_io(&mut c, &mut bufs, &mut out);
        assert_eq!(rest, [Op::Stat], "the pipelined request, without a receive");
        assert_eq!(c.path(), b"g\0");
        c.on_stat(now, Err(RawErrno::NOENT));
        let rest = complete_io(&mut c, &mut bufs, &mut out);
        assert!(matches!(rest[..], [Op::Recv { .. }]), "{rest:?}");
        assert_eq!(c.heap_bytes(), 0, "idle again");
        assert_eq!(
            String::from_utf8_lossy(&out)
                .matches("HTTP/1.1 404")
                .count(),
            2
        );
    }

    #[test]
    fn shutdown_mid_response_finishes_it_then_closes() {
        let now = Time::default();
        let cfg = Config {
            chunk: 4096,
            ..Config::default()
        };
        let mut c = HttpConn::new(cfg, now);
        let first = open_response(&mut c, 100_000);
        assert!(matches!(
            first[..],
            [Op::Send(SendSrc::Head { .. }), Op::Read { .. }]
        ));
        // The server starts draining with the head and the first read in flight.
        c.on_shutdown();
        assert_eq!(drain_ops(&mut c), [], "nothing is cancelled");
        for op in first {
            c.ops.push(op);
        }
        let mut bufs = [vec![0; 4096], vec![0; 4096]];
        let mut out = Vec::new();
        let rest = complete_io(&mut c, &mut bufs, &mut out);
        let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let body = &out[head_end..];
        assert_eq!(body.len(), 100_000, "the whole body went out");
        assert!(body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        // Then as after `Connection: close`: FIN, and wait for the client's end of stream.
        assert!(
            matches!(rest[..], [Op::Shutdown, Op::Recv { .. }]),
            "{rest:?}"
        );
        c.on_shutdown_done(now);
        c.on_recv(now, Ok(&[]));
        assert_eq!(drain_ops(&mut c), [Op::Close { reset: false }, Op::Free]);
        assert_eq!(c.requests(), 1);
    }

    #[test]
    fn shutdown_during_the_lookup_answers_with_connection_close() {
        let now = Time::default();
        let mut c = HttpConn::new(Config::default(), now);
        let _ = drain_ops(&mut c);
        c.on_recv(now, Ok(GET_F));
        assert_eq!(drain_ops(&mut c), [Op::Stat]);
        c.on_shutdown();
        c.on_stat(now, Ok(regular(10)));
        assert_eq!(
            drain_ops(&mut c),
            [Op::Open {
                direct: false,
                link_next: false
            }]
        );
        c.on_open(now, Ok(()));
        let head = String::from_utf8(c.head_bytes().to_vec()).unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("Connection: close\r\n"), "{head}");
    }

    #[test]
    fn shutdown_while_waiting_for_a_head_closes_now() {
        let now = Time::default();
        // Idle (nothing received) and partial heads alike.
        for partial in [&b""[..], b"GET /f HT"] {
            let mut c = HttpConn::new(Config::default(), now);
            let _ = drain_ops(&mut c);
            if !partial.is_empty() {
                c.on_recv(now, Ok(partial));
                assert!(matches!(drain_ops(&mut c)[..], [Op::Recv { .. }]));
            }
            c.on_shutdown();
            assert_eq!(drain_ops(&mut c), [Op::Cancel]);
            c.on_recv(now, Err(RawErrno::CANCELED));
            c.on_cancel_done(now);
            assert_eq!(drain_ops(&mut c), [Op::Close { reset: false }, Op::Free]);
            assert_eq!(c.requests(), 0);
        }
    }

    #[test]
    fn abort_cancels_a_stalled_send_then_closes_the_file_and_the_connection() {
        let now = Time::default();
        let cfg = Config {
            chunk: 4096,
            ..Config::default()
        };
        let mut c = HttpConn::new(cfg, now);
        let _ = open_response(&mut c, 100_000);
        c.on_shutdown();
        c.on_read(now, BufIx(0), Ok(4096));
        // The second buffer's read is issued; the head send never completes (a client that
        // does not read), and the grace runs out.
        let ops = drain_ops(&mut c);
        let [Op::Read { buf, len, .. }] = ops[..] else {
            panic!("expected the second read: {ops:?}");
        };
        c.abort();
        assert_eq!(drain_ops(&mut c), [Op::Cancel]);
        c.on_send(now, Err(RawErrno::CANCELED));
        assert_eq!(
            drain_ops(&mut c),
            [],
            "the read in flight still owns its buffer"
        );
        c.on_read(now, buf, Ok(len));
        assert_eq!(drain_ops(&mut c), [Op::CloseFile]);
        c.on_file_closed(now);
        assert_eq!(
            drain_ops(&mut c),
            [],
            "the cancel's completion is still to come"
        );
        c.on_cancel_done(now);
        assert_eq!(drain_ops(&mut c), [Op::Close { reset: false }, Op::Free]);
        assert!(c.is_freed());
    }

    #[test]
    fn if_modified_since_gives_304() {
        let input = b"GET /f HTTP/1.1\r\nHost: x\r\nIf-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT\r\n\r\n";
        let mut s = sim(10, 64, input.to_vec(), vec![1000]);
        s.run();
        assert!(
            s.out.starts_with(b"HTTP/1.1 304"),
            "{:?}",
            String::from_utf8_lossy(&s.out)
        );
    }

    fn head_of(out: &[u8]) -> String {
        let end = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head")
            + 4;
        String::from_utf8(out[..end].to_vec()).unwrap()
    }

    #[test]
    fn a_directory_without_its_slash_is_redirected_with_the_query() {
        let input = b"GET /d?q=%41&r HTTP/1.1\r\nHost: x\r\n\r\nHEAD /d HTTP/1.1\r\nHost: x\r\n\r\nGET /d/ HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut s = sim(10, 64, input.to_vec(), vec![1000]);
        s.run();
        assert!(!s.closed, "a redirect keeps the connection");
        let got = responses(&s.out, &[false, true, false]);
        assert_eq!(
            got.iter().map(|r| r.0).collect::<Vec<_>>(),
            [301, 301, 403],
            "with the slash: the index, or 403 without one"
        );
        let head = head_of(&s.out);
        assert!(head.contains("\r\nLocation: /d/?q=%41&r\r\n"), "{head}");
        assert!(head.contains("\r\nConnection: keep-alive\r\n"), "{head}");
    }

    #[test]
    fn a_long_redirect_target_is_encoded_whole() {
        // Every byte of a long non-ASCII name becomes three in the Location, beyond the
        // usual head capacity.
        let name = "\u{e9}".repeat(400);
        let input = alloc::format!("GET /{name} HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut c = HttpConn::new(Config::default(), Time::default());
        let _ = drain_ops(&mut c);
        c.on_recv(Time::default(), Ok(input.as_bytes()));
        assert_eq!(drain_ops(&mut c), [Op::Stat]);
        let dir = FileInfo {
            kind: FileKind::Directory,
            size: 0,
            mtime_secs: 0,
            dio: None,
        };
        c.on_stat(Time::default(), Ok(dir));
        let head = String::from_utf8(c.head_bytes().to_vec()).unwrap();
        let want = alloc::format!("\r\nLocation: /{}/\r\n", "%C3%A9".repeat(400));
        assert!(head.starts_with("HTTP/1.1 301 "), "{head}");
        assert!(head.contains(&want), "{head}");
    }

    #[test]
    fn etags_are_sent_and_answer_conditional_requests() {
        // The simulated file: mtime 1_000_000 (0xf4240), 10 bytes.
        let input = b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n\
            GET /f HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"f4240-a\"\r\n\r\n\
            GET /f HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"f4240-b\"\r\nIf-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT\r\n\r\n\
            GET /f HTTP/1.1\r\nHost: x\r\nRange: bytes=2-3\r\nIf-Range: \"f4240-a\"\r\n\r\n\
            GET /f HTTP/1.1\r\nHost: x\r\nRange: bytes=2-3\r\nIf-Range: W/\"f4240-a\"\r\n\r\n\
            GET /f HTTP/1.1\r\nHost: x\r\nRange: bytes=2-3\r\nIf-Range: Mon, 12 Jan 1970 13:46:40 GMT\r\n\r\n\
            GET /f HTTP/1.1\r\nHost: x\r\nRange: bytes=2-3\r\nIf-Range: Mon, 12 Jan 1970 13:46:41 GMT\r\n\r\n";
        let mut s = sim(10, 64, input.to_vec(), vec![1000]);
        s.run();
        let got = responses(&s.out, &[]);
        let statuses: Vec<u16> = got.iter().map(|r| r.0).collect();
        assert_eq!(statuses, [200, 304, 200, 206, 200, 206, 200]);
        assert_eq!(got[3].1, s.file[2..4]);
        assert_eq!(got[4].1, s.file);
        let text = String::from_utf8_lossy(&s.out);
        assert_eq!(
            text.matches("\r\nETag: \"f4240-a\"\r\n").count(),
            7,
            "on every 200, 206 and 304: {text}"
        );
    }

    /// Drives one request until the stats are done; `siblings` say which paths stat as
    /// regular files of 10 bytes (others: ENOENT). Returns the paths statted and the head.
    fn lookup(input: &[u8], siblings: &[&[u8]]) -> (Vec<Vec<u8>>, String) {
        let now = Time::default();
        let cfg = Config {
            precompressed: true,
            ..Config::default()
        };
        let mut c = HttpConn::new(cfg, now);
        let _ = drain_ops(&mut c);
        c.on_recv(now, Ok(input));
        let mut statted = Vec::new();
        loop {
            let ops = drain_ops(&mut c);
            match ops[..] {
                [Op::Stat] => {
                    let p = c.path().to_vec();
                    let found = siblings.contains(&&p[..p.len() - 1]);
                    statted.push(p[..p.len() - 1].to_vec());
                    c.on_stat(
                        now,
                        if found {
                            Ok(regular(10))
                        } else {
                            Err(RawErrno::NOENT)
                        },
                    );
                }
                [Op::Open { .. }] => {
                    c.on_open(now, Ok(()));
                    let head = String::from_utf8(c.head_bytes().to_vec()).unwrap();
                    return (statted, head);
                }
                _ => {
                    let head = String::from_utf8(c.head_bytes().to_vec()).unwrap();
                    return (statted, head);
                }
            }
        }
    }

    #[test]
    fn precompressed_siblings_are_tried_best_first() {
        let req = b"GET /a.txt HTTP/1.1\r\nHost: x\r\nAccept-Encoding: br;q=0.5, gzip\r\n\r\n";
        let (statted, head) = lookup(req, &[b"a.txt", b"a.txt.br"]);
        assert_eq!(statted, [&b"a.txt.gz"[..], b"a.txt.br"], "gzip weighs more");
        assert!(head.contains("\r\nContent-Encoding: br\r\n"), "{head}");
        assert!(
            head.contains("\r\nContent-Type: text/plain; charset=utf-8\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nVary: Accept-Encoding\r\n"), "{head}");
        // No sibling: the file itself, still with Vary.
        let (statted, head) = lookup(req, &[b"a.txt"]);
        assert_eq!(statted, [&b"a.txt.gz"[..], b"a.txt.br", b"a.txt"]);
        assert!(!head.contains("Content-Encoding"), "{head}");
        assert!(head.contains("\r\nVary: Accept-Encoding\r\n"), "{head}");
        // q=0 refuses, and no header means no sibling.
        let refused =
            b"GET /a.txt HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip;q=0, br;q=0\r\n\r\n";
        let (statted, head) = lookup(refused, &[b"a.txt", b"a.txt.gz", b"a.txt.br"]);
        assert_eq!(statted, [&b"a.txt"[..]]);
        assert!(!head.contains("Content-Encoding"), "{head}");
        let (statted, _) = lookup(
            b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n",
            &[b"a.txt", b"a.txt.gz"],
        );
        assert_eq!(statted, [&b"a.txt"[..]]);
    }

    #[test]
    fn a_directory_index_has_siblings_too() {
        let dir = FileInfo {
            kind: FileKind::Directory,
            size: 0,
            mtime_secs: 0,
            dio: None,
        };
        let now = Time::default();
        let cfg = Config {
            precompressed: true,
            ..Config::default()
        };
        let mut c = HttpConn::new(cfg, now);
        let _ = drain_ops(&mut c);
        c.on_recv(
            now,
            Ok(b"GET /d/ HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n"),
        );
        assert_eq!(
            (drain_ops(&mut c), c.path()),
            (vec![Op::Stat], &b"d\0"[..]),
            "the directory itself first"
        );
        c.on_stat(now, Ok(dir));
        assert_eq!(
            (drain_ops(&mut c), c.path()),
            (vec![Op::Stat], &b"d/index.html.gz\0"[..])
        );
        c.on_stat(now, Ok(regular(5)));
        assert!(matches!(drain_ops(&mut c)[..], [Op::Open { .. }]));
        assert_eq!(c.path(), b"d/index.html.gz\0");
        c.on_open(now, Ok(()));
        let head = String::from_utf8(c.head_bytes().to_vec()).unwrap();
        assert!(head.contains("\r\nContent-Encoding: gzip\r\n"), "{head}");
        assert!(
            head.contains("\r\nContent-Type: text/html; charset=utf-8\r\n"),
            "{head}"
        );
    }

    #[test]
    fn the_log_has_each_answered_request() {
        let input =
            b"GET /f?q HTTP/1.1\r\nHost: x\r\nReferer: http://r/\r\nUser-Agent: t/1\r\n\r\n\
            HEAD /f HTTP/1.0\r\nConnection: keep-alive\r\n\r\n\
            DELETE /f HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut s = sim(10, 64, input.to_vec(), vec![7]);
        s.run();
        let mut got = Vec::new();
        s.conn.drain_log(|e| {
            got.push((
                String::from_utf8(e.method.to_vec()).unwrap(),
                String::from_utf8(e.target.to_vec()).unwrap(),
                e.version_minor,
                e.status,
                e.body_bytes,
                e.referer.map(<[u8]>::to_vec),
                e.user_agent.map(<[u8]>::to_vec),
            ))
        });
        let s405 = "405 Method Not Allowed\n".len() as u64;
        assert_eq!(
            got,
            [
                (
                    "GET".into(),
                    "/f?q".into(),
                    1,
                    200,
                    10,
                    Some(b"http://r/".to_vec()),
                    Some(b"t/1".to_vec())
                ),
                ("HEAD".into(), "/f".into(), 0, 200, 0, None, None),
                ("DELETE".into(), "/f".into(), 1, 405, s405, None, None),
            ]
        );
        let mut again = 0;
        s.conn.drain_log(|_| again += 1);
        assert_eq!(again, 0, "drained once");
    }

    #[test]
    fn a_head_that_does_not_parse_is_logged_and_a_cut_response_is_not() {
        let mut s = sim(10, 64, b"GARBAGE\r\n\r\n".to_vec(), vec![100]);
        s.run();
        let mut got = Vec::new();
        s.conn
            .drain_log(|e| got.push((e.method.len(), e.target.len(), e.status)));
        assert_eq!(got, [(0, 0, 400)]);
        // The client goes away before the response is out: nothing is logged.
        let now = Time::default();
        let cfg = Config {
            access_log: true,
            ..Config::default()
        };
        let mut c = HttpConn::new(cfg, now);
        let _ = open_response(&mut c, 100_000);
        c.abort();
        let mut n = 0;
        c.drain_log(|_| n += 1);
        assert_eq!(n, 0);
    }
}
