//! Socket set-up: owner-only Unix socket files with stale-file reclaim, connect with the
//! peer's user checked, peer credentials. Errors are `io::Error`s whose kind says what
//! happened (`AddrInUse`, `PermissionDenied`, ...) and whose message says why; the caller
//! names the address (`Error::bind`, `Error::connect`).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

/// A socket file this process created; removed on drop only if it is still the same file.
#[derive(Debug)]
pub(crate) struct OwnedSocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for OwnedSocketFile {
    fn drop(&mut self) {
        // Under the directory's lock, so a binder reclaiming the path cannot slip its own
        // file in between the check and the removal.
        let _lock = DirLock::acquire(&self.path);
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if meta.dev() == self.dev && meta.ino() == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds a listening Unix stream socket at `path`, mode 0600 whatever the umask.
///
/// If a socket file is already there: a live listener gives `AddrInUse`; a dead one (connect
/// refused) owned by this user is removed and the bind retried once. Anything else at the
/// path (a regular file, a symlink, another user's socket) is left alone and refused.
///
/// The whole sequence runs under [`DirLock`], so two processes binding one address at once
/// cannot both win: without it, one could find the other's file between its `bind` and
/// its `listen` (connect refused), take it for stale and replace it.
pub(crate) fn bind_unix(path: &Path) -> io::Result<(UnixListener, OwnedSocketFile)> {
    let _lock = DirLock::acquire(path);
    match try_bind(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            reclaim_stale(path)?;
            try_bind(path)
        }
        other => other,
    }
}

/// How long a binder waits for another process's bind in the same directory.
const DIR_LOCK_PATIENCE: Duration = Duration::from_secs(2);

/// An exclusive `flock` on the directory that holds a socket file, taken by conduit around
/// every bind, reclaim and removal of socket files in it. The lock is the directory's own
/// (no lock file is created, so nothing is left behind) and is released when the
/// descriptor closes, also when the process dies.
///
/// Best effort by design: a directory this process cannot open (search-only permission),
/// or a lock held longer than [`DIR_LOCK_PATIENCE`] (any local user may `flock` a shared
/// directory such as `/tmp`), gives an unlocked bind rather than an error or a hang; the
/// stale-reclaim race is then possible again (SECURITY.md).
struct DirLock {
    _held: Option<OwnedFd>,
}

impl DirLock {
    fn acquire(path: &Path) -> DirLock {
        use rustix::fs::{FlockOperation, Mode, OFlags};
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let Ok(fd) = rustix::fs::open(dir, flags, Mode::empty()) else {
            return DirLock { _held: None };
        };
        let deadline = Instant::now() + DIR_LOCK_PATIENCE;
        loop {
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return DirLock { _held: Some(fd) },
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(_) => return DirLock { _held: None },
            }
        }
    }
}

fn try_bind(path: &Path) -> io::Result<(UnixListener, OwnedSocketFile)> {
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // Linux creates the socket file with the socket inode's mode less the umask, so narrowing
    // the inode first keeps the file owner-only from its first instant. The chmod after bind
    // makes it exactly 0600 even under an unusual umask.
    let _ = rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(0o600));
    rustix::net::bind(&fd, &SocketAddrUnix::new(path)?)?;
    let meta = std::fs::symlink_metadata(path)?;
    let file = OwnedSocketFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    rustix::net::listen(&fd, 128)?;
    Ok((UnixListener::from(fd), file))
}

/// Removes the socket file at `path` if its receiver is dead; `AddrInUse` if it is alive,
/// or if what is there is not this user's socket (left untouched).
fn reclaim_stale(path: &Path) -> io::Result<()> {
    let in_use = |reason: String| io::Error::new(io::ErrorKind::AddrInUse, reason);
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        // Gone since bind failed: the retry will tell.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(in_use(
            "a file that is not a socket is there; it was left untouched".to_string(),
        ));
    }
    if meta.uid() != my_uid() {
        return Err(in_use(format!(
            "a socket of another user (uid {}) is there; it was left untouched",
            meta.uid()
        )));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(in_use("a live receiver listens there".to_string())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            // Nobody listens: the receiver that made it is dead. Remove it.
            match std::fs::remove_file(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        }
        Err(e) => Err(e),
    }
}

/// Connects to a Unix stream socket and checks the listener runs as this user
/// (`PermissionDenied` if not).
pub(crate) fn connect_unix(path: &Path) -> io::Result<OwnedFd> {
    let stream = UnixStream::connect(path)?;
    let (uid, me) = (peer_uid(&stream)?, my_uid());
    if uid != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("the receiver runs as uid {uid}, this process as uid {me}"),
        ));
    }
    Ok(OwnedFd::from(stream))
}

/// Connects to a TCP address, with `TCP_NODELAY`.
pub(crate) fn connect_tcp(host_port: &str) -> io::Result<OwnedFd> {
    let stream = std::net::TcpStream::connect(host_port)?;
    stream.set_nodelay(true)?;
    Ok(OwnedFd::from(stream))
}

/// The effective uid of the process at the other end of a Unix socket.
pub(crate) fn peer_uid(fd: impl AsFd) -> io::Result<u32> {
    Ok(rustix::net::sockopt::socket_peercred(fd)?.uid.as_raw())
}

/// This process's effective uid.
pub(crate) fn my_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}
