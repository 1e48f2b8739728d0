//! Hostile `shm:` senders that pass descriptors beside their messages (sealed buffers,
//! `conduit::BlobBuf`). A raw sender (`shm_wire::Raw`) does the handshake by hand, passes
//! descriptors on the connection (`sendmsg`, `SCM_RIGHTS`) and publishes messages whose
//! `Bytes` are tagged as a sender with descriptors attached writes them: `(0, bytes)`
//! inline, or `(1, (file size, offset, length))` naming the group's next descriptor.
//!
//! What no sender passes makes the receiver drop that connection alone (close the
//! rendezvous socket, mark its side of the ring closed) and deliver nothing of it: files
//! without the write and size seals, of another size than named, descriptors that are not
//! memfds, references outside their file, unknown tags, marked messages without their group,
//! groups with more descriptors than named, the group byte without descriptors or
//! descriptors without it, and more than 128 descriptors waiting ahead of their messages.
//! What is odd but legal is served: a read-only descriptor of a sealed file, the same file
//! twice in a group when the message names it twice, 128 descriptors ahead of their
//! messages, and a group that arrives ahead of an unmarked message (a real sender's group
//! may be read before the unmarked messages ahead of its own): that message is delivered,
//! the group waits for the next marked message, and if none comes it is closed with the
//! connection.
//!
//! Each control differs from the offences only where they offend, so a drop is the check
//! refusing, not an encoding the test got wrong. After every case a well-behaved `Sender`,
//! itself passing a sealed buffer, is served, and the process holds exactly the
//! descriptors and memfd mappings it held before. The cases run in a child process (this
//! test binary re-run as `hostile_child`), so tests in parallel cannot disturb the counts.

#[path = "sealed_hostile/cases.rs"]
mod cases;
mod common;
mod shm_wire;

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use cases::{Legal, Offence, BAD_DESCRIPTORS, BAD_GROUPS, LEGAL};
use conduit::__testing::encode;
use conduit::{BlobBuf, Bytes, Options, Receiver, Sender};
use rustix::fs::{MemfdFlags, Mode, OFlags, SealFlags};
use serde::ser::{SerializeTuple, Serializer};
use serde::Serialize;
use shm_wire::{Raw, DROP_WITHIN, GROUP, HOSTILE, WAKE};

const ENTRY: &str = "hostile_child";
const CHILD_LIMIT: Duration = Duration::from_secs(90);
/// How long counts may take to return once a connection is gone.
const SETTLE: Duration = Duration::from_secs(3);
/// A buffer size that travels as a descriptor.
const BLOB: usize = 64 << 10;
const BLOB64: u64 = BLOB as u64;

/// What the receiver takes: an id and byte strings.
type Blobs = (u32, Vec<Bytes>);

/// A `Bytes` as a message with descriptors attached writes it.
enum Wire {
    Inline(Vec<u8>),
    /// (file size, offset, length).
    Ref(u64, u64, u64),
    /// A tag no sender writes, before a reference.
    Tag(u8),
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
            Wire::Tag(tag) => {
                pair.serialize_element(tag)?;
                pair.serialize_element(&(BLOB64, 0u64, BLOB64))?;
            }
        }
        pair.end()
    }
}

/// A reference to the whole of a file of `size` bytes.
fn whole(size: usize) -> Wire {
    Wire::Ref(size as u64, 0, size as u64)
}

/// Hostile message `HOSTILE + id` whose byte strings are `parts`.
fn message(id: u32, parts: &[Wire]) -> Vec<u8> {
    encode(&(HOSTILE + id, parts))
}

const SEALED: SealFlags = SealFlags::WRITE
    .union(SealFlags::SHRINK)
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// Content for file `key`.
fn content(key: u64, len: usize) -> Vec<u8> {
    common::content(key, len)
}

/// A memfd named `hostile-blob` holding `bytes`, created with `flags`, with `seals` added.
fn memfd_as(bytes: &[u8], flags: MemfdFlags, seals: SealFlags) -> OwnedFd {
    let fd = rustix::fs::memfd_create("hostile-blob", flags).expect("memfd_create");
    let mut file = File::from(fd);
    file.write_all(bytes).expect("fill the memfd");
    let fd = OwnedFd::from(file);
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).expect("add seals");
    }
    fd
}

fn memfd(bytes: &[u8], seals: SealFlags) -> OwnedFd {
    memfd_as(
        bytes,
        MemfdFlags::CLOEXEC.union(MemfdFlags::ALLOW_SEALING),
        seals,
    )
}

/// A sealed memfd of `BLOB` bytes of content `key`, as a sender passes it.
fn sealed(key: u64) -> OwnedFd {
    memfd(&content(key, BLOB), SEALED)
}

/// The descriptor `fd` names, opened anew with `flags` (through /proc/self/fd).
fn reopen(fd: &OwnedFd, flags: OFlags) -> OwnedFd {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let fd = rustix::fs::open(path.as_str(), flags | OFlags::CLOEXEC, Mode::empty());
    fd.expect("reopen through /proc/self/fd")
}

/// Passes `fds` as one group, then publishes `msg` marked as having them.
fn attach(r: &mut Raw, fds: &[OwnedFd], msg: &[u8]) {
    let fds: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
    r.pass_fds(GROUP, &fds);
    r.publish_marked(msg);
}

/// Passes `fd` alone, referenced whole (as `size` bytes) beside inline bytes, in message
/// `id`: the control `one_sealed_buffer` with one thing changed.
fn one(r: &mut Raw, id: u32, fd: OwnedFd, size: usize) {
    let msg = message(id, &[Wire::Inline(b"inline".to_vec()), whole(size)]);
    attach(r, &[fd], &msg);
}

/// [`one`] with a memfd of `BLOB` bytes sealed with `seals` only.
fn sealed_with(r: &mut Raw, id: u32, seals: SealFlags) {
    one(r, id, memfd(&content(id.into(), BLOB), seals), BLOB)
}

/// Bytes passed on the raw sender's connection that the receiver has not read yet.
fn unread(r: &Raw) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) on a socket writes one int through the pointer, which
    // points at `n`.
    let rc = unsafe { libc::ioctl(r.sock.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    assert!(rc == 0, "TIOCOUTQ: {}", std::io::Error::last_os_error());
    n as usize
}

/// Receives until hostile message `HOSTILE + id`, which must come next.
fn take(rx: &Receiver<Blobs>, id: u32) -> Vec<Bytes> {
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok((got, parts)) if got == HOSTILE + id => parts,
        Ok((got, _)) => panic!("message {got} came instead of {}", HOSTILE + id),
        Err(e) => panic!("message {} did not come: {e}", HOSTILE + id),
    }
}

/// `parts` are `want` (content), sealed where `want` says, mapped read-only from the raw
/// sender's memfds.
fn expect_parts(parts: &[Bytes], want: &[(&[u8], bool)], what: &str) {
    expect_from(parts, want, "memfd:hostile-blob", what)
}

/// [`expect_parts`], for sealed parts in memfds named `memfd`.
fn expect_from(parts: &[Bytes], want: &[(&[u8], bool)], memfd: &str, what: &str) {
    assert_eq!(parts.len(), want.len(), "{what}: how many");
    for (i, (part, (bytes, sealed))) in parts.iter().zip(want).enumerate() {
        assert!(part.as_slice() == *bytes, "{what}: part {i} differs");
        assert_eq!(part.is_sealed(), *sealed, "{what}: part {i} sealed");
        if *sealed {
            let map = mapping_of(part);
            assert!(
                map.contains(" r--p ") && map.contains(memfd),
                "{what}: part {i} mapped as {map}"
            );
        }
    }
}

/// The line of /proc/self/maps whose range holds `bytes`.
fn mapping_of(bytes: &[u8]) -> String {
    let at = bytes.as_ptr() as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    let found = maps.lines().find(|line| {
        let (a, b) = line.split(' ').next().unwrap().split_once('-').unwrap();
        let a = usize::from_str_radix(a, 16).unwrap();
        (a..usize::from_str_radix(b, 16).unwrap()).contains(&at)
    });
    found.expect("a mapping holds the bytes").to_string()
}

/// A receiver with a well-behaved sender beside it, and what the process holds at rest.
struct Bench {
    rx: Receiver<Blobs>,
    real: Sender<Blobs>,
    addr: String,
    base: (usize, usize),
    sent: u32,
}

/// (open descriptors, memfd mappings) of this process.
fn counts() -> (usize, usize) {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    let memfd = maps.lines().filter(|l| l.contains("memfd:")).count();
    (conduit::open_fd_count().expect("fd count"), memfd)
}

impl Bench {
    fn new() -> Bench {
        let addr = format!("shm:{}", common::temp_dir().join("r.sock").display());
        let rx = Receiver::<Blobs>::bind_with(&addr, &Options::new()).expect("bind");
        let real = Sender::<Blobs>::connect(&addr).expect("real sender");
        let mut bench = Bench {
            rx,
            real,
            addr,
            base: (0, 0),
            sent: 0,
        };
        // Warm-up: a raw connection served and closed, and a sealed buffer through.
        bench.serve("warm-up", LEGAL[0].1);
        // At rest: the same over five samples, the receiver driven between them (it drops
        // the closed raw connection only when it looks).
        let start = Instant::now();
        let (mut last, mut same) = (counts(), 0);
        while same < 5 && start.elapsed() < SETTLE {
            if let Ok(m) = bench.rx.recv_timeout(Duration::from_millis(5)) {
                panic!("warm-up: message {} while settling", m.0);
            }
            let now = counts();
            same = if now == last { same + 1 } else { 0 };
            last = now;
        }
        bench.base = last;
        bench
    }

    /// The real sender's next message (a sealed buffer and inline bytes) arrives whole;
    /// hostile messages met on the way go into `got`.
    fn real_round_trip(&mut self, got: &mut Vec<Blobs>) {
        self.sent += 1;
        let n = self.sent;
        let mut buf = BlobBuf::new(BLOB).expect("BlobBuf");
        buf.copy_from_slice(&content(u64::from(n) << 32, BLOB));
        let parts = vec![buf.seal().expect("seal"), Bytes::from(vec![n as u8; 10])];
        self.real
            .send((n, parts))
            .expect("the real sender is served");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.rx.recv_timeout(Duration::from_millis(20)) {
                Ok((id, parts)) if id == n => {
                    let want = content(u64::from(n) << 32, BLOB);
                    let small = [n as u8; 10];
                    let want = [(&want[..], true), (&small[..], false)];
                    expect_from(&parts, &want, "memfd:conduit-blob", "real");
                    return;
                }
                Ok(m) => got.push(m),
                Err(e) => assert!(Instant::now() < deadline, "real message {n}: {e}"),
            }
        }
    }

    /// Drives the receiver until the counts are back at rest.
    fn settle(&self, what: &str) {
        let start = Instant::now();
        while counts() != self.base && start.elapsed() < SETTLE {
            if let Ok(m) = self.rx.recv_timeout(Duration::from_millis(2)) {
                panic!("{what}: message {} while settling", m.0);
            }
        }
        assert_eq!(counts(), self.base, "{what}: (descriptors, memfd maps)");
    }

    /// Runs an offence: the connection must be dropped, nothing of it delivered, the real
    /// sender served, nothing left.
    fn dropped(&mut self, what: &str, offend: Offence) {
        let mut raw = Raw::connect_as::<Blobs>(&self.addr);
        offend(&mut raw);
        let mut got = Vec::new();
        let start = Instant::now();
        loop {
            if let Ok(m) = self.rx.recv_timeout(Duration::from_millis(2)) {
                got.push(m);
            }
            if raw.hung_up() {
                break;
            }
            assert!(start.elapsed() < DROP_WITHIN, "{what}: kept");
        }
        assert!(raw.consumer_closed(), "{what}: ring not closed");
        drop(raw);
        self.real_alone(what, got);
        self.settle(what);
    }

    /// The real sender is served, and nothing else came (`got` so far).
    fn real_alone(&mut self, what: &str, mut got: Vec<Blobs>) {
        self.real_round_trip(&mut got);
        let ids: Vec<u32> = got.iter().map(|m| m.0).collect();
        assert!(ids.is_empty(), "{what}: delivered {ids:?}");
    }

    /// Runs a legal case: served, the connection kept, nothing left once it is closed.
    fn served(&mut self, what: &str, case: Legal) {
        self.serve(what, case);
        self.settle(what);
    }

    /// [`Bench::served`] but for the counts.
    fn serve(&mut self, what: &str, case: Legal) {
        let mut raw = Raw::connect_as::<Blobs>(&self.addr);
        case(&mut raw, &self.rx);
        assert!(!raw.hung_up() && !raw.consumer_closed(), "{what}: dropped");
        drop(raw);
        self.real_alone(what, Vec::new());
    }
}

#[test]
fn hostile_child() {
    let Some(role) = common::role() else { return };
    common::child_watchdog(CHILD_LIMIT);
    let mut bench = Bench::new();
    let started = Instant::now();
    let offences = match role.as_str() {
        "descriptors" => BAD_DESCRIPTORS,
        "groups" => BAD_GROUPS,
        _ => &[],
    };
    for &(what, offend) in offences {
        bench.dropped(what, offend);
    }
    if role == "legal" {
        for &(what, case) in LEGAL {
            bench.served(what, case);
        }
    }
    eprintln!(
        "sealed hostile: {role}: {} real messages between the cases, in {:?}; at rest \
         (descriptors, memfd mappings) {:?}",
        bench.sent,
        started.elapsed(),
        bench.base
    );
    assert!(bench.sent > 1, "unknown role {role}");
}

fn run(role: &str) {
    let mut cmd = common::child_command(ENTRY, role);
    common::die_with_parent(&mut cmd);
    let child = common::Reaped::new(cmd.spawn().expect("spawn the hostile child"));
    child.expect_success(CHILD_LIMIT + Duration::from_secs(10), role);
}

/// Files that are not sealed, not the size named, not memfds; references outside their
/// file; unknown tags.
#[test]
fn bad_descriptors_drop_only_their_connection() {
    run("descriptors");
}

/// Groups and marked messages that do not match, stray bytes, floods of descriptors.
#[test]
fn mismatched_groups_drop_only_their_connection() {
    run("groups");
}

/// The controls, and what is odd but legal.
#[test]
fn legal_descriptors_are_served_and_leave_nothing() {
    run("legal");
}

/// Wake-up bytes are legal in any number (`tests/shm_hostile.rs` floods them), and a group
/// passed after them belongs to the marked message that follows: the receiver reads past
/// them to find it. (A real sender's wake-ups are one-byte sends, of which a default socket
/// buffer holds about 280; with a send buffer of a few MiB, `net.core.wmem_default`, it can
/// queue thousands.)
#[test]
fn a_group_behind_many_wake_ups_is_found() {
    let mut bench = Bench::new();
    bench.serve("5000 wake-ups, then a group and its message", |r, rx| {
        r.sock.write_all(&[WAKE; 5000]).expect("wake-ups");
        one(r, 60, sealed(60), BLOB);
        let want = content(60, BLOB);
        let want = [(&b"inline"[..], false), (&want[..], true)];
        expect_parts(&take(rx, 60), &want, "behind wake-ups");
    });
}
