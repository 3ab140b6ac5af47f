//! TLS between a connection's socket and its [`HttpConn`]: the [`TlsSession`] record layer
//! put in front of the file service's operations, so that both backends carry HTTPS by
//! performing the same few operations they perform for HTTP.
//!
//! What HttpConn asks for is translated here, and what the kernel answers is translated back:
//!
//! - HttpConn's receive ([`Op::Recv`]) is owed plaintext. Ciphertext is received for it
//!   ([`FileOp::Recv`], as for HTTP) and fed to the session; once plaintext is there it goes
//!   to HttpConn as that receive's bytes (at most its `max`; the rest waits in the session
//!   for the next receive, which is then answered with no system call). The handshake
//!   happens inside the first receive: HttpConn waits for its first request as it does on a
//!   plain connection, under the same header deadline.
//! - HttpConn's send ([`Op::Send`] of the head or a chunk buffer) becomes [`FileOp::Seal`]:
//!   the backend hands the bytes' memory to [`FileService::seal`], which encrypts them into
//!   records. Records leave as [`FileOp::SendRecords`], an owned buffer
//!   ([`FileConn::take_records`]) that goes with the send and comes back with its completion
//!   ([`FileService::on_records_sent`]). HttpConn's send completes once every record of it is
//!   sent: a slow reader holds the response back exactly as on a plain connection.
//! - HttpConn's [`Op::Shutdown`] is preceded by a close_notify; its [`Op::Close`] and
//!   [`Op::Free`] wait until no send of records is in flight (an alert, a close_notify, a
//!   handshake flight). Those last records are sent best effort (`wait: false`, MSG_DONTWAIT):
//!   a peer that reads nothing cannot keep the connection. A send of records still waiting
//!   for room when HttpConn closes is cancelled ([`FileOp::Cancel`], its completion reported
//!   with [`FileService::on_cancel_done`]).
//!
//! HttpConn on a TLS connection must not send straight from a file or with SEND_ZC (its
//! `Config::file_send` and `Config::zerocopy` off): those bytes would bypass the session.
//! [`FileConn::with_tls`] refuses such a connection.

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::{FileConn, FileOp, FileService, TLS_RECV_MAX};
use crate::conn::ConnError;
use crate::errno::RawErrno;
use crate::httpconn::{HttpConn, HttpEvent, Op, SendSrc, Time};
use crate::tls::{PeerEnd, Phase, TlsError, TlsSession};

/// Most plaintext in one TLS record (RFC 8446, section 5.1).
const RECORD: usize = 16_384;

/// Record buffers a worker keeps for its connections' next sends (an idle connection keeps
/// none of its own).
const SPARE_RECORDS: usize = 32;

/// Record buffers grown past this (a large chunk's records) are not kept.
const SPARE_RECORDS_MAX: usize = 256 * 1024;

/// The state of the connection's records with the backend.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flight {
    /// No send of records is in flight.
    Idle,
    /// Records are with the backend; `wait`: the send waits for room (else MSG_DONTWAIT).
    Flying { wait: bool },
    /// A nonblocking backend found the socket full: the records are back in `unsent`, and
    /// the backend sends them again when the socket has room (it took them again).
    Blocked { wait: bool },
}

/// One connection's TLS layer; see the module docs.
pub(super) struct TlsLink {
    session: TlsSession,
    /// HttpConn's receive, owed plaintext: its `max`.
    owed_recv: Option<u32>,
    /// A receive of ciphertext is in the kernel for it.
    receiving: bool,
    /// How that receive failed (reported to HttpConn as its receive's result).
    recv_error: Option<RawErrno>,
    /// The peer's end of the stream was received.
    eof: bool,
    /// HttpConn's send, sealed: its plaintext length, reported once every record is sent.
    owed_send: Option<u32>,
    flight: Flight,
    /// Records not yet sent: a buffer and its first unsent byte.
    unsent: Option<(Vec<u8>, usize)>,
    /// HttpConn's Shutdown, Close or Free, held until the records before it are sent.
    held: Option<Op>,
    /// A cancel of the layer's own is in flight (its completion is not HttpConn's).
    cancelling: bool,
    /// A send of records failed: records were lost, so nothing after them may follow (the
    /// peer would read a stream with a gap); what the session makes from now on is dropped.
    broken: bool,
}

impl core::fmt::Debug for TlsLink {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TlsLink")
            .field("session", &self.session)
            .field("owed_recv", &self.owed_recv)
            .field("receiving", &self.receiving)
            .field("owed_send", &self.owed_send)
            .field("flight", &self.flight)
            .field("unsent", &self.unsent.as_ref().map(|(b, at)| b.len() - at))
            .field("held", &self.held)
            .finish()
    }
}

/// What the layer found to do before HttpConn is polled.
pub(super) enum Step {
    /// An operation for the backend.
    Op(FileOp),
    /// HttpConn's held operation, now performed as on a plain connection.
    Perform(Op),
    /// Nothing of the layer's: poll HttpConn.
    Poll,
    /// HttpConn's last operations wait for the layer's sends: poll nothing.
    Wait,
}

/// What becomes of an operation HttpConn emitted.
pub(super) enum Taken {
    /// Answered or held here: poll again.
    Done,
    /// The file service performs it as on a plain connection.
    Perform(Op),
    /// For the backend, as is.
    Give(FileOp),
}

impl FileConn {
    /// A TLS connection's side: `http` behind `session`. None when `http` sends straight
    /// from files or with SEND_ZC (its `Config::file_send`, `Config::zerocopy`): those
    /// bytes would leave unencrypted.
    pub fn with_tls(http: HttpConn, session: TlsSession) -> Option<Self> {
        let cfg = http.config();
        if cfg.file_send || cfg.zerocopy {
            return None;
        }
        let mut c = FileConn::new(http);
        c.tls = Some(Box::new(TlsLink {
            session,
            owed_recv: None,
            receiving: false,
            recv_error: None,
            eof: false,
            owed_send: None,
            flight: Flight::Idle,
            unsent: None,
            held: None,
            cancelling: false,
            broken: false,
        }));
        Some(c)
    }

    /// The TLS session, on a TLS connection.
    pub fn tls_session(&self) -> Option<&TlsSession> {
        self.tls.as_ref().map(|t| &t.session)
    }

    pub(super) fn take_records_tls(&mut self) -> Option<(Vec<u8>, usize)> {
        let link = self.tls.as_mut()?;
        let taken = link.unsent.take()?;
        if let Flight::Blocked { wait } = link.flight {
            link.flight = Flight::Flying { wait };
        }
        Some(taken)
    }

    /// The handshake's deadline, while it runs.
    pub(super) fn tls_deadline_ms(&self) -> Option<u64> {
        self.tls.as_ref().and_then(|t| t.session.deadline_ms())
    }

    /// The clock reached `now_ms`: false when the handshake ran past its deadline.
    pub(super) fn tls_in_time(&mut self, now_ms: u64) -> bool {
        self.tls
            .as_mut()
            .map_or(true, |t| t.session.on_deadline(now_ms).is_ok())
    }
}

/// The receive result HttpConn gets for a failed session.
fn errno_of(_: TlsError) -> RawErrno {
    RawErrno::CONNRESET
}

impl FileService {
    /// The layer's own next step for connection `c`, before HttpConn is polled.
    pub(super) fn tls_step(&mut self, c: &mut FileConn, now: Time) -> Step {
        let FileConn {
            http,
            tls,
            recv_max,
            ..
        } = c;
        let Some(link) = tls.as_deref_mut() else {
            return Step::Poll;
        };
        if link.owed_recv.is_some() && !link.receiving && self.deliver(http, link, now) {
            return Step::Poll;
        }
        if link.flight == Flight::Idle {
            if link.broken {
                while link.session.take_records().is_some() {}
            } else if link.unsent.is_none() {
                link.unsent = link.session.take_records().map(|b| (b, 0));
            }
            if link.unsent.is_some() {
                // Data and handshake flights wait for room; once the session is closing or
                // failed, what is left (close_notify, an alert) is best effort.
                let wait = matches!(
                    link.session.phase(),
                    Phase::Open | Phase::Handshaking { .. }
                );
                link.flight = Flight::Flying { wait };
                self.tls_stats.record_sends += 1;
                return Step::Op(FileOp::SendRecords { wait });
            }
            if let Some(len) = link.owed_send.take() {
                let res = if link.broken {
                    Err(RawErrno::PIPE)
                } else {
                    Ok(len)
                };
                let reported = http.on_event(now, HttpEvent::Send(res));
                debug_assert!(reported.is_ok(), "{reported:?}");
                return Step::Poll;
            }
        }
        if let Some(op) = link.held {
            // A cancel of the layer's own names the socket: the close waits for it too.
            if link.flight == Flight::Idle && !link.cancelling {
                // Shutdown, Close or Free, performed as on a plain connection.
                link.held = None;
                return Step::Perform(op);
            }
            if matches!(
                link.flight,
                Flight::Flying { wait: true } | Flight::Blocked { .. }
            ) && matches!(op, Op::Close { .. })
                && !link.cancelling
            {
                // Records waiting for room the peer may never make: HttpConn is done, so
                // is the send.
                link.cancelling = true;
                return Step::Op(FileOp::Cancel);
            }
            return Step::Wait;
        }
        if link.owed_recv.is_some() && !link.receiving {
            link.receiving = true;
            *recv_max = TLS_RECV_MAX;
            return Step::Op(FileOp::Recv { max: TLS_RECV_MAX });
        }
        Step::Poll
    }

    /// HttpConn's `op` on a TLS connection.
    pub(super) fn tls_take(&mut self, c: &mut FileConn, now: Time, op: Op) -> Taken {
        let FileConn { http, tls, .. } = c;
        let Some(link) = tls.as_deref_mut() else {
            return Taken::Perform(op);
        };
        match op {
            Op::Recv { max } => {
                link.owed_recv = Some(max);
                Taken::Done
            }
            Op::Send(SendSrc::File { .. }) => {
                // Guard: `with_tls` refused a connection that sends from files.
                http.on_file_send_declined(now, false);
                Taken::Done
            }
            Op::Send(src) => Taken::Give(FileOp::Seal(src)),
            Op::Shutdown => {
                // After the response: a close_notify, then the shutdown. A failed session
                // has its alert queued instead.
                let _ = link.session.close();
                link.held = Some(op);
                Taken::Done
            }
            Op::Close { .. } | Op::Free => {
                link.held = Some(op);
                Taken::Done
            }
            op => Taken::Perform(op),
        }
    }

    /// Hands HttpConn what its owed receive gets, if anything is there: plaintext, the end
    /// of the stream, or the error. True when reported.
    fn deliver(&mut self, http: &mut HttpConn, link: &mut TlsLink, now: Time) -> bool {
        let Some(max) = link.owed_recv else {
            return false;
        };
        let plain = link.session.plaintext();
        let res = if !plain.is_empty() {
            let n = plain.len().min(max as usize);
            if http.wants_scratch() {
                if let Some(s) = self.scratch.pop() {
                    http.lend_scratch(s);
                }
            }
            let reported = http.on_event(now, HttpEvent::Recv(Ok(&plain[..n])));
            link.session.consume_plaintext(n);
            reported
        } else if let Some(e) = link.recv_error.take() {
            http.on_event(now, HttpEvent::Recv(Err(e)))
        } else if let Phase::Failed(e) = link.session.phase() {
            http.on_event(now, HttpEvent::Recv(Err(errno_of(e))))
        } else if link.eof || link.session.peer_closed() {
            http.on_event(now, HttpEvent::Recv(Ok(&[])))
        } else {
            return false;
        };
        link.owed_recv = None;
        debug_assert!(res.is_ok(), "{res:?}");
        true
    }

    /// A receive of ciphertext on TLS connection `c` completed.
    pub(super) fn tls_recv(
        &mut self,
        c: &mut FileConn,
        now: Time,
        res: Result<&[u8], RawErrno>,
    ) -> Result<(), ConnError> {
        let FileConn { http, tls, .. } = c;
        let Some(link) = tls.as_deref_mut().filter(|l| l.receiving) else {
            return Err(ConnError::UnexpectedHttp {
                phase: "TLS",
                event: "Recv",
            });
        };
        link.receiving = false;
        let handshaking = matches!(link.session.phase(), Phase::Handshaking { .. });
        match res {
            Ok([]) => {
                link.eof = true;
                let open = link.session.phase() == Phase::Open;
                if link.session.on_peer_eof() == PeerEnd::Truncated && open {
                    self.tls_stats.truncated += 1;
                }
            }
            Ok(bytes) => {
                if link.session.receive(bytes).is_err() {
                    self.tls_stats.failures += 1;
                }
            }
            Err(e) => link.recv_error = Some(e),
        }
        if handshaking && link.session.phase() == Phase::Open {
            self.tls_stats.handshakes += 1;
        }
        self.deliver(http, link, now);
        Ok(())
    }

    pub(super) fn seal_tls(&mut self, c: &mut FileConn, now: Time, src: SendSrc, chunk: &[u8]) {
        let FileConn { http, tls, .. } = c;
        let Some(link) = tls.as_deref_mut() else {
            return;
        };
        let head = http.head_bytes();
        let (head, body) = match src {
            SendSrc::Head { start, len } => (range(head, start, len), &[][..]),
            SendSrc::Buf { start, len, .. } => (&[][..], range(chunk, start, len)),
            SendSrc::HeadAndBuf { start, len, .. } => (head, range(chunk, start, len)),
            SendSrc::File { .. } => (&[][..], &[][..]),
        };
        let len = (head.len() + body.len()) as u32;
        // Encrypt into a buffer the worker kept, not a new one (the session takes it only
        // when it holds no records yet: tickets may be queued ahead of the response).
        if let Some(spare) = self.spare_records.pop() {
            link.session.recycle(spare);
        }
        let sealed = if !head.is_empty() && !body.is_empty() && head.len() + body.len() <= RECORD {
            // One record for a head and a small body, as for a plain send of both: a record
            // each would cost a second encryption and its overhead on the wire.
            let mut joined = core::mem::take(&mut self.joined);
            joined.clear();
            joined.extend_from_slice(head);
            joined.extend_from_slice(body);
            let sealed = link.session.send(&joined);
            self.joined = joined;
            sealed
        } else {
            [head, body]
                .into_iter()
                .filter(|b| !b.is_empty())
                .try_for_each(|b| link.session.send(b))
        };
        match sealed {
            Ok(()) => link.owed_send = Some(len),
            Err(e) => {
                self.tls_stats.failures += 1;
                let reported = http.on_event(now, HttpEvent::Send(Err(errno_of(e))));
                debug_assert!(reported.is_ok(), "{reported:?}");
            }
        }
    }

    pub(super) fn records_sent_tls(
        &mut self,
        c: &mut FileConn,
        now: Time,
        res: Result<u32, RawErrno>,
        (buf, at): (Vec<u8>, usize),
    ) -> Result<(), ConnError> {
        let FileConn { http, tls, .. } = c;
        let Some(link) = tls.as_deref_mut() else {
            return Err(ConnError::UnexpectedHttp {
                phase: "plain",
                event: "RecordsSent",
            });
        };
        let Flight::Flying { wait } = link.flight else {
            return Err(ConnError::UnexpectedHttp {
                phase: "TLS",
                event: "RecordsSent",
            });
        };
        let end = at + res.unwrap_or(0) as usize;
        match res {
            Ok(n) if end > buf.len() => {
                return Err(ConnError::SendOverrun {
                    sent: n,
                    len: (buf.len() - at) as u32,
                })
            }
            Ok(n) if n > 0 && end < buf.len() => {
                // Short: the rest goes next (best effort too: it made progress).
                link.unsent = Some((buf, end));
                link.flight = Flight::Idle;
                return Ok(());
            }
            Ok(_) if end == buf.len() => {
                link.flight = Flight::Idle;
                self.keep_records(buf);
                return Ok(());
            }
            Err(RawErrno::AGAIN) if wait => {
                link.unsent = Some((buf, at));
                link.flight = Flight::Blocked { wait };
                return Ok(());
            }
            _ => {}
        }
        // Failed (or a best-effort send found no room): the records are dropped, and with
        // them any made after; HttpConn's send, if one is owed, fails.
        link.flight = Flight::Idle;
        link.broken = true;
        while link.session.take_records().is_some() {}
        self.keep_records(buf);
        if let Some(_len) = link.owed_send.take() {
            let e = res.err().unwrap_or(RawErrno::PIPE);
            http.on_event(now, HttpEvent::Send(Err(e)))?;
        }
        Ok(())
    }

    /// Whether a cancel's completion on connection `c` is the layer's own (taken here).
    pub(super) fn own_cancel_done(c: &mut FileConn) -> bool {
        match c.tls.as_deref_mut().filter(|l| l.cancelling) {
            Some(link) => {
                link.cancelling = false;
                true
            }
            None => false,
        }
    }

    /// A buffer records went out in, kept for the next seal.
    fn keep_records(&mut self, mut buf: Vec<u8>) {
        if self.spare_records.len() < SPARE_RECORDS && buf.capacity() <= SPARE_RECORDS_MAX {
            buf.clear();
            self.spare_records.push(buf);
        }
    }
}

/// `bytes[start..start + len]`, or what there is of it.
fn range(bytes: &[u8], start: u32, len: u32) -> &[u8] {
    let start = (start as usize).min(bytes.len());
    let end = start.saturating_add(len as usize).min(bytes.len());
    &bytes[start..end]
}
