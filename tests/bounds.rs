//! The size limit at its exact edge, on the receiving side, against peers that ignore it: a
//! message whose encoding is exactly `max_message_size` is delivered, one byte more drops
//! the connection and delivers nothing, whether the peer is a hand-driven `unix:`/`tcp:`
//! client, a hand-written `shm:` ring, or a real sender with a larger limit than the
//! receiver it handed to a child (pipe, socketpair and shm pairs). And a hostile ring's
//! claimed lengths allocate nothing (the address space capped, as `hostile.rs` does for
//! `unix:` and `tcp:`). The sending side's refusal is in `conformance/bounds.rs`.
//!
//! The children are this test binary re-run as one role.

mod common;
mod shm_wire;
mod wire;

use std::time::Duration;

use conduit::__testing::encode;
use conduit::{channel_with, Backend, Options, Receiver, RecvTimeoutError};
use wire::{raw_handshaken, Transport};

/// Limits tried: a small one, exactly one 64 KiB stream piece, and exactly three.
const LIMITS: [usize; 3] = [1000, 64 << 10, 3 * (64 << 10)];

/// Bytes whose encoding takes exactly `size` bytes, as `T` built by `make(len)`.
fn encoded_as<T: serde::Serialize>(size: usize, make: impl Fn(usize) -> T) -> T {
    (size.saturating_sub(16)..=size)
        .map(make)
        .find(|m| encode(m).len() == size)
        .unwrap_or_else(|| panic!("no message encodes in exactly {size} bytes"))
}

/// A `wire::Job` whose encoding is exactly `size` bytes.
fn stream_job(id: u32, size: usize) -> wire::Job {
    encoded_as(size, |n| wire::job(id, n))
}

// ---- hand-driven unix: and tcp: clients ------------------------------------------------------

/// A raw client on a receiver limited to `limit`: a message of exactly `limit` bytes (in as
/// many 64 KiB pieces as it takes) is delivered; then one of `limit + 1` on the same
/// connection drops it, and nothing of it is delivered.
fn stream_peer_at_the_limit(t: Transport) {
    for limit in LIMITS {
        let (rx, addr) = wire::bind(t, &Options::new().max_message_size(limit));
        let mut c = raw_handshaken(&addr);
        let exact = stream_job(1, limit);
        let writer = c.write_in_background(wire::frames(&encode(&exact)));
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(j) => assert!(
                j == exact,
                "{t:?}: the {limit}-byte message arrived damaged"
            ),
            Err(e) => panic!("{t:?}: a message of exactly the limit {limit} was refused: {e}"),
        }
        writer.join().unwrap();
        let writer = c.write_in_background(wire::frames(&encode(&stream_job(2, limit + 1))));
        let mut got = Vec::new();
        let what = format!("{t:?}: a message of the limit {limit} + 1");
        wire::wait_dropped(&rx, &mut c, &what, &mut got);
        writer.join().unwrap();
        assert!(got.is_empty(), "{what} was delivered");
    }
}

#[test]
fn stream_peer_at_the_limit_unix() {
    wire::watchdog("unix limit", || stream_peer_at_the_limit(Transport::Unix));
}

#[test]
fn stream_peer_at_the_limit_tcp() {
    wire::watchdog("tcp limit", || stream_peer_at_the_limit(Transport::Tcp));
}

// ---- hand-written shm: rings -----------------------------------------------------------------

/// A raw ring on a receiver limited to `limit`: exactly `limit` bytes, in one piece and in
/// two, are delivered; `limit + 1`, in two pieces and in one, drops the connection and
/// delivers nothing.
#[test]
fn ring_peer_at_the_limit() {
    shm_wire::watchdog("shm limit", || {
        for limit in LIMITS {
            let (rx, real, addr) = shm_wire::setup(&Options::new().max_message_size(limit));
            drop(real);
            let make = |id, size| encode(&encoded_as(size, |n| shm_wire::job(id, n)));
            let mut raw = shm_wire::Raw::connect(&addr);
            let exact = make(1, limit);
            raw.publish(&exact, shm_wire::LAST);
            let (head, rest) = exact.split_at(limit / 2);
            raw.publish(head, 0);
            raw.publish(rest, shm_wire::LAST);
            for piece_count in [1, 2] {
                match rx.recv_timeout(Duration::from_secs(10)) {
                    Ok(j) => assert_eq!(encode(&j), exact, "shm: damaged"),
                    Err(e) => panic!(
                        "shm: exactly the limit {limit} in {piece_count} piece(s) refused: {e}"
                    ),
                }
            }
            let over = make(2, limit + 1);
            let (head, rest) = over.split_at(limit / 2);
            raw.publish(head, 0);
            raw.publish(rest, shm_wire::LAST);
            let mut got = Vec::new();
            let what = format!("shm: the limit {limit} + 1 in two pieces");
            shm_wire::wait_dropped(&rx, &mut raw, &what, &mut got);
            assert!(got.is_empty(), "{what} was delivered");
            let mut raw = shm_wire::Raw::connect(&addr);
            raw.publish(&over, shm_wire::LAST);
            let what = format!("shm: the limit {limit} + 1 in one piece");
            shm_wire::wait_dropped(&rx, &mut raw, &what, &mut got);
            assert!(got.is_empty(), "{what} was delivered");
        }
    });
}

// ---- inherited receivers with a smaller limit than their sender ------------------------------

/// The test function children run.
const ENTRY: &str = "bounds_child";

/// Role `recv_limit`: takes the receiver `IN`, expects the message of exactly `CDT_LIMIT`
/// bytes, then `Disconnected` (the next one is a byte over; the parent keeps its sender
/// open, so nothing else ends the channel). Role `alloc_shm`: see
/// `ring_claims_allocate_nothing`.
#[test]
fn bounds_child() {
    let Some(role) = common::role() else { return };
    common::child_watchdog(Duration::from_secs(60));
    match role.as_str() {
        "recv_limit" => {
            let limit: usize = std::env::var("CDT_LIMIT").unwrap().parse().unwrap();
            let rx = Receiver::<wire::Job>::from_parent("IN").expect("inherit the receiver");
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(j) => assert!(
                    j == stream_job(1, limit),
                    "the {limit}-byte message damaged"
                ),
                Err(e) => panic!("exactly the limit {limit} refused: {e}"),
            }
            match rx.recv_timeout(Duration::from_secs(20)) {
                Err(RecvTimeoutError::Disconnected) => {}
                Ok(j) => panic!(
                    "a message of {} bytes over the limit {limit}",
                    encode(&j).len()
                ),
                Err(e) => panic!("limit + 1: expected Disconnected, got {e}"),
            }
        }
        "alloc_shm" => ring_claims(),
        other => panic!("unknown role {other}"),
    }
}

/// Hands a receiver with limit `limit` to a child while this side's sender keeps a limit
/// four times larger (the inheritance variable's last field is the limit), then sends
/// exactly `limit` bytes and `limit + 1`.
fn inherited_receiver_at_the_limit(backend: Backend, limit: usize) {
    let opts = Options::new().max_message_size(4 * limit);
    let (tx, rx) = channel_with::<wire::Job>(backend, &opts).expect("channel");
    let mut cmd = common::child_command(ENTRY, "recv_limit");
    rx.share_with_child(&mut cmd, "IN").expect("share");
    let var = cmd
        .get_envs()
        .find(|(k, _)| *k == "CONDUIT_FD_IN")
        .and_then(|(_, v)| v)
        .expect("the inheritance variable")
        .to_str()
        .unwrap()
        .to_string();
    let (fields, old) = var.rsplit_once(';').expect("v1;…;LIMIT");
    assert_eq!(old, (4 * limit).to_string(), "the last field is the limit");
    cmd.env("CONDUIT_FD_IN", format!("{fields};{limit}"))
        .env("CDT_LIMIT", limit.to_string());
    common::die_with_parent(&mut cmd);
    let child = common::Reaped::new(cmd.spawn().expect("spawn"));
    drop((cmd, rx));
    tx.send(stream_job(1, limit))
        .unwrap_or_else(|e| panic!("{backend:?}: sending exactly {limit}: {e}"));
    // The child may drop the connection while this is still being written.
    match tx.send(stream_job(2, limit + 1)) {
        Ok(()) => {}
        Err(e) => assert!(e.is_disconnected(), "{backend:?}: sending {limit} + 1: {e}"),
    }
    child.expect_success(
        Duration::from_secs(60),
        &format!("{backend:?}: a receiver limited to {limit}"),
    );
    drop(tx);
}

#[test]
fn inherited_receiver_at_the_limit_pipe() {
    for limit in LIMITS {
        inherited_receiver_at_the_limit(Backend::Pipe, limit);
    }
}

#[test]
fn inherited_receiver_at_the_limit_socket() {
    for limit in LIMITS {
        inherited_receiver_at_the_limit(Backend::Socket, limit);
    }
}

#[test]
fn inherited_receiver_at_the_limit_shm() {
    for limit in LIMITS {
        inherited_receiver_at_the_limit(Backend::Shm, limit);
    }
}

// ---- a hostile ring's claims allocate nothing (child process: a quiet heap) -----------------

/// Lengths a hostile ring claims, in a frame header or inside a message, never drive an
/// allocation: in a child whose address space is capped 1 GiB above its size (reserving a
/// claimed 4 GiB aborts it), with the receiver's limit at its largest so that only the ring's
/// own checks stand in the way, the peak RSS may grow by less than 16 MiB.
#[test]
fn ring_claims_allocate_nothing() {
    if common::role().is_none() {
        wire::run_child(ENTRY, "alloc_shm", &[]);
    }
}

fn ring_claims() {
    use shm_wire::{Raw, LAST};
    let opts = Options::new()
        .max_message_size(u32::MAX as usize)
        .capacity(64 << 10);
    let (rx, real, addr) = shm_wire::setup(&opts);
    real.send(shm_wire::job(0, 10)).unwrap();
    let mut got = vec![rx.recv().unwrap()];
    let headroom: u64 = 1 << 30;
    let cap = wire::status_kib("VmSize") * 1024 + headroom;
    let lim = libc::rlimit {
        rlim_cur: cap,
        rlim_max: cap,
    };
    // SAFETY: `lim` is a valid rlimit; lowering our own soft and hard limits is always allowed.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) }, 0);
    // Reset the peak RSS so VmHWM measures only what follows (Linux >= 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (rss0, hwm0) = (wire::status_kib("VmRSS"), wire::status_kib("VmHWM"));
    let vec_of = |n: u64| [encode(&(1u32, n)), vec![1]].concat();
    type Claim = fn(&mut Raw, &dyn Fn(u64) -> Vec<u8>);
    let claims: [(&str, Claim); 7] = [
        ("a header of u32::MAX - 7, last", |r, _| {
            r.commit(r.head, u32::MAX - 7, LAST)
        }),
        ("a header of u32::MAX - 7, not last", |r, _| {
            r.commit(r.head, u32::MAX - 7, 0)
        }),
        ("half the ring + 8 after a piece", |r, _| {
            r.publish(&[5; 1000], 0);
            r.commit(r.head, (r.cap / 2 + 8) as u32, LAST);
        }),
        ("the whole ring", |r, _| {
            r.commit(r.head, r.cap as u32, LAST)
        }),
        ("a Vec of 2^32 - 1", |r, v| {
            r.publish(&v(u32::MAX.into()), LAST)
        }),
        ("a Vec of 2^40", |r, v| r.publish(&v(1 << 40), LAST)),
        ("a Vec of 2^64 - 1", |r, v| r.publish(&v(u64::MAX), LAST)),
    ];
    for (i, (what, claim)) in claims.into_iter().enumerate() {
        real.send(shm_wire::job(i as u32 + 1, 10)).unwrap();
        let mut raw = Raw::connect(&addr);
        claim(&mut raw, &vec_of);
        raw.notify();
        shm_wire::wait_dropped(&rx, &mut raw, what, &mut got);
    }
    let (rss1, hwm1) = (wire::status_kib("VmRSS"), wire::status_kib("VmHWM"));
    let peak_growth = hwm1.saturating_sub(hwm0.max(rss0));
    eprintln!("shm claims: VmRSS {rss0} -> {rss1} kB, VmHWM {hwm0} -> {hwm1} kB");
    assert!(peak_growth < 16 << 10, "peak RSS grew by {peak_growth} kB");
    assert!(
        rss1.saturating_sub(rss0) < 16 << 10,
        "RSS grew from {rss0} to {rss1} kB"
    );
    let want: Vec<shm_wire::Job> = (0..8).map(|i| shm_wire::job(i, 10)).collect();
    shm_wire::expect_real(&rx, got, &want, &[]);
}
