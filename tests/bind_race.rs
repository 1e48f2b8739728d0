//! Processes binding one address at the same instant. Exactly one wins,
//! whether the address is free or holds a stale socket file left by a dead receiver; a live
//! owner is never reclaimed; a dead one always is.
//!
//! Two child processes (this test binary, re-run) spin on a shared page until the parent
//! starts a round, then both bind the round's address at once. The start is a store both
//! see within a few hundred nanoseconds, so their binds overlap far more tightly than a
//! scheduler-driven start would make them.

mod common;

use std::fs::File;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use conduit::{Error, Receiver};
use memmap2::MmapMut;

const CHILD: &str = "child_entry";
/// The directory holding the shared page and the rounds' socket files.
const DIR: &str = "CONDUIT_TEST_DIR";
/// Which of the racers this child is.
const INDEX: &str = "CONDUIT_TEST_INDEX";
const RACERS: usize = 2;
const ROUNDS: u64 = 60;
/// The longest anyone waits for the other side of a round.
const PATIENCE: Duration = Duration::from_secs(30);

/// Offsets of the shared page's words (each on its own cache line).
const GO: usize = 0;
const RELEASE: usize = 64;
/// Racer `i` reports `round << 2 | outcome` at `RESULT + 64 * i`.
const RESULT: usize = 128;
const WON: u64 = 1;
const IN_USE: u64 = 2;
const OTHER: u64 = 3;

fn word(page: &MmapMut, offset: usize) -> &AtomicU64 {
    assert!(offset + 8 <= page.len() && offset % 8 == 0);
    // SAFETY: the offset is in bounds and 8-aligned (the mapping is page-aligned); the page
    // is a MAP_SHARED file mapping that lives as long as the borrow of `page`, and every
    // process touches these words only through atomics.
    unsafe { &*(page.as_ptr().add(offset) as *const AtomicU64) }
}

fn shared_page(dir: &Path) -> MmapMut {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("page"))
        .expect("open the shared page");
    file.set_len(4096).expect("size the shared page");
    // SAFETY: the file is private to this test's directory and never truncated while mapped.
    unsafe { MmapMut::map_mut(&file) }.expect("map the shared page")
}

/// Round `r`'s address: `unix:` and `shm:` alternate (both bind a rendezvous socket file).
fn address(dir: &Path, round: u64) -> (String, PathBuf) {
    let path = dir.join(format!("{round}.sock"));
    let scheme = if round % 2 == 0 { "unix" } else { "shm" };
    (format!("{scheme}:{}", path.display()), path)
}

/// Spins (yielding: there are more spinners than cores) until `cond` or the patience ends.
fn spin_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "waited {PATIENCE:?} for {what}");
        std::thread::yield_now();
    }
}

/// A racer: bind each round's address as soon as the round starts, report, hold it until
/// the parent has checked the round.
fn racer(dir: &Path, index: usize) {
    let page = shared_page(dir);
    for round in 1..=ROUNDS {
        // Acquire: pairs with the parent's Release store of GO, after it prepared the round's
        // stale file.
        spin_until("the round to start", || {
            word(&page, GO).load(Ordering::Acquire) >= round
        });
        let (addr, _) = address(dir, round);
        let bound = Receiver::<u64>::bind(&addr);
        let outcome = match &bound {
            Ok(_) => WON,
            Err(Error::AddrInUse { .. }) => IN_USE,
            Err(e) => {
                eprintln!("racer {index}, round {round}: {e}");
                OTHER
            }
        };
        // Release: pairs with the parent's Acquire load of the result; nothing else rides
        // on it, but the bind's effects on the file system are ordered before it anyway.
        word(&page, RESULT + 64 * index).store(round << 2 | outcome, Ordering::Release);
        // Acquire: pairs with the parent's Release store of RELEASE.
        spin_until("the round's check", || {
            word(&page, RELEASE).load(Ordering::Acquire) >= round
        });
        drop(bound);
    }
}

#[test]
fn child_entry() {
    if common::role().as_deref() != Some("racer") {
        return;
    }
    let dir = PathBuf::from(std::env::var(DIR).unwrap());
    let index: usize = std::env::var(INDEX).unwrap().parse().unwrap();
    racer(&dir, index);
}

/// Leaves a stale socket file at `path`: a listener that was dropped without removing it.
fn stale_file(path: &Path) {
    drop(UnixListener::bind(path).expect("bind a listener to leave its file behind"));
    assert!(path.exists());
}

#[test]
fn simultaneous_binds_have_exactly_one_winner() {
    let dir = common::temp_dir();
    let page = shared_page(&dir);
    let dir_str = dir.to_str().unwrap().to_string();
    let mut children: Vec<_> = (0..RACERS)
        .map(|i| common::spawn_child(CHILD, "racer", &[(DIR, &dir_str), (INDEX, &i.to_string())]))
        .collect();
    let mut failures = Vec::new();
    for round in 1..=ROUNDS {
        let (addr, path) = address(&dir, round);
        // Odd rounds of each scheme race to reclaim a dead receiver's file.
        let stale = round % 4 >= 2;
        if stale {
            stale_file(&path);
        }
        // Release: pairs with the racers' Acquire loads of GO (the stale file is in place).
        word(&page, GO).store(round, Ordering::Release);
        let mut outcomes = [0; RACERS];
        for (i, outcome) in outcomes.iter_mut().enumerate() {
            // Acquire: pairs with racer i's Release store of its result.
            spin_until("a racer's result", || {
                word(&page, RESULT + 64 * i).load(Ordering::Acquire) >> 2 == round
            });
            *outcome = word(&page, RESULT + 64 * i).load(Ordering::Acquire) & 3;
        }
        let winners = outcomes.iter().filter(|&&o| o == WON).count();
        let others = outcomes.iter().filter(|&&o| o == OTHER).count();
        // The winner's socket is the one at the path, and it listens.
        let live = UnixStream::connect(&path).is_ok();
        if winners != 1 || others != 0 || !live {
            failures.push(format!(
                "round {round} ({addr}, stale file: {stale}): outcomes {outcomes:?} \
                 (1 won, 2 AddrInUse, 3 other), the file listens: {live}"
            ));
        }
        // Release: pairs with the racers' Acquire loads of RELEASE.
        word(&page, RELEASE).store(round, Ordering::Release);
    }
    for child in children.drain(..) {
        common::expect_success(child, "racer");
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        failures.is_empty(),
        "{} of {ROUNDS} rounds went wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
