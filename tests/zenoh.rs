//! `zenoh:` between real processes over 127.0.0.1 (multicast scouting off): delivery and
//! draining across an exit, many sender processes, one after another, the key held by a
//! live receiver in another process, type checks, the receiver's size limit, a full window
//! with a blocked send beside `try_send` and `send_timeout`, SIGKILL and SIGSTOP of either
//! side against the stated bounds, and hostile publications on the key. The conformance
//! suite's scenarios that cross processes run over `zenoh:` too (`Target::Zenoh`).
//!
//! The children are this test binary re-run as one role (`zenoh_child`); they join the
//! parent's zenoh network through `ZENOH_CONFIG` (`common::zenoh::join`).
#![cfg(feature = "zenoh")]

mod common;

use std::time::{Duration, Instant};

use common::zenoh::{self as z, LEASE_MS};
use common::Reaped;
use conduit::{
    Error, Receiver, RecvTimeoutError, SendError, SendFailure, SendTimeoutError, Sender,
    TrySendError,
};

/// The test function a child process runs.
const ENTRY: &str = "zenoh_child";
/// Where a child finds the channel's address.
const ADDR_ENV: &str = "CDT_ZENOH_ADDR";
/// How long anything that should happen may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);
/// Messages each sending child sends.
const N: u64 = 2000;
/// The receiver's size limit in the tests of limits.
const LIMIT: usize = 1024;

/// The short lease a stopped child announces; a SIGKILLed peer is noticed well within it,
/// when the kernel closes its sockets.
fn lease() -> Duration {
    Duration::from_millis(LEASE_MS)
}

fn spawn(role: &str, addr: &str, extra: &[(&str, &str)]) -> Reaped {
    let mut cmd = common::child_command(ENTRY, role);
    common::die_with_parent(&mut cmd);
    z::join(&mut cmd);
    cmd.env(ADDR_ENV, addr);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Reaped::new(cmd.spawn().expect("spawn the child"))
}

/// A receiver for this process's tests.
fn bind<T: conduit::Message>(addr: &str, opts: conduit::Options) -> Receiver<T> {
    let opts = opts.zenoh_config(z::config());
    Receiver::bind_with(addr, &opts).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
}

/// Connects, retrying while the child that binds `addr` is still starting.
fn connect_retrying<T: conduit::Message>(addr: &str) -> Sender<T> {
    let start = Instant::now();
    loop {
        match Sender::connect_with(addr, &z::opts()) {
            Ok(tx) => return tx,
            Err(Error::NotFound { .. }) if start.elapsed() < PATIENCE => {}
            Err(e) => panic!("connect {addr}: {e}"),
        }
    }
}

fn signal(child: &Reaped, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our own unreaped child.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({}, {sig})", child.id());
}

/// A child sends `N` numbered messages of mixed sizes and exits at once: every one
/// arrives, in order, then `Disconnected` (the sender's goodbye is answered only once its
/// messages are in).
#[test]
fn child_sends_then_exits_everything_arrives() {
    let addr = z::key("exit");
    let rx = bind::<(u64, Vec<u8>)>(&addr, conduit::Options::new());
    let child = spawn("send", &addr, &[]);
    for i in 0..N {
        match rx.recv_timeout(PATIENCE) {
            Ok((j, body)) => {
                assert_eq!(j, i, "messages in order");
                assert!(body == common::payload(i, size(i)), "message {i} intact");
            }
            Err(e) => panic!("message {i}: {e:?}"),
        }
    }
    match rx.recv_timeout(PATIENCE) {
        Err(RecvTimeoutError::Disconnected) => {}
        other => panic!("after the last message: {:?}", other.map(|(j, _)| j)),
    }
    child.expect_success(PATIENCE, "the sending child");
}

fn size(i: u64) -> usize {
    match i % 100 {
        7 => 1 << 20,
        3 => 70_000,
        _ => (i as usize * 37) % 300,
    }
}

/// Three sender processes: each one's messages in its order, all of them, then
/// `Disconnected` once all three (and this process's own sender) are gone.
#[test]
fn three_sender_processes() {
    let addr = z::key("three");
    let rx = bind::<(u64, Vec<u8>)>(&addr, conduit::Options::new().capacity(64 << 10));
    // A sender of our own keeps the receiver from reporting Disconnected between one
    // child's goodbye and the next child's hello.
    let keep = Sender::<(u64, Vec<u8>)>::connect_with(&addr, &z::opts()).expect("connect");
    let children: Vec<Reaped> = (0..3).map(|_| spawn("send-tagged", &addr, &[])).collect();
    let mut next = std::collections::HashMap::new();
    for _ in 0..3 * N {
        let (tag, body) = rx.recv_timeout(PATIENCE).expect("a message");
        let seq = u64::from_le_bytes(body[..8].try_into().unwrap());
        let want = next.entry(tag).or_insert(0u64);
        assert_eq!(seq, *want, "sender {tag}: in order");
        *want += 1;
    }
    assert_eq!(next.len(), 3, "three senders");
    drop(keep);
    assert!(matches!(
        rx.recv_timeout(PATIENCE),
        Err(RecvTimeoutError::Disconnected)
    ));
    for child in children {
        child.expect_success(PATIENCE, "a sending child");
    }
}

/// A key held by a live receiver in another process cannot be bound here; a sender of
/// another type is refused at connect.
#[test]
fn key_held_and_type_checked_across_processes() {
    let addr = z::key("held");
    let child = spawn("hold", &addr, &[]);
    // The child's receiver answers this sender once it is up.
    let tx = connect_retrying::<u64>(&addr);
    match Receiver::<u64>::bind_with(&addr, &z::opts()) {
        Err(Error::AddrInUse { .. }) => {}
        other => panic!("second bind of a held key: {:?}", other.map(|_| "bound")),
    }
    match Sender::<String>::connect_with(&addr, &z::opts()) {
        Err(Error::TypeMismatch { .. }) => {}
        other => panic!(
            "connect with another type: {:?}",
            other.map(|_| "connected")
        ),
    }
    tx.send(7).expect("send to the holding child");
    drop(tx);
    child.expect_success(PATIENCE, "the holding child");
}

/// A sender process killed with SIGKILL: the receiver's blocked `recv` ends with
/// `Disconnected` within the lease (in practice as soon as the kernel closes the socket).
#[test]
fn sigkill_of_a_sender_is_noticed_within_the_lease() {
    let addr = z::key("kill-tx");
    let rx = bind::<u64>(&addr, conduit::Options::new());
    let child = spawn("send-forever", &addr, &[]);
    rx.recv_timeout(PATIENCE).expect("the child sends");
    signal(&child, libc::SIGKILL);
    let killed = Instant::now();
    loop {
        match rx.recv_timeout(PATIENCE) {
            Ok(_) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("after SIGKILL: {e:?}"),
        }
    }
    let took = killed.elapsed();
    eprintln!(
        "SIGKILLed sender noticed after {took:?} (lease {:?})",
        lease()
    );
    assert!(took < lease(), "noticed after {took:?}");
    drop(child);
}

/// A sender process stopped (SIGSTOP: alive, its sockets open, silent): the lease expires
/// and the receiver reports `Disconnected` within it, plus one keep-alive period.
#[test]
fn stopped_sender_expires_with_the_lease() {
    let addr = z::key("stop-tx");
    let rx = bind::<u64>(&addr, conduit::Options::new());
    let config = z::short_lease_config();
    let child = spawn("send-forever", &addr, &[("ZENOH_CONFIG", &config)]);
    rx.recv_timeout(PATIENCE).expect("the child sends");
    signal(&child, libc::SIGSTOP);
    let stopped = Instant::now();
    loop {
        match rx.recv_timeout(PATIENCE) {
            Ok(_) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("after SIGSTOP: {e:?}"),
        }
    }
    let took = stopped.elapsed();
    eprintln!(
        "stopped sender expired after {took:?} (lease {:?})",
        lease()
    );
    assert!(
        took <= lease() + lease() / 2,
        "a silent sender outlived its lease: {took:?}"
    );
    signal(&child, libc::SIGKILL);
    drop(child);
}

/// A receiver process that does not receive fills this sender's window. Beside a clone
/// blocked in `send`, `try_send` reports `Full` at once and `send_timeout` times out on
/// time; the receiver killed with SIGKILL, the blocked `send` fails with `Disconnected`
/// within the lease, handing the message back.
#[test]
fn sigkill_of_the_receiver_fails_a_blocked_send() {
    let addr = z::key("kill-rx");
    let child = spawn("hold-idle", &addr, &[]);
    let tx = connect_retrying::<Vec<u8>>(&addr);
    let mut n = 0;
    loop {
        match tx.try_send(vec![1; 1000]) {
            Ok(()) => n += 1,
            Err(TrySendError::Full(_)) => break,
            Err(e) => panic!("filling: {e:?}"),
        }
        assert!(n < 100_000, "never Full");
    }
    let clone = tx.clone();
    let blocked = std::thread::spawn(move || {
        let result = clone.send(vec![2; 1000]);
        (Instant::now(), result)
    });
    std::thread::sleep(Duration::from_millis(50));
    assert!(!blocked.is_finished(), "a send on a full window returned");
    let start = Instant::now();
    match tx.try_send(vec![4; 1000]) {
        Err(TrySendError::Full(back)) => assert_eq!(back, vec![4; 1000]),
        other => panic!("try_send beside a blocked send: {other:?}"),
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(100),
        "try_send beside a blocked send took {took:?}"
    );
    let start = Instant::now();
    match tx.send_timeout(vec![3; 1000], Duration::from_millis(100)) {
        Err(SendTimeoutError::Timeout(back)) => assert_eq!(back, vec![3; 1000]),
        other => panic!("send_timeout beside a blocked send: {other:?}"),
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_millis(600),
        "send_timeout(100 ms) beside a blocked send returned after {took:?}"
    );
    signal(&child, libc::SIGKILL);
    let killed = Instant::now();
    let (returned, result) = blocked.join().unwrap();
    match result {
        Err(SendError::Disconnected(back)) => assert_eq!(back, vec![2; 1000]),
        other => panic!("blocked send after the receiver was killed: {other:?}"),
    }
    let took = returned.saturating_duration_since(killed);
    eprintln!(
        "SIGKILLed receiver noticed after {took:?} (lease {:?})",
        lease()
    );
    assert!(took < lease(), "noticed after {took:?}");
    drop(child);
}

/// The receiver's size limit binds a sender in another process: a message over it fails at
/// the sender with `TooLarge` by every send method (the child checks, and that the message
/// comes back), nothing of it arrives here, and messages within the limit still do.
#[test]
fn receivers_limit_binds_a_sender_process() {
    let addr = z::key("limit");
    let rx = bind::<Vec<u8>>(&addr, conduit::Options::new().max_message_size(LIMIT));
    let child = spawn("over-limit", &addr, &[]);
    for i in 0..3 {
        match rx.recv_timeout(PATIENCE) {
            Ok(v) => assert!(v == common::payload(i, LIMIT / 2), "message {i} intact"),
            Err(e) => panic!("message {i} within the limit: {e:?}"),
        }
    }
    match rx.recv_timeout(PATIENCE) {
        Err(RecvTimeoutError::Disconnected) => {}
        other => panic!("after the last message: {:?}", other.map(|v| v.len())),
    }
    child.expect_success(PATIENCE, "the child over the limit");
}

/// Sender processes one after another: the receiver reports `Disconnected` when the first
/// has gone (and again while no other is connected), then takes the next one's messages,
/// and reports `Disconnected` again.
#[test]
fn a_new_sender_process_after_disconnected() {
    let addr = z::key("again");
    let rx = bind::<(u64, Vec<u8>)>(&addr, conduit::Options::new());
    for round in 0..3 {
        let child = spawn("send-tagged", &addr, &[]);
        let start = Instant::now();
        for i in 0..N {
            let got = loop {
                match rx.recv_timeout(PATIENCE) {
                    // Until the new child has connected, every sender is still gone.
                    Err(RecvTimeoutError::Disconnected)
                        if round > 0 && i == 0 && start.elapsed() < PATIENCE =>
                    {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    other => break other,
                }
            };
            match got {
                Ok((_, body)) => assert_eq!(
                    u64::from_le_bytes(body[..8].try_into().unwrap()),
                    i,
                    "round {round}: in order"
                ),
                Err(e) => panic!("round {round}, message {i}: {e:?}"),
            }
        }
        match rx.recv_timeout(PATIENCE) {
            Err(RecvTimeoutError::Disconnected) => {}
            other => panic!("round {round}: {:?}", other.map(|(t, _)| t)),
        }
        child.expect_success(PATIENCE, "a sending child");
    }
}

/// Publications on the key that do not follow the protocol are dropped without disturbing
/// an honest sender: a stranger's message (never said hello), one that names no sender,
/// and, from senders that did, bytes that do not decode, a message over the receiver's
/// limit (refused on its length), and an unknown kind. Each offender is dropped (and told:
/// its sends then fail); the honest sender's messages all arrive, in order, and nothing
/// else does.
#[test]
fn hostile_publications_are_dropped() {
    let addr = z::key("hostile");
    let rx = bind::<Vec<u8>>(&addr, conduit::Options::new().max_message_size(LIMIT));
    let child = spawn("hostile", &addr, &[]);
    for i in 0..N {
        match rx.recv_timeout(PATIENCE) {
            Ok(v) => assert!(
                v == common::payload(i, 8),
                "message {i}: got {} bytes",
                v.len()
            ),
            Err(e) => panic!("honest message {i}: {e:?}"),
        }
    }
    match rx.recv_timeout(PATIENCE) {
        Err(RecvTimeoutError::Disconnected) => {}
        other => panic!("after the honest messages: {:?}", other.map(|v| v.len())),
    }
    child.expect_success(PATIENCE, "the hostile child");
}

/// Two processes with no configuration at all (no `ZENOH_CONFIG`, nothing in `Options`):
/// conduit's default has them meet on 127.0.0.1 (the first listens on the default port,
/// the second connects to it), and every message arrives, then `Disconnected`.
#[test]
fn two_processes_meet_with_the_default_configuration() {
    let addr = z::key("default");
    let spawn_default = |role: &str| {
        let mut cmd = common::child_command(ENTRY, role);
        common::die_with_parent(&mut cmd);
        cmd.env_remove("ZENOH_CONFIG").env(ADDR_ENV, &addr);
        Reaped::new(cmd.spawn().expect("spawn the child"))
    };
    let receiver = spawn_default("default-recv");
    let sender = spawn_default("default-send");
    sender.expect_success(PATIENCE, "the sender with the default configuration");
    receiver.expect_success(PATIENCE, "the receiver with the default configuration");
}

/// A process has one zenoh session: a channel whose options name another configuration
/// than the one it was opened with is refused, not quietly given the open one.
#[test]
fn a_second_configuration_is_refused() {
    let addr = z::key("second-config");
    let other = conduit::Options::new().zenoh_config(r#"{ mode: "peer" }"#);
    match Receiver::<u8>::bind_with(&addr, &other) {
        Err(e @ Error::Unsupported { .. }) => {
            assert!(e.to_string().contains("zenoh configuration"), "{e}")
        }
        other => panic!(
            "bind with another configuration: {:?}",
            other.map(|_| "bound")
        ),
    }
    // The same configuration, or none, shares the open session.
    let rx = Receiver::<u8>::bind_with(&addr, &z::opts()).expect("the same configuration");
    let tx = Sender::<u8>::connect(&addr).expect("no configuration");
    tx.send(1).unwrap();
    assert!(matches!(rx.recv_timeout(PATIENCE), Ok(1)));
}

/// The child roles.
#[test]
fn zenoh_child() {
    let Some(role) = common::role() else {
        return;
    };
    common::child_watchdog(Duration::from_secs(60));
    let addr = std::env::var(ADDR_ENV).expect("the address");
    match role.as_str() {
        "send" => {
            let tx = connect_retrying::<(u64, Vec<u8>)>(&addr);
            for i in 0..N {
                tx.send((i, common::payload(i, size(i)))).expect("send");
            }
            // Dropped, then the process exits: nothing may be lost.
        }
        "send-tagged" => {
            let tx = connect_retrying::<(u64, Vec<u8>)>(&addr);
            let tag = u64::from(std::process::id());
            for i in 0..N {
                let mut body = i.to_le_bytes().to_vec();
                body.resize(8 + (i as usize % 200), 0);
                tx.send((tag, body)).expect("send");
            }
        }
        "send-forever" => {
            let tx = connect_retrying::<u64>(&addr);
            for i in 0.. {
                tx.send(i).expect("send");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        "hold" => {
            let rx = Receiver::<u64>::bind(&addr).expect("bind in the child");
            assert!(matches!(rx.recv_timeout(PATIENCE), Ok(7)));
            assert!(matches!(
                rx.recv_timeout(PATIENCE),
                Err(RecvTimeoutError::Disconnected)
            ));
        }
        "hold-idle" => {
            let _rx =
                Receiver::<Vec<u8>>::bind_with(&addr, &conduit::Options::new().capacity(16 << 10))
                    .expect("bind in the child");
            std::thread::sleep(PATIENCE * 2);
        }
        "over-limit" => {
            let tx = connect_retrying::<Vec<u8>>(&addr);
            over_limit(&tx);
            for i in 0..3 {
                tx.send(common::payload(i, LIMIT / 2))
                    .expect("within the limit");
            }
        }
        "default-recv" => {
            let rx = Receiver::<u64>::bind(&addr).expect("bind with the default");
            for i in 0..N {
                assert_eq!(rx.recv_timeout(PATIENCE).ok(), Some(i), "message {i}");
            }
            assert!(matches!(
                rx.recv_timeout(PATIENCE),
                Err(RecvTimeoutError::Disconnected)
            ));
        }
        "default-send" => {
            let start = Instant::now();
            let tx = loop {
                match Sender::<u64>::connect(&addr) {
                    Ok(tx) => break tx,
                    Err(Error::NotFound { .. }) if start.elapsed() < PATIENCE => {}
                    Err(e) => panic!("connect with the default: {e}"),
                }
            };
            for i in 0..N {
                tx.send(i).expect("send");
            }
        }
        "hostile" => hostile(&addr),
        other => panic!("unknown role {other}"),
    }
}

/// In a child: every send method refuses a message over the receiver's limit with
/// `TooLarge`, naming the limit, and hands the message back.
fn over_limit(tx: &Sender<Vec<u8>>) {
    let big = common::payload(8, 4 * LIMIT);
    let check = |failure: Option<&SendFailure>, what: &str| match failure {
        Some(SendFailure::TooLarge { size, limit }) => {
            assert_eq!(*limit, LIMIT, "{what}: the receiver's limit");
            assert!(*size > LIMIT, "{what}: size {size}");
        }
        other => panic!("{what}: expected TooLarge, got {other:?}"),
    };
    match tx.send(big.clone()) {
        Err(e) => {
            check(e.failure(), "send");
            assert!(e.into_inner() == big, "send hands the message back");
        }
        Ok(()) => panic!("a message over the limit was sent"),
    }
    match tx.try_send(big.clone()) {
        Err(e) => {
            check(e.failure(), "try_send");
            assert!(e.into_inner() == big, "try_send hands the message back");
        }
        Ok(()) => panic!("try_send sent a message over the limit"),
    }
    match tx.send_timeout(big.clone(), PATIENCE) {
        Err(e) => {
            check(e.failure(), "send_timeout");
            assert!(e.into_inner() == big, "send_timeout hands the message back");
        }
        Ok(()) => panic!("send_timeout sent a message over the limit"),
    }
}

/// The hostile child: a raw zenoh session beside conduit's, publishing on the key.
fn hostile(addr: &str) {
    use zenoh::Wait;
    let key = addr.strip_prefix("zenoh:").unwrap();
    // The configuration the parent gave this process.
    let given = std::env::var("ZENOH_CONFIG").expect("ZENOH_CONFIG in a child");
    let config = zenoh::Config::from_json5(&given).unwrap();
    let raw = zenoh::open(config).wait().expect("a raw session");
    // A put on the messages' key as sender `id` (its attachment; `None`: no attachment).
    // Each put waits until the receiver's subscription is known here, so that it is
    // delivered (a put nobody matches is dropped, and the test would prove nothing).
    let put = |id: Option<&str>, bytes: Vec<u8>| {
        let publisher = raw
            .declare_publisher(format!("{key}/m"))
            .wait()
            .expect("raw publisher");
        let start = Instant::now();
        while !publisher.matching_status().wait().unwrap().matching() {
            assert!(
                start.elapsed() < PATIENCE,
                "the receiver's subscription never showed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let put = publisher.put(bytes);
        match id {
            Some(id) => put.attachment(id.as_bytes()).wait(),
            None => put.wait(),
        }
        .expect("raw put");
    };
    // A publication is `[encoded message][kind]`, kind 0 for a message.
    let valid = |v: Vec<u8>| {
        let mut out = postcard_vec(&v);
        out.push(0);
        out
    };
    // Connected first, so that the receiver keeps a live sender while the others are dropped.
    let honest = connect_retrying::<Vec<u8>>(addr);
    // Senders that said hello and will misbehave: their ids from their liveliness tokens.
    let offenders: Vec<Sender<Vec<u8>>> = (0..3).map(|_| connect_retrying(addr)).collect();
    let ids = loop {
        let replies = raw.liveliness().get(format!("{key}/tx/*")).wait().unwrap();
        let ids: Vec<String> = std::iter::from_fn(|| replies.recv().ok())
            .filter_map(|r| r.into_result().ok())
            .map(|s| {
                s.key_expr()
                    .as_str()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        if ids.len() == 4 {
            // `<session>-<counter>`: the honest sender connected first, so it has the
            // smallest counter.
            let mut ids = ids;
            ids.sort_by_key(|id| id.rsplit('-').next().unwrap().parse::<u64>().unwrap());
            ids.remove(0);
            break ids;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    put(Some("stranger"), valid(b"stranger".to_vec()));
    put(None, valid(b"nobody".to_vec()));
    put(
        Some(&ids[0]),
        vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0],
    );
    put(Some(&ids[1]), valid(vec![9; 4000]));
    put(Some(&ids[2]), vec![1, 2, 3, 9]);
    for i in 0..N {
        honest.send(common::payload(i, 8)).expect("honest send");
    }
    // Each offender is told it was dropped: its sends fail instead of waiting for credit.
    for (i, tx) in offenders.iter().enumerate() {
        let start = Instant::now();
        loop {
            match tx.send_timeout(vec![7], Duration::from_millis(100)) {
                Err(SendTimeoutError::Disconnected(_)) => break,
                Ok(()) | Err(SendTimeoutError::Timeout(_)) => {
                    assert!(start.elapsed() < PATIENCE, "offender {i} was never told")
                }
                Err(e) => panic!("offender {i}: {e:?}"),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    drop((honest, offenders));
}

/// postcard's encoding of a byte vector: a varint length, then the bytes.
fn postcard_vec(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut n = v.len();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(v);
    out
}
