//! What holding a reply to a grammar costs a step: `JsonMode::mask` over the blob's
//! vocabulary for a JSON object (`response_format: json_object`), an object of a schema
//! (`json_schema`) and a required tool call (`tool_choice: required`), each after
//! several replies so far (structure, inside a string, inside a number).
//!
//!     cargo bench -p olmort --bench grammar_mask -- MODEL.bin [THREADS] [RUNS]
//!
//! Prints the median time of one mask (over RUNS) and how many tokens it keeps; the
//! blob needs a vocabulary. The mask runs on one thread (THREADS is not used).

use std::sync::Arc;
use std::time::Instant;

use olmort::generation::call_grammar::CallRules;
use olmort::generation::json::{JsonFormat, JsonMode, JsonVocab};
use olmort::generation::json_schema::Schema;
use serde_json::json;

mod common;
use common::{median, Args};

fn main() -> Result<(), String> {
    let args = Args::parse("grammar_mask MODEL.bin [THREADS] [RUNS]", 50)?;
    args.with_model(|_, model| {
        let vocab = model.vocab.ok_or("the blob has no vocabulary")?;
        let n = model.config.vocab_size as usize;
        let start = Instant::now();
        let classes = Arc::new(JsonVocab::new(&vocab, n));
        println!("vocabulary of {n} tokens; its token classes built in {:.1} ms", start.elapsed().as_secs_f64() * 1e3);
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "sky": {"enum": ["sun", "rain"]}, "cold": {"type": "boolean"}},
            "required": ["city", "days", "sky", "cold"], "additionalProperties": false});
        let weather = json!({"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "units": {"enum": ["c", "f"]}}, "required": ["city"]});
        let time = json!({"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]});
        let calls = CallRules::new([("get_weather", Some(&weather)), ("get_time", Some(&time))], true)?;
        let formats: [(&str, JsonFormat, &[&str]); 3] = [
            ("json_object", JsonFormat::Object, &["", "{", "{\"city\": \"Par", "{\"days\": 12", "{\"a\": [1, {\"b\": "]),
            ("json_schema", JsonFormat::Schema(Arc::new(Schema::compile(&schema)?)), &["", "{", "{\"city\": \"Par", "{\"city\": \"P\", \"days\": 12", "{\"city\": \"P\", \"days\": 1, \"sky\": \""]),
            (
                "tool call",
                JsonFormat::Calls(Arc::new(calls)),
                &["", "<function_calls>", "<function_calls>get_", "<function_calls>get_weather(city=\"Par", "<function_calls>get_weather(days=12", "<function_calls>get_weather(city=\"P\", "],
            ),
        ];
        let logits: Vec<f32> = (0..n).map(|i| (i % 97) as f32 * 0.1).collect();
        println!("{:<12} {:<44} {:>9} {:>10}", "format", "reply so far", "ms/mask", "tokens kept");
        for (name, format, replies) in &formats {
            for reply in replies.iter() {
                let mut mode = JsonMode::new(Arc::clone(&classes), format);
                if !reply.is_empty() && !mode.push(reply.as_bytes()) {
                    return Err(format!("{name}: {reply:?} does not continue the grammar"));
                }
                let kept = mode.mask(&vocab, &logits).iter().filter(|l| l.is_finite()).count();
                let times: Vec<f64> = (0..args.count)
                    .map(|_| {
                        let t = Instant::now();
                        std::hint::black_box(mode.mask(&vocab, &logits));
                        t.elapsed().as_secs_f64() * 1e3
                    })
                    .collect();
                println!("{name:<12} {:<44} {:>9.3} {kept:>10}", format!("{reply:?}"), median(times));
            }
        }
        Ok(())
    })
}
