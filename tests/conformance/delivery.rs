//! Scenarios 1, 2 and 9: FIFO per producer, many producers, whole messages from clones.

use std::collections::HashMap;

use conduit::RecvTimeoutError;

use crate::messages::{big_pattern, Bytes};
use crate::setup::{join, Setup, PATIENCE};

/// Scenario 1: 10,000 `u64` from one sender arrive in order.
pub fn fifo_per_producer(setup: Setup) {
    const N: u64 = 10_000;
    let pair = setup.pair::<u64>();
    let tx = pair.tx.clone();
    let producer = std::thread::spawn(move || {
        for i in 0..N {
            tx.send(i)
                .unwrap_or_else(|e| panic!("{setup:?}: send {i} failed: {e}"));
        }
    });
    for i in 0..N {
        assert_eq!(pair.recv_ok(), i, "{setup:?}: message out of order");
    }
    join(producer);
    drop(pair.tx);
    match pair.rx.recv_timeout(PATIENCE) {
        Err(RecvTimeoutError::Disconnected) => {}
        other => panic!("{setup:?}: after the only producer: {other:?}"),
    }
}

/// Scenario 2: Several producers at once (clones, and for bound setups independent connects), each
/// from its own thread: each producer's order is kept and every message arrives exactly once.
pub fn many_producers(setup: Setup) {
    const PER: u32 = 2_000;
    let pair = setup.pair::<(u32, u32)>();
    let mut senders = vec![pair.tx.clone(), pair.tx.clone(), pair.tx.clone()];
    if setup.is_bound() {
        senders.push(pair.connect().expect("bound"));
        senders.push(pair.connect().expect("bound"));
    }
    // The original sender is a producer too; moving it into its thread means that once
    // every producer is done, no sender is left and the end is Disconnected.
    senders.push(pair.tx);
    let producers = senders.len() as u32;
    let handles: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(id, tx)| {
            std::thread::spawn(move || {
                for seq in 0..PER {
                    tx.send((id as u32, seq))
                        .unwrap_or_else(|e| panic!("{setup:?}: producer {id} seq {seq}: {e}"));
                }
            })
        })
        .collect();
    let mut next: HashMap<u32, u32> = HashMap::new();
    let total = producers * PER;
    for _ in 0..total {
        let (id, seq) = match pair.rx.recv_timeout(PATIENCE) {
            Ok(m) => m,
            Err(e) => panic!(
                "{setup:?}: after {} of {total} messages: {e:?}",
                next.values().sum::<u32>()
            ),
        };
        let expected = next.entry(id).or_insert(0);
        assert_eq!(seq, *expected, "{setup:?}: producer {id} out of order");
        *expected += 1;
    }
    for h in handles {
        join(h);
    }
    // Every producer is gone: nothing more, and the channel reports it.
    match pair.rx.recv_timeout(PATIENCE) {
        Err(RecvTimeoutError::Disconnected) => {}
        other => panic!("{setup:?}: expected Disconnected after all producers, got {other:?}"),
    }
    assert_eq!(
        next.len() as u32,
        producers,
        "{setup:?}: a producer is missing"
    );
    assert!(
        next.values().all(|&n| n == PER),
        "{setup:?}: counts {next:?}"
    );
}

/// Scenario 9: Two clones in two threads send large multi-piece messages with distinct contents;
/// every received message is intact (clones never interleave their pieces).
pub fn clones_never_interleave(setup: Setup) {
    const LEN: usize = 300 << 10;
    const PER: u64 = 16;
    let pair = setup.pair::<(u64, u64, Bytes)>();
    let handles: Vec<_> = (0..2u64)
        .map(|id| {
            let tx = pair.tx.clone();
            std::thread::spawn(move || {
                for seq in 0..PER {
                    let body = big_pattern(id * 1_000 + seq, LEN);
                    tx.send((id, seq, Bytes(body)))
                        .unwrap_or_else(|e| panic!("{setup:?}: clone {id} seq {seq}: {e}"));
                }
            })
        })
        .collect();
    drop(pair.tx);
    let mut next = [0u64; 2];
    for _ in 0..2 * PER {
        let (id, seq, Bytes(body)) = pair.rx.recv_timeout(PATIENCE).unwrap_or_else(|e| {
            panic!("{setup:?}: expected a message within {PATIENCE:?}, got {e:?}")
        });
        assert!(id < 2, "{setup:?}: unknown producer {id}");
        assert_eq!(seq, next[id as usize], "{setup:?}: clone {id} out of order");
        next[id as usize] += 1;
        assert_eq!(
            body.len(),
            LEN,
            "{setup:?}: clone {id} seq {seq}: wrong length"
        );
        assert!(
            body == big_pattern(id * 1_000 + seq, LEN),
            "{setup:?}: clone {id} seq {seq}: content corrupted (interleaved?)"
        );
    }
    for h in handles {
        join(h);
    }
    match pair.rx.recv_timeout(PATIENCE) {
        Err(RecvTimeoutError::Disconnected) => {}
        Ok(_) => panic!("{setup:?}: more messages than were sent"),
        Err(e) => panic!("{setup:?}: after both clones: {e:?}"),
    }
}
