//! A line protocol on the toolkit: every line received is sent back upper-cased.
//!
//! `cargo run -p ringwork-examples --bin uppercase -- 127.0.0.1:7880 [auto|uring|epoll]`,
//! then `nc 127.0.0.1 7880`; Ctrl-C drains and prints the counters.
//!
//! The protocol is all this program says: `on_data` is given the bytes received and not
//! yet consumed, writes its answer, and returns how much it consumed (a partial line waits
//! for the rest). `ProtocolConn` does the connection (receives into the ring's buffers,
//! sends with their short-send remainder, stops reading a client that does not read its
//! answers, closes after the peer's EOF); `Server` does the rest (threads, io_uring or
//! epoll, the accept back-off, SIGINT/SIGTERM).
#![forbid(unsafe_code)]

use ringwork_core::protocol::{Output, Protocol};
use ringwork_sys::worker::Server;

struct Uppercase;

impl Protocol for Uppercase {
    fn on_data(&mut self, input: &[u8], out: &mut Output<'_>) -> usize {
        // Every whole line at once; the rest is offered again with the bytes after it.
        let Some(end) = input.iter().rposition(|&b| b == b'\n') else {
            return 0;
        };
        let lines = &input[..=end];
        out.buf().extend(lines.iter().map(u8::to_ascii_uppercase));
        lines.len()
    }

    fn on_eof(&mut self, rest: &[u8], out: &mut Output<'_>) {
        // A last line without its newline is answered too.
        out.buf().extend(rest.iter().map(u8::to_ascii_uppercase));
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7880".into());
    let backend = args.next().unwrap_or_else(|| "auto".into());
    let stats = Server::new("uppercase")
        .listen(addr.parse()?)
        .backend(backend.parse()?)
        .run_protocol(
            || Uppercase,
            |bound| println!("uppercase listening on {}", bound[0]),
        )?;
    println!("stats: {stats}");
    Ok(())
}
