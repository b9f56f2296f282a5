"""Evaluation metrics, defined once. Everything is computed from normalised log-probs.

Per-token statistics that only some variants have (Bayesian entropies, sigmoid set sizes)
are computed by the functions below, called from each variant's `evaluate`, and averaged by
`MetricAccumulator` beside the common metrics (NLL, perplexity, bits per byte, accuracy,
ECE, Brier).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

ECE_BINS = 15
# rows of hidden states scored at once, as (rows, V) float32 temporaries of at most 8 MB: small
# enough that the allocator reuses them (a larger buffer is a fresh mmap, zeroed by the kernel,
# on every call; at 2**25 that made a Bayesian evaluation 2-4x slower)
_SCORE_ELEMENTS = 2**21


def score_chunk_rows(vocab_size: int) -> int:
    """How many rows of hidden states evaluation scores at once."""
    return max(1, _SCORE_ELEMENTS // vocab_size)


def entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row of a normalised log-distribution (..., V) -> (...)."""
    probs = log_probs.exp()
    # 0 * log 0 = 0: a head may give exact zeros (-inf log-probs), which would make NaN
    return -torch.where(probs > 0, probs * log_probs, 0.0).sum(-1)


class SampleMixture:
    """The equal mixture of sampled distributions, fed one sample at a time, so that a
    Bayesian head's predictive never holds the (S, N, V) stack of its samples.

    predictive_entropy = H[mean_s p_s]; expected_entropy = mean_s H[p_s];
    mutual_information = their difference (the epistemic part), >= 0 by Jensen.
    """

    def __init__(self) -> None:
        self.count = 0
        self.log_prob_sum: torch.Tensor | None = None  # log sum_s p_s, exact in the tails
        self.entropy_sum: torch.Tensor | None = None

    def add(self, sample_log_probs: torch.Tensor) -> None:
        """One sample's normalised log-probs (..., V)."""
        sample_log_probs = sample_log_probs.float()
        sample_entropy = entropy(sample_log_probs)
        if self.log_prob_sum is None:
            self.log_prob_sum, self.entropy_sum = sample_log_probs, sample_entropy
        else:
            self.log_prob_sum = torch.logaddexp(self.log_prob_sum, sample_log_probs)
            self.entropy_sum = self.entropy_sum + sample_entropy
        self.count += 1

    def log_probs(self) -> torch.Tensor:
        """log of the mean of the samples' probabilities (..., V)."""
        return self.log_prob_sum - math.log(self.count)

    def token_stats(self) -> dict[str, torch.Tensor]:
        """Per-token (...) uncertainty statistics."""
        predictive = entropy(self.log_probs())
        expected = self.entropy_sum / self.count
        return {
            "predictive_entropy": predictive,
            "expected_entropy": expected,
            # >= 0 in exact arithmetic; the clamp only removes float round-off below zero
            "mutual_information": (predictive - expected).clamp_min(0.0),
        }


def sigmoid_token_stats(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """(N, V) sigmoid logits, (N,) true ids -> per-token (N,) statistics of the sigmoid head.

    bce: sum over the vocabulary of the binary cross-entropy against the one-hot true token;
    sigma_true: sigma(z_true); set_size: |{v: sigma(z_v) > 0.5}|; set_has_true: true in that set.
    """
    logits = logits.float()
    z_true = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    in_set = logits > 0  # sigma(z) > 0.5
    return {
        # BCE(z, y) = softplus(z) - y*z, summed over v with y = one-hot(true): no dense target
        "bce": F.softplus(logits).sum(-1) - z_true,
        "sigma_true": torch.sigmoid(z_true),
        "set_size": in_set.sum(-1).float(),
        "set_has_true": (z_true > 0).float(),
    }


def brier(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Multi-class Brier score per token: (..., V) log-probs, (...) ids -> (...).

    sum_v (p_v - y_v)^2 with y one-hot expands to sum_v p_v^2 - 2 p_true + 1, which needs
    no dense one-hot. Ranges over [0, 2].
    """
    probs = log_probs.float().exp()
    p_true = probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return probs.square().sum(-1) - 2.0 * p_true + 1.0


def confidence_bin(confidences: torch.Tensor, n_bins: int = ECE_BINS) -> torch.Tensor:
    """The equal-width bin of each top-1 confidence: [b/n_bins, (b+1)/n_bins), 1.0 in the last."""
    return (confidences * n_bins).long().clamp(0, n_bins - 1)


def calibration_bins(
    confidences: torch.Tensor,
    correct: torch.Tensor,
    n_bins: int = ECE_BINS,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Equal-width bins over [0, 1] of top-1 confidence -> (3, n_bins) float64 sums:
    row 0 the count, row 1 the summed confidence, row 2 the summed correctness.

    Bin b holds confidences in [b/n_bins, (b+1)/n_bins); 1.0 goes in the last bin. Sums (not
    means) so that bins of several batches or ranks add up. `weights` (0/1) drops tokens.
    """
    confidences = confidences.reshape(-1).double()
    correct = correct.reshape(-1).double()
    weights = torch.ones_like(confidences) if weights is None else weights.reshape(-1).double()
    bin_index = confidence_bin(confidences, n_bins)
    bins = torch.zeros(3, n_bins, dtype=torch.float64, device=confidences.device)
    values = torch.stack([weights, weights * confidences, weights * correct])
    return bins.scatter_add_(1, bin_index.expand(3, -1), values)


def ece_from_bins(bins: torch.Tensor) -> float:
    """ECE = sum_b (n_b / N) |acc_b - conf_b| from `calibration_bins` sums."""
    count, confidence_sum, correct_sum = bins.double().cpu()
    total = count.sum().item()
    if total == 0:
        return math.nan
    # n_b * |acc_b - conf_b| = |correct_sum_b - confidence_sum_b|; empty bins contribute 0
    return (correct_sum - confidence_sum).abs().sum().item() / total


def expected_calibration_error(
    confidences: torch.Tensor, correct: torch.Tensor, n_bins: int = ECE_BINS
) -> float:
    """Expected calibration error of top-1 confidences (N,) against 0/1 correctness (N,)."""
    return ece_from_bins(calibration_bins(confidences, correct, n_bins))


def token_byte_table(token_to_bytes: Callable[[int], bytes], vocab_size: int) -> torch.Tensor:
    """(vocab_size,) long tensor: how many bytes of text each token id decodes to.

    Index it with the targets to get `MetricAccumulator.update`'s `token_bytes`.
    `token_to_bytes` must return raw bytes (tiktoken's `decode_single_token_bytes`, or
    `char.encode("utf-8")` for a character vocabulary): a BPE token can be part of a UTF-8
    character, and decoding it alone to str would count replacement characters instead.
    """
    return torch.tensor([len(token_to_bytes(i)) for i in range(vocab_size)], dtype=torch.long)


# MetricAccumulator.scalars holds the sums of: nll, correct, brier, tokens, bytes, and tokens
# that came with a byte count (bpb is only reported when that equals tokens)
_NUM_SCALARS = 6
_RESERVED_NAMES = {"nll", "ppl", "bpb", "acc", "ece", "brier", "tokens"}


class MetricAccumulator:
    """Sums of per-token metrics over evaluation batches, without keeping the batches.

    Per batch: `update(log_probs, targets, token_bytes, extras)`; then on every rank
    `all_reduce()` once (a no-op outside torch.distributed), then `compute()`.
    Targets < 0 are ignored (padding), without a host sync. Pass the model's device so the
    sums stay there and no batch waits on a copy to the CPU.
    """

    def __init__(self, device: torch.device | str = "cpu", n_bins: int = ECE_BINS):
        self.device = torch.device(device)
        self.n_bins = n_bins
        # float64: a sum over millions of tokens in float32 loses the low digits of the NLL
        self.scalars = torch.zeros(_NUM_SCALARS, dtype=torch.float64, device=self.device)
        self.bins = torch.zeros(3, n_bins, dtype=torch.float64, device=self.device)
        # name -> (sum, count): an extra missing from some batches still gets a true mean
        self.extras: dict[str, torch.Tensor] = {}
        self._reduced = False

    @torch.no_grad()
    def update(
        self,
        log_probs: torch.Tensor,
        targets: torch.Tensor,
        token_bytes: torch.Tensor | None = None,
        extras: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Add one batch: (N, V) normalised log-probs (or (..., V)), (N,) target ids,
        (N,) bytes each target token decodes to (None: no bits per byte), and per-token (N,)
        variant statistics by name (`SampleMixture.token_stats`, `sigmoid_token_stats`)."""
        if self._reduced:
            raise RuntimeError("MetricAccumulator.update after all_reduce: the sums are final")
        vocab_size = log_probs.size(-1)
        log_probs = log_probs.reshape(-1, vocab_size).float()
        targets = targets.reshape(-1)
        valid = targets >= 0
        safe_targets = targets.clamp_min(0)

        def masked_sum(values: torch.Tensor) -> torch.Tensor:
            # where() rather than a product: an ignored row may hold inf, and inf * 0 is NaN
            return torch.where(valid, values.reshape(-1).double(), 0.0).sum()

        log_p_true = log_probs.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
        top_log_prob, top_id = log_probs.max(-1)
        correct = top_id == safe_targets
        num_tokens = masked_sum(torch.ones_like(log_p_true))
        if token_bytes is None:
            num_bytes = byte_tokens = torch.zeros_like(num_tokens)
        else:
            num_bytes, byte_tokens = masked_sum(token_bytes.to(valid.device)), num_tokens
        batch = torch.stack(
            [
                masked_sum(-log_p_true),
                masked_sum(correct),
                masked_sum(brier(log_probs, safe_targets)),
                num_tokens,
                num_bytes,
                byte_tokens,
            ]
        )
        self.scalars += batch.to(self.device)
        self.bins += calibration_bins(top_log_prob.exp(), correct, self.n_bins, valid).to(self.device)

        for name, values in (extras or {}).items():
            if name in _RESERVED_NAMES:
                raise ValueError(f"extra statistic {name!r} would hide the metric of that name")
            sums = torch.stack([masked_sum(values), num_tokens]).to(self.device)
            if name in self.extras:
                self.extras[name] += sums
            else:
                self.extras[name] = sums

    def all_reduce(self) -> None:
        """Sum the state over torch.distributed ranks in one collective (when initialised).

        Every rank must call it, and every rank must have seen the same extra names.
        """
        if self._reduced:
            raise RuntimeError("MetricAccumulator.all_reduce called twice: it would double")
        self._reduced = True
        if not (dist.is_available() and dist.is_initialized()):
            return
        names = sorted(self.extras)  # same order on every rank
        flat = torch.cat([self.scalars, self.bins.reshape(-1)] + [self.extras[n] for n in names])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        self.scalars, bins, extras = flat.split([_NUM_SCALARS, self.bins.numel(), 2 * len(names)])
        self.bins = bins.reshape(3, self.n_bins)
        self.extras = dict(zip(names, extras.reshape(-1, 2)))

    def compute(self) -> dict[str, float]:
        """nll (nats/token), ppl, bpb (when every token had a byte count), acc, ece, brier,
        the mean of each extra under its own name, and tokens."""
        nll_sum, correct, brier_sum, tokens, num_bytes, byte_tokens = self.scalars.tolist()
        if tokens == 0:
            raise ValueError("MetricAccumulator.compute: no tokens were accumulated")
        nll = nll_sum / tokens
        results = {
            "nll": nll,
            "ppl": math.exp(nll) if nll < 700 else math.inf,  # math.exp overflows past ~709
            "acc": correct / tokens,
            "ece": ece_from_bins(self.bins),
            "brier": brier_sum / tokens,
        }
        if byte_tokens == tokens and num_bytes > 0:
            results["bpb"] = nll_sum / num_bytes / math.log(2)
        for name, (extra_sum, count) in self.extras.items():
            results[name] = extra_sum.item() / count.item() if count.item() > 0 else math.nan
        results["tokens"] = tokens
        return results

    def reliability(self) -> dict[str, list[float | None]]:
        """Per-bin data for a reliability diagram: bin edges (n_bins + 1), and per bin the
        mean confidence, the accuracy (None for an empty bin, which JSON keeps) and count."""
        count, confidence_sum, correct_sum = self.bins.cpu().tolist()
        return {
            "edges": [b / self.n_bins for b in range(self.n_bins + 1)],
            "confidence": [s / n if n > 0 else None for s, n in zip(confidence_sum, count)],
            "accuracy": [s / n if n > 0 else None for s, n in zip(correct_sum, count)],
            "count": count,
        }


class WindowAccumulator:
    """Per-window sums of the held-out metrics, so a statistic can be recomputed on any
    resample of windows (nanoGPT/stats.py): for each evaluation window the NLL sum, the count
    of correct top-1 predictions, the Brier sum, the token count, and its calibration-bin
    sums (count, confidence sum, correct sum per bin, as `calibration_bins`).

    `update(log_probs, targets, window)` takes (N, V) normalised log-probs, (N,) target ids
    and (N,) the index of the window each token belongs to; windows may arrive in any order.
    """

    def __init__(self, n_bins: int = ECE_BINS):
        self.n_bins = n_bins
        self.scalars = torch.zeros(0, 4, dtype=torch.float64)  # nll, correct, brier, tokens
        self.bins = torch.zeros(0, 3, n_bins, dtype=torch.float64)

    def _grow(self, num_windows: int) -> None:
        extra = num_windows - self.scalars.size(0)
        if extra > 0:
            self.scalars = torch.cat([self.scalars, self.scalars.new_zeros(extra, 4)])
            self.bins = torch.cat([self.bins, self.bins.new_zeros(extra, 3, self.n_bins)])

    @torch.no_grad()
    def update(self, log_probs: torch.Tensor, targets: torch.Tensor, window: torch.Tensor) -> None:
        log_probs = log_probs.reshape(-1, log_probs.size(-1)).float()
        targets, window = targets.reshape(-1), window.reshape(-1).long().cpu()
        valid = (targets >= 0).cpu()
        safe_targets = targets.clamp_min(0)
        top_log_prob, top_id = log_probs.max(-1)
        correct = (top_id == safe_targets).double().cpu()
        values = torch.stack(
            [
                -log_probs.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1).double().cpu(),
                correct,
                brier(log_probs, safe_targets).double().cpu(),
                torch.ones_like(correct),
            ],
            dim=1,
        )
        values, window = values[valid], window[valid]  # padding is in no window's sums
        self._grow(int(window.max()) + 1 if window.numel() else 0)
        self.scalars.index_add_(0, window, values)
        confidence = top_log_prob.exp().double().cpu()[valid]
        bin_index = confidence_bin(confidence, self.n_bins)
        flat = self.bins.view(-1)  # (window, row, bin) -> window * 3B + row * B + bin
        for row, row_values in enumerate((torch.ones_like(confidence), confidence, values[:, 1])):
            flat.index_add_(0, window * 3 * self.n_bins + row * self.n_bins + bin_index, row_values)

    def arrays(self) -> dict[str, list]:
        """The per-window sums as plain lists (JSON- and numpy-ready): nll, correct, brier,
        tokens (one value per window) and bins (per window, 3 x n_bins)."""
        nll, correct, brier_sum, tokens = self.scalars.T.tolist()
        return {
            "nll": nll,
            "correct": correct,
            "brier": brier_sum,
            "tokens": tokens,
            "bins": self.bins.tolist(),
        }
