//! A hostile manifest cannot make `Blob::parse` allocate more than the file's size
//! warrants: every length it claims is checked against the bytes present before
//! anything is allocated for it. Measured with a counting allocator (this test binary's
//! own), so it has to be the only test in this file.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use olmo_format::{sample, Blob, Header, Manifest, HEADER_LEN};

struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the only addition
// is recording the requested size.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: as for `alloc`; `ptr` and `layout` come from this allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` through this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

/// Replaces the u64 at `at` in the manifest with `value`, fixing the checksum.
fn claim(blob: &[u8], at: usize, value: u64) -> Vec<u8> {
    let mut b = blob.to_vec();
    let mut h = Header::parse(&b[..HEADER_LEN], b.len() as u64).unwrap();
    let m = HEADER_LEN + at;
    b[m..m + 8].copy_from_slice(&value.to_le_bytes());
    h.manifest_crc32 = crc32fast::hash(&b[HEADER_LEN..][..h.manifest_len as usize]);
    b[..HEADER_LEN].copy_from_slice(&h.to_bytes());
    b
}

#[test]
fn claimed_lengths_allocate_nothing_large() {
    let blob = sample::small_blob();
    let producer = Blob::parse(&blob).unwrap().manifest.producer.len();
    // The config's encoded length: a manifest of it alone, less the empty producer (8),
    // tensor table (8), vocabulary (1) and chat (1).
    let config_len = Manifest {
        producer: String::new(),
        config: sample::small_config(),
        tensors: Vec::new(),
        vocab: None,
        chat: None,
    }
    .encode()
    .len()
        - 18;
    let tensors_at = 8 + producer + config_len;
    let first_name_at = tensors_at + 8;
    let m = &blob[HEADER_LEN..];
    assert_eq!(m[tensors_at..tensors_at + 8], 21u64.to_le_bytes(), "layout of the sample manifest");
    // Sizes just under the manifest limit (64 MiB): what a decoder would preallocate
    // if it trusted them.
    let cases = [
        ("producer length", 0, 60 << 20),
        ("tensor count", tensors_at, 1 << 40),
        ("first tensor's name length", first_name_at, 60 << 20),
    ];
    for (what, at, value) in cases {
        let hostile = claim(&blob, at, value);
        LARGEST.store(0, Ordering::Relaxed);
        let result = Blob::parse(&hostile);
        let largest = LARGEST.load(Ordering::Relaxed);
        assert!(result.is_err(), "{what}: accepted");
        assert!(largest <= 1 << 20, "{what}: an allocation of {largest} bytes");
    }
}
