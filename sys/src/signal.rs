//! SIGINT / SIGTERM as a flag, for graceful shutdown of the servers' loops.
//!
//! The handler only stores to an atomic (async-signal-safe). It is installed without
//! SA_RESTART, so a thread blocked in `io_uring_enter` or `epoll_wait` when the signal lands
//! returns EINTR and sees the flag; other threads see it at their next timed wake-up.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::{Error, Result};

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
