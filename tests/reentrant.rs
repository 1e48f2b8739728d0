//! A `Serialize` implementation that sends through the sender it is being sent with (a
//! logging hook, say) gets an error for that inner send, on every backend that serializes,
//! instead of deadlocking on the sender's lock or interleaving two messages. The outer
//! messages are delivered whole and in order; the inner ones never are. Likewise a
//! `Deserialize` that receives from the receiver it is being received by.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use conduit::{channel, Backend, Message, Receiver, Sender, TryRecvError};

/// A message whose `Serialize` sends another message through the sender it finds in
/// `NESTED` and records how that went in `OUTCOMES`.
struct Noisy(u32);

static NESTED: Mutex<Option<Sender<Noisy>>> = Mutex::new(None);
static OUTCOMES: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl Serialize for Noisy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 >= 100 {
            let tx = NESTED.lock().unwrap().clone();
            if let Some(tx) = tx {
                let outcome = match tx.send(Noisy(self.0 - 100)) {
                    Ok(()) => "sent".to_string(),
                    Err(e) => e.to_string(),
                };
                OUTCOMES.lock().unwrap().push(outcome);
            }
        }
        s.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for Noisy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u32::deserialize(d).map(Noisy)
    }
}

/// Sends 105, 0, 1, 2, 107 from another thread: both nested sends happen inside a use of the
/// sender (its lock is held: re-entering it would deadlock or hand out the connection twice),
/// the first on the sender's first use, the second after several.
fn check(name: &str, tx: Sender<Noisy>, rx: Receiver<Noisy>) {
    OUTCOMES.lock().unwrap().clear();
    *NESTED.lock().unwrap() = Some(tx.clone());
    let tx = Arc::new(tx);
    let sender = std::thread::spawn(move || {
        tx.send(Noisy(105)).unwrap();
        for i in 0..3 {
            tx.send(Noisy(i)).unwrap();
        }
        tx.send(Noisy(107)).unwrap();
    });
    let mut got = Vec::new();
    while got.len() < 5 {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Noisy(v)) => got.push(v),
            Err(e) => panic!("{name}: stuck after {got:?}: {e}"),
        }
    }
    sender.join().unwrap();
    *NESTED.lock().unwrap() = None;
    assert_eq!(
        got,
        vec![105, 0, 1, 2, 107],
        "{name}: the outer messages, in order"
    );
    let outcomes = OUTCOMES.lock().unwrap().clone();
    assert_eq!(outcomes.len(), 2, "{name}: {outcomes:?}");
    for outcome in outcomes {
        assert!(outcome.contains("inside its own send"), "{name}: {outcome}");
    }
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "{name}: no nested message got through"
    );
}

/// Runs `check` on a pair of every backend that serializes, one after another (the tests
/// share statics).
fn each_serializing_pair<T: Message>(check: impl Fn(&str, Sender<T>, Receiver<T>)) {
    for backend in [Backend::Shm, Backend::Socket, Backend::Pipe] {
        let (tx, rx) = channel::<T>(backend).unwrap();
        check(&format!("{backend:?}"), tx, rx);
    }
    let rx = Receiver::<T>::bind("tcp:127.0.0.1:0").unwrap();
    let tx = Sender::<T>::connect(&rx.local_addr().unwrap()).unwrap();
    check("tcp", tx, rx);
}

#[test]
fn a_serialize_that_sends_through_its_own_sender_gets_an_error_not_a_hang() {
    each_serializing_pair(check);
}

/// A message whose `Deserialize` tries to receive from the receiver it finds in `NESTED_RX`
/// and records how that went in `RX_OUTCOMES`.
struct Greedy(u32);

static NESTED_RX: Mutex<Option<Arc<Receiver<Greedy>>>> = Mutex::new(None);
static RX_OUTCOMES: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl Serialize for Greedy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for Greedy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = u32::deserialize(d)?;
        if value >= 100 {
            let rx = NESTED_RX.lock().unwrap().clone();
            if let Some(rx) = rx {
                let outcome = match rx.try_recv() {
                    Ok(Greedy(v)) => format!("received {v}"),
                    Err(e @ TryRecvError::Reentered) => e.to_string(),
                    Err(e) => format!("{e:?}"),
                };
                RX_OUTCOMES.lock().unwrap().push(outcome);
            }
        }
        Ok(Greedy(value))
    }
}

/// Sends 105, 1, 2, 107 at once, then receives them on another thread (so a deadlock fails
/// the test instead of hanging it): the nested receives inside the first and the last
/// message meet the receiver's lock, held by their own thread.
fn check_rx(name: &str, tx: Sender<Greedy>, rx: Receiver<Greedy>) {
    RX_OUTCOMES.lock().unwrap().clear();
    for v in [105, 1, 2, 107] {
        tx.send(Greedy(v)).unwrap();
    }
    let rx = Arc::new(rx);
    *NESTED_RX.lock().unwrap() = Some(rx.clone());
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let got: Vec<u32> = (0..4).map(|_| rx.recv().unwrap().0).collect();
        let _ = done_tx.send(got);
    });
    let got = done_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{name}: the receiver is stuck"));
    *NESTED_RX.lock().unwrap() = None;
    assert_eq!(got, vec![105, 1, 2, 107], "{name}: every message, in order");
    let outcomes = RX_OUTCOMES.lock().unwrap().clone();
    assert_eq!(outcomes.len(), 2, "{name}: {outcomes:?}");
    for outcome in outcomes {
        assert!(outcome.contains("inside its own"), "{name}: {outcome}");
    }
}

#[test]
fn a_deserialize_that_receives_from_its_own_receiver_gets_an_error_not_a_hang() {
    each_serializing_pair(check_rx);
}
