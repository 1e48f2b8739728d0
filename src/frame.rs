//! Stream framing: `len: u32 LE | flags: u8 | payload`, messages split into pieces of at
//! most [`PIECE_MAX`] bytes, the last piece flagged [`FLAG_LAST`].
//!
//! [`FrameReader`] is pure logic over a byte buffer (no I/O), so it can be fuzzed and unit
//! tested with bytes split at arbitrary points. It checks every length before it reserves
//! memory: a piece is at most `PIECE_MAX`, a message at most the size limit, and memory for a
//! message grows only as its bytes actually arrive (at most one piece ahead).
//!
//! Large pieces skip the buffer: once a piece of at least [`DIRECT_MIN`] bytes has its header
//! in, [`FrameReader::direct`] hands out the message's assembly vector, and the caller reads
//! the rest of that piece straight into it, saving a copy of every large message.

use std::fmt;

/// Bytes in a frame header.
pub(crate) const HEADER: usize = 5;
/// The largest piece payload; longer messages are split.
pub(crate) const PIECE_MAX: usize = 64 * 1024;
/// Flag bit: this piece ends its message.
pub(crate) const FLAG_LAST: u8 = 1;
/// Flag bit, on a message's first piece only: descriptors were passed with this header
/// (`SCM_RIGHTS`, on `unix:`), one for each sealed buffer the message names
/// (`flavors/attached.rs`).
pub(crate) const FLAG_ATTACHED: u8 = 2;
/// Bytes the reader's buffer holds: room for a full piece plus a typical read.
const BUF_SIZE: usize = 2 * (HEADER + PIECE_MAX);
/// Keep at most this much reassembly capacity between messages.
const KEEP_ASSEMBLY: usize = 1 << 20;
/// Pieces with at least this many payload bytes still to come are read straight into the
/// assembly (see the module docs).
pub(crate) const DIRECT_MIN: usize = 4096;

/// Encodes a frame header.
pub(crate) fn header(len: usize, last: bool) -> [u8; HEADER] {
    debug_assert!(len <= PIECE_MAX);
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&(len as u32).to_le_bytes());
    h[4] = if last { FLAG_LAST } else { 0 };
    h
}

/// Why a byte stream is not valid framing. The connection that sent it is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// A flag bit this version does not define, or one where it cannot be.
    UnknownFlags(u8),
    /// A piece longer than [`PIECE_MAX`].
    PieceTooLong(u32),
    /// A piece that is not the last but carries nothing.
    EmptyPiece,
    /// The message would exceed the receiver's size limit.
    TooLarge { at_least: usize, limit: usize },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::UnknownFlags(b) => write!(f, "unknown frame flags {b:#04x}"),
            FrameError::PieceTooLong(n) => {
                write!(f, "a piece of {n} bytes is longer than {PIECE_MAX}")
            }
            FrameError::EmptyPiece => f.write_str("an empty piece that is not the last"),
            FrameError::TooLarge { at_least, limit } => write!(
                f,
                "a message of at least {at_least} bytes is over the limit of {limit}"
            ),
        }
    }
}

/// Reassembles messages from a byte stream delivered in arbitrary chunks.
pub(crate) struct FrameReader {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    assembly: Vec<u8>,
    /// The assembly holds a message already handed out: clear it before the next piece.
    assembly_done: bool,
    /// The message being read opened with `FLAG_ATTACHED`.
    attached: bool,
    /// A piece being read straight into the assembly: its bytes still to come, and whether
    /// it ends its message. Kept (with 0 to come) until `next_message` has handled it.
    direct: Option<(usize, bool)>,
    limit: usize,
}

impl FrameReader {
    /// A reader that refuses messages over `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        FrameReader {
            buf: vec![0u8; BUF_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
            assembly: Vec::new(),
            assembly_done: false,
            attached: false,
            direct: None,
            limit,
        }
    }

    /// Room to read into; never empty. Call [`FrameReader::filled`] with what was read.
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < HEADER + PIECE_MAX {
            // Move the unconsumed tail to the front: at most one partial piece plus a
            // header, so a whole piece always fits after it.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were written at the start of [`FrameReader::spare`].
    pub(crate) fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// While a piece goes straight into the assembly: the vector to append its bytes to, and
    /// at most how many to append (the rest of the piece, never beyond it). Report what was
    /// appended with [`FrameReader::appended`]. `None`: read into [`FrameReader::spare`].
    /// (The receiver uses [`FrameReader::direct_and_spare`]; tests and the fuzzer feed
    /// bytes through this one.)
    #[cfg_attr(not(any(test, fuzzing)), allow(dead_code))]
    pub(crate) fn direct(&mut self) -> Option<(&mut Vec<u8>, usize)> {
        match self.direct {
            Some((left, _)) if left > 0 => Some((&mut self.assembly, left)),
            _ => None,
        }
    }

    /// [`FrameReader::direct`] and [`FrameReader::spare`] at once, so that one vectored read
    /// can take the rest of the piece into the assembly and what follows it (the next
    /// piece's header) into the buffer. Report them with `appended` and `filled`.
    pub(crate) fn direct_and_spare(&mut self) -> Option<(&mut Vec<u8>, usize, &mut [u8])> {
        let left = match self.direct {
            Some((left, _)) if left > 0 => left,
            _ => return None,
        };
        // While a piece is read straight, the buffer holds nothing (`next_message`).
        debug_assert_eq!(self.start, self.end);
        self.start = 0;
        self.end = 0;
        Some((&mut self.assembly, left, &mut self.buf[..]))
    }

    /// Records that `n` bytes of the current piece were appended to the vector from
    /// [`FrameReader::direct`].
    pub(crate) fn appended(&mut self, n: usize) {
        if let Some((left, _)) = &mut self.direct {
            *left -= n.min(*left);
        }
    }

    /// Swaps the assembly vector for `other` right after [`FrameReader::next_message`]
    /// handed out a message longer than one piece (which is always assembled): the caller
    /// takes the message's vector and later gives one back the same way. `None` (nothing
    /// swapped) for any other message.
    pub(crate) fn swap_assembled(&mut self, other: Vec<u8>) -> Option<Vec<u8>> {
        if !self.assembly_done || self.assembly.len() <= PIECE_MAX {
            return None;
        }
        Some(std::mem::replace(&mut self.assembly, other))
    }

    /// Gives the reader `vec`, emptied, to assemble the next long message into, after
    /// [`FrameReader::swap_assembled`] took a message's vector and left one without room
    /// (the caller may reclaim that vector only once what it decoded lets go of it).
    /// `Err(vec)` when the reader's vector has room or holds part of a message.
    pub(crate) fn give_assembly(&mut self, mut vec: Vec<u8>) -> Result<(), Vec<u8>> {
        if self.assembly.capacity() != 0 || self.direct.is_some() {
            return Err(vec);
        }
        vec.clear();
        self.assembly = vec;
        self.assembly_done = false;
        Ok(())
    }

    /// True when bytes of an incomplete message are held (a torn message if the stream ends).
    pub(crate) fn mid_message(&self) -> bool {
        self.start != self.end
            || self.direct.is_some()
            || (!self.assembly.is_empty() && !self.assembly_done)
    }

    /// The next complete message, and whether it opened with `FLAG_ATTACHED`; `Ok(None)` if
    /// more bytes are needed.
    pub(crate) fn next_message(&mut self) -> Result<Option<(&[u8], bool)>, FrameError> {
        if self.assembly_done {
            self.assembly_done = false;
            if self.assembly.capacity() > KEEP_ASSEMBLY {
                self.assembly = Vec::new();
            } else {
                self.assembly.clear();
            }
        }
        match self.direct {
            Some((0, last)) => {
                self.direct = None;
                if last {
                    self.assembly_done = true;
                    let attached = std::mem::take(&mut self.attached);
                    return Ok(Some((&self.assembly, attached)));
                }
            }
            Some(_) => return Ok(None),
            None => {}
        }
        loop {
            let avail = &self.buf[self.start..self.end];
            if avail.len() < HEADER {
                return Ok(None);
            }
            let len = u32::from_le_bytes([avail[0], avail[1], avail[2], avail[3]]);
            let flags = avail[4];
            if flags & !(FLAG_LAST | FLAG_ATTACHED) != 0 {
                return Err(FrameError::UnknownFlags(flags));
            }
            let opens_attached = flags & FLAG_ATTACHED != 0;
            // Only on a message's first piece (earlier pieces are never empty).
            if opens_attached && (!self.assembly.is_empty() || self.attached) {
                return Err(FrameError::UnknownFlags(flags));
            }
            if len as usize > PIECE_MAX {
                return Err(FrameError::PieceTooLong(len));
            }
            let len = len as usize;
            let last = flags & FLAG_LAST != 0;
            if !last && len == 0 {
                return Err(FrameError::EmptyPiece);
            }
            let total = self.assembly.len() + len;
            if total > self.limit {
                return Err(FrameError::TooLarge {
                    at_least: total,
                    limit: self.limit,
                });
            }
            if avail.len() < HEADER + len {
                let have = avail.len() - HEADER;
                if len - have < DIRECT_MIN {
                    return Ok(None);
                }
                // The rest of this piece goes straight into the assembly (`direct`). The
                // buffer holds nothing after the part we take now.
                self.assembly.reserve_exact(len);
                self.assembly.extend_from_slice(&avail[HEADER..]);
                self.start = self.end;
                self.direct = Some((len - have, last));
                self.attached |= opens_attached;
                return Ok(None);
            }
            let piece = self.start + HEADER..self.start + HEADER + len;
            self.start = piece.end;
            self.attached |= opens_attached;
            let attached = last && std::mem::take(&mut self.attached);
            if last && self.assembly.is_empty() {
                // The common case: a one-piece message, decoded straight from the buffer.
                return Ok(Some((&self.buf[piece], attached)));
            }
            self.assembly.extend_from_slice(&self.buf[piece]);
            if last {
                self.assembly_done = true;
                return Ok(Some((&self.assembly, attached)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut chunks: Vec<&[u8]> = msg.chunks(PIECE_MAX).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let n = chunks.len();
        for (i, c) in chunks.into_iter().enumerate() {
            out.extend_from_slice(&header(c.len(), i + 1 == n));
            out.extend_from_slice(c);
        }
        out
    }

    /// Feeds `bytes` in chunks of `step`, collecting messages.
    fn feed(
        reader: &mut FrameReader,
        bytes: &[u8],
        step: usize,
    ) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            if let Some((assembly, max)) = reader.direct() {
                let n = step.min(max).min(bytes.len() - pos);
                assembly.extend_from_slice(&bytes[pos..pos + n]);
                reader.appended(n);
                pos += n;
            } else {
                let spare = reader.spare();
                let n = step.min(spare.len()).min(bytes.len() - pos);
                spare[..n].copy_from_slice(&bytes[pos..pos + n]);
                reader.filled(n);
                pos += n;
            }
            while let Some((m, _)) = reader.next_message()? {
                out.push(m.to_vec());
            }
        }
        Ok(out)
    }

    #[test]
    fn reassembles_at_every_split() {
        let msgs: Vec<Vec<u8>> = vec![
            vec![],
            vec![1, 2, 3],
            (0..PIECE_MAX as u32 * 2 + 17).map(|i| i as u8).collect(),
            vec![9; PIECE_MAX],
        ];
        let stream: Vec<u8> = msgs.iter().flat_map(|m| frames(m)).collect();
        for step in [1, 2, 5, 7, 4096, 70_000, usize::MAX] {
            let mut r = FrameReader::new(1 << 20);
            assert_eq!(feed(&mut r, &stream, step).unwrap(), msgs, "step {step}");
            assert!(!r.mid_message());
        }
    }

    #[test]
    fn an_assembled_message_can_be_taken_and_a_vector_given_back() {
        let big: Vec<u8> = (0..PIECE_MAX as u32 + 5).map(|i| (i % 251) as u8).collect();
        let small = vec![7u8; 300];
        /// Feeds one message's frames through the buffer; true once it is handed out (and
        /// left there, as a receiver leaves it while it decodes).
        fn deliver(r: &mut FrameReader, msg: &[u8]) -> bool {
            let bytes = frames(msg);
            let mut pos = 0;
            while pos < bytes.len() {
                let n = if let Some((assembly, max)) = r.direct() {
                    let n = max.min(bytes.len() - pos);
                    assembly.extend_from_slice(&bytes[pos..pos + n]);
                    r.appended(n);
                    n
                } else {
                    let spare = r.spare();
                    let n = spare.len().min(bytes.len() - pos).min(4096);
                    spare[..n].copy_from_slice(&bytes[pos..pos + n]);
                    r.filled(n);
                    n
                };
                pos += n;
                if let Some((m, _)) = r.next_message().unwrap() {
                    return pos == bytes.len() && m == msg;
                }
            }
            false
        }
        let mut r = FrameReader::new(1 << 20);
        assert!(deliver(&mut r, &big));
        let taken = r.swap_assembled(Vec::with_capacity(10)).expect("assembled");
        assert_eq!(taken, big);
        // A one-piece message is read from the buffer: nothing to take.
        assert!(deliver(&mut r, &small));
        assert_eq!(r.swap_assembled(Vec::new()), None);
        // The vector given back assembles the next message.
        assert!(deliver(&mut r, &big));
        assert!(!r.mid_message());
    }

    #[test]
    fn large_pieces_are_read_straight_into_the_assembly() {
        let msg: Vec<u8> = (0..PIECE_MAX as u32 + 10_000)
            .map(|i| (i % 253) as u8)
            .collect();
        let stream = frames(&msg);
        let mut r = FrameReader::new(1 << 20);
        assert!(r.direct().is_none(), "nothing to read straight yet");
        // The first header and 100 payload bytes arrive through the buffer ...
        r.spare()[..HEADER + 100].copy_from_slice(&stream[..HEADER + 100]);
        r.filled(HEADER + 100);
        assert_eq!(r.next_message(), Ok(None));
        assert!(r.mid_message());
        // ... then the reader asks for exactly the rest of that piece, and no more.
        let (assembly, max) = r.direct().expect("a large piece goes straight in");
        assert_eq!((assembly.len(), max), (100, PIECE_MAX - 100));
        assembly.extend_from_slice(&stream[HEADER + 100..HEADER + PIECE_MAX]);
        r.appended(PIECE_MAX - 100);
        assert!(r.direct().is_none(), "the piece is complete");
        assert_eq!(r.next_message(), Ok(None), "the message has a second piece");
        // The short second piece comes through the buffer.
        let rest = &stream[HEADER + PIECE_MAX..];
        r.spare()[..rest.len()].copy_from_slice(rest);
        r.filled(rest.len());
        assert_eq!(r.next_message(), Ok(Some((&msg[..], false))));
        assert!(!r.mid_message());
    }

    #[test]
    fn refuses_bad_lengths_before_allocating() {
        let mut r = FrameReader::new(100);
        let mut bytes = header(50, false).to_vec();
        bytes.extend_from_slice(&[0; 50]);
        bytes.extend_from_slice(&header(51, true));
        let err = feed(&mut r, &bytes, usize::MAX).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                at_least: 101,
                limit: 100
            }
        );

        let mut r = FrameReader::new(usize::MAX);
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.push(FLAG_LAST);
        assert_eq!(
            feed(&mut r, &huge, 1).unwrap_err(),
            FrameError::PieceTooLong(u32::MAX)
        );

        let mut r = FrameReader::new(100);
        assert_eq!(
            feed(&mut r, &[0, 0, 0, 0, 0x80], 5).unwrap_err(),
            FrameError::UnknownFlags(0x80)
        );
        let mut r = FrameReader::new(100);
        assert_eq!(
            feed(&mut r, &header(0, false), 5).unwrap_err(),
            FrameError::EmptyPiece
        );
    }

    #[test]
    fn partial_message_is_reported() {
        let mut r = FrameReader::new(1 << 20);
        let bytes = frames(&[7; 10]);
        assert!(feed(&mut r, &bytes[..8], 3).unwrap().is_empty());
        assert!(r.mid_message());
    }
}
