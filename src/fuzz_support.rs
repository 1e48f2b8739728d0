//! What the property drivers share: the input decoder, a size-limit picker, a small
//! generator, and memory accounting. The drivers live beside what they test
//! (`frame_fuzz.rs`, `codec_fuzz.rs`, `handshake_fuzz.rs`, `ring/fuzz_*.rs`); each decodes
//! its own input (no `arbitrary`) and never panics on any input except through its
//! assertions of real properties. They are compiled for unit tests, which run them over
//! generated inputs and over the committed fuzz inputs (`fuzz_replay.rs`), and under
//! `--cfg fuzzing`, where the cargo-fuzz targets call them through `conduit::fuzz`.
//!
//! Memory bounds are checked only in the fuzz targets, which install `Counting` as their
//! global allocator. A unit test binary does not (its tests run in parallel, so one global
//! count would mix them up): there [`Watch::peak`] is always 0 and every memory bound holds
//! trivially, while every other property is checked as in the targets.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::frame::PIECE_MAX;

/// Reads numbers and bytes off the fuzz input; past its end everything reads as zero.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Input { data }
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub(crate) fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
    pub(crate) fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    pub(crate) fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }
    pub(crate) fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }
    pub(crate) fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
}

/// A size limit picked by one input byte: the edges that matter to the parsers.
pub(crate) fn pick_limit(b: u8) -> usize {
    const LIMITS: [usize; 8] = [0, 1, 7, 100, 4096, PIECE_MAX, PIECE_MAX + 1, usize::MAX];
    LIMITS[usize::from(b) % LIMITS.len()]
}

/// A small xorshift generator, seeded from the input, for split points and fill bytes.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Live bytes and their peak, as `Counting` counts them (both stay 0 without it).
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// Measures the most memory held at once from its creation on, above what was live then
/// (always 0 where `Counting` is not the global allocator).
pub(crate) struct Watch {
    base: usize,
}

impl Watch {
    pub(crate) fn start() -> Watch {
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        Watch { base }
    }
    pub(crate) fn peak(&self) -> usize {
        PEAK.load(Ordering::Relaxed).saturating_sub(self.base)
    }
}

#[cfg(fuzzing)]
pub use self::counting::Counting;

/// The counting allocator, which only a fuzz target binary installs.
#[cfg(fuzzing)]
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::Ordering;

    use super::{LIVE, PEAK};

    fn count_alloc(n: usize) {
        let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
        PEAK.fetch_max(now, Ordering::Relaxed);
    }

    /// The system allocator, counting live bytes and their peak. Fuzz targets install it
    /// with `#[global_allocator]`; the drivers then assert how much a parser may hold at
    /// once. Without it every bound holds trivially (nothing is counted).
    pub struct Counting;

    // SAFETY: every call is forwarded unchanged to `System`; the counters only observe sizes.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract for `alloc` is passed on as is.
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                count_alloc(layout.size());
            }
            p
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract for `alloc_zeroed` is passed on as is.
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                count_alloc(layout.size());
            }
            p
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the caller's contract for `dealloc` is passed on as is.
            unsafe { System.dealloc(ptr, layout) };
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: the caller's contract for `realloc` is passed on as is.
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
                count_alloc(new_size);
            }
            p
        }
    }
}

/// The committed fuzz inputs under `fuzz/<dir>` whose names start with `prefix`, sorted by
/// path; none when the directory does not exist.
#[cfg(test)]
pub(crate) fn inputs(dir: &str, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    files
}

/// `count` pseudo-random inputs shorter than `max_len` bytes, the same for the same `seed`.
#[cfg(test)]
pub(crate) fn random_inputs(
    seed: u64,
    count: usize,
    max_len: usize,
) -> impl Iterator<Item = Vec<u8>> {
    let mut rng = Rng::new(seed);
    (0..count).map(move |_| {
        let len = rng.next() as usize % max_len;
        (0..len).map(|_| rng.next() as u8).collect()
    })
}
