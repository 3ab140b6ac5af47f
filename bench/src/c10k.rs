//! `ringwork-bench compare`'s 10,000-connection open-loop echo cell, in rounds.
//!
//! The seed's criterion is a p99 under 10 ms with 10,000 connections at 20,000 msgs/s. One
//! run of this cell moves several-fold with the neighbours on a shared machine, so it runs in
//! rounds against a freshly started server each time, the backends alternated, and the report
//! gives per backend the median of the rounds with their range, the messages/s achieved
//! against the rate asked, the server's CPU per message, the generator's own CPU and how far
//! its sends fell behind their schedule, and the load average around the cell, with a note
//! when the machine was busy. It states how many rounds met the criterion; it does not
//! decide whether a busy machine's figures count.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use ringwork_harness::pin::online_cpus;

use crate::compare::{measure, start_backend, Backend, Cell, Row};
use crate::echo::{self, LATE};
use crate::stats::{load_average, thousands, Spread};

/// The cell: 64 B messages over 10,000 connections, open loop at 20,000 msgs/s (each
/// connection sends one every half second).
pub const CELL: Cell = Cell {
    size: 64,
    conns: 10_000,
    rate: Some(20_000.0),
};

/// The seed's criterion for the cell's p99.
pub const CRITERION_P99: Duration = Duration::from_millis(10);

/// Measured time per round. At 20,000 msgs/s, 5 s is 100,000 round trips: the p99 rests on
/// the slowest 1,000 and the p99.9 on the slowest 100, so one slow millisecond of the
/// neighbours moves them little, while a round stays short enough that the rounds, not one
/// long run, show how much the machine moved.
pub const DURATION: Duration = Duration::from_secs(5);

/// Unmeasured time before each round: 10,000 fresh connections each send their first
/// message within the first half second (the schedule goes round the connections), and the
/// server's first sight of each connection (its buffers, its first receive) is not what the
/// cell measures; 1 s is two full turns of the schedule.
pub const WARMUP: Duration = Duration::from_secs(1);

/// How many rounds, and each round's window.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// Rounds; every backend runs once per round.
    pub rounds: u32,
    /// Measured time per round.
    pub duration: Duration,
    /// Unmeasured time before it.
    pub warmup: Duration,
}

/// One backend's run in one round.
#[derive(Clone, Debug)]
pub struct Round {
    /// 1-based.
    pub round: u32,
    /// Which backend.
    pub backend: String,
    /// The 1-minute load average just before this run.
    pub load: Option<f64>,
    /// What the generator measured.
    pub outcome: echo::Outcome,
}

/// The cell's rounds with the machine around them.
#[derive(Clone, Debug)]
pub struct Section {
    /// The window the rounds ran with.
    pub window: Window,
    /// Backend names, in the order of the first round.
    pub backends: Vec<String>,
    /// Every run, in the order they ran.
    pub runs: Vec<Round>,
    /// The 1-minute load average before the first round and after the last.
    pub load_before: Option<f64>,
    /// See `load_before`.
    pub load_after: Option<f64>,
    /// Online CPUs.
    pub cpus: usize,
}

impl Section {
    /// Every run as a row of the compare report's kind (for its error count).
    pub fn rows(&self) -> Vec<Row> {
        self.runs
            .iter()
            .map(|r| Row {
                backend: r.backend.clone(),
                cell: CELL,
                outcome: r.outcome.clone(),
            })
            .collect()
    }
}

/// The backends' order in `round` (1-based): as given in odd rounds, reversed in even ones
/// (A B, B A, A B, ...), so that a neighbour's load rising or falling through the cell falls
/// on every backend alike, and none always runs first.
fn order(backends: usize, round: u32) -> Vec<usize> {
    let mut v: Vec<usize> = (0..backends).collect();
    if round % 2 == 0 {
        v.reverse();
    }
    v
}

/// Runs the cell `window.rounds` times against each backend, each run against a freshly
/// started server (pinned as in the rest of compare).
pub fn run(server_bin: &Path, backends: &[Backend], window: Window) -> Result<Section, String> {
    let load_before = load_average();
    let mut runs = Vec::new();
    for round in 1..=window.rounds.max(1) {
        for i in order(backends.len(), round) {
            let b = &backends[i];
            let load = load_average();
            let server = start_backend(server_bin, b)?;
            eprint!("round {round}: ");
            let outcome = measure(b, server.as_ref(), &CELL, window.duration, window.warmup)?;
            drop(server);
            runs.push(Round {
                round,
                backend: b.name.clone(),
                load,
                outcome,
            });
        }
    }
    Ok(Section {
        window,
        backends: backends.iter().map(|b| b.name.clone()).collect(),
        runs,
        load_before,
        load_after: load_average(),
        cpus: online_cpus(),
    })
}

/// The 1-minute load average above which the machine counts as busy: 1.5 on two CPUs (the
/// generator and the server each keep one about half busy in this cell, so more than 1.5
/// means other work took CPU time they wanted), scaled with the CPU count.
pub fn busy_above(cpus: usize) -> f64 {
    0.75 * cpus.max(1) as f64
}

/// Whether any of `loads` was above [`busy_above`]; an unknown load is not busy.
pub fn busy(loads: &[Option<f64>], cpus: usize) -> bool {
    loads.iter().flatten().any(|&l| l > busy_above(cpus))
}

/// One backend's rounds, summarised: medians with their ranges.
#[derive(Clone, Debug, PartialEq)]
struct Summary {
    rounds: usize,
    msgs_per_sec: Spread,
    p99_ms: Spread,
    p999_ms: Spread,
    server_us_per_msg: Option<Spread>,
    /// Of one CPU, in percent.
    generator_cpu_pct: Spread,
    lag_p99_ms: Option<Spread>,
    /// The largest lag of any round.
    lag_max_ms: Option<f64>,
    /// Sends more than [`LATE`] behind, in percent.
    late_pct: Option<Spread>,
    /// Rounds whose p99 was under [`CRITERION_P99`].
    under_criterion: usize,
    errors: u64,
}

fn summarize(runs: &[&Round]) -> Option<Summary> {
    let of = |f: &dyn Fn(&echo::Outcome) -> Option<f64>| -> Option<Spread> {
        Spread::of(
            &runs
                .iter()
                .filter_map(|r| f(&r.outcome))
                .collect::<Vec<_>>(),
        )
    };
    let criterion_us = CRITERION_P99.as_secs_f64() * 1e6;
    Some(Summary {
        rounds: runs.len(),
        msgs_per_sec: of(&|o| Some(o.msgs_per_sec()))?,
        p99_ms: of(&|o| Some(o.latency.p99_us / 1000.0))?,
        p999_ms: of(&|o| Some(o.latency.p999_us / 1000.0))?,
        server_us_per_msg: of(&|o| o.server_us_per_msg()),
        generator_cpu_pct: of(&|o| Some(o.client_cpu_share() * 100.0))?,
        lag_p99_ms: of(&|o| o.late_share().map(|_| o.send_lag.p99_us / 1000.0)),
        lag_max_ms: of(&|o| o.late_share().map(|_| o.send_lag.max_us / 1000.0)).map(|s| s.max),
        late_pct: of(&|o| o.late_share().map(|l| l * 100.0)),
        under_criterion: runs
            .iter()
            .filter(|r| r.outcome.latency.p99_us < criterion_us)
            .count(),
        errors: runs.iter().map(|r| r.outcome.errors).sum(),
    })
}

/// "2.26 (1.82–6.76)": the median with the range of the rounds, each as `f` writes it; the
/// value alone for one round.
fn median_range(s: &Spread, rounds: usize, f: impl Fn(f64) -> String) -> String {
    if rounds < 2 {
        f(s.median)
    } else {
        format!("{} ({}–{})", f(s.median), f(s.min), f(s.max))
    }
}

/// `v` with two decimals.
fn two(v: f64) -> String {
    format!("{v:.2}")
}

fn fmt_load(l: Option<f64>) -> String {
    l.map_or("unknown".into(), |l| format!("{l:.2}"))
}

/// The report's section: how it was run, the load, a summary row per backend, then every
/// run.
pub fn section(sec: &Section) -> String {
    let rate = CELL.rate.unwrap_or(0.0);
    let w = &sec.window;
    let mut s = String::from("\n## Echo at 10,000 connections, open loop\n\n");
    let _ = writeln!(
        s,
        "{} B messages over {} connections at {} msgs/s, the seed's criterion p99 < {} ms. \
         {} round{}, each backend once per round against a freshly started server (order \
         reversed every other round), {} s measured after {} s warm-up. Medians over the \
         rounds, the smallest and largest in parentheses. Latency counts from each message's \
         scheduled send time. \"generator CPU\" is the load generator's CPU time over the \
         window as a share of one CPU (CLOCK_PROCESS_CPUTIME_ID); \"send lag\" is how far its \
         sends fell behind their schedule (the clock read after each send); both say how \
         much of the latency is the generator's own.\n",
        CELL.size,
        thousands(CELL.conns as f64),
        thousands(rate),
        CRITERION_P99.as_millis(),
        w.rounds,
        if w.rounds == 1 { "" } else { "s" },
        w.duration.as_secs_f64(),
        w.warmup.as_secs_f64(),
    );
    let _ = writeln!(
        s,
        "Load average (1 min): {} before the cell, {} after, on {} CPUs.\n",
        fmt_load(sec.load_before),
        fmt_load(sec.load_after),
        sec.cpus
    );
    let mut loads = vec![sec.load_before, sec.load_after];
    loads.extend(sec.runs.iter().map(|r| r.load));
    if busy(&loads, sec.cpus) {
        let _ = writeln!(
            s,
            "**Machine busy**: the load average went above {:.2} on {} CPUs during the cell; \
             other work took CPU time from the server or the generator.\n",
            busy_above(sec.cpus),
            sec.cpus
        );
    }
    let _ = writeln!(
        s,
        "| cell | backend | rounds | msgs/s (asked {}) | p99 ms | p99.9 ms | server CPU µs/msg | generator CPU | send lag p99 ms | send lag max ms | sends > {} ms late | p99 < {} ms | errors |",
        thousands(rate),
        LATE.as_millis(),
        CRITERION_P99.as_millis()
    );
    let _ = writeln!(
        s,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for name in &sec.backends {
        let runs: Vec<&Round> = sec.runs.iter().filter(|r| &r.backend == name).collect();
        let Some(m) = summarize(&runs) else { continue };
        let n = m.rounds;
        let _ = writeln!(
            s,
            "| 10k open | {name} | {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} of {n} | {} |",
            median_range(&m.msgs_per_sec, n, thousands),
            median_range(&m.p99_ms, n, two),
            median_range(&m.p999_ms, n, two),
            m.server_us_per_msg
                .map_or("-".into(), |c| median_range(&c, n, two)),
            median_range(&m.generator_cpu_pct, n, |v| format!("{v:.0}%")),
            m.lag_p99_ms
                .map_or("-".into(), |l| median_range(&l, n, two)),
            m.lag_max_ms.map_or("-".into(), two),
            m.late_pct
                .map_or("-".into(), |l| median_range(&l, n, |v| format!("{v:.2}%"))),
            m.under_criterion,
            m.errors,
        );
    }
    let _ = writeln!(s, "\nEvery run, in the order they ran:\n");
    let _ = writeln!(
        s,
        "| round | backend | load | msgs/s | p99 ms | p99.9 ms | server CPU µs/msg | generator CPU | send lag p99 / max ms | sends > {} ms late | errors |",
        LATE.as_millis()
    );
    let _ = writeln!(
        s,
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in &sec.runs {
        let o = &r.outcome;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.2} | {:.2} | {} | {:.0}% | {:.2} / {:.2} | {} | {} |",
            r.round,
            r.backend,
            fmt_load(r.load),
            thousands(o.msgs_per_sec()),
            o.latency.p99_us / 1000.0,
            o.latency.p999_us / 1000.0,
            o.server_us_per_msg()
                .map_or("-".into(), |c| format!("{c:.2}")),
            o.client_cpu_share() * 100.0,
            o.send_lag.p99_us / 1000.0,
            o.send_lag.max_us / 1000.0,
            o.late_share()
                .map_or("-".into(), |l| format!("{:.2}%", l * 100.0)),
            o.errors,
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Latency;

    fn run(round: u32, backend: &str, p99_ms: f64, late: u64) -> Round {
        Round {
            round,
            backend: backend.into(),
            load: Some(0.5),
            outcome: echo::Outcome {
                msgs: 100_000,
                elapsed: Duration::from_secs(5),
                latency: Latency {
                    p99_us: p99_ms * 1000.0,
                    p999_us: p99_ms * 3000.0,
                    count: 100_000,
                    ..Default::default()
                },
                client_cpu: Duration::from_millis(2500),
                server_cpu: Some(Duration::from_secs(2)),
                size: 64,
                send_lag: Latency {
                    p99_us: 300.0,
                    max_us: 1000.0 * p99_ms,
                    count: 100_000,
                    ..Default::default()
                },
                sent_late: late,
                ..Default::default()
            },
        }
    }

    fn section_of(runs: Vec<Round>, loads: (f64, f64)) -> Section {
        Section {
            window: Window {
                rounds: 3,
                duration: DURATION,
                warmup: WARMUP,
            },
            backends: vec!["uring".into(), "epoll".into()],
            runs,
            load_before: Some(loads.0),
            load_after: Some(loads.1),
            cpus: 2,
        }
    }

    #[test]
    fn backends_swap_order_every_other_round() {
        assert_eq!(order(2, 1), [0, 1]);
        assert_eq!(order(2, 2), [1, 0]);
        assert_eq!(order(3, 3), [0, 1, 2]);
    }

    #[test]
    fn busy_scales_with_the_cpus() {
        assert_eq!(busy_above(2), 1.5);
        assert_eq!(busy_above(8), 6.0);
        assert!(!busy(&[Some(1.4), Some(1.5)], 2));
        assert!(busy(&[Some(1.4), Some(1.6)], 2));
        assert!(!busy(&[Some(1.6)], 4));
        assert!(!busy(&[None, None], 2), "an unknown load is not busy");
    }

    #[test]
    fn summary_is_medians_with_their_range() {
        let runs = [
            run(1, "uring", 2.0, 10),
            run(2, "uring", 12.0, 1000),
            run(3, "uring", 3.0, 0),
        ];
        let m = summarize(&runs.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(m.rounds, 3);
        assert_eq!(
            (m.p99_ms.median, m.p99_ms.min, m.p99_ms.max),
            (3.0, 2.0, 12.0)
        );
        assert_eq!(m.p999_ms.median, 9.0);
        assert_eq!(m.msgs_per_sec.median, 20_000.0);
        assert_eq!(m.server_us_per_msg.unwrap().median, 20.0);
        assert_eq!(m.generator_cpu_pct.median, 50.0);
        assert_eq!(m.lag_max_ms, Some(12.0), "the largest of any round");
        // 10 of 100,000 sends late: 0.01%.
        assert!((m.late_pct.unwrap().median - 0.01).abs() < 1e-9);
        assert_eq!(m.under_criterion, 2, "12 ms is over 10");
        assert_eq!(summarize(&[]), None);
        assert_eq!(median_range(&m.p99_ms, 3, two), "3.00 (2.00–12.00)");
        assert_eq!(median_range(&m.p99_ms, 1, two), "3.00");
    }

    #[test]
    fn section_has_a_row_per_backend_every_run_and_the_busy_note() {
        let runs = vec![
            run(1, "uring", 2.0, 0),
            run(1, "epoll", 2.5, 0),
            run(2, "epoll", 3.5, 0),
            run(2, "uring", 4.0, 0),
        ];
        let s = section(&section_of(runs.clone(), (0.4, 0.9)));
        assert!(
            s.contains("| 10k open | uring | 2 | 20,000 (20,000–20,000) | 3.00 (2.00–4.00) |"),
            "{s}"
        );
        assert!(s.contains("| 2 of 2 | 0 |"), "{s}");
        assert!(s.contains("| 2 | uring | 0.50 | 20,000 | 4.00 |"), "{s}");
        assert_eq!(
            s.matches("| epoll |").count(),
            3,
            "a summary and two runs: {s}"
        );
        assert!(
            s.contains("0.40 before the cell, 0.90 after, on 2 CPUs"),
            "{s}"
        );
        assert!(!s.contains("Machine busy"), "{s}");
        let busy = section(&section_of(runs, (0.4, 2.1)));
        assert!(busy.contains("**Machine busy**"), "{busy}");
    }
}
