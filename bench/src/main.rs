//! ringwork-bench: Ringwork's benchmarks. Every figure in README names the command that made it.
//!
//! It has no `unsafe`: its io_uring engines submit through ringwork-sys's safe submission
//! (memory the ring owns until each operation's last completion).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod compare;
mod drain;
mod echo;
mod fileread;
mod http;
mod nginx;
mod peers;
mod sendpath;
mod stats;
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
    Compare {
        /// A small matrix (three echo cells; with --files, smaller file workloads) that
        /// finishes in under two minutes.
        #[arg(long)]
        quick: bool,
        /// Measured seconds per cell [default: 5; 2 with --quick].
        #[arg(long)]
        duration: Option<f64>,
        /// Unmeasured warm-up seconds per cell [default: 1; 0.5 with --quick].
        #[arg(long)]
        warmup: Option<f64>,
        /// Directory for BENCHMARKS.md and the SVG plots.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// The ringwork-echo binary [default: the one next to this binary].
        #[arg(long)]
        server_bin: Option<PathBuf>,
        /// Also run ringwork-echo with --sqpoll as a third backend.
        #[arg(long)]
        sqpoll: bool,
        /// Another echo server as another column, in the same alternation (repeatable):
        /// NAME=COMMAND starts `sh -c 'exec COMMAND'` with {port} replaced by a free loopback
        /// port and pins it like ringwork-echo; NAME=HOST:PORT measures one already running
        /// (not pinned, no CPU figures). Default: none.
        #[arg(long, value_parser = compare::parse_external)]
        external: Vec<compare::Backend>,
        /// Also build (cargo, release) and measure the echo servers in bench/peers: tokio
        /// (current-thread) and monoio (io_uring). Peers that cannot be built or started are
        /// left out, and the report says why.
        #[arg(long)]
        peers: bool,
        /// Also run the file-heavy (random reads) and mixed (HTTP file serving with
        /// ringwork-files, found next to this binary) workloads, and ringwork-files against
        /// nginx (when `nginx` is on PATH).
        #[arg(long)]
        files: bool,
    },
    /// Load an echo server: closed loop (--depth) or open loop (--rate), verified bytes,
    /// HDR latency, server CPU per message.
    Echo {
        /// Server address.
        #[arg(long, default_value = "127.0.0.1:7878")]
        addr: std::net::SocketAddr,
        /// Connections.
        #[arg(long, default_value_t = 50)]
        conns: usize,
        /// Message size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Closed loop: messages outstanding per connection.
        #[arg(long, default_value_t = 1)]
        depth: usize,
        /// Open loop: total messages per second, spread evenly over connections; latency is
        /// measured from each message's scheduled time (default: closed loop).
        #[arg(long)]
        rate: Option<f64>,
        /// Measured seconds.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Unmeasured seconds first.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Generator threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// The server's pid, to report its CPU time per message (default: none, no server
        /// figures).
        #[arg(long)]
        server_pid: Option<u32>,
        /// With --server-pid: count the server's syscalls over the window with perf stat
        /// (off by default).
        #[arg(long)]
        count_syscalls: bool,
        /// Write the result as JSON here too (default: the table only).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Load an HTTP/1.1 file server: keep-alive GETs in a closed loop, responses checked.
    Http {
        /// Base URL, e.g. http://127.0.0.1:8080/ (paths are appended).
        #[arg(long, default_value = "http://127.0.0.1:8080/")]
        url: String,
        /// Paths to request in turn, comma-separated [default: the URL's own path].
        #[arg(long, value_delimiter = ',')]
        paths: Vec<String>,
        /// Connections.
        #[arg(long, default_value_t = 50)]
        conns: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Unmeasured seconds first.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// The server's pid, to report its CPU time per request (default: none).
        #[arg(long)]
        server_pid: Option<u32>,
        /// Write the result as JSON here too (default: the table only).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// What ordering costs: a write-ahead log's fdatasync barrier ordered with IO_DRAIN, an
    /// IO_LINK chain or a user-space wait (and unordered, not durable), and IO_DRAIN alone on
    /// random reads.
    Drain {
        /// The log file (preallocated with real data; put it on the file system to measure).
        #[arg(long, default_value = "/tmp/ringwork-drain-wal.dat")]
        file: PathBuf,
        /// Bytes of log the writes cycle through (suffixes k, M, G).
        #[arg(long, default_value = "64M", value_parser = parse_size)]
        size: u64,
        /// 4 KiB writes per batch (one fdatasync each).
        #[arg(long, default_value_t = 16)]
        batch: u32,
        /// Batches in flight at once.
        #[arg(long, default_value_t = 4)]
        in_flight: u32,
        /// File for the random-read variants (read once first: page cache).
        #[arg(long, default_value = "/tmp/ringwork-drain-reads.dat")]
        read_file: PathBuf,
        /// Bytes of the read file (suffixes k, M, G).
        #[arg(long, default_value = "64M", value_parser = parse_size)]
        read_size: u64,
        /// Reads in flight.
        #[arg(long, default_value_t = 64)]
        qd: u32,
        /// reads-drain: IOSQE_IO_DRAIN on every Nth read.
        #[arg(long, default_value_t = 16)]
        drain_every: u32,
        /// Seconds per variant per round.
        #[arg(long, default_value_t = 3.0)]
        duration: f64,
        /// Rounds; the variants alternate within each.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Variants to run, comma-separated [default: all].
        #[arg(long, value_delimiter = ',')]
        variant: Vec<drain::Variant>,
        /// Write results as JSON here too (default: the table only).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Random reads from one file: io_uring engines against pread, optionally beside fio,
    /// alternated in rounds; medians and spreads per engine.
    Fileread {
        /// File to read (created, or extended with real data, when smaller than --size).
        #[arg(long, default_value = "/tmp/ringwork-fileread.dat")]
        file: PathBuf,
        /// Bytes of the file to read from (suffixes k, M, G).
        #[arg(long, default_value = "256M", value_parser = parse_size)]
        size: u64,
        /// Bytes per read (suffixes k, M).
        #[arg(long, default_value = "4k", value_parser = parse_size)]
        bs: u64,
        /// Reads in flight (threads, for pread-pool).
        #[arg(long, default_value_t = 64)]
        qd: u32,
        /// Seconds per engine per round.
        #[arg(long, default_value_t = 5)]
        duration: u64,
        /// Rounds; the engines (and fio's runs) alternate within each, and the table gives
        /// each one's median and spread.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Engines to run, comma-separated [default: all].
        #[arg(long, value_delimiter = ',')]
        engine: Vec<fileread::Engine>,
        /// Also run fio on the same file (io_uring buffered; io_uring O_DIRECT with fixed
        /// buffers and registered files; psync), when installed.
        #[arg(long)]
        fio: bool,
        /// Drop the page cache before every run (needs root): cold-cache figures.
        #[arg(long)]
        drop_caches: bool,
        /// Read the whole file once before every run so that reads come from the page cache
        /// (the default without --drop-caches).
        #[arg(long, conflicts_with = "drop_caches")]
        warm: bool,
        /// Write results as JSON here too (default: the table only).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Large-file send paths from one pinned io_uring loop over loopback connections:
    /// READ_FIXED + SEND, linked SPLICE file → pipe → socket, SEND from an mmap, SEND_ZC;
    /// bytes/s and server CPU per byte.
    Sendpath {
        /// File sizes (suffixes k, M, G), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "64k,1M,16M,64M", value_parser = parse_size)]
        sizes: Vec<u64>,
        /// Loopback connections.
        #[arg(long, default_value_t = 8)]
        conns: usize,
        /// Bytes per read, splice or send (ringwork-files' default chunk).
        #[arg(long, default_value = "64k", value_parser = parse_size)]
        chunk: u64,
        /// Measured seconds per run.
        #[arg(long, default_value_t = 1.0)]
        duration: f64,
        /// Unmeasured seconds first, per run.
        #[arg(long, default_value_t = 0.25)]
        warmup: f64,
        /// Rounds; the variants alternate within each.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Variants to run, comma-separated [default: all].
        #[arg(long, value_delimiter = ',')]
        variant: Vec<sendpath::Variant>,
        /// Directory for the served files.
        #[arg(long, default_value = "/tmp")]
        dir: PathBuf,
        /// CPU of the server loop [default: the first this process may use].
        #[arg(long)]
        server_cpu: Option<usize>,
        /// CPU of the reader [default: the second this process may use].
        #[arg(long)]
        client_cpu: Option<usize>,
        /// Let io-wq workers run on any CPU, not only the server's.
        #[arg(long)]
        iowq_anywhere: bool,
        /// Write results as JSON here too (default: the table only).
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// `http://HOST:PORT/path` -> (address, path). Only numeric loopback-style addresses: the
/// benchmark never resolves names.
fn parse_url(url: &str) -> Result<(std::net::SocketAddr, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--url must start with http://, got {url:?}"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = host
        .parse()
        .map_err(|e| format!("--url host must be IP:PORT ({host:?}): {e}"))?;
    Ok((addr, path.to_string()))
}

/// "4k" -> 4096, "256M" -> 268435456, "4G", plain numbers.
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

fn main() {
    // Read before any pinning narrows what this process sees.
    ringwork_harness::pin::online_cpus();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Http {
            url,
            paths,
            conns,
            duration,
            warmup,
            server_pid,
            json,
        } => (|| -> Result<(), String> {
            ringwork_harness::raise_nofile_limit();
            let (addr, url_path) = parse_url(&url)?;
            let paths = if paths.is_empty() {
                vec![url_path]
            } else {
                paths
            };
            let cfg = http::Config {
                addr,
                paths,
                conns,
                duration: Duration::from_secs_f64(duration),
                warmup: Duration::from_secs_f64(warmup),
                server_pid,
            };
            println!("# ringwork-bench http on {}", stats::machine_line());
            println!("# {url}: {conns} conns, paths {:?}", cfg.paths);
            let out = http::run(&cfg)?;
            print!("{}", out.table());
            if let Some(path) = json {
                std::fs::write(&path, out.json() + "\n")
                    .map_err(|e| format!("write {}: {e}", path.display()))?;
            }
            if out.errors > 0 {
                return Err(format!("{} bad responses or connection errors", out.errors));
            }
            Ok(())
        })(),
        Command::Compare {
            quick,
            duration,
            warmup,
            out,
            server_bin,
            sqpoll,
            external,
            peers,
            files,
        } => (|| -> Result<(), String> {
            ringwork_harness::raise_nofile_limit();
            let server_bin = match server_bin {
                Some(p) => p,
                None => std::env::current_exe()
                    .map_err(|e| e.to_string())?
                    .with_file_name("ringwork-echo"),
            };
            if !server_bin.exists() {
                return Err(format!(
                    "{} not found: build it (cargo build --release -p ringwork-echo) or pass --server-bin",
                    server_bin.display()
                ));
            }
            let files_bin = if files {
                let bin = server_bin.with_file_name("ringwork-files");
                if !bin.exists() {
                    return Err(format!(
                        "--files needs {}: cargo build --release -p ringwork-files",
                        bin.display()
                    ));
                }
                Some(bin)
            } else {
                None
            };
            let mut backends = compare::default_backends(sqpoll);
            let peers_note = if peers {
                let peers = peers::prepare(&peers::source_dir());
                backends.extend(peers.backends);
                Some(peers.note)
            } else {
                None
            };
            backends.extend(external);
            let opts = compare::Options {
                server_bin,
                backends,
                cells: compare::matrix(quick),
                duration: Duration::from_secs_f64(duration.unwrap_or(if quick {
                    2.0
                } else {
                    5.0
                })),
                warmup: Duration::from_secs_f64(warmup.unwrap_or(if quick { 0.5 } else { 1.0 })),
                out_dir: out,
                files_bin,
                quick,
                peers_note,
                command_line: std::env::args()
                    .map(|a| a.rsplit('/').next().unwrap_or(&a).to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
            };
            let rows = compare::run(&opts)?;
            let errors: u64 = rows.iter().map(|r| r.outcome.errors).sum();
            println!(
                "wrote {} ({} rows, {} errors)",
                opts.out_dir.join("BENCHMARKS.md").display(),
                rows.len(),
                errors
            );
            if errors > 0 {
                return Err(format!("{errors} connection errors during the comparison"));
            }
            Ok(())
        })(),
        Command::Echo {
            addr,
            conns,
            size,
            depth,
            rate,
            duration,
            warmup,
            threads,
            server_pid,
            count_syscalls,
            json,
        } => (|| -> Result<(), String> {
            ringwork_harness::raise_nofile_limit();
            let cfg = echo::Config {
                addr,
                conns,
                size,
                depth,
                rate,
                duration: Duration::from_secs_f64(duration),
                warmup: Duration::from_secs_f64(warmup),
                threads,
                server_pid,
                count_syscalls: server_pid.is_some() && count_syscalls,
            };
            println!("# ringwork-bench echo on {}", stats::machine_line());
            println!(
                "# {addr}: {conns} conns, {size} B, {}",
                match rate {
                    Some(r) => format!("open loop at {r} msgs/s"),
                    None => format!("closed loop, depth {depth}"),
                }
            );
            let out = echo::run(&cfg)?;
            print!("{}", out.table());
            if let Some(path) = json {
                std::fs::write(&path, out.json() + "\n")
                    .map_err(|e| format!("write {}: {e}", path.display()))?;
            }
            if out.errors > 0 {
                return Err(format!("{} connection errors", out.errors));
            }
            Ok(())
        })(),
        Command::Drain {
            file,
            size,
            batch,
            in_flight,
            read_file,
            read_size,
            qd,
            drain_every,
            duration,
            rounds,
            variant,
            json,
        } => (|| -> Result<(), String> {
            if batch == 0 || in_flight == 0 || qd == 0 || drain_every == 0 || rounds == 0 {
                return Err(
                    "--batch, --in-flight, --qd, --drain-every and --rounds must be at least 1"
                        .into(),
                );
            }
            if size < u64::from(drain::BLOCK) || read_size < u64::from(drain::BLOCK) {
                return Err(format!(
                    "--size and --read-size must be at least {} bytes",
                    drain::BLOCK
                ));
            }
            let cfg = drain::Config {
                wal_path: file,
                wal_size: size,
                batch,
                in_flight,
                reads: fileread::Config {
                    path: read_file,
                    size: read_size,
                    bs: drain::BLOCK,
                    qd,
                    duration: Duration::from_secs_f64(duration),
                    seed: 0x5eed,
                    drain_every: 0,
                },
                drain_every,
                duration: Duration::from_secs_f64(duration),
                rounds,
            };
            let variants = if variant.is_empty() {
                drain::Variant::ALL.to_vec()
            } else {
                variant
            };
            println!("# ringwork-bench drain on {}", stats::machine_line());
            let results = drain::run_all(&cfg, &variants)?;
            print!("{}", drain::table(&cfg, &results));
            if let Some(path) = json {
                let body: Vec<String> = results.iter().map(|r| r.json()).collect();
                std::fs::write(&path, format!("[{}]\n", body.join(",")))
                    .map_err(|e| format!("write {}: {e}", path.display()))?;
            }
            Ok(())
        })(),
        Command::Fileread {
            file,
            size,
            bs,
            qd,
            duration,
            rounds,
            engine,
            fio,
            drop_caches: cold,
            warm: _,
            json,
        } => (|| -> Result<(), String> {
            if rounds == 0 {
                return Err("--rounds must be at least 1".into());
            }
            let cfg = fileread::Config {
                path: file,
                size,
                bs: u32::try_from(bs).map_err(|_| "--bs too large")?,
                qd,
                duration: Duration::from_secs(duration),
                seed: 0x5eed,
                drain_every: 0,
            };
            fileread::prepare_file(&cfg.path, cfg.size)
                .map_err(|e| format!("prepare {}: {e}", cfg.path.display()))?;
            let engines = if engine.is_empty() {
                fileread::Engine::ALL.to_vec()
            } else {
                engine
            };
            let cache = if cold {
                fileread::Cache::Cold
            } else {
                fileread::Cache::Warm
            };
            println!("# ringwork-bench fileread on {}", stats::machine_line());
            let results = fileread::run_rounds(&cfg, &engines, fio, cache, rounds)?;
            print!("{}", fileread::rounds_table(&cfg, &results));
            if let Some(path) = json {
                std::fs::write(&path, fileread::rounds_json(&cfg, &results))
                    .map_err(|e| format!("write {}: {e}", path.display()))?;
            }
            Ok(())
        })(),
        Command::Sendpath {
            sizes,
            conns,
            chunk,
            duration,
            warmup,
            rounds,
            variant,
            dir,
            server_cpu,
            client_cpu,
            iowq_anywhere,
            json,
        } => (|| -> Result<(), String> {
            if conns == 0 || rounds == 0 || chunk == 0 {
                return Err("--conns, --rounds and --chunk must be at least 1".into());
            }
            let (default_server, default_client) = sendpath::Config::default_cpus();
            let cfg = sendpath::Config {
                dir,
                sizes,
                conns,
                chunk: u32::try_from(chunk).map_err(|_| "--chunk too large")?,
                duration: Duration::from_secs_f64(duration),
                warmup: Duration::from_secs_f64(warmup),
                rounds,
                server_cpu: server_cpu.unwrap_or(default_server),
                client_cpu: client_cpu.unwrap_or(default_client),
                iowq_anywhere,
            };
            let variants = if variant.is_empty() {
                sendpath::Variant::ALL.to_vec()
            } else {
                variant
            };
            println!("# ringwork-bench sendpath on {}", stats::machine_line());
            // Other work on the machine moves these figures: say how busy it was.
            let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
            let load_before = load();
            let results = sendpath::run_all(&cfg, &variants)?;
            println!(
                "# load average before: {}; after: {}",
                load_before.trim(),
                load().trim()
            );
            print!("{}", sendpath::table(&cfg, &results));
            if let Some(path) = json {
                let body: Vec<String> = results.iter().map(|r| r.json()).collect();
                std::fs::write(&path, format!("[{}]\n", body.join(",")))
                    .map_err(|e| format!("write {}: {e}", path.display()))?;
            }
            Ok(())
        })(),
    };
    if let Err(e) = result {
        eprintln!("ringwork-bench: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let (a, p) = parse_url("http://127.0.0.1:8080/x/y.html").unwrap();
        assert_eq!(a.port(), 8080);
        assert_eq!(p, "/x/y.html");
        assert_eq!(parse_url("http://127.0.0.1:80").unwrap().1, "/");
        assert!(parse_url("https://127.0.0.1:1/").is_err());
        assert!(parse_url("http://localhost:1/").is_err());
    }

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
