//! The backends behind [`Sender`](crate::Sender) and [`Receiver`](crate::Receiver). Each flavor
//! offers the same operations; `channel.rs` matches on a private enum to pick one.
//!
//! - `thread.rs`: in-process channels (crossbeam-channel); values moved, never encoded.
//! - `stream/`: length-prefixed frames over a Unix socket, a TCP socket or a pipe.
//! - `shm/`: a shared-memory ring per connected sender.
//! - `zenoh/`: `zenoh:KEY` channels on the zenoh engine (feature `zenoh`).
//! - `acceptor.rs`: the thread that accepts and handshakes senders for a bound receiver.
//! - `attached.rs`: descriptors (sealed buffers) passed beside messages on `shm:` and `unix:`.
//! - `lock.rs`: the per-handle lock with deadlines that serializing backends share.
//!
//! This file holds what the flavors share: deadlines, why a send or receive did not happen,
//! the committed tail of a message, the fair scan over connections, and the spin before a
//! sleep.

use std::io;
use std::time::{Duration, Instant};

use crate::codec::Decode;
use crate::{RecvError, RecvTimeoutError, SendFailure, TryRecvError};
use lock::LockFail;

pub(crate) mod acceptor;
pub(crate) mod attached;
pub(crate) mod lock;
pub(crate) mod shm;
pub(crate) mod stream;
pub(crate) mod thread;
#[cfg(feature = "zenoh")]
pub(crate) mod zenoh;

/// How long an operation may wait.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Deadline {
    /// Do not wait (`try_send`, `try_recv`).
    Now,
    /// Wait until this instant (`*_timeout`).
    At(Instant),
    /// Wait as long as it takes (`send`, `recv`).
    Never,
}

impl Deadline {
    pub(crate) fn after(timeout: Duration) -> Deadline {
        match Instant::now().checked_add(timeout) {
            Some(at) => Deadline::At(at),
            None => Deadline::Never,
        }
    }

    /// What a send reports when this deadline passes: `Full` for `try_send`, else `Timeout`.
    pub(crate) fn send_expired(&self) -> NotSent {
        match self {
            Deadline::Now => NotSent::Full,
            _ => NotSent::Timeout,
        }
    }

    /// What a receive reports when this deadline passes: `Empty` for `try_recv`, else
    /// `Timeout`.
    pub(crate) fn recv_expired(&self) -> NotReceived {
        match self {
            Deadline::Now => NotReceived::Empty,
            _ => NotReceived::Timeout,
        }
    }

    /// Time left, `None` meaning forever; zero once passed.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        match self {
            Deadline::Now => Some(Duration::ZERO),
            Deadline::At(at) => Some(at.saturating_duration_since(Instant::now())),
            Deadline::Never => None,
        }
    }
}

/// How long a shared-memory side spins before it sleeps: long enough for a peer on the
/// other core to answer a ping, short enough not to burn a core.
pub(crate) const SPIN_FOR: Duration = Duration::from_micros(50);

/// The one spin-then-sleep policy (crossbeam-utils' `Backoff` is the model): busy-wait with
/// a spin hint per turn, give the core away every 64 turns, and say "sleep now" once about
/// [`SPIN_FOR`] has passed. The clock is first read after 64 turns, so a wait that ends
/// quickly costs no clock read.
pub(crate) struct Backoff {
    start: Option<Instant>,
    turns: u32,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff {
            start: None,
            turns: 0,
        }
    }

    /// One more turn; false once the budget is spent (then sleep).
    #[inline]
    pub(crate) fn spin(&mut self) -> bool {
        std::hint::spin_loop();
        self.turns += 1;
        if self.turns % 64 != 0 {
            return true;
        }
        // A no-op when nothing else is runnable here, and the peer's chance to run (and
        // answer) when it shares our core.
        std::thread::yield_now();
        let start = *self.start.get_or_insert_with(Instant::now);
        start.elapsed() < SPIN_FOR
    }
}

/// The connections of a receiver in turn, starting at `next` (a receiver keeps where the
/// last message came from plus one): every sender gets served, none starves the others.
#[inline]
pub(crate) fn in_turn(next: usize, n: usize) -> impl Iterator<Item = usize> {
    let next = next.min(n);
    (next..n).chain(0..next)
}

/// Received messages at least this long are decoded from a buffer the receiver gives up
/// ([`decode_shared`]), so that a [`crate::Bytes`] in them shares it instead of being copied.
pub(crate) const SHARE_FROM: usize = 64 << 10;

/// Decodes the message in `buf` (the receiver's own copy) from a buffer a [`crate::Bytes`]
/// may keep a share of (`bytes::decode_sharing`): the copy into `buf` is then the only one
/// on the receiving side. `buf` gets its vector back if nothing kept a share, else a fresh
/// one of the same size for the next message (which is probably as large).
pub(crate) fn decode_shared(buf: &mut Vec<u8>, decode: &mut Decode<'_>) -> Result<(), String> {
    let len = buf.len();
    let shared = ::bytes::Bytes::from(std::mem::take(buf));
    let decoded = crate::bytes::decode_sharing(&shared, |bytes| decode(bytes));
    *buf = match shared.try_into_mut() {
        Ok(unshared) => unshared.into(),
        Err(_) => Vec::with_capacity(len),
    };
    decoded
}

/// Removes the connections `dead` marks from a receiver's list, letting `on_drop` see each
/// first. `next` needs no fixing afterwards: [`in_turn`] starts from 0 when it is past the
/// end.
#[inline]
pub(crate) fn drop_dead<C>(
    conns: &mut Vec<C>,
    dead: impl Fn(&C) -> bool,
    mut on_drop: impl FnMut(&C),
) {
    if conns.iter().any(&dead) {
        conns.retain(|c| {
            let keep = !dead(c);
            if !keep {
                on_drop(c);
            }
            keep
        });
    }
}

/// The unsent rest of a message a sender has committed to (its first byte or piece is out,
/// so taking it back would tear it): sent before anything else, and by the last clone's drop
/// on a thread of its own.
#[derive(Default)]
pub(crate) struct Tail {
    bytes: Vec<u8>,
    /// How much of `bytes` is sent.
    done: usize,
}

impl Tail {
    pub(crate) fn is_pending(&self) -> bool {
        self.done < self.bytes.len()
    }

    /// Keeps `rest`, the parts of a message not sent, as the tail.
    pub(crate) fn keep<'a>(&mut self, rest: impl IntoIterator<Item = &'a [u8]>) {
        self.bytes.clear();
        for part in rest {
            self.bytes.extend_from_slice(part);
        }
        self.done = 0;
    }

    /// Sends what is left with `send`, which returns how many bytes it sent and whether it
    /// sent them all.
    #[inline]
    pub(crate) fn finish(
        &mut self,
        send: impl FnOnce(&[u8]) -> (usize, Result<(), NotSent>),
    ) -> Result<(), NotSent> {
        if !self.is_pending() {
            return Ok(());
        }
        self.finish_rest(send)
    }

    #[cold]
    fn finish_rest(
        &mut self,
        send: impl FnOnce(&[u8]) -> (usize, Result<(), NotSent>),
    ) -> Result<(), NotSent> {
        let (sent, result) = send(&self.bytes[self.done..]);
        self.done += sent;
        if result.is_ok() {
            self.bytes.clear();
            self.done = 0;
            if self.bytes.capacity() > KEEP_BUFFER {
                self.bytes = Vec::new();
            }
        }
        result
    }

    /// Runs `flush`, which finishes a pending tail, on a short-lived thread of its own, so a
    /// drop never blocks; `flush` ends when the tail is out or the receiver is gone.
    pub(crate) fn finish_elsewhere(flush: impl FnOnce() + Send + 'static) {
        // If no thread can be started, the tail is lost with the connection; the receiver
        // drops a message it got only part of.
        let _ = std::thread::Builder::new()
            .name("conduit-flush".to_string())
            .spawn(flush);
    }
}

/// Encode buffers bigger than this are freed after use rather than kept for the next message.
pub(crate) const KEEP_BUFFER: usize = 4 << 20;

/// Why a flavor did not send a message (before the message is attached to the public
/// error).
#[derive(Debug)]
pub(crate) enum NotSent {
    Full,
    Timeout,
    Disconnected,
    Failed(SendFailure),
}

impl NotSent {
    /// The codec could not encode the message.
    pub(crate) fn encode(reason: String) -> NotSent {
        NotSent::Failed(SendFailure::Encode(reason))
    }
}

impl From<io::Error> for NotSent {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected => NotSent::Disconnected,
            _ => NotSent::Failed(SendFailure::Io(e)),
        }
    }
}

impl From<(LockFail, Deadline)> for NotSent {
    fn from((fail, deadline): (LockFail, Deadline)) -> Self {
        match fail {
            // Another clone is inside: it holds the connection until its own message is out.
            LockFail::Busy => deadline.send_expired(),
            LockFail::Reentered => NotSent::Failed(SendFailure::Reentered),
        }
    }
}

impl From<(LockFail, Deadline)> for NotReceived {
    fn from((fail, deadline): (LockFail, Deadline)) -> Self {
        match fail {
            // Another thread is receiving: whatever arrives is its to take.
            LockFail::Busy => deadline.recv_expired(),
            LockFail::Reentered => NotReceived::Reentered,
        }
    }
}

/// Why a flavor did not receive a message.
#[derive(Debug)]
pub(crate) enum NotReceived {
    Empty,
    Timeout,
    Disconnected,
    /// A use from inside a use on the same thread (`lock.rs`).
    Reentered,
    Io(io::Error),
}

impl NotReceived {
    /// The error of `recv`, which has no deadline.
    pub(crate) fn into_recv_error(self) -> RecvError {
        match self {
            NotReceived::Disconnected => RecvError::Disconnected,
            NotReceived::Reentered => RecvError::Reentered,
            NotReceived::Io(e) => RecvError::Io(e),
            NotReceived::Empty | NotReceived::Timeout => {
                unreachable!("a receive without deadline reports neither Empty nor Timeout")
            }
        }
    }

    /// The error of `try_recv`.
    pub(crate) fn into_try_recv_error(self) -> TryRecvError {
        match self {
            NotReceived::Empty | NotReceived::Timeout => TryRecvError::Empty,
            NotReceived::Disconnected => TryRecvError::Disconnected,
            NotReceived::Reentered => TryRecvError::Reentered,
            NotReceived::Io(e) => TryRecvError::Io(e),
        }
    }

    /// The error of `recv_timeout`.
    pub(crate) fn into_recv_timeout_error(self) -> RecvTimeoutError {
        match self {
            NotReceived::Empty | NotReceived::Timeout => RecvTimeoutError::Timeout,
            NotReceived::Disconnected => RecvTimeoutError::Disconnected,
            NotReceived::Reentered => RecvTimeoutError::Reentered,
            NotReceived::Io(e) => RecvTimeoutError::Io(e),
        }
    }
}
