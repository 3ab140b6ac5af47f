//! `ringwork-bench compare --peers`: echo servers on other Rust runtimes, as more backends in
//! the echo comparison.
//!
//! The peers live in `bench/peers/`, a Cargo workspace of their own, so that Ringwork's
//! `cargo build --workspace` (and CI) never builds tokio or monoio. `--peers` builds them in
//! release mode from the committed lock file (`cargo build --release --locked`), which needs
//! cargo and, the first time, the crates from the registry; then starts each once to check it
//! runs here. A peer that cannot be built or started is left out, and the report says which
//! and why.
//!
//! Each peer is started as a [`Server::Peer`], so it is pinned and measured exactly like an
//! `--external` command line.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::compare::{shell_quote, start_command, Backend, Server, PORT_PLACEHOLDER};
use crate::nginx::find_on_path;

/// The peers: column name, binary, what it is.
pub const PEERS: [(&str, &str, &str); 2] = [
    (
        "tokio",
        "tokio-echo",
        "current-thread runtime, a task per connection with a 4 KiB buffer, read then write_all",
    ),
    (
        "monoio",
        "monoio-echo",
        "io_uring driver, a task per connection owning a 4 KiB buffer it lends to each read and write",
    ),
];

/// What `--peers` came to: the backends to measure, and the paragraph for the report.
pub struct Peers {
    /// The peers that built and started.
    pub backends: Vec<Backend>,
    /// The report's paragraph about them.
    pub note: String,
}

/// The peers' sources, in the checkout this binary was built from.
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// Builds and test-starts the peers in `dir`; never fails, a peer that cannot be had is
/// named in the note instead.
pub fn prepare(dir: &Path) -> Peers {
    eprintln!("building the peers in {} (release)", dir.display());
    let bin_dir = match build(dir) {
        Ok(bin_dir) => bin_dir,
        Err(why) => {
            let note = format!(
                "**The peers (tokio, monoio) were not built**, so they are not measured: {why}"
            );
            eprintln!("{note}");
            return Peers {
                backends: Vec::new(),
                note,
            };
        }
    };
    let versions = std::fs::read_to_string(dir.join("Cargo.lock")).unwrap_or_default();
    let mut backends = Vec::new();
    let mut lines = Vec::new();
    for (name, bin, what) in PEERS {
        let command = format!(
            "{} --listen 127.0.0.1:{PORT_PLACEHOLDER}",
            shell_quote(&bin_dir.join(bin).display().to_string())
        );
        let version = lock_version(&versions, name).unwrap_or("version unknown");
        match start_command(&command) {
            Ok(_) => {
                lines.push(format!("- {name}: {name} {version}, {what}."));
                backends.push(Backend {
                    name: name.into(),
                    server: Server::Peer(command),
                });
            }
            Err(e) => {
                eprintln!("peer {name} did not start: {e}");
                lines.push(format!(
                    "- {name}: **did not start here**, so it is not measured: {e}"
                ));
            }
        }
    }
    Peers {
        backends,
        note: format!(
            "Peers (`bench/peers/`, built with `cargo build --release --locked`; each one \
             thread, TCP_NODELAY, measured in the same alternation):\n\n{}",
            lines.join("\n")
        ),
    }
}

/// `cargo build --release --locked` in `dir`; the directory of the built binaries, or why not.
fn build(dir: &Path) -> Result<PathBuf, String> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.exists() {
        return Err(format!(
            "their sources are not at {} (run ringwork-bench from a Ringwork checkout)",
            dir.display()
        ));
    }
    // cargo sets CARGO for what it runs; otherwise the one on PATH.
    let cargo = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .or_else(|| find_on_path("cargo", &std::env::var("PATH").unwrap_or_default()))
        .ok_or("cargo was not found (neither $CARGO nor on PATH); install Rust from rustup.rs")?;
    let target = dir.join("target");
    let out = Command::new(&cargo)
        .args(["build", "--release", "--locked", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("run {}: {e}", cargo.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`cargo build --release --locked --manifest-path {}` failed ({}): {}",
            manifest.display(),
            out.status,
            cargo_error(&String::from_utf8_lossy(&out.stderr))
        ));
    }
    Ok(target.join("release"))
}

/// The part of cargo's stderr that says what went wrong: from its first `error` line on (for
/// a machine without the crates and without network, the crate it could not download), at
/// most eight lines, joined into one.
pub fn cargo_error(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("error"))
        .filter(|l| !l.is_empty())
        .take(8)
        .collect();
    if lines.is_empty() {
        stderr
            .trim()
            .lines()
            .last()
            .unwrap_or("no message")
            .to_string()
    } else {
        lines.join(" ")
    }
}

/// The version of package `name` in a Cargo.lock text.
pub fn lock_version<'a>(lock: &'a str, name: &str) -> Option<&'a str> {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == wanted {
            return lines
                .next()?
                .trim()
                .strip_prefix("version = \"")?
                .strip_suffix('"');
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_the_lock_file() {
        let lock = "[[package]]\nname = \"tokio\"\nversion = \"1.54.1\"\n\n[[package]]\n\
                    name = \"tokio-macros\"\nversion = \"2.0.0\"\n";
        assert_eq!(lock_version(lock, "tokio"), Some("1.54.1"));
        assert_eq!(lock_version(lock, "monoio"), None);
        // The committed lock file names both peers' runtimes.
        let lock = std::fs::read_to_string(source_dir().join("Cargo.lock")).unwrap();
        for (name, _, _) in PEERS {
            assert!(lock_version(&lock, name).is_some(), "{name} in Cargo.lock");
        }
    }

    #[test]
    fn cargo_errors_keep_what_is_missing() {
        let stderr = "    Updating crates.io index\nerror: failed to get `monoio` as a dependency \
                      of package `ringwork-peers`\n\nCaused by:\n  download of config.json failed\n";
        let e = cargo_error(stderr);
        assert!(e.starts_with("error: failed to get `monoio`"), "{e}");
        assert!(
            e.contains("Caused by: download of config.json failed"),
            "{e}"
        );
        assert_eq!(cargo_error("just this\n"), "just this");
    }

    #[test]
    fn peers_without_sources_are_named_not_fatal() {
        let dir = std::env::temp_dir().join(format!("ringwork-no-peers-{}", std::process::id()));
        let peers = prepare(&dir);
        assert!(peers.backends.is_empty());
        assert!(peers.note.contains("were not built"), "{}", peers.note);
        assert!(peers.note.contains("sources are not at"), "{}", peers.note);
    }
}
