"""Shared fixtures: real embedded Shakespeare text, prepared once per test session."""

import dataclasses
import os

# Tiny models run fastest on one thread, and torch's threads collapse when another process
# competes for the cores (compare's worker processes inherit this too).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from nanoGPT.config import TrainConfig
from nanoGPT.prepare import shakespeare_splits, write_text_dataset
from nanoGPT.tokenizer import CharTokenizer, gpt2_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def char_data(tmp_path_factory) -> str:
    """The embedded plays, character level (train.bin, val.bin, meta.pkl)."""
    out_dir = str(tmp_path_factory.mktemp("shakespeare_char"))
    text, splits = shakespeare_splits()
    write_text_dataset(out_dir, CharTokenizer.from_text(text), splits)
    return out_dir


@pytest.fixture(scope="session")
def bpe_data(tmp_path_factory) -> str:
    """A slice of the plays in GPT-2 BPE (train.bin, val.bin)."""
    out_dir = str(tmp_path_factory.mktemp("shakespeare_bpe"))
    _, splits = shakespeare_splits()
    write_text_dataset(out_dir, gpt2_tokenizer(), {k: v[:200_000] for k, v in splits.items()})
    return out_dir


@pytest.fixture(scope="session")
def hf_gpt2_folder(tmp_path_factory) -> str:
    """A tiny randomly initialised GPT-2 (GPT-2 vocabulary) saved with save_pretrained: what
    init_from=gpt2 and teacher=gpt2 load, without the hub."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    folder = str(tmp_path_factory.mktemp("hf_gpt2"))
    config = GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64, vocab_size=50257)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def tiny_config(data_dir: str, tmp_path, **overrides) -> TrainConfig:
    """A model and loop small enough for a test: seconds per hundred iterations."""
    base = TrainConfig(
        data_dir=data_dir,
        out_dir=str(tmp_path / "out"),
        log_dir=str(tmp_path / "logs"),
        run_name="test",
        device="cpu",
        n_layer=2,
        n_head=2,
        n_embd=32,
        block_size=32,
        batch_size=8,
        max_iters=20,
        eval_interval=10,
        eval_iters=2,
        log_interval=1,
        learning_rate=3e-3,
        warmup_iters=5,
        min_lr=3e-4,
        dropout=0.0,
    )
    return dataclasses.replace(base, **overrides)
