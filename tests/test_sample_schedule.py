"""Samples on their own schedule: every sample_interval iterations, printed and kept in
samples.txt, without touching the training RNG (same weights as a run without samples)."""

import os
import re

import torch

from nanoGPT.checkpoint import load_checkpoint
from nanoGPT.train import train
from tests.conftest import tiny_config


def sampled_iters(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"^--- iter (\d+) ---$", text, re.MULTILINE)]


def test_samples_every_interval_printed_kept_and_weights_unchanged(char_data, tmp_path, capsys):
    # dropout on, so a sample that drew from the training RNG would change the weights
    common = dict(max_iters=20, eval_interval=20, dropout=0.1, log_interval=20, sample_tokens=8)
    sampled = tiny_config(char_data, tmp_path / "a", sample_interval=5, **common)
    train(sampled)
    printed = capsys.readouterr().out
    assert [int(i) for i in re.findall(r"^sample at iter (\d+):$", printed, re.MULTILINE)] == [
        0,
        5,
        10,
        15,
        20,
    ]
    with open(os.path.join(sampled.log_dir, sampled.run_name, "samples.txt")) as f:
        kept = f.read()
    assert sampled_iters(kept) == [0, 5, 10, 15, 20]
    plain = tiny_config(char_data, tmp_path / "b", sample_interval=0, **common)
    train(plain)
    assert "sample at iter" not in capsys.readouterr().out
    a = load_checkpoint(os.path.join(sampled.out_dir, "ckpt.pt"))["model"]
    b = load_checkpoint(os.path.join(plain.out_dir, "ckpt.pt"))["model"]
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def test_a_resumed_run_samples_on_from_where_it_stopped(char_data, tmp_path):
    cfg = tiny_config(char_data, tmp_path, max_iters=10, eval_interval=10, sample_interval=5, sample_tokens=4)
    train(cfg)
    train(
        tiny_config(
            char_data,
            tmp_path,
            max_iters=15,
            eval_interval=10,
            sample_interval=5,
            sample_tokens=4,
            init_from="resume",
        )
    )
    with open(os.path.join(cfg.log_dir, cfg.run_name, "samples.txt")) as f:
        assert sampled_iters(f.read()) == [0, 5, 10, 15]  # iteration 10, resumed from, not twice
