#!/usr/bin/env python3
"""Quality of every packed dtype: perplexity and drift from the f32 pack, as a markdown table.

For each weights folder, packs it once per dtype with `olmoc pack --dtype`, then runs
`olmort perplexity BLOB --text TEXT --kl-base F32.bin --format json` for each and
prints one markdown row per dtype: blob size, perplexity (and its change from f32),
mean and 99th-percentile KL divergence from f32, top-1 agreement and the RMS of the
next token's probability difference. The dtype list is an argument, so the table
grows with the formats `olmoc` learns.

The trained fixture is measured on its held-out chapters; a benchmark-shaped model
(random weights: only the KL and top-1 columns mean anything) on the first
--bench-chars characters of the same text. A folder without a vocabulary gets a copy
of tests/fixtures/tiny/vocab.txt, so that `olmort perplexity` can encode the text.

Needs the release binaries (`cargo build --release`); no Python packages.

    python3 tools/quality_table.py --dtypes f32 bf16 f16 q8_0 --bench bench-data/1b
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def pack(olmoc, weights, dtype, out):
    if not out.exists():
        subprocess.run([str(olmoc), "pack", str(weights), str(out), "--dtype", dtype],
                       check=True, stdout=subprocess.DEVNULL)
    return out


def perplexity(olmort, blob, text, context, stride, base, threads):
    cmd = [str(olmort), "perplexity", str(blob), "--text", str(text), "--context", str(context),
           "--stride", str(stride), "--format", "json"]
    if base is not None:
        cmd += ["--kl-base", str(base)]
    if threads:
        cmd += ["--threads", str(threads)]
    started = time.time()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out)
    result["seconds"] = time.time() - started
    return result


def markdown(rows, with_perplexity):
    """(dtype, blob bytes, olmort's JSON) rows as a markdown table."""
    head = "| dtype | blob | "
    head += "perplexity | vs f32 | " if with_perplexity else ""
    head += "mean KL | p99 KL | max KL | top-1 agreement | RMS dp |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for dtype, size, r in rows:
        b = r["base"]
        line = f"| {dtype} | {size / 2**20:.1f} MiB | "
        if with_perplexity:
            line += f"{r['perplexity']:.3f} | {100 * (r['perplexity'] / b['perplexity'] - 1):+.3f}% | "
        line += (f"{b['kl_mean']:.2e} | {b['kl_p99']:.2e} | {b['kl_max']:.2e} | "
                 f"{100 * b['top1_agreement']:.2f}% | {100 * b['rms_delta_p']:.3f}% |")
        lines.append(line)
    return lines


def table(name, weights, text, dtypes, args, with_perplexity):
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    if not any((weights / f).exists() for f in ("tokenizer.json", "vocab.txt")):
        shutil.copyfile(ROOT / "tests/fixtures/tiny/vocab.txt", weights / "vocab.txt")
    base = pack(args.olmoc, weights, "f32", work / "f32.bin")
    rows = []
    for dtype in dtypes:
        blob = pack(args.olmoc, weights, dtype, work / f"{dtype}.bin")
        # The base against itself has no drift: one run, not two.
        r = perplexity(args.olmort, blob, text, args.context if with_perplexity else args.bench_context,
                       args.stride if with_perplexity else args.bench_stride,
                       None if blob == base else base, args.threads)
        r.setdefault("base", {"nll": r["nll"], "perplexity": r["perplexity"], "kl_mean": 0.0,
                              "kl_p99": 0.0, "kl_max": 0.0, "top1_agreement": 1.0, "rms_delta_p": 0.0})
        rows.append((dtype, blob.stat().st_size, r))
        print(f"{name} {dtype}: {json.dumps(r)}", file=sys.stderr)
    lines = markdown(rows, with_perplexity)
    first = rows[0][2]
    tokens, windows = first["tokens"], first["windows"]
    context, stride = first["context"], first["stride"]
    return lines, f"{tokens} tokens scored in {windows} windows of {context} (stride {stride})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", nargs="+", default=["f32", "bf16", "f16", "q8_0"])
    parser.add_argument("--model", type=Path, default=ROOT / "tests/fixtures/trained")
    parser.add_argument("--text", type=Path, help="default: MODEL/heldout.txt")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--stride", type=int, default=256)
    parser.add_argument("--bench", type=Path, help="a benchmark weights folder, e.g. bench-data/1b")
    parser.add_argument("--bench-chars", type=int, default=4000)
    parser.add_argument("--bench-context", type=int, default=512)
    parser.add_argument("--bench-stride", type=int, default=512)
    parser.add_argument("--bench-only", action="store_true", help="skip the trained model's table")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--work", type=Path, default=ROOT / "bench-data/quality",
                        help="where the blobs go (kept between runs; delete to repack)")
    parser.add_argument("--bin", type=Path, default=ROOT / "target/release")
    args = parser.parse_args(argv)
    args.olmoc, args.olmort = args.bin / "olmoc", args.bin / "olmort"
    for exe in (args.olmoc, args.olmort):
        if not os.access(exe, os.X_OK):
            sys.exit(f"{exe} is missing: cargo build --release")
    text = args.text or args.model / "heldout.txt"
    print(f"CPU: {cpu_name()}")
    if not args.bench_only:
        lines, what = table("trained", args.model, text, args.dtypes, args, True)
        print(f"\n{args.model.name} ({what}):\n")
        print("\n".join(lines))
    if args.bench:
        excerpt = args.work / "bench-excerpt.txt"
        excerpt.parent.mkdir(parents=True, exist_ok=True)
        excerpt.write_text(text.read_text(encoding="utf-8")[:args.bench_chars], encoding="utf-8")
        lines, what = table(args.bench.name, args.bench, excerpt, args.dtypes, args, False)
        print(f"\n{args.bench.name} ({what}):\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
