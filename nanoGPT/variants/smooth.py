"""smooth: the baseline head and softmax, trained with label-smoothed cross-entropy.

With smoothing eps the target is (1 - eps) on the true token plus eps / V spread over the
whole vocabulary (PyTorch's definition), which discourages over-confident logits. Per position

    loss = logsumexp(z) - (1 - eps) * z_true - eps * mean_v(z_v),

and since the head is linear without a bias, mean_v(z_v) = h . mean_v(W_v): the smoothing
term costs one n_embd-sized vector rather than another pass over the (N, V) logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nanoGPT.losses import softmax_cross_entropy
from nanoGPT.variants.base import Stats
from nanoGPT.variants.baseline import Baseline


class Smooth(Baseline):
    name = "smooth"

    def head_tensors(self) -> tuple[torch.Tensor, ...]:
        weight = self.lm_head.weight
        # the smoothing term's mean row once per step, not once per chunk of positions
        return weight, weight.mean(0, keepdim=True)

    def position_loss_sum(self, hidden, targets, extra, head) -> tuple[torch.Tensor, Stats]:
        weight, mean_row = head
        eps = self.config.label_smoothing
        per_position = softmax_cross_entropy(self.head_logits(hidden, (weight,)), targets, 1.0 - eps)
        mean_logit = F.linear(hidden, mean_row).float()
        return (per_position - eps * mean_logit.reshape(-1)).sum(), {}
