//! The backends behind [`Sender`](crate::Sender) and [`Receiver`](crate::Receiver). Each flavor
//! offers the same operations; `channel.rs` matches on a private enum to pick one.

use std::io;
use std::time::{Duration, Instant};

use crate::SendFailure;

pub(crate) mod acceptor;
pub(crate) mod biased_lock;
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

/// Why a flavor's receive failed.
#[derive(Debug)]
pub(crate) enum RecvFail {
    Empty,
    Timeout,
    Disconnected,
    Io(io::Error),
}
