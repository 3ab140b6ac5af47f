//! ringwork-files at scale, the real binary at its defaults: 10,000 concurrent keep-alive
//! clients, 2,000 slowloris connections beside a normal client, and 500 concurrent 16 MiB
//! downloads through a 1 MiB buffer budget.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ringwork_e2e::http::Client;
use ringwork_e2e::{
    assert_fds_return, fresh_dir, proc, raise_nofile_limit, random_bytes, stat, terminate, Server,
    BACKENDS,
};

/// Files `f0`..`f49` of assorted sizes up to 20 KB.
const FILES: usize = 50;

fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = fresh_dir("ringwork-scale-");
        for n in 0..FILES {
            let size = [1, 100, 1000, 4096, 9000, 20_000][n % 6] + n;
            std::fs::write(
                dir.join(format!("f{n}")),
                random_bytes(500 + n as u64, size),
            )
            .unwrap();
        }
        dir
    })
}

fn start(backend: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--listen", "127.0.0.1:0", "--backend", backend];
    args.extend_from_slice(extra);
    args.push(root().to_str().unwrap());
    Server::start("ringwork-files", &args)
}

/// Runs `ringwork-e2e-client` with `args` (after the server's address), its stdout piped.
fn client(server: &Server, args: &[&str]) -> std::process::Child {
    Command::new(ringwork_e2e::binary("ringwork-e2e-client"))
        .arg(server.addr.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ringwork-e2e-client")
}

fn first_line(child: &mut std::process::Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line
}

/// 10,000 keep-alive connections from a process of their own, each sending its request
/// before any answer is read, twice over: every body byte-exact, the server's descriptors
/// back to where they were once the client is gone.
#[test]
fn ten_thousand_keep_alive_clients_download_byte_exact() {
    const CONNS: usize = 10_000;
    raise_nofile_limit();
    for backend in BACKENDS {
        let server = start(backend, &[]);
        if backend == "uring" {
            // At the defaults (RLIMIT_NOFILE raised as a deployment would), each ring's file
            // table (connections and cache) fits, and heads go to the buffer ring.
            let line = server
                .wait_for_line(Duration::from_secs(5), |l| l.starts_with("io_uring:"))
                .expect("a features line");
            for feature in ["fixed_files=on", "pbuf_ring=on", "links=on"] {
                assert!(line.contains(feature), "{feature}: {line}");
            }
        }
        let baseline = server.settled_fd_count();
        let root = root().to_str().unwrap();
        let mut c = client(
            &server,
            &[&CONNS.to_string(), "--http", root, &FILES.to_string(), "2"],
        );
        let line = first_line(&mut c);
        assert_eq!(line.trim(), format!("ok {CONNS}"), "{backend}: client said");
        assert!(c.wait().unwrap().success(), "{backend}: client failed");
        assert_fds_return(&server, baseline, &format!("{backend}: after 10K clients"));
    }
}

/// 2,000 slowloris connections at the defaults (header timeout 10 s, default connection
/// limit): a normal client's GETs, on a keep-alive connection and on fresh ones, are each
/// answered within a second while the attack goes on.
#[test]
fn two_thousand_slowloris_connections_do_not_lock_out_a_normal_client() {
    const ATTACKERS: usize = 2_000;
    raise_nofile_limit();
    let want = std::fs::read(root().join("f3")).unwrap();
    for backend in BACKENDS {
        let server = start(backend, &[]);
        let baseline = server.settled_fd_count();
        let mut attack = client(&server, &[&ATTACKERS.to_string(), "--slowloris"]);
        assert_eq!(first_line(&mut attack).trim(), format!("ready {ATTACKERS}"));
        assert!(
            server.wait_until(Duration::from_secs(10), |s| s.fd_count()
                >= baseline + ATTACKERS),
            "{backend}: the server took {} of {ATTACKERS} attackers",
            server.fd_count() - baseline
        );
        let until = Instant::now() + Duration::from_secs(4);
        let mut latencies = Vec::new();
        let mut c = Client::connect(server.addr);
        while Instant::now() < until {
            if latencies.len() % 4 == 3 {
                c = Client::connect(server.addr);
            }
            let t = Instant::now();
            let r = c.get("/f3", "");
            latencies.push(t.elapsed());
            assert_eq!((r.status, r.body == want), (200, true), "{backend}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let slowest = latencies.iter().max().unwrap();
        println!(
            "{backend}: {} GETs beside {ATTACKERS} slowloris connections, slowest {slowest:?}",
            latencies.len()
        );
        assert!(
            *slowest < Duration::from_secs(1),
            "{backend}: a GET took {slowest:?}"
        );
        drop(c);
        drop(attack.stdin.take());
        assert!(
            attack.wait().unwrap().success(),
            "{backend}: attacker failed"
        );
        assert_fds_return(&server, baseline, &format!("{backend}: after the attack"));
    }
}

/// 500 concurrent downloads of a 16 MiB file through a 1 MiB chunk budget (15 buffers): every
/// download byte-exact, none refused (reads wait their turn for a buffer), and the server's
/// memory stays bounded while they run. At the defaults only each response's first chunk
/// goes through a buffer (the rest is sent from the file's mapping); with `--sendfile false`
/// every chunk does, and the reads queue for the pool (`chunk_waits`).
#[test]
fn a_tiny_buffer_budget_serves_500_concurrent_16_mib_downloads() {
    const SIZE: usize = 16 << 20;
    raise_nofile_limit();
    let dir = fresh_dir("ringwork-bigfile-");
    let want = Arc::new(random_bytes(77, SIZE));
    std::fs::write(dir.join("big.bin"), &*want).unwrap();
    for extra in [&[][..], &["--sendfile", "false"][..]] {
        tiny_budget_downloads(&dir, &want, extra);
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn tiny_budget_downloads(dir: &std::path::Path, want: &Arc<Vec<u8>>, extra: &[&str]) {
    const DOWNLOADS: usize = 500;
    const SIZE: usize = 16 << 20;
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "1",
        "--buffer-memory",
        "1",
    ];
    args.extend_from_slice(extra);
    args.push(dir.to_str().unwrap());
    let server = Server::start("ringwork-files", &args);
    let rss_before = server.rss_kib();
    let addr = server.addr;
    let done = AtomicBool::new(false);
    let peak = AtomicU64::new(rss_before);
    std::thread::scope(|scope| {
        let pid = server.pid();
        let (done, peak) = (&done, &peak);
        let watch = scope.spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(proc::private_rss_kib(pid).unwrap_or(0), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let downloads: Vec<_> = (0..DOWNLOADS)
            .map(|i| {
                let want = Arc::clone(want);
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(scope, move || {
                        let mut s = TcpStream::connect(addr).unwrap();
                        s.write_all(
                            b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                        )
                        .unwrap();
                        let mut got = Vec::with_capacity(SIZE + 512);
                        s.read_to_end(&mut got).unwrap();
                        let head_end = got
                            .windows(4)
                            .position(|w| w == b"\r\n\r\n")
                            .unwrap_or_else(|| panic!("download {i}: no head"))
                            + 4;
                        assert!(got.starts_with(b"HTTP/1.1 200"), "download {i} refused");
                        assert!(got[head_end..] == want[..], "download {i} differs");
                    })
                    .unwrap()
            })
            .collect();
        for d in downloads {
            d.join().expect("a download failed");
        }
        done.store(true, Ordering::Relaxed);
        watch.join().unwrap();
    });
    let grew = peak.load(Ordering::Relaxed).saturating_sub(rss_before);
    println!(
        "{extra:?}: {DOWNLOADS} x 16 MiB through 1 MiB of buffers: RSS {rss_before} KiB, peak +{grew} KiB"
    );
    // 500 connections' state and their receive of one head each: a few MiB, never the
    // 8 GiB in flight.
    assert!(grew < 32 * 1024, "{extra:?}: the server grew by {grew} KiB");
    let line = terminate(server);
    let (sends, waits) = (stat(&line, "file_sends"), stat(&line, "chunk_waits"));
    if extra.is_empty() {
        assert!(sends > 0, "{extra:?}: {line}");
    } else {
        assert!(sends == 0 && waits > 0, "{extra:?}: {line}");
    }
}
