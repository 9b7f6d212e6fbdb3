#!/usr/bin/env python3
"""Start-up benchmark: loading per-tensor .npy files vs mapping a packed blob.

For each model shape (0.1B, 0.5B, 1B by default) on the same weights, prints side by
side:

- npy: every .npy read into owned Vec<f32> buffers (`load_npy_dir`, the way an engine
  that loads .npy files at start-up does), then its first token;
- blob: `olmort MODEL.bin --steps 0` (start, map, validate header, manifest and every
  tensor entry, exit), then `--steps 1` (time to the first token);
- torch (optional): `Olmo2ForCausalLM.from_pretrained` on a safetensors save, then one
  forward;

each as whole-process wall time (median of --runs) and peak RSS, plus one decode step of
olmort for reference, and, inside one olmort process, its first forward pass against
its next steps. Then, for the largest shape: cold-cache first tokens for each
`olmort --load` mode and for other madvise hints (runtime/examples/map_hints.rs),
several olmort processes sharing one copy of the weights
(Rss/Pss from /proc/PID/smaps_rollup), and `olmoc verify` speed.

It shells out to the release binaries; build them first:

    cargo build --release -p olmort -p olmoc --examples
    python3 tools/make_fixture.py --shape 0.1b --no-reference --vocab-txt tests/fixtures/tiny/vocab.txt \\
        --safetensors bench-data/0.1b-safetensors bench-data/0.1b          # and 0.5b, 1b
    python3 tools/bench_startup.py

Weights live in BENCH_DATA/SHAPE (.npy + config.json) and, optionally, the safetensors
save in BENCH_DATA/SHAPE-safetensors; blobs are packed to BENCH_DATA/startup/SHAPE.bin
when missing. Cold caches are made per file with posix_fadvise(DONTNEED), which only
drops this benchmark's own files from the page cache.
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"
OLMORT = RELEASE / "olmort"
OLMOC = RELEASE / "olmoc"
LOAD_NPY = RELEASE / "examples" / "load_npy_dir"
MAP_HINTS = RELEASE / "examples" / "map_hints"
VOCAB_TXT = ROOT / "tests" / "fixtures" / "tiny" / "vocab.txt"
TOKENS = ROOT / "tests" / "fixtures" / "seed" / "fourscore.tokens.bin"
LOAD_MODES = ["prefetch", "lazy", "none", "populate", "mlock"]
# madvise hints olmort does not use, measured with the map_hints example.
OTHER_HINTS = ["willneed", "sequential", "random", "hugepage,willneed", "hugepage,sequential"]

TORCH_SNIPPET = r"""
import sys, time
t0 = time.perf_counter()
import torch
from transformers import Olmo2ForCausalLM
torch.set_num_threads({threads})
t1 = time.perf_counter()
model = Olmo2ForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32).eval()
t2 = time.perf_counter()
with torch.no_grad():
    logits = model(input_ids=torch.tensor([[int(sys.argv[2])]])).logits
t3 = time.perf_counter()
print(f"import_ms={{(t1-t0)*1e3:.1f}} load_ms={{(t2-t1)*1e3:.1f}} step_ms={{(t3-t2)*1e3:.1f}} argmax={{int(logits[0,-1].argmax())}}")
"""


def peak_rss(cmd):
    """Peak RSS (bytes) of one run of cmd, from GNU time's %M. A child spawned straight
    from Python would report Python's own resident size as its floor: the kernel carries
    the high-water mark of the address space replaced by exec over into ru_maxrss."""
    with tempfile.NamedTemporaryFile(mode="r") as f:
        run(["/usr/bin/time", "-f", "%M", "-o", f.name, *cmd])
        return int(f.read().split()[-1]) * 1024


def run(cmd, capture=True):
    """Runs cmd; returns (wall seconds, peak RSS bytes (see peak_rss), stdout, stderr)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=out if capture else subprocess.DEVNULL,
                                stderr=err)
        # wait4 gives this child's own peak RSS (RUSAGE_CHILDREN would be the maximum
        # over every child so far).
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{stderr}")
    return wall, usage.ru_maxrss * 1024, stdout, stderr


def median_runs(cmd, runs, before=None, rss=True):
    """Median wall of `runs` runs, and the peak RSS of one more run (if rss)."""
    walls, outs = [], []
    for _ in range(runs):
        if before:
            before()
        wall, _, out, err = run(cmd)
        walls.append(wall)
        outs.append(out + err)
    return statistics.median(walls), peak_rss(cmd) if rss else None, outs


def keyvals(text):
    return {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", text)}


def evict(paths):
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_through(paths):
    """Reads files once (warms the page cache); returns bytes read."""
    total = 0
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while chunk := f.read(16 << 20):
                total += len(chunk)
    return total


def weights_view(shape_dir, work):
    """The weights folder to pack: shape_dir itself, or a folder of links to it plus
    the dolma2 vocab.txt when it has none (so every blob carries a vocabulary)."""
    if (shape_dir / "vocab.txt").exists():
        return shape_dir
    view = work / f"{shape_dir.name}-weights"
    view.mkdir(parents=True, exist_ok=True)
    for f in shape_dir.iterdir():
        link = view / f.name
        if not link.exists():
            link.symlink_to(os.path.relpath(f, view))
    if not (view / "vocab.txt").exists():
        (view / "vocab.txt").symlink_to(os.path.relpath(VOCAB_TXT, view))
    return view


def ensure_blob(shape_dir, work):
    blob = work / f"{shape_dir.name}.bin"
    newest = max(f.stat().st_mtime for f in shape_dir.iterdir())
    if not blob.exists() or blob.stat().st_mtime < newest:
        print(f"packing {blob} ...", file=sys.stderr)
        run([OLMOC, "pack", weights_view(shape_dir, work), blob])
    return blob


def run_first_line(cmd):
    """Runs cmd; returns (seconds until its first line of stdout arrived, whole-process
    wall seconds). For `olmort --steps 1` the first line is the first token's: the
    difference is writing the timings and the exit, whose teardown of the map's page
    tables alone takes about 6 ms for the 1B."""
    started = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    proc.stdout.readline()
    first = time.perf_counter() - started
    proc.stdout.read()
    if proc.wait() != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed")
    return first, time.perf_counter() - started


def first_token_and_step(blob, runs, threads):
    """Alternates `olmort --steps 1` (time to its first token's line and whole-process
    wall) with a 10-step run (its generation ms per token), so both see the same machine
    conditions; medians, and the peak RSS of one more `--steps 1`."""
    line, wall, step = [], [], []
    for _ in range(runs):
        first, whole = run_first_line([OLMORT, blob, TOKENS, "--steps", "1", "--threads", threads])
        line.append(first)
        wall.append(whole)
        _, _, _, err = run([OLMORT, blob, TOKENS, "--steps", "10", "--threads", threads])
        m = re.search(r"generation =\s*([0-9.]+) ms /\s*(\d+) tokens", err)
        step.append(float(m.group(1)) / int(m.group(2)))
    rss = peak_rss([OLMORT, blob, TOKENS, "--steps", "1", "--threads", threads])
    return statistics.median(line), statistics.median(wall), rss, statistics.median(step)


def first_forward_extra(blob, runs, threads):
    """Inside one process: the first forward pass of a one-token prompt (olmort's `prompt`
    line, which includes mapping every weight page) minus the mean of the next three
    steps (`generation`); median over runs. Separate processes see this machine's memory
    speed change between them; one process mostly does not."""
    one = Path(tempfile.mkdtemp()) / "one.tokens.bin"
    one.write_bytes(TOKENS.read_bytes()[:4])
    extra = []
    for _ in range(runs):
        _, _, _, err = run([OLMORT, blob, one, "--steps", "4", "--threads", threads])
        first = re.search(r"prompt =\s*([0-9.]+) ms /\s*1 tokens", err)
        gen = re.search(r"generation =\s*([0-9.]+) ms /\s*(\d+) tokens", err)
        extra.append(float(first.group(1)) - float(gen.group(1)) / int(gen.group(2)))
    return statistics.median(extra), min(extra), max(extra)


def smaps_rollup(pid):
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            m = re.match(r"(\w+):\s+(\d+) kB", line)
            if m:
                fields[m.group(1)] = int(m.group(2)) * 1024
    return fields


def sharing(blob, procs, seconds):
    """Starts `procs` olmort runs on one blob; samples Rss/Pss while all are decoding."""
    steps = 256  # a small KV cache, so Rss is mostly the weights
    children = [
        subprocess.Popen(
            [str(OLMORT), str(blob), str(TOKENS), "--steps", str(steps), "--threads", "1",
             ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(procs)
    ]
    best = None
    try:
        deadline = time.time() + seconds
        while time.time() < deadline:
            time.sleep(0.5)
            try:
                sample = [smaps_rollup(c.pid) for c in children]
            except FileNotFoundError:
                break
            if best is None or sum(s["Rss"] for s in sample) > sum(s["Rss"] for s in best):
                best = sample
    finally:
        for c in children:
            c.kill()
            c.wait()
    return best


def torch_command(st_dir, threads):
    return [sys.executable, "-c", TORCH_SNIPPET.format(threads=threads), st_dir, 28070]


def machine():
    load = os.getloadavg()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    return (f"{cpu}, {os.cpu_count()} cores, {mem / 2**20:.1f} GiB RAM, Linux {platform.release()}, "
            f"THP {thp}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; commit {commit}")


def ms(s):
    return f"{s * 1e3:,.1f}" if s < 10 else f"{s * 1e3:,.0f}"


def mib(b):
    return f"{b / 2**20:,.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "bench-data")
    ap.add_argument("--shapes", default="0.1b,0.5b,1b")
    ap.add_argument("--runs", type=int, default=5, help="runs per warm measurement (median)")
    ap.add_argument("--open-runs", type=int, default=30, help="runs of --steps 0 (median)")
    ap.add_argument("--cold-runs", type=int, default=2, help="runs per cold measurement (median)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-npy", action="store_true", help="skip the .npy loads (blob columns only)")
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument("--share-procs", type=int, default=3)
    ap.add_argument("--share-seconds", type=float, default=20)
    ap.add_argument("--json", type=Path, help="also write every number here")
    args = ap.parse_args()

    for exe in (OLMORT, OLMOC, LOAD_NPY):
        if not exe.exists():
            sys.exit(f"{exe} is missing: cargo build --release -p olmort -p olmoc --examples")
    work = args.data / "startup"
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}\n")
    results = {"machine": machine(), "shapes": {}}

    rows = []
    for shape in args.shapes.split(","):
        shape_dir = args.data / shape
        if not (shape_dir / "config.json").exists():
            print(f"skipping {shape}: no weights in {shape_dir} (tools/make_fixture.py --shape {shape} "
                  f"--no-reference {shape_dir})", file=sys.stderr)
            continue
        blob = ensure_blob(shape_dir, work)
        npys = sorted(shape_dir.glob("*.npy"))
        st_dir = args.data / f"{shape}-safetensors"
        r = {"blob_bytes": blob.stat().st_size, "npy_bytes": sum(p.stat().st_size for p in npys)}
        read_through(([] if args.no_npy else npys) + [blob])  # warm

        if not args.no_npy:
            r["npy_load_wall"], r["npy_load_rss"], _ = median_runs([LOAD_NPY, shape_dir], args.runs)
            r["npy_first_wall"], r["npy_first_rss"], outs = median_runs(
                [LOAD_NPY, shape_dir, "--first-token", TOKENS], args.runs)
            r["npy_step_ms"] = statistics.median(keyvals(o)["step_ms"] for o in outs)
            read_through([blob])
        r["open_wall"], r["open_rss"], _ = median_runs([OLMORT, blob, "--steps", "0"], args.open_runs)
        r["first_line"], r["first_wall"], r["first_rss"], r["step_ms"] = first_token_and_step(
            blob, args.runs, args.threads)
        r["first_extra_ms"], r["first_extra_min"], r["first_extra_max"] = first_forward_extra(
            blob, max(args.runs, 9), args.threads)
        if not args.no_torch and (st_dir / "config.json").exists():
            try:
                cmd = torch_command(st_dir, args.threads)
                tw, kv = [], []
                for _ in range(max(1, args.runs // 2)):
                    w, _, out, _ = run(cmd)
                    tw.append(w)
                    kv.append(keyvals(out))
                r["torch_first_wall"] = statistics.median(tw)
                r["torch_rss"] = peak_rss(cmd)
                r["torch_import_ms"] = statistics.median(k["import_ms"] for k in kv)
                r["torch_load_ms"] = statistics.median(k["load_ms"] for k in kv)
            except RuntimeError as e:
                print(f"torch skipped for {shape}: {e}", file=sys.stderr)
        results["shapes"][shape] = r
        rows.append((shape, r))
        print(f"{shape}: done", file=sys.stderr)

    print("Warm page cache; wall = whole process, median; RSS = peak resident set.\n")
    print("| model | weights MiB | npy: load ms | npy: first token ms | npy: peak RSS MiB "
          "| blob: open ms (`--steps 0`) | blob: open RSS MiB | blob: first token ms (`--steps 1`: its line / process) "
          "| blob: first-token RSS MiB | decode step ms | torch: first token ms (import + from_pretrained + step) "
          "| torch: peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for shape, r in rows:
        torch_cell = (f"{ms(r['torch_first_wall'])} ({r['torch_import_ms']:,.0f} + {r['torch_load_ms']:,.0f} + step)"
                      if "torch_first_wall" in r else "-")
        torch_rss = mib(r["torch_rss"]) if "torch_rss" in r else "-"
        npy = (f"{ms(r['npy_load_wall'])} | {ms(r['npy_first_wall'])} | {mib(r['npy_first_rss'])}"
               if "npy_load_wall" in r else "- | - | -")
        print(f"| {shape} | {mib(r['blob_bytes'])} | {npy} | {ms(r['open_wall'])} | {mib(r['open_rss'])} "
              f"| {ms(r['first_line'])} / {ms(r['first_wall'])} | {mib(r['first_rss'])} | {r['step_ms']:.1f} "
              f"| {torch_cell} | {torch_rss} |")
    print("\nThe first forward pass against the next steps inside one process (one-token prompt, "
          "`--steps 4`; median and range over the runs):\n")
    print("| model | first pass minus a step, ms | range |")
    print("|---|---:|---:|")
    for shape, r in rows:
        print(f"| {shape} | {r['first_extra_ms']:+.1f} | {r['first_extra_min']:+.1f} to {r['first_extra_max']:+.1f} |")

    if not rows:
        return
    shape, r = rows[-1]
    blob = work / f"{shape}.bin"
    npys = sorted((args.data / shape).glob("*.npy"))

    if not args.no_cold:
        print(f"\nCold page cache ({shape}; posix_fadvise DONTNEED on the files first), median of {args.cold_runs}:\n")
        speeds = []
        for _ in range(args.cold_runs):
            evict([blob])
            t = time.perf_counter()
            n = read_through([blob])
            speeds.append(n / (time.perf_counter() - t))
        disk = statistics.median(speeds)
        print(f"sequential read of the blob (read(2), 16 MiB at a time): {disk / 1e9:.2f} GB/s, "
              f"{ms(r['blob_bytes'] / disk)} ms for the whole file\n")
        print("| run | first token ms | next warm run's first token ms |")
        print("|---|---:|---:|")
        cold = {}
        for mode in LOAD_MODES:
            cmd = [OLMORT, blob, TOKENS, "--steps", "1", "--load", mode]
            wall, _, _ = median_runs(cmd, args.cold_runs, before=lambda: evict([blob]), rss=False)
            after, _, _, _ = run(cmd)
            cold[mode] = (wall, after)
            print(f"| olmort --load {mode} | {ms(wall)} | {ms(after)} |")
        if MAP_HINTS.exists():
            for hints in OTHER_HINTS:
                cmd = [MAP_HINTS, blob, hints, "1"]
                wall, _, _ = median_runs(cmd, args.cold_runs, before=lambda: evict([blob]), rss=False)
                after, _, _, _ = run(cmd)
                cold[hints] = (wall, after)
                print(f"| map_hints {hints} | {ms(wall)} | {ms(after)} |")
        wall, _, _ = median_runs([LOAD_NPY, args.data / shape], args.cold_runs, before=lambda: evict(npys),
                                 rss=False)
        cold["npy_load"] = (wall, None)
        print(f"| load_npy_dir (load only) | {ms(wall)} | |")
        results["cold"] = {"shape": shape, "disk_bytes_per_s": disk, "runs": cold}

    print(f"\n{args.share_procs} olmort processes decoding on the one {shape} blob at once "
          f"(--threads 1), /proc/PID/smaps_rollup at the sample with the largest total Rss:\n")
    read_through([blob])
    sample = sharing(blob, args.share_procs, args.share_seconds)
    if sample:
        print("| process | Rss MiB | Pss MiB | Shared_Clean MiB | Private (clean + dirty) MiB |")
        print("|---|---:|---:|---:|---:|")
        for i, s in enumerate(sample):
            print(f"| {i + 1} | {mib(s['Rss'])} | {mib(s['Pss'])} | {mib(s['Shared_Clean'])} "
                  f"| {mib(s['Private_Clean'] + s['Private_Dirty'])} |")
        print(f"| sum | {mib(sum(s['Rss'] for s in sample))} | {mib(sum(s['Pss'] for s in sample))} | | |")
        results["sharing"] = sample

    read_through([blob])
    verify = []
    for _ in range(max(1, args.runs // 2)):
        wall, _, _, _ = run([OLMOC, "verify", blob])
        verify.append(wall)
    v = statistics.median(verify)
    print(f"\nolmoc verify {shape} (warm): {ms(v)} ms, {r['blob_bytes'] / v / 1e9:.2f} GB/s")
    results["verify_wall"] = v
    if not args.no_cold:
        wall, _, _ = median_runs([OLMOC, "verify", blob], args.cold_runs, before=lambda: evict([blob]), rss=False)
        print(f"olmoc verify {shape} (cold): {ms(wall)} ms, {r['blob_bytes'] / wall / 1e9:.2f} GB/s")
        results["verify_cold_wall"] = wall

    print(f"\nmachine at the end: {machine()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
