//! `ringwork-bench compare --quick` against the real ringwork-echo, both backends: the report
//! has every row, no errors, and the plots.

use ringwork_e2e::binary;

#[test]
fn compare_quick_writes_a_complete_report() {
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

/// `compare --quick --files`: ringwork-files is measured against nginx when nginx is on PATH
/// (with its config, ratios and idle-connection memory in the report), and alone, saying why,
/// when it is not (CI may not install nginx).
#[test]
fn compare_quick_files_measures_ringwork_files_against_nginx() {
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
