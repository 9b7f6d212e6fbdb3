//! Intel AMX tiles: the few instructions the prompt GEMMs use, as `asm!` (stable Rust
//! has no AMX intrinsics), and the per-process permission Linux asks for first.
//!
//! AMX adds eight tile registers (`tmm0`-`tmm7`, up to 16 rows of 64 bytes each) and a
//! matrix unit that multiplies them: `tdpbf16ps` adds a 16 x 32 bf16 tile times a
//! 32 x 16 bf16 tile (stored as 16 rows of 16 pairs, "VNNI" order) into a 16 x 16 f32
//! tile, `tdpbssd` the same for int8 with 32-bit sums (64 products per row of A).
//! One such instruction is 8192 or 16384 multiply-adds.
//!
//! Everything `unsafe` about AMX is in this file. The tile registers are not Rust
//! values: the callers name them with const generics, and each function's contract
//! says which state it needs. A thread must [`configure`] its tiles before any other
//! call here and [`release`] them when done (the tile state belongs to the thread and
//! makes context switches save 8 KiB more until released).

use std::arch::asm;
use std::sync::OnceLock;

/// Whether this CPU has AMX tiles with bf16 and int8 products and the kernel lets this
/// process use them. The first call asks Linux for the tile data state
/// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, which every Linux since 5.16
/// requires before a process touches the tiles); without it, or without the CPU
/// features, the AVX-512 kernels run as before.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| cpu_has_amx() && request_tile_permission())
}

/// CPUID leaf 7, sub-leaf 0, EDX bits 22 (AMX-BF16), 24 (AMX-TILE) and 25 (AMX-INT8).
fn cpu_has_amx() -> bool {
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    let bit = |b: u32| leaf7.edx >> b & 1 == 1;
    bit(22) && bit(24) && bit(25)
}

/// Asks Linux for the right to use the tile data state (per process, so once is
/// enough for every thread, those started later included).
fn request_tile_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM takes two integers and touches no
    // memory of ours; a kernel that does not know it returns an error.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

/// The 64-byte operand of `ldtilecfg`: palette 1, and each tile's rows and bytes per
/// row.
#[repr(C, align(64))]
pub struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    /// Every one of the eight tiles 16 rows of 64 bytes, except `A` tiles
    /// (`a_tiles`, tile numbers) whose rows are `a_bytes` long and `B` tiles
    /// (`b_tiles`) with `a_bytes / 4` rows: a product over `a_bytes` bytes of each row.
    pub fn new(a_tiles: &[usize], b_tiles: &[usize], a_bytes: u16) -> TileConfig {
        assert!(a_bytes > 0 && a_bytes <= 64 && a_bytes.is_multiple_of(4), "tiles hold 4 to 64 bytes per row");
        let mut c = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], bytes_per_row: [0; 16], rows: [0; 16] };
        for t in 0..8 {
            c.bytes_per_row[t] = 64;
            c.rows[t] = 16;
        }
        for &t in a_tiles {
            c.bytes_per_row[t] = a_bytes;
        }
        for &t in b_tiles {
            c.rows[t] = (a_bytes / 4) as u8;
        }
        c
    }
}

/// Loads `config` into the calling thread's tile registers (zeroing them).
///
/// # Safety
/// [`available`] must have returned true in this process.
#[inline]
pub unsafe fn configure(config: &TileConfig) {
    // SAFETY (of the instruction): `config` is 64 readable bytes in the layout
    // `ldtilecfg` reads, and the caller vouches that the tiles may be used.
    asm!("ldtilecfg [{}]", in(reg) config as *const TileConfig, options(nostack, readonly));
}

/// Returns the calling thread's tiles to their initial state.
///
/// # Safety
/// [`available`] must have returned true in this process.
#[inline]
pub unsafe fn release() {
    asm!("tilerelease", options(nostack, nomem));
}

/// Zeroes tile `T`.
///
/// # Safety
/// The thread's tiles must be [`configure`]d.
#[inline(always)]
pub unsafe fn zero<const T: u8>() {
    asm!("tilezero tmm{t}", t = const T, options(nostack, nomem));
}

/// Loads tile `T`'s configured rows from `base`, `stride` bytes apart.
///
/// # Safety
/// The thread's tiles must be [`configure`]d, and each of `T`'s rows at `base +
/// i * stride` readable for its configured bytes.
#[inline(always)]
pub unsafe fn load<const T: u8>(base: *const u8, stride: usize) {
    asm!("tileloadd tmm{t}, [{p} + {s}*1]", t = const T, p = in(reg) base, s = in(reg) stride, options(nostack, readonly));
}

/// [`load`] with the hint that the rows will not be read again soon (`tileloaddt1`),
/// so that they displace less of what will.
///
/// # Safety
/// As [`load`].
#[inline(always)]
pub unsafe fn load_once<const T: u8>(base: *const u8, stride: usize) {
    asm!("tileloaddt1 tmm{t}, [{p} + {s}*1]", t = const T, p = in(reg) base, s = in(reg) stride, options(nostack, readonly));
}

/// Stores tile `T`'s configured rows to `base`, `stride` bytes apart.
///
/// # Safety
/// The thread's tiles must be [`configure`]d, and each of `T`'s rows at `base +
/// i * stride` writable for its configured bytes.
#[inline(always)]
pub unsafe fn store<const T: u8>(base: *mut u8, stride: usize) {
    asm!("tilestored [{p} + {s}*1], tmm{t}", t = const T, p = in(reg) base, s = in(reg) stride, options(nostack));
}

/// `C += A B` on bf16 pairs into f32: tiles `C`, `A` (bf16 rows) and `B` (rows of
/// bf16 pairs).
///
/// # Safety
/// The thread's tiles must be [`configure`]d with shapes that fit (`A` rows = `C`
/// rows, `A` bytes per row = 4 x `B` rows, `B` bytes per row = `C` bytes per row).
#[inline(always)]
pub unsafe fn dot_bf16<const C: u8, const A: u8, const B: u8>() {
    asm!("tdpbf16ps tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B, options(nostack, nomem));
}

/// `C += A B` on signed bytes into i32: tiles `C`, `A` (int8 rows) and `B` (rows of
/// int8 quads), each sum exact.
///
/// # Safety
/// As [`dot_bf16`].
#[inline(always)]
pub unsafe fn dot_i8<const C: u8, const A: u8, const B: u8>() {
    asm!("tdpbssd tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B, options(nostack, nomem));
}
