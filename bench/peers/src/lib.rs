//! What the peer echo servers share: the `--listen ADDR` flag and the `listening on ADDR` line
//! that `ringwork-bench compare` waits for (ringwork-echo prints the same).
//!
//! The peers are the servers a reader would otherwise write: each is the smallest echo loop
//! its runtime's documentation suggests, with one 4 KiB buffer per connection and
//! TCP_NODELAY (as ringwork-echo sets), and nothing tuned beyond that.
#![forbid(unsafe_code)]

use std::io::{Error, ErrorKind, Write as _};
use std::net::SocketAddr;

/// Bytes of each connection's buffer.
pub const BUF_SIZE: usize = 4096;

/// The address of `--listen ADDR` (default 127.0.0.1:0, an ephemeral port).
pub fn listen_addr() -> std::io::Result<SocketAddr> {
    let mut args = std::env::args().skip(1);
    let mut addr = SocketAddr::from(([127, 0, 0, 1], 0));
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                let value = args
                    .next()
                    .ok_or_else(|| bad("--listen needs an address"))?;
                addr = value
                    .parse()
                    .map_err(|e| bad(&format!("--listen {value:?}: {e}")))?;
            }
            "--help" | "-h" => {
                println!(
                    "usage: {} [--listen IP:PORT]   (default 127.0.0.1:0)",
                    name()
                );
                std::process::exit(0);
            }
            other => return Err(bad(&format!("unknown argument {other:?}"))),
        }
    }
    Ok(addr)
}

/// Prints `listening on ADDR` and flushes it: the caller reads the line from a pipe.
pub fn announce(addr: SocketAddr) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}: listening on {addr}", name());
    let _ = out.flush();
}

fn name() -> String {
    std::env::args()
        .next()
        .and_then(|a| a.rsplit('/').next().map(str::to_string))
        .unwrap_or_else(|| "peer".into())
}

fn bad(msg: &str) -> Error {
    Error::new(ErrorKind::InvalidInput, msg.to_string())
}
