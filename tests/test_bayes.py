"""The Bayesian heads' priors and backends: the Monte-Carlo KL against the closed form, Pyro's
Trace_ELBO against the fast path, training with every prior and backend, the logged sigma
statistics, and the Pyro guide's parameters in the optimizer and the checkpoint."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nanoGPT.bayes_priors import make_prior, monte_carlo_kl
from nanoGPT.config import ModelConfig
from nanoGPT.errors import UserError
from nanoGPT.losses import GaussianPosteriorSample
from nanoGPT.model import GPT
from tests.test_variants import randomise_posterior, text_batch

V, C = 37, 16


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    values = dict(n_layer=1, n_head=2, n_embd=C, block_size=8, vocab_size=V, variant="bayes")
    values.update(kl_num_tokens=1000, bayes_samples=4)
    values.update(overrides)
    torch.manual_seed(seed)
    return GPT(ModelConfig(**values))


def test_monte_carlo_kl_converges_to_the_closed_form_under_a_gaussian_prior():
    model = tiny_gpt(prior_sigma=0.7)
    head = model.variant.lm_head
    randomise_posterior(head)
    prior = make_prior(model.config)
    weight_sigma = head.sigmas()[0].detach()
    mu = head.weight_mu.detach()
    torch.manual_seed(0)
    estimates = torch.stack(
        [
            monte_carlo_kl(mu, weight_sigma, mu + weight_sigma * torch.randn_like(mu), prior)
            for _ in range(2000)
        ]
    )
    closed_form = (
        head.sample_weights(draw=False)[1]
        - torch.distributions.kl_divergence(
            torch.distributions.Normal(head.bias_mu, head.sigmas()[1]), prior
        ).sum()
    )
    standard_error = estimates.std() / 2000**0.5
    assert abs(estimates.mean() - closed_form.detach()) < 4 * standard_error
    assert standard_error < 0.05 * closed_form.abs()  # the check is not vacuous


@pytest.mark.parametrize("variant", ["bayes", "bayes_sigmoid"])
def test_pyro_trace_elbo_equals_the_fast_path_within_monte_carlo_error(variant):
    settings = dict(variant=variant, kl_num_tokens=50, kl_weight=0.5, bayes_estimator="weight")
    fast = tiny_gpt(**settings)
    pyro_model = tiny_gpt(bayes_backend="pyro", **settings)
    randomise_posterior(fast.variant.lm_head)
    head = fast.variant.lm_head
    pyro_model.variant.lm_head.set_posterior(head.weight_mu, head.sigmas()[0], head.bias_mu, head.sigmas()[1])
    x, y = text_batch()
    hidden = torch.randn(*x.shape, C)
    with torch.no_grad():
        torch.manual_seed(1)
        fast_losses = torch.stack([fast.variant.loss(hidden, y)[0] for _ in range(200)])
        pyro_losses = torch.stack([pyro_model.variant.loss(hidden, y)[0] for _ in range(200)])
    error = (fast_losses.var() / 200 + pyro_losses.var() / 200).sqrt()
    assert abs(fast_losses.mean() - pyro_losses.mean()) < 4 * error
    assert error < 0.02 * fast_losses.mean().abs()


@pytest.mark.parametrize("backend", ["fast", "pyro"])
@pytest.mark.parametrize("prior", ["gaussian", "scale_mixture", "laplace"])
def test_training_lowers_the_loss_with_every_prior_and_backend(prior, backend):
    model = tiny_gpt(bayes_prior=prior, bayes_backend=backend, kl_num_tokens=10_000)
    x, y = text_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    torch.manual_seed(0)
    losses = []
    for _ in range(25):
        loss, stats = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5]), losses
    assert {"sigma_mean", "sigma_std"} <= stats.keys()


@pytest.mark.parametrize("estimator", ["weight", "local"])
def test_loss_logs_the_mean_and_spread_of_the_weight_sigmas(estimator):
    model = tiny_gpt(bayes_estimator=estimator)
    randomise_posterior(model.variant.lm_head)
    x, y = text_batch()
    _, stats = model(x, y)
    weight_sigma = model.variant.lm_head.sigmas()[0]
    torch.testing.assert_close(stats["sigma_mean"], weight_sigma.mean())
    torch.testing.assert_close(stats["sigma_std"], weight_sigma.std(unbiased=False), rtol=1e-4, atol=1e-6)


def test_the_sigma_scale_speeds_up_log_sigma_and_keeps_the_initial_sigma():
    """Adam moves theta by ~lr per step, so log sigma moves ~sigma_scale * lr."""
    moved = {}
    for scale in (1.0, 10.0):
        model = tiny_gpt(posterior_sigma_scale=scale, kl_num_tokens=10)  # a strong KL pulls sigma up
        head = model.variant.lm_head
        torch.testing.assert_close(head.sigmas()[0], torch.full((V, C), 1e-3))
        optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
        x, y = text_batch()
        hidden = model.hidden_states(x).detach()
        for _ in range(5):
            loss, _ = model.variant.loss(hidden, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        moved[scale] = (head.sigmas()[0].log() - torch.log(torch.tensor(1e-3))).mean().item()
    assert 0.03 < moved[1.0] < 0.06  # 5 steps of ~1e-2
    assert 8 < moved[10.0] / moved[1.0] < 12


def test_pyro_guide_parameters_exist_at_construction_and_round_trip_a_checkpoint():
    model = tiny_gpt(bayes_backend="pyro")
    names = {name for name, _ in model.variant.named_parameters()}
    assert names == {
        f"lm_head.guide.{kind}.{site}_unconstrained"
        for kind in ("locs", "scales")
        for site in ("weight", "bias")
    }
    head_parameters = {id(p) for p in model.variant.parameters()}
    assert head_parameters <= {id(p) for p in model.parameters()}  # what the optimizer is given
    (weight_mu, _), (weight_sigma, _) = model.variant.posterior()
    assert 0.01 < weight_mu.std().item() < 0.03
    torch.testing.assert_close(weight_sigma, torch.full((V, C), 1e-3))
    new_weight_mu = torch.randn(V, C)
    before = list(model.variant.parameters())
    assert all(getattr(p, "no_weight_decay", False) for p in before)
    model.variant.lm_head.set_posterior(new_weight_mu, weight_sigma * 3, torch.zeros(V), torch.ones(V))
    assert all(a is b for a, b in zip(before, model.variant.parameters()))  # set in place
    torch.testing.assert_close(model.variant.posterior()[0][0], new_weight_mu)
    fresh = tiny_gpt(seed=1, bayes_backend="pyro")
    fresh.load_state_dict(model.state_dict())
    x, y = text_batch()
    with torch.no_grad():
        torch.manual_seed(3)
        expected = model.variant.log_probs(model.hidden_states(x))
        torch.manual_seed(3)
        torch.testing.assert_close(fresh.variant.log_probs(fresh.hidden_states(x)), expected)


def test_unknown_prior_or_backend_is_a_user_error():
    with pytest.raises(UserError, match="bayes_prior"):
        tiny_gpt(bayes_prior="cauchy")
    with pytest.raises(UserError, match="bayes_backend"):
        tiny_gpt(bayes_backend="stan")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["fast", "pyro"])
def test_the_training_loop_trains_and_resumes_each_backend(char_data, tmp_path, backend):
    from nanoGPT.train import train
    from tests.conftest import tiny_config

    cfg = tiny_config(char_data, tmp_path, variant="bayes", bayes_backend=backend, max_iters=12)
    metrics = train(cfg)
    assert metrics["val/nll"] < 4.0 and metrics["val/mutual_information"] >= 0
    resumed = train(dataclasses.replace(cfg, init_from="resume", eval_only=True))
    assert resumed["val/nll"] == pytest.approx(metrics["val/nll"])


def sample_gradients(compiled: bool) -> None:
    """The sample's gradient through theta is sigma_scale * (sample - mu) * G (sigma * eps =
    sample - mu): backward redraws eps from the generator's saved state (eager) or keeps it
    (torch.compile draws its own numbers), either way the forward's noise; backward leaves the
    generator as it was."""
    torch.manual_seed(0)
    mu = torch.randn(300, 16, requires_grad=True)
    theta = (0.2 * torch.randn(300, 16) - 1).requires_grad_()
    grad = torch.randn(300, 16)

    def sample(mu, theta):
        return GaussianPosteriorSample.apply(mu, theta, 3.0, 0.5, True)[0]

    draw = torch.compile(sample) if compiled else sample
    drawn = draw(mu, theta)
    torch.manual_seed(1)
    drawn.backward(grad)
    after = torch.rand(4)
    torch.manual_seed(1)
    assert torch.equal(after, torch.rand(4))  # backward left the generator where it was
    torch.testing.assert_close(theta.grad, 3.0 * (drawn.detach() - mu.detach()) * grad, rtol=1e-4, atol=1e-6)
    assert torch.equal(mu.grad, grad)


def test_posterior_sample_gradient_uses_the_forward_noise():
    sample_gradients(compiled=False)


@pytest.mark.slow
def test_compiled_posterior_sample_gradient_uses_the_forward_noise():
    sample_gradients(compiled=True)
