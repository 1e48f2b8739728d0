//! Scenarios 7, 8 and 12: a huge message, the size limit, serde-derived structs.

use std::collections::BTreeMap;
use std::time::Duration;

use conduit::{Options, Receiver, SendError, SendFailure, SendTimeoutError, Sender, TrySendError};
use serde::{Deserialize, Serialize};

use crate::common::payload;
use crate::setup::{join, Setup, PATIENCE};

/// A large checkable pattern, cheap to build even unoptimized: a pseudo-random 64 KiB block
/// repeated, each copy stamped with its index (so lost, repeated or reordered pieces show).
pub fn big_pattern(seed: u64, len: usize) -> Vec<u8> {
    const BLOCK: usize = 64 << 10;
    let block = payload(seed, BLOCK);
    let mut out = Vec::with_capacity(len);
    for k in 0..len.div_ceil(BLOCK) {
        let start = out.len();
        out.extend_from_slice(&block[..BLOCK.min(len - start)]);
        let stamp = (k as u64).to_le_bytes();
        let n = stamp.len().min(out.len() - start);
        out[start..start + n].copy_from_slice(&stamp[..n]);
    }
    out
}

/// A byte buffer that serializes as serde bytes via `serde_bytes` (one length and a copy)
/// rather than as a sequence of `u8` (one codec call per byte, slow in unoptimized test
/// builds).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bytes(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// Asserts `got` is `expected`, naming the first differing byte otherwise.
fn assert_intact(setup: Setup, what: &str, got: &[u8], expected: &[u8]) {
    assert_eq!(got.len(), expected.len(), "{setup:?}: length of {what}");
    if got != expected {
        let at = got.iter().zip(expected).position(|(a, b)| a != b);
        panic!("{setup:?}: {what} differs first at byte {at:?}");
    }
}

/// Scenario 7: A 32 MiB message arrives intact on every backend (sent from another thread: it is
/// far larger than any buffer). The 32 MiB buffer crosses as serde bytes; a 4 MiB plain
/// `Vec<u8>` (a serde sequence) crosses too.
pub fn huge_message(setup: Setup) {
    const LEN: usize = 32 << 20;
    const VEC_LEN: usize = 4 << 20;
    let pair = setup.pair::<(Bytes, Vec<u8>)>();
    let expected = (big_pattern(32, LEN), big_pattern(4, VEC_LEN));
    let body = (Bytes(expected.0.clone()), expected.1.clone());
    let tx = pair.tx.clone();
    let sender = std::thread::spawn(move || {
        tx.send(body)
            .unwrap_or_else(|e| panic!("{setup:?}: sending 36 MiB: {e}"))
    });
    let got = pair
        .rx
        .recv_timeout(PATIENCE * 3)
        .unwrap_or_else(|e| panic!("{setup:?}: receiving 36 MiB: {e:?}"));
    join(sender);
    assert_intact(setup, "the 32 MiB buffer", &got.0 .0, &expected.0);
    assert_intact(setup, "the 4 MiB Vec<u8>", &got.1, &expected.1);
    // The channel carries on.
    let small = (Bytes(vec![1, 2, 3]), vec![4, 5]);
    pair.tx.send(small.clone()).unwrap();
    assert!(pair.recv_ok() == small, "{setup:?}: after the huge message");
}

fn assert_too_large(setup: Setup, failure: Option<&SendFailure>, limit: usize, what: &str) {
    match failure {
        Some(SendFailure::TooLarge { size, limit: l }) => {
            assert_eq!(*l, limit, "{setup:?}: {what}: the limit reported");
            assert!(
                *size > limit,
                "{setup:?}: {what}: size {size} within the limit"
            );
        }
        other => panic!("{setup:?}: {what}: expected SendFailure::TooLarge, got {other:?}"),
    }
}

/// Checks a sender with an effective limit of `limit` refuses a larger message with every
/// send method (handing it back), then still delivers messages within the limit.
fn check_limit(setup: Setup, tx: &Sender<Vec<u8>>, rx: &Receiver<Vec<u8>>, limit: usize) {
    let big = payload(8, 4 * limit);
    match tx.send(big.clone()) {
        Err(e) => {
            assert!(
                !e.is_disconnected(),
                "{setup:?}: too large is not Disconnected"
            );
            assert_too_large(setup, e.failure(), limit, "send");
            assert!(!e.to_string().is_empty());
            match e {
                SendError::Failed(m, _) => assert!(m == big, "{setup:?}: send handed back"),
                other => panic!("{setup:?}: send: expected Failed, got {other:?}"),
            }
        }
        Ok(()) => panic!("{setup:?}: a message over the limit was sent"),
    }
    match tx.try_send(big.clone()) {
        Err(e @ TrySendError::Failed(..)) => {
            assert_too_large(setup, e.failure(), limit, "try_send");
            assert!(e.into_inner() == big, "{setup:?}: try_send handed back");
        }
        other => panic!("{setup:?}: try_send over the limit: {other:?}"),
    }
    match tx.send_timeout(big.clone(), Duration::from_secs(1)) {
        Err(e @ SendTimeoutError::Failed(..)) => {
            assert_too_large(setup, e.failure(), limit, "send_timeout");
            assert!(e.into_inner() == big, "{setup:?}: send_timeout handed back");
        }
        other => panic!("{setup:?}: send_timeout over the limit: {other:?}"),
    }
    // Nothing of the refused messages went out, and the channel still works.
    for i in 0..3u64 {
        let small = payload(i, limit / 2);
        tx.send(small.clone())
            .unwrap_or_else(|e| panic!("{setup:?}: a message within the limit: {e}"));
        match rx.recv_timeout(PATIENCE) {
            Ok(got) => assert!(got == small, "{setup:?}: message {i} after the refusal"),
            Err(e) => panic!("{setup:?}: message {i} after the refusal: {e:?}"),
        }
    }
}

/// Scenario 8: A message over the sender's size limit fails with `SendFailure::TooLarge`, hands the
/// message back, and leaves the channel working. (Stream backends only: threads move values
/// and have no size limit.)
pub fn over_size_limit(setup: Setup) {
    const LIMIT: usize = 1024;
    let pair = setup.pair_with::<Vec<u8>>(&Options::new().max_message_size(LIMIT));
    check_limit(setup, &pair.tx, &pair.rx, LIMIT);
    let clone = pair.tx.clone();
    check_limit(setup, &clone, &pair.rx, LIMIT);
}

/// Scenario 8 (cont.): A sender with the default limit that connects to a receiver with a smaller
/// one adopts the receiver's limit: it refuses at `send` what the receiver would refuse.
pub fn receiver_size_limit_applies_to_sender(setup: Setup) {
    const LIMIT: usize = 1024;
    let addr = setup.fresh_addr().expect("bound");
    let rx = Receiver::<Vec<u8>>::bind_with(&addr, &Options::new().max_message_size(LIMIT))
        .unwrap_or_else(|e| panic!("{setup:?}: bind {addr}: {e}"));
    let addr = rx.local_addr().unwrap_or(addr);
    let tx = Sender::<Vec<u8>>::connect(&addr)
        .unwrap_or_else(|e| panic!("{setup:?}: connect {addr}: {e}"));
    check_limit(setup, &tx, &rx, LIMIT);
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Kind {
    Idle,
    Retry(u32),
    Move { x: i64, y: i64 },
    Named(String),
    Nested(Option<Box<Kind>>),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Job {
    id: u64,
    name: String,
    tags: Vec<String>,
    data: Vec<u8>,
    parent: Option<u64>,
    kind: Kind,
    history: Vec<Kind>,
    pair: (i8, bool),
    limits: BTreeMap<String, u16>,
    letter: char,
    ratio: f64,
    note: Option<String>,
}

fn jobs() -> Vec<Job> {
    let kinds = [
        Kind::Idle,
        Kind::Retry(u32::MAX),
        Kind::Move { x: -5, y: i64::MAX },
        Kind::Named("ünïcødé ✓".to_string()),
        Kind::Nested(Some(Box::new(Kind::Nested(None)))),
    ];
    (0..20u64)
        .map(|i| Job {
            id: i * 7_919,
            name: format!("job-{i}"),
            tags: (0..i % 4).map(|t| format!("tag{t}")).collect(),
            data: payload(i, (i as usize * 37) % 300),
            parent: (i % 3 != 0).then_some(i.saturating_sub(1)),
            kind: kinds[i as usize % kinds.len()].clone(),
            history: kinds[..i as usize % kinds.len()].to_vec(),
            pair: (-(i as i8), i % 2 == 0),
            limits: (0..i % 3)
                .map(|k| (format!("k{k}"), k as u16 * 1000))
                .collect(),
            letter: ['a', 'é', '字', '🦀'][i as usize % 4],
            ratio: i as f64 / 3.0,
            note: (i % 2 == 1).then(String::new),
        })
        .collect()
}

/// Scenario 12: Structs and enums with serde derive round-trip unchanged on every backend.
pub fn serde_structs(setup: Setup) {
    let pair = setup.pair::<Job>();
    let sent = jobs();
    for job in &sent {
        pair.tx.send(job.clone()).unwrap();
    }
    for (i, job) in sent.iter().enumerate() {
        assert_eq!(&pair.recv_ok(), job, "{setup:?}: job {i}");
    }
    // An enum as the message type itself, and a unit-like struct-less tuple.
    let pair = setup.pair::<(Kind, ())>();
    for kind in sent.iter().map(|j| j.kind.clone()) {
        pair.tx.send((kind.clone(), ())).unwrap();
        assert_eq!(pair.recv_ok(), (kind, ()), "{setup:?}: enum message");
    }
}

/// Scenario 7 (cont.): Through the smallest buffer a setup offers (a 4096-byte ring for
/// shared memory, whose pieces carry at most 2040 bytes; 4096 bytes of kernel buffer for
/// streams; 4 messages for threads), messages of sizes around the piece and buffer
/// boundaries arrive whole and in order.
pub fn larger_than_the_buffer(setup: Setup) {
    const SIZES: [usize; 19] = [
        0, 1, 7, 8, 9, 2_031, 2_032, 2_039, 2_040, 2_041, 2_048, 4_088, 4_096, 4_097, 10_000,
        65_535, 65_536, 65_537, 200_000,
    ];
    let capacity = if setup.is_stream() { 4096 } else { 4 };
    let pair = setup.pair_with::<(u32, Bytes)>(&Options::new().capacity(capacity));
    let expected = |i: u32| payload(u64::from(i), SIZES[i as usize % SIZES.len()]);
    let n = 3 * SIZES.len() as u32;
    let tx = pair.tx.clone();
    let sender = std::thread::spawn(move || {
        for i in 0..n {
            tx.send((i, Bytes(expected(i))))
                .unwrap_or_else(|e| panic!("{setup:?}: send {i}: {e}"));
        }
    });
    for i in 0..n {
        let (j, Bytes(got)) = pair.recv_ok();
        assert_eq!(j, i, "{setup:?}: out of order");
        assert_intact(setup, &format!("message {i}"), &got, &expected(i));
    }
    join(sender);
}
