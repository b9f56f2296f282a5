"""The augmenter: a teacher LM turns next-token targets into multi-hot targets.

Online (augment_source=online): nanoGPT/augment/augmenter.py runs the teacher on every
batch. From a cache (augment_source=cache): nanoGPT/augment/cache.py reads what augment_cache.py
computed once over train.bin.
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

SOURCES = ("online", "cache")


def build_augmenter(
    cfg: TrainConfig, model, data: TokenData, device: str
) -> Callable[[Batch], torch.Tensor] | None:
    """A callable batch -> (B, T, K) extra positive ids padded with -1, or None when off."""
    if not cfg.augment:
        return None
    if not model.variant.uses_extra_positives:
        raise UserError(
            f"augment=True needs a multi-hot variant (sigmoid, bayes_sigmoid), not {cfg.variant!r}"
        )

    if cfg.augment_source not in SOURCES:
        raise UserError(f"augment_source must be one of {', '.join(SOURCES)}, got {cfg.augment_source!r}")
    if cfg.augment_source == "cache":
        return open_cache(cfg, data.data_dir, device)
    settings = AugmentSettings.from_config(cfg)
    teacher = load_teacher(settings.teacher, device, load_tokenizer(data.data_dir), data.data_dir)
    check_teacher_fits(teacher, settings, cfg.block_size)
    return DataAugmenter(teacher, settings, cfg.seed)
