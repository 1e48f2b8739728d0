//! A lock that costs one atomic read-modify-write per use while one thread uses it over and
//! over (std's mutex costs two): every sender's and receiver's per-message lock (shared
//! memory and streams). It also refuses a use from inside a use on the same thread.
//!
//! Why: a locked instruction waits until the thread's earlier stores have left the core,
//! and the last store of a shm send, the frame's commit, waits for the consumer's copy of
//! that cache line to be invalidated. With std's `Mutex` around each send, an 8-byte stream
//! between two processes spent about 40% of the sender's time in those waits (`perf
//! annotate`): the release (`xchg`) right after the commit waited for it. Here the release
//! is a plain store, and the entry's compare-exchange comes at the next use, when those
//! stores have long left.
//!
//! How: the lock is *biased* to the thread that used it twice in a row. That thread enters
//! by claiming `busy` (compare-exchange 0 → its token) and checking that the bias is still
//! its own; it leaves with a Release store of `busy = 0`. Any other thread takes the slow
//! path: std's mutex, then it revokes the bias (`bias = 0`, a SeqCst fence) and waits until
//! `busy` is 0. A Dekker pairing: either the revoker's load sees the owner's claim and waits
//! for it to leave, or the owner's check sees the revoked bias and the owner leaves `busy`
//! and takes the slow path too. The claim must be a compare-exchange, not a plain store:
//! a thread that read the bias as its own just before being preempted may announce itself
//! long after the bias moved on, and a plain store would overwrite the new owner's
//! announcement, letting a revoker in beside it. (Session 3's version did that, with a
//! `membarrier` standing in for the owner's fence; AddressSanitizer's slower threads caught
//! it as duplicated and corrupted messages in `many_producers`.) A failed claim just takes
//! the slow path. A thread is biased only after two uses in a row through the slow path, so
//! threads that take turns keep using the mutex.

use std::cell::UnsafeCell;
use std::io;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// A token no thread has: the bias is never set to it.
const NO_TOKEN: u64 = u64::MAX;

/// This thread's token: unique in the process, never 0 (which means "no bias").
fn token() -> u64 {
    /// The next token to hand out.
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        // Relaxed: only uniqueness matters, which the counter's modification order gives.
        static TOKEN: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    // A thread whose thread-locals are being destroyed takes the slow path.
    TOKEN.try_with(|t| *t).unwrap_or(NO_TOKEN)
}

/// A value behind a lock biased to the thread that uses it most (see the module docs).
pub(crate) struct BiasedLock<T> {
    /// The token of the thread the lock is biased to; 0 when none. Changed only under `slow`.
    bias: AtomicU64,
    /// The biased thread's token while it uses the value through the fast path (or tries
    /// to), 0 otherwise.
    busy: AtomicU64,
    /// The token of the thread using the value through the slow path, 0 when none.
    ///
    /// Only a thread itself ever stores its token in `busy` or `holder`, and it clears it
    /// when it leaves, so a thread that finds its own token in either is inside already: a
    /// use from inside a use (re-entry).
    holder: AtomicU64,
    /// Serialises every use but the biased thread's fast path; holds the token of the last
    /// thread that came through it.
    slow: Mutex<u64>,
    value: UnsafeCell<T>,
}

// SAFETY: the value moves with the lock; `T: Send` is all a move between threads needs.
unsafe impl<T: Send> Send for BiasedLock<T> {}
// SAFETY: the value is reached only by one thread at a time (the biased owner between its
// announcement and its release, or the holder of `slow` once the bias is revoked and the
// owner has left), so sharing the lock gives `&mut T` to one thread at a time: `T: Send`.
unsafe impl<T: Send> Sync for BiasedLock<T> {}

/// Leaves the fast path, also when the closure unwinds.
struct Leave<'a>(&'a AtomicU64);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        // SYNC POINT: Release pairs with the Acquire load in `revoke`: our use of the value
        // happens before the revoker's.
        self.0.store(0, Ordering::Release);
    }
}

/// Clears `holder` when a slow-path use ends, also when the closure unwinds.
struct SlowLeave<'a>(&'a AtomicU64);

impl Drop for SlowLeave<'_> {
    fn drop(&mut self) {
        // Relaxed: as in `Leave`; the mutex orders the next holder's store after this one.
        self.0.store(0, Ordering::Relaxed);
    }
}

/// The error of a use from inside a use on the same thread.
fn reentered() -> io::Error {
    io::Error::other(
        "a sender or receiver used from inside its own send or receive on the same thread \
         (a Serialize or Deserialize implementation that uses it)",
    )
}

impl<T> BiasedLock<T> {
    pub(crate) fn new(value: T) -> Self {
        BiasedLock {
            bias: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            holder: AtomicU64::new(0),
            slow: Mutex::new(NO_TOKEN),
            value: UnsafeCell::new(value),
        }
    }

    /// The value, through exclusive access to the lock.
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }

    /// Runs `f` on the value, alone.
    ///
    /// Fails only for a use from inside `f` on the same thread (senders run the user's
    /// `Serialize` inside, receivers its `Deserialize`): an error instead of a deadlock or
    /// the value handed out twice.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> io::Result<R> {
        let me = token();
        // Relaxed: only this thread stores `me` in either, so seeing it means this thread is
        // inside already (the closure called us): refuse rather than deadlock on the mutex or
        // hand out the value twice. (Threads without a token share `NO_TOKEN`: they are
        // never biased and do not get this check.)
        if me != NO_TOKEN
            && (self.busy.load(Ordering::Relaxed) == me
                || self.holder.load(Ordering::Relaxed) == me)
        {
            return Err(reentered());
        }
        // Relaxed: a hint, possibly stale; the check that counts comes after the claim.
        if self.bias.load(Ordering::Relaxed) == me
            // SYNC POINT: SeqCst, the owner's half of the Dekker with `revoke` (store `bias`,
            // SeqCst fence, load `busy`); Acquire also pairs with the Release in `Leave`, so
            // the previous fast-path use happens before ours.
            && self
                .busy
                .compare_exchange(0, me, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
        {
            // SeqCst: ordered after the claim in the single total order, so either this
            // sees the revoker's `bias = 0` or the revoker's load of `busy` sees our claim.
            if self.bias.load(Ordering::SeqCst) == me {
                let _leave = Leave(&self.busy);
                // SAFETY: we hold the bias and have claimed `busy`, so no other thread uses
                // the value until it has seen `busy == 0` (in `revoke`), which `_leave`
                // stores only after `f` is done, even if it unwinds. A thread with a stale
                // bias claims `busy` only while it is 0 and gives it back unused.
                return Ok(f(unsafe { &mut *self.value.get() }));
            }
            // Revoked meanwhile (or never ours): the revoker may be waiting for us. Release,
            // as in `Leave`.
            self.busy.store(0, Ordering::Release);
        }
        let mut last = self.slow.lock().unwrap_or_else(PoisonError::into_inner);
        // Relaxed: `bias` changes only under `slow`, which we hold.
        let owner = self.bias.load(Ordering::Relaxed);
        if owner != 0 && owner != me {
            self.revoke();
        }
        // Relaxed: see `holder`.
        self.holder.store(me, Ordering::Relaxed);
        let release = SlowLeave(&self.holder);
        // SAFETY: we hold `slow`, and the bias is ours or revoked with its owner gone (its
        // `busy = 0` synchronised with us in `revoke`): no other thread uses the value.
        let result = f(unsafe { &mut *self.value.get() });
        drop(release);
        // Biased already, or twice in a row through here with nobody biased in between.
        let install = owner == me || (owner == 0 && *last == me && me != NO_TOKEN);
        if install {
            // Relaxed: only we act on our own token here (on the fast path); other threads'
            // uses synchronise with ours through `slow` (before) or `revoke` (after).
            self.bias.store(me, Ordering::Relaxed);
        }
        *last = me;
        Ok(result)
    }

    /// Takes the bias (we hold `slow`), waiting until its owner has left the value.
    fn revoke(&self) {
        // Relaxed, then the SeqCst fence, which orders it before our load of `busy`: the
        // revoker's half of the Dekker with the claim in `with`.
        self.bias.store(0, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let mut turns = 0u32;
        // SYNC POINT: Acquire pairs with the owner's Release store in `Leave`: its use of the
        // value happens before ours.
        while self.busy.load(Ordering::Acquire) != 0 {
            // The owner may be blocked in a send (a full ring): back off to short sleeps.
            turns += 1;
            if turns < 64 {
                std::hint::spin_loop();
            } else if turns < 128 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use super::BiasedLock;

    #[test]
    fn one_thread_at_a_time_however_threads_take_turns() {
        // Each thread runs bursts of uses (so it gets biased), then yields to the others:
        // revocations at every switch. A lost exclusion shows as a torn pair or a lost count.
        let lock = Arc::new(BiasedLock::new((0u64, 0u64)));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let lock = lock.clone();
                std::thread::spawn(move || {
                    for round in 0..200 {
                        for _ in 0..(1 + (round + t) % 7) {
                            lock.with(|(a, b)| {
                                assert_eq!(*a, *b, "another thread was inside");
                                *a += 1;
                                std::hint::spin_loop();
                                *b += 1;
                            })
                            .unwrap();
                        }
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total: u64 = (0..4u64)
            .map(|t| (0..200u64).map(|r| 1 + (r + t) % 7).sum::<u64>())
            .sum();
        let mut lock = Arc::into_inner(lock).unwrap();
        assert_eq!(*lock.get_mut(), (total, total));
    }

    #[test]
    fn a_biased_thread_gets_the_fast_path_and_others_revoke_it() {
        let lock = Arc::new(BiasedLock::new(0u32));
        for _ in 0..3 {
            lock.with(|v| *v += 1).unwrap();
        }
        let me = super::token();
        assert_eq!(lock.bias.load(std::sync::atomic::Ordering::Relaxed), me);
        let other = lock.clone();
        std::thread::spawn(move || other.with(|v| *v += 10).unwrap())
            .join()
            .unwrap();
        assert_ne!(lock.bias.load(std::sync::atomic::Ordering::Relaxed), me);
        assert_eq!(lock.with(|v| *v).unwrap(), 13);
    }

    #[test]
    fn a_use_from_inside_a_use_fails_on_either_path() {
        let lock = BiasedLock::new(0u32);
        // The first use goes through the mutex, the third through the fast path.
        for round in 0..3 {
            let nested = lock.with(|v| {
                *v += 1;
                lock.with(|w| *w += 100).map(|_| ())
            });
            let err = nested.unwrap().unwrap_err();
            assert!(
                err.to_string().contains("inside its own send"),
                "round {round}"
            );
        }
        assert_eq!(lock.with(|v| *v).unwrap(), 3);
    }

    #[test]
    fn a_panic_inside_leaves_the_lock_usable() {
        let lock = Arc::new(BiasedLock::new(0u32));
        for _ in 0..3 {
            lock.with(|v| *v += 1).unwrap();
        }
        let l = lock.clone();
        let panicked = std::thread::spawn(move || {
            for _ in 0..3 {
                l.with(|v| *v += 1).unwrap();
            }
            l.with(|_| panic!("inside the lock")).unwrap();
        })
        .join();
        assert!(panicked.is_err());
        // The panicking thread held the bias (three uses); revoking must not wait forever.
        assert_eq!(lock.with(|v| *v).unwrap(), 6);
    }

    /// A thread that finds the bias its own but `busy` claimed by another thread (one that
    /// read a stale bias and will give `busy` back unused) must leave that claim alone. The
    /// session-3 lock stored its own token over it and then 0: a revoker waiting for the
    /// real owner would then have gone in beside it.
    #[test]
    fn another_threads_claim_is_never_overwritten() {
        const OTHER: u64 = u64::MAX - 1;
        let lock = BiasedLock::new(0u32);
        lock.bias.store(super::token(), Ordering::Relaxed);
        lock.busy.store(OTHER, Ordering::Relaxed);
        lock.with(|v| *v += 1).unwrap();
        assert_eq!(
            lock.busy.load(Ordering::Relaxed),
            OTHER,
            "another thread's claim was overwritten"
        );
        assert_eq!(lock.with(|v| *v).unwrap(), 1);
    }

    /// Threads that block inside (yield, sleep) while others revoke: every use alone.
    #[test]
    fn one_thread_at_a_time_while_users_block_inside() {
        for _ in 0..3 {
            let lock = Arc::new(BiasedLock::new((0u64, 0u64)));
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let lock = lock.clone();
                    std::thread::spawn(move || {
                        for i in 0..1000u64 {
                            lock.with(|(a, b)| {
                                assert_eq!(*a, *b, "another thread was inside");
                                *a += 1;
                                if i % 3 == 0 {
                                    std::thread::yield_now();
                                } else if i % 17 == 0 {
                                    std::thread::sleep(std::time::Duration::from_micros(20));
                                }
                                *b += 1;
                            })
                            .unwrap();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let mut lock = Arc::into_inner(lock).unwrap();
            assert_eq!(*lock.get_mut(), (4000, 4000));
        }
    }
}
