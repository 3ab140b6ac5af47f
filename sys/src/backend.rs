//! Which I/O backend a server runs on: io_uring where the kernel lets it, epoll where it does
//! not.
//!
//! io_uring is refused in more places than it is missing: Docker's and Kubernetes' default
//! seccomp profiles refuse `io_uring_setup` (EPERM, or ENOSYS), `kernel.io_uring_disabled`
//! (Linux 6.6) set to 2 refuses it to everyone and set to 1 to everyone outside
//! `kernel.io_uring_group`, and a kernel may lack it or an operation a server needs. A server
//! that then exits leaves its user with nothing; [`BackendRequest::Auto`] probes with a
//! throwaway ring before any listener is made and runs on epoll instead, with one line that
//! says why ([`Chosen::note`]). An explicit [`BackendRequest::Uring`] fails with the cause and
//! the way out ([`Refusal`]'s `Display`).
//!
//! What this module does not do: decide between the backends on speed (io_uring is the
//! default wherever it runs), or hide a failure that is not a refusal: a ring that cannot be
//! set up for lack of memory fails the same way on the real rings, so it is reported, not
//! worked around.
//!
//! # References
//! io_uring_setup(2) (EPERM, ENOSYS); Documentation/admin-guide/sysctl/kernel.rst
//! (`io_uring_disabled`, `io_uring_group`); moby/moby#47532 (Docker's default profile).

use std::fmt;

use rustix::io::Errno;
use rustix::io_uring::IoringOp;

use crate::error::{kernel_release, Error};
use crate::ring::RingParams;

/// The backend a user asks for (`--backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendRequest {
    /// io_uring where the kernel lets this process use it (with every operation the server
    /// needs), epoll otherwise.
    #[default]
    Auto,
    /// io_uring or nothing: a refusal is an error ([`Refusal`]).
    Uring,
    /// epoll, without looking at io_uring.
    Epoll,
}

impl std::str::FromStr for BackendRequest {
    type Err = String;

    /// `auto`, `uring` or `epoll`, as `--backend` spells them.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BackendRequest::Auto),
            "uring" => Ok(BackendRequest::Uring),
            "epoll" => Ok(BackendRequest::Epoll),
            other => Err(format!("backend {other:?}: expected auto, uring or epoll")),
        }
    }
}

/// The backend a server runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// io_uring.
    Uring,
    /// Edge-triggered epoll with nonblocking syscalls.
    Epoll,
}

impl Backend {
    /// `uring` or `epoll`, as `--backend` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uring => "uring",
            Backend::Epoll => "epoll",
        }
    }
}

/// An io_uring operation a server cannot run without, and the first Linux that has it.
#[derive(Clone, Copy, Debug)]
pub struct RequiredOp {
    /// The opcode.
    pub op: IoringOp,
    /// Its C name, for messages (`IORING_OP_ACCEPT`).
    pub name: &'static str,
    /// The first Linux release that has it (`5.5`).
    pub since: &'static str,
}

impl RequiredOp {
    /// `op`, called `name` in messages, first in Linux `since`.
    pub const fn new(op: IoringOp, name: &'static str, since: &'static str) -> Self {
        Self { op, name, since }
    }
}

/// Why io_uring cannot serve here.
#[derive(Debug)]
pub enum Refusal {
    /// io_uring_setup was refused: EPERM or EACCES (a sysctl or a seccomp filter), or ENOSYS
    /// (no io_uring in this kernel, or a filter that pretends so).
    Setup {
        /// The kernel's answer.
        errno: Errno,
        /// `kernel.io_uring_disabled`, where this kernel has the knob (Linux 6.6).
        disabled: Option<u8>,
    },
    /// The kernel lacks an operation the server needs.
    Missing {
        /// The operation's C name.
        feature: &'static str,
        /// The first Linux release that has it.
        since: &'static str,
        /// This kernel's release.
        kernel: String,
    },
    /// Setting up or probing the ring failed for another reason (memory, limits): not a
    /// refusal, and not something epoll is chosen for without being asked.
    Failed(Error),
}

impl Refusal {
    /// True when io_uring is unavailable by policy or by kernel version, so that
    /// [`BackendRequest::Auto`] runs on epoll; false for a failure that would deserve a look
    /// (out of memory setting up a two-entry ring).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, Refusal::Failed(_))
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Setup { errno, disabled } => {
                write!(f, "io_uring_setup refused: {errno} (")?;
                match (*errno, disabled) {
                    (_, Some(2)) => f.write_str(
                        "kernel.io_uring_disabled is 2: io_uring is off for every process",
                    ),
                    (Errno::PERM | Errno::ACCESS, Some(1)) => f.write_str(
                        "kernel.io_uring_disabled is 1: only members of kernel.io_uring_group \
                         and CAP_SYS_ADMIN may use io_uring",
                    ),
                    (Errno::NOSYS, _) => f.write_str(
                        "this kernel has no io_uring (CONFIG_IO_URING off, or before Linux \
                         5.1), or a seccomp filter refuses it",
                    ),
                    _ => f.write_str(
                        "a seccomp filter refuses it: container runtimes' default profiles do",
                    ),
                }?;
                f.write_str(")")
            }
            Refusal::Missing {
                feature,
                since,
                kernel,
            } => write!(f, "{feature} needs Linux {since}; this kernel is {kernel}"),
            Refusal::Failed(e) => write!(f, "cannot set up io_uring: {e}"),
        }
    }
}

impl std::error::Error for Refusal {}

/// What [`choose`] decided.
#[derive(Debug)]
pub struct Chosen {
    /// The backend to run on.
    pub backend: Backend,
    /// With [`BackendRequest::Auto`] on epoll: why io_uring was not used, for the server to
    /// print once.
    pub fallback: Option<Refusal>,
}

impl Chosen {
    /// The one line a server prints when it fell back (none otherwise).
    pub fn note(&self) -> Option<String> {
        self.fallback
            .as_ref()
            .map(|why| format!("io_uring unavailable, running on epoll: {why}"))
    }
}

/// The error for an explicit [`BackendRequest::Uring`] that io_uring refuses: the cause and
/// the way out.
#[derive(Debug)]
pub struct UringRefused(pub Refusal);

impl fmt::Display for UringRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "--backend uring: {}; --backend epoll (or the default, --backend auto) serves \
             without io_uring",
            self.0
        )
    }
}

impl std::error::Error for UringRefused {}

/// Chooses the backend for `request`: io_uring when a ring can be set up and has every one of
/// `required`, else epoll for [`BackendRequest::Auto`] (with the reason) and an error for
/// [`BackendRequest::Uring`]. A failure that is not a refusal ([`Refusal::is_refusal`]) is
/// an error for both.
///
/// ```
/// use ringwork_sys::backend::{choose, Backend, BackendRequest, RequiredOp};
/// use rustix::io_uring::IoringOp;
///
/// let need = [RequiredOp::new(IoringOp::Accept, "IORING_OP_ACCEPT", "5.5")];
/// let chosen = choose(BackendRequest::Auto, &need)?;
/// if let Some(note) = chosen.note() {
///     eprintln!("{note}");
/// }
/// assert!(matches!(chosen.backend, Backend::Uring | Backend::Epoll));
/// # Ok::<(), ringwork_sys::backend::UringRefused>(())
/// ```
pub fn choose(request: BackendRequest, required: &[RequiredOp]) -> Result<Chosen, UringRefused> {
    decide(request, || probe(required))
}

/// [`choose`]'s decision, given how the probe went.
fn decide(
    request: BackendRequest,
    probe: impl FnOnce() -> Result<(), Refusal>,
) -> Result<Chosen, UringRefused> {
    let uring = Chosen {
        backend: Backend::Uring,
        fallback: None,
    };
    match request {
        BackendRequest::Epoll => Ok(Chosen {
            backend: Backend::Epoll,
            fallback: None,
        }),
        BackendRequest::Uring => probe().map(|()| uring).map_err(UringRefused),
        BackendRequest::Auto => match probe() {
            Ok(()) => Ok(uring),
            Err(why) if why.is_refusal() => Ok(Chosen {
                backend: Backend::Epoll,
                fallback: Some(why),
            }),
            Err(why) => Err(UringRefused(why)),
        },
    }
}

/// Sets up a two-entry ring and looks for each of `required` in its opcode probe.
pub fn probe(required: &[RequiredOp]) -> Result<(), Refusal> {
    let mut ring = RingParams::new(2).build().map_err(|e| match e {
        Error::Syscall {
            errno: errno @ (Errno::PERM | Errno::ACCESS | Errno::NOSYS),
            ..
        } => Refusal::Setup {
            errno,
            disabled: io_uring_disabled(),
        },
        e => Refusal::Failed(e),
    })?;
    let probe = ring.probe().map_err(|e| match e {
        // IORING_REGISTER_PROBE arrived in 5.6, with most of what a server needs.
        Error::Syscall {
            errno: Errno::INVAL,
            ..
        } => Refusal::Missing {
            feature: "IORING_REGISTER_PROBE",
            since: "5.6",
            kernel: kernel_release(),
        },
        e => Refusal::Failed(e),
    })?;
    match required.iter().find(|r| !probe.supports(r.op)) {
        Some(r) => Err(Refusal::Missing {
            feature: r.name,
            since: r.since,
            kernel: kernel_release(),
        }),
        None => Ok(()),
    }
}

/// `kernel.io_uring_disabled` (0, 1 or 2), where this kernel has it (Linux 6.6).
pub fn io_uring_disabled() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoll_is_chosen_without_a_probe() {
        let chosen = choose(BackendRequest::Epoll, &[]).expect("epoll needs no io_uring");
        assert_eq!(chosen.backend, Backend::Epoll);
        assert!(chosen.note().is_none());
    }

    /// This machine has io_uring (every real-kernel test here needs it): auto runs on it.
    #[test]
    fn auto_runs_on_io_uring_where_the_kernel_has_it() {
        let need = [RequiredOp::new(IoringOp::Accept, "IORING_OP_ACCEPT", "5.5")];
        let chosen = choose(BackendRequest::Auto, &need).expect("io_uring is here");
        assert_eq!(chosen.backend, Backend::Uring, "{:?}", chosen.fallback);
        assert!(chosen.note().is_none());
    }

    fn future_op() -> Result<(), Refusal> {
        Err(Refusal::Missing {
            feature: "IORING_OP_FROM_THE_FUTURE",
            since: "99.0",
            kernel: kernel_release(),
        })
    }

    #[test]
    fn a_missing_operation_falls_back_on_auto_and_fails_uring_naming_it() {
        let chosen = decide(BackendRequest::Auto, future_op).expect("a refusal falls back");
        assert_eq!(chosen.backend, Backend::Epoll);
        let note = chosen.note().expect("a fallback says why");
        assert!(
            note.contains("IORING_OP_FROM_THE_FUTURE needs Linux 99.0"),
            "{note}"
        );
        let err = decide(BackendRequest::Uring, future_op).expect_err("uring or nothing");
        let msg = err.to_string();
        assert!(
            msg.contains("IORING_OP_FROM_THE_FUTURE") && msg.contains("--backend epoll"),
            "{msg}"
        );
    }

    #[test]
    fn a_failure_that_is_no_refusal_is_an_error_even_on_auto() {
        let failed = || Err(Refusal::Failed(Error::InvalidConfig("no memory")));
        let err = decide(BackendRequest::Auto, failed).expect_err("not worked around");
        assert!(err.to_string().contains("no memory"), "{err}");
    }

    #[test]
    fn the_real_probe_finds_what_this_kernel_has() {
        let need = [
            RequiredOp::new(IoringOp::Accept, "IORING_OP_ACCEPT", "5.5"),
            RequiredOp::new(IoringOp::Recv, "IORING_OP_RECV", "5.6"),
        ];
        probe(&need).expect("the test machine has io_uring with accept and recv");
    }

    #[test]
    fn setup_refusals_name_their_cause() {
        let all_off = Refusal::Setup {
            errno: Errno::PERM,
            disabled: Some(2),
        };
        assert!(all_off.is_refusal());
        assert!(all_off.to_string().contains("io_uring_disabled is 2"));
        let group = Refusal::Setup {
            errno: Errno::PERM,
            disabled: Some(1),
        };
        assert!(group.to_string().contains("io_uring_group"));
        let seccomp = Refusal::Setup {
            errno: Errno::PERM,
            disabled: Some(0),
        };
        assert!(seccomp.to_string().contains("seccomp"));
        let missing = Refusal::Setup {
            errno: Errno::NOSYS,
            disabled: None,
        };
        assert!(missing.to_string().contains("no io_uring"));
        assert!(!Refusal::Failed(Error::InvalidConfig("x")).is_refusal());
    }
}
