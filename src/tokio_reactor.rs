//! A receiver's registration with tokio's reactor (the `tokio` feature): the field
//! `Receiver` carries, kept apart from `async_tokio.rs` (which makes and uses it) so that
//! `channel.rs` does not depend on the async code.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Mutex, OnceLock};

use tokio::io::unix::AsyncFd;

/// A descriptor the receiver owns, as `AsyncFd` wants it (by raw number: the receiver
/// keeps it open for as long as the registration lives, see `Receiver::reactor`).
pub(crate) struct Raw(pub(crate) RawFd);

impl AsRawFd for Raw {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// A receiver's registration with the reactor of the runtime that first received from it
/// asynchronously.
#[derive(Default)]
pub(crate) struct Reactor {
    pub(crate) fd: OnceLock<AsyncFd<Raw>>,
    /// Held while the registration is made: two registrations of one descriptor would
    /// fail, and dropping the loser's would remove the winner's.
    pub(crate) making: Mutex<()>,
}
