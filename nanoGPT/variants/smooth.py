"""smooth: the baseline head and softmax, trained with label-smoothed cross-entropy.

With smoothing eps the target is (1 - eps) on the true token plus eps / V spread over the
whole vocabulary (PyTorch's definition), which discourages over-confident logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nanoGPT.variants.base import Stats
from nanoGPT.variants.baseline import Baseline


class Smooth(Baseline):
    name = "smooth"

    def loss(self, hidden, targets, extra_positives=None) -> tuple[torch.Tensor, Stats]:
        logits = self.logits(hidden)
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1),
            label_smoothing=self.config.label_smoothing,
        )
        return loss, {}
