//! The atomics shim: std's atomics normally, loom's under `cfg(all(test, loom))` so the ring
//! core's model tests explore every interleaving (tokio's `src/loom/` pattern).

#[cfg(all(test, loom))]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

#[cfg(not(all(test, loom)))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
