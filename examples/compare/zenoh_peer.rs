//! Plain zenoh between two processes, without conduit: what the engine itself costs, the
//! floor under the `zenoh` row. Each process opens a session of its own configured as
//! conduit's default is (a peer on 127.0.0.1, multicast scouting off, 16 batches in a link's
//! data queue); the child connects to the parent's listener. One key each way, a publisher
//! with blocking congestion control, and a subscriber whose bounded FIFO handler holds 4 MiB
//! worth of messages (at least 8, at most 1024), so a slow receiver holds its publisher back
//! through the engine and the socket.
//!
//! A message is the payload and a kind byte after it (data, ready, stream, stop), copied
//! into one vector per put: the one copy on the sending side that any protocol on top
//! makes. The receiver checks a `u64`'s value, or a blob's length, in the sample's bytes,
//! which are contiguous unless the engine handed the message over in pieces (then they are
//! joined, as conduit's receiver does).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use zenoh::handlers::FifoChannelHandler;
use zenoh::pubsub::{Publisher, Subscriber};
use zenoh::qos::CongestionControl;
use zenoh::sample::Sample;
use zenoh::{Config, Session, Wait};

use crate::procs::{self, ChildGuard, PATIENCE};
use crate::workloads::{Link, ARG_SIZE};

const ARG_KEY: &str = "CONDUIT_COMPARE_ZENOH_KEY";
const ARG_PORT: &str = "CONDUIT_COMPARE_ZENOH_PORT";

/// The kind byte after the payload.
const DATA: u8 = 0;
/// Parent to child: are you there? Child to parent: here.
const READY: u8 = 1;
/// To the child: stream `n + 1` messages, `n` in the payload.
const STREAM: u8 = 2;
/// To the child: leave.
const STOP: u8 = 3;

/// Bytes a subscriber may hold before its publisher waits.
const BUFFER_BYTES: usize = 4 << 20;
/// How long a receiver blocks before it checks that its peer still lives.
const WAKE_CHECK: Duration = Duration::from_millis(10);

/// Messages a subscriber buffers at `size` bytes.
fn depth(size: usize) -> usize {
    (BUFFER_BYTES / size).clamp(8, 1024)
}

/// conduit's default zenoh configuration: listening on 127.0.0.1:`listen` (0: a port the
/// kernel picks), connecting to 127.0.0.1:`connect` if given. Nothing beyond loopback.
fn config(listen: u16, connect: Option<u16>) -> Result<Config, String> {
    let endpoints = |port: Option<u16>| {
        port.map(|p| format!("\"tcp/127.0.0.1:{p}\""))
            .unwrap_or_default()
    };
    let text = format!(
        r#"{{
            mode: "peer",
            listen: {{ endpoints: [{}] }},
            connect: {{ endpoints: [{}] }},
            scouting: {{ multicast: {{ enabled: false }} }},
            transport: {{ link: {{ tx: {{ queue: {{ size: {{ data: 16 }} }} }} }} }},
        }}"#,
        endpoints(Some(listen)),
        endpoints(connect)
    );
    Config::from_json5(&text).map_err(|e| format!("zenoh configuration: {e}"))
}

/// A session's two ends of the pair: what it publishes, what it receives.
struct Ports {
    outbox: Publisher<'static>,
    inbox: Subscriber<FifoChannelHandler<Sample>>,
    // After the ports, so they are undeclared first.
    _session: Session,
}

impl Ports {
    fn new(
        session: Session,
        base: &str,
        out: &str,
        inb: &str,
        size: usize,
    ) -> Result<Self, String> {
        let outbox = session
            .declare_publisher(format!("{base}/{out}"))
            .congestion_control(CongestionControl::Block)
            .wait()
            .map_err(|e| format!("zenoh publisher: {e}"))?;
        let inbox = session
            .declare_subscriber(format!("{base}/{inb}"))
            .with(zenoh::handlers::FifoChannel::new(depth(size)))
            .wait()
            .map_err(|e| format!("zenoh subscriber: {e}"))?;
        Ok(Ports {
            outbox,
            inbox,
            _session: session,
        })
    }

    fn send(&self, bytes: &[u8], kind: u8) -> Result<(), String> {
        let mut msg = Vec::with_capacity(bytes.len() + 1);
        msg.extend_from_slice(bytes);
        msg.push(kind);
        self.outbox
            .put(msg)
            .wait()
            .map_err(|e| format!("zenoh put: {e}"))
    }
}

/// A sample's payload and kind byte (joined if it came in pieces).
fn parts(sample: &Sample) -> (std::borrow::Cow<'_, [u8]>, u8) {
    let bytes = sample.payload().to_bytes();
    let kind = bytes.last().copied().unwrap_or(u8::MAX);
    (bytes, kind)
}

struct Pair {
    ports: Ports,
    proto: Vec<u8>,
    seq: u64,
    child: ChildGuard,
}

impl Pair {
    /// The next data message's sample; an error once the child is gone.
    fn next(&mut self) -> Result<Sample, String> {
        loop {
            match self.ports.inbox.recv_timeout(WAKE_CHECK) {
                Ok(Some(sample)) if parts(&sample).1 == DATA => return Ok(sample),
                // A late answer to one of the parent's "are you there?".
                Ok(Some(_)) => {}
                Ok(None) if !self.child.exited() => {}
                Ok(None) => return Err("the zenoh peer is gone".into()),
                Err(e) => return Err(format!("zenoh receive: {e}")),
            }
        }
    }

    /// Whether `sample` is the `seq`-th message: a `u64`'s value, a blob's length.
    fn check(&self, sample: &Sample, seq: u64) -> bool {
        let (bytes, _) = parts(sample);
        let payload = &bytes[..bytes.len() - 1];
        match self.proto.len() {
            8 => payload.len() == 8 && u64::from_le_bytes(payload.try_into().unwrap()) == seq,
            size => payload.len() == size,
        }
    }
}

impl Link for Pair {
    fn round_trips(&mut self, iters: u64) -> Result<Duration, String> {
        let start = Instant::now();
        for _ in 0..iters {
            self.seq += 1;
            if self.proto.len() == 8 {
                self.ports.send(&self.seq.to_le_bytes(), DATA)?;
            } else {
                self.ports.send(&self.proto, DATA)?;
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
        self.ports.send(&n.to_le_bytes(), STREAM)?;
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
        let _ = self.ports.send(&[], STOP);
    }
}

/// Starts a pair: this process listens on a free port of 127.0.0.1, the child connects.
pub fn start(size: usize) -> Result<Box<dyn Link>, String> {
    static PAIRS: AtomicU64 = AtomicU64::new(0);
    let pair = PAIRS.fetch_add(1, Ordering::Relaxed);
    let base = format!("conduit-compare-raw/{}-{pair}", std::process::id());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("a free port: {e}"))?
        .port();
    let session = zenoh::open(config(port, None)?)
        .wait()
        .map_err(|e| format!("zenoh session: {e}"))?;
    let ports = Ports::new(session, &base, "down", "up", size)?;
    let mut cmd = procs::command("zenoh");
    cmd.env(ARG_SIZE, size.to_string())
        .env(ARG_KEY, &base)
        .env(ARG_PORT, port.to_string());
    let mut child = ChildGuard::spawn(&mut cmd)?;
    // Asks until the child answers: a put before the two sessions know each other's
    // subscribers reaches nobody.
    let since = Instant::now();
    loop {
        ports.send(&[], READY)?;
        match ports.inbox.recv_timeout(WAKE_CHECK) {
            Ok(Some(sample)) if parts(&sample).1 == READY => break,
            Ok(Some(_)) => return Err("the zenoh peer spoke before it was ready".into()),
            Ok(None) => {}
            Err(e) => return Err(format!("zenoh receive: {e}")),
        }
        if child.exited() {
            return Err("the zenoh peer did not start".into());
        }
        if since.elapsed() > PATIENCE {
            return Err("the zenoh peer did not get ready".into());
        }
    }
    Ok(Box::new(Pair {
        ports,
        proto: vec![0xC3; size],
        seq: 0,
        child,
    }))
}

/// Echoes data, answers "are you there?", and streams `n + 1` messages on each command,
/// until told to stop (or its parent is gone).
pub fn child(size: usize) {
    let base = procs::arg(ARG_KEY);
    let port: u16 = procs::arg(ARG_PORT).parse().expect("a port");
    let session = zenoh::open(config(0, Some(port)).expect("the configuration"))
        .wait()
        .expect("a zenoh session");
    let ports = Ports::new(session, &base, "up", "down", size).expect("the ports");
    let proto = vec![0xC3; size];
    while let Ok(sample) = ports.inbox.recv() {
        let (bytes, kind) = parts(&sample);
        let payload = &bytes[..bytes.len().saturating_sub(1)];
        let sent = match kind {
            DATA => ports.send(payload, DATA),
            READY => ports.send(&[], READY),
            STREAM => {
                let n = u64::from_le_bytes(payload.try_into().expect("a count"));
                (0..=n)
                    .map(|i| match size {
                        8 => ports.send(&i.to_le_bytes(), DATA),
                        _ => ports.send(&proto, DATA),
                    })
                    .find(Result::is_err)
                    .unwrap_or(Ok(()))
            }
            _ => return,
        };
        if sent.is_err() {
            return;
        }
    }
}
