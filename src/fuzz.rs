//! Fuzz drivers, compiled only under `--cfg fuzzing` (cargo-fuzz sets it). The targets in
//! `fuzz/fuzz_targets/` are one-line shims over these functions (tokio's fuzz pattern), so
//! the drivers see the crate's private parsers. Each driver decodes its own input (no
//! `arbitrary`), never panics on any input except through its assertions of real
//! properties, and checks memory through [`Counting`] when the target installs it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::codec;
use crate::frame::{FrameError, FrameReader, FLAG_LAST, HEADER, PIECE_MAX};
use crate::handshake::{answer, Hello, HelloError, Status, FIXED, MAGIC, MAX_LEN, VERSION};

mod hostile_ring;
mod ring;
mod ring_ops;
#[cfg(test)]
mod test_inputs;
pub use self::hostile_ring::hostile_ring;
pub use self::ring_ops::ring_ops;

// ---------------------------------------------------------------------------------------
// Input decoding and memory accounting shared by the drivers.

/// Reads numbers and bytes off the fuzz input; past its end everything reads as zero.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Input { data }
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub(crate) fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
    pub(crate) fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    pub(crate) fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }
    pub(crate) fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }
    pub(crate) fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
}

/// A size limit picked by one input byte: the edges that matter to the parsers.
pub(crate) fn pick_limit(b: u8) -> usize {
    const LIMITS: [usize; 8] = [0, 1, 7, 100, 4096, PIECE_MAX, PIECE_MAX + 1, usize::MAX];
    LIMITS[usize::from(b) % LIMITS.len()]
}

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn count_alloc(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

/// The system allocator, counting live bytes and their peak. Fuzz targets install it with
/// `#[global_allocator]`; the drivers then assert how much a parser may hold at once.
/// Without it every bound below holds trivially (nothing is counted).
pub struct Counting;

// SAFETY: every call is forwarded unchanged to `System`; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count_alloc(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc_zeroed` is passed on as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count_alloc(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            count_alloc(new_size);
        }
        p
    }
}

/// Measures the most memory held at once from its creation on, above what was live then.
pub(crate) struct Watch {
    base: usize,
}

impl Watch {
    pub(crate) fn start() -> Watch {
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        Watch { base }
    }
    pub(crate) fn peak(&self) -> usize {
        PEAK.load(Ordering::Relaxed).saturating_sub(self.base)
    }
}

/// A small xorshift generator, seeded from the input, for split points and fill bytes.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

// ---------------------------------------------------------------------------------------
// frame_decode

/// What a whole stream means, parsed in one go by the simplest reading of the framing rules:
/// the messages, the error that ends it (if any) and whether an incomplete message is left.
fn reference_frames(stream: &[u8], limit: usize) -> (Vec<Vec<u8>>, Option<FrameError>, bool) {
    let (mut msgs, mut partial, mut pos) = (Vec::new(), Vec::new(), 0);
    let err = loop {
        let rest = &stream[pos..];
        if rest.len() < HEADER {
            break None;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let flags = rest[4];
        if flags & !FLAG_LAST != 0 {
            break Some(FrameError::UnknownFlags(flags));
        }
        if len as usize > PIECE_MAX {
            break Some(FrameError::PieceTooLong(len));
        }
        let (len, last) = (len as usize, flags == FLAG_LAST);
        if len == 0 && !last {
            break Some(FrameError::EmptyPiece);
        }
        let total = partial.len() + len;
        if total > limit {
            break Some(FrameError::TooLarge {
                at_least: total,
                limit,
            });
        }
        if rest.len() < HEADER + len {
            break None;
        }
        partial.extend_from_slice(&rest[HEADER..HEADER + len]);
        pos += HEADER + len;
        if last {
            msgs.push(std::mem::take(&mut partial));
        }
    };
    (msgs, err, pos < stream.len() || !partial.is_empty())
}

/// Feeds `data` to a [`FrameReader`] in chunks whose sizes derive from the input, as a
/// socket would deliver them. Checks: the messages and the final error equal those of a
/// one-go reference parse (so the split points change nothing); no message exceeds the
/// limit; the reader holds at most its fixed buffer, one piece reserved ahead, and twice the
/// bytes it was given (and twice the limit), however the lengths lie. Bytes go where the
/// reader asks: its buffer, or straight into a large piece's assembly (`direct`).
pub fn frame_decode(data: &[u8]) {
    let mut input = Input::new(data);
    let limit = pick_limit(input.u8());
    let mut rng = Rng::new(u64::from(input.u32()));
    let stream = input.bytes(usize::MAX);

    let (want_msgs, want_err, want_mid) = reference_frames(stream, limit);
    let mut expected = want_msgs.iter();
    let watch = Watch::start();
    let mut reader = FrameReader::new(limit);
    let buf_size = 2 * (HEADER + PIECE_MAX);
    let mut pos = 0;
    let err = 'feed: loop {
        loop {
            match reader.next_message() {
                Ok(Some(m)) => {
                    assert!(m.len() <= limit, "a message of {} over {limit}", m.len());
                    let want = expected.next().expect("the reader made up a message");
                    assert_eq!(
                        m,
                        &want[..],
                        "the reader's message differs from the stream's"
                    );
                }
                Ok(None) => break,
                Err(e) => break 'feed Some(e),
            }
        }
        let bound = buf_size + PIECE_MAX + 2 * pos.min(limit) + 64;
        assert!(
            watch.peak() <= bound,
            "reader holds {} > {bound}",
            watch.peak()
        );
        if pos == stream.len() {
            break None;
        }
        let r = rng.next();
        let want = match r % 4 {
            0 => 1 + (r >> 8) as usize % 8,
            1 => 1 + (r >> 8) as usize % 300,
            2 => 1 + (r >> 8) as usize % 70_000,
            _ => usize::MAX,
        };
        if let Some((assembly, max)) = reader.direct() {
            assert!(max > 0, "direct() must never ask for nothing");
            let n = want.min(max).min(stream.len() - pos);
            assembly.extend_from_slice(&stream[pos..pos + n]);
            reader.appended(n);
            pos += n;
            continue;
        }
        let spare = reader.spare();
        assert!(!spare.is_empty(), "spare() must never be empty");
        let n = want.min(spare.len()).min(stream.len() - pos);
        spare[..n].copy_from_slice(&stream[pos..pos + n]);
        reader.filled(n);
        pos += n;
    };
    assert_eq!(
        err, want_err,
        "the error depends on where the stream was split"
    );
    assert!(expected.next().is_none(), "the reader missed messages");
    if err.is_none() {
        assert_eq!(reader.mid_message(), want_mid, "mid_message() is wrong");
    }
}

// ---------------------------------------------------------------------------------------
// codec

/// A struct with nested options, vectors and an enum, as serde sees it (a tuple is encoded
/// like a struct; `Result` is an enum with two newtype variants).
type Nested = (
    Option<u32>,
    Vec<(Option<Vec<u8>>, bool)>,
    Result<u16, (i64, String)>,
    Option<Option<char>>,
);

fn round_trip<T>(bytes: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let Ok(value) = codec::decode::<T>(bytes) else {
        return;
    };
    let mut again = Vec::new();
    codec::encode_into(&value, &mut again).expect("a decoded value encodes");
    assert!(
        again.len() <= bytes.len(),
        "re-encoding grew from {} to {} bytes",
        bytes.len(),
        again.len()
    );
    let back: T = codec::decode(&again).expect("a re-encoded value decodes");
    assert_eq!(back, value, "decode(encode(v)) != v");
}

/// Decodes the input as one of a handful of message types (picked by the first byte), with
/// the size limit applied first as the framing would. Whatever decodes re-encodes to no more
/// bytes and decodes to an equal value; decoding holds no more than a bounded amount.
pub fn codec(data: &[u8]) {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let limit = pick_limit(pick >> 3);
    if bytes.len() > limit {
        return;
    }
    let watch = Watch::start();
    match pick % 6 {
        0 => round_trip::<u64>(bytes),
        1 => round_trip::<String>(bytes),
        2 => round_trip::<Vec<u8>>(bytes),
        3 => round_trip::<Nested>(bytes),
        4 => round_trip::<(u32, String)>(bytes),
        _ => round_trip::<Vec<Vec<u16>>>(bytes),
    }
    // serde preallocates at most 1 MiB per sequence on a length it cannot trust yet.
    let bound = 16 * bytes.len() + (2 << 20);
    assert!(
        watch.peak() <= bound,
        "decoding held {} > {bound}",
        watch.peak()
    );
}

// ---------------------------------------------------------------------------------------
// handshake

/// Parses the input as a hello. An error must be the right one for the bytes; "need more"
/// only for a strict prefix of a hello; an accepted hello re-encodes to exactly the bytes it
/// took, and every shorter prefix asks for more. The rest of the input describes the
/// listener's own hello: `answer` keeps the connection only for an `Ok` request with the
/// same fingerprint, and its reply parses back to itself.
pub fn handshake(data: &[u8]) {
    let parsed = Hello::parse(data);
    let magic_ok = data[..data.len().min(4)] == MAGIC[..data.len().min(4)];
    match &parsed {
        Err(HelloError::BadMagic) => assert!(!magic_ok, "good magic refused"),
        Err(HelloError::Version(v)) => {
            assert!(magic_ok && data.len() >= 6 && *v != VERSION && data[4..6] == v.to_le_bytes())
        }
        Err(HelloError::Malformed(_)) => assert!(magic_ok && data.len() >= FIXED),
        Ok(None) => assert!(
            magic_ok && data.len() < MAX_LEN,
            "need more after {} bytes",
            data.len()
        ),
        Ok(Some((hello, n))) => {
            assert!(*n <= data.len() && *n <= MAX_LEN);
            assert_eq!(
                hello.encode(),
                &data[..*n],
                "accepted bytes that do not re-encode"
            );
            for cut in 0..*n {
                assert_eq!(
                    Hello::parse(&data[..cut]),
                    Ok(None),
                    "prefix {cut} of a hello"
                );
            }
        }
    }
    let Ok(Some((request, n))) = parsed else {
        return;
    };
    let mut rest = Input::new(&data[n..]);
    let flags = rest.u8();
    let fingerprint = if flags & 1 != 0 {
        request.fingerprint
    } else {
        codec::fingerprint::<u32>() ^ u64::from(flags >> 1)
    };
    let limit = rest.u32() as usize;
    let name = String::from_utf8_lossy(rest.bytes(usize::MAX)).into_owned();
    let mine = Hello::new(Status::Ok, fingerprint, limit, &name);
    let (reply, keep) = answer(&request, &mine);
    let same = request.status == Status::Ok && request.fingerprint == mine.fingerprint;
    assert_eq!(
        keep, same,
        "answer kept a connection it should not (or refused a good one)"
    );
    let want_status = if keep {
        Status::Ok
    } else {
        Status::TypeMismatch
    };
    assert_eq!(reply.status, want_status);
    assert_eq!(
        (reply.fingerprint, reply.limit, &reply.name),
        (mine.fingerprint, mine.limit, &mine.name)
    );
    let bytes = reply.encode();
    assert_eq!(
        Hello::parse(&bytes),
        Ok(Some((reply, bytes.len()))),
        "a reply must parse"
    );
}
