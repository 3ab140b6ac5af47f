//! Socket setup shared by the servers: SO_REUSEPORT listeners (one per thread), per-connection
//! options, and addresses. [`reuseport_listener`] is the one way both binaries make a listener.
//!
//! What it deliberately does not do: accept, read or write. Accepting is [`crate::accept`]'s
//! (through the ring, or epoll); the drivers read and write.

use std::net::SocketAddr;

use rustix::fd::{AsFd, OwnedFd};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use crate::error::{Error, Result};

/// Listen backlog: large enough for a burst of 10,000 connects spread over a few threads.
pub const LISTEN_BACKLOG: i32 = 4096;

/// A TCP listener on `addr` with SO_REUSEADDR and SO_REUSEPORT, so that every worker thread
/// can hold its own listener on the same port and the kernel spreads connections over them.
/// `nonblocking` adds SOCK_NONBLOCK (the epoll driver needs it; the ring does not).
pub fn reuseport_listener(addr: SocketAddr, nonblocking: bool) -> Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let mut flags = SocketFlags::CLOEXEC;
    if nonblocking {
        flags |= SocketFlags::NONBLOCK;
    }
    let fd = rustix::net::socket_with(family, SocketType::STREAM, flags, None)
        .map_err(Error::syscall("socket"))?;
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true)
        .map_err(Error::syscall("setsockopt SO_REUSEADDR"))?;
    rustix::net::sockopt::set_socket_reuseport(&fd, true)
        .map_err(Error::syscall("setsockopt SO_REUSEPORT"))?;
    rustix::net::bind(&fd, &addr).map_err(Error::syscall("bind"))?;
    rustix::net::listen(&fd, LISTEN_BACKLOG).map_err(Error::syscall("listen"))?;
    Ok(fd)
}

/// The address a socket is bound to (the real port after binding port 0).
pub fn local_addr(fd: impl AsFd) -> Result<SocketAddr> {
    let any = rustix::net::getsockname(fd).map_err(Error::syscall("getsockname"))?;
    SocketAddr::try_from(any).map_err(|_| Error::InvalidConfig("socket is not an IP socket"))
}

/// TCP_NODELAY: an echo must not wait for Nagle to coalesce small replies.
pub fn set_nodelay(fd: impl AsFd) -> Result<()> {
    rustix::net::sockopt::set_tcp_nodelay(fd, true)
        .map_err(Error::syscall("setsockopt TCP_NODELAY"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_listeners_share_a_port() {
        let a = reuseport_listener("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = local_addr(&a).unwrap();
        assert_ne!(addr.port(), 0);
        let b = reuseport_listener(addr, true).unwrap();
        assert_eq!(local_addr(&b).unwrap(), addr);
        let c = std::net::TcpStream::connect(addr).unwrap();
        set_nodelay(&c).unwrap();
    }
}
