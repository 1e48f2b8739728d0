//! The ring's reading side: poll the header word at our position, check it, copy the
//! payload out, and hand the consumed bytes back at once (see the frame format in `core.rs`);
//! whether the producer sleeps and needs a wake-up is checked with a fence only once a batch
//! has gathered, when it says it waits, or when the ring runs dry.

use super::core::{
    align8, Ring, RingError, FLAG_COMMIT, FLAG_LAST, FLAG_MASK, FLAG_PAD, FRAME_HEADER,
    RELEASE_BATCH,
};
use crate::sync::{fence, Ordering};

/// Outcome of [`Consumer::try_pop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pop {
    /// A piece was appended to the output; `last` ends its message. `wake` means the
    /// producer announced it sleeps on a full ring: notify it.
    Piece { last: bool, wake: bool },
    /// Nothing published now. `wake` as for `Piece`: finding the ring empty hands the
    /// bytes consumed so far back to the producer, which may be asleep waiting for them.
    Empty { wake: bool },
    /// The producer closed its side and everything it published has been taken.
    Closed,
}

/// Outcome of [`Consumer::pop_message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    /// A whole message is in the output; `attached` when it opened with the marker that
    /// says descriptors were passed with it (see [`Consumer::try_pop`]).
    Message { attached: bool },
    /// Nothing more published now (the output may hold the first pieces of a message).
    Empty,
    /// The producer closed its side and everything it published has been taken.
    Closed,
}

/// The reading side. Exactly one per ring.
pub(crate) struct Consumer {
    ring: Ring,
    /// Our copy of `tail`: the bytes we have consumed. Only we write the shared one, after
    /// every frame.
    tail: u64,
    /// Our `tail` when we last checked, behind a fence, whether the producer sleeps.
    checked: u64,
    /// The largest message we accept, in bytes.
    limit: usize,
    /// The message being taken opened with the descriptors marker.
    attached: bool,
    /// `attached` of the last message completed.
    completed_attached: bool,
}

impl Consumer {
    /// Takes the consumer side of `ring`, accepting messages up to `limit` bytes. The
    /// starting position is read once and must be a multiple of 8 (a peer may have written
    /// it before we attached); from then on only our own copy of `tail` is used.
    pub(crate) fn new(ring: Ring, limit: usize) -> Result<Consumer, RingError> {
        let tail = ring.header().tail.load(Ordering::Relaxed);
        if tail % 8 != 0 {
            return Err(RingError::Corrupted("tail is not a multiple of 8"));
        }
        Ok(Consumer {
            ring,
            tail,
            checked: tail,
            limit,
            attached: false,
            completed_attached: false,
        })
    }

    /// The largest message accepted, in bytes.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// The bytes consumed so far (our `tail`, as stored in the header).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn consumed(&self) -> u64 {
        self.tail
    }

    /// Reads the header word at our position once: `None` while nothing is committed there,
    /// else the frame's length and flags (without `FLAG_COMMIT`).
    fn read_header(&self) -> Result<Option<(usize, u32)>, RingError> {
        let slot = self.ring.slot(self.ring.offset(self.tail));
        // SYNC POINT: Acquire pairs with the producer's Release store of this word in
        // `Producer::try_push`: the payload written before it is visible.
        let word = slot.load(Ordering::Acquire);
        let stamp = (word >> 32) as u32;
        if stamp & FLAG_COMMIT == 0 {
            return Ok(None);
        }
        // The producer clears each slot before the frame ahead of it is committed, so a
        // committed word here carries our own position.
        if stamp & !FLAG_MASK != self.tail as u32 {
            return Err(RingError::Corrupted(
                "a frame header stamped with another position",
            ));
        }
        Ok(Some((word as u32 as usize, stamp & (FLAG_LAST | FLAG_PAD))))
    }

    /// Whether the producer closed its side.
    fn producer_closed(&self) -> bool {
        // SYNC POINT: Acquire pairs with the release fence at the end of the producer's last
        // `try_push`, before its store of the flag in `Producer::close`: every header it
        // committed before closing is then visible to a reload.
        self.ring.header().producer_closed.load(Ordering::Acquire) != 0
    }

    /// Appends the next piece's payload to `out` (which holds the message's earlier pieces).
    #[inline]
    pub(crate) fn try_pop(&mut self, out: &mut Vec<u8>) -> Result<Pop, RingError> {
        let mut wake = false;
        loop {
            let header = match self.read_header()? {
                Some(header) => header,
                None => {
                    self.ring.prefetch_line_after(self.ring.offset(self.tail));
                    wake |= self.hand_back();
                    if !self.producer_closed() {
                        return Ok(Pop::Empty { wake });
                    }
                    match self.read_header()? {
                        Some(header) => header,
                        None => return Ok(Pop::Closed),
                    }
                }
            };
            let (len, flags) = header;
            let off = self.ring.offset(self.tail);
            let contiguous = self.ring.capacity - off;
            if flags == FLAG_PAD {
                // A producer pads only when a frame does not fit before the end, which never
                // happens at offset 0.
                // (`contiguous >= 8`: offsets are multiples of 8 below the capacity.)
                if len != contiguous - FRAME_HEADER || off == 0 {
                    return Err(RingError::Corrupted("padding that a producer never writes"));
                }
                wake |= self.release(contiguous);
                continue;
            }
            if flags & !FLAG_LAST != 0 {
                return Err(RingError::Corrupted("unknown frame flags"));
            }
            if len == 0 && flags & FLAG_LAST == 0 {
                // The marker of a message with descriptors attached (the shm flavor passes
                // them on the connection's socket), valid only as a message's first frame:
                // anywhere else it would let a peer keep us busy forever without nearing the
                // size limit.
                if !out.is_empty() || self.attached {
                    return Err(RingError::Corrupted(
                        "an empty piece that does not open its message",
                    ));
                }
                self.attached = true;
            }
            // The length first: rounding a length near `u32::MAX` up would overflow on 32 bits.
            if len > self.ring.capacity / 2 {
                return Err(RingError::Corrupted("a frame longer than half the ring"));
            }
            let need = FRAME_HEADER + align8(len);
            if need > contiguous {
                return Err(RingError::Corrupted(
                    "a frame past the end of the data region",
                ));
            }
            let total = out.len() + len;
            if total > self.limit {
                return Err(RingError::TooLarge {
                    at_least: total,
                    limit: self.limit,
                });
            }
            out.reserve(len);
            self.ring.track_payload(off + FRAME_HEADER, len, false);
            // SAFETY: `off + 8 + len <= capacity` (checked: need <= contiguous), so the source
            // is in bounds; `out` has room for `len` more bytes (reserved); the committed bytes
            // are initialised. Copying out before decoding means no byte is read twice.
            unsafe {
                let src = self.ring.data.as_ptr().add(off + FRAME_HEADER);
                std::ptr::copy_nonoverlapping(src, out.as_mut_ptr().add(out.len()), len);
                out.set_len(total);
            }
            wake |= self.release(need);
            let last = flags & FLAG_LAST != 0;
            if last {
                self.completed_attached = std::mem::take(&mut self.attached);
            }
            return Ok(Pop::Piece { last, wake });
        }
    }

    /// Appends pieces to `out` until it holds a whole message, the ring runs dry, or the
    /// producer is found closed. `wake` is called whenever the producer sleeps and must be
    /// woken for the space handed back. The shm flavor's receive and the loom models both
    /// run this loop.
    #[inline]
    pub(crate) fn pop_message(
        &mut self,
        out: &mut Vec<u8>,
        mut wake: impl FnMut(),
    ) -> Result<Taken, RingError> {
        loop {
            let (asleep, taken) = match self.try_pop(out)? {
                Pop::Piece { last: false, wake } => (wake, None),
                Pop::Piece { last: true, wake } => (
                    wake,
                    Some(Taken::Message {
                        attached: self.completed_attached,
                    }),
                ),
                Pop::Empty { wake } => (wake, Some(Taken::Empty)),
                Pop::Closed => (false, Some(Taken::Closed)),
            };
            if asleep {
                wake();
            }
            if let Some(taken) = taken {
                return Ok(taken);
            }
        }
    }

    /// Marks `bytes` consumed and hands them back to the producer; true when the producer
    /// sleeps and must be woken.
    ///
    /// The store is cheap while the producer does not look (it reads `tail` only when its
    /// cached copy says the ring is full), and it lets one receive from a full ring make room
    /// for the next send at once. Telling whether the producer sleeps is what costs: the
    /// wake-up Dekker needs a SeqCst fence after the store, which waits for the store buffer
    /// to drain. That runs only once a batch of bytes has gathered since the last check, or
    /// when a plain load finds the producer announcing a sleep, or when the ring runs dry
    /// (`hand_back`): the producer sleeps only after spinning, and a sleeping producer is
    /// woken by whichever comes first.
    #[inline]
    fn release(&mut self, bytes: usize) -> bool {
        self.tail = self.tail.wrapping_add(bytes as u64);
        let h = self.ring.header();
        // SYNC POINT: Release pairs with the producer's Acquire load of `tail` in
        // `Producer::reload_tail`: we are done reading the space we give back.
        h.tail.store(self.tail, Ordering::Release);
        let batch = (self.ring.capacity as u64 / 4).min(RELEASE_BATCH);
        // Relaxed: a hint only; the check that counts is `hand_back`'s, behind its fence.
        if self.tail.wrapping_sub(self.checked) >= batch
            || h.producer_waiting.load(Ordering::Relaxed) == 1
        {
            return self.hand_back();
        }
        false
    }

    /// Checks, behind a fence, whether the producer sleeps waiting for the bytes consumed
    /// since the last check; true when it must be woken.
    fn hand_back(&mut self) -> bool {
        if self.checked == self.tail {
            return false;
        }
        self.checked = self.tail;
        // Dekker with `Producer::prepare_wait` (store waiting, fence, load tail): our store of
        // `tail` in `release`, this fence, then the load of waiting.
        fence(Ordering::SeqCst);
        self.ring.header().producer_waiting.load(Ordering::Relaxed) == 1
    }

    /// Announces a sleep on an empty ring. Returns false if something was published (or the
    /// producer closed) meanwhile: then do not sleep. Call `end_wait` after sleeping.
    ///
    /// Call it after `try_pop` returned `Empty`, which checks for a sleeping producer; if
    /// bytes were consumed since, it returns false (do not sleep: the producer may be waiting
    /// for them, and only `try_pop` reports the wake-up it needs).
    pub(crate) fn prepare_wait(&mut self) -> Result<bool, RingError> {
        if self.checked != self.tail {
            return Ok(false);
        }
        let h = self.ring.header();
        h.consumer_waiting.store(1, Ordering::Relaxed);
        // Dekker with `Producer::try_push` (commit a header, fence, load waiting).
        fence(Ordering::SeqCst);
        let idle = self.read_header()?.is_none() && !self.producer_closed();
        if !idle {
            self.end_wait();
        }
        Ok(idle)
    }

    /// Ends a sleep announced by `prepare_wait`.
    pub(crate) fn end_wait(&self) {
        self.ring
            .header()
            .consumer_waiting
            .store(0, Ordering::Relaxed);
    }

    /// Announces that nothing more will be read; returns whether the producer sleeps and must
    /// be woken to see it.
    pub(crate) fn close(&self) -> bool {
        let h = self.ring.header();
        // Relaxed: the flag publishes no data; a producer that sees it stops writing, and our
        // reads of the ring are handed back through `tail` (Release in `release`). The
        // fence below orders it for the wake-up check, as in `prepare_wait`.
        h.consumer_closed.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        h.producer_waiting.load(Ordering::Relaxed) == 1
    }
}
