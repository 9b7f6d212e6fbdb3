//! The scheduler without HTTP: eight concurrent greedy requests give, token for token,
//! what each gives alone (prompts in chunks beside running decodes, requests joining
//! and leaving between steps); the queue is bounded; a cancelled request frees its slot.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Packed;
use olmo_format::mapped::MappedFile;
use olmo_format::Blob;
use olmort::generation::sampling::SamplingParams;
use olmort::server::metrics::Metrics;
use olmort::server::scheduler::{Event, Finish, FinishReason, Job, Queue, Scheduler, SchedulerConfig, SubmitError};
use olmort::{KvDtype, Model, RunState};

fn job(prompt: Vec<u32>, max_tokens: usize) -> (Job, mpsc::Receiver<(usize, Event)>, Arc<AtomicBool>) {
    let (tx, rx) = mpsc::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let job = Job {
        prompt,
        max_tokens,
        sampling: SamplingParams::default(),
        stop: Vec::new(),
        ignore_eos: true,
        choice: 0,
        logprobs: None,
        prompt_logprobs: false,
        logit_bias: Vec::new(),
        json: None,
        cache_prompt: false,
        events: tx,
        cancel: Arc::clone(&cancel),
    };
    (job, rx, cancel)
}

/// The reply's text and how it ended.
fn collect(rx: &mpsc::Receiver<(usize, Event)>) -> (String, Finish) {
    let mut text = String::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(120)).expect("an event").1 {
            Event::Started | Event::Logprob(_) | Event::PromptLogprob(_) => {}
            Event::Text(t) => text.push_str(&t),
            Event::Done(f) => return (text, f),
        }
    }
}

/// Queues a job per (prompt, max tokens); their event channels in order.
fn submit_all(queue: &Queue, requests: &[(Vec<u32>, usize)]) -> Vec<mpsc::Receiver<(usize, Event)>> {
    requests
        .iter()
        .map(|(p, n)| {
            let (job, rx, _) = job(p.clone(), *n);
            queue.submit(job).unwrap();
            rx
        })
        .collect()
}

/// Runs `f` with a scheduler of `config` serving `model` on another thread.
fn with_scheduler<R>(model: &Model, config: SchedulerConfig, f: impl FnOnce(&Queue) -> R) -> R {
    let state = RunState::with_slots(model, config.context, config.prefill_chunk.max(config.slots), KvDtype::F32, config.slots).unwrap();
    let queue = Queue::new(config.queue, Arc::new(Metrics::default()));
    let scheduler = Scheduler::new(model, state, config, Arc::clone(&queue));
    std::thread::scope(|s| {
        s.spawn(move || scheduler.run());
        let r = f(&queue);
        queue.close();
        r
    })
}

/// The reply to `prompt` (`n` new tokens) from a scheduler of `config` serving it
/// alone.
fn reply_alone(model: &Model, config: SchedulerConfig, prompt: &[u32], n: usize) -> (String, Finish) {
    with_scheduler(model, config, |queue| {
        let (job, rx, _) = job(prompt.to_vec(), n);
        queue.submit(job).unwrap();
        collect(&rx)
    })
}

/// The value of counter `name` in a Prometheus rendering of the metrics.
fn metric(metrics: &str, name: &str) -> u64 {
    metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).unwrap().parse().unwrap()
}

fn model_of(packed: &Packed, f: impl FnOnce(&Model)) {
    let map = MappedFile::open(&packed.0).unwrap();
    let blob = Blob::parse(map.bytes()).unwrap();
    let model = Model::new(&blob).unwrap();
    f(&model)
}

#[test]
fn eight_concurrent_greedy_requests_match_each_alone() {
    let packed = Packed::new("tiny");
    model_of(&packed, |model| {
        let config = SchedulerConfig { slots: 8, context: 128, prefill_chunk: 8, queue: 16 };
        let v = model.config.vocab_size;
        // Prompts of 1 to 30 tokens (up to four chunks), replies of 5 to 40 tokens.
        let requests: Vec<(Vec<u32>, usize)> = (0..8u32)
            .map(|i| ((0..1 + i * 4).map(|j| (j * 7919 + i * 104_729 + 11) % v).collect(), 5 + 5 * i as usize))
            .collect();
        let together: Vec<(String, Finish)> = with_scheduler(model, config, |queue| submit_all(queue, &requests).iter().map(collect).collect());
        // Some steps really ran several rows: the batch held more than one sequence.
        for (i, (prompt, n)) in requests.iter().enumerate() {
            let alone = reply_alone(model, config, prompt, *n);
            assert_eq!(together[i].0, alone.0, "request {i}: its text beside seven others differs from its text alone");
            assert_eq!(together[i].1.completion_tokens, *n);
            assert_eq!(together[i].1.prompt_tokens, prompt.len());
            assert_eq!((together[i].1.reason, alone.1.reason), (FinishReason::Length, FinishReason::Length));
            assert!(!alone.0.is_empty());
        }
    });
}

#[test]
fn batches_hold_several_rows_and_prompts_come_in_chunks() {
    let packed = Packed::new("tiny");
    model_of(&packed, |model| {
        let config = SchedulerConfig { slots: 4, context: 128, prefill_chunk: 8, queue: 16 };
        let metrics = with_scheduler(model, config, |queue| {
            let rxs: Vec<_> = (0..4)
                .map(|i| {
                    let (job, rx, _) = job((0..20).map(|j| j + i).collect(), 30);
                    queue.submit(job).unwrap();
                    rx
                })
                .collect();
            for rx in &rxs {
                collect(rx);
            }
            queue.metrics.render()
        });
        let value = |name: &str| metric(&metrics, name);
        // 4 prompts of 20 in chunks of 8: 3 chunks each.
        assert_eq!(value("olmort_prefill_chunks_total"), 12);
        assert_eq!(value("olmort_prompt_tokens_total"), 80);
        assert_eq!(value("olmort_generated_tokens_total"), 120);
        // 4 x 29 fed tokens in fewer steps than one at a time.
        assert_eq!(value("olmort_decode_rows_total"), 116);
        assert!(value("olmort_decode_steps_total") < 116 / 2, "{metrics}");
    });
}

/// Five requests queued before a scheduler of `config` (its run state's batch `batch`)
/// starts, so that its first turn admits them all: four short prompts and a long one.
/// Checks that each reply is what it is alone, and returns the (prefill passes, prefill
/// chunks) they took.
fn five_read_together(model: &Model, config: SchedulerConfig, batch: usize) -> (u64, u64) {
    let v = model.config.vocab_size;
    let prompt = |len: u32, seed: u32| -> Vec<u32> { (0..len).map(|j| (j * 7919 + seed * 104_729 + 11) % v).collect() };
    let requests = [(prompt(5, 1), 6), (prompt(3, 2), 4), (prompt(6, 3), 5), (prompt(4, 4), 7), (prompt(40, 5), 3)];
    let state = RunState::with_slots(model, config.context, batch, KvDtype::F32, config.slots).unwrap();
    let queue = Queue::new(config.queue, Arc::new(Metrics::default()));
    let rxs = submit_all(&queue, &requests);
    let scheduler = Scheduler::new(model, state, config, Arc::clone(&queue));
    let together: Vec<(String, Finish)> = std::thread::scope(|s| {
        s.spawn(move || scheduler.run());
        let r = rxs.iter().map(collect).collect();
        queue.close();
        r
    });
    let metrics = queue.metrics.render();
    let value = |name: &str| metric(&metrics, name);
    assert_eq!(value("olmort_prompt_tokens_total"), 58);
    for (i, (prompt, n)) in requests.iter().enumerate() {
        let alone = reply_alone(model, config, prompt, *n);
        assert_eq!(together[i].0, alone.0, "request {i}: its text read beside others differs from its text alone");
        assert_eq!(together[i].1.completion_tokens, *n);
    }
    (value("olmort_prefill_passes_total"), value("olmort_prefill_chunks_total"))
}

/// Prompts waiting together are read together: four short ones in one pass over the
/// weights, each reply what it is alone; a long one's chunks stay its own.
#[test]
fn prompts_waiting_together_share_a_pass() {
    let packed = Packed::new("tiny");
    model_of(&packed, |model| {
        let config = SchedulerConfig { slots: 5, context: 128, prefill_chunk: 24, queue: 16 };
        // Pass 1: 5 + 3 + 6 + 4 = 18 tokens of the four short prompts; the long one's
        // first 24 do not fit beside them. Then its 24, then its last 16.
        assert_eq!(five_read_together(model, config, config.prefill_chunk.max(config.slots)), (3, 6));
    });
}

/// While no stream decodes, a pass reads waiting prompts up to the state's batch, not
/// one chunk's budget: the same five requests with a batch of twice the chunk take two
/// passes, each chunk still cut at the chunk length, each reply what it is alone.
#[test]
fn with_no_stream_decoding_a_pass_reads_up_to_the_batch() {
    let packed = Packed::new("tiny");
    model_of(&packed, |model| {
        let config = SchedulerConfig { slots: 5, context: 128, prefill_chunk: 24, queue: 16 };
        // Pass 1: the four short prompts (18 tokens) and the long one's first 24, 42 of
        // 48; then, with four streams decoding, its last 16 alone.
        assert_eq!(five_read_together(model, config, 2 * config.prefill_chunk), (2, 6));
    });
}

#[test]
fn the_queue_is_bounded() {
    let queue = Queue::new(2, Arc::new(Metrics::default()));
    let (a, _ra, _) = job(vec![1], 1);
    let (b, _rb, _) = job(vec![1], 1);
    let (c, _rc, _) = job(vec![1], 1);
    assert!(queue.submit(a).is_ok() && queue.submit(b).is_ok());
    assert_eq!(queue.submit(c).err(), Some(SubmitError::Busy));
    queue.close();
    let (d, _rd, _) = job(vec![1], 1);
    assert_eq!(queue.submit(d).err(), Some(SubmitError::Closed));
}

#[test]
fn a_cancelled_request_frees_its_slot_at_once() {
    let packed = Packed::new("trained");
    model_of(&packed, |model| {
        let config = SchedulerConfig { slots: 1, context: 256, prefill_chunk: 16, queue: 4 };
        with_scheduler(model, config, |queue| {
            // A long reply occupies the only slot; the next request waits for it.
            let (long, rx_long, cancel) = job(vec![1, 2, 3], 250);
            queue.submit(long).unwrap();
            assert_eq!(rx_long.recv().unwrap(), (0, Event::Started));
            let (next, rx_next, _) = job(vec![4, 5], 3);
            queue.submit(next).unwrap();
            while !matches!(rx_long.recv().unwrap().1, Event::Text(_)) {}
            let cancelled = Instant::now();
            cancel.store(true, Ordering::Relaxed);
            queue.nudge();
            let (_, finish) = collect(&rx_next);
            assert_eq!(finish.completion_tokens, 3);
            // The long reply (about 2 ms a token) would have held the slot for 250 tokens.
            let waited = cancelled.elapsed();
            assert!(waited < Duration::from_millis(300), "the next request waited {waited:?}");
            assert_eq!(queue.metrics.requests_cancelled.load(Ordering::Relaxed), 1);
            // The cancelled reply stops: no Done for it.
            while let Ok(e) = rx_long.try_recv() {
                assert!(!matches!(e.1, Event::Done(_)), "a cancelled request finished");
            }
            // A dropped receiver (the handler gone) frees the slot too.
            let (gone, rx_gone, _) = job(vec![6], 250);
            queue.submit(gone).unwrap();
            drop(rx_gone);
            let (after, rx_after, _) = job(vec![7], 2);
            queue.submit(after).unwrap();
            assert_eq!(collect(&rx_after).1.completion_tokens, 2);
        });
    });
}
