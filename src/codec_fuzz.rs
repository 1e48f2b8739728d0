//! The property driver `codec` for `codec.rs`: whatever decodes re-encodes to no more bytes
//! and decodes back to an equal value, within bounded memory. Compiled for unit tests and
//! under `--cfg fuzzing`, where the cargo-fuzz target `codec` calls it through
//! `conduit::fuzz`.

use crate::codec;
use crate::fuzz_support::{pick_limit, Watch};

/// A struct with nested options, vectors and an enum, as serde sees it (a tuple is encoded
/// like a struct; `Result` is an enum with two newtype variants).
type Nested = (
    Option<u32>,
    Vec<(Option<Vec<u8>>, bool)>,
    Result<u16, (i64, String)>,
    Option<Option<char>>,
);

/// Checks the round trip of whatever `bytes` decode to; true when they decode.
fn round_trip<T>(bytes: &[u8]) -> bool
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let Ok(value) = codec::decode::<T>(bytes) else {
        return false;
    };
    let mut again = Vec::new();
    codec::encode_into(&value, &mut again).expect("a decoded value encodes");
    assert!(
        again.len() <= bytes.len(),
        "re-encoding grew from {} to {} bytes",
        bytes.len(),
        again.len()
    );
    let back: T = codec::decode(&again).expect("a re-encoded value decodes");
    assert_eq!(back, value, "decode(encode(v)) != v");
    true
}

/// Decodes the input as one of a handful of message types (picked by the first byte), with
/// the size limit applied first as the framing would. Whatever decodes re-encodes to no more
/// bytes and decodes to an equal value; decoding holds no more than a bounded amount.
pub fn codec(data: &[u8]) {
    codec_run(data);
}

/// [`codec`]; true when the message decoded (for the tests that check what they reach).
fn codec_run(data: &[u8]) -> bool {
    let Some((&pick, bytes)) = data.split_first() else {
        return false;
    };
    let limit = pick_limit(pick >> 3);
    if bytes.len() > limit {
        return false;
    }
    let watch = Watch::start();
    let decoded = match pick % 6 {
        0 => round_trip::<u64>(bytes),
        1 => round_trip::<String>(bytes),
        2 => round_trip::<Vec<u8>>(bytes),
        3 => round_trip::<Nested>(bytes),
        4 => round_trip::<(u32, String)>(bytes),
        _ => round_trip::<Vec<Vec<u16>>>(bytes),
    };
    // serde preallocates at most 1 MiB per sequence on a length it cannot trust yet.
    let bound = 16 * bytes.len() + (2 << 20);
    assert!(
        watch.peak() <= bound,
        "decoding held {} > {bound}",
        watch.peak()
    );
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz_support::random_inputs;

    /// With either codec (CI runs the tests with `--features bincode` too). One of these
    /// inputs is a `(u32, String)` whose string announces about 2^64 bytes, which bincode
    /// without a decode limit turned into a "capacity overflow" panic.
    #[test]
    fn codec_random_inputs() {
        for data in random_inputs(0xc0dec, 20_000, 64) {
            codec(&data);
        }
    }

    /// Real encodings of each message type, whole and cut short, which random bytes rarely
    /// are: each must round-trip.
    #[test]
    fn codec_real_encodings() {
        let mut values: Vec<(u8, Vec<u8>)> = vec![
            (0, crate::__testing::encode(&u64::MAX)),
            (1, crate::__testing::encode(&"héllo".to_string())),
            (2, crate::__testing::encode(&vec![7u8; 300])),
            (4, crate::__testing::encode(&(9u32, "x".to_string()))),
            (5, crate::__testing::encode(&vec![vec![1u16, 2], vec![]])),
        ];
        let nested: Nested = (
            Some(3),
            vec![(Some(vec![1, 2]), true), (None, false)],
            Err((-5, "e".into())),
            Some(Some('ß')),
        );
        values.push((3, crate::__testing::encode(&nested)));
        for (kind, bytes) in values {
            // The pick byte: `kind` for the type (its value mod 6), the largest limit
            // (`usize::MAX`, its bits 3 to 5 all set).
            let pick = (56..64).find(|p| p % 6 == kind).unwrap();
            for cut in 0..=bytes.len() {
                let mut data = vec![pick];
                data.extend_from_slice(&bytes[..cut]);
                let decoded = codec_run(&data);
                assert!(decoded || cut < bytes.len(), "type {kind} did not decode");
            }
        }
    }
}
