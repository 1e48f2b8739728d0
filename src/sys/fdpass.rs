//! Passing file descriptors over a Unix socket (`SCM_RIGHTS`).
//!
//! The shared-memory backend hands its ring's memfd to the peer this way over the
//! rendezvous connection. Descriptors always travel with at least one byte of data: on a
//! stream socket the kernel attaches them to that byte, so the receiver gets them with the
//! `recvmsg` that reads it and never has to guess where they belong.

use std::io::{self, IoSlice};
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

/// The most descriptors Linux carries in one message (`SCM_MAX_FD`); more gives `EINVAL`.
const SCM_MAX_FD: usize = 253;

/// `u64` words of control buffer for `SCM_MAX_FD` descriptors: a 16-byte `cmsghdr` and
/// 4 bytes each, rounded up (`CMSG_SPACE`).
const CONTROL_WORDS: usize = (16 + SCM_MAX_FD * 4).div_ceil(8) + 1;

/// `sendmsg(2)` with `SCM_RIGHTS` carrying `fds` alongside `bytes`, with `MSG_NOSIGNAL`
/// (a closed peer gives `EPIPE`, never `SIGPIPE`) and `MSG_DONTWAIT` (never blocks, even on
/// a blocking socket: the caller waits for room under its own deadline). Retries `EINTR`.
///
/// `bytes` must be non-empty. Works on blocking and non-blocking sockets; a non-blocking one
/// gives `WouldBlock` when full. On a stream socket the kernel may take only part of `bytes`
/// (the count is returned); the descriptors went with the first byte, so the caller writes
/// the rest with plain writes.
pub(crate) fn send_with_fds(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    if bytes.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptors must be sent with at least one byte of data",
        ));
    }
    if fds.len() > SCM_MAX_FD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "cannot pass {} descriptors in one message (at most {SCM_MAX_FD})",
                fds.len()
            ),
        ));
    }
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        // Cannot happen with the space computed above; an error rather than a panic anyway.
        return Err(io::Error::other(
            "no room for the descriptors in the control buffer",
        ));
    }
    let iov = [IoSlice::new(bytes)];
    loop {
        match rustix::net::sendmsg(
            sock,
            &iov,
            &mut control,
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        ) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// `recvmsg(2)` accepting up to `max_fds` descriptors, each close-on-exec
/// (`MSG_CMSG_CLOEXEC`), never blocking (`MSG_DONTWAIT`: `WouldBlock` when nothing is
/// there). Retries `EINTR`. Returns the bytes read (`0` is end of stream) and the
/// descriptors that came with them.
///
/// On a stream socket one call returns the descriptors of at most one `sendmsg`: Linux
/// stops reading after the first chunk that carries descriptors, so they came with the last
/// byte read or before it, never with bytes not yet read.
///
/// If the peer sent more descriptors than `max_fds` (whether the kernel had to truncate the
/// control data, `MSG_CTRUNC`, or they fitted in the rounding of the buffer), every received
/// descriptor is closed and `InvalidData` returned. The bytes read by that call are lost, so
/// the caller should treat the connection as broken.
pub(crate) fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the one vector is `buf`, borrowed mutably for the call.
    unsafe { recv_vectored_with_fds(sock, &mut iov, max_fds) }
}

/// [`recv_with_fds`] into the buffers `iov` describes, filled in order: for a caller that
/// reads into memory it cannot lend as a `&mut [u8]` (a vector's spare capacity).
///
/// # Safety
///
/// Each `iovec` must describe memory that is valid for writes of its length and that
/// nothing else reads or writes during the call.
pub(crate) unsafe fn recv_vectored_with_fds(
    sock: BorrowedFd<'_>,
    iov: &mut [libc::iovec],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    // Asking for more than the kernel can ever send only wastes space.
    let room = max_fds.min(SCM_MAX_FD);
    let fd_bytes = (room * size_of::<libc::c_int>()) as u32;
    // SAFETY: CMSG_SPACE only computes a length.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
    // On the stack, in `u64`s (aligned for `cmsghdr`), uninitialised: only what the kernel
    // writes is read.
    let mut control = [MaybeUninit::<u64>::uninit(); CONTROL_WORDS];
    debug_assert!(space <= CONTROL_WORDS * size_of::<u64>());
    // SAFETY: `msghdr` is plain data, for which all zeroes is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let flags = libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT;
    let read = loop {
        // SAFETY: `msg` points at `iov` (valid for writes, by the caller's promise) and at
        // `control`, `space` bytes we own; both outlive the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // Take ownership of every descriptor that arrived, so each is closed if we refuse them.
    // Other control messages (credentials, say) are skipped; they hold no resources.
    let mut fds = Vec::new();
    // SAFETY: `msg` was filled by `recvmsg`: its control length says how much of `control`
    // holds messages, which CMSG_FIRSTHDR and CMSG_NXTHDR walk without leaving it.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` points at a whole header inside `control` (see above).
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN only computes a length.
            let data_len = header.cmsg_len as usize - unsafe { libc::CMSG_LEN(0) } as usize;
            // SAFETY: the data of a header inside `control`.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<libc::c_int>();
            for i in 0..data_len / size_of::<libc::c_int>() {
                // SAFETY: within the header's data (`data_len`); each is a descriptor the
                // kernel just installed in this process for us, owned by nobody else.
                fds.push(unsafe { OwnedFd::from_raw_fd(data.add(i).read_unaligned()) });
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        drop(fds);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the peer passed more descriptors than fit (control data truncated), at most \
                 {max_fds} expected"
            ),
        ));
    }
    if fds.len() > max_fds {
        let got = fds.len();
        drop(fds);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the peer passed {got} descriptors, at most {max_fds} expected"),
        ));
    }
    Ok((read, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    /// A pipe as (read end, write end) std files.
    fn pipe() -> (std::fs::File, std::fs::File) {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        (std::fs::File::from(r), std::fs::File::from(w))
    }

    #[test]
    fn passes_one_descriptor_that_works() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut r, w) = pipe();
        assert_eq!(send_with_fds(a.as_fd(), b"x", &[w.as_fd()]).unwrap(), 1);
        drop(w);
        let mut buf = [0u8; 8];
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf, 1).unwrap();
        assert_eq!((n, buf[0], fds.len()), (1, b'x', 1));
        let mut w = std::fs::File::from(fds.into_iter().next().unwrap());
        w.write_all(b"through").unwrap();
        drop(w);
        let mut got = String::new();
        r.read_to_string(&mut got).unwrap();
        assert_eq!(got, "through");
    }

    #[test]
    fn passes_three_descriptors_in_order_and_close_on_exec() {
        let (a, b) = UnixStream::pair().unwrap();
        let pipes: Vec<_> = (0..3).map(|_| pipe()).collect();
        let ends: Vec<BorrowedFd<'_>> = pipes.iter().map(|(_, w)| w.as_fd()).collect();
        assert_eq!(send_with_fds(a.as_fd(), b"hello", &ends).unwrap(), 5);
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf, 3).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 3);
        for (i, fd) in fds.into_iter().enumerate() {
            let flags = rustix::io::fcntl_getfd(&fd).unwrap();
            assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
            std::fs::File::from(fd).write_all(&[i as u8]).unwrap();
        }
        for (i, (r, _)) in pipes.iter().enumerate() {
            let mut byte = [0u8; 1];
            (&*r).read_exact(&mut byte).unwrap();
            assert_eq!(byte[0], i as u8);
        }
    }

    /// What the shm flavor's reading of its socket relies on: two `sendmsg`s with
    /// descriptors are never merged into one read, which ends with the bytes that carried
    /// the first group.
    #[test]
    fn one_read_takes_one_group_of_descriptors() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_r, w) = pipe();
        send_with_fds(a.as_fd(), b"\x01\x01", &[]).unwrap();
        send_with_fds(a.as_fd(), b"\x02", &[w.as_fd(), w.as_fd()]).unwrap();
        send_with_fds(a.as_fd(), b"\x01", &[]).unwrap();
        send_with_fds(a.as_fd(), b"\x02", &[w.as_fd()]).unwrap();
        let mut buf = [0u8; 64];
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf, 8).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"\x01\x01\x02"[..], 2));
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf, 8).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"\x01\x02"[..], 1));
        let err = recv_with_fds(b.as_fd(), &mut buf, 8).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn plain_data_and_eof() {
        let (a, b) = UnixStream::pair().unwrap();
        assert_eq!(send_with_fds(a.as_fd(), b"abc", &[]).unwrap(), 3);
        drop(a);
        let mut buf = [0u8; 8];
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf, 2).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"abc"[..], 0));
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf, 2).unwrap();
        assert_eq!((n, fds.len()), (0, 0));
    }

    #[test]
    fn empty_bytes_refused() {
        let (a, _b) = UnixStream::pair().unwrap();
        let err = send_with_fds(a.as_fd(), b"", &[a.as_fd()]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn non_blocking_gives_would_block() {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 8];
        let err = recv_with_fds(b.as_fd(), &mut buf, 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        a.set_nonblocking(true).unwrap();
        let chunk = vec![0u8; 1 << 16];
        let err = loop {
            match send_with_fds(a.as_fd(), &chunk, &[]) {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn closed_peer_gives_epipe_not_sigpipe() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        // A test binary ignores SIGPIPE: the send runs in a child that does not.
        crate::sys::sigpipe::in_child_with_default_sigpipe(|| {
            let err = send_with_fds(a.as_fd(), b"x", &[a.as_fd()]).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
        });
    }

    /// Sends `count` pipe write ends (keeping no copy here), receives with `max_fds`, and
    /// expects the refusal. Every read end then sees end-of-file, which proves no copy of any
    /// write end survives anywhere in this process: robust while other tests open and close
    /// descriptors in parallel, unlike counting entries of /proc/self/fd.
    fn refused_and_closed(count: usize, max_fds: usize, reason: &str) {
        let (a, b) = UnixStream::pair().unwrap();
        let (reads, writes): (Vec<_>, Vec<_>) = (0..count).map(|_| pipe()).unzip();
        let ends: Vec<BorrowedFd<'_>> = writes.iter().map(|w| w.as_fd()).collect();
        send_with_fds(a.as_fd(), b"z", &ends).unwrap();
        drop(ends);
        drop(writes);
        let mut buf = [0u8; 8];
        let err = recv_with_fds(b.as_fd(), &mut buf, max_fds).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains(reason), "{err}");
        for r in &reads {
            crate::sys::set_nonblocking(r).unwrap();
            let mut byte = [0u8; 1];
            // EOF, not WouldBlock: no write end is open.
            assert_eq!((&*r).read(&mut byte).unwrap(), 0);
        }
    }

    #[test]
    fn truncated_control_data_closes_everything() {
        // Eight descriptors do not fit in the space for one: the kernel sets MSG_CTRUNC.
        refused_and_closed(8, 1, "truncated");
    }

    #[test]
    fn more_than_max_in_the_rounding_closes_everything() {
        // Two descriptors fit in the alignment padding of the space for one.
        refused_and_closed(2, 1, "passed 2 descriptors");
    }

    #[test]
    fn descriptors_when_none_expected_are_refused() {
        refused_and_closed(1, 0, "at most 0 expected");
    }

    #[test]
    fn no_descriptor_leak_in_the_count() {
        let (a, b) = UnixStream::pair().unwrap();
        let before = crate::sys::open_fd_count().unwrap();
        for _ in 0..50 {
            send_with_fds(a.as_fd(), b"q", &[a.as_fd(), a.as_fd(), a.as_fd()]).unwrap();
            let mut buf = [0u8; 1];
            recv_with_fds(b.as_fd(), &mut buf, 1).unwrap_err();
        }
        let after = crate::sys::open_fd_count().unwrap();
        // Other tests run in parallel; a leak here would be 150 descriptors.
        assert!(after < before + 50, "before {before}, after {after}");
    }
}
