"""bayes: a Bayesian output layer. Mean-field Gaussian posterior q over the head's weight
(V x C) and bias (V), Gaussian prior N(0, prior_sigma^2), trained on the ELBO per token:

    loss = E_q[CE(z, y)] + kl_weight * KL(q || p) / N,    N = config.kl_num_tokens

(N = training tokens in one epoch, so that summed over an epoch the KL counts once).

Training estimates the expectation with one of two reparameterisations (`bayes_estimator`):
  - "local" (the local reparameterisation trick): for a linear layer with independent
    Gaussian weights each logit is itself Gaussian,
        z = h mu^T + b_mu + sqrt(h^2 sigma^2^T + b_sigma^2) * eps,   eps ~ N(0, 1),
    so every token gets its own weight sample: the lowest-variance gradient, at the price of
    a second vocabulary-sized matmul (about 2x the baseline's time when the head dominates);
  - "weight": one weight sample W = mu + sigma * eps per step, shared by the batch, then one
    matmul as in the baseline: cheaper, noisier gradients.

The predictive distribution averages S sampled softmaxes. Samples are drawn per token the
same way, which gives the right per-token marginal (not a joint over tokens).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from pyro.distributions import Normal
from torch.distributions import kl_divergence

from nanoGPT.config import ModelConfig
from nanoGPT.errors import UserError
from nanoGPT.losses import GaussianPosteriorSample, inverse_softplus, softmax_cross_entropy
from nanoGPT.metrics import bayes_token_stats
from nanoGPT.variants.base import Stats, Variant


class VariationalLinear(nn.Module):
    """A linear layer with a mean-field Gaussian posterior over its weight and bias.

    sigma = softplus(rho) keeps the std positive with an unconstrained parameter. Every
    parameter carries `no_weight_decay = True`: the KL to the prior is their regulariser,
    and weight decay would pull the rho's (hence the stds) towards softplus(0)."""

    def __init__(self, in_features: int, out_features: int, prior_sigma: float, init_sigma: float):
        super().__init__()
        self.prior_sigma = prior_sigma
        self.init_sigma = init_sigma
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_rho = nn.Parameter(torch.empty(out_features, in_features))
        self.bias_mu = nn.Parameter(torch.empty(out_features))
        self.bias_rho = nn.Parameter(torch.empty(out_features))
        for p in self.parameters():
            p.no_weight_decay = True
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, bias: float = 0.0) -> None:
        nn.init.normal_(self.weight_mu, mean=0.0, std=0.02)
        self.bias_mu.fill_(bias)
        self.weight_rho.fill_(inverse_softplus(self.init_sigma))
        self.bias_rho.fill_(inverse_softplus(self.init_sigma))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """The logits of the posterior mean, float32."""
        return F.linear(hidden, self.weight_mu, self.bias_mu).float()

    def sample_logits_shared(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (..., V) of ONE weight sample shared by every token, KL(q || prior)): a
        single matmul, the sample and the KL fused (see GaussianPosteriorSample)."""
        weight, weight_kl = GaussianPosteriorSample.apply(
            self.weight_mu, self.weight_rho, self.prior_sigma, True
        )
        bias, bias_kl = GaussianPosteriorSample.apply(self.bias_mu, self.bias_rho, self.prior_sigma, True)
        return F.linear(hidden, weight, bias).float(), weight_kl + bias_kl

    def fused_kl(self) -> torch.Tensor:
        """kl() through the fused closed form that training uses: same value, same gradient."""
        return sum(
            GaussianPosteriorSample.apply(mu, rho, self.prior_sigma, False)[1]
            for mu, rho in ((self.weight_mu, self.weight_rho), (self.bias_mu, self.bias_rho))
        )

    def sample_logits(self, hidden: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
        """Sampled float32 logits (..., V), or (num_samples, ..., V): an independent weight
        sample for every token and sample (local reparameterisation). Draws exactly one
        torch.randn of the output's shape, so a fixed seed reproduces the noise."""
        mean = F.linear(hidden, self.weight_mu, self.bias_mu).float()
        weight_var = F.softplus(self.weight_rho).square()
        bias_var = F.softplus(self.bias_rho).square()
        # in place where autograd allows it (no backward needs these outputs): two V-sized
        # buffers fewer
        std = F.linear(hidden.square(), weight_var, bias_var).float().sqrt_()
        if num_samples is None:
            eps = torch.randn_like(mean)
            return mean.addcmul_(std, eps)
        eps = torch.randn((num_samples, *mean.shape), device=mean.device, dtype=mean.dtype)
        return torch.addcmul(mean, std, eps)

    def kl(self) -> torch.Tensor:
        """KL(q || prior) summed over every weight and bias entry, float32, by pyro: the
        definition that the fused form training uses (fused_kl) is tested against."""
        # validate_args=False: checking scale > 0 would cost a device sync every step
        with torch.autocast(self.weight_mu.device.type, enabled=False):
            zero = self.weight_mu.new_zeros((), dtype=torch.float32)
            prior = Normal(zero, zero + self.prior_sigma, validate_args=False)
            total = zero
            for mu, rho in ((self.weight_mu, self.weight_rho), (self.bias_mu, self.bias_rho)):
                posterior = Normal(mu.float(), F.softplus(rho.float()), validate_args=False)
                total = total + kl_divergence(posterior, prior).sum()  # prior broadcasts
        return total


class Bayes(Variant):
    name = "bayes"
    ties_embedding = False  # the posterior has its own mean and std per weight
    bayesian = True
    data_term = "nll"  # the name under which loss() logs the expected data term

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        if config.bayes_estimator not in ("local", "weight"):
            raise UserError(f"bayes_estimator must be local or weight, got {config.bayes_estimator!r}")
        self.lm_head = VariationalLinear(
            config.n_embd, config.vocab_size, config.prior_sigma, config.posterior_init_sigma
        )

    def reset_parameters(self) -> None:
        self.lm_head.reset_parameters()

    @torch.no_grad()
    def init_head_from(self, embedding: torch.Tensor) -> None:
        self.lm_head.weight_mu.copy_(embedding)

    def kl_num_tokens(self) -> int:
        num_tokens = self.config.kl_num_tokens
        if num_tokens <= 0:
            raise UserError(
                f"{self.name}: kl_num_tokens is {num_tokens}; set it to the number of training "
                "tokens in one epoch (the training loop does this) so the ELBO can scale the KL"
            )
        return num_tokens

    def data_loss(
        self, logits: torch.Tensor, targets: torch.Tensor, extra_positives: torch.Tensor | None
    ) -> tuple[torch.Tensor, Stats]:
        """The data term of the ELBO on one set of sampled logits, mean over positions."""
        return softmax_cross_entropy(logits, targets).mean(), {}

    def sample_log_probs(self, sample_logits: torch.Tensor) -> torch.Tensor:
        """The normalised distribution of each weight sample."""
        return F.log_softmax(sample_logits, dim=-1)

    def loss(self, hidden, targets, extra_positives=None) -> tuple[torch.Tensor, Stats]:
        if self.config.bayes_estimator == "weight":
            logits, kl = self.lm_head.sample_logits_shared(hidden)
        else:
            logits, kl = self.lm_head.sample_logits(hidden), self.lm_head.fused_kl()
        kl = kl / self.kl_num_tokens()
        data, stats = self.data_loss(logits, targets, extra_positives)
        stats = {self.data_term: data.detach(), "kl": kl.detach(), **stats}
        return data + self.config.kl_weight * kl, stats

    def _samples(self, hidden: torch.Tensor, samples: int | None) -> torch.Tensor:
        """(S, ..., V) log-probs of S weight samples."""
        num_samples = samples or self.config.bayes_samples
        return self.sample_log_probs(self.lm_head.sample_logits(hidden, num_samples))

    @staticmethod
    def _mean(sample_log_probs: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(sample_log_probs, dim=0) - math.log(sample_log_probs.size(0))

    def log_probs(self, hidden, samples=None) -> torch.Tensor:
        """log of the mean over S = samples (default config.bayes_samples) sampled distributions."""
        return self._mean(self._samples(hidden, samples))

    def evaluate(self, hidden, targets) -> tuple[torch.Tensor, Stats]:
        sample_log_probs = self._samples(hidden, None)
        num_samples, vocab_size = sample_log_probs.size(0), sample_log_probs.size(-1)
        stats = bayes_token_stats(sample_log_probs.view(num_samples, -1, vocab_size))
        stats = {key: value.view(targets.shape) for key, value in stats.items()}
        return self._mean(sample_log_probs), stats
