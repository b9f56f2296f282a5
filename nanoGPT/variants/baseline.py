"""baseline: linear head tied to the token embedding, softmax, cross-entropy.

The loss is F.cross_entropy's, computed by `softmax_cross_entropy`, which `smooth` and
`bayes` share, so that the variants differ in their objective and not in their kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nanoGPT.variants.base import Stats, Variant


class _SoftmaxCrossEntropy(torch.autograd.Function):
    """logsumexp(z) - target_weight * z_y per position, with a hand-written backward: the
    gradient is softmax(z) * g with the target's slope scattered into it in place, one
    (N, V) buffer, where F.cross_entropy keeps log_softmax(z) and then builds a zero-filled
    (N, V) gradient for the target and another for the log-softmax."""

    @staticmethod
    def forward(ctx, logits, targets, target_weight):
        log_normaliser = torch.logsumexp(logits, dim=-1)
        ctx.save_for_backward(logits, targets, log_normaliser)
        ctx.target_weight = target_weight
        return log_normaliser - target_weight * logits.gather(1, targets[:, None])[:, 0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        logits, targets, log_normaliser = ctx.saved_tensors
        grad = grad.unsqueeze(-1)
        grad_logits = torch.sub(logits, log_normaliser[:, None]).exp_().mul_(grad)
        grad_logits.scatter_add_(1, targets[:, None], -ctx.target_weight * grad)
        return grad_logits, None, None


def softmax_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, target_weight: float = 1.0
) -> torch.Tensor:
    """(..., V) logits and (...) target ids -> (N,) logsumexp(z) - target_weight * z_target,
    N = targets.numel(). With target_weight 1 that is the cross-entropy of each position,
    F.cross_entropy(logits, targets, reduction="none")."""
    return _SoftmaxCrossEntropy.apply(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), target_weight)


class Baseline(Variant):
    name = "baseline"

    def loss(self, hidden, targets, extra_positives=None) -> tuple[torch.Tensor, Stats]:
        return softmax_cross_entropy(self.logits(hidden), targets).mean(), {}

    def log_probs(self, hidden, samples=None) -> torch.Tensor:
        return F.log_softmax(self.logits(hidden), dim=-1)
