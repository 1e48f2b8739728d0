//! The command line: flags, their defaults, and the usage text.

use crate::names::{format_size, parse_size, Name};

pub const USAGE: &str = "\
usage: cargo run --release --example compare -- [FLAGS]

Measures every conduit backend against its peers and the hardware floor, prints one table,
and writes target/conduit-report/{results.json,latency.svg,throughput.svg}.

  --backends LIST  comma-separated rows to measure (default: all):
                     backends  thread, shm, unix, tcp, pipe; zenoh in a build with
                               the zenoh feature (--features zenoh)
                     peers     crossbeam, raw-socketpair,
                               ipc-channel (serde messages),
                               ipc-bytes (ipc-channel's bytes_channel: the
                               bytes as they are, no serde),
                               ipc-shmem (ipc-channel's IpcSharedMemory: a
                               memfd region per message, read in place),
                               iceoryx2 (publish-subscribe over shared memory,
                               the payload written into the loaned sample, a
                               spinning subscriber each way),
                               iceoryx2-wait (the same, the subscriber blocking
                               on an iceoryx2 event listener that the publisher
                               notifies after each sample),
                               zenoh-raw (plain zenoh publish-subscribe, no
                               conduit; in a build with the zenoh feature)
                     vec       shm-vec, unix-vec: shm and unix sending a plain
                               Vec<u8>, which serde encodes byte by byte (from 4 KiB)
                     sealed    shm-sealed, unix-sealed: shm and unix sending a
                               sealed conduit::Bytes (a BlobBuf), which crosses as
                               its file descriptor, not its bytes (from 64 KiB)
                     floor     two processes spinning on one shared cache line,
                               measured first and last, the lower kept
                   also `all`, `backends`, `peers`, `vec`, `sealed`. The ratio columns need floor
                   and ipc-channel; they are blank without them. Without this flag a
                   default or quick run measures ipc-bytes and ipc-shmem at 64 KiB and
                   1 MiB only, iceoryx2-wait at 8 B and 64 KiB only; --full, or naming
                   them here (also through `all` or `peers`), measures them at every size.
  --sizes LIST     comma-separated message sizes, e.g. 8,64,4KiB,1MiB (1 B to 64 MiB;
                   default 8,64,4KiB,64KiB,1MiB). 8 B is a u64 (its 8 bytes in the rows
                   that send bytes: raw-socketpair, ipc-bytes, ipc-shmem, iceoryx2,
                   iceoryx2-wait); every other size is a conduit::Bytes, encoded as one
                   byte string (a length, then one copy), except in the vec rows. At
                   64 MiB conduit's rows raise their size limit (64 MiB by default) by a
                   few bytes for the length.
  --quick          a smoke run: shorter measurements (about 15 s)
  --full           a longer, finer run: more sizes (8 B to 64 MiB), longer measurements
                   (about 7 minutes); the default run takes under a minute
  --json-only      print results.json to stdout instead of the table, and draw no charts
  -h, --help       this text

What is measured, per row and size (a fresh pair of threads or processes for each):
  rtt         ping-pong round trips; p50_ns and p99_ns are percentiles of per-round-trip
              times. A round trip shorter than 50 clock reads (about 1 us) is timed in
              batches of a few; the percentiles are then of batch averages, the JSON's
              `batch` says how many, and the table marks the row with *.
              msgs_per_s and bytes_per_s are null.
  throughput  one-way streaming from the peer to this process, sender and receiver in
              parallel; msgs_per_s and bytes_per_s (payload bytes) are the median of three
              timed runs; p50_ns and p99_ns are null (timing each message would slow it).
Thread rows move values (a Bytes for blobs): no bytes are copied, so their bytes/s is
the channel's rate times the size, not a copy rate.

results.json is an array with one object per row and workload: name, kind
(backend|peer|floor), workload (rtt|throughput), size (bytes), p50_ns, p99_ns, msgs_per_s,
bytes_per_s, batch, samples, error (null, or why the row has no figures).

Exit status: 0 when every row was measured, 1 when some row failed, 2 for a bad flag.";

/// How long and how wide a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Quick,
    Default,
    Full,
}

impl Mode {
    pub fn sizes(self) -> Vec<usize> {
        match self {
            Mode::Quick | Mode::Default => vec![8, 64, 4 << 10, 64 << 10, 1 << 20],
            Mode::Full => vec![
                8,
                64,
                512,
                4 << 10,
                16 << 10,
                64 << 10,
                256 << 10,
                1 << 20,
                4 << 20,
                16 << 20,
                64 << 20,
            ],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Quick => "quick",
            Mode::Default => "default",
            Mode::Full => "full",
        }
    }
}

/// A run, as the flags ask for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub names: Vec<Name>,
    pub sizes: Vec<usize>,
    /// Whether every row is measured at every size: `--backends` chose the rows, or
    /// `--full`. Otherwise rows with [`Name::spot_sizes`] run at those sizes only.
    pub every_size: bool,
    pub mode: Mode,
    pub json_only: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Run(Config),
    Help,
}

/// A refused command line: the exit status and what to print on stderr.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u8,
    pub message: String,
}

/// Parses the arguments (without the program name); a refusal carries exit status 2 and a
/// one-line error followed by the usage.
pub fn parse_or_usage(args: &[String]) -> Result<Parsed, Refusal> {
    parse(args).map_err(|e| Refusal {
        status: 2,
        message: format!("compare: {e}\n\n{USAGE}"),
    })
}

/// Parses the arguments; the error is one line.
pub fn parse(args: &[String]) -> Result<Parsed, String> {
    let (mut names, mut sizes, mut mode, mut json_only) = (None, None, None, false);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        // `--flag=value` and `--flag value` alike.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or(format!("{flag} needs a value"))
        };
        let takes_no_value = |v: &Option<String>| match v {
            Some(_) => Err(format!("{flag} takes no value")),
            None => Ok(()),
        };
        match flag {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--backends" => names = Some(parse_names(&value()?)?),
            "--sizes" => sizes = Some(parse_sizes(&value()?)?),
            "--quick" | "--full" => {
                takes_no_value(&inline)?;
                let m = if flag == "--quick" {
                    Mode::Quick
                } else {
                    Mode::Full
                };
                if mode.is_some_and(|old| old != m) {
                    return Err("--quick and --full exclude each other".into());
                }
                mode = Some(m);
            }
            "--json-only" => {
                takes_no_value(&inline)?;
                json_only = true;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let mode = mode.unwrap_or(Mode::Default);
    Ok(Parsed::Run(Config {
        every_size: names.is_some() || mode == Mode::Full,
        names: names.unwrap_or_else(|| Name::ALL.to_vec()),
        sizes: sizes.unwrap_or_else(|| mode.sizes()),
        mode,
        json_only,
    }))
}

/// `shm,unix`, `all`, `backends`, `peers`: deduplicated, in table order.
pub fn parse_names(list: &str) -> Result<Vec<Name>, String> {
    let mut names = Vec::new();
    for word in list.split(',').map(str::trim) {
        match word {
            "all" => names.extend(Name::ALL.iter().copied()),
            "backends" | "peers" => names.extend(Name::ALL.iter().copied().filter(|n| {
                (n.kind() == crate::names::Kind::Backend) == (word == "backends")
                    && n.kind() != crate::names::Kind::Floor
                    && n.variant_of().is_none()
            })),
            "vec" => names.extend(Name::ALL.iter().copied().filter(|n| n.vec_of().is_some())),
            "sealed" => names.extend(
                Name::ALL
                    .iter()
                    .copied()
                    .filter(|n| n.sealed_of().is_some()),
            ),
            _ => match Name::parse(word) {
                Some(n) => names.push(n),
                None => {
                    let known: Vec<_> = Name::ALL.iter().map(|n| n.as_str()).collect();
                    return Err(format!(
                        "unknown backend {word:?} in --backends: choose from {}",
                        known.join(", ")
                    ));
                }
            },
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// `8,64,4KiB,1MiB`: deduplicated, smallest first.
pub fn parse_sizes(list: &str) -> Result<Vec<usize>, String> {
    let mut sizes = list
        .split(',')
        .map(parse_size)
        .collect::<Result<Vec<_>, _>>()?;
    sizes.sort_unstable();
    sizes.dedup();
    Ok(sizes)
}

/// The sizes as the table header says them: `8 B, 64 B, 4 KiB`.
pub fn describe_sizes(sizes: &[usize]) -> String {
    let sizes: Vec<String> = sizes.iter().map(|&s| format_size(s)).collect();
    sizes.join(", ")
}
