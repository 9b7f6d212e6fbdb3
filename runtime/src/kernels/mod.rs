//! Numeric kernels over weight matrices stored in the blob's dtypes.
//!
//! Every matrix is `rows x cols` with each output row contiguous (`[out, in]`), so
//! `y = W x` streams through the weights once. Kernels split their work into tasks for
//! [`for_each_task`]: the installed [`Team`](crate::model::team::Team) (a forward pass) or rayon's pool.
//!
//! Three kernel sets sit behind one dispatch, chosen at run time from what the CPU has:
//! [`portable`] (plain Rust, the reference and the fallback), `avx2` (AVX2 + FMA + F16C
//! intrinsics), and the same with AVX-512 where it pays: for prompt batches a 512-bit
//! float GEMM micro-kernel and VNNI integer dot products for q8_0 (`gemm_q8`), and the
//! one-token q8_0 product on VNNI (`q8_vnni`).
//! `OLMORT_KERNELS=portable` or `=avx2` caps the choice for a process; [`with_kernels`]
//! forces any available set for the calling thread (tests use it to run them all).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod gemm;
#[cfg(target_arch = "x86_64")]
mod gemm_q8;
mod portable;
#[cfg(target_arch = "x86_64")]
mod q8_vnni;

use std::cell::{Cell, RefCell};
use std::sync::OnceLock;

use half::{bf16, f16};

use crate::model::buffer::Zeroable;

/// A weight matrix viewed in place over the blob.
#[derive(Debug, Clone, Copy)]
pub struct Matrix<'a> {
    pub rows: usize,
    pub cols: usize,
    /// Width of the column panels the elements are stored in (see
    /// `olmo_format::Layout::ColumnPanels`); `cols` or more for a row-major matrix.
    pub panel: usize,
    pub data: MatrixData<'a>,
}

/// The stored elements of a [`Matrix`]; see `olmo_format::Layout` for q8_0.
#[derive(Debug, Clone, Copy)]
pub enum MatrixData<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
    BF16(&'a [u16]),
    /// `rows * blocks * 32` quants, then `rows * blocks` f16 scales (`blocks = ceil(cols / 32)`).
    Q8_0 { quants: &'a [i8], scales: &'a [u16] },
}

impl<'a> Matrix<'a> {
    /// A row-major matrix.
    pub fn row_major(rows: usize, cols: usize, data: MatrixData<'a>) -> Matrix<'a> {
        Matrix { rows, cols, panel: cols, data }
    }

    /// A float matrix stored in column panels of `olmo_format::PANEL_COLS`.
    pub fn column_panels(rows: usize, cols: usize, data: MatrixData<'a>) -> Matrix<'a> {
        Matrix { rows, cols, panel: (olmo_format::PANEL_COLS as usize).min(cols), data }
    }

    /// Bytes of one row's elements (q8_0: quants and scales).
    pub fn row_bytes(&self) -> usize {
        match self.data {
            MatrixData::F32(_) => self.cols * 4,
            MatrixData::F16(_) | MatrixData::BF16(_) => self.cols * 2,
            MatrixData::Q8_0 { .. } => self.cols.div_ceil(32) * 34,
        }
    }

    /// Whether the rows are stored whole, one after another.
    pub fn is_row_major(&self) -> bool {
        self.panel >= self.cols
    }

    /// The column panels in order, each as a row-major matrix with its first column:
    /// `W x` is the sum over them of `panel * x[c0 .. c0 + panel.cols]`. A row-major
    /// matrix is its own single panel.
    pub fn panels(&self) -> impl Iterator<Item = (usize, Matrix<'a>)> {
        let m = *self;
        let count = if m.is_row_major() { 1 } else { m.cols.div_ceil(m.panel) };
        (0..count).map(move |p| {
            if count == 1 {
                return (0, m);
            }
            let c0 = p * m.panel;
            let width = m.panel.min(m.cols - c0);
            // Every panel before this one is `panel` wide: it starts `c0 * rows` in.
            let (start, len) = (c0 * m.rows, width * m.rows);
            let data = match m.data {
                MatrixData::F32(d) => MatrixData::F32(&d[start..][..len]),
                MatrixData::F16(d) => MatrixData::F16(&d[start..][..len]),
                MatrixData::BF16(d) => MatrixData::BF16(&d[start..][..len]),
                MatrixData::Q8_0 { .. } => unreachable!("q8_0 matrices are row-major (check_data)"),
            };
            (c0, Matrix::row_major(m.rows, width, data))
        })
    }

    /// Writes row `r` as f32 into `out` (`cols` long): an embedding lookup.
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        self.segment_to_f32(r, 0, out);
    }

    /// Writes columns `c0 .. c0 + out.len()` of row `r` as f32 into `out`.
    pub fn segment_to_f32(&self, r: usize, c0: usize, out: &mut [f32]) {
        let end = c0 + out.len();
        debug_assert!(end <= self.cols);
        for (p0, p) in self.panels() {
            let (lo, hi) = (c0.max(p0), end.min(p0 + p.cols));
            if lo < hi {
                p.row_major_segment(r, lo - p0, &mut out[lo - c0..hi - c0]);
            }
        }
    }

    /// [`Matrix::segment_to_f32`] of a row-major matrix.
    fn row_major_segment(&self, r: usize, c0: usize, out: &mut [f32]) {
        let c = self.cols;
        let n = out.len();
        match self.data {
            MatrixData::F32(w) => out.copy_from_slice(&w[r * c + c0..][..n]),
            MatrixData::F16(w) => {
                for (o, &b) in out.iter_mut().zip(&w[r * c + c0..][..n]) {
                    *o = f16::from_bits(b).to_f32();
                }
            }
            MatrixData::BF16(w) => {
                for (o, &b) in out.iter_mut().zip(&w[r * c + c0..][..n]) {
                    *o = bf16::from_bits(b).to_f32();
                }
            }
            MatrixData::Q8_0 { quants, scales } => {
                let blocks = c.div_ceil(32);
                let q = &quants[r * blocks * 32..][..c];
                let s = &scales[r * blocks..][..blocks];
                for (i, o) in out.iter_mut().enumerate() {
                    let j = c0 + i;
                    *o = q[j] as f32 * f16::from_bits(s[j / 32]).to_f32();
                }
            }
        }
    }
}

/// Activations quantised for a q8_0 product, per block of 32 as
/// [`portable::quantize_block`] defines (the tail block padded with zeros). Both kernel
/// sets compute the same bytes, so they differ only in summation order.
pub(crate) struct QuantX {
    pub quants: Vec<i8>,
    pub scales: Vec<f32>,
}

impl Default for QuantX {
    fn default() -> QuantX {
        QuantX::new()
    }
}

impl QuantX {
    pub(crate) const fn new() -> QuantX {
        QuantX { quants: Vec::new(), scales: Vec::new() }
    }

    /// Makes room for `len` values; returns the block count.
    fn reserve(&mut self, len: usize) -> usize {
        let blocks = len.div_ceil(32);
        if self.quants.len() < blocks * 32 {
            self.quants.resize(blocks * 32, 0);
            self.scales.resize(blocks, 0.0);
        }
        blocks
    }

    pub(crate) fn quantize_portable(&mut self, x: &[f32]) {
        let blocks = self.reserve(x.len());
        for b in 0..blocks {
            let xb = &x[b * 32..x.len().min(b * 32 + 32)];
            self.scales[b] = portable::quantize_block(xb, &mut self.quants[b * 32..]);
        }
    }
}

/// Replaces `x` by its q8_0 activation rounding, `q * d` per block of 32: what a q8_0
/// product effectively multiplies the weights with. The GEMM uses it so that prompt
/// processing agrees with the one-token path.
pub(crate) fn round_like_q8(x: &mut [f32]) {
    let mut q = [0i8; 32];
    for xb in x.chunks_mut(32) {
        let d = portable::quantize_block(xb, &mut q);
        for (v, &q) in xb.iter_mut().zip(&q) {
            *v = q as f32 * d;
        }
    }
}

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

/// Grows `v` to at least `len` elements (never shrinks it).
pub(crate) fn grow<T: Clone + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}

/// Which implementation the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// Plain Rust: the reference.
    Portable,
    /// AVX2 + FMA + F16C intrinsics; only selectable where [`avx2_available`].
    Avx2,
    /// [`Kernels::Avx2`], with batches (prompt processing) multiplied on AVX-512 (a
    /// 512-bit FMA micro-kernel for float weights, VNNI integer dot products for q8_0)
    /// and one-token q8_0 products on VNNI; only selectable where [`avx512_available`].
    Avx512,
}

impl Kernels {
    /// Whether this CPU can run `self`.
    pub fn supported(self) -> bool {
        match self {
            Kernels::Portable => true,
            Kernels::Avx2 => avx2_available(),
            Kernels::Avx512 => avx512_available(),
        }
    }

    /// Whether `self` uses the AVX2 kernels (for everything but what it overrides).
    fn avx2(self) -> bool {
        matches!(self, Kernels::Avx2 | Kernels::Avx512) && avx2_available()
    }

    /// Whether `self` adds the AVX-512 kernels (prompt GEMMs, the q8_0 matvec).
    fn avx512(self) -> bool {
        self == Kernels::Avx512 && avx512_available()
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

/// Whether this CPU can run [`Kernels::Avx2`].
pub fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU can run [`Kernels::Avx512`]: AVX2/FMA/F16C and AVX-512 F, VL,
/// BW and VNNI.
pub fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| avx2_available() && gemm_q8::available())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The process-wide choice (read once): the best available, capped by
/// `OLMORT_KERNELS=portable` or `OLMORT_KERNELS=avx2`.
pub fn default_kernels() -> Kernels {
    static DEFAULT: OnceLock<Kernels> = OnceLock::new();
    *DEFAULT.get_or_init(|| {
        let wanted = std::env::var("OLMORT_KERNELS").unwrap_or_default();
        let best = [Kernels::Avx512, Kernels::Avx2, Kernels::Portable]
            .into_iter()
            .find(|k| k.supported())
            .unwrap_or(Kernels::Portable);
        match wanted.trim() {
            "portable" => Kernels::Portable,
            "avx2" if best == Kernels::Avx512 => Kernels::Avx2,
            _ => best,
        }
    })
}

thread_local! {
    static OVERRIDE: Cell<Option<Kernels>> = const { Cell::new(None) };
}

/// The kernels the calling thread uses: its [`with_kernels`] override, else the default.
pub fn active() -> Kernels {
    OVERRIDE.with(|o| o.get()).unwrap_or_else(default_kernels)
}

/// Runs `f` with the calling thread's kernels forced to `k` (entry points resolve the
/// choice on the calling thread, so work they hand to rayon follows it too).
///
/// Panics if the CPU cannot run `k`.
pub fn with_kernels<R>(k: Kernels, f: impl FnOnce() -> R) -> R {
    assert!(k.supported(), "this CPU cannot run the {k:?} kernels");
    struct Restore(Option<Kernels>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(OVERRIDE.with(|o| o.replace(Some(k))));
    f()
}

/// Every kernel set this CPU can run: what tests iterate over.
pub fn available_kernels() -> Vec<Kernels> {
    [Kernels::Portable, Kernels::Avx2, Kernels::Avx512].into_iter().filter(|k| k.supported()).collect()
}

/// `y = W x`: `x` has `w.cols` elements, `y` has `w.rows`.
pub fn matvec(w: &Matrix, x: &[f32], y: &mut [f32]) {
    matvec_with(active(), w, x, y)
}

/// [`matvec`] with an explicit kernel choice.
pub fn matvec_with(k: Kernels, w: &Matrix, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), w.cols);
    assert_eq!(y.len(), w.rows);
    check_data(w);
    match k {
        #[cfg(target_arch = "x86_64")]
        _ if k.avx2() => avx2::matvec(w, x, y, k.avx512()),
        _ => portable::matvec(w, x, y),
    }
}

/// Up to this many tokens, a float matrix is multiplied in one pass over its rows
/// instead of by the GEMM, whose packing of every weight tile costs more than it saves
/// on so few tokens. Kernels bench, 16384 x 2048, 2 threads: at 3 tokens one pass ran at
/// 40 (f32) and 50 (f16) GFLOP/s against the GEMM's 22 and 25; at 4, 36 and 55 against
/// 33 and 39; at 8 (two passes) the GEMM led, 52 and 62 against 36 and 56. A 4-token
/// prompt on the 1B f32 shape: 285 ms against 500.
pub const SMALL_BATCH: usize = 4;

/// `Y = X W^T` for a batch: `x` is `n x w.cols` row-major, `y` is `n x w.rows`.
///
/// With AVX2 this is a blocked GEMM that reads (and converts) each weight tile once
/// for all `n` rows of `x`.
pub fn matmul(w: &Matrix, x: &[f32], n: usize, y: &mut [f32]) {
    matmul_with(active(), w, x, n, y)
}

/// [`matmul`] with an explicit kernel choice.
pub fn matmul_with(k: Kernels, w: &Matrix, x: &[f32], n: usize, y: &mut [f32]) {
    assert_eq!(x.len(), n * w.cols);
    assert_eq!(y.len(), n * w.rows);
    check_data(w);
    match k {
        #[cfg(target_arch = "x86_64")]
        _ if k.avx512() && n >= gemm::MIN_BATCH && matches!(w.data, MatrixData::Q8_0 { .. }) => {
            let MatrixData::Q8_0 { quants, scales } = w.data else { unreachable!() };
            // SAFETY: the CPU has what the kernel needs (checked), `check_data` found
            // every row's quants and scales, and the lengths of `x` and `y` are asserted.
            unsafe { gemm_q8::matmul(quants, scales, w.rows, w.cols, x, n, y) }
        }
        #[cfg(target_arch = "x86_64")]
        _ if k.avx2() && n > 1 && n <= SMALL_BATCH && !matches!(w.data, MatrixData::Q8_0 { .. }) => {
            avx2::matvec_few(w, x, n, y)
        }
        #[cfg(target_arch = "x86_64")]
        _ if k.avx2() => {
            let wide = k.avx512();
            if n < gemm::MIN_BATCH {
                for (xi, yi) in x.chunks_exact(w.cols).zip(y.chunks_exact_mut(w.rows)) {
                    avx2::matvec(w, xi, yi, wide);
                }
            } else {
                // SAFETY: `k.avx2()` checked AVX2/FMA/F16C, and `wide` AVX-512;
                // `check_data` found every row and the lengths of `x` and `y` are asserted.
                unsafe { gemm::matmul(w, x, n, y, wide) }
            }
        }
        _ => {
            for (xi, yi) in x.chunks_exact(w.cols).zip(y.chunks_exact_mut(w.rows)) {
                portable::matvec(w, xi, yi);
            }
        }
    }
}

/// What the KV cache holds: `f32`, or `f16`, which halves the bytes attention reads
/// at every step (`forward::KvDtype`). Both widen to f32 before any arithmetic. Sealed:
/// the SIMD kernels read an element's bytes according to [`KvElement::HALF`].
pub trait KvElement: Zeroable + Send + Sync + 'static + sealed::Sealed {
    /// Whether this is `f16` (the SIMD kernels widen it with F16C).
    const HALF: bool;
    /// Rounds to the nearest value (ties to even), as F16C's conversion does.
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
}

impl KvElement for f32 {
    const HALF: bool = false;
    fn from_f32(v: f32) -> f32 {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl KvElement for f16 {
    const HALF: bool = true;
    fn from_f32(v: f32) -> f16 {
        f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

/// `dst = src` in the cache's element type: files one head's key or value row.
pub fn store_row<E: KvElement>(k: Kernels, src: &[f32], dst: &mut [E]) {
    assert_eq!(src.len(), dst.len());
    match k {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2/FMA/F16C (checked); the lengths match (asserted).
        _ if k.avx2() && E::HALF => unsafe { avx2::store_row(src, dst) },
        _ => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = E::from_f32(s)),
    }
}

/// `out[t] = scale * (q . rows[t])` for the first `out.len()` rows of `rows` (each
/// `q.len()` long): one query's attention scores against a head's cached keys.
pub fn scaled_dots<E: KvElement>(k: Kernels, q: &[f32], rows: &[E], scale: f32, out: &mut [f32]) {
    assert!(out.len().checked_mul(q.len()).is_some_and(|n| n <= rows.len()));
    match k {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2/FMA/F16C (checked) and `rows` holds `out.len()` rows
        // (asserted).
        _ if k.avx2() => unsafe { avx2::scaled_dots(q, rows, scale, out) },
        _ => portable::scaled_dots(q, rows, scale, out),
    }
}

/// `out = sum over t of weights[t] * rows[t]` (rows `out.len()` long): attention's
/// probability-weighted sum of a head's cached values.
pub fn weighted_sum<E: KvElement>(k: Kernels, weights: &[f32], rows: &[E], out: &mut [f32]) {
    assert!(weights.len().checked_mul(out.len()).is_some_and(|n| n <= rows.len()));
    match k {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2/FMA/F16C (checked) and `rows` holds `weights.len()`
        // rows (asserted).
        _ if k.avx2() => unsafe { avx2::weighted_sum(weights, rows, out) },
        _ => portable::weighted_sum(weights, rows, out),
    }
}

/// Softmax in place: attention's weights over the cached positions. The AVX2 path
/// computes `exp` with the polynomial SwiGLU uses: 512 scores on one core took 0.26 us
/// against 1.82 with `f32::exp`, and a 512-token prompt of the 1B computes 34 million
/// weights (a decode step at position p, 256 p).
pub fn softmax(k: Kernels, x: &mut [f32]) {
    match k {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2/FMA/F16C (checked).
        _ if k.avx2() => unsafe { avx2::softmax(x) },
        _ => crate::model::ops::softmax(x),
    }
}

/// `out[i] = silu(gate[i]) * up[i]`: SwiGLU. The AVX2 path computes `exp` with a
/// polynomial (Cephes' `expf`, within 2 ulp) eight at a time; over a 512-token prompt
/// of the 1B that is 67 million exponentials.
pub fn swiglu(k: Kernels, gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() >= out.len() && up.len() >= out.len());
    match k {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2/FMA/F16C (checked); `gate` and `up` hold `out.len()`
        // values (asserted).
        _ if k.avx2() => unsafe { avx2::swiglu(gate, up, out) },
        _ => crate::model::ops::swiglu(gate, up, out),
    }
}

/// The slices must hold the whole matrix: the SIMD kernels read through raw pointers.
fn check_data(w: &Matrix) {
    let (r, c) = (w.rows, w.cols);
    // Checked products: a hand-built Matrix must not pass by wrapping around.
    let fits = |len: usize, per_row: usize| r.checked_mul(per_row).is_some_and(|n| len >= n);
    // Panels only reorder the elements: the same count as row-major.
    let ok = match w.data {
        MatrixData::F32(d) => fits(d.len(), c),
        MatrixData::F16(d) | MatrixData::BF16(d) => fits(d.len(), c),
        MatrixData::Q8_0 { quants, scales } => {
            let blocks = c.div_ceil(32);
            blocks
                .checked_mul(32)
                .is_some_and(|per_row| fits(quants.len(), per_row))
                && fits(scales.len(), blocks)
        }
    };
    assert!(ok, "matrix data shorter than {r} x {c}");
    assert!(w.panel > 0 || c == 0, "column panels of width 0");
    assert!(w.is_row_major() || !matches!(w.data, MatrixData::Q8_0 { .. }), "q8_0 in column panels");
}

/// Calls `f(r0, ys)` for blocks `ys` of `y` that the threads claim as they go, each
/// `1 / (2 * threads)` of what is left but at least `min` elements (the last one
/// shorter): big blocks first, so each thread starts few streams, and small ones at the
/// end, so the threads finish within one small block of each other. `r0` is the
/// block's first index. With one thread, `f(0, y)`.
pub(crate) fn par_rows_guided(y: &mut [f32], min: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
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
            let size = ((len - r0) / (2 * threads)).max(min).min(len - r0);
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

#[cfg(test)]
mod tests;
