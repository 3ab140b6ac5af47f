//! ringwork-bench: Ringwork's benchmarks. Every figure in README names the command that made it.
//!
//! It has no `unsafe`: its io_uring engines submit through ringwork-sys's safe submission
//! (memory the ring owns until each operation's last completion).
//!
//! Each subcommand is a module with its options (`Args`) and its `run_command`; `main` only
//! parses and dispatches.
#![forbid(unsafe_code)]

use std::path::Path;

use clap::{Parser, Subcommand};

mod c10k;
mod compare;
mod drain;
mod echo;
mod fileread;
mod http;
mod nginx;
mod peers;
mod rng;
mod sendpath;
mod site;
mod sitecompare;
mod stats;
mod tls;
mod tlscompare;
mod workloads;

#[derive(Parser)]
#[command(
    name = "ringwork-bench",
    version,
    about = "Ringwork benchmarks: io_uring against the epoll/pread way of doing the same work"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start ringwork-echo per backend and write BENCHMARKS.md with tables and SVG plots.
    Compare(compare::Args),
    /// Load an echo server: closed loop (--depth) or open loop (--rate), verified bytes,
    /// HDR latency, server CPU per message.
    Echo(echo::Args),
    /// Load an HTTP/1.1 file server: keep-alive GETs in a closed loop, responses checked.
    Http(http::Args),
    /// What ordering costs: a write-ahead log's fdatasync barrier ordered with IO_DRAIN, an
    /// IO_LINK chain or a user-space wait (and unordered, not durable), and IO_DRAIN alone on
    /// random reads.
    Drain(drain::Args),
    /// Random reads from one file: io_uring engines against pread, optionally beside fio,
    /// alternated in rounds; medians and spreads per engine.
    Fileread(fileread::Args),
    /// Large-file send paths from one pinned io_uring loop over loopback connections:
    /// READ_FIXED + SEND, linked SPLICE file → pipe → socket, SEND from an mmap, SEND_ZC;
    /// bytes/s and server CPU per byte.
    Sendpath(sendpath::Args),
    /// Write a reproducible site (tens of thousands of files, heavy-tailed sizes) for
    /// `http --site` and `compare --files --site`; prints its size statistics.
    Site(site::Args),
}

fn main() {
    // Read before any pinning narrows what this process sees.
    ringwork_harness::pin::online_cpus();
    let result = match Cli::parse().command {
        Command::Compare(args) => compare::run_command(args),
        Command::Echo(args) => echo::run_command(args),
        Command::Http(args) => http::run_command(args),
        Command::Drain(args) => drain::run_command(args),
        Command::Fileread(args) => fileread::run_command(args),
        Command::Sendpath(args) => sendpath::run_command(args),
        Command::Site(args) => site::run_command(args),
    };
    if let Err(e) = result {
        eprintln!("ringwork-bench: {e}");
        std::process::exit(1);
    }
}

/// "4k" -> 4096, "256M" -> 268435456, "4G", plain numbers: the sizes the options take.
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_lowercase() {
                'k' => 1u64 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                _ => return Err(format!("unknown size suffix in {s:?} (use k, M or G)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|e| format!("bad size {s:?}: {e}"))
}

/// Writes a `--json` result, newline-terminated.
fn write_json(path: &Path, json: &str) -> Result<(), String> {
    std::fs::write(path, format!("{json}\n")).map_err(|e| format!("write {}: {e}", path.display()))
}

/// `[a,b,...]` of JSON texts.
fn json_array(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("4x").is_err());
        assert!(parse_size("k").is_err());
    }
}
