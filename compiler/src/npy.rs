//! Reading one `.npy` file per tensor: headers first (so a whole checkpoint is checked
//! before anything is written), data later, converted to f32.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use npyz::{DType, NpyHeader, Order};

use crate::PackError;

/// Element types a weight file may hold; everything is converted to f32 on reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyElement {
    F16,
    F32,
    F64,
}

impl NpyElement {
    fn size(self) -> u64 {
        match self {
            NpyElement::F16 => 2,
            NpyElement::F32 => 4,
            NpyElement::F64 => 8,
        }
    }
}

/// A checked `.npy` header: C order, a float type, and exactly as many data bytes as
/// the shape needs.
#[derive(Debug, Clone)]
pub struct NpyTensor {
    pub path: PathBuf,
    pub shape: Vec<u64>,
    element: NpyElement,
    big_endian: bool,
    data_offset: u64,
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> PackError {
    PackError::Input(format!("{}: {reason}", path.display()))
}

impl NpyTensor {
    /// Reads and checks the header of `path`.
    pub fn open(path: &Path) -> Result<NpyTensor, PackError> {
        let file = File::open(path).map_err(|e| bad(path, e))?;
        let file_len = file.metadata().map_err(|e| bad(path, e))?.len();
        let mut reader = BufReader::new(file);
        let header = NpyHeader::from_reader(&mut reader)
            .map_err(|e| bad(path, format!("not a valid .npy file ({e})")))?;
        let data_offset = reader.stream_position().map_err(|e| bad(path, e))?;
        if header.order() == Order::Fortran && header.shape().iter().filter(|&&d| d > 1).count() > 1
        {
            return Err(bad(
                path,
                "Fortran-order array; save it in C order (numpy.ascontiguousarray)",
            ));
        }
        let (element, big_endian) = match header.dtype() {
            DType::Plain(ts) => match ts.to_string().as_str() {
                "<f2" => (NpyElement::F16, false),
                ">f2" => (NpyElement::F16, true),
                "<f4" => (NpyElement::F32, false),
                ">f4" => (NpyElement::F32, true),
                "<f8" => (NpyElement::F64, false),
                ">f8" => (NpyElement::F64, true),
                other => {
                    return Err(bad(
                        path,
                        format!("dtype {other} is not supported (need f16, f32 or f64)"),
                    ))
                }
            },
            other => {
                return Err(bad(
                    path,
                    format!("dtype {other:?} is not supported (need f16, f32 or f64)"),
                ))
            }
        };
        let shape = header.shape().to_vec();
        let needed = shape
            .iter()
            .try_fold(element.size(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(path, format!("shape {shape:?} overflows")))?;
        let present = file_len - data_offset;
        if present != needed {
            return Err(bad(
                path,
                format!(
                    "{} data bytes for shape {shape:?} needs {needed}: the file is {}",
                    present,
                    if present < needed { "truncated" } else { "too long" }
                ),
            ));
        }
        Ok(NpyTensor {
            path: path.to_path_buf(),
            shape,
            element,
            big_endian,
            data_offset,
        })
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product::<u64>() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the data, converted to f32, appending to `out`.
    pub fn read_f32_into(&self, out: &mut Vec<f32>) -> Result<(), PackError> {
        let mut file = File::open(&self.path).map_err(|e| bad(&self.path, e))?;
        file.seek(SeekFrom::Start(self.data_offset))
            .map_err(|e| bad(&self.path, e))?;
        let mut raw = vec![0u8; self.len() * self.element.size() as usize];
        file.read_exact(&mut raw)
            .map_err(|e| bad(&self.path, format!("reading data: {e}")))?;
        out.reserve(self.len());
        let be = self.big_endian;
        match self.element {
            NpyElement::F16 => out.extend(raw.chunks_exact(2).map(|c| {
                let bits = [c[0], c[1]];
                let bits = if be { u16::from_be_bytes(bits) } else { u16::from_le_bytes(bits) };
                half::f16::from_bits(bits).to_f32()
            })),
            NpyElement::F32 => out.extend(raw.chunks_exact(4).map(|c| {
                let b = [c[0], c[1], c[2], c[3]];
                if be { f32::from_be_bytes(b) } else { f32::from_le_bytes(b) }
            })),
            NpyElement::F64 => out.extend(raw.chunks_exact(8).map(|c| {
                let b: [u8; 8] = c.try_into().unwrap();
                (if be { f64::from_be_bytes(b) } else { f64::from_le_bytes(b) }) as f32
            })),
        }
        Ok(())
    }
}
