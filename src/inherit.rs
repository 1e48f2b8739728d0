//! Passing an anonymous channel's end to a spawned child process by inheritance.
//!
//! The parent duplicates the end's file descriptor, and a `pre_exec` hook clears its
//! close-on-exec flag in the child only, so no other child the program spawns meanwhile
//! inherits it. The child finds the descriptor number, the message type's fingerprint and the
//! size limit in one environment variable, `CONDUIT_FD_<NAME>`, and refuses a type mismatch.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::channel::{ReceiverFlavor, SenderFlavor};
use crate::flavors::stream::{StreamReceiver, StreamSender};
use crate::sys::StreamKind;
use crate::{codec, Error, Message, Options, Receiver, Sender};

const PREFIX: &str = "CONDUIT_FD_";

fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(Error::BadAddress {
            addr: name.to_string(),
            reason: "an inheritance name is made of ASCII letters, digits and '_'".to_string(),
        });
    }
    Ok(())
}

fn env_name(name: &str) -> String {
    format!("{PREFIX}{name}")
}

fn kind_str(kind: StreamKind) -> &'static str {
    match kind {
        StreamKind::Unix => "unix",
        StreamKind::Tcp => "tcp",
        StreamKind::Pipe => "pipe",
    }
}

/// Arranges for `fd` (a close-on-exec duplicate owned by the hook) to reach the child.
fn pass(
    cmd: &mut Command,
    name: &str,
    role: &str,
    kind: StreamKind,
    fd: OwnedFd,
    limit: usize,
    fp: u64,
) {
    let raw = fd.as_raw_fd();
    cmd.env(
        env_name(name),
        format!("v1;{role};{};{raw};{fp:016x};{limit}", kind_str(kind)),
    );
    let hook = move || {
        // Runs in the child between fork and exec: only async-signal-safe calls.
        // SAFETY: fcntl is async-signal-safe; `fd` is owned by this closure, so it is open.
        let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) };
        if rc == -1 {
            return Err(std::io::Error::last_os_error());
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
    kind: StreamKind,
    fd: RawFd,
    fingerprint: u64,
    limit: usize,
}

fn parse(name: &str, value: &str) -> Result<Token, Error> {
    let bad = || Error::BadAddress {
        addr: env_name(name),
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
        "unix" => StreamKind::Unix,
        "tcp" => StreamKind::Tcp,
        "pipe" => StreamKind::Pipe,
        _ => return Err(bad()),
    };
    Ok(Token {
        role: role.to_string(),
        kind,
        fd: fd.parse().map_err(|_| bad())?,
        fingerprint: u64::from_str_radix(fp, 16).map_err(|_| bad())?,
        limit: limit.parse().map_err(|_| bad())?,
    })
}

/// Finds, checks and claims the inherited descriptor `name` (once per process).
fn claim<T>(name: &str, role: &str) -> Result<(OwnedFd, Token), Error> {
    check_name(name)?;
    let value = std::env::var(env_name(name)).map_err(|_| Error::NotFound {
        addr: env_name(name),
    })?;
    let token = parse(name, &value)?;
    if token.role != role {
        return Err(Error::BadAddress {
            addr: env_name(name),
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
    if !claimed.insert(name.to_string()) {
        return Err(Error::AddrInUse {
            addr: env_name(name),
            reason: "this process already took that inherited channel end".to_string(),
        });
    }
    let stat = rustix::fs::fstat(
        // SAFETY: only used for this fstat call while `raw` is open in this process; if the
        // number is not open, fstat fails with EBADF and we return an error.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(token.fd) },
    )
    .map_err(|e| Error::io(format!("finding inherited descriptor {}", token.fd), e))?;
    let file_type = rustix::fs::FileType::from_raw_mode(stat.st_mode);
    let expected = match token.kind {
        StreamKind::Pipe => rustix::fs::FileType::Fifo,
        _ => rustix::fs::FileType::Socket,
    };
    if file_type != expected {
        return Err(Error::BadAddress {
            addr: env_name(name),
            reason: format!(
                "descriptor {} is not the expected {}",
                token.fd,
                kind_str(token.kind)
            ),
        });
    }
    // SAFETY: the descriptor was inherited from the parent for this channel end (checked open
    // and of the right type above), and the CLAIMED set guarantees only one OwnedFd is ever
    // made for it in this process.
    let fd = unsafe { OwnedFd::from_raw_fd(token.fd) };
    // Keep it from leaking into this child's own children.
    let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
    Ok((fd, token))
}

fn thread_cannot_cross() -> Error {
    Error::Unsupported {
        what: "passing a Backend::Thread channel to another process (use Socket or Pipe)"
            .to_string(),
    }
}

fn shm_not_inheritable() -> Error {
    Error::Unsupported {
        what: "passing a Backend::Shm channel end to a child by inheritance (bind a shm: \
               address and connect from the child instead)"
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
            SenderFlavor::Shm(_) => Err(shm_not_inheritable()),
            SenderFlavor::Stream(s) => {
                let (fd, kind, limit) = s.duplicate()?;
                pass(
                    cmd,
                    name,
                    "sender",
                    kind,
                    fd,
                    limit,
                    codec::fingerprint::<T>(),
                );
                Ok(())
            }
        }
    }

    /// In a child spawned after [`Sender::share_with_child`], takes the inherited sender.
    /// Fails with [`Error::TypeMismatch`] if the parent's channel carries another type, and
    /// with [`Error::NotFound`] if nothing was shared under `name`.
    pub fn from_parent(name: &str) -> Result<Self, Error> {
        let (fd, token) = claim::<T>(name, "sender")?;
        let opts = Options::new().max_message_size(token.limit);
        let sender = StreamSender::from_fd(fd, token.kind, &opts)?;
        Ok(Sender {
            flavor: SenderFlavor::Stream(sender),
        })
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
            ReceiverFlavor::Shm(_) => Err(shm_not_inheritable()),
            ReceiverFlavor::Stream(r) => {
                let (fd, kind, limit) = r.duplicate()?;
                pass(
                    cmd,
                    name,
                    "receiver",
                    kind,
                    fd,
                    limit,
                    codec::fingerprint::<T>(),
                );
                Ok(())
            }
        }
    }

    /// In a child spawned after [`Receiver::share_with_child`], takes the inherited receiver.
    pub fn from_parent(name: &str) -> Result<Self, Error> {
        let (fd, token) = claim::<T>(name, "receiver")?;
        let opts = Options::new().max_message_size(token.limit);
        let receiver = StreamReceiver::from_fd(fd, token.kind, &opts)?;
        Ok(Receiver::new(ReceiverFlavor::Stream(receiver)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_refuse_garbage() {
        let t = parse("X", "v1;sender;pipe;7;00000000000000ff;1024").unwrap();
        assert_eq!((t.fd, t.fingerprint, t.limit), (7, 255, 1024));
        assert_eq!(t.kind, StreamKind::Pipe);
        for bad in [
            "",
            "v2;sender;pipe;7;ff;1",
            "v1;sender;fifo;7;ff;1",
            "v1;sender;pipe;x;ff;1",
        ] {
            assert!(parse("X", bad).is_err(), "{bad}");
        }
        assert!(check_name("JOBS_1").is_ok());
        assert!(check_name("no-dash").is_err());
    }
}
