//! Hostile `unix:` senders passing descriptors beside their messages: each offence drops
//! that connection alone (a well-behaved sender alongside keeps being served), delivers
//! nothing made from what was passed, and leaves no descriptor or mapping behind.
//!
//! A message naming sealed buffers is a frame flagged `ATTACHED` (2) on its first piece,
//! sent with the descriptors (`SCM_RIGHTS`), each `Bytes` in it a serde pair: `(0, bytes)`
//! or `(1, (file size, offset, length))` naming the next descriptor. The raw sender here
//! writes that by hand. Passed buffers count against the receiver's size limit (64 MiB by
//! default) as their bytes would. One test in this binary, so nothing else in the process opens or
//! closes descriptors while it counts them.

mod common;
mod wire;

use std::io::{IoSlice, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use conduit::__testing::{encode, frame_header, hello_for};
use conduit::{BlobBuf, Bytes, Receiver, Sender};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use serde::{Deserialize, Serialize};
use wire::Raw;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Doc {
    id: u32,
    parts: Vec<Bytes>,
}

/// The flag on a message's first frame header that says descriptors came with it.
const ATTACHED: u8 = 2;
/// Tags of a `Bytes` in such a message.
const INLINE: u8 = 0;
const REF: u8 = 1;

/// A `Doc` whose parts are all references `(size, offset, len)`, tagged as a sender writes
/// them (a `Bytes` is a serde pair; a `Vec` its length, then its elements).
fn doc_of_refs(id: u32, refs: &[(u64, u64, u64)]) -> Vec<u8> {
    let tagged: Vec<(u8, (u64, u64, u64))> = refs.iter().map(|r| (REF, *r)).collect();
    encode(&(id, tagged))
}

/// One whole message in one frame, flagged `flags | LAST`.
fn frame(payload: &[u8], flags: u8) -> Vec<u8> {
    let mut out = frame_header(payload.len() as u32, true).to_vec();
    out[4] |= flags;
    out.extend_from_slice(payload);
    out
}

/// Writes `bytes` with `fds` attached to them.
fn send_with_fds(raw: &Raw, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    let Raw::Unix(sock) = raw else {
        unreachable!("unix only")
    };
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    let sent = rustix::net::sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .expect("sendmsg");
    assert_eq!(sent, bytes.len());
}

/// A memfd of `len` bytes with `seals`, named so its mappings can be found in
/// /proc/self/maps.
fn memfd(len: u64, seals: SealFlags) -> OwnedFd {
    let fd = rustix::fs::memfd_create(
        "hostile-blob",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    fd
}

const SEALED: SealFlags = SealFlags::WRITE
    .union(SealFlags::SHRINK)
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);
const LEN: u64 = 64 << 10;

/// What a hostile sender does after its handshake.
type Offence = fn(&Raw);

const OFFENCES: &[(&str, Offence)] = &[
    ("a blob that is not sealed", |raw| {
        let fd = memfd(LEN, SealFlags::empty());
        send_with_fds(
            raw,
            &frame(&doc_of_refs(1, &[(LEN, 0, LEN)]), ATTACHED),
            &[fd.as_fd()],
        );
    }),
    ("a blob sealed only against resizing", |raw| {
        let fd = memfd(LEN, SealFlags::SHRINK | SealFlags::GROW);
        send_with_fds(
            raw,
            &frame(&doc_of_refs(1, &[(LEN, 0, LEN)]), ATTACHED),
            &[fd.as_fd()],
        );
    }),
    (
        "a blob sealed with F_SEAL_FUTURE_WRITE instead of F_SEAL_WRITE",
        |raw| {
            let fd = memfd(
                LEN,
                SealFlags::FUTURE_WRITE | SealFlags::SHRINK | SealFlags::GROW,
            );
            send_with_fds(
                raw,
                &frame(&doc_of_refs(1, &[(LEN, 0, LEN)]), ATTACHED),
                &[fd.as_fd()],
            );
        },
    ),
    ("a blob whose size differs from the message's", |raw| {
        let fd = memfd(LEN, SEALED);
        let msg = doc_of_refs(1, &[(2 * LEN, 0, LEN)]);
        send_with_fds(raw, &frame(&msg, ATTACHED), &[fd.as_fd()]);
    }),
    ("a reference past the end of its blob", |raw| {
        let fd = memfd(LEN, SEALED);
        let msg = doc_of_refs(1, &[(LEN, 8, LEN)]);
        send_with_fds(raw, &frame(&msg, ATTACHED), &[fd.as_fd()]);
    }),
    ("a blob over the receiver's size limit", |raw| {
        // Sparse: 128 MiB of size, no memory.
        let big = 128 << 20;
        let fd = memfd(big, SEALED);
        send_with_fds(
            raw,
            &frame(&doc_of_refs(1, &[(big, 0, big)]), ATTACHED),
            &[fd.as_fd()],
        );
    }),
    ("a pipe instead of a memfd", |raw| {
        let (r, _w) = rustix::pipe::pipe().unwrap();
        send_with_fds(
            raw,
            &frame(&doc_of_refs(1, &[(LEN, 0, LEN)]), ATTACHED),
            &[r.as_fd()],
        );
    }),
    ("a marked message without descriptors", |raw| {
        let mut w = raw.try_clone();
        w.write_all(&frame(&doc_of_refs(1, &[(LEN, 0, LEN)]), ATTACHED))
            .unwrap();
    }),
    ("descriptors with an unmarked message", |raw| {
        let fd = memfd(LEN, SEALED);
        send_with_fds(
            raw,
            &frame(&encode(&(1u32, Vec::<Vec<u8>>::new())), 0),
            &[fd.as_fd()],
        );
    }),
    ("more descriptors than the message names", |raw| {
        let (a, b) = (memfd(LEN, SEALED), memfd(LEN, SEALED));
        let msg = doc_of_refs(1, &[(LEN, 0, LEN)]);
        send_with_fds(raw, &frame(&msg, ATTACHED), &[a.as_fd(), b.as_fd()]);
    }),
    ("more references than descriptors", |raw| {
        let fd = memfd(LEN, SEALED);
        let msg = doc_of_refs(1, &[(LEN, 0, LEN), (LEN, 0, LEN)]);
        send_with_fds(raw, &frame(&msg, ATTACHED), &[fd.as_fd()]);
    }),
    ("an unknown tag", |raw| {
        let fd = memfd(LEN, SEALED);
        let msg = encode(&(1u32, vec![(7u8, (LEN, 0u64, LEN))]));
        send_with_fds(raw, &frame(&msg, ATTACHED), &[fd.as_fd()]);
    }),
    ("the attached flag on a second piece", |raw| {
        let fd = memfd(LEN, SEALED);
        let msg = doc_of_refs(1, &[(LEN, 0, LEN)]);
        let (a, b) = msg.split_at(3);
        let mut bytes = frame_header(a.len() as u32, false).to_vec();
        bytes.extend_from_slice(a);
        bytes.extend(frame(b, ATTACHED));
        send_with_fds(raw, &bytes, &[fd.as_fd()]);
    }),
    ("a flood of descriptors", |raw| {
        let fd = memfd(LEN, SEALED);
        let many = vec![fd.as_fd(); 200];
        send_with_fds(
            raw,
            &frame(&doc_of_refs(1, &[(LEN, 0, LEN)]), ATTACHED),
            &many,
        );
    }),
];

/// Receives until the raw connection is closed by the receiver, collecting messages.
fn wait_dropped(rx: &Receiver<Doc>, raw: &mut Raw, what: &str, got: &mut Vec<Doc>) {
    raw.set_read_timeout(Duration::from_millis(5));
    let start = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        if let Ok(doc) = rx.recv_timeout(Duration::from_millis(2)) {
            got.push(doc);
        }
        match std::io::Read::read(raw, &mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
        assert!(
            start.elapsed() < wire::DROP_WITHIN,
            "{what}: the receiver kept the hostile connection"
        );
    }
}

/// Lines of /proc/self/maps that map a memfd this test or conduit made.
fn blob_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("hostile-blob") || l.contains("conduit-blob"))
        .count()
}

#[test]
fn hostile_descriptors_drop_only_their_connection_and_leak_nothing() {
    let fds_before = conduit::open_fd_count().unwrap();
    let addr = common::unix_addr();
    let rx = Receiver::<Doc>::bind(&addr).unwrap();
    let real = Sender::<Doc>::connect(&addr).unwrap();
    real.send(Doc {
        id: 0,
        parts: vec![],
    })
    .unwrap();
    assert_eq!(rx.recv().unwrap().id, 0);
    for (n, (what, offence)) in OFFENCES.iter().enumerate() {
        let (mut raw, reply) = wire::raw_hello(&addr, &hello_for::<Doc>(1 << 20));
        assert_eq!(reply[6], 0, "{what}: the handshake is accepted");
        offence(&raw);
        let mut got = Vec::new();
        wait_dropped(&rx, &mut raw, what, &mut got);
        // The well-behaved sender is still served, and nothing of the hostile one came.
        let id = 100 + n as u32;
        real.send(Doc {
            id,
            parts: vec![Bytes::from_static(b"ok")],
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !got.iter().any(|d| d.id == id) {
            assert!(
                Instant::now() < deadline,
                "{what}: the real sender was not served"
            );
            if let Ok(doc) = rx.recv_timeout(Duration::from_millis(10)) {
                got.push(doc);
            }
        }
        // An unmarked message is well formed in itself: it may arrive before the
        // descriptors that came with it, which no message names, drop the connection.
        let may_arrive = |d: &Doc| *what == "descriptors with an unmarked message" && d.id == 1;
        assert!(
            got.iter().all(|d| d.id == id || may_arrive(d)),
            "{what}: a hostile message was delivered: {got:?}"
        );
    }
    // A well-formed message with a real sealed buffer, by hand: delivered, and sealed.
    let (raw, _) = wire::raw_hello(&addr, &hello_for::<Doc>(1 << 20));
    let mut buf = BlobBuf::new(LEN as usize).unwrap();
    buf[..5].copy_from_slice(b"hello");
    let sealed = buf.seal().unwrap();
    let fd = memfd(LEN, SealFlags::empty());
    rustix::io::write(&fd, b"hello").unwrap();
    rustix::fs::fcntl_add_seals(&fd, SEALED).unwrap();
    let msg = encode(&(7u32, vec![(REF, (LEN, 0u64, 5u64))]));
    send_with_fds(&raw, &frame(&msg, ATTACHED), &[fd.as_fd()]);
    drop(fd);
    let doc = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((doc.id, &doc.parts[0][..]), (7, &b"hello"[..]));
    assert!(doc.parts[0].is_sealed());
    // Inline parts in a marked message are plain bytes.
    let mixed = encode(&(8u32, vec![(INLINE, serde_bytes::Bytes::new(b"inline"))]));
    let spare = memfd(LEN, SEALED);
    // A group the message does not name: this connection goes too.
    send_with_fds(&raw, &frame(&mixed, ATTACHED), &[spare.as_fd()]);
    drop((raw, spare, sealed, doc));
    drop((real, rx));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        conduit::open_fd_count().unwrap(),
        fds_before,
        "descriptors left open"
    );
    assert_eq!(blob_mappings(), 0, "sealed-buffer mappings left behind");
}
