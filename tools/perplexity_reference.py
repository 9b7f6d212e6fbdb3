#!/usr/bin/env python3
"""Perplexity of a Hugging Face checkpoint over a text, in windows, as transformers computes it.

The windows are those of `olmort perplexity` (and of the transformers docs'
"Perplexity of fixed-length models"): windows of CONTEXT tokens starting every
STRIDE tokens, each run from an empty cache and scoring the tokens it adds past
the previous window's end, through transformers' own loss (`labels` with the
unscored positions set to -100). Each window's mean loss is weighted by the
number of tokens it scores. The text is encoded with tools/reference_tokenizer.py.

Writes a JSON list with one object per (context, stride): what the Rust test
`perplexity_matches_transformers` compares `olmort perplexity --format json` with.

Needs torch, transformers, tiktoken; no network.

    python3 tools/perplexity_reference.py tests/fixtures/trained tests/fixtures/trained/perplexity.txt \\
        --windows 256:128 256:256 64:48 --out tests/fixtures/trained/perplexity_reference.json
"""

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_tokenizer  # noqa: E402


def windows(n_tokens, context, stride):
    """(start, end, first_target) of each window, as runtime/src/eval/perplexity.rs cuts them."""
    out, previous_end = [], 0
    for start in range(0, n_tokens, stride):
        end = min(start + context, n_tokens)
        first_target = max(previous_end, start + 1)
        if first_target < end:
            out.append((start, end, first_target))
        previous_end = end
        if end == n_tokens:
            break
    return out


@torch.no_grad()
def perplexity(model, tokens, context, stride):
    ids = torch.tensor([tokens])
    nll_sum, scored, count = 0.0, 0, 0
    for start, end, first_target in windows(len(tokens), context, stride):
        input_ids = ids[:, start:end]
        labels = input_ids.clone()
        labels[:, :first_target - start] = -100
        loss = model(input_ids=input_ids, labels=labels).loss.item()
        n = end - first_target
        nll_sum += loss * n
        scored += n
        count += 1
    nll = nll_sum / scored
    return {"context": context, "stride": stride, "windows": count, "tokens": scored,
            "nll": nll, "perplexity": math.exp(nll)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="Hugging Face checkpoint folder")
    parser.add_argument("text", type=Path, help="UTF-8 text")
    parser.add_argument("--vocab", type=Path, default=Path("tests/fixtures/tiny/vocab.txt"))
    parser.add_argument("--windows", nargs="+", default=["256:128"], metavar="CONTEXT:STRIDE")
    parser.add_argument("--out", type=Path, help="write the JSON here (default: standard output)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    encoding = reference_tokenizer.load_encoding(args.vocab)
    tokens = reference_tokenizer.encode(encoding, args.text.read_text(encoding="utf-8"))
    results = []
    for spec in args.windows:
        context, stride = (int(x) for x in spec.split(":"))
        results.append(perplexity(model, tokens, context, stride))
        print(json.dumps(results[-1]), file=sys.stderr)
    text = "[\n" + ",\n".join("  " + json.dumps(r) for r in results) + "\n]\n"
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
