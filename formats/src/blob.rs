use std::collections::HashMap;

use crate::dtype::byte_len;
use crate::names::{TensorRole, VOCAB_BYTES, VOCAB_OFFSETS};
use crate::{DType, FormatError, Header, Manifest, TensorEntry, HEADER_LEN, TENSOR_ALIGN};

/// A validated blob over the bytes of a whole file (typically a read-only memory map).
///
/// Construction checks the header, the manifest checksum, the configuration and every
/// tensor entry; it reads the header and manifest only, never tensor data, so it costs
/// the same for every model size. Every slice it hands out afterwards lies inside the
/// data region by construction.
#[derive(Debug)]
pub struct Blob<'a> {
    pub header: Header,
    pub manifest: Manifest,
    data: &'a [u8],
    index: HashMap<String, usize>,
}

/// One tensor's entry and bytes.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    pub entry: &'a TensorEntry,
    pub dtype: DType,
    pub bytes: &'a [u8],
}

impl<'a> Blob<'a> {
    /// Validates `file` (the complete file contents) and indexes its tensors.
    pub fn parse(file: &'a [u8]) -> Result<Blob<'a>, FormatError> {
        let file_len = file.len() as u64;
        let header = Header::parse(&file[..file.len().min(HEADER_LEN)], file_len)?;
        // Header::parse proved both regions lie inside the file.
        let manifest_bytes = &file[header.manifest_offset as usize
            ..(header.manifest_offset + header.manifest_len) as usize];
        let computed = crc32fast::hash(manifest_bytes);
        if computed != header.manifest_crc32 {
            return Err(FormatError::ManifestChecksum {
                stored: header.manifest_crc32,
                computed,
            });
        }
        let manifest = Manifest::decode(manifest_bytes)?;
        let data = &file[header.data_offset as usize..];
        let index = validate_manifest(&manifest, header.data_len)?;
        Ok(Blob {
            header,
            manifest,
            data,
            index,
        })
    }

    /// The tensor called `name`, if the blob has one.
    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        let entry = &self.manifest.tensors[*self.index.get(name)?];
        Some(TensorView {
            entry,
            // Validated: every entry's dtype code is known.
            dtype: DType::from_code(entry.dtype)?,
            // Validated: offset + byte_len <= data.len().
            bytes: &self.data[entry.offset as usize..(entry.offset + entry.byte_len) as usize],
        })
    }

    /// Like [`Blob::tensor`], for tensors validation guarantees are present.
    pub fn required(&self, name: &str) -> Result<TensorView<'_>, FormatError> {
        self.tensor(name).ok_or_else(|| FormatError::Missing {
            name: name.to_string(),
        })
    }

    /// The packed vocabulary, if there is one.
    pub fn vocab(&self) -> Result<Option<crate::vocab::VocabView<'_>>, FormatError> {
        let Some(info) = &self.manifest.vocab else {
            return Ok(None);
        };
        let offsets = self.required(VOCAB_OFFSETS)?.as_u32()?;
        let bytes = self.required(VOCAB_BYTES)?.bytes;
        Ok(Some(crate::vocab::VocabView::new(info, offsets, bytes)))
    }

    /// The data region (tensor bytes), for whole-file checks such as `olmoc verify`.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }
}

/// Marker for plain element types any bit pattern of which is a valid value.
///
/// # Safety
/// Implementors must have no padding, no invalid bit patterns and no drop glue.
unsafe trait Plain: Copy {}
// SAFETY: every 32-bit pattern is some f32 (NaNs included); no padding, no drop glue.
unsafe impl Plain for f32 {}
// SAFETY: every bit pattern is a u16; no padding, no drop glue.
unsafe impl Plain for u16 {}
// SAFETY: every bit pattern is a u32; no padding, no drop glue.
unsafe impl Plain for u32 {}
// SAFETY: every bit pattern is an i8; no padding, no drop glue.
unsafe impl Plain for i8 {}

/// Reinterprets `bytes` as a slice of `T` after checking length and alignment.
fn cast<'b, T: Plain>(name: &str, bytes: &'b [u8]) -> Result<&'b [T], FormatError> {
    let size = std::mem::size_of::<T>();
    let align = std::mem::align_of::<T>();
    if !(bytes.as_ptr() as usize).is_multiple_of(align) {
        return Err(FormatError::Misaligned {
            name: name.to_string(),
            offset: bytes.as_ptr() as u64,
            align: align as u64,
        });
    }
    if !bytes.len().is_multiple_of(size) {
        return Err(FormatError::BadType {
            name: name.to_string(),
            reason: format!("{} bytes is not a whole number of {size}-byte elements", bytes.len()),
        });
    }
    // SAFETY: the pointer is aligned for T (checked above), the length covers exactly
    // `bytes.len() / size` whole elements inside `bytes`, T accepts every bit pattern
    // (the `Plain` contract), and the result borrows `bytes`, so it cannot outlive it.
    // The bytes are never written through this view.
    Ok(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) })
}

impl<'a> TensorView<'a> {
    fn expect(&self, dtype: DType) -> Result<(), FormatError> {
        if self.dtype != dtype {
            return Err(FormatError::BadType {
                name: self.entry.name.clone(),
                reason: format!("is {}, expected {}", self.dtype, dtype),
            });
        }
        Ok(())
    }

    pub fn as_f32(&self) -> Result<&'a [f32], FormatError> {
        self.expect(DType::F32)?;
        cast(&self.entry.name, self.bytes)
    }

    /// f16 or bf16 elements as their raw bits.
    pub fn as_u16_bits(&self) -> Result<&'a [u16], FormatError> {
        if !matches!(self.dtype, DType::F16 | DType::BF16) {
            return Err(FormatError::BadType {
                name: self.entry.name.clone(),
                reason: format!("is {}, expected f16 or bf16", self.dtype),
            });
        }
        cast(&self.entry.name, self.bytes)
    }

    pub fn as_u32(&self) -> Result<&'a [u32], FormatError> {
        self.expect(DType::U32)?;
        cast(&self.entry.name, self.bytes)
    }

    /// A q4_0 or q4_k matrix's tiles; see [`crate::q4`].
    pub fn as_q4_tiles(&self) -> Result<&'a [u8], FormatError> {
        let [rows, cols] = self.entry.shape[..] else {
            return Err(FormatError::BadType {
                name: self.entry.name.clone(),
                reason: format!("is {} of shape {:?}, expected a 4-bit matrix", self.dtype, self.entry.shape),
            });
        };
        if !self.dtype.is_q4() {
            return Err(FormatError::BadType {
                name: self.entry.name.clone(),
                reason: format!("is {}, expected q4_0 or q4_k", self.dtype),
            });
        }
        // Validation proved this; checked again for a view that was not validated.
        let expected = crate::q4::tiles_len(rows, cols);
        if expected != Some(self.bytes.len() as u64) {
            return Err(FormatError::ByteLength {
                name: self.entry.name.clone(),
                shape: self.entry.shape.clone(),
                dtype: self.dtype.to_string(),
                expected: expected.unwrap_or(u64::MAX),
                found: self.bytes.len() as u64,
            });
        }
        Ok(self.bytes)
    }

    /// A q8_0 matrix as (quants, f16 scale bits); see [`crate::Layout::Q8_0Rows`].
    pub fn as_q8_0(&self) -> Result<(&'a [i8], &'a [u16]), FormatError> {
        self.expect(DType::Q8_0)?;
        let [rows, cols] = self.entry.shape[..] else {
            return Err(FormatError::BadType {
                name: self.entry.name.clone(),
                reason: "q8_0 tensors must be matrices".into(),
            });
        };
        // Validation proved byte_len == rows * blocks * 34, so the quants (32 bytes per
        // block) end inside the bytes and the scales (2 per block) fill the rest; the
        // checks below keep that true even for a view that was not validated.
        let blocks = rows.checked_mul(cols.div_ceil(crate::Q8_0_BLOCK));
        let quant_len = blocks
            .and_then(|b| b.checked_mul(crate::Q8_0_BLOCK))
            .and_then(|n| usize::try_from(n).ok());
        let split = quant_len.and_then(|n| self.bytes.split_at_checked(n));
        let Some((q, s)) = split.filter(|(_, s)| Some(s.len() as u64 / 2) == blocks) else {
            return Err(FormatError::ByteLength {
                name: self.entry.name.clone(),
                shape: self.entry.shape.clone(),
                dtype: self.dtype.to_string(),
                expected: crate::dtype::byte_len(DType::Q8_0, &self.entry.shape).unwrap_or(u64::MAX),
                found: self.bytes.len() as u64,
            });
        };
        Ok((cast(&self.entry.name, q)?, cast(&self.entry.name, s)?))
    }
}

/// Checks every tensor entry against the data region and the configuration; returns the
/// name -> entry index.
fn validate_manifest(m: &Manifest, data_len: u64) -> Result<HashMap<String, usize>, FormatError> {
    m.config.validate()?;
    if let Some(chat) = &m.chat {
        chat.validate()?;
    }
    let mut index = HashMap::with_capacity(m.tensors.len());
    let mut previous: Option<(&str, u64)> = None;
    for (i, t) in m.tensors.iter().enumerate() {
        let name = || t.name.clone();
        let dtype = t.dtype()?;
        let layout = t.layout()?;
        if !layout.holds(dtype, &t.shape) {
            return Err(FormatError::BadType {
                name: name(),
                reason: format!("{dtype} of shape {:?} cannot be stored in the {layout} layout", t.shape),
            });
        }
        let expected = byte_len(dtype, &t.shape).ok_or_else(|| {
            if dtype.element_size().is_none() && t.shape.len() != 2 {
                FormatError::BadType {
                    name: name(),
                    reason: format!("{dtype} needs a matrix, shape is {:?}", t.shape),
                }
            } else {
                FormatError::SizeOverflow {
                    name: name(),
                    shape: t.shape.clone(),
                }
            }
        })?;
        if expected != t.byte_len {
            return Err(FormatError::ByteLength {
                name: name(),
                shape: t.shape.clone(),
                dtype: dtype.to_string(),
                expected,
                found: t.byte_len,
            });
        }
        if t.offset % TENSOR_ALIGN != 0 {
            return Err(FormatError::Misaligned {
                name: name(),
                offset: t.offset,
                align: TENSOR_ALIGN,
            });
        }
        let end = t.offset.checked_add(t.byte_len).filter(|&e| e <= data_len);
        let Some(end) = end else {
            return Err(FormatError::OutOfBounds {
                name: name(),
                offset: t.offset,
                len: t.byte_len,
                data_len,
            });
        };
        if let Some((prev, prev_end)) = previous {
            if t.offset < prev_end {
                return Err(FormatError::Overlap {
                    name: name(),
                    offset: t.offset,
                    previous: prev.to_string(),
                    previous_end: prev_end,
                });
            }
        }
        previous = Some((&t.name, end));
        if index.insert(t.name.clone(), i).is_some() {
            return Err(FormatError::Duplicate { name: name() });
        }
    }
    let last_end = previous.map_or(0, |(_, e)| e);
    if last_end != data_len {
        return Err(FormatError::UnusedData {
            end: last_end,
            data_len,
        });
    }

    let mut expected: Vec<(String, TensorRole, Vec<u64>)> = m.config.model_tensors();
    if let Some(v) = &m.vocab {
        if v.n_tokens == 0 || v.n_tokens > m.config.vocab_size {
            return Err(FormatError::Vocab(format!(
                "{} tokens for a model with vocab_size {}",
                v.n_tokens, m.config.vocab_size
            )));
        }
        if let Some(bad) = v.special_ids.iter().find(|&&id| id >= v.n_tokens) {
            return Err(FormatError::Vocab(format!(
                "special token id {bad} is not below {}",
                v.n_tokens
            )));
        }
        let bytes_len = m.tensors[*index.get(VOCAB_BYTES).ok_or_else(|| FormatError::Missing {
            name: VOCAB_BYTES.into(),
        })?]
        .shape
        .clone();
        expected.push((VOCAB_BYTES.into(), TensorRole::VocabBytes, bytes_len));
        expected.push((
            VOCAB_OFFSETS.into(),
            TensorRole::VocabOffsets,
            vec![v.n_tokens as u64 + 1],
        ));
    }
    for (name, role, shape) in &expected {
        let t = &m.tensors[*index.get(name).ok_or_else(|| FormatError::Missing { name: name.clone() })?];
        if &t.shape != shape {
            return Err(FormatError::Shape {
                name: name.clone(),
                expected: shape.clone(),
                found: t.shape.clone(),
            });
        }
        let dtype = t.dtype()?;
        let ok = match role {
            TensorRole::Matrix => dtype.is_weight_type(),
            TensorRole::Norm => dtype == DType::F32,
            TensorRole::VocabBytes => dtype == DType::U8 && shape.len() == 1,
            TensorRole::VocabOffsets => dtype == DType::U32,
        };
        if !ok {
            return Err(FormatError::BadType {
                name: name.clone(),
                reason: format!("dtype {dtype} is not allowed for a {role:?} tensor"),
            });
        }
    }
    if index.len() != expected.len() {
        let known: std::collections::HashSet<&str> =
            expected.iter().map(|(n, _, _)| n.as_str()).collect();
        let extra = m.tensors.iter().find(|t| !known.contains(t.name.as_str()));
        return Err(FormatError::Unexpected {
            name: extra.map_or_else(String::new, |t| t.name.clone()),
        });
    }
    Ok(index)
}
