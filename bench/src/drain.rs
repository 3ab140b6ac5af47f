//! `ringwork-bench drain`: what ordering between io_uring requests costs.
//!
//! The kernel starts the SQEs of one submission in no particular order and completes them in
//! any order. Where one request must not start before others have finished there are three
//! ways to say so, and this benchmark prices each on a workload that genuinely needs it: a
//! write-ahead log's durability barrier. Each batch is `batch` 4 KiB writes at explicit,
//! consecutive offsets of a preallocated log file, followed by an fdatasync
//! (IORING_OP_FSYNC with IORING_FSYNC_DATASYNC) that must not start before the batch's writes
//! have completed (an fdatasync that overtakes a write does not cover it). `in_flight` batches
//! are kept going at once, as a log writer with several groups committing would.
//!
//! WAL variants, identical work, alternated round by round:
//! - `drain`: the fsync SQE carries IOSQE_IO_DRAIN. The kernel holds it until *every* request
//!   submitted before it (other batches' writes too) has completed, and holds every later
//!   request until it has completed: the whole ring is serialised around each fsync.
//! - `link`: the batch's writes and its fsync as one IOSQE_IO_LINK chain. Only this batch is
//!   ordered, but a chain runs one request at a time, so its writes run serially too.
//! - `wait`: writes unordered; user space submits the fsync once it has reaped all of the
//!   batch's write CQEs. Only this batch is ordered, at the price of a round trip.
//! - `unordered`: the fsync is submitted beside the writes with no ordering at all. NOT
//!   durable (the fsync may run before the writes it should cover): the ceiling, not an option.
//!
//! Every variant checks the order of its completions: a write CQE of a batch arriving after
//! that batch's fsync CQE is an ordering violation (fatal for the three ordered variants,
//! counted for `unordered`), and for `drain` no write of a later batch may complete before an
//! earlier batch's fsync. CQE order is the order in which the kernel completed the requests,
//! so a violation proves the fsync did not wait; the absence of one in `unordered` does not
//! prove that it did.
//!
//! The price of IOSQE_IO_DRAIN alone: `reads` / `reads-drain` are `ringwork-bench fileread`'s
//! `uring` engine (4 KiB random reads at a queue depth, page cache) with IO_DRAIN on every
//! `drain_every`th read, a workload that needs no ordering at all.
//!
//! What it deliberately does not do: vary the write buffer (every write sends the same
//! immutable block, which the kernel only reads, so sharing it between writes in flight is
//! sound), or claim anything about power-loss durability of the device beneath.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ringwork_core::buf::Lease;
use ringwork_core::errno::RawErrno;
use ringwork_core::token::UserData;
use ringwork_sys::{FixedBuffers, Ring, RingParams, SafeSqe, SqeFlags, Target};

use crate::fileread;
use crate::stats::{latency_histogram, machine_line, per_sec, self_cpu, thousands, Latency};

/// One way to run the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// WAL: fsync with IOSQE_IO_DRAIN.
    Drain,
    /// WAL: writes and fsync as one IOSQE_IO_LINK chain.
    Link,
    /// WAL: fsync submitted after the batch's write CQEs are reaped.
    Wait,
    /// WAL: fsync with no ordering (not durable).
    Unordered,
    /// Random reads, no flags.
    Reads,
    /// Random reads, IOSQE_IO_DRAIN on every Nth.
    ReadsDrain,
}

impl Variant {
    /// Every variant, in report order.
    pub const ALL: [Variant; 6] = [
        Variant::Drain,
        Variant::Link,
        Variant::Wait,
        Variant::Unordered,
        Variant::Reads,
        Variant::ReadsDrain,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Drain => "drain",
            Variant::Link => "link",
            Variant::Wait => "wait",
            Variant::Unordered => "unordered",
            Variant::Reads => "reads",
            Variant::ReadsDrain => "reads-drain",
        }
    }

    fn is_wal(self) -> bool {
        !matches!(self, Variant::Reads | Variant::ReadsDrain)
    }

    /// Whether the variant guarantees that each fsync covers its batch.
    fn ordered(self) -> bool {
        matches!(self, Variant::Drain | Variant::Link | Variant::Wait)
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// The log file (preallocated with real data to `wal_size`).
    pub wal_path: PathBuf,
    /// Bytes of log; writes wrap around within it.
    pub wal_size: u64,
    /// Writes per batch (one fdatasync each).
    pub batch: u32,
    /// Batches kept in flight at once.
    pub in_flight: u32,
    /// The random-read workload (its `drain_every` is set per variant).
    pub reads: fileread::Config,
    /// Drain every Nth read in `reads-drain`.
    pub drain_every: u32,
    /// Seconds per variant per round.
    pub duration: Duration,
    /// Rounds; variants alternate within each.
    pub rounds: u32,
}

/// Block size of each log write.
pub const BLOCK: u32 = 4096;

/// One variant's run.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Which variant.
    pub variant: Variant,
    /// 1-based round.
    pub round: u32,
    /// Writes (WAL) or reads completed.
    pub ops: u64,
    /// Batches whose writes and fsync all completed (0 for the read variants).
    pub batches: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// WAL: batch latency, first write submitted to last CQE of the batch; reads: per read.
    pub latency: Latency,
    /// CPU time of this process (its io-wq workers included) during the run.
    pub cpu: Duration,
    /// io_uring_enter calls.
    pub enters: u64,
    /// Batches whose fsync CQE arrived before one of their write CQEs.
    pub violations: u64,
}

impl Outcome {
    /// Ops per second.
    pub fn ops_per_sec(&self) -> f64 {
        per_sec(self.ops, self.elapsed)
    }

    /// Batches per second.
    pub fn batches_per_sec(&self) -> f64 {
        per_sec(self.batches, self.elapsed)
    }

    /// CPU microseconds per op.
    pub fn cpu_us_per_op(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }

    /// JSON object text.
    pub fn json(&self) -> String {
        format!(
            "{{\"variant\":\"{}\",\"round\":{},\"ops\":{},\"batches\":{},\"secs\":{:.3},\"ops_per_s\":{:.0},\"batches_per_s\":{:.1},\"latency\":{},\"cpu_us_per_op\":{:.3},\"enters\":{},\"violations\":{}}}",
            self.variant.name(),
            self.round,
            self.ops,
            self.batches,
            self.elapsed.as_secs_f64(),
            self.ops_per_sec(),
            self.batches_per_sec(),
            self.latency.json(),
            self.cpu_us_per_op(),
            self.enters,
            self.violations
        )
    }
}

/// Runs `variants` for `cfg.rounds` rounds, alternating them within each round.
pub fn run_all(cfg: &Config, variants: &[Variant]) -> Result<Vec<Outcome>, String> {
    if variants.iter().any(|v| v.is_wal()) {
        fileread::prepare_file(&cfg.wal_path, cfg.wal_size)
            .map_err(|e| format!("prepare {}: {e}", cfg.wal_path.display()))?;
    }
    if variants.iter().any(|v| !v.is_wal()) {
        fileread::prepare_file(&cfg.reads.path, cfg.reads.size)
            .map_err(|e| format!("prepare {}: {e}", cfg.reads.path.display()))?;
    }
    let mut out = Vec::new();
    for round in 1..=cfg.rounds.max(1) {
        for &v in variants {
            let r = run(v, round, cfg)?;
            eprintln!(
                "round {round} {}: {} ops/s, {} violations",
                v.name(),
                thousands(r.ops_per_sec()),
                r.violations
            );
            out.push(r);
        }
    }
    Ok(out)
}

/// Runs one variant once.
pub fn run(variant: Variant, round: u32, cfg: &Config) -> Result<Outcome, String> {
    if variant.is_wal() {
        return run_wal(variant, round, cfg);
    }
    crate::fileread::warm(&cfg.reads.path)?;
    let reads = fileread::Config {
        duration: cfg.duration,
        drain_every: if variant == Variant::ReadsDrain {
            cfg.drain_every.max(1)
        } else {
            0
        },
        ..cfg.reads.clone()
    };
    let r = fileread::run(fileread::Engine::Uring, &reads)?;
    Ok(Outcome {
        variant,
        round,
        ops: r.ops,
        batches: 0,
        elapsed: r.elapsed,
        latency: r.latency,
        cpu: r.cpu,
        enters: r.enters,
        violations: 0,
    })
}

/// A batch slot's progress.
#[derive(Clone, Copy, Debug, Default)]
struct Batch {
    /// Global batch number (submission order).
    seq: u64,
    started: Option<Instant>,
    writes_done: u32,
    fsync_submitted: bool,
    fsync_done: bool,
    /// A write CQE arrived after the fsync CQE.
    violated: bool,
}

/// user_data of request `index` (0..batch writes, `batch` = the fsync) of slot `slot`.
fn token(slot: usize, index: u32) -> UserData {
    UserData(((slot as u64) << 32) | u64::from(index))
}

fn untoken(ud: UserData) -> (usize, u32) {
    ((ud.0 >> 32) as usize, ud.0 as u32)
}

/// The log writer: `in_flight` slots, each cycling through batches.
struct Wal<'a> {
    variant: Variant,
    cfg: &'a Config,
    file: &'a File,
    /// The block every write writes: one buffer the ring owns (adopted, unregistered, so the
    /// writes are plain IORING_OP_WRITE).
    block: Lease,
    blocks: u64,
    next_seq: u64,
    slots: Vec<Batch>,
}

impl Wal<'_> {
    fn fsync_sqe(&self, slot: usize) -> SafeSqe {
        SafeSqe::fsync(Target::Fd(self.file.as_raw_fd()), true)
            .user_data(token(slot, self.cfg.batch))
    }

    /// Submits a new batch in `slot`: its writes and, unless the variant waits, its fsync.
    fn start(&mut self, ring: &mut Ring, slot: usize) -> Result<(), String> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.slots[slot] = Batch {
            seq,
            started: Some(Instant::now()),
            ..Batch::default()
        };
        let k = self.cfg.batch;
        let fd = Target::Fd(self.file.as_raw_fd());
        let mut sqes: Vec<SafeSqe> = (0..k)
            .map(|i| {
                let offset = ((seq * u64::from(k) + u64::from(i)) % self.blocks) * u64::from(BLOCK);
                ring.write_fixed(fd, &self.block, 0, BLOCK, offset)
                    .user_data(token(slot, i))
            })
            .collect();
        match self.variant {
            Variant::Drain => sqes.push(self.fsync_sqe(slot).flags(SqeFlags::IO_DRAIN)),
            Variant::Link | Variant::Unordered => sqes.push(self.fsync_sqe(slot)),
            Variant::Wait => {}
            Variant::Reads | Variant::ReadsDrain => unreachable!("guarded by is_wal in run"),
        }
        self.slots[slot].fsync_submitted = self.variant != Variant::Wait;
        if self.variant == Variant::Link {
            ring.push_safe_chain(sqes, false).map_err(|e| e.to_string())
        } else {
            for sqe in sqes {
                ring.push_safe(sqe).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
    }
}

impl Batch {
    /// One of the batch's writes completed with `res`. Fails on a short or failed write, and
    /// for `drain` on a write that completed before the previous batch's fsync
    /// (`fsynced_through` is the highest batch whose fsync has completed).
    fn record_write(
        &mut self,
        variant: Variant,
        res: Result<u32, RawErrno>,
        fsynced_through: Option<u64>,
    ) -> Result<(), String> {
        match res {
            Ok(n) if n == BLOCK => {}
            Ok(n) => return Err(format!("short write of {n} bytes to the log")),
            Err(e) => return Err(format!("{}: log write failed: {e}", variant.name())),
        }
        self.writes_done += 1;
        if self.fsync_done {
            self.violated = true;
        }
        if variant == Variant::Drain && self.seq > 0 && fsynced_through < Some(self.seq - 1) {
            return Err(format!(
                "drain: a write of batch {} completed before the fsync of batch {}",
                self.seq,
                self.seq - 1
            ));
        }
        Ok(())
    }

    /// The batch's fsync completed with `res`, before or after its `writes` writes.
    fn record_fsync(
        &mut self,
        variant: Variant,
        res: Result<u32, RawErrno>,
        writes: u32,
    ) -> Result<(), String> {
        res.map_err(|e| format!("{}: fdatasync failed: {e}", variant.name()))?;
        if !self.fsync_submitted {
            return Err("fsync completion before its submission".into());
        }
        self.fsync_done = true;
        if self.writes_done < writes {
            self.violated = true;
        }
        Ok(())
    }

    /// A finished batch whose fsync overtook a write: an error where the variant promises
    /// order, to be counted where it does not.
    fn tolerate_violation(&self, variant: Variant) -> Result<(), String> {
        if variant.ordered() {
            return Err(format!(
                "{}: the fsync of batch {} completed before one of its writes",
                variant.name(),
                self.seq
            ));
        }
        Ok(())
    }
}

/// A ring of `sq` entries owning one `BLOCK`-byte buffer of non-zero data, the block every
/// log write sends.
fn ring_with_block(sq: u32) -> Result<(Ring, Lease), String> {
    let mut ring = RingParams::new(sq).build().map_err(|e| e.to_string())?;
    ring.adopt_buffers(FixedBuffers::new(1, BLOCK as usize).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let buffers = ring.fixed_buffers().expect("just adopted");
    let block = buffers.acquire().expect("one buffer, free");
    for (i, b) in buffers.bytes_mut(&block).iter_mut().enumerate() {
        *b = (i % 251) as u8 | 1;
    }
    Ok((ring, block))
}

fn run_wal(variant: Variant, round: u32, cfg: &Config) -> Result<Outcome, String> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&cfg.wal_path)
        .map_err(|e| format!("open {}: {e}", cfg.wal_path.display()))?;
    let k = cfg.batch.max(1);
    let in_flight = cfg.in_flight.max(1) as usize;
    let sq = (in_flight as u32 * (k + 1)).next_power_of_two();
    let (mut ring, block) = ring_with_block(sq)?;
    let mut wal = Wal {
        variant,
        cfg,
        file: &file,
        block,
        blocks: (cfg.wal_size / u64::from(BLOCK)).max(1),
        next_seq: 0,
        slots: vec![Batch::default(); in_flight],
    };
    let mut hist = latency_histogram();
    let cpu0 = self_cpu();
    let enters0 = ring.stats().enters;
    let t0 = Instant::now();
    let end = t0 + cfg.duration;
    for slot in 0..in_flight {
        wal.start(&mut ring, slot)?;
    }
    let mut active = in_flight;
    let (mut ops, mut batches, mut violations) = (0u64, 0u64, 0u64);
    // drain: the highest batch whose fsync has completed (fsyncs complete in order there).
    let mut fsynced_through: Option<u64> = None;
    let mut cqes = Vec::with_capacity(sq as usize * 2);
    while active > 0 {
        ring.submit_and_wait(1).map_err(|e| e.to_string())?;
        cqes.extend(ring.completions());
        for c in cqes.drain(..) {
            let (slot, index) = untoken(c.user_data());
            let b = wal
                .slots
                .get_mut(slot)
                .ok_or("completion for an unknown slot")?;
            if index < k {
                b.record_write(variant, c.result(), fsynced_through)?;
                ops += 1;
                if variant == Variant::Wait && b.writes_done == k {
                    b.fsync_submitted = true;
                    ring.push_safe(wal.fsync_sqe(slot))
                        .map_err(|e| e.to_string())?;
                    continue;
                }
            } else {
                b.record_fsync(variant, c.result(), k)?;
                if variant == Variant::Drain {
                    fsynced_through = Some(b.seq);
                }
            }
            if b.fsync_done && b.writes_done == k {
                let b = *b;
                if b.violated {
                    b.tolerate_violation(variant)?;
                    violations += 1;
                }
                let started = b.started.ok_or("batch without a start time")?;
                let _ = hist.record(started.elapsed().as_nanos() as u64);
                batches += 1;
                if Instant::now() < end {
                    wal.start(&mut ring, slot)?;
                } else {
                    active -= 1;
                }
            }
        }
    }
    Ok(Outcome {
        variant,
        round,
        ops,
        batches,
        elapsed: t0.elapsed(),
        latency: Latency::from_histogram(&hist),
        cpu: self_cpu().saturating_sub(cpu0),
        enters: ring.stats().enters - enters0,
        violations,
    })
}

/// The file system type of `path`, for the report (fdatasync on tmpfs costs nothing).
pub fn fs_name(path: &std::path::Path) -> String {
    match rustix::fs::statfs(path) {
        Ok(st) => match st.f_type as u64 {
            0xEF53 => "ext4".into(),
            0x0102_1994 => "tmpfs (fdatasync is free here)".into(),
            0x5846_5342 => "xfs".into(),
            0x9123_683E => "btrfs".into(),
            0x794C_7630 => "overlayfs".into(),
            other => format!("fs type {other:#x}"),
        },
        Err(e) => format!("unknown ({e})"),
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The human tables: every run, then medians per variant with ratios.
pub fn table(cfg: &Config, results: &[Outcome]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "WAL: {} x {} B writes + fdatasync per batch, {} batches in flight, {} MiB log on {}; \
         reads: {} B random, qd {}, IO_DRAIN on every {}th in reads-drain; {:.1} s per run, {} rounds\n\n",
        cfg.batch,
        BLOCK,
        cfg.in_flight,
        cfg.wal_size >> 20,
        fs_name(&cfg.wal_path),
        cfg.reads.bs,
        cfg.reads.qd,
        cfg.drain_every,
        cfg.duration.as_secs_f64(),
        cfg.rounds
    ));
    s.push_str("| round | variant | durable | ops/s | batches/s | p50 µs | p99 µs | CPU µs/op | enters/op | order violations |\n");
    s.push_str("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for r in results {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.2} | {:.3} | {} |\n",
            r.round,
            r.variant.name(),
            durable(r.variant),
            thousands(r.ops_per_sec()),
            if r.variant.is_wal() {
                format!("{:.0}", r.batches_per_sec())
            } else {
                "-".into()
            },
            r.latency.p50_us,
            r.latency.p99_us,
            r.cpu_us_per_op(),
            r.enters as f64 / r.ops.max(1) as f64,
            r.violations
        ));
    }
    s.push_str(
        "\nMedians over rounds (WAL ratios against `unordered`, reads against `reads`):\n\n",
    );
    s.push_str(
        "| variant | ops/s | batches/s | p50 µs | p99 µs | CPU µs/op | ops/s ratio | CPU ratio |\n",
    );
    s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    let med = |v: Variant, f: &dyn Fn(&Outcome) -> f64| -> Option<f64> {
        let xs: Vec<f64> = results.iter().filter(|r| r.variant == v).map(f).collect();
        (!xs.is_empty()).then(|| median(xs))
    };
    for v in Variant::ALL {
        let Some(ops) = med(v, &|r| r.ops_per_sec()) else {
            continue;
        };
        let cpu = med(v, &|r| r.cpu_us_per_op()).unwrap_or(0.0);
        let base = if v.is_wal() {
            Variant::Unordered
        } else {
            Variant::Reads
        };
        let ratio = |x: f64, b: Option<f64>| b.map_or("-".into(), |b| format!("{:.2}x", x / b));
        s.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.2} | {} | {} |\n",
            v.name(),
            thousands(ops),
            if v.is_wal() {
                format!("{:.0}", med(v, &|r| r.batches_per_sec()).unwrap_or(0.0))
            } else {
                "-".into()
            },
            med(v, &|r| r.latency.p50_us).unwrap_or(0.0),
            med(v, &|r| r.latency.p99_us).unwrap_or(0.0),
            cpu,
            ratio(ops, med(base, &|r| r.ops_per_sec())),
            ratio(cpu, med(base, &|r| r.cpu_us_per_op())),
        ));
    }
    s
}

fn durable(v: Variant) -> &'static str {
    match v {
        Variant::Unordered => "NO (incorrect)",
        Variant::Reads | Variant::ReadsDrain => "-",
        _ => "yes",
    }
}

/// `ringwork-bench drain`'s options.
#[derive(clap::Args)]
pub struct Args {
    /// The log file (preallocated with real data; put it on the file system to measure).
    #[arg(long, default_value = "/tmp/ringwork-drain-wal.dat")]
    file: PathBuf,
    /// Bytes of log the writes cycle through (suffixes k, M, G).
    #[arg(long, default_value = "64M", value_parser = crate::parse_size)]
    size: u64,
    /// 4 KiB writes per batch (one fdatasync each).
    #[arg(long, default_value_t = 16)]
    batch: u32,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 4)]
    in_flight: u32,
    /// File for the random-read variants (read once first: page cache).
    #[arg(long, default_value = "/tmp/ringwork-drain-reads.dat")]
    read_file: PathBuf,
    /// Bytes of the read file (suffixes k, M, G).
    #[arg(long, default_value = "64M", value_parser = crate::parse_size)]
    read_size: u64,
    /// Reads in flight.
    #[arg(long, default_value_t = 64)]
    qd: u32,
    /// reads-drain: IOSQE_IO_DRAIN on every Nth read.
    #[arg(long, default_value_t = 16)]
    drain_every: u32,
    /// Seconds per variant per round.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Rounds; the variants alternate within each.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Variants to run, comma-separated [default: all].
    #[arg(long, value_delimiter = ',')]
    variant: Vec<Variant>,
    /// Write results as JSON here too (default: the table only).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// `ringwork-bench drain`: every variant asked for, in rounds, the table on stdout.
pub fn run_command(args: Args) -> Result<(), String> {
    if [
        args.batch,
        args.in_flight,
        args.qd,
        args.drain_every,
        args.rounds,
    ]
    .contains(&0)
    {
        return Err(
            "--batch, --in-flight, --qd, --drain-every and --rounds must be at least 1".into(),
        );
    }
    if args.size < u64::from(BLOCK) || args.read_size < u64::from(BLOCK) {
        return Err(format!(
            "--size and --read-size must be at least {BLOCK} bytes"
        ));
    }
    let cfg = Config {
        wal_path: args.file,
        wal_size: args.size,
        batch: args.batch,
        in_flight: args.in_flight,
        reads: fileread::Config {
            path: args.read_file,
            size: args.read_size,
            bs: BLOCK,
            qd: args.qd,
            duration: Duration::from_secs_f64(args.duration),
            seed: 0x5eed,
            drain_every: 0,
        },
        drain_every: args.drain_every,
        duration: Duration::from_secs_f64(args.duration),
        rounds: args.rounds,
    };
    let variants = if args.variant.is_empty() {
        Variant::ALL.to_vec()
    } else {
        args.variant
    };
    println!("# ringwork-bench drain on {}", machine_line());
    let results = run_all(&cfg, &variants)?;
    print!("{}", table(&cfg, &results));
    if let Some(path) = args.json {
        crate::write_json(&path, &crate::json_array(results.iter().map(Outcome::json)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(dir: &std::path::Path) -> Config {
        Config {
            wal_path: dir.join("wal"),
            wal_size: 1 << 20,
            batch: 4,
            in_flight: 3,
            reads: fileread::Config {
                path: dir.join("reads"),
                size: 1 << 20,
                bs: 4096,
                qd: 8,
                duration: Duration::from_millis(100),
                seed: 1,
                drain_every: 0,
            },
            drain_every: 4,
            duration: Duration::from_millis(150),
            rounds: 1,
        }
    }

    #[test]
    fn tokens_round_trip() {
        assert_eq!(untoken(token(5, 16)), (5, 16));
        assert_eq!(untoken(token(0, 0)), (0, 0));
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    /// Every variant on a real file: batches complete, each one's writes all succeeded, and
    /// the ordered variants never saw an fsync CQE before a write CQE of its batch (run_wal
    /// fails if they do; this asserts the counter too).
    #[test]
    fn every_variant_runs_and_the_ordered_ones_keep_order() {
        let dir = std::env::temp_dir().join(format!("ringwork-drain-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = small(&dir);
        let results = run_all(&cfg, &Variant::ALL).unwrap();
        assert_eq!(results.len(), Variant::ALL.len());
        for r in &results {
            assert!(r.ops > 0, "{} did nothing", r.variant.name());
            if r.variant.is_wal() {
                assert!(r.batches > 0, "{}", r.variant.name());
                assert_eq!(
                    r.ops,
                    r.batches * u64::from(cfg.batch),
                    "{}",
                    r.variant.name()
                );
                assert_eq!(r.latency.count, r.batches);
            }
            if r.variant.ordered() {
                assert_eq!(r.violations, 0, "{}", r.variant.name());
            }
        }
        let t = table(&cfg, &results);
        for v in Variant::ALL {
            assert!(t.contains(&format!("| {} |", v.name())), "{t}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Why neither server uses IO_DRAIN: a drained request waits for *every* request before
    /// it, and a server ring always has a multishot accept (and multishot recvs) armed. The
    /// drained NOP never starts while the accept is armed, and neither does anything submitted
    /// after it, a cancel of that very accept included: the ring is wedged. (Dropping the ring
    /// at the end cancels everything.)
    #[test]
    fn a_drain_behind_an_armed_multishot_accept_never_starts() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut ring = RingParams::new(8).build().unwrap();
        let accept = SafeSqe::accept(
            Target::Fd(listener.as_raw_fd()),
            rustix::net::SocketFlags::CLOEXEC,
            true,
            false,
        )
        .user_data(UserData(1));
        ring.push_safe(accept).unwrap();
        ring.submit().unwrap();
        let collect = |ring: &mut Ring, got: &mut Vec<ringwork_sys::Cqe>, for_ms: u64| {
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(for_ms) {
                ring.submit_and_wait_timeout(1, Duration::from_millis(50))
                    .unwrap();
                got.extend(ring.completions());
            }
        };
        let _first = std::net::TcpStream::connect(addr).unwrap();
        let mut got = Vec::new();
        collect(&mut ring, &mut got, 100);
        // The accept is live: it accepted and stays armed.
        assert!(
            got.iter()
                .any(|c| c.user_data() == UserData(1) && c.res() >= 0 && c.more()),
            "{got:?}"
        );
        let drained = SafeSqe::nop()
            .flags(SqeFlags::IO_DRAIN)
            .user_data(UserData(2));
        let cancel = SafeSqe::cancel(UserData(1)).user_data(UserData(3));
        for sqe in [drained, cancel] {
            ring.push_safe(sqe).unwrap();
        }
        let _second = std::net::TcpStream::connect(addr).unwrap();
        collect(&mut ring, &mut got, 300);
        // The accept still works (it accepted the second connection) ...
        assert!(
            got.iter().filter(|c| c.user_data() == UserData(1)).count() >= 2,
            "{got:?}"
        );
        // ... but neither the drained NOP nor the cancel queued behind it has run.
        assert!(
            !got.iter()
                .any(|c| c.user_data() == UserData(2) || c.user_data() == UserData(3)),
            "{got:?}"
        );
    }
}
