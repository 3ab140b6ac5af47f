//! Helper launcher for the end-to-end tests: `ringwork-e2e-activate PROGRAM [ARGS...]` binds
//! a TCP listener on 127.0.0.1 (a free port) as descriptor 3 and executes PROGRAM in its
//! place (same pid) with `LISTEN_PID` and `LISTEN_FDS=1`, as systemd's socket activation
//! does. A connection made before PROGRAM is up waits in the listener's backlog.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let program = args
        .next()
        .expect("usage: ringwork-e2e-activate PROGRAM [ARGS...]");
    // Descriptors 0-2 are the standard streams: the first socket is 3.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    if listener.as_raw_fd() != 3 {
        eprintln!(
            "ringwork-e2e-activate: the listener is descriptor {}, not 3",
            listener.as_raw_fd()
        );
        return ExitCode::FAILURE;
    }
    // Inherited across exec (std makes its sockets close-on-exec).
    rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::empty()).expect("clear FD_CLOEXEC");
    let pid = std::process::id().to_string();
    let e = Command::new(&program)
        .args(args)
        .env("LISTEN_PID", pid)
        .env("LISTEN_FDS", "1")
        .exec();
    eprintln!(
        "ringwork-e2e-activate: exec {}: {e}",
        program.to_string_lossy()
    );
    ExitCode::FAILURE
}
