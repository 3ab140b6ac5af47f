//! A byte-stream connection for a protocol of your own: [`ProtocolConn`] does the I/O side
//! of a connection (receive, owned sends with their short-send remainder, backpressure,
//! half-close, idle timeout, cancel-then-close, free), and calls a [`Protocol`] with the
//! bytes received, which answers by writing to an [`Output`].
//!
//! ```
//! use ringwork_core::protocol::{Output, Protocol};
//!
//! /// Upper-cases every line it receives.
//! struct Upper;
//!
//! impl Protocol for Upper {
//!     fn on_data(&mut self, input: &[u8], out: &mut Output<'_>) -> usize {
//!         let Some(end) = input.iter().position(|&b| b == b'\n') else {
//!             return 0; // no whole line yet: offered again with more bytes after it
//!         };
//!         let line = &input[..=end];
//!         out.write(&line.to_ascii_uppercase());
//!         line.len()
//!     }
//! }
//! ```
//!
//! `ringwork_sys::worker` runs a `ProtocolConn` per connection on io_uring or epoll
//! (`Server::run_protocol` there is the whole program).
//!
//! How it behaves, each a test below:
//! - **Input.** A receive's bytes are offered to [`Protocol::on_data`] in order, and it is
//!   called again while it consumes some and bytes remain (one message per call is fine).
//!   The receive buffer goes back to the ring at once: what the protocol leaves unconsumed
//!   (a partial message) is copied into the connection's own input buffer, bounded by
//!   [`Limits::max_input`] (beyond it the connection fails, [`CloseReason::InputTooLarge`]).
//!   An idle connection holds no receive buffer.
//! - **Output.** Bytes written to [`Output`] are copied into an owned buffer (consecutive
//!   writes share one); [`Output::send_static`], [`Output::send_shared`] and
//!   [`Output::send_vec`] queue bytes without copying. One send is in flight at a time, and
//!   the driver owns its bytes until its completion hands them back
//!   ([`Op::SendOwned`]/[`Event::SendOwnedDone`]), so nothing touches or frees them while
//!   the kernel may read them. A short send is resubmitted for exactly the rest. A sent owned
//!   buffer is kept for the next writes, so a request/response protocol allocates nothing
//!   per message once warm.
//! - **Backpressure.** With more than [`Limits::high_water`] bytes queued the connection
//!   stops receiving, and resumes once the queue is at [`Limits::low_water`] or below.
//! - **Ends.** The peer's EOF calls [`Protocol::on_eof`], then what is queued is sent and the
//!   socket closed; [`Output::close`] does the same at the protocol's request. A server
//!   shutdown stops receiving and flushes; an error, an idle or message timeout
//!   ([`Limits`]) or the abort drops what is queued, cancels what is in flight, and closes
//!   once every operation has completed. [`Op::Free`] comes once, last.
//!
//! What it does not do: parse (the protocol does), hold the ring's buffers past one call, or
//! read a clock (the loop gives the time, [`StreamMachine::set_now`]).

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use arrayvec::ArrayVec;
use core::fmt;

use crate::buf::BufId;
use crate::conn::{CloseReason, ConnError, Event, EventKind, Op, State, StreamMachine};
use crate::errno::RawErrno;

/// Bytes to send, owned or shared: what [`Op::SendOwned`] hands the driver.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum OutBytes {
    /// A buffer the connection made; it comes back with the send's completion.
    Owned(Vec<u8>),
    /// Bytes that live for the whole program (a fixed response).
    Static(&'static [u8]),
    /// Bytes shared with other connections (a cached page).
    Shared(Arc<[u8]>),
}

impl OutBytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            OutBytes::Owned(v) => v,
            OutBytes::Static(s) => s,
            OutBytes::Shared(a) => a,
        }
    }

    /// How many bytes.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<u8>> for OutBytes {
    fn from(v: Vec<u8>) -> Self {
        OutBytes::Owned(v)
    }
}

impl From<&'static [u8]> for OutBytes {
    fn from(s: &'static [u8]) -> Self {
        OutBytes::Static(s)
    }
}

impl From<&'static str> for OutBytes {
    fn from(s: &'static str) -> Self {
        OutBytes::Static(s.as_bytes())
    }
}

impl From<Arc<[u8]>> for OutBytes {
    fn from(a: Arc<[u8]>) -> Self {
        OutBytes::Shared(a)
    }
}

/// A protocol: what to answer to the bytes a connection receives. Runs inside the worker
/// loop, so it must not block.
pub trait Protocol {
    /// `input` is every received byte not yet consumed, in order. Write what to answer to
    /// `out` and return how many bytes of `input` were consumed (at most `input.len()`);
    /// the rest is offered again with the next bytes after it. Called again at once while it
    /// consumes some and bytes remain.
    fn on_data(&mut self, input: &[u8], out: &mut Output<'_>) -> usize;

    /// The peer closed its side (EOF). `input` is what is left unconsumed; anything written
    /// to `out` is still sent before the socket closes.
    fn on_eof(&mut self, input: &[u8], out: &mut Output<'_>) {
        let _ = (input, out);
    }
}

/// The echo protocol: every byte received goes back as it is, sent from the receive buffer
/// it arrived in ([`Output::forward`]), so that an echo copies nothing in user space.
/// ringwork-echo is `ProtocolConn<Echo>`; on the worker loop,
/// `ringwork_sys::worker::Server::new("echo").run_protocol(|| Echo, ..)` is a whole server.
///
/// ```
/// use ringwork_core::buf::BufId;
/// use ringwork_core::conn::{Event, Op, StreamMachine};
/// use ringwork_core::protocol::{Echo, Limits, ProtocolConn};
///
/// let mut conn = ProtocolConn::new(Echo, Limits::default());
/// conn.on_event(Event::Opened)?;
/// assert_eq!(conn.poll_op(), Some(Op::ArmRecv));
/// let recv = Event::Recv { buf: BufId(3), offset: 0, len: 5, more: true };
/// conn.on_received(recv, b"hello")?;
/// // Sent back from buffer 3 itself: no copy.
/// assert_eq!(conn.poll_op(), Some(Op::Send { buf: BufId(3), offset: 0, len: 5 }));
/// # Ok::<(), ringwork_core::conn::ConnError>(())
/// ```
#[derive(Clone, Copy, Default, Debug)]
pub struct Echo;

impl Protocol for Echo {
    fn on_data(&mut self, input: &[u8], out: &mut Output<'_>) -> usize {
        out.forward(0..input.len());
        input.len()
    }
}

/// A [`ProtocolConn`]'s limits, fixed at construction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Limits {
    /// Stop receiving when more than this many bytes are queued to send.
    pub high_water: usize,
    /// Resume receiving once at most this many are (below `high_water`).
    pub low_water: usize,
    /// Most unconsumed input held for the protocol; more fails the connection.
    pub max_input: usize,
    /// Close a connection that received and sent nothing for this long (milliseconds on the
    /// loop's clock); None: never.
    pub idle_timeout_ms: Option<u64>,
    /// Close a connection whose partial message (bytes the protocol left unconsumed) is not
    /// whole this long (milliseconds) after the receive that left it, as a request-head
    /// timeout does against slow senders; None: never.
    pub message_timeout_ms: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            high_water: 256 * 1024,
            low_water: 64 * 1024,
            max_input: 64 * 1024,
            idle_timeout_ms: None,
            message_timeout_ms: None,
        }
    }
}

/// Most lent sends a connection holds, queued or in flight ([`Output::forward`]): each holds a
/// buffer of the worker's receive pool, which every connection shares. Beyond it, forwarded
/// bytes are copied.
pub const MAX_LENT: u16 = 8;

/// Capacity of a new owned output buffer (it grows past it when a write needs more).
const OUT_BUF_CAPACITY: usize = 4096;

/// Most operations queued after one event: a recycle, a send, an AwaitBuffers or a recv arm
/// or cancel, a CancelAll and a Close or Free.
const MAX_PENDING_OPS: usize = 8;

/// Bytes still in a receive buffer, lent to a send ([`Output::forward`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Lent {
    buf: BufId,
    offset: u32,
    len: u32,
    /// The last bytes lent from their receive: once they are sent (or dropped), the receive's
    /// buffer goes back ([`Op::Recycle`]).
    recycle: bool,
}

/// One thing queued to send.
#[derive(Debug)]
enum OutItem {
    Bytes(OutBytes),
    Lent(Lent),
}

impl OutItem {
    fn len(&self) -> usize {
        match self {
            OutItem::Bytes(b) => b.len(),
            OutItem::Lent(l) => l.len as usize,
        }
    }
}

/// What a connection has to send, not yet handed to the driver.
#[derive(Debug, Default)]
struct OutQueue {
    items: VecDeque<OutItem>,
    /// Bytes of `items.front()` already sent (a short send's remainder waits there).
    head_offset: usize,
    /// A sent owned buffer, emptied, for the next writes.
    spare: Option<Vec<u8>>,
    /// The protocol asked to close once this is sent.
    close: bool,
    /// A failure dropped what was queued: `items` holds only the lent bytes whose buffers go
    /// back ([`Op::Recycle`]), first thing.
    dropped: bool,
    /// Bytes were lent since the last receive was offered.
    lent: bool,
    /// Lent bytes queued or in flight (each holds a receive buffer of the worker's pool).
    lent_items: u16,
}

impl OutQueue {
    fn bytes(&self) -> usize {
        self.items.iter().map(OutItem::len).sum::<usize>() - self.head_offset
    }

    fn tail_buf(&mut self) -> &mut Vec<u8> {
        if !matches!(self.items.back(), Some(OutItem::Bytes(OutBytes::Owned(_)))) {
            let buf = self
                .spare
                .take()
                .unwrap_or_else(|| Vec::with_capacity(OUT_BUF_CAPACITY));
            self.items.push_back(OutItem::Bytes(OutBytes::Owned(buf)));
        }
        match self.items.back_mut() {
            Some(OutItem::Bytes(OutBytes::Owned(v))) => v,
            // Guard: an owned buffer was pushed just above when the back was not one.
            _ => unreachable!("the back is an owned buffer"),
        }
    }

    fn push(&mut self, bytes: OutBytes) {
        if !bytes.is_empty() {
            self.items.push_back(OutItem::Bytes(bytes));
        }
    }

    /// Marks the last bytes lent from the receive of `buf[range]` (queued since it arrived:
    /// unmarked) to recycle it once sent; false when none were lent. A receive is identified
    /// by its buffer and range: only incrementally consumed buffers hold several receives,
    /// each in a range of its own.
    fn recycle_with_last_lent(&mut self, buf: BufId, range: core::ops::Range<u32>) -> bool {
        if !core::mem::take(&mut self.lent) {
            return false;
        }
        let last = self.items.iter_mut().rev().find_map(|item| match item {
            OutItem::Lent(l) if l.buf == buf && range.contains(&l.offset) && !l.recycle => Some(l),
            _ => None,
        });
        match last {
            Some(l) => {
                l.recycle = true;
                true
            }
            None => false,
        }
    }

    fn lend(&mut self, lent: Lent) {
        self.items.push_back(OutItem::Lent(lent));
        self.lent = true;
        self.lent_items += 1;
    }

    /// A sent buffer's memory, back: an owned one is kept for the next writes.
    fn reclaim(&mut self, data: OutBytes) {
        if let OutBytes::Owned(mut v) = data {
            if self.spare.is_none() && v.capacity() <= 16 * OUT_BUF_CAPACITY {
                v.clear();
                self.spare = Some(v);
            }
        }
    }
}

/// Where a [`Protocol`] writes its answer. Bytes written are sent in the order written.
pub struct Output<'a> {
    q: &'a mut OutQueue,
    /// The input of this call.
    input: &'a [u8],
    /// The receive buffer `input` still lies in, and where it starts there; None when the
    /// input was copied out of it (bytes left unconsumed by an earlier call, or EOF).
    lend: Option<(BufId, u32)>,
}

impl Output<'_> {
    /// Sends `input[range]` of this call's input as it is. While those bytes are still in the
    /// receive buffer they arrived in (the common case: a whole message in one receive), the
    /// send names that buffer and nothing is copied; the buffer then goes back to the ring
    /// only once it is sent, so forwarded bytes count against the buffer pool as well as
    /// [`Limits::high_water`]. Otherwise (the bytes were left over from an earlier call and
    /// kept in the connection's own input, or [`MAX_LENT`] sends already hold receive buffers)
    /// they are copied, as [`Output::write`] does. An
    /// echo is `out.forward(0..input.len())`; a proxy forwards a body it has framed.
    ///
    /// ```
    /// use ringwork_core::buf::BufId;
    /// use ringwork_core::conn::{Event, Op, StreamMachine};
    /// use ringwork_core::protocol::{Limits, Output, Protocol, ProtocolConn};
    ///
    /// /// Frames of a one-byte length and its bytes, sent on without the length.
    /// struct Unframe;
    /// impl Protocol for Unframe {
    ///     fn on_data(&mut self, input: &[u8], out: &mut Output<'_>) -> usize {
    ///         let Some(&len) = input.first() else { return 0 };
    ///         let end = 1 + usize::from(len);
    ///         if input.len() < end {
    ///             return 0; // the rest of the frame comes later
    ///         }
    ///         out.forward(1..end);
    ///         end
    ///     }
    /// }
    ///
    /// let mut conn = ProtocolConn::new(Unframe, Limits::default());
    /// conn.on_event(Event::Opened)?;
    /// let _arm = conn.poll_op();
    /// // A 4-byte frame in receive buffer 7: its payload is sent from that buffer.
    /// let recv = Event::Recv { buf: BufId(7), offset: 0, len: 5, more: true };
    /// conn.on_received(recv, b"\x04ping")?;
    /// assert_eq!(conn.poll_op(), Some(Op::Send { buf: BufId(7), offset: 1, len: 4 }));
    /// // The buffer goes back to the ring once the send is done with it.
    /// conn.on_event(Event::SendDone { res: Ok(4) })?;
    /// assert_eq!(conn.poll_op(), Some(Op::Recycle(BufId(7))));
    /// # Ok::<(), ringwork_core::conn::ConnError>(())
    /// ```
    ///
    /// # Panics
    /// When `range` is not within the input: a protocol bug.
    pub fn forward(&mut self, range: core::ops::Range<usize>) {
        let bytes = &self.input[range.clone()];
        if bytes.is_empty() {
            return;
        }
        match self.lend {
            // A receive is at most a buffer's size (u32): its offsets fit.
            Some((buf, base)) if self.q.lent_items < MAX_LENT => self.q.lend(Lent {
                buf,
                offset: base + range.start as u32,
                len: bytes.len() as u32,
                recycle: false,
            }),
            _ => self.write(bytes),
        }
    }

    /// Queues a copy of `bytes`.
    pub fn write(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.q.tail_buf().extend_from_slice(bytes);
        }
    }

    /// The owned buffer at the end of what is queued, to write into in place (append only:
    /// what it holds is queued already).
    pub fn buf(&mut self) -> &mut Vec<u8> {
        self.q.tail_buf()
    }

    /// Queues bytes that live for the whole program, without copying them.
    pub fn send_static(&mut self, bytes: &'static [u8]) {
        self.q.push(OutBytes::Static(bytes));
    }

    /// Queues shared bytes, without copying them.
    pub fn send_shared(&mut self, bytes: Arc<[u8]>) {
        self.q.push(OutBytes::Shared(bytes));
    }

    /// Queues a buffer of the protocol's, without copying it.
    pub fn send_vec(&mut self, bytes: Vec<u8>) {
        self.q.push(OutBytes::Owned(bytes));
    }

    /// Bytes queued and not yet handed to the kernel (not counting a send in flight).
    pub fn queued(&self) -> usize {
        self.q.bytes()
    }

    /// Closes the connection once everything written is sent; no more input is offered.
    pub fn close(&mut self) {
        self.q.close = true;
    }
}

impl fmt::Write for Output<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write(s.as_bytes());
        Ok(())
    }
}

/// One connection running a [`Protocol`]: a [`StreamMachine`] the worker loop drives. See
/// the module docs.
///
/// ```
/// use ringwork_core::buf::BufId;
/// use ringwork_core::conn::{Event, Op, StreamMachine};
/// use ringwork_core::protocol::{Limits, OutBytes, Output, Protocol, ProtocolConn};
///
/// struct Hello;
/// impl Protocol for Hello {
///     fn on_data(&mut self, input: &[u8], out: &mut Output<'_>) -> usize {
///         out.send_static(b"hello\n");
///         input.len()
///     }
/// }
///
/// let mut conn = ProtocolConn::new(Hello, Limits::default());
/// let ops = |c: &mut ProtocolConn<Hello>| std::iter::from_fn(|| c.poll_op()).collect::<Vec<_>>();
/// conn.on_event(Event::Opened)?;
/// assert_eq!(ops(&mut conn), [Op::ArmRecv]);
/// let recv = Event::Recv { buf: BufId(7), offset: 0, len: 2, more: true };
/// conn.on_received(recv, b"hi")?;
/// let data = OutBytes::Static(b"hello\n");
/// assert_eq!(
///     ops(&mut conn),
///     [Op::Recycle(BufId(7)), Op::SendOwned { data: data.clone(), offset: 0 }]
/// );
/// conn.on_event(Event::SendOwnedDone { res: Ok(6), data })?;
/// assert_eq!(ops(&mut conn), []);
/// # Ok::<(), ringwork_core::conn::ConnError>(())
/// ```
#[derive(Debug)]
pub struct ProtocolConn<P> {
    state: State,
    proto: P,
    limits: Limits,
    out: OutQueue,
    /// Received bytes the protocol has not consumed.
    input: Vec<u8>,
    /// The protocol is still offered input (until EOF, its close, or a failure).
    input_open: bool,
    /// Operations for `poll_op`, in order; a send's bytes wait in `next_send`.
    ops: ArrayVec<PendingOp, MAX_PENDING_OPS>,
    /// What the `Send` in `ops` sends, and its first byte (one per event at most: a send is
    /// asked for only when none is in flight).
    next_send: Option<(OutItem, u32)>,
    recv_armed: bool,
    recv_cancel_pending: bool,
    waiting_for_buffers: bool,
    backpressure: bool,
    /// The unsent bytes of the send in flight (None: no send in flight).
    sending: Option<SendInFlight>,
    cancels_in_flight: u32,
    close_in_flight: bool,
    reason: Option<CloseReason>,
    now_ms: u64,
    last_activity_ms: u64,
    /// When the unconsumed input was left by a receive after which the protocol made
    /// progress (or by the first receive of a partial message); None without input.
    partial_since_ms: Option<u64>,
    bytes_received: u64,
    bytes_sent: u64,
}

/// [`Op`] with the owned send's bytes kept aside: the queue stays a few bytes per entry (a
/// worker's connection table holds a connection per slot).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PendingOp {
    ArmRecv,
    Send,
    Recycle(BufId),
    AwaitBuffers,
    CancelRecv,
    CancelAll,
    Close,
    Free,
}

#[derive(Clone, Copy, Debug)]
struct SendInFlight {
    offset: usize,
    len: usize,
    /// The send names a receive buffer: these are the bytes it was lent (whole).
    lent: Option<Lent>,
}

impl<P: Protocol> ProtocolConn<P> {
    /// A connection in [`State::Idle`] running `proto`.
    ///
    /// # Panics
    /// When `limits.low_water` is not below `limits.high_water`: a caller bug.
    pub fn new(proto: P, limits: Limits) -> Self {
        assert!(
            limits.low_water < limits.high_water,
            "low_water must be below high_water"
        );
        Self {
            state: State::Idle,
            proto,
            limits,
            out: OutQueue::default(),
            input: Vec::new(),
            input_open: true,
            ops: ArrayVec::new(),
            next_send: None,
            recv_armed: false,
            recv_cancel_pending: false,
            waiting_for_buffers: false,
            backpressure: false,
            sending: None,
            cancels_in_flight: 0,
            close_in_flight: false,
            reason: None,
            now_ms: 0,
            last_activity_ms: 0,
            partial_since_ms: None,
            bytes_received: 0,
            bytes_sent: 0,
        }
    }

    /// The protocol.
    pub fn protocol(&self) -> &P {
        &self.proto
    }

    /// The protocol, to change.
    pub fn protocol_mut(&mut self) -> &mut P {
        &mut self.proto
    }

    /// Where the connection is in its life.
    pub fn state(&self) -> State {
        self.state
    }

    /// Why the connection is closing, once it is.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.reason
    }

    /// Bytes received so far.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// Bytes the kernel reported sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Bytes queued to send, the unsent rest of a send in flight included.
    pub fn queued_bytes(&self) -> usize {
        self.out.bytes() + self.sending.map_or(0, |s| s.len)
    }

    /// True while receiving is paused because too much output is queued.
    pub fn backpressure(&self) -> bool {
        self.backpressure
    }

    /// Operations issued whose completion has not arrived. [`Op::Free`] comes only after
    /// this is zero.
    pub fn in_flight(&self) -> u32 {
        u32::from(self.recv_armed)
            + u32::from(self.sending.is_some())
            + self.cancels_in_flight
            + u32::from(self.close_in_flight)
    }

    /// When the idle timeout closes the connection, while it is open or draining.
    fn idle_deadline(&self) -> Option<u64> {
        let idle = self.limits.idle_timeout_ms?;
        matches!(self.state, State::Open | State::Draining)
            .then(|| self.last_activity_ms.saturating_add(idle))
    }

    /// When the message timeout closes the connection, while a partial message waits.
    fn message_deadline(&self) -> Option<u64> {
        let timeout = self.limits.message_timeout_ms?;
        let since = self.partial_since_ms.filter(|_| self.input_open)?;
        matches!(self.state, State::Open | State::Draining).then(|| since.saturating_add(timeout))
    }

    fn set_state(&mut self, new: State) {
        self.state = new;
    }

    fn push(&mut self, op: PendingOp) {
        self.ops.push(op);
    }

    fn unexpected(&self, event: EventKind) -> ConnError {
        ConnError::Unexpected {
            state: self.state,
            event,
        }
    }

    fn handle(&mut self, ev: Event, bytes: Option<&[u8]>) -> Result<(), ConnError> {
        use State::*;
        match (self.state, ev) {
            (Idle, Event::Opened) => {
                self.last_activity_ms = self.now_ms;
                self.set_state(Open);
            }
            // Never opened: nothing is in flight, so draining closes at once.
            (Idle, Event::Shutdown) => self.drain(CloseReason::Shutdown),
            (Idle, Event::Abort) => self.drain(CloseReason::Aborted),
            (_, Event::BuffersAvailable) => self.waiting_for_buffers = false,

            (
                Open | Draining | Closing,
                ev @ Event::Recv {
                    buf,
                    offset,
                    len,
                    more,
                },
            ) if self.recv_armed => {
                let Some(bytes) = bytes else {
                    return Err(self.unexpected(ev.kind()));
                };
                debug_assert_eq!(bytes.len(), len as usize);
                self.recv_event(more);
                self.bytes_received += u64::from(len);
                self.last_activity_ms = self.now_ms;
                if self.input_open && self.state != Closing {
                    self.offer(bytes, (buf, offset));
                }
                // The bytes are read (or copied) now: the buffer goes back at once, or with
                // the send of the last bytes the protocol forwarded from it.
                if !self.out.recycle_with_last_lent(buf, offset..offset + len) {
                    self.push(PendingOp::Recycle(buf));
                }
            }

            (Open | Draining | Closing, Event::RecvEof { more }) if self.recv_armed => {
                self.recv_event(more);
                if self.input_open && self.state != Closing {
                    self.input_open = false;
                    let mut out = Output {
                        q: &mut self.out,
                        input: &self.input,
                        lend: None,
                    };
                    self.proto.on_eof(&self.input, &mut out);
                    self.input = Vec::new();
                }
                if self.state == Open {
                    self.drain(CloseReason::PeerClosed);
                }
            }

            (Open | Draining | Closing, Event::RecvErr { errno, more }) if self.recv_armed => {
                self.recv_failed(errno, more);
            }

            (Open | Draining | Closing, Event::SendOwnedDone { res, data })
                if self.sending.is_some_and(|s| s.lent.is_none()) =>
            {
                self.send_done(res, OutItem::Bytes(data))?;
            }

            (Open | Draining | Closing, Event::SendDone { res })
                if self.sending.is_some_and(|s| s.lent.is_some()) =>
            {
                let lent = self.sending.and_then(|s| s.lent);
                // Guard: the arm checks that the send in flight is a lent one.
                let lent = lent.expect("a lent send in flight");
                self.send_done(res, OutItem::Lent(lent))?;
            }

            (Open | Draining | Closing, Event::CancelDone) if self.cancels_in_flight > 0 => {
                self.cancels_in_flight -= 1;
            }

            (CloseSent, Event::Closed) => {
                self.close_in_flight = false;
                self.set_state(Freed);
                self.push(PendingOp::Free);
            }

            // Input stays open: requests that arrive before the cancel takes effect are
            // answered.
            (Open, Event::Shutdown) => self.drain(CloseReason::Shutdown),
            (Draining | Closing | CloseSent | Freed, Event::Shutdown) => {}

            (Open | Draining | Closing, Event::Abort) => self.abort(),
            // The close is in flight: nothing else is.
            (CloseSent, Event::Abort) => {}

            // A completion for nothing in flight (a provided-buffer send this machine never
            // asks for among them), a second Opened, anything after Freed.
            (_, ev) => return Err(self.unexpected(ev.kind())),
        }
        self.reconcile();
        Ok(())
    }

    /// Offers received bytes (in `buf` at `offset`) to the protocol, with what it left
    /// unconsumed before them.
    fn offer(&mut self, bytes: &[u8], (buf, offset): (BufId, u32)) {
        let used = if self.input.is_empty() {
            // The common case: read in place, copy only what is left.
            let used = self.consume(bytes, Some((buf, offset)));
            if used < bytes.len() && self.input_open {
                self.input.extend_from_slice(&bytes[used..]);
            }
            used
        } else {
            let mut input = core::mem::take(&mut self.input);
            input.extend_from_slice(bytes);
            let used = self.consume(&input, None);
            input.drain(..used);
            self.input = input;
            used
        };
        // A partial message's clock starts when it is first left over; progress (a message
        // consumed) starts it again for the one left now.
        self.partial_since_ms = match self.input.is_empty() {
            true => None,
            false if used > 0 => Some(self.now_ms),
            false => self.partial_since_ms.or(Some(self.now_ms)),
        };
        if self.input.len() > self.limits.max_input {
            self.fail(CloseReason::InputTooLarge);
        } else if self.input.is_empty() && self.input.capacity() > OUT_BUF_CAPACITY {
            // An idle connection keeps no large buffer.
            self.input = Vec::new();
        }
    }

    /// Calls the protocol while it consumes and input remains; how much it consumed. `lend`:
    /// the receive buffer `input` lies in, and where it starts there.
    fn consume(&mut self, input: &[u8], lend: Option<(BufId, u32)>) -> usize {
        let mut used = 0;
        while used < input.len() && self.input_open {
            let mut out = Output {
                q: &mut self.out,
                input: &input[used..],
                // A receive is at most a buffer's size (u32).
                lend: lend.map(|(buf, at)| (buf, at + used as u32)),
            };
            let n = self
                .proto
                .on_data(&input[used..], &mut out)
                .min(input.len() - used);
            if self.out.close {
                self.input_open = false;
                if self.state == State::Open {
                    self.drain(CloseReason::ProtocolClosed);
                }
            }
            if n == 0 {
                break;
            }
            used += n;
        }
        if !self.input_open {
            // Closed by the protocol: nothing more is read.
            return input.len();
        }
        used
    }

    fn recv_failed(&mut self, errno: RawErrno, more: bool) {
        let cancelled_by_us = self.recv_cancel_pending;
        self.recv_event(more);
        match errno {
            RawErrno::NOBUFS => {
                if !more && !self.waiting_for_buffers {
                    self.waiting_for_buffers = true;
                    if self.state == State::Open {
                        self.push(PendingOp::AwaitBuffers);
                    }
                }
            }
            RawErrno::AGAIN | RawErrno::INTR => {}
            RawErrno::CANCELED if cancelled_by_us => {}
            _ if self.state == State::Closing => {}
            other => self.fail(CloseReason::RecvError(other)),
        }
    }

    /// The send in flight completed: reclaim its bytes, or queue the rest of a short send
    /// first, or fail.
    fn send_done(&mut self, res: Result<u32, RawErrno>, data: OutItem) -> Result<(), ConnError> {
        let Some(sent) = self.sending else {
            // Guard: the caller's arm checks `sending.is_some()`.
            unreachable!("a send completion while one is in flight")
        };
        match res {
            Ok(n) if n as usize > sent.len => {
                return Err(ConnError::SendOverrun {
                    sent: n,
                    len: sent.len as u32,
                })
            }
            Ok(n) => {
                self.sending = None;
                self.bytes_sent += u64::from(n);
                if n > 0 {
                    self.last_activity_ms = self.now_ms;
                }
                let n = n as usize;
                debug_assert_eq!(
                    data.len(),
                    sent.offset + sent.len,
                    "a send's own bytes back"
                );
                if self.state == State::Closing || n == sent.len {
                    self.reclaim(data);
                } else {
                    // Short send: exactly the rest goes next, before anything queued.
                    self.out.items.push_front(data);
                    self.out.head_offset = sent.offset + n;
                }
            }
            Err(e) => {
                self.sending = None;
                if self.state == State::Closing {
                    self.reclaim(data);
                } else if matches!(e, RawErrno::AGAIN | RawErrno::INTR) {
                    // Nothing was written: sent again.
                    self.out.items.push_front(data);
                    self.out.head_offset = sent.offset;
                } else {
                    self.reclaim(data);
                    self.fail(CloseReason::SendError(e));
                }
            }
        }
        Ok(())
    }

    /// A sent (or dropped) item's memory back: an owned buffer kept for the next writes, a
    /// lent receive buffer to the ring when its receive lent nothing after it.
    fn reclaim(&mut self, item: OutItem) {
        match item {
            OutItem::Bytes(data) => self.out.reclaim(data),
            OutItem::Lent(l) => {
                self.out.lent_items = self.out.lent_items.saturating_sub(1);
                if l.recycle {
                    self.push(PendingOp::Recycle(l.buf));
                }
            }
        }
    }

    fn recv_event(&mut self, more: bool) {
        if !more {
            self.recv_armed = false;
            self.recv_cancel_pending = false;
        }
    }

    fn drain(&mut self, reason: CloseReason) {
        self.reason.get_or_insert(reason);
        self.set_state(State::Draining);
    }

    fn drop_output(&mut self) {
        // Kept: the lent bytes whose buffers go back, for `poll_op` (no allocation here).
        for _ in 0..self.out.items.len() {
            let Some(item) = self.out.items.pop_front() else {
                break;
            };
            match item {
                OutItem::Bytes(data) => self.out.reclaim(data),
                OutItem::Lent(l) if !l.recycle => {}
                OutItem::Lent(l) => match self.sending.as_mut() {
                    // The last bytes lent from a receive whose earlier bytes are in flight:
                    // the buffer goes back with that send's completion, not before.
                    Some(SendInFlight { lent: Some(f), .. }) if f.buf == l.buf && !f.recycle => {
                        f.recycle = true;
                    }
                    _ => self.out.items.push_back(OutItem::Lent(l)),
                },
            }
        }
        self.out.dropped = true;
        // No more input, so nothing more is lent.
        self.out.lent_items = 0;
        self.out.head_offset = 0;
        self.input_open = false;
        self.input = Vec::new();
    }

    fn fail(&mut self, reason: CloseReason) {
        self.reason = Some(reason);
        self.set_state(State::Closing);
        self.drop_output();
        if self.sending.is_some() || (self.recv_armed && !self.recv_cancel_pending) {
            self.push(PendingOp::CancelAll);
            self.cancels_in_flight += 1;
            self.recv_cancel_pending |= self.recv_armed;
        }
    }

    fn abort(&mut self) {
        if !self.reason.is_some_and(CloseReason::is_fatal) {
            self.reason = Some(CloseReason::Aborted);
        }
        self.set_state(State::Closing);
        self.drop_output();
        if self.sending.is_some() || self.recv_armed {
            self.push(PendingOp::CancelAll);
            self.cancels_in_flight += 1;
            self.recv_cancel_pending |= self.recv_armed;
        }
    }

    /// Derives the operations the state calls for: send the next bytes, arm or cancel the
    /// receive, close once nothing is left in flight.
    fn reconcile(&mut self) {
        match self.state {
            State::Open | State::Draining => {
                if self.sending.is_none() {
                    if let Some(data) = self.out.items.pop_front() {
                        let offset = core::mem::take(&mut self.out.head_offset);
                        let len = data.len() - offset;
                        let lent = match data {
                            OutItem::Lent(l) => Some(l),
                            OutItem::Bytes(_) => None,
                        };
                        self.sending = Some(SendInFlight { offset, len, lent });
                        self.next_send = Some((data, offset as u32));
                        self.push(PendingOp::Send);
                    }
                }
                let queued = self.queued_bytes();
                if queued > self.limits.high_water {
                    self.backpressure = true;
                } else if queued <= self.limits.low_water {
                    self.backpressure = false;
                }
                let wants_recv =
                    self.state == State::Open && !self.backpressure && !self.waiting_for_buffers;
                // No re-arm while a cancel is in flight: it could hit the new receive.
                if wants_recv && !self.recv_armed && self.cancels_in_flight == 0 {
                    self.push(PendingOp::ArmRecv);
                    self.recv_armed = true;
                } else if !wants_recv && self.recv_armed && !self.recv_cancel_pending {
                    self.push(PendingOp::CancelRecv);
                    self.cancels_in_flight += 1;
                    self.recv_cancel_pending = true;
                }
                if self.state == State::Draining
                    && self.out.items.is_empty()
                    && self.in_flight() == 0
                {
                    self.close();
                }
            }
            // The socket must outlive every operation on it.
            State::Closing if self.in_flight() == 0 => self.close(),
            _ => {}
        }
    }

    fn close(&mut self) {
        self.push(PendingOp::Close);
        self.close_in_flight = true;
        self.set_state(State::CloseSent);
    }
}

impl<P: Protocol> StreamMachine for ProtocolConn<P> {
    const READS_BYTES: bool = true;

    /// Feeds one event. [`Event::Recv`] must come through [`StreamMachine::on_received`],
    /// with its bytes (here it is refused, and the buffer stays the caller's).
    fn on_event(&mut self, event: Event) -> Result<(), ConnError> {
        self.handle(event, None)
    }

    fn on_received(&mut self, event: Event, bytes: &[u8]) -> Result<(), ConnError> {
        self.handle(event, Some(bytes))
    }

    fn poll_op(&mut self) -> Option<Op> {
        if self.out.dropped {
            match self.out.items.pop_front() {
                Some(OutItem::Lent(l)) => return Some(Op::Recycle(l.buf)),
                // Guard: a dropped queue keeps only lent bytes.
                Some(OutItem::Bytes(_)) => unreachable!("a dropped queue holds only lent bytes"),
                None => self.out.dropped = false,
            }
        }
        if self.ops.is_empty() {
            return None;
        }
        Some(match self.ops.remove(0) {
            PendingOp::ArmRecv => Op::ArmRecv,
            PendingOp::Send => {
                // Guard: `next_send` is set with every Send pushed (reconcile).
                match self.next_send.take().expect("a send's bytes") {
                    (OutItem::Bytes(data), offset) => Op::SendOwned { data, offset },
                    (OutItem::Lent(l), offset) => Op::Send {
                        buf: l.buf,
                        offset: l.offset + offset,
                        len: l.len - offset,
                    },
                }
            }
            PendingOp::Recycle(buf) => Op::Recycle(buf),
            PendingOp::AwaitBuffers => Op::AwaitBuffers,
            PendingOp::CancelRecv => Op::CancelRecv,
            PendingOp::CancelAll => Op::CancelAll,
            PendingOp::Close => Op::Close,
            PendingOp::Free => Op::Free,
        })
    }

    fn close_reason(&self) -> Option<CloseReason> {
        self.reason
    }

    fn set_now(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    fn deadline_ms(&self) -> Option<u64> {
        match (self.idle_deadline(), self.message_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_deadline(&mut self) {
        let due = |d: Option<u64>| d.is_some_and(|d| self.now_ms >= d);
        let reason = if due(self.message_deadline()) {
            CloseReason::MessageTimeout
        } else if due(self.idle_deadline()) {
            CloseReason::IdleTimeout
        } else {
            return;
        };
        self.fail(reason);
        self.reconcile();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use std::vec;
    use std::vec::Vec;

    const SHARED_TEXT: &[u8] = b"<shared>";
    const STATIC_TEXT: &[u8] = b"<static>";

    /// A line protocol: each whole line answered (upper-cased; `s…` and `a…` lines first
    /// send static or shared bytes, `b…` lines add 300 bytes, `f…` lines are forwarded as
    /// they are, `close` closes), one line per call; at EOF the rest and `EOF`. Records
    /// every byte it consumed and queued.
    #[derive(Default)]
    struct Lines {
        seen: Vec<u8>,
        produced: Vec<u8>,
    }

    impl Protocol for Lines {
        fn on_data(&mut self, input: &[u8], out: &mut Output<'_>) -> usize {
            let Some(end) = input.iter().position(|&b| b == b'\n') else {
                return 0;
            };
            let line = &input[..=end];
            self.seen.extend_from_slice(line);
            if line.first() == Some(&b'f') {
                out.forward(0..line.len());
                self.produced.extend_from_slice(line);
                return line.len();
            }
            match line.first() {
                Some(b's') => {
                    out.send_static(STATIC_TEXT);
                    self.produced.extend_from_slice(STATIC_TEXT);
                }
                Some(b'a') => {
                    out.send_shared(Arc::from(SHARED_TEXT));
                    self.produced.extend_from_slice(SHARED_TEXT);
                }
                Some(b'b') => {
                    let big = vec![b'#'; 300];
                    out.send_vec(big.clone());
                    self.produced.extend_from_slice(&big);
                }
                _ => {}
            }
            let upper = line.to_ascii_uppercase();
            out.write(&upper);
            self.produced.extend_from_slice(&upper);
            if line == b"close\n" {
                out.close();
            }
            line.len()
        }

        fn on_eof(&mut self, input: &[u8], out: &mut Output<'_>) {
            self.seen.extend_from_slice(input);
            out.write(input);
            out.write(b"EOF");
            self.produced.extend_from_slice(input);
            self.produced.extend_from_slice(b"EOF");
        }
    }

    fn limits() -> Limits {
        Limits {
            high_water: 64,
            low_water: 16,
            max_input: 40,
            idle_timeout_ms: Some(100),
            message_timeout_ms: Some(60),
        }
    }

    struct Fx {
        c: ProtocolConn<Lines>,
        next_buf: u16,
    }

    impl Fx {
        fn new(limits: Limits) -> Self {
            Self {
                c: ProtocolConn::new(Lines::default(), limits),
                next_buf: 0,
            }
        }

        fn ops(&mut self) -> Vec<Op> {
            core::iter::from_fn(|| self.c.poll_op()).collect()
        }

        fn step(&mut self, ev: Event) -> Vec<Op> {
            let shown = std::format!("{ev:?}");
            StreamMachine::on_event(&mut self.c, ev)
                .unwrap_or_else(|e| panic!("{shown} refused: {e}"));
            self.ops()
        }

        /// Receives `bytes` in a new buffer, the receive still armed.
        fn recv(&mut self, bytes: &[u8]) -> Vec<Op> {
            let buf = BufId(self.next_buf);
            self.next_buf += 1;
            let ev = Event::Recv {
                buf,
                offset: 0,
                len: bytes.len() as u32,
                more: true,
            };
            self.c.on_received(ev, bytes).unwrap();
            self.ops()
        }
    }

    fn open() -> Fx {
        let mut f = Fx::new(limits());
        assert_eq!(f.step(Event::Opened), [Op::ArmRecv]);
        f
    }

    fn owned(bytes: &[u8]) -> OutBytes {
        OutBytes::Owned(bytes.to_vec())
    }

    fn sent(n: u32, data: OutBytes) -> Event {
        Event::SendOwnedDone { res: Ok(n), data }
    }

    /// A worker's connection table holds a connection per slot, 20,000 by default.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_protocol_connection_stays_within_320_bytes() {
        let size = core::mem::size_of::<ProtocolConn<Lines>>() - core::mem::size_of::<Lines>();
        assert!(size <= 320, "{size} bytes");
    }

    #[test]
    fn a_whole_line_is_answered_and_its_buffer_goes_back_at_once() {
        let mut f = open();
        assert_eq!(
            f.recv(b"hi\n"),
            [
                Op::Recycle(BufId(0)),
                Op::SendOwned {
                    data: owned(b"HI\n"),
                    offset: 0
                }
            ]
        );
        assert_eq!(f.step(sent(3, owned(b"HI\n"))), []);
        assert_eq!(f.c.bytes_sent(), 3);
    }

    #[test]
    fn a_partial_line_is_kept_and_offered_again_with_the_rest() {
        let mut f = open();
        assert_eq!(f.recv(b"xy"), [Op::Recycle(BufId(0))]);
        assert_eq!(
            f.recv(b"z\nd"),
            [
                Op::Recycle(BufId(1)),
                Op::SendOwned {
                    data: owned(b"XYZ\n"),
                    offset: 0
                }
            ]
        );
        assert_eq!(f.c.protocol().seen, b"xyz\n");
        assert_eq!(f.c.input, b"d");
    }

    #[test]
    fn pipelined_lines_are_all_answered_and_coalesce_into_one_buffer() {
        let mut f = open();
        let ops = f.recv(b"x\ny\nz\n");
        assert_eq!(
            ops[1],
            Op::SendOwned {
                data: owned(b"X\nY\nZ\n"),
                offset: 0
            }
        );
    }

    #[test]
    fn a_short_send_resubmits_exactly_the_rest_before_newer_output() {
        let mut f = open();
        f.recv(b"hello\n");
        // While the send is in flight, more output queues behind it.
        assert_eq!(f.recv(b"w\n"), [Op::Recycle(BufId(1))]);
        assert_eq!(
            f.step(sent(2, owned(b"HELLO\n"))),
            [Op::SendOwned {
                data: owned(b"HELLO\n"),
                offset: 2
            }]
        );
        assert_eq!(
            f.step(sent(4, owned(b"HELLO\n"))),
            [Op::SendOwned {
                data: owned(b"W\n"),
                offset: 0
            }]
        );
    }

    #[test]
    fn a_send_that_reports_more_than_it_was_given_is_refused() {
        let mut f = open();
        f.recv(b"q\n");
        let r = StreamMachine::on_event(&mut f.c, sent(9, owned(b"Q\n")));
        assert_eq!(r, Err(ConnError::SendOverrun { sent: 9, len: 2 }));
    }

    #[test]
    fn static_and_shared_bytes_are_sent_without_a_copy() {
        let mut f = open();
        let ops = f.recv(b"s\n");
        assert_eq!(
            ops[1],
            Op::SendOwned {
                data: OutBytes::Static(STATIC_TEXT),
                offset: 0
            }
        );
        assert_eq!(
            f.step(sent(8, OutBytes::Static(STATIC_TEXT))),
            [Op::SendOwned {
                data: owned(b"S\n"),
                offset: 0
            }]
        );
    }

    #[test]
    fn backpressure_stops_receiving_above_high_water_and_resumes_at_low_water() {
        let mut f = open();
        // 300 bytes, and "B\n" written after them into the same (owned) buffer: above 64,
        // so the receive is cancelled.
        let mut big = vec![b'#'; 300];
        big.extend_from_slice(b"B\n");
        let big = OutBytes::Owned(big);
        let ops = f.recv(b"b\n");
        assert_eq!(
            ops,
            [
                Op::Recycle(BufId(0)),
                Op::SendOwned {
                    data: big.clone(),
                    offset: 0
                },
                Op::CancelRecv
            ]
        );
        assert!(f.c.backpressure());
        f.step(Event::RecvErr {
            errno: RawErrno::CANCELED,
            more: false,
        });
        assert_eq!(f.step(Event::CancelDone), []);
        // 50 left (above 16): still paused.
        assert_eq!(
            f.step(sent(252, big.clone())),
            [Op::SendOwned {
                data: big.clone(),
                offset: 252
            }]
        );
        assert!(f.c.backpressure());
        // 2 left, at most 16: receiving again.
        assert_eq!(
            f.step(sent(48, big.clone())),
            [
                Op::SendOwned {
                    data: big,
                    offset: 300
                },
                Op::ArmRecv
            ]
        );
        assert!(!f.c.backpressure());
    }

    #[test]
    fn peer_eof_flushes_what_the_protocol_answers_then_closes_and_frees() {
        let mut f = open();
        assert_eq!(f.recv(b"tail"), [Op::Recycle(BufId(0))]);
        assert_eq!(
            f.step(Event::RecvEof { more: false }),
            [Op::SendOwned {
                data: owned(b"tailEOF"),
                offset: 0
            }]
        );
        assert_eq!(f.step(sent(7, owned(b"tailEOF"))), [Op::Close]);
        assert_eq!(f.step(Event::Closed), [Op::Free]);
        assert_eq!(f.c.close_reason(), Some(CloseReason::PeerClosed));
    }

    #[test]
    fn the_protocols_close_flushes_then_closes_and_reads_nothing_more() {
        let mut f = open();
        let ops = f.recv(b"close\nignored\n");
        assert_eq!(
            ops,
            [
                Op::Recycle(BufId(0)),
                Op::SendOwned {
                    data: owned(b"CLOSE\n"),
                    offset: 0
                },
                Op::CancelRecv
            ]
        );
        assert_eq!(f.c.protocol().seen, b"close\n");
        f.step(Event::RecvErr {
            errno: RawErrno::CANCELED,
            more: false,
        });
        assert_eq!(f.step(Event::CancelDone), []);
        assert_eq!(f.step(sent(6, owned(b"CLOSE\n"))), [Op::Close]);
        assert_eq!(f.c.close_reason(), Some(CloseReason::ProtocolClosed));
    }

    #[test]
    fn too_much_unconsumed_input_fails_the_connection() {
        let mut f = open();
        let ops = f.recv(&[b'x'; 41]);
        assert_eq!(ops, [Op::CancelAll, Op::Recycle(BufId(0))]);
        assert_eq!(f.c.close_reason(), Some(CloseReason::InputTooLarge));
    }

    #[test]
    fn an_idle_connection_times_out_and_a_busy_one_does_not() {
        let mut f = open();
        assert_eq!(f.c.deadline_ms(), Some(100));
        f.c.set_now(60);
        f.recv(b"q\n");
        assert_eq!(f.c.deadline_ms(), Some(160));
        f.c.set_now(150);
        f.c.on_deadline();
        assert_eq!(f.ops(), []);
        f.step(sent(2, owned(b"Q\n")));
        f.c.set_now(250);
        f.c.on_deadline();
        assert_eq!(f.ops(), [Op::CancelAll]);
        assert_eq!(f.c.close_reason(), Some(CloseReason::IdleTimeout));
    }

    #[test]
    fn a_partial_message_not_completed_in_time_closes_the_connection() {
        let mut f = open();
        f.recv(b"ab");
        assert_eq!(f.c.deadline_ms(), Some(60));
        // More of the same message: its clock runs on.
        f.c.set_now(40);
        f.recv(b"c");
        assert_eq!(f.c.deadline_ms(), Some(60));
        f.c.set_now(59);
        f.c.on_deadline();
        assert_eq!(f.ops(), []);
        f.c.set_now(60);
        f.c.on_deadline();
        assert_eq!(f.ops(), [Op::CancelAll]);
        assert_eq!(f.c.close_reason(), Some(CloseReason::MessageTimeout));
    }

    #[test]
    fn a_message_completed_starts_the_clock_again_for_the_next() {
        let mut f = open();
        f.recv(b"ab");
        f.c.set_now(50);
        f.recv(b"c\nd");
        // "d" is a new message, left at 50; the idle timeout (150) comes later.
        assert_eq!(f.c.deadline_ms(), Some(110));
        f.c.set_now(80);
        f.recv(b"\n");
        assert_eq!(
            f.c.deadline_ms(),
            Some(180),
            "no partial message: only the idle timeout"
        );
    }

    #[test]
    fn a_receive_without_its_bytes_is_refused() {
        let mut f = open();
        let ev = Event::Recv {
            buf: BufId(0),
            offset: 0,
            len: 1,
            more: true,
        };
        assert!(StreamMachine::on_event(&mut f.c, ev).is_err());
        assert_eq!(f.ops(), []);
    }

    fn lent(buf: u16, offset: u32, len: u32) -> Op {
        Op::Send {
            buf: BufId(buf),
            offset,
            len,
        }
    }

    fn lent_sent(n: u32) -> Event {
        Event::SendDone { res: Ok(n) }
    }

    #[test]
    fn forwarded_bytes_are_sent_from_their_receive_buffer_which_goes_back_after() {
        let mut f = open();
        assert_eq!(f.recv(b"fwd\n"), [lent(0, 0, 4)]);
        assert_eq!(f.step(lent_sent(4)), [Op::Recycle(BufId(0))]);
        assert_eq!(f.c.bytes_sent(), 4);
    }

    #[test]
    fn forwarded_pieces_of_one_receive_keep_its_buffer_until_the_last_is_sent() {
        let mut f = open();
        // Two forwarded lines and an upper-cased one between them, from one buffer at
        // offset 0 (its recycle waits for the second forwarded line).
        assert_eq!(f.recv(b"f1\nx\nf2\n"), [lent(0, 0, 3)]);
        assert_eq!(
            f.step(lent_sent(3)),
            [Op::SendOwned {
                data: owned(b"X\n"),
                offset: 0
            }]
        );
        assert_eq!(f.step(sent(2, owned(b"X\n"))), [lent(0, 5, 3)]);
        assert_eq!(f.step(lent_sent(3)), [Op::Recycle(BufId(0))]);
    }

    #[test]
    fn a_short_forwarded_send_resubmits_the_rest_from_the_same_buffer() {
        let mut f = open();
        // An incrementally consumed buffer: this receive is a slice at offset 100.
        let ev = Event::Recv {
            buf: BufId(9),
            offset: 100,
            len: 6,
            more: true,
        };
        f.c.on_received(ev, b"fabcd\n").unwrap();
        assert_eq!(f.ops(), [lent(9, 100, 6)]);
        assert_eq!(f.step(lent_sent(2)), [lent(9, 102, 4)]);
        assert_eq!(f.step(lent_sent(4)), [Op::Recycle(BufId(9))]);
        assert_eq!(f.c.bytes_sent(), 6);
    }

    #[test]
    fn bytes_left_over_from_an_earlier_receive_are_forwarded_by_copy() {
        let mut f = open();
        assert_eq!(f.recv(b"fo"), [Op::Recycle(BufId(0))]);
        assert_eq!(
            f.recv(b"o\n"),
            [
                Op::Recycle(BufId(1)),
                Op::SendOwned {
                    data: owned(b"foo\n"),
                    offset: 0
                }
            ]
        );
    }

    #[test]
    fn a_failure_gives_back_every_buffer_lent_to_queued_sends() {
        let mut f = open();
        assert_eq!(f.recv(b"f1\n"), [lent(0, 0, 3)]);
        assert_eq!(f.recv(b"f2\n"), []);
        assert_eq!(f.recv(b"f3\n"), []);
        // Abort: the two queued buffers go back at once, the one in flight after its
        // cancelled send completes.
        let ops = f.step(Event::Abort);
        assert_eq!(ops.len(), 3, "{ops:?}");
        let mut back: Vec<_> = ops[..2].to_vec();
        back.sort_by_key(|op| std::format!("{op:?}"));
        assert_eq!(back, [Op::Recycle(BufId(1)), Op::Recycle(BufId(2))]);
        assert_eq!(ops[2], Op::CancelAll);
        f.step(Event::RecvErr {
            errno: RawErrno::CANCELED,
            more: false,
        });
        assert_eq!(
            f.step(Event::SendDone {
                res: Err(RawErrno::CANCELED)
            }),
            [Op::Recycle(BufId(0))]
        );
        assert_eq!(f.step(Event::CancelDone), [Op::Close]);
    }

    #[test]
    fn beyond_max_lent_sends_forwarded_bytes_are_copied_and_their_buffer_goes_back() {
        let mut f = Fx::new(Limits {
            high_water: 1 << 20,
            low_water: 1 << 10,
            ..limits()
        });
        f.step(Event::Opened);
        assert_eq!(f.recv(b"f0\n"), [lent(0, 0, 3)]);
        for i in 1..MAX_LENT {
            assert_eq!(f.recv(b"f1\n"), [], "receive {i} lent");
        }
        // The ninth: copied, its buffer back at once.
        assert_eq!(f.recv(b"f9\n"), [Op::Recycle(BufId(MAX_LENT))]);
        // The first lent send completes: its buffer back, the next lent one sent.
        assert_eq!(f.step(lent_sent(3)), [Op::Recycle(BufId(0)), lent(1, 0, 3)]);
        // A lent slot is free again.
        assert_eq!(f.recv(b"fa\n"), []);
        assert_eq!(f.c.out.lent_items, MAX_LENT);
    }

    #[test]
    fn an_owned_completion_for_a_lent_send_is_refused() {
        let mut f = open();
        f.recv(b"f\n");
        let r = StreamMachine::on_event(&mut f.c, sent(2, owned(b"f\n")));
        assert!(r.is_err());
    }

    // ---- Echo: what ringwork-echo relies on ---------------------------------------------

    fn echo_open() -> (ProtocolConn<Echo>, Vec<Op>) {
        let mut c = ProtocolConn::new(
            Echo,
            Limits {
                high_water: 8,
                low_water: 4,
                ..Limits::default()
            },
        );
        c.on_event(Event::Opened).unwrap();
        let ops = core::iter::from_fn(|| c.poll_op()).collect();
        (c, ops)
    }

    fn drive(c: &mut ProtocolConn<Echo>, ev: Event, bytes: Option<&[u8]>) -> Vec<Op> {
        match bytes {
            Some(b) => c.on_received(ev, b),
            None => c.on_event(ev),
        }
        .unwrap();
        core::iter::from_fn(|| c.poll_op()).collect()
    }

    fn rx(buf: u16, bytes: &[u8], more: bool) -> (Event, &[u8]) {
        let ev = Event::Recv {
            buf: BufId(buf),
            offset: 0,
            len: bytes.len() as u32,
            more,
        };
        (ev, bytes)
    }

    #[test]
    fn echo_rearms_a_multishot_receive_only_once_it_ended() {
        let (mut c, ops) = echo_open();
        assert_eq!(ops, [Op::ArmRecv]);
        let (ev, b) = rx(0, b"ab", true);
        assert_eq!(drive(&mut c, ev, Some(b)), [lent(0, 0, 2)]);
        // The multishot ends (no F_MORE) with its last bytes: armed again, once.
        let (ev, b) = rx(1, b"c", false);
        assert_eq!(drive(&mut c, ev, Some(b)), [Op::ArmRecv]);
        assert_eq!(
            drive(&mut c, lent_sent(2), None),
            [Op::Recycle(BufId(0)), lent(1, 0, 1)]
        );
    }

    #[test]
    fn echo_waits_for_buffers_after_enobufs_then_rearms() {
        let (mut c, _) = echo_open();
        let nobufs = Event::RecvErr {
            errno: RawErrno::NOBUFS,
            more: false,
        };
        assert_eq!(drive(&mut c, nobufs, None), [Op::AwaitBuffers]);
        assert_eq!(c.state(), State::Open, "ENOBUFS never closes");
        assert_eq!(drive(&mut c, Event::BuffersAvailable, None), [Op::ArmRecv]);
    }

    #[test]
    fn echo_keeps_receives_that_arrive_after_its_backpressure_cancel_in_order() {
        let (mut c, _) = echo_open();
        // 9 bytes queued (> 8): the receive is cancelled.
        let (ev, b) = rx(0, b"123456789", true);
        assert_eq!(drive(&mut c, ev, Some(b)), [lent(0, 0, 9), Op::CancelRecv]);
        // The kernel had more before it saw the cancel: kept, and sent in order.
        let (ev, b) = rx(1, b"AB", true);
        assert_eq!(drive(&mut c, ev, Some(b)), []);
        let cancelled = Event::RecvErr {
            errno: RawErrno::CANCELED,
            more: false,
        };
        assert_eq!(drive(&mut c, cancelled, None), []);
        // No re-arm while the cancel's own completion is outstanding, even below low water.
        assert_eq!(
            drive(&mut c, lent_sent(9), None),
            [Op::Recycle(BufId(0)), lent(1, 0, 2)]
        );
        assert_eq!(drive(&mut c, Event::CancelDone, None), [Op::ArmRecv]);
    }

    #[test]
    fn echo_closes_only_after_an_abort_cancelled_everything_in_flight() {
        let (mut c, _) = echo_open();
        let (ev, b) = rx(0, b"xy", true);
        drive(&mut c, ev, Some(b));
        assert_eq!(drive(&mut c, Event::Abort, None), [Op::CancelAll]);
        let cancelled = Event::RecvErr {
            errno: RawErrno::CANCELED,
            more: false,
        };
        assert_eq!(drive(&mut c, cancelled, None), []);
        let send_cancelled = Event::SendDone {
            res: Err(RawErrno::CANCELED),
        };
        assert_eq!(drive(&mut c, send_cancelled, None), [Op::Recycle(BufId(0))]);
        assert_eq!(drive(&mut c, Event::CancelDone, None), [Op::Close]);
        assert_eq!(drive(&mut c, Event::Closed, None), [Op::Free]);
    }

    // ---- proptest: a simulated kernel --------------------------------------------------

    #[derive(Clone, Debug)]
    enum Act {
        Data(Vec<u8>, bool),
        Eof,
        RecvErr(RawErrno),
        Buffers,
        Send(u8),
        SendErr(RawErrno),
        Pending,
        Shutdown,
        Abort,
        Time(u8),
    }

    fn act() -> impl Strategy<Value = Act> {
        let line = prop::collection::vec(
            prop::sample::select(vec![b'a', b's', b'b', b'x', b'\n', b'\n', b'c', b'f']),
            1..24,
        );
        prop_oneof![
            6 => (line, prop::bool::weighted(0.9)).prop_map(|(l, m)| Act::Data(l, m)),
            1 => Just(Act::Data(b"close\n".to_vec(), true)),
            1 => Just(Act::Eof),
            1 => prop::sample::select(vec![RawErrno::NOBUFS, RawErrno::AGAIN, RawErrno(104)])
                .prop_map(Act::RecvErr),
            1 => Just(Act::Buffers),
            6 => any::<u8>().prop_map(Act::Send),
            1 => prop::sample::select(vec![RawErrno::AGAIN, RawErrno(32)]).prop_map(Act::SendErr),
            3 => Just(Act::Pending),
            1 => Just(Act::Shutdown),
            1 => Just(Act::Abort),
            1 => any::<u8>().prop_map(Act::Time),
        ]
    }

    /// The send the kernel has in flight.
    enum KSend {
        Owned(OutBytes, u32),
        /// From a receive buffer: its id, first byte, length.
        Lent(u16, u32, u32),
    }

    /// What the kernel has of the connection.
    #[derive(Default)]
    struct Kernel {
        armed: bool,
        send: Option<KSend>,
        /// What each buffer the connection holds was filled with.
        contents: std::collections::BTreeMap<u16, Vec<u8>>,
        /// Completions owed: cancelled receives and sends, cancels' own, the close.
        owed: std::collections::VecDeque<Event>,
        held: BTreeSet<u16>,
        next_buf: u16,
        eof: bool,
        out: Vec<u8>,
        delivered: Vec<u8>,
        freed: bool,
        now: u64,
    }

    impl Kernel {
        fn feed(&mut self, f: &mut Fx, ev: Event, bytes: Option<&[u8]>) {
            assert!(!self.freed, "an event after Free");
            f.c.set_now(self.now);
            let shown = std::format!("{ev:?}");
            let r = match bytes {
                Some(b) => f.c.on_received(ev, b),
                None => StreamMachine::on_event(&mut f.c, ev),
            };
            r.unwrap_or_else(|e| panic!("{shown} refused: {e}"));
            self.perform(f);
        }

        fn perform(&mut self, f: &mut Fx) {
            while let Some(op) = f.c.poll_op() {
                assert!(!self.freed, "{op:?} after Free");
                match op {
                    Op::ArmRecv => {
                        assert!(!self.armed, "armed twice");
                        self.armed = true;
                    }
                    Op::SendOwned { data, offset } => {
                        assert!(self.send.is_none(), "two sends in flight");
                        assert!((offset as usize) < data.len(), "an empty send");
                        self.send = Some(KSend::Owned(data, offset));
                    }
                    Op::Send { buf, offset, len } => {
                        assert!(self.send.is_none(), "two sends in flight");
                        assert!(len > 0, "an empty send");
                        let held = self
                            .contents
                            .get(&buf.0)
                            .expect("a send of a buffer not held");
                        assert!(
                            (offset + len) as usize <= held.len(),
                            "a send past the bytes"
                        );
                        self.send = Some(KSend::Lent(buf.0, offset, len));
                    }
                    Op::CancelRecv => {
                        if self.armed && !self.recv_cancel_owed() {
                            self.owed.push_back(Event::RecvErr {
                                errno: RawErrno::CANCELED,
                                more: false,
                            });
                        }
                        self.owed.push_back(Event::CancelDone);
                    }
                    Op::CancelAll => {
                        if self.armed && !self.recv_cancel_owed() {
                            self.owed.push_back(Event::RecvErr {
                                errno: RawErrno::CANCELED,
                                more: false,
                            });
                        }
                        if let Some(send) = self.send.take() {
                            self.owed.push_back(send_failed(send, RawErrno::CANCELED));
                        }
                        self.owed.push_back(Event::CancelDone);
                    }
                    Op::Recycle(buf) => {
                        assert!(self.held.remove(&buf.0), "recycled twice");
                        self.contents.remove(&buf.0);
                        assert!(
                            !matches!(self.send, Some(KSend::Lent(b, ..)) if b == buf.0),
                            "a buffer recycled while a send reads it"
                        );
                    }
                    Op::AwaitBuffers => {}
                    Op::Close => {
                        assert!(
                            !self.armed && self.send.is_none() && self.owed.is_empty(),
                            "closed with operations in flight"
                        );
                        self.owed.push_back(Event::Closed);
                    }
                    Op::Free => {
                        assert!(self.owed.is_empty() && !self.armed && self.send.is_none());
                        self.freed = true;
                    }
                }
            }
        }

        fn step(&mut self, f: &mut Fx, a: Act) {
            if self.freed {
                return;
            }
            match a {
                Act::Data(bytes, more) if self.armed && !self.eof => {
                    if !more {
                        self.recv_ended();
                    }
                    let buf = BufId(self.next_buf);
                    self.next_buf += 1;
                    self.held.insert(buf.0);
                    self.contents.insert(buf.0, bytes.clone());
                    self.delivered.extend_from_slice(&bytes);
                    self.armed = more;
                    let ev = Event::Recv {
                        buf,
                        offset: 0,
                        len: bytes.len() as u32,
                        more,
                    };
                    self.feed(f, ev, Some(&bytes));
                }
                Act::Eof if self.armed && !self.eof => {
                    self.recv_ended();
                    self.eof = true;
                    self.armed = false;
                    self.feed(f, Event::RecvEof { more: false }, None);
                }
                Act::RecvErr(errno) if self.armed && !self.eof => {
                    self.recv_ended();
                    self.feed(f, Event::RecvErr { errno, more: false }, None);
                }
                Act::Buffers => self.feed(f, Event::BuffersAvailable, None),
                Act::Send(frac) => self.complete_send(f, frac),
                Act::SendErr(errno) => {
                    if let Some(send) = self.send.take() {
                        self.feed(f, send_failed(send, errno), None);
                    }
                }
                Act::Pending => self.deliver_owed(f),
                Act::Shutdown => self.feed(f, Event::Shutdown, None),
                Act::Abort => self.feed(f, Event::Abort, None),
                Act::Time(ms) => {
                    self.now += u64::from(ms);
                    f.c.set_now(self.now);
                    if f.c.deadline_ms().is_some_and(|d| d <= self.now) {
                        f.c.on_deadline();
                        self.perform(f);
                    }
                }
                _ => {}
            }
        }

        /// A cancelled receive's end is owed already (one receive ends once).
        fn recv_cancel_owed(&self) -> bool {
            self.owed.iter().any(|e| matches!(e, Event::RecvErr { .. }))
        }

        /// The receive ended on its own: a cancel on its way finds nothing to cancel.
        fn recv_ended(&mut self) {
            self.armed = false;
            self.owed.retain(|e| !matches!(e, Event::RecvErr { .. }));
        }

        /// Completes the send in flight with `frac`/255 of what it was for (at least 1).
        fn complete_send(&mut self, f: &mut Fx, frac: u8) {
            let part = |rest: usize| (rest * usize::from(frac) / 255).max(1);
            match self.send.take() {
                None => {}
                Some(KSend::Owned(data, offset)) => {
                    let n = part(data.len() - offset as usize);
                    self.out
                        .extend_from_slice(&data.as_slice()[offset as usize..offset as usize + n]);
                    self.feed(f, sent(n as u32, data), None);
                }
                Some(KSend::Lent(buf, offset, len)) => {
                    let n = part(len as usize);
                    let at = offset as usize;
                    self.out.extend_from_slice(&self.contents[&buf][at..at + n]);
                    self.feed(f, lent_sent(n as u32), None);
                }
            }
        }

        fn deliver_owed(&mut self, f: &mut Fx) {
            if let Some(ev) = self.owed.pop_front() {
                if matches!(ev, Event::RecvErr { .. }) {
                    self.armed = false;
                }
                self.feed(f, ev, None);
            }
        }

        /// Everything completes and the peer closes: the connection must end.
        fn finish(&mut self, f: &mut Fx) {
            for _ in 0..10_000 {
                if self.freed {
                    return;
                }
                if !self.owed.is_empty() {
                    self.deliver_owed(f);
                } else if self.send.is_some() {
                    self.complete_send(f, 255);
                } else if self.armed && !self.eof {
                    self.step(f, Act::Eof);
                } else {
                    // Waiting for buffers, or an EOF already seen: buffers, then time.
                    self.feed(f, Event::BuffersAvailable, None);
                    if !self.armed && self.send.is_none() && self.owed.is_empty() {
                        self.step(f, Act::Time(255));
                    }
                }
            }
            panic!("the connection never ended: {:?}", f.c.state());
        }
    }

    /// The completion of a failed send.
    fn send_failed(send: KSend, errno: RawErrno) -> Event {
        match send {
            KSend::Owned(data, _) => Event::SendOwnedDone {
                res: Err(errno),
                data,
            },
            KSend::Lent(..) => Event::SendDone { res: Err(errno) },
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the kernel does (short sends, partial receives, errors, cancels racing
        /// receives, EOF, shutdown, abort, timeouts): every byte sent is the protocol's
        /// output, in order, all of it on a clean end; the protocol sees the received bytes
        /// in order; every buffer goes back once; nothing is closed while in flight; Free
        /// comes once and last.
        #[test]
        fn every_byte_out_is_the_protocols_in_order(acts in prop::collection::vec(act(), 1..80)) {
            let mut f = Fx::new(limits());
            let mut k = Kernel::default();
            k.feed(&mut f, Event::Opened, None);
            for a in acts {
                k.step(&mut f, a);
                let produced = &f.c.protocol().produced;
                prop_assert!(produced.starts_with(&k.out), "sent bytes the protocol did not write");
            }
            k.finish(&mut f);
            prop_assert!(k.freed);
            prop_assert!(k.held.is_empty(), "buffers never recycled: {:?}", k.held);
            let p = f.c.protocol();
            prop_assert!(k.delivered.starts_with(&p.seen), "the protocol saw other bytes");
            let reason = f.c.close_reason().expect("closed for a reason");
            if !reason.is_fatal() {
                prop_assert_eq!(&k.out, &p.produced, "a clean end sends everything ({})", reason);
            }
        }
    }
}
