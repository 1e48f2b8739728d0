//! # conduit
//!
//! One typed [`Sender<T>`]/[`Receiver<T>`] for message passing between threads and between
//! processes. Whether a worker runs as a thread (cheap, shared memory, one crash kills all)
//! or as a process (isolated, survives a peer's crash) is one string: the address.
//!
//! | address | backend | between |
//! |---|---|---|
//! | `thread:NAME` | [`Backend::Thread`] | threads; messages moved, never encoded |
//! | `unix:PATH` | [`Backend::Socket`] | processes on one machine |
//! | `tcp:HOST:PORT` | [`Backend::Socket`] over TCP | machines |
//! | `shm:PATH` | [`Backend::Shm`] | processes on one machine, through a shared-memory ring |
//! | `zenoh:KEY` | the zenoh engine (feature `zenoh`) | machines: discovery, routing, TLS, authentication |
//!
//! Anonymous pairs come from [`channel`]; [`Backend::Pipe`], [`Backend::Socket`] and
//! [`Backend::Shm`] ends can be handed to a child process ([`Sender::share_with_child`]; a
//! shared-memory end moves to the child, and the parent's handle stops working).
//!
//! ## Threads
//!
//! ```
//! use conduit::{Receiver, Sender};
//! let rx = Receiver::<String>::bind("thread:jobs")?;
//! let worker = std::thread::spawn(|| {
//!     let tx = Sender::<String>::connect("thread:jobs").unwrap();
//!     tx.send("done".to_string()).unwrap();
//! });
//! assert_eq!(rx.recv().unwrap(), "done");
//! worker.join().unwrap();
//! # Ok::<(), conduit::Error>(())
//! ```
//!
//! ## Unix sockets (processes on one machine)
//!
//! The same code across processes: only the address changes. Here both ends are in one
//! process for brevity; see `examples/workers.rs` for real child processes.
//!
//! ```
//! use conduit::{Bytes, Receiver, Sender};
//! let path = std::env::temp_dir().join(format!("conduit-libdoc-{}.sock", std::process::id()));
//! let addr = format!("unix:{}", path.display());
//! let rx = Receiver::<(u32, Bytes)>::bind(&addr)?;
//! let tx = Sender::<(u32, Bytes)>::connect(&addr)?;
//! tx.send((1, vec![0xAB; 100_000].into())).unwrap(); // large messages are streamed in pieces
//! drop(tx);
//! assert_eq!(rx.recv().unwrap().1.len(), 100_000);
//! assert!(rx.recv().is_err()); // the only sender is gone: Disconnected
//! # Ok::<(), conduit::Error>(())
//! ```
//!
//! ## TCP
//!
//! ```
//! use conduit::{Receiver, Sender};
//! let rx = Receiver::<u64>::bind("tcp:127.0.0.1:0")?;
//! let tx = Sender::<u64>::connect(&rx.local_addr().unwrap())?;
//! tx.send(7).unwrap();
//! assert_eq!(rx.recv().unwrap(), 7);
//! # Ok::<(), conduit::Error>(())
//! ```
//!
//! ## Pipes
//!
//! ```
//! use conduit::{channel, Backend};
//! let (tx, rx) = channel::<Vec<String>>(Backend::Pipe)?;
//! tx.send(vec!["through".into(), "a pipe".into()]).unwrap();
//! assert_eq!(rx.recv().unwrap().join(" "), "through a pipe");
//! # Ok::<(), conduit::Error>(())
//! ```
//!
//! ## Shared memory (processes on one machine, fastest)
//!
//! Each connected sender gets its own lock-free ring in a sealed, unnamed memfd mapping; the
//! file at PATH is only a Unix socket used to hand the ring over and to notice a peer's death.
//!
//! ```
//! use conduit::{channel, Backend, Bytes, Receiver, Sender};
//! let path = std::env::temp_dir().join(format!("conduit-shmdoc-{}.sock", std::process::id()));
//! let addr = format!("shm:{}", path.display());
//! let rx = Receiver::<String>::bind(&addr)?;
//! let tx = Sender::<String>::connect(&addr)?;
//! tx.send("through shared memory".into()).unwrap();
//! assert_eq!(rx.recv().unwrap(), "through shared memory");
//!
//! // An anonymous pair; a message bigger than the 1 MiB ring streams through it in pieces.
//! let (tx, rx) = channel::<Bytes>(Backend::Shm)?;
//! let reader = std::thread::spawn(move || rx.recv().unwrap().len());
//! tx.send(vec![5; 3 << 20].into()).unwrap();
//! assert_eq!(reader.join().unwrap(), 3 << 20);
//! # Ok::<(), conduit::Error>(())
//! ```
//!
//! ## zenoh (feature `zenoh`; machines)
//!
//! `zenoh:KEY` addresses ride the Eclipse zenoh engine: discovery, peer-to-peer or routed
//! topologies, TLS and authentication, configured the zenoh way (a configuration through
//! `Options::zenoh_config`/`zenoh_config_file` or the `ZENOH_CONFIG` environment
//! variable). Without one, the process's zenoh session reaches nothing beyond 127.0.0.1:
//! multicast scouting off; the first process listens on `tcp/127.0.0.1:17447`, the others
//! connect there. The README's `zenoh:` section shows a two-host setup, TLS and
//! authentication, and the table of where `zenoh:` differs from the other backends.
//!
//! ```ignore
//! use conduit::{Receiver, Sender};
//! let rx = Receiver::<String>::bind("zenoh:app/jobs")?;
//! let tx = Sender::<String>::connect("zenoh:app/jobs")?;
//! tx.send("job".to_string()).unwrap();
//! assert_eq!(rx.recv().unwrap(), "job");
//! # Ok::<(), conduit::Error>(())
//! ```
//!
//! ## Byte payloads: use [`Bytes`], not `Vec<u8>`
//!
//! serde encodes a `Vec<u8>` element by element: the codec is called once per byte, on
//! both sides, which dominates the cost of a large message on every process backend. Send
//! bytes as a [`Bytes`] (or mark a `Vec<u8>` field `#[serde(with = "serde_bytes")]`): it is
//! encoded as one byte string, a length and then one copy, as a message or as a field of
//! any derived type. It is also cheap to clone, and between threads it is moved like every
//! message, never copied.
//!
//! ```
//! use conduit::{channel, Backend, Bytes};
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Chunk { offset: u64, data: Bytes }
//!
//! let (tx, rx) = channel::<Chunk>(Backend::Pipe)?;
//! tx.send(Chunk { offset: 0, data: Bytes::from(vec![1u8; 4096]) }).unwrap();
//! assert_eq!(rx.recv().unwrap().data.len(), 4096);
//! # Ok::<(), conduit::Error>(())
//! ```
//!
//! ## Waiting on many channels
//!
//! Every [`Receiver`] has a readiness descriptor (`AsFd`, `AsRawFd`): readable when
//! [`Receiver::try_recv`] may return something other than `Empty`. Call `try_recv` until
//! `Empty`, then wait on it with `poll`, `epoll` or an event loop. [`Select`] waits on many
//! receivers of any backend and message type at once; with the `tokio` feature,
//! `Receiver::recv_async`, `Sender::send_async` and a `futures_core::Stream` impl run on
//! tokio's reactor over the same descriptors.
//!
//! ```
//! use conduit::{channel, Backend, Select, TryRecvError};
//! let (a_tx, a) = channel::<u32>(Backend::Socket)?;
//! let (_b_tx, b) = channel::<String>(Backend::Shm)?;
//! a_tx.send(1).unwrap();
//! let mut sel = Select::new();
//! let (ai, _bi) = (sel.recv(&a), sel.recv(&b));
//! loop {
//!     let i = sel.ready();
//!     let got = if i == ai { a.try_recv().map(|v| v.to_string()) } else { b.try_recv() };
//!     match got {
//!         Ok(v) => { assert_eq!(v, "1"); break; }
//!         Err(TryRecvError::Empty) => continue, // spurious, or not armed yet: wait again
//!         Err(e) => panic!("{e}"),
//!     }
//! }
//! # Ok::<(), conduit::Error>(())
//! ```
//!
//! ## Guarantees
//!
//! - FIFO per sender; every message sent before a sender drops is delivered before
//!   `Disconnected`. A message is delivered whole or not at all.
//! - A receiver gone: `send` fails and hands the message back; it never blocks forever.
//! - A sender process killed at any instant: the receiver drops its partial message and,
//!   when no sender is left, reports `Disconnected` at once.
//! - Every connection across processes starts with a handshake (protocol version, message
//!   type and codec fingerprint); a mismatch is an error at `connect`.
//! - Messages up to the size limit ([`DEFAULT_MAX_MESSAGE_SIZE`], 64 MiB, see [`Options`])
//!   cross every backend; a peer that announces more is dropped before anything is allocated.
//! - No backend raises `SIGPIPE`.
//! - Both halves are `Send + Sync`. `try_send`/`try_recv` never wait for another thread: while
//!   another clone or thread holds the handle (blocked on a full buffer, or receiving), they
//!   report `Full`/`Empty` at once; `send_timeout`/`recv_timeout` keep their deadline. A
//!   `Serialize` or `Deserialize` that uses its own handle gets a `Reentered` error, not a
//!   deadlock.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod addr;
#[cfg(feature = "tokio")]
mod async_tokio;
mod blob;
mod bytes;
mod bytes_wire;
mod channel;
mod codec;
mod err;
mod flavors;
mod frame;
mod handshake;
mod inherit;
mod options;
mod readiness;
mod ring;
mod select;
mod sync;
mod sys;

// Property drivers beside what they test (more in `ring/`), run by `cargo test` and by the
// cargo-fuzz targets in `fuzz/`.
#[cfg(any(test, fuzzing))]
mod blob_fuzz;
#[cfg(any(test, fuzzing))]
mod codec_fuzz;
#[cfg(any(test, fuzzing))]
mod frame_fuzz;
#[cfg(test)]
mod fuzz_replay;
#[cfg(any(test, fuzzing))]
mod fuzz_support;
#[cfg(any(test, fuzzing))]
mod handshake_fuzz;
#[cfg(feature = "tokio")]
mod tokio_reactor;

/// The property drivers for the cargo-fuzz targets in `fuzz/`, which are one-line shims over
/// these functions (tokio's pattern). Not part of the API.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzz {
    pub use crate::blob_fuzz::blob_frame;
    pub use crate::codec_fuzz::codec;
    pub use crate::frame_fuzz::frame_decode;
    pub use crate::fuzz_support::Counting;
    pub use crate::handshake_fuzz::handshake;
    pub use crate::ring::fuzz_hostile::hostile_ring;
    pub use crate::ring::fuzz_ops::ring_ops;
}

pub use crate::blob::BlobBuf;
pub use crate::bytes::Bytes;
pub use crate::select::{ReadyTimeoutError, Select, TryReadyError};
pub use channel::{channel, channel_with, Backend, Receiver, Sender};
pub use err::{
    Error, RecvError, RecvTimeoutError, SendError, SendFailure, SendTimeoutError, TryRecvError,
    TrySendError,
};
#[cfg(feature = "zenoh")]
pub use options::DEFAULT_ZENOH_WINDOW;
pub use options::{
    Options, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_SHM_CAPACITY, DEFAULT_THREAD_CAPACITY,
};

#[doc(hidden)]
pub use sys::open_fd_count;

/// Anything that crosses a channel. Blanket-implemented; users never implement it by hand.
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Job { id: u64, payload: conduit::Bytes }
/// fn takes_message<T: conduit::Message>() {}
/// takes_message::<Job>();
/// ```
pub trait Message: serde::Serialize + serde::de::DeserializeOwned + Send + 'static {}
impl<T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static> Message for T {}

/// Wire-level helpers for conduit's own tests and fuzz targets: not part of the API, no
/// stability promise.
#[doc(hidden)]
pub mod __testing {
    /// The hello a sender of `T` with size limit `limit` sends first on a connection.
    pub fn hello_for<T>(limit: usize) -> Vec<u8> {
        crate::handshake::Hello::for_type::<T>(limit).encode()
    }

    /// The codec this build encodes with: `postcard-1`, or `bincode-2` with the `bincode`
    /// feature.
    pub const CODEC: &str = crate::codec::CODEC;

    /// The hello a sender of `T` with size limit `limit` would send (or a receiver answer,
    /// accepting) if its build encoded with `codec`: a peer built with the other codec.
    pub fn hello_with_codec<T>(limit: usize, codec: &str) -> Vec<u8> {
        let name = crate::codec::describe_with::<T>(codec);
        let fingerprint = crate::codec::fingerprint_of(&name);
        crate::handshake::Hello::new(crate::handshake::Status::Ok, fingerprint, limit, &name)
            .encode()
    }

    /// Bytes in a stream frame header.
    pub const FRAME_HEADER: usize = crate::frame::HEADER;
    /// The largest piece of a stream frame.
    pub const PIECE_MAX: usize = crate::frame::PIECE_MAX;

    /// A frame header: `len` payload bytes, `last` when the piece ends its message.
    pub fn frame_header(len: u32, last: bool) -> [u8; 5] {
        let mut h = [0u8; 5];
        h[..4].copy_from_slice(&len.to_le_bytes());
        h[4] = u8::from(last);
        h
    }

    /// The encoding of `msg` with the build's codec.
    pub fn encode<T: serde::Serialize>(msg: &T) -> Vec<u8> {
        let mut out = Vec::new();
        crate::codec::encode_into(msg, &mut out).expect("encodable");
        out
    }
}

/// Compiles and runs the README's Rust examples as doc tests, so the README stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
