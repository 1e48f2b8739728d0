//! loom models of the ring core (tokio's `loom_*.rs` pattern): every interleaving of the
//! producer and consumer, within `LOOM_MAX_PREEMPTIONS`, for each scenario. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib loom`.
//!
//! Sleeping is modelled with `loom::sync::Notify` (a permit, like the wake-up byte the shm flavor
//! polls): a lost wake-up leaves a thread blocked forever, which loom reports as a deadlock.

use loom::sync::{Arc, Notify};
use loom::thread;

use super::core::{Consumer, Producer, RingError, Taken};
use super::HeapRing;

const CAP: usize = 4096;

struct Shared {
    ring: HeapRing,
    /// Wakes the consumer (a byte on the connection, in the shm flavor).
    data: Notify,
    /// Wakes the producer (likewise).
    space: Notify,
}

fn shared() -> Arc<Shared> {
    Arc::new(Shared {
        ring: HeapRing::new(CAP),
        data: Notify::new(),
        space: Notify::new(),
    })
}

fn msg(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 7 + j) as u8).collect()
}

/// Why a model's producer stopped.
#[derive(Debug)]
enum Stop {
    Closed,
    Corrupted,
}

impl From<RingError> for Stop {
    fn from(_: RingError) -> Stop {
        Stop::Corrupted
    }
}

/// The shm flavor's sleep on a full ring without its spinning and its socket: the loop and
/// the announce/check/sleep/end sequence are the production functions.
fn wait_for_space(p: &mut Producer, s: &Shared, len: usize) -> Result<(), Stop> {
    if p.consumer_closed() {
        return Err(Stop::Closed);
    }
    p.sleep_for_room(len, || {
        s.space.wait();
        Ok(())
    })
}

/// Sends every message with the production piece loop, sleeping on a full ring.
fn send_all(s: &Shared, p: &mut Producer, messages: &[Vec<u8>]) {
    for m in messages {
        let (done, result) =
            p.push_pieces(m, || s.data.notify(), |p, len| wait_for_space(p, s, len));
        result.unwrap();
        assert_eq!(done, m.len());
    }
}

fn produce(s: &Shared, messages: &[Vec<u8>], close: bool) {
    let mut p = Producer::new(s.ring.ring()).unwrap();
    send_all(s, &mut p, messages);
    if close && p.close() {
        s.data.notify();
    }
}

/// Receives whole messages with the production loop until `Closed` (or `count` messages),
/// sleeping as the shm flavor's receiver does (announce, sleep unless something came, end).
fn consume(s: &Shared, count: usize) -> Vec<Vec<u8>> {
    let mut c = Consumer::new(s.ring.ring(), usize::MAX).unwrap();
    let mut got = Vec::new();
    let mut buf = Vec::new();
    while got.len() < count {
        match c.pop_message(&mut buf, || s.space.notify()).unwrap() {
            Taken::Message { .. } => got.push(std::mem::take(&mut buf)),
            Taken::Empty => {
                if c.prepare_wait().unwrap() {
                    s.data.wait();
                    c.end_wait();
                }
            }
            Taken::Closed => break,
        }
    }
    got
}

fn run(messages: Vec<Vec<u8>>) {
    let s = shared();
    let s2 = s.clone();
    let sent = messages.clone();
    let producer = thread::spawn(move || produce(&s2, &sent, true));
    let got = consume(&s, usize::MAX);
    producer.join().unwrap();
    assert_eq!(got, messages);
}

#[test]
fn loom_order_across_wraparound() {
    // Three 1.5 KiB messages in a 4 KiB ring: the third wraps behind a padding frame, and
    // the producer must wait for space, so both sleep paths are explored.
    loom::model(|| run((0..3).map(|i| msg(i, 1500)).collect()));
}

#[test]
fn loom_full_and_empty_edges() {
    // Two messages that exactly fill the ring (2048 + 2040 bytes, and the 8 the producer
    // keeps for the next header), then one more that must wait for space.
    loom::model(|| run(vec![msg(0, 2040), msg(1, 2032), msg(2, 8)]));
}

#[test]
fn loom_small_frames_wake_checks_in_batches() {
    // 708-byte frames: the consumer hands each frame's space back at once, but checks behind
    // a fence whether the producer sleeps only once 1 KiB has gathered (two frames), when a
    // plain load shows it waiting, or when it finds the ring empty; six frames overfill the
    // 4 KiB ring, so the producer must sleep until one of those checks wakes it.
    loom::model(|| run((0..6).map(|i| msg(i, 700)).collect()));
}

#[test]
fn loom_an_empty_ring_checks_what_a_batch_did_not() {
    // After the first frame (2000 bytes, a batch: checked at once) the second (900 bytes)
    // stays under the 1 KiB batch; the third needs 1196 bytes of padding to the end plus 2048
    // (and 8 for the next header), more than the 3196 the producer may see free. If the
    // producer sleeps for it, only the check when the consumer finds the ring empty (before
    // it sleeps itself) wakes it.
    loom::model(|| run(vec![msg(0, 1992), msg(1, 892), msg(2, 2040)]));
}

#[test]
fn loom_message_of_the_largest_piece() {
    loom::model(|| run(vec![msg(0, 2040), msg(1, 2040)]));
}

#[test]
fn loom_message_bigger_than_the_ring() {
    // 1.5 rings' worth in pieces: the consumer reassembles while the producer waits.
    loom::model(|| run(vec![msg(0, CAP * 3 / 2)]));
}

#[test]
fn loom_consumer_sleeps_and_is_woken() {
    // The consumer may announce its sleep at any point around the producer's publish; a
    // lost wake-up would leave it blocked in `wait` forever.
    loom::model(|| {
        let s = shared();
        let s2 = s.clone();
        let producer = thread::spawn(move || produce(&s2, &[msg(0, 16)], false));
        let got = consume(&s, 1);
        producer.join().unwrap();
        assert_eq!(got, vec![msg(0, 16)]);
    });
}

#[test]
fn loom_producer_sleeps_on_full_and_is_woken() {
    loom::model(|| {
        let s = shared();
        let s2 = s.clone();
        // Fill the ring first, so the producer's next push must sleep until the consumer
        // frees space.
        let sent = vec![msg(0, 2040), msg(1, 2032), msg(2, 64)];
        let producer = {
            let sent = sent.clone();
            thread::spawn(move || produce(&s2, &sent, false))
        };
        let got = consume(&s, 3);
        producer.join().unwrap();
        assert_eq!(got, sent);
    });
}

#[test]
fn loom_disconnect_while_the_consumer_sleeps() {
    // The producer closes without sending: the sleeping consumer must wake and see Closed.
    loom::model(|| {
        let s = shared();
        let s2 = s.clone();
        let producer = thread::spawn(move || produce(&s2, &[], true));
        let got = consume(&s, usize::MAX);
        producer.join().unwrap();
        assert!(got.is_empty());
    });
}

#[test]
fn loom_disconnect_while_the_producer_sleeps() {
    // The consumer closes while the producer waits on a full ring: the producer must wake.
    loom::model(|| {
        let s = shared();
        let s2 = s.clone();
        let producer = thread::spawn(move || {
            let mut p = Producer::new(s2.ring.ring()).unwrap();
            // Two of these fill the ring (with the 8 bytes kept for the next header).
            let message = msg(0, 2032);
            let mut pushed = 0;
            loop {
                let (_, result) = p.push_pieces(
                    &message,
                    || s2.data.notify(),
                    |p, len| wait_for_space(p, &s2, len),
                );
                match result {
                    Ok(()) => pushed += 1,
                    Err(Stop::Closed) => return pushed,
                    Err(Stop::Corrupted) => panic!("an honest ring is never corrupted"),
                }
            }
        });
        let c = Consumer::new(s.ring.ring(), usize::MAX).unwrap();
        if c.close() {
            s.space.notify();
        }
        assert_eq!(producer.join().unwrap(), 2);
    });
}

#[test]
fn loom_close_after_the_last_message_while_polling() {
    // The consumer never sleeps: it polls until it sees the producer closed. Whenever it
    // sees the close, the message committed before it must be there too.
    loom::model(|| {
        let s = shared();
        let s2 = s.clone();
        let producer = thread::spawn(move || produce(&s2, &[msg(0, 24)], true));
        let mut c = Consumer::new(s.ring.ring(), usize::MAX).unwrap();
        let mut buf = Vec::new();
        let mut got = Vec::new();
        loop {
            match c.pop_message(&mut buf, || s.space.notify()).unwrap() {
                Taken::Message { .. } => got.push(std::mem::take(&mut buf)),
                Taken::Empty => thread::yield_now(),
                Taken::Closed => break,
            }
        }
        producer.join().unwrap();
        assert_eq!(got, vec![msg(0, 24)]);
    });
}

#[test]
fn loom_a_new_producer_takes_the_ring_over() {
    // A hand-off (to a child process, through the socket that carries the ring): the first
    // producer stops without closing, the next one starts from the positions in the header
    // while the consumer keeps reading, and reuses space the consumer hands back.
    loom::model(|| {
        let s = shared();
        let s2 = s.clone();
        let first = vec![msg(0, 2032), msg(1, 1400)];
        let second = vec![msg(2, 1400)];
        let producers = {
            let (first, second) = (first.clone(), second.clone());
            thread::spawn(move || {
                let mut p = Producer::new(s2.ring.ring()).unwrap();
                send_all(&s2, &mut p, &first);
                // What the socket does in production: everything before the hand-off
                // happens before the new producer starts.
                thread::spawn(move || produce(&s2, &second, true))
                    .join()
                    .unwrap();
            })
        };
        let got = consume(&s, usize::MAX);
        producers.join().unwrap();
        assert_eq!(got, [first, second].concat());
    });
}

#[test]
fn loom_one_copy_claims_the_ring_after_a_fork() {
    // After a fork two processes hold the same producer; both try to claim the ring with the
    // token they share, and only the winner publishes, while the consumer reads on.
    loom::model(|| {
        let s = shared();
        let mut p = Producer::new(s.ring.ring()).unwrap();
        send_all(&s, &mut p, &[msg(0, 1500)]);
        let token = p.claim_token();
        // Each copy's producer is in the state the fork left it.
        let forked: Vec<Producer> = (0..2)
            .map(|_| Producer::new(s.ring.ring()).unwrap())
            .collect();
        let copies: Vec<_> = (1..3)
            .zip(forked)
            .map(|(i, mut p)| {
                let s = s.clone();
                thread::spawn(move || {
                    p.claim(token)?;
                    send_all(&s, &mut p, &[msg(i, 1500), msg(i + 2, 1500)]);
                    if p.close() {
                        s.data.notify();
                    }
                    Some(i)
                })
            })
            .collect();
        let got = consume(&s, usize::MAX);
        let winners: Vec<usize> = copies
            .into_iter()
            .filter_map(|c| c.join().unwrap())
            .collect();
        assert_eq!(winners.len(), 1, "exactly one copy claims the ring");
        let w = winners[0];
        assert_eq!(got, vec![msg(0, 1500), msg(w, 1500), msg(w + 2, 1500)]);
    });
}

#[test]
fn loom_pieces_written_in_runs_then_committed() {
    // The shm sender's direct encoding: each piece reserved larger than it turns out,
    // written in runs, and committed shrunk; three of them wrap the ring and the producer
    // must wait for space while the consumer copies earlier ones out.
    loom::model(|| {
        let s = shared();
        let s2 = s.clone();
        let sent: Vec<Vec<u8>> = (0..3).map(|i| msg(i, 1500)).collect();
        let producer = {
            let sent = sent.clone();
            thread::spawn(move || {
                let mut p = Producer::new(s2.ring.ring()).unwrap();
                for m in &sent {
                    let piece = loop {
                        if let Some(piece) = p.reserve(2000).unwrap() {
                            break piece;
                        }
                        wait_for_space(&mut p, &s2, 2000).unwrap();
                    };
                    let (a, b) = m.split_at(500);
                    p.write(&piece, 0, a);
                    p.write(&piece, a.len(), b);
                    if p.commit(piece.shrink(m.len()), true) {
                        s2.data.notify();
                    }
                }
                if p.close() {
                    s2.data.notify();
                }
            })
        };
        let got = consume(&s, usize::MAX);
        producer.join().unwrap();
        assert_eq!(got, sent);
    });
}

#[test]
fn loom_marked_messages_find_their_descriptors() {
    // The shm sender's messages with descriptors attached: the group goes on the socket (a
    // queue here), then the marker frame is committed, then the message. A consumer that
    // completes a marked message finds its group already there (passing the group only
    // after the message fails here), and only marked messages are reported as such; the
    // messages wrap the ring, so the producer also waits for space.
    loom::model(|| {
        let s = shared();
        let socket = Arc::new(loom::sync::Mutex::new(std::collections::VecDeque::new()));
        let sent: Vec<Vec<u8>> = (0..3).map(|i| msg(i, 1500)).collect();
        let producer = {
            let (s, socket, sent) = (s.clone(), socket.clone(), sent.clone());
            thread::spawn(move || {
                let mut p = Producer::new(s.ring.ring()).unwrap();
                for (i, m) in sent.iter().enumerate() {
                    if i % 2 == 0 {
                        let marker = loop {
                            if let Some(piece) = p.reserve(0).unwrap() {
                                break piece;
                            }
                            wait_for_space(&mut p, &s, 0).unwrap();
                        };
                        socket.lock().unwrap().push_back(i);
                        if p.commit(marker, false) {
                            s.data.notify();
                        }
                    }
                    send_all(&s, &mut p, std::slice::from_ref(m));
                }
                if p.close() {
                    s.data.notify();
                }
            })
        };
        let mut c = Consumer::new(s.ring.ring(), usize::MAX).unwrap();
        let (mut got, mut buf) = (Vec::new(), Vec::new());
        loop {
            match c.pop_message(&mut buf, || s.space.notify()).unwrap() {
                Taken::Message { attached } => {
                    let i = got.len();
                    assert_eq!(attached, i % 2 == 0, "message {i}");
                    if attached {
                        assert_eq!(socket.lock().unwrap().pop_front(), Some(i), "its group");
                    }
                    got.push(std::mem::take(&mut buf));
                }
                Taken::Empty => {
                    if c.prepare_wait().unwrap() {
                        s.data.wait();
                        c.end_wait();
                    }
                }
                Taken::Closed => break,
            }
        }
        producer.join().unwrap();
        assert_eq!(got, sent);
        assert!(socket.lock().unwrap().is_empty());
    });
}
