//! The fixed 64-byte little-endian header, checked before anything else is read.

use crate::FormatError;

/// First eight bytes of every blob.
pub const MAGIC: [u8; 8] = *b"OLMOBLOB";
/// Bumped only when the structure of the file changes; new metadata goes in the manifest.
pub const FORMAT_VERSION: u32 = 2;
/// Size of the header in bytes; the manifest starts right after it.
pub const HEADER_LEN: usize = 64;
/// The data region starts on a page boundary so the mapped tensors are page-aligned too.
pub const DATA_ALIGN: u64 = 4096;
/// Every tensor starts on a cache-line boundary (and so is aligned for any element type).
pub const TENSOR_ALIGN: u64 = 64;

/// The decoded header. Offsets are absolute file offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub manifest_offset: u64,
    pub manifest_len: u64,
    pub manifest_crc32: u32,
    pub data_offset: u64,
    pub data_len: u64,
}

impl Header {
    /// Serialises the header, including its own trailing checksum.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.manifest_offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.manifest_len.to_le_bytes());
        b[32..40].copy_from_slice(&self.data_offset.to_le_bytes());
        b[40..48].copy_from_slice(&self.data_len.to_le_bytes());
        b[48..52].copy_from_slice(&self.manifest_crc32.to_le_bytes());
        // 52..60 reserved, zero.
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checks the header of a file of `file_len` bytes whose first bytes are `bytes`.
    ///
    /// Order matters for the messages users see: a file that is not a blob at all says so
    /// before anything else, and a file from a newer writer says so before its checksum
    /// (whose coverage a newer version may have changed) is looked at.
    pub fn parse(bytes: &[u8], file_len: u64) -> Result<Header, FormatError> {
        if bytes.is_empty() {
            return Err(FormatError::Empty);
        }
        if bytes.len() < MAGIC.len() {
            // A file cut inside the magic is a truncated blob if what is there matches.
            if MAGIC.starts_with(bytes) {
                return Err(FormatError::Truncated {
                    what: "header",
                    needed: HEADER_LEN as u64,
                    file_len,
                });
            }
            return Err(FormatError::BadMagic);
        }
        if bytes[0..8] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        if bytes.len() < HEADER_LEN {
            return Err(FormatError::Truncated {
                what: "header",
                needed: HEADER_LEN as u64,
                file_len,
            });
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
        let version = u32_at(8);
        if version > FORMAT_VERSION {
            return Err(FormatError::NewerVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if version < FORMAT_VERSION {
            return Err(FormatError::OlderVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let stored_crc = u32_at(60);
        let actual_crc = crc32fast::hash(&bytes[0..60]);
        if stored_crc != actual_crc {
            return Err(FormatError::HeaderChecksum);
        }
        let header_len = u32_at(12);
        if header_len as usize != HEADER_LEN || bytes[52..60].iter().any(|&b| b != 0) {
            return Err(FormatError::BadHeader("header length or reserved bytes"));
        }
        let header = Header {
            version,
            manifest_offset: u64_at(16),
            manifest_len: u64_at(24),
            data_offset: u64_at(32),
            data_len: u64_at(40),
            manifest_crc32: u32_at(48),
        };
        header.check_regions(file_len)?;
        Ok(header)
    }

    /// The manifest follows the header; the data region is page-aligned, after the manifest,
    /// and runs exactly to the end of the file.
    fn check_regions(&self, file_len: u64) -> Result<(), FormatError> {
        if self.manifest_offset != HEADER_LEN as u64 {
            return Err(FormatError::BadHeader("manifest does not follow the header"));
        }
        let manifest_end = self
            .manifest_offset
            .checked_add(self.manifest_len)
            .ok_or(FormatError::BadHeader("manifest length overflows"))?;
        if manifest_end > file_len {
            return Err(FormatError::Truncated {
                what: "manifest",
                needed: manifest_end,
                file_len,
            });
        }
        if !self.data_offset.is_multiple_of(DATA_ALIGN) {
            return Err(FormatError::BadHeader("data region is not page-aligned"));
        }
        if self.data_offset < manifest_end {
            return Err(FormatError::BadHeader("data region overlaps the manifest"));
        }
        let data_end = self
            .data_offset
            .checked_add(self.data_len)
            .ok_or(FormatError::BadHeader("data length overflows"))?;
        if data_end > file_len {
            return Err(FormatError::Truncated {
                what: "data region",
                needed: data_end,
                file_len,
            });
        }
        if data_end < file_len {
            return Err(FormatError::TrailingBytes {
                expected: data_end,
                file_len,
            });
        }
        Ok(())
    }
}
