//! Fault injection against the real binaries on loopback: connection churn with clean closes and
//! resets (no fd or memory left behind), the smallest rings under a burst (PITFALLS.md, "CQ
//! overflow is silent unless checked": CQ
//! pressure loses nothing), a generated corpus of malformed HTTP requests (errors or clean
//! closes, never a file from outside the root), and ringwork-files under misbehaving clients:
//! resets and half-closes in the middle of a 64 MiB response, clients that never read,
//! slowloris and silent clients, and SIGTERM with downloads in flight (a graceful drain).
//!
//! Each test is bounded for a debug build on two cores. `RINGWORK_CHURN_CYCLES` (default 5,000)
//! sets the churn length per backend; `bench/churn.sh` runs 100,000 by hand.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ringwork_e2e::http::{once, Client};
use ringwork_e2e::{
    assert_fds_return, fresh_dir, raise_nofile_limit, random_bytes, run_clients, stat, terminate,
    Server, BACKENDS,
};

/// Client threads that share the churn cycles.
const CHURN_THREADS: usize = 4;
/// Cycles run before the RSS baseline is taken, so allocator warm-up does not count as growth.
const WARM_UP_CYCLES: usize = 2_000;
/// How much the server's RSS may grow across the churn.
const RSS_GROWTH_LIMIT_KIB: u64 = 2048;

fn churn_cycles() -> usize {
    std::env::var("RINGWORK_CHURN_CYCLES")
        .ok()
        .map(|v| v.parse().expect("RINGWORK_CHURN_CYCLES: a number"))
        .unwrap_or(5_000)
}

/// Closes `stream` with SO_LINGER 0: the kernel sends RST instead of FIN.
fn reset(stream: TcpStream) {
    rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO)).unwrap();
}

/// Connects to `addr` from source address 127.x.y.z chosen by `i`. Churn from one source
/// address wraps the ephemeral ports within a minute, and a SYN that meets the server's
/// TIME_WAIT for the same four-tuple (it closed first) can be answered with a reset.
fn connect_spread(addr: SocketAddr, i: usize) -> TcpStream {
    use rustix::net::{bind, connect, socket, sockopt, AddressFamily, SocketType};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    sockopt::set_socket_reuseaddr(&fd, true).unwrap();
    let source = std::net::Ipv4Addr::new(127, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
    bind(&fd, &SocketAddr::from((source, 0))).unwrap();
    connect(&fd, &addr).unwrap();
    let stream = TcpStream::from(fd);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Runs `cycle(i)` for `i` in `range`, split over [`CHURN_THREADS`] threads.
fn churn(range: std::ops::Range<usize>, cycle: impl Fn(usize) + Sync) {
    std::thread::scope(|scope| {
        for t in 0..CHURN_THREADS {
            let (range, cycle) = (range.clone(), &cycle);
            scope.spawn(move || range.skip(t).step_by(CHURN_THREADS).for_each(cycle));
        }
    });
}

/// Warms `server` up, takes its fd and RSS baselines, runs `cycles` of `cycle`, and checks
/// that the fds return to the baseline and RSS grew by less than [`RSS_GROWTH_LIMIT_KIB`].
fn churn_leaves_nothing_behind(server: &Server, what: &str, cycle: impl Fn(usize) + Sync) {
    let cycles = churn_cycles();
    churn(0..WARM_UP_CYCLES, &cycle);
    let fds = server.settled_fd_count();
    let rss_before = server.rss_kib();
    churn(WARM_UP_CYCLES..WARM_UP_CYCLES + cycles, &cycle);
    assert_fds_return(server, fds, &format!("{what}: after {cycles} cycles"));
    let rss_after = server.rss_kib();
    println!("{what}: {cycles} cycles, RSS {rss_before} KiB -> {rss_after} KiB, {fds} fds");
    assert!(
        rss_after < rss_before + RSS_GROWTH_LIMIT_KIB,
        "{what}: RSS grew from {rss_before} KiB to {rss_after} KiB over {cycles} cycles"
    );
}

/// One echo connection; `i % 3` picks how it ends: half-close and read the echo to EOF, read
/// the echo then reset, or reset with the echo still in flight.
fn echo_cycle(addr: SocketAddr, i: usize) {
    let mut s = connect_spread(addr, i);
    let payload = random_bytes(i as u64 + 1, 1 + i * 7919 % 2000);
    s.write_all(&payload).unwrap();
    match i % 3 {
        0 => {
            s.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::with_capacity(payload.len());
            s.read_to_end(&mut got).unwrap();
            assert!(got == payload, "cycle {i}: echo differs");
        }
        1 => {
            let mut got = vec![0; payload.len()];
            s.read_exact(&mut got).unwrap();
            assert!(got == payload, "cycle {i}: echo differs");
            reset(s);
        }
        _ => reset(s),
    }
}

#[test]
fn echo_churn_returns_to_baseline() {
    for backend in BACKENDS {
        let server = Server::start(
            "ringwork-echo",
            &[
                "--listen",
                "127.0.0.1:0",
                "--backend",
                backend,
                "--threads",
                "2",
            ],
        );
        let addr = server.addr;
        churn_leaves_nothing_behind(&server, &format!("echo {backend}"), |i| echo_cycle(addr, i));
    }
}

/// The file-server fixture: `secret.txt` beside the served `root/`, which holds `inside.txt`,
/// `sub/x.txt` and a symlink `link` to the secret.
struct FilesFixture {
    root: PathBuf,
    secret: Vec<u8>,
}

fn files_fixture() -> &'static FilesFixture {
    static FIXTURE: OnceLock<FilesFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = fresh_dir("ringwork-faults-e2e-");
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("inside.txt"), b"inside the root\n").unwrap();
        std::fs::write(root.join("sub/x.txt"), b"x\n").unwrap();
        let secret = format!("RINGWORK-SECRET-{}", std::process::id()).into_bytes();
        std::fs::write(dir.join("secret.txt"), &secret).unwrap();
        std::os::unix::fs::symlink("../secret.txt", root.join("link")).unwrap();
        FilesFixture { root, secret }
    })
}

fn start_files(backend: &str, extra: &[&str]) -> Server {
    let root = files_fixture().root.to_str().unwrap();
    let mut args = vec!["--listen", "127.0.0.1:0", "--backend", backend];
    args.extend_from_slice(extra);
    args.push(root);
    Server::start("ringwork-files", &args)
}

fn inside(root: &Path) -> Vec<u8> {
    std::fs::read(root.join("inside.txt")).unwrap()
}

#[test]
fn files_churn_returns_to_baseline() {
    let expected = inside(&files_fixture().root);
    for backend in BACKENDS {
        // Small chunks: each open connection holds two chunk buffers, and freed ones stay in
        // the allocator, so with the default 64 KiB the RSS would follow the peak number of
        // connections open at once (which a loaded machine raises) more than any leak.
        let server = start_files(backend, &["--chunk", "4096"]);
        let addr = server.addr;
        churn_leaves_nothing_behind(&server, &format!("files {backend}"), |i| {
            let mut c = Client {
                reader: BufReader::new(connect_spread(addr, i)),
            };
            // `i % 3`: the client closes, resets, or asks the server to close first.
            let extra = if i % 3 == 2 {
                "Connection: close\r\n"
            } else {
                ""
            };
            let r = c.get("/inside.txt", extra);
            assert_eq!((r.status, &r.body), (200, &expected), "cycle {i}");
            match i % 3 {
                1 => reset(c.reader.into_inner()),
                2 => {
                    let mut rest = Vec::new();
                    c.reader.read_to_end(&mut rest).unwrap();
                    assert!(rest.is_empty(), "cycle {i}: bytes after Connection: close");
                }
                _ => {}
            }
        });
    }
}

#[test]
fn smallest_rings_under_a_burst_echo_every_byte() {
    raise_nofile_limit();
    for backend in BACKENDS {
        // One SQ entry (CQ of four) and two receive buffers: the CQ fills, multishot requests
        // end and must be re-armed, and the buffer ring runs dry over and over.
        let server = Server::start(
            "ringwork-echo",
            &[
                "--listen",
                "127.0.0.1:0",
                "--backend",
                backend,
                "--threads",
                "1",
                "--sq-entries",
                "1",
                "--buffers",
                "2",
                "--batch",
                "1",
            ],
        );
        let baseline = server.settled_fd_count();
        run_clients(server.addr, 200, None, |i| 1 + (i * 7919) % 100_000);
        run_clients(server.addr, 200, None, |_| 16);
        assert_fds_return(&server, baseline, &format!("{backend}: after the burst"));
        let stats = terminate(server);
        if backend == "uring" {
            // The point of the test: the 4-entry CQ really overflowed into the kernel's
            // backlog (or refused submissions with EBUSY), and still every byte came back.
            assert!(
                stat(&stats, "cq_overflows") + stat(&stats, "busy_retries") > 0,
                "the CQ never overflowed, so this test proved nothing: {stats}"
            );
            assert_eq!(stat(&stats, "refused"), 0, "{stats}");
        }
    }
}

/// One malformed-request case: the bytes, and whether a success status is acceptable (a
/// well-formed request hidden among the variants, such as an absolute-form target inside the
/// root).
struct Case {
    raw: Vec<u8>,
    may_succeed: bool,
}

fn case(raw: impl Into<Vec<u8>>) -> Case {
    Case {
        raw: raw.into(),
        may_succeed: false,
    }
}

const VALID: &[u8] = b"GET /inside.txt HTTP/1.1\r\nHost: t\r\n\r\n";

fn malformed_corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    // Every strict prefix of a valid request.
    for n in 0..VALID.len() {
        cases.push(case(&VALID[..n]));
    }
    for version in [
        "HTTP/2.0",
        "HTTP/1.2",
        "HTTP/1.x",
        "HTTP/1.",
        "HTTP/",
        "HTTP/11",
        "http/1.1",
        "HTTP/9.9",
        "HTTP/0.9",
        "HTTP/1.1x",
        "HTTP/1.10",
        "HTTP/1.1 junk",
        "",
    ] {
        cases.push(case(format!(
            "GET /inside.txt {version}\r\nHost: t\r\n\r\n"
        )));
    }
    let header_lines: Vec<Vec<u8>> = vec![
        b"NoColonHere".to_vec(),
        b"Bad Name: x".to_vec(),
        b": empty-name".to_vec(),
        b"X:\0y".to_vec(),
        b"X: a\rb".to_vec(),
        b"X : space-before-colon".to_vec(),
        b"X: a\r\n folded".to_vec(),
        b"X: a\r\n\tfolded".to_vec(),
        b"X: \xff\xfe\x01".to_vec(),
        b"\x01X: y".to_vec(),
        format!("X-Long: {}", "h".repeat(10_000)).into_bytes(),
        format!("{}: y", "N".repeat(10_000)).into_bytes(),
        // More header lines than an 8 KiB head holds (their count is limited by its size).
        (0..1000)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect::<String>()
            .trim_end()
            .into(),
        b"Content-Length: 5\r\nTransfer-Encoding: chunked".to_vec(),
        b"Transfer-Encoding: chunked\r\nContent-Length: 0".to_vec(),
        b"Transfer-Encoding: chunked".to_vec(),
        b"Transfer-Encoding: identity".to_vec(),
        b"Transfer-Encoding : chunked".to_vec(),
        b"Transfer-Encoding: xchunked".to_vec(),
        b"Transfer-Encoding:\tchunked".to_vec(),
        b"Content-Length: 0\r\nContent-Length: 0".to_vec(),
        b"Content-Length: 0\r\nContent-Length: 40".to_vec(),
        b"Content-Length: 0, 0".to_vec(),
        b"Content-Length: -1".to_vec(),
        b"Content-Length: +0".to_vec(),
        b"Content-Length: 0x10".to_vec(),
        b"Content-Length: 1e3".to_vec(),
        b"Content-Length: 99999999999999999999999".to_vec(),
        b"Content-Length: 40".to_vec(),
        b"Host: second".to_vec(),
    ];
    // A smuggled second request after the head, should the server skip a body it was told of.
    let smuggled = "GET /../secret.txt HTTP/1.1\r\nHost: t\r\n\r\n";
    for line in &header_lines {
        for method in ["GET", "HEAD"] {
            let mut raw = format!("{method} /inside.txt HTTP/1.1\r\nHost: t\r\n").into_bytes();
            raw.extend_from_slice(line);
            raw.extend_from_slice(b"\r\n\r\n");
            raw.extend_from_slice(smuggled.as_bytes());
            cases.push(case(raw));
        }
    }
    let mut targets: Vec<Vec<u8>> = [
        "/../secret.txt",
        "/../../secret.txt",
        "/sub/../../secret.txt",
        "/./../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/.%2e/secret.txt",
        "/%2e./secret.txt",
        "/..%2fsecret.txt",
        "/..%2Fsecret.txt",
        "/%2e%2e%2fsecret.txt",
        "/sub/..%2f..%2fsecret.txt",
        "/%252e%252e/secret.txt",
        "/..\\secret.txt",
        "/..%5csecret.txt",
        "/link",
        "/link/",
        "/sub/../link",
        "//../secret.txt",
        "/inside.txt%00",
        "/inside.txt%00.html",
        "/%00",
        "/%",
        "/%zz",
        "/%2",
        "/%ff%fe",
        "*",
        "",
        "../secret.txt",
        "secret.txt",
        "http://t/../secret.txt",
        "http://t/%2e%2e/secret.txt",
        "http://t/link",
    ]
    .iter()
    .map(|t| t.as_bytes().to_vec())
    .collect();
    targets.extend([
        b"/inside\x01.txt".to_vec(),
        b"/inside.txt\0".to_vec(),
        b"/\0/../secret.txt".to_vec(),
        b"/\xff\xfe".to_vec(),
        b"/\xc0\xae\xc0\xae/secret.txt".to_vec(),
        b"/\x7f".to_vec(),
        b"/in side.txt".to_vec(),
        b"/inside.txt\r".to_vec(),
        format!("/{}", "a".repeat(100_000)).into_bytes(),
    ]);
    for target in &targets {
        for head in ["GET", "HEAD"] {
            for tail in [" HTTP/1.1\r\nHost: t\r\n\r\n", " HTTP/1.0\r\n\r\n"] {
                let mut raw = format!("{head} ").into_bytes();
                raw.extend_from_slice(target);
                raw.extend_from_slice(tail.as_bytes());
                cases.push(case(raw));
            }
        }
    }
    // Absolute-form targets inside the root may be served.
    for target in ["http://t/inside.txt", "http://other/inside.txt"] {
        cases.push(Case {
            raw: format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes(),
            may_succeed: true,
        });
    }
    for method in [
        "G\0ET".to_string(),
        "GE T".to_string(),
        "get".to_string(),
        "GET\t".to_string(),
        "\x01GET".to_string(),
        "M".repeat(100),
        "M".repeat(1_000),
        "M".repeat(20_000),
    ] {
        cases.push(case(format!(
            "{method} /inside.txt HTTP/1.1\r\nHost: t\r\n\r\n"
        )));
    }
    // The conditional and content-negotiation headers with broken values: ignored (a 200 or
    // 206 may come back) or refused, never a crash, a leak or a header of the client's making.
    let header_values: Vec<Vec<u8>> = vec![
        b"If-None-Match: \"unterminated".to_vec(),
        b"If-None-Match: W/".to_vec(),
        b"If-None-Match: ,,,".to_vec(),
        b"If-None-Match: *, \"x\"".to_vec(),
        b"If-None-Match: \"a\"\"b\"".to_vec(),
        format!("If-None-Match: {}", "\"e\", ".repeat(2000)).into_bytes(),
        b"If-None-Match: \"x\"\r\nIf-None-Match: *".to_vec(),
        b"If-Range: \"unterminated\r\nRange: bytes=0-1".to_vec(),
        b"If-Range: W/\"weak\"\r\nRange: bytes=0-1".to_vec(),
        b"If-Range: Sun, 31 Nov 1994 08:49:37 GMT\r\nRange: bytes=0-1".to_vec(),
        b"If-Range: 0\r\nRange: bytes=0-1".to_vec(),
        b"If-Range: x\r\nIf-Range: y\r\nRange: bytes=0-1".to_vec(),
        b"Accept-Encoding: gzip;q=".to_vec(),
        b"Accept-Encoding: gzip;q=2".to_vec(),
        b"Accept-Encoding: br;q=0.0000001, gzip;q=-1".to_vec(),
        b"Accept-Encoding: ;;;,,,".to_vec(),
        b"Accept-Encoding: *;q=0".to_vec(),
        format!("Accept-Encoding: {}", "gzip;q=1, ".repeat(2000)).into_bytes(),
        b"Accept-Encoding: \xff\xfe".to_vec(),
        b"User-Agent: \"quoted\" \\ \xff\x7f".to_vec(),
        b"Referer: \t\"\r\nUser-Agent: a\"b".to_vec(),
        format!("User-Agent: {}", "u".repeat(7000)).into_bytes(),
    ];
    for line in &header_values {
        for method in ["GET", "HEAD"] {
            let mut raw = format!("{method} /inside.txt HTTP/1.1\r\nHost: t\r\n").into_bytes();
            raw.extend_from_slice(line);
            raw.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
            cases.push(Case {
                raw,
                may_succeed: true,
            });
        }
    }
    // Directories without their slash are redirected (301): whatever the target carries, the
    // Location stays on this server and no CR/LF gets into the head.
    for target in [
        &b"/sub"[..],
        b"//sub",
        b"///sub?x",
        b"/sub?a%0d%0aInjected:%20x",
        b"/sub?\\x",
        b"/sub#x\r\nInjected: x",
        b"/sub\r\nInjected: x",
        b"http://t/sub?q",
        b"/%73ub",
        b"/sub%2F.",
    ] {
        for method in ["GET", "HEAD"] {
            let mut raw = format!("{method} ").into_bytes();
            raw.extend_from_slice(target);
            raw.extend_from_slice(b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            cases.push(Case {
                raw,
                may_succeed: true,
            });
        }
    }
    cases
}

/// Sends one case (half-closing afterwards unless `half_close` is false, which leaves it to the
/// server's timeouts) and reads until the server closes. A reset counts as a close.
fn send_case(addr: SocketAddr, raw: &[u8], half_close: bool) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer and close before it has read everything: writes may fail.
    let _ = s.write_all(raw);
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return out,
            Err(e) => panic!(
                "case {:?}: read: {e}",
                String::from_utf8_lossy(&raw[..raw.len().min(80)])
            ),
        }
    }
}

#[test]
fn malformed_corpus_gets_errors_and_never_leaks() {
    let fixture = files_fixture();
    let corpus = malformed_corpus();
    assert!(corpus.len() >= 250, "corpus has {} cases", corpus.len());
    for backend in BACKENDS {
        // Short timeouts: cases left open (truncated heads, keep-alive) end quickly. With an
        // access log, so that what the cases send also goes through its escaping.
        let log = fixture
            .root
            .parent()
            .unwrap()
            .join(format!("access-{backend}.log"));
        let _ = std::fs::remove_file(&log);
        let server = start_files(
            backend,
            &[
                "--header-timeout-ms",
                "300",
                "--idle-timeout-ms",
                "300",
                "--access-log",
                log.to_str().unwrap(),
            ],
        );
        // A worker sets up its epoll set or ring after the `listening on` line: one request
        // first, so that the baseline counts it.
        assert_eq!(once(server.addr, VALID).status, 200, "{backend}");
        let baseline = server.settled_fd_count();
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..16 {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(c) = corpus.get(i) else { break };
                    let out = send_case(server.addr, &c.raw, i % 8 != 0);
                    let what = format!(
                        "{backend} case {i} {:?}",
                        String::from_utf8_lossy(&c.raw[..c.raw.len().min(120)])
                    );
                    assert!(
                        !out.windows(fixture.secret.len())
                            .any(|w| w == fixture.secret),
                        "{what}: leaked the secret outside the root"
                    );
                    if out.is_empty() {
                        continue; // a clean close
                    }
                    let status: u16 = out
                        .strip_prefix(b"HTTP/1.1 ")
                        .and_then(|r| std::str::from_utf8(r.get(..3)?).ok())
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_else(|| panic!("{what}: not an HTTP response: {out:?}"));
                    assert!(status >= 400 || c.may_succeed, "{what}: status {status}");
                    let head_end = out
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map_or(out.len(), |p| p + 4);
                    let head = String::from_utf8_lossy(&out[..head_end]);
                    assert!(
                        !head.to_ascii_lowercase().contains("\ninjected"),
                        "{what}: a header of the client's making: {head}"
                    );
                    if let Some(loc) = head.lines().find_map(|l| l.strip_prefix("Location: ")) {
                        assert!(
                            loc.starts_with('/') && !loc.starts_with("//") && !loc.contains('\\'),
                            "{what}: a redirect off this server: {loc}"
                        );
                    }
                });
            }
        });
        let r = once(server.addr, VALID);
        assert_eq!(
            (r.status, r.body),
            (200, inside(&fixture.root)),
            "{backend}"
        );
        assert_fds_return(&server, baseline, &format!("{backend}: after the corpus"));
        terminate(server);
        // One well-formed line per answered request, whatever the cases sent.
        let text = std::fs::read(&log).unwrap();
        let lines: Vec<&[u8]> = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert!(
            lines.len() >= corpus.len() / 2,
            "{backend}: {} lines",
            lines.len()
        );
        for line in lines {
            let shown = String::from_utf8_lossy(line);
            assert!(
                line.iter().all(|b| (0x20..=0x7e).contains(b)),
                "{backend}: a raw byte in the log: {shown}"
            );
            assert!(
                shown.starts_with("127.0.0.1 - - [") && shown.ends_with('"'),
                "{backend}: {shown}"
            );
            // Request line, referer and agent: exactly six unescaped quotes.
            assert_eq!(shown.matches('"').count(), 6, "{backend}: {shown}");
        }
    }
}

/// Size of `big.bin`: far more than the socket buffers hold, so a response to a client that
/// stops reading cannot complete.
const BIG: usize = 64 << 20;

/// `big.bin` (64 MiB of seeded random bytes) in the fixture root, written on first use.
fn big_file() -> &'static [u8] {
    static BIG_FILE: OnceLock<Vec<u8>> = OnceLock::new();
    BIG_FILE.get_or_init(|| {
        let bytes = random_bytes(64, BIG);
        std::fs::write(files_fixture().root.join("big.bin"), &bytes).unwrap();
        bytes
    })
}

const GET_BIG: &[u8] = b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n";

/// Connects, asks for big.bin and reads the response head and then `body` body bytes; returns
/// the connection and the body bytes read.
fn start_big_download(addr: SocketAddr, body: usize) -> (Client, Vec<u8>) {
    let mut c = Client::connect(addr);
    c.send(GET_BIG);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(&mut c.reader, &mut line).unwrap() > 0);
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("Content-Length: {BIG}\r\n")),
        "{head}"
    );
    let mut got = vec![0; body];
    c.reader.read_exact(&mut got).unwrap();
    (c, got)
}

/// Reads the rest of big.bin after `got` and checks every byte.
fn finish_big_download(c: &mut Client, mut got: Vec<u8>, what: &str) {
    let have = got.len();
    got.resize(BIG, 0);
    c.reader.read_exact(&mut got[have..]).unwrap();
    assert!(got == big_file(), "{what}: big.bin differs");
}

/// Most a server's RSS may grow across 100 aborted 64 MiB responses (a server that kept
/// anything per connection, or buffered the file, would exceed it many times over).
const ABORT_RSS_LIMIT_KIB: u64 = 4096;

#[test]
fn resets_and_half_closes_mid_response_leave_nothing_behind() {
    let want = big_file();
    let small = inside(&files_fixture().root);
    for backend in BACKENDS {
        let server = start_files(backend, &[]);
        let addr = server.addr;
        // Warm-up: one full download, so allocator and page cache growth is not counted.
        let (mut c, got) = start_big_download(addr, 0);
        finish_big_download(&mut c, got, backend);
        drop(c);
        let fds = server.settled_fd_count();
        let rss_before = server.rss_kib();
        std::thread::scope(|scope| {
            // Meanwhile one client downloads the whole file, byte for byte.
            let full = scope.spawn(|| {
                let (mut c, got) = start_big_download(addr, 0);
                finish_big_download(&mut c, got, &format!("{backend}: concurrent download"));
            });
            churn(0..100, |i| {
                // A few hundred KiB into the 64 MiB body, the client goes away: even `i` resets
                // (SO_LINGER 0), odd `i` half-closes and then closes.
                let (c, got) = start_big_download(addr, 100 * 1024 + i * 4099);
                assert!(
                    got[..] == want[..got.len()],
                    "{backend} cycle {i}: prefix differs"
                );
                let stream = c.reader.into_inner();
                if i % 2 == 0 {
                    reset(stream);
                } else {
                    stream.shutdown(Shutdown::Write).unwrap();
                }
            });
            full.join().unwrap();
        });
        assert_fds_return(
            &server,
            fds,
            &format!("{backend}: after 100 aborted responses"),
        );
        let rss_after = server.rss_kib();
        println!("{backend}: 100 aborted 64 MiB responses, RSS {rss_before} -> {rss_after} KiB");
        assert!(
            rss_after < rss_before + ABORT_RSS_LIMIT_KIB,
            "{backend}: RSS grew from {rss_before} KiB to {rss_after} KiB"
        );
        // Still serving, byte-exact.
        let r = once(addr, VALID);
        assert_eq!((r.status, &r.body), (200, &small), "{backend}");
        let (mut c, got) = start_big_download(addr, 0);
        finish_big_download(&mut c, got, &format!("{backend}: after the aborts"));
    }
}

/// Connections that ask for big.bin and never read in the never-reading test.
const NEVER_READ: usize = 32;
/// What one connection may cost the server in RSS: its two chunk buffers (64 KiB each at the
/// default `--chunk`, plus alignment slack), head, path and receive buffers, with room to spare.
const PER_CONN_KIB: u64 = 256;
/// `--idle-timeout-ms` there: a response that makes no progress this long is dropped.
const NEVER_READ_IDLE_MS: u64 = 3000;

#[test]
fn clients_that_never_read_cost_bounded_memory_and_time_out() {
    raise_nofile_limit();
    let want = big_file();
    let small = inside(&files_fixture().root);
    // Also with SEND_ZC: a stuck peer's queued zero-copy bytes hold their notifications back,
    // and the timeout must still drop it (it once did not: the connection waited for them).
    for (backend, extra) in [
        (BACKENDS[0], &[][..]),
        (BACKENDS[1], &[]),
        (BACKENDS[0], &["--zerocopy"]),
    ] {
        let idle = NEVER_READ_IDLE_MS.to_string();
        let mut args = vec!["--idle-timeout-ms", &idle];
        args.extend_from_slice(extra);
        let server = start_files(backend, &args);
        let addr = server.addr;
        let (mut c, got) = start_big_download(addr, 0);
        finish_big_download(&mut c, got, backend);
        drop(c);
        let fds = server.settled_fd_count();
        let rss_before = server.rss_kib();
        let t = Instant::now();
        let stuck: Vec<TcpStream> = (0..NEVER_READ)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(GET_BIG).unwrap();
                s
            })
            .collect();
        // Every response started (a socket, and with epoll a file, per connection) and backed
        // up against a client that reads nothing.
        assert!(
            server.wait_until(Duration::from_secs(3), |s| s.fd_count() >= fds + NEVER_READ),
            "{backend}: {} fds, baseline {fds}",
            server.fd_count()
        );
        std::thread::sleep(Duration::from_millis(300));
        let rss_stuck = server.rss_kib();
        // Measured while every stuck response was still held (none timed out yet).
        assert!(
            server.fd_count() >= fds + NEVER_READ,
            "{backend}: stuck connections dropped before RSS was measured"
        );
        // Others are served meanwhile, the whole 64 MiB too.
        let r = once(addr, VALID);
        assert_eq!((r.status, &r.body), (200, &small), "{backend}");
        assert!(
            server.fd_count() >= fds + NEVER_READ,
            "{backend}: not meanwhile"
        );
        let (mut c, got) = start_big_download(addr, 0);
        finish_big_download(
            &mut c,
            got,
            &format!("{backend}: beside {NEVER_READ} stuck"),
        );
        drop(c);
        let limit = NEVER_READ as u64 * PER_CONN_KIB + 2048;
        println!(
            "{backend}: {NEVER_READ} never-reading clients of 64 MiB each, RSS {rss_before} -> \
             {rss_stuck} KiB (limit +{limit} KiB)"
        );
        assert!(
            rss_stuck < rss_before + limit,
            "{backend}: RSS grew from {rss_before} KiB to {rss_stuck} KiB with {NEVER_READ} \
             stuck responses"
        );
        // No progress for --idle-timeout-ms: every stuck connection is dropped.
        assert_fds_return(&server, fds, &format!("{backend}: after the idle timeout"));
        let dropped_after = t.elapsed();
        assert!(
            dropped_after >= Duration::from_millis(NEVER_READ_IDLE_MS),
            "{backend}: stuck connections dropped after {dropped_after:?}, before the timeout"
        );
        for (i, mut s) in stuck.into_iter().enumerate() {
            // What arrived before the drop is a prefix of the file; then the end.
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut out = Vec::new();
            match s.read_to_end(&mut out) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
                Err(e) => panic!("{backend} stuck {i}: {e}"),
            }
            assert!(out.len() < BIG, "{backend} stuck {i}: got the whole file");
        }
        let (mut c, got) = start_big_download(addr, 0);
        finish_big_download(&mut c, got, &format!("{backend}: after the timeouts"));
        assert_eq!(want.len(), BIG);
    }
}

/// How an attacking connection ended: when the server dropped it, counted from its connect.
fn wait_for_drop(mut s: TcpStream, dribble: bool) -> Duration {
    let t = Instant::now();
    let header = b"GET /inside.txt HTTP/1.1\r\nHost: t\r\nX-Slow: ";
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 256];
    for i in 0.. {
        assert!(t.elapsed() < Duration::from_secs(20), "never dropped");
        if dribble {
            // One byte at a time, never finishing the head.
            let byte = header.get(i).copied().unwrap_or(b'a');
            if s.write_all(&[byte]).is_err() {
                return t.elapsed();
            }
        }
        match s.read(&mut buf) {
            Ok(0) => return t.elapsed(),
            Ok(_) => panic!("an unfinished head got a response"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return t.elapsed(),
        }
    }
    unreachable!()
}

#[test]
fn slowloris_and_silent_clients_are_dropped_while_others_are_served() {
    const ATTACKERS: usize = 50;
    raise_nofile_limit();
    let small = inside(&files_fixture().root);
    for backend in BACKENDS {
        let server = start_files(backend, &["--header-timeout-ms", "1000"]);
        let addr = server.addr;
        assert_eq!(once(addr, VALID).status, 200, "{backend}");
        let fds = server.settled_fd_count();
        let attack_over = std::sync::atomic::AtomicBool::new(false);
        let (drops, served) = std::thread::scope(|scope| {
            let attackers: Vec<_> = (0..2 * ATTACKERS)
                .map(|i| {
                    let s = TcpStream::connect(addr).unwrap();
                    // Even: slowloris, a header byte every 100 ms. Odd: silent.
                    std::thread::Builder::new()
                        .stack_size(128 * 1024)
                        .spawn_scoped(scope, move || wait_for_drop(s, i % 2 == 0))
                        .unwrap()
                })
                .collect();
            // A normal client meanwhile: GETs on a keep-alive connection, a fresh connection
            // every fifth request, each answered promptly.
            let normal = scope.spawn(|| {
                let mut latencies = Vec::new();
                let mut c = Client::connect(addr);
                while !attack_over.load(Ordering::Relaxed) {
                    if latencies.len() % 5 == 4 {
                        c = Client::connect(addr);
                    }
                    let t = Instant::now();
                    let r = c.get("/inside.txt", "");
                    latencies.push(t.elapsed());
                    assert_eq!((r.status, &r.body), (200, &small), "{backend}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                latencies
            });
            let drops: Vec<Duration> = attackers.into_iter().map(|h| h.join().unwrap()).collect();
            attack_over.store(true, Ordering::Relaxed);
            (drops, normal.join().unwrap())
        });
        let (first, last) = (drops.iter().min().unwrap(), drops.iter().max().unwrap());
        let slowest = served.iter().max().unwrap();
        println!(
            "{backend}: {} attackers dropped after {first:?}..{last:?}; {} normal GETs, slowest \
             {slowest:?}",
            drops.len(),
            served.len()
        );
        assert!(
            *first >= Duration::from_millis(900) && *last < Duration::from_secs(5),
            "{backend}: attackers dropped after {first:?}..{last:?} (header timeout 1 s)"
        );
        assert!(served.len() >= 5, "{backend}: only {} GETs", served.len());
        assert!(
            *slowest < Duration::from_secs(2),
            "{backend}: a normal GET took {slowest:?} during the attack"
        );
        assert_fds_return(&server, fds, &format!("{backend}: after the attack"));
    }
}

/// Downloads in flight when SIGTERM arrives in the drain test.
const DRAINED: usize = 3;
const GRACE_MS: u64 = 4000;

#[test]
fn sigterm_drains_downloads_in_flight_and_exits_0() {
    let want = big_file();
    // Also with SEND_ZC: the drain must wait for notifications, never free a buffer early.
    for (backend, extra) in [
        (BACKENDS[0], &[][..]),
        (BACKENDS[1], &[]),
        (BACKENDS[0], &["--zerocopy"]),
        // Before Linux 5.19 no cancel takes a descriptor: the stalled send must end anyway.
        (BACKENDS[0], &["--disable", "cancel-fd"]),
    ] {
        let grace = GRACE_MS.to_string();
        let mut args = vec!["--threads", "2", "--shutdown-grace-ms", &grace];
        args.extend_from_slice(extra);
        let mut server = start_files(backend, &args);
        let addr = server.addr;
        // Responses under way: the heads and the first MiB are in.
        let downloads: Vec<_> = (0..DRAINED)
            .map(|_| start_big_download(addr, 1 << 20))
            .collect();
        // A client that asks for the file and never reads: it must not hold the server past the
        // grace period. And an idle keep-alive connection, closed at once.
        let mut stalled = TcpStream::connect(addr).unwrap();
        stalled.write_all(GET_BIG).unwrap();
        let mut idle = Client::connect(addr);
        assert_eq!(idle.get("/inside.txt", "").status, 200);
        std::thread::sleep(Duration::from_millis(200));

        server.signal(rustix::process::Signal::TERM);
        let t = Instant::now();
        let finished: Vec<_> = downloads
            .into_iter()
            .enumerate()
            .map(|(i, (mut c, got))| {
                std::thread::spawn(move || {
                    finish_big_download(&mut c, got, &format!("drained download {i}"));
                    // Then the server closes the connection (its response said keep-alive).
                    let mut rest = Vec::new();
                    c.reader.read_to_end(&mut rest).unwrap();
                    assert!(
                        rest.is_empty(),
                        "drained download {i}: bytes after the body"
                    );
                    t.elapsed()
                })
            })
            .collect();
        // The idle connection is closed without a response.
        let mut buf = [0u8; 64];
        idle.reader
            .get_mut()
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        assert_eq!(
            idle.reader.get_mut().read(&mut buf).unwrap_or(0),
            0,
            "{backend}: idle"
        );
        // New connections are refused while the drain goes on.
        assert!(
            server.wait_until(Duration::from_secs(2), |s| TcpStream::connect(s.addr)
                .is_err()),
            "{backend}: still accepting connections after SIGTERM"
        );
        for (i, h) in finished.into_iter().enumerate() {
            let took = h
                .join()
                .unwrap_or_else(|_| panic!("{backend}: download {i} cut short"));
            println!("{backend}: download {i} finished {took:?} after SIGTERM");
        }
        assert_eq!(
            server.wait_exit(Duration::from_secs(15)),
            Ok(Some(0)),
            "{backend}"
        );
        let exited = t.elapsed();
        println!("{backend}: exited {exited:?} after SIGTERM (grace {GRACE_MS} ms)");
        // The stalled client held it until the grace period ran out, and no longer.
        assert!(
            exited >= Duration::from_millis(GRACE_MS - 200)
                && exited < Duration::from_millis(GRACE_MS + 3000),
            "{backend}: exited {exited:?} after SIGTERM, grace {GRACE_MS} ms"
        );
        let mut out = Vec::new();
        stalled
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = stalled.read_to_end(&mut out);
        assert!(
            out.len() < BIG,
            "{backend}: the stalled client got everything"
        );
        assert_eq!(want.len(), BIG);
        // stdout is read on a thread of its own: wait for the line rather than a fixed while.
        let stats = server
            .wait_for_line(Duration::from_secs(5), |l| l.starts_with("stats:"))
            .expect("stats");
        let stats = stats.as_str();
        // Every completion of the drain and the abort (cancels, shutdowns, reads finishing
        // after the close) was one the connections expected.
        assert_eq!(
            ringwork_e2e::stat(stats, "refused"),
            0,
            "{backend}: {stats}"
        );
        if extra.contains(&"--zerocopy") {
            // The stalled peer's queued zero-copy data held its notification back: the abort
            // resets that socket so that the kernel drops the data and the notification
            // comes (found by this test: the server used to wait for it forever).
            assert!(ringwork_e2e::stat(stats, "zc_notifs") > 0, "{stats}");
        }
    }
}

/// RLIMIT_NOFILE of the servers in the descriptor-exhaustion tests: room for their own
/// descriptors and a few dozen connections.
const NOFILE_LIMIT: u64 = 64;
/// Clients in the descriptor-exhaustion tests: well over what the limit leaves room for.
const EXHAUSTION_CLIENTS: usize = 100;
/// How long the server's CPU is measured while it cannot accept.
const EXHAUSTION_WINDOW: Duration = Duration::from_secs(2);
/// Most CPU the server may use over that window, in cores: a quarter of one (re-arming a failed
/// accept at once cost a whole core).
const EXHAUSTION_CPU_LIMIT: f64 = 0.25;
/// Most lines the server may write on stderr over the whole episode: one when it begins, one
/// when it ends, and some slack (re-arming at once wrote one per failed accept, hundreds of
/// thousands a second).
const EXHAUSTION_LOG_LINES: usize = 4;

/// Reads from every client until `within` has passed (or, with `all`, until every client has
/// been answered); which clients `answered` says got a whole answer.
fn answers(
    clients: &[TcpStream],
    answered: fn(&[u8]) -> bool,
    within: Duration,
    all: bool,
) -> Vec<bool> {
    let mut got = vec![Vec::new(); clients.len()];
    answers_after(clients, &mut got, answered, within, all, false)
}

/// As [`answers`], each client's answer going on from what `got` already holds of it (an
/// answer can be half in when a window ends). With `leave`, a client closes its connection
/// once answered, making room for the next.
fn answers_after(
    clients: &[TcpStream],
    got: &mut [Vec<u8>],
    answered: fn(&[u8]) -> bool,
    within: Duration,
    all: bool,
    leave: bool,
) -> Vec<bool> {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut done = vec![false; clients.len()];
    // Closed or reset before its answer: never answered, and no longer polled.
    let mut gone = vec![false; clients.len()];
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !(all && done.iter().all(|d| *d)) {
        let waiting: Vec<usize> = (0..clients.len())
            .filter(|&i| !done[i] && !gone[i])
            .collect();
        let mut fds: Vec<PollFd> = waiting
            .iter()
            .map(|&i| PollFd::new(&clients[i], PollFlags::IN))
            .collect();
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: left.min(Duration::from_millis(50)).as_nanos() as i64,
        };
        poll(&mut fds, Some(&ts)).unwrap();
        let ready: Vec<usize> = waiting
            .iter()
            .zip(&fds)
            .filter(|(_, f)| !f.revents().is_empty())
            .map(|(&i, _)| i)
            .collect();
        for i in ready {
            match (&clients[i]).read(&mut buf) {
                Ok(0) => gone[i] = true,
                Ok(n) => {
                    got[i].extend_from_slice(&buf[..n]);
                    done[i] = answered(&got[i]);
                    if done[i] && leave {
                        let _ = clients[i].shutdown(Shutdown::Both);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => gone[i] = true,
            }
        }
    }
    done
}

/// What a nonblocking client's socket says now: closed by the server, reset, or open
/// with nothing to read.
fn client_state(c: &TcpStream) -> String {
    let mut b = [0u8; 1];
    match (&*c).read(&mut b) {
        Ok(0) => "closed".into(),
        Ok(_) => "bytes".into(),
        Err(e) if e.kind() == ErrorKind::WouldBlock => "open, nothing to read".into(),
        Err(e) => format!("{e}"),
    }
}

/// Connects `count` clients (nonblocking once connected) and has each send `request`.
fn clients_asking(addr: SocketAddr, count: usize, request: &[u8]) -> Vec<TcpStream> {
    (0..count)
        .map(|i| {
            let mut c = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect #{i}: {e}"));
            c.write_all(request).unwrap();
            c.set_nonblocking(true).unwrap();
            c
        })
        .collect()
}

/// A server out of descriptors (RLIMIT_NOFILE far below its clients) backs off instead of
/// retrying accept at once: it stays cheap (CPU, stderr) while the connections it holds are
/// served and the rest wait in the listen backlog; once connections close it accepts the
/// waiting ones (no new connection needed to wake it) and says that the episode ended.
fn accept_backs_off_when_out_of_fds(
    what: &str,
    name: &str,
    args: &[&str],
    request: &[u8],
    answered: fn(&[u8]) -> bool,
) {
    raise_nofile_limit();
    let server = Server::start_with_nofile(name, args, NOFILE_LIMIT);
    let baseline = server.fd_count();
    assert!(
        baseline + 10 < NOFILE_LIMIT as usize,
        "{what}: {baseline} fds at start leave no room under {NOFILE_LIMIT}"
    );
    // Every client connects (the kernel completes handshakes into the listen backlog) and asks
    // once: those the server could accept are answered, the others wait.
    let mut clients = clients_asking(server.addr, EXHAUSTION_CLIENTS, request);
    assert!(
        server.wait_until(Duration::from_secs(10), |s| s.fd_count()
            >= NOFILE_LIMIT as usize),
        "{what}: the server never ran out of fds ({} of {NOFILE_LIMIT})",
        server.fd_count()
    );
    let cpu_before = server.cpu_time();
    let t = Instant::now();
    let mut got = vec![Vec::new(); clients.len()];
    let served = answers_after(
        &clients,
        &mut got,
        answered,
        EXHAUSTION_WINDOW,
        false,
        false,
    );
    let cpu = server.cpu_time() - cpu_before;
    let wall = t.elapsed();
    let n_served = served.iter().filter(|s| **s).count();
    let log = server.stderr();
    println!(
        "{what}: {n_served} of {EXHAUSTION_CLIENTS} clients served at {NOFILE_LIMIT} fds, \
         CPU {cpu:?} over {wall:?}, {} stderr lines: {:?}",
        log.total,
        &log.lines[..log.lines.len().min(5)]
    );
    assert!(
        cpu.as_secs_f64() < EXHAUSTION_CPU_LIMIT * wall.as_secs_f64(),
        "{what}: used {cpu:?} of CPU in {wall:?} while out of fds"
    );
    assert!(
        n_served > 0 && n_served < EXHAUSTION_CLIENTS,
        "{what}: {n_served} of {EXHAUSTION_CLIENTS} clients served while out of fds"
    );
    assert!(
        log.total <= EXHAUSTION_LOG_LINES,
        "{what}: {} lines on stderr while out of fds: {:?}",
        log.total,
        &log.lines[..log.lines.len().min(10)]
    );
    assert!(
        log.lines.iter().any(|l| l.contains("EMFILE")),
        "{what}: nothing on stderr names EMFILE: {:?}",
        log.lines
    );

    // The served clients leave; the waiting ones get in, with nothing new knocking, each
    // leaving once answered: the limit need not hold all of them at once (the served ones
    // were as many as it held, and more wait when the server's own descriptors grew since:
    // with two workers, a second cached file).
    let mut waiting = Vec::new();
    let mut waiting_got = Vec::new();
    for ((c, served), got) in clients.drain(..).zip(&served).zip(got) {
        if !served {
            waiting.push(c);
            waiting_got.push(got);
        }
    }
    let later = answers_after(
        &waiting,
        &mut waiting_got,
        answered,
        Duration::from_secs(10),
        true,
        true,
    );
    let n_later = later.iter().filter(|s| **s).count();
    assert_eq!(
        n_later,
        waiting.len(),
        "{what}: {n_later} of the {} waiting clients served once others left; the others \
         got {:?}, and are now {:?}; the server's stderr: {:?}",
        waiting.len(),
        waiting_got
            .iter()
            .zip(&later)
            .filter(|(_, s)| !**s)
            .map(|(g, _)| String::from_utf8_lossy(g).into_owned())
            .collect::<Vec<_>>(),
        waiting
            .iter()
            .zip(&later)
            .filter(|(_, s)| !**s)
            .map(|(c, _)| format!(
                "{}; server side {}",
                client_state(c),
                server.connection_state(c.local_addr().unwrap())
            ))
            .collect::<Vec<_>>(),
        server.stderr().lines
    );
    drop(waiting);
    let fresh = clients_asking(server.addr, 1, request);
    assert_eq!(
        answers(&fresh, answered, Duration::from_secs(5), true),
        [true],
        "{what}: a new client after the episode"
    );
    // The end of the episode is said once, after a quiet while.
    assert!(
        server.wait_until(Duration::from_secs(5), |s| s
            .stderr()
            .lines
            .iter()
            .filter(|l| l.contains("EMFILE"))
            .count()
            >= 2),
        "{what}: the end of the episode was not reported: {:?}",
        server.stderr().lines
    );
    let log = server.stderr();
    assert!(
        log.total <= EXHAUSTION_LOG_LINES,
        "{what}: {} lines on stderr over the episode: {:?}",
        log.total,
        log.lines
    );
    println!("{what}: {:?}", log.lines);
}

/// An echo of the request, byte for byte.
const ECHO_REQUEST: &[u8] = b"are you there?\n";

fn echoed(got: &[u8]) -> bool {
    got == ECHO_REQUEST
}

#[test]
fn echo_backs_off_accept_when_out_of_fds() {
    for backend in BACKENDS {
        accept_backs_off_when_out_of_fds(
            &format!("echo {backend}"),
            "ringwork-echo",
            // The default number of workers (one per CPU).
            &["--listen", "127.0.0.1:0", "--backend", backend],
            ECHO_REQUEST,
            echoed,
        );
    }
}

/// A keep-alive GET of a small file.
const FILES_REQUEST: &[u8] = b"GET /inside.txt HTTP/1.1\r\nHost: t\r\n\r\n";

/// A whole HTTP response: its head and as many body bytes as Content-Length says (any status:
/// out of fds, an epoll server's open of the file fails, and that is an answer too).
fn http_answered(got: &[u8]) -> bool {
    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&got[..end]);
    let body: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    head.starts_with("HTTP/1.1 ") && got.len() >= end + 4 + body
}

#[test]
fn files_backs_off_accept_when_out_of_fds() {
    let root = files_fixture().root.to_str().unwrap();
    for backend in BACKENDS {
        accept_backs_off_when_out_of_fds(
            &format!("files {backend}"),
            "ringwork-files",
            // The default number of workers (one per CPU).
            &[
                "--listen",
                "127.0.0.1:0",
                "--backend",
                backend,
                "--max-conns",
                "128",
                "--chunk",
                "4096",
                root,
            ],
            FILES_REQUEST,
            http_answered,
        );
    }
}
