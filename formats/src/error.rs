use thiserror::Error;

/// Every reason a file is refused as a blob. Messages are one line and name the part of
/// the file (and the tensor, where there is one) that is wrong.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum FormatError {
    /// The file has no bytes at all.
    #[error("the file is empty")]
    Empty,
    /// The first eight bytes are not `OLMOBLOB`.
    #[error("not an olmo blob (bad magic bytes)")]
    BadMagic,
    /// The file ends before a region the header (or the header itself) needs.
    #[error("file is truncated: the {what} needs {needed} bytes but the file has {file_len}")]
    Truncated {
        what: &'static str,
        needed: u64,
        file_len: u64,
    },
    /// Written by a newer olmoc than this reader understands.
    #[error("this file is format version {found}, this olmort reads version {supported}: it needs a newer olmort")]
    NewerVersion { found: u32, supported: u32 },
    /// Written in an older format this reader no longer reads.
    #[error("this file is format version {found}, this olmort reads version {supported}: repack it with this olmoc")]
    OlderVersion { found: u32, supported: u32 },
    /// The header's own checksum does not match its bytes.
    #[error("header checksum mismatch: the header is corrupt")]
    HeaderChecksum,
    /// A header field is inconsistent.
    #[error("bad header: {0}")]
    BadHeader(&'static str),
    /// Bytes follow the end of the data region.
    #[error("file has {file_len} bytes but its data region ends at {expected}")]
    TrailingBytes { expected: u64, file_len: u64 },
    /// The manifest's bytes do not match the checksum in the header.
    #[error("manifest checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the manifest is corrupt")]
    ManifestChecksum { stored: u32, computed: u32 },
    /// The manifest bytes do not decode.
    #[error("manifest cannot be decoded: {0}")]
    ManifestDecode(String),
    /// A configuration field is missing, zero, absurd or inconsistent.
    #[error("bad model config: {field}: {reason}")]
    Config { field: &'static str, reason: String },
    /// A tensor's dtype code is not one this reader knows.
    #[error("tensor {name}: unknown dtype code {code}")]
    UnknownDType { name: String, code: u8 },
    /// A tensor's layout code is not one this reader knows.
    #[error("tensor {name}: unknown layout code {code}")]
    UnknownLayout { name: String, code: u8 },
    /// A tensor's dtype and layout do not belong together, or the dtype is wrong for its role.
    #[error("tensor {name}: {reason}")]
    BadType { name: String, reason: String },
    /// The shape times the element size does not fit in 64 bits.
    #[error("tensor {name}: size of shape {shape:?} overflows")]
    SizeOverflow { name: String, shape: Vec<u64> },
    /// The stored byte length disagrees with shape x dtype.
    #[error("tensor {name}: byte length {found} but shape {shape:?} as {dtype} needs {expected}")]
    ByteLength {
        name: String,
        shape: Vec<u64>,
        dtype: String,
        expected: u64,
        found: u64,
    },
    /// The tensor starts off its required alignment.
    #[error("tensor {name}: offset {offset} is not a multiple of {align}")]
    Misaligned { name: String, offset: u64, align: u64 },
    /// The tensor reaches past the end of the data region.
    #[error("tensor {name}: bytes [{offset}, {offset}+{len}) lie outside the data region of {data_len} bytes")]
    OutOfBounds {
        name: String,
        offset: u64,
        len: u64,
        data_len: u64,
    },
    /// Tensors are stored in offset order without overlap; this one starts before the previous ends.
    #[error("tensor {name}: starts at {offset}, before the previous tensor {previous} ends at {previous_end}")]
    Overlap {
        name: String,
        offset: u64,
        previous: String,
        previous_end: u64,
    },
    /// The last tensor does not end where the data region does.
    #[error("data region has {data_len} bytes but its last tensor ends at {end}")]
    UnusedData { end: u64, data_len: u64 },
    /// Two entries share a name.
    #[error("tensor {name} appears twice in the tensor table")]
    Duplicate { name: String },
    /// A tensor the configuration requires is absent.
    #[error("tensor {name} is missing from the tensor table")]
    Missing { name: String },
    /// An entry names no tensor the configuration has.
    #[error("tensor {name} is not part of this model (unexpected name)")]
    Unexpected { name: String },
    /// A tensor's shape disagrees with the configuration.
    #[error("tensor {name}: shape {found:?}, but the config needs {expected:?}")]
    Shape {
        name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    /// The vocabulary description is inconsistent.
    #[error("vocabulary: {0}")]
    Vocab(String),
    /// The chat templates are inconsistent.
    #[error("chat template: {0}")]
    Chat(String),
}
