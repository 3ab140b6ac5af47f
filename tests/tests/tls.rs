//! ringwork-files' `--tls-cert` and `--tls-key`: certificates made here with the `openssl`
//! command (a CA, an intermediate, leaves with ECDSA, RSA and Ed25519 keys) are read and
//! checked at start, and each way a file can be wrong stops the start with a line naming the
//! file and the problem. TLS listeners are not served yet (docs/TLS.md), so good files end
//! the start with a line saying that.

use std::path::{Path, PathBuf};
use std::process::Command;

use ringwork_e2e::{binary, fresh_dir};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl command runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key of `kind` (`ec`, `rsa`, `ed25519`) in `dir/name.key`.
fn key(dir: &Path, name: &str, kind: &str) {
    let file = format!("{name}.key");
    match kind {
        "ec" => openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &file,
            ],
        ),
        "rsa" => openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                &file,
            ],
        ),
        _ => openssl(dir, &["genpkey", "-algorithm", "ED25519", "-out", &file]),
    }
}

/// `dir/name.pem`, for `dir/name.key`, issued by `issuer` (its `.pem` and `.key`), a CA
/// when `ca`.
fn cert(dir: &Path, name: &str, issuer: &str, ca: bool) {
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

/// A CA, an intermediate it issued, and leaves `ec`, `rsa` and `ed25519` the intermediate
/// issued, each with its key; `NAME-chain.pem` is a leaf then the intermediate.
fn pki(test: &str) -> PathBuf {
    let dir = fresh_dir(&format!("ringwork-tls-{test}-"));
    key(&dir, "ca", "ec");
    cert(&dir, "ca", "ca", true);
    key(&dir, "inter", "ec");
    cert(&dir, "inter", "ca", true);
    for kind in ["ec", "rsa", "ed25519"] {
        key(&dir, kind, kind);
        cert(&dir, kind, "inter", false);
        let chain = [read(&dir, &format!("{kind}.pem")), read(&dir, "inter.pem")].concat();
        std::fs::write(dir.join(format!("{kind}-chain.pem")), chain).unwrap();
    }
    dir
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap()
}

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
fn every_key_kind_with_its_chain_loads() {
    let dir = pki("good");
    for kind in ["ec", "rsa", "ed25519"] {
        let err = start(&tls_args(
            &dir,
            &format!("{kind}-chain.pem"),
            &format!("{kind}.key"),
        ));
        assert!(
            err.contains("load, but TLS listeners are not served yet"),
            "{kind}: {err}"
        );
    }
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
        assert!(!err.contains("not served yet"), "{cert} {key}: {err}");
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
