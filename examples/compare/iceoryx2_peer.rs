//! Eclipse iceoryx2 between two processes: publish-subscribe of `[u8]` slices over shared
//! memory, one service each way, named after this process and a counter so no two pairs
//! (nor two runs) share one. The sender loans a sample sized for the message and writes the
//! payload straight into it (a `u64`'s bytes, or the prototype copied in: one copy, iceoryx2's
//! intended use); the receiver polls `receive()` in a spin loop (`spin_loop()`; after 128
//! empty polls `yield_now()`, after tens of milliseconds 200 µs naps) and checks the sample
//! where it lies, without copying it out; the child echoes a sample by copying its payload
//! into a sample of its own. A `u64` user header tells data from commands. Nothing is
//! dropped: the services refuse overflow and the publishers retry until delivered, so a
//! full subscriber buffer holds its publisher back; each subscriber buffers 4 MiB worth of
//! messages, at least 8 and at most 1024, both ways alike. The child leaves when told to,
//! when its parent dies (`PR_SET_PDEATHSIG`) or when a sample reaches no subscriber. iceoryx2 removes a pair's
//! files with it (a killed run's, when the next run creates a node), but keeps its
//! directories under `/tmp/iceoryx2` and one 16-byte `/dev/shm/iox2_*` file for later runs.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;
use iceoryx2::sample::Sample;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory;

use crate::procs::{self, ChildGuard, PATIENCE};
use crate::workloads::{Link, ARG_SIZE};

const ARG_SERVICE: &str = "CONDUIT_COMPARE_ICEORYX2_SERVICE";

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

/// The service `base/dir`: created by the parent, opened by the child.
fn service(
    node: &Node<ipc::Service>,
    base: &str,
    dir: &str,
    size: usize,
    create: bool,
) -> Result<Service, String> {
    let name = ServiceName::new(&format!("{base}/{dir}"))
        .map_err(|e| format!("iceoryx2 service name: {e:?}"))?;
    let builder = node
        .service_builder(&name)
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

/// Loans a sample of `bytes.len()` bytes, writes `bytes` into it and sends it; false when
/// it reached no subscriber.
fn publish(publisher: &Pub, header: u64, bytes: &[u8]) -> Result<bool, String> {
    let mut sample = publisher
        .loan_slice_uninit(bytes.len())
        .map_err(|e| format!("iceoryx2 loan: {e:?}"))?;
    *sample.user_header_mut() = header;
    let sent = sample.write_from_slice(bytes).send();
    Ok(sent.map_err(|e| format!("iceoryx2 send: {e:?}"))? > 0)
}

struct Pair {
    fwd: Pub,
    back: Sub,
    proto: Vec<u8>,
    seq: u64,
    // Ports, then their services and node; the child last, so it is told to stop
    // (in `drop`) and its ports go before it is reaped.
    _services: (Service, Service),
    _node: Node<ipc::Service>,
    child: ChildGuard,
}

impl Pair {
    /// The next sample, spinning; an error once the child is gone.
    fn next(&mut self) -> Result<Received, String> {
        let mut spins = 0u32;
        loop {
            match self.back.receive() {
                Ok(Some(sample)) => return Ok(sample),
                Ok(None) => {}
                Err(e) => return Err(format!("iceoryx2 receive: {e:?}")),
            }
            spins = spins.saturating_add(1);
            idle(spins);
            if spins % (1 << 12) == 0 && self.child.exited() {
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
        match publish(&self.fwd, header, bytes)? {
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
        let _ = publish(&self.fwd, STOP, &[]);
    }
}

pub fn start(size: usize) -> Result<Box<dyn Link>, String> {
    static PAIRS: AtomicU64 = AtomicU64::new(0);
    let pair = PAIRS.fetch_add(1, Ordering::Relaxed);
    let base = format!("conduit-compare-{}-{pair}", std::process::id());
    let node = node()?;
    let fwd_service = service(&node, &base, "fwd", size, true)?;
    let back_service = service(&node, &base, "back", size, true)?;
    let fwd = publisher(&fwd_service, size)?;
    let back = subscriber(&back_service, size)?;
    let mut cmd = procs::command("iceoryx2");
    cmd.env(ARG_SIZE, size.to_string()).env(ARG_SERVICE, &base);
    let mut child = ChildGuard::spawn(&mut cmd)?;
    // The child says it is ready once its subscriber exists: from then on, nothing we
    // send is lost.
    let since = Instant::now();
    loop {
        match back.receive() {
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
        fwd,
        back,
        proto: vec![0xC3; size],
        seq: 0,
        _services: (fwd_service, back_service),
        _node: node,
        child,
    }))
}

/// Echoes data samples, and streams `n + 1` messages on each command, until told to stop
/// (or its parent is gone).
pub fn child(size: usize) {
    let base = procs::arg(ARG_SERVICE);
    let node = node().expect("an iceoryx2 node");
    let fwd_service = service(&node, &base, "fwd", size, false).expect("opening fwd");
    let back_service = service(&node, &base, "back", size, false).expect("opening back");
    let fwd = subscriber(&fwd_service, size).expect("a subscriber");
    let back = publisher(&back_service, size).expect("a publisher");
    if !publish(&back, READY, &[]).expect("sending ready") {
        return;
    }
    let proto = vec![0xC3; size];
    let mut spins = 0u32;
    loop {
        let sample = match fwd.receive() {
            Ok(Some(sample)) => sample,
            Ok(None) => {
                spins = spins.saturating_add(1);
                idle(spins);
                continue;
            }
            Err(_) => return,
        };
        spins = 0;
        let sent = match *sample.user_header() {
            DATA => publish(&back, DATA, sample.payload()),
            STREAM => {
                let n = u64::from_le_bytes(sample.payload().try_into().expect("a count"));
                drop(sample);
                (0..=n)
                    .map(|i| match size {
                        8 => publish(&back, DATA, &i.to_le_bytes()),
                        _ => publish(&back, DATA, &proto),
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
