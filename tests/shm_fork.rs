//! An anonymous shared-memory channel used across a plain `fork()` (no exec): the process
//! that drops its unused copy must not end the channel for the one that uses it.

mod common;

use std::time::Duration;

use conduit::{channel, Backend, RecvTimeoutError};

const CHILD: &str = "child_entry";
const COUNT: u64 = 10_000;

/// Waits for a forked child; true when it exited with status 0.
fn reaped_ok(pid: libc::pid_t) -> bool {
    let mut status = 0;
    // SAFETY: `pid` is our own child; `status` is a valid out-pointer.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    rc == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

/// Receives until Disconnected; the values must be exactly 0..COUNT in order.
fn receive_all(rx: &conduit::Receiver<u64>) -> bool {
    for want in 0..COUNT {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(got) if got == want => {}
            other => {
                eprintln!("message {want}: got {other:?}");
                return false;
            }
        }
    }
    match rx.recv_timeout(Duration::from_secs(10)) {
        Err(RecvTimeoutError::Disconnected) => true,
        other => {
            eprintln!("after the last message: got {other:?}");
            false
        }
    }
}

/// Runs in a fresh single-threaded-at-fork child process of the test binary.
#[test]
fn child_entry() {
    let Some(role) = common::role() else { return };
    let (tx, rx) = channel::<u64>(Backend::Shm).unwrap();
    // SAFETY: fork in a process whose other threads (the harness's) hold no lock we use;
    // the forked child only uses the channel and then leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    let forked_sends = role == "child_sends";
    if pid == 0 {
        let ok = if forked_sends {
            drop(rx);
            (0..COUNT).all(|i| tx.send(i).is_ok())
        } else {
            drop(tx);
            receive_all(&rx)
        };
        // SAFETY: _exit ends the forked child without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let ok = if forked_sends {
        drop(tx);
        receive_all(&rx)
    } else {
        drop(rx);
        let sent = (0..COUNT).all(|i| tx.send(i).is_ok());
        // The child sees Disconnected once no process holds a sender.
        drop(tx);
        sent
    };
    assert!(ok, "{role}: the parent's side failed");
    assert!(reaped_ok(pid), "{role}: the forked child's side failed");
    std::process::exit(0);
}

#[test]
fn forked_child_sends_parent_receives() {
    let child = common::spawn_child(CHILD, "child_sends", &[]);
    common::expect_success(child, "fork: child sends");
}

#[test]
fn parent_sends_forked_child_receives() {
    let child = common::spawn_child(CHILD, "parent_sends", &[]);
    common::expect_success(child, "fork: parent sends");
}

const RACE: &str = "fork_race_entry";
const ROUNDS: u64 = 20;
const PER_SIDE: u64 = 200;
/// The forked child's exit status when its first send failed with `SendFailure::Forked`.
const LOST: i32 = 3;

/// Sends `PER_SIDE` messages tagged with `tag`; `Ok(true)` if all went, `Ok(false)` if the
/// first failed with `Forked` (and so did a second try), `Err` otherwise.
fn send_all(tx: &conduit::Sender<u64>, tag: u64) -> Result<bool, String> {
    for i in 0..PER_SIDE {
        match tx.send(tag + i) {
            Ok(()) => {}
            Err(conduit::SendError::Failed(_, conduit::SendFailure::Forked)) if i == 0 => {
                // It stays refused, and says why.
                return match tx.send(tag) {
                    Err(e) if e.to_string().contains("fork()") => Ok(false),
                    other => Err(format!("second send after losing the claim: {other:?}")),
                };
            }
            Err(e) => return Err(format!("send {i}: {e}")),
        }
    }
    Ok(true)
}

/// One shm `Sender` used on both sides of a `fork()`. Both sides send
/// at once; exactly one wins the ring and the other gets `SendFailure::Forked` on every
/// send; the receiver gets the winner's messages, complete and in order, and none of the
/// loser's. Either side wins in some rounds.
#[test]
fn fork_race_entry() {
    if common::role().as_deref() != Some("race") {
        return;
    }
    let (mut parent_wins, mut child_wins) = (0, 0);
    for round in 0..ROUNDS {
        let (tx, rx) = channel::<u64>(Backend::Shm).unwrap();
        // SAFETY: as in `child_entry`: the forked child only uses the channel, then _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            drop(rx);
            let code = match send_all(&tx, 0) {
                Ok(true) => 0,
                Ok(false) => LOST,
                Err(e) => {
                    eprintln!("round {round}, forked child: {e}");
                    1
                }
            };
            drop(tx);
            // SAFETY: _exit ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let reap = || {
            let mut status = 0;
            // SAFETY: `pid` is our own child; `status` is a valid out-pointer.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            status
        };
        // Even rounds race (the parent, already running, mostly wins); odd rounds let the
        // child send everything first, so the child's side of the claim is covered too.
        let early = (round % 2 == 1).then(reap);
        let parent = send_all(&tx, 1_000_000).unwrap_or_else(|e| panic!("round {round}: {e}"));
        drop(tx);
        let status = early.unwrap_or_else(reap);
        assert!(
            libc::WIFEXITED(status),
            "round {round}: child died: {status}"
        );
        let child = match libc::WEXITSTATUS(status) {
            0 => true,
            LOST => false,
            code => panic!("round {round}: the forked child failed ({code})"),
        };
        assert!(
            parent != child,
            "round {round}: parent won {parent}, child won {child}"
        );
        let tag = if parent { 1_000_000 } else { 0 };
        for i in 0..PER_SIDE {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(got) => assert_eq!(got, tag + i, "round {round}, message {i}"),
                Err(e) => panic!("round {round}, message {i}: {e:?}"),
            }
        }
        match rx.recv_timeout(Duration::from_secs(10)) {
            Err(RecvTimeoutError::Disconnected) => {}
            other => panic!("round {round}: after the last message: {other:?}"),
        }
        parent_wins += u32::from(parent);
        child_wins += u32::from(child);
    }
    eprintln!("fork race: the parent won {parent_wins} rounds, the forked child {child_wins}");
    std::process::exit(0);
}

#[test]
fn one_sender_on_both_sides_of_a_fork_has_one_winner() {
    let child = common::spawn_child(RACE, "race", &[]);
    common::expect_success(child, "fork race");
}
