//! Writing blobs: plan the layout from the tensor list, stream the tensors, then write
//! the manifest and header (which carry the tensors' checksums) last.

use std::io::{self, Seek, SeekFrom, Write};

use crate::dtype::byte_len;
use crate::{
    ChatInfo, DType, FormatError, Header, Layout, Manifest, ModelConfig, TensorEntry, TensorRole, VocabInfo,
    DATA_ALIGN, EMBED_TOKENS, FORMAT_VERSION, HEADER_LEN, TENSOR_ALIGN,
};

/// A tensor to be written: its name, stored type, layout and logical shape.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub layout: Layout,
    pub shape: Vec<u64>,
}

impl TensorSpec {
    /// A tensor in its type's plain layout ([`DType::layout`]).
    pub fn plain(name: impl Into<String>, dtype: DType, shape: Vec<u64>) -> TensorSpec {
        TensorSpec { name: name.into(), dtype, layout: dtype.layout(), shape }
    }

    /// How `olmoc` stores a model tensor ([`ModelConfig::model_tensors`]) with matrices
    /// in `weights`: matrices in that type and [`Layout::for_matrix`], norms as f32.
    pub fn model_tensor(name: String, role: TensorRole, shape: Vec<u64>, weights: DType) -> TensorSpec {
        if role == TensorRole::Matrix {
            let layout = Layout::for_matrix(weights, shape[1], name == EMBED_TOKENS);
            TensorSpec { name, dtype: weights, layout, shape }
        } else {
            TensorSpec::plain(name, DType::F32, shape)
        }
    }
}

/// The complete layout of a blob before any byte is written.
#[derive(Debug, Clone)]
pub struct BlobPlan {
    pub manifest: Manifest,
    pub data_offset: u64,
    pub data_len: u64,
}

fn align_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

impl BlobPlan {
    /// Lays the tensors out in the given order, each at the next aligned offset.
    pub fn new(
        producer: &str,
        config: ModelConfig,
        vocab: Option<VocabInfo>,
        tensors: &[TensorSpec],
    ) -> Result<BlobPlan, FormatError> {
        let mut entries = Vec::with_capacity(tensors.len());
        let mut cursor = 0u64;
        for t in tensors {
            let len = byte_len(t.dtype, &t.shape).ok_or_else(|| FormatError::SizeOverflow {
                name: t.name.clone(),
                shape: t.shape.clone(),
            })?;
            let offset = align_up(cursor, TENSOR_ALIGN);
            entries.push(TensorEntry {
                name: t.name.clone(),
                dtype: t.dtype as u8,
                layout: t.layout as u8,
                shape: t.shape.clone(),
                offset,
                byte_len: len,
                crc32: 0,
            });
            cursor = offset + len;
        }
        let manifest = Manifest {
            producer: producer.to_string(),
            config,
            tensors: entries,
            vocab,
            chat: None,
        };
        let mut plan = BlobPlan { manifest, data_offset: 0, data_len: cursor };
        plan.place_data();
        Ok(plan)
    }

    /// The same plan with the checkpoint's chat templates in the manifest.
    pub fn with_chat(mut self, chat: Option<ChatInfo>) -> BlobPlan {
        self.manifest.chat = chat;
        self.place_data();
        self
    }

    /// Puts the data region on the first page boundary after the manifest. With
    /// fixed-width integers the manifest's size does not depend on the offsets and
    /// checksums filled in later, so this is known before any tensor is written.
    fn place_data(&mut self) {
        let manifest_len = self.manifest.encode().len() as u64;
        self.data_offset = align_up(HEADER_LEN as u64 + manifest_len, DATA_ALIGN);
    }

    /// Writes the blob. `fill` is called once per tensor, in table order, and must write
    /// exactly that tensor's `byte_len` bytes.
    pub fn write<W, F>(mut self, out: &mut W, mut fill: F) -> io::Result<Manifest>
    where
        W: Write + Seek,
        F: FnMut(&TensorEntry, &mut dyn Write) -> io::Result<()>,
    {
        out.seek(SeekFrom::Start(self.data_offset))?;
        let mut position = 0u64;
        for entry in &mut self.manifest.tensors {
            write_zeros(out, entry.offset - position)?;
            let mut sink = CountingCrc {
                inner: &mut *out,
                hasher: crc32fast::Hasher::new(),
                written: 0,
            };
            fill(entry, &mut sink)?;
            if sink.written != entry.byte_len {
                return Err(io::Error::other(format!(
                    "tensor {}: wrote {} bytes, expected {}",
                    entry.name, sink.written, entry.byte_len
                )));
            }
            entry.crc32 = sink.hasher.finalize();
            position = entry.offset + entry.byte_len;
        }
        let manifest_bytes = self.manifest.encode();
        let header = Header {
            version: FORMAT_VERSION,
            manifest_offset: HEADER_LEN as u64,
            manifest_len: manifest_bytes.len() as u64,
            manifest_crc32: crc32fast::hash(&manifest_bytes),
            data_offset: self.data_offset,
            data_len: self.data_len,
        };
        out.seek(SeekFrom::Start(0))?;
        out.write_all(&header.to_bytes())?;
        out.write_all(&manifest_bytes)?;
        write_zeros(
            out,
            self.data_offset - HEADER_LEN as u64 - manifest_bytes.len() as u64,
        )?;
        out.flush()?;
        Ok(self.manifest)
    }
}

fn write_zeros(out: &mut dyn Write, mut n: u64) -> io::Result<()> {
    const ZEROS: [u8; 4096] = [0; 4096];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        out.write_all(&ZEROS[..k])?;
        n -= k as u64;
    }
    Ok(())
}

/// Passes bytes through while counting them and computing their CRC-32.
struct CountingCrc<'w, W: Write> {
    inner: &'w mut W,
    hasher: crc32fast::Hasher,
    written: u64,
}

impl<W: Write> Write for CountingCrc<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
