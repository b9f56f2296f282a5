"""The augmenter: a teacher LM turns next-token targets into multi-hot targets (or, with the
teacher's probabilities, into soft targets for distill).

Online (augment_source=online): nanoGPT/augment/augmenter.py runs the teacher on every
batch. From a cache (augment_source=cache): nanoGPT/augment/cache.py reads what augment_cache.py
computed once over train.bin.

As a library object (the source project's API): DataAugmenter() with .tokenizer, .augment and
.substitutions, see nanoGPT/augment/augmenter.py ("Object API").
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from nanoGPT.augment.augmenter import DataAugmenter
from nanoGPT.augment.cache import open_cache
from nanoGPT.augment.settings import AugmentSettings
from nanoGPT.augment.teachers import check_teacher_fits, load_teacher
from nanoGPT.config import TrainConfig
from nanoGPT.data import Batch, TokenData
from nanoGPT.errors import UserError
from nanoGPT.tokenizer import load_tokenizer
from nanoGPT.variants import VARIANTS
from nanoGPT.variants.base import ExtraTargets

SOURCES = ("online", "cache")


def build_augmenter(
    cfg: TrainConfig, model, data: TokenData, device: str
) -> Callable[[Batch], torch.Tensor | ExtraTargets] | None:
    """A callable batch -> (B, T, K) extra positive ids padded with -1 (ExtraTargets, with the
    teacher's log-probs, for a variant that declares `uses_teacher_probs`), or None when off."""
    variant = model.variant
    if not cfg.augment:
        if variant.uses_teacher_probs:
            raise UserError(
                f"variant {cfg.variant!r} learns from a teacher: set augment=True and teacher=..."
            )
        return None
    if not variant.uses_extra_positives:
        users = ", ".join(name for name, v in VARIANTS.items() if v.uses_extra_positives)
        raise UserError(f"augment=True needs a multi-hot variant or distill ({users}), not {cfg.variant!r}")

    if cfg.augment_source not in SOURCES:
        raise UserError(f"augment_source must be one of {', '.join(SOURCES)}, got {cfg.augment_source!r}")
    settings = AugmentSettings.from_config(cfg)
    if variant.uses_teacher_probs and settings.positions != "all":
        raise UserError(
            f"variant {cfg.variant!r} needs the teacher's distribution at every position: "
            f"set augment_positions=all (not {settings.positions!r})"
        )
    with_log_probs = variant.uses_teacher_probs
    if cfg.augment_source == "cache":
        return open_cache(cfg, data.data_dir, device, with_log_probs)
    teacher = load_teacher(settings.teacher, device, load_tokenizer(data.data_dir), data.data_dir)
    check_teacher_fits(teacher, settings, cfg.block_size)
    return DataAugmenter(teacher, settings, cfg.seed, with_log_probs)
