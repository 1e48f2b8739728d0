//! Stream flavor: encoded messages as length-prefixed frames over a Unix socket, a TCP socket
//! or a pipe.
//!
//! Clones of a sender share one connection behind a mutex and write each message whole while
//! holding it, so pieces never interleave. The receiver owns every connection it serves and
//! polls them together; messages are taken from connections in turn (fairness), and a
//! connection that breaks the framing or sends an undecodable message is dropped alone.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use rustix::event::{PollFd, PollFlags};

use crate::addr::Address;
use crate::channel::encode_failure;
use crate::codec;
use crate::flavors::acceptor::Acceptor;
use crate::flavors::{Deadline, RecvFail, SendFail};
use crate::frame::{self, FrameReader, HEADER, PIECE_MAX};
use crate::handshake::{self, Hello, Status};
use crate::sys::{self, sock, StreamKind};
use crate::{Error, Options, SendFailure};

/// Most slices passed to one `writev`/`sendmsg` (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// The sending half of a stream connection, shared by clones.
#[derive(Clone)]
pub(crate) struct StreamSender {
    conn: Arc<Mutex<SendConn>>,
}

struct SendConn {
    fd: OwnedFd,
    kind: StreamKind,
    limit: usize,
    /// Reused encode buffer: `HEADER` bytes of room, then the payload.
    scratch: Vec<u8>,
    /// Reused piece headers for messages longer than one piece.
    headers: Vec<[u8; HEADER]>,
    /// A message was cut off by a failed write: the stream can carry nothing more.
    broken: bool,
}

/// Creates an anonymous pair: a Unix socketpair, or a pipe.
pub(crate) fn pair(pipe: bool, opts: &Options) -> Result<(StreamSender, StreamReceiver), Error> {
    let (read_end, write_end, kind) = if pipe {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| Error::io("creating a pipe", e))?;
        if let Some(cap) = opts.capacity {
            rustix::pipe::fcntl_setpipe_size(&w, cap)
                .map_err(|e| Error::io("setting the pipe's capacity", e))?;
        }
        (r, w, StreamKind::Pipe)
    } else {
        let (a, b) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| Error::io("creating a socketpair", e))?;
        let (a, b) = (OwnedFd::from(a), OwnedFd::from(b));
        // The receiving end never writes; the sending end never reads.
        let _ = rustix::net::shutdown(&a, rustix::net::Shutdown::Write);
        (a, b, StreamKind::Unix)
    };
    let tx = StreamSender::from_fd(write_end, kind, opts)?;
    let rx = StreamReceiver::from_fd(read_end, kind, opts)?;
    Ok((tx, rx))
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
            conn: Arc::new(Mutex::new(SendConn {
                fd,
                kind,
                limit: opts.max_message_size,
                scratch: Vec::new(),
                headers: Vec::new(),
                broken: false,
            })),
        })
    }

    /// Connects to a `unix:` or `tcp:` receiver and performs the handshake for `T`.
    pub(crate) fn connect<T>(addr: &str, parsed: &Address, opts: &Options) -> Result<Self, Error> {
        let (fd, kind) = match parsed {
            Address::Unix(path) => (sock::connect_unix(addr, path)?, StreamKind::Unix),
            Address::Tcp(host_port) => (sock::connect_tcp(addr, host_port)?, StreamKind::Tcp),
            _ => unreachable!("only stream addresses reach the stream flavor"),
        };
        let mine = Hello::new(
            Status::Ok,
            codec::fingerprint::<T>(),
            opts.max_message_size,
            &codec::describe::<T>(),
        );
        let theirs = handshake::client(addr, fd.as_fd(), kind, &mine)?;
        // Never send what the receiver would refuse.
        let limit = opts.max_message_size.min(theirs.limit as usize);
        StreamSender::from_fd(fd, kind, &opts.clone().max_message_size(limit))
    }

    /// A close-on-exec duplicate of the connection, for inheritance by a child process.
    pub(crate) fn duplicate(&self) -> Result<(OwnedFd, StreamKind, usize), Error> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let fd = conn
            .fd
            .try_clone()
            .map_err(|e| Error::io("duplicating the sender's descriptor", e))?;
        Ok((fd, conn.kind, conn.limit))
    }

    /// Encodes one message with `encode` into the connection's buffer and writes it whole.
    pub(crate) fn send_with(
        &self,
        deadline: Deadline,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<(), SendFail> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if conn.broken {
            return Err(SendFail::Disconnected);
        }
        conn.scratch.clear();
        conn.scratch.resize(HEADER, 0);
        encode(&mut conn.scratch).map_err(encode_failure)?;
        let size = conn.scratch.len() - HEADER;
        if size > conn.limit {
            let limit = conn.limit;
            conn.shrink_scratch();
            return Err(SendFail::Failed(SendFailure::TooLarge { size, limit }));
        }
        if conn.kind == StreamKind::Tcp && sys::peer_closed(conn.fd.as_fd()) {
            // A write to a closed TCP peer can succeed once; the peer never writes, so a
            // readable socket means it is gone.
            conn.broken = true;
            return Err(SendFail::Disconnected);
        }
        let result = conn.write_message(deadline);
        conn.shrink_scratch();
        result
    }
}

impl SendConn {
    /// Writes the framed message in `scratch`. Waits for room only until `deadline` before the
    /// first byte; once a byte is out the rest follows, so no message is ever torn.
    fn write_message(&mut self, deadline: Deadline) -> Result<(), SendFail> {
        let SendConn {
            fd,
            kind,
            scratch,
            headers,
            ..
        } = self;
        let size = scratch.len() - HEADER;
        let mut slices: Vec<IoSlice<'_>>;
        if size <= PIECE_MAX {
            scratch[..HEADER].copy_from_slice(&frame::header(size, true));
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
            slices = Vec::with_capacity(2 * pieces);
            for (h, c) in headers.iter().zip(payload.chunks(PIECE_MAX)) {
                slices.push(IoSlice::new(h));
                slices.push(IoSlice::new(c));
            }
        }
        let result = write_all(fd.as_fd(), *kind, &mut slices, deadline);
        if let Err(WriteFail { started: true, .. }) = &result {
            self.broken = true;
            let _ = rustix::net::shutdown(&self.fd, rustix::net::Shutdown::Write);
        }
        result.map_err(|f| f.fail)
    }

    fn shrink_scratch(&mut self) {
        if self.scratch.capacity() > 4 << 20 {
            self.scratch = Vec::new();
            self.headers = Vec::new();
        }
    }
}

struct WriteFail {
    fail: SendFail,
    started: bool,
}

fn write_all(
    fd: std::os::fd::BorrowedFd<'_>,
    kind: StreamKind,
    slices: &mut [IoSlice<'_>],
    deadline: Deadline,
) -> Result<(), WriteFail> {
    let mut rest = slices;
    let mut started = false;
    while !rest.is_empty() {
        let batch = rest.len().min(IOV_MAX);
        match sys::write_vectored(fd, kind, &rest[..batch]) {
            Ok(0) => {
                let e = io::Error::from(io::ErrorKind::WriteZero);
                return Err(WriteFail {
                    fail: e.into(),
                    started,
                });
            }
            Ok(n) => {
                started = true;
                IoSlice::advance_slices(&mut rest, n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let wait = if started { None } else { deadline.remaining() };
                let not_ready = match wait {
                    Some(d) if d.is_zero() => true,
                    _ => !sys::wait_writable(fd, wait).map_err(|e| WriteFail {
                        fail: e.into(),
                        started,
                    })?,
                };
                if not_ready && !started {
                    let fail = match deadline {
                        Deadline::Now => SendFail::Full,
                        _ => SendFail::Timeout,
                    };
                    return Err(WriteFail { fail, started });
                }
            }
            Err(e) => {
                return Err(WriteFail {
                    fail: e.into(),
                    started,
                })
            }
        }
    }
    Ok(())
}

/// The receiving half: every connection it serves, and the acceptor for bound addresses.
pub(crate) struct StreamReceiver {
    state: Mutex<RecvState>,
    acceptor: Option<Acceptor>,
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
}

struct RecvConn {
    fd: OwnedFd,
    reader: FrameReader,
    /// The peer closed its end: deliver what is complete, then drop.
    eof: bool,
    /// Drop at the next sweep.
    dead: bool,
}

impl RecvConn {
    fn new(fd: OwnedFd, limit: usize) -> Self {
        RecvConn {
            fd,
            reader: FrameReader::new(limit),
            eof: false,
            dead: false,
        }
    }

    /// One non-blocking read into the frame reader.
    fn read_some(&mut self) {
        let spare = self.reader.spare();
        match sys::read(&self.fd, spare) {
            Ok(0) => self.eof = true,
            Ok(n) => self.reader.filled(n),
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
            state: Mutex::new(RecvState {
                conns: vec![RecvConn::new(fd, opts.max_message_size)],
                next: 0,
                ever_connected: true,
                limit: opts.max_message_size,
            }),
            acceptor: None,
            kind: Some(kind),
        })
    }

    /// A close-on-exec duplicate of an anonymous receiver's stream, for a child process.
    pub(crate) fn duplicate(&self) -> Result<(OwnedFd, StreamKind, usize), Error> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (Some(kind), [conn]) = (self.kind, &state.conns[..]) else {
            return Err(Error::Unsupported {
                what: "passing a bound receiver to another process (bind in the child instead)"
                    .to_string(),
            });
        };
        if conn.reader.mid_message() {
            return Err(Error::Unsupported {
                what: "passing a receiver that has already buffered data".to_string(),
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
        let mine = Hello::new(
            Status::Ok,
            codec::fingerprint::<T>(),
            opts.max_message_size,
            &codec::describe::<T>(),
        );
        let acceptor = Acceptor::bind(addr, parsed, mine)?;
        Ok(StreamReceiver {
            state: Mutex::new(RecvState {
                conns: Vec::new(),
                next: 0,
                ever_connected: false,
                limit: opts.max_message_size,
            }),
            acceptor: Some(acceptor),
            kind: None,
        })
    }

    pub(crate) fn local_addr(&self) -> Option<String> {
        self.acceptor.as_ref().map(|a| a.local_addr().to_string())
    }

    /// Receives one message, decoded by `decode`, waiting until `deadline`.
    pub(crate) fn recv_with<T>(
        &self,
        deadline: Deadline,
        decode: impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<T, RecvFail> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(acceptor) = &self.acceptor {
                while let Some(fd) = acceptor.take() {
                    let limit = state.limit;
                    state.conns.push(RecvConn::new(fd, limit));
                    state.ever_connected = true;
                }
            }
            if let Some(value) = state.take_buffered(&decode) {
                return Ok(value);
            }
            if state.conns.is_empty() && state.ever_connected {
                return Err(RecvFail::Disconnected);
            }
            let timeout = deadline.remaining();
            let ready = state
                .poll(self.acceptor.as_ref(), timeout)
                .map_err(RecvFail::Io)?;
            if !ready && timeout.is_some_and(|t| t.is_zero()) {
                return Err(match deadline {
                    Deadline::Now => RecvFail::Empty,
                    _ => RecvFail::Timeout,
                });
            }
        }
    }
}

impl RecvState {
    /// A complete message from the connections, taken in turn; drops broken connections.
    fn take_buffered<T>(&mut self, decode: &impl Fn(&[u8]) -> Result<T, String>) -> Option<T> {
        let n = self.conns.len();
        let mut found = None;
        for k in 0..n {
            let i = (self.next + k) % n;
            let conn = &mut self.conns[i];
            match conn.reader.next_message() {
                Ok(Some(bytes)) => match decode(bytes) {
                    Ok(value) => {
                        self.next = i + 1;
                        found = Some(value);
                        break;
                    }
                    // Well framed but not a `T`: the peer is broken or hostile.
                    Err(_) => conn.dead = true,
                },
                // At end of stream an incomplete message is torn: never delivered.
                Ok(None) => conn.dead |= conn.eof,
                Err(_) => conn.dead = true,
            }
        }
        if self.conns.iter().any(|c| c.dead) {
            self.conns.retain(|c| !c.dead);
        }
        if self.next >= self.conns.len() {
            self.next = 0;
        }
        found
    }

    /// Waits for data on any connection (or a new one from the acceptor) and reads what is
    /// ready. True when something was ready.
    fn poll(
        &mut self,
        acceptor: Option<&Acceptor>,
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
