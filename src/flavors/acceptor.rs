//! The acceptor: a thread per bound receiver that accepts connections, refuses other users,
//! runs the listening side of the handshake, and hands accepted connections to the receiver.
//! Senders can therefore connect (and learn of a type mismatch) while the receiving thread is
//! busy elsewhere. What a backend adds per connection (the shm backend's ring) comes from a
//! [`Hook`] it passes in; the acceptor knows nothing of it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel as cb;
use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::net::SocketFlags;

use crate::addr::Address;
use crate::handshake::{self, Hello, HelloError, Status};
use crate::sys::{self, sock, StreamKind};
use crate::Error;

/// Connections still in their handshake, at most; past it the one waiting longest is closed,
/// so idle connections cannot lock real senders out.
const MAX_PENDING: usize = 256;
/// How long the acceptor waits for room to write its answer.
const REPLY_PATIENCE: Duration = Duration::from_millis(100);

/// What a backend makes for each sender that passed the handshake, on the acceptor's thread:
/// something the receiver keeps with the connection, and descriptors passed to the sender
/// with the answer (closed once sent).
pub(crate) type Hook<X> = Box<dyn FnMut() -> io::Result<(X, Vec<OwnedFd>)> + Send>;

/// The hook of backends that need nothing beyond the connection.
pub(crate) fn nothing_more() -> Hook<()> {
    Box::new(|| Ok(((), Vec::new())))
}

/// A connection that passed the handshake.
pub(crate) struct Accepted<X> {
    pub(crate) fd: OwnedFd,
    /// What the hook made for it.
    pub(crate) extra: X,
}

/// A running acceptor. Dropping it stops the thread and removes the socket file.
pub(crate) struct Acceptor<X> {
    incoming: cb::Receiver<Accepted<X>>,
    /// Connections the thread has queued in `incoming` and the receiver has not taken: a
    /// plain load tells `take` there is nothing, where polling the channel costs a `SeqCst`
    /// fence (crossbeam's list flavor) on every receive.
    queued: std::sync::Arc<AtomicUsize>,
    /// Signalled by the thread after each accepted connection; the receiver polls it.
    wake: std::sync::Arc<OwnedFd>,
    /// Signalled by drop to stop the thread.
    stop: std::sync::Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    local_addr: String,
    /// Held for its drop: removes the socket file if it is still ours.
    _file: Option<sock::OwnedSocketFile>,
}

impl<X: Send + 'static> Acceptor<X> {
    /// Binds `parsed` and starts the thread; `mine` is the receiver's hello, `hook` what the
    /// backend adds to each connection.
    pub(crate) fn bind(
        addr: &str,
        parsed: &Address,
        mine: Hello,
        hook: Hook<X>,
    ) -> Result<Self, Error> {
        let (listener, kind, file, local_addr): (OwnedFd, _, _, _) = match parsed {
            Address::Unix(path) | Address::Shm(path) => {
                let (l, f) = sock::bind_unix(path).map_err(|e| Error::bind(addr, e))?;
                (l.into(), StreamKind::Unix, Some(f), addr.to_string())
            }
            Address::Tcp(host_port) => {
                let l = std::net::TcpListener::bind(host_port.as_str()).map_err(|e| {
                    if e.kind() == io::ErrorKind::AddrInUse {
                        Error::AddrInUse {
                            addr: addr.to_string(),
                            reason: "another socket listens on that port".to_string(),
                        }
                    } else {
                        Error::io(format!("binding {addr:?}"), e)
                    }
                })?;
                let local = l
                    .local_addr()
                    .map_err(|e| Error::io(format!("reading the address of {addr:?}"), e))?;
                (l.into(), StreamKind::Tcp, None, format!("tcp:{local}"))
            }
            Address::Thread(_) | Address::Zenoh(_) => {
                unreachable!("thread and zenoh addresses never reach the acceptor")
            }
        };
        sys::set_nonblocking(&listener).map_err(|e| Error::io("configuring the listener", e))?;
        let eventfd = || {
            rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
                .map(std::sync::Arc::new)
                .map_err(|e| Error::io("creating an eventfd", e))
        };
        let (wake, stop) = (eventfd()?, eventfd()?);
        let (tx, incoming) = cb::unbounded();
        let queued = std::sync::Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            queued: queued.clone(),
            listener,
            kind,
            mine,
            hook,
            wake: wake.clone(),
            stop: stop.clone(),
            tx,
            pending: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("conduit-acceptor".to_string())
            .spawn(move || worker.run())
            .map_err(|e| Error::io("starting the acceptor thread", e))?;
        Ok(Acceptor {
            incoming,
            queued,
            wake,
            stop,
            thread: Some(thread),
            local_addr,
            _file: file,
        })
    }

    /// A connection that passed the handshake, if one is waiting.
    pub(crate) fn take(&self) -> Option<Accepted<X>> {
        // Relaxed: the count only saves polling an empty channel; it guards no data. The
        // channel carries the connection with its own synchronisation, so a count seen
        // before the connection shows costs one empty `try_recv` (then `None`, and the next
        // call takes it). A connection queued just after this load is taken on the next
        // call; one the receiver sleeps through comes with the wake-up descriptor, written
        // after the increment and read (a system call on both sides) before it looks again.
        if self.queued.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let accepted = self.incoming.try_recv().ok()?;
        // Relaxed: the count only gates polling; the channel carries the connection itself.
        self.queued.fetch_sub(1, Ordering::Relaxed);
        Some(accepted)
    }

    pub(crate) fn wake_fd(&self) -> &OwnedFd {
        &self.wake
    }

    /// Resets the wake-up after the receiver saw it.
    pub(crate) fn clear_wake(&self) {
        let mut buf = [0u8; 8];
        let _ = sys::read(self.wake.as_fd(), &mut buf);
    }

    pub(crate) fn local_addr(&self) -> &str {
        &self.local_addr
    }
}

impl<X> Drop for Acceptor<X> {
    fn drop(&mut self) {
        let _ = rustix::io::write(self.stop.as_fd(), &1u64.to_ne_bytes());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Pending {
    fd: OwnedFd,
    buf: Vec<u8>,
    since: Instant,
}

struct Worker<X> {
    listener: OwnedFd,
    kind: StreamKind,
    mine: Hello,
    hook: Hook<X>,
    wake: std::sync::Arc<OwnedFd>,
    stop: std::sync::Arc<OwnedFd>,
    tx: cb::Sender<Accepted<X>>,
    /// The acceptor's `queued`, counted up after each connection is queued.
    queued: std::sync::Arc<AtomicUsize>,
    pending: Vec<Pending>,
}

impl<X> Worker<X> {
    fn run(mut self) {
        loop {
            let now = Instant::now();
            self.pending
                .retain(|p| now.duration_since(p.since) < handshake::TIMEOUT);
            let timeout = self
                .pending
                .iter()
                .map(|p| (p.since + handshake::TIMEOUT).saturating_duration_since(now))
                .min();
            let mut fds = vec![
                PollFd::new(&*self.stop, PollFlags::IN),
                PollFd::new(&self.listener, PollFlags::IN),
            ];
            fds.extend(
                self.pending
                    .iter()
                    .map(|p| PollFd::new(&p.fd, PollFlags::IN)),
            );
            if sys::poll(&mut fds, timeout).is_err() {
                // poll only fails on resource exhaustion; back off instead of spinning.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            let ready: Vec<bool> = fds.iter().map(|p| !p.revents().is_empty()).collect();
            drop(fds);
            if ready[0] {
                return;
            }
            let mut keep = Vec::with_capacity(self.pending.len());
            for (p, r) in std::mem::take(&mut self.pending)
                .into_iter()
                .zip(&ready[2..])
            {
                let still_pending = if *r { self.advance(p) } else { Some(p) };
                keep.extend(still_pending);
            }
            self.pending = keep;
            if ready[1] && self.accept_all().is_err() {
                return;
            }
        }
    }

    /// Accepts every waiting connection. Err when the receiver is gone.
    fn accept_all(&mut self) -> Result<(), ()> {
        loop {
            let fd = match rustix::net::accept_with(
                &self.listener,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            ) {
                Ok(fd) => fd,
                Err(_) => return Ok(()),
            };
            if self.kind == StreamKind::Unix {
                match sock::peer_uid(&fd) {
                    Ok(uid) if uid == sock::my_uid() => {}
                    _ => {
                        let refusal = Hello::new(Status::Refused, 0, 0, "");
                        let _ = self.reply(&fd, &refusal, &[]);
                        continue;
                    }
                }
            }
            if self.pending.len() >= MAX_PENDING {
                // `pending` is in arrival order: the first has waited longest.
                self.pending.remove(0);
            }
            self.pending.push(Pending {
                fd,
                buf: Vec::with_capacity(handshake::MAX_LEN),
                since: Instant::now(),
            });
        }
    }

    /// Reads more of a pending hello; answers it when complete. `Some` to keep waiting.
    fn advance(&mut self, mut p: Pending) -> Option<Pending> {
        let mut chunk = [0u8; handshake::MAX_LEN];
        let room = handshake::MAX_LEN - p.buf.len();
        match sys::read(&p.fd, &mut chunk[..room.max(1)]) {
            Ok(0) => return None,
            Ok(n) => p.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(p),
            Err(_) => return None,
        }
        match Hello::parse(&p.buf) {
            Ok(None) if p.buf.len() < handshake::MAX_LEN => Some(p),
            // A sender waits for our answer before it writes frames: extra bytes are a
            // protocol violation.
            Ok(Some((request, used))) if used == p.buf.len() => {
                let (answer, accept) = handshake::answer(&request, &self.mine);
                if !accept {
                    let _ = self.reply(&p.fd, &answer, &[]);
                    return None;
                }
                // Hand the connection to the receiver before answering, so that once
                // `connect` returns the receiver already counts this sender.
                let (accepted, passed) = match self.prepare(&p.fd) {
                    Ok(prepared) => prepared,
                    Err(_) => return None,
                };
                if self.tx.send(accepted).is_err() {
                    return None;
                }
                // Relaxed: see `Acceptor::take`; the wake-up below is what a sleeping
                // receiver waits for.
                self.queued.fetch_add(1, Ordering::Relaxed);
                let _ = rustix::io::write(self.wake.as_fd(), &1u64.to_ne_bytes());
                let passed: Vec<BorrowedFd<'_>> = passed.iter().map(|f| f.as_fd()).collect();
                let _ = self.reply(&p.fd, &answer, &passed);
                None
            }
            Err(HelloError::Version(_)) => {
                let mut answer = self.mine.clone();
                answer.status = Status::VersionMismatch;
                let _ = self.reply(&p.fd, &answer, &[]);
                None
            }
            _ => None,
        }
    }

    /// What the receiver gets for an accepted connection, and the descriptors the sender
    /// gets with the answer.
    fn prepare(&mut self, fd: &OwnedFd) -> io::Result<(Accepted<X>, Vec<OwnedFd>)> {
        let dup = fd.try_clone()?;
        let (extra, passed) = (self.hook)()?;
        Ok((Accepted { fd: dup, extra }, passed))
    }

    /// Writes a whole (small) hello, with `fds` attached to its first byte, waiting briefly
    /// for room if needed.
    fn reply(&self, fd: &OwnedFd, hello: &Hello, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let bytes = hello.encode();
        let mut sent = 0;
        if !fds.is_empty() {
            sent = sys::fdpass::send_with_fds(fd.as_fd(), &bytes, fds)?;
        }
        // A hello fits any socket buffer; a sender that does not read it is not waited for.
        let until = Instant::now() + REPLY_PATIENCE;
        let mut rest = [io::IoSlice::new(&bytes[sent..])];
        sys::write_all_until(fd.as_fd(), self.kind, &mut &mut rest[..], Some(until))
    }
}
