//! Measures madvise hints on a blob's map: opens it, applies the hints, and times the
//! first forward steps (docs/STARTUP.md; `olmort --load` keeps the ones that help).
//!
//! ```text
//! cargo run --release -p olmort --example map_hints -- MODEL.bin HINT[,HINT...] [STEPS]
//! ```
//!
//! Hints, applied in the order given: `none`, `hugepage`, `willneed`, `sequential`,
//! `random`, `populate` (MADV_POPULATE_READ), `mlock`, `touch` (read one byte every
//! 128 KiB of the map on this thread before the first step). Prints one line: the hint
//! time and each step's milliseconds.

use std::process::ExitCode;
use std::time::Instant;

use memmap2::Advice;
use olmo_format::mapped::MappedFile;
use olmo_format::Blob;

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, hints, rest @ ..] = &args[..] else {
        return Err("usage: map_hints MODEL.bin HINT[,HINT...] [STEPS]".into());
    };
    let steps: usize = rest.first().map_or(Ok(2), |s| s.parse()).map_err(|e| format!("STEPS: {e}"))?;
    let started = Instant::now();
    let map = MappedFile::open(path.as_ref()).map_err(|e| format!("{path}: {e}"))?;
    let blob = Blob::parse(map.bytes()).map_err(|e| format!("{path}: {e}"))?;
    let model = olmort::Model::new(&blob).map_err(|e| format!("{path}: {e}"))?;
    let t = Instant::now();
    for hint in hints.split(',') {
        match hint {
            "none" => {}
            "hugepage" => map.advise(Advice::HugePage),
            "willneed" => map.advise(Advice::WillNeed),
            "sequential" => map.advise(Advice::Sequential),
            "random" => map.advise(Advice::Random),
            "populate" => map.advise(Advice::PopulateRead),
            "mlock" => map.lock().map_err(|e| format!("mlock: {e}"))?,
            "touch" => {
                let bytes = map.bytes();
                for at in (0..bytes.len()).step_by(128 << 10) {
                    std::hint::black_box(bytes[at]);
                }
            }
            other => return Err(format!("unknown hint {other:?}")),
        }
    }
    let hint_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut state = olmort::RunState::new(&model, steps.max(1)).map_err(|e| e.to_string())?;
    let mut token = 28070u32.min(model.config.vocab_size - 1);
    let mut step_ms = Vec::new();
    for pos in 0..steps {
        let t = Instant::now();
        let logits = olmort::forward(&model, &mut state, token, pos);
        token = olmort::model::ops::top_k::<1>(logits)[0].0;
        step_ms.push(format!("{:.1}", t.elapsed().as_secs_f64() * 1e3));
    }
    println!(
        "hints={hints} hint_ms={hint_ms:.1} steps_ms={} total_ms={:.1}",
        step_ms.join(","),
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("map_hints: {e}");
            ExitCode::FAILURE
        }
    }
}
