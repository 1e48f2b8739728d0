//! Shared-memory flavor: one SPSC ring (`crate::ring`) per connected sender, in a sealed
//! memfd mapping the receiver creates and passes with `SCM_RIGHTS`; the rendezvous
//! connection kept open to carry wake-up bytes and to notice a peer's death.
//!
//! - `mod.rs` (here): setting rings up ([`Mapped`], the acceptor's per-connection hook,
//!   rings received from a peer or a parent) and anonymous pairs.
//! - `send.rs`: the sending half: pieces, committed tails, waiting for space, hand-off.
//! - `recv.rs`: the receiving half: the fair scan over rings, spinning, sleeping, liveness.

use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::flavors::acceptor::Hook;
use crate::flavors::NotSent;
use crate::ring::core::{Ring, RingError};
use crate::ring::header::{self, HEADER_SIZE};
use crate::sys;
use crate::sys::memfd::SharedMap;
use crate::{Error, Options, DEFAULT_SHM_CAPACITY};

mod direct;
mod recv;
mod send;

pub(crate) use recv::ShmReceiver;
#[cfg(feature = "tokio")]
pub(crate) use send::RoomArm;
pub(crate) use send::ShmSender;

/// The longest single sleep: a bound on how long a wake-up lost to a dead or stuck peer
/// could ever cost.
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// The environment variable that lifts `MAX_SLEEP` (test-only, undocumented for users): the
/// wake-up tests set it in their child processes, so a lost wake-up hangs until the test's
/// deadline instead of costing 100 ms that no test would notice.
const UNCAPPED_SLEEP_ENV: &str = "CONDUIT_TEST_UNCAPPED_SLEEP";

/// How long one sleep may last with `remaining` left before the caller's deadline (`None`:
/// no deadline; the result `None`: sleep until woken).
fn sleep_bound(remaining: Option<Duration>) -> Option<Duration> {
    static UNCAPPED: OnceLock<bool> = OnceLock::new();
    if *UNCAPPED.get_or_init(|| std::env::var_os(UNCAPPED_SLEEP_ENV).is_some()) {
        return remaining;
    }
    Some(remaining.map_or(MAX_SLEEP, |d| d.min(MAX_SLEEP)))
}

/// A ring the receiver's side broke (bad positions in shared memory): the connection is done.
impl From<RingError> for NotSent {
    fn from(_: RingError) -> NotSent {
        NotSent::Disconnected
    }
}

/// One side of a ring (a `Producer` or a `Consumer`) together with the mapping it points
/// into. The only way to make a side is [`Mapped::new`], and `side` is declared before
/// `map`, so the mapping always outlives the view.
pub(crate) struct Mapped<S> {
    side: S,
    map: Arc<SharedMap>,
}

impl<S> Mapped<S> {
    /// Checks the ring in `map` and makes one side of it with `make`.
    pub(crate) fn new(
        map: Arc<SharedMap>,
        make: impl FnOnce(Ring) -> Result<S, RingError>,
    ) -> Result<Self, RingError> {
        let ring = ring_over(&map)?;
        ring.validate()?;
        let side = make(ring)?;
        Ok(Mapped { side, map })
    }

    /// The ring's memfd, to duplicate for a child process.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.map.fd()
    }
}

impl<S> Deref for Mapped<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.side
    }
}

impl<S> DerefMut for Mapped<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.side
    }
}

/// A `Ring` view of a mapping; callers keep the mapping alive as long as the view.
fn ring_over(map: &SharedMap) -> Result<Ring, RingError> {
    let base = NonNull::new(map.as_ptr()).ok_or(RingError::Corrupted("a null mapping"))?;
    // SAFETY: the mapping is page-aligned, `map.len()` bytes long and readable and writable;
    // the view lives in a `Mapped` with an Arc of the mapping, dropped after it, or (in
    // `create_ring`, `close_unread`) only within the caller's borrow of the mapping.
    unsafe { Ring::from_mapping(base, map.len()) }
}

/// Creates, sizes, seals, maps and initialises a ring of at least `capacity` bytes.
fn create_ring(capacity: usize) -> io::Result<SharedMap> {
    let capacity = header::capacity_for(capacity);
    let map = SharedMap::create("conduit-ring", HEADER_SIZE + capacity)?;
    ring_over(&map)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
        .init();
    Ok(map)
}

/// Tells the producer of a ring we will not read that nobody will (it may have written
/// before we refused it).
fn close_unread(map: &SharedMap) {
    if let Ok(ring) = ring_over(map) {
        ring.close_as_consumer();
    }
}

/// The acceptor's hook for a bound `shm:` receiver: a fresh ring of `capacity` bytes per
/// sender, kept by the receiver, its memfd passed to the sender with the handshake's answer.
pub(crate) fn ring_per_sender(capacity: usize) -> Hook<SharedMap> {
    Box::new(move || {
        let map = create_ring(capacity)?;
        let passed = map.fd().try_clone_to_owned()?;
        Ok((map, vec![passed]))
    })
}

/// Creates an anonymous pair: one ring, and a socketpair for wake-ups and liveness.
pub(crate) fn pair(opts: &Options) -> Result<(ShmSender, ShmReceiver), Error> {
    let io_err = |e| Error::io("creating a shared-memory channel", e);
    let (a, b) = std::os::unix::net::UnixStream::pair().map_err(io_err)?;
    let map = create_ring(opts.capacity.unwrap_or(DEFAULT_SHM_CAPACITY)).map_err(io_err)?;
    let map = Arc::new(map);
    let tx = ShmSender::from_parts(map.clone(), OwnedFd::from(a), opts.max_message_size)?;
    let rx = ShmReceiver::anonymous(OwnedFd::from(b), map, opts.max_message_size)?;
    Ok((tx, rx))
}

/// Splits the descriptors an inherited shm end arrives with (`[socket, memfd]`, see
/// `inherit.rs`) into the socket and the checked ring.
fn inherited_parts(fds: Vec<OwnedFd>, what: &str) -> Result<(OwnedFd, Arc<SharedMap>), Error> {
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

/// Duplicates of a connection's socket and ring, for a child process: `[socket, memfd]`.
fn dup_for_child(sock: &OwnedFd, ring: BorrowedFd<'_>) -> Result<Vec<OwnedFd>, Error> {
    let dup = |fd: BorrowedFd<'_>| {
        fd.try_clone_to_owned()
            .map_err(|e| Error::io("duplicating a descriptor for the child", e))
    };
    Ok(vec![dup(sock.as_fd())?, dup(ring)?])
}

/// Checks the size of a ring received from a peer and maps it.
fn open_peer_ring(memfd: OwnedFd) -> Result<Arc<SharedMap>, String> {
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
