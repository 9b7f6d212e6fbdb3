//! The KV cache of models read from `config.json` files at long contexts, against a
//! cache that keeps every position in every layer: the bytes `RunState` allocates
//! (`kv_cache_bytes`), with an f16 cache (the default for reduced-precision weights) and
//! an f32 one.
//!
//!     cargo run --release -p olmort --example kv_cache_bytes -- CONFIG.json... [--positions 8192,32768,65536]

use std::path::Path;

use olmo_format::{AttentionType, ModelConfig};
use olmort::{kv_cache_bytes, KvDtype};

fn main() -> Result<(), String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut positions = vec![8192, 32768, 65536];
    if let Some(i) = args.iter().position(|a| a == "--positions") {
        let list = args.get(i + 1).ok_or("--positions needs a list")?;
        positions = list.split(',').map(|p| p.parse().map_err(|_| format!("{p:?} is not a count"))).collect::<Result<_, _>>()?;
        args.drain(i..i + 2);
    }
    if args.is_empty() {
        return Err("usage: kv_cache_bytes CONFIG.json... [--positions 8192,32768,65536]".into());
    }
    println!("| config | layers (sliding, window) | kv heads x head_dim | positions | KV cache f16 | every position kept, f16 | ratio | KV cache f32 |");
    println!("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |");
    for path in &args {
        let config = olmoc::hf_config::read_config_json(Path::new(path)).map_err(|e| e.to_string())?.config;
        let mut every = config.clone();
        every.layer_types = vec![AttentionType::Full; config.num_hidden_layers as usize];
        every.sliding_window = None;
        let sliding = config.layer_types.iter().filter(|&&t| t == AttentionType::Sliding).count();
        for &p in &positions {
            let bytes = |c: &ModelConfig, dtype| kv_cache_bytes(c, p, dtype).ok_or("the size overflows");
            let (windowed, full, f32_bytes) = (bytes(&config, KvDtype::F16)?, bytes(&every, KvDtype::F16)?, bytes(&config, KvDtype::F32)?);
            println!(
                "| {path} | {} ({sliding}, {}) | {} x {} | {p} | {} | {} | {:.3} | {} |",
                config.num_hidden_layers,
                config.sliding_window.map_or("-".into(), |w| w.to_string()),
                config.num_key_value_heads,
                config.head_dim,
                gib(windowed),
                gib(full),
                windowed as f64 / full as f64,
                gib(f32_bytes),
            );
        }
    }
    Ok(())
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}
