//! The results: one JSON object per row and workload, the table, and where they go.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use crate::names::{format_size, Name};

/// A round trip's figures.
pub struct Rtt {
    pub p50_ns: f64,
    pub p99_ns: f64,
    /// Round trips per timing sample.
    pub batch: u64,
    pub samples: usize,
}

/// A one-way stream's figures.
pub struct Throughput {
    pub msgs_per_s: f64,
    pub bytes_per_s: f64,
    pub runs: usize,
}

/// One object of results.json (see the usage text for the fields).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Row {
    pub name: &'static str,
    pub kind: &'static str,
    pub workload: &'static str,
    pub size: usize,
    pub p50_ns: Option<f64>,
    pub p99_ns: Option<f64>,
    pub msgs_per_s: Option<f64>,
    pub bytes_per_s: Option<f64>,
    /// Round trips per timing sample (rtt rows).
    pub batch: Option<u64>,
    /// Timing samples (rtt) or timed runs (throughput).
    pub samples: usize,
    pub error: Option<String>,
}

/// Rounded to a tenth: sub-nanosecond digits are noise.
fn tenth(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl Row {
    fn empty(name: Name, size: usize, workload: &'static str, error: Option<String>) -> Row {
        Row {
            name: name.as_str(),
            kind: name.kind().as_str(),
            workload,
            size,
            p50_ns: None,
            p99_ns: None,
            msgs_per_s: None,
            bytes_per_s: None,
            batch: None,
            samples: 0,
            error,
        }
    }

    pub fn rtt(name: Name, size: usize, r: Result<Rtt, String>) -> Row {
        match r {
            Ok(r) => Row {
                p50_ns: Some(tenth(r.p50_ns)),
                p99_ns: Some(tenth(r.p99_ns)),
                batch: Some(r.batch),
                samples: r.samples,
                ..Row::empty(name, size, "rtt", None)
            },
            Err(e) => Row::empty(name, size, "rtt", Some(e)),
        }
    }

    pub fn throughput(name: Name, size: usize, r: Result<Throughput, String>) -> Row {
        match r {
            Ok(t) => Row {
                msgs_per_s: Some(tenth(t.msgs_per_s)),
                bytes_per_s: Some(tenth(t.bytes_per_s)),
                samples: t.runs,
                ..Row::empty(name, size, "throughput", None)
            },
            Err(e) => Row::empty(name, size, "throughput", Some(e)),
        }
    }
}

/// `target/conduit-report`: under `CARGO_TARGET_DIR` if set, else the target directory
/// this binary was built in (`<target>/<profile>/examples/compare`), else this package's
/// `target/`.
pub fn out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            let examples = exe.parent()?;
            let profile = examples.parent()?;
            (examples.file_name()? == "examples").then(|| profile.parent().map(PathBuf::from))?
        })
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("conduit-report")
}

pub fn to_json(rows: &[Row]) -> String {
    serde_json::to_string_pretty(rows).expect("rows serialize")
}

fn find<'a>(rows: &'a [Row], name: &str, workload: &str, size: usize) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.name == name && r.workload == workload && r.size == size)
}

/// `312 ns`, `1.25 µs`, `95.4 µs`, `1.20 ms`.
pub fn format_ns(ns: f64) -> String {
    let (v, unit) = match ns {
        n if n < 1e3 => return format!("{n:.0} ns"),
        n if n < 1e6 => (n / 1e3, "µs"),
        n if n < 1e9 => (n / 1e6, "ms"),
        n => (n / 1e9, "s"),
    };
    format!("{} {unit}", three_figures(v))
}

/// `12.0 M`, `940 k`, `8.16 k`, `950`.
pub fn format_rate(r: f64) -> String {
    match r {
        r if r >= 1e9 => format!("{} G", three_figures(r / 1e9)),
        r if r >= 1e6 => format!("{} M", three_figures(r / 1e6)),
        r if r >= 1e3 => format!("{} k", three_figures(r / 1e3)),
        r => format!("{r:.0}"),
    }
}

/// `7.70 GiB/s`, `96.0 MiB/s`.
pub fn format_bytes_rate(b: f64) -> String {
    let units = ["B/s", "KiB/s", "MiB/s", "GiB/s", "TiB/s"];
    let mut v = b;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{} {}", three_figures(v), units[unit])
}

fn three_figures(v: f64) -> String {
    match v {
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 10.0 => format!("{v:.1}"),
        v => format!("{v:.2}"),
    }
}

fn ratio(r: f64) -> String {
    format!("{}×", three_figures(r))
}

/// The table: one line per row and size, both workloads side by side, grouped by size.
pub fn table(rows: &[Row], sizes: &[usize], heading: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{heading}\n");
    let _ = writeln!(
        out,
        "{:<15} {:>7} {:>10} {:>10} {:>8} {:>7} {:>9} {:>11} {:>7}",
        "", "", "round trip", "", "rtt vs", "rtt vs", "one way", "", "msgs vs"
    );
    let _ = writeln!(
        out,
        "{:<15} {:>7} {:>10} {:>10} {:>8} {:>7} {:>9} {:>11} {:>7}",
        "name", "size", "p50", "p99", "floor", "ipc", "msgs/s", "bytes/s", "ipc"
    );
    let floor = find(rows, "floor", "rtt", 8).and_then(|r| r.p50_ns);
    let mut sizes = sizes.to_vec();
    if floor.is_some() && !sizes.contains(&8) {
        sizes.insert(0, 8);
    }
    let mut batched = false;
    for &size in &sizes {
        let ipc_rtt = find(rows, "ipc-channel", "rtt", size).and_then(|r| r.p50_ns);
        let ipc_thr = find(rows, "ipc-channel", "throughput", size).and_then(|r| r.msgs_per_s);
        let mut first = true;
        for name in Name::ALL.iter().map(|n| n.as_str()) {
            let (rtt, thr) = (
                find(rows, name, "rtt", size),
                find(rows, name, "throughput", size),
            );
            if rtt.is_none() && thr.is_none() {
                continue;
            }
            if first {
                out.push('\n');
                first = false;
            }
            let err = rtt.and_then(|r| r.error.as_ref());
            let err = err.or(thr.and_then(|r| r.error.as_ref()));
            let cell = |v: Option<String>| v.unwrap_or_else(|| "–".into());
            let p50 = rtt.and_then(|r| r.p50_ns);
            let star = rtt.and_then(|r| r.batch).is_some_and(|b| b > 1);
            batched |= star;
            let mark = if star { "*" } else { "" };
            let msgs = thr.and_then(|r| r.msgs_per_s);
            let _ = write!(
                out,
                "{:<15} {:>7} {:>10} {:>10} {:>8} {:>7} {:>9} {:>11} {:>7}",
                name,
                format_size(size),
                cell(p50.map(|v| format_ns(v) + mark)),
                cell(rtt.and_then(|r| r.p99_ns).map(format_ns)),
                cell(p50.zip(floor).map(|(v, f)| ratio(v / f))),
                cell(p50.zip(ipc_rtt).map(|(v, i)| ratio(v / i))),
                cell(msgs.map(format_rate)),
                cell(thr.and_then(|r| r.bytes_per_s).map(format_bytes_rate)),
                cell(msgs.zip(ipc_thr).map(|(v, i)| ratio(v / i))),
            );
            if let Some(e) = err {
                let _ = write!(out, "  error: {e}");
            }
            out.push('\n');
        }
    }
    out.push_str(
        "\nround trip: ping-pong, p50/p99 of per-round-trip times; \"rtt vs floor\" and \"rtt vs ipc\"\n\
         are p50 ÷ the floor's and ÷ ipc-channel's at the same size (lower is faster).\n\
         one way: messages streamed from the peer, median of 3 runs; \"msgs vs ipc\" is msgs/s ÷\n\
         ipc-channel's (higher is faster). thread and crossbeam move values: their bytes/s copies nothing.\n",
    );
    if floor.is_some_and(|f| f > 2_000.0) {
        out.push_str(
            "! the floor took over 2 µs: its two spinning processes shared a core with other\n  \
             work (a quiet machine gives a few hundred ns), so the ratios to it mean little.\n",
        );
    }
    if batched {
        out.push_str(
            "* timed in batches of a few round trips (each shorter than 50 clock reads);\n  \
             the percentiles are of batch averages.\n",
        );
    }
    out
}
