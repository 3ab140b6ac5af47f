//! The uppercase line protocol (ringwork's `examples/src/bin/uppercase.rs`) on tokio's
//! current-thread runtime: a task per connection with a 4 KiB read buffer; every whole line
//! received is answered upper-cased with one write_all per read, a partial line kept for the
//! next read (and answered at EOF).
#![forbid(unsafe_code)]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
                    tokio::spawn(uppercase(stream));
                }
                // Out of descriptors or memory: wait for connections to close, do not spin.
                Err(e) => {
                    eprintln!("tokio-uppercase: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    })
}

async fn uppercase(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; ringwork_peers::BUF_SIZE];
    let mut held = 0;
    loop {
        if held == buf.len() {
            buf.resize(buf.len() * 2, 0); // a line longer than the buffer
        }
        let n = match stream.read(&mut buf[held..]).await {
            Ok(0) => {
                // A last line without its newline is answered too.
                buf[..held].make_ascii_uppercase();
                let _ = stream.write_all(&buf[..held]).await;
                return;
            }
            Err(_) => return,
            Ok(n) => n,
        };
        held += n;
        let Some(end) = buf[..held].iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        buf[..=end].make_ascii_uppercase();
        if stream.write_all(&buf[..=end]).await.is_err() {
            return;
        }
        buf.copy_within(end + 1..held, 0);
        held -= end + 1;
    }
}
