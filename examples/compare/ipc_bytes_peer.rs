//! servo's ipc-channel without serde for the payload, between two processes: the raw byte
//! channel (`ipc-bytes`, `bytes_channel()`: the bytes go into the socket as they are and
//! come out as a fresh `Vec<u8>`) and shared memory regions (`ipc-shmem`, an
//! `IpcSharedMemory` sent over an `IpcSender`: the bytes are copied into a fresh memfd
//! mapping with `from_bytes`, only its descriptor crosses the socket, and the receiver maps
//! it and reads it in place). What ipc-channel costs when the payload is bytes already,
//! beside the `ipc-channel` row's serde `conduit::Bytes`.
//!
//! The pair is built like that row's: the child connects to an `IpcOneShotServer` and sends
//! its ends over it; commands are an `IpcSender<u64>`. An 8-byte message carries a `u64`'s
//! bytes (checked by value), any other size the prototype's bytes (checked by length). The
//! child echoes what it received: the same bytes (`ipc-bytes`), or the very region, whose
//! descriptor goes back without a copy (`ipc-shmem`); it streams fresh messages, a new
//! region each with `from_bytes` as a sender of distinct data would.

use std::hint::black_box;
use std::ops::Deref;
use std::time::{Duration, Instant};

use ipc_channel::ipc::{
    self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcReceiver, IpcSender,
    IpcSharedMemory,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::procs::{self, ChildGuard, PATIENCE};
use crate::workloads::{Link, ARG_SIZE};

const ARG_SERVER: &str = "CONDUIT_COMPARE_IPC_SERVER";

/// One way of moving bytes over ipc-channel.
pub trait Flavour: 'static {
    /// The child's role, which names the flavour.
    const ROLE: &'static str;
    type Tx: Serialize + DeserializeOwned + Clone + Send + 'static;
    type Rx: Serialize + DeserializeOwned + Send + 'static;
    /// A received message.
    type Msg: Deref<Target = [u8]>;
    fn channel() -> (Self::Tx, Self::Rx);
    /// Sends a new message with these bytes.
    fn send(tx: &Self::Tx, bytes: &[u8]) -> Result<(), String>;
    /// Sends a received message back.
    fn echo(tx: &Self::Tx, msg: Self::Msg) -> Result<(), String>;
    fn recv(rx: &Self::Rx) -> Result<Self::Msg, String>;
}

/// `bytes_channel()`: no serde, the bytes as they are.
pub struct Bytes;

impl Flavour for Bytes {
    const ROLE: &'static str = "ipc-bytes";
    type Tx = IpcBytesSender;
    type Rx = IpcBytesReceiver;
    type Msg = Vec<u8>;

    fn channel() -> (IpcBytesSender, IpcBytesReceiver) {
        ipc::bytes_channel().expect("ipc::bytes_channel")
    }
    fn send(tx: &IpcBytesSender, bytes: &[u8]) -> Result<(), String> {
        tx.send(bytes).map_err(|e| format!("send: {e}"))
    }
    fn echo(tx: &IpcBytesSender, msg: Vec<u8>) -> Result<(), String> {
        Self::send(tx, &msg)
    }
    fn recv(rx: &IpcBytesReceiver) -> Result<Vec<u8>, String> {
        rx.recv().map_err(|e| format!("recv: {e:?}"))
    }
}

/// An `IpcSharedMemory` region per message.
pub struct Shmem;

impl Flavour for Shmem {
    const ROLE: &'static str = "ipc-shmem";
    type Tx = IpcSender<IpcSharedMemory>;
    type Rx = IpcReceiver<IpcSharedMemory>;
    type Msg = IpcSharedMemory;

    fn channel() -> (Self::Tx, Self::Rx) {
        ipc::channel().expect("ipc::channel")
    }
    fn send(tx: &Self::Tx, bytes: &[u8]) -> Result<(), String> {
        Self::echo(tx, IpcSharedMemory::from_bytes(bytes))
    }
    fn echo(tx: &Self::Tx, msg: IpcSharedMemory) -> Result<(), String> {
        tx.send(msg).map_err(|e| format!("send: {e:?}"))
    }
    fn recv(rx: &Self::Rx) -> Result<IpcSharedMemory, String> {
        rx.recv().map_err(|e| format!("recv: {e:?}"))
    }
}

/// What the child sends the parent: our sender to it, our command sender, and the receiver
/// of its echoes and streams.
type Boot<F> = (<F as Flavour>::Tx, IpcSender<u64>, <F as Flavour>::Rx);

struct Pair<F: Flavour> {
    fwd: F::Tx,
    back: F::Rx,
    cmd: IpcSender<u64>,
    proto: Vec<u8>,
    seq: u64,
    child: ChildGuard,
}

/// The `i`-th message's bytes: a `u64`'s at 8 bytes, the prototype's otherwise.
fn nth<'a>(proto: &'a [u8], i: u64, word: &'a mut [u8; 8]) -> &'a [u8] {
    if proto.len() == 8 {
        *word = i.to_le_bytes();
        word
    } else {
        proto
    }
}

impl<F: Flavour> Pair<F> {
    /// Whether `msg` is the `seq`-th message: a `u64`'s value, a blob's length.
    fn check(&self, msg: &[u8], seq: u64) -> bool {
        match self.proto.len() {
            8 => msg.len() == 8 && u64::from_le_bytes(msg.try_into().unwrap()) == seq,
            size => msg.len() == size,
        }
    }
}

impl<F: Flavour> Link for Pair<F> {
    fn round_trips(&mut self, iters: u64) -> Result<Duration, String> {
        let mut word = [0; 8];
        let start = Instant::now();
        for _ in 0..iters {
            self.seq += 1;
            F::send(&self.fwd, nth(&self.proto, self.seq, &mut word))?;
            let pong = F::recv(&self.back)?;
            if !self.check(&pong, self.seq) {
                return Err(format!("round trip {} came back changed", self.seq));
            }
            black_box(pong);
        }
        Ok(start.elapsed())
    }

    fn stream(&mut self, n: u64) -> Result<Duration, String> {
        self.cmd.send(n).map_err(|e| format!("command: {e:?}"))?;
        let first = F::recv(&self.back)?;
        if !self.check(&first, 0) {
            return Err("the stream's first message is not the first one sent".into());
        }
        drop(first);
        let start = Instant::now();
        for i in 1..=n {
            let msg = F::recv(&self.back)?;
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

pub fn start<F: Flavour>(size: usize) -> Result<Box<dyn Link>, String> {
    let (server, name) =
        IpcOneShotServer::<Boot<F>>::new().map_err(|e| format!("IpcOneShotServer::new: {e}"))?;
    let mut cmd = procs::command(F::ROLE);
    cmd.env(ARG_SIZE, size.to_string()).env(ARG_SERVER, name);
    let child = ChildGuard::spawn(&mut cmd)?;
    // accept() has no timeout: wait for it in a thread, for a bounded time. If the child
    // never connects, that thread stays blocked until we exit.
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(server.accept().map_err(|e| format!("accept: {e:?}")));
    });
    let (_, (fwd, cmd, back)) = rx
        .recv_timeout(PATIENCE)
        .map_err(|_| "the ipc-channel peer did not connect".to_string())??;
    Ok(Box::new(Pair::<F> {
        fwd,
        back,
        cmd,
        proto: vec![0xC3; size],
        seq: 0,
        child,
    }))
}

/// Echoes every message, and streams `n + 1` messages on each command, until the parent's
/// ends close.
pub fn child<F: Flavour>(size: usize) {
    let boot = IpcSender::<Boot<F>>::connect(procs::arg(ARG_SERVER)).expect("connecting");
    let (fwd_tx, fwd_rx) = F::channel();
    let (cmd_tx, cmd_rx) = ipc::channel::<u64>().expect("ipc::channel");
    let (back_tx, back_rx) = F::channel();
    boot.send((fwd_tx, cmd_tx, back_rx))
        .expect("sending the ends");
    let streamer = back_tx.clone();
    let proto = vec![0xC3; size];
    let streaming = std::thread::spawn(move || {
        let mut word = [0; 8];
        while let Ok(n) = cmd_rx.recv() {
            for i in 0..=n {
                if F::send(&streamer, nth(&proto, i, &mut word)).is_err() {
                    return;
                }
            }
        }
    });
    while let Ok(msg) = F::recv(&fwd_rx) {
        if F::echo(&back_tx, msg).is_err() {
            break;
        }
    }
    drop(back_tx);
    let _ = streaming.join();
}
