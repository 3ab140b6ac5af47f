//! A zero-downtime restart of ringwork-files under continuous load: a second server binds
//! the same port (SO_REUSEPORT, as every ringwork-files listener is made), the first is sent
//! SIGTERM and drains, and not one request fails. New connections keep arriving throughout
//! (one request each, `Connection: close`), so some are in the first server's accept queues
//! when it closes its listeners: with `net.ipv4.tcp_migrate_req` (Linux 5.14) the kernel
//! moves them to the second server's listeners instead of resetting them, which the test
//! turns on (and restores on every way out).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringwork_e2e::{fresh_dir, random_bytes, terminate, Server};

const KNOB: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Sets `net.ipv4.tcp_migrate_req` for as long as it lives; the old value comes back on drop
/// (also when the test panics).
struct MigrateReq {
    before: String,
}

impl MigrateReq {
    fn set(value: &str) -> Self {
        let before = std::fs::read_to_string(KNOB)
            .unwrap_or_else(|e| panic!("{KNOB}: {e} (net.ipv4.tcp_migrate_req needs Linux 5.14)"));
        std::fs::write(KNOB, value)
            .unwrap_or_else(|e| panic!("cannot write {KNOB} (the test needs root): {e}"));
        Self { before }
    }
}

impl Drop for MigrateReq {
    fn drop(&mut self) {
        std::fs::write(KNOB, self.before.trim()).expect("restore net.ipv4.tcp_migrate_req");
    }
}

/// One request on a new connection; true when the whole answer came back.
fn one_request(addr: SocketAddr, want: usize) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /f.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = Vec::new();
    if s.read_to_end(&mut out).is_err() {
        return false;
    }
    out.starts_with(b"HTTP/1.1 200") && out.len() > want
}

/// A free port on 127.0.0.1.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn a_restart_under_load_fails_no_request() {
    let _knob = MigrateReq::set("1");
    for backend in ["uring", "epoll"] {
        let dir = fresh_dir(&format!("ringwork-restart-{backend}-"));
        let body = random_bytes(31, 20_000);
        std::fs::write(dir.join("f.bin"), &body).unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let args = [
            "--listen",
            &listen,
            "--threads",
            "2",
            "--backend",
            backend,
            dir.to_str().unwrap(),
        ];
        let old = Server::start("ringwork-files", &args);
        let addr = old.addr;
        let (ok, failed, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let load: Vec<_> = (0..4)
            .map(|_| {
                let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
                let want = body.len();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if one_request(addr, want) {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        // The new server, on the same port, then the old one drains away.
        let new = Server::start("ringwork-files", &args);
        assert_eq!(new.addr, addr);
        let before_stop = ok.load(Ordering::Relaxed);
        let started = Instant::now();
        let old_stats = terminate(old);
        let drained_in = started.elapsed();
        let after_old = ok.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        for t in load {
            t.join().unwrap();
        }
        let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        println!(
            "{backend}: {ok} requests, {failed} failed; old drained in {drained_in:?}; \
             {} answered after it exited",
            ok - after_old
        );
        assert_eq!(failed, 0, "{backend}: requests failed during the restart");
        assert!(before_stop > 0, "{backend}: no load before the restart");
        assert!(ok > after_old, "{backend}: the new server answered nothing");
        assert!(old_stats.starts_with("stats:"), "{old_stats}");
        let _ = terminate(new);
        let _ = std::fs::remove_dir_all(dir);
    }
}
