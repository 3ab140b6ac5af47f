//! Certificates for the HTTPS tests, made with the `openssl` command (a CA, an intermediate
//! it issued, and leaves with ECDSA, RSA and Ed25519 keys the intermediate issued), and a
//! TLS client (rustls on aws-lc-rs) that trusts the CA.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::fresh_dir;
use crate::http::{read_response, Response};

/// Runs `openssl ARGS` in `dir`; panics with its stderr when it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl command runs (install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key of `kind` (`ec`, `rsa`, `ed25519`) in `dir/name.key`.
pub fn key(dir: &Path, name: &str, kind: &str) {
    let file = format!("{name}.key");
    let algorithm: &[&str] = match kind {
        "ec" => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "rsa" => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        _ => &["-algorithm", "ED25519"],
    };
    let args = [&["genpkey"], algorithm, &["-out", &file]].concat();
    openssl(dir, &args);
}

/// `dir/name.pem`, for `dir/name.key`, issued by `issuer` (its `.pem` and `.key`), a CA
/// when `ca`; a leaf is for `localhost` and 127.0.0.1.
pub fn cert(dir: &Path, name: &str, issuer: &str, ca: bool) {
    let ext = if ca {
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
    } else {
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
    };
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    let (key, csr, pem, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    let subject = format!("/CN={name}");
    openssl(
        dir,
        &["req", "-new", "-key", &key, "-subj", &subject, "-out", &csr],
    );
    let (issuer_pem, issuer_key) = (format!("{issuer}.pem"), format!("{issuer}.key"));
    let mut args = vec![
        "x509", "-req", "-in", &csr, "-days", "30", "-extfile", &ext, "-out", &pem,
    ];
    if issuer == name {
        args.extend(["-key", &key]);
    } else {
        args.extend(["-CA", &issuer_pem, "-CAkey", &issuer_key, "-CAcreateserial"]);
    }
    openssl(dir, &args);
}

/// A leaf `name` of key `kind`, issued by the intermediate, with `name-chain.pem` (the leaf,
/// then the intermediate).
pub fn leaf(dir: &Path, name: &str, kind: &str) {
    key(dir, name, kind);
    cert(dir, name, "inter", false);
    let chain = [read(dir, &format!("{name}.pem")), read(dir, "inter.pem")].concat();
    std::fs::write(dir.join(format!("{name}-chain.pem")), chain).unwrap();
}

/// A fresh directory with `ca`, `inter` and the leaves `ec`, `rsa` and `ed25519`.
pub fn pki(test: &str) -> PathBuf {
    let dir = fresh_dir(&format!("ringwork-tls-{test}-"));
    key(&dir, "ca", "ec");
    cert(&dir, "ca", "ca", true);
    key(&dir, "inter", "ec");
    cert(&dir, "inter", "ca", true);
    for kind in ["ec", "rsa", "ed25519"] {
        leaf(&dir, kind, kind);
    }
    dir
}

/// The bytes of `dir/name`.
pub fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap()
}

/// The first certificate of PEM file `dir/name`.
pub fn cert_der(dir: &Path, name: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(dir.join(name)).unwrap()
}

/// A client configuration trusting `dir/ca.pem`, for `versions` (None: both), offering
/// ALPN http/1.1; it resumes sessions unless `fresh`.
pub fn client_config(
    dir: &Path,
    versions: Option<&'static rustls::SupportedProtocolVersion>,
    fresh: bool,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(cert_der(dir, "ca.pem")).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions = versions.map_or(rustls::ALL_VERSIONS.to_vec(), |v| vec![v]);
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if fresh {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

/// A keep-alive HTTPS client connection.
pub struct TlsClient {
    /// The TLS stream, buffered for reading.
    pub reader: BufReader<StreamOwned<ClientConnection, TcpStream>>,
}

impl TlsClient {
    /// Connects to `addr` as `localhost` and completes the handshake (20 s read timeout).
    pub fn connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> std::io::Result<TlsClient> {
        let sock = TcpStream::connect(addr)?;
        sock.set_read_timeout(Some(Duration::from_secs(20)))?;
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(Arc::clone(config), name).unwrap();
        let mut stream = StreamOwned::new(conn, sock);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsClient {
            reader: BufReader::new(stream),
        })
    }

    /// The TLS connection (version, ALPN, the server's certificates, resumption).
    pub fn conn(&self) -> &ClientConnection {
        &self.reader.get_ref().conn
    }

    /// A GET of `target` with `extra` header lines (each ending in CRLF).
    pub fn get(&mut self, target: &str, extra: &str) -> std::io::Result<Response> {
        let request = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n");
        let stream = self.reader.get_mut();
        stream.write_all(request.as_bytes())?;
        stream.flush()?;
        read_response(&mut self.reader, false)
    }
}
