//! The hostile-producer property driver `hostile_ring`: the input writes anything a peer can
//! into a 4 KiB heap ring (`ring::HeapRing`) and the real consumer's every result is checked
//! against what the frame format (see `fuzz_common.rs`) says the ring holds at its position.
//! Compiled for unit tests and under `--cfg fuzzing`, where the cargo-fuzz target
//! `hostile_ring` calls it through `conduit::fuzz`.

use super::core::{
    header_word, Consumer, Pop, RingError, FLAG_COMMIT, FLAG_LAST, FLAG_PAD, FRAME_HEADER,
};
use super::fuzz_common::{align8, assert_consumed, bytes_at, offset, word_at, CAP};
use super::HeapRing;
use crate::fuzz_support::{pick_limit, Input, Watch};
use crate::sync::Ordering::Relaxed;

/// A header word as a hostile producer may write it: any length, any stamp.
fn raw_word(len: u32, stamp: u32) -> u64 {
    u64::from(len) | u64::from(stamp) << 32
}

/// Copies `bytes` into the data region at `off`, cut at its end, as a peer may. A header word
/// goes in whole (all 8 bytes) when `off` is a multiple of 8; the ring reads it atomically,
/// but this driver is single-threaded, so a plain copy races with nothing.
fn poke(ring: &HeapRing, off: usize, bytes: &[u8]) {
    let off = off % CAP;
    let n = bytes.len().min(CAP - off);
    // SAFETY: `off + n <= CAP`; single-threaded, so the consumer is not reading meanwhile.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ring.data_ptr().add(off), n) };
}

/// Writes header word `word` at data offset `off` (cut at the end of the region).
fn put_word(ring: &HeapRing, off: usize, word: u64) {
    poke(ring, off, &word.to_le_bytes());
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

/// A frame position for a stamped header, a multiple of 8: the hostile producer's own
/// cursor, the consumer's position (the one stamp it accepts) or a few frames past it, a
/// whole number of laps off (the same offset, a stamp it must refuse), or anything.
fn frame_position(input: &mut Input<'_>, cursor: u64, tail: u64) -> u64 {
    let pos = match input.u8() % 5 {
        0 | 1 => cursor,
        2 => tail,
        3 => tail.wrapping_add(8 * u64::from(input.u8())),
        4 => {
            let laps = u64::from(input.u8());
            let lap = (CAP as u64).wrapping_mul((laps >> 1) + 1);
            if laps & 1 == 0 {
                tail.wrapping_add(lap)
            } else {
                tail.wrapping_sub(lap)
            }
        }
        _ => position(input, tail),
    };
    pos & !7
}

/// A frame length for a header at data offset `off`: small, up to the ring, exactly the
/// padding to the end of the region (right for `FLAG_PAD`), or anything.
fn frame_len(input: &mut Input<'_>, off: usize) -> u32 {
    match input.u8() % 5 {
        0 => u32::from(input.u8()),
        1 => u32::from(input.u16() % CAP as u16),
        2 => (CAP - off % CAP - FRAME_HEADER) as u32,
        3 => u32::from(input.u16()),
        _ => input.u32(),
    }
}

/// What the consumer must make of the header word at its position `pos`, by the rules of
/// `ring::core`'s module doc restated independently, with `so_far` bytes of the current
/// message already taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// No commit there: `Empty`, or `Closed` once the producer closed.
    Nothing,
    /// Valid padding: the consumer skips these bytes (to offset 0) and looks again.
    Pad(u64),
    /// A valid piece.
    Piece { len: usize, last: bool },
    /// A valid piece that takes the message to `at_least` bytes, over the limit.
    TooLarge { at_least: usize },
    /// Committed, but not something an honest producer writes at `pos`.
    Corrupt,
}

fn expect(word: u64, pos: u64, so_far: usize, marked: bool, limit: usize) -> Expect {
    let (len, stamp) = (word as u32 as usize, (word >> 32) as u32);
    if stamp & FLAG_COMMIT == 0 {
        return Expect::Nothing;
    }
    if stamp & !7 != pos as u32 {
        return Expect::Corrupt;
    }
    let off = offset(pos);
    let contiguous = CAP - off;
    let flags = stamp & (FLAG_LAST | FLAG_PAD);
    if flags == FLAG_PAD {
        // Padding only ever fills the rest of the region, and never starts at offset 0.
        return if off != 0 && len + FRAME_HEADER == contiguous {
            Expect::Pad(contiguous as u64)
        } else {
            Expect::Corrupt
        };
    }
    if flags == FLAG_PAD | FLAG_LAST {
        return Expect::Corrupt;
    }
    let last = flags == FLAG_LAST;
    // An empty piece that is not the last: the descriptors marker, only as the first frame
    // of a message.
    if len == 0 && !last && (so_far != 0 || marked) {
        return Expect::Corrupt;
    }
    if len > CAP / 2 || FRAME_HEADER + align8(len) > contiguous {
        return Expect::Corrupt;
    }
    if so_far + len > limit {
        return Expect::TooLarge {
            at_least: so_far + len,
        };
    }
    Expect::Piece { len, last }
}

/// How a `hostile_ring` run went, for the tests that check what the seeds reach.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Outcome {
    /// Pieces the consumer yielded.
    pieces: usize,
    /// Messages it completed.
    messages: usize,
    /// The last `try_pop` result: "piece", "empty", "closed", "corrupted", "too large".
    last: &'static str,
}

/// The input plays a hostile producer over a 4 KiB ring: before the consumer attaches it may
/// write the positions, then it writes header words (stamped for the consumer's position or
/// for others, committed or not, right or wrong lengths and flags), whole frames as an honest
/// producer lays them out (padding included, the next slot cleared or not), payload bytes,
/// the closed flag and the control block's other words (`head` above all, which the consumer
/// no longer reads), in any order, changing them between the consumer's reads. Every result
/// of the consumer is checked against what the ring holds where the frame format says the
/// consumer is (the driver follows its position from the start), read before it looks: a
/// piece exactly as the committed frame there (length, flags, bytes, and the position it
/// moves to), `Empty` only with nothing committed and the flag clear, `Closed` only with
/// nothing committed and the flag set, `TooLarge` only for a valid piece over the limit, and
/// `Corrupted` only for a committed word no honest producer writes — never a panic, a piece
/// over half the ring, a message over the limit, or memory beyond twice what it delivered.
pub fn hostile_ring(data: &[u8]) {
    hostile_run(data);
}

fn hostile_run(data: &[u8]) -> Outcome {
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
    // Where the consumer reads next: the header's `tail` when it attaches, then past each
    // padding and piece frame it takes.
    let mut tail = h.tail.load(Relaxed);
    let mut consumer = match Consumer::new(ring.ring(), limit) {
        Ok(c) => c,
        Err(RingError::Corrupted(_)) => return Outcome::default(),
        Err(e) => panic!("attaching can only fail as corrupted, not {e:?}"),
    };
    assert_consumed(
        &consumer,
        tail,
        "the consumer did not start at the header's tail",
    );
    let watch = Watch::start();
    let mut out: Vec<u8> = Vec::new();
    let mut delivered = 0usize;
    let mut outcome = Outcome::default();
    // Whether the message being taken opened with the descriptors marker.
    let mut marked = false;
    let mut check_pop = |consumer: &mut Consumer, tail: &mut u64| -> Result<Pop, RingError> {
        let marked = &mut marked;
        let before = out.len();
        let closed = h.producer_closed.load(Relaxed) != 0;
        // What the ring says the consumer must do, worked out before it looks: at most one
        // padding frame, then the word at offset 0 (where padding is refused).
        let mut at = *tail;
        let mut want = expect(word_at(&ring, offset(at)), at, before, *marked, limit);
        if let Expect::Pad(n) = want {
            at = at.wrapping_add(n);
            want = expect(word_at(&ring, offset(at)), at, before, *marked, limit);
        }
        let popped = consumer.try_pop(&mut out);
        match (&popped, want) {
            (
                &Ok(Pop::Piece { last, .. }),
                Expect::Piece {
                    len,
                    last: held_last,
                },
            ) => {
                let got = out.len() - before;
                assert_eq!((got, last), (len, held_last), "a piece unlike its header");
                assert!(got <= CAP / 2, "a piece of {got} bytes");
                assert!(out.len() <= limit, "{} bytes over {limit}", out.len());
                let need = FRAME_HEADER + align8(len);
                *tail = at.wrapping_add(need as u64);
                assert_consumed(
                    consumer,
                    *tail,
                    "the consumer did not move exactly past the frame",
                );
                let held = bytes_at(&ring, offset(at) + FRAME_HEADER, len);
                assert_eq!(&out[before..], &held[..], "bytes that are not in the ring");
                delivered += got;
                outcome.pieces += 1;
                outcome.last = "piece";
                if last {
                    outcome.messages += 1;
                    out.clear();
                    *marked = false;
                } else if len == 0 {
                    *marked = true;
                }
            }
            (Ok(Pop::Empty { .. }), Expect::Nothing) => {
                assert!(!closed, "Empty although the producer closed");
                outcome.last = "empty";
            }
            (Ok(Pop::Closed), Expect::Nothing) => {
                assert!(closed, "Closed without the producer's flag");
                outcome.last = "closed";
            }
            (Err(RingError::Corrupted(_)), Expect::Corrupt) => outcome.last = "corrupted",
            (
                &Err(RingError::TooLarge { at_least, limit: l }),
                Expect::TooLarge { at_least: n },
            ) => {
                assert_eq!((at_least, l), (n, limit), "the wrong size in TooLarge");
                outcome.last = "too large";
            }
            (got, want) => panic!(
                "the consumer returned {got:?} where the ring holds {want:?} at {at:#x} \
                 (word {:#018x})",
                word_at(&ring, offset(at))
            ),
        }
        if !matches!(popped, Ok(Pop::Piece { .. })) {
            assert_eq!(out.len(), before, "bytes delivered without a piece");
            if popped.is_ok() {
                *tail = at;
                assert_consumed(consumer, at, "moved without taking a frame");
            }
        }
        let bound = 2 * delivered.min(limit) + 64 + CAP;
        assert!(
            watch.peak() <= bound,
            "consumer holds {} > {bound}",
            watch.peak()
        );
        popped
    };
    // Where this producer lays its next whole frame (op 3), as an honest one would.
    let mut cursor = tail;
    while !input.is_empty() {
        let op = input.u8() % 10;
        match op {
            0 => {
                // The control block's other words: none may change what the consumer returns
                // (the checks in `check_pop` do not look at them).
                let v = position(&mut input, h.tail.load(Relaxed));
                match input.u8() % 5 {
                    0 | 1 => h.head.store(v, Relaxed),
                    2 => h.tail.store(v, Relaxed),
                    3 => h.producer_waiting.store(v as u32 & 1, Relaxed),
                    _ => h.consumer_waiting.store(v as u32 & 1, Relaxed),
                }
            }
            1 => {
                // A header word stamped for a frame position (the consumer's or another),
                // any flags, the commit bit set or not.
                let pos = frame_position(&mut input, cursor, tail);
                let flags = u32::from(input.u8() & 7) ^ FLAG_COMMIT;
                let len = frame_len(&mut input, offset(pos));
                put_word(&ring, offset(pos), raw_word(len, pos as u32 | flags));
            }
            2 => {
                // Any word at any offset, aligned or not, cut at the end of the region.
                let at = usize::from(input.u16());
                let off = if at & 0x8000 != 0 { at & !7 } else { at };
                let len = frame_len(&mut input, off & !7);
                let stamp = match input.u8() % 3 {
                    0 => u32::from(input.u8()),
                    _ => input.u32(),
                };
                put_word(&ring, off, raw_word(len, stamp));
            }
            3 => {
                // A whole frame laid out as an honest producer does (padding first when it
                // does not fit before the end), at the cursor or elsewhere; then the cursor
                // moves past it. Control bits leave out the cleared next slot or the padding
                // header, or make the piece not the last.
                let at = frame_position(&mut input, cursor, tail);
                let ctl = input.u8();
                let len = match ctl >> 4 & 3 {
                    0 => usize::from(input.u8() % 64),
                    1 => usize::from(input.u8()),
                    2 => usize::from(input.u16()) % (CAP / 2 - FRAME_HEADER + 1),
                    _ => usize::from(input.u16()) % CAP,
                };
                let last = ctl & 1 == 0;
                let need = FRAME_HEADER + align8(len);
                let contiguous = CAP - offset(at);
                let pad = if contiguous >= need { 0 } else { contiguous };
                let pos = at.wrapping_add(pad as u64);
                poke(&ring, offset(pos) + FRAME_HEADER, input.bytes(len));
                let next = pos.wrapping_add(need as u64);
                if ctl & 2 == 0 {
                    put_word(&ring, offset(next), 0);
                }
                let flags = if last { FLAG_LAST } else { 0 };
                put_word(&ring, offset(pos), header_word(pos, len as u32, flags));
                if pad != 0 && ctl & 4 == 0 {
                    let pad_len = (pad - FRAME_HEADER) as u32;
                    put_word(&ring, offset(at), header_word(at, pad_len, FLAG_PAD));
                }
                cursor = next;
            }
            4 => {
                let off = usize::from(input.u16());
                let n = usize::from(input.u8());
                poke(&ring, off, input.bytes(n));
            }
            5 => h
                .producer_closed
                .store(u32::from(input.u8() % 3 != 0), Relaxed),
            6 => {
                // A sleep announcement: it may say "sleep" only with nothing committed at
                // the consumer's position and the producer not closed.
                let at = tail;
                let word = word_at(&ring, offset(at));
                let closed = h.producer_closed.load(Relaxed) != 0;
                match consumer.prepare_wait() {
                    Ok(idle) => {
                        let nothing = expect(word, at, 0, false, usize::MAX) == Expect::Nothing;
                        assert!(!idle || (nothing && !closed), "sleeps on {word:#018x}");
                        consumer.end_wait();
                    }
                    Err(RingError::Corrupted(_)) => {
                        let stamp = (word >> 32) as u32;
                        assert!(
                            stamp & FLAG_COMMIT != 0 && stamp & !7 != at as u32,
                            "prepare_wait refused {word:#018x} at {at:#x}"
                        );
                        return outcome; // the receiver drops this ring
                    }
                    Err(e) => panic!("prepare_wait can only fail as corrupted, not {e:?}"),
                }
            }
            _ => {
                if check_pop(&mut consumer, &mut tail).is_err() {
                    return outcome; // the receiver drops this ring
                }
            }
        }
    }
    // Drain what is committed. Every piece takes at least 8 bytes, and after a whole lap the
    // consumer's position no longer matches the stamps the ring holds, so this ends.
    for _ in 0..CAP / FRAME_HEADER + 2 {
        match check_pop(&mut consumer, &mut tail) {
            Ok(Pop::Piece { .. }) => {}
            Ok(Pop::Empty { .. } | Pop::Closed) | Err(_) => return outcome,
        }
    }
    panic!("the consumer keeps yielding pieces that were never published");
}

/// The driver over its seeds (each must reach what its name says) and over pseudo-random
/// inputs; `fuzz_replay.rs` runs it over the committed regressions. Without the counting
/// allocator, so the memory bounds are not checked here.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz_support::{inputs, random_inputs};

    /// The seeds reach what their names say (so the fuzzer starts from real traffic).
    #[test]
    fn hostile_ring_seeds() {
        let seeds = inputs("corpus/hostile_ring", "seed-");
        assert!(!seeds.is_empty(), "no hostile_ring seeds");
        let want = |name: &str| -> (usize, &'static str) {
            match name {
                "seed-one-frame" => (1, "closed"),
                "seed-pad-then-frame" => (1, "empty"),
                "seed-wrap-start" => (2, "closed"),
                "seed-pieces-over-limit" => (1, "too large"),
                "seed-stale-lap" => (1, "corrupted"),
                "seed-uncommitted-then-head" => (1, "empty"),
                _ => panic!("a seed this test does not know: {name}"),
            }
        };
        for (path, data) in seeds {
            let name = path.rsplit('/').next().unwrap();
            let outcome = hostile_run(&data);
            assert_eq!(
                (outcome.messages, outcome.last),
                want(name),
                "{path}: {outcome:?}"
            );
        }
    }

    #[test]
    fn hostile_ring_random_inputs() {
        for data in random_inputs(0x5eed, 20_000, 400) {
            hostile_ring(&data);
        }
    }
}
