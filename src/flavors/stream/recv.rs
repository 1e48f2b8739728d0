//! The receiving half of the stream flavor.
//!
//! The receiver owns every connection it serves and polls them together; messages are taken
//! from connections in turn (fairness), and a connection that breaks the framing or sends an
//! undecodable message is dropped alone.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;

use rustix::event::{PollFd, PollFlags};

use crate::addr::Address;
use crate::codec::Decode;
use crate::flavors::acceptor::{self, Acceptor};
use crate::flavors::attached::{self, Groups, MAX_QUEUED};
use crate::flavors::lock::{HandleLock, LockFail};
use crate::flavors::{drop_dead, in_turn, Deadline, NotReceived, KEEP_BUFFER, SHARE_FROM};
use crate::frame::{FrameReader, DIRECT_MIN, HEADER, PIECE_MAX};
use crate::handshake::Hello;
use crate::readiness::{self, ReadySet, Watched};
use crate::sys::{self, fdpass, StreamKind};
use crate::{Error, Options};

/// The receiving half: every connection it serves, and the acceptor for bound addresses.
pub(crate) struct StreamReceiver {
    /// Held by the thread receiving (`lock.rs`): `try_recv` on another thread reports
    /// `Empty` instead of waiting for it, and a `Deserialize` that receives from its own
    /// receiver gets an error instead of deadlocking.
    state: HandleLock<RecvState>,
    acceptor: Option<Acceptor<()>>,
    /// The stream's kind, for anonymous and inherited receivers.
    kind: Option<StreamKind>,
    /// The readiness descriptor, once asked for (`readiness.rs`).
    ready: OnceLock<ReadySet>,
}

struct RecvState {
    conns: Vec<RecvConn>,
    /// Where the next fair scan starts.
    next: usize,
    /// Whether any sender was ever connected (anonymous pairs start connected).
    ever_connected: bool,
    limit: usize,
    /// The kind of stream the acceptor hands over.
    accepts: StreamKind,
}

struct RecvConn {
    fd: Watched,
    reader: FrameReader,
    /// A Unix socket: descriptors may come with the bytes (`attached.rs`).
    passes_fds: bool,
    /// Descriptors that came ahead of the messages that name them.
    groups: Groups,
    /// The last read found bytes.
    hot: bool,
    /// The last read took all it asked for, so the socket may hold more.
    full: bool,
    /// Messages taken since the last read that found bytes: two or more, and the peer is
    /// streaming rather than answering one message at a time.
    batch: u32,
    /// The last message taken was long: read little into the buffer, so the first piece of
    /// the next long one goes straight into its assembly instead of being copied there.
    after_long: bool,
    /// The assembly vector of the last long message, which what was decoded from it may
    /// still share: the reader's next assembly vector (see [`RecvConn::decode_long`]).
    lent: Option<::bytes::Bytes>,
    /// The peer closed its end: deliver what is complete, then drop.
    eof: bool,
    /// Drop at the next sweep.
    dead: bool,
}

impl RecvConn {
    fn new(fd: OwnedFd, kind: StreamKind, limit: usize) -> Self {
        RecvConn {
            fd: Watched::plain(fd),
            reader: FrameReader::new(limit),
            passes_fds: kind == StreamKind::Unix,
            groups: Groups::default(),
            hot: false,
            full: false,
            batch: 0,
            after_long: false,
            lent: None,
            eof: false,
            dead: false,
        }
    }

    /// One non-blocking read into the frame reader. While a large piece is read straight
    /// into its message's assembly, the same read takes the next piece's header into the
    /// buffer, so that piece goes straight in too: one system call per piece, and no copy
    /// (a read into the buffer would bring a whole piece there, to be copied out). True
    /// when it found bytes.
    ///
    /// On a Unix socket every read is a `recvmsg` that takes the descriptors a marked
    /// frame's first bytes carry (`attached.rs`): a plain read would have the kernel close
    /// them.
    fn read_some(&mut self) -> bool {
        let passes_fds = self.passes_fds;
        let (read, asked) = match self.reader.direct_and_spare() {
            Some((assembly, max, spare)) => {
                let groups = passes_fds.then_some(&mut self.groups);
                let read =
                    read_append_then(self.fd.as_fd(), assembly, max, &mut spare[..HEADER], groups);
                (read, max + HEADER)
            }
            None => {
                let spare = self.reader.spare();
                let take = match self.after_long {
                    true => spare.len().min(HEADER + DIRECT_MIN),
                    false => spare.len(),
                };
                let read = if passes_fds {
                    fdpass::recv_with_fds(self.fd.as_fd(), &mut spare[..take], MAX_QUEUED).and_then(
                        |(n, fds)| {
                            if !fds.is_empty() {
                                self.groups
                                    .push(fds)
                                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                            }
                            Ok((0, n))
                        },
                    )
                } else {
                    sys::read(&self.fd, &mut spare[..take]).map(|n| (0, n))
                };
                (read, take)
            }
        };
        self.hot = matches!(read, Ok((a, b)) if a + b > 0);
        self.full = matches!(read, Ok((a, b)) if a + b == asked);
        if self.hot {
            self.batch = 0;
        }
        match read {
            Ok((0, 0)) => self.eof = true,
            Ok((appended, filled)) => {
                self.reader.appended(appended);
                self.reader.filled(filled);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // Descriptors no sender passes (too many, or past the bound): the peer is broken
            // or hostile, and the bytes of that read are lost.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => self.dead = true,
            // Reset, or anything else: the peer is gone; nothing more will come.
            Err(_) => self.eof = true,
        }
        self.hot
    }

    /// Decodes a long message from its assembly vector `buf`, which a [`crate::Bytes`] in
    /// it may share instead of copying its bytes (`bytes::decode_sharing`). The vector goes
    /// back to the reader once nothing shares it: at once, or when the next message starts,
    /// by which time the caller has usually dropped what it received. Only if something
    /// still shares it then does the reader get a new vector, of the same size. (Making the
    /// new vector right after decoding kept two alive at a time; the allocator then handed
    /// memory back to the kernel and took it again, `brk` and page faults with every 64 KiB
    /// message.)
    fn decode_long(&mut self, buf: Vec<u8>, decode: &mut Decode<'_>) -> Result<(), String> {
        let shared = ::bytes::Bytes::from(buf);
        let decoded = crate::bytes::decode_sharing(&shared, |bytes| decode(bytes));
        self.lent = Some(shared);
        self.reclaim(false);
        decoded
    }

    /// Gives the reader back the vector [`RecvConn::decode_long`] lent, if nothing shares it
    /// any more; else, when `now`, a new one of its size.
    fn reclaim(&mut self, now: bool) {
        let Some(lent) = self.lent.take() else {
            return;
        };
        let vec = match lent.try_into_mut() {
            Ok(unshared) => Vec::from(unshared),
            Err(shared) if now => Vec::with_capacity(shared.len()),
            Err(shared) => {
                self.lent = Some(shared);
                return;
            }
        };
        if vec.capacity() <= KEEP_BUFFER {
            let _ = self.reader.give_assembly(vec);
        }
    }
}

/// One `readv` of at most `max` bytes appended to `vec` (without zeroing its spare capacity
/// first) and, once those are in, at most `then.len()` bytes into `then`; retries `EINTR`.
/// How many went to each. With `groups` (a Unix socket) it is a `recvmsg` that takes the
/// descriptors a marked frame's first bytes carry into it, as any read of ours there must
/// (a plain read would have the kernel close them).
fn read_append_then(
    fd: BorrowedFd<'_>,
    vec: &mut Vec<u8>,
    max: usize,
    then: &mut [u8],
    mut groups: Option<&mut Groups>,
) -> io::Result<(usize, usize)> {
    vec.reserve(max);
    loop {
        let mut iov = [
            libc::iovec {
                iov_base: vec.spare_capacity_mut().as_mut_ptr().cast(),
                iov_len: max,
            },
            libc::iovec {
                iov_base: then.as_mut_ptr().cast(),
                iov_len: then.len(),
            },
        ];
        let n = match &mut groups {
            Some(groups) => {
                // SAFETY: `iov` describes memory we hold exclusively for the call: `max`
                // bytes of `vec`'s spare capacity (reserved above) and all of `then`.
                let (n, fds) = unsafe { fdpass::recv_vectored_with_fds(fd, &mut iov, MAX_QUEUED)? };
                if !fds.is_empty() {
                    groups
                        .push(fds)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                }
                n as isize
            }
            // SAFETY: as above; the kernel writes at most that much, and nothing else
            // touches them meanwhile.
            None => unsafe { libc::readv(fd.as_raw_fd(), iov.as_ptr(), 2) },
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let n = n as usize;
        let appended = n.min(max);
        // SAFETY: the kernel wrote the first `appended` bytes of the spare capacity (it
        // fills the vectors in order), which starts at the vector's length.
        unsafe { vec.set_len(vec.len() + appended) };
        return Ok((appended, n - appended));
    }
}

impl StreamReceiver {
    /// Serves one already-connected stream (anonymous pairs, inheritance).
    pub(crate) fn from_fd(fd: OwnedFd, kind: StreamKind, opts: &Options) -> Result<Self, Error> {
        sys::set_nonblocking(&fd).map_err(|e| Error::io("configuring the stream", e))?;
        Ok(StreamReceiver {
            state: HandleLock::new(RecvState {
                conns: vec![RecvConn::new(fd, kind, opts.max_message_size)],
                next: 0,
                ever_connected: true,
                limit: opts.max_message_size,
                accepts: kind,
            }),
            acceptor: None,
            kind: Some(kind),
            ready: OnceLock::new(),
        })
    }

    /// A close-on-exec duplicate of an anonymous receiver's stream, for a child process.
    pub(crate) fn duplicate(&self) -> Result<(OwnedFd, StreamKind, usize), Error> {
        let state = self
            .state
            .lock(Deadline::Never)
            .map_err(LockFail::into_error)?;
        let (Some(kind), [conn]) = (self.kind, &state.conns[..]) else {
            return Err(Error::CannotShare {
                reason: "it is bound (bind in the child instead)".to_string(),
            });
        };
        if conn.reader.mid_message() {
            return Err(Error::CannotShare {
                reason: "it has already buffered data from the stream".to_string(),
            });
        }
        let fd = conn
            .fd
            .try_clone()
            .map_err(|e| Error::io("duplicating the receiver's descriptor", e))?;
        Ok((fd, kind, state.limit))
    }

    /// Binds a `unix:` or `tcp:` address and starts accepting senders of `T`.
    pub(crate) fn bind<T>(addr: &str, parsed: &Address, opts: &Options) -> Result<Self, Error> {
        let mine = Hello::for_type::<T>(opts.max_message_size);
        let acceptor = Acceptor::bind(addr, parsed, mine, acceptor::nothing_more())?;
        let accepts = match parsed {
            Address::Unix(_) => StreamKind::Unix,
            _ => StreamKind::Tcp,
        };
        Ok(StreamReceiver {
            state: HandleLock::new(RecvState {
                conns: Vec::new(),
                next: 0,
                ever_connected: false,
                limit: opts.max_message_size,
                accepts,
            }),
            acceptor: Some(acceptor),
            kind: None,
            ready: OnceLock::new(),
        })
    }

    pub(crate) fn local_addr(&self) -> Option<String> {
        self.acceptor.as_ref().map(|a| a.local_addr().to_string())
    }

    /// Receives one message, decoded by `decode`, waiting until `deadline`.
    pub(crate) fn recv_with(
        &self,
        deadline: Deadline,
        decode: &mut Decode<'_>,
    ) -> Result<(), NotReceived> {
        if let Some(set) = self.ready.get() {
            return readiness::wait_loop(set.fd(), deadline, || self.try_ready(set, decode));
        }
        let mut state = self.state.lock(deadline).map_err(|f| (f, deadline))?;
        state.recv(self.acceptor.as_ref(), deadline, decode)
    }

    /// Whether the last receive armed the readiness descriptor (`ReadySet::is_armed`).
    pub(crate) fn is_armed(&self) -> bool {
        self.ready.get().is_some_and(ReadySet::is_armed)
    }

    /// The readiness descriptor (`readiness.rs`), made on first use.
    pub(crate) fn ready_fd(&self) -> io::Result<BorrowedFd<'_>> {
        let wake = self.acceptor.as_ref().map(|a| a.wake_fd().as_fd());
        readiness::ready_fd(&self.ready, wake)
    }

    /// A receive that does not wait, in readiness mode. The sockets are level-triggered in
    /// the kernel; what they cannot show is a complete message already read into a buffer,
    /// which the kick covers (`readiness.rs`).
    fn try_ready(&self, set: &ReadySet, decode: &mut Decode<'_>) -> Result<(), NotReceived> {
        let mut state = self
            .state
            .lock(Deadline::Now)
            .map_err(|f| NotReceived::from((f, Deadline::Now)))?;
        state.try_ready(set, self.acceptor.as_ref(), decode)
    }
}

impl RecvState {
    /// [`StreamReceiver::try_ready`], holding the lock.
    fn try_ready(
        &mut self,
        set: &ReadySet,
        acceptor: Option<&Acceptor<()>>,
        decode: &mut Decode<'_>,
    ) -> Result<(), NotReceived> {
        let mut wake_others = set.disarm();
        let mut result = self.recv(acceptor, Deadline::Now, decode);
        if matches!(result, Err(NotReceived::Empty)) {
            wake_others |= set.drain_kick();
            self.conns.iter_mut().for_each(|c| c.fd.join(set));
            // Joined after the last read, so bytes that came since show as readable; what
            // is already in the buffers is looked at once more, after the kick was drained.
            if self.take_buffered(decode) {
                wake_others = true;
                result = Ok(());
            } else if self.conns.is_empty() && self.ever_connected {
                result = Err(NotReceived::Disconnected);
            } else {
                set.arm();
            }
        }
        if wake_others && !matches!(result, Err(NotReceived::Empty)) {
            // What we took (or the end we saw) may have been another waiter's wake-up, and
            // more may wait in a buffer no descriptor covers.
            set.kick();
        }
        result
    }

    /// [`StreamReceiver::recv_with`], holding the lock.
    fn recv(
        &mut self,
        acceptor: Option<&Acceptor<()>>,
        deadline: Deadline,
        decode: &mut Decode<'_>,
    ) -> Result<(), NotReceived> {
        // Whether the connections were looked at (read or polled) since the call began.
        let mut looked = false;
        loop {
            if let Some(acceptor) = acceptor {
                while let Some(accepted) = acceptor.take() {
                    self.conns
                        .push(RecvConn::new(accepted.fd, self.accepts, self.limit));
                    self.ever_connected = true;
                }
            }
            if self.take_buffered(decode) {
                return Ok(());
            }
            if self.conns.is_empty() && self.ever_connected {
                return Err(NotReceived::Disconnected);
            }
            let timeout = deadline.remaining();
            // Past the deadline, one look at what is ready is all we owe: peers that keep
            // streaming bytes must not hold the caller beyond it.
            if looked && timeout.is_some_and(|t| t.is_zero()) {
                return Err(deadline.recv_expired());
            }
            looked = true;
            // A lone connection that is likely to have more bytes waiting is read before
            // any poll: that saves a system call per batch of small messages, and per piece
            // of a large one. With more connections the poll comes first, so a busy one
            // cannot keep the others waiting.
            if self.read_lone_hot() {
                continue;
            }
            self.poll(acceptor, timeout).map_err(NotReceived::Io)?;
        }
    }

    /// A complete message from the connections, taken in turn; drops broken connections.
    fn take_buffered(&mut self, decode: &mut Decode<'_>) -> bool {
        let mut found = false;
        let limit = self.limit;
        for i in in_turn(self.next, self.conns.len()) {
            let conn = &mut self.conns[i];
            conn.reclaim(true);
            let next = match conn.reader.next_message() {
                // Marked as having descriptors attached: they came with its first bytes.
                Ok(Some((_, true))) if conn.groups.is_empty() => Err(()),
                Ok(Some((bytes, attached))) if bytes.len() < SHARE_FROM.max(PIECE_MAX + 1) => {
                    conn.after_long = false;
                    let group = attached.then(|| conn.groups.pop()).flatten();
                    let len = bytes.len();
                    Ok(Some(attached::decode_with(group, len, limit, || {
                        decode(bytes)
                    })))
                }
                // Longer than a piece, so in the reader's assembly: decoded from a buffer
                // that a `Bytes` in it may share (see `RecvConn::decode_long`).
                Ok(Some((_, attached))) => {
                    conn.after_long = true;
                    let group = attached.then(|| conn.groups.pop()).flatten();
                    let buf = conn.reader.swap_assembled(Vec::new()).unwrap_or_default();
                    let len = buf.len();
                    Ok(Some(attached::decode_with(group, len, limit, || {
                        conn.decode_long(buf, decode)
                    })))
                }
                Ok(None) => Ok(None),
                Err(_) => Err(()),
            };
            match next {
                Ok(Some(decoded)) => match decoded {
                    Ok(()) => {
                        conn.batch = conn.batch.saturating_add(1);
                        self.next = i + 1;
                        found = true;
                        break;
                    }
                    // Well framed but not a `T`: the peer is broken or hostile.
                    Err(_) => conn.dead = true,
                },
                // At end of stream an incomplete message is torn: never delivered.
                // Descriptors come with a marked frame's first bytes, so a group queued
                // while nothing of a message is buffered belongs to no frame.
                Ok(None) => {
                    conn.dead |= conn.eof || (!conn.groups.is_empty() && !conn.reader.mid_message())
                }
                Err(()) => conn.dead = true,
            }
        }
        drop_dead(&mut self.conns, |c| c.dead, |_| {});
        found
    }

    /// Reads the only connection if more bytes are likely waiting: its last read brought
    /// several messages (its peer streams faster than we take; a peer that answers one
    /// message at a time is polled first, as a read would find nothing), or took all it
    /// asked for part-way through a message. True when it found more.
    fn read_lone_hot(&mut self) -> bool {
        match &mut self.conns[..] {
            [conn] if conn.hot && (conn.batch >= 2 || conn.full && conn.reader.mid_message()) => {
                conn.read_some()
            }
            _ => false,
        }
    }

    /// Waits for data on any connection (or a new one from the acceptor) and reads what is
    /// ready. True when something was ready.
    fn poll(
        &mut self,
        acceptor: Option<&Acceptor<()>>,
        timeout: Option<std::time::Duration>,
    ) -> io::Result<bool> {
        let mut fds: Vec<PollFd<'_>> = self
            .conns
            .iter()
            .map(|c| PollFd::new(&c.fd, PollFlags::IN))
            .collect();
        if let Some(a) = acceptor {
            fds.push(PollFd::new(a.wake_fd(), PollFlags::IN));
        }
        if sys::poll(&mut fds, timeout)? == 0 {
            return Ok(false);
        }
        let ready: Vec<bool> = fds.iter().map(|p| !p.revents().is_empty()).collect();
        drop(fds);
        for (conn, _) in self.conns.iter_mut().zip(&ready).filter(|(_, r)| **r) {
            let _ = conn.read_some();
        }
        if let (Some(a), Some(true)) = (acceptor, ready.last()) {
            a.clear_wake();
        }
        Ok(true)
    }
}
