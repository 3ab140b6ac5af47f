//! An echo server in a few lines: core's `EchoConn` as the protocol, ringwork-sys' worker
//! loop for everything else, on io_uring or, where io_uring is refused, epoll.
//!
//! `cargo run -p ringwork-examples --bin echo -- 127.0.0.1:7879`, then `nc 127.0.0.1 7879`;
//! Ctrl-C drains and prints the counters.
//!
//! A protocol is a `StreamMachine` (events in, operations out); the loop accepts (backing
//! off when descriptors run out), receives into provided buffers, performs the machine's
//! sends and cancels, frees connections, and drains on SIGINT/SIGTERM. `echo-ring` shows the
//! layer below: the ring, safe submission and a buffer ring, driven by hand.
#![forbid(unsafe_code)]

use ringwork_core::conn::{Config, EchoConn};
use ringwork_sys::backend::{self, BackendRequest};
use ringwork_sys::worker::{uring::REQUIRED, Serve, StreamConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1);
    let listen = [addr.as_deref().unwrap_or("127.0.0.1:7879").parse()?];
    let chosen = backend::choose(BackendRequest::Auto, &REQUIRED)?;
    if let Some(note) = chosen.note() {
        eprintln!("echo: {note}");
    }
    let server = Serve {
        listen: &listen,
        threads: 1,
        backend: chosen.backend,
        cfg: StreamConfig {
            name: "echo",
            buffers: 256,
            max_conns: 1024,
            ..StreamConfig::default()
        },
    };
    let stats = server.run(
        || EchoConn::new(Config::default()),
        |bound| println!("echo listening on {}", bound[0]),
    )?;
    println!("stats: {stats}");
    Ok(())
}
