//! Unit tests of the ring core over heap memory. They run under Miri in CI, so they stay
//! small; the threaded one shrinks under `cfg(miri)`.

use super::core::{
    header_word, Consumer, Pop, Producer, Push, RingError, Taken, FLAG_LAST, FLAG_PAD, FRAME_HEADER,
};
use super::HeapRing;

const CAP: usize = 4096;

fn pair(ring: &HeapRing, limit: usize) -> (Producer, Consumer) {
    (
        Producer::new(ring.ring()).unwrap(),
        Consumer::new(ring.ring(), limit).unwrap(),
    )
}

fn msg(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j) as u8).collect()
}

/// Pushes a whole message in pieces, popping into `got` whenever the ring is full.
fn send(p: &mut Producer, c: &mut Consumer, m: &[u8], got: &mut Vec<Vec<u8>>, buf: &mut Vec<u8>) {
    let max = p.max_piece();
    let mut pieces: Vec<&[u8]> = m.chunks(max).collect();
    if pieces.is_empty() {
        pieces.push(&[]);
    }
    let n = pieces.len();
    for (i, piece) in pieces.into_iter().enumerate() {
        while p.try_push(piece, i + 1 == n).unwrap() == Push::Full {
            drain(c, got, buf, 1);
        }
    }
}

/// Pops up to `messages` whole messages.
fn drain(c: &mut Consumer, got: &mut Vec<Vec<u8>>, buf: &mut Vec<u8>, messages: usize) {
    let mut done = 0;
    while done < messages {
        match c.try_pop(buf).unwrap() {
            Pop::Piece { last: true, .. } => {
                got.push(std::mem::take(buf));
                done += 1;
            }
            Pop::Piece { .. } => {}
            Pop::Empty { .. } | Pop::Closed => return,
        }
    }
}

#[test]
fn order_kept_across_many_wraps() {
    let ring = HeapRing::new(CAP);
    let (mut p, mut c) = pair(&ring, usize::MAX);
    let sent: Vec<Vec<u8>> = (0..300).map(|i| msg(i, (i * 37) % 700)).collect();
    let (mut got, mut buf) = (Vec::new(), Vec::new());
    for m in &sent {
        send(&mut p, &mut c, m, &mut got, &mut buf);
    }
    drain(&mut c, &mut got, &mut buf, usize::MAX);
    assert_eq!(got, sent);
}

#[test]
fn full_and_empty_edges() {
    let ring = HeapRing::new(CAP);
    let (mut p, mut c) = pair(&ring, usize::MAX);
    let mut buf = Vec::new();
    assert_eq!(c.try_pop(&mut buf).unwrap(), Pop::Empty { wake: false });
    // 8-byte payloads take 16 bytes each, and the producer keeps 8 bytes free for the next
    // header: CAP / 16 - 1 fit.
    let fit = CAP / 16 - 1;
    for i in 0..fit {
        assert!(matches!(
            p.try_push(&(i as u64).to_le_bytes(), true).unwrap(),
            Push::Done { .. }
        ));
    }
    assert_eq!(p.try_push(&[0; 8], true).unwrap(), Push::Full);
    // Each frame taken is handed back at once: one pop from a full ring makes room for the
    // next push of the same size (16 bytes were free, 24 needed, 16 more freed).
    for i in 0..3u64 {
        buf.clear();
        assert!(matches!(
            c.try_pop(&mut buf).unwrap(),
            Pop::Piece { last: true, .. }
        ));
        assert_eq!(buf, i.to_le_bytes());
        assert!(
            matches!(p.try_push(&[1; 8], true).unwrap(), Push::Done { .. }),
            "room after taking frame {i}"
        );
        assert_eq!(p.try_push(&[0; 8], true).unwrap(), Push::Full);
    }
    // Draining the ring frees all of it.
    let mut popped = 0;
    loop {
        buf.clear();
        match c.try_pop(&mut buf).unwrap() {
            Pop::Piece { .. } => popped += 1,
            Pop::Empty { .. } => break,
            Pop::Closed => unreachable!("not closed"),
        }
    }
    assert_eq!(popped, fit);
    for _ in 0..fit {
        assert!(matches!(
            p.try_push(&[2; 8], true).unwrap(),
            Push::Done { .. }
        ));
    }
    assert_eq!(p.try_push(&[0; 8], true).unwrap(), Push::Full);
}

#[test]
fn a_piece_of_the_largest_size_fits_an_empty_ring_at_any_offset() {
    for start in [0usize, 16, 1000, CAP / 2 - 8, CAP / 2, CAP - 16] {
        let ring = HeapRing::new(CAP);
        let (mut p, mut c) = pair(&ring, usize::MAX);
        let mut buf = Vec::new();
        // Move both positions to `start` with fillers of at most half the ring each.
        let mut at = 0;
        while at < start {
            let step = (start - at).min(CAP / 2);
            let filler = vec![0u8; step - FRAME_HEADER];
            assert!(matches!(
                p.try_push(&filler, true).unwrap(),
                Push::Done { .. }
            ));
            c.try_pop(&mut buf).unwrap();
            buf.clear();
            at += step;
        }
        let big = msg(1, p.max_piece());
        assert!(
            matches!(p.try_push(&big, true).unwrap(), Push::Done { .. }),
            "offset {start}"
        );
        assert!(matches!(
            c.try_pop(&mut buf).unwrap(),
            Pop::Piece { last: true, .. }
        ));
        assert_eq!(buf, big);
    }
}

#[test]
fn messages_bigger_than_the_ring_go_in_pieces() {
    let ring = HeapRing::new(CAP);
    let (mut p, mut c) = pair(&ring, usize::MAX);
    let (mut got, mut buf) = (Vec::new(), Vec::new());
    let sent = vec![msg(1, 3 * CAP + 5), msg(2, 0), msg(3, CAP)];
    for m in &sent {
        send(&mut p, &mut c, m, &mut got, &mut buf);
    }
    drain(&mut c, &mut got, &mut buf, usize::MAX);
    assert_eq!(got, sent);
}

#[test]
fn closed_only_after_everything_is_taken() {
    let ring = HeapRing::new(CAP);
    let (mut p, mut c) = pair(&ring, usize::MAX);
    p.try_push(b"last words", true).unwrap();
    p.close();
    let mut buf = Vec::new();
    assert!(matches!(
        c.try_pop(&mut buf).unwrap(),
        Pop::Piece { last: true, .. }
    ));
    assert_eq!(buf, b"last words");
    assert_eq!(c.try_pop(&mut buf).unwrap(), Pop::Closed);
    assert!(!c.close() && p.consumer_closed());
}

#[test]
fn size_limit_is_checked_before_copying() {
    let ring = HeapRing::new(CAP);
    let (mut p, mut c) = pair(&ring, 100);
    p.try_push(&[0; 64], false).unwrap();
    p.try_push(&[0; 64], true).unwrap();
    let mut buf = Vec::new();
    assert!(matches!(
        c.try_pop(&mut buf).unwrap(),
        Pop::Piece { last: false, .. }
    ));
    assert_eq!(
        c.try_pop(&mut buf).unwrap_err(),
        RingError::TooLarge {
            at_least: 128,
            limit: 100
        }
    );
    assert_eq!(buf.len(), 64, "nothing of the refused piece was copied");
}

/// Writes a header word at `pos`'s offset, as a peer may (single-threaded tests only).
fn put_word(ring: &HeapRing, pos: u64, word: u64) {
    let off = (pos % CAP as u64) as usize;
    // SAFETY: `off` is a multiple of 8 below CAP and the data region is 8-aligned; the tests
    // calling this are single-threaded, so nothing reads the word meanwhile.
    unsafe { ring.data_ptr().add(off).cast::<u64>().write(word.to_le()) };
}

/// A hostile producer writes frame headers directly; the consumer refuses each.
#[test]
fn hostile_positions_and_frames_are_refused() {
    use crate::sync::Ordering::Relaxed;
    let cap = CAP as u64;
    let half = CAP as u32 / 2;
    // (what, the consumer's starting position, the word written there)
    let cases: Vec<(&str, u64, u64)> = vec![
        ("a stamp of the next frame", 0, header_word(8, 8, FLAG_LAST)),
        ("a stamp of the last lap", cap, header_word(0, 8, FLAG_LAST)),
        ("a stamp of the next lap", 0, header_word(cap, 8, FLAG_LAST)),
        (
            "length beyond capacity",
            0,
            header_word(0, u32::MAX, FLAG_LAST),
        ),
        ("over half the ring", 0, header_word(0, half + 8, 0)),
        (
            "past the end of the region",
            cap - 16,
            header_word(cap - 16, 64, FLAG_LAST),
        ),
        ("unknown flags", 0, header_word(0, 8, FLAG_PAD | FLAG_LAST)),
        (
            "padding not reaching the end",
            16,
            header_word(16, 8, FLAG_PAD),
        ),
        (
            "padding past the end",
            16,
            header_word(16, CAP as u32, FLAG_PAD),
        ),
        (
            "padding at offset 0",
            0,
            header_word(0, CAP as u32 - 8, FLAG_PAD),
        ),
    ];
    for (what, start, word) in cases {
        let ring = HeapRing::new(CAP);
        ring.header().tail.store(start, Relaxed);
        let mut c = Consumer::new(ring.ring(), usize::MAX).unwrap();
        put_word(&ring, start, word);
        let mut buf = Vec::new();
        assert!(
            matches!(c.try_pop(&mut buf), Err(RingError::Corrupted(_))),
            "{what}: not refused"
        );
        assert!(buf.is_empty(), "{what}: bytes were delivered");
    }
    // Not attacks: a word without the commit bit is "nothing yet", and `head` is the
    // producer's own business (the consumer never reads it).
    let ring = HeapRing::new(CAP);
    let mut c = Consumer::new(ring.ring(), usize::MAX).unwrap();
    put_word(&ring, 0, header_word(0, 8, FLAG_LAST) & !(4 << 32));
    ring.header().head.store(u64::MAX, Relaxed);
    assert_eq!(c.try_pop(&mut Vec::new()), Ok(Pop::Empty { wake: false }));
    // A consumer that moves tail past head is refused by the producer.
    let ring = HeapRing::new(CAP);
    let mut p = Producer::new(ring.ring()).unwrap();
    for _ in 0..CAP / 16 - 1 {
        p.try_push(&[0; 8], true).unwrap();
    }
    let head = ring.header().head.load(Relaxed);
    ring.header().tail.store(head + 8, Relaxed);
    assert!(matches!(
        p.try_push(&[0; 8], true),
        Err(RingError::Corrupted(_))
    ));
}

/// Old payload bytes that look exactly like the header the consumer expects next are never
/// read as a frame: the producer clears each header slot before the consumer can reach it.
#[test]
fn stale_bytes_never_read_as_a_frame() {
    let ring = HeapRing::new(CAP);
    let (mut p, mut c) = pair(&ring, usize::MAX);
    let mut buf = Vec::new();
    // Fill the ring with pieces whose every word is the committed header of a one-byte
    // message at that offset's position one lap on.
    let mut pos = 0u64;
    while pos < CAP as u64 {
        let piece: Vec<u8> = (0..p.max_piece() / 8)
            .flat_map(|k| {
                let at = pos + 8 * (k as u64 + 1) + CAP as u64;
                header_word(at, 1, FLAG_LAST).to_le_bytes()
            })
            .collect();
        if p.try_push(&piece, true).unwrap() == Push::Full {
            break;
        }
        pos += (FRAME_HEADER + piece.len()) as u64;
        buf.clear();
        assert!(matches!(c.try_pop(&mut buf).unwrap(), Pop::Piece { .. }));
    }
    // Through the next lap one small message at a time, polling the empty ring after each:
    // every poll lands on a slot that held one of those words.
    for i in 0..CAP / 8 {
        let m = msg(i, i % 24);
        assert!(matches!(p.try_push(&m, true).unwrap(), Push::Done { .. }));
        buf.clear();
        assert!(matches!(
            c.try_pop(&mut buf).unwrap(),
            Pop::Piece { last: true, .. }
        ));
        assert_eq!(buf, m, "message {i}");
        assert_eq!(
            c.try_pop(&mut buf).unwrap(),
            Pop::Empty { wake: false },
            "after {i}"
        );
    }
}

#[test]
fn misaligned_positions_are_refused_at_attach() {
    use crate::sync::Ordering::Relaxed;
    let ring = HeapRing::new(CAP);
    ring.header().head.store(CAP as u64 - 4, Relaxed);
    ring.header().tail.store(CAP as u64 - 4, Relaxed);
    assert!(matches!(
        Producer::new(ring.ring()),
        Err(RingError::Corrupted(_))
    ));
    assert!(matches!(
        Consumer::new(ring.ring(), 1),
        Err(RingError::Corrupted(_))
    ));
}

/// Positions a peer set just below `u64::MAX` before we attached wrap past zero: all
/// arithmetic on them wraps (found by the `hostile_ring` fuzz target).
#[test]
fn positions_wrap_past_u64_max() {
    use crate::sync::Ordering::Relaxed;
    let ring = HeapRing::new(CAP);
    let start = 0u64.wrapping_sub(2 * CAP as u64); // a multiple of 8 near the top
    assert_eq!(start % 8, 0);
    ring.header().head.store(start, Relaxed);
    ring.header().tail.store(start, Relaxed);
    let (mut p, mut c) = pair(&ring, usize::MAX);
    let (mut got, mut buf) = (Vec::new(), Vec::new());
    let sent: Vec<Vec<u8>> = (0..40).map(|i| msg(i, 300 + i * 10)).collect();
    for m in &sent {
        send(&mut p, &mut c, m, &mut got, &mut buf);
    }
    drain(&mut c, &mut got, &mut buf, usize::MAX);
    assert_eq!(got, sent);
    assert!(
        ring.header().head.load(Relaxed) < start,
        "the positions wrapped"
    );
}

#[test]
fn identity_is_validated() {
    let ring = HeapRing::new(CAP);
    assert!(ring.ring().validate().is_ok());
    ring.header().magic.store(0, crate::sync::Ordering::Relaxed);
    assert!(ring.ring().validate().is_err());
}

#[test]
fn two_threads_stream_in_order() {
    let count: usize = if cfg!(miri) { 200 } else { 20_000 };
    let ring = std::sync::Arc::new(HeapRing::new(CAP));
    let (mut p, mut c) = pair(&ring, usize::MAX);
    let producer = std::thread::spawn(move || {
        for i in 0..count {
            let m = msg(i, i % 300);
            while p.try_push(&m, true).unwrap() == Push::Full {
                std::thread::yield_now();
            }
        }
        p.close();
    });
    let mut buf = Vec::new();
    let mut i = 0;
    loop {
        match c.try_pop(&mut buf).unwrap() {
            Pop::Piece { .. } => {
                assert_eq!(buf, msg(i, i % 300), "message {i}");
                buf.clear();
                i += 1;
            }
            Pop::Empty { .. } => std::thread::yield_now(),
            Pop::Closed => break,
        }
    }
    assert_eq!(i, count);
    producer.join().unwrap();
    drop(ring);
}

#[test]
fn a_reserved_piece_is_written_in_runs_and_may_end_early() {
    // What the shm sender's direct encoding does: reserve a piece, write it in runs of any
    // length at any offset, and commit it whole or shrunk to what was written.
    let ring = HeapRing::new(CAP);
    let (mut p, mut c) = pair(&ring, usize::MAX);
    let mut got = Vec::new();
    let mut buf = Vec::new();
    for round in 0..12 {
        let m = msg(round, 1000 + 37 * round);
        let piece = p.reserve(1500).unwrap().expect("room after each drain");
        assert_eq!(piece.len(), 1500);
        let mut at = 0;
        for run in m.chunks(3 + round * 11) {
            p.write(&piece, at, run);
            at += run.len();
        }
        let _ = p.commit(piece.shrink(m.len()), true);
        drain(&mut c, &mut got, &mut buf, 1);
        assert_eq!(got.pop(), Some(m));
    }
    // A piece never committed leaves nothing behind: the next one takes its place.
    {
        let abandoned = p.reserve(800).unwrap().unwrap();
        p.write(&abandoned, 0, &[0xAB; 800]);
    }
    let piece = p.reserve(5).unwrap().unwrap();
    p.write(&piece, 0, b"hello");
    let _ = p.commit(piece, true);
    drain(&mut c, &mut got, &mut buf, 1);
    assert_eq!(got, vec![b"hello".to_vec()]);
}

#[test]
#[should_panic(expected = "a write past the reserved piece")]
fn a_write_past_the_reserved_piece_panics() {
    let ring = HeapRing::new(CAP);
    let (mut p, _c) = pair(&ring, usize::MAX);
    let piece = p.reserve(16).unwrap().unwrap();
    p.write(&piece, 10, &[0; 7]);
}

/// The descriptors marker (an empty piece that is not the last) opens a message and is
/// reported with it; anywhere else, twice, or after the message's first bytes, the ring is
/// corrupted.
#[test]
fn the_descriptors_marker_only_opens_a_message() {
    let pop_all = |words: &[(u64, u64)]| {
        let ring = HeapRing::new(CAP);
        let mut c = Consumer::new(ring.ring(), usize::MAX).unwrap();
        for &(pos, word) in words {
            put_word(&ring, pos, word);
        }
        let mut buf = Vec::new();
        let mut taken = Vec::new();
        loop {
            match c.pop_message(&mut buf, || {}) {
                Ok(Taken::Message { attached }) => {
                    taken.push((buf.len(), attached));
                    buf.clear();
                }
                Ok(_) => return Ok(taken),
                Err(e) => return Err((e, taken)),
            }
        }
    };
    // Marker, a last piece of 8 bytes; then a plain message of 8 bytes.
    let marked = [
        (0, header_word(0, 0, 0)),
        (8, header_word(8, 8, FLAG_LAST)),
        (24, header_word(24, 8, FLAG_LAST)),
    ];
    assert_eq!(pop_all(&marked), Ok(vec![(8, true), (8, false)]));
    // Two markers.
    let twice = [(0, header_word(0, 0, 0)), (8, header_word(8, 0, 0))];
    assert!(matches!(pop_all(&twice), Err((RingError::Corrupted(_), _))));
    // A marker after the message's first bytes.
    let late = [(0, header_word(0, 8, 0)), (16, header_word(16, 0, 0))];
    assert!(matches!(pop_all(&late), Err((RingError::Corrupted(_), _))));
    // A marker again for the next message is fine.
    let again = [
        (0, header_word(0, 0, 0)),
        (8, header_word(8, 0, FLAG_LAST)),
        (16, header_word(16, 0, 0)),
        (24, header_word(24, 8, FLAG_LAST)),
    ];
    assert_eq!(pop_all(&again), Ok(vec![(0, true), (8, true)]));
}
