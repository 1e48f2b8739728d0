//! Passing an anonymous channel's end to a spawned child process by inheritance.
//!
//! The parent duplicates the end's file descriptors, and a `pre_exec` hook clears their
//! close-on-exec flag in the child only, so no other child the program spawns meanwhile
//! inherits them. The child finds the descriptor numbers, the message type's fingerprint and
//! the size limit in one environment variable, `CONDUIT_FD_<NAME>`
//! (`v1;ROLE;KIND;FD[,FD…];FINGERPRINT;LIMIT`), and refuses a type mismatch.
//!
//! Stream ends are duplicated: the parent's handle keeps working (but two processes writing
//! one stream may interleave large messages, so hand a sender to one process at a time). A
//! shared-memory end is *moved*: its ring has exactly one producer and one consumer, so the
//! parent's handle stops working (sends fail with `SendFailure::Moved`, receives report
//! `Disconnected`). Its descriptors are the connection's socket (wake-ups and liveness) and
//! the ring's memfd.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::channel::{ReceiverFlavor, SenderFlavor};
use crate::flavors::shm::{ShmReceiver, ShmSender};
use crate::flavors::stream::{StreamReceiver, StreamSender};
use crate::sys::StreamKind;
use crate::{codec, Error, Message, Options, Receiver, Sender};

const PREFIX: &str = "CONDUIT_FD_";

fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(Error::BadInheritance {
            name: name.to_string(),
            reason: "an inheritance name is made of ASCII letters, digits and '_'".to_string(),
        });
    }
    Ok(())
}

fn env_name(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// What an inherited end is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Stream(StreamKind),
    Shm,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Stream(StreamKind::Unix) => "unix",
            Kind::Stream(StreamKind::Tcp) => "tcp",
            Kind::Stream(StreamKind::Pipe) => "pipe",
            Kind::Shm => "shm",
        }
    }

    /// The file types of the descriptors, in order.
    fn file_types(self) -> &'static [rustix::fs::FileType] {
        use rustix::fs::FileType::{Fifo, RegularFile, Socket};
        match self {
            Kind::Stream(StreamKind::Pipe) => &[Fifo],
            Kind::Stream(_) => &[Socket],
            // The connection's socket and the ring's memfd.
            Kind::Shm => &[Socket, RegularFile],
        }
    }
}

/// Arranges for `fds` (close-on-exec duplicates owned by the hook) to reach the child.
fn pass(
    cmd: &mut Command,
    name: &str,
    role: &str,
    kind: Kind,
    fds: Vec<OwnedFd>,
    limit: usize,
    fp: u64,
) {
    let raws: Vec<String> = fds.iter().map(|fd| fd.as_raw_fd().to_string()).collect();
    cmd.env(
        env_name(name),
        format!(
            "v1;{role};{};{};{fp:016x};{limit}",
            kind.as_str(),
            raws.join(",")
        ),
    );
    let hook = move || {
        // Runs in the child between fork and exec: only async-signal-safe calls, no
        // allocation.
        for fd in &fds {
            // SAFETY: fcntl is async-signal-safe; `fd` is owned by this closure, so it is open.
            let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) };
            if rc == -1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook only calls fcntl, which is async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(hook);
    }
}

struct Token {
    role: String,
    kind: Kind,
    fds: Vec<RawFd>,
    fingerprint: u64,
    limit: usize,
}

fn parse(name: &str, value: &str) -> Result<Token, Error> {
    let bad = || Error::BadInheritance {
        name: env_name(name),
        reason: format!("the inheritance token {value:?} is malformed"),
    };
    let parts: Vec<&str> = value.split(';').collect();
    let [ver, role, kind, fd, fp, limit] = parts[..] else {
        return Err(bad());
    };
    if ver != "v1" {
        return Err(bad());
    }
    let kind = match kind {
        "unix" => Kind::Stream(StreamKind::Unix),
        "tcp" => Kind::Stream(StreamKind::Tcp),
        "pipe" => Kind::Stream(StreamKind::Pipe),
        "shm" => Kind::Shm,
        _ => return Err(bad()),
    };
    let fds = fd
        .split(',')
        .map(|n| n.parse::<RawFd>().map_err(|_| bad()))
        .collect::<Result<Vec<_>, _>>()?;
    if fds.len() != kind.file_types().len() || fds.iter().any(|&n| n < 0) {
        return Err(bad());
    }
    Ok(Token {
        role: role.to_string(),
        kind,
        fds,
        fingerprint: u64::from_str_radix(fp, 16).map_err(|_| bad())?,
        limit: limit.parse().map_err(|_| bad())?,
    })
}

/// Finds, checks and claims the inherited descriptors of `name` (once per process).
fn claim<T>(name: &str, role: &str) -> Result<(Vec<OwnedFd>, Token), Error> {
    check_name(name)?;
    let value = std::env::var(env_name(name)).map_err(|_| Error::NotFound {
        addr: env_name(name),
    })?;
    let token = parse(name, &value)?;
    if token.role != role {
        return Err(Error::BadInheritance {
            name: env_name(name),
            reason: format!("the parent shared a {}, not a {role}", token.role),
        });
    }
    if token.fingerprint != codec::fingerprint::<T>() {
        return Err(Error::TypeMismatch {
            addr: env_name(name),
            local: codec::describe::<T>(),
            remote: format!("a different type (fingerprint {:016x})", token.fingerprint),
        });
    }
    static CLAIMED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let mut claimed = CLAIMED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if claimed.contains(name) {
        return Err(Error::AddrInUse {
            addr: env_name(name),
            reason: "this process already took that inherited channel end".to_string(),
        });
    }
    for (&raw, &expected) in token.fds.iter().zip(token.kind.file_types()) {
        // SAFETY: only used for this fstat call; if the number is not open, fstat fails with
        // EBADF and we return an error.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
        let stat = rustix::fs::fstat(borrowed)
            .map_err(|e| Error::io(format!("finding inherited descriptor {raw}"), e))?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != expected {
            return Err(Error::BadInheritance {
                name: env_name(name),
                reason: format!(
                    "descriptor {raw} is not what a {} end holds",
                    token.kind.as_str()
                ),
            });
        }
    }
    claimed.insert(name.to_string());
    let fds = token
        .fds
        .iter()
        .map(|&raw| {
            // SAFETY: the descriptor was inherited from the parent for this channel end
            // (checked open and of the right type above), and the CLAIMED set guarantees only
            // one OwnedFd is ever made for it in this process.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // Keep it from leaking into this child's own children.
            let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
            fd
        })
        .collect();
    Ok((fds, token))
}

fn thread_cannot_cross() -> Error {
    Error::Unsupported {
        what: "passing a Backend::Thread channel to another process (use Socket or Pipe)"
            .to_string(),
    }
}

/// `zenoh:` ends are not inherited: the child binds or connects the same key itself.
#[cfg(feature = "zenoh")]
fn zenoh_connects() -> Error {
    Error::CannotShare {
        reason: "a zenoh: channel is not inherited; connect (or bind) its key in the child"
            .to_string(),
    }
}

impl<T: Message> Sender<T> {
    /// Prepares `cmd` so the child it spawns inherits this sender as `name`; the child calls
    /// [`Sender::from_parent`] with the same name. Drop `cmd` after spawning, and drop this
    /// sender if the child should be the only producer, so the receiver sees `Disconnected`
    /// when the child exits.
    ///
    /// ```no_run
    /// use conduit::{channel, Backend, Sender};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // Parent:
    /// let (tx, rx) = channel::<String>(Backend::Pipe)?;
    /// let mut cmd = std::process::Command::new("worker");
    /// tx.share_with_child(&mut cmd, "RESULTS")?;
    /// let mut child = cmd.spawn()?;
    /// drop((cmd, tx));
    /// for line in rx.iter() { println!("{line}"); }
    /// child.wait()?;
    /// // Child (the "worker" program):
    /// let tx = Sender::<String>::from_parent("RESULTS")?;
    /// tx.send("done".to_string())?;
    /// # Ok(()) }
    /// ```
    pub fn share_with_child(&self, cmd: &mut Command, name: &str) -> Result<(), Error> {
        check_name(name)?;
        match &self.flavor {
            SenderFlavor::Thread(_) => Err(thread_cannot_cross()),
            SenderFlavor::Stream(s) => {
                let (fd, kind, limit) = s.duplicate()?;
                let fp = codec::fingerprint::<T>();
                pass(cmd, name, "sender", Kind::Stream(kind), vec![fd], limit, fp);
                Ok(())
            }
            SenderFlavor::Shm(s) => {
                let (fds, limit) = s.hand_off()?;
                pass(
                    cmd,
                    name,
                    "sender",
                    Kind::Shm,
                    fds,
                    limit,
                    codec::fingerprint::<T>(),
                );
                Ok(())
            }
            #[cfg(feature = "zenoh")]
            SenderFlavor::Zenoh(_) => Err(zenoh_connects()),
        }
    }

    /// In a child spawned after [`Sender::share_with_child`], takes the inherited sender.
    /// Fails with [`Error::TypeMismatch`] if the parent's channel carries another type, and
    /// with [`Error::NotFound`] if nothing was shared under `name`.
    pub fn from_parent(name: &str) -> Result<Self, Error> {
        let (fds, token) = claim::<T>(name, "sender")?;
        let opts = Options::new().max_message_size(token.limit);
        let flavor = match token.kind {
            Kind::Stream(kind) => {
                let [fd]: [OwnedFd; 1] = fds.try_into().map_err(|_| bad_fds(name))?;
                SenderFlavor::Stream(StreamSender::from_fd(fd, kind, &opts)?)
            }
            Kind::Shm => SenderFlavor::Shm(ShmSender::from_inherited(fds, token.limit)?),
        };
        Ok(Sender { flavor })
    }
}

impl<T: Message> Receiver<T> {
    /// Prepares `cmd` so the child it spawns inherits this receiver as `name`; the child
    /// calls [`Receiver::from_parent`]. Drop this receiver in the parent afterwards: a
    /// channel has one consumer.
    ///
    /// ```no_run
    /// use conduit::{channel, Backend, Receiver};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (tx, rx) = channel::<u64>(Backend::Socket)?;
    /// let mut cmd = std::process::Command::new("worker");
    /// rx.share_with_child(&mut cmd, "JOBS")?;
    /// let child = cmd.spawn()?;
    /// drop((cmd, rx));
    /// tx.send(42)?;
    /// // In the child:
    /// let jobs = Receiver::<u64>::from_parent("JOBS")?;
    /// # Ok(()) }
    /// ```
    pub fn share_with_child(&self, cmd: &mut Command, name: &str) -> Result<(), Error> {
        check_name(name)?;
        match &self.flavor {
            ReceiverFlavor::Thread(_) => Err(thread_cannot_cross()),
            ReceiverFlavor::Stream(r) => {
                let (fd, kind, limit) = r.duplicate()?;
                let fp = codec::fingerprint::<T>();
                pass(
                    cmd,
                    name,
                    "receiver",
                    Kind::Stream(kind),
                    vec![fd],
                    limit,
                    fp,
                );
                Ok(())
            }
            ReceiverFlavor::Shm(r) => {
                let (fds, limit) = r.hand_off()?;
                let fp = codec::fingerprint::<T>();
                pass(cmd, name, "receiver", Kind::Shm, fds, limit, fp);
                Ok(())
            }
            #[cfg(feature = "zenoh")]
            ReceiverFlavor::Zenoh(_) => Err(zenoh_connects()),
        }
    }

    /// In a child spawned after [`Receiver::share_with_child`], takes the inherited receiver.
    pub fn from_parent(name: &str) -> Result<Self, Error> {
        let (fds, token) = claim::<T>(name, "receiver")?;
        let opts = Options::new().max_message_size(token.limit);
        let flavor = match token.kind {
            Kind::Stream(kind) => {
                let [fd]: [OwnedFd; 1] = fds.try_into().map_err(|_| bad_fds(name))?;
                ReceiverFlavor::Stream(StreamReceiver::from_fd(fd, kind, &opts)?)
            }
            Kind::Shm => ReceiverFlavor::Shm(ShmReceiver::from_inherited(fds, token.limit)?),
        };
        Ok(Receiver::new(flavor))
    }
}

fn bad_fds(name: &str) -> Error {
    Error::BadInheritance {
        name: env_name(name),
        reason: "the inherited descriptors do not match the channel kind".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_refuse_garbage() {
        let t = parse("X", "v1;sender;pipe;7;00000000000000ff;1024").unwrap();
        assert_eq!(
            (t.fds.clone(), t.fingerprint, t.limit),
            (vec![7], 255, 1024)
        );
        assert_eq!(t.kind, Kind::Stream(StreamKind::Pipe));
        let t = parse("X", "v1;receiver;shm;3,4;ff;9").unwrap();
        assert_eq!((t.kind, t.fds), (Kind::Shm, vec![3, 4]));
        for bad in [
            "",
            "v2;sender;pipe;7;ff;1",
            "v1;sender;fifo;7;ff;1",
            "v1;sender;pipe;x;ff;1",
            "v1;sender;pipe;7,8;ff;1",
            "v1;sender;shm;3,4,5,6;ff;1",
            "v1;sender;pipe;-1;ff;1",
        ] {
            assert!(parse("X", bad).is_err(), "{bad}");
        }
        assert!(check_name("JOBS_1").is_ok());
        assert!(check_name("no-dash").is_err());
    }
}
