//! Ring drivers: a hostile producer against the real consumer, and the real producer and
//! consumer against a `VecDeque` model. Both use a 4 KiB heap ring (`ring::HeapRing`).

use std::collections::VecDeque;

use super::{pick_limit, Input, Watch};
use crate::ring::core::{Consumer, Pop, Producer, Push, RingError, FRAME_HEADER};
use crate::ring::HeapRing;
use crate::sync::Ordering::{Relaxed, SeqCst};

/// Data bytes of the fuzzed rings: the smallest capacity, so wrap-around is frequent.
const CAP: usize = 4096;

fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// Reads the frame header at `off` the way a peer sees it.
fn frame_at(ring: &HeapRing, off: usize) -> (u32, u32) {
    assert!(off + FRAME_HEADER <= CAP);
    let mut raw = [0u8; 8];
    // SAFETY: in bounds (asserted); single-threaded, so nobody writes meanwhile.
    unsafe { std::ptr::copy_nonoverlapping(ring.data_ptr().add(off), raw.as_mut_ptr(), 8) };
    let len = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let flags = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
    (len, flags)
}

/// Copies `bytes` into the data region at `off`, cut at its end, as a peer may.
fn poke(ring: &HeapRing, off: usize, bytes: &[u8]) {
    let off = off % CAP;
    let n = bytes.len().min(CAP - off);
    // SAFETY: `off + n <= CAP`; single-threaded, so the consumer is not reading meanwhile.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ring.data_ptr().add(off), n) };
}

/// A position a hostile producer might write: near the consumer's tail, or anything.
fn position(input: &mut Input<'_>, tail: u64) -> u64 {
    match input.u8() % 4 {
        0 => tail.wrapping_add(u64::from(input.u16() % (2 * CAP as u16)) & !7),
        1 => tail.wrapping_add(u64::from(input.u16())),
        2 => tail.wrapping_sub(u64::from(input.u16())),
        _ => input.u64(),
    }
}

/// The input plays a hostile producer over a 4 KiB ring: before the consumer attaches it may
/// write the positions, then it writes `head`, frame headers, payload bytes and the closed
/// flag in any order, changing them between the consumer's reads. The consumer must yield
/// pieces that are exactly a frame the ring held (length, flags and bytes), or `Empty`,
/// `Closed` (only with the flag set and nothing left), or an error that drops the ring —
/// never a panic, a piece over half the ring, a message over the limit, or memory beyond
/// twice what it delivered.
pub fn hostile_ring(data: &[u8]) {
    let mut input = Input::new(data);
    let limit = pick_limit(input.u8());
    let ring = HeapRing::new(CAP);
    let h = ring.header();
    if input.u8() & 1 != 0 {
        // Positions written before the consumer attached (the receiver reads `tail` once).
        let start = position(&mut input, 0);
        h.tail.store(start, Relaxed);
        h.head.store(start, Relaxed);
    }
    let mut consumer = match Consumer::new(ring.ring(), limit) {
        Ok(c) => c,
        Err(RingError::Corrupted(_)) => return,
        Err(e) => panic!("attaching can only fail as corrupted, not {e:?}"),
    };
    let watch = Watch::start();
    let mut out: Vec<u8> = Vec::new();
    let mut delivered = 0usize;
    let mut check_pop = |consumer: &mut Consumer| -> Result<Pop, RingError> {
        let before = out.len();
        let closed = h.producer_closed.load(Relaxed) != 0;
        let popped = consumer.try_pop(&mut out);
        match popped {
            Ok(Pop::Piece { last, .. }) => {
                let got = out.len() - before;
                delivered += got;
                assert!(out.len() <= limit, "{} bytes over {limit}", out.len());
                assert!(got <= CAP / 2, "a piece of {got} bytes");
                // The piece's frame ends where the consumer now stands.
                let end = consumer.consumed();
                let need = FRAME_HEADER + align8(got);
                let off = (end.wrapping_sub(need as u64) % CAP as u64) as usize;
                assert!(off + need <= CAP, "a piece across the end of the ring");
                assert_eq!(frame_at(&ring, off), (got as u32, u32::from(last)));
                let mut held = vec![0u8; got];
                // SAFETY: `off + 8 + got <= CAP` (asserted above); single-threaded.
                unsafe {
                    let src = ring.data_ptr().add(off + FRAME_HEADER);
                    std::ptr::copy_nonoverlapping(src, held.as_mut_ptr(), got);
                }
                assert_eq!(&out[before..], &held[..], "bytes that are not in the ring");
                if last {
                    out.clear();
                }
            }
            Ok(Pop::Empty { .. }) => assert_eq!(out.len(), before),
            Ok(Pop::Closed) => {
                assert!(closed, "Closed without the producer's flag");
                assert_eq!(out.len(), before);
            }
            Err(_) => assert_eq!(out.len(), before, "a refused piece was delivered"),
        }
        let bound = 2 * delivered.min(limit) + 64 + CAP;
        assert!(
            watch.peak() <= bound,
            "consumer holds {} > {bound}",
            watch.peak()
        );
        popped
    };
    while !input.is_empty() {
        let op = input.u8() % 8;
        match op {
            0 | 1 => {
                let tail = h.tail.load(Relaxed);
                h.head.store(position(&mut input, tail), Relaxed);
            }
            2 | 3 => {
                let at = usize::from(input.u16());
                let off = if op == 2 { at & !7 } else { at };
                let len = match input.u8() % 4 {
                    0 => u32::from(input.u8()),
                    1 => u32::from(input.u16() % CAP as u16),
                    _ => input.u32(),
                };
                let flags = match input.u8() % 5 {
                    f @ 0..=3 => u32::from(f),
                    _ => input.u32(),
                };
                let mut frame = [0u8; 8];
                frame[..4].copy_from_slice(&len.to_le_bytes());
                frame[4..].copy_from_slice(&flags.to_le_bytes());
                poke(&ring, off, &frame);
            }
            4 => {
                let off = usize::from(input.u16());
                let n = usize::from(input.u8());
                poke(&ring, off, input.bytes(n));
            }
            5 => h
                .producer_closed
                .store(u32::from(input.u8() % 3 != 0), Relaxed),
            _ => {
                if check_pop(&mut consumer).is_err() {
                    return; // the receiver drops this ring
                }
            }
        }
    }
    // Drain what is published: every piece takes at least 8 published bytes, so this ends.
    for _ in 0..CAP / FRAME_HEADER + 2 {
        match check_pop(&mut consumer) {
            Ok(Pop::Piece { .. }) => {}
            Ok(Pop::Empty { .. } | Pop::Closed) | Err(_) => return,
        }
    }
    panic!("the consumer keeps yielding pieces that were never published");
}

/// The model of an honest ring: pieces in flight with the ring bytes each takes.
struct Model {
    pieces: VecDeque<(Vec<u8>, bool, u64)>,
    messages: VecDeque<Vec<u8>>,
    building: Vec<u8>,
    head: u64,
    /// Bytes the consumer has consumed.
    tail: u64,
    /// Bytes it has handed back to the producer (the header's `tail`).
    released: u64,
    closed: bool,
}

impl Model {
    /// The documented rule for `Full`: a piece of `len` bytes takes `8 + align8(len)` bytes,
    /// plus the rest of the data region as padding when it does not fit before the end; it
    /// fits when that many bytes are free (`capacity - (head - tail)`, with the `tail` the
    /// consumer has handed back).
    fn room_for(&self, len: usize) -> Option<u64> {
        let need = (FRAME_HEADER + align8(len)) as u64;
        let contiguous = CAP as u64 - self.head % CAP as u64;
        let pad = if contiguous >= need { 0 } else { contiguous };
        (CAP as u64 - (self.head - self.released) >= pad + need).then_some(pad + need)
    }

    /// The documented rule for handing bytes back: once a batch of `min(capacity / 4,
    /// 4096)` consumed bytes has gathered (checked after a padding frame and after a piece),
    /// and whenever the consumer finds the ring empty.
    fn consume(&mut self, bytes: u64) {
        self.tail += bytes;
        if self.tail - self.released >= (CAP as u64 / 4).min(4096) {
            self.released = self.tail;
        }
    }
}

/// Pushes one piece through the real producer and the model; true when it was published.
fn push(p: &mut Producer, m: &mut Model, payload: &[u8], last: bool) -> bool {
    let room = m.room_for(payload.len());
    assert_eq!(p.has_room_for(payload.len()), Ok(room.is_some()), "room");
    match p
        .try_push(payload, last)
        .expect("an honest ring is never corrupted")
    {
        Push::Done { .. } => {
            let bytes = room.expect("published although the model has no room");
            m.pieces.push_back((payload.to_vec(), last, bytes));
            m.head += bytes;
            m.building.extend_from_slice(payload);
            if last {
                m.messages.push_back(std::mem::take(&mut m.building));
            }
            true
        }
        Push::Full => {
            assert!(room.is_none(), "Full although the model has room");
            false
        }
    }
}

/// Pops one piece and checks it, and the message it completes, against the model.
fn pop(c: &mut Consumer, m: &mut Model, ring: &HeapRing, buf: &mut Vec<u8>) -> Pop {
    let before = buf.len();
    let got = c.try_pop(buf).expect("an honest ring is never corrupted");
    match got {
        Pop::Piece { last, .. } => {
            let (payload, want_last, bytes) = m.pieces.pop_front().expect("a piece never pushed");
            assert_eq!(
                (&buf[before..], last),
                (&payload[..], want_last),
                "wrong piece"
            );
            let need = (FRAME_HEADER + align8(payload.len())) as u64;
            if bytes > need {
                m.consume(bytes - need);
            }
            m.consume(need);
            assert_eq!(ring.header().tail.load(Relaxed), m.released, "tail");
            if last {
                assert_eq!(
                    Some(&*buf),
                    m.messages.pop_front().as_ref(),
                    "wrong message"
                );
                buf.clear();
            }
        }
        Pop::Empty { .. } => {
            assert!(
                m.pieces.is_empty() && !m.closed,
                "Empty with pieces or closed"
            );
            m.released = m.tail;
            assert_eq!(ring.header().tail.load(Relaxed), m.released, "tail");
        }
        Pop::Closed => {
            assert!(m.pieces.is_empty() && m.closed, "Closed too early");
            m.released = m.tail;
            assert_eq!(ring.header().tail.load(Relaxed), m.released, "tail");
        }
    }
    got
}

/// An arbitrary sequence of push (one piece), push-large (a whole message in pieces, popping
/// when full), pop, close and wait announcements on a 4 KiB ring, starting at any position,
/// checked against a `VecDeque` model: the same pieces and messages in the same order, `Full`
/// exactly by the rule in `Model::room_for`, `Empty`/`Closed` exactly when the model is empty
/// (before/after close), and `Closed` for good after close and drain.
pub fn ring_ops(data: &[u8]) {
    let mut input = Input::new(data);
    let ring = HeapRing::new(CAP);
    let start = u64::from(input.u16()) * 8;
    ring.header().head.store(start, SeqCst);
    ring.header().tail.store(start, SeqCst);
    let mut p = Producer::new(ring.ring()).expect("a fresh ring");
    let mut c = Consumer::new(ring.ring(), usize::MAX).expect("a fresh ring");
    let max = p.max_piece();
    assert_eq!(max, CAP / 2 - FRAME_HEADER);
    let mut m = Model {
        pieces: VecDeque::new(),
        messages: VecDeque::new(),
        building: Vec::new(),
        head: start,
        tail: start,
        released: start,
        closed: false,
    };
    let (mut buf, mut seq) = (Vec::new(), 0u8);
    let mut fill = |len: usize| -> Vec<u8> {
        seq = seq.wrapping_add(1);
        (0..len)
            .map(|j| seq.wrapping_mul(31).wrapping_add(j as u8))
            .collect()
    };
    while !input.is_empty() {
        let op = input.u8();
        match op % 8 {
            0..=2 if !m.closed => {
                let len = match op >> 3 & 3 {
                    0 => usize::from(input.u8() % 16),
                    1 => usize::from(input.u8()),
                    2 => max - usize::from(input.u8() % 16).min(max),
                    _ => usize::from(input.u16()) % (max + 1),
                };
                // An empty piece must end its message (the consumer refuses one that does
                // not, and the shm sender never makes one); `try_push` does not check it.
                push(&mut p, &mut m, &fill(len), len == 0 || op & 0x80 != 0);
            }
            3 if !m.closed => {
                let msg = fill(usize::from(input.u16()) % (4 * CAP));
                let mut pieces: Vec<&[u8]> = msg.chunks(max).collect();
                if pieces.is_empty() {
                    pieces.push(&[]);
                }
                let n = pieces.len();
                for (i, piece) in pieces.into_iter().enumerate() {
                    while !push(&mut p, &mut m, piece, i + 1 == n) {
                        let unreleased = m.released != m.tail;
                        let popped = pop(&mut c, &mut m, &ring, &mut buf);
                        assert!(
                            matches!(popped, Pop::Piece { .. }) || unreleased,
                            "Full but nothing to pop or hand back"
                        );
                    }
                }
            }
            4 | 5 => {
                pop(&mut c, &mut m, &ring, &mut buf);
            }
            6 => {
                p.close();
                m.closed = true;
            }
            _ => {
                let idle = c.prepare_wait().expect("honest");
                let want = m.pieces.is_empty() && !m.closed && m.released == m.tail;
                assert_eq!(idle, want, "consumer wait");
                c.end_wait();
                let len = usize::from(input.u16()) % (max + 1);
                let sleep = p.prepare_wait(len).expect("honest");
                assert_eq!(sleep, m.room_for(len).is_none(), "producer wait");
                p.end_wait();
            }
        }
    }
    p.close();
    m.closed = true;
    while pop(&mut c, &mut m, &ring, &mut buf) != Pop::Closed {}
    assert!(m.messages.is_empty(), "messages lost");
    assert_eq!(
        pop(&mut c, &mut m, &ring, &mut buf),
        Pop::Closed,
        "Closed is for good"
    );
}
