//! `conduit::Bytes` over every backend: as a whole message and as a field of a derived
//! struct, empty and large; moved (the same buffer) between threads; the size limit as for
//! any other message. The backends are the conformance suite's setups.

#[path = "common/mod.rs"]
mod common;
#[allow(dead_code)] // the suite uses more of the setups' helpers than these tests do
#[path = "conformance/setup.rs"]
mod setup;

use conduit::{Bytes, Options, SendError, SendFailure};
use serde::{Deserialize, Serialize};

use common::content;
use setup::{join, Setup, PATIENCE};

/// Runs each scenario against every setup: `<scenario>::<Setup>`.
macro_rules! every_setup {
    ($scenario:ident) => {
        every_setup!($scenario => [
            ThreadAnon, ThreadNamed, SocketAnon, PipeAnon, Unix, Tcp, ShmAnon, ShmBound
        ]);
    };
    ($scenario:ident => [$($setup:ident),+ $(,)?]) => {
        mod $scenario {
            $(
                #[test]
                #[allow(non_snake_case)]
                fn $setup() {
                    super::$scenario(crate::setup::Setup::$setup);
                }
            )+
        }
    };
}

every_setup!(whole_messages);
every_setup!(struct_fields);
every_setup!(moved_between_threads => [ThreadAnon, ThreadNamed]);
every_setup!(size_limit => [SocketAnon, PipeAnon, Unix, Tcp, ShmAnon, ShmBound]);

const MIB: usize = 1 << 20;

/// Sends `msgs` from another thread (large ones outgrow every buffer) and receives them.
fn round_trip<T: conduit::Message + Clone>(setup: Setup, msgs: Vec<T>) -> Vec<T> {
    let pair = setup.pair::<T>();
    let tx = pair.tx.clone();
    let n = msgs.len();
    let sender = std::thread::spawn(move || {
        for msg in msgs {
            tx.send(msg)
                .unwrap_or_else(|e| panic!("{setup:?}: send: {e}"));
        }
    });
    let got = (0..n)
        .map(|i| {
            pair.rx
                .recv_timeout(PATIENCE * 3)
                .unwrap_or_else(|e| panic!("{setup:?}: message {i}: {e:?}"))
        })
        .collect();
    join(sender);
    got
}

/// Asserts `got` holds `expected`, naming the first differing byte otherwise (a `Debug` of
/// megabytes helps nobody).
fn assert_same(setup: Setup, what: &str, got: &[u8], expected: &[u8]) {
    assert_eq!(got.len(), expected.len(), "{setup:?}: length of {what}");
    if got != expected {
        let at = got.iter().zip(expected).position(|(a, b)| a != b);
        panic!("{setup:?}: {what} differs first at byte {at:?}");
    }
}

/// `Bytes` as the message: empty, one byte, 1 MiB, 8 MiB, and a slice of a larger buffer.
fn whole_messages(setup: Setup) {
    let big = Bytes::from(content(8, 8 * MIB));
    let sent = vec![
        Bytes::new(),
        Bytes::from_static(b"x"),
        Bytes::from(content(1, MIB)),
        big.clone(),
        big.slice(3..MIB + 3),
        Bytes::from_static(b""),
    ];
    let got = round_trip(setup, sent.clone());
    for (i, (got, sent)) in got.iter().zip(&sent).enumerate() {
        assert_same(setup, &format!("message {i}"), got, sent);
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct Upload {
    id: u64,
    name: String,
    body: Bytes,
    parts: Vec<Bytes>,
    checksum: Option<Bytes>,
}

/// `Bytes` as fields of a derived struct, beside other fields, empty and large.
fn struct_fields(setup: Setup) {
    let sent: Vec<Upload> = [0, 1, MIB, 8 * MIB]
        .into_iter()
        .enumerate()
        .map(|(i, len)| Upload {
            id: i as u64,
            name: format!("upload {i}"),
            body: Bytes::from(content(i as u64, len)),
            parts: vec![Bytes::new(), Bytes::from(content(99, len / 4))],
            checksum: (i % 2 == 1).then(|| Bytes::from_static(b"\x00\xffsum")),
        })
        .collect();
    let got = round_trip(setup, sent.clone());
    for (got, sent) in got.iter().zip(&sent) {
        let what = &sent.name;
        assert_eq!(got.id, sent.id, "{setup:?}: {what}: id");
        assert_eq!(got.name, sent.name, "{setup:?}: {what}: name");
        assert_same(setup, what, &got.body, &sent.body);
        assert_eq!(got.parts.len(), 2, "{setup:?}: {what}: parts");
        for (g, s) in got.parts.iter().zip(&sent.parts) {
            assert_same(setup, what, g, s);
        }
        assert_eq!(got.checksum, sent.checksum, "{setup:?}: {what}: checksum");
    }
}

/// Between threads a `Bytes` is moved: the receiver holds the very buffer sent.
fn moved_between_threads(setup: Setup) {
    let pair = setup.pair::<Bytes>();
    let msg = Bytes::from(content(3, 4 * MIB));
    let at = msg.as_ptr();
    pair.tx.send(msg).unwrap();
    let got = pair.recv_ok();
    assert_eq!(got.as_ptr(), at, "{setup:?}: the buffer was copied");
    assert_eq!(got.len(), 4 * MIB);

    let fields = setup.pair::<Upload>();
    let body = Bytes::from(content(4, MIB));
    let at = body.as_ptr();
    let upload = Upload {
        id: 1,
        name: String::new(),
        body,
        parts: Vec::new(),
        checksum: None,
    };
    fields.tx.send(upload).unwrap();
    assert_eq!(
        fields.recv_ok().body.as_ptr(),
        at,
        "{setup:?}: field copied"
    );
}

/// The size limit counts the encoding (a length, then the bytes), refuses a larger `Bytes`
/// with `TooLarge`, hands the very buffer back, and leaves the channel working.
fn size_limit(setup: Setup) {
    const LIMIT: usize = 1024;
    let pair = setup.pair_with::<Bytes>(&Options::new().max_message_size(LIMIT));
    // A length of two bytes (postcard) or three (bincode), then the bytes.
    let fits = Bytes::from(content(5, LIMIT - 3));
    let encoded = conduit::__testing::encode(&fits).len();
    assert!(
        encoded <= LIMIT && encoded > LIMIT - 3,
        "encoded in {encoded} bytes"
    );
    pair.tx.send(fits.clone()).unwrap();
    assert_same(setup, "a message at the limit", &pair.recv_ok(), &fits);

    let big = Bytes::from(content(6, 4 * LIMIT));
    match pair.tx.send(big.clone()) {
        Err(SendError::Failed(back, SendFailure::TooLarge { size, limit })) => {
            assert_eq!(limit, LIMIT, "{setup:?}: the limit reported");
            assert!(size > LIMIT, "{setup:?}: size {size} within the limit");
            assert_eq!(back.as_ptr(), big.as_ptr(), "{setup:?}: handed back");
        }
        other => panic!("{setup:?}: expected TooLarge, got {other:?}"),
    }
    let after = Bytes::from_static(b"after");
    pair.tx.send(after.clone()).unwrap();
    assert_eq!(pair.recv_ok(), after, "{setup:?}: after the refusal");
}

every_setup!(large_fields_share_the_received_buffer => [
    SocketAnon, PipeAnon, Unix, Tcp, ShmAnon, ShmBound
]);

/// Two large byte fields of one received message: both are shares of the one buffer the
/// message was read or copied into (the ring's, or the stream's), so they sit side by side in it,
/// separated only by the second one's length prefix. Copied out, each would be an
/// allocation of its own, at least an allocator's header apart.
fn large_fields_share_the_received_buffer(setup: Setup) {
    let a = Bytes::from(content(1, 100_000));
    let b = Bytes::from(content(2, 100_000));
    let got = round_trip(setup, vec![(a.clone(), b.clone())]);
    let (ga, gb) = &got[0];
    assert!(
        ga == &a && gb == &b,
        "{setup:?}: the fields arrived changed"
    );
    let gap = (gb.as_ptr() as usize).wrapping_sub(ga.as_ptr() as usize + ga.len());
    assert!(
        gap <= 9,
        "{setup:?}: the second field starts {gap} bytes after the first ends: copied out"
    );
}
