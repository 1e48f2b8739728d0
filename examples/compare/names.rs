//! The rows the comparison measures: conduit's backends, the peer crates and hand-written
//! baselines, and the hardware floor; and message sizes as people write them.

/// One measured transport. The order of [`Name::ALL`] is the order of the table and charts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Name {
    /// Two processes spinning on one shared cache line: the machine's own round trip.
    Floor,
    /// `Backend::Thread` (an anonymous `channel`), between two threads.
    Thread,
    /// crossbeam-channel `bounded(1024)`, between two threads: the Thread backend's peer.
    Crossbeam,
    /// `shm:PATH`, between two processes.
    Shm,
    /// `shm:PATH` with plain `Vec<u8>` messages, which serde encodes element by element.
    ShmVec,
    /// `unix:PATH` (`Backend::Socket`), between two processes.
    Unix,
    /// `unix:PATH` with plain `Vec<u8>` messages.
    UnixVec,
    /// `shm:PATH` with a sealed `conduit::Bytes` (a `BlobBuf`): its descriptor crosses.
    ShmSealed,
    /// `unix:PATH` with a sealed `conduit::Bytes`.
    UnixSealed,
    /// `tcp:127.0.0.1:PORT` (`Backend::Socket` over loopback), between two processes.
    Tcp,
    /// `zenoh:KEY` between two processes, each with conduit's default zenoh session
    /// (loopback only); measured in builds with the `zenoh` feature.
    #[cfg_attr(not(feature = "zenoh"), allow(dead_code))]
    Zenoh,
    /// `channel(Backend::Pipe)` handed to a child, between two processes.
    Pipe,
    /// Length-prefixed frames on a socketpair with plain system calls: no conduit.
    RawSocketpair,
    /// servo's ipc-channel, between two processes.
    IpcChannel,
    /// ipc-channel's `bytes_channel()`: the payload's bytes without serde.
    IpcBytes,
    /// ipc-channel's `IpcSharedMemory`: a memfd region per message, read in place.
    IpcShmem,
    /// Plain zenoh publish-subscribe between two processes, without conduit, configured as
    /// conduit's default: the engine's own cost under the `zenoh` row.
    #[cfg_attr(not(feature = "zenoh"), allow(dead_code))]
    ZenohRaw,
    /// Eclipse iceoryx2 publish-subscribe over shared memory, a spinning subscriber each
    /// way, between two processes.
    Iceoryx2,
    /// iceoryx2 with a waiting subscriber: it blocks on an event listener that the
    /// publisher notifies after each sample.
    Iceoryx2Wait,
}

/// What a row is, as written in the JSON `kind` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Backend,
    Peer,
    Floor,
}

impl Name {
    pub const ALL: &[Name] = &[
        Name::Floor,
        Name::Thread,
        Name::Crossbeam,
        Name::Shm,
        Name::ShmVec,
        Name::Unix,
        Name::UnixVec,
        Name::ShmSealed,
        Name::UnixSealed,
        Name::Tcp,
        #[cfg(feature = "zenoh")]
        Name::Zenoh,
        Name::Pipe,
        Name::RawSocketpair,
        Name::IpcChannel,
        Name::IpcBytes,
        Name::IpcShmem,
        #[cfg(feature = "zenoh")]
        Name::ZenohRaw,
        Name::Iceoryx2,
        Name::Iceoryx2Wait,
    ];

    /// The name on the command line, in the table and in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Name::Floor => "floor",
            Name::Thread => "thread",
            Name::Crossbeam => "crossbeam",
            Name::Shm => "shm",
            Name::ShmVec => "shm-vec",
            Name::Unix => "unix",
            Name::UnixVec => "unix-vec",
            Name::ShmSealed => "shm-sealed",
            Name::UnixSealed => "unix-sealed",
            Name::Tcp => "tcp",
            Name::Zenoh => "zenoh",
            Name::Pipe => "pipe",
            Name::RawSocketpair => "raw-socketpair",
            Name::IpcChannel => "ipc-channel",
            Name::IpcBytes => "ipc-bytes",
            Name::IpcShmem => "ipc-shmem",
            Name::ZenohRaw => "zenoh-raw",
            Name::Iceoryx2 => "iceoryx2",
            Name::Iceoryx2Wait => "iceoryx2-wait",
        }
    }

    pub fn parse(s: &str) -> Option<Name> {
        Name::ALL.iter().copied().find(|n| n.as_str() == s)
    }

    pub fn kind(self) -> Kind {
        match self {
            Name::Floor => Kind::Floor,
            Name::Thread | Name::Shm | Name::Unix | Name::Tcp | Name::Zenoh | Name::Pipe => {
                Kind::Backend
            }
            Name::ShmVec | Name::UnixVec | Name::ShmSealed | Name::UnixSealed => Kind::Backend,
            Name::Crossbeam | Name::RawSocketpair | Name::IpcChannel | Name::ZenohRaw => Kind::Peer,
            Name::IpcBytes | Name::IpcShmem | Name::Iceoryx2 | Name::Iceoryx2Wait => Kind::Peer,
        }
    }
}

impl Name {
    /// For a `Vec<u8>` row, the backend it runs on; `None` for every other row.
    pub fn vec_of(self) -> Option<Name> {
        match self {
            Name::ShmVec => Some(Name::Shm),
            Name::UnixVec => Some(Name::Unix),
            _ => None,
        }
    }

    /// For a sealed-buffer row, the backend it runs on; `None` for every other row.
    pub fn sealed_of(self) -> Option<Name> {
        match self {
            Name::ShmSealed => Some(Name::Shm),
            Name::UnixSealed => Some(Name::Unix),
            _ => None,
        }
    }

    /// For a row that sends its backend's messages another way (`Vec<u8>`, sealed), the
    /// backend; `None` for every other row.
    pub fn variant_of(self) -> Option<Name> {
        self.vec_of().or(self.sealed_of())
    }

    /// Whether this row is measured at `size`: the floor at 8 bytes only (a `u64`), the
    /// `Vec<u8>` rows from [`VEC_MIN_SIZE`] (below it they would repeat their backend's
    /// figures or differ by little, and each row costs time), the sealed rows from
    /// [`SEALED_MIN_SIZE`] (below it a sealed buffer is copied like any `Bytes`), every other
    /// row at every size.
    pub fn measures(self, size: usize) -> bool {
        match self {
            Name::Floor => size == 8,
            Name::ShmVec | Name::UnixVec => size >= VEC_MIN_SIZE,
            Name::ShmSealed | Name::UnixSealed => size >= SEALED_MIN_SIZE,
            _ => true,
        }
    }

    /// The sizes a default or quick run measures this row at unless `--backends` names it
    /// (or its group); `None` for every size. Every row costs about the same time at every
    /// size, so these variants of a peer run only where they differ most from it, which keeps
    /// the default run near its old length: the waiting iceoryx2 subscriber at 8 B (a
    /// wake-up against a spin) and 64 KiB; ipc-channel's byte paths at 64 KiB and 1 MiB,
    /// where serde and copies weigh most. `--full` measures them at every size.
    pub fn spot_sizes(self) -> Option<&'static [usize]> {
        match self {
            Name::Iceoryx2Wait => Some(&[8, 64 << 10]),
            Name::IpcBytes | Name::IpcShmem => Some(&[64 << 10, 1 << 20]),
            _ => None,
        }
    }

    /// Whether a run that did not ask for this row by name measures it at `size`.
    pub fn measures_unasked(self, size: usize) -> bool {
        self.measures(size) && self.spot_sizes().is_none_or(|s| s.contains(&size))
    }
}

/// The smallest size the `Vec<u8>` rows are measured at.
pub const VEC_MIN_SIZE: usize = 4 << 10;

/// The smallest size the sealed rows are measured at: conduit passes a sealed buffer as its
/// descriptor from 64 KiB.
pub const SEALED_MIN_SIZE: usize = 64 << 10;

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Backend => "backend",
            Kind::Peer => "peer",
            Kind::Floor => "floor",
        }
    }
}

/// The largest message size the comparison accepts: conduit's default limit
/// (`DEFAULT_MAX_MESSAGE_SIZE`), which the conduit rows raise by a little for the length
/// prefix (see `workloads::options`).
pub const MAX_SIZE: usize = 64 << 20;

/// Parses `8`, `64B`, `4KiB`, `4k`, `1MiB`, `1M` (binary multiples, any case) into bytes.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let scale: usize = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        _ => {
            return Err(format!(
                "bad size {s:?}: use bytes, KiB or MiB, e.g. 8,64,4KiB,1MiB"
            ))
        }
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("bad size {s:?}: use bytes, KiB or MiB, e.g. 8,64,4KiB,1MiB"))?;
    match n.checked_mul(scale) {
        Some(bytes @ 1..=MAX_SIZE) => Ok(bytes),
        _ => Err(format!("size {s:?} is out of range: 1 B to 64 MiB")),
    }
}

/// `8 B`, `64 B`, `4 KiB`, `1 MiB`, `1.5 KiB`.
pub fn format_size(bytes: usize) -> String {
    let (value, unit) = match bytes {
        b if b >= 1 << 20 => (b as f64 / (1 << 20) as f64, "MiB"),
        b if b >= 1 << 10 => (b as f64 / (1 << 10) as f64, "KiB"),
        b => return format!("{b} B"),
    };
    if value.fract() == 0.0 {
        format!("{value} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}
