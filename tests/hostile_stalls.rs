//! Peers that stall, flood or die mid-message on bound `unix:` and `tcp:` receivers: the
//! receiver's calls keep their deadlines, other senders keep being served, and a torn message
//! is never delivered.

mod common;
mod wire;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conduit::__testing::{encode, frame_header, PIECE_MAX};
use conduit::{Options, RecvTimeoutError, Sender, TryRecvError};
use wire::*;

// ---- 4. a peer that stalls mid-message -----------------------------------------------------

fn stalled_peer(t: Transport) {
    let (rx, addr) = bind(t, &Options::new());
    let real = Sender::<Job>::connect(&addr).unwrap();
    let big = frames(&encode(&job(930, 200_000)));
    let cut = 5 + PIECE_MAX + 3; // a whole piece and three bytes of the next header
    let stalled = raw_handshaken(&addr);
    let w1 = stalled.write_in_background(big[..cut].to_vec());
    let mid_header = raw_handshaken(&addr);
    let w2 = mid_header.write_in_background(frame_header(200, true)[..2].to_vec());
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(100)),
        Err(RecvTimeoutError::Timeout)
    ));
    w1.join().unwrap();
    w2.join().unwrap();

    let mut slowest = Duration::ZERO;
    for _ in 0..200 {
        let start = Instant::now();
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        slowest = slowest.max(start.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(100),
        "try_recv took {slowest:?}"
    );
    let start = Instant::now();
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(100)),
        Err(RecvTimeoutError::Timeout)
    ));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_secs(1),
        "{waited:?}"
    );

    let mut got = Vec::new();
    for i in 0..20 {
        real.send(job(i, 5000)).unwrap();
    }
    expect_real(&rx, &mut got, 20, 5000);
    // The stalled message completes later and arrives whole.
    stalled
        .write_in_background(big[cut..].to_vec())
        .join()
        .unwrap();
    let late = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the stalled message");
    assert_eq!(late, job(930, 200_000));
    drop((stalled, mid_header));
}

#[test]
fn stalled_peer_unix() {
    watchdog("stalled_peer_unix", || stalled_peer(Transport::Unix));
}

#[test]
fn stalled_peer_tcp() {
    watchdog("stalled_peer_tcp", || stalled_peer(Transport::Tcp));
}

// ---- 5. a torn message at end of stream ----------------------------------------------------

fn torn_at_eof(t: Transport) {
    let whole = frames(&encode(&job(940, 200_000)));
    let small = frames(&encode(&job(941, 100)));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("one piece of three", whole[..5 + PIECE_MAX].to_vec()),
        ("two pieces of three", whole[..2 * (5 + PIECE_MAX)].to_vec()),
        ("mid-payload", whole[..5 + 1000].to_vec()),
        ("mid-header", whole[..5 + PIECE_MAX + 2].to_vec()),
        ("all but the last byte", whole[..whole.len() - 1].to_vec()),
        (
            "a one-piece message less a byte",
            small[..small.len() - 1].to_vec(),
        ),
        ("a header alone", small[..5].to_vec()),
    ];
    for (what, bytes) in &cases {
        // The torn peer is the only sender: Disconnected, never a value, never a hang.
        let (rx, addr) = bind(t, &Options::new());
        let c = raw_handshaken(&addr);
        let writer = c.write_in_background(bytes.clone());
        drop(c); // the socket closes when the writer is done
        let start = Instant::now();
        match rx.recv_timeout(Duration::from_secs(5)) {
            Err(RecvTimeoutError::Disconnected) => {}
            other => panic!("{what}: {other:?} after {:?}", start.elapsed()),
        }
        assert!(
            matches!(rx.try_recv(), Err(TryRecvError::Disconnected)),
            "{what}"
        );
        writer.join().unwrap();
    }
    // Alongside a real sender: a complete message, then a torn one.
    let (rx, addr) = bind(t, &Options::new());
    let real = Sender::<Job>::connect(&addr).unwrap();
    let c = raw_handshaken(&addr);
    let writer = c.write_in_background([&small[..], &whole[..whole.len() - 1]].concat());
    drop(c);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(j) = rx.recv_timeout(Duration::from_millis(20)) {
            got.push(j);
        }
    }
    writer.join().unwrap();
    assert_eq!(got, vec![job(941, 100)], "the complete message only");
    for i in 0..5 {
        real.send(job(i, 100)).unwrap();
    }
    drop(real);
    let mut got = Vec::new();
    expect_real(&rx, &mut got, 5, 100);
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(2)),
        Err(RecvTimeoutError::Disconnected)
    ));
}

#[test]
fn torn_message_at_eof_unix() {
    watchdog("torn_message_at_eof_unix", || torn_at_eof(Transport::Unix));
}

#[test]
fn torn_message_at_eof_tcp() {
    watchdog("torn_message_at_eof_tcp", || torn_at_eof(Transport::Tcp));
}

// ---- 4b. bytes that keep coming ------------------------------------------------------------

/// `try_recv` and `recv_timeout` keep their word while a connection stays readable: a big
/// valid message streaming in, or a peer flooding one-byte pieces of a message it never ends.
#[test]
fn deadlines_hold_while_bytes_stream_in() {
    watchdog("deadlines_hold_while_bytes_stream_in", deadlines_hold);
}

fn deadlines_hold() {
    // A big valid message written faster than the receiver reads it. A String, because it
    // decodes at memcpy speed even in debug builds: the slowest call is the waiting.
    let text = conduit::Receiver::<String>::bind(&common::unix_addr()).unwrap();
    let text_addr = text.local_addr().unwrap();
    let big = "z".repeat(32 << 20);
    let (c, reply) = raw_hello(
        &text_addr,
        &conduit::__testing::hello_for::<String>(1 << 26),
    );
    assert_eq!(reply[6], 0);
    let writer = c.write_in_background(frames(&encode(&big)));
    let (start, mut slowest) = (Instant::now(), Duration::ZERO);
    let got = loop {
        let t = Instant::now();
        let r = text.recv_timeout(Duration::from_millis(10));
        slowest = slowest.max(t.elapsed());
        match r {
            Ok(s) => break s,
            Err(RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("while the big message streamed in: {e:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no big message");
    };
    writer.join().unwrap();
    eprintln!("big message: slowest recv_timeout(10 ms) {slowest:?}");
    assert!(got == big, "the big message arrives whole");
    assert!(
        slowest < Duration::from_millis(500),
        "recv_timeout(10 ms) took {slowest:?} while a message streamed in"
    );

    let (rx, addr) = bind(Transport::Unix, &Options::new());
    let real = Sender::<Job>::connect(&addr).unwrap();
    // Three flooders, so the receiver always has bytes waiting on some connection.
    let stop = Arc::new(AtomicBool::new(false));
    let chunk: Vec<u8> = (0..50_000).flat_map(|_| frame(&[0], false)).collect();
    let flooders: Vec<_> = (0..3)
        .map(|_| {
            let (mut w, stop, chunk) = (raw_handshaken(&addr), stop.clone(), chunk.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) && w.write_all(&chunk).is_ok() {}
            })
        })
        .collect();
    // The flood lasts 1.5 s at most, so a receiver that reads until it ends fails fast.
    let stop2 = stop.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        stop2.store(true, Ordering::Relaxed);
    });
    std::thread::sleep(Duration::from_millis(20));
    let (mut slow_try, mut slow_timeout) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..10 {
        let t = Instant::now();
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        slow_try = slow_try.max(t.elapsed());
        let t = Instant::now();
        let r = rx.recv_timeout(Duration::from_millis(10));
        assert!(matches!(r, Err(RecvTimeoutError::Timeout)), "{r:?}");
        slow_timeout = slow_timeout.max(t.elapsed());
    }
    real.send(job(0, 10)).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), job(0, 10));
    stop.store(true, Ordering::Relaxed);
    drop(rx); // the flooders' writes fail now
    for f in flooders {
        f.join().unwrap();
    }
    eprintln!("flood: slowest try_recv {slow_try:?}, recv_timeout(10 ms) {slow_timeout:?}");
    assert!(
        slow_try < Duration::from_millis(100),
        "try_recv took {slow_try:?} in a flood"
    );
    assert!(
        slow_timeout < Duration::from_millis(500),
        "recv_timeout(10 ms) took {slow_timeout:?} in a flood"
    );
}

// ---- 4c. peers that never say hello --------------------------------------------------------

/// Connections that never send a hello wait in the acceptor until its handshake timeout.
/// However many there are, a real sender that connects meanwhile must get through.
fn idle_peers(t: Transport) {
    let (rx, addr) = bind(t, &Options::new());
    let idle: Vec<Raw> = (0..260).map(|_| Raw::connect(&addr)).collect();
    std::thread::sleep(Duration::from_millis(100)); // the acceptor has taken them all
    let tx = Sender::<Job>::connect(&addr)
        .unwrap_or_else(|e| panic!("{t:?}: a sender beside {} idle peers: {e}", idle.len()));
    tx.send(job(0, 10)).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), job(0, 10));
}

#[test]
fn idle_peers_do_not_lock_senders_out() {
    watchdog("idle_peers_do_not_lock_senders_out", || {
        idle_peers(Transport::Unix);
        idle_peers(Transport::Tcp);
    });
}
