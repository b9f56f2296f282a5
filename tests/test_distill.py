"""distill and the head controls: each loss against a dense F.cross_entropy reference in value and
gradient, the soft-target kernel with padding and repeated ids, and the errors a user can cause."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from nanoGPT.augment import build_augmenter
from nanoGPT.config import TrainConfig
from nanoGPT.errors import UserError
from nanoGPT.losses import soft_target_cross_entropy
from nanoGPT.model import GPT
from nanoGPT.train import build_optimizer
from nanoGPT.variants import VARIANTS, build_variant
from nanoGPT.variants.base import ExtraTargets
from tests.test_variants import V, config, text_batch, tiny_gpt

NEW = ["distill", "baseline_untied", "baseline_bias"]


def teacher_targets(targets: torch.Tensor, k: int = 4, seed: int = 0) -> ExtraTargets:
    """(..., k) candidates as the augmenter hands them: distinct ids, most likely first, with
    log-probs; the true token among them at some positions, padding after a filter at others,
    and one position with no candidate at all."""
    generator = torch.Generator().manual_seed(seed)
    shape = (*targets.shape, k)
    ids = torch.stack([(targets + 1 + 5 * j) % V for j in range(k)], dim=-1)
    ids[..., 1, 0] = targets[..., 1]  # the true token is the teacher's first guess here
    log_probs = torch.randn(shape, generator=generator).sort(dim=-1, descending=True).values - 1.0
    dropped = torch.rand(shape, generator=generator) < 0.3
    dropped[..., 0] = False
    dropped[..., 2, :] = True  # every candidate filtered out: the true token alone
    ids = torch.where(dropped, -1, ids)
    return ExtraTargets(ids, torch.where(dropped, -torch.inf, log_probs))


def dense_distill_target(targets, extra: ExtraTargets, alpha: float, temperature: float) -> torch.Tensor:
    """The definition, one position at a time: alpha * onehot(true) + (1 - alpha) * q with
    q_i = p_i^(1/tau) / sum_j p_j^(1/tau) over the kept candidates; the one-hot where none is."""
    flat_targets = targets.reshape(-1).tolist()
    flat_ids = extra.ids.reshape(len(flat_targets), -1).tolist()
    flat_log_probs = extra.log_probs.reshape(len(flat_targets), -1).tolist()
    dense = torch.zeros(len(flat_targets), V, dtype=torch.float64)
    for row, (true, ids, log_probs) in enumerate(zip(flat_targets, flat_ids, flat_log_probs)):
        kept = [(i, math.exp(lp) ** (1 / temperature)) for i, lp in zip(ids, log_probs) if i >= 0]
        if not kept:
            dense[row, true] = 1.0
            continue
        dense[row, true] += alpha
        total = sum(p for _, p in kept)
        for i, p in kept:
            dense[row, i] += (1 - alpha) * p / total
    return dense


def test_registry_builds_the_new_variants():
    for name in NEW:
        variant = build_variant(config(name))
        assert isinstance(variant, VARIANTS[name]) and variant.name == name
    assert VARIANTS["distill"].uses_teacher_probs and VARIANTS["distill"].uses_extra_positives
    assert not any(VARIANTS[name].uses_extra_positives for name in ["baseline_untied", "baseline_bias"])


# --- the kernel -------------------------------------------------------------------------------


def test_soft_target_cross_entropy_equals_torch_with_padding_and_repeated_ids():
    torch.manual_seed(0)
    logits = (torch.randn(3, 5, V, dtype=torch.float64) * 4).requires_grad_()
    ids = torch.randint(0, V, (3, 5, 4))
    ids[..., 1] = ids[..., 0]  # a repeated id: its weights add up
    ids[..., 3] = -1  # padding: weight 0 whatever is written there
    weights = torch.rand(3, 5, 4, dtype=torch.float64)
    weights[..., 3] = 0.7
    weights[..., :3] /= weights[..., :3].sum(-1, keepdim=True)
    dense = torch.zeros(15, V, dtype=torch.float64)
    for row, (row_ids, row_weights) in enumerate(zip(ids.view(15, 4).tolist(), weights.view(15, 4).tolist())):
        for i, w in zip(row_ids, row_weights):
            if i >= 0:
                dense[row, i] += w
    ours = soft_target_cross_entropy(logits, ids, weights)
    reference = F.cross_entropy(logits.view(-1, V), dense, reduction="none")
    torch.testing.assert_close(ours, reference)
    upstream = torch.rand(15, dtype=torch.float64)
    (ours_grad,) = torch.autograd.grad((ours * upstream).sum(), logits)
    (reference_grad,) = torch.autograd.grad((reference * upstream).sum(), logits)
    torch.testing.assert_close(ours_grad, reference_grad)
    small = logits.detach()[:1, :2].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z: soft_target_cross_entropy(z, ids[:1, :2], weights[:1, :2]), (small,)
    )


# --- distill against the dense reference -----------------------------------------------------


@pytest.mark.parametrize("alpha, temperature", [(0.5, 1.0), (0.3, 2.0), (0.0, 0.5), (1.0, 1.0)])
def test_distill_loss_is_cross_entropy_against_the_dense_target(alpha, temperature):
    model = tiny_gpt("distill", distill_alpha=alpha, distill_temperature=temperature)
    x, y = text_batch()
    extra = teacher_targets(y)
    hidden = model.hidden_states(x).detach().requires_grad_()
    weight = model.variant.lm_head.weight
    loss, stats = model.variant.loss(hidden, y, extra)
    dense = dense_distill_target(y, extra, alpha, temperature).float()
    logits = model.variant.logits(hidden)
    reference = F.cross_entropy(logits.view(-1, V), dense)
    torch.testing.assert_close(loss, reference)
    ours_grads = torch.autograd.grad(loss, (hidden, weight))
    for ours, theirs in zip(ours_grads, torch.autograd.grad(reference, (hidden, weight))):
        torch.testing.assert_close(ours, theirs)
    # the teacher's share of the target: 1 - alpha where it kept a candidate, 0 where none
    has_teacher = (extra.ids >= 0).any(-1).float()
    torch.testing.assert_close(stats["teacher_weight"], ((1 - alpha) * has_teacher).mean())


def test_distill_with_alpha_one_is_the_baseline_loss():
    x, y = text_batch()
    distill, baseline = tiny_gpt("distill", distill_alpha=1.0), tiny_gpt("baseline")
    torch.testing.assert_close(distill(x, y, teacher_targets(y))[0], baseline(x, y)[0])


def test_distill_refuses_bare_ids_and_bad_settings():
    model = tiny_gpt("distill")
    x, y = text_batch()
    with pytest.raises(UserError, match="augment=True"):
        model(x, y, teacher_targets(y).ids)
    with pytest.raises(UserError, match="distill_alpha"):
        tiny_gpt("distill", distill_alpha=1.5)
    with pytest.raises(UserError, match="distill_temperature"):
        tiny_gpt("distill", distill_temperature=0.0)


def test_distill_needs_the_augmenter_at_every_position(tmp_path):
    cfg = TrainConfig(variant="distill", vocab_size=V, n_layer=1, n_head=2, n_embd=16, block_size=8)
    model = GPT(cfg.model_args())
    with pytest.raises(UserError, match="set augment=True"):
        build_augmenter(cfg, model, None, "cpu")
    for positions in ["one", "0.5"]:
        with pytest.raises(UserError, match="augment_positions=all"):
            build_augmenter(
                dataclasses.replace(cfg, augment=True, augment_positions=positions), model, None, "cpu"
            )


# --- the controls -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["baseline_untied", "baseline_bias"])
def test_controls_are_softmax_cross_entropy_on_their_head(name):
    model = tiny_gpt(name)
    head = model.variant.lm_head
    with torch.no_grad():
        if head.bias is not None:  # a bias away from its zero start, so that it counts
            head.bias.copy_(torch.randn(V))
    x, y = text_batch()
    hidden = model.hidden_states(x).detach().requires_grad_()
    params = (hidden, *head.parameters())
    loss, _ = model.variant.loss(hidden, y)
    reference = F.cross_entropy(F.linear(hidden, head.weight, head.bias).view(-1, V), y.view(-1))
    torch.testing.assert_close(loss, reference)
    for ours, theirs in zip(torch.autograd.grad(loss, params), torch.autograd.grad(reference, params)):
        torch.testing.assert_close(ours, theirs)


def test_untied_control_has_its_own_head_and_bias_control_a_tied_one():
    untied, biased = tiny_gpt("baseline_untied"), tiny_gpt("baseline_bias")
    assert untied.variant.lm_head.weight is not untied.transformer.wte.weight
    assert untied.variant.lm_head.bias is None
    assert 0.01 < untied.variant.lm_head.weight.std().item() < 0.03  # the embedding's init
    embedding = torch.randn(V, 16)
    untied.variant.init_head_from(embedding)  # a GPT-2 import starts it from the embedding
    torch.testing.assert_close(untied.variant.lm_head.weight.detach(), embedding)
    assert biased.variant.lm_head.weight is biased.transformer.wte.weight
    assert torch.equal(biased.variant.lm_head.bias, torch.zeros(V))
    optimizer = build_optimizer(biased, TrainConfig(weight_decay=0.1), "cpu")
    decayed = {
        id(p) for group in optimizer.param_groups if group["weight_decay"] > 0 for p in group["params"]
    }
    assert id(biased.variant.lm_head.bias) not in decayed
    assert id(biased.variant.lm_head.weight) in decayed


# --- all three: a normalised predictive, gradients, training ---------------------------------


def extra_for(name: str, y: torch.Tensor) -> ExtraTargets | None:
    return teacher_targets(y) if VARIANTS[name].uses_teacher_probs else None


@pytest.mark.parametrize("name", NEW)
def test_new_variants_predict_softmax_and_train(name):
    model = tiny_gpt(name)
    x, y = text_batch()
    with torch.no_grad():
        hidden = model.hidden_states(x)
        log_probs = model.variant.log_probs(hidden)
        evaluated, _ = model.variant.evaluate(hidden, y)
    torch.testing.assert_close(log_probs, F.log_softmax(model.variant.logits(hidden), dim=-1))
    torch.testing.assert_close(evaluated.exp().sum(-1), torch.ones(y.shape))
    extra = extra_for(name, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model(x, y, extra)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    for param_name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, param_name
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss, _ = model(x, y, extra)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5]), losses
