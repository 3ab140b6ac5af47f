//! ringwork-files' `--tls-cert` and `--tls-key`: certificates made with the `openssl`
//! command (a CA, an intermediate, leaves with ECDSA, RSA and Ed25519 keys) are read and
//! checked at start, and each way a file can be wrong stops the start with a line naming the
//! file and the problem; each key kind with its chain is served. (Serving itself: https.rs.)

use std::path::Path;
use std::process::Command;

use ringwork_e2e::pki::{client_config, pki, read, TlsClient};
use ringwork_e2e::{binary, fresh_dir, Server};

/// ringwork-files started with `args` (and a free plain port): it must stop; its stderr.
fn refused_start(args: &[&str]) -> String {
    let root = fresh_dir("ringwork-tls-root-");
    let out = Command::new(binary("ringwork-files"))
        .args(["--listen", "127.0.0.1:0", "--backend", "epoll"])
        .args(args)
        .arg(&root)
        .output()
        .expect("ringwork-files runs");
    assert!(!out.status.success(), "{args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn tls_args<'a>(dir: &'a Path, cert: &'a str, key: &'a str) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        dir.join(cert).display().to_string(),
        "--tls-key".into(),
        dir.join(key).display().to_string(),
        "--tls-listen".into(),
        "127.0.0.1:0".into(),
    ]
}

fn start(args: &[String]) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused_start(&args)
}

#[test]
fn every_key_kind_with_its_chain_is_served() {
    let dir = pki("good");
    let root = fresh_dir("ringwork-tls-kinds-root-");
    std::fs::write(root.join("index.html"), "kinds\n").unwrap();
    let config = client_config(&dir, None, true);
    for (i, kind) in ["ec", "rsa", "ed25519"].into_iter().enumerate() {
        let mut args = tls_args(&dir, &format!("{kind}-chain.pem"), &format!("{kind}.key"));
        let backend = ringwork_e2e::BACKENDS[i % 2];
        args.extend([
            "--backend".into(),
            backend.into(),
            root.display().to_string(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::start("ringwork-files", &args);
        let mut client = TlsClient::connect(server.addrs[0], &config)
            .unwrap_or_else(|e| panic!("{kind} on {backend}: {e}"));
        let r = client.get("/", "").unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"kinds\n"[..]), "{kind}");
        let chain = client.conn().peer_certificates().unwrap();
        assert_eq!(chain.len(), 2, "{kind}: the leaf and the intermediate");
        assert_eq!(chain[0].as_ref(), pem_der(&dir, &format!("{kind}.pem")));
    }
}

/// The DER of the first certificate in PEM file `dir/name`.
fn pem_der(dir: &Path, name: &str) -> Vec<u8> {
    ringwork_e2e::pki::cert_der(dir, name).to_vec()
}

#[test]
fn each_bad_file_is_named_with_its_problem() {
    let dir = pki("bad");
    let path = |name: &str| dir.join(name).display().to_string();
    let cases = [
        (
            "missing.pem",
            "ec.key",
            format!("cannot read {}", path("missing.pem")),
        ),
        (
            "ec-chain.pem",
            "missing.key",
            format!("cannot read {}", path("missing.key")),
        ),
        (
            "ec.key",
            "ec.key",
            format!(
                "TLS certificate {}: no certificate in the file",
                path("ec.key")
            ),
        ),
        (
            "ec-chain.pem",
            "ec-chain.pem",
            format!(
                "TLS key {}: no private key in the file",
                path("ec-chain.pem")
            ),
        ),
        (
            "ec-chain.pem",
            "rsa.key",
            format!(
                "TLS key {} is not the key of the certificate in {}",
                path("rsa.key"),
                path("ec-chain.pem")
            ),
        ),
        (
            "reversed.pem",
            "ec.key",
            format!("TLS certificate chain {}: ", path("reversed.pem")),
        ),
        (
            "skipped.pem",
            "ec.key",
            format!("TLS certificate chain {}: ", path("skipped.pem")),
        ),
    ];
    // The intermediate before the leaf; the CA where the intermediate belongs.
    let reversed = [read(&dir, "inter.pem"), read(&dir, "ec.pem")].concat();
    std::fs::write(dir.join("reversed.pem"), reversed).unwrap();
    let skipped = [read(&dir, "ec.pem"), read(&dir, "ca.pem")].concat();
    std::fs::write(dir.join("skipped.pem"), skipped).unwrap();
    for (cert, key, expected) in cases {
        let err = start(&tls_args(&dir, cert, key));
        assert!(
            err.contains(&expected),
            "{cert} {key}: expected {expected:?} in {err}"
        );
    }
}

#[test]
fn a_certificate_needs_its_key_and_an_address() {
    let dir = pki("flags");
    let cert = dir.join("ec-chain.pem").display().to_string();
    let key = dir.join("ec.key").display().to_string();
    let err = refused_start(&["--tls-cert", &cert]);
    assert!(err.contains("--tls-key"), "{err}");
    let err = refused_start(&["--tls-cert", &cert, "--tls-key", &key]);
    assert!(err.contains("need --tls-listen"), "{err}");
}
