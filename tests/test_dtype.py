"""dtype on the CPU: bfloat16 runs under autocast and learns, auto's size threshold, refusals."""

import dataclasses
import json
import os

import pytest
import torch

from nanoGPT import runtime
from nanoGPT.config import TrainConfig, apply_config
from nanoGPT.errors import UserError
from nanoGPT.model import GPT
from nanoGPT.runtime import inference_runtime, resolve_dtype, setup_runtime
from nanoGPT.train import train
from tests.conftest import tiny_config

CHAR_DEFAULT = "config/train_baseline_shakespeare_char.py"


@pytest.fixture
def bf16_cpu(monkeypatch):
    """Pretend this CPU has (True) or lacks (False) bf16 matrix units."""

    def pretend(has: bool) -> None:
        monkeypatch.setattr(runtime, "cpu_has_bf16_matmul", lambda: has)

    return pretend


def test_bfloat16_on_the_cpu_runs_the_trunk_in_bf16_and_the_loss_in_fp32(char_data, tmp_path, bf16_cpu):
    bf16_cpu(True)
    cfg = tiny_config(char_data, tmp_path, dtype="bfloat16")
    rt = setup_runtime(cfg)
    assert rt.ptdtype == torch.bfloat16
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(cfg.model_args(), vocab_size=65))
    seen = {}
    model.transformer.h[0].mlp.c_fc.register_forward_hook(lambda m, i, out: seen.update(trunk=out.dtype))
    x = torch.randint(65, (2, 16))
    with rt.autocast():
        loss, _ = model(x, x)
        log_probs = model.variant.log_probs(model(x))
    loss.backward()
    assert seen["trunk"] == torch.bfloat16  # a matmul inside the model ran in bf16...
    assert loss.dtype == log_probs.dtype == torch.float32  # ...the objective did not
    assert model.transformer.wte.weight.grad.dtype == torch.float32  # fp32 master weights


def test_bfloat16_training_on_the_cpu_learns(char_data, tmp_path, bf16_cpu):
    bf16_cpu(True)  # no warning; the emulated bf16 of a CPU without them is as exact, only slower
    cfg = tiny_config(
        char_data, tmp_path, dtype="bfloat16", max_iters=40, eval_interval=20, sample_interval=40
    )
    train(cfg)
    with open(os.path.join(cfg.log_dir, cfg.run_name, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals[-1]["val/nll"] < evals[0]["val/nll"] - 1.0  # from ~ln(65) down
    assert "torch.bfloat16" in open(os.path.join(cfg.log_dir, cfg.run_name, "train.log")).read()


def test_auto_picks_bf16_on_the_cpu_only_for_large_models_on_capable_cpus(char_data, tmp_path, bf16_cpu):
    char = apply_config(TrainConfig(), [CHAR_DEFAULT, f"--data_dir={char_data}"])
    no_meta = str(tmp_path)  # no meta.pkl: the GPT-2 vocabulary, as train.py would use
    gpt2_124m = TrainConfig(device="cpu", data_dir=no_meta)  # the defaults are GPT-2 124M
    assert runtime.matmul_weights_per_token(runtime.planned_model(char)) < 1e6  # the data's 65 chars
    assert runtime.matmul_weights_per_token(runtime.planned_model(gpt2_124m)) > 100e6
    for has_bf16, expect_large in ((True, torch.bfloat16), (False, torch.float32)):
        bf16_cpu(has_bf16)
        assert setup_runtime(char).ptdtype == torch.float32
        assert setup_runtime(gpt2_124m).ptdtype == expect_large
        assert inference_runtime("cpu", "auto").ptdtype == torch.float32  # sampling: measured slower
    # the model given outright is the one judged (bench.py's V=50257 trunk beside char data)
    bf16_cpu(True)
    assert setup_runtime(char, gpt2_124m.model_args()).ptdtype == torch.bfloat16


def test_the_data_is_read_for_the_dtype_only_when_its_size_could_decide(bf16_cpu, monkeypatch):
    def planned_model(cfg):
        raise AssertionError("the data's meta.pkl was read though the size cannot change the dtype")

    monkeypatch.setattr(runtime, "planned_model", planned_model)
    bf16_cpu(False)  # auto on a CPU without bf16 units: float32 at any size
    assert setup_runtime(TrainConfig(device="cpu", dtype="auto")).ptdtype == torch.float32
    bf16_cpu(True)  # a dtype given outright
    assert setup_runtime(TrainConfig(device="cpu", dtype="float32")).ptdtype == torch.float32


def test_auto_on_cuda_is_bf16_where_the_device_has_it(monkeypatch):
    for supported, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert resolve_dtype("cuda", "auto") == expected


def test_float16_on_the_cpu_is_refused_and_emulated_bf16_warned(bf16_cpu):
    for make in (
        lambda: setup_runtime(TrainConfig(device="cpu", dtype="float16")),
        lambda: inference_runtime("cpu", "float16"),
    ):
        with pytest.raises(UserError, match="dtype=float16 needs a CUDA device; on the CPU use bfloat16"):
            make()
    bf16_cpu(False)
    with pytest.warns(UserWarning, match="no bf16 matrix units"):
        assert resolve_dtype("cpu", "bfloat16") == torch.bfloat16
