#!/usr/bin/env python3
"""Write the trained fixture's tokenizer and its references from transformers.

Given the checkpoint folder that tools/train_tiny.py wrote (config.json,
generation_config.json, model.safetensors, heldout.txt), adds:

- `tokenizer.json`, built from vocab.txt by tools/make_tokenizer_json.py and checked
  against the reference tokenizer on heldout.txt;
- `prompt.tokens.bin`, `reference_logits.npy`, `reference.json`: the per-step logits
  of a held-out passage's first tokens and then greedy steps, as for every fixture
  (tools/make_fixture.py's layout);
- `generate_reference.json`: the prompt text, its ids and the greedy continuation
  transformers' `generate` gives (ids and text), plain and with
  `repetition_penalty` (`penalized_*`: olmort's `--repeat-penalty` with
  `--repeat-last-n -1`, every token of the context);
- `perplexity.txt` (the start of heldout.txt) and `perplexity_reference.json`
  (tools/perplexity_reference.py over it for a few window settings).

The model runs in f32 from the stored f16 weights. Deterministic.

    python3 tools/make_trained_references.py tests/fixtures/trained
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixture  # noqa: E402
import make_tokenizer_json  # noqa: E402
import perplexity_reference  # noqa: E402
import reference_tokenizer  # noqa: E402

GENERATE_PROMPT = "And the LORD said unto Moses,"
GENERATE_TOKENS = 40
REPETITION_PENALTY = 1.3
REFERENCE_PROMPT_TOKENS = 8
REFERENCE_STEPS = 12
PERPLEXITY_CHARS = 4000
PERPLEXITY_WINDOWS = [(256, 128), (256, 256), (100, 37)]


@torch.no_grad()
def greedy_generate(model, prompt_ids, new_tokens, repetition_penalty=1.0):
    # The scores are the processed ones (after the penalty): the gaps greedy chose by.
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=new_tokens, do_sample=False,
                         output_scores=True, return_dict_in_generate=True, eos_token_id=None,
                         repetition_penalty=repetition_penalty)
    ids = out.sequences[0, len(prompt_ids):].tolist()
    gaps = [float(torch.topk(s[0].float(), 2).values.diff().abs()) for s in out.scores]
    return ids, min(gaps)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--vocab", type=Path, default=Path("tests/fixtures/tiny/vocab.txt"))
    args = parser.parse_args(argv)
    folder = args.folder
    torch.set_num_threads(1)

    tokenizer, encoding = make_tokenizer_json.build(args.vocab)
    held_out = (folder / "heldout.txt").read_text(encoding="utf-8")
    agreed = make_tokenizer_json.check(tokenizer, encoding, [("heldout.txt", held_out)])
    tokenizer.save(str(folder / "tokenizer.json"), pretty=False)
    print(f"tokenizer.json: {agreed} held-out tokens agree with the reference tokenizer")

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    held_ids = reference_tokenizer.encode(encoding, held_out)
    prompt = held_ids[:REFERENCE_PROMPT_TOKENS]
    summary = make_fixture.write_reference(model, folder, prompt, REFERENCE_STEPS)
    print(f"reference: input tokens {summary['input_tokens']}, min_top1_gap {summary['min_top1_gap']:.4f}")

    prompt_ids = reference_tokenizer.encode(encoding, GENERATE_PROMPT)
    ids, gap = greedy_generate(model, prompt_ids, GENERATE_TOKENS)
    text = encoding.decode(ids)
    penalized, penalized_gap = greedy_generate(model, prompt_ids, GENERATE_TOKENS, REPETITION_PENALTY)
    penalized_text = encoding.decode(penalized)
    make_fixture.write_json_one_key_per_line(folder / "generate_reference.json", {
        "prompt": GENERATE_PROMPT, "prompt_ids": prompt_ids, "max_new_tokens": GENERATE_TOKENS,
        "ids": ids, "text": text, "min_top1_gap": gap,
        "repetition_penalty": REPETITION_PENALTY, "penalized_ids": penalized, "penalized_text": penalized_text,
        "penalized_min_top1_gap": penalized_gap})
    print(f"generate: {GENERATE_PROMPT!r} -> {text!r} (min top-1 gap {gap:.4f})")
    print(f"generate, repetition_penalty {REPETITION_PENALTY}: {penalized_text!r} (min top-1 gap {penalized_gap:.4f})")

    excerpt = held_out[:PERPLEXITY_CHARS]
    excerpt = excerpt[:excerpt.rindex("\n") + 1]  # whole verses
    (folder / "perplexity.txt").write_text(excerpt, encoding="utf-8")
    tokens = reference_tokenizer.encode(encoding, excerpt)
    results = [perplexity_reference.perplexity(model, tokens, c, s) for c, s in PERPLEXITY_WINDOWS]
    (folder / "perplexity_reference.json").write_text(
        "[\n" + ",\n".join("  " + json.dumps(r) for r in results) + "\n]\n")
    for r in results:
        print(f"perplexity {r}")


if __name__ == "__main__":
    main()
