//! [`StreamEngine`]: the loop's [`Engine`] for a stream protocol, a [`Backend`] that performs
//! core's [`Op`]s and a [`StreamMachine`] per connection.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::time::Duration;

use ringwork_core::conn::{Event, Op, Starved, StreamMachine};
use ringwork_core::token::Token;

use super::{AcceptParts, Backend, Engine, Happening, Input, StreamConfig, StreamStats};
use crate::accept::Acceptors;
use crate::error::Result;

/// A stream connection: its machine and what the backend keeps for it.
pub struct StreamConn<M, C> {
    machine: M,
    io: C,
}

/// A [`Backend`] with a [`StreamMachine`] per connection, as the loop drives them: events
/// in, operations out, in the order the machine asks for them; the connections starved of
/// receive buffers woken once enough are back.
pub struct StreamEngine<B, F> {
    backend: B,
    new_machine: F,
    /// Connections whose receive found no buffer, to wake once buffers are back.
    starved: Starved,
    /// The connections being woken this turn, the next last (the buffer is reused).
    woken: Vec<Token>,
    /// Events a connection's operations produced at once, fed back in order.
    events: VecDeque<Event>,
    /// The loop's time at the last harvest, handed to each machine driven.
    now_ms: u64,
    name: &'static str,
}

impl<B: Backend, F> StreamEngine<B, F> {
    /// An engine for `backend`, each connection's machine from `new_machine`.
    pub fn new(cfg: &StreamConfig, backend: B, new_machine: F) -> Self {
        Self {
            backend,
            new_machine,
            starved: Starved::new(cfg.max_conns),
            woken: Vec::new(),
            events: VecDeque::new(),
            now_ms: 0,
            name: cfg.name,
        }
    }
}

impl<B: Backend, M: StreamMachine, F: FnMut() -> M> StreamEngine<B, F> {
    /// Feeds one event to the connection (a receive with its bytes, to a machine that reads
    /// them) and performs the operations it asks for; true once it said [`Op::Free`] (its
    /// last).
    fn feed(
        &mut self,
        token: Token,
        conn: &mut StreamConn<M, B::ConnIo>,
        event: Event,
        events: &mut VecDeque<Event>,
        stats: &mut StreamStats,
    ) -> Result<bool> {
        let received = match event {
            Event::Recv { buf, len, .. } => {
                stats.receives += 1;
                stats.bytes_received += u64::from(len);
                Some(buf)
            }
            _ => None,
        };
        let fed = match event {
            Event::Recv {
                buf, offset, len, ..
            } if M::READS_BYTES => {
                let bytes = self.backend.received(buf, offset, len);
                conn.machine.on_received(event, bytes)
            }
            event => conn.machine.on_event(event),
        };
        if let Err(e) = fed {
            eprintln!("{}: {e}", self.name);
            stats.refused += 1;
            if let Some(buf) = received {
                self.backend.recycle(buf, stats);
            }
            return Ok(false);
        }
        self.perform_ops(token, conn, events, stats)
    }

    /// Performs the operations the connection asks for, until none; true at [`Op::Free`].
    fn perform_ops(
        &mut self,
        token: Token,
        conn: &mut StreamConn<M, B::ConnIo>,
        events: &mut VecDeque<Event>,
        stats: &mut StreamStats,
    ) -> Result<bool> {
        while let Some(op) = conn.machine.poll_op() {
            match op {
                Op::Free => return Ok(true),
                Op::Recycle(buf) => self.backend.recycle(buf, stats),
                Op::AwaitBuffers => self.starved.wait(token),
                op => {
                    if op == Op::Close && std::env::var_os("RINGWORK_DEBUG").is_some() {
                        if let Some(reason) = conn.machine.close_reason() {
                            eprintln!("{}: closing a connection: {reason}", self.name);
                        }
                    }
                    self.backend
                        .perform(token, &mut conn.io, op, events, stats)?;
                }
            }
        }
        Ok(false)
    }
}

impl<B: Backend, M: StreamMachine, F: FnMut() -> M> Engine for StreamEngine<B, F> {
    type Conn = StreamConn<M, B::ConnIo>;
    type Completion = Event;
    type Error = crate::error::Error;
    type Accept = B::Accept;

    fn start(&mut self) -> Result<()> {
        self.backend.start()
    }

    fn wait(&mut self, timeout: Option<Duration>, stats: &mut StreamStats) -> Result<()> {
        self.backend.wait(timeout, stats)
    }

    fn harvest(
        &mut self,
        live: &dyn Fn(&Token) -> bool,
        open: usize,
        now_ms: u64,
        out: &mut Vec<Happening<Event>>,
        stats: &mut StreamStats,
    ) -> Result<()> {
        self.now_ms = now_ms;
        self.backend.harvest(live, open, now_ms, out, stats)
    }

    fn adopt(&mut self, sock: OwnedFd, _listener: u16) -> Self::Conn {
        StreamConn {
            machine: (self.new_machine)(),
            io: self.backend.adopt(sock),
        }
    }

    fn register(&mut self, token: Token, conn: &mut Self::Conn) -> bool {
        self.backend.register(token, &mut conn.io)
    }

    fn reject(&mut self, sock: OwnedFd) -> Result<()> {
        self.backend.reject(sock)
    }

    /// Feeds the input's event (if any) and every event the resulting operations produce
    /// at once, and what the backend has for the connection while it wants bytes.
    fn drive(
        &mut self,
        token: Token,
        conn: &mut Self::Conn,
        input: Input<Event>,
        stats: &mut StreamStats,
    ) -> Result<bool> {
        conn.machine.set_now(self.now_ms);
        // A tick is the machine's deadline: it acts on it before anything else.
        let mut deadline = matches!(input, Input::Tick);
        let first = match input {
            Input::Opened => Some(Event::Opened),
            Input::Completion(event) => Some(event),
            Input::Ready(ready) => {
                self.backend.ready(&mut conn.io, ready);
                None
            }
            Input::Shutdown => Some(Event::Shutdown),
            Input::Abort => Some(Event::Abort),
            Input::Wake => Some(Event::BuffersAvailable),
            Input::Tick => None,
        };
        let mut events = std::mem::take(&mut self.events);
        events.extend(first);
        let result = loop {
            let mut fed = Ok(false);
            if std::mem::take(&mut deadline) {
                conn.machine.on_deadline();
                fed = self.perform_ops(token, conn, &mut events, stats);
            }
            while matches!(fed, Ok(false)) {
                let Some(event) = events.pop_front() else {
                    break;
                };
                fed = self.feed(token, conn, event, &mut events, stats);
            }
            if !matches!(fed, Ok(false)) {
                break fed;
            }
            match self.backend.pump(token, &mut conn.io, stats) {
                Some(event) => events.push_back(event),
                None => break Ok(false),
            }
        };
        // Freed: the buffers of the pieces it was still to be handed go back.
        for event in events.drain(..) {
            self.stale(event, stats);
        }
        self.events = events;
        result
    }

    fn stale(&mut self, event: Event, stats: &mut StreamStats) {
        // An owned send's bytes (the kernel is done with them) are dropped with the event.
        if let Event::Recv { buf, .. } = event {
            self.backend.recycle(buf, stats);
        }
    }

    fn deadline_ms(&self, conn: &Self::Conn) -> Option<u64> {
        conn.machine.deadline_ms()
    }

    fn end_of_turn(&mut self, _stopping: bool, _stats: &mut StreamStats) -> Result<()> {
        self.backend.end_of_batch()?;
        if !self.starved.is_empty() {
            self.starved.wake(self.backend.can_rearm(), &mut self.woken);
            // Popped from the end: woken in the order the wait gave.
            self.woken.reverse();
        }
        Ok(())
    }

    fn next_wake(&mut self) -> Option<Token> {
        self.woken.pop()
    }

    fn accept(&mut self) -> AcceptParts<'_, B::Accept> {
        self.backend.accept()
    }

    fn acceptors(&self) -> &Acceptors<B::Accept> {
        self.backend.acceptors()
    }

    fn busy(&self) -> bool {
        self.backend.busy()
    }

    fn finish(&mut self, stats: &mut StreamStats) {
        self.backend.finish(stats);
    }

    fn publish(&self, stats: &StreamStats, out: &mut super::live::Values<'_>) {
        super::live::put_stream(stats, out);
    }
}
