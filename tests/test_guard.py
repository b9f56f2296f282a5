"""The bad-step guard checks what it saves: hyper-parameters that cannot train are refused,
an update that makes a weight non-finite is undone, and no checkpoint holds a NaN or inf."""

import json
import os

import pytest
import torch

import nanoGPT.train as train_module
from nanoGPT.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from nanoGPT.config import apply_config
from nanoGPT.errors import UserError
from nanoGPT.guard import UpdateGuard, finite_flags
from nanoGPT.train import train
from tests.conftest import tiny_config


def bad_steps(cfg):
    with open(os.path.join(cfg.log_dir, cfg.run_name, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == "bad_step"]


def all_finite(ckpt):
    tensors = list(ckpt["model"].values())
    for state in ckpt["optimizer"]["state"].values():
        tensors += [v for v in state.values() if torch.is_tensor(v)]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@pytest.mark.parametrize(
    "arg, message",
    [
        ("--learning_rate=inf", "learning_rate must be a finite number, got inf"),
        ("--min_lr=nan", "min_lr must be a finite number"),
        ("--weight_decay=nan", "weight_decay must be a finite number"),
        ("--weight_decay=-0.1", r"weight_decay must be in \[0, inf\)"),
        ("--learning_rate=-1e-3", r"learning_rate must be in \[0, inf\)"),
        ("--beta2=1", r"beta2 must be in \[0, 1\)"),
        ("--grad_clip=-1", r"grad_clip must be in \[0, inf\)"),
    ],
)
def test_hyper_parameters_that_cannot_train_are_refused_before_anything_starts(
    char_data, tmp_path, arg, message
):
    cfg = apply_config(tiny_config(char_data, tmp_path), [arg])
    with pytest.raises(UserError, match=message):
        train(cfg)
    assert not os.path.exists(cfg.out_dir) and not os.path.exists(cfg.log_dir)


def poison_update(monkeypatch, at_call: int) -> None:
    """The optimizer's `at_call`-th step (0-based) leaves one weight inf, as an overflowing
    update would."""
    build = train_module.build_optimizer

    def build_poisoned(model, cfg, device_type):
        optimizer = build(model, cfg, device_type)
        step, calls = optimizer.step, [0]

        def poisoned_step(*args, **kwargs):
            out = step(*args, **kwargs)
            if calls[0] == at_call:
                with torch.no_grad():
                    next(model.parameters())[0, 0] = float("inf")
            calls[0] += 1
            return out

        optimizer.step = poisoned_step
        return optimizer

    monkeypatch.setattr(train_module, "build_optimizer", build_poisoned)


@pytest.mark.parametrize("at_call", [0, 4])  # the first update (no optimizer state yet), a later one
def test_an_update_that_makes_a_weight_non_finite_is_undone(char_data, tmp_path, monkeypatch, at_call):
    poison_update(monkeypatch, at_call)
    cfg = tiny_config(char_data, tmp_path, max_iters=8, eval_interval=100, checkpoint_interval=1)
    cfg = apply_config(cfg, ["--keep_checkpoints=20"])
    train(cfg)
    (bad,) = bad_steps(cfg)
    assert bad["iter"] == at_call + 1 and bad["non_finite"] == "updated weights"
    ckpts = {it: load_checkpoint(path) for it, path in list_checkpoints(cfg.out_dir)}
    assert sorted(ckpts) == list(range(1, 9))
    assert all(all_finite(c) for c in ckpts.values())
    skipped = ckpts[at_call + 1]
    if at_call == 0:
        assert skipped["optimizer"]["state"] == {}  # the state the first step created is dropped
    else:
        before = ckpts[at_call]
        assert all(torch.equal(before["model"][k], skipped["model"][k]) for k in before["model"])
        assert before["optimizer"]["state"][0]["step"] == skipped["optimizer"]["state"][0]["step"]
    after = ckpts[at_call + 2]
    assert not all(torch.equal(after["model"][k], skipped["model"][k]) for k in after["model"])


def test_the_guard_restores_parameters_and_optimizer_state():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    guard = UpdateGuard(optimizer)
    for _ in range(2):  # a first step, then one whose state the snapshot reuses
        layer(torch.randn(5, 4)).sum().backward()
        guard.snapshot()
        optimizer.step()
    weights = [p.detach().clone() for p in layer.parameters()]
    moments = [optimizer.state[p]["exp_avg"].clone() for p in layer.parameters()]
    guard.snapshot()
    optimizer.step()
    layer.weight.data[1, 2] = float("nan")
    assert not guard.params_finite()
    guard.restore()
    assert guard.params_finite()
    assert all(torch.equal(a, b) for a, b in zip(weights, layer.parameters()))
    assert all(torch.equal(a, optimizer.state[p]["exp_avg"]) for a, p in zip(moments, layer.parameters()))


def test_finite_flags_catch_nan_and_inf_without_overflowing():
    flags = finite_flags(
        [torch.tensor([3e38, -3e38]), torch.tensor([1.0, float("nan")]), torch.tensor([-float("inf")])]
    )
    assert flags == [True, False, False]


def test_save_refuses_non_finite_weights(tmp_path):
    weights = {
        "wte.weight": torch.ones(3, 2),
        "ln.bias": torch.tensor([0.0, float("nan")]),
        "ids": torch.arange(3),
    }
    with pytest.raises(UserError, match="iteration 7: non-finite values in ln.bias"):
        save_checkpoint({"model": weights}, str(tmp_path), 7)
    assert os.listdir(tmp_path) == []  # nothing written, not even a temporary file
