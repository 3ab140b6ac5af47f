//! Socket activation: listening sockets handed to the process by systemd (or any supervisor
//! that speaks its protocol, `sd_listen_fds(3)`): `LISTEN_PID` names this process,
//! `LISTEN_FDS` says how many descriptors follow from 3 on. A server started this way serves
//! on those sockets instead of binding its own, so the supervisor holds the port across
//! restarts and a connection that arrives while the server starts waits in the backlog
//! instead of being refused.
//!
//! Every worker thread accepts on every passed socket (a duplicate descriptor each): the
//! sockets are not SO_REUSEPORT groups, so the threads share one accept queue per socket.

use std::os::fd::{FromRawFd, OwnedFd};

use rustix::fd::AsFd;
use rustix::io::FdFlags;
use rustix::net::sockopt;

use crate::error::{Error, Result};
use crate::net::{local_addr, Listeners, SocketMode};

/// The first passed descriptor (`SD_LISTEN_FDS_START`).
const FIRST_FD: i32 = 3;

/// Most descriptors taken from `LISTEN_FDS` (a worker's acceptors are numbered with a u16,
/// and a server caps its listeners well below that).
const MAX_FDS: usize = 64;

/// The listeners passed in, when the environment says this process was socket-activated:
/// `None` when it was not (no `LISTEN_PID`, or another process's). Each socket must be a
/// listening TCP socket; it is made close-on-exec and nonblocking where `mode` says, and
/// duplicated for each of `threads` workers. The variables are removed from the environment
/// either way, so that a child process does not take them for its own.
pub fn listeners(threads: usize, mode: SocketMode) -> Result<Option<Listeners>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    let me = rustix::process::getpid().as_raw_nonzero().get();
    if pid.trim().parse::<i32>().ok() != Some(me) {
        return Ok(None);
    }
    let n: usize = fds
        .trim()
        .parse()
        .map_err(|_| Error::InvalidConfig("LISTEN_FDS is not a number"))?;
    if n == 0 || n > MAX_FDS {
        return Err(Error::InvalidConfig(
            "LISTEN_FDS passes no socket, or more than 64",
        ));
    }
    let mut bound = Vec::with_capacity(n);
    let mut first = Vec::with_capacity(n);
    for raw in FIRST_FD..FIRST_FD + n as i32 {
        // The protocol hands descriptors 3 .. 3 + LISTEN_FDS to this process (LISTEN_PID
        // said so); fcntl(F_GETFD) checks that each is open before it is owned here.
        let borrowed = check_open(raw)?;
        // SAFETY: `raw` is open (checked above) and, by the activation protocol, this
        // process's to own: nothing else in the process opened or holds it (they are
        // inherited before main, and only this function, called once at start-up, takes
        // them).
        let fd = unsafe { OwnedFd::from_raw_fd(borrowed) };
        let listening = sockopt::socket_acceptconn(&fd).map_err(Error::syscall("SO_ACCEPTCONN"))?;
        if !listening {
            return Err(Error::InvalidConfig(
                "a socket passed in LISTEN_FDS is not listening",
            ));
        }
        let mut flags = FdFlags::CLOEXEC;
        flags |= rustix::io::fcntl_getfd(&fd).map_err(Error::syscall("fcntl F_GETFD"))?;
        rustix::io::fcntl_setfd(&fd, flags).map_err(Error::syscall("fcntl F_SETFD"))?;
        let mut fl = rustix::fs::fcntl_getfl(&fd).map_err(Error::syscall("fcntl F_GETFL"))?;
        fl.set(
            rustix::fs::OFlags::NONBLOCK,
            mode == SocketMode::Nonblocking,
        );
        rustix::fs::fcntl_setfl(&fd, fl).map_err(Error::syscall("fcntl F_SETFL"))?;
        bound.push(local_addr(&fd)?);
        first.push(fd);
    }
    let mut per_thread = Vec::with_capacity(threads.max(1));
    for _ in 1..threads.max(1) {
        let dups = first
            .iter()
            .map(|fd| rustix::io::fcntl_dupfd_cloexec(fd.as_fd(), 0).map_err(Error::syscall("dup")))
            .collect::<Result<Vec<_>>>()?;
        per_thread.push(dups);
    }
    per_thread.insert(0, first);
    Ok(Some(Listeners { bound, per_thread }))
}

/// `raw` if it is an open descriptor, else why not.
fn check_open(raw: i32) -> Result<i32> {
    // SAFETY: borrowed only for the fcntl(F_GETFD) below, which fails with EBADF rather than
    // touch anything when `raw` is not open.
    let fd = unsafe { rustix::fd::BorrowedFd::borrow_raw(raw) };
    rustix::io::fcntl_getfd(fd)
        .map(|_| raw)
        .map_err(Error::syscall("fcntl F_GETFD on a LISTEN_FDS descriptor"))
}
