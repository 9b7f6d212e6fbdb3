#!/usr/bin/env python3
"""Write a tokenizer's vocabulary as vocab.txt, the format the packer reads.

One line per token, `id<TAB>token`, sorted by id, the token in the
tokenizer's own GPT-2 byte-level spelling (`Ġ` for a space, `Ċ` for a
newline, ...), with backslash, newline, carriage return and tab written as
`\\\\`, `\\n`, `\\r` and `\\t`. Added and special tokens (`<|endoftext|>`,
`<|pad|>`, ...) are included with their text as is.

MODEL_ID_OR_PATH is a local tokenizer folder or a hub id, which needs network
access to download. Needs transformers (and tokenizers).

    python3 tools/export_vocab.py allenai/OLMo-2-0425-1B weights/olmo2-1b/vocab.txt
"""

import argparse
import sys
from pathlib import Path

from transformers import AutoTokenizer

ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def vocabulary(tokenizer):
    """{id: token} over the base vocabulary and every added token."""
    by_id = {}
    for token, token_id in tokenizer.get_vocab().items():
        if by_id.setdefault(token_id, token) != token:
            raise ValueError(f"id {token_id} names both {by_id[token_id]!r} and {token!r}")
    return by_id


def write_vocab(by_id, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for token_id in sorted(by_id):
            f.write(f"{token_id}\t{by_id[token_id].translate(ESCAPES)}\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", metavar="MODEL_ID_OR_PATH")
    parser.add_argument("out", type=Path, metavar="OUT/vocab.txt")
    args = parser.parse_args(argv)
    by_id = vocabulary(AutoTokenizer.from_pretrained(args.model))
    gaps = sorted(set(range(max(by_id) + 1)) - set(by_id))
    if gaps:
        print(f"note: {len(gaps)} ids have no token, first {gaps[:5]}", file=sys.stderr)
    write_vocab(by_id, args.out)
    print(f"wrote {len(by_id)} tokens (ids 0..{max(by_id)}) to {args.out}")


if __name__ == "__main__":
    main()
