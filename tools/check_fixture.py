#!/usr/bin/env python3
"""Check that a weights folder written by make_fixture.py reproduces its reference.

Loads config.json and every .npy into transformers' Olmo2ForCausalLM or
Olmo3ForCausalLM (f32, by the config's model_type), re-runs the reference
decode on prompt.tokens.bin and compares the logits with reference_logits.npy
and the tokens with reference.json, and the same tokens in one uncached call
with the decode. With `--safetensors
DIR` it also checks that DIR (a save_pretrained snapshot) holds the same
numbers as the .npy files and decodes to the same logits.

Needs torch, transformers and numpy; no network. Exits non-zero on a mismatch.

    python3 tools/check_fixture.py tests/fixtures/tiny
    python3 tools/check_fixture.py tests/fixtures/gqa --safetensors tests/fixtures/gqa-safetensors
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig

from make_fixture import greedy_reference, model_class, read_tokens, summarize_reference, uncached_logits


def load_npy_model(weights_dir):
    config = AutoConfig.from_pretrained(weights_dir)
    model = model_class(config)(config).eval()
    expected = {name for name, _ in model.named_parameters()}
    present = {path.name[:-len(".npy")] for path in weights_dir.glob("*.npy")} - {"reference_logits"}
    problems = []
    if expected - present:
        problems.append(f"missing tensors: {sorted(expected - present)}")
    if present - expected:
        problems.append(f"unexpected .npy files: {sorted(present - expected)}")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name not in present:
                continue
            array = np.load(weights_dir / f"{name}.npy")
            if array.shape != tuple(param.shape):
                problems.append(f"{name}: shape {array.shape}, model wants {tuple(param.shape)}")
                continue
            if not array.flags.c_contiguous:
                problems.append(f"{name}: not C-order")
            param.copy_(torch.from_numpy(array.astype(np.float32)))
    return model, problems


def compare_decode(label, model, prompt, reference, reference_logits, tolerance):
    input_tokens, logits = greedy_reference(model, prompt, reference["steps"])
    summary = summarize_reference(input_tokens, logits, len(prompt))
    max_diff = float(np.abs(logits - reference_logits).max())
    whole = float(np.abs(uncached_logits(model, input_tokens) - logits).max())
    print(f"{label}: max |logit difference| {max_diff:.3g}, uncached against cached {whole:.3g}, "
          f"min_top1_gap {summary['min_top1_gap']:.6f}")
    problems = []
    if max_diff > tolerance:
        problems.append(f"{label}: logits differ by {max_diff} (tolerance {tolerance})")
    if whole > tolerance:
        problems.append(f"{label}: one uncached call differs from the decode by {whole}")
    for key in ["input_tokens", "argmax", "top5"]:
        if summary[key] != reference[key]:
            problems.append(f"{label}: {key} differs from reference.json")
    return problems


def check_safetensors(snapshot_dir, npy_model):
    snapshot = model_class(npy_model.config).from_pretrained(snapshot_dir, dtype=torch.float32).eval()
    problems = []
    npy_state = npy_model.state_dict()
    for name, tensor in snapshot.state_dict().items():
        if name not in npy_state:
            continue
        if not torch.equal(tensor, npy_state[name]):
            problems.append(f"safetensors {name} differs from the .npy file")
    return snapshot, problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights_dir", type=Path)
    parser.add_argument("--safetensors", type=Path, metavar="DIR")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest accepted logit difference (default 1e-4)")
    args = parser.parse_args(argv)

    weights_dir = args.weights_dir
    with open(weights_dir / "reference.json") as f:
        reference = json.load(f)
    reference_logits = np.load(weights_dir / "reference_logits.npy")
    prompt = read_tokens(weights_dir / "prompt.tokens.bin")
    print(f"{weights_dir}: prompt {prompt}, {reference['steps']} steps, "
          f"reference min_top1_gap {reference['min_top1_gap']:.6f}")

    problems = []
    if reference_logits.dtype != np.float32 or reference_logits.shape[0] != reference["steps"]:
        problems.append(f"reference_logits.npy is {reference_logits.dtype} {reference_logits.shape}")
    if reference["input_tokens"][:len(prompt)] != prompt:
        problems.append("reference.json input_tokens do not start with the prompt")
    model, load_problems = load_npy_model(weights_dir)
    problems += load_problems
    if not load_problems:
        problems += compare_decode("npy", model, prompt, reference, reference_logits, args.tolerance)
    if args.safetensors is not None and not load_problems:
        snapshot, snapshot_problems = check_safetensors(args.safetensors, model)
        problems += snapshot_problems
        problems += compare_decode("safetensors", snapshot, prompt, reference, reference_logits,
                                   args.tolerance)

    for problem in problems:
        print(f"FAIL {problem}")
    if problems:
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
