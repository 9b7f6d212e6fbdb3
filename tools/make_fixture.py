#!/usr/bin/env python3
"""Write a random-initialised OLMo-2 or OLMo-3 weights folder, optionally with reference logits.

The folder holds one C-order .npy per parameter, named after its Hugging Face
state_dict key (`model.embed_tokens.weight.npy`, ...), and the `config.json`
that transformers writes for the model (`--legacy-rope`: in the hub's older
spelling, top-level `rope_theta` and `rope_scaling`). Unless `--no-reference`
is given, it also holds the prompt (`prompt.tokens.bin`, little-endian u32),
the logits of every decoding step (`reference_logits.npy`, float32 [steps,
vocab]) and `reference.json`; these come from transformers' own
Olmo2ForCausalLM / Olmo3ForCausalLM in f32, built from the config.json just
written (so the reference is what transformers makes of that file), fed one
token at a time through its KV cache with greedy continuation after the
prompt. The same tokens through the model in one call, without a cache, must
give the same logits (checked; the sliding-window mask against the cache).

Needs torch, transformers and numpy (safetensors for `--safetensors`); no
network. Re-running with the same arguments writes the same files.

    python3 tools/make_fixture.py --shape gqa --prompt-ids 5,17,300 --steps 12 /tmp/gqa
    python3 tools/make_fixture.py --shape 1b --no-reference bench-data/1b
    python3 tools/make_fixture.py --arch olmo3 --shape gqa --sliding-window 3 \
        --yarn '{"factor": 4, "original_max_position_embeddings": 16}' --prompt-ids 5,17 --steps 40 /tmp/o3

tests/fixtures/README.md lists the commands that made the committed fixtures.
"""

import argparse
import inspect
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import Olmo2Config, Olmo2ForCausalLM, Olmo3Config, Olmo3ForCausalLM

ARCHS = {"olmo2": (Olmo2Config, Olmo2ForCausalLM), "olmo3": (Olmo3Config, Olmo3ForCausalLM)}
LAYER_TYPES = {"sliding": "sliding_attention", "full": "full_attention"}

# Token ids of the dolma2 tokenizer that OLMo-2 uses.
DOLMA2_EOS = 100257
DOLMA2_PAD = 100277

SHAPES = {
    "tiny": dict(vocab=100352, hidden=32, layers=2, heads=4, kv_heads=4,
                 intermediate=96, max_pos=128, rope_theta=500000.0),
    "gqa": dict(vocab=997, hidden=36, layers=3, heads=6, kv_heads=2,
                intermediate=92, max_pos=64, rope_theta=10000.0),
    # OLMo-2-0425-1B.
    "1b": dict(vocab=100352, hidden=2048, layers=16, heads=16, kv_heads=16,
               intermediate=8192, max_pos=4096, rope_theta=500000.0),
    # Smaller members of the same family: head_dim 128, intermediate 4 x hidden,
    # 128 hidden units per layer like the 1B where the vocabulary leaves room.
    "0.5b": dict(vocab=100352, hidden=1280, layers=10, heads=10, kv_heads=10,
                 intermediate=5120, max_pos=4096, rope_theta=500000.0),
    "0.1b": dict(vocab=100352, hidden=384, layers=10, heads=3, kv_heads=3,
                 intermediate=1536, max_pos=4096, rope_theta=500000.0),
}

SHAPE_FIELDS = ["vocab", "hidden", "layers", "heads", "kv_heads", "intermediate",
                "max_pos", "rope_theta"]


def make_config(shape, rms_norm_eps=1e-6, eos_token_id=None, pad_token_id=None, arch="olmo2",
                head_dim=None, olmo3=None):
    """Olmo2Config or Olmo3Config for a dict with the keys of SHAPES.

    `olmo3` (OLMo-3 only) holds `sliding_window`, `layer_types` (None: the
    config's default), `sliding_rope_theta` (None: rope_theta) and `yarn` (None,
    or the YaRN keys of the full-attention layers).
    """
    vocab = shape["vocab"]
    if eos_token_id is None:
        eos_token_id = DOLMA2_EOS if vocab > DOLMA2_PAD else vocab - 1
    if pad_token_id is None:
        pad_token_id = DOLMA2_PAD if vocab > DOLMA2_PAD else vocab - 2
    theta = float(shape["rope_theta"])
    extra = {} if head_dim is None else {"head_dim": head_dim}
    if arch == "olmo3":
        olmo3 = olmo3 or {}
        full = {"rope_type": "default", "rope_theta": theta}
        if olmo3.get("yarn"):
            full = {**olmo3["yarn"], "rope_type": "yarn", "rope_theta": theta}
        sliding_theta = olmo3.get("sliding_rope_theta") or theta
        extra.update(
            sliding_window=olmo3.get("sliding_window", 4096),
            layer_types=olmo3.get("layer_types"),
            rope_parameters={"full_attention": full,
                             "sliding_attention": {"rope_type": "default", "rope_theta": sliding_theta}},
        )
    else:
        extra["rope_theta"] = theta
    config_class, _ = ARCHS[arch]
    return config_class(
        vocab_size=vocab,
        hidden_size=shape["hidden"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        intermediate_size=shape["intermediate"],
        max_position_embeddings=shape["max_pos"],
        rms_norm_eps=rms_norm_eps,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        attention_bias=False,
        **extra,
    )


def model_class(config):
    return ARCHS[config.model_type][1]


def parameter_count(config):
    with torch.device("meta"):
        model = model_class(config)(config)
    return sum(p.numel() for p in model.parameters())


def random_parameters(names_and_shapes, seed, gain, round_to_f16):
    """Yield (name, float32 tensor) for each parameter, drawn in the given order.

    Matrices are normal with std gain/sqrt(fan_in), so logits have a std of
    about `gain` and the next-token distribution of even a tiny model is far
    from flat; the embedding is standard normal; every norm weight is uniform
    in [0.5, 1.5) so that a runtime ignoring one of them is caught.
    """
    generator = torch.Generator().manual_seed(seed)
    for name, shape in names_and_shapes:
        tensor = torch.empty(shape, dtype=torch.float32)
        if len(shape) == 1:
            tensor.uniform_(0.5, 1.5, generator=generator)
        elif name == "model.embed_tokens.weight":
            tensor.normal_(0.0, 1.0, generator=generator)
        else:
            tensor.normal_(0.0, gain / math.sqrt(shape[1]), generator=generator)
        if round_to_f16:
            tensor = tensor.half().float()
        yield name, tensor


def build_model(config, materialize):
    """The model on CPU, or a shape-only skeleton on the meta device."""
    if materialize:
        model = model_class(config)(config)
    else:
        with torch.device("meta"):
            model = model_class(config)(config)
    return model.eval()


def write_weights(model, out_dir, seed, gain, npy_dtype):
    """Draw every parameter, save it as .npy and, if the model is real, load it.

    Only one tensor is held outside the model at a time, so a skeleton model
    streams multi-gigabyte checkpoints in the memory of their largest tensor.
    """
    names_and_shapes = [(name, tuple(p.shape)) for name, p in model.named_parameters()]
    params = dict(model.named_parameters())
    materialized = not next(model.parameters()).is_meta
    for name, tensor in random_parameters(names_and_shapes, seed, gain, npy_dtype == "f16"):
        if materialized:
            with torch.no_grad():
                params[name].copy_(tensor)
        array = tensor.half().numpy() if npy_dtype == "f16" else tensor.numpy()
        np.save(out_dir / f"{name}.npy", np.ascontiguousarray(array))


@torch.no_grad()
def greedy_reference(model, prompt, steps):
    """Feed one token per step through the KV cache; greedy after the prompt.

    Returns (input_tokens, logits) with logits a float32 array [steps, vocab].
    """
    if steps < len(prompt):
        raise ValueError(f"steps ({steps}) must be at least the prompt length ({len(prompt)})")
    # transformers 5.25 renamed `past_key_values` to `cache`.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    input_tokens = []
    all_logits = []
    cache = None
    for position in range(steps):
        token = int(prompt[position]) if position < len(prompt) else int(all_logits[-1].argmax())
        out = model(input_ids=torch.tensor([[token]]), use_cache=True, **{cache_arg: cache})
        cache = getattr(out, cache_arg)
        input_tokens.append(token)
        all_logits.append(out.logits[0, -1].float())
    return input_tokens, torch.stack(all_logits).numpy()


@torch.no_grad()
def uncached_logits(model, tokens):
    """The logits of every position with all of `tokens` in one call and no cache."""
    return model(input_ids=torch.tensor([tokens]), use_cache=False).logits[0].float().numpy()


def summarize_reference(input_tokens, logits, prompt_length):
    top = torch.topk(torch.from_numpy(logits), 5, dim=-1)
    gaps = top.values[:, 0] - top.values[:, 1]
    return {
        "steps": len(input_tokens),
        "prompt_length": prompt_length,
        "input_tokens": input_tokens,
        "argmax": top.indices[:, 0].tolist(),
        "top5": top.indices.tolist(),
        "min_top1_gap": float(gaps.min()),
    }


def read_tokens(path):
    return [int(t) for t in np.fromfile(path, dtype="<u4")]


def write_tokens(path, tokens):
    np.asarray(tokens, dtype="<u4").tofile(path)


def write_reference(model, out_dir, prompt, steps):
    input_tokens, logits = greedy_reference(model, prompt, steps)
    whole = float(np.abs(uncached_logits(model, input_tokens) - logits).max())
    print(f"cached against uncached: max |logit difference| {whole:.3g}")
    if whole > 1e-4:
        sys.exit("the cached decode and the whole sequence disagree")
    summary = summarize_reference(input_tokens, logits, len(prompt))
    write_tokens(out_dir / "prompt.tokens.bin", prompt)
    np.save(out_dir / "reference_logits.npy", logits)
    write_json_one_key_per_line(out_dir / "reference.json", summary)
    return summary


def write_json_one_key_per_line(path, mapping):
    """Like json.dump, but each top-level value stays on one line, so diffs stay readable."""
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in mapping.items()]
    with open(path, "w") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")


def clear_generated_files(out_dir):
    """Remove what an earlier run wrote, so a smaller model leaves no stale tensors."""
    for path in out_dir.glob("*.npy"):
        path.unlink()
    for name in ["config.json", "reference.json", "prompt.tokens.bin"]:
        (out_dir / name).unlink(missing_ok=True)


def write_legacy_rope(path):
    """Rewrite an OLMo-3 config.json's rope_parameters as the hub's configs spell them:
    the full-attention layers' theta as `rope_theta` and their YaRN keys as
    `rope_scaling` (transformers gives the sliding layers its default theta then)."""
    with open(path) as f:
        config = json.load(f)
    full = dict(config.pop("rope_parameters")["full_attention"])
    config["rope_theta"] = full.pop("rope_theta")
    config["rope_scaling"] = full if full.get("rope_type") == "yarn" else None
    with open(path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--arch", choices=sorted(ARCHS), default="olmo2")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--kv-heads", type=int)
    parser.add_argument("--intermediate", type=int)
    parser.add_argument("--vocab", type=int)
    parser.add_argument("--max-pos", type=int)
    parser.add_argument("--rope-theta", type=float)
    parser.add_argument("--head-dim", type=int, help="head_dim (default hidden / heads)")
    parser.add_argument("--rms-norm-eps", type=float, default=1e-6)
    olmo3 = parser.add_argument_group("OLMo-3 (--arch olmo3)")
    olmo3.add_argument("--sliding-window", type=int, default=4096)
    olmo3.add_argument("--layer-types", metavar="S,F,...",
                       help="each layer's attention, sliding (S) or full (F); default: every 4th full")
    olmo3.add_argument("--sliding-rope-theta", type=float, help="rope_theta of the sliding layers")
    olmo3.add_argument("--yarn", metavar="JSON",
                       help="YaRN on the full-attention layers: the rope_parameters keys as a JSON "
                            "object, e.g. '{\"factor\": 8, \"original_max_position_embeddings\": 8192}'")
    olmo3.add_argument("--legacy-rope", action="store_true",
                       help="write config.json as the hub does: top-level rope_theta, YaRN as rope_scaling")
    parser.add_argument("--eos", type=lambda s: [int(t) for t in s.split(",")],
                        help=f"eos_token_id, or a comma-separated list (default {DOLMA2_EOS} for the "
                             "dolma2 vocabulary, else vocab-1)")
    parser.add_argument("--pad", type=int,
                        help=f"pad_token_id (default {DOLMA2_PAD} for the dolma2 vocabulary, else vocab-2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gain", type=float, default=3.0,
                        help="std of a matrix is gain/sqrt(fan_in) (default 3.0)")
    parser.add_argument("--npy-dtype", choices=["f32", "f16"], default="f32",
                        help="f16 rounds every weight to f16 first, so the f32 reference "
                             "uses exactly the numbers stored")
    parser.add_argument("--safetensors", type=Path, metavar="DIR",
                        help="also save_pretrained the same f32 weights to DIR as safetensors")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", type=Path, metavar="FILE", help="prompt as little-endian u32 ids")
    prompt.add_argument("--prompt-ids", help="prompt as comma-separated ids")
    parser.add_argument("--steps", type=int, default=16, help="decoding steps in the reference")
    parser.add_argument("--no-reference", action="store_true",
                        help="write weights and config only, streaming tensor by tensor")
    parser.add_argument("--vocab-txt", type=Path, metavar="FILE",
                        help="copy this vocab.txt into the folder")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    shape = dict(SHAPES[args.shape])
    for field in SHAPE_FIELDS:
        value = getattr(args, field)
        if value is not None:
            shape[field] = value
    if args.arch == "olmo2" and any([args.layer_types, args.sliding_rope_theta, args.yarn, args.legacy_rope]):
        sys.exit("--layer-types, --sliding-rope-theta, --yarn and --legacy-rope need --arch olmo3")
    olmo3 = None
    if args.arch == "olmo3":
        layer_types = None
        if args.layer_types is not None:
            short = {"S": "sliding", "F": "full"}
            layer_types = [LAYER_TYPES[short.get(t, t)] for t in args.layer_types.split(",")]
        olmo3 = dict(sliding_window=args.sliding_window, layer_types=layer_types,
                     sliding_rope_theta=args.sliding_rope_theta,
                     yarn=json.loads(args.yarn) if args.yarn else None)
    eos = args.eos[0] if args.eos is not None and len(args.eos) == 1 else args.eos
    config = make_config(shape, args.rms_norm_eps, eos, args.pad, args.arch, args.head_dim, olmo3)
    count = parameter_count(config)
    print(f"shape {args.shape}: {json.dumps(shape)}")
    print(f"parameters: {count} ({count / 1e9:.3f}e9)")

    if args.no_reference:
        prompt = None
    elif args.prompt is not None:
        prompt = read_tokens(args.prompt)
    elif args.prompt_ids is not None:
        prompt = [int(t) for t in args.prompt_ids.split(",")]
    else:
        sys.exit("a reference needs --prompt or --prompt-ids (or pass --no-reference)")
    if prompt is not None and any(not 0 <= t < config.vocab_size for t in prompt):
        sys.exit(f"prompt ids must be below vocab_size {config.vocab_size}")

    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_generated_files(out_dir)

    config.save_pretrained(out_dir)
    if args.legacy_rope:
        write_legacy_rope(out_dir / "config.json")
    # The model is what transformers makes of the file just written.
    config = type(config).from_pretrained(out_dir)
    print(f"rope_parameters as transformers reads them: {json.dumps(config.rope_parameters)}")
    materialize = prompt is not None or args.safetensors is not None
    model = build_model(config, materialize)
    write_weights(model, out_dir, args.seed, args.gain, args.npy_dtype)
    print(f"wrote weights ({args.npy_dtype}) and config.json to {out_dir}")

    if args.vocab_txt is not None:
        target = out_dir / "vocab.txt"
        if not (target.exists() and target.samefile(args.vocab_txt)):
            shutil.copyfile(args.vocab_txt, target)

    if args.safetensors is not None:
        model.save_pretrained(args.safetensors, safe_serialization=True)
        print(f"wrote safetensors snapshot to {args.safetensors}")

    if prompt is not None:
        summary = write_reference(model, out_dir, prompt, args.steps)
        print(f"input tokens: {summary['input_tokens']}")
        print(f"min_top1_gap: {summary['min_top1_gap']:.6f}")
        generated = summary["argmax"][len(prompt) - 1:]
        eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
        if set(eos) & set(generated):
            print(f"warning: the greedy continuation emits eos ({config.eos_token_id})")
        if summary["min_top1_gap"] < 1e-2:
            print("warning: min_top1_gap below 1e-2; try another --seed")


if __name__ == "__main__":
    main()
