//! A lock that costs no atomic read-modify-write and no fence while one thread uses it over
//! and over: every sender's and receiver's per-message lock (shared memory and streams). It
//! also refuses a use from inside a use on the same thread.
//!
//! Why: a locked instruction (or `mfence`) waits until the thread's earlier stores have
//! left the core, and the last stores of a shm send, the frame's payload and commit, wait
//! for the consumer's copy of those cache lines to be invalidated. One locked instruction
//! per message on the sending side of a bare two-process ring costs ~37 ns per message here
//! (2.6 → 40 ns, measured with a scratch program); std's `Mutex` costs two.
//!
//! How: the lock is *biased* to a thread that used it several times in a row. Each thread
//! has a [`Presence`] of its own, on the heap, where it writes the address of the lock it is
//! entering. The biased thread enters with a plain store of that address, a compiler fence,
//! and a check that the bias still names it; it leaves with a Release store of 0. Any other
//! thread takes the slow path: std's mutex, then it revokes the bias (`bias = 0`, then
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which makes every running thread of the
//! process execute a full barrier) and waits until the owner's presence no longer names
//! this lock. An asymmetric Dekker pairing, as in liburcu's "memb" flavour and folly's
//! `asymmetricHeavyBarrier`: either the revoker's load sees the owner's announcement and
//! waits for it to leave, or the owner's check sees the revoked bias and it withdraws and
//! takes the slow path too.
//!
//! Only a thread itself writes its presence. Session 3's lock had one announcement word
//! per lock, written with plain stores by whichever thread believed it was the owner: a
//! thread that read the bias as its own just before being preempted could write it long
//! after the bias had moved on, over the new owner's announcement, and let a revoker in
//! beside that owner (AddressSanitizer's slower threads caught it as duplicated and
//! corrupted messages). Session 4 made that write a compare-exchange, which is correct but
//! is the locked instruction above. Here a stale thread can only write its own presence.
//!
//! A revocation costs a `membarrier` (15–22 µs here with the owner running), so the bias is
//! earned by a streak of uses in a row through the slow path, and the streak needed doubles
//! at every revocation: threads that take turns stay on the mutex. Without `membarrier`
//! (old kernels, seccomp), the owner runs a SeqCst fence after its store instead and the
//! revoker a SeqCst fence: one fence per use. After a `fork()` a bias installed before it
//! is not used on the fast path (which checks the fork generation: the child may not be
//! registered for `membarrier`); the owner's next use goes through the mutex and installs
//! it again for the new generation.

use std::cell::UnsafeCell;
use std::io;
use std::sync::atomic::{compiler_fence, fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::sys::{forks, membarrier};

/// A token no thread has: the slow path's re-entry check skips it.
const NO_TOKEN: u64 = u64::MAX;
/// Uses in a row through the slow path that earn the first bias.
const FIRST_STREAK: u32 = 2;
/// The most the streak needed grows to (it doubles at every revocation).
const MAX_STREAK: u32 = 1 << 16;

/// Where one thread says which biased lock it is using through the fast path. Each thread
/// has one on the heap (a lock whose bias names it keeps it alive), and only that thread
/// writes it.
pub(crate) struct Presence {
    /// Unique in the process: who holds a lock through the slow path (`holder`).
    token: u64,
    /// The address of the lock this thread is entering or using through its fast path; 0
    /// when none.
    inside: AtomicUsize,
}

impl Presence {
    fn addr(&self) -> usize {
        self as *const Presence as usize
    }
}

thread_local! {
    static PRESENCE: Arc<Presence> = Arc::new(Presence {
        token: next_token(),
        inside: AtomicUsize::new(0),
    });
}

/// A token for a new thread: unique in the process, never `NO_TOKEN`.
fn next_token() -> u64 {
    /// The next token to hand out.
    static NEXT: AtomicU64 = AtomicU64::new(1);
    // Relaxed: only uniqueness matters, which the counter's modification order gives.
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A value behind a lock biased to the thread that uses it most (see the module docs).
pub(crate) struct BiasedLock<T> {
    /// The address of the biased thread's [`Presence`]; 0 when none. Changed only under
    /// `slow` (where `Slow::owner` keeps that presence alive, so no other thread's presence
    /// can have the address meanwhile).
    bias: AtomicUsize,
    /// `forks::generation()` when the bias was installed; the fast path needs the current
    /// one. Changed only under `slow`.
    bias_gen: AtomicU64,
    /// Whether the owner enters with a compiler fence only, the revoker running
    /// `membarrier` (else both run SeqCst fences). Changed only under `slow`, with the bias.
    light: AtomicBool,
    /// The token of the thread using the value through the slow path, 0 when none. Only a
    /// thread itself stores its token here and clears it when it leaves, so a thread that
    /// finds its own token is inside already: a use from inside a use (re-entry).
    holder: AtomicU64,
    /// Serialises every use but the biased thread's fast path.
    slow: Mutex<Slow>,
    value: UnsafeCell<T>,
}

/// The slow path's bookkeeping, under the mutex.
struct Slow {
    /// The presence `bias` points at, kept alive while it does.
    owner: Option<Arc<Presence>>,
    /// The token of the last thread through the slow path, and how many uses in a row it made.
    last: u64,
    streak: u32,
    /// The streak that earns the bias: `FIRST_STREAK`, doubled at every revocation.
    needed: u32,
}

// SAFETY: the value moves with the lock; `T: Send` is all a move between threads needs.
unsafe impl<T: Send> Send for BiasedLock<T> {}
// SAFETY: the value is reached only by one thread at a time (the biased owner between its
// announcement and its release, or the holder of `slow` once the bias is revoked and the
// owner has left), so sharing the lock gives `&mut T` to one thread at a time: `T: Send`.
unsafe impl<T: Send> Sync for BiasedLock<T> {}

/// Leaves the fast path, also when the closure unwinds.
struct Leave<'a>(&'a AtomicUsize);

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
        // Relaxed: only this thread acts on its own token here (the re-entry check); the
        // mutex orders the next holder's uses after ours.
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
            bias: AtomicUsize::new(0),
            bias_gen: AtomicU64::new(0),
            light: AtomicBool::new(false),
            holder: AtomicU64::new(0),
            slow: Mutex::new(Slow {
                owner: None,
                last: NO_TOKEN,
                streak: 0,
                needed: FIRST_STREAK,
            }),
            value: UnsafeCell::new(value),
        }
    }

    /// The value, through exclusive access to the lock.
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }

    /// This lock's address: what a presence holds while its thread is inside.
    fn addr(&self) -> usize {
        self as *const Self as usize
    }

    /// Runs `f` on the value, alone.
    ///
    /// Fails for a use from inside `f` on the same thread (senders run the user's
    /// `Serialize` inside, receivers its `Deserialize`): an error instead of a deadlock or
    /// the value handed out twice. (And, in theory, when revoking the bias fails: see
    /// `revoke`.)
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> io::Result<R> {
        // A thread whose thread-locals are being destroyed has no presence: slow path.
        let me = PRESENCE.try_with(Arc::as_ptr).ok();
        // SAFETY: the pointer is this thread's own presence, which its thread-local keeps
        // alive until the thread's thread-locals are destroyed; that cannot begin while this
        // call runs on the thread (and `try_with` failed if it had begun).
        let me: Option<&Presence> = me.map(|p| unsafe { &*p });
        if let Some(p) = me {
            // Relaxed: only this thread writes its presence and its token into `holder`, so
            // finding either means this thread is inside already (the closure called us):
            // refuse rather than deadlock on the mutex or hand out the value twice.
            if p.inside.load(Ordering::Relaxed) == self.addr()
                || self.holder.load(Ordering::Relaxed) == p.token
            {
                return Err(reentered());
            }
            if self.enter_fast(p) {
                let _leave = Leave(&p.inside);
                // SAFETY: we hold the bias and our presence names this lock (`enter_fast`),
                // so no other thread uses the value until a revoker has seen our presence
                // cleared, which `_leave` does only after `f` is done, even if it unwinds.
                return Ok(f(unsafe { &mut *self.value.get() }));
            }
        }
        self.with_slow(me, f)
    }

    /// The fast path's entry: true when `p`'s thread holds the bias and has announced itself
    /// in `p` so that no revoker goes in beside it.
    #[inline]
    fn enter_fast(&self, p: &Presence) -> bool {
        // Relaxed: a hint; the check that counts comes after the announcement. A presence
        // already naming a lock (we are inside another one's fast path) takes the slow path.
        if self.bias.load(Ordering::Relaxed) != p.addr() || p.inside.load(Ordering::Relaxed) != 0 {
            return false;
        }
        // Relaxed, then a fence: the owner's half of the Dekker with `revoke` (store `bias`,
        // heavy fence, load this presence).
        p.inside.store(self.addr(), Ordering::Relaxed);
        // Relaxed: stored with the bias, under `slow`, and the same for every install in a
        // fork generation (`install`), so whichever install's value we read, it is our own.
        if self.light.load(Ordering::Relaxed) {
            // The revoker's `membarrier` runs a full barrier on this thread, which stands in
            // for ours; only the compiler must keep the load below after the store above.
            compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
        // Relaxed: ordered after our announcement by the fence (ours or the revoker's); the
        // generation check keeps a bias installed before a `fork()` off the fast path.
        if self.bias.load(Ordering::Relaxed) == p.addr()
            && self.bias_gen.load(Ordering::Relaxed) == forks::generation()
        {
            return true;
        }
        // Revoked meanwhile: the revoker may be waiting for us. Release, as in `Leave`.
        p.inside.store(0, Ordering::Release);
        false
    }

    /// [`BiasedLock::with`] through the mutex.
    #[cold]
    fn with_slow<R>(&self, me: Option<&Presence>, f: impl FnOnce(&mut T) -> R) -> io::Result<R> {
        let mut slow = self.slow.lock().unwrap_or_else(PoisonError::into_inner);
        // Relaxed: `bias` changes only under `slow`, which we hold.
        let owner = self.bias.load(Ordering::Relaxed);
        if owner != 0 && Some(owner) != me.map(Presence::addr) {
            self.revoke(&mut slow)?;
        }
        let token = me.map_or(NO_TOKEN, |p| p.token);
        // Relaxed: see `holder`.
        self.holder.store(token, Ordering::Relaxed);
        let release = SlowLeave(&self.holder);
        // SAFETY: we hold `slow`, and the bias is ours or revoked with its owner gone (its
        // presence cleared, which synchronised with us in `revoke`): no other thread uses
        // the value.
        let result = f(unsafe { &mut *self.value.get() });
        drop(release);
        if let Some(p) = me {
            self.count_use(&mut slow, p);
        }
        Ok(result)
    }

    /// Counts a slow-path use by `p`'s thread, and biases the lock to it once it has made
    /// enough in a row (or refreshes its bias after a `fork()`). Under `slow`.
    fn count_use(&self, slow: &mut Slow, p: &Presence) {
        let generation = forks::generation();
        // Relaxed (both): changed only under `slow`, which we hold.
        if self.bias.load(Ordering::Relaxed) == p.addr() {
            // Ours already, and we came through here: nested in another lock's fast path,
            // or installed before a `fork()`.
            if self.bias_gen.load(Ordering::Relaxed) != generation {
                self.install(slow, generation);
            }
            return;
        }
        if slow.last == p.token {
            slow.streak = slow.streak.saturating_add(1);
        } else {
            slow.last = p.token;
            slow.streak = 1;
        }
        if slow.streak >= slow.needed {
            self.install(slow, generation);
        }
    }

    /// Biases the lock to this thread. Under `slow`, with no other owner.
    fn install(&self, slow: &mut Slow, generation: u64) {
        let Ok(presence) = PRESENCE.try_with(Arc::clone) else {
            return;
        };
        // The same answer for every install in this fork generation: a thread reading `light`
        // as stored by another install than its own reads the same value (and an install
        // from another generation never passes the fast path's generation check).
        let light = membarrier::private_registered();
        // Relaxed (all three): read by this thread's fast path (after these stores, in
        // program order) and by other threads under `slow`; any other thread's fast-path
        // hint compares `bias` with its own presence, which has another address.
        self.light.store(light, Ordering::Relaxed);
        self.bias_gen.store(generation, Ordering::Relaxed);
        self.bias.store(presence.addr(), Ordering::Relaxed);
        slow.owner = Some(presence);
    }

    /// Takes the bias away from its owner (we hold `slow`), waiting until the owner has left
    /// the value.
    fn revoke(&self, slow: &mut Slow) -> io::Result<()> {
        // Relaxed: the fence below orders it before our load of the owner's presence: the
        // revoker's half of the Dekker with `enter_fast`.
        self.bias.store(0, Ordering::Relaxed);
        // Relaxed (both): changed only under `slow`, which we hold.
        if self.bias_gen.load(Ordering::Relaxed) != forks::generation() {
            // Installed before a `fork()` of this process: no thread here passes the fast
            // path's generation check, so none is inside through it.
        } else if self.light.load(Ordering::Relaxed) {
            if let Err(e) = membarrier::private_fence() {
                // Cannot happen once this process registered (`install`); if it did, the
                // owner keeps the bias rather than share the value.
                if let Some(owner) = &slow.owner {
                    // Relaxed: as in `install`.
                    self.bias.store(owner.addr(), Ordering::Relaxed);
                }
                return Err(io::Error::new(
                    e.kind(),
                    format!("taking a sender or receiver from the thread it is biased to: {e}"),
                ));
            }
        } else {
            fence(Ordering::SeqCst);
        }
        slow.needed = slow.needed.saturating_mul(2).min(MAX_STREAK);
        let Some(owner) = slow.owner.take() else {
            return Ok(());
        };
        let mut turns = 0u32;
        // SYNC POINT: Acquire pairs with the owner's Release store in `Leave` (and in
        // `enter_fast`'s withdrawal): its use of the value happens before ours.
        while owner.inside.load(Ordering::Acquire) == self.addr() {
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
        Ok(())
    }
}

#[cfg(test)]
#[path = "biased_lock_tests.rs"]
mod tests;
