//! loom models of the shm receiver in readiness mode (`flavors/shm/recv.rs`, `try_ready`):
//! a `try_recv` that finds nothing drains the wake-up bytes, arms the ring
//! (`prepare_wait`: announce, fence, look again) and, if still idle, the caller waits on the
//! descriptor; the ring stays armed through the first message taken after the wait and is
//! disarmed at the second in a row (or at the next `Empty`, which arms it again).
//!
//! The socket is modelled by a byte count and a `Notify`: the producer's wake adds a byte
//! and notifies; the consumer drains by taking the count, and its wait on the descriptor
//! returns only once a byte is there (a permit without a byte, left by a byte drained
//! earlier, is a spurious wake-up of `poll`, which looks again). A lost wake-up leaves the
//! consumer waiting forever, which loom reports as a deadlock.

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Arc, Notify};
use loom::thread;

use super::core::{Consumer, Producer, RingError, Taken};
use super::HeapRing;

const CAP: usize = 4096;

struct Shared {
    ring: HeapRing,
    /// Wake-up bytes waiting on the receiver's socket.
    bytes: AtomicUsize,
    /// The socket becoming readable.
    readable: Notify,
}

impl Shared {
    /// The producer's wake-up: one byte on the socket.
    fn wake(&self) {
        // SeqCst: a stand-in for the socket, which the kernel orders; not under test.
        self.bytes.fetch_add(1, Ordering::SeqCst);
        self.readable.notify();
    }

    /// The descriptor's poll: returns once a byte is there.
    fn wait_readable(&self) {
        while self.bytes.load(Ordering::SeqCst) == 0 {
            self.readable.wait();
        }
    }
}

fn msg(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 13 + j) as u8).collect()
}

/// The receiver's loop in readiness mode: `try_recv` until `Empty`, then wait.
fn consume(s: &Shared, count: usize) -> Vec<Vec<u8>> {
    let mut c = Consumer::new(s.ring.ring(), usize::MAX).unwrap();
    let (mut got, mut buf, mut armed, mut armed_takes) = (Vec::new(), Vec::new(), false, 0);
    while got.len() < count {
        match c.pop_message(&mut buf, || {}).unwrap() {
            Taken::Message { .. } => {
                got.push(std::mem::take(&mut buf));
                // One message is taken still armed; the second in a row disarms.
                if armed {
                    armed_takes += 1;
                    if armed_takes >= 2 {
                        c.end_wait();
                        (armed, armed_takes) = (false, 0);
                    }
                }
            }
            Taken::Empty => {
                if std::mem::take(&mut armed) {
                    c.end_wait();
                    armed_takes = 0;
                }
                // Drained before arming: a byte written for this arming is never drained
                // unseen.
                s.bytes.store(0, Ordering::SeqCst);
                if c.prepare_wait().unwrap() {
                    armed = true;
                    // `try_recv` returned `Empty`: the caller waits on the descriptor.
                    s.wait_readable();
                }
                // Not idle: `prepare_wait` disarmed; take what the re-check saw.
            }
            Taken::Closed => break,
        }
    }
    got
}

fn run(messages: Vec<Vec<u8>>) {
    let s = Arc::new(Shared {
        ring: HeapRing::new(CAP),
        bytes: AtomicUsize::new(0),
        readable: Notify::new(),
    });
    let s2 = s.clone();
    let sent = messages.clone();
    let producer = thread::spawn(move || {
        let mut p = Producer::new(s2.ring.ring()).unwrap();
        for m in &sent {
            let (done, result) = p.push_pieces(
                m,
                || s2.wake(),
                |_, _| -> Result<(), RingError> { unreachable!() },
            );
            result.unwrap();
            assert_eq!(done, m.len());
        }
    });
    let got = consume(&s, messages.len());
    producer.join().unwrap();
    assert_eq!(got, messages);
}

#[test]
fn loom_readiness_arm_and_recheck() {
    // Three small messages: each may land before the `Empty`, between it and the arming,
    // between the arming and the re-check, or after the re-check.
    loom::model(|| run((0..3).map(|i| msg(i, 8)).collect()));
}

#[test]
fn loom_readiness_disarmed_in_a_stream() {
    // A message of two pieces (a piece takes at most half the ring), then a small one: the
    // consumer may wake between the pieces, take half a message, and arm again.
    loom::model(|| run(vec![msg(0, 3000), msg(1, 8)]));
}
