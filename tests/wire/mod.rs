//! Raw-wire helpers shared by the hostile-peer and resource tests: a hand-driven client for
//! `unix:` and `tcp:` receivers, frame builders, and checks that a connection was dropped.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use conduit::__testing::{frame_header, hello_for, PIECE_MAX};
use conduit::{Options, Receiver, RecvTimeoutError};
use serde::{Deserialize, Serialize};

use crate::common;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Job {
    pub id: u32,
    pub ok: bool,
    pub data: Vec<u8>,
}

pub fn job(id: u32, len: usize) -> Job {
    let data = common::payload(u64::from(id), len);
    Job { id, ok: true, data }
}

/// How long a hostile connection may live after its offence before the test fails.
pub const DROP_WITHIN: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug)]
pub enum Transport {
    Unix,
    Tcp,
}

/// A raw client that speaks (or abuses) the wire protocol by hand.
pub enum Raw {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Raw {
    /// Connects to a `unix:`, `shm:` (its rendezvous socket) or `tcp:` address.
    pub fn connect(addr: &str) -> Raw {
        if let Some(path) = addr
            .strip_prefix("unix:")
            .or_else(|| addr.strip_prefix("shm:"))
        {
            Raw::Unix(UnixStream::connect(path).expect("raw unix connect"))
        } else {
            let host_port = addr.strip_prefix("tcp:").expect("tcp address");
            Raw::Tcp(TcpStream::connect(host_port).expect("raw tcp connect"))
        }
    }

    pub fn try_clone(&self) -> Raw {
        match self {
            Raw::Unix(s) => Raw::Unix(s.try_clone().unwrap()),
            Raw::Tcp(s) => Raw::Tcp(s.try_clone().unwrap()),
        }
    }

    pub fn set_read_timeout(&self, d: Duration) {
        match self {
            Raw::Unix(s) => s.set_read_timeout(Some(d)).unwrap(),
            Raw::Tcp(s) => s.set_read_timeout(Some(d)).unwrap(),
        }
    }

    /// Writes `bytes` from another thread, ignoring failures (the receiver may hang up
    /// first), so a receiver that reads only inside `recv` cannot deadlock the test.
    pub fn write_in_background(&self, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
        let mut w = self.try_clone();
        std::thread::spawn(move || {
            let _ = w.write_all(&bytes);
        })
    }
}

impl Read for Raw {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Raw::Unix(s) => s.read(buf),
            Raw::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Raw {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Raw::Unix(s) => s.write(buf),
            Raw::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Binds a `Receiver<Job>` on `t`; returns it with the address senders connect to.
pub fn bind(t: Transport, opts: &Options) -> (Receiver<Job>, String) {
    let addr = match t {
        Transport::Unix => common::unix_addr(),
        Transport::Tcp => "tcp:127.0.0.1:0".to_string(),
    };
    let rx = Receiver::<Job>::bind_with(&addr, opts).expect("bind");
    let addr = rx.local_addr().expect("bound receivers have an address");
    (rx, addr)
}

/// Reads one whole hello (22 fixed bytes, then the name) from `c`.
pub fn read_hello(c: &mut impl Read) -> Vec<u8> {
    let mut reply = vec![0u8; 22];
    c.read_exact(&mut reply).expect("a 22-byte hello reply");
    let name_len = usize::from(u16::from_le_bytes([reply[20], reply[21]]));
    let mut name = vec![0u8; name_len];
    c.read_exact(&mut name).expect("the reply's type name");
    reply.extend_from_slice(&name);
    reply
}

/// Connects, sends `hello`, and returns the connection with the receiver's reply.
pub fn raw_hello(addr: &str, hello: &[u8]) -> (Raw, Vec<u8>) {
    let mut c = Raw::connect(addr);
    c.set_read_timeout(Duration::from_secs(5));
    c.write_all(hello).expect("write hello");
    let reply = read_hello(&mut c);
    assert_eq!(&reply[..4], b"CNDT", "reply magic");
    (c, reply)
}

/// A raw client that completed a valid handshake for `Job`.
pub fn raw_handshaken(addr: &str) -> Raw {
    let (c, reply) = raw_hello(addr, &hello_for::<Job>(1 << 20));
    assert_eq!(reply[6], 0, "a correct hello is accepted");
    c
}

/// One frame: header and payload.
pub fn frame(payload: &[u8], last: bool) -> Vec<u8> {
    let mut out = frame_header(payload.len() as u32, last).to_vec();
    out.extend_from_slice(payload);
    out
}

/// A whole message in pieces, as a real sender writes it.
pub fn frames(msg: &[u8]) -> Vec<u8> {
    let chunks: Vec<&[u8]> = msg.chunks(PIECE_MAX).collect();
    let n = chunks.len();
    let mut out = Vec::new();
    for (i, c) in chunks.into_iter().enumerate() {
        out.extend(frame(c, i + 1 == n));
    }
    if n == 0 {
        out.extend(frame(&[], true));
    }
    out
}

pub fn header_with_flags(len: u32, flags: u8) -> Vec<u8> {
    let mut h = frame_header(len, false).to_vec();
    h[4] = flags;
    h
}

/// Drives `rx` until the raw connection `c` is closed by the receiver (EOF or reset),
/// collecting anything `rx` yields meanwhile. Panics after [`DROP_WITHIN`].
pub fn wait_dropped(rx: &Receiver<Job>, c: &mut Raw, what: &str, got: &mut Vec<Job>) {
    c.set_read_timeout(Duration::from_millis(5));
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(j) = rx.recv_timeout(Duration::from_millis(2)) {
            got.push(j);
        }
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {} // an answer to a bad hello: keep reading to the close
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return, // reset: dropped with our bytes unread
        }
        assert!(
            start.elapsed() < DROP_WITHIN,
            "{what}: the receiver kept the hostile connection open for {DROP_WITHIN:?}"
        );
    }
}

/// Receives until `want` real jobs (ids `0..want`) are in `got`, tolerating `Disconnected`
/// (the receiver says so between senders). Asserts each arrived once, intact. (Callers send
/// from more than one sender, so only the set is checked, not the order across senders.)
pub fn expect_real(rx: &Receiver<Job>, got: &mut Vec<Job>, want: u32, len: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < want as usize && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(j) => got.push(j),
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_millis(2)),
            Err(_) => {}
        }
    }
    let mut ids: Vec<u32> = got.iter().map(|j| j.id).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (0..want).collect::<Vec<_>>(),
        "real messages, each once"
    );
    for j in got.iter() {
        assert_eq!(*j, job(j.id, len), "message {} intact", j.id);
    }
}

pub fn xorshift_bytes(seed: u64, len: usize) -> Vec<u8> {
    common::payload(seed, len)
}

/// A field of /proc/self/status, in kB.
pub fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    line[field.len() + 1..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("a number of kB")
}

/// The longest any one test (or child process) may run before it counts as hung.
pub const WATCHDOG: Duration = Duration::from_secs(60);

/// Runs `body` on a thread of its own and fails if it has not finished within [`WATCHDOG`]:
/// a receiver call that never returns is reported as a failure, not a hung test run.
pub fn watchdog(what: &str, body: impl FnOnce() + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    let runner = std::thread::Builder::new()
        .name(what.to_string())
        .spawn(move || {
            body();
            let _ = done.send(());
        })
        .expect("spawn the test's thread");
    match finished.recv_timeout(WATCHDOG) {
        Ok(()) => runner.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(runner.join().unwrap_err())
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: still running after {WATCHDOG:?}; something blocked")
        }
    }
}

/// Waits for `child` at most [`WATCHDOG`] (killing it after that) and returns its status.
pub fn wait_child(mut child: Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + WATCHDOG;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: the child still ran after {WATCHDOG:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Re-runs this test binary as `role` for `test`, with `envs`, and asserts it succeeds.
pub fn run_child(test: &str, role: &str, envs: &[(&str, &str)]) {
    let child = common::spawn_child(test, role, envs);
    let pid = child.id();
    let status = wait_child(child, role);
    assert!(
        status.success(),
        "{test} as {role}: the child exited with {status}"
    );
    common::assert_played(pid, &format!("{test} as {role}"));
}
