"""bayes: a Bayesian output layer. Mean-field Gaussian posterior q over the head's weight
(V x C) and bias (V), a prior p (`bayes_prior`: Gaussian N(0, prior_sigma^2) by default), trained
on the ELBO per token:

    loss = E_q[CE(z, y)] + kl_weight * KL(q || p) / N,    N = config.kl_num_tokens

(N = training tokens in one epoch, so that summed over an epoch the KL counts once).

The posterior std of each entry is sigma = exp(posterior_sigma_scale * theta) with theta the
trained parameter: Adam moves every parameter by about the learning rate per step, so with a
scale of s, log sigma moves s times faster than the means. At s = 1 (or with the earlier
softplus(rho) parameterisation) the posterior cannot widen from its 1e-3 start to its
ELBO-optimal width within a training run, and the head's mutual information stays ~1e-4 nats.
The prior's width matters as much: N(0, 1) on a head over layer-normed features lets the
posterior widen until the logits' noise swamps the prediction. config/sweep_bayes_shakespeare.py
is the sweep that chose the defaults (README, "Bayesian heads").

Training estimates the expectation with one of two reparameterisations (`bayes_estimator`):
  - "local" (the local reparameterisation trick): for a linear layer with independent
    Gaussian weights each logit is itself Gaussian,
        z = h mu^T + b_mu + sqrt(h^2 sigma^2^T + b_sigma^2) * eps,   eps ~ N(0, 1),
    so every token gets its own weight sample: the lowest-variance gradient, at the price of
    a second vocabulary-sized matmul (about 2x the baseline's time when the head dominates);
  - "weight": one weight sample W = mu + sigma * eps per step, shared by the batch, then one
    matmul as in the baseline: cheaper, noisier gradients.
With the Gaussian prior the KL is closed-form and fused with the sample (the fast path); other
priors estimate it by Monte Carlo at a weight sample (nanoGPT/bayes_priors.py).
`bayes_backend=pyro` trains the same head through Pyro (PyroModule, AutoNormal, Trace_ELBO):
the reference, slower path.

The predictive distribution averages S sampled softmaxes, one at a time (metrics.SampleMixture):
a weight sample shared by the rows scored together, or one per row when there are fewer rows
than features. Either gives every token the right marginal (not a joint over tokens).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
import torch.nn.functional as F
from pyro.distributions import Normal
from torch.distributions import kl_divergence

from nanoGPT.bayes_priors import PyroHead, check_prior_config, make_prior, monte_carlo_kl
from nanoGPT.chunked_loss import AUTO_CHUNK_ELEMENTS
from nanoGPT.config import ModelConfig
from nanoGPT.errors import UserError
from nanoGPT.losses import GaussianPosteriorSample, softmax_cross_entropy
from nanoGPT.metrics import SampleMixture
from nanoGPT.variants.base import Stats, Variant


def local_reparameterised_logits(
    hidden: torch.Tensor,
    weight_mu: torch.Tensor,
    weight_sigma: torch.Tensor,
    bias_mu: torch.Tensor,
    bias_sigma: torch.Tensor,
    num_samples: int | None = None,
) -> torch.Tensor:
    """Sampled float32 logits (..., V), or (num_samples, ..., V), of a mean-field Gaussian
    linear layer: an independent weight sample for every token and sample (local
    reparameterisation). Draws exactly one torch.randn of the output's shape, so a fixed seed
    reproduces the noise."""
    return local_logits_from_variances(
        hidden, weight_mu, weight_sigma.square(), bias_mu, bias_sigma.square(), num_samples
    )


def local_logits_from_variances(
    hidden: torch.Tensor,
    weight_mu: torch.Tensor,
    weight_var: torch.Tensor,
    bias_mu: torch.Tensor,
    bias_var: torch.Tensor,
    num_samples: int | None = None,
) -> torch.Tensor:
    """local_reparameterised_logits from the posterior's variances (squared once per step when
    the training loss runs over chunks of positions)."""
    mean = F.linear(hidden, weight_mu, bias_mu).float()
    # in place where autograd allows it (no backward needs these outputs): two V-sized
    # buffers fewer
    std = F.linear(hidden.square(), weight_var, bias_var).float().sqrt_()
    if num_samples is None:
        eps = torch.randn_like(mean)
        return mean.addcmul_(std, eps)
    eps = torch.randn((num_samples, *mean.shape), device=mean.device, dtype=mean.dtype)
    return torch.addcmul(mean, std, eps)


class VariationalLinear(nn.Module):
    """A linear layer with a mean-field Gaussian posterior over its weight and bias.

    sigma = exp(sigma_scale * theta) keeps the std positive and lets Adam move log sigma
    sigma_scale times faster than the means (see the module docstring). Every parameter carries
    `no_weight_decay = True`: the KL to the prior is their regulariser, and weight decay would
    pull the theta's (hence the stds) towards 1."""

    def __init__(
        self, in_features: int, out_features: int, prior_sigma: float, init_sigma: float, sigma_scale: float
    ):
        super().__init__()
        self.prior_sigma, self.init_sigma, self.sigma_scale = prior_sigma, init_sigma, sigma_scale
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_theta = nn.Parameter(torch.empty(out_features, in_features))
        self.bias_mu = nn.Parameter(torch.empty(out_features))
        self.bias_theta = nn.Parameter(torch.empty(out_features))
        for p in self.parameters():
            p.no_weight_decay = True
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, bias: float = 0.0) -> None:
        nn.init.normal_(self.weight_mu, mean=0.0, std=0.02)
        self.bias_mu.fill_(bias)
        self.weight_theta.fill_(math.log(self.init_sigma) / self.sigma_scale)
        self.bias_theta.fill_(math.log(self.init_sigma) / self.sigma_scale)

    def sigmas(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior stds of the weight and the bias."""
        return (self.weight_theta * self.sigma_scale).exp(), (self.bias_theta * self.sigma_scale).exp()

    @torch.no_grad()
    def set_posterior(self, weight_mu, weight_sigma, bias_mu, bias_sigma) -> None:
        self.weight_mu.copy_(weight_mu)
        self.bias_mu.copy_(bias_mu)
        self.weight_theta.copy_(weight_sigma.log() / self.sigma_scale)
        self.bias_theta.copy_(bias_sigma.log() / self.sigma_scale)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """The logits of the posterior mean, float32."""
        return F.linear(hidden, self.weight_mu, self.bias_mu).float()

    def sample_weights(self, draw: bool = True):
        """(weight, bias, KL(q || N(0, prior_sigma^2)), [sum, sum of squares] of the weight's
        sigmas): ONE weight sample (None, None when not `draw`) and the closed-form KL, fused
        (see GaussianPosteriorSample)."""
        weight, weight_kl, moments = GaussianPosteriorSample.apply(
            self.weight_mu, self.weight_theta, self.sigma_scale, self.prior_sigma, draw
        )
        bias, bias_kl, _ = GaussianPosteriorSample.apply(
            self.bias_mu, self.bias_theta, self.sigma_scale, self.prior_sigma, draw
        )
        return (weight, bias) if draw else (None, None), weight_kl + bias_kl, moments

    def sample_logits_shared(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (..., V) of ONE weight sample shared by every token, KL(q || prior)): a
        single matmul, the sample and the KL fused."""
        (weight, bias), kl, _ = self.sample_weights()
        return F.linear(hidden, weight, bias).float(), kl

    def fused_kl(self) -> torch.Tensor:
        """kl() through the fused closed form that training uses: same value, same gradient."""
        return self.sample_weights(draw=False)[1]

    def sample_logits(self, hidden: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
        """Sampled float32 logits, local reparameterisation: see local_reparameterised_logits."""
        weight_sigma, bias_sigma = self.sigmas()
        return local_reparameterised_logits(
            hidden, self.weight_mu, weight_sigma, self.bias_mu, bias_sigma, num_samples
        )

    def kl(self) -> torch.Tensor:
        """KL(q || prior) summed over every weight and bias entry, float32, by pyro: the
        definition that the fused form training uses (fused_kl) is tested against."""
        # validate_args=False: checking scale > 0 would cost a device sync every step
        with torch.autocast(self.weight_mu.device.type, enabled=False):
            zero = self.weight_mu.new_zeros((), dtype=torch.float32)
            prior = Normal(zero, zero + self.prior_sigma, validate_args=False)
            total = zero
            for mu, sigma in zip((self.weight_mu, self.bias_mu), self.sigmas()):
                posterior = Normal(mu.float(), sigma.float(), validate_args=False)
                total = total + kl_divergence(posterior, prior).sum()  # prior broadcasts
        return total


def sigma_stats(moments: torch.Tensor, count: int) -> Stats:
    """sigma_mean and sigma_std over the head's weight entries from [sum, sum of squares]."""
    mean = moments[0] / count
    return {"sigma_mean": mean, "sigma_std": (moments[1] / count - mean.square()).clamp_min(0).sqrt()}


class Bayes(Variant):
    name = "bayes"
    ties_embedding = False  # the posterior has its own mean and std per weight
    bayesian = True
    data_term = "nll"  # the name under which loss() logs the expected data term
    # the step's (V, C) weight sample (weight estimator) or weight variances (local) is held
    # through the chunks besides the weight's gradient, one such buffer more than a plain
    # head's: half the chunk keeps the chunked step under half the unchunked one's tensor
    # memory (tests/test_chunked_loss.py; at bench.py's size also a little faster)
    auto_chunk_elements = AUTO_CHUNK_ELEMENTS // 2

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        if config.bayes_estimator not in ("local", "weight"):
            raise UserError(f"bayes_estimator must be local or weight, got {config.bayes_estimator!r}")
        check_prior_config(config)
        self.pyro_backend = config.bayes_backend == "pyro"
        if self.pyro_backend:
            self.lm_head = PyroHead(config, self.observe)
        else:
            self.lm_head = VariationalLinear(
                config.n_embd,
                config.vocab_size,
                config.prior_sigma,
                config.posterior_init_sigma,
                config.posterior_sigma_scale,
            )
        # the fast path's closed-form KL serves the Gaussian prior; the others go by Monte Carlo
        self.monte_carlo_prior = config.bayes_prior != "gaussian"

    def reset_parameters(self) -> None:
        self.lm_head.reset_parameters()

    @torch.no_grad()
    def init_head_from(self, embedding: torch.Tensor) -> None:
        mu, sigma = self.posterior()
        self.lm_head.set_posterior(embedding, sigma[0], mu[1], sigma[1])

    def posterior(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """((weight mean, bias mean), (weight std, bias std)) of the posterior, either backend."""
        if self.pyro_backend:
            post = self.lm_head.posterior()
            return (post["weight"][0], post["bias"][0]), (post["weight"][1], post["bias"][1])
        return (self.lm_head.weight_mu, self.lm_head.bias_mu), self.lm_head.sigmas()

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The logits of the posterior mean, float32."""
        (weight_mu, bias_mu), _ = self.posterior()
        return F.linear(hidden, weight_mu.to(hidden.dtype), bias_mu.to(hidden.dtype)).float()

    def kl_num_tokens(self) -> int:
        num_tokens = self.config.kl_num_tokens
        if num_tokens <= 0:
            raise UserError(
                f"{self.name}: kl_num_tokens is {num_tokens}; set it to the number of training "
                "tokens in one epoch (the training loop does this) so the ELBO can scale the KL"
            )
        return num_tokens

    def logits_loss_sum(self, logits, targets, extra) -> tuple[torch.Tensor, Stats]:
        """The data term of the ELBO on one set of sampled logits, summed over positions."""
        return softmax_cross_entropy(logits, targets).sum(), {}

    def linear_head(self) -> bool:
        return self.config.bayes_estimator == "weight"  # one weight sample: a linear head

    def head_logits(self, hidden: torch.Tensor, head: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Sampled logits: of the step's one weight sample (weight estimator) or, from the
        posterior's means and variances, a sample per token (local estimator)."""
        if self.config.bayes_estimator == "weight":
            return super().head_logits(hidden, head)
        return local_logits_from_variances(hidden, *head)

    def observe(self, logits: torch.Tensor, targets: torch.Tensor, extra_positives) -> None:
        """The data likelihood as Pyro sites (the pyro backend), inside the tokens plate."""
        pyro.sample("next_token", dist.Categorical(logits=logits), obs=targets)

    def sample_log_probs(self, sample_logits: torch.Tensor) -> torch.Tensor:
        """The normalised distribution of each weight sample."""
        return F.log_softmax(sample_logits, dim=-1)

    def loss(self, hidden, targets, extra_positives=None) -> tuple[torch.Tensor, Stats]:
        num_tokens = self.kl_num_tokens()
        if self.pyro_backend:
            loss = self.lm_head.elbo_loss(hidden, targets, extra_positives, self.observe, num_tokens)
            with torch.no_grad():
                weight_sigma = self.posterior()[1][0]
                moments = torch.stack([weight_sigma.sum(), weight_sigma.square().sum()])
            return loss, {"elbo": loss.detach(), **sigma_stats(moments, weight_sigma.numel())}
        sampled, kl, moments = self.sampled_head()
        kl = kl / num_tokens
        data, stats = self.mean_position_loss(hidden, targets, extra_positives, sampled)
        stats = {
            self.data_term: data.detach(),
            "kl": kl.detach(),
            **stats,
            **sigma_stats(moments, self.lm_head.weight_mu.numel()),
        }
        return data + self.config.kl_weight * kl, stats

    def sampled_head(self) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
        """(the head tensors of this step's data term, KL(q || prior), the sigma moments): ONE
        weight sample (weight estimator) or the posterior's means and variances (local), drawn
        once per step and shared by every chunk of positions; the KL is no per-position term."""
        head = self.lm_head
        shared_sample = self.config.bayes_estimator == "weight"
        # the Monte-Carlo KL needs a weight sample even when the data term samples per token;
        # it is drawn first, so the local estimator's noise follows the same seed either way
        (weight, bias), kl, moments = head.sample_weights(draw=shared_sample or self.monte_carlo_prior)
        if self.monte_carlo_prior:
            prior = make_prior(self.config, weight.device)
            weight_sigma, bias_sigma = head.sigmas()
            kl = monte_carlo_kl(head.weight_mu, weight_sigma, weight, prior) + monte_carlo_kl(
                head.bias_mu, bias_sigma, bias, prior
            )
        if shared_sample:
            return (weight, bias), kl, moments
        weight_sigma, bias_sigma = head.sigmas()
        return (head.weight_mu, weight_sigma.square(), head.bias_mu, bias_sigma.square()), kl, moments

    def _sample_logits(self, hidden: torch.Tensor, weights: tuple) -> torch.Tensor:
        """One draw of float32 logits for every row of `hidden`. With at least as many rows as
        input features, one weight sample shared by the rows costs least; with fewer, a sample
        per row (local reparameterisation). Each row's logits have the same distribution either
        way, and the predictive of a token depends on nothing else."""
        (weight_mu, bias_mu), (weight_sigma, bias_sigma) = weights
        if hidden.numel() // hidden.size(-1) < weight_mu.size(1):
            return local_reparameterised_logits(hidden, weight_mu, weight_sigma, bias_mu, bias_sigma)
        weight = torch.addcmul(weight_mu, weight_sigma, torch.randn_like(weight_sigma))
        bias = torch.addcmul(bias_mu, bias_sigma, torch.randn_like(bias_sigma))
        return F.linear(hidden, weight.to(hidden.dtype), bias.to(hidden.dtype)).float()

    def _mixture(self, hidden: torch.Tensor, samples: int | None) -> SampleMixture:
        """The posterior predictive from S = samples (default config.bayes_samples) weight
        samples, accumulated one at a time."""
        weights = self.posterior()
        mixture = SampleMixture()
        for _ in range(samples or self.config.bayes_samples):
            mixture.add(self.sample_log_probs(self._sample_logits(hidden, weights)))
        return mixture

    def log_probs(self, hidden, samples=None) -> torch.Tensor:
        """log of the mean over S = samples (default config.bayes_samples) sampled distributions."""
        return self._mixture(hidden, samples).log_probs()

    def evaluate(self, hidden, targets) -> tuple[torch.Tensor, Stats]:
        mixture = self._mixture(hidden, None)
        stats = {key: value.view(targets.shape) for key, value in mixture.token_stats().items()}
        return mixture.log_probs(), stats
