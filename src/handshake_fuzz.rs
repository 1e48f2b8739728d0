//! The property driver `handshake` for the hello in `handshake.rs`: parsing gives the right
//! error, asks for more only on a strict prefix and accepts only what re-encodes to the same
//! bytes; the listener's answer keeps exactly the connections it should. Compiled for unit
//! tests and under `--cfg fuzzing`, where the cargo-fuzz target `handshake` calls it
//! through `conduit::fuzz`.

use crate::codec;
use crate::fuzz_support::Input;
use crate::handshake::{answer, Hello, HelloError, Status, FIXED, MAGIC, MAX_LEN, VERSION};

/// Parses the input as a hello. An error must be the right one for the bytes; "need more"
/// only for a strict prefix of a hello; an accepted hello re-encodes to exactly the bytes it
/// took, and every shorter prefix asks for more. The rest of the input describes the
/// listener's own hello: `answer` keeps the connection only for an `Ok` request with the
/// same fingerprint, and its reply parses back to itself.
pub fn handshake(data: &[u8]) {
    let parsed = Hello::parse(data);
    let magic_ok = data[..data.len().min(4)] == MAGIC[..data.len().min(4)];
    match &parsed {
        Err(HelloError::BadMagic) => assert!(!magic_ok, "good magic refused"),
        Err(HelloError::Version(v)) => {
            assert!(magic_ok && data.len() >= 6 && *v != VERSION && data[4..6] == v.to_le_bytes())
        }
        Err(HelloError::Malformed(_)) => assert!(magic_ok && data.len() >= FIXED),
        Ok(None) => assert!(
            magic_ok && data.len() < MAX_LEN,
            "need more after {} bytes",
            data.len()
        ),
        Ok(Some((hello, n))) => {
            assert!(*n <= data.len() && *n <= MAX_LEN);
            assert_eq!(
                hello.encode(),
                &data[..*n],
                "accepted bytes that do not re-encode"
            );
            for cut in 0..*n {
                assert_eq!(
                    Hello::parse(&data[..cut]),
                    Ok(None),
                    "prefix {cut} of a hello"
                );
            }
        }
    }
    let Ok(Some((request, n))) = parsed else {
        return;
    };
    let mut rest = Input::new(&data[n..]);
    let flags = rest.u8();
    let fingerprint = if flags & 1 != 0 {
        request.fingerprint
    } else {
        codec::fingerprint::<u32>() ^ u64::from(flags >> 1)
    };
    let limit = rest.u32() as usize;
    let name = String::from_utf8_lossy(rest.bytes(usize::MAX)).into_owned();
    let mine = Hello::new(Status::Ok, fingerprint, limit, &name);
    let (reply, keep) = answer(&request, &mine);
    let same = request.status == Status::Ok && request.fingerprint == mine.fingerprint;
    assert_eq!(
        keep, same,
        "answer kept a connection it should not (or refused a good one)"
    );
    let want_status = if keep {
        Status::Ok
    } else {
        Status::TypeMismatch
    };
    assert_eq!(reply.status, want_status);
    assert_eq!(
        (reply.fingerprint, reply.limit, &reply.name),
        (mine.fingerprint, mine.limit, &mine.name)
    );
    let bytes = reply.encode();
    assert_eq!(
        Hello::parse(&bytes),
        Ok(Some((reply, bytes.len()))),
        "a reply must parse"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz_support::{random_inputs, Rng};

    #[test]
    fn handshake_random_inputs() {
        for data in random_inputs(0x4e110, 5_000, 80) {
            handshake(&data);
        }
    }

    /// Real hellos, with bytes flipped and a listener's description after them, which random
    /// bytes almost never start with.
    #[test]
    fn handshake_real_hellos() {
        let mut rng = Rng::new(0xa11);
        for i in 0..2_000u64 {
            let name = "n".repeat(rng.next() as usize % 600);
            let hello = Hello::new(Status::Ok, rng.next() % 3, i as usize, &name);
            let mut data = hello.encode();
            assert_eq!(Hello::parse(&data), Ok(Some((hello, data.len()))));
            if i % 2 == 0 {
                let at = rng.next() as usize % data.len();
                data[at] ^= 1 << (rng.next() % 8);
            }
            data.extend((0..rng.next() % 12).map(|_| rng.next() as u8));
            handshake(&data);
        }
    }
}
