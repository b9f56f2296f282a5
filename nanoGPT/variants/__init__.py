"""The registry of output-objective variants: name -> class. Add a variant here."""

from __future__ import annotations

from nanoGPT.config import ModelConfig
from nanoGPT.errors import UserError
from nanoGPT.variants.base import Variant
from nanoGPT.variants.baseline import Baseline
from nanoGPT.variants.bayes import Bayes
from nanoGPT.variants.bayes_sigmoid import BayesSigmoid
from nanoGPT.variants.controls import BaselineBias, BaselineUntied
from nanoGPT.variants.distill import Distill
from nanoGPT.variants.sigmoid import Sigmoid
from nanoGPT.variants.smooth import Smooth

VARIANTS: dict[str, type[Variant]] = {
    "baseline": Baseline,
    "smooth": Smooth,
    "sigmoid": Sigmoid,
    "bayes": Bayes,
    "bayes_sigmoid": BayesSigmoid,
    "distill": Distill,  # the teacher's top-k distribution as a soft target
    "baseline_untied": BaselineUntied,  # controls: the baseline's objective on the other heads' shapes
    "baseline_bias": BaselineBias,
}


def check_variant(config: ModelConfig) -> None:
    if config.variant not in VARIANTS:
        raise UserError(f"unknown variant {config.variant!r}; choose one of {', '.join(VARIANTS)}")


def build_variant(config: ModelConfig) -> Variant:
    check_variant(config)
    return VARIANTS[config.variant](config)
