//! Large messages on the stream backends (socketpair, pipe, `unix:`, `tcp:`) are written as
//! they are encoded, their long byte strings straight from the caller's value, after a walk
//! that measures them. What that path must keep: pieces framed right whatever mix of short
//! and long runs a message has, partial writes resumed, nothing written before the size
//! limit is checked, a `try_send` that cannot start hands the message back, one that starts
//! is delivered whole (its rest finished by the next send or the drop), and a value whose
//! encoding changes between the walks, or fails half-way, never reaches the receiver as a
//! wrong message.

mod common;

use std::cell::Cell;
use std::time::Duration;

use conduit::{
    channel_with, Backend, Bytes, Options, Receiver, RecvTimeoutError, SendError, SendFailure,
    SendTimeoutError, Sender, TryRecvError, TrySendError,
};
use serde::{Deserialize, Serialize, Serializer};

const WAIT: Duration = Duration::from_secs(20);
/// The largest piece payload on the wire.
const PIECE: usize = 64 << 10;

/// Short fields around several byte strings, long and short.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Mixed {
    id: u64,
    head: Bytes,
    name: String,
    middle: Bytes,
    numbers: Vec<u32>,
    tail: Bytes,
}

fn bytes(seed: u64, len: usize) -> Bytes {
    Bytes::from(common::content(seed, len))
}

fn mixed(id: u64, [head, middle, tail]: [usize; 3]) -> Mixed {
    Mixed {
        id,
        head: bytes(id * 3, head),
        name: format!("message {id}"),
        middle: bytes(id * 3 + 1, middle),
        numbers: (0..id as u32 % 50).collect(),
        tail: bytes(id * 3 + 2, tail),
    }
}

/// Byte string lengths that put runs and piece boundaries everywhere: runs just under and
/// at the length written from the caller's value, a run that fills a piece exactly with
/// the bytes before it, several long runs, a long run last and first.
const SHAPES: [[usize; 3]; 9] = [
    [100_000, 20_000, 16 << 10],
    [(16 << 10) - 1, 16 << 10, 3],
    [PIECE - 4, 0, 0],
    [PIECE, PIECE, PIECE],
    [0, 70_000, 5],
    [3, 3, 1 << 20],
    [1 << 20, 7, 200_000],
    [10, 10, 10],
    [300_000, 300_000, 300_000],
];

/// The stream setups, each a connected pair made with `opts`.
fn pairs<T: conduit::Message>(opts: &Options) -> Vec<(&'static str, Sender<T>, Receiver<T>)> {
    let mut out = Vec::new();
    for (name, backend) in [("socket", Backend::Socket), ("pipe", Backend::Pipe)] {
        let (tx, rx) = channel_with::<T>(backend, opts).unwrap();
        out.push((name, tx, rx));
    }
    for (name, addr) in [
        ("unix", common::unix_addr()),
        ("tcp", "tcp:127.0.0.1:0".to_string()),
    ] {
        let rx = Receiver::<T>::bind_with(&addr, opts).unwrap();
        let tx = Sender::<T>::connect_with(&rx.local_addr().unwrap_or(addr), opts).unwrap();
        out.push((name, tx, rx));
    }
    out
}

/// The setups whose buffer is all on the sending host's side of the kernel: a full one
/// stays full while nobody reads (TCP's receive window may grow instead).
fn local_pairs<T: conduit::Message>(opts: &Options) -> Vec<(&'static str, Sender<T>, Receiver<T>)> {
    let mut out = pairs(opts);
    out.retain(|(name, _, _)| *name != "tcp");
    out
}

/// Sends `msgs` from a thread of its own and checks they arrive in order, whole.
fn round_trip(name: &str, tx: Sender<Mixed>, rx: &Receiver<Mixed>, msgs: Vec<Mixed>) {
    let expected = msgs.clone();
    let sender = std::thread::spawn(move || {
        for m in msgs {
            tx.send(m).unwrap();
        }
    });
    for want in &expected {
        let got = rx.recv_timeout(WAIT).unwrap();
        assert!(got == *want, "{name}: message {} arrived changed", want.id);
    }
    sender.join().unwrap();
    assert!(
        matches!(rx.recv_timeout(WAIT), Err(RecvTimeoutError::Disconnected)),
        "{name}: nothing after the last message"
    );
}

#[test]
fn mixed_short_and_long_runs_arrive_whole() {
    for (name, tx, rx) in pairs::<Mixed>(&Options::new()) {
        let msgs = SHAPES
            .iter()
            .enumerate()
            .flat_map(|(i, &shape)| [mixed(2 * i as u64, shape), mixed(2 * i as u64 + 1, [1; 3])])
            .collect();
        round_trip(name, tx, &rx, msgs);
    }
}

#[test]
fn partial_writes_into_a_tiny_buffer_resume() {
    // 4 KiB of socket or pipe buffer: every long run takes many writes and waits.
    for (name, tx, rx) in pairs::<Mixed>(&Options::new().capacity(4096)) {
        let msgs = SHAPES
            .iter()
            .enumerate()
            .map(|(i, &shape)| mixed(i as u64, shape))
            .collect();
        round_trip(name, tx, &rx, msgs);
    }
}

/// Fills the sender's buffer with small messages; how many went in.
fn fill(tx: &Sender<Mixed>) -> usize {
    let mut queued = 0;
    while tx.try_send(mixed(1000, [1; 3])).is_ok() {
        queued += 1;
    }
    queued
}

#[test]
fn try_send_that_cannot_start_hands_the_message_back() {
    for (name, tx, rx) in local_pairs::<Mixed>(&Options::new().capacity(4096)) {
        let queued = fill(&tx);
        let big = mixed(1, [100_000, 5, 50_000]);
        // A pipe with a few bytes of room takes part of a long write: then it is committed.
        let committed = match tx.try_send(big.clone()) {
            Err(TrySendError::Full(back)) => {
                assert!(back == big, "{name}: changed");
                false
            }
            Ok(()) if name == "pipe" => true,
            other => panic!("{name}: expected Full with the message back, got {other:?}"),
        };
        drop(tx);
        for _ in 0..queued {
            assert_eq!(rx.recv_timeout(WAIT).unwrap().id, 1000, "{name}");
        }
        if committed {
            assert!(rx.recv_timeout(WAIT).unwrap() == big, "{name}");
        }
        assert!(
            matches!(rx.recv_timeout(WAIT), Err(RecvTimeoutError::Disconnected)),
            "{name}: nothing else"
        );
    }
}

#[test]
fn a_deadline_mid_message_commits_it_and_the_next_send_finishes_it() {
    for (name, tx, rx) in local_pairs::<Mixed>(&Options::new().capacity(4096)) {
        // Three long runs into 4 KiB: the first is cut short, the rest is kept.
        let big = mixed(1, [300_000, 200_000, 100_000]);
        tx.try_send(big.clone())
            .unwrap_or_else(|e| panic!("{name}: a started message is committed: {e:?}"));
        let small = mixed(2, [1; 3]);
        match tx.try_send(small.clone()) {
            Err(TrySendError::Full(back)) => assert!(back == small, "{name}"),
            other => panic!("{name}: expected Full behind the tail, got {other:?}"),
        }
        match tx.send_timeout(small.clone(), Duration::from_millis(20)) {
            Err(SendTimeoutError::Timeout(back)) => assert!(back == small, "{name}"),
            other => panic!("{name}: expected Timeout behind the tail, got {other:?}"),
        }
        let reader = std::thread::spawn(move || {
            let first = rx.recv_timeout(WAIT).unwrap();
            let second = rx.recv_timeout(WAIT).unwrap();
            (first, second, rx)
        });
        // Waits for the reader: finishes the tail, then sends its own message.
        tx.send(small.clone()).unwrap();
        let (first, second, rx) = reader.join().unwrap();
        assert!(
            first == big,
            "{name}: the committed message arrived changed"
        );
        assert!(second == small, "{name}");
        // A deadline that passes part-way through a later run: the runs before it went
        // out, the rest is framed into the tail as the encoder goes on.
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let first = rx.recv_timeout(WAIT).unwrap();
            let second = rx.recv_timeout(WAIT).unwrap();
            (first, second, rx)
        });
        let late = mixed(3, [2000, 100_000, 400_000]);
        tx.send_timeout(late.clone(), Duration::from_millis(10))
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        tx.send(small.clone()).unwrap();
        let (first, second, rx) = reader.join().unwrap();
        assert!(
            first == late,
            "{name}: the message cut by its deadline arrived changed"
        );
        assert!(second == small, "{name}");
        // The drop finishes a committed rest on a thread of its own.
        let last = mixed(4, [500_000, 3, 70_000]);
        tx.try_send(last.clone()).unwrap();
        drop(tx);
        assert!(rx.recv_timeout(WAIT).unwrap() == last, "{name}");
        assert!(
            matches!(rx.recv_timeout(WAIT), Err(RecvTimeoutError::Disconnected)),
            "{name}"
        );
    }
}

#[test]
fn over_the_limit_is_refused_before_anything_is_written() {
    // Encoded into the sender's buffer, and streamed (measured first).
    for (limit, over, fits) in [
        (100_000, [60_000, 10, 40_000], [60_000, 10, 30_000]),
        (400_000, [300_000, 10, 100_000], [300_000, 10, 90_000]),
    ] {
        for (name, tx, rx) in pairs::<Mixed>(&Options::new().max_message_size(limit)) {
            let big = mixed(1, over);
            match tx.try_send(big.clone()) {
                Err(TrySendError::Failed(back, SendFailure::TooLarge { limit: l, .. })) => {
                    assert!(back == big && l == limit, "{name}");
                }
                other => panic!("{name}: expected TooLarge, got {other:?}"),
            }
            assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)), "{name}");
            // The channel is unharmed.
            round_trip(name, tx, &rx, vec![mixed(2, fits)]);
        }
    }
}

/// A value whose encoding is `lens[n]` bytes of payload on its `n`-th walk; a walk past the
/// list fails. A large message is walked three times: into the sender's buffer until it
/// proves large, to measure it, and to write it. What arrives is a plain `Shifty`.
#[derive(Debug, Default, Deserialize)]
struct Shifty {
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
    #[serde(skip)]
    lens: Vec<usize>,
    #[serde(skip)]
    walks: Cell<usize>,
    /// On this walk, fail after writing the bytes.
    #[serde(skip)]
    break_at: Option<usize>,
}

impl Shifty {
    fn new(lens: &[usize]) -> Self {
        Shifty {
            lens: lens.to_vec(),
            ..Shifty::default()
        }
    }
}

fn shifty_bytes(len: usize) -> Vec<u8> {
    common::content(9, len)
}

impl Serialize for Shifty {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeStruct};
        let walk = self.walks.get();
        self.walks.set(walk + 1);
        let Some(&len) = self.lens.get(walk) else {
            return Err(S::Error::custom("this value cannot be encoded now"));
        };
        let mut st = s.serialize_struct("Shifty", 1)?;
        st.serialize_field("bytes", serde_bytes::Bytes::new(&shifty_bytes(len)))?;
        if self.break_at == Some(walk) {
            return Err(S::Error::custom("broke half-way"));
        }
        st.end()
    }
}

#[test]
fn an_encoding_that_grows_or_shrinks_after_measuring_still_arrives_whole() {
    for (name, tx, rx) in pairs::<Shifty>(&Options::new()) {
        for [measured, sent] in [
            [200_000, 300_000],
            [300_000, 200_000],
            [150_000, 150_000],
            [150_000, 0],
        ] {
            let sender = tx.clone();
            let writer = std::thread::spawn(move || {
                sender
                    .send(Shifty::new(&[measured, measured, sent]))
                    .is_ok()
            });
            let got = rx.recv_timeout(WAIT).unwrap();
            assert!(writer.join().unwrap(), "{name}");
            assert!(
                got.bytes == shifty_bytes(sent),
                "{name}: measured {measured}, sent {sent}, got {}",
                got.bytes.len()
            );
        }
    }
}

#[test]
fn an_encoding_that_fails_part_way_sends_nothing() {
    for (name, tx, rx) in pairs::<Shifty>(&Options::new()) {
        // Proves large on the first walk and fails on the measuring one, after its bytes:
        // nothing is written, the channel stays usable.
        assert!(
            matches!(
                tx.send(Shifty::new(&[200_000])),
                Err(SendError::Failed(_, SendFailure::Encode(_)))
            ),
            "{name}"
        );
        let mut breaks = Shifty::new(&[200_000, 200_000]);
        breaks.break_at = Some(1);
        assert!(
            matches!(
                tx.send(breaks),
                Err(SendError::Failed(_, SendFailure::Encode(_)))
            ),
            "{name}"
        );
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)), "{name}");
        let sender = tx.clone();
        let writer =
            std::thread::spawn(move || sender.send(Shifty::new(&[30_000, 30_000, 30_000])));
        assert!(
            rx.recv_timeout(WAIT).unwrap().bytes == shifty_bytes(30_000),
            "{name}"
        );
        assert!(writer.join().unwrap().is_ok(), "{name}");
    }
}

#[test]
fn an_encoding_that_fails_after_writing_ends_the_connection_without_a_wrong_message() {
    for (name, tx, rx) in pairs::<Shifty>(&Options::new().capacity(1 << 20)) {
        tx.send(Shifty::new(&[30_000, 30_000, 30_000])).unwrap();
        // The third walk writes 200 KB straight from the value, then fails.
        let mut breaks = Shifty::new(&[200_000, 200_000, 200_000]);
        breaks.break_at = Some(2);
        let reader = std::thread::spawn(move || {
            let first = rx.recv_timeout(WAIT).map(|m| m.bytes);
            (first, rx.recv_timeout(WAIT).map(|m| m.bytes.len()))
        });
        assert!(
            matches!(
                tx.send(breaks),
                Err(SendError::Failed(_, SendFailure::Encode(_)))
            ),
            "{name}"
        );
        // The receiver cannot be told to drop the part it got but by the stream's end: the
        // sender is done.
        assert!(
            matches!(
                tx.send(Shifty::new(&[10, 10])),
                Err(SendError::Disconnected(_))
            ),
            "{name}"
        );
        drop(tx);
        let (first, second) = reader.join().unwrap();
        assert!(first.unwrap() == shifty_bytes(30_000), "{name}");
        assert!(
            matches!(second, Err(RecvTimeoutError::Disconnected)),
            "{name}: expected Disconnected, got {second:?}"
        );
    }
}

/// A `Bytes` received in a long message shares the buffer the message arrived in; the
/// receiver reuses that buffer for later messages only once nothing shares it.
#[test]
fn a_long_message_kept_by_the_caller_is_never_overwritten() {
    for (name, tx, rx) in pairs::<Mixed>(&Options::new()) {
        let msgs: Vec<Mixed> = (0..6).map(|i| mixed(i, [300_000, 10, 70_000])).collect();
        let expected = msgs.clone();
        let sender = std::thread::spawn(move || {
            for m in msgs {
                tx.send(m).unwrap();
            }
        });
        let mut kept = Vec::new();
        for (i, want) in expected.iter().enumerate() {
            let got = rx.recv_timeout(WAIT).unwrap();
            assert!(got == *want, "{name}: message {i}");
            // Keep every other one; drop the rest, whose buffers may be reused.
            if i % 2 == 0 {
                kept.push(got);
            }
        }
        sender.join().unwrap();
        for (got, want) in kept.iter().zip(expected.iter().step_by(2)) {
            assert!(got == want, "{name}: a kept message changed");
        }
    }
}

/// A sender that keeps its connection busy does not keep another's messages waiting.
#[test]
fn a_busy_sender_does_not_starve_another() {
    const FLOOD: u64 = 100_000;
    let addr = common::unix_addr();
    let rx = Receiver::<(u8, u64)>::bind(&addr).unwrap();
    let busy = Sender::<(u8, u64)>::connect(&addr).unwrap();
    let flood = std::thread::spawn(move || {
        for i in 0..FLOOD {
            if busy.send((0, i)).is_err() {
                return;
            }
        }
    });
    // The busy sender's stream is flowing before the other connects.
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), (0, 0));
    let other = Sender::<(u8, u64)>::connect(&addr).unwrap();
    other.send((1, 0)).unwrap();
    let mut before = 0;
    loop {
        match rx.recv_timeout(WAIT).unwrap() {
            (1, _) => break,
            _ => before += 1,
        }
        // Slower than the busy sender, so its connection always has bytes waiting.
        std::thread::sleep(Duration::from_micros(20));
        assert!(
            before < FLOOD / 2,
            "the other sender's message waited behind {before}"
        );
    }
    drop(rx);
    let _ = flood.join();
}
