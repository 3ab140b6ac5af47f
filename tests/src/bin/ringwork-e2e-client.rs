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

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};

fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().expect("ADDR").parse().expect("ADDR");
    let count: usize = args.next().expect("COUNT").parse().expect("COUNT");
    ringwork_e2e::raise_nofile_limit();
    if args.next().as_deref() == Some("--pingpong") {
        let secs: u64 = args.next().expect("SECS").parse().expect("SECS");
        pingpong(addr, count, std::time::Duration::from_secs(secs));
        return;
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
