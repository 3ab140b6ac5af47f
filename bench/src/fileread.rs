//! `ringwork-bench fileread`: 4 KiB random reads at a queue depth, io_uring against pread.
//!
//! Engines:
//! - `uring`: IORING_OP_READ into ordinary (page-aligned) memory, plain fd.
//! - `uring-fixed`: READ_FIXED into registered buffers, the file in the registered file table.
//! - `uring-direct`: as `uring-fixed`, with the file opened O_DIRECT (alignment from statx
//!   STATX_DIOALIGN).
//! - `pread`: one thread, synchronous pread(2), depth 1 whatever `--qd` says.
//! - `pread-pool`: `--qd` threads each doing synchronous pread(2): the classic way to get depth
//!   without io_uring.
//!
//! Every engine reads the same random block offsets (a seeded xorshift), and every read is
//! checked for a full `bs` result. Whether the data came from the page cache depends on the
//! file size against free memory: `--drop-caches` starts cold, and the report says which.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringwork_core::token::UserData;
use ringwork_sys::{FixedBuffers, RingParams, SqeFlags, Target};

use crate::stats::{latency_histogram, self_cpu, thousands, Latency};

/// Which way to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// IORING_OP_READ, plain fd, ordinary buffers.
    Uring,
    /// READ_FIXED + registered file.
    UringFixed,
    /// READ_FIXED + registered file + O_DIRECT.
    UringDirect,
    /// Synchronous pread, one thread.
    Pread,
    /// Synchronous pread, `--qd` threads.
    PreadPool,
}

impl Engine {
    /// Every engine, in report order.
    pub const ALL: [Engine; 5] = [
        Engine::Uring,
        Engine::UringFixed,
        Engine::UringDirect,
        Engine::Pread,
        Engine::PreadPool,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Uring => "uring",
            Engine::UringFixed => "uring-fixed",
            Engine::UringDirect => "uring-direct",
            Engine::Pread => "pread",
            Engine::PreadPool => "pread-pool",
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file (created or extended with real data when smaller than `size`).
    pub path: std::path::PathBuf,
    /// Bytes of the file to read from.
    pub size: u64,
    /// Block size of each read.
    pub bs: u32,
    /// Reads in flight.
    pub qd: u32,
    /// How long each engine runs.
    pub duration: Duration,
    /// Seed of the offset sequence.
    pub seed: u64,
    /// io_uring engines: set IOSQE_IO_DRAIN on every Nth read (0: never). Reads need no
    /// ordering; `ringwork-bench drain` uses this to price the flag alone.
    pub drain_every: u32,
}

/// One engine's result.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Which engine.
    pub engine: Engine,
    /// Reads completed.
    pub ops: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Per-read latency (submit to completion).
    pub latency: Latency,
    /// CPU time of the whole process during the run.
    pub cpu: Duration,
    /// io_uring_enter calls (0 for pread engines).
    pub enters: u64,
    /// A note, e.g. why O_DIRECT fell back.
    pub note: String,
}

impl Outcome {
    /// Reads per second.
    pub fn iops(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// CPU microseconds per read.
    pub fn cpu_us_per_op(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }

    /// JSON object text.
    pub fn json(&self, bs: u32) -> String {
        format!(
            "{{\"engine\":\"{}\",\"ops\":{},\"secs\":{:.3},\"iops\":{:.0},\"mb_per_s\":{:.1},\"latency\":{},\"cpu_us_per_op\":{:.3},\"enters\":{},\"note\":\"{}\"}}",
            self.engine.name(),
            self.ops,
            self.elapsed.as_secs_f64(),
            self.iops(),
            self.iops() * f64::from(bs) / 1e6,
            self.latency.json(),
            self.cpu_us_per_op(),
            self.enters,
            self.note.replace('"', "'")
        )
    }
}

/// Seeded xorshift64*: the offset sequence, identical for every engine.
#[derive(Clone)]
pub struct Offsets {
    state: u64,
    blocks: u64,
    bs: u64,
}

impl Offsets {
    /// Offsets of `bs`-byte blocks within `size` bytes.
    pub fn new(seed: u64, size: u64, bs: u32) -> Self {
        Self {
            state: seed | 1,
            blocks: (size / u64::from(bs)).max(1),
            bs: u64::from(bs),
        }
    }

    /// The next block-aligned offset.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let r = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (r % self.blocks) * self.bs
    }
}

/// Creates or extends `path` to `size` bytes of non-zero data (never sparse: holes would be
/// read without touching the disk).
pub fn prepare_file(path: &std::path::Path, size: u64) -> std::io::Result<()> {
    let existing = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if existing >= size {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut written = existing;
    while written < size {
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = ((written as usize + i) % 251) as u8 | 1;
        }
        let n = (size - written).min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        written += n as u64;
    }
    f.sync_all()
}

/// Runs one engine.
pub fn run(engine: Engine, cfg: &Config) -> Result<Outcome, String> {
    match engine {
        Engine::Uring | Engine::UringFixed | Engine::UringDirect => run_uring(engine, cfg),
        Engine::Pread => run_pread_pool(engine, cfg, 1),
        Engine::PreadPool => run_pread_pool(engine, cfg, cfg.qd),
    }
}

fn open(cfg: &Config, direct: bool) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    if direct {
        o.custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32);
    }
    o.open(&cfg.path)
}

fn run_uring(engine: Engine, cfg: &Config) -> Result<Outcome, String> {
    let mut note = String::new();
    let (file, direct) = if engine == Engine::UringDirect {
        match open(cfg, true) {
            Ok(f) => {
                let st = rustix::fs::statx(
                    &f,
                    "",
                    rustix::fs::AtFlags::EMPTY_PATH,
                    rustix::fs::StatxFlags::DIOALIGN,
                )
                .map_err(|e| format!("statx: {e}"))?;
                let align = st.stx_dio_offset_align.max(st.stx_dio_mem_align);
                if align == 0 {
                    note = "filesystem reports no O_DIRECT support; buffered instead".into();
                    (open(cfg, false).map_err(|e| e.to_string())?, false)
                } else if cfg.bs % align != 0 {
                    return Err(format!(
                        "--bs {} is not a multiple of the O_DIRECT alignment {align}",
                        cfg.bs
                    ));
                } else {
                    (f, true)
                }
            }
            Err(e) => {
                note = format!("O_DIRECT refused ({e}); buffered instead");
                (open(cfg, false).map_err(|e| e.to_string())?, false)
            }
        }
    } else {
        (
            open(cfg, false).map_err(|e| format!("open {}: {e}", cfg.path.display()))?,
            false,
        )
    };
    let _ = direct;
    let fixed = engine != Engine::Uring;
    let qd = cfg.qd.max(1);
    let mut ring = RingParams::new(qd.next_power_of_two())
        .build()
        .map_err(|e| e.to_string())?;
    let buffers = FixedBuffers::new(qd as u16, cfg.bs as usize).map_err(|e| e.to_string())?;
    // Plain reads use the same page-aligned memory, just unregistered (adopted by the ring),
    // so the only difference between the engines is what the kernel is told.
    let target = if fixed {
        ring.register_files_sparse(1).map_err(|e| e.to_string())?;
        ring.update_files(0, &[file.as_raw_fd()])
            .map_err(|e| e.to_string())?;
        ring.register_buffers(buffers).map_err(|e| e.to_string())?;
        Target::Fixed(0)
    } else {
        ring.adopt_buffers(buffers).map_err(|e| e.to_string())?;
        Target::Fd(file.as_raw_fd())
    };

    let mut offsets = Offsets::new(cfg.seed, cfg.size, cfg.bs);
    let mut hist = latency_histogram();
    let mut started = vec![Instant::now(); qd as usize];
    let cpu0 = self_cpu();
    let enters0 = ring.stats().enters;
    let t0 = Instant::now();
    let end = t0 + cfg.duration;

    let mut issued = 0u64;
    // Issues a read for slot `slot` into a leased buffer (the lease travels with the read and
    // comes back with its CQE), recording its start time.
    let mut issue = |ring: &mut ringwork_sys::Ring,
                     started: &mut [Instant],
                     offset: u64,
                     slot: usize|
     -> Result<(), String> {
        let lease = ring
            .fixed_buffers()
            .and_then(|b| b.acquire())
            .ok_or("buffer pool exhausted")?;
        let sqe = ring
            .read_fixed(target, lease, 0, cfg.bs, offset)
            .user_data(UserData(slot as u64));
        issued += 1;
        let sqe = if cfg.drain_every > 0 && issued % u64::from(cfg.drain_every) == 0 {
            sqe.flags(SqeFlags::IO_DRAIN)
        } else {
            sqe
        };
        started[slot] = Instant::now();
        ring.push_safe(sqe).map_err(|e| e.to_string())
    };

    for slot in 0..qd as usize {
        issue(&mut ring, &mut started, offsets.next(), slot)?;
    }
    let mut in_flight = qd;
    let mut ops = 0u64;
    let mut cqes = Vec::with_capacity(qd as usize * 2);
    while in_flight > 0 {
        ring.submit_and_wait(1).map_err(|e| e.to_string())?;
        cqes.extend(ring.completions());
        let now = Instant::now();
        for c in cqes.drain(..) {
            let slot = c.user_data().0 as usize;
            let lease = ring
                .take_lease(c.user_data())
                .ok_or("completion for an idle slot")?;
            ring.fixed_buffers()
                .expect("set up before the first read")
                .release(lease);
            match c.result() {
                Ok(n) if n == cfg.bs => {}
                Ok(n) => {
                    return Err(format!(
                        "short read of {n} bytes at a block inside the file"
                    ))
                }
                Err(e) => return Err(format!("read failed: {e}")),
            }
            let _ = hist.record(now.duration_since(started[slot]).as_nanos() as u64);
            ops += 1;
            if now < end {
                issue(&mut ring, &mut started, offsets.next(), slot)?;
            } else {
                in_flight -= 1;
            }
        }
    }
    let elapsed = t0.elapsed();
    Ok(Outcome {
        engine,
        ops,
        elapsed,
        latency: Latency::from_histogram(&hist),
        cpu: self_cpu().saturating_sub(cpu0),
        enters: ring.stats().enters - enters0,
        note,
    })
}

fn run_pread_pool(engine: Engine, cfg: &Config, threads: u32) -> Result<Outcome, String> {
    let file = Arc::new(open(cfg, false).map_err(|e| format!("open {}: {e}", cfg.path.display()))?);
    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = self_cpu();
    let t0 = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let file = file.clone();
            let stop = stop.clone();
            let mut offsets =
                Offsets::new(cfg.seed.wrapping_add(u64::from(t) * 7919), cfg.size, cfg.bs);
            let bs = cfg.bs as usize;
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || -> Result<(u64, Histogram<u64>), String> {
                    let mut buf = vec![0u8; bs];
                    let mut hist = latency_histogram();
                    let mut ops = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let off = offsets.next();
                        let s = Instant::now();
                        let n = rustix::io::pread(&*file, &mut buf, off)
                            .map_err(|e| format!("pread: {e}"))?;
                        if n != bs {
                            return Err(format!("short pread of {n} bytes"));
                        }
                        let _ = hist.record(s.elapsed().as_nanos() as u64);
                        ops += 1;
                    }
                    Ok((ops, hist))
                })
                .expect("spawn reader")
        })
        .collect();
    std::thread::sleep(cfg.duration);
    stop.store(true, Ordering::Relaxed);
    let mut hist = latency_histogram();
    let mut ops = 0;
    for h in handles {
        let (n, th) = h.join().map_err(|_| "reader panicked")??;
        ops += n;
        hist.add(&th).map_err(|e| e.to_string())?;
    }
    Ok(Outcome {
        engine,
        ops,
        elapsed: t0.elapsed(),
        latency: Latency::from_histogram(&hist),
        cpu: self_cpu().saturating_sub(cpu0),
        enters: 0,
        note: String::new(),
    })
}

/// fio's figures for the same workload, when fio is installed.
#[derive(Clone, Debug)]
pub struct FioOutcome {
    /// Which fio run (see [`FIO_RUNS`]).
    pub label: &'static str,
    /// Reads per second.
    pub iops: f64,
    /// Completion latency percentiles in microseconds (p50, p99).
    pub p50_us: f64,
    /// p99 in microseconds.
    pub p99_us: f64,
}

/// The fio runs that match our engines: (label, ioengine, extra arguments).
pub const FIO_RUNS: [(&str, &str, &[&str]); 3] = [
    ("io_uring", "io_uring", &["--direct=0"]),
    (
        "io_uring direct+fixedbufs+registerfiles",
        "io_uring",
        &["--direct=1", "--fixedbufs", "--registerfiles"],
    ),
    ("psync", "psync", &["--direct=0"]),
];

/// Runs fio (`label`, `ioengine`, `extra` from [`FIO_RUNS`]) on the same file, block size,
/// depth and duration. fio's own cache invalidation is off: the caller decides warm or cold.
pub fn run_fio(
    cfg: &Config,
    label: &'static str,
    ioengine: &str,
    extra: &[&str],
) -> Result<FioOutcome, String> {
    let depth = if ioengine == "psync" { 1 } else { cfg.qd };
    // Engine options (--fixedbufs, ...) are only accepted after --ioengine.
    let out = std::process::Command::new("fio")
        .args([
            "--invalidate=0",
            "--name=ringwork-compare",
            &format!("--filename={}", cfg.path.display()),
            "--rw=randread",
            &format!("--bs={}", cfg.bs),
            &format!("--size={}", cfg.size),
            &format!("--iodepth={depth}"),
            &format!("--ioengine={ioengine}"),
            "--time_based",
            &format!("--runtime={}", cfg.duration.as_secs().max(1)),
            "--output-format=json",
        ])
        .args(extra)
        .output()
        .map_err(|e| format!("fio: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "fio failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let read = text
        .find("\"read\"")
        .ok_or("fio output has no read section")?;
    let section = &text[read..];
    let num_after = |s: &str, key: &str| -> Option<f64> {
        let i = s.find(key)? + key.len();
        let rest = s[i..].trim_start_matches([' ', ':', '"']);
        let end = rest.find([',', '\n', '}']).unwrap_or(rest.len());
        rest[..end].trim().trim_matches('"').parse().ok()
    };
    let iops = num_after(section, "\"iops\"").ok_or("no iops in fio output")?;
    let clat = section
        .find("\"clat_ns\"")
        .map(|i| &section[i..])
        .unwrap_or(section);
    Ok(FioOutcome {
        label,
        iops,
        p50_us: num_after(clat, "\"50.000000\"").unwrap_or(0.0) / 1000.0,
        p99_us: num_after(clat, "\"99.000000\"").unwrap_or(0.0) / 1000.0,
    })
}

/// The human table.
pub fn table(cfg: &Config, results: &[Outcome], fio: &[FioOutcome]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "random {} B reads, {} MiB file, qd {}, {} s per engine\n\n",
        cfg.bs,
        cfg.size >> 20,
        cfg.qd,
        cfg.duration.as_secs()
    ));
    s.push_str(
        "| engine | IOPS | MB/s | p50 µs | p99 µs | CPU µs/read | reads/enter | vs pread |\n",
    );
    s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    let base = results
        .iter()
        .find(|r| r.engine == Engine::Pread)
        .map(|r| r.iops());
    for r in results {
        let per_enter = if r.enters > 0 {
            format!("{:.1}", r.ops as f64 / r.enters as f64)
        } else {
            "-".into()
        };
        let ratio = base.map_or("-".into(), |b| format!("{:.2}x", r.iops() / b));
        s.push_str(&format!(
            "| {}{} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {} | {} |\n",
            r.engine.name(),
            if r.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.note)
            },
            thousands(r.iops()),
            r.iops() * f64::from(cfg.bs) / 1e6,
            r.latency.p50_us,
            r.latency.p99_us,
            r.cpu_us_per_op(),
            per_enter,
            ratio
        ));
    }
    for f in fio {
        s.push_str(&format!(
            "| fio {} | {} | {:.1} | {:.1} | {:.1} | - | - | {} |\n",
            f.label,
            thousands(f.iops),
            f.iops * f64::from(cfg.bs) / 1e6,
            f.p50_us,
            f.p99_us,
            base.map_or("-".into(), |b| format!("{:.2}x", f.iops / b)),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_aligned_and_in_range() {
        let mut o = Offsets::new(42, 1 << 20, 4096);
        for _ in 0..10_000 {
            let off = o.next();
            assert_eq!(off % 4096, 0);
            assert!(off + 4096 <= 1 << 20);
        }
    }

    #[test]
    fn every_engine_reads_a_real_file() {
        let path = std::env::temp_dir().join(format!("ringwork-bench-test-{}", std::process::id()));
        prepare_file(&path, 1 << 20).unwrap();
        let cfg = Config {
            path: path.clone(),
            size: 1 << 20,
            bs: 4096,
            qd: 8,
            duration: Duration::from_millis(100),
            seed: 1,
            drain_every: 0,
        };
        for engine in Engine::ALL {
            let r = run(engine, &cfg).unwrap_or_else(|e| panic!("{}: {e}", engine.name()));
            assert!(r.ops > 0, "{} completed no reads", engine.name());
            assert_eq!(r.latency.count, r.ops);
            if matches!(
                engine,
                Engine::Uring | Engine::UringFixed | Engine::UringDirect
            ) {
                assert!(
                    r.enters > 0 && r.enters <= r.ops,
                    "{}: {} enters for {} ops",
                    engine.name(),
                    r.enters,
                    r.ops
                );
            }
        }
        let _ = std::fs::remove_file(path);
    }
}
