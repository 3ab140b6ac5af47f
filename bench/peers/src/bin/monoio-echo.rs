//! An echo server on monoio's io_uring driver: one task per connection, each owning a 4 KiB
//! buffer that it lends to the kernel for every read and write (monoio's owned-buffer API).
#![forbid(unsafe_code)]

use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let addr = ringwork_peers::listen_addr()?;
    // io_uring only: a kernel without it fails here, and compare reports the peer as not
    // started rather than measuring monoio's epoll fallback under the monoio name.
    let mut runtime = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr)?;
        ringwork_peers::announce(listener.local_addr()?);
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    monoio::spawn(echo(stream));
                }
                // Out of descriptors or memory: wait for connections to close, do not spin.
                Err(e) => {
                    eprintln!("monoio-echo: accept: {e}");
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    })
}

async fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(ringwork_peers::BUF_SIZE);
    loop {
        let (res, b) = stream.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let (res, b) = stream.write_all(buf).await;
        buf = b;
        if res.is_err() {
            return;
        }
        buf.clear();
    }
}
