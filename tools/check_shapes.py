#!/usr/bin/env python3
"""Pack and run random OLMo-2 and OLMo-3 shapes against transformers.

Each of `--count` seeded random configs (odd sizes, grouped-query attention,
head sizes from 2 to 20, windows of 1 to 8 positions, layer types given or
Olmo3Config's default, RoPE in either config spelling with its own theta per
layer type, YaRN with the correction range truncated or not and the attention
factor given, derived from mscale/mscale_all_dim or from the factor) gets
make_fixture's random weights and a greedy reference over `--steps` positions:
each step the whole sequence so far in one uncached call, which applies
transformers' masks as they are defined (a sliding layer's query sees keys
`k` with `q - sliding_window < k <= q`). transformers' one-token decode through
its cache must agree with it (within the allowance below), except with a window
of 1: its sliding cache
layer keeps `sliding_window - 1` positions by slicing `[-0:]`, which keeps them
all, so its cached decode there attends more than the mask allows (reported,
not failed). olmoc packs each checkpoint and olmort runs its trace (the prompt
as one batch, then one token at a time) under every kernel set; the logits must
match the reference within 1e-4, with the same argmax. Some random models are
ill-conditioned at a position: transformers' own f32 logits there are 1e-4 or
more off the same model run in f64, and its two attention implementations
(sdpa, the default, and eager) differ by as much. There olmort passes when it
is within five times transformers' own error (the larger of the two
implementations' distances from f64) of the f64 logits. Where the reference's
best two logits come within 1e-3 of each other, the comparison stops at that
step (olmort may pick the other token).

Needs torch, transformers, numpy and the built binaries (`cargo build
--release`, or `--bin-dir target/debug`); no network.

    python3 tools/check_shapes.py --count 20 --seed 1
"""

import argparse
import copy
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig

from make_fixture import build_model, greedy_reference, write_tokens, write_weights

KERNELS = ["auto", "avx2", "portable"]


def random_config(rng):
    """A config.json dict, and a line describing it."""
    heads = rng.randint(1, 8)
    kv_heads = rng.choice([d for d in range(1, heads + 1) if heads % d == 0])
    vocab = rng.randint(40, 700)
    config = {
        "vocab_size": vocab, "hidden_size": rng.randint(6, 64), "num_hidden_layers": rng.randint(1, 6),
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": 2 * rng.randint(1, 10),
        "intermediate_size": rng.randint(4, 100), "max_position_embeddings": 64, "rms_norm_eps": 1e-6,
        "eos_token_id": vocab - 1, "pad_token_id": vocab - 2, "bos_token_id": None,
        "tie_word_embeddings": False, "attention_bias": False,
    }
    theta = rng.choice([100.0, 1000.0, 10000.0, 500000.0])

    def yarn():
        params = {"rope_type": "yarn", "factor": rng.choice([1.5, 2.0, 4.0, 8.0]),
                  "original_max_position_embeddings": rng.randint(4, 30)}
        for key, choices in [("beta_fast", [32, 8, 4]), ("beta_slow", [1, 0.5, 2])]:
            if rng.random() < 0.5:
                params[key] = rng.choice(choices)
        kind = rng.choice(["given", "mscale", "derived"])
        if kind == "given":
            params["attention_factor"] = rng.choice([1.0, 1.2, 0.9])
        elif kind == "mscale":
            params["mscale"], params["mscale_all_dim"] = rng.choice([(1, 0.5), (0.707, 1), (1, 1)])
        return params

    if rng.random() < 0.5:
        config.update(model_type="olmo2", architectures=["Olmo2ForCausalLM"])
        rope = yarn() if rng.random() < 0.5 else {"rope_type": "default"}
        if rng.random() < 0.5:
            config["rope_parameters"] = {**rope, "rope_theta": theta, "truncate": rng.choice([True, False])}
        else:
            config["rope_theta"] = theta
            config["rope_scaling"] = None if rope["rope_type"] == "default" else rope
    else:
        config.update(model_type="olmo3", architectures=["Olmo3ForCausalLM"],
                      sliding_window=rng.randint(1, 8))
        layers = config["num_hidden_layers"]
        if rng.random() < 0.6:
            config["layer_types"] = [rng.choice(["sliding_attention", "full_attention"]) for _ in range(layers)]
        full = yarn() if rng.random() < 0.6 else {"rope_type": "default"}
        if rng.random() < 0.5:
            config["rope_parameters"] = {
                "full_attention": {**full, "rope_theta": theta},
                "sliding_attention": {"rope_type": "default", "rope_theta": rng.choice([theta, 10000.0, 500000.0])},
            }
            # `_compute_yarn_parameters` reads `truncate` from this map.
            if rng.random() < 0.5:
                config["rope_parameters"]["truncate"] = rng.choice([True, False])
        else:
            config["rope_theta"] = theta
            config["rope_scaling"] = None if full["rope_type"] == "default" else full
    return config


@torch.no_grad()
def greedy_uncached(model, prompt, steps):
    """The prompt, then greedy tokens, each step's logits from one call over the whole
    sequence without a cache: (tokens, float32 logits [steps, vocab])."""
    tokens, logits = [], []
    for position in range(steps):
        tokens.append(int(prompt[position]) if position < len(prompt) else int(logits[-1].argmax()))
        logits.append(model(input_ids=torch.tensor([tokens]), use_cache=False).logits[0, -1].float().numpy())
    return tokens, np.stack(logits)


@torch.no_grad()
def f64_logits(model, tokens):
    """Every position's logits of `model` run in f64, all of `tokens` in one call."""
    return copy.deepcopy(model).double()(input_ids=torch.tensor([tokens]), use_cache=False).logits[0].numpy()


@torch.no_grad()
def eager_logits(model, tokens):
    """As `uncached_logits`, with transformers' eager attention instead of sdpa."""
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    return eager(input_ids=torch.tensor([tokens]), use_cache=False).logits[0].float().numpy()


def check(index, config, args, work):
    rng = random.Random(args.seed * 100003 + index)
    folder = work / f"shape{index}"
    folder.mkdir(exist_ok=True)
    with open(folder / "config.json", "w") as f:
        json.dump(config, f)
    hf = AutoConfig.from_pretrained(folder)
    model = build_model(hf, True)
    write_weights(model, folder, seed=index, gain=3.0, npy_dtype="f32")
    prompt = [rng.randrange(config["vocab_size"]) for _ in range(rng.randint(1, 20))]
    tokens, reference = greedy_uncached(model, prompt, args.steps)
    exact = f64_logits(model, tokens)
    own_error = max(float(np.abs(reference - exact).max()), float(np.abs(eager_logits(model, tokens) - exact).max()))
    cached_tokens, cached = greedy_reference(model, prompt, args.steps)
    cache_diff = float(np.abs(cached - reference).max())
    problems, cache_note = [], ""
    if cached_tokens != tokens or cache_diff > max(1e-4, 5 * own_error):
        cache_note = f" (transformers' cached decode differs by {cache_diff:.3g})"
        if config.get("sliding_window") != 1:
            problems.append("transformers' cached decode differs from its uncached calls")
    top2 = np.sort(reference, axis=1)[:, -2:]
    close = [i for i in range(len(prompt) - 1, args.steps) if top2[i, 1] - top2[i, 0] < 1e-3]
    last = close[0] + 1 if close else args.steps
    write_tokens(folder / "prompt.tokens.bin", prompt)
    blob = folder / "model.bin"
    subprocess.run([args.bin_dir / "olmoc", "pack", folder, blob], check=True, capture_output=True)
    worst = 0.0
    for kernels in KERNELS:
        dump = folder / f"logits-{kernels}.npy"
        out = subprocess.run(
            [args.bin_dir / "olmort", blob, folder / "prompt.tokens.bin", "--steps", str(args.steps),
             "--dump-logits", dump],
            capture_output=True, text=True, env={**os.environ, "OLMORT_KERNELS": kernels})
        if out.returncode != 0:
            problems.append(f"olmort ({kernels}): {out.stderr.strip()}")
            continue
        got = np.load(dump)[:last]
        diff = float(np.abs(got - reference[:last]).max())
        from_exact = float(np.abs(got - exact[:last]).max())
        same = bool((got.argmax(1) == reference[:last].argmax(1)).all())
        worst = max(worst, diff)
        if not same or (diff > 1e-4 and from_exact > 5 * own_error):
            problems.append(f"{kernels}: max |logit difference| {diff:.3g} ({from_exact:.3g} from f64, "
                            f"transformers {own_error:.3g}), same argmax {same}")
    kind = config["model_type"]
    if kind == "olmo3":
        kind += f" window {config['sliding_window']} layers {hf.layer_types}"
    print(f"shape {index}: {kind}, {json.dumps(hf.rope_parameters)}, heads {config['num_attention_heads']}/"
          f"{config['num_key_value_heads']} x {config['head_dim']}, hidden {config['hidden_size']}, "
          f"prompt {len(prompt)}, compared {last} steps: max |logit difference| {worst:.3g} "
          f"(transformers' f32 from f64 {own_error:.3g}){cache_note}")
    for p in problems:
        print(f"  FAIL {p}")
    return not problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=44)
    parser.add_argument("--bin-dir", type=Path, default=Path("target/release"))
    parser.add_argument("--only", type=lambda s: [int(i) for i in s.split(",")], metavar="I,J,...",
                        help="check only these of the --count shapes")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="leave the checkpoints and blobs in DIR")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    configs = [random_config(rng) for _ in range(args.count)]
    chosen = args.only if args.only is not None else range(args.count)
    with tempfile.TemporaryDirectory(prefix="olmo-shapes-") as temp:
        work = args.keep or Path(temp)
        work.mkdir(parents=True, exist_ok=True)
        failed = [i for i in chosen if not check(i, configs[i], args, work)]
    if failed:
        sys.exit(f"{len(failed)} of {len(chosen)} shapes failed: {failed}")
    print(f"OK: {len(chosen)} shapes")


if __name__ == "__main__":
    main()
