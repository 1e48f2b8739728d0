//! Channels between real processes: the child is this test binary re-run as one role
//! (`child_entry`), connected by a bound address or by an inherited channel end.

mod common;

use std::fmt::Display;
use std::process::Child;
use std::time::{Duration, Instant};

use conduit::{channel, Backend, Error, Message, Receiver, RecvTimeoutError, Sender};

/// The test function a child process runs.
const ENTRY: &str = "child_entry";
/// Longest wait for anything that should take milliseconds.
const LONG: Duration = Duration::from_secs(30);
/// Messages from one child in the many-messages tests.
const MANY: u64 = 5_000;
/// Messages from each of the three children sharing one receiver.
const EACH: u64 = 1_500;
/// The large-message test's size.
const HUGE: usize = 32 << 20;

/// Bytes serialized as one byte string (`serde_bytes`), not a sequence of `u8`s: the
/// tests run unoptimized, where element-by-element encoding of megabytes takes seconds.
#[derive(PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
struct Blob(#[serde(with = "serde_bytes")] Vec<u8>);

/// (producer id, sequence number, payload).
type Msg = (u32, u64, Blob);

/// Sizes from 0 B to 200 KiB: mostly small, some around one 64 KiB piece, some multi-piece.
fn size_for(seq: u64) -> usize {
    let s = seq as usize;
    match seq % 100 {
        0 | 50 => 0,
        7 => 65_537 + (s * 7_919) % (200 * 1024 - 65_537),
        13 => 65_520 + (s / 100) % 32,
        n if n % 10 == 5 => 1_000 + (s * 131) % 7_000,
        _ => (s * 31) % 300,
    }
}

fn key(id: u32, seq: u64) -> u64 {
    (u64::from(id) << 32) | seq
}

fn message(id: u32, seq: u64) -> Msg {
    (id, seq, Blob(common::payload(key(id, seq), size_for(seq))))
}

/// Checks that `got` is message `seq` of producer `id` with `len` bytes of its payload.
fn check(got: &Msg, id: u32, seq: u64, len: usize) -> Result<(), String> {
    if (got.0, got.1) != (id, seq) {
        return Err(format!(
            "expected message {seq} of producer {id}, got message {} of producer {}",
            got.1, got.0
        ));
    }
    let want = common::payload(key(id, seq), len);
    if got.2 .0 != want {
        let at = got.2 .0.iter().zip(&want).position(|(a, b)| a != b);
        return Err(format!(
            "message {seq} of producer {id} is damaged: {} bytes (expected {len}), first \
             difference at {at:?}",
            got.2 .0.len()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Child side.

fn child_fail(code: i32, what: impl Display) -> ! {
    eprintln!("cross_process child: {what}");
    std::process::exit(code)
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| child_fail(2, format!("{name} is not set")))
}

fn env_u64(name: &str) -> u64 {
    env(name)
        .parse()
        .unwrap_or_else(|_| child_fail(2, format!("{name} is not a number")))
}

fn child_sender(addr: &str) -> Sender<Msg> {
    let tx = if addr == "inherit" {
        Sender::from_parent("OUT")
    } else {
        Sender::connect(addr)
    };
    tx.unwrap_or_else(|e| child_fail(2, format!("cannot get a sender for {addr}: {e}")))
}

fn child_send(tx: &Sender<Msg>, msg: Msg) {
    if let Err(e) = tx.send(msg) {
        child_fail(3, format!("send failed: {e}"));
    }
}

/// Exit codes: 0 done; 2 setup failed; 3 send failed; 4 bad message; 5 wrong recv outcome;
/// 6 a type mismatch went unnoticed; 7 a type mismatch gave another error.
#[test]
fn child_entry() {
    let Some(role) = common::role() else { return };
    match role.as_str() {
        "send" => {
            let tx = child_sender(&env("CDT_ADDR"));
            let id = env_u64("CDT_ID") as u32;
            for seq in 0..env_u64("CDT_COUNT") {
                child_send(&tx, message(id, seq));
            }
        }
        "send_huge" => {
            let tx = child_sender(&env("CDT_ADDR"));
            child_send(&tx, message(0, 0));
            child_send(&tx, (0, 1, Blob(common::payload(key(0, 1), HUGE))));
            child_send(&tx, message(0, 2));
        }
        "recv" => {
            let rx = Receiver::<Msg>::from_parent("IN")
                .unwrap_or_else(|e| child_fail(2, format!("from_parent: {e}")));
            for seq in 0..env_u64("CDT_COUNT") {
                match rx.recv_timeout(LONG) {
                    Ok(m) => check(&m, 9, seq, size_for(seq)).unwrap_or_else(|e| child_fail(4, e)),
                    Err(e) => child_fail(5, format!("recv of message {seq}: {e}")),
                }
            }
            match rx.recv_timeout(LONG) {
                Err(RecvTimeoutError::Disconnected) => {}
                Ok(m) => child_fail(5, format!("unexpected message {} after the last", m.1)),
                Err(e) => child_fail(5, format!("expected Disconnected, got {e}")),
            }
        }
        "mismatch" => {
            let addr = env("CDT_ADDR");
            let result = match addr.as_str() {
                "inherit_tx" => Sender::<String>::from_parent("OUT").map(drop),
                "inherit_rx" => Receiver::<String>::from_parent("IN").map(drop),
                _ => Sender::<String>::connect(&addr).map(|tx| {
                    let _ = tx.send("not a u64".to_string());
                }),
            };
            match result {
                Err(Error::TypeMismatch { .. }) => {}
                Ok(()) => child_fail(
                    6,
                    format!("{addr}: a String end of a u64 channel was accepted"),
                ),
                Err(e) => child_fail(7, format!("{addr}: expected TypeMismatch, got {e}")),
            }
        }
        other => child_fail(2, format!("unknown role {other}")),
    }
    std::process::exit(0);
}

// ---------------------------------------------------------------------------------------
// Parent side.

/// Spawns a child playing `role` that sends to a receiver of `T` on `target` (`unix`, `tcp`:
/// bound here, the child connects; `pipe`, `socket`: an anonymous sender it inherits).
fn start<T: Message>(target: &str, role: &str, envs: &[(&str, &str)]) -> (Receiver<T>, Child) {
    let mut cmd = common::child_command(ENTRY, role);
    cmd.envs(envs.iter().copied());
    let rx = match target {
        "unix" | "tcp" => {
            let addr = match target {
                "unix" => common::unix_addr(),
                _ => "tcp:127.0.0.1:0".to_string(),
            };
            let rx = Receiver::<T>::bind(&addr).expect("bind");
            cmd.env(
                "CDT_ADDR",
                rx.local_addr().expect("a bound receiver has an address"),
            );
            rx
        }
        _ => {
            let (tx, rx) = channel::<T>(backend(target)).expect("channel");
            tx.share_with_child(&mut cmd, "OUT")
                .expect("share_with_child");
            cmd.env("CDT_ADDR", "inherit");
            rx // the parent's sender drops here: the child is the only producer
        }
    };
    let child = cmd.spawn().expect("spawn child");
    drop(cmd); // closes the parent's copy of an inherited end
    (rx, child)
}

fn backend(target: &str) -> Backend {
    match target {
        "pipe" => Backend::Pipe,
        "socket" => Backend::Socket,
        _ => unreachable!("{target} is not an anonymous backend"),
    }
}

fn recv_or_panic<T: Message>(rx: &Receiver<T>, what: &str) -> T {
    rx.recv_timeout(LONG)
        .unwrap_or_else(|e| panic!("{what}: recv failed: {e}"))
}

fn assert_disconnected<T: Message>(rx: &Receiver<T>, what: &str) {
    match rx.recv_timeout(LONG) {
        Err(RecvTimeoutError::Disconnected) => {}
        Ok(_) => panic!("{what}: a message arrived after the last one"),
        Err(e) => panic!("{what}: expected Disconnected, got {e}"),
    }
}

fn one_child_many_messages(target: &str) {
    let started = Instant::now();
    let count = MANY.to_string();
    let (rx, child) = start::<Msg>(target, "send", &[("CDT_ID", "1"), ("CDT_COUNT", &count)]);
    for seq in 0..MANY {
        let m = recv_or_panic(&rx, target);
        check(&m, 1, seq, size_for(seq)).unwrap_or_else(|e| panic!("{target}: {e}"));
    }
    common::expect_success(child, target);
    assert_disconnected(&rx, target);
    eprintln!(
        "{target}: {MANY} messages from one child in {:?}",
        started.elapsed()
    );
}

#[test]
fn one_child_many_messages_unix() {
    one_child_many_messages("unix");
}

#[test]
fn one_child_many_messages_tcp() {
    one_child_many_messages("tcp");
}

#[test]
fn one_child_many_messages_inherited_pipe() {
    one_child_many_messages("pipe");
}

#[test]
fn one_child_many_messages_inherited_socket() {
    one_child_many_messages("socket");
}

fn three_children_one_receiver(addr: &str) {
    let rx = Receiver::<Msg>::bind(addr).expect("bind");
    let addr = rx.local_addr().expect("bound address");
    let count = EACH.to_string();
    let children: Vec<Child> = (1..=3u32)
        .map(|id| {
            let id = id.to_string();
            let envs = [
                ("CDT_ADDR", addr.as_str()),
                ("CDT_ID", &id),
                ("CDT_COUNT", &count),
            ];
            common::spawn_child(ENTRY, "send", &envs)
        })
        .collect();
    let mut next = [0u64; 3];
    let deadline = Instant::now() + Duration::from_secs(60);
    while next.iter().sum::<u64>() < 3 * EACH {
        assert!(Instant::now() < deadline, "{addr}: stuck after {next:?}");
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(m) => {
                let id = m.0;
                assert!((1..=3).contains(&id), "{addr}: unknown producer {id}");
                let seq = &mut next[id as usize - 1];
                check(&m, id, *seq, size_for(*seq)).unwrap_or_else(|e| panic!("{addr}: {e}"));
                *seq += 1;
            }
            Err(RecvTimeoutError::Timeout) => {}
            // Every connected child may have finished before the next one connected: a
            // bound receiver reports that, and serves later senders on the next call.
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => panic!("{addr}: recv failed: {e}"),
        }
    }
    for child in children {
        common::expect_success(child, &addr);
    }
    assert_disconnected(&rx, &addr);
}

#[test]
fn three_children_one_bound_receiver_unix() {
    three_children_one_receiver(&common::unix_addr());
}

#[test]
fn three_children_one_bound_receiver_tcp() {
    three_children_one_receiver("tcp:127.0.0.1:0");
}

fn huge_message(target: &str) {
    let started = Instant::now();
    let expected = std::thread::spawn(|| common::payload(key(0, 1), HUGE));
    let (rx, child) = start::<Msg>(target, "send_huge", &[]);
    let first = recv_or_panic(&rx, target);
    check(&first, 0, 0, size_for(0)).unwrap_or_else(|e| panic!("{target}: {e}"));
    let huge = recv_or_panic(&rx, target);
    assert_eq!(
        (huge.0, huge.1),
        (0, 1),
        "{target}: the huge message is not next"
    );
    assert_eq!(
        huge.2 .0.len(),
        HUGE,
        "{target}: the huge message has the wrong length"
    );
    let expected = expected.join().expect("payload thread");
    assert!(
        huge.2 .0 == expected,
        "{target}: the 32 MiB message is damaged"
    );
    let last = recv_or_panic(&rx, target);
    check(&last, 0, 2, size_for(2)).unwrap_or_else(|e| panic!("{target}: {e}"));
    common::expect_success(child, target);
    assert_disconnected(&rx, target);
    eprintln!(
        "{target}: 32 MiB across processes in {:?}",
        started.elapsed()
    );
}

#[test]
fn huge_message_unix() {
    huge_message("unix");
}

#[test]
fn huge_message_inherited_pipe() {
    huge_message("pipe");
}

/// Waits for a mismatch child and asserts it saw `Error::TypeMismatch` (exit code 0).
fn expect_mismatch_seen(mut child: Child, what: &str) {
    let status = child.wait().expect("wait for child");
    let meaning = match status.code() {
        Some(0) => return,
        Some(6) => "the wrong-typed end was accepted",
        Some(7) => "another error than TypeMismatch",
        _ => "the child failed",
    };
    panic!("{what}: {meaning} ({status})");
}

fn type_mismatch_bound(addr: &str) {
    let rx = Receiver::<u64>::bind(addr).expect("bind");
    let addr = rx.local_addr().expect("bound address");
    let child = common::spawn_child(ENTRY, "mismatch", &[("CDT_ADDR", &addr)]);
    expect_mismatch_seen(child, &addr);
    // Nothing from the refused child ever reaches the receiver; it never counted as a sender.
    match rx.recv_timeout(Duration::from_millis(300)) {
        Err(RecvTimeoutError::Timeout) => {}
        Ok(v) => panic!("{addr}: got {v} from a mismatched sender"),
        Err(e) => panic!("{addr}: expected Timeout, got {e}"),
    }
    // The receiver still serves a sender of the right type.
    let tx = Sender::<u64>::connect(&addr).expect("connect with the right type");
    tx.send(42).expect("send");
    assert_eq!(rx.recv_timeout(LONG).expect("recv"), 42);
}

#[test]
fn type_mismatch_across_processes_unix() {
    type_mismatch_bound(&common::unix_addr());
}

#[test]
fn type_mismatch_across_processes_tcp() {
    type_mismatch_bound("tcp:127.0.0.1:0");
}

#[test]
fn type_mismatch_by_inheritance() {
    for target in ["pipe", "socket"] {
        // The child takes the sender of a u64 channel as a Sender<String>.
        let (tx, rx) = channel::<u64>(backend(target)).expect("channel");
        let mut cmd = common::child_command(ENTRY, "mismatch");
        cmd.env("CDT_ADDR", "inherit_tx");
        tx.share_with_child(&mut cmd, "OUT").expect("share");
        let child = cmd.spawn().expect("spawn");
        drop(cmd);
        expect_mismatch_seen(child, target);
        match rx.recv_timeout(Duration::from_millis(300)) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(v) => panic!("{target}: got {v} from a mismatched child"),
            Err(e) => panic!("{target}: expected Timeout, got {e}"),
        }
        drop(tx);
        assert_disconnected(&rx, target);

        // The child takes the receiver of a u64 channel as a Receiver<String>.
        let (tx, rx) = channel::<u64>(backend(target)).expect("channel");
        let mut cmd = common::child_command(ENTRY, "mismatch");
        cmd.env("CDT_ADDR", "inherit_rx");
        rx.share_with_child(&mut cmd, "IN").expect("share");
        let child = cmd.spawn().expect("spawn");
        drop((cmd, rx));
        expect_mismatch_seen(child, target);
        // No receiver is left anywhere: the send fails and hands the value back.
        let err = tx.send(7).expect_err("send with no receiver left");
        assert!(
            err.is_disconnected(),
            "{target}: expected Disconnected, got {err}"
        );
        assert_eq!(err.into_inner(), 7);
    }
}

#[test]
fn parent_sends_to_child() {
    const COUNT: u64 = 1_000;
    for target in ["pipe", "socket"] {
        let (tx, rx) = channel::<Msg>(backend(target)).expect("channel");
        let mut cmd = common::child_command(ENTRY, "recv");
        cmd.env("CDT_COUNT", COUNT.to_string());
        rx.share_with_child(&mut cmd, "IN").expect("share");
        let child = cmd.spawn().expect("spawn");
        drop((cmd, rx));
        for seq in 0..COUNT {
            if let Err(e) = tx.send(message(9, seq)) {
                panic!("{target}: send {seq} failed: {e}");
            }
        }
        drop(tx);
        common::expect_success(child, &format!("{target}: child receiver"));
    }
}

/// A child run with a test name that matches nothing runs zero tests and exits 0; it must
/// not pass for a child that played its role (`common::expect_success` checks the mark).
#[test]
fn a_child_whose_test_name_matches_nothing_is_caught() {
    let mut child = common::spawn_child("no_test_has_this_name", "send", &[]);
    let status = child.wait().expect("wait for the child");
    assert!(status.success(), "libtest exits 0 when no test matches");
    assert!(
        !common::ran_as_child(child.id()),
        "a child that ran no test left the mark of one that played its role"
    );
    // The control: a child whose test matched reads its role (here one it does not know,
    // so it fails) and leaves the mark.
    let mut child = common::spawn_child(ENTRY, "no_such_role", &[]);
    let status = child.wait().expect("wait for the child");
    assert_eq!(status.code(), Some(2), "the child reports an unknown role");
    assert!(common::ran_as_child(child.id()), "the child left no mark");
}
