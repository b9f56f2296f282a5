"""Priors of the Bayesian heads beyond the Gaussian, and the reference head trained by Pyro.

The Gaussian prior has a closed-form KL, fused with the weight sample in
`nanoGPT.losses.GaussianPosteriorSample`: that is the fast path. The other priors
(`bayes_prior`) have none, so their KL is estimated by Monte Carlo at the sampled weights,
    KL(q || p) ~ log q(w) - log p(w),   w ~ q,
an unbiased estimate whose gradient is the one Pyro's Trace_ELBO takes:
  - scale_mixture: pi * N(0, prior_sigma^2) + (1 - pi) * N(0, prior_sigma2^2) (Blundell et
    al. 2015, "Weight Uncertainty in Neural Networks"): a broad and a narrow component;
  - laplace: Laplace(0, prior_sigma / sqrt 2), the Laplace of the same std as the Gaussian.

`PyroHead` (`bayes_backend=pyro`) trains the same mean-field posterior with Pyro's own
machinery: a PyroModule whose weight and bias are PyroSample sites under the prior, an
AutoNormal guide, Trace_ELBO, and a plate of size N subsampled to the batch's tokens, so that
its loss is the fast path's ELBO per token. It is the reference the fast path is tested
against, and works with every prior.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
import torch.nn.functional as F
from pyro import poutine
from pyro.distributions import constraints
from pyro.distributions.transforms import AffineTransform, ComposeTransform, ExpTransform
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroSample
from torch.distributions import biject_to, transform_to

from nanoGPT.config import ModelConfig
from nanoGPT.errors import UserError

PRIORS = ("gaussian", "scale_mixture", "laplace")
BACKENDS = ("fast", "pyro")


def check_prior_config(config: ModelConfig) -> None:
    """UserError (one line) for prior settings that name no distribution."""
    if config.bayes_prior not in PRIORS:
        raise UserError(f"bayes_prior must be one of {', '.join(PRIORS)}, got {config.bayes_prior!r}")
    if config.bayes_backend not in BACKENDS:
        raise UserError(f"bayes_backend must be one of {', '.join(BACKENDS)}, got {config.bayes_backend!r}")
    if not (config.prior_sigma > 0 and config.prior_sigma2 > 0):
        raise UserError(
            f"prior_sigma and prior_sigma2 must be > 0, got {config.prior_sigma} and {config.prior_sigma2}"
        )
    if not 0 < config.prior_mix_weight < 1:
        raise UserError(f"prior_mix_weight must be in (0, 1), got {config.prior_mix_weight}")
    if config.posterior_sigma_scale <= 0 or config.posterior_init_sigma <= 0:
        raise UserError("posterior_sigma_scale and posterior_init_sigma must be > 0")


class _ScaleMixture(dist.MixtureSameFamily):
    """A mixture of zero-mean Gaussians. Its support is the real line; torch's generic mixture
    declares a constraint that no transform is registered for, which AutoNormal needs."""

    @property
    def support(self):
        return constraints.real


def make_prior(config: ModelConfig, device: torch.device | str = "cpu") -> dist.Distribution:
    """The prior of every head weight and bias entry, as a scalar pyro distribution that
    broadcasts over any shape."""
    zero = torch.zeros((), device=device)
    if config.bayes_prior == "gaussian":
        return dist.Normal(zero, zero + config.prior_sigma)
    if config.bayes_prior == "laplace":
        return dist.Laplace(zero, zero + config.prior_sigma / math.sqrt(2))
    if config.bayes_prior == "scale_mixture":
        pi = config.prior_mix_weight
        mixing = dist.Categorical(probs=torch.tensor([pi, 1 - pi], device=device))
        components = dist.Normal(
            zero.expand(2), torch.tensor([config.prior_sigma, config.prior_sigma2], device=device)
        )
        return _ScaleMixture(mixing, components)
    raise UserError(f"bayes_prior must be one of {', '.join(PRIORS)}, got {config.bayes_prior!r}")


def monte_carlo_kl(
    mu: torch.Tensor, sigma: torch.Tensor, sample: torch.Tensor, prior: dist.Distribution
) -> torch.Tensor:
    """log q(w) - log p(w) at a sample w of q = N(mu, sigma^2), summed over every entry, float32:
    an unbiased estimate of KL(q || prior) for any prior."""
    with torch.autocast(mu.device.type, enabled=False):
        sample = sample.float()
        log_q = dist.Normal(mu.float(), sigma.float(), validate_args=False).log_prob(sample)
        return log_q.sum() - prior.log_prob(sample).sum()


# --- the Pyro reference backend ---------------------------------------------------------


class _ScaledLogPositive(constraints.Constraint):
    """Positive values parameterised as exp(scale * theta): the guide's std in the fast path's
    parameterisation (see nanoGPT.losses.GaussianPosteriorSample), so that both backends move
    log sigma at the same speed."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def check(self, value: torch.Tensor) -> torch.Tensor:
        return value > 0


@biject_to.register(_ScaledLogPositive)
@transform_to.register(_ScaledLogPositive)
def _scaled_exp(constraint: _ScaledLogPositive):
    return ComposeTransform([AffineTransform(0.0, constraint.scale), ExpTransform()])


class _HeadModel(PyroModule):
    """The generative model: weight and bias drawn from the prior, then the data likelihood
    (given by the variant as `observe`) in a plate of N tokens subsampled to the batch."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.register_buffer("device_anchor", torch.zeros(()), persistent=False)
        shapes = {"weight": (config.vocab_size, config.n_embd), "bias": (config.vocab_size,)}
        for name, shape in shapes.items():
            prior = PyroSample(lambda self, shape=shape: self.prior().expand(shape).to_event(len(shape)))
            setattr(self, name, prior)

    def prior(self) -> dist.Distribution:
        return make_prior(self.config, self.device_anchor.device)

    def forward(self, hidden, targets, extra_positives, observe: Callable, num_tokens: int):
        logits = F.linear(hidden, self.weight.to(hidden.dtype), self.bias.to(hidden.dtype)).float()
        logits, targets = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
        if extra_positives is not None:
            extra_positives = extra_positives.reshape(targets.numel(), -1)
        # an explicit subsample: subsample_size alone would draw a randperm of N every step.
        # The data sites are scaled by 1 / kl_weight; loss() multiplies the ELBO back by it.
        subsample = torch.arange(targets.numel(), device=targets.device)
        with pyro.plate("tokens", num_tokens, subsample=subsample):
            with poutine.scale(scale=1.0 / self.config.kl_weight):
                observe(logits, targets, extra_positives)


class _ScaledAutoNormal(AutoNormal):
    def __init__(self, model, sigma_scale: float, init_scale: float):
        self.scale_constraint = _ScaledLogPositive(sigma_scale)
        super().__init__(model, init_scale=init_scale)


class PyroHead(nn.Module):
    """A mean-field Gaussian head trained through Pyro: `elbo_loss` is Trace_ELBO's estimate
    of the negative ELBO per token, E_q[data loss] + kl_weight * KL / N, with one weight sample.
    The guide's parameters (locs.weight, scales.weight, locs.bias, scales.bias) are created at
    construction, so the optimizer and checkpoints see them. Every Pyro call runs with
    module_local_params: the parameters live in their modules, never in Pyro's global param
    store, where two heads in one process (a comparison, the tests) would share them by name.
    The guide's std uses the fast path's exp(posterior_sigma_scale * theta) parameterisation."""

    def __init__(self, config: ModelConfig, observe: Callable):
        super().__init__()
        self.config = config
        hidden = torch.zeros(1, config.n_embd)
        targets = torch.zeros(1, dtype=torch.long)
        with pyro.settings.context(module_local_params=True):  # PyroModules are built in this mode
            self.model = _HeadModel(config)
            self.guide = _ScaledAutoNormal(
                self.model, config.posterior_sigma_scale, config.posterior_init_sigma
            )
            self.guide._setup_prototype(hidden, targets, None, observe, 1)
        self.elbo = Trace_ELBO()
        for p in self.parameters():
            p.no_weight_decay = True  # the KL to the prior is their regulariser

    @torch.no_grad()
    def reset_parameters(self, bias: float = 0.0) -> None:
        vocab_size, n_embd, sigma = (
            self.config.vocab_size,
            self.config.n_embd,
            self.config.posterior_init_sigma,
        )
        weight_mu = torch.randn(vocab_size, n_embd) * 0.02
        self.set_posterior(
            weight_mu,
            torch.full_like(weight_mu, sigma),
            torch.full((vocab_size,), bias),
            torch.full((vocab_size,), sigma),
        )

    def posterior(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """name -> (mean, std) of the guide."""
        with pyro.settings.context(module_local_params=True):
            return {
                name: (getattr(self.guide.locs, name), getattr(self.guide.scales, name))
                for name in ("weight", "bias")
            }

    @torch.no_grad()
    def set_posterior(self, weight_mu, weight_sigma, bias_mu, bias_sigma) -> None:
        """Copy into the guide's existing parameters (in place: assigning to a PyroModule
        attribute would make new Parameters, which the optimizer would not know)."""
        values = {("locs", "weight"): weight_mu, ("scales", "weight"): weight_sigma}
        values.update({("locs", "bias"): bias_mu, ("scales", "bias"): bias_sigma})
        for (kind, name), value in values.items():
            module = getattr(self.guide, kind)
            constraint = module._pyro_params[name][0]
            unconstrained = getattr(module, f"{name}_unconstrained")
            unconstrained.copy_(biject_to(constraint).inv(value.detach().to(unconstrained)))

    def elbo_loss(self, hidden, targets, extra_positives, observe: Callable, num_tokens: int) -> torch.Tensor:
        with pyro.settings.context(module_local_params=True):
            negative_elbo = self.elbo.differentiable_loss(
                self.model, self.guide, hidden, targets, extra_positives, observe, num_tokens
            )
        return negative_elbo * (self.config.kl_weight / num_tokens)
