//! Sealed buffers (`conduit::BlobBuf`) within one process, over `shm:` and `unix:`:
//!
//! - the same buffer twice in one message, and buffers under 64 KiB (copied);
//! - a sealed buffer over `unix:`;
//! - a message with sealed buffers that a deadline cuts short: the sender keeps what it could
//!   not write and writes it before its next message, and the receiver gets the message
//!   whole, its buffers sealed, the descriptors having gone with its first bytes.
//!
//! `sealed.rs` has the cases between processes.

mod common;
mod parcels;

use std::time::Duration;

use conduit::{Bytes, Receiver, Sender};
use parcels::*;

/// Longest wait for anything that should take milliseconds.
const LONG: Duration = Duration::from_secs(30);

/// The same sealed buffer twice in one message (so its descriptor twice in one group) comes
/// out as two sealed buffers of the same file; a sealed buffer under 64 KiB is copied.
#[test]
fn the_same_buffer_twice_and_small_ones_copied() {
    let (tx, rx) = conduit::channel::<Parcel>(conduit::Backend::Shm).expect("channel");
    let blob = buffer(7, 100 * KIB, true);
    let small = buffer(8, ATTACH_FROM - 1, true);
    let p = Parcel {
        seq: 0,
        small: small.clone(),
        blobs: vec![blob.clone(), blob.slice(10..70 * KIB), blob.clone()],
        note: String::new(),
    };
    tx.send(p.clone()).expect("send");
    let got = rx.recv_timeout(LONG).expect("recv");
    assert!(got == p, "arrived whole");
    assert!(got.blobs.iter().all(Bytes::is_sealed), "each one sealed");
    assert_eq!(inode_of(&got.blobs[0]), inode_of(&got.blobs[2]), "one file");
    assert!(!got.small.is_sealed(), "under 64 KiB: copied");
}

/// A sealed buffer crosses `unix:` connections as its descriptor too.
#[test]
fn over_unix_a_sealed_buffer_arrives_sealed() {
    let addr = common::unix_addr();
    let rx = Receiver::<Parcel>::bind(&addr).expect("bind");
    let tx = Sender::<Parcel>::connect(&addr).expect("connect");
    let sending = std::thread::spawn(move || tx.send(streamed(0, true)).expect("send"));
    let got = rx.recv_timeout(LONG).expect("recv");
    sending.join().expect("the sending thread");
    check(&got, &streamed(0, false), "unix:");
    all_sealed(&got, "unix:");
}

/// A parcel far larger than a socket buffer or a 1 MiB ring: 8 MiB of inline bytes beside a
/// sealed buffer. `seal: false` gives what the receiver compares with.
fn oversized(seal: bool) -> Parcel {
    Parcel {
        seq: 0,
        small: Bytes::from(common::content(1, 8 * MIB)),
        blobs: vec![buffer(2, ATTACH_FROM, seal), buffer(3, 100 * KIB, seal)],
        note: "cut by a deadline".to_string(),
    }
}

/// Sends [`oversized`] with a short deadline while nothing reads, so only its first part
/// fits; then, on another thread, a second parcel (which must first write the first's
/// rest). Both arrive whole and in order, the first one's buffers sealed.
fn cut_by_a_deadline(addr: &str) {
    let rx = Receiver::<Parcel>::bind(addr).expect("bind");
    let tx = Sender::<Parcel>::connect(addr).expect("connect");
    // Its first bytes fit, so the message is committed: the send reports success and the
    // sender keeps the rest.
    tx.send_timeout(oversized(true), Duration::from_millis(50))
        .expect("a message whose first bytes went out counts as sent");
    let next = streamed(1, true);
    let sending = std::thread::spawn(move || tx.send(next).expect("the next send"));
    let first = rx
        .recv_timeout(LONG)
        .expect("the parcel cut by the deadline");
    check(&first, &oversized(false), addr);
    all_sealed(&first, addr);
    let second = rx.recv_timeout(LONG).expect("the parcel after it");
    check(&second, &streamed(1, false), addr);
    all_sealed(&second, addr);
    sending.join().expect("the sending thread");
}

#[test]
fn cut_by_a_deadline_over_unix_it_arrives_whole_and_sealed() {
    cut_by_a_deadline(&common::unix_addr());
}

#[test]
fn cut_by_a_deadline_over_shm_it_arrives_whole_and_sealed() {
    let addr = format!("shm:{}", common::temp_dir().join("r.sock").display());
    cut_by_a_deadline(&addr);
}
