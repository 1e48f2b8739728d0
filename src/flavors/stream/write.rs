//! Writing to the stream under a deadline, without `SIGPIPE`.
//!
//! A sender's socket is left blocking, and each write says whether it may wait: `send`
//! (deadline `Never`) lets the kernel wait for room inside the write, as a hand-written
//! transport does, while `try_send` and `send_timeout` pass `MSG_DONTWAIT` and wait in
//! `poll` no longer than their deadline. A non-blocking socket waited for room in `poll`
//! after every `EAGAIN`: two system calls more each time the buffer filled, which is every
//! few pieces of a large message. A pipe has no per-write flag, so it stays non-blocking and
//! always waits in `poll`. A write that finds the descriptor non-blocking anyway (a child
//! that inherited it may have set that) also waits in `poll`: the mode only changes the
//! cost, never the outcome.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd};

use rustix::net::SendFlags;

use crate::flavors::{Deadline, NotSent};
use crate::sys::{self, StreamKind};

/// Most slices passed to one `sendmsg`/`writev` (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// Puts a sender's descriptor in the mode its writes expect: blocking for a socket,
/// non-blocking for a pipe.
pub(super) fn configure(fd: impl AsFd, kind: StreamKind) -> io::Result<()> {
    if kind == StreamKind::Pipe {
        return sys::set_nonblocking(fd);
    }
    let flags = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, flags - rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

/// The flags of a socket write under `deadline`.
#[inline]
fn flags(deadline: Deadline) -> SendFlags {
    match deadline {
        Deadline::Never => SendFlags::NOSIGNAL,
        Deadline::Now | Deadline::At(_) => SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    }
}

/// One write of `bytes` that never raises `SIGPIPE`, retrying `EINTR`: how many it took
/// (`WouldBlock` when none fit and `deadline` does not let it wait). A socket gets a plain
/// `send`, which costs the kernel less than `sendmsg` (no message header or vector to copy
/// in and check).
#[inline]
pub(super) fn write_once(
    fd: BorrowedFd<'_>,
    kind: StreamKind,
    bytes: &[u8],
    deadline: Deadline,
) -> io::Result<usize> {
    if kind == StreamKind::Pipe {
        return sys::write_vectored(fd, kind, &[IoSlice::new(bytes)]);
    }
    loop {
        match rustix::net::send(fd, bytes, flags(deadline)) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// One vectored write, as [`write_once`].
fn write_vectored(
    fd: BorrowedFd<'_>,
    kind: StreamKind,
    bufs: &[IoSlice<'_>],
    deadline: Deadline,
) -> io::Result<usize> {
    if kind == StreamKind::Pipe {
        return sys::write_vectored(fd, kind, bufs);
    }
    loop {
        let mut control = rustix::net::SendAncillaryBuffer::default();
        match rustix::net::sendmsg(fd, bufs, &mut control, flags(deadline)) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

pub(super) fn remaining(slices: &[IoSlice<'_>]) -> usize {
    slices.iter().map(|s| s.len()).sum()
}

/// Writes all of `bytes`, waiting for room until `deadline`: how many were written, and
/// whether all were.
pub(super) fn write_all(
    fd: BorrowedFd<'_>,
    kind: StreamKind,
    bytes: &[u8],
    deadline: Deadline,
) -> (usize, Result<(), NotSent>) {
    let mut slices = [IoSlice::new(bytes)];
    let mut rest = &mut slices[..];
    let result = write_slices(fd, kind, &mut rest, deadline);
    (bytes.len() - remaining(rest), result)
}

/// Writes `rest` until it is empty, waiting for room until `deadline`; on return `rest` is
/// what was not written. Out of time: `Full` (deadline `Now`) or `Timeout`.
pub(super) fn write_slices(
    fd: BorrowedFd<'_>,
    kind: StreamKind,
    rest: &mut &mut [IoSlice<'_>],
    deadline: Deadline,
) -> Result<(), NotSent> {
    while !rest.is_empty() {
        let batch = rest.len().min(IOV_MAX);
        match write_vectored(fd, kind, &rest[..batch], deadline) {
            Ok(0) => return Err(NotSent::from(io::Error::from(io::ErrorKind::WriteZero))),
            Ok(n) => IoSlice::advance_slices(rest, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = deadline.remaining();
                if left.is_some_and(|d| d.is_zero())
                    || !sys::wait_writable(fd, left).map_err(NotSent::from)?
                {
                    return Err(deadline.send_expired());
                }
            }
            Err(e) => return Err(NotSent::from(e)),
        }
    }
    Ok(())
}
