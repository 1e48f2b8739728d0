//! The acceptor's bounds on connections still in their handshake (ARCHITECTURE.md,
//! SECURITY.md): at most 256 at once, the one that waited longest closed when another
//! arrives, and each closed after 10 s without a complete hello. A client that connects and
//! says nothing must never keep a real sender out, on `unix:`, `tcp:` and `shm:` alike.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use conduit::__testing::hello_for;
use conduit::{Receiver, Sender};

/// Connections in their handshake the acceptor keeps at most (`MAX_PENDING`).
const MAX_PENDING: usize = 256;
/// How long the acceptor waits for a hello (`handshake::TIMEOUT`).
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Slack for the acceptor to act on a deadline or an arrival on a loaded machine.
const SLACK: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug)]
enum Kind {
    Unix,
    Tcp,
    Shm,
}

const KINDS: [Kind; 3] = [Kind::Unix, Kind::Tcp, Kind::Shm];

/// A `Receiver<u64>` bound on `kind`, and the address to connect to.
fn bind(kind: Kind) -> (Receiver<u64>, String) {
    let addr = match kind {
        Kind::Unix => common::unix_addr(),
        Kind::Tcp => "tcp:127.0.0.1:0".to_string(),
        Kind::Shm => format!("shm:{}", common::temp_dir().join("r.sock").display()),
    };
    let rx = Receiver::<u64>::bind(&addr).unwrap_or_else(|e| panic!("{kind:?}: bind: {e}"));
    let addr = rx.local_addr().expect("a bound receiver's address");
    (rx, addr)
}

/// A raw client that connects and then says nothing (or only part of a hello).
enum Silent {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Silent {
    fn connect(addr: &str) -> Silent {
        let s = if let Some(host_port) = addr.strip_prefix("tcp:") {
            let s = TcpStream::connect(host_port).expect("raw tcp connect");
            s.set_nonblocking(true).unwrap();
            Silent::Tcp(s)
        } else {
            let path = addr.split_once(':').expect("scheme:path").1;
            let s = UnixStream::connect(path).expect("raw unix connect");
            s.set_nonblocking(true).unwrap();
            Silent::Unix(s)
        };
        s
    }

    /// Whether the acceptor closed this connection (end of file or reset). It never
    /// answers a client that has not finished its hello, so any byte is a failure.
    fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let r = match self {
            Silent::Unix(s) => s.read(&mut byte),
            Silent::Tcp(s) => s.read(&mut byte),
        };
        match r {
            Ok(0) => true,
            Ok(_) => panic!("the acceptor answered a client that sent no complete hello"),
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(_) => true,
        }
    }

    fn write_all(&mut self, bytes: &[u8]) {
        match self {
            Silent::Unix(s) => s.write_all(bytes),
            Silent::Tcp(s) => s.write_all(bytes),
        }
        .expect("write part of a hello");
    }
}

/// `n` silent clients; the first sends 10 bytes of a valid hello and stops there.
fn silent_clients(addr: &str, n: usize) -> Vec<Silent> {
    let mut clients: Vec<Silent> = (0..n).map(|_| Silent::connect(addr)).collect();
    if let Some(first) = clients.first_mut() {
        first.write_all(&hello_for::<u64>(1 << 20)[..10]);
    }
    clients
}

/// Waits until `c` is closed; fails after `within`.
fn wait_closed(c: &mut Silent, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while !c.closed() {
        assert!(
            Instant::now() < deadline,
            "{what}: still open after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Indices of the clients the acceptor has closed.
fn closed_ones(clients: &mut [Silent]) -> Vec<usize> {
    (0..clients.len())
        .filter(|&i| clients[i].closed())
        .collect()
}

/// Connects a real sender and checks a message crosses.
fn real_sender_gets_through(kind: Kind, rx: &Receiver<u64>, addr: &str, value: u64) {
    let tx = Sender::<u64>::connect(addr)
        .unwrap_or_else(|e| panic!("{kind:?}: a real sender could not connect: {e}"));
    tx.send(value).expect("send");
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).expect("recv"),
        value
    );
}

/// Clients that connect and say nothing, or stop part-way through their hello, keep no real
/// sender waiting: each connects and is served at once.
#[test]
fn a_silent_client_keeps_no_sender_out() {
    for kind in KINDS {
        let (rx, addr) = bind(kind);
        let mut silent = silent_clients(&addr, 2);
        let started = Instant::now();
        for v in 0..3 {
            real_sender_gets_through(kind, &rx, &addr, v);
        }
        eprintln!(
            "{kind:?}: three senders beside two silent clients in {:?}",
            started.elapsed()
        );
        assert_eq!(closed_ones(&mut silent), Vec::<usize>::new(), "{kind:?}");
    }
}

/// 256 connections may wait in the handshake. The 257th closes the one that waited longest
/// (and only that one); a real sender arriving then closes the next oldest and gets
/// through; once the silent clients are gone, senders connect as before.
#[test]
fn the_257th_pending_connection_evicts_the_oldest() {
    for kind in KINDS {
        let (rx, addr) = bind(kind);
        let mut silent = silent_clients(&addr, MAX_PENDING);
        // Let the acceptor take them all; none may be closed: 256 fit.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            closed_ones(&mut silent),
            Vec::<usize>::new(),
            "{kind:?}: closed with only {MAX_PENDING} pending"
        );
        silent.push(Silent::connect(&addr));
        wait_closed(
            &mut silent[0],
            SLACK,
            &format!("{kind:?}: the oldest pending connection"),
        );
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            closed_ones(&mut silent),
            vec![0],
            "{kind:?}: the 257th pending connection must close the oldest, and only it"
        );
        real_sender_gets_through(kind, &rx, &addr, 1);
        wait_closed(
            &mut silent[1],
            SLACK,
            &format!("{kind:?}: the second oldest"),
        );
        assert_eq!(
            closed_ones(&mut silent),
            vec![0, 1],
            "{kind:?}: a real sender must close the oldest pending connection, and only it"
        );
        drop(silent);
        for v in 2..4 {
            real_sender_gets_through(kind, &rx, &addr, v);
        }
    }
}

/// A connection without a complete hello is closed after 10 s, which frees its place: 256
/// silent clients on each backend are all closed after the timeout, with nothing else
/// arriving to evict them, and 255 new ones and a sender then fit without evicting any.
#[test]
fn the_hello_timeout_frees_the_slots() {
    let started = Instant::now();
    let mut bound: Vec<(Kind, Receiver<u64>, String, Vec<Silent>)> = KINDS
        .into_iter()
        .map(|kind| {
            let (rx, addr) = bind(kind);
            let silent = silent_clients(&addr, MAX_PENDING);
            (kind, rx, addr, silent)
        })
        .collect();
    let connected = started.elapsed();
    let mut first_closed = None;
    let mut open = bound.len() * MAX_PENDING;
    while open > 0 {
        let elapsed = started.elapsed();
        assert!(
            elapsed < connected + HELLO_TIMEOUT + SLACK,
            "{open} silent clients still open after {elapsed:?} (timeout {HELLO_TIMEOUT:?})"
        );
        std::thread::sleep(Duration::from_millis(20));
        open = bound
            .iter_mut()
            .map(|(_, _, _, silent)| silent.len() - closed_ones(silent).len())
            .sum();
        if open < bound.len() * MAX_PENDING && first_closed.is_none() {
            first_closed = Some(started.elapsed());
        }
    }
    let first = first_closed.expect("some were closed");
    eprintln!(
        "silent clients connected within {connected:?}; closed from {first:?} to {:?}",
        started.elapsed()
    );
    // Before the timeout nobody is closed: the bound is "at most 10 s", a slow but real
    // sender has that long.
    assert!(
        first >= HELLO_TIMEOUT - Duration::from_secs(1),
        "a silent client was closed after only {first:?}"
    );
    for (kind, rx, addr, silent) in &mut bound {
        *silent = silent_clients(addr, MAX_PENDING - 1);
        real_sender_gets_through(*kind, rx, addr, 7);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            closed_ones(silent),
            Vec::<usize>::new(),
            "{kind:?}: the timed-out connections' places were not freed"
        );
    }
}
