//! Replays the committed fuzz inputs through the property drivers on every `cargo test`:
//! each file under `fuzz/regressions/<target>/` (inputs that once broke a property) and each
//! seed `fuzz/corpus/<target>/seed-*`. A driver panics on an input that breaks one of its
//! properties, so a regression that comes back fails this test, naming the file. Inputs that
//! libFuzzer adds to `fuzz/corpus/` during a local run (git ignores them) are not replayed.

use std::path::Path;
use std::time::Instant;

use crate::fuzz_support::inputs;

/// A property driver: panics on an input that breaks one of its properties.
type Driver = fn(&[u8]);

/// Every fuzz target, by the name of its directories under `fuzz/`, and its driver.
const TARGETS: &[(&str, Driver)] = &[
    ("blob_frame", crate::blob_fuzz::blob_frame),
    ("codec", crate::codec_fuzz::codec),
    ("frame_decode", crate::frame_fuzz::frame_decode),
    ("handshake", crate::handshake_fuzz::handshake),
    ("hostile_ring", crate::ring::fuzz_hostile::hostile_ring),
    ("ring_ops", crate::ring::fuzz_ops::ring_ops),
];

#[test]
fn committed_fuzz_inputs_keep_their_properties() {
    let start = Instant::now();
    let (mut regressions, mut seeds) = (0, 0);
    let mut failed = Vec::new();
    for &(target, driver) in TARGETS {
        let found = inputs(&format!("regressions/{target}"), "");
        regressions += found.len();
        let corpus = inputs(&format!("corpus/{target}"), "seed-");
        assert!(!corpus.is_empty(), "no seeds in fuzz/corpus/{target}/");
        seeds += corpus.len();
        for (path, data) in found.into_iter().chain(corpus) {
            // The panic's message is printed as it happens; the paths are listed at the end.
            if std::panic::catch_unwind(|| driver(&data)).is_err() {
                failed.push(path);
            }
        }
    }
    eprintln!(
        "replayed {regressions} regressions and {seeds} seeds in {:?}",
        start.elapsed()
    );
    assert!(regressions > 0, "no files under fuzz/regressions/");
    assert!(
        failed.is_empty(),
        "committed fuzz inputs that break their driver's properties:\n{}",
        failed.join("\n")
    );
}

/// The names under `fuzz/<dir>` that are directories (or, with `ext`, files ending in it,
/// without it).
fn names(dir: &str, ext: Option<&str>) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            match ext {
                None => p.is_dir().then_some(name),
                Some(ext) => name.strip_suffix(ext).map(str::to_string),
            }
        })
        .collect();
    names.sort();
    names
}

/// A new target, or inputs committed for a target under another name, must not go
/// unreplayed: every target in `fuzz/` has a driver here, and every driver a target.
#[test]
fn every_fuzz_target_is_replayed() {
    let known: Vec<&str> = TARGETS.iter().map(|&(name, _)| name).collect();
    let targets = names("fuzz_targets", Some(".rs"));
    assert_eq!(targets, known, "fuzz/fuzz_targets/ and TARGETS differ");
    for dir in ["corpus", "regressions"] {
        for name in names(dir, None) {
            assert!(
                known.contains(&name.as_str()),
                "fuzz/{dir}/{name}/ belongs to no fuzz target"
            );
        }
    }
}
