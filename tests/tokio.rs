//! The `tokio` feature on a real multi-threaded runtime: idle receivers cost no thread,
//! `tokio::select!` across three backends, and cancelled futures lose or repeat nothing.
#![cfg(feature = "tokio")]

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use conduit::{channel, channel_with, Backend, Options, Receiver, Sender};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

/// 1,000 receivers waiting in `recv_async` on one runtime add no thread (each is one
/// registration with the reactor), and each gets its message.
#[test]
fn idle_receivers_cost_no_thread() {
    const N: usize = 1_000;
    let rt = runtime(2);
    let backends = [
        Backend::Thread,
        Backend::Socket,
        Backend::Shm,
        Backend::Pipe,
    ];
    let pairs: Vec<(Sender<u64>, Receiver<u64>)> = (0..N)
        .map(|i| channel(backends[i % backends.len()]).unwrap())
        .collect();
    let (senders, receivers): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
    rt.block_on(async {
        // Let the runtime start its workers before counting.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = threads();
        let tasks: Vec<_> = receivers
            .into_iter()
            .map(|rx| tokio::spawn(async move { rx.recv_async().await.unwrap() }))
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let during = threads();
        assert!(
            during <= before + 2,
            "{N} idle receivers: {before} threads before, {during} while they wait"
        );
        for (i, tx) in senders.iter().enumerate() {
            tx.send(i as u64).unwrap();
        }
        for (i, task) in tasks.into_iter().enumerate() {
            let got = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("every receiver wakes")
                .unwrap();
            assert_eq!(got, i as u64);
        }
    });
}

#[derive(Debug, PartialEq)]
enum Event {
    Job(u64),
    Log(String),
    Tick(u32),
}

/// One `tokio::select!` over a thread, a `shm:` and a `unix:` receiver (three message
/// types) and a shutdown signal: everything arrives, then the shutdown ends the loop.
#[test]
fn select_across_three_backends() {
    const N: u64 = 2_000;
    let rt = runtime(2);
    let (ttx, trx) = channel::<u32>(Backend::Thread).unwrap();
    let shm_addr = format!("shm:{}", common::temp_dir().join("s.sock").display());
    let srx = Receiver::<u64>::bind(&shm_addr).unwrap();
    let stx = Sender::<u64>::connect(&shm_addr).unwrap();
    let unix_addr = common::unix_addr();
    let urx = Receiver::<String>::bind(&unix_addr).unwrap();
    let utx = Sender::<String>::connect(&unix_addr).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let producers = std::thread::spawn(move || {
        for i in 0..N {
            stx.send(i).unwrap();
            if i % 10 == 0 {
                utx.send(format!("log {i}")).unwrap();
                ttx.send(i as u32).unwrap();
            }
            if i % 100 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
        stop_tx.send(()).unwrap();
    });
    let events = rt.block_on(async move {
        let mut events = Vec::new();
        let mut stop_rx = stop_rx;
        loop {
            tokio::select! {
                Ok(j) = srx.recv_async() => events.push(Event::Job(j)),
                Ok(l) = urx.recv_async() => events.push(Event::Log(l)),
                Ok(t) = trx.recv_async() => events.push(Event::Tick(t)),
                _ = &mut stop_rx => break,
            }
        }
        events
    });
    producers.join().unwrap();
    let jobs: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Job(j) => Some(*j),
            _ => None,
        })
        .collect();
    assert_eq!(
        jobs,
        (0..N).collect::<Vec<_>>(),
        "every job, in order, once"
    );
    let logs = events.iter().filter(|e| matches!(e, Event::Log(_))).count();
    let ticks = events
        .iter()
        .filter(|e| matches!(e, Event::Tick(_)))
        .count();
    assert_eq!((logs, ticks), (N as usize / 10, N as usize / 10));
}

/// A small deterministic generator for the cancellation points.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// `recv_async` and `send_async` futures dropped at random points (a timeout that fires
/// while they wait) lose nothing and repeat nothing: a cancelled send did not send (it is
/// sent again), a cancelled receive took nothing. Small buffers, so sends wait for room.
fn cancellation(backend: Backend, opts: Options, n: u64) {
    let (tx, rx) = channel_with::<u64>(backend, &opts).unwrap();
    cancellation_of(tx, rx, backend_name(backend), n);
}

/// A backend's name for messages.
fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Thread => "Thread",
        Backend::Shm => "Shm",
        Backend::Socket => "Socket",
        Backend::Pipe => "Pipe",
        _ => "another backend",
    }
}

/// [`cancellation`] on a given pair; `backend` names it in messages.
fn cancellation_of(tx: Sender<u64>, rx: Receiver<u64>, backend: &'static str, n: u64) {
    let rt = runtime(2);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("{backend}: seed {seed}");
    let got = rt.block_on(async move {
        let sender = tokio::spawn(async move {
            let mut rng = Rng(seed);
            let mut cancelled = 0u64;
            for i in 0..n {
                loop {
                    let limit = Duration::from_micros(rng.below(200));
                    match tokio::time::timeout(limit, tx.send_async(i)).await {
                        Ok(sent) => {
                            sent.unwrap();
                            break;
                        }
                        Err(_) => cancelled += 1,
                    }
                }
                if rng.below(128) == 0 {
                    // Now and then the sender is slow: the receiver waits.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            cancelled
        });
        let mut rng = Rng(seed.rotate_left(17));
        let (mut got, mut cancelled) = (Vec::new(), 0u64);
        loop {
            let limit = Duration::from_micros(rng.below(300));
            match tokio::time::timeout(limit, rx.recv_async()).await {
                Ok(Ok(v)) => got.push(v),
                Ok(Err(_)) => break,
                Err(_) => cancelled += 1,
            }
            if rng.below(256) == 0 {
                // Now and then the receiver is slow: the sender's buffer fills.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let sends_cancelled = sender.await.unwrap();
        eprintln!("{backend}: {cancelled} receives and {sends_cancelled} sends cancelled");
        assert!(
            cancelled > 0 && sends_cancelled > 0,
            "{backend}: {cancelled} receives and {sends_cancelled} sends cancelled"
        );
        got
    });
    assert_eq!(
        got,
        (0..n).collect::<Vec<_>>(),
        "{backend}: each message once, in order"
    );
}

#[test]
fn cancellation_thread() {
    cancellation(Backend::Thread, Options::new().capacity(4), 20_000);
}

#[test]
fn cancellation_shm() {
    cancellation(Backend::Shm, Options::new().capacity(4096), 20_000);
}

#[test]
fn cancellation_socket() {
    cancellation(Backend::Socket, Options::new().capacity(4096), 20_000);
}

#[test]
fn cancellation_pipe() {
    cancellation(Backend::Pipe, Options::new().capacity(4096), 20_000);
}

/// The `Stream` impl: ends when the senders are gone.
#[test]
fn stream_ends_at_disconnect() {
    use std::future::poll_fn;
    use std::pin::Pin;
    let rt = runtime(1);
    let (tx, mut rx) = channel::<u32>(Backend::Socket).unwrap();
    std::thread::spawn(move || (0..100).for_each(|i| tx.send(i).unwrap()));
    let got = rt.block_on(async move {
        let mut got = Vec::new();
        while let Some(v) =
            poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut rx), cx)).await
        {
            got.push(v);
        }
        got
    });
    assert_eq!(got, (0..100).collect::<Vec<_>>());
}

/// `send_async` on a small buffer with a receiver on a thread that keeps pausing: every
/// wait for room ends (a lost wake-up would stall until the test's deadline).
fn send_async_waits_for_room(backend: Backend, opts: Options) {
    let (tx, rx) = channel_with::<u64>(backend, &opts).unwrap();
    send_async_waits_for_room_of(tx, rx, backend_name(backend), 50_000);
}

/// [`send_async_waits_for_room`] on a given pair; `backend` names it in messages.
fn send_async_waits_for_room_of(tx: Sender<u64>, rx: Receiver<u64>, backend: &'static str, n: u64) {
    let rt = runtime(2);
    let receiver = std::thread::spawn(move || {
        for i in 0..n {
            assert_eq!(rx.recv().unwrap(), i, "{backend}");
            if i % 1000 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    rt.block_on(async move {
        let all = async {
            for i in 0..n {
                tx.send_async(i).await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(30), all)
            .await
            .unwrap_or_else(|_| panic!("{backend}: send_async stalled (a lost wake-up)"));
    });
    receiver.join().unwrap();
}

#[test]
fn send_async_waits_for_room_thread() {
    send_async_waits_for_room(Backend::Thread, Options::new().capacity(1));
}

#[test]
fn send_async_waits_for_room_shm() {
    send_async_waits_for_room(Backend::Shm, Options::new().capacity(4096));
}

#[test]
fn send_async_waits_for_room_socket() {
    send_async_waits_for_room(Backend::Socket, Options::new().capacity(4096));
}

#[test]
fn send_async_waits_for_room_pipe() {
    send_async_waits_for_room(Backend::Pipe, Options::new().capacity(4096));
}

/// `recv_async` when every message is the last of its burst: the sender sends one and
/// waits until the task has it, so each send races the task's arming.
fn recv_async_in_lockstep(backend: Backend, n: u64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let rt = runtime(2);
    let (tx, rx) = channel::<u64>(backend).unwrap();
    let taken = Arc::new(AtomicU64::new(0));
    let seen = taken.clone();
    let sender = std::thread::spawn(move || {
        for i in 0..n {
            tx.send(i).unwrap();
            // Relaxed: a progress counter; the channel carries the data.
            while seen.load(Ordering::Relaxed) <= i {
                std::hint::spin_loop();
            }
        }
    });
    rt.block_on(async move {
        let all = async {
            for i in 0..n {
                assert_eq!(rx.recv_async().await.unwrap(), i);
                taken.store(i + 1, Ordering::Relaxed);
            }
        };
        tokio::time::timeout(Duration::from_secs(30), all)
            .await
            .unwrap_or_else(|_| panic!("{backend:?}: recv_async stalled (a lost wake-up)"));
    });
    sender.join().unwrap();
}

#[test]
fn recv_async_in_lockstep_thread() {
    recv_async_in_lockstep(Backend::Thread, 100_000);
}

#[test]
fn recv_async_in_lockstep_shm() {
    recv_async_in_lockstep(Backend::Shm, 20_000);
}

#[test]
fn recv_async_in_lockstep_socket() {
    recv_async_in_lockstep(Backend::Socket, 20_000);
}

const ASYNC_SENDER: &str = "async-sender";
const ACROSS: u64 = 20_000;

/// Cancellation across processes: a child process sends with `send_async` cancelled at
/// random points (a cancelled send is sent again) while this process receives with
/// `recv_async` cancelled at random points; every message arrives once, in order.
fn cancellation_across_processes(target: common::Target, test: &str) {
    let opts = Options::new().capacity(4096);
    if common::role().as_deref() == Some(ASYNC_SENDER) {
        common::child_watchdog(Duration::from_secs(60));
        let tx = common::sender_from_parent::<u64>(&opts).expect("the sender");
        let rt = runtime(1);
        let cancelled = rt.block_on(async move {
            let mut rng = Rng(std::process::id() as u64 | 1);
            let mut cancelled = 0u64;
            for i in 0..ACROSS {
                loop {
                    let limit = Duration::from_micros(rng.below(200));
                    match tokio::time::timeout(limit, tx.send_async(i)).await {
                        Ok(sent) => break sent.expect("send_async"),
                        Err(_) => cancelled += 1,
                    }
                }
                if rng.below(256) == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            cancelled
        });
        eprintln!("{target:?} child: {cancelled} sends cancelled");
        assert!(cancelled > 0, "{target:?}: no send was cancelled");
        return;
    }
    let mut cmd = common::child_command(test, ASYNC_SENDER);
    common::die_with_parent(&mut cmd);
    let rx = target.receiver_for_child::<u64>(&opts, &mut cmd);
    let child = common::Reaped::new(cmd.spawn().expect("spawn the sender"));
    drop(cmd);
    let rt = runtime(2);
    let (got, cancelled) = rt.block_on(async {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut got, mut cancelled) = (Vec::new(), 0u64);
        loop {
            let limit = Duration::from_micros(rng.below(300));
            match tokio::time::timeout(limit, rx.recv_async()).await {
                Ok(Ok(v)) => got.push(v),
                Ok(Err(_)) => break,
                Err(_) => cancelled += 1,
            }
            if rng.below(256) == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        (got, cancelled)
    });
    child.expect_success(Duration::from_secs(30), &format!("{target:?}: the sender"));
    assert!(cancelled > 0, "{target:?}: no receive was cancelled");
    assert_eq!(
        got,
        (0..ACROSS).collect::<Vec<_>>(),
        "{target:?}: each message once, in order"
    );
}

#[test]
fn cancellation_across_processes_shm() {
    cancellation_across_processes(common::Target::Shm, "cancellation_across_processes_shm");
}

#[test]
fn cancellation_across_processes_unix() {
    cancellation_across_processes(common::Target::Unix, "cancellation_across_processes_unix");
}

/// The same between two processes over zenoh (the child joins this process's zenoh
/// network over 127.0.0.1).
#[cfg(feature = "zenoh")]
#[test]
fn cancellation_across_processes_zenoh() {
    cancellation_across_processes(common::Target::Zenoh, "cancellation_across_processes_zenoh");
}

/// A `zenoh:` channel in this process (its session's local delivery), with a credit window
/// of 4 KiB, so sends wait for credit.
#[cfg(feature = "zenoh")]
fn zenoh_pair(what: &str) -> (Sender<u64>, Receiver<u64>) {
    let addr = common::zenoh::key(what);
    let opts = common::zenoh::opts().capacity(4096);
    let rx = Receiver::<u64>::bind_with(&addr, &opts).unwrap();
    let tx = Sender::<u64>::connect_with(&addr, &opts).unwrap();
    (tx, rx)
}

#[cfg(feature = "zenoh")]
#[test]
fn cancellation_zenoh() {
    let (tx, rx) = zenoh_pair("tokio-cancel");
    cancellation_of(tx, rx, "Zenoh", 5_000);
}

#[cfg(feature = "zenoh")]
#[test]
fn send_async_waits_for_room_zenoh() {
    let (tx, rx) = zenoh_pair("tokio-room");
    send_async_waits_for_room_of(tx, rx, "Zenoh", 20_000);
}
