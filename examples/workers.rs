//! Workers as threads or as processes, chosen by one argument.
//!
//! One `worker` function runs unchanged as N threads of this process (`thread:` addresses),
//! as N child processes — this binary re-executed — over Unix sockets (`unix:` addresses),
//! and as N child processes over shared-memory rings (`shm:` addresses).
//! Each worker streams 64-byte payloads, with a checksum and a sequence number, to its own
//! receiver in the coordinator, which checks every message and prints messages per second per
//! worker in time windows.
//!
//! Partway through each run one worker fails. In process mode the coordinator kills it with
//! SIGKILL; a thread cannot be killed from outside, so in thread mode it panics on purpose.
//! Either way its receiver reports `Disconnected`; the coordinator prints how long that took
//! and starts a replacement on a fresh address, while the other workers' columns show they
//! kept going. Only processes survive failures that do not unwind (abort, segfault, SIGKILL):
//! those take every thread of a process down. At the end the coordinator drops its receivers;
//! each worker's next send fails and it exits, so no child outlives the run.
//!
//! ```text
//! cargo run --release --example workers                  # all three modes, then a comparison
//! cargo run --release --example workers -- processes     # or: threads, or: shm
//! cargo run --release --example workers -- --workers 4 --seconds 5
//! ```

use std::collections::BTreeMap;
use std::error::Error;
use std::os::unix::{fs::DirBuilderExt, process::ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use conduit::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use serde::{Deserialize, Serialize};

type BoxError = Box<dyn Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const USAGE: &str = "usage: workers [threads | processes | shm]... [--workers N] [--seconds S]
  threads      run the workers as threads of this process (thread: addresses)
  processes    run them as child processes of this binary (unix: addresses)
  shm          run them as child processes over shared memory (shm: addresses)
  (none)       run all three, one after the other, and compare
  --workers N  workers per mode, 1 to 16 (default 3)
  --seconds S  measured seconds per mode, 0.5 to 600 (default 3)";
const COMPARISON: &str = "\n== comparison ==
  mode       messages/s  per worker   failure  noticed after  replacement's 1st message";
const MAX_WORKERS: usize = 16;
const PAYLOAD: usize = 64;
const WINDOWS: u32 = 6;
const INJECTED: &str = "injected fault: this worker thread panics on purpose";
/// When the injected panic happened (thread mode); set by the panic hook.
static PANICKED_AT: Mutex<Option<Instant>> = Mutex::new(None);

/// What a worker sends: a payload, its checksum and a per-worker sequence number.
#[derive(Serialize, Deserialize)]
struct Sample {
    worker: u32,
    seq: u64,
    payload: Vec<u8>,
    checksum: u64,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let fold = |h: u64, b: &u8| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, fold)
}

/// The worker, the same code in both modes: connects to `results`, then makes payloads,
/// checksums them and sends them until the receiver goes away. `panic_after` injects a fault.
fn worker(id: u32, results: &str, panic_after: Option<Duration>) -> Res<u64> {
    let tx = Sender::<Sample>::connect(results)?;
    let start = Instant::now();
    let (mut state, mut seq) = (u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1, 0);
    loop {
        if seq % 256 == 0 && panic_after.is_some_and(|d| start.elapsed() >= d) {
            std::panic::panic_any(INJECTED);
        }
        let mut payload = vec![0u8; PAYLOAD];
        for chunk in payload.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        let checksum = fnv1a(&payload);
        let msg = Sample {
            worker: id,
            seq,
            payload,
            checksum,
        };
        match tx.send(msg) {
            Ok(()) => seq += 1,
            Err(e) if e.is_disconnected() => return Ok(seq), // the coordinator is done with us
            Err(e) => return Err(e.into()),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Threads,
    Processes,
    Shm,
}

impl Mode {
    /// Whether workers are child processes (and can be killed with SIGKILL).
    fn is_process(self) -> bool {
        self != Mode::Threads
    }

    /// The address scheme of a process mode.
    fn scheme(self) -> &'static str {
        if self == Mode::Shm {
            "shm"
        } else {
            "unix"
        }
    }

    /// The mode's name in the comparison table.
    fn name(self) -> &'static str {
        match self {
            Mode::Threads => "threads",
            Mode::Processes => "processes",
            Mode::Shm => "shm procs",
        }
    }
}

/// Parses the command line into (modes, workers, seconds); `Ok(None)` asks for the usage.
fn parse(args: &[String]) -> Result<Option<(Vec<Mode>, usize, Duration)>, String> {
    let (mut modes, mut workers, mut seconds) = (Vec::new(), 3, Duration::from_secs(3));
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "threads" => modes.push(Mode::Threads),
            "processes" => modes.push(Mode::Processes),
            "shm" => modes.push(Mode::Shm),
            "--workers" => match value()?.parse() {
                Ok(n @ 1..=MAX_WORKERS) => workers = n,
                _ => return Err("--workers wants a whole number from 1 to 16".into()),
            },
            "--seconds" => match value()?.parse::<f64>() {
                Ok(s) if (0.5..=600.0).contains(&s) => seconds = Duration::from_secs_f64(s),
                _ => return Err("--seconds wants a number from 0.5 to 600".into()),
            },
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if modes.is_empty() {
        modes = vec![Mode::Threads, Mode::Processes, Mode::Shm];
    }
    modes.sort_by_key(|&m| m as u8); // threads, processes, shm; each mode once
    modes.dedup();
    Ok(Some((modes, workers, seconds)))
}

fn main() -> ExitCode {
    let lossy = |a: std::ffi::OsString| a.to_string_lossy().into_owned();
    let args: Vec<String> = std::env::args_os().skip(1).map(lossy).collect();
    let result = match &args[..] {
        // A child process: the very same worker function, here over a unix: or shm: address.
        [flag, id, addr] if flag == "--worker-process" => id
            .parse()
            .map_err(BoxError::from)
            .and_then(|id| worker(id, addr, None))
            .map(drop)
            .map_err(|e| format!("worker process {}: {e}", std::process::id()).into()),
        _ => match parse(&args) {
            Ok(Some((modes, workers, seconds))) => run_all(&modes, workers, seconds),
            Ok(None) => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("workers: {e}\n{USAGE}");
                return ExitCode::from(2);
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("workers: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// From a collector: when, slot, generation, and `None` for its first message or
/// `Some(why)` when its receiver ended.
type Event = (Instant, usize, u32, Option<String>);
type Events = mpsc::Sender<Event>;

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    counts: [AtomicU64; MAX_WORKERS],
    failed_checks: AtomicU64,
}

/// Receives one worker generation's messages, checks and counts them, and reports its end.
fn collect(rx: Receiver<Sample>, slot: usize, gen: u32, shared: &Shared, events: &Events) {
    let (mut expected, mut received) = (0u64, 0u64);
    let why = loop {
        if shared.stop.load(Relaxed) {
            return; // dropping `rx` makes the worker's next send fail: it stops
        }
        let msg = match rx.try_recv() {
            Ok(m) => m,
            Err(TryRecvError::Empty) => match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(e) => break format!("{e:?}"), // the variant's name: Disconnected, Io(..)
            },
            Err(e) => break format!("{e:?}"),
        };
        if received == 0 {
            let _ = events.send((Instant::now(), slot, gen, None));
        }
        let ok = msg.worker as usize == slot + 1 && msg.seq == expected;
        if !ok || fnv1a(&msg.payload) != msg.checksum {
            shared.failed_checks.fetch_add(1, Relaxed);
        }
        (expected, received) = (msg.seq.wrapping_add(1), received + 1);
        shared.counts[slot].fetch_add(1, Relaxed);
    };
    let why = format!("{why} after {received} messages");
    let _ = events.send((Instant::now(), slot, gen, Some(why)));
}

enum Handle {
    Thread(JoinHandle<Res<u64>>),
    Process(Child),
}

/// One mode's run: collectors, workers and the socket directory; cleaned up on drop.
struct Run {
    mode: Mode,
    dir: Option<PathBuf>,
    shared: Arc<Shared>,
    events: Events,
    collectors: Vec<JoinHandle<()>>,
    workers: Vec<Handle>,
}

impl Run {
    /// Binds a fresh address for `slot`, starts its collector, then its worker; says who.
    fn start(&mut self, slot: usize, gen: u32, panic: Option<Duration>) -> Res<String> {
        let id = slot as u32 + 1;
        let addr = match &self.dir {
            Some(dir) => format!(
                "{}:{}/worker{id}-{gen}.sock",
                self.mode.scheme(),
                dir.display()
            ),
            None => format!("thread:workers-example-{id}-{gen}"),
        };
        let rx = Receiver::<Sample>::bind(&addr)?;
        let (shared, events) = (Arc::clone(&self.shared), self.events.clone());
        let collector = thread::Builder::new().name(format!("collect-{id}"));
        let collector = collector.spawn(move || collect(rx, slot, gen, &shared, &events))?;
        self.collectors.push(collector);
        let (handle, who) = match self.mode {
            Mode::Threads => {
                let t = thread::Builder::new().name(format!("worker-{id}"));
                let t = t.spawn(move || worker(id, &addr, panic))?;
                (Handle::Thread(t), "a thread".to_string())
            }
            Mode::Processes | Mode::Shm => {
                let mut cmd = Command::new(std::env::current_exe()?);
                cmd.args(["--worker-process", &id.to_string(), &addr]);
                let child = cmd.stdin(Stdio::null()).spawn()?;
                let who = format!("pid {}", child.id());
                (Handle::Process(child), who)
            }
        };
        self.workers.push(handle);
        Ok(who)
    }

    /// Stops everything: collectors drop their receivers, so workers' sends fail and they end.
    /// Every child is reaped (killed if it lingers). Counts how the workers ended.
    fn finish(&mut self) -> BTreeMap<String, usize> {
        self.shared.stop.store(true, Relaxed);
        for c in self.collectors.drain(..) {
            let _ = c.join();
        }
        let mut ends = BTreeMap::new();
        for handle in self.workers.drain(..) {
            let end = match handle {
                Handle::Thread(t) => match t.join() {
                    Ok(Ok(_)) => "returned (receiver closed)".to_string(),
                    Ok(Err(e)) => format!("failed: {e}"),
                    Err(_) => "panicked".to_string(),
                },
                Handle::Process(mut child) => reap(&mut child),
            };
            *ends.entry(end).or_insert(0) += 1;
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        ends
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.finish();
    }
}

fn reap(child: &mut Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(2);
    let status = loop {
        match child.try_wait() {
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            Ok(None) => break child.kill().and_then(|()| child.wait()),
            other => break other.map(|s| s.unwrap_or_default()),
        }
    };
    match status.map(|s| (s.code(), s.signal())) {
        Ok((Some(0), _)) => "exited 0 (receiver closed)".to_string(),
        Ok((_, Some(9))) => "killed by SIGKILL".to_string(),
        Ok((code, signal)) => format!("ended with code {code:?}, signal {signal:?}"),
        Err(e) => format!("could not be reaped: {e}"),
    }
}

fn run_all(modes: &[Mode], workers: usize, seconds: Duration) -> Res<()> {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let secs = seconds.as_secs_f64();
    let what = format!("{workers} per mode, {PAYLOAD}-byte payloads, {secs:.1} s each");
    println!("conduit workers: {what}, {cpus} CPUs");
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        match info.payload().downcast_ref::<&str>() {
            Some(&msg) if msg == INJECTED => {
                *PANICKED_AT.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now())
            }
            _ => default_hook(info),
        }
    }));
    let mut reports = Vec::new();
    for &mode in modes {
        reports.push(run_mode(mode, workers, seconds)?);
    }
    if reports.len() > 1 {
        println!("{COMPARISON}");
        for (mode, (r, noticed, replaced)) in modes.iter().zip(&reports) {
            let (total, per) = (rate(*r), rate(r / workers as f64));
            let (noticed, replaced) = (ms(*noticed), ms(*replaced));
            let (name, fault) = (
                mode.name(),
                if mode.is_process() {
                    "SIGKILL"
                } else {
                    "panic"
                },
            );
            println!("  {name:<10} {total:>10} {per:>11}  {fault:>8} {noticed:>14} {replaced:>26}");
        }
        let (first, first_rate) = (modes[0].name(), reports[0].0);
        for (mode, (r, _, _)) in modes.iter().zip(&reports).skip(1) {
            let times = first_rate / r;
            println!(
                "  {first} carried {times:.1}x the messages per second of {} here",
                mode.name()
            );
        }
    }
    Ok(())
}

type Outcome = (f64, Option<Duration>, Option<Duration>);

/// Runs one mode; returns messages per second and the failure's notice and replacement times.
fn run_mode(mode: Mode, n: usize, seconds: Duration) -> Res<Outcome> {
    let (events_tx, events) = mpsc::channel();
    let mut run = Run {
        mode,
        dir: None,
        shared: Arc::default(),
        events: events_tx,
        collectors: Vec::new(),
        workers: Vec::new(),
    };
    if mode.is_process() {
        let name = format!("conduit-workers-{}-{}", std::process::id(), mode.scheme());
        let dir = std::env::temp_dir().join(name);
        // A directory with our pid in its name is a dead process's leftover: clear it.
        let _ = std::fs::remove_dir_all(&dir);
        let mkdir = std::fs::DirBuilder::new().mode(0o700).create(&dir);
        mkdir.map_err(|e| format!("creating {}: {e}", dir.display()))?;
        run.dir = Some(dir);
        let scheme = mode.scheme();
        println!(
            "\n== {}: each worker a child process, {scheme}: addresses ==",
            mode.name()
        );
    } else {
        *PANICKED_AT.lock().unwrap_or_else(|p| p.into_inner()) = None;
        println!("\n== threads: each worker a thread of this process, thread: addresses ==");
    }
    let victim = usize::from(n >= 2); // worker 2, or worker 1 when alone
    let fault_after = seconds.mul_f64(0.4);
    for slot in 0..n {
        let panic = (mode == Mode::Threads && slot == victim).then_some(fault_after);
        run.start(slot, 0, panic)?;
    }
    // Measure from the moment every worker has delivered its first message.
    let startup = Instant::now() + Duration::from_secs(10);
    for _ in 0..n {
        match events.recv_timeout(startup.saturating_duration_since(Instant::now())) {
            Ok((_, _, _, None)) => {}
            Ok((_, slot, _, Some(why))) => return Err(format!("worker {}: {why}", slot + 1).into()),
            Err(_) => return Err("the workers did not start within 10 s".into()),
        }
    }
    let t0 = Instant::now();
    let log = |at: Instant, what: String| println!("  {:>7.3} s  {what}", (at - t0).as_secs_f64());
    let shared = Arc::clone(&run.shared);
    let load = |c: &AtomicU64| c.load(Relaxed);
    let snapshot = || shared.counts[..n].iter().map(load).collect::<Vec<_>>();
    let (first, mut prev, mut prev_t) = (snapshot(), snapshot(), t0);
    let name = |i| format!("{:>11}", format!("worker {i}"));
    let head: String = (1..=n).map(name).collect();
    println!(
        "  messages per second in each window\n{:>13}{head}{:>11}",
        "window", "total"
    );
    let (tick, kill_at) = (seconds / WINDOWS, t0 + fault_after);
    let (mut window, mut fault, mut noticed, mut replaced) = (0, None::<Instant>, None, None);
    let mut at_fault = Vec::new(); // everyone's counts when the fault was seen
    while window < WINDOWS {
        let (now, next) = (Instant::now(), t0 + tick * (window + 1));
        if now >= next {
            let (counts, secs) = (snapshot(), (now - prev_t).as_secs_f64());
            let delta = |i: usize| (counts[i] - prev[i]) as f64 / secs;
            let rates: Vec<f64> = (0..n).map(delta).collect();
            let cols: String = rates.iter().map(|&r| format!("{:>11}", rate(r))).collect();
            let (from, to) = ((prev_t - t0).as_secs_f64(), (now - t0).as_secs_f64());
            let span = format!("{from:.2}-{to:.2} s");
            println!("  {span:>11}{cols}{:>11}", rate(rates.iter().sum()));
            (prev, prev_t, window) = (counts, now, window + 1);
            continue;
        }
        let kill_due = mode.is_process() && fault.is_none();
        if let (true, Some(Handle::Process(child))) =
            (kill_due && now >= kill_at, run.workers.get_mut(victim))
        {
            let (at, pid) = (Instant::now(), child.id());
            child.kill()?;
            let what = format!("killed worker {} (pid {pid}) with SIGKILL", victim + 1);
            log(at, what);
            (fault, at_fault) = (Some(at), snapshot());
        }
        let until = if kill_due { next.min(kill_at) } else { next };
        let Ok((at, slot, gen, end)) = events.recv_timeout(until.saturating_duration_since(now))
        else {
            continue;
        };
        let id = slot + 1;
        let since_fault = fault.map(|f| at.saturating_duration_since(f));
        match end {
            Some(why) => {
                if mode == Mode::Threads && fault.is_none() {
                    fault = *PANICKED_AT.lock().unwrap_or_else(|p| p.into_inner());
                    at_fault = snapshot();
                    if let Some(p) = fault {
                        log(p, format!("worker {id} panicked (the injected fault)"));
                    }
                }
                let mut what = format!("worker {id}'s receiver: {why}");
                if slot == victim && gen == 0 {
                    noticed = fault.map(|f| at.saturating_duration_since(f));
                    what += &format!(", {} after the fault", ms(noticed));
                }
                log(at, what);
                let who = run.start(slot, gen + 1, None)?;
                let what = format!("replacement worker {id} started ({who}), fresh address");
                log(Instant::now(), what);
            }
            None if gen > 0 => {
                replaced = since_fault;
                let after = ms(replaced);
                let what =
                    format!("replacement worker {id}'s first message, {after} after the fault");
                log(at, what);
                let now = snapshot();
                let moved = |i: usize| if i == slot { 0 } else { now[i] - at_fault[i] };
                let others: u64 = (0..n).map(moved).sum();
                let what = format!("meanwhile the other workers delivered {others} messages");
                if n > 1 {
                    println!("{:13}{what}", "");
                }
            }
            None => {}
        }
    }
    let total: u64 = prev.iter().zip(&first).map(|(c, f)| c - f).sum();
    let secs = (prev_t - t0).as_secs_f64();
    let checks = shared.failed_checks.load(Relaxed);
    let ends: Vec<String> = run
        .finish()
        .iter()
        .map(|(e, k)| format!("{k} {e}"))
        .collect();
    let (total_rate, ends) = (total as f64 / secs, ends.join(", "));
    let (all, per) = (rate(total_rate), rate(total_rate / n as f64));
    println!("  total: {total} messages in {secs:.2} s = {all} msg/s ({per} per worker)");
    println!("  {checks} failed the checksum/order check; workers: {ends}");
    if mode == Mode::Threads {
        println!("  note: a thread cannot be killed alone; abort, segfault or SIGKILL ends all");
    }
    Ok((total_rate, noticed, replaced))
}

fn rate(r: f64) -> String {
    match r {
        r if r >= 1e6 => format!("{:.2} M", r / 1e6),
        r if r >= 1e3 => format!("{:.1} k", r / 1e3),
        r => format!("{r:.0}"),
    }
}

fn ms(d: Option<Duration>) -> String {
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    d.map_or("-".to_string(), ms)
}
