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
//! checked for a full `bs` result.
//!
//! Run one after another, engines measure the machine as much as themselves: the page cache
//! fills under them and a shared disk drifts (a cold `uring-direct` once read 51,810 IOPS, then
//! fio's equivalent 69,898, and `pread-pool`, later on the same "cold" file, 172,687). So
//! [`run_rounds`] alternates the engines in rounds, rotating their order, and the table gives
//! each engine's median over the rounds with the spread; the page cache is put in the same
//! state before every run (dropped: cold, or the file read once: warm), and each figure says
//! which. A cold run warms the cache itself as it goes (its reads, and the kernel's readahead
//! around them): the table gives a lower bound on how much of the file was cached by its end.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringwork_core::token::UserData;
use ringwork_sys::{FixedBuffers, Ring, RingParams, SqeFlags, Target};

use crate::rng::Rng;
use crate::stats::{
    latency_histogram, machine_line, median_index, self_cpu, spread_cell, thousands, Latency,
    Spread,
};

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

/// The page cache's state at the start of every run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cache {
    /// Dropped before every run (`echo 3 > /proc/sys/vm/drop_caches`, root only).
    Cold,
    /// The whole file read once before every run.
    Warm,
}

impl Cache {
    /// The word the tables use.
    pub fn name(self) -> &'static str {
        match self {
            Cache::Cold => "cold",
            Cache::Warm => "warm",
        }
    }

    /// Puts the cache in this state for `path`.
    pub fn prepare(self, path: &std::path::Path) -> Result<(), String> {
        match self {
            Cache::Cold => drop_caches(),
            Cache::Warm => warm(path),
        }
    }
}

/// Writes dirty pages back and drops the page cache (needs root).
pub fn drop_caches() -> Result<(), String> {
    rustix::fs::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .map_err(|e| format!("dropping the page cache (cold runs) needs root: {e}"))
}

/// Reads the whole file once, so that its pages are in the page cache.
pub fn warm(path: &std::path::Path) -> Result<(), String> {
    use std::io::Read;
    let mut f = File::open(path).map_err(|e| format!("warm {}: {e}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf).map_err(|e| e.to_string())? > 0 {}
    Ok(())
}

/// Every run of [`run_rounds`].
#[derive(Clone, Debug)]
pub struct Rounds {
    /// The cache state each run started from.
    pub cache: Cache,
    /// Rounds run.
    pub rounds: u32,
    /// Per engine, in the order asked for, its run in each round.
    pub engines: Vec<(Engine, Vec<Outcome>)>,
    /// Per fio run (see [`FIO_RUNS`]), its run in each round where fio succeeded.
    pub fio: Vec<(&'static str, Vec<FioOutcome>)>,
}

/// The order of `n` engines in round `round` (0-based): rotated by one each round, so that no
/// engine always runs first after the cache is prepared, or last when the disk has drifted.
pub fn round_order(n: usize, round: usize) -> Vec<usize> {
    (0..n).map(|k| (k + round) % n.max(1)).collect()
}

/// Runs `engines` (and fio's equivalents when `fio`) for `rounds` rounds, alternating them
/// within each round, with the page cache put in state `cache` before every run. Progress goes
/// to stderr.
pub fn run_rounds(
    cfg: &Config,
    engines: &[Engine],
    fio: bool,
    cache: Cache,
    rounds: u32,
) -> Result<Rounds, String> {
    // One list of every run to alternate: ours, then fio's (when asked for and installed).
    let fio_runs: &[(&'static str, &str, &[&str])] = if fio && fio_installed() {
        &FIO_RUNS
    } else {
        if fio {
            eprintln!("fio not found on PATH: its rows are left out (apt-get install -y fio)");
        }
        &[]
    };
    let mut out = Rounds {
        cache,
        rounds,
        engines: engines.iter().map(|&e| (e, Vec::new())).collect(),
        fio: fio_runs.iter().map(|r| (r.0, Vec::new())).collect(),
    };
    let n = engines.len() + fio_runs.len();
    for round in 0..rounds.max(1) as usize {
        for k in round_order(n, round) {
            cache.prepare(&cfg.path)?;
            if k < engines.len() {
                let e = engines[k];
                let r = run(e, cfg)?;
                eprintln!(
                    "round {}: {} {:.0} IOPS ({})",
                    round + 1,
                    e.name(),
                    r.iops(),
                    cache.name()
                );
                out.engines[k].1.push(r);
            } else {
                let (label, ioengine, extra) = fio_runs[k - engines.len()];
                match run_fio(cfg, label, ioengine, extra) {
                    Ok(f) => {
                        eprintln!("round {}: fio {label} {:.0} IOPS", round + 1, f.iops);
                        out.fio[k - engines.len()].1.push(f);
                    }
                    Err(e) => eprintln!("round {}: fio {label}: {e}", round + 1),
                }
            }
        }
    }
    Ok(out)
}

fn fio_installed() -> bool {
    std::process::Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// How much of a `blocks`-block file `reads` uniformly random reads have brought into the
/// page cache (1 - e^(-reads/blocks)): how warm a cold run was by its end.
pub fn cached_fraction(reads: u64, blocks: u64) -> f64 {
    1.0 - (-(reads as f64) / blocks.max(1) as f64).exp()
}

/// The offset sequence, identical for every engine: [`Rng`] draws over the blocks.
#[derive(Clone)]
pub struct Offsets {
    rng: Rng,
    blocks: u64,
    bs: u64,
}

impl Offsets {
    /// Offsets of `bs`-byte blocks within `size` bytes.
    pub fn new(seed: u64, size: u64, bs: u32) -> Self {
        Self {
            rng: Rng::new(seed),
            blocks: (size / u64::from(bs)).max(1),
            bs: u64::from(bs),
        }
    }

    /// The next block-aligned offset.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.rng.below(self.blocks) * self.bs
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

/// Opens the file for an io_uring engine: with O_DIRECT for `UringDirect` where the
/// filesystem allows it, buffered otherwise. The note says why a direct run fell back.
fn open_for_uring(engine: Engine, cfg: &Config) -> Result<(File, String), String> {
    if engine != Engine::UringDirect {
        let file = open(cfg, false).map_err(|e| format!("open {}: {e}", cfg.path.display()))?;
        return Ok((file, String::new()));
    }
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
                let note = "filesystem reports no O_DIRECT support; buffered instead".into();
                Ok((open(cfg, false).map_err(|e| e.to_string())?, note))
            } else if cfg.bs % align != 0 {
                Err(format!(
                    "--bs {} is not a multiple of the O_DIRECT alignment {align}",
                    cfg.bs
                ))
            } else {
                Ok((f, String::new()))
            }
        }
        Err(e) => {
            let note = format!("O_DIRECT refused ({e}); buffered instead");
            Ok((open(cfg, false).map_err(|e| e.to_string())?, note))
        }
    }
}

/// A ring of `cfg.qd` entries with a pool of `cfg.qd` page-aligned `cfg.bs`-byte buffers,
/// and the target its reads name: for `Uring` the plain fd and unregistered buffers, for the
/// others a registered file and registered buffers.
fn uring_for(engine: Engine, cfg: &Config, file: &File) -> Result<(Ring, Target), String> {
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
    Ok((ring, target))
}

fn run_uring(engine: Engine, cfg: &Config) -> Result<Outcome, String> {
    let (file, note) = open_for_uring(engine, cfg)?;
    let qd = cfg.qd.max(1);
    let (mut ring, target) = uring_for(engine, cfg, &file)?;

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
    let mut issue = |ring: &mut Ring,
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

/// The human table of single runs (one per engine, as `compare --files` runs them).
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
        s.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {} | {} |\n",
            engine_label(r),
            thousands(r.iops()),
            r.iops() * f64::from(cfg.bs) / 1e6,
            r.latency.p50_us,
            r.latency.p99_us,
            r.cpu_us_per_op(),
            per_enter(r),
            base.map_or("-".into(), |b| format!("{:.2}x", r.iops() / b))
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

fn engine_label(r: &Outcome) -> String {
    if r.note.is_empty() {
        r.engine.name().to_string()
    } else {
        format!("{} ({})", r.engine.name(), r.note)
    }
}

fn per_enter(r: &Outcome) -> String {
    if r.enters > 0 {
        format!("{:.1}", r.ops as f64 / r.enters as f64)
    } else {
        "-".into()
    }
}

/// What the cache column says for `engine`'s median run: O_DIRECT reads bypass the cache;
/// a cold buffered run also says how warm its own reads had made the cache by its end (at
/// least: readahead brings in more than the blocks read).
fn cache_label(cfg: &Config, cache: Cache, r: &Outcome) -> String {
    if r.engine == Engine::UringDirect && r.note.is_empty() {
        return "O_DIRECT (no page cache)".into();
    }
    match cache {
        Cache::Warm => "warm".into(),
        Cache::Cold => format!(
            "cold, ≥{:.0}% cached by the end",
            cached_fraction(r.ops, cfg.size / u64::from(cfg.bs)) * 100.0
        ),
    }
}

/// The human table of [`run_rounds`]: per engine, the median IOPS over the rounds, the spread,
/// every round's figure, and the median run's latency and CPU.
pub fn rounds_table(cfg: &Config, r: &Rounds) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "random {} B reads, {} MiB file on {}, qd {}, {} s per run; {} round{}, engines alternating \
         within each round (order rotated each round); page cache {} before every run\n\n",
        cfg.bs,
        cfg.size >> 20,
        crate::drain::fs_name(&cfg.path),
        cfg.qd,
        cfg.duration.as_secs(),
        r.rounds,
        if r.rounds == 1 { "" } else { "s" },
        match r.cache {
            Cache::Cold => "dropped (cold)",
            Cache::Warm => "filled by reading the file once (warm)",
        },
    ));
    s.push_str(
        "| engine | cache | IOPS (median) | spread | IOPS per round | MB/s | p50 µs | p99 µs | CPU µs/read | reads/enter | vs pread |\n",
    );
    s.push_str("| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    let iops_of = |runs: &[Outcome]| runs.iter().map(Outcome::iops).collect::<Vec<_>>();
    let base = r
        .engines
        .iter()
        .find(|(e, _)| *e == Engine::Pread)
        .and_then(|(_, runs)| Spread::of(&iops_of(runs)))
        .map(|sp| sp.median);
    let ratio = |v: f64| base.map_or("-".into(), |b| format!("{:.2}x", v / b));
    let per_round = |v: &[f64]| {
        v.iter()
            .map(|x| thousands(*x))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    for (_, runs) in &r.engines {
        let iops = iops_of(runs);
        let (Some(sp), Some(mid)) = (Spread::of(&iops), median_index(&iops)) else {
            continue;
        };
        let m = &runs[mid];
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {} | {} |\n",
            engine_label(m),
            cache_label(cfg, r.cache, m),
            thousands(sp.median),
            spread_cell(&sp, runs.len()),
            per_round(&iops),
            sp.median * f64::from(cfg.bs) / 1e6,
            m.latency.p50_us,
            m.latency.p99_us,
            m.cpu_us_per_op(),
            per_enter(m),
            ratio(sp.median),
        ));
    }
    for (label, runs) in &r.fio {
        let iops: Vec<f64> = runs.iter().map(|f| f.iops).collect();
        let (Some(sp), Some(mid)) = (Spread::of(&iops), median_index(&iops)) else {
            continue;
        };
        let m = &runs[mid];
        let cache = if label.contains("direct") {
            "O_DIRECT (no page cache)"
        } else {
            r.cache.name()
        };
        s.push_str(&format!(
            "| fio {label} | {cache} | {} | {} | {} | {:.1} | {:.1} | {:.1} | - | - | {} |\n",
            thousands(sp.median),
            spread_cell(&sp, runs.len()),
            per_round(&iops),
            sp.median * f64::from(cfg.bs) / 1e6,
            m.p50_us,
            m.p99_us,
            ratio(sp.median),
        ));
    }
    s.push_str(
        "\nspread: half the range of the rounds around the median ((max - min) / 2 / median); \
         latency and CPU are the median run's.\n",
    );
    s
}

/// JSON text of [`run_rounds`]' results: per engine, the median IOPS and every run.
pub fn rounds_json(cfg: &Config, r: &Rounds) -> String {
    let body: Vec<String> = r
        .engines
        .iter()
        .map(|(e, runs)| {
            let iops: Vec<f64> = runs.iter().map(Outcome::iops).collect();
            let sp = Spread::of(&iops);
            format!(
                "{{\"engine\":\"{}\",\"cache\":\"{}\",\"median_iops\":{:.0},\"min_iops\":{:.0},\"max_iops\":{:.0},\"runs\":[{}]}}",
                e.name(),
                r.cache.name(),
                sp.map_or(0.0, |s| s.median),
                sp.map_or(0.0, |s| s.min),
                sp.map_or(0.0, |s| s.max),
                runs.iter().map(|o| o.json(cfg.bs)).collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    format!("[{}]\n", body.join(","))
}

/// `ringwork-bench fileread`'s options.
#[derive(clap::Args)]
pub struct Args {
    /// File to read (created, or extended with real data, when smaller than --size).
    #[arg(long, default_value = "/tmp/ringwork-fileread.dat")]
    file: PathBuf,
    /// Bytes of the file to read from (suffixes k, M, G).
    #[arg(long, default_value = "256M", value_parser = crate::parse_size)]
    size: u64,
    /// Bytes per read (suffixes k, M).
    #[arg(long, default_value = "4k", value_parser = crate::parse_size)]
    bs: u64,
    /// Reads in flight (threads, for pread-pool).
    #[arg(long, default_value_t = 64)]
    qd: u32,
    /// Seconds per engine per round.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Rounds; the engines (and fio's runs) alternate within each, and the table gives
    /// each one's median and spread.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Engines to run, comma-separated [default: all].
    #[arg(long, value_delimiter = ',')]
    engine: Vec<Engine>,
    /// Also run fio on the same file (io_uring buffered; io_uring O_DIRECT with fixed
    /// buffers and registered files; psync), when installed.
    #[arg(long)]
    fio: bool,
    /// Drop the page cache before every run (needs root): cold-cache figures.
    #[arg(long)]
    drop_caches: bool,
    /// Read the whole file once before every run so that reads come from the page cache
    /// (the default without --drop-caches).
    #[arg(long, conflicts_with = "drop_caches")]
    warm: bool,
    /// Write results as JSON here too (default: the table only).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// `ringwork-bench fileread`: every engine asked for, in rounds, the table on stdout.
pub fn run_command(args: Args) -> Result<(), String> {
    if args.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    let cfg = Config {
        path: args.file,
        size: args.size,
        bs: u32::try_from(args.bs).map_err(|_| "--bs too large")?,
        qd: args.qd,
        duration: Duration::from_secs(args.duration),
        seed: 0x5eed,
        drain_every: 0,
    };
    prepare_file(&cfg.path, cfg.size)
        .map_err(|e| format!("prepare {}: {e}", cfg.path.display()))?;
    let engines = if args.engine.is_empty() {
        Engine::ALL.to_vec()
    } else {
        args.engine
    };
    // clap refuses --warm beside --drop-caches; warm is the default either way.
    let cache = if args.drop_caches && !args.warm {
        Cache::Cold
    } else {
        Cache::Warm
    };
    println!("# ringwork-bench fileread on {}", machine_line());
    let results = run_rounds(&cfg, &engines, args.fio, cache, args.rounds)?;
    print!("{}", rounds_table(&cfg, &results));
    if let Some(path) = args.json {
        std::fs::write(&path, rounds_json(&cfg, &results))
            .map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    Ok(())
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
    fn rounds_rotate_the_order() {
        assert_eq!(round_order(3, 0), [0, 1, 2]);
        assert_eq!(round_order(3, 1), [1, 2, 0]);
        assert_eq!(round_order(3, 2), [2, 0, 1]);
        assert_eq!(round_order(3, 3), [0, 1, 2]);
        assert!(round_order(0, 5).is_empty());
    }

    #[test]
    fn cold_runs_warm_up_as_they_read() {
        assert_eq!(cached_fraction(0, 1000), 0.0);
        assert!((cached_fraction(1000, 1000) - 0.632).abs() < 0.001);
        assert!(cached_fraction(5000, 1000) > 0.99);
    }

    fn outcome(engine: Engine, iops: u64) -> Outcome {
        Outcome {
            engine,
            ops: iops,
            elapsed: Duration::from_secs(1),
            latency: Latency::default(),
            cpu: Duration::from_millis(100),
            enters: 0,
            note: String::new(),
        }
    }

    #[test]
    fn rounds_table_gives_medians_spreads_and_cache_states() {
        let cfg = Config {
            path: "/tmp".into(),
            size: 1 << 30,
            bs: 4096,
            qd: 64,
            duration: Duration::from_secs(1),
            seed: 1,
            drain_every: 0,
        };
        let r = Rounds {
            cache: Cache::Cold,
            rounds: 3,
            engines: vec![
                (
                    Engine::Pread,
                    vec![
                        outcome(Engine::Pread, 1000),
                        outcome(Engine::Pread, 3000),
                        outcome(Engine::Pread, 2000),
                    ],
                ),
                (
                    Engine::UringDirect,
                    vec![
                        outcome(Engine::UringDirect, 9000),
                        outcome(Engine::UringDirect, 10_000),
                        outcome(Engine::UringDirect, 11_000),
                    ],
                ),
            ],
            fio: vec![],
        };
        let t = rounds_table(&cfg, &r);
        assert!(
            t.contains(
                "| pread | cold, ≥1% cached by the end | 2,000 | ±50% | 1,000 / 3,000 / 2,000 |"
            ),
            "{t}"
        );
        assert!(
            t.contains("| uring-direct | O_DIRECT (no page cache) | 10,000 | ±10% |"),
            "{t}"
        );
        assert!(t.contains("| 5.00x |"), "{t}");
        assert!(
            t.contains("3 rounds") && t.contains("dropped (cold)"),
            "{t}"
        );
        let j = rounds_json(&cfg, &r);
        assert!(
            j.contains("\"engine\":\"pread\",\"cache\":\"cold\",\"median_iops\":2000"),
            "{j}"
        );
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
