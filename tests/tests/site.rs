//! The site workload end to end: `ringwork-bench site` writes a small site, ringwork-files
//! serves it, and `ringwork-bench http --site` requests every file of it, uniformly and
//! Zipf-distributed, checking each response's status and length against the file.

use std::path::Path;
use std::process::Command;

use ringwork_e2e::{binary, fresh_dir, stat, terminate, Server};

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
