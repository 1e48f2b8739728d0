//! Peers killed with SIGKILL: a killed sender ends the receiver's blocked `recv` with
//! `Disconnected` within `common::kill_noticed()` (250 ms, 1 s under a sanitizer; counted
//! inside `recv`: the test's own checks of messages still delivered after the kill do not
//! count) and never lets a torn message through; a killed receiver fails a sender blocked in
//! `send` or `send_timeout` instead of leaving it hanging.
//!
//! The child is this test binary re-run as one role (`crash_child`).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use conduit::{channel, Backend, Receiver, RecvError, Sender, TrySendError};

/// The test function a child process runs.
const ENTRY: &str = "crash_child";
/// A message far larger than any kernel buffer between the processes (TCP autotuning
/// included), so a sender that begins it is stuck mid-way while the receiver is not reading.
const HUGE: usize = 24 << 20;
/// How long a sender may stay blocked after its receiver was killed before we call it hung.
const SEND_FAILS: Duration = Duration::from_secs(10);

/// Bytes serialized as one byte string (`serde_bytes`), not a sequence of `u8`s (fast
/// unoptimized).
#[derive(PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
struct Blob(#[serde(with = "serde_bytes")] Vec<u8>);

/// (sequence number, payload).
type Msg = (u64, Blob);

/// Mixed sizes: small ones, and every fifth message multi-piece (65 KiB to 260 KiB).
fn size_for(seq: u64, huge_at: Option<u64>) -> usize {
    let s = seq as usize;
    match seq % 5 {
        _ if Some(seq) == huge_at => HUGE,
        2 => 65_537 + (s * 7_919) % 200_000,
        4 => 3_000 + (s * 131) % 20_000,
        _ => (s * 37) % 500,
    }
}

/// `common::payload`, except that messages over 1 MiB repeat a block of it (cheap to make).
fn content(seq: u64, len: usize) -> Vec<u8> {
    if len <= 1 << 20 {
        return common::payload(seq, len);
    }
    let block = common::payload(seq, 4093);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let n = (len - out.len()).min(block.len());
        out.extend_from_slice(&block[..n]);
    }
    out
}

fn message(seq: u64, huge_at: Option<u64>) -> Msg {
    (seq, Blob(content(seq, size_for(seq, huge_at))))
}

fn check(got: &Msg, seq: u64, huge_at: Option<u64>) -> Result<(), String> {
    let len = size_for(seq, huge_at);
    if got.0 != seq {
        return Err(format!("expected message {seq}, got {}", got.0));
    }
    if got.1 .0.len() != len || got.1 .0 != content(seq, len) {
        return Err(format!(
            "message {seq} is torn or damaged: {} bytes, expected {len}",
            got.1 .0.len()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Child side.

fn child_fail(code: i32, what: impl std::fmt::Display) -> ! {
    eprintln!("crash child: {what}");
    std::process::exit(code)
}

/// Roles: `stream` sends messages until killed; `sink` receives one message, then stops
/// reading and waits to be killed. Exit codes: 2 setup; 3 send failed; 4 bad message;
/// 9 never killed.
#[test]
fn crash_child() {
    let Some(role) = common::role() else { return };
    let addr = std::env::var("CDT_ADDR").unwrap_or_else(|_| child_fail(2, "no CDT_ADDR"));
    let give_up = Instant::now() + Duration::from_secs(60);
    match role.as_str() {
        "stream" => {
            let huge_at = std::env::var("CDT_HUGE_AT")
                .ok()
                .and_then(|v| v.parse().ok());
            let tx = match addr.as_str() {
                "inherit" => Sender::<Msg>::from_parent("OUT"),
                _ => Sender::<Msg>::connect(&addr),
            }
            .unwrap_or_else(|e| child_fail(2, format!("sender for {addr}: {e}")));
            for seq in 0.. {
                if let Err(e) = tx.send(message(seq, huge_at)) {
                    child_fail(3, format!("send {seq}: {e}"));
                }
                if Instant::now() > give_up {
                    break;
                }
            }
        }
        "sink" => {
            let rx = match addr.as_str() {
                "inherit" => Receiver::<Msg>::from_parent("IN"),
                _ => Receiver::<Msg>::bind(&addr),
            }
            .unwrap_or_else(|e| child_fail(2, format!("receiver for {addr}: {e}")));
            if let Ok(ready) = std::env::var("CDT_READY") {
                let tmp = format!("{ready}.tmp");
                std::fs::write(&tmp, rx.local_addr().unwrap_or_default())
                    .and_then(|()| std::fs::rename(&tmp, &ready))
                    .unwrap_or_else(|e| child_fail(2, format!("writing {ready}: {e}")));
            }
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(m) if m.0 == 0 && m.1 .0 == content(0, m.1 .0.len()) => {}
                Ok(m) => child_fail(4, format!("message {} is not message 0", m.0)),
                Err(e) => child_fail(4, format!("first recv: {e}")),
            }
            // Stop reading: the parent's sends fill the buffer and block.
            while Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        other => child_fail(2, format!("unknown role {other}")),
    }
    child_fail(9, "never killed")
}

// ---------------------------------------------------------------------------------------
// Parent side.

/// A seed for the kill points, printed so a failing run can be repeated with `CDT_SEED`.
fn seed() -> u64 {
    let seed = std::env::var("CDT_SEED").ok().and_then(|s| s.parse().ok());
    let seed = seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        t.map_or(1, |d| d.as_nanos() as u64) ^ u64::from(std::process::id())
    });
    eprintln!("crash: seed {seed} (set CDT_SEED={seed} to repeat)");
    seed
}

fn backend(target: &str) -> Backend {
    match target {
        "pipe" => Backend::Pipe,
        "socket" => Backend::Socket,
        _ => unreachable!("{target} is not an anonymous backend"),
    }
}

/// Spawns a `stream` child sending to a receiver on `target`.
fn start_stream(target: &str, huge_at: Option<u64>) -> (Receiver<Msg>, Child) {
    let mut cmd = common::child_command(ENTRY, "stream");
    if let Some(m) = huge_at {
        cmd.env("CDT_HUGE_AT", m.to_string());
    }
    let rx = match target {
        "unix" | "tcp" => {
            let addr = match target {
                "unix" => common::unix_addr(),
                _ => "tcp:127.0.0.1:0".to_string(),
            };
            let rx = Receiver::<Msg>::bind(&addr).expect("bind");
            cmd.env("CDT_ADDR", rx.local_addr().expect("bound address"));
            rx
        }
        _ => {
            let (tx, rx) = channel::<Msg>(backend(target)).expect("channel");
            tx.share_with_child(&mut cmd, "OUT").expect("share");
            cmd.env("CDT_ADDR", "inherit");
            rx
        }
    };
    let child = cmd.spawn().expect("spawn");
    drop(cmd);
    (rx, child)
}

/// How many times each backend's sender is killed: `CONDUIT_KILLS`, 100 by default.
fn kills() -> usize {
    std::env::var("CONDUIT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

/// One kill: after `after` messages arrived, wait `delay`, then SIGKILL the sender.
/// With `huge_at`, message `huge_at` is `HUGE`; with `pause`, the receiver stops reading
/// for a while once it has everything before it, so the kill lands mid-way through it.
struct Plan {
    after: u64,
    delay_us: u64,
    huge_at: Option<u64>,
    pause: bool,
}

/// Runs one plan; returns the time from kill to `Disconnected` spent inside `recv` (the
/// receiving thread's own checks of messages delivered after the kill, and its pause, do
/// not count), and the wall-clock time.
fn kill_sender(target: &str, plan: &Plan) -> (Duration, Duration) {
    let (rx, mut child) = start_stream(target, plan.huge_at);
    let received = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = mpsc::channel();
    let (count, huge_at, pause) = (received.clone(), plan.huge_at, plan.pause);
    let worker = std::thread::spawn(move || {
        let mut own = common::OwnTime::default();
        let outcome = loop {
            let seq = count.load(Ordering::SeqCst);
            match rx.recv() {
                Ok(m) => {
                    let got_at = Instant::now();
                    if let Err(e) = check(&m, seq, huge_at) {
                        break Err(e);
                    }
                    count.store(seq + 1, Ordering::SeqCst);
                    if pause && huge_at == Some(seq + 1) {
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
    let deadline = Instant::now() + Duration::from_secs(20);
    while received.load(Ordering::SeqCst) < plan.after {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("{target}: the sender exited on its own ({status}) before the kill");
        }
        assert!(Instant::now() < deadline, "{target}: no progress");
        std::thread::sleep(Duration::from_micros(200));
    }
    std::thread::sleep(Duration::from_micros(plan.delay_us));
    let killed_at = Instant::now();
    child.kill().expect("kill");
    let Ok((outcome, own)) = done_rx.recv_timeout(SEND_FAILS) else {
        panic!("{target}: recv still blocked {SEND_FAILS:?} after the sender was SIGKILLed");
    };
    let status = child.wait().expect("wait");
    assert_eq!(status.signal(), Some(9), "{target}: not killed by us");
    let disconnected_at = outcome.unwrap_or_else(|e| panic!("{target}: {e}"));
    worker.join().expect("receiving thread");
    assert!(
        disconnected_at >= killed_at,
        "{target}: Disconnected before kill"
    );
    let got = received.load(Ordering::SeqCst);
    assert!(got >= plan.after, "{target}: only {got} messages");
    let took = own.library_time(killed_at, disconnected_at);
    let wall = disconnected_at - killed_at;
    let limit = common::kill_noticed();
    assert!(
        took < limit,
        "{target}: kill → Disconnected took {took:?} inside recv ({wall:?} in all; limit \
         {limit:?})"
    );
    if let Some(m) = plan.huge_at {
        let whole = got > m;
        eprintln!("{target}: the {HUGE}-byte message {m} delivered whole: {whole}");
    }
    (took, wall)
}

fn sender_killed(target: &str) {
    let started = Instant::now();
    let mut x = seed() | 1;
    let mut below = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let plan = |after, delay_us, huge_at, pause| Plan {
        after,
        delay_us,
        huge_at,
        pause,
    };
    let mut plans = Vec::new();
    // 100 kills per backend, two of them at chosen hard points.
    for _ in 0..kills().saturating_sub(2) {
        let (after, delay_us) = (1 + below(120), below(8_000));
        plans.push(plan(after, delay_us, None, false));
    }
    // Killed while recv is busy reassembling a huge message (or just after it).
    let (m, delay_us) = (3 + below(20), below(5_000));
    plans.push(plan(m, delay_us, Some(m), false));
    // Killed while the sender is stuck mid-way through a huge message (recv paused).
    let m = 3 + below(20);
    plans.push(plan(m, 50_000, Some(m), true));
    let (times, walls): (Vec<Duration>, Vec<Duration>) =
        plans.iter().map(|p| kill_sender(target, p)).unzip();
    eprintln!(
        "{target}: kill → Disconnected inside recv: {}; wall clock, with the test's checks of \
         what was delivered after the kill: {}; {} kills in {:?}",
        common::distribution(&times),
        common::distribution(&walls),
        times.len(),
        started.elapsed()
    );
}

#[test]
fn sender_killed_unix() {
    sender_killed("unix");
}

#[test]
fn sender_killed_tcp() {
    sender_killed("tcp");
}

#[test]
fn sender_killed_inherited_pipe() {
    sender_killed("pipe");
}

#[test]
fn sender_killed_inherited_socket() {
    sender_killed("socket");
}

/// Spawns a `sink` child receiving on `target` (bound in the child, or inherited).
fn start_sink(target: &str) -> (Sender<Msg>, Child) {
    let mut cmd = common::child_command(ENTRY, "sink");
    match target {
        "unix" | "tcp" => {
            let dir = common::temp_dir();
            let ready = dir.join("ready");
            let addr = match target {
                "unix" => format!("unix:{}", dir.join("s.sock").display()),
                _ => "tcp:127.0.0.1:0".to_string(),
            };
            cmd.env("CDT_ADDR", addr).env("CDT_READY", &ready);
            let mut child = cmd.spawn().expect("spawn");
            let deadline = Instant::now() + Duration::from_secs(20);
            let addr = loop {
                if let Ok(addr) = std::fs::read_to_string(&ready) {
                    break addr;
                }
                if let Some(status) = child.try_wait().expect("try_wait") {
                    panic!("{target}: the receiver child exited ({status}) before binding");
                }
                assert!(Instant::now() < deadline, "{target}: the child never bound");
                std::thread::sleep(Duration::from_millis(2));
            };
            (Sender::connect(&addr).expect("connect"), child)
        }
        _ => {
            let (tx, rx) = channel::<Msg>(backend(target)).expect("channel");
            rx.share_with_child(&mut cmd, "IN").expect("share");
            cmd.env("CDT_ADDR", "inherit");
            let child = cmd.spawn().expect("spawn");
            drop((cmd, rx));
            (tx, child)
        }
    }
}

/// What the sending thread tells the test.
enum Report {
    /// The buffer is full; the next call blocks.
    Blocked,
    /// Something went wrong before the kill.
    Failed(String),
    /// The blocked call returned: when, and how.
    Returned(Instant, Result<(), String>),
}

/// Kills the receiver once the sending thread reports it is blocked; returns how long the
/// blocked call took to fail after the kill.
/// The sending thread reports `Blocked`, or counts messages sent in `progress`: no progress
/// for 300 ms means it is blocked.
fn kill_receiver(
    target: &str,
    sending: impl FnOnce(Sender<Msg>, &mpsc::Sender<Report>, &AtomicU64) + Send + 'static,
) -> Duration {
    let (tx, mut child) = start_sink(target);
    let (report_tx, report) = mpsc::channel();
    let progress = Arc::new(AtomicU64::new(0));
    let counter = progress.clone();
    std::thread::spawn(move || sending(tx, &report_tx, &counter));
    let (deadline, mut last, mut since) = (Instant::now() + SEND_FAILS * 3, 0, Instant::now());
    loop {
        match report.recv_timeout(Duration::from_millis(20)) {
            Ok(Report::Blocked) => break,
            Ok(Report::Failed(e)) => panic!("{target}: before the kill: {e}"),
            Ok(Report::Returned(_, r)) => panic!("{target}: returned before the kill: {r:?}"),
            Err(_) => assert!(
                Instant::now() < deadline,
                "{target}: the buffer never filled"
            ),
        }
        let now = progress.load(Ordering::SeqCst);
        if now != last {
            (last, since) = (now, Instant::now());
        } else if now > 0 && since.elapsed() > Duration::from_millis(300) {
            break;
        }
    }
    // Let the call settle into its wait, then make sure the receiver is still alive.
    std::thread::sleep(Duration::from_millis(100));
    if let Some(status) = child.try_wait().expect("try_wait") {
        panic!("{target}: the receiver child exited on its own ({status})");
    }
    let killed_at = Instant::now();
    child.kill().expect("kill");
    let outcome = report.recv_timeout(SEND_FAILS);
    let status = child.wait().expect("wait");
    assert_eq!(status.signal(), Some(9), "{target}: not killed by us");
    match outcome {
        Ok(Report::Returned(at, Ok(()))) => at - killed_at,
        Ok(Report::Returned(_, Err(e))) => panic!("{target}: after the kill: {e}"),
        Ok(_) => panic!("{target}: unexpected report"),
        Err(_) => panic!("{target}: send still blocked {SEND_FAILS:?} after the receiver died"),
    }
}

/// Checks that a failed send handed back message `seq` of `len` bytes, unchanged.
fn handed_back(back: &Msg, seq: u64, len: usize) -> Result<(), String> {
    if back.0 != seq || back.1 .0 != content(seq, len) {
        return Err(format!("the message handed back is not message {seq}"));
    }
    Ok(())
}

#[test]
fn receiver_killed_blocked_send_fails() {
    let mut times = Vec::new();
    for target in ["unix", "tcp", "pipe", "socket"] {
        let took = kill_receiver(target, |tx, report, progress| {
            for seq in 0..100_000u64 {
                // Single-piece and multi-piece messages; the blocked one may be either.
                let len = if seq % 3 == 2 { 200_000 } else { 40_000 };
                let Err(e) = tx.send((seq, Blob(content(seq, len)))) else {
                    progress.store(seq + 1, Ordering::SeqCst);
                    continue;
                };
                let at = Instant::now();
                let result = if e.is_disconnected() {
                    handed_back(&e.into_inner(), seq, len)
                } else {
                    Err(format!("send {seq}: expected Disconnected, got {e}"))
                };
                let _ = report.send(Report::Returned(at, result));
                return;
            }
            let _ = report.send(Report::Failed("send never blocked".into()));
        });
        eprintln!("{target}: receiver killed → blocked send failed in {took:?}");
        times.push(took);
    }
    assert!(times.iter().all(|t| *t < SEND_FAILS));
}

/// Not over TCP: there `try_send` can block without end on a full connection whose reader is
/// alive (see `try_send_never_blocks_on_a_full_tcp_connection`), so filling would hang.
#[test]
fn receiver_killed_blocked_send_timeout_fails() {
    for target in ["unix", "pipe", "socket"] {
        let took = kill_receiver(target, |tx, report, _| {
            let fail = |e: String| {
                let _ = report.send(Report::Failed(e));
            };
            if let Err(e) = tx.send(message(0, None)) {
                return fail(format!("first send: {e}"));
            }
            // Fill with small messages until full and still full after a pause (the child
            // reads one message meanwhile).
            let mut seq = 1;
            let mut rounds = 0;
            loop {
                let mut sent_now = 0;
                loop {
                    match tx.try_send((seq, Blob(content(seq, 512)))) {
                        Ok(()) => (seq, sent_now) = (seq + 1, sent_now + 1),
                        Err(TrySendError::Full(back)) => match handed_back(&back, seq, 512) {
                            Ok(()) => break,
                            Err(e) => return fail(e),
                        },
                        Err(e) => return fail(format!("try_send {seq}: {e}")),
                    }
                    if seq > 1_000_000 {
                        return fail("try_send never reported Full".into());
                    }
                }
                rounds += 1;
                if sent_now == 0 && rounds > 1 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            // A short timeout on the full buffer: Timeout, the message handed back.
            let len = 300_000;
            match tx.send_timeout((seq, Blob(content(seq, len))), Duration::from_millis(100)) {
                Err(e) if e.is_timeout() => {
                    if let Err(e) = handed_back(&e.into_inner(), seq, len) {
                        return fail(e);
                    }
                }
                Err(e) => return fail(format!("short send_timeout: expected Timeout, got {e}")),
                Ok(()) => return fail("send_timeout succeeded on a full buffer".into()),
            }
            let _ = report.send(Report::Blocked);
            // A long timeout: the receiver's death must end it, as Disconnected.
            let result = tx.send_timeout((seq, Blob(content(seq, len))), Duration::from_secs(60));
            let at = Instant::now();
            let result = match result {
                Err(e) if e.is_disconnected() => handed_back(&e.into_inner(), seq, len),
                Err(e) => Err(format!("long send_timeout: expected Disconnected, got {e}")),
                Ok(()) => Err("send_timeout succeeded with the receiver dead".into()),
            };
            // And the sender stays disconnected.
            let result = result.and_then(|()| match tx.try_send(message(seq + 1, None)) {
                Err(TrySendError::Disconnected(_)) => Ok(()),
                Err(e) => Err(format!("try_send after: expected Disconnected, got {e}")),
                Ok(()) => Err("try_send succeeded with the receiver dead".into()),
            });
            let _ = report.send(Report::Returned(at, result));
        });
        eprintln!("{target}: receiver killed → blocked send_timeout failed in {took:?}");
    }
}

/// `try_send` must not wait for a reader that has stopped reading. Over TCP the kernel
/// accepts part of a message when the send buffer runs out mid-way (a partial write), and the
/// stream sender then waits, with no deadline, to write the rest: `try_send` blocks until the
/// reader reads again or dies (`src/flavors/stream.rs`, `write_all`, once `started`).
#[test]
fn try_send_never_blocks_on_a_full_tcp_connection() {
    let rx = Receiver::<Msg>::bind("tcp:127.0.0.1:0").expect("bind");
    let tx = Sender::<Msg>::connect(&rx.local_addr().expect("address")).expect("connect");
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        for seq in 0..1_000_000u64 {
            match tx.try_send((seq, Blob(content(seq, 1_000)))) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => return done_tx.send(Ok(seq)),
                Err(e) => return done_tx.send(Err(format!("try_send {seq}: {e}"))),
            }
        }
        done_tx.send(Err("try_send never reported Full".to_string()))
    });
    let limit = Duration::from_secs(5);
    let outcome = done.recv_timeout(limit);
    drop(rx); // ends a try_send still blocked, so the thread does not outlive the test
    match outcome {
        Ok(Ok(seq)) => eprintln!("tcp: Full after {seq} messages of 1,000 bytes"),
        Ok(Err(e)) => panic!("{e}"),
        Err(_) => panic!(
            "try_send blocked for more than {limit:?} on a full TCP connection whose \
             receiver is alive but not reading (a partial write, then a wait without deadline)"
        ),
    }
}
