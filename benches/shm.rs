//! Cross-process latency and throughput of the `shm:` backend, against the `unix:` backend
//! and against the hardware's own floor, all in one run.
//!
//! ```text
//! cargo bench --bench shm                                # full run, about 1.5 to 2 minutes
//! cargo bench --bench shm -- --quick                     # smoke run, well under 30 s
//! CONDUIT_BENCH_QUICK=1 cargo bench --bench shm          # the same, by environment
//! cargo bench --bench shm -- rtt_64B                     # one group (criterion filter)
//! ```
//!
//! Groups:
//!
//! - `rtt_64B/{floor,floor_frames,shm,unix,shm_bytes,unix_bytes}`: a ping-pong round trip
//!   with a 64-byte message between this process and a child process. `floor` and
//!   `floor_frames` are bare shared memory and raw atomics (`floors/mod.rs`): `floor` a
//!   counter bounced over one cache line each way, the machine's own cost of one
//!   cross-process (cross-core) round trip; `floor_frames` a 64-byte message in a bare ring
//!   of frames laid out as conduit's, two cache lines each way, the least a framed ring can
//!   do for 64 bytes.
//! - `oneway_{8B,4KiB,1MiB}/{floor,shm,unix}`: one-way throughput from a child to this
//!   process. The child streams N+1 messages on command; the clock starts when the first one
//!   arrives and stops when the last one does, so a measurement is the steady-state receive
//!   rate of N messages, sender and receiver running in parallel. `floor` (4 KiB and 1 MiB)
//!   is bare shared memory with one copy per side into a fresh buffer (`floors/copies.rs`),
//!   the least the shm backend's two copies can cost.
//! - `record_64KiB/{floor,bytes,byte_buf,vec}` (`record/mod.rs`): a derived struct with a
//!   64 KiB byte field, one way over `shm:`, for each choice of the field's type; `floor`
//!   is 64 KiB through bare shared memory with one copy per side (`floors/copies.rs`).
//! - `oneway_16MiB`, `recv_cpu_16MiB` (`sealed/mod.rs`): sealed buffers against the ring.
//!
//! Messages:
//!
//! - 64-byte ping (`shm`, `unix`): [`Msg64`], a derived struct of two `[u8; 32]` (serde
//!   derives arrays only up to 32 elements). postcard and bincode write a `u8` as one raw
//!   byte and a fixed array without a length, so it is exactly 64 bytes on the wire with
//!   either codec. (A `[u64; 8]` would be varints of 1 to 10 bytes each; a `Vec<u8>` gets a
//!   length prefix.) serde walks such arrays element by element, so encoding and decoding
//!   cost several hundred instructions per message: a typical user struct, but the codec's
//!   share of the round trip, not the transport's.
//! - 64-byte ping as one byte string (`shm_bytes`, `unix_bytes`): [`Raw64`], `[u8; 64]`
//!   serialized with `serde_bytes` (a one-byte length, then one copy: 65 bytes on the
//!   wire). Comparing the two shows how much of the round trip is serde's per-element work.
//! - 8-byte messages: a `u64` (the sequence number), as users send it. postcard writes it as
//!   a varint of 1 to 4 bytes here; in the shm ring every frame of up to 8 payload bytes
//!   takes 16 bytes (8-byte header, payload padded to 8), so the ring traffic is the same as
//!   for a fixed 8-byte payload.
//! - 4 KiB and 1 MiB messages: [`conduit::Bytes`] (a length and the bytes in one run)
//!   rather than `Vec<u8>`'s element-by-element sequence, which would measure serde's
//!   per-byte loop instead of the transport. Clones share one buffer, so the child does not
//!   copy a megabyte before each send; the receiver gets a fresh value for each message, as
//!   a user's receiver would.
//!
//! Rings and buffers are the defaults (1 MiB shm ring; the kernel's socket buffer), so a
//! 1 MiB message crosses the shm ring in three pieces.
//!
//! Children are this binary re-run with `CONDUIT_BENCH_ROLE` set (see `main`). They die
//! with us (`PR_SET_PDEATHSIG`), leave on their own when their channel disconnects, and are
//! reaped (killed if need be) when their benchmark ends; socket files live in a private
//! temporary directory removed at the end.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use conduit::{Message, Receiver, Sender};

mod floors;
mod record;
mod sealed;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use serde::{Deserialize, Serialize};

/// Which child role this process plays; unset in the parent.
const ROLE: &str = "CONDUIT_BENCH_ROLE";
/// Child arguments: addresses, a descriptor number, a message size.
const ARG_A: &str = "CONDUIT_BENCH_A";
const ARG_B: &str = "CONDUIT_BENCH_B";
const ARG_SIZE: &str = "CONDUIT_BENCH_SIZE";
/// How the stream child makes its large messages (`record/mod.rs`, `sealed/mod.rs`); unset: one `Bytes`,
/// cloned.
const ARG_KIND: &str = "CONDUIT_BENCH_KIND";
/// Set (to anything) for a short smoke run; `--quick` does the same.
const QUICK: &str = "CONDUIT_BENCH_QUICK";

/// The longest wait for a child to start or to leave.
const PATIENCE: Duration = Duration::from_secs(30);

const SIZES: [(&str, usize); 3] = [("8B", 8), ("4KiB", 4 << 10), ("1MiB", 1 << 20)];

/// 64 bytes on the wire with postcard and bincode alike (see the module docs).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
struct Msg64 {
    a: [u8; 32],
    b: [u8; 32],
}

impl Msg64 {
    fn new(seq: u64) -> Self {
        let mut a = [0xA5; 32];
        a[..8].copy_from_slice(&seq.to_le_bytes());
        Msg64 { a, b: [0x5A; 32] }
    }
}

/// 64 bytes serialized as one byte string by `serde_bytes` (a length, then one copy).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(transparent)]
struct Raw64(#[serde(with = "serde_bytes")] [u8; 64]);

/// A ping-pong message type: how to make the `seq`-th ping.
trait Ping: Message + PartialEq + std::fmt::Debug {
    fn ping(seq: u64) -> Self;
}

impl Ping for Msg64 {
    fn ping(seq: u64) -> Self {
        Msg64::new(seq)
    }
}

impl Ping for Raw64 {
    fn ping(seq: u64) -> Self {
        let mut raw = [0xA5; 64];
        raw[..8].copy_from_slice(&seq.to_le_bytes());
        Raw64(raw)
    }
}

/// The large messages: one byte string, cheap to clone on the sending side.
type Blob = conduit::Bytes;

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        child::run(&role);
        return;
    }
    let quick = std::env::var_os(QUICK).is_some() || std::env::args().any(|a| a == "--quick");
    let plan = Plan::new(quick);
    let dir = TempDir::new();
    let mut c = Criterion::default()
        .nresamples(plan.resamples)
        .configure_from_args();
    rtt(&mut c, &plan, &dir.0);
    oneway(&mut c, &plan, &dir.0);
    record::records(&mut c, &plan, &dir.0);
    sealed::sealed(&mut c, &plan, &dir.0);
    c.final_summary();
}

/// Time budgets: the full run stays around a minute and a half, the quick one under 30 s.
struct Plan {
    warm_up: Duration,
    rtt_time: Duration,
    rtt_samples: usize,
    oneway_time: Duration,
    oneway_samples: usize,
    resamples: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                warm_up: Duration::from_millis(300),
                rtt_time: Duration::from_secs(1),
                rtt_samples: 10,
                oneway_time: Duration::from_secs(1),
                oneway_samples: 10,
                resamples: 10_000,
            }
        } else {
            Plan {
                warm_up: Duration::from_secs(1),
                rtt_time: Duration::from_secs(5),
                rtt_samples: 50,
                oneway_time: Duration::from_secs(4),
                oneway_samples: 20,
                resamples: 100_000,
            }
        }
    }

    fn apply(&self, g: &mut BenchmarkGroup<'_, WallTime>, time: Duration, samples: usize) {
        g.warm_up_time(self.warm_up)
            .measurement_time(time)
            .sample_size(samples);
    }
}

/// A private directory for socket files, removed with everything in it at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("conduit-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the socket directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn addr(scheme: &str, dir: &Path, name: &str) -> String {
    format!("{scheme}:{}", dir.join(name).display())
}

/// A child process, reaped on drop: given a few seconds to leave by itself (its channels
/// are gone by then), then killed.
struct ChildGuard(Child);

impl ChildGuard {
    fn spawn(role: &str, args: &[(&str, String)]) -> ChildGuard {
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = Command::new(exe);
        cmd.env(ROLE, role)
            .env("CONDUIT_BENCH_PARENT", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (k, v) in args {
            cmd.env(k, v);
        }
        ChildGuard(cmd.spawn().expect("spawning a child"))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            match self.0.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Ping-pong over two channels of one backend: we send on `fwd` to the child's receiver,
/// the child echoes on `back` to ours.
struct PingPong<T> {
    fwd: Sender<T>,
    back: Receiver<T>,
    seq: u64,
    /// Last, so the channels are gone (and the child leaves) before it is reaped.
    _child: ChildGuard,
}

impl<T: Ping> PingPong<T> {
    /// `kind` names `T` for the child: "struct" ([`Msg64`]) or "bytes" ([`Raw64`]).
    fn start(scheme: &str, kind: &str, dir: &Path) -> PingPong<T> {
        let fwd_addr = addr(scheme, dir, &format!("pp-{scheme}-{kind}-fwd.sock"));
        let back_addr = addr(scheme, dir, &format!("pp-{scheme}-{kind}-back.sock"));
        let back = Receiver::<T>::bind(&back_addr).expect("binding the echo receiver");
        let child = ChildGuard::spawn(
            "echo",
            &[
                (ARG_A, fwd_addr.clone()),
                (ARG_B, back_addr),
                (ARG_SIZE, kind.to_string()),
            ],
        );
        // The child binds its receiver before it says hello.
        let hello = back.recv_timeout(PATIENCE).expect("the echo child's hello");
        assert_eq!(hello, T::ping(0));
        let fwd = Sender::<T>::connect(&fwd_addr).expect("connecting to the echo child");
        PingPong {
            fwd,
            back,
            seq: 0,
            _child: child,
        }
    }

    fn round_trips(&mut self, iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            self.seq += 1;
            self.fwd.send(T::ping(self.seq)).expect("ping");
            let pong = self.back.recv().expect("pong");
            debug_assert_eq!(pong, T::ping(self.seq));
            black_box(pong);
        }
        start.elapsed()
    }
}

fn rtt(c: &mut Criterion, plan: &Plan, dir: &Path) {
    let mut g = c.benchmark_group("rtt_64B");
    plan.apply(&mut g, plan.rtt_time, plan.rtt_samples);
    // Peers start on first use, so a filtered-out benchmark spawns nothing, and stop (are
    // dropped) right after their benchmark, so no spinning child disturbs the next one.
    let mut floor: Option<floors::Floor> = None;
    g.bench_function("floor", |b| {
        let floor = floor.get_or_insert_with(floors::Floor::start);
        b.iter_custom(|iters| floor.round_trips(iters));
    });
    drop(floor);
    let mut frames: Option<floors::Frames> = None;
    g.bench_function("floor_frames", |b| {
        let frames = frames.get_or_insert_with(floors::Frames::start);
        b.iter_custom(|iters| frames.round_trips(iters));
    });
    drop(frames);
    for scheme in ["shm", "unix"] {
        bench_ping::<Msg64>(&mut g, scheme, "struct", scheme.to_string(), dir);
    }
    for scheme in ["shm", "unix"] {
        bench_ping::<Raw64>(&mut g, scheme, "bytes", format!("{scheme}_bytes"), dir);
    }
    g.finish();
}

fn bench_ping<T: Ping>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    scheme: &str,
    kind: &str,
    id: String,
    dir: &Path,
) {
    let mut peer: Option<PingPong<T>> = None;
    g.bench_function(id, |b| {
        let peer = peer.get_or_insert_with(|| PingPong::start(scheme, kind, dir));
        b.iter_custom(|iters| peer.round_trips(iters));
    });
}

/// A child streaming messages of one size to our `data` receiver on command.
struct Stream<T> {
    cmd: Sender<u64>,
    data: Receiver<T>,
    _child: ChildGuard,
}

impl<T: Message> Stream<T> {
    fn start(scheme: &str, size: usize, dir: &Path) -> Stream<T> {
        Stream::start_kind(scheme, size, "bytes", dir)
    }

    /// [`Stream::start`] with the child making its messages as `kind` says (see
    /// `child::run`).
    fn start_kind(scheme: &str, size: usize, kind: &str, dir: &Path) -> Stream<T> {
        let data_addr = addr(scheme, dir, &format!("ow-{scheme}-{size}-{kind}.sock"));
        // Commands always go over a socket: they are not timed.
        let cmd_addr = addr("unix", dir, &format!("cmd-{scheme}-{size}-{kind}.sock"));
        let data = Receiver::<T>::bind(&data_addr).expect("binding the data receiver");
        let child = ChildGuard::spawn(
            "stream",
            &[
                (ARG_A, data_addr),
                (ARG_B, cmd_addr.clone()),
                (ARG_SIZE, size.to_string()),
                (ARG_KIND, kind.to_string()),
            ],
        );
        // The child binds its command receiver before it sends this first message.
        black_box(
            data.recv_timeout(PATIENCE)
                .expect("the stream child's hello"),
        );
        let cmd = Sender::<u64>::connect(&cmd_addr).expect("connecting to the stream child");
        Stream {
            cmd,
            data,
            _child: child,
        }
    }

    /// Has the child send `iters + 1` messages; times the last `iters` of them.
    fn receive(&self, iters: u64) -> Duration {
        self.cmd.send(iters + 1).expect("command");
        black_box(self.data.recv().expect("first message"));
        let start = Instant::now();
        for _ in 0..iters {
            black_box(self.data.recv().expect("message"));
        }
        start.elapsed()
    }
}

fn oneway(c: &mut Criterion, plan: &Plan, dir: &Path) {
    for (label, size) in SIZES {
        let mut g = c.benchmark_group(format!("oneway_{label}"));
        plan.apply(&mut g, plan.oneway_time, plan.oneway_samples);
        if size <= 8 {
            g.throughput(Throughput::Elements(1));
        } else {
            g.throughput(Throughput::Bytes(size as u64));
        }
        if size > 8 {
            let mut floor: Option<floors::Copies> = None;
            g.bench_function("floor", |b| {
                let floor = floor.get_or_insert_with(|| floors::Copies::start(size));
                b.iter_custom(|iters| floor.receive(iters, false));
            });
            // Stopped before the next benchmark, so its spinning child disturbs none.
            drop(floor);
        }
        for scheme in ["shm", "unix"] {
            if size <= 8 {
                bench_stream::<u64>(&mut g, scheme, size, dir);
            } else {
                bench_stream::<Blob>(&mut g, scheme, size, dir);
            }
        }
        g.finish();
    }
}

fn bench_stream<T: Message>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    scheme: &str,
    size: usize,
    dir: &Path,
) {
    let mut peer: Option<Stream<T>> = None;
    g.bench_function(scheme, |b| {
        let peer = peer.get_or_insert_with(|| Stream::start(scheme, size, dir));
        b.iter_custom(|iters| peer.receive(iters));
    });
}

/// The child roles. Each reads its arguments from the environment and leaves when its
/// channel disconnects, its parent dies, or (floor) it is told to.
mod child {
    use super::*;

    pub(super) fn run(role: &str) {
        die_with_parent();
        let arg = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} unset"));
        match role {
            "floor" => floors::floor_child(),
            "floor_frames" => floors::frames_child(),
            "floor_copies" => floors::copies_child(),
            "echo" => match arg(ARG_SIZE).as_str() {
                "struct" => echo::<Msg64>(&arg(ARG_A), &arg(ARG_B)),
                "bytes" => echo::<Raw64>(&arg(ARG_A), &arg(ARG_B)),
                other => panic!("unknown ping kind {other:?}"),
            },
            "stream" => {
                let size: usize = arg(ARG_SIZE).parse().expect("a message size");
                let (data, cmd) = (arg(ARG_A), arg(ARG_B));
                match (size, arg(ARG_KIND).as_str()) {
                    (0..=8, _) => stream(&data, &cmd, |i| i),
                    (_, "bytes") => {
                        let blob = Blob::from(vec![0xC3; size]);
                        stream(&data, &cmd, move |_| blob.clone());
                    }
                    (_, kind) if kind.starts_with("record-") => {
                        record::stream_child(&data, &cmd, size, kind)
                    }
                    (_, kind) => sealed::stream_child(&data, &cmd, size, kind),
                }
            }
            other => panic!("unknown child role {other:?}"),
        }
    }

    /// SIGKILL when the parent dies, so no child outlives an interrupted run.
    fn die_with_parent() {
        // SAFETY: PR_SET_PDEATHSIG takes a signal number; no pointer is passed.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        // The parent may have died before the prctl.
        let parent = std::env::var("CONDUIT_BENCH_PARENT").ok();
        // SAFETY: getppid has no preconditions.
        let ppid = unsafe { libc::getppid() };
        if parent.is_some_and(|p| p != ppid.to_string()) {
            std::process::exit(1);
        }
    }

    /// Binds `fwd`, connects to `back`, says hello, then echoes every message.
    fn echo<T: Ping>(fwd: &str, back: &str) {
        let rx = Receiver::<T>::bind(fwd).expect("binding the echo receiver");
        let tx = Sender::<T>::connect(back).expect("connecting the echo sender");
        tx.send(T::ping(0)).expect("hello");
        for msg in rx.iter() {
            if tx.send(msg).is_err() {
                return;
            }
        }
    }

    /// Binds `cmd`, connects to `data`, sends a hello, then streams as many messages as
    /// each command asks for.
    pub(super) fn stream<T: Message>(data: &str, cmd: &str, make: impl Fn(u64) -> T) {
        let commands = Receiver::<u64>::bind(cmd).expect("binding the command receiver");
        let tx = Sender::<T>::connect(data).expect("connecting the data sender");
        tx.send(make(0)).expect("hello");
        for n in commands.iter() {
            for i in 0..n {
                if tx.send(make(i)).is_err() {
                    return;
                }
            }
        }
    }
}
