//! An EINTR storm. A thread sends SIGUSR1 every
//! millisecond (`pthread_kill`) to the receiving thread — or, in the second variant, to the
//! sending thread — while many messages cross, some of them 1 MiB (larger than any socket
//! buffer, pipe or ring here, so reads, writes and polls block and are interrupted). The
//! handler does nothing and is installed *without* `SA_RESTART`, so every interrupted
//! blocking call fails with `EINTR` (`storm_interrupts_a_blocking_read` shows the rig does
//! that). No send or receive may fail, and every message must arrive once, intact, in order.
//!
//! In-process for every backend, and across processes (the sender is this binary re-run as
//! `signal_child`) for sockets, pipes and shared memory.

mod common;

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use conduit::{channel_with, Backend, Options, Receiver, RecvTimeoutError, Sender};

// ---- the storm -----------------------------------------------------------------------------

/// Signals handled in this process.
static HANDLED: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_sigusr1(_: libc::c_int) {
    // An atomic add is async-signal-safe and leaves errno alone.
    HANDLED.fetch_add(1, Ordering::Relaxed);
}

/// Installs the no-op SIGUSR1 handler, without `SA_RESTART`, once per process.
fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid value to fill in (empty mask, no flags).
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_sigusr1 as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // No SA_RESTART: interrupted blocking calls fail with EINTR instead of restarting.
        sa.sa_flags = 0;
        // SAFETY: `sa.sa_mask` is a valid sigset_t to initialise.
        unsafe { libc::sigemptyset(&mut sa.sa_mask) };
        // SAFETY: `sa` is a fully initialised sigaction whose handler only does an atomic
        // add; the old action is not asked for.
        let rc = unsafe { libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "sigaction: {}", std::io::Error::last_os_error());
    });
}

/// SIGUSR1 to one thread every millisecond, from a thread of its own, until stopped.
///
/// The storm is made by the thread it targets and stopped (joined) by that thread's `drop`
/// of it at the latest, unwinding included, so the target is alive for every `pthread_kill`.
struct Storm {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Storm {
    /// Starts a storm at the calling thread.
    fn at_this_thread() -> Storm {
        install_handler();
        // SAFETY: pthread_self has no preconditions.
        let target = unsafe { libc::pthread_self() };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut sent = 0;
            while !flag.load(Ordering::Relaxed) {
                // SAFETY: `target` is the thread that owns this storm; it joins this thread
                // before it can exit (see the type's docs), so the id is valid.
                let rc = unsafe { libc::pthread_kill(target, libc::SIGUSR1) };
                assert_eq!(rc, 0, "pthread_kill");
                sent += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            sent
        });
        Storm {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the storm; returns how many signals it sent.
    fn stop(mut self) -> u64 {
        self.halt()
    }

    fn halt(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map_or(0, |t| t.join().expect("the storm thread"))
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The rig works: with the handler installed and a storm at this thread, a plain blocking
/// `read` of an empty socket fails with `EINTR` (it would restart, and block for good, with
/// `SA_RESTART`). So the storms below do interrupt blocking system calls.
#[test]
fn storm_interrupts_a_blocking_read() {
    let (r, w) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let storm = Storm::at_this_thread();
    let mut byte = [0u8; 1];
    let start = Instant::now();
    // SAFETY: `r` is an open socket and `byte` a valid one-byte buffer.
    let rc = unsafe { libc::read(r.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
    let errno = std::io::Error::last_os_error();
    let sent = storm.stop();
    drop(w);
    assert_eq!(rc, -1, "the read returned {rc}");
    assert_eq!(errno.raw_os_error(), Some(libc::EINTR), "{errno}");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(sent >= 1);
}

/// Connecting runs a handshake that waits for the receiver's answer: under a storm at the
/// connecting thread every connect must still succeed (regression: an interrupted wait was
/// reported as "the receiver did not answer the handshake within 10 s", at once).
#[test]
fn connect_under_a_storm() {
    within(Duration::from_secs(60), "connect under a storm", || {
        for addr in [
            common::unix_addr(),
            "tcp:127.0.0.1:0".to_string(),
            format!("shm:{}", common::temp_dir().join("r.sock").display()),
        ] {
            let rx = Receiver::<u64>::bind(&addr).expect("bind");
            let addr = rx.local_addr().expect("address");
            let before = HANDLED.load(Ordering::Relaxed);
            let storm = Storm::at_this_thread();
            let started = Instant::now();
            let mut connects = 0u64;
            // At least 300 connects and 100 signals.
            while connects < 300 || HANDLED.load(Ordering::Relaxed) - before < 100 {
                let tx = Sender::<u64>::connect(&addr)
                    .unwrap_or_else(|e| panic!("{addr}: connect {connects} under a storm: {e}"));
                tx.send(connects).expect("send");
                assert_eq!(rx.recv_timeout(LONG).expect("recv"), connects);
                connects += 1;
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "{addr}: too slow"
                );
            }
            let sent = storm.stop();
            eprintln!("signals: {connects} connects to {addr} under {sent} signals");
        }
    });
}

// ---- the workload --------------------------------------------------------------------------

/// Messages per transfer.
const COUNT: u64 = 600;
/// Longest wait for anything that should take milliseconds.
const LONG: Duration = Duration::from_secs(30);
/// Fewest signals a transfer must have absorbed for the run to count.
const MIN_SIGNALS: u64 = 20;

/// Bytes as one byte string (`serde_bytes`): megabytes encode at memcpy speed in debug.
#[derive(PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
struct Blob(#[serde(with = "serde_bytes")] Vec<u8>);

type Msg = (u64, Blob);

/// Every 40th message is 1 MiB, every 10th spans two 64 KiB pieces, the rest are small.
fn size_for(seq: u64) -> usize {
    match seq % 40 {
        7 => 1 << 20,
        n if n % 10 == 3 => 70_000 + (seq as usize * 17) % 1000,
        _ => (seq as usize * 37) % 600,
    }
}

fn message(seq: u64) -> Msg {
    (seq, Blob(common::content(seq, size_for(seq))))
}

fn check(m: &Msg, seq: u64) -> Result<(), String> {
    if m.0 != seq {
        return Err(format!("expected message {seq}, got {}", m.0));
    }
    if m.1 .0 != common::content(seq, size_for(seq)) {
        return Err(format!(
            "message {seq} damaged: {} bytes, expected {}",
            m.1 .0.len(),
            size_for(seq)
        ));
    }
    Ok(())
}

/// Which thread the storm hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Receiver,
    Sender,
}

/// Sends every message, alternating `send` and `send_timeout`, pausing 1 ms after every tenth:
/// when the storm hits the receiver, so that it waits (blocked) for more; when it hits the
/// sender, so that the transfer outlasts enough signals even when nothing makes the sender
/// wait (a storm sends one per millisecond, and a fast transfer saw too few to count).
fn send_all(tx: &Sender<Msg>) -> Result<(), String> {
    for seq in 0..COUNT {
        let sent = if seq % 2 == 0 {
            tx.send(message(seq)).map_err(|e| e.to_string())
        } else {
            tx.send_timeout(message(seq), LONG)
                .map_err(|e| e.to_string())
        };
        sent.map_err(|e| format!("send {seq}: {e}"))?;
        if seq % 10 == 9 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(())
}

/// Receives every message and then `Disconnected`, alternating `recv` and `recv_timeout`;
/// when the storm hits the sender, pauses now and then so that the sender waits (blocked)
/// for room.
fn receive_all(rx: &Receiver<Msg>, storm_on: Side) -> Result<(), String> {
    for seq in 0..COUNT {
        let got = if seq % 2 == 0 {
            rx.recv().map_err(|e| e.to_string())
        } else {
            rx.recv_timeout(LONG).map_err(|e| e.to_string())
        };
        let m = got.map_err(|e| format!("recv {seq}: {e}"))?;
        check(&m, seq)?;
        if storm_on == Side::Sender && seq % 10 == 9 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    match rx.recv_timeout(LONG) {
        Err(RecvTimeoutError::Disconnected) => Ok(()),
        Ok(m) => Err(format!("message {} after the last", m.0)),
        Err(e) => Err(format!("after the last message: {e}")),
    }
}

/// Runs `body` on a thread of its own, failing (not hanging) if it takes over `limit`.
fn within(limit: Duration, what: &str, body: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel();
    let runner = std::thread::spawn(move || {
        body();
        let _ = done.send(());
    });
    match finished.recv_timeout(limit) {
        Ok(()) => runner.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(runner.join().unwrap_err())
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: still running after {limit:?}"),
    }
}

// ---- in-process --------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Setup {
    Thread,
    ThreadNamed,
    Socket,
    Pipe,
    Unix,
    Tcp,
    ShmAnon,
    ShmBound,
}

const SETUPS: [Setup; 8] = [
    Setup::Thread,
    Setup::ThreadNamed,
    Setup::Socket,
    Setup::Pipe,
    Setup::Unix,
    Setup::Tcp,
    Setup::ShmAnon,
    Setup::ShmBound,
];

/// A connected pair with small buffers (16 messages; 64 KiB socket and pipe buffers; 256 KiB
/// rings), so a 1 MiB message takes many writes or pieces and waits for room.
fn pair(setup: Setup) -> (Sender<Msg>, Receiver<Msg>) {
    let opts = Options::new().capacity(match setup {
        Setup::Thread | Setup::ThreadNamed => 16,
        Setup::ShmAnon | Setup::ShmBound => 256 << 10,
        _ => 64 << 10,
    });
    let backend = match setup {
        Setup::Thread => Backend::Thread,
        Setup::Socket => Backend::Socket,
        Setup::Pipe => Backend::Pipe,
        Setup::ShmAnon => Backend::Shm,
        _ => {
            let addr = match setup {
                Setup::ThreadNamed => {
                    static N: AtomicU64 = AtomicU64::new(0);
                    format!("thread:signals-{}", N.fetch_add(1, Ordering::Relaxed))
                }
                Setup::Unix => common::unix_addr(),
                Setup::Tcp => "tcp:127.0.0.1:0".to_string(),
                _ => format!("shm:{}", common::temp_dir().join("r.sock").display()),
            };
            let rx = Receiver::<Msg>::bind_with(&addr, &opts).expect("bind");
            let addr = rx.local_addr().unwrap_or(addr);
            let tx = Sender::<Msg>::connect_with(&addr, &opts).expect("connect");
            return (tx, rx);
        }
    };
    channel_with::<Msg>(backend, &opts).expect("channel")
}

fn in_process(storm_on: Side) {
    for setup in SETUPS {
        let what = format!("{setup:?}, storm on the {storm_on:?}");
        let started = Instant::now();
        // The receiver's storm starts first: binding, connecting and the handshake run under
        // it too.
        let storm = (storm_on == Side::Receiver).then(Storm::at_this_thread);
        let (tx, rx) = pair(setup);
        let sender = std::thread::spawn(move || {
            let storm = (storm_on == Side::Sender).then(Storm::at_this_thread);
            let result = send_all(&tx);
            drop(tx);
            (result, storm.map_or(0, Storm::stop))
        });
        let received = receive_all(&rx, storm_on);
        let mut signals = storm.map_or(0, Storm::stop);
        // A failed receive leaves the sender blocked on a full buffer: release it.
        drop(rx);
        let (sent, sender_signals) = sender.join().expect("the sending thread");
        signals += sender_signals;
        if let Err(e) = sent.and(received) {
            panic!("{what}: {e}");
        }
        eprintln!(
            "signals: {what}: {COUNT} messages, {signals} signals, {:?}",
            started.elapsed()
        );
        assert!(
            signals >= MIN_SIGNALS,
            "{what}: only {signals} signals sent"
        );
    }
}

/// Every backend in one process; the storm hits the receiving thread.
#[test]
fn storm_on_the_receiving_thread() {
    within(Duration::from_secs(120), "storm on the receiver", || {
        let before = HANDLED.load(Ordering::Relaxed);
        in_process(Side::Receiver);
        assert!(HANDLED.load(Ordering::Relaxed) - before >= MIN_SIGNALS);
    });
}

/// Every backend in one process; the storm hits the sending thread.
#[test]
fn storm_on_the_sending_thread() {
    within(Duration::from_secs(120), "storm on the sender", || {
        let before = HANDLED.load(Ordering::Relaxed);
        in_process(Side::Sender);
        assert!(HANDLED.load(Ordering::Relaxed) - before >= MIN_SIGNALS);
    });
}

// ---- across processes --------------------------------------------------------------------

const ENTRY: &str = "signal_child";

fn fail(code: i32, what: String) -> ! {
    eprintln!("signal child: {what}");
    std::process::exit(code)
}

/// The sending child: sends every message to its parent, under a storm of its own when
/// `CDT_STORM=sender`. Exit codes: 2 setup; 3 a send failed; 5 too few signals handled.
#[test]
fn signal_child() {
    let Some(role) = common::role() else { return };
    assert_eq!(role, "sender");
    common::child_watchdog(Duration::from_secs(100));
    let storm_on = match std::env::var("CDT_STORM").as_deref() {
        Ok("sender") => Side::Sender,
        _ => Side::Receiver,
    };
    // The storm starts before the connect, so the handshake runs under it too.
    let storm = (storm_on == Side::Sender).then(Storm::at_this_thread);
    let tx = match common::sender_from_parent::<Msg>(&Options::new()) {
        Ok(tx) => tx,
        Err(e) => fail(2, format!("sender: {e}")),
    };
    if let Err(e) = send_all(&tx) {
        fail(3, e);
    }
    let sent = storm.map_or(0, Storm::stop);
    let handled = HANDLED.load(Ordering::Relaxed);
    if storm_on == Side::Sender && (sent < MIN_SIGNALS || handled < MIN_SIGNALS) {
        fail(5, format!("{sent} signals sent, {handled} handled"));
    }
    drop(tx);
    std::process::exit(0);
}

fn across_processes(target: common::Target, storm_on: Side) {
    let what = format!("{target:?}, storm on the {storm_on:?}");
    let started = Instant::now();
    let mut cmd = common::child_command(ENTRY, "sender");
    cmd.env(
        "CDT_STORM",
        match storm_on {
            Side::Sender => "sender",
            Side::Receiver => "receiver",
        },
    );
    common::die_with_parent(&mut cmd);
    // 256 KiB rings and socket buffers of the defaults: 1 MiB never fits at once.
    let opts = Options::new().capacity(256 << 10);
    let opts = if target == common::Target::Shm || target == common::Target::ShmAnon {
        opts
    } else {
        Options::new()
    };
    // The storm starts before the bind and the spawn, which run under it too.
    let storm = (storm_on == Side::Receiver).then(Storm::at_this_thread);
    let rx = target.receiver_for_child::<Msg>(&opts, &mut cmd);
    let child = common::Reaped::new(cmd.spawn().expect("spawn"));
    drop(cmd);
    let received = receive_all(&rx, storm_on);
    let signals = storm.map_or(0, Storm::stop);
    drop(rx);
    let pid = child.id();
    let status = child.wait(Duration::from_secs(100), &what);
    if let Err(e) = received {
        panic!("{what}: {e} (the child exited with {status})");
    }
    assert!(
        status.success(),
        "{what}: the sending child exited with {status}"
    );
    common::assert_played(pid, &what);
    eprintln!(
        "signals: {what}, across processes: {COUNT} messages, {:?}{}",
        started.elapsed(),
        if storm_on == Side::Receiver {
            format!(", {signals} signals")
        } else {
            String::new()
        }
    );
    if storm_on == Side::Receiver {
        assert!(
            signals >= MIN_SIGNALS,
            "{what}: only {signals} signals sent"
        );
    }
}

fn across_processes_both_ways(target: common::Target) {
    within(
        Duration::from_secs(200),
        &format!("{target:?}"),
        move || {
            across_processes(target, Side::Receiver);
            across_processes(target, Side::Sender);
        },
    );
}

#[test]
fn across_processes_unix() {
    across_processes_both_ways(common::Target::Unix);
}

#[test]
fn across_processes_tcp() {
    across_processes_both_ways(common::Target::Tcp);
}

#[test]
fn across_processes_pipe() {
    across_processes_both_ways(common::Target::Pipe);
}

#[test]
fn across_processes_socketpair() {
    across_processes_both_ways(common::Target::Socket);
}

#[test]
fn across_processes_shm() {
    across_processes_both_ways(common::Target::Shm);
}

#[test]
fn across_processes_shm_anonymous() {
    across_processes_both_ways(common::Target::ShmAnon);
}
