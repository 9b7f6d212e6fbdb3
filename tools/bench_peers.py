#!/usr/bin/env python3
"""olmort beside llama.cpp on the same checkpoint, the same machine and the same run:
decode ms/token and prompt tokens/s per dtype, runs alternating between the two.

    python3 tools/bench_peers.py                          # f32, bf16, f16, q8_0; 3 rounds
    python3 tools/bench_peers.py --dtypes q8_0 --rounds 5

What it does (each step reuses what is already there, under --data, git-ignored):
  1. llama.cpp: the llama-cpp-python sdist from PyPI (it carries llama.cpp's source,
     `convert_hf_to_gguf.py` and `gguf-py`), checked against PyPI's sha256, unpacked
     and built with CMake (Release, GGML_NATIVE: the kernels this CPU has, AMX
     included) into `llama-bench` and `llama-quantize`. Needs cmake, a C++ compiler
     and, for the conversion, numpy, torch, sentencepiece-free `transformers`.
     On a CPU with AMX tiles and GCC 12, ggml's AMX code loses its tile
     configuration: GCC 12 drops the stores that fill the 64-byte config before
     `_tile_loadconfig` reads it (it does not see the builtin read the whole struct),
     so every quantized prompt test dies with SIGILL/SIGSEGV. The build then passes
     `-fno-tree-dse -fno-dse` (no dead-store elimination) for the whole build, which
     keeps those stores; `--cxx clang++` uses another compiler instead. A llama-bench
     run that crashes is reported as such, never as a number.
  2. A Hugging Face snapshot of the benchmark checkpoint (bench-data/1b, the
     OLMo-2-0425-1B shape, from tools/make_fixture.py): its config.json, the weights
     as one f32 model.safetensors (streamed from the .npy files) and the dolma2
     tokenizer (tokenizer.json from --tokenizer-dir, by default the trained fixture's).
  3. GGUF files: `convert_hf_to_gguf.py --outtype f32|f16|bf16|q8_0`, and
     `llama-quantize` from the f32 GGUF for q4_0 (Q4_0) and q4_k (Q4_K_M).
  4. olmort blobs: `olmoc pack --dtype DTYPE` of the .npy folder.
  5. Rounds: in each round, for each dtype, olmort then llama.cpp, each once:
     decode = ms per generated token after a 1-token prompt (--steps tokens; olmort's
     own `generation` line, llama-bench's `tg` test), prompt = tokens/s over the
     --prompt prompt computing the last position's logits. llama-bench's `pp` test
     times a pass after a warm-up pass in the same process (its default), so
     olmort's prompt is timed the same way: `cargo bench --bench prompt_floor` with
     RUNS=1 (one pass to fault the buffers and the KV cache in, then one timed, as
     many tokens as --prompt holds, its own ids; it also gives the ratio to the
     compute floor, the AMX peak measured right after).
     The CLI's first prompt (olmort --format text --max-tokens 1, a process's cold
     pass: its KV cache and buffers are faulted in as it runs) is reported beside
     it. Then the decode floor of the olmort blob in the same round (`cargo bench
     --bench decode_floor`: its step and a stream of the same bytes): both
     programs' ms/token are divided by that floor. Medians over the rounds.

Prints a Markdown table naming the CPU, the compiler and llama.cpp's commit; --json
writes every run.
"""

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from bench_decode import bench, decode_floor, evict, load_average, read_back  # noqa: E402

PACKAGE = "llama-cpp-python"
# olmort dtype -> how the GGUF is made: convert_hf_to_gguf's --outtype, or
# llama-quantize's type applied to the f32 GGUF.
GGUF = {
    "f32": ("convert", "f32"),
    "f16": ("convert", "f16"),
    "bf16": ("convert", "bf16"),
    "q8_0": ("convert", "q8_0"),
    "q4_0": ("quantize", "Q4_0"),
    "q4_k": ("quantize", "Q4_K_M"),
}


def run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, text=True, **kw)


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def cpu_flags():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def fetch_sdist(dest: Path, version: str | None) -> Path:
    """The unpacked sdist's llama.cpp folder, downloading and checking it if needed."""
    if version is not None:
        # A release already unpacked needs no network (checked when it was unpacked).
        src = dest / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
        if src.exists():
            return src
    # The project's metadata lists every release's files; the per-release endpoint
    # (`/pypi/NAME/VERSION/json`) is missing on some mirrors.
    meta_url = f"https://pypi.org/pypi/{PACKAGE}/json"
    with urllib.request.urlopen(meta_url) as r:
        meta = json.load(r)
    version = version or meta["info"]["version"]
    if version not in meta["releases"]:
        sys.exit(f"{PACKAGE} {version} is not on the index")
    sdist = next(u for u in meta["releases"][version] if u["packagetype"] == "sdist")
    src = dest / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if src.exists():
        return src
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / sdist["filename"]
    if not archive.exists():
        # Some indexes answer with addresses relative to the metadata's.
        url = urllib.parse.urljoin(meta_url, sdist["url"])
        print(f"downloading {url}", file=sys.stderr)
        tmp = archive.with_suffix(".part")
        with urllib.request.urlopen(url) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
        tmp.rename(archive)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != sdist["digests"]["sha256"]:
        archive.unlink()
        sys.exit(f"{archive.name}: sha256 {digest} is not PyPI's {sdist['digests']['sha256']}")
    with tarfile.open(archive) as t:
        t.extractall(dest, filter="data")
    return src


def compiler_version(cxx):
    try:
        return run([cxx, "--version"], capture_output=True).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError):
        return f"{cxx}: not found"


def build_llama(src: Path, cxx: str) -> Path:
    build = src / f"build-{Path(cxx).name}"
    bench, quantize = build / "bin/llama-bench", build / "bin/llama-quantize"
    if bench.exists() and quantize.exists():
        return build / "bin"
    flags = []
    version = compiler_version(cxx)
    # `\b` cannot follow "g++" (no word character there): the name is matched bare.
    if "amx_tile" in cpu_flags() and re.search(r"(g\+\+|\bGCC\b).* 12\.", version):
        flags.append("-DCMAKE_CXX_FLAGS=-fno-tree-dse -fno-dse")
        print(f"{version} on an AMX CPU: building without dead-store elimination (see --help)", file=sys.stderr)
    cc = {"clang++": "clang", "g++": "gcc"}.get(Path(cxx).name, "cc")
    run(["cmake", "-S", src, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF",
         "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF",
         f"-DCMAKE_CXX_COMPILER={cxx}", f"-DCMAKE_C_COMPILER={cc}", *flags], stdout=subprocess.DEVNULL)
    run(["cmake", "--build", build, "--target", "llama-bench", "llama-quantize", "-j", str(os.cpu_count() or 1)],
        stdout=subprocess.DEVNULL)
    return build / "bin"


def llama_commit(bins: Path) -> str:
    """The llama.cpp commit the build recorded (`src/llama-version.h`)."""
    header = bins.parent / "src" / "llama-version.h"
    m = re.search(r'LLAMA_COMMIT\s+"([^"]+)"', header.read_text()) if header.exists() else None
    return m.group(1) if m else "?"


def write_safetensors_f32(npy_dir: Path, out: Path):
    """One f32 safetensors file of every `NAME.npy` in `npy_dir`, written tensor by
    tensor (never more than one tensor in memory)."""
    import numpy as np

    names = sorted(p.stem for p in npy_dir.glob("*.npy"))
    arrays = {n: np.load(npy_dir / f"{n}.npy", mmap_mode="r") for n in names}
    header, offset = {}, 0
    for n in names:
        a = arrays[n]
        size = a.size * 4
        header[n] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = out.with_suffix(".part")
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for n in names:
            f.write(np.ascontiguousarray(arrays[n], dtype="<f4").tobytes())
    tmp.rename(out)


def make_snapshot(ckpt: Path, tokenizer_dir: Path, snap: Path):
    snap.mkdir(parents=True, exist_ok=True)
    if not (tokenizer_dir / "tokenizer.json").exists():
        sys.exit(f"{tokenizer_dir / 'tokenizer.json'} is missing: --tokenizer-dir needs the dolma2 tokenizer.json")
    shutil.copy(tokenizer_dir / "tokenizer.json", snap / "tokenizer.json")
    # The converter loads the tokenizer through transformers, which wants a
    # tokenizer_config.json; the dolma2 special tokens, as OLMo-2's own file names them.
    config_path = tokenizer_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text()) if config_path.exists() else {
        "tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|pad|>", "unk_token": "<|endoftext|>", "add_bos_token": False, "add_eos_token": False}
    (snap / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    config = json.loads((ckpt / "config.json").read_text())
    config.setdefault("architectures", ["Olmo2ForCausalLM"])
    (snap / "config.json").write_text(json.dumps(config, indent=2))
    if not (snap / "model.safetensors").exists():
        print(f"writing {snap / 'model.safetensors'}", file=sys.stderr)
        write_safetensors_f32(ckpt, snap / "model.safetensors")


def make_gguf(src: Path, bins: Path, snap: Path, out: Path, dtype: str) -> Path:
    if out.exists():
        return out
    how, kind = GGUF[dtype]
    if how == "convert":
        env = dict(os.environ, PYTHONPATH=str(src / "gguf-py"))
        run([sys.executable, src / "convert_hf_to_gguf.py", snap, "--outtype", kind, "--outfile", out],
            env=env, stdout=subprocess.DEVNULL)
    else:
        base = make_gguf(src, bins, snap, out.with_name(out.name.rsplit("-", 1)[0] + "-f32.gguf"), "f32")
        run([bins / "llama-quantize", base, out, kind], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


TIMING = re.compile(r"olmort:\s+(prompt|generation) =\s+([\d.]+) ms /\s+(\d+) tokens")


def olmort(blob, tokens, threads, args):
    proc = run([ROOT / "target/release/olmort", blob, tokens, *args, "--threads", threads],
               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return {k: (float(ms), int(n)) for k, ms, n in TIMING.findall(proc.stderr)}


PROMPT_FLOOR = re.compile(r"prompt_floor: tokens \d+ ms [\d.]+ tok_s ([\d.]+) gflop_s [\d.]+(?: amx_peak [\d.]+ ratio ([\d.]+))?")


def olmort_warm_prompt(blob, tokens, threads):
    """(tokens/s, ratio to the compute floor or None) of one prompt of `tokens` tokens
    timed after a warm-up pass in the same process, as llama-bench times its `pp` test."""
    out = bench("prompt_floor", blob, threads, tokens, env={"RUNS": "1"})
    m = PROMPT_FLOOR.search(out)
    if not m:
        sys.exit(f"no prompt_floor line in: {out}")
    return float(m.group(1)), m.group(2) and float(m.group(2))


def llama_bench(bins, gguf, threads, prompt, gen):
    """tokens/s of one llama-bench test, or None if it crashed."""
    proc = subprocess.run([str(bins / "llama-bench"), "-m", str(gguf), "-t", str(threads), "-p", str(prompt),
                           "-n", str(gen), "-r", "1", "-o", "json"], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"llama-bench {gguf.name} -p {prompt} -n {gen}: exit {proc.returncode}: "
              f"{proc.stderr.strip().splitlines()[-1:] }", file=sys.stderr)
        return None
    return json.loads(proc.stdout)[0]["avg_ts"]


def med(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--data", type=Path, default=ROOT / "bench-data")
    ap.add_argument("--shape", default="1b", help="tools/make_fixture.py shape of the checkpoint (default: 1b)")
    ap.add_argument("--dtypes", default="f32,bf16,f16,q8_0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=64, help="generated tokens per decode run")
    ap.add_argument("--prompt", type=Path, default=ROOT / "tools/data/benchmark512.tokens.bin")
    ap.add_argument("--tokenizer-dir", type=Path, default=ROOT / "tests/fixtures/trained",
                    help="folder with the dolma2 tokenizer.json (and optionally tokenizer_config.json)")
    ap.add_argument("--llama-version", help="llama-cpp-python release to build (default: the newest)")
    ap.add_argument("--cxx", default="g++", help="C++ compiler for llama.cpp")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    dtypes = args.dtypes.split(",")
    if unknown := [d for d in dtypes if d not in GGUF]:
        sys.exit(f"unknown dtypes {unknown}: choose from {', '.join(GGUF)}")

    ckpt = args.data / args.shape
    if not (ckpt / "config.json").exists():
        run([sys.executable, ROOT / "tools/make_fixture.py", "--shape", args.shape, "--no-reference", ckpt])
    if not (ckpt / "vocab.txt").exists():
        shutil.copy(ROOT / "tests/fixtures/tiny/vocab.txt", ckpt / "vocab.txt")
    src = fetch_sdist(args.data / "peers", args.llama_version)
    bins = build_llama(src, args.cxx)
    snap = args.data / f"{args.shape}-hf"
    make_snapshot(ckpt, args.tokenizer_dir, snap)
    run(["cargo", "build", "-q", "--release", "-p", "olmort", "-p", "olmoc"], cwd=ROOT)

    prompt_len = len(args.prompt.read_bytes()) // 4
    one = args.data / "one.tokens.bin"
    one.write_bytes(args.prompt.read_bytes()[:4])
    files = {}
    for d in dtypes:
        blob = args.data / f"{args.shape}-{d}.bin"
        if not blob.exists():
            run([ROOT / "target/release/olmoc", "pack", ckpt, blob, "--dtype", d], stdout=subprocess.DEVNULL)
        files[d] = (blob, make_gguf(src, bins, snap, args.data / f"{args.shape}-{d}.gguf", d))

    print(f"load average at start: {' '.join(load_average())}", file=sys.stderr)
    keys = ["olmort_ms", "llama_ms", "olmort_pp_first", "olmort_pp", "olmort_pp_ratio", "llama_pp", "floor_ms", "gbps"]
    runs = {d: {k: [] for k in keys} for d in dtypes}
    for r in range(args.rounds):
        for d in dtypes:
            blob, gguf = files[d]
            for f in (blob, gguf):
                evict(f)
                read_back(f)
            x = runs[d]
            ms, n = olmort(blob, one, args.threads, ["--steps", args.steps + 1])["generation"]
            x["olmort_ms"].append(ms / n)
            tps = llama_bench(bins, gguf, args.threads, 0, args.steps)
            x["llama_ms"].append(1e3 / tps if tps else None)
            ms, n = olmort(blob, args.prompt, args.threads, ["--format", "text", "--max-tokens", "1",
                                                             "--ignore-eos"])["prompt"]
            x["olmort_pp_first"].append(n * 1e3 / ms)
            tps, ratio = olmort_warm_prompt(blob, prompt_len, args.threads)
            x["olmort_pp"].append(tps)
            x["olmort_pp_ratio"].append(ratio)
            x["llama_pp"].append(llama_bench(bins, gguf, args.threads, prompt_len, 0))
            (step, floor, ratio, gbps), _, _ = decode_floor(blob, args.threads, args.steps)
            x["floor_ms"].append(floor)
            x["gbps"].append(gbps)
            show = lambda v: "-" if v is None else f"{v:.1f}"
            print(f"round {r + 1} {d}: olmort {show(x['olmort_ms'][-1])} ms/token, {show(x['olmort_pp'][-1])} tok/s "
                  f"(first prompt {show(x['olmort_pp_first'][-1])}); "
                  f"llama.cpp {show(x['llama_ms'][-1])} ms/token, {show(x['llama_pp'][-1])} tok/s; "
                  f"floor {floor:.1f} ms ({gbps:.1f} GB/s)", file=sys.stderr)
    load = " ".join(load_average())
    commit = llama_commit(bins)
    print(f"\n{cpu_name()}, {args.threads} threads; llama.cpp {commit} ({src.parent.parent.name}, "
          f"{compiler_version(args.cxx)}); medians of {args.rounds} alternating rounds; decode = {args.steps} "
          f"tokens after a 1-token prompt; prompt = {prompt_len} tokens, last position's logits; "
          f"load average at end {load}\n")
    print("| dtype | stream | floor | olmort ms/token | ratio | llama.cpp ms/token | ratio | olmort prompt tok/s "
          "(ratio to compute floor) | llama.cpp prompt tok/s | olmort / llama.cpp prompt | olmort first prompt tok/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    fmt = lambda v, f=".1f": "crashed" if v is None else f"{v:{f}}"
    for d in dtypes:
        x = runs[d]
        floor = med(x["floor_ms"])
        o, l = med(x["olmort_ms"]), med(x["llama_ms"])
        # The compute floor is the AMX bf16 peak's: it means nothing for f32 and f16,
        # whose prompts run on the FMA units.
        ratio = med(x["olmort_pp_ratio"]) if d not in ("f32", "f16") else None
        pp = fmt(med(x["olmort_pp"])) + ("" if ratio is None else f" ({ratio:.2f})")
        # Per round, then the median: the machine's speed drifts between rounds.
        vs = med([a / b for a, b in zip(x["olmort_pp"], x["llama_pp"]) if a and b])
        print(f"| {d} | {med(x['gbps']):.1f} GB/s | {floor:.1f} ms | {fmt(o)} | {fmt(o and o / floor, '.2f')} "
              f"| {fmt(l)} | {fmt(l and l / floor, '.2f')} | {pp} | {fmt(med(x['llama_pp']))} "
              f"| {fmt(vs, '.2f') + ('x' if vs else '')} | {fmt(med(x['olmort_pp_first']))} |")
    if args.json:
        args.json.write_text(json.dumps(dict(cpu=cpu_name(), threads=args.threads, llama_cpp=commit,
                                             compiler=compiler_version(args.cxx), load_average=load, runs=runs),
                                        indent=2))


if __name__ == "__main__":
    main()
