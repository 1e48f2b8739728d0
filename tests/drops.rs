//! Teardown with messages in flight drops every message
//! exactly once.
//!
//! [`Counted`] counts, per id, how many instances were made (by [`Counted::new`] or by
//! decoding) and how many were dropped, in a ledger and in two `static AtomicUsize` totals.
//! Once every channel end is gone, every id must be balanced (made = dropped: never leaked,
//! never dropped twice), and:
//!
//! - on the thread backend a value is moved, never copied: each id is made exactly once,
//!   whether it was received, left queued when an end dropped, or handed back inside a
//!   `SendError`/`TrySendError`/`SendTimeoutError`;
//! - on the encoding backends the sender's value is dropped once (by `send`, or inside the
//!   error that hands it back) and each *received* message is decoded exactly once (made
//!   twice in all); a message still in flight when the receiver drops is never decoded
//!   (made once).
//!
//! The in-process scenarios run every backend; the cross-process one runs a sender child
//! (this binary re-run as `drop_child`) against a receiver here that drops mid-stream.
//! Every test runs in a child process of its own, so the process-wide counters see only it.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conduit::{
    channel_with, Backend, Options, Receiver, RecvTimeoutError, SendTimeoutError, Sender,
    TrySendError,
};
use serde::{Deserialize, Serialize};

// ---- the counted message -------------------------------------------------------------------

static MADE: AtomicUsize = AtomicUsize::new(0);
static DROPPED: AtomicUsize = AtomicUsize::new(0);

/// Per id: (made, dropped).
fn ledger() -> std::sync::MutexGuard<'static, BTreeMap<u64, (u32, u32)>> {
    static LEDGER: Mutex<BTreeMap<u64, (u32, u32)>> = Mutex::new(BTreeMap::new());
    LEDGER.lock().unwrap_or_else(|p| p.into_inner())
}

/// A message that records its making and its drop.
#[derive(Serialize, Deserialize)]
#[serde(from = "Wire")]
struct Counted {
    id: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// What `Counted` decodes through, so that decoding counts as making one.
#[derive(Deserialize)]
struct Wire {
    id: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

impl From<Wire> for Counted {
    fn from(w: Wire) -> Self {
        Counted::record(w.id, w.data)
    }
}

impl Counted {
    fn new(id: u64, len: usize) -> Self {
        Counted::record(id, common::content(id, len))
    }

    fn record(id: u64, data: Vec<u8>) -> Self {
        MADE.fetch_add(1, Ordering::SeqCst);
        ledger().entry(id).or_default().0 += 1;
        Counted { id, data }
    }

    fn intact(&self) -> bool {
        self.data == common::content(self.id, self.data.len())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::SeqCst);
        ledger().entry(self.id).or_default().1 += 1;
    }
}

/// Waits up to 5 s for every counted value to be dropped (a stream sender's flush thread may
/// still hold a committed tail for a moment), then checks the ledger: every id balanced, the
/// totals equal. Returns the ledger and clears it for the next setup.
fn settled_ledger(what: &str) -> BTreeMap<u64, (u32, u32)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while MADE.load(Ordering::SeqCst) != DROPPED.load(Ordering::SeqCst) && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (made, dropped) = (MADE.load(Ordering::SeqCst), DROPPED.load(Ordering::SeqCst));
    let book = std::mem::take(&mut *ledger());
    let unbalanced: Vec<_> = book.iter().filter(|(_, (m, d))| m != d).take(10).collect();
    assert!(
        unbalanced.is_empty(),
        "{what}: ids made and dropped a different number of times (id, (made, dropped)): \
         {unbalanced:?}"
    );
    assert_eq!(made, dropped, "{what}: totals made and dropped");
    let total: u32 = book.values().map(|(m, _)| m).sum();
    assert_eq!(
        total as usize,
        made - MADE_BEFORE.swap(made, Ordering::SeqCst),
        "{what}: the ledger agrees with the totals"
    );
    book
}

/// `MADE` at the previous [`settled_ledger`].
static MADE_BEFORE: AtomicUsize = AtomicUsize::new(0);

/// Checks how many times each id was made: `received` ids once per copy the backend makes
/// (1 when values are moved, 2 when encoded: the sender's and the decoded one), every other
/// id exactly once (never decoded).
fn expect_makes(book: &BTreeMap<u64, (u32, u32)>, received: &[u64], encoded: bool, what: &str) {
    let per_received = if encoded { 2 } else { 1 };
    for (id, (made, _)) in book {
        let want = if received.contains(id) {
            per_received
        } else {
            1
        };
        assert_eq!(
            *made,
            want,
            "{what}: message {id} was made {made} times (received: {})",
            received.contains(id)
        );
    }
    for id in received {
        assert!(book.contains_key(id), "{what}: received {id} unrecorded");
    }
}

// ---- in-process setups -------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    ThreadAnon,
    ThreadNamed,
    Socket,
    Pipe,
    Unix,
    Tcp,
    ShmAnon,
    ShmBound,
}

const SETUPS: [Setup; 8] = [
    Setup::ThreadAnon,
    Setup::ThreadNamed,
    Setup::Socket,
    Setup::Pipe,
    Setup::Unix,
    Setup::Tcp,
    Setup::ShmAnon,
    Setup::ShmBound,
];

impl Setup {
    fn encoded(self) -> bool {
        !matches!(self, Setup::ThreadAnon | Setup::ThreadNamed)
    }

    /// A connected pair, and the address for more senders (bound setups).
    fn pair(self, opts: &Options) -> (Sender<Counted>, Receiver<Counted>, Option<String>) {
        let anon = |b| {
            let (tx, rx) = channel_with::<Counted>(b, opts).expect("channel");
            (tx, rx, None)
        };
        let addr = match self {
            Setup::ThreadAnon => return anon(Backend::Thread),
            Setup::Socket => return anon(Backend::Socket),
            Setup::Pipe => return anon(Backend::Pipe),
            Setup::ShmAnon => return anon(Backend::Shm),
            Setup::ThreadNamed => {
                static N: AtomicUsize = AtomicUsize::new(0);
                format!("thread:drops-{}", N.fetch_add(1, Ordering::Relaxed))
            }
            Setup::Unix => common::unix_addr(),
            Setup::Tcp => "tcp:127.0.0.1:0".to_string(),
            Setup::ShmBound => format!("shm:{}", common::temp_dir().join("r.sock").display()),
        };
        let rx = Receiver::<Counted>::bind_with(&addr, opts).expect("bind");
        let addr = rx.local_addr().unwrap_or(addr);
        let tx = Sender::<Counted>::connect_with(&addr, opts).expect("connect");
        (tx, rx, Some(addr))
    }
}

/// Receives `n` messages, checking they are `ids` in order and intact; drops them.
fn receive_in_order(rx: &Receiver<Counted>, ids: impl Iterator<Item = u64>, what: &str) {
    for id in ids {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(m) => assert!(
                m.id == id && m.intact(),
                "{what}: expected message {id}, got {} (intact: {})",
                m.id,
                m.intact()
            ),
            Err(e) => panic!("{what}: message {id}: {e}"),
        }
    }
}

/// Sends fresh ids from `*next` until a send fails (the receiver is gone), checking the
/// error hands back the very value; then one `try_send` and one `send_timeout`, which must
/// fail too. Returns the ids whose sends succeeded.
fn send_until_refused(tx: &Sender<Counted>, next: &mut u64, what: &str) -> Vec<u64> {
    let mut accepted = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let id = *next;
        *next += 1;
        match tx.send(Counted::new(id, 100)) {
            Ok(()) => accepted.push(id),
            Err(e) => {
                assert!(e.is_disconnected(), "{what}: send {id}: {e}");
                // Taken out of the error and dropped here.
                let back = e.into_inner();
                assert_eq!(back.id, id, "{what}: the error hands back the message");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: sends succeed with no receiver"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let id = *next;
    *next += 1;
    // Dropped together with the error.
    match tx.try_send(Counted::new(id, 100)) {
        Err(TrySendError::Disconnected(m)) => assert_eq!(m.id, id, "{what}"),
        other => panic!(
            "{what}: try_send with no receiver: {:?}",
            other.map_err(|e| e.to_string())
        ),
    }
    let id = *next;
    *next += 1;
    let e = tx
        .send_timeout(Counted::new(id, 100), Duration::from_millis(10))
        .expect_err("send_timeout with no receiver");
    assert!(e.is_disconnected(), "{what}: {e}");
    drop(e);
    accepted
}

/// Runs `body` in a child process of its own (the counters are process-wide); the child is
/// this test binary running only `test` with the role `isolated`.
fn isolated(test: &str, body: impl FnOnce()) {
    match common::role().as_deref() {
        None => {
            let mut cmd = common::child_command(test, "isolated");
            common::die_with_parent(&mut cmd);
            let child = common::Reaped::new(cmd.spawn().expect("spawn"));
            child.expect_success(Duration::from_secs(120), test);
        }
        Some("isolated") => {
            common::child_watchdog(Duration::from_secs(110));
            let started = Instant::now();
            body();
            eprintln!("drops: {test} in {:?}", started.elapsed());
        }
        Some(_) => {}
    }
}

/// The receiver drops with messages queued: each queued message is dropped once (on the
/// encoding backends it is never decoded); sends after that fail and hand their message back,
/// which is then dropped once, whether taken out with `into_inner` or dropped in the error.
#[test]
fn receiver_dropped_with_messages_queued() {
    isolated("receiver_dropped_with_messages_queued", || {
        for setup in SETUPS {
            let what = format!("{setup:?}");
            let (tx, rx, _) = setup.pair(&Options::new());
            for id in 0..40 {
                tx.send(Counted::new(id, 100)).expect("send");
            }
            receive_in_order(&rx, 0..10, &what);
            drop(rx);
            let mut next = 40;
            let late = send_until_refused(&tx, &mut next, &what);
            drop(tx);
            let book = settled_ledger(&what);
            assert_eq!(book.len() as u64, next, "{what}: every id recorded");
            expect_makes(&book, &(0..10).collect::<Vec<_>>(), setup.encoded(), &what);
            // On the thread backend nothing is accepted once the receiver is gone.
            if !setup.encoded() {
                assert!(late.is_empty(), "{what}: sends accepted after the receiver");
            }
        }
    });
}

/// The sender drops with messages queued; the receiver takes some and drops too: the rest
/// are dropped once, never decoded. On bound setups a second sender then connects, queues
/// more and drops as well, so the receiver goes with two senders' messages queued (on
/// `thread:` two generations of channel).
#[test]
fn sender_dropped_with_messages_queued() {
    isolated("sender_dropped_with_messages_queued", || {
        for setup in SETUPS {
            let what = format!("{setup:?}");
            let (tx, rx, addr) = setup.pair(&Options::new());
            for id in 0..40 {
                tx.send(Counted::new(id, 100 + id as usize * 37))
                    .expect("send");
            }
            drop(tx);
            let mut sent = 40;
            if let Some(addr) = addr {
                let tx = Sender::<Counted>::connect(&addr).expect("a second sender");
                for id in 1000..1020 {
                    tx.send(Counted::new(id, 100)).expect("send");
                }
                drop(tx);
                sent += 20;
            }
            // The receiver serves senders in turn: check the order within each.
            let mut received = Vec::new();
            let mut next = [0u64, 1000];
            for _ in 0..15 {
                match rx.recv_timeout(Duration::from_secs(10)) {
                    Ok(m) => {
                        let k = usize::from(m.id >= 1000);
                        assert!(m.id == next[k] && m.intact(), "{what}: got {}", m.id);
                        next[k] += 1;
                        received.push(m.id);
                    }
                    Err(e) => panic!("{what}: after {received:?}: {e}"),
                }
            }
            drop(rx);
            let book = settled_ledger(&what);
            assert_eq!(book.len(), sent, "{what}: every id recorded");
            expect_makes(&book, &received, setup.encoded(), &what);
        }
    });
}

/// A full channel: `try_send` hands back `Full(value)` and `send_timeout` `Timeout(value)`;
/// each handed-back value is dropped once, every accepted one is delivered once, in order.
#[test]
fn full_and_timeout_hand_back_once() {
    isolated("full_and_timeout_hand_back_once", || {
        for setup in SETUPS {
            let what = format!("{setup:?}");
            // Thread: 4 messages; sockets and pipes: small kernel buffers; shm: a 4 KiB ring.
            let opts = Options::new().capacity(if setup.encoded() { 4096 } else { 4 });
            let (tx, rx, _) = setup.pair(&opts);
            // Alternate `try_send` and `send_timeout` until each has handed back three values
            // (a TCP connection's window grows meanwhile, so not every attempt fails).
            let (mut accepted, mut full, mut timed_out, mut next) = (Vec::new(), 0, 0, 0u64);
            let deadline = Instant::now() + Duration::from_secs(20);
            while full < 3 || timed_out < 3 {
                let id = next;
                next += 1;
                let back = if id % 2 == 0 {
                    match tx.try_send(Counted::new(id, 1000)) {
                        Ok(()) => None,
                        Err(TrySendError::Full(m)) => {
                            full += 1;
                            Some(m)
                        }
                        Err(e) => panic!("{what}: try_send {id}: {e}"),
                    }
                } else {
                    match tx.send_timeout(Counted::new(id, 1000), Duration::from_millis(2)) {
                        Ok(()) => None,
                        Err(SendTimeoutError::Timeout(m)) => {
                            timed_out += 1;
                            Some(m)
                        }
                        Err(e) => panic!("{what}: send_timeout {id}: {e}"),
                    }
                };
                match back {
                    None => accepted.push(id),
                    Some(m) => assert_eq!(m.id, id, "{what}: the error hands back the message"),
                }
                assert!(Instant::now() < deadline, "{what}: never full");
            }
            drop(tx);
            let mut got = Vec::new();
            loop {
                match rx.recv_timeout(Duration::from_secs(10)) {
                    Ok(m) => {
                        assert!(m.intact(), "{what}: message {} damaged", m.id);
                        got.push(m.id);
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                    Err(e) => panic!("{what}: after {} messages: {e}", got.len()),
                }
            }
            assert_eq!(
                got, accepted,
                "{what}: every accepted message, once, in order"
            );
            drop(rx);
            let book = settled_ledger(&what);
            assert_eq!(book.len() as u64, next, "{what}: every id recorded");
            expect_makes(&book, &got, setup.encoded(), &what);
        }
    });
}

/// Four producers (clones, or separately connected senders) send until refused while the
/// receiver takes 300 messages and drops with the rest in flight; multi-piece messages
/// included on the encoding backends. Every value is dropped exactly once; each producer's
/// received messages are in its order; every producer sees its sends refused.
#[test]
fn racing_teardown() {
    isolated("racing_teardown", || {
        for setup in SETUPS {
            racing_teardown_on(setup);
        }
    });
}

fn racing_teardown_on(setup: Setup) {
    let what = format!("{setup:?}");
    let (tx, rx, addr) = setup.pair(&Options::new());
    let mut senders = vec![tx];
    for _ in 1..4 {
        let more = match &addr {
            Some(addr) => Sender::<Counted>::connect(addr).expect("connect"),
            None => senders[0].clone(),
        };
        senders.push(more);
    }
    let attempted = Arc::new(AtomicUsize::new(0));
    let producers: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(p, tx)| {
            let (what, attempted) = (what.clone(), attempted.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut refused = 0;
                for seq in 0u64.. {
                    let id = ((p as u64) << 32) | seq;
                    let len = match seq % 16 {
                        5 => 150_000,
                        _ => 50 + (seq as usize * 13) % 2000,
                    };
                    attempted.fetch_add(1, Ordering::SeqCst);
                    match tx.send(Counted::new(id, len)) {
                        Ok(()) => assert!(refused == 0, "{what}: a send succeeded after a refusal"),
                        Err(e) => {
                            assert!(e.is_disconnected(), "{what}: producer {p}: {e}");
                            assert_eq!(e.into_inner().id, id, "{what}: handed back");
                            refused += 1;
                            if refused == 3 {
                                return;
                            }
                        }
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{what}: producer {p} never refused"
                    );
                }
            })
        })
        .collect();
    let mut next = [0u64; 4];
    let mut received = Vec::new();
    while received.len() < 300 {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(m) => {
                let (p, seq) = ((m.id >> 32) as usize, m.id & 0xffff_ffff);
                assert!(m.intact(), "{what}: message {p}/{seq} damaged");
                assert!(
                    seq >= next[p],
                    "{what}: producer {p}: {seq} after {}",
                    next[p]
                );
                next[p] = seq + 1;
                received.push(m.id);
            }
            Err(e) => panic!("{what}: after {} messages: {e}", received.len()),
        }
    }
    drop(rx);
    for p in producers {
        if let Err(panic) = p.join() {
            std::panic::resume_unwind(panic);
        }
    }
    let book = settled_ledger(&what);
    assert_eq!(
        book.len(),
        attempted.load(Ordering::SeqCst),
        "{what}: every attempted id recorded"
    );
    expect_makes(&book, &received, setup.encoded(), &what);
}

// ---- across processes --------------------------------------------------------------------

const ENTRY: &str = "drop_child";

fn fail(code: i32, what: String) -> ! {
    eprintln!("drop child: {what}");
    std::process::exit(code)
}

/// A sender child: sends ids 0, 1, 2, … (some multi-piece) until its sends are refused,
/// tries three more, checks its own ledger (every value it made dropped once, each refused
/// one handed back), and writes `attempted accepted refused` to `CDT_REPORT`.
/// Exit codes: 2 setup; 3 a wrong error or value; 4 an unbalanced ledger.
#[test]
fn drop_child() {
    let Some(role) = common::role() else { return };
    assert_eq!(role, "sender");
    common::child_watchdog(Duration::from_secs(60));
    let tx = common::sender_from_parent::<Counted>(&Options::new())
        .unwrap_or_else(|e| fail(2, format!("sender: {e}")));
    let (mut accepted, mut refused) = (0u64, 0u64);
    let mut id = 0u64;
    while refused < 4 {
        let len = if id % 10 == 3 {
            200_000
        } else {
            64 + (id as usize * 7) % 900
        };
        match tx.send(Counted::new(id, len)) {
            Ok(()) if refused == 0 => accepted += 1,
            Ok(()) => fail(3, format!("send {id} succeeded after a refusal")),
            Err(e) if e.is_disconnected() => {
                let back = e.into_inner();
                if back.id != id {
                    fail(3, format!("send {id} handed back {}", back.id));
                }
                refused += 1;
            }
            Err(e) => fail(3, format!("send {id}: {e}")),
        }
        id += 1;
    }
    drop(tx);
    let book = std::mem::take(&mut *ledger());
    let bad: Vec<_> = book
        .iter()
        .filter(|(_, &(m, d))| m != 1 || d != 1)
        .collect();
    if !bad.is_empty() || book.len() as u64 != id {
        fail(
            4,
            format!(
                "{} ids recorded of {id}; (id, (made, dropped)) off: {bad:?}",
                book.len()
            ),
        );
    }
    if MADE.load(Ordering::SeqCst) != DROPPED.load(Ordering::SeqCst) {
        fail(4, "totals made and dropped differ".to_string());
    }
    let report = std::env::var("CDT_REPORT").unwrap_or_else(|_| fail(2, "no CDT_REPORT".into()));
    std::fs::write(&report, format!("{id} {accepted} {refused}"))
        .unwrap_or_else(|e| fail(2, format!("writing {report}: {e}")));
    std::process::exit(0);
}

/// A child sends until refused; this process receives 200 messages, pauses so that more are
/// in flight (the buffer or ring fills), and drops its receiver. Here: exactly the 200
/// received were decoded, each dropped once. In the child: every value passed to `send`
/// dropped once, whether accepted or handed back in the error; at least one message was
/// accepted but never received (in flight), and the sends were refused after the drop.
fn across_processes(target: common::Target) {
    const RECEIVED: u64 = 200;
    let what = format!("{target:?}");
    let report = common::temp_dir().join("report");
    let mut cmd = common::child_command(ENTRY, "sender");
    cmd.env("CDT_REPORT", &report);
    common::die_with_parent(&mut cmd);
    let rx = target.receiver_for_child::<Counted>(&Options::new(), &mut cmd);
    let child = common::Reaped::new(cmd.spawn().expect("spawn"));
    drop(cmd);
    for id in 0..RECEIVED {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(m) => assert!(
                m.id == id && m.intact(),
                "{what}: message {id}: got {}",
                m.id
            ),
            Err(e) => panic!("{what}: message {id}: {e}"),
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    drop(rx);
    child.expect_success(Duration::from_secs(60), &what);
    let book = settled_ledger(&what);
    assert_eq!(
        book.len() as u64,
        RECEIVED,
        "{what}: decoded only what was received"
    );
    assert!(
        book.values().all(|&(m, _)| m == 1),
        "{what}: each decoded once"
    );
    let report = std::fs::read_to_string(&report).expect("the child's report");
    let n: Vec<u64> = report.split(' ').map(|f| f.parse().unwrap()).collect();
    let (attempted, accepted, refused) = (n[0], n[1], n[2]);
    eprintln!(
        "drops: {what}: {attempted} sends: {accepted} accepted ({RECEIVED} received, {} in \
         flight at the receiver's drop, never decoded), {refused} refused",
        accepted - RECEIVED.min(accepted)
    );
    assert_eq!(accepted + refused, attempted, "{what}: the counts add up");
    assert!(
        accepted > RECEIVED,
        "{what}: nothing was in flight at the drop"
    );
    assert_eq!(refused, 4, "{what}: refusals");
}

#[test]
fn across_processes_unix() {
    isolated("across_processes_unix", || {
        across_processes(common::Target::Unix)
    });
}

#[test]
fn across_processes_tcp() {
    isolated("across_processes_tcp", || {
        across_processes(common::Target::Tcp)
    });
}

#[test]
fn across_processes_pipe() {
    isolated("across_processes_pipe", || {
        across_processes(common::Target::Pipe)
    });
}

#[test]
fn across_processes_socketpair() {
    isolated("across_processes_socketpair", || {
        across_processes(common::Target::Socket)
    });
}

#[test]
fn across_processes_shm() {
    isolated("across_processes_shm", || {
        across_processes(common::Target::Shm)
    });
}

#[test]
fn across_processes_shm_anonymous() {
    isolated("across_processes_shm_anonymous", || {
        across_processes(common::Target::ShmAnon)
    });
}
