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
    #[cfg(not(feature = "bincode"))]
    {
        let taken = std::mem::take(out);
        *out = postcard::to_extend(msg, taken).map_err(|e| e.to_string())?;
        Ok(())
    }
    #[cfg(feature = "bincode")]
    {
        bincode::serde::encode_into_std_write(msg, out, bincode::config::standard())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Decodes one message that must use every byte of `bytes`.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    #[cfg(not(feature = "bincode"))]
    {
        let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| e.to_string())?;
        if !rest.is_empty() {
            return Err(format!("{} trailing bytes after the message", rest.len()));
        }
        Ok(value)
    }
    #[cfg(feature = "bincode")]
    {
        let (value, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .map_err(|e| e.to_string())?;
        if used != bytes.len() {
            return Err(format!(
                "{} trailing bytes after the message",
                bytes.len() - used
            ));
        }
        Ok(value)
    }
}

/// A human-readable description of what a channel of `T` exchanges.
pub(crate) fn describe<T>() -> String {
    format!("{} encoded with {}", std::any::type_name::<T>(), CODEC)
}

/// The type fingerprint exchanged in every handshake: FNV-1a over the type's name and the
/// codec. Two programs built from the same type definitions agree; a different type or codec
/// disagrees. It is a guard against mistakes, not against an adversary.
pub(crate) fn fingerprint<T>() -> u64 {
    fnv1a(describe::<T>().as_bytes())
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
