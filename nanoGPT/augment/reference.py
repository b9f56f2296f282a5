"""The window perplexity of one candidate written out directly, one forward pass per candidate:
the definition the batched filter (nanoGPT/augment/augmenter.py) is tested and timed against."""

from __future__ import annotations

import math

import torch

from nanoGPT.augment.teachers import Teacher


def reference_window_perplexity(
    teacher: Teacher, row: list[int], position: int, candidate: int, window: int
) -> float:
    """One candidate, one forward pass, plain Python indices: the definition in the module
    docstring, written out directly. `row` holds the T+1 tokens x[b] + [y[b, -1]]; the
    candidate replaces row[position + 1]. For tests and bench.py, never for training."""
    p = position + 1
    substituted = list(row)
    substituted[p] = candidate
    length = min(window, len(row))
    lo = min(max(p - window // 2, 0), len(row) - length)
    hi = min(p + window - window // 2, len(row))
    idx = torch.tensor([substituted[lo : lo + length]], device=teacher.device)
    log_probs = teacher.log_probs(idx)[0]  # (L, V): output i predicts window token i + 1
    nll = [-log_probs[j - lo - 1, substituted[j]].item() for j in range(p, hi)]
    return math.exp(sum(nll) / len(nll))
