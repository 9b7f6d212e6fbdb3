#!/usr/bin/env python3
"""What holding a reply to a grammar costs a decode step of `olmort serve` on an
OLMo-2-0425-1B-shaped checkpoint: greedy chat replies, one stream at a time, free
(`tool_choice: "none"`), with tools the model may call (`"auto"`: nothing masked until
it opens a call block), held to a call block (`"required"`), and held to a JSON object
(`response_format: json_object`).

    python3 tools/bench_grammar.py [--dtype q8_0] [--tokens 64] [--rounds 5]

Uses bench-data/1b (tools/make_fixture.py --shape 1b --no-reference bench-data/1b):
bench-data/1b-tools/ links to its files and adds the fixtures' dolma2 vocab.txt and
chat/olmo3_tools's tokenizer_config.json (OLMo-3's tool template), packed as
bench-data/1b-tools-DTYPE.bin if missing. Each reply is --tokens new tokens
(ignore_eos; the random weights keep a required call's argument string open, the
mask's costliest place); a step is (time of the whole request - time of the same
request for one token) / (its tokens - 1), the prompt's time and the first token's
taken out (a held call streams no text until it ends, so chunk times would not tell).
Rounds alternate the modes; the table gives each mode's median ms per step over the
rounds and its ratio to the free replies' in the same run. Name the CPU beside it.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import ROOT, Server, pack, request  # noqa: E402

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}}]

MODES = {
    "free (tool_choice none)": {"tools": TOOLS, "tool_choice": "none"},
    "tools, auto": {"tools": TOOLS, "tool_choice": "auto"},
    "tools, required": {"tools": TOOLS, "tool_choice": "required"},
    "json_object": {"response_format": {"type": "json_object"}},
}


def blob(weights, dtype):
    folder = ROOT / "bench-data/1b-tools"
    folder.mkdir(exist_ok=True)
    sources = [(p, p.name) for p in Path(weights).glob("*.npy")] + [(Path(weights) / "config.json", "config.json")]
    sources += [(ROOT / "tests/fixtures/tiny/vocab.txt", "vocab.txt")]
    sources += [(ROOT / "tests/fixtures/chat/olmo3_tools" / n, n) for n in ("tokenizer_config.json", "generation_config.json")]
    for src, name in sources:
        link = folder / name
        if not link.exists():
            os.symlink(src.resolve(), link)
    out = ROOT / f"bench-data/1b-tools-{dtype}.bin"
    if not out.exists():
        pack(folder, out, dtype)
    return out


def timed(port, body):
    """(seconds, completion tokens) of one whole request."""
    t0 = time.perf_counter()
    status, _, out = request(port, "POST", "/v1/chat/completions", body)
    elapsed = time.perf_counter() - t0
    assert status == 200, out
    return elapsed, json.loads(out)["usage"]["completion_tokens"]


def step(port, body, tokens):
    """Seconds per decode step: a reply of `tokens` less a reply of one."""
    one, _ = timed(port, {**body, "max_tokens": 1})
    whole, n = timed(port, {**body, "max_tokens": tokens})
    return (whole - one) / (n - 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", default="q8_0")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", default=str(ROOT / "bench-data/1b"))
    args = ap.parse_args()
    path = blob(args.weights, args.dtype)
    base = {"messages": [{"role": "user", "content": "What is the weather in Oslo?"}], "temperature": 0, "ignore_eos": True}
    with Server(path, "--parallel", "1", "--ctx-size", "1024", "--threads", str(args.threads)) as server:
        for body in MODES.values():
            step(server.port, {**base, **body}, 4)
        gaps = {name: [] for name in MODES}
        for _ in range(args.rounds):
            for name, body in MODES.items():
                gaps[name].append(step(server.port, {**base, **body}, args.tokens))
    free = statistics.median(gaps["free (tool_choice none)"]) * 1e3
    print(f"| {args.dtype}, {args.tokens} tokens x {args.rounds} rounds | ms / step (median) | ratio to free |")
    print("| --- | ---: | ---: |")
    for name, g in gaps.items():
        ms = statistics.median(g) * 1e3
        print(f"| {name} | {ms:.2f} ({', '.join(f'{x * 1e3:.2f}' for x in g)}) | {ms / free:.3f} |")


if __name__ == "__main__":
    main()
