//! The baselines, as [`Link`]s like conduit's rows: crossbeam-channel between threads,
//! ipc-channel (serde, raw bytes, shared memory regions), iceoryx2 (spinning or waiting)
//! and a raw framed socketpair between processes, and the hardware floor.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;

use crate::procs;

/// The descriptor a child inherits (raw socketpair, floor memfd).
const ARG_FD: &str = "CONDUIT_COMPARE_FD";

/// Lets the next child spawned (from this thread) inherit `fd` under its own number, and
/// tells it which. Only the main thread spawns children, one at a time, and the caller
/// closes its copy right after the spawn, so no other child gets it.
fn inherit(fd: &OwnedFd, cmd: &mut Command) -> Result<(), String> {
    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())
        .map_err(|e| format!("clearing close-on-exec: {e}"))?;
    cmd.env(ARG_FD, fd.as_raw_fd().to_string());
    Ok(())
}

/// In a child: the descriptor [`inherit`] passed.
fn inherited() -> OwnedFd {
    use std::os::fd::FromRawFd;
    let fd: i32 = procs::arg(ARG_FD).parse().expect("a descriptor number");
    // SAFETY: the parent made this descriptor inheritable for us alone and named it in our
    // environment; nothing else in this process owns it, and it is taken once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// crossbeam-channel between two threads: `bounded(1024)` (conduit's Thread default),
/// the same message types, and the same peer loop as the Thread backend.
pub mod crossbeam {
    use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

    use crate::workloads::{Ends, Keep, Link, Pair, Payload};

    struct Channels<T> {
        fwd: Sender<T>,
        back: Receiver<T>,
        cmd: Sender<u64>,
    }

    impl<T: Payload> Ends<T> for Channels<T> {
        fn send(&self, msg: T) -> Result<(), String> {
            self.fwd.send(msg).map_err(|_| "send: disconnected".into())
        }
        fn recv(&self) -> Result<T, String> {
            self.back.recv().map_err(|_| "recv: disconnected".into())
        }
        fn command(&self, n: u64) -> Result<(), String> {
            self.cmd.send(n).map_err(|_| "the peer is gone".into())
        }
    }

    pub fn start<T: Payload>(size: usize) -> Result<Box<dyn Link>, String> {
        let (fwd, fwd_rx) = bounded::<T>(conduit::DEFAULT_THREAD_CAPACITY);
        let (back_tx, back) = bounded::<T>(conduit::DEFAULT_THREAD_CAPACITY);
        let (cmd, cmd_rx) = unbounded::<u64>();
        let proto = T::proto(size);
        let peer = std::thread::Builder::new().name("crossbeam-peer".into());
        let peer = peer
            .spawn(move || {
                let streamer = back_tx.clone();
                let streaming = std::thread::spawn(move || {
                    while let Ok(n) = cmd_rx.recv() {
                        for i in 0..=n {
                            if streamer.send(proto.nth(i)).is_err() {
                                return;
                            }
                        }
                    }
                });
                for msg in fwd_rx.iter() {
                    if back_tx.send(msg).is_err() {
                        break;
                    }
                }
                drop(back_tx);
                let _ = streaming.join();
            })
            .map_err(|e| format!("spawning the peer thread: {e}"))?;
        let ends = Channels { fwd, back, cmd };
        Ok(Pair::boxed(ends, size, Keep::Threads(vec![peer])))
    }
}

/// servo's ipc-channel between two processes: the child connects to an
/// `IpcOneShotServer` and sends its ends over it. Its messages are serde (postcard) too.
pub mod ipc {
    use ipc_channel::ipc::{self, IpcOneShotServer, IpcReceiver, IpcSender};

    use crate::procs::{self, ChildGuard, PATIENCE};
    use crate::workloads::{Ends, Keep, Link, Pair, Payload, ARG_SIZE};

    const ARG_SERVER: &str = "CONDUIT_COMPARE_IPC_SERVER";

    /// What the child sends the parent: our sender to it, our command sender, and the
    /// receiver of its echoes and streams.
    type Boot<T> = (IpcSender<T>, IpcSender<u64>, IpcReceiver<T>);

    struct Channels<T> {
        fwd: IpcSender<T>,
        back: IpcReceiver<T>,
        cmd: IpcSender<u64>,
    }

    impl<T: Payload> Ends<T> for Channels<T> {
        fn send(&self, msg: T) -> Result<(), String> {
            self.fwd.send(msg).map_err(|e| format!("send: {e:?}"))
        }
        fn recv(&self) -> Result<T, String> {
            self.back.recv().map_err(|e| format!("recv: {e:?}"))
        }
        fn command(&self, n: u64) -> Result<(), String> {
            self.cmd.send(n).map_err(|e| format!("command: {e:?}"))
        }
    }

    pub fn start<T: Payload>(size: usize) -> Result<Box<dyn Link>, String> {
        let (server, name) = IpcOneShotServer::<Boot<T>>::new()
            .map_err(|e| format!("IpcOneShotServer::new: {e}"))?;
        let mut cmd = procs::command("ipc");
        cmd.env(ARG_SIZE, size.to_string()).env(ARG_SERVER, name);
        let child = ChildGuard::spawn(&mut cmd)?;
        // accept() has no timeout: wait for it in a thread, for a bounded time. If the
        // child never connects, that thread stays blocked until we exit.
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let _ = tx.send(server.accept().map_err(|e| format!("accept: {e:?}")));
        });
        let (_, (fwd, cmd, back)) = rx
            .recv_timeout(PATIENCE)
            .map_err(|_| "the ipc-channel peer did not connect".to_string())??;
        Ok(Pair::boxed(
            Channels { fwd, back, cmd },
            size,
            Keep::Process(child),
        ))
    }

    pub fn child<T: Payload>(size: usize) {
        let boot = IpcSender::<Boot<T>>::connect(procs::arg(ARG_SERVER)).expect("connecting");
        let (fwd_tx, fwd_rx) = ipc::channel::<T>().expect("ipc::channel");
        let (cmd_tx, cmd_rx) = ipc::channel::<u64>().expect("ipc::channel");
        let (back_tx, back_rx) = ipc::channel::<T>().expect("ipc::channel");
        boot.send((fwd_tx, cmd_tx, back_rx))
            .expect("sending the ends");
        let streamer = back_tx.clone();
        let proto = T::proto(size);
        let streaming = std::thread::spawn(move || {
            while let Ok(n) = cmd_rx.recv() {
                for i in 0..=n {
                    if streamer.send(proto.nth(i)).is_err() {
                        return;
                    }
                }
            }
        });
        while let Ok(msg) = fwd_rx.recv() {
            if back_tx.send(msg).is_err() {
                break;
            }
        }
        drop(back_tx);
        let _ = streaming.join();
    }
}

/// Length-prefixed frames on a socketpair, with plain system calls and no conduit: what a
/// careful hand-written transport costs. A frame is `len: u32 LE | payload`; the top bit of
/// `len` marks a command (stream `n + 1` frames). The sender writes each frame with one
/// `sendmsg` of (header, payload); the receiver reads through a 64 KiB buffer and hands
/// out an owned message: an 8-byte payload as a `u64`, anything else as a `Vec<u8>`,
/// copied from the buffer or, for the part of a large frame not yet buffered, read
/// straight into it (no codec, no copy beyond the kernel's).
pub mod raw {
    use std::hint::black_box;
    use std::io::IoSlice;
    use std::os::fd::OwnedFd;
    use std::time::{Duration, Instant};

    use rustix::net::{AddressFamily, SendAncillaryBuffer, SendFlags, SocketFlags, SocketType};

    use crate::procs::{self, ChildGuard};
    use crate::workloads::{Link, ARG_SIZE};

    const COMMAND: u32 = 1 << 31;
    const BUFFER: usize = 64 << 10;

    enum Msg {
        Word(u64),
        Bytes(Vec<u8>),
    }

    struct Conn {
        fd: OwnedFd,
        buf: Box<[u8]>,
        start: usize,
        end: usize,
    }

    impl Conn {
        fn new(fd: OwnedFd) -> Conn {
            Conn {
                fd,
                buf: vec![0; BUFFER].into_boxed_slice(),
                start: 0,
                end: 0,
            }
        }

        fn write(&self, header: u32, payload: &[u8]) -> Result<(), String> {
            let head = header.to_le_bytes();
            let mut iov = [IoSlice::new(&head), IoSlice::new(payload)];
            let mut left: &mut [IoSlice<'_>] = &mut iov;
            let mut todo = 4 + payload.len();
            while todo > 0 {
                let mut no_fds = SendAncillaryBuffer::default();
                match rustix::net::sendmsg(&self.fd, left, &mut no_fds, SendFlags::NOSIGNAL) {
                    Ok(n) => {
                        todo -= n;
                        IoSlice::advance_slices(&mut left, n);
                    }
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(format!("sendmsg: {e}")),
                }
            }
            Ok(())
        }

        /// Reads into `buf` until at least `want` bytes are buffered.
        fn fill(&mut self, want: usize) -> Result<(), String> {
            if self.buf.len() - self.start < want {
                self.buf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            }
            while self.end - self.start < want {
                match rustix::io::read(&self.fd, &mut self.buf[self.end..]) {
                    Ok(0) => return Err("the peer closed the socketpair".into()),
                    Ok(n) => self.end += n,
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
            Ok(())
        }

        /// The next frame: its header and its payload.
        fn read(&mut self) -> Result<(u32, Msg), String> {
            self.fill(4)?;
            let at = self.start;
            let header = u32::from_le_bytes(self.buf[at..at + 4].try_into().unwrap());
            self.start += 4;
            let len = (header & !COMMAND) as usize;
            if len == 8 {
                self.fill(8)?;
                let at = self.start;
                let word = u64::from_le_bytes(self.buf[at..at + 8].try_into().unwrap());
                self.start += 8;
                return Ok((header, Msg::Word(word)));
            }
            // Vec::with_capacity gives exactly the capacity asked for, so reading into the
            // spare capacity never takes bytes of the next frame.
            let mut bytes = Vec::with_capacity(len);
            let buffered = len.min(self.end - self.start);
            bytes.extend_from_slice(&self.buf[self.start..self.start + buffered]);
            self.start += buffered;
            while bytes.len() < len {
                let spare = rustix::buffer::spare_capacity(&mut bytes);
                match rustix::io::read(&self.fd, spare) {
                    Ok(0) => return Err("the peer closed the socketpair".into()),
                    Ok(_) => {}
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
            Ok((header, Msg::Bytes(bytes)))
        }
    }

    struct RawPair {
        conn: Conn,
        proto: Vec<u8>,
        seq: u64,
        child: ChildGuard,
    }

    impl RawPair {
        fn check(&self, msg: &Msg, seq: u64) -> bool {
            match msg {
                Msg::Word(w) => self.proto.len() == 8 && *w == seq,
                Msg::Bytes(b) => b.len() == self.proto.len(),
            }
        }

        fn send(&self, seq: u64) -> Result<(), String> {
            if self.proto.len() == 8 {
                self.conn.write(8, &seq.to_le_bytes())
            } else {
                self.conn.write(self.proto.len() as u32, &self.proto)
            }
        }
    }

    impl Link for RawPair {
        fn round_trips(&mut self, iters: u64) -> Result<Duration, String> {
            let start = Instant::now();
            for _ in 0..iters {
                self.seq += 1;
                self.send(self.seq)?;
                let (_, pong) = self.conn.read()?;
                if !self.check(&pong, self.seq) {
                    return Err(format!("round trip {} came back changed", self.seq));
                }
                black_box(pong);
            }
            Ok(start.elapsed())
        }

        fn stream(&mut self, n: u64) -> Result<Duration, String> {
            self.conn.write(COMMAND | 8, &n.to_le_bytes())?;
            let (_, first) = self.conn.read()?;
            if !self.check(&first, 0) {
                return Err("the stream's first message is not the first one sent".into());
            }
            let start = Instant::now();
            for i in 1..=n {
                let (_, msg) = self.conn.read()?;
                if !self.check(&msg, i) {
                    return Err(format!("message {i} of the stream arrived out of order"));
                }
                black_box(msg);
            }
            Ok(start.elapsed())
        }

        fn pids(&self) -> Vec<u32> {
            vec![self.child.pid()]
        }
    }

    pub fn start(size: usize) -> Result<Box<dyn Link>, String> {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| format!("socketpair: {e}"))?;
        let mut cmd = procs::command("raw");
        cmd.env(ARG_SIZE, size.to_string());
        super::inherit(&theirs, &mut cmd)?;
        let child = ChildGuard::spawn(&mut cmd)?;
        drop(theirs); // the child's end: its exit must close the socket
        Ok(Box::new(RawPair {
            conn: Conn::new(ours),
            proto: vec![0xC3; size],
            seq: 0,
            child,
        }))
    }

    /// Echoes frames, and streams `n + 1` frames on each command, until the socket closes.
    pub fn child(size: usize) {
        let mut conn = Conn::new(super::inherited());
        let proto = vec![0xC3; size];
        loop {
            let sent = match conn.read() {
                Ok((header, Msg::Word(n))) if header & COMMAND != 0 => (0..=n).try_for_each(|i| {
                    if size == 8 {
                        conn.write(8, &i.to_le_bytes())
                    } else {
                        conn.write(size as u32, &proto)
                    }
                }),
                Ok((_, Msg::Word(w))) => conn.write(8, &w.to_le_bytes()),
                Ok((_, Msg::Bytes(b))) => conn.write(b.len() as u32, &b),
                Err(_) => return,
            };
            if sent.is_err() {
                return;
            }
        }
    }
}

/// The hardware floor: two processes bounce a counter over shared memory with raw atomics
/// (a memfd page mapped by both): the parent stores it on one cache line, the child sees
/// it and stores it on another two lines further (past the adjacent-line prefetcher's
/// pair, so each line has one writer), the parent waits for it. No system call, no
/// encoding: the machine's own cost of one cross-process (cross-core) round trip.
pub mod floor {
    use std::fs::File;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use memmap2::MmapMut;
    use rustix::fs::MemfdFlags;

    use crate::procs::{self, ChildGuard};
    use crate::workloads::Link;

    const PING: usize = 0;
    const PONG: usize = 128;
    const LEN: u64 = 4096;
    /// The counter value that tells the child to leave.
    const STOP: u64 = u64::MAX;
    /// The longest wait for one echo before the child is declared gone.
    const STALL: Duration = Duration::from_secs(2);

    struct Floor {
        map: MmapMut,
        seq: u64,
        child: ChildGuard,
    }

    /// The atomic at byte `off` of the shared page.
    fn slot(map: &MmapMut, off: usize) -> &AtomicU64 {
        assert!(off + 8 <= map.len() && off % 8 == 0);
        // SAFETY: in bounds and 8-aligned (a page-aligned mapping, offset a multiple of 8);
        // the page is only ever accessed through atomics, by both processes, while `map`
        // lives, and the returned reference borrows `map`.
        unsafe { AtomicU64::from_ptr(map.as_ptr().add(off).cast::<u64>().cast_mut()) }
    }

    /// Maps the memfd; both processes map the same sealed-size page.
    fn map(file: &File) -> MmapMut {
        // SAFETY: a memfd only this run and its child use, sized before mapping and never
        // truncated; its contents are only accessed through atomics (see `slot`).
        unsafe { MmapMut::map_mut(file) }.expect("mapping the floor page")
    }

    pub fn start() -> Result<Box<dyn Link>, String> {
        let fd = rustix::fs::memfd_create("conduit-compare-floor", MemfdFlags::CLOEXEC)
            .map_err(|e| format!("memfd_create: {e}"))?;
        let mut cmd = procs::command("floor");
        cmd.env(crate::workloads::ARG_SIZE, "8");
        super::inherit(&fd, &mut cmd)?;
        let file = File::from(fd);
        file.set_len(LEN)
            .map_err(|e| format!("sizing the page: {e}"))?;
        let map = map(&file);
        let child = ChildGuard::spawn(&mut cmd)?;
        drop(file);
        Ok(Box::new(Floor { map, seq: 0, child }))
    }

    impl Link for Floor {
        fn round_trips(&mut self, iters: u64) -> Result<Duration, String> {
            let ping = slot(&self.map, PING);
            let pong = slot(&self.map, PONG);
            let start = Instant::now();
            for _ in 0..iters {
                self.seq += 1;
                // Release pairs with the child's Acquire load of PING in `child` (no data
                // rides on it; the orderings match what a ring's publish costs, free on x86).
                ping.store(self.seq, Ordering::Release);
                let (mut spins, mut since) = (0u32, None);
                // Acquire pairs with the child's Release store of PONG in `child`.
                while pong.load(Ordering::Acquire) != self.seq {
                    std::hint::spin_loop();
                    spins = spins.wrapping_add(1);
                    if spins % (1 << 16) == 0
                        && since.get_or_insert_with(Instant::now).elapsed() > STALL
                    {
                        return Err("the floor's peer stopped answering".into());
                    }
                }
            }
            Ok(start.elapsed())
        }

        fn stream(&mut self, _: u64) -> Result<Duration, String> {
            Err("the floor is a round trip only".into())
        }

        fn pids(&self) -> Vec<u32> {
            vec![self.child.pid()]
        }
    }

    impl Drop for Floor {
        fn drop(&mut self) {
            // Release pairs with the child's Acquire load of PING: it sees STOP and leaves.
            slot(&self.map, PING).store(STOP, Ordering::Release);
        }
    }

    /// Echoes the parent's counter from one line to the other until told to stop.
    pub fn child() {
        let map = map(&File::from(super::inherited()));
        let ping = slot(&map, PING);
        let pong = slot(&map, PONG);
        let mut last = 0;
        loop {
            // Acquire pairs with the parent's Release stores of PING in `round_trips` and
            // in `Drop`.
            let seen = ping.load(Ordering::Acquire);
            if seen == last {
                std::hint::spin_loop();
                continue;
            }
            if seen == STOP {
                return;
            }
            // Release pairs with the parent's Acquire load of PONG in `round_trips`.
            pong.store(seen, Ordering::Release);
            last = seen;
        }
    }
}

/// ipc-channel's byte paths between two processes: `bytes_channel()` and
/// `IpcSharedMemory` (`ipc_bytes_peer.rs`).
#[path = "ipc_bytes_peer.rs"]
pub mod ipc_bytes;

/// Eclipse iceoryx2 between two processes, publish-subscribe over shared memory, with a
/// spinning or a waiting subscriber (`iceoryx2_peer.rs`).
#[path = "iceoryx2_peer.rs"]
pub mod iceoryx2;

/// Plain zenoh between two processes, without conduit (`zenoh_peer.rs`).
#[cfg(feature = "zenoh")]
#[path = "zenoh_peer.rs"]
pub mod zenoh;
