//! The sending half of the shared-memory flavor: encode, then push the message into the ring
//! in pieces of at most half the ring.
//!
//! Clones share one producer behind a lock (the ring has exactly one producer; `lock.rs`):
//! `try_send` does not wait for a clone that holds it, `send_timeout` waits no longer than its
//! deadline. As on streams, a message is committed once its first piece is published: when `try_send` or
//! `send_timeout` runs out of time part-way, the rest is kept and pushed before the next
//! message, and the last clone's drop finishes it on a short-lived thread.
//!
//! A full ring: spin briefly, then announce the sleep in the ring and poll the rendezvous
//! connection, where the receiver's wake-up byte arrives and where its death shows.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rustix::event::PollFd;

use crate::addr::Address;
use crate::channel::encode_failure;
use crate::flavors::lock::{HandleLock, LockFail};
use crate::flavors::shm::{ring_over, MAX_SLEEP};
use crate::flavors::{Deadline, SendFail, Spin};
use crate::handshake::{self, Hello};
use crate::ring::core::{Producer, Push};
use crate::ring::header::{self, HEADER_SIZE};
use crate::sys::memfd::SharedMap;
use crate::sys::{self, notify, sock, StreamKind};
use crate::{Error, Options, SendFailure};

/// Check the receiver's liveness through the socket once per this many sends (a crashed
/// receiver cannot set its "closed" flag; a full ring is noticed at once anyway).
const LIVENESS_EVERY: u32 = 256;

/// The sending half, shared by clones.
#[derive(Clone)]
pub(crate) struct ShmSender {
    conn: Arc<Holder>,
}

/// Owns the connection; its drop finishes a pending tail without blocking the caller.
struct Holder(HandleLock<Slot>);

enum Slot {
    Live(SendConn),
    /// Handed to a child process.
    Moved,
}

struct SendConn {
    producer: Producer,
    /// Declared after `producer`, so the mapping outlives the view.
    _map: Arc<SharedMap>,
    /// The rendezvous connection: wake-up bytes both ways; its end means the receiver is
    /// gone.
    sock: OwnedFd,
    limit: usize,
    scratch: Vec<u8>,
    /// The unpublished rest of a committed message.
    tail: Vec<u8>,
    tail_done: usize,
    sends: u32,
    broken: bool,
    /// `sys::forks::generation()` when made or last claimed: when it has moved on, a fork
    /// copied this handle, and we claim the ring before publishing (or closing it).
    fork_gen: u64,
    /// The ring's claim token as of `fork_gen` (`Producer::claim`).
    claim: u64,
}

impl ShmSender {
    pub(crate) fn from_parts(
        map: Arc<SharedMap>,
        sock: OwnedFd,
        limit: usize,
    ) -> Result<Self, Error> {
        let ring = ring_over(&map).map_err(|e| Error::io("mapping the ring", e))?;
        ring.validate()
            .map_err(|e| Error::io("checking the ring", io::Error::other(e.to_string())))?;
        let mut producer = Producer::new(ring)
            .map_err(|e| Error::io("attaching to the ring", io::Error::other(e.to_string())))?;
        if sys::membarrier::register_producer() {
            producer.go_light();
        }
        let claim = producer.claim_token();
        Ok(ShmSender {
            conn: Arc::new(Holder(HandleLock::new(Slot::Live(SendConn {
                producer,
                _map: map,
                sock,
                limit,
                scratch: Vec::new(),
                tail: Vec::new(),
                tail_done: 0,
                sends: 0,
                broken: false,
                fork_gen: sys::forks::generation(),
                claim,
            })))),
        })
    }

    /// Connects to `shm:PATH`: handshake, then receive and check the ring.
    pub(crate) fn connect<T>(addr: &str, parsed: &Address, opts: &Options) -> Result<Self, Error> {
        let Address::Shm(path) = parsed else {
            unreachable!("only shm addresses reach the shm flavor")
        };
        let sock = sock::connect_unix(addr, path)?;
        let mine = Hello::for_type::<T>(opts.max_message_size);
        let (theirs, fds) = handshake::client(addr, sock.as_fd(), StreamKind::Unix, &mine, 1)?;
        let bad = |what: String| Error::protocol(addr, what);
        let [memfd]: [OwnedFd; 1] = fds
            .try_into()
            .map_err(|_| bad("the receiver did not send a ring".into()))?;
        let map = open_peer_ring(memfd).map_err(bad)?;
        sys::set_nonblocking(&sock).map_err(|e| Error::io("configuring the connection", e))?;
        let limit = opts.max_message_size.min(theirs.limit as usize);
        ShmSender::from_parts(map, sock, limit).map_err(|e| bad(e.to_string()))
    }

    /// Rebuilds a sender from descriptors inherited from the parent (see `inherit.rs`):
    /// `[socket, memfd]`.
    pub(crate) fn from_inherited(fds: Vec<OwnedFd>, limit: usize) -> Result<Self, Error> {
        let (sock, map) = inherited_parts(fds, "inherited shm sender")?;
        ShmSender::from_parts(map, sock, limit)
    }

    /// Moves this sender's ring to a child process: returns duplicates of
    /// `[socket, memfd]` and the size limit, and leaves this
    /// handle (and its clones) unusable, without closing the ring.
    pub(crate) fn hand_off(&self) -> Result<(Vec<OwnedFd>, usize), Error> {
        let mut slot = self.conn.0.lock(Deadline::Never).map_err(LockFail::into_error)?;
        hand_off(&mut slot)
    }

    /// Encodes one message with `encode` and pushes it into the ring.
    pub(crate) fn send_with(
        &self,
        deadline: Deadline,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<(), SendFail> {
        let mut slot = self.conn.0.lock(deadline).map_err(|f| (f, deadline))?;
        send_locked(&mut slot, deadline, encode)
    }
}

/// [`ShmSender::hand_off`], holding the lock.
fn hand_off(guard: &mut Slot) -> Result<(Vec<OwnedFd>, usize), Error> {
    let Slot::Live(conn) = &mut *guard else {
        return Err(Error::Unsupported {
            what: "handing a shared-memory sender to a second child (it has one ring)".to_string(),
        });
    };
    if !conn.claimed() {
        return Err(Error::Unsupported {
            what: "handing over a shared-memory sender whose ring another process \
                       claimed after a fork()"
                .to_string(),
        });
    }
    if conn.tail_done < conn.tail.len() || conn.broken {
        return Err(Error::Unsupported {
            what: "handing over a sender that is part-way through a message or broken".to_string(),
        });
    }
    let fds = vec![dup(conn.sock.as_fd())?, dup(conn._map.fd())?];
    let limit = conn.limit;
    // Dropped without `close`: the ring lives on in the child.
    *guard = Slot::Moved;
    Ok((fds, limit))
}

/// [`ShmSender::send_with`], holding the lock.
fn send_locked(
    guard: &mut Slot,
    deadline: Deadline,
    encode: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
) -> Result<(), SendFail> {
    let conn = match guard {
        Slot::Live(conn) => conn,
        Slot::Moved => return Err(SendFail::Failed(SendFailure::Moved)),
    };
    if !conn.claimed() {
        return Err(SendFail::Failed(SendFailure::Forked));
    }
    if conn.broken || conn.producer.consumer_closed() {
        conn.broken = true;
        return Err(SendFail::Disconnected);
    }
    conn.sends = conn.sends.wrapping_add(1);
    if conn.sends % LIVENESS_EVERY == 0 && !notify::drain(conn.sock.as_fd()) {
        conn.broken = true;
        return Err(SendFail::Disconnected);
    }
    conn.finish_tail(deadline)?;
    conn.scratch.clear();
    encode(&mut conn.scratch).map_err(encode_failure)?;
    let size = conn.scratch.len();
    if size > conn.limit {
        return Err(SendFail::Failed(SendFailure::TooLarge {
            size,
            limit: conn.limit,
        }));
    }
    let message = std::mem::take(&mut conn.scratch);
    let result = match conn.push(&message, deadline) {
        Ok(()) => Ok(()),
        Err((fail @ (SendFail::Full | SendFail::Timeout), 0)) => Err(fail),
        // Committed: keep the rest for the next send (or the drop).
        Err((SendFail::Full | SendFail::Timeout, done)) => {
            conn.tail.clear();
            conn.tail.extend_from_slice(&message[done..]);
            conn.tail_done = 0;
            Ok(())
        }
        Err((fail, _)) => {
            conn.broken = true;
            Err(fail)
        }
    };
    conn.scratch = message;
    if conn.scratch.capacity() > 4 << 20 {
        conn.scratch = Vec::new();
    }
    result
}

/// Splits the descriptors an inherited shm end arrives with (`[socket, memfd]`, see
/// `inherit.rs`) into the socket and the checked ring.
pub(crate) fn inherited_parts(
    fds: Vec<OwnedFd>,
    what: &str,
) -> Result<(OwnedFd, Arc<SharedMap>), Error> {
    let bad = |reason: String| Error::Protocol {
        addr: what.to_string(),
        reason,
    };
    let [sock, memfd]: [OwnedFd; 2] = fds
        .try_into()
        .map_err(|_| bad("expected two descriptors".into()))?;
    let map = open_peer_ring(memfd).map_err(bad)?;
    sys::set_nonblocking(&sock).map_err(|e| Error::io("configuring the connection", e))?;
    Ok((sock, map))
}

/// A duplicate of `fd` for a child process.
pub(crate) fn dup(fd: std::os::fd::BorrowedFd<'_>) -> Result<OwnedFd, Error> {
    fd.try_clone_to_owned()
        .map_err(|e| Error::io("duplicating a descriptor for the child", e))
}

/// Checks and maps a ring received from a peer.
pub(crate) fn open_peer_ring(memfd: OwnedFd) -> Result<Arc<SharedMap>, String> {
    let size = rustix::fs::fstat(&memfd)
        .map_err(|e| format!("cannot inspect the ring: {e}"))?
        .st_size;
    let size = usize::try_from(size).map_err(|_| "the ring's size is negative".to_string())?;
    if size < HEADER_SIZE || !header::valid_capacity(size - HEADER_SIZE) {
        return Err(format!("the ring's size {size} is not valid"));
    }
    let map = SharedMap::open(memfd, size).map_err(|e| format!("refused the ring: {e}"))?;
    Ok(Arc::new(map))
}

impl SendConn {
    /// Whether this process may publish into the ring: always, unless a `fork()` since we
    /// last looked copied this handle; then whether we are the first of the copies to claim
    /// the ring. One atomic load on the fast path.
    #[inline]
    fn claimed(&mut self) -> bool {
        let generation = sys::forks::generation();
        generation == self.fork_gen || self.claim_after_fork(generation)
    }

    /// [`SendConn::claimed`] after a `fork()`: claims the ring if no other copy did.
    #[cold]
    fn claim_after_fork(&mut self, generation: u64) -> bool {
        match self.producer.claim(self.claim) {
            Some(next) => {
                // The generation read before the claim: a fork after it makes us claim again.
                self.claim = next;
                self.fork_gen = generation;
                // A fork child is not registered for heavy fences until it registers itself.
                if sys::membarrier::register_producer() {
                    self.producer.go_light();
                } else {
                    self.producer.go_fenced();
                }
                true
            }
            None => false,
        }
    }

    /// Pushes what is left of a committed message, waiting no longer than `deadline`.
    #[inline]
    fn finish_tail(&mut self, deadline: Deadline) -> Result<(), SendFail> {
        if self.tail_done == self.tail.len() {
            return Ok(());
        }
        self.push_tail(deadline)
    }

    /// [`SendConn::finish_tail`] when part of a message is left.
    #[cold]
    fn push_tail(&mut self, deadline: Deadline) -> Result<(), SendFail> {
        let tail = std::mem::take(&mut self.tail);
        let result = self.push(&tail[self.tail_done..], deadline);
        self.tail = tail;
        match result {
            Ok(()) => {
                self.tail.clear();
                self.tail_done = 0;
                Ok(())
            }
            Err((fail, done)) => {
                self.tail_done += done;
                if !matches!(fail, SendFail::Full | SendFail::Timeout) {
                    self.broken = true;
                }
                Err(fail)
            }
        }
    }

    /// Publishes `bytes` (the rest of one message) in pieces. On failure, also returns how
    /// many bytes were published.
    #[inline]
    fn push(&mut self, bytes: &[u8], deadline: Deadline) -> Result<(), (SendFail, usize)> {
        let max = self.producer.max_piece();
        let mut done = 0;
        loop {
            let end = bytes.len().min(done + max);
            let piece = &bytes[done..end];
            let last = end == bytes.len();
            match self.producer.try_push(piece, last) {
                Ok(Push::Done { wake }) => {
                    if wake {
                        notify::wake(self.sock.as_fd());
                    }
                    done = end;
                    if last {
                        return Ok(());
                    }
                }
                Ok(Push::Full) => self
                    .wait_for_space(piece.len(), deadline)
                    .map_err(|f| (f, done))?,
                Err(_) => return Err((SendFail::Disconnected, done)),
            }
        }
    }

    /// Waits until a piece of `len` bytes may fit, the deadline passes, or the receiver goes.
    fn wait_for_space(&mut self, len: usize, deadline: Deadline) -> Result<(), SendFail> {
        if !matches!(deadline, Deadline::Now) {
            let mut spin = Spin::new();
            while spin.again() {
                let room = self.producer.has_room_for(len);
                if room.map_err(|_| SendFail::Disconnected)? {
                    return Ok(());
                }
            }
        }
        let remaining = deadline.remaining();
        if remaining.is_some_and(|d| d.is_zero()) {
            return Err(deadline.send_expired());
        }
        if self.producer.consumer_closed() {
            return Err(SendFail::Disconnected);
        }
        let sleep = self
            .producer
            .prepare_wait(len)
            .map_err(|_| SendFail::Disconnected)?;
        if sleep {
            let wait = remaining.map_or(MAX_SLEEP, |d| d.min(MAX_SLEEP));
            let mut fds = [PollFd::new(&self.sock, notify::READY)];
            let polled = sys::poll(&mut fds, Some(wait));
            let ready = !fds[0].revents().is_empty();
            self.producer.end_wait();
            // A wake-up byte, or the receiver's end.
            let receiver_gone = ready && !notify::drain(self.sock.as_fd());
            polled.map_err(|e| SendFail::Failed(SendFailure::Io(e)))?;
            if receiver_gone {
                return Err(SendFail::Disconnected);
            }
        }
        Ok(())
    }

    /// Pushes a pending tail to the end (waiting as long as the receiver lives), then tells
    /// the receiver nothing more comes.
    fn finish_and_close(mut self) {
        let pending = self.tail_done < self.tail.len() && !self.broken;
        // After a fork, only the copy that claims the ring may finish a pending tail; a copy
        // with nothing pending does not claim, so dropping an unused copy leaves the ring to
        // the process that uses it.
        if pending && (!self.claimed() || self.finish_tail(Deadline::Never).is_err()) {
            return;
        }
        // After a fork another process may still be sending through this ring: then only the
        // socket's hang-up (when the last copy closes) tells the receiver we are done.
        if sys::forks::generation() == self.fork_gen && self.producer.close() {
            notify::wake(self.sock.as_fd());
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let slot = self.0.get_mut();
        let Slot::Live(conn) = std::mem::replace(slot, Slot::Moved) else {
            return;
        };
        if conn.tail_done == conn.tail.len() || conn.broken {
            conn.finish_and_close();
            return;
        }
        // A committed message is still being pushed: finish it off the caller's thread.
        let spawned = std::thread::Builder::new()
            .name("conduit-flush".to_string())
            .spawn(move || conn.finish_and_close());
        drop(spawned);
    }
}
