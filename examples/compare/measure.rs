//! The tool's sampling: per row and size, a fresh [`Link`], a warm-up, per-round-trip
//! timings for p50/p99, and three timed one-way runs for the rate; time budgets per mode.

use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{Config, Mode};
use crate::names::{format_size, Name};
use crate::procs::Watchdog;
use crate::report::{Row, Rtt, Throughput};
use crate::workloads::{self, Link};

/// A round trip is timed alone when it lasts at least this many clock reads; shorter ones
/// are timed in batches, so reading the clock costs at most 2% of a sample.
const CLOCK_READS_PER_SAMPLE: f64 = 50.0;
/// At most this many round trips per timing sample.
const MAX_BATCH: u64 = 1024;
/// At least this many timing samples per row, however slow, unless the row is very slow:
const MIN_SAMPLES: usize = 20;
/// once the samples have taken this many times the round-trip budget, [`FEW_SAMPLES`]
/// are enough (a 64 MiB round trip that encodes byte by byte takes a fifth of a second,
/// and the percentiles of 20 samples are no finer: p99 is the slowest either way).
const SLOW: u32 = 4;
const FEW_SAMPLES: usize = 5;
/// Timed one-way runs per row; the median is reported.
const RUNS: usize = 3;

/// Time per row and workload.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub warm: Duration,
    pub rtt: Duration,
    pub throughput: Duration,
    pub max_samples: usize,
}

impl Budget {
    pub fn for_mode(mode: Mode) -> Budget {
        let ms = Duration::from_millis;
        match mode {
            Mode::Quick => Budget {
                warm: ms(20),
                rtt: ms(80),
                throughput: ms(80),
                max_samples: 50_000,
            },
            Mode::Default => Budget {
                warm: ms(60),
                rtt: ms(300),
                throughput: ms(300),
                max_samples: 200_000,
            },
            Mode::Full => Budget {
                warm: ms(200),
                rtt: ms(1200),
                throughput: ms(1200),
                max_samples: 1_000_000,
            },
        }
    }

    /// How long one row may go without finishing before the watchdog steps in.
    fn limit(&self) -> Duration {
        (self.warm * 2 + self.rtt + self.throughput) * 20 + Duration::from_secs(10)
    }
}

/// The cost of one clock read in nanoseconds: the median gap between successive reads.
pub fn clock_cost_ns() -> f64 {
    let mut gaps: Vec<u128> = (0..2001)
        .map(|_| {
            let a = Instant::now();
            (Instant::now() - a).as_nanos()
        })
        .collect();
    gaps.sort_unstable();
    (gaps[gaps.len() / 2] as f64).max(1.0)
}

/// Every row at every size it is measured at (the floor at 8 bytes only, see
/// [`Name::measures`] and [`Name::spot_sizes`]), with a progress bar on stderr.
///
/// `clock` is [`clock_cost_ns`].
pub fn run_all(cfg: &Config, dir: &Path, dog: &Watchdog, clock: f64) -> Vec<Row> {
    let budget = Budget::for_mode(cfg.mode);
    // Size by size, so the rows compared with each other run close together in time
    // (a shared machine drifts). The floor at 8 bytes, first and again last: two processes
    // that only spin are the first to suffer from other load (a shared core turns a
    // 300 ns round trip into milliseconds), and the floor is a lower bound, so the lower
    // of the two is kept.
    let floor = cfg.names.contains(&Name::Floor);
    let mut stages = Vec::new();
    if floor {
        stages.push((Name::Floor, 8));
    }
    for &size in &cfg.sizes {
        let names = cfg.names.iter().filter(|&&n| {
            let here = match cfg.every_size {
                true => n.measures(size),
                false => n.measures_unasked(size),
            };
            n != Name::Floor && here
        });
        stages.extend(names.map(|&n| (n, size)));
    }
    if floor {
        stages.push((Name::Floor, 8));
    }
    let bar = ProgressBar::new(stages.len() as u64);
    let style =
        ProgressStyle::with_template("{elapsed:>4} [{bar:32}] {pos}/{len} {msg:<20} eta {eta}")
            .expect("a valid template")
            .progress_chars("=> ");
    bar.set_style(style);
    let mut rows = Vec::new();
    for (name, size) in stages {
        bar.set_message(format!("{} {}", name.as_str(), format_size(size)));
        rows.extend(stage(name, size, dir, &budget, clock, dog));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let (floors, mut rows): (Vec<Row>, Vec<Row>) = rows
        .into_iter()
        .partition(|r| r.name == Name::Floor.as_str());
    let fastest = floors.iter().filter(|r| r.p50_ns.is_some()).min_by(|a, b| {
        let p50 = |r: &Row| r.p50_ns.unwrap_or(f64::MAX);
        p50(a).total_cmp(&p50(b))
    });
    if let Some(best) = fastest.or(floors.first()) {
        rows.insert(0, best.clone());
    }
    rows
}

/// One row at one size: both workloads over one fresh pair.
fn stage(
    name: Name,
    size: usize,
    dir: &Path,
    budget: &Budget,
    clock: f64,
    dog: &Watchdog,
) -> Vec<Row> {
    let what = format!("{} at {}", name.as_str(), format_size(size));
    let limit = budget.limit();
    let armed = dog.arm(limit, Vec::new(), what.clone());
    let mut link = match workloads::start(name, size, dir) {
        Ok(link) => link,
        Err(e) => {
            let mut rows = vec![Row::rtt(name, size, Err(e.clone()))];
            if name != Name::Floor {
                rows.push(Row::throughput(name, size, Err(e)));
            }
            return rows;
        }
    };
    drop(armed);
    let armed = dog.arm(limit, link.pids(), what);
    let rtt = measure_rtt(&mut *link, budget, clock);
    let throughput = match (&rtt, name) {
        (_, Name::Floor) => None,
        (Ok(_), _) => Some(measure_throughput(&mut *link, budget, size)),
        (Err(_), _) => Some(Err("skipped: the round trips failed".to_string())),
    };
    drop(link); // reaps the peer, still under watch
    let stuck = |e: String| match armed.fired() {
        true => format!("{e} (no progress in {limit:?}: its peer was killed)"),
        false => e,
    };
    let mut rows = vec![Row::rtt(name, size, rtt.map_err(stuck))];
    if let Some(t) = throughput {
        rows.push(Row::throughput(name, size, t.map_err(stuck)));
    }
    rows
}

/// Warm-up, then timing samples of `batch` round trips each until the budget is spent.
fn measure_rtt(link: &mut dyn Link, budget: &Budget, clock: f64) -> Result<Rtt, String> {
    let warm = Instant::now();
    let (mut n, mut spent) = (0u32, Duration::ZERO);
    while warm.elapsed() < budget.warm || n < 3 {
        spent += link.round_trips(1)?;
        n += 1;
    }
    let estimate = spent.as_nanos() as f64 / f64::from(n);
    let short = CLOCK_READS_PER_SAMPLE * clock;
    let batch = if estimate < short {
        ((short / estimate.max(1.0)).ceil() as u64).min(MAX_BATCH)
    } else {
        1
    };
    let mut samples: Vec<f64> = Vec::with_capacity(budget.max_samples.min(1 << 16));
    let start = Instant::now();
    let wanted = |n: usize, spent: Duration| match n {
        _ if n >= budget.max_samples => false,
        _ if spent < budget.rtt => true,
        n if spent < budget.rtt * SLOW => n < MIN_SAMPLES,
        n => n < FEW_SAMPLES,
    };
    while wanted(samples.len(), start.elapsed()) {
        let took = link.round_trips(batch)?;
        samples.push(took.as_nanos() as f64 / batch as f64);
    }
    samples.sort_unstable_by(f64::total_cmp);
    Ok(Rtt {
        p50_ns: percentile(&samples, 0.50),
        p99_ns: percentile(&samples, 0.99),
        batch,
        samples: samples.len(),
    })
}

/// The nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Warm-up runs of growing length (which also estimate the rate), then [`RUNS`] runs
/// sized to the budget; the median run's rate.
fn measure_throughput(
    link: &mut dyn Link,
    budget: &Budget,
    size: usize,
) -> Result<Throughput, String> {
    let warm = Instant::now();
    let mut n = 1u64;
    let rate = loop {
        let took = link.stream(n)?.max(Duration::from_nanos(1));
        if warm.elapsed() >= budget.warm && took >= budget.warm / 8 {
            break n as f64 / took.as_secs_f64();
        }
        if took < budget.warm / 4 {
            n *= 2;
        }
    };
    let per_run = budget.throughput.as_secs_f64() / RUNS as f64;
    let n = ((rate * per_run) as u64).clamp(4, 100_000_000);
    let mut rates = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let took = link.stream(n)?.max(Duration::from_nanos(1));
        rates.push(n as f64 / took.as_secs_f64());
    }
    rates.sort_unstable_by(f64::total_cmp);
    let msgs_per_s = rates[RUNS / 2];
    Ok(Throughput {
        msgs_per_s,
        bytes_per_s: msgs_per_s * size as f64,
        runs: RUNS,
    })
}
