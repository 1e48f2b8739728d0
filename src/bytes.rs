//! [`Bytes`]: the byte payload type, encoded as one byte string.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::{Deref, RangeBounds};

use serde::de::{self, Deserializer, SeqAccess, Visitor};

#[cfg(doc)]
use crate::BlobBuf;

/// An immutable, cheaply cloned byte buffer, serialized as one byte string.
///
/// serde encodes a `Vec<u8>` element by element: one call into the codec per byte, on both
/// sides. A `Bytes`, alone or as a field of any `#[derive(Serialize, Deserialize)]` type,
/// is encoded with one `serialize_bytes` call (a length, then the bytes in one copy) and
/// decoded with one copy. On postcard and bincode both encodings are the same bytes on the
/// wire; only the time differs (the `shm-vec` and `unix-vec` rows of `examples/compare`: a
/// 1 MiB `Vec<u8>` takes several times as long as a 1 MiB `Bytes`).
///
/// On [`Backend::Thread`](crate::Backend::Thread) a `Bytes` is moved like any message: the
/// receiver gets the very buffer that was sent. Across processes it is encoded, and the
/// receiver gets a buffer of its own. In a received message of 64 KiB or more, every `Bytes`
/// of 1 KiB or more is a share of the one buffer the message arrived in (no copy after the
/// one out of the ring or the socket), so keeping any of them keeps that whole buffer
/// alive: to keep a small part of a large message for long, copy it
/// ([`Bytes::copy_from_slice`]).
///
/// It wraps a [`bytes::Bytes`] (the `bytes` crate's type, also used by tokio and hyper):
/// clones and [`slice`](Bytes::slice)s share one reference-counted buffer, [`from_static`]
/// does not allocate, and a uniquely owned buffer turns back into a `Vec<u8>` without a
/// copy. `From` converts both ways between the two types. Comparisons, ordering and hashing
/// are those of `[u8]`, so a `HashMap<Bytes, _>` can be looked up with a `&[u8]`.
///
/// [`from_static`]: Bytes::from_static
///
/// ```
/// use conduit::{channel, Backend, Bytes};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Frame {
///     id: u64,
///     pixels: Bytes, // one length and one copy, not one codec call per byte
/// }
///
/// let (tx, rx) = channel::<Frame>(Backend::Socket)?;
/// let pixels = Bytes::from(vec![7u8; 64 << 10]);
/// tx.send(Frame { id: 1, pixels: pixels.clone() }).unwrap(); // the clone shares the buffer
/// let frame = rx.recv().unwrap();
/// assert_eq!(frame.pixels, pixels);
/// assert_eq!(&frame.pixels[..2], &[7, 7]);
///
/// let head = frame.pixels.slice(..16); // shares the buffer, no copy
/// assert_eq!(head.len(), 16);
/// let owned: Vec<u8> = frame.pixels.into(); // copies here: `head` still shares the buffer
/// assert_eq!(owned.len(), 64 << 10);
/// # Ok::<(), conduit::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct Bytes(::bytes::Bytes);

impl Bytes {
    /// An empty buffer; does not allocate.
    pub const fn new() -> Bytes {
        Bytes(::bytes::Bytes::new())
    }

    /// A buffer over static bytes; does not allocate or copy.
    pub const fn from_static(bytes: &'static [u8]) -> Bytes {
        Bytes(::bytes::Bytes::from_static(bytes))
    }

    /// A buffer holding a copy of `bytes`.
    pub fn copy_from_slice(bytes: &[u8]) -> Bytes {
        // Through an exact-size box: `From<Vec<u8>>` would first check for spare capacity.
        Bytes(::bytes::Bytes::from(Box::<[u8]>::from(bytes)))
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes in `range`, sharing this buffer (no copy).
    ///
    /// # Panics
    ///
    /// When the range is out of bounds or its start is past its end, as slicing a `[u8]`
    /// would.
    pub fn slice(&self, range: impl RangeBounds<usize>) -> Bytes {
        Bytes(self.0.slice(range))
    }

    /// The bytes as a slice.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Borrow<[u8]> for Bytes {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Bytes {
    /// As `bytes::Bytes` prints: `b"text\x00\xff"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

// Equality, order and hash are those of `[u8]`, as `Borrow<[u8]>` requires.
impl PartialEq for Bytes {
    fn eq(&self, other: &Bytes) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Bytes {}

impl PartialOrd for Bytes {
    fn partial_cmp(&self, other: &Bytes) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bytes {
    fn cmp(&self, other: &Bytes) -> std::cmp::Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl Hash for Bytes {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl PartialEq<[u8]> for Bytes {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_slice() == other
    }
}

impl PartialEq<&[u8]> for Bytes {
    fn eq(&self, other: &&[u8]) -> bool {
        self.as_slice() == *other
    }
}

impl<const N: usize> PartialEq<[u8; N]> for Bytes {
    fn eq(&self, other: &[u8; N]) -> bool {
        self.as_slice() == other
    }
}

impl PartialEq<Vec<u8>> for Bytes {
    fn eq(&self, other: &Vec<u8>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl PartialEq<Bytes> for [u8] {
    fn eq(&self, other: &Bytes) -> bool {
        self == other.as_slice()
    }
}

impl PartialEq<Bytes> for Vec<u8> {
    fn eq(&self, other: &Bytes) -> bool {
        self.as_slice() == other.as_slice()
    }
}

/// Takes the vector's buffer; no copy.
impl From<Vec<u8>> for Bytes {
    fn from(vec: Vec<u8>) -> Bytes {
        Bytes(vec.into())
    }
}

/// Takes the box's buffer; no copy.
impl From<Box<[u8]>> for Bytes {
    fn from(boxed: Box<[u8]>) -> Bytes {
        Bytes(boxed.into())
    }
}

/// Takes the string's buffer; no copy.
impl From<String> for Bytes {
    fn from(string: String) -> Bytes {
        Bytes(string.into())
    }
}

/// As [`Bytes::from_static`].
impl From<&'static [u8]> for Bytes {
    fn from(bytes: &'static [u8]) -> Bytes {
        Bytes::from_static(bytes)
    }
}

/// As [`Bytes::from_static`].
impl From<&'static str> for Bytes {
    fn from(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }
}

/// No copy.
impl From<::bytes::Bytes> for Bytes {
    fn from(bytes: ::bytes::Bytes) -> Bytes {
        Bytes(bytes)
    }
}

/// No copy.
impl From<Bytes> for ::bytes::Bytes {
    fn from(bytes: Bytes) -> ::bytes::Bytes {
        bytes.0
    }
}

/// Without a copy when this `Bytes` is the only owner of a buffer it took from a `Vec<u8>`,
/// a `Box<[u8]>` or a `String` and covers it whole; otherwise the bytes are copied.
impl From<Bytes> for Vec<u8> {
    fn from(bytes: Bytes) -> Vec<u8> {
        bytes.0.into()
    }
}

impl FromIterator<u8> for Bytes {
    fn from_iter<I: IntoIterator<Item = u8>>(iter: I) -> Bytes {
        Vec::from_iter(iter).into()
    }
}

impl<'a> IntoIterator for &'a Bytes {
    type Item = &'a u8;
    type IntoIter = std::slice::Iter<'a, u8>;

    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

/// A `Bytes` from one byte string.
#[inline]
pub(crate) fn deserialize_plain<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Bytes, D::Error> {
    // `deserialize_bytes`: decoders of a slice (postcard, bincode) then hand out a borrowed
    // byte string, which may be shared instead of copied.
    deserializer.deserialize_bytes(BytesVisitor)
}

thread_local! {
    /// The buffer of the message this thread is decoding, while [`decode_sharing`] runs.
    static DECODING: RefCell<Option<::bytes::Bytes>> = const { RefCell::new(None) };
}

/// Runs `decode` over a received message's buffer `buf` (the receiver's own copy, which no
/// peer can change): a [`Bytes`] decoded from a byte string inside it shares `buf` instead
/// of copying the bytes. The receive paths use it for large messages, whose buffer they then
/// give up; small ones are decoded from a reused buffer and copied.
pub(crate) fn decode_sharing<R>(buf: &::bytes::Bytes, decode: impl FnOnce(&[u8]) -> R) -> R {
    /// Puts back whatever was there, even if `decode` panics.
    struct Restore(Option<::bytes::Bytes>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            DECODING.with(|d| *d.borrow_mut() = previous);
        }
    }
    let _restore = Restore(DECODING.with(|d| d.replace(Some(buf.clone()))));
    decode(buf)
}

/// Byte strings shorter than this are copied even from a buffer they could share: the copy
/// costs less than looking the buffer up.
const LOOKUP_FROM: usize = 1024;

/// `bytes` as a share of the buffer being decoded, if it lies inside it.
#[inline]
fn shared(bytes: &[u8]) -> Option<Bytes> {
    if bytes.len() < LOOKUP_FROM {
        return None;
    }
    shared_slow(bytes)
}

#[cold]
fn shared_slow(bytes: &[u8]) -> Option<Bytes> {
    DECODING.with(|d| {
        let decoding = d.borrow();
        let buf = decoding.as_ref()?;
        let start = buf.as_ptr() as usize;
        let at = bytes.as_ptr() as usize;
        let inside =
            at >= start && at - start <= buf.len() && bytes.len() <= buf.len() - (at - start);
        inside.then(|| Bytes(buf.slice_ref(bytes)))
    })
}

struct BytesVisitor;

/// The most a sequence's announced length may make the visitor reserve in advance: the
/// length comes from the peer, the bytes may never follow.
const SEQ_PREALLOC_MAX: usize = 64 << 10;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(bytes))
    }

    fn visit_borrowed_bytes<E: de::Error>(self, bytes: &'de [u8]) -> Result<Bytes, E> {
        Ok(shared(bytes).unwrap_or_else(|| Bytes::copy_from_slice(bytes)))
    }

    fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(bytes))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let hint = seq.size_hint().unwrap_or(0).min(SEQ_PREALLOC_MAX);
        let mut out = Vec::with_capacity(hint);
        while let Some(byte) = seq.next_element::<u8>()? {
            out.push(byte);
        }
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use serde::{Deserialize, Serialize};

    use super::Bytes;
    use crate::codec::{decode, encode_into, fingerprint};

    fn encode<T: Serialize>(value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(value, &mut out).expect("encodable");
        out
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 131 % 251) as u8).collect()
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct WithBytes {
        id: u32,
        body: Bytes,
        tail: String,
    }

    #[derive(Serialize, Deserialize)]
    struct WithSerdeBytes {
        id: u32,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
        tail: String,
    }

    #[derive(Serialize, Deserialize)]
    struct WithVec {
        id: u32,
        body: Vec<u8>,
        tail: String,
    }

    /// The codec's bytes for a `Bytes` are serde_bytes' bytes, alone and as a field; both
    /// decode as either type.
    #[test]
    fn encoding_is_serde_bytes() {
        for len in [0, 1, 127, 128, 300, 70_000] {
            let data = sample(len);
            let ours = encode(&Bytes::from(data.clone()));
            assert_eq!(ours, encode(&serde_bytes::Bytes::new(&data)), "len {len}");
            assert_eq!(decode::<Bytes>(&ours).unwrap(), data);
            let back: serde_bytes::ByteBuf = decode(&ours).unwrap();
            assert_eq!(back.into_vec(), data);

            let field = WithBytes {
                id: 9,
                body: Bytes::from(data.clone()),
                tail: "end".into(),
            };
            let theirs = WithSerdeBytes {
                id: 9,
                body: data.clone(),
                tail: "end".into(),
            };
            assert_eq!(encode(&field), encode(&theirs), "field, len {len}");
            assert_eq!(decode::<WithBytes>(&encode(&theirs)).unwrap(), field);
        }
    }

    /// postcard and bincode write a byte string and a sequence of `u8` as the same bytes (a
    /// length, then one byte each), so the wire does not change, only the work: one
    /// `serialize_bytes` call against one call per byte. What tells the types apart is the
    /// handshake's fingerprint, which names the type.
    #[test]
    fn encoding_matches_vec_on_the_wire_but_not_the_fingerprint() {
        for len in [0, 5, 200, 70_000] {
            let data = sample(len);
            let ours = encode(&Bytes::from(data.clone()));
            assert_eq!(ours, encode(&data), "len {len}");
            // A sequence of bytes decodes as a `Bytes` (visit_seq is reached only by
            // self-describing formats; here the visitor gets the byte string).
            assert_eq!(decode::<Bytes>(&encode(&data)).unwrap(), data);
            let field = WithVec {
                id: 1,
                body: data.clone(),
                tail: String::new(),
            };
            assert_eq!(decode::<WithBytes>(&encode(&field)).unwrap().body, data);
        }
        assert_ne!(fingerprint::<Bytes>(), fingerprint::<Vec<u8>>());
        assert_ne!(fingerprint::<WithBytes>(), fingerprint::<WithVec>());
    }

    /// A byte string's announced length past the bytes that follow is an error, not an
    /// allocation of that length.
    #[test]
    fn truncated_input_is_an_error() {
        let full = encode(&Bytes::from(sample(1000)));
        for cut in [0, 1, 2, 500, full.len() - 1] {
            assert!(decode::<Bytes>(&full[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// `visit_seq`, as a self-describing format reaches it: a JSON array of numbers.
    #[test]
    fn decodes_a_sequence_of_bytes() {
        let bytes: Bytes = serde_json::from_str("[1, 2, 255]").unwrap();
        assert_eq!(bytes, [1u8, 2, 255]);
        assert!(serde_json::from_str::<Bytes>("[1, 256]").is_err());
        let empty: Bytes = serde_json::from_str("[]").unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn conversions_and_slice_semantics() {
        let v = sample(1000);
        let ptr = v.as_ptr();
        let b = Bytes::from(v);
        assert_eq!(b.as_ptr(), ptr);
        assert_eq!(b.len(), 1000);
        assert!(!b.is_empty() && Bytes::new().is_empty() && Bytes::default().is_empty());

        // From a Vec and back, uniquely owned: the same buffer, no copy.
        let owned = sample(4096);
        let at = owned.as_ptr();
        let round: Vec<u8> = Bytes::from(owned).into();
        assert_eq!(round.as_ptr(), at);
        // Shared: a copy, and the other owner keeps its bytes.
        let shared = Bytes::from(sample(4096));
        let other = shared.clone();
        assert_eq!(other.as_ptr(), shared.as_ptr());
        let copied: Vec<u8> = shared.into();
        assert_ne!(copied.as_ptr(), other.as_ptr());
        assert_eq!(copied, other);

        // Slices share the buffer.
        let b = Bytes::from(sample(100));
        let s = b.slice(10..20);
        assert_eq!(s, b[10..20]);
        assert_eq!(s.as_ptr(), b[10..].as_ptr());
        assert_eq!(b.slice(..), b);
        assert!(b.slice(100..).is_empty());

        const STATIC: Bytes = Bytes::from_static(b"static");
        assert_eq!(STATIC, *b"static");
        assert_eq!(Bytes::from(&b"abc"[..]), b"abc"[..]);
        assert_eq!(Bytes::from("text"), b"text"[..]);
        assert_eq!(Bytes::from(String::from("σ")), "σ".as_bytes());
        assert_eq!(Bytes::from(vec![1u8, 2].into_boxed_slice()), vec![1u8, 2]);
        assert_eq!(Bytes::copy_from_slice(&[3, 4]), [3u8, 4]);
        assert_eq!((0..3u8).collect::<Bytes>(), [0u8, 1, 2]);
        assert_eq!(format!("{:?}", Bytes::from_static(b"a\0")), "b\"a\\0\"");
        assert_eq!((&Bytes::from_static(b"xy")).into_iter().count(), 2);
    }

    #[test]
    fn order_equality_and_hash_are_those_of_slices() {
        let words = [&b"b"[..], b"", b"ab", b"a", b"ba"];
        let set: BTreeSet<Bytes> = words.iter().map(|w| Bytes::copy_from_slice(w)).collect();
        let mut sorted = words.to_vec();
        sorted.sort();
        assert!(set.iter().map(Bytes::as_slice).eq(sorted));

        let mut map = HashMap::new();
        map.insert(Bytes::from(b"key".to_vec()), 1);
        assert_eq!(map.get(&b"key"[..]), Some(&1));
        assert_eq!(Bytes::from_static(b"key"), Bytes::from(b"key".to_vec()));
    }

    #[test]
    fn bytes_crate_interop() {
        let theirs = ::bytes::Bytes::from(sample(64));
        let ours = Bytes::from(theirs.clone());
        assert_eq!(ours.as_ptr(), theirs.as_ptr());
        let back: ::bytes::Bytes = ours.into();
        assert_eq!(back.as_ptr(), theirs.as_ptr());
    }
}
