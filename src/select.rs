//! `Select`: waiting on many receivers at once, of any backend and any message type, over
//! their readiness descriptors (crossbeam-channel's `Select`, readiness half, is the model).

use std::fmt;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use crate::{Message, Receiver};

/// What `Select` needs of a receiver, whatever its message type.
trait Watch {
    fn fd(&self) -> BorrowedFd<'_>;
    fn is_armed(&self) -> bool;
}

impl<T: Message> Watch for Receiver<T> {
    fn fd(&self) -> BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self)
    }

    fn is_armed(&self) -> bool {
        Receiver::is_armed(self)
    }
}

/// Waits until one of several receivers is ready: a message to take, or the end of the
/// channel. Receivers of every backend and every message type mix in one `Select`.
///
/// Shaped after crossbeam-channel's `Select` (its readiness methods): add receivers with
/// [`Select::recv`], which returns each one's index, then wait with [`Select::ready`],
/// [`Select::ready_timeout`] or [`Select::try_ready`], which return the index of a receiver
/// that is ready. As with crossbeam's, **a ready index may be spurious** (another thread
/// took the message first, or only part of a message has arrived): take with `try_recv`,
/// and on `Empty` simply wait again. A receiver whose last receive was not `Empty` (it has
/// never been tried, it returned a message, or it reported the end) counts as ready at once,
/// since only an `Empty` arms its descriptor; so does a disconnected one, every time.
///
/// It is built on each receiver's readiness descriptor ([`Receiver`'s `AsFd`](
/// crate::Receiver#impl-AsFd-for-Receiver<T>)) and one `poll`; no thread is started.
///
/// ```
/// use conduit::{channel, Backend, Select, TryRecvError};
///
/// let (jobs_tx, jobs) = channel::<String>(Backend::Shm)?;
/// let (stop_tx, stop) = channel::<()>(Backend::Thread)?;
/// std::thread::spawn(move || {
///     jobs_tx.send("build".to_string()).unwrap();
///     jobs_tx.send("test".to_string()).unwrap();
///     std::thread::sleep(std::time::Duration::from_millis(20));
///     stop_tx.send(()).unwrap();
/// });
///
/// let mut sel = Select::new();
/// let job = sel.recv(&jobs);
/// let quit = sel.recv(&stop);
/// let mut done = Vec::new();
/// loop {
///     let i = sel.ready();
///     if i == job {
///         match jobs.try_recv() {
///             Ok(j) => done.push(j),
///             Err(TryRecvError::Empty) => continue, // spurious: wait again
///             Err(_) => break,
///         }
///     } else if i == quit && stop.try_recv().is_ok() {
///         break;
///     }
/// }
/// assert_eq!(done, ["build", "test"]);
/// # Ok::<(), conduit::Error>(())
/// ```
pub struct Select<'a> {
    /// The receivers, by index; `None` once removed.
    handles: Vec<Option<&'a dyn Watch>>,
    /// Where the next scan starts, so one busy receiver does not hide the others.
    next: usize,
}

/// [`Select::try_ready`] found no receiver ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TryReadyError;

/// [`Select::ready_timeout`] found no receiver ready in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadyTimeoutError;

impl fmt::Display for TryReadyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no receiver was ready")
    }
}

impl fmt::Display for ReadyTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no receiver became ready before the timeout")
    }
}

impl std::error::Error for TryReadyError {}
impl std::error::Error for ReadyTimeoutError {}

impl Default for Select<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Select<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Select")
            .field("receivers", &self.handles.iter().flatten().count())
            .finish()
    }
}

impl<'a> Select<'a> {
    /// An empty selection.
    pub fn new() -> Self {
        Select {
            handles: Vec::new(),
            next: 0,
        }
    }

    /// Adds a receiver; returns its index, which [`Select::ready`] and the other waits
    /// return when it is ready.
    ///
    /// # Panics
    ///
    /// If the receiver's readiness descriptor cannot be made (the process is out of
    /// descriptors; see [`Receiver::ready_fd`]).
    pub fn recv<T: Message>(&mut self, receiver: &'a Receiver<T>) -> usize {
        // Made now, so a later wait cannot fail for want of it.
        if let Err(e) = receiver.ready_fd() {
            panic!("{e}");
        }
        self.handles.push(Some(receiver));
        self.handles.len() - 1
    }

    /// Removes the receiver with `index`; the other indices keep their meaning.
    ///
    /// # Panics
    ///
    /// If `index` was never returned by [`Select::recv`] or was removed already.
    pub fn remove(&mut self, index: usize) {
        assert!(
            self.handles.get_mut(index).and_then(Option::take).is_some(),
            "no receiver with index {index} in this Select"
        );
    }

    /// Waits until a receiver is ready and returns its index (see the type's docs: it may
    /// be spurious).
    ///
    /// # Panics
    ///
    /// If there are no receivers (it would wait forever), or `poll` fails.
    pub fn ready(&mut self) -> usize {
        assert!(
            self.handles.iter().any(Option::is_some),
            "Select::ready with no receivers would wait forever"
        );
        match self.wait(None) {
            Some(i) => i,
            None => unreachable!("a wait without timeout returns a receiver"),
        }
    }

    /// Like [`Select::ready`], waiting at most `timeout`.
    pub fn ready_timeout(&mut self, timeout: Duration) -> Result<usize, ReadyTimeoutError> {
        // A timeout too long to represent waits as long as it takes.
        self.wait(Instant::now().checked_add(timeout))
            .ok_or(ReadyTimeoutError)
    }

    /// The index of a receiver that is ready now, without waiting.
    pub fn try_ready(&mut self) -> Result<usize, TryReadyError> {
        self.wait(Some(Instant::now())).ok_or(TryReadyError)
    }

    /// A ready receiver's index; `None` at `deadline` (never, without one).
    fn wait(&mut self, deadline: Option<Instant>) -> Option<usize> {
        let n = self.handles.len();
        loop {
            // A receiver not armed by an `Empty` may hold a message its descriptor does not
            // show: ready at once.
            for i in (0..n).map(|k| (self.next + k) % n) {
                if self.handles[i].is_some_and(|h| !h.is_armed()) {
                    self.next = i + 1;
                    return Some(i);
                }
            }
            let live: Vec<(usize, &dyn Watch)> = self
                .handles
                .iter()
                .enumerate()
                .filter_map(|(i, h)| h.map(|h| (i, h)))
                .collect();
            let mut fds: Vec<PollFd<'_>> = live
                .iter()
                .map(|(_, h)| PollFd::from_borrowed_fd(h.fd(), PollFlags::IN))
                .collect();
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match crate::sys::poll(&mut fds, timeout) {
                Ok(0) => {}
                Ok(_) => {
                    let ready: Vec<usize> = fds
                        .iter()
                        .zip(&live)
                        .filter(|(p, _)| !p.revents().is_empty())
                        .map(|(_, (i, _))| *i)
                        .collect();
                    // The first ready one at or after `next`, in turn.
                    let pick = ready
                        .iter()
                        .copied()
                        .find(|&i| i >= self.next)
                        .or_else(|| ready.first().copied());
                    if let Some(i) = pick {
                        self.next = i + 1;
                        return Some(i);
                    }
                }
                Err(e) => panic!("Select: poll failed: {e}"),
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
        }
    }
}
