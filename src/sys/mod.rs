//! Thin, documented wrappers over the system calls conduit needs. Everything here retries
//! `EINTR` and returns `std::io::Error`; nothing here panics on a system call's result.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

pub(crate) mod fdpass;
pub(crate) mod forks;
pub(crate) mod memfd;
pub(crate) mod notify;
pub(crate) mod sealed;
pub(crate) mod sigpipe;
pub(crate) mod sock;

/// Converts a wait into poll's timeout: `None` waits forever.
fn timespec(timeout: Option<Duration>) -> Option<Timespec> {
    timeout.map(|d| Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    })
}

/// Waits until one of `fds` is ready or `timeout` passes; returns how many are ready.
/// `EINTR` counts as "nothing ready yet" (the caller loops and recomputes its deadline).
pub(crate) fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> io::Result<usize> {
    match rustix::event::poll(fds, timespec(timeout).as_ref()) {
        Ok(n) => Ok(n),
        Err(rustix::io::Errno::INTR) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Waits until `fd` is writable (or has failed) or `timeout` passes. True when ready.
pub(crate) fn wait_writable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    wait_for(fd, PollFlags::OUT, timeout)
}

/// Waits until `fd` is readable (or has hung up) or `timeout` passes. True when ready.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    wait_for(fd, PollFlags::IN, timeout)
}

/// Polls one descriptor. Unlike [`poll`], an `EINTR` does not end the wait: it is retried
/// with the time left, so `false` always means the timeout has passed (callers such as the
/// handshake report that as the peer not answering in time).
fn wait_for(fd: BorrowedFd<'_>, flags: PollFlags, timeout: Option<Duration>) -> io::Result<bool> {
    // `None` waits forever; so does a timeout too long to add to the clock.
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        let left = deadline.map(|at| at.saturating_duration_since(Instant::now()));
        let mut fds = [PollFd::new(&fd, flags)];
        match rustix::event::poll(&mut fds, timespec(left).as_ref()) {
            Ok(n) => return Ok(n > 0),
            Err(rustix::io::Errno::INTR) if !left.is_some_and(|l| l.is_zero()) => continue,
            Err(rustix::io::Errno::INTR) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

/// One `read(2)`, retrying `EINTR`. `Ok(0)` is end of stream.
pub(crate) fn read(fd: impl AsFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::io::read(&fd, &mut *buf) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Puts `fd` in non-blocking mode.
pub(crate) fn set_nonblocking(fd: impl AsFd) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

/// What kind of stream a file descriptor is, which decides how to write to it without
/// `SIGPIPE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamKind {
    /// A Unix stream socket (socketpair or `unix:`).
    Unix,
    /// A TCP socket.
    Tcp,
    /// The write end of a pipe.
    Pipe,
}

/// One vectored write that never raises `SIGPIPE`: sockets use `MSG_NOSIGNAL`, pipes block
/// the signal around the write. Retries `EINTR`.
pub(crate) fn write_vectored(
    fd: BorrowedFd<'_>,
    kind: StreamKind,
    bufs: &[IoSlice<'_>],
) -> io::Result<usize> {
    loop {
        let result = match kind {
            StreamKind::Unix | StreamKind::Tcp => {
                let mut control = rustix::net::SendAncillaryBuffer::default();
                rustix::net::sendmsg(fd, bufs, &mut control, rustix::net::SendFlags::NOSIGNAL)
                    .map_err(io::Error::from)
            }
            StreamKind::Pipe => sigpipe::writev_without_sigpipe(fd, bufs),
        };
        match result {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Most slices passed to one `writev`/`sendmsg` (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// Writes `rest` until it is empty, waiting for room until `until` (`None`: as long as it
/// takes). On return `rest` is what was not written; out of time, the error is `TimedOut`.
pub(crate) fn write_all_until(
    fd: BorrowedFd<'_>,
    kind: StreamKind,
    rest: &mut &mut [IoSlice<'_>],
    until: Option<Instant>,
) -> io::Result<()> {
    while !rest.is_empty() {
        let batch = rest.len().min(IOV_MAX);
        match write_vectored(fd, kind, &rest[..batch]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(rest, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = until.map(|at| at.saturating_duration_since(Instant::now()));
                if left.is_some_and(|d| d.is_zero()) || !wait_writable(fd, left)? {
                    return Err(io::ErrorKind::TimedOut.into());
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// True when a socket the peer never writes to has become readable: the peer closed it
/// (or broke protocol by writing). Used on TCP, where a write to a closed peer can succeed.
pub(crate) fn peer_closed(fd: BorrowedFd<'_>) -> bool {
    let mut byte = [0u8; 1];
    let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
    match rustix::net::recv(fd, &mut byte[..], flags) {
        Ok((0, _)) => true,
        Ok(_) => true,
        Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => false,
        Err(_) => true,
    }
}

/// The number of open file descriptors of this process (for leak checks in tests).
#[doc(hidden)]
pub fn open_fd_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count())
}
