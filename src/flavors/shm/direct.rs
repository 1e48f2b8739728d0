//! Encoding a large message straight into the ring: one copy on the sending side; and
//! [`wait_for_space`], how every send waits for room in the ring.
//!
//! A message whose encoding outgrows one piece is measured first (a walk of the value that
//! copies nothing, so the size limit is checked before anything is published), then encoded
//! again into [`RingSink`], which writes each run of bytes the encoder produces into the
//! piece it has reserved at the ring's head, publishes the piece when the next one is needed,
//! and publishes the last one, marked as such, when the encoding ends. A byte string (a
//! `serde_bytes` field, say) is copied once, from the caller's value into shared memory.

use std::os::fd::BorrowedFd;

use rustix::event::PollFd;

use super::sleep_bound;
use crate::codec::{Sink, SinkStop};
use crate::flavors::Backoff;
use crate::flavors::{Deadline, NotSent};
use crate::ring::core::{Piece, Producer};
use crate::sys::{self, notify};
use crate::SendFailure;

/// An encoder's output into the ring, piece by piece.
pub(super) struct RingSink<'a> {
    producer: &'a mut Producer,
    sock: BorrowedFd<'a>,
    deadline: Deadline,
    /// Bytes of the encoding still expected (from the measuring walk): how long to make the
    /// next piece. An encoding that turns out longer or shorter is still sent whole.
    expected: usize,
    /// The reserved piece being written, and how much of it is.
    piece: Option<(Piece, usize)>,
    /// Bytes published so far.
    published: usize,
    /// Once the deadline passed with part of the message published, the rest of the
    /// encoding goes here: the caller keeps it as the message's tail.
    spill: &'a mut Vec<u8>,
    spilling: bool,
    /// Why the sink stopped the encoder.
    failure: Option<NotSent>,
}

impl<'a> RingSink<'a> {
    pub(super) fn new(
        producer: &'a mut Producer,
        sock: BorrowedFd<'a>,
        deadline: Deadline,
        expected: usize,
        spill: &'a mut Vec<u8>,
    ) -> Self {
        spill.clear();
        RingSink {
            producer,
            sock,
            deadline,
            expected,
            piece: None,
            published: 0,
            spill,
            spilling: false,
            failure: None,
        }
    }

    /// After the encoder returned: publishes the last piece if it finished, else leaves it
    /// unpublished. Returns the bytes published and `Ok(true)` when the whole message is,
    /// `Ok(false)` when its rest is in the spill buffer (it is committed: the caller must
    /// send that rest before anything else), or why it stopped (with nothing published and
    /// `Full` or `Timeout`, the message was not sent).
    pub(super) fn finish(
        mut self,
        encoded: Result<(), SinkStop>,
    ) -> (usize, Result<bool, NotSent>) {
        if let Some(failure) = self.failure.take() {
            return (self.published, Err(failure));
        }
        if let Err(stop) = encoded {
            let reason = match stop {
                SinkStop::Failed(reason) => reason,
                SinkStop::Stopped => unreachable!("the sink stops only with a failure"),
            };
            return (self.published, Err(NotSent::encode(reason)));
        }
        if self.spilling {
            return (self.published, Ok(false));
        }
        match self.piece.take() {
            Some((piece, filled)) => self.publish(piece, filled, true),
            // An empty encoding (never measured as large, but a value may change): an
            // empty last piece.
            None => match self.next_piece(0) {
                Ok(true) => {
                    let (piece, _) = self.piece.take().expect("just reserved");
                    self.publish(piece, 0, true);
                }
                Ok(false) => return (self.published, Ok(false)),
                Err(failure) => return (self.published, Err(failure)),
            },
        }
        (self.published, Ok(true))
    }

    /// Commits `piece` with its first `filled` bytes.
    fn publish(&mut self, piece: Piece, filled: usize, last: bool) {
        if self.producer.commit(piece.shrink(filled), last) {
            notify::wake(self.sock);
        }
        self.published += filled;
    }

    /// Reserves the next piece, waiting for room as long as the deadline allows. `Ok(false)`
    /// when the deadline passed after part of the message was published: spill from now on.
    fn next_piece(&mut self, at_least: usize) -> Result<bool, NotSent> {
        let max = self.producer.max_piece();
        let len = self.expected.max(at_least).clamp(1, max);
        loop {
            match self.producer.reserve(len)? {
                Some(piece) => {
                    self.piece = Some((piece, 0));
                    return Ok(true);
                }
                None => match wait_for_space(self.producer, self.sock, len, self.deadline) {
                    Ok(()) => {}
                    Err(NotSent::Full | NotSent::Timeout) if self.published > 0 => {
                        self.spilling = true;
                        return Ok(false);
                    }
                    Err(failure) => return Err(failure),
                },
            }
        }
    }
}

impl Sink for RingSink<'_> {
    fn put(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.spilling {
                self.spill.extend_from_slice(bytes);
                return true;
            }
            let full = self
                .piece
                .as_ref()
                .is_some_and(|(p, filled)| *filled == p.len());
            if full {
                let (piece, filled) = self.piece.take().expect("checked");
                self.publish(piece, filled, false);
            }
            if self.piece.is_none() {
                match self.next_piece(bytes.len()) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(failure) => {
                        self.failure = Some(failure);
                        return false;
                    }
                }
            }
            let (piece, filled) = self.piece.as_mut().expect("reserved above");
            let n = bytes.len().min(piece.len() - *filled);
            self.producer.write(piece, *filled, &bytes[..n]);
            *filled += n;
            self.expected = self.expected.saturating_sub(n);
            bytes = &bytes[n..];
        }
        true
    }
}

/// Waits until a piece of `len` bytes may fit, the deadline passes, or the receiver goes:
/// spins a little, then sleeps on the connection until the receiver's wake-up byte, its
/// end, or the deadline (at most `MAX_SLEEP` at a time, see `sleep_bound`).
pub(super) fn wait_for_space(
    producer: &mut Producer,
    sock: BorrowedFd<'_>,
    len: usize,
    deadline: Deadline,
) -> Result<(), NotSent> {
    if !matches!(deadline, Deadline::Now) {
        let mut backoff = Backoff::new();
        while backoff.spin() {
            if producer.has_room_for(len)? {
                return Ok(());
            }
        }
    }
    let remaining = deadline.remaining();
    if remaining.is_some_and(|d| d.is_zero()) {
        return Err(deadline.send_expired());
    }
    if producer.consumer_closed() {
        return Err(NotSent::Disconnected);
    }
    producer.sleep_for_room(len, || {
        let mut fds = [PollFd::new(&sock, notify::READY)];
        let polled = sys::poll(&mut fds, sleep_bound(remaining));
        // A wake-up byte, or the receiver's end.
        let receiver_gone = !fds[0].revents().is_empty() && !notify::drain(sock);
        polled.map_err(|e| NotSent::Failed(SendFailure::Io(e)))?;
        if receiver_gone {
            return Err(NotSent::Disconnected);
        }
        Ok(())
    })
}
