//! Scenarios 3, 4 and 11: senders gone, receiver gone, a new sender after a disconnect.

use std::time::{Duration, Instant};

use conduit::{
    Error, RecvError, RecvTimeoutError, SendError, SendTimeoutError, Sender, TryRecvError,
    TrySendError,
};

use crate::setup::{join, within, Setup, PATIENCE};

/// Asserts every receive operation reports `Disconnected`, promptly (without waiting for
/// the timeout), and returns the receiver.
fn assert_disconnected<T: conduit::Message>(
    setup: Setup,
    rx: conduit::Receiver<T>,
) -> conduit::Receiver<T> {
    let rx = within(
        PATIENCE,
        &format!("{setup:?}: recv on a drained channel"),
        {
            move || {
                let r = rx.recv();
                assert!(
                    matches!(r, Err(RecvError::Disconnected)),
                    "{setup:?}: recv: expected Disconnected, got {:?}",
                    r.map(|_| "a message")
                );
                rx
            }
        },
    );
    let r = rx.try_recv();
    assert!(
        matches!(r, Err(TryRecvError::Disconnected)),
        "{setup:?}: try_recv: expected Disconnected, got {:?}",
        r.map(|_| "a message")
    );
    let start = Instant::now();
    let r = rx.recv_timeout(Duration::from_secs(5));
    assert!(
        matches!(r, Err(RecvTimeoutError::Disconnected)),
        "{setup:?}: recv_timeout: expected Disconnected, got {:?}",
        r.map(|_| "a message")
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{setup:?}: recv_timeout waited {:?} before reporting Disconnected",
        start.elapsed()
    );
    rx
}

/// Scenario 3: All senders dropped: the receiver drains every message sent before, then every
/// receive operation reports `Disconnected` (and keeps reporting it).
pub fn drain_then_disconnected(setup: Setup) {
    const PER: u32 = 50;
    let pair = setup.pair::<(u32, u32)>();
    let mut senders = vec![pair.tx.clone(), pair.tx];
    senders.extend(pair.addr.as_deref().map(|a| Sender::connect(a).unwrap()));
    for (id, tx) in senders.iter().enumerate() {
        for seq in 0..PER {
            tx.send((id as u32, seq))
                .unwrap_or_else(|e| panic!("{setup:?}: sender {id} seq {seq}: {e}"));
        }
    }
    let producers = senders.len() as u32;
    drop(senders);

    let rx = pair.rx;
    let (rx, got) = within(PATIENCE, &format!("{setup:?}: draining"), move || {
        let mut got = Vec::new();
        for _ in 0..producers * PER {
            match rx.recv() {
                Ok(m) => got.push(m),
                Err(e) => panic!(
                    "{setup:?}: {e:?} after {} of {} messages sent before the drop",
                    got.len(),
                    producers * PER
                ),
            }
        }
        (rx, got)
    });
    for id in 0..producers {
        let mine: Vec<u32> = got.iter().filter(|m| m.0 == id).map(|m| m.1).collect();
        assert_eq!(
            mine,
            (0..PER).collect::<Vec<_>>(),
            "{setup:?}: sender {id}'s messages"
        );
    }
    let rx = assert_disconnected(setup, rx);
    // Disconnected is not a one-off.
    assert_disconnected(setup, rx);
}

/// Scenario 3 (cont.): `iter()` ends at disconnect; `try_iter()` never waits.
pub fn iterators(setup: Setup) {
    const N: u64 = 500;
    let pair = setup.pair::<u64>();
    let tx = pair.tx;
    let producer = std::thread::spawn(move || {
        for i in 0..N {
            tx.send(i).unwrap();
        }
    });
    let rx = pair.rx;
    let (rx, all) = within(PATIENCE, &format!("{setup:?}: iter()"), move || {
        let all: Vec<u64> = rx.iter().collect();
        (rx, all)
    });
    join(producer);
    assert_eq!(
        all,
        (0..N).collect::<Vec<_>>(),
        "{setup:?}: iter() before disconnect"
    );
    let start = Instant::now();
    assert_eq!(
        rx.try_iter().count(),
        0,
        "{setup:?}: try_iter after disconnect"
    );
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{setup:?}: try_iter waited"
    );

    // try_iter with a live sender: yields what is ready, in order, and returns at once.
    let pair = setup.pair::<u64>();
    for i in 0..5 {
        pair.tx.send(i).unwrap();
    }
    let start = Instant::now();
    let ready: Vec<u64> = pair.rx.try_iter().collect();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{setup:?}: try_iter waited {:?} with a live sender",
        start.elapsed()
    );
    assert_eq!(
        ready,
        (0..ready.len() as u64).collect::<Vec<_>>(),
        "{setup:?}: try_iter yields a prefix in order"
    );
    for i in ready.len() as u64..5 {
        assert_eq!(pair.recv_ok(), i, "{setup:?}: after try_iter");
    }
    let start = Instant::now();
    assert_eq!(
        pair.rx.try_iter().count(),
        0,
        "{setup:?}: try_iter on empty"
    );
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{setup:?}: try_iter on an empty live channel waited {:?}",
        start.elapsed()
    );
}

/// Scenario 4: Receiver dropped: `send`, `try_send` and `send_timeout` fail with `Disconnected` and
/// hand the message back; nothing blocks. Later connects find nothing.
pub fn send_after_receiver_dropped(setup: Setup) {
    let pair = setup.pair::<String>();
    pair.tx.send("before".to_string()).unwrap();
    assert_eq!(pair.recv_ok(), "before");
    let (tx, addr) = (pair.tx, pair.addr);
    let clone = tx.clone();
    drop(pair.rx);

    // A TCP write to a peer that closed may still succeed once or twice before the close is
    // seen; every other backend must fail the first send.
    let attempts = if setup == Setup::Tcp { 200 } else { 1 };
    within(
        PATIENCE,
        &format!("{setup:?}: send after drop"),
        move || {
            for i in 0..attempts {
                let msg = format!("message {i}");
                match tx.send(msg.clone()) {
                    Ok(()) => std::thread::sleep(Duration::from_millis(5)),
                    Err(e) => {
                        assert!(e.is_disconnected(), "{setup:?}: send error {e:?}");
                        assert!(matches!(e, SendError::Disconnected(_)), "{setup:?}: {e:?}");
                        assert_eq!(e.into_inner(), msg, "{setup:?}: message handed back");
                        return;
                    }
                }
            }
            panic!("{setup:?}: {attempts} sends after the receiver dropped all succeeded");
        },
    );

    within(
        PATIENCE,
        &format!("{setup:?}: clone after drop"),
        move || {
            match clone.try_send("try".to_string()) {
                Err(TrySendError::Disconnected(m)) => assert_eq!(m, "try"),
                other => panic!("{setup:?}: try_send: expected Disconnected, got {other:?}"),
            }
            match clone.send_timeout("timed".to_string(), Duration::from_secs(1)) {
                Err(SendTimeoutError::Disconnected(m)) => assert_eq!(m, "timed"),
                other => panic!("{setup:?}: send_timeout: expected Disconnected, got {other:?}"),
            }
            match clone.send("plain".to_string()) {
                Err(e) => {
                    assert!(e.is_disconnected(), "{setup:?}: {e:?}");
                    assert_eq!(e.into_inner(), "plain");
                }
                Ok(()) => panic!("{setup:?}: send on a clone after the receiver dropped succeeded"),
            }
        },
    );

    if let Some(addr) = addr {
        match Sender::<String>::connect(&addr) {
            Err(Error::NotFound { .. }) => {}
            other => panic!("{setup:?}: connect to a dropped receiver: {other:?}"),
        }
    }
}

/// Scenario 4 (cont.): A send blocked on a full buffer returns `Disconnected` (message handed back)
/// when the receiver drops.
pub fn blocked_send_fails_when_receiver_drops(setup: Setup) {
    const LEN: usize = 16 << 10;
    const MAX_SENDS: u32 = 10_000; // far beyond any buffer: 160 MiB
    let pair = setup.pair::<Vec<u8>>();
    let tx = pair.tx.clone();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let producer = std::thread::spawn(move || {
        for i in 0..MAX_SENDS {
            let msg = vec![i as u8; LEN];
            if let Err(e) = tx.send(msg) {
                return Some((i, e.is_disconnected(), e.into_inner() == vec![i as u8; LEN]));
            }
            if i == 0 {
                let _ = started_tx.send(());
            }
        }
        None
    });
    started_rx
        .recv_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("{setup:?}: the first send never completed"));
    assert_eq!(pair.recv_ok(), vec![0u8; LEN]);
    // Let the producer fill the buffer and block.
    std::thread::sleep(Duration::from_millis(200));
    drop(pair.rx);
    let outcome = within(
        PATIENCE,
        &format!("{setup:?}: a send blocked when the receiver dropped"),
        move || join(producer),
    );
    match outcome {
        Some((i, disconnected, handed_back)) => {
            assert!(
                disconnected,
                "{setup:?}: send {i} failed, but not as Disconnected"
            );
            assert!(
                handed_back,
                "{setup:?}: send {i} did not hand the message back"
            );
        }
        None => panic!("{setup:?}: {MAX_SENDS} sends succeeded with the receiver gone"),
    }
}

/// Scenario 11: A bound receiver serves a sender that connects after the previous one disconnected:
/// `recv` after `Disconnected` gets the new sender's messages.
pub fn reconnect_after_disconnect(setup: Setup) {
    const ROUNDS: u32 = 100;
    let pair = setup.pair::<u32>();
    let addr = pair.addr.clone().expect("bound");
    pair.tx.send(0).unwrap();
    drop(pair.tx);
    let rx = pair.rx;
    let rx = within(PATIENCE, &format!("{setup:?}: first sender"), move || {
        assert_eq!(
            rx.recv().ok(),
            Some(0),
            "{setup:?}: the first sender's message"
        );
        assert!(
            matches!(rx.recv(), Err(RecvError::Disconnected)),
            "{setup:?}: Disconnected after the first sender"
        );
        rx
    });
    for round in 1..=ROUNDS {
        let tx = Sender::<u32>::connect(&addr)
            .unwrap_or_else(|e| panic!("{setup:?}: round {round}: connect: {e}"));
        tx.send(round).unwrap();
        // Half the rounds drop the sender before receiving: its message must still arrive.
        let tx = if round % 2 == 0 {
            drop(tx);
            None
        } else {
            Some(tx)
        };
        match rx.recv_timeout(PATIENCE) {
            Ok(v) => assert_eq!(v, round, "{setup:?}: round {round}"),
            Err(e) => panic!(
                "{setup:?}: round {round}: a sender connected after a disconnect (sender {}): \
                 its message was not received, recv_timeout gave {e:?}",
                if tx.is_some() {
                    "still alive"
                } else {
                    "dropped after sending"
                }
            ),
        }
        drop(tx);
        match rx.recv_timeout(PATIENCE) {
            Err(RecvTimeoutError::Disconnected) => {}
            other => panic!("{setup:?}: round {round}: expected Disconnected, got {other:?}"),
        }
    }
}
