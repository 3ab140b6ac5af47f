//! The keep-alive HTTP/1.1 responder (ringwork's `examples/src/bin/http-hello.rs`) on tokio's
//! current-thread runtime: a task per connection with a 4 KiB read buffer, heads parsed with
//! httparse, the same fixed response for every request (pipelined ones answered together,
//! with one write_all per read), `Connection: close` and malformed heads answered then
//! closed.
#![forbid(unsafe_code)]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\n\
Hello, world!\n";
const OK_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\
Connection: close\r\n\r\nHello, world!\n";
const BAD: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

fn main() -> std::io::Result<()> {
    let addr = ringwork_peers::listen_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        ringwork_peers::announce(listener.local_addr()?);
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(respond(stream));
                }
                Err(e) => {
                    eprintln!("tokio-http-hello: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    })
}

async fn respond(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; ringwork_peers::BUF_SIZE];
    let (mut held, mut out) = (0, Vec::new());
    loop {
        let n = match stream.read(&mut buf[held..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        held += n;
        let (mut used, mut close) = (0, false);
        while !close {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf[used..held]) {
                Ok(httparse::Status::Complete(len)) => {
                    let conn = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("connection"));
                    let keep_alive = match (req.version, conn) {
                        (_, Some(h)) if h.value.eq_ignore_ascii_case(b"close") => false,
                        (Some(0), h) => {
                            h.is_some_and(|h| h.value.eq_ignore_ascii_case(b"keep-alive"))
                        }
                        _ => true,
                    };
                    out.extend_from_slice(if keep_alive { OK } else { OK_CLOSE });
                    close = !keep_alive;
                    used += len;
                }
                Ok(httparse::Status::Partial) if held < buf.len() => break,
                Ok(httparse::Status::Partial) | Err(_) => {
                    out.extend_from_slice(BAD);
                    close = true;
                }
            }
        }
        if stream.write_all(&out).await.is_err() || close {
            return;
        }
        out.clear();
        buf.copy_within(used..held, 0);
        held -= used;
    }
}
