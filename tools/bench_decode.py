#!/usr/bin/env python3
"""Decode and prompt speed of olmort on an OLMo-2-0425-1B-shaped checkpoint, per dtype,
against the memory-bandwidth floor measured in the same run.

    python3 tools/bench_decode.py                  # everything, 2 threads
    python3 tools/bench_decode.py --dtypes q8_0 --runs 5 --no-prompt

Steps (each reuses what is already there):
  1. bench-data/1b: random weights of the 1B shape (tools/make_fixture.py --shape 1b
     --no-reference; ~6 GB of .npy, needs torch + transformers, git-ignored).
  2. bench-data/1b-DTYPE.bin: `olmoc pack --dtype DTYPE` of it.
  3. Read bandwidth: `cargo bench -p olmort --bench bandwidth` with THREADS workers
     streaming the blob itself, mapped (the page-cache pages decode reads, with the page
     sizes the kernel gave them), right before and right after every decode run: this
     machine's bandwidth moves between runs (30-70 GB/s seen), so each run gets its own
     floor. A 2 GiB heap buffer is streamed once per dtype for comparison.
  4. Decode: a 1-token prompt then --steps generated tokens; ms/token is olmort's own
     `generation` line, after one warm-up run. Each run's ratio is its ms/token over
     its own floor; the table gives medians over --runs runs.
  5. Prompt: tools/data/benchmark512.tokens.bin (512 tokens), tokens/s from olmort's
     `prompt` line, two ways: the trace (--steps 512: logits and top-5 at every
     position, as the trace prints them) and running text (--format text --max-tokens
     1: logits at the last position only, all that continuing a prompt needs, and what
     llama.cpp's prompt figure computes).

Floor = bytes of weights one token reads (every matrix once, norms, no embedding table:
what `Model::bytes_per_token` counts) / the higher of the two blob readings around the
run. Prints a Markdown table.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DTYPES = ["f32", "bf16", "f16", "q8_0"]


def run(cmd, **kw):
    return subprocess.run(cmd, cwd=ROOT, check=True, text=True, **kw)


def load_average():
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return ["?"] * 3


def bytes_per_token(config, dtype):
    """What Model::bytes_per_token counts, from the config alone."""
    d = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or d // heads
    q, kv = heads * head_dim, kv_heads * head_dim
    f = config["intermediate_size"]
    vocab = config["vocab_size"]
    layers = config["num_hidden_layers"]

    def matrix(rows, cols):
        if dtype == "f32":
            return rows * cols * 4
        if dtype in ("f16", "bf16"):
            return rows * cols * 2
        return rows * -(-cols // 32) * 34

    per_layer = (matrix(q + 2 * kv, d) + matrix(d, q) + matrix(2 * f, d) + matrix(d, f)
                 + 4 * (q + kv + 2 * d))
    return layers * per_layer + matrix(vocab, d) + 4 * d


def bandwidth(threads, blob=None, repeats=7):
    """Median GB/s of streaming a 2 GiB heap buffer, or all of `blob` mapped."""
    env = dict(os.environ)
    if blob is not None:
        env["OLMORT_BANDWIDTH_FILE"] = str(Path(blob).resolve())
    size = "0" if blob is not None else "2"
    out = run(["cargo", "bench", "-q", "-p", "olmort", "--bench", "bandwidth", "--", size, str(threads),
               str(repeats)], capture_output=True, env=env).stdout
    m = re.search(r"bandwidth_gbps: ([\d.]+) ([\d.]+)", out)
    if not m:
        sys.exit(f"no bandwidth line in: {out}")
    return float(m.group(1))


TIMING = re.compile(r"olmort:\s+(prompt|generation) =\s+([\d.]+) ms /\s+(\d+) tokens")


def olmort(blob, tokens, steps, threads, text=False):
    how = ["--format", "text", "--max-tokens", "1", "--ignore-eos"] if text else ["--steps", str(steps)]
    proc = run([str(ROOT / "target/release/olmort"), str(blob), str(tokens), *how,
                "--threads", str(threads)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    found = {k: (float(ms), int(n)) for k, ms, n in TIMING.findall(proc.stderr)}
    if "prompt" not in found or "generation" not in found:
        sys.exit(f"no timing lines from olmort:\n{proc.stderr}")
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "bench-data")
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=64, help="generated tokens per decode run")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per measurement (median)")
    ap.add_argument("--prompt", type=Path, default=ROOT / "tools/data/benchmark512.tokens.bin")
    ap.add_argument("--no-prompt", action="store_true", help="skip the prompt-processing runs")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    ckpt = args.data / "1b"
    if not (ckpt / "config.json").exists():
        print(f"generating the 1B-shaped checkpoint in {ckpt} (~6 GB)", file=sys.stderr)
        run([sys.executable, "tools/make_fixture.py", "--shape", "1b", "--no-reference", str(ckpt)])
    config = json.loads((ckpt / "config.json").read_text())
    # Running text needs a vocabulary in the blob: the real dolma2 one the fixtures use.
    if not (ckpt / "vocab.txt").exists():
        (ckpt / "vocab.txt").write_bytes((ROOT / "tests/fixtures/tiny/vocab.txt").read_bytes())
    run(["cargo", "build", "-q", "--release", "-p", "olmort", "-p", "olmoc"])

    one = Path(tempfile.mkdtemp()) / "one.tokens.bin"
    one.write_bytes(args.prompt.read_bytes()[:4])
    prompt_len = len(args.prompt.read_bytes()) // 4

    print(f"load average at start: {' '.join(load_average())}", file=sys.stderr)
    rows = []
    for dtype in args.dtypes.split(","):
        blob = args.data / f"1b-{dtype}.bin"
        newest = max(p.stat().st_mtime for p in [*ckpt.glob("*.npy"), ckpt / "vocab.txt"])
        if not blob.exists() or blob.stat().st_mtime < newest:
            run([str(ROOT / "target/release/olmoc"), "pack", str(ckpt), str(blob), "--dtype", dtype],
                stdout=subprocess.DEVNULL)
        heap_gbps = bandwidth(args.threads)
        olmort(blob, one, 2, args.threads)  # warm-up: fault the weights in
        nbytes = bytes_per_token(config, dtype)
        decode, bw, ratios = [], [], []
        attempts = 0
        while len(decode) < args.runs and attempts < 3 * args.runs:
            attempts += 1
            before = bandwidth(args.threads, blob, 3)
            ms, n = olmort(blob, one, args.steps + 1, args.threads)["generation"]
            after = bandwidth(args.threads, blob, 3)
            if max(before, after) > 1.15 * min(before, after):
                # The machine changed speed during the run: its floor is unknown.
                print(f"{dtype}: run dropped, blob read {before:.1f} GB/s before and {after:.1f} after",
                      file=sys.stderr)
                continue
            gbps = max(before, after)
            decode.append(ms / n)
            bw.append(gbps)
            ratios.append(ms / n / (nbytes / (gbps * 1e9) * 1e3))
        if not decode:
            sys.exit(f"{dtype}: the bandwidth changed during every run; try again later")
        prompt, prompt_text = [], []
        if not args.no_prompt:
            for _ in range(args.runs):
                ms, n = olmort(blob, args.prompt, prompt_len, args.threads)["prompt"]
                prompt.append(n * 1e3 / ms)
                ms, n = olmort(blob, args.prompt, prompt_len, args.threads, text=True)["prompt"]
                prompt_text.append(n * 1e3 / ms)
        gbps = statistics.median(bw)
        floor = nbytes / (gbps * 1e9) * 1e3
        ms = statistics.median(decode)
        ratio = statistics.median(ratios)
        row = dict(dtype=dtype, bytes_per_token=nbytes, bandwidth_gbps=gbps, heap_gbps=heap_gbps,
                   floor_ms=floor, decode_ms=ms, decode_runs=decode, bandwidth_runs=bw, ratio_runs=ratios,
                   ratio=ratio, prompt_tps=statistics.median(prompt) if prompt else None, prompt_runs=prompt,
                   prompt_text_tps=statistics.median(prompt_text) if prompt_text else None,
                   prompt_text_runs=prompt_text)
        rows.append(row)
        print(f"{dtype}: decode {ms:.1f} ms/token (runs {', '.join(f'{v:.1f}' for v in decode)}), "
              f"blob read {', '.join(f'{v:.1f}' for v in bw)} GB/s (heap {heap_gbps:.1f}), "
              f"ratios {', '.join(f'{v:.2f}' for v in ratios)}"
              + (f", prompt {row['prompt_tps']:.1f} tok/s (runs {', '.join(f'{v:.1f}' for v in prompt)}), "
                 f"last-logits prompt {row['prompt_text_tps']:.1f} (runs {', '.join(f'{v:.1f}' for v in prompt_text)})"
                 if prompt else ""), file=sys.stderr)
    load = " ".join(load_average())
    print(f"load average at end: {load}", file=sys.stderr)

    print(f"\n{args.threads} threads, decode = median of {args.runs} runs of {args.steps} tokens, "
          f"prompt = {prompt_len} tokens; load average at end {load}\n")
    print("| dtype | weights read / token | blob read (heap) | floor | decode | ratio | ratio per run "
          "| prompt, trace | prompt, last logits |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    for r in rows:
        p = f"{r['prompt_tps']:.1f} tok/s" if r["prompt_tps"] is not None else "-"
        pt = f"{r['prompt_text_tps']:.1f} tok/s" if r["prompt_text_tps"] is not None else "-"
        print(f"| {r['dtype']} | {r['bytes_per_token'] / 1e9:.3f} GB | {r['bandwidth_gbps']:.1f} "
              f"({r['heap_gbps']:.1f}) GB/s | {r['floor_ms']:.1f} ms | {r['decode_ms']:.1f} ms | "
              f"{r['ratio']:.2f} | {', '.join(f'{v:.2f}' for v in r['ratio_runs'])} | {p} | {pt} |")
    if args.json:
        args.json.write_text(json.dumps(dict(rows=rows, load_average=load, threads=args.threads), indent=2))


if __name__ == "__main__":
    main()
