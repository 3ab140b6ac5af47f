//! The TLS layer of the file service against a rustls client in memory: a simulated backend
//! performs every [`FileOp`] (receives from the client's bytes, sends of records into the
//! client, stats, opens and reads of one simulated file), and what the client reads back
//! must be the HTTP responses, byte for byte, however the bytes are cut on the way.

use std::string::String;
use std::sync::Arc;
use std::vec;
use std::vec::Vec;

use proptest::prelude::*;
use rustls::client::ClientConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

use super::*;
use crate::filecache::CacheConfig;
use crate::httpconn::{Config, FileKind, HttpEvent};
use crate::tls::TlsSession;
use crate::token::{Generation, OpKind, Slot};

const NOW: Time = Time {
    mono_ms: 1_000,
    mono_us: 0,
    unix_secs: 1_700_000_000,
};
const HEADER_TIMEOUT_MS: u64 = 5_000;
/// The simulated file `/f`: byte `i` is `i % 251`.
const FILE_SIZE: u64 = 10_000;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn server_config() -> Arc<ServerConfig> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(include_bytes!("../tls/testdata/ecdsa.pem"))
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(include_bytes!("../tls/testdata/ecdsa.key")).unwrap();
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn client(version: &'static SupportedProtocolVersion) -> ClientConnection {
    let mut roots = RootCertStore::empty();
    let ca = include_str!("../tls/testdata/ca.pem");
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    ClientConnection::new(Arc::new(config), name).unwrap()
}

fn file_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// A TLS connection of the file service, its simulated kernel, and the client at the other
/// end of the simulated socket.
struct Wire {
    svc: FileService,
    fc: FileConn,
    client: ClientConnection,
    /// The client's bytes not yet received by the server.
    to_server: Vec<u8>,
    /// The client closed its side once `to_server` is received.
    client_eof: bool,
    /// A receive in flight (its max).
    recv: Option<u32>,
    /// A send of records in flight.
    send: Option<((Vec<u8>, usize), bool)>,
    /// Most bytes a receive gives and a send takes at once.
    recv_cut: usize,
    send_cut: usize,
    /// Sends never complete (the client reads nothing) until cancelled.
    stall_sends: bool,
    /// Cancels stay in flight.
    hold_cancels: bool,
    /// The next send of records fails (the peer reset the connection).
    fail_send: bool,
    /// Other operations in flight.
    others: Vec<FileOp>,
    bufs: [Vec<u8>; 2],
    /// Every byte the server sent, and the plaintext the client read.
    sent: Vec<u8>,
    got: Vec<u8>,
    /// The client read a close_notify.
    clean_end: bool,
    /// What the client made of the server's records, when it refused them.
    client_error: Option<rustls::Error>,
    /// Sends HttpConn asked for.
    seals: usize,
    shutdown: bool,
    closed: bool,
    freed: bool,
}

impl Wire {
    fn new(version: &'static SupportedProtocolVersion) -> Wire {
        Self::with_head(version, false)
    }

    /// With HttpConn's `head_with_body`: a response's head and first chunk in one send.
    fn with_head(version: &'static SupportedProtocolVersion, head_with_body: bool) -> Wire {
        let svc = FileService::new(ServiceConfig {
            cache: CacheConfig {
                entries: 4,
                valid_ms: 60_000,
                body_budget: 1 << 16,
                body_max: 4_096,
                max_path: 256,
                inactive_ms: 0,
            },
            chunks: 4,
            file_send: FileSend::Off,
        });
        let cfg = Config {
            chunk: 4_096,
            header_timeout_ms: HEADER_TIMEOUT_MS,
            head_with_body,
            ..Config::default()
        };
        let http = HttpConn::new(cfg, NOW);
        let session = TlsSession::new(server_config(), NOW.mono_ms, HEADER_TIMEOUT_MS).unwrap();
        let fc = FileConn::with_tls(http, session).expect("no sends past the session");
        Wire {
            svc,
            fc,
            client: client(version),
            to_server: Vec::new(),
            client_eof: false,
            recv: None,
            send: None,
            recv_cut: usize::MAX,
            send_cut: usize::MAX,
            stall_sends: false,
            hold_cancels: false,
            fail_send: false,
            others: Vec::new(),
            bufs: [vec![0; 8_192], vec![0; 8_192]],
            sent: Vec::new(),
            got: Vec::new(),
            clean_end: false,
            client_error: None,
            seals: 0,
            shutdown: false,
            closed: false,
            freed: false,
        }
    }

    fn token() -> Token {
        Token::new(OpKind::Recv, Slot(0), Generation::ZERO)
    }

    /// Takes the connection's operations until it has none.
    fn drive(&mut self) {
        while let Some(op) = self.svc.next(&mut self.fc, Self::token(), NOW) {
            assert!(!self.freed, "{op:?} after Free");
            match op {
                FileOp::Recv { max } => {
                    assert!(self.recv.is_none(), "two receives in flight");
                    self.recv = Some(max);
                }
                FileOp::Seal(src) => {
                    let chunk: &[u8] = match src {
                        SendSrc::Buf { buf, .. } | SendSrc::HeadAndBuf { buf, .. } => {
                            assert!(self.fc.holds(buf));
                            &self.bufs[usize::from(buf.0)]
                        }
                        _ => &[],
                    };
                    self.svc.seal(&mut self.fc, NOW, src, chunk);
                    self.seals += 1;
                }
                FileOp::SendRecords { wait } => {
                    assert!(self.send.is_none(), "two sends of records in flight");
                    let records = self.fc.take_records().expect("records to send");
                    assert!(records.1 < records.0.len());
                    self.send = Some((records, wait));
                }
                FileOp::ReadKept {
                    buf, buf_pos, len, ..
                } => {
                    let dst = &mut self.bufs[usize::from(buf.0)];
                    let dst = &mut dst[buf_pos as usize..(buf_pos + len) as usize];
                    self.svc.read_kept(&mut self.fc, NOW, buf, dst);
                }
                FileOp::Release(_) => {}
                FileOp::Close { reset } => {
                    assert!(!reset);
                    assert!(
                        self.recv.is_none() && self.send.is_none(),
                        "closed in flight"
                    );
                    self.closed = true;
                }
                FileOp::Free => {
                    assert!(self.closed && self.others.is_empty());
                    self.freed = true;
                }
                FileOp::Send(_) | FileOp::SendFile { .. } | FileOp::SendZc(_) => {
                    panic!("plaintext send on a TLS connection: {op:?}")
                }
                op => self.others.push(op),
            }
        }
    }

    /// Completes the operations other than receives and sends, in order.
    fn complete_others(&mut self) -> bool {
        let (ops, held): (Vec<FileOp>, Vec<FileOp>) = core::mem::take(&mut self.others)
            .into_iter()
            .partition(|op| !(self.hold_cancels && *op == FileOp::Cancel));
        self.others = held;
        let progress = !ops.is_empty();
        for op in ops {
            self.complete(op);
        }
        progress
    }

    fn complete(&mut self, op: FileOp) {
        let (svc, fc) = (&mut self.svc, &mut self.fc);
        match op {
            FileOp::Stat => {
                let found = fc.http().path() == b"f\0";
                let seen = found
                    .then_some((
                        FileInfo {
                            kind: FileKind::Regular,
                            size: FILE_SIZE,
                            mtime_secs: 1,
                            dio: None,
                        },
                        FileId {
                            dev: 1,
                            ino: 2,
                            mtime_ns: 3,
                        },
                    ))
                    .ok_or(RawErrno::NOENT);
                svc.on_stat(fc, NOW, seen).unwrap();
            }
            FileOp::Open { .. } => {
                svc.on_open(fc, NOW, Ok(())).unwrap();
            }
            FileOp::Read(ChunkRead {
                buf,
                offset,
                len,
                buf_pos,
                ..
            }) => {
                let n = FILE_SIZE.saturating_sub(offset).min(u64::from(len));
                let b = &mut self.bufs[usize::from(buf.0)];
                for i in 0..n {
                    b[buf_pos as usize + i as usize] = file_byte(offset + i);
                }
                svc.on_read(fc, NOW, buf, Ok(n as u32), b).unwrap();
            }
            FileOp::CloseFile => fc.http_mut().on_event(NOW, HttpEvent::FileClosed).unwrap(),
            FileOp::Shutdown => {
                self.shutdown = true;
                fc.http_mut()
                    .on_event(NOW, HttpEvent::ShutdownDone)
                    .unwrap();
            }
            FileOp::Cancel => {
                if self.recv.take().is_some() {
                    svc.on_recv(fc, NOW, Err(RawErrno::CANCELED)).unwrap();
                }
                if let Some((records, _)) = self.send.take() {
                    svc.on_records_sent(fc, NOW, Err(RawErrno::CANCELED), records)
                        .unwrap();
                }
                svc.on_cancel_done(fc, NOW).unwrap();
            }
            other => panic!("not in flight: {other:?}"),
        }
    }

    /// The send of records in flight takes what it can (`send_cut` at most).
    fn complete_send(&mut self) -> bool {
        if self.stall_sends {
            return false;
        }
        let Some(((buf, at), _wait)) = self.send.take() else {
            return false;
        };
        if core::mem::take(&mut self.fail_send) {
            let reset = Err(RawErrno::CONNRESET);
            self.svc
                .on_records_sent(&mut self.fc, NOW, reset, (buf, at))
                .unwrap();
            return true;
        }
        let n = (buf.len() - at).min(self.send_cut);
        let mut piece = &buf[at..at + n];
        self.sent.extend_from_slice(piece);
        while !piece.is_empty() {
            self.client.read_tls(&mut piece).unwrap();
        }
        if let Err(e) = self.client.process_new_packets() {
            assert!(self.client_error.is_none(), "records after the alert");
            self.client_error = Some(e);
        }
        self.svc
            .on_records_sent(&mut self.fc, NOW, Ok(n as u32), (buf, at))
            .unwrap();
        true
    }

    /// The receive in flight gets what the client sent (`recv_cut` at most), or its end.
    fn complete_recv(&mut self) -> bool {
        let Some(max) = self.recv else {
            return false;
        };
        let res: Result<Vec<u8>, RawErrno> = if !self.to_server.is_empty() {
            let n = self.to_server.len().min(max as usize).min(self.recv_cut);
            Ok(self.to_server.drain(..n).collect())
        } else if self.client_eof {
            Ok(Vec::new())
        } else {
            return false;
        };
        self.recv = None;
        let res = res.as_deref().map_err(|e| *e);
        self.svc.on_recv(&mut self.fc, NOW, res).unwrap();
        true
    }

    /// The client's side: what it wants to send goes on the wire, what it decrypted is read.
    fn client_turn(&mut self) -> bool {
        let mut progress = false;
        while self.client.wants_write() {
            self.client.write_tls(&mut self.to_server).unwrap();
            progress = true;
        }
        let mut buf = [0u8; 4_096];
        loop {
            match std::io::Read::read(&mut self.client.reader(), &mut buf) {
                Ok(0) => {
                    self.clean_end = true;
                    break;
                }
                Ok(n) => {
                    self.got.extend_from_slice(&buf[..n]);
                    progress = true;
                }
                Err(_) => break,
            }
        }
        progress
    }

    /// Runs until nothing moves.
    fn run(&mut self) {
        for _ in 0..100_000 {
            self.drive();
            let moved = self.client_turn()
                | self.complete_others()
                | self.complete_send()
                | self.complete_recv();
            if !moved {
                self.drive();
                return;
            }
        }
        panic!("no end");
    }

    fn request(&mut self, text: &str) {
        std::io::Write::write_all(&mut self.client.writer(), text.as_bytes()).unwrap();
    }
}

/// The responses in `got`: (status line, body) each, split by Content-Length.
fn responses(mut got: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    while !got.is_empty() {
        let end = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a whole head");
        let head = String::from_utf8_lossy(&got[..end]).into_owned();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        let body = got[end + 4..end + 4 + len].to_vec();
        out.push((head.lines().next().unwrap().into(), body));
        got = &got[end + 4 + len..];
    }
    out
}

fn the_file() -> Vec<u8> {
    (0..FILE_SIZE).map(file_byte).collect()
}

#[test]
fn a_file_over_tls_arrives_byte_exact_on_both_versions() {
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut w = Wire::new(version);
        w.request("GET /f HTTP/1.1\r\nHost: x\r\n\r\nGET /missing HTTP/1.1\r\nHost: x\r\n\r\n");
        w.run();
        assert!(w.client_error.is_none(), "{:?}", w.client_error);
        let got = responses(&w.got);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].0, "HTTP/1.1 200 OK");
        assert!(got[0].1 == the_file(), "the body differs");
        assert_eq!(got[1].0, "HTTP/1.1 404 Not Found");
        assert_eq!(w.svc.tls_stats().handshakes, 1);
        // Still open, keep-alive; the client's close_notify and end close it.
        assert!(!w.closed);
        w.client.send_close_notify();
        w.client_eof = true;
        w.run();
        assert!(w.freed, "{:?}", w.fc);
        assert_eq!(w.svc.tls_stats().truncated, 0);
        assert_eq!(w.svc.chunks_in_use(), 0);
    }
}

/// The TLS record types in `bytes`, whole records only.
fn record_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
        types.push(bytes[0]);
        bytes = &bytes[(5 + len).min(bytes.len())..];
    }
    types
}

#[test]
fn a_head_and_its_first_chunk_leave_in_one_record() {
    let mut w = Wire::with_head(&rustls::version::TLS12, true);
    w.run();
    let (mark, seals) = (w.sent.len(), w.seals);
    w.request("GET /f HTTP/1.1\r\nHost: x\r\n\r\n");
    w.run();
    let got = responses(&w.got);
    assert!(got.len() == 1 && got[0].1 == the_file());
    // TLS 1.2: after the handshake, application data only (type 23), a record per send.
    let types = record_types(&w.sent[mark..]);
    assert!(types.iter().all(|&t| t == 23), "{types:?}");
    assert!(w.seals - seals >= 2, "a chunked body: {}", w.seals - seals);
    assert_eq!(types.len(), w.seals - seals, "records per send");
}

#[test]
fn a_connection_that_would_send_from_files_is_refused() {
    let cfg = Config {
        file_send: true,
        ..Config::default()
    };
    let session = TlsSession::new(server_config(), 0, 1).unwrap();
    assert!(FileConn::with_tls(HttpConn::new(cfg, NOW), session).is_none());
}

#[test]
fn connection_close_sends_close_notify_before_the_shutdown() {
    let mut w = Wire::new(&rustls::version::TLS13);
    w.request("GET /f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    w.run();
    let got = responses(&w.got);
    assert_eq!(got.len(), 1);
    assert!(got[0].1 == the_file());
    assert!(w.clean_end, "no close_notify came");
    assert!(w.shutdown);
    w.client_eof = true;
    w.run();
    assert!(w.freed);
}

#[test]
fn an_end_without_close_notify_is_counted_as_truncated() {
    let mut w = Wire::new(&rustls::version::TLS13);
    w.request("GET /f HTTP/1.1\r\nHost: x\r\n\r\n");
    w.run();
    w.client_eof = true;
    w.run();
    assert!(w.freed);
    assert_eq!(w.svc.tls_stats().truncated, 1);
}

#[test]
fn plain_http_on_a_tls_connection_gets_an_alert_and_the_connection_ends() {
    let mut w = Wire::new(&rustls::version::TLS13);
    w.to_server
        .extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    w.run();
    assert!(w.freed, "{:?}", w.fc);
    // An alert record (content type 21), and nothing else.
    assert_eq!(w.sent.first(), Some(&21), "{:?}", w.sent);
    assert!(
        matches!(w.client_error, Some(rustls::Error::AlertReceived(_))),
        "{:?}",
        w.client_error
    );
    assert_eq!(w.svc.tls_stats().failures, 1);
    assert_eq!(w.svc.tls_stats().handshakes, 0);
}

#[test]
fn a_stalled_handshake_ends_at_the_header_deadline() {
    let mut w = Wire::new(&rustls::version::TLS13);
    // Half a ClientHello, then nothing.
    w.client_turn();
    w.to_server.truncate(w.to_server.len() / 2);
    w.run();
    assert!(!w.closed);
    let deadline = w.fc.deadline_ms().expect("a deadline while handshaking");
    assert_eq!(deadline, NOW.mono_ms + HEADER_TIMEOUT_MS);
    let early = Time {
        mono_ms: deadline - 1,
        ..NOW
    };
    w.fc.on_tick(early);
    w.run();
    assert!(!w.closed);
    w.fc.on_tick(Time {
        mono_ms: deadline,
        ..NOW
    });
    w.run();
    assert!(w.freed, "{:?}", w.fc);
}

#[test]
fn a_flight_the_peer_never_reads_is_cancelled_when_the_connection_closes() {
    let mut w = Wire::new(&rustls::version::TLS13);
    w.stall_sends = true;
    // The ClientHello, then the client's end: the server's flight is never taken.
    w.client_turn();
    w.client_eof = true;
    w.run();
    assert!(w.freed, "{:?}", w.fc);
    assert!(w.send.is_none());
}

/// The send the layer cancelled completes on its own before the cancel does: the socket is
/// closed only after the cancel's completion too (it names the socket's descriptor, which a
/// new connection could get once closed). Found by the `tls_file_conn` fuzz target.
#[test]
fn the_close_waits_for_the_layers_own_cancel() {
    let mut w = Wire::new(&rustls::version::TLS13);
    w.stall_sends = true;
    w.hold_cancels = true;
    w.client_turn();
    w.client_eof = true;
    w.run();
    assert_eq!(
        w.others,
        [FileOp::Cancel],
        "the layer cancels its stalled flight"
    );
    assert!(w.send.is_some() && !w.closed);
    // The send completes (the peer read after all), the cancel not yet.
    w.stall_sends = false;
    assert!(w.complete_send());
    w.drive();
    assert!(!w.closed, "closed with the cancel in flight");
    w.hold_cancels = false;
    w.run();
    assert!(w.freed, "{:?}", w.fc);
}

/// Records lost to a failed send leave a gap no later record may follow: the server's
/// flight fails, the client's next flight still arrives, and nothing more is sent.
#[test]
fn nothing_is_sent_after_a_send_of_records_failed() {
    let mut w = Wire::new(&rustls::version::TLS12);
    w.fail_send = true;
    w.request("GET /f HTTP/1.1\r\nHost: x\r\n\r\n");
    w.run();
    assert!(w.sent.is_empty());
    assert_eq!(w.svc.tls_stats().record_sends, 1);
    // More from the client (a second ClientHello's worth of bytes) makes no send either.
    w.to_server
        .extend_from_slice(&client_hello_of(&rustls::version::TLS12));
    w.client_eof = true;
    w.run();
    assert!(w.freed, "{:?}", w.fc);
    assert!(
        w.sent.is_empty(),
        "{} bytes after the failure",
        w.sent.len()
    );
    assert_eq!(w.svc.tls_stats().record_sends, 1);
}

fn client_hello_of(version: &'static SupportedProtocolVersion) -> Vec<u8> {
    let mut c = client(version);
    let mut out = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut out).unwrap();
    }
    out
}

#[test]
fn a_response_held_by_a_slow_reader_completes_as_it_reads() {
    let mut w = Wire::new(&rustls::version::TLS12);
    w.send_cut = 100;
    w.recv_cut = 1;
    w.request("GET /f HTTP/1.1\r\nHost: x\r\n\r\n");
    w.run();
    let got = responses(&w.got);
    assert_eq!(got.len(), 1);
    assert!(got[0].1 == the_file());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// However the kernel cuts receives and sends, the responses arrive whole and the
    /// connection ends freed.
    #[test]
    fn any_cuts_give_the_same_responses(
        recv_cut in 1usize..3_000,
        send_cut in 1usize..20_000,
        tls13 in any::<bool>(),
        requests in 1usize..4,
    ) {
        let version = if tls13 { &rustls::version::TLS13 } else { &rustls::version::TLS12 };
        let mut w = Wire::new(version);
        w.recv_cut = recv_cut;
        w.send_cut = send_cut;
        for _ in 0..requests {
            w.request("GET /f HTTP/1.1\r\nHost: x\r\n\r\n");
        }
        w.run();
        let got = responses(&w.got);
        prop_assert_eq!(got.len(), requests);
        for (status, body) in got {
            prop_assert_eq!(status, "HTTP/1.1 200 OK");
            prop_assert!(body == the_file());
        }
        w.client_eof = true;
        w.run();
        prop_assert!(w.freed);
        prop_assert_eq!(w.svc.chunks_in_use(), 0);
    }
}
