//! Readiness descriptors: what `Receiver::as_fd` returns, and the signals behind it.
//!
//! A receiver's descriptor is readable when `try_recv` may return something other than
//! `Empty`. The rule for its users: call `try_recv` until `Empty`, then wait on the
//! descriptor. A receiver turns its descriptor on the first time it is asked for it
//! ("readiness mode"); until then, nothing here runs and the plain paths pay nothing.
//!
//! - Streams and shared memory (`ReadySet`): an epoll instance holding every connection's
//!   socket, the acceptor's wake-up eventfd, and a *kick* eventfd of its own. Sockets are
//!   level-triggered in the kernel; what the kernel cannot see (a ring armed for a wake-up
//!   byte, a complete message already read into a buffer) the receiver covers with its own
//!   arming and with kicks.
//! - Threads (`Signal`): an eventfd the senders write only while a receiver has armed a
//!   flag (Dekker-style: the receiver stores the flag, fences and looks again; a sender's
//!   send updates crossbeam's tail with a SeqCst compare-exchange, then loads the flag with
//!   SeqCst), and on every sender's drop.
//!
//! Kicks: a receive that took a message or saw the end *after* the receiver had been armed
//! (or after it consumed a kick) writes the kick eventfd, so that another thread waiting on
//! the same descriptor looks again: a message it was woken for may have been taken by
//! someone else, and more may be waiting behind it in a buffer no descriptor covers. A
//! receive that finds `Empty` drains the kick, then arms and looks again.
//!
//! So a receiver that is not armed always has a kick outstanding (made with the set, or by
//! the receive that disarmed it), and an armed one has its rings and sockets announce what
//! comes. A thread whose `try_recv` found the handle's lock held (and reported `Empty`) can
//! therefore wait on the descriptor: if the holder's receive leaves the receiver unarmed,
//! the kick is readable; if it arms, it has looked again after draining, under the lock.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use rustix::event::epoll::{self, CreateFlags, EventData, EventFlags};
use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::io::Errno;

use crate::flavors::{Deadline, NotReceived};

/// An eventfd, non-blocking and close-on-exec.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(
        0,
        EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
    )?)
}

/// Adds one to the eventfd `fd` (it becomes readable). A counter at its maximum is
/// readable already, so a failed write loses nothing.
pub(crate) fn signal(fd: BorrowedFd<'_>) {
    loop {
        match rustix::io::write(fd, &1u64.to_ne_bytes()) {
            Err(Errno::INTR) => continue,
            Ok(_) | Err(_) => return,
        }
    }
}

/// Resets the eventfd `fd` (it is no longer readable); true if it was signalled.
pub(crate) fn drain(fd: BorrowedFd<'_>) -> bool {
    let mut buf = [0u8; 8];
    loop {
        match rustix::io::read(fd, &mut buf) {
            Err(Errno::INTR) => continue,
            Ok(n) => return n == 8,
            Err(_) => return false,
        }
    }
}

/// The readiness set of a stream or shm receiver (see the module docs).
pub(crate) struct ReadySet {
    epoll: Arc<OwnedFd>,
    kick: OwnedFd,
    /// A kick was written and not yet drained: saves a `read` on most `Empty` paths. Set
    /// after the write, so a drain that misses a write leaves the descriptor readable (a
    /// spurious wake-up, whose `Empty` drains it), never unreadable while kicked.
    kicked: AtomicBool,
    /// The last receive found nothing and armed the receiver (on shm, every ring): a waiter
    /// may rely on it. Written only under the handle's lock; read without it by `Select`.
    armed: AtomicBool,
}

impl ReadySet {
    /// A set holding the kick and, for a bound receiver, the acceptor's wake-up eventfd.
    /// Kicked at once: connections join the set under the handle's lock, at the next
    /// receive, which the kick makes a waiter try.
    pub(crate) fn new(acceptor_wake: Option<BorrowedFd<'_>>) -> io::Result<Self> {
        let epoll = epoll::create(CreateFlags::CLOEXEC)?;
        let kick = eventfd()?;
        epoll::add(&epoll, &kick, EventData::new_u64(0), EventFlags::IN)?;
        if let Some(wake) = acceptor_wake {
            epoll::add(&epoll, wake, EventData::new_u64(0), EventFlags::IN)?;
        }
        let set = ReadySet {
            epoll: Arc::new(epoll),
            kick,
            kicked: AtomicBool::new(false),
            armed: AtomicBool::new(false),
        };
        set.kick();
        Ok(set)
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }

    /// Notes that the receiver is armed (under the handle's lock).
    pub(crate) fn arm(&self) {
        // Relaxed: only the lock holder writes it, and the lock orders those writes; a
        // reader without the lock (`Select`) only decides whether to look at the
        // descriptor, which the arming itself keeps accurate.
        self.armed.store(true, Ordering::Relaxed);
    }

    /// Ends the arming at the start of a receive (under the handle's lock); true if it was
    /// armed.
    pub(crate) fn disarm(&self) -> bool {
        // Relaxed: see `arm`.
        self.armed.load(Ordering::Relaxed) && {
            self.armed.store(false, Ordering::Relaxed);
            true
        }
    }

    /// Whether the last receive found nothing and armed: then the descriptor tells when to
    /// look again; otherwise a message may be waiting that no descriptor shows.
    pub(crate) fn is_armed(&self) -> bool {
        // Relaxed: see `arm`.
        self.armed.load(Ordering::Relaxed)
    }

    /// Makes the descriptor readable until the next `Empty` drains it.
    pub(crate) fn kick(&self) {
        signal(self.kick.as_fd());
        // Relaxed: a hint that saves a read; the eventfd itself carries the signal.
        self.kicked.store(true, Ordering::Relaxed);
    }

    /// Drains a kick; true if there was one.
    pub(crate) fn drain_kick(&self) -> bool {
        // Relaxed: see `kicked`.
        self.kicked.swap(false, Ordering::Relaxed) && drain(self.kick.as_fd())
    }
}

/// The readiness descriptor of a stream or shm receiver, its set made on first use (for a
/// bound receiver, watching the acceptor's wake-up eventfd too).
pub(crate) fn ready_fd<'a>(
    ready: &'a OnceLock<ReadySet>,
    acceptor_wake: Option<BorrowedFd<'_>>,
) -> io::Result<BorrowedFd<'a>> {
    if let Some(set) = ready.get() {
        return Ok(set.fd());
    }
    let set = ReadySet::new(acceptor_wake)?;
    Ok(ready.get_or_init(|| set).fd())
}

/// A connection's socket, watched by a receiver's readiness set while it lives.
pub(crate) struct Watched {
    fd: OwnedFd,
    epoll: Option<Arc<OwnedFd>>,
}

impl Watched {
    /// A socket no set watches (yet).
    pub(crate) fn plain(fd: OwnedFd) -> Self {
        Watched { fd, epoll: None }
    }

    /// Has `set` watch this socket, if it does not yet. Without memory for the watch, kicks
    /// instead, so waiters keep trying (each `Empty` tries the watch again).
    pub(crate) fn join(&mut self, set: &ReadySet) {
        if self.epoll.is_none() {
            let flags = EventFlags::IN | EventFlags::RDHUP;
            match epoll::add(&*set.epoll, &self.fd, EventData::new_u64(0), flags) {
                Ok(()) => self.epoll = Some(set.epoll.clone()),
                Err(_) => set.kick(),
            }
        }
    }
}

impl std::ops::Deref for Watched {
    type Target = OwnedFd;
    fn deref(&self) -> &OwnedFd {
        &self.fd
    }
}

impl AsFd for Watched {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        // Removed explicitly: a duplicate of the socket (handed to a child) would otherwise
        // keep it in the set after we close ours.
        if let Some(epoll) = &self.epoll {
            let _ = epoll::delete(&**epoll, &self.fd);
        }
    }
}

/// The thread flavor's signal, shared by a receiver and all its senders (see the module
/// docs).
#[derive(Default)]
pub(crate) struct Signal {
    /// Set by a receiver that found `Empty` in readiness mode; a sender that sees it set
    /// clears it and writes `fd`.
    armed: AtomicBool,
    fd: OnceLock<OwnedFd>,
    /// Async receivers waiting for a message (`recv_async`): woken by `notify` in memory,
    /// no descriptor involved.
    #[cfg(feature = "tokio")]
    pub(crate) data: Wakers,
    /// Async senders waiting for room (`send_async`): woken by the receiver after each
    /// message it takes while any wait.
    #[cfg(feature = "tokio")]
    pub(crate) room: Wakers,
}

impl Signal {
    /// The eventfd, made on first use; readiness mode from then on.
    pub(crate) fn fd(&self) -> io::Result<BorrowedFd<'_>> {
        if let Some(fd) = self.fd.get() {
            return Ok(fd.as_fd());
        }
        let made = eventfd()?;
        // Readable at once: the user's first look is a `try_recv`, which drains it.
        signal(made.as_fd());
        Ok(self.fd.get_or_init(|| made).as_fd())
    }

    #[inline]
    pub(crate) fn is_on(&self) -> bool {
        self.fd.get().is_some()
    }

    /// After a send (or a sender's drop): wakes an armed receiver. One load when nobody
    /// waits (a plain `mov` on x86; a fence here cost 5 ns of a 19 ns send + receive).
    #[inline]
    pub(crate) fn notify(&self) {
        // SeqCst load, no fence: Dekker with `arm` (SeqCst store, then the look again, whose
        // crossbeam `try_recv` runs a SeqCst fence before it loads the channel's tail). Our
        // send moved the tail with a SeqCst compare-exchange (a drop marks it with a SeqCst
        // `fetch_or`), sequenced before this load. If this load misses the arming, it comes
        // before the arming's store in the SeqCst order, so the tail's change comes before
        // the receiver's fence, and its load after the fence sees the message (or the end).
        // This leans on crossbeam-channel 0.5's bounded (array) flavor, the only one the
        // thread backend uses (capacity is at least one). The swap makes one sender write.
        if self.armed.load(Ordering::SeqCst) && self.armed.swap(false, Ordering::SeqCst) {
            self.wake();
        }
        #[cfg(feature = "tokio")]
        self.data.wake_if_armed();
    }

    /// Makes the descriptor readable.
    pub(crate) fn wake(&self) {
        if let Some(fd) = self.fd.get() {
            signal(fd.as_fd());
        }
    }

    /// Ends an armed wait at the start of a receive; true if it was armed (so a taken
    /// message may have been someone else's wake-up, see the module docs).
    #[inline]
    pub(crate) fn disarm(&self) -> bool {
        // Relaxed: the flag publishes nothing; a stale `false` only skips a kick that a
        // concurrent arming thread's own re-check covers.
        self.armed.load(Ordering::Relaxed) && self.armed.swap(false, Ordering::Relaxed)
    }

    /// Whether the last receive found nothing and armed (see `ReadySet::is_armed`); a
    /// sender's wake-up disarms it too.
    pub(crate) fn is_armed(&self) -> bool {
        // Relaxed: see `ReadySet::arm`.
        self.armed.load(Ordering::Relaxed)
    }

    /// Before a receiver waits: drains the descriptor (true if it was signalled), then
    /// arms. The caller looks at the channel again afterwards.
    pub(crate) fn arm(&self) -> bool {
        let drained = self.fd.get().is_some_and(|fd| drain(fd.as_fd()));
        // SeqCst store, then the fence (crossbeam's `try_recv` runs one too): Dekker with
        // `notify` (the send's SeqCst tail update, then a SeqCst load of `armed`).
        self.armed.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        drained
    }
}

/// How long one wait on a readiness descriptor lasts at most inside a blocking receive: the
/// descriptor sees every wake-up and every hang-up, so this only bounds what a bug would cost.
const WAIT_BOUND: std::time::Duration = std::time::Duration::from_millis(100);

/// A receive with `deadline` in readiness mode: `attempt` (a `try_recv` that arms on
/// `Empty`) until it gives something else, waiting on `fd` in between. Blocking receives
/// take this path once the descriptor is on, so they never clear an arming another thread
/// waits on.
pub(crate) fn wait_loop(
    fd: BorrowedFd<'_>,
    deadline: Deadline,
    mut attempt: impl FnMut() -> Result<(), NotReceived>,
) -> Result<(), NotReceived> {
    loop {
        match attempt() {
            Err(NotReceived::Empty) => {}
            other => return other,
        }
        let timeout = deadline.remaining();
        if timeout.is_some_and(|t| t.is_zero()) {
            return Err(deadline.recv_expired());
        }
        let wait = timeout.map_or(WAIT_BOUND, |t| t.min(WAIT_BOUND));
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        crate::sys::poll(&mut fds, Some(wait)).map_err(NotReceived::Io)?;
    }
}

/// Tasks waiting on a thread channel, woken in memory: an armed flag (Dekker-style, as
/// `Signal::armed`) and their wakers.
#[cfg(feature = "tokio")]
#[derive(Default)]
pub(crate) struct Wakers {
    armed: AtomicBool,
    list: parking_lot::Mutex<Vec<std::task::Waker>>,
}

#[cfg(feature = "tokio")]
impl Wakers {
    /// Registers `waker` and arms; the caller then looks at the channel again.
    pub(crate) fn arm(&self, waker: &std::task::Waker) {
        {
            let mut list = self.list.lock();
            if !list.iter().any(|w| w.will_wake(waker)) {
                list.push(waker.clone());
            }
        }
        // SeqCst store: for `data`, Dekker with `Signal::notify` (commit, fence, load); for
        // `room`, with `wake_if_armed`'s SeqCst load after crossbeam's SeqCst receive, our
        // `try_send` after this store running crossbeam's SeqCst fence before its head load.
        self.armed.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// The waking side, after its commit and fence: wakes every registered task if armed.
    #[inline]
    pub(crate) fn wake_if_armed(&self) {
        // SeqCst: see `arm`. The swap makes one waker of many take the list.
        if self.armed.load(Ordering::SeqCst) && self.armed.swap(false, Ordering::SeqCst) {
            let list = std::mem::take(&mut *self.list.lock());
            list.into_iter().for_each(std::task::Waker::wake);
        }
    }
}
