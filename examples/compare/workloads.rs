//! The two workloads, shared by the `compare` tool and `benches/backends.rs`, and the
//! conduit side of them: a [`Link`] is a running pair (this thread plus a peer thread or
//! process) that can time ping-pong round trips and a one-way stream.
//!
//! - Round trip: we send the `seq`-th message, the peer echoes the very value it received,
//!   we check it (a `u64`'s value, a blob's length) and send the next.
//! - Stream: on a command the peer sends `n + 1` messages as fast as it can; the clock
//!   starts when the first arrives and stops when the last does, so the time is the
//!   steady-state receive rate of `n` messages with sender and receiver in parallel. Each
//!   message is checked (a `u64` must be the next number: FIFO).
//!
//! Messages: 8 bytes is a `u64`; any other size is a [`Blob`], a `conduit::Bytes`, encoded
//! as one byte string (one length, one copy) and shared by its clones, so the sender does
//! not copy the bytes before each send, while the receiver gets a fresh buffer per message,
//! as a user's receiver would. Threads move it; nothing is copied. The `Vec<u8>` rows
//! (`shm-vec`, `unix-vec`) send a plain `Vec<u8>` instead, which serde encodes and decodes
//! one byte at a time; their sender clones its prototype for each message (one `memcpy`,
//! small beside the encoding), as a user building a fresh `Vec` per message would. Every
//! row uses these types, defaults for capacities (Thread and crossbeam: 1024 messages), and
//! the same warm-up; conduit's default size limit too, except that a 64 MiB message (plus
//! its length prefix) gets a limit just above it ([`options`]).

use std::hint::black_box;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use conduit::{channel, channel_with, Backend, Message, Options, Receiver, Sender};

use crate::names::Name;
use crate::peers;
use crate::peers::ipc_bytes::{Bytes, Flavour as _, Shmem};
use crate::procs::{self, ChildGuard, PATIENCE};

/// Child arguments, passed in the environment.
pub const ARG_NAME: &str = "CONDUIT_COMPARE_NAME";
pub const ARG_SIZE: &str = "CONDUIT_COMPARE_SIZE";
/// `vec` when the child's messages are `Vec<u8>` rather than [`Blob`]s, `sealed` when they
/// are [`SealedBlob`]s.
const ARG_PAYLOAD: &str = "CONDUIT_COMPARE_PAYLOAD";
const ARG_FWD: &str = "CONDUIT_COMPARE_FWD";
const ARG_BACK: &str = "CONDUIT_COMPARE_BACK";

/// A running pair.
pub trait Link {
    /// `iters` ping-pong round trips, timed as a whole.
    fn round_trips(&mut self, iters: u64) -> Result<Duration, String>;
    /// Has the peer send `n + 1` messages; the time from the first arrival to the last.
    fn stream(&mut self, n: u64) -> Result<Duration, String>;
    /// The peer's processes, for the watchdog; empty when the peer is a thread.
    fn pids(&self) -> Vec<u32>;
}

/// Starts the pair for one row and message size.
pub fn start(name: Name, size: usize, dir: &Path) -> Result<Box<dyn Link>, String> {
    match (name.vec_of(), name.sealed_of()) {
        _ if size == 8 => start_typed::<u64>(name, size, dir),
        (Some(backend), _) => process_pair::<Vec<u8>>(backend, size, dir),
        (_, Some(backend)) => process_pair::<SealedBlob>(backend, size, dir),
        _ => start_typed::<Blob>(name, size, dir),
    }
}

fn start_typed<T: Payload>(name: Name, size: usize, dir: &Path) -> Result<Box<dyn Link>, String> {
    match name {
        Name::Floor => peers::floor::start(),
        Name::Thread => thread_pair::<T>(size),
        Name::Crossbeam => peers::crossbeam::start::<T>(size),
        Name::Shm | Name::Unix | Name::Tcp | Name::Zenoh | Name::Pipe => {
            process_pair::<T>(name, size, dir)
        }
        Name::ShmVec | Name::UnixVec | Name::ShmSealed | Name::UnixSealed => {
            unreachable!("start sends Vec<u8> and sealed rows to their backend")
        }
        Name::RawSocketpair => peers::raw::start(size),
        Name::IpcChannel => peers::ipc::start::<T>(size),
        Name::IpcBytes => peers::ipc_bytes::start::<Bytes>(size),
        Name::IpcShmem => peers::ipc_bytes::start::<Shmem>(size),
        #[cfg(feature = "zenoh")]
        Name::ZenohRaw => peers::zenoh::start(size),
        #[cfg(not(feature = "zenoh"))]
        Name::ZenohRaw => unreachable!("zenoh-raw is a row of zenoh builds only"),
        Name::Iceoryx2 => peers::iceoryx2::start(size, false),
        Name::Iceoryx2Wait => peers::iceoryx2::start(size, true),
    }
}

/// In a child process (the role is set), plays its part and returns true.
pub fn child_main() -> bool {
    let Some(role) = procs::role() else {
        return false;
    };
    procs::die_with_parent();
    let size: usize = procs::arg(ARG_SIZE).parse().expect("a message size");
    match (role.as_str(), size == 8) {
        ("conduit", true) => conduit_child::<u64>(size),
        ("conduit", false) => match std::env::var(ARG_PAYLOAD).as_deref() {
            Ok("vec") => conduit_child::<Vec<u8>>(size),
            Ok("sealed") => conduit_child::<SealedBlob>(size),
            _ => conduit_child::<Blob>(size),
        },
        ("ipc", true) => peers::ipc::child::<u64>(size),
        ("ipc", false) => peers::ipc::child::<Blob>(size),
        (r, _) if r == Bytes::ROLE => peers::ipc_bytes::child::<Bytes>(size),
        (r, _) if r == Shmem::ROLE => peers::ipc_bytes::child::<Shmem>(size),
        ("raw", _) => peers::raw::child(size),
        ("iceoryx2", _) => peers::iceoryx2::child(size),
        #[cfg(feature = "zenoh")]
        ("zenoh", _) => peers::zenoh::child(size),
        ("floor", _) => peers::floor::child(),
        (other, _) => panic!("unknown child role {other:?}"),
    }
    true
}

/// The byte message: one byte string on the wire, cheap to clone on the sending side.
pub type Blob = conduit::Bytes;

/// More than the longest length prefix the codec writes before a byte string (10 bytes).
const PREFIX_ROOM: usize = 64;

/// conduit's options for `size`-byte messages: the defaults, with the size limit raised
/// above the default 64 MiB just enough for the length prefix when a message of `size`
/// bytes would not fit under it (a 64 MiB message does not). Both ends use these, the
/// child working them out from the size it is given.
fn options(size: usize) -> Options {
    let limit = conduit::DEFAULT_MAX_MESSAGE_SIZE.max(size + PREFIX_ROOM);
    Options::new().max_message_size(limit)
}

/// A message type of the workloads: `u64` for 8 bytes, [`Blob`] otherwise, `Vec<u8>` in
/// the `Vec<u8>` rows.
pub trait Payload: Message + Clone {
    /// `vec` or `sealed` for the variant payloads: the child must be told, since the size
    /// alone does not say.
    const VARIANT: Option<&'static str> = None;
    /// The sender's prototype for `size`-byte messages.
    fn proto(size: usize) -> Self;
    /// The `i`-th message made from the prototype.
    fn nth(&self, i: u64) -> Self;
    /// A cheap check that this is the `i`-th message of `size` bytes.
    fn is(&self, i: u64, size: usize) -> bool;
}

impl Payload for u64 {
    fn proto(_: usize) -> u64 {
        0
    }
    fn nth(&self, i: u64) -> u64 {
        i
    }
    fn is(&self, i: u64, _: usize) -> bool {
        *self == i
    }
}

impl Payload for Blob {
    fn proto(size: usize) -> Blob {
        Blob::from(vec![0xC3; size])
    }
    fn nth(&self, _: u64) -> Blob {
        self.clone()
    }
    fn is(&self, _: u64, size: usize) -> bool {
        self.len() == size
    }
}

impl Payload for Vec<u8> {
    const VARIANT: Option<&'static str> = Some("vec");
    fn proto(size: usize) -> Vec<u8> {
        vec![0xC3; size]
    }
    fn nth(&self, _: u64) -> Vec<u8> {
        self.clone()
    }
    fn is(&self, _: u64, size: usize) -> bool {
        self.len() == size
    }
}

/// A sealed byte message (`conduit::BlobBuf`): on `shm:` and `unix:` its file descriptor
/// crosses instead of its bytes, and the receiver maps the sealed file. The prototype is
/// sealed once and cloned, as the [`Blob`] rows clone theirs; the echo sends back the
/// buffer it received, which is sealed too, so it crosses as a descriptor again.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct SealedBlob(conduit::Bytes);

impl Payload for SealedBlob {
    const VARIANT: Option<&'static str> = Some("sealed");
    fn proto(size: usize) -> SealedBlob {
        let mut buf = conduit::BlobBuf::new(size).expect("a sealed buffer");
        buf.fill(0xC3);
        SealedBlob(buf.seal().expect("sealing"))
    }
    fn nth(&self, _: u64) -> SealedBlob {
        self.clone()
    }
    fn is(&self, _: u64, size: usize) -> bool {
        // Not `is_sealed()`: past 64 descriptors in flight conduit copies (a burst of the
        // stream can get there), and the row measures what it does.
        self.0.len() == size
    }
}

/// This side's ends of a channel-shaped pair: messages out and back, commands out.
pub trait Ends<T> {
    fn send(&self, msg: T) -> Result<(), String>;
    fn recv(&self) -> Result<T, String>;
    /// Asks the peer to stream `n + 1` messages (untimed).
    fn command(&self, n: u64) -> Result<(), String>;
}

/// What keeps a peer alive and ends it: a process, or threads joined (for a while) on drop.
pub enum Keep {
    Process(ChildGuard),
    Threads(Vec<JoinHandle<()>>),
}

impl Drop for Keep {
    fn drop(&mut self) {
        if let Keep::Threads(threads) = self {
            // Our ends are gone by now, so the peer threads are leaving; a stuck one is
            // left behind rather than blocking the run.
            let until = Instant::now() + Duration::from_secs(3);
            while threads.iter().any(|t| !t.is_finished()) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
            for t in threads.drain(..).filter(|t| t.is_finished()) {
                let _ = t.join();
            }
        }
    }
}

/// A [`Link`] over any [`Ends`]: the same loops time every channel-shaped row.
pub struct Pair<T, E> {
    ends: E,
    proto: T,
    size: usize,
    seq: u64,
    /// Last: our ends close first, so the peer leaves before it is reaped.
    keep: Keep,
}

impl<T: Payload, E: Ends<T>> Pair<T, E> {
    pub fn boxed(ends: E, size: usize, keep: Keep) -> Box<dyn Link>
    where
        E: 'static,
    {
        Box::new(Pair {
            ends,
            proto: T::proto(size),
            size,
            seq: 0,
            keep,
        })
    }
}

impl<T: Payload, E: Ends<T>> Link for Pair<T, E> {
    fn round_trips(&mut self, iters: u64) -> Result<Duration, String> {
        let start = Instant::now();
        for _ in 0..iters {
            self.seq += 1;
            self.ends.send(self.proto.nth(self.seq))?;
            let pong = self.ends.recv()?;
            if !pong.is(self.seq, self.size) {
                return Err(format!("round trip {} came back changed", self.seq));
            }
            black_box(pong);
        }
        Ok(start.elapsed())
    }

    fn stream(&mut self, n: u64) -> Result<Duration, String> {
        self.ends.command(n)?;
        let first = self.ends.recv()?;
        if !first.is(0, self.size) {
            return Err("the stream's first message is not the first one sent".into());
        }
        let start = Instant::now();
        for i in 1..=n {
            let msg = self.ends.recv()?;
            if !msg.is(i, self.size) {
                return Err(format!("message {i} of the stream arrived out of order"));
            }
            black_box(msg);
        }
        Ok(start.elapsed())
    }

    fn pids(&self) -> Vec<u32> {
        match &self.keep {
            Keep::Process(child) => vec![child.pid()],
            Keep::Threads(_) => Vec::new(),
        }
    }
}

/// conduit's ends; the command channel is a crossbeam channel between threads, a
/// `Backend::Socket` pair to a process.
struct Conduit<T> {
    fwd: Sender<T>,
    back: Receiver<T>,
    cmd: Commands,
}

enum Commands {
    Thread(crossbeam_channel::Sender<u64>),
    Process(Sender<u64>),
}

impl<T: Message> Ends<T> for Conduit<T> {
    fn send(&self, msg: T) -> Result<(), String> {
        self.fwd.send(msg).map_err(|e| format!("send: {e}"))
    }

    fn recv(&self) -> Result<T, String> {
        self.back.recv().map_err(|e| format!("recv: {e}"))
    }

    fn command(&self, n: u64) -> Result<(), String> {
        let sent = match &self.cmd {
            Commands::Thread(tx) => tx.send(n).is_ok(),
            Commands::Process(tx) => tx.send(n).is_ok(),
        };
        sent.then_some(()).ok_or_else(|| "the peer is gone".into())
    }
}

/// The peer's side, the same for a thread and a process: echoes every message from `fwd`
/// on `back` (in this thread), and streams on command (in another thread).
fn serve<T: Payload>(
    fwd: Receiver<T>,
    back: Sender<T>,
    mut next_command: impl FnMut() -> Option<u64> + Send + 'static,
    proto: T,
) {
    let streamer = back.clone();
    let streaming = std::thread::spawn(move || {
        while let Some(n) = next_command() {
            for i in 0..=n {
                if streamer.send(proto.nth(i)).is_err() {
                    return;
                }
            }
        }
    });
    for msg in fwd.iter() {
        if back.send(msg).is_err() {
            break;
        }
    }
    drop(back);
    let _ = streaming.join();
}

/// `Backend::Thread` between two threads: anonymous pairs with the default capacity.
fn thread_pair<T: Payload>(size: usize) -> Result<Box<dyn Link>, String> {
    let err = |e: conduit::Error| format!("channel(Backend::Thread): {e}");
    let (fwd, fwd_rx) = channel::<T>(Backend::Thread).map_err(err)?;
    let (back_tx, back) = channel::<T>(Backend::Thread).map_err(err)?;
    let (cmd, cmd_rx) = crossbeam_channel::unbounded();
    let peer = std::thread::Builder::new().name("thread-peer".into());
    let proto = T::proto(size);
    let peer = peer
        .spawn(move || serve(fwd_rx, back_tx, move || cmd_rx.recv().ok(), proto))
        .map_err(|e| format!("spawning the peer thread: {e}"))?;
    let ends = Conduit {
        fwd,
        back,
        cmd: Commands::Thread(cmd),
    };
    Ok(Pair::boxed(ends, size, Keep::Threads(vec![peer])))
}

/// What the child tells the parent once its receiver is ready: the address to connect to
/// (empty for a pipe, which is inherited), or why it could not start.
type Ready = Result<String, String>;

/// `shm:`, `unix:`, `tcp:`, `zenoh:` or a pipe, to a child process. Addresses for shm and
/// unix are socket files in `dir`; tcp binds port 0 on loopback on both sides; zenoh uses
/// keys unique to this process; pipes are inherited.
fn process_pair<T: Payload>(name: Name, size: usize, dir: &Path) -> Result<Box<dyn Link>, String> {
    let err = |what: &'static str| move |e: conduit::Error| format!("{what}: {e}");
    let (cmd_tx, cmd_rx) = channel::<u64>(Backend::Socket).map_err(err("command channel"))?;
    let (ctl_tx, ctl_rx) = channel::<Ready>(Backend::Socket).map_err(err("control channel"))?;
    let mut cmd = procs::command("conduit");
    cmd.env(ARG_NAME, name.as_str())
        .env(ARG_SIZE, size.to_string());
    if let Some(variant) = T::VARIANT {
        cmd.env(ARG_PAYLOAD, variant);
    }
    let share = err("share_with_child");
    cmd_rx.share_with_child(&mut cmd, "CMD").map_err(share)?;
    ctl_tx.share_with_child(&mut cmd, "CTL").map_err(share)?;
    drop((cmd_rx, ctl_tx)); // the child holds them now
    let file = |what: &str| {
        let variant = T::VARIANT.unwrap_or("");
        let path = dir.join(format!("{what}-{}{variant}-{size}.sock", name.as_str()));
        format!("{}:{}", name.as_str(), path.display())
    };
    let (back, fwd) = match name {
        Name::Pipe => {
            let opts = options(size);
            let (fwd, fwd_rx) = channel_with::<T>(Backend::Pipe, &opts).map_err(err("pipe"))?;
            let (back_tx, back) = channel_with::<T>(Backend::Pipe, &opts).map_err(err("pipe"))?;
            fwd_rx.share_with_child(&mut cmd, "FWD").map_err(share)?;
            back_tx.share_with_child(&mut cmd, "BACK").map_err(share)?;
            (back, Some(fwd))
        }
        Name::Tcp => {
            let back = Receiver::<T>::bind_with("tcp:127.0.0.1:0", &options(size));
            let back = back.map_err(err("bind"))?;
            let addr = back
                .local_addr()
                .ok_or("a tcp receiver without an address")?;
            cmd.env(ARG_BACK, addr).env(ARG_FWD, "tcp:127.0.0.1:0");
            (back, None)
        }
        Name::Zenoh => {
            // Keys unique to this parent and size; both processes open conduit's default
            // session (127.0.0.1 only, multicast scouting off).
            let key = |what: &str| {
                let variant = T::VARIANT.unwrap_or("");
                format!(
                    "zenoh:conduit-compare/{}/{what}{variant}-{size}",
                    std::process::id()
                )
            };
            let back = Receiver::<T>::bind_with(&key("back"), &options(size));
            let back = back.map_err(err("bind"))?;
            cmd.env(ARG_BACK, key("back")).env(ARG_FWD, key("fwd"));
            (back, None)
        }
        _ => {
            let back = Receiver::<T>::bind_with(&file("back"), &options(size));
            let back = back.map_err(err("bind"))?;
            cmd.env(ARG_BACK, file("back")).env(ARG_FWD, file("fwd"));
            (back, None)
        }
    };
    let child = ChildGuard::spawn(&mut cmd)?;
    drop(cmd); // closes our copies of what the child inherited
    let ready = match ctl_rx.recv_timeout(PATIENCE) {
        Ok(ready) => ready,
        Err(e) => Err(format!("the peer process did not start: {e}")),
    };
    let fwd = match (fwd, ready?) {
        (Some(fwd), _) => fwd,
        (None, addr) => Sender::<T>::connect_with(&addr, &options(size)).map_err(err("connect"))?,
    };
    let ends = Conduit {
        fwd,
        back,
        cmd: Commands::Process(cmd_tx),
    };
    Ok(Pair::boxed(ends, size, Keep::Process(child)))
}

/// The child of [`process_pair`]: its receiver and sender, then [`serve`].
fn conduit_child<T: Payload>(size: usize) {
    let cmd = Receiver::<u64>::from_parent("CMD").expect("the inherited command channel");
    let ctl = Sender::<Ready>::from_parent("CTL").expect("the inherited control channel");
    let ends = || -> Result<(Receiver<T>, Sender<T>, String), String> {
        let err = |what: &'static str| move |e: conduit::Error| format!("{what}: {e}");
        if procs::arg(ARG_NAME) == Name::Pipe.as_str() {
            let fwd = Receiver::<T>::from_parent("FWD").map_err(err("from_parent"))?;
            let back = Sender::<T>::from_parent("BACK").map_err(err("from_parent"))?;
            return Ok((fwd, back, String::new()));
        }
        let opts = options(size);
        let fwd = Receiver::<T>::bind_with(&procs::arg(ARG_FWD), &opts).map_err(err("bind"))?;
        let addr = fwd.local_addr().unwrap_or_default();
        let back = Sender::<T>::connect_with(&procs::arg(ARG_BACK), &opts);
        let back = back.map_err(err("connect"))?;
        Ok((fwd, back, addr))
    };
    match ends() {
        Ok((fwd, back, addr)) => {
            if ctl.send(Ok(addr)).is_ok() {
                serve(fwd, back, move || cmd.recv().ok(), T::proto(size));
            }
        }
        Err(e) => {
            let _ = ctl.send(Err(e));
        }
    }
}
