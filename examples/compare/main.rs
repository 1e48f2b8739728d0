//! Which backend? Measures every conduit backend against its peers and the hardware floor on
//! this machine, in one run, and prints one table.
//!
//! ```text
//! cargo run --release --example compare                      # under a minute on 2 cores
//! cargo run --release --example compare -- --quick           # a smoke run, about 15 s
//! cargo run --release --example compare -- --full            # 8 B to 64 MiB, about 7 minutes
//! cargo run --release --example compare -- --backends shm,unix,floor,ipc-channel --sizes 8,1MiB
//! cargo run --release --example compare -- --help            # every flag, the JSON fields
//! ```
//!
//! Rows (`--backends`): conduit's `thread` (`Backend::Thread`, two threads), `shm`
//! (`shm:PATH`), `unix` (`unix:PATH`), `tcp` (`tcp:127.0.0.1:PORT`), `zenoh` (`zenoh:KEY`
//! over conduit's default loopback session, in builds with the `zenoh` feature) and `pipe`
//! (`channel(Backend::Pipe)` handed to the child), each between this process and a child
//! process; `shm-vec` and `unix-vec`, the same as `shm` and `unix` but sending a plain
//! `Vec<u8>`, which serde encodes byte by byte (from 4 KiB only: what a byte payload costs
//! when it is not a `conduit::Bytes`); `shm-sealed` and `unix-sealed`, the same sending a
//! sealed `conduit::Bytes` (a `BlobBuf`, sealed once and cloned), which crosses as its file
//! descriptor while the receiver maps the file (from 64 KiB only); the peers `crossbeam` (crossbeam-channel
//! `bounded(1024)`, two threads: the Thread backend's capacity and message types, so the two
//! compare like for like), `ipc-channel` (servo's, two processes, serde messages like
//! conduit's), `ipc-bytes` (its `bytes_channel()`: the payload's bytes as they are, no
//! serde), `ipc-shmem` (an `IpcSharedMemory` per message: the bytes copied into a fresh memfd
//! region, only its descriptor sent, the region read in place), `raw-socketpair`
//! (length-prefixed frames on a socketpair with plain system calls: what the socket backend
//! could cost at best), `iceoryx2` (Eclipse iceoryx2 publish-subscribe over shared memory,
//! two processes, the payload written into the loaned sample and read in place by a spinning
//! subscriber) and `iceoryx2-wait` (the same with a subscriber that blocks on an iceoryx2
//! event listener, which the publisher notifies after each sample: what iceoryx2 costs an
//! application that must not spin), `zenoh-raw` (in builds with the `zenoh` feature: plain
//! zenoh publish-subscribe between two processes, configured as conduit's default session,
//! the engine's own cost under the `zenoh` row); and the `floor`, two processes bouncing a counter over
//! one shared cache line with raw atomics, the machine's own cost of a cross-core round trip
//! (measured first and again last, the lower kept: a pair that only spins is the first to
//! suffer from other load).
//!
//! Every row costs about the same time at every size, so a default or quick run measures
//! `ipc-bytes`, `ipc-shmem` and `iceoryx2-wait` only where they differ most from their
//! siblings, six pairs in all, a few seconds: the byte paths at 64 KiB and 1 MiB (where serde
//! and copies weigh), the waiting subscriber at 8 B (a wake-up against a spin) and 64 KiB.
//! `--full`, or naming them in `--backends` (also through `all` or `peers`), measures them
//! at every size.
//!
//! For each row and message size (`--sizes`, default 8 B, 64 B, 4 KiB, 64 KiB, 1 MiB; `--full`
//! 8 B to 64 MiB; 8 B is a `u64`, 8 bytes of payload in the rows that send bytes, other sizes
//! are a `conduit::Bytes`, a `Vec<u8>` in the vec rows) a fresh pair is started and measured
//! twice (`workloads.rs` says exactly how; at 64 MiB conduit's rows raise their 64 MiB size
//! limit by a few bytes for the length prefix):
//!
//! - round trip: ping-pong; p50 and p99 of per-round-trip times, each timed alone unless it
//!   lasts fewer than 50 clock reads (then in batches of a few, and the table says so);
//! - one way: the peer streams messages as fast as it can; messages and payload bytes per
//!   second, the median of three runs. These rows give no percentiles: timing each message
//!   would slow the stream.
//!
//! Then it prints the table (ratios to the floor and to ipc-channel included), writes
//! `target/conduit-report/results.json` (one object per row and workload) and two SVG charts
//! beside it, `latency.svg` and `throughput.svg`, and prints their paths.
//!
//! Structure: `cli.rs` flags; `names.rs` rows and sizes; `workloads.rs` the measured loops,
//! message types and conduit's pairs (shared with `benches/backends.rs`); `peers.rs` the
//! baselines (with `ipc_bytes_peer.rs`, `iceoryx2_peer.rs` and `zenoh_peer.rs`); `procs.rs` child processes,
//! clean-up and the watchdog; `measure.rs` sampling and budgets; `report.rs` the table and
//! JSON; `charts.rs` the SVGs.
//!
//! Children are this binary re-run with `CONDUIT_COMPARE_ROLE` set. Nothing is left behind:
//! children die with us (`PR_SET_PDEATHSIG`) and are reaped after their row, socket files
//! live in a private temporary directory removed at the end (or on Ctrl-C), and a row that
//! stops making progress has its peer killed and is reported as an error instead of hanging
//! the run. Nothing is pinned to a core: both ends run where the scheduler puts them.

mod charts;
mod cli;
mod measure;
mod names;
mod peers;
mod procs;
mod report;
mod workloads;

use std::process::ExitCode;
use std::time::Instant;

use cli::{Config, Parsed};

fn main() -> ExitCode {
    if workloads::child_main() {
        return ExitCode::SUCCESS;
    }
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let cfg = match cli::parse_or_usage(&args) {
        Ok(Parsed::Run(cfg)) => cfg,
        Ok(Parsed::Help) => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(refusal) => {
            eprintln!("{}", refusal.message);
            return ExitCode::from(refusal.status);
        }
    };
    match run(&cfg) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("compare: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Measures, reports; whether every row was measured.
fn run(cfg: &Config) -> Result<bool, String> {
    let began = Instant::now();
    // First, from the main thread: it blocks the signals it handles in every later thread.
    let dir = procs::TempDir::new("conduit-compare");
    let dog = procs::Watchdog::start();
    let out = report::out_dir();
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let load = load_average();
    let clock = measure::clock_cost_ns();
    let rows = measure::run_all(cfg, dir.path(), &dog, clock);
    drop(dir);
    let json = report::to_json(&rows);
    let json_path = out.join("results.json");
    std::fs::write(&json_path, format!("{json}\n"))
        .map_err(|e| format!("writing {}: {e}", json_path.display()))?;
    let failed = rows.iter().filter(|r| r.error.is_some()).count();
    if cfg.json_only {
        println!("{json}");
    } else {
        let busy = match load {
            Some(l) if l >= 0.5 => format!("; load average {l:.2} at the start: figures are noisy"),
            Some(l) => format!("; load average {l:.2} at the start"),
            None => String::new(),
        };
        let heading = format!(
            "conduit compare: {} run, {:.0} s; {}{busy}\nsizes {}; a clock read costs {clock:.0} ns",
            cfg.mode.as_str(),
            began.elapsed().as_secs_f64(),
            machine(),
            cli::describe_sizes(&cfg.sizes),
        );
        print!("{}", report::table(&rows, &cfg.sizes, &heading));
        println!("\nresults: {}", json_path.display());
        for chart in charts::draw(&rows, &cfg.sizes, &out)? {
            println!("chart:   {chart}");
        }
    }
    if failed > 0 {
        eprintln!("compare: {failed} measurement(s) failed; see the error column");
    }
    Ok(failed == 0)
}

/// The one-minute load average: other work on the machine skews every figure.
fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// `2 CPUs, Intel(R) Xeon(R) …, Linux 6.1.0`: what the figures were measured on.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, {model}, Linux {}", kernel.trim())
}
