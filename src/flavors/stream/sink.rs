//! Writing a large message from the caller's value: the encoder's output goes to the socket
//! as it is produced, with no copy of its long byte strings on the sending side.
//!
//! A message whose encoding outgrows the sender's buffer is measured first (a walk of the
//! value that copies nothing, so the size limit is checked before any byte is written), then
//! encoded again into [`StreamSink`]. Short runs of bytes (varints, fields, short strings)
//! are copied into a buffer. A long run (a `Bytes` or `serde_bytes` field of at least
//! [`RUN_FROM`] bytes) is written at once, with one vectored write of the piece headers, the
//! buffered bytes and the run itself, straight from the caller's value: the kernel's copy is
//! the only one. The pieces written then are never the last (the encoder may produce more),
//! so the buffered rest goes out as the last piece, possibly empty, once the encoder has
//! returned: a value whose encoding changes length between the walks is still sent whole,
//! and one whose `Serialize` fails half-way never finishes its message (the connection is
//! then done, since the receiver can only drop a partial message when the stream ends).
//!
//! A deadline that passes once part of the message is out commits it: what was not written
//! of the pieces in hand, and the rest of the encoding framed as it comes, go to a spill
//! buffer the caller keeps as the message's tail.

use std::io::IoSlice;
use std::os::fd::BorrowedFd;

use super::write::write_slices;
use crate::codec::{Sink, SinkStop};
use crate::flavors::{Deadline, NotSent};
use crate::frame::{self, HEADER, PIECE_MAX};
use crate::sys::StreamKind;
use crate::SendFailure;

/// Runs of at least this many bytes are written from the caller's value instead of being
/// copied into the buffer. Below it a copy costs less than the system call it saves.
pub(super) const RUN_FROM: usize = 16 << 10;

/// The buffer is written out (as pieces that are not the last) once it holds this much, so
/// a message of many short runs does not sit whole in memory.
const FLUSH_AT: usize = 4 * PIECE_MAX;

/// How a streamed message ended, when it did not fail.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Streamed {
    /// Every byte is written.
    Whole,
    /// Part of it is written; the rest, framed, is in the spill buffer: the message is
    /// committed and that rest must go before anything else.
    Spilled,
}

/// An encoder's output to a stream, piece by piece (see the module docs).
pub(super) struct StreamSink<'a> {
    fd: BorrowedFd<'a>,
    kind: StreamKind,
    deadline: Deadline,
    limit: usize,
    /// Encoded bytes not yet framed: short runs since the last write.
    buf: &'a mut Vec<u8>,
    headers: &'a mut Vec<[u8; HEADER]>,
    /// Bytes of the encoding taken so far.
    taken: usize,
    /// Bytes of the message (headers included) written so far: once any is, the message is
    /// committed.
    written: usize,
    /// Once the deadline passed with part of the message written: the framed bytes not
    /// written, then the rest of the encoding, framed at the end.
    spill: &'a mut Vec<u8>,
    spilling: bool,
    /// Why the sink stopped the encoder.
    failure: Option<NotSent>,
}

impl<'a> StreamSink<'a> {
    /// A sink writing to `fd` until `deadline`; `buf`, `headers` and `spill` are reused
    /// buffers (cleared here).
    pub(super) fn new(
        fd: BorrowedFd<'a>,
        kind: StreamKind,
        deadline: Deadline,
        limit: usize,
        buf: &'a mut Vec<u8>,
        headers: &'a mut Vec<[u8; HEADER]>,
        spill: &'a mut Vec<u8>,
    ) -> Self {
        buf.clear();
        spill.clear();
        StreamSink {
            fd,
            kind,
            deadline,
            limit,
            buf,
            headers,
            taken: 0,
            written: 0,
            spill,
            spilling: false,
            failure: None,
        }
    }

    /// After the encoder returned: writes the last piece if it finished. Returns the bytes
    /// written and how the message ended, or why it failed (with nothing written, the
    /// message was not sent and the stream is as it was; with something written, the
    /// stream is torn and must end).
    pub(super) fn finish(
        mut self,
        encoded: Result<(), SinkStop>,
    ) -> (usize, Result<Streamed, NotSent>) {
        if let Some(failure) = self.failure.take() {
            return (self.written, Err(failure));
        }
        if let Err(stop) = encoded {
            let reason = match stop {
                SinkStop::Failed(reason) => reason,
                SinkStop::Stopped => unreachable!("the sink stops only with a failure"),
            };
            return (self.written, Err(NotSent::encode(reason)));
        }
        if !self.spilling && !self.write(&[], true) {
            let failure = self.failure.take().expect("a failed write says why");
            return (self.written, Err(failure));
        }
        if self.spilling {
            frame_into(self.spill, [&self.buf[..], &[]], true);
            return (self.written, Ok(Streamed::Spilled));
        }
        (self.written, Ok(Streamed::Whole))
    }

    /// Frames the buffered bytes and `run` as pieces (the last one flagged when `last`) and
    /// writes them in one vectored write, waiting for room until the deadline. False when
    /// the sink must stop the encoder (`failure` says why).
    fn write(&mut self, run: &[u8], last: bool) -> bool {
        let (n, result) = write_pieces(
            self.fd,
            self.kind,
            self.deadline,
            self.headers,
            [&self.buf[..], run],
            last,
            self.spill,
        );
        self.written += n;
        self.buf.clear();
        match result {
            Ok(()) => true,
            // Committed: the unwritten part is in the spill buffer; so goes the rest.
            Err(NotSent::Full | NotSent::Timeout) if self.written > 0 => {
                self.spilling = true;
                true
            }
            Err(failure) => {
                self.failure = Some(failure);
                false
            }
        }
    }
}

impl Sink for StreamSink<'_> {
    fn put(&mut self, bytes: &[u8]) -> bool {
        self.taken += bytes.len();
        if self.taken > self.limit {
            // Measured within the limit, but this walk produced more.
            self.failure = Some(NotSent::Failed(SendFailure::TooLarge {
                size: self.taken,
                limit: self.limit,
            }));
            return false;
        }
        if self.spilling || bytes.len() < RUN_FROM {
            self.buf.extend_from_slice(bytes);
            if self.buf.len() >= FLUSH_AT && !self.spilling {
                return self.write(&[], false);
            }
            return true;
        }
        self.write(bytes, false)
    }
}

/// The pieces' headers for `total` bytes of payload: pieces of `PIECE_MAX` bytes and a
/// shorter one at the end, the last flagged when `last` (an empty payload is one empty
/// piece then, and no piece otherwise).
fn piece_headers(headers: &mut Vec<[u8; HEADER]>, total: usize, last: bool) {
    headers.clear();
    let pieces = total.div_ceil(PIECE_MAX).max(usize::from(last));
    headers.extend((0..pieces).map(|i| {
        let len = (total - i * PIECE_MAX).min(PIECE_MAX);
        frame::header(len, last && i + 1 == pieces)
    }));
}

/// The payload bytes `parts` (in order) cut into pieces of the lengths `headers` give, as
/// slices: each header, then its piece's bytes (one slice, or two where a piece spans both
/// parts).
fn piece_slices<'b>(headers: &'b [[u8; HEADER]], parts: [&'b [u8]; 2]) -> Vec<IoSlice<'b>> {
    let mut slices = Vec::with_capacity(3 * headers.len());
    let [mut first, mut second] = parts;
    for h in headers {
        slices.push(IoSlice::new(h));
        let mut want = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        for part in [&mut first, &mut second] {
            let n = want.min(part.len());
            if n > 0 {
                slices.push(IoSlice::new(&part[..n]));
                *part = &part[n..];
                want -= n;
            }
        }
    }
    slices
}

/// Frames `parts` and appends the framed bytes to `out`.
fn frame_into(out: &mut Vec<u8>, parts: [&[u8]; 2], last: bool) {
    let mut headers = Vec::new();
    piece_headers(&mut headers, parts[0].len() + parts[1].len(), last);
    for slice in piece_slices(&headers, parts) {
        out.extend_from_slice(&slice);
    }
}

/// Frames `parts` as pieces and writes them, waiting for room until `deadline`: how many
/// bytes were written, and whether all were. Out of time (`Full` or `Timeout`), the bytes
/// not written are appended to `unwritten`.
pub(super) fn write_pieces(
    fd: BorrowedFd<'_>,
    kind: StreamKind,
    deadline: Deadline,
    headers: &mut Vec<[u8; HEADER]>,
    parts: [&[u8]; 2],
    last: bool,
    unwritten: &mut Vec<u8>,
) -> (usize, Result<(), NotSent>) {
    piece_headers(headers, parts[0].len() + parts[1].len(), last);
    let mut slices = piece_slices(headers, parts);
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let mut rest = &mut slices[..];
    let result = write_slices(fd, kind, &mut rest, deadline);
    let left: usize = rest.iter().map(|s| s.len()).sum();
    if let Err(NotSent::Full | NotSent::Timeout) = result {
        for slice in rest.iter() {
            unwritten.extend_from_slice(slice);
        }
    }
    (total - left, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameReader;

    /// Framing any split of the payload into two parts gives pieces the reader takes back
    /// as the one message, with no piece over `PIECE_MAX` and only the end flagged last.
    #[test]
    fn pieces_of_two_parts_reassemble() {
        let payload: Vec<u8> = (0..3 * PIECE_MAX + 17).map(|i| (i % 253) as u8).collect();
        for len in [0, 1, PIECE_MAX - 1, PIECE_MAX, PIECE_MAX + 1, payload.len()] {
            for cut in [0, 1.min(len), len / 2, len.saturating_sub(1), len] {
                let (a, b) = payload[..len].split_at(cut);
                let mut framed = Vec::new();
                frame_into(&mut framed, [a, b], false);
                frame_into(&mut framed, [&[], &[]], true);
                let mut reader = FrameReader::new(usize::MAX);
                let mut at = 0;
                let mut got = None;
                while at < framed.len() && got.is_none() {
                    if let Some((assembly, max)) = reader.direct() {
                        let n = max.min(framed.len() - at);
                        assembly.extend_from_slice(&framed[at..at + n]);
                        reader.appended(n);
                        at += n;
                    } else {
                        let spare = reader.spare();
                        let n = spare.len().min(framed.len() - at);
                        spare[..n].copy_from_slice(&framed[at..at + n]);
                        reader.filled(n);
                        at += n;
                    }
                    if let Some((m, _)) = reader.next_message().expect("valid framing") {
                        got = Some(m.to_vec());
                    }
                }
                assert_eq!(
                    got.as_deref(),
                    Some(&payload[..len]),
                    "len {len}, cut {cut}"
                );
                assert_eq!(at, framed.len(), "nothing after the last piece");
            }
        }
    }

    #[test]
    fn headers_cut_at_piece_max_and_flag_only_the_end() {
        let mut headers = Vec::new();
        piece_headers(&mut headers, 2 * PIECE_MAX + 3, true);
        assert_eq!(
            headers,
            [
                frame::header(PIECE_MAX, false),
                frame::header(PIECE_MAX, false),
                frame::header(3, true)
            ]
        );
        piece_headers(&mut headers, 0, true);
        assert_eq!(headers, [frame::header(0, true)]);
        piece_headers(&mut headers, 0, false);
        assert!(headers.is_empty(), "no empty piece that is not the last");
    }
}
