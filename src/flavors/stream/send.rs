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
//!
//! A message is encoded into the connection's reused buffer, behind five bytes of room for
//! its frame header, and written with one `send` when it is one piece (the receiver then
//! decodes it straight from its read buffer). An encoding whose byte strings take it past
//! [`STREAM_FROM`] is abandoned there and streamed instead (`sink.rs`): its long byte
//! strings go to the kernel straight from the caller's value.
//!
//! On a Unix socket, while the process holds any sealed buffer (`blob.rs`), a message that
//! holds sealed `Bytes` of 64 KiB or more is found by the encoding (a probe that stops at
//! the first, before copying it) or by the measuring walk, encoded again with references,
//! and written with the buffers' descriptors attached to its first bytes.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use serde::Serialize;

use super::sink::{write_pieces, StreamSink, Streamed};
use super::write::{self, remaining, write_all, write_once, write_slices};
use crate::addr::Address;
use crate::blob::{self, MAX_IN_FLIGHT};
use crate::codec;
use crate::flavors::lock::HandleLock;
use crate::flavors::lock::LockFail;
use crate::flavors::{Deadline, NotSent, Tail, KEEP_BUFFER};
use crate::frame::{self, FLAG_ATTACHED, HEADER, PIECE_MAX};
use crate::handshake::{self, Hello};
use crate::sys::sealed::Sealed;
use crate::sys::{self, fdpass, sock, StreamKind};
use crate::{Error, Options, SendFailure};

/// Messages whose byte strings take their encoding past this many bytes are streamed
/// (`sink.rs`) rather than encoded into the sender's buffer. Below it the copy into the
/// buffer costs less than what streaming adds: the measuring walk, a second write for the
/// last piece, and a piece more for the receiver (a 64 KiB `Bytes` went 10% faster copied,
/// 128 KiB ones as fast either way, 256 KiB and 1 MiB ones 10 to 15% faster streamed).
const STREAM_FROM: usize = 2 * PIECE_MAX;

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
        write::configure(&fd, kind).map_err(|e| Error::io("configuring the stream", e))?;
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

    /// Encodes `msg` and writes it.
    #[inline]
    pub(crate) fn send<T: Serialize>(&self, deadline: Deadline, msg: &T) -> Result<(), NotSent> {
        let mut conn = self.conn.lock(deadline).map_err(|f| (f, deadline))?;
        conn.send(deadline, msg)
    }

    /// A duplicate of the connection's descriptor, to wait on for room (writable) without
    /// holding the lock; `None` while another clone holds it.
    #[cfg(feature = "tokio")]
    pub(crate) fn room_fd(&self) -> Option<std::io::Result<OwnedFd>> {
        let conn = self.conn.lock(Deadline::Now).ok()?;
        Some(conn.fd.try_clone())
    }
}

impl SendConn {
    /// [`StreamSender::send`], holding the lock.
    #[inline]
    fn send<T: Serialize>(&mut self, deadline: Deadline, msg: &T) -> Result<(), NotSent> {
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
        self.scratch.extend_from_slice(&[0; HEADER]);
        if self.kind == StreamKind::Unix && blob::any_sealed() {
            return self.send_probed(deadline, msg);
        }
        if !codec::encode_small(msg, &mut self.scratch, HEADER + STREAM_FROM)
            .map_err(NotSent::encode)?
        {
            return self.send_streamed(deadline, msg);
        }
        self.write_encoded(deadline)
    }

    /// Writes the message encoded in `scratch` (behind its header room).
    #[inline]
    fn write_encoded(&mut self, deadline: Deadline) -> Result<(), NotSent> {
        let size = self.scratch.len() - HEADER;
        if size > self.limit {
            let limit = self.limit;
            self.shrink_buffers();
            return Err(NotSent::Failed(SendFailure::TooLarge { size, limit }));
        }
        let result = if size <= PIECE_MAX {
            self.write_one_piece(deadline)
        } else {
            self.write_buffered(deadline)
        };
        self.shrink_buffers();
        result
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

    /// Writes the one-piece message in `scratch` (its header in the room at the front):
    /// one system call and no allocation when the kernel takes it whole, as it does unless
    /// the buffer is full. Waits for room only until `deadline`; a message cut short by the
    /// deadline keeps its tail for later (see the module docs).
    #[inline]
    fn write_one_piece(&mut self, deadline: Deadline) -> Result<(), NotSent> {
        let size = self.scratch.len() - HEADER;
        self.scratch[..HEADER].copy_from_slice(&frame::header(size, true));
        let first = match write_once(self.fd.as_fd(), self.kind, &self.scratch, deadline) {
            Ok(n) if n == self.scratch.len() => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(NotSent::from(e)),
        };
        self.write_rest(first, deadline)
    }

    /// [`SendConn::write_one_piece`] once the first write took `first` bytes, not all.
    #[cold]
    fn write_rest(&mut self, first: usize, deadline: Deadline) -> Result<(), NotSent> {
        let mut slices = [IoSlice::new(&self.scratch[first..])];
        let mut rest = &mut slices[..];
        let result = write_slices(self.fd.as_fd(), self.kind, &mut rest, deadline);
        let started = first > 0 || remaining(rest) < self.scratch.len();
        match result {
            Ok(()) => Ok(()),
            Err(NotSent::Full | NotSent::Timeout) if started => {
                // Committed: keep the tail, the message counts as sent.
                self.tail.keep(rest.iter().map(|s| &s[..]));
                Ok(())
            }
            Err(fail) if started => Err(self.break_stream(fail)),
            Err(fail) => Err(fail),
        }
    }

    /// Writes the message in `scratch`, longer than a piece (many short runs), as (header,
    /// piece) pairs in one vectored write.
    #[cold]
    fn write_buffered(&mut self, deadline: Deadline) -> Result<(), NotSent> {
        let mut unwritten = Vec::new();
        let (written, result) = write_pieces(
            self.fd.as_fd(),
            self.kind,
            deadline,
            &mut self.headers,
            [&self.scratch[HEADER..], &[]],
            true,
            &mut unwritten,
        );
        self.settle(written, result.map(|()| Streamed::Whole), &unwritten)
    }

    /// [`SendConn::send`] on a Unix socket while sealed buffers exist: the encoding stops
    /// at the first sealed `Bytes` it would pass, before copying it.
    #[cold]
    fn send_probed<T: Serialize>(&mut self, deadline: Deadline, msg: &T) -> Result<(), NotSent> {
        let scratch = &mut self.scratch;
        let (fits, sealed) =
            blob::probing(|| codec::encode_small(msg, scratch, HEADER + STREAM_FROM));
        if sealed {
            return self.send_attached(deadline, msg);
        }
        if fits.map_err(NotSent::encode)? {
            self.write_encoded(deadline)
        } else {
            self.send_streamed(deadline, msg)
        }
    }

    /// Sends a message whose encoding outgrew the buffer by streaming it (`sink.rs`), after
    /// a walk that measures it against the size limit (and, on a Unix socket, counts the
    /// sealed buffers it would pass).
    #[cold]
    fn send_streamed<T: Serialize>(&mut self, deadline: Deadline, msg: &T) -> Result<(), NotSent> {
        let room = if self.kind == StreamKind::Unix {
            MAX_IN_FLIGHT
        } else {
            0
        };
        let (size, sealed) = blob::counting_sealed(room, || codec::encoded_size(msg));
        let size = size.map_err(NotSent::encode)?;
        if sealed > 0 && size <= self.limit {
            return self.send_attached(deadline, msg);
        }
        if size > self.limit {
            let limit = self.limit;
            self.shrink_buffers();
            return Err(NotSent::Failed(SendFailure::TooLarge { size, limit }));
        }
        let mut spill = Vec::new();
        let mut sink = StreamSink::new(
            self.fd.as_fd(),
            self.kind,
            deadline,
            self.limit,
            &mut self.scratch,
            &mut self.headers,
            &mut spill,
        );
        let encoded = codec::encode_to(msg, &mut sink);
        let (written, result) = sink.finish(encoded);
        let result = self.settle(written, result, &spill);
        self.shrink_buffers();
        result
    }

    /// Sends a message holding sealed buffers with their descriptors (`blob.rs`): encoded
    /// with references into `scratch`, then written with the descriptors attached to its
    /// first bytes and `FLAG_ATTACHED` on its first frame header.
    #[cold]
    fn send_attached<T: Serialize>(&mut self, deadline: Deadline, msg: &T) -> Result<(), NotSent> {
        self.scratch.clear();
        self.scratch.extend_from_slice(&[0; HEADER]);
        let scratch = &mut self.scratch;
        let (encoded, group) =
            blob::encoding_attached(MAX_IN_FLIGHT, || codec::encode_into(msg, scratch));
        encoded.map_err(NotSent::encode)?;
        // Passed buffers count against the limit as their bytes would.
        let passed: usize = group.iter().map(|sealed| sealed.as_slice().len()).sum();
        let size = self.scratch.len() - HEADER + passed;
        if size > self.limit {
            let limit = self.limit;
            self.shrink_buffers();
            return Err(NotSent::Failed(SendFailure::TooLarge { size, limit }));
        }
        let result = if group.is_empty() {
            // The value changed since it was measured and holds no sealed buffer any more:
            // the references-free encoding is the plain one.
            self.write_encoded(deadline)
        } else {
            self.write_attached(deadline, &group)
        };
        self.shrink_buffers();
        result
    }

    /// Writes the message in `scratch` as pieces, the first flagged `FLAG_ATTACHED` and sent
    /// with the descriptors of `group`.
    fn write_attached(&mut self, deadline: Deadline, group: &[Arc<Sealed>]) -> Result<(), NotSent> {
        // Never empty: it names at least one buffer.
        let payload = &self.scratch[HEADER..];
        let pieces = payload.len().div_ceil(PIECE_MAX);
        self.headers.clear();
        self.headers.extend(
            payload
                .chunks(PIECE_MAX)
                .enumerate()
                .map(|(i, c)| frame::header(c.len(), i + 1 == pieces)),
        );
        self.headers[0][HEADER - 1] |= FLAG_ATTACHED;
        let mut slices = Vec::with_capacity(2 * pieces);
        for (h, c) in self.headers.iter().zip(payload.chunks(PIECE_MAX)) {
            slices.push(IoSlice::new(h));
            slices.push(IoSlice::new(c));
        }
        let total = remaining(&slices);
        let mut rest = &mut slices[..];
        let fd = self.fd.as_fd();
        // The descriptors go with the first header's bytes.
        let fds: Vec<BorrowedFd<'_>> = group.iter().map(|sealed| sealed.fd()).collect();
        let result = match pass_with(fd, &rest[0], &fds, deadline) {
            Ok(sent) => {
                IoSlice::advance_slices(&mut rest, sent);
                write_slices(fd, self.kind, &mut rest, deadline)
            }
            Err(fail) => Err(fail),
        };
        let written = total - remaining(rest);
        let unwritten: Vec<u8> = rest.iter().flat_map(|s| s.iter().copied()).collect();
        self.settle(written, result.map(|()| Streamed::Whole), &unwritten)
    }

    /// What a send reports once `written` bytes of its message went out and the write
    /// ended with `result`: a message cut short by the deadline keeps its unwritten rest
    /// (`unwritten`) as the tail and counts as sent; one that failed part-way ends the
    /// stream; one that failed before its first byte was not sent.
    fn settle(
        &mut self,
        written: usize,
        result: Result<Streamed, NotSent>,
        unwritten: &[u8],
    ) -> Result<(), NotSent> {
        match result {
            Ok(Streamed::Whole) => Ok(()),
            Ok(Streamed::Spilled) => {
                self.tail.keep([unwritten]);
                Ok(())
            }
            Err(NotSent::Full | NotSent::Timeout) if written > 0 => {
                self.tail.keep([unwritten]);
                Ok(())
            }
            Err(fail) if written > 0 => Err(self.break_stream(fail)),
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

    #[inline]
    fn shrink_buffers(&mut self) {
        if self.scratch.capacity() > KEEP_BUFFER {
            self.scratch = Vec::new();
            self.headers = Vec::new();
        }
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

#[cfg(test)]
mod tests {
    /// The most a run may be and still be copied into the buffer (`sink::RUN_FROM`).
    const RUN_FROM: usize = 16 << 10;
    use crate::flavors::Deadline;
    use crate::{channel_with, codec, Backend, Bytes, Options, TrySendError};

    /// A long byte string goes to the kernel from the caller's value: the connection's
    /// buffer never holds it, only the short runs around it.
    #[test]
    fn a_long_byte_string_is_not_copied_into_the_buffer() {
        let (tx, rx) = super::super::pair(false, &Options::new()).unwrap();
        let msg = (7u32, Bytes::from(vec![5u8; 1 << 20]), "after".to_string());
        let reader = std::thread::spawn(move || {
            let mut slot = None;
            rx.recv_with(Deadline::Never, &mut |b| codec::decode_into(b, &mut slot))
                .unwrap();
            slot
        });
        tx.send(Deadline::Never, &msg).unwrap();
        assert_eq!(reader.join().unwrap(), Some(msg));
        let conn = tx.conn.lock(Deadline::Never).unwrap();
        assert!(
            conn.scratch.capacity() <= RUN_FROM,
            "the buffer grew to {} bytes",
            conn.scratch.capacity()
        );
    }

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
