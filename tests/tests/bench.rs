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
