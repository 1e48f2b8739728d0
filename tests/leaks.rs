//! Many connect/send/drop cycles per backend leave the
//! number of open file descriptors (`/proc/self/fd`) and of mappings (`/proc/self/maps`
//! lines) where they were, and no memfd outlives its channel (no `memfd:` among the
//! descriptors' targets or in the maps once every channel is gone).
//!
//! Each backend runs in a child process of its own (this binary re-run as `leak_child`), so
//! tests running in parallel cannot disturb the counts, with one malloc arena
//! (`MALLOC_ARENA_MAX=1`: glibc maps a new arena whenever two threads happen to contend,
//! which is the allocator's business, not a leak).
//!
//! Under a sanitizer (`CONDUIT_SANITIZER`, set by `.ci/sanitizers`) the mappings are not
//! counted: its allocator maps regions of its own as it goes.
//!
//! 10,000 cycles per backend: measured at 0.3–2 s per backend in a debug
//! build on two cores (about 3 s for the whole file, backends in parallel). The count used and
//! the time taken are printed for every backend; `CONDUIT_LEAK_CYCLES=N` changes it.

mod common;

use std::time::{Duration, Instant};

use conduit::{channel_with, Backend, Options, Receiver, RecvTimeoutError, Sender, TryRecvError};

const ENTRY: &str = "leak_child";
/// The environment variable that sets the number of cycles per backend.
const CYCLES_ENV: &str = "CONDUIT_LEAK_CYCLES";
/// Cycles per backend unless [`CYCLES_ENV`] says otherwise.
const CYCLES: usize = 10_000;
/// The longest a child may run before it counts as hung.
const CHILD_LIMIT: Duration = Duration::from_secs(60);
/// How long counts may take to return (connections closed by the acceptor or the receiver).
const SETTLE: Duration = Duration::from_secs(3);

/// What the leak checks count.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Counts {
    fds: usize,
    maps: usize,
    /// Descriptors whose target is a memfd.
    memfd_fds: usize,
    /// Mappings of a memfd.
    memfd_maps: usize,
}

fn counts() -> Counts {
    let mut fds = 0;
    let mut memfd_fds = 0;
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let Ok(entry) = entry else { continue };
        fds += 1;
        // The directory's own descriptor is gone by the time we read its link: skip errors.
        if let Ok(target) = std::fs::read_link(entry.path()) {
            if target.to_string_lossy().contains("memfd:") {
                memfd_fds += 1;
            }
        }
    }
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    Counts {
        // read_dir holds one descriptor of its own while counting.
        fds: fds - 1,
        // A sanitizer's allocator maps regions as it pleases: not counted there.
        maps: if common::sanitizer().is_some() {
            0
        } else {
            maps.lines().count()
        },
        memfd_fds,
        memfd_maps: maps.lines().filter(|l| l.contains("memfd:")).count(),
    }
}

/// Polls (driving `rx`, if any) until the counts are `want`, for at most [`SETTLE`]; then
/// asserts they are.
fn settle<T: conduit::Message>(rx: Option<&Receiver<T>>, want: &Counts, what: &str) {
    let start = Instant::now();
    loop {
        if let Some(rx) = rx {
            let _ = rx.try_recv();
        }
        let now = counts();
        if now == *want {
            return;
        }
        if start.elapsed() > SETTLE {
            panic!("{what}: counts {now:?}, expected {want:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The counts once they hold still: equal over five samples 5 ms apart. (Right after a
/// `connect` returns, the acceptor thread may still hold its copies of the connection's
/// descriptors for a moment; counts in such a moment are only ever higher.)
fn steady() -> Counts {
    let start = Instant::now();
    let mut last = counts();
    let mut same = 0;
    while same < 5 && start.elapsed() < SETTLE {
        std::thread::sleep(Duration::from_millis(5));
        let now = counts();
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

fn no_memfd(c: &Counts, what: &str) {
    assert_eq!(
        (c.memfd_fds, c.memfd_maps),
        (0, 0),
        "{what}: memfd descriptors and mappings left: {c:?}"
    );
}

/// Cycles for a backend: [`CYCLES_ENV`] if set, else `default`.
fn cycles(default: usize) -> usize {
    match std::env::var(CYCLES_ENV) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{CYCLES_ENV}={v:?} is not a number")),
        Err(_) => default,
    }
}

type Msg = (u64, Vec<u8>);

fn msg(i: u64) -> Msg {
    (i, common::payload(i, 16 + (i % 64) as usize))
}

/// Receives message `i`, tolerating the `Disconnected` a bound receiver reports between
/// senders.
fn recv_expect(rx: &Receiver<Msg>, i: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(m) => {
                assert!(m == msg(i), "{what}: cycle {i}: got message {}", m.0);
                return;
            }
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_micros(50)),
            Err(e) => assert!(Instant::now() < deadline, "{what}: cycle {i}: {e}"),
        }
    }
}

/// `n` cycles against a bound receiver at a fresh address of `target`: connect, send,
/// receive, drop; every tenth sender connects and drops without sending, and every
/// hundredth is dropped before its message is received.
fn bound_cycles(target: common::Target, opts: &Options, n: usize) {
    let what = format!("{target:?}");
    let bind = || {
        let addr = target.fresh_addr().expect("a bound target");
        let rx = Receiver::<Msg>::bind_with(&addr, opts).expect("bind");
        let addr = rx.local_addr().expect("address");
        (rx, addr)
    };
    // Warm-up: the acceptor thread's stack and malloc arena, cached by glibc after a join.
    {
        let (rx, addr) = bind();
        for i in 0..20 {
            let tx = Sender::<Msg>::connect_with(&addr, opts).expect("connect");
            tx.send(msg(i)).unwrap();
            recv_expect(&rx, i, &what);
        }
    }
    let base = steady();
    no_memfd(&base, &format!("{what}: before binding"));
    let (rx, addr) = bind();
    // One sender first: the acceptor thread has then run its start-up (Rust maps a signal
    // stack for each thread it starts), so the counts below include it.
    let tx = Sender::<Msg>::connect_with(&addr, opts).expect("connect");
    tx.send(msg(0)).unwrap();
    recv_expect(&rx, 0, &what);
    drop(tx);
    match rx.recv_timeout(Duration::from_secs(5)) {
        Err(RecvTimeoutError::Disconnected) => {}
        other => panic!("{what}: after the first sender: {other:?}"),
    }
    let bound = steady();
    no_memfd(&bound, &format!("{what}: bound, no sender"));
    for i in 0..n as u64 {
        let tx = Sender::<Msg>::connect_with(&addr, opts).expect("connect");
        if i % 10 == 9 {
            drop(tx);
            continue;
        }
        tx.send(msg(i)).unwrap();
        if i == 0 && target == common::Target::Shm {
            let c = counts();
            assert!(
                c.memfd_fds >= 1 && c.memfd_maps >= 2,
                "{what}: the counts see a connected ring: {c:?}"
            );
        }
        if i % 100 == 42 {
            drop(tx);
            recv_expect(&rx, i, &what);
        } else {
            recv_expect(&rx, i, &what);
            drop(tx);
        }
    }
    settle(
        Some(&rx),
        &bound,
        &format!("{what}: {n} senders gone, receiver bound"),
    );
    no_memfd(&counts(), &format!("{what}: receiver bound, no sender"));
    match rx.recv_timeout(Duration::from_secs(5)) {
        Err(RecvTimeoutError::Disconnected) => {}
        other => panic!("{what}: after the last sender: {other:?}"),
    }
    drop(rx);
    settle::<Msg>(None, &base, &format!("{what}: receiver dropped"));
    // One sender left connected when its receiver goes.
    let (rx, addr) = bind();
    let tx = Sender::<Msg>::connect_with(&addr, opts).expect("connect");
    tx.send(msg(0)).unwrap();
    recv_expect(&rx, 0, &what);
    drop(rx);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tx.send(msg(1)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "{what}: sends go on to no receiver"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(tx);
    settle::<Msg>(
        None,
        &base,
        &format!("{what}: receiver dropped before its sender"),
    );
    no_memfd(&counts(), &format!("{what}: all gone"));
}

/// `n` anonymous pairs of `backend`: make, send, receive, drop; every other one the receiver
/// goes first and a send must fail.
fn anonymous_cycles(backend: Backend, opts: &Options, n: usize) {
    let what = format!("{backend:?} pairs");
    for i in 0..10 {
        let (tx, rx) = channel_with::<Msg>(backend, opts).expect("channel");
        tx.send(msg(i)).unwrap();
        assert!(rx.recv().unwrap() == msg(i));
    }
    let base = counts();
    no_memfd(&base, &what);
    for i in 0..n as u64 {
        let (tx, rx) = channel_with::<Msg>(backend, opts).expect("channel");
        tx.send(msg(i)).unwrap();
        if i == 0 && backend == Backend::Shm {
            let c = counts();
            assert!(
                c.memfd_fds >= 1 && c.memfd_maps >= 1,
                "{what}: the counts see a ring: {c:?}"
            );
        }
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(m) => assert!(m == msg(i), "{what}: cycle {i}: got message {}", m.0),
            Err(e) => panic!("{what}: cycle {i}: {e}"),
        }
        if i % 2 == 1 {
            drop(rx);
            assert!(
                tx.send(msg(i)).unwrap_err().is_disconnected(),
                "{what}: cycle {i}: a send to a dropped receiver"
            );
        } else {
            drop(tx);
            assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));
        }
    }
    settle::<Msg>(None, &base, &format!("{what}: {n} pairs made and dropped"));
    no_memfd(&counts(), &what);
}

/// `thread:NAME`: `n` connect/send/drop generations, then `n` anonymous pairs.
fn thread_cycles(n: usize) {
    let name = format!("thread:leaks-{}", std::process::id());
    let base = counts();
    let rx = Receiver::<Msg>::bind(&name).unwrap();
    for i in 0..n as u64 {
        let tx = Sender::<Msg>::connect(&name).unwrap();
        tx.send(msg(i)).unwrap();
        drop(tx);
        recv_expect(&rx, i, "thread:");
    }
    drop(rx);
    anonymous_cycles(Backend::Thread, &Options::new(), n);
    settle::<Msg>(None, &base, "thread");
}

#[test]
fn leak_child() {
    let Some(role) = common::role() else { return };
    common::child_watchdog(CHILD_LIMIT);
    let started = Instant::now();
    // Small rings and buffers: the resources are what is counted, not their size.
    let shm_opts = Options::new().capacity(4096);
    let n = match role.as_str() {
        "thread" => {
            let n = cycles(CYCLES);
            thread_cycles(n);
            n
        }
        "socket" | "pipe" | "shm_anon" => {
            let (backend, opts) = match role.as_str() {
                "socket" => (Backend::Socket, Options::new()),
                "pipe" => (Backend::Pipe, Options::new()),
                _ => (Backend::Shm, shm_opts),
            };
            let n = cycles(CYCLES);
            anonymous_cycles(backend, &opts, n);
            n
        }
        "unix" | "tcp" | "shm" => {
            let (target, opts) = match role.as_str() {
                "unix" => (common::Target::Unix, Options::new()),
                "tcp" => (common::Target::Tcp, Options::new()),
                _ => (common::Target::Shm, shm_opts),
            };
            let n = cycles(CYCLES);
            bound_cycles(target, &opts, n);
            n
        }
        other => panic!("unknown role {other}"),
    };
    let checked = match common::sanitizer() {
        Some(s) => format!("fds and memfds unchanged; maps not counted under {s} sanitizer"),
        None => "fds, maps and memfds unchanged".to_string(),
    };
    eprintln!(
        "leaks: {role}: {n} cycles in {:?} ({checked})",
        started.elapsed()
    );
}

fn run(role: &str) {
    let mut cmd = common::child_command(ENTRY, role);
    // One malloc arena: glibc otherwise maps a new arena (two lines of maps) whenever two
    // threads (the test's and the acceptor's) happen to contend for one, which is the
    // allocator's business, not a leak.
    cmd.env("MALLOC_ARENA_MAX", "1");
    common::die_with_parent(&mut cmd);
    let child = common::Reaped::new(cmd.spawn().expect("spawn the leak child"));
    child.expect_success(CHILD_LIMIT + Duration::from_secs(10), role);
}

/// `thread:NAME` connect/send/drop generations, then anonymous `Backend::Thread` pairs:
/// 10,000 each (no descriptor or mapping is involved; nothing may appear).
#[test]
fn no_leaks_thread() {
    run("thread");
}

/// 10,000 anonymous socketpairs; every other one loses its receiver first.
#[test]
fn no_leaks_socket_pairs() {
    run("socket");
}

/// 10,000 anonymous pipes; every other one loses its receiver first.
#[test]
fn no_leaks_pipes() {
    run("pipe");
}

/// 10,000 anonymous shared-memory pairs: no memfd or mapping outlives its pair.
#[test]
fn no_leaks_shm_pairs() {
    run("shm_anon");
}

/// 10,000 `unix:` connect/send/drop cycles against one bound receiver, then the receiver's
/// own drop, and a receiver dropped before its sender.
#[test]
fn no_leaks_unix() {
    run("unix");
}

/// 10,000 `tcp:` connect/send/drop cycles, as for `unix:`.
#[test]
fn no_leaks_tcp() {
    run("tcp");
}

/// 10,000 `shm:` connect/send/drop cycles: every sender's ring (a memfd, mapped on both
/// sides) is gone once the sender is.
#[test]
fn no_leaks_shm() {
    run("shm");
}
