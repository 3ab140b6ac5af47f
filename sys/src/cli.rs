//! Command-line pieces every Ringwork server shares (feature `cli`, on clap): `--backend`
//! and the io_uring ring flags (`--sq-entries`, `--sqpoll`, `--sqpoll-cpu`, `--disable`),
//! with their checks and what they mean for [`backend::choose`] and
//! [`ServerRingConfig`]. A server flattens [`RingFlags`] into its own `clap::Parser`:
//!
//! ```
//! use clap::Parser;
//! use ringwork_sys::cli::{BackendArg, Feature, RingFlags};
//!
//! #[derive(Parser)]
//! struct Args {
//!     #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
//!     backend: BackendArg,
//!     #[command(flatten)]
//!     ring: RingFlags,
//! }
//!
//! let args = Args::parse_from(["server", "--disable", "sqpoll,cancel-fd", "--sqpoll"]);
//! assert!(args.ring.disabled(Feature::CancelFd));
//! let ring = args.ring.ring_config();
//! assert!(ring.sqpoll.is_none(), "a disabled feature wins over the flag that asks for it");
//! assert!(ring.legacy.no_cancel_fd);
//! ```

use crate::backend::{self, Backend, BackendRequest, RequiredOp};
use crate::driver::ServerRingConfig;
use crate::ring::{LegacyFeatures, SqPoll, TaskRun};

/// `--backend`: which I/O model the workers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    /// io_uring where this process may use it, else epoll (one line on stderr says why).
    Auto,
    /// io_uring, or exit naming why not.
    Uring,
    /// Edge-triggered epoll with nonblocking syscalls (the baseline).
    Epoll,
}

impl BackendArg {
    /// What to ask [`backend::choose`] for.
    pub fn request(self) -> BackendRequest {
        match self {
            BackendArg::Auto => BackendRequest::Auto,
            BackendArg::Uring => BackendRequest::Uring,
            BackendArg::Epoll => BackendRequest::Epoll,
        }
    }
}

/// An io_uring feature `--disable` turns off, forcing its fallback path (for tests, and for
/// kernels where the feature misbehaves). A server refuses the ones it does not use
/// ([`RingFlags::check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Feature {
    /// Multishot accept (Linux 5.19): single-shot accept, re-armed after each connection.
    MultishotAccept,
    /// Multishot recv (Linux 6.0): single-shot recv, re-armed after each completion.
    MultishotRecv,
    /// Registered file table (Linux 5.15, sparse 5.19): files opened into plain descriptors.
    FixedFiles,
    /// Registered buffers (with --direct or --zerocopy): IORING_OP_READ into the same
    /// memory instead of READ_FIXED.
    FixedBuffers,
    /// SEND_ZC: plain sends even with `--zerocopy`.
    SendZc,
    /// Linked open → read chains: each read submitted after its open completed.
    Links,
    /// A miss's stat and open done at once from the kernel's lookup cache (openat2
    /// RESOLVE_CACHED, Linux 5.12): every miss is stat'ed with IORING_OP_STATX on io-wq.
    InlineLookups,
    /// SQPOLL: no kernel poller even with `--sqpoll`.
    Sqpoll,
    /// SINGLE_ISSUER | DEFER_TASKRUN (Linux 6.1): COOP_TASKRUN instead (or a plain ring with
    /// `coop-taskrun` disabled too).
    DeferTaskrun,
    /// SINGLE_ISSUER | COOP_TASKRUN (Linux 5.19), the fallback from DEFER_TASKRUN: a plain
    /// ring instead.
    CoopTaskrun,
    /// Provided buffer ring (IORING_REGISTER_PBUF_RING, Linux 5.19): the older way instead
    /// (IORING_OP_PROVIDE_BUFFERS, or a buffer per connection).
    PbufRing,
    /// Cancel by descriptor (IORING_ASYNC_CANCEL_FD, Linux 5.19): a closing connection's
    /// operations are ended by shutdown(2) instead, as on older kernels.
    CancelFd,
}

impl Feature {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Feature::MultishotAccept => "multishot-accept",
            Feature::MultishotRecv => "multishot-recv",
            Feature::FixedFiles => "fixed-files",
            Feature::FixedBuffers => "fixed-buffers",
            Feature::SendZc => "send-zc",
            Feature::Links => "links",
            Feature::InlineLookups => "inline-lookups",
            Feature::Sqpoll => "sqpoll",
            Feature::DeferTaskrun => "defer-taskrun",
            Feature::CoopTaskrun => "coop-taskrun",
            Feature::PbufRing => "pbuf-ring",
            Feature::CancelFd => "cancel-fd",
        }
    }
}

/// The io_uring ring flags of a server.
#[derive(Clone, Debug, clap::Args)]
pub struct RingFlags {
    /// io_uring: submission queue entries per ring, a power of two up to 16384 (the
    /// completion queue gets four times as many). Connections wait for room when a burst
    /// fills it; nothing is lost.
    #[arg(long, default_value_t = 1024)]
    pub sq_entries: u32,
    /// io_uring: kernel-side submission polling (IORING_SETUP_SQPOLL) with this idle time in
    /// ms before the poller sleeps (`--sqpoll` alone: 10 ms; off by default). Without
    /// DEFER_TASKRUN (the kernel refuses the pair). When the kernel refuses SQPOLL the server
    /// exits with the reason.
    #[arg(long, value_name = "IDLE_MS", num_args = 0..=1, default_missing_value = "10", require_equals = true)]
    pub sqpoll: Option<u32>,
    /// io_uring, with `--sqpoll`: CPU to pin each SQPOLL poller to (IORING_SETUP_SQ_AFF).
    /// Default: none, and the poller may run on any CPU (the kernel thread ignores the
    /// process' affinity mask).
    #[arg(long, value_name = "CPU", requires = "sqpoll")]
    pub sqpoll_cpu: Option<u32>,
    /// io_uring: turn features off, forcing their fallbacks (comma-separated; default: none,
    /// every feature the kernel has is used). A disabled feature wins over the flag that asks
    /// for it (`--sqpoll`, `--zerocopy`).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "FEATURE[,FEATURE]"
    )]
    pub disable: Vec<Feature>,
}

impl RingFlags {
    /// Whether `--disable` names `f`.
    pub fn disabled(&self, f: Feature) -> bool {
        self.disable.contains(&f)
    }

    /// The ring these flags ask for (a disabled feature wins over the flag that asks for it).
    pub fn ring_config(&self) -> ServerRingConfig {
        ServerRingConfig {
            sq_entries: self.sq_entries,
            sqpoll: self
                .sqpoll
                .filter(|_| !self.disabled(Feature::Sqpoll))
                .map(|idle_ms| SqPoll {
                    idle_ms,
                    cpu: self.sqpoll_cpu,
                }),
            task_run: TaskRun::allowed(
                !self.disabled(Feature::DeferTaskrun),
                !self.disabled(Feature::CoopTaskrun),
            ),
            legacy: LegacyFeatures {
                no_cancel_fd: self.disabled(Feature::CancelFd),
                ..Default::default()
            },
        }
    }

    /// The flags' own checks: `--sq-entries` in range; on epoll no io_uring flag; no
    /// `--disable` of a feature the server (`name`) does not use (`uses`).
    pub fn check(&self, name: &str, backend: Backend, uses: &[Feature]) -> Result<(), String> {
        if !self.sq_entries.is_power_of_two() || self.sq_entries > 16384 {
            return Err("--sq-entries must be a power of two from 1 to 16384".into());
        }
        if backend == Backend::Epoll && self.sqpoll.is_some() {
            return Err("--sqpoll applies to --backend uring only".into());
        }
        if backend == Backend::Epoll && !self.disable.is_empty() {
            return Err("--disable applies to --backend uring only".into());
        }
        if let Some(f) = self.disable.iter().find(|f| !uses.contains(f)) {
            let can: Vec<&str> = uses.iter().map(|f| f.name()).collect();
            return Err(format!(
                "--disable {}: {name} does not use it; features it can disable: {}",
                f.name(),
                can.join(", ")
            ));
        }
        Ok(())
    }
}

/// The backend `--backend` asks for, io_uring probed (with the operations in `required`)
/// unless epoll was named. On `auto`, the fallback is printed behind `name` with its reason;
/// an io_uring flag given (`--sqpoll`, `--disable`, or one of the server's own in `also`:
/// each flag and whether it was given) is then an error naming the flag and the reason.
pub fn choose_backend(
    name: &str,
    arg: BackendArg,
    required: &[RequiredOp],
    ring: &RingFlags,
    also: &[(&str, bool)],
) -> Result<Backend, String> {
    let chosen = backend::choose(arg.request(), required).map_err(|e| e.to_string())?;
    if let Some(note) = chosen.note() {
        let ring_flags = [
            ("--sqpoll", ring.sqpoll.is_some()),
            ("--disable", !ring.disable.is_empty()),
        ];
        if let Some((flag, _)) = ring_flags.iter().chain(also).find(|(_, given)| *given) {
            return Err(format!("{flag} needs io_uring: {note}"));
        }
        eprintln!("{name}: {note}");
    }
    Ok(chosen.backend)
}

/// A server's exit: success, or the error on stderr behind the server's `name` and exit
/// status 1.
pub fn exit<E: std::fmt::Display>(name: &str, result: Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        ring: RingFlags,
    }

    fn parse(args: &[&str]) -> RingFlags {
        Args::parse_from(std::iter::once("t").chain(args.iter().copied())).ring
    }

    #[test]
    fn disabled_features_win_over_the_flags_that_ask_for_them() {
        let ring = parse(&["--sqpoll=5", "--sqpoll-cpu", "1"]).ring_config();
        assert_eq!(ring.sqpoll.map(|s| (s.idle_ms, s.cpu)), Some((5, Some(1))));
        assert_eq!(ring.task_run, TaskRun::Defer);
        let ring = parse(&["--sqpoll", "--disable", "sqpoll,defer-taskrun"]).ring_config();
        assert!(ring.sqpoll.is_none());
        assert_eq!(ring.task_run, TaskRun::Coop);
        let ring = parse(&["--disable", "defer-taskrun,coop-taskrun"]).ring_config();
        assert_eq!(ring.task_run, TaskRun::Plain);
    }

    #[test]
    fn checks_refuse_what_a_server_or_backend_cannot_do() {
        let uses = [Feature::Sqpoll, Feature::Links];
        assert!(parse(&[]).check("s", Backend::Uring, &uses).is_ok());
        assert!(parse(&["--sq-entries", "1000"])
            .check("s", Backend::Uring, &uses)
            .is_err());
        assert!(parse(&["--sqpoll"])
            .check("s", Backend::Epoll, &uses)
            .is_err());
        let e = parse(&["--disable", "links,fixed-files"])
            .check("s", Backend::Uring, &uses)
            .unwrap_err();
        assert_eq!(
            e,
            "--disable fixed-files: s does not use it; features it can disable: sqpoll, links"
        );
    }
}
