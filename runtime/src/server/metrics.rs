//! Counters and gauges for `GET /metrics` (Prometheus' text format): what a load
//! balancer in front of several replicas, or whoever watches them, needs to see.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Updated by the scheduler and the HTTP handlers, read by `/metrics`.
#[derive(Default)]
pub struct Metrics {
    /// Requests answered, by outcome.
    pub requests_ok: AtomicU64,
    pub requests_client_error: AtomicU64,
    pub requests_rejected_busy: AtomicU64,
    /// Requests whose client went away before the end.
    pub requests_cancelled: AtomicU64,
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens a slot's cache already held (`cache_prompt`), not run.
    pub prompt_tokens_cached: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Requests waiting for a slot.
    pub queue_depth: AtomicU64,
    /// Slots running a request.
    pub busy_slots: AtomicU64,
    pub slots: AtomicU64,
    /// Forward passes (decode batches and prompt passes) and what they ran: decode
    /// rows, prompt chunks (several prompts' chunks may share a pass).
    pub decode_steps: AtomicU64,
    pub decode_rows: AtomicU64,
    pub prefill_passes: AtomicU64,
    pub prefill_chunks: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP olmort_{name} {help}\n# TYPE olmort_{name} {kind}");
            for (labels, v) in lines {
                let _ = writeln!(out, "olmort_{name}{labels} {v}");
            }
        };
        metric(
            "requests_total",
            "counter",
            "Requests answered, by outcome.",
            &[
                ("{outcome=\"ok\"}", get(&self.requests_ok)),
                ("{outcome=\"client_error\"}", get(&self.requests_client_error)),
                ("{outcome=\"busy\"}", get(&self.requests_rejected_busy)),
                ("{outcome=\"cancelled\"}", get(&self.requests_cancelled)),
            ],
        );
        metric("prompt_tokens_total", "counter", "Prompt tokens run.", &[("", get(&self.prompt_tokens))]);
        metric(
            "prompt_tokens_cached_total",
            "counter",
            "Prompt tokens a slot's cache already held (not run).",
            &[("", get(&self.prompt_tokens_cached))],
        );
        metric("generated_tokens_total", "counter", "Tokens generated.", &[("", get(&self.generated_tokens))]);
        metric("queue_depth", "gauge", "Requests waiting for a slot.", &[("", get(&self.queue_depth))]);
        metric("busy_slots", "gauge", "Slots running a request.", &[("", get(&self.busy_slots))]);
        metric("slots", "gauge", "Slots (requests run at once).", &[("", get(&self.slots))]);
        metric("decode_steps_total", "counter", "Decode batches run.", &[("", get(&self.decode_steps))]);
        metric("decode_rows_total", "counter", "Tokens decoded in those batches.", &[("", get(&self.decode_rows))]);
        metric("prefill_passes_total", "counter", "Prompt passes run.", &[("", get(&self.prefill_passes))]);
        metric("prefill_chunks_total", "counter", "Prompt chunks run in those passes.", &[("", get(&self.prefill_chunks))]);
        out
    }
}
