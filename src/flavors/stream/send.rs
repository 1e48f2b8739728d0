//! The sending half of the stream flavor: framing a message and writing it whole.
//!
//! Clones of a sender share one connection behind a lock ([`HandleLock`]) and write each
//! message while holding it, so pieces of two messages never interleave. `try_send` does not
//! wait for a clone that holds it (it reports `Full`), `send_timeout` waits no longer than
//! its deadline, and a `Serialize` that sends through its own sender gets an error instead of
//! deadlocking.
//!
//! A message is committed once its first byte is written: taking it back would tear the
//! stream. So when `try_send` or `send_timeout` runs out of time part-way through a message,
//! the unwritten tail is kept (at most one message) and the send reports success; the next
//! send writes the tail first, and reports `Full`/`Timeout` for its own message if the tail
//! does not fit in time. The last clone's drop hands a remaining tail to a short-lived thread
//! that finishes it (or gives up when the receiver goes away), so drop never blocks and
//! nothing accepted is silently lost.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use crate::addr::Address;
use crate::blob::{self, MAX_IN_FLIGHT};
use crate::flavors::lock::HandleLock;
use crate::flavors::lock::LockFail;
use crate::flavors::{Deadline, NotSent, Tail, KEEP_BUFFER};
use crate::frame::{self, FLAG_ATTACHED, HEADER, PIECE_MAX};
use crate::handshake::{self, Hello};
use crate::sys::sealed::Sealed;
use crate::sys::{self, fdpass, sock, StreamKind};
use crate::{Error, Options, SendFailure};

/// The sending half of a stream connection, shared by clones.
#[derive(Clone)]
pub(crate) struct StreamSender {
    conn: Arc<HandleLock<SendConn>>,
}

struct SendConn {
    fd: OwnedFd,
    kind: StreamKind,
    limit: usize,
    /// Reused encode buffer: `HEADER` bytes of room, then the payload.
    scratch: Vec<u8>,
    /// Reused piece headers for messages longer than one piece.
    headers: Vec<[u8; HEADER]>,
    /// The unwritten rest of a committed message; written before anything else.
    tail: Tail,
    /// A write failed part-way through a message: the stream can carry nothing more.
    broken: bool,
}

impl StreamSender {
    /// Wraps a connected, handshaken stream.
    pub(crate) fn from_fd(fd: OwnedFd, kind: StreamKind, opts: &Options) -> Result<Self, Error> {
        sys::set_nonblocking(&fd).map_err(|e| Error::io("configuring the stream", e))?;
        if let (Some(cap), StreamKind::Unix | StreamKind::Tcp) = (opts.capacity, kind) {
            rustix::net::sockopt::set_socket_send_buffer_size(&fd, cap)
                .map_err(|e| Error::io("setting the socket's send buffer", e))?;
        }
        Ok(StreamSender {
            conn: Arc::new(HandleLock::new(SendConn {
                fd,
                kind,
                limit: opts.max_message_size,
                scratch: Vec::new(),
                headers: Vec::new(),
                tail: Tail::default(),
                broken: false,
            })),
        })
    }

    /// Connects to a `unix:` or `tcp:` receiver and performs the handshake for `T`.
    pub(crate) fn connect<T>(addr: &str, parsed: &Address, opts: &Options) -> Result<Self, Error> {
        let (fd, kind) = match parsed {
            Address::Unix(path) => (
                sock::connect_unix(path).map_err(|e| Error::connect(addr, e))?,
                StreamKind::Unix,
            ),
            Address::Tcp(host_port) => (
                sock::connect_tcp(host_port).map_err(|e| Error::connect(addr, e))?,
                StreamKind::Tcp,
            ),
            _ => unreachable!("only stream addresses reach the stream flavor"),
        };
        let mine = Hello::for_type::<T>(opts.max_message_size);
        let (theirs, _) = handshake::client(addr, fd.as_fd(), kind, &mine, 0)?;
        // Never send what the receiver would refuse.
        let limit = opts.max_message_size.min(theirs.limit as usize);
        StreamSender::from_fd(fd, kind, &opts.clone().max_message_size(limit))
    }

    /// A close-on-exec duplicate of the connection, for inheritance by a child process.
    pub(crate) fn duplicate(&self) -> Result<(OwnedFd, StreamKind, usize), Error> {
        let conn = self
            .conn
            .lock(Deadline::Never)
            .map_err(LockFail::into_error)?;
        if conn.tail.is_pending() {
            return Err(Error::CannotShare {
                reason: "it is part-way through a message".to_string(),
            });
        }
        let fd = conn
            .fd
            .try_clone()
            .map_err(|e| Error::io("duplicating the sender's descriptor", e))?;
        Ok((fd, conn.kind, conn.limit))
    }

    /// Encodes one message with `encode` into the connection's buffer and writes it.
    pub(crate) fn send_with(
        &self,
        deadline: Deadline,
        encode: impl Fn(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<(), NotSent> {
        let mut conn = self.conn.lock(deadline).map_err(|f| (f, deadline))?;
        conn.send(deadline, encode)
    }
}

impl SendConn {
    /// [`StreamSender::send_with`], holding the lock.
    fn send(
        &mut self,
        deadline: Deadline,
        encode: impl Fn(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<(), NotSent> {
        if self.broken {
            return Err(NotSent::Disconnected);
        }
        if self.kind == StreamKind::Tcp && sys::peer_closed(self.fd.as_fd()) {
            // A write to a closed TCP peer can succeed once; the peer never writes after the
            // handshake, so a readable socket means it is gone.
            self.broken = true;
            return Err(NotSent::Disconnected);
        }
        self.finish_tail(deadline)?;
        self.scratch.clear();
        self.scratch.resize(HEADER, 0);
        let group = self.encode(&encode)?;
        // Sealed buffers passed as descriptors count against the limit as their bytes would.
        let passed: usize = group.iter().map(|sealed| sealed.as_slice().len()).sum();
        let size = self.scratch.len() - HEADER + passed;
        if size > self.limit {
            let limit = self.limit;
            self.shrink_buffers();
            return Err(NotSent::Failed(SendFailure::TooLarge { size, limit }));
        }
        let result = self.write_message(deadline, &group);
        self.shrink_buffers();
        result
    }

    /// Encodes into `scratch` after its header room. On a Unix socket, a message holding
    /// sealed buffers (`blob.rs`) is encoded with references to them instead: the group of
    /// buffers to pass as descriptors is returned (empty otherwise).
    fn encode(
        &mut self,
        encode: &impl Fn(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<Vec<Arc<Sealed>>, NotSent> {
        if self.kind != StreamKind::Unix {
            encode(&mut self.scratch).map_err(NotSent::encode)?;
            return Ok(Vec::new());
        }
        let scratch = &mut self.scratch;
        // Stops at the first sealed buffer, before copying it.
        let (encoded, sealed) = blob::probing(|| encode(scratch));
        if !sealed {
            encoded.map_err(NotSent::encode)?;
            return Ok(Vec::new());
        }
        self.scratch.truncate(HEADER);
        let scratch = &mut self.scratch;
        let (encoded, group) = blob::encoding_attached(MAX_IN_FLIGHT, || encode(scratch));
        encoded.map_err(NotSent::encode)?;
        Ok(group)
    }

    /// Writes what is left of a committed message, waiting no longer than `deadline`.
    fn finish_tail(&mut self, deadline: Deadline) -> Result<(), NotSent> {
        let (fd, kind) = (self.fd.as_fd(), self.kind);
        let result = self.tail.finish(|rest| write_all(fd, kind, rest, deadline));
        match result {
            Err(fail @ (NotSent::Full | NotSent::Timeout)) => Err(fail),
            Err(fail) => Err(self.break_stream(fail)),
            Ok(()) => Ok(()),
        }
    }

    /// Frames the message in `scratch` and writes it. Waits for room only until `deadline`;
    /// a message cut short by the deadline keeps its tail for later (see the module docs).
    fn write_message(&mut self, deadline: Deadline, group: &[Arc<Sealed>]) -> Result<(), NotSent> {
        let SendConn {
            fd,
            kind,
            scratch,
            headers,
            tail,
            ..
        } = self;
        let size = scratch.len() - HEADER;
        let flag = if group.is_empty() { 0 } else { FLAG_ATTACHED };
        let mut slices: Vec<IoSlice<'_>>;
        if size <= PIECE_MAX {
            scratch[..HEADER].copy_from_slice(&frame::header(size, true));
            scratch[HEADER - 1] |= flag;
            slices = vec![IoSlice::new(scratch)];
        } else {
            let payload = &scratch[HEADER..];
            let pieces = payload.len().div_ceil(PIECE_MAX);
            headers.clear();
            headers.extend(
                payload
                    .chunks(PIECE_MAX)
                    .enumerate()
                    .map(|(i, c)| frame::header(c.len(), i + 1 == pieces)),
            );
            headers[0][HEADER - 1] |= flag;
            slices = Vec::with_capacity(2 * pieces);
            for (h, c) in headers.iter().zip(payload.chunks(PIECE_MAX)) {
                slices.push(IoSlice::new(h));
                slices.push(IoSlice::new(c));
            }
        }
        let total = remaining(&slices);
        let mut rest = &mut slices[..];
        if !group.is_empty() {
            // The descriptors go with the first bytes of the message.
            let fds: Vec<BorrowedFd<'_>> = group.iter().map(|sealed| sealed.fd()).collect();
            let sent = pass_with(fd.as_fd(), &rest[0], &fds, deadline)?;
            IoSlice::advance_slices(&mut rest, sent);
        }
        let result = write_slices(fd.as_fd(), *kind, &mut rest, deadline);
        let started = remaining(rest) < total;
        match result {
            Ok(()) => Ok(()),
            Err(NotSent::Full | NotSent::Timeout) if started => {
                // Committed: keep the tail, the message counts as sent.
                tail.keep(rest.iter().map(|s| &s[..]));
                Ok(())
            }
            Err(fail) if started => Err(self.break_stream(fail)),
            Err(fail) => Err(fail),
        }
    }

    /// A message was cut off for good: nothing more can be sent on this stream. Shutting it
    /// down makes the receiver drop the partial message at once.
    fn break_stream(&mut self, fail: NotSent) -> NotSent {
        self.broken = true;
        let _ = rustix::net::shutdown(&self.fd, rustix::net::Shutdown::Write);
        fail
    }

    fn shrink_buffers(&mut self) {
        if self.scratch.capacity() > KEEP_BUFFER {
            self.scratch = Vec::new();
            self.headers = Vec::new();
        }
    }
}

impl Drop for SendConn {
    fn drop(&mut self) {
        if self.broken || !self.tail.is_pending() {
            return;
        }
        let mut tail = std::mem::take(&mut self.tail);
        let kind = self.kind;
        let Ok(fd) = self.fd.try_clone() else {
            return;
        };
        Tail::finish_elsewhere(move || {
            let _ = tail.finish(|rest| write_all(fd.as_fd(), kind, rest, Deadline::Never));
        });
    }
}

/// Sends the first bytes of a message (`first`, or as much of it as fits) with the
/// descriptors `fds`, waiting for room until `deadline`: how many bytes went. Out of time,
/// nothing was sent.
fn pass_with(
    fd: BorrowedFd<'_>,
    first: &[u8],
    fds: &[BorrowedFd<'_>],
    deadline: Deadline,
) -> Result<usize, NotSent> {
    loop {
        match fdpass::send_with_fds(fd, first, fds) {
            Ok(sent) => return Ok(sent),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let remaining = deadline.remaining();
                if remaining.is_some_and(|d| d.is_zero()) || !sys::wait_writable(fd, remaining)? {
                    return Err(deadline.send_expired());
                }
            }
            // A receiver that is gone gives `Disconnected` (see `From<io::Error>`).
            Err(e) => return Err(e.into()),
        }
    }
}

fn remaining(slices: &[IoSlice<'_>]) -> usize {
    slices.iter().map(|s| s.len()).sum()
}

/// Writes all of `bytes`, waiting for room until `deadline`: how many were written, and
/// whether all were.
fn write_all(
    fd: BorrowedFd<'_>,
    kind: StreamKind,
    bytes: &[u8],
    deadline: Deadline,
) -> (usize, Result<(), NotSent>) {
    let mut slices = [IoSlice::new(bytes)];
    let mut rest = &mut slices[..];
    let result = write_slices(fd, kind, &mut rest, deadline);
    (bytes.len() - remaining(rest), result)
}

/// Writes `rest` until it is empty, waiting for room until `deadline`; on return `rest` is
/// what was not written. Out of time: `Full` (deadline `Now`) or `Timeout`.
fn write_slices(
    fd: BorrowedFd<'_>,
    kind: StreamKind,
    rest: &mut &mut [IoSlice<'_>],
    deadline: Deadline,
) -> Result<(), NotSent> {
    let until = match deadline {
        Deadline::Now => Some(Instant::now()),
        Deadline::At(at) => Some(at),
        Deadline::Never => None,
    };
    match sys::write_all_until(fd, kind, rest, until) {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(deadline.send_expired()),
        other => other.map_err(NotSent::from),
    }
}

#[cfg(test)]
mod tests {
    use crate::{channel_with, Backend, Options, TrySendError};

    /// A message that does not fit the buffer is committed by `try_send`, finished later, and
    /// delivered whole; a message behind it is refused `Full` without waiting; dropping the
    /// sender with a tail pending still delivers it.
    #[test]
    fn try_send_commits_a_started_message_and_drop_finishes_it() {
        for backend in [Backend::Socket, Backend::Pipe] {
            let opts = Options::new().capacity(4096);
            let (tx, rx) = channel_with::<Vec<u8>>(backend, &opts).unwrap();
            let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            tx.try_send(big.clone())
                .expect("a started message is committed");
            match tx.try_send(vec![1, 2, 3]) {
                Err(TrySendError::Full(m)) => assert_eq!(m, vec![1, 2, 3]),
                other => panic!("{backend:?}: expected Full, got {other:?}"),
            }
            drop(tx);
            assert_eq!(rx.recv().unwrap(), big, "{backend:?}");
            assert!(
                rx.recv().is_err(),
                "{backend:?}: Disconnected after the tail"
            );
        }
    }

    /// `send_timeout` behind a pending tail times out, hands its message back, and a later
    /// `send` delivers both in order.
    #[test]
    fn send_after_a_pending_tail_keeps_order() {
        let (tx, rx) =
            channel_with::<Vec<u8>>(Backend::Socket, &Options::new().capacity(4096)).unwrap();
        let big = vec![7u8; 200_000];
        tx.try_send(big.clone()).unwrap();
        let err = tx
            .send_timeout(vec![9], std::time::Duration::from_millis(20))
            .unwrap_err();
        assert!(err.is_timeout());
        let reader = std::thread::spawn(move || (rx.recv().unwrap(), rx.recv().unwrap()));
        tx.send(vec![9]).unwrap();
        assert_eq!(reader.join().unwrap(), (big, vec![9]));
    }
}
