//! The copy floor (`oneway_{4KiB,1MiB}/floor`, `record_64KiB/floor`): messages streamed
//! from a child to this process through bare shared memory, one copy per side and nothing
//! else: the child copies each message into a ring of 64 KiB slots (a message above 64 KiB
//! in 64 KiB pieces), the parent copies it out into a fresh buffer. No encoding, no framing,
//! no system call, no check. What the shm backend does for a byte payload, less everything
//! but its two copies: the least any transport that hands the receiver a buffer of its own
//! can do. (iceoryx2's receiver reads the sample where it lies: one copy in all.)
//!
//! The ring is the size of conduit's default shm ring (1 MiB: sixteen slots), and its
//! pieces are the shm ring's largest. The mapping's first page holds the parent's two words,
//! how many pieces the child may send (`BUDGET`; `STOP` tells it to leave) and how many the
//! parent has copied out (`TAKEN`), and each slot's header (the number of the piece in it,
//! from 1), each on a line of its own; the page-aligned slots follow.

use std::hint::black_box;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use memmap2::MmapRaw;

use super::{inherited, shared, slot, STOP};
use crate::{ChildGuard, ARG_A, ARG_SIZE, PATIENCE};

/// The largest piece, and the pieces the ring holds.
pub const PIECE: usize = 64 << 10;
const SLOTS: usize = 16;
/// The parent's words, each on a line of its own (past the adjacent-line prefetcher's
/// pair), the slots' headers (likewise), and where the page-aligned slots begin.
const BUDGET: usize = 0;
const TAKEN: usize = 128;
const HEADERS_AT: usize = 256;
const SLOTS_AT: usize = 4096;

/// Waits until `ready` holds, spinning, and yielding the core every 64 turns (as the shm
/// backend's own spinning does), so a peer that shares this core still gets to run: the
/// floor measures copies, not a scheduler starving the one process that could progress.
/// With `patience`, panics after that long without it: the parent's child is gone or stuck,
/// and a benchmark must not hang. (The child waits without a bound: between benchmarks it
/// has nothing to send, and it dies with its parent.)
fn spin_until(mut ready: impl FnMut() -> bool, patience: Option<Duration>) {
    let mut turns = 0u32;
    let mut since: Option<Instant> = None;
    while !ready() {
        std::hint::spin_loop();
        turns = turns.wrapping_add(1);
        if turns % 64 == 0 {
            std::thread::yield_now();
            if let Some(patience) = patience {
                let since = *since.get_or_insert_with(Instant::now);
                assert!(
                    since.elapsed() < patience,
                    "the copy floor's child sent nothing for {patience:?}"
                );
            }
        }
    }
}

/// Where the header of piece `seq` (from 1) sits, and where the piece does.
fn header_at(seq: u64) -> usize {
    HEADERS_AT + (seq - 1) as usize % SLOTS * 128
}
fn piece_at(seq: u64) -> usize {
    SLOTS_AT + (seq - 1) as usize % SLOTS * PIECE
}

/// The parent's side: the mapping and the child copying into it.
pub struct Copies {
    map: MmapRaw,
    /// Bytes per message.
    size: usize,
    /// The last piece copied out (and the last one asked for: every batch is drained).
    seq: u64,
    _child: ChildGuard,
}

impl Copies {
    /// A child sending messages of `size` bytes.
    pub fn start(size: usize) -> Copies {
        let (file, map) = shared(c"conduit-bench-floor-copies", SLOTS_AT + SLOTS * PIECE);
        let child = ChildGuard::spawn(
            "floor_copies",
            &[
                (ARG_A, file.as_raw_fd().to_string()),
                (ARG_SIZE, size.to_string()),
            ],
        );
        Copies {
            map,
            size,
            seq: 0,
            _child: child,
        }
    }

    /// Has the child send `iters + 1` messages and times the last `iters`, as the streams of
    /// `benches/shm.rs` do: the clock starts when the first message has been copied out.
    /// With `read_pages`, the first byte of every 4 KiB page of each message is read, as
    /// `record_64KiB`'s receiver reads its records.
    pub fn receive(&mut self, iters: u64, read_pages: bool) -> Duration {
        let pieces = self.size.div_ceil(PIECE) as u64;
        // Release pairs with the child's Acquire of `BUDGET` (no data rides on it).
        slot(&self.map, BUDGET).store(self.seq + (iters + 1) * pieces, Ordering::Release);
        black_box(self.take());
        let start = Instant::now();
        for _ in 0..iters {
            let buf = self.take();
            if read_pages {
                for page in buf.chunks(4096) {
                    black_box(page[0]);
                }
            }
            black_box(buf);
        }
        start.elapsed()
    }

    /// Waits for the next message's pieces and copies them out into a fresh buffer.
    fn take(&mut self) -> Vec<u8> {
        let mut buf: Vec<u8> = Vec::with_capacity(self.size);
        while buf.len() < self.size {
            let len = PIECE.min(self.size - buf.len());
            self.seq += 1;
            let at = header_at(self.seq);
            let (header, seq) = (slot(&self.map, at), self.seq);
            // Acquire pairs with the child's Release store of the header: the piece it
            // wrote before is visible.
            spin_until(|| header.load(Ordering::Acquire) == seq, Some(PATIENCE));
            // SAFETY: the slot lies inside the mapping (`piece_at` + PIECE <= SLOTS_AT +
            // SLOTS * PIECE, its length, and len <= PIECE) and `buf` has room for `len` more
            // bytes (its capacity is the message's size). The child wrote these bytes before
            // the header we saw (Acquire, above) and writes this slot again only after our
            // store of `TAKEN` below: no write overlaps this read. Raw pointers, not a
            // slice: the child writes the mapping too.
            unsafe {
                let src = self.map.as_ptr().add(piece_at(seq));
                std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr().add(buf.len()), len);
                buf.set_len(buf.len() + len);
            }
            // Release pairs with the child's Acquire of `TAKEN` in `copies_child`: our read
            // of the slot is done before it writes the slot again.
            slot(&self.map, TAKEN).store(self.seq, Ordering::Release);
        }
        buf
    }
}

impl Drop for Copies {
    fn drop(&mut self) {
        // Release pairs with the child's Acquire of `BUDGET`: it sees STOP and leaves.
        slot(&self.map, BUDGET).store(STOP, Ordering::Release);
    }
}

/// Copies each message, piece by piece, into the next slots whenever the budget allows and
/// the slot has been copied out, until told to stop.
pub fn copies_child() {
    let map = inherited();
    let size: usize = std::env::var(ARG_SIZE)
        .expect("the copy floor's message size")
        .parse()
        .expect("a message size");
    let message = vec![0xC3u8; size];
    let (budget, taken) = (slot(&map, BUDGET), slot(&map, TAKEN));
    let mut seq = 0u64;
    for piece in message.chunks(PIECE).cycle() {
        seq += 1;
        // Acquire pairs with the parent's Release stores of `BUDGET` and `TAKEN`: the slot
        // is free once the parent has copied out the piece SLOTS before this one.
        let mut stop = false;
        spin_until(
            || {
                let allowed = budget.load(Ordering::Acquire);
                stop = allowed == STOP;
                stop || (seq <= allowed && taken.load(Ordering::Acquire) + SLOTS as u64 >= seq)
            },
            None,
        );
        if stop {
            return;
        }
        let at = header_at(seq);
        // SAFETY: inside the mapping, as in `Copies::take` (a piece is at most PIECE). The
        // parent finished reading this slot before its store of `TAKEN` we saw above, and
        // reads it again only after the header store below: no access overlaps this write.
        unsafe {
            let dst = map.as_mut_ptr().add(piece_at(seq));
            std::ptr::copy_nonoverlapping(piece.as_ptr(), dst, piece.len())
        };
        // Release pairs with the parent's Acquire in `Copies::take`: the piece is visible to it
        // once it sees the header.
        slot(&map, at).store(seq, Ordering::Release);
    }
}
