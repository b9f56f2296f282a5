"""baseline: linear head tied to the token embedding, softmax, cross-entropy."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nanoGPT.variants.base import Stats, Variant


class Baseline(Variant):
    name = "baseline"

    def loss(self, hidden, targets, extra_positives=None) -> tuple[torch.Tensor, Stats]:
        logits = self.logits(hidden)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1)), {}

    def log_probs(self, hidden, samples=None) -> torch.Tensor:
        return F.log_softmax(self.logits(hidden), dim=-1)
