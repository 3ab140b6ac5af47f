//! ringwork-files against nginx, for `ringwork-bench compare --files`: the static-file server
//! users would pick instead, set up the way a careful operator tunes it for static files (one
//! worker, sendfile, tcp_nopush, tcp_nodelay, open_file_cache, long keep-alive, no access log).
//!
//! Both servers run one worker pinned to the same CPU (the last one, the load generator on CPU
//! 0), serve the same random-content files from one temporary root (read once first: warm page
//! cache), and are measured cell by cell in alternation, each run against a freshly started
//! server. Server CPU is the worker's (nginx: the master's child; the master only supervises).
//! When `nginx` is not on PATH the section measures ringwork-files alone and says how to
//! install nginx.

use std::fmt::Write as _;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringwork_harness::pin::{self, online_cpus};
use ringwork_harness::proc::rss_kib;
use ringwork_harness::server::{free_port, START_TIMEOUT};

use crate::compare::{server_cpu, spawn_on_server_cpu, start_server, RunningServer};
use crate::http;
use crate::site::Order;
use crate::stats::{load_average, median_index, spread_cell, thousands, Spread};
use crate::tls::CertPair;

/// The files served: (name, size).
pub const FILES: [(&str, usize); 2] = [("small.bin", 4096), ("large.bin", 1 << 20)];

/// One cell: every connection GETs one file, closed loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    /// Which of [`FILES`].
    pub file: usize,
    /// Keep-alive connections.
    pub conns: usize,
}

impl Cell {
    /// "4 KiB x 1,000".
    pub fn label(&self) -> String {
        let size = FILES[self.file].1;
        let size = if size >= 1 << 20 {
            format!("{} MiB", size >> 20)
        } else {
            format!("{} KiB", size >> 10)
        };
        format!("{size} x {}", thousands(self.conns as f64))
    }
}

/// The cells: 4 KiB at 100, 1,000 and 10,000 connections, 1 MiB at 100; `quick` keeps two
/// small ones. Also returns the rounds and the idle connections for the RSS figure.
pub fn plan(quick: bool) -> (Vec<Cell>, u32, usize) {
    if quick {
        let cells = vec![Cell { file: 0, conns: 50 }, Cell { file: 1, conns: 10 }];
        return (cells, 1, 1_000);
    }
    let cells = vec![
        Cell {
            file: 0,
            conns: 100,
        },
        Cell {
            file: 0,
            conns: 1_000,
        },
        Cell {
            file: 0,
            conns: 10_000,
        },
        Cell {
            file: 1,
            conns: 100,
        },
    ];
    (cells, 3, 10_000)
}

/// The nginx configuration: the team's reference setup, listening on `port`, serving `root`,
/// with its pid file and error log in `dir`; with `tls`, HTTPS on that port with that
/// certificate ([`tls_directives`]).
pub fn config(port: u16, root: &Path, dir: &Path, tls: Option<&CertPair>) -> String {
    let (ssl, tls_lines) = match tls {
        Some(pair) => (" ssl", tls_directives(pair)),
        None => ("", String::new()),
    };
    format!(
        "worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 20000; use epoll; }}
worker_rlimit_nofile 20000;
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 1000000;
  open_file_cache max=1000 inactive=60s;
  server {{
    listen 127.0.0.1:{port}{ssl} reuseport;
{tls_lines}    root {root};
  }}
}}
",
        dir = dir.display(),
        root = root.display(),
    )
}

/// The server block's TLS lines: the certificate, TLS 1.2 and 1.3, a shared session cache
/// (session IDs) and tickets, as an operator enables resumption. `sendfile on` stays in
/// the http block: without kernel TLS nginx reads and encrypts instead.
pub fn tls_directives(pair: &CertPair) -> String {
    format!(
        "    ssl_certificate {};
    ssl_certificate_key {};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
",
        pair.cert.display(),
        pair.key.display()
    )
}

/// `name` in a directory of `PATH`, when it is an executable file there.
pub fn find_on_path(name: &str, path_var: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The parent pid (field 4) of a /proc/PID/stat line; the command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_ppid(stat: &str) -> Option<u32> {
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| parse_ppid(&s))
                == Some(pid)
        })
        .collect()
}

/// `nginx -v`'s answer, e.g. "nginx/1.22.1".
pub(crate) fn nginx_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .and_then(|s| s.rsplit(' ').next().map(str::to_string))
        .unwrap_or_else(|| "nginx (version unknown)".into())
}

/// An nginx master and its one worker, stopped (SIGTERM, then SIGKILL) on drop.
pub(crate) struct Nginx {
    master: RunningServer,
    worker: u32,
}

impl Nginx {
    /// How long nginx's fast shutdown (the master stops its worker, then exits) may take.
    const STOP_GRACE: Duration = Duration::from_secs(5);

    /// Writes the config into `dir` and starts nginx serving `root`, pinned like the server
    /// under test; waits until it accepts connections and its worker exists.
    /// With `tls`, it serves HTTPS with that certificate instead of plain HTTP.
    pub(crate) fn start(
        bin: &Path,
        root: &Path,
        dir: &Path,
        tls: Option<&CertPair>,
    ) -> Result<(Nginx, String), String> {
        let port = free_port()?;
        let conf_text = config(port, root, dir, tls);
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, &conf_text).map_err(|e| format!("write {}: {e}", conf.display()))?;
        let errlog = dir.join("error.log");
        let stderr = std::fs::File::create(dir.join("stderr.log")).map_err(|e| e.to_string())?;
        let master = spawn_on_server_cpu(|| {
            RunningServer::start_at(
                Command::new(bin)
                    .arg("-c")
                    .arg(&conf)
                    .arg("-e")
                    .arg(&errlog)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(stderr),
                SocketAddr::from(([127, 0, 0, 1], port)),
            )
        })
        .map_err(|e| {
            let log = std::fs::read_to_string(&errlog).unwrap_or_default()
                + &std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
            format!("nginx {e} (see {}): {}", errlog.display(), log.trim())
        })?
        .terminate_when_dropped(Self::STOP_GRACE);
        let deadline = Instant::now() + START_TIMEOUT;
        let worker = loop {
            if let Some(&worker) = children_of(master.pid()).first() {
                break worker;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "nginx started no worker within {} s",
                    START_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(cpu) = server_cpu() {
            pin::pin_process(master.pid(), cpu);
            pin::pin_process(worker, cpu);
        }
        Ok((Nginx { master, worker }, conf_text))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if !self.master.stop(Self::STOP_GRACE) {
            // The master is gone; its worker would serve on as an orphan.
            if let Some(pid) = rustix::process::Pid::from_raw(self.worker as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// A server being measured.
pub(crate) enum Server {
    Files(RunningServer),
    Nginx(Nginx),
}

impl Server {
    pub(crate) fn addr(&self) -> SocketAddr {
        match self {
            Server::Files(s) => s.addr,
            Server::Nginx(n) => n.master.addr,
        }
    }

    /// The process doing the serving: ringwork-files itself, nginx's worker.
    pub(crate) fn worker(&self) -> u32 {
        match self {
            Server::Files(s) => s.pid(),
            Server::Nginx(n) => n.worker,
        }
    }

    /// The supervising nginx master, apart from the worker.
    fn master(&self) -> Option<u32> {
        match self {
            Server::Files(_) => None,
            Server::Nginx(n) => Some(n.master.pid()),
        }
    }
}

/// A temporary root, world-readable (nginx's workers drop root), removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("ringwork-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(path.join("www"))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        for p in [path.clone(), path.join("www")] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("chmod {}: {e}", p.display()))?;
        }
        Ok(Self(path))
    }

    pub(crate) fn www(&self) -> PathBuf {
        self.0.join("www")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes [`FILES`] with random content under `root`, world-readable, and reads each once.
pub(crate) fn make_files(root: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mut urandom = std::fs::File::open("/dev/urandom").map_err(|e| e.to_string())?;
    for (name, size) in FILES {
        let mut body = vec![0u8; size];
        urandom.read_exact(&mut body).map_err(|e| e.to_string())?;
        let path = root.join(name);
        std::fs::write(&path, &body).map_err(|e| format!("{}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| e.to_string())?;
        crate::fileread::warm(&path)?;
    }
    Ok(())
}

/// `--max-conns` for ringwork-files serving `conns` connections: the connections, with room
/// for reconnects (at capacity it stops accepting, which a cell would see as slow connects).
pub fn files_max_conns(conns: usize) -> usize {
    conns + conns / 16 + 16
}

/// ringwork-files' arguments (besides `--listen` and `--threads`, which [`start_server`]
/// gives) for serving `root` to `conns` connections: the io_uring backend, as many files kept
/// open as the reference nginx config's `open_file_cache max=1000` (ringwork-files' default
/// keeps more), defaults otherwise.
pub(crate) fn files_args(conns: usize, root: &Path) -> Vec<String> {
    vec![
        "--backend".into(),
        "uring".into(),
        "--open-file-cache".into(),
        "1000".into(),
        "--max-conns".into(),
        files_max_conns(conns).to_string(),
        root.to_string_lossy().into_owned(),
    ]
}

/// What the report says when there is no nginx.
pub(crate) const NOT_FOUND: &str =
    "**nginx was not found on PATH**, so ringwork-files is measured alone. \
    Install it (`apt-get install -y nginx-light`, or your distribution's nginx package) and run \
    again for the nginx column and the ratios.\n";

/// The two servers' names, in the order they run in every cell.
pub(crate) const FILES_NAME: &str = "ringwork-files";
pub(crate) const NGINX_NAME: &str = "nginx";

struct Measured {
    server: &'static str,
    cell: Cell,
    runs: Vec<http::Outcome>,
}

impl Measured {
    /// Adds `out` to the runs of `server` on `cell` in `measured`.
    fn record(measured: &mut Vec<Measured>, server: &'static str, cell: Cell, out: http::Outcome) {
        match measured
            .iter_mut()
            .find(|m| m.server == server && m.cell == cell)
        {
            Some(m) => m.runs.push(out),
            None => measured.push(Measured {
                server,
                cell,
                runs: vec![out],
            }),
        }
    }
}

/// What one server's idle-connection memory came to.
struct Rss {
    server: &'static str,
    at_start_kib: u64,
    idle_kib: u64,
    master_kib: Option<u64>,
    errors: u64,
}

/// The section of BENCHMARKS.md, and the errors (failed connects, bad responses) it saw.
pub fn versus(
    files_bin: &Path,
    duration: Duration,
    warmup: Duration,
    quick: bool,
) -> Result<(String, u64), String> {
    crate::compare::pin_generator();
    let load_before = load_average();
    let (cells, rounds, idle_conns) = plan(quick);
    let tmp = TempDir::new("vs-nginx")?;
    let root = tmp.www();
    make_files(&root)?;
    let nginx_bin = usable_nginx(&root, &tmp.0, None);
    if let Err(why) = &nginx_bin {
        eprintln!("{}", why.trim());
    }
    let start = |name: &'static str, conns: usize| -> Result<(Server, Option<String>), String> {
        if name == FILES_NAME {
            let args = files_args(conns, &root);
            Ok((Server::Files(start_server(files_bin, &args)?), None))
        } else {
            let bin = nginx_bin.as_deref().expect("only started when it starts");
            let (n, conf) = Nginx::start(bin, &root, &tmp.0, None)?;
            Ok((Server::Nginx(n), Some(conf)))
        }
    };
    let servers: Vec<&'static str> = if nginx_bin.is_ok() {
        vec![FILES_NAME, NGINX_NAME]
    } else {
        vec![FILES_NAME]
    };

    let mut conf_used = None;
    let mut measured: Vec<Measured> = Vec::new();
    for round in 1..=rounds {
        for cell in &cells {
            for &name in &servers {
                let (server, conf) = start(name, cell.conns)?;
                conf_used = conf_used.or(conf);
                let cfg = http::Config {
                    addr: server.addr(),
                    paths: vec![format!("/{}", FILES[cell.file].0)],
                    order: Order::Cycle,
                    sizes: None,
                    conns: cell.conns,
                    duration,
                    warmup,
                    server_pid: Some(server.worker()),
                    tls: None,
                    conn_per_request: false,
                };
                let out = http::run(&cfg).map_err(|e| format!("{name} {}: {e}", cell.label()))?;
                eprintln!(
                    "round {round} {name:>14} {:>14}: {:>9} req/s p99 {:>8.0} µs {:>6.1} µs/req errors {}",
                    cell.label(),
                    thousands(out.rps()),
                    out.latency.p99_us,
                    out.server_us_per_req().unwrap_or(0.0),
                    out.errors
                );
                drop(server);
                Measured::record(&mut measured, name, *cell, out);
            }
        }
    }

    let mut rss = Vec::new();
    for &name in &servers {
        let (server, conf) = start(name, idle_conns)?;
        conf_used = conf_used.or(conf);
        rss.push(idle_rss(name, &server, idle_conns)?);
    }
    let nginx_note = match (&nginx_bin, conf_used) {
        (Ok(bin), Some(conf)) => Ok((nginx_version(bin), conf)),
        (Ok(_), None) => Err("nginx ran no cell.\n".to_string()),
        (Err(why), _) => Err(why.clone()),
    };
    let errors = measured
        .iter()
        .flat_map(|m| m.runs.iter().map(|o| o.errors))
        .sum::<u64>()
        + rss.iter().map(|r| r.errors).sum::<u64>();
    let text = section(
        &SectionInput {
            cells: &cells,
            rounds,
            idle_conns,
            duration,
            warmup,
            nginx: nginx_note,
            load: (load_before, load_average()),
        },
        &measured,
        &rss,
    );
    Ok((text, errors))
}

struct SectionInput<'a> {
    cells: &'a [Cell],
    rounds: u32,
    idle_conns: usize,
    duration: Duration,
    warmup: Duration,
    /// nginx's version and the config it ran with, or why it did not run (Markdown).
    nginx: Result<(String, String), String>,
    /// The 1-minute load average before and after the section.
    load: (Option<f64>, Option<f64>),
}

/// The nginx on PATH, when it starts here (serving HTTPS with `tls`). Without one, or with
/// one that cannot start here (say, unprivileged, so that it cannot write its compiled-in
/// temporary paths, or built without the ssl module), ringwork-files is measured alone, and
/// the error is what the report says instead.
pub(crate) fn usable_nginx(
    root: &Path,
    dir: &Path,
    tls: Option<&CertPair>,
) -> Result<PathBuf, String> {
    let path_var = std::env::var("PATH").unwrap_or_default();
    let bin = find_on_path("nginx", &path_var).ok_or_else(|| NOT_FOUND.to_string())?;
    match Nginx::start(&bin, root, dir, tls) {
        Ok(_) => Ok(bin),
        Err(e) => Err(format!(
            "**nginx did not start**, so ringwork-files is measured alone: {e}\n"
        )),
    }
}

/// The serving process's memory at start and with `idle_conns` idle keep-alive connections.
fn idle_rss(name: &'static str, server: &Server, idle_conns: usize) -> Result<Rss, String> {
    // A moment for the worker to settle after start (nginx's master forks it).
    std::thread::sleep(Duration::from_millis(200));
    let at_start = rss_kib(server.worker()).unwrap_or(0);
    let cfg = http::Config {
        addr: server.addr(),
        paths: vec![format!("/{}", FILES[0].0)],
        order: Order::Cycle,
        sizes: None,
        conns: idle_conns,
        duration: Duration::ZERO,
        warmup: Duration::ZERO,
        server_pid: None,
        tls: None,
        conn_per_request: false,
    };
    let ((idle, master), errors) = http::hold_idle(&cfg, || {
        // Let the server finish with the last responses before reading its memory.
        std::thread::sleep(Duration::from_millis(300));
        (
            rss_kib(server.worker()).unwrap_or(0),
            server.master().and_then(rss_kib),
        )
    })
    .map_err(|e| format!("{name} idle connections: {e}"))?;
    eprintln!(
        "{name:>14}: RSS {at_start} KiB at start, {idle} KiB with {idle_conns} idle connections, errors {errors}"
    );
    Ok(Rss {
        server: name,
        at_start_kib: at_start,
        idle_kib: idle,
        master_kib: master,
        errors,
    })
}

/// Median requests/s and server CPU per request over a cell's runs, and its median run.
fn medians(runs: &[http::Outcome]) -> Option<(Spread, Option<f64>, &http::Outcome)> {
    let rps: Vec<f64> = runs.iter().map(http::Outcome::rps).collect();
    let cpu: Vec<f64> = runs
        .iter()
        .filter_map(http::Outcome::server_us_per_req)
        .collect();
    Some((
        Spread::of(&rps)?,
        Spread::of(&cpu).map(|s| s.median),
        &runs[median_index(&rps)?],
    ))
}

fn section(input: &SectionInput, measured: &[Measured], rss: &[Rss]) -> String {
    let mut s = String::from("\n## Static files: ringwork-files against nginx\n\n");
    let pinning = match server_cpu() {
        Some(cpu) => format!(
            "each server's threads pinned to CPU {cpu} (sched_setaffinity, as `taskset -c {cpu}`), \
             the load generator (`ringwork-bench http`, one thread, edge-triggered epoll) to CPU 0"
        ),
        None => "one CPU: nothing pinned, server and load generator share it".into(),
    };
    let _ = writeln!(
        s,
        "One worker each, {pinning}. Files: random content ({}) in a temporary root, each read \
         once first (warm page cache). Keep-alive GETs of one file per cell, closed loop; {} s \
         measured after {} s warm-up, against a freshly started server every run; cells \
         alternate between the servers, {} round{}, medians shown. Server CPU is the serving \
         process's run time over the window from /proc/PID/task/*/schedstat (/proc/PID/stat \
         ticks where schedstats are missing): ringwork-files' process, nginx's worker (the \
         master's child; the master only supervises).\n",
        FILES
            .iter()
            .map(|(n, sz)| format!("{n}, {} bytes", thousands(*sz as f64)))
            .collect::<Vec<_>>()
            .join("; "),
        input.duration.as_secs_f64(),
        input.warmup.as_secs_f64(),
        input.rounds,
        if input.rounds == 1 { "" } else { "s" },
    );
    if let (Some(a), Some(b)) = input.load {
        let _ = writeln!(
            s,
            "Load average (1 min) {a:.2} before these runs and {b:.2} after, on {} CPUs: \
             work beyond these runs shares the CPUs, pinned or not; read the figures with their \
             spreads. \"generator CPU\" is the load generator's share of its CPU over the \
             median run: near 100% the generator, not the server, set the pace.\n",
            online_cpus()
        );
    }
    let _ = writeln!(
        s,
        "ringwork-files: `ringwork-files ROOT --listen 127.0.0.1:0 --threads 1 --backend uring \
         --open-file-cache 1000 --max-conns N`, N = the cell's connections + 1/16 + 16 (1,000 \
         files kept open, as nginx's `open_file_cache max=1000`).\n"
    );
    match &input.nginx {
        Ok((version, conf)) => {
            let _ = writeln!(
                s,
                "nginx: {version}, `nginx -c nginx.conf -e error.log`, with this config (the \
                 paths are the run's temporary ones):\n\n```nginx\n{}```\n",
                conf
            );
        }
        Err(why) => {
            let _ = writeln!(s, "{why}");
        }
    }
    let _ = writeln!(
        s,
        "| server | cell | requests/s | spread | MB/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/req | generator CPU | errors | conns held |"
    );
    let _ = writeln!(
        s,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for cell in input.cells {
        for m in measured.iter().filter(|m| m.cell == *cell) {
            let Some((rps, cpu, mid)) = medians(&m.runs) else {
                continue;
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {} | {:.0}% | {} | {} |",
                m.server,
                cell.label(),
                thousands(rps.median),
                spread_cell(&rps, m.runs.len()),
                mid.mb_per_sec(),
                mid.latency.p50_us,
                mid.latency.p99_us,
                mid.latency.p999_us,
                cpu.map_or("-".into(), |v| format!("{v:.1}")),
                mid.client_cpu.as_secs_f64() / mid.elapsed.as_secs_f64().max(1e-9) * 100.0,
                m.runs.iter().map(|o| o.errors).sum::<u64>(),
                m.runs.iter().map(|o| o.conns_held).min().unwrap_or(0),
            );
        }
    }
    let by = |server: &str, cell: &Cell| {
        measured
            .iter()
            .find(|m| m.server == server && m.cell == *cell)
            .and_then(|m| medians(&m.runs))
    };
    let mut ratios = String::new();
    for cell in input.cells {
        if let (Some(f), Some(n)) = (by(FILES_NAME, cell), by(NGINX_NAME, cell)) {
            let cpu = match (f.1, n.1) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                _ => "-".into(),
            };
            let _ = writeln!(
                ratios,
                "| {} | {:.2}x | {cpu} |",
                cell.label(),
                f.0.median / n.0.median.max(1e-9)
            );
        }
    }
    if !ratios.is_empty() {
        let _ = writeln!(s, "\n### ringwork-files / nginx\n");
        let _ = writeln!(
            s,
            "| cell | requests/s (above 1: ringwork-files faster) | server CPU per request (below 1: ringwork-files cheaper) |"
        );
        let _ = writeln!(s, "| --- | ---: | ---: |");
        s.push_str(&ratios);
    }
    let _ = writeln!(
        s,
        "\n### Memory with {} idle keep-alive connections\n",
        thousands(input.idle_conns as f64)
    );
    let _ = writeln!(
        s,
        "Each server freshly started (ringwork-files with `--max-conns {}`); every connection \
         made one request, then all stayed open and idle while the serving process's VmRSS \
         was read.\n",
        files_max_conns(input.idle_conns)
    );
    let _ = writeln!(
        s,
        "| server | RSS at start KiB | RSS with idle connections KiB | per connection KiB | errors |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: |");
    for r in rss {
        let _ = writeln!(
            s,
            "| {}{} | {} | {} | {:.1} | {} |",
            r.server,
            r.master_kib
                .map_or(String::new(), |m| format!(" (worker; master {m} KiB)")),
            thousands(r.at_start_kib as f64),
            thousands(r.idle_kib as f64),
            r.idle_kib.saturating_sub(r.at_start_kib) as f64 / input.idle_conns.max(1) as f64,
            r.errors
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_the_reference_with_this_runs_port_root_and_paths() {
        let c = config(18_123, Path::new("/tmp/x/www"), Path::new("/tmp/x"), None);
        for directive in [
            "worker_processes 1;",
            "daemon off;",
            "pid /tmp/x/nginx.pid;",
            "error_log /tmp/x/error.log;",
            "events { worker_connections 20000; use epoll; }",
            "worker_rlimit_nofile 20000;",
            "access_log off;",
            "sendfile on;",
            "tcp_nopush on;",
            "tcp_nodelay on;",
            "keepalive_requests 1000000;",
            "open_file_cache max=1000 inactive=60s;",
            "listen 127.0.0.1:18123 reuseport;",
            "root /tmp/x/www;",
        ] {
            assert!(c.contains(directive), "missing {directive:?} in\n{c}");
        }
        assert!(!c.contains("ROOT"), "{c}");
        assert!(!c.contains("ssl"), "plain: {c}");
        assert_eq!(c.matches('{').count(), c.matches('}').count(), "{c}");
        // Every directive line ends its statement or opens/closes a block.
        for l in c.lines().map(str::trim).filter(|l| !l.is_empty()) {
            assert!(
                l.ends_with(';') || l.ends_with('{') || l.ends_with('}'),
                "{l:?}"
            );
        }
    }

    #[test]
    fn tls_config_is_the_reference_served_over_tls() {
        let pair = CertPair::in_dir(Path::new("/tmp/x"));
        let c = config(
            18_124,
            Path::new("/tmp/x/www"),
            Path::new("/tmp/x"),
            Some(&pair),
        );
        let plain = config(18_124, Path::new("/tmp/x/www"), Path::new("/tmp/x"), None);
        // Every line of the reference config is there, the listen line with `ssl` added.
        for line in plain.lines() {
            let want = line.replace(":18124 reuseport", ":18124 ssl reuseport");
            assert!(c.lines().any(|l| l == want), "missing {want:?} in\n{c}");
        }
        let server_block = &c[c.find("server {").unwrap()..];
        for directive in [
            "listen 127.0.0.1:18124 ssl reuseport;",
            "ssl_certificate /tmp/x/cert.pem;",
            "ssl_certificate_key /tmp/x/key.pem;",
            "ssl_protocols TLSv1.2 TLSv1.3;",
            "ssl_session_cache shared:SSL:10m;",
            "ssl_session_tickets on;",
        ] {
            assert!(
                server_block.contains(directive),
                "missing {directive:?} in\n{c}"
            );
        }
        assert!(c.contains("sendfile on;"), "{c}");
        assert_eq!(c.matches('{').count(), c.matches('}').count(), "{c}");
        for l in c.lines().map(str::trim).filter(|l| !l.is_empty()) {
            assert!(
                l.ends_with(';') || l.ends_with('{') || l.ends_with('}'),
                "{l:?}"
            );
        }
    }

    #[test]
    fn parent_pids_parse() {
        assert_eq!(
            parse_ppid("4242 (nginx: worker (x)) S 4241 4241 4241 0 -1"),
            Some(4241)
        );
        assert_eq!(parse_ppid("garbage"), None);
        // This process: a real line, with a parent.
        let me = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert_eq!(
            parse_ppid(&me),
            Some(rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32))
        );
    }

    #[test]
    fn children_are_found_by_parent_pid() {
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        let found = children_of(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&child.id()), "{found:?}");
    }

    #[test]
    fn executables_are_found_on_path() {
        let sh = find_on_path("sh", "/nonexistent::/bin:/usr/bin").unwrap();
        assert!(sh.ends_with("sh"));
        assert_eq!(find_on_path("sh", "/nonexistent"), None);
        // A directory named like the program is not it.
        assert_eq!(find_on_path("bin", "/"), None);
    }

    #[test]
    fn plans_and_limits() {
        let (cells, rounds, idle) = plan(false);
        assert_eq!(
            cells.iter().map(Cell::label).collect::<Vec<_>>(),
            [
                "4 KiB x 100",
                "4 KiB x 1,000",
                "4 KiB x 10,000",
                "1 MiB x 100"
            ]
        );
        assert_eq!((rounds, idle), (3, 10_000));
        assert!(plan(true).0.iter().all(|c| c.conns <= 50));
        assert_eq!(files_max_conns(100), 122);
        assert_eq!(files_max_conns(10_000), 10_641);
    }

    fn outcome(requests: u64, cpu_ms: u64) -> http::Outcome {
        http::Outcome {
            requests,
            elapsed: Duration::from_secs(1),
            server_cpu: Some(Duration::from_millis(cpu_ms)),
            conns_held: 100,
            ..Default::default()
        }
    }

    #[test]
    fn section_states_ratios_config_and_memory() {
        let cells = [Cell {
            file: 0,
            conns: 100,
        }];
        let measured = [
            Measured {
                server: FILES_NAME,
                cell: cells[0],
                runs: vec![
                    outcome(50_000, 500),
                    outcome(60_000, 600),
                    outcome(40_000, 400),
                ],
            },
            Measured {
                server: NGINX_NAME,
                cell: cells[0],
                runs: vec![
                    outcome(80_000, 400),
                    outcome(100_000, 500),
                    outcome(90_000, 450),
                ],
            },
        ];
        let rss = [Rss {
            server: NGINX_NAME,
            at_start_kib: 3000,
            idle_kib: 5000,
            master_kib: Some(1000),
            errors: 0,
        }];
        let conf = config(1, Path::new("/r"), Path::new("/d"), None);
        let input = SectionInput {
            cells: &cells,
            rounds: 3,
            idle_conns: 1000,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            nginx: Ok(("nginx/1.22.1".into(), conf.clone())),
            load: (Some(1.5), Some(2.0)),
        };
        let s = section(&input, &measured, &rss);
        // Medians: 50,000 against 90,000 requests/s; 10 µs against 5 µs per request.
        assert!(s.contains("| 4 KiB x 100 | 0.56x | 2.00x |"), "{s}");
        assert!(
            s.contains("| ringwork-files | 4 KiB x 100 | 50,000 | ±20% |"),
            "{s}"
        );
        assert!(s.contains(&conf), "the config is printed: {s}");
        assert!(
            s.contains("| nginx (worker; master 1000 KiB) | 3,000 | 5,000 | 2.0 | 0 |"),
            "{s}"
        );
        let missing = section(
            &SectionInput {
                nginx: Err(NOT_FOUND.into()),
                ..input
            },
            &measured[..1],
            &[],
        );
        assert!(missing.contains("nginx was not found on PATH"), "{missing}");
        assert!(missing.contains("apt-get install -y nginx-light"));
        assert!(!missing.contains("### ringwork-files / nginx"));
    }
}
