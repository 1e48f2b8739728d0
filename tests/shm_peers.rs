//! Shared-memory peers over their lifetime, and what they hold. The ring a receiver hands a
//! sender cannot be resized (sealed); a dropped receiver disconnects its senders, real and
//! raw (`shm_wire::Raw`); a hostile receiver (`shm_wire::fake_receiver`) cannot crash a
//! sender with a ring of its own making; and connecting and dropping senders, receivers and
//! anonymous pairs leaks no descriptor or mapping (counted in a child: this test binary,
//! re-run as `shm_peers_child`). Corrupted rings are tested in `tests/shm_hostile.rs`.

mod common;
mod shm_wire;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use conduit::__testing::encode;
use conduit::{channel, Backend, Error, Options, Receiver, RecvTimeoutError, SendError, Sender};
use shm_wire::*;

fn assert_eperm(what: &str, r: std::io::Result<()>) {
    match r {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) => {}
        other => panic!("{what} on the sealed ring: expected EPERM, got {other:?}"),
    }
}

#[test]
fn sealed_ring_cannot_be_resized() {
    watchdog("sealed ring", || {
        let (rx, real, addr) = setup(&Options::new().capacity(8192));
        let mut raw = Raw::connect(&addr);
        let len = raw.file.metadata().unwrap().len();
        assert_eq!(len, (HEADER + 8192) as u64, "header + capacity");
        assert_eperm("shrink", raw.file.set_len(len / 2));
        assert_eperm("truncate to 0", raw.file.set_len(0));
        assert_eperm("grow", raw.file.set_len(len * 2));
        let grow =
            rustix::fs::fallocate(&raw.file, rustix::fs::FallocateFlags::empty(), 0, len * 2);
        assert_eperm("fallocate past the end", grow.map_err(Into::into));
        let seal = rustix::fs::fcntl_add_seals(&raw.file, rustix::fs::SealFlags::WRITE);
        assert_eperm("adding a seal (F_SEAL_SEAL)", seal.map_err(Into::into));
        assert_eq!(raw.file.metadata().unwrap().len(), len, "size unchanged");
        // Nothing changed: the receiver takes the hostile peer's ring as before (no SIGBUS),
        // next to a real sender whose 8 KiB ring wraps several times.
        let want: Vec<Job> = (0..40).map(|i| job(i, 700)).collect();
        let to_send = want.clone();
        let sender = std::thread::spawn(move || {
            for j in to_send {
                real.send(j).expect("real send");
            }
        });
        let hostile: Vec<Job> = (0..8).map(|i| job(HOSTILE + i, 100)).collect();
        for h in &hostile {
            raw.send_job(h);
        }
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while raw.tail() != raw.head && Instant::now() < deadline {
            if let Ok(j) = rx.recv_timeout(Duration::from_millis(5)) {
                got.push(j);
            }
        }
        let mine: Vec<&Job> = got.iter().filter(|j| j.0 >= HOSTILE).collect();
        assert!(
            mine.iter().copied().eq(&hostile),
            "the hostile ring's jobs, in order"
        );
        expect_real(&rx, got, &want, &hostile);
        sender.join().unwrap();
        assert!(
            !raw.hung_up() && !raw.consumer_closed(),
            "a well-behaved ring dropped"
        );
    });
}

#[test]
fn dropped_receiver_disconnects_senders() {
    watchdog("receiver drop", || {
        let (rx, real, addr) = setup(&Options::new());
        let mut raw = Raw::connect(&addr);
        real.send(job(1, 10)).unwrap();
        raw.send_job(&job(HOSTILE, 10));
        let mut got = vec![rx.recv_timeout(Duration::from_secs(5)).unwrap()];
        got.push(rx.recv_timeout(Duration::from_secs(5)).unwrap());
        got.sort();
        assert_eq!(got, [job(1, 10), job(HOSTILE, 10)]);
        drop(rx);
        match real.send(job(2, 10)) {
            Err(SendError::Disconnected(m)) => assert_eq!(m, job(2, 10), "handed back"),
            other => panic!("send after the receiver dropped: {other:?}"),
        }
        assert!(
            raw.consumer_closed(),
            "the receiver closed its side of every ring"
        );
        let start = Instant::now();
        while !raw.hung_up() {
            assert!(
                start.elapsed() < DROP_WITHIN,
                "the rendezvous socket stayed open"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        match Sender::<Job>::connect(&addr) {
            Err(Error::NotFound { .. }) => {}
            other => panic!("connect after the receiver dropped: {other:?}"),
        }
    });
}

/// A hostile receiver hands a sender a ring of its own making. A well-made one works (the
/// control); positions no receiver writes must make `connect` or `send` fail, never panic
/// or write outside the ring.
#[test]
fn hostile_receiver_cannot_crash_a_sender() {
    watchdog("hostile receiver", || {
        let (addr, server) = fake_receiver(|_| {});
        let tx = Sender::<Job>::connect(&addr).expect("connect to a well-made ring");
        let (ring, _sock) = server.join().unwrap();
        let sent = encode(&job(1, 20));
        tx.send(job(1, 20)).expect("send");
        let frame = 8 + sent.len().next_multiple_of(8) as u64;
        assert_eq!(ring.u64_at(HEAD).load(Ordering::Acquire), frame, "head");
        assert_eq!(
            ring.slot(0).load(Ordering::Acquire),
            word(sent.len() as u32, LAST | COMMIT),
            "the committed header word: length, then the stamp of position 0 with LAST"
        );
        assert_eq!(
            ring.u32_at(HEADER + 4).load(Ordering::Relaxed),
            LAST | COMMIT,
            "the stamp, little-endian in the word's high half"
        );
        assert_eq!(
            ring.slot(frame).load(Ordering::Acquire),
            0,
            "the next header slot is cleared"
        );
        // Full, then `tail` moves past `head`: the sender gives up on this receiver.
        let mut n = 0;
        while tx.try_send(job(2, 20)).is_ok() {
            n += 1;
            assert!(n < 4096, "a 4 KiB ring never filled");
        }
        let head = ring.u64_at(HEAD).load(Ordering::Acquire);
        ring.u64_at(TAIL).store(head + 64, Ordering::Release);
        match tx.try_send(job(3, 20)) {
            Err(conduit::TrySendError::Disconnected(m)) => assert_eq!(m, job(3, 20)),
            other => panic!("try_send with tail past head: {other:?}"),
        }
        // `tail` ahead of `head` from the start: refused at connect.
        let (addr, server) = fake_receiver(|r| r.u64_at(TAIL).store(16, Ordering::Relaxed));
        let refused = Sender::<Job>::connect(&addr);
        drop(server.join().unwrap());
        assert!(
            matches!(refused, Err(Error::Protocol { .. })),
            "tail ahead of head: {refused:?}"
        );
        // Both positions at 4092: no frame starts there (frames are 8-aligned), and only 4
        // bytes are left before the end of the data region for an 8-byte header.
        let (addr, server) = fake_receiver(|r| {
            r.u64_at(HEAD).store(4092, Ordering::Relaxed);
            r.u64_at(TAIL).store(4092, Ordering::Relaxed);
        });
        let outcome = std::panic::catch_unwind(|| {
            Sender::<Job>::connect(&addr).map(|tx| tx.send(job(4, 20)).map_err(|e| e.to_string()))
        });
        drop(server.join().unwrap());
        match outcome {
            Ok(Err(_)) | Ok(Ok(Err(_))) => {}
            Ok(Ok(Ok(()))) => panic!(
                "a sender accepted a ring at position 4092 and wrote an 8-byte frame header \
                 where 4 bytes were left (Producer::new checks only head - tail)"
            ),
            Err(_) => panic!(
                "Sender::send panicked on a ring whose receiver set head = tail = 4092 \
                 (Producer::new checks only head - tail; try_push computes the padding \
                 length as pad - 8 with pad = 4)"
            ),
        }
    });
}

// ---- leaks: in a child process, so parallel tests cannot disturb the counts ---------------

fn ring_maps() -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    maps.lines()
        .filter(|l| l.contains("memfd:conduit-ring"))
        .count()
}

fn counts() -> (usize, usize) {
    (conduit::open_fd_count().expect("fd count"), ring_maps())
}

/// Polls up to 2 s for the counts to return to `base`.
fn settles_to(base: (usize, usize), what: &str) {
    let start = Instant::now();
    while counts() != base && start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        counts(),
        base,
        "{what}: (open fds, ring mappings) before and after"
    );
}

#[test]
fn shm_peers_child() {
    let Some(role) = common::role() else { return };
    assert_eq!(role, "leaks");
    let base = counts();
    let addr = format!("shm:{}", common::temp_dir().join("r.sock").display());
    let rx = Receiver::<Job>::bind_with(&addr, &Options::new().capacity(4096)).expect("bind");
    let bound = counts();
    for i in 0..200 {
        let tx = Sender::<Job>::connect(&addr).expect("connect");
        tx.send(job(i, 10)).unwrap();
        if i == 0 {
            // The count sees rings at all: the receiver's and the sender's mapping.
            assert_eq!(ring_maps(), 2, "one connection's mappings");
        }
        drop(tx);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).ok(),
            Some(job(i, 10))
        );
    }
    match rx.recv_timeout(Duration::from_secs(5)) {
        Err(RecvTimeoutError::Disconnected) => {}
        other => panic!("after 200 senders: {other:?}"),
    }
    settles_to(bound, "200 senders connected and dropped, receiver alive");
    drop(rx);
    settles_to(base, "200 senders and their receiver dropped");
    for i in 0..200 {
        let (tx, rx) = channel::<Job>(Backend::Shm).expect("channel");
        tx.send(job(i, 10)).unwrap();
        if i == 0 {
            assert_eq!(ring_maps(), 1, "an anonymous pair shares one mapping");
        }
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).ok(),
            Some(job(i, 10))
        );
    }
    settles_to(base, "200 anonymous shm channels");
    eprintln!("shm leaks: (open fds, ring mappings) {base:?} before and after; {bound:?} bound");
    std::process::exit(0);
}

#[test]
fn no_fd_or_mapping_leaks() {
    let mut child = common::spawn_child("shm_peers_child", "leaks", &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the leak-check child ran over 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "the leak-check child failed: {status}");
    common::assert_played(child.id(), "the leak-check child");
}
