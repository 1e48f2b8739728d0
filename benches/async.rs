//! The `tokio` feature against the blocking paths and tokio's own primitives:
//! `cargo bench --bench async --features tokio`.
//!
//! - `shm_rtt_64B`: a 64-byte round trip over two `shm` pairs, the echo peer a thread
//!   doing blocking `recv`/`send`; the caller blocking, or async on a current-thread
//!   runtime (`send_async` + `recv_async`), or a tokio `UnixStream` pair with a 4-byte
//!   length prefix (the hand-framed baseline).
//! - `thread_oneway_8B`: `u64`s from a producer task to a consumer task on a two-worker
//!   runtime, over `thread` pairs with `send_async`/`recv_async` and over
//!   `tokio::sync::mpsc` (bounded, the same capacity).

use std::time::{Duration, Instant};

use conduit::{channel, channel_with, Backend, Options};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CAPACITY: usize = 1024;

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn shm_rtt(c: &mut Criterion) {
    let mut g = c.benchmark_group("shm_rtt_64B");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_millis(500));
    let payload = vec![7u8; 64];
    let echo = || {
        let (tx1, rx1) = channel::<conduit::Bytes>(Backend::Shm).unwrap();
        let (tx2, rx2) = channel::<conduit::Bytes>(Backend::Shm).unwrap();
        std::thread::spawn(move || {
            while let Ok(m) = rx1.recv() {
                if tx2.send(m).is_err() {
                    break;
                }
            }
        });
        (tx1, rx2)
    };
    {
        let (tx, rx) = echo();
        let msg = conduit::Bytes::from(payload.clone());
        g.bench_function("blocking", |b| {
            b.iter(|| {
                tx.send(msg.clone()).unwrap();
                rx.recv().unwrap()
            })
        });
    }
    {
        let (tx, rx) = echo();
        let msg = conduit::Bytes::from(payload.clone());
        let rt = current_thread();
        g.bench_function("async_current_thread", |b| {
            b.iter_custom(|n| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..n {
                        tx.send_async(msg.clone()).await.unwrap();
                        rx.recv_async().await.unwrap();
                    }
                    start.elapsed()
                })
            })
        });
    }
    {
        let rt = current_thread();
        let (mut a, b_end) = rt.block_on(async {
            let (a, b) = tokio::net::UnixStream::pair().unwrap();
            (a, b.into_std().unwrap())
        });
        b_end.set_nonblocking(false).unwrap();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut s = b_end;
            let mut buf = vec![0u8; 4 + 64];
            while s.read_exact(&mut buf).is_ok() {
                if s.write_all(&buf).is_err() {
                    break;
                }
            }
        });
        let mut frame = (64u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&payload);
        g.bench_function("tokio_unixstream_framed", |b| {
            b.iter_custom(|n| {
                rt.block_on(async {
                    let mut buf = vec![0u8; 4 + 64];
                    let start = Instant::now();
                    for _ in 0..n {
                        a.write_all(&frame).await.unwrap();
                        a.read_exact(&mut buf).await.unwrap();
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
}

fn thread_oneway(c: &mut Criterion) {
    let mut g = c.benchmark_group("thread_oneway_8B");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_millis(500));
    g.throughput(Throughput::Elements(1));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    g.bench_function("conduit_async", |b| {
        b.iter_custom(|n| {
            rt.block_on(async {
                let opts = Options::new().capacity(CAPACITY);
                let (tx, rx) = channel_with::<u64>(Backend::Thread, &opts).unwrap();
                let start = Instant::now();
                let producer = tokio::spawn(async move {
                    for i in 0..n {
                        tx.send_async(i).await.unwrap();
                    }
                });
                let consumer = tokio::spawn(async move {
                    let mut sum = 0u64;
                    while let Ok(v) = rx.recv_async().await {
                        sum = sum.wrapping_add(v);
                    }
                    sum
                });
                producer.await.unwrap();
                std::hint::black_box(consumer.await.unwrap());
                start.elapsed()
            })
        })
    });
    g.bench_function("tokio_mpsc", |b| {
        b.iter_custom(|n| {
            rt.block_on(async {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(CAPACITY);
                let start = Instant::now();
                let producer = tokio::spawn(async move {
                    for i in 0..n {
                        tx.send(i).await.unwrap();
                    }
                });
                let consumer = tokio::spawn(async move {
                    let mut sum = 0u64;
                    while let Some(v) = rx.recv().await {
                        sum = sum.wrapping_add(v);
                    }
                    sum
                });
                producer.await.unwrap();
                std::hint::black_box(consumer.await.unwrap());
                start.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, shm_rtt, thread_oneway);
criterion_main!(benches);
