"""The chunked head + loss (nanoGPT/chunked_loss.py): for every registered variant, the loss,
its statistics and every gradient equal the unchunked path's; the chunk-size setting; and a
peak-memory check at the GPT-2 vocabulary."""

from __future__ import annotations

import dataclasses
import os
import sys

import pytest
import torch

from nanoGPT.benchmark import profiled_peak_mb
from nanoGPT.chunked_loss import chunk_positions, chunked_loss_sum
from nanoGPT.config import ModelConfig, TrainConfig, validate_config
from nanoGPT.errors import UserError
from nanoGPT.model import GPT
from nanoGPT.train import train
from nanoGPT.variants import VARIANTS, base
from nanoGPT.variants.base import ExtraTargets
from tests.conftest import tiny_config
from tests.helpers import run_checked
from tests.test_train import REPO, read_log, tiny_args
from tests.test_variants import extras_with_duplicates, randomise_posterior, text_batch, tiny_gpt

# settings that exercise each variant's own terms (label smoothing, pos_weight, a Monte-Carlo
# prior); every other variant runs with its defaults
SETTINGS = {
    "smooth": dict(label_smoothing=0.1),
    "sigmoid": dict(pos_weight=2.5),
    "bayes_sigmoid": dict(pos_weight=1.5),
}
CASES = [(name, SETTINGS.get(name, {})) for name in VARIANTS] + [
    ("bayes", dict(bayes_prior="laplace")),
    ("bayes_sigmoid", dict(bayes_estimator="local")),
    ("baseline_bias", dict(generic=True)),  # a linear head through the path of any head
]


def extra_targets(name: str, y: torch.Tensor):
    """Extra positives with -1 padding and duplicates; distill's come with teacher log-probs."""
    extra = extras_with_duplicates(y)
    if not VARIANTS[name].uses_teacher_probs:
        return extra
    log_probs = torch.randn(extra.shape, generator=torch.Generator().manual_seed(3)).log_softmax(-1)
    return ExtraTargets(extra, torch.where(extra >= 0, log_probs, -torch.inf))


def loss_and_gradients(model, x, y, extra, chunk: int, seed: int = 5):
    """(loss, stats, {name: gradient} of every parameter and of the hidden states)."""
    model.variant.loss_chunk_size = chunk
    model.zero_grad(set_to_none=True)
    hidden = model.hidden_states(x)
    hidden.retain_grad()
    torch.manual_seed(seed)  # the Bayesian heads' one weight sample of the step
    loss, stats = model.variant.loss(hidden, y, extra)
    (loss * 0.7).backward()  # an upstream gradient other than 1 reaches the chunks scaled
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return loss, stats, {**grads, "hidden": hidden.grad}


@pytest.mark.parametrize("name, settings", CASES, ids=[f"{n}-{'-'.join(s) or 'default'}" for n, s in CASES])
def test_chunked_loss_and_gradients_equal_the_unchunked(name, settings, monkeypatch):
    if settings.get("bayes_estimator") == "local":
        # per-token noise is drawn chunk by chunk: pin it so the two paths see the same
        monkeypatch.setattr(torch, "randn_like", lambda t, **kwargs: torch.full_like(t, 0.5, **kwargs))
    model = tiny_gpt(name, **{k: v for k, v in settings.items() if k != "generic"})
    if settings.get("generic"):
        monkeypatch.setattr(model.variant, "linear_head", lambda: False)
    if VARIANTS[name].bayesian:
        randomise_posterior(model.variant.lm_head)
    x, y = text_batch()  # 32 positions: chunks of 5 leave a remainder of 2
    extra = extra_targets(name, y)
    loss, stats, grads = loss_and_gradients(model, x, y, extra, chunk=0)
    chunked_loss, chunked_stats, chunked_grads = loss_and_gradients(model, x, y, extra, chunk=5)
    torch.testing.assert_close(chunked_loss, loss)
    assert chunked_stats.keys() == stats.keys()
    for key, value in stats.items():
        torch.testing.assert_close(chunked_stats[key], value, msg=key)
        assert not chunked_stats[key].requires_grad
    assert chunked_grads.keys() == grads.keys() and len(grads) > 3
    for key, grad in grads.items():
        torch.testing.assert_close(chunked_grads[key], grad, msg=key)
    assert grads["hidden"].abs().sum() > 0


def test_chunked_loss_without_gradients_and_under_bf16_autocast():
    model = tiny_gpt("sigmoid", pos_weight=2.0)
    x, y = text_batch()
    extra = extras_with_duplicates(y)
    hidden = model.hidden_states(x)
    reference, reference_stats = model.variant.loss(hidden, y, extra)
    model.variant.loss_chunk_size = 7
    with torch.no_grad():
        loss, stats = model.variant.loss(hidden, y, extra)
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(stats["positives"], reference_stats["positives"])
    # bf16 autocast: the chunks' losses stay float32, the hidden states' gradient is theirs
    model.variant.loss_chunk_size = 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, _, grads = loss_and_gradients(model, x, y, extra, chunk=0)
        _, _, chunked_grads = loss_and_gradients(model, x, y, extra, chunk=7)
    assert chunked_grads["hidden"].dtype == grads["hidden"].dtype
    for key, grad in grads.items():
        torch.testing.assert_close(chunked_grads[key], grad, rtol=2e-2, atol=2e-3, msg=key)


def test_chunked_gradients_accumulate_over_micro_steps():
    """Two backward passes add up in .grad, as gradient accumulation needs."""
    model = tiny_gpt("baseline")
    x, y = text_batch()
    grads = []
    for chunk in (0, 3):
        model.variant.loss_chunk_size = chunk
        model.zero_grad(set_to_none=True)
        for _ in range(2):
            model(x, y)[0].backward()
        grads.append(model.variant.lm_head.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0])


def test_chunk_size_setting():
    gpt2_vocab, char_vocab = 50257, 65
    assert chunk_positions(0, 12 * 1024, gpt2_vocab) == 12 * 1024  # 0: never chunk
    assert chunk_positions(100, 1024, gpt2_vocab) == 100
    assert chunk_positions(5000, 1024, gpt2_vocab) == 1024
    # auto: the bench's 8 x 128 batch and GPT-2's 12 x 1024 chunk at the GPT-2 vocabulary...
    assert chunk_positions(-1, 8 * 128, gpt2_vocab) == 256  # 4 equal chunks
    assert chunk_positions(-1, 8 * 128, gpt2_vocab, 2**23) == 147  # a Bayesian head's: 7 chunks
    assert 0 < chunk_positions(-1, 12 * 1024, gpt2_vocab) * gpt2_vocab <= 2**24
    # ...the character models never do, nor a small GPT-2-vocabulary batch
    assert chunk_positions(-1, 64 * 1024, char_vocab) == 64 * 1024
    assert chunk_positions(-1, 256, gpt2_vocab) == 256


@pytest.mark.parametrize(
    "variant, width, batch", [("baseline", 32, 8), ("bayes", 128, 4), ("bayes_sigmoid", 128, 4)]
)
def test_chunked_step_holds_less_memory_at_the_gpt2_vocabulary(variant, width, batch):
    """Peak tensor memory of a training step (forward + backward) at V = 50257 and N = batch x
    128 positions, where one (N, V) float32 buffer is 196 MB at N = 1024: the unchunked step
    holds the logits and their gradient, the chunked one a chunk's and the (V, C) gradient. A
    Bayesian head also holds its (V, C) weight sample either way: at bench.py's C / N (256 /
    1024, here 128 / 512, a quarter of the FLOPs) the chunked step still holds under half."""
    torch.manual_seed(0)
    vocab, block = 50257, 128
    config = ModelConfig(n_layer=1, n_head=2, n_embd=width, block_size=block, vocab_size=vocab)
    model = GPT(dataclasses.replace(config, variant=variant, kl_num_tokens=10**6))
    x, y = torch.randint(vocab, (batch, block)), torch.randint(vocab, (batch, block))
    extra = torch.randint(-1, vocab, (batch, block, 8)) if model.variant.uses_extra_positives else None

    def step() -> None:
        model(x, y, extra)[0].backward()
        # inside the profiled step: the profiler counts only the frees it sees, and gradients
        # freed outside it would count in the next measurement
        model.zero_grad(set_to_none=True)

    peaks = {}
    for chunk in (0, -1):
        model.variant.loss_chunk_size = chunk
        peaks[chunk] = profiled_peak_mb(step)
    logits_mb = batch * block * vocab * 4 / 2**20
    assert peaks[0] > 2 * logits_mb  # the unchunked step: logits and their gradient
    assert peaks[-1] < 0.5 * peaks[0], peaks


def test_training_uses_loss_chunk_size_and_trains_as_unchunked(char_data, tmp_path, monkeypatch):
    """TrainConfig.loss_chunk_size reaches the variant; training is the same either way."""
    used = []

    def spy(chunk_loss, hidden, head, chunk, *linear):
        used.append(chunk)
        return chunked_loss_sum(chunk_loss, hidden, head, chunk, *linear)

    monkeypatch.setattr(base, "chunked_loss_sum", spy)
    finals = []
    for chunk in (0, 7):
        cfg = tiny_config(
            char_data, tmp_path / str(chunk), max_iters=3, eval_interval=3, loss_chunk_size=chunk
        )
        finals.append(train(cfg)["train/nll"])
    assert set(used) == {8 * 32, 7}  # 0: one chunk of all the batch's positions
    assert finals[1] == pytest.approx(finals[0], rel=1e-5)
    with pytest.raises(UserError, match="loss_chunk_size"):
        validate_config(TrainConfig(loss_chunk_size=-2))
    assert "loss_chunk_size" not in {f.name for f in dataclasses.fields(ModelConfig)}  # not a model setting


@pytest.mark.slow  # two processes under torchrun
def test_ddp_with_gradient_accumulation_trains_chunked(char_data, tmp_path):
    """The chunks' gradients reach DDP's all-reduce (no_sync on the first micro-step): the
    ranks stay identical and the model learns."""
    cfg = tiny_config(char_data, tmp_path, max_iters=30, eval_interval=15, gradient_accumulation_steps=2)
    run_checked(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + ["train_baseline.py", *tiny_args(cfg), "--loss_chunk_size=7"],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    evals = read_log(cfg, "eval")
    assert all(e["ddp/param_spread"] == 0.0 for e in evals)
    assert evals[-1]["val/nll"] < evals[0]["val/nll"] - 0.5
