//! The HTTPS cells of `ringwork-bench compare --files --tls`: ringwork-files
//! (`--tls-listen`) against nginx (`listen ... ssl`) on the same files and the same
//! self-signed ECDSA P-256 certificate, made with `openssl` in the run's temporary directory.
//!
//! Set up as the single-file cells of [`crate::nginx`] are: one worker each, pinned to the
//! last CPU, the generator on CPU 0, a freshly started server every run, the servers
//! alternated run by run, rounds, medians and the spread of the rounds' ratios. The cells:
//! keep-alive 4 KiB and 1 MiB over 100 connections, and new connections per second (one GET
//! of the 4 KiB file per connection) with full handshakes and with resumed ones.
//!
//! The client is `ringwork-bench http --tls`'s: rustls on aws-lc-rs, TLS 1.2 and 1.3
//! offered, ALPN http/1.1, SNI `localhost`, and X25519 as the only key exchange: nginx's
//! OpenSSL 3.0 has no X25519MLKEM768, which aws-lc-rs (ringwork-files) would otherwise pick,
//! so both servers do the same key exchange.
//!
//! ringwork-files is first started once and asked for a response over TLS; when it does not
//! serve TLS (it exits at start, or does not answer), nginx is measured alone and the
//! reason is returned for the caller to fail with, after the report is written.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ringwork_harness::server::free_port;

use crate::compare::{server_cpu, start_server};
use crate::http;
use crate::nginx::{
    files_args, make_files, nginx_version, usable_nginx, Nginx, Server, TempDir, FILES, FILES_NAME,
    NGINX_NAME,
};
use crate::site::Order;
use crate::sitecompare::ratio_cell;
use crate::stats::{load_average, median_index, spread_cell, thousands, Spread};
use crate::tls::{self_signed, self_signed_args, CertPair, TlsClient, TlsOptions, Versions};

/// Connections in every cell (at once, for the new-connection cells).
pub const CONNS: usize = 100;

/// One HTTPS cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell {
    /// Keep-alive GETs of one of [`FILES`] (its index), closed loop.
    KeepAlive(usize),
    /// Every GET of the 4 KiB file on a new connection; handshakes resumed (each of the 100
    /// connection slots a client with its own session store), or all full.
    NewConns {
        /// Resumed handshakes rather than full ones.
        resume: bool,
    },
}

impl Cell {
    /// "4 KiB x 100 keep-alive", "new conns x 100, full handshakes".
    pub fn label(&self) -> String {
        match self {
            Cell::KeepAlive(file) => {
                let size = FILES[*file].1;
                let size = if size >= 1 << 20 {
                    format!("{} MiB", size >> 20)
                } else {
                    format!("{} KiB", size >> 10)
                };
                format!("{size} x {CONNS} keep-alive")
            }
            Cell::NewConns { resume } => format!(
                "new conns x {CONNS}, {} handshakes",
                if *resume { "resumed" } else { "full" }
            ),
        }
    }

    /// The file each request asks for.
    fn file(&self) -> usize {
        match self {
            Cell::KeepAlive(file) => *file,
            Cell::NewConns { .. } => 0,
        }
    }
}

/// The cells, in the order they run, and the rounds (1 with `quick`).
pub fn plan(quick: bool) -> ([Cell; 4], u32) {
    let cells = [
        Cell::KeepAlive(0),
        Cell::KeepAlive(1),
        Cell::NewConns { resume: false },
        Cell::NewConns { resume: true },
    ];
    (cells, if quick { 1 } else { 3 })
}

/// The client options of every run: the certificate as the root, SNI `localhost`, X25519
/// only (see the module's doc), resumption for the resumed cell.
pub fn client_options(pair: &CertPair, cell: Cell) -> TlsOptions {
    TlsOptions {
        ca: pair.cert.clone(),
        server_name: Some("localhost".into()),
        resume: cell == Cell::NewConns { resume: true },
        versions: Versions::Both,
        kx: vec!["x25519".into()],
    }
}

/// ringwork-files' arguments: those of the plain cells ([`files_args`]) and HTTPS on
/// `tls_addr` with the certificate. `--max-conns` has room for the connections a client
/// closed and the server has not yet seen closing, beside the 100 open ones: with a new
/// connection per request, a limit near 100 closes the connections accepted past it (as
/// nginx does past `worker_connections`, which the reference config sets to 20,000).
pub fn files_tls_args(root: &Path, tls_addr: SocketAddr, pair: &CertPair) -> Vec<String> {
    let mut args = files_args(4 * CONNS, root);
    args.extend([
        "--tls-listen".into(),
        tls_addr.to_string(),
        "--tls-cert".into(),
        pair.cert.to_string_lossy().into_owned(),
        "--tls-key".into(),
        pair.key.to_string_lossy().into_owned(),
    ]);
    args
}

/// Where the servers are and what they serve.
struct Setup<'a> {
    files_bin: &'a Path,
    nginx_bin: Option<&'a Path>,
    root: &'a Path,
    dir: &'a Path,
    pair: &'a CertPair,
}

impl Setup<'_> {
    /// Starts `name` serving HTTPS; its TLS address, and nginx's config to quote.
    fn start(&self, name: &str) -> Result<(Server, SocketAddr, Option<String>), String> {
        if name == FILES_NAME {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let args = files_tls_args(self.root, addr, self.pair);
            let server = start_server(self.files_bin, &args)
                .map_err(|e| format!("with --tls-listen {addr}: {e}"))?;
            Ok((Server::Files(server), addr, None))
        } else {
            let bin = self
                .nginx_bin
                .expect("nginx is started only when it starts");
            let (n, conf) = Nginx::start(bin, self.root, self.dir, Some(self.pair))?;
            let server = Server::Nginx(n);
            let addr = server.addr();
            Ok((server, addr, Some(conf)))
        }
    }

    /// One run of `cell` against `server` at `addr`.
    fn measure(
        &self,
        server: &Server,
        addr: SocketAddr,
        cell: Cell,
        window: (Duration, Duration),
    ) -> Result<http::Outcome, String> {
        let tls = TlsClient::new(&client_options(self.pair, cell), addr.ip())?.clients(CONNS);
        let cfg = http::Config {
            addr,
            paths: vec![format!("/{}", FILES[cell.file()].0)],
            order: Order::Cycle,
            sizes: None,
            conns: CONNS,
            duration: window.0,
            warmup: window.1,
            server_pid: Some(server.worker()),
            tls: Some(tls),
            conn_per_request: matches!(cell, Cell::NewConns { .. }),
        };
        http::run(&cfg)
    }

    /// Whether ringwork-files serves TLS here: started once, one short keep-alive run that
    /// must complete responses without an error. The error says what went wrong.
    fn files_serve_tls(&self) -> Result<(), String> {
        let (server, addr, _) = self.start(FILES_NAME)?;
        let window = (Duration::from_millis(500), Duration::from_millis(200));
        let out = self.measure(&server, addr, Cell::KeepAlive(0), window)?;
        if out.requests > 0 && out.errors == 0 {
            return Ok(());
        }
        Err(format!(
            "no good HTTPS responses from {addr}: {} responses, {} errors ({} failed \
             connects, {} TLS errors{})",
            out.requests,
            out.errors,
            out.connect_errors,
            out.tls_errors,
            out.first_tls_error
                .map_or(String::new(), |e| format!("; the first: {e}")),
        ))
    }
}

/// One run: which server, which cell, which round, what it measured.
struct Run {
    server: &'static str,
    cell: Cell,
    outcome: http::Outcome,
}

/// What [`versus`] found.
pub struct Versus {
    /// The section of the report.
    pub text: String,
    /// Failed connects, bad responses and TLS failures in the measured runs.
    pub errors: u64,
    /// Why ringwork-files was not measured (it does not serve TLS), when it was not.
    pub files_missing: Option<String>,
}

/// The HTTPS section of the report.
pub fn versus(
    files_bin: &Path,
    duration: Duration,
    warmup: Duration,
    quick: bool,
) -> Result<Versus, String> {
    crate::compare::pin_generator();
    let load_before = load_average();
    let (cells, rounds) = plan(quick);
    let tmp = TempDir::new("tls-vs-nginx")?;
    let root = tmp.www();
    make_files(&root)?;
    let pair = self_signed(&tmp.0)?;
    let nginx_bin = usable_nginx(&root, &tmp.0, Some(&pair));
    let setup = Setup {
        files_bin,
        nginx_bin: nginx_bin.as_deref().ok(),
        root: &root,
        dir: &tmp.0,
        pair: &pair,
    };
    let files_missing = setup.files_serve_tls().err().map(|e| {
        let why = format!("ringwork-files does not serve HTTPS here: {e}");
        eprintln!("{why}");
        why
    });
    if let Err(why) = &nginx_bin {
        eprintln!("{}", why.trim());
    }
    let mut servers = Vec::new();
    if files_missing.is_none() {
        servers.push(FILES_NAME);
    }
    if nginx_bin.is_ok() {
        servers.push(NGINX_NAME);
    }
    let mut conf_used = None;
    let mut runs = Vec::new();
    for round in 1..=rounds {
        for &cell in &cells {
            for &name in &servers {
                let (server, addr, conf) = setup.start(name)?;
                conf_used = conf_used.or(conf);
                let outcome = setup
                    .measure(&server, addr, cell, (duration, warmup))
                    .map_err(|e| format!("{name} {}: {e}", cell.label()))?;
                drop(server);
                eprintln!(
                    "round {round} {name:>14} {:>36}: {:>9} req/s {:>7.1} µs/req {:>7} handshakes/s ({} resumed) errors {}",
                    cell.label(),
                    thousands(outcome.rps()),
                    outcome.server_us_per_req().unwrap_or(0.0),
                    thousands(outcome.handshakes_per_sec()),
                    outcome.handshakes_resumed,
                    outcome.errors
                );
                runs.push(Run {
                    server: name,
                    cell,
                    outcome,
                });
            }
        }
    }
    let nginx = match (&nginx_bin, conf_used) {
        (Ok(bin), Some(conf)) => Ok((nginx_version(bin), conf)),
        (Ok(_), None) => Err("nginx ran no cell.\n".to_string()),
        (Err(why), _) => Err(why.clone()),
    };
    let input = SectionInput {
        cells: &cells,
        rounds,
        duration,
        warmup,
        pair: &pair,
        nginx,
        files_missing: files_missing.clone(),
        load: (load_before, load_average()),
    };
    Ok(Versus {
        text: section(&input, &runs),
        errors: runs.iter().map(|r| r.outcome.errors).sum(),
        files_missing,
    })
}

struct SectionInput<'a> {
    cells: &'a [Cell],
    rounds: u32,
    duration: Duration,
    warmup: Duration,
    pair: &'a CertPair,
    /// nginx's version and config, or why it did not run (Markdown).
    nginx: Result<(String, String), String>,
    files_missing: Option<String>,
    load: (Option<f64>, Option<f64>),
}

/// The runs of `server` on `cell`, in round order.
fn of<'a>(runs: &'a [Run], server: &str, cell: Cell) -> Vec<&'a Run> {
    runs.iter()
        .filter(|r| r.server == server && r.cell == cell)
        .collect()
}

/// The paragraphs before the tables: how the runs were made.
fn setup_text(input: &SectionInput) -> String {
    let mut s = String::from("\n## HTTPS: ringwork-files against nginx\n\n");
    let pinning = match server_cpu() {
        Some(cpu) => format!(
            "each server's threads pinned to CPU {cpu}, the load generator (`ringwork-bench \
             http --tls`, one thread) to CPU 0"
        ),
        None => "one CPU: nothing pinned, server and load generator share it".into(),
    };
    let args = self_signed_args(&CertPair::in_dir(Path::new("DIR"))).join(" ");
    let _ = writeln!(
        s,
        "Certificate: self-signed ECDSA P-256, made for the run with `openssl {args}`. \
         Client: rustls on aws-lc-rs, TLS 1.2 and 1.3 offered, ALPN http/1.1, SNI \
         `localhost`, X25519 the only key exchange offered (nginx's OpenSSL 3.0 has no \
         X25519MLKEM768, which ringwork-files' aws-lc-rs would pick). One worker each, \
         {pinning}. Cells: keep-alive GETs of one file over {CONNS} connections, closed loop; \
         and {CONNS} connections that each connect, handshake, GET the 4 KiB file once and \
         close (close_notify first), then connect again: every handshake full (no session \
         store), or resumed (each connection slot a client with a session store of its own; \
         the share that resumed is shown). {} s measured after {} s warm-up, against a \
         freshly started server every run; the servers alternate run by run, {} round{}, medians shown. \
         Server CPU is the serving process's run time over the window (nginx: its worker), \
         per response; in the new-connection cells each response is one handshake.\n",
        input.duration.as_secs_f64(),
        input.warmup.as_secs_f64(),
        input.rounds,
        if input.rounds == 1 { "" } else { "s" },
    );
    crate::sitecompare::load_line(&mut s, input.load);
    let _ = writeln!(
        s,
        "ringwork-files: `ringwork-files ROOT --listen 127.0.0.1:0 --threads 1 --backend \
         uring --open-file-cache 1000 --max-conns {} --tls-listen 127.0.0.1:PORT --tls-cert \
         {} --tls-key {}`.\n",
        crate::nginx::files_max_conns(4 * CONNS),
        input.pair.cert.display(),
        input.pair.key.display(),
    );
    if let Some(why) = &input.files_missing {
        let _ = writeln!(s, "**{why}**; nginx is measured alone.\n");
    }
    match &input.nginx {
        Ok((version, conf)) => {
            let _ = writeln!(
                s,
                "nginx: {version}, the reference config with HTTPS (paths and port of the \
                 run):\n\n```nginx\n{conf}```\n"
            );
        }
        Err(why) => {
            let _ = writeln!(s, "{why}");
        }
    }
    s
}

fn section(input: &SectionInput, runs: &[Run]) -> String {
    let mut s = setup_text(input);
    let _ = writeln!(
        s,
        "| server | cell | requests/s | spread | MB/s | p50 µs | p99 µs | server CPU µs/req | resumed | generator CPU | errors | negotiated |"
    );
    let _ = writeln!(
        s,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for &cell in input.cells {
        for server in [FILES_NAME, NGINX_NAME] {
            let cell_runs = of(runs, server, cell);
            let rps: Vec<f64> = cell_runs.iter().map(|r| r.outcome.rps()).collect();
            let cpu: Vec<f64> = cell_runs
                .iter()
                .filter_map(|r| r.outcome.server_us_per_req())
                .collect();
            let (Some(spread), Some(mid)) = (Spread::of(&rps), median_index(&rps)) else {
                continue;
            };
            let mid = &cell_runs[mid].outcome;
            let resumed = match cell {
                Cell::NewConns { .. } => format!(
                    "{:.0}%",
                    mid.handshakes_resumed as f64 / mid.handshakes().max(1) as f64 * 100.0
                ),
                Cell::KeepAlive(_) => "-".into(),
            };
            let _ = writeln!(
                s,
                "| {server} | {} | {} | {} | {:.1} | {:.0} | {:.0} | {} | {resumed} | {:.0}% | {} | {} |",
                cell.label(),
                thousands(spread.median),
                spread_cell(&spread, cell_runs.len()),
                mid.mb_per_sec(),
                mid.latency.p50_us,
                mid.latency.p99_us,
                Spread::of(&cpu).map_or("-".into(), |c| format!("{:.1}", c.median)),
                mid.client_cpu.as_secs_f64() / mid.elapsed.as_secs_f64().max(1e-9) * 100.0,
                cell_runs.iter().map(|r| r.outcome.errors).sum::<u64>(),
                mid.tls_session.as_deref().unwrap_or("-"),
            );
        }
    }
    let mut ratios = String::new();
    for &cell in input.cells {
        let (f, n) = (of(runs, FILES_NAME, cell), of(runs, NGINX_NAME, cell));
        if f.is_empty() || n.is_empty() {
            continue;
        }
        let rps = |v: &[&Run]| v.iter().map(|r| r.outcome.rps()).collect::<Vec<_>>();
        let cpu = |v: &[&Run]| {
            v.iter()
                .map(|r| r.outcome.server_us_per_req().unwrap_or(f64::NAN))
                .collect::<Vec<_>>()
        };
        let _ = writeln!(
            ratios,
            "| {} | {} | {} |",
            cell.label(),
            ratio_cell(&rps(&f), &rps(&n)),
            ratio_cell(&cpu(&f), &cpu(&n)),
        );
    }
    crate::sitecompare::ratio_section(&mut s, "HTTPS", ("", ""), &ratios);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_and_their_labels() {
        let (cells, rounds) = plan(false);
        assert_eq!(
            cells.map(|c| c.label()),
            [
                "4 KiB x 100 keep-alive",
                "1 MiB x 100 keep-alive",
                "new conns x 100, full handshakes",
                "new conns x 100, resumed handshakes",
            ]
        );
        assert_eq!((rounds, plan(true).1), (3, 1));
        assert_eq!(
            cells.map(|c| FILES[c.file()].1),
            [4096, 1 << 20, 4096, 4096]
        );
    }

    #[test]
    fn clients_resume_only_in_the_resumed_cell() {
        let pair = CertPair::in_dir(Path::new("/d"));
        let (cells, _) = plan(false);
        assert_eq!(
            cells.map(|c| client_options(&pair, c).resume),
            [false, false, false, true]
        );
        let o = client_options(&pair, cells[0]);
        assert_eq!(o.ca, Path::new("/d/cert.pem"));
        assert_eq!(o.server_name.as_deref(), Some("localhost"));
        assert_eq!(o.kx, ["x25519"]);
    }

    #[test]
    fn ringwork_files_gets_the_tls_listener_and_the_certificate() {
        let pair = CertPair::in_dir(Path::new("/d"));
        let args = files_tls_args(
            Path::new("/d/www"),
            "127.0.0.1:4443".parse().unwrap(),
            &pair,
        );
        let line = args.join(" ");
        assert!(
            line.starts_with(&files_args(4 * CONNS, Path::new("/d/www")).join(" ")),
            "{line}"
        );
        assert!(
            line.ends_with(
                "--tls-listen 127.0.0.1:4443 --tls-cert /d/cert.pem --tls-key /d/key.pem"
            ),
            "{line}"
        );
    }

    fn outcome(requests: u64, cpu_ms: u64, resumed: u64) -> http::Outcome {
        http::Outcome {
            requests,
            elapsed: Duration::from_secs(1),
            server_cpu: Some(Duration::from_millis(cpu_ms)),
            handshakes_full: requests - resumed,
            handshakes_resumed: resumed,
            tls_session: Some("TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519, ALPN http/1.1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn section_states_ratios_and_why_a_server_is_missing() {
        let pair = CertPair::in_dir(Path::new("/d"));
        let cells = [Cell::NewConns { resume: true }];
        let runs = [
            Run {
                server: FILES_NAME,
                cell: cells[0],
                outcome: outcome(4_000, 400, 3_000),
            },
            Run {
                server: NGINX_NAME,
                cell: cells[0],
                outcome: outcome(2_000, 800, 2_000),
            },
        ];
        let input = SectionInput {
            cells: &cells,
            rounds: 1,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            pair: &pair,
            nginx: Ok(("nginx/1.22.1".into(), "conf text\n".into())),
            files_missing: None,
            load: (Some(0.5), Some(1.0)),
        };
        let s = section(&input, &runs);
        // 4,000 against 2,000 responses/s; 100 µs against 400 µs per response.
        assert!(
            s.contains("| new conns x 100, resumed handshakes | 2.00x | 0.25x |"),
            "{s}"
        );
        assert!(s.contains("| 75% |"), "the share resumed: {s}");
        assert!(s.contains("ec_paramgen_curve:P-256"), "{s}");
        assert!(s.contains("```nginx\nconf text\n```"), "{s}");
        let missing = section(
            &SectionInput {
                files_missing: Some("ringwork-files does not serve HTTPS here: x".into()),
                ..input
            },
            &runs[1..],
        );
        assert!(missing.contains("**ringwork-files does not serve HTTPS here: x**"));
        assert!(
            !missing.contains("### HTTPS: ringwork-files / nginx"),
            "{missing}"
        );
    }
}
