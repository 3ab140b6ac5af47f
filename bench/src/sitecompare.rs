//! The site cells of `ringwork-bench compare --files`: ringwork-files against nginx serving a
//! whole site ([`crate::site`]), each request for a file drawn uniformly or Zipf 1 from every
//! file of it, instead of one file over and over.
//!
//! Set up as the single-file cells of [`crate::nginx`] are (and with their code): one worker
//! each, pinned to the last CPU, the generator on CPU 0, a freshly started server every run,
//! the servers alternated run by run. The site is the default generated one (written to a
//! temporary directory) or the directory `--site` names; every file is read once first (warm
//! page cache). Each ringwork-files run ends with SIGTERM, and its `stats:` line gives the
//! open-file cache's counters for the report. Without a usable nginx the cells measure
//! ringwork-files alone and the report says why.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringwork_harness::pin::online_cpus;
use ringwork_harness::server::stat;

use crate::compare::{server_cpu, start_server};
use crate::http;
use crate::nginx::{
    files_args, nginx_version, usable_nginx, Nginx, Server, TempDir, FILES_NAME, NGINX_NAME,
};
use crate::site::{Order, SizeStats};
use crate::stats::{load_average, median_index, spread_cell, thousands, Spread};

/// Keep-alive connections in every site cell.
pub const SITE_CONNS: usize = 100;

/// The site cells: uniform, then Zipf 1, over the same ranking seed.
pub fn orders() -> [Order; 2] {
    [
        Order::Uniform { seed: 1 },
        Order::Zipf {
            exponent: 1.0,
            seed: 1,
        },
    ]
}

/// The counters of ringwork-files' `stats:` line the report shows.
pub const CACHE_COUNTERS: [&str; 5] = [
    "cache_hits",
    "cache_opened",
    "cache_evicted",
    "body_hits",
    "file_sends",
];

/// How long ringwork-files gets to drain and print its `stats:` line after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// One run: which server, which cell (index into [`orders`]), which round, what it measured,
/// and ringwork-files' `stats:` line.
#[derive(Clone, Debug)]
pub struct SiteRun {
    /// [`FILES_NAME`] or [`NGINX_NAME`].
    pub server: &'static str,
    /// Index into [`orders`].
    pub cell: usize,
    /// From 1.
    pub round: u32,
    /// The generator's figures.
    pub outcome: http::Outcome,
    /// ringwork-files' `stats:` line (None for nginx, or when it printed none).
    pub stats: Option<String>,
}

/// Where the site comes from.
pub enum SiteSource<'a> {
    /// `ringwork-bench site`'s tree of this many files, seed 1, written to a temporary
    /// directory.
    Generated {
        /// [`crate::site::DEFAULT_FILES`], or fewer for a quick run.
        files: usize,
    },
    /// A directory the user named.
    Dir(&'a Path),
}

/// Starts `name` serving `root`; ringwork-files with [`files_args`], nginx with the reference
/// config (returned, to be quoted).
fn start(
    name: &'static str,
    files_bin: &Path,
    nginx_bin: &Path,
    root: &Path,
    dir: &Path,
) -> Result<(Server, Option<String>), String> {
    if name == FILES_NAME {
        let args = files_args(SITE_CONNS, root);
        Ok((Server::Files(start_server(files_bin, &args)?), None))
    } else {
        let (n, conf) = Nginx::start(nginx_bin, root, dir, None)?;
        Ok((Server::Nginx(n), Some(conf)))
    }
}

/// Stops `server`; ringwork-files' `stats:` line, when it printed one.
fn stop(server: Server) -> Option<String> {
    match server {
        Server::Files(mut s) => match s.terminate(STOP_TIMEOUT) {
            Ok(line) => Some(line),
            Err(e) => {
                eprintln!("ringwork-files at shutdown: {e}");
                None
            }
        },
        // Dropped: SIGTERM to the master, which stops its worker.
        Server::Nginx(_) => None,
    }
}

/// The site section of BENCHMARKS.md, and the errors (failed connects, bad statuses, wrong
/// lengths) it saw.
pub fn versus(
    files_bin: &Path,
    source: SiteSource,
    duration: Duration,
    warmup: Duration,
    rounds: u32,
) -> Result<(String, u64), String> {
    crate::compare::pin_generator();
    let tmp = TempDir::new("site-vs-nginx")?;
    let (root, described): (PathBuf, String) = match source {
        SiteSource::Generated { files } => {
            let root = tmp.www();
            let stats = crate::site::generate(&root, files, 1)?;
            eprintln!("site: {stats}");
            (
                root,
                format!("generated (`ringwork-bench site --out DIR --files {files} --seed 1`)"),
            )
        }
        SiteSource::Dir(dir) => (dir.to_path_buf(), format!("`{}` (`--site`)", dir.display())),
    };
    let files = crate::site::scan(&root)?;
    let sizes = SizeStats::of(files.iter().map(|f| f.size));
    crate::site::warm(&root)?;
    let load_before = load_average();
    let nginx_bin = usable_nginx(&root, &tmp.0, None);
    if let Err(why) = &nginx_bin {
        eprintln!("site cells: {}", why.trim());
    }
    let servers: Vec<&'static str> = if nginx_bin.is_ok() {
        vec![FILES_NAME, NGINX_NAME]
    } else {
        vec![FILES_NAME]
    };
    let (paths, lengths): (Vec<String>, Vec<u64>) =
        files.into_iter().map(|f| (f.url_path, f.size)).unzip();
    let mut conf_used = None;
    let mut runs = Vec::new();
    for round in 1..=rounds {
        for (cell, order) in orders().into_iter().enumerate() {
            for &name in &servers {
                let nginx = nginx_bin.as_deref().unwrap_or(Path::new("nginx"));
                let (server, conf) = start(name, files_bin, nginx, &root, &tmp.0)?;
                conf_used = conf_used.or(conf);
                let cfg = http::Config {
                    addr: server.addr(),
                    paths: paths.clone(),
                    order,
                    sizes: Some(lengths.clone()),
                    conns: SITE_CONNS,
                    duration,
                    warmup,
                    server_pid: Some(server.worker()),
                    tls: None,
                    conn_per_request: false,
                };
                let outcome = http::run(&cfg).map_err(|e| format!("{name} site {order}: {e}"))?;
                let stats = stop(server);
                eprintln!(
                    "round {round} {name:>14} site {order:>9} x {SITE_CONNS}: {:>9} req/s p99 {:>8.0} µs {:>6.1} µs/req errors {} (lengths {}){}",
                    thousands(outcome.rps()),
                    outcome.latency.p99_us,
                    outcome.server_us_per_req().unwrap_or(0.0),
                    outcome.errors,
                    outcome.length_errors,
                    stats.as_deref().map_or(String::new(), |s| format!("\n    {s}")),
                );
                runs.push(SiteRun {
                    server: name,
                    cell,
                    round,
                    outcome,
                    stats,
                });
            }
        }
    }
    let nginx = match (&nginx_bin, conf_used) {
        (Ok(bin), Some(conf)) => Ok((nginx_version(bin), conf)),
        (Ok(_), None) => Err("nginx ran no cell.\n".to_string()),
        (Err(why), _) => Err(why.clone()),
    };
    let errors = runs.iter().map(|r| r.outcome.errors).sum();
    let input = SectionInput {
        described,
        sizes,
        rounds,
        duration,
        warmup,
        nginx,
        load: (load_before, load_average()),
    };
    Ok((section(&input, &runs), errors))
}

struct SectionInput {
    /// Which site, in words.
    described: String,
    sizes: SizeStats,
    rounds: u32,
    duration: Duration,
    warmup: Duration,
    /// nginx's version and config, or why it did not run (Markdown).
    nginx: Result<(String, String), String>,
    load: (Option<f64>, Option<f64>),
}

/// "site uniform x 100".
fn label(cell: usize) -> String {
    format!("site {} x {}", orders()[cell], thousands(SITE_CONNS as f64))
}

/// The runs of `server` on `cell`, in round order.
fn of<'a>(runs: &'a [SiteRun], server: &str, cell: usize) -> Vec<&'a SiteRun> {
    let mut v: Vec<&SiteRun> = runs
        .iter()
        .filter(|r| r.server == server && r.cell == cell)
        .collect();
    v.sort_by_key(|r| r.round);
    v
}

/// "1.23x (1.10–1.31x)": the ratio of the medians, and the range of the rounds' own ratios
/// (each round's two runs were next to each other in time); the ratio alone for one round.
pub(crate) fn ratio_cell(a: &[f64], b: &[f64]) -> String {
    let (Some(ma), Some(mb)) = (Spread::of(a), Spread::of(b)) else {
        return "-".into();
    };
    let ratio = ma.median / mb.median.max(1e-12);
    let per_round: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y.max(1e-12)).collect();
    match Spread::of(&per_round) {
        Some(s) if per_round.len() >= 2 => {
            format!("{ratio:.2}x ({:.2}–{:.2}x)", s.min, s.max)
        }
        _ => format!("{ratio:.2}x"),
    }
}

fn section(input: &SectionInput, runs: &[SiteRun]) -> String {
    let mut s = String::from("\n## Site: ringwork-files against nginx on many files\n\n");
    let pinning = match server_cpu() {
        Some(cpu) => format!(
            "each server's threads pinned to CPU {cpu}, the load generator (`ringwork-bench \
             http --site`, one thread) to CPU 0"
        ),
        None => "one CPU: nothing pinned, server and load generator share it".into(),
    };
    let _ = writeln!(
        s,
        "Site: {}: {}. Every file read once first (warm page cache). Each request asks for \
         one file of the site, drawn uniformly or Zipf 1 (rank k with probability ∝ 1/k, over \
         a seeded shuffled ranking, seed 1: the same draws for both servers), and its status \
         (200) and Content-Length (the file's size) are checked. One worker each, {pinning}; \
         {} keep-alive connections, closed loop; {} s measured after {} s warm-up, against a \
         freshly started server every run; the servers alternate run by run, {} round{}, \
         medians shown. Both servers keep 1,000 files open (nginx `open_file_cache max=1000`, \
         ringwork-files `--open-file-cache 1000`, below its default of 10,000).\n",
        input.described,
        input.sizes,
        SITE_CONNS,
        input.duration.as_secs_f64(),
        input.warmup.as_secs_f64(),
        input.rounds,
        if input.rounds == 1 { "" } else { "s" },
    );
    load_line(&mut s, input.load);
    let _ = writeln!(
        s,
        "ringwork-files: `ringwork-files ROOT --listen 127.0.0.1:0 --threads 1 --backend uring \
         --open-file-cache 1000 --max-conns {}`; its cache counters are from the `stats:` line it prints at shutdown \
         (SIGTERM after the run) for the median run, and cover its whole life, warm-up \
         included: `cache_hits` and `cache_opened` are lookups answered from the open-file \
         cache and files opened, `cache_evicted` files closed to make room, `body_hits` \
         responses sent from kept bytes, `file_sends` bodies sent from the file's pages.\n",
        crate::nginx::files_max_conns(SITE_CONNS)
    );
    match &input.nginx {
        Ok((version, conf)) => {
            let _ = writeln!(
                s,
                "nginx: {version}, the reference config (paths and port of the run):\n\n```nginx\n{conf}```\n"
            );
        }
        Err(why) => {
            let _ = writeln!(s, "{why}");
        }
    }
    let _ = writeln!(
        s,
        "| server | cell | requests/s | spread | MB/s | p50 µs | p99 µs | server CPU µs/req | generator CPU | errors | cache_hits | cache_opened | cache_evicted | body_hits | file_sends |"
    );
    let _ = writeln!(
        s,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for cell in 0..orders().len() {
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
            let mid = cell_runs[mid];
            let counters = CACHE_COUNTERS
                .iter()
                .map(|key| {
                    mid.stats
                        .as_deref()
                        .and_then(|line| stat(line, key))
                        .map_or("-".into(), |v| thousands(v as f64))
                })
                .collect::<Vec<_>>()
                .join(" | ");
            let _ = writeln!(
                s,
                "| {server} | {} | {} | {} | {:.1} | {:.0} | {:.0} | {} | {:.0}% | {} | {counters} |",
                label(cell),
                thousands(spread.median),
                spread_cell(&spread, cell_runs.len()),
                mid.outcome.mb_per_sec(),
                mid.outcome.latency.p50_us,
                mid.outcome.latency.p99_us,
                Spread::of(&cpu).map_or("-".into(), |c| format!("{:.1}", c.median)),
                mid.outcome.client_cpu.as_secs_f64()
                    / mid.outcome.elapsed.as_secs_f64().max(1e-9)
                    * 100.0,
                cell_runs.iter().map(|r| r.outcome.errors).sum::<u64>(),
            );
        }
    }
    let mut ratios = String::new();
    for cell in 0..orders().len() {
        let (f, n) = (of(runs, FILES_NAME, cell), of(runs, NGINX_NAME, cell));
        if f.is_empty() || n.is_empty() {
            continue;
        }
        let rps = |v: &[&SiteRun]| v.iter().map(|r| r.outcome.rps()).collect::<Vec<_>>();
        let cpu = |v: &[&SiteRun]| {
            v.iter()
                .map(|r| r.outcome.server_us_per_req().unwrap_or(f64::NAN))
                .collect::<Vec<_>>()
        };
        let p99 = |v: &[&SiteRun]| {
            v.iter()
                .map(|r| r.outcome.latency.p99_us)
                .collect::<Vec<_>>()
        };
        let _ = writeln!(
            ratios,
            "| {} | {} | {} | {} |",
            label(cell),
            ratio_cell(&rps(&f), &rps(&n)),
            ratio_cell(&cpu(&f), &cpu(&n)),
            ratio_cell(&p99(&f), &p99(&n)),
        );
    }
    let p99 = (" p99 (below 1: ringwork-files lower) |", " ---: |");
    ratio_section(&mut s, "Site", p99, &ratios);
    s
}

/// The load average before and after the runs, as a line of the report (when both were read).
pub(crate) fn load_line(s: &mut String, load: (Option<f64>, Option<f64>)) {
    if let (Some(a), Some(b)) = load {
        let _ = writeln!(
            s,
            "Load average (1 min) {a:.2} before these runs and {b:.2} after, on {} CPUs.\n",
            online_cpus()
        );
    }
}

/// The section of ratios ringwork-files / nginx (`title`: "Site", "HTTPS"), with `rows`
/// under the columns cell, requests/s and server CPU per request, and `extra`'s (its
/// header and alignment cells, each with a trailing `|`); nothing when there are no rows.
pub(crate) fn ratio_section(s: &mut String, title: &str, extra: (&str, &str), rows: &str) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(s, "\n### {title}: ringwork-files / nginx\n");
    let _ = writeln!(
        s,
        "Ratio of the medians; in parentheses the smallest and largest of the rounds' own \
         ratios (each round ran the two servers back to back).\n"
    );
    let _ = writeln!(
        s,
        "| cell | requests/s (above 1: ringwork-files faster) | server CPU per request (below 1: ringwork-files cheaper) |{}",
        extra.0
    );
    let _ = writeln!(s, "| --- | ---: | ---: |{}", extra.1);
    s.push_str(rows);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(server: &'static str, cell: usize, round: u32, requests: u64, cpu_ms: u64) -> SiteRun {
        SiteRun {
            server,
            cell,
            round,
            outcome: http::Outcome {
                requests,
                elapsed: Duration::from_secs(1),
                server_cpu: Some(Duration::from_millis(cpu_ms)),
                conns_held: SITE_CONNS,
                ..Default::default()
            },
            stats: (server == FILES_NAME).then(|| {
                format!(
                    "stats: enters=1 cache_hits={requests} cache_opened=7 cache_evicted=3 body_hits=5 file_sends=2"
                )
            }),
        }
    }

    fn input(nginx: Result<(String, String), String>) -> SectionInput {
        SectionInput {
            described: "a test site".into(),
            sizes: SizeStats::of([1000, 2000, 70_000]),
            rounds: 2,
            duration: Duration::from_secs(3),
            warmup: Duration::from_secs(1),
            nginx,
            load: (Some(1.0), Some(1.2)),
        }
    }

    #[test]
    fn section_has_rows_counters_and_ratios_with_their_spread() {
        let runs = [
            run(FILES_NAME, 0, 1, 40_000, 400),
            run(NGINX_NAME, 0, 1, 20_000, 400),
            run(FILES_NAME, 0, 2, 60_000, 600),
            run(NGINX_NAME, 0, 2, 40_000, 400),
            run(FILES_NAME, 1, 1, 10_000, 100),
            run(NGINX_NAME, 1, 1, 10_000, 100),
        ];
        let s = section(&input(Ok(("nginx/1.22.1".into(), "conf;\n".into()))), &runs);
        // Medians 50,000 against 30,000; rounds 2.00x and 1.50x. CPU: 10 µs both rounds
        // against 20 and 10 µs.
        assert!(
            s.contains("| site uniform x 100 | 1.67x (1.50–2.00x) | 0.67x (0.50–1.00x) |"),
            "{s}"
        );
        assert!(
            s.contains("| ringwork-files | site uniform x 100 | 50,000 | ±20% |"),
            "{s}"
        );
        // The median run of two is the lower one: its counters.
        assert!(s.contains("| 40,000 | 7 | 3 | 5 | 2 |"), "{s}");
        assert!(
            s.contains("| - | - | - | - | - |"),
            "nginx has no counters: {s}"
        );
        assert!(
            s.contains("| site zipf 1 x 100 | 1.00x |"),
            "one round: {s}"
        );
        assert!(s.contains("3 files, median 2,000 B"), "{s}");
        assert!(s.contains("conf;"), "{s}");
    }

    #[test]
    fn without_nginx_the_section_says_why_and_has_no_ratios() {
        let runs = [run(FILES_NAME, 0, 1, 40_000, 400)];
        let s = section(
            &input(Err("**nginx was not found on PATH**\n".into())),
            &runs,
        );
        assert!(s.contains("nginx was not found on PATH"), "{s}");
        assert!(!s.contains("ringwork-files / nginx"), "{s}");
        assert!(
            s.contains("| ringwork-files | site uniform x 100 | 40,000 | - |"),
            "{s}"
        );
    }
}
