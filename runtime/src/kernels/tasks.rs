//! Splitting a kernel's work into parallel tasks: on the calling thread's
//! [`Team`](crate::model::team::Team) inside a forward pass, else on rayon's pool; and the
//! per-thread scratch the tasks reuse.

use std::cell::RefCell;

use crate::model::buffer::{Buffer, Zeroable};

/// How far ahead (bytes) the matvec kernels of every instruction set prefetch their
/// weight stream (f32: `avx2::F32_PREFETCH`). Here, not in one instruction set's file,
/// so that the kernel files do not import one another for it. For q8_0, 4 KiB ahead measured 15-20% faster than 768 bytes on
/// one thread. The float kernels did without while each matrix was split into rayon
/// tasks that started far apart in time; with the team's back-to-back sections, decode
/// steps alternating with and without 4 KiB in one process (the 1B, 2 threads) were
/// 3-4% (f32), 6-10% (f16) and 10-14% (bf16) faster with it, medians of 80 pairs.
///
/// 6 KiB rather than 4 when memory runs at ~65 GB/s, where each core has to keep more
/// lines in flight: 1B decode steps alternating between the two in one process
/// (`model_matvec`, 2 threads, 40-50 rounds), as a fraction of a stream in the same
/// round, went from 0.921 to 0.950 (f16), 0.928 to 0.989 (bf16) and 0.840-0.871 to
/// 0.875-0.892 (q8_0 here); 5 and 8 KiB gave f16 0.90 and 0.95. At ~41 GB/s the two
/// were level (0.96-1.01).
pub(crate) const PREFETCH: usize = 6144;

/// How far ahead every matvec kernel but the AVX-512 float one (which fetches the next
/// block's rows instead) also fetches each line into L2 (`prefetcht1`), besides
/// [`PREFETCH`] or [`Q4_PREFETCH`] into L1; the VNNI q8_0 kernel, whose rows run side
/// by side, fetches the next rows' line. With L1 prefetches alone the loads waited on
/// memory. On Sapphire Rapids (2 threads, the 1B's decode steps, `decode_floor`,
/// alternating in one run), as fractions of the floor: AVX2 kernels
/// (`OLMORT_KERNELS=avx2`, memory at 29-37 GB/s) 1.19 -> 1.02 (q8_0), 1.18 -> 0.98
/// (bf16), 1.20-1.23 -> 0.97 (f16), 1.06-1.08 -> 0.96-0.97 (f32), the VNNI q8_0 kernel
/// 1.07-1.11 -> 1.02-1.05 (stop 37; 8 KiB left AVX2 q8_0 at 1.05-1.06, 20 KiB level
/// with 12, the next rows' line two groups on level with one); the 4-bit kernels
/// (memory at ~34 GB/s) 1.30 -> 1.05-1.06 (q4_0) and 1.39 -> 1.07-1.09 (q4_k) at 8
/// KiB (stop 33; 4 and 16 KiB within 0.01-0.05); 12 KiB against 8 for them, by step
/// time, within 2% either way (stop 37, 3 rounds: VNNI 0-5% faster, AVX2 q4_0 1-3%
/// slower). Not measured on the AMD machines, whose L1 and L2 differ.
pub(crate) const PREFETCH_L2: usize = 12288;

/// Asks for the weight line at `line + l1` into L1 and the one at `line +`
/// [`PREFETCH_L2`] into L2: a matvec kernel's prefetch of its weight stream, `l1` its
/// distance into L1 ([`PREFETCH`], [`Q4_PREFETCH`], ...).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn prefetch_weights(line: *const i8, l1: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
    // SAFETY: a prefetch loads nothing into registers and never faults, whatever the
    // address; `wrapping_add` keeps the address arithmetic defined past the buffer.
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>(line.wrapping_add(l1));
        _mm_prefetch::<_MM_HINT_T1>(line.wrapping_add(PREFETCH_L2));
    }
}

/// The 4-bit matvec kernels' prefetch distance into L1: shorter than the others'. On
/// Sapphire Rapids (2 threads, 1B decode steps alternating in one run), with L1
/// prefetches alone (memory at ~30 GB/s), q4_0 steps took 27.4-28.2 ms at 2 KiB against
/// 36.4-36.6 at 6 KiB (floor 24.3), q4_k 23.3-23.4 against 24.5-25.5 (floor 23.9); the
/// AVX2 kernel q4_0 27.5-28.6 ms against 43.1-44.3, q4_k 27.8-28.2 against 41.7-42.2.
/// With [`PREFETCH_L2`] beside it, 1-4 KiB were within the machine's drift of each
/// other. Not measured on Zen 4, where 6 KiB was chosen for the other kernels.
pub(crate) const Q4_PREFETCH: usize = 2048;

/// Runs `f` on the calling thread's value in `key`: per-thread scratch that is allocated
/// on first use and then only ever grows, so nothing is allocated per call. A nested
/// call (the thread's value already borrowed further up the stack) gets a fresh one.
pub(crate) fn with_local<T: Default, R>(
    key: &'static std::thread::LocalKey<RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => f(&mut v),
        Err(_) => f(&mut T::default()),
    })
}

/// Threads a parallel section runs on: the calling thread's [`Team`](crate::model::team::Team)
/// if one is installed (a forward pass), else the current rayon pool.
pub(crate) fn threads() -> usize {
    crate::model::team::with_current(|team| team.map_or_else(rayon::current_num_threads, |t| t.threads()))
}

/// Runs `task(0 .. tasks)` on the calling thread's team if one is installed, else on the
/// current rayon pool, or in order on this thread when there is one task or one thread
/// (no hand-off to pay for).
pub(crate) fn for_each_task(tasks: usize, task: impl Fn(usize) + Sync + Send) {
    if tasks == 1 {
        return task(0);
    }
    crate::model::team::with_current(|team| match team {
        Some(team) => team.run(tasks, &task),
        None if rayon::current_num_threads() == 1 => (0..tasks).for_each(task),
        None => {
            use rayon::prelude::*;
            (0..tasks).into_par_iter().for_each(task)
        }
    })
}

/// Calls `f(r0, ys)` for consecutive blocks `ys` of `per` elements of `y` (the last one
/// shorter), `r0` being the block's first index, as parallel tasks.
pub(crate) fn par_rows(y: &mut [f32], per: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let len = y.len();
    if per >= len {
        return f(0, y);
    }
    let yp = SendPtr(y.as_mut_ptr());
    for_each_task(len.div_ceil(per), |i| {
        let r0 = i * per;
        // SAFETY: each task takes its own block of `y`, which outlives the section.
        let ys = unsafe { std::slice::from_raw_parts_mut(yp.get().add(r0), per.min(len - r0)) };
        f(r0, ys)
    })
}

thread_local! {
    /// The calling thread's weight panel for [`for_each_row_block`]; only ever grows.
    static PANEL: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f(r0, nb, panel)` as parallel tasks for the blocks of `nb_max` rows of `rows`
/// (`nb` rows from `r0`; the last block shorter), each with the running thread's
/// scratch `panel` of `len` bytes, 64-byte aligned: a quantised GEMM's packed weights.
pub(crate) fn for_each_row_block(rows: usize, nb_max: usize, len: usize, f: impl Fn(usize, usize, &mut [u8]) + Sync + Send) {
    for_each_task(rows.div_ceil(nb_max), |t| {
        with_local(&PANEL, |buf| {
            let r0 = t * nb_max;
            f(r0, nb_max.min(rows - r0), grow_aligned(buf, len))
        })
    })
}

/// Grows `v` (as [`grow`]) to hold `len` elements from its first 64-byte boundary on,
/// and returns them: the kernels' scratch, where a vector or tile load that straddles
/// cache lines runs several times slower and the allocator aligns to 16 bytes at most.
pub(crate) fn grow_aligned<T: Clone + Default>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    let slack = 64 / std::mem::size_of::<T>().max(1);
    grow(v, len + slack);
    let at = v.as_ptr().align_offset(64).min(slack);
    &mut v[at..][..len]
}

/// Grows `buf` to at least `len` zeroed elements (never shrinks it; contents are not
/// kept when it grows) and returns its first `len`: scratch in a map of its own, on 2
/// MiB pages where the kernel allows them ([`Buffer`]), page-aligned. For scratch whose
/// layout is chosen for the L2's sets: on 4 KiB pages the sets a page's lines fall in
/// depend on where the page lands, and the same kernel ran fast or a third slow from
/// one process to the next (`gemm_amx::token_tile_stride`). Out of memory aborts, as a
/// `Vec`'s growth does.
pub(crate) fn grow_huge<T: Zeroable>(buf: &mut Buffer<T>, len: usize) -> &mut [T] {
    if buf.len() < len {
        *buf = Buffer::zeroed(len).unwrap_or_else(|| {
            std::alloc::handle_alloc_error(std::alloc::Layout::array::<T>(len).unwrap_or(std::alloc::Layout::new::<T>()))
        });
    }
    &mut buf[..len]
}

/// Grows `v` to at least `len` elements (never shrinks it).
pub(crate) fn grow<T: Clone + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}

/// A pointer into an output buffer that parallel tasks write in disjoint parts.
pub(crate) struct SendPtr<T = f32>(pub(crate) *mut T);

impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SendPtr<T> {}

// SAFETY: the pointer is only dereferenced inside a parallel section that the buffer outlives,
// and every user gives each task a region no other task reads or writes (a head of the
// attention output, a block of GEMM output rows), so sharing it cannot race.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as for Send: tasks write disjoint regions and nothing reads them concurrently.
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// Through a method, so closures capture the whole (Send) wrapper.
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// Calls `f(r0, ys)` for blocks `ys` of `y` that the threads claim as they go, each
/// `1 / (2 * threads)` of what is left but at least `min` elements (the last one
/// shorter): big blocks first, so each thread starts few streams, and small ones at the
/// end, so the threads finish within one small block of each other. `r0` is the
/// block's first index, a multiple of `align` (a kernel's rows at a time). With one
/// thread, `f(0, y)`.
pub(crate) fn par_rows_guided(y: &mut [f32], min: usize, align: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let len = y.len();
    let threads = threads();
    if threads == 1 || len <= min {
        return f(0, y);
    }
    let next = AtomicUsize::new(0);
    let yp = SendPtr(y.as_mut_ptr());
    for_each_task(threads, |_| {
        let mut r0 = next.load(Ordering::Relaxed);
        while r0 < len {
            let size = ((len - r0) / (2 * threads)).max(min).next_multiple_of(align).min(len - r0);
            match next.compare_exchange_weak(r0, r0 + size, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    // SAFETY: the exchange gave this thread `r0 .. r0 + size` alone, within
                    // `y`, which outlives the section.
                    f(r0, unsafe { std::slice::from_raw_parts_mut(yp.get().add(r0), size) });
                    r0 = next.load(Ordering::Relaxed);
                }
                Err(now) => r0 = now,
            }
        }
    })
}

/// [`par_rows_guided`] for a product of `n` tokens: `y` holds their outputs, `rows`
/// apart. The threads claim blocks of rows as for one token (`min`, `align` as there);
/// each block is taken `sub` rows at a time (a multiple of `align`), and every token's
/// outputs of those rows are computed (`f(token, r0, ys)`) before the next `sub` rows,
/// so the weights come from memory once and from cache for the other tokens.
pub(crate) fn par_rows_many(
    y: &mut [f32],
    n: usize,
    rows: usize,
    min: usize,
    align: usize,
    sub: usize,
    f: impl Fn(usize, usize, &mut [f32]) + Sync + Send,
) {
    let yp = SendPtr(y.as_mut_ptr());
    par_row_groups(y, n, rows, min, align, sub, 1, |a, len, t, _| {
        // SAFETY: `par_row_groups` gave this call rows `a .. a + len` alone, and token
        // t's rows of them lie within `y` (asserted there), which outlives the section.
        f(t, a, unsafe { std::slice::from_raw_parts_mut(yp.get().add(t * rows + a), len) })
    })
}

/// [`par_rows_many`] with the tokens taken `group` at a time, for kernels that read a
/// weight row once for several tokens: `f(a, len, t0, m)` computes rows `a .. a + len`
/// of tokens `t0 .. t0 + m` (their outputs in `y`, `rows` apart), and this call alone
/// writes them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn par_row_groups(
    y: &mut [f32],
    n: usize,
    rows: usize,
    min: usize,
    align: usize,
    sub: usize,
    group: usize,
    f: impl Fn(usize, usize, usize, usize) + Sync + Send,
) {
    assert!(y.len() >= n * rows && sub > 0 && group > 0);
    par_rows_guided(&mut y[..rows], min, align, |r0, block| {
        let end = r0 + block.len();
        for a in (r0..end).step_by(sub) {
            let len = sub.min(end - a);
            for t0 in (0..n).step_by(group) {
                f(a, len, t0, group.min(n - t0));
            }
        }
    })
}

/// Rows of a sub-block of [`par_rows_many`]: about `bytes` of weights (so they stay in
/// the core's L2 while every token passes over them), a multiple of `align`.
pub(crate) fn rows_per_sub_block(row_bytes: usize, align: usize, bytes: usize) -> usize {
    (bytes / row_bytes.max(1)).max(1).div_ceil(align) * align
}

/// The smallest block [`par_rows_guided`] hands out for a matvec: about 256 KiB of
/// weights (a dozen microseconds of one core's stream), in whole multiples of `align`
/// rows.
pub(crate) fn min_rows_per_block(row_bytes: usize, align: usize) -> usize {
    ((256 << 10) / row_bytes.max(1)).max(1).div_ceil(align) * align
}

/// Splits `rows` outputs into parallel tasks: a few per thread so a busy core is covered
/// by stealing, in multiples of `align`; one task for small matrices.
pub(crate) fn rows_per_task(rows: usize, cols: usize, align: usize) -> usize {
    let threads = threads().max(1);
    if threads == 1 || rows * cols < 1 << 15 {
        return rows.max(1);
    }
    let per = rows.div_ceil(threads * 4).max(16);
    per.div_ceil(align) * align
}
