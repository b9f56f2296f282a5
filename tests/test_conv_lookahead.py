"""The look-ahead objective (predict_ahead): targets N tokens ahead, the source's convolution
compressor on maths data (config/train_conv_math.py), and what refuses a look-ahead model.

Causality of the look-ahead target at every position is in tests/test_architectures.py.
"""

import importlib.util
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nanoGPT.config import ModelConfig, TrainConfig, apply_config
from nanoGPT.data import TokenData
from nanoGPT.errors import UserError
from nanoGPT.evaluate import evaluate
from nanoGPT.model import GPT
from nanoGPT.sampling import generate
from nanoGPT.tokenizer import load_tokenizer
from nanoGPT.train import train
from tests.conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONV_MATH = os.path.join(REPO, "config", "train_conv_math.py")
# the source's compressor, small: factor 4, 3 levels, the token 4 ** 3 = 64 ahead
SOURCE_CONV = dict(arch="conv", conv_factor=4, conv_levels=3, n_layer=7, predict_ahead=0)
T, AHEAD = 32, 64


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lookahead_data(data_dir: str, ahead: int = AHEAD) -> TokenData:
    data = TokenData(data_dir, T, 4, "cpu", seed=3)
    data.set_target_offset(ahead)
    return data


def test_batches_target_the_token_n_ahead_in_training_and_evaluation(char_data):
    data = lookahead_data(char_data)
    for split, batch in [("train", data.train_batch(5, 1))] + [
        ("val", data.batch_at("val", starts)) for starts in data.eval_batches("val", 3)
    ]:
        tokens = np.asarray(data.tokens(split)).astype(np.int64)
        for row, start in enumerate(batch.starts):
            assert start + T + AHEAD <= data.window_tokens(split)
            assert batch.x[row].tolist() == tokens[start : start + T].tolist()
            assert batch.y[row].tolist() == tokens[start + AHEAD : start + AHEAD + T].tolist()
    # the next-token default is what it always was
    plain = TokenData(char_data, T, 4, "cpu", seed=3).train_batch(5, 1)
    assert torch.equal(plain.y[:, :-1], plain.x[:, 1:])


def test_set_target_offset_refuses_windows_longer_than_a_split(char_data):
    data = TokenData(char_data, T, 4, "cpu")
    too_far = data.num_tokens("val") - T + 1
    with pytest.raises(UserError, match="fewer than block_size \\+ predict_ahead"):
        data.set_target_offset(too_far)
    assert data.target_offset == 1


@torch.no_grad()
def test_lookahead_loss_and_evaluation_equal_a_direct_cross_entropy(char_data):
    """Cross-entropy of logits[:, t] against token t + 64 of the split, written out by hand."""
    vocab = load_tokenizer(char_data).vocab_size
    torch.manual_seed(0)
    config = ModelConfig(n_head=2, n_embd=16, block_size=T, vocab_size=vocab, **SOURCE_CONV)
    model = GPT(config).eval()
    assert config.target_offset() == AHEAD
    data = lookahead_data(char_data, config.target_offset())

    def reference(split: str, starts: np.ndarray) -> torch.Tensor:
        tokens = torch.from_numpy(np.asarray(data.tokens(split)).astype(np.int64))
        x = torch.stack([tokens[s : s + T] for s in starts])
        targets = torch.stack([tokens[s + AHEAD : s + AHEAD + T] for s in starts])
        logits = model.variant.logits(model(x))
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")

    batch = data.train_batch(0)
    loss, _ = model(batch.x, batch.y)
    assert loss.item() == pytest.approx(reference("train", batch.starts).mean().item(), rel=1e-5)
    token_bytes = torch.ones(vocab, dtype=torch.long)
    metrics = evaluate(model, data, "val", 2, token_bytes)
    per_token = torch.cat([reference("val", starts) for starts in data.eval_batches("val", 2)])
    assert metrics["nll"] == pytest.approx(per_token.mean().item(), rel=1e-5)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(predict_ahead=0), "predict_ahead=0 .* needs arch=conv"),
        (dict(predict_ahead=3, sample_interval=5), "sample_interval needs a next-token model"),
        (dict(**SOURCE_CONV, augment=True, variant="sigmoid"), "augment needs a next-token model"),
        (dict(predict_ahead=-1), "predict_ahead must be in"),
    ],
)
def test_what_a_lookahead_model_cannot_do_is_one_clear_error(char_data, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        train(tiny_config(char_data, tmp_path, **overrides))
    assert not os.path.exists(tmp_path / "out")


def test_sampling_refuses_a_lookahead_model():
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=11, predict_ahead=2))
    with pytest.raises(UserError, match="predicts the token 2 positions ahead"):
        generate(model, torch.zeros(1, 3, dtype=torch.long), 4)


def conv_math_config(data_dir: str, tmp_path, *overrides: str) -> TrainConfig:
    """config/train_conv_math.py on `data_dir`, writing under tmp_path."""
    paths = [f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'out'}", f"--log_dir={tmp_path / 'logs'}"]
    return apply_config(TrainConfig(), [CONV_MATH, *paths, "--run_name=conv", *overrides])


def test_the_conv_math_config_is_the_sources_setup_and_runs(char_data, tmp_path):
    tiny = ["--max_iters=2", "--eval_interval=2", "--eval_iters=1", "--batch_size=2", "--log_interval=1"]
    cfg = conv_math_config(char_data, tmp_path, *tiny, "--n_embd=16", "--block_size=64")
    assert (cfg.arch, cfg.conv_factor, cfg.conv_levels, cfg.target_offset()) == ("conv", 4, 3, 64)
    assert cfg.dataset == "math" and cfg.sample_interval == 0
    metrics = train(cfg)
    assert math.isfinite(metrics["val/nll"])
    with open(tmp_path / "logs" / "conv" / "metrics.jsonl") as f:
        assert [r["iter"] for r in map(json.loads, f) if r["kind"] == "train"] == [1, 2]


def prepare_arithmetic(out_dir: str, **kwargs) -> dict[str, int]:
    """data/math/prepare.py, generated arithmetic in characters unless kwargs say otherwise."""
    path = os.path.join(REPO, "data", "math", "prepare.py")
    spec = importlib.util.spec_from_file_location("prepare_math", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.prepare(out_dir=out_dir, **{"sources": "arithmetic", "tokenizer": "char", **kwargs})


def test_arithmetic_maths_data_is_generated_offline(tmp_path):
    counts = prepare_arithmetic(str(tmp_path), arithmetic_docs=50, val_docs=5, seed=1)
    tokenizer = load_tokenizer(str(tmp_path))
    assert tokenizer.kind == "char" and tokenizer.vocab_size == 15
    val = tokenizer.decode(np.fromfile(tmp_path / "val.bin", dtype=np.uint16).tolist())
    lines = val.splitlines()
    assert len(lines) == 5 * 8 and counts["val"] == len(val)
    for line in lines:  # every line is a true statement
        expression, result = line.split("=")
        assert eval(expression) == int(result), line  # digits and one operator only
    with pytest.raises(UserError, match="--tokenizer=char needs generated sources only"):
        prepare_arithmetic(str(tmp_path / "x"), sources="college,arithmetic")
    assert prepare_arithmetic(str(tmp_path / "again"), arithmetic_docs=50, val_docs=5, seed=1) == counts


@pytest.mark.slow
def test_the_full_conv_math_config_on_generated_arithmetic(tmp_path):
    """The whole config (600 iterations, minutes) on the offline maths data: its look-ahead
    NLL falls from the first evaluation and ends below uniform guessing over the 15 characters."""
    data_dir = str(tmp_path / "math")
    prepare_arithmetic(data_dir)
    cfg = conv_math_config(data_dir, tmp_path)
    metrics = train(cfg)
    with open(tmp_path / "logs" / "conv" / "metrics.jsonl") as f:
        evals = [r["val/nll"] for r in map(json.loads, f) if r["kind"] == "eval"]
    assert len(evals) == cfg.max_iters // cfg.eval_interval + 1
    assert metrics["val/nll"] == evals[-1] < evals[0] and evals[-1] < math.log(15)
