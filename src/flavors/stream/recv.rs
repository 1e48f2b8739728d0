//! The receiving half of the stream flavor.
//!
//! The receiver owns every connection it serves and polls them together; messages are taken
//! from connections in turn (fairness), and a connection that breaks the framing or sends an
//! undecodable message is dropped alone.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::event::{PollFd, PollFlags};

use crate::addr::Address;
use crate::codec::Decode;
use crate::flavors::acceptor::{self, Acceptor};
use crate::flavors::attached::{self, Groups, MAX_QUEUED};
use crate::flavors::lock::{HandleLock, LockFail};
use crate::flavors::{decode_shared, drop_dead, in_turn, Deadline, NotReceived, SHARE_FROM};
use crate::frame::{FrameReader, PIECE_MAX};
use crate::handshake::Hello;
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
    fd: OwnedFd,
    reader: FrameReader,
    /// A Unix socket: descriptors may come with the bytes (`attached.rs`).
    passes_fds: bool,
    /// Descriptors that came ahead of the messages that name them.
    groups: Groups,
    /// The peer closed its end: deliver what is complete, then drop.
    eof: bool,
    /// Drop at the next sweep.
    dead: bool,
}

impl RecvConn {
    fn new(fd: OwnedFd, kind: StreamKind, limit: usize) -> Self {
        RecvConn {
            fd,
            reader: FrameReader::new(limit),
            passes_fds: kind == StreamKind::Unix,
            groups: Groups::default(),
            eof: false,
            dead: false,
        }
    }

    /// One non-blocking read into the frame reader (straight into a large message's
    /// assembly when the reader asks for it).
    fn read_some(&mut self) {
        // Descriptors come only with a marked message's first header, so never with the
        // rest of a piece read straight into the assembly (a peer that sends them there has
        // them closed by the kernel, and its message is refused without them).
        let read = match self.reader.direct() {
            Some((assembly, max)) => sys::read_append(&self.fd, assembly, max).map(|n| (n, true)),
            None if self.passes_fds => {
                match fdpass::recv_with_fds(self.fd.as_fd(), self.reader.spare(), MAX_QUEUED) {
                    Ok((n, fds)) if !fds.is_empty() => {
                        if self.groups.push(fds).is_err() {
                            self.dead = true;
                        }
                        Ok((n, false))
                    }
                    other => other.map(|(n, _)| (n, false)),
                }
            }
            None => sys::read(&self.fd, self.reader.spare()).map(|n| (n, false)),
        };
        match read {
            Ok((0, _)) => self.eof = true,
            Ok((n, true)) => self.reader.appended(n),
            Ok((n, false)) => self.reader.filled(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // Reset, or anything else: the peer is gone; nothing more will come.
            Err(_) => self.eof = true,
        }
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
        let mut state = self.state.lock(deadline).map_err(|f| (f, deadline))?;
        state.recv(self.acceptor.as_ref(), deadline, decode)
    }
}

impl RecvState {
    /// [`StreamReceiver::recv_with`], holding the lock.
    fn recv(
        &mut self,
        acceptor: Option<&Acceptor<()>>,
        deadline: Deadline,
        decode: &mut Decode<'_>,
    ) -> Result<(), NotReceived> {
        let mut polled = false;
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
            // Past the deadline, one look at what is ready (made above) is all we owe: peers
            // that keep streaming bytes must not hold the caller beyond it.
            if polled && timeout.is_some_and(|t| t.is_zero()) {
                return Err(deadline.recv_expired());
            }
            self.poll(acceptor, timeout).map_err(NotReceived::Io)?;
            polled = true;
        }
    }

    /// A complete message from the connections, taken in turn; drops broken connections.
    fn take_buffered(&mut self, decode: &mut Decode<'_>) -> bool {
        let mut found = false;
        let limit = self.limit;
        for i in in_turn(self.next, self.conns.len()) {
            let conn = &mut self.conns[i];
            let next = match conn.reader.next_message() {
                // Marked as having descriptors attached: they came with its first bytes.
                Ok(Some((_, true))) if conn.groups.is_empty() => Err(()),
                Ok(Some((bytes, attached))) if bytes.len() < SHARE_FROM.max(PIECE_MAX + 1) => {
                    let group = attached.then(|| conn.groups.pop()).flatten();
                    let len = bytes.len();
                    Ok(Some(attached::decode_with(group, len, limit, || {
                        decode(bytes)
                    })))
                }
                // Longer than a piece, so in the reader's assembly: decoded from a buffer
                // that a `Bytes` in it may share (see `decode_shared`).
                Ok(Some((_, attached))) => {
                    let group = attached.then(|| conn.groups.pop()).flatten();
                    let mut buf = conn.reader.swap_assembled(Vec::new()).unwrap_or_default();
                    let len = buf.len();
                    let decoded = attached::decode_with(group, len, limit, || {
                        decode_shared(&mut buf, decode)
                    });
                    conn.reader.swap_assembled(buf);
                    Ok(Some(decoded))
                }
                Ok(None) => Ok(None),
                Err(_) => Err(()),
            };
            match next {
                Ok(Some(decoded)) => match decoded {
                    Ok(()) => {
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
            conn.read_some();
        }
        if let (Some(a), Some(true)) = (acceptor, ready.last()) {
            a.clear_wake();
        }
        Ok(true)
    }
}
