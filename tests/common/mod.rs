//! Shared helpers for the integration tests: unique addresses and child processes that are
//! this very test binary, re-run to execute one named test as a child role.
#![allow(dead_code)]

#[cfg(feature = "zenoh")]
pub mod zenoh;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The environment variable that tells a re-run test binary which child role to play.
pub const ROLE: &str = "CONDUIT_TEST_ROLE";

/// The child role this process plays, if it is a child. A child that asks also leaves a
/// mark that it ran ([`ran_as_child`]), so a parent can tell a child that played its role
/// from one whose test name matched nothing (libtest then runs zero tests and exits 0).
pub fn role() -> Option<String> {
    let role = std::env::var(ROLE).ok()?;
    if let Some(dir) = std::env::var_os(RAN_DIR) {
        let _ = std::fs::write(
            PathBuf::from(dir).join(std::process::id().to_string()),
            &role,
        );
    }
    Some(role)
}

/// The environment variable that tells a child where to mark that it ran.
const RAN_DIR: &str = "CDT_RAN_DIR";

/// Where this process's children mark that they ran: named like [`temp_dir`]'s folders, so
/// it is swept once this process is gone.
fn ran_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cdt-{}-ran", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Where the child with process id `pid` marks that it ran.
fn ran_mark(pid: u32) -> PathBuf {
    ran_dir().join(pid.to_string())
}

/// Whether the child with process id `pid` (waited for) ran a role; removes its mark.
pub fn ran_as_child(pid: u32) -> bool {
    std::fs::remove_file(ran_mark(pid)).is_ok()
}

/// Asserts that the child with process id `pid`, which exited 0, played its role.
pub fn assert_played(pid: u32, what: &str) {
    assert!(
        ran_as_child(pid),
        "{what}: the child exited 0 without playing its role (no test of that name?)"
    );
}

/// A fresh private directory for socket files; the path is short enough for `sun_path`.
/// The name holds our pid, so a directory already there was left by a dead process that
/// had the same pid: it is removed first, so no stale socket file can get in the way.
/// The first call in a process also removes the directories of test processes that have
/// exited (tests cannot clean up after themselves when a child is killed or a test fails),
/// so runs do not pile them up in the temporary directory.
pub fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(sweep_dead_dirs);
    let dir = std::env::temp_dir().join(format!(
        "cdt-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Removes `cdt-PID-N` directories whose process no longer exists.
fn sweep_dead_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("cdt-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists; nothing is sent.
        let gone = unsafe { libc::kill(pid, 0) } == -1
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
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
        .env(RAN_DIR, ran_dir())
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
    assert_played(child.id(), what);
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

// ---- helpers for the hardening tests (signals, trickle, leaks, drops, soak) -----------------

/// Content for message `key` of `len` bytes: [`payload`] up to 4 KiB; longer messages repeat
/// a 4093-byte block of it, so megabytes cost a memcpy, not a byte-by-byte loop in a debug
/// build. Receivers compare against a fresh copy.
pub fn content(key: u64, len: usize) -> Vec<u8> {
    if len <= 4096 {
        return payload(key, len);
    }
    let block = payload(key, 4093);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let n = (len - out.len()).min(block.len());
        out.extend_from_slice(&block[..n]);
    }
    out
}

/// A tiny deterministic generator (xorshift64), so mixed workloads repeat exactly.
#[derive(Clone, Debug)]
pub struct XorShift(pub u64);

impl XorShift {
    /// A generator seeded with `seed` (zero is replaced: xorshift never leaves zero).
    pub fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Makes the child of `cmd` receive SIGKILL when the thread that spawns it ends (the test's
/// thread, normally after it has waited for the child): a failed, panicked or killed test
/// leaves no orphan behind. A child whose parent is already gone refuses to start.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    let hook = move || {
        // SAFETY: prctl and getppid are async-signal-safe system calls that allocate nothing,
        // as a hook between fork and exec requires.
        let (rc, ppid) = unsafe {
            (
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL),
                libc::getppid(),
            )
        };
        if rc == -1 {
            return Err(std::io::Error::last_os_error());
        }
        if ppid != parent {
            // The parent is already gone (ESRCH: no such process).
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe calls and allocates nothing (its errors
    // are raw OS error codes, which io::Error holds without allocating).
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// In a child: ends the process with exit code 124 if it still runs after `limit`, so a
/// child that blocks fails instead of hanging the test.
/// Returns once the watchdog thread runs and has allocated what it needs, so a process that
/// counts its mappings afterwards sees the thread's stack and malloc arena already there.
pub fn child_watchdog(limit: std::time::Duration) {
    let (started, running) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let message = format!(
            "child {} ({:?}): still running after {limit:?}; giving up",
            std::process::id(),
            role()
        );
        let _ = started.send(());
        std::thread::sleep(limit);
        eprintln!("{message}");
        // SAFETY: _exit ends the process at once; nothing after it runs.
        unsafe { libc::_exit(124) };
    });
    let _ = running.recv();
}

/// A child process that is killed and reaped if the test lets go of it without waiting
/// (a failed assertion unwinding past it, say).
pub struct Reaped(Option<Child>);

impl Reaped {
    pub fn new(child: Child) -> Self {
        Reaped(Some(child))
    }

    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Waits at most `limit` (killing the child then, and failing) and returns its status.
    pub fn wait(mut self, limit: std::time::Duration, what: &str) -> std::process::ExitStatus {
        let mut child = self.0.take().expect("a child not yet waited for");
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the child") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what}: the child still ran after {limit:?}; killed");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// [`Reaped::wait`], then asserts the child exited with status 0.
    pub fn expect_success(self, limit: std::time::Duration, what: &str) {
        let pid = self.id();
        let status = self.wait(limit, what);
        assert!(status.success(), "{what}: the child exited with {status}");
        assert_played(pid, what);
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The environment variable that tells a child sender where its receiver is: an address,
/// or `inherit` for an end shared with [`Target::receiver_for_child`].
pub const ADDR_ENV: &str = "CDT_ADDR";

/// How a sender in a child process reaches a receiver in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `unix:PATH`, bound here; the child connects.
    Unix,
    /// `tcp:127.0.0.1:PORT`, bound here; the child connects.
    Tcp,
    /// `channel(Backend::Pipe)`; the child inherits the sender.
    Pipe,
    /// `channel(Backend::Socket)` (a socketpair); the child inherits the sender.
    Socket,
    /// `shm:PATH`, bound here; the child connects and gets its own ring.
    Shm,
    /// `channel(Backend::Shm)`; the sender moves to the child.
    ShmAnon,
    /// `zenoh:KEY`, bound here; the child joins this process's zenoh network over
    /// 127.0.0.1 (`zenoh::join`) and connects.
    #[cfg(feature = "zenoh")]
    Zenoh,
}

impl Target {
    /// Every cross-process target.
    pub const ALL: [Target; 6] = [
        Target::Unix,
        Target::Tcp,
        Target::Pipe,
        Target::Socket,
        Target::Shm,
        Target::ShmAnon,
    ];

    /// True when more than one child can connect (an address).
    pub fn is_bound(self) -> bool {
        self.fresh_addr().is_some()
    }

    /// A fresh address to bind, for bound targets.
    pub fn fresh_addr(self) -> Option<String> {
        match self {
            Target::Unix => Some(unix_addr()),
            Target::Tcp => Some("tcp:127.0.0.1:0".to_string()),
            Target::Shm => Some(format!("shm:{}", temp_dir().join("r.sock").display())),
            #[cfg(feature = "zenoh")]
            Target::Zenoh => Some(zenoh::key("cross")),
            _ => None,
        }
    }

    /// The backend of an anonymous target.
    pub fn backend(self) -> conduit::Backend {
        match self {
            Target::Pipe => conduit::Backend::Pipe,
            Target::Socket => conduit::Backend::Socket,
            Target::ShmAnon => conduit::Backend::Shm,
            Target::Unix | Target::Tcp => conduit::Backend::Socket,
            Target::Shm => conduit::Backend::Shm,
            #[cfg(feature = "zenoh")]
            Target::Zenoh => panic!("zenoh: has no anonymous channel"),
        }
    }

    /// A receiver in this process whose sender the child of `cmd` gets with
    /// [`sender_from_parent`]: a bound target's address goes in [`ADDR_ENV`]; an anonymous
    /// target's sender is shared with `cmd` as `OUT`. Drop `cmd` right after spawning it, so
    /// this process keeps no copy of an inherited sender (the receiver could not see the
    /// child's end otherwise).
    pub fn receiver_for_child<T: conduit::Message>(
        self,
        opts: &conduit::Options,
        cmd: &mut Command,
    ) -> conduit::Receiver<T> {
        if let Some(addr) = self.fresh_addr() {
            #[cfg(feature = "zenoh")]
            if self == Target::Zenoh {
                zenoh::join(cmd);
            }
            let rx = conduit::Receiver::<T>::bind_with(&addr, opts)
                .unwrap_or_else(|e| panic!("{self:?}: bind {addr}: {e}"));
            cmd.env(
                ADDR_ENV,
                rx.local_addr().expect("a bound receiver's address"),
            );
            rx
        } else {
            let (tx, rx) = conduit::channel_with::<T>(self.backend(), opts)
                .unwrap_or_else(|e| panic!("{self:?}: channel: {e}"));
            tx.share_with_child(cmd, "OUT")
                .unwrap_or_else(|e| panic!("{self:?}: share_with_child: {e}"));
            cmd.env(ADDR_ENV, "inherit");
            rx
        }
    }
}

/// In a child: the sender its parent arranged with [`Target::receiver_for_child`] (or an
/// address in [`ADDR_ENV`]).
pub fn sender_from_parent<T: conduit::Message>(
    opts: &conduit::Options,
) -> Result<conduit::Sender<T>, conduit::Error> {
    match std::env::var(ADDR_ENV).as_deref() {
        Ok("inherit") => conduit::Sender::from_parent("OUT"),
        Ok(addr) => conduit::Sender::connect_with(addr, opts),
        Err(_) => Err(conduit::Error::NotFound {
            addr: ADDR_ENV.to_string(),
        }),
    }
}

/// Resident set size of this process in bytes (`/proc/self/statm`, second field).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm's resident field");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(1) as u64
}

/// The sanitizer this test binary runs under, as `.ci/sanitizers` announces it in
/// `CONDUIT_SANITIZER` (`address`, `thread`). Sanitizers bring their own allocator, which
/// maps regions lazily and keeps freed blocks in a quarantine: checks of the number of
/// mappings or of resident memory are meaningless there and are skipped (with a message).
pub fn sanitizer() -> Option<String> {
    std::env::var("CONDUIT_SANITIZER")
        .ok()
        .filter(|s| !s.is_empty())
}

// ---- kill → Disconnected, timed ------------------------------------------------------------

/// The longest accepted time from a peer's SIGKILL to the other side noticing (`recv`
/// returning `Disconnected`). The documentation states about 1 ms typically and a target
/// under 100 ms; 250 ms leaves room for a loaded two-core machine, not for a slow path.
/// Under a sanitizer 1 s: an instrumented `recv` that was reassembling a 24 MiB message
/// when its TCP peer was killed took 376 ms in a CI run under AddressSanitizer.
pub fn kill_noticed() -> std::time::Duration {
    if sanitizer().is_some() {
        std::time::Duration::from_secs(1)
    } else {
        std::time::Duration::from_millis(250)
    }
}

/// The spans a receiving thread spends outside `recv` (checking what it got, pausing on
/// purpose), so that a kill → `Disconnected` measurement counts only the library's time, not
/// the test's own work on the messages still delivered after the kill.
#[derive(Debug, Default)]
pub struct OwnTime(Vec<(std::time::Instant, std::time::Instant)>);

impl OwnTime {
    /// Records that the test's own work ran from `since` until now.
    pub fn since(&mut self, since: std::time::Instant) {
        self.0.push((since, std::time::Instant::now()));
    }

    /// The part of `from..to` not spent in the recorded spans: the time inside `recv`.
    pub fn library_time(
        &self,
        from: std::time::Instant,
        to: std::time::Instant,
    ) -> std::time::Duration {
        let own: std::time::Duration = self
            .0
            .iter()
            .map(|&(a, b)| b.min(to).saturating_duration_since(a.max(from)))
            .sum();
        to.saturating_duration_since(from).saturating_sub(own)
    }
}

/// `min …, median …, max … over N` for a set of measured times.
pub fn distribution(times: &[std::time::Duration]) -> String {
    let mut sorted = times.to_vec();
    sorted.sort();
    match (sorted.first(), sorted.last()) {
        (Some(min), Some(max)) => format!(
            "min {min:.2?}, median {:.2?}, max {max:.2?} over {}",
            sorted[sorted.len() / 2],
            sorted.len()
        ),
        _ => "no measurements".to_string(),
    }
}
