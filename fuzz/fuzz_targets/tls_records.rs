//! Arbitrary bytes, cut into arbitrary pieces, into the server side of a TLS session
//! (`ringwork_core::tls::TlsSession`), with sends, closes, deadlines and ends between them.
//! Nothing may panic, and whatever is accepted keeps the invariants: no plaintext before
//! the handshake is complete (nothing decrypts without keys), an error leaves the session
//! failed with that error for every later call, and a failed session takes no more input.
#![no_main]

use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringwork_core::tls::{Phase, ServerConfig, TlsSession};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Arbitrary, Debug)]
enum Step {
    Receive(Vec<u8>),
    Send(Vec<u8>),
    Close,
    Consume(u16),
    Time(u16),
    PeerEof,
}

const TIMEOUT_MS: u64 = 10_000;

fn config() -> Arc<ServerConfig> {
    static CONFIG: OnceLock<Arc<ServerConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let chain =
            CertificateDer::pem_slice_iter(include_bytes!("../../core/src/tls/testdata/ecdsa.pem"))
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
        let key =
            PrivateKeyDer::from_pem_slice(include_bytes!("../../core/src/tls/testdata/ecdsa.key"))
                .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }))
}

fuzz_target!(|steps: Vec<Step>| {
    let mut session = TlsSession::new(config(), 0, TIMEOUT_MS).unwrap();
    let mut now = 0u64;
    let mut failed = None;
    for step in steps {
        let result = match step {
            Step::Receive(bytes) => session.receive(&bytes),
            Step::Send(bytes) => session.send(&bytes),
            Step::Close => session.close(),
            Step::Consume(n) => {
                session.consume_plaintext(usize::from(n));
                Ok(())
            }
            Step::Time(ms) => {
                now += u64::from(ms);
                session.on_deadline(now)
            }
            Step::PeerEof => {
                let _ = session.on_peer_eof();
                Ok(())
            }
        };
        if let Some(error) = failed {
            // A failed session stays failed with its first error.
            assert_eq!(session.phase(), Phase::Failed(error));
            if let Err(e) = result {
                assert_eq!(e, error);
            }
        } else if let Err(error) = result {
            assert!(
                matches!(session.phase(), Phase::Failed(e) if e == error)
                    || error == ringwork_core::tls::TlsError::Closed
            );
            if let Phase::Failed(e) = session.phase() {
                failed = Some(e);
            }
        }
        if let Phase::Failed(e) = session.phase() {
            failed = Some(e);
        }
        // Arbitrary bytes cannot complete a handshake (a client's Finished needs keys
        // derived from the server's random), so nothing ever decrypts.
        assert!(session.plaintext().is_empty());
        assert!(!matches!(session.phase(), Phase::Open | Phase::Closing));
        let _ = session.take_records();
    }
});
