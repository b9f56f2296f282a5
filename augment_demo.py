"""Show what the augmenter does to one sentence: the teacher's candidates for one target token,
their probabilities and window perplexities, which ones the filter keeps, and the sentences
they make, through the augmenter's object API (DataAugmenter.augment and .substitutions).

    python augment_demo.py --teacher=gpt2 --text="The boy went to the [park] to play."
    python augment_demo.py --teacher=ckpt:out/baseline-shakespeare --augment_filter=prob
    python augment_demo.py --teacher=ckpt:out/baseline-shakespeare-char --text="ROMEO: my [l]ord"

The token in [brackets] (its first token) is the target; what precedes it is the context and
what follows it is scored by the perplexity filter. Without brackets the target is the last
token. The tokenizer is the teacher's: GPT-2 BPE for a Hugging Face teacher, the data of its
training run for ckpt:<out_dir> (or --data_dir).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

import numpy as np
import torch

from nanoGPT.augment.augmenter import DataAugmenter
from nanoGPT.augment.settings import CKPT_PREFIX, AugmentSettings
from nanoGPT.augment.teachers import checkpoint_file, load_teacher
from nanoGPT.checkpoint import checkpoint_tokenizer, load_checkpoint
from nanoGPT.config import TrainConfig, apply_config
from nanoGPT.errors import UserError, cli
from nanoGPT.runtime import resolve_device
from nanoGPT.tokenizer import Tokenizer, gpt2_tokenizer, load_tokenizer


@dataclass
class DemoConfig(TrainConfig):
    """TrainConfig's augment_* keys (one definition), plus the sentence to show."""

    text: str = "The boy went to the [park] to play with his friends."
    augment_k: int = 10  # a table to read, not a training run's 50
    data_dir: str = ""  # whose tokenizer; "" = the teacher's own


def demo_tokenizer(cfg: DemoConfig) -> Tokenizer:
    if cfg.data_dir:
        return load_tokenizer(cfg.data_dir)
    if cfg.teacher.startswith(CKPT_PREFIX):
        path = checkpoint_file(cfg.teacher[len(CKPT_PREFIX) :])
        return checkpoint_tokenizer(load_checkpoint(path))
    return gpt2_tokenizer()


def encode_marked(tokenizer: Tokenizer, text: str) -> tuple[list[int], int]:
    """Token ids of `text` without its brackets, and the index of the target: the token that
    holds the first bracketed character (" park" in GPT-2 BPE, "p" in characters)."""
    marked = re.search(r"\[(.+?)\]", text)
    if marked is None:
        ids = tokenizer.encode(text)
        return ids, len(ids) - 1
    before = text[: marked.start()]
    ids = tokenizer.encode(before + marked.group(1) + text[marked.end() :])
    for end in range(1, len(ids) + 1):
        if len(tokenizer.decode(ids[:end])) > len(before):
            return ids, end - 1
    return ids, len(ids) - 1


def run_demo(cfg: DemoConfig) -> list[dict]:
    device = resolve_device(cfg.device)
    settings = AugmentSettings.from_config(cfg)
    tokenizer = demo_tokenizer(cfg)
    teacher = load_teacher(settings.teacher, device, tokenizer, cfg.data_dir or "the data")
    ids, target = encode_marked(tokenizer, cfg.text)
    if target < 1 or target >= len(ids):
        raise UserError("the text needs at least one token of context before the target")
    if len(ids) - 1 > teacher.block_size:
        raise UserError(
            f"the text is {len(ids)} tokens, more than the teacher's context of {teacher.block_size}"
        )
    row = torch.tensor([ids], device=device)
    augmenter = DataAugmenter(teacher, settings, cfg.seed, tokenizer=tokenizer)
    proposal = augmenter.propose(row[:, :-1], row[:, 1:], np.array([[target - 1]]), score_windows=True)
    show = lambda token_ids: repr(tokenizer.decode(token_ids))
    print(f"teacher {teacher.name}, filter {settings.filter}, top {settings.k}")
    print(
        f"context {show(ids[:target])} -> true next token {show(ids[target : target + 1])}, "
        f"then {show(ids[target + 1 :])}"
    )
    print(f"{'rank':>4}  {'candidate':<16} {'prob':>8} {'window ppl':>11}  kept")
    rows = []
    for rank in range(settings.k):
        candidate = int(proposal.ids[0, 0, rank])
        prob = float(proposal.log_probs[0, 0, rank].exp())
        ppl = float(proposal.perplexity[0, 0, rank])
        kept = bool(proposal.keep[0, 0, rank])
        true = "  (true)" if candidate == ids[target] else ""
        print(
            f"{rank + 1:>4}  {show([candidate]):<16} {prob:>8.4f} {ppl:>11.2f}  "
            f"{'yes' if kept else 'no'}{true}"
        )
        rows.append(
            {
                "id": candidate,
                "token": tokenizer.decode([candidate]),
                "prob": prob,
                "window_ppl": ppl,
                "kept": kept,
            }
        )
    kept_tokens = [show([r["id"]]) for r in rows if r["kept"]]
    print(f"kept {len(kept_tokens)} of {settings.k}: {', '.join(kept_tokens)}")
    # the object API: a (1, V) multi-hot target for token `target`, and the sentences it makes
    multi_hot, index = augmenter.augment(row, target_indices=[target], do_filter=True)
    for sentence in augmenter.substitutions(row, index, multi_hot)[0]:
        print(f"  {sentence!r}")
    return rows


@cli
def main(argv: list[str] | None = None) -> list[dict]:
    return run_demo(apply_config(DemoConfig(), sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
