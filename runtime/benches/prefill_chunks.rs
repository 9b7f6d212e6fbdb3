//! What reading several prompts in one pass costs against one, on the model itself (no
//! server): `forward_chunks` with one LEN-token chunk of each of 1, 2, 4 and 8 slots
//! (the server's prefill step when requests arrive together), each timed right after a
//! lone chunk of the same round, so that the ratio sees one memory speed.
//!
//!     cargo bench -p olmort --bench prefill_chunks -- MODEL.bin [THREADS] [ROUNDS] [LEN]
//!
//! Prints per round the lone chunk's ms and each pass's time over it, then a
//! `prefill_chunks:` line with the medians: the lone chunk's ms and, per number of
//! chunks, the pass's ms and the prompt tokens/s it reads.

use std::time::Instant;

use olmort::{forward_chunks, Chunk, KvDtype, LogitRows, Model, RunState};

mod common;
use common::{alternating_rounds, median, Args};

const SIZES: [usize; 4] = [1, 2, 4, 8];

fn main() -> Result<(), String> {
    let args = Args::parse("prefill_chunks MODEL.bin [THREADS] [ROUNDS] [LEN]", 7)?;
    args.with_model(|_, model| run(&args, model))
}

fn run(args: &Args, model: &Model) -> Result<(), String> {
    let len: usize = std::env::args().skip(1).filter(|a| !a.starts_with("--")).nth(3).and_then(|a| a.parse().ok()).unwrap_or(16);
    let slots = *SIZES.iter().max().unwrap_or(&1);
    let kv = KvDtype::for_model(model);
    let mut state = RunState::with_slots(model, len, len * slots, kv, slots).map_err(|e| e.to_string())?;
    // Each slot's prompt: different tokens, as different requests would bring.
    let vocab = model.config.vocab_size;
    let prompts: Vec<Vec<u32>> = (0..slots).map(|s| (0..len).map(|i| (1000 + 7919 * (s * len + i) as u32) % vocab).collect()).collect();
    let pass = |state: &mut RunState, n: usize| -> f64 {
        let chunks: Vec<Chunk> = (0..n).map(|s| Chunk { slot: s, tokens: &prompts[s], start: 0, logits: LogitRows::Last }).collect();
        let t = Instant::now();
        std::hint::black_box(forward_chunks(model, state, &chunks));
        t.elapsed().as_secs_f64() * 1e3
    };
    pass(&mut state, slots);
    println!("{}: {} threads, kernels {:?}, {len}-token chunks", args.path, args.threads, olmort::kernels::active());
    let runs = alternating_rounds(args.count, &SIZES, "one chunk", |n| pass(&mut state, n), |n, ms, base| format!(" {n}: {ms:.1} ms ({:.2}x)", ms / base));
    let one = runs[0].iter().map(|&(base, _)| base).collect();
    let mut summary = format!("prefill_chunks: len {len} one_ms {:.1}", median(one));
    for (i, &n) in SIZES.iter().enumerate() {
        let ms = median(runs[i].iter().map(|&(_, ms)| ms).collect());
        summary += &format!(" | {n}: {ms:.1} ms, {:.0} tok/s", (n * len) as f64 / ms * 1e3);
    }
    println!("{summary}");
    Ok(())
}
