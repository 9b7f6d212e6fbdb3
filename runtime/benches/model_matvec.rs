//! The matrix-vector product on every matrix of a packed model, grouped by kind, against
//! a plain stream of the same bytes, and a whole decode step: where a step's time goes
//! relative to the memory speed.
//!
//!     cargo bench -p olmort --bench model_matvec -- MODEL.bin [THREADS] [ROUNDS]
//!
//! Per kind (`qkv`, `o`, `gate_up`, `down`, `lm_head`), all layers in order: matvec
//! GB/s / stream GB/s (medians of 5). Then the sums over kinds, the same bytes streamed
//! in one parallel section instead of one per matrix, and the median of 30 decode steps
//! (`forward` at positions 0..30). A kind's matvec well under its stream
//! means the kernel, not memory, sets its speed (see docs/PERFORMANCE.md, "Column panels").

use std::time::Instant;

use olmort::kernels::{matvec, Matrix};
use olmort::{forward, Model, RunState};
use rayon::prelude::*;

mod common;
use common::{median, Args};

/// Sums `b` as u64 words, one contiguous part per pool thread.
fn stream(b: &[u8]) -> u64 {
    // SAFETY: `align_to` yields only whole, aligned u64s; every bit pattern is a u64.
    let words: &[u64] = unsafe { b.align_to::<u64>().1 };
    let part = words.len().div_ceil(rayon::current_num_threads()).max(1);
    words.par_chunks(part).map(|c| c.iter().fold(0u64, |a, &w| a.wrapping_add(w))).sum()
}

fn main() -> Result<(), String> {
    let args = Args::parse("model_matvec MODEL.bin [THREADS] [ROUNDS]", 3)?;
    args.with_model(|map, model| run(&args, map.bytes(), model))
}

fn run(args: &Args, blob: &[u8], model: &Model) -> Result<(), String> {
    let (path, threads, rounds) = (&args.path, args.threads, args.count);
    let bytes = |m: &Matrix| common::stored_bytes(blob, m);
    let widest = model.layers.iter().flat_map(|l| [l.down_proj.cols, l.qkv_proj.cols]).max().unwrap_or(0);
    let tallest = model.layers.iter().map(|l| l.gate_up_proj.rows).chain([model.lm_head.rows]).max().unwrap_or(0);
    let x = vec![0.01f32; widest];
    let mut y = vec![0f32; tallest];
    let mut state = RunState::new(model, 30).map_err(|e| e.to_string())?;
    let kinds: Vec<(&str, Vec<Matrix>)> = vec![
        ("qkv", model.layers.iter().map(|l| l.qkv_proj).collect()),
        ("o", model.layers.iter().map(|l| l.o_proj).collect()),
        ("gate_up", model.layers.iter().map(|l| l.gate_up_proj).collect()),
        ("down", model.layers.iter().map(|l| l.down_proj).collect()),
        ("lm_head", vec![model.lm_head]),
    ];
    println!("{path}, {threads} threads, kernels {:?}; per kind: matvec / stream GB/s", olmort::kernels::active());
    for round in 0..rounds {
        let mut line = format!("round {round}:");
        let (mut matvec_s, mut stream_s, mut total) = (0.0, 0.0, 0usize);
        for (name, matrices) in &kinds {
            let n: usize = matrices.iter().map(|m| bytes(m).len()).sum();
            let (mut tm, mut ts) = (Vec::new(), Vec::new());
            for _ in 0..5 {
                let t = Instant::now();
                for m in matrices {
                    matvec(m, &x[..m.cols], &mut y[..m.rows]);
                }
                tm.push(t.elapsed().as_secs_f64());
                let t = Instant::now();
                for m in matrices {
                    std::hint::black_box(stream(bytes(m)));
                }
                ts.push(t.elapsed().as_secs_f64());
            }
            let (tm, ts) = (median(tm), median(ts));
            (matvec_s, stream_s, total) = (matvec_s + tm, stream_s + ts, total + n);
            line += &format!(" {name} {:.1}/{:.1}", n as f64 / tm / 1e9, n as f64 / ts / 1e9);
        }
        // The same matrices streamed as one section: the bytes from the first layer's
        // first matrix to the end of the last matrix (norms between included).
        let all: Vec<Matrix> = kinds.iter().flat_map(|(_, ms)| ms.iter().copied()).collect();
        let span = common::span(blob, &all);
        let one = median(
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(stream(span));
                    t.elapsed().as_secs_f64()
                })
                .collect(),
        );
        let steps: Vec<f64> = (0..30)
            .map(|pos| {
                let t = Instant::now();
                forward(model, &mut state, 100, pos);
                t.elapsed().as_secs_f64()
            })
            .collect();
        println!(
            "{line} | all {:.1} ms ({:.1} GB/s), stream {:.1} ms, as one section {:.1} ms ({:.1} GB/s) | decode step {:.1} ms",
            matvec_s * 1e3,
            total as f64 / matvec_s / 1e9,
            stream_s * 1e3,
            one * 1e3,
            span.len() as f64 / one / 1e9,
            median(steps) * 1e3
        );
    }
    Ok(())
}
