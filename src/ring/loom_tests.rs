//! loom models of the ring core (tokio's `loom_*.rs` pattern): every interleaving of the
//! producer and consumer, within `LOOM_MAX_PREEMPTIONS`, for each scenario. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib loom`.
//!
//! Sleeping is modelled with `loom::sync::Notify` (a permit, like the wake-up byte the shm flavor
//! polls): a lost wake-up leaves a thread blocked forever, which loom reports as a deadlock.

use loom::sync::{Arc, Notify};
use loom::thread;

use super::core::{Consumer, Pop, Producer, Push};
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

/// Sends every message in pieces, sleeping on a full ring with the wait protocol.
fn produce(s: &Shared, messages: &[Vec<u8>], close: bool) {
    let mut p = Producer::new(s.ring.ring()).unwrap();
    let max = p.max_piece();
    for m in messages {
        let pieces: Vec<&[u8]> = if m.is_empty() {
            vec![&[]]
        } else {
            m.chunks(max).collect()
        };
        let n = pieces.len();
        for (i, piece) in pieces.into_iter().enumerate() {
            loop {
                match p.try_push(piece, i + 1 == n).unwrap() {
                    Push::Done { wake } => {
                        if wake {
                            s.data.notify();
                        }
                        break;
                    }
                    Push::Full => {
                        if p.prepare_wait(piece.len()).unwrap() {
                            s.space.wait();
                            p.end_wait();
                        }
                    }
                }
            }
        }
    }
    if close && p.close() {
        s.data.notify();
    }
}

/// Receives whole messages until `Closed` (or `count` messages), sleeping when empty.
fn consume(s: &Shared, count: usize) -> Vec<Vec<u8>> {
    let mut c = Consumer::new(s.ring.ring(), usize::MAX).unwrap();
    let mut got = Vec::new();
    let mut buf = Vec::new();
    while got.len() < count {
        match c.try_pop(&mut buf).unwrap() {
            Pop::Piece { last, wake } => {
                if wake {
                    s.space.notify();
                }
                if last {
                    got.push(std::mem::take(&mut buf));
                }
            }
            Pop::Empty { wake } => {
                if wake {
                    s.space.notify();
                }
                if c.prepare_wait().unwrap() {
                    s.data.wait();
                    c.end_wait();
                }
            }
            Pop::Closed => break,
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
    // 408-byte frames: the consumer hands each frame's space back at once, but checks behind
    // a fence whether the producer sleeps only once 1 KiB has gathered (three frames), when
    // a plain load shows it waiting, or when it finds the ring empty; eleven frames overfill
    // the 4 KiB ring, so the producer must sleep until one of those checks wakes it.
    loom::model(|| run((0..11).map(|i| msg(i, 400)).collect()));
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
    // 2.5 rings' worth in pieces: the consumer reassembles while the producer waits.
    loom::model(|| run(vec![msg(0, CAP * 5 / 2)]));
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
            let piece = msg(0, 2032);
            let mut pushed = 0;
            loop {
                match p.try_push(&piece, true).unwrap() {
                    Push::Done { .. } => pushed += 1,
                    Push::Full if p.consumer_closed() => return pushed,
                    Push::Full => {
                        if p.prepare_wait(piece.len()).unwrap() {
                            s2.space.wait();
                            p.end_wait();
                        }
                    }
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
