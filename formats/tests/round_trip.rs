//! A blob written by `BlobPlan` (through `sample::plan`, the layout `olmoc pack` uses)
//! opens with the same manifest and tensor bytes.

use std::io::Cursor;

use olmo_format::vocab::Vocab;
use olmo_format::{
    AttentionType, Blob, ChatInfo, ChatTemplate, DType, ModelConfig, Rope, SpecialTokenString, DATA_ALIGN,
    TENSOR_ALIGN,
};

fn config() -> ModelConfig {
    ModelConfig {
        architecture: ModelConfig::OLMO2.into(),
        hidden_size: 12,
        num_hidden_layers: 2,
        num_attention_heads: 3,
        num_key_value_heads: 1,
        head_dim: 4,
        intermediate_size: 20,
        vocab_size: 7,
        max_position_embeddings: 16,
        rms_norm_eps: 1e-6,
        layer_types: vec![AttentionType::Full; 2],
        sliding_window: None,
        rope_full_attention: Rope::default_with_theta(500000.0),
        rope_sliding_attention: None,
        bos_token_id: None,
        eos_token_ids: vec![6],
        pad_token_id: None,
    }
}

fn chat() -> ChatInfo {
    let template = |name: &str, source: &str| ChatTemplate { name: name.into(), source: source.into() };
    ChatInfo {
        templates: vec![
            template("default", "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}"),
            template("tool_use", "{{ bos_token }}é"),
        ],
        special_tokens: vec![SpecialTokenString { name: "eos_token".into(), content: "<|endoftext|>".into() }],
    }
}

/// Deterministic bytes for tensor number `i`.
fn content(i: usize, len: u64) -> Vec<u8> {
    (0..len).map(|j| (j as usize * 31 + i * 7) as u8).collect()
}

#[test]
fn written_blobs_read_back_identically() {
    let olmo3 = olmo_format::sample::small_olmo3_config();
    let cases = [DType::F32, DType::F16, DType::BF16, DType::Q8_0].map(|d| (config(), d, None));
    let cases = cases.into_iter().chain([(olmo3, DType::F32, Some(chat())), (config(), DType::Q8_0, Some(chat()))]);
    for (config, matrix_dtype, chat) in cases {
        let vocab = Vocab::parse_vocab_txt("0\ta\n1\tĠb\n2\t<|endoftext|>\n").unwrap();
        let packed = vocab.to_packed();
        let plan = olmo_format::sample::plan(&config, matrix_dtype, Some(&vocab)).with_chat(chat.clone());
        let mut file = Cursor::new(Vec::new());
        let mut index = 0;
        let written = plan
            .write(&mut file, |entry, out| {
                index += 1;
                packed
                    .write_tensor(&entry.name, out)
                    .unwrap_or_else(|| out.write_all(&content(index, entry.byte_len)))
            })
            .unwrap();
        let file = file.into_inner();

        let blob = Blob::parse(&file).unwrap();
        assert_eq!(blob.manifest, written);
        assert_eq!(blob.manifest.config, config);
        assert_eq!(blob.manifest.chat, chat);
        assert_eq!(blob.header.data_offset % DATA_ALIGN, 0);
        assert_eq!(blob.header.data_offset + blob.header.data_len, file.len() as u64);
        for (i, entry) in blob.manifest.tensors.iter().enumerate() {
            assert_eq!(entry.offset % TENSOR_ALIGN, 0, "{}", entry.name);
            let view = blob.tensor(&entry.name).unwrap();
            assert_eq!(view.bytes.len() as u64, entry.byte_len);
            assert_eq!(crc32fast::hash(view.bytes), entry.crc32, "{}", entry.name);
            if !entry.name.starts_with("tokenizer.") {
                assert_eq!(view.bytes, &content(i + 1, entry.byte_len)[..], "{}", entry.name);
            }
        }
        let v = blob.vocab().unwrap().unwrap();
        assert_eq!(v.token(1), Some(&b" b"[..]));
        assert!(v.is_special(2));
        assert_eq!(v.token(3), None);
    }
}
