//! The `zenoh:` receiver: its liveliness token, the hello queryable, the subscription to
//! every sender's messages, and the incoming queue `recv` takes from.
//!
//! Engine callbacks (publications, queries, liveliness changes) only move bytes into the
//! queue and never wait: the credit window bounds what each sender may have queued. The
//! queue is a mutex and a condition variable, and the readiness descriptor (`ready.rs`) is
//! written at `Inbox::changed`, the one place every arrival and every end of a sender passes.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use zenoh::bytes::ZBytes;
use zenoh::liveliness::LivelinessToken;
use zenoh::pubsub::Subscriber;
use zenoh::qos::CongestionControl;
use zenoh::query::{Query, Queryable};
use zenoh::sample::{Sample, SampleKind};
use zenoh::{Session, Wait};

use super::ready::MutexSignal;
use super::{
    answer_bytes, credit_key, fresh_id, io_error, last_chunk, parse_query, session, DATA,
    DISMISSED, HUNGRY, OP_BYE, OP_HELLO, OVERHEAD,
};
use crate::codec::Decode;
use crate::flavors::{decode_shared, Backoff, Deadline, NotReceived, SHARE_FROM};
use crate::handshake::{self, Hello};
use crate::{Error, Options};

/// A bound `zenoh:KEY` receiver.
pub(crate) struct ZenohReceiver {
    inbox: Arc<Inbox>,
    key: String,
    // Declared in this order and undeclared in reverse (fields drop in order: the token
    // last, so no sender can be accepted after the receiver stops listening).
    _queryable: Queryable<()>,
    _messages: Subscriber<()>,
    _senders: Subscriber<()>,
    _token: LivelinessToken,
}

/// What the engine's callbacks and `recv` share.
struct Inbox {
    state: Mutex<State>,
    /// Signalled when a message arrives or a sender ends.
    ready: Condvar,
    /// The readiness descriptor, written at the same places as `ready`.
    signal: MutexSignal,
    /// Counts arrivals and ends (changed under `state`'s lock), for a receiver that spins.
    changes: AtomicU64,
    session: Session,
    key: String,
    /// Credit window per sender, in cost units.
    window: u64,
    /// The receiver's size limit, in encoded bytes.
    limit: usize,
    /// This receiver's hello: type fingerprint and size limit.
    mine: Hello,
    id: String,
}

#[derive(Default)]
struct State {
    /// Messages in arrival order, each with the id of its sender (`[DATA][encoded]`).
    queue: VecDeque<(Arc<str>, ZBytes)>,
    /// The senders accepted and not yet gone.
    live: HashMap<Arc<str>, Peer>,
    /// A sender has been accepted once: from then on, no live sender and an empty queue
    /// is `Disconnected`.
    ever: bool,
}

/// The credit kept for one sender.
struct Peer {
    /// Cost taken by `recv` so far.
    taken: u64,
    /// Cost last reported to the sender.
    reported: u64,
    /// The sender asked for credit and has not been answered.
    hungry: bool,
    credit_key: String,
}

/// Credit to publish once the lock is released.
type Credit = Option<(String, u64)>;

impl ZenohReceiver {
    pub(crate) fn bind<T>(addr: &str, key: &str, opts: &Options) -> Result<Self, Error> {
        let session = session::session(addr, opts)?;
        let io = |what: &str, e| Error::io(format!("{what} for {addr:?}"), io_error(e));
        let id = fresh_id(&session);
        let window = opts
            .capacity
            .unwrap_or(crate::options::DEFAULT_ZENOH_WINDOW)
            .max(1) as u64;
        let inbox = Arc::new(Inbox {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            signal: MutexSignal::default(),
            changes: AtomicU64::new(0),
            session: session.clone(),
            key: key.to_string(),
            window,
            limit: opts.max_message_size,
            mine: Hello::for_type::<T>(opts.max_message_size),
            id: id.clone(),
        });

        // Claim the key: our token first, then look for any other receiver's. Two binds
        // racing both see each other and both fail, rather than both succeeding.
        let token = session
            .liveliness()
            .declare_token(format!("{key}/rx/{id}"))
            .wait()
            .map_err(|e| io("declaring the receiver's liveliness token", e))?;
        let replies = session
            .liveliness()
            .get(format!("{key}/rx/*"))
            .timeout(super::QUERY_TIMEOUT)
            .wait()
            .map_err(|e| io("looking for another receiver", e))?;
        while let Ok(reply) = replies.recv() {
            if let Ok(sample) = reply.result() {
                if last_chunk(sample.key_expr().as_str()) != id {
                    return Err(Error::AddrInUse {
                        addr: addr.to_string(),
                        reason: "a live receiver is bound at this zenoh key".to_string(),
                    });
                }
            }
        }

        let watch = Arc::clone(&inbox);
        let senders = session
            .liveliness()
            .declare_subscriber(format!("{key}/tx/*"))
            .history(true)
            .callback(move |sample: Sample| {
                if sample.kind() == SampleKind::Delete {
                    watch.end(last_chunk(sample.key_expr().as_str()));
                }
            })
            .wait()
            .map_err(|e| io("watching the senders' liveliness", e))?;
        let feed = Arc::clone(&inbox);
        let messages = session
            .declare_subscriber(format!("{key}/m"))
            .callback(move |sample: Sample| feed.arrived(sample))
            .wait()
            .map_err(|e| io("subscribing to the senders' messages", e))?;
        let door = Arc::clone(&inbox);
        let queryable = session
            .declare_queryable(format!("{key}/hello"))
            .callback(move |query: Query| door.query(query))
            .wait()
            .map_err(|e| io("declaring the hello queryable", e))?;
        Ok(ZenohReceiver {
            inbox,
            key: key.to_string(),
            _queryable: queryable,
            _messages: messages,
            _senders: senders,
            _token: token,
        })
    }

    pub(crate) fn local_addr(&self) -> Option<String> {
        Some(format!("zenoh:{}", self.key))
    }

    /// The readiness descriptor (`Receiver`'s `AsFd`): readable when `try_recv` may not be
    /// `Empty`.
    pub(crate) fn ready_fd(&self) -> std::io::Result<std::os::fd::BorrowedFd<'_>> {
        self.inbox.signal.fd()
    }

    /// Whether the last `try_recv` found nothing and nothing arrived since.
    pub(crate) fn is_armed(&self) -> bool {
        self.inbox.signal.is_armed()
    }

    /// Takes the next message and decodes it with `decode`. A message that does not decode
    /// ends its sender (the rest of what it sent is dropped) and the wait goes on.
    pub(crate) fn recv_with(
        &self,
        deadline: Deadline,
        decode: &mut Decode<'_>,
    ) -> Result<(), NotReceived> {
        let inbox = &*self.inbox;
        let mut state = inbox.state.lock();
        let mut spun = false;
        loop {
            if let Some((from, bytes)) = state.queue.pop_front() {
                let credit = inbox.take(&mut state, &from, bytes.len());
                drop(state);
                inbox.publish(credit);
                match decode_message(&bytes, decode) {
                    Ok(()) => return Ok(()),
                    Err(_) => {
                        state = inbox.state.lock();
                        let dismissed = inbox.drop_sender(&mut state, &from);
                        drop(state);
                        inbox.dismiss(dismissed);
                        state = inbox.state.lock();
                        continue;
                    }
                }
            }
            if state.ever && state.live.is_empty() {
                return Err(NotReceived::Disconnected);
            }
            if matches!(deadline, Deadline::Now) {
                // Under the lock every change takes: the next one writes the descriptor.
                inbox.signal.arm();
                return Err(NotReceived::Empty);
            }
            // Spin a little before sleeping: messages come in bursts from the engine's
            // receive task, and waking a sleeper costs more than the spin.
            if !spun {
                spun = true;
                let seen = inbox.changes.load(Ordering::Relaxed);
                drop(state);
                let mut backoff = Backoff::new();
                // Relaxed: the counter only says when to look; what changed is read under
                // the mutex, whose acquire orders it after the push that counted it.
                while inbox.changes.load(Ordering::Relaxed) == seen && backoff.spin() {}
                state = inbox.state.lock();
                continue;
            }
            match deadline {
                Deadline::Now => unreachable!("try_recv returned above"),
                Deadline::Never => inbox.ready.wait(&mut state),
                Deadline::At(at) => {
                    if inbox.ready.wait_until(&mut state, at).timed_out() && state.queue.is_empty()
                    {
                        return Err(if state.ever && state.live.is_empty() {
                            NotReceived::Disconnected
                        } else {
                            deadline.recv_expired()
                        });
                    }
                }
            }
        }
    }
}

/// Decodes the message in a publication (`[encoded][DATA]`). A message the engine handed
/// over in pieces is joined into a vector of its own, which a large one is decoded from
/// so that a [`crate::Bytes`] in it shares it instead of copying again.
fn decode_message(bytes: &ZBytes, decode: &mut Decode<'_>) -> Result<(), String> {
    match bytes.to_bytes() {
        Cow::Borrowed(b) => decode(&b[..b.len() - 1]),
        Cow::Owned(mut v) => {
            v.truncate(v.len() - 1);
            if v.len() >= SHARE_FROM {
                decode_shared(&mut v, decode)
            } else {
                decode(&v)
            }
        }
    }
}

impl Inbox {
    /// A publication on `KEY/m` (its sender's id the attachment, its kind its last byte): a
    /// message, or a hungry sender. Anything else, and anything without the id of a sender
    /// accepted, is dropped; a malformed or oversized message ends its sender. The length
    /// is checked before the bytes are touched.
    fn arrived(&self, sample: Sample) {
        let Some(id) = sample.attachment().map(ZBytes::to_bytes) else {
            return;
        };
        let Ok(from) = std::str::from_utf8(&id) else {
            return;
        };
        let payload = sample.payload();
        let mut state = self.state.lock();
        let Some((from, _)) = state.live.get_key_value(from) else {
            return;
        };
        let from = Arc::clone(from);
        let len = payload.len();
        if len == 0 || len - 1 > self.limit {
            let dismissed = self.drop_sender(&mut state, &from);
            drop(state);
            self.dismiss(dismissed);
            return;
        }
        let kind = payload.slices().last().and_then(|s| s.last().copied());
        let credit = match kind {
            Some(DATA) => {
                state.queue.push_back((from, sample.payload().clone()));
                self.changed();
                None
            }
            Some(HUNGRY) if len == 1 => {
                let peer = state.live.get_mut(&from).expect("looked up above");
                if peer.taken > peer.reported {
                    peer.reported = peer.taken;
                    Some((peer.credit_key.clone(), peer.taken))
                } else {
                    peer.hungry = true;
                    None
                }
            }
            _ => {
                let dismissed = self.drop_sender(&mut state, &from);
                drop(state);
                self.dismiss(dismissed);
                return;
            }
        };
        drop(state);
        self.publish(credit);
    }

    /// A query on `KEY/hello`: a sender's hello (answered with ours, accepted when the
    /// types match) or its goodbye (answered once every message before it is queued).
    fn query(&self, query: Query) {
        let Some(payload) = query.payload() else {
            return;
        };
        let bytes = payload.to_bytes();
        let Some((op, id, rest)) = parse_query(&bytes) else {
            return;
        };
        let answer = match op {
            OP_HELLO => {
                let Ok(Some((request, _))) = Hello::parse(rest) else {
                    return;
                };
                let (reply, keep) = handshake::answer(&request, &self.mine);
                if keep {
                    let mut state = self.state.lock();
                    state.ever = true;
                    let key = credit_key(&self.key, id);
                    state.live.entry(Arc::from(id)).or_insert(Peer {
                        taken: 0,
                        reported: 0,
                        hungry: false,
                        credit_key: key,
                    });
                }
                answer_bytes(self.window, &self.id, &reply)
            }
            OP_BYE => {
                self.end(id);
                Vec::new()
            }
            _ => return,
        };
        // The sender gives up after its timeout if the answer is lost.
        let _ = query.reply(query.key_expr().clone(), answer).wait();
    }

    /// Sender `id` is gone (goodbye or lost liveliness): what it sent stays queued.
    fn end(&self, id: &str) {
        let mut state = self.state.lock();
        if state.live.remove(id).is_some() {
            self.changed();
            self.ready.notify_all();
        }
    }

    /// Ends sender `id` for sending something malformed: it is forgotten, and so is what it
    /// has queued. Returns its credit key, to tell it so once the lock is released.
    fn drop_sender(&self, state: &mut State, id: &Arc<str>) -> Option<String> {
        let peer = state.live.remove(id);
        state.queue.retain(|(from, _)| from != id);
        self.changed();
        self.ready.notify_all();
        peer.map(|p| p.credit_key)
    }

    /// Tells a dropped sender it is dropped (outside the lock), so that its sends fail with
    /// `Disconnected` instead of waiting for credit that will never come.
    fn dismiss(&self, credit_key: Option<String>) {
        if let Some(key) = credit_key {
            let _ = self
                .session
                .put(key, vec![DISMISSED])
                .congestion_control(CongestionControl::Block)
                .wait();
        }
    }

    /// Something a waiting receiver must see happened (called under `state`'s lock).
    fn changed(&self) {
        // Relaxed: a hint for a spinning receiver, which then reads under the lock.
        self.changes.fetch_add(1, Ordering::Relaxed);
        self.ready.notify_one();
        self.signal.notify();
    }

    /// `recv` took `len` bytes from `from`: the credit to report, if it is time.
    fn take(&self, state: &mut State, from: &str, len: usize) -> Credit {
        let peer = state.live.get_mut(from)?;
        peer.taken += len as u64 + OVERHEAD;
        if peer.hungry || peer.taken - peer.reported >= self.window / 4 {
            peer.hungry = false;
            peer.reported = peer.taken;
            return Some((peer.credit_key.clone(), peer.taken));
        }
        None
    }

    /// Publishes credit (outside the lock). A credit lost with its sender is no loss.
    fn publish(&self, credit: Credit) {
        if let Some((key, taken)) = credit {
            let _ = self
                .session
                .put(key, taken.to_le_bytes().to_vec())
                .congestion_control(CongestionControl::Block)
                .wait();
        }
    }
}
