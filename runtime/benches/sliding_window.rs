//! Decode at long contexts: an OLMo-3 (sliding-window layers) against an OLMo-2 of the
//! same size, side by side in one process. Both run states are filled to each context
//! with prompt batches, then take the same tokens, one step of each at every position
//! (which goes first alternates), so both see the same machine.
//!
//!     cargo bench -p olmort --bench sliding_window -- OLMO2.bin OLMO3.bin [THREADS] [CONTEXTS] [STEPS]
//!
//! CONTEXTS is a comma-separated list of positions (default 4096,8192,16384); at each,
//! STEPS (default 64) decode steps per model. Prints, per context, each model's median
//! step, the range of the medians of its four quarters of the steps, the KV cache bytes
//! a step reads, and the ratio of the medians; then one `sliding_window:` line per
//! context.

use std::time::Instant;

use olmo_format::mapped::MappedFile;
use olmo_format::Blob;
use olmort::model::ops::top_k;
use olmort::{forward, forward_batch_for, kv_cache_positions, KvDtype, LogitRows, Model, RunState};

mod common;
use common::median;

struct Args {
    paths: [String; 2],
    contexts: Vec<usize>,
    steps: usize,
}

fn parse() -> Result<Args, String> {
    let usage = "usage: sliding_window OLMO2.bin OLMO3.bin [THREADS] [CONTEXTS] [STEPS]";
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let (Some(a), Some(b)) = (args.first(), args.get(1)) else { return Err(usage.into()) };
    let threads = args.get(2).map_or(Ok(2), |t| t.parse().map_err(|_| usage.to_string()))?;
    let contexts = match args.get(3) {
        Some(list) => list.split(',').map(|c| c.parse().map_err(|_| usage.to_string())).collect::<Result<Vec<usize>, _>>()?,
        None => vec![4096, 8192, 16384],
    };
    let steps = args.get(4).map_or(Ok(64), |s| s.parse().map_err(|_| usage.to_string()))?.max(4);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().map_err(|e| e.to_string())?;
    Ok(Args { paths: [a.clone(), b.clone()], contexts, steps })
}

/// Bytes of keys and values a decode step at `pos` reads: each layer's cached positions
/// up to `pos` (a sliding layer's window at most).
fn kv_read(model: &Model, max_positions: usize, pos: usize, kv: KvDtype) -> u64 {
    let rows: usize = kv_cache_positions(model.config, max_positions).map(|held| held.min(pos + 1)).sum();
    rows as u64 * model.config.kv_dim() * 2 * kv.element_bytes()
}

fn main() -> Result<(), String> {
    let args = parse()?;
    let maps = args.paths.iter().map(|p| MappedFile::open(p.as_ref()).map_err(|e| format!("{p}: {e}"))).collect::<Result<Vec<_>, _>>()?;
    for m in &maps {
        m.advise(memmap2::Advice::HugePage);
    }
    let blobs = maps.iter().zip(&args.paths).map(|(m, p)| Blob::parse(m.bytes()).map_err(|e| format!("{p}: {e}"))).collect::<Result<Vec<_>, _>>()?;
    let models = blobs.iter().map(|b| Model::new(b).map_err(|e| e.to_string())).collect::<Result<Vec<_>, _>>()?;
    let last = *args.contexts.iter().max().ok_or("no contexts")?;
    let max_positions = last + args.steps;
    let mut states = models
        .iter()
        .map(|m| RunState::new(m, max_positions).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    println!(
        "{} against {}: {} threads, kernels {:?}, KV cache {:?}, {} steps at each context",
        args.paths[1],
        args.paths[0],
        rayon::current_num_threads(),
        olmort::kernels::active(),
        states[0].kv_dtype(),
        args.steps
    );
    let vocab = models[0].config.vocab_size;
    let mut filled = 0;
    for &context in &args.contexts {
        // A ring cannot go back: each context continues from the previous one's end.
        let context = context.max(filled);
        // Fill both caches to `context` with the same tokens, in prompt batches.
        let started = Instant::now();
        while filled < context {
            let n = (context - filled).min(states[0].max_batch());
            let tokens: Vec<u32> = (filled..filled + n).map(|p| (p as u32).wrapping_mul(7919) % vocab).collect();
            for (model, state) in models.iter().zip(states.iter_mut()) {
                forward_batch_for(model, state, &tokens, filled, LogitRows::last_of_prompt(filled + n, context));
            }
            filled += n;
        }
        let fill = started.elapsed().as_secs_f64();
        // Both take the OLMo-2's greedy choices, so they attend over the same tokens.
        let mut token = 100;
        let mut times = [Vec::with_capacity(args.steps), Vec::with_capacity(args.steps)];
        for pos in context..context + args.steps {
            let mut next = token;
            for i in [pos % 2, 1 - pos % 2] {
                let t = Instant::now();
                let best = top_k::<5>(forward(&models[i], &mut states[i], token, pos))[0].0;
                times[i].push(t.elapsed().as_secs_f64() * 1e3);
                if i == 0 {
                    next = best;
                }
            }
            token = next;
        }
        filled = context + args.steps;
        let quarter = args.steps / 4;
        let report = |i: usize| {
            let parts: Vec<f64> = (0..4).map(|q| median(times[i][q * quarter..(q + 1) * quarter].to_vec())).collect();
            let (lo, hi) = parts.iter().fold((f64::MAX, 0f64), |(l, h), &v| (l.min(v), h.max(v)));
            let kv = kv_read(&models[i], max_positions, context, states[i].kv_dtype()) as f64 / 1e6;
            (median(times[i].clone()), lo, hi, kv)
        };
        let (a, b) = (report(0), report(1));
        println!(
            "context {context} (filled in {fill:.0} s): OLMo-2 {:.2} ms (quarters {:.2}-{:.2}, KV read {:.0} MB), OLMo-3 {:.2} ms (quarters {:.2}-{:.2}, KV read {:.0} MB), ratio {:.3}",
            a.0, a.1, a.2, a.3, b.0, b.1, b.2, b.3, b.0 / a.0
        );
        println!("sliding_window: context {context} olmo2_ms {:.2} olmo3_ms {:.2} ratio {:.3}", a.0, b.0, b.0 / a.0);
    }
    Ok(())
}
