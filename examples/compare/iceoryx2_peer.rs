//! Eclipse iceoryx2 between two processes: publish-subscribe of `[u8]` slices over shared
//! memory, one service each way, named after this process and a counter so no two pairs
//! (nor two runs) share one. The sender loans a sample sized for the message and writes the
//! payload straight into it (a `u64`'s bytes, or the prototype copied in: one copy, iceoryx2's
//! intended use); the receiver checks the sample where it lies, without copying it out; the
//! child echoes a sample by copying its payload into a sample of its own. A `u64` user header
//! tells data from commands.
//!
//! Two ways to wait for a sample, one row each:
//!
//! - `iceoryx2`: the receiver polls `receive()` in a spin loop (`spin_loop()`; after 128
//!   empty polls `yield_now()`, after tens of milliseconds 200 µs naps): the lowest latency,
//!   for a core kept busy.
//! - `iceoryx2-wait`: each way also has an event service of the same name; the publisher
//!   notifies it after every sample it sends, and a receiver that finds no sample blocks on
//!   its listener (`timed_wait_one`: a datagram on a unix socket, iceoryx2's own mechanism,
//!   the one its WaitSet multiplexes) until notified, then polls again. A notification sent
//!   while the receiver still had samples waits in the socket, so a wake-up is never lost,
//!   only sometimes early. What an application that must not spin pays: a system call on
//!   each side per message, and a wake-up when the receiver slept. (A WaitSet would put an
//!   `epoll_wait` in front of the same listener: it multiplexes many; one needs none.)
//!
//! Nothing is dropped: the services refuse overflow and the publishers retry until delivered
//! (iceoryx2 retries by itself, waiting or not), so a full subscriber buffer holds its
//! publisher back; each subscriber buffers 4 MiB worth of messages, at least 8 and at most
//! 1024, both ways alike. The child leaves when told to, when its parent dies
//! (`PR_SET_PDEATHSIG`) or when a sample reaches no subscriber. iceoryx2 removes a pair's
//! files with it (a killed run's, when the next run creates a node), but keeps its
//! directories under `/tmp/iceoryx2` and one 16-byte `/dev/shm/iox2_*` file for later runs.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;
use iceoryx2::sample::Sample;
use iceoryx2::service::port_factory::event::PortFactory as EventFactory;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory;

use crate::procs::{self, ChildGuard, PATIENCE};
use crate::workloads::{Link, ARG_SIZE};

const ARG_SERVICE: &str = "CONDUIT_COMPARE_ICEORYX2_SERVICE";
/// Set when the pair waits on events instead of spinning.
const ARG_WAIT: &str = "CONDUIT_COMPARE_ICEORYX2_WAIT";

/// User header values: what a sample is.
const DATA: u64 = 0;
/// From the child, once its ports exist.
const READY: u64 = 1;
/// To the child: stream `n + 1` messages, `n` in the payload.
const STREAM: u64 = 2;
/// To the child: leave.
const STOP: u64 = 3;

/// Bytes a subscriber may hold before its publisher waits.
const BUFFER_BYTES: usize = 4 << 20;

type Service = PortFactory<ipc::Service, [u8], u64>;
type Events = EventFactory<ipc::Service>;
type Pub = Publisher<ipc::Service, [u8], u64>;
type Sub = Subscriber<ipc::Service, [u8], u64>;
type Received = Sample<ipc::Service, [u8], u64>;

/// Polls of an empty subscriber that only spin; after them each poll also yields the
/// core, so a peer waiting for this core (on a busy machine) runs within microseconds
/// rather than after a whole time slice (milliseconds). On an idle machine a small
/// message arrives sooner: the loop only spins.
const SPINS: u32 = 1 << 7;
/// Polls, spinning or yielding, before each poll also sleeps for [`NAP`]: tens of
/// milliseconds without a message. The bench keeps a size's pairs while it measures
/// the other rows; an idle child then leaves their cores alone.
const YIELDS: u32 = SPINS + (1 << 16);
const NAP: Duration = Duration::from_micros(200);
/// The longest a waiting receiver blocks before it checks that its peer still lives.
const WAKE_CHECK: Duration = Duration::from_millis(10);

/// Waits a little between two polls of an empty subscriber; `spins` counts the polls
/// that found nothing.
fn idle(spins: u32) {
    if spins < SPINS {
        std::hint::spin_loop();
    } else if spins < YIELDS {
        std::thread::yield_now();
    } else {
        std::thread::sleep(NAP);
    }
}

/// Messages a subscriber buffers at `size` bytes.
fn depth(size: usize) -> usize {
    (BUFFER_BYTES / size).clamp(8, 1024)
}

/// A node that leaves signals to the tool, with iceoryx2's own log limited to errors.
fn node() -> Result<Node<ipc::Service>, String> {
    set_log_level(LogLevel::Error);
    NodeBuilder::new()
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<ipc::Service>()
        .map_err(|e| format!("iceoryx2 node: {e:?}"))
}

fn name(base: &str, dir: &str) -> Result<ServiceName, String> {
    ServiceName::new(&format!("{base}/{dir}")).map_err(|e| format!("iceoryx2 service name: {e:?}"))
}

/// The publish-subscribe service `base/dir`: created by the parent, opened by the child.
fn service(
    node: &Node<ipc::Service>,
    base: &str,
    dir: &str,
    size: usize,
    create: bool,
) -> Result<Service, String> {
    let builder = node
        .service_builder(&name(base, dir)?)
        .publish_subscribe::<[u8]>()
        .user_header::<u64>();
    let made = if create {
        builder
            .enable_safe_overflow(false)
            .subscriber_max_buffer_size(depth(size))
            .subscriber_max_borrowed_samples(2)
            .history_size(0)
            .max_publishers(1)
            .max_subscribers(1)
            .max_nodes(2)
            .create()
            .map_err(|e| format!("{e:?}"))
    } else {
        builder.open().map_err(|e| format!("{e:?}"))
    };
    made.map_err(|e| format!("iceoryx2 service {base}/{dir}: {e}"))
}

/// The event service `base/dir`, beside the publish-subscribe service of that name: one
/// notifier (the publisher's side), one listener (the subscriber's).
fn events(
    node: &Node<ipc::Service>,
    base: &str,
    dir: &str,
    create: bool,
) -> Result<Events, String> {
    let builder = node.service_builder(&name(base, dir)?).event();
    let made = if create {
        builder
            .max_notifiers(1)
            .max_listeners(1)
            .max_nodes(2)
            .create()
            .map_err(|e| format!("{e:?}"))
    } else {
        builder.open().map_err(|e| format!("{e:?}"))
    };
    made.map_err(|e| format!("iceoryx2 event service {base}/{dir}: {e}"))
}

fn publisher(service: &Service, size: usize) -> Result<Pub, String> {
    service
        .publisher_builder()
        .initial_max_slice_len(size.max(8))
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .create()
        .map_err(|e| format!("iceoryx2 publisher: {e:?}"))
}

fn subscriber(service: &Service, size: usize) -> Result<Sub, String> {
    service
        .subscriber_builder()
        .buffer_size(depth(size))
        .create()
        .map_err(|e| format!("iceoryx2 subscriber: {e:?}"))
}

/// The event ports of a waiting side: the notifier beside its publisher, the listener
/// beside its subscriber.
struct Wake {
    notifier: Notifier<ipc::Service>,
    listener: Listener<ipc::Service>,
    _services: (Events, Events),
}

/// One side's ports: samples out and in, and the event ports when it waits. The parent
/// publishes on `fwd` and subscribes to `back`, the child the other way round.
struct Ports {
    out: Pub,
    inbox: Sub,
    wake: Option<Wake>,
    // After the ports that use them.
    _services: (Service, Service),
}

impl Ports {
    /// The parent creates the services (`create`), the child opens them.
    fn new(
        node: &Node<ipc::Service>,
        base: &str,
        size: usize,
        create: bool,
        wait: bool,
    ) -> Result<Ports, String> {
        let (out_dir, in_dir) = if create {
            ("fwd", "back")
        } else {
            ("back", "fwd")
        };
        let fwd = service(node, base, "fwd", size, create)?;
        let back = service(node, base, "back", size, create)?;
        let (out_service, in_service) = if create { (&fwd, &back) } else { (&back, &fwd) };
        let out = publisher(out_service, size)?;
        let inbox = subscriber(in_service, size)?;
        let wake = match wait {
            false => None,
            true => {
                let out_events = events(node, base, out_dir, create)?;
                let in_events = events(node, base, in_dir, create)?;
                let notifier = out_events.notifier_builder().create();
                let listener = in_events.listener_builder().create();
                Some(Wake {
                    notifier: notifier.map_err(|e| format!("iceoryx2 notifier: {e:?}"))?,
                    listener: listener.map_err(|e| format!("iceoryx2 listener: {e:?}"))?,
                    _services: (out_events, in_events),
                })
            }
        };
        Ok(Ports {
            out,
            inbox,
            wake,
            _services: (fwd, back),
        })
    }

    /// Loans a sample of `bytes.len()` bytes, writes `bytes` into it, sends it and, when the
    /// other side waits, wakes it; false when it reached no subscriber.
    fn publish(&self, header: u64, bytes: &[u8]) -> Result<bool, String> {
        let mut sample = self
            .out
            .loan_slice_uninit(bytes.len())
            .map_err(|e| format!("iceoryx2 loan: {e:?}"))?;
        *sample.user_header_mut() = header;
        let sent = sample.write_from_slice(bytes).send();
        let delivered = sent.map_err(|e| format!("iceoryx2 send: {e:?}"))? > 0;
        if let Some(wake) = &self.wake {
            // A notification the listener's socket has no room for is not needed: the
            // listener has notifications pending, so it wakes anyway.
            wake.notifier
                .notify()
                .map_err(|e| format!("iceoryx2 notify: {e:?}"))?;
        }
        Ok(delivered)
    }

    /// Waits before polling an empty subscriber again, after `polls` empty polls: spins
    /// and yields ([`idle`]), or blocks on the listener until notified. True when a while
    /// passed without a sample: time to check that the peer still lives.
    fn idle(&self, polls: u32) -> Result<bool, String> {
        match &self.wake {
            None => {
                idle(polls);
                Ok(polls % (1 << 12) == 0)
            }
            Some(wake) => {
                let woken = wake.listener.timed_wait_one(WAKE_CHECK);
                Ok(woken
                    .map_err(|e| format!("iceoryx2 wait: {e:?}"))?
                    .is_none())
            }
        }
    }
}

struct Pair {
    ports: Ports,
    proto: Vec<u8>,
    seq: u64,
    // The ports, then the node; the child last, so it is told to stop (in `drop`) and
    // its ports go before it is reaped.
    _node: Node<ipc::Service>,
    child: ChildGuard,
}

impl Pair {
    /// The next sample; an error once the child is gone.
    fn next(&mut self) -> Result<Received, String> {
        let mut polls = 0u32;
        loop {
            match self.ports.inbox.receive() {
                Ok(Some(sample)) => return Ok(sample),
                Ok(None) => {}
                Err(e) => return Err(format!("iceoryx2 receive: {e:?}")),
            }
            polls = polls.saturating_add(1);
            if self.ports.idle(polls)? && self.child.exited() {
                return Err("the iceoryx2 peer is gone".into());
            }
        }
    }

    /// Whether `sample` is the `seq`-th message: a `u64`'s value, a blob's length.
    fn check(&self, sample: &Received, seq: u64) -> bool {
        let payload = sample.payload();
        match self.proto.len() {
            8 => payload.len() == 8 && u64::from_le_bytes(payload.try_into().unwrap()) == seq,
            size => payload.len() == size,
        }
    }

    fn send(&self, header: u64, bytes: &[u8]) -> Result<(), String> {
        match self.ports.publish(header, bytes)? {
            true => Ok(()),
            false => Err("the iceoryx2 peer has no subscriber".into()),
        }
    }
}

impl Link for Pair {
    fn round_trips(&mut self, iters: u64) -> Result<Duration, String> {
        let start = Instant::now();
        for _ in 0..iters {
            self.seq += 1;
            if self.proto.len() == 8 {
                self.send(DATA, &self.seq.to_le_bytes())?;
            } else {
                self.send(DATA, &self.proto)?;
            }
            let pong = self.next()?;
            if !self.check(&pong, self.seq) {
                return Err(format!("round trip {} came back changed", self.seq));
            }
            black_box(pong);
        }
        Ok(start.elapsed())
    }

    fn stream(&mut self, n: u64) -> Result<Duration, String> {
        self.send(STREAM, &n.to_le_bytes())?;
        let first = self.next()?;
        if !self.check(&first, 0) {
            return Err("the stream's first message is not the first one sent".into());
        }
        drop(first);
        let start = Instant::now();
        for i in 1..=n {
            let msg = self.next()?;
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

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = self.ports.publish(STOP, &[]);
    }
}

/// Starts a pair that spins (`wait` false: the `iceoryx2` row) or waits on events
/// (`iceoryx2-wait`).
pub fn start(size: usize, wait: bool) -> Result<Box<dyn Link>, String> {
    static PAIRS: AtomicU64 = AtomicU64::new(0);
    let pair = PAIRS.fetch_add(1, Ordering::Relaxed);
    let base = format!("conduit-compare-{}-{pair}", std::process::id());
    let node = node()?;
    let ports = Ports::new(&node, &base, size, true, wait)?;
    let mut cmd = procs::command("iceoryx2");
    cmd.env(ARG_SIZE, size.to_string()).env(ARG_SERVICE, &base);
    if wait {
        cmd.env(ARG_WAIT, "1");
    }
    let mut child = ChildGuard::spawn(&mut cmd)?;
    // The child says it is ready once its subscriber exists: from then on, nothing we
    // send is lost.
    let since = Instant::now();
    loop {
        match ports.inbox.receive() {
            Ok(Some(s)) if *s.user_header() == READY => break,
            Ok(Some(_)) => return Err("the iceoryx2 peer spoke before it was ready".into()),
            Ok(None) => std::thread::sleep(Duration::from_micros(100)),
            Err(e) => return Err(format!("iceoryx2 receive: {e:?}")),
        }
        if child.exited() {
            return Err("the iceoryx2 peer did not start".into());
        }
        if since.elapsed() > PATIENCE {
            return Err("the iceoryx2 peer did not get ready".into());
        }
    }
    Ok(Box::new(Pair {
        ports,
        proto: vec![0xC3; size],
        seq: 0,
        _node: node,
        child,
    }))
}

/// Echoes data samples, and streams `n + 1` messages on each command, until told to stop
/// (or its parent is gone).
pub fn child(size: usize) {
    let base = procs::arg(ARG_SERVICE);
    let wait = std::env::var_os(ARG_WAIT).is_some();
    let node = node().expect("an iceoryx2 node");
    let ports = Ports::new(&node, &base, size, false, wait).expect("opening the services");
    if !ports.publish(READY, &[]).expect("sending ready") {
        return;
    }
    let proto = vec![0xC3; size];
    let mut polls = 0u32;
    loop {
        let sample = match ports.inbox.receive() {
            Ok(Some(sample)) => sample,
            Ok(None) => {
                polls = polls.saturating_add(1);
                match ports.idle(polls) {
                    Ok(_) => continue,
                    Err(_) => return,
                }
            }
            Err(_) => return,
        };
        polls = 0;
        let sent = match *sample.user_header() {
            DATA => ports.publish(DATA, sample.payload()),
            STREAM => {
                let n = u64::from_le_bytes(sample.payload().try_into().expect("a count"));
                drop(sample);
                (0..=n)
                    .map(|i| match size {
                        8 => ports.publish(DATA, &i.to_le_bytes()),
                        _ => ports.publish(DATA, &proto),
                    })
                    .find(|sent| !matches!(sent, Ok(true)))
                    .unwrap_or(Ok(true))
            }
            _ => return,
        };
        if !matches!(sent, Ok(true)) {
            return;
        }
    }
}
