//! The servers as an operator runs them: signals (logrotate's rename and SIGUSR1 under load
//! with every access-log line accounted for; SIGHUP, SIGUSR2 and SIGQUIT as documented), on
//! both backends, for ringwork-files and ringwork-echo.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringwork_e2e::http::Client;
use ringwork_e2e::{exchange, fresh_dir, random_bytes, terminate, Server, BACKENDS};
use rustix::process::Signal;

/// A root with a small file, a page and a larger file (several chunks).
fn site(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("small.txt"), b"small\n").unwrap();
    std::fs::write(root.join("page.html"), b"<p>page</p>\n").unwrap();
    std::fs::write(root.join("big.bin"), random_bytes(7, 300_000)).unwrap();
    root
}

fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// Waits until the server's stderr has a line containing `what`.
fn said(s: &Server, what: &str) -> bool {
    s.wait_until(Duration::from_secs(5), |s| {
        s.stderr().lines.iter().any(|l| l.contains(what))
    })
}

/// Keep-alive clients that fetch until told to stop, counting the responses they got whole.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    clients: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let clients = (0..clients)
            .map(|i| {
                let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    let targets = ["/small.txt", "/page.html", "/big.bin", "/missing"];
                    let mut n = i;
                    while !stop.load(Ordering::Relaxed) {
                        let target = targets[n % targets.len()];
                        n += 1;
                        let r = c.get(target, "");
                        let want = if target == "/missing" { 404 } else { 200 };
                        assert_eq!(r.status, want, "{target}");
                        if target == "/big.bin" {
                            assert_eq!(r.body.len(), 300_000);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            done,
            clients,
        }
    }

    fn responses(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Stops the clients; the responses they got.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.join().expect("a client failed");
        }
        self.done.load(Ordering::Relaxed)
    }
}

/// Waits until the clients have had `n` more responses.
fn more_responses(load: &Load, n: u64) {
    let want = load.responses() + n;
    let deadline = Instant::now() + Duration::from_secs(20);
    while load.responses() < want {
        assert!(Instant::now() < deadline, "the load stalled");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// logrotate's way, twice, under load: rename the log, SIGUSR1. The server lives on, the
/// clients see no error, and the three files together hold exactly one line per response the
/// clients got; each file got lines, and the renamed ones get none after their rotation is
/// over.
fn scenario_logrotate(backend: &str) {
    let dir = fresh_dir(&format!("ringwork-operator-rotate-{backend}-"));
    let root = site(&dir);
    let log = dir.join("access.log");
    let s = Server::start_capturing(
        "ringwork-files",
        &[
            "--listen",
            "127.0.0.1:0",
            "--backend",
            backend,
            "--threads",
            "2",
            "--access-log",
            log.to_str().unwrap(),
            root.to_str().unwrap(),
        ],
    );
    let load = Load::start(s.addr, 4);
    let rotated = [dir.join("access.log.2"), dir.join("access.log.1")];
    for (i, old) in rotated.iter().enumerate() {
        more_responses(&load, 200);
        std::fs::rename(&log, old).unwrap();
        // Batches are written at least every 100 ms: some go to the renamed file, as they
        // would while logrotate runs.
        more_responses(&load, 50);
        std::thread::sleep(Duration::from_millis(250));
        s.signal(Signal::USR1);
        assert!(
            s.wait_until(Duration::from_secs(5), |s| {
                s.stderr()
                    .lines
                    .iter()
                    .filter(|l| l.contains("SIGUSR1: access log reopened"))
                    .count()
                    > i
            }),
            "{backend}: no reopen said: {:?}",
            s.stderr().lines
        );
        more_responses(&load, 200);
    }
    // A write in flight at the reopen finishes into the old file; give it (and a loaded
    // machine) a second, after which the renamed files are finished.
    std::thread::sleep(Duration::from_secs(1));
    let finished: Vec<usize> = rotated.iter().map(|p| lines_in(p)).collect();
    more_responses(&load, 200);
    let responses = load.finish();
    terminate(s);
    let counts: Vec<usize> = rotated.iter().map(|p| lines_in(p)).collect();
    assert_eq!(
        counts, finished,
        "{backend}: a rotated log was written to later"
    );
    let current = lines_in(&log);
    assert!(
        counts.iter().all(|&n| n > 0) && current > 0,
        "{backend}: every file gets lines: {counts:?} {current}"
    );
    assert_eq!(
        (counts.iter().sum::<usize>() + current) as u64,
        responses,
        "{backend}: log lines across the files ({counts:?} + {current}) against responses"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn logrotate_rename_and_usr1_under_load_lose_no_line() {
    for backend in BACKENDS {
        scenario_logrotate(backend);
    }
}

/// SIGHUP and SIGUSR2 leave ringwork-files serving: a keep-alive connection opened before
/// them goes on, a large response in flight is finished whole, each signal is said on
/// stderr; SIGQUIT then drains and exits 0, as SIGTERM does.
fn scenario_files_signals(backend: &str) {
    let dir = fresh_dir(&format!("ringwork-operator-signals-{backend}-"));
    let root = site(&dir);
    let log = dir.join("access.log");
    let mut s = Server::start_capturing(
        "ringwork-files",
        &[
            "--listen",
            "127.0.0.1:0",
            "--backend",
            backend,
            "--access-log",
            log.to_str().unwrap(),
            root.to_str().unwrap(),
        ],
    );
    let mut c = Client::connect(s.addr);
    assert_eq!(c.get("/small.txt", "").status, 200);
    // A response still being sent when the signals come: read slowly after them.
    c.send(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n");
    s.signal(Signal::HUP);
    assert!(said(&s, "SIGHUP: access log reopened"), "{backend}");
    s.signal(Signal::USR2);
    assert!(said(&s, "SIGUSR2: ignored"), "{backend}");
    s.signal(Signal::USR1);
    assert!(said(&s, "SIGUSR1: access log reopened"), "{backend}");
    let r = c.read(false).unwrap();
    assert_eq!((r.status, r.body.len()), (200, 300_000), "{backend}");
    assert_eq!(c.get("/page.html", "").status, 200, "{backend}");
    assert_eq!(Client::connect(s.addr).get("/small.txt", "").status, 200);
    drop(c);
    s.signal(Signal::QUIT);
    assert_eq!(
        s.wait_exit(Duration::from_secs(15)),
        Ok(Some(0)),
        "{backend}"
    );
    assert!(said(&s, "SIGQUIT: stopping"), "{backend}");
    assert!(
        s.wait_for_line(Duration::from_secs(5), |l| l.starts_with("stats:"))
            .is_some(),
        "{backend}: SIGQUIT drains and prints the stats line"
    );
    assert_eq!(
        lines_in(&log),
        4,
        "{backend}: every answered request logged"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hup_usr2_keep_files_serving_and_quit_drains() {
    for backend in BACKENDS {
        scenario_files_signals(backend);
    }
}

/// ringwork-echo: SIGHUP, SIGUSR1 and SIGUSR2 are said and ignored (an open connection goes on
/// echoing); SIGQUIT drains and exits 0.
#[test]
fn echo_lives_through_hup_usr1_usr2_and_quit_drains() {
    for backend in BACKENDS {
        let mut s = Server::start_capturing(
            "ringwork-echo",
            &["--listen", "127.0.0.1:0", "--backend", backend],
        );
        let mut held = ringwork_e2e::connect(s.addr, None);
        for signal in [Signal::HUP, Signal::USR1, Signal::USR2] {
            s.signal(signal);
        }
        for name in ["SIGHUP", "SIGUSR1", "SIGUSR2"] {
            assert!(said(&s, &format!("{name}: ignored")), "{backend}: {name}");
        }
        {
            use std::io::{Read, Write};
            held.write_all(b"still here").unwrap();
            let mut back = [0u8; 10];
            held.read_exact(&mut back).unwrap();
            assert_eq!(&back, b"still here", "{backend}");
        }
        assert_eq!(exchange(s.addr, b"new", None), b"new", "{backend}");
        drop(held);
        s.signal(Signal::QUIT);
        assert_eq!(
            s.wait_exit(Duration::from_secs(15)),
            Ok(Some(0)),
            "{backend}"
        );
        assert!(said(&s, "SIGQUIT: stopping"), "{backend}");
    }
}

/// SIGTERM still drains as before.
#[test]
fn term_still_drains_files() {
    let dir = fresh_dir("ringwork-operator-term-");
    let root = site(&dir);
    let s = Server::start_capturing(
        "ringwork-files",
        &["--listen", "127.0.0.1:0", root.to_str().unwrap()],
    );
    assert_eq!(Client::connect(s.addr).get("/small.txt", "").status, 200);
    let stats = terminate(s);
    assert!(stats.starts_with("stats:"));
    std::fs::remove_dir_all(&dir).unwrap();
}
