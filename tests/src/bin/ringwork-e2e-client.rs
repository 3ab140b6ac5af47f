//! Helper client for the end-to-end tests: holds many connections in a process of its own, so
//! that neither it nor the server under test runs out of descriptors (RLIMIT_NOFILE's hard
//! limit is shared by no one, but each process has only one).
//!
//! `ringwork-e2e-client ADDR COUNT`: opens COUNT connections, echoes a small message on each,
//! prints `ready COUNT`, then holds them until its standard input closes, and exits (closing
//! them all).
//!
//! `ringwork-e2e-client ADDR COUNT --pingpong SECS`: instead, runs COUNT closed-loop
//! connections, each echoing one 64-byte message at a time for SECS seconds, and prints
//! `msgs/s N` (a quick figure, not the benchmark).
//!
//! `ringwork-e2e-client ADDR COUNT --http ROOT FILES ROUNDS`: opens COUNT keep-alive HTTP
//! connections and, ROUNDS times, sends a `GET /f<i % FILES>` on every one of them before
//! reading any answer; checks each answer's status and body byte for byte against
//! `ROOT/f<n>`, then prints `ok COUNT` and exits.
//!
//! `ringwork-e2e-client ADDR COUNT --slowloris`: opens COUNT connections and trickles a
//! request head into each, one byte per connection every 200 ms, never finishing it; prints
//! `ready COUNT` once all are open, and exits when its standard input closes.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};

fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().expect("ADDR").parse().expect("ADDR");
    let count: usize = args.next().expect("COUNT").parse().expect("COUNT");
    ringwork_e2e::raise_nofile_limit();
    match args.next().as_deref() {
        Some("--pingpong") => {
            let secs: u64 = args.next().expect("SECS").parse().expect("SECS");
            pingpong(addr, count, std::time::Duration::from_secs(secs));
            return;
        }
        Some("--http") => {
            let root = std::path::PathBuf::from(args.next().expect("ROOT"));
            let files: usize = args.next().expect("FILES").parse().expect("FILES");
            let rounds: usize = args.next().expect("ROUNDS").parse().expect("ROUNDS");
            http(addr, count, &root, files, rounds);
            return;
        }
        Some("--slowloris") => {
            slowloris(addr, count);
            return;
        }
        _ => {}
    }
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect #{i}: {e}"));
        s.set_nodelay(true).expect("nodelay");
        conns.push(s);
    }
    // Write every message first, then read every echo: the server sees all connections busy.
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(format!("hello {i:>8}\n").as_bytes())
            .unwrap_or_else(|e| panic!("write #{i}: {e}"));
    }
    for (i, s) in conns.iter_mut().enumerate() {
        let mut back = [0u8; 15];
        s.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("read #{i}: {e}"));
        assert_eq!(&back[..], format!("hello {i:>8}\n").as_bytes(), "echo #{i}");
    }
    println!("ready {count}");
    std::io::stdout().flush().expect("flush");
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    drop(conns);
}

fn pingpong(addr: SocketAddr, count: usize, dur: std::time::Duration) {
    use rustix::event::{poll, PollFd, PollFlags};
    const MSG: usize = 64;
    let conns: Vec<TcpStream> = (0..count)
        .map(|_| {
            let s = TcpStream::connect(addr).expect("connect");
            s.set_nodelay(true).expect("nodelay");
            s
        })
        .collect();
    let mut got = vec![0usize; count];
    for mut s in &conns {
        s.write_all(&[7u8; MSG]).expect("write");
        s.set_nonblocking(true).expect("nonblocking");
    }
    let start = std::time::Instant::now();
    let mut msgs = 0u64;
    let mut buf = [0u8; 4096];
    while start.elapsed() < dur {
        let mut fds: Vec<PollFd<'_>> = conns
            .iter()
            .map(|s| PollFd::new(s, PollFlags::IN))
            .collect();
        poll(&mut fds, None).expect("poll");
        let ready: Vec<usize> = fds
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.revents().is_empty())
            .map(|(i, _)| i)
            .collect();
        drop(fds);
        for i in ready {
            let mut s = &conns[i];
            match s.read(&mut buf) {
                Ok(0) => panic!("server closed"),
                Ok(n) => {
                    got[i] += n;
                    while got[i] >= MSG {
                        got[i] -= MSG;
                        msgs += 1;
                        s.write_all(&[7u8; MSG]).expect("write");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }
    println!("msgs/s {:.0}", msgs as f64 / start.elapsed().as_secs_f64());
}

fn http(addr: SocketAddr, count: usize, root: &std::path::Path, files: usize, rounds: usize) {
    let want: Vec<Vec<u8>> = (0..files)
        .map(|n| std::fs::read(root.join(format!("f{n}"))).expect("read a fixture"))
        .collect();
    let mut conns: Vec<std::io::BufReader<TcpStream>> = (0..count)
        .map(|i| {
            let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect #{i}: {e}"));
            s.set_nodelay(true).expect("nodelay");
            std::io::BufReader::new(s)
        })
        .collect();
    for round in 0..rounds {
        // Every request first, then every answer: the server holds them all at once.
        for (i, c) in conns.iter_mut().enumerate() {
            let req = format!("GET /f{} HTTP/1.1\r\nHost: t\r\n\r\n", (i + round) % files);
            c.get_mut()
                .write_all(req.as_bytes())
                .unwrap_or_else(|e| panic!("write #{i}: {e}"));
        }
        for (i, c) in conns.iter_mut().enumerate() {
            let n = (i + round) % files;
            let mut status = String::new();
            c.read_line(&mut status)
                .unwrap_or_else(|e| panic!("read #{i}: {e}"));
            assert!(status.starts_with("HTTP/1.1 200"), "#{i} f{n}: {status:?}");
            let mut len = None;
            loop {
                let mut line = String::new();
                c.read_line(&mut line).expect("header");
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.strip_prefix("Content-Length: ") {
                    len = Some(v.trim().parse::<usize>().expect("length"));
                }
            }
            let mut body = vec![0u8; len.expect("Content-Length")];
            c.read_exact(&mut body).expect("body");
            assert!(body == want[n], "#{i}: f{n} differs");
        }
    }
    println!("ok {count}");
}

fn slowloris(addr: SocketAddr, count: usize) {
    let head = b"GET /slow HTTP/1.1\r\nHost: t\r\nX-Slow: ";
    let mut conns: Vec<TcpStream> = (0..count)
        .map(|i| TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect #{i}: {e}")))
        .collect();
    println!("ready {count}");
    std::io::stdout().flush().expect("flush");
    let (done_tx, done) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        let _ = done_tx.send(());
    });
    let mut sent = 0usize;
    loop {
        for c in &mut conns {
            // Dropped by the server (its header timeout): that connection is done.
            let byte = head.get(sent).copied().unwrap_or(b'x');
            let _ = c.write_all(&[byte]);
        }
        sent += 1;
        if done
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_ok()
        {
            return;
        }
    }
}
