//! Scenarios 13, 14 and 15: sharing one end between threads, and room after one receive.
//!
//! Both halves are `Send + Sync`: a `Sender` may be cloned or shared by reference
//! (`Arc<Sender<T>>`), a `Receiver` shared by reference (`Arc<Receiver<T>>`). However an end
//! is shared, `try_send`/`try_recv` never wait for another thread, and every timeout holds.
//! Each timing bound is the promise's bound with generous slack (the machine may be busy),
//! never a performance target: "returns within 500 ms while another thread is blocked".

use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use conduit::{Options, Receiver, RecvTimeoutError, Sender, TrySendError};

use crate::common::{self, Reaped};
use crate::messages::Bytes;
use crate::setup::{join, within, Pair, Setup, PATIENCE};

/// Payload bytes of a small message. Its encoding is 120 bytes (a one-byte length, then the
/// bytes), so in a shared-memory ring it takes a frame of exactly 128 bytes (an 8-byte
/// header, then the encoding padded to 8), which divides every ring size: frames never wrap
/// and no padding frame is ever needed. With a size that leaves a gap at the ring's end, a
/// frame at the wrap needs the gap, its own bytes and the next frame's 8-byte header slot,
/// which the oldest frame alone does not free; then one receive cannot always make room.
const LEN: usize = 119;
/// A message far larger than any buffer here (4 KiB rings and socket buffers, a 64 KiB
/// pipe, a TCP receive buffer that does not grow while nobody reads): a `send` of it stays
/// blocked until the receiver reads.
const BIG: usize = 1 << 20;
/// The most `try_send`s before the buffer must report `Full` (about 12 MiB).
const FILL_LIMIT: u64 = 100_000;
/// How long a blocking call must keep blocking before it counts as blocked.
const SETTLE: Duration = Duration::from_millis(200);
/// The bound on a call that must not wait (`try_send`, `try_recv`).
const PROMPT: Duration = Duration::from_millis(500);
/// Slack on top of a timeout before it counts as not held.
const SLACK: Duration = Duration::from_millis(1400);
/// A timeout long enough that its call stays blocked for the whole measurement.
const LONG: Duration = Duration::from_secs(10);
/// The short timeouts measured (`send_timeout`, `recv_timeout`).
const SHORT_SEND: Duration = Duration::from_millis(200);
const SHORT_RECV: Duration = Duration::from_millis(100);
/// How long room may take to show after one receive (a kernel or a ring may need a moment).
const ROOM_WAIT: Duration = Duration::from_secs(2);

/// Message `id` of `len` bytes: the id in its first 8 bytes, then content derived from it.
fn msg(id: u64, len: usize) -> Bytes {
    let mut body = common::content(id, len);
    body[..8].copy_from_slice(&id.to_le_bytes());
    Bytes(body)
}

/// The id of a received message, failing the test if its content is not `msg(id, len)`.
fn id_of(setup: Setup, m: &Bytes) -> u64 {
    let id = u64::from_le_bytes(m.0[..8].try_into().expect("8 bytes"));
    assert!(
        m.0 == msg(id, m.0.len()).0,
        "{setup:?}: message {id} damaged"
    );
    id
}

/// Small buffers: 4 messages for threads, 4 KiB of socket buffer, pipe or ring otherwise.
fn small(setup: Setup) -> Options {
    Options::new().capacity(if setup.is_stream() { 4096 } else { 4 })
}

/// Sends `msg(0, LEN)`, `msg(1, LEN)`, … with `try_send` until `Full`; returns how many went in.
fn fill(setup: Setup, tx: &Sender<Bytes>) -> u64 {
    let tx = tx.clone();
    within(
        PATIENCE,
        &format!("{setup:?}: filling with try_send"),
        move || {
            for id in 0..FILL_LIMIT {
                match tx.try_send(msg(id, LEN)) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => return id,
                    Err(e) => panic!("{setup:?}: try_send {id} while filling: {e}"),
                }
            }
            panic!("{setup:?}: no Full after {FILL_LIMIT} try_sends")
        },
    )
}

/// Receives until `Disconnected` (every sender gone), checking each message; the ids in
/// arrival order.
fn drain(setup: Setup, rx: &Receiver<Bytes>) -> Vec<u64> {
    let mut ids = Vec::new();
    loop {
        match rx.recv_timeout(PATIENCE) {
            Ok(m) => ids.push(id_of(setup, &m)),
            Err(RecvTimeoutError::Disconnected) => return ids,
            Err(e) => panic!("{setup:?}: draining, after {} messages: {e:?}", ids.len()),
        }
    }
}

/// What a call returned, in short: `"Ok"`, or the error's `Debug` form (`"Full(..)"`,
/// `"Timeout(..)"`, `"Empty"`, `"Timeout"`, `"Disconnected"`, …; never the message).
fn got<T, E: std::fmt::Debug>(r: Result<T, E>) -> String {
    r.map_or_else(|e| format!("{e:?}"), |_| "Ok".to_string())
}

/// A call running on its own thread, timed there, so the test can look at it without ever
/// waiting on it for longer than it chooses.
struct Call {
    done: mpsc::Receiver<(String, Duration)>,
    thread: Option<JoinHandle<()>>,
    outcome: Option<(String, Duration)>,
}

impl Call {
    fn start(f: impl FnOnce() -> String + Send + 'static) -> Call {
        let (tx, done) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let got = f();
            let _ = tx.send((got, start.elapsed()));
        });
        Call {
            done,
            thread: Some(thread),
            outcome: None,
        }
    }

    /// Whether the call has returned, waiting at most `limit` for it.
    fn returned_within(&mut self, limit: Duration) -> bool {
        if self.outcome.is_none() {
            match self.done.recv_timeout(limit) {
                Ok(outcome) => self.outcome = Some(outcome),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // The call panicked: re-raise its panic.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    join(self.thread.take().expect("joined once"));
                }
            }
        }
        self.outcome.is_some()
    }

    /// What the call returned and how long it took, failing if it still runs after `limit`.
    fn outcome(mut self, limit: Duration, what: &str) -> (String, Duration) {
        assert!(
            self.returned_within(limit),
            "{what}: still blocked after {limit:?}"
        );
        join(self.thread.take().expect("joined once"));
        self.outcome.take().expect("returned")
    }
}

/// A sender's call that blocks: on a full buffer, `send` or `send_timeout(LONG)` of `BIG`.
#[derive(Clone, Copy, Debug)]
enum Blocker {
    Send,
    SendTimeout,
}

/// The call measured beside it: `try_send` or `send_timeout(SHORT_SEND)` of a small message.
#[derive(Clone, Copy, Debug)]
enum Probe {
    TrySend,
    SendTimeout,
}

/// Fills a small buffer, blocks one sender in `blocker`, and measures `probe` on another
/// clone (`shared == false`) or on the very same sender from another thread (`Arc`); then
/// drains, and checks every message arrived once, intact.
fn beside_a_blocked_sender(setup: Setup, shared: bool, blocker: Blocker, probe: Probe) {
    let Pair { tx, rx, .. } = setup.pair_with::<Bytes>(&small(setup));
    let n = fill(setup, &tx);
    let (a, b) = if shared {
        let tx = Arc::new(tx);
        (tx.clone(), tx)
    } else {
        (Arc::new(tx.clone()), Arc::new(tx))
    };
    let mut blocked = Call::start(move || match blocker {
        Blocker::Send => got(a.send(msg(n, BIG))),
        Blocker::SendTimeout => got(a.send_timeout(msg(n, BIG), LONG)),
    });
    assert!(
        !blocked.returned_within(SETTLE),
        "{setup:?}: {blocker:?} of {BIG} bytes on a full buffer returned at once"
    );
    let mut probed = Call::start(move || match probe {
        Probe::TrySend => got(b.try_send(msg(n + 1, LEN))),
        Probe::SendTimeout => got(b.send_timeout(msg(n + 1, LEN), SHORT_SEND)),
    });
    let bound = match probe {
        Probe::TrySend => PROMPT,
        Probe::SendTimeout => SHORT_SEND + SLACK,
    };
    let prompt = probed.returned_within(bound);
    let still_blocked = !blocked.returned_within(Duration::ZERO);
    // Whatever happened, drain: the blocked send completes, then a stuck probe returns.
    let ids = drain(setup, &rx);
    let (big, _) = blocked.outcome(PATIENCE, &format!("{setup:?}: the blocked {blocker:?}"));
    let (got, took) = probed.outcome(PATIENCE, &format!("{setup:?}: {probe:?}"));
    let sharing = ["another clone", "the same sender on another thread"][usize::from(shared)];
    assert!(
        prompt,
        "{setup:?}: {probe:?} did not return within {bound:?} while {sharing} was blocked in \
         {blocker:?} on a full buffer; it returned {got:?} after {took:?}, once the receiver \
         drained"
    );
    assert!(
        still_blocked,
        "{setup:?}: the {blocker:?} beside returned during the measurement"
    );
    assert_eq!(big, "Ok", "{setup:?}: the blocked {blocker:?}");
    match (probe, got.as_str()) {
        (Probe::TrySend, "Ok" | "Full(..)") | (Probe::SendTimeout, "Ok") => {}
        (Probe::SendTimeout, "Timeout(..)") => assert!(
            took >= SHORT_SEND,
            "{setup:?}: send_timeout({SHORT_SEND:?}) gave up after {took:?}"
        ),
        _ => panic!("{setup:?}: {probe:?} on a full buffer returned {got:?}"),
    }
    let mut expected: Vec<u64> = (0..=n).collect();
    if got == "Ok" {
        expected.push(n + 1);
    }
    let mut sorted = ids;
    sorted.sort_unstable();
    assert_eq!(sorted, expected, "{setup:?}: messages received");
}

/// Scenario 13: `try_send` on a clone returns (`Full` or `Ok`) within 500 ms while another
/// clone is blocked in `send` on a full buffer.
pub fn try_send_beside_a_blocked_send(setup: Setup) {
    beside_a_blocked_sender(setup, false, Blocker::Send, Probe::TrySend);
}

/// Scenario 13: the same while the other clone is blocked in `send_timeout(10 s)`.
pub fn try_send_beside_a_blocked_send_timeout(setup: Setup) {
    beside_a_blocked_sender(setup, false, Blocker::SendTimeout, Probe::TrySend);
}

/// Scenario 13: `try_send` on a sender shared by reference (`Arc<Sender<T>>`) returns within
/// 500 ms while another thread is blocked in `send` on the same sender.
pub fn try_send_on_a_shared_blocked_sender(setup: Setup) {
    beside_a_blocked_sender(setup, true, Blocker::Send, Probe::TrySend);
}

/// Scenario 13: `send_timeout(200 ms)` on a clone returns within 1.5 s (`Timeout`, or `Ok`)
/// while another clone is blocked in `send` for as long as nobody receives.
pub fn send_timeout_beside_a_blocked_send(setup: Setup) {
    beside_a_blocked_sender(setup, false, Blocker::Send, Probe::SendTimeout);
}

/// Scenario 13: the same on one sender shared by reference by two threads.
pub fn send_timeout_on_a_shared_blocked_sender(setup: Setup) {
    beside_a_blocked_sender(setup, true, Blocker::Send, Probe::SendTimeout);
}

/// Blocks one thread in `recv` (`long == false`) or `recv_timeout(10 s)` on an empty
/// channel, and measures `try_recv` (`Empty` within 500 ms) or `recv_timeout(100 ms)`
/// (`Timeout` within 1.5 s) on another thread sharing the receiver through an `Arc`.
fn beside_a_blocked_receiver(setup: Setup, long: bool, try_recv: bool) {
    let Pair { tx, rx, .. } = setup.pair::<Bytes>();
    let rx = Arc::new(rx);
    let a = rx.clone();
    let blocker = if long { "recv_timeout(10s)" } else { "recv" };
    let mut blocked = Call::start(move || {
        if long {
            got(a.recv_timeout(LONG))
        } else {
            got(a.recv())
        }
    });
    assert!(
        !blocked.returned_within(SETTLE),
        "{setup:?}: {blocker} on an empty channel returned at once"
    );
    let (probe, bound, expect) = if try_recv {
        ("try_recv", PROMPT, "Empty")
    } else {
        ("recv_timeout(100ms)", SHORT_RECV + SLACK, "Timeout")
    };
    let mut probed = Call::start(move || {
        if try_recv {
            got(rx.try_recv())
        } else {
            got(rx.recv_timeout(SHORT_RECV))
        }
    });
    let prompt = probed.returned_within(bound);
    let still_blocked = !blocked.returned_within(Duration::ZERO);
    // The last sender gone: the blocked receive ends with `Disconnected`.
    drop(tx);
    let (ended, _) = blocked.outcome(PATIENCE, &format!("{setup:?}: the blocked {blocker}"));
    let (got, took) = probed.outcome(PATIENCE, &format!("{setup:?}: {probe}"));
    assert!(
        prompt,
        "{setup:?}: {probe} did not return within {bound:?} while another thread sharing the \
         receiver was blocked in {blocker}; it returned {got:?} after {took:?}, once the \
         sender was dropped"
    );
    assert!(
        still_blocked,
        "{setup:?}: the {blocker} beside returned ({ended:?}) with nothing sent"
    );
    assert_eq!(got, expect, "{setup:?}: {probe} on an empty channel");
    assert!(
        took >= if try_recv { Duration::ZERO } else { SHORT_RECV },
        "{setup:?}: {probe} gave up after {took:?}"
    );
    assert_eq!(
        ended, "Disconnected",
        "{setup:?}: {blocker} after the sender dropped"
    );
}

/// Scenario 14: `try_recv` is `Empty` within 500 ms while another thread sharing the receiver
/// is blocked in `recv`.
pub fn try_recv_beside_a_blocked_recv(setup: Setup) {
    beside_a_blocked_receiver(setup, false, true);
}

/// Scenario 14: the same while the other thread is blocked in `recv_timeout(10 s)`.
pub fn try_recv_beside_a_blocked_recv_timeout(setup: Setup) {
    beside_a_blocked_receiver(setup, true, true);
}

/// Scenario 14: `recv_timeout(100 ms)` is `Timeout` within 1.5 s while another thread sharing
/// the receiver is blocked in `recv`.
pub fn recv_timeout_beside_a_blocked_recv(setup: Setup) {
    beside_a_blocked_receiver(setup, false, false);
}

/// Scenario 14: the same while the other thread is blocked in `recv_timeout(10 s)`.
pub fn recv_timeout_beside_a_blocked_recv_timeout(setup: Setup) {
    beside_a_blocked_receiver(setup, true, false);
}

/// Scenario 14: four threads receiving at once from one shared receiver (`recv_timeout` in
/// a loop) get every message exactly once, intact, and each sees every producer's messages
/// in order. Producers: two clones, and for bound setups a sender connected on its own;
/// every tenth message is 10 KiB, more than one piece in a 4 KiB ring.
pub fn shared_receiver_takes_each_message_once(setup: Setup) {
    const PER: u64 = 500;
    const RECEIVERS: usize = 4;
    let pair = setup.pair_with::<Bytes>(&small(setup));
    let mut senders = vec![pair.tx.clone()];
    senders.extend(pair.connect());
    let Pair { tx, rx, .. } = pair;
    senders.push(tx);
    let producers = senders.len() as u64;
    let len = |seq: u64| if seq % 10 == 0 { 10 << 10 } else { LEN };
    let sending: Vec<_> = (0..producers)
        .zip(senders)
        .map(|(p, tx)| {
            std::thread::spawn(move || {
                for seq in 0..PER {
                    let sent = tx.send(msg(p << 32 | seq, len(seq)));
                    sent.unwrap_or_else(|e| panic!("{setup:?}: producer {p}, {seq}: {e}"));
                }
            })
        })
        .collect();
    let rx = Arc::new(rx);
    let start = Instant::now();
    let receiving: Vec<_> = (0..RECEIVERS)
        .map(|_| {
            let rx = rx.clone();
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                loop {
                    match rx.recv_timeout(Duration::from_millis(50)) {
                        Ok(m) => ids.push(id_of(setup, &m)),
                        Err(RecvTimeoutError::Timeout) => assert!(
                            start.elapsed() < 3 * PATIENCE,
                            "{setup:?}: no Disconnected after {:?}",
                            3 * PATIENCE
                        ),
                        Err(RecvTimeoutError::Disconnected) => return ids,
                        Err(e) => panic!("{setup:?}: recv_timeout: {e:?}"),
                    }
                }
            })
        })
        .collect();
    sending.into_iter().for_each(join);
    let mut all = Vec::new();
    for ids in receiving.into_iter().map(join) {
        for p in 0..producers {
            let seqs: Vec<u64> = ids.iter().filter(|&&id| id >> 32 == p).copied().collect();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "{setup:?}: one thread saw producer {p}'s messages out of order"
            );
        }
        all.extend(ids);
    }
    all.sort_unstable();
    let expected: Vec<u64> = (0..producers)
        .flat_map(|p| (0..PER).map(move |seq| p << 32 | seq))
        .collect();
    assert_eq!(all.len(), expected.len(), "{setup:?}: messages received");
    assert!(all == expected, "{setup:?}: lost or duplicated messages");
}

/// Scenario 15: one receive from a full buffer makes room for the next send of the same
/// size. Fill with `try_send` until `Full`; then, round after round (two laps of a ring),
/// the receiver takes one message and `try_send` of one more must succeed within 2 s without
/// the receiver taking more. Stream receivers read ahead (one read of up to 64 KiB) into
/// their own buffer, which empties the kernel's, so after the first round a stream has room
/// to spare; a ring has exactly one frame's room more after each receive.
pub fn one_recv_makes_room(setup: Setup) {
    assert_eq!(
        conduit::__testing::encode(&msg(0, LEN)).len(),
        120,
        "frame size"
    );
    let pair = setup.pair_with::<Bytes>(&small(setup));
    let n = fill(setup, &pair.tx);
    assert!(n >= 2, "{setup:?}: Full after {n} messages");
    let rounds = 2 * n.min(64) + 1;
    let what = format!("{setup:?}: one receive, then try_send");
    let Pair { tx, rx, .. } = pair;
    let rx = within(3 * PATIENCE, &what, move || {
        for r in 0..rounds {
            match rx.recv_timeout(PATIENCE) {
                Ok(m) => assert_eq!(id_of(setup, &m), r, "{setup:?}: in order"),
                Err(e) => panic!("{setup:?}: round {r}: receiving from a full buffer: {e:?}"),
            }
            let start = Instant::now();
            let mut attempts = 0;
            loop {
                attempts += 1;
                match tx.try_send(msg(n + r, LEN)) {
                    Ok(()) => break,
                    Err(TrySendError::Full(_)) if start.elapsed() < ROOM_WAIT => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(TrySendError::Full(_)) => panic!(
                        "{setup:?}: round {r}: the receiver took one of {n} messages from a \
                         full buffer, yet try_send of one the same size still reported Full \
                         after {ROOM_WAIT:?} ({attempts} attempts)"
                    ),
                    Err(e) => panic!("{setup:?}: round {r}: try_send: {e}"),
                }
            }
        }
        rx
    });
    let rest = drain(setup, &rx);
    assert!(
        rest.iter().copied().eq(rounds..n + rounds),
        "{setup:?}: the rest, in order"
    );
}

/// The child role of `request_ack_across_processes`.
const REQUESTER: &str = "sharing-requester";
/// Where the child finds the acknowledgement channel's address.
const ACK_ENV: &str = "CDT_ACK_ADDR";
/// The child's first acknowledgement: proof that it runs the scenario (a mistyped role or
/// test name would make it run no test at all, and exit 0).
const HELLO: u64 = 0x5348_4152_494e_4721;
/// Requests sent one-for-one after the buffer is full: two laps of a 4 KiB ring.
const ROUNDS: u64 = 64;

/// Scenario 15 across processes: a request/acknowledge protocol. A child process fills the
/// request channel (4 KiB) with `try_send` until `Full` and reports how many went in; then,
/// for each further request, spins on `try_send` until it goes in and acknowledges it on a
/// second channel. The parent takes one request, then waits for the acknowledgement before
/// taking the next: a receive that does not make room deadlocks the two.
pub fn request_ack_across_processes(setup: Setup) {
    if common::role().as_deref() == Some(REQUESTER) {
        return requester(setup);
    }
    let target = setup.process_target();
    let ack_addr = common::unix_addr();
    let acks = Receiver::<u64>::bind(&ack_addr).expect("bind the ack channel");
    let test = format!("sharing_tests::request_ack_across_processes::{setup:?}");
    let mut cmd = common::child_command(&test, REQUESTER);
    common::die_with_parent(&mut cmd);
    cmd.env(ACK_ENV, &ack_addr);
    let requests = target.receiver_for_child::<Bytes>(&small(setup), &mut cmd);
    let child = Reaped::new(cmd.spawn().expect("spawn the requester"));
    // No copy of an inherited sender may stay here, or the end would never show.
    drop(cmd);
    let ack = |what: &str| match acks.recv_timeout(Duration::from_secs(5)) {
        Ok(v) => v,
        Err(e) => panic!("{setup:?}: no acknowledgement from the child within 5 s {what} ({e:?})"),
    };
    let take = |id: u64| match requests.recv_timeout(PATIENCE) {
        Ok(m) => assert_eq!(id_of(setup, &m), id, "{setup:?}: requests in order"),
        Err(e) => panic!("{setup:?}: request {id}: {e:?}"),
    };
    assert_eq!(ack("at its start"), HELLO, "{setup:?}: the child's hello");
    let n = ack("after filling the request channel");
    assert!(
        n >= 2,
        "{setup:?}: the child's requests filled the buffer after {n}"
    );
    for r in 0..ROUNDS {
        take(r);
        let got = ack(&format!(
            "after the parent took request {r} of a full buffer (a deadlock: the child's \
             try_send still finds no room)"
        ));
        assert_eq!(got, n + r, "{setup:?}: the request acknowledged");
    }
    (ROUNDS..n + ROUNDS).for_each(take);
    match requests.recv_timeout(PATIENCE) {
        Err(RecvTimeoutError::Disconnected) => {}
        Ok(m) => panic!("{setup:?}: unexpected request {}", id_of(setup, &m)),
        Err(e) => panic!("{setup:?}: after the last request: {e:?}"),
    }
    child.expect_success(PATIENCE, &format!("{setup:?}: the requester"));
}

/// The child of `request_ack_across_processes`: fills, then sends one-for-one.
fn requester(setup: Setup) {
    common::child_watchdog(Duration::from_secs(60));
    let requests = common::sender_from_parent::<Bytes>(&small(setup)).expect("the requests");
    let ack_addr = std::env::var(ACK_ENV).expect("the ack channel's address");
    let acks = Sender::<u64>::connect(&ack_addr).expect("connect the ack channel");
    acks.send(HELLO).expect("hello");
    let n = fill(setup, &requests);
    acks.send(n).expect("ack");
    for id in n..n + ROUNDS {
        let start = Instant::now();
        loop {
            match requests.try_send(msg(id, LEN)) {
                Ok(()) => break,
                Err(TrySendError::Full(_)) if start.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_micros(100))
                }
                Err(e) => panic!("child: request {id}: {e}"),
            }
        }
        acks.send(id).expect("ack");
    }
}
