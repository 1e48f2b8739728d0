//! serde ⇄ bytes. postcard by default; the `bincode` feature switches to bincode 2 (serde mode).
//!
//! The codec never sees more bytes than the size limit: the framing layer refuses longer
//! messages before allocating for them, and decoding works on a borrowed slice.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The codec's name, part of every type fingerprint so two builds with different codecs
/// refuse each other at connect time.
#[cfg(not(feature = "bincode"))]
pub(crate) const CODEC: &str = "postcard-1";
/// The codec's name, part of every type fingerprint.
#[cfg(feature = "bincode")]
pub(crate) const CODEC: &str = "bincode-2";

/// Appends the encoding of `msg` to `out`.
pub(crate) fn encode_into<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), String> {
    encode_small(msg, out, usize::MAX).map(|_| ())
}

/// [`encode_into`] for messages expected to be small: gives up, with `Ok(false)` and `out`
/// holding part of the encoding, once a byte string or a long string would take `out` past
/// `cap` bytes. (Other data may still take it past: the check sits only where long runs of
/// bytes are copied.) A message that gave up is encoded again with [`encode_to`].
#[inline]
pub(crate) fn encode_small<T: Serialize>(
    msg: &T,
    out: &mut Vec<u8>,
    cap: usize,
) -> Result<bool, String> {
    #[cfg(not(feature = "bincode"))]
    {
        match postcard::serialize_with_flavor(msg, AppendTo { out, cap }) {
            Ok(()) => Ok(true),
            // `AppendTo` fails only this way, and only at the cap.
            Err(postcard::Error::SerializeBufferFull) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }
    #[cfg(feature = "bincode")]
    {
        let mut capped = Capped { out, cap };
        match bincode::serde::encode_into_writer(msg, &mut capped, bincode::config::standard()) {
            Ok(()) => Ok(true),
            Err(bincode::error::EncodeError::Other(OVER_CAP)) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Where [`encode_to`] puts an encoding, in runs of bytes as the encoder produces them.
pub(crate) trait Sink {
    /// Takes the next bytes of the encoding; `false` stops the encoding (the sink knows why).
    fn put(&mut self, bytes: &[u8]) -> bool;
}

/// Why [`encode_to`] did not finish.
#[derive(Debug)]
pub(crate) enum SinkStop {
    /// The sink refused bytes.
    Stopped,
    /// `Serialize` failed.
    Failed(String),
}

/// Encodes `msg` into `sink`.
pub(crate) fn encode_to<T: Serialize>(msg: &T, sink: &mut impl Sink) -> Result<(), SinkStop> {
    #[cfg(not(feature = "bincode"))]
    {
        match postcard::serialize_with_flavor(msg, ToSink(sink)) {
            Ok(()) => Ok(()),
            Err(postcard::Error::SerializeBufferFull) => Err(SinkStop::Stopped),
            Err(e) => Err(SinkStop::Failed(e.to_string())),
        }
    }
    #[cfg(feature = "bincode")]
    {
        match bincode::serde::encode_into_writer(msg, ToSink(sink), bincode::config::standard()) {
            Ok(()) => Ok(()),
            Err(bincode::error::EncodeError::Other(OVER_CAP)) => Err(SinkStop::Stopped),
            Err(e) => Err(SinkStop::Failed(e.to_string())),
        }
    }
}

/// The length of `msg`'s encoding, from a walk that copies nothing.
pub(crate) fn encoded_size<T: Serialize>(msg: &T) -> Result<usize, String> {
    #[cfg(not(feature = "bincode"))]
    {
        postcard::experimental::serialized_size(msg).map_err(|e| e.to_string())
    }
    #[cfg(feature = "bincode")]
    {
        let mut size = bincode::enc::write::SizeWriter::default();
        bincode::serde::encode_into_writer(msg, &mut size, bincode::config::standard())
            .map_err(|e| e.to_string())?;
        Ok(size.bytes_written)
    }
}

/// The error our bincode writers give to stop an encoding.
#[cfg(feature = "bincode")]
const OVER_CAP: &str = "conduit: stop";

/// bincode's output for [`encode_small`].
#[cfg(feature = "bincode")]
struct Capped<'a> {
    out: &'a mut Vec<u8>,
    cap: usize,
}

#[cfg(feature = "bincode")]
impl bincode::enc::write::Writer for Capped<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        if bytes.len() > SMALL && self.out.len() + bytes.len() > self.cap {
            return Err(bincode::error::EncodeError::Other(OVER_CAP));
        }
        self.out.extend_from_slice(bytes);
        Ok(())
    }
}

/// An encoder's output into a [`Sink`].
struct ToSink<'a, S>(&'a mut S);

#[cfg(feature = "bincode")]
impl<S: Sink> bincode::enc::write::Writer for ToSink<'_, S> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        if self.0.put(bytes) {
            Ok(())
        } else {
            Err(bincode::error::EncodeError::Other(OVER_CAP))
        }
    }
}

#[cfg(not(feature = "bincode"))]
impl<S: Sink> postcard::ser_flavors::Flavor for ToSink<'_, S> {
    type Output = ();

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if self.0.put(data) {
            Ok(())
        } else {
            Err(postcard::Error::SerializeBufferFull)
        }
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.try_extend(&[data])
    }

    #[inline]
    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// A postcard output that appends to a borrowed buffer. postcard's own `to_extend` takes the
/// buffer by value and hands it back: the `Vec` was copied through several layers with
/// loads that store forwarding could not serve, and each waited for the sender's earlier
/// stores, those of the previous frame into the ring, to leave the core (`perf annotate`:
/// up to 30% of an 8-byte sender, depending on inlining).
#[cfg(not(feature = "bincode"))]
struct AppendTo<'a> {
    out: &'a mut Vec<u8>,
    /// See [`encode_small`].
    cap: usize,
}

/// Slices up to this long are appended byte by byte (see `AppendTo::try_extend`), and never
/// checked against the cap of [`encode_small`].
const SMALL: usize = 16;

#[cfg(not(feature = "bincode"))]
impl postcard::ser_flavors::Flavor for AppendTo<'_> {
    type Output = ();

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() <= SMALL {
            // A varint or a short string, byte by byte: `memcpy` reads its source (bytes the
            // encoder has just stored one by one) in wider loads that store forwarding
            // cannot serve, and they wait for the sender's earlier stores to leave the core,
            // as above (~7% of the 8-byte sender, `perf`).
            self.out.reserve(data.len());
            for &byte in data {
                self.out.push(byte);
            }
        } else {
            if self.out.len() + data.len() > self.cap {
                return Err(postcard::Error::SerializeBufferFull);
            }
            self.out.extend_from_slice(data);
        }
        Ok(())
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.out.push(data);
        Ok(())
    }

    #[inline]
    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Decodes one message that must use every byte of `bytes`.
#[cfg_attr(not(any(test, fuzzing)), allow(dead_code))]
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut slot = None;
    decode_into(bytes, &mut slot)?;
    slot.ok_or_else(|| "the decoder produced nothing".to_string())
}

/// Decodes one message that must use every byte of `bytes` into `slot`.
///
/// The receive paths hand this down as a closure over the caller's slot and report only
/// success or failure back up: a value returned through each layer (decode, ring, lock,
/// flavor, channel) was copied at every one, ~50 ns per 64-byte message (`perf annotate`:
/// unaligned moves of a `[u8; 64]` behind one-byte enum tags, which store forwarding
/// cannot serve).
pub(crate) fn decode_into<T: DeserializeOwned>(
    bytes: &[u8],
    slot: &mut Option<T>,
) -> Result<(), String> {
    #[cfg(not(feature = "bincode"))]
    {
        // `Deserializer` rather than `take_from_bytes`, which returns the value in a tuple in
        // a `Result`: one copy more of it.
        let mut de = postcard::Deserializer::from_bytes(bytes);
        *slot = Some(T::deserialize(&mut de).map_err(|e| e.to_string())?);
        let rest = de.finalize().map_err(|e| e.to_string())?;
        if !rest.is_empty() {
            *slot = None;
            return Err(format!("{} trailing bytes after the message", rest.len()));
        }
        Ok(())
    }
    #[cfg(feature = "bincode")]
    {
        // bincode reserves a container's announced length before reading it; without a
        // limit, a peer's few bytes announcing 2^64 of them panic ("capacity overflow") or
        // reserve that much. The limit bounds what one message may make us reserve.
        let config = bincode::config::standard().with_limit::<BINCODE_DECODE_LIMIT>();
        let (value, used) =
            bincode::serde::decode_from_slice(bytes, config).map_err(|e| e.to_string())?;
        if used != bytes.len() {
            return Err(format!(
                "{} trailing bytes after the message",
                bytes.len() - used
            ));
        }
        *slot = Some(value);
        Ok(())
    }
}

/// The most one bincode message may make the decoder reserve for its strings, byte strings
/// and sequences (`len * size_of::<T>()` each) plus the bytes it reads: 1 GiB, far above
/// any message under the default size limit, and no announced length can overflow it.
#[cfg(feature = "bincode")]
const BINCODE_DECODE_LIMIT: usize = 1 << 30;

/// What the receive paths call with each complete message: decode it into the caller's
/// slot (see [`decode_into`]).
pub(crate) type Decode<'a> = dyn FnMut(&[u8]) -> Result<(), String> + 'a;

/// A human-readable description of what a channel of `T` exchanges.
pub(crate) fn describe<T>() -> String {
    describe_with::<T>(CODEC)
}

/// What a channel of `T` exchanges in a build whose codec is `codec`.
pub(crate) fn describe_with<T>(codec: &str) -> String {
    format!("{} encoded with {codec}", std::any::type_name::<T>())
}

/// The type fingerprint exchanged in every handshake: FNV-1a over the type's name and the
/// codec. Two programs built from the same type definitions agree; a different type or codec
/// disagrees. It is a guard against mistakes, not against an adversary.
pub(crate) fn fingerprint<T>() -> u64 {
    fingerprint_of(&describe::<T>())
}

/// The fingerprint of a description made by [`describe_with`].
pub(crate) fn fingerprint_of(description: &str) -> u64 {
    fnv1a(description.as_bytes())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_trailing_bytes() {
        let mut buf = vec![9, 9];
        encode_into(&(7u32, String::from("hi")), &mut buf).unwrap();
        assert_eq!(&buf[..2], &[9, 9]);
        let back: (u32, String) = decode(&buf[2..]).unwrap();
        assert_eq!(back, (7, "hi".to_string()));
        buf.push(0);
        assert!(decode::<(u32, String)>(&buf[2..]).is_err());
        assert!(decode::<(u32, String)>(&[]).is_err());
    }

    #[test]
    fn fingerprints_differ_by_type() {
        assert_eq!(fingerprint::<u32>(), fingerprint::<u32>());
        assert_ne!(fingerprint::<u32>(), fingerprint::<u64>());
        assert!(describe::<u8>().starts_with("u8 encoded with "));
    }
}
