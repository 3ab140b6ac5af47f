//! One HTTP/1.1 static-file connection as a sans-IO state machine.
//!
//! [`HttpConn`] takes what the driver observed (bytes received, a stat result, an open result,
//! a read or send completion, the passing of time) and describes what to do next as [`Op`]s,
//! polled with [`HttpConn::poll_op`]. The io_uring driver turns each op into an SQE and feeds
//! the CQE back; the epoll driver performs it with a nonblocking syscall (or waits for
//! readiness) and feeds the result back. Both run exactly these decisions. Each report goes
//! in as an [`HttpEvent`] through [`HttpConn::on_event`], the checked door: it refuses an
//! event the connection cannot have been sent (a completion of an op not in flight) with a
//! [`ConnError`](crate::conn::ConnError), unchanged, as the echo machine does. The `on_*`
//! method of each event takes it unchecked, guarding a stray report instead.
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
//! sent. Where a stat's answer would be told without an open (a directory, nothing, a file
//! asked for as a directory), the path is opened first all the same (a probe, closed at once):
//! a path that leaves the root answers 403, whatever lies outside.
//!
//! An operator's [`Rules`] ([`HttpConn::with_rules`]) add headers to file responses, answer
//! a 403 or 404 with an error page (looked up as any path, sent with the error's status) and
//! a path that names nothing with a fallback file.
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

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use arrayvec::ArrayVec;

use crate::buf::{BufId, ZcError, ZcSlot, ZcTracker};
use crate::errno::RawErrno;
use crate::file::{Alignment, Chunk, FileRead, ReadOutcome, ReadReq};
use crate::http::{
    client_is_fresh, content_type, error_response, if_range_holds, is_directory_request,
    normalize_path, parse_range, parse_request, preferred_codings, redirect_response,
    slash_redirect_location, Codings, ContentCoding, ContentRange, ETag, ErrorResponseLen,
    HttpError, Limits, Method, Parsed, RangeResult, ResponseHead, Rules, Status,
};
use crate::metrics::Answered;

mod body;
mod events;
mod lifecycle;
pub use lifecycle::DRAIN_HEAD_WAIT_MS;
mod lookup;
mod plan;

pub use events::HttpEvent;

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
    /// Monotonic microseconds on the same clock (for how long a request took, in
    /// [`HttpConn::take_answered`]); 0 where the driver does not time requests.
    pub mono_us: u64,
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
    /// The stat found something a symlink may have led out of the root to; an open of the
    /// path (`RESOLVE_BENEATH`) is in flight to tell.
    Probe { then: Found },
    /// The probe opened the path beneath the root; its close is in flight.
    ProbeClose { then: Found },
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

impl Phase {
    /// The phase's name, for [`ConnError::UnexpectedHttp`](crate::conn::ConnError).
    fn name(self) -> &'static str {
        match self {
            Phase::Head { .. } => "Head",
            Phase::Stat { .. } => "Stat",
            Phase::Open { .. } => "Open",
            Phase::OpenFailed { .. } => "OpenFailed",
            Phase::Probe { .. } => "Probe",
            Phase::ProbeClose { .. } => "ProbeClose",
            Phase::Respond => "Respond",
            Phase::CloseFile => "CloseFile",
            Phase::Drain { .. } => "Drain",
            Phase::Closing => "Closing",
            Phase::Closed => "Closed",
            Phase::Freed => "Freed",
        }
    }
}

/// Completions owed for the ops that no other field follows (the phase does not: an abort
/// moves a lookup to `Closing` with its stat or open still in flight), so that
/// [`HttpConn::on_event`] can tell a report of one from a stray. Set by `push`, cleared by
/// the op's handler.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
struct Owed {
    stat: bool,
    open: bool,
    cancel: bool,
    shutdown: bool,
    /// The [`Op::SendZc`] whose result is owed (sends are one at a time; its notification
    /// is the tracker's to follow).
    zc_result: Option<ZcSlot>,
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

/// Bytes of the request kept for its answer: inline up to `N`, on the heap beyond, so that a
/// long value is never cut short and read as something else.
#[derive(Clone, Debug)]
enum KeptBytes<const N: usize> {
    Inline(ArrayVec<u8, N>),
    Heap(Vec<u8>),
}

impl<const N: usize> KeptBytes<N> {
    fn new(bytes: &[u8]) -> Self {
        ArrayVec::try_from(bytes).map_or_else(|_| Self::Heap(bytes.to_vec()), Self::Inline)
    }
}

impl<const N: usize> core::ops::Deref for KeptBytes<N> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Inline(b) => b,
            Self::Heap(b) => b,
        }
    }
}

/// What a stat found that is answered once a probe says the path stays beneath the root.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Found {
    /// A directory: the slash redirect, or its index.
    Directory,
    /// A regular file asked for with a trailing slash: 404.
    FileAsDirectory,
    /// Nothing (ENOENT, ENOTDIR): the fallback file, or 404.
    Nothing,
}

/// One request's working memory (its path, target, response head and request record),
/// which a connection gives up when it goes idle: a worker keeps these for its connections'
/// next requests ([`HttpConn::lend_scratch`], [`HttpConn::take_scratch`]), so that a request
/// allocates nothing, while an idle connection holds none.
#[derive(Debug, Default)]
pub struct Scratch {
    path: Vec<u8>,
    head: Vec<u8>,
    target: Vec<u8>,
    req: Option<alloc::boxed::Box<ReqInfo>>,
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
    /// Kept whole however long (a client revalidating many variants sends a long list).
    if_none_match: Option<KeptBytes<256>>,
    /// Longer than this is kept empty, which never holds: the whole file.
    if_range: Option<ArrayVec<u8, 64>>,
    /// The precompressed codings the client takes, best first (none without
    /// [`Config::precompressed`]).
    codings: Codings,
    /// The coding of the sibling being served, whose suffix ends the path.
    coding: Option<ContentCoding>,
    /// The path named nothing and the rules' fallback file is being looked up instead.
    fallback: bool,
    /// The lookup failed with this status and the rules' page for it is being looked up.
    error_page: Option<Status>,
    /// When its head was complete ([`Time::mono_us`]).
    since_us: u64,
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

/// One connection; see the module docs. Report to it with [`HttpConn::on_event`], which
/// refuses an event it cannot have been sent; the `on_*` methods it calls take theirs
/// unchecked.
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
    /// The operator's response rules ([`HttpConn::with_rules`]); `None`: none.
    rules: Option<Arc<Rules>>,
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
    /// The box of the last request answered, for the next (it goes with the other request
    /// buffers when the connection goes idle).
    spare_req: Option<alloc::boxed::Box<ReqInfo>>,
    /// The connection went idle: its request buffers (path, head, target, `spare_req`) are
    /// the worker's to take back ([`HttpConn::take_scratch`]).
    idle_scratch: bool,
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
    /// The last request answered, until [`HttpConn::take_answered`] takes it.
    answered: Option<Answered>,
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
    zc: Option<alloc::boxed::Box<ZcTracker<()>>>,
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
    owed: Owed,
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
            rules: None,
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
            spare_req: None,
            idle_scratch: false,
            target: Vec::new(),
            log: Vec::new(),
            log_open: None,
            log_status: 0,
            log_body: 0,
            answered: None,
            file_open: false,
            read: None,
            bufs: [BufState::Free; 2],
            head_room: 0,
            combined_in_flight: false,
            file_send: false,
            file_cold: false,
            file_in_flight: false,
            zc: cfg
                .zerocopy
                .then(|| alloc::boxed::Box::new(ZcTracker::new(2, ZC_SENDS))),
            read_ix: 0,
            send_ix: 0,
            recv_in_flight: false,
            send_in_flight: false,
            cancel_sent: false,
            pending: 0,
            file_closing: false,
            owed: Owed::default(),
            close_after: false,
            last_progress: now.mono_ms,
            requests: 0,
        };
        c.want_head(now);
        c
    }

    /// Answers with `rules` (headers and lifetimes by path, error pages, the fallback
    /// file): the rules a connection starts with are those it keeps, so a server that
    /// reloads them gives new connections the new ones. Empty rules change nothing.
    #[must_use]
    pub fn with_rules(mut self, rules: Arc<Rules>) -> Self {
        self.rules = (!rules.is_empty()).then_some(rules);
        self
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

    /// True once the connection is closing: it waits for what it has in flight, and then
    /// closes (a read that has not reached the kernel yet may be reported cancelled).
    pub fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing | Phase::Closed | Phase::Freed)
    }

    /// The settings it was made with.
    pub fn config(&self) -> &Config {
        &self.cfg
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

    /// The request answered last, once (for counters): its status, body bytes and how long
    /// it took, from the [`Time`] of the event that completed its head to that of the event
    /// that saw its last byte handed to the kernel. A response is finished only by a send's
    /// completion (or a SEND_ZC notification), so an event answers at most one request:
    /// take it after each event, or it is replaced by the next. `None` for a response cut
    /// short, as [`HttpConn::drain_log`] has none.
    pub fn take_answered(&mut self) -> Option<Answered> {
        self.answered.take()
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
        match op {
            Op::Stat => self.owed.stat = true,
            Op::Open { .. } => self.owed.open = true,
            Op::Cancel => self.owed.cancel = true,
            Op::Shutdown => self.owed.shutdown = true,
            Op::SendZc { slot, .. } => self.owed.zc_result = Some(slot),
            _ => {}
        }
        // Capacity guard: at most a send, a read and one bookkeeping op are queued at once.
        self.ops.push(op);
    }

    /// One reported completion of a counted op. A stray report (a driver bug) must not make
    /// the connection look idle while something is in flight, nor underflow.
    fn completed(&mut self) {
        self.pending = self.pending.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests;
