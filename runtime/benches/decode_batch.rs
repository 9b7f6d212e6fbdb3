//! What a decode batch costs against one token, on the model itself (no server): round
//! after round, `forward_rows` with one token of each of 1, 2, 4 and 8 sequences (KV
//! slots holding a few positions each), each batch timed right after a one-token step
//! of the same round, so that the ratio sees one memory speed.
//!
//!     cargo bench -p olmort --bench decode_batch -- MODEL.bin [THREADS] [ROUNDS]
//!
//! Prints per round the one-token step (ms) and each batch's time over it, then a
//! `decode_batch:` line with the medians: one token's ms, and per batch size the ratio
//! and the tokens/s it gives against one token's (`n / ratio`, the most a server's `n`
//! streams can gain over one).

use std::time::Instant;

use olmort::{forward_rows, KvDtype, Model, Row, RunState};

mod common;
use common::{alternating_rounds, median, Args};

const SIZES: [usize; 4] = [1, 2, 4, 8];

fn main() -> Result<(), String> {
    let args = Args::parse("decode_batch MODEL.bin [THREADS] [ROUNDS]", 15)?;
    args.with_model(|_, model| run(&args, model))
}

fn run(args: &Args, model: &Model) -> Result<(), String> {
    let slots = *SIZES.iter().max().unwrap_or(&1);
    let positions = 16 + 2 * args.count * (SIZES.len() + 1);
    let kv = KvDtype::for_model(model);
    let mut state = RunState::with_slots(model, positions, slots, kv, slots).map_err(|e| e.to_string())?;
    let vocab = model.config.vocab_size as usize;
    // Each slot's next position and token; a few positions in every slot first.
    let mut next: Vec<(usize, u32)> = (0..slots).map(|s| (0, 100 + s as u32)).collect();
    let mut step = |state: &mut RunState, n: usize| -> f64 {
        let rows: Vec<Row> = (0..n).map(|s| Row { slot: s, token: next[s].1, pos: next[s].0 }).collect();
        let t = Instant::now();
        let logits = forward_rows(model, state, &rows);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        for (s, row) in logits.chunks_exact(vocab).enumerate() {
            let best = row.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
            next[s] = (next[s].0 + 1, best.0 as u32);
        }
        ms
    };
    for _ in 0..8 {
        step(&mut state, slots);
    }
    println!("{}: {} threads, kernels {:?}, kv {kv:?}", args.path, args.threads, olmort::kernels::active());
    let runs = alternating_rounds(args.count, &SIZES, "one token", |n| step(&mut state, n), |n, ms, base| format!(" {n}: {:.2}", ms / base));
    let one = runs[0].iter().map(|&(base, _)| base).collect();
    let mut summary = format!("decode_batch: one_ms {:.2}", median(one));
    for (i, &n) in SIZES.iter().enumerate() {
        let r = median(runs[i].iter().map(|&(base, ms)| ms / base).collect());
        summary += &format!(" | {n}: {r:.2}x time, {:.2}x tokens/s", n as f64 / r);
    }
    println!("{summary}");
    Ok(())
}
