//! The model's weights as typed views into a validated blob: nothing is copied or
//! converted at load.

use olmo_format::vocab::VocabView;
use olmo_format::{Blob, DType, FormatError, LayerNames, Layout, ModelConfig, EMBED_TOKENS, FINAL_NORM, LM_HEAD};

use crate::kernels::{Matrix, MatrixData};

/// One decoder layer. Shapes use d = hidden, q = heads * head_dim, kv = kv_heads *
/// head_dim, f = intermediate.
pub struct LayerWeights<'a> {
    /// (q + 2 kv, d): q, k, v projections stacked by rows.
    pub qkv_proj: Matrix<'a>,
    /// (q)
    pub q_norm: &'a [f32],
    /// (kv)
    pub k_norm: &'a [f32],
    /// (d, q)
    pub o_proj: Matrix<'a>,
    /// (d)
    pub post_attention_layernorm: &'a [f32],
    /// (2 f, d): gate and up projections stacked by rows.
    pub gate_up_proj: Matrix<'a>,
    /// (d, f)
    pub down_proj: Matrix<'a>,
    /// (d)
    pub post_feedforward_layernorm: &'a [f32],
}

/// Every weight of an OLMo-2 or OLMo-3 model, borrowed from the blob.
pub struct Model<'a> {
    pub config: &'a ModelConfig,
    /// (vocab, d)
    pub embed_tokens: Matrix<'a>,
    pub layers: Vec<LayerWeights<'a>>,
    /// (d)
    pub norm: &'a [f32],
    /// (vocab, d)
    pub lm_head: Matrix<'a>,
    pub vocab: Option<VocabView<'a>>,
}

fn matrix<'a>(blob: &'a Blob, name: &str) -> Result<Matrix<'a>, FormatError> {
    let t = blob.required(name)?;
    // Validation proved matrices are 2-D with a weight dtype.
    let (rows, cols) = (t.entry.shape[0] as usize, t.entry.shape[1] as usize);
    let data = match t.dtype {
        DType::F32 => MatrixData::F32(t.as_f32()?),
        DType::F16 => MatrixData::F16(t.as_u16_bits()?),
        DType::BF16 => MatrixData::BF16(t.as_u16_bits()?),
        DType::Q8_0 => {
            let (quants, scales) = t.as_q8_0()?;
            MatrixData::Q8_0 { quants, scales }
        }
        DType::Q4_0 => MatrixData::Q4_0(t.as_q4_tiles()?),
        DType::Q4_K => MatrixData::Q4_K(t.as_q4_tiles()?),
        other => {
            return Err(FormatError::BadType {
                name: name.to_string(),
                reason: format!("{other} is not a matrix type"),
            })
        }
    };
    Ok(match t.entry.layout()? {
        Layout::ColumnPanels => Matrix::column_panels(rows, cols, data),
        _ => Matrix::row_major(rows, cols, data),
    })
}

fn vector<'a>(blob: &'a Blob, name: &str) -> Result<&'a [f32], FormatError> {
    blob.required(name)?.as_f32()
}

impl<'a> Model<'a> {
    /// Builds the views. `blob` is already validated, so this only slices.
    pub fn new(blob: &'a Blob<'a>) -> Result<Model<'a>, FormatError> {
        let config = &blob.manifest.config;
        let layers = (0..config.num_hidden_layers)
            .map(|l| {
                let n = LayerNames::new(l);
                Ok(LayerWeights {
                    qkv_proj: matrix(blob, &n.qkv_proj)?,
                    q_norm: vector(blob, &n.q_norm)?,
                    k_norm: vector(blob, &n.k_norm)?,
                    o_proj: matrix(blob, &n.o_proj)?,
                    post_attention_layernorm: vector(blob, &n.post_attention_layernorm)?,
                    gate_up_proj: matrix(blob, &n.gate_up_proj)?,
                    down_proj: matrix(blob, &n.down_proj)?,
                    post_feedforward_layernorm: vector(blob, &n.post_feedforward_layernorm)?,
                })
            })
            .collect::<Result<Vec<_>, FormatError>>()?;
        Ok(Model {
            config,
            embed_tokens: matrix(blob, EMBED_TOKENS)?,
            layers,
            norm: vector(blob, FINAL_NORM)?,
            lm_head: matrix(blob, LM_HEAD)?,
            vocab: blob.vocab()?,
        })
    }

    /// Every matrix one decode step reads, in the order it reads them (not the
    /// embedding table, of which it reads one row).
    pub fn step_matrices(&self) -> impl Iterator<Item = Matrix<'a>> + '_ {
        self.layers.iter().flat_map(|l| [l.qkv_proj, l.o_proj, l.gate_up_proj, l.down_proj]).chain([self.lm_head])
    }

    /// Bytes of weights one decode step reads: every matrix once (the embedding only one
    /// row) plus the norms. The memory-bandwidth floor of a step is this over bandwidth.
    pub fn bytes_per_token(&self) -> u64 {
        let matrices: u64 = self.step_matrices().map(|m| (m.rows * m.row_bytes()) as u64).sum();
        let norms: usize = self
            .layers
            .iter()
            .map(|l| l.q_norm.len() + l.k_norm.len() + l.post_attention_layernorm.len() + l.post_feedforward_layernorm.len())
            .sum();
        matrices + 4 * (norms + self.norm.len()) as u64
    }
}
