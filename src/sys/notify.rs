//! Wake-ups between the two ends of one shared-memory connection: single bytes on the
//! connection's own socket.
//!
//! The sleeping side polls the socket; the waking side sends one byte. The same poll sees the
//! peer's death (end of file, hang-up), so one descriptor serves both. Every call here passes
//! `MSG_DONTWAIT` *per call*: a peer cannot make it block by clearing `O_NONBLOCK` on the
//! shared file description, which is what an eventfd passed to the peer would have allowed
//! (and a shared eventfd also let one sender drain the wake-ups meant for the others).

use std::os::fd::BorrowedFd;

use rustix::event::PollFlags;
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};

/// The byte a wake-up sends.
pub(crate) const WAKE: u8 = 1;

/// What to poll a connection's socket for: wake-up bytes, end of file, hang-up.
pub(crate) const READY: PollFlags = PollFlags::IN.union(PollFlags::RDHUP);

/// Wakes the peer sleeping on `sock`. Never blocks and never raises `SIGPIPE`: a full
/// socket buffer means wake-ups are already pending, a dead peer is noticed by its own
/// hang-up, and every sleep is bounded anyway, so errors are ignored.
pub(crate) fn wake(sock: BorrowedFd<'_>) {
    loop {
        match rustix::net::send(sock, &[WAKE], SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
            Err(Errno::INTR) => continue,
            Ok(_) | Err(_) => return,
        }
    }
}

/// Reads the wake-up bytes waiting on `sock` without blocking. Returns `false` when the peer
/// is gone (end of file, or an error).
pub(crate) fn drain(sock: BorrowedFd<'_>) -> bool {
    let mut buf = [0u8; 256];
    // Bounded: a peer that keeps the socket full cannot keep us here; what is left keeps
    // the socket readable, so the next poll returns at once and we drain again.
    for _ in 0..16 {
        match rustix::net::recv(sock, &mut buf, RecvFlags::DONTWAIT) {
            Ok((0, _)) => return false,
            Ok((n, _)) if n < buf.len() => return true,
            Ok(_) => continue,
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return true,
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::{AsFd, OwnedFd};
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use rustix::event::PollFd;

    use super::*;

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    #[test]
    fn a_wake_is_seen_by_poll_and_drained() {
        let (a, b) = pair();
        let mut fds = [PollFd::new(&b, READY)];
        assert_eq!(crate::sys::poll(&mut fds, Some(Duration::ZERO)).unwrap(), 0);
        wake(a.as_fd());
        wake(a.as_fd());
        let mut fds = [PollFd::new(&b, READY)];
        assert_eq!(crate::sys::poll(&mut fds, Some(Duration::ZERO)).unwrap(), 1);
        assert!(drain(b.as_fd()), "woken, peer alive");
        let mut fds = [PollFd::new(&b, READY)];
        assert_eq!(crate::sys::poll(&mut fds, Some(Duration::ZERO)).unwrap(), 0);
        assert!(drain(b.as_fd()), "nothing to read: still alive");
    }

    #[test]
    fn the_peers_end_is_seen_after_its_wake_ups() {
        let (a, b) = pair();
        wake(a.as_fd());
        drop(a);
        // The pending wake-up first, then the end of file (at the latest on the next drain).
        let first = drain(b.as_fd());
        assert!(!first || !drain(b.as_fd()), "the end was never reported");
    }

    #[test]
    fn waking_a_dead_peer_or_a_full_socket_neither_blocks_nor_signals() {
        let (a, b) = pair();
        // A peer that never reads, and even clears O_NONBLOCK on the shared description:
        // MSG_DONTWAIT is per call, so these return at once.
        b.set_nonblocking(false).unwrap();
        let blocking = OwnedFd::from(a.try_clone().unwrap());
        rustix::fs::fcntl_setfl(&blocking, rustix::fs::OFlags::empty()).unwrap();
        for _ in 0..1_000_000 {
            wake(a.as_fd());
        }
        drop(b);
        // A test binary ignores SIGPIPE: waking the dead peer runs in a child that does not.
        crate::sys::sigpipe::in_child_with_default_sigpipe(|| wake(a.as_fd()));
    }

    #[test]
    fn a_flood_is_drained_in_bounded_steps() {
        let (mut a, b) = pair();
        let junk = vec![7u8; 200_000];
        let _ = a.write(&junk);
        // Each call returns after a bounded amount; the peer is still alive.
        assert!(drain(b.as_fd()));
        let mut fds = [PollFd::new(&b, READY)];
        assert_eq!(crate::sys::poll(&mut fds, Some(Duration::ZERO)).unwrap(), 1);
    }
}
