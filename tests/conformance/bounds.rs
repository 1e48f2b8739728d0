//! Scenario 8 at its exact edge: a message whose encoding is exactly `max_message_size` is
//! sent and delivered, one byte more is refused at `send` with `SendFailure::TooLarge` (the
//! message handed back), on every backend that encodes. (The receiving side's refusal of a
//! peer that ignores the limit is in `tests/bounds.rs`.)

use conduit::__testing::encode;
use std::time::{Duration, Instant};

use conduit::{Options, Receiver, RecvTimeoutError, SendError, SendFailure, Sender, TrySendError};

use crate::common::payload;
use crate::messages::Bytes;
use crate::setup::{join, Setup, PATIENCE};

/// Limits tried: a small one, exactly one 64 KiB stream piece, and exactly three.
const LIMITS: [usize; 3] = [1000, 64 << 10, 3 * (64 << 10)];

/// A message whose encoding is exactly `size` bytes.
fn encoded_as(size: usize) -> Bytes {
    (size.saturating_sub(16)..=size)
        .map(|n| Bytes(payload(size as u64, n)))
        .find(|m| encode(m).len() == size)
        .unwrap_or_else(|| panic!("no message encodes in exactly {size} bytes"))
}

/// With an effective limit of `limit`: exactly `limit` bytes cross (sent from another thread:
/// it may be larger than the buffer); `limit + 1` is refused by `send` and `try_send`.
fn check_exact(setup: Setup, tx: &Sender<Bytes>, rx: &Receiver<Bytes>, limit: usize) {
    for round in 0..2 {
        let exact = encoded_as(limit);
        let expected = exact.clone();
        let sending = tx.clone();
        let mut sender = Some(std::thread::spawn(move || sending.send(exact)));
        let deadline = Instant::now() + PATIENCE;
        let got = loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(got) => break got,
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(e) => panic!("{setup:?}: exactly the limit {limit} (round {round}): {e:?}"),
            }
            if sender.as_ref().is_some_and(|s| s.is_finished()) {
                if let Err(e) = join(sender.take().expect("checked")) {
                    panic!("{setup:?}: sending exactly the limit {limit}: {e}");
                }
                // Sent, so in the kernel or the ring: it must arrive, if not within the
                // last 20 ms (a busy machine).
                match rx.recv_timeout(PATIENCE) {
                    Ok(got) => break got,
                    Err(e) => panic!(
                        "{setup:?}: sent exactly the limit {limit}, but nothing arrived: {e:?}"
                    ),
                }
            }
        };
        assert!(
            got == expected,
            "{setup:?}: the {limit}-byte message damaged"
        );
        if let Some(Err(e)) = sender.map(join) {
            panic!("{setup:?}: sending exactly the limit {limit}: {e}");
        }
        let over = encoded_as(limit + 1);
        let refused = |failure: Option<&SendFailure>, how: &str| match failure {
            Some(SendFailure::TooLarge { size, limit: l }) => assert_eq!(
                (*size, *l),
                (limit + 1, limit),
                "{setup:?}: {how}: the size and limit reported"
            ),
            other => panic!("{setup:?}: {how} of limit + 1: expected TooLarge, got {other:?}"),
        };
        match tx.send(over.clone()) {
            Err(e @ SendError::Failed(..)) => {
                refused(e.failure(), "send");
                assert!(e.into_inner() == over, "{setup:?}: send handed back");
            }
            other => panic!("{setup:?}: send of limit + 1: {other:?}"),
        }
        match tx.try_send(over.clone()) {
            Err(e @ TrySendError::Failed(..)) => {
                refused(e.failure(), "try_send");
                assert!(e.into_inner() == over, "{setup:?}: try_send handed back");
            }
            other => panic!("{setup:?}: try_send of limit + 1: {other:?}"),
        }
    }
}

/// Both ends with the same limit.
pub fn exactly_the_limit(setup: Setup) {
    for limit in LIMITS {
        let pair = setup.pair_with::<Bytes>(&Options::new().max_message_size(limit));
        check_exact(setup, &pair.tx, &pair.rx, limit);
    }
}

/// A sender with the default limit adopts the receiver's smaller one, to the byte.
pub fn exactly_the_receivers_limit(setup: Setup) {
    for limit in LIMITS {
        let addr = setup.fresh_addr().expect("bound");
        let rx = Receiver::<Bytes>::bind_with(&addr, &Options::new().max_message_size(limit))
            .unwrap_or_else(|e| panic!("{setup:?}: bind {addr}: {e}"));
        let addr = rx.local_addr().unwrap_or(addr);
        let tx = Sender::<Bytes>::connect(&addr)
            .unwrap_or_else(|e| panic!("{setup:?}: connect {addr}: {e}"));
        check_exact(setup, &tx, &rx, limit);
    }
}
