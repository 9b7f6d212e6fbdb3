//! Every storage dtype and both kernel sets on the committed fixtures: f32 against the
//! transformers reference, bf16/f16/q8_0 against the f32 run, the f16 KV cache against
//! the f32 one, and the batched prompt path against one token at a time.
//!
//! The tests of consistency between code paths (batched against single, kernel set
//! against kernel set) pin an f32 KV cache: rounding to f16 turns an ulp of difference
//! upstream into a whole f16 step, which `f16_kv_cache_tracks_the_f32_cache` bounds.

use std::io;
use std::path::{Path, PathBuf};

use olmo_format::mapped::MappedFile;
use olmo_format::{Blob, DType};
use olmort::kernels::{available_kernels, with_kernels, Kernels};
use olmort::model::ops::top_k;
use olmort::generation::trace::{run_trace, LogitsSink};
use olmort::{forward, forward_batch, forward_batch_for, KvDtype, LogitRows, Model, RunState};

const FIXTURES: [&str; 6] = ["gqa", "tiny", "wide", "olmo2-odd", "olmo3-window", "olmo3-yarn"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name)
}

/// A blob packed from a fixture into the temp folder, removed when dropped.
struct Packed(PathBuf);

impl Packed {
    fn new(name: &str, dtype: DType) -> Packed {
        let out = std::env::temp_dir().join(format!(
            "olmort-dtypes-{}-{name}-{dtype}-{:?}.bin",
            std::process::id(),
            std::thread::current().id()
        ));
        olmoc::pack(&fixture(name), &out, &olmoc::PackOptions { dtype, ..Default::default() }).expect("pack fixture");
        Packed(out)
    }
}

impl Drop for Packed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Reference {
    prompt: Vec<u32>,
    /// Prompt then the greedy continuation: what position i was fed.
    input_tokens: Vec<u32>,
    /// (steps, vocab)
    logits: Vec<f32>,
    vocab: usize,
}

fn reference(name: &str) -> Reference {
    let dir = fixture(name);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()
    };
    let input_tokens = ids(&json["input_tokens"]);
    let prompt_len = json["prompt_length"].as_u64().unwrap() as usize;
    let bytes = std::fs::read(dir.join("reference_logits.npy")).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().to_vec();
    let logits: Vec<f32> = npy.into_vec().unwrap();
    assert_eq!(shape[0] as usize, input_tokens.len());
    Reference {
        prompt: input_tokens[..prompt_len].to_vec(),
        input_tokens,
        logits,
        vocab: shape[1] as usize,
    }
}

struct Collect(Vec<f32>);

impl LogitsSink for Collect {
    fn write_step(&mut self, logits: &[f32]) -> io::Result<()> {
        self.0.extend_from_slice(logits);
        Ok(())
    }
}

fn with_model<R>(blob: &Path, f: impl FnOnce(&Model) -> R) -> R {
    let map = MappedFile::open(blob).unwrap();
    let blob = Blob::parse(map.bytes()).unwrap();
    let model = Model::new(&blob).unwrap();
    f(&model)
}

/// A run state for `positions` and batches of `batch`, with a KV cache of `kv` (`None`:
/// the model's default, as olmort picks it).
fn state(model: &Model, positions: usize, batch: usize, kv: Option<KvDtype>) -> RunState {
    RunState::with_options(model, positions, batch, kv.unwrap_or_else(|| KvDtype::for_model(model))).unwrap()
}

/// The trace as the binary runs it: the prompt (batched), then greedy steps.
fn trace_logits(blob: &Path, prompt: &[u32], steps: usize, kv: Option<KvDtype>) -> Vec<f32> {
    with_model(blob, |model| {
        let mut state = RunState::with_kv_cache(model, steps, kv.unwrap_or_else(|| KvDtype::for_model(model))).unwrap();
        let mut sink = Collect(Vec::new());
        run_trace(model, &mut state, prompt, steps, &mut io::sink(), Some(&mut sink)).unwrap();
        sink.0
    })
}

/// Logits of every position with `tokens` fed, the first `prompt` in one batch and the
/// rest one at a time, as a run with a prompt goes (an f32 KV cache).
fn prompt_then_steps(blob: &Path, tokens: &[u32], prompt: usize) -> Vec<f32> {
    with_model(blob, |model| {
        let mut state = state(model, tokens.len(), prompt, Some(KvDtype::F32));
        let mut all = forward_batch(model, &mut state, &tokens[..prompt], 0).to_vec();
        for (pos, &t) in tokens.iter().enumerate().skip(prompt) {
            all.extend_from_slice(forward(model, &mut state, t, pos));
        }
        all
    })
}

/// Logits of every position with `tokens` fed, in batches of up to `batch` tokens
/// (`None`: one token at a time through `forward`).
fn forced_logits(blob: &Path, tokens: &[u32], batch: Option<usize>, kv: Option<KvDtype>) -> Vec<f32> {
    with_model(blob, |model| {
        let mut state = state(model, tokens.len(), batch.unwrap_or(1), kv);
        let mut all = Vec::new();
        match batch {
            None => {
                for (pos, &t) in tokens.iter().enumerate() {
                    all.extend_from_slice(forward(model, &mut state, t, pos));
                }
            }
            Some(b) => {
                for (i, chunk) in tokens.chunks(b).enumerate() {
                    all.extend_from_slice(forward_batch(model, &mut state, chunk, i * b));
                }
            }
        }
        all
    })
}

fn mean_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmaxes(logits: &[f32], vocab: usize) -> Vec<u32> {
    logits.chunks_exact(vocab).map(|r| top_k::<1>(r)[0].0).collect()
}

/// The share of positions whose argmax is the same in `got` and `want`.
fn top1_agreement(got: &[f32], want: &[f32], vocab: usize) -> f64 {
    let (a, b) = (argmaxes(got, vocab), argmaxes(want, vocab));
    a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

#[test]
fn f32_matches_the_reference_with_every_kernel_set() {
    for name in FIXTURES {
        let r = reference(name);
        let blob = Packed::new(name, DType::F32);
        for k in available_kernels() {
            let got = with_kernels(k, || trace_logits(&blob.0, &r.prompt, r.input_tokens.len(), None));
            let diff = max_abs_diff(&got, &r.logits);
            eprintln!("{name} f32 {k:?}: max |logit - reference| = {diff:.2e}");
            assert!(diff <= 1e-4, "{name} {k:?}: max abs diff {diff}");
            assert_eq!(argmaxes(&got, r.vocab), argmaxes(&r.logits, r.vocab), "{name} {k:?}");
        }
    }
}

/// Prompt batches of every size around the window (3 in `olmo3-window`, 5 in
/// `olmo3-yarn`), which file a batch's keys into a ring of exactly the window while its
/// earlier queries still read the rows they replace, teacher-forced on the reference's
/// tokens: the logits of transformers' one-token decode within 1e-4, the same argmax.
#[test]
fn prompt_batches_across_the_window_match_the_reference() {
    for (name, window) in [("olmo3-window", 3), ("olmo3-yarn", 5)] {
        let r = reference(name);
        let blob = Packed::new(name, DType::F32);
        let mut sizes = vec![2, window - 1, window, window + 1, 2 * window + 1, r.input_tokens.len()];
        sizes.dedup();
        let batches = std::iter::once(None).chain(sizes.into_iter().map(Some));
        for k in available_kernels() {
            for batch in batches.clone() {
                let got = with_kernels(k, || forced_logits(&blob.0, &r.input_tokens, batch, None));
                let diff = max_abs_diff(&got, &r.logits);
                eprintln!("{name} {k:?} batch {batch:?}: max |logit - reference| = {diff:.2e}");
                assert!(diff <= 1e-4, "{name} {k:?} batch {batch:?}: {diff}");
                assert_eq!(argmaxes(&got, r.vocab), argmaxes(&r.logits, r.vocab), "{name} {k:?} batch {batch:?}");
            }
        }
    }
}

/// Measured on the fixtures (worst over the six fixtures and every kernel set),
/// teacher-forced on the reference's tokens, each dtype with its default KV cache (f16)
/// against f32 weights and an f32 cache; the fixtures' logits have a spread of about 3
/// (std) over -17..17:
///
/// | dtype | max logit error | top-1 agreement |
/// | bf16  | 0.29 (olmo3-window; 0.182 gqa, 0.152 olmo2-odd) | 97.6% (olmo2-odd: 41 of 42 steps), 100% elsewhere |
/// | f16   | 0.021 (gqa; 0.0085 on tiny, whose weights are f16 already: the cache's part) | 100% |
/// | q8_0  | 1.03 (olmo3-window; 0.613 gqa) | 93.8% (wide: 15 of 16 steps), 95-95.8% (tiny, olmo2-odd, gqa, olmo3-yarn) |
///
/// On AMX, bf16 batches of 8 tokens or more also round the activations to bf16: the
/// whole prompt of `tiny` (every matrix on the tiles) at once gave 0.152 against 0.110
/// in batches of 4, top-1 agreement 100%.
///
/// q8_0 also rounds the activations to int8 per block of 32, as llama.cpp does. A
/// window of 3 averages the values of 3 positions, not of up to 44, so less of the
/// weights' rounding cancels in `olmo3-window`. The bounds sit a little above.
const REDUCED: [(DType, f32, f64); 3] =
    [(DType::BF16, 0.35, 0.95), (DType::F16, 0.03, 1.0), (DType::Q8_0, 1.25, 0.9)];

#[test]
fn reduced_dtypes_track_f32() {
    for name in FIXTURES {
        let r = reference(name);
        let f32_blob = Packed::new(name, DType::F32);
        for (dtype, max_err, min_agree) in REDUCED {
            let blob = Packed::new(name, dtype);
            // Batches of 4, and the whole prompt at once: the AMX GEMM takes 8 tokens
            // or more.
            for k in available_kernels() {
                for batch in [4, r.input_tokens.len()] {
                    let (want, got) = with_kernels(k, || {
                        (
                            forced_logits(&f32_blob.0, &r.input_tokens, Some(4), None),
                            forced_logits(&blob.0, &r.input_tokens, Some(batch), None),
                        )
                    });
                    let err = max_abs_diff(&got, &want);
                    let agree = top1_agreement(&got, &want, r.vocab);
                    eprintln!(
                        "{name} {dtype} {k:?} batch {batch}: max logit error {err:.2e}, top-1 agreement {:.1}%",
                        agree * 100.0
                    );
                    assert!(err <= max_err, "{name} {dtype} {k:?} batch {batch}: max logit error {err}");
                    assert!(agree >= min_agree, "{name} {dtype} {k:?} batch {batch}: top-1 agreement {agree}");
                }
            }
        }
    }
}

/// The 4-bit types against f32 weights, measured as `reduced_dtypes_track_f32` does
/// (the embedding table in q8_0, as `olmoc` packs it by default; both kernel sets give
/// the same figures), with the mean error also as a multiple of q8_0's on the same
/// fixture, which takes out how far each fixture's shape spreads rounding:
///
/// | dtype | max logit error | mean logit error (x q8_0's) | top-1 agreement |
/// | q4_0  | 8.68 (olmo3-window; 3.51-6.89 elsewhere) | 0.57-0.92 (8.9-12.4x) | 47.7% (olmo3-window) - 79.2% (gqa) |
/// | q4_k  | 5.78 (gqa) | 0.45-0.76 (7.9-9.3x) | 45.2% (olmo2-odd) - 75.0% (wide) |
///
/// Random weights give flat logits (std about 3), so 4 bits move many of them past
/// each other: the mean error is the steadier measure. Quantisers broken on purpose
/// fail the ratio by far: q4_0 rounding halves down (truncating `x / d + 8`) gave mean
/// errors of 1.16-1.22 (18-23x q8_0's), q4_k's 6-bit scales without their top two bits
/// 2.0-2.4, the nibbles of a block's two halves swapped 3.1-3.7.
const Q4: [(DType, f32, f32, f64); 2] = [(DType::Q4_0, 10.0, 14.0, 0.4), (DType::Q4_K, 8.0, 11.0, 0.4)];

#[test]
fn four_bit_dtypes_track_f32() {
    for name in FIXTURES {
        let r = reference(name);
        let f32_blob = Packed::new(name, DType::F32);
        let q8_blob = Packed::new(name, DType::Q8_0);
        for (dtype, max_err, max_ratio, min_agree) in Q4 {
            let blob = Packed::new(name, dtype);
            for k in available_kernels() {
                let (want, q8, got) = with_kernels(k, || {
                    (
                        forced_logits(&f32_blob.0, &r.input_tokens, Some(4), None),
                        forced_logits(&q8_blob.0, &r.input_tokens, Some(4), None),
                        forced_logits(&blob.0, &r.input_tokens, Some(4), None),
                    )
                });
                let (err, mean) = (max_abs_diff(&got, &want), mean_abs_diff(&got, &want));
                let ratio = mean / mean_abs_diff(&q8, &want);
                let agree = top1_agreement(&got, &want, r.vocab);
                eprintln!(
                    "{name} {dtype} {k:?}: max logit error {err:.2}, mean {mean:.3} ({ratio:.1}x q8_0's), top-1 agreement {:.1}%",
                    agree * 100.0
                );
                assert!(err <= max_err, "{name} {dtype} {k:?}: max logit error {err}");
                assert!(ratio <= max_ratio, "{name} {dtype} {k:?}: mean logit error {mean}, {ratio}x q8_0's");
                assert!(agree >= min_agree, "{name} {dtype} {k:?}: top-1 agreement {agree}");
            }
        }
    }
}

/// q8_0 re-quantises every matrix's input to int8: where two code paths' float rounding
/// differs by an ulp (kernel sets; the batch GEMM against the one-token matvec), a value
/// on a rounding edge moves by a whole step. On `wide` that moves the logits by 0.101 (a
/// quarter of q8_0's own error against f32 there, 0.379) between kernel sets, and under
/// AVX2 between a batch and one token at a time; the float types stay at 1e-5.
const Q8_0_PATHS: f32 = 0.15;
/// q4_0 rounds activations the same way: up to 0.205 (`tiny`), against its mean error
/// of 0.57-0.92.
const Q4_PATHS: f32 = 0.3;
/// q4_k rounds them per super-block of 256 (`ScaleSpan::SuperBlock`), so an edge moves a
/// value by its super-block's step, not its block's: up to 0.488 (olmo3-window under
/// AVX2, batches of 5; 0.235 between kernel sets when it rounded per 32), against its
/// mean error of 0.45-0.75.
const Q4_K_PATHS: f32 = 0.6;

/// The AMX GEMM rounds a batch's activations to bf16 (the one-token kernels keep them
/// in f32): on `tiny`, whose every matrix it takes, the whole prompt as one batch moved
/// the logits by up to 0.098 from one token at a time, about bf16 weights' own error
/// against f32 there (0.110).
const BF16_AMX_PATHS: f32 = 0.15;
/// The AMX GEMM multiplies q8_0 and 4-bit weights dequantised to bf16 by bf16
/// activations, where one token at a time rounds the activations to int8 per block:
/// two roundings, each within its type's error against f32 (the bf16 one the smaller:
/// `tiny` q8_0's whole prompt on AMX is 0.346 from f32, one token at a time 0.529).
/// Measured between the two: up to 0.413 (tiny q8_0), 0.467 (olmo3-yarn q4_0).
const QUANTISED_AMX_PATHS: f32 = 0.6;

#[test]
fn batched_prompt_matches_one_token_at_a_time() {
    for name in FIXTURES {
        let r = reference(name);
        for dtype in [DType::F32, DType::BF16, DType::F16, DType::Q8_0, DType::Q4_0, DType::Q4_K] {
            let blob = Packed::new(name, dtype);
            for k in available_kernels() {
                let single = with_kernels(k, || forced_logits(&blob.0, &r.input_tokens, None, Some(KvDtype::F32)));
                // 5 splits the tokens into uneven batches that start past position 0.
                for batch in [5, r.input_tokens.len()] {
                    let batched =
                        with_kernels(k, || forced_logits(&blob.0, &r.input_tokens, Some(batch), Some(KvDtype::F32)));
                    let diff = max_abs_diff(&batched, &single);
                    eprintln!("{name} {dtype} {k:?} batch {batch}: max |batched - single| = {diff:.2e}");
                    let bound = match dtype {
                        DType::BF16 if k == Kernels::Amx => BF16_AMX_PATHS,
                        d if k == Kernels::Amx && !d.is_float() => QUANTISED_AMX_PATHS,
                        d if d.is_float() => 1e-4,
                        DType::Q8_0 => Q8_0_PATHS,
                        DType::Q4_K => Q4_K_PATHS,
                        _ => Q4_PATHS,
                    };
                    assert!(diff <= bound, "{name} {dtype} {k:?} batch {batch}: {diff}");
                    // A rounding edge's whole int8 step can reorder near ties of the
                    // quantised types' flat logits; the float types keep their top 5,
                    // but for bf16 activations (AMX), which move a near tie as bf16
                    // weights do (olmo3-yarn: 43 of 44 steps keep their top 1; the
                    // bound is `REDUCED`'s for bf16).
                    if dtype == DType::BF16 && k == Kernels::Amx {
                        let agree = top1_agreement(&batched, &single, r.vocab);
                        assert!(agree >= 0.95, "{name} {dtype} {k:?} batch {batch}: top-1 agreement {agree}");
                    } else if dtype.is_float() {
                        let top5 = |l: &[f32]| -> Vec<[u32; 5]> {
                            l.chunks_exact(r.vocab).map(|row| top_k::<5>(row).map(|p| p.0)).collect()
                        };
                        assert_eq!(top5(&batched), top5(&single), "{name} {dtype} {k:?} batch {batch}");
                    }
                }
            }
        }
    }
}

#[test]
fn last_row_logits_match_the_full_batch() {
    // LogitRows::Last (running text) computes lm_head for the batch's last token only:
    // its row must be the full batch's last row, and the KV cache the same after it.
    for name in FIXTURES {
        let r = reference(name);
        let tokens = &r.input_tokens;
        let vocab = r.vocab;
        for dtype in [DType::F32, DType::Q8_0, DType::Q4_K] {
            let blob = Packed::new(name, dtype);
            for k in available_kernels() {
                let full = with_kernels(k, || forced_logits(&blob.0, tokens, Some(5), None));
                let last_rows = with_kernels(k, || {
                    with_model(&blob.0, |model| {
                        let mut state = state(model, tokens.len(), 5, None);
                        let mut rows = Vec::new();
                        for (i, chunk) in tokens.chunks(5).enumerate() {
                            let got = forward_batch_for(model, &mut state, chunk, i * 5, LogitRows::Last);
                            assert_eq!(got.len(), vocab);
                            rows.push((i * 5 + chunk.len() - 1, got.to_vec()));
                        }
                        rows
                    })
                });
                for (pos, row) in last_rows {
                    let want = &full[pos * vocab..][..vocab];
                    let diff = max_abs_diff(&row, want);
                    assert!(diff <= 1e-4, "{name} {dtype} {k:?} position {pos}: {diff}");
                    assert_eq!(top_k::<5>(&row).map(|p| p.0), top_k::<5>(want).map(|p| p.0), "{name} {dtype} {k:?} position {pos}");
                }
            }
        }
    }
}

#[test]
fn kernel_sets_agree_for_every_dtype() {
    for name in FIXTURES {
        let r = reference(name);
        for dtype in [DType::F32, DType::BF16, DType::F16, DType::Q8_0, DType::Q4_0, DType::Q4_K] {
            let blob = Packed::new(name, dtype);
            // Teacher-forced (the prompt in one batch, then a token at a time): a greedy
            // trace would follow a different token wherever a rounding edge flips a near
            // tie of the quantised types' flat logits.
            let run = |k| with_kernels(k, || prompt_then_steps(&blob.0, &r.input_tokens, r.prompt.len()));
            let portable = run(Kernels::Portable);
            for k in available_kernels().into_iter().filter(|&k| k != Kernels::Portable) {
                // bf16 prompts of 5 tokens or more take the AMX tiles where they fit
                // (`olmo3-yarn`'s 7 tokens), which round the activations to bf16
                // (`gemm_amx::BF16_MIN_BATCH`); `tiny`'s 4 stay on the decode kernel.
                let bound = match dtype {
                    DType::BF16 if k == Kernels::Amx && r.prompt.len() >= 5 => BF16_AMX_PATHS,
                    d if d.is_float() => 1e-4,
                    DType::Q8_0 => Q8_0_PATHS,
                    _ => Q4_PATHS,
                };
                let diff = max_abs_diff(&portable, &run(k));
                eprintln!("{name} {dtype}: max |portable - {k:?}| = {diff:.2e}");
                assert!(diff <= bound, "{name} {dtype} {k:?}: {diff}");
            }
        }
    }
}

/// An f16 KV cache against an f32 one, measured on the fixtures (worst over the six
/// and every kernel set), teacher-forced as in `reduced_dtypes_track_f32`:
///
/// | weights | max logit error | top-1 agreement | batched - single, kernel sets |
/// | f32, bf16, f16 | 0.0105 (olmo2-odd) | 97.7% (olmo3-yarn bf16: 43 of 44), 100% elsewhere | 2.07e-3 (olmo3-yarn f32 and f16) |
/// | q8_0 | 0.321 (olmo3-window; 0.225 tiny) | 93.8% (wide: 15 of 16) | 0.233 (olmo3-yarn, AVX-512: its decode kernel's lane sums) |
///
/// Beside the weights' own error (f16 0.019, bf16 0.185, q8_0 0.824) the cache adds
/// about half of f16's and little to the others'. Between code paths, a value an ulp
/// apart upstream can round to neighbouring f16 values (a step of 2^-11 relative), and
/// q8_0 re-quantises what follows: hence the looser agreement bounds. The bounds sit a
/// little above the measurements.
const F16_CACHE_FLOAT: (f32, f64, f32) = (0.015, 0.95, 3e-3);
const F16_CACHE_Q8_0: (f32, f64, f32) = (0.4, 0.9, 0.26);
/// The same for q4_0 and q4_k: max logit error 0.554 (olmo3-window q4_k; 0.271 on the
/// OLMo-2 fixtures), top-1 87.5% (wide q4_k: 2 of its 16 steps, near ties of flat
/// random logits moved by at most 0.192), batched against single and kernel sets
/// within 0.166 (olmo2-odd q4_0 under AVX2: a rounding edge, as for q8_0).
const F16_CACHE_Q4: (f32, f64, f32) = (0.65, 0.85, 0.25);

#[test]
fn f16_kv_cache_tracks_the_f32_cache() {
    for name in FIXTURES {
        let r = reference(name);
        for dtype in [DType::F32, DType::BF16, DType::F16, DType::Q8_0, DType::Q4_0, DType::Q4_K] {
            let (max_err, min_agree, paths) = match dtype {
                d if d.is_float() => F16_CACHE_FLOAT,
                DType::Q8_0 => F16_CACHE_Q8_0,
                _ => F16_CACHE_Q4,
            };
            let blob = Packed::new(name, dtype);
            let mut single = Vec::new();
            for k in available_kernels() {
                let run = |batch, kv| with_kernels(k, || forced_logits(&blob.0, &r.input_tokens, batch, Some(kv)));
                let (want, got) = (run(Some(4), KvDtype::F32), run(Some(4), KvDtype::F16));
                let err = max_abs_diff(&got, &want);
                let agree = top1_agreement(&got, &want, r.vocab);
                let one_at_a_time = run(None, KvDtype::F16);
                let batching = max_abs_diff(&one_at_a_time, &got);
                eprintln!(
                    "{name} {dtype} {k:?}: f16 cache against f32: max logit error {err:.2e}, top-1 agreement {:.1}%; \
                     batched against single {batching:.2e}",
                    agree * 100.0
                );
                assert!(err <= max_err, "{name} {dtype} {k:?}: max logit error {err}");
                assert!(agree >= min_agree, "{name} {dtype} {k:?}: top-1 agreement {agree}");
                assert!(batching <= paths, "{name} {dtype} {k:?}: batched against single {batching}");
                single.push(one_at_a_time);
            }
            for (k, other) in available_kernels().iter().zip(&single).skip(1) {
                let diff = max_abs_diff(&single[0], other);
                eprintln!("{name} {dtype} f16 cache: max |portable - {k:?}| = {diff:.2e}");
                assert!(diff <= paths, "{name} {dtype} f16 cache, {k:?} against portable: {diff}");
            }
        }
    }
}

#[test]
fn the_default_kv_cache_follows_the_weights() {
    let cases = [(DType::F32, KvDtype::F32), (DType::BF16, KvDtype::F16), (DType::F16, KvDtype::F16), (DType::Q8_0, KvDtype::F16), (DType::Q4_K, KvDtype::F16)];
    for (dtype, want) in cases {
        let blob = Packed::new("tiny", dtype);
        with_model(&blob.0, |model| {
            assert_eq!(KvDtype::for_model(model), want, "{dtype}");
            assert_eq!(RunState::new(model, 4).unwrap().kv_dtype(), want, "{dtype}");
            assert_eq!(state(model, 4, 1, Some(KvDtype::F32)).kv_dtype(), KvDtype::F32, "{dtype}");
        });
    }
}
