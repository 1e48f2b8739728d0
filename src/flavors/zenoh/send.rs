//! The `zenoh:` sender: finds the receiver and checks types with a hello query, publishes
//! messages within its credit window, and says goodbye when its last clone drops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::Serialize;
use zenoh::bytes::ZBytes;
use zenoh::liveliness::LivelinessToken;
use zenoh::pubsub::{Publisher, Subscriber};
use zenoh::qos::CongestionControl;
use zenoh::query::ConsolidationMode;
use zenoh::sample::{Sample, SampleKind};
use zenoh::{Session, Wait};

use super::ready::MutexSignal;
use super::{
    credit_key, fresh_id, io_error, last_chunk, parse_answer, query_bytes, session, DATA,
    DISMISSED, FIND_RECEIVER, HUNGRY, OP_BYE, OP_HELLO, OVERHEAD, QUERY_TIMEOUT,
};
use crate::flavors::{Deadline, NotSent};
use crate::handshake::{self, Hello, HelloError, VERSION};
use crate::{codec, Error, Options, SendFailure};

/// A connected `zenoh:KEY` sender; clones share the connection.
#[derive(Clone)]
pub(crate) struct ZenohSender {
    conn: Arc<Conn>,
}

/// One connection: dropped with the last clone, which says goodbye.
struct Conn {
    session: Session,
    key: String,
    id: String,
    /// `id` as every publication's attachment (clones share its bytes).
    attachment: ZBytes,
    publisher: Publisher<'static>,
    flow: Arc<Flow>,
    /// The smaller of this sender's and the receiver's size limits.
    limit: usize,
    /// Cost this sender may have in flight, as the receiver set it.
    window: u64,
    _credit: Subscriber<()>,
    _receiver: Subscriber<()>,
    /// Taken (undeclared) by the drop once the goodbye is answered.
    token: Option<LivelinessToken>,
}

/// Credit and the receiver's liveliness, shared with the engine's callbacks.
struct Flow {
    state: Mutex<FlowState>,
    /// Signalled when credit arrives or the receiver goes.
    changed: Condvar,
    /// Written at the same places as `changed` while an async send waits (`ready.rs`).
    room: MutexSignal,
}

#[derive(Default)]
struct FlowState {
    /// Cost published so far.
    sent: u64,
    /// Cost the receiver has taken, as last reported.
    taken: u64,
    /// `taken` when "hungry" was last published: one request per report.
    asked_at: Option<u64>,
    /// The receiver this sender was accepted by, once known.
    receiver: Option<String>,
    /// Receivers whose liveliness was lost (before the accepting one was known).
    lost: Vec<String>,
    gone: bool,
}

impl ZenohSender {
    pub(crate) fn connect<T>(addr: &str, key: &str, opts: &Options) -> Result<Self, Error> {
        let session = session::session(addr, opts)?;
        let io = |what: &str, e| Error::io(format!("{what} for {addr:?}"), io_error(e));
        let id = fresh_id(&session);
        let flow = Arc::new(Flow {
            state: Mutex::new(FlowState::default()),
            changed: Condvar::new(),
            room: MutexSignal::default(),
        });

        // Watch receivers and credit before the hello, so nothing is missed after it.
        let watch = Arc::clone(&flow);
        let receiver = session
            .liveliness()
            .declare_subscriber(format!("{key}/rx/*"))
            .history(true)
            .callback(move |sample: Sample| {
                if sample.kind() == SampleKind::Delete {
                    watch.lost(last_chunk(sample.key_expr().as_str()));
                }
            })
            .wait()
            .map_err(|e| io("watching the receiver's liveliness", e))?;
        let grant = Arc::clone(&flow);
        let credit = session
            .declare_subscriber(credit_key(key, &id))
            .callback(move |sample: Sample| grant.credit(&sample))
            .wait()
            .map_err(|e| io("subscribing to credit", e))?;
        let token = session
            .liveliness()
            .declare_token(format!("{key}/tx/{id}"))
            .wait()
            .map_err(|e| io("declaring the sender's liveliness token", e))?;
        let publisher = session
            .declare_publisher(format!("{key}/m"))
            .congestion_control(CongestionControl::Block)
            .wait()
            .map_err(|e| io("declaring the publisher", e))?;

        let mine = Hello::for_type::<T>(opts.max_message_size);
        let (window, receiver_id, theirs) = hello(&session, addr, key, &id, &mine)?;
        {
            let mut state = flow.state.lock();
            state.gone = state.lost.contains(&receiver_id);
            state.receiver = Some(receiver_id);
        }
        Ok(ZenohSender {
            conn: Arc::new(Conn {
                session,
                key: key.to_string(),
                attachment: ZBytes::from(id.as_bytes()),
                id,
                publisher,
                flow,
                limit: opts.max_message_size.min(theirs.limit as usize),
                window: window.max(1),
                _credit: credit,
                _receiver: receiver,
                token: Some(token),
            }),
        })
    }

    /// After a `try_send` found no credit: a descriptor that becomes readable when credit
    /// comes back or the receiver goes (`send_async` waits on it), or `None` when the next
    /// `try_send` should look at once (the receiver is gone, nothing is in flight, or
    /// credit came since and the sender has not asked for more: its `try_send` asks).
    #[cfg(feature = "tokio")]
    pub(crate) fn arm_room(&self) -> std::io::Result<Option<std::os::fd::OwnedFd>> {
        let flow = &*self.conn.flow;
        flow.room.fd()?;
        let state = flow.state.lock();
        if state.gone || state.sent == state.taken || state.asked_at != Some(state.taken) {
            return Ok(None);
        }
        // Under the lock `credit` and `lost` take: the next of them writes the descriptor.
        flow.room.arm();
        flow.room.dup().map(Some)
    }

    /// Encodes and publishes `msg`, waiting for credit until `deadline`.
    pub(crate) fn send<T: Serialize>(&self, deadline: Deadline, msg: &T) -> Result<(), NotSent> {
        let conn = &*self.conn;
        let mut buf = Vec::with_capacity(64);
        codec::encode_into(msg, &mut buf).map_err(NotSent::encode)?;
        let size = buf.len();
        // The kind goes last, so the receiver can drop it from a joined message for free.
        buf.push(DATA);
        if size > conn.limit {
            return Err(NotSent::Failed(SendFailure::TooLarge {
                size,
                limit: conn.limit,
            }));
        }
        conn.reserve(buf.len() as u64 + OVERHEAD, deadline)?;
        conn.publish(buf)
    }
}

impl Conn {
    /// Publishes `[body][kind]` on `KEY/m` as this sender.
    fn publish(&self, publication: Vec<u8>) -> Result<(), NotSent> {
        self.publisher
            .put(publication)
            .attachment(self.attachment.clone())
            .wait()
            .map_err(|e| NotSent::Failed(SendFailure::Io(io_error(e))))
    }

    /// Waits until `cost` fits in the window (or nothing is in flight), then counts it
    /// as sent. Out of credit, asks the receiver for it once per report.
    fn reserve(&self, cost: u64, deadline: Deadline) -> Result<(), NotSent> {
        let mut state = self.flow.state.lock();
        loop {
            if state.gone {
                return Err(NotSent::Disconnected);
            }
            let in_flight = state.sent - state.taken;
            if in_flight == 0 || in_flight + cost <= self.window {
                state.sent += cost;
                return Ok(());
            }
            if state.asked_at != Some(state.taken) {
                state.asked_at = Some(state.taken);
                drop(state);
                self.publish(vec![HUNGRY])?;
                state = self.flow.state.lock();
                continue;
            }
            match deadline {
                Deadline::Now => return Err(NotSent::Full),
                Deadline::Never => self.flow.changed.wait(&mut state),
                Deadline::At(at) => {
                    if self.flow.changed.wait_until(&mut state, at).timed_out() {
                        let in_flight = state.sent - state.taken;
                        if !state.gone && in_flight != 0 && in_flight + cost > self.window {
                            return Err(NotSent::Timeout);
                        }
                    }
                }
            }
        }
    }
}

impl Flow {
    /// A credit report (the total cost the receiver has taken), or word that the receiver
    /// dropped this sender.
    fn credit(&self, sample: &Sample) {
        let bytes = sample.payload().to_bytes();
        if bytes[..] == [DISMISSED] {
            let mut state = self.state.lock();
            state.gone = true;
            self.changed.notify_all();
            return;
        }
        let Ok(taken) = <[u8; 8]>::try_from(&bytes[..]) else {
            return;
        };
        let taken = u64::from_le_bytes(taken);
        let mut state = self.state.lock();
        // Reports only grow, and never past what was sent: a bogus one cannot overdraw.
        if taken > state.taken && taken <= state.sent {
            state.taken = taken;
            self.changed.notify_all();
            self.room.notify();
        }
    }

    /// A receiver's liveliness was lost.
    fn lost(&self, id: &str) {
        let mut state = self.state.lock();
        match &state.receiver {
            Some(ours) if ours == id => {
                state.gone = true;
                self.changed.notify_all();
                self.room.notify();
            }
            Some(_) => {}
            None => state.lost.push(id.to_string()),
        }
    }
}

impl Drop for Conn {
    /// Says goodbye: the answer comes once every message published before it has reached
    /// the receiver, so a process that exits after dropping its sender loses nothing.
    /// Bounded by [`QUERY_TIMEOUT`]; skipped when the receiver is gone.
    fn drop(&mut self) {
        if self.flow.state.lock().gone {
            return;
        }
        let bye = query_bytes(OP_BYE, &self.id, &[]);
        if let Ok(replies) = self
            .session
            .get(format!("{}/hello", self.key))
            .payload(bye)
            .consolidation(ConsolidationMode::None)
            .timeout(QUERY_TIMEOUT)
            .wait()
        {
            while replies.recv().is_ok() {}
        }
        // The token goes only after the goodbye was answered: the receiver must see the
        // goodbye, behind every message, before it sees the token go.
        self.token.take();
    }
}

/// Sends the hello until a receiver answers or [`FIND_RECEIVER`] passes: the window, the
/// receiver's id and its hello, or why not.
fn hello(
    session: &Session,
    addr: &str,
    key: &str,
    id: &str,
    mine: &Hello,
) -> Result<(u64, String, Hello), Error> {
    let request = query_bytes(OP_HELLO, id, &mine.encode());
    let give_up = Instant::now() + FIND_RECEIVER;
    loop {
        let replies = session
            .get(format!("{key}/hello"))
            .payload(request.clone())
            .consolidation(ConsolidationMode::None)
            .timeout(QUERY_TIMEOUT)
            .wait()
            .map_err(|e| Error::io(format!("sending the hello to {addr:?}"), io_error(e)))?;
        if let Ok(reply) = replies.recv() {
            let sample = reply.result().map_err(|_| {
                Error::protocol(addr, "the receiver answered the hello with an error")
            })?;
            return match parse_answer(&sample.payload().to_bytes()) {
                Ok((window, receiver, theirs)) => {
                    handshake::verdict(addr, mine, theirs, "the receiver refused this sender")
                        .map(|theirs| (window, receiver, theirs))
                }
                Err(HelloError::Version(v)) => Err(Error::VersionMismatch {
                    addr: addr.to_string(),
                    local: VERSION,
                    remote: v,
                }),
                Err(e) => Err(Error::protocol(addr, e.to_string())),
            };
        }
        if Instant::now() >= give_up {
            return Err(Error::NotFound {
                addr: addr.to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
