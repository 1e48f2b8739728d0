//! Inputs for the drivers' unit tests: the committed fuzz files (seeds, regressions) and
//! pseudo-random byte strings, so `cargo test` runs the drivers without cargo-fuzz.

use super::Rng;

/// The files under `fuzz/<dir>` whose names start with `prefix`.
pub(super) fn inputs(dir: &str, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    files
}

/// `count` pseudo-random inputs shorter than `max_len` bytes, the same for the same `seed`.
pub(super) fn random_inputs(
    seed: u64,
    count: usize,
    max_len: usize,
) -> impl Iterator<Item = Vec<u8>> {
    let mut rng = Rng::new(seed);
    (0..count).map(move |_| {
        let len = rng.next() as usize % max_len;
        (0..len).map(|_| rng.next() as u8).collect()
    })
}
