#!/usr/bin/env python3
"""Train a small OLMo-2 on the King James Bible, so the default fixture writes English.

The corpus is the King James Version as Debian's `bible-kjv-text` package ships it
(read through the `bible` program of `bible-kjv`: `apt-get install bible-kjv`; the
1611 translation's text is out of copyright, see /usr/share/doc/bible-kjv-text/copyright).
Verse references are dropped: one verse per line, a blank line between chapters.
Every 20th chapter (chapter index 10, 30, 50, ... counted through the whole book) is
held out; the rest is the training split. Both are encoded with the dolma2 tokenizer
(tools/reference_tokenizer.py over vocab.txt).

The model is transformers' Olmo2ForCausalLM with the full dolma2 vocabulary (100352
rows, tied input and output embeddings so that the checkpoint stays small). Of those
rows only the ~10k tokens the training text uses ever see a target, so training runs
a compact model over those tokens and treats the ~90k others as one group: each of
their rows is `b + r_j`, with `b` a learned vector and `r_j` fixed N(0, sigma^2)
noise, and the group's share of the softmax is `exp(b.h) * sum_j exp(r_j.h)`, whose
log is `b.h + log(count) + sigma^2 |h|^2 / 2` for Gaussian `r_j`. That is the full
softmax over all 100352 tokens at a tenth of the cost; the exported model holds every
row explicitly, and the losses reported at the end are computed by transformers on
that exported model with its plain full-vocabulary softmax.

Deterministic: the same seed, thread count and library versions give the same weights.

    python3 tools/train_tiny.py --out tests/fixtures/trained --log train.log
"""

import argparse
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import GenerationConfig, Olmo2Config, Olmo2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_tokenizer  # noqa: E402

DOLMA2_EOS = 100257
DOLMA2_PAD = 100277
VOCAB_SIZE = 100352
HELD_OUT_EVERY = 20
HELD_OUT_PHASE = 10
VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


def kjv_chapters():
    """The King James Bible as a list of chapters, each a list of verse texts."""
    try:
        dump = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, check=True).stdout
    except FileNotFoundError:
        sys.exit("the `bible` program is missing: apt-get install bible-kjv")
    chapters, last = [], None
    for line in dump.split("\n"):
        if not line:
            continue
        m = VERSE.match(line)
        if m is None:
            sys.exit(f"unexpected line from bible: {line!r}")
        key = (m.group(1), m.group(2))
        if key != last:
            chapters.append([])
            last = key
        chapters[-1].append(m.group(4))
    return chapters


def split_corpus(chapters):
    """(training text, held-out text): one verse a line, chapters apart by a blank line."""
    text = lambda chs: "\n".join("\n".join(verses) + "\n" for verses in chs)
    held = [c for i, c in enumerate(chapters) if i % HELD_OUT_EVERY == HELD_OUT_PHASE]
    train = [c for i, c in enumerate(chapters) if i % HELD_OUT_EVERY != HELD_OUT_PHASE]
    return text(train), text(held), len(train), len(held)


def make_config(args):
    return Olmo2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        intermediate_size=args.intermediate,
        max_position_embeddings=args.seq,
        rope_theta=args.rope_theta,
        rms_norm_eps=1e-6,
        eos_token_id=DOLMA2_EOS,
        pad_token_id=DOLMA2_PAD,
        bos_token_id=None,
        tie_word_embeddings=True,
        attention_bias=False,
    )


class CompactLM(torch.nn.Module):
    """The model over the used tokens, with every unused token as `b + r_j` (see the top)."""

    def __init__(self, config, used_count, unused_count, sigma):
        super().__init__()
        # Row `used_count` is `b`: the group's row in the output and any unused token's
        # input row (only held-out text feeds one).
        compact = Olmo2Config(**{**config.to_dict(), "vocab_size": used_count + 1,
                                  "pad_token_id": None, "eos_token_id": None})
        self.lm = Olmo2ForCausalLM(compact)
        self.log_unused = math.log(unused_count)
        self.half_var = 0.5 * sigma * sigma

    def loss(self, inputs, targets):
        """Mean cross-entropy of `targets` (compact ids) over the full vocabulary."""
        h = self.lm.model(input_ids=inputs).last_hidden_state.reshape(-1, self.lm.config.hidden_size)
        logits = h @ self.lm.model.embed_tokens.weight.T
        group = logits.shape[1] - 1
        spread = self.log_unused + self.half_var * (h * h).sum(-1)
        logits[:, group] += spread
        targets = targets.reshape(-1)
        # A target outside the used tokens (held-out text only) is one of the group.
        in_group = (targets == group).float() * self.log_unused
        return (F.cross_entropy(logits, targets, reduction="none") + in_group).mean()


def export(compact, config, used_ids, sigma, seed):
    """The full-vocabulary Olmo2ForCausalLM, weights rounded to f16 (as they are stored)."""
    model = Olmo2ForCausalLM(config).eval()
    state = {k: v for k, v in compact.lm.state_dict().items() if k != "lm_head.weight"}
    g = torch.Generator().manual_seed(seed + 1)
    compact_embed = state.pop("model.embed_tokens.weight")
    embed = torch.empty(VOCAB_SIZE, config.hidden_size).normal_(0.0, sigma, generator=g)
    embed += compact_embed[len(used_ids)]
    embed[torch.as_tensor(used_ids)] = compact_embed[:len(used_ids)]
    state["model.embed_tokens.weight"] = embed
    state = {k: v.detach().half().float() for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"export: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model


@torch.no_grad()
def full_loss(model, tokens, seq, max_windows=None):
    """Mean next-token cross-entropy over non-overlapping windows of `seq` tokens."""
    total, count = 0.0, 0
    windows = (len(tokens) - 1) // seq
    if max_windows is not None:
        windows = min(windows, max_windows)
    for w in range(windows):
        chunk = torch.as_tensor(tokens[w * seq:(w + 1) * seq + 1])[None]
        logits = model(input_ids=chunk[:, :-1]).logits.float()
        total += F.cross_entropy(logits[0], chunk[0, 1:], reduction="sum").item()
        count += seq
    return total / count, count


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the checkpoint")
    p.add_argument("--vocab", type=Path, default=Path("tests/fixtures/tiny/vocab.txt"))
    p.add_argument("--log", type=Path, help="also append the progress lines to this file")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: the weights do not depend on the core count)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=384)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--seq", type=int, default=256, help="training window = max_position_embeddings")
    p.add_argument("--batch", type=int, default=8, help="windows per step")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--sigma", type=float, default=0.02, help="std of the unused tokens' rows")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--log-every", type=int, default=10)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    log_file = open(args.log, "a") if args.log else None

    def log(line):
        stamped = f"[{time.time() - started:7.1f}s] {line}"
        print(stamped, flush=True)
        if log_file:
            log_file.write(stamped + "\n")
            log_file.flush()

    encoding = reference_tokenizer.load_encoding(args.vocab)
    train_text, held_text, n_train, n_held = split_corpus(kjv_chapters())
    train_ids = np.asarray(encoding.encode_ordinary(train_text), dtype=np.int64)
    held_ids = np.asarray(encoding.encode_ordinary(held_text), dtype=np.int64)
    used_ids = np.unique(train_ids)
    to_compact = np.full(VOCAB_SIZE, len(used_ids), dtype=np.int64)  # unused -> the group
    to_compact[used_ids] = np.arange(len(used_ids))
    log(f"corpus: {n_train} training chapters, {len(train_ids)} tokens ({len(used_ids)} distinct); "
        f"{n_held} held-out chapters, {len(held_ids)} tokens")

    config = make_config(args)
    compact = CompactLM(config, len(used_ids), VOCAB_SIZE - len(used_ids), args.sigma)
    decay = [p for n, p in compact.named_parameters() if p.ndim == 2 and "embed" not in n]
    other = [p for n, p in compact.named_parameters() if not (p.ndim == 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    schedule = lambda s: min(1.0, (s + 1) / args.warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))
    rng = np.random.default_rng(args.seed)
    train_compact = torch.as_tensor(to_compact[train_ids])
    held_compact = torch.as_tensor(to_compact[held_ids])
    span = args.seq + 1
    eval_windows = torch.stack([held_compact[i * span:(i + 1) * span] for i in range(16)])

    recent = []
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = args.lr * schedule(step)
        starts = rng.integers(0, len(train_compact) - span, size=args.batch)
        batch = torch.stack([train_compact[s:s + span] for s in starts])
        compact.train()
        loss = compact.loss(batch[:, :-1], batch[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(compact.parameters(), 1.0)
        opt.step()
        recent = (recent + [loss.item()])[-50:]
        if step % args.log_every == 0 or step == args.steps - 1:
            log(f"step {step:5d} loss {loss.item():.4f} lr {opt.param_groups[0]['lr']:.2e}")
        if (step + 1) % args.eval_every == 0 or step == args.steps - 1:
            compact.eval()
            with torch.no_grad():
                held = compact.loss(eval_windows[:, :-1], eval_windows[:, 1:]).item()
            log(f"step {step:5d} held-out loss (16 windows) {held:.4f}; "
                f"training loss, mean of the last {len(recent)} steps {sum(recent) / len(recent):.4f}")
    train_seconds = time.time() - started

    model = export(compact, config, used_ids, args.sigma, args.seed)
    held_loss, held_tokens = full_loss(model, held_ids, args.seq)
    train_loss, train_tokens = full_loss(model, train_ids, args.seq, max_windows=64)
    log(f"exported model, full softmax: held-out loss {held_loss:.4f} (perplexity "
        f"{math.exp(held_loss):.2f}) over {held_tokens} tokens; training loss {train_loss:.4f} "
        f"(perplexity {math.exp(train_loss):.2f}) over its first {train_tokens} tokens")

    args.out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(args.out, safe_serialization=True)
    GenerationConfig(eos_token_id=DOLMA2_EOS, pad_token_id=DOLMA2_PAD).save_pretrained(args.out)
    with open(args.out / "heldout.txt", "w", newline="") as f:
        f.write(held_text)
    report = {
        "corpus": "King James Version, Debian bible-kjv-text (public domain)",
        "training_chapters": n_train, "training_tokens": int(len(train_ids)),
        "held_out_chapters": n_held, "held_out_tokens": int(len(held_ids)),
        "distinct_training_tokens": int(len(used_ids)),
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                      if k not in ("out", "log", "vocab")},
        "tokens_seen": args.steps * args.batch * args.seq,
        "train_seconds": round(train_seconds, 1),
        "held_out_loss": round(held_loss, 4), "held_out_perplexity": round(math.exp(held_loss), 3),
        "training_loss": round(train_loss, 4), "training_perplexity": round(math.exp(train_loss), 3),
        "torch": torch.__version__,
    }
    with open(args.out / "training.json", "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    log(f"wrote {args.out} ({time.time() - started:.0f} s in all, {train_seconds:.0f} s training)")


if __name__ == "__main__":
    main()
