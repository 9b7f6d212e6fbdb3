//! A prompt's speed against its compute floor, in one process:
//! `cargo bench -p olmort --bench prompt_floor -- MODEL.bin [THREADS] [TOKENS]`.
//!
//! Each run feeds a TOKENS-long prompt (batches of the state's `max_batch`, the last
//! position's logits only, as running text needs and llama.cpp's prompt figure
//! computes), then right after it measures the AMX `tdpbf16ps` peak on every thread of
//! the same team at once (tiles already loaded, nothing read from memory). The floor
//! is the prompt's FLOPs (every matrix product of every layer for every token, plus
//! attention's two products over the positions each token sees, plus the last
//! position's `lm_head`) over that peak; the ratio is the prompt's time over its
//! floor. Without AMX there is no peak and only the times are printed. Medians over
//! RUNS runs (env `RUNS`, default 5), after one run to fault everything in. Where each
//! prompt's time goes (`RunState::time_sections`: the products, the norms, attention,
//! the logits, summed over the layers) follows each run's line, and the medians the
//! last line.
//!
//! Where the time goes is worth comparing between builds even when the machine's speed
//! drifts: the sections of one prompt share its state.

use std::time::Instant;

use olmort::model::forward::{forward_batch_for, LogitRows};
use olmort::{Model, RunState};

mod common;
use common::{median, Args};

fn main() -> Result<(), String> {
    let args = Args::parse("prompt_floor MODEL.bin [THREADS] [TOKENS]", 512)?;
    args.with_model(|_, model| run(&args, model))
}

/// FLOPs of a prompt of `n` tokens from position 0 with last-position logits.
fn prompt_flops(model: &Model, n: usize) -> f64 {
    let c = model.config;
    let d = c.hidden_size as f64;
    let (q, kv, f) = (c.q_dim() as f64, c.kv_dim() as f64, c.intermediate_size as f64);
    let layers = c.num_hidden_layers as f64;
    let per_token = 2.0 * layers * (d * (q + 2.0 * kv) + q * d + 3.0 * d * f);
    // Token p sees p + 1 positions: scores and weighted values, 2 x 2 x q FLOPs each
    // (sliding windows ignored: the 1B has none).
    let seen = (n * (n + 1) / 2) as f64;
    let attention = 4.0 * q * layers * seen;
    per_token * n as f64 + attention + 2.0 * d * c.vocab_size as f64
}

/// The team's AMX bf16 peak in GFLOP/s, every thread at once, or `None` without AMX.
fn team_peak(state: &RunState) -> Option<f64> {
    const PRODUCTS: usize = 1 << 20;
    olmort::kernels::amx_bf16_peak(4)?;
    let team = state.team();
    let t = Instant::now();
    team.run(team.threads(), &|_| {
        std::hint::black_box(olmort::kernels::amx_bf16_peak(PRODUCTS));
    });
    let flops = (team.threads() * PRODUCTS * 16 * 16 * 32 * 2) as f64;
    Some(flops / t.elapsed().as_secs_f64() / 1e9)
}

fn run(args: &Args, model: &Model) -> Result<(), String> {
    let (path, threads, n) = (&args.path, args.threads, args.count);
    let runs: usize = std::env::var("RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let vocab = model.config.vocab_size;
    let tokens: Vec<u32> = (0..n as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let mut state = RunState::new(model, n).map_err(|e| e.to_string())?;
    let batch = state.max_batch();
    let prompt = |state: &mut RunState| {
        let t = Instant::now();
        for (i, chunk) in tokens.chunks(batch).enumerate() {
            let rows = LogitRows::last_of_prompt(i * batch + chunk.len(), n);
            std::hint::black_box(forward_batch_for(model, state, chunk, i * batch, rows));
        }
        t.elapsed().as_secs_f64()
    };
    prompt(&mut state);
    let flops = prompt_flops(model, n);
    println!(
        "{path}: {threads} threads, kernels {:?}, {n} tokens in batches of {batch}, {:.1} GFLOP",
        olmort::kernels::active(),
        flops / 1e9
    );
    let (mut seconds, mut peaks, mut ratios, mut sections) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 1..=runs {
        state.time_sections(true);
        let s = prompt(&mut state);
        let times = state.section_times().expect("sections timed");
        state.time_sections(false);
        let peak = team_peak(&state);
        match peak {
            Some(p) => {
                let floor = flops / (p * 1e9);
                println!("run {r}: {:.1} ms, {:.1} tok/s; AMX peak {p:.0} GFLOP/s, floor {:.1} ms, ratio {:.2}", s * 1e3, n as f64 / s, floor * 1e3, s / floor);
                peaks.push(p);
                ratios.push(s / floor);
            }
            None => println!("run {r}: {:.1} ms, {:.1} tok/s", s * 1e3, n as f64 / s),
        }
        println!("  sections ms: {}", section_line(times.sections().map(|(name, t)| (name, t.as_secs_f64()))));
        seconds.push(s);
        sections.push(times.sections());
    }
    let s = median(seconds);
    print!("prompt_floor: tokens {n} ms {:.1} tok_s {:.1} gflop_s {:.0}", s * 1e3, n as f64 / s, flops / s / 1e9);
    if !peaks.is_empty() {
        print!(" amx_peak {:.0} ratio {:.2}", median(peaks), median(ratios));
    }
    println!();
    if let Some(first) = sections.first() {
        let medians: [(&str, f64); 9] = std::array::from_fn(|i| (first[i].0, median(sections.iter().map(|run| run[i].1.as_secs_f64()).collect())));
        println!("prompt_floor_sections: ms {}", section_line(medians));
    }
    Ok(())
}

/// `name ms` for each section, in milliseconds.
fn section_line<const N: usize>(sections: [(&str, f64); N]) -> String {
    sections.iter().map(|(name, seconds)| format!("{name} {:.1}", seconds * 1e3)).collect::<Vec<_>>().join(" ")
}
