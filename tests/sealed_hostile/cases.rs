//! The cases `sealed_hostile.rs` runs: offences that must drop their connection, and odd
//! but legal senders that must be served.

use super::*;
use crate::shm_wire::{LAST, SCM_MAX_FD};

pub(crate) type Offence = fn(&mut Raw);

/// Each must make the receiver drop the connection and deliver none of its messages.
pub(crate) const BAD_DESCRIPTORS: &[(&str, Offence)] = &[
    ("an unsealed memfd", |r| {
        sealed_with(r, 1, SealFlags::empty())
    }),
    ("a memfd sealed only against resizing", |r| {
        sealed_with(r, 2, SealFlags::SHRINK | SealFlags::GROW)
    }),
    ("F_SEAL_FUTURE_WRITE instead of F_SEAL_WRITE", |r| {
        let resize = SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
        sealed_with(r, 3, SealFlags::FUTURE_WRITE | resize)
    }),
    ("a memfd that may still shrink", |r| {
        sealed_with(r, 4, SealFlags::WRITE | SealFlags::GROW)
    }),
    ("a memfd that may still grow", |r| {
        sealed_with(r, 5, SealFlags::WRITE | SealFlags::SHRINK)
    }),
    ("a memfd that does not allow sealing", |r| {
        one(
            r,
            6,
            memfd_as(&content(6, BLOB), MemfdFlags::CLOEXEC, SealFlags::empty()),
            BLOB,
        )
    }),
    ("a file larger than its reference says", |r| {
        one(r, 7, memfd(&content(7, 2 * BLOB), SEALED), BLOB)
    }),
    ("a file smaller than its reference says", |r| {
        one(r, 8, sealed(8), 2 * BLOB)
    }),
    ("a write-only descriptor of a sealed memfd", |r| {
        one(r, 9, reopen(&sealed(9), OFlags::WRONLY), BLOB)
    }),
    ("an O_PATH descriptor of a sealed memfd", |r| {
        one(r, 10, reopen(&sealed(10), OFlags::PATH), BLOB)
    }),
    ("the read end of a pipe", |r| {
        let (read, _write) = rustix::pipe::pipe().unwrap();
        one(r, 11, read, BLOB)
    }),
    ("a socket", |r| {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        one(r, 12, a.into(), BLOB)
    }),
    ("a regular file", |r| {
        let path = common::temp_dir().join("regular");
        std::fs::write(&path, content(13, BLOB)).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path);
        one(r, 13, file.unwrap().into(), BLOB)
    }),
    ("a reference past the end of its file", |r| {
        let msg = message(14, &[Wire::Ref(BLOB64, BLOB64 - 100, 200)]);
        attach(r, &[sealed(14)], &msg)
    }),
    ("a reference whose end overflows", |r| {
        let msg = message(15, &[Wire::Ref(BLOB64, u64::MAX, 2)]);
        attach(r, &[sealed(15)], &msg)
    }),
    ("a reference to a file of no bytes", |r| {
        one(r, 16, memfd(&[], SEALED), 0)
    }),
    ("an unknown tag", |r| {
        attach(r, &[sealed(17)], &message(17, &[Wire::Tag(2)]))
    }),
];

/// Each must make the receiver drop the connection and deliver none of its messages.
pub(crate) const BAD_GROUPS: &[(&str, Offence)] = &[
    ("a marked message without its group", |r| {
        // The message names no descriptor, so it would decode as it is.
        r.publish_marked(&message(20, &[]))
    }),
    (
        "a marked message naming a descriptor, without its group",
        |r| r.publish_marked(&message(21, &[whole(BLOB)])),
    ),
    ("a marked message naming more descriptors than came", |r| {
        attach(r, &[sealed(22)], &message(22, &[whole(BLOB), whole(BLOB)]))
    }),
    (
        "a group with more descriptors than its message names",
        |r| attach(r, &[sealed(23), sealed(24)], &message(23, &[whole(BLOB)])),
    ),
    ("a group whose message names none of it", |r| {
        attach(r, &[sealed(24)], &message(24, &[Wire::Inline(vec![1; 10])]))
    }),
    ("the same file twice in a group, named once", |r| {
        let fd = sealed(25);
        r.pass_fds(GROUP, &[fd.as_fd(), fd.as_fd()]);
        r.publish_marked(&message(25, &[whole(BLOB)]));
    }),
    ("a group passed with a wake-up byte", |r| {
        r.pass_fds(WAKE, &[sealed(26).as_fd()]);
        r.publish_marked(&message(26, &[whole(BLOB)]));
    }),
    ("the group byte without descriptors", |r| {
        r.pass_fds(GROUP, &[])
    }),
    ("a byte that is neither a wake-up nor a group", |r| {
        r.pass_fds(7, &[])
    }),
    ("a marker after the marker", |r| {
        r.pass_fds(GROUP, &[sealed(27).as_fd()]);
        r.publish(&[], 0);
        r.publish_marked(&message(27, &[whole(BLOB)]));
    }),
    (
        "a marked message that is not what the receiver takes",
        |r| attach(r, &[sealed(28)], &[0xff; 16]),
    ),
    ("129 descriptors ahead of their messages", |r| {
        let fd = sealed(29);
        for _ in 0..32 {
            r.pass_fds(GROUP, &[fd.as_fd(); 4]);
        }
        r.pass_fds(GROUP, &[fd.as_fd()]);
    }),
    ("groups flooding ahead of their messages", |r| {
        let fd = sealed(30);
        // The receiver may hang up part-way: what fails to go is what it refused.
        for _ in 0..40 {
            if r.try_pass_fds(GROUP, &[fd.as_fd(); 8]).is_err() {
                break;
            }
        }
    }),
    ("one group of 253 descriptors", |r| {
        let fd = sealed(31);
        r.pass_fds(GROUP, &[fd.as_fd(); SCM_MAX_FD]);
        let refs: Vec<Wire> = (0..SCM_MAX_FD).map(|_| whole(BLOB)).collect();
        r.publish_marked(&message(31, &refs));
    }),
];

pub(crate) type Legal = fn(&mut Raw, &Receiver<Blobs>);

/// Each must be served; the connection stays until the raw sender closes it.
pub(crate) const LEGAL: &[(&str, Legal)] = &[
    ("one sealed buffer", |r, rx| {
        one(r, 40, sealed(40), BLOB);
        let want = content(40, BLOB);
        let want = [(&b"inline"[..], false), (&want[..], true)];
        expect_parts(&take(rx, 40), &want, "one");
    }),
    ("a slice at an offset between inline bytes", |r, rx| {
        let parts = [
            Wire::Inline(b"abc".to_vec()),
            Wire::Ref(2 * BLOB64, 4099, 70_000),
            Wire::Inline(Vec::new()),
        ];
        attach(
            r,
            &[memfd(&content(41, 2 * BLOB), SEALED)],
            &message(41, &parts),
        );
        let want = content(41, 2 * BLOB);
        let want = [
            (&b"abc"[..], false),
            (&want[4099..74_099], true),
            (&[][..], false),
        ];
        expect_parts(&take(rx, 41), &want, "a slice");
    }),
    ("a read-only descriptor of a sealed memfd", |r, rx| {
        one(r, 42, reopen(&sealed(42), OFlags::RDONLY), BLOB);
        let want = content(42, BLOB);
        let want = [(&b"inline"[..], false), (&want[..], true)];
        expect_parts(&take(rx, 42), &want, "read-only");
    }),
    ("the same file twice in a group, named twice", |r, rx| {
        let fd = sealed(43);
        r.pass_fds(GROUP, &[fd.as_fd(), fd.as_fd()]);
        let parts = [whole(BLOB), Wire::Ref(BLOB64, 10, 20)];
        r.publish_marked(&message(43, &parts));
        let want = content(43, BLOB);
        let want = [(&want[..], true), (&want[10..30], true)];
        expect_parts(&take(rx, 43), &want, "twice");
    }),
    ("two groups ahead of their two messages", |r, rx| {
        r.pass_fds(GROUP, &[sealed(44).as_fd()]);
        r.pass_fds(GROUP, &[sealed(45).as_fd(), sealed(46).as_fd()]);
        r.publish_marked(&message(44, &[whole(BLOB)]));
        r.publish_marked(&message(45, &[whole(BLOB), whole(BLOB)]));
        let (a, b, c) = (content(44, BLOB), content(45, BLOB), content(46, BLOB));
        expect_parts(&take(rx, 44), &[(&a[..], true)], "first group");
        let want = [(&b[..], true), (&c[..], true)];
        expect_parts(&take(rx, 45), &want, "second group");
    }),
    ("128 descriptors ahead of their messages", |r, rx| {
        let fd = sealed(47);
        for _ in 0..32 {
            r.pass_fds(GROUP, &[fd.as_fd(); 4]);
        }
        // Every group read (and queued) before the first message is published.
        let deadline = Instant::now() + Duration::from_secs(10);
        while unread(r) > 0 {
            let quiet = rx.recv_timeout(Duration::from_millis(2)).is_err();
            assert!(
                quiet && Instant::now() < deadline,
                "the groups were not read"
            );
        }
        assert!(!r.hung_up(), "dropped with 128 descriptors queued");
        for i in 0..32u64 {
            let last = Wire::Ref(BLOB64, i, 1);
            r.publish_marked(&message(47, &[whole(BLOB), whole(BLOB), whole(BLOB), last]));
        }
        let want = content(47, BLOB);
        for i in 0..32 {
            let w = (&want[..], true);
            let parts = [w, w, w, (&want[i..i + 1], true)];
            expect_parts(&take(rx, 47), &parts, "one of 32 groups of 4");
        }
    }),
    (
        "a group, an unmarked message, then its marked one",
        |r, rx| {
            r.pass_fds(GROUP, &[sealed(48).as_fd()]);
            // No byte string: encoded the same whether marked or not.
            r.publish(&encode(&(HOSTILE + 48, Vec::<Bytes>::new())), LAST);
            assert!(take(rx, 48).is_empty());
            r.publish_marked(&message(49, &[whole(BLOB)]));
            let want = content(48, BLOB);
            expect_parts(&take(rx, 49), &[(&want[..], true)], "kept for its message");
        },
    ),
    ("a group, an unmarked message, then the end", |r, rx| {
        r.pass_fds(GROUP, &[sealed(50).as_fd()]);
        let plain = encode(&(HOSTILE + 50, vec![Bytes::from(vec![5u8; 9])]));
        r.publish(&plain, LAST);
        expect_parts(&take(rx, 50), &[(&[5u8; 9][..], false)], "unmarked");
        // The bench closes the connection next: the group must go with it.
    }),
];
