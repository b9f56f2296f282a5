"""The output-objective variants: each loss against a dense reference, the predictive
distributions, the Bayesian KL and uncertainty, gradients, and the registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nanoGPT.config import ModelConfig
from nanoGPT.errors import UserError
from nanoGPT.losses import GaussianPosteriorSample, softmax_cross_entropy, sparse_bce
from nanoGPT.model import GPT
from nanoGPT.variants import VARIANTS, build_variant
from nanoGPT.variants.bayes import VariationalLinear
from nanoGPT.variants.sigmoid import normalised_sigmoid_log_probs

V, C = 37, 16
ALL = ["baseline", "smooth", "sigmoid", "bayes", "bayes_sigmoid"]
BAYESIAN = ["bayes", "bayes_sigmoid"]
SIGMOID = ["sigmoid", "bayes_sigmoid"]
TEXT = "the quick brown fox jumps over the lazy dog. the dog sleeps; the fox runs away!\n"


def config(variant: str, **overrides) -> ModelConfig:
    values = dict(
        n_layer=1,
        n_head=2,
        n_embd=C,
        block_size=8,
        vocab_size=V,
        variant=variant,
        kl_num_tokens=1000,
        bayes_samples=4,
    )
    values.update(overrides)
    return ModelConfig(**values)


def tiny_gpt(variant: str, seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(config(variant, **overrides))


def text_batch(batch_size: int = 4, block_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) inputs and next-token targets from real text, character ids < V."""
    chars = sorted(set(TEXT))
    assert len(chars) <= V
    ids = torch.tensor([chars.index(c) for c in TEXT])
    starts = torch.arange(batch_size) * 7
    x = torch.stack([ids[s : s + block_size] for s in starts])
    y = torch.stack([ids[s + 1 : s + 1 + block_size] for s in starts])
    return x, y


def extras_with_duplicates(targets: torch.Tensor) -> torch.Tensor:
    """(..., 4) extra positives: the true token again, a duplicate pair, -1 padding."""
    other = (targets + 3) % V
    padding = torch.full_like(targets, -1)
    extra = torch.stack([targets, other, other, padding], dim=-1)
    extra[..., 0, :] = -1  # a position with no extra positive at all
    return extra


def dense_multi_hot(targets: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    dense = F.one_hot(targets, V).float()
    flat = dense.view(-1, V)
    for row, ids in enumerate(extra.reshape(flat.size(0), -1).tolist()):
        for token in ids:
            if token >= 0:
                flat[row, token] = 1.0
    return dense


def dense_bce(logits: torch.Tensor, targets, extra, pos_weight: float) -> torch.Tensor:
    """Reference: BCE with a dense multi-hot target, summed over V, mean over positions."""
    weight = torch.full((V,), pos_weight)
    per_entry = F.binary_cross_entropy_with_logits(
        logits, dense_multi_hot(targets, extra), pos_weight=weight, reduction="none"
    )
    return per_entry.sum(-1).mean()


def mean_field_logits(head: VariationalLinear, hidden: torch.Tensor, eps: torch.Tensor):
    """Reference sampled logits of the local reparameterisation, written out by hand."""
    weight_sigma, bias_sigma = head.sigmas()
    mean = hidden @ head.weight_mu.T + head.bias_mu
    var = hidden.square() @ weight_sigma.square().T + bias_sigma.square()
    return mean + var.sqrt() * eps


def randomise_posterior(head: VariationalLinear, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (head.weight_mu, head.bias_mu):
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        for p in (head.weight_theta, head.bias_theta):  # sigma = softplus(N(-1, 1)), as before
            sigma = F.softplus(torch.randn(p.shape, generator=generator) - 1.0)
            p.copy_(sigma.log() / head.sigma_scale)


# --- registry -------------------------------------------------------------------------------


def test_registry_builds_every_variant_by_name():
    assert set(ALL) <= set(VARIANTS)
    for name in ALL:
        variant = build_variant(config(name))
        assert isinstance(variant, VARIANTS[name]) and variant.name == name


def test_unknown_variant_is_a_user_error():
    with pytest.raises(UserError, match="unknown variant 'sigmoidd'"):
        build_variant(config("sigmoidd"))


# --- losses against dense references ----------------------------------------------------------


@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_smooth_loss_is_label_smoothed_cross_entropy(eps):
    model = tiny_gpt("smooth", label_smoothing=eps)
    x, y = text_batch()
    loss, _ = model(x, y)
    logits = model.variant.logits(model.hidden_states(x))
    reference = F.cross_entropy(logits.view(-1, V), y.view(-1), label_smoothing=eps)
    torch.testing.assert_close(loss, reference)
    assert not torch.allclose(loss, F.cross_entropy(logits.view(-1, V), y.view(-1)))


def test_softmax_cross_entropy_equals_torch_in_value_and_gradient():
    torch.manual_seed(0)
    logits = (torch.randn(3, 5, V, dtype=torch.float64) * 4).requires_grad_()
    targets = torch.randint(0, V, (3, 5))
    ours = softmax_cross_entropy(logits, targets)
    reference = F.cross_entropy(logits.view(-1, V), targets.view(-1), reduction="none")
    torch.testing.assert_close(ours, reference)
    upstream = torch.rand(15, dtype=torch.float64)
    (ours_grad,) = torch.autograd.grad((ours * upstream).sum(), logits)
    (reference_grad,) = torch.autograd.grad((reference * upstream).sum(), logits)
    torch.testing.assert_close(ours_grad, reference_grad)
    small = logits.detach()[:1, :2].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda z: softmax_cross_entropy(z, targets[:1, :2], 0.7), (small,))


@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_smooth_gradient_is_label_smoothed_cross_entropy_gradient(eps):
    """smooth's mean-logit shortcut h . mean_v(W_v): the same gradients as PyTorch's definition."""
    model = tiny_gpt("smooth", label_smoothing=eps)
    x, y = text_batch()
    hidden = model.hidden_states(x).detach().requires_grad_()
    weight = model.variant.lm_head.weight
    ours = torch.autograd.grad(model.variant.loss(hidden, y)[0], (hidden, weight))
    logits = model.variant.logits(hidden)
    reference = F.cross_entropy(logits.view(-1, V), y.view(-1), label_smoothing=eps)
    for a, b in zip(ours, torch.autograd.grad(reference, (hidden, weight))):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("pos_weight", [1.0, 2.5, 0.5])
def test_sparse_bce_equals_dense_bce(pos_weight):
    torch.manual_seed(0)
    logits = torch.randn(2, 5, V) * 3
    targets = torch.randint(0, V, (2, 5))
    extra = extras_with_duplicates(targets)
    per_position, num_positives = sparse_bce(logits, targets, extra, pos_weight)
    torch.testing.assert_close(per_position.mean(), dense_bce(logits, targets, extra, pos_weight))
    dense = dense_multi_hot(targets, extra)
    assert num_positives.tolist() == dense.sum(-1).view(-1).long().tolist()
    assert num_positives.view(2, 5)[:, 0].tolist() == [1, 1]  # only the true token


@pytest.mark.parametrize("pos_weight", [1.0, 2.5])
def test_sparse_bce_gradient_equals_dense_bce_gradient(pos_weight):
    torch.manual_seed(1)
    logits = (torch.randn(3, 4, V, dtype=torch.float64) * 3).requires_grad_()
    targets = torch.randint(0, V, (3, 4))
    extra = extras_with_duplicates(targets)
    sparse_bce(logits, targets, extra, pos_weight)[0].mean().backward()
    sparse_grad, logits.grad = logits.grad, None
    weight = torch.full((V,), pos_weight, dtype=torch.float64)
    dense_target = dense_multi_hot(targets, extra).double()
    F.binary_cross_entropy_with_logits(logits, dense_target, pos_weight=weight, reduction="none").sum(
        -1
    ).mean().backward()
    torch.testing.assert_close(sparse_grad, logits.grad)
    # and against finite differences
    small = logits.detach()[:1, :2].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z: sparse_bce(z, targets[:1, :2], extra[:1, :2], pos_weight)[0], (small,)
    )


def test_sparse_bce_without_extras_is_one_hot_bce():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, V), torch.randint(0, V, (6,))
    per_position, num_positives = sparse_bce(logits, targets, None)
    empty = torch.empty(6, 0, dtype=torch.long)
    torch.testing.assert_close(per_position.mean(), dense_bce(logits, targets, empty, 1.0))
    torch.testing.assert_close(sparse_bce(logits, targets, empty)[0], per_position)
    assert num_positives.tolist() == [1] * 6


@pytest.mark.parametrize("pos_weight", [1.0, 3.0])
def test_sigmoid_loss_through_gpt_equals_dense_bce(pos_weight):
    model = tiny_gpt("sigmoid", pos_weight=pos_weight)
    x, y = text_batch()
    extra = extras_with_duplicates(y)
    loss, stats = model(x, y, extra)
    logits = model.variant.logits(model.hidden_states(x))
    torch.testing.assert_close(loss, dense_bce(logits, y, extra, pos_weight))
    expected_positives = dense_multi_hot(y, extra).sum(-1).mean()
    torch.testing.assert_close(stats["positives"], expected_positives)


def test_sigmoid_bias_starts_every_probability_near_one_over_v():
    for name in SIGMOID:
        model = tiny_gpt(name)
        head = model.variant.lm_head
        bias = head.bias if name == "sigmoid" else head.bias_mu
        torch.testing.assert_close(bias, torch.full((V,), -math.log(V - 1)))
        assert bias.no_weight_decay
        x, y = text_batch()
        loss, stats = model(x, y)
        bce = stats.get("bce", loss)  # bayes_sigmoid: the data term, without the KL
        # ~1 + log(V - 1) per position, far below the 0.69 * V of a zero bias
        assert bce.item() < 2 + math.log(V) < 0.69 * V


def test_bayes_loss_is_sampled_cross_entropy_plus_scaled_kl():
    model = tiny_gpt("bayes", kl_weight=0.3, kl_num_tokens=500, bayes_estimator="local")
    head = model.variant.lm_head
    randomise_posterior(head)
    x, y = text_batch()
    hidden = model.hidden_states(x).detach()
    torch.manual_seed(123)
    loss, stats = model.variant.loss(hidden, y)
    torch.manual_seed(123)
    logits = mean_field_logits(head, hidden, torch.randn(*y.shape, V))
    nll = F.cross_entropy(logits.view(-1, V), y.view(-1))
    kl = head.kl() / 500
    torch.testing.assert_close(loss, nll + 0.3 * kl)
    torch.testing.assert_close(stats["nll"], nll)
    torch.testing.assert_close(stats["kl"], kl)
    assert not stats["nll"].requires_grad and not stats["kl"].requires_grad


def test_bayes_sigmoid_loss_is_sampled_bce_plus_scaled_kl():
    model = tiny_gpt(
        "bayes_sigmoid", kl_weight=2.0, kl_num_tokens=100, pos_weight=1.5, bayes_estimator="local"
    )
    head = model.variant.lm_head
    randomise_posterior(head)
    x, y = text_batch()
    extra = extras_with_duplicates(y)
    hidden = model.hidden_states(x).detach()
    torch.manual_seed(7)
    loss, stats = model.variant.loss(hidden, y, extra)
    torch.manual_seed(7)
    logits = mean_field_logits(head, hidden, torch.randn(*y.shape, V))
    bce = dense_bce(logits, y, extra, 1.5)
    torch.testing.assert_close(loss, bce + 2.0 * head.kl() / 100)
    torch.testing.assert_close(stats["bce"], bce)
    assert "positives" in stats


@pytest.mark.parametrize("name", BAYESIAN)
def test_bayes_weight_estimator_is_one_shared_weight_sample_plus_scaled_kl(name):
    model = tiny_gpt(name, kl_weight=0.5, kl_num_tokens=200, bayes_estimator="weight")
    head = model.variant.lm_head
    randomise_posterior(head)
    x, y = text_batch()
    hidden = model.hidden_states(x).detach()
    torch.manual_seed(11)
    loss, _ = model.variant.loss(hidden, y)
    torch.manual_seed(11)
    weight_sigma, bias_sigma = head.sigmas()
    weight = head.weight_mu + weight_sigma * torch.randn_like(head.weight_mu)
    bias = head.bias_mu + bias_sigma * torch.randn_like(head.bias_mu)
    logits = hidden @ weight.T + bias
    if name == "bayes":
        data = F.cross_entropy(logits.view(-1, V), y.view(-1))
    else:
        data = dense_bce(logits, y, extras_with_duplicates(y)[..., :0], 1.0)
    torch.testing.assert_close(loss, data + 0.5 * head.kl() / 200)


def test_kl_is_the_closed_form_over_every_weight_and_bias():
    head = VariationalLinear(C, V, prior_sigma=0.7, init_sigma=1e-3, sigma_scale=10.0)
    randomise_posterior(head)
    prior_sigma = 0.7
    expected = 0.0
    for mu, sigma in zip((head.weight_mu, head.bias_mu), head.sigmas()):
        expected = (
            expected
            + (torch.log(prior_sigma / sigma) + (sigma**2 + mu**2) / (2 * prior_sigma**2) - 0.5).sum()
        )
    torch.testing.assert_close(head.kl(), expected)
    # the bias alone must move it: a KL that ignored it (or the weight) would not
    with torch.no_grad():
        head.bias_mu.add_(1.0)
    assert head.kl().item() > expected.item() + V / (2 * prior_sigma**2) * 0.9


def test_bayes_without_kl_num_tokens_is_a_user_error():
    for name in BAYESIAN:
        model = tiny_gpt(name, kl_num_tokens=0)
        x, y = text_batch()
        with pytest.raises(UserError, match="kl_num_tokens"):
            model(x, y)


def test_bayes_parameters_skip_weight_decay_and_init_from_embedding():
    model = tiny_gpt("bayes")
    head = model.variant.lm_head
    assert model.transformer.wte.weight is not head.weight_mu
    for p in head.parameters():
        assert getattr(p, "no_weight_decay", False)
    weight_sigma, bias_sigma = head.sigmas()
    torch.testing.assert_close(weight_sigma, torch.full((V, C), 1e-3))
    torch.testing.assert_close(bias_sigma, torch.full((V,), 1e-3))
    assert 0.01 < head.weight_mu.std().item() < 0.03
    embedding = torch.randn(V, C)
    model.variant.init_head_from(embedding)
    torch.testing.assert_close(head.weight_mu.detach(), embedding)


def test_tied_variants_share_the_embedding():
    for name in ["baseline", "smooth", "sigmoid"]:
        model = tiny_gpt(name)
        assert model.transformer.wte.weight is model.variant.lm_head.weight


# --- predictive distributions ---------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_log_probs_are_normalised(name):
    model = tiny_gpt(name)
    x, y = text_batch()
    with torch.no_grad():
        hidden = model.hidden_states(x)
        log_probs = model.variant.log_probs(hidden)
        evaluated, stats = model.variant.evaluate(hidden, y)
    for lp in (log_probs, evaluated):
        assert lp.shape == (*y.shape, V)
        torch.testing.assert_close(lp.exp().sum(-1), torch.ones(y.shape))
    for value in stats.values():
        assert value.shape == y.shape and torch.isfinite(value).all()


def test_sigmoid_predictive_normalises_each_row_on_its_own():
    model = tiny_gpt("sigmoid")
    with torch.no_grad():
        model.variant.lm_head.bias.normal_()
    hidden = torch.randn(2, C) * torch.tensor([[0.1], [10.0]])
    with torch.no_grad():
        both = model.variant.log_probs(hidden)
        rows = torch.cat([model.variant.log_probs(hidden[i : i + 1]) for i in range(2)])
        logits = model.variant.logits(hidden)
    torch.testing.assert_close(both, rows)
    sigma = torch.sigmoid(logits)
    torch.testing.assert_close(both.exp(), sigma / sigma.sum(-1, keepdim=True))
    assert not torch.allclose(both[0], both[1])


def test_normalised_sigmoid_is_stable_for_very_negative_logits():
    logits = torch.tensor([[-200.0, -210.0, -220.0], [0.0, 1.0, 2.0]])
    log_probs = normalised_sigmoid_log_probs(logits)
    assert torch.isfinite(log_probs).all()
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2))
    # far in the tail sigma(z) ~ exp(z): the normalised scores are a softmax
    torch.testing.assert_close(log_probs[0], F.log_softmax(logits[0], -1))


def test_bayes_sigmoid_predictive_rows_match_single_rows_when_deterministic():
    model = tiny_gpt("bayes_sigmoid")
    with torch.no_grad():
        model.variant.lm_head.weight_theta.fill_(-3.0)  # sigma = e^-30
        model.variant.lm_head.bias_theta.fill_(-3.0)
        hidden = torch.randn(2, C)
        both = model.variant.log_probs(hidden)
        rows = torch.cat([model.variant.log_probs(hidden[i : i + 1]) for i in range(2)])
        mean_logits = model.variant.logits(hidden)
    torch.testing.assert_close(both, rows)
    torch.testing.assert_close(both, normalised_sigmoid_log_probs(mean_logits))


@pytest.mark.parametrize("name", BAYESIAN)
def test_bayesian_samples_differ_and_mutual_information_is_nonnegative(name):
    model = tiny_gpt(name)
    randomise_posterior(model.variant.lm_head)
    x, y = text_batch()
    with torch.no_grad():
        hidden = model.hidden_states(x)
        samples = model.variant.lm_head.sample_logits(hidden, 5)
        assert samples.shape == (5, *y.shape, V)
        assert (samples[0] - samples[1]).abs().min() > 0
        log_probs, stats = model.variant.evaluate(hidden, y)
    assert (stats["mutual_information"] >= 0).all()
    assert stats["mutual_information"].mean() > 1e-3
    # stats and log-probs come from the same samples: H[exp(log_probs)] is the predictive entropy
    predictive = -(log_probs.exp() * log_probs).sum(-1)
    torch.testing.assert_close(stats["predictive_entropy"], predictive)
    torch.testing.assert_close(
        stats["predictive_entropy"] - stats["expected_entropy"], stats["mutual_information"]
    )


@pytest.mark.parametrize("name", BAYESIAN)
def test_mutual_information_vanishes_without_posterior_uncertainty(name):
    model = tiny_gpt(name)
    with torch.no_grad():
        model.variant.lm_head.weight_theta.fill_(-3.0)  # sigma = e^-30
        model.variant.lm_head.bias_theta.fill_(-3.0)
        x, y = text_batch()
        hidden = model.hidden_states(x)
        log_probs, stats = model.variant.evaluate(hidden, y)
    assert stats["mutual_information"].max() < 1e-6
    torch.testing.assert_close(log_probs, model.variant.log_probs(hidden, samples=2))


def test_bayes_log_probs_average_the_sampled_softmaxes():
    """Fewer rows than input features: a weight sample per row (local reparameterisation)."""
    model = tiny_gpt("bayes")
    randomise_posterior(model.variant.lm_head)
    hidden = torch.randn(3, C)
    with torch.no_grad():
        torch.manual_seed(5)
        log_probs = model.variant.log_probs(hidden, samples=6)
        torch.manual_seed(5)
        eps = torch.stack([torch.randn(3, V) for _ in range(6)])
        logits = mean_field_logits(model.variant.lm_head, hidden, eps)
    torch.testing.assert_close(log_probs.exp(), F.softmax(logits, -1).mean(0))


def test_bayes_log_probs_with_a_weight_sample_shared_by_the_rows():
    """At least as many rows as input features: one weight sample per draw, shared by the rows."""
    model = tiny_gpt("bayes")
    head = model.variant.lm_head
    randomise_posterior(head)
    hidden = torch.randn(2 * C, C)
    weight_sigma, bias_sigma = head.sigmas()
    with torch.no_grad():
        torch.manual_seed(5)
        log_probs = model.variant.log_probs(hidden, samples=4)
        torch.manual_seed(5)
        probs = []
        for _ in range(4):
            weight = head.weight_mu + weight_sigma * torch.randn(V, C)
            bias = head.bias_mu + bias_sigma * torch.randn(V)
            probs.append(F.softmax(hidden @ weight.T + bias, -1))
    torch.testing.assert_close(log_probs.exp(), torch.stack(probs).mean(0))


def test_sigmoid_evaluate_reports_sigmoid_stats_of_the_logits():
    model = tiny_gpt("sigmoid")
    x, y = text_batch()
    with torch.no_grad():
        hidden = model.hidden_states(x)
        _, stats = model.variant.evaluate(hidden, y)
        logits = model.variant.logits(hidden)
    z_true = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(stats["sigma_true"], torch.sigmoid(z_true))
    one_hot_bce = F.binary_cross_entropy_with_logits(logits, F.one_hot(y, V).float(), reduction="none").sum(
        -1
    )
    torch.testing.assert_close(stats["bce"], one_hot_bce)


# --- training -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_every_head_parameter(name):
    model = tiny_gpt(name)
    x, y = text_batch()
    loss, _ = model(x, y, extras_with_duplicates(y))
    loss.backward()
    for param_name, p in model.variant.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, param_name
    for param_name, p in model.named_parameters():
        assert p.grad is not None, param_name


@pytest.mark.parametrize("name", ALL)
def test_loss_falls_and_autocast_is_safe(name):
    model = tiny_gpt(name, kl_num_tokens=10_000)
    x, y = text_batch()
    extra = extras_with_duplicates(y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = model(x, y, extra)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    losses = []
    for _ in range(25):
        loss, _ = model(x, y, extra)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5]), losses


@pytest.mark.parametrize("draw", [True, False])
def test_fused_posterior_sample_and_kl_equal_autograd_through_pyro(draw):
    """The fused sample + closed-form KL that training uses, against autograd through the
    plain sample and pyro's kl_divergence (VariationalLinear.kl): values and gradients."""
    head = VariationalLinear(C, V, prior_sigma=0.7, init_sigma=1e-3, sigma_scale=10.0)
    randomise_posterior(head)
    upstream = torch.randn(V, C)
    params = (head.weight_mu, head.weight_theta, head.bias_mu, head.bias_theta)

    def gradients(loss: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.autograd.grad(loss, params))

    torch.manual_seed(5)
    sample, weight_kl, moments = GaussianPosteriorSample.apply(
        head.weight_mu, head.weight_theta, 10.0, 0.7, draw
    )
    fused_kl = weight_kl + GaussianPosteriorSample.apply(head.bias_mu, head.bias_theta, 10.0, 0.7, draw)[1]
    fused_loss = 0.3 * fused_kl + ((sample * upstream).sum() if draw else 0)
    torch.manual_seed(5)
    weight_sigma = head.sigmas()[0]
    reference_sample = head.weight_mu + weight_sigma * torch.randn(V, C)
    torch.testing.assert_close(moments, torch.stack([weight_sigma.sum(), weight_sigma.square().sum()]))
    reference_loss = 0.3 * head.kl() + ((reference_sample * upstream).sum() if draw else 0)
    torch.testing.assert_close(fused_kl, head.kl())
    torch.testing.assert_close(head.fused_kl(), head.kl())
    if draw:
        torch.testing.assert_close(sample, reference_sample)
    else:
        assert sample.numel() == 0
    for fused, reference in zip(gradients(fused_loss), gradients(reference_loss)):
        torch.testing.assert_close(fused, reference)
