"""The one training loop: learning, exact resume, atomic checkpoints, DDP, sampling, errors."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

import nanoGPT.checkpoint as checkpoint
from nanoGPT.checkpoint import load_checkpoint, load_model
from nanoGPT.errors import UserError
from nanoGPT.train import learning_rate, train
from tests.conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_log(cfg, kind):
    path = os.path.join(cfg.log_dir, cfg.run_name, "metrics.jsonl")
    with open(path) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def test_baseline_learns_saves_and_samples(char_data, tmp_path):
    cfg = tiny_config(char_data, tmp_path, max_iters=60, eval_interval=30, sample_interval=30)
    metrics = train(cfg)
    evals = read_log(cfg, "eval")
    assert [e["iter"] for e in evals] == [0, 30, 60]
    assert evals[-1]["val/nll"] < evals[0]["val/nll"] - 1.0  # from ~ln(80) down
    for key in ("val/ppl", "val/bpb", "val/acc", "val/ece", "val/brier", "train/nll"):
        assert key in metrics
    # characters are one byte here, so bits per byte is NLL in bits
    assert metrics["val/bpb"] == pytest.approx(metrics["val/nll"] / 0.6931471805599453, rel=0.02)
    samples = open(os.path.join(cfg.log_dir, "test", "samples.txt")).read()
    assert samples.count("--- iter") == 3
    model, ckpt = load_model(os.path.join(cfg.out_dir, "ckpt.pt"))
    assert ckpt["iter_num"] == 60 and ckpt["variant"] == "baseline"
    out = subprocess.run(
        [
            sys.executable,
            "sample.py",
            f"--out_dir={cfg.out_dir}",
            "--start=ROMEO:",
            "--num_samples=2",
            "--max_new_tokens=40",
            "--device=cpu",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.count("ROMEO:") >= 2


def test_resume_equals_an_uninterrupted_run(char_data, tmp_path):
    # dropout on: the resumed run must also continue the RNG stream
    common = dict(dropout=0.1, lr_decay_iters=20, eval_interval=10, gradient_accumulation_steps=2)
    straight = tiny_config(char_data, tmp_path / "a", max_iters=20, **common)
    train(straight)
    half = tiny_config(char_data, tmp_path / "b", max_iters=10, **common)
    train(half)
    train(dataclasses.replace(half, max_iters=20, init_from="resume"))
    a = load_checkpoint(os.path.join(straight.out_dir, "ckpt.pt"))
    b = load_checkpoint(os.path.join(half.out_dir, "ckpt.pt"))
    assert a["iter_num"] == b["iter_num"] == 20
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    losses_a = [(r["iter"], r["loss"]) for r in read_log(straight, "train")]
    losses_b = [(r["iter"], r["loss"]) for r in read_log(half, "train")]
    assert losses_a == losses_b and len(losses_a) == 20


def test_interrupted_checkpoint_write_keeps_the_previous_one(char_data, tmp_path, monkeypatch):
    cfg = tiny_config(char_data, tmp_path, max_iters=10)
    train(cfg)
    path = os.path.join(cfg.out_dir, "ckpt.pt")
    before = load_checkpoint(path)["iter_num"]

    def dying_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(checkpoint.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_torch_save({"format": checkpoint.FORMAT}, path)
    assert load_checkpoint(path)["iter_num"] == before
    assert not [n for n in os.listdir(cfg.out_dir) if n.startswith(".tmp")]  # no temp file left


def test_resume_as_another_variant_is_a_clear_error(char_data, tmp_path):
    cfg = tiny_config(char_data, tmp_path, max_iters=10)
    train(cfg)
    with pytest.raises(UserError, match="trained as variant 'baseline'"):
        load_model(os.path.join(cfg.out_dir, "ckpt.pt"), expect_variant="sigmoid")


def test_learning_rate_schedule():
    cfg = tiny_config(
        "", __import__("pathlib").Path("/tmp"), learning_rate=1.0, min_lr=0.1, warmup_iters=10, max_iters=110
    )
    assert learning_rate(cfg, 0) < learning_rate(cfg, 5) < learning_rate(cfg, 10)
    assert learning_rate(cfg, 10) == pytest.approx(1.0, abs=1e-3)
    assert learning_rate(cfg, 60) == pytest.approx(0.55)
    assert learning_rate(cfg, 110) == learning_rate(cfg, 500) == 0.1


def test_ddp_two_processes_stay_identical_and_learn(char_data, tmp_path):
    cfg = tiny_config(char_data, tmp_path, max_iters=30, eval_interval=15, gradient_accumulation_steps=2)
    args = [
        f"--{k}={v}"
        for k, v in dataclasses.asdict(cfg).items()
        if k
        in (
            "data_dir",
            "out_dir",
            "log_dir",
            "run_name",
            "device",
            "n_layer",
            "n_head",
            "n_embd",
            "block_size",
            "batch_size",
            "max_iters",
            "eval_interval",
            "eval_iters",
            "log_interval",
            "learning_rate",
            "warmup_iters",
            "min_lr",
            "gradient_accumulation_steps",
        )
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "train_baseline.py",
            *args,
        ],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    evals = read_log(cfg, "eval")
    assert [e["iter"] for e in evals] == [0, 15, 30]
    assert all(e["ddp/param_spread"] == 0.0 for e in evals)
    assert evals[-1]["val/nll"] < evals[0]["val/nll"] - 0.5


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data_dir=/no/such/dir"], "no training data"),
        (["--n_layers=2"], "did you mean n_layer"),
        (["--variant=sigmoid"], "train_sigmoid.py"),
        (["--init_from=resume", "--out_dir=/no/such/out"], "not found"),
    ],
)
def test_cli_errors_are_one_line(args, message, char_data):
    if not any(a.startswith("--data_dir") for a in args):
        args = [*args, f"--data_dir={char_data}"]
    proc = subprocess.run(
        [sys.executable, "train_baseline.py", "--device=cpu", *args], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr
    assert "Traceback" not in proc.stderr
