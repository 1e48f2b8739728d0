//! The lock-free single-producer single-consumer frame ring that carries the shared-memory
//! backend: `header.rs` is the shared control block, `core.rs` the frame format and raw access to a
//! ring, `producer.rs` and `consumer.rs` its two sides.
//! Pure logic over raw memory and the `sync` shim's atomics: no allocation on the producer
//! side, no system calls — the part loom model-checks and Miri runs.

mod consumer;
pub(crate) mod core;
pub(crate) mod header;
mod producer;

#[cfg(test)]
mod tests;

#[cfg(all(test, loom))]
mod loom_tests;

#[cfg(all(test, loom))]
mod loom_readiness;

// The property drivers (fuzz targets `hostile_ring` and `ring_ops`) and what they share.
#[cfg(any(test, fuzzing))]
mod fuzz_common;
#[cfg(any(test, fuzzing))]
pub(crate) mod fuzz_hostile;
#[cfg(any(test, fuzzing))]
pub(crate) mod fuzz_ops;

#[cfg(any(test, fuzzing))]
pub(crate) use self::heap::HeapRing;

/// A ring over heap memory, for unit tests, Miri, loom models and the property drivers.
#[cfg(any(test, fuzzing))]
mod heap {
    use std::ptr::NonNull;

    use super::core::Ring;
    use super::header::RingHeader;

    /// Owns a header and a data region; hands out `Ring`s over them.
    pub(crate) struct HeapRing {
        header: NonNull<RingHeader>,
        /// `u64`s, so the frame-header words in it are aligned.
        data: NonNull<u64>,
        capacity: usize,
        /// loom's stand-ins for the header words in the data region.
        #[cfg(all(test, loom))]
        slots: Box<[crate::sync::AtomicU64]>,
        /// loom's tracked cells for the payload words (see `Ring::track_payload`).
        #[cfg(all(test, loom))]
        cells: Box<[loom::cell::UnsafeCell<()>]>,
    }

    // SAFETY: the memory is owned by this value and only reached through atomics and the
    // head/tail protocol by one producer and one consumer.
    unsafe impl Send for HeapRing {}
    // SAFETY: as above; shared references hand out `Ring`s whose accesses are synchronised.
    unsafe impl Sync for HeapRing {}

    impl HeapRing {
        pub(crate) fn new(capacity: usize) -> HeapRing {
            let header = Box::new(RingHeader::new());
            let data = vec![0u64; capacity / 8].into_boxed_slice();
            let ring = HeapRing {
                header: NonNull::from(Box::leak(header)),
                data: NonNull::from(Box::leak(data)).cast(),
                capacity,
                #[cfg(all(test, loom))]
                slots: (0..capacity / 8)
                    .map(|_| crate::sync::AtomicU64::new(0))
                    .collect(),
                #[cfg(all(test, loom))]
                cells: (0..capacity / 8)
                    .map(|_| loom::cell::UnsafeCell::new(()))
                    .collect(),
            };
            ring.ring().init();
            ring
        }

        /// A view of the ring. At most one producer and one consumer may be made from views.
        pub(crate) fn ring(&self) -> Ring {
            // SAFETY: header and data are owned by `self` and outlive every use in the tests,
            // which keep `self` alive (in an Arc) while producers and consumers run.
            let ring = unsafe { Ring::from_parts(self.header, self.data.cast(), self.capacity) };
            #[cfg(all(test, loom))]
            let ring = ring.with_model(
                NonNull::from(&*self.slots).cast(),
                NonNull::from(&*self.cells).cast(),
            );
            ring
        }

        /// Raw access to the data region, to play a hostile peer in tests.
        pub(crate) fn data_ptr(&self) -> *mut u8 {
            self.data.as_ptr().cast()
        }

        /// The shared header, to play a hostile peer in tests.
        pub(crate) fn header(&self) -> &RingHeader {
            // SAFETY: owned by self, valid while self lives.
            unsafe { self.header.as_ref() }
        }
    }

    impl Drop for HeapRing {
        fn drop(&mut self) {
            // SAFETY: both were leaked from Boxes in `new` and are dropped exactly once here.
            unsafe {
                drop(Box::from_raw(self.header.as_ptr()));
                drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                    self.data.as_ptr(),
                    self.capacity / 8,
                )));
            }
        }
    }
}
