//! The lock around a handle's connection state: one use at a time, within the caller's
//! deadline, and an error (not a deadlock) for a use from inside a use.
//!
//! Clones of a sender share one connection, and a receiver may be shared by reference, so
//! every send and receive on the serializing backends takes this lock. Its promises are the
//! public API's:
//!
//! - `try_send`/`try_recv` (deadline `Now`) take it with `try_lock`: when another thread is
//!   inside (blocked on a full buffer, or waiting for a message), they answer `Full`/`Empty`
//!   at once instead of waiting for it.
//! - `*_timeout` (deadline `At`) wait for it no longer than their deadline.
//! - A `Serialize` or `Deserialize` that sends or receives through the handle it is being
//!   called from finds its own thread's token in `holder` and gets an error.
//!
//! The mutex is parking_lot's: it has the timed `try_lock_until` that std's lacks, and it
//! is eventually fair, so a thread that keeps taking the lock cannot starve a waiting one
//! past its deadline for long.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};

use crate::flavors::Deadline;

/// Why the lock was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockFail {
    /// Another thread held it past the deadline.
    Busy,
    /// This thread holds it already: a use from inside a use.
    Reentered,
}

/// A value that one thread at a time may use (see the module docs).
pub(crate) struct HandleLock<T> {
    /// The token of the thread inside, 0 when none. Only a thread itself stores its token
    /// here (after taking the mutex) and clears it (before releasing it).
    holder: AtomicU64,
    value: Mutex<T>,
}

/// Exclusive use of the value; dropping it releases the lock.
pub(crate) struct Held<'a, T> {
    holder: &'a AtomicU64,
    guard: MutexGuard<'a, T>,
}

thread_local! {
    /// This thread's token; 0 until it first takes a lock.
    static TOKEN: Cell<u64> = const { Cell::new(0) };
}

/// This thread's token: unique in the process, never 0.
#[inline]
fn my_token() -> u64 {
    /// The next token to hand out.
    static NEXT: AtomicU64 = AtomicU64::new(1);
    // `TOKEN` has no destructor, so it is there even while the thread's other thread-locals
    // are being destroyed (a sender dropped in one of them still gets its token).
    TOKEN.with(|t| {
        if t.get() == 0 {
            // Relaxed: only uniqueness matters, which the counter's modification order gives.
            t.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        t.get()
    })
}

impl<T> HandleLock<T> {
    pub(crate) fn new(value: T) -> Self {
        HandleLock {
            holder: AtomicU64::new(0),
            value: Mutex::new(value),
        }
    }

    /// The value, through exclusive access to the lock.
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }

    /// Takes the lock, waiting for another thread no later than `deadline`.
    #[inline]
    pub(crate) fn lock(&self, deadline: Deadline) -> Result<Held<'_, T>, LockFail> {
        let me = my_token();
        // Relaxed: only this thread stores its own token, so finding it means this thread
        // is inside already, whatever other threads do.
        if self.holder.load(Ordering::Relaxed) == me {
            return Err(LockFail::Reentered);
        }
        let guard = match deadline {
            Deadline::Now => self.value.try_lock(),
            Deadline::At(at) => self.value.try_lock_until(at),
            Deadline::Never => Some(self.value.lock()),
        }
        .ok_or(LockFail::Busy)?;
        // Relaxed: read for the re-entry check only, by this thread (see above); the mutex
        // orders the uses of the value.
        self.holder.store(me, Ordering::Relaxed);
        Ok(Held {
            holder: &self.holder,
            guard,
        })
    }
}

impl<T> std::ops::Deref for Held<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> std::ops::DerefMut for Held<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T> Drop for Held<'_, T> {
    fn drop(&mut self) {
        // Relaxed: see `HandleLock::lock`; cleared before the guard (a field dropped after
        // this body) releases the mutex.
        self.holder.store(0, Ordering::Relaxed);
    }
}

impl LockFail {
    /// For the calls that wait as long as it takes (`share_with_child`): only re-entry
    /// fails them.
    pub(crate) fn into_error(self) -> crate::Error {
        crate::Error::CannotShare {
            reason: "it is in use by a send or receive on this same thread".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn a_use_from_inside_a_use_is_refused() {
        let lock = HandleLock::new(1);
        let held = lock.lock(Deadline::Never).unwrap();
        assert_eq!(*held, 1);
        assert_eq!(lock.lock(Deadline::Never).err(), Some(LockFail::Reentered));
        assert_eq!(lock.lock(Deadline::Now).err(), Some(LockFail::Reentered));
        drop(held);
        assert!(lock.lock(Deadline::Now).is_ok(), "released on drop");
    }

    #[test]
    fn another_thread_inside_makes_try_fail_at_once_and_timed_wait_give_up() {
        let lock = Arc::new(HandleLock::new(()));
        let (entered, wait_for_enter) = std::sync::mpsc::channel();
        let (release, wait_for_release) = std::sync::mpsc::channel::<()>();
        let holder = {
            let lock = lock.clone();
            std::thread::spawn(move || {
                let _held = lock.lock(Deadline::Never).unwrap();
                entered.send(()).unwrap();
                let _ = wait_for_release.recv();
            })
        };
        wait_for_enter.recv().unwrap();
        assert_eq!(lock.lock(Deadline::Now).err(), Some(LockFail::Busy));
        let start = Instant::now();
        let deadline = Deadline::after(Duration::from_millis(50));
        assert_eq!(lock.lock(deadline).err(), Some(LockFail::Busy));
        assert!(start.elapsed() >= Duration::from_millis(50));
        release.send(()).unwrap();
        holder.join().unwrap();
        assert!(lock.lock(Deadline::Now).is_ok());
    }
}
