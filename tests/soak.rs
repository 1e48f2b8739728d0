//! A bounded soak. Per backend, four producers and one
//! consumer move messages of mixed sizes, 8 B to 1 MiB (70% up to 256 B, 25% up to 64 KiB,
//! 5% up to 1 MiB, drawn by a xorshift generator with a fixed seed per producer, so a run
//! repeats exactly). The consumer checks that nothing is lost, duplicated or reordered
//! (per-producer sequence numbers, and the producer's `last` mark on its final message), that
//! every message is intact (length, and a checksum the producer computed over the bytes),
//! and that its memory stays flat.
//!
//! Producers are processes on `unix:`, `tcp:` and `shm:` (four children, each connecting);
//! threads of one child sharing an inherited sender on pipes, socketpairs and anonymous
//! shared memory (one end can be inherited by one process; its clones are producers that
//! never interleave); threads on `thread:`. The consumer runs in a child process of its own,
//! so the tests running beside it cannot disturb its resident set size.
//!
//! By default each producer sends [`COUNT`] messages (a few seconds per backend in a debug
//! build; a quarter of that under a sanitizer). `CONDUIT_SOAK_SECS=N` makes it a long run
//! instead: each producer sends for N seconds.
//!
//! Memory: RSS (`/proc/self/statm`) is sampled once every producer has delivered
//! [`WARM_UP`] messages (by then the receiver's buffers have grown to the largest sizes) and
//! every 64 messages after. The largest sample and the final one may exceed the warm-up
//! figure by at most [`RSS_SLACK`]: four connections may each hold a reassembly buffer of up
//! to 1 MiB plus a decoded 1 MiB message, and glibc keeps freed large blocks in its heap
//! (its mmap threshold rises with the largest block freed), so a few MiB of drift are the
//! allocator's; a leak of the messages themselves (36 KiB on average, thousands of them)
//! would exceed it many times over. Under a sanitizer (`CONDUIT_SANITIZER`, set by
//! `.ci/sanitizers`) memory is reported but not checked: its allocator holds freed blocks in
//! a quarantine of up to 256 MiB.

mod common;

use std::time::{Duration, Instant};

use conduit::{Options, Receiver, RecvTimeoutError, Sender};
use serde::{Deserialize, Serialize};

const ENTRY: &str = "soak_child";
/// Producers per backend.
const PRODUCERS: u32 = 4;
/// Messages per producer in a default run.
const COUNT: u64 = 400;
/// Messages every producer has delivered before the memory baseline is taken.
const WARM_UP: u64 = 60;
/// How far RSS may rise above the warm-up figure (see the module docs).
const RSS_SLACK: u64 = 32 << 20;
/// The generator's seed; producer `p` uses `SEED + p`.
const SEED: u64 = 0x5eed_2026;
/// `CONDUIT_SOAK_SECS`: seconds per producer for a long run.
const SECS_ENV: &str = "CONDUIT_SOAK_SECS";

fn soak_secs() -> Option<u64> {
    std::env::var(SECS_ENV).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{SECS_ENV}={v:?} is not a number of seconds"))
    })
}

/// How long any process of a run may take.
fn run_limit() -> Duration {
    Duration::from_secs(soak_secs().unwrap_or(0) + 120)
}

/// One message of the soak.
#[derive(Serialize, Deserialize)]
struct Item {
    producer: u32,
    seq: u64,
    /// The producer's final message.
    last: bool,
    /// `checksum(&data)`, computed by the producer.
    sum: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// FNV-1a over 8-byte words (then the tail bytes): cheap enough for megabytes in debug.
fn checksum(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        h = (h ^ u64::from_le_bytes(w.try_into().unwrap())).wrapping_mul(0x0100_0000_01b3);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h ^ data.len() as u64
}

/// The sizes producer `p` sends, in order.
struct Sizes(common::XorShift);

impl Sizes {
    fn new(producer: u32) -> Self {
        Sizes(common::XorShift::new(SEED + u64::from(producer)))
    }

    fn next(&mut self) -> usize {
        let r = &mut self.0;
        let len = match r.below(100) {
            0..=69 => 8 + r.below(249),
            70..=94 => 256 + r.below((64 << 10) - 256),
            _ => (64 << 10) + r.below((1 << 20) - (64 << 10) + 1),
        };
        len as usize
    }
}

fn item(producer: u32, seq: u64, len: usize, last: bool) -> Item {
    let data = common::content((u64::from(producer) << 40) | seq, len);
    Item {
        producer,
        seq,
        last,
        sum: checksum(&data),
        data,
    }
}

/// Messages per producer in a default run: [`COUNT`], a quarter of it under a sanitizer
/// (eight times slower there, and memory is not checked).
fn count() -> u64 {
    if common::sanitizer().is_some() {
        COUNT / 4
    } else {
        COUNT
    }
}

/// Sends producer `p`'s messages: [`count`], or for [`soak_secs`] seconds. Returns how many.
fn produce(tx: &Sender<Item>, p: u32) -> Result<u64, String> {
    let mut sizes = Sizes::new(p);
    let until = soak_secs().map(|s| Instant::now() + Duration::from_secs(s));
    let mut seq = 0;
    loop {
        let last = match until {
            Some(t) => Instant::now() >= t,
            None => seq + 1 == count(),
        };
        tx.send(item(p, seq, sizes.next(), last))
            .map_err(|e| format!("producer {p}: send {seq}: {e}"))?;
        seq += 1;
        if last {
            return Ok(seq);
        }
    }
}

/// What the consumer saw.
struct Tally {
    messages: u64,
    bytes: u64,
    rss_warm: u64,
    rss_max: u64,
    rss_end: u64,
}

/// Receives until every producer's last message, checking each; samples RSS.
fn consume(rx: &Receiver<Item>, what: &str) -> Tally {
    let n = PRODUCERS as usize;
    let mut sizes: Vec<Sizes> = (0..PRODUCERS).map(Sizes::new).collect();
    let mut next = vec![0u64; n];
    let mut done = vec![false; n];
    let (mut messages, mut bytes) = (0u64, 0u64);
    let (mut rss_warm, mut rss_max) = (0u64, 0u64);
    let deadline = Instant::now() + run_limit();
    while !done.iter().all(|d| *d) {
        assert!(
            Instant::now() < deadline,
            "{what}: stuck after {next:?} messages"
        );
        let m = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => continue,
            // Between producers (bound receivers): the next one is served on the next call.
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Err(e) => panic!("{what}: recv: {e}"),
        };
        let p = m.producer as usize;
        assert!(p < n, "{what}: unknown producer {p}");
        assert!(
            !done[p],
            "{what}: producer {p}: message {} after its last",
            m.seq
        );
        assert_eq!(
            m.seq, next[p],
            "{what}: producer {p}: lost, duplicated or reordered"
        );
        let len = sizes[p].next();
        assert_eq!(
            m.data.len(),
            len,
            "{what}: producer {p}: message {} length",
            m.seq
        );
        assert_eq!(
            checksum(&m.data),
            m.sum,
            "{what}: producer {p}: message {} damaged",
            m.seq
        );
        next[p] += 1;
        done[p] = m.last;
        messages += 1;
        bytes += len as u64;
        if rss_warm == 0 && next.iter().all(|&k| k >= WARM_UP) {
            rss_warm = common::rss_bytes();
            rss_max = rss_warm;
        } else if rss_warm != 0 && messages % 64 == 0 {
            rss_max = rss_max.max(common::rss_bytes());
        }
    }
    assert!(
        rss_warm != 0,
        "{what}: the run ended before the warm-up did"
    );
    let rss_end = common::rss_bytes();
    Tally {
        messages,
        bytes,
        rss_warm,
        rss_max: rss_max.max(rss_end),
        rss_end,
    }
}

// ---- processes -----------------------------------------------------------------------------

fn child_fail(code: i32, what: impl std::fmt::Display) -> ! {
    eprintln!("soak child: {what}");
    std::process::exit(code)
}

/// Roles: `consumer` (runs the soak for `CDT_TARGET`), `producer` (producer `CDT_ID`,
/// connecting to `CDT_ADDR`), `producers` (all four, as threads sharing an inherited sender).
#[test]
fn soak_child() {
    let Some(role) = common::role() else { return };
    common::child_watchdog(run_limit());
    match role.as_str() {
        "consumer" => {
            let target = std::env::var("CDT_TARGET").unwrap_or_default();
            consumer(&target);
        }
        "producer" => {
            let p: u32 = std::env::var("CDT_ID")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| child_fail(2, "no CDT_ID"));
            let tx = common::sender_from_parent::<Item>(&Options::new())
                .unwrap_or_else(|e| child_fail(2, format!("producer {p}: {e}")));
            produce(&tx, p).unwrap_or_else(|e| child_fail(3, e));
        }
        "producers" => {
            let tx = common::sender_from_parent::<Item>(&Options::new())
                .unwrap_or_else(|e| child_fail(2, format!("producers: {e}")));
            let threads: Vec<_> = (0..PRODUCERS)
                .map(|p| {
                    let tx = tx.clone();
                    std::thread::spawn(move || produce(&tx, p))
                })
                .collect();
            drop(tx);
            for t in threads {
                match t.join() {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => child_fail(3, e),
                    Err(_) => child_fail(3, "a producer thread panicked"),
                }
            }
        }
        other => child_fail(2, format!("unknown role {other}")),
    }
    std::process::exit(0);
}

/// The consumer's side of one backend: start the producers, consume, check, report.
fn consumer(target: &str) {
    let started = Instant::now();
    let what = target.to_string();
    let spawn = |role: &str, rx_for: &mut dyn FnMut(&mut std::process::Command)| {
        let mut cmd = common::child_command(ENTRY, role);
        common::die_with_parent(&mut cmd);
        rx_for(&mut cmd);
        let child = common::Reaped::new(cmd.spawn().expect("spawn a producer"));
        drop(cmd);
        child
    };
    let mut children = Vec::new();
    let mut threads = Vec::new();
    let rx = match target {
        "thread" => {
            let addr = format!("thread:soak-{}", std::process::id());
            let rx = Receiver::<Item>::bind(&addr).expect("bind");
            for p in 0..PRODUCERS {
                let tx = Sender::<Item>::connect(&addr).expect("connect");
                threads.push(std::thread::spawn(move || produce(&tx, p)));
            }
            rx
        }
        "unix" | "tcp" | "shm" => {
            let t = match target {
                "unix" => common::Target::Unix,
                "tcp" => common::Target::Tcp,
                _ => common::Target::Shm,
            };
            let addr = t.fresh_addr().expect("a bound target");
            let rx = Receiver::<Item>::bind(&addr).expect("bind");
            let addr = rx.local_addr().expect("address");
            for p in 0..PRODUCERS {
                children.push(spawn("producer", &mut |cmd| {
                    cmd.env(common::ADDR_ENV, &addr)
                        .env("CDT_ID", p.to_string());
                }));
            }
            rx
        }
        "pipe" | "socket" | "shm_anon" => {
            let t = match target {
                "pipe" => common::Target::Pipe,
                "socket" => common::Target::Socket,
                _ => common::Target::ShmAnon,
            };
            let mut rx = None;
            children.push(spawn("producers", &mut |cmd| {
                rx = Some(t.receiver_for_child::<Item>(&Options::new(), cmd));
            }));
            rx.expect("the receiver")
        }
        other => panic!("unknown target {other}"),
    };
    let tally = consume(&rx, &what);
    for t in threads {
        let sent = t
            .join()
            .expect("a producer thread")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(sent > 0);
    }
    for c in children {
        c.expect_success(run_limit(), &format!("{what}: a producer"));
    }
    match rx.recv_timeout(Duration::from_secs(10)) {
        Err(RecvTimeoutError::Disconnected) => {}
        Ok(m) => panic!(
            "{what}: message {} of {} after every last",
            m.seq, m.producer
        ),
        Err(e) => panic!("{what}: after the run: {e}"),
    }
    let elapsed = started.elapsed();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "soak: {what}: {} messages, {:.0} MiB in {elapsed:.2?} ({:.0} MiB/s); RSS {:.1} MiB \
         after warm-up, {:.1} MiB at most, {:.1} MiB at the end",
        tally.messages,
        mib(tally.bytes),
        mib(tally.bytes) / elapsed.as_secs_f64(),
        mib(tally.rss_warm),
        mib(tally.rss_max),
        mib(tally.rss_end),
    );
    if let Some(s) = common::sanitizer() {
        eprintln!("soak: {what}: memory not checked under the {s} sanitizer (its quarantine)");
        return;
    }
    assert!(
        tally.rss_max <= tally.rss_warm + RSS_SLACK && tally.rss_end <= tally.rss_warm + RSS_SLACK,
        "{what}: memory grew: RSS {} after warm-up, {} at most, {} at the end (slack {})",
        tally.rss_warm,
        tally.rss_max,
        tally.rss_end,
        RSS_SLACK
    );
}

fn soak(target: &str) {
    let mut cmd = common::child_command(ENTRY, "consumer");
    cmd.env("CDT_TARGET", target);
    common::die_with_parent(&mut cmd);
    let child = common::Reaped::new(cmd.spawn().expect("spawn the consumer"));
    child.expect_success(run_limit() + Duration::from_secs(10), target);
}

#[test]
fn soak_thread() {
    soak("thread");
}

#[test]
fn soak_unix() {
    soak("unix");
}

#[test]
fn soak_tcp() {
    soak("tcp");
}

#[test]
fn soak_shm() {
    soak("shm");
}

#[test]
fn soak_pipe() {
    soak("pipe");
}

#[test]
fn soak_socketpair() {
    soak("socket");
}

#[test]
fn soak_shm_anonymous() {
    soak("shm_anon");
}
