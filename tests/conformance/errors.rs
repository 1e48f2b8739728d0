//! Scenario 10: what `bind`, `connect` and `channel` refuse, and how they say it.

use conduit::{channel, Backend, Error, Receiver, Sender};

use crate::setup::{Setup, PATIENCE};

/// A `Display` that reads as a sentence: non-empty, several words, one line.
fn assert_sentence(what: &str, e: &dyn std::error::Error) {
    let text = e.to_string();
    assert!(
        text.len() > 10 && text.trim().contains(' ') && !text.contains('\n'),
        "{what}: Display is not a sentence: {text:?}"
    );
    assert!(!format!("{e:?}").is_empty(), "{what}: empty Debug");
}

/// An address of the setup's scheme where nothing listens.
fn unbound_addr(setup: Setup) -> String {
    match setup {
        Setup::Tcp => {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            drop(l);
            format!("tcp:127.0.0.1:{port}")
        }
        other => other.fresh_addr().expect("bound"),
    }
}

/// Scenario 10: For each scheme: a different message type is `TypeMismatch` (and the receiver keeps
/// serving the right type); nothing bound is `NotFound`; a second bind is `AddrInUse`; once
/// the receiver is gone its address is free again.
pub fn connect_errors(setup: Setup) {
    let pair = setup.pair::<u64>();
    let addr = pair.addr.clone().expect("bound");

    match Sender::<String>::connect(&addr) {
        Err(e @ Error::TypeMismatch { .. }) => assert_sentence("TypeMismatch", &e),
        other => panic!("{setup:?}: connect with String to a u64 receiver: {other:?}"),
    }
    match Sender::<i64>::connect(&addr) {
        Err(Error::TypeMismatch { .. }) => {}
        other => panic!("{setup:?}: connect with i64 to a u64 receiver: {other:?}"),
    }
    // The refused connects left the receiver intact.
    let late = Sender::<u64>::connect(&addr)
        .unwrap_or_else(|e| panic!("{setup:?}: connect with the right type: {e}"));
    pair.tx.send(1).unwrap();
    late.send(2).unwrap();
    let mut got = [pair.recv_ok(), pair.recv_ok()];
    got.sort();
    assert_eq!(got, [1, 2], "{setup:?}: after refused connects");

    // A live receiver holds its address, whatever the type asked for.
    match Receiver::<u64>::bind(&addr) {
        Err(e @ Error::AddrInUse { .. }) => assert_sentence("AddrInUse", &e),
        other => panic!("{setup:?}: second bind of {addr}: {other:?}"),
    }
    match Receiver::<String>::bind(&addr) {
        Err(Error::AddrInUse { .. }) => {}
        other => panic!("{setup:?}: second bind of {addr} with another type: {other:?}"),
    }
    // The failed binds did not disturb the live receiver.
    late.send(3).unwrap();
    assert_eq!(pair.recv_ok(), 3, "{setup:?}: after refused binds");

    let nowhere = unbound_addr(setup);
    match Sender::<u64>::connect(&nowhere) {
        Err(e @ Error::NotFound { .. }) => assert_sentence("NotFound", &e),
        other => panic!("{setup:?}: connect to {nowhere} where nothing is bound: {other:?}"),
    }

    // Gone receiver: its address is not found, then free to bind again.
    drop((pair.tx, pair.rx, late));
    match Sender::<u64>::connect(&addr) {
        Err(Error::NotFound { .. }) => {}
        other => panic!("{setup:?}: connect after the receiver dropped: {other:?}"),
    }
    let again = Receiver::<String>::bind(&addr)
        .unwrap_or_else(|e| panic!("{setup:?}: rebinding {addr} after the receiver dropped: {e}"));
    let tx = Sender::<String>::connect(&addr).unwrap();
    tx.send("again".to_string()).unwrap();
    assert_eq!(again.recv_timeout(PATIENCE).ok().as_deref(), Some("again"));
}

#[test]
fn bad_addresses() {
    let long_path = format!("unix:/tmp/{}", "x".repeat(200));
    let bad = [
        "",
        "jobs",
        "thread:",
        "unix:",
        "shm:",
        "udp:127.0.0.1:9",
        "tcp:",
        "tcp:localhost",
        "tcp::80",
        "tcp:127.0.0.1:99999",
        "tcp:127.0.0.1:port",
        "unix:/tmp/a\0b",
        long_path.as_str(),
    ];
    for addr in bad {
        match Receiver::<u64>::bind(addr) {
            Err(e @ Error::BadAddress { .. }) => assert_sentence(&format!("bind {addr:?}"), &e),
            other => panic!("bind {addr:?}: expected BadAddress, got {other:?}"),
        }
        match Sender::<u64>::connect(addr) {
            Err(e @ Error::BadAddress { .. }) => assert_sentence(&format!("connect {addr:?}"), &e),
            other => panic!("connect {addr:?}: expected BadAddress, got {other:?}"),
        }
    }
}

/// The errors of channel operations read as sentences too.
#[test]
fn channel_errors_are_sentences() {
    let (tx, rx) = channel::<u64>(Backend::Socket).unwrap();
    assert_sentence("TryRecvError::Empty", &rx.try_recv().unwrap_err());
    assert_sentence(
        "RecvTimeoutError::Timeout",
        &rx.recv_timeout(std::time::Duration::from_millis(1))
            .unwrap_err(),
    );
    drop(tx);
    assert_sentence("RecvError::Disconnected", &rx.recv().unwrap_err());
    assert_sentence("TryRecvError::Disconnected", &rx.try_recv().unwrap_err());

    let (tx, rx) =
        conduit::channel_with::<u64>(Backend::Thread, &conduit::Options::new().capacity(1))
            .unwrap();
    tx.send(1).unwrap();
    assert_sentence("TrySendError::Full", &tx.try_send(2).unwrap_err());
    assert_sentence(
        "SendTimeoutError::Timeout",
        &tx.send_timeout(2, std::time::Duration::from_millis(1))
            .unwrap_err(),
    );
    drop(rx);
    assert_sentence("SendError::Disconnected", &tx.send(3).unwrap_err());
}
