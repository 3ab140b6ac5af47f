//! Helper launcher for the end-to-end tests: `ringwork-e2e-nofile N PROGRAM [ARGS...]` sets
//! RLIMIT_NOFILE (soft and hard) to N and then executes PROGRAM in its place (same pid).
//!
//! The limit must be in place before the server starts: an io_uring accept reads the limit
//! when it is prepared, so lowering it on a running server would not reach an armed multishot
//! accept, and ringwork-echo raises its soft limit to the hard limit at start. Setting it in the
//! test process itself would starve the other tests of that process.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let limit: u64 = args
        .next()
        .and_then(|n| n.to_str()?.parse().ok())
        .expect("usage: ringwork-e2e-nofile N PROGRAM [ARGS...]");
    let program = args.next().expect("PROGRAM");
    let lim = rustix::process::Rlimit {
        current: Some(limit),
        maximum: Some(limit),
    };
    if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Nofile, lim) {
        eprintln!("ringwork-e2e-nofile: setrlimit(RLIMIT_NOFILE, {limit}): {e}");
        return ExitCode::FAILURE;
    }
    let e = Command::new(&program).args(args).exec();
    eprintln!(
        "ringwork-e2e-nofile: exec {}: {e}",
        program.to_string_lossy()
    );
    ExitCode::FAILURE
}
