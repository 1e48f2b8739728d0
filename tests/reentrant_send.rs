//! A `Serialize` implementation that sends through the sender it is being sent with (a
//! logging hook, say) gets an error for that inner send, on every backend that serializes,
//! instead of deadlocking on the sender's lock or interleaving two messages. The outer
//! messages are delivered whole and in order; the inner ones never are.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use conduit::{channel, Backend, Receiver, Sender};

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

/// Sends 105, 0, 1, 2, 107 from another thread: the first nested send happens inside the
/// sender's first use (its lock's mutex is held: re-entering it would deadlock), the second
/// once the lock is biased to that thread (re-entering the fast path would hand out the
/// connection twice).
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

/// One test, so the backends take turns with the shared statics.
#[test]
fn a_serialize_that_sends_through_its_own_sender_gets_an_error_not_a_hang() {
    for backend in [Backend::Shm, Backend::Socket, Backend::Pipe] {
        let (tx, rx) = channel::<Noisy>(backend).unwrap();
        check(&format!("{backend:?}"), tx, rx);
    }
    let rx = Receiver::<Noisy>::bind("tcp:127.0.0.1:0").unwrap();
    let tx = Sender::<Noisy>::connect(&rx.local_addr().unwrap()).unwrap();
    check("tcp", tx, rx);
}
