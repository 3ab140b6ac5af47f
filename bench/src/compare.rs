//! `ringwork-bench compare`: the io_uring-vs-epoll report.
//!
//! Starts `ringwork-echo` once per backend, pinned to its own CPU with the load generator on
//! another (when there are at least two), runs the same matrix against each, counts the
//! server's syscalls with `perf stat` where perf works, and writes `BENCHMARKS.md` plus SVG
//! plots. Backends are run cell by cell in alternation (uring, epoll, uring, epoll, ...) so
//! that a noisy neighbour hurts both alike.
//!
//! Other servers join the same alternation as more backends: the peers of `--peers`
//! ([`crate::peers`]), and `--external` servers, either started from a command line (pinned
//! and measured like ringwork-echo) or already running at an address (not pinned, no CPU
//! figures).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ringwork_harness::pin;
use ringwork_harness::server::free_port;
pub(crate) use ringwork_harness::Server as RunningServer;

use crate::echo;
use crate::stats::{machine_line, thousands};

/// One server to measure.
#[derive(Clone, Debug)]
pub struct Backend {
    /// Column name.
    pub name: String,
    /// How it is started.
    pub server: Server,
}

/// How a backend's server comes to be.
#[derive(Clone, Debug, PartialEq)]
pub enum Server {
    /// `ringwork-echo` (the `--server-bin`) with these arguments.
    Echo(Vec<String>),
    /// A command line, run as `sh -c 'exec COMMAND'` after every `{port}` in it is replaced
    /// by a free loopback port that the server is to listen on (127.0.0.1).
    Command(String),
    /// One of `--peers` ([`crate::peers`]): a command line like [`Server::Command`], which the
    /// report describes in the peers' paragraph instead of quoting it (it names the binary's
    /// path on this machine).
    Peer(String),
    /// A server already running at this address: not started, not pinned, no CPU figures.
    Address(SocketAddr),
}

/// What a command line's `{port}` is replaced with.
pub const PORT_PLACEHOLDER: &str = "{port}";

/// One cell of the matrix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cell {
    /// Message size.
    pub size: usize,
    /// Connections.
    pub conns: usize,
    /// Open-loop rate, or closed loop at depth 1.
    pub rate: Option<f64>,
}

/// The matrix, per the benchmark issue: 64 B, 512 B, 4 KiB x 50 and 500 connections closed
/// loop. `quick` keeps it under two minutes. The 10,000-connection open-loop cell runs apart,
/// in rounds ([`crate::c10k`]).
pub fn matrix(quick: bool) -> Vec<Cell> {
    if quick {
        return vec![
            Cell {
                size: 64,
                conns: 50,
                rate: None,
            },
            Cell {
                size: 512,
                conns: 500,
                rate: None,
            },
            Cell {
                size: 64,
                conns: 1000,
                rate: Some(5000.0),
            },
        ];
    }
    let mut cells = Vec::new();
    for size in [64, 512, 4096] {
        for conns in [50, 500] {
            cells.push(Cell {
                size,
                conns,
                rate: None,
            });
        }
    }
    cells
}

/// A measured cell.
#[derive(Clone, Debug)]
pub struct Row {
    /// Which backend.
    pub backend: String,
    /// Which cell.
    pub cell: Cell,
    /// The generator's result, with the server's CPU and syscall counts.
    pub outcome: echo::Outcome,
}

impl Row {
    /// (syscalls, io_uring_enter calls) per message, when perf counted them.
    fn per_msg(&self) -> (Option<f64>, Option<f64>) {
        match self.outcome.server_syscalls_per_msg() {
            Some((all, enters)) => (Some(all), Some(enters)),
            None => (None, None),
        }
    }
}

/// Options of a comparison run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The ringwork-echo binary.
    pub server_bin: PathBuf,
    /// Backends to compare.
    pub backends: Vec<Backend>,
    /// Cells to run.
    pub cells: Vec<Cell>,
    /// Measured seconds per cell.
    pub duration: Duration,
    /// Warm-up seconds per cell.
    pub warmup: Duration,
    /// Where BENCHMARKS.md and the SVGs go.
    pub out_dir: PathBuf,
    /// The command line, quoted in the report.
    pub command_line: String,
    /// The ringwork-files binary: when set, the file-heavy and mixed workloads run too.
    pub files_bin: Option<PathBuf>,
    /// Smaller workloads.
    pub quick: bool,
    /// What the report says about `--peers` (which were measured, which could not be built
    /// or started, and why), when it was given.
    pub peers_note: Option<String>,
    /// The site cells' directory (`--site`); `None`: the default generated site.
    pub site: Option<PathBuf>,
    /// Run only the site cells (`--site-only`).
    pub site_only: bool,
    /// Rounds of the site cells.
    pub site_rounds: u32,
    /// Rounds of the 10,000-connection open-loop cell.
    pub c10k_rounds: u32,
    /// Run only the 10,000-connection open-loop cell (`--c10k-only`).
    pub c10k_only: bool,
    /// Run only the HTTPS cells (`--files --tls`).
    pub tls_only: bool,
}

/// The default backends: ringwork-echo's io_uring and epoll backends, one thread each.
pub fn default_backends(sqpoll: bool) -> Vec<Backend> {
    let mut v = vec![
        Backend {
            name: "uring".into(),
            server: Server::Echo(vec!["--backend".into(), "uring".into()]),
        },
        Backend {
            name: "epoll".into(),
            server: Server::Echo(vec!["--backend".into(), "epoll".into()]),
        },
    ];
    if sqpoll {
        v.insert(
            1,
            Backend {
                name: "uring+sqpoll".into(),
                server: Server::Echo(vec!["--backend".into(), "uring".into(), "--sqpoll".into()]),
            },
        );
    }
    v
}

/// The names of ringwork-echo's own backends, which every other server is compared with.
fn is_ringwork(name: &str) -> bool {
    matches!(name, "uring" | "epoll" | "uring+sqpoll")
}

/// Parses `NAME=HOST:PORT` (a running server) or `NAME=COMMAND` (a command line with
/// `{port}` where the port goes).
pub fn parse_external(s: &str) -> Result<Backend, String> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("--external wants NAME=HOST:PORT or NAME=COMMAND, got {s:?}"))?;
    if name.is_empty() || name.contains('|') {
        return Err(format!(
            "--external {s:?}: the name must be non-empty, without '|'"
        ));
    }
    if is_ringwork(name) {
        return Err(format!(
            "--external {s:?}: {name} is the name of one of ringwork-echo's own backends"
        ));
    }
    let server = match rest.parse() {
        Ok(addr) => Server::Address(addr),
        Err(_) if rest.contains(PORT_PLACEHOLDER) => Server::Command(rest.to_string()),
        Err(e) => {
            return Err(format!(
                "--external {s:?}: neither an address ({e}) nor a command with {PORT_PLACEHOLDER}"
            ))
        }
    };
    Ok(Backend {
        name: name.to_string(),
        server,
    })
}

/// `s` in single quotes for `sh`, so that a path with spaces stays one word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// How long a server the benchmark is done with gets to exit after SIGTERM: Ringwork's own
/// drain within their grace periods (5 s at most by default); one started from someone else's
/// command line may ignore SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The CPU servers run on: the last one, when there are two or more (the generator has CPU 0).
pub(crate) fn server_cpu() -> Option<usize> {
    let cpus = pin::online_cpus();
    (cpus >= 2).then(|| cpus - 1)
}

/// Pins the calling thread (and the load threads it starts) to CPU 0, when there are two or
/// more CPUs; servers go on the last one.
pub(crate) fn pin_generator() {
    if server_cpu().is_some() {
        let _ = pin::pin_thread(0, 0);
    }
}

/// Runs `spawn` on the server CPU, then moves the calling thread back to the generator's: a
/// child inherits its parent thread's affinity at fork, so every thread the server ever
/// starts (a master's workers, io-wq workers) begins on the server CPU.
pub(crate) fn spawn_on_server_cpu<T>(spawn: impl FnOnce() -> T) -> T {
    let Some(cpu) = server_cpu() else {
        return spawn();
    };
    let _ = pin::pin_thread(0, cpu);
    let spawned = spawn();
    let _ = pin::pin_thread(0, 0);
    spawned
}

/// Starts a Ringwork server binary on an ephemeral loopback port with one thread, waits for
/// its `listening on ADDR` line, and pins its threads to the server CPU.
pub(crate) fn start_server(bin: &Path, args: &[String]) -> Result<RunningServer, String> {
    let server = RunningServer::start(
        Command::new(bin)
            .args(["--listen", "127.0.0.1:0", "--threads", "1"])
            .args(args)
            .stderr(Stdio::inherit()),
    )
    .map_err(|e| format!("{} {e}", bin.display()))?
    .terminate_when_dropped(STOP_GRACE);
    // Every server thread exists once it prints its address: pin them all (they inherited
    // the generator's CPU 0 at spawn).
    if let Some(cpu) = server_cpu() {
        pin::pin_process(server.pid(), cpu);
    }
    Ok(server)
}

/// Starts `command` (see [`Server::Command`]) on the server CPU, and waits until it accepts
/// connections on its port. Its threads start on the server CPU (the affinity is inherited at
/// fork), so any it starts later are pinned too.
pub(crate) fn start_command(command: &str) -> Result<RunningServer, String> {
    let port = free_port()?;
    let line = command.replace(PORT_PLACEHOLDER, &port.to_string());
    // `exec`: the process measured (its pid, its threads' CPU time, its syscalls) is the
    // server itself, not a shell waiting for it.
    let server = spawn_on_server_cpu(|| {
        RunningServer::start_at(
            Command::new("sh")
                .arg("-c")
                .arg(format!("exec {line}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
            SocketAddr::from(([127, 0, 0, 1], port)),
        )
    })
    .map_err(|e| format!("`{line}` {e}"))?
    .terminate_when_dropped(STOP_GRACE);
    if let Some(cpu) = server_cpu() {
        pin::pin_process(server.pid(), cpu);
    }
    Ok(server)
}

/// The site cells ([`crate::sitecompare`]) with `opts`' durations and site.
fn site_cells(opts: &Options, files_bin: &Path) -> Result<(String, u64), String> {
    let source = match &opts.site {
        Some(dir) => crate::sitecompare::SiteSource::Dir(dir),
        // A tenth of the files for --quick: the generation and warming take seconds.
        None => crate::sitecompare::SiteSource::Generated {
            files: if opts.quick {
                crate::site::DEFAULT_FILES / 10
            } else {
                crate::site::DEFAULT_FILES
            },
        },
    };
    crate::sitecompare::versus(
        files_bin,
        source,
        opts.duration,
        opts.warmup,
        opts.site_rounds,
    )
}

/// `--files --tls`: the HTTPS cells alone ([`crate::tlscompare`]), their report written
/// whatever happened, then an error for ringwork-files not serving HTTPS or for errors.
fn tls_cells(opts: &Options) -> Result<Vec<Row>, String> {
    let files_bin = opts.files_bin.as_deref().ok_or("--tls needs --files")?;
    let found = crate::tlscompare::versus(files_bin, opts.duration, opts.warmup, opts.quick)?;
    let report = format!(
        "# Ringwork HTTPS benchmark\n\nProduced by `{}`.\n\nMachine: {}.\n{}",
        opts.command_line,
        machine_line(),
        found.text
    );
    write_report(opts, &report)?;
    if let Some(why) = found.files_missing {
        return Err(format!(
            "{why} (nginx was measured alone; the report was written)"
        ));
    }
    if found.errors > 0 {
        return Err(format!(
            "{} failed connects, bad responses or TLS failures in the HTTPS cells (the report \
             was written)",
            found.errors
        ));
    }
    Ok(Vec::new())
}

/// Writes `report` as BENCHMARKS.md in `opts.out_dir`.
fn write_report(opts: &Options, report: &str) -> Result<(), String> {
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| e.to_string())?;
    std::fs::write(opts.out_dir.join("BENCHMARKS.md"), report).map_err(|e| e.to_string())
}

/// Starts `b`'s server, pinned; None for a server already running at an address.
pub(crate) fn start_backend(
    server_bin: &Path,
    b: &Backend,
) -> Result<Option<RunningServer>, String> {
    Ok(match &b.server {
        Server::Echo(args) => Some(start_server(server_bin, args)?),
        Server::Command(command) | Server::Peer(command) => {
            Some(start_command(command).map_err(|e| format!("{}: {e}", b.name))?)
        }
        Server::Address(_) => None,
    })
}

/// Runs `cell` against `b` (its server from [`start_backend`]) and prints a line of progress.
pub(crate) fn measure(
    b: &Backend,
    server: Option<&RunningServer>,
    cell: &Cell,
    duration: Duration,
    warmup: Duration,
) -> Result<echo::Outcome, String> {
    let addr = match (&b.server, server) {
        (Server::Address(addr), _) => *addr,
        (_, Some(s)) => s.addr,
        // start_backend starts every server that is not at an address.
        (_, None) => unreachable!("backend {} has no server", b.name),
    };
    let cfg = echo::Config {
        addr,
        conns: cell.conns,
        size: cell.size,
        depth: 1,
        rate: cell.rate,
        duration,
        warmup,
        threads: 1,
        server_pid: server.map(RunningServer::pid),
        count_syscalls: true,
        lines: false,
    };
    let outcome = echo::run(&cfg).map_err(|e| format!("{} {cell:?}: {e}", b.name))?;
    eprintln!(
        "{:>12} {:>5} B x {:>5} {}: {:>9} msgs/s p99 {:>7.0} µs errors {}",
        b.name,
        cell.size,
        cell.conns,
        cell.rate.map_or("closed".into(), |r| format!("open@{r}")),
        thousands(outcome.msgs_per_sec()),
        outcome.latency.p99_us,
        outcome.errors
    );
    Ok(outcome)
}

/// Runs the comparison and writes the report; returns the rows.
pub fn run(opts: &Options) -> Result<Vec<Row>, String> {
    pin_generator();
    if opts.site_only {
        let files_bin = opts
            .files_bin
            .as_deref()
            .ok_or("--site-only needs ringwork-files")?;
        let (text, errors) = site_cells(opts, files_bin)?;
        let report = format!(
            "# Ringwork site benchmark\n\nProduced by `{}`.\n\nMachine: {}.\n{text}",
            opts.command_line,
            machine_line()
        );
        write_report(opts, &report)?;
        if errors > 0 {
            return Err(format!(
                "{errors} failed connects or bad responses in the site cells (the report was \
                 written)"
            ));
        }
        return Ok(Vec::new());
    }
    let c10k_window = crate::c10k::Window {
        rounds: opts.c10k_rounds,
        // --quick keeps the run's own short window: a smoke test of the cell, not a figure.
        duration: if opts.quick {
            opts.duration
        } else {
            crate::c10k::DURATION
        },
        warmup: if opts.quick {
            opts.warmup
        } else {
            crate::c10k::WARMUP
        },
    };
    if opts.tls_only {
        return tls_cells(opts);
    }
    if opts.c10k_only {
        let c10k = crate::c10k::run(&opts.server_bin, &opts.backends, c10k_window)?;
        let report = format!(
            "# Ringwork echo benchmark: 10,000 connections, open loop\n\nProduced by `{}`.\n\n\
             Machine: {}.\n{}",
            opts.command_line,
            machine_line(),
            crate::c10k::section(&c10k)
        );
        write_report(opts, &report)?;
        return Ok(c10k.rows());
    }
    let mut servers = Vec::new();
    for b in &opts.backends {
        servers.push(start_backend(&opts.server_bin, b)?);
    }
    let mut rows = Vec::new();
    for cell in &opts.cells {
        for (b, s) in opts.backends.iter().zip(&servers) {
            let outcome = measure(b, s.as_ref(), cell, opts.duration, opts.warmup)?;
            rows.push(Row {
                backend: b.name.clone(),
                cell: *cell,
                outcome,
            });
        }
    }
    drop(servers);
    let c10k = crate::c10k::run(&opts.server_bin, &opts.backends, c10k_window)?;
    let mut report = report(opts, &rows, Some(&c10k));
    rows.extend(c10k.rows());
    let mut file_errors = 0;
    if let Some(files_bin) = &opts.files_bin {
        report.push_str(&crate::workloads::file_heavy(opts.duration, opts.quick)?);
        report.push_str(&crate::workloads::mixed(
            files_bin,
            opts.duration,
            opts.warmup,
        )?);
        let (text, errors) =
            crate::nginx::versus(files_bin, opts.duration, opts.warmup, opts.quick)?;
        report.push_str(&text);
        let (text, site_errors) = site_cells(opts, files_bin)?;
        report.push_str(&text);
        file_errors = errors + site_errors;
    }
    write_report(opts, &report)?;
    for (file, svg) in plots(opts, &rows) {
        std::fs::write(opts.out_dir.join(file), svg).map_err(|e| e.to_string())?;
    }
    if file_errors > 0 {
        return Err(format!(
            "{file_errors} failed connects or bad responses against ringwork-files or nginx \
             (the report was written)"
        ));
    }
    Ok(rows)
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// The Markdown report: the matrix's rows, then the 10,000-connection cell's rounds when
/// they ran.
pub fn report(opts: &Options, rows: &[Row], c10k: Option<&crate::c10k::Section>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Ringwork echo benchmark: io_uring against epoll\n");
    let _ = writeln!(s, "Produced by `{}`.\n", opts.command_line);
    let _ = writeln!(
        s,
        "Machine: {}. Server: one worker thread{}; load generator: `ringwork-bench echo`, one thread{}. \
         {} s measured after {} s warm-up per cell; cells alternate between backends.\n",
        machine_line(),
        if server_cpu().is_some() { ", pinned to the last CPU" } else { "" },
        if server_cpu().is_some() { ", pinned to CPU 0" } else { "" },
        opts.duration.as_secs_f64(),
        opts.warmup.as_secs_f64(),
    );
    let _ = writeln!(
        s,
        "Server CPU is the run time of the server's threads over the measured window, from \
         /proc/PID/task/*/schedstat (exact, in ns; sampled 10 ms ticks from /proc/PID/stat only \
         where schedstats are missing). \
         Syscalls are counted by `perf stat -e raw_syscalls:sys_enter -e syscalls:sys_enter_io_uring_enter -p PID` \
         over the same window (\"-\" where perf is unavailable).\n"
    );
    if opts.backends.iter().any(|b| b.name == "uring+sqpoll") {
        let _ = writeln!(
            s,
            "uring+sqpoll: the SQPOLL poller (`iou-sqp-TID`) is a thread of the server process, so \
             its CPU time is counted with the worker's and it is pinned with the server's other threads{}; \
             it spins for its 10 ms idle time after each submission, which at low load costs \
             about a whole CPU. Its io_uring_enter count is the worker's waits for completions.\n",
            if server_cpu().is_some() { " (it shares the last CPU with the worker)" } else { "" }
        );
    }
    if let Some(note) = &opts.peers_note {
        let _ = writeln!(s, "{}\n", note.trim_end());
    }
    for b in &opts.backends {
        match &b.server {
            Server::Command(command) => {
                let _ = writeln!(
                    s,
                    "{}: started as `{command}`{}.\n",
                    b.name,
                    if server_cpu().is_some() {
                        ", pinned to the last CPU like ringwork-echo"
                    } else {
                        ""
                    }
                );
            }
            Server::Address(addr) => {
                let _ = writeln!(
                    s,
                    "{}: already running at {addr}, not started here: not pinned, no CPU or \
                     syscall figures.\n",
                    b.name
                );
            }
            Server::Echo(_) | Server::Peer(_) => {}
        }
    }
    let _ = writeln!(
        s,
        "| backend | size | conns | load | msgs/s | p50 µs | p95 µs | p99 µs | p99.9 µs | server CPU µs/msg | syscalls/msg | io_uring_enter/msg | errors |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        let o = &r.outcome;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |",
            r.backend,
            r.cell.size,
            r.cell.conns,
            r.cell.rate.map_or("closed, depth 1".into(), |v| format!(
                "open, {} msgs/s",
                thousands(v)
            )),
            thousands(o.msgs_per_sec()),
            o.latency.p50_us,
            o.latency.p95_us,
            o.latency.p99_us,
            o.latency.p999_us,
            fmt_opt(o.server_us_per_msg(), 2),
            fmt_opt(r.per_msg().0, 3),
            fmt_opt(r.per_msg().1, 3),
            o.errors
        );
    }
    // Ratios, uring against epoll, per cell: the figures the targets are stated in.
    let by = |name: &str, cell: &Cell| rows.iter().find(|r| r.backend == name && r.cell == *cell);
    let mut ratio_lines = String::new();
    for cell in &opts.cells {
        if let (Some(u), Some(e)) = (by("uring", cell), by("epoll", cell)) {
            let cpu = match (u.outcome.server_us_per_msg(), e.outcome.server_us_per_msg()) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                _ => "-".into(),
            };
            let _ = writeln!(
                ratio_lines,
                "| {} B x {} {} | {:.2}x | {} |",
                cell.size,
                cell.conns,
                if cell.rate.is_some() {
                    "open"
                } else {
                    "closed"
                },
                u.outcome.msgs_per_sec() / e.outcome.msgs_per_sec().max(1e-9),
                cpu
            );
        }
    }
    if !ratio_lines.is_empty() {
        let _ = writeln!(s, "\n## uring / epoll\n");
        let _ = writeln!(
            s,
            "| cell | msgs/s ratio | server CPU per msg ratio (target ≤ 0.75x) |"
        );
        let _ = writeln!(s, "| --- | ---: | ---: |");
        s.push_str(&ratio_lines);
    }
    if let Some(c10k) = c10k {
        s.push_str(&crate::c10k::section(c10k));
    }
    s.push_str(&others_table(opts, rows));
    let _ = writeln!(
        s,
        "\n![throughput](echo-throughput.svg) ![p99](echo-p99.svg)"
    );
    s
}

/// ringwork-echo's io_uring backend against every server that is not ringwork-echo, per cell:
/// messages/s and server CPU per message, as ratios (uring / the other); empty when there are
/// none.
fn others_table(opts: &Options, rows: &[Row]) -> String {
    let others: Vec<&Backend> = opts
        .backends
        .iter()
        .filter(|b| !is_ringwork(&b.name))
        .collect();
    let by = |name: &str, cell: &Cell| rows.iter().find(|r| r.backend == name && r.cell == *cell);
    let mut s = String::new();
    for cell in &opts.cells {
        let Some(u) = by("uring", cell) else { continue };
        for other in &others {
            let Some(o) = by(&other.name, cell) else {
                continue;
            };
            let cpu = match (u.outcome.server_us_per_msg(), o.outcome.server_us_per_msg()) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                _ => "-".into(),
            };
            let _ = writeln!(
                s,
                "| {} B x {} {} | {} | {:.2}x | {} |",
                cell.size,
                cell.conns,
                if cell.rate.is_some() {
                    "open"
                } else {
                    "closed"
                },
                other.name,
                u.outcome.msgs_per_sec() / o.outcome.msgs_per_sec().max(1e-9),
                cpu
            );
        }
    }
    if s.is_empty() {
        return s;
    }
    format!(
        "\n## uring / other servers\n\n\
         ringwork-echo's io_uring backend against each other server in the same cells (above 1x: \
         uring moves more messages; below 1x: uring spends less CPU per message).\n\n\
         | cell | against | msgs/s ratio | server CPU per msg ratio |\n\
         | --- | --- | ---: | ---: |\n{s}"
    )
}

/// SVG line plots of throughput and p99 against connections, one line per backend
/// (closed-loop 64 B cells).
pub fn plots(opts: &Options, rows: &[Row]) -> Vec<(&'static str, String)> {
    let size = 64;
    let series = |f: &dyn Fn(&Row) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        opts.backends
            .iter()
            .map(|b| {
                let pts = rows
                    .iter()
                    .filter(|r| r.backend == b.name && r.cell.size == size && r.cell.rate.is_none())
                    .map(|r| (r.cell.conns as f64, f(r)))
                    .collect();
                (b.name.clone(), pts)
            })
            .collect()
    };
    vec![
        (
            "echo-throughput.svg",
            svg_plot(
                "64 B echo, closed loop: messages/s",
                "connections",
                "msgs/s",
                &series(&|r| r.outcome.msgs_per_sec()),
            ),
        ),
        (
            "echo-p99.svg",
            svg_plot(
                "64 B echo, closed loop: p99 latency",
                "connections",
                "p99 µs",
                &series(&|r| r.outcome.latency.p99_us),
            ),
        ),
    ]
}

/// SVG canvas size.
const PLOT_WIDTH: f64 = 560.0;
const PLOT_HEIGHT: f64 = 320.0;
/// Space around the plot area: the y labels on the left, the legend on the right, the title
/// above, the x labels below.
const PAD_LEFT: f64 = 70.0;
const PAD_RIGHT: f64 = 130.0;
const PAD_TOP: f64 = 40.0;
const PAD_BOTTOM: f64 = 50.0;
/// Line colours, reused in order past the seventh series.
const COLORS: [&str; 7] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf",
];

/// A minimal dependency-free SVG line chart with a log-scale x axis.
pub fn svg_plot(
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|s| s.1.iter().copied()).collect();
    let scale = Scale::fit(&pts);
    let mut s = String::new();
    scale.write_frame(&mut s, title, xlabel, ylabel, &pts);
    for (i, (name, points)) in series.iter().enumerate() {
        scale.write_series(&mut s, i, name, points);
    }
    s.push_str("</svg>\n");
    s
}

/// Data to SVG coordinates: x on a log scale between the smallest and largest x, y linear
/// from 0 to 10% above the largest y.
struct Scale {
    lx0: f64,
    lx1: f64,
    ymax: f64,
}

impl Scale {
    fn fit(pts: &[(f64, f64)]) -> Self {
        let (xmin, xmax) = pts
            .iter()
            .fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.0), a.1.max(p.0)));
        let ymax = pts.iter().fold(0.0f64, |a, p| a.max(p.1)) * 1.1;
        let (lx0, lx1) = (xmin.max(1.0).ln(), xmax.max(xmin + 1.0).ln());
        Self { lx0, lx1, ymax }
    }

    fn x(&self, v: f64) -> f64 {
        PAD_LEFT
            + (v.max(1.0).ln() - self.lx0) / (self.lx1 - self.lx0).max(1e-9)
                * (PLOT_WIDTH - PAD_LEFT - PAD_RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        PLOT_HEIGHT - PAD_BOTTOM - v / self.ymax.max(1e-9) * (PLOT_HEIGHT - PAD_TOP - PAD_BOTTOM)
    }

    /// The opening tag, background, title, axes, y grid with labels, a label under every x
    /// that has a point, and the axis titles.
    fn write_frame(
        &self,
        s: &mut String,
        title: &str,
        xlabel: &str,
        ylabel: &str,
        pts: &[(f64, f64)],
    ) {
        let (w, h, l, r, t, b) = (
            PLOT_WIDTH,
            PLOT_HEIGHT,
            PAD_LEFT,
            PAD_RIGHT,
            PAD_TOP,
            PAD_BOTTOM,
        );
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = write!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = write!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
            w / 2.0,
            esc(title)
        );
        let _ = write!(
            s,
            r#"<line x1="{l}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{l}" y1="{t}" x2="{l}" y2="{}" stroke="black"/>"#,
            h - b,
            w - r,
            h - b,
            h - b
        );
        for i in 0..=4 {
            let v = self.ymax * f64::from(i) / 4.0;
            let _ = write!(
                s,
                r##"<text x="{}" y="{}" text-anchor="end">{}</text><line x1="{l}" y1="{}" x2="{}" y2="{}" stroke="#ddd"/>"##,
                l - 6.0,
                self.y(v) + 4.0,
                thousands(v),
                self.y(v),
                w - r,
                self.y(v)
            );
        }
        let mut xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
        xs.sort_by(|a, b| a.total_cmp(b));
        xs.dedup();
        for v in xs {
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                self.x(v),
                h - b + 18.0,
                thousands(v)
            );
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            (l + w - r) / 2.0,
            h - 10.0,
            esc(xlabel)
        );
        let _ = write!(
            s,
            r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
            (t + h - b) / 2.0,
            (t + h - b) / 2.0,
            esc(ylabel)
        );
    }

    /// Series number `i`: its line, a dot on every point, and its legend entry.
    fn write_series(&self, s: &mut String, i: usize, name: &str, points: &[(f64, f64)]) {
        let (w, r, t) = (PLOT_WIDTH, PAD_RIGHT, PAD_TOP);
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", self.x(p.0), self.y(p.1)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for p in points {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                self.x(p.0),
                self.y(p.1)
            );
        }
        let ly = t + 10.0 + 18.0 * i as f64;
        let _ = write!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            w - r + 10.0,
            w - r + 30.0,
            w - r + 35.0,
            ly + 4.0,
            esc(name)
        );
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `ringwork-bench compare`'s options.
#[derive(clap::Args)]
pub struct Args {
    /// A small matrix (three echo cells, one short round of the 10,000-connection cell;
    /// with --files, smaller file workloads) that finishes in under two minutes.
    #[arg(long)]
    quick: bool,
    /// Measured seconds per cell [default: 5; 2 with --quick].
    #[arg(long)]
    duration: Option<f64>,
    /// Unmeasured warm-up seconds per cell [default: 1; 0.5 with --quick].
    #[arg(long)]
    warmup: Option<f64>,
    /// Directory for BENCHMARKS.md and the SVG plots [default: .]. Required with --site-only
    /// and --c10k-only, whose report holds only their cells (in . it would replace the
    /// repository's whole BENCHMARKS.md).
    #[arg(long)]
    out: Option<PathBuf>,
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
    #[arg(long, value_parser = parse_external)]
    external: Vec<Backend>,
    /// Also build (cargo, release) and measure the echo servers in bench/peers: tokio
    /// (current-thread) and monoio (io_uring). Peers that cannot be built or started are
    /// left out, and the report says why.
    #[arg(long)]
    peers: bool,
    /// Also run the file-heavy (random reads) and mixed (HTTP file serving with
    /// ringwork-files, found next to this binary) workloads, and ringwork-files against
    /// nginx (when `nginx` is on PATH): one file per cell, then the site cells (every file of
    /// a site, uniform and Zipf 1).
    #[arg(long)]
    files: bool,
    /// The site cells serve this directory (every regular file under it; nginx's workers
    /// must be able to read it) instead of the default generated site (`ringwork-bench
    /// site`, 30,000 files, 3,000 with --quick, written to a temporary directory).
    #[arg(long, value_name = "DIR")]
    site: Option<PathBuf>,
    /// Run only the site cells (implies --files): no echo, file-heavy, mixed or single-file
    /// cells.
    #[arg(long)]
    site_only: bool,
    /// Rounds of the site cells [default: 3; 1 with --quick].
    #[arg(long, value_name = "N")]
    site_rounds: Option<u32>,
    /// Rounds of the 10,000-connection open-loop echo cell (64 B at 20,000 msgs/s), the
    /// backends alternated within each; each round measures 5 s after 1 s of warm-up
    /// whatever --duration says (--quick: the run's --duration and --warmup) [default: 3; 1
    /// with --quick].
    #[arg(long, value_name = "N")]
    c10k_rounds: Option<u32>,
    /// Run only the 10,000-connection open-loop echo cell: no other echo, file or site cells.
    #[arg(long, conflicts_with_all = ["site_only", "files"])]
    c10k_only: bool,
    /// With --files, run only the HTTPS cells: ringwork-files (--tls-listen) against nginx
    /// (`listen ... ssl`, when on PATH) with a self-signed ECDSA P-256 certificate made by
    /// the `openssl` command: keep-alive 4 KiB and 1 MiB x 100 connections, and new
    /// connections per second with full and with resumed handshakes (3 rounds; 1 with
    /// --quick). Needs --out DIR. Fails (after writing the report) when ringwork-files does
    /// not serve HTTPS.
    #[arg(long, requires = "files", conflicts_with = "site_only")]
    tls: bool,
}

/// `ringwork-bench compare`: finds the servers, runs the comparison, writes the report.
pub fn run_command(args: Args) -> Result<(), String> {
    let out_dir = match (
        args.out.clone(),
        args.site_only || args.c10k_only || args.tls,
    ) {
        (Some(dir), _) => dir,
        (None, false) => PathBuf::from("."),
        (None, true) => {
            return Err(
                "--site-only, --c10k-only and --tls write a report of only their cells: \
                        name its directory with --out DIR (the default, ., would replace \
                        the whole BENCHMARKS.md)"
                    .into(),
            )
        }
    };
    ringwork_harness::raise_nofile_limit();
    let server_bin = match args.server_bin {
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
    let files_bin = if args.files || args.site_only {
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
    let mut backends = default_backends(args.sqpoll);
    let peers_note = if args.peers {
        let peers = crate::peers::prepare(&crate::peers::source_dir());
        backends.extend(peers.backends);
        Some(peers.note)
    } else {
        None
    };
    backends.extend(args.external);
    let quick = args.quick;
    let opts = Options {
        server_bin,
        backends,
        cells: matrix(quick),
        duration: Duration::from_secs_f64(args.duration.unwrap_or(if quick { 2.0 } else { 5.0 })),
        warmup: Duration::from_secs_f64(args.warmup.unwrap_or(if quick { 0.5 } else { 1.0 })),
        out_dir,
        files_bin,
        quick,
        peers_note,
        site: args.site,
        site_only: args.site_only,
        site_rounds: args.site_rounds.unwrap_or(if quick { 1 } else { 3 }).max(1),
        c10k_rounds: args.c10k_rounds.unwrap_or(if quick { 1 } else { 3 }).max(1),
        c10k_only: args.c10k_only,
        tls_only: args.tls,
        command_line: std::env::args()
            .map(|a| a.rsplit('/').next().unwrap_or(&a).to_string())
            .collect::<Vec<_>>()
            .join(" "),
    };
    let rows = run(&opts)?;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(backend: &str, conns: usize, msgs: u64, cpu_ms: u64) -> Row {
        Row {
            backend: backend.into(),
            cell: Cell {
                size: 64,
                conns,
                rate: None,
            },
            outcome: echo::Outcome {
                msgs,
                elapsed: Duration::from_secs(1),
                server_cpu: Some(Duration::from_millis(cpu_ms)),
                size: 64,
                server_syscalls: Some((msgs / 10, msgs / 20)),
                ..Default::default()
            },
        }
    }

    fn opts() -> Options {
        Options {
            server_bin: "ringwork-echo".into(),
            backends: default_backends(false),
            cells: vec![
                Cell {
                    size: 64,
                    conns: 50,
                    rate: None,
                },
                Cell {
                    size: 64,
                    conns: 500,
                    rate: None,
                },
            ],
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            out_dir: ".".into(),
            command_line: "ringwork-bench compare".into(),
            files_bin: None,
            quick: false,
            peers_note: None,
            site: None,
            site_only: false,
            site_rounds: 1,
            c10k_rounds: 1,
            c10k_only: false,
            tls_only: false,
        }
    }

    #[test]
    fn report_has_every_row_and_the_ratios() {
        let rows = vec![
            row("uring", 50, 100_000, 500),
            row("epoll", 50, 80_000, 800),
            row("uring", 500, 90_000, 450),
            row("epoll", 500, 70_000, 700),
        ];
        let r = report(&opts(), &rows, None);
        assert_eq!(r.lines().filter(|l| l.starts_with("| uring |")).count(), 2);
        assert_eq!(r.lines().filter(|l| l.starts_with("| epoll |")).count(), 2);
        // uring: 500 ms / 100,000 msgs = 5 µs; epoll: 800 ms / 80,000 = 10 µs: ratio 0.50x.
        assert!(r.contains("| 64 B x 50 closed | 1.25x | 0.50x |"), "{r}");
        assert!(
            r.contains("| 0.100 | 0.050 |"),
            "syscalls and enters per message: {r}"
        );
    }

    #[test]
    fn svg_has_one_line_per_backend() {
        let rows = vec![
            row("uring", 50, 100_000, 500),
            row("epoll", 50, 80_000, 800),
            row("uring", 500, 90_000, 450),
            row("epoll", 500, 70_000, 700),
        ];
        let plots = plots(&opts(), &rows);
        assert_eq!(plots.len(), 2);
        for (_, svg) in plots {
            assert_eq!(svg.matches("<polyline").count(), 2);
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        }
    }

    #[test]
    fn external_parses() {
        let b = parse_external("nginx=127.0.0.1:9000").unwrap();
        assert_eq!(b.name, "nginx");
        assert_eq!(b.server, Server::Address("127.0.0.1:9000".parse().unwrap()));
        let b = parse_external("c=./epoll-echo -p {port} -v").unwrap();
        assert_eq!(
            b.server,
            Server::Command("./epoll-echo -p {port} -v".into())
        );
        // The first '=' ends the name; a command may hold more.
        let b = parse_external("c=./srv --listen=127.0.0.1:{port}").unwrap();
        assert_eq!(
            (b.name.as_str(), b.server),
            (
                "c",
                Server::Command("./srv --listen=127.0.0.1:{port}".into())
            )
        );
        assert!(parse_external("nginx").is_err());
        assert!(
            parse_external("x=notanaddr").is_err(),
            "neither an address nor {{port}}"
        );
        assert!(parse_external("=127.0.0.1:1").is_err());
        assert!(
            parse_external("uring=127.0.0.1:1").is_err(),
            "ringwork-echo's own name"
        );
    }

    #[test]
    fn shell_quoting_keeps_one_word() {
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote("it's $HOME")))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's $HOME");
    }

    #[test]
    fn others_are_compared_with_uring() {
        let mut o = opts();
        o.backends
            .push(parse_external("tokio=true {port}").unwrap());
        let rows = vec![
            row("uring", 50, 100_000, 500),
            row("epoll", 50, 80_000, 800),
            row("tokio", 50, 50_000, 1000),
        ];
        let r = report(&o, &rows, None);
        assert!(r.contains("## uring / other servers"), "{r}");
        // uring 5 µs/msg, tokio 20 µs/msg.
        assert!(
            r.contains("| 64 B x 50 closed | tokio | 2.00x | 0.25x |"),
            "{r}"
        );
        assert!(r.contains("tokio: started as `true {port}`"), "{r}");
        assert!(!report(&opts(), &rows[..2], None).contains("other servers"));
    }
}
