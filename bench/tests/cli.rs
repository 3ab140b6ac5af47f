//! The ringwork-bench binary's command line (this test also makes `cargo test --workspace`
//! build the binary for the end-to-end suite).

use std::process::Command;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringwork-bench"))
}

#[test]
fn help_lists_every_command() {
    let out = bench().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["compare", "drain", "echo", "fileread"] {
        assert!(text.contains(cmd), "--help lacks {cmd}: {text}");
    }
}

#[test]
fn bad_sizes_are_refused_with_a_message() {
    let out = bench().args(["fileread", "--bs", "4x"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown size suffix"));
}

#[test]
fn fileread_runs_every_engine_on_a_small_file() {
    let dir = std::env::temp_dir().join(format!("ringwork-bench-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("data");
    let json = dir.join("out.json");
    let out = bench()
        .args([
            "fileread",
            "--size",
            "1M",
            "--qd",
            "4",
            "--duration",
            "1",
            "--rounds",
            "2",
            "--warm",
        ])
        .arg("--file")
        .arg(&file)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    for engine in [
        "| uring | warm |",
        "| uring-fixed | warm |",
        "| pread | warm |",
        "| pread-pool | warm |",
    ] {
        assert!(table.contains(engine), "missing {engine} row: {table}");
    }
    assert!(table.contains("2 rounds"), "{table}");
    let json = std::fs::read_to_string(&json).unwrap();
    // A median per engine, and each engine's two runs.
    assert_eq!(json.matches("\"median_iops\"").count(), 5, "{json}");
    assert_eq!(json.matches("\"engine\"").count(), 5 + 5 * 2, "{json}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Every `drain` variant, briefly, on small files: a row each, and the JSON shows no ordering
/// violation for the three ordered variants (the run itself fails if one occurs).
#[test]
fn drain_runs_every_variant_in_order() {
    let dir = std::env::temp_dir().join(format!("ringwork-bench-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("out.json");
    let out = bench()
        .args([
            "drain",
            "--size",
            "1M",
            "--read-size",
            "1M",
            "--batch",
            "4",
            "--in-flight",
            "2",
            "--qd",
            "4",
            "--drain-every",
            "2",
            "--duration",
            "0.3",
            "--rounds",
            "1",
        ])
        .arg("--file")
        .arg(dir.join("wal"))
        .arg("--read-file")
        .arg(dir.join("reads"))
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    for v in ["drain", "link", "wait", "unordered", "reads", "reads-drain"] {
        assert!(
            table.contains(&format!("| {v} |")),
            "missing {v} row: {table}"
        );
    }
    assert!(table.contains("NO (incorrect)"), "{table}");
    let json = std::fs::read_to_string(&json).unwrap();
    assert_eq!(json.matches("\"variant\"").count(), 6, "{json}");
    for v in ["drain", "link", "wait"] {
        let at = json.find(&format!("\"variant\":\"{v}\"")).unwrap();
        let obj = &json[at..at + json[at..].find('}').unwrap()];
        assert!(
            !obj.contains("\"batches\":0,"),
            "{v} completed no batch: {obj}"
        );
        let obj_end = &json[at..];
        let violations = obj_end.split("\"violations\":").nth(1).unwrap();
        assert!(violations.starts_with("0}"), "{v}: {obj_end}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn drain_refuses_zero_sizes() {
    let out = bench().args(["drain", "--batch", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 1"));
}

/// A partial report (`--site-only`, `--c10k-only`, `--files --tls`) is never written over the repository's
/// whole BENCHMARKS.md by default: without `--out` it is refused before anything runs, in
/// a directory where a BENCHMARKS.md stands to prove it untouched.
#[test]
fn partial_compare_runs_need_an_out_directory() {
    let dir = std::env::temp_dir().join(format!("ringwork-bench-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("BENCHMARKS.md");
    std::fs::write(&report, "the whole report\n").unwrap();
    for only in [
        &["--site-only"][..],
        &["--c10k-only"],
        &["--files", "--tls"],
    ] {
        let out = bench()
            .arg("compare")
            .args(only)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{only:?} ran without --out");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--out DIR"), "{only:?}: {err}");
        assert_eq!(
            std::fs::read_to_string(&report).unwrap(),
            "the whole report\n"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fileread_refuses_zero_rounds() {
    let out = bench()
        .args(["fileread", "--rounds", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rounds must be at least 1"));
}

/// Every `sendpath` variant, briefly, on two small files (one not a multiple of the chunk):
/// a median row each per size, and one JSON object per run. Each run itself fails when the
/// reader finds a wrong byte or a count that differs from what the server sent.
#[test]
fn sendpath_runs_every_variant_on_small_files() {
    let dir = std::env::temp_dir().join(format!("ringwork-bench-sendpath-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("out.json");
    let out = bench()
        .args([
            "sendpath",
            "--sizes",
            "64k,100001",
            "--conns",
            "2",
            "--duration",
            "0.2",
            "--warmup",
            "0.05",
            "--rounds",
            "1",
        ])
        .arg("--dir")
        .arg(&dir)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    for size in ["64 KiB", "100001 B"] {
        for v in [
            "read-send",
            "splice",
            "mmap-send",
            "send-zc",
            "sendfile",
            "copy-send",
            "sendmsg",
        ] {
            assert!(
                table.contains(&format!("| {size} | {v} |")),
                "missing {size} {v} row: {table}"
            );
        }
    }
    let json = std::fs::read_to_string(&json).unwrap();
    assert_eq!(json.matches("\"variant\"").count(), 14, "{json}");
    assert!(!json.contains("\"bytes\":0,"), "a run sent nothing: {json}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sendpath_refuses_zero_connections() {
    let out = bench().args(["sendpath", "--conns", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--conns"));
}

/// A TLS server on a thread of this process, with the configuration ringwork-files serves
/// with (`ringwork_sys::tls`) and a certificate `openssl` made: every GET gets `body`.
fn tls_server(dir: &std::path::Path, body: &'static [u8]) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let made = Command::new("openssl")
        .args([
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
        ])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("the openssl command, which makes the test certificate (apt-get install openssl)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let files = ringwork_sys::tls::CertFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    let config = ringwork_sys::tls::TlsConfig::load(&files)
        .unwrap()
        .server_config();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { break };
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            std::thread::spawn(move || {
                let mut s = rustls::StreamOwned::new(conn, s);
                let (mut buf, mut chunk) = (Vec::new(), [0u8; 1024]);
                while let Ok(n @ 1..) = s.read(&mut chunk) {
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..p + 4);
                        let mut resp =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                                .into_bytes();
                        resp.extend_from_slice(body);
                        if s.write_all(&resp).and_then(|()| s.flush()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// `http` over TLS from the command line: an https:// URL and --tls-ca, a connection per
/// request resuming from one session store; the tables and the JSON say what happened.
#[test]
fn http_tls_resumes_new_connections() {
    let dir = std::env::temp_dir().join(format!("ringwork-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let addr = tls_server(&dir, &[5u8; 3000]);
    let json = dir.join("out.json");
    let out = bench()
        .arg("http")
        .arg("--url")
        .arg(format!("https://{addr}/x"))
        .arg("--tls-ca")
        .arg(dir.join("cert.pem"))
        .args([
            "--tls-server-name",
            "localhost",
            "--tls-resume",
            "--new-conn-per-request",
        ])
        .args([
            "--conns",
            "4",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("TLS: TLSv1_3 "), "{stdout}");
    assert!(
        stdout.contains("| handshakes/s | full | resumed |"),
        "{stdout}"
    );
    let json = std::fs::read_to_string(&json).unwrap();
    let field = |name: &str| -> u64 {
        let at = json.find(&format!("\"{name}\":")).unwrap() + name.len() + 3;
        json[at..]
            .split([',', '}'])
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(field("requests") > 10, "{json}");
    assert_eq!(field("errors"), 0, "{json}");
    assert!(
        field("handshakes_resumed") > field("handshakes_full"),
        "{json}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn http_tls_needs_a_ca() {
    let out = bench()
        .args(["http", "--url", "https://127.0.0.1:1/"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-ca"), "{err}");
}
