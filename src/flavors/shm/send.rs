//! The sending half of the shared-memory flavor: encode, then push the message into the ring
//! in pieces of at most half the ring; a large message is encoded straight into its pieces
//! (`direct.rs`).
//!
//! Clones share one producer behind a lock (the ring has exactly one producer; `lock.rs`):
//! `try_send` does not wait for a clone that holds it, `send_timeout` waits no longer than its
//! deadline. As on streams, a message is committed once its first piece is published: when
//! `try_send` or `send_timeout` runs out of time part-way, the rest is kept and pushed before
//! the next message, and the last clone's drop finishes it on a short-lived thread.
//!
//! A full ring: spin briefly, then announce the sleep in the ring and poll the rendezvous
//! connection, where the receiver's wake-up byte arrives and where its death shows.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use serde::Serialize;

use super::direct::{wait_for_space, RingSink};
use super::{dup_for_child, inherited_parts, open_peer_ring, Mapped};
use crate::addr::Address;
use crate::blob::{self, MAX_IN_FLIGHT};
use crate::codec;
use crate::flavors::attached::GROUP_BYTE;
use crate::flavors::lock::{HandleLock, LockFail};
use crate::flavors::{Deadline, NotSent, Tail, KEEP_BUFFER};
use crate::handshake::{self, Hello};
use crate::ring::core::Producer;
use crate::sys::memfd::SharedMap;
use crate::sys::{self, notify, sock, StreamKind};
use crate::{Error, Options, SendFailure};

/// Messages whose encoding outgrows this (or one piece, if smaller) are encoded straight
/// into the ring (`direct.rs`) instead of into the sender's buffer first.
const DIRECT_FROM: usize = 4 << 10;

/// Check the receiver's liveness through the socket once per this many sends (a crashed
/// receiver cannot set its "closed" flag; a full ring is noticed at once anyway).
const LIVENESS_EVERY: u32 = 256;

/// The sending half, shared by clones.
#[derive(Clone)]
pub(crate) struct ShmSender {
    conn: Arc<Holder>,
}

/// What `ShmSender::arm_room` found.
#[cfg(feature = "tokio")]
pub(crate) enum RoomArm {
    /// Armed: wait for this socket to become readable.
    Wait(OwnedFd),
    /// Try to send again now.
    Retry,
    /// Another clone holds the handle: try again soon.
    Busy,
    Failed(std::io::Error),
}

/// Owns the connection; its drop finishes a pending tail without blocking the caller.
struct Holder(HandleLock<Slot>);

enum Slot {
    Live(SendConn),
    /// Handed to a child process.
    Moved,
}

struct SendConn {
    link: Link,
    limit: usize,
    scratch: Vec<u8>,
    /// The unpublished rest of a committed message.
    tail: Tail,
    sends: u32,
    broken: bool,
    /// `sys::forks::generation()` when made or last claimed: when it has moved on, a fork
    /// copied this handle, and we claim the ring before publishing (or closing it).
    fork_gen: u64,
    /// The ring's claim token as of `fork_gen` (`Producer::claim`).
    claim: u64,
    /// Messages with descriptors attached that the receiver has not released: the ring
    /// position just past each one's marker, and how many it passed.
    in_flight: VecDeque<(u64, usize)>,
    in_flight_fds: usize,
}

/// The ring and the rendezvous connection to its receiver.
struct Link {
    producer: Mapped<Producer>,
    /// Wake-up bytes both ways; its end means the receiver is gone.
    sock: OwnedFd,
}

impl ShmSender {
    pub(crate) fn from_parts(
        map: Arc<SharedMap>,
        sock: OwnedFd,
        limit: usize,
    ) -> Result<Self, Error> {
        let producer = Mapped::new(map, Producer::new)
            .map_err(|e| Error::io("attaching to the ring", std::io::Error::other(e)))?;
        let claim = producer.claim_token();
        Ok(ShmSender {
            conn: Arc::new(Holder(HandleLock::new(Slot::Live(SendConn {
                link: Link { producer, sock },
                limit,
                scratch: Vec::new(),
                tail: Tail::default(),
                sends: 0,
                broken: false,
                fork_gen: sys::forks::generation(),
                claim,
                in_flight: VecDeque::new(),
                in_flight_fds: 0,
            })))),
        })
    }

    /// Connects to `shm:PATH`: handshake, then receive and check the ring.
    pub(crate) fn connect<T>(addr: &str, parsed: &Address, opts: &Options) -> Result<Self, Error> {
        let Address::Shm(path) = parsed else {
            unreachable!("only shm addresses reach the shm flavor")
        };
        let sock = sock::connect_unix(path).map_err(|e| Error::connect(addr, e))?;
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

    /// Moves this sender's ring to a child process: returns duplicates of `[socket, memfd]`
    /// and the size limit, and leaves this handle (and its clones) unusable, without closing
    /// the ring.
    pub(crate) fn hand_off(&self) -> Result<(Vec<OwnedFd>, usize), Error> {
        let mut slot = self
            .conn
            .0
            .lock(Deadline::Never)
            .map_err(LockFail::into_error)?;
        let Slot::Live(conn) = &mut *slot else {
            return Err(Error::CannotShare {
                reason: "a shared-memory sender has one ring, already handed to a child"
                    .to_string(),
            });
        };
        if !conn.claimed() {
            return Err(Error::CannotShare {
                reason: "another process claimed this sender's ring after a fork()".to_string(),
            });
        }
        if conn.tail.is_pending() || conn.broken {
            return Err(Error::CannotShare {
                reason: "the sender is part-way through a message, or broken".to_string(),
            });
        }
        // The child starts counting descriptors in flight from zero.
        if conn.attach_room() < MAX_IN_FLIGHT {
            return Err(Error::CannotShare {
                reason: "the receiver has not taken every sealed buffer it was passed yet"
                    .to_string(),
            });
        }
        let fds = dup_for_child(&conn.link.sock, conn.link.producer.fd())?;
        let limit = conn.limit;
        // Dropped without `close`: the ring lives on in the child.
        *slot = Slot::Moved;
        Ok((fds, limit))
    }

    /// Before an async send waits for room: announces the wait in the ring (as a blocking
    /// send's sleep does) and looks again. `Wait` holds a duplicate of the connection, to
    /// wait on for the receiver's wake-up byte or its end; `Retry` when there is room now
    /// (or another clone holds the handle, or the receiver is gone: the next `try_send`
    /// tells).
    #[cfg(feature = "tokio")]
    pub(crate) fn arm_room(&self) -> RoomArm {
        let Ok(mut slot) = self.conn.0.lock(Deadline::Now) else {
            return RoomArm::Busy;
        };
        let Slot::Live(conn) = &mut *slot else {
            return RoomArm::Retry;
        };
        // Drained before the announcement, so a byte written for it is never drained unseen.
        if !notify::drain(conn.link.sock.as_fd()) {
            conn.broken = true;
            return RoomArm::Retry;
        }
        // Announced as waiting for more room than any piece needs, so the announcement
        // stands whatever the message: the `try_send` after it is the look that counts, and
        // the receiver wakes us on its next hand-back of space.
        match conn.link.producer.prepare_wait(1 << 30) {
            Ok(true) => match conn.link.sock.try_clone() {
                Ok(fd) => RoomArm::Wait(fd),
                Err(e) => {
                    conn.link.producer.end_wait();
                    RoomArm::Failed(e)
                }
            },
            Ok(false) => RoomArm::Retry,
            Err(_) => {
                conn.broken = true;
                RoomArm::Retry
            }
        }
    }

    /// Ends the announcement of `arm_room` once woken (unless another clone holds the
    /// handle; its own sends end it then).
    #[cfg(feature = "tokio")]
    pub(crate) fn disarm_room(&self) {
        if let Ok(mut slot) = self.conn.0.lock(Deadline::Now) {
            if let Slot::Live(conn) = &mut *slot {
                conn.link.producer.end_wait();
            }
        }
    }

    /// Encodes `msg` and pushes it into the ring.
    pub(crate) fn send<T: Serialize>(&self, deadline: Deadline, msg: &T) -> Result<(), NotSent> {
        let mut slot = self.conn.0.lock(deadline).map_err(|f| (f, deadline))?;
        match &mut *slot {
            Slot::Live(conn) => conn.send(deadline, msg),
            Slot::Moved => Err(NotSent::Failed(SendFailure::Moved)),
        }
    }
}

impl SendConn {
    /// [`ShmSender::send`], holding the lock.
    fn send<T: Serialize>(&mut self, deadline: Deadline, msg: &T) -> Result<(), NotSent> {
        if !self.claimed() {
            return Err(NotSent::Failed(SendFailure::Forked));
        }
        if self.broken || self.link.producer.consumer_closed() {
            self.broken = true;
            return Err(NotSent::Disconnected);
        }
        self.sends = self.sends.wrapping_add(1);
        if self.sends % LIVENESS_EVERY == 0 && !notify::drain(self.link.sock.as_fd()) {
            self.broken = true;
            return Err(NotSent::Disconnected);
        }
        self.finish_tail(deadline)?;
        self.scratch.clear();
        let cap = self.link.producer.max_piece().min(DIRECT_FROM);
        if !codec::encode_small(msg, &mut self.scratch, cap).map_err(NotSent::encode)? {
            return self.send_direct(deadline, msg);
        }
        let size = self.scratch.len();
        self.check_size(size)?;
        self.push_scratch(deadline, false)
    }

    /// Pushes the message encoded in the send buffer. `opened`: its marker is already
    /// published, so it is committed even before its first byte is.
    #[inline]
    fn push_scratch(&mut self, deadline: Deadline, opened: bool) -> Result<(), NotSent> {
        let result = match self.link.push(&self.scratch, deadline) {
            (_, Ok(())) => Ok(()),
            (0, Err(fail @ (NotSent::Full | NotSent::Timeout))) if !opened => Err(fail),
            // Committed: keep the rest for the next send (or the drop).
            (done, Err(NotSent::Full | NotSent::Timeout)) => {
                self.tail.keep([&self.scratch[done..]]);
                Ok(())
            }
            (_, Err(fail)) => {
                self.broken = true;
                Err(fail)
            }
        };
        self.shrink_scratch();
        result
    }

    /// Lets go of a send buffer that one large message grew past `KEEP_BUFFER`.
    fn shrink_scratch(&mut self) {
        if self.scratch.capacity() > KEEP_BUFFER {
            self.scratch = Vec::new();
        }
    }

    /// Refuses a message over the size limit.
    fn check_size(&self, size: usize) -> Result<(), NotSent> {
        if size > self.limit {
            return Err(NotSent::Failed(SendFailure::TooLarge {
                size,
                limit: self.limit,
            }));
        }
        Ok(())
    }

    /// Sends a large message by encoding it straight into the ring (`direct.rs`), after a
    /// walk that measures it against the size limit.
    #[cold]
    fn send_direct<T: Serialize>(&mut self, deadline: Deadline, msg: &T) -> Result<(), NotSent> {
        let room = self.attach_room();
        let (expected, sealed) = blob::counting_sealed(room, || codec::encoded_size(msg));
        let expected = expected.map_err(NotSent::encode)?;
        self.check_size(expected)?;
        if sealed > 0 {
            return self.send_attached(deadline, msg, room);
        }
        let mut sink = RingSink::new(
            &mut self.link.producer,
            self.link.sock.as_fd(),
            deadline,
            expected,
            &mut self.scratch,
        );
        let encoded = codec::encode_to(msg, &mut sink);
        let result = match sink.finish(encoded) {
            (_, Ok(true)) => Ok(()),
            // Committed: keep the rest for the next send (or the drop).
            (_, Ok(false)) => {
                self.tail.keep([&self.scratch[..]]);
                Ok(())
            }
            // Nothing is out: the message was not sent, and the channel is as it was.
            (
                0,
                Err(
                    fail @ (NotSent::Full
                    | NotSent::Timeout
                    | NotSent::Failed(SendFailure::Encode(_))),
                ),
            ) => Err(fail),
            // Part of the message is out and the rest cannot follow: the receiver drops the
            // partial message when the connection ends.
            (_, Err(fail)) => {
                self.broken = true;
                Err(fail)
            }
        };
        self.shrink_scratch();
        result
    }

    /// How many more descriptors may be passed now: `MAX_IN_FLIGHT` less those of messages
    /// the receiver has not released the marker of.
    fn attach_room(&mut self) -> usize {
        if !self.in_flight.is_empty() {
            if let Ok(released) = self.link.producer.released() {
                while let Some(&(end, count)) = self.in_flight.front() {
                    // Positions only grow (modulo 2^64): `end` is released once `released`
                    // is at or past it.
                    if (released.wrapping_sub(end) as i64) < 0 {
                        break;
                    }
                    self.in_flight.pop_front();
                    self.in_flight_fds -= count;
                }
            }
        }
        MAX_IN_FLIGHT.saturating_sub(self.in_flight_fds)
    }

    /// Sends a message holding sealed buffers (`blob.rs`) with their descriptors attached:
    /// encoded with references into the send buffer, then, once a frame fits, the group of
    /// descriptors on the socket, the marker that opens the message, and the message.
    #[cold]
    fn send_attached<T: Serialize>(
        &mut self,
        deadline: Deadline,
        msg: &T,
        room: usize,
    ) -> Result<(), NotSent> {
        self.scratch.clear();
        let scratch = &mut self.scratch;
        let (encoded, group) = blob::encoding_attached(room, || codec::encode_into(msg, scratch));
        encoded.map_err(NotSent::encode)?;
        if group.is_empty() {
            // The value changed since it was measured and holds no sealed buffer any more.
            self.scratch.clear();
            codec::encode_into(msg, &mut self.scratch).map_err(NotSent::encode)?;
            return self.push_scratch(deadline, false);
        }
        // Room for the marker first: a group is passed only for a message that is sent.
        let sock = self.link.sock.as_fd();
        let marker = loop {
            match self.link.producer.reserve(0)? {
                Some(piece) => break piece,
                None => wait_for_space(&mut self.link.producer, sock, 0, deadline)?,
            }
        };
        let fds: Vec<BorrowedFd<'_>> = group.iter().map(|sealed| sealed.fd()).collect();
        pass_group(sock, &fds, deadline)?;
        if self.link.producer.commit(marker, false) {
            notify::wake(sock);
        }
        self.in_flight
            .push_back((self.link.producer.head(), group.len()));
        self.in_flight_fds += group.len();
        self.push_scratch(deadline, true)
    }

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
        match self.link.producer.claim(self.claim) {
            Some(next) => {
                // The generation read before the claim: a fork after it makes us claim again.
                self.claim = next;
                self.fork_gen = generation;
                true
            }
            None => false,
        }
    }

    /// Pushes what is left of a committed message, waiting no longer than `deadline`.
    #[inline]
    fn finish_tail(&mut self, deadline: Deadline) -> Result<(), NotSent> {
        let link = &mut self.link;
        let result = self.tail.finish(|rest| link.push(rest, deadline));
        if let Err(fail) = &result {
            if !matches!(fail, NotSent::Full | NotSent::Timeout) {
                self.broken = true;
            }
        }
        result
    }

    /// Pushes a pending tail to the end (waiting as long as the receiver lives), then tells
    /// the receiver nothing more comes.
    fn finish_and_close(mut self) {
        let pending = self.tail.is_pending() && !self.broken;
        // After a fork, only the copy that claims the ring may finish a pending tail; a copy
        // with nothing pending does not claim, so dropping an unused copy leaves the ring to
        // the process that uses it.
        if pending && (!self.claimed() || self.finish_tail(Deadline::Never).is_err()) {
            return;
        }
        // After a fork another process may still be sending through this ring: then only the
        // socket's hang-up (when the last copy closes) tells the receiver we are done.
        if sys::forks::generation() == self.fork_gen && self.link.producer.close() {
            notify::wake(self.link.sock.as_fd());
        }
    }
}

impl Link {
    /// Publishes `bytes` (the rest of one message) in pieces: how many bytes were
    /// published, and whether all were.
    #[inline]
    fn push(&mut self, bytes: &[u8], deadline: Deadline) -> (usize, Result<(), NotSent>) {
        let sock = self.sock.as_fd();
        self.producer.push_pieces(
            bytes,
            || notify::wake(sock),
            |producer, len| wait_for_space(producer, sock, len, deadline),
        )
    }
}

/// Passes a group of descriptors on the socket with its marker byte, waiting for room in
/// the socket's buffer no longer than `deadline`.
fn pass_group(
    sock: BorrowedFd<'_>,
    fds: &[BorrowedFd<'_>],
    deadline: Deadline,
) -> Result<(), NotSent> {
    loop {
        match sys::fdpass::send_with_fds(sock, &[GROUP_BYTE], fds) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let remaining = deadline.remaining();
                if remaining.is_some_and(|d| d.is_zero()) || !sys::wait_writable(sock, remaining)? {
                    return Err(deadline.send_expired());
                }
            }
            // A receiver that is gone gives `Disconnected` (see `From<io::Error>`).
            Err(e) => return Err(e.into()),
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let slot = self.0.get_mut();
        let Slot::Live(conn) = std::mem::replace(slot, Slot::Moved) else {
            return;
        };
        if !conn.tail.is_pending() || conn.broken {
            conn.finish_and_close();
            return;
        }
        // A committed message is still being pushed: finish it off the caller's thread.
        Tail::finish_elsewhere(move || conn.finish_and_close());
    }
}
