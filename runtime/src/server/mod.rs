//! `olmort serve`: an OpenAI-compatible HTTP server with continuous batching.
//!
//! As llama-server does it: one scheduler loop ([`scheduler`]) owns the model, the KV
//! slots and the batch, and runs every active conversation's next token in one pass
//! over the weights (`forward_rows`), a long prompt in chunks between those steps; the
//! HTTP handlers ([`http`]) only parse and validate requests ([`api`]), render and
//! encode prompts, queue them and stream the tokens back; [`responses`] reads the
//! Responses API as the chat it amounts to and answers in its shapes. [`metrics`]
//! counts for `/metrics`.

pub mod api;
pub mod http;
pub mod metrics;
pub mod responses;
pub mod scheduler;

use std::net::TcpListener;
use std::sync::Arc;

use crate::generation::session::ChatFormat;
use crate::model::forward::{KvDtype, RunState};
use crate::model::Model;
use crate::text::tokenizer::Tokenizer;
use crate::RunError;

use http::{App, HttpConfig};
use metrics::Metrics;
use scheduler::{Queue, Scheduler, SchedulerConfig};

/// Everything `olmort serve` can be told.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub scheduler: SchedulerConfig,
    pub http: HttpConfig,
    pub kv: KvDtype,
}

/// Serves `model` on `listener`: the KV slots are allocated, the scheduler loop started
/// on its own thread, and connections served until [`App::stop`]. `control` runs beside
/// them with the app (the command passes nothing to do; tests drive requests and stop it).
pub fn serve<'v>(
    model: &Model<'v>,
    chat: Option<&ChatFormat<'v>>,
    tokenizer: Option<&Tokenizer<'v>>,
    options: &ServeOptions,
    listener: &TcpListener,
    control: impl FnOnce(&App) + Send,
) -> Result<(), RunError> {
    let c = options.scheduler;
    if c.slots == 0 || c.prefill_chunk == 0 || c.context < 2 {
        return Err(RunError::Usage("the server needs at least one slot, a prompt chunk of 1 and a context of 2".into()));
    }
    // Twice a chunk: while no stream decodes, the scheduler reads that many tokens of
    // waiting prompts in one pass (eight 16-token prompts at the default chunk of 64).
    let state = RunState::with_slots(model, c.context, 2 * c.prefill_chunk.max(c.slots), options.kv, c.slots)?;
    let queue = Queue::new(c.queue, Arc::new(Metrics::default()));
    let scheduler = Scheduler::new(model, state, c, Arc::clone(&queue));
    let mut http = options.http.clone();
    http.context = c.context;
    let app = App::new(http, queue, chat, tokenizer, model.config.vocab_size);
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("olmort-scheduler".into())
            .spawn_scoped(scope, move || scheduler.run())
            .map_err(RunError::Io)?;
        let app = &app;
        scope.spawn(move || control(app));
        app.serve(listener);
        Ok(())
    })
}
