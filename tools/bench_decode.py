#!/usr/bin/env python3
"""Decode and prompt speed of olmort on an OLMo-2-0425-1B-shaped checkpoint, per dtype,
against the memory-bandwidth floor measured in the same run.

    python3 tools/bench_decode.py                  # everything, 2 threads
    python3 tools/bench_decode.py --dtypes q8_0 --runs 5 --no-prompt

Steps (each reuses what is already there):
  1. bench-data/1b: random weights of the 1B shape (tools/make_fixture.py --shape 1b
     --no-reference; ~6 GB of .npy, needs torch + transformers, git-ignored).
  2. bench-data/1b-DTYPE.bin: `olmoc pack --dtype DTYPE` of it (the 4-bit dtypes with
     olmoc's defaults: the embedding table in q8_0, lm_head in DTYPE). The blob is then
     dropped from the page cache (POSIX_FADV_DONTNEED; --keep-cache skips this) and read
     back whole through a map with the huge-page hint, as olmort maps it, so that the
     kernel caches it in 2 MiB folios. A blob that other work has partly pushed out of
     the cache comes back around its surviving 4 KiB pages, and decodes up to 25% slower
     (docs/PERFORMANCE.md); the table's "2 MiB-mapped" column shows the share
     decode_floor found. Whole, embedding table included: a warm-up olmort run reads
     only the rows of its tokens, and the first timed run then waited on the disk for
     the embedding rows of each new token (40 major faults, ratio 1.09 against 1.04
     for the next run at the same memory speed).
  3. Decode against its floor, in one process (`cargo bench -p olmort --bench
     decode_floor`): --steps decode steps, each followed at once by a stream of the
     same weight bytes on the same threads. This machine's read bandwidth moves between
     runs and within them (30-65 GB/s seen), so each step is judged against a stream
     taken milliseconds later, not seconds away in another process. Per run: the median
     step, the median floor (stream time scaled to the bytes a step reads) and the
     median of the per-step ratios; the table gives medians over --runs runs.
  4. olmort itself: a 1-token prompt then --steps generated tokens, ms/token from its
     own `generation` line (the same step as a whole process).
  5. With --context N: decoding N positions with an f32 and an f16 KV cache side by
     side in one process (`cargo bench -p olmort --bench kv_cache`: one step with each
     cache at every position, the order alternating); attention reads the whole cache
     every step, so at long contexts its size shows. Separate processes minutes apart
     would see different memory speeds.
  6. Prompt: tools/data/benchmark512.tokens.bin (512 tokens), tokens/s from olmort's
     `prompt` line, two ways: the trace (--steps 512: logits and top-5 at every
     position, as the trace prints them) and running text (--format text --max-tokens
     1: logits at the last position only, all that continuing a prompt needs, and what
     llama.cpp's prompt figure computes).

Floor = bytes of weights one token reads (every matrix once, norms, no embedding table:
`Model::bytes_per_token`, as decode_floor reports it) / the speed of streaming them. Prints a Markdown
table.
"""

import argparse
import json
import mmap
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DTYPES = ["f32", "bf16", "f16", "q8_0", "q4_0", "q4_k"]


def run(cmd, **kw):
    return subprocess.run(cmd, cwd=ROOT, check=True, text=True, **kw)


def load_average():
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return ["?"] * 3


PMD = re.compile(r"pmd_mapped (\d+) of (\d+) MiB resident")
FLOOR = re.compile(r"decode_floor: step_ms ([\d.]+) floor_ms ([\d.]+) ratio ([\d.]+) gbps ([\d.]+)")
WEIGHT_BYTES = re.compile(r"(\d+) weight bytes per step")


def bench(name, blob, threads, count, env=None):
    """The standard output of `cargo bench -p olmort --bench NAME -- BLOB THREADS COUNT`,
    with `env` added to the environment."""
    return run(["cargo", "bench", "-q", "-p", "olmort", "--bench", name, "--", str(Path(blob).resolve()),
                str(threads), str(count)], capture_output=True, env={**os.environ, **(env or {})}).stdout


def decode_floor(blob, threads, steps):
    """(step ms, floor ms, ratio, GB/s): medians over `steps` paired steps and streams;
    the bytes of weights one step reads (`Model::bytes_per_token`); and the share of the
    blob's resident pages mapped in 2 MiB pages (None if not reported)."""
    out = bench("decode_floor", blob, threads, steps)
    m, nbytes, pmd = FLOOR.search(out), WEIGHT_BYTES.search(out), PMD.search(out)
    if not m or not nbytes:
        sys.exit(f"no decode_floor lines in: {out}")
    huge = int(pmd.group(1)) / max(int(pmd.group(2)), 1) if pmd else None
    return tuple(float(v) for v in m.groups()), int(nbytes.group(1)), huge


KV_CACHE = re.compile(r"kv_cache: f32_ms ([\d.]+) f16_ms ([\d.]+)")


def kv_cache(blob, threads, positions):
    """Mean decode step (ms) over `positions` positions with an f32 and an f16 KV cache."""
    out = bench("kv_cache", blob, threads, positions)
    m = KV_CACHE.search(out)
    if not m:
        sys.exit(f"no kv_cache line in: {out}")
    return float(m.group(1)), float(m.group(2))


def read_back(path):
    """Reads every 4 KiB page of `path` through a read-only map with MADV_HUGEPAGE, so
    that what is not cached comes in as 2 MiB folios (docs/PERFORMANCE.md)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        m.madvise(mmap.MADV_HUGEPAGE)
        sum(m[i] for i in range(0, len(m), 4096))


def evict(path):
    """Drops `path` from the page cache, so that the next reader maps it afresh."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


TIMING = re.compile(r"olmort:\s+(prompt|generation) =\s+([\d.]+) ms /\s+(\d+) tokens")


def olmort(blob, tokens, steps, threads, text=False):
    how = ["--format", "text", "--max-tokens", "1", "--ignore-eos"] if text else ["--steps", str(steps)]
    proc = run([str(ROOT / "target/release/olmort"), str(blob), str(tokens), *how,
                "--threads", str(threads)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    found = {k: (float(ms), int(n)) for k, ms, n in TIMING.findall(proc.stderr)}
    if "prompt" not in found or "generation" not in found:
        sys.exit(f"no timing lines from olmort:\n{proc.stderr}")
    return found


def huge_share(shares):
    known = [h for h in shares if h is not None]
    return f"{min(known):.0%}" if known else "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "bench-data")
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=64, help="generated tokens per decode run")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per measurement (median)")
    ap.add_argument("--prompt", type=Path, default=ROOT / "tools/data/benchmark512.tokens.bin")
    ap.add_argument("--no-prompt", action="store_true", help="skip the prompt-processing runs")
    ap.add_argument("--context", type=int, default=0, metavar="N",
                    help="also decode N positions with an f32 and an f16 KV cache side by side "
                         "(minutes per dtype) and report the mean ms/token of each")
    ap.add_argument("--keep-cache", action="store_true",
                    help="measure the blobs as the page cache holds them, without evicting them first")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    ckpt = args.data / "1b"
    if not (ckpt / "config.json").exists():
        print(f"generating the 1B-shaped checkpoint in {ckpt} (~6 GB)", file=sys.stderr)
        run([sys.executable, "tools/make_fixture.py", "--shape", "1b", "--no-reference", str(ckpt)])
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
        if not args.keep_cache:
            evict(blob)
        read_back(blob)
        pairs, huge = [], []
        for _ in range(args.runs):
            medians, nbytes, share = decode_floor(blob, args.threads, args.steps)
            pairs.append(medians)
            huge.append(share)
        step, floor_runs, ratios, bw = ([p[i] for p in pairs] for i in range(4))
        decode = []
        for _ in range(args.runs):
            ms, n = olmort(blob, one, args.steps + 1, args.threads)["generation"]
            decode.append(ms / n)
        prompt, prompt_text = [], []
        if not args.no_prompt:
            for _ in range(args.runs):
                ms, n = olmort(blob, args.prompt, prompt_len, args.threads)["prompt"]
                prompt.append(n * 1e3 / ms)
                ms, n = olmort(blob, args.prompt, prompt_len, args.threads, text=True)["prompt"]
                prompt_text.append(n * 1e3 / ms)
        row = dict(dtype=dtype, bytes_per_token=nbytes,
                   bandwidth_gbps=statistics.median(bw), bandwidth_runs=bw,
                   floor_ms=statistics.median(floor_runs), floor_runs=floor_runs,
                   step_ms=statistics.median(step), step_runs=step,
                   ratio=statistics.median(ratios), ratio_runs=ratios, huge_mapped_runs=huge,
                   decode_ms=statistics.median(decode), decode_runs=decode,
                   prompt_tps=statistics.median(prompt) if prompt else None, prompt_runs=prompt,
                   prompt_text_tps=statistics.median(prompt_text) if prompt_text else None,
                   prompt_text_runs=prompt_text)
        if args.context:
            row["context_f32_ms"], row["context_f16_ms"] = kv_cache(blob, args.threads, args.context)
        rows.append(row)
        runs = lambda v, f=".1f": ", ".join(f"{x:{f}}" for x in v)
        shares = ", ".join("?" if h is None else f"{h:.0%}" for h in huge)
        print(f"{dtype}: step {runs(step)} ms, floor {runs(floor_runs)} ms ({runs(bw)} GB/s), ratio {runs(ratios, '.3f')}, "
              f"2 MiB-mapped {shares}; "
              f"olmort {runs(decode)} ms/token"
              + (f"; prompt {runs(prompt)} tok/s, last logits {runs(prompt_text)}" if prompt else ""), file=sys.stderr)
    load = " ".join(load_average())
    print(f"load average at end: {load}", file=sys.stderr)

    print(f"\n{args.threads} threads; decode: medians over {args.runs} runs of {args.steps} steps, each step "
          f"paired with a stream of its weights; prompt = {prompt_len} tokens; load average at end {load}\n")
    print("| dtype | weights read / token | stream | floor | decode step | ratio | ratio per run | 2 MiB-mapped "
          "| olmort ms/token | prompt, trace | prompt, last logits |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        p = f"{r['prompt_tps']:.1f} tok/s" if r["prompt_tps"] is not None else "-"
        pt = f"{r['prompt_text_tps']:.1f} tok/s" if r["prompt_text_tps"] is not None else "-"
        print(f"| {r['dtype']} | {r['bytes_per_token'] / 1e9:.3f} GB | {r['bandwidth_gbps']:.1f} GB/s "
              f"| {r['floor_ms']:.1f} ms | {r['step_ms']:.1f} ms | {r['ratio']:.2f} "
              f"| {', '.join(f'{v:.2f}' for v in r['ratio_runs'])} | {huge_share(r['huge_mapped_runs'])} "
              f"| {r['decode_ms']:.1f} | {p} | {pt} |")
    if args.context:
        print(f"\nDecode through {args.context} positions, ms/token (mean over the positions; both caches "
              f"in one process, steps alternating), by KV cache:\n")
        print("| dtype | f32 cache | f16 cache | f16 / f32 |")
        print("| --- | ---: | ---: | ---: |")
        for r in rows:
            a, b = r["context_f32_ms"], r["context_f16_ms"]
            print(f"| {r['dtype']} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(dict(rows=rows, load_average=load, threads=args.threads), indent=2))


if __name__ == "__main__":
    main()
