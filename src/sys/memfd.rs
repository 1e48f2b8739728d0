//! Sealed memfd mappings: the shared memory of the `shm:` backend.
//!
//! The creator makes an anonymous memfd (nothing is named in /dev/shm, so a crash leaves
//! nothing behind and nobody can squat a name), sizes it, seals its size, and maps it. The
//! peer receives the descriptor over the rendezvous socket and maps it only after checking
//! that it is a regular file of exactly the expected size whose size is sealed: once
//! `F_SEAL_SHRINK` is set nobody can truncate the file under a mapping, which is what would
//! turn an access into `SIGBUS`. Seals cannot be removed, so the check cannot go stale.
//!
//! The mapping is raw memory shared with another process: callers reach it through
//! pointers and atomics, never as `&[u8]`.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{FileType, MemfdFlags, OFlags, SealFlags};

/// A sealed, shared, read-write mapping of a memfd. Nothing is named in /dev/shm.
pub(crate) struct SharedMap {
    map: MmapRaw,
    fd: OwnedFd,
}

impl fmt::Debug for SharedMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMap")
            .field("ptr", &self.as_ptr())
            .field("len", &self.len())
            .field("fd", &self.fd)
            .finish()
    }
}

/// The seals the peer's memfd must carry: its size can never change.
const SIZE_SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW);

pub(super) fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Refuses lengths that cannot be mapped: zero (memmap2 would map a page past an empty
/// file) and more than a file offset can hold. `what` names the memory in the error.
pub(super) fn check_len(len: u64, what: &str) -> io::Result<usize> {
    match usize::try_from(len) {
        Ok(n) if n > 0 && len <= i64::MAX as u64 => Ok(n),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot map {len} bytes of {what}"),
        )),
    }
}

/// `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)` of `size` zeroed bytes, its size
/// not sealed yet.
pub(super) fn sized_memfd(name: &str, size: u64) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    loop {
        match rustix::fs::ftruncate(&fd, size) {
            Ok(()) => return Ok(fd),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The seals of a descriptor received from a peer, once it is known to be a memfd (a
/// regular file that supports seals); `InvalidData` otherwise. `what` names it in errors.
pub(crate) fn peer_memfd_seals(fd: BorrowedFd<'_>, what: &str) -> io::Result<SealFlags> {
    let kind = FileType::from_raw_mode(rustix::fs::fstat(fd)?.st_mode);
    if kind != FileType::RegularFile {
        return Err(invalid(format!(
            "{what}'s descriptor is a {kind:?}, not a memfd"
        )));
    }
    match rustix::fs::fcntl_get_seals(fd) {
        Ok(seals) => Ok(seals),
        Err(rustix::io::Errno::INVAL) => Err(invalid(format!(
            "{what}'s descriptor does not support seals: not a memfd"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// `InvalidData` unless the file `fd` (whose size is sealed) is exactly `expected` bytes.
pub(crate) fn expect_size(fd: BorrowedFd<'_>, expected: u64, what: &str) -> io::Result<()> {
    let size = rustix::fs::fstat(fd)?.st_size;
    if u64::try_from(size).ok() != Some(expected) {
        return Err(invalid(format!(
            "{what} is {size} bytes, {expected} expected"
        )));
    }
    Ok(())
}

impl SharedMap {
    /// `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)`, `ftruncate` to `len`, seal
    /// with `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`, and map shared read-write. The
    /// memory is zeroed. `name` only shows in /proc/PID/fd and /proc/PID/maps.
    pub(crate) fn create(name: &str, len: usize) -> io::Result<SharedMap> {
        check_len(len as u64, "shared memory")?;
        let fd = sized_memfd(name, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SIZE_SEALS | SealFlags::SEAL)?;
        Self::map(fd, len)
    }

    /// Maps a memfd received from a peer, shared read-write.
    ///
    /// Refuses with `InvalidData` anything that is not a regular file, that lacks the seals
    /// `F_SEAL_SHRINK` and `F_SEAL_GROW` (so the peer can never shrink it under us and cause
    /// `SIGBUS`), whose size is not exactly `expected_len`, that is sealed against writing,
    /// or that was not opened read-write.
    pub(crate) fn open(fd: OwnedFd, expected_len: usize) -> io::Result<SharedMap> {
        check_len(expected_len as u64, "shared memory")?;
        let expected = expected_len as u64;
        const WHAT: &str = "the shared memory";
        // Seals first, size second: once the size is sealed it cannot change between the
        // check and the mapping.
        let seals = peer_memfd_seals(fd.as_fd(), WHAT)?;
        if !seals.contains(SIZE_SEALS) {
            return Err(invalid(format!(
                "the shared memory is not sealed against shrinking and growing (seals {seals:?})"
            )));
        }
        if seals.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE) {
            return Err(invalid(format!(
                "the shared memory is sealed against writing (seals {seals:?})"
            )));
        }
        expect_size(fd.as_fd(), expected, WHAT)?;
        let mode = rustix::fs::fcntl_getfl(&fd)? & OFlags::RWMODE;
        if mode != OFlags::RDWR {
            return Err(invalid(
                "the shared memory descriptor is not open for reading and writing".into(),
            ));
        }
        Self::map(fd, expected_len)
    }

    /// Maps the first `len` bytes of `fd` shared read-write; `len` is at most the file size.
    fn map(fd: OwnedFd, len: usize) -> io::Result<SharedMap> {
        let map = MmapOptions::new().len(len).map_raw(&fd)?;
        Ok(SharedMap { map, fd })
    }

    /// The start of the mapping: valid for `len()` bytes for as long as `self` lives, and
    /// shared with the peer, which may write it at any time.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// The length of the mapping in bytes (never zero).
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The memfd, to pass it to a peer.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    const _: () = {
        const fn send_sync<T: Send + Sync>() {}
        send_sync::<SharedMap>();
    };

    fn dup(fd: BorrowedFd<'_>) -> OwnedFd {
        rustix::io::fcntl_dupfd_cloexec(fd, 0).unwrap()
    }

    fn unsealed(len: u64) -> OwnedFd {
        let fd =
            rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, len).unwrap();
        fd
    }

    #[test]
    fn writes_show_through_both_mappings() {
        let a = SharedMap::create("conduit-test", 8192).unwrap();
        assert_eq!(a.len(), 8192);
        let b = SharedMap::open(dup(a.fd()), 8192).unwrap();
        assert_ne!(a.as_ptr(), b.as_ptr());
        for i in [0usize, 1, 4095, 4096, 8191] {
            // SAFETY: i < len of both live mappings; no other thread touches them.
            unsafe {
                assert_eq!(b.as_ptr().add(i).read_volatile(), 0, "zeroed");
                a.as_ptr().add(i).write_volatile(i as u8 ^ 0x5a);
                assert_eq!(b.as_ptr().add(i).read_volatile(), i as u8 ^ 0x5a);
                b.as_ptr().add(i).write_volatile(7);
                assert_eq!(a.as_ptr().add(i).read_volatile(), 7);
            }
        }
        let seals = rustix::fs::fcntl_get_seals(a.fd()).unwrap();
        assert!(seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL));
        let fd_flags = rustix::io::fcntl_getfd(a.fd()).unwrap();
        assert!(fd_flags.contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn sealed_memfd_refuses_resizing_and_new_seals() {
        let a = SharedMap::create("conduit-test", 4096).unwrap();
        for size in [0u64, 100, 4095, 4097, 1 << 20] {
            let err = rustix::fs::ftruncate(a.fd(), size).unwrap_err();
            assert_eq!(err, rustix::io::Errno::PERM, "ftruncate to {size}");
        }
        // F_SEAL_SEAL: the peer cannot add F_SEAL_WRITE and break our writes either.
        let err = rustix::fs::fcntl_add_seals(a.fd(), SealFlags::WRITE).unwrap_err();
        assert_eq!(err, rustix::io::Errno::PERM);
        assert_eq!(rustix::fs::fstat(a.fd()).unwrap().st_size, 4096);
    }

    #[test]
    fn open_refuses_unsealed() {
        let err = SharedMap::open(unsealed(4096), 4096).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("not sealed"), "{err}");
        // Only shrinking sealed is not enough: growing would be allowed.
        let fd = unsealed(4096);
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK).unwrap();
        let err = SharedMap::open(fd, 4096).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn open_refuses_wrong_size() {
        let a = SharedMap::create("conduit-test", 4096).unwrap();
        for len in [4095, 4097, 8192] {
            let err = SharedMap::open(dup(a.fd()), len).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{len}");
            assert!(err.to_string().contains("4096 bytes"), "{err}");
        }
        let err = SharedMap::open(dup(a.fd()), 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn open_refuses_write_sealed() {
        let fd = unsealed(4096);
        rustix::fs::fcntl_add_seals(&fd, SIZE_SEALS | SealFlags::WRITE).unwrap();
        let err = SharedMap::open(fd, 4096).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn open_refuses_read_only_descriptor() {
        let a = SharedMap::create("conduit-test", 4096).unwrap();
        let path = format!("/proc/self/fd/{}", a.fd().as_raw_fd());
        let ro = std::fs::File::open(path).unwrap();
        let err = SharedMap::open(ro.into(), 4096).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn open_refuses_pipe_socket_and_plain_file() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        for fd in [r, w] {
            let err = SharedMap::open(fd, 4096).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(err.to_string().contains("not a memfd"), "{err}");
        }
        let (s, _t) = std::os::unix::net::UnixStream::pair().unwrap();
        let err = SharedMap::open(s.into(), 4096).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // A regular file that is not on shmem has no seals at all.
        let exe = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        let len = exe.metadata().unwrap().len() as usize;
        let err = SharedMap::open(exe.into(), len).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn create_refuses_zero_and_bad_names() {
        let err = SharedMap::create("conduit-test", 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(SharedMap::create("nul\0inside", 4096).is_err());
    }
}
