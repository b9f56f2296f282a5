"""The hand-written loss kernels the variants share, each with its backward written out.

They compute exactly what the textbook PyTorch expression computes (the tests hold each to it
in value and gradient) while keeping fewer vocabulary-sized buffers alive, because at the GPT-2
vocabulary the output head and its loss are most of a small model's memory and time:

- `softmax_cross_entropy`: F.cross_entropy (baseline, smooth, bayes, the controls);
- `soft_target_cross_entropy`: F.cross_entropy against a target distribution over a few ids
  (distill), the same kernel with several weighted targets per position;
- `sparse_bce`: F.binary_cross_entropy_with_logits against a multi-hot target given as sparse
  ids (sigmoid, bayes_sigmoid), never the dense (N, V) target;
- `GaussianPosteriorSample`: a weight sample of a mean-field Gaussian posterior fused with its
  closed-form KL to a Gaussian prior (bayes, bayes_sigmoid).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class _WeightedSoftmaxCrossEntropy(torch.autograd.Function):
    """logsumexp(z) - sum_j w_j * z_{id_j} per position, with a hand-written backward: the
    gradient is softmax(z) * g with the targets' slopes -w_j * g scattered into it in place, one
    (N, V) buffer, where F.cross_entropy keeps log_softmax(z) and then builds a zero-filled
    (N, V) gradient for the target and another for the log-softmax. A repeated id adds up its
    weights, as the dense target would."""

    @staticmethod
    def forward(ctx, logits, ids, weights):
        log_normaliser = torch.logsumexp(logits, dim=-1)
        ctx.save_for_backward(logits, ids, weights, log_normaliser)
        return log_normaliser - (weights * logits.gather(1, ids)).sum(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        logits, ids, weights, log_normaliser = ctx.saved_tensors
        grad = grad.unsqueeze(-1)
        grad_logits = torch.sub(logits, log_normaliser[:, None]).exp_().mul_(grad)
        grad_logits.scatter_add_(1, ids, -weights * grad)
        return grad_logits, None, None


def softmax_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, target_weight: float = 1.0
) -> torch.Tensor:
    """(..., V) logits and (...) target ids -> (N,) logsumexp(z) - target_weight * z_target,
    N = targets.numel(). With target_weight 1 that is the cross-entropy of each position,
    F.cross_entropy(logits, targets, reduction="none")."""
    flat = logits.reshape(-1, logits.size(-1))
    weights = flat.new_full((flat.size(0), 1), target_weight)
    return _WeightedSoftmaxCrossEntropy.apply(flat, targets.reshape(-1, 1), weights)


def soft_target_cross_entropy(logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The cross-entropy of (..., V) logits against a sparse target distribution: (..., M) ids
    padded with -1 and their (..., M) weights -> (N,) logsumexp(z) - sum_j w_j * z_{id_j},
    N = the number of positions. Padding carries weight 0 whatever `weights` holds there; a
    repeated id counts with the sum of its weights. With weights summing to 1 per position it
    is F.cross_entropy against the dense target distribution, which is never built."""
    flat = logits.reshape(-1, logits.size(-1))
    ids = ids.reshape(flat.size(0), -1)
    weights = weights.reshape(ids.shape).to(flat.dtype)
    is_target = ids >= 0
    weights = torch.where(is_target, weights, torch.zeros_like(weights))
    return _WeightedSoftmaxCrossEntropy.apply(flat, ids.clamp_min(0), weights)


def positive_ids(
    targets: torch.Tensor, extra_positives: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(...) true ids and (..., K) extra ids padded with -1 -> (N, 1+K) ids and a mask that
    keeps each distinct non-negative id once per position. The true id is always kept."""
    ids = targets.reshape(-1, 1)
    if extra_positives is not None and extra_positives.size(-1) > 0:
        extra = extra_positives.reshape(ids.size(0), -1).to(ids.dtype)
        ids = torch.cat([ids, extra], dim=1)
    ids = ids.sort(dim=1).values  # duplicates become neighbours; the -1 padding comes first
    first = torch.ones_like(ids, dtype=torch.bool)
    first[:, 1:] = ids[:, 1:] != ids[:, :-1]
    return ids.clamp_min(0), first & (ids >= 0)


def _positive_terms(z_pos: torch.Tensor, is_positive: torch.Tensor, pos_weight: float):
    """The loss of the positives beyond softplus(z), (w - 1) * softplus(z) - w * z, and its
    derivative (w - 1) * sigma(z) - w, zero where the slot is padding or a duplicate."""
    if pos_weight == 1.0:  # skip the softplus; also no 0 * inf at saturated logits
        terms, slopes = -z_pos, torch.full_like(z_pos, -1.0)
    else:
        terms = (pos_weight - 1.0) * F.softplus(z_pos) - pos_weight * z_pos
        slopes = (pos_weight - 1.0) * torch.sigmoid(z_pos) - pos_weight
    zero = torch.zeros_like(z_pos)
    return torch.where(is_positive, terms, zero), torch.where(is_positive, slopes, zero)


class _SparseBCE(torch.autograd.Function):
    """sum_v softplus(z_v) + the positive terms, per position, with a hand-written backward:
    autograd would give the gather its own zero-filled V-sized gradient and add it to the
    softplus gradient (one more V-sized buffer, three more passes over it). Here the gradient
    is sigma(z) * g, with the few positive slopes scattered into it in place."""

    @staticmethod
    def forward(ctx, logits, ids, is_positive, pos_weight):
        z_pos = logits.gather(1, ids)
        pos_terms, slopes = _positive_terms(z_pos, is_positive, pos_weight)
        ctx.save_for_backward(logits, ids, slopes)
        return F.softplus(logits).sum(-1) + pos_terms.sum(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        logits, ids, slopes = ctx.saved_tensors
        grad = grad.unsqueeze(-1)
        grad_logits = torch.sigmoid(logits).mul_(grad)
        grad_logits.scatter_add_(1, ids, slopes * grad)  # duplicates' slopes are 0
        return grad_logits, None, None, None


def sparse_bce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    extra_positives: torch.Tensor | None,
    pos_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BCE of (..., V) logits against the multi-hot target {true} U extra_positives, summed over
    the vocabulary: one loss per position, shape (N,), N = targets.numel(). Also returns the
    number of distinct positives of each position, (N,).

    Equal to F.binary_cross_entropy_with_logits(logits, dense_target, pos_weight=w,
    reduction="none").sum(-1) without ever building the dense target. Extra ids must be < V."""
    ids, is_positive = positive_ids(targets, extra_positives)
    loss = _SparseBCE.apply(logits.reshape(-1, logits.size(-1)), ids, is_positive, pos_weight)
    return loss, is_positive.sum(-1)


def _generator_state(device: torch.device) -> torch.Tensor:
    """The state of the default random generator of `device` (the CPU's or a CUDA device's)."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


def _replay_randn_like(like: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """torch.randn_like(like) as drawn when the generator of like's device was at `state`
    (_generator_state): the same values; the generators are left as they were."""
    cuda = like.device.type == "cuda"
    with torch.random.fork_rng(devices=[like.device] if cuda else []):
        if cuda:
            torch.cuda.set_rng_state(state, like.device)
        else:
            torch.set_rng_state(state)
        return torch.randn_like(like)


class GaussianPosteriorSample(torch.autograd.Function):
    """For q = N(mu, sigma^2) elementwise with log sigma = sigma_scale * theta: (a sample
    mu + sigma * eps if `draw`, else an empty tensor; KL(q || N(0, prior_sigma^2)) summed over
    every entry; the detached moments [sum sigma, sum sigma^2] for logging), float32.

    theta is log sigma in units of 1/sigma_scale, so that Adam, which moves a parameter by about
    the learning rate per step whatever its gradient's size, moves log sigma sigma_scale times
    faster than the means: the posterior can widen or narrow by orders of magnitude in a normal
    training budget (README, "Bayesian heads").

    The same closed form pyro's kl_divergence gives (VariationalLinear.kl, which the tests hold
    this to, in value and gradient), written out with its gradient by hand:
        KL = sum log(prior / sigma) + (sigma^2 + mu^2) / (2 prior^2) - 1/2
        dKL/dmu = mu / prior^2,    dKL/dtheta = sigma_scale * (sigma^2 / prior^2 - 1),
    and d(sample)/dmu = 1, d(sample)/dtheta = sigma_scale * sigma * eps. At the GPT-2
    vocabulary mu is 50257 x n_embd: autograd through pyro's KL and a separate sample makes
    about twenty such temporaries per step, each a full pass over memory; this makes seven."""

    @staticmethod
    def forward(
        ctx, mu: torch.Tensor, theta: torch.Tensor, sigma_scale: float, prior_sigma: float, draw: bool
    ):
        with torch.autocast(mu.device.type, enabled=False):  # float32 parameters stay float32
            sigma = torch.mul(theta, sigma_scale).exp_()
            flat_mu, flat_sigma = mu.reshape(-1), sigma.reshape(-1)
            sigma_squares = torch.dot(flat_sigma, flat_sigma)
            kl = (
                (sigma_squares + torch.dot(flat_mu, flat_mu)) / (2 * prior_sigma**2)
                - sigma_scale * theta.sum()  # - sum log sigma
                + (math.log(prior_sigma) - 0.5) * mu.numel()
            )
            # torch.compile draws its own random numbers, which an eager redraw would not match:
            # compiled, the noise is kept for backward
            replay = draw and not torch.compiler.is_compiling()
            rng_state = _generator_state(mu.device) if replay else None
            eps = torch.randn_like(mu) if draw else None
            if replay:  # into eps's buffer: the same kernel and values, one (V, C) temporary fewer
                sample = torch.addcmul(mu, sigma, eps, out=eps)
            else:
                sample = torch.addcmul(mu, sigma, eps) if draw else mu.new_empty(0)
            moments = torch.stack([flat_sigma.sum(), sigma_squares])
        ctx.prior_sigma, ctx.sigma_scale, ctx.draw, ctx.rng_state = prior_sigma, sigma_scale, draw, rng_state
        ctx.mark_non_differentiable(moments)
        # theta, not sigma, and the generator's state, not the noise: a parameter and a few
        # bytes cost nothing to keep, sigma and eps would be two more (V, C) buffers held from
        # forward to backward; backward recomputes them (one exp, one randn: the same values)
        ctx.save_for_backward(mu, theta, None if replay else eps)
        return sample, kl, moments

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_sample: torch.Tensor, grad_kl: torch.Tensor, grad_moments: torch.Tensor):
        mu, theta, eps = ctx.saved_tensors
        prior_var = ctx.prior_sigma**2
        sigma = torch.mul(theta, ctx.sigma_scale).exp_()
        noise = None
        if ctx.draw:
            noise = (eps if ctx.rng_state is None else _replay_randn_like(mu, ctx.rng_state)).mul_(sigma)
        # dL/dtheta / sigma_scale = sigma * dL/dsigma
        grad_theta = sigma.square_().sub_(prior_var).mul_(grad_kl / prior_var)
        if ctx.draw:
            grad_theta.addcmul_(grad_sample, noise)
            del noise  # freed before grad_mu is allocated: three (V, C) buffers at most
        grad_mu = mu * (grad_kl / prior_var)
        if ctx.draw:
            grad_mu.add_(grad_sample)
        return grad_mu, grad_theta.mul_(ctx.sigma_scale), None, None, None
