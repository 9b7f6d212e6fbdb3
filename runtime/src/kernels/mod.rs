//! Numeric kernels over weight matrices stored in the blob's dtypes, and the dispatch
//! that picks a kernel set for each call.
//!
//! Every matrix is `rows x cols` with each output row contiguous (`[out, in]`), so
//! `y = W x` streams through the weights once. The pieces, each in its own file:
//! - [`matrix`]: the [`Matrix`] views the kernels read;
//! - [`tasks`]: splitting a kernel's work into parallel tasks ([`for_each_task`]) on the
//!   installed [`Team`](crate::model::team::Team) (a forward pass) or rayon's pool;
//! - [`activations`]: the int8 rounding of activations that the q8_0 products share;
//! - one file per instruction set: [`portable`] (plain Rust, the reference and the
//!   fallback), `avx2` (AVX2 + FMA + F16C intrinsics), `gemm` (the prompt batches' float
//!   GEMM, AVX2 with an AVX-512 F micro-kernel), `q4_avx2` (4-bit weights on AVX2),
//!   `float_avx512` (float weights' one-token and decode-batch products on AVX-512 F),
//!   `gemm_q8` and `q8_vnni` (q8_0 batches and one-token products on AVX-512 VNNI),
//!   `gemm_q4` and `q4_vnni` (the same for q4_0 and q4_k), `amx` (the AMX tile
//!   instructions, `asm!`), `gemm_amx` (prompt batches on AMX bf16 tiles) and
//!   `q8_amx` (q8_0 short prompts on AMX int8 tiles);
//! - this file: the dispatch. Four kernel sets, chosen at run time from what the CPU
//!   has: [`Kernels::Portable`], [`Kernels::Avx2`], [`Kernels::Avx512`] (the AVX2
//!   set with the AVX-512 kernels where they pay) and [`Kernels::Amx`] (the AVX-512
//!   set with prompt batches on AMX tiles).
//!
//! `OLMORT_KERNELS=portable`, `=avx2` or `=avx512` caps the choice for a process;
//! [`with_kernels`] forces any available set for the calling thread (tests use it to
//! run them all).

mod activations;
#[cfg(target_arch = "x86_64")]
mod amx;
pub(crate) mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod exp;
#[cfg(target_arch = "x86_64")]
mod float_avx512;
#[cfg(target_arch = "x86_64")]
mod gemm;
#[cfg(target_arch = "x86_64")]
mod gemm_amx;
#[cfg(target_arch = "x86_64")]
mod gemm_q4;
#[cfg(target_arch = "x86_64")]
mod gemm_q8;
mod kv_element;
mod matrix;
mod portable;
#[cfg(target_arch = "x86_64")]
mod q4_avx2;
#[cfg(target_arch = "x86_64")]
mod q4_vnni;
#[cfg(target_arch = "x86_64")]
mod q8_amx;
#[cfg(target_arch = "x86_64")]
mod q8_vnni;
mod tasks;

use std::cell::Cell;
use std::sync::OnceLock;

pub use kv_element::KvElement;
pub use matrix::{Matrix, MatrixData};
pub(crate) use tasks::{for_each_task, par_rows, SendPtr};

/// Which implementation the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// Plain Rust: the reference.
    Portable,
    /// AVX2 + FMA + F16C intrinsics; only selectable where [`avx2_available`].
    Avx2,
    /// [`Kernels::Avx2`], with batches (prompt processing) multiplied on AVX-512 (a
    /// 512-bit FMA micro-kernel for float weights, VNNI integer dot products for q8_0,
    /// q4_0 and q4_k) and one-token and decode-batch products on AVX-512 (float weights
    /// on AVX-512 F, the integer dtypes on VNNI); only selectable where
    /// [`avx512_available`].
    Avx512,
    /// [`Kernels::Avx512`], with prompt batches of bf16, q8_0, q4_0 and q4_k weights
    /// on AMX tiles (`tdpbf16ps`: the weights dequantised to bf16, the activations
    /// rounded to bf16), q8_0 prompts of 3 to 11 tokens on int8 tiles (`tdpbssd`,
    /// `q8_amx`); only selectable where [`amx_available`].
    Amx,
}

impl Kernels {
    /// Whether this CPU can run `self`.
    pub fn supported(self) -> bool {
        match self {
            Kernels::Portable => true,
            Kernels::Avx2 => avx2_available(),
            Kernels::Avx512 => avx512_available(),
            Kernels::Amx => amx_available(),
        }
    }

    /// Whether `self` uses the AVX2 kernels (for everything but what it overrides).
    fn avx2(self) -> bool {
        matches!(self, Kernels::Avx2 | Kernels::Avx512 | Kernels::Amx) && avx2_available()
    }

    /// Whether `self` adds the AVX-512 kernels (prompt GEMMs, the q8_0 and 4-bit matvecs).
    fn avx512(self) -> bool {
        matches!(self, Kernels::Avx512 | Kernels::Amx) && avx512_available()
    }

    /// Whether `self` adds the AMX kernels.
    fn amx(self) -> bool {
        self == Kernels::Amx && amx_available()
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

/// Whether this CPU can run [`Kernels::Amx`]: [`avx512_available`] with AVX-512 DQ,
/// VBMI and BF16 (every CPU with AMX has them), AMX tiles with bf16 and int8 products, and
/// Linux's permission to use them (asked once).
pub fn amx_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512_available() && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vbmi")
            && is_x86_feature_detected!("avx512bf16")
            && amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One core's AMX bf16 peak in GFLOP/s (tile products on loaded tiles for about
/// `products` x 16 cycles), or `None` without AMX: what benchmarks divide a prompt's
/// FLOPs by for its compute floor.
pub fn amx_bf16_peak(products: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if amx_available() {
        // SAFETY: AMX is available (checked).
        return Some(unsafe { gemm_amx::peak_bf16(products) });
    }
    let _ = products;
    None
}

/// The process-wide choice (read once): the best available, capped by
/// `OLMORT_KERNELS=portable`, `=avx2` or `=avx512`.
pub fn default_kernels() -> Kernels {
    static DEFAULT: OnceLock<Kernels> = OnceLock::new();
    *DEFAULT.get_or_init(|| {
        let wanted = std::env::var("OLMORT_KERNELS").unwrap_or_default();
        // Best first: a cap takes the first set at or below it that the CPU has.
        let order = [Kernels::Amx, Kernels::Avx512, Kernels::Avx2, Kernels::Portable];
        let cap = match wanted.trim() {
            "portable" => 3,
            "avx2" => 2,
            "avx512" => 1,
            _ => 0,
        };
        order[cap..].iter().copied().find(|k| k.supported()).unwrap_or(Kernels::Portable)
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
    [Kernels::Portable, Kernels::Avx2, Kernels::Avx512, Kernels::Amx].into_iter().filter(|k| k.supported()).collect()
}

/// `y = W x`: `x` has `w.cols` elements, `y` has `w.rows`.
pub fn matvec(w: &Matrix, x: &[f32], y: &mut [f32]) {
    matvec_with(active(), w, x, y)
}

/// [`matvec`] with an explicit kernel choice.
pub fn matvec_with(k: Kernels, w: &Matrix, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), w.cols);
    assert_eq!(y.len(), w.rows);
    w.check();
    match w.data {
        #[cfg(target_arch = "x86_64")]
        MatrixData::Q8_0 { quants, scales } if k.avx512() => {
            // SAFETY: the CPU has what the kernel needs (checked), `check` found every
            // row's quants and scales, and the lengths of `x` and `y` are asserted.
            unsafe { q8_vnni::matmul_decode(quants, scales, w.cols, x, 1, y) }
        }
        #[cfg(target_arch = "x86_64")]
        MatrixData::Q4_0(_) | MatrixData::Q4_K(_) if k.avx512() => {
            // SAFETY: the CPU has what the kernel needs (checked), `check` found every
            // tile, and the lengths of `x` and `y` are asserted.
            unsafe { q4_vnni::matvec(w, x, y) }
        }
        #[cfg(target_arch = "x86_64")]
        MatrixData::F32(_) | MatrixData::F16(_) | MatrixData::BF16(_) if k.avx512() => {
            // A decode batch of one: on Zen 4 it read bf16 weights at 1.5-1.8x the AVX2
            // matvec's speed, f32 and f16 level with it (kernels bench, 65536 x 2048).
            // SAFETY: the CPU has what the kernel needs (checked), `check` found every
            // row, and the lengths of `x` and `y` are asserted.
            unsafe { float_avx512::matmul_decode(w, x, 1, y) }
        }
        #[cfg(target_arch = "x86_64")]
        MatrixData::Q4_0(_) | MatrixData::Q4_K(_) if k.avx2() => q4_avx2::matvec(w, x, y),
        #[cfg(target_arch = "x86_64")]
        _ if k.avx2() => avx2::matvec(w, x, y),
        _ => portable::matvec(w, x, y),
    }
}

/// With AVX2 (and no AVX-512: [`AVX512_FLOAT_DECODE`]), up to this many tokens, a
/// float matrix is multiplied in one pass over its rows instead of by the GEMM, whose
/// packing of every weight tile costs more than it saves on so few tokens. Kernels
/// bench, 16384 x 2048, 2 threads: at 3 tokens one pass ran at 40 (f32) and 50 (f16)
/// GFLOP/s against the GEMM's 22 and 25; at 4, 36 and 55 against 33 and 39; at 8 (two
/// passes) the GEMM led, 52 and 62 against 36 and 56. A 4-token prompt on the 1B f32
/// shape: 285 ms against 500.
pub const SMALL_BATCH: usize = 4;

/// With AVX-512, float batches of up to this many tokens take the decode kernel
/// (`float_avx512::matmul_decode`, eight tokens a pass over the rows) instead of the
/// exact GEMM. The 1B f16's prompt chunks (`prefill_chunks`, 2 threads, Sapphire
/// Rapids), ms on the GEMM against the decode kernel, alone / two / four / eight read
/// together: 5 tokens 193 / 217 / 277-302 / 412 against 104 / 135 / 228-250 / 462; 6
/// tokens 194 / 219 / 294 / 453 against 106 / 161 / 284 / 570. A batch of chunks runs
/// one kernel only where each chunk alone would (`matmul_segments`), and the decode
/// kernel's cost grows faster with the tokens: at 6 the eights lose a quarter, at 5
/// an eighth, as q8_0's chunks of up to 6 tokens do on VNNI (`q8_amx::TILES_FROM`).
/// Alone, the decode kernel led the GEMM up to 12 tokens (f32) and 16 (16-bit): f16
/// 12 tokens 159 against 221 ms, f32 251 against 277 (`prompt_floor`).
pub const AVX512_FLOAT_DECODE: usize = 5;

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
    w.check();
    run_product(k, Product::for_batch(k, w, n), w, x, n, y)
}

/// The MLP's products for a batch made of segments (`lens`, as [`matmul_segments`]):
/// `y = (silu(x G^T) * (x U^T)) D^T` for `gate_up` = `[G; U]` (`2 * down.cols` rows)
/// and `down`, where every segment alone would run the AMX GEMM for both, which takes
/// the SwiGLU from the gate and up results in the tiles (the same bits as
/// [`matmul_segments`], [`swiglu`] into a buffer and [`matmul_segments`] again).
/// Returns whether it ran; if not, the caller runs those three. No segments (a decode
/// batch's rows, which run their matvec's kernel) run nothing.
pub fn mlp(k: Kernels, gate_up: &Matrix, down: &Matrix, x: &[f32], lens: &[usize], y: &mut [f32]) -> bool {
    let amx = |len: usize| Product::for_batch(k, gate_up, len) == Product::AmxGemm && Product::for_batch(k, down, len) == Product::AmxGemm;
    if lens.is_empty() || !lens.iter().all(|&len| amx(len)) {
        return false;
    }
    let n: usize = lens.iter().sum();
    assert_eq!(x.len(), n * gate_up.cols);
    assert_eq!(y.len(), n * down.rows);
    #[cfg(target_arch = "x86_64")]
    if gemm_amx::fit_together(gate_up, down) {
        gate_up.check();
        down.check();
        // SAFETY: the CPU has AMX and the process may use it (`for_batch` checked),
        // `check` found every row of both, and the lengths are asserted.
        unsafe { gemm_amx::mlp(gate_up, down, x, n, y) }
        return true;
    }
    false
}

/// `Y = X W^T` for a batch made of segments (`lens`: several sequences' prompt chunks,
/// one after the other in `x` and `y`) that gives each segment exactly what
/// [`matmul_with`] gives it alone. No kernel's numbers for a token depend on the
/// batch beside it, only on which kernel runs (the tests hold every [`Product`] to
/// that, bit for bit): so where every segment alone would run the same one, the
/// weights are read once for all; otherwise segment by segment.
pub fn matmul_segments(k: Kernels, w: &Matrix, x: &[f32], lens: &[usize], y: &mut [f32]) {
    let n: usize = lens.iter().sum();
    assert_eq!(x.len(), n * w.cols);
    assert_eq!(y.len(), n * w.rows);
    w.check();
    let Some(&first) = lens.first() else { return };
    let product = Product::for_batch(k, w, first);
    if lens.iter().all(|&len| Product::for_batch(k, w, len) == product) {
        return run_product(k, product, w, x, n, y);
    }
    let (mut xs, mut ys) = (x, y);
    for &len in lens {
        let (xa, xr) = xs.split_at(len * w.cols);
        let (ya, yr) = std::mem::take(&mut ys).split_at_mut(len * w.rows);
        run_product(k, Product::for_batch(k, w, len), w, xa, len, ya);
        (xs, ys) = (xr, yr);
    }
}

/// The kernel [`matmul_with`] runs for a batch. Each sums a token's outputs in an
/// order of the token's own, so its numbers do not depend on the batch's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    /// q8_0 on AMX int8 tiles (`q8_amx`), for `q8_amx::TILES_FROM` (7) to 11 tokens.
    Q8Tiles,
    /// bf16 tiles (`gemm_amx`).
    AmxGemm,
    /// q8_0 and 4-bit GEMMs on AVX-512 VNNI (`gemm_q8`, `gemm_q4`).
    Q8Gemm,
    Q4Gemm,
    /// A few tokens on AVX-512 through the decode kernels ([`matmul_decode`]): each
    /// token's numbers are those of its matvec.
    Decode,
    /// Float weights, a few tokens over each row on AVX2 (`avx2::matvec_few`).
    Avx2Few,
    /// Each token alone through [`matvec_with`].
    PerToken,
    /// The blocked GEMM (`gemm`), AVX2 or AVX-512 micro-kernel.
    Gemm,
    /// The portable matvec per token.
    Portable,
}

impl Product {
    /// What [`matmul_with`] runs for `n` tokens of `w` under `k`.
    pub fn for_batch(k: Kernels, w: &Matrix, n: usize) -> Product {
        #[cfg(target_arch = "x86_64")]
        {
            let q8 = matches!(w.data, MatrixData::Q8_0 { .. });
            match k {
                _ if k.amx() && n < q8_amx::TILES_FROM && q8 => Product::Decode,
                _ if k.amx() && (q8_amx::TILES_FROM..q8_amx::TILES_BELOW).contains(&n) && q8 => Product::Q8Tiles,
                _ if k.amx() && n >= gemm_amx::min_batch(w) && gemm_amx::fits(w) => Product::AmxGemm,
                _ if k.avx512() && n >= gemm::MIN_BATCH && q8 => Product::Q8Gemm,
                _ if k.avx512() && n >= gemm::MIN_BATCH && w.data.q4().is_some() => Product::Q4Gemm,
                // What the matvec runs for one token on this set, for a few at once.
                _ if k.avx512() && if w.data.is_quantised() { n < gemm::MIN_BATCH } else { n <= AVX512_FLOAT_DECODE } => Product::Decode,
                _ if k.avx2() && n > 1 && n <= SMALL_BATCH && !w.data.is_quantised() => Product::Avx2Few,
                _ if k.avx2() && n < gemm::MIN_BATCH => Product::PerToken,
                _ if k.avx2() => Product::Gemm,
                _ => Product::Portable,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (k, w, n);
            Product::Portable
        }
    }

    /// Whether this kernel rounds the activations (to bf16, or per block to int8): the
    /// AMX ones. A prompt run's attention may then round its operands too.
    pub fn rounds_activations(self) -> bool {
        matches!(self, Product::AmxGemm | Product::Q8Tiles)
    }
}

/// Runs `product` (as [`Product::for_batch`] chose it for `w` under `k`) on `n` tokens.
fn run_product(k: Kernels, product: Product, w: &Matrix, x: &[f32], n: usize, y: &mut [f32]) {
    match product {
        #[cfg(target_arch = "x86_64")]
        Product::Q8Tiles => {
            let MatrixData::Q8_0 { quants, scales } = w.data else { unreachable!("q8_0 tiles take q8_0") };
            // SAFETY: the CPU has what the kernel needs (`for_batch` checked), `check`
            // found every row's quants and scales, and the lengths of `x` and `y` are
            // asserted.
            unsafe { q8_amx::matmul(quants, scales, w.rows, w.cols, x, n, y) }
        }
        #[cfg(target_arch = "x86_64")]
        Product::AmxGemm => {
            // SAFETY: the CPU has AMX and the process may use it (checked), `check`
            // found every row, and the lengths of `x` and `y` are asserted.
            unsafe { gemm_amx::matmul(w, x, n, y) }
        }
        #[cfg(target_arch = "x86_64")]
        Product::Q8Gemm => {
            let MatrixData::Q8_0 { quants, scales } = w.data else { unreachable!("the q8_0 GEMM takes q8_0") };
            // SAFETY: the CPU has what the kernel needs (checked), `check` found
            // every row's quants and scales, and the lengths of `x` and `y` are asserted.
            unsafe { gemm_q8::matmul(quants, scales, w.rows, w.cols, x, n, y) }
        }
        #[cfg(target_arch = "x86_64")]
        Product::Q4Gemm => {
            let (dtype, tiles) = w.data.q4().expect("a 4-bit matrix");
            // SAFETY: the CPU has what the kernel needs (checked), `check` found every
            // tile, and the lengths of `x` and `y` are asserted.
            unsafe { gemm_q4::matmul(dtype, tiles, w.rows, w.cols, x, n, y) }
        }
        Product::Decode => matmul_decode(k, w, x, n, y),
        #[cfg(target_arch = "x86_64")]
        Product::Avx2Few => avx2::matvec_few(w, x, n, y),
        #[cfg(target_arch = "x86_64")]
        Product::Gemm => {
            // SAFETY: `for_batch` checked AVX2/FMA/F16C, and `k.avx512()` AVX-512;
            // `check` found every row and the lengths of `x` and `y` are asserted.
            unsafe { gemm::matmul(w, x, n, y, k.avx512()) }
        }
        Product::PerToken => {
            for (xi, yi) in x.chunks_exact(w.cols).zip(y.chunks_exact_mut(w.rows)) {
                matvec_with(k, w, xi, yi);
            }
        }
        _ => {
            for (xi, yi) in x.chunks_exact(w.cols).zip(y.chunks_exact_mut(w.rows)) {
                portable::matvec(w, xi, yi);
            }
        }
    }
}

/// `Y = X W^T` for a decode batch (one token of each of `n` sequences): each token's
/// outputs are summed in an order that depends neither on `n` nor on the other tokens,
/// so a sequence's tokens do not depend on which others share its batch, and the
/// weights are read from memory once for all `n`. On AVX2, q8_0 and 4-bit tokens get
/// exactly [`matvec_with`]'s numbers, float ones those of a few-token pass (see
/// `avx2::matmul_decode`), for `n = 1` too; so do q8_0 and 4-bit tokens on VNNI
/// (`q8_vnni::matmul_decode`, `q4_vnni::matmul_decode`), and float tokens on AVX-512
/// exactly their matvec's (`float_avx512`, which the matvec runs as a batch of one);
/// the portable set runs [`matvec_with`] per token.
pub fn matmul_decode(k: Kernels, w: &Matrix, x: &[f32], n: usize, y: &mut [f32]) {
    assert_eq!(x.len(), n * w.cols);
    assert_eq!(y.len(), n * w.rows);
    w.check();
    match w.data {
        #[cfg(target_arch = "x86_64")]
        MatrixData::Q8_0 { quants, scales } if k.avx512() => {
            // SAFETY: the CPU has what the kernel needs (checked), `check` found every
            // row's quants and scales, and the lengths of `x` and `y` are asserted.
            unsafe { q8_vnni::matmul_decode(quants, scales, w.cols, x, n, y) }
        }
        #[cfg(target_arch = "x86_64")]
        MatrixData::Q4_0(_) | MatrixData::Q4_K(_) if k.avx512() => {
            // SAFETY: the CPU has what the kernel needs (checked), `check` found every
            // tile, and the lengths of `x` and `y` are asserted.
            unsafe { q4_vnni::matmul_decode(w, x, n, y) }
        }
        #[cfg(target_arch = "x86_64")]
        MatrixData::F32(_) | MatrixData::F16(_) | MatrixData::BF16(_) if k.avx512() => {
            // SAFETY: the CPU has what the kernel needs (checked), `check` found every
            // row, and the lengths of `x` and `y` are asserted.
            unsafe { float_avx512::matmul_decode(w, x, n, y) }
        }
        #[cfg(target_arch = "x86_64")]
        MatrixData::Q8_0 { .. } if k.avx2() && n == 1 => matvec_with(k, w, x, y),
        #[cfg(target_arch = "x86_64")]
        MatrixData::Q4_0(_) | MatrixData::Q4_K(_) if k.avx2() && n == 1 => matvec_with(k, w, x, y),
        #[cfg(target_arch = "x86_64")]
        MatrixData::Q4_0(_) | MatrixData::Q4_K(_) if k.avx2() => q4_avx2::matvec_many(w, x, n, y),
        #[cfg(target_arch = "x86_64")]
        _ if k.avx2() => avx2::matmul_decode(w, x, n, y),
        _ => {
            for (xi, yi) in x.chunks_exact(w.cols).zip(y.chunks_exact_mut(w.rows)) {
                portable::matvec(w, xi, yi);
            }
        }
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

/// `sum(exp(x[i] - shift))` in f64, NaN values left out: a log-softmax's normaliser
/// over a vocabulary (`shift` its largest logit), for log-probabilities and perplexity.
/// The AVX2 path takes 8 at a time with the polynomial `exp` (within 2 ulp of
/// `f32::exp`): a 100k-token vocabulary in 45-66 us against 447 with `f32::exp` (one
/// core of a Sapphire Rapids while another job ran).
pub fn sum_exp(k: Kernels, x: &[f32], shift: f32) -> f64 {
    match k {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2/FMA/F16C (checked).
        _ if k.avx2() => unsafe { avx2::sum_exp(x, shift) },
        _ => x.iter().filter(|v| !v.is_nan()).map(|&v| f64::from((v - shift).exp())).sum(),
    }
}

/// `sum(exp(b[i] - base_lse) * (b[i] - m[i] + shift))` in f64: the KL divergence of a
/// model's next-token distribution (logits `m`) from a base's (`b`), with `base_lse`
/// the base's log-sum-exp and `shift` the model's less the base's (perplexity's
/// `--kl-base`, over a whole vocabulary per scored position).
pub fn kl_sum(k: Kernels, b: &[f32], m: &[f32], base_lse: f32, shift: f32) -> f64 {
    assert_eq!(b.len(), m.len());
    match k {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2/FMA/F16C (checked); the lengths match (asserted).
        _ if k.avx2() => unsafe { avx2::kl_sum(b, m, base_lse, shift) },
        _ => b.iter().zip(m).map(|(&b, &m)| f64::from((b - base_lse).exp() * (b - m + shift))).sum(),
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

#[cfg(test)]
mod tests;
