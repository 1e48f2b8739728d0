//! Readiness for `zenoh:` channels: an eventfd per receiver (readable when `try_recv` may
//! not be `Empty`) and per sender (readable when credit may have come back, for
//! `send_async`).
//!
//! Both halves keep their state under one mutex, which the engine's callbacks take too. So
//! the arming needs no ordering of its own: a receive that finds nothing drains the
//! descriptor and arms under the mutex, and a callback that changes the state (a message,
//! a sender's end, credit, the receiver's loss) writes the descriptor under the same mutex
//! if it finds it armed. A change either happened before the look that found nothing, or
//! it finds the arming and writes.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::readiness::{drain, eventfd, signal};

/// A readiness descriptor whose arming and signalling happen under the owner's mutex.
#[derive(Default)]
pub(crate) struct MutexSignal {
    /// Made on first use ("readiness mode"); until then the other methods do nothing.
    fd: OnceLock<OwnedFd>,
    /// A look found nothing since the last signal. Written only under the owner's mutex.
    armed: AtomicBool,
}

impl MutexSignal {
    /// The descriptor, made on first use and readable at once: whatever happened before it
    /// existed is looked at by the waiter's first try.
    pub(crate) fn fd(&self) -> io::Result<BorrowedFd<'_>> {
        if let Some(fd) = self.fd.get() {
            return Ok(fd.as_fd());
        }
        let fd = eventfd()?;
        signal(fd.as_fd());
        // A racing first use may have set one already: both are readable, keep either.
        let _ = self.fd.set(fd);
        Ok(self.fd.get().expect("set above").as_fd())
    }

    /// The state changed (under the owner's mutex): wakes an armed waiter.
    pub(crate) fn notify(&self) {
        // Relaxed: read and written only under the owner's mutex, which orders them.
        if self.armed.swap(false, Ordering::Relaxed) {
            if let Some(fd) = self.fd.get() {
                signal(fd.as_fd());
            }
        }
    }

    /// A look found nothing (under the owner's mutex): drains the descriptor and arms, so
    /// the next change writes it.
    pub(crate) fn arm(&self) {
        if let Some(fd) = self.fd.get() {
            drain(fd.as_fd());
            // Relaxed: see `notify`.
            self.armed.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the last look found nothing and nothing changed since (so nothing is there to
    /// take: every change while armed disarms): then the descriptor
    /// tells when to look again. Read without the mutex (`Select`): a stale answer costs a
    /// spurious look or a wait on a descriptor that is already readable, never a miss.
    pub(crate) fn is_armed(&self) -> bool {
        // Relaxed: see the doc comment; the descriptor itself carries the wake-up.
        self.armed.load(Ordering::Relaxed)
    }

    /// A descriptor of the same eventfd for a waiter that owns it (tokio's `AsyncFd`).
    #[cfg(feature = "tokio")]
    pub(crate) fn dup(&self) -> io::Result<OwnedFd> {
        self.fd()?.try_clone_to_owned()
    }
}

#[cfg(test)]
mod tests {
    use rustix::event::{PollFd, PollFlags};

    use super::*;

    fn readable(s: &MutexSignal) -> bool {
        let fd = s.fd().unwrap();
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        crate::sys::poll(&mut fds, Some(std::time::Duration::ZERO)).unwrap() == 1
    }

    #[test]
    fn readable_at_first_then_only_after_a_change_while_armed() {
        let s = MutexSignal::default();
        s.notify(); // before readiness mode: nothing to do
        assert!(readable(&s), "a new descriptor asks for one look");
        s.arm();
        assert!(!readable(&s), "armed after a look that found nothing");
        assert!(s.is_armed());
        s.notify();
        assert!(readable(&s), "a change while armed");
        assert!(!s.is_armed(), "the signal disarms");
        s.arm();
        s.notify();
        s.notify();
        s.arm();
        assert!(
            !readable(&s),
            "two changes, one write, drained by the next look"
        );
    }
}
