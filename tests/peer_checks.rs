//! What `connect` checks about the receiver before it trusts it (SECURITY.md, ARCHITECTURE.md):
//! a `unix:`/`shm:` listener running as another user (a squatter on the path) is refused
//! by the sender itself before it writes a byte; and a peer built with the other codec
//! (postcard against bincode) is refused at connect, both ways, with an error naming both.
//!
//! The squatter is this test binary re-run as a child (`peer_checks_child`) that drops to
//! uid 65534 and listens with a raw socket that accepts anyone and records whether any
//! byte arrives; only root can start it, so that test is skipped (saying so) otherwise.

mod common;
mod wire;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use conduit::__testing::{hello_for, hello_with_codec, CODEC};
use conduit::{Error, Receiver, RecvTimeoutError, Sender};

use wire::Raw;

const ENTRY: &str = "peer_checks_child";
/// The user the squatter runs as (`nobody`).
const OTHER_UID: u32 = 65534;

/// The codec of a build with the other setting of the `bincode` feature.
fn other_codec() -> &'static str {
    match CODEC {
        "postcard-1" => "bincode-2",
        "bincode-2" => "postcard-1",
        other => panic!("unknown codec {other}"),
    }
}

/// Reads one whole hello (22 fixed bytes, then the name).
fn read_hello(c: &mut impl Read) -> Vec<u8> {
    let mut hello = vec![0u8; 22];
    c.read_exact(&mut hello).expect("a hello");
    let name_len = usize::from(u16::from_le_bytes([hello[20], hello[21]]));
    let mut name = vec![0u8; name_len];
    c.read_exact(&mut name).expect("the hello's type name");
    hello.extend_from_slice(&name);
    hello
}

// ---- a listener of another uid ---------------------------------------------------------------

/// Role `squatter`: becomes uid/gid 65534, listens at `CDT_PATH` with a plain socket,
/// accepts one connection and reads until the other side closes. Exit codes: 0 nothing
/// arrived; 3 bytes arrived (printed); 4 nobody connected; 2 setup.
#[test]
fn peer_checks_child() {
    let Some(role) = common::role() else { return };
    assert_eq!(role, "squatter");
    common::child_watchdog(Duration::from_secs(60));
    let path = std::env::var("CDT_PATH").expect("CDT_PATH");
    // SAFETY: setgid/setuid only change this process's credentials (group first, while
    // still allowed to).
    let dropped = unsafe { libc::setgid(OTHER_UID) == 0 && libc::setuid(OTHER_UID) == 0 };
    assert!(
        dropped,
        "dropping to {OTHER_UID}: {}",
        std::io::Error::last_os_error()
    );
    let listener = UnixListener::bind(&path).unwrap_or_else(|e| {
        eprintln!("squatter: bind {path}: {e}");
        std::process::exit(2)
    });
    listener.set_nonblocking(true).unwrap();
    std::fs::write(format!("{path}.ready"), "").expect("the ready mark");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut conn = loop {
        match listener.accept() {
            Ok((conn, _)) => break conn,
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => std::process::exit(4),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // One read tells: end of file, or bytes. Exiting then closes the connection, so a
    // sender waiting for our answer fails instead of waiting for its timeout.
    let mut buf = [0u8; 600];
    match conn.read(&mut buf) {
        Ok(0) => std::process::exit(0),
        Ok(n) => {
            eprintln!("squatter: {n} bytes arrived: {:?}", &buf[..n.min(8)]);
            std::process::exit(3)
        }
        Err(e) => {
            eprintln!("squatter: read: {e}");
            std::process::exit(2)
        }
    }
}

/// A squatter of uid 65534 at a fresh path under `scheme:`; `connect` must refuse it on the
/// sender's own check (the squatter accepts anyone), before writing a byte.
fn squatter_refused(scheme: &str) {
    let dir = common::temp_dir();
    // The squatter's own directory: the child, no longer root, creates its socket there.
    std::os::unix::fs::chown(&dir, Some(OTHER_UID), Some(OTHER_UID)).expect("chown");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = dir.join("s.sock");
    let mut cmd = common::child_command(ENTRY, "squatter");
    cmd.env("CDT_PATH", &path);
    common::die_with_parent(&mut cmd);
    let child = common::Reaped::new(cmd.spawn().expect("spawn the squatter"));
    let ready = dir.join("s.sock.ready");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the squatter never listened");
        std::thread::sleep(Duration::from_millis(2));
    }
    let addr = format!("{scheme}:{}", path.display());
    let result = Sender::<u64>::connect(&addr);
    let pid = child.id();
    let status = child.wait(Duration::from_secs(30), "the squatter");
    match result {
        Err(Error::PermissionDenied { reason, .. }) => {
            assert!(
                reason.contains(&OTHER_UID.to_string()),
                "{scheme}: the refusal does not name the squatter's uid: {reason}"
            );
            eprintln!("{scheme}: a listener of uid {OTHER_UID} refused: {reason}");
        }
        Err(e) => panic!("{scheme}: expected PermissionDenied, got {e}"),
        Ok(_) => panic!("{scheme}: connected to a listener of uid {OTHER_UID}"),
    }
    match status.code() {
        Some(0) => common::assert_played(pid, "the squatter"),
        Some(3) => panic!("{scheme}: the sender wrote to a listener of another uid"),
        _ => panic!("{scheme}: the squatter exited with {status}"),
    }
}

#[test]
fn a_listener_of_another_uid_is_refused_before_a_byte() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can run a listener as another uid (uid {OTHER_UID})");
        return;
    }
    for scheme in ["unix", "shm"] {
        squatter_refused(scheme);
    }
}

// ---- a peer built with the other codec -------------------------------------------------------

/// The hand-built hello is a real one: with this build's codec it is, byte for byte, what
/// this build sends; so with the other codec it is what the other build sends.
#[test]
fn the_hand_built_hello_is_the_real_one() {
    assert_eq!(
        hello_with_codec::<u64>(1 << 20, CODEC),
        hello_for::<u64>(1 << 20)
    );
    assert_ne!(
        hello_with_codec::<u64>(1 << 20, other_codec()),
        hello_for::<u64>(1 << 20)
    );
}

/// A raw client of `addr` (`unix:`, `shm:` or `tcp:`) that gives up reading after 10 s.
fn connect_raw(addr: &str) -> Raw {
    let c = Raw::connect(addr);
    c.set_read_timeout(Duration::from_secs(10));
    c
}

/// Checks a `TypeMismatch` names both codecs, and says so in its message.
fn names_both_codecs(e: &Error, what: &str) {
    let Error::TypeMismatch { local, remote, .. } = e else {
        panic!("{what}: expected TypeMismatch, got {e}");
    };
    assert!(local.contains(CODEC), "{what}: this side {local:?}");
    assert!(
        remote.contains(other_codec()),
        "{what}: the peer {remote:?}"
    );
    let message = e.to_string();
    assert!(
        message.contains(CODEC) && message.contains(other_codec()),
        "{what}: the message does not name both codecs: {message}"
    );
    eprintln!("{what}: {message}");
}

/// A listener that answers like a receiver of the same type built with the other codec:
/// `connect` fails with `TypeMismatch`, and writes nothing after its hello.
fn listener_of_the_other_codec(scheme: &str) {
    let (addr, accept): (String, Box<dyn FnOnce() -> Raw + Send>) = if scheme == "tcp" {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("tcp:{}", l.local_addr().unwrap());
        (addr, Box::new(move || Raw::Tcp(l.accept().unwrap().0)))
    } else {
        let path = common::temp_dir().join("other.sock");
        let l = UnixListener::bind(&path).unwrap();
        let addr = format!("{scheme}:{}", path.display());
        (addr, Box::new(move || Raw::Unix(l.accept().unwrap().0)))
    };
    let listener = std::thread::spawn(move || {
        let mut c = accept();
        let hello = read_hello(&mut c);
        assert_eq!(&hello[..4], b"CNDT");
        c.write_all(&hello_with_codec::<u64>(1 << 20, other_codec()))
            .expect("answer");
        // Anything after the hello would be a frame or a message written regardless.
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        rest.len()
    });
    let result = Sender::<u64>::connect(&addr);
    let what = format!("{scheme}: a receiver built with {}", other_codec());
    match &result {
        Err(e) => names_both_codecs(e, &what),
        Ok(_) => panic!("{what}: connected"),
    }
    drop(result);
    let after = listener.join().expect("the listener");
    assert_eq!(after, 0, "{what}: {after} bytes written after the hello");
}

#[test]
fn a_receiver_of_the_other_codec_is_refused_at_connect() {
    for scheme in ["unix", "tcp", "shm"] {
        listener_of_the_other_codec(scheme);
    }
}

/// A sender built with the other codec, connecting to a real receiver: answered with
/// "type mismatch" (status 2) naming this side's codec, and closed; nothing of it is
/// delivered, and real senders are still served.
fn sender_of_the_other_codec(scheme: &str) {
    let bind = match scheme {
        "tcp" => "tcp:127.0.0.1:0".to_string(),
        _ => format!("{scheme}:{}", common::temp_dir().join("r.sock").display()),
    };
    let rx = Receiver::<u64>::bind(&bind).expect("bind");
    let addr = rx.local_addr().expect("address");
    let mut c = connect_raw(&addr);
    c.write_all(&hello_with_codec::<u64>(1 << 20, other_codec()))
        .expect("hello");
    let reply = read_hello(&mut c);
    assert_eq!(
        reply[6], 2,
        "{scheme}: the answer's status (2: type mismatch)"
    );
    let name = String::from_utf8_lossy(&reply[22..]).to_string();
    assert!(name.contains(CODEC), "{scheme}: the answer names {name:?}");
    let mut rest = Vec::new();
    assert_eq!(
        c.read_to_end(&mut rest).map(|_| rest.len()).ok(),
        Some(0),
        "{scheme}: the refused connection is closed, and nothing follows the answer"
    );
    match rx.recv_timeout(Duration::from_millis(200)) {
        Err(RecvTimeoutError::Timeout) => {}
        other => panic!("{scheme}: the refused sender counted: {other:?}"),
    }
    let tx = Sender::<u64>::connect(&addr).expect("a real sender");
    tx.send(5).expect("send");
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).expect("recv"), 5);
}

#[test]
fn a_sender_of_the_other_codec_is_refused() {
    for scheme in ["unix", "tcp", "shm"] {
        sender_of_the_other_codec(scheme);
    }
}
