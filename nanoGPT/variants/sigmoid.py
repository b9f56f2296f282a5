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
from nanoGPT.losses import sparse_bce
from nanoGPT.metrics import sigmoid_token_stats
from nanoGPT.variants.base import Stats, Variant


def sigmoid_bias_init(vocab_size: int) -> float:
    """The logit bias that makes every sigma(z) = 1/(V-1) at z = bias, i.e. about one expected
    positive per position. With a zero bias each sigmoid starts at 1/2, the initial loss is
    ~0.69 * V per position, and the first steps of training are spent pushing every logit down."""
    return -math.log(vocab_size - 1)


def normalised_sigmoid_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log(sigma(z_v) / sum_u sigma(z_u)) over the last dim, in log space so that rows of very
    negative logits (every sigma ~ 0) still normalise."""
    log_sigma = F.logsigmoid(logits)
    return log_sigma - torch.logsumexp(log_sigma, dim=-1, keepdim=True)


def bce_loss_sum(
    logits: torch.Tensor, targets: torch.Tensor, extra_positives: torch.Tensor | None, pos_weight: float
) -> tuple[torch.Tensor, Stats]:
    """The sparse multi-hot BCE summed over positions, and the number of positives summed."""
    per_position, num_positives = sparse_bce(logits, targets, extra_positives, pos_weight)
    return per_position.sum(), {"positives": num_positives.float().sum()}


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

    def logits_loss_sum(self, logits, targets, extra) -> tuple[torch.Tensor, Stats]:
        """The BCE summed over the vocabulary (the loss is its mean over positions)."""
        return bce_loss_sum(logits, targets, extra, self.config.pos_weight)

    def log_probs(self, hidden, samples=None) -> torch.Tensor:
        return normalised_sigmoid_log_probs(self.logits(hidden))

    def evaluate(self, hidden, targets) -> tuple[torch.Tensor, Stats]:
        logits = self.logits(hidden)
        stats = sigmoid_token_stats(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        stats = {key: value.view(targets.shape) for key, value in stats.items()}
        return normalised_sigmoid_log_probs(logits), stats
