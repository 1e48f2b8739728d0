//! In-process channels: crossbeam-channel underneath; messages are moved, never encoded.
//!
//! `thread:NAME` endpoints live in a process-wide registry. A bound receiver may see several
//! *generations* of crossbeam channels: a generation ends when every sender connected in it
//! has dropped (so the receiver sees `Disconnected` after draining it, exactly as with an
//! anonymous channel), and the next `connect` starts a new one.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use crossbeam_channel as cb;

use crate::flavors::{Deadline, NotReceived};
use crate::readiness::Signal;
use crate::{
    Error, Options, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError,
    TrySendError,
};

/// The sending half. Clones share one crossbeam sender; the `Arc` lets a bound receiver's
/// registry entry see when the last clone of a generation is gone.
pub(crate) struct ThreadSender<T> {
    tx: Arc<cb::Sender<T>>,
    /// Declared after `tx`, so its drop (a wake-up for a receiver waiting on its
    /// descriptor) comes after crossbeam's sender is gone: the last one's drop is the end.
    signal: Notifier,
}

/// The receiver's readiness signal, as a sender holds it: notified when dropped.
struct Notifier(Arc<Signal>);

impl Drop for Notifier {
    fn drop(&mut self) {
        self.0.notify();
    }
}

impl<T> Clone for ThreadSender<T> {
    fn clone(&self) -> Self {
        ThreadSender {
            tx: Arc::clone(&self.tx),
            signal: Notifier(self.signal.0.clone()),
        }
    }
}

impl<T: Send + 'static> ThreadSender<T> {
    /// The receiver's readiness signal (`send_async` waits on its room signal).
    #[cfg(feature = "tokio")]
    pub(crate) fn signal(&self) -> &Signal {
        &self.signal.0
    }

    // The three sends go straight to crossbeam and map its error to ours in place: no
    // deadline to look at, no intermediate error for the message to travel in.

    #[inline]
    pub(crate) fn send(&self, msg: T) -> Result<(), SendError<T>> {
        self.tx
            .send(msg)
            .map_err(|cb::SendError(m)| SendError::Disconnected(m))?;
        self.signal.0.notify();
        Ok(())
    }

    #[inline]
    pub(crate) fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        self.tx.try_send(msg).map_err(|e| match e {
            cb::TrySendError::Full(m) => TrySendError::Full(m),
            cb::TrySendError::Disconnected(m) => TrySendError::Disconnected(m),
        })?;
        self.signal.0.notify();
        Ok(())
    }

    /// Like crossbeam's (and [`Deadline::after`]), a timeout too long to represent waits
    /// as long as it takes.
    #[inline]
    pub(crate) fn send_timeout(
        &self,
        msg: T,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<T>> {
        self.tx.send_timeout(msg, timeout).map_err(|e| match e {
            cb::SendTimeoutError::Timeout(m) => SendTimeoutError::Timeout(m),
            cb::SendTimeoutError::Disconnected(m) => SendTimeoutError::Disconnected(m),
        })?;
        self.signal.0.notify();
        Ok(())
    }

    pub(crate) fn connect(name: &str) -> Result<Self, Error> {
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        let entry = reg.get(name).ok_or_else(|| Error::NotFound {
            addr: format!("thread:{name}"),
        })?;
        let slot = entry
            .slot
            .downcast_ref::<Slot<T>>()
            .ok_or_else(|| Error::TypeMismatch {
                addr: format!("thread:{name}"),
                local: std::any::type_name::<T>().to_string(),
                remote: entry.type_name.to_string(),
            })?;
        let mut current = slot.current.lock().unwrap_or_else(|p| p.into_inner());
        let signal = Notifier(slot.signal.clone());
        if let Some(tx) = current.upgrade() {
            return Ok(ThreadSender { tx, signal });
        }
        // The previous generation has no sender left: start a new one.
        let (tx, rx) = cb::bounded(slot.capacity);
        let tx = Arc::new(tx);
        *current = Arc::downgrade(&tx);
        if slot.generations.send(rx).is_err() {
            // The receiver is being dropped and has not yet removed its entry.
            drop(current);
            reg.remove(name);
            return Err(Error::NotFound {
                addr: format!("thread:{name}"),
            });
        }
        Ok(ThreadSender { tx, signal })
    }
}

/// The registry entry of one bound name.
struct Slot<T> {
    capacity: usize,
    current: Mutex<Weak<cb::Sender<T>>>,
    generations: cb::Sender<cb::Receiver<T>>,
    signal: Arc<Signal>,
}

/// A slot of any message type, with that type's name for error messages.
struct Entry {
    type_name: &'static str,
    slot: Box<dyn Any + Send>,
}

type Registry = Mutex<HashMap<String, Entry>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// The receiving half.
pub(crate) enum ThreadReceiver<T> {
    Anonymous(cb::Receiver<T>, Arc<Signal>),
    Named(Box<Named<T>>),
}

pub(crate) struct Named<T> {
    name: String,
    signal: Arc<Signal>,
    generations: cb::Receiver<cb::Receiver<T>>,
    state: Mutex<NamedState<T>>,
}

struct NamedState<T> {
    /// The generation being drained, if any.
    current: Option<cb::Receiver<T>>,
    /// Whether any sender has ever connected: before that, `recv` waits for the first one;
    /// after it, no live generation means `Disconnected`.
    ever_connected: bool,
}

pub(crate) fn channel<T: Send + 'static>(opts: &Options) -> (ThreadSender<T>, ThreadReceiver<T>) {
    let (tx, rx) = cb::bounded(opts.thread_capacity());
    let signal = Arc::new(Signal::default());
    (
        ThreadSender {
            tx: Arc::new(tx),
            signal: Notifier(signal.clone()),
        },
        ThreadReceiver::Anonymous(rx, signal),
    )
}

impl<T: Send + 'static> ThreadReceiver<T> {
    pub(crate) fn bind(name: &str, opts: &Options) -> Result<Self, Error> {
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        if reg.contains_key(name) {
            return Err(Error::AddrInUse {
                addr: format!("thread:{name}"),
                reason: "a receiver in this process is bound to that name".to_string(),
            });
        }
        let (gen_tx, gen_rx) = cb::unbounded();
        let signal = Arc::new(Signal::default());
        let slot: Slot<T> = Slot {
            capacity: opts.thread_capacity(),
            current: Mutex::new(Weak::new()),
            generations: gen_tx,
            signal: signal.clone(),
        };
        let entry = Entry {
            type_name: std::any::type_name::<T>(),
            slot: Box::new(slot),
        };
        reg.insert(name.to_string(), entry);
        Ok(ThreadReceiver::Named(Box::new(Named {
            name: name.to_string(),
            signal,
            generations: gen_rx,
            state: Mutex::new(NamedState {
                current: None,
                ever_connected: false,
            }),
        })))
    }

    // As with the sender: an anonymous receiver goes straight to crossbeam; a bound one
    // takes the longer way through its generations, out of line.

    #[inline]
    pub(crate) fn recv(&self) -> Result<T, RecvError> {
        let got = match self {
            ThreadReceiver::Anonymous(rx, _) => {
                rx.recv().map_err(|cb::RecvError| RecvError::Disconnected)
            }
            ThreadReceiver::Named(named) => named
                .recv(Deadline::Never)
                .map_err(NotReceived::into_recv_error),
        };
        if got.is_ok() {
            self.took();
        }
        got
    }

    /// After a message was taken: wakes async senders waiting for room (`send_async`).
    #[inline]
    fn took(&self) {
        #[cfg(feature = "tokio")]
        self.signal().room.wake_if_armed();
    }

    /// The readiness signal senders notify.
    pub(crate) fn signal(&self) -> &Signal {
        match self {
            ThreadReceiver::Anonymous(_, signal) => signal,
            ThreadReceiver::Named(named) => &named.signal,
        }
    }

    /// In readiness mode (the descriptor was asked for), `Empty` arms the signal and looks
    /// again (`readiness.rs`).
    #[inline]
    pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
        let got = match self {
            ThreadReceiver::Anonymous(rx, signal) if !signal.is_on() => {
                Self::try_recv_anonymous(rx)
            }
            _ => self.try_recv_ready(),
        };
        if got.is_ok() {
            self.took();
        }
        got
    }

    /// `try_recv` in readiness mode, or on a bound receiver.
    #[inline(never)]
    fn try_recv_ready(&self) -> Result<T, TryRecvError> {
        let signal = self.signal();
        if !signal.is_on() {
            return self.try_recv_plain();
        }
        // A message taken after the receiver was armed, or after a signal was drained, may
        // have been another waiter's wake-up: wake them to look again.
        let mut wake_others = signal.disarm();
        let mut got = self.try_recv_plain();
        if matches!(got, Err(TryRecvError::Empty)) {
            wake_others |= signal.arm();
            got = self.try_recv_plain();
        }
        if wake_others && !matches!(got, Err(TryRecvError::Empty)) {
            signal.wake();
        }
        got
    }

    fn try_recv_anonymous(rx: &cb::Receiver<T>) -> Result<T, TryRecvError> {
        rx.try_recv().map_err(|e| match e {
            cb::TryRecvError::Empty => TryRecvError::Empty,
            cb::TryRecvError::Disconnected => TryRecvError::Disconnected,
        })
    }

    /// A `try_recv` that arms nothing (async receives wait on wakers, not the descriptor);
    /// wakes async senders waiting for room.
    #[cfg(feature = "tokio")]
    pub(crate) fn try_recv_quiet(&self) -> Result<T, TryRecvError> {
        let got = self.try_recv_plain();
        if got.is_ok() {
            self.took();
        }
        got
    }

    fn try_recv_plain(&self) -> Result<T, TryRecvError> {
        match self {
            ThreadReceiver::Anonymous(rx, _) => Self::try_recv_anonymous(rx),
            ThreadReceiver::Named(named) => named
                .recv(Deadline::Now)
                .map_err(NotReceived::into_try_recv_error),
        }
    }

    /// A timeout too long to represent waits as long as it takes (crossbeam's
    /// `recv_timeout`, [`Deadline::after`]).
    #[inline]
    pub(crate) fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let got = match self {
            ThreadReceiver::Anonymous(rx, _) => rx.recv_timeout(timeout).map_err(|e| match e {
                cb::RecvTimeoutError::Timeout => RecvTimeoutError::Timeout,
                cb::RecvTimeoutError::Disconnected => RecvTimeoutError::Disconnected,
            }),
            ThreadReceiver::Named(named) => named
                .recv(Deadline::after(timeout))
                .map_err(NotReceived::into_recv_timeout_error),
        };
        if got.is_ok() {
            self.took();
        }
        got
    }
}

/// One receive from a generation of a bound receiver.
fn recv_one<T>(rx: &cb::Receiver<T>, deadline: Deadline) -> Result<T, NotReceived> {
    match deadline {
        Deadline::Never => rx.recv().map_err(|_| NotReceived::Disconnected),
        Deadline::Now => rx.try_recv().map_err(|e| match e {
            cb::TryRecvError::Empty => NotReceived::Empty,
            cb::TryRecvError::Disconnected => NotReceived::Disconnected,
        }),
        Deadline::At(at) => rx.recv_deadline(at).map_err(|e| match e {
            cb::RecvTimeoutError::Timeout => NotReceived::Timeout,
            cb::RecvTimeoutError::Disconnected => NotReceived::Disconnected,
        }),
    }
}

impl<T> Named<T> {
    /// Receives from the live generation. The state's lock is held only to look at or change
    /// which generation is live, never while waiting, so threads sharing the receiver wait
    /// in crossbeam, each within its own deadline. Never inlined: the anonymous receiver's
    /// path stays short.
    #[inline(never)]
    fn recv(&self, deadline: Deadline) -> Result<T, NotReceived> {
        loop {
            let rx = self.live(deadline)?;
            match recv_one(&rx, deadline) {
                Err(NotReceived::Disconnected) => self.retire(&rx),
                other => return other,
            }
        }
    }

    /// The live generation: the current one, else the next one a sender started.
    /// `Disconnected` when none is left after a sender has connected; before the first
    /// sender, waits for it within the deadline.
    fn live(&self, deadline: Deadline) -> Result<cb::Receiver<T>, NotReceived> {
        loop {
            {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(rx) = &state.current {
                    return Ok(rx.clone());
                }
                match self.generations.try_recv() {
                    Ok(rx) => {
                        state.current = Some(rx.clone());
                        state.ever_connected = true;
                        return Ok(rx);
                    }
                    Err(_) if state.ever_connected => return Err(NotReceived::Disconnected),
                    Err(_) => {}
                }
            }
            // Nobody has connected yet: wait (outside the lock) until a first generation is
            // there to take, then take it above, where the generations stay in order.
            let mut ready = cb::Select::new();
            ready.recv(&self.generations);
            let arrived = match deadline {
                Deadline::Now => false,
                Deadline::At(at) => ready.ready_deadline(at).is_ok(),
                Deadline::Never => {
                    ready.ready();
                    true
                }
            };
            if !arrived {
                return Err(deadline.recv_expired());
            }
        }
    }

    /// Moves on from `done`, a generation whose senders are all gone and which is drained
    /// (unless another thread already has).
    fn retire(&self, done: &cb::Receiver<T>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.current.as_ref().is_some_and(|c| c.same_channel(done)) {
            state.current = None;
        }
    }
}

impl<T> Drop for Named<T> {
    fn drop(&mut self) {
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        reg.remove(&self.name);
    }
}
