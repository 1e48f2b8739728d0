//! Resources a channel touches outside itself: socket files (mode, reclaim, refusal, removal),
//! peers of another uid, file descriptors, and SIGPIPE. Tests that change process-wide state
//! (umask, uid, fd counts, signal dispositions) run in a child process of their own.

mod common;
mod wire;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use conduit::__testing::hello_for;
use conduit::{channel, open_fd_count, Backend, Error, Receiver, RecvTimeoutError, Sender};
use wire::*;

/// The environment variable that hands an address to a child.
const ADDR: &str = "CONDUIT_TEST_ADDR";

fn child_addr() -> String {
    std::env::var(ADDR).expect("the parent passes an address")
}

fn unix_path(addr: &str) -> PathBuf {
    PathBuf::from(addr.strip_prefix("unix:").expect("a unix: address"))
}

/// A receiver at `addr` works: a sender connects and a message goes through.
fn assert_serves(rx: &Receiver<Job>, addr: &str) {
    let tx = Sender::<Job>::connect(addr).expect("connect to the live receiver");
    tx.send(job(1, 10)).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), job(1, 10));
}

// ---- 6. socket files -------------------------------------------------------------------------

#[test]
fn socket_file_is_0600_whatever_the_umask() {
    if common::role().as_deref() != Some("umask") {
        return run_child("socket_file_is_0600_whatever_the_umask", "umask", &[]);
    }
    for mask in [0, 0o002, 0o077, 0o777] {
        // SAFETY: umask only changes this (child) process's file creation mask.
        unsafe { libc::umask(mask) };
        let addr = common::unix_addr();
        let rx = Receiver::<Job>::bind(&addr).unwrap();
        let mode = std::fs::metadata(unix_path(&addr)).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o600, "socket file mode under umask {mask:o}");
        assert_serves(&rx, &addr);
    }
}

#[test]
fn stale_socket_file_is_reclaimed() {
    if common::role().as_deref() == Some("vanish") {
        // A receiver whose process dies without running destructors.
        let rx = Receiver::<Job>::bind(&child_addr()).unwrap();
        std::mem::forget(rx);
        // SAFETY: _exit ends the process at once; nothing after it runs.
        unsafe { libc::_exit(0) };
    }
    watchdog("stale_socket_file_is_reclaimed", reclaim_stale);
}

fn reclaim_stale() {
    // Left by a std listener that was dropped: the file stays, nobody listens.
    let addr = common::unix_addr();
    drop(UnixListener::bind(unix_path(&addr)).unwrap());
    assert!(unix_path(&addr).exists(), "std leaves its socket file");
    let rx = Receiver::<Job>::bind(&addr).expect("reclaim a dead listener's file");
    assert_serves(&rx, &addr);
    // Left by a conduit receiver in a process that died.
    let addr = common::unix_addr();
    let vanish = common::spawn_child("stale_socket_file_is_reclaimed", "vanish", &[(ADDR, &addr)]);
    let pid = vanish.id();
    let status = wait_child(vanish, "vanish");
    assert!(status.success() && unix_path(&addr).exists(), "{status}");
    common::assert_played(pid, "vanish");
    let rx = Receiver::<Job>::bind(&addr).expect("reclaim a dead receiver's file");
    assert_serves(&rx, &addr);
}

#[test]
fn live_socket_is_addr_in_use() {
    watchdog("live_socket_is_addr_in_use", live_socket);
}

fn live_socket() {
    let addr = common::unix_addr();
    let rx = Receiver::<Job>::bind(&addr).unwrap();
    let ino = std::fs::metadata(unix_path(&addr)).unwrap().ino();
    match Receiver::<Job>::bind(&addr) {
        Err(Error::AddrInUse { .. }) => {}
        other => panic!("a second receiver at a live address: {other:?}"),
    }
    match Receiver::<u64>::bind(&addr) {
        Err(Error::AddrInUse { .. }) => {}
        other => panic!("a receiver of another type at a live address: {other:?}"),
    }
    assert_eq!(std::fs::metadata(unix_path(&addr)).unwrap().ino(), ino);
    assert_serves(&rx, &addr);
    // A live listener that is not conduit's is not taken over either.
    let addr = common::unix_addr();
    let listener = UnixListener::bind(unix_path(&addr)).unwrap();
    match Receiver::<Job>::bind(&addr) {
        Err(Error::AddrInUse { .. }) => {}
        other => panic!("a receiver where a std listener listens: {other:?}"),
    }
    listener.set_nonblocking(true).unwrap();
    let _client = UnixStream::connect(unix_path(&addr)).expect("the listener still listens");
    listener.accept().expect("and accepts");
}

/// Binding at `path` (something that is not ours) fails and leaves it as it was.
fn assert_refused_untouched(path: &Path, what: &str) {
    let before = std::fs::symlink_metadata(path).unwrap();
    let link = std::fs::read_link(path).ok();
    let result = Receiver::<Job>::bind(&format!("unix:{}", path.display()));
    assert!(result.is_err(), "{what}: bind succeeded");
    let after = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{what}: gone: {e}"));
    assert_eq!(
        (before.ino(), before.mode()),
        (after.ino(), after.mode()),
        "{what}"
    );
    assert_eq!(
        std::fs::read_link(path).ok(),
        link,
        "{what}: symlink target"
    );
}

#[test]
fn foreign_files_at_the_path_are_left_alone() {
    let dir = common::temp_dir();
    let file = dir.join("file");
    std::fs::write(&file, b"precious").unwrap();
    assert_refused_untouched(&file, "a regular file");
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");

    let subdir = dir.join("dir");
    std::fs::create_dir(&subdir).unwrap();
    assert_refused_untouched(&subdir, "a directory");

    let stale = dir.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let targets = [
        ("a symlink to a regular file", file.clone()),
        ("a symlink to a stale socket", stale.clone()),
        ("a symlink to a directory", subdir.clone()),
        ("a dangling symlink", dir.join("nowhere")),
    ];
    for (i, (what, target)) in targets.into_iter().enumerate() {
        let link = dir.join(format!("link{i}"));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_refused_untouched(&link, what);
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
    assert!(
        stale.exists(),
        "the symlinked stale socket is not reclaimed through the link"
    );
    assert!(
        !dir.join("nowhere").exists(),
        "nothing is created at a dangling link's target"
    );
    assert_eq!(std::fs::read_dir(&subdir).unwrap().count(), 0);

    // A dead socket of another user is not reclaimed (needs root to make one).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&stale, Some(65534), Some(65534)).unwrap();
        assert_refused_untouched(&stale, "another user's stale socket");
    }
}

#[test]
fn receiver_drop_removes_only_its_own_socket_file() {
    watchdog(
        "receiver_drop_removes_only_its_own_socket_file",
        drop_removes_own_file,
    );
}

fn drop_removes_own_file() {
    let addr = common::unix_addr();
    let path = unix_path(&addr);
    drop(Receiver::<Job>::bind(&addr).unwrap());
    assert!(!path.exists(), "drop removes the socket file");
    // Replaced while bound: the new owner's file survives the old receiver's drop.
    let old = Receiver::<Job>::bind(&addr).unwrap();
    std::fs::remove_file(&path).unwrap();
    let new = Receiver::<Job>::bind(&addr).unwrap();
    drop(old);
    assert!(path.exists(), "a newer receiver's file is not removed");
    assert_serves(&new, &addr);
    drop(new);
    assert!(!path.exists());
    let old = Receiver::<Job>::bind(&addr).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"someone else's").unwrap();
    drop(old);
    assert_eq!(std::fs::read(&path).unwrap(), b"someone else's");
}

// ---- 7. other uids ---------------------------------------------------------------------------

/// True when uid 65534 can reach and execute `path` (every ancestor searchable by others).
fn others_can_exec(path: &Path) -> bool {
    let x_for_others = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.mode() & 0o001 != 0);
    x_for_others(path) && path.ancestors().skip(1).all(x_for_others)
}

#[test]
fn other_uid_is_refused() {
    if common::role().as_deref() == Some("nobody") {
        return connect_as_nobody(&child_addr());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: needs root to switch uid");
        eprintln!("other_uid_is_refused skipped: needs root to switch uid");
        return;
    }
    let addr = common::unix_addr();
    let path = unix_path(&addr);
    let rx = Receiver::<Job>::bind(&addr).unwrap();
    let dir = path.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut exe = std::env::current_exe().unwrap();
    if !others_can_exec(&exe) {
        let copy_dir = common::temp_dir();
        std::fs::set_permissions(&copy_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = copy_dir.join("nobody-test");
        std::fs::copy(&exe, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        exe = copy;
    }
    assert!(
        others_can_exec(&exe),
        "{} is not executable by others",
        exe.display()
    );
    let child = Command::new(&exe)
        .args([
            "other_uid_is_refused",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(common::ROLE, "nobody")
        .env(ADDR, &addr)
        .current_dir("/")
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let status = wait_child(child, "uid 65534");
    assert!(status.success(), "the uid 65534 child: {status}");
    match rx.recv_timeout(Duration::from_millis(300)) {
        Err(RecvTimeoutError::Timeout) => {}
        other => panic!("the receiver yielded {other:?} after another uid's attempts"),
    }
    assert_serves(&rx, &addr);
}

/// Runs as uid 65534 against a receiver of uid 0 whose socket file lets anyone connect.
fn connect_as_nobody(addr: &str) {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 65534);
    match Sender::<Job>::connect(addr) {
        Err(Error::PermissionDenied { .. }) => {}
        other => panic!("a sender of another uid: {other:?}"),
    }
    // The file system lets us in; the receiver's acceptor must refuse us itself.
    let mut c = UnixStream::connect(unix_path(addr)).expect("the socket file is open to all");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let reply = read_hello(&mut c);
    assert_eq!((&reply[..4], reply[6]), (&b"CNDT"[..], 3), "a refusal");
    let _ = c.write_all(&hello_for::<Job>(1 << 20));
    let _ = c.write_all(&frames(&conduit::__testing::encode(&job(7, 10))));
    let mut rest = Vec::new();
    match c.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "nothing follows the refusal"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
}

// ---- 8. file descriptors ---------------------------------------------------------------------

/// Polls (driving `rx`, if any) until the fd count is `want`, for at most 2 s.
fn settle(rx: Option<&Receiver<Job>>, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(rx) = rx {
            let _ = rx.try_recv();
        }
        let n = open_fd_count().unwrap();
        if n == want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn no_fd_leaks() {
    if common::role().as_deref() != Some("fds") {
        return run_child("no_fd_leaks", "fds", &[]);
    }
    let base = open_fd_count().unwrap();
    for t in [Transport::Unix, Transport::Tcp] {
        let (rx, addr) = bind(t, &conduit::Options::new());
        let bound = open_fd_count().unwrap();
        let mut got = Vec::new();
        for i in 0..300 {
            let tx = Sender::<Job>::connect(&addr).unwrap();
            tx.send(job(i, 10)).unwrap();
            drop(tx);
            match rx.recv_timeout(Duration::from_millis(1)) {
                Ok(j) => got.push(j),
                Err(_) => got.extend(rx.try_recv().ok()),
            }
        }
        expect_real(&rx, &mut got, 300, 10);
        assert_eq!(settle(Some(&rx), bound), bound, "{t:?}: after 300 senders");
        // Hostile connections: garbage, bad frames, torn messages, silence.
        for i in 0..30 {
            let mut c = Raw::connect(&addr);
            let _ = c.write_all(b"GET / HTTP/1.1\r\n\r\n");
            wait_dropped(&rx, &mut c, "garbage", &mut got);
            let mut c = raw_handshaken(&addr);
            let _ = c.write_all(&conduit::__testing::frame_header(u32::MAX, true));
            wait_dropped(&rx, &mut c, "a bad frame", &mut got);
            let mut c = raw_handshaken(&addr);
            let _ = c.write_all(&frames(&conduit::__testing::encode(&job(i, 10)))[..9]);
            drop(c);
        }
        let silent: Vec<Raw> = (0..5).map(|_| Raw::connect(&addr)).collect();
        drop(silent);
        assert_eq!(
            settle(Some(&rx), bound),
            bound,
            "{t:?}: after hostile peers"
        );
        // Connections still in their handshake when the receiver goes.
        let silent: Vec<Raw> = (0..5).map(|_| Raw::connect(&addr)).collect();
        std::thread::sleep(Duration::from_millis(20));
        drop(rx);
        drop(silent);
        assert_eq!(settle(None, base), base, "{t:?}: after the receiver's drop");
    }
    for backend in [Backend::Socket, Backend::Pipe] {
        for i in 0..300 {
            let (tx, rx) = channel::<Job>(backend).unwrap();
            tx.send(job(i, 10)).unwrap();
            assert_eq!(rx.recv().unwrap(), job(i, 10));
            if i % 2 == 0 {
                drop(rx);
                assert!(tx.send(job(i, 10)).is_err());
            }
        }
        assert_eq!(settle(None, base), base, "{backend:?}: after 300 channels");
    }
    for i in 0..100 {
        let t = if i % 2 == 0 {
            Transport::Unix
        } else {
            Transport::Tcp
        };
        let (rx, addr) = bind(t, &conduit::Options::new());
        let tx = Sender::<Job>::connect(&addr).unwrap();
        drop(rx);
        let _ = tx.send(job(i, 10));
    }
    assert_eq!(settle(None, base), base, "after 100 bound receivers");
}

// ---- 9. SIGPIPE ------------------------------------------------------------------------------

#[test]
fn sigpipe_never_kills_the_process() {
    if common::role().as_deref() != Some("sigpipe") {
        let child = common::spawn_child("sigpipe_never_kills_the_process", "sigpipe", &[]);
        let pid = child.id();
        let status = wait_child(child, "sigpipe");
        assert_ne!(status.signal(), Some(libc::SIGPIPE), "killed by SIGPIPE");
        assert!(status.success(), "the SIGPIPE child: {status}");
        return common::assert_played(pid, "sigpipe");
    }
    // SAFETY: restoring the default disposition is what a non-Rust host process may do.
    let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    assert_ne!(previous, libc::SIG_ERR);
    let gone = |tx: &Sender<Job>, what: &str| {
        for len in [10, 300_000] {
            assert!(
                tx.send(job(1, len)).unwrap_err().is_disconnected(),
                "{what} send"
            );
            assert!(
                tx.try_send(job(2, len)).unwrap_err().is_disconnected(),
                "{what} try"
            );
            let e = tx
                .send_timeout(job(3, len), Duration::from_millis(50))
                .unwrap_err();
            assert!(e.is_disconnected(), "{what} send_timeout");
        }
    };
    for backend in [Backend::Pipe, Backend::Socket] {
        let (tx, rx) = channel::<Job>(backend).unwrap();
        drop(rx);
        gone(&tx, &format!("{backend:?}"));
        // The reader goes while a message larger than the buffer is half written.
        let (tx, rx) = channel::<Job>(backend).unwrap();
        let writer = std::thread::spawn(move || {
            let r = tx.send(job(4, 4 << 20));
            (tx, r.map_err(|e| e.is_disconnected()))
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(rx);
        let (tx, r) = writer.join().unwrap();
        assert_eq!(
            r,
            Err(true),
            "{backend:?}: a send cut short by the reader's exit"
        );
        gone(&tx, &format!("{backend:?} after a cut"));
    }
    for t in [Transport::Unix, Transport::Tcp] {
        let (rx, addr) = bind(t, &conduit::Options::new());
        let tx = Sender::<Job>::connect(&addr).unwrap();
        drop(rx);
        gone(&tx, &format!("{t:?}"));
    }
    // Still the default disposition, and nothing left pending to kill us later.
    // SAFETY: as above; this only reads back and resets the disposition.
    let now = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    assert_eq!(
        now,
        libc::SIG_DFL,
        "the library changed the SIGPIPE disposition"
    );
    // SAFETY: zeroed is a valid sigset_t; sigpending fills it.
    let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `pending` is a valid, writable sigset_t.
    assert_eq!(unsafe { libc::sigpending(&mut pending) }, 0);
    // SAFETY: `pending` was filled by sigpending.
    assert_eq!(unsafe { libc::sigismember(&pending, libc::SIGPIPE) }, 0);
}
