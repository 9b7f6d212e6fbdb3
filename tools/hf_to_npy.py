#!/usr/bin/env python3
"""Convert a Hugging Face OLMo-2 or OLMo-3 checkpoint into a folder of .npy files.

Writes one C-order .npy per state_dict tensor, named after its key
(`model.embed_tokens.weight.npy`, ...), plus the checkpoint's config.json
(and generation_config.json, where it has one) copied verbatim. Tensors are read one at a time from the checkpoint files, so
memory stays near the size of the largest tensor. A checkpoint that ties its
word embeddings gets an `lm_head.weight.npy` equal to the embedding.

MODEL_ID_OR_PATH is a local snapshot folder (config.json plus *.safetensors or
pytorch_model*.bin) or a hub id, which needs network access to download.
Needs torch, transformers and numpy (safetensors for .safetensors files).

    python3 tools/hf_to_npy.py allenai/OLMo-2-0425-1B weights/olmo2-1b --dtype f16
    python3 tools/hf_to_npy.py allenai/Olmo-3-1025-7B weights/olmo3-7b --dtype f16
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, Olmo2ForCausalLM, Olmo3ForCausalLM

DTYPES = {"f32": torch.float32, "f16": torch.float16}
MODELS = {"olmo2": Olmo2ForCausalLM, "olmo3": Olmo3ForCausalLM}


def resolve_snapshot(model_id_or_path):
    path = Path(model_id_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model_id_or_path,
                                  allow_patterns=["*.json", "*.safetensors", "*.bin"]))


def checkpoint_files(snapshot):
    """The weight files of a snapshot, preferring safetensors, honouring shard indexes."""
    for index_name, pattern in [("model.safetensors.index.json", "*.safetensors"),
                                ("pytorch_model.bin.index.json", "pytorch_model*.bin")]:
        index = snapshot / index_name
        if index.exists():
            with open(index) as f:
                return [snapshot / name for name in sorted(set(json.load(f)["weight_map"].values()))]
        files = sorted(snapshot.glob(pattern))
        if files:
            return files
    raise FileNotFoundError(f"no *.safetensors or pytorch_model*.bin in {snapshot}")


def iter_tensors(files):
    """Yield (key, tensor) over all checkpoint files, one tensor in memory at a time."""
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        else:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            for key in list(state):
                yield key, state.pop(key)


def save_npy(out_dir, name, tensor, dtype):
    converted = tensor.to(DTYPES[dtype]).contiguous()
    if not torch.isfinite(converted).all():
        raise ValueError(f"{name} does not fit in {dtype}")
    np.save(out_dir / f"{name}.npy", converted.numpy())


def convert(model_id_or_path, out_dir, dtype):
    snapshot = resolve_snapshot(model_id_or_path)
    config = AutoConfig.from_pretrained(snapshot)
    if config.model_type not in MODELS:
        raise ValueError(f"{model_id_or_path} is a {config.model_type!r} model, not olmo2 or olmo3")
    model_class = MODELS[config.model_type]
    with torch.device("meta"):
        expected = list(model_class(config).state_dict())

    out_dir.mkdir(parents=True, exist_ok=True)
    written = set()
    for key, tensor in iter_tensors(checkpoint_files(snapshot)):
        if key not in expected:
            print(f"skipping {key}: not a parameter of {model_class.__name__}", file=sys.stderr)
            continue
        save_npy(out_dir, key, tensor, dtype)
        written.add(key)
        print(f"{key} {tuple(tensor.shape)} {tensor.dtype} -> {dtype}")

    tied_head = "lm_head.weight"
    if tied_head not in written and config.tie_word_embeddings:
        shutil.copyfile(out_dir / "model.embed_tokens.weight.npy", out_dir / f"{tied_head}.npy")
        written.add(tied_head)
        print(f"{tied_head} tied to model.embed_tokens.weight")
    missing = [name for name in expected if name not in written]
    if missing:
        raise ValueError(f"checkpoint lacks {missing}")
    for name in ["config.json", "generation_config.json"]:
        if (snapshot / name).exists():
            shutil.copyfile(snapshot / name, out_dir / name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", metavar="MODEL_ID_OR_PATH")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    args = parser.parse_args(argv)
    convert(args.model, args.out_dir, args.dtype)


if __name__ == "__main__":
    main()
