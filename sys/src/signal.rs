//! Process signals: [`ServerSignals`] blocks the signals an operator sends a server (SIGINT,
//! SIGTERM, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2) and receives them through a signalfd, an
//! ordinary readable descriptor. A server's main thread waits on it: the stop signals are
//! relayed to the workers with [`crate::driver::stop_notices`], the others are handed to the
//! server ([`Signal`]) to act on (reopen a log, reload rules) or to ignore. Nothing runs in a
//! signal handler, and none of these signals ends the process by its default action.
//!
//! rustix has no signalfd, so this module uses libc.
//!
//! # References
//! signalfd(2), sigaction(2), pthread_sigmask(3), signal(7).

use std::mem::MaybeUninit;

use rustix::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// A signal [`ServerSignals::wait`] received, by what an operator means by it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Signal {
    /// SIGINT, SIGTERM or SIGQUIT (the number): stop accepting, drain, exit.
    Stop(i32),
    /// SIGHUP: reload what can be reloaded without dropping a connection.
    Hangup,
    /// SIGUSR1: reopen log files (logrotate's `postrotate`).
    User1,
    /// SIGUSR2: no meaning of its own; received so that it does not end the process.
    User2,
}

impl Signal {
    /// The signal's name, as `kill -l` spells it with its `SIG` prefix.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Stop(libc::SIGINT) => "SIGINT",
            Signal::Stop(libc::SIGQUIT) => "SIGQUIT",
            Signal::Stop(_) => "SIGTERM",
            Signal::Hangup => "SIGHUP",
            Signal::User1 => "SIGUSR1",
            Signal::User2 => "SIGUSR2",
        }
    }

    fn from_number(signo: i32) -> Option<Self> {
        match signo {
            libc::SIGINT | libc::SIGTERM | libc::SIGQUIT => Some(Signal::Stop(signo)),
            libc::SIGHUP => Some(Signal::Hangup),
            libc::SIGUSR1 => Some(Signal::User1),
            libc::SIGUSR2 => Some(Signal::User2),
            _ => None,
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The signals [`ServerSignals`] takes over.
const SIGNALS: [i32; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// A signalfd for the signals of [`Signal`], with all of them blocked in the calling thread
/// (and so in every thread it starts afterwards).
pub struct ServerSignals {
    fd: OwnedFd,
}

impl ServerSignals {
    /// Blocks SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGUSR1 and SIGUSR2 and opens a signalfd
    /// (blocking, close-on-exec) for them. Call it before starting any thread.
    pub fn new() -> Result<Self> {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set it is given; sigaddset then only modifies
        // an initialised set; both are called on memory we own.
        let set = unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            for signo in SIGNALS {
                libc::sigaddset(set.as_mut_ptr(), signo);
            }
            set.assume_init()
        };
        // SAFETY: `set` is an initialised sigset_t; a null old-set pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, core::ptr::null_mut()) };
        if rc != 0 {
            return Err(Error::Syscall {
                what: "pthread_sigmask",
                errno: Errno::from_raw_os_error(rc),
            });
        }
        // SAFETY: `set` is initialised; -1 asks for a new descriptor.
        let raw = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
        if raw < 0 {
            return Err(Error::Syscall {
                what: "signalfd",
                errno: Errno::from_raw_os_error(
                    std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
                ),
            });
        }
        // SAFETY: signalfd returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self { fd })
    }

    /// Blocks until one of the signals arrives.
    pub fn wait(&self) -> Result<Signal> {
        // struct signalfd_siginfo is 128 bytes; ssi_signo is its first u32.
        let mut info = [0u8; 128];
        loop {
            match rustix::io::read(&self.fd, &mut info) {
                Ok(n) if n == info.len() => {
                    let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]) as i32;
                    match Signal::from_number(signo) {
                        Some(signal) => return Ok(signal),
                        // Guard: the signalfd's mask holds only SIGNALS.
                        None => continue,
                    }
                }
                Ok(_) => return Err(Error::InvalidConfig("short read from signalfd")),
                Err(Errno::INTR) => continue,
                Err(errno) => {
                    return Err(Error::Syscall {
                        what: "read signalfd",
                        errno,
                    })
                }
            }
        }
    }
}

impl AsFd for ServerSignals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_blocked_signal_has_a_meaning() {
        for signo in SIGNALS {
            let signal = Signal::from_number(signo).expect("a blocked signal is known");
            assert!(signal.name().starts_with("SIG"));
        }
        assert_eq!(Signal::from_number(libc::SIGPIPE), None);
        assert_eq!(Signal::Stop(libc::SIGQUIT).to_string(), "SIGQUIT");
    }
}
