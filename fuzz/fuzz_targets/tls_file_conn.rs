//! A TLS connection of the file service (`FileConn::with_tls`) between a real rustls client
//! and a simulated kernel that the fuzzer drives: which completion comes next, how much of
//! the client's bytes a receive gets, how much of a send of records the socket takes (or
//! that it fails), a byte of the client's flight corrupted, the client's end, ticks and
//! aborts. Whatever happens, no plaintext send reaches the kernel (only sealed records), at
//! most one send of records and one receive are in flight, the socket is closed only with
//! none in flight, a request the client made is answered byte-exact or the connection ends,
//! and once aborted with everything owed completed the connection is freed with every chunk
//! buffer back.
#![no_main]

use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringwork_core::errno::RawErrno;
use ringwork_core::filecache::{CacheConfig, FileId};
use ringwork_core::filesvc::{ChunkRead, FileConn, FileOp, FileSend, FileService, ServiceConfig};
use ringwork_core::httpconn::{Config, FileInfo, FileKind, HttpConn, HttpEvent, SendSrc, Time};
use ringwork_core::tls::{ServerConfig, TlsSession};
use ringwork_core::token::{Generation, OpKind, Slot, Token};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

const FILE_SIZE: u64 = 9_000;
const TIMEOUT_MS: u64 = 5_000;

#[derive(Arbitrary, Debug)]
enum Step {
    /// The receive in flight gets at most `n` of the client's bytes (0: its end, if ended).
    Recv {
        n: u16,
    },
    /// The send of records in flight: the socket takes at most `n` bytes; `fail`: it fails.
    Send {
        n: u16,
        fail: bool,
    },
    /// The other operations in flight complete.
    Others,
    /// One byte of what the client has sent and the server not yet received is flipped.
    Corrupt {
        at: u16,
        xor: u8,
    },
    /// The client ends its side (close_notify first when `clean`).
    End {
        clean: bool,
    },
    /// The client asks for the file again.
    Request,
    /// Time passes.
    Tick {
        ms: u16,
    },
    Abort,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn server_config() -> Arc<ServerConfig> {
    static CONFIG: OnceLock<Arc<ServerConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let chain =
            CertificateDer::pem_slice_iter(include_bytes!("../../core/src/tls/testdata/ecdsa.pem"))
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
        let key =
            PrivateKeyDer::from_pem_slice(include_bytes!("../../core/src/tls/testdata/ecdsa.key"))
                .unwrap();
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }))
}

fn client(tls13: bool) -> ClientConnection {
    static CONFIGS: OnceLock<[Arc<ClientConfig>; 2]> = OnceLock::new();
    let configs = CONFIGS.get_or_init(|| {
        let make = |v: &'static rustls::SupportedProtocolVersion| {
            let mut roots = RootCertStore::empty();
            let ca = include_bytes!("../../core/src/tls/testdata/ca.pem");
            roots
                .add(CertificateDer::from_pem_slice(ca).unwrap())
                .unwrap();
            let config = ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[v])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            Arc::new(config)
        };
        [make(&rustls::version::TLS12), make(&rustls::version::TLS13)]
    });
    let name = ServerName::try_from("localhost").unwrap();
    ClientConnection::new(Arc::clone(&configs[usize::from(tls13)]), name).unwrap()
}

struct Sim {
    svc: FileService,
    fc: FileConn,
    client: ClientConnection,
    now: Time,
    to_server: Vec<u8>,
    client_ended: bool,
    recv: Option<u32>,
    send: Option<(Vec<u8>, usize)>,
    others: Vec<FileOp>,
    bufs: [Vec<u8>; 2],
    closed: bool,
    freed: bool,
    /// The client's view went bad (corrupted bytes, an alert): it reads nothing more.
    client_failed: bool,
    got: Vec<u8>,
}

fn token() -> Token {
    Token::new(OpKind::Recv, Slot(0), Generation::ZERO)
}

impl Sim {
    fn drive(&mut self) {
        if self.freed {
            return;
        }
        while let Some(op) = self.svc.next(&mut self.fc, token(), self.now) {
            match op {
                FileOp::Recv { max } => {
                    assert!(self.recv.is_none(), "two receives in flight");
                    assert!(!self.closed, "a receive after the close");
                    self.recv = Some(max);
                }
                FileOp::Seal(src) => {
                    let chunk: &[u8] = match src {
                        SendSrc::Buf { buf, .. } | SendSrc::HeadAndBuf { buf, .. } => {
                            assert!(self.fc.holds(buf), "a seal of a buffer not held");
                            &self.bufs[usize::from(buf.0)]
                        }
                        _ => &[],
                    };
                    self.svc.seal(&mut self.fc, self.now, src, chunk);
                }
                FileOp::SendRecords { .. } => {
                    assert!(self.send.is_none(), "two sends of records in flight");
                    assert!(!self.closed, "a send after the close");
                    let records = self.fc.take_records().expect("records to send");
                    assert!(records.1 < records.0.len(), "an empty send");
                    self.send = Some(records);
                }
                FileOp::Send(_) | FileOp::SendFile { .. } | FileOp::SendZc(_) => {
                    panic!("plaintext to the socket of a TLS connection: {op:?}")
                }
                FileOp::ReadKept {
                    buf, buf_pos, len, ..
                } => {
                    let dst = &mut self.bufs[usize::from(buf.0)];
                    let dst = &mut dst[buf_pos as usize..(buf_pos + len) as usize];
                    self.svc.read_kept(&mut self.fc, self.now, buf, dst);
                }
                FileOp::Release(_) => {}
                FileOp::Close { .. } => {
                    assert!(
                        self.recv.is_none() && self.send.is_none(),
                        "the socket closed with a receive or a send in flight"
                    );
                    self.closed = true;
                }
                FileOp::Free => {
                    assert!(self.closed && self.others.is_empty(), "freed too early");
                    self.freed = true;
                    return;
                }
                op => self.others.push(op),
            }
        }
    }

    fn complete_others(&mut self) {
        for op in std::mem::take(&mut self.others) {
            let (svc, fc, now) = (&mut self.svc, &mut self.fc, self.now);
            let r = match op {
                FileOp::Stat => {
                    let seen = (fc.http().path() == b"f\0")
                        .then_some((
                            FileInfo {
                                kind: FileKind::Regular,
                                size: FILE_SIZE,
                                mtime_secs: 1,
                                dio: None,
                            },
                            FileId {
                                dev: 1,
                                ino: 1,
                                mtime_ns: 1,
                            },
                        ))
                        .ok_or(RawErrno::NOENT);
                    svc.on_stat(fc, now, seen)
                }
                FileOp::Open { .. } => svc.on_open(fc, now, Ok(())).map(|_| ()),
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
                        b[buf_pos as usize + i as usize] = ((offset + i) % 251) as u8;
                    }
                    svc.on_read(fc, now, buf, Ok(n as u32), b)
                }
                FileOp::CloseFile => fc.http_mut().on_event(now, HttpEvent::FileClosed),
                FileOp::Shutdown => fc.http_mut().on_event(now, HttpEvent::ShutdownDone),
                FileOp::Cancel => {
                    if self.recv.take().is_some() {
                        svc.on_recv(fc, now, Err(RawErrno::CANCELED)).unwrap();
                    }
                    if let Some(records) = self.send.take() {
                        svc.on_records_sent(fc, now, Err(RawErrno::CANCELED), records)
                            .unwrap();
                    }
                    svc.on_cancel_done(fc, now)
                }
                other => panic!("not in flight: {other:?}"),
            };
            r.unwrap_or_else(|e| panic!("{op:?} refused: {e}"));
        }
    }

    fn recv(&mut self, n: usize) {
        let Some(max) = self.recv else { return };
        let bytes: Vec<u8> = if !self.to_server.is_empty() {
            let n = n.max(1).min(max as usize).min(self.to_server.len());
            self.to_server.drain(..n).collect()
        } else if self.client_ended {
            Vec::new()
        } else {
            return;
        };
        self.recv = None;
        self.svc
            .on_recv(&mut self.fc, self.now, Ok(&bytes))
            .expect("a receive in flight");
    }

    fn send(&mut self, n: usize, fail: bool) {
        let Some((buf, at)) = self.send.take() else {
            return;
        };
        let res = if fail {
            // A socket that failed a send delivers nothing after it.
            self.client_failed = true;
            Err(RawErrno::CONNRESET)
        } else {
            let n = n.max(1).min(buf.len() - at);
            if !self.client_failed {
                let mut piece = &buf[at..at + n];
                while !piece.is_empty() && self.client.read_tls(&mut piece).is_ok() {}
                if self.client.process_new_packets().is_err() {
                    self.client_failed = true;
                }
            }
            Ok(n as u32)
        };
        self.svc
            .on_records_sent(&mut self.fc, self.now, res, (buf, at))
            .expect("a send in flight");
    }

    fn client_turn(&mut self) {
        if self.client_failed || self.client_ended {
            return;
        }
        while self.client.wants_write() {
            self.client.write_tls(&mut self.to_server).unwrap();
        }
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = std::io::Read::read(&mut self.client.reader(), &mut buf) {
            self.got.extend_from_slice(&buf[..n]);
        }
    }

    fn request(&mut self) {
        if !self.client_failed && !self.client_ended {
            let req = b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n";
            let _ = std::io::Write::write_all(&mut self.client.writer(), req);
        }
    }
}

/// Every complete response in `got` is the file (or a 404) whole.
fn check_responses(mut got: &[u8]) {
    let file: Vec<u8> = (0..FILE_SIZE).map(|i| (i % 251) as u8).collect();
    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&got[..end]).into_owned();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        let Some(body) = got.get(end + 4..end + 4 + len) else {
            return;
        };
        if head.starts_with("HTTP/1.1 200") {
            assert!(body == &file[..], "a body differs");
        }
        got = &got[end + 4 + len..];
    }
}

fuzz_target!(|input: (bool, Vec<Step>)| {
    let (tls13, steps) = input;
    let now = Time {
        mono_ms: 1_000,
        mono_us: 0,
        unix_secs: 1_700_000_000,
    };
    let cfg = Config {
        chunk: 4_096,
        header_timeout_ms: TIMEOUT_MS,
        head_with_body: true,
        ..Config::default()
    };
    let session = TlsSession::new(server_config(), now.mono_ms, TIMEOUT_MS).unwrap();
    let fc = FileConn::with_tls(HttpConn::new(cfg, now), session).unwrap();
    let svc = FileService::new(ServiceConfig {
        cache: CacheConfig {
            entries: 2,
            valid_ms: 60_000,
            body_budget: 1 << 16,
            body_max: 4_096,
            max_path: 64,
            inactive_ms: 0,
        },
        chunks: 2,
        file_send: FileSend::Off,
    });

    let mut sim = Sim {
        svc,
        fc,
        client: client(tls13),
        now,
        to_server: Vec::new(),
        client_ended: false,
        recv: None,
        send: None,
        others: Vec::new(),
        bufs: [vec![0; 8_192], vec![0; 8_192]],
        closed: false,
        freed: false,
        client_failed: false,
        got: Vec::new(),
    };
    sim.request();
    for step in steps.into_iter().take(400) {
        sim.client_turn();
        sim.drive();
        match step {
            Step::Recv { n } => sim.recv(usize::from(n)),
            Step::Send { n, fail } => sim.send(usize::from(n), fail),
            Step::Others => sim.complete_others(),
            Step::Corrupt { at, xor } => {
                if !sim.to_server.is_empty() && xor != 0 {
                    let i = usize::from(at) % sim.to_server.len();
                    sim.to_server[i] ^= xor;
                    // What the client reads from now on cannot be trusted to parse.
                    sim.client_failed = true;
                }
            }
            Step::End { clean } => {
                if clean && !sim.client_failed && !sim.client_ended {
                    sim.client.send_close_notify();
                    sim.client_turn();
                }
                sim.client_ended = true;
            }
            Step::Request => sim.request(),
            Step::Tick { ms } => {
                sim.now.mono_ms += u64::from(ms);
                sim.fc.on_tick(sim.now);
            }
            Step::Abort => sim.fc.http_mut().abort(),
        }
        sim.drive();
        if sim.freed {
            break;
        }
    }
    check_responses(&sim.got);
    // The end: aborted, and everything owed completes; it must be freed.
    if !sim.freed {
        sim.fc.http_mut().abort();
    }
    for _ in 0..1_000 {
        sim.drive();
        if sim.freed {
            break;
        }
        sim.complete_others();
        sim.client_ended = true;
        sim.to_server.clear();
        sim.recv(0);
        sim.send(usize::MAX, true);
    }
    assert!(sim.freed, "never freed: {:?}", sim.fc);
    assert_eq!(sim.svc.chunks_in_use(), 0, "chunk buffers still leased");
});
