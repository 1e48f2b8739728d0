//! A SIGKILLed shared-memory receiver, seen from a sender whose ring still has room: a killed
//! process cannot raise its ring's `closed` flag and a send into free space waits for
//! nobody, so the sender looks at the rendezvous socket every 256 sends (SECURITY.md: "a
//! sender whose ring still has room notices within 256 sends or when the ring fills"). Here
//! the receiver is a real child process, killed with the ring nearly empty; the send that
//! fails must come within 256 sends of the kill, whatever the count before it, with the
//! message handed back.
//!
//! The child is this test binary re-run as one role (`liveness_child`).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use conduit::{Options, Receiver, SendTimeoutError, Sender, TrySendError};

/// The test function a child process runs.
const ENTRY: &str = "liveness_child";
/// The documented bound: a killed receiver is noticed within this many sends.
const WITHIN_SENDS: u64 = 256;
/// The receiver's ring: far more than the sends below take (each `u64` frame is at most 24
/// bytes, so 4 × 256 sends fill under 25 KiB), so no send ever finds the ring full.
const RING: usize = 1 << 20;
/// Longest wait for anything that should take milliseconds.
const LONG: Duration = Duration::from_secs(20);

/// Role `sink`: binds `CDT_ADDR` with a 1 MiB ring, says so in `CDT_READY`, receives message
/// 0, says so in `CDT_GOT`, then stops reading until it is killed. Exit codes: 2 setup;
/// 4 bad first message; 9 never killed.
#[test]
fn liveness_child() {
    let Some(role) = common::role() else { return };
    assert_eq!(role, "sink", "unknown role");
    common::child_watchdog(Duration::from_secs(60));
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| fail(2, name));
    let addr = env("CDT_ADDR");
    let rx = Receiver::<u64>::bind_with(&addr, &Options::new().capacity(RING))
        .unwrap_or_else(|e| fail(2, &format!("bind {addr}: {e}")));
    mark(&env("CDT_READY"));
    match rx.recv_timeout(LONG) {
        Ok(0) => mark(&env("CDT_GOT")),
        other => fail(4, &format!("first message: {other:?}")),
    }
    std::thread::sleep(Duration::from_secs(60));
    fail(9, "never killed")
}

fn fail(code: i32, what: &str) -> ! {
    eprintln!("liveness child: {what}");
    std::process::exit(code)
}

/// Creates the file `path` atomically (written aside, then renamed).
fn mark(path: &str) {
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, "")
        .and_then(|()| std::fs::rename(&tmp, path))
        .unwrap_or_else(|e| fail(2, &format!("writing {path}: {e}")));
}

/// Waits until `path` exists, failing if `child` exits first or it takes too long.
fn wait_for(path: &Path, child: &mut std::process::Child, what: &str) {
    let deadline = Instant::now() + LONG;
    while !path.exists() {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("the receiver child exited ({status}) before it {what}");
        }
        assert!(Instant::now() < deadline, "the receiver child never {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Connects to a receiver child, sends `before` messages (the child takes the first), kills
/// the child, and returns how many sends it then took until one failed with
/// `Disconnected`. The sends rotate through `send`, `try_send` and `send_timeout`.
fn sends_until_noticed(before: u64) -> u64 {
    let dir = common::temp_dir();
    let addr = format!("shm:{}", dir.join("r.sock").display());
    let (ready, got) = (dir.join("ready"), dir.join("got"));
    let mut cmd = common::child_command(ENTRY, "sink");
    cmd.env("CDT_ADDR", &addr)
        .env("CDT_READY", &ready)
        .env("CDT_GOT", &got);
    common::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().expect("spawn the receiver child");
    wait_for(&ready, &mut child, "bound");
    let tx = Sender::<u64>::connect(&addr).expect("connect");
    for i in 0..before {
        tx.send(i)
            .unwrap_or_else(|e| panic!("send {i} before the kill: {e}"));
    }
    wait_for(&got, &mut child, "received message 0");
    child.kill().expect("kill");
    let status = child.wait().expect("wait");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "not killed by us");
    // The child is gone and reaped: its socket is closed. Its ring holds `before - 1` frames.
    for n in 1..=4 * WITHIN_SENDS {
        let v = before + n;
        let back = match n % 3 {
            0 => match tx.try_send(v) {
                Ok(()) => continue,
                Err(TrySendError::Disconnected(back)) => back,
                Err(e) => panic!("try_send {n} after the kill: expected Disconnected, got {e}"),
            },
            1 => match tx.send(v) {
                Ok(()) => continue,
                Err(e) if e.is_disconnected() => e.into_inner(),
                Err(e) => panic!("send {n} after the kill: expected Disconnected, got {e}"),
            },
            _ => match tx.send_timeout(v, LONG) {
                Ok(()) => continue,
                Err(SendTimeoutError::Disconnected(back)) => back,
                Err(e) => panic!("send_timeout {n} after the kill: expected Disconnected, got {e}"),
            },
        };
        assert_eq!(back, v, "the message handed back");
        // Once noticed, it stays noticed.
        assert!(
            matches!(tx.try_send(0), Err(TrySendError::Disconnected(0))),
            "a send after the one that noticed the death did not fail"
        );
        return n;
    }
    panic!(
        "{} sends into a ring with room after its receiver was SIGKILLed all succeeded",
        4 * WITHIN_SENDS
    )
}

#[test]
fn a_killed_receiver_is_noticed_within_256_sends() {
    // Counts before the kill on either side of the multiples of 256, so the check's turn
    // comes at every possible distance from the kill.
    let mut seen = Vec::new();
    for before in [1, 2, 200, 255, 256, 257, 511, 700] {
        let n = sends_until_noticed(before);
        assert!(
            n <= WITHIN_SENDS,
            "{before} sends before the kill: the death was noticed only at send {n} after it \
             (documented: within {WITHIN_SENDS})"
        );
        seen.push((before, n));
    }
    eprintln!("shm: (sends before the kill, sends after it until Disconnected): {seen:?}");
}
