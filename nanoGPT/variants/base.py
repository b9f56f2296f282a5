"""The variant interface: an output head, its training loss and its predictive distribution.

A variant turns the trunk's hidden states (..., n_embd) into
  - `loss(hidden, targets, extra_positives)`: the training objective, a scalar, plus a dict
    of detached scalars worth logging. A variant writes its loss as a sum over positions,
    `logits_loss_sum` (or `position_loss_sum` when it needs more than the logits), and the
    base class computes the mean over chunks of positions (nanoGPT/chunked_loss.py), so no
    (N, V) logits of a whole batch are held; terms that are not per position (a Bayesian
    head's KL) are added outside the chunks;
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
import torch.nn.functional as F

from nanoGPT.chunked_loss import AUTO_CHUNK_ELEMENTS, chunk_positions, chunked_loss_sum
from nanoGPT.config import ModelConfig

Stats = dict[str, torch.Tensor]


@dataclass
class ExtraTargets:
    """The augmenter's candidates with the teacher's probabilities (variants with
    `uses_teacher_probs`): never a (..., V) tensor, only the K candidates of each position."""

    ids: torch.Tensor  # (..., K) int64 candidate ids, -1 where a slot holds none
    log_probs: torch.Tensor  # (..., K) float32 teacher log-probability of each, -inf at padding


def extra_rows(extra: torch.Tensor | ExtraTargets | None, num_positions: int, rows: slice):
    """The extra targets of the positions `rows`, from (..., K) ones over num_positions."""
    if extra is None:
        return None
    if isinstance(extra, ExtraTargets):
        return ExtraTargets(*(extra_rows(t, num_positions, rows) for t in (extra.ids, extra.log_probs)))
    return extra.reshape(num_positions, extra.size(-1))[rows]


class Variant(nn.Module):
    name: ClassVar[str] = ""
    ties_embedding: ClassVar[bool] = True  # lm_head.weight is shared with the token embedding
    bayesian: ClassVar[bool] = False  # evaluate() reports predictive/expected entropy
    uses_extra_positives: ClassVar[bool] = False  # trains on the augmenter's targets (multi-hot...)
    uses_teacher_probs: ClassVar[bool] = False  # ...with the teacher's probabilities (ExtraTargets)
    # log_probs is log_softmax(lm_head(hidden)): exports as a transformers causal LM (nanoGPT/export.py)
    softmax_head: ClassVar[bool] = False
    # positions per chunk of the training loss: -1 auto, 0 never chunk, n > 0 (training sets it
    # from TrainConfig.loss_chunk_size; nanoGPT/chunked_loss.py)
    loss_chunk_size: int = -1
    # at most this many logits per chunk when loss_chunk_size is -1 (auto): fewer for a head
    # that holds more vocabulary-sized buffers through the chunks (bayes)
    auto_chunk_elements: ClassVar[int] = AUTO_CHUNK_ELEMENTS

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
        return self.head_logits(hidden, self.head_tensors())

    def loss(
        self,
        hidden: torch.Tensor,
        targets: torch.Tensor,
        extra_positives: torch.Tensor | ExtraTargets | None = None,
    ) -> tuple[torch.Tensor, Stats]:
        return self.mean_position_loss(hidden, targets, extra_positives, self.head_tensors())

    def head_tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors the loss of every position reads, the same for all chunks of a step:
        the head's weight (and bias)."""
        return tuple(t for t in (self.lm_head.weight, self.lm_head.bias) if t is not None)

    def head_logits(self, hidden: torch.Tensor, head: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """float32 logits of hidden rows from `head_tensors()`."""
        return F.linear(hidden, *head).float()

    def logits_loss_sum(
        self, logits: torch.Tensor, targets: torch.Tensor, extra
    ) -> tuple[torch.Tensor, Stats]:
        """The loss of (n, V) logits summed over the n positions, and statistics summed over
        them (the logged values are their means)."""
        raise NotImplementedError

    def position_loss_sum(
        self, hidden: torch.Tensor, targets: torch.Tensor, extra, head: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, Stats]:
        """logits_loss_sum of (n, C) hidden rows, their (n,) targets and (n, K) extras."""
        return self.logits_loss_sum(self.head_logits(hidden, head), targets, extra)

    def mean_position_loss(
        self, hidden: torch.Tensor, targets: torch.Tensor, extra, head: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, Stats]:
        """The mean over positions of position_loss_sum, and its statistics' means, computed in
        chunks of positions (loss_chunk_size) with the same value and gradients."""
        flat_hidden = hidden.reshape(-1, hidden.size(-1))
        n = flat_hidden.size(0)
        flat_targets = targets.reshape(n)

        def chunk_loss(
            rows: slice, hidden_rows: torch.Tensor, head_rows: tuple
        ) -> tuple[torch.Tensor, Stats]:
            return self.position_loss_sum(
                hidden_rows, flat_targets[rows], extra_rows(extra, n, rows), head_rows
            )

        def logits_loss(rows: slice, logits: torch.Tensor) -> tuple[torch.Tensor, Stats]:
            return self.logits_loss_sum(logits, flat_targets[rows], extra_rows(extra, n, rows))

        chunk = chunk_positions(self.loss_chunk_size, n, self.config.vocab_size, self.auto_chunk_elements)
        linear = logits_loss if self.linear_head() else None
        total, sums = chunked_loss_sum(chunk_loss, flat_hidden, head, chunk, linear)
        return total / n, {key: value.detach() / n for key, value in sums.items()}

    def linear_head(self) -> bool:
        """Whether the loss of a position is logits_loss_sum of F.linear(hidden, *head).float():
        the chunked loss then does the head's matmul itself and accumulates its gradient in
        place. True unless a variant computes its logits or loss otherwise."""
        cls = type(self)
        return cls.position_loss_sum is Variant.position_loss_sum and cls.head_logits is Variant.head_logits

    def log_probs(self, hidden: torch.Tensor, samples: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        return self.log_probs(hidden), {}
