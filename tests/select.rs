//! `Select` across receivers of different backends and message types.

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use conduit::{channel, Backend, ReadyTimeoutError, Receiver, Select, Sender, TryRecvError};

/// A thread, a `shm:` and a `unix:` receiver, of three message types, in one `Select`: every
/// message arrives, and the select ends when all three are disconnected.
#[test]
fn three_backends_in_one_select() {
    const N: u64 = 2_000;
    let (ttx, trx) = channel::<u64>(Backend::Thread).unwrap();
    let shm_addr = format!("shm:{}", common::temp_dir().join("s.sock").display());
    let srx = Receiver::<String>::bind(&shm_addr).unwrap();
    let stx = Sender::<String>::connect(&shm_addr).unwrap();
    let unix_addr = common::unix_addr();
    let urx = Receiver::<(u32, Vec<u8>)>::bind(&unix_addr).unwrap();
    let utx = Sender::<(u32, Vec<u8>)>::connect(&unix_addr).unwrap();

    let senders = [
        std::thread::spawn(move || {
            for i in 0..N {
                ttx.send(i).unwrap();
                if i % 97 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }),
        std::thread::spawn(move || {
            for i in 0..N {
                stx.send(i.to_string()).unwrap();
                if i % 89 == 0 {
                    std::thread::sleep(Duration::from_micros(300));
                }
            }
        }),
        std::thread::spawn(move || {
            for i in 0..N as u32 {
                utx.send((i, vec![i as u8; 3])).unwrap();
                if i % 83 == 0 {
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        }),
    ];

    let mut sel = Select::new();
    let (ti, si, ui) = (sel.recv(&trx), sel.recv(&srx), sel.recv(&urx));
    let (mut tn, mut sn, mut un) = (0u64, 0u64, 0u32);
    let mut open = 3;
    let deadline = Instant::now() + Duration::from_secs(20);
    while open > 0 {
        let i = sel
            .ready_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a receiver ready before the deadline (a lost wake-up otherwise)");
        let ended = if i == ti {
            match trx.try_recv() {
                Ok(v) => {
                    assert_eq!(v, tn);
                    tn += 1;
                    false
                }
                Err(TryRecvError::Empty) => false,
                Err(_) => true,
            }
        } else if i == si {
            match srx.try_recv() {
                Ok(v) => {
                    assert_eq!(v, sn.to_string());
                    sn += 1;
                    false
                }
                Err(TryRecvError::Empty) => false,
                Err(_) => true,
            }
        } else if i == ui {
            match urx.try_recv() {
                Ok((v, bytes)) => {
                    assert_eq!((v, bytes), (un, vec![un as u8; 3]));
                    un += 1;
                    false
                }
                Err(TryRecvError::Empty) => false,
                Err(_) => true,
            }
        } else {
            panic!("index {i} was never added");
        };
        if ended {
            sel.remove(i);
            open -= 1;
        }
    }
    for s in senders {
        s.join().unwrap();
    }
    assert_eq!((tn, sn, un as u64), (N, N, N));
}

/// Drained receivers are not ready: `try_ready` reports so, and `ready_timeout` waits out its
/// timeout; a message makes its receiver ready.
#[test]
fn not_ready_when_drained() {
    let (atx, arx) = channel::<u8>(Backend::Socket).unwrap();
    let (btx, brx) = channel::<u8>(Backend::Shm).unwrap();
    let mut sel = Select::new();
    let a = sel.recv(&arx);
    let b = sel.recv(&brx);
    // Never tried yet: both count as ready until an `Empty` arms them.
    for _ in 0..2 {
        let i = sel.try_ready().expect("not yet armed");
        let rx = if i == a { &arx } else { &brx };
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    }
    assert!(sel.try_ready().is_err(), "both drained");
    let start = Instant::now();
    assert_eq!(
        sel.ready_timeout(Duration::from_millis(50)),
        Err(ReadyTimeoutError)
    );
    assert!(start.elapsed() >= Duration::from_millis(50));
    btx.send(7).unwrap();
    assert_eq!(sel.ready_timeout(Duration::from_secs(10)), Ok(b));
    assert_eq!(brx.try_recv().unwrap(), 7);
    atx.send(8).unwrap();
    // `b` may still count as ready (spuriously) until it sees `Empty`.
    if sel.ready() == b {
        assert!(matches!(brx.try_recv(), Err(TryRecvError::Empty)));
        assert_eq!(sel.ready(), a);
    }
    assert_eq!(arx.try_recv().unwrap(), 8);
    drop(atx);
    // Disconnected counts as ready, every time.
    assert_eq!(sel.ready_timeout(Duration::from_secs(10)), Ok(a));
    assert!(matches!(arx.try_recv(), Err(TryRecvError::Disconnected)));
    assert_eq!(sel.ready_timeout(Duration::from_secs(10)), Ok(a));
    sel.remove(a);
    assert!(matches!(brx.try_recv(), Err(TryRecvError::Empty)));
    assert!(sel.try_ready().is_err());
    drop(btx);
}
