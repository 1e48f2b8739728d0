//! Error types, shaped after crossbeam-channel's `err.rs` and widened for IPC.
//!
//! Every send error hands the message back (`into_inner`), `Debug` never requires
//! `T: Debug`, and `Display` reads as a sentence.

use std::fmt;
use std::io;

/// Why a send failed for a reason other than a full buffer, a timeout or a gone receiver.
///
/// Kept separate from the message so the three send error types share it.
#[derive(Debug)]
#[non_exhaustive]
pub enum SendFailure {
    /// The encoded message is larger than the channel's size limit.
    TooLarge {
        /// Encoded size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The codec could not encode the message.
    Encode(String),
    /// An operating-system error other than the peer going away.
    Io(io::Error),
    /// This shared-memory sender was handed to a child process
    /// ([`Sender::share_with_child`](crate::Sender::share_with_child)); send from the child.
    Moved,
    /// The sender was used from inside its own send on the same thread: a `Serialize`
    /// implementation sends through the sender it is being sent with.
    Reentered,
    /// This shared-memory sender was copied into two processes by `fork()`, and the other
    /// process claimed its ring first (a ring has exactly one producer). Connect a new
    /// sender in this process, or hand the sender over with `share_with_child`.
    Forked,
}

impl fmt::Display for SendFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendFailure::TooLarge { size, limit } => write!(
                f,
                "the message encodes to {size} bytes, over the channel's limit of {limit} bytes"
            ),
            SendFailure::Encode(reason) => write!(f, "the message could not be encoded: {reason}"),
            SendFailure::Io(e) => write!(f, "the channel failed with an I/O error: {e}"),
            SendFailure::Reentered => f.write_str(
                "the sender was used from inside its own send on the same thread (a Serialize \
                 implementation that sends through it)",
            ),
            SendFailure::Moved => f.write_str(
                "this sender was handed to a child process and can no longer be used here",
            ),
            SendFailure::Forked => f.write_str(
                "this shared-memory sender was copied by fork() and the other process sends \
                 on it: a ring has one producer, so connect a new sender in this process",
            ),
        }
    }
}

/// The error of [`Sender::send`](crate::Sender::send). The message is handed back.
///
/// ```
/// use conduit::{channel, Backend, SendError};
/// let (tx, rx) = channel::<u32>(Backend::Thread)?;
/// drop(rx);
/// let err = tx.send(7).unwrap_err();
/// assert!(err.is_disconnected());
/// assert_eq!(err.into_inner(), 7);
/// # Ok::<(), conduit::Error>(())
/// ```
#[non_exhaustive]
pub enum SendError<T> {
    /// The receiver is gone; the message was not sent.
    Disconnected(T),
    /// The message could not be sent for another reason; it was not sent.
    Failed(T, SendFailure),
}

/// The error of [`Sender::try_send`](crate::Sender::try_send). The message is handed back.
///
/// ```
/// use conduit::{channel_with, Backend, Options, TrySendError};
/// let (tx, _rx) = channel_with::<u8>(Backend::Thread, &Options::new().capacity(1))?;
/// tx.try_send(1).unwrap();
/// assert!(matches!(tx.try_send(2), Err(TrySendError::Full(2))));
/// # Ok::<(), conduit::Error>(())
/// ```
#[non_exhaustive]
pub enum TrySendError<T> {
    /// The buffer is full; the message was not sent.
    Full(T),
    /// The receiver is gone; the message was not sent.
    Disconnected(T),
    /// The message could not be sent for another reason; it was not sent.
    Failed(T, SendFailure),
}

/// The error of [`Sender::send_timeout`](crate::Sender::send_timeout). The message is handed back.
///
/// ```
/// use std::time::Duration;
/// use conduit::{channel_with, Backend, Options, SendTimeoutError};
/// let (tx, _rx) = channel_with::<u8>(Backend::Thread, &Options::new().capacity(1))?;
/// tx.send(1).unwrap();
/// let err = tx.send_timeout(2, Duration::from_millis(10)).unwrap_err();
/// assert!(err.is_timeout());
/// # Ok::<(), conduit::Error>(())
/// ```
#[non_exhaustive]
pub enum SendTimeoutError<T> {
    /// The buffer stayed full until the timeout; the message was not sent.
    Timeout(T),
    /// The receiver is gone; the message was not sent.
    Disconnected(T),
    /// The message could not be sent for another reason; it was not sent.
    Failed(T, SendFailure),
}

macro_rules! send_error_common {
    ($ty:ident { $($extra:ident => $text:expr),* }) => {
        impl<T> $ty<T> {
            /// Takes the message back out of the error.
            pub fn into_inner(self) -> T {
                match self {
                    $($ty::$extra(m) => m,)*
                    $ty::Disconnected(m) => m,
                    $ty::Failed(m, _) => m,
                }
            }

            /// True when the send failed because the receiver is gone.
            pub fn is_disconnected(&self) -> bool {
                matches!(self, $ty::Disconnected(_))
            }

            /// The failure, when the send failed for a reason other than the peer's state.
            pub fn failure(&self) -> Option<&SendFailure> {
                match self {
                    $ty::Failed(_, f) => Some(f),
                    _ => None,
                }
            }
        }

        impl<T> fmt::Debug for $ty<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $($ty::$extra(_) => f.write_str(concat!(stringify!($extra), "(..)")),)*
                    $ty::Disconnected(_) => f.write_str("Disconnected(..)"),
                    $ty::Failed(_, failure) => write!(f, "Failed(.., {failure:?})"),
                }
            }
        }

        impl<T> fmt::Display for $ty<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $($ty::$extra(_) => f.write_str($text),)*
                    $ty::Disconnected(_) => f.write_str("sending on a channel whose receiver is gone"),
                    $ty::Failed(_, failure) => write!(f, "sending failed: {failure}"),
                }
            }
        }

        impl<T> std::error::Error for $ty<T> {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                match self {
                    $ty::Failed(_, SendFailure::Io(e)) => Some(e),
                    _ => None,
                }
            }
        }

    };
}

send_error_common!(SendError {});
send_error_common!(TrySendError { Full => "sending on a full channel" });
send_error_common!(SendTimeoutError { Timeout => "timed out sending on a full channel" });

impl<T> TrySendError<T> {
    /// True when the send failed because the buffer is full.
    pub fn is_full(&self) -> bool {
        matches!(self, TrySendError::Full(_))
    }
}

impl<T> SendTimeoutError<T> {
    /// True when the send timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, SendTimeoutError::Timeout(_))
    }
}

/// The error of [`Receiver::recv`](crate::Receiver::recv).
///
/// ```
/// use conduit::{channel, Backend, RecvError};
/// let (tx, rx) = channel::<u8>(Backend::Thread)?;
/// drop(tx);
/// assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
/// # Ok::<(), conduit::Error>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum RecvError {
    /// Every sender is gone and every message they sent has been received.
    Disconnected,
    /// The receiver itself failed (not a peer): an operating-system error.
    Io(io::Error),
    /// The receiver was used from inside its own receive on the same thread: a
    /// `Deserialize` implementation receives from the receiver it is being received by.
    Reentered,
}

/// The error of [`Receiver::try_recv`](crate::Receiver::try_recv).
#[derive(Debug)]
#[non_exhaustive]
pub enum TryRecvError {
    /// No message is ready now.
    Empty,
    /// Every sender is gone and every message they sent has been received.
    Disconnected,
    /// The receiver itself failed (not a peer): an operating-system error.
    Io(io::Error),
    /// The receiver was used from inside its own receive on the same thread: a
    /// `Deserialize` implementation receives from the receiver it is being received by.
    Reentered,
}

/// The error of [`Receiver::recv_timeout`](crate::Receiver::recv_timeout).
#[derive(Debug)]
#[non_exhaustive]
pub enum RecvTimeoutError {
    /// No message arrived before the timeout.
    Timeout,
    /// Every sender is gone and every message they sent has been received.
    Disconnected,
    /// The receiver itself failed (not a peer): an operating-system error.
    Io(io::Error),
    /// The receiver was used from inside its own receive on the same thread: a
    /// `Deserialize` implementation receives from the receiver it is being received by.
    Reentered,
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Disconnected => {
                f.write_str("receiving on a channel whose senders are all gone")
            }
            RecvError::Io(e) => write!(f, "receiving failed with an I/O error: {e}"),
            RecvError::Reentered => f.write_str(
                "the receiver was used from inside its own receive on the same thread (a Deserialize \
                 implementation that receives from it)",
            ),
        }
    }
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("receiving on an empty channel"),
            TryRecvError::Disconnected => {
                f.write_str("receiving on a channel whose senders are all gone")
            }
            TryRecvError::Io(e) => write!(f, "receiving failed with an I/O error: {e}"),
            TryRecvError::Reentered => f.write_str(
                "the receiver was used from inside its own receive on the same thread (a Deserialize \
                 implementation that receives from it)",
            ),
        }
    }
}

impl fmt::Display for RecvTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvTimeoutError::Timeout => f.write_str("timed out receiving on an empty channel"),
            RecvTimeoutError::Disconnected => {
                f.write_str("receiving on a channel whose senders are all gone")
            }
            RecvTimeoutError::Io(e) => write!(f, "receiving failed with an I/O error: {e}"),
            RecvTimeoutError::Reentered => f.write_str(
                "the receiver was used from inside its own receive on the same thread (a Deserialize \
                 implementation that receives from it)",
            ),
        }
    }
}

macro_rules! recv_error_source {
    ($($ty:ident),*) => {$(
        impl std::error::Error for $ty {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                match self {
                    $ty::Io(e) => Some(e),
                    _ => None,
                }
            }
        }
    )*};
}
recv_error_source!(RecvError, TryRecvError, RecvTimeoutError);

impl From<RecvError> for TryRecvError {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Disconnected => TryRecvError::Disconnected,
            RecvError::Io(e) => TryRecvError::Io(e),
            RecvError::Reentered => TryRecvError::Reentered,
        }
    }
}

impl From<RecvError> for RecvTimeoutError {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Disconnected => RecvTimeoutError::Disconnected,
            RecvError::Io(e) => RecvTimeoutError::Io(e),
            RecvError::Reentered => RecvTimeoutError::Reentered,
        }
    }
}

/// The error of [`channel`](crate::channel), [`Receiver::bind`](crate::Receiver::bind),
/// [`Sender::connect`](crate::Sender::connect) and of handing channel ends to a child process
/// ([`Sender::share_with_child`](crate::Sender::share_with_child),
/// [`Sender::from_parent`](crate::Sender::from_parent) and their `Receiver` twins).
///
/// ```
/// let err = conduit::Receiver::<u8>::bind("carrier-pigeon:coop").unwrap_err();
/// assert!(matches!(err, conduit::Error::BadAddress { .. }));
/// println!("{err}"); // the address "carrier-pigeon:coop" is not valid: ...
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The address does not parse.
    BadAddress {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A live receiver already listens at the address, or something else occupies it.
    AddrInUse {
        /// The address.
        addr: String,
        /// What occupies it.
        reason: String,
    },
    /// Nothing listens at the address.
    NotFound {
        /// The address.
        addr: String,
    },
    /// The peer exchanges a different message type or codec.
    TypeMismatch {
        /// The address (or inheritance name).
        addr: String,
        /// The message type and codec on this side.
        local: String,
        /// The message type and codec on the peer's side.
        remote: String,
    },
    /// The peer speaks a different conduit protocol version.
    VersionMismatch {
        /// The address.
        addr: String,
        /// This side's protocol version.
        local: u16,
        /// The peer's protocol version.
        remote: u16,
    },
    /// The operating system or the peer refused access.
    PermissionDenied {
        /// The address.
        addr: String,
        /// Why access was refused.
        reason: String,
    },
    /// The peer did not follow the conduit protocol (it may not be a conduit endpoint).
    Protocol {
        /// The address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// This handle cannot be handed to a child process now
    /// ([`Sender::share_with_child`](crate::Sender::share_with_child)): it is bound, already
    /// handed over, or part-way through a message.
    CannotShare {
        /// Why.
        reason: String,
    },
    /// What a parent passed in the environment for
    /// [`Receiver::from_parent`](crate::Receiver::from_parent) (or a sender's) is missing,
    /// malformed or not the end expected, or the inheritance name itself is not valid.
    BadInheritance {
        /// The environment variable (or the name given).
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The feature is not available in this build or on this platform.
    Unsupported {
        /// What is not available.
        what: String,
    },
    /// Any other operating-system error.
    Io {
        /// What conduit was doing.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: impl Into<io::Error>) -> Self {
        Error::Io {
            context: context.into(),
            source: source.into(),
        }
    }

    /// A failure to bind `addr`, from the `io::Error`'s kind and message.
    pub(crate) fn bind(addr: &str, e: io::Error) -> Self {
        let addr = addr.to_string();
        match e.kind() {
            io::ErrorKind::AddrInUse => Error::AddrInUse {
                addr,
                reason: e.into_inner().map_or_else(
                    || "another receiver bound it first".to_string(),
                    |inner| inner.to_string(),
                ),
            },
            io::ErrorKind::PermissionDenied => Error::PermissionDenied {
                addr,
                reason: format!("cannot create the socket file: {e}"),
            },
            _ => Error::io(format!("binding {addr:?}"), e),
        }
    }

    /// A failure to connect to `addr`, from the `io::Error`'s kind and message.
    pub(crate) fn connect(addr: &str, e: io::Error) -> Self {
        let addr = addr.to_string();
        match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => Error::NotFound { addr },
            io::ErrorKind::PermissionDenied => Error::PermissionDenied {
                addr,
                reason: e.to_string(),
            },
            _ => Error::io(format!("connecting to {addr:?}"), e),
        }
    }

    pub(crate) fn protocol(addr: &str, reason: impl Into<String>) -> Self {
        Error::Protocol {
            addr: addr.to_string(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadAddress { addr, reason } => {
                write!(f, "the address {addr:?} is not valid: {reason}")
            }
            Error::AddrInUse { addr, reason } => write!(f, "the address {addr:?} is in use: {reason}"),
            Error::NotFound { addr } => write!(f, "no receiver listens at {addr:?}"),
            Error::TypeMismatch { addr, local, remote } => write!(
                f,
                "the peer at {addr:?} exchanges {remote}, but this side exchanges {local}"
            ),
            Error::VersionMismatch { addr, local, remote } => write!(
                f,
                "the peer at {addr:?} speaks conduit protocol version {remote}, this side speaks version {local}"
            ),
            Error::PermissionDenied { addr, reason } => {
                write!(f, "permission denied at {addr:?}: {reason}")
            }
            Error::Protocol { addr, reason } => {
                write!(f, "the peer at {addr:?} broke the conduit protocol: {reason}")
            }
            Error::CannotShare { reason } => {
                write!(f, "the handle cannot be handed to a child process now: {reason}")
            }
            Error::BadInheritance { name, reason } => {
                write!(f, "no channel end can be taken from {name}: {reason}")
            }
            Error::Unsupported { what } => write!(f, "{what} is not available"),
            Error::Io { context, source } => write!(f, "{context} failed: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NotDebug;

    #[test]
    fn debug_does_not_need_t_debug() {
        let e = SendError::Disconnected(NotDebug);
        assert_eq!(format!("{e:?}"), "Disconnected(..)");
        let e = TrySendError::Full(NotDebug);
        assert_eq!(format!("{e:?}"), "Full(..)");
        assert!(e.is_full());
    }

    #[test]
    fn display_reads_as_sentence() {
        let e: SendTimeoutError<u8> =
            SendTimeoutError::Failed(1, SendFailure::TooLarge { size: 10, limit: 5 });
        assert_eq!(
            e.to_string(),
            "sending failed: the message encodes to 10 bytes, over the channel's limit of 5 bytes"
        );
        assert_eq!(e.into_inner(), 1);
        let e = Error::NotFound {
            addr: "unix:/x".into(),
        };
        assert_eq!(e.to_string(), "no receiver listens at \"unix:/x\"");
    }
}
