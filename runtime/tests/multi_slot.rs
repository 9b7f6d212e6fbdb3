//! Several sequences in one run state: a decode batch (one token of each of several KV
//! slots, `forward_rows`) gives every sequence exactly the logits it gets alone (a batch
//! of its own row), bit for bit, under every kernel set, for OLMo-2 and OLMo-3
//! (sliding-window rings) fixtures, with sequences joining, leaving and a slot reused
//! from position 0; and those are within rounding of the one-token `forward`'s. Prompts
//! that join together are read together (`forward_chunks`, a chunk of each per pass)
//! and give each sequence exactly the logits and cache it gets alone.

use std::path::{Path, PathBuf};

use olmo_format::mapped::MappedFile;
use olmo_format::{Blob, DType};
use olmort::kernels::{available_kernels, with_kernels};
use olmort::{forward, forward_batch_for, forward_batch_in, forward_chunks, forward_rows, Chunk, KvDtype, LogitRows, Model, Row, RunState};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name)
}

fn pack(name: &str, dtype: DType) -> PathBuf {
    // A file per call: tests run in parallel, and each removes its blob when done, so
    // a shared name could vanish between another test's pack and its open.
    static PACKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = PACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = std::env::temp_dir().join(format!("olmort-multi-slot-{}-{n}-{name}-{dtype}.bin", std::process::id()));
    olmoc::pack(&fixture(name), &out, &olmoc::PackOptions { dtype, ..Default::default() }).expect("pack fixture");
    out
}

/// Runs `f` on fixture `name` packed as `dtype`, then removes the blob.
fn with_model(name: &str, dtype: DType, f: impl FnOnce(&Model)) {
    let blob = pack(name, dtype);
    let map = MappedFile::open(&blob).unwrap();
    let parsed = Blob::parse(map.bytes()).unwrap();
    f(&Model::new(&parsed).unwrap());
    drop(parsed);
    let _ = std::fs::remove_file(blob);
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// A sequence: its prompt, when it joins (decode step) and how many tokens it generates.
struct Seq {
    prompt: Vec<u32>,
    join: usize,
    generate: usize,
}

const CHUNK: usize = 4;

/// The prompt in chunks of `CHUNK`, then `generate` greedy steps one token at a time
/// (decode batches of one row): every step's logits (the prompt's last, then each
/// step's). With `check`, each step's logits are also compared with `forward`'s.
fn alone(model: &Model, kv: KvDtype, seq: &Seq, check: bool) -> Vec<Vec<f32>> {
    let mut s = RunState::with_slots(model, 48, 8, kv, 1).unwrap();
    let mut single = RunState::with_slots(model, 48, 8, kv, 1).unwrap();
    let mut out = Vec::new();
    let mut logits = Vec::new();
    for (i, chunk) in seq.prompt.chunks(CHUNK).enumerate() {
        logits = forward_batch_for(model, &mut s, chunk, i * CHUNK, LogitRows::Last).to_vec();
        forward_batch_for(model, &mut single, chunk, i * CHUNK, LogitRows::Last);
    }
    for pos in seq.prompt.len()..seq.prompt.len() + seq.generate {
        out.push(logits.clone());
        let next = argmax(&logits);
        logits = forward_rows(model, &mut s, &[Row { slot: 0, token: next, pos }]).to_vec();
        let one = forward(model, &mut single, next, pos);
        let diff = one.iter().zip(&logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(!check || diff <= 1e-3, "position {pos}: a decode batch of one is {diff} from forward");
    }
    out.push(logits);
    out
}

/// All sequences in one state of 3 slots, decoded together: a sequence joins at its
/// step (its prompt run in chunks on a free slot first), leaves when done, and frees its
/// slot for a later one (which starts over at position 0).
fn together(model: &Model, kv: KvDtype, seqs: &[Seq]) -> Vec<Vec<Vec<f32>>> {
    let mut s = RunState::with_slots(model, 48, 8, kv, 3).unwrap();
    let vocab = model.config.vocab_size as usize;
    let mut out: Vec<Vec<Vec<f32>>> = seqs.iter().map(|_| Vec::new()).collect();
    // (sequence, slot, next token, position, generated)
    let mut active: Vec<(usize, usize, u32, usize, usize)> = Vec::new();
    let mut waiting: Vec<usize> = (0..seqs.len()).collect();
    let mut step = 0;
    while !waiting.is_empty() || !active.is_empty() {
        // Join: sequences due now, while a slot is free; their prompts are read together,
        // a chunk of each per pass (as many as the batch holds, the others wait a pass).
        let mut joining: Vec<(usize, usize, usize)> = Vec::new(); // (sequence, slot, prefilled)
        while let Some(at) = waiting.iter().position(|&q| seqs[q].join <= step) {
            let free = (0..3).find(|slot| active.iter().all(|a| a.1 != *slot) && joining.iter().all(|j| j.1 != *slot));
            let Some(slot) = free else { break };
            joining.push((waiting.remove(at), slot, 0));
        }
        while !joining.is_empty() {
            let mut chunks = Vec::new();
            let mut tokens = 0;
            for &(q, slot, done) in &joining {
                let len = CHUNK.min(seqs[q].prompt.len() - done);
                if tokens + len <= 8 {
                    let logits = LogitRows::last_of_prompt(done + len, seqs[q].prompt.len());
                    chunks.push(Chunk { slot, tokens: &seqs[q].prompt[done..done + len], start: done, logits });
                    tokens += len;
                }
            }
            let logits = if chunks.len() == 1 {
                let c = chunks[0];
                forward_batch_in(model, &mut s, c.slot, c.tokens, c.start, LogitRows::Last).to_vec()
            } else {
                forward_chunks(model, &mut s, &chunks).to_vec()
            };
            // A row for each chunk that ends its prompt (a lone chunk's always).
            let mut row = 0;
            for c in &chunks {
                let j = joining.iter_mut().find(|j| j.1 == c.slot).unwrap();
                j.2 += c.tokens.len();
                if j.2 == seqs[j.0].prompt.len() {
                    let l = &logits[row * vocab..][..vocab];
                    row += 1;
                    out[j.0].push(l.to_vec());
                    active.push((j.0, j.1, argmax(l), j.2, 0));
                }
            }
            joining.retain(|j| j.2 < seqs[j.0].prompt.len());
        }
        let rows: Vec<Row> = active.iter().map(|&(_, slot, token, pos, _)| Row { slot, token, pos }).collect();
        let logits = forward_rows(model, &mut s, &rows).to_vec();
        for (i, a) in active.iter_mut().enumerate() {
            let l = &logits[i * vocab..][..vocab];
            out[a.0].push(l.to_vec());
            a.2 = argmax(l);
            a.3 += 1;
            a.4 += 1;
        }
        active.retain(|a| a.4 < seqs[a.0].generate);
        step += 1;
    }
    out
}

fn check(name: &str, dtype: DType) {
    with_model(name, dtype, |model| check_model(name, dtype, model));
}

fn check_model(name: &str, dtype: DType, model: &Model) {
    let v = model.config.vocab_size;
    let prompt = |len: usize, seed: u32| -> Vec<u32> { (0..len as u32).map(|i| (i * 7919 + seed * 104729) % v).collect() };
    // Six sequences on three slots: three wait for a slot; prompts of 1 to 11 tokens
    // (a partial chunk, several chunks), runs past OLMo-3's window of 3. The first two
    // read their prompts together: chunks of 4 and 4, then 3 (its last) and 4.
    let seqs = [
        Seq { prompt: prompt(7, 1), join: 0, generate: 12 },
        Seq { prompt: prompt(11, 2), join: 0, generate: 7 },
        Seq { prompt: prompt(1, 3), join: 2, generate: 9 },
        Seq { prompt: prompt(9, 4), join: 3, generate: 10 },
        Seq { prompt: prompt(3, 5), join: 4, generate: 6 },
        Seq { prompt: prompt(6, 6), join: 4, generate: 4 },
    ];
    for kv in [KvDtype::F32, KvDtype::F16] {
        for k in available_kernels() {
            with_kernels(k, || {
                let got = together(model, kv, &seqs);
                for (q, seq) in seqs.iter().enumerate() {
                    let want = alone(model, kv, seq, kv == KvDtype::F32);
                    assert_eq!(got[q].len(), want.len(), "{name} {dtype} sequence {q}");
                    for (step, (g, w)) in got[q].iter().zip(&want).enumerate() {
                        let same = g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{name} {dtype} {kv:?} {k:?}: sequence {q} step {step} differs from the sequence alone");
                    }
                }
            })
        }
    }
}

#[test]
fn decode_batches_match_each_sequence_alone_olmo2() {
    for dtype in [DType::F32, DType::BF16, DType::Q8_0, DType::Q4_0] {
        check("tiny", dtype);
    }
}

#[test]
fn decode_batches_match_each_sequence_alone_olmo3() {
    for dtype in [DType::F32, DType::Q8_0] {
        check("olmo3-window", dtype);
    }
}

/// A slot's KV cache is its own: slots are sized alike and add up.
#[test]
fn slots_multiply_the_cache() {
    with_model("olmo3-window", DType::F32, |model| {
        let one = RunState::with_slots(model, 40, 4, KvDtype::F16, 1).unwrap();
        let four = RunState::with_slots(model, 40, 4, KvDtype::F16, 4).unwrap();
        assert_eq!(four.slots(), 4);
        assert_eq!(four.kv_cache_bytes(), 4 * one.kv_cache_bytes());
        assert_eq!(Some(one.kv_cache_bytes() as u64), olmort::kv_cache_bytes(model.config, 40, KvDtype::F16));
    });
}

#[test]
#[should_panic(expected = "twice in one batch")]
fn a_slot_appears_once_per_batch() {
    with_model("tiny", DType::F32, |model| {
        let mut s = RunState::with_slots(model, 16, 4, KvDtype::F32, 2).unwrap();
        forward_rows(model, &mut s, &[Row { slot: 1, token: 3, pos: 0 }, Row { slot: 1, token: 4, pos: 1 }]);
    });
}

#[test]
#[should_panic(expected = "twice in one batch")]
fn a_slot_appears_once_per_chunk_batch() {
    with_model("tiny", DType::F32, |model| {
        let mut s = RunState::with_slots(model, 16, 4, KvDtype::F32, 2).unwrap();
        forward_chunks(model, &mut s, &[Chunk { slot: 1, tokens: &[3], start: 0, logits: LogitRows::Last }, Chunk { slot: 1, tokens: &[4], start: 1, logits: LogitRows::Last }]);
    });
}

/// Chunks that do not end their prompt get no row of logits: a pass of three chunks of
/// which the first and last ask for them returns exactly those two rows, the ones each
/// gets alone, and the middle chunk's cache is the one a lone run leaves (its next
/// chunk's logits are the same bits).
#[test]
fn only_chunks_that_ask_get_logits() {
    with_model("tiny", DType::F32, |model| {
        let vocab = model.config.vocab_size as usize;
        let prompts: [&[u32]; 3] = [&[5, 9, 2], &[7, 1, 8, 3], &[4, 6]];
        let mut s = RunState::with_slots(model, 16, 16, KvDtype::F32, 3).unwrap();
        let chunks: Vec<Chunk> = prompts.iter().enumerate().map(|(slot, p)| Chunk { slot, tokens: p, start: 0, logits: if slot != 1 { LogitRows::Last } else { LogitRows::None } }).collect();
        let together = forward_chunks(model, &mut s, &chunks).to_vec();
        assert_eq!(together.len(), 2 * vocab, "a row for each chunk that asks, none for the other");
        let mut lone = RunState::with_slots(model, 16, 16, KvDtype::F32, 1).unwrap();
        for (row, slot) in [0, 2].into_iter().enumerate() {
            let want = forward_batch_in(model, &mut lone, 0, prompts[slot], 0, LogitRows::Last).to_vec();
            assert_eq!(&together[row * vocab..][..vocab], &want[..], "slot {slot}");
        }
        let next = forward_chunks(model, &mut s, &[Chunk { slot: 1, tokens: &[2, 2], start: 4, logits: LogitRows::Last }]).to_vec();
        forward_batch_in(model, &mut lone, 0, prompts[1], 0, LogitRows::None);
        let want = forward_batch_in(model, &mut lone, 0, &[2, 2], 4, LogitRows::Last).to_vec();
        assert_eq!(next, want);
    });
}

/// A chunk that asks for all its rows (a prompt's own log-probabilities) gets one per
/// position, in order before the next chunk's: within rounding of a lone batch with
/// [`LogitRows::All`] (each row its own `lm_head` product here), and its last row the
/// bits a lone run's last row has.
#[test]
fn a_chunk_may_ask_for_every_row() {
    with_model("tiny", DType::F32, |model| {
        let vocab = model.config.vocab_size as usize;
        let prompts: [&[u32]; 2] = [&[5, 9, 2, 11, 3], &[7, 1, 8]];
        let mut s = RunState::with_slots(model, 16, 16, KvDtype::F32, 2).unwrap();
        let chunks = [
            Chunk { slot: 0, tokens: prompts[0], start: 0, logits: LogitRows::All },
            Chunk { slot: 1, tokens: prompts[1], start: 0, logits: LogitRows::Last },
        ];
        let together = forward_chunks(model, &mut s, &chunks).to_vec();
        assert_eq!(together.len(), 6 * vocab);
        let mut lone = RunState::with_slots(model, 16, 16, KvDtype::F32, 1).unwrap();
        let all = forward_batch_in(model, &mut lone, 0, prompts[0], 0, LogitRows::All).to_vec();
        let worst = together[..5 * vocab].iter().zip(&all).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "{worst}");
        let last = forward_batch_in(model, &mut lone, 0, prompts[1], 0, LogitRows::Last).to_vec();
        assert_eq!(&together[5 * vocab..], &last[..]);
    });
}
