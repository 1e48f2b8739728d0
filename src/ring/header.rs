//! The ring's header: the shared control block at the start of the mapping.
//!
//! Each side's fields sit on their own cache line so the producer and consumer never write
//! the same line on the fast path; the two "waiting" flags and the two "closed" flags are
//! written rarely and live on lines of their own, so reading them costs no line transfer.
//!
//! Positions are byte counters that only grow (`u64`; all arithmetic on them wraps, because a
//! peer may start them anywhere, even just below `u64::MAX`); the byte at position `p` lives
//! at data offset `p & (capacity - 1)`. Because they never alias, "full"
//! and "empty" are unambiguous: `head - tail` is the number of bytes in the ring.

use crate::sync::{AtomicU32, AtomicU64};

/// "conduit ring v1", as a little-endian u64.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"CDTRING1");
/// The layout version; bump on any change to this file or to the frame format.
pub(crate) const LAYOUT_VERSION: u32 = 4;
/// Bytes the header occupies before the data region (a multiple of the cache line).
pub(crate) const HEADER_SIZE: usize = 512;
/// Smallest and largest data capacities accepted (powers of two).
pub(crate) const MIN_CAPACITY: usize = 4096;
/// Largest data capacity accepted: 1 GiB.
pub(crate) const MAX_CAPACITY: usize = 1 << 30;

/// A cache line's worth of padding after `n` bytes of fields.
type Pad<const N: usize> = [u8; N];

/// The control block. `repr(C)` so both processes agree on offsets; every field is an atomic
/// (or padding), and all-zero bytes are a valid value, so it can be viewed in a zeroed
/// mapping before `init` writes the identity fields.
#[repr(C, align(64))]
pub(crate) struct RingHeader {
    // Line 0: identity, written once by the creator before the peer ever sees the mapping.
    pub(crate) magic: AtomicU64,
    pub(crate) version: AtomicU32,
    /// Data bytes; a power of two.
    pub(crate) capacity: AtomicU32,
    _pad0: Pad<48>,
    // Line 1: written by the producer on every publish, read by nobody else while it runs
    // (the consumer polls the frame headers in the data region, see `core.rs`).
    /// Bytes ever published: where a producer that takes the ring over starts.
    pub(crate) head: AtomicU64,
    _pad1: Pad<56>,
    // Line 2: written by the consumer on every release.
    /// Bytes ever released back to the producer.
    pub(crate) tail: AtomicU64,
    _pad2: Pad<56>,
    // Line 3: the consumer announces it is about to sleep (1) or awake (0).
    pub(crate) consumer_waiting: AtomicU32,
    _pad3: Pad<60>,
    // Line 4: the producer announces it is about to sleep on a full ring.
    pub(crate) producer_waiting: AtomicU32,
    _pad4: Pad<60>,
    // Line 5: orderly shutdown flags (a crash is noticed through the rendezvous socket).
    /// The producer will publish nothing more.
    pub(crate) producer_closed: AtomicU32,
    /// The consumer will read nothing more.
    pub(crate) consumer_closed: AtomicU32,
    _pad5: Pad<56>,
    // Line 6: which process may produce, once a `fork()` has put the producer's handle in
    // two processes. A token, not a pid: every claim moves it on by one (see
    // `Producer::claim`), so of the processes that share one token exactly one can claim.
    pub(crate) producer_claim: AtomicU64,
    _pad6: Pad<56>,
}

const _: () = assert!(std::mem::size_of::<RingHeader>() <= HEADER_SIZE || cfg!(loom));

impl RingHeader {
    /// A fresh header (for heap-backed rings in tests and loom models).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn new() -> RingHeader {
        RingHeader {
            magic: AtomicU64::new(0),
            version: AtomicU32::new(0),
            capacity: AtomicU32::new(0),
            _pad0: [0; 48],
            head: AtomicU64::new(0),
            _pad1: [0; 56],
            tail: AtomicU64::new(0),
            _pad2: [0; 56],
            consumer_waiting: AtomicU32::new(0),
            _pad3: [0; 60],
            producer_waiting: AtomicU32::new(0),
            _pad4: [0; 60],
            producer_closed: AtomicU32::new(0),
            consumer_closed: AtomicU32::new(0),
            _pad5: [0; 56],
            producer_claim: AtomicU64::new(0),
            _pad6: [0; 56],
        }
    }
}

/// Whether `capacity` is one this layout accepts.
pub(crate) fn valid_capacity(capacity: usize) -> bool {
    capacity.is_power_of_two() && (MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity)
}

/// The capacity to use for a requested number of bytes: the next power of two, clamped.
pub(crate) fn capacity_for(requested: usize) -> usize {
    requested
        .clamp(MIN_CAPACITY, MAX_CAPACITY)
        .next_power_of_two()
        .min(MAX_CAPACITY)
}
