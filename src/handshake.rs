//! The hello exchanged at the start of every cross-process connection.
//!
//! The connecting side sends a [`Hello`]; the listening side answers with one whose
//! `status` says whether it accepts. Both have the same layout, little-endian:
//!
//! ```text
//! magic "CNDT" | version u16 | status u8 | reserved u8 | fingerprint u64 | limit u32 |
//! name_len u16 | name (UTF-8, at most 512 bytes)
//! ```
//!
//! The magic and version stay at the same offsets in every protocol version, so two
//! versions can always tell each other apart.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::sys::{self, StreamKind};
use crate::Error;

/// First bytes of every conduit connection.
pub(crate) const MAGIC: [u8; 4] = *b"CNDT";
/// The wire protocol version this build speaks.
pub(crate) const VERSION: u16 = 3;
/// Fixed part of a hello, before the name.
pub(crate) const FIXED: usize = 22;
/// Longest type description carried (longer ones are cut at a character boundary).
pub(crate) const NAME_MAX: usize = 512;
/// The most a hello can take on the wire.
pub(crate) const MAX_LEN: usize = FIXED + NAME_MAX;
/// How long either side waits for the other's hello.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// What the listening side answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Status {
    /// A request (connecting side), or accepted (listening side).
    Ok = 0,
    /// Protocol versions differ.
    VersionMismatch = 1,
    /// Message types or codecs differ.
    TypeMismatch = 2,
    /// The connecting process runs as another user.
    Refused = 3,
}

/// One hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) version: u16,
    pub(crate) status: Status,
    pub(crate) fingerprint: u64,
    /// The sender's or receiver's message size limit.
    pub(crate) limit: u32,
    /// The human-readable type description behind the fingerprint.
    pub(crate) name: String,
}

/// Why bytes are not a valid hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HelloError {
    /// Not a conduit peer.
    BadMagic,
    /// A version we cannot parse further.
    Version(u16),
    /// A field out of range.
    Malformed(&'static str),
}

impl std::fmt::Display for HelloError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HelloError::BadMagic => f.write_str("the peer is not a conduit endpoint (bad magic)"),
            HelloError::Version(v) => write!(f, "the peer speaks protocol version {v}"),
            HelloError::Malformed(what) => write!(f, "malformed hello: {what}"),
        }
    }
}

impl Hello {
    /// A hello for this build, describing message type `T`.
    pub(crate) fn new(status: Status, fingerprint: u64, limit: usize, name: &str) -> Self {
        let mut cut = name.len().min(NAME_MAX);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        Hello {
            version: VERSION,
            status,
            fingerprint,
            limit: limit.min(u32::MAX as usize) as u32,
            name: name[..cut].to_string(),
        }
    }

    /// The request (or acceptance) of a side exchanging `T` with size limit `limit`.
    pub(crate) fn for_type<T>(limit: usize) -> Self {
        Hello::new(
            Status::Ok,
            crate::codec::fingerprint::<T>(),
            limit,
            &crate::codec::describe::<T>(),
        )
    }

    /// The wire bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED + self.name.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.push(self.status as u8);
        out.push(0);
        out.extend_from_slice(&self.fingerprint.to_le_bytes());
        out.extend_from_slice(&self.limit.to_le_bytes());
        out.extend_from_slice(&(self.name.len() as u16).to_le_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out
    }

    /// Parses a hello from the start of `bytes`: `Ok(None)` if more bytes are needed, else
    /// the hello and how many bytes it took. A version other than ours is reported as
    /// [`HelloError::Version`] as soon as the version field is in.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Option<(Hello, usize)>, HelloError> {
        let magic_len = bytes.len().min(4);
        if bytes[..magic_len] != MAGIC[..magic_len] {
            return Err(HelloError::BadMagic);
        }
        if bytes.len() < 6 {
            return Ok(None);
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != VERSION {
            return Err(HelloError::Version(version));
        }
        if bytes.len() < FIXED {
            return Ok(None);
        }
        let status = match bytes[6] {
            0 => Status::Ok,
            1 => Status::VersionMismatch,
            2 => Status::TypeMismatch,
            3 => Status::Refused,
            _ => return Err(HelloError::Malformed("unknown status")),
        };
        if bytes[7] != 0 {
            return Err(HelloError::Malformed("reserved byte is not zero"));
        }
        let fingerprint = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let limit = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
        let name_len = usize::from(u16::from_le_bytes([bytes[20], bytes[21]]));
        if name_len > NAME_MAX {
            return Err(HelloError::Malformed("type name too long"));
        }
        if bytes.len() < FIXED + name_len {
            return Ok(None);
        }
        let name = std::str::from_utf8(&bytes[FIXED..FIXED + name_len])
            .map_err(|_| HelloError::Malformed("type name is not UTF-8"))?
            .to_string();
        let hello = Hello {
            version,
            status,
            fingerprint,
            limit,
            name,
        };
        Ok(Some((hello, FIXED + name_len)))
    }
}

/// The connecting side: sends `mine`, waits for the answer, and turns a refusal into an
/// [`Error`] a person understands. Returns the receiver's hello (its size limit) and the
/// descriptors that came with it: at most `max_fds` are accepted (shared-memory senders
/// receive their ring this way); more, or any where none are expected, is a protocol error.
pub(crate) fn client(
    addr: &str,
    fd: BorrowedFd<'_>,
    kind: StreamKind,
    mine: &Hello,
    max_fds: usize,
) -> Result<(Hello, Vec<OwnedFd>), Error> {
    let deadline = Instant::now() + TIMEOUT;
    let timed_out = || {
        Error::protocol(
            addr,
            "the receiver did not answer the handshake within 10 s",
        )
    };
    let io_err = |e: io::Error| match e.kind() {
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => Error::protocol(
            addr,
            "the receiver closed the connection during the handshake",
        ),
        _ => Error::io(format!("handshaking with {addr:?}"), e),
    };
    let bytes = mine.encode();
    match sys::write_all_until(
        fd,
        kind,
        &mut &mut [io::IoSlice::new(&bytes)][..],
        Some(deadline),
    ) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(timed_out()),
        Err(e) => return Err(io_err(e)),
    }
    let mut buf = [0u8; MAX_LEN];
    let mut got = 0;
    let mut fds = Vec::new();
    let theirs = loop {
        match Hello::parse(&buf[..got]) {
            Ok(Some((hello, _))) => break hello,
            Ok(None) => {}
            Err(HelloError::Version(v)) => {
                return Err(Error::VersionMismatch {
                    addr: addr.to_string(),
                    local: VERSION,
                    remote: v,
                })
            }
            Err(e) => return Err(Error::protocol(addr, e.to_string())),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if !sys::wait_readable(fd, Some(left)).map_err(io_err)? {
            return Err(timed_out());
        }
        let received = if kind == StreamKind::Unix {
            sys::fdpass::recv_with_fds(fd, &mut buf[got..], max_fds).map(|(n, more)| {
                fds.extend(more);
                n
            })
        } else {
            sys::read(fd.as_fd(), &mut buf[got..])
        };
        match received {
            Ok(0) => {
                return Err(Error::protocol(
                    addr,
                    "the receiver closed the connection during the handshake",
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(io_err(e)),
        }
    };
    if fds.len() > max_fds {
        return Err(Error::protocol(
            addr,
            "the receiver sent unexpected descriptors",
        ));
    }
    let refused = "the receiver accepts connections only from its own user";
    verdict(addr, mine, theirs, refused).map(|theirs| (theirs, fds))
}

/// The receiver's answer `theirs` to our hello `mine`, as an error a person understands
/// unless it accepts us; `refused` says why a refusal happens on this transport.
pub(crate) fn verdict(
    addr: &str,
    mine: &Hello,
    theirs: Hello,
    refused: &str,
) -> Result<Hello, Error> {
    match theirs.status {
        Status::Ok if theirs.fingerprint == mine.fingerprint => Ok(theirs),
        Status::Ok | Status::TypeMismatch => Err(Error::TypeMismatch {
            addr: addr.to_string(),
            local: mine.name.clone(),
            remote: theirs.name,
        }),
        Status::VersionMismatch => Err(Error::VersionMismatch {
            addr: addr.to_string(),
            local: VERSION,
            remote: theirs.version,
        }),
        Status::Refused => Err(Error::PermissionDenied {
            addr: addr.to_string(),
            reason: refused.to_string(),
        }),
    }
}

/// The listening side's verdict on a request: the answer to send, and whether to keep the
/// connection.
pub(crate) fn answer(request: &Hello, mine: &Hello) -> (Hello, bool) {
    let status = if request.status == Status::Ok && request.fingerprint == mine.fingerprint {
        Status::Ok
    } else {
        Status::TypeMismatch
    };
    let mut reply = mine.clone();
    reply.status = status;
    (reply, status == Status::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_every_length() {
        let h = Hello::new(
            Status::Ok,
            0xdead_beef,
            1 << 26,
            "u32 encoded with postcard-1",
        );
        let bytes = h.encode();
        for cut in 0..bytes.len() {
            assert_eq!(Hello::parse(&bytes[..cut]), Ok(None), "cut {cut}");
        }
        assert_eq!(Hello::parse(&bytes), Ok(Some((h, bytes.len()))));
    }

    #[test]
    fn refuses_garbage_and_other_versions() {
        assert_eq!(Hello::parse(b"GET / HTTP/1.1"), Err(HelloError::BadMagic));
        assert_eq!(Hello::parse(b"CX"), Err(HelloError::BadMagic));
        let mut h = Hello::new(Status::Ok, 1, 1, "x").encode();
        h[4] = 9;
        assert_eq!(Hello::parse(&h), Err(HelloError::Version(9)));
        let mut h = Hello::new(Status::Ok, 1, 1, "x").encode();
        h[20] = 0xff;
        h[21] = 0xff;
        assert!(matches!(Hello::parse(&h), Err(HelloError::Malformed(_))));
    }

    #[test]
    fn long_names_are_cut_on_a_char_boundary() {
        let name = "é".repeat(NAME_MAX);
        let h = Hello::new(Status::Ok, 1, 1, &name);
        assert!(h.name.len() <= NAME_MAX);
        assert!(Hello::parse(&h.encode()).unwrap().is_some());
    }

    #[test]
    fn answer_checks_fingerprint() {
        let mine = Hello::new(Status::Ok, 1, 10, "a");
        let (reply, keep) = answer(&Hello::new(Status::Ok, 2, 10, "b"), &mine);
        assert!(!keep);
        assert_eq!(reply.status, Status::TypeMismatch);
        let (reply, keep) = answer(&Hello::new(Status::Ok, 1, 10, "a"), &mine);
        assert!(keep);
        assert_eq!(reply.status, Status::Ok);
    }
}
