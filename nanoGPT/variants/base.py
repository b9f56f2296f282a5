"""The variant interface: an output head, its training loss and its predictive distribution.

A variant turns the trunk's hidden states (..., n_embd) into
  - `loss(hidden, targets, extra_positives)`: the training objective, a scalar, plus a dict
    of detached scalars worth logging;
  - `log_probs(hidden, samples)`: a normalised log-distribution over the vocabulary, the one
    yardstick that evaluation, calibration metrics and sampling all use;
  - `evaluate(hidden, targets)`: those log-probs plus per-token statistics only this variant
    has (entropies of a Bayesian head, sigmoid set sizes...), for nanoGPT/metrics.py.

`extra_positives` is a sparse (..., K) tensor of further valid next-token ids per position,
padded with -1 (from the augmenter). Softmax variants ignore it. A variant that declares
`uses_teacher_probs` gets an `ExtraTargets` instead: the same ids with the teacher's
log-probability of each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from nanoGPT.config import ModelConfig

Stats = dict[str, torch.Tensor]


@dataclass
class ExtraTargets:
    """The augmenter's candidates with the teacher's probabilities (variants with
    `uses_teacher_probs`): never a (..., V) tensor, only the K candidates of each position."""

    ids: torch.Tensor  # (..., K) int64 candidate ids, -1 where a slot holds none
    log_probs: torch.Tensor  # (..., K) float32 teacher log-probability of each, -inf at padding


class Variant(nn.Module):
    name: ClassVar[str] = ""
    ties_embedding: ClassVar[bool] = True  # lm_head.weight is shared with the token embedding
    bayesian: ClassVar[bool] = False  # evaluate() reports predictive/expected entropy
    uses_extra_positives: ClassVar[bool] = False  # trains on the augmenter's targets (multi-hot...)
    uses_teacher_probs: ClassVar[bool] = False  # ...with the teacher's probabilities (ExtraTargets)
    # log_probs is log_softmax(lm_head(hidden)): exports as a transformers causal LM (nanoGPT/export.py)
    softmax_head: ClassVar[bool] = False

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def reset_parameters(self) -> None:
        """Variant-specific initialisation, run after the model's generic init."""

    @torch.no_grad()
    def init_head_from(self, embedding: torch.Tensor) -> None:
        """Start the head from pretrained (vocab, n_embd) weights (GPT-2 import)."""
        if not self.ties_embedding:
            self.lm_head.weight.copy_(embedding)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    def loss(
        self,
        hidden: torch.Tensor,
        targets: torch.Tensor,
        extra_positives: torch.Tensor | ExtraTargets | None = None,
    ) -> tuple[torch.Tensor, Stats]:
        raise NotImplementedError

    def log_probs(self, hidden: torch.Tensor, samples: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        return self.log_probs(hidden), {}
