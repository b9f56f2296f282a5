"""Checkpoints: written atomically, loaded without running code.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so it loads with
`torch.load(weights_only=True)`: a crafted file cannot execute code. It is written to a
temporary file in the same folder and moved into place with `os.replace`, so a crash
mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from typing import Any

import torch

from nanoGPT.config import ModelConfig, config_from_dict
from nanoGPT.errors import UserError

FORMAT = "nanoGPT-objectives/1"
LAST, BEST = "ckpt.pt", "best.pt"


def atomic_torch_save(obj: Any, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def checkpoint_path(out_dir: str, which: str = "last") -> str:
    return os.path.join(out_dir, BEST if which == "best" else LAST)


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise UserError(f"{path} is not a readable checkpoint of this framework ({first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a checkpoint of this framework")
    return ckpt


def model_config_of(ckpt: dict[str, Any], expect_variant: str | None = None) -> ModelConfig:
    config = config_from_dict(ModelConfig, ckpt["model_args"])
    if expect_variant and config.variant != expect_variant:
        raise UserError(
            f"checkpoint was trained as variant {config.variant!r}, not {expect_variant!r}"
        )
    return config


def load_model(path: str, device: str = "cpu", expect_variant: str | None = None,
               **overrides: Any):
    """Rebuild the GPT stored in a checkpoint (its own variant and config), in eval mode."""
    import dataclasses

    from nanoGPT.model import GPT

    ckpt = load_checkpoint(path, map_location=device)
    config = dataclasses.replace(model_config_of(ckpt, expect_variant), **overrides)
    model = GPT(config)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt
