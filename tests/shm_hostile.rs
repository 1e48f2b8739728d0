//! Hostile shared-memory peers. A raw sender (`shm_wire::Raw`) does the `shm:` handshake by
//! hand, maps the ring and corrupts it; each time the receiver must drop that connection alone
//! (close the rendezvous socket, mark its side of the ring closed) within a bounded time,
//! without panic, hang or unbounded allocation, and keep serving a well-behaved `Sender`
//! connected alongside. Also: the ring cannot be resized (sealed), a dropped receiver
//! disconnects senders, a hostile receiver cannot crash a sender, and nothing leaks.

mod common;
mod shm_wire;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conduit::__testing::encode;
use conduit::{channel, Backend, Error, Options, Receiver, RecvTimeoutError, SendError, Sender};
use shm_wire::*;

type Case = fn(&mut Raw, &Receiver<Job>, &mut Vec<Job>);

const CASES: &[(&str, Case)] = &[
    ("head beyond the capacity", |r, _, _| {
        r.set_head(r.cap as u64 + 8)
    }),
    ("head at u64::MAX", |r, _, _| r.set_head(u64::MAX)),
    ("head moved backwards", |r, rx, got| {
        consumed(r, rx, got, 1);
        r.set_head(r.head - 8);
    }),
    ("head back to 0 after a frame", |r, rx, got| {
        consumed(r, rx, got, 2);
        r.set_head(0);
    }),
    ("half a frame header", |r, _, _| r.set_head(4)),
    ("a frame longer than published", |r, _, _| {
        r.frame(0, 100, LAST, &[]);
        r.set_head(16);
    }),
    ("a frame longer than the capacity", |r, _, _| {
        r.frame(0, u32::MAX - 7, LAST, &[]);
        r.set_head(r.cap as u64);
    }),
    ("a frame over half the ring", |r, _, _| {
        r.frame(0, (r.cap / 2 + 8) as u32, 0, &[]);
        r.set_head(r.cap as u64);
    }),
    ("unknown flags", |r, _, _| {
        r.publish(&encode(&job(HOSTILE + 3, 8)), LAST | 4)
    }),
    ("the high flag bit", |r, _, _| {
        r.publish(&encode(&job(HOSTILE + 4, 8)), 1 << 31)
    }),
    ("padding that stops short of the end", |r, _, _| {
        r.frame(0, 0, PAD, &[]);
        r.set_head(8);
    }),
    ("padding past the end", |r, _, _| {
        r.frame(0, r.cap as u32, PAD, &[]);
        r.set_head(r.cap as u64);
    }),
    ("padding longer than published", |r, _, _| {
        r.frame(0, (r.cap - 8) as u32, PAD, &[]);
        r.set_head(64);
    }),
    ("padding flagged last", |r, _, _| {
        r.frame(0, (r.cap - 8) as u32, PAD | LAST, &[]);
        r.set_head(r.cap as u64);
    }),
    ("well framed, not a Job", |r, _, _| {
        r.publish(&[0xff; 16], LAST)
    }),
    ("closed mid-message", |r, _, _| {
        r.publish(&encode(&job(HOSTILE + 5, 100))[..50], 0);
        r.u32_at(PRODUCER_CLOSED).store(1, Ordering::Release);
        r.notify();
    }),
    ("hung up mid-message", |r, _, _| {
        r.publish(&encode(&job(HOSTILE + 6, 100))[..50], 0);
        r.sock.shutdown(std::net::Shutdown::Write).unwrap();
    }),
];

#[test]
fn corrupted_rings_drop_only_their_connection() {
    watchdog("corrupted rings", || {
        let (rx, real, addr) = setup(&Options::new());
        let (mut got, mut want) = (Vec::new(), Vec::new());
        let allowed = [job(HOSTILE + 1, 40), job(HOSTILE + 2, 40)];
        for (i, (what, corrupt)) in CASES.iter().enumerate() {
            let j = job(i as u32, 100 + i);
            real.send(j.clone()).expect("real send");
            want.push(j);
            let mut raw = Raw::connect(&addr);
            corrupt(&mut raw, &rx, &mut got);
            wait_dropped(&rx, &mut raw, what, &mut got);
        }
        let j = job(999, 3000);
        real.send(j.clone()).expect("real send after all cases");
        want.push(j);
        expect_real(&rx, got, &want, &allowed);
    });
}

#[test]
fn over_the_size_limit() {
    watchdog("size limit", || {
        const LIMIT: usize = 4096;
        let (rx, real, addr) = setup(&Options::new().max_message_size(LIMIT));
        let mut got = Vec::new();
        // One piece over the limit.
        let mut raw = Raw::connect(&addr);
        raw.publish(&vec![7; 2 * LIMIT], LAST);
        wait_dropped(&rx, &mut raw, "one piece over the limit", &mut got);
        // Pieces that never end, as fast as the ring takes them: dropped at the limit, and
        // what the receiver holds stays bounded by it.
        let mut raw = Raw::connect(&addr);
        let flood = Flood::start(&raw, 1016, 0, Duration::from_secs(5));
        wait_dropped(&rx, &mut raw, "pieces without end", &mut got);
        flood.stop();
        let tail = raw.tail();
        assert!(
            tail <= (LIMIT + 1024) as u64,
            "took {tail} bytes past the limit"
        );
        let want: Vec<Job> = (0..3).map(|i| job(i, 1000)).collect();
        for j in &want {
            real.send(j.clone()).expect("real send");
        }
        expect_real(&rx, got, &want, &[]);
    });
}

/// Publishes frames that never make progress (`len`, `flags`) without end: the receiver
/// must drop the peer within `DROP_WITHIN` and never be held inside one call.
fn progress_free_flood(len: usize, flags: u32, what: &'static str) {
    watchdog(what, move || {
        let (rx, real, addr) = setup(&Options::new());
        let mut got = Vec::new();
        let mut raw = Raw::connect(&addr);
        let flood = Flood::start(&raw, len.min(raw.cap - 8), flags, Duration::from_secs(4));
        let want = vec![job(1, 100)];
        real.send(want[0].clone()).unwrap();
        let start = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_dropped(&rx, &mut raw, what, &mut got)
        }));
        let frames = flood.stop();
        eprintln!("{what}: {frames} frames published in {:?}", start.elapsed());
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
        expect_real(&rx, got, &want, &[]);
    });
}

/// Empty non-last pieces never grow a message toward the size limit, and no sender writes
/// one (the stream backends drop a connection that does).
#[test]
fn empty_pieces_without_end() {
    progress_free_flood(0, 0, "empty non-last pieces without end");
}

/// Padding at offset 0 (the whole ring) is something no sender writes: a frame at offset 0
/// always fits.
#[test]
fn padding_without_end() {
    progress_free_flood(usize::MAX, PAD, "whole-ring padding without end");
}

/// The receiver creates each ring, so its positions start at 0; a peer that writes `tail`
/// before the receiver first looks at the ring must not move where the receiver reads. Here
/// `tail` is 3 (no frame can start there) and a frame at 3 is published: the receiver must
/// not deliver it, and must drop the connection.
#[test]
fn tail_preset_before_the_receiver_attaches() {
    watchdog("preset tail", || {
        let (rx, real, addr) = setup(&Options::new());
        let want = vec![job(1, 100)];
        real.send(want[0].clone()).unwrap();
        // The receiver attaches a new ring in its next receive call: none runs meanwhile.
        let mut raw = Raw::connect(&addr);
        let misframed = job(HOSTILE + 9, 2);
        let bytes = encode(&misframed);
        raw.u64_at(TAIL).store(3, Ordering::Release);
        raw.frame(3, bytes.len() as u32, LAST, &bytes);
        raw.set_head(3 + 8 + bytes.len().next_multiple_of(8) as u64);
        let mut got = Vec::new();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_dropped(
                &rx,
                &mut raw,
                "a ring whose tail the peer set to 3",
                &mut got,
            )
        }));
        let delivered = got.contains(&misframed);
        assert!(
            !delivered,
            "the receiver read from a tail of 3 that the peer wrote before it attached \
             (Consumer::new loads `tail` from shared memory), and delivered a frame no \
             producer can write; with tail = capacity - 4 the same path reads the frame \
             header 4 bytes past the data region"
        );
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
        expect_real(&rx, got, &want, &[]);
    });
}

/// A thread keeps changing `head` (and the frame's length) while the receiver reads: it must
/// read each value once, and sooner or later see a bad one and drop the connection.
#[test]
fn positions_changing_between_reads() {
    watchdog("flipping positions", || {
        let (rx, real, addr) = setup(&Options::new());
        let mut got = Vec::new();
        let h = job(HOSTILE + 7, 64);
        for (case, bad_head) in [("head ahead", 3u64 << 40), ("head back to 0", 0)] {
            let mut raw = Raw::connect(&addr);
            raw.send_job(&h);
            let good = raw.head;
            let stop = Arc::new(AtomicBool::new(false));
            let (ring, halt) = (raw.ring.clone(), stop.clone());
            let len = encode(&h).len() as u32;
            let flipper = std::thread::spawn(move || {
                let (head, flen) = (ring.u64_at(HEAD), ring.u32_at(HEADER));
                let mut n = 0u64;
                while !halt.load(Ordering::Relaxed) {
                    head.store(good, Ordering::Release);
                    flen.store(if n % 3 == 0 { u32::MAX } else { len }, Ordering::Relaxed);
                    head.store(bad_head, Ordering::Release);
                    n += 1;
                    if n % 64 == 0 {
                        ring.notify();
                    }
                }
            });
            wait_dropped(&rx, &mut raw, case, &mut got);
            stop.store(true, Ordering::Relaxed);
            flipper.join().unwrap();
        }
        let want = vec![job(1, 10)];
        real.send(want[0].clone()).unwrap();
        let intact = got.iter().filter(|j| j.0 >= HOSTILE).all(|j| *j == h);
        assert!(intact, "a hostile message arrived torn");
        let got: Vec<Job> = got.into_iter().filter(|j| j.0 < HOSTILE).collect();
        expect_real(&rx, got, &want, &[]);
    });
}

fn assert_eperm(what: &str, r: std::io::Result<()>) {
    match r {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) => {}
        other => panic!("{what} on the sealed ring: expected EPERM, got {other:?}"),
    }
}

#[test]
fn sealed_ring_cannot_be_resized() {
    watchdog("sealed ring", || {
        let (rx, real, addr) = setup(&Options::new().capacity(8192));
        let mut raw = Raw::connect(&addr);
        let len = raw.file.metadata().unwrap().len();
        assert_eq!(len, (HEADER + 8192) as u64, "header + capacity");
        assert_eperm("shrink", raw.file.set_len(len / 2));
        assert_eperm("truncate to 0", raw.file.set_len(0));
        assert_eperm("grow", raw.file.set_len(len * 2));
        let grow =
            rustix::fs::fallocate(&raw.file, rustix::fs::FallocateFlags::empty(), 0, len * 2);
        assert_eperm("fallocate past the end", grow.map_err(Into::into));
        let seal = rustix::fs::fcntl_add_seals(&raw.file, rustix::fs::SealFlags::WRITE);
        assert_eperm("adding a seal (F_SEAL_SEAL)", seal.map_err(Into::into));
        assert_eq!(raw.file.metadata().unwrap().len(), len, "size unchanged");
        // Nothing changed: the receiver takes the hostile peer's ring as before (no SIGBUS),
        // next to a real sender whose 8 KiB ring wraps several times.
        let want: Vec<Job> = (0..40).map(|i| job(i, 700)).collect();
        let to_send = want.clone();
        let sender = std::thread::spawn(move || {
            for j in to_send {
                real.send(j).expect("real send");
            }
        });
        let hostile: Vec<Job> = (0..8).map(|i| job(HOSTILE + i, 100)).collect();
        for h in &hostile {
            raw.send_job(h);
        }
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while raw.tail() != raw.head && Instant::now() < deadline {
            if let Ok(j) = rx.recv_timeout(Duration::from_millis(5)) {
                got.push(j);
            }
        }
        let mine: Vec<&Job> = got.iter().filter(|j| j.0 >= HOSTILE).collect();
        assert!(
            mine.iter().copied().eq(&hostile),
            "the hostile ring's jobs, in order"
        );
        expect_real(&rx, got, &want, &hostile);
        sender.join().unwrap();
        assert!(
            !raw.hung_up() && !raw.consumer_closed(),
            "a well-behaved ring dropped"
        );
    });
}

#[test]
fn dropped_receiver_disconnects_senders() {
    watchdog("receiver drop", || {
        let (rx, real, addr) = setup(&Options::new());
        let mut raw = Raw::connect(&addr);
        real.send(job(1, 10)).unwrap();
        raw.send_job(&job(HOSTILE, 10));
        let mut got = vec![rx.recv_timeout(Duration::from_secs(5)).unwrap()];
        got.push(rx.recv_timeout(Duration::from_secs(5)).unwrap());
        got.sort();
        assert_eq!(got, [job(1, 10), job(HOSTILE, 10)]);
        drop(rx);
        match real.send(job(2, 10)) {
            Err(SendError::Disconnected(m)) => assert_eq!(m, job(2, 10), "handed back"),
            other => panic!("send after the receiver dropped: {other:?}"),
        }
        assert!(
            raw.consumer_closed(),
            "the receiver closed its side of every ring"
        );
        let start = Instant::now();
        while !raw.hung_up() {
            assert!(
                start.elapsed() < DROP_WITHIN,
                "the rendezvous socket stayed open"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        match Sender::<Job>::connect(&addr) {
            Err(Error::NotFound { .. }) => {}
            other => panic!("connect after the receiver dropped: {other:?}"),
        }
    });
}

/// A hostile receiver hands a sender a ring of its own making. A well-made one works (the
/// control); positions no receiver writes must make `connect` or `send` fail, never panic
/// or write outside the ring.
#[test]
fn hostile_receiver_cannot_crash_a_sender() {
    watchdog("hostile receiver", || {
        let (addr, server) = fake_receiver(|_| {});
        let tx = Sender::<Job>::connect(&addr).expect("connect to a well-made ring");
        let (ring, _sock) = server.join().unwrap();
        let sent = encode(&job(1, 20));
        tx.send(job(1, 20)).expect("send");
        let frame = 8 + sent.len().next_multiple_of(8) as u64;
        assert_eq!(ring.u64_at(HEAD).load(Ordering::Acquire), frame, "head");
        assert_eq!(
            ring.u32_at(HEADER).load(Ordering::Relaxed),
            sent.len() as u32
        );
        assert_eq!(ring.u32_at(HEADER + 4).load(Ordering::Relaxed), LAST);
        // Full, then `tail` moves past `head`: the sender gives up on this receiver.
        let mut n = 0;
        while tx.try_send(job(2, 20)).is_ok() {
            n += 1;
            assert!(n < 4096, "a 4 KiB ring never filled");
        }
        let head = ring.u64_at(HEAD).load(Ordering::Acquire);
        ring.u64_at(TAIL).store(head + 64, Ordering::Release);
        match tx.try_send(job(3, 20)) {
            Err(conduit::TrySendError::Disconnected(m)) => assert_eq!(m, job(3, 20)),
            other => panic!("try_send with tail past head: {other:?}"),
        }
        // `tail` ahead of `head` from the start: refused at connect.
        let (addr, server) = fake_receiver(|r| r.u64_at(TAIL).store(16, Ordering::Relaxed));
        let refused = Sender::<Job>::connect(&addr);
        drop(server.join().unwrap());
        assert!(
            matches!(refused, Err(Error::Protocol { .. })),
            "tail ahead of head: {refused:?}"
        );
        // Both positions at 4092: no frame starts there (frames are 8-aligned), and only 4
        // bytes are left before the end of the data region for an 8-byte header.
        let (addr, server) = fake_receiver(|r| {
            r.u64_at(HEAD).store(4092, Ordering::Relaxed);
            r.u64_at(TAIL).store(4092, Ordering::Relaxed);
        });
        let outcome = std::panic::catch_unwind(|| {
            Sender::<Job>::connect(&addr).map(|tx| tx.send(job(4, 20)).map_err(|e| e.to_string()))
        });
        drop(server.join().unwrap());
        match outcome {
            Ok(Err(_)) | Ok(Ok(Err(_))) => {}
            Ok(Ok(Ok(()))) => panic!(
                "a sender accepted a ring at position 4092 and wrote an 8-byte frame header \
                 where 4 bytes were left (Producer::new checks only head - tail)"
            ),
            Err(_) => panic!(
                "Sender::send panicked on a ring whose receiver set head = tail = 4092 \
                 (Producer::new checks only head - tail; try_push computes the padding \
                 length as pad - 8 with pad = 4)"
            ),
        }
    });
}

// ---- leaks: in a child process, so parallel tests cannot disturb the counts ---------------

fn ring_maps() -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    maps.lines()
        .filter(|l| l.contains("memfd:conduit-ring"))
        .count()
}

fn counts() -> (usize, usize) {
    (conduit::open_fd_count().expect("fd count"), ring_maps())
}

/// Polls up to 2 s for the counts to return to `base`.
fn settles_to(base: (usize, usize), what: &str) {
    let start = Instant::now();
    while counts() != base && start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        counts(),
        base,
        "{what}: (open fds, ring mappings) before and after"
    );
}

#[test]
fn shm_hostile_child() {
    let Some(role) = common::role() else { return };
    assert_eq!(role, "leaks");
    let base = counts();
    let addr = format!("shm:{}", common::temp_dir().join("r.sock").display());
    let rx = Receiver::<Job>::bind_with(&addr, &Options::new().capacity(4096)).expect("bind");
    let bound = counts();
    for i in 0..200 {
        let tx = Sender::<Job>::connect(&addr).expect("connect");
        tx.send(job(i, 10)).unwrap();
        if i == 0 {
            // The count sees rings at all: the receiver's and the sender's mapping.
            assert_eq!(ring_maps(), 2, "one connection's mappings");
        }
        drop(tx);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).ok(),
            Some(job(i, 10))
        );
    }
    match rx.recv_timeout(Duration::from_secs(5)) {
        Err(RecvTimeoutError::Disconnected) => {}
        other => panic!("after 200 senders: {other:?}"),
    }
    settles_to(bound, "200 senders connected and dropped, receiver alive");
    drop(rx);
    settles_to(base, "200 senders and their receiver dropped");
    for i in 0..200 {
        let (tx, rx) = channel::<Job>(Backend::Shm).expect("channel");
        tx.send(job(i, 10)).unwrap();
        if i == 0 {
            assert_eq!(ring_maps(), 1, "an anonymous pair shares one mapping");
        }
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).ok(),
            Some(job(i, 10))
        );
    }
    settles_to(base, "200 anonymous shm channels");
    eprintln!("shm leaks: (open fds, ring mappings) {base:?} before and after; {bound:?} bound");
    std::process::exit(0);
}

#[test]
fn no_fd_or_mapping_leaks() {
    let mut child = common::spawn_child("shm_hostile_child", "leaks", &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the leak-check child ran over 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "the leak-check child failed: {status}");
}

/// Positions may start anywhere a multiple of 8, even just below `u64::MAX`, and then wrap
/// past zero: a sender that starts there is legal and must be served (regression: the
/// `hostile_ring` fuzz target found an overflow panic in the receiver for this case).
#[test]
fn positions_starting_near_u64_max_wrap_past_zero() {
    watchdog("positions near u64::MAX", || {
        let (rx, real, addr) = setup(&Options::new().capacity(4096));
        let raw = Raw::connect(&addr);
        let cap = 4096u64;
        // Set before the receiver attaches the ring (its next receive call).
        let start = 0u64.wrapping_sub(3 * cap);
        raw.u64_at(TAIL).store(start, Ordering::Release);
        raw.u64_at(HEAD).store(start, Ordering::Release);
        let mut head = start;
        let (mut sent, mut got) = (Vec::new(), Vec::new());
        for i in 0..60 {
            let j = job(HOSTILE + i, 40 + 13 * i as usize);
            let bytes = encode(&j);
            let need = 8 + bytes.len().next_multiple_of(8) as u64;
            let contiguous = cap - (head % cap);
            let pad = if contiguous < need { contiguous } else { 0 };
            // Wait for room, as a producer would, while the receiver drains.
            let deadline = Instant::now() + Duration::from_secs(10);
            while head.wrapping_sub(raw.tail()) + pad + need > cap {
                if let Ok(j) = rx.recv_timeout(Duration::from_millis(1)) {
                    got.push(j);
                }
                assert!(Instant::now() < deadline, "the receiver stopped draining");
            }
            if pad != 0 {
                raw.frame(head, (pad - 8) as u32, PAD, &[]);
                head = head.wrapping_add(pad);
            }
            raw.frame(head, bytes.len() as u32, LAST, &bytes);
            head = head.wrapping_add(need);
            raw.set_head(head);
            sent.push(j);
        }
        assert!(head < start, "the positions wrapped past zero");
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < sent.len() && Instant::now() < deadline {
            if let Ok(j) = rx.recv_timeout(Duration::from_millis(10)) {
                got.push(j);
            }
        }
        assert_eq!(got, sent, "every message, in order, intact");
        // The well-behaved sender is still served.
        real.send(job(7, 100)).unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            job(7, 100)
        );
    });
}

/// A sender that floods its connection with wake-up bytes (and makes its end of the socket
/// blocking) costs the receiver some reads, nothing more: the real sender beside it is served
/// in order, no `recv_timeout` overstays, and the flooder is never told anything it could
/// use against others. Wake-ups travel on each connection's own socket with per-call
/// `MSG_DONTWAIT`, so no descriptor is shared with a peer whose flags it could change (an
/// eventfd shared by every sender could be drained by one to starve the rest, or set
/// blocking to hang the receiver's read).
#[test]
fn wake_up_floods_stall_nobody() {
    use std::io::Write;
    watchdog("wake-up flood", || {
        let (rx, real, addr) = setup(&Options::new());
        let raw = Raw::connect(&addr);
        let stop = Arc::new(AtomicBool::new(false));
        let flooder = {
            let mut sock = raw.sock.try_clone().unwrap();
            let stop = stop.clone();
            sock.set_nonblocking(false).unwrap();
            sock.set_write_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            std::thread::spawn(move || {
                let junk = [1u8; 4096];
                let mut sent = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    match sock.write(&junk) {
                        Ok(n) => sent += n,
                        Err(_) => std::thread::yield_now(),
                    }
                }
                sent
            })
        };
        let want: Vec<Job> = (0..200).map(|i| job(i, 64 + i as usize)).collect();
        let mut got = Vec::new();
        for j in &want {
            real.send(j.clone()).expect("real send");
            // Let the receiver go to sleep now and then, so its wake-up path is exercised.
            if j.0 % 20 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
            let call = Instant::now();
            while let Ok(j) = rx.recv_timeout(Duration::from_millis(1)) {
                got.push(j);
            }
            let took = call.elapsed();
            assert!(
                took < Duration::from_secs(1),
                "a receive overstayed: {took:?}"
            );
        }
        stop.store(true, Ordering::Relaxed);
        let flooded = flooder.join().unwrap();
        assert!(flooded > 0, "the flood never started");
        expect_real(&rx, got, &want, &[]);
        drop(raw);
    });
}

/// Issue 6, scenario 4 on shared memory: a sender that publishes the first piece of a message
/// and then stalls (alive, connection open). `try_recv` stays non-blocking, `recv_timeout`
/// times out, and the well-behaved sender beside it is still served, in order.
#[test]
fn a_stalled_first_piece_blocks_nobody() {
    watchdog("stalled first piece", || {
        let (rx, real, addr) = setup(&Options::new());
        let mut raw = Raw::connect(&addr);
        // The first 1000 bytes of a message that never ends (flags 0: not the last piece).
        raw.publish(&[7u8; 1000], 0);
        for _ in 0..20 {
            let call = Instant::now();
            match rx.try_recv() {
                Err(conduit::TryRecvError::Empty) => {}
                other => panic!("try_recv beside a stalled piece: {other:?}"),
            }
            let took = call.elapsed();
            assert!(took < Duration::from_millis(500), "try_recv took {took:?}");
        }
        let call = Instant::now();
        match rx.recv_timeout(Duration::from_millis(50)) {
            Err(RecvTimeoutError::Timeout) => {}
            other => panic!("recv_timeout beside a stalled piece: {other:?}"),
        }
        let took = call.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "recv_timeout(50 ms) took {took:?}"
        );
        let want: Vec<Job> = (0..50).map(|i| job(i, 100 + i as usize)).collect();
        for j in &want {
            real.send(j.clone()).expect("real send");
        }
        expect_real(&rx, Vec::new(), &want, &[]);
        assert!(!raw.hung_up(), "a stalled but live sender is not dropped");
    });
}
