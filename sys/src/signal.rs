//! Shutdown signals, two ways, for two kinds of loop:
//!
//! - [`ShutdownSignals`]: SIGINT and SIGTERM blocked and received through a signalfd, an
//!   ordinary readable descriptor (ringwork-echo's main thread waits on it and wakes its
//!   workers through eventfds read by their rings).
//! - [`install_stop_handler`] / [`stop_requested`]: a handler that only sets an atomic flag,
//!   installed without SA_RESTART, so a thread blocked in `io_uring_enter` or `epoll_wait`
//!   returns EINTR and sees the flag (ringwork-files' loops poll it on every wake-up).
//!
//! rustix has neither signalfd nor sigaction, so this module uses libc.
//!
//! # References
//! signalfd(2), sigaction(2), pthread_sigmask(3).

use core::sync::atomic::{AtomicBool, Ordering};
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

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Relaxed: the flag carries no data; loops poll it.
    STOP.store(true, Ordering::Relaxed);
}

/// Installs the handler for SIGINT and SIGTERM.
pub fn install_stop_handler() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: an all-zero sigaction is a valid "no flags, empty mask" value; the handler
        // is an `extern "C" fn(c_int)` that only touches an atomic, which is
        // async-signal-safe; `sigaction` reads `act` during the call only.
        let rc = unsafe {
            let mut act: libc::sigaction = core::mem::zeroed();
            act.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, core::ptr::null_mut())
        };
        if rc != 0 {
            return Err(Error::Syscall {
                what: "install a SIGINT/SIGTERM handler",
                errno: rustix::io::Errno::from_raw_os_error(
                    std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
                ),
            });
        }
    }
    Ok(())
}

/// Asks every loop that polls [`stop_requested`] to stop, as a signal would (for example when
/// one worker thread of several has failed).
pub fn request_stop() {
    STOP.store(true, Ordering::Relaxed);
}

/// True once SIGINT or SIGTERM has arrived, or [`request_stop`] was called.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}
