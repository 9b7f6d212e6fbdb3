#!/usr/bin/env python3
"""Write tokenizer_random_cases.json: seeded random strings with their ids from
reference_tokenizer.py.

The strings mix ASCII, runs of spaces, tabs, CR/LF, no-break and ideographic
spaces, digits, apostrophes with the contraction letters (and U+017F, which
case-folds to s), Latin-1 and other BMP characters, emoji and code points from
every plane. Each case is {"text": ..., "ids": [...]}; special-token spellings
are ordinary text. Needs tiktoken; no network. Deterministic for a given seed.

    python3 tools/make_random_tokenizer_cases.py tests/fixtures/tiny/vocab.txt \
        tests/fixtures/tokenizer_random_cases.json
"""

import argparse
import json
import random
from pathlib import Path

from reference_tokenizer import encode, load_encoding

SPACES = [" ", " ", " ", "\n", "\r", "\t", "\u00a0", "\u3000", "\r\n", "  "]
CONTRACTION = ["'", "'", "s", "S", "t", "re", "VE", "m", "ll", "d", "\u017f"]


def random_char(rng):
    kind = rng.randrange(11)
    if kind == 0:
        return rng.choice(SPACES)
    if kind == 1:
        return rng.choice(CONTRACTION)
    if kind == 2:
        return chr(ord("0") + rng.randrange(10))
    if kind in (3, 4):
        return chr(0x20 + rng.randrange(0x5F))
    if kind == 5:
        return chr(rng.randrange(0x80))
    if kind == 6:
        return chr(0x80 + rng.randrange(0x780))
    if kind == 7:
        cp = 0x800 + rng.randrange(0xF800)
        return "\ufffd" if 0xD800 <= cp < 0xE000 else chr(cp)
    if kind == 8:
        return chr(0x1F300 + rng.randrange(0x300))
    if kind == 9:
        return rng.choice(["<|endoftext|>", "...", "!!", "--", "\u2019s", "\U0001F468\u200D\U0001F469"])
    cp = rng.randrange(0x110000)
    return "x" if 0xD800 <= cp < 0xE000 else chr(cp)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("vocab", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--seed", type=int, default=20250425)
    args = parser.parse_args(argv)
    encoding = load_encoding(args.vocab)
    rng = random.Random(args.seed)
    cases = []
    for _ in range(args.count):
        text = "".join(random_char(rng) for _ in range(rng.randrange(1, 48)))
        cases.append({"text": text, "ids": encode(encoding, text)})
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("[\n")
        f.write(",\n".join(json.dumps(case) for case in cases))
        f.write("\n]\n")
    print(f"wrote {len(cases)} cases to {args.out}")


if __name__ == "__main__":
    main()
