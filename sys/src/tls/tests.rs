//! Loading each key kind, and each way a certificate or key file can be wrong, with the
//! sentence it gives; reload. The files are core's test certificates
//! (`core/src/tls/testdata`), copied or combined into a directory per test.

use std::path::{Path, PathBuf};

use super::{CertFiles, LoadError, TlsConfig};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/src/tls/testdata");

fn data(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(DATA).join(name)).unwrap()
}

/// A fresh directory for one test's files.
fn dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringwork-tls-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `cert` and `key` written into `dir`, and where they are.
fn files(dir: &Path, cert: &[u8], key: &[u8]) -> CertFiles {
    let files = CertFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, key).unwrap();
    files
}

fn refused(test: &str, cert: &[u8], key: &[u8]) -> (LoadError, String) {
    let files = files(&dir(test), cert, key);
    let error = TlsConfig::load(&files).expect_err("the files are refused");
    let text = error.to_string();
    (error, text)
}

#[test]
fn each_key_kind_loads_alone_and_with_its_chain() {
    for kind in ["ecdsa", "rsa", "ed25519"] {
        let cert = data(&format!("{kind}.pem"));
        let key = data(&format!("{kind}.key"));
        let files = files(&dir(kind), &cert, &key);
        let config = TlsConfig::load(&files).unwrap();
        assert_eq!(
            config.server_config().alpn_protocols,
            [b"http/1.1".to_vec()]
        );
        let chain = [cert, data("ca.pem")].concat();
        let files = self::files(&dir(&format!("{kind}-chain")), &chain, &key);
        TlsConfig::load(&files).unwrap();
    }
}

#[test]
fn a_missing_file_is_named() {
    let files = CertFiles {
        cert: PathBuf::from("/nonexistent/cert.pem"),
        key: PathBuf::from("/nonexistent/key.pem"),
    };
    let text = TlsConfig::load(&files).unwrap_err().to_string();
    assert!(
        text.starts_with("cannot read /nonexistent/cert.pem: "),
        "{text}"
    );
}

#[test]
fn a_certificate_file_without_a_certificate_is_refused() {
    let (error, text) = refused("no-cert", &data("ecdsa.key"), &data("ecdsa.key"));
    assert!(
        matches!(error, LoadError::BadCertificate { .. }),
        "{error:?}"
    );
    assert!(
        text.contains("cert.pem: no certificate in the file"),
        "{text}"
    );
    let (_, text) = refused("empty-cert", b"", &data("ecdsa.key"));
    assert!(
        text.contains("cert.pem: no certificate in the file"),
        "{text}"
    );
}

#[test]
fn a_certificate_that_does_not_decode_is_refused() {
    let garbage = b"-----BEGIN CERTIFICATE-----\nMIIBaGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
    let (error, text) = refused("garbage-cert", garbage, &data("ecdsa.key"));
    assert!(
        matches!(error, LoadError::BadCertificate { .. }),
        "{error:?}"
    );
    assert!(
        text.contains("cert.pem: certificate 1 is not valid X.509"),
        "{text}"
    );
}

#[test]
fn a_key_file_without_a_key_is_refused() {
    let (error, text) = refused("no-key", &data("ecdsa.pem"), &data("ecdsa.pem"));
    assert!(matches!(error, LoadError::BadKey { .. }), "{error:?}");
    assert!(
        text.contains("key.pem: no private key in the file"),
        "{text}"
    );
}

#[test]
fn a_key_that_does_not_decode_is_refused() {
    let garbage = b"-----BEGIN PRIVATE KEY-----\nMIIBaGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n";
    let (error, text) = refused("garbage-key", &data("ecdsa.pem"), garbage);
    assert!(matches!(error, LoadError::BadKey { .. }), "{error:?}");
    assert!(
        text.contains("key.pem: not a usable RSA, ECDSA or Ed25519 private key"),
        "{text}"
    );
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let (error, text) = refused("mismatch", &data("ecdsa.pem"), &data("rsa.key"));
    assert!(matches!(error, LoadError::Mismatch { .. }), "{error:?}");
    assert!(
        text.contains("key.pem is not the key of the certificate in"),
        "{text}"
    );
    let (error, _) = refused("mismatch-ed25519", &data("rsa.pem"), &data("ed25519.key"));
    assert!(matches!(error, LoadError::Mismatch { .. }), "{error:?}");
}

#[test]
fn a_chain_in_the_wrong_order_or_with_a_stranger_is_refused() {
    let reversed = [data("ca.pem"), data("ecdsa.pem")].concat();
    let (error, text) = refused("reversed", &reversed, &data("ecdsa.key"));
    assert!(matches!(error, LoadError::BadChain { .. }), "{error:?}");
    assert!(text.contains("cert.pem: "), "{text}");
    let stranger = [data("ecdsa.pem"), data("rsa.pem")].concat();
    let (error, text) = refused("stranger", &stranger, &data("ecdsa.key"));
    assert!(matches!(error, LoadError::BadChain { .. }), "{error:?}");
    assert!(text.contains("chain"), "{text}");
}

#[test]
fn reload_swaps_the_certificate_and_keeps_it_on_a_bad_file() {
    let dir = dir("reload");
    let files = files(&dir, &data("ecdsa.pem"), &data("ecdsa.key"));
    let config = TlsConfig::load(&files).unwrap();
    let served = || config.current.0.read().unwrap().cert[0].clone();
    assert_eq!(served().as_ref(), pem_der(&data("ecdsa.pem")));
    std::fs::write(&files.cert, data("rsa.pem")).unwrap();
    std::fs::write(&files.key, data("rsa.key")).unwrap();
    config.reload().unwrap();
    assert_eq!(served().as_ref(), pem_der(&data("rsa.pem")));
    std::fs::write(&files.key, data("ecdsa.key")).unwrap();
    assert!(matches!(config.reload(), Err(LoadError::Mismatch { .. })));
    assert_eq!(served().as_ref(), pem_der(&data("rsa.pem")));
}

fn pem_der(pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem)
        .unwrap()
        .to_vec()
}

/// Both versions resume with the loaded configuration (TLS 1.3 by ticket, TLS 1.2 by
/// ticket or session ID), through core's `TlsSession`, against a rustls client in memory.
#[test]
fn a_clients_second_connection_resumes_with_the_loaded_configuration() {
    use ringwork_core::tls::{Phase, TlsSession};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore};
    use std::sync::Arc;

    let files = files(&dir("resume"), &data("ecdsa.pem"), &data("ecdsa.key"));
    let config = TlsConfig::load(&files).unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(&data("ca.pem")).unwrap())
        .unwrap();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let client_config = Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
        );
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let name = ServerName::try_from("localhost").unwrap();
            let mut client = ClientConnection::new(Arc::clone(&client_config), name).unwrap();
            let mut server = TlsSession::new(config.server_config(), 0, 10_000).unwrap();
            // Each side's bytes to the other until neither has any.
            loop {
                let mut out = Vec::new();
                while client.wants_write() {
                    client.write_tls(&mut out).unwrap();
                }
                server.receive(&out).unwrap();
                let records = server.take_records();
                if out.is_empty() && records.is_none() {
                    break;
                }
                let records = records.unwrap_or_default();
                let mut rest = &records[..];
                while !rest.is_empty() {
                    client.read_tls(&mut rest).unwrap();
                    client.process_new_packets().unwrap();
                }
            }
            assert_eq!(server.phase(), Phase::Open);
            kinds.push(client.handshake_kind());
        }
        assert_eq!(
            kinds,
            [Some(HandshakeKind::Full), Some(HandshakeKind::Resumed)],
            "{version:?}"
        );
    }
}

/// The probe gets one of the kernel's two answers; this development kernel has no
/// `CONFIG_TLS`, and where the module is present the socket is refused as unconnected.
#[test]
fn the_kernel_tls_probe_names_what_the_kernel_said() {
    let probe = super::KernelTls::probe();
    match probe {
        super::KernelTls::Available => {}
        super::KernelTls::Missing(e) => assert_eq!(e, rustix::io::Errno::NOENT, "{probe:?}"),
    }
    let line = probe.describe();
    assert!(line.contains("TCP_ULP"), "{line}");
    println!("{line}");
}
