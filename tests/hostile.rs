//! Hostile and broken peers on bound `unix:` and `tcp:` receivers: garbage before and after
//! the handshake, lying lengths, wrong versions and types. (Stalls, floods and torn messages
//! are in `hostile_stalls.rs`; socket files, uids, fds and SIGPIPE in `resources.rs`.)
//!
//! Every case checks that the offending connection alone is dropped within a bounded time
//! (the raw client reads EOF or a reset), that nothing it sent is ever yielded, and that the
//! receiver keeps serving real senders. The allocation check runs in a child process so
//! tests running in parallel cannot disturb the measurement.

mod common;
mod wire;

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use conduit::__testing::{encode, frame_header, hello_for, PIECE_MAX};
use conduit::{Error, Options, Sender, TryRecvError};
use wire::*;

// ---- 1. garbage before the handshake -------------------------------------------------------

fn garbage_before_handshake(t: Transport) {
    let (rx, addr) = bind(t, &Options::new());
    let real = Sender::<Job>::connect(&addr).expect("real sender");
    let good = hello_for::<Job>(1 << 20);
    // Connections that say nothing, or half a hello, wait in the acceptor meanwhile.
    let _silent = Raw::connect(&addr);
    let mut half = Raw::connect(&addr);
    half.write_all(&good[..10]).unwrap();

    let mut bad_status = good.clone();
    bad_status[6] = 9;
    let mut reserved = good.clone();
    reserved[7] = 1;
    let mut long_name = good.clone();
    long_name[20..22].copy_from_slice(&0xffffu16.to_le_bytes());
    let mut not_utf8 = good.clone();
    not_utf8[22..].fill(0xff);
    let mut magic_then_noise = b"CNDT".to_vec();
    magic_then_noise.extend(xorshift_bytes(7, 600));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", xorshift_bytes(1, 4096)),
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        ),
        ("magic, then noise", magic_then_noise),
        ("hello with an unknown status", bad_status),
        ("hello with a non-zero reserved byte", reserved),
        ("hello with a 65535-byte name", long_name),
        ("hello with a non-UTF-8 name", not_utf8),
        ("a frame instead of a hello", frames(&encode(&job(99, 8)))),
        ("one MiB of zeros", vec![0; 1 << 20]),
    ];
    let mut got = Vec::new();
    for (i, (what, bytes)) in cases.into_iter().enumerate() {
        real.send(job(i as u32, 100)).expect("real send");
        let mut c = Raw::connect(&addr);
        let writer = c.write_in_background(bytes);
        wait_dropped(&rx, &mut c, what, &mut got);
        writer.join().unwrap();
    }
    // A sender that connects after all that, while two connections are still pending.
    let late = Sender::<Job>::connect(&addr).expect("a sender connects after the garbage");
    real.send(job(9, 100)).unwrap();
    drop(real);
    late.send(job(10, 100)).unwrap();
    expect_real(&rx, &mut got, 11, 100);
}

#[test]
fn garbage_before_handshake_unix() {
    watchdog("garbage_before_handshake_unix", || {
        garbage_before_handshake(Transport::Unix)
    });
}

#[test]
fn garbage_before_handshake_tcp() {
    watchdog("garbage_before_handshake_tcp", || {
        garbage_before_handshake(Transport::Tcp)
    });
}

// ---- 1b. a real sender after a dropped peer ------------------------------------------------

/// A peer dropped after its handshake leaves the receiver with no sender: `Disconnected`, as
/// documented. A real sender that then connects and sends must be served by the next call:
/// its `connect` returned, so the receiver must never report `Disconnected` instead.
fn served_after_a_dropped_peer_on(t: Transport) {
    let (rx, addr) = bind(t, &Options::new());
    let mut c = raw_handshaken(&addr);
    c.write_all(&frame_header(u32::MAX, true)).unwrap();
    wait_dropped(&rx, &mut c, "u32::MAX", &mut Vec::new());
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));
    for i in 0..1000 {
        let tx = Sender::<Job>::connect(&addr).unwrap();
        match rx.try_recv() {
            Err(TryRecvError::Empty) => {}
            other => panic!("round {i}: a sender is connected, yet {other:?}"),
        }
        tx.send(job(i, 10)).unwrap();
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(j) => assert_eq!(j, job(i, 10)),
            other => panic!("round {i}: a connected sender had sent, yet {other:?}"),
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !matches!(rx.try_recv(), Err(TryRecvError::Disconnected)) {
            assert!(
                Instant::now() < deadline,
                "round {i}: the sender's exit went unseen"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

/// Runs in a child pinned to one CPU, where a woken sender often runs before the acceptor
/// finishes its turn: the widest window for a hand-off race.
#[test]
fn served_after_a_dropped_peer() {
    if common::role().as_deref() != Some("pinned") {
        return run_child("served_after_a_dropped_peer", "pinned", &[]);
    }
    // SAFETY: a zeroed cpu_set_t is valid and empty; CPU_SET and sched_setaffinity only read
    // and write that set and this process's affinity.
    unsafe {
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut one);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one);
    }
    watchdog("served_after_a_dropped_peer", || {
        served_after_a_dropped_peer_on(Transport::Unix);
        served_after_a_dropped_peer_on(Transport::Tcp);
    });
}

// ---- 2. garbage after a valid handshake ----------------------------------------------------

/// The receiver's size limit in these tests: more than one piece, small enough to send.
const LIMIT: usize = 100_000;

/// Hostile byte streams sent after a valid handshake, with the one hostile job that must be
/// delivered (a valid message before the offence), if any.
fn bad_frames() -> Vec<(&'static str, Vec<u8>, Option<Job>)> {
    let piece = vec![0xAB; PIECE_MAX];
    let cat = |parts: &[&[u8]]| parts.concat();
    let valid = encode(&job(900, 16));
    // Job's layout with 7 where the bool goes: a u8 and a bool encode alike in both codecs.
    let bad_bool = encode(&(901u32, 7u8, vec![1u8, 2, 3]));
    let mut trailing = encode(&job(902, 16));
    trailing.push(0);
    // A Vec length of 2^32 - 1 followed by three bytes.
    let mut huge_vec = encode(&(903u32, true, u64::from(u32::MAX)));
    huge_vec.extend_from_slice(&[1, 2, 3]);
    let rest = (LIMIT + 1 - PIECE_MAX) as u32;
    vec![
        (
            "flag bit 1 on a valid message",
            cat(&[&header_with_flags(valid.len() as u32, 0x03), &valid]),
            None,
        ),
        (
            "flag bit 6 on a valid message",
            cat(&[&header_with_flags(valid.len() as u32, 0x41), &valid]),
            None,
        ),
        ("flag bit 7, header only", header_with_flags(0, 0x80), None),
        ("flags 0xfe, header only", header_with_flags(5, 0xfe), None),
        (
            "a 64 KiB + 1 piece, header only",
            frame_header(PIECE_MAX as u32 + 1, true).to_vec(),
            None,
        ),
        (
            "an empty non-last piece",
            frame_header(0, false).to_vec(),
            None,
        ),
        (
            "an empty non-last piece after a piece",
            cat(&[&frame(&piece, false), &frame_header(0, false)]),
            None,
        ),
        (
            "limit + 1 over pieces, last header only",
            cat(&[&frame(&piece, false), &frame_header(rest, true)]),
            None,
        ),
        (
            "limit + 1 over pieces, every byte",
            cat(&[&frame(&piece, false), &frame(&vec![1; rest as usize], true)]),
            None,
        ),
        (
            "limit + 1 in 1000-byte pieces",
            (0..=LIMIT / 1000)
                .flat_map(|_| frame(&[2; 1000], false))
                .collect(),
            None,
        ),
        (
            "u32::MAX, last",
            frame_header(u32::MAX, true).to_vec(),
            None,
        ),
        (
            "u32::MAX, not last",
            frame_header(u32::MAX, false).to_vec(),
            None,
        ),
        (
            "u32::MAX after a piece",
            cat(&[&frame(&piece, false), &frame_header(u32::MAX, true)]),
            None,
        ),
        ("an undecodable bool", frame(&bad_bool, true), None),
        ("a trailing byte", frame(&trailing, true), None),
        ("an empty message", frame(&[], true), None),
        (
            "a Vec claiming 2^32 - 1 elements",
            frame(&huge_vec, true),
            None,
        ),
        (
            "garbage, then a valid message",
            cat(&[&frame_header(u32::MAX, true), &frame(&valid, true)]),
            None,
        ),
        (
            "a valid message, then garbage",
            cat(&[&frame(&valid, true), &header_with_flags(1, 0x80)]),
            Some(job(900, 16)),
        ),
    ]
}

fn garbage_after_handshake(t: Transport) {
    let (rx, addr) = bind(t, &Options::new().max_message_size(LIMIT));
    let real = Sender::<Job>::connect(&addr).expect("real sender");
    let mut real_got = Vec::new();
    let mut real_sent = 0;
    for (what, bytes, must_deliver) in bad_frames() {
        real.send(job(real_sent, 1000)).expect("real send");
        real_sent += 1;
        let mut c = raw_handshaken(&addr);
        let writer = c.write_in_background(bytes);
        let mut got = Vec::new();
        wait_dropped(&rx, &mut c, what, &mut got);
        writer.join().unwrap();
        let hostile: Vec<Job> = got.iter().filter(|j| j.id >= 900).cloned().collect();
        assert_eq!(
            hostile,
            must_deliver.into_iter().collect::<Vec<_>>(),
            "{what}"
        );
        real_got.extend(got.into_iter().filter(|j| j.id < 900));
    }
    // Still serving: the old sender, and one that connects now.
    let late = Sender::<Job>::connect(&addr).expect("connect after the garbage");
    real.send(job(real_sent, 1000)).unwrap();
    late.send(job(real_sent + 1, 1000)).unwrap();
    expect_real(&rx, &mut real_got, real_sent + 2, 1000);
}

#[test]
fn garbage_after_handshake_unix() {
    watchdog("garbage_after_handshake_unix", || {
        garbage_after_handshake(Transport::Unix)
    });
}

#[test]
fn garbage_after_handshake_tcp() {
    watchdog("garbage_after_handshake_tcp", || {
        garbage_after_handshake(Transport::Tcp)
    });
}

// ---- 2b. hostile lengths allocate nothing (child process: a quiet heap to measure) --------

/// Lengths claimed by a header or inside a message never drive an allocation: the address
/// space is capped 1 GiB above its size (a reservation for a claimed 4 GiB aborts), and the
/// peak RSS may grow by less than 16 MiB. (The shared-memory ring's version is in
/// `bounds.rs`.)
#[test]
fn hostile_lengths_allocate_nothing_unix() {
    if common::role().as_deref() != Some("alloc") {
        return run_child("hostile_lengths_allocate_nothing_unix", "alloc", &[]);
    }
    hostile_lengths_allocate_nothing(Transport::Unix);
}

#[test]
fn hostile_lengths_allocate_nothing_tcp() {
    if common::role().as_deref() != Some("alloc") {
        return run_child("hostile_lengths_allocate_nothing_tcp", "alloc", &[]);
    }
    hostile_lengths_allocate_nothing(Transport::Tcp);
}

/// In a child process: the claims, with the address space capped.
fn hostile_lengths_allocate_nothing(t: Transport) {
    // The largest limit there is, so only the framing's own checks stand in the way.
    let (rx, addr) = bind(t, &Options::new().max_message_size(u32::MAX as usize));
    let real = Sender::<Job>::connect(&addr).unwrap();
    real.send(job(0, 10)).unwrap();
    let mut got = vec![rx.recv().unwrap()];
    // Cap the address space: reserving gigabytes for a claimed length now aborts the child.
    let headroom: u64 = 1 << 30;
    let cap = status_kib("VmSize") * 1024 + headroom;
    let lim = libc::rlimit {
        rlim_cur: cap,
        rlim_max: cap,
    };
    // SAFETY: `lim` is a valid rlimit; lowering our own soft and hard limits is always allowed.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) }, 0);
    // Reset the peak RSS so VmHWM measures only what follows (Linux >= 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (rss0, hwm0) = (status_kib("VmRSS"), status_kib("VmHWM"));

    let piece = frame(&vec![3; PIECE_MAX], false);
    let claims: Vec<(&str, Vec<u8>)> = vec![
        ("u32::MAX, last", frame_header(u32::MAX, true).to_vec()),
        ("u32::MAX, not last", frame_header(u32::MAX, false).to_vec()),
        (
            "u32::MAX - 1 after a piece",
            [&piece[..], &frame_header(u32::MAX - 1, true)].concat(),
        ),
        (
            "64 KiB + 1",
            frame_header(PIECE_MAX as u32 + 1, true).to_vec(),
        ),
        (
            "a Vec of 2^32 - 1",
            frame(
                &[encode(&(1u32, true, u64::from(u32::MAX))), vec![1]].concat(),
                true,
            ),
        ),
        (
            "a Vec of 2^40",
            frame(&[encode(&(1u32, true, 1u64 << 40)), vec![1]].concat(), true),
        ),
        (
            "a Vec of 2^64 - 1",
            frame(&[encode(&(1u32, true, u64::MAX)), vec![1]].concat(), true),
        ),
    ];
    for (i, (what, bytes)) in claims.into_iter().enumerate() {
        real.send(job(i as u32 + 1, 10)).unwrap();
        let (mut c, reply) = raw_hello(&addr, &hello_for::<Job>(u32::MAX as usize));
        assert_eq!(reply[6], 0);
        let writer = c.write_in_background(bytes);
        wait_dropped(&rx, &mut c, &format!("{t:?}: {what}"), &mut got);
        writer.join().unwrap();
    }
    // limit + 1 spread over many pieces, on a receiver with a 1 MiB limit.
    let small_limit = 1 << 20;
    let (rx2, addr2) = bind(t, &Options::new().max_message_size(small_limit));
    let mut c = raw_handshaken(&addr2);
    let over: Vec<u8> = (0..=small_limit / PIECE_MAX)
        .flat_map(|_| piece.clone())
        .collect();
    let writer = c.write_in_background(over);
    wait_dropped(&rx2, &mut c, "limit + 1 in pieces", &mut Vec::new());
    writer.join().unwrap();

    let (rss1, hwm1) = (status_kib("VmRSS"), status_kib("VmHWM"));
    let peak_growth = hwm1.saturating_sub(hwm0.max(rss0));
    eprintln!("hostile lengths: VmRSS {rss0} -> {rss1} kB, VmHWM {hwm0} -> {hwm1} kB");
    // A sanitizer's allocator keeps freed blocks in a quarantine, so resident memory is no
    // measure there; the address-space cap above still aborts a reservation of gigabytes.
    if let Some(s) = common::sanitizer() {
        eprintln!("hostile lengths: resident memory not checked under the {s} sanitizer");
    } else {
        assert!(peak_growth < 16 << 10, "peak RSS grew by {peak_growth} kB");
        assert!(
            rss1.saturating_sub(rss0) < 16 << 10,
            "RSS grew from {rss0} to {rss1} kB"
        );
    }
    drop(real);
    expect_real(&rx, &mut got, 8, 10);
}

// ---- 3. wrong version, wrong type ----------------------------------------------------------

fn wrong_version_and_type(t: Transport) {
    let (rx, addr) = bind(t, &Options::new());
    let real = Sender::<Job>::connect(&addr).unwrap();
    let mut got = Vec::new();
    let mut sent = 0;
    let mut check = |what: &str, hello: Vec<u8>, status: u8, got: &mut Vec<Job>| {
        real.send(job(sent, 10)).unwrap();
        sent += 1;
        let (mut c, reply) = raw_hello(&addr, &hello);
        assert_eq!(reply[6], status, "{what}: reply status");
        // Frames sent anyway, as if the refusal were ignored, are never delivered.
        let writer = c.write_in_background(frames(&encode(&job(920, 10))));
        wait_dropped(&rx, &mut c, what, got);
        writer.join().unwrap();
    };
    for v in [0u16, 1, 2, 4, 0x0100, 0xffff] {
        let mut h = hello_for::<Job>(1 << 20);
        h[4..6].copy_from_slice(&v.to_le_bytes());
        check(&format!("version {v}"), h, 1, &mut got);
    }
    check("a u64 hello", hello_for::<u64>(1 << 20), 2, &mut got);
    for status in [1u8, 2, 3] {
        let mut h = hello_for::<Job>(1 << 20);
        h[6] = status;
        check(&format!("a request with status {status}"), h, 2, &mut got);
    }
    // Real senders of other types, including one with Job's exact encoding.
    type Lookalike = (u32, bool, Vec<u8>);
    match Sender::<u64>::connect(&addr) {
        Err(Error::TypeMismatch { .. }) => {}
        other => panic!("a u64 sender to a Job receiver: {other:?}"),
    }
    match Sender::<Lookalike>::connect(&addr) {
        Err(Error::TypeMismatch { local, remote, .. }) => assert_ne!(local, remote),
        other => panic!("a look-alike sender to a Job receiver: {other:?}"),
    }
    real.send(job(sent, 10)).unwrap();
    expect_real(&rx, &mut got, sent + 1, 10);
}

#[test]
fn wrong_version_and_type_unix() {
    watchdog("wrong_version_and_type_unix", || {
        wrong_version_and_type(Transport::Unix)
    });
}

#[test]
fn wrong_version_and_type_tcp() {
    watchdog("wrong_version_and_type_tcp", || {
        wrong_version_and_type(Transport::Tcp)
    });
}

/// A fake receiver that answers one hello with `reply` (or nothing) and hangs up.
fn connect_to_fake(reply: Option<Vec<u8>>) -> Result<Sender<Job>, Error> {
    let path = common::temp_dir().join("fake.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        read_hello(&mut s);
        if let Some(r) = reply {
            let _ = s.write_all(&r);
        }
    });
    let start = Instant::now();
    let result = Sender::<Job>::connect(&format!("unix:{}", path.display()));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "connect took {:?}",
        start.elapsed()
    );
    server.join().unwrap();
    result
}

#[test]
fn connect_refuses_hostile_receivers() {
    watchdog("connect_refuses_hostile_receivers", hostile_receivers);
}

fn hostile_receivers() {
    let ours = || hello_for::<Job>(1 << 20);
    let with = |at: usize, bytes: &[u8]| {
        let mut h = ours();
        h[at..at + bytes.len()].copy_from_slice(bytes);
        h
    };
    let e = connect_to_fake(Some(with(4, &4u16.to_le_bytes()))).unwrap_err();
    assert!(
        matches!(e, Error::VersionMismatch { remote: 4, .. }),
        "version 4: {e}"
    );
    let e = connect_to_fake(Some(with(6, &[1]))).unwrap_err();
    assert!(matches!(e, Error::VersionMismatch { .. }), "status 1: {e}");
    let e = connect_to_fake(Some(hello_for::<u64>(1 << 20))).unwrap_err();
    assert!(
        matches!(e, Error::TypeMismatch { .. }),
        "accepted as u64: {e}"
    );
    let e = connect_to_fake(Some(with(6, &[2]))).unwrap_err();
    assert!(matches!(e, Error::TypeMismatch { .. }), "status 2: {e}");
    let e = connect_to_fake(Some(with(6, &[3]))).unwrap_err();
    assert!(matches!(e, Error::PermissionDenied { .. }), "status 3: {e}");
    for (what, reply) in [
        ("no reply", None),
        (
            "an HTTP answer",
            Some(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()),
        ),
        ("status 9", Some(with(6, &[9]))),
        ("a 65535-byte name", Some(with(20, &[0xff, 0xff]))),
        ("half a hello", Some(ours()[..15].to_vec())),
    ] {
        let e = connect_to_fake(reply).unwrap_err();
        assert!(matches!(e, Error::Protocol { .. }), "{what}: {e}");
    }
}
