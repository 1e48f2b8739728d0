//! Every backend against its peers and the hardware floor: ping-pong round trips and
//! one-way throughput at 8 B, 64 B, 4 KiB, 64 KiB and 1 MiB, in one criterion run.
//!
//! ```text
//! cargo bench --bench backends                           # full run, about 5 minutes
//! cargo bench --bench backends -- --quick                # smoke run (8 B and 64 KiB), about 15 s
//! CONDUIT_BENCH_QUICK=1 cargo bench --bench backends     # the same, by environment
//! cargo bench --bench backends -- roundtrip_8B           # one group (criterion filter)
//! cargo bench --bench backends -- 'throughput_1MiB/(shm|unix)'
//! ```
//!
//! Groups, per size: `roundtrip_{size}/{row}` (time per round trip) and
//! `throughput_{size}/{row}` (time per message, with criterion's throughput in elements or
//! bytes per second; named apart from `benches/shm.rs`'s `rtt_*`/`oneway_*` groups, whose
//! messages differ, so criterion never compares one with the other). Rows:
//!
//! - conduit: `thread` (`channel(Backend::Thread)`, between two threads), `shm`
//!   (`shm:PATH`), `unix` (`unix:PATH`), `tcp` (`tcp:127.0.0.1:PORT`), `pipe`
//!   (`channel(Backend::Pipe)` inherited by the child), each between this process and a child;
//! - peers: `crossbeam` (crossbeam-channel `bounded(1024)`, the Thread backend's default
//!   capacity, between two threads running the same loops), `ipc-channel` (two processes,
//!   connected through an `IpcOneShotServer`), `raw-socketpair` (length-prefixed frames on a
//!   socketpair between two processes, written with one `sendmsg` and read through a 64 KiB
//!   buffer with plain system calls: no conduit, no codec), `iceoryx2` (publish-subscribe over
//!   shared memory between two processes, the payload written into the loaned sample and read
//!   in place by a spinning subscriber); and, at the sizes the `compare` tool's default run
//!   gives them (`Name::spot_sizes`), `ipc-bytes` (ipc-channel's `bytes_channel()`, no serde)
//!   and `ipc-shmem` (an `IpcSharedMemory` region per message) at 64 KiB and 1 MiB, and
//!   `iceoryx2-wait` (the subscriber blocks on an iceoryx2 event listener that the publisher
//!   notifies after each sample) at 8 B and 64 KiB;
//! - `shm-vec`, `unix-vec` (from 4 KiB): `shm` and `unix` sending a plain `Vec<u8>`, which
//!   serde encodes byte by byte, beside the same bytes as a `conduit::Bytes`;
//! - `floor` (in `roundtrip_8B` only): two processes bouncing a counter over one shared cache line
//!   of a memfd page with raw atomics, the machine's own cost of a cross-core round trip.
//!
//! The measured loops are the `compare` tool's (`examples/compare/workloads.rs` and
//! `peers.rs`, included here by path), so the bench and the tool cannot drift apart:
//!
//! - round trip: send the `seq`-th message, receive the peer's echo of it, check it;
//!   criterion times `iters` of them as a whole (`iter_custom`);
//! - one way: the peer streams `iters + 1` messages on command; the clock starts when the
//!   first arrives and stops when the last does (steady state, both sides in parallel).
//!
//! Messages: 8 B is a `u64`; other sizes are a `conduit::Bytes`, encoded as one byte string
//! (shared by the sender's clones, a fresh buffer per message at the receiver; threads move
//! it), or a `Vec<u8>` in the vec rows. Capacities are the defaults; nothing is pinned to a
//! core.
//!
//! Children are this binary re-run with `CONDUIT_COMPARE_ROLE` set. They die with us
//! (`PR_SET_PDEATHSIG`) and are reaped after their size's groups; socket files live in a
//! private temporary directory removed at the end (or on Ctrl-C). A benchmark whose peer
//! stops answering for a minute has its peer killed and fails with a message, not a hang.

#[allow(dead_code)] // the compare tool uses more of these modules than the bench does
#[path = "../examples/compare/names.rs"]
mod names;
#[path = "../examples/compare/peers.rs"]
mod peers;
#[allow(dead_code)]
#[path = "../examples/compare/procs.rs"]
mod procs;
#[path = "../examples/compare/workloads.rs"]
mod workloads;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};

use names::Name;
use procs::Watchdog;
use workloads::Link;

/// Set (to anything) for a short smoke run; `--quick` does the same.
const QUICK: &str = "CONDUIT_BENCH_QUICK";
/// The longest a single timed call may take before its peer is declared stuck.
const STUCK: Duration = Duration::from_secs(60);

fn main() {
    if workloads::child_main() {
        return;
    }
    let quick = std::env::var_os(QUICK).is_some() || std::env::args().any(|a| a == "--quick");
    let plan = Plan::new(quick);
    // First, from the main thread: it blocks the signals it handles in every later thread.
    let dir = procs::TempDir::new("conduit-backends");
    let dog = Watchdog::start();
    let mut c = Criterion::default()
        .nresamples(plan.resamples)
        .configure_from_args();
    for &size in plan.sizes {
        // Peers start on first use (a filtered-out benchmark spawns nothing), serve both
        // groups of their size, and stop before the next size starts.
        let mut links = BTreeMap::new();
        let mut g = c.benchmark_group(format!("roundtrip_{}", label(size)));
        plan.apply(&mut g);
        for &name in Name::ALL {
            if !name.measures_unasked(size) {
                continue;
            }
            g.bench_function(name.as_str(), |b| {
                let link = peer(&mut links, name, size, dir.path());
                let _armed = dog.arm(STUCK, link.pids(), what(name, size));
                b.iter_custom(|iters| timed(link.round_trips(iters), name, size));
            });
            // The floor's child spins all the time: stop it before anything else runs.
            links.remove(&Name::Floor);
        }
        g.finish();
        let mut g = c.benchmark_group(format!("throughput_{}", label(size)));
        plan.apply(&mut g);
        g.throughput(match size {
            8 => Throughput::Elements(1),
            bytes => Throughput::Bytes(bytes as u64),
        });
        for name in Name::ALL
            .iter()
            .copied()
            .filter(|&n| n != Name::Floor && n.measures_unasked(size))
        {
            g.bench_function(name.as_str(), |b| {
                let link = peer(&mut links, name, size, dir.path());
                let _armed = dog.arm(STUCK, link.pids(), what(name, size));
                b.iter_custom(|iters| timed(link.stream(iters), name, size));
            });
        }
        g.finish();
    }
    c.final_summary();
}

/// The running pair for `name` at `size`, started on first use.
fn peer<'a>(
    links: &'a mut BTreeMap<Name, Box<dyn Link>>,
    name: Name,
    size: usize,
    dir: &Path,
) -> &'a mut dyn Link {
    &mut **links.entry(name).or_insert_with(|| {
        workloads::start(name, size, dir)
            .unwrap_or_else(|e| panic!("starting {}: {e}", what(name, size)))
    })
}

/// A measurement, or the benchmark fails with what went wrong.
fn timed(result: Result<Duration, String>, name: Name, size: usize) -> Duration {
    result.unwrap_or_else(|e| panic!("{}: {e}", what(name, size)))
}

fn what(name: Name, size: usize) -> String {
    format!("{} at {}", name.as_str(), names::format_size(size))
}

/// `8B`, `4KiB`, `1MiB`: criterion group names without spaces.
fn label(size: usize) -> String {
    names::format_size(size).replace(' ', "")
}

/// Sizes and time budgets: the full run takes about five minutes, the quick one about 15 s.
struct Plan {
    sizes: &'static [usize],
    warm_up: Duration,
    time: Duration,
    samples: usize,
    resamples: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                sizes: &[8, 64 << 10],
                warm_up: Duration::from_millis(100),
                time: Duration::from_millis(300),
                samples: 10,
                resamples: 5_000,
            }
        } else {
            Plan {
                sizes: &[8, 64, 4 << 10, 64 << 10, 1 << 20],
                warm_up: Duration::from_millis(500),
                time: Duration::from_secs(2),
                samples: 20,
                resamples: 50_000,
            }
        }
    }

    fn apply(&self, g: &mut BenchmarkGroup<'_, WallTime>) {
        g.warm_up_time(self.warm_up)
            .measurement_time(self.time)
            .sample_size(self.samples);
    }
}
