//! The receiving half of the shared-memory flavor.
//!
//! The receiver spins briefly, then announces its sleep in every ring it serves and polls
//! every sender's connection: a sender's publish wakes it with a byte there (`sys/notify.rs`),
//! and a sender's death hangs the connection up. Every sleep is also bounded.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use super::{dup_for_child, inherited_parts, ring_per_sender, sleep_bound, Mapped};
use crate::addr::Address;
use crate::codec::Decode;
use crate::flavors::acceptor::Acceptor;
use crate::flavors::attached::{self, Groups};
use crate::flavors::lock::{HandleLock, LockFail};
use crate::flavors::{
    decode_shared, drop_dead, in_turn, Backoff, Deadline, NotReceived, SHARE_FROM,
};
use crate::handshake::Hello;
use crate::readiness::{self, ReadySet, Watched};
use crate::ring::core::{Consumer, Taken};
use crate::sys::memfd::SharedMap;
use crate::sys::{self, notify};
use crate::{Error, Options, DEFAULT_SHM_CAPACITY};

/// After taking this many messages in a row without waiting (the senders were ahead), a
/// receiver that runs dry pauses before it polls again (`RecvState::slip`).
const SLIP_AFTER: u32 = 8;
/// How long that pause lasts.
const SLIP_FOR: Duration = Duration::from_micros(2);
/// Reassembly capacity kept between messages, per sender.
const KEEP_ASSEMBLY: usize = 8 << 20;

/// The receiving half: the rings of every connected sender.
pub(crate) struct ShmReceiver {
    /// Held by the thread receiving (`lock.rs`): `try_recv` on another thread reports
    /// `Empty` instead of waiting for it, and a `Deserialize` that receives from its own
    /// receiver gets an error.
    state: HandleLock<RecvState>,
    acceptor: Option<Acceptor<SharedMap>>,
    limit: usize,
    /// `sys::forks::generation()` when made: after a fork, drop leaves the rings' flags alone.
    fork_gen: u64,
    /// The readiness descriptor, once asked for (`readiness.rs`).
    ready: OnceLock<ReadySet>,
}

struct RecvState {
    conns: Vec<Conn>,
    next: usize,
    ever_connected: bool,
    /// Messages taken in a row without waiting (see `SLIP_AFTER`).
    behind: u32,
    /// Messages taken in readiness mode while still armed (see `try_ready`).
    armed_takes: u32,
}

/// One sender's ring, as the receiver sees it.
struct Conn {
    consumer: Mapped<Consumer>,
    /// The rendezvous connection: wake-up bytes both ways; its end means the sender is gone.
    sock: Watched,
    /// Pieces of the message being received.
    assembling: Vec<u8>,
    /// Descriptors passed ahead of the messages that name them (`attached.rs`).
    groups: Groups,
    /// The sender's connection hung up: take what it published, then drop it.
    hup: bool,
    dead: bool,
}

impl ShmReceiver {
    fn new(acceptor: Option<Acceptor<SharedMap>>, limit: usize) -> Self {
        ShmReceiver {
            state: HandleLock::new(RecvState {
                conns: Vec::new(),
                next: 0,
                ever_connected: false,
                behind: 0,
                armed_takes: 0,
            }),
            acceptor,
            limit,
            fork_gen: sys::forks::generation(),
            ready: OnceLock::new(),
        }
    }

    /// The receiver of an anonymous pair: one ring, `map`, and its connection `sock`.
    pub(crate) fn anonymous(
        sock: OwnedFd,
        map: Arc<SharedMap>,
        limit: usize,
    ) -> Result<Self, Error> {
        let mut rx = ShmReceiver::new(None, limit);
        let conn = Conn::attach(sock, map, limit)?;
        rx.state.get_mut().add(conn);
        Ok(rx)
    }

    /// Rebuilds an anonymous receiver from descriptors inherited from the parent (see
    /// `inherit.rs`): `[socket, memfd]`.
    pub(crate) fn from_inherited(fds: Vec<OwnedFd>, limit: usize) -> Result<Self, Error> {
        let (sock, map) = inherited_parts(fds, "inherited shm receiver")?;
        ShmReceiver::anonymous(sock, map, limit)
    }

    /// Moves an anonymous receiver's ring to a child process: returns duplicates of
    /// `[socket, memfd]` and the size limit. This handle then
    /// reports `Disconnected`; the ring is not closed.
    pub(crate) fn hand_off(&self) -> Result<(Vec<OwnedFd>, usize), Error> {
        let mut state = self
            .state
            .lock(Deadline::Never)
            .map_err(LockFail::into_error)?;
        let ([conn], None) = (&state.conns[..], &self.acceptor) else {
            return Err(Error::CannotShare {
                reason: "it is bound (bind in the child instead) or already handed over"
                    .to_string(),
            });
        };
        if !conn.assembling.is_empty() || !conn.groups.is_empty() {
            return Err(Error::CannotShare {
                reason: "it is part-way through a message".to_string(),
            });
        }
        let fds = dup_for_child(&conn.sock, conn.consumer.fd())?;
        // Forgotten without `close`: the ring lives on in the child.
        state.conns.clear();
        Ok((fds, self.limit))
    }

    /// Binds `shm:PATH` and starts accepting senders of `T`.
    pub(crate) fn bind<T>(addr: &str, parsed: &Address, opts: &Options) -> Result<Self, Error> {
        let mine = Hello::for_type::<T>(opts.max_message_size);
        let hook = ring_per_sender(opts.capacity.unwrap_or(DEFAULT_SHM_CAPACITY));
        let acceptor = Acceptor::bind(addr, parsed, mine, hook)?;
        Ok(ShmReceiver::new(Some(acceptor), opts.max_message_size))
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
        let mut polled = false;
        loop {
            // Taken again after each sleep, so a thread waiting for it gets its turn.
            let mut state = self.state.lock(deadline).map_err(|f| (f, deadline))?;
            let acceptor = self.acceptor.as_ref();
            if let Some(acceptor) = acceptor {
                state.accept(acceptor, self.limit);
            }
            match state.round(deadline, polled, acceptor, decode) {
                Some(result) => return result,
                None => polled = true,
            }
        }
    }
}

impl ShmReceiver {
    /// Whether the last receive armed the readiness descriptor (`ReadySet::is_armed`).
    pub(crate) fn is_armed(&self) -> bool {
        self.ready.get().is_some_and(ReadySet::is_armed)
    }

    /// The readiness descriptor (`readiness.rs`), made on first use.
    pub(crate) fn ready_fd(&self) -> io::Result<BorrowedFd<'_>> {
        let wake = self.acceptor.as_ref().map(|a| a.wake_fd().as_fd());
        readiness::ready_fd(&self.ready, wake)
    }

    /// A receive that does not wait, in readiness mode: on `Empty`, every ring is armed
    /// and looked at again, so a sender's next publish writes a wake-up byte.
    fn try_ready(&self, set: &ReadySet, decode: &mut Decode<'_>) -> Result<(), NotReceived> {
        let mut state = self
            .state
            .lock(Deadline::Now)
            .map_err(|f| NotReceived::from((f, Deadline::Now)))?;
        state.try_ready(set, self.acceptor.as_ref(), self.limit, decode)
    }
}

impl RecvState {
    /// [`ShmReceiver::try_ready`], holding the lock.
    fn try_ready(
        &mut self,
        set: &ReadySet,
        acceptor: Option<&Acceptor<SharedMap>>,
        limit: usize,
        decode: &mut Decode<'_>,
    ) -> Result<(), NotReceived> {
        if set.is_armed() {
            // Armed by the last `Empty`, so every publish since wrote a wake-up byte that
            // other waiters see: one message is taken still armed (a ping-pong never pays
            // for disarming), a second in a row means a stream, whose sender an armed ring
            // would cost a system call per publish: disarm, and kick the other waiters,
            // who now rely on looking again.
            if self.take(decode) {
                self.armed_takes += 1;
                if self.armed_takes >= 2 {
                    self.disarm(set);
                    set.kick();
                }
                return Ok(());
            }
        }
        let mut wake_others = self.disarm(set);
        let result = self.take_or_arm(set, acceptor, limit, decode, &mut wake_others);
        if wake_others && !matches!(result, Err(NotReceived::Empty)) {
            // What we took (or the end we saw) may have been another waiter's wake-up.
            set.kick();
        }
        result
    }

    /// Ends the arming of the last `Empty` (the set's flag and every ring's); true if it
    /// was armed.
    fn disarm(&mut self, set: &ReadySet) -> bool {
        self.armed_takes = 0;
        let was = set.disarm();
        if was {
            self.conns.iter().for_each(|c| c.consumer.end_wait());
        }
        was
    }

    fn take_or_arm(
        &mut self,
        set: &ReadySet,
        acceptor: Option<&Acceptor<SharedMap>>,
        limit: usize,
        decode: &mut Decode<'_>,
        wake_others: &mut bool,
    ) -> Result<(), NotReceived> {
        if let Some(acceptor) = acceptor {
            self.accept(acceptor, limit);
        }
        if self.take(decode) {
            return Ok(());
        }
        // Nothing: drain what made the descriptor readable, then arm and look again.
        *wake_others |= set.drain_kick();
        if let Some(acceptor) = acceptor {
            acceptor.clear_wake();
            self.accept(acceptor, limit);
        }
        loop {
            self.conns.iter_mut().for_each(|c| c.sock.join(set));
            // Wake-up bytes, descriptors, the end: drained before arming, so a byte a
            // sender writes for this arming is never drained unseen.
            for conn in &mut self.conns {
                conn.drain(false);
            }
            let mut idle = true;
            for conn in &mut self.conns {
                match conn.consumer.prepare_wait() {
                    Ok(true) => idle &= !conn.hup,
                    Ok(false) => idle = false,
                    Err(_) => conn.dead = true,
                }
            }
            if idle && !self.conns.iter().any(|c| c.dead) {
                if self.conns.is_empty() && self.ever_connected {
                    return Err(NotReceived::Disconnected);
                }
                self.armed_takes = 0;
                set.arm();
                return Err(NotReceived::Empty);
            }
            self.conns.iter().for_each(|c| c.consumer.end_wait());
            *wake_others |= set.disarm();
            if self.take(decode) {
                *wake_others = true;
                return Ok(());
            }
            if self.conns.is_empty() && self.ever_connected {
                return Err(NotReceived::Disconnected);
            }
        }
    }
}

impl Conn {
    /// Checks and attaches to one more sender's ring, accepting messages up to `limit`.
    fn attach(sock: OwnedFd, map: Arc<SharedMap>, limit: usize) -> Result<Conn, Error> {
        sys::set_nonblocking(&sock).map_err(|e| Error::io("configuring the connection", e))?;
        let consumer = match Mapped::new(map.clone(), |ring| Consumer::new(ring, limit)) {
            Ok(consumer) => consumer,
            Err(e) => {
                super::close_unread(&map);
                return Err(Error::io("attaching to a ring", io::Error::other(e)));
            }
        };
        Ok(Conn {
            consumer,
            sock: Watched::plain(sock),
            assembling: Vec::new(),
            groups: Groups::default(),
            hup: false,
            dead: false,
        })
    }

    /// Reads wake-ups and groups of descriptors waiting on the socket (until a group comes,
    /// with `for_a_group`); notes a sender that is gone, and drops one that sent what no
    /// sender sends.
    fn drain(&mut self, for_a_group: bool) {
        match attached::drain_socket(self.sock.as_fd(), &mut self.groups, for_a_group) {
            Ok(true) => {}
            Ok(false) => self.hup = true,
            Err(_) => self.dead = true,
        }
    }

    /// The descriptors of the marked message just taken: passed before it was published,
    /// so they are queued or waiting on the socket.
    fn next_group(&mut self) -> Option<Vec<OwnedFd>> {
        if self.groups.is_empty() {
            self.drain(true);
        }
        self.groups.pop()
    }
}

impl RecvState {
    /// Serves one more sender's ring.
    fn add(&mut self, conn: Conn) {
        self.conns.push(conn);
        self.ever_connected = true;
    }

    /// Serves the senders the acceptor has taken since we last looked. A sender whose ring
    /// cannot be attached (its peer tampered with it) is dropped alone.
    fn accept(&mut self, acceptor: &Acceptor<SharedMap>, limit: usize) {
        while let Some(accepted) = acceptor.take() {
            if let Ok(conn) = Conn::attach(accepted.fd, Arc::new(accepted.extra), limit) {
                self.add(conn);
            }
        }
    }

    /// Spins over the rings, then sleeps once: a message or a final failure, or `None`
    /// after the sleep (go round again, taking new senders first).
    #[inline]
    fn round(
        &mut self,
        deadline: Deadline,
        polled: bool,
        acceptor: Option<&Acceptor<SharedMap>>,
        decode: &mut Decode<'_>,
    ) -> Option<Result<(), NotReceived>> {
        if self.take(decode) {
            // A message was waiting: the senders are ahead of us.
            self.behind = self.behind.saturating_add(1);
            return Some(Ok(()));
        }
        if !matches!(deadline, Deadline::Now) && !self.conns.is_empty() {
            if std::mem::take(&mut self.behind) >= SLIP_AFTER {
                Self::slip();
            }
            let mut backoff = Backoff::new();
            while backoff.spin() {
                if self.take(decode) {
                    return Some(Ok(()));
                }
                if self.conns.is_empty() {
                    break;
                }
            }
        }
        if self.conns.is_empty() && self.ever_connected {
            return Some(Err(NotReceived::Disconnected));
        }
        let timeout = deadline.remaining();
        if polled && timeout.is_some_and(|t| t.is_zero()) {
            return Some(Err(deadline.recv_expired()));
        }
        match self.sleep(acceptor, timeout) {
            Ok(()) => None,
            Err(e) => Some(Err(NotReceived::Io(e))),
        }
    }

    /// Lets the senders get ahead before polling again, after a run of messages that were
    /// all waiting (FastForward's "temporal slipping", Giacomoni et al., PPoPP 2008). A
    /// receiver that caught up polls the header slot a sender is about to write; each poll
    /// takes the cache line away from the sender's core, whose stores to that line then
    /// wait for it back, and its later stores queue behind them. Pausing lets the sender
    /// fill lines the receiver is not reading, and the receiver then takes them in a batch.
    /// Only after `SLIP_AFTER` messages taken without waiting: a ping-pong never gets here
    /// (its reply is never waiting when `recv` starts), and the cost, at most `SLIP_FOR` of
    /// extra latency for a message sent just after a backlog drains, falls on streams.
    fn slip() {
        let until = Instant::now() + SLIP_FOR;
        while Instant::now() < until {
            for _ in 0..16 {
                std::hint::spin_loop();
            }
        }
    }

    /// A complete message from the rings, taken in turn; drops broken or finished rings.
    #[inline]
    fn take(&mut self, decode: &mut Decode<'_>) -> bool {
        let mut found = false;
        'conns: for i in in_turn(self.next, self.conns.len()) {
            let conn = &mut self.conns[i];
            let sock = conn.sock.as_fd();
            match conn
                .consumer
                .pop_message(&mut conn.assembling, || notify::wake(sock))
            {
                Ok(Taken::Message { attached }) => {
                    let group = if attached {
                        match conn.next_group() {
                            Some(group) => Some(group),
                            // Marked, but nothing was passed: the peer is broken or hostile.
                            None => {
                                conn.dead = true;
                                continue;
                            }
                        }
                    } else {
                        None
                    };
                    let assembling = &mut conn.assembling;
                    let (len, limit) = (assembling.len(), conn.consumer.limit());
                    let decoded = attached::decode_with(group, len, limit, || {
                        if assembling.len() >= SHARE_FROM {
                            decode_shared(assembling, decode)
                        } else {
                            decode(assembling)
                        }
                    });
                    conn.assembling.clear();
                    // Keep the buffer for the next large message, within reason.
                    if conn.assembling.capacity() > KEEP_ASSEMBLY {
                        conn.assembling = Vec::new();
                    }
                    match decoded {
                        Ok(()) => {
                            self.next = i + 1;
                            found = true;
                            break 'conns;
                        }
                        // Well framed but not a `T`: the peer is broken or hostile.
                        Err(_) => conn.dead = true,
                    }
                }
                // A dead sender's half-written message is never delivered.
                Ok(Taken::Empty) => conn.dead |= conn.hup,
                Ok(Taken::Closed) | Err(_) => conn.dead = true,
            }
        }
        drop_dead(
            &mut self.conns,
            |c| c.dead,
            |c| {
                // Let a sender sleeping on a full ring see that we are gone.
                if c.consumer.close() {
                    notify::wake(c.sock.as_fd());
                }
            },
        );
        found
    }

    /// Announces a sleep in every ring and waits for a publish, a new sender, a sender's
    /// death, or the timeout (at most `MAX_SLEEP`, see `sleep_bound`).
    fn sleep(
        &mut self,
        acceptor: Option<&Acceptor<SharedMap>>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        let mut idle = true;
        for conn in &mut self.conns {
            match conn.consumer.prepare_wait() {
                Ok(true) => {}
                Ok(false) => idle = false,
                Err(_) => conn.dead = true,
            }
        }
        let wait = if idle && !self.conns.iter().any(|c| c.dead) {
            sleep_bound(timeout)
        } else {
            Some(Duration::ZERO)
        };
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(self.conns.len() + 1);
        if let Some(a) = acceptor {
            fds.push(PollFd::new(a.wake_fd(), PollFlags::IN));
        }
        let first_sock = fds.len();
        fds.extend(
            self.conns
                .iter()
                .map(|c| PollFd::new(&c.sock, notify::READY)),
        );
        let result = sys::poll(&mut fds, wait);
        let ready: Vec<bool> = fds.iter().map(|p| !p.revents().is_empty()).collect();
        drop(fds);
        for (conn, ready) in self.conns.iter_mut().zip(&ready[first_sock..]) {
            conn.consumer.end_wait();
            // Wake-up bytes, descriptors, or the end: a sender that is gone is dropped once
            // its ring holds nothing more (see `take`).
            if *ready {
                conn.drain(false);
            }
        }
        if let (Some(a), true) = (acceptor, first_sock == 1 && ready[0]) {
            a.clear_wake();
        }
        result.map(|_| ())
    }
}

impl Drop for ShmReceiver {
    fn drop(&mut self) {
        if sys::forks::generation() != self.fork_gen {
            // Another process may still be receiving from these rings (see `sys/forks.rs`).
            return;
        }
        let state = self.state.get_mut();
        for conn in &state.conns {
            if conn.consumer.close() {
                notify::wake(conn.sock.as_fd());
            }
        }
    }
}
