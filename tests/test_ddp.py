"""torchrun with the shipped CPU configs: gradient_accumulation_steps (the total over all
processes) is split rounded up, so a config's 1 runs under 2 processes as 1 micro-step each."""

import json
import os
import sys

import pytest

from nanoGPT.train import micro_steps_per_process
from tests.helpers import run_checked

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "total, world_size, each",
    [(1, 1, 1), (1, 2, 1), (1, 8, 1), (2, 2, 1), (3, 2, 2), (40, 8, 5), (41, 8, 6)],
)
def test_micro_steps_per_process_split_the_total_rounded_up(total, world_size, each):
    assert micro_steps_per_process(total, world_size) == each


@pytest.mark.slow  # two torchrun processes joining a gloo group (~7 s)
def test_torchrun_runs_the_shipped_char_config_on_two_processes(char_data, tmp_path):
    logs = tmp_path / "logs"
    proc = run_checked(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "train_baseline.py",
            "config/train_baseline_shakespeare_char.py",
            f"--data_dir={char_data}",
            f"--out_dir={tmp_path / 'out'}",
            f"--log_dir={logs}",
            "--run_name=ddp",
            "--n_layer=1",
            "--n_embd=32",
            "--max_iters=20",
            "--lr_decay_iters=20",
            "--warmup_iters=2",
            "--eval_interval=10",
            "--eval_iters=2",
            "--log_interval=10",
            "--sample_interval=0",
        ],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    note = "note: gradient_accumulation_steps=1 over 2 processes: 1 micro-step(s) each"
    assert proc.stdout.count(note) == 1  # the master says it, once
    assert "2 process(es)" in proc.stdout
    with open(logs / "ddp" / "metrics.jsonl") as f:
        evals = [r for r in map(json.loads, f) if r["kind"] == "eval"]
    assert [e["iter"] for e in evals] == [0, 10, 20]
    assert all(e["ddp/param_spread"] == 0.0 for e in evals)
    assert evals[-1]["val/nll"] < evals[0]["val/nll"]
