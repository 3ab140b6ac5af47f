//! ringwork-files over HTTPS, on both backends: curl and `openssl s_client` (TLS 1.2 and
//! 1.3, ALPN, SNI absent and present, resumption), every test file byte-exact and a Range
//! request, the certificate replaced on SIGHUP under load with no connection dropped, and
//! hostile clients: garbage records, a ClientHello in one-byte writes, a handshake that
//! stalls, 2,000 stalled handshakes while a normal client is served, and a client that ends
//! without close_notify.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringwork_e2e::pki::{cert_der, client_config, leaf, pki, TlsClient};
use ringwork_e2e::{assert_fds_return, fresh_dir, random_bytes, Server, BACKENDS};
use rustls::ClientConnection;

/// The served files: sizes around the chunk (64 KiB) and a record (16 KiB) boundaries.
const SIZES: [usize; 8] = [0, 1, 4_095, 16_384, 65_536, 65_537, 1_048_579, 3_000_000];

fn root(test: &str) -> PathBuf {
    let root = fresh_dir(&format!("ringwork-https-{test}-root-"));
    for (i, size) in SIZES.into_iter().enumerate() {
        std::fs::write(root.join(format!("f{size}")), random_bytes(i as u64, size)).unwrap();
    }
    std::fs::write(root.join("index.html"), "hello over tls\n").unwrap();
    root
}

/// ringwork-files on `backend` (one thread) with a plain listener (`addrs()[0]`) and a TLS
/// one (`addrs()[1]`) serving `root` with `dir`'s `ec` leaf, and `extra` flags.
fn serve(backend: &str, dir: &Path, root: &Path, extra: &[&str]) -> Server {
    let (chain, key) = (dir.join("ec-chain.pem"), dir.join("ec.key"));
    let mut args = vec![
        "--backend",
        backend,
        "--threads",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        chain.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.push(root.to_str().unwrap());
    Server::start_capturing("ringwork-files", &args)
}

/// curl with `args` against `https://localhost:PORT` (resolved to the server), trusting the
/// test CA: its stdout, and its stderr.
fn curl(dir: &Path, addr: SocketAddr, args: &[&str]) -> (Vec<u8>, String) {
    let resolve = format!("localhost:{}:127.0.0.1", addr.port());
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--resolve", &resolve, "--cacert"])
        .arg(dir.join("ca.pem"))
        .args(args)
        .output()
        .expect("curl runs (install curl)");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "curl {args:?}: {stderr}");
    (out.stdout, stderr)
}

#[test]
fn curl_gets_every_file_byte_exact_over_tls_1_2_and_1_3() {
    let dir = pki("curl");
    let root = root("curl");
    for backend in BACKENDS {
        let server = serve(backend, &dir, &root, &[]);
        let tls = server.addrs[1];
        let base = format!("https://localhost:{}", tls.port());
        for version in [&["--tlsv1.2", "--tls-max", "1.2"][..], &["--tlsv1.3"][..]] {
            for (i, size) in SIZES.into_iter().enumerate() {
                let url = format!("{base}/f{size}");
                let (body, _) = curl(&dir, tls, &[version, &[url.as_str()]].concat());
                assert!(
                    body == random_bytes(i as u64, size),
                    "{backend} {version:?}: f{size} differs ({} bytes came)",
                    body.len()
                );
            }
            // A Range of the 3 MB file, and two requests on one connection.
            let url = format!("{base}/f3000000");
            let (part, _) = curl(
                &dir,
                tls,
                &[version, &["-r", "1000000-1065999", &url]].concat(),
            );
            assert!(part == random_bytes(7, 3_000_000)[1_000_000..1_066_000]);
            let (two, err) = curl(
                &dir,
                tls,
                &[
                    version,
                    &["-v", &format!("{base}/index.html"), &format!("{base}/f1")],
                ]
                .concat(),
            );
            assert_eq!(
                two,
                [&b"hello over tls\n"[..], &random_bytes(1, 1)].concat()
            );
            assert!(
                err.contains("Re-using existing connection") || err.contains("Reusing existing"),
                "{backend}: the second request took a new connection:\n{err}"
            );
            assert!(
                err.lines().any(|l| l.contains("ALPN")
                    && l.contains("accepted")
                    && l.contains("http/1.1")),
                "{backend}: no ALPN http/1.1 in\n{err}"
            );
        }
        // The plain listener beside it still speaks HTTP.
        let plain = ringwork_e2e::http::once(
            server.addrs[0],
            b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert_eq!(plain.body, b"hello over tls\n");
        // One handshake per curl run.
        let stats = ringwork_e2e::terminate(server);
        let runs = 2 * (SIZES.len() as u64 + 2);
        assert_eq!(
            ringwork_e2e::stat(&stats, "tls_handshakes"),
            runs,
            "{backend}: {stats}"
        );
        assert_eq!(
            ringwork_e2e::stat(&stats, "tls_failures"),
            0,
            "{backend}: {stats}"
        );
    }
}

/// `openssl s_client` with `args`, sending a request that closes the connection: its output.
fn s_client(dir: &Path, addr: SocketAddr, args: &[&str]) -> String {
    let connect = format!("127.0.0.1:{}", addr.port());
    let mut child = Command::new("openssl")
        .current_dir(dir)
        .args([
            "s_client", "-connect", &connect, "-CAfile", "ca.pem", "-alpn", "http/1.1",
        ])
        .args(["-verify_return_error", "-ign_eof"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl runs");
    let request = b"GET /index.html HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    child.stdin.take().unwrap().write_all(request).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "s_client {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn openssl_s_client_negotiates_and_resumes_with_and_without_sni() {
    let dir = pki("s-client");
    let root = root("s-client");
    for backend in BACKENDS {
        let server = serve(backend, &dir, &root, &[]);
        let tls = server.addrs[1];
        for (version, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
            for sni in [&["-servername", "localhost"][..], &["-noservername"][..]] {
                let what = format!("{backend} {version} {sni:?}");
                let first = s_client(
                    &dir,
                    tls,
                    &[&[version, "-sess_out", "sess.pem"][..], sni].concat(),
                );
                assert!(first.contains(&format!("New, {name}")), "{what}: {first}");
                assert!(first.contains("ALPN protocol: http/1.1"), "{what}: {first}");
                assert!(
                    first.contains("Verify return code: 0 (ok)"),
                    "{what}: {first}"
                );
                assert!(
                    first.contains("HTTP/1.1 200 OK") && first.contains("hello over tls"),
                    "{what}: {first}"
                );
                let again = s_client(
                    &dir,
                    tls,
                    &[&[version, "-sess_in", "sess.pem"][..], sni].concat(),
                );
                assert!(
                    again.contains(&format!("Reused, {name}")),
                    "{what}: not resumed: {again}"
                );
                assert!(again.contains("hello over tls"), "{what}: {again}");
            }
        }
    }
}

/// Reads from `sock` until the server closes it (true) or `limit` passes (false); what came.
fn read_to_close(sock: &mut TcpStream, limit: Duration) -> (bool, Vec<u8>) {
    let end = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        match sock.read(&mut buf) {
            Ok(0) => return (true, got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (true, got),
        }
    }
    (false, got)
}

/// A client's first flight (its ClientHello) for `localhost`.
fn client_hello(config: &Arc<rustls::ClientConfig>) -> Vec<u8> {
    let mut conn =
        ClientConnection::new(Arc::clone(config), "localhost".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    hello
}

#[test]
fn garbage_and_plain_http_get_an_alert_and_a_close() {
    let dir = pki("garbage");
    let root = root("garbage");
    for backend in BACKENDS {
        let server = serve(backend, &dir, &root, &["--header-timeout-ms", "10000"]);
        let tls = server.addrs[1];
        let baseline = server.settled_fd_count();
        for junk in [
            random_bytes(99, 3_000),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ] {
            let mut sock = TcpStream::connect(tls).unwrap();
            sock.write_all(&junk).unwrap();
            // Closed long before the header timeout, after an alert record (type 21).
            let (closed, got) = read_to_close(&mut sock, Duration::from_secs(5));
            assert!(closed, "{backend}: still open after garbage");
            assert_eq!(got.first(), Some(&21), "{backend}: {got:?}");
        }
        // A ClientHello in one-byte writes, then a whole exchange.
        let config = client_config(&dir, None, true);
        let hello = client_hello(&config);
        let mut conn =
            ClientConnection::new(Arc::clone(&config), "localhost".try_into().unwrap()).unwrap();
        let mut sock = TcpStream::connect(tls).unwrap();
        sock.set_nodelay(true).unwrap();
        let mut first = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut first).unwrap();
        }
        assert_eq!(first.len(), hello.len());
        for (i, b) in first.iter().enumerate() {
            sock.write_all(&[*b]).unwrap();
            if i % 64 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let mut stream = rustls::StreamOwned::new(conn, sock);
        stream
            .sock
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"GET /f65537 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let body_at = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(response.starts_with(b"HTTP/1.1 200 OK"), "{backend}");
        assert!(
            response[body_at..] == random_bytes(5, 65_537),
            "{backend}: body differs"
        );
        drop(stream);
        assert_fds_return(&server, baseline, &format!("{backend}: garbage"));
        let stats = ringwork_e2e::terminate(server);
        assert_eq!(
            ringwork_e2e::stat(&stats, "tls_failures"),
            2,
            "{backend}: {stats}"
        );
        assert_eq!(
            ringwork_e2e::stat(&stats, "tls_handshakes"),
            1,
            "{backend}: {stats}"
        );
    }
}

#[test]
fn stalled_handshakes_are_dropped_and_do_not_hold_back_a_normal_client() {
    assert!(
        ringwork_e2e::raise_nofile_limit() > 4_500,
        "RLIMIT_NOFILE too low for 2,000 connections"
    );
    let dir = pki("stall");
    let root = root("stall");
    let config = client_config(&dir, None, true);
    let hello = client_hello(&config);
    for backend in BACKENDS {
        let server = serve(backend, &dir, &root, &["--header-timeout-ms", "1500"]);
        let tls = server.addrs[1];
        let baseline = server.settled_fd_count();
        // 2,000 connections that send half a ClientHello and then nothing.
        let started = Instant::now();
        let mut stalled: Vec<TcpStream> = (0..2_000)
            .map(|_| {
                let mut s = TcpStream::connect(tls).unwrap();
                s.write_all(&hello[..hello.len() / 2]).unwrap();
                s
            })
            .collect();
        // A normal client is served meanwhile.
        let mut client = TlsClient::connect(tls, &config).unwrap();
        let r = client.get("/f1048579", "").unwrap();
        assert!(
            r.body == random_bytes(6, 1_048_579),
            "{backend}: the normal client's body"
        );
        assert!(
            started.elapsed() < Duration::from_millis(1_500),
            "{backend}: served only after the stalled ones went"
        );
        drop(client);
        // Each stalled one is closed at the header timeout.
        for (i, s) in stalled.iter_mut().enumerate() {
            let (closed, _) = read_to_close(s, Duration::from_secs(10));
            assert!(
                closed,
                "{backend}: stalled handshake {i} still open after {:?}",
                started.elapsed()
            );
        }
        assert!(
            started.elapsed() >= Duration::from_millis(1_400),
            "{backend}: closed before the timeout"
        );
        drop(stalled);
        assert_fds_return(&server, baseline, &format!("{backend}: stalled handshakes"));
    }
}

#[test]
fn a_client_that_ends_without_close_notify_frees_its_connection() {
    let dir = pki("truncate");
    let root = root("truncate");
    let config = client_config(&dir, None, true);
    for backend in BACKENDS {
        let server = serve(backend, &dir, &root, &[]);
        let tls = server.addrs[1];
        let baseline = server.settled_fd_count();
        for k in 0..20 {
            let mut client = TlsClient::connect(tls, &config).unwrap();
            // Half of them mid-response: the server's sends fail or find the peer gone.
            let target = if k % 2 == 0 {
                "/index.html"
            } else {
                "/f3000000"
            };
            client
                .reader
                .get_mut()
                .write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .unwrap();
            client.reader.get_mut().flush().unwrap();
            if k % 2 == 0 {
                let mut b = [0u8; 64];
                let _ = client.reader.get_mut().read(&mut b).unwrap();
            }
            // The TCP end, with no close_notify.
            client
                .reader
                .get_ref()
                .sock
                .shutdown(std::net::Shutdown::Both)
                .unwrap();
        }
        assert_fds_return(
            &server,
            baseline,
            &format!("{backend}: ends without close_notify"),
        );
        let mut client = TlsClient::connect(tls, &config).unwrap();
        assert_eq!(client.get("/index.html", "").unwrap().status, 200);
    }
}

#[test]
fn sighup_replaces_the_certificate_under_load_without_dropping_a_connection() {
    let dir = pki("reload");
    let root = root("reload");
    for backend in BACKENDS {
        // The served files are copies: the test overwrites them.
        std::fs::copy(dir.join("ec-chain.pem"), dir.join("serve-chain.pem")).unwrap();
        std::fs::copy(dir.join("ec.key"), dir.join("serve.key")).unwrap();
        let (chain, key) = (dir.join("serve-chain.pem"), dir.join("serve.key"));
        let args = [
            "--backend",
            backend,
            "--threads",
            "1",
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            chain.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            root.to_str().unwrap(),
        ];
        let server = Server::start_capturing("ringwork-files", &args);
        let tls = server.addrs[0];
        let config = client_config(&dir, None, true);
        let stop = Arc::new(AtomicBool::new(false));
        // Four keep-alive clients asking all along, each on the one connection it opened.
        let clients: Vec<_> = (0..4)
            .map(|k| {
                let (stop, config) = (Arc::clone(&stop), Arc::clone(&config));
                std::thread::spawn(move || {
                    let mut client = TlsClient::connect(tls, &config).unwrap();
                    let mut done = 0u32;
                    while !stop.load(Ordering::Relaxed) || done == 0 {
                        let target = if k % 2 == 0 { "/f65537" } else { "/index.html" };
                        let r = client
                            .get(target, "")
                            .unwrap_or_else(|e| panic!("client {k} after {done}: {e}"));
                        assert_eq!(r.status, 200);
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        // A new leaf (a new key too), written over the served files, then SIGHUP.
        leaf(&dir, "next", "ec");
        let new_der = cert_der(&dir, "next.pem");
        std::fs::copy(dir.join("next-chain.pem"), &chain).unwrap();
        std::fs::copy(dir.join("next.key"), &key).unwrap();
        server.signal(rustix::process::Signal::HUP);
        let end = Instant::now() + Duration::from_secs(10);
        let seen = loop {
            let client = TlsClient::connect(tls, &config).unwrap();
            let leaf = client.conn().peer_certificates().unwrap()[0].clone();
            if leaf == new_der || Instant::now() > end {
                break leaf;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            seen == new_der,
            "{backend}: new handshakes still get the old certificate"
        );
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            let done = c
                .join()
                .expect("a client lost its connection or a response");
            assert!(done > 0);
        }
        let reloaded = server.wait_until(Duration::from_secs(5), |s| {
            s.stderr()
                .lines
                .iter()
                .any(|l| l.contains("certificate reloaded"))
        });
        assert!(
            reloaded,
            "{backend}: no reload line in {:?}",
            server.stderr().lines
        );
        ringwork_e2e::terminate(server);
    }
}
