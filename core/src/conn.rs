//! The echo connection state machine: receive → queue → send, sans-IO.
//!
//! One [`EchoConn`] per accepted socket. The driver feeds it [`Event`]s (completions and a few
//! notices) and performs the [`Op`]s it returns, in order. The same machine serves both drivers:
//!
//! | op | io_uring driver | epoll driver |
//! | --- | --- | --- |
//! | [`Op::ArmRecv`] | multishot RECV with BUFFER_SELECT | register readable interest |
//! | [`Op::Send`] | SEND of `buf[offset..offset + len]` | nonblocking write (wait for writable on EAGAIN) |
//! | [`Op::CancelRecv`] | ASYNC_CANCEL by the recv's user_data | drop readable interest, then deliver `RecvErr { ECANCELED, more: false }` and `CancelDone` |
//! | [`Op::CancelAll`] | ASYNC_CANCEL with FD \| ALL | as `CancelRecv`; a write in progress just finishes |
//! | [`Op::Close`] | CLOSE | close(2), then deliver `Closed` |
//!
//! What it guarantees (each is a test below): bytes are echoed exactly once and in order with
//! at most one send in flight (PITFALLS.md #6); a multishot recv is re-armed only when its last
//! event lacked IORING_CQE_F_MORE (#2); ENOBUFS never closes the connection (#3); the socket is
//! closed only once nothing is in flight on it, after cancelling what was (#5); every buffer it
//! is handed is recycled exactly once, and never while the kernel may still read it (#7).
//!
//! What it deliberately does not do: own buffer memory or [`crate::buf::Lease`]s (it tracks
//! [`BufId`]s, offsets and lengths; the driver holds the leases and recycles on
//! [`Op::Recycle`]), build user_data (the driver does, with [`crate::token`]), or decide when a
//! provided ring has enough buffers again (the driver says so with [`Event::BuffersAvailable`],
//! typically from [`crate::buf::ProvidedRing::can_rearm`]).
//!
//! # Backpressure and the bound on the queue
//!
//! When [`Config::max_queued`] buffers are queued the machine stops receiving and resumes once
//! the queue has drained to half. Stopping a multishot recv is asynchronous: data the kernel
//! posts before it processes the cancel still arrives and is queued, never dropped. The queue
//! holds [`QUEUE_CAPACITY`] chunks and `max_queued` may be at most
//! `QUEUE_CAPACITY - CANCEL_SLACK`, so at least [`CANCEL_SLACK`] buffers may arrive after the
//! cancel. With epoll dropping interest is synchronous and the slack is never used. With
//! io_uring each late completion carries one provided buffer, so a per-connection buffer group
//! of at most `QUEUE_CAPACITY` buffers makes the bound hard (the kernel answers ENOBUFS
//! instead); with a shared ring the slack is a margin, not a proof. If it is ever exceeded the
//! connection fails closed with [`CloseReason::QueueOverflow`] rather than lose bytes silently.

use arrayvec::ArrayVec;
use core::fmt;

use crate::buf::BufId;
use crate::errno::RawErrno;

/// Most chunks an [`EchoConn`] holds at once (queued for send, including the one being sent).
pub const QUEUE_CAPACITY: usize = 16;

/// Chunks kept free beyond [`Config::max_queued`] for receives that land while a recv cancel is
/// in flight.
pub const CANCEL_SLACK: usize = 8;

/// Most operations one event can produce: recycling a full queue plus the buffer just
/// received, and a cancel or close.
pub const MAX_ACTIONS: usize = QUEUE_CAPACITY + 4;

/// The operations one event produced, to be performed in order.
pub type Actions = ArrayVec<Op, MAX_ACTIONS>;

/// Connection limits, fixed at construction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Config {
    /// Backpressure: stop receiving when this many buffers are queued for sending; resume at
    /// half. At least 1 and at most `QUEUE_CAPACITY - CANCEL_SLACK`.
    pub max_queued: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_queued: QUEUE_CAPACITY - CANCEL_SLACK,
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
    /// A fatal error: queued data dropped, in-flight ops cancelled; closes when none remain.
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

/// Something the driver reports to the connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Event {
    /// The socket was accepted: start receiving.
    Opened,
    /// `len` bytes arrived in buffer `buf` at `offset` (the connection now holds them until
    /// [`Op::Recycle`]). `more` is IORING_CQE_F_MORE: the multishot recv is still armed.
    /// `offset` is 0 but with incrementally consumed buffers (IOU_PBUF_RING_INC), where one
    /// buffer holds several receives, possibly of several connections, one after another:
    /// there each Recv is a slice, and each slice gets its own [`Op::Recycle`].
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
    /// The recv failed. ENOBUFS is not fatal (PITFALLS.md #3), ECANCELED is expected after a
    /// cancel, EAGAIN and EINTR are retried; anything else closes the connection.
    RecvErr {
        /// Why.
        errno: RawErrno,
        /// The recv is still armed.
        more: bool,
    },
    /// After ENOBUFS: the buffer ring (or pool) has buffers again.
    BuffersAvailable,
    /// The one in-flight [`Op::Send`] completed: bytes written (may be short) or an errno.
    SendDone {
        /// The send's result.
        res: Result<u32, RawErrno>,
    },
    /// A [`Op::CancelRecv`] or [`Op::CancelAll`] request's own completion (whatever its result:
    /// the cancelled ops report separately).
    CancelDone,
    /// The [`Op::Close`] completed.
    Closed,
    /// The server is stopping: stop receiving, flush what is queued, then close.
    Shutdown,
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
            Event::CancelDone => EventKind::CancelDone,
            Event::Closed => EventKind::Closed,
            Event::Shutdown => EventKind::Shutdown,
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
    CancelDone,
    Closed,
    Shutdown,
}

/// An operation for the driver to perform.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
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
    /// The connection is done with this buffer (sent, or dropped on close): return it.
    Recycle(BufId),
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
    /// More buffers arrived after a backpressure cancel than [`CANCEL_SLACK`] allows for.
    QueueOverflow,
}

impl CloseReason {
    /// True when data was dropped (everything but a clean EOF or shutdown).
    pub fn is_fatal(self) -> bool {
        !matches!(self, CloseReason::PeerClosed | CloseReason::Shutdown)
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerClosed => f.write_str("peer closed"),
            CloseReason::Shutdown => f.write_str("server shutdown"),
            CloseReason::RecvError(e) => write!(f, "recv failed: {e}"),
            CloseReason::SendError(e) => write!(f, "send failed: {e}"),
            CloseReason::QueueOverflow => write!(
                f,
                "more than {CANCEL_SLACK} buffers arrived after the recv was cancelled"
            ),
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

/// One echo connection. See the module docs.
#[derive(Clone, Debug)]
pub struct EchoConn {
    state: State,
    cfg: Config,
    /// Chunks in arrival order; the head is the one being sent when `send_in_flight`.
    /// At most 16 entries, so `remove(0)` is a 200-byte move: simpler than a ring and as fast.
    queue: ArrayVec<Chunk, QUEUE_CAPACITY>,
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
    /// When `cfg.max_queued` is 0 or above `QUEUE_CAPACITY - CANCEL_SLACK`: a caller bug.
    pub fn new(cfg: Config) -> Self {
        assert!(
            cfg.max_queued >= 1 && cfg.max_queued <= QUEUE_CAPACITY - CANCEL_SLACK,
            "max_queued must be between 1 and QUEUE_CAPACITY - CANCEL_SLACK"
        );
        Self {
            state: State::Idle,
            cfg,
            queue: ArrayVec::new(),
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

    /// Buffers held for sending (including the one being sent).
    pub fn queued_buffers(&self) -> usize {
        self.queue.len()
    }

    /// Unsent bytes held.
    pub fn queued_bytes(&self) -> u64 {
        self.queue.iter().map(|c| u64::from(c.len)).sum()
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

    /// Feeds one event; returns the operations to perform, in order.
    ///
    /// Call again with the next event; the machine never produces operations on its own.
    pub fn on_event(&mut self, ev: Event) -> Result<Actions, ConnError> {
        use State::*;
        let mut out = Actions::new();
        match (self.state, ev) {
            (Idle, Event::Opened) => self.set_state(Open),
            // Never opened: nothing is in flight, so draining closes at once.
            (Idle, Event::Shutdown) => self.drain(CloseReason::Shutdown),
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
                self.bytes_received += u64::from(len);
                if len == 0 {
                    // Nothing to echo (a driver reports EOF as RecvEof).
                    out.push(Op::Recycle(buf));
                } else if self.queue.is_full() {
                    // The cancel slack was exceeded: fail closed rather than drop bytes.
                    out.push(Op::Recycle(buf));
                    self.fail(CloseReason::QueueOverflow, &mut out);
                } else {
                    // Also while a backpressure or shutdown cancel is in flight: the bytes
                    // left the socket, so they are echoed.
                    self.queue.push(Chunk { buf, offset, len });
                }
            }
            // After a fatal error nothing more is echoed.
            (Closing, Event::Recv { buf, len, more, .. }) if self.recv_armed => {
                self.recv_event(more);
                self.bytes_received += u64::from(len);
                out.push(Op::Recycle(buf));
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
                let cancelled_by_us = self.recv_cancel_pending;
                self.recv_event(more);
                match errno {
                    // PITFALLS #3: the ring ran dry. If the recv ended, wait for buffers.
                    RawErrno::NOBUFS => {
                        if !more {
                            self.waiting_for_buffers = true;
                        }
                    }
                    // Retryable; re-armed below if the recv ended.
                    RawErrno::AGAIN | RawErrno::INTR => {}
                    // Our own cancel (backpressure, shutdown or close).
                    RawErrno::CANCELED if cancelled_by_us => {}
                    // Already closing: one error is enough.
                    _ if self.state == Closing => {}
                    other => self.fail(CloseReason::RecvError(other), &mut out),
                }
            }

            (Open | Draining | Closing, Event::SendDone { res }) if self.send_in_flight => {
                let head = self.queue[0];
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
                        if self.state == Closing {
                            // The kernel is done with the buffer; the rest is dropped.
                            self.queue.remove(0);
                            out.push(Op::Recycle(head.buf));
                        } else if n == head.len {
                            self.queue.remove(0);
                            out.push(Op::Recycle(head.buf));
                        } else {
                            // Short send (PITFALLS #6): the reconcile step resubmits the rest.
                            self.queue[0].offset += n;
                            self.queue[0].len -= n;
                        }
                    }
                    Err(e) => {
                        self.send_in_flight = false;
                        if self.state == Closing {
                            self.queue.remove(0);
                            out.push(Op::Recycle(head.buf));
                        } else if !matches!(e, RawErrno::AGAIN | RawErrno::INTR) {
                            self.fail(CloseReason::SendError(e), &mut out);
                        }
                        // EAGAIN / EINTR: nothing was written; resubmitted below.
                    }
                }
            }

            (Open | Draining | Closing, Event::CancelDone) if self.cancels_in_flight > 0 => {
                self.cancels_in_flight -= 1;
            }

            (CloseSent, Event::Closed) => {
                self.close_in_flight = false;
                self.set_state(Freed);
                out.push(Op::Free);
            }

            (Open, Event::Shutdown) => self.drain(CloseReason::Shutdown),
            // Already on the way out.
            (Draining | Closing | CloseSent | Freed, Event::Shutdown) => {}

            // A completion for nothing in flight, a second Opened, anything after Freed.
            (state, ev) => {
                return Err(ConnError::Unexpected {
                    state,
                    event: ev.kind(),
                })
            }
        }
        self.reconcile(&mut out);
        Ok(out)
    }

    /// Bookkeeping common to every receive event: without `more` the recv is gone (PITFALLS #2),
    /// and so is any cancel's target.
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

    /// A fatal error: drop queued data and cancel what is in flight (PITFALLS #5);
    /// [`EchoConn::reconcile`] closes once nothing is.
    fn fail(&mut self, reason: CloseReason, out: &mut Actions) {
        self.reason = Some(reason);
        self.set_state(State::Closing);
        // The head of the queue stays while a send names it: the kernel may still read it
        // (PITFALLS #7); it is recycled when the send completes.
        let keep = usize::from(self.send_in_flight);
        for chunk in self.queue.drain(keep..) {
            out.push(Op::Recycle(chunk.buf));
        }
        if self.send_in_flight || (self.recv_armed && !self.recv_cancel_pending) {
            out.push(Op::CancelAll);
            self.cancels_in_flight += 1;
            self.recv_cancel_pending |= self.recv_armed;
        }
    }

    /// Derives the operations the new state calls for: send the head, arm or cancel the recv,
    /// close when nothing is left in flight.
    fn reconcile(&mut self, out: &mut Actions) {
        match self.state {
            State::Open | State::Draining => {
                if !self.send_in_flight {
                    if let Some(head) = self.queue.first() {
                        // PITFALLS #6: one send at a time, exactly the unsent rest.
                        out.push(Op::Send {
                            buf: head.buf,
                            offset: head.offset,
                            len: head.len,
                        });
                        self.send_in_flight = true;
                    }
                }
                if self.queue.len() >= self.cfg.max_queued {
                    self.backpressure = true;
                } else if self.queue.len() <= self.cfg.max_queued / 2 {
                    self.backpressure = false;
                }
                let wants_recv =
                    self.state == State::Open && !self.backpressure && !self.waiting_for_buffers;
                // No re-arm while a cancel is in flight: it was submitted before the new recv
                // and could hit it.
                if wants_recv && !self.recv_armed && self.cancels_in_flight == 0 {
                    out.push(Op::ArmRecv);
                    self.recv_armed = true;
                } else if !wants_recv && self.recv_armed && !self.recv_cancel_pending {
                    out.push(Op::CancelRecv);
                    self.cancels_in_flight += 1;
                    self.recv_cancel_pending = true;
                }
                if self.state == State::Draining && self.queue.is_empty() && self.in_flight() == 0 {
                    self.close(out);
                }
            }
            // PITFALLS #5: close only after every cancelled op has reported.
            State::Closing if self.in_flight() == 0 => self.close(out),
            _ => {}
        }
    }

    fn close(&mut self, out: &mut Actions) {
        debug_assert!(self.queue.is_empty(), "every buffer recycled before close");
        out.push(Op::Close);
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

    /// Feeds `ev`, which must be legal, and returns its operations.
    fn step(c: &mut EchoConn, ev: Event) -> Vec<Op> {
        c.on_event(ev)
            .unwrap_or_else(|e| panic!("{ev:?} refused: {e}"))
            .into_iter()
            .collect()
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
    fn open(max_queued: usize) -> EchoConn {
        let mut c = EchoConn::new(Config { max_queued });
        assert_eq!(step(&mut c, Event::Opened), [Op::ArmRecv]);
        assert_eq!(c.state(), State::Open);
        c
    }

    // ---- Idle -------------------------------------------------------------------------------

    #[test]
    fn idle_only_accepts_opened_or_shutdown() {
        let mut c = EchoConn::new(Config::default());
        assert_eq!(
            c.on_event(sent(1)),
            Err(ConnError::Unexpected {
                state: State::Idle,
                event: EventKind::SendDone
            })
        );
        assert_eq!(step(&mut c, Event::Shutdown), [Op::Close]);
        assert_eq!(step(&mut c, Event::Closed), [Op::Free]);
        assert_eq!(c.state(), State::Freed);
    }

    #[test]
    #[should_panic(expected = "max_queued")]
    fn config_leaves_cancel_slack() {
        let _ = EchoConn::new(Config {
            max_queued: QUEUE_CAPACITY - CANCEL_SLACK + 1,
        });
    }

    // ---- Open: rule 1, echo exactly once and in order -----------------------------------------

    #[test]
    fn echo_in_order_one_send_at_a_time() {
        let mut c = open(8);
        assert_eq!(step(&mut c, recv(1, 10, true)), [send(1, 0, 10)]);
        // A second buffer queues behind the in-flight send (PITFALLS #6).
        assert_eq!(step(&mut c, recv(2, 20, true)), []);
        assert_eq!(c.queued_bytes(), 30);
        assert_eq!(
            step(&mut c, sent(10)),
            [Op::Recycle(BufId(1)), send(2, 0, 20)]
        );
        assert_eq!(step(&mut c, sent(20)), [Op::Recycle(BufId(2))]);
        assert_eq!((c.bytes_received(), c.bytes_sent()), (30, 30));
        assert_eq!(c.in_flight(), 1, "only the recv");
    }

    #[test]
    fn short_send_resubmits_exactly_the_rest() {
        let mut c = open(8);
        assert_eq!(step(&mut c, recv(4, 100, true)), [send(4, 0, 100)]);
        assert_eq!(step(&mut c, sent(30)), [send(4, 30, 70)]);
        assert_eq!(step(&mut c, sent(0)), [send(4, 30, 70)]);
        assert_eq!(
            step(
                &mut c,
                Event::SendDone {
                    res: Err(RawErrno::AGAIN)
                }
            ),
            [send(4, 30, 70)]
        );
        assert_eq!(
            c.on_event(sent(71)),
            Err(ConnError::SendOverrun { sent: 71, len: 70 })
        );
        assert_eq!(step(&mut c, sent(70)), [Op::Recycle(BufId(4))]);
    }

    // ---- Open: rule 2, multishot re-arm ------------------------------------------------------

    #[test]
    fn multishot_rearms_only_without_more() {
        let mut c = open(8);
        // Final CQE of the multishot (e.g. CQ overflow ended it): re-arm.
        assert_eq!(
            step(&mut c, recv(1, 5, false)),
            [send(1, 0, 5), Op::ArmRecv]
        );
        // An error that still carries F_MORE: the recv is still armed, do nothing.
        assert_eq!(
            step(
                &mut c,
                Event::RecvErr {
                    errno: RawErrno::AGAIN,
                    more: true
                }
            ),
            []
        );
        assert_eq!(
            step(
                &mut c,
                Event::RecvErr {
                    errno: RawErrno::INTR,
                    more: false
                }
            ),
            [Op::ArmRecv]
        );
        // A recv event with nothing armed is a driver bug, and leaves the buffer with it.
        let mut idle = open(8);
        step(
            &mut idle,
            Event::RecvErr {
                errno: NOBUFS,
                more: false,
            },
        );
        assert!(matches!(
            idle.on_event(recv(9, 1, true)),
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
            step(
                &mut c,
                Event::RecvErr {
                    errno: NOBUFS,
                    more: false
                }
            ),
            []
        );
        assert_eq!(c.state(), State::Open, "ENOBUFS is not fatal");
        assert_eq!(c.in_flight(), 0);
        assert_eq!(step(&mut c, Event::BuffersAvailable), [Op::ArmRecv]);
        // With F_MORE the recv is still armed: no re-arm, and BuffersAvailable changes nothing.
        assert_eq!(
            step(
                &mut c,
                Event::RecvErr {
                    errno: NOBUFS,
                    more: true
                }
            ),
            []
        );
        assert_eq!(step(&mut c, Event::BuffersAvailable), []);
        assert_eq!(c.in_flight(), 1);
    }

    // ---- Open: rule 4, backpressure ---------------------------------------------------------

    #[test]
    fn backpressure_cancels_and_resumes_at_half() {
        let mut c = open(4);
        step(&mut c, recv(0, 1, true));
        step(&mut c, recv(1, 1, true));
        step(&mut c, recv(2, 1, true));
        assert_eq!(step(&mut c, recv(3, 1, true)), [Op::CancelRecv]);
        // Data already posted before the cancel took effect is queued, not dropped.
        assert_eq!(step(&mut c, recv(4, 1, true)), []);
        assert_eq!(c.queued_buffers(), 5);
        assert_eq!(
            step(
                &mut c,
                Event::RecvErr {
                    errno: RawErrno::CANCELED,
                    more: false
                }
            ),
            []
        );
        assert_eq!(step(&mut c, Event::CancelDone), []);
        assert_eq!(c.in_flight(), 1, "just the send");
        step(&mut c, sent(1));
        step(&mut c, sent(1));
        // Three left: above half of four, still paused.
        assert_eq!(
            step(&mut c, sent(1)),
            [Op::Recycle(BufId(2)), send(3, 0, 1), Op::ArmRecv]
        );
        assert_eq!(c.queued_buffers(), 2);
    }

    #[test]
    fn no_rearm_while_a_cancel_is_in_flight() {
        let mut c = open(2);
        step(&mut c, recv(0, 1, true));
        assert_eq!(step(&mut c, recv(1, 1, false)), []);
        // The recv ended on its own; no cancel needed, and it re-arms on drain.
        assert_eq!(
            step(&mut c, sent(1)),
            [Op::Recycle(BufId(0)), send(1, 0, 1), Op::ArmRecv]
        );
        let mut c = open(2);
        step(&mut c, recv(0, 1, true));
        assert_eq!(step(&mut c, recv(1, 1, true)), [Op::CancelRecv]);
        step(
            &mut c,
            Event::RecvErr {
                errno: RawErrno::CANCELED,
                more: false,
            },
        );
        step(&mut c, sent(1));
        // Drained to half, but the cancel's own CQE is outstanding: wait for it.
        assert_eq!(step(&mut c, sent(1)), [Op::Recycle(BufId(1))]);
        assert_eq!(step(&mut c, Event::CancelDone), [Op::ArmRecv]);
    }

    #[test]
    fn overflow_beyond_slack_fails_closed() {
        let max = QUEUE_CAPACITY - CANCEL_SLACK;
        let mut c = open(max);
        for i in 0..QUEUE_CAPACITY as u16 {
            step(&mut c, recv(i, 1, true));
        }
        let ops = step(&mut c, recv(99, 1, true));
        assert_eq!(c.close_reason(), Some(CloseReason::QueueOverflow));
        assert_eq!(ops[0], Op::Recycle(BufId(99)));
        // Everything but the buffer the in-flight send names is recycled at once.
        let recycled = ops.iter().filter(|o| matches!(o, Op::Recycle(_))).count();
        assert_eq!(recycled, QUEUE_CAPACITY);
        assert_eq!(ops.last(), Some(&Op::CancelAll));
        assert_eq!(c.state(), State::Closing);
    }

    // ---- Draining: rule 5 (EOF) and rule 7 (Shutdown) ------------------------------------------

    #[test]
    fn eof_flushes_then_closes() {
        let mut c = open(8);
        step(&mut c, recv(1, 10, true));
        step(&mut c, recv(2, 10, true));
        assert_eq!(step(&mut c, Event::RecvEof { more: false }), []);
        assert_eq!(c.state(), State::Draining);
        assert_eq!(
            step(&mut c, sent(10)),
            [Op::Recycle(BufId(1)), send(2, 0, 10)]
        );
        assert_eq!(step(&mut c, sent(10)), [Op::Recycle(BufId(2)), Op::Close]);
        assert_eq!(c.close_reason(), Some(CloseReason::PeerClosed));
        assert_eq!(step(&mut c, Event::Closed), [Op::Free]);
    }

    #[test]
    fn shutdown_cancels_recv_flushes_then_closes() {
        let mut c = open(8);
        step(&mut c, recv(1, 10, true));
        assert_eq!(step(&mut c, Event::Shutdown), [Op::CancelRecv]);
        // Arrived before the cancel: echoed.
        assert_eq!(step(&mut c, recv(2, 5, true)), []);
        assert_eq!(
            step(&mut c, sent(10)),
            [Op::Recycle(BufId(1)), send(2, 0, 5)]
        );
        step(
            &mut c,
            Event::RecvErr {
                errno: RawErrno::CANCELED,
                more: false,
            },
        );
        assert_eq!(step(&mut c, sent(5)), [Op::Recycle(BufId(2))]);
        assert_eq!(step(&mut c, Event::CancelDone), [Op::Close]);
        assert_eq!(c.close_reason(), Some(CloseReason::Shutdown));
        assert_eq!(
            step(&mut c, Event::Shutdown),
            [],
            "a second shutdown is harmless"
        );
        assert_eq!(step(&mut c, Event::Closed), [Op::Free]);
    }

    // ---- Closing: rule 5 (errors) and rule 6 ---------------------------------------------------

    #[test]
    fn reset_drops_queue_cancels_then_closes() {
        let mut c = open(8);
        step(&mut c, recv(1, 10, true));
        step(&mut c, recv(2, 10, true));
        step(&mut c, recv(3, 10, true));
        let ops = step(
            &mut c,
            Event::RecvErr {
                errno: RawErrno::CONNRESET,
                more: false,
            },
        );
        // Buffer 1 is named by the in-flight send: the kernel may still read it (PITFALLS #7).
        assert_eq!(
            ops,
            [Op::Recycle(BufId(2)), Op::Recycle(BufId(3)), Op::CancelAll]
        );
        assert_eq!(c.state(), State::Closing);
        assert_eq!(c.in_flight(), 2, "send and cancel");
        // The cancelled send reports ECANCELED: expected while closing.
        assert_eq!(
            step(
                &mut c,
                Event::SendDone {
                    res: Err(RawErrno::CANCELED)
                }
            ),
            [Op::Recycle(BufId(1))]
        );
        assert_eq!(step(&mut c, Event::CancelDone), [Op::Close]);
        assert_eq!(c.in_flight(), 1);
        assert!(matches!(
            c.on_event(Event::CancelDone),
            Err(ConnError::Unexpected { .. })
        ));
        assert_eq!(step(&mut c, Event::Closed), [Op::Free]);
        assert_eq!(
            c.close_reason(),
            Some(CloseReason::RecvError(RawErrno::CONNRESET))
        );
    }

    #[test]
    fn send_error_cancels_armed_recv_before_close() {
        let mut c = open(8);
        step(&mut c, recv(1, 10, true));
        step(&mut c, recv(2, 10, true));
        let ops = step(
            &mut c,
            Event::SendDone {
                res: Err(RawErrno::PIPE),
            },
        );
        assert_eq!(
            ops,
            [Op::Recycle(BufId(1)), Op::Recycle(BufId(2)), Op::CancelAll]
        );
        // Late data after the error is recycled, not echoed.
        assert_eq!(step(&mut c, recv(3, 4, true)), [Op::Recycle(BufId(3))]);
        assert_eq!(step(&mut c, Event::CancelDone), []);
        assert_eq!(
            step(
                &mut c,
                Event::RecvErr {
                    errno: RawErrno::CANCELED,
                    more: false
                }
            ),
            [Op::Close]
        );
        // Nothing is in flight but the close; Free only after Closed.
        assert!(c.on_event(Event::Opened).is_err());
        assert_eq!(step(&mut c, Event::Closed), [Op::Free]);
        assert!(c.on_event(Event::Closed).is_err(), "never Free twice");
    }

    #[test]
    fn unsolicited_ecanceled_is_fatal() {
        let mut c = open(8);
        let ops = step(
            &mut c,
            Event::RecvErr {
                errno: RawErrno::CANCELED,
                more: false,
            },
        );
        assert_eq!(ops, [Op::Close]);
        assert!(c.close_reason().unwrap().is_fatal());
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
        Closed,
    }

    fn any_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            12 => (1u32..100, proptest::bool::weighted(0.1))
                .prop_map(|(len, last)| Step::Data { len, last }),
            2 => any::<bool>().prop_map(|more| Step::NoBufs { more }),
            2 => Just(Step::BuffersAvailable),
            10 => (0u32..4).prop_map(|quarters| Step::SendComplete { quarters }),
            1 => Just(Step::SendAgain),
            1 => Just(Step::SendFail),
            2 => Just(Step::SendCancelled),
            4 => Just(Step::CancelComplete),
            4 => Just(Step::RecvCancelled),
            1 => Just(Step::Eof),
            1 => Just(Step::Reset),
            1 => Just(Step::Shutdown),
            3 => Just(Step::Closed),
        ]
    }

    /// Receives the kernel may still post after a recv cancel is issued, in this simulation
    /// (below CANCEL_SLACK: the bound the module docs ask drivers to keep).
    const LATE_RECVS: u32 = 4;

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
        late_recvs: u32,
        send: Option<(BufId, u32, u32)>,
        send_cancel: bool,
        cancels: u32,
        close_pending: bool,
        closes: u32,
        frees: u32,
        closed: bool,
        peer_eof: bool,
        shutdown: bool,
        /// An ENOBUFS ended the recv and no BuffersAvailable has come since.
        starved: bool,
        injected_error: bool,
    }

    impl Sim {
        fn deliver(&mut self, c: &mut EchoConn, ev: Event) {
            let ops = c
                .on_event(ev)
                .unwrap_or_else(|e| panic!("{ev:?} refused: {e}"));
            for op in ops {
                self.perform(c, op);
            }
            let model = u32::from(self.armed)
                + u32::from(self.send.is_some())
                + self.cancels
                + u32::from(self.close_pending);
            assert_eq!(c.in_flight(), model, "in-flight count after {ev:?}");
        }

        fn perform(&mut self, c: &EchoConn, op: Op) {
            match op {
                Op::ArmRecv => {
                    assert!(!self.armed, "armed twice");
                    assert!(!self.peer_eof && !self.shutdown, "re-armed while closing");
                    assert!(!self.starved, "re-armed before buffers were available");
                    self.armed = true;
                    self.recv_cancel = false;
                    self.late_recvs = 0;
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

        fn complete_send(&mut self, c: &mut EchoConn, res: Result<u32, RawErrno>) {
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
        fn play(&mut self, c: &mut EchoConn, step: Step) {
            match step {
                Step::Data { len, last } => {
                    let cancel_landed = self.recv_cancel && self.late_recvs >= LATE_RECVS;
                    if !self.armed || self.peer_eof || cancel_landed {
                        return;
                    }
                    if self.recv_cancel {
                        self.late_recvs += 1;
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
                Step::Closed if self.close_pending => {
                    self.close_pending = false;
                    self.closed = true;
                    self.deliver(c, Event::Closed);
                }
                _ => {}
            }
        }

        /// Shuts down and delivers every outstanding completion until nothing is in flight.
        fn quiesce(&mut self, c: &mut EchoConn) {
            self.play(c, Step::Shutdown);
            for _ in 0..10_000 {
                let step = if self.send.is_some() {
                    Step::SendComplete { quarters: 0 }
                } else if self.armed && self.recv_cancel {
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

        /// Any kernel-possible script, then quiescence: bytes echoed exactly once and in order
        /// (all of them unless an error was injected), one send at a time, every buffer
        /// recycled exactly once, Close once with nothing in flight, Free exactly once.
        #[test]
        fn simulated_driver(
            max_queued in 1..=QUEUE_CAPACITY - CANCEL_SLACK,
            steps in proptest::collection::vec(any_step(), 0..300),
        ) {
            let mut c = EchoConn::new(Config { max_queued });
            let mut sim = Sim::default();
            sim.deliver(&mut c, Event::Opened);
            for s in steps {
                sim.play(&mut c, s);
                prop_assert!(c.queued_buffers() <= QUEUE_CAPACITY);
            }
            sim.quiesce(&mut c);

            prop_assert_eq!(c.state(), State::Freed);
            prop_assert_eq!(sim.frees, 1);
            prop_assert_eq!(sim.closes, 1);
            prop_assert_eq!(c.in_flight(), 0);
            for buf in sim.bufs.keys() {
                prop_assert_eq!(sim.recycled.get(buf), Some(&1), "{:?} not recycled", buf);
            }
            prop_assert_eq!(c.bytes_sent(), sim.tx);
            prop_assert_eq!(c.bytes_received(), sim.rx);
            let reason = c.close_reason().unwrap();
            if sim.injected_error {
                prop_assert!(sim.tx <= sim.rx);
            } else {
                prop_assert!(!reason.is_fatal(), "{}", reason);
                prop_assert_eq!(sim.tx, sim.rx, "everything echoed");
            }
        }
    }
}
