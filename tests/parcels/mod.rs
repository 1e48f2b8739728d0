//! What the sealed-buffer tests send and how they look at what arrives: [`Parcel`]s of
//! inline bytes and (mostly sealed) buffers, and checks that a received buffer is sealed,
//! read-only, and the same file as another.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use conduit::{BlobBuf, Bytes};
use serde::{Deserialize, Serialize};

/// The smallest sealed buffer that travels as its descriptor (`blob::ATTACH_FROM`).
pub const ATTACH_FROM: usize = 64 << 10;
/// The descriptors a connection keeps in flight (`blob::MAX_IN_FLIGHT`).
pub const MAX_IN_FLIGHT: u64 = 64;
pub const KIB: usize = 1 << 10;
pub const MIB: usize = 1 << 20;

/// What the tests send: inline bytes, any number of (mostly sealed) buffers, a string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parcel {
    pub seq: u64,
    pub small: Bytes,
    pub blobs: Vec<Bytes>,
    pub note: String,
}

/// `crate::common::content(key, len)`, in a sealed buffer when `seal`, else in a plain `Bytes`.
pub fn buffer(key: u64, len: usize, seal: bool) -> Bytes {
    if !seal {
        return Bytes::from(crate::common::content(key, len));
    }
    let mut buf = BlobBuf::new(len).expect("BlobBuf::new");
    buf.copy_from_slice(&crate::common::content(key, len));
    let bytes = buf.seal().expect("seal");
    assert!(bytes.is_sealed(), "a buffer just sealed");
    bytes
}

/// Where the slice in the mixed parcel lies in its buffer of 300 KiB.
pub const SLICE: std::ops::Range<usize> = 4096 + 13..4096 + 13 + 100_000;

/// The 1 MiB parcel (sealed buffers when `seal`; what the receiver compares with when not).
pub fn megabyte(seal: bool) -> Parcel {
    Parcel {
        seq: 0,
        small: Bytes::from(&b""[..]),
        blobs: vec![buffer(1, MIB, seal)],
        note: String::new(),
    }
}

/// Inline bytes, a 100 KiB buffer, a slice at a non-zero offset of another, a string.
pub fn mixed(seal: bool) -> Parcel {
    Parcel {
        seq: 1,
        small: Bytes::from(crate::common::payload(10, 100)),
        blobs: vec![
            buffer(11, 100 * KIB, seal),
            buffer(12, 300 * KIB, seal).slice(SLICE),
        ],
        note: "mixed: inline, sealed, a slice, ünïcode".to_string(),
    }
}

/// Parcel `seq` of many: one buffer of 64 KiB.
pub fn single(seq: u64, seal: bool) -> Parcel {
    let blobs = vec![buffer(100 + seq, ATTACH_FROM, seal)];
    let (small, note) = (Bytes::from(vec![1; 3]), String::new());
    Parcel {
        seq,
        small,
        blobs,
        note,
    }
}

/// Message `seq` of a stream: one, two or no sealed buffers (one of them a slice), and
/// inline bytes of every size.
pub fn streamed(seq: u64, seal: bool) -> Parcel {
    let key = seq << 8;
    let blobs = match seq % 4 {
        0 => vec![buffer(key, ATTACH_FROM, seal)],
        1 => vec![
            buffer(key | 1, 100 * KIB, seal),
            buffer(key | 2, 200 * KIB, seal).slice(777..777 + 80 * KIB),
        ],
        2 => Vec::new(),
        _ => vec![
            buffer(key | 3, ATTACH_FROM, seal),
            buffer(key | 4, 1000, false),
        ],
    };
    Parcel {
        seq,
        small: Bytes::from(crate::common::payload(seq, (seq % 50) as usize)),
        blobs,
        note: format!("parcel {seq}"),
    }
}

/// Fails unless `got` is `want` (compared by content, reported briefly). Inline bytes are
/// never sealed; a buffer of 64 KiB or more may have been copied (past the descriptors in
/// flight): see [`all_sealed`].
pub fn check(got: &Parcel, want: &Parcel, what: &str) {
    assert!(
        got == want,
        "{what}: parcel {} arrived as parcel {} with buffers of {:?} bytes, expected {:?}",
        want.seq,
        got.seq,
        got.blobs.iter().map(Bytes::len).collect::<Vec<_>>(),
        want.blobs.iter().map(Bytes::len).collect::<Vec<_>>()
    );
    assert!(!got.small.is_sealed(), "{what}: inline bytes came sealed");
    for b in got.blobs.iter().filter(|b| b.len() < ATTACH_FROM) {
        assert!(!b.is_sealed(), "{what}: a buffer under 64 KiB came sealed");
    }
}

/// Fails unless every buffer of 64 KiB or more in `got` arrived sealed.
pub fn all_sealed(got: &Parcel, what: &str) {
    let sealed: Vec<bool> = got.blobs.iter().map(Bytes::is_sealed).collect();
    let want: Vec<bool> = got.blobs.iter().map(|b| b.len() >= ATTACH_FROM).collect();
    assert_eq!(sealed, want, "{what}: parcel {}: sealed buffers", got.seq);
}

// ---- what the received buffers are --------------------------------------------------------

/// The fields of the line of /proc/self/maps whose range holds `bytes`.
pub fn mapping_of(bytes: &[u8]) -> Vec<String> {
    let at = bytes.as_ptr() as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    let holds = |line: &&str| {
        let (a, b) = line.split(' ').next().unwrap().split_once('-').unwrap();
        (usize::from_str_radix(a, 16).unwrap()..usize::from_str_radix(b, 16).unwrap()).contains(&at)
    };
    let line = maps
        .lines()
        .find(holds)
        .expect("the bytes lie in a mapping");
    line.split_whitespace().map(str::to_string).collect()
}

/// The inode of the file `bytes` are mapped from.
pub fn inode_of(bytes: &[u8]) -> u64 {
    mapping_of(bytes)[4].parse().expect("an inode")
}

/// A descriptor this process holds of the file with `inode`.
pub fn fd_of_inode(inode: u64) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
        .find(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == inode))
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// A received sealed buffer can be changed by no process: its mapping is a read-only
/// (private) mapping of a conduit memfd, and the file refuses writes and resizes through a
/// descriptor opened for writing, and any new writable shared mapping.
pub fn assert_read_only(bytes: &Bytes, what: &str) {
    let map = mapping_of(bytes);
    assert_eq!(map[1], "r--p", "{what}: mapped as {map:?}");
    assert!(
        map.get(5).is_some_and(|p| p.contains("memfd:conduit-blob")),
        "{what}: not a conduit memfd: {map:?}"
    );
    let fd = fd_of_inode(map[4].parse().unwrap()).expect("a descriptor of the mapped file");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{fd}"));
    let file = file.expect("open the memfd for writing");
    let eperm = |r: std::io::Result<()>, op: &str| {
        let err = r.expect_err(&format!("{what}: {op} succeeded on a sealed buffer"));
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{what}: {op}: {err}");
    };
    eperm(file.write_all_at(b"x", 0), "write");
    eperm(file.set_len(0), "shrink");
    eperm(file.set_len(bytes.len() as u64 * 2 + 4096), "grow");
    // SAFETY: the call is expected to fail; had it succeeded, the mapping would be dropped
    // unused at once.
    let shared = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    let err = std::io::Error::last_os_error();
    assert_eq!(
        shared,
        libc::MAP_FAILED,
        "{what}: a writable shared mapping was made"
    );
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{what}: {err}");
}
