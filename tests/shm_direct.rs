//! Large messages on `shm:` are encoded straight into the ring after a walk that measures
//! them. What that path must keep: nothing published before the size limit is checked, a
//! `try_send` that cannot start hands the message back, one that starts is delivered whole,
//! and a value whose encoding changes between the two walks, or fails half-way, never
//! reaches the receiver as a wrong message.

use std::cell::Cell;
use std::time::Duration;

use conduit::{
    channel_with, Backend, Options, RecvTimeoutError, SendFailure, TryRecvError, TrySendError,
};
use serde::{Deserialize, Serialize, Serializer};

/// Bytes serialized as one byte string (the case the direct path is for).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Blob(#[serde(with = "serde_bytes")] Vec<u8>);

fn blob(seed: u8, len: usize) -> Blob {
    Blob(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect(),
    )
}

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn a_large_message_spans_many_pieces_and_arrives_whole() {
    let (tx, rx) = channel_with::<Blob>(Backend::Shm, &Options::new().capacity(8192)).unwrap();
    let sent: Vec<Blob> = (0..20)
        .map(|i| blob(i, 20_000 + 977 * i as usize))
        .collect();
    let expected = sent.clone();
    let sender = std::thread::spawn(move || {
        for m in sent {
            tx.send(m).unwrap();
        }
    });
    for want in &expected {
        assert_eq!(&rx.recv_timeout(WAIT).unwrap(), want);
    }
    sender.join().unwrap();
    assert!(matches!(
        rx.recv_timeout(WAIT),
        Err(RecvTimeoutError::Disconnected)
    ));
}

#[test]
fn try_send_that_cannot_start_hands_the_message_back() {
    let (tx, rx) = channel_with::<Blob>(Backend::Shm, &Options::new().capacity(4096)).unwrap();
    // Fill the ring with small messages until it is full.
    let small = blob(1, 100);
    let mut queued = 0;
    while tx.try_send(small.clone()).is_ok() {
        queued += 1;
    }
    let big = blob(2, 50_000);
    match tx.try_send(big.clone()) {
        Err(TrySendError::Full(back)) => assert_eq!(back, big),
        other => panic!("expected Full with the message back, got {other:?}"),
    }
    for _ in 0..queued {
        assert_eq!(rx.try_recv().unwrap(), small);
    }
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
}

#[test]
fn try_send_that_starts_delivers_the_whole_message() {
    let (tx, rx) = channel_with::<Blob>(Backend::Shm, &Options::new().capacity(4096)).unwrap();
    // 50 KB into a 4 KiB ring: the first piece goes now, the rest is kept and sent before
    // the next message (here: by the drop, on a thread of its own).
    let big = blob(3, 50_000);
    tx.try_send(big.clone())
        .expect("an empty ring takes the first piece");
    drop(tx);
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), big);
    assert!(matches!(
        rx.recv_timeout(WAIT),
        Err(RecvTimeoutError::Disconnected)
    ));
}

#[test]
fn over_the_limit_is_refused_before_anything_is_published() {
    let opts = Options::new().max_message_size(40_000);
    let (tx, rx) = channel_with::<Blob>(Backend::Shm, &opts).unwrap();
    let big = blob(4, 40_000);
    match tx.try_send(big.clone()) {
        Err(TrySendError::Failed(back, SendFailure::TooLarge { limit, .. })) => {
            assert_eq!((back, limit), (big, 40_000));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    // The channel is unharmed.
    let fits = blob(5, 39_000);
    tx.send(fits.clone()).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), fits);
}

/// A value whose encoding is `lens[n]` bytes of payload on its `n`-th walk; a walk past the
/// list fails. A large message is walked three times: into the sender's buffer until it
/// proves large, to measure it, and into the ring. What arrives is a plain `Shifty`.
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

impl Serialize for Shifty {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeStruct};
        let walk = self.walks.get();
        self.walks.set(walk + 1);
        let Some(&len) = self.lens.get(walk) else {
            return Err(S::Error::custom("this value cannot be encoded now"));
        };
        let mut st = s.serialize_struct("Shifty", 1)?;
        st.serialize_field("bytes", serde_bytes::Bytes::new(&blob(9, len).0))?;
        if self.break_at == Some(walk) {
            return Err(S::Error::custom("broke half-way"));
        }
        st.end()
    }
}

#[test]
fn an_encoding_that_grows_or_shrinks_after_measuring_still_arrives_whole() {
    // A ring that holds each message whole (in two or three pieces): one thread does both.
    let opts = Options::new().capacity(1 << 20);
    let (tx, rx) = channel_with::<Shifty>(Backend::Shm, &opts).unwrap();
    for [measured, sent] in [
        [100_000, 150_000],
        [150_000, 100_000],
        [70_000, 70_000],
        [70_000, 0],
    ] {
        tx.send(Shifty::new(&[measured, measured, sent])).unwrap();
        let got = rx.recv_timeout(WAIT).unwrap();
        assert!(
            got.bytes == blob(9, sent).0,
            "measured {measured}, sent {sent}, got {}",
            got.bytes.len()
        );
    }
}

#[test]
fn an_encoding_that_fails_half_way_never_arrives() {
    // Measured as 100 KB, then serialization fails before writing a byte into the ring:
    // nothing is published, the channel stays usable.
    let opts = Options::new().capacity(1 << 20);
    let (tx, rx) = channel_with::<Shifty>(Backend::Shm, &opts).unwrap();
    assert!(matches!(
        tx.send(Shifty::new(&[100_000, 100_000])),
        Err(conduit::SendError::Failed(_, SendFailure::Encode(_)))
    ));
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    tx.send(Shifty::new(&[30_000, 30_000, 30_000])).unwrap();
    assert!(rx.recv_timeout(WAIT).unwrap().bytes == blob(9, 30_000).0);
}

#[test]
fn an_encoding_that_fails_after_publishing_ends_the_connection_without_a_wrong_message() {
    let opts = Options::new().capacity(1 << 20);
    let (tx, rx) = channel_with::<Shifty>(Backend::Shm, &opts).unwrap();
    tx.send(Shifty::new(&[30_000, 30_000, 30_000])).unwrap();
    // The third walk writes 100 KB (a 64 KiB piece is published) and then fails.
    let mut breaks = Shifty::new(&[100_000, 100_000, 100_000]);
    breaks.break_at = Some(2);
    assert!(matches!(
        tx.send(breaks),
        Err(conduit::SendError::Failed(_, SendFailure::Encode(_)))
    ));
    // The receiver cannot be told to drop the part it got but by the connection's end:
    // the sender is done.
    assert!(matches!(
        tx.send(Shifty::new(&[10, 10])),
        Err(conduit::SendError::Disconnected(_))
    ));
    assert!(rx.recv_timeout(WAIT).unwrap().bytes == blob(9, 30_000).0);
    drop(tx);
    match rx.recv_timeout(WAIT) {
        Err(RecvTimeoutError::Disconnected) => {}
        Ok(got) => panic!("expected Disconnected, got {} bytes", got.bytes.len()),
        Err(e) => panic!("expected Disconnected, got {e:?}"),
    }
}
