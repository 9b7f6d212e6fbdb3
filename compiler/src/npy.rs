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

/// A real header is a short dict (about 128 bytes); numpy itself refuses headers over
/// 10000 bytes unless told otherwise.
const MAX_HEADER_LEN: u64 = 64 << 10;
/// Brackets nest two deep in a real header (the dict, the shape tuple).
const MAX_NESTING: usize = 8;

/// Checks the magic, version and header length, and the header's nesting, before the
/// header is handed to the parser: npyz allocates whatever length the file claims (up
/// to 4 GiB for a version 2 header) before reading it, and its recursive-descent parser
/// would recurse as deep as the brackets nest. Leaves `reader` at the start.
fn check_preamble(reader: &mut BufReader<File>, file_len: u64) -> Result<(), String> {
    let mut prelude = [0u8; 12];
    let have = read_up_to(reader, &mut prelude).map_err(|e| e.to_string())?;
    let prelude = &prelude[..have];
    if prelude.is_empty() {
        return Err("the file is empty".into());
    }
    if prelude.len() < 10 || &prelude[..6] != b"\x93NUMPY" {
        return Err(if prelude.starts_with(b"\x93NUMPY") || b"\x93NUMPY".starts_with(prelude) {
            "not a valid .npy file (the file ends inside its header)".into()
        } else {
            "not a .npy file (no \\x93NUMPY magic)".into()
        });
    }
    let (len_bytes, header_len) = match prelude[6] {
        1 => (2u64, u16::from_le_bytes([prelude[8], prelude[9]]) as u64),
        2 | 3 if prelude.len() == 12 => (
            4u64,
            u32::from_le_bytes([prelude[8], prelude[9], prelude[10], prelude[11]]) as u64,
        ),
        2 | 3 => return Err("not a valid .npy file (the file ends inside its header)".into()),
        v => return Err(format!("not a valid .npy file (unknown format version {v})")),
    };
    let header_end = 8 + len_bytes + header_len;
    if header_end > file_len {
        return Err(format!(
            "not a valid .npy file (its header claims {header_len} bytes, the file has {file_len})"
        ));
    }
    if header_len > MAX_HEADER_LEN {
        return Err(format!(
            "not a valid .npy file (a header of {header_len} bytes; the limit is {MAX_HEADER_LEN})"
        ));
    }
    reader
        .seek(SeekFrom::Start(8 + len_bytes))
        .map_err(|e| e.to_string())?;
    let mut header = vec![0u8; header_len as usize];
    reader.read_exact(&mut header).map_err(|e| e.to_string())?;
    let mut depth = 0usize;
    for &b in &header {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err("not a valid .npy file (brackets nested too deep in its header)".into());
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if let Some(shape) = shape_in(&header) {
        // npyz multiplies the dimensions unchecked (a panic in debug builds, a wrong
        // element count in release ones).
        if shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).is_none() {
            return Err(format!("shape {shape:?} overflows"));
        }
    }
    reader.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    Ok(())
}

/// The `shape` tuple of a header dict, if it is there and is a tuple of integers; the
/// real parser reports anything else.
fn shape_in(header: &[u8]) -> Option<Vec<u64>> {
    let text = std::str::from_utf8(header).ok()?;
    let key = text.find("'shape'").or_else(|| text.find("\"shape\""))?;
    let rest = text[key + 7..].trim_start().strip_prefix(':')?.trim_start();
    let close = match rest.chars().next()? {
        '(' => ')',
        '[' => ']',
        _ => return None,
    };
    let inner = &rest[1..rest.find(close)?];
    inner
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.trim_end_matches('L').parse::<u64>().ok())
        .collect()
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl NpyTensor {
    /// Reads and checks the header of `path`.
    pub fn open(path: &Path) -> Result<NpyTensor, PackError> {
        let file = File::open(path).map_err(|e| bad(path, e))?;
        let file_len = file.metadata().map_err(|e| bad(path, e))?.len();
        let mut reader = BufReader::new(file);
        check_preamble(&mut reader, file_len).map_err(|e| bad(path, e))?;
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
