//! Every way `Blob::parse` refuses a file: one test (at least) per `FormatError` variant,
//! each starting from a valid blob built in memory and mutating it. Mutations of the
//! manifest are re-encoded with a correct checksum so they reach the deeper checks.

use olmo_format::sample::{self, Aligned};
use olmo_format::{
    Blob, DType, FormatError, Header, Layout, Manifest, TensorEntry, FORMAT_VERSION,
    HEADER_LEN, VOCAB_BYTES, VOCAB_OFFSETS,
};

const QKV0: &str = "model.layers.0.self_attn.qkv_proj.weight";
const Q_NORM0: &str = "model.layers.0.self_attn.q_norm.weight";
const DOWN1: &str = "model.layers.1.mlp.down_proj.weight";

fn valid() -> Vec<u8> {
    sample::small_blob()
}

fn parse(bytes: &[u8]) -> Result<(), FormatError> {
    let aligned = Aligned::new(bytes);
    Blob::parse(aligned.bytes()).map(|_| ())
}

fn parse_err(bytes: &[u8]) -> FormatError {
    let e = parse(bytes).expect_err("the mutated blob was accepted");
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "message is not one line: {msg:?}");
    e
}

fn header_of(bytes: &[u8]) -> Header {
    Header::parse(&bytes[..HEADER_LEN], bytes.len() as u64).unwrap()
}

fn manifest_of(bytes: &[u8]) -> Manifest {
    let h = header_of(bytes);
    Manifest::decode(&bytes[h.manifest_offset as usize..][..h.manifest_len as usize]).unwrap()
}

/// Applies `f` to the decoded manifest (and the data region) and re-encodes it.
fn with_manifest(bytes: &[u8], f: impl FnOnce(&mut Manifest, &mut Vec<u8>)) -> Vec<u8> {
    let h = header_of(bytes);
    let mut m = manifest_of(bytes);
    let mut data = bytes[h.data_offset as usize..].to_vec();
    f(&mut m, &mut data);
    sample::assemble(h, &m, &data)
}

/// Applies `f` to the raw manifest bytes, fixing up lengths and checksums.
fn with_manifest_bytes(bytes: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let h = header_of(bytes);
    let mut raw = bytes[HEADER_LEN..][..h.manifest_len as usize].to_vec();
    f(&mut raw);
    sample::assemble_raw(h, &raw, &bytes[h.data_offset as usize..])
}

/// Rewrites header bytes `at..` with `value` and recomputes the header's own checksum.
fn patch_header(bytes: &[u8], at: usize, value: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at..at + value.len()].copy_from_slice(value);
    let crc = crc32fast::hash(&b[0..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    b
}

fn entry<'m>(m: &'m mut Manifest, name: &str) -> &'m mut TensorEntry {
    m.tensors.iter_mut().find(|t| t.name == name).unwrap()
}

fn assert_names(e: &FormatError, name: &str) {
    assert!(e.to_string().contains(name), "{e} does not name {name}");
}

#[test]
fn the_sample_blob_is_valid() {
    let b = valid();
    parse(&b).unwrap();
    // Re-encoding without a change gives the same bytes: the helpers are faithful.
    assert_eq!(with_manifest(&b, |_, _| {}), b);
    assert_eq!(with_manifest_bytes(&b, |_| {}), b);
}

#[test]
fn empty_file() {
    assert_eq!(parse_err(&[]), FormatError::Empty);
}

#[test]
fn truncated_at_every_length() {
    let b = valid();
    let h = header_of(&b);
    let manifest_end = h.manifest_offset + h.manifest_len;
    for len in 1..b.len() {
        let e = parse_err(&b[..len]);
        let region = match e {
            FormatError::Truncated { what, file_len, .. } => {
                assert_eq!(file_len, len as u64);
                what
            }
            other => panic!("truncated to {len}: {other:?}"),
        };
        let expected = if len < HEADER_LEN {
            "header"
        } else if (len as u64) < manifest_end {
            "manifest"
        } else {
            "data region"
        };
        assert_eq!(region, expected, "truncated to {len}");
    }
}

#[test]
fn wrong_magic() {
    let mut b = valid();
    b[0] = b'X';
    assert_eq!(parse_err(&b), FormatError::BadMagic);
    assert_eq!(parse_err(b"GGUF\x03\x00\x00\x00"), FormatError::BadMagic);
    assert_eq!(parse_err(b"{\"a\": 1}\n"), FormatError::BadMagic);
    assert_eq!(parse_err(b"x"), FormatError::BadMagic);
    // A prefix of the magic is a truncated blob, not a foreign file.
    assert!(matches!(parse_err(b"OLMO"), FormatError::Truncated { what: "header", .. }));
}

#[test]
fn newer_and_older_versions() {
    let b = valid();
    // Version 1 is the previous format (OLMo-2 only, no chat templates).
    for (version, newer) in [(FORMAT_VERSION + 1, true), (u32::MAX, true), (FORMAT_VERSION - 1, false), (0, false)] {
        let v = version.to_le_bytes();
        // With or without a matching header checksum: the version is reported first,
        // since another version may checksum differently.
        let fixed = patch_header(&b, 8, &v);
        let mut raw = b.clone();
        raw[8..12].copy_from_slice(&v);
        for bytes in [fixed, raw] {
            let e = parse_err(&bytes);
            if newer {
                assert_eq!(e, FormatError::NewerVersion { found: version, supported: FORMAT_VERSION });
                assert!(e.to_string().contains("newer olmort"));
            } else {
                assert_eq!(e, FormatError::OlderVersion { found: version, supported: FORMAT_VERSION });
                assert!(e.to_string().contains("repack"));
            }
        }
    }
}

#[test]
fn every_byte_flip_in_the_header_is_caught() {
    let b = valid();
    for at in 0..HEADER_LEN {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut m = b.clone();
            m[at] ^= mask;
            let e = parse_err(&m);
            let ok = match at {
                0..=7 => e == FormatError::BadMagic,
                8..=11 => matches!(e, FormatError::NewerVersion { .. } | FormatError::OlderVersion { .. }),
                _ => e == FormatError::HeaderChecksum,
            };
            assert!(ok, "byte {at} ^ {mask:#x}: {e:?}");
        }
    }
}

#[test]
fn every_byte_flip_in_the_manifest_is_caught() {
    let b = valid();
    let h = header_of(&b);
    for at in HEADER_LEN..(HEADER_LEN + h.manifest_len as usize) {
        let mut m = b.clone();
        m[at] ^= 0x5a;
        assert!(
            matches!(parse_err(&m), FormatError::ManifestChecksum { stored, .. } if stored == h.manifest_crc32),
            "byte {at}"
        );
    }
}

#[test]
fn a_flip_in_the_data_is_left_to_verify() {
    // Tensor bytes are not checksummed on open (that would read the whole file);
    // `olmoc verify` compares them with the manifest's per-tensor checksums.
    let mut b = valid();
    let at = header_of(&b).data_offset as usize + 100;
    b[at] ^= 0xff;
    parse(&b).unwrap();
}

#[test]
fn bad_header_fields() {
    let b = valid();
    let h = header_of(&b);
    let cases: Vec<(usize, Vec<u8>, &str)> = vec![
        (12, 65u32.to_le_bytes().to_vec(), "header length"),
        (52, vec![1], "reserved"),
        (16, 128u64.to_le_bytes().to_vec(), "does not follow the header"),
        (24, u64::MAX.to_le_bytes().to_vec(), "manifest length overflows"),
        (32, (h.data_offset + 64).to_le_bytes().to_vec(), "page-aligned"),
        (32, 0u64.to_le_bytes().to_vec(), "overlaps the manifest"),
        (40, (u64::MAX - 100).to_le_bytes().to_vec(), "data length overflows"),
    ];
    for (at, value, says) in cases {
        match parse_err(&patch_header(&b, at, &value)) {
            FormatError::BadHeader(why) => assert!(why.contains(says), "{why} vs {says}"),
            other => panic!("field at {at}: {other:?}"),
        }
    }
    // A data region claiming more bytes than the file has is a truncated file.
    let longer = patch_header(&b, 40, &(h.data_len + 1).to_le_bytes());
    assert!(matches!(parse_err(&longer), FormatError::Truncated { what: "data region", .. }));
    // The manifest reaching past the end of the file.
    let huge = patch_header(&b, 24, &(1u64 << 40).to_le_bytes());
    assert!(matches!(parse_err(&huge), FormatError::Truncated { what: "manifest", .. }));
}

#[test]
fn trailing_bytes() {
    let mut b = valid();
    let len = b.len() as u64;
    b.push(0);
    assert_eq!(parse_err(&b), FormatError::TrailingBytes { expected: len, file_len: len + 1 });
}

#[test]
fn manifest_checksum() {
    let b = valid();
    let h = header_of(&b);
    let wrong = patch_header(&b, 48, &(h.manifest_crc32 ^ 1).to_le_bytes());
    assert_eq!(
        parse_err(&wrong),
        FormatError::ManifestChecksum { stored: h.manifest_crc32 ^ 1, computed: h.manifest_crc32 }
    );
}

#[test]
fn manifest_that_does_not_decode() {
    let b = valid();
    type Mutation = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("garbage", Box::new(|m| m.iter_mut().for_each(|x| *x = 0xa7))),
        ("cut short", Box::new(|m| m.truncate(m.len() / 2))),
        ("empty", Box::new(|m| m.clear())),
        ("trailing bytes", Box::new(|m| m.extend_from_slice(&[0; 3]))),
        // The producer string's length claims 2^40 bytes.
        ("huge string", Box::new(|m| m[0..8].copy_from_slice(&(1u64 << 40).to_le_bytes()))),
        // The producer string is not UTF-8.
        ("bad utf-8", Box::new(|m| m[8] = 0xff)),
    ];
    for (what, mutate) in cases {
        let e = parse_err(&with_manifest_bytes(&b, mutate));
        assert!(matches!(e, FormatError::ManifestDecode(_)), "{what}: {e:?}");
    }
}

#[test]
fn config_errors() {
    let b = valid();
    type Mutation = Box<dyn Fn(&mut olmo_format::ModelConfig)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("architecture", Box::new(|c| c.architecture = "LlamaForCausalLM".into())),
        ("hidden_size", Box::new(|c| c.hidden_size = 0)),
        ("num_hidden_layers", Box::new(|c| c.num_hidden_layers = 0)),
        ("num_hidden_layers", Box::new(|c| c.num_hidden_layers = u32::MAX)),
        ("num_attention_heads", Box::new(|c| c.num_attention_heads = 0)),
        ("num_key_value_heads", Box::new(|c| c.num_key_value_heads = 0)),
        // 6 heads cannot be shared among 4 kv heads.
        ("num_key_value_heads", Box::new(|c| c.num_key_value_heads = 4)),
        ("num_key_value_heads", Box::new(|c| c.num_key_value_heads = 12)),
        ("head_dim", Box::new(|c| c.head_dim = 0)),
        ("head_dim", Box::new(|c| c.head_dim = 7)),
        ("head_dim", Box::new(|c| c.head_dim = 1 << 20)),
        ("intermediate_size", Box::new(|c| c.intermediate_size = 0)),
        ("vocab_size", Box::new(|c| c.vocab_size = 0)),
        ("vocab_size", Box::new(|c| c.vocab_size = u32::MAX)),
        ("max_position_embeddings", Box::new(|c| c.max_position_embeddings = 0)),
        ("rope_theta", Box::new(|c| c.rope_full_attention.theta = f64::INFINITY)),
        ("rope_theta", Box::new(|c| c.rope_full_attention.theta = -1.0)),
        ("layer_types", Box::new(|c| c.layer_types.clear())),
        ("layer_types", Box::new(|c| c.layer_types[1] = olmo_format::AttentionType::Sliding)),
        ("sliding_window", Box::new(|c| c.sliding_window = Some(3))),
        ("rope_parameters", Box::new(|c| c.rope_sliding_attention = Some(c.rope_full_attention))),
        ("rms_norm_eps", Box::new(|c| c.rms_norm_eps = f64::NAN)),
        ("eos_token_id", Box::new(|c| c.eos_token_ids = vec![3, 97])),
        ("pad_token_id", Box::new(|c| c.pad_token_id = Some(u32::MAX))),
    ];
    for (field, mutate) in cases {
        let e = parse_err(&with_manifest(&b, |m, _| mutate(&mut m.config)));
        match &e {
            FormatError::Config { field: f, .. } => assert_eq!(f, &field, "{e}"),
            other => panic!("{field}: {other:?}"),
        }
        assert!(e.to_string().contains(field));
    }
}

/// A vocabulary of 2^40 cannot be written at all: the field is a u32, and a writer that
/// put a u64 there would shift every later field. The reader sees either bytes that do
/// not decode or a config that fails validation, never a 2^40-row table.
#[test]
fn vocab_of_two_to_the_forty() {
    let b = valid();
    let c = sample::small_config();
    // In the fixed-width encoding the config starts after the producer string, and
    // vocab_size follows architecture and six u32 fields.
    let producer = manifest_of(&b).producer.len();
    let at = 8 + producer + 8 + c.architecture.len() + 6 * 4;
    let raw = with_manifest_bytes(&b, |m| {
        assert_eq!(m[at..at + 4], c.vocab_size.to_le_bytes());
        m.splice(at..at + 4, (1u64 << 40).to_le_bytes());
    });
    let e = parse_err(&raw);
    assert!(
        matches!(e, FormatError::ManifestDecode(_) | FormatError::Config { .. }),
        "{e:?}"
    );
    // The low half alone (a writer truncating to u32) is a vocabulary of 0.
    let raw = with_manifest_bytes(&b, |m| m[at..at + 4].copy_from_slice(&((1u64 << 40) as u32).to_le_bytes()));
    assert!(matches!(parse_err(&raw), FormatError::Config { field: "vocab_size", .. }));
}

#[test]
fn unknown_dtype_and_layout() {
    let b = valid();
    let e = parse_err(&with_manifest(&b, |m, _| entry(m, QKV0).dtype = 200));
    assert_eq!(e, FormatError::UnknownDType { name: QKV0.into(), code: 200 });
    assert_names(&e, QKV0);
    let e = parse_err(&with_manifest(&b, |m, _| entry(m, QKV0).layout = 7));
    assert_eq!(e, FormatError::UnknownLayout { name: QKV0.into(), code: 7 });
    assert_names(&e, QKV0);
}

#[test]
fn bad_types() {
    let b = valid();
    // f32 bytes declared in the q8_0 layout.
    let e = parse_err(&with_manifest(&b, |m, _| entry(m, QKV0).layout = 1));
    assert!(matches!(&e, FormatError::BadType { name, .. } if name == QKV0), "{e:?}");
    // q8_0 is only for matrices.
    let e = parse_err(&with_manifest(&b, |m, _| {
        let t = entry(m, Q_NORM0);
        t.dtype = DType::Q8_0 as u8;
        t.layout = 1;
    }));
    assert!(matches!(&e, FormatError::BadType { name, .. } if name == Q_NORM0), "{e:?}");
    // Norm weights must be f32; an f16 norm of the right length is still refused.
    let e = parse_err(&with_manifest(&b, |m, _| {
        let t = entry(m, Q_NORM0);
        t.dtype = DType::F16 as u8;
        t.byte_len /= 2;
    }));
    assert!(matches!(&e, FormatError::BadType { name, .. } if name == Q_NORM0), "{e:?}");
    assert_names(&e, Q_NORM0);
    // Column panels are for float matrices: not for a vector, not for q8_0.
    let e = parse_err(&with_manifest(&b, |m, _| entry(m, Q_NORM0).layout = Layout::ColumnPanels as u8));
    assert!(matches!(&e, FormatError::BadType { name, .. } if name == Q_NORM0), "{e:?}");
    assert_names(&e, Q_NORM0);
    let q8 = sample::blob(&sample::small_config(), DType::Q8_0, None);
    let e = parse_err(&with_manifest(&q8, |m, _| entry(m, QKV0).layout = Layout::ColumnPanels as u8));
    assert!(matches!(&e, FormatError::BadType { name, .. } if name == QKV0), "{e:?}");
    // ... while any float matrix may be stored in them.
    let panelled = with_manifest(&b, |m, _| entry(m, QKV0).layout = Layout::ColumnPanels as u8);
    assert_eq!(parse(&panelled), Ok(()));
    // A matrix stored as u32.
    let e = parse_err(&with_manifest(&b, |m, _| entry(m, QKV0).dtype = DType::U32 as u8));
    assert!(matches!(&e, FormatError::BadType { name, .. } if name == QKV0), "{e:?}");
    // The 4-bit types only in their tiles, only for matrices; their tiles only for them.
    for q4 in [DType::Q4_0, DType::Q4_K] {
        let blob = sample::blob(&sample::small_config(), q4, None);
        assert_eq!(parse(&blob), Ok(()));
        for layout in [Layout::RowMajor, Layout::Q8_0Rows, Layout::ColumnPanels] {
            let e = parse_err(&with_manifest(&blob, |m, _| entry(m, QKV0).layout = layout as u8));
            assert!(matches!(&e, FormatError::BadType { name, .. } if name == QKV0), "{q4} {layout}: {e:?}");
        }
        let e = parse_err(&with_manifest(&b, |m, _| {
            let t = entry(m, Q_NORM0);
            t.dtype = q4 as u8;
            t.layout = Layout::Q4Tiles as u8;
        }));
        assert!(matches!(&e, FormatError::BadType { name, .. } if name == Q_NORM0), "{e:?}");
        let e = parse_err(&with_manifest(&b, |m, _| entry(m, QKV0).layout = Layout::Q4Tiles as u8));
        assert!(matches!(&e, FormatError::BadType { name, .. } if name == QKV0), "{e:?}");
    }
}

#[test]
fn size_overflow() {
    let b = valid();
    for shape in [vec![u64::MAX, 2], vec![1 << 32, 1 << 32], vec![1 << 62, 1, 1]] {
        let e = parse_err(&with_manifest(&b, |m, _| entry(m, QKV0).shape = shape.clone()));
        assert_eq!(e, FormatError::SizeOverflow { name: QKV0.into(), shape: shape.clone() });
        assert_names(&e, QKV0);
    }
    let e = parse_err(&with_manifest(&b, |m, _| {
        let t = entry(m, QKV0);
        t.dtype = DType::Q8_0 as u8;
        t.layout = 1;
        t.shape = vec![u64::MAX, 64];
    }));
    assert!(matches!(e, FormatError::SizeOverflow { .. }), "{e:?}");
    let e = parse_err(&with_manifest(&b, |m, _| {
        let t = entry(m, QKV0);
        t.dtype = DType::Q4_K as u8;
        t.layout = Layout::Q4Tiles as u8;
        t.shape = vec![u64::MAX, 1 << 40];
    }));
    assert!(matches!(e, FormatError::SizeOverflow { .. }), "{e:?}");
}

#[test]
fn byte_length_disagrees_with_shape() {
    let b = valid();
    for delta in [-4i64, 4, 1] {
        let e = parse_err(&with_manifest(&b, |m, _| {
            let t = entry(m, QKV0);
            t.byte_len = (t.byte_len as i64 + delta) as u64;
        }));
        assert!(matches!(&e, FormatError::ByteLength { name, .. } if name == QKV0), "{e:?}");
        assert_names(&e, QKV0);
    }
}

#[test]
fn misaligned() {
    let b = valid();
    for shift in [1u64, 4, 32] {
        let e = parse_err(&with_manifest(&b, |m, _| entry(m, QKV0).offset += shift));
        assert!(matches!(&e, FormatError::Misaligned { name, align: 64, .. } if name == QKV0), "{e:?}");
        assert_names(&e, QKV0);
    }
}

#[test]
fn out_of_bounds() {
    let b = valid();
    let data_len = header_of(&b).data_len;
    let far = (data_len / 64 + 10) * 64;
    for offset in [far, u64::MAX - 63] {
        let e = parse_err(&with_manifest(&b, |m, _| entry(m, DOWN1).offset = offset));
        assert!(matches!(&e, FormatError::OutOfBounds { name, .. } if name == DOWN1), "{e:?}");
        assert_names(&e, DOWN1);
    }
    // The last tensor reaching one element past the end of the data.
    let e = parse_err(&with_manifest(&b, |m, _| {
        let t = m.tensors.last_mut().unwrap();
        t.shape[0] += 1;
        t.byte_len += 1;
    }));
    assert!(matches!(&e, FormatError::OutOfBounds { name, .. } if name == VOCAB_BYTES), "{e:?}");
}

#[test]
fn overlap() {
    let b = valid();
    let e = parse_err(&with_manifest(&b, |m, _| {
        let prev = m.tensors[0].offset;
        entry(m, QKV0).offset = prev;
    }));
    assert!(matches!(&e, FormatError::Overlap { name, previous, .. }
        if name == QKV0 && previous == "model.embed_tokens.weight"), "{e:?}");
    assert_names(&e, QKV0);
    // Out of order counts as overlapping too: tensors are stored in offset order.
    let e = parse_err(&with_manifest(&b, |m, _| m.tensors.swap(1, 2)));
    assert!(matches!(e, FormatError::Overlap { .. }), "{e:?}");
}

#[test]
fn unused_data() {
    let b = valid();
    let e = parse_err(&with_manifest(&b, |_, data| data.extend_from_slice(&[0; 64])));
    assert!(matches!(e, FormatError::UnusedData { .. }), "{e:?}");
}

#[test]
fn duplicate() {
    let b = valid();
    let e = parse_err(&with_manifest(&b, |m, _| m.tensors[2].name = QKV0.into()));
    assert_eq!(e, FormatError::Duplicate { name: QKV0.into() });
    assert_names(&e, QKV0);
}

#[test]
fn missing_required_tensor() {
    let b = valid();
    for name in [DOWN1, "model.norm.weight", "lm_head.weight", "model.embed_tokens.weight"] {
        let e = parse_err(&with_manifest(&b, |m, _| m.tensors.retain(|t| t.name != name)));
        assert_eq!(e, FormatError::Missing { name: name.into() });
        assert_names(&e, name);
    }
    // A renamed tensor leaves its real name missing.
    let e = parse_err(&with_manifest(&b, |m, _| entry(m, DOWN1).name = "model.layers.1.mlp.down.weight".into()));
    assert_eq!(e, FormatError::Missing { name: DOWN1.into() });
    // The vocabulary's tensors are required when the manifest describes one.
    let e = parse_err(&with_manifest(&b, |m, _| m.tensors.retain(|t| t.name != VOCAB_OFFSETS)));
    assert_eq!(e, FormatError::Missing { name: VOCAB_OFFSETS.into() });
}

#[test]
fn unexpected_tensor() {
    let b = valid();
    // The vocabulary's tensors without a vocabulary to describe them.
    let e = parse_err(&with_manifest(&b, |m, _| m.vocab = None));
    assert!(matches!(&e, FormatError::Unexpected { name } if name.starts_with("tokenizer.")), "{e:?}");
    // An extra layer's tensor appended to the table.
    let extra = "model.layers.2.post_feedforward_layernorm.weight";
    let e = parse_err(&with_manifest(&b, |m, data| {
        let offset = (data.len() as u64).div_ceil(64) * 64;
        data.resize(offset as usize + 144, 0);
        m.tensors.push(TensorEntry {
            name: extra.into(),
            dtype: DType::F32 as u8,
            layout: 0,
            shape: vec![36],
            offset,
            byte_len: 144,
            crc32: 0,
        });
    }));
    assert_eq!(e, FormatError::Unexpected { name: extra.into() });
    assert_names(&e, extra);
}

#[test]
fn shape_disagrees_with_config() {
    let b = valid();
    // Same number of bytes, different shape.
    let e = parse_err(&with_manifest(&b, |m, _| entry(m, Q_NORM0).shape = vec![6, 6]));
    assert_eq!(e, FormatError::Shape { name: Q_NORM0.into(), expected: vec![36], found: vec![6, 6] });
    assert_names(&e, Q_NORM0);
    // A config whose kv heads no longer match the stored projections.
    let e = parse_err(&with_manifest(&b, |m, _| m.config.num_key_value_heads = 3));
    assert!(matches!(&e, FormatError::Shape { name, .. } if name == QKV0), "{e:?}");
    // The vocabulary offsets must have n_tokens + 1 entries.
    let e = parse_err(&with_manifest(&b, |m, _| {
        let v = m.vocab.as_mut().unwrap();
        v.n_tokens = 89;
        v.special_ids.clear();
    }));
    assert!(matches!(&e, FormatError::Shape { name, .. } if name == VOCAB_OFFSETS), "{e:?}");
}

#[test]
fn vocabulary_errors() {
    let b = valid();
    for (what, mutate) in [
        ("no tokens", Box::new(|v: &mut olmo_format::VocabInfo| v.n_tokens = 0) as Box<dyn Fn(&mut _)>),
        ("more tokens than vocab_size", Box::new(|v: &mut olmo_format::VocabInfo| v.n_tokens = 98)),
        ("special id past the tokens", Box::new(|v: &mut olmo_format::VocabInfo| v.special_ids.push(90))),
    ] {
        let e = parse_err(&with_manifest(&b, |m, _| mutate(m.vocab.as_mut().unwrap())));
        assert!(matches!(e, FormatError::Vocab(_)), "{what}: {e:?}");
        assert!(e.to_string().starts_with("vocabulary"), "{e}");
    }
}

#[test]
fn chat_template_errors() {
    let b = valid();
    let template = |name: &str| olmo_format::ChatTemplate { name: name.into(), source: "{{ x }}".into() };
    let token = |name: &str| olmo_format::SpecialTokenString { name: name.into(), content: "<s>".into() };
    let chat = |templates, special_tokens| Some(olmo_format::ChatInfo { templates, special_tokens });
    let good = chat(vec![template("default"), template("rag")], vec![token("bos_token"), token("eos_token")]);
    Blob::parse(&with_manifest(&b, |m, _| m.chat = good.clone())).unwrap();
    for (what, bad) in [
        ("no templates", chat(vec![], vec![])),
        ("two templates of one name", chat(vec![template("default"), template("default")], vec![])),
        ("a special token twice", chat(vec![template("default")], vec![token("eos_token"), token("eos_token")])),
    ] {
        let e = parse_err(&with_manifest(&b, |m, _| m.chat = bad));
        assert!(matches!(e, FormatError::Chat(_)), "{what}: {e:?}");
        assert!(e.to_string().starts_with("chat template"), "{e}");
    }
}

/// Views of a valid blob refuse what they cannot represent instead of slicing blindly.
#[test]
fn typed_views_check_their_type() {
    let b = valid();
    let aligned = Aligned::new(&b);
    let blob = Blob::parse(aligned.bytes()).unwrap();
    let t = blob.required(QKV0).unwrap();
    assert_eq!(t.as_f32().unwrap().len(), 60 * 36);
    assert!(matches!(t.as_u32(), Err(FormatError::BadType { .. })));
    assert!(matches!(t.as_u16_bits(), Err(FormatError::BadType { .. })));
    assert!(matches!(t.as_q8_0(), Err(FormatError::BadType { .. })));
    assert!(matches!(blob.required("nope"), Err(FormatError::Missing { .. })));

    // The same blob one byte off its alignment: typed views say so.
    let mut shifted = vec![0u8; b.len() + 1];
    let start = if (shifted.as_ptr() as usize).is_multiple_of(2) { 1 } else { 0 };
    shifted[start..start + b.len()].copy_from_slice(&b);
    let blob = Blob::parse(&shifted[start..start + b.len()]).unwrap();
    let e = blob.required(QKV0).unwrap().as_f32().unwrap_err();
    assert!(matches!(&e, FormatError::Misaligned { name, .. } if name == QKV0), "{e:?}");

    assert!(matches!(t.as_q4_tiles(), Err(FormatError::BadType { .. })));
    // q8_0, the 4-bit types and the half types.
    for dtype in [DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::F16, DType::BF16] {
        let b = sample::blob(&sample::small_config(), dtype, None);
        let aligned = Aligned::new(&b);
        let blob = Blob::parse(aligned.bytes()).unwrap();
        let t = blob.required(DOWN1).unwrap();
        if dtype == DType::Q8_0 {
            let (q, s) = t.as_q8_0().unwrap();
            assert_eq!((q.len(), s.len()), (36 * 96, 36 * 3));
            assert!(matches!(t.as_q4_tiles(), Err(FormatError::BadType { .. })));
        } else if dtype.is_q4() {
            // 36 rows in 5 groups of 8, 92 columns in one tile of 256.
            assert_eq!(t.as_q4_tiles().unwrap().len(), 5 * 1152);
            assert!(matches!(t.as_q8_0(), Err(FormatError::BadType { .. })));
        } else {
            assert_eq!(t.as_u16_bits().unwrap().len(), 36 * 92);
        }
    }
}

/// The test above that covers each variant. A new variant fails to compile here until
/// it has a test of its own.
#[allow(dead_code)]
fn test_of(e: &FormatError) -> &'static str {
    match e {
        FormatError::Empty => "empty_file",
        FormatError::BadMagic => "wrong_magic",
        FormatError::Truncated { .. } => "truncated_at_every_length",
        FormatError::NewerVersion { .. } | FormatError::OlderVersion { .. } => "newer_and_older_versions",
        FormatError::HeaderChecksum => "every_byte_flip_in_the_header_is_caught",
        FormatError::BadHeader(_) => "bad_header_fields",
        FormatError::TrailingBytes { .. } => "trailing_bytes",
        FormatError::ManifestChecksum { .. } => "manifest_checksum",
        FormatError::ManifestDecode(_) => "manifest_that_does_not_decode",
        FormatError::Config { .. } => "config_errors",
        FormatError::UnknownDType { .. } | FormatError::UnknownLayout { .. } => "unknown_dtype_and_layout",
        FormatError::BadType { .. } => "bad_types",
        FormatError::SizeOverflow { .. } => "size_overflow",
        FormatError::ByteLength { .. } => "byte_length_disagrees_with_shape",
        FormatError::Misaligned { .. } => "misaligned",
        FormatError::OutOfBounds { .. } => "out_of_bounds",
        FormatError::Overlap { .. } => "overlap",
        FormatError::UnusedData { .. } => "unused_data",
        FormatError::Duplicate { .. } => "duplicate",
        FormatError::Missing { .. } => "missing_required_tensor",
        FormatError::Unexpected { .. } => "unexpected_tensor",
        FormatError::Shape { .. } => "shape_disagrees_with_config",
        FormatError::Vocab(_) => "vocabulary_errors",
        FormatError::Chat(_) => "chat_template_errors",
    }
}
