//! Thin shim: the driver is `conduit::fuzz::blob_frame` (src/blob_fuzz.rs), built under `--cfg fuzzing`.
#![no_main]

/// Counts live bytes so the driver can assert its memory bounds.
#[global_allocator]
static ALLOC: conduit::fuzz::Counting = conduit::fuzz::Counting;

libfuzzer_sys::fuzz_target!(|data: &[u8]| conduit::fuzz::blob_frame(data));
