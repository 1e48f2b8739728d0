//! The readiness descriptor (`AsFd for Receiver`): readable when `try_recv` may return
//! something other than `Empty`, not readable once drained, on every backend.

use std::os::fd::{AsFd, BorrowedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conduit::{Options, Receiver, TryRecvError};
use rustix::event::{PollFd, PollFlags};

use crate::common::{self, Reaped};
use crate::setup::{Setup, PATIENCE};

/// Whether `fd` becomes readable within `timeout`.
pub fn readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let ts = rustix::event::Timespec::try_from(left).expect("a representable timeout");
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(n) => return n > 0,
            Err(rustix::io::Errno::INTR) if !left.is_zero() => continue,
            Err(e) => panic!("poll: {e}"),
        }
    }
}

/// Follows the rule (try until `Empty`, then wait) until `try_recv` gives something other
/// than `Empty`: `Some` message, or `None` for `Disconnected`. Fails the test if the
/// descriptor stays quiet for `PATIENCE`.
fn next<T: conduit::Message>(rx: &Receiver<T>, setup: impl std::fmt::Debug) -> Option<T> {
    loop {
        match rx.try_recv() {
            Err(TryRecvError::Empty) => assert!(
                readable(rx.as_fd(), PATIENCE),
                "{setup:?}: the descriptor stayed quiet for {PATIENCE:?}"
            ),
            Ok(v) => return Some(v),
            Err(TryRecvError::Disconnected) => return None,
            Err(e) => panic!("{setup:?}: {e:?}"),
        }
    }
}

/// Drains to `Empty` and checks that the descriptor is then quiet.
fn assert_drained<T: conduit::Message>(rx: &Receiver<T>, setup: impl std::fmt::Debug) {
    // The descriptor is readable once made, and may be after a wake-up that was already
    // covered: the first `Empty` drains that.
    let _ = rx.as_fd();
    assert!(
        matches!(rx.try_recv(), Err(TryRecvError::Empty)),
        "{setup:?}: nothing was sent"
    );
    assert!(
        !readable(rx.as_fd(), Duration::from_millis(20)),
        "{setup:?}: readable after try_recv returned Empty"
    );
}

/// A message makes the descriptor readable; taking it (and seeing `Empty`) makes it quiet.
pub fn readable_when_a_message_is_ready(setup: Setup) {
    let pair = setup.pair::<u64>();
    assert_drained(&pair.rx, setup);
    for i in 0..3 {
        pair.tx.send(i).unwrap();
        assert!(
            readable(pair.rx.as_fd(), PATIENCE),
            "{setup:?}: not readable with message {i} sent"
        );
        assert_eq!(next(&pair.rx, setup), Some(i), "{setup:?}");
        assert_drained(&pair.rx, setup);
    }
    // Several at once: all taken before `Empty`, then quiet.
    for i in 0..10 {
        pair.tx.send(i).unwrap();
    }
    for i in 0..10 {
        assert_eq!(next(&pair.rx, setup), Some(i), "{setup:?}");
    }
    assert_drained(&pair.rx, setup);
}

/// The last sender's drop makes the descriptor readable, and `try_recv` then reports
/// `Disconnected` (after what was sent before it).
pub fn readable_when_the_last_sender_goes(setup: Setup) {
    let pair = setup.pair::<u64>();
    let second = pair.connect().unwrap_or_else(|| pair.tx.clone());
    assert_drained(&pair.rx, setup);
    second.send(7).unwrap();
    drop(second);
    assert_eq!(next(&pair.rx, setup), Some(7), "{setup:?}");
    // One sender left: still quiet.
    assert_drained(&pair.rx, setup);
    let tx = pair.tx;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        drop(tx);
    });
    assert_eq!(next(&pair.rx, setup), None, "{setup:?}: Disconnected");
}

/// No lost wake-up: a sender on another thread sends `n` messages while the receiver
/// alternates between `try_recv` (until `Empty`) and waiting on the descriptor. A tenth of
/// them under a sanitizer, which checks the same paths and runs them many times slower.
pub fn no_lost_wakeup(setup: Setup) {
    let n: u64 = if matches!(setup, Setup::ThreadAnon | Setup::ShmAnon) {
        1_000_000
    } else {
        100_000
    };
    let n = if common::sanitizer().is_some() {
        n / 10
    } else {
        n
    };
    let pair = setup.pair::<u64>();
    let _ = pair.rx.as_fd();
    let tx = pair.tx;
    let sender = std::thread::spawn(move || {
        for i in 0..n {
            tx.send(i).unwrap();
            // Now and then let the receiver catch up and wait, so waits are many.
            if i % 64 == 0 {
                std::thread::yield_now();
            }
        }
    });
    let (mut waits, mut expect) = (0u64, 0u64);
    loop {
        match pair.rx.try_recv() {
            Ok(v) => {
                assert_eq!(v, expect, "{setup:?}: in order");
                expect += 1;
            }
            Err(TryRecvError::Empty) => {
                waits += 1;
                assert!(
                    readable(pair.rx.as_fd(), PATIENCE),
                    "{setup:?}: lost wake-up after {expect} of {n} messages"
                );
            }
            Err(TryRecvError::Disconnected) => break,
            Err(e) => panic!("{setup:?}: {e:?}"),
        }
    }
    crate::setup::join(sender);
    assert_eq!(expect, n, "{setup:?}: every message");
    assert!(waits > 0, "{setup:?}: the receiver never waited");
}

/// No lost wake-up when every message is the last of its burst: the sender sends one,
/// then waits until the receiver has taken it, so each send races the receiver's arming.
pub fn no_lost_wakeup_in_lockstep(setup: Setup) {
    let n: u64 = match setup {
        Setup::ThreadAnon | Setup::ThreadNamed | Setup::ShmAnon => 200_000,
        _ => 20_000,
    };
    let pair = setup.pair::<u64>();
    let _ = pair.rx.as_fd();
    let taken = Arc::new(AtomicU64::new(0));
    let tx = pair.tx;
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
    for i in 0..n {
        loop {
            match pair.rx.try_recv() {
                Ok(v) => {
                    assert_eq!(v, i, "{setup:?}: in order");
                    break;
                }
                Err(TryRecvError::Empty) => assert!(
                    readable(pair.rx.as_fd(), PATIENCE),
                    "{setup:?}: lost wake-up for message {i} of {n}"
                ),
                Err(e) => panic!("{setup:?}: {e:?}"),
            }
        }
        taken.store(i + 1, Ordering::Relaxed);
    }
    crate::setup::join(sender);
}

/// Two threads share the receiver, each following the rule: every message is taken once,
/// and neither waits forever while messages are there (another thread holding the handle
/// makes `try_recv` report `Empty`; the holder wakes it when it lets go).
pub fn shared_receiver_loses_no_wakeup(setup: Setup) {
    const N: u64 = 20_000;
    let pair = setup.pair::<u64>();
    let rx = Arc::new(pair.rx);
    let _ = rx.as_fd();
    let takers: Vec<_> = (0..2)
        .map(|_| {
            let rx = rx.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Some(v) = next(&rx, setup) {
                    got.push(v);
                }
                got
            })
        })
        .collect();
    for i in 0..N {
        pair.tx.send(i).unwrap();
        if i % 16 == 0 {
            std::thread::yield_now();
        }
    }
    drop(pair.tx);
    let mut all: Vec<u64> = takers.into_iter().flat_map(crate::setup::join).collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..N).collect::<Vec<_>>(),
        "{setup:?}: each message once"
    );
}

const KILLED: &str = "ready-killed-sender";

/// A sender process killed with SIGKILL makes the descriptor readable; `try_recv` then
/// reports `Disconnected` after the messages it sent.
pub fn readable_when_a_sender_process_is_killed(setup: Setup) {
    if common::role().as_deref() == Some(KILLED) {
        common::child_watchdog(Duration::from_secs(30));
        let tx = common::sender_from_parent::<u64>(&Options::new()).expect("the sender");
        tx.send(1).expect("send");
        // Wait to be killed.
        std::thread::sleep(Duration::from_secs(60));
        std::process::exit(9);
    }
    let target = setup.process_target();
    let test = format!("readiness_tests::readable_when_a_sender_process_is_killed::{setup:?}");
    let mut cmd: Command = common::child_command(&test, KILLED);
    common::die_with_parent(&mut cmd);
    let rx = target.receiver_for_child::<u64>(&Options::new(), &mut cmd);
    let child = Reaped::new(cmd.spawn().expect("spawn the sender"));
    drop(cmd);
    assert_eq!(next(&rx, setup), Some(1), "{setup:?}: the child's message");
    assert_drained(&rx, setup);
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill");
    let killed = Instant::now();
    assert!(
        readable(rx.as_fd(), Duration::from_secs(2)),
        "{setup:?}: not readable within 2 s of the sender's death"
    );
    assert_eq!(next(&rx, setup), None, "{setup:?}: Disconnected");
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "{setup:?}: the end took {took:?}"
    );
    let _ = child.wait(PATIENCE, "the killed sender");
}
