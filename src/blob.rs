//! Sealed byte payloads ([`BlobBuf`]) and how a message carries them across processes: as
//! descriptors beside the message, not as bytes inside it.
//!
//! A sealed [`Bytes`] lies in a memfd of its own that no process can change (`sys/sealed.rs`).
//! Every such buffer alive in this process is in a registry keyed by its address, so a
//! `Bytes` (or a slice of one) can be told to be sealed without a field of its own.
//!
//! On a connection that can pass descriptors (`shm:`, `unix:`), the sender first measures a
//! large message with [`counting_sealed`] active: that walk counts the sealed `Bytes` of at
//! least [`ATTACH_FROM`] bytes. If there are any, it encodes the message with
//! [`encoding_attached`] active: then every `Bytes` is written as a tagged pair, either the
//! bytes themselves or a reference `(file size, offset, length)` to the next descriptor of
//! the message's group. The backend marks the message as having descriptors attached and
//! passes the group beside it. The receiver decodes a marked message with
//! [`decoding_attached`] active, which hands each reference the next descriptor of the
//! group; [`Sealed::open`] checks its seals and size, and the `Bytes` maps it read-only.
//! Unmarked messages, and every other backend, encode a `Bytes` as one byte string.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

use crate::bytes::{self as conduit_bytes, Bytes};
use crate::sys::sealed::{Sealed, Unsealed};
use crate::Error;

/// Sealed `Bytes` shorter than this are copied into the message like any other: passing a
/// descriptor costs a few microseconds (`sendmsg`, `fstat`, `mmap`, and the page faults of
/// a fresh mapping), a copy of 64 KiB about as much.
pub(crate) const ATTACH_FROM: usize = 64 << 10;

/// The most descriptors one connection has in flight (sent with messages the receiver has
/// not taken yet). A sender at the limit copies further sealed buffers into the message;
/// a receiver that finds more queued drops the connection. Each one in flight is a
/// descriptor the receiving process holds before the message is decoded.
pub(crate) const MAX_IN_FLIGHT: usize = 64;

/// A buffer in a shared-memory file of its own, written in place and then sealed into a
/// [`Bytes`] that no process can change any more.
///
/// A sealed `Bytes` crosses `shm:` and `unix:` connections as its file descriptor
/// (`SCM_RIGHTS`), not as bytes: the message carries a reference, the receiver checks that
/// the file is sealed against writing and resizing and is the size the message says, and
/// maps it read-only. Neither side copies the payload, and what the receiver reads can
/// never change under it, whatever the sender does afterwards (a peer cannot keep a
/// writable mapping of a sealed file). Received sealed buffers are sealed too: forwarding
/// one to another process passes the same file again.
///
/// This pays when the receiver keeps large payloads or hands them on; for a payload that is
/// read once, a plain `Bytes` through the ring is usually faster, because a fresh file's
/// pages cost more to allocate than a copy costs (`docs/performance.md`). It applies to
/// sealed `Bytes` of at least 64 KiB in a message sent over `shm:` or `unix:`; smaller ones,
/// and every other backend, carry the bytes themselves (on `thread:` the `Bytes` is moved).
/// A connection has at most 64 descriptors in flight; past that the bytes are copied.
///
/// Each sealed buffer alive holds one descriptor and one mapping until its last `Bytes`
/// (clone or slice) is dropped. Nothing is named anywhere: a crashed process leaves nothing
/// behind.
///
/// ```
/// use conduit::{channel, Backend, BlobBuf, Bytes};
///
/// let (tx, rx) = channel::<(u64, Bytes)>(Backend::Shm)?;
/// let mut frame = BlobBuf::new(1 << 20)?; // zeroed
/// frame[..4].copy_from_slice(b"RIFF"); // written in place, no copy
/// let frame: Bytes = frame.seal()?;
/// assert!(frame.is_sealed());
/// tx.send((7, frame)).unwrap(); // the descriptor goes, the megabyte stays
/// let (id, got) = rx.recv().unwrap();
/// assert_eq!((id, &got[..4], got.len()), (7, &b"RIFF"[..], 1 << 20));
/// assert!(got.is_sealed());
/// # Ok::<(), conduit::Error>(())
/// ```
pub struct BlobBuf {
    inner: Unsealed,
}

impl BlobBuf {
    /// A zeroed buffer of `len` bytes in a new memfd. Fails for `len == 0`, or when the
    /// system refuses the memory.
    pub fn new(len: usize) -> Result<BlobBuf, Error> {
        let inner = Unsealed::create(len).map_err(|e| Error::io("creating a sealed buffer", e))?;
        Ok(BlobBuf { inner })
    }

    /// Seals the buffer against every change, by any process, and returns it as a `Bytes`
    /// (no copy).
    pub fn seal(self) -> Result<Bytes, Error> {
        let sealed = self
            .inner
            .seal()
            .map_err(|e| Error::io("sealing a buffer", e))?;
        Ok(into_bytes(sealed))
    }
}

impl Deref for BlobBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.inner.as_slice()
    }
}

impl DerefMut for BlobBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.inner.as_mut_slice()
    }
}

impl fmt::Debug for BlobBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobBuf").field("len", &self.len()).finish()
    }
}

/// The sealed buffers alive in this process, by the address of their first byte.
static REGISTRY: Mutex<BTreeMap<usize, Weak<Sealed>>> = Mutex::new(BTreeMap::new());
/// How many entries `REGISTRY` holds: most processes have none, and then looking a `Bytes`
/// up costs one load.
static REGISTERED: AtomicUsize = AtomicUsize::new(0);

fn registry() -> std::sync::MutexGuard<'static, BTreeMap<usize, Weak<Sealed>>> {
    // Nothing panics while holding it; a poisoned map is still consistent.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a sealed `Bytes` owns: its mapping, registered while it lives.
struct Owner(Arc<Sealed>);

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        // Out of the registry before the mapping goes: a new mapping at the same address
        // is registered only after this one is unmapped.
        let base = self.0.as_slice().as_ptr() as usize;
        let mut map = registry();
        if map.remove(&base).is_some() {
            // Relaxed: a count, not a guard of data; the lock orders the map itself.
            REGISTERED.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Registers `sealed` and wraps it in a `Bytes` that owns it.
fn into_bytes(sealed: Sealed) -> Bytes {
    let sealed = Arc::new(sealed);
    let base = sealed.as_slice().as_ptr() as usize;
    if registry().insert(base, Arc::downgrade(&sealed)).is_none() {
        // Relaxed: see `Owner::drop`.
        REGISTERED.fetch_add(1, Ordering::Relaxed);
    }
    Bytes::from(::bytes::Bytes::from_owner(Owner(sealed)))
}

/// Whether this process holds any sealed buffer: when it holds none, no `Bytes` can be
/// passed as a descriptor and senders skip looking.
#[inline]
pub(crate) fn any_sealed() -> bool {
    // Relaxed: as in `sealed_of`.
    REGISTERED.load(Ordering::Relaxed) != 0
}

/// The sealed buffer `bytes` lies in, and its offset there, if it lies in one.
pub(crate) fn sealed_of(bytes: &[u8]) -> Option<(Arc<Sealed>, usize)> {
    // Relaxed: a thread holding a sealed `Bytes` got it after `into_bytes` counted it,
    // through whatever handed it over (a channel, a spawn), which orders the count before
    // this load; for any other `Bytes` a stale count only costs the lookup below.
    if REGISTERED.load(Ordering::Relaxed) == 0 || bytes.is_empty() {
        return None;
    }
    let at = bytes.as_ptr() as usize;
    let map = registry();
    let (&base, weak) = map.range(..=at).next_back()?;
    let sealed = weak.upgrade()?;
    let offset = at - base;
    (offset + bytes.len() <= sealed.as_slice().len()).then_some((sealed, offset))
}

/// What `Bytes` serialization does on this thread (`Plain` outside the contexts below).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendMode {
    Plain,
    Counting,
    Probing,
    Attaching,
}

thread_local! {
    static SEND_MODE: Cell<SendMode> = const { Cell::new(SendMode::Plain) };
    /// `Counting`: sealed buffers found; `Attaching`: the group being gathered.
    static GROUP: RefCell<Vec<Arc<Sealed>>> = const { RefCell::new(Vec::new()) };
    /// How many descriptors the message being encoded may take.
    static LIMIT: Cell<usize> = const { Cell::new(0) };
    static RECV_ATTACHED: Cell<bool> = const { Cell::new(false) };
    /// The received group while a marked message is decoded.
    static RECEIVED: RefCell<Received> = const { RefCell::new(Received::none()) };
}

/// The group of a marked message being decoded.
struct Received {
    fds: Vec<Option<OwnedFd>>,
    /// How many references took theirs.
    used: usize,
    /// The bytes the references may still name: the size limit less the message's own.
    budget: usize,
}

impl Received {
    const fn none() -> Received {
        Received {
            fds: Vec::new(),
            used: 0,
            budget: 0,
        }
    }
}

/// How `Bytes` serializes on this thread now.
#[inline]
pub(crate) fn send_mode() -> SendMode {
    SEND_MODE.with(Cell::get)
}

/// Whether the message being decoded on this thread has descriptors attached.
#[inline]
pub(crate) fn receiving_attached() -> bool {
    RECV_ATTACHED.with(Cell::get)
}

/// Sets `mode` and clears the group for the length of `run`, restoring both after (even
/// if `run` panics).
fn with_send_mode<R>(mode: SendMode, run: impl FnOnce() -> R) -> (R, Vec<Arc<Sealed>>) {
    struct Restore(SendMode, Vec<Arc<Sealed>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SEND_MODE.with(|m| m.set(self.0));
            let outer = std::mem::take(&mut self.1);
            GROUP.with(|g| *g.borrow_mut() = outer);
        }
    }
    let previous = SEND_MODE.with(|m| m.replace(mode));
    let outer = GROUP.with(|g| std::mem::take(&mut *g.borrow_mut()));
    let restore = Restore(previous, outer);
    let result = run();
    let group = GROUP.with(|g| std::mem::take(&mut *g.borrow_mut()));
    drop(restore);
    (result, group)
}

/// Runs `walk` (the sender's measuring walk) and returns its result with the number of
/// sealed `Bytes` it met that would travel as descriptors (at most `room`). With no room, or
/// no sealed buffer in the process, the walk runs plain: there is nothing to count.
pub(crate) fn counting_sealed<R>(room: usize, walk: impl FnOnce() -> R) -> (R, usize) {
    if room == 0 || !any_sealed() {
        return (walk(), 0);
    }
    LIMIT.with(|l| l.set(room));
    let (result, group) = with_send_mode(SendMode::Counting, walk);
    (result, group.len())
}

/// Runs `encode` (a plain encoding) so that it stops with an error at the first sealed
/// `Bytes` that could travel as a descriptor, before copying it: the result, and whether
/// that is why it stopped (then encode again with [`encoding_attached`]).
pub(crate) fn probing<R>(encode: impl FnOnce() -> R) -> (R, bool) {
    LIMIT.with(|l| l.set(MAX_IN_FLIGHT));
    let (result, group) = with_send_mode(SendMode::Probing, encode);
    (result, !group.is_empty())
}

/// Runs `encode` with sealed `Bytes` written as references (at most `room` of them) and
/// returns its result with the group of buffers to pass beside the message, in order.
pub(crate) fn encoding_attached<R>(
    room: usize,
    encode: impl FnOnce() -> R,
) -> (R, Vec<Arc<Sealed>>) {
    LIMIT.with(|l| l.set(room));
    with_send_mode(SendMode::Attaching, encode)
}

/// Takes `bytes` into the current group if it is a sealed buffer that may travel as its
/// descriptor (long enough, and the message has room for one more): the buffer, and where
/// in it `bytes` start.
fn join_group(bytes: &[u8]) -> Option<(Arc<Sealed>, usize)> {
    if bytes.len() < ATTACH_FROM {
        return None;
    }
    let (sealed, offset) = sealed_of(bytes)?;
    GROUP.with(|g| {
        let mut group = g.borrow_mut();
        (group.len() < LIMIT.with(Cell::get)).then(|| {
            group.push(sealed.clone());
            (sealed, offset)
        })
    })
}

/// A byte string, serialized as one.
struct Raw<'a>(&'a [u8]);

impl Serialize for Raw<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// The tag of a `Bytes` in a message with descriptors attached: the bytes follow.
const INLINE: u8 = 0;
/// The tag of a `Bytes` in a message with descriptors attached: `(file size, offset,
/// length)` of the group's next descriptor follows.
const ATTACHED: u8 = 1;

/// `Bytes::serialize` outside `SendMode::Plain`.
#[cold]
pub(crate) fn serialize<S: Serializer>(
    bytes: &[u8],
    mode: SendMode,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match mode {
        SendMode::Plain => serializer.serialize_bytes(bytes),
        SendMode::Counting => {
            join_group(bytes);
            serializer.serialize_bytes(bytes)
        }
        SendMode::Probing => match join_group(bytes) {
            Some(_) => Err(serde::ser::Error::custom("a sealed buffer to attach")),
            None => serializer.serialize_bytes(bytes),
        },
        SendMode::Attaching => {
            let mut pair = serializer.serialize_tuple(2)?;
            match join_group(bytes) {
                Some((sealed, offset)) => {
                    let size = sealed.as_slice().len() as u64;
                    pair.serialize_element(&ATTACHED)?;
                    pair.serialize_element(&(size, offset as u64, bytes.len() as u64))?;
                }
                None => {
                    pair.serialize_element(&INLINE)?;
                    pair.serialize_element(&Raw(bytes))?;
                }
            }
            pair.end()
        }
    }
}

/// Runs `decode` over a message that arrived marked with the descriptors `group`: each
/// reference in it takes the next one, and together they may name at most `budget` bytes
/// (the size limit less the message's own length: passed buffers count against it as their
/// bytes would). Fails if `decode` does, or if it left any descriptor unused (a peer that
/// passes what its message does not name is broken or hostile). Every descriptor not made
/// into a `Bytes` is closed.
pub(crate) fn decoding_attached(
    group: Vec<OwnedFd>,
    budget: usize,
    decode: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            RECV_ATTACHED.with(|a| a.set(false));
            RECEIVED.with(|r| *r.borrow_mut() = Received::none());
        }
    }
    let count = group.len();
    RECEIVED.with(|r| {
        *r.borrow_mut() = Received {
            fds: group.into_iter().map(Some).collect(),
            used: 0,
            budget,
        }
    });
    RECV_ATTACHED.with(|a| a.set(true));
    let _restore = Restore;
    decode()?;
    let used = RECEIVED.with(|r| r.borrow().used);
    if used != count {
        return Err(format!(
            "{count} descriptors came with a message that names {used}"
        ));
    }
    Ok(())
}

/// The next descriptor of the group being decoded, for a reference to `len` bytes.
fn next_received(len: u64) -> Result<OwnedFd, String> {
    RECEIVED.with(|r| {
        let received = &mut *r.borrow_mut();
        let fd = received
            .fds
            .get_mut(received.used)
            .and_then(Option::take)
            .ok_or("a message names more descriptors than came with it")?;
        received.used += 1;
        received.budget = usize::try_from(len)
            .ok()
            .and_then(|len| received.budget.checked_sub(len))
            .ok_or("the sealed buffers a message names take it over the size limit")?;
        Ok(fd)
    })
}

/// `Bytes::deserialize` in a message with descriptors attached: a tagged pair.
#[cold]
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    deserializer.deserialize_tuple(2, TaggedVisitor)
}

struct TaggedVisitor;

/// The bytes of an inline `Bytes`, decoded as outside this mode (sharing included).
struct Inline(Bytes);

impl<'de> Deserialize<'de> for Inline {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Inline, D::Error> {
        conduit_bytes::deserialize_plain(deserializer).map(Inline)
    }
}

impl<'de> Visitor<'de> for TaggedVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a tagged byte string or sealed-buffer reference")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let missing = || de::Error::invalid_length(0, &self);
        let tag: u8 = seq.next_element()?.ok_or_else(missing)?;
        match tag {
            INLINE => Ok(seq.next_element::<Inline>()?.ok_or_else(missing)?.0),
            ATTACHED => {
                let (size, offset, len): (u64, u64, u64) =
                    seq.next_element()?.ok_or_else(missing)?;
                let end = offset
                    .checked_add(len)
                    .filter(|&end| end <= size)
                    .ok_or_else(|| {
                        de::Error::custom(format!(
                            "bytes {offset}+{len} lie outside a sealed buffer of {size}"
                        ))
                    })?;
                let fd = next_received(len).map_err(de::Error::custom)?;
                let sealed = Sealed::open(fd, size).map_err(de::Error::custom)?;
                // Both fit in `usize`: `Sealed::open` mapped `size` bytes.
                Ok(into_bytes(sealed).slice(offset as usize..end as usize))
            }
            other => Err(de::Error::custom(format!(
                "unknown byte string tag {other}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::{channel, channel_with, Backend, Options};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Frame {
        id: u32,
        small: Bytes,
        big: Bytes,
        part: Bytes,
        note: String,
    }

    fn sealed(len: usize, fill: u8) -> Bytes {
        let mut buf = BlobBuf::new(len).unwrap();
        buf.fill(fill);
        buf[len - 1] = fill ^ 0xFF;
        buf.seal().unwrap()
    }

    /// On `shm:` and `unix:` sealed buffers of 64 KiB or more arrive sealed (passed as
    /// descriptors), smaller ones and plain ones as bytes, and the values are equal; on the
    /// other backends everything arrives as bytes.
    #[test]
    fn sealed_fields_cross_each_backend() {
        for backend in [
            Backend::Shm,
            Backend::Socket,
            Backend::Pipe,
            Backend::Thread,
        ] {
            let (tx, rx) = channel::<Frame>(backend).unwrap();
            let whole = sealed(300_000, 3);
            let frame = Frame {
                id: 7,
                small: sealed(1000, 1),
                big: sealed(1 << 20, 2),
                part: whole.slice(100_000..250_000),
                note: "end".into(),
            };
            let expected = Frame {
                id: 7,
                small: Bytes::copy_from_slice(&frame.small),
                big: Bytes::copy_from_slice(&frame.big),
                part: Bytes::copy_from_slice(&frame.part),
                note: "end".into(),
            };
            // A pipe carries the bytes: the send needs a reader.
            let sender = std::thread::spawn(move || tx.send(frame).unwrap());
            let got = rx.recv().unwrap();
            sender.join().unwrap();
            assert_eq!(got, expected, "{backend:?}");
            let passes = matches!(backend, Backend::Shm | Backend::Socket | Backend::Thread);
            assert_eq!(
                (got.big.is_sealed(), got.part.is_sealed()),
                (passes, passes),
                "{backend:?}"
            );
            assert_eq!(got.small.is_sealed(), backend == Backend::Thread);
        }
    }

    /// A shm sender whose passed descriptors the receiver has not taken yet cannot be handed
    /// to a child (which would count its own from zero); once they are taken, it can.
    #[test]
    fn a_shm_sender_with_descriptors_in_flight_is_not_handed_over() {
        let (tx, rx) = channel::<Bytes>(Backend::Shm).unwrap();
        tx.send(sealed(ATTACH_FROM, 4)).unwrap();
        let mut cmd = std::process::Command::new("true");
        match tx.share_with_child(&mut cmd, "T") {
            Err(crate::Error::CannotShare { reason }) => {
                assert!(reason.contains("sealed buffer"), "{reason}")
            }
            other => panic!("handed over with a descriptor in flight: {other:?}"),
        }
        assert!(rx.recv().unwrap().is_sealed());
        tx.share_with_child(&mut cmd, "T").unwrap();
    }

    /// On a Unix socket, a marked message right behind a large one is read partly by the
    /// read that finishes the large one's last piece (straight into its assembly, taking the
    /// next header with it): that read must take the descriptors too, or the kernel closes
    /// them and the connection drops. The receiver starts once all is in the socket, so the
    /// bytes lie back to back.
    #[test]
    fn a_marked_message_behind_a_large_one_keeps_its_descriptors() {
        let opts = Options::new().capacity(16 << 20);
        let (tx, rx) = channel_with::<Bytes>(Backend::Socket, &opts).unwrap();
        // Two pieces, buffered whole by the sender (under 128 KiB, so not streamed, which
        // would end it with an empty last piece); the second is long enough to be read
        // straight into the assembly.
        let big = Bytes::from(vec![5u8; 100_000]);
        let blob = sealed(ATTACH_FROM, 6);
        for _ in 0..4 {
            tx.send(big.clone()).unwrap();
            tx.send(blob.clone()).unwrap();
        }
        for i in 0..4 {
            assert_eq!(rx.recv().unwrap().len(), 100_000, "large message {i}");
            let got = rx.recv().unwrap();
            assert!(got.is_sealed() && got == blob, "sealed message {i}");
        }
    }

    /// `try_send` of a message with descriptors on a full Unix socket reports `Full` at
    /// once: the sender's socket is blocking, so passing them must not wait.
    #[test]
    fn try_send_with_descriptors_on_a_full_socket_does_not_wait() {
        let opts = Options::new().capacity(4096);
        let (tx, rx) = channel_with::<Bytes>(Backend::Socket, &opts).unwrap();
        let small = Bytes::from(vec![1u8; 1000]);
        while tx.try_send(small.clone()).is_ok() {}
        let (done, finished) = crossbeam_channel::bounded(1);
        let trying = std::thread::spawn(move || {
            let result = tx.try_send(sealed(ATTACH_FROM, 7));
            let _ = done.send(());
            result.is_err_and(|e| e.is_full())
        });
        let waited = finished.recv_timeout(std::time::Duration::from_secs(5));
        // Unblock a waiting sender before failing, so the test ends either way.
        drop(rx);
        assert!(waited.is_ok(), "try_send waited on a full socket");
        assert!(trying.join().unwrap(), "try_send did not report Full");
    }

    /// Past the descriptors a connection may have in flight, sealed buffers are copied, and
    /// every message still arrives whole.
    #[test]
    fn more_than_in_flight_are_copied() {
        for backend in [Backend::Shm, Backend::Socket] {
            let opts = Options::new().capacity(64 << 20);
            let (tx, rx) = channel_with::<Bytes>(backend, &opts).unwrap();
            let blob = sealed(ATTACH_FROM, 9);
            let count = 2 * MAX_IN_FLIGHT + 10;
            let sender = std::thread::spawn(move || {
                for _ in 0..count {
                    tx.send(blob.clone()).unwrap();
                }
            });
            let mut passed = 0;
            for _ in 0..count {
                let got = rx.recv().unwrap();
                assert_eq!(
                    (got.len(), got[0], got[ATTACH_FROM - 1]),
                    (ATTACH_FROM, 9, 0xF6)
                );
                passed += usize::from(got.is_sealed());
            }
            sender.join().unwrap();
            assert!(passed >= MAX_IN_FLIGHT, "{backend:?}: {passed} passed");
        }
    }
}
