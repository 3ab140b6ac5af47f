//! Shutdown signals: [`ShutdownSignals`] blocks SIGINT and SIGTERM and receives them through
//! a signalfd, an ordinary readable descriptor. Both servers' main threads wait on it and
//! relay the stop to their workers with [`crate::driver::stop_notices`]; nothing runs in a
//! signal handler.
//!
//! rustix has no signalfd, so this module uses libc.
//!
//! # References
//! signalfd(2), sigaction(2), pthread_sigmask(3).

use std::mem::MaybeUninit;

use rustix::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// A signalfd for SIGINT and SIGTERM, with both blocked in the calling thread (and so in every
/// thread it starts afterwards).
pub struct ShutdownSignals {
    fd: OwnedFd,
}

impl ShutdownSignals {
    /// Blocks SIGINT and SIGTERM and opens a signalfd (blocking, close-on-exec) for them.
    pub fn new() -> Result<Self> {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set it is given; sigaddset then only modifies
        // an initialised set; both are called on memory we own.
        let set = unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
            libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
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

    /// Blocks until SIGINT or SIGTERM arrives; returns the signal number.
    pub fn wait(&self) -> Result<i32> {
        // struct signalfd_siginfo is 128 bytes; ssi_signo is its first u32.
        let mut info = [0u8; 128];
        loop {
            match rustix::io::read(&self.fd, &mut info) {
                Ok(n) if n == info.len() => {
                    return Ok(u32::from_ne_bytes([info[0], info[1], info[2], info[3]]) as i32)
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

impl AsFd for ShutdownSignals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
