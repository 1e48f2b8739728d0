//! The backends under test, each a way to get a connected `(Sender<T>, Receiver<T>)`, and a
//! few helpers every scenario uses (watchdogs, bounded receives).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use conduit::{channel_with, Backend, Message, Options, Receiver, Sender};

/// How long any single operation that should complete may take before the test fails
/// instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// One way to build a connected pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// `channel(Backend::Thread)`.
    ThreadAnon,
    /// `Receiver::bind("thread:NAME")` + `Sender::connect`.
    ThreadNamed,
    /// `channel(Backend::Socket)`: a socketpair.
    SocketAnon,
    /// `channel(Backend::Pipe)`.
    PipeAnon,
    /// `Receiver::bind("unix:PATH")` + `Sender::connect`.
    Unix,
    /// `Receiver::bind("tcp:127.0.0.1:0")` + `Sender::connect(local_addr)`.
    Tcp,
    /// `channel(Backend::Shm)`: one ring, in-process.
    ShmAnon,
    /// `Receiver::bind("shm:PATH")` + `Sender::connect`: a ring per connected sender.
    ShmBound,
    /// `Receiver::bind("zenoh:KEY")` + `Sender::connect`, through the process's zenoh
    /// session (feature `zenoh`).
    #[cfg_attr(not(feature = "zenoh"), allow(dead_code))]
    Zenoh,
}

/// A connected pair and, for bound setups, the address more senders can connect to.
pub struct Pair<T> {
    pub tx: Sender<T>,
    pub rx: Receiver<T>,
    pub addr: Option<String>,
    pub setup: Setup,
}

/// A process-wide unique `thread:` address.
pub fn thread_addr() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "thread:conformance-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Setup {
    /// True for setups with an address (more senders can `connect`).
    pub fn is_bound(self) -> bool {
        matches!(
            self,
            Setup::ThreadNamed | Setup::Unix | Setup::Tcp | Setup::ShmBound | Setup::Zenoh
        )
    }

    /// True for the shared-memory setups: capacity is the ring's size in bytes.
    pub fn is_shm(self) -> bool {
        matches!(self, Setup::ShmAnon | Setup::ShmBound)
    }

    /// True for setups that encode messages into bytes (streams and shared memory).
    pub fn is_stream(self) -> bool {
        !matches!(self, Setup::ThreadAnon | Setup::ThreadNamed)
    }

    /// How a child process gets its end of this setup (`common::Target`). Threads cannot
    /// cross processes.
    pub fn process_target(self) -> crate::common::Target {
        use crate::common::Target;
        match self {
            Setup::SocketAnon => Target::Socket,
            Setup::PipeAnon => Target::Pipe,
            Setup::Unix => Target::Unix,
            Setup::Tcp => Target::Tcp,
            Setup::ShmAnon => Target::ShmAnon,
            Setup::ShmBound => Target::Shm,
            #[cfg(feature = "zenoh")]
            Setup::Zenoh => Target::Zenoh,
            _ => panic!("{self:?}: this setup does not cross processes"),
        }
    }

    /// A fresh address for this setup to bind (`None` for anonymous setups).
    pub fn fresh_addr(self) -> Option<String> {
        match self {
            Setup::ThreadNamed => Some(thread_addr()),
            Setup::Unix => Some(crate::common::unix_addr()),
            Setup::Tcp => Some("tcp:127.0.0.1:0".to_string()),
            Setup::ShmBound => Some(format!(
                "shm:{}",
                crate::common::temp_dir().join("r.sock").display()
            )),
            #[cfg(feature = "zenoh")]
            Setup::Zenoh => Some(crate::common::zenoh::key("conformance")),
            _ => None,
        }
    }

    /// A connected pair with default options.
    pub fn pair<T: Message>(self) -> Pair<T> {
        self.pair_with(&Options::new())
    }

    /// A connected pair; `opts` apply to both ends (capacity and size limit).
    pub fn pair_with<T: Message>(self, opts: &Options) -> Pair<T> {
        #[cfg(feature = "zenoh")]
        let zenoh_opts;
        #[cfg(feature = "zenoh")]
        let opts = if self == Setup::Zenoh {
            zenoh_opts = opts.clone().zenoh_config(crate::common::zenoh::config());
            &zenoh_opts
        } else {
            opts
        };
        let anon = |backend| {
            channel_with::<T>(backend, opts)
                .unwrap_or_else(|e| panic!("{self:?}: channel_with failed: {e}"))
        };
        let (tx, rx, addr) = match self {
            Setup::ThreadAnon => {
                let (tx, rx) = anon(Backend::Thread);
                (tx, rx, None)
            }
            Setup::SocketAnon => {
                let (tx, rx) = anon(Backend::Socket);
                (tx, rx, None)
            }
            Setup::PipeAnon => {
                let (tx, rx) = anon(Backend::Pipe);
                (tx, rx, None)
            }
            Setup::ShmAnon => {
                let (tx, rx) = anon(Backend::Shm);
                (tx, rx, None)
            }
            Setup::ThreadNamed | Setup::Unix | Setup::Tcp | Setup::ShmBound | Setup::Zenoh => {
                let bind_addr = self.fresh_addr().expect("bound setups have an address");
                let rx = Receiver::<T>::bind_with(&bind_addr, opts)
                    .unwrap_or_else(|e| panic!("{self:?}: bind {bind_addr} failed: {e}"));
                // Thread receivers report no local address: connect to the bound name.
                let addr = rx.local_addr().unwrap_or(bind_addr);
                let tx = Sender::<T>::connect_with(&addr, opts)
                    .unwrap_or_else(|e| panic!("{self:?}: connect {addr} failed: {e}"));
                (tx, rx, Some(addr))
            }
        };
        Pair {
            tx,
            rx,
            addr,
            setup: self,
        }
    }
}

impl<T: Message> Pair<T> {
    /// An independently connected sender, for bound setups; `None` for anonymous ones.
    pub fn connect(&self) -> Option<Sender<T>> {
        let addr = self.addr.as_deref()?;
        Some(
            Sender::connect(addr)
                .unwrap_or_else(|e| panic!("{:?}: connect {addr} failed: {e}", self.setup)),
        )
    }

    /// Receives one message, failing the test (naming the setup) if none arrives in time.
    pub fn recv_ok(&self) -> T {
        match self.rx.recv_timeout(PATIENCE) {
            Ok(v) => v,
            Err(e) => panic!(
                "{:?}: expected a message within {PATIENCE:?}, got {e:?}",
                self.setup
            ),
        }
    }
}

/// Runs `f` on another thread and returns its result, failing the test if it has not
/// returned within `limit` (the thread is left behind; the test has failed anyway).
pub fn within<R: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    let (done_tx, done_rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = done_tx.send(f());
    });
    match done_rx.recv_timeout(limit) {
        Ok(r) => {
            let _ = worker.join();
            r
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: did not return within {limit:?} (blocked)")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the worker either sends or panics"),
        },
    }
}

/// Joins a helper thread, re-raising its panic so the failure message is kept.
pub fn join<R>(handle: std::thread::JoinHandle<R>) -> R {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
