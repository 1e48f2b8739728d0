//! `zenoh:KEY` channels on the Eclipse zenoh engine (feature `zenoh`).
//!
//! - `session.rs`: the process's one zenoh session and its configuration.
//! - `send.rs`: the sender: handshake, credit window, publication, the goodbye on drop.
//! - `recv.rs`: the receiver: liveliness, handshakes, the incoming queue, credit.
//! - `ready.rs`: the readiness descriptors of both halves (`AsFd`, `Select`, `tokio`).
//!
//! This file holds what both halves agree on: the keys below `KEY` and the bytes on them.
//!
//! Keys, for a channel at `KEY`:
//!
//! ```text
//! KEY/rx/<id>   liveliness token of the bound receiver (a second bind sees it: AddrInUse)
//! KEY/tx/<id>   liveliness token of each connected sender (its loss ends that sender)
//! KEY/hello     the receiver's queryable: a sender's hello (type check) and goodbye
//! KEY/m         every sender's publications, its id as the attachment (kind in the last
//!               byte): its messages, and "hungry" when out of credit
//! KEY/c/<id>    the receiver's credit for that sender: total cost it has taken so far
//!               (or one byte: that sender was dropped for what it sent)
//! ```
//!
//! Flow control is conduit's, not the engine's: a sender may have `window` bytes of cost
//! in flight (a message costs its encoded length plus [`OVERHEAD`]; one message is always
//! allowed when nothing is in flight, so any message up to the size limit goes through).
//! The receiver reports what it has taken once a quarter of the window has been taken, or
//! at once when the sender said it is hungry. So the engine's own queues never fill behind
//! a slow receiver, and its callbacks never block: the receiver's queue holds at most one
//! window (or one message) per sender.
//!
//! All senders publish on the one key `KEY/m` and say who they are in the attachment: the
//! receiver's subscription is then a plain key, which the engine routes from a cached
//! route. A wildcard (`KEY/m/*`, one key per sender) made it match the key against its
//! routing tables for every publication: 8-byte messages streamed at about a fifth of the
//! engine's rate between two processes.

mod ready;
pub(crate) mod recv;
pub(crate) mod send;
pub(crate) mod session;

use std::time::Duration;

use crate::handshake::{Hello, HelloError};

/// What a credited message costs beyond its bytes, so that a window also bounds how many
/// small messages are in flight.
pub(crate) const OVERHEAD: u64 = 64;

/// The last byte of a publication on `KEY/m`: `[encoded message][DATA]`.
pub(crate) const DATA: u8 = 0;
/// A sender out of credit asks for it (publication with no body).
pub(crate) const HUNGRY: u8 = 1;

/// The one byte on `KEY/c/<id>` that says the receiver dropped sender `id` (for a
/// malformed, oversized or undecodable message); credit reports are 8 bytes.
pub(crate) const DISMISSED: u8 = 0xff;

/// The first byte of a query on `KEY/hello`.
pub(crate) const OP_HELLO: u8 = 0;
/// The last clone of a sender is gone; its messages were all published before this.
pub(crate) const OP_BYE: u8 = 1;

/// How long a sender looks for a receiver before `connect` reports `NotFound`: long
/// enough for a new process to join the others and see their declarations.
pub(crate) const FIND_RECEIVER: Duration = Duration::from_secs(2);
/// How long one hello or goodbye query waits for its answer.
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The credit key for sender `id`.
pub(crate) fn credit_key(key: &str, id: &str) -> String {
    format!("{key}/c/{id}")
}

/// The last chunk of a key: the id in `KEY/tx/<id>`, `KEY/rx/<id>`.
pub(crate) fn last_chunk(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// `[op][id_len u8][id][rest]`: a query on `KEY/hello`.
pub(crate) fn query_bytes(op: u8, id: &str, rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + id.len() + rest.len());
    out.push(op);
    out.push(id.len() as u8);
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(rest);
    out
}

/// Splits a query into its op, id and rest; `None` when malformed.
pub(crate) fn parse_query(bytes: &[u8]) -> Option<(u8, &str, &[u8])> {
    let (&op, rest) = bytes.split_first()?;
    let (&len, rest) = rest.split_first()?;
    let len = usize::from(len);
    if rest.len() < len || len == 0 {
        return None;
    }
    let id = std::str::from_utf8(&rest[..len]).ok()?;
    if id.contains(['/', '*', '$', '?', '#']) {
        return None;
    }
    Some((op, id, &rest[len..]))
}

/// The receiver's answer to a hello: `[window u64][id_len u8][id][hello]`.
pub(crate) fn answer_bytes(window: u64, id: &str, hello: &Hello) -> Vec<u8> {
    let mut out = window.to_le_bytes().to_vec();
    out.push(id.len() as u8);
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(&hello.encode());
    out
}

/// Parses an answer: the window, the receiver's id and its hello.
pub(crate) fn parse_answer(bytes: &[u8]) -> Result<(u64, String, Hello), HelloError> {
    let malformed = HelloError::Malformed("short answer");
    if bytes.len() < 9 {
        return Err(malformed);
    }
    let window = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let len = usize::from(bytes[8]);
    let rest = &bytes[9..];
    if rest.len() < len {
        return Err(malformed);
    }
    let id = std::str::from_utf8(&rest[..len])
        .map_err(|_| HelloError::Malformed("receiver id is not UTF-8"))?;
    match Hello::parse(&rest[len..])? {
        Some((hello, _)) => Ok((window, id.to_string(), hello)),
        None => Err(malformed),
    }
}

/// An id unique among every session and channel: the session's zenoh id and a counter.
pub(crate) fn fresh_id(session: &zenoh::Session) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    // Only uniqueness matters: no other memory is published through this counter.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", session.zid(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A zenoh error as the `io::Error` conduit's errors carry.
pub(crate) fn io_error(e: zenoh::Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::Status;

    #[test]
    fn queries_round_trip_and_refuse_garbage() {
        let q = query_bytes(OP_HELLO, "abc-1", b"rest");
        assert_eq!(parse_query(&q), Some((OP_HELLO, "abc-1", &b"rest"[..])));
        for bad in [&b""[..], b"\0", b"\0\x05abc", b"\0\0", b"\0\x01/"] {
            assert_eq!(parse_query(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn answers_round_trip_and_refuse_garbage() {
        let hello = Hello::new(Status::Ok, 7, 1024, "u8");
        let bytes = answer_bytes(99, "rx-1", &hello);
        assert_eq!(parse_answer(&bytes), Ok((99, "rx-1".to_string(), hello)));
        for cut in 0..bytes.len() {
            assert!(parse_answer(&bytes[..cut]).is_err(), "cut {cut}");
        }
    }
}
