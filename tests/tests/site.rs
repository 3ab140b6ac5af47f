//! The site workload end to end: `ringwork-bench site` writes a small site, ringwork-files
//! serves it, and `ringwork-bench http --site` requests every file of it, uniformly and
//! Zipf-distributed, checking each response's status and length against the file.

use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use ringwork_e2e::{binary, fresh_dir, stat, terminate, Server};

/// The tests here load the same two CPUs: they take turns.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes a site of `files` files for `seed` into `dir` with `ringwork-bench site`.
fn generate(dir: &Path, files: usize, seed: u64) {
    let out = Command::new(binary("ringwork-bench"))
        .args([
            "site",
            "--files",
            &files.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .arg("--out")
        .arg(dir)
        .output()
        .expect("run ringwork-bench site");
    assert!(
        out.status.success(),
        "site failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("{files} files, median")),
        "prints its statistics: {said}"
    );
}

/// ringwork-files on `root`, one thread, keeping `cache` files open.
fn serve(root: &Path, cache: usize) -> Server {
    Server::start(
        "ringwork-files",
        &[
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "1",
            "--open-file-cache",
            &cache.to_string(),
            root.to_str().unwrap(),
        ],
    )
}

/// What one `ringwork-bench http --site` run reported.
struct Run {
    ok: bool,
    requests: u64,
    errors: u64,
    length_errors: u64,
    output: String,
}

/// The number after `"key":` in a JSON text.
fn json_u64(json: &str, key: &str) -> u64 {
    let at = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("{key} missing in {json}"));
    json[at + key.len() + 3..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{key} is not a number in {json}"))
}

/// Loads `server` for 1.5 s with 20 connections requesting the files of `site`.
fn load(server: &Server, site: &Path, extra: &[&str], json: &Path) -> Run {
    let out = Command::new(binary("ringwork-bench"))
        .args([
            "http",
            "--conns",
            "20",
            "--duration",
            "1.5",
            "--warmup",
            "0.3",
        ])
        .arg("--url")
        .arg(format!("http://{}/", server.addr))
        .arg("--site")
        .arg(site)
        .arg("--json")
        .arg(json)
        .args(extra)
        .output()
        .expect("run ringwork-bench http");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let json = std::fs::read_to_string(json).unwrap_or_else(|e| panic!("{e}: {output}"));
    Run {
        ok: out.status.success(),
        requests: json_u64(&json, "requests"),
        errors: json_u64(&json, "errors"),
        length_errors: json_u64(&json, "length_errors"),
        output,
    }
}

/// Open-file cache hits per lookup in a `stats:` line.
fn hit_ratio(stats: &str) -> f64 {
    let hits = stat(stats, "cache_hits") as f64;
    hits / (hits + stat(stats, "cache_opened") as f64).max(1.0)
}

/// Uniform and Zipf runs over a 300-file site complete with zero errors. The server's cache
/// (64 files, a fifth of the site) shows that the requests spread over the site as asked:
/// uniform opens nearly every file and hits about a fifth of the time; Zipf 1 (the top 64
/// ranks take about three quarters of the requests) hits far more often.
#[test]
fn site_loads_run_without_errors_uniform_and_zipf() {
    let _turn = one_at_a_time();
    let dir = fresh_dir("ringwork-e2e-site-");
    let site = dir.join("www");
    generate(&site, 300, 1);
    let mut ratios = Vec::new();
    for (order, extra) in [("uniform", &[][..]), ("zipf", &["--zipf", "1"][..])] {
        let server = serve(&site, 64);
        let run = load(&server, &site, extra, &dir.join(format!("{order}.json")));
        let stats = terminate(server);
        assert!(run.ok, "{order}: {}", run.output);
        assert_eq!(run.errors, 0, "{order}: {}", run.output);
        assert!(run.requests > 100, "{order}: {}", run.output);
        assert!(
            run.output.contains("300 files, median"),
            "{order}: the site's statistics: {}",
            run.output
        );
        if order == "uniform" {
            assert!(
                stat(&stats, "cache_opened") >= 250,
                "uniform requests reach most of the 300 files: {stats}"
            );
        }
        ratios.push(hit_ratio(&stats));
    }
    eprintln!(
        "cache hit ratios: uniform {:.2}, zipf {:.2}",
        ratios[0], ratios[1]
    );
    assert!(
        ratios[1] > ratios[0] + 0.2,
        "Zipf concentrates requests on the popular files: hit ratios uniform {:.2}, zipf {:.2}",
        ratios[0],
        ratios[1]
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Served files of other sizes than the site's (the same names, another seed) are length
/// mismatches: counted as errors, and the run fails.
#[test]
fn responses_that_are_not_the_sites_files_are_errors() {
    let _turn = one_at_a_time();
    let dir = fresh_dir("ringwork-e2e-site-mismatch-");
    let (site, other) = (dir.join("www"), dir.join("other"));
    generate(&site, 300, 1);
    generate(&other, 300, 2);
    let server = serve(&other, 1000);
    let run = load(&server, &site, &[], &dir.join("run.json"));
    drop(server);
    assert!(!run.ok, "{}", run.output);
    assert!(run.length_errors > 0, "{}", run.output);
    assert!(run.errors >= run.length_errors, "{}", run.output);
    assert!(
        run.output.contains("length mismatches"),
        "reported: {}",
        run.output
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `compare --site-only --site DIR`: the site cells on a directory the user names, with
/// ringwork-files' cache counters, and nginx beside it when it is on PATH (else the report
/// says why).
#[test]
fn compare_site_only_reports_the_site_cells() {
    let _turn = one_at_a_time();
    let dir = fresh_dir("ringwork-e2e-site-compare-");
    let site = dir.join("www");
    generate(&site, 300, 1);
    let out_dir = dir.join("report");
    let out = Command::new(binary("ringwork-bench"))
        .args(["compare", "--site-only", "--site-rounds", "1"])
        .args(["--duration", "0.5", "--warmup", "0.2"])
        .arg("--site")
        .arg(&site)
        .arg("--out")
        .arg(&out_dir)
        .arg("--server-bin")
        .arg(binary("ringwork-echo"))
        .output()
        .expect("run ringwork-bench compare");
    assert!(
        out.status.success(),
        "compare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(out_dir.join("BENCHMARKS.md")).unwrap();
    assert!(
        report.contains("## Site: ringwork-files against nginx"),
        "{report}"
    );
    assert!(report.contains("300 files, median"), "{report}");
    let rows = |server: &str| -> Vec<Vec<String>> {
        report
            .lines()
            .filter(|l| l.starts_with(&format!("| {server} | site ")))
            .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
            .collect()
    };
    let files = rows("ringwork-files");
    assert_eq!(files.len(), 2, "uniform and zipf: {report}");
    for r in &files {
        // | server | cell | req/s | spread | MB/s | p50 | p99 | CPU | gen CPU | errors |
        // cache_hits | cache_opened | cache_evicted | body_hits | file_sends |
        let rps: f64 = r[3].replace(',', "").parse().unwrap();
        assert!(rps > 0.0, "no requests: {r:?}");
        assert_eq!(r[10], "0", "errors: {r:?}");
        let opened: u64 = r[12]
            .replace(',', "")
            .parse()
            .expect("cache_opened counted");
        assert!(opened > 0, "{r:?}");
    }
    let nginx = rows("nginx");
    if nginx.is_empty() {
        assert!(
            report.contains("nginx was not found on PATH")
                || report.contains("nginx did not start"),
            "{report}"
        );
    } else {
        assert!(nginx.iter().all(|r| r[10] == "0"), "{nginx:?}");
        assert!(
            report.contains("### Site: ringwork-files / nginx"),
            "{report}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
