"""distill: knowledge distillation from the augmenter's teacher, the standard way to use a
teacher and the bar the multi-hot variants must clear. The baseline's tied head and softmax,
trained with the cross-entropy against the target distribution

    alpha * onehot(true) + (1 - alpha) * q,    q_i = p_i^(1/tau) / sum_j p_j^(1/tau)

over the teacher's candidates i at each position (its top-k, after the augmenter's filter;
alpha = distill_alpha, tau = distill_temperature). The targets stay sparse: the augmenter hands
the candidate ids with their teacher log-probabilities (ExtraTargets), and the loss is
`soft_target_cross_entropy` over 1 + k ids. A position where the teacher kept no candidate (the
prob or perplexity filter dropped them all) trains on the true token alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nanoGPT.config import ModelConfig
from nanoGPT.errors import UserError
from nanoGPT.losses import soft_target_cross_entropy
from nanoGPT.variants.base import ExtraTargets, Stats, Variant


def distill_targets(
    targets: torch.Tensor, extra: ExtraTargets, alpha: float, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(...) true ids and the teacher's (..., K) candidates -> (N, 1 + K) ids (-1 padding) and
    their (N, 1 + K) target weights, which sum to 1 per position."""
    ids = extra.ids.reshape(targets.numel(), -1)
    is_candidate = ids >= 0
    scaled = torch.where(is_candidate, extra.log_probs.reshape(ids.shape).float() / temperature, -torch.inf)
    # a row without candidates would be all -inf: softmax gives NaN there, so shift it to 0s
    has_teacher = is_candidate.any(-1, keepdim=True)
    teacher = F.softmax(torch.where(has_teacher, scaled, torch.zeros_like(scaled)), dim=-1)
    teacher = torch.where(is_candidate, teacher, torch.zeros_like(teacher))
    true_weight = torch.where(has_teacher, alpha, 1.0)
    weights = torch.cat([true_weight, (1.0 - true_weight) * teacher], dim=-1)
    return torch.cat([targets.reshape(-1, 1), ids], dim=-1), weights


class Distill(Variant):
    name = "distill"
    uses_extra_positives = True
    uses_teacher_probs = True

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        if not 0.0 <= config.distill_alpha <= 1.0:
            raise UserError(f"distill_alpha must be in [0, 1], got {config.distill_alpha}")
        if not config.distill_temperature > 0:
            raise UserError(f"distill_temperature must be > 0, got {config.distill_temperature}")

    def loss(self, hidden, targets, extra_positives=None) -> tuple[torch.Tensor, Stats]:
        if not isinstance(extra_positives, ExtraTargets):
            raise UserError(
                "variant 'distill' trains on the teacher's probabilities: it needs augment=True "
                "(ExtraTargets from the augmenter), not bare candidate ids"
            )
        return super().loss(hidden, targets, extra_positives)

    def logits_loss_sum(self, logits, targets, extra) -> tuple[torch.Tensor, Stats]:
        ids, weights = distill_targets(
            targets, extra, self.config.distill_alpha, self.config.distill_temperature
        )
        per_position = soft_target_cross_entropy(logits, ids, weights)
        return per_position.sum(), {"teacher_weight": weights[:, 1:].sum()}

    def log_probs(self, hidden, samples=None) -> torch.Tensor:
        return F.log_softmax(self.logits(hidden), dim=-1)
