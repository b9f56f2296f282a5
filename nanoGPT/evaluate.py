"""Evaluation on a split through the variant's normalised predictive distribution."""

from __future__ import annotations

import contextlib

import torch

from nanoGPT.data import TokenData
from nanoGPT.metrics import MetricAccumulator, score_chunk_rows
from nanoGPT.model import GPT
from nanoGPT.runtime import seeded


@torch.no_grad()
def evaluate(
    model: GPT,
    data: TokenData,
    split: str,
    num_batches: int,
    token_bytes: torch.Tensor,
    autocast: contextlib.AbstractContextManager | None = None,
    world_size: int = 1,
    seed: int = 0,
    accumulator: MetricAccumulator | None = None,
) -> dict[str, float]:
    """Metrics of `model` on `num_batches` fixed batches of `split` (summed over DDP ranks).

    Runs under a forked RNG with a fixed seed: Bayesian sampling here neither disturbs the
    training stream (so resume stays exact) nor varies between evaluations. (A comparison's
    final evaluation keeps per-window sums as well, through nanoGPT/ood.py's single pass.)
    """
    was_training = model.training
    model.eval()
    autocast = autocast or contextlib.nullcontext()
    accumulator = accumulator or MetricAccumulator(device=data.device)
    cfg = model.config
    chunk_rows = score_chunk_rows(cfg.vocab_size)
    with seeded(seed, data.device):
        for starts in data.eval_batches(split, num_batches, world_size):
            batch = data.batch_at(split, starts)
            with autocast:
                hidden = model.hidden_states(batch.x)
            hidden, targets = hidden.flatten(0, 1), batch.y.flatten()
            for i in range(0, targets.numel(), chunk_rows):
                rows = slice(i, i + chunk_rows)
                log_probs, extras = model.variant.evaluate(hidden[rows], targets[rows])
                accumulator.update(log_probs, targets[rows], token_bytes[targets[rows]], extras)
    accumulator.all_reduce()
    model.train(was_training)
    return accumulator.compute()
