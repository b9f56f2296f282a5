"""smooth: the baseline head and softmax, trained with label-smoothed cross-entropy.

With smoothing eps the target is (1 - eps) on the true token plus eps / V spread over the
whole vocabulary (PyTorch's definition), which discourages over-confident logits. Per position

    loss = logsumexp(z) - (1 - eps) * z_true - eps * mean_v(z_v),

and since the head is linear without a bias, mean_v(z_v) = h . mean_v(W_v), whose mean over
positions is (mean_n h_n) . mean_v(W_v): the smoothing term costs one product of n_embd-sized
vectors per batch rather than another pass over the (N, V) logits, and stays outside the
chunks of positions the rest of the loss is computed in.
"""

from __future__ import annotations

import torch

from nanoGPT.losses import softmax_cross_entropy
from nanoGPT.variants.base import Stats
from nanoGPT.variants.baseline import Baseline


class Smooth(Baseline):
    name = "smooth"

    def loss(self, hidden, targets, extra_positives=None) -> tuple[torch.Tensor, Stats]:
        data, stats = super().loss(hidden, targets, extra_positives)
        # the mean over positions of mean_v(z_v) is (mean hidden) . (mean row of W): linear in
        # the hidden states, so it is computed once, outside the chunks of positions
        mean_hidden = hidden.reshape(-1, hidden.size(-1)).mean(0)
        mean_logit = torch.dot(mean_hidden.float(), self.lm_head.weight.mean(0).float())
        return data - self.config.label_smoothing * mean_logit, stats

    def logits_loss_sum(self, logits, targets, extra) -> tuple[torch.Tensor, Stats]:
        eps = self.config.label_smoothing
        return softmax_cross_entropy(logits, targets, 1.0 - eps).sum(), {}
