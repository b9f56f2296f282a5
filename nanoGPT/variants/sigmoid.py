"""sigmoid: one independent sigmoid per vocabulary entry, trained with binary cross-entropy
against multi-hot targets (the true next token plus the augmenter's extra positives).

The targets stay sparse. With y the multi-hot target and pos_weight w, the BCE of one logit is
    y=1: w * softplus(-z) = w * (softplus(z) - z)        y=0: softplus(z)
so the loss of one position, summed over the vocabulary, is
    sum_v softplus(z_v) + sum_{v in P} [(w - 1) * softplus(z_v) - w * z_v]
which needs the dense logits only once, plus a gather of the few positive ones.

The predictive distribution normalises the sigmoid scores of each row on its own:
p_v = sigma(z_v) / sum_u sigma(z_u).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanoGPT.config import ModelConfig
from nanoGPT.metrics import sigmoid_token_stats
from nanoGPT.variants.base import Stats, Variant


def sigmoid_bias_init(vocab_size: int) -> float:
    """The logit bias that makes every sigma(z) = 1/(V-1) at z = bias, i.e. about one expected
    positive per position. With a zero bias each sigmoid starts at 1/2, the initial loss is
    ~0.69 * V per position, and the first steps of training are spent pushing every logit down."""
    return -math.log(vocab_size - 1)


def positive_ids(
    targets: torch.Tensor, extra_positives: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(...) true ids and (..., K) extra ids padded with -1 -> (N, 1+K) ids and a mask that
    keeps each distinct non-negative id once per position. The true id is always kept."""
    ids = targets.reshape(-1, 1)
    if extra_positives is not None and extra_positives.size(-1) > 0:
        extra = extra_positives.reshape(ids.size(0), -1).to(ids.dtype)
        ids = torch.cat([ids, extra], dim=1)
    ids = ids.sort(dim=1).values  # duplicates become neighbours; the -1 padding comes first
    first = torch.ones_like(ids, dtype=torch.bool)
    first[:, 1:] = ids[:, 1:] != ids[:, :-1]
    return ids.clamp_min(0), first & (ids >= 0)


def _positive_terms(z_pos: torch.Tensor, is_positive: torch.Tensor, pos_weight: float):
    """The loss of the positives beyond softplus(z), (w - 1) * softplus(z) - w * z, and its
    derivative (w - 1) * sigma(z) - w, zero where the slot is padding or a duplicate."""
    if pos_weight == 1.0:  # skip the softplus; also no 0 * inf at saturated logits
        terms, slopes = -z_pos, torch.full_like(z_pos, -1.0)
    else:
        terms = (pos_weight - 1.0) * F.softplus(z_pos) - pos_weight * z_pos
        slopes = (pos_weight - 1.0) * torch.sigmoid(z_pos) - pos_weight
    zero = torch.zeros_like(z_pos)
    return torch.where(is_positive, terms, zero), torch.where(is_positive, slopes, zero)


class _SparseBCE(torch.autograd.Function):
    """sum_v softplus(z_v) + the positive terms, per position, with a hand-written backward:
    autograd would give the gather its own zero-filled V-sized gradient and add it to the
    softplus gradient (one more V-sized buffer, three more passes over it). Here the gradient
    is sigma(z) * g, with the few positive slopes scattered into it in place."""

    @staticmethod
    def forward(ctx, logits, ids, is_positive, pos_weight):
        z_pos = logits.gather(1, ids)
        pos_terms, slopes = _positive_terms(z_pos, is_positive, pos_weight)
        ctx.save_for_backward(logits, ids, slopes)
        return F.softplus(logits).sum(-1) + pos_terms.sum(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        logits, ids, slopes = ctx.saved_tensors
        grad = grad.unsqueeze(-1)
        grad_logits = torch.sigmoid(logits).mul_(grad)
        grad_logits.scatter_add_(1, ids, slopes * grad)  # duplicates' slopes are 0
        return grad_logits, None, None, None


def sparse_bce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    extra_positives: torch.Tensor | None,
    pos_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BCE of (..., V) logits against the multi-hot target {true} U extra_positives, summed over
    the vocabulary: one loss per position, shape (N,), N = targets.numel(). Also returns the
    number of distinct positives of each position, (N,).

    Equal to F.binary_cross_entropy_with_logits(logits, dense_target, pos_weight=w,
    reduction="none").sum(-1) without ever building the dense target. Extra ids must be < V."""
    ids, is_positive = positive_ids(targets, extra_positives)
    loss = _SparseBCE.apply(logits.reshape(-1, logits.size(-1)), ids, is_positive, pos_weight)
    return loss, is_positive.sum(-1)


def normalised_sigmoid_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log(sigma(z_v) / sum_u sigma(z_u)) over the last dim, in log space so that rows of very
    negative logits (every sigma ~ 0) still normalise."""
    log_sigma = F.logsigmoid(logits)
    return log_sigma - torch.logsumexp(log_sigma, dim=-1, keepdim=True)


class Sigmoid(Variant):
    name = "sigmoid"
    uses_extra_positives = True

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        # the weight is tied to the embedding; the bias is the head's own, and weight decay
        # would drag it from its -log(V-1) start back towards 0 (sigma = 1/2)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=True)
        self.lm_head.bias.no_weight_decay = True

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.lm_head.bias.fill_(sigmoid_bias_init(self.config.vocab_size))

    def loss(self, hidden, targets, extra_positives=None) -> tuple[torch.Tensor, Stats]:
        """Mean over positions of the BCE summed over the vocabulary."""
        per_position, num_positives = sparse_bce(
            self.logits(hidden), targets, extra_positives, self.config.pos_weight
        )
        return per_position.mean(), {"positives": num_positives.float().mean()}

    def log_probs(self, hidden, samples=None) -> torch.Tensor:
        return normalised_sigmoid_log_probs(self.logits(hidden))

    def evaluate(self, hidden, targets) -> tuple[torch.Tensor, Stats]:
        logits = self.logits(hidden)
        stats = sigmoid_token_stats(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        stats = {key: value.view(targets.shape) for key, value in stats.items()}
        return normalised_sigmoid_log_probs(logits), stats
