//! Hostile shared-memory senders: rings written wrong. A raw sender (`shm_wire::Raw`) does
//! the `shm:` handshake by hand, maps the ring and corrupts it (bad header words, sizes over
//! the limit, frames that never make progress, positions preset or changed between reads);
//! each time the receiver must drop that connection alone (close the rendezvous socket, mark
//! its side of the ring closed) within a bounded time, without panic, hang or unbounded
//! allocation. What is odd but legal (garbage in `head`, positions near `u64::MAX`, a stalled
//! first piece, a flood of wake-ups) is served or waited for without holding anyone up.
//! Either way a well-behaved `Sender` connected alongside keeps being served. The peers'
//! lifecycle and resources (sealing, receiver drop, hostile receivers, leaks) are tested in
//! `tests/shm_peers.rs`.

mod common;
mod shm_wire;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conduit::__testing::encode;
use conduit::{Options, Receiver, RecvTimeoutError};
use shm_wire::*;

type Case = fn(&mut Raw, &Receiver<Job>, &mut Vec<Job>);

/// Writes hostile job `HOSTILE + id` at the raw sender's `head` and commits its header with
/// `stamp` (a producer's would be `stamp(head, LAST)`).
fn stamped(r: &mut Raw, id: u32, stamp: u32) {
    let bytes = encode(&job(HOSTILE + id, 8));
    r.payload(r.head, &bytes);
    r.commit_word(r.head, word(bytes.len() as u32, stamp));
    r.notify();
}

/// Commits a header claiming `len` bytes with `flags` at the raw sender's `head`.
fn header(r: &mut Raw, len: usize, flags: u32) {
    r.commit(r.head, len as u32, flags);
    r.notify();
}

/// Hostile job `HOSTILE + id`, encoded in exactly `size` bytes.
fn encoded_as(id: u32, size: usize) -> Vec<u8> {
    (0..size)
        .map(|n| encode(&job(HOSTILE + id, n)))
        .find(|bytes| bytes.len() == size)
        .expect("a job of that encoded size")
}

/// Each must make the receiver drop that connection (and deliver none of its messages but
/// the `consumed` ones).
const CASES: &[(&str, Case)] = &[
    ("a header stamped ahead of its position", |r, _, _| {
        stamped(r, 3, stamp(r.head + 8, LAST))
    }),
    ("a header stamped behind its position", |r, rx, got| {
        consumed(r, rx, got, 1);
        stamped(r, 4, stamp(r.head - 8, LAST));
    }),
    ("a header stamped with the previous lap", |r, rx, got| {
        consumed(r, rx, got, 2);
        stamped(r, 5, stamp(r.head.wrapping_sub(r.cap as u64), LAST));
    }),
    ("a header stamped with the next lap", |r, _, _| {
        stamped(r, 6, stamp(r.head + r.cap as u64, LAST))
    }),
    ("the high stamp bit", |r, _, _| {
        stamped(r, 7, stamp(r.head, LAST) | 1 << 31)
    }),
    ("a frame longer than the capacity", |r, _, _| {
        header(r, u32::MAX as usize - 7, LAST)
    }),
    ("a frame over half the ring", |r, _, _| {
        header(r, r.cap / 2 + 8, 0)
    }),
    ("a frame past the region's end", |r, _, _| {
        // 64 bytes left; the frame claims 8 + 64 (not the last piece: taking it would
        // leave the receiver polling a cleared slot at offset 8).
        r.start_at(r.cap as u64 - 64);
        header(r, 64, 0);
    }),
    ("unknown flags (PAD | LAST) on a job", |r, _, _| {
        let bytes = encode(&job(HOSTILE + 9, 8));
        r.payload(r.head, &bytes);
        header(r, bytes.len(), PAD | LAST);
    }),
    ("the descriptors marker twice", |r, _, _| {
        // An empty piece that is not the last opens a message with descriptors attached,
        // once; a second one is something no sender writes.
        r.publish(&[], 0);
        r.publish(&[], 0);
        r.notify();
    }),
    (
        "a message marked with descriptors that never came",
        |r, _, _| {
            r.publish(&[], 0);
            r.send_job(&job(HOSTILE + 20, 8));
            r.notify();
        },
    ),
    ("padding that stops short of the end", |r, _, _| {
        r.start_at(r.cap as u64 / 2);
        header(r, r.cap / 2 - 16, PAD);
    }),
    ("padding past the end", |r, _, _| {
        r.start_at(r.cap as u64 / 2);
        header(r, r.cap / 2, PAD);
    }),
    ("padding at offset 0", |r, _, _| header(r, r.cap - 8, PAD)),
    ("padding flagged last", |r, _, _| {
        // Right length and place, and what it covers is a whole job: only the flag is wrong.
        r.start_at(r.cap as u64 - 72);
        r.payload(r.head, &encoded_as(12, 64));
        header(r, 64, PAD | LAST);
    }),
    ("well framed, not a Job", |r, _, _| {
        r.publish(&[0xff; 16], LAST)
    }),
    ("closed mid-message", |r, _, _| {
        r.publish(&encode(&job(HOSTILE + 10, 100))[..50], 0);
        r.u32_at(PRODUCER_CLOSED).store(1, Ordering::Release);
        r.notify();
    }),
    ("hung up mid-message", |r, _, _| {
        r.publish(&encode(&job(HOSTILE + 11, 100))[..50], 0);
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

/// Empty non-last pieces never grow a message toward the size limit: the first is the
/// descriptors marker, and no sender writes a second.
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
/// `tail` is 3 (no frame can start there) and a frame at 3 is written, header word and all:
/// the receiver must not deliver it, and must drop the connection.
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
        let mut frame = word(bytes.len() as u32, 3 | LAST | COMMIT)
            .to_le_bytes()
            .to_vec();
        frame.extend_from_slice(&bytes);
        raw.write_bytes(3, &frame);
        raw.notify();
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
             producer can write; with tail = capacity - 4 the same path reads a header word \
             4 bytes past the data region"
        );
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
        expect_real(&rx, got, &want, &[]);
    });
}

/// A thread keeps changing the header word at the receiver's position (and the slot after
/// the frame) between a good commit and bad ones (a huge length, a wrong stamp, a stale
/// header over a whole job) while the receiver reads: it must read each word once, never
/// deliver a torn or stale message, and sooner or later see a bad one and drop the
/// connection.
#[test]
fn positions_changing_between_reads() {
    watchdog("flipping header words", || {
        const CAP: u64 = 1 << 16;
        let (rx, real, addr) = setup(&Options::new().capacity(CAP as usize));
        let mut got = Vec::new();
        let h = job(HOSTILE + 7, 64);
        let len = encode(&h).len() as u32;
        let next = frame_size(len as usize);
        let good = word(len, stamp(0, LAST));
        // A whole job where the next frame's payload goes, under a header from the lap before
        // (what a slot would hold if nobody cleared it): delivered only by a receiver that
        // does not check stamps.
        let stale = encode(&job(HOSTILE + 8, 16));
        let cases = [
            (
                "lengths flipping",
                [good, word(u32::MAX, stamp(0, LAST)), good],
                [0, word(u32::MAX, stamp(next, 0))],
            ),
            (
                "stamps flipping",
                [good, word(len, stamp(8, LAST)), 0],
                [
                    0,
                    word(stale.len() as u32, stamp(next.wrapping_sub(CAP), LAST)),
                ],
            ),
        ];
        for (case, at_frame, after_frame) in cases {
            let mut raw = Raw::connect(&addr);
            raw.send_job(&h);
            assert_eq!(raw.head, next);
            raw.payload(next, &stale);
            let stop = Arc::new(AtomicBool::new(false));
            let (ring, halt) = (raw.ring.clone(), stop.clone());
            let flipper = std::thread::spawn(move || {
                let (first, second) = (ring.slot(0), ring.slot(next));
                let mut n = 0usize;
                while !halt.load(Ordering::Relaxed) {
                    first.store(at_frame[n % at_frame.len()], Ordering::Release);
                    second.store(after_frame[n % after_frame.len()], Ordering::Release);
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
        assert!(intact, "a hostile message arrived torn or stale");
        let got: Vec<Job> = got.into_iter().filter(|j| j.0 < HOSTILE).collect();
        expect_real(&rx, got, &want, &[]);
    });
}

/// The receiver polls the header words and never reads `head`: a sender that writes garbage
/// there (beyond the capacity, `u64::MAX`, backwards, half a header...) while it commits its
/// frames correctly is served like any other, across several laps and wrap paddings.
/// Waits, as a producer would, until `len` bytes fit in the raw sender's ring, taking what
/// the receiver delivers meanwhile into `got`; fails if the receiver stops draining or drops
/// the raw sender.
fn wait_for_room(raw: &Raw, rx: &Receiver<Job>, len: usize, got: &mut Vec<Job>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !raw.has_room(len) {
        if let Ok(j) = rx.recv_timeout(Duration::from_millis(1)) {
            got.push(j);
        }
        assert!(Instant::now() < deadline, "the receiver stopped draining");
        assert!(
            !raw.consumer_closed(),
            "the receiver dropped the raw sender"
        );
    }
}

#[test]
fn garbage_in_head_is_ignored() {
    watchdog("garbage in head", || {
        let (rx, real, addr) = setup(&Options::new().capacity(4096));
        let mut raw = Raw::connect(&addr);
        let cap = raw.cap as u64;
        let stop = Arc::new(AtomicBool::new(false));
        let scribbles = Arc::new(AtomicUsize::new(0));
        let scribbler = {
            let (ring, halt, count) = (raw.ring.clone(), stop.clone(), scribbles.clone());
            std::thread::spawn(move || {
                // Far from every position this stream uses, so a receiver that took `head`
                // for anything would see it as corrupt.
                let garbage = [u64::MAX, 3 << 40, 1 << 63, u64::MAX - cap, 5 << 32];
                let mut n = 0usize;
                while !halt.load(Ordering::Relaxed) {
                    ring.u64_at(HEAD)
                        .store(garbage[n % garbage.len()], Ordering::Release);
                    n += 1;
                    count.store(n, Ordering::Relaxed);
                    if n % 256 == 0 {
                        ring.notify();
                        std::thread::yield_now();
                    }
                }
            })
        };
        let want = vec![job(1, 100), job(2, 200)];
        real.send(want[0].clone()).unwrap();
        let (mut sent, mut got) = (Vec::new(), Vec::new());
        for i in 0..40 {
            let j = job(HOSTILE + i, 30 + 17 * i as usize);
            let bytes = encode(&j);
            wait_for_room(&raw, &rx, bytes.len(), &mut got);
            // Garbage goes on being written between publishes.
            let seen = scribbles.load(Ordering::Relaxed);
            let deadline = Instant::now() + Duration::from_secs(10);
            while scribbles.load(Ordering::Relaxed) == seen {
                assert!(Instant::now() < deadline, "the scribbler stopped");
                std::thread::yield_now();
            }
            raw.publish(&bytes, LAST);
            // Garbage again right after the publish's own store of `head`, so the receiver
            // never finds the true one there: beyond the capacity, behind `tail`, half a
            // header in, at the end of the positions.
            let head = raw.head;
            let garbage = [head + cap + 8, head.wrapping_sub(cap), head + 4, u64::MAX];
            raw.set_head(garbage[i as usize % garbage.len()]);
            sent.push(j);
        }
        assert!(raw.head > 2 * cap, "the stream wrapped the ring twice");
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.iter().filter(|j| j.0 >= HOSTILE).count() < sent.len()
            && Instant::now() < deadline
        {
            if let Ok(j) = rx.recv_timeout(Duration::from_millis(5)) {
                got.push(j);
            }
        }
        stop.store(true, Ordering::Relaxed);
        scribbler.join().unwrap();
        let mine: Vec<&Job> = got.iter().filter(|j| j.0 >= HOSTILE).collect();
        assert!(
            mine.iter().copied().eq(&sent),
            "the raw sender's jobs, in order, intact: got {} of {}",
            mine.len(),
            sent.len()
        );
        assert!(
            !raw.hung_up() && !raw.consumer_closed(),
            "a sender whose only fault is garbage in `head` was dropped"
        );
        real.send(want[1].clone()).unwrap();
        expect_real(&rx, got, &want, &sent);
    });
}

/// Positions may start anywhere a multiple of 8, even just below `u64::MAX`, and then wrap
/// past zero: a sender that starts there is legal and must be served (regression: the
/// `hostile_ring` fuzz target found an overflow panic in the receiver for this case).
#[test]
fn positions_starting_near_u64_max_wrap_past_zero() {
    watchdog("positions near u64::MAX", || {
        let (rx, real, addr) = setup(&Options::new().capacity(4096));
        let mut raw = Raw::connect(&addr);
        let cap = 4096u64;
        // Set before the receiver attaches the ring (its next receive call).
        let start = 0u64.wrapping_sub(3 * cap);
        raw.start_at(start);
        let (mut sent, mut got) = (Vec::new(), Vec::new());
        for i in 0..60 {
            let j = job(HOSTILE + i, 40 + 13 * i as usize);
            let bytes = encode(&j);
            wait_for_room(&raw, &rx, bytes.len(), &mut got);
            // Padding (committed after the frame at offset 0) when it does not fit.
            raw.publish(&bytes, LAST);
            sent.push(j);
        }
        let head = raw.head;
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

/// On shared memory: a sender that publishes the first piece of a message
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
