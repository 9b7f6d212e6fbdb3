//! Zeroed buffers of floats (`f32`, or `f16` for a half-size KV cache) for the run
//! state, and of bf16 bits for the kernels' tile scratch (`kernels::tasks::grow_huge`),
//! in anonymous memory maps backed by 2 MiB pages where the kernel allows it.
//!
//! A decode step's attention reads each head's cached keys and values, a few KiB to a
//! few MiB per head spread over the whole KV cache; with 4 KiB pages nearly every
//! stretch of it starts with a TLB miss. On the 1B (q8_0, 2 threads, positions 1-64)
//! attention took 0.44-0.48 ms per step with 4 KiB pages and 0.32-0.35 ms with 2 MiB
//! ones. Linux gives anonymous memory 2 MiB pages only where asked to (`madvise`,
//! the default policy) and only in 2 MiB-aligned stretches, so a buffer of at least
//! 2 MiB is mapped with room to start on such a boundary and advised.
//!
//! The kernel maps and zeroes pages on first touch, so a buffer's untouched pages cost
//! no memory. The KV cache gives each head a block of `max_positions` rows, so its
//! first position already touches most of its 2 MiB pages (docs/PERFORMANCE.md, "Long
//! contexts").

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use half::f16;
use memmap2::MmapMut;

/// The huge page size on x86-64 and most aarch64 kernels.
const HUGE_PAGE: usize = 2 << 20;

/// An element type whose all-zero bytes are the value zero and whose every bit pattern
/// is valid, so a zeroed map is a slice of zeros.
///
/// # Safety
/// Implement only for such plain types of alignment at most 4 KiB.
pub unsafe trait Zeroable: Copy {}

// SAFETY: IEEE floats: all-zero bits are +0.0, and every bit pattern is some value.
unsafe impl Zeroable for f32 {}
// SAFETY: as for f32; `f16` is a transparent `u16`.
unsafe impl Zeroable for f16 {}
// SAFETY: all-zero bits are 0, and every bit pattern is some value (bf16 bits in the
// kernels' scratch).
unsafe impl Zeroable for u16 {}

/// `len` zeroed elements in their own memory map.
pub struct Buffer<T: Zeroable = f32> {
    /// `None` for an empty buffer (a map cannot be empty).
    map: Option<MmapMut>,
    /// Where the elements start in `map`: the first 2 MiB boundary for a big buffer.
    offset: usize,
    len: usize,
    _element: PhantomData<T>,
}

impl<T: Zeroable> Buffer<T> {
    /// `len` zeroed elements, or `None` if the size overflows or the memory cannot be
    /// mapped.
    pub fn zeroed(len: usize) -> Option<Buffer<T>> {
        let bytes = len.checked_mul(std::mem::size_of::<T>())?;
        if bytes == 0 {
            return Some(Buffer { map: None, offset: 0, len: 0, _element: PhantomData });
        }
        let huge = bytes >= HUGE_PAGE;
        let map = MmapMut::map_anon(if huge { bytes.checked_add(HUGE_PAGE)? } else { bytes }).ok()?;
        let offset = if huge { map.as_ptr().align_offset(HUGE_PAGE) } else { 0 };
        #[cfg(target_os = "linux")]
        if huge {
            // Only a hint: without transparent huge pages the buffer works the same.
            let _ = map.advise_range(memmap2::Advice::HugePage, offset, bytes);
        }
        Some(Buffer { map: Some(map), offset, len, _element: PhantomData })
    }
}

impl<T: Zeroable> Default for Buffer<T> {
    /// An empty buffer (no map).
    fn default() -> Buffer<T> {
        Buffer { map: None, offset: 0, len: 0, _element: PhantomData }
    }
}

impl<T: Zeroable> Deref for Buffer<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match &self.map {
            // SAFETY: the map holds `offset + size_of::<T>() * len` bytes (`zeroed`
            // mapped at least that), starts page-aligned so `offset` (0 or a multiple of
            // 2 MiB) keeps it aligned for `T`, any bytes are a valid `T` (`Zeroable`),
            // and the slice borrows `self`, which owns the map.
            Some(map) => unsafe { std::slice::from_raw_parts(map.as_ptr().add(self.offset) as *const T, self.len) },
            None => &[],
        }
    }
}

impl<T: Zeroable> DerefMut for Buffer<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.map {
            // SAFETY: as for `deref`; the map is private to this buffer and borrowed
            // mutably, so the slice is the only access.
            Some(map) => unsafe {
                std::slice::from_raw_parts_mut(map.as_mut_ptr().add(self.offset) as *mut T, self.len)
            },
            None => &mut [],
        }
    }
}

impl<T: Zeroable> std::fmt::Debug for Buffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer").field("len", &self.len).field("offset", &self.offset).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_zeroed_writable_and_sized() {
        for len in [0, 1, 1000, HUGE_PAGE / 4, HUGE_PAGE / 4 + 3, 3 * HUGE_PAGE / 4] {
            let mut b = Buffer::<f32>::zeroed(len).unwrap();
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&v| v == 0.0));
            for (i, v) in b.iter_mut().enumerate() {
                *v = i as f32;
            }
            assert!(b.iter().enumerate().all(|(i, &v)| v == i as f32));
            if len * 4 >= HUGE_PAGE {
                assert_eq!(b.as_ptr() as usize % HUGE_PAGE, 0, "a big buffer starts on a huge page");
            }
        }
    }

    #[test]
    fn half_buffers_are_zeroed_and_huge_aligned() {
        let mut b = Buffer::<f16>::zeroed(HUGE_PAGE / 2 + 5).unwrap();
        assert!(b.iter().all(|&v| v == f16::ZERO));
        assert_eq!(b.as_ptr() as usize % HUGE_PAGE, 0);
        b[HUGE_PAGE / 2 + 4] = f16::ONE;
        assert_eq!(b[HUGE_PAGE / 2 + 4], f16::ONE);
    }

    #[test]
    fn default_buffers_are_empty_and_u16_ones_huge_aligned() {
        assert!(Buffer::<u16>::default().is_empty());
        let mut b = Buffer::<u16>::zeroed(HUGE_PAGE / 2 + 7).unwrap();
        assert!(b.iter().all(|&v| v == 0));
        assert_eq!(b.as_ptr() as usize % HUGE_PAGE, 0);
        b[HUGE_PAGE / 2 + 6] = 0xBEEF;
        assert_eq!(b[HUGE_PAGE / 2 + 6], 0xBEEF);
    }

    #[test]
    fn impossible_sizes_are_refused() {
        assert!(Buffer::<f32>::zeroed(usize::MAX).is_none());
        assert!(Buffer::<f32>::zeroed(usize::MAX / 4).is_none());
        assert!(Buffer::<f16>::zeroed(usize::MAX / 2 + 1).is_none());
    }
}
