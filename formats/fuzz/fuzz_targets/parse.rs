//! Fuzzes `Blob::parse` (header, manifest decoding, config and tensor-table validation)
//! and the typed views of whatever it accepts.
//!
//! Each input is tried twice: as is, and with both checksums recomputed. Random bytes
//! almost never carry a valid CRC-32, so without the second pass the fuzzer would spend
//! its time on the header checksum and never reach the manifest decoder or validation.

#![no_main]

use libfuzzer_sys::fuzz_target;
use olmo_format::{Blob, DType, HEADER_LEN};

fn exercise(bytes: &[u8]) {
    let Ok(blob) = Blob::parse(bytes) else { return };
    for t in &blob.manifest.tensors {
        let Some(view) = blob.tensor(&t.name) else { continue };
        let _ = match view.dtype {
            DType::F32 => view.as_f32().map(|s| s.len()),
            DType::F16 | DType::BF16 => view.as_u16_bits().map(|s| s.len()),
            DType::U32 => view.as_u32().map(|s| s.len()),
            DType::Q8_0 => view.as_q8_0().map(|(q, s)| q.len() + s.len()),
            DType::U8 => Ok(view.bytes.len()),
        };
    }
    if let Ok(Some(vocab)) = blob.vocab() {
        for id in 0..vocab.len() as u32 + 2 {
            let _ = vocab.token(id);
        }
    }
}

/// Rewrites the manifest checksum (if the header's manifest range lies in the input)
/// and the header checksum.
fn fix_checksums(bytes: &mut [u8]) {
    if bytes.len() < HEADER_LEN {
        return;
    }
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let (offset, len) = (u64_at(bytes, 16), u64_at(bytes, 24));
    if let Some(end) = offset.checked_add(len).filter(|&e| e <= bytes.len() as u64) {
        let crc = crc32fast::hash(&bytes[offset as usize..end as usize]);
        bytes[48..52].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = crc32fast::hash(&bytes[0..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    exercise(data);
    let mut fixed = data.to_vec();
    fix_checksums(&mut fixed);
    exercise(&fixed);
});
