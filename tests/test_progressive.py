"""Progressive diverging through the training loop: the stage-switch log, the source's stage 3
(attention through LoRA), exact resume across that switch, and the shipped config.

What each stage trains, the function kept at each switch and causality are checked on the
model alone in tests/test_architectures.py.
"""

import dataclasses
import json
import math
import os

import pytest
import torch

from nanoGPT import progressive
from nanoGPT.checkpoint import load_checkpoint, load_model
from nanoGPT.config import TrainConfig, apply_config
from nanoGPT.model import GPT
from nanoGPT.train import train
from tests.conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "config", "train_progressive_shakespeare_char.py")
# four layers in one group: stage 2 from iteration 2, stage 3 from iteration 4 (of 8)
STAGED = dict(
    n_layer=4,
    progressive_group=4,
    progressive_stage2=0.25,
    progressive_stage3=0.5,
    progressive_stage3_lora=True,
    lora_rank=2,
    max_iters=8,
    eval_interval=8,
    eval_iters=1,
)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def records(cfg: TrainConfig, kind: str) -> list[dict]:
    with open(os.path.join(cfg.log_dir, cfg.run_name, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def trainable_at(cfg: TrainConfig, vocab_size: int, stage: int) -> int:
    model = GPT(dataclasses.replace(cfg.model_args(), vocab_size=vocab_size))
    model.set_progressive_stage(stage)
    return progressive.trainable_parameters(model, model.transformer.h, stage)


def test_stage_switches_are_logged_and_stage3_trains_attention_through_lora(char_data, tmp_path):
    cfg = tiny_config(char_data, tmp_path, **STAGED)
    train(cfg)
    model, _ = load_model(os.path.join(cfg.out_dir, "ckpt.pt"))
    vocab = model.config.vocab_size
    switches = [
        (r["iter"], r["from_stage"], r["stage"], r["trainable_params"]) for r in records(cfg, "stage")
    ]
    assert switches == [(2, 1, 2, trainable_at(cfg, vocab, 2)), (4, 2, 3, trainable_at(cfg, vocab, 3))]
    assert switches[0][3] < switches[1][3]
    with open(os.path.join(cfg.log_dir, cfg.run_name, "train.log")) as f:
        log = f.read()
    assert f"iter 4: progressive stage 3 (from 2), {switches[1][3]:,} trainable parameters" in log
    # stage 3 as in the source: every layer's adapters trained (B was zero at the switch), the
    # base attention frozen since (layers 0 and 1 are copies of one block and still equal)
    h = model.transformer.h
    assert all(b.attn.lora_active and b.attn.c_attn_lora_b.abs().sum() > 0 for b in h)
    for a, b in ((h[0], h[1]), (h[2], h[3])):
        assert torch.equal(a.attn.c_attn.weight, b.attn.c_attn.weight)
        assert torch.equal(a.attn.c_proj.weight, b.attn.c_proj.weight)
        assert not torch.equal(a.mlp.c_fc.weight, b.mlp.c_fc.weight)  # each layer's own MLP


def test_a_model_without_progressive_diverging_logs_no_stage(char_data, tmp_path):
    cfg = tiny_config(char_data, tmp_path, max_iters=3, eval_interval=3, eval_iters=1)
    train(cfg)
    assert records(cfg, "stage") == [] and len(records(cfg, "train")) == 3


@pytest.mark.slow
def test_resume_across_the_lora_stage3_switch_equals_an_uninterrupted_run(char_data, tmp_path):
    # the schedules refer to 10 iterations in both runs, not to the first run's max_iters
    fixed = dict(max_iters=10, eval_interval=3, progressive_iters=10, lr_decay_iters=10)
    straight = tiny_config(char_data, tmp_path / "a", **dict(STAGED, **fixed))
    train(straight)
    half = dataclasses.replace(straight, out_dir=str(tmp_path / "b" / "out"), max_iters=3)
    train(half)  # stops in stage 2; the resumed run makes the switch (and drops the moments)
    train(dataclasses.replace(half, max_iters=10, init_from="resume"))
    a = load_checkpoint(os.path.join(straight.out_dir, "ckpt.pt"))
    b = load_checkpoint(os.path.join(half.out_dir, "ckpt.pt"))
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def progressive_config(data_dir: str, tmp_path, *overrides: str) -> TrainConfig:
    paths = [f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'out'}", f"--log_dir={tmp_path / 'logs'}"]
    return apply_config(TrainConfig(), [CONFIG, *paths, "--run_name=prog", *overrides])


def switch_iterations(cfg: TrainConfig) -> list[tuple[int, int]]:
    """(iteration, stage) of each switch progressive.stage_at schedules within max_iters."""
    stages = [progressive.stage_at(cfg, i, cfg.max_iters) for i in range(cfg.max_iters + 1)]
    return [(i, stages[i]) for i in range(1, len(stages)) if stages[i] != stages[i - 1]]


def test_the_progressive_config_is_the_sources_setup_and_runs(char_data, tmp_path):
    tiny = ["--max_iters=10", "--eval_interval=10", "--eval_iters=1", "--batch_size=2", "--sample_interval=0"]
    cfg = progressive_config(char_data, tmp_path, *tiny, "--n_embd=16", "--n_head=2", "--log_interval=1")
    assert (cfg.progressive_group, cfg.n_layer, cfg.progressive_stage3_lora) == (4, 4, True)
    assert [stage for _, stage in switch_iterations(cfg)] == [2, 3]
    metrics = train(cfg)
    assert math.isfinite(metrics["val/nll"])
    assert [(r["iter"], r["stage"]) for r in records(cfg, "stage")] == switch_iterations(cfg)


def test_stage_boundaries_are_exact_fractions_of_the_iterations(char_data, tmp_path):
    cfg = progressive_config(char_data, tmp_path, "--max_iters=10")  # stages at 0.3 and 0.6
    assert switch_iterations(cfg) == [(3, 2), (6, 3)]  # 0.3 * 10 is 3.0000000000000004 in floats
    assert progressive.stage_start(0.25, 10) == 3  # between iterations: the next one


@pytest.mark.slow
def test_the_full_progressive_config(char_data, tmp_path):
    """The whole config (2,000 iterations, minutes): every stage is entered and the held-out NLL
    ends far below its start."""
    cfg = progressive_config(char_data, tmp_path)
    metrics = train(cfg)
    assert [(r["iter"], r["stage"]) for r in records(cfg, "stage")] == switch_iterations(cfg)
    evals = [r["val/nll"] for r in records(cfg, "eval")]
    assert metrics["val/nll"] == evals[-1] < evals[0] - 1.0
