//! Where a decode step's time goes beyond its weights' stream: round after round, a
//! plain stream of the weight bytes, then the matrix-vector product on every matrix a
//! step reads (in a step's order, one parallel section each, timed by kind), then a
//! whole decode step, all on the run state's team.
//!
//!     cargo bench -p olmort --bench model_matvec -- MODEL.bin [THREADS] [ROUNDS]
//!
//! Each round prints GB/s: the stream's, each kind's (`qkv`, `o`, `gate_up`, `down`,
//! `lm_head`: all layers), all matrices', and the step's (its weight bytes over its
//! time). The summary gives, as a fraction of the same round's stream, the medians of
//! the rounds in each of this machine's two memory speeds (below and above 52 GB/s;
//! docs/PERFORMANCE.md, "The machine has two speeds"): a kind well under 1 is held back
//! by its kernel, the matrices under the stream by what each section costs besides its
//! bytes, and the step under the matrices by the work between them.

use std::time::Instant;

use olmort::kernels::matvec;
use olmort::{forward, Model, RunState};

mod common;
use common::{median, stream, Args};

const KINDS: [&str; 5] = ["qkv", "o", "gate_up", "down", "lm_head"];

/// A stream this fast or faster is the machine's fast state.
const FAST_GBPS: f64 = 52.0;

fn main() -> Result<(), String> {
    let args = Args::parse("model_matvec MODEL.bin [THREADS] [ROUNDS]", 60)?;
    args.with_model(|map, model| run(&args, map.bytes(), model))
}

/// One round's GB/s: the stream, each kind, all matrices, the step.
struct Round {
    stream: f64,
    kinds: [f64; 5],
    matrices: f64,
    step: f64,
}

fn run(args: &Args, blob: &[u8], model: &Model) -> Result<(), String> {
    let (path, threads, rounds) = (&args.path, args.threads, args.count);
    let matrices: Vec<_> = model.step_matrices().collect();
    // Each layer's four matrices in order, then lm_head.
    let kind = |i: usize| if i + 1 == matrices.len() { 4 } else { i % 4 };
    let mut kind_bytes = [0f64; 5];
    for (i, m) in matrices.iter().enumerate() {
        kind_bytes[kind(i)] += common::stored_bytes(blob, m).len() as f64;
    }
    let span = common::span(blob, &matrices);
    let bytes = model.bytes_per_token() as f64;
    let x: Vec<f32> = (0..matrices.iter().map(|m| m.cols).max().unwrap_or(0)).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
    let mut y = vec![0f32; matrices.iter().map(|m| m.rows).max().unwrap_or(0)];
    let mut state = RunState::new(model, rounds + 1).map_err(|e| e.to_string())?;
    forward(model, &mut state, 100, 0);
    std::hint::black_box(stream(state.team(), span));

    println!("{path}: {threads} threads, kernels {:?}; GB/s", olmort::kernels::active());
    let mut all = Vec::new();
    for pos in 1..=rounds {
        let team = state.team();
        let t = Instant::now();
        std::hint::black_box(stream(team, span));
        let stream_gbps = span.len() as f64 / t.elapsed().as_secs_f64() / 1e9;
        let mut secs = [0f64; 5];
        team.install(|| {
            for (i, m) in matrices.iter().enumerate() {
                let t = Instant::now();
                matvec(m, &x[..m.cols], &mut y[..m.rows]);
                secs[kind(i)] += t.elapsed().as_secs_f64();
            }
        });
        let t = Instant::now();
        forward(model, &mut state, 100, pos);
        let round = Round {
            stream: stream_gbps,
            kinds: std::array::from_fn(|k| kind_bytes[k] / secs[k] / 1e9),
            matrices: kind_bytes.iter().sum::<f64>() / secs.iter().sum::<f64>() / 1e9,
            step: bytes / t.elapsed().as_secs_f64() / 1e9,
        };
        let kinds: Vec<String> = KINDS.iter().zip(round.kinds).map(|(n, g)| format!("{n} {g:.1}")).collect();
        println!(
            "round {pos}: stream {:.1} | {} | matrices {:.1} | step {:.1}",
            round.stream,
            kinds.join(" "),
            round.matrices,
            round.step
        );
        all.push(round);
    }
    for (state_name, fast) in [("below", false), ("at or above", true)] {
        let rounds: Vec<&Round> = all.iter().filter(|r| (r.stream >= FAST_GBPS) == fast).collect();
        if rounds.is_empty() {
            continue;
        }
        let of_stream = |f: &dyn Fn(&Round) -> f64| median(rounds.iter().map(|r| f(r) / r.stream).collect());
        let kinds: Vec<String> = KINDS.iter().enumerate().map(|(k, n)| format!("{n} {:.3}", of_stream(&|r| r.kinds[k]))).collect();
        println!(
            "model_matvec: {} rounds {state_name} {FAST_GBPS} GB/s (stream {:.1} GB/s); of the stream: {} | matrices {:.3} | step {:.3}",
            rounds.len(),
            median(rounds.iter().map(|r| r.stream).collect()),
            kinds.join(" "),
            of_stream(&|r| r.matrices),
            of_stream(&|r| r.step)
        );
    }
    Ok(())
}
