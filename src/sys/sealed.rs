//! Sealed files: a byte payload in a memfd of its own that no process can change any more.
//!
//! [`Unsealed`] is a fresh memfd mapped shared read-write for its creator to fill. Sealing
//! it unmaps that mapping first (`F_SEAL_WRITE` is refused while a writable shared mapping
//! exists, which is why `F_SEAL_FUTURE_WRITE` is not used: it would leave that mapping
//! writable), then adds `F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL` and maps
//! the file read-only: a [`Sealed`].
//!
//! A peer's descriptor becomes a [`Sealed`] only through [`Sealed::open`], which checks that
//! it is a regular file carrying the write and size seals and exactly the size its frame
//! announced. Seals cannot be removed, so once checked the bytes can be read as a `&[u8]`:
//! nobody can write them (no writable mapping can exist, `write(2)` fails) or truncate the
//! file under the mapping (which would turn a read into `SIGBUS`).

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use memmap2::{Mmap, MmapMut, MmapOptions};
use rustix::fs::SealFlags;

use super::memfd::{check_len, expect_size, invalid, peer_memfd_seals, sized_memfd};

/// The seals a blob must carry before anyone reads it as plain bytes.
const READ_SEALS: SealFlags = SealFlags::WRITE
    .union(SealFlags::SHRINK)
    .union(SealFlags::GROW);

/// A fresh memfd mapped shared read-write, for its creator to fill before sealing it.
pub(crate) struct Unsealed {
    map: MmapMut,
    fd: OwnedFd,
}

impl Unsealed {
    /// `memfd_create(MFD_CLOEXEC | MFD_ALLOW_SEALING)` of `len` zeroed bytes, mapped.
    pub(crate) fn create(len: usize) -> io::Result<Unsealed> {
        check_len(len as u64, "a sealed buffer")?;
        let fd = sized_memfd("conduit-blob", len as u64)?;
        // The size first: nobody else holds the descriptor yet, but a mapping of a file
        // that could shrink is one step from SIGBUS.
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW)?;
        // SAFETY: the memfd is ours alone (just created, close-on-exec, not passed on) and
        // its size is sealed, so the mapping stays valid and nobody else writes it.
        let map = unsafe { MmapOptions::new().len(len).map_mut(&fd)? };
        // Not into a child forked meanwhile by another thread: its copy of this writable
        // mapping would make the write seal fail (`EBUSY`) until it execs or exits.
        map.advise(memmap2::Advice::DontFork)?;
        Ok(Unsealed { map, fd })
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.map
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map
    }

    /// Unmaps the writable mapping, seals the file against every change, and maps it
    /// read-only.
    pub(crate) fn seal(self) -> io::Result<Sealed> {
        let Unsealed { map, fd } = self;
        let len = map.len();
        // The only writable mapping goes before the write seal, which it would block.
        drop(map);
        rustix::fs::fcntl_add_seals(&fd, READ_SEALS | SealFlags::SEAL)?;
        Sealed::map(fd, len)
    }
}

impl fmt::Debug for Unsealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unsealed")
            .field("len", &self.map.len())
            .finish()
    }
}

/// A read-only mapping of a memfd sealed against writing, shrinking and growing.
pub(crate) struct Sealed {
    map: Mmap,
    fd: OwnedFd,
}

impl Sealed {
    /// Checks a descriptor received from a peer and maps it read-only.
    ///
    /// Refuses with `InvalidData` anything that is not a regular file, that lacks
    /// `F_SEAL_WRITE`, `F_SEAL_SHRINK` or `F_SEAL_GROW`, or whose size is not exactly
    /// `expected_len`.
    pub(crate) fn open(fd: OwnedFd, expected_len: u64) -> io::Result<Sealed> {
        const WHAT: &str = "a sealed buffer";
        let len = check_len(expected_len, WHAT)?;
        let seals = peer_memfd_seals(fd.as_fd(), WHAT)?;
        if !seals.contains(READ_SEALS) {
            return Err(invalid(format!(
                "{WHAT} is not sealed against writing and resizing (seals {seals:?})"
            )));
        }
        // Seals first, size second: once sealed, the size cannot change after this check.
        expect_size(fd.as_fd(), expected_len, WHAT)?;
        Self::map(fd, len)
    }

    /// Maps the first `len` bytes of a sealed `fd` read-only; `len` is its size.
    ///
    /// A private mapping (`MAP_PRIVATE`, `PROT_READ`): reading it maps the file's own pages,
    /// no copy is made, and since the file never changes nothing can tell it from a shared
    /// one. Linux before 6.7 refuses a *shared* mapping of a write-sealed file even when it
    /// is read-only (the write seal counted every shared mapping as writable).
    fn map(fd: OwnedFd, len: usize) -> io::Result<Sealed> {
        // SAFETY: the file is sealed against writing, shrinking and growing (checked by
        // `open`, or set by `Unsealed::seal`), and seals are never removed: no process can
        // change these bytes or truncate them away, so they may be read as a `&[u8]` for as
        // long as the mapping lives.
        let map = unsafe { MmapOptions::new().len(len).map_copy_read_only(&fd)? };
        Ok(Sealed { map, fd })
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.map
    }

    /// The memfd, to pass to a peer.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRef<[u8]> for Sealed {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("len", &self.map.len())
            .field("fd", &self.fd)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dup(fd: BorrowedFd<'_>) -> OwnedFd {
        rustix::io::fcntl_dupfd_cloexec(fd, 0).unwrap()
    }

    fn memfd(len: u64, seals: SealFlags) -> OwnedFd {
        let fd = sized_memfd("t", len).unwrap();
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
        fd
    }

    #[test]
    fn written_then_sealed_reads_back_and_refuses_every_change() {
        let mut buf = Unsealed::create(10_000).unwrap();
        assert!(buf.as_slice().iter().all(|&b| b == 0), "zeroed");
        buf.as_mut_slice()[9_999] = 7;
        buf.as_mut_slice()[0] = 1;
        let sealed = buf.seal().unwrap();
        assert_eq!((sealed.as_slice()[0], sealed.as_slice()[9_999]), (1, 7));
        let seals = rustix::fs::fcntl_get_seals(sealed.fd()).unwrap();
        assert!(seals.contains(READ_SEALS | SealFlags::SEAL), "{seals:?}");
        assert_eq!(
            rustix::io::write(sealed.fd(), b"x").unwrap_err(),
            rustix::io::Errno::PERM
        );
        assert_eq!(
            rustix::fs::ftruncate(sealed.fd(), 0).unwrap_err(),
            rustix::io::Errno::PERM
        );
        // No writable shared mapping can be made any more.
        // SAFETY: the call is expected to fail; had it succeeded, the mapping would be
        // dropped unused at once.
        let err = unsafe { MmapOptions::new().len(10_000).map_mut(&sealed.fd()) }.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        // A peer's view: the same bytes.
        let theirs = Sealed::open(dup(sealed.fd()), 10_000).unwrap();
        assert_eq!(theirs.as_slice(), sealed.as_slice());
    }

    #[test]
    fn open_refuses_missing_seals() {
        for seals in [
            SealFlags::empty(),
            SealFlags::SHRINK | SealFlags::GROW,
            SealFlags::WRITE | SealFlags::SHRINK,
            SealFlags::WRITE | SealFlags::GROW,
            SealFlags::FUTURE_WRITE | SealFlags::SHRINK | SealFlags::GROW,
        ] {
            let err = Sealed::open(memfd(4096, seals), 4096).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{seals:?}");
            assert!(err.to_string().contains("not sealed"), "{err}");
        }
        Sealed::open(memfd(4096, READ_SEALS), 4096).unwrap();
    }

    #[test]
    fn open_refuses_a_size_other_than_the_frames() {
        for expected in [1, 4095, 4097, 1 << 30] {
            let err = Sealed::open(memfd(4096, READ_SEALS), expected).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{expected}");
            assert!(err.to_string().contains("4096 bytes"), "{err}");
        }
        for expected in [0, u64::MAX] {
            let err = Sealed::open(memfd(4096, READ_SEALS), expected).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{expected}");
        }
    }

    #[test]
    fn open_refuses_what_is_not_a_memfd() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        for fd in [r, w] {
            let err = Sealed::open(fd, 4096).unwrap_err();
            assert!(err.to_string().contains("not a memfd"), "{err}");
        }
        let (s, _t) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(Sealed::open(s.into(), 4096).is_err());
        let exe = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        let len = exe.metadata().unwrap().len();
        let err = Sealed::open(exe.into(), len).unwrap_err();
        assert!(err.to_string().contains("not a memfd"), "{err}");
    }

    /// A child forked while the buffer is being written does not get its writable
    /// mapping, so sealing succeeds while the child lives.
    #[test]
    fn a_fork_while_writing_does_not_block_the_seal() {
        let mut buf = Unsealed::create(8192).unwrap();
        buf.as_mut_slice()[0] = 1;
        // SAFETY: the child only sleeps (async-signal-safe) and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: as above.
            unsafe {
                libc::usleep(500_000);
                libc::_exit(0);
            }
        }
        let sealed = buf.seal();
        // SAFETY: reaping the child forked above.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        assert_eq!(sealed.unwrap().as_slice()[0], 1);
    }

    #[test]
    fn zero_length_is_refused() {
        assert_eq!(
            Unsealed::create(0).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
