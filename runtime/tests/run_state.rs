//! The run state: buffers that cannot exist are an error, not an abort; a KV cache
//! sized per layer, sliding-window layers keeping only their window.

use olmo_format::sample::{small_blob, Aligned};
use olmo_format::Blob;
use olmort::{Model, RunError, RunState};

#[test]
fn impossible_cache_sizes_are_refused() {
    let bytes = Aligned::new(&small_blob());
    let blob = Blob::parse(bytes.bytes()).unwrap();
    let model = Model::new(&blob).unwrap();
    // Overflows usize when multiplied out, and (on 64-bit) asks for ~2^50 bytes.
    for positions in [usize::MAX / 4, 1 << 45] {
        match RunState::new(&model, positions) {
            Err(RunError::Usage(msg)) => assert!(msg.contains("fewer steps"), "{msg}"),
            Err(other) => panic!("{positions}: unexpected error {other}"),
            Ok(_) => panic!("{positions} positions allocated"),
        }
    }
    assert!(RunState::new(&model, 8).is_ok());
}

/// A blob for `config` with f32 weights drawn uniformly from [-1, 1) (xorshift), so
/// that positions differ and attention has something to tell apart.
fn random_blob(config: &olmo_format::ModelConfig) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut out = std::io::Cursor::new(Vec::new());
    olmo_format::sample::plan(config, olmo_format::DType::F32, None)
        .write(&mut out, |entry, sink| {
            let values: Vec<u8> = (0..entry.byte_len / 4)
                .flat_map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    ((x >> 40) as f32 / (1u64 << 23) as f32 - 1.0).to_le_bytes()
                })
                .collect();
            sink.write_all(&values)
        })
        .unwrap();
    out.into_inner()
}

/// A sliding layer keeps only its window: the cache is what `kv_cache_bytes` says, and
/// a batch straddling the window gives what one token at a time gives.
#[test]
fn sliding_layers_keep_their_window() {
    use olmo_format::sample::small_olmo3_config;
    use olmort::{forward, forward_batch, kv_cache_bytes, kv_cache_positions, KvDtype};

    let config = small_olmo3_config();
    let bytes = Aligned::new(&random_blob(&config));
    let blob = Blob::parse(bytes.bytes()).unwrap();
    let model = Model::new(&blob).unwrap();
    // Three layers slide over 5 positions, the fourth is full.
    assert_eq!(kv_cache_positions(&config, 40).collect::<Vec<_>>(), [5, 5, 5, 40]);
    assert_eq!(kv_cache_positions(&config, 3).collect::<Vec<_>>(), [3, 3, 3, 3]);
    let kv_row = 2 * 6 * 2; // keys and values, 2 kv heads of 6
    assert_eq!(kv_cache_bytes(&config, 40, KvDtype::F32), Some(4 * kv_row * (3 * 5 + 40)));
    assert_eq!(kv_cache_bytes(&config, 40, KvDtype::F16), Some(2 * kv_row * (3 * 5 + 40)));
    assert_eq!(kv_cache_bytes(&config, usize::MAX, KvDtype::F32), None);
    for kv in [KvDtype::F32, KvDtype::F16] {
        let state = RunState::with_options(&model, 40, 8, kv).unwrap();
        assert_eq!(Some(state.kv_cache_bytes() as u64), kv_cache_bytes(&config, 40, kv));
    }

    let tokens: Vec<u32> = (0..23).map(|i| (i * 37 + 11) % 97).collect();
    let mut single = RunState::with_options(&model, 40, 8, KvDtype::F32).unwrap();
    let want: Vec<f32> = tokens.iter().enumerate().flat_map(|(p, &t)| forward(&model, &mut single, t, p).to_vec()).collect();
    // Batches of 1 to 8 tokens, longer and shorter than the window, wrapping the ring.
    for batch in [2, 5, 7, 8] {
        let mut state = RunState::with_options(&model, 40, 8, KvDtype::F32).unwrap();
        let mut got = Vec::new();
        for (i, chunk) in tokens.chunks(batch).enumerate() {
            got.extend_from_slice(forward_batch(&model, &mut state, chunk, i * batch));
        }
        let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff <= 1e-4, "batch {batch}: {diff}");
    }
    // The window matters: with one as long as the run, the same weights give other
    // logits from position 5 on, and the same before.
    let mut wide = config.clone();
    wide.sliding_window = Some(40);
    let bytes = Aligned::new(&random_blob(&wide));
    let blob = Blob::parse(bytes.bytes()).unwrap();
    let model = Model::new(&blob).unwrap();
    let mut state = RunState::new(&model, 40).unwrap();
    let vocab = config.vocab_size as usize;
    for (p, &t) in tokens.iter().enumerate() {
        let got = forward(&model, &mut state, t, p);
        let diff = got.iter().zip(&want[p * vocab..][..vocab]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert_eq!(diff == 0.0, p < 5, "position {p}: {diff}");
    }
}

/// A ring cannot go back: a run continues where it stopped or starts over.
#[test]
#[should_panic(expected = "continues there or starts over at 0")]
fn a_sliding_cache_does_not_rewind() {
    let bytes = Aligned::new(&random_blob(&olmo_format::sample::small_olmo3_config()));
    let blob = Blob::parse(bytes.bytes()).unwrap();
    let model = Model::new(&blob).unwrap();
    let mut state = RunState::new(&model, 16).unwrap();
    olmort::forward_batch(&model, &mut state, &[1, 2, 3, 4, 5, 6, 7, 8], 0);
    olmort::forward_batch(&model, &mut state, &[1, 2], 0);
    olmort::forward_batch(&model, &mut state, &[3], 2);
    olmort::forward_batch(&model, &mut state, &[4], 2);
}

/// Section times: none unless asked; once asked, the sections of a pass take some time
/// and together no longer than the pass (each moment counted once); asking again
/// starts from zero, and turning them off forgets them.
#[test]
fn section_times_add_up_to_the_pass() {
    use olmort::forward_batch;
    use olmort::model::forward::SectionTimes;

    let bytes = Aligned::new(&small_blob());
    let blob = Blob::parse(bytes.bytes()).unwrap();
    let model = Model::new(&blob).unwrap();
    let mut state = RunState::new(&model, 16).unwrap();
    assert_eq!(state.section_times(), None);
    forward_batch(&model, &mut state, &[1, 2, 3], 0);
    assert_eq!(state.section_times(), None);

    state.time_sections(true);
    assert_eq!(state.section_times(), Some(SectionTimes::default()));
    let started = std::time::Instant::now();
    forward_batch(&model, &mut state, &[4, 5, 6, 7, 8], 3);
    let wall = started.elapsed();
    let times = state.section_times().unwrap();
    let total: std::time::Duration = times.sections().iter().map(|(_, t)| *t).sum();
    assert!(total > std::time::Duration::ZERO && total <= wall, "{total:?} in sections against {wall:?} for the pass");

    state.time_sections(true);
    assert_eq!(state.section_times(), Some(SectionTimes::default()));
    state.time_sections(false);
    forward_batch(&model, &mut state, &[9], 8);
    assert_eq!(state.section_times(), None);
}

/// A batch that asks for no logits returns none and leaves the state as one that asks
/// for the last position's: the next batch's logits are the same bits.
#[test]
fn batches_without_logits_fill_the_cache_alike() {
    use olmort::{forward_batch_for, LogitRows};

    let bytes = Aligned::new(&small_blob());
    let blob = Blob::parse(bytes.bytes()).unwrap();
    let model = Model::new(&blob).unwrap();
    let prompt = [3u32, 1, 4, 1, 5, 9, 2, 6, 5, 3];
    let run = |first: LogitRows| {
        let mut state = RunState::new(&model, 16).unwrap();
        let got = forward_batch_for(&model, &mut state, &prompt[..6], 0, first).len();
        (got, forward_batch_for(&model, &mut state, &prompt[6..], 6, LogitRows::Last).to_vec())
    };
    let vocab = model.config.vocab_size as usize;
    let (none, after_none) = run(LogitRows::None);
    let (last, after_last) = run(LogitRows::Last);
    assert_eq!((none, last), (0, vocab));
    assert_eq!(LogitRows::last_of_prompt(6, 10), LogitRows::None);
    assert_eq!(LogitRows::last_of_prompt(10, 10), LogitRows::Last);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    assert_eq!(after_none.len(), vocab);
    assert!(bits(&after_none) == bits(&after_last));
}
