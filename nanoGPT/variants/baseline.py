"""baseline: linear head tied to the token embedding, softmax, cross-entropy.

The loss is F.cross_entropy's, computed by `softmax_cross_entropy` (nanoGPT/losses.py), which `smooth` and
`bayes` share, so that the variants differ in their objective and not in their kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nanoGPT.losses import softmax_cross_entropy
from nanoGPT.variants.base import Stats, Variant


class Baseline(Variant):
    name = "baseline"

    def logits_loss_sum(self, logits, targets, extra) -> tuple[torch.Tensor, Stats]:
        return softmax_cross_entropy(logits, targets).sum(), {}

    def log_probs(self, hidden, samples=None) -> torch.Tensor:
        return F.log_softmax(self.logits(hidden), dim=-1)
