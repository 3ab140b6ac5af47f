//! The one error type of `ringwork-sys`: what was being attempted, and what the kernel said.

use core::fmt;
use std::string::String;

use rustix::io::Errno;

/// Everything that can go wrong talking to the kernel.
#[derive(Debug)]
pub enum Error {
    /// A syscall failed.
    Syscall {
        /// What was being attempted, e.g. `"io_uring_setup"` or `"register provided buffer ring"`.
        what: &'static str,
        /// The kernel's answer.
        errno: Errno,
    },
    /// This kernel lacks a feature we need and no fallback was possible.
    Unsupported {
        /// The C name of the feature, e.g. `"IORING_REGISTER_PBUF_RING"`.
        feature: &'static str,
        /// The first Linux version that has it.
        since: &'static str,
        /// This kernel's release string.
        kernel: String,
    },
    /// The kernel dropped completions (the CQ overflow counter rose): the ring's state can no
    /// longer be trusted. Never silent (PITFALLS.md, "CQ overflow is silent unless checked").
    CompletionsLost {
        /// How many the kernel reports dropped so far.
        dropped: u32,
    },
    /// The submission queue is full; harvest completions and submit before pushing more.
    SubmissionQueueFull,
    /// An operation with memory was pushed under a `user_data` that another one, still in
    /// flight, already has: its completion could not be told apart.
    UserDataInUse(ringwork_core::token::UserData),
    /// A configuration value was refused before reaching the kernel.
    InvalidConfig(&'static str),
    /// Receive-buffer bookkeeping refused what it was told (a buffer given back twice, a
    /// completion naming a buffer never handed out): a bug in the caller, or the kernel's.
    Recv(ringwork_core::buf::RecvError),
    /// SEND_ZC bookkeeping refused what it was told (a notification for no send in flight).
    ZeroCopy(ringwork_core::buf::ZcError),
    /// A buffer pool refused what it was told (a lease from another pool, or returned twice).
    Pool(ringwork_core::buf::BufError),
    /// io_uring_setup refused IORING_SETUP_SQPOLL (with SQ_AFF when `cpu` is set).
    SqPollRefused {
        /// The kernel's answer.
        errno: Errno,
        /// The CPU the poller was to be pinned to.
        cpu: Option<u32>,
    },
    /// A driver's bookkeeping found what cannot happen (memory that came back with the wrong
    /// completion, an operation its machine cannot have asked for): a bug, reported instead
    /// of acted on.
    Broken(String),
}

impl Error {
    /// Wraps a failed syscall with what was being attempted.
    pub fn syscall(what: &'static str) -> impl FnOnce(Errno) -> Error {
        move |errno| Error::Syscall { what, errno }
    }

    /// The errno, when the error came from a syscall.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Syscall { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// An "unsupported feature" error for this kernel.
    pub fn unsupported(feature: &'static str, since: &'static str) -> Error {
        Error::Unsupported {
            feature,
            since,
            kernel: kernel_release(),
        }
    }
}

/// This kernel's release string (`uname -r`), for messages and benchmark reports.
pub fn kernel_release() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Syscall { what, errno } => {
                write!(f, "{what} failed: {errno}")?;
                if *errno == Errno::NOSYS && what.starts_with("io_uring") {
                    write!(f, " (io_uring is disabled or missing in this kernel)")?;
                } else if *errno == Errno::PERM && what.starts_with("io_uring") {
                    write!(f, " (io_uring may be restricted: see /proc/sys/kernel/io_uring_disabled)")?;
                } else if *errno == Errno::NOMEM && what.starts_with("register") {
                    write!(f, " (locked-memory limit? see `ulimit -l`)")?;
                }
                Ok(())
            }
            Error::Unsupported {
                feature,
                since,
                kernel,
            } => write!(
                f,
                "{feature} needs Linux {since}; this kernel is {kernel}"
            ),
            Error::CompletionsLost { dropped } => write!(
                f,
                "the kernel dropped {dropped} completions (CQ overflow without IORING_FEAT_NODROP backlog)"
            ),
            Error::SubmissionQueueFull => f.write_str("submission queue full"),
            Error::InvalidConfig(why) => write!(f, "invalid ring configuration: {why}"),
            Error::Broken(what) => f.write_str(what),
            Error::UserDataInUse(ud) => write!(
                f,
                "user_data {:#x} already names an operation with memory in flight",
                ud.0
            ),
            Error::Recv(e) => write!(f, "receive buffers: {e}"),
            Error::ZeroCopy(e) => write!(f, "SEND_ZC buffers: {e}"),
            Error::Pool(e) => write!(f, "buffer pool: {e}"),
            Error::SqPollRefused { errno, cpu } => {
                let aff = if cpu.is_some() { " | IORING_SETUP_SQ_AFF" } else { "" };
                write!(f, "io_uring_setup with IORING_SETUP_SQPOLL{aff} refused: {errno} (")?;
                match (*errno, cpu) {
                    (Errno::PERM | Errno::ACCESS, _) => f.write_str(
                        "not permitted: SQPOLL needs CAP_SYS_NICE before Linux 5.11, and \
                         /proc/sys/kernel/io_uring_disabled may restrict io_uring",
                    ),
                    (Errno::INVAL, Some(cpu)) => write!(
                        f,
                        "CPU {cpu} is not online or not in this process' allowed CPUs"
                    ),
                    (Errno::NOMEM | Errno::AGAIN, _) => {
                        f.write_str("the kernel could not start the poller thread: limits")
                    }
                    _ => f.write_str(
                        "unprivileged SQPOLL needs Linux 5.11; an SQ_AFF CPU must be online",
                    ),
                }?;
                f.write_str(")")
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<ringwork_core::buf::RecvError> for Error {
    fn from(e: ringwork_core::buf::RecvError) -> Self {
        Error::Recv(e)
    }
}

impl From<ringwork_core::buf::ZcError> for Error {
    fn from(e: ringwork_core::buf::ZcError) -> Self {
        Error::ZeroCopy(e)
    }
}

impl From<ringwork_core::buf::BufError> for Error {
    fn from(e: ringwork_core::buf::BufError) -> Self {
        Error::Pool(e)
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;
