//! Wake-ups between processes: an eventfd.
//!
//! The sleeping side polls the eventfd (together with the rendezvous socket, whose hang-up
//! says the peer died); the waking side adds one to its counter. Both calls are
//! non-blocking, so neither side can be stranded by the other.
//!
//! The `O_NONBLOCK` flag lives on the open file description, which both processes share
//! once the descriptor is passed: a hostile peer could clear it. Callers that must not
//! block even then should `drain` only after a poll said the descriptor is readable and
//! bound every wait, as the design requires anyway.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::event::EventfdFlags;

/// A wake-up channel between processes: an eventfd (`EFD_CLOEXEC | EFD_NONBLOCK`).
#[derive(Debug)]
pub(crate) struct Notifier {
    fd: OwnedFd,
}

impl std::os::fd::AsFd for Notifier {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Notifier {
    /// A new eventfd with its counter at zero.
    pub(crate) fn new() -> io::Result<Notifier> {
        let fd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Notifier { fd })
    }

    /// Wraps an eventfd without checking it (tests); peers' descriptors go through
    /// [`Notifier::from_peer`].
    #[cfg(test)]
    pub(crate) fn from_fd(fd: OwnedFd) -> Notifier {
        Notifier { fd }
    }

    /// Wraps a descriptor received from a peer after checking it is an eventfd (anything
    /// else gives `InvalidData`: a pipe, say, could raise `SIGPIPE` on `notify`), and makes
    /// it non-blocking in case the peer did not.
    pub(crate) fn from_peer(fd: OwnedFd) -> io::Result<Notifier> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        if link.as_os_str() != "anon_inode:[eventfd]" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the wake-up descriptor is {link:?}, not an eventfd"),
            ));
        }
        super::set_nonblocking(&fd)?;
        Ok(Notifier { fd })
    }

    /// Adds 1 to the counter, which wakes a poller. Never blocks: `EAGAIN` means the
    /// counter is saturated, so it is already signalled. Retries `EINTR`; any other error
    /// (there is none for a valid eventfd) is ignored, since every sleep is bounded.
    pub(crate) fn notify(&self) {
        let one = 1u64.to_ne_bytes();
        loop {
            match rustix::io::write(&self.fd, &one) {
                Err(rustix::io::Errno::INTR) => continue,
                Ok(_) | Err(_) => return,
            }
        }
    }

    /// Resets the counter to zero with a non-blocking read; true when it was signalled.
    pub(crate) fn drain(&self) -> bool {
        let mut count = [0u8; 8];
        loop {
            match rustix::io::read(&self.fd, &mut count) {
                Ok(n) => return n == 8 && u64::from_ne_bytes(count) != 0,
                Err(rustix::io::Errno::INTR) => continue,
                // EAGAIN: not signalled. Anything else cannot happen on an eventfd.
                Err(_) => return false,
            }
        }
    }

    /// The eventfd: poll it for readability, or pass it to a peer.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn dup(fd: BorrowedFd<'_>) -> OwnedFd {
        rustix::io::fcntl_dupfd_cloexec(fd, 0).unwrap()
    }

    #[test]
    fn drain_reports_and_resets() {
        let n = Notifier::new().unwrap();
        assert!(!n.drain());
        n.notify();
        assert!(n.drain());
        assert!(!n.drain());
        n.notify();
        n.notify();
        n.notify();
        assert!(n.drain(), "several notifies are one wake-up");
        assert!(!n.drain());
    }

    #[test]
    fn flags() {
        let n = Notifier::new().unwrap();
        assert!(rustix::io::fcntl_getfd(n.fd())
            .unwrap()
            .contains(rustix::io::FdFlags::CLOEXEC));
        assert!(rustix::fs::fcntl_getfl(n.fd())
            .unwrap()
            .contains(rustix::fs::OFlags::NONBLOCK));
    }

    #[test]
    fn saturated_counter_does_not_block() {
        let n = Notifier::new().unwrap();
        // The largest value an eventfd holds; one more would block a blocking eventfd.
        rustix::io::write(n.fd(), &(u64::MAX - 1).to_ne_bytes()).unwrap();
        n.notify();
        n.notify();
        assert!(n.drain());
        assert!(!n.drain());
    }

    #[test]
    fn poll_wakes_after_notify_from_another_thread() {
        let n = Notifier::new().unwrap();
        let peer = Notifier::from_fd(dup(n.fd()));
        assert!(!crate::sys::wait_readable(n.fd(), Some(Duration::ZERO)).unwrap());
        let start = Instant::now();
        let waker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            peer.notify();
        });
        assert!(crate::sys::wait_readable(n.fd(), Some(Duration::from_secs(10))).unwrap());
        assert!(start.elapsed() >= Duration::from_millis(40));
        waker.join().unwrap();
        assert!(n.drain());
        assert!(!crate::sys::wait_readable(n.fd(), Some(Duration::ZERO)).unwrap());
    }

    #[test]
    fn from_peer_checks_the_kind_and_sets_nonblocking() {
        let fd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC).unwrap();
        let n = Notifier::from_peer(fd).unwrap();
        assert!(!n.drain(), "a blocking eventfd would hang here");
        let (r, w) = rustix::pipe::pipe().unwrap();
        for fd in [r, w] {
            let err = Notifier::from_peer(fd).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        }
    }
}
