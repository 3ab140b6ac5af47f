//! ringwork-files end to end: the real binary on port 0, both backends, a std-only HTTP/1.1
//! client. Bodies are compared byte for byte with the files on disk.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ringwork_e2e::http::{once, Client};
use ringwork_e2e::{fresh_dir, random_bytes, stat, terminate, Server, BACKENDS};

/// Sizes of the fixture files `f<size>`.
const SIZES: [usize; 6] = [0, 1, 4095, 4096, 4097, (1 << 20) + 3];
const BIG: usize = 64 << 20;

/// The served root, built once per test process.
fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = fresh_dir("ringwork-files-e2e-");
        std::fs::create_dir_all(dir.join("withindex")).unwrap();
        std::fs::create_dir_all(dir.join("noindex")).unwrap();
        for (i, size) in SIZES.iter().enumerate() {
            std::fs::write(
                dir.join(format!("f{size}")),
                random_bytes(i as u64 + 1, *size),
            )
            .unwrap();
        }
        std::fs::write(dir.join("withindex/index.html"), b"<p>index</p>\n").unwrap();
        std::fs::write(dir.join("page.html"), b"<p>page</p>\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd")).unwrap();
        std::os::unix::fs::symlink("f4096", dir.join("inside-link")).unwrap();
        let root =
            rustix::fs::open(&dir, rustix::fs::OFlags::RDONLY, rustix::fs::Mode::empty()).unwrap();
        rustix::fs::mknodat(
            &root,
            "fifo",
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        dir
    })
}

fn file(name: &str) -> Vec<u8> {
    std::fs::read(root().join(name)).unwrap()
}

fn start(backend: &str, extra: &[&str]) -> Server {
    let root = root().to_str().unwrap();
    let mut args = vec!["--listen", "127.0.0.1:0", "--backend", backend];
    args.extend_from_slice(extra);
    args.push(root);
    Server::start("ringwork-files", &args)
}

/// Every fixture byte-exact over one keep-alive connection, in 1000-byte and default
/// chunks, plus a symlink inside the root.
fn scenario_downloads(backend: &str, extra: &[&str]) {
    for chunk in ["1000", "65536"] {
        let s = start(backend, &[extra, &["--chunk", chunk]].concat());
        {
            let mut c = Client::connect(s.addr);
            for size in SIZES {
                let name = format!("f{size}");
                let r = c.get(&format!("/{name}"), "");
                assert_eq!(r.status, 200, "{backend} chunk {chunk} {name}");
                assert_eq!(r.header("Content-Length"), Some(size.to_string().as_str()));
                assert!(
                    r.body == file(&name),
                    "{backend} chunk {chunk}: {name} differs"
                );
            }
            let r = c.get("/inside-link", "");
            assert!(
                r.body == file("f4096"),
                "a symlink inside the root is served"
            );
        }
    }
}

#[test]
fn downloads_are_byte_exact_in_small_and_default_chunks() {
    for backend in BACKENDS {
        scenario_downloads(backend, &[]);
    }
}

#[test]
fn a_64_mib_file_streams_byte_exact() {
    let want = random_bytes(99, BIG);
    let path = root().join("big.bin");
    std::fs::write(&path, &want).unwrap();
    for backend in BACKENDS {
        let s = start(backend, &[]);
        let t = Instant::now();
        let r = Client::connect(s.addr).get("/big.bin", "");
        let took = t.elapsed();
        assert_eq!(r.status, 200);
        assert!(r.body == want, "{backend}: 64 MiB body differs");
        println!("{backend}: 64 MiB in {took:?}");
    }
    std::fs::remove_file(&path).unwrap();
}

/// Single ranges at the file's edges, 416s, and the connection still usable after them.
fn scenario_ranges(backend: &str, extra: &[&str]) {
    let f = file("f4097");
    {
        let s = start(backend, &[extra, &["--chunk", "512"]].concat());
        let mut c = Client::connect(s.addr);
        let r = c.get("/f4097", "Range: bytes=0-0\r\n");
        assert_eq!((r.status, &r.body[..]), (206, &f[..1]));
        assert_eq!(r.header("Content-Range"), Some("bytes 0-0/4097"));
        let r = c.get("/f4097", "Range: bytes=4096-4096\r\n");
        assert_eq!((r.status, &r.body[..]), (206, &f[4096..]));
        let r = c.get("/f4097", "Range: bytes=-1\r\n");
        assert_eq!((r.status, &r.body[..]), (206, &f[4096..]));
        let r = c.get("/f4097", "Range: bytes=1000-\r\n");
        assert_eq!((r.status, &r.body[..]), (206, &f[1000..]));
        let r = c.get("/f4097", "Range: bytes=100-3000\r\n");
        assert_eq!((r.status, &r.body[..]), (206, &f[100..=3000]));
        let r = c.get("/f4097", "Range: bytes=4097-\r\n");
        assert_eq!(r.status, 416);
        assert_eq!(r.header("Content-Range"), Some("bytes */4097"));
        let r = c.get("/f4097", "Range: bytes=-0\r\n");
        assert_eq!(r.status, 416);
        // Still usable after the 416s.
        let r = c.get("/f4097", "");
        assert!(r.status == 200 && r.body == f);
    }
}

#[test]
fn ranges_at_the_edges() {
    for backend in BACKENDS {
        scenario_ranges(backend, &[]);
    }
}

/// HEAD, 304 / 200 by If-Modified-Since, a directory index, three pipelined requests.
fn scenario_head_and_304(backend: &str, extra: &[&str]) {
    {
        let s = start(backend, extra);
        let mut c = Client::connect(s.addr);
        c.send(b"HEAD /page.html HTTP/1.1\r\nHost: t\r\n\r\n");
        let r = c.read(true).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Content-Length"), Some("12"));
        assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
        let last_modified = r
            .header("Last-Modified")
            .expect("Last-Modified")
            .to_string();
        // The next response on the connection starts right after the head: no body was sent.
        let r = c.get(
            "/page.html",
            &format!("If-Modified-Since: {last_modified}\r\n"),
        );
        assert_eq!(r.status, 304);
        assert!(r.body.is_empty());
        let r = c.get(
            "/page.html",
            "If-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT\r\n",
        );
        assert_eq!((r.status, &r.body[..]), (200, &b"<p>page</p>\n"[..]));
        let r = c.get("/withindex/", "");
        assert_eq!((r.status, &r.body[..]), (200, &b"<p>index</p>\n"[..]));
        // Pipelined: three requests in one write, three responses in order.
        c.send(b"GET /f1 HTTP/1.1\r\nHost: t\r\n\r\nGET /f0 HTTP/1.1\r\nHost: t\r\n\r\nGET /f4095 HTTP/1.1\r\nHost: t\r\n\r\n");
        assert!(c.read(false).unwrap().body == file("f1"));
        assert!(c.read(false).unwrap().body.is_empty());
        assert!(c.read(false).unwrap().body == file("f4095"));
    }
}

#[test]
fn head_has_headers_and_no_body_and_if_modified_since_gives_304() {
    for backend in BACKENDS {
        scenario_head_and_304(backend, &[]);
    }
}

#[test]
fn bad_input_gets_the_right_status() {
    for backend in BACKENDS {
        let s = start(backend, &[]);
        let a = s.addr;
        assert_eq!(once(a, b"GARBAGE\r\n\r\n").status, 400);
        assert_eq!(once(a, b"GET /f1 HTTP/1.1\r\n\r\n").status, 400, "no Host");
        assert_eq!(once(a, b"POST /f1 HTTP/1.1\r\nHost: t\r\n\r\n").status, 405);
        let long = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(3000));
        assert_eq!(once(a, long.as_bytes()).status, 414);
        let huge = format!(
            "GET /f1 HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n",
            "b".repeat(9000)
        );
        assert_eq!(once(a, huge.as_bytes()).status, 431);
        assert_eq!(
            once(a, b"GET /missing HTTP/1.1\r\nHost: t\r\n\r\n").status,
            404
        );
        assert_eq!(
            once(a, b"GET /noindex/ HTTP/1.1\r\nHost: t\r\n\r\n").status,
            403
        );
        assert_eq!(
            once(a, b"GET /fifo HTTP/1.1\r\nHost: t\r\n\r\n").status,
            403
        );
        assert_eq!(
            once(a, b"GET /dev/null HTTP/1.1\r\nHost: t\r\n\r\n").status,
            404
        );
        // The server is still fine.
        assert_eq!(once(a, b"GET /f1 HTTP/1.1\r\nHost: t\r\n\r\n").status, 200);
    }
}

#[test]
fn escape_attempts_never_serve_outside_files() {
    let passwd = std::fs::read("/etc/passwd").unwrap_or_default();
    for backend in BACKENDS {
        let s = start(backend, &[]);
        for target in [
            "/../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/..%2fetc/passwd",
            "//etc/passwd",
            "/passwd",
            "/f1%00.html",
            "/withindex/../../etc/passwd",
        ] {
            let r = once(
                s.addr,
                format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
            );
            assert!(
                [400, 403, 404].contains(&r.status),
                "{backend} {target}: {}",
                r.status
            );
            assert!(
                passwd.is_empty()
                    || !r
                        .body
                        .windows(passwd.len().min(16))
                        .any(|w| passwd.starts_with(w)),
                "{backend} {target} leaked /etc/passwd"
            );
        }
    }
}

/// 200 keep-alive clients on 20 threads, every request in flight before any response is
/// read, each checking it got the right file; then every connection socket closed.
fn scenario_concurrency(backend: &str, extra: &[&str]) {
    let names: Vec<String> = SIZES.iter().map(|s| format!("f{s}")).collect();
    let want: Vec<Vec<u8>> = names.iter().map(|n| file(n)).collect();
    {
        // Two threads: two listeners on one port (SO_REUSEPORT), two rings or epolls.
        let s = start(
            backend,
            &[extra, &["--chunk", "4096", "--threads", "2"]].concat(),
        );
        let addr = s.addr;
        std::thread::scope(|scope| {
            for t in 0..20usize {
                let (names, want) = (&names, &want);
                scope.spawn(move || {
                    let mut clients: Vec<Client> = (0..10).map(|_| Client::connect(addr)).collect();
                    for round in 0..4usize {
                        // Every connection has a request in flight before any response is read.
                        let picks: Vec<usize> = (0..clients.len())
                            .map(|i| (t * 7 + i * 3 + round * 5) % names.len())
                            .collect();
                        for (c, &p) in clients.iter_mut().zip(&picks) {
                            c.send(
                                format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", names[p]).as_bytes(),
                            );
                        }
                        for (c, &p) in clients.iter_mut().zip(&picks) {
                            let r = c.read(false).unwrap();
                            assert_eq!(r.status, 200);
                            assert!(r.body == want[p], "{backend}: wrong body for {}", names[p]);
                        }
                    }
                });
            }
        });
        // Every connection socket is closed once the clients are gone: only the two
        // listeners are left. (Counting sockets, not all fds: pipes inherited from the test process are not
        // the server's doing.)
        let sockets = |s: &Server| {
            fd_links(s)
                .iter()
                .filter(|l| l.starts_with("socket:"))
                .count()
        };
        assert!(
            s.wait_until(Duration::from_secs(5), |s| sockets(s) == 2),
            "{backend}: fds still open: {:?}",
            fd_links(&s)
        );
    }
}

#[test]
fn two_hundred_concurrent_keep_alive_clients_get_the_right_files() {
    for backend in BACKENDS {
        scenario_concurrency(backend, &[]);
    }
}

/// Every optional io_uring feature off at once.
const DISABLE_ALL: &str =
    "multishot-accept,fixed-files,fixed-buffers,sqpoll,defer-taskrun,coop-taskrun,send-zc,links,pbuf-ring,cancel-fd,inline-lookups";

/// The fallbacks are as tested as the fast paths: the main scenarios again with every
/// optional io_uring feature disabled (single-shot accept, plain file descriptors, plain
/// READ, a plain ring), and `--sqpoll` asked for but disabled.
#[test]
fn the_main_scenarios_pass_with_every_feature_disabled() {
    let all_off = ["--disable", DISABLE_ALL, "--sqpoll"];
    // The worker's features line says that every one of them is really off.
    let s = start("uring", &all_off);
    let line = s
        .wait_for_line(Duration::from_secs(5), |l| l.starts_with("io_uring:"))
        .expect("a features line");
    for feature in [
        "defer_taskrun",
        "coop_taskrun",
        "sqpoll",
        "multishot_accept",
        "fixed_files",
        "fixed_buffers",
        "links",
        "pbuf_ring",
        "cancel_fd",
        "inline_lookups",
    ] {
        assert!(line.contains(&format!("{feature}=off")), "{line}");
    }
    drop(s);
    scenario_downloads("uring", &all_off);
    scenario_ranges("uring", &all_off);
    scenario_head_and_304("uring", &all_off);
    scenario_concurrency("uring", &all_off);
}

#[test]
fn disabling_a_feature_ringwork_files_does_not_use_is_refused() {
    let name = "multishot-recv";
    let out = std::process::Command::new(ringwork_e2e::binary("ringwork-files"))
        .args(["--listen", "127.0.0.1:0", "--disable", name])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "--disable {name} accepted");
    assert!(
        err.contains("ringwork-files does not use") && err.contains(name),
        "{err}"
    );
}

/// The smallest rings under a burst: one SQ entry and four CQ entries, 150 clients at once,
/// each with small and 1 MiB files: every response byte-exact (SQ-full waits and the CQ
/// overflow backlog lose nothing), for every feature set.
#[test]
fn smallest_rings_under_a_burst_serve_every_byte() {
    let names = ["f1", "f4097", "f1048579"];
    let want: Vec<Vec<u8>> = names.iter().map(|n| file(n)).collect();
    for extra in [
        &["--sq-entries", "1"][..],
        &["--sq-entries", "1", "--disable", DISABLE_ALL],
    ] {
        let s = start("uring", &[extra, &["--chunk", "16384"]].concat());
        let addr = s.addr;
        std::thread::scope(|scope| {
            for t in 0..15usize {
                let want = &want;
                scope.spawn(move || {
                    let mut clients: Vec<Client> = (0..10).map(|_| Client::connect(addr)).collect();
                    for round in 0..2usize {
                        let picks: Vec<usize> = (0..clients.len())
                            .map(|i| (t + i + round) % names.len())
                            .collect();
                        for (c, &p) in clients.iter_mut().zip(&picks) {
                            c.send(
                                format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", names[p]).as_bytes(),
                            );
                        }
                        for (c, &p) in clients.iter_mut().zip(&picks) {
                            let r = c.read(false).unwrap();
                            assert_eq!(r.status, 200, "{extra:?}");
                            assert!(r.body == want[p], "{extra:?}: wrong body for {}", names[p]);
                        }
                    }
                });
            }
        });
        // Still serving after the burst.
        assert_eq!(
            once(addr, b"GET /f1 HTTP/1.1\r\nHost: t\r\n\r\n").status,
            200
        );
        // And the burst really overflowed the 4-entry CQ (into the kernel's backlog, or
        // refused enters retried after reaping): the path this test exists for was taken.
        let line = terminate(s);
        assert!(
            stat(&line, "cq_overflows") + stat(&line, "busy_retries") > 0,
            "{extra:?}: the CQ never overflowed: {line}"
        );
    }
}

/// `--zerocopy`: file chunks by SEND_ZC from the registered buffers (and from plain memory
/// with `--disable fixed-buffers`), byte-exact; every chunk's notification harvested, and
/// the `stats:` line says how many the kernel copied anyway.
#[test]
fn zerocopy_downloads_are_byte_exact() {
    scenario_downloads("uring", &["--zerocopy"]);
    scenario_downloads("uring", &["--zerocopy", "--disable", "fixed-buffers"]);
    scenario_ranges("uring", &["--zerocopy"]);
    scenario_concurrency("uring", &["--zerocopy"]);
    let s = start("uring", &["--zerocopy", "--chunk", "4096"]);
    let r = Client::connect(s.addr).get("/f1048579", "");
    assert!(r.status == 200 && r.body == file("f1048579"));
    let line = terminate(s);
    let (notifs, copied) = (stat(&line, "zc_notifs"), stat(&line, "zc_copied"));
    // 257 chunks of 4 KiB, some sent in more than one SEND_ZC.
    assert!(notifs >= 1_048_579 / 4096, "{line}");
    assert!(copied <= notifs, "{line}");
    println!("--zerocopy on loopback: {copied} of {notifs} notifications say the kernel copied");
}

/// The stall that epoll once had: closed-loop keep-alive clients, each sending its next
/// request the moment the previous response is read, cycling a small and a 1 MiB file, beside
/// one greedy client that keeps its socket full of pipelined small requests (each head longer
/// than half the server's receive buffer, so every request needs a receive of its own). A
/// connection whose next request was always already there kept the epoll loop to itself:
/// the others were not read until it stopped. Every connection must make steady progress
/// instead.
#[test]
fn closed_loop_keep_alive_clients_progress_beside_a_greedy_pipeliner() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    const CONNS: usize = 40;
    const REQUESTS: usize = 16;
    const GREEDY_FOR: Duration = Duration::from_secs(6);
    let names = ["f4096", "f1048579"];
    let want: Vec<Vec<u8>> = names.iter().map(|n| file(n)).collect();
    for backend in BACKENDS {
        let s = start(backend, &["--chunk", "16384"]);
        let addr = s.addr;
        // Everyone is connected (and accepted: one answered request) before the greedy
        // client starts.
        let mut clients: Vec<Client> = (0..CONNS).map(|_| Client::connect(addr)).collect();
        for c in &mut clients {
            assert_eq!(c.get("/f4096", "").status, 200, "{backend}");
        }
        let greedy = TcpStream::connect(addr).unwrap();
        greedy.set_nodelay(true).unwrap();
        let stop = AtomicBool::new(false);
        let greedy_answered = AtomicUsize::new(0);
        let t0 = Instant::now();
        let slowest = std::thread::scope(|scope| {
            let (stop, greedy, greedy_answered) = (&stop, &greedy, &greedy_answered);
            scope.spawn(move || {
                let pad = "a".repeat(6000);
                let req = format!("GET /f4096 HTTP/1.1\r\nHost: t\r\nX-Pad: {pad}\r\n\r\n");
                let mut w = greedy;
                while !stop.load(Ordering::Relaxed) && t0.elapsed() < GREEDY_FOR {
                    if w.write_all(req.as_bytes()).is_err() {
                        break;
                    }
                }
            });
            scope.spawn(move || {
                let mut r = Client {
                    reader: BufReader::new(greedy.try_clone().unwrap()),
                };
                while !stop.load(Ordering::Relaxed) && r.read(false).is_ok() {
                    greedy_answered.fetch_add(1, Ordering::Relaxed);
                }
            });
            // The greedy pipeline is under way before the others start.
            while greedy_answered.load(Ordering::Relaxed) < 20 && t0.elapsed() < GREEDY_FOR {
                std::thread::sleep(Duration::from_millis(1));
            }
            let workers: Vec<_> = clients
                .into_iter()
                .enumerate()
                .map(|(i, mut c)| {
                    let want = &want;
                    scope.spawn(move || {
                        let mut slowest = Duration::ZERO;
                        for r in 0..REQUESTS {
                            let p = (i + r) % names.len();
                            let sent = Instant::now();
                            let resp = c.get(&format!("/{}", names[p]), "");
                            slowest = slowest.max(sent.elapsed());
                            assert_eq!(resp.status, 200, "{backend}");
                            assert!(
                                resp.body == want[p],
                                "{backend}: wrong body for {}",
                                names[p]
                            );
                        }
                        slowest
                    })
                })
                .collect();
            let slowest = workers.into_iter().map(|w| w.join().unwrap()).max();
            // Unblocks the greedy writer and reader whatever they wait on.
            stop.store(true, Ordering::Relaxed);
            let _ = greedy.shutdown(std::net::Shutdown::Both);
            slowest.unwrap()
        });
        let took = t0.elapsed();
        // About 330 MiB over loopback: well under a second here even in a debug build. Before
        // the epoll fix the clients waited for the greedy one (up to GREEDY_FOR): slowest
        // responses of 1.6-2.2 s, whole exchanges of 6 s.
        assert!(
            slowest < Duration::from_secs(3) && took < Duration::from_secs(5),
            "{backend}: slowest response {slowest:?}, whole exchange {took:?}"
        );
    }
}

/// What the server's fds are, for failure messages.
fn fd_links(s: &Server) -> Vec<String> {
    ringwork_e2e::proc::fd_targets(s.pid())
        .iter()
        .map(|p| p.display().to_string())
        .collect()
}

#[test]
fn direct_serves_the_same_bytes_as_buffered() {
    for backend in BACKENDS {
        let s = start(backend, &["--direct", "--chunk", "8192"]);
        let mut c = Client::connect(s.addr);
        for name in ["f0", "f1", "f4095", "f4096", "f4097", "f1048579"] {
            let r = c.get(&format!("/{name}"), "");
            assert!(
                r.status == 200 && r.body == file(name),
                "{backend} --direct {name}"
            );
        }
        let f = file("f1048579");
        let r = c.get("/f1048579", "Range: bytes=5000-70000\r\n");
        assert!(
            r.status == 206 && r.body == f[5000..=70000],
            "{backend} --direct range"
        );
    }
}

#[test]
fn unregistrable_buffers_fall_back_to_plain_reads_with_the_same_bytes() {
    // 32 MiB of chunk buffers (registered only with --zerocopy or --direct): more than a
    // default RLIMIT_MEMLOCK (8 MiB) lets io_uring pin, so registration fails and READ is
    // used.
    let s = start("uring", &["--zerocopy", "--chunk", "32768"]);
    let mut c = Client::connect(s.addr);
    for name in ["f4097", "f1048579"] {
        let r = c.get(&format!("/{name}"), "");
        assert!(r.status == 200 && r.body == file(name), "{name}");
    }
    // CAP_IPC_LOCK (bit 14; root has it) lifts the limit: then registration succeeds.
    let cap_ipc_lock = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|st| {
            let hex = st
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << 14) != 0);
    let memlock = rustix::process::getrlimit(rustix::process::Resource::Memlock).current;
    // The message comes from the worker thread; give the line forwarder a moment.
    std::thread::sleep(Duration::from_millis(100));
    let lines = s.stdout_lines();
    if !cap_ipc_lock && memlock.is_some_and(|l| l < 16 << 20) {
        assert!(
            lines.iter().any(|l| l.contains("instead of READ_FIXED")),
            "no fallback message in {lines:?}"
        );
    }
}

#[test]
fn a_stalled_half_header_is_dropped_while_others_are_served() {
    for backend in BACKENDS {
        let s = start(
            backend,
            &["--header-timeout-ms", "300", "--idle-timeout-ms", "600"],
        );
        let mut slow = TcpStream::connect(s.addr).unwrap();
        slow.write_all(b"GET /f1 HTTP/1.1\r\nHo").unwrap();
        let t = Instant::now();
        let mut idle = Client::connect(s.addr);
        let r = idle.get("/f4096", "");
        assert!(r.status == 200 && r.body == file("f4096"));
        let served = Instant::now();
        slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let n = slow.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "{backend}: the stalled connection got a response");
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(3),
            "{backend}: stalled head dropped after {took:?}"
        );
        // The served keep-alive connection stays open while idle, then is dropped too.
        let n = idle.reader.get_mut().read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "{backend}: the idle connection got bytes");
        let idle_for = served.elapsed();
        assert!(
            idle_for >= Duration::from_millis(500) && idle_for < Duration::from_secs(3),
            "{backend}: idle keep-alive dropped after {idle_for:?}"
        );
    }
}

#[test]
fn sigterm_and_sigint_exit_cleanly() {
    for (backend, sig) in [
        ("uring", rustix::process::Signal::TERM),
        ("epoll", rustix::process::Signal::INT),
    ] {
        let mut s = start(backend, &["--threads", "2"]);
        let _idle = Client::connect(s.addr);
        assert_eq!(
            once(s.addr, b"GET /f1 HTTP/1.1\r\nHost: t\r\n\r\n").status,
            200
        );
        s.signal(sig);
        assert_eq!(
            s.wait_exit(Duration::from_secs(5)),
            Ok(Some(0)),
            "{backend}"
        );
    }
}

/// Linked OPENAT2 → first READ chains (on by default): an open refused because a symlink
/// leads outside the root breaks its chain, the linked read completes with ECANCELED (counted
/// as `link_cancels`), the client still gets its 403, and the same keep-alive connection
/// goes on serving byte-exact files. With `--disable links` the answers are the same and no
/// read is ever cancelled.
#[test]
fn a_broken_open_read_chain_answers_403_and_the_connection_stays_usable() {
    let outside = root()
        .parent()
        .unwrap()
        .join(format!("ringwork-files-outside-{}", std::process::id()));
    std::fs::write(&outside, b"must never be served").unwrap();
    let link = root().join("outside-link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let f = file("f1048579");
    for (extra, linked) in [
        (&[][..], true),
        (&["--zerocopy", "--chunk", "4096"][..], true),
        (&["--disable", "links"][..], false),
    ] {
        let s = start("uring", extra);
        let features = s
            .wait_for_line(Duration::from_secs(5), |l| l.starts_with("io_uring:"))
            .expect("a features line");
        let want = if linked { "links=on" } else { "links=off" };
        assert!(features.contains(want), "{extra:?}: {features}");
        let mut c = Client::connect(s.addr);
        for _ in 0..3 {
            let r = c.get("/outside-link", "");
            assert_eq!(r.status, 403, "{extra:?}");
            assert!(!r.body.windows(4).any(|w| w == b"must"), "{extra:?}");
            let r = c.get("/f1048579", "Range: bytes=10-200000\r\n");
            assert!(r.status == 206 && r.body == f[10..=200_000], "{extra:?}");
            let r = c.get("/f1048579", "");
            assert!(r.status == 200 && r.body == f, "{extra:?}");
        }
        let line = terminate(s);
        let cancels = stat(&line, "link_cancels");
        if linked {
            assert_eq!(
                cancels, 3,
                "{extra:?}: one cancelled read per broken chain: {line}"
            );
        } else {
            assert_eq!(cancels, 0, "{extra:?}: {line}");
        }
    }
    std::fs::remove_file(&link).unwrap();
    std::fs::remove_file(&outside).unwrap();
}

/// Without DEFER_TASKRUN the worker falls back to COOP_TASKRUN (Linux 5.19), and to a plain
/// ring without that too; the features line says which it got, and downloads stay exact.
#[test]
fn task_run_modes_fall_back_in_order() {
    for (disable, defer, coop) in [
        ("links", "on", "off"),
        ("defer-taskrun", "off", "on"),
        ("defer-taskrun,coop-taskrun", "off", "off"),
    ] {
        let s = start("uring", &["--disable", disable]);
        let line = s
            .wait_for_line(Duration::from_secs(5), |l| l.starts_with("io_uring:"))
            .expect("a features line");
        assert!(
            line.contains(&format!("defer_taskrun={defer}"))
                && line.contains(&format!("coop_taskrun={coop}")),
            "--disable {disable}: {line}"
        );
        drop(s);
        scenario_downloads("uring", &["--disable", disable]);
    }
}

/// `--sqpoll`: the kernel's poller submits; downloads and the concurrent clients byte-exact,
/// and the features line says SQPOLL is on. A poller pinned to a CPU that does not exist is
/// refused at start with the cause named, not silently dropped.
#[test]
fn sqpoll_serves_byte_exact_and_a_refused_sqpoll_names_the_cause() {
    let s = start("uring", &["--sqpoll"]);
    let line = s
        .wait_for_line(Duration::from_secs(5), |l| l.starts_with("io_uring:"))
        .expect("a features line");
    assert!(
        line.contains("sqpoll=on") && line.contains("defer_taskrun=off"),
        "{line}"
    );
    drop(s);
    scenario_downloads("uring", &["--sqpoll=5"]);
    scenario_concurrency("uring", &["--sqpoll"]);
    let out = std::process::Command::new(ringwork_e2e::binary("ringwork-files"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--sqpoll",
            "--sqpoll-cpu",
            "100000",
        ])
        .arg(root())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a poller on CPU 100000 was accepted");
    assert!(
        err.contains("IORING_SETUP_SQPOLL") && err.contains("CPU 100000"),
        "{err}"
    );
}

/// A file asked for as a directory (`/file/`, `/file/.`) is not found, as nginx answers; a
/// directory asked for with a dot segment is its index.
#[test]
fn a_file_asked_for_as_a_directory_is_not_found() {
    for backend in BACKENDS {
        let s = start(backend, &[]);
        for (target, status) in [
            ("/f4096/", 404),
            ("/f4096/.", 404),
            ("/f4096/%2e", 404),
            ("/f4096", 200),
            ("/withindex/.", 200),
        ] {
            let raw = format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n");
            let r = once(s.addr, raw.as_bytes());
            assert_eq!(r.status, status, "{backend}: {target}");
        }
        assert_eq!(
            once(s.addr, b"GET /withindex/. HTTP/1.1\r\nHost: t\r\n\r\n").body,
            file("withindex/index.html")
        );
    }
}

/// Under a small RLIMIT_NOFILE the default `--max-conns` still leaves room for a dozen
/// connections (a fixed reserve made it one per thread: two idle keep-alive clients held
/// everyone else off for the idle timeout), and the server says what the limit allows.
#[test]
fn a_small_descriptor_limit_still_serves_a_dozen_keep_alive_clients() {
    let root = root().to_str().unwrap();
    let args = ["--listen", "127.0.0.1:0", "--threads", "2", root];
    let s = Server::start_with_nofile("ringwork-files", &args, 64);
    let want = file("page.html");
    let idle: Vec<Client> = (0..13)
        .map(|i| {
            let mut c = Client::connect(s.addr);
            c.reader
                .get_mut()
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let r = c.get("/page.html", "");
            assert_eq!(r.status, 200, "client {i} of 13, the others idle");
            assert_eq!(r.body, want, "client {i}");
            c
        })
        .collect();
    // stderr is read on a thread of its own: the line may come after the serving line.
    let warned = |s: &Server| {
        let lines = s.stderr().lines;
        lines.iter().any(|l| l.contains("RLIMIT_NOFILE is 64"))
    };
    assert!(
        s.wait_until(Duration::from_secs(5), warned),
        "{:?}",
        s.stderr().lines
    );
    drop(idle);
}

/// Clients that leave in the middle of their downloads while reads wait for a chunk buffer:
/// a read queued for a closing connection never reached the kernel, and must not wait for a
/// buffer that the other closing connections hold until their own queued reads complete (a
/// cycle that kept the server from ever freeing them, or exiting on SIGTERM).
#[test]
fn clients_leaving_while_their_reads_wait_for_buffers_are_freed() {
    let name = format!("f{}", (1 << 20) + 3);
    // 1 MiB of 64 KiB chunk buffers, every chunk through them (no sends from the file).
    let mut s = start(
        "uring",
        &[
            "--threads",
            "1",
            "--buffer-memory",
            "1",
            "--chunk",
            "65536",
            "--sendfile",
            "false",
            "--shutdown-grace-ms",
            "1000",
        ],
    );
    let addr = s.addr;
    let request = format!("GET /{name} HTTP/1.1\r\nHost: t\r\n\r\n");
    let clients: Vec<TcpStream> = (0..64)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(request.as_bytes()).unwrap();
            c
        })
        .collect();
    // Some of every response is under way: the head and a first chunk.
    for c in &clients {
        let mut first = [0u8; 1];
        (&*c).read_exact(&mut first).unwrap();
    }
    for c in &clients {
        rustix::net::sockopt::set_socket_linger(c, Some(Duration::ZERO)).unwrap();
    }
    drop(clients);
    assert!(
        s.wait_until(Duration::from_secs(10), |s| s.connections_held() == 0),
        "connections whose clients left are still held"
    );
    s.signal(rustix::process::Signal::TERM);
    assert_eq!(
        s.wait_exit(Duration::from_secs(10)),
        Ok(Some(0)),
        "no exit after SIGTERM"
    );
}

/// A chunk-buffer pool far smaller than the downloads in flight: every download is
/// byte-exact, none is refused, and reads waited their turn (the `chunk_waits` counter). An
/// idle connection holds no chunk buffer, so the pool bounds the memory, not the connections.
#[test]
fn a_tiny_buffer_pool_serves_many_concurrent_downloads_byte_exact() {
    let name = format!("f{}", (1 << 20) + 3);
    let want = file(&name);
    // 1 MiB of 64 KiB chunk buffers: 16, for 64 concurrent 1 MiB downloads.
    let s = start(
        "uring",
        &["--threads", "1", "--buffer-memory", "1", "--chunk", "65536"],
    );
    let addr = s.addr;
    std::thread::scope(|scope| {
        for t in 0..64 {
            let (name, want) = (&name, &want);
            scope.spawn(move || {
                let mut c = Client::connect(addr);
                for round in 0..2 {
                    let r = c.get(&format!("/{name}"), "");
                    assert_eq!(r.status, 200, "client {t} round {round}");
                    assert!(r.body == *want, "client {t} round {round}: body differs");
                }
            });
        }
    });
    let out = terminate(s);
    let waits: u64 = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("chunk_waits="))
        .expect("a stats line with chunk_waits")
        .parse()
        .unwrap();
    assert!(
        waits > 0,
        "64 downloads through 16 buffers never waited: {out}"
    );
}

/// At `--max-conns` the server stops accepting instead of accepting and closing: the next
/// client waits in the listen backlog and is served as soon as a connection closes.
#[test]
fn at_capacity_new_connections_wait_in_the_backlog_not_closed() {
    for backend in BACKENDS {
        let s = start(backend, &["--threads", "1", "--max-conns", "3"]);
        let mut held: Vec<Client> = (0..3)
            .map(|_| {
                let mut c = Client::connect(s.addr);
                // A response proves the connection was accepted and holds its slot.
                assert_eq!(c.get("/f1", "").status, 200, "{backend}");
                c
            })
            .collect();
        let mut waiting = TcpStream::connect(s.addr).unwrap();
        waiting
            .write_all(b"GET /f4096 HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        waiting
            .set_read_timeout(Some(Duration::from_millis(400)))
            .unwrap();
        let mut byte = [0u8; 1];
        match waiting.read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            other => panic!("{backend}: a connection over capacity got {other:?}, not a wait"),
        }
        // One closes: the waiting client is accepted and served.
        drop(held.pop());
        waiting
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut client = Client {
            reader: BufReader::new(waiting),
        };
        let r = client.read(false).unwrap();
        assert_eq!(r.status, 200, "{backend}");
        assert!(r.body == file("f4096"), "{backend}: body differs");
        drop(held);
    }
}

/// A directory without its trailing slash: 301 to the slashed target (query kept, the
/// client's encoding kept, CR/LF never reaching a header); with the slash: its index, or 403.
fn scenario_directory_redirects(backend: &str) {
    let s = start(backend, &[]);
    let mut c = Client::connect(s.addr);
    let r = c.get("/withindex?x=1&y=%41", "");
    assert_eq!(r.status, 301, "{backend}: {}", r.head);
    assert_eq!(r.header("Location"), Some("/withindex/?x=1&y=%41"));
    assert_eq!(r.header("Connection"), Some("keep-alive"));
    let r = c.get(r.header("Location").unwrap(), "");
    assert_eq!((r.status, &r.body[..]), (200, &b"<p>index</p>\n"[..]));
    let r = c.get("/noindex", "");
    assert_eq!((r.status, r.header("Location")), (301, Some("/noindex/")));
    assert_eq!(c.get("/noindex/", "").status, 403, "no listings");
    // HEAD answers as GET, without the body.
    c.send(b"HEAD /withindex HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read(true).unwrap();
    assert_eq!((r.status, r.header("Location")), (301, Some("/withindex/")));
    // `//host` must not become a scheme-relative redirect off this server.
    let r = c.get("//withindex", "");
    assert_eq!(r.header("Location"), Some("/withindex/"));
    // Still usable after all of them.
    assert!(c.get("/f4095", "").body == file("f4095"));
}

#[test]
fn a_directory_without_its_slash_is_redirected_to_it() {
    for backend in BACKENDS {
        scenario_directory_redirects(backend);
    }
}

/// ETags (nginx's `"<mtime hex>-<size hex>"`) on 200, 206 and 304; If-None-Match gives 304
/// and outranks If-Modified-Since; If-Range serves the range only for the current validator.
fn scenario_etags(backend: &str) {
    let f = file("f4097");
    let meta = std::fs::metadata(root().join("f4097")).unwrap();
    let mtime = meta
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let etag = format!("\"{mtime:x}-{:x}\"", meta.len());
    let s = start(backend, &[]);
    let mut c = Client::connect(s.addr);
    let r = c.get("/f4097", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ETag"), Some(etag.as_str()), "{backend}");
    let last_modified = r.header("Last-Modified").unwrap().to_string();
    let r = c.get("/f4097", &format!("If-None-Match: \"other\", W/{etag}\r\n"));
    assert_eq!(
        (r.status, r.body.len()),
        (304, 0),
        "{backend}: weak comparison"
    );
    assert_eq!(r.header("ETag"), Some(etag.as_str()));
    let r = c.get("/f4097", "If-None-Match: *\r\n");
    assert_eq!(r.status, 304);
    // A tag that differs outvotes a date that alone would give 304.
    let r = c.get(
        "/f4097",
        &format!("If-None-Match: \"other\"\r\nIf-Modified-Since: {last_modified}\r\n"),
    );
    assert!(r.status == 200 && r.body == f, "{backend}: {}", r.head);
    let r = c.get(
        "/f4097",
        &format!("Range: bytes=1-2\r\nIf-Range: {etag}\r\n"),
    );
    assert_eq!((r.status, &r.body[..]), (206, &f[1..3]), "{backend}");
    assert_eq!(r.header("ETag"), Some(etag.as_str()));
    let r = c.get(
        "/f4097",
        &format!("Range: bytes=1-2\r\nIf-Range: W/{etag}\r\n"),
    );
    assert!(
        r.status == 200 && r.body == f,
        "{backend}: a weak If-Range never holds"
    );
    let r = c.get("/f4097", "Range: bytes=1-2\r\nIf-Range: \"other\"\r\n");
    assert!(
        r.status == 200 && r.body == f,
        "{backend}: changed, so all of it"
    );
    let r = c.get(
        "/f4097",
        &format!("Range: bytes=1-2\r\nIf-Range: {last_modified}\r\n"),
    );
    assert_eq!(
        (r.status, &r.body[..]),
        (206, &f[1..3]),
        "{backend}: by date"
    );
    // HEAD answers as GET.
    c.send(format!("HEAD /f4097 HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n").as_bytes());
    assert_eq!(c.read(true).unwrap().status, 304);
    assert!(c.get("/f4097", "").body == f, "still usable");
}

#[test]
fn etags_answer_if_none_match_and_if_range() {
    for backend in BACKENDS {
        scenario_etags(backend);
    }
}

/// `--listen` twice: 127.0.0.1 and [::1] at once, every thread holding a listener on each,
/// on both backends. Without IPv6 loopback the test fails and says so.
#[test]
fn listens_on_ipv4_and_ipv6_at_once() {
    if let Err(e) = std::net::TcpListener::bind("[::1]:0") {
        panic!("IPv6 loopback [::1] is unavailable here ({e}): this test needs it");
    }
    let f = file("f4097");
    for backend in BACKENDS {
        let root = root().to_str().unwrap();
        let args = [
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "[::1]:0",
            "--threads",
            "2",
            "--backend",
            backend,
            root,
        ];
        let s = Server::start("ringwork-files", &args);
        assert_eq!(s.addrs.len(), 2, "{backend}: one URL per address");
        assert!(
            s.addrs[0].is_ipv4() && s.addrs[1].is_ipv6(),
            "{:?}",
            s.addrs
        );
        for addr in &s.addrs {
            assert_eq!(
                s.listeners_on(*addr),
                2,
                "{backend}: one per thread on {addr}"
            );
        }
        // Enough connections on each that both threads' listeners take some.
        let mut clients: Vec<Client> = (0..16).map(|i| Client::connect(s.addrs[i % 2])).collect();
        for (i, c) in clients.iter_mut().enumerate() {
            let r = c.get("/f4097", "");
            assert!(
                r.status == 200 && r.body == f,
                "{backend} via {}",
                s.addrs[i % 2]
            );
            let peer = c.reader.get_ref().peer_addr().unwrap();
            assert_eq!(peer, s.addrs[i % 2]);
        }
        terminate(s);
    }
    // The same address twice is refused, naming it.
    let out = std::process::Command::new(ringwork_e2e::binary("ringwork-files"))
        .args(["--listen", "127.0.0.1:1", "--listen", "127.0.0.1:1", "."])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("127.0.0.1:1 is given twice"), "{err}");
}

/// Precompressed siblings: `Accept-Encoding` (q-values honoured) picks `comp.txt.br` or
/// `comp.txt.gz` over `comp.txt`, with Content-Encoding, the plain file's Content-Type, and
/// `Vary: Accept-Encoding` on every answer; ranges count the encoded bytes; HEAD answers as
/// GET; `--precompressed false` never serves a sibling.
fn scenario_precompressed(backend: &str) {
    let dir = fresh_dir("ringwork-files-precompressed-");
    let plain = random_bytes(71, 3000);
    let gz = random_bytes(72, 1200);
    let br = random_bytes(73, 900);
    std::fs::write(dir.join("comp.txt"), &plain).unwrap();
    std::fs::write(dir.join("comp.txt.gz"), &gz).unwrap();
    std::fs::write(dir.join("comp.txt.br"), &br).unwrap();
    std::fs::write(dir.join("only-gz.js"), b"plain").unwrap();
    std::fs::write(dir.join("only-gz.js.gz"), b"gzipped").unwrap();
    std::fs::create_dir(dir.join("sibling-dir.txt.gz")).unwrap();
    std::fs::write(dir.join("sibling-dir.txt"), b"plain").unwrap();
    let root = dir.to_str().unwrap();
    let s = Server::start(
        "ringwork-files",
        &["--listen", "127.0.0.1:0", "--backend", backend, root],
    );
    let mut c = Client::connect(s.addr);
    let r = c.get("/comp.txt", "Accept-Encoding: gzip, deflate, br\r\n");
    assert_eq!(
        r.header("Content-Encoding"),
        Some("br"),
        "{backend}: {}",
        r.head
    );
    assert!(r.body == br);
    assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("Vary"), Some("Accept-Encoding"));
    let etag_br = r.header("ETag").unwrap().to_string();
    let r = c.get("/comp.txt", "Accept-Encoding: br;q=0.4, gzip;q=0.9\r\n");
    assert_eq!(
        r.header("Content-Encoding"),
        Some("gzip"),
        "{backend}: {}",
        r.head
    );
    assert!(r.body == gz);
    assert_ne!(
        r.header("ETag"),
        Some(etag_br.as_str()),
        "each encoding its own ETag"
    );
    let r = c.get("/comp.txt", "Accept-Encoding: gzip;q=0, br;q=0\r\n");
    assert!(
        r.header("Content-Encoding").is_none() && r.body == plain,
        "{backend}: q=0"
    );
    assert_eq!(
        r.header("Vary"),
        Some("Accept-Encoding"),
        "Vary on the plain answer too"
    );
    let r = c.get("/comp.txt", "");
    assert!(r.header("Content-Encoding").is_none() && r.body == plain);
    let r = c.get(
        "/comp.txt",
        "Accept-Encoding: gzip\r\nRange: bytes=10-19\r\n",
    );
    assert_eq!(
        (r.status, r.header("Content-Encoding")),
        (206, Some("gzip"))
    );
    assert_eq!(
        r.header("Content-Range"),
        Some("bytes 10-19/1200"),
        "encoded bytes"
    );
    assert_eq!(&r.body[..], &gz[10..20]);
    let r = c.get(
        "/comp.txt",
        &format!("Accept-Encoding: br\r\nIf-None-Match: {etag_br}\r\n"),
    );
    assert_eq!((r.status, r.header("Vary")), (304, Some("Accept-Encoding")));
    c.send(b"HEAD /comp.txt HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n");
    let r = c.read(true).unwrap();
    assert_eq!(r.header("Content-Encoding"), Some("gzip"));
    assert_eq!(r.header("Content-Length"), Some("1200"));
    let r = c.get("/only-gz.js", "Accept-Encoding: br, gzip\r\n");
    assert_eq!(
        (r.header("Content-Encoding"), &r.body[..]),
        (Some("gzip"), &b"gzipped"[..])
    );
    assert_eq!(
        r.header("Content-Type"),
        Some("text/javascript; charset=utf-8")
    );
    let r = c.get("/sibling-dir.txt", "Accept-Encoding: gzip\r\n");
    assert!(
        r.header("Content-Encoding").is_none() && r.body == b"plain",
        "a directory is no sibling"
    );
    drop(c);
    drop(s);
    let s = Server::start(
        "ringwork-files",
        &[
            "--listen",
            "127.0.0.1:0",
            "--backend",
            backend,
            "--precompressed",
            "false",
            root,
        ],
    );
    let r = Client::connect(s.addr).get("/comp.txt", "Accept-Encoding: br, gzip\r\n");
    assert!(
        r.header("Content-Encoding").is_none() && r.body == plain,
        "{backend}: off"
    );
    assert_eq!(r.header("Vary"), None);
    drop(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn precompressed_siblings_are_served_when_accepted() {
    for backend in BACKENDS {
        scenario_precompressed(backend);
    }
}

/// `--access-log PATH`: one combined-format line per answered request, in order, on both
/// backends, every line written by the time the server exits; `-` writes them to stdout.
/// One thread: each worker writes its own batches, so lines of different threads may
/// interleave out of order.
fn scenario_access_log(backend: &str) {
    let dir = fresh_dir("ringwork-files-log-");
    let log = dir.join("access.log");
    let root = root().to_str().unwrap();
    let s = Server::start(
        "ringwork-files",
        &[
            "--listen",
            "127.0.0.1:0",
            "--backend",
            backend,
            "--threads",
            "1",
            "--access-log",
            log.to_str().unwrap(),
            root,
        ],
    );
    let mut c = Client::connect(s.addr);
    let r = c.get(
        "/f4095?x=1",
        "Referer: http://ref.example/\r\nUser-Agent: e2e \"agent\"\r\n",
    );
    assert_eq!(r.status, 200);
    c.send(b"HEAD /page.html HTTP/1.1\r\nHost: t\r\n\r\n");
    c.read(true).unwrap();
    assert_eq!(c.get("/nope", "").status, 404);
    assert_eq!(c.get("/f4097", "Range: bytes=0-9\r\n").status, 206);
    assert_eq!(c.get("/withindex", "").status, 301);
    drop(c);
    assert_eq!(once(s.addr, b"GARBAGE\r\n\r\n").status, 400);
    terminate(s);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let want = [
        r#""GET /f4095?x=1 HTTP/1.1" 200 4095 "http://ref.example/" "e2e \x22agent\x22""#,
        r#""HEAD /page.html HTTP/1.1" 200 0 "-" "-""#,
        r#""GET /nope HTTP/1.1" 404 14 "-" "-""#,
        r#""GET /f4097 HTTP/1.1" 206 10 "-" "-""#,
        r#""GET /withindex HTTP/1.1" 301 22 "-" "-""#,
        r#""-" 400 16 "-" "-""#,
    ];
    assert_eq!(lines.len(), want.len(), "{backend}: {text}");
    for (line, want) in lines.iter().zip(want) {
        assert!(line.starts_with("127.0.0.1 - - ["), "{backend}: {line}");
        assert!(line.contains(" +0000] "), "{backend}: {line}");
        assert!(
            line.ends_with(want),
            "{backend}: {line:?} should end {want:?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();

    let s = Server::start(
        "ringwork-files",
        &[
            "--listen",
            "[::1]:0",
            "--backend",
            backend,
            "--access-log",
            "-",
            root,
        ],
    );
    assert_eq!(Client::connect(s.addr).get("/f1", "").status, 200);
    let ok = s.wait_until(Duration::from_secs(5), |s| {
        s.stdout_lines().iter().any(|l| {
            l.starts_with("::1 - - [") && l.ends_with(r#""GET /f1 HTTP/1.1" 200 1 "-" "-""#)
        })
    });
    assert!(ok, "{backend}: no log line on stdout");
}

#[test]
fn the_access_log_has_a_line_per_answered_request() {
    for backend in BACKENDS {
        scenario_access_log(backend);
    }
}

/// A log that cannot be written (/dev/full: every write fails with ENOSPC) is reported once
/// on stderr, and serving goes on.
#[test]
fn an_unwritable_access_log_is_reported_once_and_serving_goes_on() {
    let f = file("f4097");
    for backend in BACKENDS {
        let root = root().to_str().unwrap();
        let args = [
            "--listen",
            "127.0.0.1:0",
            "--backend",
            backend,
            "--access-log",
            "/dev/full",
            root,
        ];
        let s = Server::start_with_nofile("ringwork-files", &args, 4096);
        let mut c = Client::connect(s.addr);
        for _ in 0..20 {
            let r = c.get("/f4097", "");
            assert!(r.status == 200 && r.body == f, "{backend}");
            // Separate turns of the loop, so that there are several writes to fail.
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(c);
        let reported = |s: &Server| {
            s.stderr()
                .lines
                .into_iter()
                .filter(|l| l.contains("access log"))
                .collect::<Vec<String>>()
        };
        assert!(
            s.wait_until(Duration::from_secs(5), |s| !reported(s).is_empty()),
            "{backend}: the failure was not reported"
        );
        let errors = reported(&s);
        assert_eq!(errors.len(), 1, "{backend}: once: {errors:?}");
        assert!(
            errors[0].contains("No space left on device"),
            "{}",
            errors[0]
        );
        let stats = terminate(s);
        assert!(stat(&stats, "log_dropped") >= 20, "{backend}: {stats}");
    }
}
