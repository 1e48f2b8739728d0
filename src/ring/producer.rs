//! The ring's writing side: room from a cached `tail`, the payload, the next header slot
//! cleared, then the header word committed (see the frame format in `core.rs`).

use super::core::{
    align8, header_word, Ring, RingError, FLAG_LAST, FLAG_PAD, FRAME_HEADER, MAX_PIECE,
};
use crate::sync::{fence, Ordering};

/// Outcome of [`Producer::try_push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Push {
    /// Published. `wake` means the consumer announced it sleeps: notify it.
    Done { wake: bool },
    /// Not enough room now; nothing was written.
    Full,
}

/// The writing side. Exactly one per ring.
pub(crate) struct Producer {
    ring: Ring,
    /// Our copy of `head`: only we write it.
    head: u64,
    /// The last `tail` we read; reloaded only when it says "full" (rtrb's cached index).
    cached_tail: u64,
}

impl Producer {
    /// Takes the producer side of `ring`, starting from its current positions.
    pub(crate) fn new(ring: Ring) -> Result<Producer, RingError> {
        let h = ring.header();
        // SYNC POINT: Acquire pairs with the consumer's Release store of `tail`.
        let tail = h.tail.load(Ordering::Acquire);
        let head = h.head.load(Ordering::Relaxed);
        if head.wrapping_sub(tail) > ring.capacity as u64 {
            return Err(RingError::Corrupted(
                "head and tail are further apart than the capacity",
            ));
        }
        // Frames start at multiples of 8; a misaligned head would put a header across the
        // end of the data region.
        if head % 8 != 0 || tail % 8 != 0 {
            return Err(RingError::Corrupted("positions are not multiples of 8"));
        }
        if head.wrapping_sub(tail) + FRAME_HEADER as u64 <= ring.capacity as u64 {
            // The slot we commit next must read as "nothing yet". A producer before us (in the
            // parent of a hand-off) left it clear; a fresh ring is zeroed; clearing it again
            // costs nothing and makes that true whoever set the positions. Relaxed: the
            // consumer reads this slot only after a commit of ours or a Release before it.
            ring.slot(ring.offset(head)).store(0, Ordering::Relaxed);
        }
        Ok(Producer {
            ring,
            head,
            cached_tail: tail,
        })
    }

    /// The ring's claim token now: what [`Producer::claim`] expects to find.
    pub(crate) fn claim_token(&self) -> u64 {
        // Relaxed: the token guards no data (see `claim`).
        self.ring.header().producer_claim.load(Ordering::Relaxed)
    }

    /// After a `fork()` copied this producer into two processes: takes the ring for this
    /// process if the token is still `token` (nobody claimed since the fork), moving it on.
    /// Returns the new token, or `None` when another process claimed first; then this
    /// process must not publish. Every process that publishes after a fork claims first, so
    /// a successful claim also means our copy of `head` is exact.
    pub(crate) fn claim(&self, token: u64) -> Option<u64> {
        let next = token.wrapping_add(1);
        // Relaxed: the claims of all processes sharing the token are ordered by this one
        // location's modification order, which alone decides the single winner. No data is
        // published with the token: what the winner publishes reaches the consumer through
        // the header words it commits (Release in `try_push`, Acquire in
        // `Consumer::read_header`).
        self.ring
            .header()
            .producer_claim
            .compare_exchange(token, next, Ordering::Relaxed, Ordering::Relaxed)
            .ok()
            .map(|_| next)
    }

    /// The largest piece payload this ring carries; longer messages go in several pieces.
    #[inline]
    pub(crate) fn max_piece(&self) -> usize {
        ((self.ring.capacity / 2).min(MAX_PIECE) - FRAME_HEADER) & !7
    }

    /// Publishes one piece if there is room. `payload.len()` must be at most `max_piece`.
    #[inline]
    pub(crate) fn try_push(&mut self, payload: &[u8], last: bool) -> Result<Push, RingError> {
        let Some(piece) = self.reserve(payload.len())? else {
            return Ok(Push::Full);
        };
        // SAFETY: the piece's payload space is `align8(len)` bytes at `off + FRAME_HEADER`,
        // within the data region (`reserve`); it is ours until `commit`, and the consumer
        // reads none of it before it sees the header committed there.
        unsafe { self.ring.write_padded(piece.off + FRAME_HEADER, payload) };
        let wake = self.commit(piece, last);
        Ok(Push::Done { wake })
    }

    /// Takes room at the head for a piece of `len` bytes (at most `max_piece`), or `None`
    /// when there is not enough now. Write its payload with [`Producer::write`] and publish
    /// it with [`Producer::commit`]; until then the consumer sees nothing of it, and a piece
    /// never committed is simply overwritten by the next one.
    #[inline]
    pub(crate) fn reserve(&mut self, len: usize) -> Result<Option<Piece>, RingError> {
        debug_assert!(len <= self.max_piece());
        let footprint = self.footprint(len);
        if !self.has_room(footprint.total())? {
            return Ok(None);
        }
        let start = self.head;
        let pos = start.wrapping_add(footprint.pad as u64);
        Ok(Some(Piece {
            start,
            pos,
            // Either it fits before the end, or it starts at offset 0 and takes at most half
            // the capacity: `off + need <= capacity` (`footprint`).
            off: self.ring.offset(pos),
            next: pos.wrapping_add(footprint.need as u64),
            pad: footprint.pad,
            len,
        }))
    }

    /// Copies `bytes` into the payload of `piece` from byte `at` on.
    ///
    /// # Panics
    /// If `at + bytes.len()` is past the piece's length.
    #[inline]
    pub(crate) fn write(&mut self, piece: &Piece, at: usize, bytes: &[u8]) {
        assert!(
            at <= piece.len && bytes.len() <= piece.len - at,
            "a write past the reserved piece"
        );
        let off = piece.off + FRAME_HEADER + at;
        self.ring.track_payload(off, bytes.len(), true);
        // SAFETY: `off + bytes.len() <= piece.off + FRAME_HEADER + piece.len`, inside the
        // data region (`reserve`) and in space the consumer does not read before `commit`.
        unsafe {
            let dst = self.ring.data.as_ptr().add(off);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len());
        }
    }

    /// Publishes a piece whose payload has been written; `last` ends its message. Returns
    /// whether the consumer announced it sleeps: then wake it.
    #[inline]
    pub(crate) fn commit(&mut self, piece: Piece, last: bool) -> bool {
        // An empty piece that is not the last is the descriptors marker (see
        // `Consumer::try_pop`): a sender commits one only to open a message.
        debug_assert!(piece.start == self.head, "pieces are committed in order");
        // Clear the next frame's header slot (ours: `has_room` counted it), so the consumer,
        // which polls it once it has taken this frame, finds zero until we commit there.
        // Relaxed: the Release store below orders it before the commit the consumer acquires.
        let next_slot = self.ring.slot(self.ring.offset(piece.next));
        next_slot.store(0, Ordering::Relaxed);
        let flags = if last { FLAG_LAST } else { 0 };
        // SYNC POINT: Release publishes the payload (and the cleared next slot); pairs with
        // the consumer's Acquire load of this word in `Consumer::read_header`.
        self.ring.slot(piece.off).store(
            header_word(piece.pos, piece.len as u32, flags),
            Ordering::Release,
        );
        if piece.pad != 0 {
            // The padding is committed last: until then the consumer polls its (cleared) slot
            // and cannot reach offset 0 before the frame there is complete.
            // SYNC POINT: Release orders the frame's commit before this one; pairs with the
            // consumer's Acquire load in `Consumer::read_header`.
            let pad_len = (piece.pad - FRAME_HEADER) as u32;
            self.ring.slot(self.ring.offset(piece.start)).store(
                header_word(piece.start, pad_len, FLAG_PAD),
                Ordering::Release,
            );
        }
        self.head = piece.next;
        let h = self.ring.header();
        // Relaxed: read only by a producer that takes the ring over (`Producer::new`, after a
        // hand-off to a child or a claim after `fork()`), which synchronises with us through
        // the socket that carries the ring or through the claim; the consumer never reads it.
        h.head.store(piece.next, Ordering::Relaxed);
        // Dekker with `Consumer::prepare_wait`: our commit store above, this SeqCst fence,
        // then our load of `consumer_waiting`; the consumer stores `consumer_waiting`, fences,
        // then loads the header word at its position. The two fences order the pairs, so at
        // least one side sees the other's store: either the consumer sees the commit and
        // stays awake, or we see it waiting. The sleeper clears its own flag when it wakes;
        // until then every publish notifies, which costs an extra wake-up at worst, never a
        // lost one.
        fence(Ordering::SeqCst);
        h.consumer_waiting.load(Ordering::Relaxed) == 1
    }

    /// Publishes `bytes` (the rest of one message) in pieces of at most `max_piece`, the
    /// last one marked as such: how many bytes were published, and whether all were. `wake`
    /// is called when a publish finds the consumer asleep; `wait` when the ring is full, to
    /// return once a piece of the given length may fit (through [`Producer::sleep_for_room`])
    /// or with the error that ends the message there. The shm flavor's send and the loom
    /// models both run this loop.
    #[inline]
    pub(crate) fn push_pieces<E: From<RingError>>(
        &mut self,
        bytes: &[u8],
        mut wake: impl FnMut(),
        mut wait: impl FnMut(&mut Producer, usize) -> Result<(), E>,
    ) -> (usize, Result<(), E>) {
        let max = self.max_piece();
        let mut done = 0;
        loop {
            let end = bytes.len().min(done + max);
            let piece = &bytes[done..end];
            let last = end == bytes.len();
            match self.try_push(piece, last) {
                Ok(Push::Done { wake: asleep }) => {
                    if asleep {
                        wake();
                    }
                    done = end;
                    if last {
                        return (done, Ok(()));
                    }
                }
                Ok(Push::Full) => {
                    if let Err(fail) = wait(self, piece.len()) {
                        return (done, Err(fail));
                    }
                }
                Err(broken) => return (done, Err(broken.into())),
            }
        }
    }

    /// Sleeps with `sleep` until the consumer frees room for a piece of `len` bytes: announces
    /// the sleep, checks again, sleeps only if the ring is still full (and the consumer has
    /// not closed), and ends the announcement. Spurious returns are fine: the caller tries
    /// the push again.
    pub(crate) fn sleep_for_room<E: From<RingError>>(
        &mut self,
        len: usize,
        sleep: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        if !self.prepare_wait(len)? {
            return Ok(());
        }
        let slept = sleep();
        self.end_wait();
        slept
    }

    /// What a piece of `len` bytes takes at the current head.
    fn footprint(&self, len: usize) -> Footprint {
        let need = FRAME_HEADER + align8(len);
        let contiguous = self.ring.capacity - self.ring.offset(self.head);
        let pad = if contiguous >= need { 0 } else { contiguous };
        Footprint { pad, need }
    }

    /// Where the next frame goes: the bytes published so far.
    pub(crate) fn head(&self) -> u64 {
        self.head
    }

    /// The bytes the consumer has handed back so far (its `tail`), read afresh.
    pub(crate) fn released(&mut self) -> Result<u64, RingError> {
        self.reload_tail(0)?;
        Ok(self.cached_tail)
    }

    /// Whether a piece of `len` bytes fits now.
    pub(crate) fn has_room_for(&mut self, len: usize) -> Result<bool, RingError> {
        self.has_room(self.footprint(len).total())
    }

    /// Whether `bytes` fit now, reloading `tail` only when the cached value says no.
    #[inline]
    fn has_room(&mut self, bytes: usize) -> Result<bool, RingError> {
        let cap = self.ring.capacity as u64;
        if cap - self.head.wrapping_sub(self.cached_tail) >= bytes as u64 {
            return Ok(true);
        }
        self.reload_tail(bytes)
    }

    /// [`Producer::has_room`] when the cached `tail` says no: reloads it.
    #[cold]
    fn reload_tail(&mut self, bytes: usize) -> Result<bool, RingError> {
        let cap = self.ring.capacity as u64;
        // SYNC POINT: Acquire pairs with the consumer's Release store of `tail`: the space it
        // released is no longer read by it.
        let tail = self.ring.header().tail.load(Ordering::Acquire);
        let used = self.head.wrapping_sub(tail);
        if used > cap {
            return Err(RingError::Corrupted(
                "tail is ahead of head or behind by more than the capacity",
            ));
        }
        self.cached_tail = tail;
        Ok(cap - used >= bytes as u64)
    }

    /// Announces a sleep on a full ring before pushing a piece of `len` bytes. Returns false
    /// if room appeared meanwhile (or the consumer closed): then do not sleep. Call `end_wait`
    /// after sleeping.
    pub(crate) fn prepare_wait(&mut self, len: usize) -> Result<bool, RingError> {
        self.ring
            .header()
            .producer_waiting
            .store(1, Ordering::Relaxed);
        // Dekker with `Consumer::try_pop`: store waiting, SeqCst fence, load tail; the consumer
        // stores tail, fences, loads waiting. See `try_push` for the argument.
        fence(Ordering::SeqCst);
        let room = self.has_room(self.footprint(len).total())? || self.consumer_closed();
        if room {
            self.end_wait();
        }
        Ok(!room)
    }

    /// Ends a sleep announced by `prepare_wait`.
    pub(crate) fn end_wait(&self) {
        self.ring
            .header()
            .producer_waiting
            .store(0, Ordering::Relaxed);
    }

    /// Whether the consumer closed its side in an orderly way.
    #[inline]
    pub(crate) fn consumer_closed(&self) -> bool {
        // Relaxed: the flag publishes no data (see `Consumer::close`).
        self.ring.header().consumer_closed.load(Ordering::Relaxed) != 0
    }

    /// Announces that nothing more will be published. Returns whether the consumer sleeps
    /// and must be woken to see it.
    pub(crate) fn close(&self) -> bool {
        let h = self.ring.header();
        // Relaxed: the SeqCst fence that ends every `try_push` is a release fence sequenced
        // after the last commit and before this store, so the consumer's Acquire load that
        // sees the flag (`Consumer::producer_closed`) sees every commit; a close with no
        // commit before it publishes nothing.
        h.producer_closed.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        h.consumer_waiting.load(Ordering::Relaxed) == 1
    }
}

/// Room taken at the head for one piece ([`Producer::reserve`]).
#[must_use = "a reserved piece is published only by `Producer::commit`"]
pub(crate) struct Piece {
    /// The head when reserved: where padding starts, if any.
    start: u64,
    /// The frame's position (after any padding) and its data offset.
    pos: u64,
    off: usize,
    /// The head after the frame.
    next: u64,
    /// Padding to the end of the data region (0, or a whole padding frame).
    pad: usize,
    /// The payload's length.
    len: usize,
}

impl Piece {
    /// The payload's length.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The same piece with only its first `len` bytes (a message that ended early): the
    /// next piece starts right after them.
    pub(crate) fn shrink(mut self, len: usize) -> Piece {
        assert!(len <= self.len, "a piece only shrinks");
        self.len = len;
        self.next = self.pos.wrapping_add((FRAME_HEADER + align8(len)) as u64);
        self
    }
}

/// The bytes one piece takes at the producer's head.
struct Footprint {
    /// Padding to the end of the data region (0, or a whole padding frame).
    pad: usize,
    /// The frame: header and payload rounded up to 8.
    need: usize,
}

impl Footprint {
    /// Padding, frame, and the next header slot the producer clears.
    fn total(&self) -> usize {
        self.pad + self.need + FRAME_HEADER
    }
}
