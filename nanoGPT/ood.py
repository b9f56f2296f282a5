"""Out-of-distribution evaluation: can a model's own uncertainty tell held-out text of its
training domain from text of another domain?

The shifted set needs no network: the Python documentation that ships with the standard
library (`pydoc_data.topics`: the language reference's topics, ~465k characters of technical
English), taken in sorted topic order, so the same interpreter always gives the same text.
It is tokenised with the run's tokenizer. Characters the tokenizer lacks are counted: a
character vocabulary drops them; SentencePiece maps them to byte pieces; GPT-2's byte-level
BPE has none.

Each window (block_size tokens) gets one score per statistic, the mean over its tokens, from
the variant's own `evaluate()` (so the Bayesian heads' S-sample predictive and mutual
information, the sigmoid heads' set sizes). `ood_metrics` returns, per score, the AUROC of
telling in-distribution windows from shifted ones, oriented so that a higher score means
"shifted" (1 - max probability, entropy, mutual information, -set size, 1 - max sigmoid): 0.5
is chance, and an AUROC below 0.5 means the score moves the other way.

The comparison calls `ood_report(model, data, tokenizer, split, num_batches, seed)`.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from nanoGPT.data import TokenData, spread_window_starts
from nanoGPT.errors import UserError
from nanoGPT.metrics import entropy, score_chunk_rows
from nanoGPT.model import GPT
from nanoGPT.runtime import seeded
from nanoGPT.tokenizer import Tokenizer

# (log_probs (N, V), targets (N,), window index (N,), per-token extras) of one scored chunk
OnScored = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]], None]
SHIFTED_SOURCE = "pydoc_data.topics (the Python documentation of the standard library)"
SHIFTED_MAX_CHARS = 200_000
# score name -> (per-token statistic, sign): higher sign * statistic means "shifted"
OOD_SCORES = {
    "max_prob": ("max_prob", -1.0),
    "entropy": ("predictive_entropy", 1.0),
    "mutual_information": ("mutual_information", 1.0),
    "set_size": ("set_size", -1.0),
    "max_sigma": ("max_sigma", -1.0),
}


@dataclass
class ShiftedText:
    """The shifted text as token ids, and what the tokenizer could not represent."""

    ids: np.ndarray  # int64 token ids
    characters: int  # characters of the source text
    unknown_characters: int  # of them, characters the tokenizer lacks (dropped or mapped)
    unknown_kinds: dict[str, int]  # each such character -> how often it occurs
    handling: str  # what happened to them: dropped | byte pieces | none
    sha256: str  # of the source text, to tell two environments' texts apart

    @property
    def unknown_fraction(self) -> float:
        return self.unknown_characters / max(1, self.characters)

    def summary(self) -> dict:
        return {
            "source": SHIFTED_SOURCE,
            "characters": self.characters,
            "tokens": int(len(self.ids)),
            "unknown_characters": self.unknown_characters,
            "unknown_fraction": self.unknown_fraction,
            "unknown_handling": self.handling,
            "sha256": self.sha256,
        }


def shifted_source_text(max_chars: int = SHIFTED_MAX_CHARS) -> str:
    """The first max_chars characters of the standard library's documentation topics, joined
    in sorted order: deterministic for a given Python version, no network."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip the documentation from the stdlib
        raise UserError(
            "the shifted text comes from the standard library's pydoc_data, which this Python "
            "lacks; install the full standard library"
        ) from None
    return "\n\n".join(topics[key] for key in sorted(topics))[:max_chars]


def _unrepresentable(tokenizer: Tokenizer, character: str) -> bool:
    if tokenizer.kind == "char":
        return character not in tokenizer.stoi
    if tokenizer.kind == "sentencepiece":
        processor = tokenizer.processor
        return any(processor.is_byte(i) or processor.is_unknown(i) for i in processor.encode(character))
    return False  # GPT-2's byte-level BPE encodes every character


def encode_shifted(tokenizer: Tokenizer, text: str) -> ShiftedText:
    """Tokenise `text`, counting the characters the tokenizer lacks; a character vocabulary
    drops them (its encode() would refuse them), SentencePiece's byte fallback maps them."""
    counts = collections.Counter(text)
    unknown = {ch: n for ch, n in sorted(counts.items()) if _unrepresentable(tokenizer, ch)}
    if tokenizer.kind == "char":
        handling = "dropped"
        text_kept = "".join(ch for ch in text if ch not in unknown)
    else:
        handling = "byte pieces" if tokenizer.kind == "sentencepiece" else "none"
        text_kept = text
    ids = np.asarray(tokenizer.encode(text_kept), dtype=np.int64)
    return ShiftedText(
        ids=ids,
        characters=len(text),
        unknown_characters=sum(unknown.values()),
        unknown_kinds=unknown,
        handling=handling,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
    )


def load_shifted(tokenizer: Tokenizer, max_chars: int = SHIFTED_MAX_CHARS) -> ShiftedText:
    return encode_shifted(tokenizer, shifted_source_text(max_chars))


def spread_windows(ids: np.ndarray, block_size: int, num_windows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of up to num_windows non-overlapping windows spread evenly over `ids`, the way
    TokenData.eval_batches spreads the held-out windows."""
    if len(ids) < block_size + 1:
        raise UserError(
            f"the shifted text has {len(ids)} tokens, fewer than block_size + 1 = {block_size + 1}"
        )
    starts = spread_window_starts(len(ids), block_size, num_windows)
    rows = torch.from_numpy(np.stack([ids[s : s + block_size + 1] for s in starts]))
    return rows[:, :-1], rows[:, 1:]


def held_out_windows(data: TokenData, split: str, num_batches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of the evaluation windows of `split`: the windows `evaluate` scores."""
    batches = [data.batch_at(split, starts) for starts in data.eval_batches(split, num_batches)]
    return torch.cat([b.x for b in batches]), torch.cat([b.y for b in batches])


@torch.no_grad()
def window_scores(
    model: GPT,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 32,
    autocast: contextlib.AbstractContextManager | None = None,
    on_scored: OnScored | None = None,
) -> dict[str, torch.Tensor]:
    """Per-window means (num_windows,) of: nll, max_prob, predictive_entropy, and whatever
    per-token statistics the variant's evaluate() reports (mutual_information, set_size, ...),
    plus max_sigma (the largest sigmoid score) for the sigmoid heads. `on_scored(log_probs,
    targets, window, extras)` also sees every scored chunk (window: each token's window index),
    so the held-out metrics can be summed in the same pass."""
    variant = model.variant
    device = next(model.parameters()).device
    chunk_rows = score_chunk_rows(model.config.vocab_size)
    per_window: dict[str, list[torch.Tensor]] = collections.defaultdict(list)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        with autocast or contextlib.nullcontext():
            hidden = model.hidden_states(xb)
        hidden, targets = hidden.flatten(0, 1), yb.flatten()
        window = i + torch.arange(targets.numel(), device=targets.device) // yb.size(1)
        token_stats: dict[str, list[torch.Tensor]] = collections.defaultdict(list)
        for j in range(0, targets.numel(), chunk_rows):
            rows = slice(j, j + chunk_rows)
            log_probs, extras = variant.evaluate(hidden[rows], targets[rows])
            log_probs = log_probs.float()
            if on_scored is not None:
                on_scored(log_probs, targets[rows], window[rows], extras)
            stats = {
                "nll": -log_probs.gather(-1, targets[rows, None])[:, 0],
                "max_prob": log_probs.max(-1).values.exp(),
                "predictive_entropy": entropy(log_probs),
                **extras,
            }
            if "set_size" in extras:  # a sigmoid head: its most confident sigmoid
                stats["max_sigma"] = torch.sigmoid(variant.logits(hidden[rows]).max(-1).values)
            for name, values in stats.items():
                token_stats[name].append(values.float().reshape(-1))
        for name, values in token_stats.items():
            per_window[name].append(torch.cat(values).view(len(xb), -1).mean(1).cpu())
    return {name: torch.cat(values) for name, values in per_window.items()}


def auroc(scores_in: torch.Tensor | np.ndarray, scores_out: torch.Tensor | np.ndarray) -> float:
    """P(score_out > score_in) + P(tie) / 2 over all pairs: the area under the ROC curve of
    flagging "out" by a high score (the Mann-Whitney U statistic over n_in * n_out), from
    ranks, with tied scores given their average rank."""
    scores_in = np.asarray(scores_in, dtype=np.float64).reshape(-1)
    scores_out = np.asarray(scores_out, dtype=np.float64).reshape(-1)
    if len(scores_in) == 0 or len(scores_out) == 0:
        raise ValueError("auroc needs at least one score on each side")
    combined = np.concatenate([scores_in, scores_out])
    _, inverse, counts = np.unique(combined, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1  # 1-based rank of each distinct value's first copy
    ranks = (first_rank + (counts - 1) / 2)[inverse]
    n_in, n_out = len(scores_in), len(scores_out)
    rank_sum_out = ranks[n_in:].sum()
    return float((rank_sum_out - n_out * (n_out + 1) / 2) / (n_in * n_out))


def ood_metrics(
    model: GPT,
    in_windows: tuple[torch.Tensor, torch.Tensor],
    shifted_windows: tuple[torch.Tensor, torch.Tensor],
    seed: int = 0,
    batch_size: int = 32,
    autocast: contextlib.AbstractContextManager | None = None,
    on_held_out: OnScored | None = None,
) -> dict[str, float]:
    """Flat dict: in_<stat> and shifted_<stat> (the mean over windows of each per-window score:
    nll, max_prob, predictive_entropy, mutual_information...), and ood_auroc_<score> for every
    score of OOD_SCORES the variant has, oriented so that higher = shifted. Bayesian sampling
    runs under a forked RNG seeded with `seed`: the same numbers every call."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with seeded(seed, device):
        scores_in = window_scores(model, *in_windows, batch_size, autocast, on_held_out)
        scores_out = window_scores(model, *shifted_windows, batch_size, autocast)
    model.train(was_training)
    results = {"in_windows": float(len(in_windows[0])), "shifted_windows": float(len(shifted_windows[0]))}
    for name in scores_in:
        results[f"in_{name}"] = scores_in[name].mean().item()
        results[f"shifted_{name}"] = scores_out[name].mean().item()
    for score, (stat, sign) in OOD_SCORES.items():
        if stat in scores_in:
            results[f"ood_auroc_{score}"] = auroc(sign * scores_in[stat], sign * scores_out[stat])
    return results


def ood_report(
    model: GPT,
    data: TokenData,
    tokenizer: Tokenizer,
    split: str = "val",
    num_batches: int = 50,
    seed: int = 0,
    autocast: contextlib.AbstractContextManager | None = None,
    shifted: ShiftedText | None = None,
    on_held_out: OnScored | None = None,
) -> dict[str, float]:
    """ood_metrics on the held-out evaluation windows of `split` (num_batches x batch_size)
    against as many windows of the shifted text, plus the shifted text's summary under
    shifted_* keys (tokens, unknown characters and their fraction). Pass `shifted` (from
    load_shifted) to tokenise the text once for several models, and `on_held_out` to sum the
    held-out metrics in the same pass (see window_scores)."""
    shifted = shifted or load_shifted(tokenizer)
    in_windows = held_out_windows(data, split, num_batches)
    out_windows = spread_windows(shifted.ids, data.block_size, len(in_windows[0]))
    results = ood_metrics(model, in_windows, out_windows, seed, data.batch_size, autocast, on_held_out)
    summary = shifted.summary()
    results.update(
        shifted_tokens=float(summary["tokens"]),
        shifted_unknown_characters=float(summary["unknown_characters"]),
        shifted_unknown_fraction=summary["unknown_fraction"],
    )
    return results
