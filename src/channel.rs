//! The public `Sender<T>` and `Receiver<T>`: a private flavor enum, matched in each method
//! (crossbeam-channel's `channel.rs` pattern).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use crate::addr::Address;
use crate::codec;
use crate::flavors::shm::{self, ShmReceiver, ShmSender};
use crate::flavors::stream::{StreamReceiver, StreamSender};
use crate::flavors::thread::{self, ThreadReceiver, ThreadSender};
#[cfg(feature = "zenoh")]
use crate::flavors::zenoh::{recv::ZenohReceiver, send::ZenohSender};
use crate::flavors::{Deadline, NotReceived, NotSent};
use crate::{
    Error, Message, Options, RecvError, RecvTimeoutError, SendError, SendTimeoutError,
    TryRecvError, TrySendError,
};

/// Which transport carries a channel.
///
/// | backend | between | carries |
/// |---|---|---|
/// | `Thread` | threads of one process | the value itself, moved |
/// | `Shm` | processes on one machine | encoded bytes through a shared-memory ring per sender |
/// | `Socket` | processes, one machine (`unix:`) or many (`tcp:`) | encoded, length-prefixed frames |
/// | `Pipe` | processes related by fork/spawn | encoded, length-prefixed frames |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// In-process channel (crossbeam-channel); messages are moved, never encoded.
    Thread,
    /// A lock-free shared-memory ring per sender, between processes on one machine.
    Shm,
    /// Unix domain stream socket (a socketpair for [`channel`]); TCP through `tcp:` addresses.
    Socket,
    /// An anonymous pipe; usable between threads and across fork/spawn by inheritance.
    Pipe,
}

pub(crate) enum SenderFlavor<T> {
    Thread(ThreadSender<T>),
    Stream(StreamSender),
    Shm(ShmSender),
    #[cfg(feature = "zenoh")]
    Zenoh(ZenohSender),
}

pub(crate) enum ReceiverFlavor<T> {
    Thread(ThreadReceiver<T>),
    Stream(StreamReceiver),
    Shm(ShmReceiver),
    #[cfg(feature = "zenoh")]
    Zenoh(ZenohReceiver),
}

/// The sending half of a channel. `Clone + Send + Sync`; clones are independent producers
/// whose messages never interleave.
///
/// ```
/// use conduit::{channel, Backend};
/// let (tx, rx) = channel::<String>(Backend::Socket)?;
/// let tx2 = tx.clone();
/// std::thread::spawn(move || tx2.send("from a thread".to_string()).unwrap());
/// assert_eq!(rx.recv().unwrap(), "from a thread");
/// # Ok::<(), conduit::Error>(())
/// ```
pub struct Sender<T> {
    pub(crate) flavor: SenderFlavor<T>,
}

/// The receiving half of a channel: one consumer, any number of producers.
///
/// ```
/// use conduit::{Receiver, Sender};
/// let rx = Receiver::<u64>::bind("thread:doc-receiver")?;
/// let tx = Sender::<u64>::connect("thread:doc-receiver")?;
/// tx.send(42).unwrap();
/// assert_eq!(rx.recv().unwrap(), 42);
/// # Ok::<(), conduit::Error>(())
/// ```
pub struct Receiver<T> {
    /// The readiness descriptor's registration with tokio's reactor, made by the first
    /// async receive. Declared first: it must leave the reactor before the descriptor,
    /// which the flavor owns, is closed.
    #[cfg(feature = "tokio")]
    pub(crate) reactor: crate::tokio_reactor::Reactor,
    pub(crate) flavor: ReceiverFlavor<T>,
}

/// Creates an anonymous connected pair on `backend`, with default [`Options`].
///
/// Use it between threads, or across `fork()` and spawned children by inheritance
/// ([`Sender::share_with_child`]). Every backend is bounded; see [`Options`] for the default
/// capacity and its unit per backend.
///
/// ```
/// use conduit::{channel, Backend};
/// for backend in [Backend::Thread, Backend::Socket, Backend::Pipe] {
///     let (tx, rx) = channel::<(u32, String)>(backend)?;
///     tx.send((1, "one".into())).unwrap();
///     drop(tx);
///     assert_eq!(rx.recv().unwrap(), (1, "one".to_string()));
///     assert!(rx.recv().is_err()); // all senders gone, drained: Disconnected
/// }
/// # Ok::<(), conduit::Error>(())
/// ```
pub fn channel<T: Message>(backend: Backend) -> Result<(Sender<T>, Receiver<T>), Error> {
    channel_with(backend, &Options::new())
}

/// Like [`channel`], with explicit [`Options`].
///
/// ```
/// use conduit::{channel_with, Backend, Options};
/// let (tx, rx) = channel_with::<Vec<u8>>(Backend::Pipe, &Options::new().max_message_size(1024))?;
/// assert!(tx.send(vec![0; 4096]).is_err()); // over the limit: handed back, never sent
/// tx.send(vec![1; 16]).unwrap();
/// assert_eq!(rx.recv().unwrap(), vec![1; 16]);
/// # Ok::<(), conduit::Error>(())
/// ```
pub fn channel_with<T: Message>(
    backend: Backend,
    opts: &Options,
) -> Result<(Sender<T>, Receiver<T>), Error> {
    let (tx, rx) = match backend {
        Backend::Thread => {
            let (tx, rx) = thread::channel(opts);
            (SenderFlavor::Thread(tx), ReceiverFlavor::Thread(rx))
        }
        Backend::Socket | Backend::Pipe => {
            let (tx, rx) = crate::flavors::stream::pair(backend == Backend::Pipe, opts)?;
            (SenderFlavor::Stream(tx), ReceiverFlavor::Stream(rx))
        }
        Backend::Shm => {
            let (tx, rx) = shm::pair(opts)?;
            (SenderFlavor::Shm(tx), ReceiverFlavor::Shm(rx))
        }
    };
    Ok((Sender { flavor: tx }, Receiver::new(rx)))
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        let flavor = match &self.flavor {
            SenderFlavor::Thread(s) => SenderFlavor::Thread(s.clone()),
            SenderFlavor::Stream(s) => SenderFlavor::Stream(s.clone()),
            SenderFlavor::Shm(s) => SenderFlavor::Shm(s.clone()),
            #[cfg(feature = "zenoh")]
            SenderFlavor::Zenoh(s) => SenderFlavor::Zenoh(s.clone()),
        };
        Sender { flavor }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad("Sender { .. }")
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad("Receiver { .. }")
    }
}

impl<T: Message> Sender<T> {
    /// Connects to a receiver bound at `addr` (`thread:NAME`, `shm:PATH`, `unix:PATH`,
    /// `tcp:HOST:PORT`, and `zenoh:KEY` with the `zenoh` feature, which looks for the
    /// receiver for up to 2 s before reporting [`Error::NotFound`]).
    ///
    /// Across processes, the connection begins with a handshake: a peer that speaks another
    /// protocol version or exchanges another message type is refused here, with
    /// [`Error::VersionMismatch`] or [`Error::TypeMismatch`].
    ///
    /// ```
    /// use conduit::{Receiver, Sender};
    /// let path = std::env::temp_dir().join(format!("conduit-doc-{}.sock", std::process::id()));
    /// let addr = format!("unix:{}", path.display());
    /// let rx = Receiver::<String>::bind(&addr)?;
    /// let tx = Sender::<String>::connect(&addr)?;
    /// tx.send("hello".into()).unwrap();
    /// assert_eq!(rx.recv().unwrap(), "hello");
    /// assert!(Sender::<u64>::connect(&addr).is_err()); // wrong message type
    /// # Ok::<(), conduit::Error>(())
    /// ```
    pub fn connect(addr: &str) -> Result<Self, Error> {
        Self::connect_with(addr, &Options::new())
    }

    /// Like [`Sender::connect`], with explicit [`Options`] (size limit; send buffer capacity
    /// for `unix:` and `tcp:`; a `shm:` ring's size is the receiver's).
    pub fn connect_with(addr: &str, opts: &Options) -> Result<Self, Error> {
        let flavor = match Address::parse(addr)? {
            Address::Thread(name) => SenderFlavor::Thread(ThreadSender::connect(&name)?),
            parsed @ Address::Shm(_) => {
                SenderFlavor::Shm(ShmSender::connect::<T>(addr, &parsed, opts)?)
            }
            parsed @ (Address::Unix(_) | Address::Tcp(_)) => {
                SenderFlavor::Stream(StreamSender::connect::<T>(addr, &parsed, opts)?)
            }
            #[cfg(feature = "zenoh")]
            Address::Zenoh(key) => {
                SenderFlavor::Zenoh(ZenohSender::connect::<T>(addr, &key, opts)?)
            }
            #[cfg(not(feature = "zenoh"))]
            Address::Zenoh(_) => return Err(no_zenoh()),
        };
        Ok(Sender { flavor })
    }

    /// Sends `msg`, waiting while the buffer is full. Fails, handing `msg` back, when the
    /// receiver is gone or the message cannot be sent (for example, over the size limit).
    #[inline]
    pub fn send(&self, msg: T) -> Result<(), SendError<T>> {
        if let SenderFlavor::Thread(s) = &self.flavor {
            return s.send(msg);
        }
        self.send_encoded(msg, Deadline::Never)
            .map_err(|(m, f)| match f {
                NotSent::Disconnected => SendError::Disconnected(m),
                NotSent::Failed(f) => SendError::Failed(m, f),
                NotSent::Full | NotSent::Timeout => {
                    unreachable!("a send without deadline reports neither Full nor Timeout")
                }
            })
    }

    /// Sends `msg` if that is possible without waiting for buffer space.
    ///
    /// On the serializing backends a message is committed once its first byte is in the
    /// kernel's buffer (or its first piece in the shared-memory ring): if the rest does not
    /// fit, the rest is kept by the sender (at most one message) and written before the next
    /// message, so a message is never torn and `try_send` never waits. While such a rest is
    /// pending, the next `try_send` reports `Full` if the rest still does not fit. It also
    /// reports `Full` at once while another clone holds the connection (blocked in `send`).
    #[inline]
    pub fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        if let SenderFlavor::Thread(s) = &self.flavor {
            return s.try_send(msg);
        }
        self.send_encoded(msg, Deadline::Now)
            .map_err(|(m, f)| match f {
                NotSent::Full | NotSent::Timeout => TrySendError::Full(m),
                NotSent::Disconnected => TrySendError::Disconnected(m),
                NotSent::Failed(f) => TrySendError::Failed(m, f),
            })
    }

    /// Sends `msg`, waiting at most `timeout` for buffer space. As with
    /// [`Sender::try_send`], a message begun in time is committed and finished later.
    #[inline]
    pub fn send_timeout(&self, msg: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        if let SenderFlavor::Thread(s) = &self.flavor {
            return s.send_timeout(msg, timeout);
        }
        self.send_encoded(msg, Deadline::after(timeout))
            .map_err(|(m, f)| match f {
                NotSent::Full | NotSent::Timeout => SendTimeoutError::Timeout(m),
                NotSent::Disconnected => SendTimeoutError::Disconnected(m),
                NotSent::Failed(f) => SendTimeoutError::Failed(m, f),
            })
    }

    /// Sends through a flavor that encodes. The thread flavor moves `msg` instead; each
    /// public method hands it over before coming here, so the thread path carries no
    /// deadline, no encoder and no intermediate error. Never inlined, so that the public
    /// methods stay small enough to inline into their callers.
    #[inline(never)]
    fn send_encoded(&self, msg: T, deadline: Deadline) -> Result<(), (T, NotSent)> {
        match &self.flavor {
            SenderFlavor::Thread(_) => unreachable!("the public methods send thread messages"),
            SenderFlavor::Stream(s) => s.send(deadline, &msg).map_err(|f| (msg, f)),
            SenderFlavor::Shm(s) => s.send(deadline, &msg).map_err(|f| (msg, f)),
            #[cfg(feature = "zenoh")]
            SenderFlavor::Zenoh(s) => s.send(deadline, &msg).map_err(|f| (msg, f)),
        }
    }
}

impl<T: Message> Receiver<T> {
    pub(crate) fn new(flavor: ReceiverFlavor<T>) -> Self {
        Receiver {
            #[cfg(feature = "tokio")]
            reactor: Default::default(),
            flavor,
        }
    }

    /// Listens at `addr` (`thread:NAME`, `shm:PATH`, `unix:PATH`, `tcp:HOST:PORT`, and
    /// `zenoh:KEY` with the `zenoh` feature); any number of senders may connect. Messages from one sender arrive in order; senders are
    /// served fairly.
    ///
    /// A bound receiver waits for its first sender. Once one has connected, `recv` reports
    /// `Disconnected` whenever no sender is connected and every message has been received;
    /// a sender that connects later is served by the next call.
    ///
    /// A `unix:` or `shm:` socket file is created with mode 0600 whatever the umask, and only
    /// processes of the same user may connect. A socket file left by a dead receiver is
    /// reclaimed; a live one is [`Error::AddrInUse`]. `tcp:` accepts any peer that can reach
    /// the port: bind it to a loopback or private address.
    ///
    /// ```
    /// use conduit::{Receiver, Sender};
    /// let rx = Receiver::<u32>::bind("tcp:127.0.0.1:0")?;
    /// let addr = rx.local_addr().unwrap(); // the port the kernel chose
    /// let tx = Sender::<u32>::connect(&addr)?;
    /// tx.send(5).unwrap();
    /// assert_eq!(rx.recv().unwrap(), 5);
    /// # Ok::<(), conduit::Error>(())
    /// ```
    pub fn bind(addr: &str) -> Result<Self, Error> {
        Self::bind_with(addr, &Options::new())
    }

    /// Like [`Receiver::bind`], with explicit [`Options`] (size limit; capacity for `thread:`,
    /// and each sender's ring size for `shm:`).
    pub fn bind_with(addr: &str, opts: &Options) -> Result<Self, Error> {
        let flavor = match Address::parse(addr)? {
            Address::Thread(name) => ReceiverFlavor::Thread(ThreadReceiver::bind(&name, opts)?),
            parsed @ Address::Shm(_) => {
                ReceiverFlavor::Shm(ShmReceiver::bind::<T>(addr, &parsed, opts)?)
            }
            parsed @ (Address::Unix(_) | Address::Tcp(_)) => {
                ReceiverFlavor::Stream(StreamReceiver::bind::<T>(addr, &parsed, opts)?)
            }
            #[cfg(feature = "zenoh")]
            Address::Zenoh(key) => {
                ReceiverFlavor::Zenoh(ZenohReceiver::bind::<T>(addr, &key, opts)?)
            }
            #[cfg(not(feature = "zenoh"))]
            Address::Zenoh(_) => return Err(no_zenoh()),
        };
        Ok(Receiver::new(flavor))
    }

    /// The address senders connect to: for `tcp:` with port 0, the port the kernel chose.
    /// `None` for anonymous channels.
    pub fn local_addr(&self) -> Option<String> {
        match &self.flavor {
            ReceiverFlavor::Thread(_) => None,
            ReceiverFlavor::Stream(s) => s.local_addr(),
            ReceiverFlavor::Shm(s) => s.local_addr(),
            #[cfg(feature = "zenoh")]
            ReceiverFlavor::Zenoh(s) => s.local_addr(),
        }
    }

    /// Waits for a message. Returns `Disconnected` once every sender is gone and every
    /// message they sent has been received.
    #[inline]
    pub fn recv(&self) -> Result<T, RecvError> {
        if let ReceiverFlavor::Thread(r) = &self.flavor {
            return r.recv();
        }
        self.recv_decoded(Deadline::Never)
            .map_err(NotReceived::into_recv_error)
    }

    /// Takes a message if one is ready, without waiting.
    #[inline]
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        if let ReceiverFlavor::Thread(r) = &self.flavor {
            return r.try_recv();
        }
        self.recv_decoded(Deadline::Now)
            .map_err(NotReceived::into_try_recv_error)
    }

    /// Waits at most `timeout` for a message.
    #[inline]
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        if let ReceiverFlavor::Thread(r) = &self.flavor {
            return r.recv_timeout(timeout);
        }
        self.recv_decoded(Deadline::after(timeout))
            .map_err(NotReceived::into_recv_timeout_error)
    }

    /// A blocking iterator that ends when the channel disconnects.
    ///
    /// ```
    /// use conduit::{channel, Backend};
    /// let (tx, rx) = channel::<u8>(Backend::Pipe)?;
    /// std::thread::spawn(move || for i in 0..3 { tx.send(i).unwrap() });
    /// assert_eq!(rx.iter().collect::<Vec<_>>(), vec![0, 1, 2]);
    /// # Ok::<(), conduit::Error>(())
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(move || self.recv().ok())
    }

    /// An iterator over the messages ready now; it never waits.
    pub fn try_iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(move || self.try_recv().ok())
    }

    /// Receives through a flavor that decodes. The thread flavor moves messages instead;
    /// each public method takes them from it before coming here, so the thread path sets up
    /// no slot and no decoder. Never inlined, like `Sender::send_encoded`.
    #[inline(never)]
    fn recv_decoded(&self, deadline: Deadline) -> Result<T, NotReceived> {
        // Decoded straight into this slot; the flavors report only whether it was filled
        // (see `codec::decode_into`).
        let mut slot = None;
        {
            let mut decode = |bytes: &[u8]| codec::decode_into(bytes, &mut slot);
            match &self.flavor {
                ReceiverFlavor::Thread(_) => {
                    unreachable!("the public methods receive thread messages")
                }
                ReceiverFlavor::Stream(r) => r.recv_with(deadline, &mut decode)?,
                ReceiverFlavor::Shm(r) => r.recv_with(deadline, &mut decode)?,
                #[cfg(feature = "zenoh")]
                ReceiverFlavor::Zenoh(r) => r.recv_with(deadline, &mut decode)?,
            }
        }
        Ok(slot.expect("a flavor reports success only once `decode` has filled the slot"))
    }
}

impl<T: Message> Receiver<T> {
    /// The readiness descriptor (see [`AsFd`](#impl-AsFd-for-Receiver<T>)), or the error
    /// that kept it from being made (the process is out of descriptors).
    pub fn ready_fd(&self) -> Result<BorrowedFd<'_>, Error> {
        match &self.flavor {
            ReceiverFlavor::Thread(r) => r.signal().fd(),
            ReceiverFlavor::Stream(r) => r.ready_fd(),
            ReceiverFlavor::Shm(r) => r.ready_fd(),
            #[cfg(feature = "zenoh")]
            ReceiverFlavor::Zenoh(r) => r.ready_fd(),
        }
        .map_err(|e| Error::io("making the receiver's readiness descriptor", e))
    }

    /// Whether the last receive found nothing and armed the readiness descriptor: then the
    /// descriptor tells when to look again; otherwise a message may be waiting that the
    /// descriptor does not show (`Select` reports such a receiver ready at once).
    pub(crate) fn is_armed(&self) -> bool {
        match &self.flavor {
            ReceiverFlavor::Thread(r) => r.signal().is_armed(),
            ReceiverFlavor::Stream(r) => r.is_armed(),
            ReceiverFlavor::Shm(r) => r.is_armed(),
            #[cfg(feature = "zenoh")]
            ReceiverFlavor::Zenoh(r) => r.is_armed(),
        }
    }
}

/// One descriptor that becomes readable when [`Receiver::try_recv`] may return something
/// other than `Empty`: a message, or the end of the channel. Works on every backend, for
/// `poll`, `epoll`, or any event loop ([`Select`](crate::Select) and the `tokio` feature are
/// built on it).
///
/// The rule: **call `try_recv` until it returns `Empty`, then wait on the descriptor.** It is
/// level-triggered from that point of view: after an `Empty`, the descriptor is readable as
/// soon as a message arrives or the last sender goes (or dies), however many threads share
/// the receiver; a receiver drained to `Empty` is not readable. A readable descriptor may
/// still give `Empty` (another thread took the message first, or only part of a message has
/// arrived): try again, then wait again.
///
/// The descriptor belongs to the receiver: do not read from it or close it. It is made the
/// first time it is asked for; from then on every receive in this receiver keeps it
/// accurate (`recv` and `recv_timeout` wait on it too).
///
/// # Panics
///
/// If the descriptor cannot be made (the process is out of descriptors); see
/// [`Receiver::ready_fd`] for the fallible form.
///
/// ```
/// use std::os::fd::AsFd;
/// use conduit::{channel, Backend, TryRecvError};
/// use rustix::event::{poll, PollFd, PollFlags};
///
/// let (tx, rx) = channel::<u32>(Backend::Shm)?;
/// std::thread::spawn(move || {
///     for i in 0..3 {
///         tx.send(i).unwrap();
///     }
/// });
/// let mut got = Vec::new();
/// loop {
///     match rx.try_recv() {
///         Ok(m) => got.push(m),
///         Err(TryRecvError::Empty) => {
///             let mut fds = [PollFd::new(&rx, PollFlags::IN)];
///             poll(&mut fds, None).unwrap();
///         }
///         Err(_) => break, // every sender is gone
///     }
/// }
/// assert_eq!(got, [0, 1, 2]);
/// # Ok::<(), conduit::Error>(())
/// ```
impl<T: Message> AsFd for Receiver<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self.ready_fd() {
            Ok(fd) => fd,
            Err(e) => panic!("{e}"),
        }
    }
}

/// The descriptor of [`AsFd`](#impl-AsFd-for-Receiver<T>), with the same rule and panics.
impl<T: Message> AsRawFd for Receiver<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// A `zenoh:` address in a build without the `zenoh` feature.
#[cfg(not(feature = "zenoh"))]
fn no_zenoh() -> Error {
    Error::Unsupported {
        what: "zenoh: addresses (this build of conduit lacks its `zenoh` feature)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both halves cross threads and can be shared by reference (crossbeam's guarantees).
    #[test]
    fn halves_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Sender<String>>();
        send_sync::<Receiver<String>>();
    }
}
