//! The model property driver `ring_ops`: the real producer and consumer over a 4 KiB heap
//! ring (`ring::HeapRing`), checked step by step against a `VecDeque` model of an honest ring
//! and against the frame format (see `fuzz_common.rs`) in the ring memory. Compiled for unit
//! tests and under `--cfg fuzzing`, where the cargo-fuzz target `ring_ops` calls it through
//! `conduit::fuzz`.

use std::collections::VecDeque;

use super::core::{header_word, Consumer, Pop, Producer, Push, FLAG_LAST, FLAG_PAD, FRAME_HEADER};
use super::fuzz_common::{align8, assert_consumed, bytes_at, offset, word_at, CAP};
use super::HeapRing;
use crate::fuzz_support::Input;
use crate::sync::Ordering::{Relaxed, SeqCst};

/// The model of an honest ring: pieces in flight with their position and the ring bytes
/// each takes.
struct Model {
    pieces: VecDeque<ModelPiece>,
    messages: VecDeque<Vec<u8>>,
    building: Vec<u8>,
    head: u64,
    /// Bytes the consumer has consumed, and handed back to the producer (the header's
    /// `tail`, stored after every frame).
    tail: u64,
    /// `tail` when the consumer last checked for a sleeping producer.
    checked: u64,
    closed: bool,
}

struct ModelPiece {
    payload: Vec<u8>,
    last: bool,
    /// Where its padding (if any) starts: the producer's head before the push.
    start: u64,
    /// Padding and frame bytes.
    bytes: u64,
}

impl ModelPiece {
    /// The frame's own bytes: header and payload rounded up to 8.
    fn need(&self) -> u64 {
        (FRAME_HEADER + align8(self.payload.len())) as u64
    }
    /// The padding before it (0 or the rest of the region).
    fn pad(&self) -> u64 {
        self.bytes - self.need()
    }
    /// The frame's position.
    fn pos(&self) -> u64 {
        self.start.wrapping_add(self.pad())
    }
}

impl Model {
    /// The documented rule for `Full`: a piece of `len` bytes takes `8 + align8(len)` bytes,
    /// plus the rest of the data region as padding when it does not fit before the end; it
    /// fits when that many bytes and the 8 of the next header slot (which the producer
    /// clears and keeps free) are free (`capacity - (head - tail)`, with the `tail` the
    /// consumer has handed back). Returns the bytes it takes (padding and frame).
    fn room_for(&self, len: usize) -> Option<u64> {
        let need = (FRAME_HEADER + align8(len)) as u64;
        let contiguous = CAP as u64 - self.head % CAP as u64;
        let pad = if contiguous >= need { 0 } else { contiguous };
        let free = CAP as u64 - self.head.wrapping_sub(self.tail);
        (pad + need + FRAME_HEADER as u64 <= free).then_some(pad + need)
    }

    /// The documented rules: consumed bytes are handed back at once; the consumer checks
    /// for a sleeping producer once a batch of `min(capacity / 4, 4096)` bytes has gathered
    /// since its last check (after a padding frame and after a piece), and whenever it finds
    /// the ring empty. (The producer never waits while this driver pops.)
    fn consume(&mut self, bytes: u64) {
        self.tail = self.tail.wrapping_add(bytes);
        if self.tail.wrapping_sub(self.checked) >= (CAP as u64 / 4).min(4096) {
            self.checked = self.tail;
        }
    }
}

/// Checks the ring memory against the model where the consumer reads next: the front piece
/// in flight is committed as the producer writes it (its padding header, then its frame
/// header and payload), or, with none in flight, the slot at the consumer's position (the
/// producer's head) is clear. Checked before every pop, and for each piece as it is pushed
/// (in `push`), so a piece the producer clobbers between the two is caught too.
fn check_front(ring: &HeapRing, m: &Model) {
    match m.pieces.front() {
        Some(piece) => check_piece(ring, piece),
        None => check_clear(ring, m.tail),
    }
}

/// The words and payload of `piece` in the ring.
fn check_piece(ring: &HeapRing, piece: &ModelPiece) {
    let pos = piece.pos();
    if piece.pad() != 0 {
        let pad_len = (piece.pad() - FRAME_HEADER as u64) as u32;
        assert_eq!(
            word_at(ring, offset(piece.start)),
            header_word(piece.start, pad_len, FLAG_PAD),
            "padding header at {:#x}",
            piece.start
        );
    }
    let flags = if piece.last { FLAG_LAST } else { 0 };
    let len = piece.payload.len();
    assert_eq!(
        word_at(ring, offset(pos)),
        header_word(pos, len as u32, flags),
        "frame header at {pos:#x}"
    );
    assert_eq!(
        bytes_at(ring, offset(pos) + FRAME_HEADER, len),
        piece.payload,
        "payload at {pos:#x}"
    );
}

/// The header slot at `pos` reads as "nothing committed yet" (all zero, as the producer
/// clears it).
fn check_clear(ring: &HeapRing, pos: u64) {
    assert_eq!(
        word_at(ring, offset(pos)),
        0,
        "the next header slot at {pos:#x} is not clear"
    );
}

/// Pushes one piece through the real producer and the model; true when it was published.
fn push(p: &mut Producer, m: &mut Model, ring: &HeapRing, payload: &[u8], last: bool) -> bool {
    let room = m.room_for(payload.len());
    assert_eq!(p.has_room_for(payload.len()), Ok(room.is_some()), "room");
    match p
        .try_push(payload, last)
        .expect("an honest ring is never corrupted")
    {
        Push::Done { .. } => {
            let bytes = room.expect("published although the model has no room");
            m.pieces.push_back(ModelPiece {
                payload: payload.to_vec(),
                last,
                start: m.head,
                bytes,
            });
            m.head = m.head.wrapping_add(bytes);
            assert_eq!(ring.header().head.load(Relaxed), m.head, "head");
            m.building.extend_from_slice(payload);
            if last {
                m.messages.push_back(std::mem::take(&mut m.building));
            }
            check_piece(ring, m.pieces.back().expect("just pushed"));
            check_clear(ring, m.head);
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
    check_front(ring, m);
    let before = buf.len();
    let got = c.try_pop(buf).expect("an honest ring is never corrupted");
    match got {
        Pop::Piece { last, .. } => {
            let piece = m.pieces.pop_front().expect("a piece never pushed");
            assert_eq!(
                (&buf[before..], last),
                (&piece.payload[..], piece.last),
                "wrong piece"
            );
            if piece.pad() != 0 {
                m.consume(piece.pad());
            }
            m.consume(piece.need());
            assert_eq!(ring.header().tail.load(Relaxed), m.tail, "tail");
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
            m.checked = m.tail;
            assert_eq!(ring.header().tail.load(Relaxed), m.tail, "tail");
        }
        Pop::Closed => {
            assert!(m.pieces.is_empty() && m.closed, "Closed too early");
            m.checked = m.tail;
            assert_eq!(ring.header().tail.load(Relaxed), m.tail, "tail");
        }
    }
    assert_consumed(c, m.tail, "consumed");
    got
}

/// An arbitrary sequence of push (one piece), push-large (a whole message in pieces, popping
/// when full), pop, close and wait announcements on a 4 KiB ring, starting at any position
/// (a multiple of 8 within 256 KiB either side of zero, so positions and stamps wrap),
/// checked against a `VecDeque` model: the same pieces and messages in the same order, `Full`
/// exactly by the rule in `Model::room_for`, `Empty`/`Closed` exactly when the model is empty
/// (before/after close), `Closed` for good after close and drain, and the ring memory as the
/// frame format says (`check_front`).
pub fn ring_ops(data: &[u8]) {
    let mut input = Input::new(data);
    let ring = HeapRing::new(CAP);
    // A multiple of CAP below zero: the seeds' offsets in the region stay what they were.
    let start = (u64::from(input.u16()) * 8).wrapping_sub(1 << 18);
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
        checked: start,
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
                let last = len == 0 || op & 0x80 != 0;
                push(&mut p, &mut m, &ring, &fill(len), last);
            }
            3 if !m.closed => {
                let msg = fill(usize::from(input.u16()) % (4 * CAP));
                let mut pieces: Vec<&[u8]> = msg.chunks(max).collect();
                if pieces.is_empty() {
                    pieces.push(&[]);
                }
                let n = pieces.len();
                for (i, piece) in pieces.into_iter().enumerate() {
                    while !push(&mut p, &mut m, &ring, piece, i + 1 == n) {
                        let popped = pop(&mut c, &mut m, &ring, &mut buf);
                        assert!(
                            matches!(popped, Pop::Piece { .. }),
                            "Full but nothing to pop"
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
                let want = m.pieces.is_empty() && !m.closed && m.checked == m.tail;
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

/// The driver over pseudo-random inputs; `fuzz_replay.rs` runs it over the committed seeds
/// and regressions.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz_support::random_inputs;

    #[test]
    fn ring_ops_random_inputs() {
        for data in random_inputs(0x0b5, 5_000, 200) {
            ring_ops(&data);
        }
    }
}
