//! `--metrics-listen`: the live counters of ringwork-files and ringwork-echo, scraped as
//! Prometheus does, on both backends. Under load scrapes answer and only grow; once the
//! clients are done, the scraped figures equal what the clients counted, exactly. A scraper
//! that sends nothing, or garbage, delays no other; a bad address fails the start.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringwork_e2e::http::Client;
use ringwork_e2e::{binary, exchange, fresh_dir, random_bytes, stat, terminate, Server, BACKENDS};

/// A root with a small file and one of several chunks.
fn site(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("small.txt"), b"small\n").unwrap();
    std::fs::write(root.join("big.bin"), random_bytes(3, 200_000)).unwrap();
    root
}

/// The address on the server's `metrics on http://ADDR/metrics` line.
fn metrics_addr(s: &Server) -> SocketAddr {
    let line = s
        .wait_for_line(Duration::from_secs(5), |l| l.contains("metrics on http://"))
        .expect("a metrics line");
    let url = line.split("http://").nth(1).unwrap();
    url.trim_end_matches("/metrics").parse().unwrap()
}

/// One answer of the metrics endpoint to `request`: its status and body (read to the close).
fn ask(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

/// A scrape: every sample by its name with labels (`requests_total{code="200"}`, the
/// server's prefix removed).
fn scrape(addr: SocketAddr, prefix: &str) -> HashMap<String, u64> {
    let (status, body) = ask(addr, b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            let name = name.strip_prefix(prefix).unwrap_or_else(|| panic!("{l}"));
            // Sums are seconds; everything else is a whole number.
            let value = value.parse::<f64>().unwrap_or_else(|_| panic!("{l}"));
            (name.to_string(), value as u64)
        })
        .collect()
}

/// Scrapes until `done` holds (the workers publish within a millisecond of a turn, and
/// close connections the clients dropped on their next turn), for up to 10 s.
fn scrape_until(
    addr: SocketAddr,
    prefix: &str,
    mut done: impl FnMut(&HashMap<String, u64>) -> bool,
) -> HashMap<String, u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(addr, prefix);
        if done(&m) || Instant::now() > deadline {
            return m;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What the clients of one run saw.
#[derive(Default, Debug)]
struct Seen {
    ok: u64,
    not_found: u64,
    body_bytes: u64,
    /// Bytes the clients sent and read (request heads; response heads and bodies).
    sent: u64,
    read: u64,
}

/// `rounds` rounds of GET small, GET big, GET missing, HEAD small on one keep-alive
/// connection, every response checked and counted.
fn client(addr: SocketAddr, rounds: usize) -> Seen {
    let mut c = Client::connect(addr);
    let mut seen = Seen::default();
    for _ in 0..rounds {
        for (method, target) in [
            ("GET", "/small.txt"),
            ("GET", "/big.bin"),
            ("GET", "/missing"),
            ("HEAD", "/small.txt"),
        ] {
            let request = format!("{method} {target} HTTP/1.1\r\nHost: t\r\n\r\n");
            c.send(request.as_bytes());
            let r = c.read(method == "HEAD").unwrap();
            seen.sent += request.len() as u64;
            seen.read += (r.head.len() + r.body.len()) as u64;
            seen.body_bytes += r.body.len() as u64;
            match r.status {
                200 => seen.ok += 1,
                404 => seen.not_found += 1,
                other => panic!("{other} for {target}"),
            }
        }
    }
    seen
}

const FILES: &str = "ringwork_files_";

/// Four clients of 50 rounds each, with a scraper beside them; then the scraped figures
/// against the clients' counts, and the `stats:` line against the last scrape.
fn files_under_load(backend: &str) {
    let dir = fresh_dir(&format!("ringwork-metrics-{backend}-"));
    let root = site(&dir);
    let s = Server::start(
        "ringwork-files",
        &[
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--backend",
            backend,
            "--threads",
            "2",
            root.to_str().unwrap(),
        ],
    );
    let maddr = metrics_addr(&s);
    let (addr, clients, rounds) = (s.addr, 4, 50);
    let stop = Arc::new(AtomicBool::new(false));
    // Scrapes during the load: each answers, and the request count only grows.
    let scraper = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut scrapes, mut last) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                let m = scrape(maddr, FILES);
                let n = m["request_duration_seconds_count"];
                assert!(n >= last, "the count went back from {last} to {n}");
                assert_eq!(n, m["request_duration_seconds_bucket{le=\"+Inf\"}"]);
                (scrapes, last) = (scrapes + 1, n);
            }
            scrapes
        })
    };
    let handles: Vec<_> = (0..clients)
        .map(|_| std::thread::spawn(move || client(addr, rounds)))
        .collect();
    let seen = handles.into_iter().fold(Seen::default(), |mut all, h| {
        let one = h.join().expect("a client failed");
        all.ok += one.ok;
        all.not_found += one.not_found;
        all.body_bytes += one.body_bytes;
        all.sent += one.sent;
        all.read += one.read;
        all
    });
    stop.store(true, Ordering::Relaxed);
    let scrapes = scraper.join().expect("the scraper failed");
    assert!(scrapes > 0, "no scrape during the load");
    let total = seen.ok + seen.not_found;
    assert_eq!(total, (clients * rounds * 4) as u64);
    // The clients have closed: the figures settle once the server has seen them go.
    // (The cache's entries are counted every tick.)
    let m = scrape_until(maddr, FILES, |m| {
        m["connections_open"] == 0 && m["open_file_cache_entries"] >= 2
    });
    assert_eq!(m["connections_open"], 0, "{m:?}");
    assert_eq!(m["connections_accepted_total"], clients as u64);
    assert_eq!(m["requests_total{code=\"200\"}"], seen.ok);
    assert_eq!(m["requests_total{code=\"404\"}"], seen.not_found);
    assert_eq!(m["requests_total{code=\"other\"}"], 0);
    assert_eq!(m["request_duration_seconds_count"], total);
    assert_eq!(m["response_body_bytes_total"], seen.body_bytes);
    assert_eq!(m["received_bytes_total"], seen.sent);
    assert_eq!(m["sent_bytes_total"], seen.read);
    assert!(m["open_file_cache_hits_total"] > 0, "{m:?}");
    // small.txt and big.bin, in one thread's cache or in both.
    assert!((2..=4).contains(&m["open_file_cache_entries"]), "{m:?}");
    // The exit line says what the last scrape said.
    let line = terminate(s);
    for (key, metric) in [
        ("cache_hits", "open_file_cache_hits_total"),
        ("cache_opened", "open_file_cache_opens_total"),
        ("body_hits", "body_hits_total"),
    ] {
        assert_eq!(stat(&line, key), m[metric], "{key} in {line}");
    }
}

#[test]
fn files_metrics_agree_with_the_clients_uring() {
    files_under_load(BACKENDS[0]);
}

#[test]
fn files_metrics_agree_with_the_clients_epoll() {
    files_under_load(BACKENDS[1]);
}

/// Scrapers that never send a request, send garbage, or stop halfway hold the next scrape
/// up by no more than a moment; other paths are 404, HEAD has the head only.
#[test]
fn a_hostile_scraper_does_not_block_the_next_scrape() {
    let dir = fresh_dir("ringwork-metrics-hostile-");
    let root = site(&dir);
    let s = Server::start(
        "ringwork-files",
        &[
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--threads",
            "1",
            root.to_str().unwrap(),
        ],
    );
    let maddr = metrics_addr(&s);
    let silent: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(maddr).unwrap()).collect();
    let mut halfway = TcpStream::connect(maddr).unwrap();
    halfway.write_all(b"GET /metr").unwrap();
    let (status, _) = ask(maddr, b"\x16\x03\x01\x02\x00garbage\r\n\r\n");
    assert_eq!(status, 400);
    let started = Instant::now();
    let m = scrape(maddr, FILES);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "a scrape beside silent scrapers took {:?}",
        started.elapsed()
    );
    assert!(m.contains_key("connections_open"));
    assert_eq!(ask(maddr, b"GET / HTTP/1.1\r\nHost: m\r\n\r\n").0, 404);
    assert_eq!(
        ask(maddr, b"POST /metrics HTTP/1.1\r\nHost: m\r\n\r\n").0,
        405
    );
    let (status, body) = ask(maddr, b"HEAD /metrics HTTP/1.1\r\nHost: m\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, ""));
    // The silent ones are closed after their deadline (2 s): each reads its end of stream.
    for mut c in silent {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(c.read(&mut [0; 16]).unwrap(), 0);
    }
    drop(halfway);
    terminate(s);
}

/// An address that is taken fails the start, with the flag named.
#[test]
fn a_taken_metrics_address_fails_the_start() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for server in ["ringwork-files", "ringwork-echo"] {
        let out = std::process::Command::new(binary(server))
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", &addr])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{server} started");
        assert!(stderr.contains("--metrics-listen"), "{server}: {stderr}");
    }
}

const ECHO: &str = "ringwork_echo_";

/// Clients that each echo a known payload: connections and bytes counted exactly, both ways.
fn echo_counts(backend: &str) {
    let s = Server::start(
        "ringwork-echo",
        &[
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--backend",
            backend,
            "--threads",
            "2",
        ],
    );
    let maddr = metrics_addr(&s);
    let sizes = [1usize, 100, 5_000, 70_000, 300_000];
    let mut bytes = 0;
    for (i, &size) in sizes.iter().enumerate() {
        let payload = random_bytes(i as u64, size);
        assert_eq!(exchange(s.addr, &payload, None), payload);
        bytes += size as u64;
        // Live: each exchange shows before the next begins.
        let m = scrape_until(maddr, ECHO, |m| m["sent_bytes_total"] == bytes);
        assert_eq!(m["sent_bytes_total"], bytes);
    }
    let m = scrape_until(maddr, ECHO, |m| m["connections_open"] == 0);
    assert_eq!(m["connections_open"], 0);
    assert_eq!(m["connections_accepted_total"], sizes.len() as u64);
    assert_eq!(m["received_bytes_total"], bytes);
    assert!(m["receives_total"] >= sizes.len() as u64, "{m:?}");
    let line = terminate(s);
    assert_eq!(stat(&line, "conns"), m["connections_accepted_total"]);
    assert_eq!(stat(&line, "bytes"), m["sent_bytes_total"]);
    assert_eq!(stat(&line, "nobufs"), m["nobufs_total"]);
}

#[test]
fn echo_metrics_count_connections_and_bytes_uring() {
    echo_counts(BACKENDS[0]);
}

#[test]
fn echo_metrics_count_connections_and_bytes_epoll() {
    echo_counts(BACKENDS[1]);
}

/// Started with a socket passed in (socket activation), the server binds the metrics
/// address itself and counts what the passed socket serves.
#[test]
fn metrics_are_served_beside_socket_activation() {
    let dir = fresh_dir("ringwork-metrics-activation-");
    let root = site(&dir);
    let bin = binary("ringwork-files");
    let s = Server::start(
        "ringwork-e2e-activate",
        &[
            bin.to_str().unwrap(),
            "--threads",
            "2",
            "--listen",
            "127.0.0.1:9",
            "--metrics-listen",
            "127.0.0.1:0",
            root.to_str().unwrap(),
        ],
    );
    assert_ne!(
        s.addr.port(),
        9,
        "serving on --listen, not the passed socket"
    );
    let maddr = metrics_addr(&s);
    assert_ne!(maddr, s.addr);
    let seen = client(s.addr, 3);
    let m = scrape_until(maddr, FILES, |m| m["connections_open"] == 0);
    assert_eq!(m["requests_total{code=\"200\"}"], seen.ok);
    assert_eq!(m["requests_total{code=\"404\"}"], seen.not_found);
    assert_eq!(m["connections_accepted_total"], 1);
    terminate(s);
}
