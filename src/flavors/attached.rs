//! Descriptors passed beside messages (sealed buffers, see `blob.rs`), as the `shm:` and
//! `unix:` flavors carry them: each message marked as having descriptors attached comes with
//! exactly one group, passed with `SCM_RIGHTS` before the message's first byte.
//!
//! A group can reach the receiver before its message is taken (the shm receiver reads its
//! socket while it sleeps; a stream read can end just past a marked header), so each
//! receiving connection queues them, bounded: a sender keeps at most
//! [`MAX_IN_FLIGHT`](crate::blob::MAX_IN_FLIGHT) descriptors in messages the receiver has not
//! released yet, and the receiver allows twice that, because a shm sender counts a message
//! as taken once the receiver has released its first frame, a moment before the receiver
//! takes the group. More is a broken or hostile peer, and drops the connection.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use crate::blob::{self, MAX_IN_FLIGHT};
use crate::sys::fdpass;
use crate::sys::notify::WAKE;

/// The byte a group of descriptors is passed with on a shm connection's socket, where
/// every other byte is a wake-up ([`notify::WAKE`](crate::sys::notify::WAKE)).
pub(crate) const GROUP_BYTE: u8 = 2;

/// The most descriptors a receiving connection queues.
pub(crate) const MAX_QUEUED: usize = 2 * MAX_IN_FLIGHT;

/// Groups of descriptors received ahead of their messages, oldest first.
#[derive(Default)]
pub(crate) struct Groups {
    queue: VecDeque<Vec<OwnedFd>>,
    fds: usize,
}

impl Groups {
    /// Queues a group that arrived; an error (the connection must go) past the bound or
    /// for an empty group, which no sender passes.
    pub(crate) fn push(&mut self, group: Vec<OwnedFd>) -> Result<(), String> {
        if group.is_empty() {
            return Err("a group of descriptors without descriptors".into());
        }
        self.fds += group.len();
        if self.fds > MAX_QUEUED {
            return Err(format!(
                "{} descriptors passed ahead of their messages (at most {MAX_QUEUED})",
                self.fds
            ));
        }
        self.queue.push_back(group);
        Ok(())
    }

    /// The oldest group, for the marked message just taken.
    pub(crate) fn pop(&mut self) -> Option<Vec<OwnedFd>> {
        let group = self.queue.pop_front()?;
        self.fds -= group.len();
        Some(group)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Decodes one message of `len` bytes with `decode`: with `group` when it came marked
/// (`Some`), so the sealed buffers it names are made from the group's descriptors, every
/// one of which it must name, and which together with the message stay within `limit`.
#[inline]
pub(crate) fn decode_with(
    group: Option<Vec<OwnedFd>>,
    len: usize,
    limit: usize,
    decode: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    match group {
        None => decode(),
        Some(group) => blob::decoding_attached(group, limit.saturating_sub(len), decode),
    }
}

/// Reads what waits on a shm connection's socket, without blocking: wake-up bytes, and
/// groups of descriptors, each passed with one [`GROUP_BYTE`] (the last byte of the read
/// that returns it, see `fdpass::recv_with_fds`), queued in `groups`. `Ok(false)` when the
/// peer is gone; an error when it sent what no sender sends.
///
/// `for_a_group`: a marked message was just taken and its group must be here, behind
/// however many wake-ups: read until a group comes or the socket is empty (at most 4,096
/// reads of up to 256 bytes, more than a socket buffer holds, so a peer writing all the
/// while cannot keep us here). Otherwise at most 16 reads, as `notify::drain`: what is left
/// keeps the socket readable for the next poll.
pub(crate) fn drain_socket(
    sock: BorrowedFd<'_>,
    groups: &mut Groups,
    for_a_group: bool,
) -> Result<bool, String> {
    let mut buf = [0u8; 256];
    let reads = if for_a_group { 4096 } else { 16 };
    for _ in 0..reads {
        match fdpass::recv_with_fds(sock, &mut buf, MAX_QUEUED) {
            Ok((0, _)) => return Ok(false),
            Ok((n, fds)) => {
                let (last, wakes) = buf[..n].split_last().expect("n > 0");
                if wakes.iter().any(|&b| b != WAKE) {
                    return Err("a byte on the connection that is not a wake-up".into());
                }
                let group = !fds.is_empty();
                match (*last, group) {
                    (WAKE, false) => {}
                    (GROUP_BYTE, true) => {
                        groups.push(fds)?;
                        if for_a_group {
                            return Ok(true);
                        }
                    }
                    _ => {
                        return Err(
                            "descriptors passed without their marker byte, or it without them"
                                .into(),
                        )
                    }
                }
                // A short read without descriptors emptied the socket; after a group, more
                // may wait.
                if n < buf.len() && !group {
                    return Ok(true);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(e.to_string()),
            Err(_) => return Ok(false),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::sys::fdpass::send_with_fds;

    fn memfd() -> OwnedFd {
        rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap()
    }

    /// A group behind more wake-ups than one ordinary drain reads is still found when a
    /// marked message needs it.
    #[test]
    fn a_group_behind_many_wake_ups_is_found() {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        send_with_fds(a.as_fd(), &[WAKE; 10_000], &[]).unwrap();
        let fd = memfd();
        send_with_fds(a.as_fd(), &[GROUP_BYTE], &[fd.as_fd()]).unwrap();
        let mut groups = Groups::default();
        assert_eq!(drain_socket(b.as_fd(), &mut groups, false), Ok(true));
        assert!(groups.is_empty(), "an ordinary drain stops after 16 reads");
        assert_eq!(drain_socket(b.as_fd(), &mut groups, true), Ok(true));
        assert_eq!(groups.pop().map(|g| g.len()), Some(1));
    }

    /// What no sender sends: another byte, descriptors with a wake-up, the marker byte
    /// alone, more descriptors queued than the bound.
    #[test]
    fn what_no_sender_sends_is_an_error() {
        let fd = memfd();
        let cases: [(&[u8], usize); 4] =
            [(b"\x01\x07", 0), (b"\x01", 1), (b"\x02", 0), (b"\x02", 129)];
        for (bytes, count) in cases {
            let (a, b) = UnixStream::pair().unwrap();
            let fds = vec![fd.as_fd(); count];
            send_with_fds(a.as_fd(), bytes, &fds).unwrap();
            let mut groups = Groups::default();
            let got = drain_socket(b.as_fd(), &mut groups, true);
            assert!(got.is_err(), "{bytes:?} with {count} descriptors: {got:?}");
        }
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert_eq!(
            drain_socket(b.as_fd(), &mut Groups::default(), false),
            Ok(false)
        );
    }
}
