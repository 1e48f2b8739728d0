//! Writing to a pipe without letting `SIGPIPE` kill the process.
//!
//! Sockets have `MSG_NOSIGNAL`; pipes do not. A write to a pipe whose reader is gone raises
//! `SIGPIPE` for the writing thread, which kills a process that has not ignored it (Rust
//! programs ignore it by default, but a library may run under a host that does not). So the
//! signal is blocked in this thread around the write; if the write fails with `EPIPE` and the
//! signal was not already pending before, the one the write raised is consumed with a zero
//! `sigtimedwait` before the mask is restored. This is the technique libcurl and OpenSSL use.

use std::io::{self, IoSlice};
use std::os::fd::BorrowedFd;

/// `writev(2)` on a pipe with `SIGPIPE` suppressed for this thread.
pub(crate) fn writev_without_sigpipe(
    fd: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
) -> io::Result<usize> {
    let guard = SigpipeBlock::new()?;
    let result = rustix::io::writev(fd, bufs).map_err(io::Error::from);
    if let Err(e) = &result {
        if e.raw_os_error() == Some(libc::EPIPE) {
            guard.consume_raised();
        }
    }
    drop(guard);
    result
}

/// Blocks `SIGPIPE` in the calling thread until dropped.
struct SigpipeBlock {
    old_mask: libc::sigset_t,
    was_pending: bool,
}

fn sigpipe_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it fully before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t; these calls cannot fail for SIGPIPE.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
    }
    set
}

impl SigpipeBlock {
    fn new() -> io::Result<Self> {
        let set = sigpipe_set();
        // SAFETY: zeroed is a valid bit pattern for sigset_t; sigpending fills it.
        let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `pending` is a valid, writable sigset_t.
        if unsafe { libc::sigpending(&mut pending) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `pending` was filled by sigpending above.
        let was_pending = unsafe { libc::sigismember(&pending, libc::SIGPIPE) } == 1;
        // SAFETY: zeroed is a valid bit pattern; pthread_sigmask writes the old mask into it.
        let mut old_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` and `old_mask` are valid sigset_t values; this changes only the
        // calling thread's mask, which Drop restores.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old_mask) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(SigpipeBlock {
            old_mask,
            was_pending,
        })
    }

    /// Consumes the SIGPIPE our failed write raised, unless one was pending before (then it
    /// belongs to somebody else and stays pending).
    fn consume_raised(&self) {
        if self.was_pending {
            return;
        }
        let set = sigpipe_set();
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        loop {
            // SAFETY: `set` is a valid sigset_t, the info pointer may be null, and `zero` is a
            // valid timespec; SIGPIPE is blocked in this thread, so it is pending, not delivered.
            let rc = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) };
            if rc == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
    }
}

impl Drop for SigpipeBlock {
    fn drop(&mut self) {
        // SAFETY: `old_mask` is the mask pthread_sigmask returned in `new`; restoring it undoes
        // exactly our change to this thread's mask.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut());
        }
    }
}

/// Runs `check` in a forked child whose `SIGPIPE` disposition is the default, and fails
/// unless the child returns from it normally. A Rust test binary ignores `SIGPIPE`, so a
/// write that raised it in the test process itself would pass unnoticed; in the child it
/// kills the process, and the test fails naming the signal.
#[cfg(test)]
pub(crate) fn in_child_with_default_sigpipe(check: impl FnOnce()) {
    // SAFETY: fork has no memory-safety preconditions. The child runs only `check` (system
    // calls on descriptors it inherited) and then `_exit`, never returning into the test
    // harness; glibc keeps malloc usable in the child of a multi-threaded parent.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: restoring the default disposition of one signal is always sound.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        let passed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)).is_ok();
        // SAFETY: _exit ends the child at once, without running the parent's atexit handlers.
        unsafe { libc::_exit(if passed { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: `pid` is our child and `status` a valid, writable int.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid: {}", io::Error::last_os_error());
    assert!(
        !libc::WIFSIGNALED(status),
        "the check was killed by signal {} (SIGPIPE is {})",
        libc::WTERMSIG(status),
        libc::SIGPIPE
    );
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "the check failed in the child"
    );
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn a_pipe_whose_reader_is_gone_gives_epipe_not_sigpipe() {
        let (reader, writer) = rustix::pipe::pipe().unwrap();
        drop(reader);
        in_child_with_default_sigpipe(|| {
            let err = writev_without_sigpipe(writer.as_fd(), &[IoSlice::new(b"x")]).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
        });
    }
}
