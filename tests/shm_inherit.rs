//! Shared-memory channel ends handed to a spawned child by inheritance: the ring moves to
//! the child, the parent's handle stops working, and the child's death is noticed.

mod common;

use std::time::{Duration, Instant};

use conduit::{
    channel, channel_with, Backend, Options, Receiver, RecvTimeoutError, SendError, SendFailure,
    Sender,
};

const CHILD: &str = "child_entry";

/// The child side of every test here; a no-op unless run as a child.
#[test]
fn child_entry() {
    let Some(role) = common::role() else { return };
    match role.as_str() {
        "send" => {
            let tx = Sender::<Vec<u8>>::from_parent("RING").expect("inherit sender");
            for i in 0..300u64 {
                tx.send(common::payload(i, (i as usize * 997) % 100_000))
                    .unwrap();
            }
        }
        "send_forever" => {
            let tx = Sender::<Vec<u8>>::from_parent("RING").expect("inherit sender");
            for i in 0.. {
                tx.send(common::payload(i, 20_000)).unwrap();
            }
        }
        "recv" => {
            let rx = Receiver::<u64>::from_parent("RING").expect("inherit receiver");
            let got: Vec<u64> = rx.iter().collect();
            assert_eq!(got, (0..10_000).collect::<Vec<_>>());
        }
        "wrong_type" => match Sender::<String>::from_parent("RING") {
            Err(conduit::Error::TypeMismatch { .. }) => {}
            other => panic!("expected TypeMismatch, got {other:?}"),
        },
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

#[test]
fn child_sends_through_an_inherited_ring() {
    let opts = Options::new().capacity(64 * 1024);
    let (tx, rx) = channel_with::<Vec<u8>>(Backend::Shm, &opts).unwrap();
    let mut cmd = common::child_command(CHILD, "send");
    tx.share_with_child(&mut cmd, "RING").unwrap();
    let child = cmd.spawn().unwrap();
    drop(cmd);
    // The parent's handle moved to the child: it refuses to send, handing the message back.
    match tx.send(vec![1]) {
        Err(SendError::Failed(m, SendFailure::Moved)) => assert_eq!(m, vec![1]),
        other => panic!("expected Moved, got {other:?}"),
    }
    drop(tx);
    for i in 0..300u64 {
        let m = rx.recv_timeout(Duration::from_secs(20)).expect("message");
        assert_eq!(
            m,
            common::payload(i, (i as usize * 997) % 100_000),
            "message {i}"
        );
    }
    // The child sent its 300 messages and exited: the end of the ring, not a timeout.
    match rx.recv_timeout(Duration::from_secs(20)) {
        Err(RecvTimeoutError::Disconnected) => {}
        Ok(m) => panic!("a message of {} bytes after the last one", m.len()),
        Err(e) => panic!("expected Disconnected once the child exited, got {e:?}"),
    }
    common::expect_success(child, "sender child");
}

#[test]
fn parent_sends_to_a_child_that_inherited_the_receiver() {
    let (tx, rx) = channel::<u64>(Backend::Shm).unwrap();
    let mut cmd = common::child_command(CHILD, "recv");
    rx.share_with_child(&mut cmd, "RING").unwrap();
    let child = cmd.spawn().unwrap();
    drop((cmd, rx));
    for i in 0..10_000u64 {
        tx.send(i).unwrap();
    }
    drop(tx);
    common::expect_success(child, "receiver child");
}

#[test]
fn a_killed_child_is_noticed() {
    let (tx, rx) = channel::<Vec<u8>>(Backend::Shm).unwrap();
    let mut cmd = common::child_command(CHILD, "send_forever");
    tx.share_with_child(&mut cmd, "RING").unwrap();
    let mut child = cmd.spawn().unwrap();
    drop((cmd, tx));
    for i in 0..50u64 {
        let m = rx.recv_timeout(Duration::from_secs(20)).expect("message");
        assert_eq!(m, common::payload(i, 20_000));
    }
    let killed = Instant::now();
    child.kill().unwrap();
    let mut next = 50u64;
    let mut own = common::OwnTime::default();
    let disconnected = loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(m) => {
                let got_at = Instant::now();
                assert_eq!(m, common::payload(next, 20_000), "message {next} intact");
                next += 1;
                own.since(got_at);
            }
            Err(RecvTimeoutError::Disconnected) => break Instant::now(),
            Err(e) => panic!("expected Disconnected after the kill, got {e:?}"),
        }
    };
    // Only the time inside recv counts, not this thread's checks of what still arrived.
    let took = own.library_time(killed, disconnected);
    eprintln!(
        "shm inherited sender SIGKILL -> Disconnected in {took:?} inside recv ({:?} in all, \
         {} messages after the kill)",
        disconnected - killed,
        next - 50
    );
    assert!(took < common::kill_noticed(), "took {took:?}");
    let _ = child.wait();
}

#[test]
fn a_child_of_the_wrong_type_is_refused() {
    let (tx, _rx) = channel::<u64>(Backend::Shm).unwrap();
    let mut cmd = common::child_command(CHILD, "wrong_type");
    tx.share_with_child(&mut cmd, "RING").unwrap();
    let child = cmd.spawn().unwrap();
    drop(cmd);
    common::expect_success(child, "wrong-type child");
}
