//! Socket setup shared by the servers: SO_REUSEPORT listeners (one per thread and address),
//! per-connection options, and addresses. [`reuseport_listeners`] is the one way both binaries
//! make their listeners, out of [`reuseport_listener`].
//!
//! What it deliberately does not do: accept, read or write. Accepting is [`crate::accept`]'s
//! (through the ring, or epoll); the drivers read and write.

use std::fmt;
use std::net::SocketAddr;

use rustix::fd::{AsFd, OwnedFd};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use crate::error::{Error, Result};

/// Listen backlog: large enough for a burst of 10,000 connects spread over a few threads.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Whether a socket's calls wait: what the backend it is made for needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketMode {
    /// accept(2) and friends wait (io_uring's operations never wait in the thread anyway).
    Blocking,
    /// SOCK_NONBLOCK: a call that would wait fails with EAGAIN (what epoll needs).
    Nonblocking,
}

impl SocketMode {
    /// What a socket for `backend` needs.
    pub fn for_backend(backend: crate::backend::Backend) -> Self {
        match backend {
            crate::backend::Backend::Uring => SocketMode::Blocking,
            crate::backend::Backend::Epoll => SocketMode::Nonblocking,
        }
    }
}

/// A TCP listener on `addr` with SO_REUSEADDR and SO_REUSEPORT, so that every worker thread
/// can hold its own listener on the same port and the kernel spreads connections over them.
/// Another process may bind the same port the same way (what a zero-downtime restart uses);
/// where that must fail, make a [`listener`]. An IPv6 listener is IPV6_V6ONLY, as nginx's
/// are: `[::]:80` beside `0.0.0.0:80` is two listeners, not a conflict, and IPv4 clients come
/// to the IPv4 one.
pub fn reuseport_listener(addr: SocketAddr, mode: SocketMode) -> Result<OwnedFd> {
    bind_listener(addr, mode, Port::Shared)
}

/// A TCP listener on `addr` with SO_REUSEADDR but not SO_REUSEPORT: a second listener on the
/// same address, in this process or another, fails to bind (EADDRINUSE). One thread accepts
/// on it. IPv6 as for [`reuseport_listener`].
pub fn listener(addr: SocketAddr, mode: SocketMode) -> Result<OwnedFd> {
    bind_listener(addr, mode, Port::Exclusive)
}

/// Whether other listeners may bind the same address.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Port {
    /// SO_REUSEPORT: every listener that asks shares it.
    Shared,
    /// The first listener has it alone.
    Exclusive,
}

fn bind_listener(addr: SocketAddr, mode: SocketMode, port: Port) -> Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let mut flags = SocketFlags::CLOEXEC;
    if mode == SocketMode::Nonblocking {
        flags |= SocketFlags::NONBLOCK;
    }
    let fd = rustix::net::socket_with(family, SocketType::STREAM, flags, None)
        .map_err(Error::syscall("socket"))?;
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true)
        .map_err(Error::syscall("setsockopt SO_REUSEADDR"))?;
    if port == Port::Shared {
        rustix::net::sockopt::set_socket_reuseport(&fd, true)
            .map_err(Error::syscall("setsockopt SO_REUSEPORT"))?;
    }
    if addr.is_ipv6() {
        rustix::net::sockopt::set_ipv6_v6only(&fd, true)
            .map_err(Error::syscall("setsockopt IPV6_V6ONLY"))?;
    }
    rustix::net::bind(&fd, &addr).map_err(Error::syscall("bind"))?;
    rustix::net::listen(&fd, LISTEN_BACKLOG).map_err(Error::syscall("listen"))?;
    Ok(fd)
}

/// A server's listeners: for each worker thread, one per address it listens on.
#[derive(Debug)]
pub struct Listeners {
    /// The addresses as bound, in the order asked for: port 0 resolved to the port the
    /// kernel chose (every thread's listener for that address shares it).
    pub bound: Vec<SocketAddr>,
    /// `per_thread[t][i]` is thread `t`'s listener on `bound[i]`.
    pub per_thread: Vec<Vec<OwnedFd>>,
}

/// A listener that could not be made, and its address.
#[derive(Debug)]
pub struct ListenError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// What went wrong.
    pub failure: ListenFailure,
}

/// Why [`reuseport_listeners`] could not make a listener.
#[derive(Debug)]
pub enum ListenFailure {
    /// The same address (with a port other than 0) was asked for twice.
    GivenTwice,
    /// Making the socket, binding or listening failed.
    Socket(Error),
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.failure {
            ListenFailure::GivenTwice => write!(f, "{} is given twice", self.addr),
            ListenFailure::Socket(e) => write!(f, "cannot listen on {}: {e}", self.addr),
        }
    }
}

impl std::error::Error for ListenError {}

/// One [`reuseport_listener`] per address in `addrs` for each of `threads` worker threads,
/// so that every thread accepts on every address (the kernel spreads each address's
/// connections over its threads). An address given twice is refused (with SO_REUSEPORT the
/// second bind would succeed and split the first's connections for nothing); port 0 asks
/// for a free port, which each entry gets its own of.
pub fn reuseport_listeners(
    addrs: &[SocketAddr],
    threads: usize,
    mode: SocketMode,
) -> core::result::Result<Listeners, ListenError> {
    let mut per_thread: Vec<Vec<OwnedFd>> = (0..threads.max(1)).map(|_| Vec::new()).collect();
    let mut bound = Vec::with_capacity(addrs.len());
    for (i, &addr) in addrs.iter().enumerate() {
        if addr.port() != 0 && addrs[..i].contains(&addr) {
            return Err(ListenError {
                addr,
                failure: ListenFailure::GivenTwice,
            });
        }
        let failed = |e| ListenError {
            addr,
            failure: ListenFailure::Socket(e),
        };
        let first = reuseport_listener(addr, mode).map_err(failed)?;
        let resolved = local_addr(&first).map_err(failed)?;
        per_thread[0].push(first);
        for listeners in &mut per_thread[1..] {
            listeners.push(reuseport_listener(resolved, mode).map_err(failed)?);
        }
        bound.push(resolved);
    }
    Ok(Listeners { bound, per_thread })
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
        let a = reuseport_listener("127.0.0.1:0".parse().unwrap(), SocketMode::Blocking).unwrap();
        let addr = local_addr(&a).unwrap();
        assert_ne!(addr.port(), 0);
        let b = reuseport_listener(addr, SocketMode::Nonblocking).unwrap();
        assert_eq!(local_addr(&b).unwrap(), addr);
        let c = std::net::TcpStream::connect(addr).unwrap();
        set_nodelay(&c).unwrap();
    }

    /// A plain listener keeps its port: neither a second plain listener nor a reuseport one
    /// may bind it.
    #[test]
    fn a_plain_listener_has_its_port_alone() {
        let a = listener("127.0.0.1:0".parse().unwrap(), SocketMode::Blocking).unwrap();
        let addr = local_addr(&a).unwrap();
        for second in [
            listener(addr, SocketMode::Blocking),
            reuseport_listener(addr, SocketMode::Blocking),
        ] {
            match second {
                Err(Error::Syscall {
                    what: "bind",
                    errno,
                }) => {
                    assert_eq!(errno, rustix::io::Errno::ADDRINUSE)
                }
                other => panic!("a second bind of {addr}: {other:?}"),
            }
        }
        std::net::TcpStream::connect(addr).expect("the first one listens");
    }

    #[test]
    fn every_thread_gets_a_listener_on_every_address() {
        let addrs: [SocketAddr; 3] = [
            "127.0.0.1:0".parse().unwrap(),
            "[::1]:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        ];
        let l = reuseport_listeners(&addrs, 3, SocketMode::Nonblocking)
            .expect("IPv4 and IPv6 loopback");
        assert_eq!(l.bound.len(), 3);
        assert!(l.bound[0].is_ipv4() && l.bound[1].is_ipv6());
        assert_ne!(
            l.bound[0].port(),
            l.bound[2].port(),
            "each port 0 its own port"
        );
        assert_eq!(l.per_thread.len(), 3);
        for listeners in &l.per_thread {
            let got: Vec<_> = listeners.iter().map(|fd| local_addr(fd).unwrap()).collect();
            assert_eq!(got, l.bound);
        }
        for addr in &l.bound {
            std::net::TcpStream::connect(addr).unwrap();
        }
        // The same address twice is refused, naming it.
        let twice = [l.bound[0], l.bound[0]];
        drop(l);
        let e = reuseport_listeners(&twice, 1, SocketMode::Blocking).unwrap_err();
        assert_eq!(e.addr, twice[0]);
        assert!(e.to_string().contains("given twice"), "{e}");
    }

    #[test]
    fn ipv6_listeners_are_v6only() {
        let v6 = reuseport_listener("[::]:0".parse().unwrap(), SocketMode::Blocking).unwrap();
        let port = local_addr(&v6).unwrap().port();
        assert!(rustix::net::sockopt::ipv6_v6only(&v6).unwrap());
        // The IPv4 wildcard on the same port is a second listener, not a conflict.
        let v4 = reuseport_listener(SocketAddr::from(([0, 0, 0, 0], port)), SocketMode::Blocking);
        assert!(v4.is_ok(), "{v4:?}");
    }
}
