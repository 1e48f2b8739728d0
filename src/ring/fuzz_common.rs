//! What both ring property drivers share (`hostile_ring` in `fuzz_hostile.rs`, `ring_ops` in
//! `fuzz_ops.rs`): the fuzzed ring's size, helpers that read header words and payload bytes
//! out of its data region, and the two consumer calls whose build gates differ.
//!
//! The frame format the drivers check is the one in the module doc of `ring::core`: an
//! 8-byte little-endian header word `len | stamp << 32` (stamp: the frame's position, low 32
//! bits, with `FLAG_LAST`, `FLAG_PAD` and `FLAG_COMMIT` in its three low bits), then the
//! payload padded to 8 bytes. The header is the commit: the consumer polls the word at its
//! own position and never reads `head`.

use super::core::{Consumer, FRAME_HEADER};
use super::HeapRing;

/// Data bytes of the fuzzed rings: the smallest capacity, so wrap-around is frequent.
pub(super) const CAP: usize = 4096;

/// `n` rounded up to a multiple of 8 (a frame's payload is padded to 8 bytes).
pub(super) fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// The data offset of position `pos`.
pub(super) fn offset(pos: u64) -> usize {
    (pos % CAP as u64) as usize
}

/// Reads the 8 bytes at `off` (a multiple of 8 below `CAP`) as the little-endian header word
/// the consumer sees there.
pub(super) fn word_at(ring: &HeapRing, off: usize) -> u64 {
    assert!(off % 8 == 0 && off + FRAME_HEADER <= CAP);
    let mut raw = [0u8; 8];
    // SAFETY: in bounds (asserted); single-threaded, so nobody writes meanwhile.
    unsafe { std::ptr::copy_nonoverlapping(ring.data_ptr().add(off), raw.as_mut_ptr(), 8) };
    u64::from_le_bytes(raw)
}

/// Copies the `len` bytes at data offset `off` out of the ring, as the consumer sees them.
pub(super) fn bytes_at(ring: &HeapRing, off: usize, len: usize) -> Vec<u8> {
    assert!(off + len <= CAP, "bytes across the end of the ring");
    let mut held = vec![0u8; len];
    // SAFETY: `off + len <= CAP` (asserted); single-threaded, so nobody writes meanwhile.
    unsafe { std::ptr::copy_nonoverlapping(ring.data_ptr().add(off), held.as_mut_ptr(), len) };
    held
}

/// Asserts that the consumer's own position is `pos`, the position the driver worked out
/// from the frame format.
pub(super) fn assert_consumed(consumer: &Consumer, pos: u64, what: &str) {
    assert_eq!(consumer.consumed(), pos, "{what}");
}
