#!/usr/bin/env python3
"""Write a Hugging Face tokenizer.json for the dolma2 vocabulary from vocab.txt.

Ids 0..100255 are cl100k_base's ranks: byte-level BPE whose merges are derived
from the ranks as tiktoken-to-Hugging-Face converters do (every split of a token
into two tokens becomes a merge, ranked by the token it makes, so the lowest-id
merge wins as in tiktoken). The pre-tokenizer is the cl100k split pattern that
OLMo-2's own tokenizer.json carries, then the byte-level alphabet; ids 100256 and
up are added special tokens. `olmoc pack` reads `model.vocab` and `added_tokens`;
`tokenizers` and transformers load the whole file.

With `--check FILE...` the result is compared with tools/reference_tokenizer.py
(tiktoken) on each file's text, line by line and whole, and on the strings of
tests/fixtures/tokenizer_cases.json; any difference is an error.

Needs tokenizers and tiktoken; no network.

    python3 tools/make_tokenizer_json.py tests/fixtures/tiny/vocab.txt tests/fixtures/trained/tokenizer.json
"""

import argparse
import json
import os
import sys
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_tokenizer  # noqa: E402

# The split pattern of OLMo-2's tokenizer.json (cl100k's, without possessive quantifiers).
OLMO2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"""
               r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


def vocab_and_merges(ranks):
    """Byte-level vocabulary and merges, ranked by the token each merge makes."""
    to_unicode = {b: ch for ch, b in reference_tokenizer.gpt2_unicode_to_byte().items()}
    spell = lambda token: "".join(to_unicode[b] for b in token)
    vocab = {spell(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        splits = [(token[:i], token[i:]) for i in range(1, len(token))
                  if token[:i] in ranks and token[i:] in ranks]
        splits.sort(key=lambda pair: (ranks[pair[0]], ranks[pair[1]]))
        merges.extend((spell(left), spell(right)) for left, right in splits)
    return vocab, merges


def build(vocab_path):
    encoding = reference_tokenizer.load_encoding(vocab_path)
    vocab, merges = vocab_and_merges(encoding._mergeable_ranks)
    tokenizer = Tokenizer(BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(OLMO2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = sorted(encoding._special_tokens.items(), key=lambda item: item[1])
    for expected_id, (text, token_id) in enumerate(specials, start=len(vocab)):
        if token_id != expected_id:
            sys.exit(f"special token {text!r} has id {token_id}, not the next id {expected_id}")
    tokenizer.add_special_tokens([AddedToken(text, normalized=False, special=True)
                                  for text, _ in specials])
    return tokenizer, encoding


def check(tokenizer, encoding, texts):
    """Every text (and each of its lines) must encode to the reference ids."""
    count = 0
    for name, text in texts:
        pieces = [text] + text.split("\n")
        for piece in pieces:
            ours = tokenizer.encode(piece, add_special_tokens=False).ids
            theirs = reference_tokenizer.encode(encoding, piece)
            if ours != theirs:
                sys.exit(f"{name}: tokenizer.json and the reference disagree on {piece[:80]!r}")
            if tokenizer.decode(ours, skip_special_tokens=False) != piece:
                sys.exit(f"{name}: decoding does not give back {piece[:80]!r}")
            count += len(theirs)
    return count


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("vocab", type=Path, help="vocab.txt (id<TAB>token, GPT-2 byte-level form)")
    parser.add_argument("out", type=Path, help="tokenizer.json to write")
    parser.add_argument("--check", type=Path, nargs="*", default=[], metavar="FILE",
                        help="UTF-8 text files to compare with the reference tokenizer")
    args = parser.parse_args(argv)
    tokenizer, encoding = build(args.vocab)
    cases = Path(__file__).resolve().parent.parent / "tests/fixtures/tokenizer_cases.json"
    # The cases with special-token spellings are text to the reference and special
    # tokens to Hugging Face's encoder (it matches added tokens first).
    specials = tuple(encoding._special_tokens)
    texts = [(f"{cases.name}[{i}]", case["text"]) for i, case in enumerate(json.loads(cases.read_text()))
             if not any(s in case["text"] for s in specials)]
    texts += [(str(path), path.read_text(encoding="utf-8")) for path in args.check]
    if args.check:
        print(f"{check(tokenizer, encoding, texts)} tokens agree with the reference tokenizer")
    temporary = args.out.with_name(args.out.name + ".tmp")
    tokenizer.save(str(temporary), pretty=False)
    os.replace(temporary, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {tokenizer.get_vocab_size()} tokens)")


if __name__ == "__main__":
    main()
