#!/usr/bin/env python3
"""Write tokenizer_cases.json: varied texts with their ids from reference_tokenizer.py.

Each case is {"text": ..., "ids": [...]}; special-token spellings inside a text
are encoded as ordinary text. Needs tiktoken; no network.

    python3 tools/make_tokenizer_cases.py tests/fixtures/tiny/vocab.txt tests/fixtures/tokenizer_cases.json
"""

import argparse
import json
from pathlib import Path

from reference_tokenizer import encode, load_encoding

CASES = [
    "",
    " ",
    "\n",
    "\t",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "1234567890 12 123 1234 12345 123456 3.14159 -42 1,000,000 1e-9",
    "00000000000000000000000000007",
    "a  b   c    d     e      f",
    "   leading and trailing spaces   ",
    "          indented",
    "col1\tcol2\t\tcol3\t\t\tend\t",
    "line one\nline two\n\nline four\n\n\n",
    "windows\r\nline endings\r\n\r\nend\r",
    "  \n  \n\t\n \t \n",
    "trailing spaces before newline   \n   next line",
    "it's don't we're they've I'm you'll he'd",
    "IT'S DON'T WE'RE THEY'VE I'M YOU'LL HE'D",
    "It'S dOn'T wE'Re tHeY'Ve i'M yOu'Ll hE'd",
    "'s 'll '' ''' rock 'n' roll, o'clock, Don\u2019t",
    "Wait... what?!?! (yes) [no] {maybe} <tag/> --- *** /// ~~~",
    "!!!???...,,,;;;:::@@@###$$$%%%^^^&&&",
    "email@example.com https://example.org/a/b?q=1&r=two#frag",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 fa\u00e7ade \u00c5ngstr\u00f6m Z\u00fcrich S\u00e3o Paulo \u0141\u00f3d\u017a",
    "e\u0301 is e plus a combining acute; \u00e9 is precomposed",
    "\u039a\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1 \u03ba\u03cc\u03c3\u03bc\u03b5, \u1f00\u03c1\u03c7\u1f74 \u1f25\u03bc\u03b9\u03c3\u03c5 \u03c0\u03b1\u03bd\u03c4\u03cc\u03c2",
    "\u0421\u044a\u0435\u0448\u044c \u0436\u0435 \u0435\u0449\u0451 \u044d\u0442\u0438\u0445 \u043c\u044f\u0433\u043a\u0438\u0445 "
    "\u0444\u0440\u0430\u043d\u0446\u0443\u0437\u0441\u043a\u0438\u0445 \u0431\u0443\u043b\u043e\u043a, "
    "\u0434\u0430 \u0432\u044b\u043f\u0435\u0439 \u0447\u0430\u044e.",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3001\u6f22\u5b57\u3068\u3072\u3089\u304c\u306a\u3002"
    "\u4e2d\u6587\u6d4b\u8bd5\uff1a\u4f60\u597d\uff0c\u4e16\u754c\uff01",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8\uc640 \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e0a\u0e32\u0e27\u0e42\u0e25\u0e01",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645\u060c \u0647\u0630\u0627 "
    "\u0627\u062e\u062a\u0628\u0627\u0631. \u0661\u0662\u0663\u0664\u0665",
    "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd \u0928\u092e\u0938\u094d\u0924\u0947 "
    "\u0926\u0941\u0928\u093f\u092f\u093e",
    "I \u2764\ufe0f Rust \U0001f980\U0001f680 \U0001f44d\U0001f3fd!",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 \U0001f469\U0001f3fd\u200d\U0001f4bb "
    "\U0001f3f3\ufe0f\u200d\U0001f308 \U0001f1fa\U0001f1f8",
    "x\u00b2 + y\u00b2 = z\u00b2; \u2211\u1d62 a\u1d62 \u2264 \u221e; \u03b1\u2192\u03b2 \u00bd \u2153",
    "\u00a0non-breaking\u00a0space and\u2009thin\u3000ideographic space",
    "bell\x07 null\x00 delete\x7f escape\x1b[0m",
    "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n",
    "fn main() {\n    let xs: Vec<u32> = (0..10).collect();\n    println!(\"{:?}\", xs);\n}\n",
    "{\"key\": [1, 2.5, null, true], \"nested\": {\"a\": \"b\\n\"}}",
    "C:\\Users\\name\\file.txt \\n \\\\ \\t",
    "abc123def4567ghi 2024-01-15T12:34:56Z v1.2.3 0x7fFF",
    "ALLCAPS WORDS camelCaseWords snake_case_words kebab-case-words",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism",
    "<|endoftext|>",
    "The end.<|endoftext|>Next document <|pad|> and <|im_start|>user",
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("vocab", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    encoding = load_encoding(args.vocab)
    cases = [{"text": text, "ids": encode(encoding, text)} for text in CASES]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("[\n")
        f.write(",\n".join(json.dumps(case, ensure_ascii=False) for case in cases))
        f.write("\n]\n")
    print(f"wrote {len(cases)} cases to {args.out}")


if __name__ == "__main__":
    main()
