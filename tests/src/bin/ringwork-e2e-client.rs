//! Helper client for the end-to-end tests: holds many connections in a process of its own, so
//! that neither it nor the server under test runs out of descriptors (RLIMIT_NOFILE's hard
//! limit is shared by no one, but each process has only one).
//!
//! `ringwork-e2e-client ADDR COUNT`: opens COUNT connections, echoes a small message on each,
//! prints `ready COUNT`, then holds them until its standard input closes, and exits (closing
//! them all).

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};

fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().expect("ADDR").parse().expect("ADDR");
    let count: usize = args.next().expect("COUNT").parse().expect("COUNT");
    ringwork_e2e::raise_nofile_limit();
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
