//! Element types and physical layouts of stored tensors.

use std::fmt;

/// Number of weights sharing one scale in the [`Layout::Q8_0Rows`] layout.
pub const Q8_0_BLOCK: u64 = 32;

/// Width of a panel in the [`Layout::ColumnPanels`] layout: 2048 columns of `x` are
/// 8 KiB of f32, a quarter of a 32 KiB L1 data cache.
pub const PANEL_COLS: u64 = 2048;

/// Element type of a stored tensor. The discriminant is the on-disk code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(non_camel_case_types)] // Q4_K, as llama.cpp spells it
pub enum DType {
    F32 = 0,
    F16 = 1,
    BF16 = 2,
    /// Signed 8-bit values with one f16 scale per block of [`Q8_0_BLOCK`] (see [`Layout::Q8_0Rows`]).
    Q8_0 = 3,
    U8 = 4,
    U32 = 5,
    /// llama.cpp's Q4_0: 4-bit values offset by 8 with one f16 scale per block of 32,
    /// 4.5 bits per weight (see [`Layout::Q4Tiles`] and [`crate::q4`]).
    Q4_0 = 6,
    /// llama.cpp's Q4_K: super-blocks of 256 in 8 sub-blocks of 32, each with a 6-bit
    /// scale and a 6-bit min, an f16 scale and min per super-block; 4-bit values, 4.5 bits
    /// per weight (see [`Layout::Q4Tiles`] and [`crate::q4`]).
    Q4_K = 7,
}

impl DType {
    pub const ALL: [DType; 8] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::U8,
        DType::U32,
        DType::Q4_0,
        DType::Q4_K,
    ];

    pub fn from_code(code: u8) -> Option<DType> {
        DType::ALL.into_iter().find(|d| *d as u8 == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Q8_0 => "q8_0",
            DType::U8 => "u8",
            DType::U32 => "u32",
            DType::Q4_0 => "q4_0",
            DType::Q4_K => "q4_k",
        }
    }

    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The plain layout of this type: how a tensor of it is stored unless
    /// [`Layout::for_matrix`] chooses otherwise.
    pub fn layout(self) -> Layout {
        match self {
            DType::Q8_0 => Layout::Q8_0Rows,
            DType::Q4_0 | DType::Q4_K => Layout::Q4Tiles,
            _ => Layout::RowMajor,
        }
    }

    /// Whether this is f32, f16 or bf16.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// Bytes per element for the plain types; `None` for block-quantised ones.
    pub fn element_size(self) -> Option<u64> {
        match self {
            DType::F32 | DType::U32 => Some(4),
            DType::F16 | DType::BF16 => Some(2),
            DType::U8 => Some(1),
            DType::Q8_0 | DType::Q4_0 | DType::Q4_K => None,
        }
    }

    /// Whether matrix weights may be stored in this type.
    pub fn is_weight_type(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::Q8_0 | DType::Q4_0 | DType::Q4_K)
    }

    /// Whether this is one of the 4-bit types stored in [`Layout::Q4Tiles`].
    pub fn is_q4(self) -> bool {
        matches!(self, DType::Q4_0 | DType::Q4_K)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Physical arrangement of a tensor's bytes. The discriminant is the on-disk code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Layout {
    /// Elements in C order (last index fastest). Matrices are `[out, in]`: each output
    /// row is contiguous, which is what a matrix-vector product streams through.
    RowMajor = 0,
    /// A `[rows, cols]` matrix quantised per row in blocks of 32: first every row's
    /// `ceil(cols / 32) * 32` signed bytes (a row's tail past `cols` is zero), then every
    /// row's `ceil(cols / 32)` f16 scales. Weight `(r, c)` is
    /// `quants[r][c] * scales[r][c / 32]`.
    Q8_0Rows = 1,
    /// A `[rows, cols]` f32, f16 or bf16 matrix cut into panels of [`PANEL_COLS`]
    /// columns (the last one narrower when `cols` is not a multiple), stored one panel
    /// after another, each row-major. Weight `(r, c)`, in panel `p = c / PANEL_COLS` of
    /// width `w_p`, is element `p * PANEL_COLS * rows + r * w_p + c % PANEL_COLS`.
    ///
    /// A matrix-vector product then streams each panel front to back against one
    /// 8 KiB slice of `x`, which stays in L1; against a whole row of `x` that does not
    /// fit (the 1B's 8192-column `down_proj`: 32 KiB), the same product ran at half the
    /// memory speed.
    ColumnPanels = 2,
    /// A `[rows, cols]` q4_0 or q4_k matrix in tiles of [`crate::q4::TILE_ROWS`] rows by
    /// [`crate::q4::TILE_COLS`] columns (rows and columns padded with zeros to whole
    /// tiles), each [`crate::q4::TILE_BYTES`] bytes: 1024 bytes of 4-bit values, eight
    /// rows interleaved four columns at a time, then 128 bytes of the tile's scales. A
    /// group of eight rows is one run of tiles. See [`crate::q4`].
    ///
    /// Eight rows side by side let a one-token product keep one row per 32-bit lane and
    /// apply each block's scales to eight rows with one multiply, and the matrix stays
    /// one sequential stream.
    Q4Tiles = 3,
}

impl Layout {
    pub fn from_code(code: u8) -> Option<Layout> {
        match code {
            0 => Some(Layout::RowMajor),
            1 => Some(Layout::Q8_0Rows),
            2 => Some(Layout::ColumnPanels),
            3 => Some(Layout::Q4Tiles),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Layout::RowMajor => "row-major",
            Layout::Q8_0Rows => "q8_0-rows",
            Layout::ColumnPanels => "column-panels",
            Layout::Q4Tiles => "q4-tiles",
        }
    }

    /// The layout `olmoc` stores a weight matrix of `dtype` with `cols` columns in:
    /// q8_0 rows; column panels for a float matrix wider than one panel, unless it is
    /// a `lookup` table (the embedding, read one row at a time); else row-major.
    pub fn for_matrix(dtype: DType, cols: u64, lookup: bool) -> Layout {
        if dtype.is_float() && cols > PANEL_COLS && !lookup {
            Layout::ColumnPanels
        } else {
            dtype.layout()
        }
    }

    /// Whether a tensor of `dtype` and `shape` can be stored in this layout.
    pub fn holds(self, dtype: DType, shape: &[u64]) -> bool {
        match self {
            Layout::RowMajor => dtype.element_size().is_some(),
            Layout::Q8_0Rows => dtype == DType::Q8_0 && shape.len() == 2,
            Layout::ColumnPanels => dtype.is_float() && shape.len() == 2,
            Layout::Q4Tiles => dtype.is_q4() && shape.len() == 2,
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Bytes a tensor of `dtype` and `shape` occupies (in any layout that [holds](Layout::holds)
/// it: panels only reorder the elements), or `None` if that overflows a `u64` (or the
/// shape does not suit the type's layout).
pub fn byte_len(dtype: DType, shape: &[u64]) -> Option<u64> {
    match dtype.layout() {
        Layout::RowMajor | Layout::ColumnPanels => shape
            .iter()
            .try_fold(dtype.element_size()?, |acc, &d| acc.checked_mul(d)),
        Layout::Q8_0Rows => {
            let [rows, cols] = shape else { return None };
            let blocks = rows.checked_mul(cols.div_ceil(Q8_0_BLOCK))?;
            // Each block: 32 one-byte quants and one two-byte scale.
            blocks.checked_mul(Q8_0_BLOCK + 2)
        }
        Layout::Q4Tiles => {
            let [rows, cols] = shape else { return None };
            crate::q4::tiles_len(*rows, *cols)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_code(d as u8), Some(d));
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        assert_eq!(DType::from_code(200), None);
        for l in [Layout::RowMajor, Layout::Q8_0Rows, Layout::ColumnPanels, Layout::Q4Tiles] {
            assert_eq!(Layout::from_code(l as u8), Some(l));
        }
        assert_eq!(Layout::from_code(4), None);
    }

    #[test]
    fn matrix_layouts() {
        assert_eq!(Layout::for_matrix(DType::F16, 8192, false), Layout::ColumnPanels);
        assert_eq!(Layout::for_matrix(DType::F32, PANEL_COLS + 1, false), Layout::ColumnPanels);
        assert_eq!(Layout::for_matrix(DType::F32, PANEL_COLS, false), Layout::RowMajor);
        assert_eq!(Layout::for_matrix(DType::BF16, 8192, true), Layout::RowMajor);
        assert_eq!(Layout::for_matrix(DType::Q8_0, 8192, false), Layout::Q8_0Rows);
        assert!(Layout::ColumnPanels.holds(DType::BF16, &[2, 3]));
        assert!(!Layout::ColumnPanels.holds(DType::Q8_0, &[2, 3]));
        assert!(!Layout::ColumnPanels.holds(DType::U8, &[2, 3]));
        assert!(!Layout::ColumnPanels.holds(DType::F32, &[6]));
        assert!(!Layout::RowMajor.holds(DType::Q8_0, &[2, 64]));
        assert!(!Layout::Q8_0Rows.holds(DType::F16, &[2, 64]));
        for q4 in [DType::Q4_0, DType::Q4_K] {
            assert_eq!(Layout::for_matrix(q4, 8192, false), Layout::Q4Tiles);
            assert_eq!(Layout::for_matrix(q4, 8192, true), Layout::Q4Tiles);
            assert!(Layout::Q4Tiles.holds(q4, &[2, 64]));
            assert!(!Layout::Q4Tiles.holds(q4, &[64]));
            assert!(!Layout::RowMajor.holds(q4, &[2, 64]));
            assert!(!Layout::Q8_0Rows.holds(q4, &[2, 64]));
        }
        assert!(!Layout::Q4Tiles.holds(DType::Q8_0, &[2, 64]));
        assert!(!Layout::Q4Tiles.holds(DType::F32, &[2, 64]));
    }

    #[test]
    fn byte_lengths() {
        assert_eq!(byte_len(DType::F32, &[3, 5]), Some(60));
        assert_eq!(byte_len(DType::BF16, &[3, 5]), Some(30));
        assert_eq!(byte_len(DType::Q8_0, &[2, 64]), Some(2 * 2 * 34));
        // A row of 36 needs two blocks, the second padded.
        assert_eq!(byte_len(DType::Q8_0, &[1, 36]), Some(68));
        assert_eq!(byte_len(DType::Q8_0, &[7]), None);
        assert_eq!(byte_len(DType::F32, &[u64::MAX, 2]), None);
        assert_eq!(byte_len(DType::F32, &[]), Some(4));
        // Whole tiles of 8 x 256: 4.5 bits per weight, padded.
        assert_eq!(byte_len(DType::Q4_0, &[16, 512]), Some(16 * 512 * 9 / 16));
        assert_eq!(byte_len(DType::Q4_K, &[16, 512]), Some(16 * 512 * 9 / 16));
        assert_eq!(byte_len(DType::Q4_K, &[9, 257]), Some(2 * 2 * 1152));
        assert_eq!(byte_len(DType::Q4_0, &[1, 1]), Some(1152));
        assert_eq!(byte_len(DType::Q4_0, &[7]), None);
        assert_eq!(byte_len(DType::Q4_K, &[u64::MAX, 256]), None);
    }
}
