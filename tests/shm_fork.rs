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
