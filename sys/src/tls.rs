//! A server's TLS configuration from PEM files: the certificate chain and its key, checked
//! at start so that a bad file stops the server with a sentence naming the file and the
//! problem, and swapped in place on reload (new handshakes get the new certificate;
//! connections already open keep theirs).
//!
//! The configuration is rustls' `ServerConfig` on aws-lc-rs (docs/TLS.md says why), TLS 1.2
//! and 1.3, ALPN `http/1.1`, resumption by session IDs (a cache of 1,024 per configuration)
//! and by tickets (keys rotated every 6 hours). It is what `ringwork_core::tls::TlsSession`
//! is built with; this module reads files and checks them, and does no I/O on connections.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
pub use rustls::ServerConfig;

/// Where a certificate chain and its private key are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    /// PEM: the server's certificate first, then the intermediates that issued it, in order.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 RSA or SEC1 EC) of the first certificate: RSA,
    /// ECDSA (P-256, P-384) or Ed25519.
    pub key: PathBuf,
}

/// Why a certificate or key cannot be served. Its `Display` names the file and the problem.
#[derive(Debug)]
pub enum LoadError {
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// What the kernel said.
        error: std::io::Error,
    },
    /// The certificate file holds no certificate, or one that does not decode.
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong, as a phrase.
        problem: String,
    },
    /// The certificates are not a chain: one is not issued by the next, or one that issues
    /// another is not a CA.
    BadChain {
        /// The file.
        path: PathBuf,
        /// What is wrong, as a phrase.
        problem: String,
    },
    /// The key file holds no private key, or one that does not decode or is of a kind
    /// not supported.
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong, as a phrase.
        problem: String,
    },
    /// The key is not the first certificate's.
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the configuration.
    Config(rustls::Error),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Read { path, error } => write!(f, "cannot read {}: {error}", path.display()),
            LoadError::BadCertificate { path, problem } => {
                write!(f, "TLS certificate {}: {problem}", path.display())
            }
            LoadError::BadChain { path, problem } => write!(
                f,
                "TLS certificate chain {}: {problem} (the server's certificate comes first, \
                 then each intermediate that issued the one before it)",
                path.display()
            ),
            LoadError::BadKey { path, problem } => {
                write!(f, "TLS key {}: {problem}", path.display())
            }
            LoadError::Mismatch { cert, key } => write!(
                f,
                "TLS key {} is not the key of the certificate in {}",
                key.display(),
                cert.display()
            ),
            LoadError::Config(e) => write!(f, "TLS configuration refused: {e}"),
        }
    }
}

impl std::error::Error for LoadError {}

/// A server's TLS configuration whose certificate can be replaced while it serves.
#[derive(Debug)]
pub struct TlsConfig {
    files: CertFiles,
    current: Arc<Current>,
    config: Arc<ServerConfig>,
}

/// The certificate new handshakes get.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a whole Arc: a writer only ever swaps it.
        let current = self.0.read().unwrap_or_else(|p| p.into_inner());
        Some(Arc::clone(&current))
    }
}

impl TlsConfig {
    /// Reads and checks `files` and builds the configuration.
    pub fn load(files: &CertFiles) -> Result<TlsConfig, LoadError> {
        let key = certified_key(files)?;
        let current = Arc::new(Current(RwLock::new(key)));
        let provider = Arc::new(aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .map_err(LoadError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.session_storage = ServerSessionMemoryCache::new(1024);
        config.ticketer = aws_lc_rs::Ticketer::new().map_err(LoadError::Config)?;
        let config = Arc::new(config);
        // Every connection's session is made with it: made once here, it cannot fail there.
        ringwork_core::tls::TlsSession::new(Arc::clone(&config), 0, 1)
            .map_err(|e| LoadError::Config(rustls::Error::General(e.to_string())))?;
        Ok(TlsConfig {
            files: files.clone(),
            current,
            config,
        })
    }

    /// The configuration every session is built with.
    #[must_use]
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config)
    }

    /// The files it was loaded from.
    #[must_use]
    pub fn files(&self) -> &CertFiles {
        &self.files
    }

    /// Reads the files again: handshakes from now on get the new certificate. A file that
    /// does not pass the checks of [`TlsConfig::load`] leaves the old one in place.
    pub fn reload(&self) -> Result<(), LoadError> {
        let key = certified_key(&self.files)?;
        *self.current.0.write().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(())
    }
}

/// The chain and key of `files`, checked: the chain decodes and is a chain, the key decodes,
/// is of a supported kind and is the first certificate's.
fn certified_key(files: &CertFiles) -> Result<Arc<CertifiedKey>, LoadError> {
    let chain = read_chain(&files.cert)?;
    check_chain(&files.cert, &chain)?;
    let key = read_key(&files.key)?;
    let signing_key = aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| LoadError::BadKey {
            path: files.key.clone(),
            problem: format!("not a usable RSA, ECDSA or Ed25519 private key ({e})"),
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => LoadError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        },
        e => LoadError::Config(e),
    })?;
    Ok(Arc::new(certified))
}

fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|error| LoadError::Read {
        path: path.to_path_buf(),
        error,
    })
}

fn pem_problem(e: &pem::Error) -> String {
    match e {
        pem::Error::NoItemsFound => "no PEM block in the file".to_string(),
        e => format!("the PEM does not decode ({e:?})"),
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let bad = |problem: String| LoadError::BadCertificate {
        path: path.to_path_buf(),
        problem,
    };
    let chain = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(pem_problem(&e)))?;
    if chain.is_empty() {
        return Err(bad(
            "no certificate in the file (expected a PEM \"BEGIN CERTIFICATE\" block)".into(),
        ));
    }
    for (i, cert) in chain.iter().enumerate() {
        webpki::EndEntityCert::try_from(cert)
            .map_err(|e| bad(format!("certificate {} is not valid X.509 ({e})", i + 1)))?;
    }
    Ok(chain)
}

/// The chain's signatures, from the server's certificate to the last one given, which is
/// taken as trusted for the check (it is the client's trust anchors that decide). A chain
/// of one certificate has nothing to check; time is not checked (an expired certificate is
/// the operator's to renew, and the clients' to refuse).
fn check_chain(path: &Path, chain: &[CertificateDer<'static>]) -> Result<(), LoadError> {
    let [leaf, intermediates @ .., last] = chain else {
        return Ok(());
    };
    let anchor = webpki::anchor_from_trusted_cert(last).map_err(|e| LoadError::BadChain {
        path: path.to_path_buf(),
        problem: format!("the last certificate cannot issue ({e})"),
    })?;
    let leaf = webpki::EndEntityCert::try_from(leaf).map_err(|e| LoadError::BadCertificate {
        path: path.to_path_buf(),
        problem: format!("certificate 1 is not valid X.509 ({e})"),
    })?;
    let algorithms = aws_lc_rs::default_provider().signature_verification_algorithms;
    leaf.verify_for_usage(
        algorithms.all,
        &[anchor],
        intermediates,
        UnixTime::now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map(|_| ())
    .or_else(|e| match e {
        // Time is the clients' to judge (see above); an expired certificate is checked no
        // further.
        webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => Ok(()),
        e => Err(e),
    })
    .map_err(|e| LoadError::BadChain {
        path: path.to_path_buf(),
        problem: match e {
            webpki::Error::UnknownIssuer => {
                "a certificate is not issued by the one after it".to_string()
            }
            e => format!("{e}"),
        },
    })
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, LoadError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| LoadError::BadKey {
        path: path.to_path_buf(),
        problem: match e {
            pem::Error::NoItemsFound => {
                "no private key in the file (expected a PEM \"BEGIN PRIVATE KEY\", \
                 \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" block)"
                    .to_string()
            }
            e => pem_problem(&e),
        },
    })
}

#[cfg(test)]
mod tests;

/// Whether the kernel can take over a connection's records (kernel TLS, `TCP_ULP` "tls":
/// `CONFIG_TLS`, Linux 4.13): asked of a fresh TCP socket, which a kernel with the module
/// refuses as not connected (ENOTCONN) and one without refuses as unknown (ENOENT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelTls {
    /// The kernel has it.
    Available,
    /// The kernel refused the upper-layer protocol with this error (ENOENT: no `CONFIG_TLS`).
    Missing(rustix::io::Errno),
}

impl KernelTls {
    /// Asks the kernel.
    pub fn probe() -> KernelTls {
        use rustix::fd::AsRawFd;
        use rustix::net::{socket, AddressFamily, SocketType};
        let sock = match socket(AddressFamily::INET, SocketType::STREAM, None) {
            Ok(sock) => sock,
            Err(e) => return KernelTls::Missing(e),
        };
        let name = b"tls";
        // SAFETY: `sock` is an open socket for the whole call; the option value is `name`,
        // 3 readable bytes for the call's duration (the kernel copies the ULP name in).
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_TCP,
                libc::TCP_ULP,
                name.as_ptr().cast(),
                name.len() as libc::socklen_t,
            )
        };
        let errno = rustix::io::Errno::from_raw_os_error(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        );
        match (r, errno) {
            (0, _) | (_, rustix::io::Errno::NOTCONN) => KernelTls::Available,
            (_, e) => KernelTls::Missing(e),
        }
    }

    /// One line for the server's start.
    pub fn describe(self) -> String {
        match self {
            KernelTls::Available => {
                "TLS records are made in user space (the kernel has TLS offload, \
                 TCP_ULP \"tls\"; handing sessions to it is not built yet)"
                    .into()
            }
            KernelTls::Missing(e) => format!(
                "TLS records are made in user space (kernel TLS offload unavailable: TCP_ULP \
                 \"tls\" refused with {e}; it needs CONFIG_TLS, Linux 4.13)"
            ),
        }
    }
}
