//! The site workload: a file server asked for many files, as users' sites are, instead of one
//! file over and over. It has three parts:
//!
//! - [`generate`] writes a reproducible site (`ringwork-bench site`): names and sizes come from
//!   the seed alone, so that two machines (or two days) serve the same tree.
//! - [`scan`] lists any directory's regular files as URL paths with their sizes, for
//!   `ringwork-bench http --site` and `compare --files --site`.
//! - [`Picker`] chooses each request's path: in turn, uniformly, or Zipf-distributed over a
//!   seeded shuffled ranking.
//!
//! # The size distribution
//!
//! Measured sites have a lognormal body of small files and a heavy (Pareto) tail of a few
//! large ones: Crovella and Bestavros (1997), Barford and Crovella's SURGE model (1998), and the
//! HTTP Archive's per-type sizes since, where pages and scripts are lognormal-like and images
//! and downloads carry the tail. The generator takes that shape with parameters chosen so that
//! the default 30,000 files have a median near 3 KB, a few hundred files over 64 KiB, and the
//! largest at 1 MiB (the cap), about 200 MB in all:
//!
//! | share | kind | where | size |
//! | --- | --- | --- | --- |
//! | 26/30 (26,000) | pages | `/index.html`, `/sNN/tNN/pageN.html` | lognormal, median 2,700 B, σ 0.85 |
//! | 4% (1,200) | images, downloads | `/media/NN/mN.{jpg,png,pdf}` | Pareto, x_m 16 KiB, α 1.1, capped at 1 MiB |
//! | the rest (2,800) | styles, scripts, icons | `/assets/{css,js,svg}/aN.*` | lognormal, median 5,000 B, σ 1.0 |
//!
//! Lognormal sizes are at least 64 bytes. With seed 1 (the default) it yields median 2,967 B,
//! p90 11,244 B, p99 59,719 B, 277 files over 64 KiB, 15 at the 1 MiB cap, 215.9 MB in all;
//! the generator prints these for every tree it writes. Extensions only set the Content-Type;
//! contents are filler text, and no `.gz` or `.br` siblings are written (ringwork-files would
//! serve them).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::rng::Rng;
use crate::stats::thousands;

/// The generator's default file count.
pub const DEFAULT_FILES: usize = 30_000;

/// The largest file the generator writes.
pub const MAX_SIZE: u64 = 1 << 20;

/// A file of a site: its URL path (percent-encoded, from `/`) and its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteFile {
    /// e.g. `/s03/t11/page1234.html`.
    pub url_path: String,
    /// Bytes.
    pub size: u64,
}

/// Lognormal with `median` and shape `sigma`, at least 64 bytes.
fn lognormal(rng: &mut Rng, median: f64, sigma: f64) -> u64 {
    ((median * (sigma * rng.normal()).exp()) as u64).clamp(64, MAX_SIZE)
}

/// Pareto with scale `min` and shape `alpha`, capped at [`MAX_SIZE`].
fn pareto(rng: &mut Rng, min: f64, alpha: f64) -> u64 {
    // Inverse CDF: min * U^(-1/alpha), U in (0, 1].
    let u = 1.0 - rng.unit();
    ((min * u.powf(-1.0 / alpha)) as u64).min(MAX_SIZE)
}

/// The site of `files` files for `seed`: every name and size, in the order written. Depends on
/// nothing but its arguments. See the module doc for the distribution.
pub fn plan(files: usize, seed: u64) -> Vec<SiteFile> {
    let mut rng = Rng::new(seed);
    let pages = files * 26 / 30;
    let large = files * 4 / 100;
    let mut out = Vec::with_capacity(files);
    for i in 0..files {
        let (url_path, size) = if i == 0 {
            (
                "/index.html".to_string(),
                lognormal(&mut rng, 2_700.0, 0.85),
            )
        } else if i < pages {
            (
                format!("/s{:02}/t{:02}/page{i}.html", i % 20, (i / 20) % 40),
                lognormal(&mut rng, 2_700.0, 0.85),
            )
        } else if i < pages + large {
            let ext = ["jpg", "png", "pdf"][i % 3];
            (
                format!("/media/{:02}/m{i}.{ext}", i % 16),
                pareto(&mut rng, 16_384.0, 1.1),
            )
        } else {
            let ext = ["css", "js", "svg"][i % 3];
            (
                format!("/assets/{ext}/a{i}.{ext}"),
                lognormal(&mut rng, 5_000.0, 1.0),
            )
        };
        out.push(SiteFile { url_path, size });
    }
    out
}

/// Size statistics of a site, as the generator prints them and the report quotes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeStats {
    /// Files.
    pub files: usize,
    /// Nearest-rank percentiles, bytes.
    pub median: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Files over 64 KiB.
    pub over_64k: usize,
    /// The largest file.
    pub largest: u64,
    /// All files' bytes.
    pub total: u64,
}

impl SizeStats {
    /// Of `sizes`, in any order.
    pub fn of(sizes: impl IntoIterator<Item = u64>) -> Self {
        let mut v: Vec<u64> = sizes.into_iter().collect();
        v.sort_unstable();
        let rank = |p: f64| -> u64 {
            if v.is_empty() {
                return 0;
            }
            // Nearest rank: the smallest value with at least p of the files at or below it.
            let k = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[k - 1]
        };
        Self {
            files: v.len(),
            median: rank(0.5),
            p90: rank(0.9),
            p99: rank(0.99),
            over_64k: v.iter().filter(|&&s| s > 64 * 1024).count(),
            largest: v.last().copied().unwrap_or(0),
            total: v.iter().sum(),
        }
    }
}

impl fmt::Display for SizeStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} files, median {} B, p90 {} B, p99 {} B, {} over 64 KiB, largest {} B, {:.1} MB in all",
            thousands(self.files as f64),
            thousands(self.median as f64),
            thousands(self.p90 as f64),
            thousands(self.p99 as f64),
            thousands(self.over_64k as f64),
            thousands(self.largest as f64),
            self.total as f64 / 1e6
        )
    }
}

/// Filler text for file bodies: readable, the same for every file.
fn filler() -> Vec<u8> {
    let line = b"<p>Ringwork site workload: filler text of a generated page.</p>\n";
    line.iter()
        .copied()
        .cycle()
        .take(MAX_SIZE as usize)
        .collect()
}

/// Writes `files` under `dir` (created; it must be absent or empty), directories 0755 and
/// files 0644 so that a server that drops privileges (nginx's workers) can read them.
pub fn write(dir: &Path, files: &[SiteFile]) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(format!(
            "{} is not empty: the site goes into a new or empty directory",
            dir.display()
        ));
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true).mode(0o755);
    builder
        .create(dir)
        .map_err(|e| format!("create {}: {e}", dir.display()))?;
    // The umask may have narrowed the mode of the top directory.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
    let body = filler();
    let mut made = std::collections::HashSet::new();
    for f in files {
        let path = dir.join(f.url_path.trim_start_matches('/'));
        if let Some(parent) = path.parent() {
            if made.insert(parent.to_path_buf()) {
                builder
                    .create(parent)
                    .map_err(|e| format!("create {}: {e}", parent.display()))?;
            }
        }
        std::fs::write(&path, &body[..f.size as usize])
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Plans and writes the site of `files` files for `seed` under `dir`; returns its statistics.
pub fn generate(dir: &Path, files: usize, seed: u64) -> Result<SizeStats, String> {
    let planned = plan(files, seed);
    write(dir, &planned)?;
    Ok(SizeStats::of(planned.iter().map(|f| f.size)))
}

/// `rel` (a path relative to a site's root) as a URL path: `/` then its components, each
/// byte outside the unreserved set and a few safe punctuation marks percent-encoded.
pub fn url_path(rel: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for part in rel.components() {
        out.push('/');
        for &b in part.as_os_str().as_bytes() {
            if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Calls `each` with the path and size of every regular file under `dir`, in no set order
/// (symbolic links are not followed).
fn walk(dir: &Path, mut each: impl FnMut(&Path, u64) -> Result<(), String>) -> Result<(), String> {
    let mut pending: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", d.display()))?;
            let path = entry.path();
            // DirEntry::metadata does not follow a symbolic link.
            let meta = entry
                .metadata()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if meta.is_dir() {
                pending.push(path);
            } else if meta.is_file() {
                each(&path, meta.len())?;
            }
        }
    }
    Ok(())
}

/// Every regular file under `dir` (symbolic links are not followed), as URL paths relative
/// to it with their sizes, sorted by path so that the list is the same whatever order the
/// file system lists directories in.
pub fn scan(dir: &Path) -> Result<Vec<SiteFile>, String> {
    let mut out = Vec::new();
    walk(dir, |path, size| {
        let rel = path.strip_prefix(dir).expect("under the root");
        out.push(SiteFile {
            url_path: url_path(rel),
            size,
        });
        Ok(())
    })?;
    if out.is_empty() {
        return Err(format!("{} has no regular files to request", dir.display()));
    }
    out.sort_by(|a, b| a.url_path.cmp(&b.url_path));
    Ok(out)
}

/// Reads every regular file under `dir` once, as `cat` to /dev/null would: a warm page cache
/// for the servers.
pub fn warm(dir: &Path) -> Result<(), String> {
    walk(dir, |path, _| {
        let mut file =
            std::fs::File::open(path).map_err(|e| format!("warm {}: {e}", path.display()))?;
        std::io::copy(&mut file, &mut std::io::sink())
            .map_err(|e| format!("warm {}: {e}", path.display()))?;
        Ok(())
    })
}

/// URL paths from a file, one a line; blank lines and lines starting with `#` are skipped.
pub fn read_paths_file(path: &Path) -> Result<Vec<String>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let paths: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if let Some(bad) = paths.iter().find(|p| !p.starts_with('/')) {
        return Err(format!(
            "{}: {bad:?} is not a URL path (they start with /)",
            path.display()
        ));
    }
    if paths.is_empty() {
        return Err(format!("{} lists no paths", path.display()));
    }
    Ok(paths)
}

/// Which path each request asks for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Order {
    /// Each connection goes through the paths in turn, starting at its own offset.
    Cycle,
    /// Every request picks a path uniformly at random.
    Uniform {
        /// The draws' seed.
        seed: u64,
    },
    /// Path of rank k with probability proportional to 1/k^exponent, over a ranking of the
    /// paths shuffled with the seed: the most popular files are spread over the tree, not the
    /// first in sorted order.
    Zipf {
        /// The exponent (s); 1 is the classic web-popularity fit.
        exponent: f64,
        /// The ranking's and the draws' seed.
        seed: u64,
    },
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Order::Cycle => write!(f, "in turn"),
            Order::Uniform { .. } => write!(f, "uniform"),
            Order::Zipf { exponent, .. } => write!(f, "zipf {exponent}"),
        }
    }
}

/// Draws paths (indices into a list of `n`) in an [`Order`].
#[derive(Clone, Debug)]
pub struct Picker {
    n: usize,
    rng: Rng,
    /// Zipf only: the cumulative probability of ranks 1..=k at index k - 1, and which path
    /// holds each rank.
    zipf: Option<(Vec<f64>, Vec<u32>)>,
    cycle: bool,
}

impl Picker {
    /// A picker over `n` (> 0) paths.
    pub fn new(n: usize, order: Order) -> Self {
        assert!(n > 0 && n <= u32::MAX as usize, "{n} paths");
        match order {
            Order::Cycle => Self {
                n,
                rng: Rng::new(0),
                zipf: None,
                cycle: true,
            },
            Order::Uniform { seed } => Self {
                n,
                rng: Rng::new(seed),
                zipf: None,
                cycle: false,
            },
            Order::Zipf { exponent, seed } => {
                let mut rng = Rng::new(seed);
                let mut ranking: Vec<u32> = (0..n as u32).collect();
                rng.shuffle(&mut ranking);
                let mut cdf: Vec<f64> = (1..=n)
                    .scan(0.0, |sum, k| {
                        *sum += (k as f64).powf(-exponent);
                        Some(*sum)
                    })
                    .collect();
                let total = cdf[n - 1];
                cdf.iter_mut().for_each(|c| *c /= total);
                Self {
                    n,
                    rng,
                    zipf: Some((cdf, ranking)),
                    cycle: false,
                }
            }
        }
    }

    /// The path for a connection's next request; `cursor` is that connection's place in the
    /// list, used (and advanced) in [`Order::Cycle`] only.
    pub fn next(&mut self, cursor: &mut usize) -> usize {
        if self.cycle {
            let p = *cursor % self.n;
            *cursor = (p + 1) % self.n;
            return p;
        }
        match &self.zipf {
            None => self.rng.below(self.n as u64) as usize,
            Some((cdf, ranking)) => {
                let u = self.rng.unit();
                // The first rank whose cumulative probability exceeds u; rounding may leave
                // the last below 1.
                let rank = cdf.partition_point(|&c| c <= u).min(self.n - 1);
                ranking[rank] as usize
            }
        }
    }

    /// The path of rank `rank` (0: the most popular) under Zipf; `None` for the other orders.
    #[cfg(test)]
    pub fn ranked(&self, rank: usize) -> Option<usize> {
        self.zipf.as_ref().map(|(_, r)| r[rank] as usize)
    }
}

/// `ringwork-bench site`'s options.
#[derive(clap::Args)]
pub struct Args {
    /// Directory to write the site into (created; it must be absent or empty) [default:
    /// none: required].
    #[arg(long)]
    out: PathBuf,
    /// Files to write.
    #[arg(long, default_value_t = DEFAULT_FILES)]
    files: usize,
    /// Seed: the same seed and file count give the same names and sizes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// `ringwork-bench site`: writes the site and prints its size statistics.
pub fn run_command(args: Args) -> Result<(), String> {
    if args.files == 0 {
        return Err("--files must be at least 1".into());
    }
    let stats = generate(&args.out, args.files, args.seed)?;
    println!(
        "site (seed {}) in {}: {stats}",
        args.seed,
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_site_has_the_stated_shape() {
        let files = plan(DEFAULT_FILES, 1);
        let s = SizeStats::of(files.iter().map(|f| f.size));
        // The ranges the module doc and docs/PERFORMANCE.md state.
        assert_eq!(s.files, 30_000);
        assert!((2_500..=3_500).contains(&s.median), "{s}");
        assert!((8_000..=16_000).contains(&s.p90), "{s}");
        assert!((40_000..=100_000).contains(&s.p99), "{s}");
        assert!((150..=500).contains(&s.over_64k), "{s}");
        assert_eq!(s.largest, MAX_SIZE, "{s}");
        assert!((150e6..=260e6).contains(&(s.total as f64)), "{s}");
        assert_eq!(
            files
                .iter()
                .filter(|f| f.url_path.ends_with(".html"))
                .count(),
            26_000
        );
        let mut paths: Vec<&str> = files.iter().map(|f| f.url_path.as_str()).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), files.len(), "names are unique");
    }

    #[test]
    fn plans_depend_on_the_seed_alone() {
        assert_eq!(plan(500, 9), plan(500, 9));
        assert_ne!(plan(500, 9), plan(500, 10));
    }

    #[test]
    fn stats_use_nearest_ranks() {
        let s = SizeStats::of((1..=100).rev());
        assert_eq!((s.median, s.p90, s.p99, s.largest), (50, 90, 99, 100));
        assert_eq!(s.total, 5050);
        assert_eq!(SizeStats::of([70_000, 10]).over_64k, 1);
        assert_eq!(SizeStats::of([]).median, 0);
    }

    #[test]
    fn written_sites_scan_back_to_their_plan() {
        let dir = std::env::temp_dir().join(format!("ringwork-site-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let stats = generate(&dir, 200, 5).unwrap();
        let mut planned = plan(200, 5);
        planned.sort_by(|a, b| a.url_path.cmp(&b.url_path));
        assert_eq!(scan(&dir).unwrap(), planned);
        assert_eq!(stats.files, 200);
        assert!(generate(&dir, 10, 5).unwrap_err().contains("not empty"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn url_paths_are_encoded() {
        assert_eq!(url_path(Path::new("a/b.html")), "/a/b.html");
        assert_eq!(
            url_path(Path::new("my docs/x#1?.txt")),
            "/my%20docs/x%231%3F.txt"
        );
        assert_eq!(url_path(Path::new("é")), "/%C3%A9");
    }

    #[test]
    fn paths_files_skip_comments_and_refuse_relative_paths() {
        let p = std::env::temp_dir().join(format!("ringwork-paths-{}", std::process::id()));
        std::fs::write(&p, "# site\n/a.html\n\n  /b/c.css \n").unwrap();
        assert_eq!(read_paths_file(&p).unwrap(), ["/a.html", "/b/c.css"]);
        std::fs::write(&p, "/a\nb\n").unwrap();
        assert!(read_paths_file(&p).unwrap_err().contains("\"b\""));
        std::fs::write(&p, "# nothing\n").unwrap();
        assert!(read_paths_file(&p).is_err());
        let _ = std::fs::remove_file(p);
    }

    /// The empirical frequencies of the top ranks against 1/k^s / H(n, s), for a fixed seed.
    #[test]
    fn zipf_draws_match_the_expected_frequencies() {
        let (n, draws) = (1_000, 400_000);
        for exponent in [1.0, 0.8] {
            let mut p = Picker::new(n, Order::Zipf { exponent, seed: 42 });
            let mut counts = vec![0u32; n];
            let mut cursor = 0;
            for _ in 0..draws {
                counts[p.next(&mut cursor)] += 1;
            }
            let h: f64 = (1..=n).map(|k| (k as f64).powf(-exponent)).sum();
            for rank in 0..10 {
                let expected = ((rank + 1) as f64).powf(-exponent) / h;
                let seen = f64::from(counts[p.ranked(rank).unwrap()]) / draws as f64;
                // Rank 10's count is about 5,000 (s = 1): a 5% band is 3.5 standard deviations.
                assert!(
                    (seen / expected - 1.0).abs() < 0.05,
                    "s {exponent} rank {} seen {seen:.5} expected {expected:.5}",
                    rank + 1
                );
            }
            // The ranking is shuffled: the most popular path is not simply the first.
            assert_ne!(
                (0..5).map(|r| p.ranked(r).unwrap()).collect::<Vec<_>>(),
                [0, 1, 2, 3, 4]
            );
        }
    }

    #[test]
    fn uniform_and_cycle_orders() {
        let n = 50;
        let mut p = Picker::new(n, Order::Uniform { seed: 7 });
        let mut counts = vec![0u32; n];
        let mut cursor = 0;
        for _ in 0..100_000 {
            counts[p.next(&mut cursor)] += 1;
        }
        // 2,000 expected each; a 10% band is 4.5 standard deviations.
        assert!(
            counts.iter().all(|&c| (1_800..=2_200).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(p.ranked(0), None);
        let mut p = Picker::new(3, Order::Cycle);
        let mut cursor = 1;
        let seq: Vec<usize> = (0..4).map(|_| p.next(&mut cursor)).collect();
        assert_eq!(seq, [1, 2, 0, 1]);
    }

    #[test]
    fn the_same_seed_draws_the_same_requests() {
        let draw = |seed| {
            let mut p = Picker::new(
                1000,
                Order::Zipf {
                    exponent: 1.0,
                    seed,
                },
            );
            let mut c = 0;
            (0..100).map(|_| p.next(&mut c)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }
}
