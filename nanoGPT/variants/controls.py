"""Controls for the heads' shapes: the baseline's objective (softmax cross-entropy) on the other
variants' heads, so that a difference against the tied baseline can be told apart from the head.

  baseline_untied  an untied linear head without bias, the shape of the Bayesian heads' means
                   (their bias aside): what untying the embedding alone does;
  baseline_bias    the tied weight plus a bias, the shape of the sigmoid head: what the bias
                   alone does. The bias starts at 0 and, like sigmoid's, is not weight-decayed.
"""

from __future__ import annotations

import torch.nn as nn

from nanoGPT.config import ModelConfig
from nanoGPT.variants.baseline import Baseline


class BaselineUntied(Baseline):
    name = "baseline_untied"
    ties_embedding = False  # lm_head.weight is its own parameter, initialised as the embedding is


class BaselineBias(Baseline):
    name = "baseline_bias"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=True)
        self.lm_head.bias.no_weight_decay = True  # as sigmoid's (1-D: never decayed anyway)
