//! Shared helpers for the integration tests: unique addresses and child processes that are
//! this very test binary, re-run to execute one named test as a child role.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The environment variable that tells a re-run test binary which child role to play.
pub const ROLE: &str = "CONDUIT_TEST_ROLE";

/// The child role this process plays, if it is a child.
pub fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// A fresh private directory for socket files; the path is short enough for `sun_path`.
/// The name holds our pid, so a directory already there was left by a dead process that
/// had the same pid: it is removed first, so no stale socket file can get in the way.
pub fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cdt-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A unique `unix:` address in a fresh directory.
pub fn unix_addr() -> String {
    format!("unix:{}", temp_dir().join("s.sock").display())
}

/// A command that re-runs this test binary to execute exactly `test_name` with `role` set.
/// The child's stdout (the harness's chatter) is discarded; stderr is inherited.
pub fn child_command(test_name: &str, role: &str) -> Command {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

/// Spawns [`child_command`] with extra environment variables.
pub fn spawn_child(test_name: &str, role: &str, envs: &[(&str, &str)]) -> Child {
    let mut cmd = child_command(test_name, role);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn child test process")
}

/// Waits for a child and asserts it exited successfully.
pub fn expect_success(mut child: Child, what: &str) {
    let status = child.wait().expect("wait for child");
    assert!(status.success(), "{what}: child exited with {status}");
}

/// A deterministic payload for message `i` of `len` bytes, so receivers can check content.
pub fn payload(i: u64, len: usize) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
