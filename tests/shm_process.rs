//! The shared-memory backend between real processes over `shm:` addresses: many messages of
//! every size (most larger than a small ring), three producers, 32 MiB, a type mismatch,
//! and SIGKILL of either side.
//!
//! The child is this test binary re-run as one role (`shm_child`).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use conduit::{Error, Options, Receiver, RecvError, RecvTimeoutError, Sender};

/// The test function a child process runs.
const ENTRY: &str = "shm_child";
/// A small ring (bytes): its pieces carry at most 32,760 bytes, so big messages take many.
const SMALL_RING: usize = 64 << 10;
/// Longest wait for anything that should take milliseconds.
const LONG: Duration = Duration::from_secs(30);
/// How long a send may stay blocked after its receiver was killed.
const SEND_FAILS: Duration = Duration::from_secs(10);
/// The multi-piece message of the crash tests, and the one of the huge-message test.
const BIG: usize = 4 << 20;
const HUGE: usize = 32 << 20;

/// Bytes serialized as one byte string by `serde_bytes` (one length and a copy), not a
/// sequence of `u8`s.
#[derive(PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
struct Blob(#[serde(with = "serde_bytes")] Vec<u8>);

/// (producer id, sequence number, payload).
type Msg = (u32, u64, Blob);

/// Which message (if any) is `len` bytes instead of its usual size.
type Big = Option<(u64, usize)>;

/// 0 B to 300 KiB: mostly small, some around one piece of the small ring, some many pieces.
fn size_for(seq: u64, big: Big) -> usize {
    let s = seq as usize;
    match seq % 50 {
        _ if big.is_some_and(|(at, _)| at == seq) => big.map_or(0, |(_, len)| len),
        0 => 0,
        7 => 65_537 + (s * 7_919) % (300 * 1024 - 65_537),
        13 => 32_740 + (s / 50) % 40,
        n if n % 10 == 5 => 1_000 + (s * 131) % 20_000,
        _ => (s * 31) % 300,
    }
}

fn key(id: u32, seq: u64) -> u64 {
    (u64::from(id) << 32) | seq
}

/// `common::payload`, except that messages over 1 MiB repeat a block of it (cheap to make).
fn content(k: u64, len: usize) -> Vec<u8> {
    if len <= 1 << 20 {
        return common::payload(k, len);
    }
    let block = common::payload(k, 4093);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        out.extend_from_slice(&block[..(len - out.len()).min(block.len())]);
    }
    out
}

fn message(id: u32, seq: u64, big: Big) -> Msg {
    (id, seq, Blob(content(key(id, seq), size_for(seq, big))))
}

fn check(got: &Msg, id: u32, seq: u64, big: Big) -> Result<(), String> {
    if (got.0, got.1) != (id, seq) {
        return Err(format!(
            "expected message {seq} of producer {id}, got {} of {}",
            got.1, got.0
        ));
    }
    let len = size_for(seq, big);
    if got.2 .0.len() != len || got.2 .0 != content(key(id, seq), len) {
        return Err(format!(
            "message {seq} of producer {id} is torn or damaged: {} bytes, expected {len}",
            got.2 .0.len()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Child side.

fn child_fail(code: i32, what: impl std::fmt::Display) -> ! {
    eprintln!("shm child: {what}");
    std::process::exit(code)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Roles: `send` (CDT_COUNT messages as producer CDT_ID), `huge` (small, 32 MiB, small),
/// `stream` (until killed), `mismatch` (connects as `Sender<String>`), `sink` (binds, takes
/// one message, stops reading). Exit codes: 2 setup; 3 send failed; 4 bad message; 6 a
/// mismatch accepted; 7 a mismatch gave another error; 9 never killed.
#[test]
fn shm_child() {
    let Some(role) = common::role() else { return };
    let env = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| child_fail(2, format!("{name} is not set")))
    };
    let addr = env("CDT_ADDR");
    let connect =
        || Sender::<Msg>::connect(&addr).unwrap_or_else(|e| child_fail(2, format!("{addr}: {e}")));
    let send = |tx: &Sender<Msg>, m: Msg| {
        let seq = m.1;
        if let Err(e) = tx.send(m) {
            child_fail(3, format!("send {seq}: {e}"));
        }
    };
    let give_up = Instant::now() + Duration::from_secs(60);
    match role.as_str() {
        "send" => {
            let tx = connect();
            let id = env_u64("CDT_ID").unwrap_or(0) as u32;
            for seq in 0..env_u64("CDT_COUNT").unwrap_or(0) {
                send(&tx, message(id, seq, None));
            }
            std::process::exit(0);
        }
        "huge" => {
            let tx = connect();
            for seq in 0..3 {
                send(&tx, message(0, seq, Some((1, HUGE))));
            }
            std::process::exit(0);
        }
        "stream" => {
            let tx = connect();
            let big = env_u64("CDT_BIG_AT").map(|at| (at, BIG));
            for seq in 0.. {
                send(&tx, message(0, seq, big));
                if Instant::now() > give_up {
                    break;
                }
            }
        }
        "mismatch" => match Sender::<String>::connect(&addr) {
            Err(Error::TypeMismatch { .. }) => std::process::exit(0),
            Ok(tx) => {
                let _ = tx.send("not a Msg".to_string());
                child_fail(6, "a String sender was accepted by a Msg receiver")
            }
            Err(e) => child_fail(7, format!("expected TypeMismatch, got {e}")),
        },
        "sink" => {
            let opts = Options::new().capacity(SMALL_RING);
            let rx = Receiver::<Msg>::bind_with(&addr, &opts)
                .unwrap_or_else(|e| child_fail(2, format!("bind {addr}: {e}")));
            let ready = env("CDT_READY");
            std::fs::write(format!("{ready}.tmp"), "bound")
                .and_then(|()| std::fs::rename(format!("{ready}.tmp"), &ready))
                .unwrap_or_else(|e| child_fail(2, format!("writing {ready}: {e}")));
            match rx.recv_timeout(LONG) {
                Ok(m) => check(&m, 0, 0, None).unwrap_or_else(|e| child_fail(4, e)),
                Err(e) => child_fail(4, format!("first recv: {e}")),
            }
            // Stop reading: the parent's sends fill the ring and block.
            while Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        other => child_fail(2, format!("unknown role {other}")),
    }
    child_fail(9, "never killed")
}

// ---------------------------------------------------------------------------------------
// Parent side.

/// Binds a receiver of `T` at a fresh `shm:` address with a ring of `ring` bytes.
fn bind<T: conduit::Message>(ring: usize) -> (Receiver<T>, String) {
    let addr = format!("shm:{}", common::temp_dir().join("r.sock").display());
    let rx = Receiver::bind_with(&addr, &Options::new().capacity(ring)).expect("bind shm");
    (rx, addr)
}

fn spawn(role: &str, envs: &[(&str, &str)]) -> Child {
    common::spawn_child(ENTRY, role, envs)
}

/// Waits for `child` at most `LONG` (killing it then) and asserts it exited with 0.
fn expect_success(mut child: Child, what: &str) {
    let deadline = Instant::now() + LONG;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: the child still ran after {LONG:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(status.success(), "{what}: the child exited with {status}");
    common::assert_played(child.id(), what);
}

fn assert_disconnected<T: conduit::Message>(rx: &Receiver<T>, what: &str) {
    match rx.recv_timeout(LONG) {
        Err(RecvTimeoutError::Disconnected) => {}
        Ok(_) => panic!("{what}: a message arrived after the last one"),
        Err(e) => panic!("{what}: expected Disconnected, got {e}"),
    }
}

#[test]
fn one_child_many_messages_through_a_small_ring() {
    const MANY: u64 = 5_000;
    let started = Instant::now();
    let (rx, addr) = bind::<Msg>(SMALL_RING);
    let count = MANY.to_string();
    let child = spawn(
        "send",
        &[("CDT_ADDR", &addr), ("CDT_ID", "1"), ("CDT_COUNT", &count)],
    );
    for seq in 0..MANY {
        match rx.recv_timeout(LONG) {
            Ok(m) => check(&m, 1, seq, None).unwrap_or_else(|e| panic!("{e}")),
            Err(e) => panic!("message {seq}: {e}"),
        }
    }
    expect_success(child, "sender");
    assert_disconnected(&rx, "after the only child");
    eprintln!(
        "shm: {MANY} messages (0 B to 300 KiB, ring {SMALL_RING} B) in {:?}",
        started.elapsed()
    );
}

#[test]
fn three_children_one_bound_receiver() {
    const EACH: u64 = 1_500;
    let (rx, addr) = bind::<Msg>(SMALL_RING);
    let count = EACH.to_string();
    let children: Vec<Child> = (1..=3u32)
        .map(|id| {
            let id = id.to_string();
            spawn(
                "send",
                &[("CDT_ADDR", &addr), ("CDT_ID", &id), ("CDT_COUNT", &count)],
            )
        })
        .collect();
    let mut next = [0u64; 3];
    let deadline = Instant::now() + LONG;
    while next.iter().sum::<u64>() < 3 * EACH {
        assert!(Instant::now() < deadline, "stuck after {next:?}");
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(m) => {
                let id = m.0;
                assert!((1..=3).contains(&id), "unknown producer {id}");
                let seq = &mut next[id as usize - 1];
                assert!(*seq < EACH, "producer {id}: more than {EACH} messages");
                check(&m, id, *seq, None).unwrap_or_else(|e| panic!("{e}"));
                *seq += 1;
            }
            Err(RecvTimeoutError::Timeout) => {}
            // Every connected child may be done before the next connects: a bound receiver
            // says so, and serves later senders on the next call.
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => panic!("recv failed: {e}"),
        }
    }
    for child in children {
        expect_success(child, "one of three senders");
    }
    assert_disconnected(&rx, "after all three children");
}

#[test]
fn huge_message_across_processes() {
    let started = Instant::now();
    let (rx, addr) = bind::<Msg>(1 << 20);
    let child = spawn("huge", &[("CDT_ADDR", &addr)]);
    for seq in 0..3 {
        match rx.recv_timeout(LONG) {
            Ok(m) => check(&m, 0, seq, Some((1, HUGE))).unwrap_or_else(|e| panic!("{e}")),
            Err(e) => panic!("message {seq}: {e}"),
        }
    }
    expect_success(child, "huge sender");
    assert_disconnected(&rx, "after the huge sender");
    eprintln!(
        "shm: {HUGE} B (ring 1 MiB) across processes in {:?}",
        started.elapsed()
    );
}

#[test]
fn type_mismatch_across_processes() {
    let (rx, addr) = bind::<Msg>(SMALL_RING);
    expect_success(
        spawn("mismatch", &[("CDT_ADDR", &addr)]),
        "String sender to a Msg receiver (6: accepted, 7: another error)",
    );
    // Nothing from the refused child ever reaches the receiver; it never counted as a sender.
    match rx.recv_timeout(Duration::from_millis(300)) {
        Err(RecvTimeoutError::Timeout) => {}
        Ok(m) => panic!("got message {} from a mismatched sender", m.1),
        Err(e) => panic!("expected Timeout, got {e}"),
    }
    let tx = Sender::<Msg>::connect(&addr).expect("connect with the right type");
    tx.send(message(5, 0, None)).expect("send");
    let m = rx.recv_timeout(LONG).expect("recv");
    check(&m, 5, 0, None).unwrap_or_else(|e| panic!("{e}"));
}

/// One kill: once `after` messages arrived, wait `delay_us`, then SIGKILL the sender. With
/// `big_at`, that message is `BIG` (64 rings' worth); with `pause`, the receiver stops
/// reading for 150 ms once it has everything before it, so the kill lands mid-message.
/// Returns kill → `Disconnected` spent inside `recv` (the receiving thread's own checks of
/// what arrived after the kill, and its pause, do not count), and the wall-clock time.
fn kill_sender(
    after: u64,
    delay_us: u64,
    big_at: Option<u64>,
    pause: bool,
) -> (Duration, Duration) {
    let (rx, addr) = bind::<Msg>(SMALL_RING);
    let big = big_at.map(|m| m.to_string()).unwrap_or_default();
    let mut child = spawn("stream", &[("CDT_ADDR", &addr), ("CDT_BIG_AT", &big)]);
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut own = common::OwnTime::default();
        let outcome = loop {
            let seq = count.load(Ordering::SeqCst);
            match rx.recv() {
                Ok(m) => {
                    let got_at = Instant::now();
                    if let Err(e) = check(&m, 0, seq, big_at.map(|at| (at, BIG))) {
                        break Err(e);
                    }
                    count.store(seq + 1, Ordering::SeqCst);
                    if pause && big_at == Some(seq + 1) {
                        std::thread::sleep(Duration::from_millis(150));
                    }
                    own.since(got_at);
                }
                Err(RecvError::Disconnected) => break Ok(Instant::now()),
                Err(e) => break Err(format!("recv failed: {e}")),
            }
        };
        let _ = done_tx.send((outcome, own));
    });
    let deadline = Instant::now() + LONG;
    while received.load(Ordering::SeqCst) < after {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("the sender exited on its own ({status}) before the kill");
        }
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_micros(200));
    }
    std::thread::sleep(Duration::from_micros(delay_us));
    let killed_at = Instant::now();
    child.kill().expect("kill");
    let outcome = done_rx.recv_timeout(SEND_FAILS);
    let status = child.wait().expect("wait");
    let Ok((outcome, own)) = outcome else {
        panic!("recv still blocked {SEND_FAILS:?} after the sender was SIGKILLed");
    };
    assert_eq!(status.signal(), Some(9), "not killed by us");
    let disconnected_at = outcome.unwrap_or_else(|e| panic!("after {after} messages: {e}"));
    let got = received.load(Ordering::SeqCst);
    assert!(got >= after, "only {got} messages");
    if pause {
        let m = big_at.expect("pause goes with a big message");
        assert_eq!(got, m, "the sender was stuck mid-way through message {m}");
    }
    let took = own.library_time(killed_at, disconnected_at);
    let wall = disconnected_at - killed_at;
    let limit = common::kill_noticed();
    assert!(
        took < limit,
        "kill → Disconnected took {took:?} inside recv ({wall:?} in all; limit {limit:?})"
    );
    (took, wall)
}

#[test]
fn sender_killed_at_random_points() {
    let started = Instant::now();
    let seed = env_u64("CDT_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        t.map_or(1, |d| d.as_nanos() as u64) ^ u64::from(std::process::id())
    });
    eprintln!("shm crash: seed {seed} (set CDT_SEED={seed} to repeat)");
    let mut x = seed | 1;
    let mut below = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut times = Vec::new();
    // 100 kills (`CONDUIT_KILLS`), three of them at chosen hard points.
    let kills = std::env::var("CONDUIT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100usize);
    for _ in 0..kills.saturating_sub(3) {
        times.push(kill_sender(1 + below(150), below(8_000), None, false));
    }
    // While the receiver reassembles the big message (or just after it).
    let m = 3 + below(20);
    times.push(kill_sender(m, below(5_000), Some(m), false));
    // While the sender is stuck mid-way through the big message (the receiver paused).
    for _ in 0..2 {
        let m = 3 + below(20);
        times.push(kill_sender(m, 50_000, Some(m), true));
    }
    let (times, walls): (Vec<Duration>, Vec<Duration>) = times.into_iter().unzip();
    eprintln!(
        "shm: kill → Disconnected inside recv: {}; wall clock, with the test's checks of \
         what was delivered after the kill: {}; {} kills in {:?}",
        common::distribution(&times),
        common::distribution(&walls),
        times.len(),
        started.elapsed()
    );
}

/// Kills a receiver child while this process's `send` is blocked on its full 64 KiB ring;
/// messages after the first are `len` bytes. Returns kill → `Err(Disconnected)`.
fn kill_receiver(len: usize) -> Duration {
    let dir = common::temp_dir();
    let (addr, ready) = (
        format!("shm:{}", dir.join("r.sock").display()),
        dir.join("ready"),
    );
    let mut child = spawn(
        "sink",
        &[("CDT_ADDR", &addr), ("CDT_READY", ready.to_str().unwrap())],
    );
    let deadline = Instant::now() + LONG;
    while !ready.exists() {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("the receiver child exited ({status}) before binding");
        }
        assert!(Instant::now() < deadline, "the child never bound");
        std::thread::sleep(Duration::from_millis(2));
    }
    let tx = Sender::<Msg>::connect(&addr).expect("connect");
    let progress = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = mpsc::channel();
    let counter = progress.clone();
    std::thread::spawn(move || {
        for seq in 0..100_000u64 {
            let m = (0, seq, Blob(content(key(0, seq), len)));
            let m = if seq == 0 { message(0, 0, None) } else { m };
            let Err(e) = tx.send(m) else {
                counter.store(seq + 1, Ordering::SeqCst);
                continue;
            };
            let at = Instant::now();
            let back = e.is_disconnected().then(|| e.into_inner());
            let ok = back.is_some_and(|b| b.1 == seq && (seq == 0 || b.2 .0.len() == len));
            let _ = done_tx.send((at, ok, seq));
            return;
        }
    });
    // Blocked: no progress for 300 ms.
    let (mut last, mut since) = (0, Instant::now());
    loop {
        if let Ok((_, _, seq)) = done_rx.try_recv() {
            panic!("send {seq} failed before the kill");
        }
        let now = progress.load(Ordering::SeqCst);
        if now != last {
            (last, since) = (now, Instant::now());
        } else if now > 0 && since.elapsed() > Duration::from_millis(300) {
            break;
        }
        assert!(Instant::now() < deadline, "the ring never filled");
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Some(status) = child.try_wait().expect("try_wait") {
        panic!("the receiver child exited on its own ({status})");
    }
    let killed_at = Instant::now();
    child.kill().expect("kill");
    let outcome = done_rx.recv_timeout(SEND_FAILS);
    let status = child.wait().expect("wait");
    assert_eq!(status.signal(), Some(9), "not killed by us");
    let Ok((at, handed_back, seq)) = outcome else {
        panic!("send still blocked {SEND_FAILS:?} after the receiver was SIGKILLed");
    };
    assert!(
        handed_back,
        "send {seq}: expected Disconnected with the message handed back"
    );
    eprintln!(
        "shm: receiver killed → blocked send {seq} of {len} B failed in {:?}",
        at - killed_at
    );
    at - killed_at
}

#[test]
fn receiver_killed_blocked_send_fails() {
    // Blocked on a one-piece message (three fit), and mid-way through a multi-piece one.
    for len in [20_000, 200_000] {
        let took = kill_receiver(len);
        assert!(took < SEND_FAILS, "{len} B: {took:?}");
    }
}
