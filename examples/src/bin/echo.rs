//! An echo server in a few lines: core's `Echo` protocol, ringwork-sys' `Server` for
//! everything else, on io_uring or, where io_uring is refused, epoll.
//!
//! `cargo run -p ringwork-examples --bin echo -- 127.0.0.1:7879 [auto|uring|epoll]`, then
//! `nc 127.0.0.1 7879`; Ctrl-C drains and prints the counters.
//!
//! `Echo` is a `Protocol` like any other (see `uppercase`): `out.forward(0..input.len());
//! input.len()`. `forward` sends the bytes from the provided buffer the receive filled,
//! without copying them, and the buffer goes back once they are sent: the fastest echo
//! there is, and what ringwork-echo runs.
//! `echo-ring` shows the layer below: the ring, safe submission and a buffer ring, driven by
//! hand.
#![forbid(unsafe_code)]

use ringwork_core::protocol::Echo;
use ringwork_sys::worker::{Server, StreamConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7879".into());
    let backend = args.next().unwrap_or_else(|| "auto".into());
    let stats = Server::new("echo")
        .listen(addr.parse()?)
        .backend(backend.parse()?)
        .threads(1)
        .config(StreamConfig {
            buffers: 256,
            max_conns: 2048,
            ..StreamConfig::default()
        })
        .run_protocol(|| Echo, |bound| println!("echo listening on {}", bound[0]))?;
    println!("stats: {stats}");
    Ok(())
}
