//! What keeping the KV cache across chat turns saves. A chat session takes a
//! conversation turn by turn, reusing its cache (each turn runs only the tokens after
//! the prompt's common prefix with the cache); right after each turn, the same prompt is
//! run whole on a second run state (what the turn costs a stateless server that forgets
//! the cache). Both are timed in the same process, one after the other, so both see the
//! same machine. Greedy replies of at most 32 tokens; the blob needs a chat template and
//! a vocabulary.
//!
//!     cargo bench -p olmort --bench chat_turns -- MODEL.bin [THREADS] [RUNS]
//!
//! Prints, per turn, the prompt's tokens, how many the session took from its cache and
//! ran, and the median time (over RUNS runs) of that and of running the whole prompt.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use olmo_format::Blob;
use olmort::generation::sampling::SamplingParams;
use olmort::generation::session::{ChatFormat, ChatOptions, ChatSession, Conversation, TurnStats};
use olmort::{forward_batch_for, LogitRows, RunState};

mod common;
use common::{median, Args};

const SYSTEM: &str = "You are a helpful assistant. Answer clearly and stay on the topic the user brings up.";

const TURNS: [&str; 8] = [
    "I am planning a week of walking in the Alps in early June. Which regions would you suggest, and why?",
    "How fit do I need to be for huts at around 2500 metres, and how should I train in the six weeks before?",
    "What should I pack? I would like to carry less than eight kilograms, water not included.",
    "Is snow still a problem on the passes at that time of year, and how do I find out before I go?",
    "Which maps or apps work well offline there?",
    "Can you suggest a rough day-by-day plan for the first three days?",
    "What do the huts usually charge for half board, and do I need to book ahead?",
    "Thank you. Please summarise the plan in five short bullet points.",
];

fn main() -> Result<(), String> {
    let args = Args::parse("chat_turns MODEL.bin [THREADS] [RUNS]", 3)?;
    args.with_model(|map, model| {
        let blob = Blob::parse(map.bytes()).map_err(|e| e.to_string())?;
        let context = (model.config.max_position_embeddings as usize).min(2048);
        println!("{}: {} threads, context {context}, kernels {:?}", args.path, args.threads, olmort::kernels::active());
        let stop = AtomicBool::new(false);
        let mut whole = RunState::new(model, context).map_err(|e| e.to_string())?;
        // [turn] -> (the turn's stats, the whole prompt's time) of each run.
        let mut turns: Vec<Vec<(TurnStats, f64)>> = vec![Vec::new(); TURNS.len()];
        for _ in 0..args.count.max(1) {
            let format = ChatFormat::for_model(model, blob.manifest.chat.as_ref(), None).map_err(|e| e.to_string())?;
            let state = RunState::new(model, context).map_err(|e| e.to_string())?;
            let options = ChatOptions { sampling: SamplingParams::default(), max_tokens: Some(32) };
            let mut session = ChatSession::new(model, state, format, Conversation::new(Some(SYSTEM)), options);
            for (turn, line) in TURNS.iter().enumerate() {
                let stats = session.send(line, &stop, &mut |_, _| Ok(())).map_err(|e| e.to_string())?;
                // The prompt the turn ran: the conversation without the new reply.
                let messages = session.conversation().messages();
                let prompt = session.format().prompt(&messages[..messages.len() - 1]).map_err(|e| e.to_string())?;
                assert_eq!(prompt.len(), stats.prompt_tokens);
                let started = Instant::now();
                let batch = whole.max_batch();
                for (i, chunk) in prompt.chunks(batch).enumerate() {
                    forward_batch_for(model, &mut whole, chunk, i * batch, LogitRows::last_of_prompt(i * batch + chunk.len(), prompt.len()));
                }
                turns[turn].push((stats, started.elapsed().as_secs_f64() * 1e3));
            }
        }
        let (mut total_reusing, mut total_whole) = (0.0, 0.0);
        for (turn, runs) in turns.iter().enumerate() {
            let s = runs[0].0;
            let reusing = median(runs.iter().map(|r| r.0.prefill_time.as_secs_f64() * 1e3).collect());
            let whole = median(runs.iter().map(|r| r.1).collect());
            let reply = median(runs.iter().map(|r| r.0.generation_time.as_secs_f64() * 1e3).collect());
            total_reusing += reusing;
            total_whole += whole;
            println!(
                "turn {}: prompt {} tokens, {} from the cache, {} run in {reusing:.1} ms; whole prompt {whole:.1} ms ({:.1}x); reply {} tokens in {reply:.1} ms",
                turn + 1,
                s.prompt_tokens,
                s.reused,
                s.prefilled,
                whole / reusing,
                s.generated,
            );
        }
        println!("chat_turns: prompt_ms reusing {total_reusing:.1} whole {total_whole:.1} ratio {:.2}", total_whole / total_reusing);
        Ok(())
    })
}
