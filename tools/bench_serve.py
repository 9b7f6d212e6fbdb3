#!/usr/bin/env python3
"""Throughput and latency of `olmort serve` with continuous batching on an
OLMo-2-0425-1B-shaped checkpoint: aggregate generated tokens/s with 1, 2, 4 and 8
concurrent streams, and time to first token, alone and under load.

    python3 tools/bench_serve.py                       # q8_0 and bf16, 3 runs each
    python3 tools/bench_serve.py --dtypes q8_0 --runs 5 --streams 1 8

Uses bench-data/1b (tools/make_fixture.py --shape 1b --no-reference bench-data/1b):
bench-data/1b-text/ links to its files and adds the fixtures' dolma2 vocab.txt (so the
server streams text), packed as bench-data/1b-text-DTYPE.bin if missing. For each dtype one server
(`olmort serve --parallel 8 --ctx-size 1024`, --threads 2 by default) is started and,
after a warm-up request:

- for S streams: S streamed requests start together (a 16-token prompt each, different
  ones, --tokens new tokens each, greedy, ignore_eos). Aggregate tokens/s = S x tokens
  over the time from the start to the last stream's end; decode tokens/s counts from
  each stream's first token (the prompts excluded). TTFT: the median of the S streams'
  times to their first token. Medians over --runs runs; the ratio column divides by the
  1-stream figure of the same run set.
- under load: 7 streams decoding, then an 8th request with a 512-token prompt: its time
  to first token (the prompt goes in --prefill-chunk chunks between the others' steps)
  and the longest pause the running streams saw meanwhile.
- a conversation's next turn (`--history N`, default 900 of the 1024 positions): a
  request of N prompt tokens, then the same N and 40 more (as a chat resends its
  history), its time to the first token with `"cache_prompt": true` and then `false`,
  alternating.

Prints a Markdown table; name the CPU beside it.
"""

import argparse
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import ROOT, Server, pack, request, stream  # noqa: E402


def prompt(i, n=16):
    return [(j * 7919 + i * 104729 + 17) % 100000 + 100 for j in range(n)]


def run_streams(port, s, tokens, base):
    """S streams at once: (aggregate tokens/s, decode tokens/s, median TTFT s)."""
    barrier = threading.Barrier(s + 1)
    out = [None] * s

    def one(i):
        body = {"prompt": prompt(base + i), "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
        barrier.wait()
        t0 = time.perf_counter()
        status, events = stream(port, "/v1/completions", body)
        assert status == 200, status
        times = [t for t, e in events if e and e.get("choices") and e["choices"][0].get("text")]
        out[i] = (t0, times[0], events[-1][0])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(s)]
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads:
        t.join()
    start = min(o[0] for o in out)
    end = max(o[2] for o in out)
    first_last = max(o[1] for o in out)
    aggregate = s * tokens / (end - start)
    decode = s * (tokens - 1) / (end - first_last) if end > first_last else float("nan")
    ttft = statistics.median(o[1] - o[0] for o in out)
    return aggregate, decode, ttft


def under_load(port, tokens, prompt_len):
    """7 decoding streams, then a long prompt: (its TTFT s, longest pause s, its prompt tok/s)."""
    stamps = [[] for _ in range(7)]
    stop = threading.Event()

    def runner(i):
        def on(e, t):
            if e and e.get("choices"):
                stamps[i].append(t)
        stream(port, "/v1/completions", {"prompt": prompt(900 + i), "max_tokens": tokens, "temperature": 0,
                                          "ignore_eos": True}, on_event=on)

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(7)]
    for t in threads:
        t.start()
    while min(len(s) for s in stamps) < 3:
        time.sleep(0.01)
    t0 = time.perf_counter()
    first = []
    stream(port, "/v1/completions", {"prompt": prompt(999, prompt_len), "max_tokens": 2, "temperature": 0, "ignore_eos": True},
           on_event=lambda e, t: first.append(t) if e and e.get("choices") else None)
    t1 = first[0]
    stop.set()
    for t in threads:
        t.join()
    gaps = [b - a for s in stamps for a, b in zip(s, s[1:]) if b > t0 and a < t1]
    return t1 - t0, max(gaps) if gaps else float("nan"), prompt_len / (t1 - t0)


def next_turn(port, history, cache, base):
    """Time (s) to the first token of a turn that resends `history` tokens and adds 40,
    after a request of the history alone; and the prompt tokens it found cached."""
    first = prompt(base, history)
    request(port, "POST", "/v1/completions", {"prompt": first, "max_tokens": 1, "temperature": 0, "cache_prompt": cache})
    body = {"prompt": first + prompt(base + 1, 40), "max_tokens": 1, "temperature": 0, "cache_prompt": cache,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    status, events = stream(port, "/v1/completions", body)
    assert status == 200, status
    first_token = next(t for t, e in events if e and e.get("choices"))
    usage = next(e["usage"] for _, e in events if e and e.get("usage"))
    return first_token - t0, usage["prompt_tokens_details"]["cached_tokens"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtypes", nargs="+", default=["q8_0", "bf16"])
    ap.add_argument("--streams", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill-chunk", type=int, default=64)
    ap.add_argument("--weights", default=str(ROOT / "bench-data/1b"))
    ap.add_argument("--history", type=int, default=900, help="prompt tokens before a conversation's next turn")
    args = ap.parse_args()
    weights = Path(args.weights)
    if not weights.exists():
        sys.exit(f"{weights}: make it with python3 tools/make_fixture.py --shape 1b --no-reference {weights}")
    text = weights.parent / f"{weights.name}-text"
    text.mkdir(exist_ok=True)
    for f in list(weights.iterdir()) + [ROOT / "tests/fixtures/tiny/vocab.txt"]:
        if not (text / f.name).exists():
            (text / f.name).symlink_to(f.resolve())
    rows = []
    for dtype in args.dtypes:
        blob = pack(text, weights.parent / f"{text.name}-{dtype}.bin", dtype)
        with Server(blob, "--parallel", str(max(8, max(args.streams))), "--ctx-size", "1024", "--threads", str(args.threads),
                    "--prefill-chunk", str(args.prefill_chunk), "--load", "populate") as server:
            request(server.port, "POST", "/v1/completions", {"prompt": prompt(0), "max_tokens": 4, "ignore_eos": True})
            results = {s: [] for s in args.streams}
            for run in range(args.runs):
                # Interleaved, so that each stream count sees the machine's moods alike.
                for s in args.streams:
                    results[s].append(run_streams(server.port, s, args.tokens, 10 * s + 100 * run))
                    print(f"{dtype} run {run} streams {s}: {results[s][-1]}", file=sys.stderr)
            loads = [under_load(server.port, 4 * args.tokens, 512) for _ in range(args.runs)]
            turns = {True: [], False: []}
            for run in range(args.runs):
                for cache in (True, False):
                    turns[cache].append(next_turn(server.port, args.history, cache, 1000 + 10 * run + cache))
        base = statistics.median(r[0] for r in results[args.streams[0]])
        for s in args.streams:
            agg = statistics.median(r[0] for r in results[s])
            dec = statistics.median(r[1] for r in results[s])
            ttft = statistics.median(r[2] for r in results[s])
            rows.append(f"| {dtype} | {s} | {agg:.1f} | {agg / base:.2f}x | {dec:.1f} | {ttft * 1e3:.0f} |")
        ttft, gap, speed = (statistics.median(x[i] for x in loads) for i in range(3))
        rows.append(f"| {dtype} | 7 + a 512-token prompt | | | | {ttft * 1e3:.0f} (prompt {speed:.0f} tok/s; "
                    f"longest pause of the 7: {gap * 1e3:.0f} ms) |")
        for cache in (True, False):
            t = statistics.median(x[0] for x in turns[cache])
            kept = statistics.median(x[1] for x in turns[cache])
            rows.append(f"| {dtype} | 1, next turn after {args.history} tokens, cache_prompt {str(cache).lower()} "
                        f"({kept:.0f} cached) | | | | {t * 1e3:.0f} |")
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
    print(f"\n{cpu}, {args.threads} threads, {args.tokens} new tokens per stream, medians of {args.runs} runs\n")
    print("| dtype | streams | aggregate tokens/s | vs 1 stream | decode tokens/s | time to first token, ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
