//! The echo connection state machine: receive → queue → send, sans-IO.
//!
//! One [`EchoConn`] per accepted socket. The driver feeds it [`Event`]s (completions and a few
//! notices) with [`EchoConn::on_event`] and performs the [`Op`]s it then polls from
//! [`EchoConn::poll_op`], in order, until `None`. The same machine serves both drivers:
//!
//! | op | io_uring driver | epoll driver |
//! | --- | --- | --- |
//! | [`Op::ArmRecv`] | multishot RECV with BUFFER_SELECT | register readable interest |
//! | [`Op::Send`] | SEND of `buf[offset..offset + len]` | nonblocking write (wait for writable on EAGAIN) |
//! | [`Op::SendOwned`] | SEND of `data[offset..]`, the ring holding `data` until the CQE | nonblocking write; `data` held while it waits for writable |
//! | [`Op::AwaitBuffers`] | remember the connection in a [`Starved`] set | the same |
//! | [`Op::CancelRecv`] | ASYNC_CANCEL by the recv's user_data | drop readable interest, then deliver `RecvErr { ECANCELED, more: false }` and `CancelDone` |
//! | [`Op::CancelAll`] | ASYNC_CANCEL with FD \| ALL | as `CancelRecv`, and a write waiting for writable ends with `SendDone { ECANCELED }` |
//! | [`Op::Close`] | CLOSE | close(2), then deliver `Closed` |
//!
//! What it guarantees (each is a test below): bytes are echoed exactly once and in order with
//! at most one send in flight (two sends in flight on one stream could go out in either
//! order); a multishot recv is re-armed only when its last event lacked IORING_CQE_F_MORE (a
//! multishot request ends with the first CQE without it, whatever its result); ENOBUFS never
//! closes the connection, it waits for buffers ([`Op::AwaitBuffers`]); the socket is closed
//! only once nothing is in flight on it, after cancelling what was (close(2) does not cancel
//! io_uring requests, which keep the file alive); every buffer it is handed is recycled
//! exactly once, and never while the kernel may still read it (ownership comes back only with
//! the CQE); at the end of a shutdown's grace period [`Event::Abort`] cancels everything and
//! closes, with either driver.
//!
//! What it deliberately does not do: own buffer memory or [`crate::buf::Lease`]s (it tracks
//! [`BufId`]s, offsets and lengths; the driver holds the leases and recycles on
//! [`Op::Recycle`]), build user_data (the driver does, with [`crate::token`]), or decide when a
//! provided ring has enough buffers again ([`Starved`] does, from the ring's or pool's
//! `can_rearm`, and the driver delivers [`Event::BuffersAvailable`]).
//!
//! # Backpressure, and why the queue never overflows
//!
//! When [`Config::max_queued`] chunks are queued the machine stops receiving and resumes once
//! the queue has drained to half. Stopping a multishot recv is asynchronous: the kernel keeps
//! posting receives until it processes the cancel (in bursts of dozens of buffers for a bulk
//! sender, more under DEFER_TASKRUN), and those bytes have left the socket, so they are queued,
//! never dropped, and echoed in order. What bounds them is the buffer ring: every queued chunk
//! holds (a slice of) a ring buffer until it is recycled. So the chunks of every connection of
//! one ring live in one [`ChunkQueues`] table sized by the ring: with whole buffers (and
//! bundles, and the epoll driver's pool) one entry per buffer, which no receive pattern can
//! exceed, since a buffer is handed to one connection at a time. With incremental consumption
//! (several slices per buffer) the size is the driver's margin, and a connection whose
//! receive finds the table full fails closed with [`CloseReason::QueueOverflow`] rather than
//! lose bytes. With epoll dropping interest is synchronous and nothing arrives late at all.

use alloc::vec::Vec;
use arrayvec::ArrayVec;
use core::fmt;

use crate::buf::BufId;
use crate::errno::RawErrno;
pub use crate::protocol::OutBytes;
use crate::token::{Slot, Token};

/// [`Config::max_queued`]'s default.
pub const DEFAULT_MAX_QUEUED: usize = 8;

/// Most operations queued for [`EchoConn::poll_op`] after one event (recycles of a dropped
/// queue are not among them: they come straight from the queue).
const MAX_PENDING_OPS: usize = 8;

/// Connection limits, fixed at construction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Config {
    /// Backpressure: stop receiving when this many chunks are queued for sending; resume at
    /// half. At least 1.
    pub max_queued: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_queued: DEFAULT_MAX_QUEUED,
        }
    }
}

/// Where a connection is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    /// Constructed, not yet [`Event::Opened`].
    Idle,
    /// Receiving and echoing.
    Open,
    /// Peer EOF or server shutdown: no more receiving; flushing the queue, then closing.
    Draining,
    /// A fatal error or an abort: queued data dropped, in-flight ops cancelled; closes when
    /// none remain.
    Closing,
    /// [`Op::Close`] issued; waiting for [`Event::Closed`].
    CloseSent,
    /// [`Op::Free`] issued: the slot may be reused. Terminal.
    Freed,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Something the driver reports to the connection. Not `Copy`: an owned send's bytes come
/// back in [`Event::SendOwnedDone`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Event {
    /// The socket was accepted: start receiving.
    Opened,
    /// `len` bytes arrived in buffer `buf` at `offset` (the connection now holds them until
    /// [`Op::Recycle`]). `more` is IORING_CQE_F_MORE: the multishot recv is still armed.
    /// `offset` is 0 but with incrementally consumed buffers (IOU_PBUF_RING_INC), where one
    /// buffer holds several receives, possibly of several connections, one after another:
    /// there each Recv is a slice, and each slice gets its own [`Op::Recycle`]. Accepted
    /// whatever the queue holds (see the module docs).
    Recv {
        /// The buffer holding the bytes.
        buf: BufId,
        /// Where in the buffer they start.
        offset: u32,
        /// How many bytes.
        len: u32,
        /// The recv is still armed.
        more: bool,
    },
    /// The recv returned 0: the peer half-closed (or closed).
    RecvEof {
        /// The recv is still armed.
        more: bool,
    },
    /// The recv failed. ENOBUFS is not fatal (a provided ring may run dry with no data
    /// pending), ECANCELED is expected after a cancel, EAGAIN and EINTR are retried; anything
    /// else closes the connection.
    RecvErr {
        /// Why.
        errno: RawErrno,
        /// The recv is still armed.
        more: bool,
    },
    /// After [`Op::AwaitBuffers`]: the buffer ring (or pool) has buffers again.
    BuffersAvailable,
    /// The one in-flight [`Op::Send`] completed: bytes written (may be short) or an errno.
    SendDone {
        /// The send's result.
        res: Result<u32, RawErrno>,
    },
    /// The one in-flight [`Op::SendOwned`] completed: bytes written (may be short) or an
    /// errno, and the bytes it named, handed back (the kernel is done with them).
    SendOwnedDone {
        /// The send's result.
        res: Result<u32, RawErrno>,
        /// The bytes the send named, whole (not only the part it was for).
        data: OutBytes,
    },
    /// A [`Op::CancelRecv`] or [`Op::CancelAll`] request's own completion (whatever its result:
    /// the cancelled ops report separately).
    CancelDone,
    /// The [`Op::Close`] completed.
    Closed,
    /// The server is stopping: stop receiving, flush what is queued, then close.
    Shutdown,
    /// The shutdown's grace period is over (a peer that never reads would hold the process):
    /// drop what is queued, cancel everything in flight ([`Op::CancelAll`]), then close.
    Abort,
}

impl Event {
    /// The event's kind, without its data.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Opened => EventKind::Opened,
            Event::Recv { .. } => EventKind::Recv,
            Event::RecvEof { .. } => EventKind::RecvEof,
            Event::RecvErr { .. } => EventKind::RecvErr,
            Event::BuffersAvailable => EventKind::BuffersAvailable,
            Event::SendDone { .. } => EventKind::SendDone,
            Event::SendOwnedDone { .. } => EventKind::SendOwnedDone,
            Event::CancelDone => EventKind::CancelDone,
            Event::Closed => EventKind::Closed,
            Event::Shutdown => EventKind::Shutdown,
            Event::Abort => EventKind::Abort,
        }
    }
}

/// [`Event`] without its data, for error reports.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[allow(missing_docs)] // one-to-one with `Event`
pub enum EventKind {
    Opened,
    Recv,
    RecvEof,
    RecvErr,
    BuffersAvailable,
    SendDone,
    SendOwnedDone,
    CancelDone,
    Closed,
    Shutdown,
    Abort,
}

/// An operation for the driver to perform. Not `Copy`: [`Op::SendOwned`] hands bytes over.
#[derive(Clone, PartialEq, Eq, Debug)]
#[must_use = "a connection's operations must be performed, or buffers and sockets leak"]
pub enum Op {
    /// (Re)arm the multishot recv / register readable interest.
    ArmRecv,
    /// Send `len` bytes of `buf` starting at `offset`: exactly the unsent rest of one chunk.
    /// The kernel reads `buf` until [`Event::SendDone`].
    Send {
        /// The buffer.
        buf: BufId,
        /// First byte to send.
        offset: u32,
        /// Bytes to send.
        len: u32,
    },
    /// Send `data[offset..]`, bytes the connection made (or shares): the driver owns them
    /// until the send's completion, which hands them back ([`Event::SendOwnedDone`]), so
    /// nothing can touch or free them while the kernel may read them.
    SendOwned {
        /// The bytes, whole.
        data: OutBytes,
        /// First byte to send.
        offset: u32,
    },
    /// The connection is done with this buffer (sent, or dropped on close): return it.
    Recycle(BufId),
    /// The recv ended because the buffer ring (or pool) ran dry and the connection wants to
    /// receive again: deliver [`Event::BuffersAvailable`] once enough buffers are back
    /// ([`Starved`] decides when). Issued once per starvation.
    AwaitBuffers,
    /// Cancel the armed multishot recv. Its completion is [`Event::CancelDone`]; the recv ends
    /// with an event whose `more` is false (usually ECANCELED).
    CancelRecv,
    /// Cancel every in-flight op on the socket (ASYNC_CANCEL with FD | ALL), before closing.
    CancelAll,
    /// Close the socket. Issued once, only when nothing else is in flight.
    Close,
    /// Every op has completed: retire the slot's generation and reuse it. Issued once.
    Free,
}

/// Why the connection closed (or is closing).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CloseReason {
    /// The peer sent EOF and everything was echoed.
    PeerClosed,
    /// Server shutdown; everything received was echoed.
    Shutdown,
    /// A recv failed with this errno; queued data was dropped.
    RecvError(RawErrno),
    /// A send failed with this errno; queued data was dropped.
    SendError(RawErrno),
    /// A receive found the [`ChunkQueues`] table full (possible only with incrementally
    /// consumed buffers, where its size is a margin); queued data was dropped.
    QueueOverflow,
    /// The shutdown's grace period ran out ([`Event::Abort`]); queued data was dropped.
    Aborted,
    /// The protocol asked to close, after what it had written was sent.
    ProtocolClosed,
    /// Nothing was received or sent for the idle timeout; queued data was dropped.
    IdleTimeout,
    /// The protocol left more unconsumed input than its limit; queued data was dropped.
    InputTooLarge,
    /// A partial message was not completed within the message timeout; queued data was
    /// dropped.
    MessageTimeout,
}

impl CloseReason {
    /// True when data may have been dropped (everything but a clean EOF or shutdown).
    pub fn is_fatal(self) -> bool {
        !matches!(
            self,
            CloseReason::PeerClosed | CloseReason::Shutdown | CloseReason::ProtocolClosed
        )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerClosed => f.write_str("peer closed"),
            CloseReason::Shutdown => f.write_str("server shutdown"),
            CloseReason::RecvError(e) => write!(f, "recv failed: {e}"),
            CloseReason::SendError(e) => write!(f, "send failed: {e}"),
            CloseReason::QueueOverflow => {
                f.write_str("the receive queues of this buffer ring are full")
            }
            CloseReason::Aborted => f.write_str("shutdown grace period over"),
            CloseReason::ProtocolClosed => f.write_str("the protocol closed the connection"),
            CloseReason::IdleTimeout => f.write_str("idle timeout"),
            CloseReason::InputTooLarge => f.write_str("unconsumed input over the limit"),
            CloseReason::MessageTimeout => f.write_str("a partial message timed out"),
        }
    }
}

/// An event the connection cannot have been sent: a bug in the driver (or the kernel). The
/// connection is unchanged; if the event carried a buffer the driver still owns it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConnError {
    /// The event is impossible in this state (a completion for an op not in flight, a second
    /// `Opened`, anything after `Freed`).
    Unexpected {
        /// The connection's state.
        state: State,
        /// What arrived.
        event: EventKind,
    },
    /// [`HttpConn::on_event`](crate::httpconn::HttpConn::on_event): the event is impossible in
    /// this phase (a completion of an op not in flight, anything after `Free`).
    UnexpectedHttp {
        /// The connection's phase (`Head`, `Respond`, `Closing`, ...).
        phase: &'static str,
        /// What arrived (`Recv`, `Read`, `SendNotif`, ...).
        event: &'static str,
    },
    /// A send reported more bytes written than it was given.
    SendOverrun {
        /// Bytes reported.
        sent: u32,
        /// Bytes the send was for.
        len: u32,
    },
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Unexpected { state, event } => {
                write!(f, "connection in state {state} cannot receive {event:?}")
            }
            ConnError::UnexpectedHttp { phase, event } => {
                write!(f, "HTTP connection in phase {phase} cannot receive {event}")
            }
            ConnError::SendOverrun { sent, len } => {
                write!(f, "send of {len} bytes reported {sent} written")
            }
        }
    }
}

/// A received buffer's unsent bytes: `buf[offset..offset + len]`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Chunk {
    buf: BufId,
    offset: u32,
    len: u32,
}

/// End of a list, or no node.
const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Node {
    chunk: Chunk,
    /// The next node of the same list (a connection's queue, or the free list).
    next: u32,
}

/// One FIFO of chunks in a [`ChunkQueues`] table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct ChunkList {
    head: u32,
    tail: u32,
    len: u32,
}

impl ChunkList {
    const EMPTY: Self = Self {
        head: NIL,
        tail: NIL,
        len: 0,
    };
}

/// The chunks that every [`EchoConn`] of one buffer ring holds, in one table allocated at
/// construction: each connection's queue is a list threaded through it. Size it to what the
/// ring can hand out: its number of buffers, when each receive holds a whole buffer (see the
/// module docs). Every call on a connection must pass the table its chunks live in.
#[derive(Clone, Debug)]
pub struct ChunkQueues {
    nodes: Vec<Node>,
    free: ChunkList,
}

impl ChunkQueues {
    /// A table of `capacity` chunks, all free.
    ///
    /// # Panics
    /// When `capacity` does not fit below `u32::MAX`.
    pub fn new(capacity: usize) -> Self {
        assert!(capacity < NIL as usize, "chunk table too large");
        let n = capacity as u32;
        let unused = Chunk {
            buf: BufId(0),
            offset: 0,
            len: 0,
        };
        Self {
            nodes: (0..n)
                .map(|i| Node {
                    chunk: unused,
                    next: if i + 1 < n { i + 1 } else { NIL },
                })
                .collect(),
            free: if n == 0 {
                ChunkList::EMPTY
            } else {
                ChunkList {
                    head: 0,
                    tail: n - 1,
                    len: n,
                }
            },
        }
    }

    /// Chunks the table holds at most.
    pub fn capacity(&self) -> usize {
        self.nodes.len()
    }

    /// Chunks held by connections now.
    pub fn in_use(&self) -> usize {
        self.nodes.len() - self.free.len as usize
    }

    fn push_back(&mut self, list: &mut ChunkList, chunk: Chunk) -> bool {
        let mut free = self.free;
        let Some(i) = self.unlink_front(&mut free) else {
            return false;
        };
        self.free = free;
        self.nodes[i as usize].chunk = chunk;
        self.append_node(list, i);
        true
    }

    /// The index of `list`'s first node, unlinked from it (`list` updated).
    fn unlink_front(&self, list: &mut ChunkList) -> Option<u32> {
        let i = list.head;
        if i == NIL {
            return None;
        }
        list.head = self.nodes[i as usize].next;
        list.len -= 1;
        if list.head == NIL {
            list.tail = NIL;
        }
        Some(i)
    }

    fn front(&self, list: &ChunkList) -> Option<Chunk> {
        (list.head != NIL).then(|| self.nodes[list.head as usize].chunk)
    }

    fn front_mut(&mut self, list: &ChunkList) -> Option<&mut Chunk> {
        (list.head != NIL).then(|| &mut self.nodes[list.head as usize].chunk)
    }

    fn pop_front(&mut self, list: &mut ChunkList) -> Option<Chunk> {
        let i = self.unlink_front(list)?;
        let chunk = self.nodes[i as usize].chunk;
        let mut free = self.free;
        self.append_node(&mut free, i);
        self.free = free;
        Some(chunk)
    }

    fn append_node(&mut self, list: &mut ChunkList, i: u32) {
        self.nodes[i as usize].next = NIL;
        if list.tail == NIL {
            list.head = i;
        } else {
            self.nodes[list.tail as usize].next = i;
        }
        list.tail = i;
        list.len += 1;
    }

    /// Moves every node of `list` but the first `keep` (0 or 1) to the end of `to`.
    fn split_off_into(&mut self, list: &mut ChunkList, keep: bool, to: &mut ChunkList) {
        let rest = if keep && list.head != NIL {
            let head = list.head;
            let rest = ChunkList {
                head: self.nodes[head as usize].next,
                tail: if list.len > 1 { list.tail } else { NIL },
                len: list.len - 1,
            };
            self.nodes[head as usize].next = NIL;
            *list = ChunkList {
                head,
                tail: head,
                len: 1,
            };
            rest
        } else {
            core::mem::replace(list, ChunkList::EMPTY)
        };
        if rest.len == 0 {
            return;
        }
        if to.tail == NIL {
            to.head = rest.head;
        } else {
            self.nodes[to.tail as usize].next = rest.head;
        }
        to.tail = rest.tail;
        to.len += rest.len;
    }

    fn iter<'a>(&'a self, list: &ChunkList) -> impl Iterator<Item = Chunk> + 'a {
        let mut i = list.head;
        core::iter::from_fn(move || {
            if i == NIL {
                return None;
            }
            let node = self.nodes[i as usize];
            i = node.next;
            Some(node.chunk)
        })
    }
}

/// The connections of one table waiting for a provided buffer ring (or pool) to refill after
/// [`Op::AwaitBuffers`], each once, oldest first. Allocated at construction for a table of
/// `slots` connections; a connection freed and reused while it waits leaves one entry, for
/// its newest incarnation (the driver's generation check skips a stale one).
#[derive(Clone, Debug)]
pub struct Starved {
    /// Per slot: the token of the incarnation that waits.
    waiting: Vec<Option<Token>>,
    /// Slots in the order they began waiting.
    order: Vec<Slot>,
}

impl Starved {
    /// For a table of `slots` connections.
    pub fn new(slots: usize) -> Self {
        Self {
            waiting: alloc::vec![None; slots],
            order: Vec::with_capacity(slots),
        }
    }

    /// The connection `token` names performed [`Op::AwaitBuffers`].
    ///
    /// # Panics
    /// When the token's slot is outside the table: a caller bug.
    pub fn wait(&mut self, token: Token) {
        let entry = &mut self.waiting[token.slot.0 as usize];
        if entry.is_none() {
            self.order.push(token.slot);
        }
        *entry = Some(token);
    }

    /// Connections waiting.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when nobody waits.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// `ready` is the ring's (or pool's) `can_rearm()`: when true, every waiting connection
    /// is moved to `out` (cleared first), oldest first, to be delivered
    /// [`Event::BuffersAvailable`]. Waking all at once follows liburing's proxy example: the
    /// ring waits until enough buffers are back, then every starved receive is re-armed.
    pub fn wake(&mut self, ready: bool, out: &mut Vec<Token>) {
        out.clear();
        if !ready {
            return;
        }
        for slot in self.order.drain(..) {
            if let Some(token) = self.waiting[slot.0 as usize].take() {
                out.push(token);
            }
        }
    }
}

/// A connection's state machine as a worker loop drives it: events in ([`Event`]), operations
/// out ([`Op`]), chunks of received bytes held in the worker's [`ChunkQueues`]. [`EchoConn`]
/// is one; `ringwork_sys::worker` runs any of them on io_uring or epoll, performing the
/// operations and feeding back their completions, and frees the connection at [`Op::Free`].
///
/// The contract the loop relies on: after each [`StreamMachine::on_event`], it polls
/// [`StreamMachine::poll_op`] until `None` before the next event; [`Op::Free`] is the last
/// operation and comes only once nothing of the connection is in flight.
pub trait StreamMachine {
    /// Feeds one event. An error is a driver bug the machine refuses to act on (an event
    /// that cannot happen in its state); the loop logs it and carries on.
    fn on_event(&mut self, queues: &mut ChunkQueues, event: Event) -> Result<(), ConnError>;

    /// The next operation to perform, if any.
    fn poll_op(&mut self, queues: &mut ChunkQueues) -> Option<Op>;

    /// Why the connection is closing, once it is (for a debug log line).
    fn close_reason(&self) -> Option<CloseReason> {
        None
    }

    /// True when the machine reads what it receives: the loop then calls
    /// [`StreamMachine::on_received`] for each [`Event::Recv`], with the bytes. False (the
    /// default): the bytes stay in their buffer, named by id (an echo sends them back as
    /// they are).
    const READS_BYTES: bool = false;

    /// An [`Event::Recv`] with its bytes (`bytes` is `buf[offset..offset + len]`), when
    /// [`StreamMachine::READS_BYTES`]. The bytes can be read only during this call: the
    /// buffer is the ring's, and goes back at the [`Op::Recycle`] the machine asks for.
    fn on_received(
        &mut self,
        queues: &mut ChunkQueues,
        event: Event,
        bytes: &[u8],
    ) -> Result<(), ConnError> {
        let _ = bytes;
        self.on_event(queues, event)
    }

    /// The time, in milliseconds on the loop's clock, before each time the connection is
    /// driven (a machine with timeouts keeps it; the default ignores it).
    fn set_now(&mut self, now_ms: u64) {
        let _ = now_ms;
    }

    /// When the machine next needs [`StreamMachine::on_deadline`], on the loop's clock; None
    /// (the default): never.
    fn deadline_ms(&self) -> Option<u64> {
        None
    }

    /// Its deadline has come (the time was given by [`StreamMachine::set_now`] just before);
    /// poll the operations after it as after an event.
    fn on_deadline(&mut self, queues: &mut ChunkQueues) {
        let _ = queues;
    }
}

impl StreamMachine for EchoConn {
    fn on_event(&mut self, queues: &mut ChunkQueues, event: Event) -> Result<(), ConnError> {
        EchoConn::on_event(self, queues, event)
    }

    fn poll_op(&mut self, queues: &mut ChunkQueues) -> Option<Op> {
        EchoConn::poll_op(self, queues)
    }

    fn close_reason(&self) -> Option<CloseReason> {
        EchoConn::close_reason(self)
    }
}

/// [`Op`] without its owned send, which [`EchoConn`] never asks for: what an EchoConn queues
/// for [`EchoConn::poll_op`]. A quarter of an `Op`'s size, and a worker's connection table
/// holds one queue per slot.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum EchoOp {
    ArmRecv,
    Send { buf: BufId, offset: u32, len: u32 },
    Recycle(BufId),
    AwaitBuffers,
    CancelRecv,
    CancelAll,
    Close,
    Free,
}

impl From<EchoOp> for Op {
    fn from(op: EchoOp) -> Op {
        match op {
            EchoOp::ArmRecv => Op::ArmRecv,
            EchoOp::Send { buf, offset, len } => Op::Send { buf, offset, len },
            EchoOp::Recycle(buf) => Op::Recycle(buf),
            EchoOp::AwaitBuffers => Op::AwaitBuffers,
            EchoOp::CancelRecv => Op::CancelRecv,
            EchoOp::CancelAll => Op::CancelAll,
            EchoOp::Close => Op::Close,
            EchoOp::Free => Op::Free,
        }
    }
}

/// One echo connection. See the module docs. Not `Clone`: its queue lives in a
/// [`ChunkQueues`] table, which a copy would share.
///
/// A driver feeds it what the kernel reported and performs what it asks for:
///
/// ```
/// use ringwork_core::buf::BufId;
/// use ringwork_core::conn::{ChunkQueues, Config, EchoConn, Event, Op};
///
/// let mut queues = ChunkQueues::new(16); // shared by every connection of a worker
/// let mut conn = EchoConn::new(Config::default());
/// let mut ops = |conn: &mut EchoConn, q: &mut ChunkQueues| {
///     std::iter::from_fn(|| conn.poll_op(q)).collect::<Vec<_>>()
/// };
/// conn.on_event(&mut queues, Event::Opened)?;
/// assert_eq!(ops(&mut conn, &mut queues), [Op::ArmRecv]);
/// // 5 bytes arrived in provided buffer 3, the multishot receive still armed:
/// conn.on_event(&mut queues, Event::Recv { buf: BufId(3), offset: 0, len: 5, more: true })?;
/// assert_eq!(ops(&mut conn, &mut queues), [Op::Send { buf: BufId(3), offset: 0, len: 5 }]);
/// // Sent in full: the buffer goes back to the ring.
/// conn.on_event(&mut queues, Event::SendDone { res: Ok(5) })?;
/// assert_eq!(ops(&mut conn, &mut queues), [Op::Recycle(BufId(3))]);
/// # Ok::<(), ringwork_core::conn::ConnError>(())
/// ```
#[derive(Debug)]
pub struct EchoConn {
    state: State,
    cfg: Config,
    /// Chunks in arrival order, in the ring's [`ChunkQueues`]; the head is the one being sent
    /// when `send_in_flight`.
    queue: ChunkList,
    /// Chunks dropped by a failure or abort, recycled by [`EchoConn::poll_op`] before the
    /// other operations.
    dropping: ChunkList,
    /// Operations for [`EchoConn::poll_op`], in order.
    ops: ArrayVec<EchoOp, MAX_PENDING_OPS>,
    /// A multishot recv is armed (its last event carried `more`).
    recv_armed: bool,
    /// A cancel targeting the armed recv has been issued; cleared when the recv ends.
    recv_cancel_pending: bool,
    /// An ENOBUFS ended the recv; re-arm only after `BuffersAvailable`.
    waiting_for_buffers: bool,
    /// The queue reached `max_queued`; cleared when it drains to half.
    backpressure: bool,
    send_in_flight: bool,
    /// Cancel requests issued whose own completion has not arrived.
    cancels_in_flight: u32,
    close_in_flight: bool,
    reason: Option<CloseReason>,
    bytes_received: u64,
    bytes_sent: u64,
}

impl EchoConn {
    /// A connection in [`State::Idle`].
    ///
    /// # Panics
    /// When `cfg.max_queued` is 0: a caller bug.
    pub fn new(cfg: Config) -> Self {
        assert!(cfg.max_queued >= 1, "max_queued must be at least 1");
        Self {
            state: State::Idle,
            cfg,
            queue: ChunkList::EMPTY,
            dropping: ChunkList::EMPTY,
            ops: ArrayVec::new(),
            recv_armed: false,
            recv_cancel_pending: false,
            waiting_for_buffers: false,
            backpressure: false,
            send_in_flight: false,
            cancels_in_flight: 0,
            close_in_flight: false,
            reason: None,
            bytes_received: 0,
            bytes_sent: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Operations issued whose completion has not arrived: the armed recv, the send, cancel
    /// requests and the close. [`Op::Free`] comes only after this is zero.
    pub fn in_flight(&self) -> u32 {
        u32::from(self.recv_armed)
            + u32::from(self.send_in_flight)
            + self.cancels_in_flight
            + u32::from(self.close_in_flight)
    }

    /// Chunks held for sending (including the one being sent).
    pub fn queued_buffers(&self) -> usize {
        self.queue.len as usize
    }

    /// Unsent bytes held.
    pub fn queued_bytes(&self, queues: &ChunkQueues) -> u64 {
        queues.iter(&self.queue).map(|c| u64::from(c.len)).sum()
    }

    /// Bytes received so far.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// Bytes the kernel reported sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Why the connection is closing, once it is.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.reason
    }

    /// True while the recv is armed (the driver may see receive events).
    pub fn recv_armed(&self) -> bool {
        self.recv_armed
    }

    fn set_state(&mut self, new: State) {
        #[cfg(test)]
        if self.state != new {
            std::eprintln!("conn: {}=>{}", self.state, new);
        }
        self.state = new;
    }

    /// The next operation to perform, if any: poll until `None` after every event, before
    /// the next one. `queues` is the table the connection's chunks live in.
    #[must_use]
    pub fn poll_op(&mut self, queues: &mut ChunkQueues) -> Option<Op> {
        if let Some(chunk) = queues.pop_front(&mut self.dropping) {
            return Some(Op::Recycle(chunk.buf));
        }
        (!self.ops.is_empty()).then(|| self.ops.remove(0).into())
    }

    fn push(&mut self, op: EchoOp) {
        // Capacity: an event queues at most a recycle, a send, an AwaitBuffers or a recv
        // arm or cancel, a CancelAll and a Close or Free, and the driver polls them all
        // before the next event.
        self.ops.push(op);
    }

    /// Feeds one event; then poll the operations it calls for with [`EchoConn::poll_op`].
    /// `queues` is the table of the ring the connection receives from.
    ///
    /// The machine never produces operations on its own.
    pub fn on_event(&mut self, queues: &mut ChunkQueues, ev: Event) -> Result<(), ConnError> {
        use State::*;
        match (self.state, ev) {
            (Idle, Event::Opened) => self.set_state(Open),
            // Never opened: nothing is in flight, so draining closes at once.
            (Idle, Event::Shutdown) => self.drain(CloseReason::Shutdown),
            (Idle, Event::Abort) => self.drain(CloseReason::Aborted),
            // Harmless everywhere: drivers may broadcast it.
            (_, Event::BuffersAvailable) => self.waiting_for_buffers = false,

            (
                Open | Draining,
                Event::Recv {
                    buf,
                    offset,
                    len,
                    more,
                },
            ) if self.recv_armed => {
                self.recv_event(more);
                // Queued also while a backpressure or shutdown cancel is in flight: the bytes
                // left the socket, so they are echoed.
                self.queue_received(queues, Chunk { buf, offset, len });
            }
            // After a fatal error nothing more is echoed.
            (Closing, Event::Recv { buf, len, more, .. }) if self.recv_armed => {
                self.recv_event(more);
                self.bytes_received += u64::from(len);
                self.push(EchoOp::Recycle(buf));
            }

            (Open | Draining | Closing, Event::RecvEof { more }) if self.recv_armed => {
                self.recv_event(more);
                // Half-close: echo what we hold, then close. An EOF with `more` still set is
                // not expected; the reconcile step cancels that recv.
                if self.state == Open {
                    self.drain(CloseReason::PeerClosed);
                }
            }

            (Open | Draining | Closing, Event::RecvErr { errno, more }) if self.recv_armed => {
                self.recv_failed(queues, errno, more);
            }

            (Open | Draining | Closing, Event::SendDone { res }) if self.send_in_flight => {
                self.send_done(queues, res)?;
            }

            (Open | Draining | Closing, Event::CancelDone) if self.cancels_in_flight > 0 => {
                self.cancels_in_flight -= 1;
            }

            (CloseSent, Event::Closed) => {
                self.close_in_flight = false;
                self.set_state(Freed);
                debug_assert!(self.queue.len == 0 && self.dropping.len == 0);
                self.push(EchoOp::Free);
            }

            (Open, Event::Shutdown) => self.drain(CloseReason::Shutdown),
            // Already on the way out.
            (Draining | Closing | CloseSent | Freed, Event::Shutdown) => {}

            // Forced: whatever is queued is dropped and whatever is in flight cancelled, also
            // when a drain or an earlier failure already cancelled some of it.
            (Open | Draining | Closing, Event::Abort) => self.abort(queues),
            // The close is in flight: nothing else is.
            (CloseSent, Event::Abort) => {}

            // A completion for nothing in flight, a second Opened, anything after Freed.
            (state, ev) => {
                return Err(ConnError::Unexpected {
                    state,
                    event: ev.kind(),
                })
            }
        }
        self.reconcile(queues);
        Ok(())
    }

    /// An armed recv delivered `chunk` to an open or draining connection: queue it for
    /// echoing.
    fn queue_received(&mut self, queues: &mut ChunkQueues, chunk: Chunk) {
        self.bytes_received += u64::from(chunk.len);
        if chunk.len == 0 {
            // Nothing to echo (a driver reports EOF as RecvEof).
            self.push(EchoOp::Recycle(chunk.buf));
        } else if !queues.push_back(&mut self.queue, chunk) {
            // Only with a table smaller than the ring can deliver: fail closed rather than
            // drop bytes.
            self.push(EchoOp::Recycle(chunk.buf));
            self.fail(queues, CloseReason::QueueOverflow);
        }
    }

    /// The armed recv reported `errno`: wait for buffers, retry, or fail, by errno.
    fn recv_failed(&mut self, queues: &mut ChunkQueues, errno: RawErrno, more: bool) {
        // Read before `recv_event` clears it: was this errno our own cancel's?
        let cancelled_by_us = self.recv_cancel_pending;
        self.recv_event(more);
        match errno {
            // The ring ran dry (not fatal). If the recv ended, wait for buffers; only an open
            // connection wants to receive again.
            RawErrno::NOBUFS => {
                if !more && !self.waiting_for_buffers {
                    self.waiting_for_buffers = true;
                    if self.state == State::Open {
                        self.push(EchoOp::AwaitBuffers);
                    }
                }
            }
            // Retryable; re-armed by the reconcile step if the recv ended.
            RawErrno::AGAIN | RawErrno::INTR => {}
            // Our own cancel (backpressure, shutdown, close or abort).
            RawErrno::CANCELED if cancelled_by_us => {}
            // Already closing: one error is enough.
            _ if self.state == State::Closing => {}
            other => self.fail(queues, CloseReason::RecvError(other)),
        }
    }

    /// The one send in flight (of the queue's head) completed with `res`: recycle the head
    /// when it is done with, shorten it after a short send, or fail. Called only while
    /// `send_in_flight`.
    fn send_done(
        &mut self,
        queues: &mut ChunkQueues,
        res: Result<u32, RawErrno>,
    ) -> Result<(), ConnError> {
        let Some(head) = queues.front(&self.queue) else {
            // Guard: `send_in_flight` (checked by the caller's arm).
            unreachable!("a send in flight names the queue's head (reconcile)")
        };
        match res {
            Ok(n) if n > head.len => {
                return Err(ConnError::SendOverrun {
                    sent: n,
                    len: head.len,
                })
            }
            Ok(n) => {
                self.send_in_flight = false;
                self.bytes_sent += u64::from(n);
                if self.state == State::Closing || n == head.len {
                    // Sent, or (closing) the kernel is done with the buffer and the rest is
                    // dropped.
                    queues.pop_front(&mut self.queue);
                    self.push(EchoOp::Recycle(head.buf));
                } else if let Some(rest) = queues.front_mut(&self.queue) {
                    // Short send (resubmit exactly the rest): the reconcile step does.
                    rest.offset += n;
                    rest.len -= n;
                }
            }
            Err(e) => {
                self.send_in_flight = false;
                if self.state == State::Closing {
                    queues.pop_front(&mut self.queue);
                    self.push(EchoOp::Recycle(head.buf));
                } else if !matches!(e, RawErrno::AGAIN | RawErrno::INTR) {
                    self.fail(queues, CloseReason::SendError(e));
                }
                // EAGAIN / EINTR: nothing was written; the reconcile step resubmits.
            }
        }
        Ok(())
    }

    /// Bookkeeping common to every receive event: without `more` the recv is gone (a
    /// multishot request ends with its first CQE without F_MORE), and so is any cancel's
    /// target.
    fn recv_event(&mut self, more: bool) {
        if !more {
            self.recv_armed = false;
            self.recv_cancel_pending = false;
        }
    }

    /// Stop receiving and flush; [`EchoConn::reconcile`] cancels the recv and closes when done.
    fn drain(&mut self, reason: CloseReason) {
        self.reason.get_or_insert(reason);
        self.set_state(State::Draining);
    }

    /// Drops the queue, except the head while a send names it: the kernel may still read it
    /// (ownership comes back only with the CQE); it is recycled when the send completes.
    fn drop_queue(&mut self, queues: &mut ChunkQueues) {
        queues.split_off_into(&mut self.queue, self.send_in_flight, &mut self.dropping);
    }

    /// A fatal error: drop queued data and cancel what is in flight (close(2) would not);
    /// [`EchoConn::reconcile`] closes once nothing is.
    fn fail(&mut self, queues: &mut ChunkQueues, reason: CloseReason) {
        self.reason = Some(reason);
        self.set_state(State::Closing);
        self.drop_queue(queues);
        if self.send_in_flight || (self.recv_armed && !self.recv_cancel_pending) {
            self.push(EchoOp::CancelAll);
            self.cancels_in_flight += 1;
            self.recv_cancel_pending |= self.recv_armed;
        }
    }

    /// The grace period is over: as [`EchoConn::fail`], but the cancel goes out whenever a
    /// recv or send is in flight, whether or not one was already asked for (the one before
    /// may have been a recv-only cancel, or a peer that never reads holds the send).
    fn abort(&mut self, queues: &mut ChunkQueues) {
        if !self.reason.is_some_and(CloseReason::is_fatal) {
            self.reason = Some(CloseReason::Aborted);
        }
        self.set_state(State::Closing);
        self.drop_queue(queues);
        if self.send_in_flight || self.recv_armed {
            self.push(EchoOp::CancelAll);
            self.cancels_in_flight += 1;
            self.recv_cancel_pending |= self.recv_armed;
        }
    }

    /// Derives the operations the new state calls for: send the head, arm or cancel the recv,
    /// close when nothing is left in flight.
    fn reconcile(&mut self, queues: &ChunkQueues) {
        match self.state {
            State::Open | State::Draining => {
                if !self.send_in_flight {
                    if let Some(head) = queues.front(&self.queue) {
                        // One send at a time, exactly the unsent rest.
                        self.push(EchoOp::Send {
                            buf: head.buf,
                            offset: head.offset,
                            len: head.len,
                        });
                        self.send_in_flight = true;
                    }
                }
                let queued = self.queue.len as usize;
                if queued >= self.cfg.max_queued {
                    self.backpressure = true;
                } else if queued <= self.cfg.max_queued / 2 {
                    self.backpressure = false;
                }
                let wants_recv =
                    self.state == State::Open && !self.backpressure && !self.waiting_for_buffers;
                // No re-arm while a cancel is in flight: it was submitted before the new recv
                // and could hit it.
                if wants_recv && !self.recv_armed && self.cancels_in_flight == 0 {
                    self.push(EchoOp::ArmRecv);
                    self.recv_armed = true;
                } else if !wants_recv && self.recv_armed && !self.recv_cancel_pending {
                    self.push(EchoOp::CancelRecv);
                    self.cancels_in_flight += 1;
                    self.recv_cancel_pending = true;
                }
                if self.state == State::Draining && self.queue.len == 0 && self.in_flight() == 0 {
                    self.close();
                }
            }
            // Close only after every cancelled op has reported (the socket must outlive
            // them, or a reused descriptor number could receive their effects).
            State::Closing if self.in_flight() == 0 => self.close(),
            _ => {}
        }
    }

    fn close(&mut self) {
        debug_assert_eq!(
            self.queue.len, 0,
            "every chunk recycled or dropped before close"
        );
        self.push(EchoOp::Close);
        self.close_in_flight = true;
        self.set_state(State::CloseSent);
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::vec;
    use std::vec::Vec;

    const NOBUFS: RawErrno = RawErrno::NOBUFS;

    /// A connection and the chunk table of its ring (room for 64 chunks).
    struct Fx {
        c: EchoConn,
        q: ChunkQueues,
    }

    impl core::ops::Deref for Fx {
        type Target = EchoConn;
        fn deref(&self) -> &EchoConn {
            &self.c
        }
    }

    impl Fx {
        fn new(cfg: Config) -> Self {
            Self::with_table(cfg, 64)
        }

        fn with_table(cfg: Config, chunks: usize) -> Self {
            Self {
                c: EchoConn::new(cfg),
                q: ChunkQueues::new(chunks),
            }
        }

        /// Feeds `ev`; its operations, polled to the end.
        fn try_step(&mut self, ev: Event) -> Result<Vec<Op>, ConnError> {
            self.c.on_event(&mut self.q, ev)?;
            Ok(core::iter::from_fn(|| self.c.poll_op(&mut self.q)).collect())
        }

        /// Feeds `ev`, which must be legal, and returns its operations.
        fn step(&mut self, ev: Event) -> Vec<Op> {
            self.try_step(ev.clone())
                .unwrap_or_else(|e| panic!("{ev:?} refused: {e}"))
        }
    }

    fn recv(buf: u16, len: u32, more: bool) -> Event {
        Event::Recv {
            buf: BufId(buf),
            offset: 0,
            len,
            more,
        }
    }

    fn send(buf: u16, offset: u32, len: u32) -> Op {
        Op::Send {
            buf: BufId(buf),
            offset,
            len,
        }
    }

    fn sent(n: u32) -> Event {
        Event::SendDone { res: Ok(n) }
    }

    /// Fixture: a connection opened with its recv armed.
    fn open(max_queued: usize) -> Fx {
        let mut c = Fx::new(Config { max_queued });
        assert_eq!(c.step(Event::Opened), [Op::ArmRecv]);
        assert_eq!(c.state(), State::Open);
        c
    }

    /// A worker's connection table holds an EchoConn per slot, 20,000 by default: owned sends
    /// (a larger `Op`) must not grow it.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn an_echo_connection_stays_168_bytes() {
        assert!(core::mem::size_of::<EchoConn>() <= 168);
    }

    // ---- Idle -------------------------------------------------------------------------------

    #[test]
    fn idle_only_accepts_opened_or_shutdown() {
        let mut c = Fx::new(Config::default());
        assert_eq!(
            c.try_step(sent(1)),
            Err(ConnError::Unexpected {
                state: State::Idle,
                event: EventKind::SendDone
            })
        );
        assert_eq!(c.step(Event::Shutdown), [Op::Close]);
        assert_eq!(c.step(Event::Closed), [Op::Free]);
        assert_eq!(c.state(), State::Freed);
    }

    #[test]
    #[should_panic(expected = "max_queued")]
    fn config_needs_a_queue() {
        let _ = EchoConn::new(Config { max_queued: 0 });
    }

    // ---- Open: rule 1, echo exactly once and in order -----------------------------------------

    #[test]
    fn echo_in_order_one_send_at_a_time() {
        let mut c = open(8);
        assert_eq!(c.step(recv(1, 10, true)), [send(1, 0, 10)]);
        // A second buffer queues behind the in-flight send (PITFALLS.md, "Short sends happen;
        // overlapping sends reorder").
        assert_eq!(c.step(recv(2, 20, true)), []);
        assert_eq!(c.queued_bytes(&c.q), 30);
        assert_eq!(c.step(sent(10)), [Op::Recycle(BufId(1)), send(2, 0, 20)]);
        assert_eq!(c.step(sent(20)), [Op::Recycle(BufId(2))]);
        assert_eq!((c.bytes_received(), c.bytes_sent()), (30, 30));
        assert_eq!(c.in_flight(), 1, "only the recv");
    }

    #[test]
    fn short_send_resubmits_exactly_the_rest() {
        let mut c = open(8);
        assert_eq!(c.step(recv(4, 100, true)), [send(4, 0, 100)]);
        assert_eq!(c.step(sent(30)), [send(4, 30, 70)]);
        assert_eq!(c.step(sent(0)), [send(4, 30, 70)]);
        assert_eq!(
            c.step(Event::SendDone {
                res: Err(RawErrno::AGAIN)
            }),
            [send(4, 30, 70)]
        );
        assert_eq!(
            c.try_step(sent(71)),
            Err(ConnError::SendOverrun { sent: 71, len: 70 })
        );
        assert_eq!(c.step(sent(70)), [Op::Recycle(BufId(4))]);
    }

    // ---- Open: rule 2, multishot re-arm ------------------------------------------------------

    #[test]
    fn multishot_rearms_only_without_more() {
        let mut c = open(8);
        // Final CQE of the multishot (e.g. CQ overflow ended it): re-arm.
        assert_eq!(c.step(recv(1, 5, false)), [send(1, 0, 5), Op::ArmRecv]);
        // An error that still carries F_MORE: the recv is still armed, do nothing.
        assert_eq!(
            c.step(Event::RecvErr {
                errno: RawErrno::AGAIN,
                more: true
            }),
            []
        );
        assert_eq!(
            c.step(Event::RecvErr {
                errno: RawErrno::INTR,
                more: false
            }),
            [Op::ArmRecv]
        );
        // A recv event with nothing armed is a driver bug, and leaves the buffer with it.
        let mut idle = open(8);
        idle.step(Event::RecvErr {
            errno: NOBUFS,
            more: false,
        });
        assert!(matches!(
            idle.try_step(recv(9, 1, true)),
            Err(ConnError::Unexpected {
                event: EventKind::Recv,
                ..
            })
        ));
    }

    // ---- Open: rule 3, ENOBUFS -------------------------------------------------------------

    #[test]
    fn enobufs_waits_for_buffers_then_rearms() {
        let mut c = open(8);
        assert_eq!(
            c.step(Event::RecvErr {
                errno: NOBUFS,
                more: false
            }),
            [Op::AwaitBuffers]
        );
        assert_eq!(c.state(), State::Open, "ENOBUFS is not fatal");
        assert_eq!(c.in_flight(), 0);
        assert_eq!(c.step(Event::BuffersAvailable), [Op::ArmRecv]);
        // With F_MORE the recv is still armed: no re-arm, and BuffersAvailable changes nothing.
        assert_eq!(
            c.step(Event::RecvErr {
                errno: NOBUFS,
                more: true
            }),
            []
        );
        assert_eq!(c.step(Event::BuffersAvailable), []);
        assert_eq!(c.in_flight(), 1);
    }

    // ---- Open: rule 4, backpressure ---------------------------------------------------------

    #[test]
    fn backpressure_cancels_and_resumes_at_half() {
        let mut c = open(4);
        c.step(recv(0, 1, true));
        c.step(recv(1, 1, true));
        c.step(recv(2, 1, true));
        assert_eq!(c.step(recv(3, 1, true)), [Op::CancelRecv]);
        // Data already posted before the cancel took effect is queued, not dropped.
        assert_eq!(c.step(recv(4, 1, true)), []);
        assert_eq!(c.queued_buffers(), 5);
        assert_eq!(
            c.step(Event::RecvErr {
                errno: RawErrno::CANCELED,
                more: false
            }),
            []
        );
        assert_eq!(c.step(Event::CancelDone), []);
        assert_eq!(c.in_flight(), 1, "just the send");
        c.step(sent(1));
        c.step(sent(1));
        // Three left: above half of four, still paused.
        assert_eq!(
            c.step(sent(1)),
            [Op::Recycle(BufId(2)), send(3, 0, 1), Op::ArmRecv]
        );
        assert_eq!(c.queued_buffers(), 2);
    }

    #[test]
    fn no_rearm_while_a_cancel_is_in_flight() {
        let mut c = open(2);
        c.step(recv(0, 1, true));
        assert_eq!(c.step(recv(1, 1, false)), []);
        // The recv ended on its own; no cancel needed, and it re-arms on drain.
        assert_eq!(
            c.step(sent(1)),
            [Op::Recycle(BufId(0)), send(1, 0, 1), Op::ArmRecv]
        );
        let mut c = open(2);
        c.step(recv(0, 1, true));
        assert_eq!(c.step(recv(1, 1, true)), [Op::CancelRecv]);
        c.step(Event::RecvErr {
            errno: RawErrno::CANCELED,
            more: false,
        });
        c.step(sent(1));
        // Drained to half, but the cancel's own CQE is outstanding: wait for it.
        assert_eq!(c.step(sent(1)), [Op::Recycle(BufId(1))]);
        assert_eq!(c.step(Event::CancelDone), [Op::ArmRecv]);
    }

    #[test]
    fn late_receives_beyond_any_fixed_queue_are_kept_in_order() {
        let mut c = open(2);
        c.step(recv(0, 1, true));
        assert_eq!(c.step(recv(1, 1, true)), [Op::CancelRecv]);
        // The kernel posts a burst before it processes the cancel: all kept, none dropped.
        for i in 2..42 {
            assert_eq!(c.step(recv(i, 1, true)), []);
        }
        assert_eq!(c.queued_buffers(), 42);
        assert_eq!(c.q.in_use(), 42);
        c.step(Event::RecvErr {
            errno: RawErrno::CANCELED,
            more: false,
        });
        c.step(Event::CancelDone);
        // Echoed in arrival order, one send at a time; receiving resumes at half of two.
        for i in 0..41 {
            let ops = c.step(sent(1));
            assert_eq!(ops[..2], [Op::Recycle(BufId(i)), send(i + 1, 0, 1)]);
            assert_eq!(ops.len(), if i == 40 { 3 } else { 2 }, "{ops:?}");
        }
        assert!(c.recv_armed());
        assert_eq!(c.step(sent(1)), [Op::Recycle(BufId(41))]);
        assert_eq!(c.q.in_use(), 0);
    }

    #[test]
    fn a_full_table_fails_closed() {
        let mut c = Fx::with_table(Config::default(), 3);
        c.step(Event::Opened);
        assert_eq!(c.step(recv(0, 1, true)), [send(0, 0, 1)]);
        c.step(recv(1, 1, true));
        c.step(recv(2, 1, true));
        // Only a table smaller than what the ring can hand out fills.
        let ops = c.step(recv(3, 1, true));
        assert_eq!(c.close_reason(), Some(CloseReason::QueueOverflow));
        // Everything but the buffer the in-flight send names is recycled at once.
        assert_eq!(
            ops,
            [
                Op::Recycle(BufId(1)),
                Op::Recycle(BufId(2)),
                Op::Recycle(BufId(3)),
                Op::CancelAll
            ]
        );
        assert_eq!(c.state(), State::Closing);
        assert_eq!(
            c.step(Event::SendDone {
                res: Err(RawErrno::CANCELED)
            }),
            [Op::Recycle(BufId(0))]
        );
        assert_eq!(c.q.in_use(), 0);
    }

    // ---- Draining: rule 5 (EOF) and rule 7 (Shutdown) ------------------------------------------

    #[test]
    fn eof_flushes_then_closes() {
        let mut c = open(8);
        c.step(recv(1, 10, true));
        c.step(recv(2, 10, true));
        assert_eq!(c.step(Event::RecvEof { more: false }), []);
        assert_eq!(c.state(), State::Draining);
        assert_eq!(c.step(sent(10)), [Op::Recycle(BufId(1)), send(2, 0, 10)]);
        assert_eq!(c.step(sent(10)), [Op::Recycle(BufId(2)), Op::Close]);
        assert_eq!(c.close_reason(), Some(CloseReason::PeerClosed));
        assert_eq!(c.step(Event::Closed), [Op::Free]);
    }

    #[test]
    fn shutdown_cancels_recv_flushes_then_closes() {
        let mut c = open(8);
        c.step(recv(1, 10, true));
        assert_eq!(c.step(Event::Shutdown), [Op::CancelRecv]);
        // Arrived before the cancel: echoed.
        assert_eq!(c.step(recv(2, 5, true)), []);
        assert_eq!(c.step(sent(10)), [Op::Recycle(BufId(1)), send(2, 0, 5)]);
        c.step(Event::RecvErr {
            errno: RawErrno::CANCELED,
            more: false,
        });
        assert_eq!(c.step(sent(5)), [Op::Recycle(BufId(2))]);
        assert_eq!(c.step(Event::CancelDone), [Op::Close]);
        assert_eq!(c.close_reason(), Some(CloseReason::Shutdown));
        assert_eq!(c.step(Event::Shutdown), [], "a second shutdown is harmless");
        assert_eq!(c.step(Event::Closed), [Op::Free]);
    }

    // ---- Closing: rule 5 (errors) and rule 6 ---------------------------------------------------

    #[test]
    fn reset_drops_queue_cancels_then_closes() {
        let mut c = open(8);
        c.step(recv(1, 10, true));
        c.step(recv(2, 10, true));
        c.step(recv(3, 10, true));
        let ops = c.step(Event::RecvErr {
            errno: RawErrno::CONNRESET,
            more: false,
        });
        // Buffer 1 is named by the in-flight send: the kernel may still read it (PITFALLS.md, "A
        // buffer is the kernel's until its CQE").
        assert_eq!(
            ops,
            [Op::Recycle(BufId(2)), Op::Recycle(BufId(3)), Op::CancelAll]
        );
        assert_eq!(c.state(), State::Closing);
        assert_eq!(c.in_flight(), 2, "send and cancel");
        // The cancelled send reports ECANCELED: expected while closing.
        assert_eq!(
            c.step(Event::SendDone {
                res: Err(RawErrno::CANCELED)
            }),
            [Op::Recycle(BufId(1))]
        );
        assert_eq!(c.step(Event::CancelDone), [Op::Close]);
        assert_eq!(c.in_flight(), 1);
        assert!(matches!(
            c.try_step(Event::CancelDone),
            Err(ConnError::Unexpected { .. })
        ));
        assert_eq!(c.step(Event::Closed), [Op::Free]);
        assert_eq!(
            c.close_reason(),
            Some(CloseReason::RecvError(RawErrno::CONNRESET))
        );
    }

    #[test]
    fn send_error_cancels_armed_recv_before_close() {
        let mut c = open(8);
        c.step(recv(1, 10, true));
        c.step(recv(2, 10, true));
        let ops = c.step(Event::SendDone {
            res: Err(RawErrno::PIPE),
        });
        assert_eq!(
            ops,
            [Op::Recycle(BufId(1)), Op::Recycle(BufId(2)), Op::CancelAll]
        );
        // Late data after the error is recycled, not echoed.
        assert_eq!(c.step(recv(3, 4, true)), [Op::Recycle(BufId(3))]);
        assert_eq!(c.step(Event::CancelDone), []);
        assert_eq!(
            c.step(Event::RecvErr {
                errno: RawErrno::CANCELED,
                more: false
            }),
            [Op::Close]
        );
        // Nothing is in flight but the close; Free only after Closed.
        assert!(c.try_step(Event::Opened).is_err());
        assert_eq!(c.step(Event::Closed), [Op::Free]);
        assert!(c.try_step(Event::Closed).is_err(), "never Free twice");
    }

    #[test]
    fn unsolicited_ecanceled_is_fatal() {
        let mut c = open(8);
        let ops = c.step(Event::RecvErr {
            errno: RawErrno::CANCELED,
            more: false,
        });
        assert_eq!(ops, [Op::Close]);
        assert!(c.close_reason().unwrap().is_fatal());
    }

    // ---- Abort: the end of a shutdown's grace period -----------------------------------------

    #[test]
    fn abort_drops_the_queue_cancels_a_stalled_send_and_closes() {
        let mut c = open(8);
        c.step(recv(1, 10, true));
        c.step(recv(2, 10, true));
        c.step(recv(3, 10, true));
        // The drain: the recv is cancelled, but the peer never reads, so the send stalls.
        assert_eq!(c.step(Event::Shutdown), [Op::CancelRecv]);
        c.step(Event::RecvErr {
            errno: RawErrno::CANCELED,
            more: false,
        });
        assert_eq!(c.step(Event::CancelDone), []);
        assert_eq!(c.state(), State::Draining);
        let ops = c.step(Event::Abort);
        assert_eq!(
            ops,
            [Op::Recycle(BufId(2)), Op::Recycle(BufId(3)), Op::CancelAll]
        );
        assert_eq!(c.close_reason(), Some(CloseReason::Aborted));
        assert_eq!(
            c.step(Event::SendDone {
                res: Err(RawErrno::CANCELED)
            }),
            [Op::Recycle(BufId(1))]
        );
        assert_eq!(c.step(Event::CancelDone), [Op::Close]);
        assert_eq!(c.step(Event::Abort), [], "the close is in flight");
        assert_eq!(c.step(Event::Closed), [Op::Free]);
        assert!(c.try_step(Event::Abort).is_err(), "nothing after Free");
    }

    #[test]
    fn abort_cancels_again_what_an_earlier_cancel_may_not_cover() {
        // A drain's recv-only cancel is pending, a send in flight: the abort cancels all.
        let mut c = open(8);
        c.step(recv(1, 10, true));
        assert_eq!(c.step(Event::Shutdown), [Op::CancelRecv]);
        assert_eq!(c.step(Event::Abort), [Op::CancelAll]);
        assert_eq!(c.in_flight(), 4, "recv, send and two cancels");
        // Never opened, or opened and idle: closes at once.
        let mut idle = Fx::new(Config::default());
        assert_eq!(idle.step(Event::Abort), [Op::Close]);
        let mut starved = open(8);
        starved.step(Event::RecvErr {
            errno: NOBUFS,
            more: false,
        });
        assert_eq!(starved.step(Event::Abort), [Op::Close]);
        assert_eq!(starved.close_reason(), Some(CloseReason::Aborted));
    }

    // ---- Starved: who waits for buffers, and when they wake ------------------------------------

    #[test]
    fn starved_connections_wake_together_oldest_first_once_each() {
        use crate::token::{Generation, OpKind};
        let tok = |slot, g| Token::new(OpKind::Recv, Slot(slot), Generation::new(g));
        let mut s = Starved::new(4);
        let mut out = Vec::new();
        s.wait(tok(2, 0));
        s.wait(tok(0, 0));
        s.wait(tok(2, 0));
        // Slot 0 freed and reused while waiting: only its newest incarnation wakes.
        s.wait(tok(0, 1));
        assert_eq!(s.len(), 2);
        s.wake(false, &mut out);
        assert!(out.is_empty() && s.len() == 2, "not ready: nobody wakes");
        s.wake(true, &mut out);
        assert_eq!(out, [tok(2, 0), tok(0, 1)]);
        assert!(s.is_empty());
        s.wake(true, &mut out);
        assert!(out.is_empty());
    }

    proptest! {
        /// Against a model (a list of tokens, one per slot, the newest incarnation, in the
        /// order slots began waiting): a wake when ready hands out exactly that list and
        /// empties the set; when not ready it changes nothing; the set never grows past its
        /// slots, however often a slot is reused while it waits.
        #[test]
        fn starved_matches_a_model(
            ops in proptest::collection::vec((0u32..6, 0u32..4, any::<bool>()), 0..200),
        ) {
            use crate::token::{Generation, OpKind};
            let mut s = Starved::new(6);
            let mut model: Vec<Token> = Vec::new();
            let mut out = Vec::new();
            for (slot, generation, wake) in ops {
                if wake {
                    let ready = generation % 2 == 0;
                    s.wake(ready, &mut out);
                    if ready {
                        prop_assert_eq!(&out, &model);
                        model.clear();
                    } else {
                        prop_assert!(out.is_empty());
                    }
                } else {
                    let t = Token::new(OpKind::Recv, Slot(slot), Generation::new(generation));
                    s.wait(t);
                    match model.iter_mut().find(|m| m.slot == t.slot) {
                        Some(m) => *m = t,
                        None => model.push(t),
                    }
                }
                prop_assert_eq!(s.len(), model.len());
                prop_assert!(s.len() <= 6);
            }
        }
    }

    // ---- The simulated driver --------------------------------------------------------------

    /// One thing the kernel (or peer, or server) may do next; skipped when impossible.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        /// Data arrives in a fresh buffer; `last` ends the multishot.
        Data {
            len: u32,
            last: bool,
        },
        NoBufs {
            more: bool,
        },
        BuffersAvailable,
        /// The send completes with `quarters/4` of its bytes (0 means all).
        SendComplete {
            quarters: u32,
        },
        SendAgain,
        SendFail,
        SendCancelled,
        CancelComplete,
        RecvCancelled,
        Eof,
        Reset,
        Shutdown,
        Abort,
        Closed,
    }

    fn any_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            14 => (1u32..100, proptest::bool::weighted(0.1))
                .prop_map(|(len, last)| Step::Data { len, last }),
            2 => any::<bool>().prop_map(|more| Step::NoBufs { more }),
            2 => Just(Step::BuffersAvailable),
            10 => (0u32..4).prop_map(|quarters| Step::SendComplete { quarters }),
            1 => Just(Step::SendAgain),
            1 => Just(Step::SendFail),
            2 => Just(Step::SendCancelled),
            4 => Just(Step::CancelComplete),
            3 => Just(Step::RecvCancelled),
            1 => Just(Step::Eof),
            1 => Just(Step::Reset),
            1 => Just(Step::Shutdown),
            1 => Just(Step::Abort),
            3 => Just(Step::Closed),
        ]
    }

    /// Buffers in the simulated ring: at most this many are held by the connection, and the
    /// chunk table is sized to it, as drivers size it (so it never fills).
    const RING: usize = 24;

    /// The kernel's view of one socket, checking every op the connection issues.
    #[derive(Default)]
    struct Sim {
        /// Each buffer handed out: its first byte's position in the received stream, where in the
        /// buffer that byte is, and length.
        bufs: HashMap<BufId, (u64, u32, u32)>,
        recycled: HashMap<BufId, u32>,
        next_buf: u16,
        rx: u64,
        tx: u64,
        armed: bool,
        recv_cancel: bool,
        send: Option<(BufId, u32, u32)>,
        send_cancel: bool,
        cancels: u32,
        close_pending: bool,
        closes: u32,
        frees: u32,
        closed: bool,
        peer_eof: bool,
        shutdown: bool,
        aborted: bool,
        /// An ENOBUFS ended the recv and no BuffersAvailable has come since.
        starved: bool,
        /// The connection said AwaitBuffers and no BuffersAvailable has come since.
        awaiting: bool,
        injected_error: bool,
    }

    impl Sim {
        fn held(&self) -> usize {
            self.bufs.len() - self.recycled.len()
        }

        fn deliver(&mut self, c: &mut Fx, ev: Event) {
            let ops = c
                .try_step(ev.clone())
                .unwrap_or_else(|e| panic!("{ev:?} refused: {e}"));
            for op in ops {
                self.perform(c, op);
            }
            let model = u32::from(self.armed)
                + u32::from(self.send.is_some())
                + self.cancels
                + u32::from(self.close_pending);
            assert_eq!(c.in_flight(), model, "in-flight count after {ev:?}");
            assert_eq!(
                c.q.in_use(),
                c.queued_buffers(),
                "chunks leaked in the table"
            );
            // Liveness: an open connection that does not receive waits for something that
            // will come.
            if c.state() == State::Open && !self.armed {
                assert!(
                    self.awaiting || self.send.is_some() || self.cancels > 0,
                    "stuck: not receiving, and waiting for nothing"
                );
            }
        }

        fn perform(&mut self, c: &Fx, op: Op) {
            match op {
                Op::ArmRecv => {
                    assert!(!self.armed, "armed twice");
                    assert!(
                        !self.peer_eof && !self.shutdown && !self.aborted,
                        "re-armed while closing"
                    );
                    assert!(!self.starved, "re-armed before buffers were available");
                    self.armed = true;
                    self.recv_cancel = false;
                }
                Op::SendOwned { .. } => panic!("echo sends only what it received"),
                Op::AwaitBuffers => {
                    assert!(self.starved && !self.armed, "waits for buffers it has");
                    assert!(!self.awaiting, "said AwaitBuffers twice");
                    self.awaiting = true;
                }
                Op::Send { buf, offset, len } => {
                    assert!(self.send.is_none(), "two sends in flight");
                    assert!(
                        !self.recycled.contains_key(&buf),
                        "send of a recycled buffer"
                    );
                    let (_, boff, blen) = self.bufs[&buf];
                    assert!(offset >= boff, "send before the received bytes");
                    assert_eq!(offset + len, boff + blen, "send is the rest of the chunk");
                    assert!(len > 0);
                    self.send = Some((buf, offset, len));
                    self.send_cancel = false;
                }
                Op::Recycle(buf) => {
                    assert!(self.bufs.contains_key(&buf), "recycled an unknown buffer");
                    assert_ne!(self.send.map(|s| s.0), Some(buf), "recycled while sending");
                    *self.recycled.entry(buf).or_default() += 1;
                    assert_eq!(self.recycled[&buf], 1, "recycled twice");
                }
                Op::CancelRecv => {
                    assert!(self.armed);
                    self.cancels += 1;
                    self.recv_cancel = true;
                }
                Op::CancelAll => {
                    self.cancels += 1;
                    self.recv_cancel |= self.armed;
                    self.send_cancel = self.send.is_some();
                }
                Op::Close => {
                    assert_eq!(self.closes, 0, "closed twice");
                    assert!(!self.armed && self.send.is_none() && self.cancels == 0);
                    self.closes += 1;
                    self.close_pending = true;
                }
                Op::Free => {
                    assert!(self.closed && !self.close_pending);
                    assert_eq!(self.frees, 0, "freed twice");
                    assert_eq!(c.state(), State::Freed);
                    self.frees += 1;
                }
            }
        }

        fn recv_ends(&mut self, more: bool) {
            if !more {
                self.armed = false;
                self.recv_cancel = false;
            }
        }

        fn complete_send(&mut self, c: &mut Fx, res: Result<u32, RawErrno>) {
            let (buf, offset, len) = self.send.take().unwrap();
            if let Ok(n) = res {
                assert!(n <= len);
                let (start, boff, _) = self.bufs[&buf];
                assert_eq!(
                    start + u64::from(offset - boff),
                    self.tx,
                    "bytes out of order"
                );
                self.tx += u64::from(n);
            }
            self.deliver(c, Event::SendDone { res });
        }

        /// Plays `step` if the kernel could produce it now.
        fn play(&mut self, c: &mut Fx, step: Step) {
            match step {
                Step::Data { len, last } => {
                    // Also after a cancel, until it lands (RecvCancelled): any number, as
                    // long as the ring has buffers.
                    if !self.armed || self.peer_eof || self.held() >= RING {
                        return;
                    }
                    let buf = BufId(self.next_buf);
                    self.next_buf += 1;
                    // Some slices start inside their buffer, as with incremental consumption.
                    let offset = u32::from(buf.0 % 3) * 100;
                    self.bufs.insert(buf, (self.rx, offset, len));
                    self.rx += u64::from(len);
                    self.recv_ends(!last);
                    self.deliver(
                        c,
                        Event::Recv {
                            buf,
                            offset,
                            len,
                            more: !last,
                        },
                    );
                }
                Step::NoBufs { more } if self.armed => {
                    self.recv_ends(more);
                    self.starved |= !more;
                    self.deliver(
                        c,
                        Event::RecvErr {
                            errno: NOBUFS,
                            more,
                        },
                    );
                }
                Step::BuffersAvailable => {
                    self.starved = false;
                    self.awaiting = false;
                    self.deliver(c, Event::BuffersAvailable);
                }
                Step::SendComplete { quarters } if self.send.is_some() => {
                    let len = self.send.unwrap().2;
                    let n = if quarters == 0 {
                        len
                    } else {
                        len * quarters / 4
                    };
                    self.complete_send(c, Ok(n));
                }
                Step::SendAgain if self.send.is_some() => {
                    self.complete_send(c, Err(RawErrno::AGAIN))
                }
                Step::SendFail if self.send.is_some() => {
                    self.injected_error = true;
                    self.complete_send(c, Err(RawErrno::PIPE));
                }
                Step::SendCancelled if self.send.is_some() && self.send_cancel => {
                    self.complete_send(c, Err(RawErrno::CANCELED))
                }
                Step::CancelComplete if self.cancels > 0 => {
                    self.cancels -= 1;
                    self.deliver(c, Event::CancelDone);
                }
                Step::RecvCancelled if self.armed && self.recv_cancel => {
                    self.recv_ends(false);
                    let ev = Event::RecvErr {
                        errno: RawErrno::CANCELED,
                        more: false,
                    };
                    self.deliver(c, ev);
                }
                Step::Eof if self.armed => {
                    self.peer_eof = true;
                    self.recv_ends(false);
                    self.deliver(c, Event::RecvEof { more: false });
                }
                Step::Reset if self.armed => {
                    self.injected_error = true;
                    self.recv_ends(false);
                    let ev = Event::RecvErr {
                        errno: RawErrno::CONNRESET,
                        more: false,
                    };
                    self.deliver(c, ev);
                }
                Step::Shutdown => {
                    self.shutdown = true;
                    self.deliver(c, Event::Shutdown);
                }
                Step::Abort if c.state() != State::Freed => {
                    // Whatever is queued is dropped.
                    self.aborted = true;
                    self.injected_error = true;
                    self.deliver(c, Event::Abort);
                }
                Step::Closed if self.close_pending => {
                    self.close_pending = false;
                    self.closed = true;
                    self.deliver(c, Event::Closed);
                }
                _ => {}
            }
        }

        /// Shuts down and delivers every outstanding completion until nothing is in flight.
        fn quiesce(&mut self, c: &mut Fx, abort: bool) {
            self.play(c, Step::Shutdown);
            if abort {
                // The grace period runs out with a peer that reads nothing more: sends end
                // only by being cancelled.
                self.play(c, Step::Abort);
            }
            for _ in 0..10_000 {
                let step = if self.send.is_some() && self.aborted {
                    assert!(self.send_cancel, "the abort left a send uncancelled");
                    Step::SendCancelled
                } else if self.send.is_some() {
                    Step::SendComplete { quarters: 0 }
                } else if self.armed {
                    assert!(self.recv_cancel, "the drain left the recv uncancelled");
                    Step::RecvCancelled
                } else if self.cancels > 0 {
                    Step::CancelComplete
                } else if self.close_pending {
                    Step::Closed
                } else {
                    return;
                };
                self.play(c, step);
            }
            panic!("no quiescence");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any kernel-possible script (receives keep landing after a cancel until it does,
        /// as many as the ring has buffers), then a drain, with or without an abort at its
        /// end: bytes echoed exactly once and in order (all of them unless an error or abort
        /// was injected), one send at a time, every buffer recycled exactly once, the chunk
        /// table never full when sized to the ring, AwaitBuffers whenever the recv starved
        /// and is wanted again, never stuck, Close once with nothing in flight, Free exactly
        /// once.
        #[test]
        fn simulated_driver(
            max_queued in 1usize..12,
            steps in proptest::collection::vec(any_step(), 0..300),
            abort_at_end in any::<bool>(),
        ) {
            let mut c = Fx::with_table(Config { max_queued }, RING);
            let mut sim = Sim::default();
            sim.deliver(&mut c, Event::Opened);
            for s in steps {
                sim.play(&mut c, s);
                prop_assert!(c.queued_buffers() <= RING);
            }
            sim.quiesce(&mut c, abort_at_end);

            prop_assert_eq!(c.state(), State::Freed);
            prop_assert_eq!(sim.frees, 1);
            prop_assert_eq!(sim.closes, 1);
            prop_assert_eq!(c.in_flight(), 0);
            for buf in sim.bufs.keys() {
                prop_assert_eq!(sim.recycled.get(buf), Some(&1), "{:?} not recycled", buf);
            }
            prop_assert_eq!(c.bytes_sent(), sim.tx);
            prop_assert_eq!(c.bytes_received(), sim.rx);
            prop_assert_eq!(c.q.in_use(), 0);
            let reason = c.close_reason().unwrap();
            prop_assert_ne!(reason, CloseReason::QueueOverflow, "a table sized to the ring filled");
            if sim.injected_error {
                prop_assert!(sim.tx <= sim.rx);
            } else {
                prop_assert!(!reason.is_fatal(), "{}", reason);
                prop_assert_eq!(sim.tx, sim.rx, "everything echoed");
            }
        }
    }
}
