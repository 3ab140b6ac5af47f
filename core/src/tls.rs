//! TLS as a layer of a connection, sans-IO: ciphertext in, plaintext out for the protocol
//! machine above it; plaintext to send in, records out in owned buffers for the backend.
//!
//! [`TlsSession`] wraps rustls' unbuffered server connection
//! (`rustls::unbuffered`), which reads and writes only the slices it is given: the same
//! records flow whichever backend receives and sends them, and proptest and the fuzzers
//! reach the record handling without a socket. A backend performs what the session
//! describes and knows nothing of TLS beyond submitting bytes:
//!
//! ```text
//! received bytes ──receive()──▶ TlsSession ──plaintext()/consume_plaintext()──▶ HTTP machine
//!                                    │ ▲
//!        backend ◀──take_records()───┘ └────────send(plaintext)/close()──────── HTTP machine
//! ```
//!
//! What it decides: when the handshake is complete, what it must answer (handshake records,
//! alerts, a close_notify), whether the peer ended cleanly, and when the handshake has taken
//! too long ([`TlsSession::deadline_ms`]). Errors are values ([`TlsError`]); after one, the
//! session accepts no more input and offers at most the alert rustls queued for the peer.
//!
//! What it does not do: read a clock (time comes in as milliseconds), hold a socket, choose a
//! crypto provider or load a certificate (the [`ServerConfig`] comes built from outside, by
//! `ringwork_sys::tls` in the servers), or encrypt without copying: plaintext is encrypted
//! into a buffer the session owns. Early data (0-RTT) is read as ordinary input if a
//! configuration enables it; the servers' does not.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
pub use rustls::ServerConfig;

/// Why a TLS session ended or refused an operation. Small and `Copy`: the detail rustls
/// gives is reduced to what a server acts on (close the connection) and counts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TlsError {
    /// The peer sent bytes that are not TLS records, or a record that does not decrypt.
    BadRecord,
    /// The peer's handshake messages were malformed or unacceptable (no shared version,
    /// cipher suite or protocol, a message out of order).
    Handshake,
    /// The peer sent a fatal alert.
    PeerAlert,
    /// The handshake was not complete by its deadline.
    HandshakeTimeout,
    /// The peer closed its side of the stream without a close_notify: what it sent may have
    /// been cut short by an attacker (RFC 8446, section 6.1).
    Truncated,
    /// Plaintext offered after the session was closed or failed.
    Closed,
    /// rustls refused for a reason of its own (configuration, exhausted sequence numbers).
    Internal,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsError::BadRecord => "the peer sent bytes that are not valid TLS records",
            TlsError::Handshake => "the TLS handshake failed",
            TlsError::PeerAlert => "the peer sent a fatal TLS alert",
            TlsError::HandshakeTimeout => "the TLS handshake was not complete in time",
            TlsError::Truncated => "the peer closed the connection without a TLS close_notify",
            TlsError::Closed => "the TLS session is closed",
            TlsError::Internal => "TLS failed internally",
        })
    }
}

impl TlsError {
    fn of(error: &rustls::Error) -> TlsError {
        use rustls::Error as E;
        match error {
            E::InvalidMessage(_)
            | E::DecryptError
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. } => TlsError::BadRecord,
            E::AlertReceived(_) => TlsError::PeerAlert,
            E::PeerIncompatible(_)
            | E::PeerMisbehaved(_)
            | E::NoApplicationProtocol
            | E::InvalidCertificate(_)
            | E::NoCertificatesPresented
            | E::HandshakeNotComplete => TlsError::Handshake,
            _ => TlsError::Internal,
        }
    }
}

/// Where a session is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// Handshake in progress; it fails at `deadline_ms`.
    Handshaking {
        /// When [`TlsSession::on_deadline`] ends the session if it is still handshaking.
        deadline_ms: u64,
    },
    /// Handshake complete: application data flows both ways.
    Open,
    /// A close_notify is queued or sent: no more plaintext is accepted.
    Closing,
    /// Failed: no more input is accepted; [`TlsSession::take_records`] may still hold an
    /// alert for the peer.
    Failed(TlsError),
}

/// What a session knows about what the peer has ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PeerEnd {
    /// The peer sent close_notify: everything it sent arrived.
    CloseNotify,
    /// The stream ended with no close_notify ([`TlsError::Truncated`]).
    Truncated,
}

/// One TLS server connection's record layer. See the [module docs](self).
pub struct TlsSession {
    conn: UnbufferedServerConnection,
    phase: Phase,
    /// Ciphertext received and not yet consumed by rustls (a partial record, mostly).
    incoming: Vec<u8>,
    /// Decrypted bytes the machine above has not consumed.
    plaintext: Vec<u8>,
    /// Records ready to send, handed out whole by `take_records`.
    outgoing: Vec<u8>,
    /// Plaintext sent before the handshake allowed application data.
    pending: Vec<u8>,
    /// A close was asked for: the close_notify goes out once the handshake allows it.
    close_wanted: bool,
    peer_closed: bool,
}

impl fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSession")
            .field("phase", &self.phase)
            .field("incoming", &self.incoming.len())
            .field("plaintext", &self.plaintext.len())
            .field("outgoing", &self.outgoing.len())
            .field("pending", &self.pending.len())
            .field("peer_closed", &self.peer_closed)
            .finish()
    }
}

impl TlsSession {
    /// A session for a connection accepted at `now_ms`, whose handshake must be complete by
    /// `now_ms + handshake_timeout_ms`.
    pub fn new(
        config: Arc<ServerConfig>,
        now_ms: u64,
        handshake_timeout_ms: u64,
    ) -> Result<TlsSession, TlsError> {
        let conn = UnbufferedServerConnection::new(config).map_err(|e| TlsError::of(&e))?;
        Ok(TlsSession {
            conn,
            phase: Phase::Handshaking {
                deadline_ms: now_ms.saturating_add(handshake_timeout_ms),
            },
            incoming: Vec::new(),
            plaintext: Vec::new(),
            outgoing: Vec::new(),
            pending: Vec::new(),
            close_wanted: false,
            peer_closed: false,
        })
    }

    /// Where the session is.
    #[must_use]
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Until the handshake is complete, when [`TlsSession::on_deadline`] must be called.
    #[must_use]
    pub fn deadline_ms(&self) -> Option<u64> {
        match self.phase {
            Phase::Handshaking { deadline_ms } => Some(deadline_ms),
            _ => None,
        }
    }

    /// The clock reached `now_ms`: a handshake still in progress past its deadline fails.
    pub fn on_deadline(&mut self, now_ms: u64) -> Result<(), TlsError> {
        match self.phase {
            Phase::Handshaking { deadline_ms } if now_ms >= deadline_ms => {
                self.fail(TlsError::HandshakeTimeout)
            }
            Phase::Failed(e) => Err(e),
            _ => Ok(()),
        }
    }

    /// The protocol the peer and this server agreed through ALPN (`b"http/1.1"`), once
    /// known.
    #[must_use]
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The TLS version agreed (`TLSv1_2`, `TLSv1_3`), once known.
    #[must_use]
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// Ciphertext received from the peer. Afterwards the decrypted bytes wait in
    /// [`TlsSession::plaintext`] and what must be sent (handshake records, alerts, encrypted
    /// plaintext queued before the handshake was complete) in
    /// [`TlsSession::take_records`]: poll both after every call, the records even on an
    /// error (the alert that tells the peer why).
    pub fn receive(&mut self, ciphertext: &[u8]) -> Result<(), TlsError> {
        if let Phase::Failed(e) = self.phase {
            return Err(e);
        }
        // rustls bounds what stays here: a partial record (at most 16 KiB and 256 bytes of
        // expansion, RFC 8446 section 5.2) or the records of a handshake message not yet
        // whole (a message is at most 64 KiB; longer ones fail).
        self.incoming.extend_from_slice(ciphertext);
        let result = self.process(&[]);
        if self.incoming.is_empty() {
            // An idle connection keeps no receive buffer.
            self.incoming = Vec::new();
        }
        result
    }

    /// Decrypted bytes not yet consumed, oldest first.
    #[must_use]
    pub fn plaintext(&self) -> &[u8] {
        &self.plaintext
    }

    /// The machine above consumed `n` bytes of [`TlsSession::plaintext`].
    pub fn consume_plaintext(&mut self, n: usize) {
        self.plaintext.drain(..n.min(self.plaintext.len()));
        if self.plaintext.is_empty() {
            self.plaintext = Vec::new();
        }
    }

    /// Plaintext to send: encrypted at once into records once the handshake allows it, kept
    /// until then.
    pub fn send(&mut self, plaintext: &[u8]) -> Result<(), TlsError> {
        match self.phase {
            Phase::Failed(e) => Err(e),
            Phase::Closing => Err(TlsError::Closed),
            Phase::Handshaking { .. } => {
                self.pending.extend_from_slice(plaintext);
                Ok(())
            }
            Phase::Open => self.process(plaintext),
        }
    }

    /// Queue a close_notify after everything sent so far (once the handshake allows
    /// application data). The peer's own close_notify is not waited for.
    pub fn close(&mut self) -> Result<(), TlsError> {
        if let Phase::Failed(e) = self.phase {
            return Err(e);
        }
        self.close_wanted = true;
        self.process(&[])
    }

    /// The records to send now, as one owned buffer, or `None` when there are none. Send
    /// them in the order they are taken.
    #[must_use]
    pub fn take_records(&mut self) -> Option<Vec<u8>> {
        if self.outgoing.is_empty() {
            None
        } else {
            Some(core::mem::take(&mut self.outgoing))
        }
    }

    /// A buffer `take_records` handed out, back once sent: its capacity serves the next
    /// records.
    pub fn recycle(&mut self, mut sent: Vec<u8>) {
        if self.outgoing.is_empty() && sent.capacity() > self.outgoing.capacity() {
            sent.clear();
            self.outgoing = sent;
        }
    }

    /// Whether the peer sent a close_notify (it sends nothing more).
    #[must_use]
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// The peer closed its side of the stream (a receive of 0 bytes): whether it said so
    /// with a close_notify first.
    #[must_use]
    pub fn on_peer_eof(&mut self) -> PeerEnd {
        if self.peer_closed {
            PeerEnd::CloseNotify
        } else {
            if !matches!(self.phase, Phase::Failed(_)) {
                self.phase = Phase::Failed(TlsError::Truncated);
            }
            PeerEnd::Truncated
        }
    }

    fn fail(&mut self, error: TlsError) -> Result<(), TlsError> {
        self.phase = Phase::Failed(error);
        self.pending = Vec::new();
        Err(error)
    }

    /// Runs rustls until it needs more input, encrypting `pending` and then `extra` once
    /// application data may be sent. The one place the unbuffered states are handled.
    fn process(&mut self, extra: &[u8]) -> Result<(), TlsError> {
        let mut extra = Some(extra).filter(|e| !e.is_empty());
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    self.incoming.drain(..discard);
                    let error = TlsError::of(&e);
                    self.flush_alert();
                    return self.fail(error);
                }
            };
            let more = match state {
                ConnectionState::ReadTraffic(mut read) => {
                    while let Some(record) = read.next_record() {
                        let record = record.map_err(|e| TlsError::of(&e));
                        let record = match record {
                            Ok(record) => record,
                            Err(e) => return self.fail(e),
                        };
                        discard += record.discard;
                        self.plaintext.extend_from_slice(record.payload);
                    }
                    true
                }
                ConnectionState::ReadEarlyData(mut read) => {
                    while let Some(Ok(record)) = read.next_record() {
                        discard += record.discard;
                        self.plaintext.extend_from_slice(record.payload);
                    }
                    true
                }
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    true
                }
                ConnectionState::Closed => false,
                ConnectionState::EncodeTlsData(mut encode) => {
                    if let Err(e) = encode_into(&mut self.outgoing, |out| encode.encode(out)) {
                        return self.fail(e);
                    }
                    true
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    // The records are in `outgoing`, which the backend sends in order: for
                    // rustls they are transmitted.
                    transmit.done();
                    true
                }
                ConnectionState::BlockedHandshake => false,
                ConnectionState::WriteTraffic(mut write) => {
                    if matches!(self.phase, Phase::Handshaking { .. }) {
                        self.phase = Phase::Open;
                    }
                    let pending = core::mem::take(&mut self.pending);
                    for data in [Some(&pending[..]), extra.take()].into_iter().flatten() {
                        let out = &mut self.outgoing;
                        if let Err(e) = encrypt_into(out, |buf| write.encrypt(data, buf)) {
                            return self.fail(e);
                        }
                    }
                    if self.close_wanted && self.phase == Phase::Open {
                        let out = &mut self.outgoing;
                        if let Err(e) = encrypt_into(out, |buf| write.queue_close_notify(buf)) {
                            return self.fail(e);
                        }
                        self.phase = Phase::Closing;
                    }
                    false
                }
                // `ConnectionState` is non_exhaustive: a state this version does not know
                // needs nothing from us yet.
                _ => false,
            };
            self.incoming.drain(..discard);
            if !more {
                break;
            }
        }
        if let Some(extra) = extra {
            // Still handshaking: the bytes go out once it is complete.
            self.pending.extend_from_slice(extra);
        }
        Ok(())
    }

    /// After an error rustls may hold records for the peer, the alert that says why last:
    /// encode them. While it holds some, `process_tls_records` hands them out before it
    /// looks at input, so the input is not read again (a failed session's deframer must not
    /// run: it would fail again and queue a second fatal alert).
    fn flush_alert(&mut self) {
        while self.conn.wants_write() {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            let Ok(ConnectionState::EncodeTlsData(mut encode)) = state else {
                // `wants_write` guards: queued records come before anything else.
                return;
            };
            if encode_into(&mut self.outgoing, |out| encode.encode(out)).is_err() {
                return;
            }
        }
    }
}

/// Appends what `encode` writes to `out`, growing it to the size rustls asks for.
fn encode_into(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), TlsError> {
    write_grown(out, |buf| match encode(buf) {
        Ok(n) => Ok(Ok(n)),
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            Ok(Err(required_size))
        }
        Err(EncodeError::AlreadyEncoded) => Err(TlsError::Internal),
    })
}

/// Appends what `encrypt` writes to `out`, growing it to the size rustls asks for.
fn encrypt_into(
    out: &mut Vec<u8>,
    mut encrypt: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> Result<(), TlsError> {
    write_grown(out, |buf| match encrypt(buf) {
        Ok(n) => Ok(Ok(n)),
        Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
            Ok(Err(required_size))
        }
        Err(_) => Err(TlsError::Internal),
    })
}

/// Runs `write` on the spare end of `out`: `Ok(Ok(n))` wrote `n` bytes, `Ok(Err(size))` asks
/// for `size` bytes of room (rustls writes nothing then), and is retried once with that room.
fn write_grown(
    out: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<Result<usize, usize>, TlsError>,
) -> Result<(), TlsError> {
    let start = out.len();
    let mut room = 0;
    for _ in 0..2 {
        out.resize(start + room, 0);
        match write(&mut out[start..])? {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(required) => room = required,
        }
    }
    out.truncate(start);
    Err(TlsError::Internal)
}

#[cfg(test)]
mod tests;
