//! A decode step against its memory-bandwidth floor, measured side by side in one
//! process: each step (`forward` of one token, then the top 5 of its logits, as the
//! trace does) is followed at once by a plain stream of the same weight bytes on the
//! same threads, and each pair gives a ratio. This machine's read bandwidth moves
//! between runs and even within one (30 to 65 GB/s), so a floor measured seconds
//! away from the step it judges can be off by half; a stream taken within
//! milliseconds of its step sees the same machine.
//!
//!     cargo bench -p olmort --bench decode_floor -- MODEL.bin [THREADS] [STEPS]
//!
//! The stream reads the span of the blob from the first layer's first matrix to the end
//! of `lm_head` (every matrix a step reads, the norms between them; not the embedding
//! table, of which a step reads one row), the threads claiming blocks of it as the
//! kernels claim rows and summing them with 256-bit loads and 4 KiB software prefetch
//! (`common::stream`). Prints one line per step and a final `decode_floor:` line with the
//! medians: step ms, stream ms (the floor), ratio, and the stream's GB/s; then how much
//! of the blob is mapped in 2 MiB pages (`pmd_mapped`), which moves decode speed too.

use std::time::Instant;

use olmort::model::ops::top_k;
use olmort::{forward, Model, RunState};

mod common;
use common::{median, stream, Args};

fn main() -> Result<(), String> {
    let args = Args::parse("decode_floor MODEL.bin [THREADS] [STEPS]", 64)?;
    args.with_model(|map, model| run(&args, map.bytes(), model))
}

fn run(args: &Args, blob: &[u8], model: &Model) -> Result<(), String> {
    let (path, threads, steps) = (&args.path, args.threads, args.count);
    let mut state = RunState::new(model, steps + 1).map_err(|e| e.to_string())?;
    let span = common::span(blob, &model.step_matrices().collect::<Vec<_>>());

    // One step and one stream to fault everything in.
    forward(model, &mut state, 100, 0);
    std::hint::black_box(stream(state.team(), span));

    println!(
        "{path}: {threads} threads, kernels {:?}, {} weight bytes per step ({} streamed)",
        olmort::kernels::active(),
        model.bytes_per_token(),
        span.len()
    );
    let (mut step_ms, mut stream_ms, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut token = 100;
    for pos in 1..=steps {
        let t = Instant::now();
        let logits = forward(model, &mut state, token, pos);
        token = top_k::<5>(logits)[0].0;
        let step = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        std::hint::black_box(stream(state.team(), span));
        let floor = t.elapsed().as_secs_f64() * 1e3 * model.bytes_per_token() as f64 / span.len() as f64;
        println!("step {pos}: {step:.2} ms, floor {floor:.2} ms, ratio {:.3}", step / floor);
        step_ms.push(step);
        stream_ms.push(floor);
        ratios.push(step / floor);
    }
    let floor = median(stream_ms);
    println!(
        "decode_floor: step_ms {:.2} floor_ms {:.2} ratio {:.3} gbps {:.1}",
        median(step_ms),
        floor,
        median(ratios),
        model.bytes_per_token() as f64 / floor / 1e6
    );
    if let Some((pmd, rss)) = common::pmd_mapped(blob) {
        println!("pmd_mapped {} of {} MiB resident", pmd >> 20, rss >> 20);
    }
    Ok(())
}
