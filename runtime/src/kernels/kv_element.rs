//! The element types of the KV cache that the attention kernels read.

use half::f16;

use crate::model::buffer::Zeroable;

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
