//! The heavy half of an asymmetric fence between processes, `membarrier(2)`.
//!
//! The shm ring's wake-up protocol is a Dekker pair: the producer stores a frame's header
//! word (its commit) and then loads the consumer's "waiting" flag; the consumer stores the
//! flag and then loads the header word at its position. Each side needs a full fence
//! between its store and its load. The producer's runs on every
//! publish, and an `mfence` right after a store to a line the consumer is spinning on waits
//! for that store to reach the other core: the largest single cost of a publish. The
//! consumer's runs only before it sleeps. `MEMBARRIER_CMD_GLOBAL_EXPEDITED` lets the rare
//! side pay for both: it makes every running thread of every process registered with
//! `MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED` execute a full barrier before it returns, so
//! a registered producer needs only a compiler fence (liburcu's "memb" flavour and folly's
//! `asymmetricHeavyBarrier` use the same pairing).
//!
//! Registration is per address space and this code does not count on a `fork()` child
//! inheriting it, so it is redone (and cached) per fork generation.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::thread::{membarrier, MembarrierCommand};

use super::forks;

/// `forks::generation() + 1` when this process last registered; 0 when never.
static REGISTERED: AtomicU64 = AtomicU64::new(0);
/// Set once a heavy fence failed in this process: its sleeps are then kept short.
static HEAVY_FAILED: AtomicBool = AtomicBool::new(false);

/// Registers this process for expedited global barriers (once per fork generation). True
/// when it is registered: a producer here may then publish with a compiler fence only.
pub(crate) fn register_producer() -> bool {
    register_once(&REGISTERED, MembarrierCommand::RegisterGlobalExpedited)
}

/// Runs the registration `command` once per fork generation, remembering success in `cache`
/// (`forks::generation() + 1`; a `fork()` child is not registered).
fn register_once(cache: &AtomicU64, command: MembarrierCommand) -> bool {
    let generation = forks::generation();
    // Relaxed: a cache of this process's own syscall result, read and written only by this
    // process's threads; registering twice is harmless.
    if cache.load(Ordering::Relaxed) == generation + 1 {
        return true;
    }
    let ok = membarrier(command).is_ok();
    if ok {
        // Relaxed: as above.
        cache.store(generation + 1, Ordering::Relaxed);
    }
    ok
}

/// A full barrier on every running thread of every registered process (the sleeper's side
/// of the pair). On failure (a kernel or sandbox without it) the caller still sleeps, but
/// [`heavy_failed`] tells it to keep its sleeps short, since a wake-up may then be missed.
pub(crate) fn heavy_fence() {
    if membarrier(MembarrierCommand::GlobalExpedited).is_err() {
        // Relaxed: a sticky hint read by this process's own sleepers; no data rides on it.
        HEAVY_FAILED.store(true, Ordering::Relaxed);
    }
}

/// Whether a heavy fence ever failed in this process.
pub(crate) fn heavy_failed() -> bool {
    // Relaxed: see `heavy_fence`.
    HEAVY_FAILED.load(Ordering::Relaxed)
}
