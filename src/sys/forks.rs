//! Counts `fork()`s, so shared-memory handles created before one can tell that another
//! process may hold a copy of them.
//!
//! A ring's "closed" flags say "nobody on this side will use the ring again". After a
//! `fork()` both processes hold the handle, and the one that drops its unused copy must not
//! raise the flag under the other. Handles remember the count at creation; if it changed,
//! their drop leaves the flag alone and the peer learns of the end from the rendezvous
//! socket instead, which the kernel closes only when the last process holding it does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn after_fork() {
    // Async-signal-safe: one atomic add. Relaxed: only this process's own later loads
    // (sequenced after the fork returns) read it; no other data is published with it.
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// The number of forks this process has made or come from since conduit first asked.
#[inline]
pub(crate) fn generation() -> u64 {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: `after_fork` is an `extern "C" fn()` that only performs an atomic add, which
        // is async-signal-safe, as handlers run in the child of a multithreaded fork require.
        // Registration failing (ENOMEM) leaves the count at zero: handles then behave as if
        // never forked, which is the behaviour without this module.
        unsafe {
            libc::pthread_atfork(None, Some(after_fork), Some(after_fork));
        }
    });
    // Relaxed: see `after_fork`.
    FORKS.load(Ordering::Relaxed)
}
