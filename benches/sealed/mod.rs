//! Large payloads over `shm:` as sealed buffers (`conduit::BlobBuf`) against the ring.
//!
//! - `oneway_16MiB/{shm,shm_sealed_fresh,shm_sealed_reused}`: one-way throughput of 16 MiB
//!   messages from a child, as `oneway_*` in `shm.rs`. `shm` copies a `Bytes` through the
//!   ring (one copy per side); `shm_sealed_fresh` has the child fill a new `BlobBuf` for
//!   every message (one byte per page, so each page is allocated as a producer writing
//!   its data would) and send it sealed; `shm_sealed_reused` sends clones of one sealed
//!   buffer, as a process forwarding what it received does.
//! - `recv_cpu_16MiB/{...}`: the same streams, but each sample is the CPU time this
//!   receiving thread spent (`CLOCK_THREAD_CPUTIME_ID`), not the wall-clock time: what
//!   receiving costs the receiver, whatever the sender spends.
//!
//! In both, the receiver reads one byte of every 4 KiB page of every message, as a user
//! reading its payload would at least (for a sealed buffer, that is what maps its pages).

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use conduit::{BlobBuf, Bytes};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};

use super::{child, Plan, Stream};

const SIZE: usize = 16 << 20;
const KINDS: [(&str, &str); 3] = [
    ("shm", "bytes"),
    ("shm_sealed_fresh", "fresh"),
    ("shm_sealed_reused", "reused"),
];

pub(super) fn sealed(c: &mut Criterion, plan: &Plan, dir: &Path) {
    for (group, cpu) in [("oneway_16MiB", false), ("recv_cpu_16MiB", true)] {
        let mut g = c.benchmark_group(group);
        plan.apply(&mut g, plan.oneway_time, 10);
        g.throughput(Throughput::Bytes(SIZE as u64));
        for (name, kind) in KINDS {
            bench(&mut g, name, kind, cpu, dir);
        }
        g.finish();
    }
}

fn bench(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, kind: &str, cpu: bool, dir: &Path) {
    let mut peer: Option<Stream<Bytes>> = None;
    g.bench_function(name, |b| {
        let peer = peer.get_or_insert_with(|| Stream::start_kind("shm", SIZE, kind, dir));
        b.iter_custom(|iters| receive(peer, iters, cpu));
    });
}

/// Has the child send `iters + 1` messages and reads a byte of each page of the last
/// `iters`; the wall-clock time they took, or this thread's CPU time with `cpu`.
fn receive(peer: &Stream<Bytes>, iters: u64, cpu: bool) -> Duration {
    peer.cmd.send(iters + 1).expect("command");
    black_box(peer.data.recv().expect("first message"));
    let (wall, thread) = (Instant::now(), thread_cpu());
    for _ in 0..iters {
        let msg = peer.data.recv().expect("message");
        let sum: u64 = msg.iter().step_by(4096).map(|&b| u64::from(b)).sum();
        black_box(sum);
    }
    if cpu {
        thread_cpu() - thread
    } else {
        wall.elapsed()
    }
}

/// The CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The stream child for the sealed kinds: `fresh` fills a new `BlobBuf` per message,
/// `reused` sends clones of one sealed buffer.
pub(super) fn stream_child(data: &str, cmd: &str, size: usize, kind: &str) {
    match kind {
        "fresh" => child::stream(data, cmd, |i| {
            let mut buf = BlobBuf::new(size).expect("a sealed buffer");
            for page in buf.chunks_mut(4096) {
                page[0] = i as u8;
            }
            buf.seal().expect("sealing")
        }),
        "reused" => {
            let mut buf = BlobBuf::new(size).expect("a sealed buffer");
            buf.fill(0xC3);
            let sealed = buf.seal().expect("sealing");
            child::stream(data, cmd, move |_| sealed.clone())
        }
        other => panic!("unknown stream kind {other:?}"),
    }
}
