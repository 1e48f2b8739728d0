//! The property driver `frame_decode` for the stream framing in `frame.rs`: a stream fed to
//! [`FrameReader`] in chunks of any size must mean what a one-go reference parse says it
//! means, within bounded memory. Compiled for unit tests and under `--cfg fuzzing`, where the
//! cargo-fuzz target `frame_decode` calls it through `conduit::fuzz`.

use crate::frame::{FrameError, FrameReader, FLAG_ATTACHED, FLAG_LAST, HEADER, PIECE_MAX};
use crate::fuzz_support::{pick_limit, Input, Rng, Watch};

/// What a whole stream means, parsed in one go by the simplest reading of the framing rules:
/// the messages (each with whether its first piece carried `FLAG_ATTACHED`), the error that
/// ends it (if any) and whether an incomplete message is left.
#[allow(clippy::type_complexity)]
fn reference_frames(
    stream: &[u8],
    limit: usize,
) -> (Vec<(Vec<u8>, bool)>, Option<FrameError>, bool) {
    let (mut msgs, mut partial, mut pos) = (Vec::new(), Vec::new(), 0);
    let mut attached = false;
    let err = loop {
        let rest = &stream[pos..];
        if rest.len() < HEADER {
            break None;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let flags = rest[4];
        if flags & !(FLAG_LAST | FLAG_ATTACHED) != 0 {
            break Some(FrameError::UnknownFlags(flags));
        }
        // `FLAG_ATTACHED` only on a message's first piece.
        let opens = flags & FLAG_ATTACHED != 0;
        if opens && (!partial.is_empty() || attached) {
            break Some(FrameError::UnknownFlags(flags));
        }
        if len as usize > PIECE_MAX {
            break Some(FrameError::PieceTooLong(len));
        }
        let (len, last) = (len as usize, flags & FLAG_LAST != 0);
        if len == 0 && !last {
            break Some(FrameError::EmptyPiece);
        }
        let total = partial.len() + len;
        if total > limit {
            break Some(FrameError::TooLarge {
                at_least: total,
                limit,
            });
        }
        if rest.len() < HEADER + len {
            break None;
        }
        partial.extend_from_slice(&rest[HEADER..HEADER + len]);
        pos += HEADER + len;
        attached |= opens;
        if last {
            msgs.push((std::mem::take(&mut partial), std::mem::take(&mut attached)));
        }
    };
    (msgs, err, pos < stream.len() || !partial.is_empty())
}

/// Feeds `data` to a [`FrameReader`] in chunks whose sizes derive from the input, as a
/// socket would deliver them. Checks: the messages and the final error equal those of a
/// one-go reference parse (so the split points change nothing); no message exceeds the
/// limit; the reader holds at most its fixed buffer, one piece reserved ahead, and twice the
/// bytes it was given (and twice the limit), however the lengths lie. Bytes go where the
/// reader asks: its buffer, or straight into a large piece's assembly (`direct`).
pub fn frame_decode(data: &[u8]) {
    let mut input = Input::new(data);
    let limit = pick_limit(input.u8());
    let mut rng = Rng::new(u64::from(input.u32()));
    let stream = input.bytes(usize::MAX);

    let (want_msgs, want_err, want_mid) = reference_frames(stream, limit);
    let mut expected = want_msgs.iter();
    let watch = Watch::start();
    let mut reader = FrameReader::new(limit);
    let buf_size = 2 * (HEADER + PIECE_MAX);
    let mut pos = 0;
    let err = 'feed: loop {
        loop {
            match reader.next_message() {
                Ok(Some((m, attached))) => {
                    assert!(m.len() <= limit, "a message of {} over {limit}", m.len());
                    let (want, want_attached) =
                        expected.next().expect("the reader made up a message");
                    assert_eq!(
                        m,
                        &want[..],
                        "the reader's message differs from the stream's"
                    );
                    assert_eq!(attached, *want_attached, "the attached flag differs");
                }
                Ok(None) => break,
                Err(e) => break 'feed Some(e),
            }
        }
        let bound = buf_size + PIECE_MAX + 2 * pos.min(limit) + 64;
        assert!(
            watch.peak() <= bound,
            "reader holds {} > {bound}",
            watch.peak()
        );
        if pos == stream.len() {
            break None;
        }
        let r = rng.next();
        let want = match r % 4 {
            0 => 1 + (r >> 8) as usize % 8,
            1 => 1 + (r >> 8) as usize % 300,
            2 => 1 + (r >> 8) as usize % 70_000,
            _ => usize::MAX,
        };
        if let Some((assembly, max)) = reader.direct() {
            assert!(max > 0, "direct() must never ask for nothing");
            let n = want.min(max).min(stream.len() - pos);
            assembly.extend_from_slice(&stream[pos..pos + n]);
            reader.appended(n);
            pos += n;
            continue;
        }
        let spare = reader.spare();
        assert!(!spare.is_empty(), "spare() must never be empty");
        let n = want.min(spare.len()).min(stream.len() - pos);
        spare[..n].copy_from_slice(&stream[pos..pos + n]);
        reader.filled(n);
        pos += n;
    };
    assert_eq!(
        err, want_err,
        "the error depends on where the stream was split"
    );
    assert!(expected.next().is_none(), "the reader missed messages");
    if err.is_none() {
        assert_eq!(reader.mid_message(), want_mid, "mid_message() is wrong");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::header;
    use crate::fuzz_support::random_inputs;

    #[test]
    fn frame_decode_random_inputs() {
        for data in random_inputs(0xf4a3e, 3_000, 300) {
            frame_decode(&data);
        }
    }

    /// Well-formed streams (pieces, messages split at random points, a bad header at the
    /// end or not), which random bytes almost never are.
    #[test]
    fn frame_decode_well_formed_streams() {
        let mut rng = Rng::new(0x57ea);
        for _ in 0..300 {
            let mut data = vec![rng.next() as u8];
            data.extend_from_slice(&(rng.next() as u32).to_le_bytes());
            for _ in 0..rng.next() % 6 {
                let pieces = 1 + rng.next() % 3;
                for i in 0..pieces {
                    let len = match rng.next() % 4 {
                        0 => 0,
                        1 => rng.next() as usize % 16,
                        2 => rng.next() as usize % 5000,
                        _ => PIECE_MAX - rng.next() as usize % 3,
                    };
                    let last = i + 1 == pieces || len == 0;
                    let mut h = header(len, last);
                    if i == 0 && rng.next() % 3 == 0 {
                        h[HEADER - 1] |= FLAG_ATTACHED;
                    }
                    data.extend_from_slice(&h);
                    data.extend((0..len).map(|j| j as u8 ^ i as u8));
                    if last {
                        break;
                    }
                }
            }
            if rng.next() % 4 == 0 {
                data.extend_from_slice(&[0xff; HEADER]);
            }
            frame_decode(&data);
        }
    }
}
