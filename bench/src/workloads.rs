//! The file-heavy and mixed workloads of `ringwork-bench compare --files`: random file reads
//! (io_uring engines against pread, from `fileread`) and HTTP file serving (ringwork-files'
//! io_uring backend against its epoll backend, loaded by `http`). Each returns a Markdown
//! section for BENCHMARKS.md.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::compare::start_server;
use crate::site::Order;
use crate::stats::thousands;
use crate::{fileread, http};

/// File-heavy: 4 KiB random reads at QD 64 from a file read once first (page cache). No
/// server here: the engines get every CPU (pread-pool's threads need them).
pub fn file_heavy(duration: Duration, quick: bool) -> Result<String, String> {
    ringwork_harness::pin::unpin_thread();
    let cfg = fileread::Config {
        path: std::env::temp_dir().join("ringwork-compare-fileread.dat"),
        size: if quick { 32 << 20 } else { 256 << 20 },
        bs: 4096,
        qd: 64,
        duration,
        seed: 0x5eed,
        drain_every: 0,
    };
    fileread::prepare_file(&cfg.path, cfg.size).map_err(|e| format!("prepare file: {e}"))?;
    let mut results = Vec::new();
    for engine in [
        fileread::Engine::Uring,
        fileread::Engine::UringFixed,
        fileread::Engine::Pread,
        fileread::Engine::PreadPool,
    ] {
        fileread::warm(&cfg.path)?;
        results.push(fileread::run(engine, &cfg)?);
    }
    let mut s = String::from(
        "\n## File-heavy: random reads (`ringwork-bench fileread`, warm page cache, all CPUs)\n\n",
    );
    s.push_str(&fileread::table(&cfg, &results, &[]));
    Ok(s)
}

/// The files ringwork-files serves in the mixed workload: (name, size).
pub const SITE: [(&str, usize); 3] = [
    ("index.html", 4096),
    ("medium.bin", 64 * 1024),
    ("large.bin", 1 << 20),
];

/// Writes the site under `root`.
pub fn make_site(root: &Path) -> Result<(), String> {
    std::fs::create_dir_all(root).map_err(|e| e.to_string())?;
    for (name, size) in SITE {
        let body: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        std::fs::write(root.join(name), body).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Mixed: keep-alive GETs cycling through [`SITE`], 50 connections, ringwork-files uring vs
/// epoll (one thread each, pinned like the echo server, the generator on CPU 0).
pub fn mixed(files_bin: &Path, duration: Duration, warmup: Duration) -> Result<String, String> {
    crate::compare::pin_generator();
    let root = std::env::temp_dir().join("ringwork-compare-www");
    make_site(&root)?;
    let root_arg = root.to_string_lossy().into_owned();
    let mut rows = Vec::new();
    for backend in ["uring", "epoll"] {
        let server = start_server(
            files_bin,
            &["--backend".into(), backend.into(), root_arg.clone()],
        )?;
        let cfg = http::Config {
            addr: server.addr,
            paths: SITE.iter().map(|(n, _)| format!("/{n}")).collect(),
            order: Order::Cycle,
            sizes: None,
            conns: 50,
            duration,
            warmup,
            server_pid: Some(server.pid()),
            tls: None,
            conn_per_request: false,
        };
        let out = http::run(&cfg).map_err(|e| format!("http against {backend}: {e}"))?;
        eprintln!(
            "{:>12} http: {:>9} req/s p99 {:>7.0} µs errors {}",
            backend,
            thousands(out.rps()),
            out.latency.p99_us,
            out.errors
        );
        rows.push((backend, out));
        drop(server);
    }
    let mut s = String::from(
        "\n## Mixed: HTTP file serving (`ringwork-bench http`, ringwork-files, 50 keep-alive connections cycling 4 KiB / 64 KiB / 1 MiB files)\n\n",
    );
    let _ = writeln!(
        s,
        "| backend | requests/s | MB/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/req | errors |"
    );
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (b, o) in &rows {
        let _ = writeln!(
            s,
            "| {b} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {} | {} |",
            thousands(o.rps()),
            o.mb_per_sec(),
            o.latency.p50_us,
            o.latency.p99_us,
            o.latency.p999_us,
            o.server_us_per_req()
                .map_or("-".into(), |v| format!("{v:.1}")),
            o.errors
        );
    }
    if let [(_, u), (_, e)] = rows.as_slice() {
        let cpu = match (u.server_us_per_req(), e.server_us_per_req()) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "\nuring / epoll: requests/s {:.2}x, server CPU per request {cpu}.",
            u.rps() / e.rps().max(1e-9)
        );
    }
    Ok(s)
}
