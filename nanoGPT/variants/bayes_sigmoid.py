"""bayes_sigmoid: the variational head of `bayes` trained with the sparse multi-hot BCE of
`sigmoid`: loss = E_q[BCE] + kl_weight * KL(q || p) / N. The predictive distribution is the
mean over S weight samples of the per-row normalised sigmoid scores."""

from __future__ import annotations

import pyro
import torch

from nanoGPT.losses import sparse_bce
from nanoGPT.metrics import sigmoid_token_stats
from nanoGPT.variants.base import Stats
from nanoGPT.variants.bayes import Bayes
from nanoGPT.variants.sigmoid import bce_loss_sum, normalised_sigmoid_log_probs, sigmoid_bias_init


class BayesSigmoid(Bayes):
    name = "bayes_sigmoid"
    uses_extra_positives = True
    data_term = "bce"

    def reset_parameters(self) -> None:
        self.lm_head.reset_parameters(bias=sigmoid_bias_init(self.config.vocab_size))

    def logits_loss_sum(self, logits, targets, extra) -> tuple[torch.Tensor, Stats]:
        return bce_loss_sum(logits, targets, extra, self.config.pos_weight)

    def observe(self, logits, targets, extra_positives) -> None:
        """The BCE is no distribution over the targets: a factor of -BCE per position."""
        pyro.factor("bce", -sparse_bce(logits, targets, extra_positives, self.config.pos_weight)[0])

    def sample_log_probs(self, sample_logits: torch.Tensor) -> torch.Tensor:
        return normalised_sigmoid_log_probs(sample_logits)

    def evaluate(self, hidden, targets) -> tuple[torch.Tensor, Stats]:
        log_probs, stats = super().evaluate(hidden, targets)
        mean_logits = self.logits(hidden)
        sigmoid_stats = sigmoid_token_stats(
            mean_logits.reshape(-1, mean_logits.size(-1)), targets.reshape(-1)
        )
        stats.update({key: value.view(targets.shape) for key, value in sigmoid_stats.items()})
        return log_probs, stats
