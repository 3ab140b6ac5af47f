//! `ringwork-bench compare --quick` against the real ringwork-echo, both backends: the report
//! has every row, no errors, and the plots.

use std::sync::{Mutex, MutexGuard};

use ringwork_e2e::binary;

/// Every compare run pins its servers and its generator to the same two CPUs: two at once
/// would load each other (and a loaded files run sees failed connects), so the tests here
/// take turns.
fn one_compare_at_a_time() -> MutexGuard<'static, ()> {
    static COMPARE: Mutex<()> = Mutex::new(());
    // A test that failed while holding it leaves it poisoned; the next may still run.
    COMPARE.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn compare_quick_writes_a_complete_report() {
    let _turn = one_compare_at_a_time();
    let out_dir = std::env::temp_dir().join(format!("ringwork-compare-{}", std::process::id()));
    let out = std::process::Command::new(binary("ringwork-bench"))
        .args([
            "compare",
            "--quick",
            "--duration",
            "1",
            "--warmup",
            "0.3",
            "--out",
        ])
        .arg(&out_dir)
        .arg("--server-bin")
        .arg(binary("ringwork-echo"))
        .output()
        .expect("run ringwork-bench");
    assert!(
        out.status.success(),
        "compare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(out_dir.join("BENCHMARKS.md")).unwrap();
    // Three quick cells, two backends.
    for backend in ["uring", "epoll"] {
        let rows: Vec<&str> = report
            .lines()
            .filter(|l| l.starts_with(&format!("| {backend} |")))
            .collect();
        assert_eq!(rows.len(), 3, "{backend} rows: {report}");
        for row in rows {
            let errors = row.trim_end_matches('|').rsplit('|').next().unwrap().trim();
            assert_eq!(errors, "0", "errors in {row}");
            let msgs: f64 = row
                .split('|')
                .nth(5)
                .unwrap()
                .trim()
                .replace(',', "")
                .parse()
                .unwrap();
            assert!(msgs > 0.0, "no messages in {row}");
        }
    }
    assert!(report.contains("## uring / epoll"));
    for svg in ["echo-throughput.svg", "echo-p99.svg"] {
        let text = std::fs::read_to_string(out_dir.join(svg)).unwrap();
        assert_eq!(
            text.matches("<polyline").count(),
            2,
            "{svg} has one line per backend"
        );
    }
    let _ = std::fs::remove_dir_all(out_dir);
}

/// The cells of `backend`'s rows in the echo table of a report.
fn echo_rows(report: &str, backend: &str) -> Vec<Vec<String>> {
    report
        .lines()
        .filter(|l| l.starts_with(&format!("| {backend} |")))
        .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
        .collect()
}

/// `compare --external NAME=COMMAND`: the command (here ringwork-echo's epoll backend, started
/// by compare on the port it substitutes) is measured as one more column in the same run,
/// with real figures: messages, no errors, and server CPU (so compare measured the server's
/// own pid, not a shell's), a line in each plot, and a row in the ratios against uring.
#[test]
fn compare_measures_an_external_command_as_a_column() {
    let _turn = one_compare_at_a_time();
    let out_dir = std::env::temp_dir().join(format!("ringwork-compare-ext-{}", std::process::id()));
    let command = format!(
        "ext-echo={} --backend epoll --threads 1 --listen 127.0.0.1:{{port}}",
        binary("ringwork-echo").display()
    );
    let out = std::process::Command::new(binary("ringwork-bench"))
        .args(["compare", "--quick", "--duration", "0.5", "--warmup", "0.2"])
        .arg("--out")
        .arg(&out_dir)
        .arg("--server-bin")
        .arg(binary("ringwork-echo"))
        .arg("--external")
        .arg(&command)
        .output()
        .expect("run ringwork-bench");
    assert!(
        out.status.success(),
        "compare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(out_dir.join("BENCHMARKS.md")).unwrap();
    let rows = echo_rows(&report, "ext-echo");
    assert_eq!(rows.len(), 3, "three quick cells: {report}");
    for r in rows {
        // | backend | size | conns | load | msgs/s | p50 | p95 | p99 | p99.9 | CPU µs/msg |
        // syscalls/msg | enters/msg | errors |
        let msgs: f64 = r[5].replace(',', "").parse().unwrap();
        assert!(msgs > 0.0, "no messages: {r:?}");
        let cpu: f64 = r[10]
            .parse()
            .unwrap_or_else(|_| panic!("no server CPU: {r:?}"));
        assert!(cpu > 0.0, "{r:?}");
        assert_eq!(r[13], "0", "errors: {r:?}");
    }
    assert!(report.contains("ext-echo: started as `"), "{report}");
    let others = report
        .split("## uring / other servers")
        .nth(1)
        .unwrap_or_else(|| panic!("no ratios against other servers: {report}"));
    assert_eq!(others.matches("| ext-echo |").count(), 3, "{others}");
    for svg in ["echo-throughput.svg", "echo-p99.svg"] {
        let text = std::fs::read_to_string(out_dir.join(svg)).unwrap();
        assert_eq!(text.matches("<polyline").count(), 3, "{svg}");
        assert!(text.contains(">ext-echo</text>"), "{svg} legend");
    }
    let _ = std::fs::remove_dir_all(out_dir);
}

/// `compare --peers` where cargo cannot be found: the report names what is missing, and the
/// comparison goes on with ringwork-echo's backends alone.
#[test]
fn compare_peers_without_cargo_says_so_and_goes_on() {
    let _turn = one_compare_at_a_time();
    let out_dir =
        std::env::temp_dir().join(format!("ringwork-compare-nopeers-{}", std::process::id()));
    let out = std::process::Command::new(binary("ringwork-bench"))
        .args([
            "compare",
            "--quick",
            "--peers",
            "--duration",
            "0.3",
            "--warmup",
            "0.1",
        ])
        .arg("--out")
        .arg(&out_dir)
        .arg("--server-bin")
        .arg(binary("ringwork-echo"))
        .env_remove("CARGO")
        .env("PATH", "/nonexistent")
        .output()
        .expect("run ringwork-bench");
    assert!(
        out.status.success(),
        "compare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(out_dir.join("BENCHMARKS.md")).unwrap();
    assert!(
        report.contains("**The peers (tokio, monoio) were not built**")
            && report.contains("cargo was not found"),
        "{report}"
    );
    for peer in ["tokio", "monoio"] {
        assert!(
            echo_rows(&report, peer).is_empty(),
            "{peer} measured: {report}"
        );
    }
    assert_eq!(echo_rows(&report, "uring").len(), 3, "{report}");
    assert!(!report.contains("## uring / other servers"), "{report}");
    let _ = std::fs::remove_dir_all(out_dir);
}

/// `compare --quick --files`: ringwork-files is measured against nginx when nginx is on PATH
/// (with its config, ratios and idle-connection memory in the report), and alone, saying why,
/// when it is not (CI may not install nginx).
#[test]
fn compare_quick_files_measures_ringwork_files_against_nginx() {
    let _turn = one_compare_at_a_time();
    let out_dir =
        std::env::temp_dir().join(format!("ringwork-compare-files-{}", std::process::id()));
    let out = std::process::Command::new(binary("ringwork-bench"))
        .args([
            "compare",
            "--quick",
            "--files",
            "--duration",
            "0.5",
            "--warmup",
            "0.2",
            "--out",
        ])
        .arg(&out_dir)
        .arg("--server-bin")
        .arg(binary("ringwork-echo"))
        .output()
        .expect("run ringwork-bench");
    assert!(
        out.status.success(),
        "compare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(out_dir.join("BENCHMARKS.md")).unwrap();
    let section = report
        .split("## Static files: ringwork-files against nginx")
        .nth(1)
        .unwrap_or_else(|| panic!("no nginx section: {report}"));
    assert!(section.contains("warm page cache"), "{section}");
    let main_table = section.split("\n### ").next().unwrap();
    let rows = |server: &str| -> Vec<Vec<String>> {
        main_table
            .lines()
            .filter(|l| l.starts_with(&format!("| {server} | ")))
            .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
            .collect()
    };
    let nginx_ran = !rows("nginx").is_empty();
    let servers: &[&str] = if nginx_ran {
        &["ringwork-files", "nginx"]
    } else {
        &["ringwork-files"]
    };
    for server in servers {
        let rows = rows(server);
        assert_eq!(rows.len(), 2, "two quick cells for {server}: {section}");
        for r in rows {
            // | server | cell | requests/s | spread | MB/s | p50 | p99 | p99.9 | CPU |
            // generator CPU | errors | held |
            let rps: f64 = r[3].replace(',', "").parse().unwrap();
            assert!(rps > 0.0, "no requests: {r:?}");
            assert_eq!(r[11], "0", "errors: {r:?}");
            let conns = r[2].rsplit(' ').next().unwrap();
            assert_eq!(r[12], conns, "every connection held: {r:?}");
        }
    }
    let memory = section
        .split("### Memory with")
        .nth(1)
        .expect("memory table");
    assert!(memory.contains("| ringwork-files | "), "{memory}");
    if nginx_ran {
        assert!(section.contains("```nginx") && section.contains("sendfile on;"));
        assert!(section.contains("### ringwork-files / nginx"), "{section}");
        assert!(memory.contains("| nginx (worker; master "), "{memory}");
    } else {
        assert!(
            section.contains("nginx was not found on PATH")
                || section.contains("nginx did not start"),
            "{section}"
        );
    }
    let _ = std::fs::remove_dir_all(out_dir);
}
