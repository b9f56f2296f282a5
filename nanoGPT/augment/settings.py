"""The augmenter's settings: the augment_* keys of TrainConfig, validated once, and which target
positions of a row get extra positives (a pure function of the seed and the row's start)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from nanoGPT.config import TrainConfig
from nanoGPT.errors import UserError

FILTERS = ("perplexity", "prob", "none")
CKPT_PREFIX = "ckpt:"  # teacher=ckpt:<out_dir>: a checkpoint trained by this framework


@dataclass(frozen=True)
class AugmentSettings:
    """The augment_* config keys, validated (see the module docstring for their meaning)."""

    # defaults are TrainConfig's, so the keys are defined (and documented) in one place
    teacher: str = TrainConfig.teacher
    k: int = TrainConfig.augment_k
    filter: str = TrainConfig.augment_filter
    threshold: float = TrainConfig.augment_threshold
    min_prob: float = TrainConfig.augment_min_prob
    window: int = TrainConfig.augment_window
    positions: str = TrainConfig.augment_positions
    sample_top_k: int = TrainConfig.augment_sample_top_k
    sample_top_p: float = TrainConfig.augment_sample_top_p

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> AugmentSettings:
        """The one place the augment_* keys (defaults and meaning in TrainConfig) are read."""
        settings = cls(
            teacher=cfg.teacher,
            k=cfg.augment_k,
            filter=cfg.augment_filter,
            threshold=cfg.augment_threshold,
            min_prob=cfg.augment_min_prob,
            window=cfg.augment_window,
            positions=cfg.augment_positions,
            sample_top_k=cfg.augment_sample_top_k,
            sample_top_p=cfg.augment_sample_top_p,
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.filter not in FILTERS:
            raise UserError(f"augment_filter must be one of {', '.join(FILTERS)}, got {self.filter!r}")
        if self.k < 1:
            raise UserError(f"augment_k must be at least 1, got {self.k}")
        if self.filter == "perplexity" and not self.threshold > 0:
            raise UserError(f"augment_threshold must be > 0, got {self.threshold}")
        if self.filter == "perplexity" and self.window < 2:
            raise UserError(f"augment_window must be at least 2 tokens, got {self.window}")
        if self.filter == "prob" and not 0 < self.min_prob <= 1:
            raise UserError(f"augment_min_prob must be in (0, 1], got {self.min_prob}")
        if self.sample_top_k and self.sample_top_k < self.k:
            raise UserError(
                f"augment_sample_top_k must be 0 (off) or at least augment_k={self.k}, "
                f"got {self.sample_top_k}"
            )
        if not 0 < self.sample_top_p <= 1:
            raise UserError(f"augment_sample_top_p must be in (0, 1], got {self.sample_top_p}")
        positions_per_row(self.positions, 1)  # raises on a malformed value

    @property
    def sampled(self) -> bool:
        """Are the candidates drawn (augment_sample_top_k > 0) rather than the top k?"""
        return self.sample_top_k > 0

    def candidate_settings(self, seed: int | None = None) -> dict[str, Any]:
        """The keys that decide which candidates a position keeps (what a cache must match);
        a filter's parameters count only for that filter, and sampling's (with the `seed` the
        draws come from) only when the candidates are drawn."""
        drawn = {"augment_sample_top_k": self.sample_top_k, "augment_sample_top_p": self.sample_top_p}
        return {
            "teacher": normalise_teacher(self.teacher),
            "augment_k": self.k,
            "augment_filter": self.filter,
            "augment_threshold": self.threshold if self.filter == "perplexity" else None,
            "augment_window": self.window if self.filter == "perplexity" else None,
            "augment_min_prob": self.min_prob if self.filter == "prob" else None,
            # absent unless drawn: caches made before sampling existed keep matching
            **({**drawn, "seed": seed} if self.sampled else {}),
        }


def normalise_teacher(spec: str) -> str:
    if spec.startswith(CKPT_PREFIX):
        return CKPT_PREFIX + os.path.normpath(spec[len(CKPT_PREFIX) :])
    return spec


def positions_per_row(positions: str, block_size: int) -> int:
    """How many target positions of a row of `block_size` get extras: "one", "all", or a
    fraction in (0, 1] (at least one position)."""
    if positions == "one":
        return 1
    if positions == "all":
        return block_size
    try:
        fraction = float(positions)
    except ValueError:
        fraction = -1.0
    if not 0 < fraction <= 1:
        raise UserError(f"augment_positions must be one, all or a fraction in (0, 1], got {positions!r}")
    return max(1, min(block_size, round(fraction * block_size)))


def select_positions(starts: np.ndarray, block_size: int, positions: str, seed: int) -> np.ndarray:
    """(B,) row start offsets -> (B, n) sorted target positions that get extras.

    Each row's choice comes from its own numpy generator seeded by (seed, start): the same
    window always gets the same positions (online or from a cache, before or after a resume),
    and the global torch RNG, which drives dropout, is left untouched."""
    count = positions_per_row(positions, block_size)
    if count == block_size:
        return np.broadcast_to(np.arange(block_size, dtype=np.int64), (len(starts), block_size))
    rows = [
        np.random.default_rng([seed, int(start)]).choice(block_size, count, replace=False) for start in starts
    ]
    return np.sort(np.stack(rows), axis=1).astype(np.int64)
