//! Sealed buffers (`conduit::BlobBuf`) between real processes over `shm:` addresses.
//!
//! - A sealed `Bytes` (1 MiB alone; 100 KiB beside inline bytes, a slice of another at a
//!   non-zero offset, and a string) arrives whole and sealed, and the receiver's copy cannot
//!   be written: its mapping is read-only, and the file refuses writes, writable mappings
//!   and resizes even from the receiving process. Forwarded to a third process and back, it
//!   is still sealed and still the same file (same inode): it was never copied.
//! - Past the 64 descriptors a connection keeps in flight, further sealed buffers are
//!   copied: 200 sent before the receiver reads one all arrive, the first 64 sealed.
//! - SIGKILL of a sender while descriptors are in flight: the receiver gets every message
//!   whole, in order, then `Disconnected`, and then holds no descriptor and no mapping it
//!   did not hold before (counted in a child process, so parallel tests cannot disturb it).
//! - SIGKILL of a receiver that holds mapped buffers: the sender's send fails with
//!   `Disconnected` (the message handed back), and the sender is left holding nothing.
//!
//! Children are this test binary re-run as one role (`sealed_child`). `sealed_local.rs` has
//! the cases that need no second process.

mod common;
mod parcels;

use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use conduit::{Options, Receiver, RecvTimeoutError, Sender};
use parcels::*;

/// The test function a child process runs.
const ENTRY: &str = "sealed_child";
/// Longest wait for anything that should take milliseconds.
const LONG: Duration = Duration::from_secs(30);
/// How long a send may go on after its receiver was killed.
const SEND_FAILS: Duration = Duration::from_secs(10);
/// The longest a leak-checking child may run.
const CHILD_LIMIT: Duration = Duration::from_secs(120);
/// How long counts may take to return once everything is dropped.
const SETTLE: Duration = Duration::from_secs(3);
// ---- processes -----------------------------------------------------------------------------

/// Starts this binary as `role`, dying with the thread that starts it (and killed if the
/// test lets go of it without waiting).
fn spawn(role: &str, envs: &[(&str, &str)]) -> common::Reaped {
    let mut cmd = common::child_command(ENTRY, role);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    common::die_with_parent(&mut cmd);
    common::Reaped::new(cmd.spawn().expect("spawn a child"))
}

/// SIGKILL for `child`, which must be what ends it.
fn kill(child: common::Reaped, what: &str) {
    // SAFETY: kill(2) with our own child's pid: the child is not reaped yet (`Reaped` owns
    // it), so the pid cannot name another process.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    let status = child.wait(LONG, what);
    assert_eq!(
        status.signal(),
        Some(9),
        "{what}: not ended by the kill ({status})"
    );
}

fn fresh_addr(name: &str) -> String {
    format!("shm:{}", common::temp_dir().join(name).display())
}

fn bind(opts: &Options) -> (Receiver<Parcel>, String) {
    let addr = fresh_addr("r.sock");
    let rx = Receiver::bind_with(&addr, opts).expect("bind");
    (rx, addr)
}

/// The next parcel; a bound receiver says `Disconnected` between senders, which is waited
/// out.
fn next(rx: &Receiver<Parcel>) -> Parcel {
    let deadline = Instant::now() + LONG;
    loop {
        match rx.recv_timeout(LONG) {
            Ok(p) => return p,
            Err(RecvTimeoutError::Disconnected) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => panic!("no parcel: {e}"),
        }
    }
}

fn assert_disconnected(rx: &Receiver<Parcel>, what: &str) {
    match rx.recv_timeout(LONG) {
        Err(RecvTimeoutError::Disconnected) => {}
        Ok(p) => panic!("{what}: parcel {} after the last one", p.seq),
        Err(e) => panic!("{what}: expected Disconnected, got {e}"),
    }
}

/// Connects to a receiver a child is about to bind.
fn connect_when_bound(addr: &str) -> Sender<Parcel> {
    let deadline = Instant::now() + LONG;
    loop {
        match Sender::connect(addr) {
            Ok(tx) => return tx,
            Err(e) => assert!(Instant::now() < deadline, "{addr} never bound: {e}"),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---- leak counts ---------------------------------------------------------------------------

/// (open descriptors, memfd mappings, sealed-buffer mappings) of this process.
fn counts() -> (usize, usize, usize) {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    let memfd = maps.lines().filter(|l| l.contains("memfd:")).count();
    let blobs = maps.lines().filter(|l| l.contains("conduit-blob")).count();
    (conduit::open_fd_count().expect("fd count"), memfd, blobs)
}

/// Polls until the counts are `base`, for at most `SETTLE`; then asserts they are.
fn settle(base: (usize, usize, usize), what: &str) {
    let start = Instant::now();
    while counts() != base && start.elapsed() < SETTLE {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        counts(),
        base,
        "{what}: (descriptors, memfd maps, blob maps)"
    );
}

/// One sealed buffer through a bound receiver and back out of scope, so that what the first
/// use of each part sets up once is there before the counts are taken.
fn warm_up() -> (usize, usize, usize) {
    let (rx, addr) = bind(&Options::new());
    let tx = Sender::<Parcel>::connect(&addr).expect("connect");
    tx.send(streamed(0, true)).expect("send");
    check(&next(&rx), &streamed(0, false), "warm-up");
    drop((tx, rx));
    // Steady: the same over five samples 5 ms apart (the acceptor thread may still hold the
    // connection's descriptors for a moment; counts then are only ever higher).
    let start = Instant::now();
    let (mut last, mut same) = (counts(), 0);
    while same < 5 && start.elapsed() < SETTLE {
        std::thread::sleep(Duration::from_millis(5));
        let now = counts();
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    assert_eq!(last.2, 0, "sealed buffers still mapped after the warm-up");
    last
}

// ---- child side ----------------------------------------------------------------------------

fn child_fail(code: i32, what: impl std::fmt::Display) -> ! {
    eprintln!("sealed child: {what}");
    std::process::exit(code)
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| child_fail(2, format!("{name} is not set")))
}

fn child_send(tx: &Sender<Parcel>, p: Parcel) {
    let seq = p.seq;
    if let Err(e) = tx.send(p) {
        child_fail(3, format!("send {seq}: {e}"));
    }
}

/// Roles: `mixed` (the 1 MiB and the mixed parcel to CDT_ADDR), `relay` (binds CDT_RELAY,
/// takes the mixed parcel, checks it and sends it on to CDT_ADDR), `many` (200 parcels of
/// one 64 KiB sealed buffer), `stream` (parcels until killed), `sink` (binds CDT_ADDR, takes
/// CDT_HOLD parcels or all, holding them), `killed_sender` and `killed_receiver` (the leak
/// checks). Exit codes: 2 setup; 3 send failed; 4 bad parcel; 9 never killed.
#[test]
fn sealed_child() {
    let Some(role) = common::role() else { return };
    let give_up = Instant::now() + Duration::from_secs(60);
    let connect = || Sender::connect(&env("CDT_ADDR")).unwrap_or_else(|e| child_fail(2, e));
    match role.as_str() {
        "mixed" => {
            let tx = connect();
            child_send(&tx, megabyte(true));
            child_send(&tx, mixed(true));
        }
        "relay" => {
            let rx = Receiver::<Parcel>::bind(&env("CDT_RELAY"))
                .unwrap_or_else(|e| child_fail(2, format!("bind: {e}")));
            let p = rx
                .recv_timeout(LONG)
                .unwrap_or_else(|e| child_fail(4, format!("recv: {e}")));
            check(&p, &mixed(false), "the relay");
            all_sealed(&p, "the relay");
            for b in &p.blobs {
                assert_read_only(b, "in the relay");
            }
            child_send(&connect(), p);
        }
        "many" => {
            let tx = connect();
            for seq in 0..200 {
                child_send(&tx, single(seq, true));
            }
        }
        "stream" => {
            let tx = connect();
            for seq in 0.. {
                child_send(&tx, streamed(seq, true));
                if Instant::now() > give_up {
                    child_fail(9, "never killed");
                }
            }
        }
        "sink" => sink(give_up),
        "killed_sender" => {
            common::child_watchdog(CHILD_LIMIT);
            killed_sender();
        }
        "killed_receiver" => {
            common::child_watchdog(CHILD_LIMIT);
            killed_receiver();
        }
        other => child_fail(2, format!("unknown role {other}")),
    }
}

/// Binds CDT_ADDR with a small ring, says so in CDT_READY, takes CDT_HOLD parcels (`all`:
/// every one) and holds them, mapped, until killed.
fn sink(give_up: Instant) {
    let addr = env("CDT_ADDR");
    let rx = Receiver::<Parcel>::bind_with(&addr, &Options::new().capacity(64 * KIB))
        .unwrap_or_else(|e| child_fail(2, format!("bind {addr}: {e}")));
    let ready = env("CDT_READY");
    std::fs::write(format!("{ready}.tmp"), "bound")
        .and_then(|()| std::fs::rename(format!("{ready}.tmp"), &ready))
        .unwrap_or_else(|e| child_fail(2, format!("writing {ready}: {e}")));
    let hold: Option<u64> = env("CDT_HOLD").parse().ok();
    let mut held = Vec::new();
    while hold.is_none_or(|n| (held.len() as u64) < n) && Instant::now() < give_up {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(p) => {
                check(&p, &streamed(held.len() as u64, false), "the sink");
                held.push(p);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(e) => child_fail(4, format!("recv: {e}")),
        }
    }
    while Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(50));
    }
    child_fail(9, format!("never killed (holding {} parcels)", held.len()))
}

/// Rounds of: a `stream` child sends; once some parcels arrived (and, every other round,
/// after a pause that lets it fill its descriptors in flight and the ring), it is killed.
/// Everything it sent whole arrives, in order, then `Disconnected`; once the parcels and
/// the receiver are dropped, this process holds what it held before.
fn killed_sender() {
    let base = warm_up();
    let seed = std::env::var("CDT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| common::XorShift::new(std::process::id().into()).next_u64());
    eprintln!("sealed: killed senders: seed {seed} (CDT_SEED={seed} repeats it)");
    let mut rng = common::XorShift::new(seed);
    let mut sealed_seen = 0;
    for round in 0..8 {
        let what = format!("round {round}");
        let (rx, addr) = bind(&Options::new().capacity(256 * KIB));
        let sender = spawn("stream", &[("CDT_ADDR", &addr)]);
        let after = 1 + rng.below(40);
        let mut got = Vec::new();
        while (got.len() as u64) < after {
            let p = next(&rx);
            check(&p, &streamed(got.len() as u64, false), &what);
            got.push(p);
        }
        if round % 2 == 1 {
            std::thread::sleep(Duration::from_millis(50));
        } else {
            std::thread::sleep(Duration::from_micros(rng.below(3_000)));
        }
        kill(sender, &what);
        loop {
            match rx.recv_timeout(LONG) {
                Ok(p) => {
                    check(&p, &streamed(got.len() as u64, false), &what);
                    got.push(p);
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!("{what}: after the kill: {e}"),
            }
        }
        let sealed = got.iter().flat_map(|p| &p.blobs).filter(|b| b.is_sealed());
        let sealed = sealed.count();
        sealed_seen += sealed;
        eprintln!(
            "sealed: {what}: {} parcels ({sealed} sealed buffers) before Disconnected",
            got.len()
        );
        drop((got, rx));
        settle(base, &what);
    }
    assert!(sealed_seen > 0, "no buffer travelled as its descriptor");
}

/// Rounds of: a `sink` child takes parcels and holds them; this process sends until the
/// sink is killed (blocked on its full ring, or sending freely while it holds every
/// parcel). The send then fails with `Disconnected` and hands the parcel back; once the
/// sender is dropped, this process holds what it held before.
fn killed_receiver() {
    let base = warm_up();
    for (round, hold) in ["3", "all", "3", "all"].into_iter().enumerate() {
        let what = format!("round {round} (the sink holds {hold})");
        let (addr, ready) = (fresh_addr("sink.sock"), common::temp_dir().join("ready"));
        let envs = [("CDT_ADDR", &*addr), ("CDT_READY", ready.to_str().unwrap())];
        let sink = spawn("sink", &[envs[0], envs[1], ("CDT_HOLD", hold)]);
        let deadline = Instant::now() + LONG;
        while !ready.exists() {
            assert!(Instant::now() < deadline, "{what}: the sink never bound");
            std::thread::sleep(Duration::from_millis(2));
        }
        let tx = Sender::<Parcel>::connect(&addr).expect("connect");
        let progress = Arc::new(AtomicU64::new(0));
        let (done_tx, done_rx) = mpsc::channel();
        let counter = progress.clone();
        let free = hold == "all";
        let sending = std::thread::spawn(move || {
            for seq in 0.. {
                match tx.send(streamed(seq, true)) {
                    Ok(()) => counter.store(seq + 1, Ordering::SeqCst),
                    Err(e) => {
                        let back = e.is_disconnected().then(|| e.into_inner());
                        let _ = done_tx.send((Instant::now(), seq, back.map(|p| p.seq)));
                        return;
                    }
                }
                if free {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        // Blocked on the full ring (no progress for 300 ms), or 60 parcels out.
        let (mut last, mut since) = (0, Instant::now());
        loop {
            if let Ok((_, seq, _)) = done_rx.try_recv() {
                panic!("{what}: send {seq} failed before the kill");
            }
            let now = progress.load(Ordering::SeqCst);
            if free && now >= 60 {
                break;
            }
            if now != last {
                (last, since) = (now, Instant::now());
            } else if !free && now > 0 && since.elapsed() > Duration::from_millis(300) {
                break;
            }
            assert!(Instant::now() < deadline, "{what}: never blocked");
            std::thread::sleep(Duration::from_millis(5));
        }
        let killed_at = Instant::now();
        kill(sink, &what);
        let Ok((at, seq, back)) = done_rx.recv_timeout(SEND_FAILS) else {
            panic!("{what}: sends went on {SEND_FAILS:?} after the receiver was SIGKILLed");
        };
        assert_eq!(back, Some(seq), "{what}: Disconnected, the parcel back");
        sending.join().expect("the sending thread");
        eprintln!(
            "sealed: {what}: send {seq} failed {:?} after the kill",
            at.saturating_duration_since(killed_at)
        );
        settle(base, &what);
    }
}

// ---- parent side ---------------------------------------------------------------------------

#[test]
fn sealed_buffers_cross_processes_sealed_and_read_only() {
    let (rx, addr) = bind(&Options::new());
    let sender = spawn("mixed", &[("CDT_ADDR", &addr)]);
    let one = next(&rx);
    check(&one, &megabyte(false), "1 MiB");
    all_sealed(&one, "1 MiB");
    assert_read_only(&one.blobs[0], "1 MiB");
    let two = next(&rx);
    check(&two, &mixed(false), "mixed");
    all_sealed(&two, "mixed");
    for (i, b) in two.blobs.iter().enumerate() {
        assert_read_only(b, &format!("mixed, buffer {i}"));
    }
    sender.expect_success(LONG, "the sender of sealed buffers");
    // On to a third process, which checks it and sends it back: still sealed, still the same
    // files (the descriptors went, not the bytes).
    let relay_addr = fresh_addr("relay.sock");
    let relay = spawn("relay", &[("CDT_ADDR", &addr), ("CDT_RELAY", &relay_addr)]);
    let tx = connect_when_bound(&relay_addr);
    tx.send(two.clone()).expect("forward");
    let back = next(&rx);
    check(&back, &mixed(false), "back from the relay");
    all_sealed(&back, "back from the relay");
    for (i, (b, sent)) in back.blobs.iter().zip(&two.blobs).enumerate() {
        assert_read_only(b, &format!("back from the relay, buffer {i}"));
        assert_ne!(b.as_ptr(), sent.as_ptr(), "a mapping of its own");
        assert_eq!(
            inode_of(b),
            inode_of(sent),
            "buffer {i}: another file came back"
        );
    }
    relay.expect_success(LONG, "the relay");
    drop(tx);
    assert_disconnected(&rx, "after the relay");
}

#[test]
fn past_the_descriptors_in_flight_sealed_buffers_are_copied() {
    const MANY: u64 = 200;
    // Room in the ring for every parcel, copied or not: the receiver reads none until the
    // sender is done.
    let (rx, addr) = bind(&Options::new().capacity(16 * MIB));
    spawn("many", &[("CDT_ADDR", &addr)]).expect_success(LONG, "200 sealed parcels");
    for seq in 0..MANY {
        let p = rx.recv_timeout(LONG).expect("a parcel");
        check(&p, &single(seq, false), "many");
        // Nothing was released while the sender sent: the first 64 took descriptors, the
        // rest were copied.
        let sealed = p.blobs[0].is_sealed();
        assert_eq!(sealed, seq < MAX_IN_FLIGHT, "parcel {seq}: sealed");
    }
    assert_disconnected(&rx, "after 200 parcels");
}

#[test]
fn sender_killed_with_descriptors_in_flight_leaks_nothing() {
    spawn("killed_sender", &[]).expect_success(CHILD_LIMIT + LONG, "killed senders");
}

#[test]
fn receiver_killed_holding_sealed_buffers_fails_the_send_and_leaks_nothing() {
    spawn("killed_receiver", &[]).expect_success(CHILD_LIMIT + LONG, "killed receivers");
}
