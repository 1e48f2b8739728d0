//! No conduit call raises `SIGPIPE` (lib.rs, SECURITY.md), checked where a write meets a
//! peer that is gone: a shm sender waking its dead receiver, a shm receiver waking its dead
//! sender, and the acceptor answering clients that hung up right after their hello. Rust
//! programs ignore `SIGPIPE`, which would hide the signal, so each check runs in a child
//! process that restores the default disposition first (as a host program in C may have
//! it): a `SIGPIPE` there kills the child. (Pipes and stream sockets are checked the same
//! way in `resources.rs`.)
//!
//! The children are this test binary re-run as one role (`sigpipe_child`).

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use conduit::__testing::hello_for;
use conduit::{Options, Receiver, RecvTimeoutError, Sender, TrySendError};

const ENTRY: &str = "sigpipe_child";
const LONG: Duration = Duration::from_secs(20);

type Msg = (u64, Vec<u8>);

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

/// Creates the file `path` atomically.
fn mark(path: &str) {
    std::fs::write(format!("{path}.tmp"), "").unwrap();
    std::fs::rename(format!("{path}.tmp"), path).unwrap();
}

/// Waits until `path` exists (`child`, if given, must not exit meanwhile).
fn wait_for(path: &Path, mut child: Option<&mut Child>, what: &str) {
    let deadline = Instant::now() + LONG;
    while !path.exists() {
        if let Some(status) = child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            panic!("the child exited ({status}) before it {what}");
        }
        assert!(Instant::now() < deadline, "the child never {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Restores the default `SIGPIPE` disposition: from here a raised `SIGPIPE` kills us.
fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to the default is always sound.
    let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    assert_ne!(previous, libc::SIG_ERR);
}

/// Roles. With the default `SIGPIPE`: `wake_dead_receiver`, `wake_dead_sender`,
/// `acceptor_hangups`. Helpers: `sink` (binds, takes one message, then sleeps in `recv`
/// until killed), `fill` (fills its ring, then blocks in `send` until killed).
#[test]
fn sigpipe_child() {
    let Some(role) = common::role() else { return };
    common::child_watchdog(Duration::from_secs(60));
    match role.as_str() {
        "sink" => {
            let rx = Receiver::<Msg>::bind(&env("CDT_ADDR")).expect("bind");
            mark(&env("CDT_READY"));
            let first = rx.recv_timeout(LONG).expect("first message");
            assert_eq!(first.0, 0);
            mark(&env("CDT_GOT"));
            // Asleep in recv: the ring says so, and the sender wakes us on its next publish.
            let _ = rx.recv();
            panic!("recv returned while the sender was alive");
        }
        "fill" => {
            let tx = Sender::<Msg>::connect(&env("CDT_ADDR")).expect("connect");
            let mut seq = 0;
            loop {
                match tx.try_send((seq, vec![7; 500])) {
                    Ok(()) => seq += 1,
                    Err(TrySendError::Full(_)) => break,
                    Err(e) => panic!("try_send {seq}: {e}"),
                }
            }
            mark(&env("CDT_FULL"));
            // Asleep on the full ring: the receiver wakes us once it makes room.
            let _ = tx.send((seq, vec![7; 500]));
            panic!("send returned while the receiver was alive and not reading");
        }
        "wake_dead_receiver" => {
            default_sigpipe();
            let tx = Sender::<Msg>::connect(&env("CDT_ADDR")).expect("connect");
            tx.send((0, vec![1; 100])).expect("first send");
            wait_for(Path::new(&env("CDT_GO")), None, "was told to go on");
            // The first publish finds the receiver's sleep announced and wakes it: a byte
            // on a socket whose other end is gone. The death itself shows within 256 sends.
            for seq in 1..=600 {
                match tx.send((seq, vec![1; 100])) {
                    Ok(()) => {}
                    Err(e) if e.is_disconnected() => std::process::exit(0),
                    Err(e) => panic!("send {seq}: expected Disconnected, got {e}"),
                }
            }
            panic!("600 sends after the receiver's death succeeded");
        }
        "wake_dead_sender" => {
            default_sigpipe();
            let opts = Options::new().capacity(4096);
            let rx = Receiver::<Msg>::bind_with(&env("CDT_ADDR"), &opts).expect("bind");
            mark(&env("CDT_READY"));
            wait_for(Path::new(&env("CDT_GO")), None, "was told to go on");
            // Taking frames makes room for a sender that announced its sleep: the wake-up is
            // a byte on a socket whose other end is gone.
            let mut seq = 0;
            loop {
                match rx.recv_timeout(LONG) {
                    Ok(m) => {
                        assert_eq!(m.0, seq, "in order");
                        seq += 1;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                    Err(e) => panic!("recv: {e}"),
                }
            }
            assert!(seq > 1, "only {seq} messages before the end");
        }
        "acceptor_hangups" => {
            default_sigpipe();
            acceptor_hangups();
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

/// Clients that send a hello (of the right type, or of another: accepted and refused
/// answers) and close at once, on `unix:`, `shm:` and `tcp:`; the acceptor's answers meet
/// closed sockets. A real sender is served afterwards.
fn acceptor_hangups() {
    let dir = common::temp_dir();
    let addrs = [
        format!("unix:{}", dir.join("u.sock").display()),
        format!("shm:{}", dir.join("s.sock").display()),
        "tcp:127.0.0.1:0".to_string(),
    ];
    for addr in addrs {
        let rx = Receiver::<u64>::bind(&addr).expect("bind");
        let addr = rx.local_addr().expect("address");
        for i in 0..200 {
            let hello = if i % 2 == 0 {
                hello_for::<u64>(1 << 20)
            } else {
                hello_for::<String>(1 << 20)
            };
            if let Some(host_port) = addr.strip_prefix("tcp:") {
                let mut c = std::net::TcpStream::connect(host_port).expect("connect");
                c.write_all(&hello).expect("hello");
            } else {
                let path = addr.split_once(':').unwrap().1;
                let mut c = UnixStream::connect(path).expect("connect");
                c.write_all(&hello).expect("hello");
            }
            // Dropped here: closed right after the hello.
        }
        let tx = Sender::<u64>::connect(&addr).expect("a real sender after the hang-ups");
        tx.send(7).expect("send");
        let deadline = Instant::now() + LONG;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(7) => break,
                Ok(v) => panic!("{addr}: got {v}"),
                // The hung-up clients that were accepted count as senders until seen gone.
                Err(_) => assert!(Instant::now() < deadline, "{addr}: the real message"),
            }
        }
    }
}

/// Spawns a child for `role` (killed if this test dies) with `envs`.
fn spawn(role: &str, envs: &[(&str, &Path)]) -> Child {
    let mut cmd = common::child_command(ENTRY, role);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    common::die_with_parent(&mut cmd);
    cmd.spawn().expect("spawn")
}

/// Waits for a child with the default `SIGPIPE` and asserts it neither died of it nor failed.
fn expect_survived(child: Child, what: &str) {
    let pid = child.id();
    let status = common::Reaped::new(child).wait(LONG * 2, what);
    assert_ne!(
        status.signal(),
        Some(libc::SIGPIPE),
        "{what}: killed by SIGPIPE"
    );
    assert!(status.success(), "{what}: the child exited with {status}");
    common::assert_played(pid, what);
}

fn kill(mut child: Child) {
    child.kill().expect("kill");
    let status = child.wait().expect("wait");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "not killed by us");
}

#[test]
fn shm_sender_waking_a_dead_receiver() {
    let dir = common::temp_dir();
    let shm = format!("shm:{}", dir.join("r.sock").display());
    let shm = Path::new(&shm);
    let (ready, got, go) = (dir.join("ready"), dir.join("got"), dir.join("go"));
    let mut sink = spawn(
        "sink",
        &[("CDT_ADDR", shm), ("CDT_READY", &ready), ("CDT_GOT", &got)],
    );
    wait_for(&ready, Some(&mut sink), "bound");
    let sender = spawn("wake_dead_receiver", &[("CDT_ADDR", shm), ("CDT_GO", &go)]);
    wait_for(&got, Some(&mut sink), "received the first message");
    // Let the receiver settle into its sleep (it spins for at most 50 µs first).
    std::thread::sleep(Duration::from_millis(200));
    kill(sink);
    mark(go.to_str().unwrap());
    expect_survived(sender, "a shm sender waking its dead receiver");
}

#[test]
fn shm_receiver_waking_a_dead_sender() {
    let dir = common::temp_dir();
    let addr = format!("shm:{}", dir.join("r.sock").display());
    let addr = Path::new(&addr);
    let (ready, full, go) = (dir.join("ready"), dir.join("full"), dir.join("go"));
    let mut receiver = spawn(
        "wake_dead_sender",
        &[("CDT_ADDR", addr), ("CDT_READY", &ready), ("CDT_GO", &go)],
    );
    wait_for(&ready, Some(&mut receiver), "bound");
    let mut filler = spawn("fill", &[("CDT_ADDR", addr), ("CDT_FULL", &full)]);
    wait_for(&full, Some(&mut filler), "filled the ring");
    // Let the sender settle into its sleep on the full ring.
    std::thread::sleep(Duration::from_millis(200));
    kill(filler);
    mark(go.to_str().unwrap());
    expect_survived(receiver, "a shm receiver waking its dead sender");
}

#[test]
fn acceptor_answering_clients_that_hung_up() {
    let child = spawn("acceptor_hangups", &[]);
    expect_survived(child, "an acceptor answering clients that hung up");
}
