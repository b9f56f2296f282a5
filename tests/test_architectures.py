"""The trunk options: LLaMA-style layers, the convolution compressor, progressive diverging.

Causality at every position for every architecture, the layers against their formulas, the
KV cache with rotary positions, what each progressive stage trains, exact resume across a
stage boundary, and every architecture x every variant through the one training loop.
"""

import dataclasses
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

import nanoGPT.conv_model as conv_model
from nanoGPT import progressive
from nanoGPT.checkpoint import load_checkpoint, load_model
from nanoGPT.config import ModelConfig, TrainConfig, apply_config
from nanoGPT.errors import UserError
from nanoGPT.layers import RMSNorm, Rotary, SwiGLU, apply_rotary, swiglu_hidden
from nanoGPT.model import GPT
from nanoGPT.sampling import generate
from nanoGPT.train import build_optimizer, train
from nanoGPT.variants import VARIANTS
from tests.conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAMA = dict(norm="rmsnorm", mlp="swiglu", pos_emb="rope", bias=False)
PROGRESSIVE = dict(n_layer=4, progressive_group=4, lora_rank=2)
# block size 23: group edges fall in the middle of the sequence and the last group is ragged
BASE = ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=23, vocab_size=37)
ARCHITECTURES = {
    "gpt": {},
    "llama": LLAMA,
    "conv": dict(arch="conv", n_layer=3),
    "conv_f2_levels3": dict(arch="conv", conv_factor=2, conv_levels=3, n_layer=7),
    "conv_f3_levels2_llama": dict(arch="conv", conv_factor=3, conv_levels=2, n_layer=5, **LLAMA),
    "conv_f5": dict(arch="conv", conv_factor=5, n_layer=3, pos_emb="rope"),
    # the source's compressor: targets 4 ** 3 = 64 tokens ahead (predict_ahead=0: auto)
    "conv_f4_levels3_ahead64": dict(arch="conv", conv_factor=4, conv_levels=3, n_layer=7, predict_ahead=0),
    "progressive_stage1": PROGRESSIVE,
    "progressive_stage2": PROGRESSIVE,
    "progressive_stage3": PROGRESSIVE,
    "progressive_stage3_lora": dict(PROGRESSIVE, progressive_stage3_lora=True),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Models this small run faster on one thread; on a loaded machine several threads
    spend most of their time waiting for each other (80 ms instead of 1 ms a forward)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    model = GPT(dataclasses.replace(BASE, **ARCHITECTURES[name], **overrides))
    if name.startswith("progressive_stage"):
        model.set_progressive_stage(int(name.removesuffix("_lora")[-1]))
        if any(b.attn.lora_active for b in model.transformer.h):
            randomize_adapters(model)
    return model.eval()


@torch.no_grad()
def randomize_adapters(model: GPT) -> None:
    """Non-zero LoRA B, as after some training (at init B = 0 hides the adapters)."""
    for name, p in model.named_parameters():
        if "lora_b" in name:
            p.normal_(0, 0.1)


@torch.no_grad()
def positions_that_see_the_future(model: GPT, idx: torch.Tensor) -> list[int]:
    """Every t at which some output <= t changes when tokens after t change."""
    reference = model(idx)
    leaks = []
    for t in range(idx.size(1) - 1):
        changed = idx.clone()
        changed[:, t + 1 :] = torch.randint(model.config.vocab_size, changed[:, t + 1 :].shape)
        out = model(changed)
        if not torch.allclose(out[:, : t + 1], reference[:, : t + 1], atol=1e-6):
            leaks.append(t)
        # and the test can see a change: the future positions do depend on those tokens
        assert not torch.allclose(out[:, t + 1 :], reference[:, t + 1 :])
    return leaks


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_causality_at_every_position(name):
    model = build(name)
    idx = torch.randint(BASE.vocab_size, (2, BASE.block_size))
    assert positions_that_see_the_future(model, idx) == []
    # shorter sequences too: the ragged last group moves
    assert positions_that_see_the_future(model, idx[:, :10]) == []


@torch.no_grad()
def test_a_lookahead_target_at_t_depends_on_the_tokens_up_to_t_and_on_its_target():
    """predict_ahead: position t is scored on token t + 64 and sees tokens 0..t only, so its
    loss changes with that target and with nothing else after t."""
    model = build("conv_f4_levels3_ahead64")
    ahead, T = model.config.target_offset(), BASE.block_size
    assert ahead == 64
    window = torch.randint(BASE.vocab_size, (2, T + ahead))

    def loss_at(w: torch.Tensor, t: int) -> torch.Tensor:
        hidden = model(w[:, :T])  # the batch's x and y, as TokenData cuts them
        return model.variant.loss(hidden[:, t : t + 1], w[:, ahead:][:, t : t + 1])[0]

    for t in range(T):
        reference = loss_at(window, t)
        changed = window.clone()
        changed[:, t + 1 :] = torch.randint(BASE.vocab_size, changed[:, t + 1 :].shape)
        changed[:, t + ahead] = window[:, t + ahead]  # all after t but the target
        assert torch.allclose(loss_at(changed, t), reference, atol=1e-6), t
        changed[:, t + ahead] = (window[:, t + ahead] + 1) % BASE.vocab_size
        assert not torch.allclose(loss_at(changed, t), reference), t


def test_the_causality_check_catches_an_unshifted_convolution(monkeypatch):
    """Groups that start (rather than end) at the position they serve leak the future."""

    def unshifted_groups(x, factor):
        B, T, C = x.shape
        groups = math.ceil(T / factor)
        return F.pad(x, (0, 0, 0, groups * factor - T)).reshape(B, groups, factor * C)

    monkeypatch.setattr(conv_model, "causal_groups", unshifted_groups)
    model = build("conv")
    idx = torch.randint(BASE.vocab_size, (2, BASE.block_size))
    assert positions_that_see_the_future(model, idx)


def test_conv_groups_end_where_they_may_be_read():
    x = torch.arange(1, 11, dtype=torch.float).view(1, 10, 1)  # token t has value t + 1
    groups = conv_model.causal_groups(x, 4).squeeze(0)
    assert groups.tolist() == [[0, 0, 0, 1], [2, 3, 4, 5], [6, 7, 8, 9]]  # ends at 0, 4, 8
    phases = torch.arange(3 * 4, dtype=torch.float).view(1, 3, 4)  # compressed j, phase r
    up = conv_model.causal_upsample(phases, 4, 10).squeeze(0).squeeze(-1)
    # full position t reads compressed t // 4 (its group ends at 4 * (t // 4) <= t), phase t % 4
    assert up.tolist() == [4 * (t // 4) + t % 4 for t in range(10)]


def test_conv_trunk_shortens_and_widens():
    model = build("conv_f3_levels2_llama")
    conv = model.transformer.conv
    assert [b.ln_1.weight.numel() for b in conv.down_blocks] == [16, 32]
    assert {b.ln_1.weight.numel() for b in conv.bottom} == {64}
    assert conv.down[0].in_features == 3 * 16 and conv.up[1].out_features == 3 * 32
    assert model.hidden_states(torch.zeros(2, 23, dtype=torch.long)).shape == (2, 23, 16)


def test_rmsnorm_matches_its_formula():
    torch.manual_seed(0)
    norm = RMSNorm(8)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 5, 8) * 3 + 1
    reference = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    assert torch.allclose(norm(x), reference, atol=1e-6)


def test_swiglu_is_a_product_of_silu_and_a_linear_gate():
    torch.manual_seed(0)
    mlp = SwiGLU(dataclasses.replace(BASE, **LLAMA), 16)
    hidden = swiglu_hidden(16)
    assert hidden == 64 and mlp.c_fc.bias is None
    w1, w3 = mlp.c_fc.weight[:hidden], mlp.c_fc.weight[hidden:]
    x = torch.randn(4, 16)
    reference = (F.silu(x @ w1.T) * (x @ w3.T)) @ mlp.c_proj.weight.T
    assert torch.allclose(mlp(x), reference, atol=1e-6)


def test_rope_rotates_each_pair_by_position_times_frequency():
    head_dim, theta = 8, 10000.0
    rotary = Rotary(head_dim, 16, theta)
    x = torch.randn(2, 3, 16, head_dim)  # (B, heads, T, head_dim)
    out = apply_rotary(x, rotary.tables(0, 16))
    reference = torch.empty_like(x)
    half = head_dim // 2
    for t in range(16):
        for i in range(half):
            angle = t * theta ** (-2 * i / head_dim)
            c, s = math.cos(angle), math.sin(angle)
            a, b = x[..., t, i], x[..., t, i + half]
            reference[..., t, i] = a * c - b * s
            reference[..., t, i + half] = a * s + b * c
    assert torch.allclose(out, reference, atol=1e-5)
    # a later start continues the positions (what the KV cache relies on)
    assert torch.allclose(apply_rotary(x[..., 5:9, :], rotary.tables(5, 4)), out[..., 5:9, :], atol=1e-6)


def test_rope_scores_depend_only_on_the_offset():
    rotary = Rotary(16, 64, 10000.0)
    q, k = torch.randn(16), torch.randn(16)

    def score(m: int, n: int) -> float:
        qm = apply_rotary(q.view(1, 16), rotary.tables(m, 1))
        kn = apply_rotary(k.view(1, 16), rotary.tables(n, 1))
        return (qm * kn).sum().item()

    for m, n in ((5, 2), (9, 9), (3, 11)):
        assert score(m, n) == pytest.approx(score(m + 17, n + 17), abs=1e-4)
        assert score(m, n) == pytest.approx(score(m + 40, n + 40), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(6, 2), abs=1e-3)


def test_llama_attention_is_scaled_by_head_dim_and_has_no_bias():
    model = build("llama")
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]
    assert "wpe" not in model.transformer
    attn, x = model.transformer.h[0].attn, torch.randn(1, 7, 16)
    head_dim = 16 // 2
    q, k, v = (t.view(1, 7, 2, head_dim).transpose(1, 2) for t in attn.c_attn(x).split(16, 2))
    rope = model.rotary.tables(0, 7)
    q, k = apply_rotary(q, rope), apply_rotary(k, rope)
    scores = (q @ k.transpose(-1, -2)) * head_dim**-0.5
    scores = scores.masked_fill(torch.ones(7, 7).triu(1).bool(), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(1, 7, 16)
    out, _ = attn(x, rope=rope)
    assert torch.allclose(out, attn.c_proj(y), atol=1e-5)


@pytest.mark.parametrize(
    "name", ["llama", "conv_f3_levels2_llama", "progressive_stage1", "progressive_stage2"]
)
def test_cached_generation_equals_full_recomputation(name):
    model = build(name)
    prompt = torch.randint(BASE.vocab_size, (2, 4))
    out = generate(model, prompt, max_new_tokens=30, greedy=True)  # runs past block_size
    idx = prompt
    for _ in range(30):
        hidden = model.hidden_states(idx[:, -BASE.block_size :])
        idx = torch.cat([idx, model.variant.log_probs(hidden[:, -1]).argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, idx)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(norm="batchnorm"), "norm must be one of"),
        (dict(arch="conv", n_layer=2), "n_layer >= 3"),
        (dict(arch="conv", conv_factor=1), "conv_factor >= 2"),
        (dict(progressive_group=3, n_layer=6), "must be even"),
        (dict(progressive_group=4, n_layer=6), "divide n_layer"),
        (dict(progressive_group=2, arch="conv", n_layer=4), "needs arch=gpt"),
        (dict(n_head=3), "multiple of n_head"),
    ],
)
def test_bad_trunk_configs_are_one_clear_error(overrides, message):
    with pytest.raises(UserError, match=message):
        GPT(dataclasses.replace(BASE, **overrides))


def test_llama_story_config_builds_the_small_llama2_model():
    cfg = apply_config(TrainConfig(), [os.path.join(REPO, "config", "train_baseline_tinystories_llama.py")])
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size) == (8, 8, 256, 128, 4096)
    model = GPT(cfg.model_args())
    assert isinstance(model.transformer.ln_f, RMSNorm) and model.supports_kv_cache
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]
    assert isinstance(model.transformer.h[0].mlp, SwiGLU)
    assert 6e6 < model.num_params() < 8e6


# --- progressive diverging -------------------------------------------------------------


def test_progressive_layers_share_blocks_by_stage():
    model = build("progressive_stage1")
    h = model.transformer.h
    assert [id(b) for b in model.layer_blocks()] == [id(h[0])] * 4
    model.set_progressive_stage(2)
    assert [id(b) for b in model.layer_blocks()] == [id(h[0]), id(h[0]), id(h[2]), id(h[2])]
    assert [b.attn.lora_active for b in h] == [True, False, True, False]
    model.set_progressive_stage(3)
    assert [id(b) for b in model.layer_blocks()] == [id(b) for b in h]
    assert not any(b.attn.lora_active for b in h)
    model.set_progressive_stage(1)  # stages only advance
    assert model.stage == 3 and int(model.progressive_stage) == 3


def test_progressive_switches_keep_the_function():
    model = build("progressive_stage1")
    idx = torch.randint(BASE.vocab_size, (2, BASE.block_size))
    with torch.no_grad():
        before = model(idx)
        model.set_progressive_stage(2)  # copies + adapters that start at zero
        assert torch.equal(model(idx), before)
        randomize_adapters(model)
        adapted = model(idx)
        assert not torch.allclose(adapted, before)
        model.set_progressive_stage(3)  # adapters merged into the copies
        assert torch.allclose(model(idx), adapted, atol=1e-5)
    merged = [model.transformer.h[i].attn for i in (0, 2)]  # the half groups' adapters
    assert all((a.c_attn_lora_b == 0).all() and (a.c_proj_lora_b == 0).all() for a in merged)


def test_progressive_stage3_with_lora_keeps_the_function_at_the_switch():
    model = build("progressive_stage1", progressive_stage3_lora=True)
    idx = torch.randint(BASE.vocab_size, (2, BASE.block_size))
    with torch.no_grad():
        model.set_progressive_stage(2)
        randomize_adapters(model)  # stage 2 trained its adapters
        before = model.variant.logits(model(idx))
        model.set_progressive_stage(3)
        after = model.variant.logits(model(idx))
    assert torch.allclose(after, before, atol=1e-5)
    h = model.transformer.h
    assert [id(b) for b in model.layer_blocks()] == [id(b) for b in h]
    assert all(b.attn.lora_active for b in h)  # every layer adapts its own attention
    assert all((b.attn.c_attn_lora_b == 0).all() and (b.attn.c_proj_lora_b == 0).all() for b in h)


def changed_by_one_step(model: GPT, optimizer) -> set[str]:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    idx = torch.randint(BASE.vocab_size, (4, BASE.block_size))
    loss, _ = model.train()(idx, torch.roll(idx, -1, dims=1))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


@pytest.mark.parametrize("stage3_lora", [False, True])
def test_each_progressive_stage_trains_exactly_its_parameters(stage3_lora):
    model = build("progressive_stage1", progressive_stage3_lora=stage3_lora)
    cfg = dataclasses.replace(TrainConfig(), learning_rate=1e-2, weight_decay=0.1)
    optimizer = build_optimizer(model, cfg, "cpu")  # built once: everything is in it from the start
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in model.parameters()}
    names = [n for n, _ in model.named_parameters()]

    def block(i, part=""):
        return {n for n in names if n.startswith(f"transformer.h.{i}.{part}") and "lora" not in n}

    def lora(i):
        return {n for n in names if n.startswith(f"transformer.h.{i}.") and "lora" in n}

    shared = {
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.ln_f.weight",
        "transformer.ln_f.bias",
    }
    sizes = {n: p.numel() for n, p in model.named_parameters()}

    def step_changes(expected: set[str]) -> None:
        assert changed_by_one_step(model, optimizer) == expected
        # what the stage-switch log line counts as trainable
        counted = progressive.trainable_parameters(model, model.transformer.h, model.stage)
        assert counted == sum(sizes[n] for n in expected)

    # stage 1: one block for all four layers
    step_changes(shared | block(0))
    # stage 2: the half groups' blocks 0 and 2; attention only through the adapters
    model.set_progressive_stage(2)
    frozen_attention = {n for n in block(0) | block(2) if ".attn." in n}
    step_changes(shared | ((block(0) | block(2)) - frozen_attention) | lora(0) | lora(2))
    model.set_progressive_stage(3)
    every_block = block(0) | block(1) | block(2) | block(3)
    if stage3_lora:  # the source's stage 3: every layer's block, its attention through its adapters
        attention = {n for n in every_block if ".attn." in n}
        step_changes(shared | (every_block - attention) | lora(0) | lora(1) | lora(2) | lora(3))
    else:  # every layer's block, the adapters no more
        step_changes(shared | every_block)


def read_log(cfg, kind):
    with open(os.path.join(cfg.log_dir, cfg.run_name, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def test_progressive_resume_across_a_stage_boundary_equals_an_uninterrupted_run(char_data, tmp_path):
    common = dict(
        dropout=0.1,
        lr_decay_iters=20,
        eval_interval=10,
        gradient_accumulation_steps=2,
        n_layer=4,
        progressive_group=4,
        progressive_iters=20,
        progressive_stage2=0.25,
        progressive_stage3=0.5,
    )
    straight = tiny_config(char_data, tmp_path / "a", max_iters=20, **common)
    train(straight)
    half = tiny_config(char_data, tmp_path / "b", max_iters=7, **common)  # stops in stage 2
    train(half)
    model, ckpt = load_model(os.path.join(half.out_dir, "ckpt.pt"))
    assert ckpt["iter_num"] == 7 and model.stage == 2  # sampling from it uses stage 2
    assert [b.attn.lora_active for b in model.transformer.h] == [True, False, True, False]
    train(dataclasses.replace(half, max_iters=20, init_from="resume"))  # crosses into stage 3
    a = load_checkpoint(os.path.join(straight.out_dir, "ckpt.pt"))
    b = load_checkpoint(os.path.join(half.out_dir, "ckpt.pt"))
    assert a["iter_num"] == b["iter_num"] == 20 and int(b["model"]["progressive_stage"]) == 3
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    losses_a = [(r["iter"], r["loss"]) for r in read_log(straight, "train")]
    assert losses_a == [(r["iter"], r["loss"]) for r in read_log(half, "train")]


# --- every architecture x every variant through the one loop -------------------------------

TRAINED_ARCHITECTURES = {
    "gpt": {},
    "llama": LLAMA,
    "conv": dict(arch="conv", n_layer=3),
    # stage 2 from iteration 2, stage 3 from 4
    "progressive": dict(progressive_group=2, progressive_stage2=0.25, progressive_stage3=0.5),
}


# distill learns from a teacher: tests/test_augmentation.py trains it with one
@pytest.mark.parametrize("variant", [name for name, v in VARIANTS.items() if not v.uses_teacher_probs])
@pytest.mark.parametrize("arch", list(TRAINED_ARCHITECTURES))
def test_every_architecture_trains_every_variant(arch, variant, char_data, tmp_path):
    cfg = tiny_config(
        char_data,
        tmp_path,
        variant=variant,
        max_iters=8,
        eval_interval=8,
        eval_iters=1,
        **TRAINED_ARCHITECTURES[arch],
    )
    metrics = train(cfg)
    losses = [r["loss"] for r in read_log(cfg, "train")]
    assert len(losses) == 8 and all(loss is not None and math.isfinite(loss) for loss in losses)
    assert min(losses[-3:]) < losses[0]
    assert math.isfinite(metrics["val/nll"])
    if arch == "progressive":
        assert int(load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))["model"]["progressive_stage"]) == 3
