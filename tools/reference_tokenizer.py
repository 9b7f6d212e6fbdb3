#!/usr/bin/env python3
"""Reference encoder for the dolma2 tokenizer, built offline from vocab.txt.

Ids 0..100255 of OLMo-2's vocabulary are the cl100k_base ranks, so a
tiktoken Encoding with those ranks, cl100k_base's split pattern and the
special tokens of vocab.txt encodes text exactly as OLMo-2's tokenizer does,
without fetching cl100k_base.tiktoken. Text is encoded as ordinary text: a
special token's spelling inside it (e.g. `<|endoftext|>`) gets no special id.

Needs tiktoken; no network.

    python3 tools/reference_tokenizer.py tests/fixtures/tiny/vocab.txt some.txt
"""

import argparse
import sys

import tiktoken

# The first id that is not a cl100k_base rank; from here on vocab.txt lists special tokens.
FIRST_SPECIAL_ID = 100256

# Split pattern of tiktoken's cl100k_base.
CL100K_PAT_STR = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
    r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}


def gpt2_unicode_to_byte():
    """Inverse of GPT-2's bytes_to_unicode: printable stand-in character -> byte."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    mapping = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            mapping[chr(256 + shifted)] = b
            shifted += 1
    return mapping


def unescape(field):
    out = []
    chars = iter(field)
    for ch in chars:
        if ch == "\\":
            following = next(chars, "")
            if following not in ESCAPES:
                raise ValueError(f"bad escape \\{following} in {field!r}")
            out.append(ESCAPES[following])
        else:
            out.append(ch)
    return "".join(out)


def read_vocab(path):
    """vocab.txt as a list of (id, token string), escapes undone."""
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    entries = []
    # Split on "\n" only: str.splitlines would also break on characters a token may hold.
    for line in text.split("\n"):
        if not line:
            continue
        token_id, token = line.split("\t", 1)
        entries.append((int(token_id), unescape(token)))
    return entries


def load_encoding(vocab_path):
    to_byte = gpt2_unicode_to_byte()
    mergeable_ranks = {}
    special_tokens = {}
    for token_id, token in read_vocab(vocab_path):
        if token_id < FIRST_SPECIAL_ID:
            mergeable_ranks[bytes(to_byte[ch] for ch in token)] = token_id
        else:
            special_tokens[token] = token_id
    return tiktoken.Encoding(
        name="dolma2",
        pat_str=CL100K_PAT_STR,
        mergeable_ranks=mergeable_ranks,
        special_tokens=special_tokens,
    )


def encode(encoding, text):
    return encoding.encode_ordinary(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("vocab", help="vocab.txt (id<TAB>token, GPT-2 byte-level form)")
    parser.add_argument("text_file", help="UTF-8 text to encode, taken byte for byte")
    args = parser.parse_args(argv)
    encoding = load_encoding(args.vocab)
    with open(args.text_file, encoding="utf-8", newline="") as f:
        text = f.read()
    print(" ".join(str(t) for t in encode(encoding, text)))


if __name__ == "__main__":
    sys.exit(main())
