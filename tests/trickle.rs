//! Streams delivered one byte at a time, across
//! processes, on `unix:`, `tcp:`, inherited pipes and inherited socketpairs.
//!
//! - Towards conduit: a child (this binary re-run as `trickle_child`) writes a valid hello
//!   (bound addresses) and framed messages with one `write(2)` per byte, yielding after every
//!   byte and sleeping briefly after each byte of a hello or a frame header (`TCP_NODELAY` on
//!   TCP, so every byte is a segment of its own). The receiver here must reassemble every
//!   message exactly, in order, and then report `Disconnected`.
//! - From conduit: a child reads what a conduit `Sender` here writes with one `read(2)` per
//!   byte — answering the hello by hand on bound addresses — and checks every frame and every
//!   message byte for byte, then end of stream. The sender's large messages meet a reader
//!   that frees its buffer a byte at a time.
//!
//! (`tests/hostile*.rs` cover torn, stalled and flooding peers in one process; none trickles
//! a valid stream byte by byte, or crosses a process.) Shared memory is not a stream and has
//! no byte-level delivery to test.

mod common;
mod wire;

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use conduit::__testing::{encode, hello_for, FRAME_HEADER, PIECE_MAX};
use conduit::{channel, Options, RecvTimeoutError, Sender};
use wire::{frames, job, Job};

const ENTRY: &str = "trickle_child";
/// Longest wait for anything that should take milliseconds.
const LONG: Duration = Duration::from_secs(30);
/// The longest a child may run.
const CHILD_LIMIT: Duration = Duration::from_secs(90);

/// The messages, by (id, payload length): empty and tiny ones, one that fills a piece almost
/// exactly, and one of two pieces.
const MESSAGES: [(u32, usize); 6] = [
    (0, 0),
    (1, 1),
    (2, 300),
    (3, PIECE_MAX - 16),
    (4, PIECE_MAX + 100),
    (5, 7),
];

fn expected() -> Vec<Job> {
    MESSAGES.iter().map(|&(id, len)| job(id, len)).collect()
}

fn child_fail(code: i32, what: impl std::fmt::Display) -> ! {
    eprintln!("trickle child: {what}");
    std::process::exit(code)
}

/// The descriptor of an end the parent shared as `name` (the inheritance token is
/// `v1;ROLE;KIND;FD;FINGERPRINT;LIMIT`, see ARCHITECTURE.md), taken over as a raw file.
fn inherited_file(name: &str) -> File {
    let token = std::env::var(format!("CONDUIT_FD_{name}"))
        .unwrap_or_else(|_| child_fail(2, format!("no CONDUIT_FD_{name}")));
    let fd: i32 = token
        .split(';')
        .nth(3)
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| child_fail(2, format!("token {token:?}")));
    // SAFETY: F_GETFD only inspects the descriptor number; it fails if nothing is open there.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        child_fail(2, format!("descriptor {fd} is not open"));
    }
    // SAFETY: the descriptor is open (checked above), the parent passed it to this process
    // alone, and nothing else here uses it: the File may own it.
    unsafe { File::from_raw_fd(fd) }
}

/// Writes `bytes` with one `write(2)` per byte; yields after each, and sleeps 50 µs after
/// the bytes flagged in `slow`.
fn trickle(out: &mut impl Write, bytes: &[u8], slow: impl Fn(usize) -> bool) {
    for (i, b) in bytes.iter().enumerate() {
        loop {
            match out.write(std::slice::from_ref(b)) {
                Ok(1) => break,
                Ok(n) => child_fail(3, format!("write of one byte returned {n}")),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // An inherited end shares the parent's non-blocking file description.
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_micros(20))
                }
                Err(e) => child_fail(3, format!("write of byte {i}: {e}")),
            }
        }
        if slow(i) {
            std::thread::sleep(Duration::from_micros(50));
        } else {
            std::thread::yield_now();
        }
    }
}

/// Every message framed as a sender frames it, and which byte offsets are header bytes.
fn framed_stream() -> (Vec<u8>, Vec<bool>) {
    let (mut bytes, mut header) = (Vec::new(), Vec::new());
    for j in expected() {
        let f = frames(&encode(&j));
        // Walk the pieces to mark each header.
        let mut at = 0;
        while at < f.len() {
            let len = u32::from_le_bytes(f[at..at + 4].try_into().unwrap()) as usize;
            header.extend((0..FRAME_HEADER + len).map(|k| k < FRAME_HEADER));
            at += FRAME_HEADER + len;
        }
        bytes.extend(f);
    }
    (bytes, header)
}

/// Reads exactly `buf.len()` bytes with one `read(2)` per byte. False at end of stream
/// before the first byte; fails the child at end of stream later.
fn read_bytewise(input: &mut impl Read, buf: &mut [u8]) -> bool {
    for i in 0..buf.len() {
        loop {
            match input.read(&mut buf[i..i + 1]) {
                Ok(1) => break,
                Ok(0) if i == 0 => return false,
                Ok(0) => child_fail(4, format!("end of stream inside a {}-byte read", buf.len())),
                Ok(n) => child_fail(3, format!("read of one byte returned {n}")),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_micros(20))
                }
                Err(e) => child_fail(3, format!("read: {e}")),
            }
        }
    }
    true
}

/// Reads frames byte by byte until end of stream, checking each message against the
/// expected ones (encoded by the same codec) in order.
fn read_and_check(input: &mut impl Read) {
    let want: Vec<Vec<u8>> = expected().iter().map(encode).collect();
    let (mut got, mut message) = (0, Vec::new());
    let mut header = [0u8; FRAME_HEADER];
    while read_bytewise(input, &mut header) {
        let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
        let last = match header[4] {
            0 => false,
            1 => true,
            f => child_fail(4, format!("message {got}: flags {f:#x}")),
        };
        if len > PIECE_MAX || (len == 0 && !last) {
            child_fail(4, format!("message {got}: a piece of {len} bytes"));
        }
        let start = message.len();
        message.resize(start + len, 0);
        if len > 0 && !read_bytewise(input, &mut message[start..]) {
            child_fail(4, format!("message {got}: end of stream after a header"));
        }
        if last {
            match want.get(got) {
                Some(w) if *w == message => {}
                Some(w) => child_fail(
                    4,
                    format!(
                        "message {got}: {} bytes, expected {}",
                        message.len(),
                        w.len()
                    ),
                ),
                None => child_fail(4, format!("an extra message of {} bytes", message.len())),
            }
            got += 1;
            message.clear();
        }
    }
    if !message.is_empty() || got != want.len() {
        child_fail(
            4,
            format!(
                "end of stream after {got} messages and {} bytes",
                message.len()
            ),
        );
    }
}

/// Reads a whole hello one byte per `read(2)`: 22 fixed bytes, then the name.
fn read_hello_bytewise(input: &mut impl Read) -> Vec<u8> {
    let mut hello = vec![0u8; 22];
    if !read_bytewise(input, &mut hello) {
        child_fail(4, "end of stream before the hello");
    }
    let name_len = usize::from(u16::from_le_bytes([hello[20], hello[21]]));
    let mut name = vec![0u8; name_len];
    if !read_bytewise(input, &mut name) {
        child_fail(4, "end of stream inside the hello");
    }
    hello.extend(name);
    hello
}

/// Writes `path` atomically (a rename), for a parent polling for it.
fn publish(path: &str, contents: &str) {
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, contents)
        .and_then(|()| std::fs::rename(&tmp, path))
        .unwrap_or_else(|e| child_fail(2, format!("writing {path}: {e}")));
}

/// Roles: `write` trickles a stream towards the parent's receiver (`CDT_ADDR` is an address
/// or `inherit`); `read` reads the parent's sender byte by byte (`CDT_LISTEN` is `unix:PATH`,
/// `tcp`, or `inherit`). Exit codes: 2 setup; 3 I/O; 4 a wrong byte, frame or message.
#[test]
fn trickle_child() {
    let Some(role) = common::role() else { return };
    common::child_watchdog(CHILD_LIMIT);
    let env = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| child_fail(2, format!("{name} is not set")))
    };
    let (stream, header) = framed_stream();
    match role.as_str() {
        "write" => {
            let addr = env(common::ADDR_ENV);
            if addr == "inherit" {
                let mut out = inherited_file("OUT");
                trickle(&mut out, &stream, |i| header[i]);
            } else if let Some(path) = addr.strip_prefix("unix:") {
                let mut c = UnixStream::connect(path)
                    .unwrap_or_else(|e| child_fail(2, format!("connect {addr}: {e}")));
                handshake_bytewise(&mut c);
                trickle(&mut c, &stream, |i| header[i]);
            } else {
                let host_port = addr.strip_prefix("tcp:").unwrap_or(&addr);
                let mut c = TcpStream::connect(host_port)
                    .unwrap_or_else(|e| child_fail(2, format!("connect {addr}: {e}")));
                c.set_nodelay(true)
                    .unwrap_or_else(|e| child_fail(2, format!("TCP_NODELAY: {e}")));
                handshake_bytewise(&mut c);
                trickle(&mut c, &stream, |i| header[i]);
            }
        }
        "read" => {
            let listen = env("CDT_LISTEN");
            if listen == "inherit" {
                read_and_check(&mut inherited_file("IN"));
            } else {
                let ready = env("CDT_READY");
                let mut conn: Box<dyn ReadWrite> = if let Some(path) = listen.strip_prefix("unix:")
                {
                    let l = UnixListener::bind(path)
                        .unwrap_or_else(|e| child_fail(2, format!("bind {path}: {e}")));
                    publish(&ready, &listen);
                    Box::new(l.accept().unwrap_or_else(|e| child_fail(3, e)).0)
                } else {
                    let l = TcpListener::bind("127.0.0.1:0")
                        .unwrap_or_else(|e| child_fail(2, format!("bind tcp: {e}")));
                    let port = l.local_addr().unwrap_or_else(|e| child_fail(2, e)).port();
                    publish(&ready, &format!("tcp:127.0.0.1:{port}"));
                    Box::new(l.accept().unwrap_or_else(|e| child_fail(3, e)).0)
                };
                let request = read_hello_bytewise(&mut conn);
                if request != hello_for::<Job>(request_limit(&request)) {
                    child_fail(4, "the sender's hello is not a Job sender's");
                }
                conn.write_all(&hello_for::<Job>(1 << 26))
                    .unwrap_or_else(|e| child_fail(3, format!("answering the hello: {e}")));
                read_and_check(&mut conn);
            }
        }
        other => child_fail(2, format!("unknown role {other}")),
    }
    std::process::exit(0);
}

/// Sends a `Job` sender's hello one byte per write and checks the receiver accepts it.
fn handshake_bytewise(c: &mut (impl Read + Write)) {
    trickle(c, &hello_for::<Job>(1 << 20), |_| true);
    let reply = wire::read_hello(c);
    if &reply[..4] != b"CNDT" || reply[6] != 0 {
        child_fail(4, format!("the receiver refused the hello: {reply:?}"));
    }
}

/// The size limit a hello announces (bytes 16..20).
fn request_limit(hello: &[u8]) -> usize {
    u32::from_le_bytes(hello[16..20].try_into().unwrap()) as usize
}

/// A stream that reads and writes (a Unix or TCP socket).
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

// ---- towards conduit ---------------------------------------------------------------------

fn trickle_in(target: common::Target) {
    let what = format!("{target:?}");
    let started = Instant::now();
    let mut cmd = common::child_command(ENTRY, "write");
    common::die_with_parent(&mut cmd);
    let rx = target.receiver_for_child::<Job>(&Options::new(), &mut cmd);
    let child = common::Reaped::new(cmd.spawn().expect("spawn"));
    drop(cmd);
    for want in expected() {
        match rx.recv_timeout(LONG) {
            Ok(got) => assert!(
                got == want,
                "{what}: message {} arrived as message {} with {} bytes",
                want.id,
                got.id,
                got.data.len()
            ),
            Err(e) => panic!("{what}: message {}: {e}", want.id),
        }
    }
    match rx.recv_timeout(LONG) {
        Err(RecvTimeoutError::Disconnected) => {}
        Ok(m) => panic!("{what}: an extra message {}", m.id),
        Err(e) => panic!("{what}: after the last message: {e}"),
    }
    child.expect_success(CHILD_LIMIT, &what);
    eprintln!(
        "trickle: {what}: {} bytes written one at a time, {} messages, {:?}",
        framed_stream().0.len(),
        MESSAGES.len(),
        started.elapsed()
    );
}

#[test]
fn byte_by_byte_into_a_unix_receiver() {
    trickle_in(common::Target::Unix);
}

#[test]
fn byte_by_byte_into_a_tcp_receiver() {
    trickle_in(common::Target::Tcp);
}

#[test]
fn byte_by_byte_into_an_inherited_pipe() {
    trickle_in(common::Target::Pipe);
}

#[test]
fn byte_by_byte_into_an_inherited_socketpair() {
    trickle_in(common::Target::Socket);
}

// ---- from conduit ------------------------------------------------------------------------

/// Waits for the child to publish its address in `ready`.
fn wait_ready(ready: &Path, child: &mut common::Reaped, what: &str) -> String {
    let deadline = Instant::now() + LONG;
    loop {
        if let Ok(addr) = std::fs::read_to_string(ready) {
            return addr;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the reading child never listened (pid {})",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn trickle_out(target: common::Target) {
    let what = format!("{target:?}");
    let started = Instant::now();
    let mut cmd = common::child_command(ENTRY, "read");
    common::die_with_parent(&mut cmd);
    let (tx, child) = if target.is_bound() {
        let dir = common::temp_dir();
        let ready = dir.join("ready");
        cmd.env("CDT_READY", &ready);
        cmd.env(
            "CDT_LISTEN",
            match target {
                common::Target::Unix => format!("unix:{}", dir.join("s.sock").display()),
                _ => "tcp".to_string(),
            },
        );
        let mut child = common::Reaped::new(cmd.spawn().expect("spawn"));
        let addr = wait_ready(&ready, &mut child, &what);
        let tx = Sender::<Job>::connect(&addr).unwrap_or_else(|e| panic!("{what}: {e}"));
        (tx, child)
    } else {
        let (tx, rx) = channel::<Job>(target.backend()).expect("channel");
        rx.share_with_child(&mut cmd, "IN").expect("share");
        cmd.env("CDT_LISTEN", "inherit");
        let child = common::Reaped::new(cmd.spawn().expect("spawn"));
        drop((cmd, rx));
        (tx, child)
    };
    for j in expected() {
        tx.send(j).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    drop(tx);
    child.expect_success(CHILD_LIMIT, &what);
    eprintln!(
        "trickle: {what}: a conduit sender to a reader of one byte at a time, {:?}",
        started.elapsed()
    );
}

#[test]
fn byte_by_byte_out_of_a_unix_sender() {
    trickle_out(common::Target::Unix);
}

#[test]
fn byte_by_byte_out_of_a_tcp_sender() {
    trickle_out(common::Target::Tcp);
}

#[test]
fn byte_by_byte_out_of_an_inherited_pipe() {
    trickle_out(common::Target::Pipe);
}

#[test]
fn byte_by_byte_out_of_an_inherited_socketpair() {
    trickle_out(common::Target::Socket);
}
