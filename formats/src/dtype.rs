//! Element types and physical layouts of stored tensors.

use std::fmt;

/// Number of weights sharing one scale in the [`Layout::Q8_0Rows`] layout.
pub const Q8_0_BLOCK: u64 = 32;

/// Element type of a stored tensor. The discriminant is the on-disk code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DType {
    F32 = 0,
    F16 = 1,
    BF16 = 2,
    /// Signed 8-bit values with one f16 scale per block of [`Q8_0_BLOCK`] (see [`Layout::Q8_0Rows`]).
    Q8_0 = 3,
    U8 = 4,
    U32 = 5,
}

impl DType {
    pub const ALL: [DType; 6] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::U8,
        DType::U32,
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
        }
    }

    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The layout a tensor of this type is stored in.
    pub fn layout(self) -> Layout {
        match self {
            DType::Q8_0 => Layout::Q8_0Rows,
            _ => Layout::RowMajor,
        }
    }

    /// Bytes per element for the plain types; `None` for block-quantised ones.
    pub fn element_size(self) -> Option<u64> {
        match self {
            DType::F32 | DType::U32 => Some(4),
            DType::F16 | DType::BF16 => Some(2),
            DType::U8 => Some(1),
            DType::Q8_0 => None,
        }
    }

    /// Whether matrix weights may be stored in this type.
    pub fn is_weight_type(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::Q8_0)
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
}

impl Layout {
    pub fn from_code(code: u8) -> Option<Layout> {
        match code {
            0 => Some(Layout::RowMajor),
            1 => Some(Layout::Q8_0Rows),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Layout::RowMajor => "row-major",
            Layout::Q8_0Rows => "q8_0-rows",
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Bytes a tensor of `dtype` and `shape` occupies, or `None` if that overflows a `u64`
/// (or the shape does not suit the type's layout).
pub fn byte_len(dtype: DType, shape: &[u64]) -> Option<u64> {
    match dtype.layout() {
        Layout::RowMajor => shape
            .iter()
            .try_fold(dtype.element_size()?, |acc, &d| acc.checked_mul(d)),
        Layout::Q8_0Rows => {
            let [rows, cols] = shape else { return None };
            let blocks = rows.checked_mul(cols.div_ceil(Q8_0_BLOCK))?;
            // Each block: 32 one-byte quants and one two-byte scale.
            blocks.checked_mul(Q8_0_BLOCK + 2)
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
        assert_eq!(Layout::from_code(2), None);
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
    }
}
