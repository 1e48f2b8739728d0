//! No lost or late wake-ups on `shm:`, across real processes, with the safety net removed.
//!
//! A shm side that sleeps is woken by its peer; every sleep is also bounded (100 ms), which
//! would hide a lost wake-up as a stall no test notices. These tests run their two peers as
//! child processes with `CONDUIT_TEST_UNCAPPED_SLEEP` set, which lifts that bound: a lost
//! wake-up then sleeps until the one-second deadline and fails, and any wake-up later than
//! `late()` fails too. Each side pauses before every message, so its peer is asleep in the
//! kernel when the message (or the space) arrives: every message takes the wake-up path.
//!
//! The children are this test binary re-run as a role of `wakeup_child`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use conduit::{channel_with, Backend, Options, Receiver, Sender};

/// The test function a child process runs.
const ENTRY: &str = "wakeup_child";
/// Lifts the shm sleep bound in the children (read once per process by the library).
const UNCAPPED: &str = "CONDUIT_TEST_UNCAPPED_SLEEP";
/// A wake-up later than this fails the test: 20 ms, or 100 ms under a sanitizer, whose
/// instrumented processes are scheduled later (a CI run under AddressSanitizer saw a
/// 25 ms wake-up). A lost wake-up still ends at `DEADLINE`, far beyond either.
fn late() -> Duration {
    if common::sanitizer().is_some() {
        Duration::from_millis(100)
    } else {
        Duration::from_millis(20)
    }
}
/// How long each side pauses before it sends (or receives), so that its peer sleeps.
const PAUSE: Duration = Duration::from_millis(2);
/// Messages per direction.
const ROUNDS: u64 = 100;
/// A lost wake-up ends here.
const DEADLINE: Duration = Duration::from_secs(1);

/// Nanoseconds on the system-wide monotonic clock, comparable between processes.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Asserts that a message stamped `sent` (by `mono_ns`) arrived within `late()`.
fn check_on_time(sent: u64, what: &str) {
    let took = Duration::from_nanos(mono_ns().saturating_sub(sent));
    assert!(took < late(), "{what}: woken {took:?} after the send");
}

/// Runs role `role` as a child with the sleep bound lifted and checks it played it.
fn run_child(role: &str) {
    let child = common::spawn_child(ENTRY, role, &[(UNCAPPED, "1")]);
    common::Reaped::new(child).expect_success(Duration::from_secs(60), role);
}

/// A receiver asleep on an empty ring is woken by every message, in both directions of a
/// ping-pong between two processes.
#[test]
fn a_sleeping_receiver_is_woken_by_every_message() {
    run_child("ping");
}

/// A sender asleep on a full ring is woken by every receive that makes room.
#[test]
fn a_sender_sleeping_on_a_full_ring_is_woken_by_every_receive() {
    run_child("fill");
}

/// The child roles. `ping` and `fill` start `pong` and `drain` as their own children, which
/// inherit the lifted bound with the rest of the environment.
#[test]
fn wakeup_child() {
    let Some(role) = common::role() else { return };
    common::child_watchdog(Duration::from_secs(50));
    assert!(
        std::env::var_os(UNCAPPED).is_some(),
        "the wake-up children run without the sleep bound"
    );
    run_before_other_work();
    match role.as_str() {
        "ping" => ping(),
        "pong" => pong(),
        "fill" => fill(),
        "drain" => drain(),
        other => panic!("unknown role {other}"),
    }
}

/// Asks the scheduler to run this thread ahead of ordinary work (`SCHED_FIFO`, where
/// allowed): what is measured is the wake-up, not the wait for a core on a busy machine (a
/// parallel build, other tests). Each side pauses or sleeps in the kernel between messages
/// and spins at most 50 µs, so it never holds a core for long.
fn run_before_other_work() {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: `param` is a valid sched_param; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc != 0 {
        eprintln!(
            "wake-up child: no real-time priority ({}); timings include scheduling delays",
            std::io::Error::last_os_error()
        );
    }
}

/// Starts `role` with `rx` shared as `IN` and (if any) `tx` as `OUT`.
fn start<T: conduit::Message, U: conduit::Message>(
    role: &str,
    rx: &Receiver<T>,
    tx: Option<&Sender<U>>,
) -> common::Reaped {
    let mut cmd: Command = common::child_command(ENTRY, role);
    rx.share_with_child(&mut cmd, "IN").expect("share IN");
    if let Some(tx) = tx {
        tx.share_with_child(&mut cmd, "OUT").expect("share OUT");
    }
    let child = cmd.spawn().expect("spawn");
    common::Reaped::new(child)
}

/// Sends a stamped ping after each pause and checks the pong's wake-up.
fn ping() {
    let opts = Options::new();
    let (to_pong, pong_in) = channel_with::<(u64, u64)>(Backend::Shm, &opts).unwrap();
    let (pong_out, from_pong) = channel_with::<(u64, u64)>(Backend::Shm, &opts).unwrap();
    let child = start("pong", &pong_in, Some(&pong_out));
    drop((pong_in, pong_out));
    for i in 0..ROUNDS {
        std::thread::sleep(PAUSE);
        to_pong.send((i, mono_ns())).unwrap();
        let (j, sent) = from_pong.recv_timeout(DEADLINE).expect("the pong");
        check_on_time(sent, "ping");
        assert_eq!(j, i);
    }
    drop(to_pong);
    child.expect_success(Duration::from_secs(20), "pong");
}

fn pong() {
    let rx = Receiver::<(u64, u64)>::from_parent("IN").unwrap();
    let tx = Sender::<(u64, u64)>::from_parent("OUT").unwrap();
    for i in 0..ROUNDS {
        let (j, sent) = rx.recv_timeout(DEADLINE).expect("the ping");
        check_on_time(sent, "pong");
        assert_eq!(j, i);
        std::thread::sleep(PAUSE);
        tx.send((i, mono_ns())).unwrap();
    }
}

/// Bytes per message: two fill the smallest ring.
const FILL_LEN: usize = 1500;

/// Keeps a 4 KiB ring full: every send after the first two sleeps until the drain's next
/// receive (after its pause) makes room.
fn fill() {
    let opts = Options::new().capacity(4096);
    let (tx, drain_in) = channel_with::<Vec<u8>>(Backend::Shm, &opts).unwrap();
    let child = start::<Vec<u8>, Vec<u8>>("drain", &drain_in, None);
    drop(drain_in);
    let mut slept = 0;
    for i in 0..ROUNDS {
        let started = Instant::now();
        tx.send_timeout(common::payload(i, FILL_LEN), DEADLINE)
            .expect("room within the deadline");
        let took = started.elapsed();
        assert!(
            took < PAUSE + late(),
            "send {i} waited {took:?} for room the receiver made after {PAUSE:?}"
        );
        slept += u32::from(took >= PAUSE / 2);
    }
    drop(tx);
    child.expect_success(Duration::from_secs(20), "drain");
    // The ring holds two messages, so nearly every send had to wait for the drain.
    assert!(
        slept as u64 > ROUNDS / 2,
        "only {slept} sends waited for room"
    );
}

fn drain() {
    let rx = Receiver::<Vec<u8>>::from_parent("IN").unwrap();
    for i in 0..ROUNDS {
        std::thread::sleep(PAUSE);
        let got = rx.recv_timeout(DEADLINE).expect("a message");
        assert_eq!(got, common::payload(i, FILL_LEN));
    }
    assert!(rx.recv_timeout(DEADLINE).is_err(), "the sender is gone");
}
