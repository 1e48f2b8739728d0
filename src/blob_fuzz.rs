//! The property driver `blob_frame` for messages with descriptors attached (`blob.rs`,
//! `flavors/attached.rs`): the input makes a group of up to four real descriptors (memfds
//! sealed right or not, of any size, or a pipe) and the message passed with them, which is
//! decoded as the shm receiver decodes a marked message (`attached::decode_with` over
//! `codec::decode_into`). Compiled for unit tests and under `--cfg fuzzing`, where the
//! cargo-fuzz target `blob_frame` calls it through `conduit::fuzz`.
//!
//! Input: one byte picks the message type (`Bytes`, `(Bytes, Bytes, u32)`, which encodes as
//! a struct of two `Bytes` and a `u32` does, or `Vec<Bytes>`), one byte the number of
//! descriptors (0 to 4), then per descriptor its kind (one byte), its size (a `u32`, at most
//! [`MAX_SIZE`]) and a fill byte; the rest is the message.

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{MemfdFlags, SealFlags};

use crate::blob;
use crate::bytes::Bytes;
use crate::codec;
use crate::flavors::attached;
use crate::fuzz_support::{Input, Watch};

/// What a descriptor of the group is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A memfd sealed as `BlobBuf::seal` seals it.
    Sealed,
    /// Sealed against writing and resizing, but not against more seals: enough.
    SealedOpen,
    /// A memfd without seals.
    Unsealed,
    /// Sealed against resizing only.
    ResizeOnly,
    /// `F_SEAL_FUTURE_WRITE`, which leaves writable mappings made before it, instead of
    /// `F_SEAL_WRITE`.
    FutureWrite,
    /// Sealed against writing and growing, not shrinking.
    Shrinkable,
    /// A memfd made without `MFD_ALLOW_SEALING`.
    NoSealing,
    /// The read end of a pipe.
    Pipe,
}

const KINDS: [Kind; 8] = [
    Kind::Sealed,
    Kind::SealedOpen,
    Kind::Unsealed,
    Kind::ResizeOnly,
    Kind::FutureWrite,
    Kind::Shrinkable,
    Kind::NoSealing,
    Kind::Pipe,
];

impl Kind {
    /// Whether the receiver may map it as a sealed buffer.
    fn acceptable(self) -> bool {
        matches!(self, Kind::Sealed | Kind::SealedOpen)
    }

    fn seals(self) -> SealFlags {
        let resize = SealFlags::SHRINK | SealFlags::GROW;
        match self {
            Kind::Sealed => SealFlags::WRITE | resize | SealFlags::SEAL,
            Kind::SealedOpen => SealFlags::WRITE | resize,
            Kind::ResizeOnly => resize,
            Kind::FutureWrite => SealFlags::FUTURE_WRITE | resize,
            Kind::Shrinkable => SealFlags::WRITE | SealFlags::GROW,
            Kind::Unsealed | Kind::NoSealing | Kind::Pipe => SealFlags::empty(),
        }
    }
}

/// The largest file the input can ask for: 128 KiB, past `blob::ATTACH_FROM`.
const MAX_SIZE: u32 = 128 << 10;

/// The bytes of a descriptor's file of `size` bytes made with `fill`.
fn file_content(fill: u8, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| fill ^ (i as u8).wrapping_mul(31) ^ (i >> 8) as u8)
        .collect()
}

/// One descriptor of the group, as made.
struct Made {
    kind: Kind,
    content: Vec<u8>,
    /// The file's device and inode, to find it among this process's descriptors.
    id: (u64, u64),
}

fn file_id(fd: BorrowedFd<'_>) -> (u64, u64) {
    let st = rustix::fs::fstat(fd).expect("fstat a descriptor just made");
    (st.st_dev, st.st_ino)
}

/// A descriptor of `kind` holding `content` (a pipe holds nothing).
fn make(kind: Kind, content: &[u8]) -> OwnedFd {
    if kind == Kind::Pipe {
        let (read, _write) = rustix::pipe::pipe().expect("pipe");
        return read;
    }
    let flags = match kind {
        Kind::NoSealing => MemfdFlags::CLOEXEC,
        _ => MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    };
    let fd = rustix::fs::memfd_create("conduit-fuzz-blob", flags).expect("memfd_create");
    let mut written = 0;
    while written < content.len() {
        match rustix::io::write(&fd, &content[written..]) {
            Ok(n) => written += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("filling a memfd: {e}"),
        }
    }
    if !kind.seals().is_empty() {
        rustix::fs::fcntl_add_seals(&fd, kind.seals()).expect("add seals");
    }
    fd
}

/// The byte strings of a decoded message, in the order they were decoded (which is the
/// order in which they took descriptors).
trait Parts {
    fn parts(&self) -> Vec<&Bytes>;
}

impl Parts for Bytes {
    fn parts(&self) -> Vec<&Bytes> {
        vec![self]
    }
}

impl Parts for (Bytes, Bytes, u32) {
    fn parts(&self) -> Vec<&Bytes> {
        vec![&self.0, &self.1]
    }
}

impl Parts for Vec<Bytes> {
    fn parts(&self) -> Vec<&Bytes> {
        self.iter().collect()
    }
}

/// Decodes `msg` as a marked message with `group`, as the receiver does; on success checks
/// the value against the descriptors made: each sealed byte string lies in the file of a
/// later descriptor than the one before it, which the receiver may accept, is mapped whole
/// at the size it has, and holds what was written; every descriptor was taken. A reference
/// of no bytes takes a descriptor too but makes an empty byte string that keeps no file, so
/// each descriptor skipped over, or left after the last one, needs an empty byte string
/// decoded since. True when it decoded.
fn decode_checked<T: serde::de::DeserializeOwned + Parts>(
    msg: &[u8],
    group: Vec<OwnedFd>,
    made: &[Made],
) -> bool {
    let mut slot: Option<T> = None;
    let decoded = attached::decode_with(Some(group), msg.len(), usize::MAX, || {
        codec::decode_into(msg, &mut slot)
    });
    if decoded.is_err() {
        return false;
    }
    let value = slot.expect("a decode that succeeded fills its slot");
    let parts = value.parts();
    // The next descriptor, and the empty byte strings that may have taken the ones before.
    let (mut next, mut empty) = (0, 0);
    for (i, part) in parts.iter().enumerate() {
        let Some((sealed, offset)) = blob::sealed_of(part) else {
            empty += usize::from(part.is_empty());
            continue;
        };
        let id = file_id(sealed.fd());
        let at = made[next..].iter().position(|m| m.id == id);
        let at = at.unwrap_or_else(|| panic!("byte string {i} maps no later descriptor"));
        assert!(
            at <= empty,
            "descriptors skipped without empty byte strings"
        );
        empty -= at;
        let m = &made[next + at];
        assert!(
            m.kind.acceptable(),
            "a {:?} descriptor was accepted",
            m.kind
        );
        assert_eq!(sealed.as_slice().len(), m.content.len(), "mapped size");
        assert!(
            part.as_slice() == &m.content[offset..offset + part.len()],
            "byte string {i} differs from its file"
        );
        next += at + 1;
    }
    assert!(
        made.len() - next <= empty,
        "decoded with {} descriptors, the last one taken by a byte string {next}, {empty} empty",
        made.len()
    );
    true
}

/// Descriptors of this process, and lines of its maps, that refer to a file in `ids`.
fn still_open(ids: &HashSet<(u64, u64)>) -> (usize, usize) {
    let mut fds = 0;
    for entry in std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
    {
        // Another thread's descriptor may be gone by now (unit tests run in parallel).
        if let Ok(st) = rustix::fs::stat(entry.path()) {
            fds += usize::from(ids.contains(&(st.st_dev, st.st_ino)));
        }
    }
    let inodes: HashSet<String> = ids.iter().map(|(_, ino)| ino.to_string()).collect();
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    let lines = maps
        .lines()
        .filter(|l| l.contains("memfd:conduit-fuzz-blob"))
        .filter(|l| {
            l.split_whitespace()
                .nth(4)
                .is_some_and(|i| inodes.contains(i))
        })
        .count();
    (fds, lines)
}

/// Makes the group the input describes and decodes the rest of the input as a marked
/// message of the type it picks. Decoding never panics; it succeeds only when every
/// descriptor was taken by a valid reference (see `decode_checked`); afterwards no
/// descriptor or mapping of the group's files is left (and, in the fuzz target, where
/// nothing runs beside it, the process has exactly as many descriptors as before); it holds
/// no more than a bounded amount of memory.
pub fn blob_frame(data: &[u8]) {
    blob_frame_run(data);
}

/// [`blob_frame`]; true when the message decoded.
fn blob_frame_run(data: &[u8]) -> bool {
    let mut input = Input::new(data);
    let pick = input.u8() % 3;
    let count = input.u8() % 5;
    let specs: Vec<(Kind, usize, u8)> = (0..count)
        .map(|_| {
            let kind = KINDS[usize::from(input.u8()) % KINDS.len()];
            let size = (input.u32() % (MAX_SIZE + 1)) as usize;
            (kind, size, input.u8())
        })
        .collect();
    let msg = input.bytes(usize::MAX);
    #[cfg(fuzzing)]
    let fds_before = crate::sys::open_fd_count().expect("count descriptors");
    let mut made = Vec::new();
    let mut group = Vec::new();
    for (kind, size, fill) in specs {
        let content = match kind {
            Kind::Pipe => Vec::new(),
            _ => file_content(fill, size),
        };
        let fd = make(kind, &content);
        let id = file_id(fd.as_fd());
        made.push(Made { kind, content, id });
        group.push(fd);
    }
    let ids: HashSet<(u64, u64)> = made.iter().map(|m| m.id).collect();
    let watch = Watch::start();
    let decoded = match pick {
        0 => decode_checked::<Bytes>(msg, group, &made),
        1 => decode_checked::<(Bytes, Bytes, u32)>(msg, group, &made),
        _ => decode_checked::<Vec<Bytes>>(msg, group, &made),
    };
    // serde preallocates at most 1 MiB per sequence on a length it cannot trust yet; the
    // files are mapped, not allocated.
    let bound = 16 * msg.len() + (2 << 20);
    assert!(
        watch.peak() <= bound,
        "decoding held {} > {bound}",
        watch.peak()
    );
    assert_eq!(
        still_open(&ids),
        (0, 0),
        "(descriptors, mappings) of the group's files left after decoding"
    );
    #[cfg(fuzzing)]
    assert_eq!(
        crate::sys::open_fd_count().expect("count descriptors"),
        fds_before,
        "descriptors open before and after"
    );
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz_support::random_inputs;
    use serde::ser::{SerializeTuple, Serializer};
    use serde::Serialize;

    /// A byte string as a marked message carries it: inline, or a reference (file size,
    /// offset, length) to the next descriptor.
    enum Wire {
        Inline(Vec<u8>),
        Ref(u64, u64, u64),
    }

    impl Serialize for Wire {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut pair = serializer.serialize_tuple(2)?;
            match self {
                Wire::Inline(bytes) => {
                    pair.serialize_element(&0u8)?;
                    pair.serialize_element(serde_bytes::Bytes::new(bytes))?;
                }
                Wire::Ref(size, offset, len) => {
                    pair.serialize_element(&1u8)?;
                    pair.serialize_element(&(size, offset, len))?;
                }
            }
            pair.end()
        }
    }

    /// A driver input: the type, the descriptors (kind index, size, fill), the message.
    fn input(pick: u8, fds: &[(Kind, u32, u8)], msg: &[u8]) -> Vec<u8> {
        let mut data = vec![pick, fds.len() as u8];
        for &(kind, size, fill) in fds {
            data.push(KINDS.iter().position(|&k| k == kind).unwrap() as u8);
            data.extend_from_slice(&size.to_le_bytes());
            data.push(fill);
        }
        data.extend_from_slice(msg);
        data
    }

    fn encode<T: Serialize>(value: &T) -> Vec<u8> {
        crate::__testing::encode(value)
    }

    /// Valid inputs of each type, named: what the seeds are made of.
    fn valid() -> Vec<(&'static str, Vec<u8>)> {
        use Wire::{Inline, Ref};
        let sealed = |size, fill| (Kind::Sealed, size, fill);
        vec![
            (
                "bytes-inline",
                input(0, &[], &encode(&Inline(b"hello".to_vec()))),
            ),
            (
                "bytes-ref",
                input(0, &[sealed(4096, 1)], &encode(&Ref(4096, 0, 4096))),
            ),
            (
                "bytes-slice",
                input(0, &[sealed(70_000, 2)], &encode(&Ref(70_000, 1234, 5000))),
            ),
            (
                "pair",
                input(
                    1,
                    &[sealed(1000, 3), (Kind::SealedOpen, 300, 4)],
                    &encode(&(Ref(1000, 0, 1000), Ref(300, 7, 9), 0xdead_beefu32)),
                ),
            ),
            (
                "pair-inline-and-ref",
                input(
                    1,
                    &[sealed(65_536, 5)],
                    &encode(&(Inline(vec![9; 40]), Ref(65_536, 65_535, 1), 7u32)),
                ),
            ),
            (
                "vec",
                input(
                    2,
                    &[sealed(100, 6), sealed(200, 7), sealed(100, 6)],
                    &encode(&vec![
                        Ref(100, 0, 100),
                        Inline(Vec::new()),
                        Ref(200, 50, 50),
                        Inline(vec![1, 2, 3]),
                        Ref(100, 99, 1),
                    ]),
                ),
            ),
            (
                "vec-empty-ref",
                input(2, &[sealed(10, 8)], &encode(&vec![Ref(10, 4, 0)])),
            ),
            (
                "vec-empty-ref-between",
                input(
                    2,
                    &[sealed(100, 9), (Kind::SealedOpen, 200, 10), sealed(300, 11)],
                    &encode(&vec![Ref(100, 0, 100), Ref(200, 0, 0), Ref(300, 1, 2)]),
                ),
            ),
            ("vec-none", input(2, &[], &encode(&Vec::<Wire>::new()))),
        ]
    }

    /// The ways a valid input stops being one: a descriptor of each kind the receiver must
    /// refuse, of another size, missing, one too many; the message cut short.
    fn broken(data: &[u8]) -> Vec<Vec<u8>> {
        let count = usize::from(data[1]);
        let at = |i: usize| 2 + 6 * i;
        let mut out = Vec::new();
        for i in 0..count {
            for (k, kind) in KINDS.iter().enumerate() {
                if !kind.acceptable() {
                    let mut d = data.to_vec();
                    d[at(i)] = k as u8;
                    out.push(d);
                }
            }
            for delta in [1i64, -1] {
                let mut d = data.to_vec();
                let size = u32::from_le_bytes(d[at(i) + 1..at(i) + 5].try_into().unwrap());
                let size = (i64::from(size) + delta).max(0) as u32;
                d[at(i) + 1..at(i) + 5].copy_from_slice(&size.to_le_bytes());
                out.push(d);
            }
        }
        if count > 0 {
            let mut fewer = data.to_vec();
            fewer[1] -= 1;
            fewer.drain(at(count - 1)..at(count));
            out.push(fewer);
        }
        if count < 4 {
            let mut more = data.to_vec();
            more[1] += 1;
            more.splice(
                at(count)..at(count),
                input(0, &[(Kind::Sealed, 64, 1)], &[])[2..].to_vec(),
            );
            out.push(more);
        }
        out
    }

    #[test]
    fn blob_frame_random_inputs() {
        for data in random_inputs(0xb10b, 3_000, 48) {
            blob_frame(&data);
        }
    }

    /// Real encodings decode, and each way of breaking them makes the decode fail.
    #[test]
    fn blob_frame_real_encodings() {
        for (name, data) in valid() {
            assert!(blob_frame_run(&data), "{name} did not decode");
            for (i, bad) in broken(&data).into_iter().enumerate() {
                assert!(!blob_frame_run(&bad), "{name}: broken variant {i} decoded");
            }
            let header = 2 + 6 * usize::from(data[1]);
            for cut in header..data.len() {
                assert!(
                    !blob_frame_run(&data[..cut]),
                    "{name}: cut at {cut} decoded"
                );
            }
        }
    }

    /// What the sender writes (`blob::encoding_attached`, sealed buffers from `BlobBuf`) is
    /// what this driver's inputs hold: the same bytes as `Wire` gives, decoded here.
    #[test]
    fn blob_frame_reads_what_the_sender_writes() {
        let mut buf = crate::BlobBuf::new(70_000).unwrap();
        buf[5] = 1;
        let big = buf.seal().unwrap();
        let small = Bytes::from(vec![3u8; 20]);
        let value = vec![small.clone(), big.slice(100..70_000), big.clone()];
        let (encoded, group) = blob::encoding_attached(usize::MAX, || {
            let mut out = Vec::new();
            codec::encode_into(&value, &mut out).map(|()| out)
        });
        let encoded = encoded.unwrap();
        assert_eq!(
            group.len(),
            2,
            "both references to the sealed buffer attached"
        );
        let wire = vec![
            Wire::Inline(vec![3; 20]),
            Wire::Ref(70_000, 100, 69_900),
            Wire::Ref(70_000, 0, 70_000),
        ];
        assert_eq!(encoded, encode(&wire), "the sender's encoding");
        let fds = [(Kind::Sealed, 70_000, 0); 2];
        assert!(blob_frame_run(&input(2, &fds, &encoded)));
    }

    /// The seeds in `fuzz/corpus/blob_frame/` are this generator's valid inputs and one
    /// broken variant of each (postcard encodings: with bincode, they decode as garbage,
    /// which the driver also takes). `CONDUIT_WRITE_SEEDS=1` writes them.
    #[cfg(not(feature = "bincode"))]
    #[test]
    fn blob_frame_seeds_are_the_generators() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/blob_frame");
        let mut seeds = Vec::new();
        for (name, data) in valid() {
            let bad = broken(&data).into_iter().next();
            seeds.push((format!("seed-ok-{name}"), data));
            if let Some(bad) = bad {
                seeds.push((format!("seed-bad-{name}"), bad));
            }
        }
        if std::env::var_os("CONDUIT_WRITE_SEEDS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            for (name, data) in &seeds {
                std::fs::write(dir.join(name), data).unwrap();
            }
        }
        for (name, data) in &seeds {
            let committed = std::fs::read(dir.join(name)).unwrap_or_default();
            assert!(committed == *data, "fuzz/corpus/blob_frame/{name} is stale");
            assert_eq!(blob_frame_run(data), name.starts_with("seed-ok-"), "{name}");
        }
    }
}
