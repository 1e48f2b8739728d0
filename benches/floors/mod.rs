//! The hardware floors `benches/shm.rs` measures the shm backend against: two processes
//! passing data over a shared `MAP_SHARED` memfd with raw atomics, no system call, no
//! encoding, no checks.
//!
//! - [`Floor`] (`rtt_64B/floor`): a counter bounced over one cache line each way, the
//!   machine's own cost of one cross-process (cross-core) round trip.
//! - [`Frames`] (`rtt_64B/floor_frames`): a 64-byte message each way in a bare ring of
//!   frames laid out as conduit's are (an 8-byte header stored last, the payload before it,
//!   frames following each other around the ring), copied out by the receiver. A 64-byte
//!   message and its header take 72 bytes, so every hop moves two cache lines: the least any
//!   framed ring can move for 64 bytes, and what the shm backend's 64-byte round trip is
//!   bound by.
//!
//! - [`Copies`] (`oneway_{4KiB,1MiB}/floor`, `record_64KiB/floor`; `copies.rs`): messages
//!   streamed through a ring of 64 KiB slots, one copy in and one copy out into a fresh
//!   buffer: the least one copy per side costs, what the shm backend's byte payloads are
//!   bound by.
//!
//! The child halves run in a child process ([`floor_child`], [`frames_child`],
//! [`copies_child`]); they leave when the parent stores the stop value (on drop) or dies
//! (`PR_SET_PDEATHSIG`).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memmap2::MmapRaw;

use super::{ChildGuard, ARG_A};

mod copies;
pub use copies::{copies_child, Copies};

/// The one-line floor's shared page: the parent's counter, and the child's echo two lines
/// further (past the adjacent-line prefetcher's pair), so each line has one writer.
const PING: usize = 0;
const PONG: usize = 128;
const PAGE: usize = 4096;
/// The counter (or frame header) value that tells the child to leave.
const STOP: u64 = u64::MAX;

/// Each direction's ring in the framed floor, and the message it carries.
const RING: usize = 64 << 10;
const PAYLOAD: usize = 64;
/// Header and payload, padded to 8 bytes as the shm ring pads its frames.
const FRAME: usize = (8 + PAYLOAD + 7) & !7;

/// A memfd the child inherits (no `MFD_CLOEXEC`), sized and mapped here; our descriptor is
/// closed when the returned file drops, after the child is spawned.
fn shared(name: &std::ffi::CStr, len: usize) -> (File, MmapRaw) {
    // SAFETY: a valid NUL-terminated name; no other argument is a pointer.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len as u64).expect("sizing the floor's memfd");
    // A raw mapping: the child writes it too, so it is only ever reached through raw
    // pointers and atomics, never as a slice.
    let map = MmapRaw::map_raw(&file).expect("mapping the floor's memfd");
    (file, map)
}

/// The parent's memfd, inherited by a child at the descriptor number in `ARG_A`.
fn inherited() -> MmapRaw {
    let fd: i32 = std::env::var(ARG_A)
        .expect("the floor's descriptor")
        .parse()
        .expect("a descriptor number");
    // SAFETY: the descriptor was inherited from the parent for us alone.
    let file = unsafe { File::from_raw_fd(fd) };
    MmapRaw::map_raw(&file).expect("mapping the floor's memfd")
}

/// The atomic at byte `off` of a shared mapping.
fn slot(map: &MmapRaw, off: usize) -> &AtomicU64 {
    assert!(off + 8 <= map.len() && off % 8 == 0);
    // SAFETY: in bounds and 8-aligned (a page-aligned mapping, offset a multiple of 8) of a
    // memfd that only this benchmark and its child hold and neither truncates; the word is
    // only ever accessed through atomics, by both processes, while `map` lives.
    unsafe { AtomicU64::from_ptr(map.as_mut_ptr().add(off).cast::<u64>()) }
}

/// Spins until `word` holds `want`; false if `STOP` turns up instead.
fn wait_for(word: &AtomicU64, want: u64) -> bool {
    loop {
        // Acquire pairs with the peer's Release store of this word (`Floor::round_trips`,
        // `Frames::send`, the drops): what was written before it is visible after.
        match word.load(Ordering::Acquire) {
            seen if seen == want => return true,
            STOP => return false,
            _ => std::hint::spin_loop(),
        }
    }
}

/// The one-line floor: the shared page and the child spinning on it.
pub struct Floor {
    map: MmapRaw,
    seq: u64,
    _child: ChildGuard,
}

impl Floor {
    pub fn start() -> Floor {
        let (file, map) = shared(c"conduit-bench-floor", PAGE);
        let child = ChildGuard::spawn("floor", &[(ARG_A, file.as_raw_fd().to_string())]);
        Floor {
            map,
            seq: 0,
            _child: child,
        }
    }

    pub fn round_trips(&mut self, iters: u64) -> Duration {
        let (ping, pong) = (slot(&self.map, PING), slot(&self.map, PONG));
        let start = Instant::now();
        for _ in 0..iters {
            self.seq += 1;
            // Release pairs with the child's Acquire in `wait_for` (no data rides on it;
            // the orderings a ring's publish needs, free on x86).
            ping.store(self.seq, Ordering::Release);
            wait_for(pong, self.seq);
        }
        start.elapsed()
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        // Release pairs with the child's Acquire in `wait_for`: it sees STOP and leaves.
        slot(&self.map, PING).store(STOP, Ordering::Release);
    }
}

/// Echoes the parent's counter from one line to the other until told to stop.
pub fn floor_child() {
    let map = inherited();
    let (ping, pong) = (slot(&map, PING), slot(&map, PONG));
    let mut seq = 1;
    while wait_for(ping, seq) {
        // Release pairs with the parent's Acquire in `wait_for`.
        pong.store(seq, Ordering::Release);
        seq += 1;
    }
}

/// One direction of the framed floor: a ring of `FRAME`-byte frames at `base` in the
/// mapping, each an 8-byte header (the frame's sequence number, from 1) and the payload.
/// Frames that would cross the ring's end start again at its beginning, so headers sit at
/// the same offsets on every lap and a header from an earlier lap holds an older number.
struct Ring {
    base: usize,
    at: usize,
    seq: u64,
}

impl Ring {
    fn new(base: usize) -> Ring {
        Ring {
            base,
            at: 0,
            seq: 0,
        }
    }

    /// The next frame's offset in the mapping and its sequence number.
    fn advance(&mut self) -> (usize, u64) {
        if self.at + FRAME > RING {
            self.at = 0;
        }
        let off = self.base + self.at;
        self.at += FRAME;
        self.seq += 1;
        (off, self.seq)
    }

    /// Writes `msg` and then its header.
    fn send(&mut self, map: &MmapRaw, msg: &[u8; PAYLOAD]) {
        let (off, seq) = self.advance();
        // SAFETY: `off + FRAME <= map.len()` (`advance` keeps frames inside their ring, and
        // the rings inside the mapping), and raw pointers, not a slice, so no reference
        // covers the header words the peer writes. The receiver reads these bytes only
        // after it has seen the header below, and we write here again only after it has
        // answered (a ping-pong keeps one frame in flight each way): no access overlaps.
        unsafe {
            std::ptr::copy_nonoverlapping(msg.as_ptr(), map.as_mut_ptr().add(off + 8), PAYLOAD)
        };
        // Release pairs with the receiver's Acquire in `wait_for`: the payload above is
        // visible to it once it sees the header.
        slot(map, off).store(seq, Ordering::Release);
    }

    /// Waits for the next frame and copies its payload out; false at `STOP`.
    fn recv(&mut self, map: &MmapRaw, msg: &mut [u8; PAYLOAD]) -> bool {
        let (off, seq) = self.advance();
        if !wait_for(slot(map, off), seq) {
            return false;
        }
        // SAFETY: in bounds as in `send`; written before the header we saw (Acquire, in
        // `wait_for`) and not rewritten until we answer, so no write overlaps this read.
        unsafe {
            std::ptr::copy_nonoverlapping(map.as_ptr().add(off + 8), msg.as_mut_ptr(), PAYLOAD)
        };
        true
    }

    /// Tells the peer reading this ring to leave: `STOP` in the next header it waits on.
    fn stop(&mut self, map: &MmapRaw) {
        let (off, _) = self.advance();
        // Release pairs with the peer's Acquire in `wait_for`.
        slot(map, off).store(STOP, Ordering::Release);
    }
}

/// The framed floor: a ring each way in one mapping and the child echoing on them.
pub struct Frames {
    map: MmapRaw,
    out: Ring,
    back: Ring,
    msg: [u8; PAYLOAD],
    _child: ChildGuard,
}

impl Frames {
    pub fn start() -> Frames {
        let (file, map) = shared(c"conduit-bench-floor-frames", 2 * RING);
        let child = ChildGuard::spawn("floor_frames", &[(ARG_A, file.as_raw_fd().to_string())]);
        Frames {
            map,
            out: Ring::new(0),
            back: Ring::new(RING),
            msg: [0xA5; PAYLOAD],
            _child: child,
        }
    }

    pub fn round_trips(&mut self, iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            self.out.send(&self.map, &self.msg);
            let echoed = self.back.recv(&self.map, &mut self.msg);
            assert!(echoed, "the framed floor's child left");
        }
        start.elapsed()
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        self.out.stop(&self.map);
    }
}

/// Copies each 64-byte message from the parent's ring into a frame of its own ring.
pub fn frames_child() {
    let map = inherited();
    let (mut inbound, mut outbound) = (Ring::new(0), Ring::new(RING));
    let mut msg = [0u8; PAYLOAD];
    while inbound.recv(&map, &mut msg) {
        outbound.send(&map, &msg);
    }
}
