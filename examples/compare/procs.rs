//! Child processes and cleaning up after them: the peer of every cross-process row is this
//! very binary re-run with [`ROLE`] set. Nothing outlives a run: children die with us
//! (`PR_SET_PDEATHSIG`), are reaped (killed if need be) when their row is done, socket
//! files live in a private temporary directory removed at the end or on SIGINT, SIGTERM or
//! SIGHUP, and a [`Watchdog`] turns a hang into an error.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// Which child role this process plays; unset in the parent.
pub const ROLE: &str = "CONDUIT_COMPARE_ROLE";
/// The parent's pid, so a child whose parent died before `PR_SET_PDEATHSIG` leaves.
const PARENT: &str = "CONDUIT_COMPARE_PARENT";

/// The longest wait for a peer to start.
pub const PATIENCE: Duration = Duration::from_secs(20);
/// How long a child may take to leave by itself once its channels are gone.
const LEAVE: Duration = Duration::from_secs(3);
/// After the watchdog killed a stuck row's peer, how long the row may take to notice.
const GRACE: Duration = Duration::from_secs(5);

/// The temporary directory to remove when we leave early.
static TEMP: OnceLock<PathBuf> = OnceLock::new();

/// This process's child role, if it is a child.
pub fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// An environment argument of a child; a missing one is a bug of the parent.
pub fn arg(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} unset"))
}

/// This binary, to be run as a child in `role`. Its standard output is discarded; its
/// errors go to our standard error.
pub fn command(role: &str) -> Command {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.env(ROLE, role)
        .env(PARENT, std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// A child process, reaped on drop: given [`LEAVE`] to go by itself (its channels are
/// closed by then), then killed. Spawn children from the main thread only: the kernel sends
/// `PR_SET_PDEATHSIG` when the spawning *thread* ends.
pub struct ChildGuard(Child);

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> Result<ChildGuard, String> {
        cmd.spawn()
            .map(ChildGuard)
            .map_err(|e| format!("spawning a peer process: {e}"))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Whether the child has exited (it is reaped then).
    pub fn exited(&mut self) -> bool {
        !matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let until = Instant::now() + LEAVE;
        while Instant::now() < until {
            match self.0.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// In a child: SIGKILL when the parent dies, and leave now if it already has.
pub fn die_with_parent() {
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    let parent = std::env::var(PARENT).ok();
    let ppid = Pid::as_raw(rustix::process::getppid());
    if parent.is_some_and(|p| p != ppid.to_string()) {
        std::process::exit(1);
    }
}

/// A private directory for socket files, `$TMPDIR/PREFIX-PID`, removed with everything in
/// it on drop or when a signal ends the run.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Removes directories that dead runs with the same prefix left behind (SIGKILL gives
    /// no chance to clean up), creates ours, and arranges its removal on signals.
    pub fn new(prefix: &str) -> TempDir {
        let tmp = std::env::temp_dir();
        let ours = tmp.join(format!("{prefix}-{}", std::process::id()));
        for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let path = entry.path();
            let pid = entry.file_name().to_str().and_then(|n| {
                let n = n.strip_prefix(prefix)?.strip_prefix('-')?;
                n.parse::<i32>().ok()
            });
            let dead = pid.and_then(Pid::from_raw).is_some_and(|p| {
                rustix::process::test_kill_process(p) == Err(rustix::io::Errno::SRCH)
            });
            // Our own pid's directory can only be a dead run's whose pid was reused.
            if dead || path == ours {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
        std::fs::create_dir_all(&ours).expect("creating the socket directory");
        let _ = TEMP.set(ours.clone());
        clean_up_on_signals();
        TempDir(ours)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Leaves now with `status`, removing the temporary directory first. Children die with us.
pub fn bail(status: i32) -> ! {
    if let Some(dir) = TEMP.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
    std::process::exit(status)
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread and every thread it starts later, and
/// has one thread wait for them to clean up and leave. Call it from the main thread before
/// any other thread starts. (`Command` clears the mask in children.)
fn clean_up_on_signals() {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t; the signal numbers are valid.
    let blocked = unsafe {
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if blocked != 0 {
        return; // signals keep their default action: no clean-up, but no harm either
    }
    let waiter = std::thread::Builder::new().name("signals".into());
    let _ = waiter.spawn(move || {
        let mut sig = 0;
        // SAFETY: `set` is initialised and these signals are blocked in every thread (the
        // mask is inherited), so sigwait is the only way they are taken; `sig` is writable.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            eprintln!("\ncompare: interrupted; removing the peers and the socket directory");
            bail(128 + sig);
        }
    });
}

/// Kills a stuck row's peer processes so its blocked receive fails, and ends the run if
/// that does not help (or if the row has no process to kill). One row is watched at a time.
#[derive(Clone)]
pub struct Watchdog(Arc<(Mutex<Option<Watch>>, Condvar)>);

struct Watch {
    until: Instant,
    limit: Duration,
    pids: Vec<u32>,
    what: String,
    killed: bool,
}

/// Watching one row until dropped.
pub struct Armed<'a>(&'a Watchdog);

impl Watchdog {
    pub fn start() -> Watchdog {
        let dog = Watchdog(Arc::new((Mutex::new(None), Condvar::new())));
        let inner = dog.clone();
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || inner.watch())
            .expect("starting the watchdog thread");
        dog
    }

    /// Watches `what` for `limit`; `pids` are its peer processes.
    pub fn arm(&self, limit: Duration, pids: Vec<u32>, what: String) -> Armed<'_> {
        let (lock, cv) = &*self.0;
        *lock.lock().unwrap() = Some(Watch {
            until: Instant::now() + limit,
            limit,
            pids,
            what,
            killed: false,
        });
        cv.notify_one();
        Armed(self)
    }

    fn watch(&self) {
        let (lock, cv) = &*self.0;
        let mut state = lock.lock().unwrap();
        loop {
            let Some(w) = state.as_mut() else {
                state = cv.wait(state).unwrap();
                continue;
            };
            let now = Instant::now();
            if now < w.until {
                let wait = w.until - now;
                state = cv.wait_timeout(state, wait).unwrap().0;
                continue;
            }
            if !w.killed && !w.pids.is_empty() {
                eprintln!(
                    "\ncompare: {} made no progress in {:?}; killing its peer",
                    w.what, w.limit
                );
                for pid in &w.pids {
                    if let Some(pid) = Pid::from_raw(*pid as i32) {
                        let _ = rustix::process::kill_process(pid, Signal::KILL);
                    }
                }
                w.killed = true;
                w.until = now + GRACE;
                continue;
            }
            let why = if w.killed {
                " even after its peer process was killed: a receive did not notice its peer's death (a conduit bug)"
            } else {
                " and runs in threads, which cannot be stopped"
            };
            eprintln!("\ncompare: {} is stuck{why}; giving up", w.what);
            bail(1);
        }
    }
}

impl Armed<'_> {
    /// Whether the watchdog killed the peer: the row's error is then a hang.
    pub fn fired(&self) -> bool {
        let lock = &(self.0).0 .0;
        lock.lock().unwrap().as_ref().is_some_and(|w| w.killed)
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        *(self.0).0 .0.lock().unwrap() = None;
    }
}
