//! async/await on tokio (the `tokio` feature): `Receiver::recv_async`, the `Stream` impl,
//! and `Sender::send_async`. No task or thread is started per receiver.
//!
//! Streams and shared memory wait on descriptors registered with tokio's reactor through
//! `AsyncFd`. Receiving follows the readiness rule (`readiness.rs`): `try_recv` until
//! `Empty`, then wait until the readiness descriptor is readable. Sending tries `try_send`;
//! on `Full` it registers what will announce room (a socket or pipe writable; a shm ring's
//! wake-up byte, after announcing the wait in `producer_waiting`), tries once more, and
//! waits.
//!
//! Thread channels never leave memory: a task registers its waker in the channel's
//! `Signal` (`Wakers`: register, arm, look again), and a sender (for messages) or the
//! receiver (for room) wakes it, as tokio's own channels do; a descriptor would cost a
//! system call per wake-up.

use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;

use std::task::{Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::channel::{ReceiverFlavor, SenderFlavor};
use crate::flavors::shm::RoomArm;
use crate::flavors::thread::ThreadReceiver;
use crate::tokio_reactor::Raw;
use crate::{Message, Receiver, RecvError, SendError, Sender, TryRecvError, TrySendError};

fn io_error(e: crate::Error) -> RecvError {
    match e {
        crate::Error::Io { source, .. } => RecvError::Io(source),
        other => RecvError::Io(io::Error::other(other.to_string())),
    }
}

impl<T: Message> Receiver<T> {
    fn registration(&self) -> Result<&AsyncFd<Raw>, RecvError> {
        if let Some(fd) = self.reactor.fd.get() {
            return Ok(fd);
        }
        let _making = self
            .reactor
            .making
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(fd) = self.reactor.fd.get() {
            return Ok(fd);
        }
        let raw = self.ready_fd().map_err(io_error)?.as_raw_fd();
        // SAFETY: `raw` is the receiver's readiness descriptor, owned by its flavor, made
        // once and never replaced or closed before the flavor drops; `Receiver` declares
        // `reactor` (which owns this registration) before `flavor`, so the registration is
        // dropped first. `Raw` returns the same number on every call.
        let fd = unsafe { AsyncFd::register_with_interest(Raw(raw), Interest::READABLE) }
            .map_err(|e| RecvError::Io(e.into()))?;
        Ok(self.reactor.fd.get_or_init(|| fd))
    }

    /// Polls for a message: `Ready(Ok)` with one, `Ready(Err)` at the end (or on a
    /// failure), `Pending` after arranging for `cx` to be woken when one may be there. A
    /// message is only ever taken inside a poll that returns it.
    ///
    /// Only the waker of the latest call is woken (as with tokio's `poll_*` methods); tasks
    /// sharing a receiver should use [`Receiver::recv_async`], which has no such limit.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<T, RecvError>> {
        if let ReceiverFlavor::Thread(r) = &self.flavor {
            return poll_thread_recv(r, cx);
        }
        loop {
            match self.try_recv() {
                Ok(v) => return Poll::Ready(Ok(v)),
                Err(TryRecvError::Empty) => {}
                Err(e) => return Poll::Ready(Err(recv_error(e))),
            }
            let fd = match self.registration() {
                Ok(fd) => fd,
                Err(e) => return Poll::Ready(Err(e)),
            };
            match fd.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                // Readable since we armed: clear it and look (an event that comes after
                // the clear sets it again; tokio compares ticks).
                Poll::Ready(Ok(mut guard)) => guard.clear_ready(),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(RecvError::Io(e))),
            }
        }
    }

    /// Receives a message asynchronously: like [`Receiver::recv`], but the task waits
    /// instead of the thread. Works on every backend and from any number of tasks sharing
    /// the receiver.
    ///
    /// **Cancel safety:** dropping the future loses no message. A message is taken only in
    /// the poll that returns it; a future dropped while it waits has taken nothing.
    ///
    /// The receiver's descriptor is registered with the reactor of the runtime that first
    /// uses it asynchronously; keep its async use on that runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), conduit::Error> {
    /// use conduit::{channel, Backend};
    /// let (tx, rx) = channel::<String>(Backend::Shm)?;
    /// std::thread::spawn(move || tx.send("hello".to_string()).unwrap());
    /// assert_eq!(rx.recv_async().await.unwrap(), "hello");
    /// assert!(rx.recv_async().await.is_err()); // the sender is gone
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recv_async(&self) -> Result<T, RecvError> {
        if let ReceiverFlavor::Thread(r) = &self.flavor {
            return poll_fn(|cx| poll_thread_recv(r, cx)).await;
        }
        loop {
            match self.try_recv() {
                Ok(v) => return Ok(v),
                Err(TryRecvError::Empty) => {}
                Err(e) => return Err(recv_error(e)),
            }
            let mut guard = self
                .registration()?
                .readable()
                .await
                .map_err(RecvError::Io)?;
            guard.clear_ready();
        }
    }
}

/// A thread channel's receive: in memory, with wakers the senders wake (no descriptor):
/// look, register and arm, look again.
fn poll_thread_recv<T: Message>(
    r: &ThreadReceiver<T>,
    cx: &mut Context<'_>,
) -> Poll<Result<T, RecvError>> {
    match r.try_recv_quiet() {
        Ok(v) => return Poll::Ready(Ok(v)),
        Err(TryRecvError::Empty) => {}
        Err(e) => return Poll::Ready(Err(recv_error(e))),
    }
    r.signal().data.arm(cx.waker());
    match r.try_recv_quiet() {
        Ok(v) => Poll::Ready(Ok(v)),
        Err(TryRecvError::Empty) => Poll::Pending,
        Err(e) => Poll::Ready(Err(recv_error(e))),
    }
}

/// The receiver as a stream of messages, ending when every sender is gone (as
/// [`Receiver::iter`] does); a receive failure also ends it. Cancel-safe like
/// [`Receiver::recv_async`].
impl<T: Message> futures_core::Stream for Receiver<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.into_ref().get_ref().poll_recv(cx).map(Result::ok)
    }
}

/// Registers a descriptor this process owns (a duplicate made for the wait).
fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: `OwnedFd` keeps its descriptor open until the `AsyncFd` drops it, and returns
    // the same number on every call.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(io::Error::from)
}

/// A receive error as `recv` reports it.
fn recv_error(e: TryRecvError) -> RecvError {
    match e {
        TryRecvError::Disconnected => RecvError::Disconnected,
        TryRecvError::Io(e) => RecvError::Io(e),
        TryRecvError::Reentered => RecvError::Reentered,
        TryRecvError::Empty => unreachable!("`Empty` is waited on, never reported"),
    }
}

/// A send error as `send` reports it.
fn send_error<T>(e: TrySendError<T>) -> SendError<T> {
    match e {
        TrySendError::Disconnected(m) => SendError::Disconnected(m),
        TrySendError::Failed(m, f) => SendError::Failed(m, f),
        TrySendError::Full(_) => unreachable!("`Full` is waited on, never reported"),
    }
}

/// An async sender's wait for room, announced where the backend needs it; dropping it
/// (woken, or the future cancelled) ends the announcement.
struct RoomWait<'a, T: Message> {
    tx: &'a Sender<T>,
    /// What to wait on, registered with the reactor before the announcement and the last
    /// look, so room made after that look always reaches it. `None`: do not wait (another
    /// clone holds the handle: yield instead).
    fd: Option<AsyncFd<OwnedFd>>,
    /// Wait for `fd` to be writable (a socket or pipe), not readable.
    writable: bool,
    announced: bool,
}

impl<T: Message> RoomWait<'_, T> {
    fn new(tx: &Sender<T>) -> io::Result<RoomWait<'_, T>> {
        let mut wait = RoomWait {
            tx,
            fd: None,
            writable: false,
            announced: false,
        };
        match &tx.flavor {
            SenderFlavor::Thread(_) => unreachable!("thread sends wait on wakers"),
            // The kernel reports room on a socket or pipe: nothing to announce.
            SenderFlavor::Stream(s) => {
                if let Some(fd) = s.room_fd() {
                    wait.fd = Some(register(fd?, Interest::WRITABLE)?);
                    wait.writable = true;
                }
            }
            SenderFlavor::Shm(s) => match s.arm_room() {
                RoomArm::Wait(fd) => {
                    wait.announced = true;
                    wait.fd = Some(register(fd, Interest::READABLE)?);
                }
                // Room now, or the end: the next `try_send` tells.
                RoomArm::Retry => {}
                RoomArm::Busy => {}
                RoomArm::Failed(e) => return Err(e),
            },
            // Credit comes back as a publication: its callback writes the descriptor.
            #[cfg(feature = "zenoh")]
            SenderFlavor::Zenoh(s) => {
                if let Some(fd) = s.arm_room()? {
                    wait.fd = Some(register(fd, Interest::READABLE)?);
                }
            }
        }
        Ok(wait)
    }

    /// Waits for the announced room (or, with nothing to wait on, lets other tasks run).
    async fn wait(&self, retry_now: bool) -> io::Result<()> {
        match &self.fd {
            Some(fd) => {
                if self.writable {
                    drop(fd.writable().await?);
                } else {
                    drop(fd.readable().await?);
                }
            }
            _ if retry_now => {}
            _ => yield_now().await,
        }
        Ok(())
    }
}

impl<T: Message> Drop for RoomWait<'_, T> {
    fn drop(&mut self) {
        if !self.announced {
            return;
        }
        match &self.tx.flavor {
            SenderFlavor::Thread(_) => {}
            SenderFlavor::Shm(s) => s.disarm_room(),
            SenderFlavor::Stream(_) => {}
            #[cfg(feature = "zenoh")]
            SenderFlavor::Zenoh(_) => {}
        }
    }
}

impl<T: Message> Sender<T> {
    /// Sends a message asynchronously: like [`Sender::send`], but the task waits for room
    /// instead of the thread. Works on every backend.
    ///
    /// **Cancel safety:** dropping the future either sent the message whole or not at all.
    /// The message goes to the channel only through a `try_send` inside a poll, which
    /// commits it whole (a message begun is finished by the sender, as with
    /// [`Sender::try_send`]); a future dropped while it waits for room drops the message
    /// unsent.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), conduit::Error> {
    /// use conduit::{channel_with, Backend, Options};
    /// let (tx, rx) = channel_with::<u64>(Backend::Thread, &Options::new().capacity(1))?;
    /// tx.send_async(1).await.unwrap();
    /// let taker = std::thread::spawn(move || (rx.recv().unwrap(), rx.recv().unwrap()));
    /// tx.send_async(2).await.unwrap(); // waits until the thread took the first
    /// assert_eq!(taker.join().unwrap(), (1, 2));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_async(&self, msg: T) -> Result<(), SendError<T>> {
        if let SenderFlavor::Thread(s) = &self.flavor {
            // In memory: look, register and arm, look again (see `Wakers`).
            let mut msg = Some(msg);
            return poll_fn(|cx| {
                let m = msg.take().expect("polled after completion");
                let m = match self.try_send(m) {
                    Ok(()) => return Poll::Ready(Ok(())),
                    Err(TrySendError::Full(m)) => m,
                    Err(e) => return Poll::Ready(Err(send_error(e))),
                };
                s.signal().room.arm(cx.waker());
                match self.try_send(m) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(TrySendError::Full(m)) => {
                        msg = Some(m);
                        Poll::Pending
                    }
                    Err(e) => Poll::Ready(Err(send_error(e))),
                }
            })
            .await;
        }
        let mut msg = msg;
        loop {
            match self.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(m)) => msg = m,
                Err(e) => return Err(send_error(e)),
            }
            let wait = match RoomWait::new(self) {
                Ok(wait) => wait,
                Err(e) => return Err(SendError::Failed(msg, crate::SendFailure::Io(e))),
            };
            // The last look, after the announcement.
            match self.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(m)) => msg = m,
                Err(e) => return Err(send_error(e)),
            }
            let retry_now = wait.fd.is_none() && !matches!(self.flavor, SenderFlavor::Stream(_));
            if let Err(e) = wait.wait(retry_now).await {
                return Err(SendError::Failed(msg, crate::SendFailure::Io(e)));
            }
        }
    }
}

/// Lets the runtime run other tasks once (tokio's `yield_now`, which needs its `rt`
/// feature).
async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if std::mem::replace(&mut yielded, true) {
            Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}
