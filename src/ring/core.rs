//! The single-producer single-consumer frame ring: pure logic over raw memory and the sync
//! shim's atomics. No allocation on the producer side, no system calls, no blocking: the shm
//! flavor decides when to spin, sleep and wake.
//!
//! Frames are `len: u32 LE | flags: u32 LE | payload`, padded to 8 bytes. A frame never
//! wraps: when it does not fit before the end of the data region, a padding frame fills the
//! rest and the frame starts at offset 0. A piece is at most [`Producer::max_piece`] bytes
//! (a little under half the capacity, and at most 64 KiB), so an empty ring always has room
//! for one.
//!
//! The consumer distrusts the producer (it may be another process, buggy or hostile): it
//! reads each shared position once, checks it against its own copy of the other, reads each
//! frame header once into a local, checks every length against the capacity and the bytes
//! published, and copies the payload out before anyone decodes it.

use std::ptr::NonNull;

use super::header::{self, RingHeader, HEADER_SIZE, LAYOUT_VERSION, MAGIC};
use crate::sync::{fence, Ordering};

/// Bytes in a frame header.
pub(crate) const FRAME_HEADER: usize = 8;
/// Flag: this piece ends its message.
pub(crate) const FLAG_LAST: u32 = 1;
/// Flag: padding up to the end of the data region; no payload.
pub(crate) const FLAG_PAD: u32 = 2;
/// Pieces are at most this big even in large rings, so the consumer can copy one piece out
/// while the producer writes the next (measured: 1 MiB messages 13% faster than with
/// half-ring pieces, and the consumer sleeps far less often).
const MAX_PIECE: usize = 64 * 1024;
/// The consumer hands consumed bytes back in batches of this many (at most a quarter of the
/// ring), and whenever it finds the ring empty. Each hand-back is a store to a line the
/// producer reads and a SeqCst fence (the wake-up Dekker), which waits for that store to
/// leave the core: per message it cost about a quarter of the consumer's time at 8 bytes,
/// and in a round trip it sat on the critical path before the reply.
const RELEASE_BATCH: u64 = 4096;

/// Why a ring cannot be used. The connection that owns it is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RingError {
    /// The shared memory holds something the protocol cannot produce.
    Corrupted(&'static str),
    /// A message grew past the receiver's size limit.
    TooLarge { at_least: usize, limit: usize },
}

impl std::fmt::Display for RingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RingError::Corrupted(what) => write!(f, "the shared ring is corrupted: {what}"),
            RingError::TooLarge { at_least, limit } => write!(
                f,
                "a message of at least {at_least} bytes is over the limit of {limit}"
            ),
        }
    }
}

fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// Raw access to one ring: a header and a data region of `capacity` bytes.
pub(crate) struct Ring {
    header: NonNull<RingHeader>,
    data: NonNull<u8>,
    capacity: usize,
}

// SAFETY: a Ring is only pointers into memory that `from_parts`/`from_mapping` callers promise
// stays valid while the Ring lives; all shared state is accessed through atomics, and the data
// region is split between exactly one producer and one consumer by the head/tail protocol.
unsafe impl Send for Ring {}

impl Ring {
    /// A ring over a header and a separate data region (heap-backed rings in tests).
    ///
    /// # Safety
    /// `header` must point to a valid `RingHeader` and `data` to `capacity` bytes, both valid
    /// for reads and writes for as long as the returned `Ring` (and any producer or consumer
    /// made from it) is used. `capacity` must satisfy [`header::valid_capacity`].
    pub(crate) unsafe fn from_parts(
        header: NonNull<RingHeader>,
        data: NonNull<u8>,
        capacity: usize,
    ) -> Ring {
        debug_assert!(header::valid_capacity(capacity));
        Ring {
            header,
            data,
            capacity,
        }
    }

    /// A ring over a whole mapping: the header at its start, data after `HEADER_SIZE`.
    ///
    /// # Safety
    /// `base` must be 64-byte aligned and valid for reads and writes of `len` bytes for as long
    /// as the returned `Ring` is used, and the memory must be initialised (a fresh mapping is
    /// zeroed, which is a valid header).
    pub(crate) unsafe fn from_mapping(base: NonNull<u8>, len: usize) -> Result<Ring, RingError> {
        let capacity = len.saturating_sub(HEADER_SIZE);
        if !header::valid_capacity(capacity) {
            return Err(RingError::Corrupted(
                "mapping size is not header + a valid capacity",
            ));
        }
        if base.as_ptr() as usize % 64 != 0 {
            return Err(RingError::Corrupted("mapping is not 64-byte aligned"));
        }
        // SAFETY: `base + HEADER_SIZE` is within the `len` bytes the caller vouches for.
        let data = unsafe { base.add(HEADER_SIZE) };
        // SAFETY: the caller vouches for `len` bytes at `base`; the header fits in the first
        // HEADER_SIZE of them and is aligned; data is the remaining `capacity` bytes.
        Ok(unsafe { Ring::from_parts(base.cast(), data, capacity) })
    }

    fn header(&self) -> &RingHeader {
        // SAFETY: `from_parts` callers guarantee the header stays valid while `self` lives.
        unsafe { self.header.as_ref() }
    }

    /// Writes the identity fields (the creator, before handing the memory to the peer).
    pub(crate) fn init(&self) {
        let h = self.header();
        // SYNC POINT: these Release stores pair with the Acquire loads in `validate`; in
        // practice the peer also synchronises through the socket that carries the memfd.
        h.capacity.store(self.capacity as u32, Ordering::Release);
        h.version.store(LAYOUT_VERSION, Ordering::Release);
        h.magic.store(MAGIC, Ordering::Release);
    }

    /// Checks the identity fields (the side that received the memory).
    pub(crate) fn validate(&self) -> Result<(), RingError> {
        let h = self.header();
        // SYNC POINT: Acquire pairs with the Release stores in `init`.
        if h.magic.load(Ordering::Acquire) != MAGIC {
            return Err(RingError::Corrupted("bad magic"));
        }
        if h.version.load(Ordering::Acquire) != LAYOUT_VERSION {
            return Err(RingError::Corrupted("unknown layout version"));
        }
        if h.capacity.load(Ordering::Acquire) as usize != self.capacity {
            return Err(RingError::Corrupted("capacity does not match the mapping"));
        }
        Ok(())
    }

    /// Marks the consumer side closed without a `Consumer` (one that could not attach).
    pub(crate) fn close_as_consumer(&self) {
        // SYNC POINT: Release pairs with the Acquire in `Producer::consumer_closed`.
        self.header().consumer_closed.store(1, Ordering::Release);
    }

    fn offset(&self, pos: u64) -> usize {
        (pos & (self.capacity as u64 - 1)) as usize
    }

    /// Copies `src` into the data region at `off`.
    ///
    /// # Safety
    /// `off + src.len() <= capacity`, and the bytes are owned by the caller's side.
    unsafe fn write_at(&self, off: usize, src: &[u8]) {
        debug_assert!(off + src.len() <= self.capacity);
        // SAFETY: in bounds per the caller; the region is not being read by the peer because
        // it lies between head and tail + capacity (producer-owned).
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.data.as_ptr().add(off), src.len())
        }
    }

    /// Reads the 8-byte frame header at `off` once, into locals.
    ///
    /// # Safety
    /// `off + 8 <= capacity`.
    unsafe fn read_frame_header(&self, off: usize) -> (u32, u32) {
        // SAFETY: in bounds per the caller; a volatile read so the value is fetched exactly
        // once even if a hostile peer changes it meanwhile (we validate this copy only).
        let raw: [u8; 8] =
            unsafe { std::ptr::read_volatile(self.data.as_ptr().add(off).cast::<[u8; 8]>()) };
        let len = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let flags = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
        (len, flags)
    }
}

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
    /// Publish with a compiler fence only (see [`Producer::go_light`]).
    light: bool,
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
        Ok(Producer {
            ring,
            head,
            cached_tail: tail,
            light: false,
        })
    }

    /// From now on, publish with a compiler fence instead of a SeqCst fence. Only for a
    /// producer whose process is registered for expedited global `membarrier`: the consumer
    /// sees the flag set here and runs the heavy fence before it sleeps, which stands in for
    /// ours (`sys/membarrier.rs`).
    pub(crate) fn go_light(&mut self) {
        let h = self.ring.header();
        // Relaxed, then a SeqCst fence before any light publish: with the consumer's fence in
        // `prepare_wait_with` (store waiting, fence, load this flag), either the consumer
        // sees the flag and runs the heavy fence, or its waiting store is visible to our
        // first light publish's load of `consumer_waiting`.
        h.producer_light.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.light = true;
    }

    /// Back to a SeqCst fence per publish (a `fork()` child whose registration failed). The
    /// header flag stays set: the consumer's heavy fences are then merely unneeded.
    pub(crate) fn go_fenced(&mut self) {
        self.light = false;
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
        // `head` (Release in `try_push`, Acquire in `Consumer::try_pop`).
        self.ring
            .header()
            .producer_claim
            .compare_exchange(token, next, Ordering::Relaxed, Ordering::Relaxed)
            .ok()
            .map(|_| next)
    }

    /// The largest piece payload this ring carries; longer messages go in several pieces.
    pub(crate) fn max_piece(&self) -> usize {
        ((self.ring.capacity / 2).min(MAX_PIECE) - FRAME_HEADER) & !7
    }

    /// Publishes one piece if there is room. `payload.len()` must be at most `max_piece`.
    pub(crate) fn try_push(&mut self, payload: &[u8], last: bool) -> Result<Push, RingError> {
        debug_assert!(payload.len() <= self.max_piece());
        // The consumer refuses empty pieces that are not the last (see `try_pop`).
        debug_assert!(last || !payload.is_empty());
        let (pad, need) = self.space_for(payload.len());
        if !self.has_room(pad + need)? {
            return Ok(Push::Full);
        }
        let mut pos = self.head;
        let mut off = self.ring.offset(self.head);
        if pad != 0 {
            let frame = frame_header((pad - FRAME_HEADER) as u32, FLAG_PAD);
            // SAFETY: `off + 8 <= cap` since offsets are multiples of 8 below `cap`; the
            // space is ours (has_room).
            unsafe { self.ring.write_at(off, &frame) };
            pos = pos.wrapping_add(pad as u64);
            off = 0;
        }
        let flags = if last { FLAG_LAST } else { 0 };
        let frame = frame_header(payload.len() as u32, flags);
        // SAFETY: `off + need <= cap` (either it fit before the end, or off is 0 and need is
        // at most half the capacity); the space is ours (has_room).
        unsafe {
            self.ring.write_at(off, &frame);
            self.ring.write_at(off + FRAME_HEADER, payload);
        }
        pos = pos.wrapping_add(need as u64);
        self.head = pos;
        let h = self.ring.header();
        // SYNC POINT: Release publishes the frame bytes written above; pairs with the
        // consumer's Acquire load of `head` in `Consumer::try_pop` / `prepare_wait`.
        h.head.store(pos, Ordering::Release);
        // Dekker with `Consumer::prepare_wait`: our store of `head`, this SeqCst fence, then
        // our load of `consumer_waiting`; the consumer stores `consumer_waiting`, fences, then
        // loads `head`. The two fences order the pairs, so at least one side sees the other's
        // store: either the consumer sees the new head and stays awake, or we see it waiting.
        // A light producer (`go_light`) leaves its half to the consumer's heavy fence.
        // The sleeper clears its own flag when it wakes; until then every publish notifies,
        // which costs an extra wake-up at worst, never a lost one.
        if self.light {
            // The consumer's heavy fence stands in for ours (`go_light`); only the compiler
            // must keep the load after the store.
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
        let wake = h.consumer_waiting.load(Ordering::Relaxed) == 1;
        Ok(Push::Done { wake })
    }

    /// The padding and frame bytes a piece of `len` bytes takes at the current head.
    fn space_for(&self, len: usize) -> (usize, usize) {
        let need = FRAME_HEADER + align8(len);
        let contiguous = self.ring.capacity - self.ring.offset(self.head);
        let pad = if contiguous >= need { 0 } else { contiguous };
        (pad, need)
    }

    /// Whether a piece of `len` bytes fits now.
    pub(crate) fn has_room_for(&mut self, len: usize) -> Result<bool, RingError> {
        let (pad, need) = self.space_for(len);
        self.has_room(pad + need)
    }

    /// Whether `bytes` fit now, reloading `tail` only when the cached value says no.
    fn has_room(&mut self, bytes: usize) -> Result<bool, RingError> {
        let cap = self.ring.capacity as u64;
        if cap - self.head.wrapping_sub(self.cached_tail) >= bytes as u64 {
            return Ok(true);
        }
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
        let (pad, need) = self.space_for(len);
        let room = self.has_room(pad + need)? || self.consumer_closed();
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
    pub(crate) fn consumer_closed(&self) -> bool {
        // SYNC POINT: Acquire pairs with the Release store in `Consumer::close`.
        self.ring.header().consumer_closed.load(Ordering::Acquire) != 0
    }

    /// Announces that nothing more will be published. Returns whether the consumer sleeps
    /// and must be woken to see it.
    pub(crate) fn close(&self) -> bool {
        let h = self.ring.header();
        // SYNC POINT: Release after the last head store; pairs with the Acquire load in
        // `Consumer::try_pop`, which then sees every published frame.
        h.producer_closed.store(1, Ordering::Release);
        fence(Ordering::SeqCst);
        h.consumer_waiting.load(Ordering::Relaxed) == 1
    }
}

fn frame_header(len: u32, flags: u32) -> [u8; 8] {
    let mut f = [0u8; 8];
    f[..4].copy_from_slice(&len.to_le_bytes());
    f[4..].copy_from_slice(&flags.to_le_bytes());
    f
}

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

/// The reading side. Exactly one per ring.
pub(crate) struct Consumer {
    ring: Ring,
    /// Our copy of `tail`: the bytes we have consumed. Only we write the shared one.
    tail: u64,
    /// The `tail` we last stored in the header (handed back to the producer).
    released: u64,
    /// The last `head` we read and validated.
    cached_head: u64,
    /// The largest message we accept, in bytes.
    limit: usize,
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
            released: tail,
            cached_head: tail,
            limit,
        })
    }

    /// The bytes consumed so far (our `tail`; the header's may lag by a batch).
    #[cfg(fuzzing)]
    pub(crate) fn consumed(&self) -> u64 {
        self.tail
    }

    /// Reads `head` once and checks it against our `tail`.
    fn load_head(&mut self) -> Result<u64, RingError> {
        // SYNC POINT: Acquire pairs with the producer's Release store of `head`: the frame
        // bytes before it are visible.
        let head = self.ring.header().head.load(Ordering::Acquire);
        if head.wrapping_sub(self.tail) > self.ring.capacity as u64 {
            return Err(RingError::Corrupted(
                "head is behind tail or ahead by more than the capacity",
            ));
        }
        self.cached_head = head;
        Ok(head)
    }

    /// Appends the next piece's payload to `out` (which holds the message's earlier pieces).
    pub(crate) fn try_pop(&mut self, out: &mut Vec<u8>) -> Result<Pop, RingError> {
        let mut wake = false;
        loop {
            if self.tail == self.cached_head && self.load_head()? == self.tail {
                wake |= self.hand_back();
                // SYNC POINT: Acquire pairs with the Release in `Producer::close`; a head
                // published before the close is then visible to the reload below.
                if self.ring.header().producer_closed.load(Ordering::Acquire) == 0 {
                    return Ok(Pop::Empty { wake });
                }
                if self.load_head()? == self.tail {
                    return Ok(Pop::Closed);
                }
            }
            let avail = self.cached_head.wrapping_sub(self.tail) as usize;
            let off = self.ring.offset(self.tail);
            let contiguous = self.ring.capacity - off;
            if avail < FRAME_HEADER {
                return Err(RingError::Corrupted("a partial frame header was published"));
            }
            // SAFETY: `off` is a multiple of 8 below the capacity (our tail only advances by
            // multiples of 8), so `off + 8 <= capacity`.
            let (len, flags) = unsafe { self.ring.read_frame_header(off) };
            let len = len as usize;
            if flags == FLAG_PAD {
                // A producer pads only when a frame does not fit before the end, which never
                // happens at offset 0.
                if len + FRAME_HEADER != contiguous || avail < contiguous || off == 0 {
                    return Err(RingError::Corrupted("padding that a producer never writes"));
                }
                wake |= self.release(contiguous);
                continue;
            }
            if flags & !FLAG_LAST != 0 {
                return Err(RingError::Corrupted("unknown frame flags"));
            }
            if len == 0 && flags & FLAG_LAST == 0 {
                // It would let a peer keep us busy forever without nearing the size limit.
                return Err(RingError::Corrupted("an empty piece that is not the last"));
            }
            let need = FRAME_HEADER + align8(len);
            if len > self.ring.capacity / 2 || need > contiguous || need > avail {
                return Err(RingError::Corrupted(
                    "frame length exceeds what was published",
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
            // SAFETY: `off + 8 + len <= capacity` (checked: need <= contiguous), so the source
            // is in bounds; `out` has room for `len` more bytes (reserved); the published bytes
            // are initialised. Copying out before decoding means no byte is read twice.
            unsafe {
                let src = self.ring.data.as_ptr().add(off + FRAME_HEADER);
                std::ptr::copy_nonoverlapping(src, out.as_mut_ptr().add(out.len()), len);
                out.set_len(total);
            }
            wake |= self.release(need);
            return Ok(Pop::Piece {
                last: flags & FLAG_LAST != 0,
                wake,
            });
        }
    }

    /// Marks `bytes` consumed, and hands them back to the producer once a batch has
    /// gathered; true when the producer sleeps and must be woken.
    fn release(&mut self, bytes: usize) -> bool {
        self.tail = self.tail.wrapping_add(bytes as u64);
        let batch = (self.ring.capacity as u64 / 4).min(RELEASE_BATCH);
        self.tail.wrapping_sub(self.released) >= batch && self.hand_back()
    }

    /// Stores our `tail` in the header if it moved; true when the producer sleeps and must
    /// be woken.
    fn hand_back(&mut self) -> bool {
        if self.released == self.tail {
            return false;
        }
        self.released = self.tail;
        let h = self.ring.header();
        // SYNC POINT: Release pairs with the producer's Acquire load of `tail` in `has_room`:
        // we are done reading the space we give back.
        h.tail.store(self.tail, Ordering::Release);
        // Dekker with `Producer::prepare_wait` (store tail, fence, load waiting).
        fence(Ordering::SeqCst);
        h.producer_waiting.load(Ordering::Relaxed) == 1
    }

    /// Announces a sleep on an empty ring. Returns false if something was published (or the
    /// producer closed) meanwhile: then do not sleep. Call `end_wait` after sleeping.
    ///
    /// Call it after `try_pop` returned `Empty`, which hands every consumed byte back; if
    /// some were consumed since, it returns false (do not sleep: the producer may be waiting
    /// for them, and only `try_pop` reports the wake-up it needs).
    #[cfg(any(fuzzing, loom))]
    pub(crate) fn prepare_wait(&mut self) -> Result<bool, RingError> {
        // The models' and fuzz drivers' producers never go light; a hostile one may set the
        // flag anyway, and then there is no other process to fence.
        self.prepare_wait_with(|| {})
    }

    /// [`Consumer::prepare_wait`], running `heavy_fence` (a `membarrier` that makes the
    /// producer's process execute a full barrier) when the producer publishes light.
    pub(crate) fn prepare_wait_with(
        &mut self,
        heavy_fence: impl FnOnce(),
    ) -> Result<bool, RingError> {
        if self.released != self.tail {
            return Ok(false);
        }
        let h = self.ring.header();
        h.consumer_waiting.store(1, Ordering::Relaxed);
        // Dekker with `Producer::try_push` (store head, fence, load waiting), and with
        // `Producer::go_light` (store the flag, fence, then its publishes load waiting).
        fence(Ordering::SeqCst);
        // Relaxed: ordered by the fence above against the producer's fence in `go_light`.
        if h.producer_light.load(Ordering::Relaxed) != 0 {
            // The producer's publishes carry no fence: this one forces a full barrier on its
            // threads between our store of `consumer_waiting` and our load of `head`.
            heavy_fence();
        }
        // SYNC POINT: Acquire pairs with the Release in `Producer::close`.
        let idle = self.load_head()? == self.tail
            && self.ring.header().producer_closed.load(Ordering::Acquire) == 0;
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
        // SYNC POINT: Release pairs with the Acquire in `Producer::consumer_closed`.
        h.consumer_closed.store(1, Ordering::Release);
        fence(Ordering::SeqCst);
        h.producer_waiting.load(Ordering::Relaxed) == 1
    }
}
