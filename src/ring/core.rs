//! The single-producer single-consumer frame ring: pure logic over raw memory and the sync
//! shim's atomics. No allocation on the producer side, no system calls, no blocking: the shm
//! flavor decides when to spin, sleep and wake.
//!
//! A frame is an 8-byte header word, then the payload padded to 8 bytes. The header word
//! (little-endian `u64`) is `len: u32 | stamp: u32`, where the stamp is the frame's position
//! (its low 32 bits, a multiple of 8) with the flags in its three low bits. The producer
//! writes the payload first and the header word last, with one Release store: **the header
//! is the commit**. The consumer polls the header word at its own position and needs nothing
//! else, so a message costs the consumer one cache-line transfer (header and a small payload
//! share a line), not two (a shared `head`, then the frame). `head` is still stored in the
//! control block, on a line only the producer writes, for a producer that takes the ring
//! over (a child process, a `fork()`).
//!
//! The producer keeps the next header slot clear: before it commits a frame it zeroes the
//! word just past it (it always keeps those 8 bytes free), so the word at the consumer's
//! position holds either zero or the header committed for exactly that position, never a
//! stale header or old payload bytes that happen to look like one. A frame never wraps: when
//! it does not fit before the end of the data region, a padding frame fills the rest and the
//! frame starts at offset 0 (the frame is committed before the padding, so the consumer
//! never polls offset 0 before it is ready). A piece is at most [`Producer::max_piece`]
//! bytes (a little under half the capacity, and at most 64 KiB), so an empty ring always has
//! room for one.
//!
//! The consumer distrusts the producer (it may be another process, buggy or hostile): it
//! reads each header word once into a local, checks its stamp against its own position and
//! every length against the capacity, and copies the payload out before anyone decodes it.

use std::ptr::NonNull;

use super::header::{self, RingHeader, HEADER_SIZE, LAYOUT_VERSION, MAGIC};
use crate::sync::{AtomicU64, Ordering};

pub(crate) use super::consumer::{Consumer, Taken};
pub(crate) use super::producer::{Piece, Producer};
// The single steps under the loops above, for the unit tests, models and property drivers.
#[cfg(any(test, fuzzing))]
pub(crate) use super::{consumer::Pop, producer::Push};

/// Bytes in a frame header (one `u64` word).
pub(crate) const FRAME_HEADER: usize = 8;
/// Flag: this piece ends its message.
pub(crate) const FLAG_LAST: u32 = 1;
/// Flag: padding up to the end of the data region; no payload.
pub(crate) const FLAG_PAD: u32 = 2;
/// Flag: set in every committed header, so a zeroed slot reads as "nothing yet".
pub(crate) const FLAG_COMMIT: u32 = 4;
/// The stamp's bits that hold flags (positions are multiples of 8).
pub(super) const FLAG_MASK: u32 = 7;
/// Pieces are at most this big even in large rings, so the consumer can copy one piece out
/// while the producer writes the next (measured: 1 MiB messages 13% faster than with
/// half-ring pieces, and the consumer sleeps far less often).
pub(super) const MAX_PIECE: usize = 64 * 1024;
/// The consumer checks whether the producer sleeps (the wake-up Dekker's SeqCst fence) once
/// this many bytes (at most a quarter of the ring) have been consumed since it last did, and
/// whenever it finds the ring empty; it stores `tail` after every frame. A fence per frame
/// waits for the `tail` store to leave the core: per message it cost about a quarter of the
/// consumer's time at 8 bytes, and in a round trip it sat on the critical path before the
/// reply.
pub(super) const RELEASE_BATCH: u64 = 4096;

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

impl std::error::Error for RingError {}

pub(super) fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// Raw access to one ring: a header and a data region of `capacity` bytes.
pub(crate) struct Ring {
    header: NonNull<RingHeader>,
    pub(super) data: NonNull<u8>,
    pub(super) capacity: usize,
    /// Under loom, header words live in a table of loom atomics beside the data (loom cannot
    /// overlay its atomics on raw memory): one per 8 data bytes.
    #[cfg(all(test, loom))]
    slots: NonNull<AtomicU64>,
    /// Under loom, one tracked cell per 8 data bytes: every payload write and read touches
    /// the cells of its words, so loom reports a producer writing space the consumer's reads
    /// of it do not happen before (a frame overwritten while it is copied out).
    #[cfg(all(test, loom))]
    cells: NonNull<loom::cell::UnsafeCell<()>>,
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
        debug_assert!(
            data.as_ptr() as usize % 8 == 0,
            "header words must be aligned"
        );
        Ring {
            header,
            data,
            capacity,
            #[cfg(all(test, loom))]
            slots: NonNull::dangling(),
            #[cfg(all(test, loom))]
            cells: NonNull::dangling(),
        }
    }

    /// Under loom: the table of header words and the payload cells, `capacity / 8` of each,
    /// valid as long as the ring is used.
    #[cfg(all(test, loom))]
    pub(crate) fn with_model(
        mut self,
        slots: NonNull<AtomicU64>,
        cells: NonNull<loom::cell::UnsafeCell<()>>,
    ) -> Ring {
        self.slots = slots;
        self.cells = cells;
        self
    }

    /// Under loom, records that this side writes (`write`) or reads the payload words
    /// covering data bytes `off..off + len`; nothing otherwise.
    #[inline(always)]
    pub(super) fn track_payload(&self, off: usize, len: usize, write: bool) {
        #[cfg(all(test, loom))]
        for word in off / 8..(off + len).div_ceil(8) {
            assert!(word < self.capacity / 8, "payload out of bounds");
            // SAFETY: the table holds `capacity / 8` cells (`with_model`); `word` is below.
            let cell = unsafe { &*self.cells.as_ptr().add(word) };
            if write {
                cell.with_mut(|_| ());
            } else {
                cell.with(|_| ());
            }
        }
        #[cfg(not(all(test, loom)))]
        let _ = (off, len, write);
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

    #[inline]
    pub(super) fn header(&self) -> &RingHeader {
        // SAFETY: `from_parts` callers guarantee the header stays valid while `self` lives.
        unsafe { self.header.as_ref() }
    }

    /// Writes the identity fields (the creator, before handing the memory to the peer).
    pub(crate) fn init(&self) {
        let h = self.header();
        // Relaxed: the peer reads these only after it received the memfd through a socket
        // (or, for a heap ring, after the threads are spawned); the `sendmsg` that carries it
        // and the `recvmsg` that takes it order these stores before its loads.
        h.capacity.store(self.capacity as u32, Ordering::Relaxed);
        h.version.store(LAYOUT_VERSION, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Relaxed);
    }

    /// Checks the identity fields (the side that received the memory).
    pub(crate) fn validate(&self) -> Result<(), RingError> {
        let h = self.header();
        // Relaxed: ordered after `init` by the socket that carried the memfd (see there).
        if h.magic.load(Ordering::Relaxed) != MAGIC {
            return Err(RingError::Corrupted("bad magic"));
        }
        if h.version.load(Ordering::Relaxed) != LAYOUT_VERSION {
            return Err(RingError::Corrupted("unknown layout version"));
        }
        if h.capacity.load(Ordering::Relaxed) as usize != self.capacity {
            return Err(RingError::Corrupted("capacity does not match the mapping"));
        }
        Ok(())
    }

    /// Marks the consumer side closed without a `Consumer` (one that could not attach).
    pub(crate) fn close_as_consumer(&self) {
        // Relaxed: the flag publishes no data (see `Consumer::close`).
        self.header().consumer_closed.store(1, Ordering::Relaxed);
    }

    #[inline]
    pub(super) fn offset(&self, pos: u64) -> usize {
        (pos & (self.capacity as u64 - 1)) as usize
    }

    /// Copies `src` into the data region at `off`, a multiple of 8, and fills the rest of
    /// its last 8-byte word with zeros. Up to 8 bytes go in one word store instead of a call
    /// to `memcpy` (8-byte messages: most frames).
    ///
    /// # Safety
    /// `off + align8(src.len()) <= capacity`, and those bytes are owned by the caller's side.
    #[inline]
    pub(super) unsafe fn write_padded(&self, off: usize, src: &[u8]) {
        debug_assert!(off % 8 == 0 && off + align8(src.len()) <= self.capacity);
        // SAFETY: in bounds per the caller; the region is not being read by the peer because
        // it lies between head and tail + capacity (producer-owned).
        let dst = unsafe { self.data.as_ptr().add(off) };
        if src.is_empty() {
            return;
        }
        self.track_payload(off, src.len(), true);
        if src.len() <= 8 {
            // Gathered in a register, not in a stack buffer: a `memcpy` into one writes it in
            // pieces, and the 8-byte load of it then waits until those pieces have left the
            // store buffer, queued behind the previous frame's stores to lines the consumer
            // is reading (most of the 8-byte sender's stalls, `perf annotate`).
            let word = src
                .iter()
                .rev()
                .fold(0u64, |word, &byte| (word << 8) | u64::from(byte));
            // SAFETY: `dst` is 8-aligned (`off` is, and so is the data region, see `slot`)
            // and the 8 bytes from it are ours (the caller's contract, `align8(len) == 8`).
            unsafe { dst.cast::<[u8; 8]>().write(word.to_le_bytes()) };
        } else {
            // SAFETY: as above, for `src.len()` bytes.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) }
        }
    }

    /// The frame-header word at data offset `off` (a multiple of 8 below the capacity).
    #[cfg(not(all(test, loom)))]
    #[inline]
    pub(super) fn slot(&self, off: usize) -> &AtomicU64 {
        assert!(
            off % 8 == 0 && off < self.capacity,
            "header slot out of bounds"
        );
        // SAFETY: `off` is in bounds (asserted) and 8-aligned, and so is the data region
        // (`from_parts`: a mapping is page-aligned, heap rings allocate `u64`s), so the
        // pointer is valid and aligned for an `AtomicU64`, which has `u64`'s layout. The
        // memory lives as long as `self` (the `from_parts` contract). Every access to a word
        // that may be a header while the peer runs is atomic: the payload copies touch only
        // bytes the protocol gives to one side at a time.
        unsafe { AtomicU64::from_ptr(self.data.as_ptr().add(off).cast::<u64>()) }
    }

    /// Asks the cache for the line after the one holding data offset `off`, where a frame
    /// committed at `off` continues when it is longer than the rest of its line. The
    /// consumer does this while it polls an empty ring, so when the header arrives the
    /// payload's second line is on its way too (measured on a 64-byte ping-pong between two
    /// threads: 500 ns → 430 ns per round trip). A hint: no load, no effect on the protocol.
    #[inline]
    pub(super) fn prefetch_line_after(&self, off: usize) {
        #[cfg(all(target_arch = "x86_64", not(miri), not(loom)))]
        if off + 64 < self.capacity {
            // `wrapping_add`: an address computation only; the pointer is in bounds anyway.
            let line = self.data.as_ptr().wrapping_add(off + 64).cast::<i8>();
            // SAFETY: a prefetch is a hint that never faults nor reads into the program; the
            // address is inside the data region (checked) in any case. `unused_unsafe`: the
            // intrinsic is `unsafe` before Rust 1.87 (our minimum is 1.86), safe after.
            #[allow(unused_unsafe)]
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line)
            };
        }
        #[cfg(not(all(target_arch = "x86_64", not(miri), not(loom))))]
        let _ = off;
    }

    /// The frame-header word at data offset `off`, in loom's table.
    #[cfg(all(test, loom))]
    pub(super) fn slot(&self, off: usize) -> &AtomicU64 {
        assert!(
            off % 8 == 0 && off < self.capacity,
            "header slot out of bounds"
        );
        // SAFETY: the table holds `capacity / 8` atomics (`with_slots`), and `off / 8` is
        // below that (asserted).
        unsafe { &*self.slots.as_ptr().add(off / 8) }
    }
}

/// The committed header word of a frame at position `pos` (a multiple of 8).
pub(crate) fn header_word(pos: u64, len: u32, flags: u32) -> u64 {
    debug_assert!(pos % 8 == 0 && flags & !FLAG_MASK == 0);
    let stamp = pos as u32 | flags | FLAG_COMMIT;
    u64::from(len) | u64::from(stamp) << 32
}
