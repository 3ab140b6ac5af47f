//! The TLS side of `ringwork-bench http --tls`: the client configuration (rustls on
//! aws-lc-rs, the provider the servers use), one connection's records over a nonblocking
//! socket ([`TlsStream`]), and the self-signed certificate `compare --files --tls` serves.
//!
//! The connection is rustls' buffered `ClientConnection` fed from the generator's shared read
//! buffer rather than from the socket: rustls reads a socket 4 KiB at a time, which would
//! cost a 1 MiB response 256 reads instead of 8. rustls 0.23 copies each decrypted record
//! into a vector of its own in both of its APIs, so the unbuffered API would save only the
//! copy of the ciphertext into rustls' buffer, at the price of a second state machine here.
//!
//! It does not verify anything beyond what rustls' webpki verifier does with the roots
//! given (`--tls-ca`), and it does not do client certificates, early data or HTTP/2.

use std::io::{self, BufRead as _, Write as _};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustix::io::Errno;
use rustls::client::Resumption;
use rustls::crypto::{aws_lc_rs, SupportedKxGroup};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore};

/// Which TLS versions the client offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Versions {
    /// TLS 1.2 and 1.3 (the server picks; both servers here pick 1.3).
    #[default]
    Both,
    /// TLS 1.2 only (resumption by session ID or ticket).
    #[value(name = "1.2")]
    Tls12,
    /// TLS 1.3 only (resumption by ticket).
    #[value(name = "1.3")]
    Tls13,
}

/// Key exchange groups the client may offer, by the names `--tls-kx` takes.
const KX_GROUPS: [(&str, &dyn SupportedKxGroup); 4] = [
    ("x25519", aws_lc_rs::kx_group::X25519),
    ("x25519mlkem768", aws_lc_rs::kx_group::X25519MLKEM768),
    ("secp256r1", aws_lc_rs::kx_group::SECP256R1),
    ("secp384r1", aws_lc_rs::kx_group::SECP384R1),
];

/// One `--tls-kx` name.
pub fn parse_kx(name: &str) -> Result<String, String> {
    let lower = name.trim().to_ascii_lowercase();
    if KX_GROUPS.iter().any(|(n, _)| *n == lower) {
        Ok(lower)
    } else {
        Err(format!(
            "unknown key exchange group {name:?} (one of {})",
            KX_GROUPS.map(|(n, _)| n).join(", ")
        ))
    }
}

/// What the client is to do, from the command line.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsOptions {
    /// PEM certificates to trust: the server's own (self-signed) or its CA's.
    pub ca: PathBuf,
    /// The name the certificate is checked against, sent as SNI when it is a DNS name;
    /// `None`: the URL's IP address (no SNI: RFC 6066 has none for addresses).
    pub server_name: Option<String>,
    /// One session store shared by every connection, so that new connections resume;
    /// otherwise none (every handshake full).
    pub resume: bool,
    /// Versions offered.
    pub versions: Versions,
    /// Key exchange groups offered, in order (`--tls-kx`); empty: aws-lc-rs' defaults
    /// (X25519MLKEM768, secp384r1, X25519, secp256r1).
    pub kx: Vec<String>,
}

/// Sessions a client's store keeps (rustls keeps up to 8 TLS 1.3 tickets per server name
/// within it).
const SESSIONS_KEPT: usize = 16;

/// A built client configuration and the name every connection asks for.
#[derive(Clone, Debug)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    /// With resumption: one configuration per connection slot, each with a session store
    /// of its own ([`TlsClient::clients`]); connection `i` resumes what slot `i` kept.
    per_client: Vec<Arc<ClientConfig>>,
    name: ServerName<'static>,
    /// `TlsOptions::resume`, for the report.
    pub resume: bool,
}

impl TlsClient {
    /// Loads the roots and builds the configuration for a server at `ip`.
    pub fn new(opts: &TlsOptions, ip: std::net::IpAddr) -> Result<TlsClient, String> {
        let roots = load_roots(&opts.ca)?;
        let mut provider = aws_lc_rs::default_provider();
        if !opts.kx.is_empty() {
            provider.kx_groups = opts
                .kx
                .iter()
                .map(|name| {
                    KX_GROUPS
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, g)| *g)
                        .ok_or_else(|| parse_kx(name).unwrap_err())
                })
                .collect::<Result<_, _>>()?;
        }
        let versions: &[&rustls::SupportedProtocolVersion] = match opts.versions {
            Versions::Both => rustls::ALL_VERSIONS,
            Versions::Tls12 => &[&rustls::version::TLS12],
            Versions::Tls13 => &[&rustls::version::TLS13],
        };
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .map_err(|e| format!("TLS client configuration: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = if opts.resume {
            Resumption::in_memory_sessions(SESSIONS_KEPT)
        } else {
            Resumption::disabled()
        };
        let name = match &opts.server_name {
            Some(n) => ServerName::try_from(n.clone())
                .map_err(|e| format!("--tls-server-name {n:?}: {e}"))?,
            None => ServerName::IpAddress(ip.into()),
        };
        Ok(TlsClient {
            config: Arc::new(config),
            per_client: Vec::new(),
            name,
            resume: opts.resume,
        })
    }

    /// With resumption, models `n` clients, each resuming its own sessions (as browsers
    /// do), instead of `n` connections taking turns at one store: with one store, 100
    /// connections that open at once find the 8 TLS 1.3 tickets rustls keeps per server
    /// name gone, and most handshakes are full.
    #[must_use]
    pub fn clients(mut self, n: usize) -> TlsClient {
        if self.resume {
            self.per_client = (0..n)
                .map(|_| {
                    let mut config = (*self.config).clone();
                    config.resumption = Resumption::in_memory_sessions(SESSIONS_KEPT);
                    Arc::new(config)
                })
                .collect();
        }
        self
    }

    /// A new TLS side for connection slot `i`; its ClientHello is ready to send.
    pub fn connect(&self, i: usize) -> Result<TlsStream, String> {
        let config = self.per_client.get(i).unwrap_or(&self.config);
        ClientConnection::new(Arc::clone(config), self.name.clone())
            .map(|conn| TlsStream {
                conn: Box::new(conn),
            })
            .map_err(|e| format!("TLS client: {e}"))
    }
}

/// The certificates of a PEM file, as roots; an error names the file and what is wrong.
pub fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-ca {}: not PEM certificates ({e:?})", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-ca {}: no \"BEGIN CERTIFICATE\" block in the file",
            path.display()
        ));
    }
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            format!(
                "--tls-ca {}: certificate {} cannot be a root ({e})",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(roots)
}

/// How a connection's handshake went, once it is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// A full handshake (with or without a HelloRetryRequest).
    Full,
    /// Resumed from a session the client kept.
    Resumed,
}

/// One connection's TLS records, over a socket the caller reads.
pub struct TlsStream {
    /// Boxed: a connection is large and most of the generator's connections move around in
    /// a vector.
    conn: Box<ClientConnection>,
}

impl TlsStream {
    /// Queues plaintext (a request); it leaves with [`TlsStream::send`], once the handshake
    /// allows.
    pub fn queue(&mut self, plaintext: &[u8]) {
        // Buffered in rustls up to its limit (64 KiB by default), far above one request.
        let _ = self.conn.writer().write_all(plaintext);
    }

    /// Writes the records rustls has for the peer until none are left or the socket is
    /// full (the rest goes on the next writable event).
    pub fn send(&mut self, sock: &OwnedFd) -> Result<(), Errno> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut SocketWriter(sock)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Errno::from_io_error(&e).unwrap_or(Errno::IO)),
            }
        }
        Ok(())
    }

    /// Takes ciphertext from the front of `data`, as much as rustls takes at once, and
    /// processes the records that are complete. Call [`TlsStream::plaintext`] after each.
    pub fn receive(&mut self, data: &mut &[u8]) -> Result<(), rustls::Error> {
        // A slice's read never fails; rustls refuses more only when its buffer is full,
        // which processing below empties.
        self.conn
            .read_tls(data)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        self.conn.process_new_packets().map(|_| ())
    }

    /// The next decrypted bytes, borrowed; [`TlsStream::consume`] them. `Ok(None)`: none
    /// for now; `Ok(Some(&[]))`: the peer closed with close_notify.
    pub fn plaintext(&mut self) -> io::Result<Option<&[u8]>> {
        match self.conn.reader().into_first_chunk() {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Marks `n` bytes of [`TlsStream::plaintext`] read.
    pub fn consume(&mut self, n: usize) {
        self.conn.reader().consume(n);
    }

    /// How the handshake went; `None` while it goes on.
    pub fn handshake(&self) -> Option<Handshake> {
        match self.conn.handshake_kind()? {
            _ if self.conn.is_handshaking() => None,
            HandshakeKind::Resumed => Some(Handshake::Resumed),
            HandshakeKind::Full | HandshakeKind::FullWithHelloRetryRequest => Some(Handshake::Full),
        }
    }

    /// "TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519, ALPN http/1.1": what was negotiated.
    pub fn describe(&self) -> String {
        let c = &self.conn;
        let alpn = c
            .alpn_protocol()
            .map_or("none".into(), |p| String::from_utf8_lossy(p).into_owned());
        format!(
            "{} {} {}, ALPN {alpn}",
            c.protocol_version()
                .map_or("-".into(), |v| format!("{v:?}")),
            c.negotiated_cipher_suite()
                .map_or("-".into(), |s| format!("{:?}", s.suite())),
            c.negotiated_key_exchange_group()
                .map_or("-".into(), |g| format!("{:?}", g.name())),
        )
    }

    /// Queues a close_notify and sends what it can of it: the end of a connection that
    /// is done, so that the server sees a clean close rather than a truncation.
    pub fn close(&mut self, sock: &OwnedFd) {
        self.conn.send_close_notify();
        let _ = self.send(sock);
    }
}

/// `io::Write` over a nonblocking socket, for rustls' `write_tls`.
struct SocketWriter<'a>(&'a OwnedFd);

impl io::Write for SocketWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        rustix::net::send(self.0, buf, rustix::net::SendFlags::NOSIGNAL).map_err(io::Error::from)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where [`self_signed`] writes the certificate and its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPair {
    /// PEM certificate (also the root a client trusts: it is self-signed).
    pub cert: PathBuf,
    /// PEM PKCS#8 private key.
    pub key: PathBuf,
}

impl CertPair {
    /// `cert.pem` and `key.pem` in `dir`.
    pub fn in_dir(dir: &Path) -> CertPair {
        CertPair {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }
}

/// The `openssl` arguments that make a self-signed ECDSA P-256 certificate for `localhost`
/// and 127.0.0.1, valid for two days (a benchmark's lifetime, with room for a clock off).
/// It says `CA:FALSE`: `openssl req -x509` otherwise marks it a CA, and rustls' verifier
/// refuses a CA certificate as a server's (`CaUsedAsEndEntity`).
pub fn self_signed_args(pair: &CertPair) -> Vec<String> {
    let mut args: Vec<String> = [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-keyout",
    ]
    .map(String::from)
    .to_vec();
    args.push(pair.key.to_string_lossy().into_owned());
    args.push("-out".into());
    args.push(pair.cert.to_string_lossy().into_owned());
    args
}

/// Runs `openssl` ([`self_signed_args`]) to write a certificate and key into `dir`.
pub fn self_signed(dir: &Path) -> Result<CertPair, String> {
    let pair = CertPair::in_dir(dir);
    let args = self_signed_args(&pair);
    let out = Command::new("openssl").args(&args).output().map_err(|e| {
        format!(
            "the `openssl` command, which makes the test certificate, could not be run ({e}): \
             install it (apt-get install -y openssl)"
        )
    })?;
    if !out.status.success() {
        return Err(format!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(pair)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A directory of its own under the temporary one, removed on drop.
    pub(crate) struct Scratch(pub(crate) PathBuf);

    impl Scratch {
        pub(crate) fn new(tag: &str) -> Scratch {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("ringwork-bench-{tag}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A self-signed certificate in a scratch directory; the test fails naming openssl when
    /// the command is missing (the end-to-end tests of the workspace need it too).
    pub(crate) fn test_cert(tag: &str) -> (Scratch, CertPair) {
        let dir = Scratch::new(tag);
        let pair = self_signed(&dir.0).unwrap_or_else(|e| panic!("{e}"));
        (dir, pair)
    }

    #[test]
    fn the_certificate_command_asks_for_a_p256_leaf_for_localhost() {
        let pair = CertPair::in_dir(Path::new("/run/x"));
        let args = self_signed_args(&pair).join(" ");
        assert_eq!(
            args,
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
             -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
             -addext basicConstraints=critical,CA:FALSE -keyout /run/x/key.pem -out /run/x/cert.pem"
        );
    }

    #[test]
    fn the_certificate_made_is_a_root_rustls_takes() {
        let (_dir, pair) = test_cert("cert");
        let pem = std::fs::read_to_string(&pair.cert).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        assert!(std::fs::read_to_string(&pair.key)
            .unwrap()
            .contains("PRIVATE KEY"));
        assert_eq!(load_roots(&pair.cert).unwrap().len(), 1);
        // The configuration ringwork-files builds loads it too.
        let files = ringwork_sys::tls::CertFiles {
            cert: pair.cert.clone(),
            key: pair.key.clone(),
        };
        ringwork_sys::tls::TlsConfig::load(&files).unwrap();
    }

    #[test]
    fn roots_that_are_not_there_are_named() {
        let e = load_roots(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(e.contains("--tls-ca /nonexistent/ca.pem"), "{e}");
        let dir = Scratch::new("roots");
        let empty = dir.0.join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let e = load_roots(&empty).unwrap_err();
        assert!(e.contains("no \"BEGIN CERTIFICATE\" block"), "{e}");
    }

    #[test]
    fn key_exchange_groups_parse() {
        assert_eq!(parse_kx("X25519"), Ok("x25519".into()));
        assert_eq!(parse_kx("x25519mlkem768"), Ok("x25519mlkem768".into()));
        let e = parse_kx("ffdhe2048").unwrap_err();
        assert!(
            e.contains("x25519, x25519mlkem768, secp256r1, secp384r1"),
            "{e}"
        );
    }

    #[test]
    fn clients_build_for_names_and_addresses() {
        let (_dir, pair) = test_cert("client");
        let mut opts = TlsOptions {
            ca: pair.cert.clone(),
            server_name: None,
            resume: false,
            versions: Versions::Tls13,
            kx: vec!["x25519".into()],
        };
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let c = TlsClient::new(&opts, ip).unwrap();
        assert_eq!(c.name, ServerName::IpAddress(ip.into()));
        assert!(!c.resume);
        assert!(
            format!("{:?}", c.config.resumption).contains("Disabled"),
            "{:?}",
            c.config.resumption
        );
        let stream = c.connect(0).unwrap();
        assert_eq!(stream.handshake(), None, "not yet");
        opts.server_name = Some("localhost".into());
        opts.resume = true;
        let c = TlsClient::new(&opts, ip).unwrap();
        assert_eq!(c.name, ServerName::try_from("localhost").unwrap());
        opts.server_name = Some("not a name!".into());
        assert!(TlsClient::new(&opts, ip).is_err());
    }
}
