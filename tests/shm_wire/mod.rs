//! Hand-driven `shm:` peers for the hostile-peer tests. `Raw` is a sender that does the
//! handshake by hand on a std `UnixStream` (hello out; the answer with the ring's memfd in by
//! `SCM_RIGHTS`), maps the ring with memmap2 and writes it as a producer would (payload, then
//! the header word committed with a Release store) or as it likes; wake-ups are single bytes
//! on the connection.
//! `fake_receiver` plays the other side: a listener that hands a real `Sender` a ring of its
//! own making.
#![allow(dead_code)]

use std::fs::File;
use std::io::{ErrorKind, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::ops::Deref;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conduit::__testing::{encode, hello_for};
use conduit::{Options, Receiver, Sender};
use memmap2::{MmapOptions, MmapRaw};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::common;

pub type Job = (u32, Vec<u8>);

pub fn job(id: u32, len: usize) -> Job {
    (id, common::payload(u64::from(id), len))
}

/// Ring layout (src/ring/header.rs, core.rs): data after a 512-byte header; `head` and
/// `tail` are u64 byte counters on their own cache lines. A frame is one little-endian u64
/// header word, `len | stamp << 32` with `stamp = pos as u32 | flags | COMMIT` (`pos`, the
/// frame's position, a multiple of 8), then the payload padded to 8. The header word is the
/// commit: the receiver polls the word at its own position and never reads `head`.
pub const HEADER: usize = 512;
/// The ring layout version (`LAYOUT_VERSION` in src/ring/header.rs).
pub const LAYOUT_VERSION: u32 = 4;
pub const HEAD: usize = 64;
pub const TAIL: usize = 128;
pub const PRODUCER_CLOSED: usize = 320;
pub const CONSUMER_CLOSED: usize = 324;
pub const LAST: u32 = 1;
pub const PAD: u32 = 2;
/// Set in every committed header word's stamp.
pub const COMMIT: u32 = 4;
/// How long a hostile connection may live after its offence.
pub const DROP_WITHIN: Duration = Duration::from_secs(3);
/// Ids of the hostile peer's own well-formed messages (real senders use smaller ones).
pub const HOSTILE: u32 = 1_000_000;

/// The stamp a producer commits for a frame at `pos` with `flags`.
pub fn stamp(pos: u64, flags: u32) -> u32 {
    pos as u32 | flags | COMMIT
}

/// A header word from its parts.
pub fn word(len: u32, stamp: u32) -> u64 {
    u64::from(len) | u64::from(stamp) << 32
}

/// The bytes a frame of `len` payload bytes takes: header and payload rounded up to 8.
pub fn frame_size(len: usize) -> u64 {
    8 + len.next_multiple_of(8) as u64
}

/// A mapped ring and the connection that carries wake-ups to the peer; cheap to clone into a
/// thread.
#[derive(Clone)]
pub struct Ring {
    pub map: Arc<MmapRaw>,
    pub wake: Arc<OwnedFd>,
    pub cap: usize,
}

impl Ring {
    /// `wake` is a duplicate of the connection's socket.
    pub fn over(file: &File, wake: OwnedFd) -> Ring {
        let len = file.metadata().unwrap().len() as usize;
        let map = MmapOptions::new().map_raw(file).expect("map the ring");
        Ring {
            map: Arc::new(map),
            wake: Arc::new(wake),
            cap: len - HEADER,
        }
    }

    pub fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(off % 8 == 0 && off + 8 <= self.map.len());
        // SAFETY: aligned (page-aligned mapping, offset a multiple of 8), in bounds, and the
        // mapping lives as long as `self`. Every access to a control word is atomic; a header
        // slot is written plainly only as payload bytes (`write_bytes`), which happens while
        // the receiver does not read it (before the header that commits them).
        unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().add(off).cast()) }
    }

    pub fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(off % 4 == 0 && off + 4 <= self.map.len());
        // SAFETY: as in `u64_at`.
        unsafe { AtomicU32::from_ptr(self.map.as_mut_ptr().add(off).cast()) }
    }

    pub fn tail(&self) -> u64 {
        self.u64_at(TAIL).load(Ordering::Acquire)
    }

    /// The data offset of ring position `pos`.
    pub fn offset(&self, pos: u64) -> usize {
        pos as usize & (self.cap - 1)
    }

    /// The header word of the frame at position `pos` (a multiple of 8).
    pub fn slot(&self, pos: u64) -> &AtomicU64 {
        assert!(pos % 8 == 0, "header words are 8-aligned");
        self.u64_at(HEADER + self.offset(pos))
    }

    /// Stores `word` in the header slot at `pos` with Release: what the receiver sees as
    /// committed there (when the word has `COMMIT` in its stamp).
    pub fn commit_word(&self, pos: u64, word: u64) {
        self.slot(pos).store(word, Ordering::Release);
    }

    /// Commits a header claiming `len` bytes with `flags` at `pos`, stamped with `pos`.
    pub fn commit(&self, pos: u64, len: u32, flags: u32) {
        self.commit_word(pos, word(len, stamp(pos, flags)));
    }

    /// Copies `bytes` into the data region at offset `off` (any alignment), plainly.
    pub fn write_bytes(&self, off: usize, bytes: &[u8]) {
        let at = HEADER + off;
        assert!(at + bytes.len() <= self.map.len(), "bytes past the region");
        // SAFETY: in bounds (checked). Callers write only bytes the receiver does not read
        // meanwhile: a payload before the header that commits it, or a ring the receiver has
        // not attached yet; it never accesses payload bytes atomically.
        unsafe {
            let dst = self.map.as_mut_ptr().add(at);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len());
        }
    }

    /// Copies `payload` after the header slot at `pos`, committing nothing.
    pub fn payload(&self, pos: u64, payload: &[u8]) {
        self.write_bytes(self.offset(pos) + 8, payload);
    }

    /// A frame as a producer writes it: the payload, then the header slot just past a frame
    /// of `len` bytes cleared, then the header claiming `len` committed. `payload` may be
    /// shorter than `len` (the rest is whatever the ring holds).
    pub fn frame(&self, pos: u64, len: u32, flags: u32, payload: &[u8]) {
        self.payload(pos, payload);
        let next = pos.wrapping_add(frame_size(len as usize));
        self.slot(next).store(0, Ordering::Relaxed);
        self.commit(pos, len, flags);
    }

    /// Stores `head` in the control block (which the receiver does not read) and wakes it.
    pub fn set_head(&self, head: u64) {
        self.u64_at(HEAD).store(head, Ordering::Release);
        self.notify();
    }

    pub fn notify(&self) {
        let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
        let _ = rustix::net::send(&*self.wake, &[1], flags);
    }

    pub fn consumer_closed(&self) -> bool {
        self.u32_at(CONSUMER_CLOSED).load(Ordering::Acquire) != 0
    }
}

/// A hand-driven shm sender: the rendezvous socket, the ring, the memfd behind it.
pub struct Raw {
    pub sock: UnixStream,
    pub file: File,
    pub ring: Ring,
    /// Where the next frame goes.
    pub head: u64,
}

impl Deref for Raw {
    type Target = Ring;
    fn deref(&self) -> &Ring {
        &self.ring
    }
}

/// `recvmsg` with room for three descriptors: the bytes and the descriptors that came.
pub fn recv_fds(sock: &UnixStream, buf: &mut [u8]) -> (usize, Vec<OwnedFd>) {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = rustix::net::recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
        .expect("recvmsg");
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    (msg.bytes, fds)
}

/// Reads the rest of a hello whose first `got` bytes are in `buf`.
pub fn finish_hello(sock: &mut UnixStream, mut reply: Vec<u8>) -> Vec<u8> {
    while reply.len() < 22
        || reply.len() < 22 + usize::from(u16::from_le_bytes([reply[20], reply[21]]))
    {
        let mut more = [0u8; 600];
        let n = sock.read(&mut more).expect("the rest of the hello");
        assert!(n > 0, "the peer closed during the handshake");
        reply.extend_from_slice(&more[..n]);
    }
    reply
}

impl Raw {
    /// Connects as a sender of [`Job`]s (see [`Raw::connect_as`]).
    pub fn connect(addr: &str) -> Raw {
        Raw::connect_as::<Job>(addr)
    }

    /// Moves both positions to `pos` (a multiple of 8 for a legal start). Only before the
    /// receiver attaches the ring, which it does in its first receive call after `connect`.
    pub fn start_at(&mut self, pos: u64) {
        self.u64_at(TAIL).store(pos, Ordering::Release);
        self.u64_at(HEAD).store(pos, Ordering::Release);
        self.head = pos;
    }

    /// The padding and frame bytes a piece of `len` bytes takes at `head`, as a producer
    /// lays them out: a frame never wraps; padding fills the rest of the region instead.
    pub fn footprint(&self, len: usize) -> (u64, u64) {
        let need = frame_size(len);
        let contiguous = (self.cap - self.offset(self.head)) as u64;
        (if contiguous >= need { 0 } else { contiguous }, need)
    }

    /// Whether a piece of `len` bytes fits now, with the next header slot kept free.
    pub fn has_room(&self, len: usize) -> bool {
        let (pad, need) = self.footprint(len);
        self.head.wrapping_sub(self.tail()) + pad + need + 8 <= self.cap as u64
    }

    /// Publishes one piece at `head` as a producer does (padding first if it does not fit
    /// before the end of the region: the frame at offset 0 is committed, then the padding),
    /// stores `head` in the control block and wakes the receiver. Panics without room.
    pub fn publish(&mut self, payload: &[u8], flags: u32) {
        assert!(self.has_room(payload.len()), "no room in the ring");
        let (pad, need) = self.footprint(payload.len());
        let start = self.head;
        let pos = start.wrapping_add(pad);
        self.ring.frame(pos, payload.len() as u32, flags, payload);
        if pad != 0 {
            self.ring.commit(start, (pad - 8) as u32, PAD);
        }
        self.head = pos.wrapping_add(need);
        self.ring.set_head(self.head);
    }

    pub fn send_job(&mut self, j: &Job) {
        self.publish(&encode(j), LAST);
    }

    /// Whether the receiver closed the rendezvous socket (EOF or reset). Wake-up bytes it
    /// sent are read and ignored.
    pub fn hung_up(&mut self) -> bool {
        self.sock.set_nonblocking(true).unwrap();
        let mut b = [0u8; 256];
        let r = loop {
            match self.sock.read(&mut b) {
                Ok(n) if n > 0 => continue,
                other => break other,
            }
        };
        self.sock.set_nonblocking(false).unwrap();
        match r {
            Ok(_) => true,
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted),
        }
    }
}

/// A receiver at a fresh `shm:` address with a well-behaved sender beside it.
pub fn setup(opts: &Options) -> (Receiver<Job>, Sender<Job>, String) {
    let addr = format!("shm:{}", common::temp_dir().join("r.sock").display());
    let rx = Receiver::<Job>::bind_with(&addr, opts).expect("bind");
    let real = Sender::<Job>::connect(&addr).expect("real sender");
    (rx, real, addr)
}

/// Drives `rx` (collecting what it yields) until it hung up on `raw` and marked its ring
/// closed. Panics after `DROP_WITHIN`, or if one `recv_timeout(2 ms)` took over a second.
pub fn wait_dropped(rx: &Receiver<Job>, raw: &mut Raw, what: &str, got: &mut Vec<Job>) {
    let start = Instant::now();
    loop {
        let call = Instant::now();
        if let Ok(j) = rx.recv_timeout(Duration::from_millis(2)) {
            got.push(j);
        }
        let took = call.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "{what}: recv_timeout(2 ms) returned after {took:?}"
        );
        if raw.hung_up() {
            break;
        }
        assert!(
            start.elapsed() < DROP_WITHIN,
            "{what}: the receiver kept the hostile connection for {DROP_WITHIN:?}"
        );
    }
    assert!(
        raw.consumer_closed(),
        "{what}: dropped without closing its side of the ring"
    );
}

/// Receives until the real jobs `want` arrived (in order: one real sender), and checks any
/// hostile message is one of `allowed` (well-formed ones the hostile peer published), once.
pub fn expect_real(rx: &Receiver<Job>, mut got: Vec<Job>, want: &[Job], allowed: &[Job]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.iter().filter(|j| j.0 < HOSTILE).count() < want.len() && Instant::now() < deadline {
        if let Ok(j) = rx.recv_timeout(Duration::from_millis(20)) {
            got.push(j);
        }
    }
    let (real, hostile): (Vec<Job>, Vec<Job>) = got.into_iter().partition(|j| j.0 < HOSTILE);
    let ids: Vec<u32> = real.iter().map(|j| j.0).collect();
    assert!(
        real == want,
        "the real sender's jobs, in order: got {ids:?}"
    );
    for h in &hostile {
        assert!(
            allowed.contains(h),
            "hostile message {} was never whole",
            h.0
        );
        let n = hostile.iter().filter(|x| x.0 == h.0).count();
        assert_eq!(n, 1, "hostile message {} delivered {n} times", h.0);
    }
}

/// Publishes hostile job `HOSTILE + id` and drives `rx` until it took it.
pub fn consumed(r: &mut Raw, rx: &Receiver<Job>, got: &mut Vec<Job>, id: u32) {
    r.send_job(&job(HOSTILE + id, 40));
    let start = Instant::now();
    while r.tail() != r.head {
        if let Ok(j) = rx.recv_timeout(Duration::from_millis(2)) {
            got.push(j);
        }
        assert!(
            start.elapsed() < DROP_WITHIN,
            "a well-formed frame was not taken"
        );
    }
}

/// Runs `body` on a thread and fails if it has not finished within 30 s.
pub fn watchdog(what: &'static str, body: impl FnOnce() + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    let runner = std::thread::spawn(move || {
        body();
        let _ = done.send(());
    });
    match finished.recv_timeout(Duration::from_secs(30)) {
        Ok(()) => runner.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(runner.join().unwrap_err())
        }
        Err(_) => panic!("{what}: still running after 30 s; something blocked"),
    }
}

/// Plays the receiver for one `Sender::<Job>::connect` at the returned `shm:` address: the
/// handshake, then a sealed ring of `4096` bytes that `prepare` may tamper with. Returns the
/// address and a handle giving the ring (and the connection, kept open).
pub fn fake_receiver(
    prepare: impl FnOnce(&Ring) + Send + 'static,
) -> (String, std::thread::JoinHandle<(Ring, UnixStream)>) {
    use rustix::fs::{MemfdFlags, SealFlags};
    let path = common::temp_dir().join("fake.sock");
    let listener = UnixListener::bind(&path).expect("bind the fake receiver");
    let handle = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().expect("accept");
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 600];
        let n = sock.read(&mut buf).expect("the sender's hello");
        finish_hello(&mut sock, buf[..n].to_vec());
        let memfd =
            rustix::fs::memfd_create("fake-ring", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
                .unwrap();
        rustix::fs::ftruncate(&memfd, (HEADER + 4096) as u64).unwrap();
        let seals = SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
        rustix::fs::fcntl_add_seals(&memfd, seals).unwrap();
        let file = File::from(memfd);
        let ring = Ring::over(&file, OwnedFd::from(sock.try_clone().unwrap()));
        ring.u64_at(0)
            .store(u64::from_le_bytes(*b"CDTRING1"), Ordering::Relaxed);
        ring.u32_at(8).store(LAYOUT_VERSION, Ordering::Relaxed);
        ring.u32_at(12).store(4096, Ordering::Relaxed);
        prepare(&ring);
        let fds = [file.as_fd()];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        let reply = hello_for::<Job>(1 << 20);
        let iov = [IoSlice::new(&reply)];
        let n = rustix::net::sendmsg(&sock, &iov, &mut control, SendFlags::NOSIGNAL).unwrap();
        sock.write_all(&reply[n..]).unwrap();
        (ring, sock)
    });
    (format!("shm:{}", path.display()), handle)
}

/// A thread committing frames that claim `len` payload bytes with `flags` (`8 + len` must
/// divide the capacity, so no wrap padding is needed) from the raw sender's `head`, as fast
/// as the ring takes them (each frame and the header slot after it, at most the whole ring),
/// until stopped or `limit`.
pub struct Flood {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl Flood {
    pub fn start(raw: &Raw, len: usize, flags: u32, limit: Duration) -> Flood {
        let frame = frame_size(len);
        assert!(len % 8 == 0 && raw.cap as u64 % frame == 0);
        let (ring, stop) = (raw.ring.clone(), Arc::new(AtomicBool::new(false)));
        let halt = stop.clone();
        let mut head = raw.head;
        let handle = std::thread::spawn(move || {
            let (cap, start) = (ring.cap as u64, Instant::now());
            let room = (frame + 8).min(cap);
            let mut pieces = 0;
            while !halt.load(Ordering::Relaxed) && start.elapsed() < limit {
                if head.wrapping_sub(ring.tail()) + room > cap {
                    std::hint::spin_loop();
                    continue;
                }
                ring.frame(head, len as u32, flags, &[]);
                head = head.wrapping_add(frame);
                pieces += 1;
                ring.u64_at(HEAD).store(head, Ordering::Relaxed);
                if pieces % 64 == 1 {
                    ring.notify();
                }
            }
            pieces
        });
        Flood { stop, handle }
    }

    /// Stops the flood; returns how many pieces it published.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("the flood thread")
    }
}

// ---- descriptors beside messages (sealed buffers: `tests/sealed_hostile.rs`) ---------------

/// The byte a group of descriptors is passed with on a shm connection (`GROUP_BYTE` in
/// src/flavors/attached.rs); a wake-up is [`WAKE`].
pub const GROUP: u8 = 2;
/// A wake-up byte.
pub const WAKE: u8 = 1;
/// The most descriptors one `sendmsg` can carry (the kernel's `SCM_MAX_FD`).
pub const SCM_MAX_FD: usize = 253;

impl Raw {
    /// [`Raw::connect`] as a sender of `T`: the hello names `T`, so a receiver of `T`
    /// accepts the connection.
    pub fn connect_as<T>(addr: &str) -> Raw {
        let path = addr.strip_prefix("shm:").expect("an shm: address");
        let mut sock = UnixStream::connect(path).expect("raw connect");
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        sock.write_all(&hello_for::<T>(1 << 20)).expect("hello");
        let mut buf = [0u8; 600];
        let (n, fds) = recv_fds(&sock, &mut buf);
        let reply = finish_hello(&mut sock, buf[..n].to_vec());
        assert_eq!((&reply[..4], reply[6]), (&b"CNDT"[..], 0), "accepted");
        let [memfd]: [OwnedFd; 1] = fds.try_into().expect("one descriptor");
        let file = File::from(memfd);
        let ring = Ring::over(&file, OwnedFd::from(sock.try_clone().unwrap()));
        let magic = ring.u64_at(0).load(Ordering::Acquire).to_le_bytes();
        assert_eq!(&magic, b"CDTRING1", "ring magic");
        Raw {
            sock,
            file,
            ring,
            head: 0,
        }
    }

    /// Passes `fds` (any number up to [`SCM_MAX_FD`], none included) on the connection with
    /// the single data byte `byte`, in one `sendmsg`, as a sender passes a group with
    /// [`GROUP`]. The caller keeps its own descriptors; the receiver gets copies.
    pub fn pass_fds(&self, byte: u8, fds: &[std::os::fd::BorrowedFd<'_>]) {
        self.try_pass_fds(byte, fds)
            .expect("sendmsg with descriptors");
    }

    /// [`Raw::pass_fds`], failing when the receiver has closed the connection.
    pub fn try_pass_fds(
        &self,
        byte: u8,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> std::io::Result<()> {
        assert!(fds.len() <= SCM_MAX_FD, "more than one sendmsg carries");
        let mut space =
            vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(SCM_MAX_FD))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        }
        let iov = [IoSlice::new(std::slice::from_ref(&byte))];
        let n = rustix::net::sendmsg(&self.sock, &iov, &mut control, SendFlags::NOSIGNAL)?;
        assert_eq!(n, 1, "the marker byte went");
        Ok(())
    }

    /// Publishes a message that says descriptors were passed with it: the marker (an empty
    /// piece that is not the last) and then `msg` as its one piece.
    pub fn publish_marked(&mut self, msg: &[u8]) {
        self.publish(&[], 0);
        self.publish(msg, LAST);
    }
}
