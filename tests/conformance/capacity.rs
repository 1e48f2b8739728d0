//! Scenarios 5 and 6: a full buffer (`try_send`, `send_timeout`) and an empty one
//! (`try_recv`, `recv_timeout`).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use conduit::{Options, RecvTimeoutError, SendTimeoutError, TryRecvError, TrySendError};

use crate::messages::{big_pattern, Bytes};
use crate::setup::{join, within, Setup, PATIENCE};

type Msg = (u32, Vec<u8>);

fn msg(i: u32) -> Msg {
    (i, vec![i as u8; 100])
}

/// The most messages a filler may send before the buffer must report `Full`: about 10 MiB,
/// beyond any kernel buffer involved (TCP's receive buffer does not grow while nobody reads).
const FILL_LIMIT: u32 = 100_000;
/// The capacity asked for: messages for threads, bytes of kernel buffer for streams, bytes
/// of ring for shared memory (4096 is the smallest ring).
const THREAD_CAPACITY: usize = 4;
const STREAM_CAPACITY: usize = 4096;

/// Shared memory: how many of `msg(0)`, `msg(1)`, … an empty ring of `capacity` bytes holds.
/// Each takes a frame of an 8-byte header and its encoding padded to 8 bytes; the ring
/// starts at offset 0, so the first lap needs no wrap padding.
fn shm_fits(capacity: usize) -> u32 {
    let mut used = 0;
    let mut n = 0;
    loop {
        let frame = 8 + conduit::__testing::encode(&msg(n))
            .len()
            .next_multiple_of(8);
        if used + frame > capacity {
            return n;
        }
        used += frame;
        n += 1;
    }
}

enum Report {
    /// `try_send` reported `Full` after this many messages.
    Full(u32),
    /// `try_send` succeeded again after this many attempts.
    Room(u32),
}

/// Scenario 5: `try_send` fills a small buffer until `Full` (the message handed back),
/// `send_timeout` then times out (TCP may find room); once the receiver takes messages,
/// `try_send` succeeds again.
pub fn try_send_full_then_room(setup: Setup) {
    let capacity = if setup.is_stream() {
        STREAM_CAPACITY
    } else {
        THREAD_CAPACITY
    };
    let pair = setup.pair_with::<Msg>(&Options::new().capacity(capacity));
    let (report_tx, report_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let tx = pair.tx.clone();
    // The filler runs on its own thread so that a `try_send` that blocks fails the test
    // instead of hanging it.
    let filler = std::thread::spawn(move || {
        let mut n = 0;
        loop {
            assert!(
                n < FILL_LIMIT,
                "{setup:?}: no Full after {FILL_LIMIT} try_sends"
            );
            match tx.try_send(msg(n)) {
                Ok(()) => n += 1,
                Err(TrySendError::Full(m)) => {
                    assert!(m == msg(n), "{setup:?}: Full handed back another message");
                    break;
                }
                Err(e) => panic!("{setup:?}: try_send {n}: expected Ok or Full, got {e:?}"),
            }
        }
        let timeout = Duration::from_millis(50);
        let start = Instant::now();
        let result = tx.send_timeout(msg(n), timeout);
        let took = start.elapsed();
        assert!(
            took < timeout + Duration::from_secs(1),
            "{setup:?}: send_timeout({timeout:?}) took {took:?}"
        );
        match result {
            Err(SendTimeoutError::Timeout(m)) => {
                assert!(
                    m == msg(n),
                    "{setup:?}: Timeout handed back another message"
                );
                assert!(
                    took >= timeout,
                    "{setup:?}: send_timeout gave up after {took:?}, before {timeout:?}"
                );
            }
            // TCP keeps moving its send buffer into the peer's receive buffer in the
            // background, so room can reappear while a send waits.
            Ok(()) if setup == Setup::Tcp => n += 1,
            other => panic!("{setup:?}: send_timeout on a full channel: {other:?}"),
        }
        report_tx.send(Report::Full(n)).unwrap();
        go_rx.recv().unwrap();
        // Room frees as the receiver reads; TCP learns of it asynchronously, so allow a
        // bounded wait.
        let start = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            match tx.try_send(msg(n)) {
                Ok(()) => break,
                Err(TrySendError::Full(_)) if start.elapsed() < Duration::from_secs(5) => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("{setup:?}: try_send after the receiver took messages: {e:?}"),
            }
        }
        report_tx.send(Report::Room(attempts)).unwrap();
    });
    // `None`: the filler panicked (its panic is re-raised by `join`).
    let wait = |what: &str| match report_rx.recv_timeout(PATIENCE) {
        Ok(report) => Some(report),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{setup:?}: {what}: blocked for {PATIENCE:?} (try_send must never wait)")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => None,
    };
    let n = match wait("filling with try_send") {
        Some(Report::Full(n)) => n,
        Some(Report::Room(_)) => panic!("{setup:?}: reports out of order"),
        None => {
            join(filler);
            unreachable!("the filler panicked")
        }
    };
    assert!(n >= 1, "{setup:?}: Full before the first message");
    if !setup.is_stream() {
        assert_eq!(
            n as usize, THREAD_CAPACITY,
            "{setup:?}: capacity in messages"
        );
    }
    // Shared memory: the capacity is the ring's bytes, and nothing else buffers, so the
    // count is exact (unlike kernel buffers, whose accounting is the kernel's).
    if setup.is_shm() {
        assert_eq!(
            n,
            shm_fits(STREAM_CAPACITY),
            "{setup:?}: messages of 8-byte header + padded payload in a {STREAM_CAPACITY}-byte ring"
        );
    }
    let taken = (n / 2).max(1);
    for i in 0..taken {
        assert!(
            pair.recv_ok() == msg(i),
            "{setup:?}: message {i} while full"
        );
    }
    go_tx.send(()).unwrap();
    let attempts = match wait("try_send after the receiver took messages") {
        Some(Report::Room(attempts)) => attempts,
        Some(Report::Full(_)) => panic!("{setup:?}: reports out of order"),
        None => {
            join(filler);
            unreachable!("the filler panicked")
        }
    };
    // Threads and shared memory free room synchronously as the receiver takes messages.
    if !setup.is_stream() || setup.is_shm() {
        assert_eq!(attempts, 1, "{setup:?}: room must be there at once");
    }
    join(filler);
    for i in taken..=n {
        assert!(
            pair.recv_ok() == msg(i),
            "{setup:?}: message {i} after room"
        );
    }
    assert!(
        matches!(pair.rx.try_recv(), Err(TryRecvError::Empty)),
        "{setup:?}: everything taken, still live: Empty"
    );
}

/// Asserts `recv_timeout(t)` on an empty channel reports `Timeout` after about `t`.
fn assert_times_out(setup: Setup, rx: &conduit::Receiver<u64>, when: &str) {
    let timeout = Duration::from_millis(250);
    let slack = Duration::from_secs(1);
    let start = Instant::now();
    let r = rx.recv_timeout(timeout);
    let took = start.elapsed();
    assert!(
        matches!(r, Err(RecvTimeoutError::Timeout)),
        "{setup:?}: recv_timeout on an empty channel ({when}): {:?}",
        r.map(|_| "a message")
    );
    assert!(
        took >= timeout,
        "{setup:?}: Timeout after {took:?}, before {timeout:?} ({when})"
    );
    assert!(
        took < timeout + slack,
        "{setup:?}: Timeout after {took:?}, far beyond {timeout:?} ({when})"
    );
}

/// Scenario 6: On an empty connected channel `try_recv` is `Empty` and `recv_timeout` is `Timeout`
/// after about the timeout; a message arriving during the wait ends it.
pub fn recv_timeout_and_try_recv_on_empty(setup: Setup) {
    let pair = setup.pair::<u64>();
    assert!(
        matches!(pair.rx.try_recv(), Err(TryRecvError::Empty)),
        "{setup:?}: try_recv before any message"
    );
    assert_times_out(setup, &pair.rx, "before any message");

    pair.tx.send(1).unwrap();
    assert_eq!(pair.recv_ok(), 1);
    assert!(
        matches!(pair.rx.try_recv(), Err(TryRecvError::Empty)),
        "{setup:?}: try_recv after the only message was taken"
    );
    assert_times_out(setup, &pair.rx, "after a message was taken");

    // A message sent while recv_timeout waits wakes it well before the timeout.
    let tx = pair.tx.clone();
    let late = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        tx.send(2).unwrap();
    });
    let start = Instant::now();
    let r = pair.rx.recv_timeout(PATIENCE);
    assert_eq!(r.ok(), Some(2), "{setup:?}: a message sent during the wait");
    assert!(
        start.elapsed() < PATIENCE / 2,
        "{setup:?}: woke only after {:?}",
        start.elapsed()
    );
    join(late);
    assert!(
        matches!(pair.rx.try_recv(), Err(TryRecvError::Empty)),
        "{setup:?}: a clone is alive (the original sender): Empty"
    );
}

/// Scenario 5 (cont.): `try_send` of a message larger than the whole buffer. Once its first
/// piece is in, it is committed: `try_send` reports `Ok` and the rest follows later (with
/// the next send, or in the background after the last clone drops); a later `try_send` that
/// cannot get the rest out reports `Full` for its own message. Whatever was accepted arrives
/// whole and in order, then `Disconnected`; nothing refused ever arrives.
pub fn try_send_larger_than_the_buffer(setup: Setup) {
    const BIG: usize = 100 << 10;
    const MAX_TRIES: u32 = 200;
    type Big = (u32, Bytes);
    let body = |i: u32| {
        let len = if i % 2 == 0 { BIG } else { 100 };
        big_pattern(u64::from(i), len)
    };
    let pair = setup.pair_with::<Big>(&Options::new().capacity(STREAM_CAPACITY));
    let tx = pair.tx;
    let accepted = within(PATIENCE, &format!("{setup:?}: try_send (never waits)"), {
        move || {
            let mut accepted = Vec::new();
            for i in 0..MAX_TRIES {
                match tx.try_send((i, Bytes(body(i)))) {
                    Ok(()) => accepted.push(i),
                    Err(TrySendError::Full((j, Bytes(back)))) => {
                        assert!(j == i && back == body(i), "{setup:?}: Full handed back");
                        break;
                    }
                    Err(e) => panic!("{setup:?}: try_send {i}: {e:?}"),
                }
            }
            accepted
        }
    });
    assert!(
        !accepted.is_empty(),
        "{setup:?}: an empty buffer took nothing"
    );
    // Shared memory: the first 100 KiB message fills the 4 KiB ring with its first pieces
    // and is committed; the next `try_send` finds no room for the rest: `Full`.
    if setup.is_shm() {
        assert_eq!(accepted, [0], "{setup:?}: committed, then Full");
    }
    let rx = pair.rx;
    within(PATIENCE * 2, &format!("{setup:?}: draining"), move || {
        for &i in &accepted {
            match rx.recv() {
                Ok((j, Bytes(got))) => {
                    assert_eq!(j, i, "{setup:?}: accepted messages in order");
                    assert!(got == body(i), "{setup:?}: message {i} damaged");
                }
                Err(e) => panic!("{setup:?}: accepted message {i} lost: {e:?}"),
            }
        }
        match rx.recv() {
            Err(conduit::RecvError::Disconnected) => {}
            Ok((j, _)) => panic!("{setup:?}: message {j} arrived though it was refused"),
            Err(e) => panic!("{setup:?}: after the accepted messages: {e:?}"),
        }
    });
}
