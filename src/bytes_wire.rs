//! How a [`Bytes`] is encoded: one byte string, or, in a message that carries sealed
//! buffers' descriptors (`blob.rs`), a tagged pair naming either the bytes or a descriptor.
//! Apart from `bytes.rs` so that the byte type does not depend on the sealed buffers, which
//! depend on it.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::blob::{self, SendMode};
use crate::bytes::{deserialize_plain, Bytes};

impl Bytes {
    /// True when these bytes lie in a sealed buffer ([`BlobBuf::seal`](crate::BlobBuf::seal),
    /// or received as one): no process can change them, and across `shm:` and `unix:` they
    /// travel as a descriptor, not as bytes.
    pub fn is_sealed(&self) -> bool {
        blob::sealed_of(self).is_some()
    }
}

/// One byte string: `serialize_bytes`. (A sealed buffer in a message sent over `shm:` or
/// `unix:` may instead travel as its descriptor: see [`BlobBuf`](crate::BlobBuf).)
impl Serialize for Bytes {
    #[inline]
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match blob::send_mode() {
            SendMode::Plain => serializer.serialize_bytes(self),
            mode => blob::serialize(self, mode, serializer),
        }
    }
}

/// From a byte string (borrowed, transient or owned: an owned one is taken without a copy)
/// or from a sequence of bytes, as a self-describing format may write one. A borrowed byte
/// string inside a received message's buffer shares that buffer (see `decode_sharing`).
impl<'de> Deserialize<'de> for Bytes {
    #[inline]
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        if blob::receiving_attached() {
            return blob::deserialize(deserializer);
        }
        deserialize_plain(deserializer)
    }
}
