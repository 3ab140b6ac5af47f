//! Socket activation end to end: ringwork-files and ringwork-echo started the way systemd
//! starts a socket unit's service (`LISTEN_PID`, `LISTEN_FDS`, the socket as descriptor 3)
//! serve on that socket instead of binding `--listen`, on every thread, byte for byte, on both
//! backends; activation meant for another process is ignored.

use std::time::Duration;

use ringwork_e2e::http::Client;
use ringwork_e2e::{binary, exchange, fresh_dir, random_bytes, terminate, Server};

/// Server `name` on `backend`, two threads, started through the launcher with a socket
/// passed in; `--listen 127.0.0.1:9` is given too, and must not be bound.
fn activated(name: &str, backend: &str, extra: &[&str]) -> Server {
    let bin = binary(name);
    let mut args = vec![
        bin.to_str().unwrap(),
        "--threads",
        "2",
        "--backend",
        backend,
        "--listen",
        "127.0.0.1:9",
    ];
    args.extend_from_slice(extra);
    Server::start("ringwork-e2e-activate", &args)
}

#[test]
fn ringwork_files_serves_on_the_socket_it_is_passed() {
    for backend in ["uring", "epoll"] {
        let dir = fresh_dir(&format!("ringwork-activation-{backend}-"));
        let body = random_bytes(21, 50_000);
        std::fs::write(dir.join("f.bin"), &body).unwrap();
        let s = activated("ringwork-files", backend, &[dir.to_str().unwrap()]);
        assert_ne!(
            s.addr.port(),
            9,
            "{backend}: serving on --listen, not the passed socket"
        );
        // Many connections at once, so that both threads' acceptors take some.
        let clients: Vec<_> = (0..16)
            .map(|_| {
                let addr = s.addr;
                let body = body.clone();
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    for _ in 0..5 {
                        let r = c.get("/f.bin", "");
                        assert_eq!(r.status, 200);
                        assert!(r.body == body, "body differs");
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().expect("a client failed");
        }
        // The passed socket is the only listener: nothing bound port 9.
        assert!(std::net::TcpStream::connect_timeout(
            &"127.0.0.1:9".parse().unwrap(),
            Duration::from_millis(200)
        )
        .is_err());
        let line = terminate(s);
        assert!(line.starts_with("stats:"), "{backend}: {line}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn activation_meant_for_another_process_is_ignored() {
    let dir = fresh_dir("ringwork-activation-other-");
    std::fs::write(dir.join("f.txt"), b"hello").unwrap();
    let mut command = std::process::Command::new(binary("ringwork-files"));
    command
        .args(["--listen", "127.0.0.1:0", "--threads", "1"])
        .arg(&dir)
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1");
    let s = ringwork_harness::Server::start(&mut command).expect("ringwork-files starts");
    let mut c = Client::connect(s.addr);
    let r = c.get("/f.txt", "");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
    drop(c);
    drop(s);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn ringwork_echo_serves_on_the_socket_it_is_passed() {
    for backend in ["uring", "epoll"] {
        let s = activated("ringwork-echo", backend, &[]);
        assert_ne!(
            s.addr.port(),
            9,
            "{backend}: serving on --listen, not the passed socket"
        );
        let clients: Vec<_> = (0..16u64)
            .map(|i| {
                let addr = s.addr;
                std::thread::spawn(move || {
                    let payload = random_bytes(i, 100_000);
                    assert!(exchange(addr, &payload, None) == payload, "echo differs");
                })
            })
            .collect();
        for c in clients {
            c.join().expect("a client failed");
        }
        let line = terminate(s);
        assert!(line.starts_with("stats:"), "{backend}: {line}");
    }
}
