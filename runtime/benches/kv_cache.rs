//! Decode at long contexts with an f32 and an f16 KV cache, side by side in one
//! process: two run states over the same model take the same tokens, one step of each
//! at every position (which goes first alternates), so both see the same machine.
//! Attention reads the whole cache at every step, so its share of a step grows with the
//! position; this shows what halving the cache buys.
//!
//!     cargo bench -p olmort --bench kv_cache -- MODEL.bin [THREADS] [POSITIONS]
//!
//! Prints, for each eighth of the positions, the median step with each cache and their
//! ratio, then a final `kv_cache:` line with the mean step over all positions (what
//! olmort's `generation` line would report) for each cache.

use std::time::Instant;

use olmort::model::ops::top_k;
use olmort::{forward, KvDtype, RunState};

mod common;
use common::{median, Args};

fn main() -> Result<(), String> {
    let args = Args::parse("kv_cache MODEL.bin [THREADS] [POSITIONS]", 2048)?;
    args.with_model(|_, model| {
        let positions = args.count.max(8);
        let state = |kv| RunState::with_options(model, positions, 1, kv).map_err(|e| e.to_string());
        let mut states = [state(KvDtype::F32)?, state(KvDtype::F16)?];
        println!("{}: {} threads, {positions} positions, kernels {:?}", args.path, args.threads, olmort::kernels::active());
        // Both states are fed the f32 cache's greedy choices, so they attend over the
        // same tokens.
        let mut token = 100;
        let mut times = [Vec::with_capacity(positions), Vec::with_capacity(positions)];
        for pos in 0..positions {
            let mut next = token;
            for i in [pos % 2, 1 - pos % 2] {
                let t = Instant::now();
                let logits = forward(model, &mut states[i], token, pos);
                let best = top_k::<5>(logits)[0].0;
                times[i].push(t.elapsed().as_secs_f64() * 1e3);
                if i == 0 {
                    next = best;
                }
            }
            token = next;
        }
        let window = positions / 8;
        for w in 0..8 {
            let part = |i: usize| median(times[i][w * window..(w + 1) * window].to_vec());
            let (a, b) = (part(0), part(1));
            println!("positions {}..{}: f32 cache {a:.2} ms, f16 cache {b:.2} ms, ratio {:.3}", w * window, (w + 1) * window, b / a);
        }
        // The first step also faults in the caches; leave it out like olmort's prompt.
        let mean = |i: usize| times[i][1..].iter().sum::<f64>() / (positions - 1) as f64;
        println!("kv_cache: f32_ms {:.2} f16_ms {:.2} ratio {:.3}", mean(0), mean(1), mean(1) / mean(0));
        Ok(())
    })
}
