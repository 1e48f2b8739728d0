//! A derived struct carrying a 64 KiB byte field, one way over `shm:`: what a user sending
//! records with a payload (a frame, a tensor, a batch) gets from each choice of field type.
//!
//! - `record_64KiB/{bytes,byte_buf,vec}`: [`Record`] with its payload as a
//!   [`conduit::Bytes`], a `serde_bytes::ByteBuf`, or a plain `Vec<u8>`, streamed from a
//!   child as `oneway_*` in `shm.rs`. The child sends one prototype, its `seq` changed,
//!   cloning it for every message as a producer building a fresh record would (a `Bytes`
//!   clone shares its buffer; the other two copy 64 KiB, as the producer filling them
//!   would). The receiver checks `seq` and reads every 4 KiB page's first byte.
//!
//! `bytes` and `byte_buf` are the same bytes on the wire (a length, then one run); `vec` is
//! too, but serde walks it element by element on both sides.
//!
//! - `record_64KiB/floor`: the payload alone through bare shared memory, copied in by the
//!   child and out into a fresh buffer by this process (`floors/copies.rs`): the two copies
//!   the shm backend makes for `bytes`, and nothing else.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{child, floors, Plan, Stream};

const PAYLOAD: usize = 64 << 10;

/// The record: a sequence number, a short name, and the payload.
#[derive(Serialize, Deserialize, Clone)]
pub(super) struct Record<P> {
    seq: u64,
    name: String,
    payload: P,
}

/// The byte-field types compared, as the child makes them and the receiver reads them.
trait Payload: Serialize + DeserializeOwned + Clone + Send + 'static {
    fn filled(len: usize) -> Self;
    fn bytes(&self) -> &[u8];
}

impl Payload for conduit::Bytes {
    fn filled(len: usize) -> Self {
        conduit::Bytes::from(vec![0xC3; len])
    }
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl Payload for serde_bytes::ByteBuf {
    fn filled(len: usize) -> Self {
        serde_bytes::ByteBuf::from(vec![0xC3; len])
    }
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl Payload for Vec<u8> {
    fn filled(len: usize) -> Self {
        vec![0xC3; len]
    }
    fn bytes(&self) -> &[u8] {
        self
    }
}

pub(super) fn records(c: &mut Criterion, plan: &Plan, dir: &Path) {
    let mut g = c.benchmark_group("record_64KiB");
    plan.apply(&mut g, plan.oneway_time, plan.oneway_samples);
    g.throughput(Throughput::Bytes(PAYLOAD as u64));
    let mut floor: Option<floors::Copies> = None;
    g.bench_function("floor", |b| {
        let floor = floor.get_or_insert_with(|| floors::Copies::start(PAYLOAD));
        b.iter_custom(|iters| floor.receive(iters, true));
    });
    // Stopped before the next benchmark, so its spinning child disturbs none.
    drop(floor);
    bench::<conduit::Bytes>(&mut g, "bytes", dir);
    bench::<serde_bytes::ByteBuf>(&mut g, "byte_buf", dir);
    bench::<Vec<u8>>(&mut g, "vec", dir);
    g.finish();
}

fn bench<P: Payload>(g: &mut BenchmarkGroup<'_, WallTime>, kind: &str, dir: &Path) {
    let mut peer: Option<Stream<Record<P>>> = None;
    g.bench_function(kind, |b| {
        let peer = peer.get_or_insert_with(|| {
            Stream::start_kind("shm", PAYLOAD, &format!("record-{kind}"), dir)
        });
        b.iter_custom(|iters| receive(peer, iters));
    });
}

/// Has the child send `iters + 1` records and times the last `iters`.
fn receive<P: Payload>(peer: &Stream<Record<P>>, iters: u64) -> Duration {
    peer.cmd.send(iters + 1).expect("command");
    let first = peer.data.recv().expect("first record");
    let start = Instant::now();
    for i in 1..=iters {
        let record = peer.data.recv().expect("record");
        assert_eq!(record.seq, first.seq + i, "records arrive in order");
        for page in record.payload.bytes().chunks(4096) {
            black_box(page[0]);
        }
    }
    start.elapsed()
}

/// The stream child for the `record-*` kinds.
pub(super) fn stream_child(data: &str, cmd: &str, size: usize, kind: &str) {
    match kind {
        "record-bytes" => send::<conduit::Bytes>(data, cmd, size),
        "record-byte_buf" => send::<serde_bytes::ByteBuf>(data, cmd, size),
        "record-vec" => send::<Vec<u8>>(data, cmd, size),
        other => panic!("unknown stream kind {other:?}"),
    }
}

fn send<P: Payload>(data: &str, cmd: &str, size: usize) {
    let proto = Record {
        seq: 0,
        name: "camera-0".to_string(),
        payload: P::filled(size),
    };
    // `i` counts from 0 again for every command: the receiver checks against the first.
    child::stream(data, cmd, move |i| {
        let mut record = proto.clone();
        record.seq = i;
        record
    });
}
