//! `TlsSession` against a rustls client in memory: handshakes (TLS 1.2 and 1.3, every key
//! kind), ALPN, a request and a response, records in one-byte pieces, garbage, ends with and
//! without close_notify, the handshake deadline, resumption, and a proptest over arbitrary
//! splits of the client's bytes.

use std::io::{Read, Write};
use std::string::String;
use std::sync::Arc;
use std::vec;
use std::vec::Vec;

use proptest::prelude::*;
use rustls::client::ClientConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    ClientConfig, HandshakeKind, ProtocolVersion, RootCertStore, ServerConfig,
    SupportedProtocolVersion,
};

use super::{PeerEnd, Phase, TlsError, TlsSession};

const CA: &str = include_str!("testdata/ca.pem");
const TIMEOUT_MS: u64 = 10_000;
const REQUEST: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: localhost\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

#[derive(Clone, Copy)]
enum Key {
    Ecdsa,
    Rsa,
    Ed25519,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn server_config(key: Key) -> Arc<ServerConfig> {
    let (cert, key) = match key {
        Key::Ecdsa => (
            &include_bytes!("testdata/ecdsa.pem")[..],
            &include_bytes!("testdata/ecdsa.key")[..],
        ),
        Key::Rsa => (
            &include_bytes!("testdata/rsa.pem")[..],
            &include_bytes!("testdata/rsa.key")[..],
        ),
        Key::Ed25519 => (
            &include_bytes!("testdata/ed25519.pem")[..],
            &include_bytes!("testdata/ed25519.key")[..],
        ),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key).unwrap();
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn client_config(
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(CA.as_bytes()).unwrap())
        .unwrap();
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

fn client(config: &Arc<ClientConfig>) -> ClientConnection {
    let name = ServerName::try_from("localhost").unwrap();
    ClientConnection::new(Arc::clone(config), name).unwrap()
}

/// A server session and a client, and how the client's bytes are cut on their way.
struct Pair {
    server: TlsSession,
    client: ClientConnection,
}

impl Pair {
    fn new(key: Key, client_config: &Arc<ClientConfig>) -> Pair {
        Pair {
            server: TlsSession::new(server_config(key), 0, TIMEOUT_MS).unwrap(),
            client: client(client_config),
        }
    }

    fn tls13() -> Pair {
        Pair::new(
            Key::Ecdsa,
            &client_config(&[&rustls::version::TLS13], &[b"http/1.1"]),
        )
    }

    /// The client's pending bytes, as it would write them to the socket.
    fn client_bytes(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.client.wants_write() {
            self.client.write_tls(&mut out).unwrap();
        }
        out
    }

    /// The server's records into the client; false when there were none.
    fn deliver_to_client(&mut self) -> Result<bool, rustls::Error> {
        let mut moved = false;
        while let Some(records) = self.server.take_records() {
            moved = true;
            let mut rest = &records[..];
            while !rest.is_empty() {
                self.client.read_tls(&mut rest).unwrap();
                self.client.process_new_packets()?;
            }
            self.server.recycle(records);
        }
        Ok(moved)
    }

    /// Moves bytes both ways until neither side has any, the client's cut at `cuts`
    /// (offsets into each flight, taken modulo its length).
    fn run(&mut self, cuts: &[usize]) -> Result<(), TlsError> {
        loop {
            let bytes = self.client_bytes();
            for piece in split(&bytes, cuts) {
                self.server.receive(piece)?;
            }
            let moved = self
                .deliver_to_client()
                .expect("the client accepts the server's records");
            if bytes.is_empty() && !moved {
                return Ok(());
            }
        }
    }

    /// What the client has read so far.
    fn client_reads(&mut self) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.client.reader().read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }
}

/// `bytes` cut at each of `cuts` (modulo its length), in order.
fn split<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    if bytes.is_empty() {
        return Vec::new();
    }
    let mut at: Vec<usize> = cuts.iter().map(|c| c % bytes.len()).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

/// TLS' content type of an alert record.
const ALERT: u8 = 0x15;

/// The content type of each record in `bytes`, which holds whole records.
fn record_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 5 {
        types.push(bytes[0]);
        let len = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
        bytes = &bytes[(5 + len).min(bytes.len())..];
    }
    assert!(bytes.is_empty(), "a partial record");
    types
}

fn one_byte_cuts(max: usize) -> Vec<usize> {
    (1..max).collect()
}

// ---- handshakes -------------------------------------------------------------------------

#[test]
fn a_tls13_handshake_completes_with_alpn_http11() {
    let mut pair = Pair::tls13();
    assert!(matches!(pair.server.phase(), Phase::Handshaking { .. }));
    pair.run(&[]).unwrap();
    assert_eq!(pair.server.phase(), Phase::Open);
    assert!(!pair.client.is_handshaking());
    assert_eq!(pair.server.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(pair.client.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(
        pair.server.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
}

#[test]
fn tls12_handshakes_complete_with_each_key_kind() {
    for key in [Key::Ecdsa, Key::Rsa, Key::Ed25519] {
        let config = client_config(&[&rustls::version::TLS12], &[b"http/1.1"]);
        let mut pair = Pair::new(key, &config);
        pair.run(&[]).unwrap();
        assert_eq!(pair.server.phase(), Phase::Open);
        assert_eq!(
            pair.server.protocol_version(),
            Some(ProtocolVersion::TLSv1_2)
        );
        assert_eq!(pair.server.alpn_protocol(), Some(&b"http/1.1"[..]));
    }
}

#[test]
fn tls13_handshakes_complete_with_each_key_kind() {
    for key in [Key::Rsa, Key::Ed25519] {
        let config = client_config(&[&rustls::version::TLS13], &[]);
        let mut pair = Pair::new(key, &config);
        pair.run(&[]).unwrap();
        assert_eq!(pair.server.phase(), Phase::Open);
        // A client that offers no ALPN gets none, and is served.
        assert_eq!(pair.server.alpn_protocol(), None);
    }
}

#[test]
fn a_client_offering_only_h2_is_refused_with_an_alert() {
    let config = client_config(&[&rustls::version::TLS13], &[b"h2"]);
    let mut pair = Pair::new(Key::Ecdsa, &config);
    let hello = pair.client_bytes();
    assert_eq!(pair.server.receive(&hello), Err(TlsError::Handshake));
    assert_eq!(pair.server.phase(), Phase::Failed(TlsError::Handshake));
    // The alert follows the ServerHello, encrypted: the client reads why.
    assert_eq!(
        pair.deliver_to_client(),
        Err(rustls::Error::AlertReceived(
            rustls::AlertDescription::NoApplicationProtocol
        ))
    );
    assert_eq!(pair.server.receive(b"more"), Err(TlsError::Handshake));
}

#[test]
fn the_second_connection_of_a_client_resumes() {
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let config = client_config(&[version], &[b"http/1.1"]);
        let server_config = server_config(Key::Ecdsa);
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let mut pair = Pair {
                server: TlsSession::new(Arc::clone(&server_config), 0, TIMEOUT_MS).unwrap(),
                client: client(&config),
            };
            pair.run(&[]).unwrap();
            assert_eq!(pair.server.phase(), Phase::Open);
            kinds.push(pair.client.handshake_kind());
        }
        assert_eq!(
            kinds,
            [Some(HandshakeKind::Full), Some(HandshakeKind::Resumed)]
        );
    }
}

// ---- data --------------------------------------------------------------------------------

#[test]
fn a_request_and_its_response_cross_the_session() {
    let mut pair = Pair::tls13();
    pair.run(&[]).unwrap();
    pair.client.writer().write_all(REQUEST).unwrap();
    pair.run(&[]).unwrap();
    assert_eq!(pair.server.plaintext(), REQUEST);
    pair.server.consume_plaintext(4);
    assert_eq!(pair.server.plaintext(), &REQUEST[4..]);
    pair.server.consume_plaintext(REQUEST.len());
    assert!(pair.server.plaintext().is_empty());

    pair.server.send(RESPONSE).unwrap();
    pair.run(&[]).unwrap();
    assert_eq!(pair.client_reads(), RESPONSE);
}

#[test]
fn records_in_one_byte_pieces_are_reassembled() {
    let mut pair = Pair::tls13();
    // The ClientHello, then the client's Finished with the request, a byte at a time.
    pair.client.writer().write_all(REQUEST).unwrap();
    pair.run(&one_byte_cuts(4096)).unwrap();
    assert_eq!(pair.server.phase(), Phase::Open);
    assert_eq!(pair.server.plaintext(), REQUEST);
}

#[test]
fn a_response_sent_during_the_handshake_goes_out_once_it_is_complete() {
    let mut pair = Pair::tls13();
    pair.server.send(RESPONSE).unwrap();
    assert!(
        pair.server.take_records().is_none(),
        "nothing before a ClientHello"
    );
    pair.run(&[]).unwrap();
    assert_eq!(pair.client_reads(), RESPONSE);
}

#[test]
fn a_large_response_is_split_into_records_and_arrives_whole() {
    let mut pair = Pair::tls13();
    pair.run(&[]).unwrap();
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    pair.server.send(&body).unwrap();
    let records = pair.server.take_records().unwrap();
    // Seven records of at most 16 KiB, each with a 5-byte header and 17 bytes of expansion.
    assert!(records.len() > body.len() && records.len() < body.len() + 7 * 64);
    let mut rest = &records[..];
    let mut got = Vec::new();
    while !rest.is_empty() {
        pair.client.read_tls(&mut rest).unwrap();
        pair.client.process_new_packets().unwrap();
        got.extend(pair.client_reads());
    }
    assert_eq!(got, body);
}

// ---- hostile input -----------------------------------------------------------------------

#[test]
fn plain_http_is_rejected_as_bad_records_with_an_alert() {
    let mut pair = Pair::tls13();
    assert_eq!(
        pair.server.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        Err(TlsError::BadRecord)
    );
    assert_eq!(pair.server.phase(), Phase::Failed(TlsError::BadRecord));
    let records = pair.server.take_records().expect("an alert for the client");
    assert_eq!(record_types(&records), [ALERT]);
    assert_eq!(pair.server.send(RESPONSE), Err(TlsError::BadRecord));
}

#[test]
fn garbage_after_the_handshake_is_rejected() {
    let mut pair = Pair::tls13();
    pair.run(&[]).unwrap();
    // An application-data record whose ciphertext is noise does not decrypt.
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    record.extend_from_slice(&[0xa5; 32]);
    assert_eq!(pair.server.receive(&record), Err(TlsError::BadRecord));
    assert!(pair.server.plaintext().is_empty());
}

#[test]
fn a_stalled_handshake_fails_at_its_deadline() {
    let mut pair = Pair::tls13();
    let hello = pair.client_bytes();
    pair.server.receive(&hello[..hello.len() / 2]).unwrap();
    assert_eq!(pair.server.deadline_ms(), Some(TIMEOUT_MS));
    assert_eq!(pair.server.on_deadline(TIMEOUT_MS - 1), Ok(()));
    assert_eq!(
        pair.server.on_deadline(TIMEOUT_MS),
        Err(TlsError::HandshakeTimeout)
    );
    assert_eq!(pair.server.deadline_ms(), None);
    assert_eq!(pair.server.receive(&hello), Err(TlsError::HandshakeTimeout));
}

#[test]
fn a_complete_handshake_has_no_deadline() {
    let mut pair = Pair::tls13();
    pair.run(&[]).unwrap();
    assert_eq!(pair.server.deadline_ms(), None);
    assert_eq!(pair.server.on_deadline(TIMEOUT_MS * 2), Ok(()));
    assert_eq!(pair.server.phase(), Phase::Open);
}

// ---- ends --------------------------------------------------------------------------------

#[test]
fn an_end_without_close_notify_is_reported_as_truncated() {
    let mut pair = Pair::tls13();
    pair.run(&[]).unwrap();
    assert!(!pair.server.peer_closed());
    assert_eq!(pair.server.on_peer_eof(), PeerEnd::Truncated);
    assert_eq!(pair.server.phase(), Phase::Failed(TlsError::Truncated));
}

#[test]
fn an_end_after_close_notify_is_clean() {
    let mut pair = Pair::tls13();
    pair.run(&[]).unwrap();
    pair.client.writer().write_all(REQUEST).unwrap();
    pair.client.send_close_notify();
    pair.run(&[]).unwrap();
    assert!(pair.server.peer_closed());
    assert_eq!(pair.server.plaintext(), REQUEST);
    assert_eq!(pair.server.on_peer_eof(), PeerEnd::CloseNotify);
    // The server may still answer a peer that closed its side.
    pair.server.send(RESPONSE).unwrap();
    pair.deliver_to_client().unwrap();
    assert_eq!(pair.client_reads(), RESPONSE);
}

#[test]
fn close_sends_close_notify_after_what_was_sent() {
    let mut pair = Pair::tls13();
    pair.run(&[]).unwrap();
    pair.server.send(RESPONSE).unwrap();
    pair.server.close().unwrap();
    assert_eq!(pair.server.phase(), Phase::Closing);
    assert_eq!(pair.server.send(RESPONSE), Err(TlsError::Closed));
    pair.deliver_to_client().unwrap();
    assert_eq!(pair.client_reads(), RESPONSE);
    let mut buf = [0u8; 16];
    // A clean end for the client: its reader says end of stream, not an error.
    assert_eq!(pair.client.reader().read(&mut buf).unwrap(), 0);
}

#[test]
fn errors_read_as_sentences() {
    let text = String::from(std::format!("{}", TlsError::Truncated).as_str());
    assert!(text.contains("close_notify"), "{text}");
}

// ---- arbitrary splits --------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Wherever the client's bytes are cut, the handshake completes and the request arrives
    /// whole and once; the answer reaches the client.
    #[test]
    fn any_split_of_the_clients_bytes_serves_the_request(
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
        tls12 in any::<bool>(),
    ) {
        let version = if tls12 { &rustls::version::TLS12 } else { &rustls::version::TLS13 };
        let config = client_config(&[version], &[b"http/1.1"]);
        let mut pair = Pair::new(Key::Ecdsa, &config);
        pair.client.writer().write_all(REQUEST).unwrap();
        pair.run(&cuts).unwrap();
        prop_assert_eq!(pair.server.phase(), Phase::Open);
        prop_assert_eq!(pair.server.plaintext(), REQUEST);
        pair.server.consume_plaintext(REQUEST.len());
        pair.server.send(RESPONSE).unwrap();
        pair.run(&cuts).unwrap();
        prop_assert_eq!(pair.client_reads(), RESPONSE);
    }

    /// Bytes changed anywhere in the client's flights never panic the server and never reach
    /// the machine above as plaintext unless they decrypted.
    #[test]
    fn corrupted_client_bytes_fail_cleanly(at in any::<usize>(), flip in 1u8..=255) {
        let mut pair = Pair::tls13();
        pair.client.writer().write_all(REQUEST).unwrap();
        let mut hello = pair.client_bytes();
        let at = at % hello.len();
        hello[at] ^= flip;
        match pair.server.receive(&hello) {
            Ok(()) => prop_assert!(pair.server.plaintext().is_empty()),
            Err(e) => {
                prop_assert_eq!(pair.server.phase(), Phase::Failed(e));
                prop_assert!(pair.server.plaintext().is_empty());
            }
        }
    }
}
