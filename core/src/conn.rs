//! A connection as a worker loop drives it, sans-IO: [`Event`]s in, [`Op`]s out
//! ([`StreamMachine`]), and [`Starved`], the connections waiting for receive buffers.
//! [`ProtocolConn`](crate::protocol::ProtocolConn) is the machine every stream server here
//! runs (ringwork-echo is `ProtocolConn<Echo>`); the driver feeds it events with
//! [`StreamMachine::on_event`] (a receive with its bytes through
//! [`StreamMachine::on_received`]) and performs the operations it then polls from
//! [`StreamMachine::poll_op`], in order, until `None`. The same machine serves both drivers:
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
//! What a machine must guarantee, and `ProtocolConn` does (each a test there): at most one
//! send in flight (two sends in flight on one stream could go out in either order); a
//! multishot recv re-armed only when its last event lacked IORING_CQE_F_MORE (a multishot
//! request ends with the first CQE without it, whatever its result); ENOBUFS never closes
//! the connection, it waits for buffers ([`Op::AwaitBuffers`]); the socket closed only once
//! nothing is in flight on it, after cancelling what was (close(2) does not cancel io_uring
//! requests, which keep the file alive); every buffer it is handed recycled exactly once,
//! and never while the kernel may still read it (ownership comes back only with the CQE); at
//! the end of a shutdown's grace period [`Event::Abort`] cancels everything and closes.
//!
//! What a machine does not do: own buffer memory or [`crate::buf::Lease`]s (it names
//! [`BufId`]s, offsets and lengths; the driver holds the leases and recycles on
//! [`Op::Recycle`]), build user_data (the driver does, with [`crate::token`]), or decide when
//! a provided ring has enough buffers again ([`Starved`] does, from the ring's or pool's
//! `can_rearm`, and the driver delivers [`Event::BuffersAvailable`]).

use alloc::vec::Vec;
use core::fmt;

use crate::buf::BufId;
use crate::errno::RawErrno;
pub use crate::protocol::OutBytes;
use crate::token::{Slot, Token};

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
    /// The peer sent EOF and everything queued was sent.
    PeerClosed,
    /// Server shutdown; everything queued was sent.
    Shutdown,
    /// A recv failed with this errno; queued data was dropped.
    RecvError(RawErrno),
    /// A send failed with this errno; queued data was dropped.
    SendError(RawErrno),
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
/// out ([`Op`]). [`ProtocolConn`](crate::protocol::ProtocolConn) is one; `ringwork_sys::worker`
/// runs any of them on io_uring or epoll, performing the operations and feeding back their
/// completions, and frees the connection at [`Op::Free`].
///
/// The contract the loop relies on: after each [`StreamMachine::on_event`], it polls
/// [`StreamMachine::poll_op`] until `None` before the next event; [`Op::Free`] is the last
/// operation and comes only once nothing of the connection is in flight.
pub trait StreamMachine {
    /// Feeds one event. An error is a driver bug the machine refuses to act on (an event
    /// that cannot happen in its state); the loop logs it and carries on.
    fn on_event(&mut self, event: Event) -> Result<(), ConnError>;

    /// The next operation to perform, if any.
    fn poll_op(&mut self) -> Option<Op>;

    /// Why the connection is closing, once it is (for a debug log line).
    fn close_reason(&self) -> Option<CloseReason> {
        None
    }

    /// True when the machine reads what it receives: the loop then calls
    /// [`StreamMachine::on_received`] for each [`Event::Recv`], with the bytes. False (the
    /// default): the bytes stay in their buffer, named by id, for a machine that only moves
    /// buffers (sends them on with [`Op::Send`]).
    const READS_BYTES: bool = false;

    /// An [`Event::Recv`] with its bytes (`bytes` is `buf[offset..offset + len]`), when
    /// [`StreamMachine::READS_BYTES`]. The bytes can be read only during this call: the
    /// buffer is the ring's, and goes back at the [`Op::Recycle`] the machine asks for.
    fn on_received(&mut self, event: Event, bytes: &[u8]) -> Result<(), ConnError> {
        let _ = bytes;
        self.on_event(event)
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
    fn on_deadline(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

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
}
