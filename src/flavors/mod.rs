//! The backends behind [`Sender`](crate::Sender) and [`Receiver`](crate::Receiver). Each flavor
//! offers the same operations; `channel.rs` matches on a private enum to pick one.

use std::io;
use std::time::{Duration, Instant};

use crate::SendFailure;
use lock::LockFail;

pub(crate) mod acceptor;
pub(crate) mod lock;
pub(crate) mod shm;
pub(crate) mod shm_send;
pub(crate) mod stream;
pub(crate) mod stream_send;
pub(crate) mod thread;

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
    pub(crate) fn send_expired(&self) -> SendFail {
        match self {
            Deadline::Now => SendFail::Full,
            _ => SendFail::Timeout,
        }
    }

    /// What a receive reports when this deadline passes: `Empty` for `try_recv`, else
    /// `Timeout`.
    pub(crate) fn recv_expired(&self) -> RecvFail {
        match self {
            Deadline::Now => RecvFail::Empty,
            _ => RecvFail::Timeout,
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

/// Busy-waits for about `SPIN_FOR` before a shared-memory side goes to sleep: long enough
/// for a peer on the other core to answer a ping, short enough not to burn a core. The
/// clock is first read after 64 turns (a message that comes quickly costs no clock read)
/// and then every 64 turns only.
pub(crate) struct Spin {
    start: Option<Instant>,
    turns: u32,
}

/// How long a shared-memory side spins before it sleeps.
pub(crate) const SPIN_FOR: Duration = Duration::from_micros(50);

impl Spin {
    pub(crate) fn new() -> Spin {
        Spin {
            start: None,
            turns: 0,
        }
    }

    /// One more turn; false once the budget is spent.
    pub(crate) fn again(&mut self) -> bool {
        std::hint::spin_loop();
        self.turns += 1;
        if self.turns % 64 != 0 {
            return true;
        }
        // Give the core away now and then: a no-op when nothing else is runnable here, and
        // the peer's chance to run (and free the space we wait for) when it shares our core.
        std::thread::yield_now();
        let start = *self.start.get_or_insert_with(Instant::now);
        start.elapsed() < SPIN_FOR
    }
}

/// Why a flavor's send failed, before the message is attached.
#[derive(Debug)]
pub(crate) enum SendFail {
    Full,
    Timeout,
    Disconnected,
    Failed(SendFailure),
}

impl From<io::Error> for SendFail {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected => SendFail::Disconnected,
            _ => SendFail::Failed(SendFailure::Io(e)),
        }
    }
}

impl From<(LockFail, Deadline)> for SendFail {
    fn from((fail, deadline): (LockFail, Deadline)) -> Self {
        match fail {
            // Another clone is inside: it holds the connection until its own message is out.
            LockFail::Busy => deadline.send_expired(),
            LockFail::Reentered => {
                SendFail::Failed(SendFailure::Io(io::Error::other(LockFail::REENTERED)))
            }
        }
    }
}

impl From<(LockFail, Deadline)> for RecvFail {
    fn from((fail, deadline): (LockFail, Deadline)) -> Self {
        match fail {
            // Another thread is receiving: whatever arrives is its to take.
            LockFail::Busy => deadline.recv_expired(),
            LockFail::Reentered => RecvFail::Io(io::Error::other(LockFail::REENTERED)),
        }
    }
}

/// Why a flavor's receive failed.
#[derive(Debug)]
pub(crate) enum RecvFail {
    Empty,
    Timeout,
    Disconnected,
    Io(io::Error),
}
