#!/usr/bin/env python3
"""Writes a random OLMo-2-7B-shaped checkpoint as a Hugging Face snapshot: config.json,
bf16 safetensors shards and model.safetensors.index.json, for packing and timing only
(its logits mean nothing; nothing compares them with transformers).

    python3 tools/make_7b_shards.py bench-data/7b          # ~14.6 GB

The tensors are streamed to disk a few rows at a time with numpy (no torch, no
transformers), so memory stays near one chunk whatever the model size. Matrices are
normal with std 0.02 (rounded to bf16 by truncation), norm weights 1 + N(0, 0.1).
`--shape` takes other sizes as HIDDEN,LAYERS,HEADS,KV_HEADS,INTERMEDIATE,VOCAB.
"""

import argparse
import json
import struct
from pathlib import Path

import numpy as np

SHAPE_7B = (4096, 32, 32, 32, 11008, 100352)
CHUNK = 1 << 24  # values generated at a time


def tensors(hidden, layers, heads, kv_heads, inter, vocab):
    """(name, shape) in the order a shard holds them, and the shard of each layer."""
    head_dim = hidden // heads
    yield "model.embed_tokens.weight", (vocab, hidden), 0
    for l in range(layers):
        p = f"model.layers.{l}"
        for name, shape in [
            ("self_attn.q_proj.weight", (heads * head_dim, hidden)),
            ("self_attn.k_proj.weight", (kv_heads * head_dim, hidden)),
            ("self_attn.v_proj.weight", (kv_heads * head_dim, hidden)),
            ("self_attn.o_proj.weight", (hidden, heads * head_dim)),
            ("self_attn.q_norm.weight", (heads * head_dim,)),
            ("self_attn.k_norm.weight", (kv_heads * head_dim,)),
            ("mlp.gate_proj.weight", (inter, hidden)),
            ("mlp.up_proj.weight", (inter, hidden)),
            ("mlp.down_proj.weight", (hidden, inter)),
            ("post_attention_layernorm.weight", (hidden,)),
            ("post_feedforward_layernorm.weight", (hidden,)),
        ]:
            yield f"{p}.{name}", shape, 1 + l * 4 // layers
    yield "model.norm.weight", (hidden,), 5
    yield "lm_head.weight", (vocab, hidden), 5


def bf16_chunks(rng, count, is_norm):
    """`count` random values as little-endian bf16 bytes, a chunk at a time."""
    while count > 0:
        n = min(count, CHUNK)
        v = rng.standard_normal(n, dtype=np.float32)
        v = 1.0 + 0.1 * v if is_norm else 0.02 * v
        yield (v.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        count -= n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--shape", default=",".join(map(str, SHAPE_7B)))
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    hidden, layers, heads, kv_heads, inter, vocab = map(int, args.shape.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)

    shards = {}
    for name, shape, shard in tensors(hidden, layers, heads, kv_heads, inter, vocab):
        shards.setdefault(shard, []).append((name, shape))
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for (shard, entries), file in zip(sorted(shards.items()), names):
        header, offset = {}, 0
        for name, shape in entries:
            size = int(np.prod(shape)) * 2
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
            weight_map[name] = file
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(args.out / file, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for name, shape in entries:
                for chunk in bf16_chunks(rng, int(np.prod(shape)), name.endswith("norm.weight")):
                    f.write(chunk)
        print(f"{file}: {len(entries)} tensors, {offset / 1e9:.2f} GB", flush=True)
    index = {"metadata": {"total_size": sum(int(np.prod(s)) * 2 for _, s, _ in
                                            tensors(hidden, layers, heads, kv_heads, inter, vocab))},
             "weight_map": weight_map}
    (args.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    config = {
        "architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2", "hidden_size": hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "intermediate_size": inter, "vocab_size": vocab, "max_position_embeddings": 4096,
        "rope_theta": 500000.0, "rms_norm_eps": 1e-6, "eos_token_id": 100257, "pad_token_id": 100277,
        "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False,
    }
    (args.out / "config.json").write_text(json.dumps(config, indent=1))


if __name__ == "__main__":
    main()
