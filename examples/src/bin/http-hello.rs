//! A keep-alive HTTP/1.1 responder on the toolkit: every request is answered with the same
//! small page, sent from `&'static` bytes (no copy, no allocation per request).
//!
//! `cargo run -p ringwork-examples --bin http-hello -- 127.0.0.1:8080 [auto|uring|epoll]`,
//! then `curl -v http://127.0.0.1:8080/`; Ctrl-C drains and prints the counters.
//!
//! Requests are parsed with ringwork-core's HTTP parser (httparse underneath). Pipelined
//! requests are answered in order; `Connection: close`, HTTP/1.0 without keep-alive, a
//! request with a body and a malformed head are answered, then the connection closed.
#![forbid(unsafe_code)]

use ringwork_core::http::{self, parse_request, Parsed};
use ringwork_core::protocol::{Output, Protocol};
use ringwork_sys::worker::Server;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\n\
Hello, world!\n";
const OK_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\
Connection: close\r\n\r\nHello, world!\n";
const BAD: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

struct Hello;

impl Protocol for Hello {
    fn on_data(&mut self, input: &[u8], out: &mut Output<'_>) -> usize {
        match parse_request(input, &http::Limits::default()) {
            // The head is not all here yet: offered again with more.
            Ok(Parsed::Partial) => 0,
            Ok(Parsed::Complete { request, head_len }) => {
                if request.keep_alive && !request.has_body {
                    out.send_static(OK);
                } else {
                    out.send_static(OK_CLOSE);
                    out.close();
                }
                head_len
            }
            Err(_) => {
                out.send_static(BAD);
                out.close();
                input.len()
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let backend = args.next().unwrap_or_else(|| "auto".into());
    let stats = Server::new("http-hello")
        .listen(addr.parse()?)
        .backend(backend.parse()?)
        .run_protocol(
            || Hello,
            |bound| println!("http-hello listening on {}", bound[0]),
        )?;
    println!("stats: {stats}");
    Ok(())
}
