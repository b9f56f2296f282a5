"""The augmenter: a frozen teacher LM proposes further valid next tokens ("extra positives").

After "The boy went to the" the data says " park", but " store" is valid too. For each chosen
target position the teacher proposes its top-k next tokens and a validity filter keeps some:

Alignment. The target at position t is y[:, t], the token after x[:, t]. Its candidates come
from the teacher's distribution after reading x[:, 0..t], i.e. the teacher's output at
position t on input x, never the output at t-1 (that would propose x[:, t] itself).

Filters.
  none        the top-k as they are.
  prob        keep a candidate whose teacher probability is >= min_prob.
  perplexity  put the candidate in place of the true token and score the window around it
              with the teacher; keep it if that window's perplexity is < threshold.

The window (`window` = W tokens). Let r = x[b] followed by y[b, -1] (the T+1 tokens of the
training window) and p = t + 1 the index in r of the substituted token. The teacher reads
the L = min(W, T+1) tokens r'[lo : lo+L] of the substituted row r', with
lo = clamp(p - W//2, 0, T+1 - L): up to W//2 tokens before the candidate as context (more when
the window meets the end of the row, fewer at its start). It scores the candidate and the
tokens after it, r'[p : min(p + W - W//2, T+1)], each predicted from the window tokens before
it; the window perplexity is exp(mean NLL of those scored tokens). Tokens before p are left
out of the mean: no candidate changes them, so they would only dilute the one substitution.
All candidates of a batch are scored in one batched pass (chunked only to bound memory).

Positions. "one" (one random target position per row, as the original method did), "all", or
a fraction such as "0.25" (that share of each row's positions). The choice is a pure function
of (seed, the row's start offset in the split), so it neither consumes the global torch RNG
nor changes on resume, and a cache can apply the same choice when it is read.

Output. (B, T, K=k) int64 token ids on the batch's device, -1 where a slot holds no kept
candidate and everywhere outside the chosen positions. The true next token may appear among
them (the loss deduplicates it) and is always a positive there anyway. With `with_log_probs`
(for variants that declare `uses_teacher_probs`, such as distill) an ExtraTargets: those ids
and the teacher's log-probability of each, float32, -inf at padding. The filters compute these
log-probabilities anyway (the top-k's values), so they cost one more (B, T, K) scatter."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from nanoGPT.augment.settings import AugmentSettings, select_positions
from nanoGPT.augment.teachers import (
    Teacher,
    check_teacher_fits,
    probable_candidates,
    target_log_probs,
    top_candidates,
)
from nanoGPT.data import Batch
from nanoGPT.variants.base import ExtraTargets

# bounds the tokens of one teacher forward pass over candidate windows
WINDOW_CHUNK_TOKENS = 2**16


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array onto `device`, asynchronously on CUDA (pinned memory), as data.py does."""
    tensor = torch.from_numpy(np.array(array))  # a copy: views and memmaps may be read-only
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@dataclass
class Proposal:
    """The teacher's candidates for n chosen target positions of each of B rows."""

    positions: torch.Tensor  # (B, n) target positions t (candidates stand in for y[:, t])
    ids: torch.Tensor  # (B, n, k) top-k candidate ids, most likely first (the prob filter
    # in training on the CPU computes only the kept ones: -1 fills its other slots)
    log_probs: torch.Tensor  # (B, n, k) teacher log-probability of each candidate
    keep: torch.Tensor  # (B, n, k) bool: passed the filter
    perplexity: torch.Tensor | None = None  # (B, n, k) window perplexity, when scored


def window_geometry(
    positions: np.ndarray, row_length: int, window: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """For target positions t in rows of `row_length` = T+1 tokens: the window start lo, the
    candidate's column p - lo inside the window, the number of scored tokens, and the window
    length L (see the module docstring)."""
    length = min(window, row_length)
    before, scored_max = window // 2, window - window // 2
    p = positions + 1
    lo = np.clip(p - before, 0, row_length - length)
    scored = np.minimum(p + scored_max, row_length) - p
    return lo, p - lo, scored, length


class DataAugmenter:
    """batch -> (B, T, k) extra positive ids padded with -1, from a teacher, online; with
    `with_log_probs`, ExtraTargets(those ids, their teacher log-probs)."""

    def __init__(
        self, teacher: Teacher, settings: AugmentSettings, seed: int = 0, with_log_probs: bool = False
    ):
        settings.validate()
        check_teacher_fits(teacher, settings)
        self.teacher, self.settings, self.seed = teacher, settings, seed
        self.with_log_probs = with_log_probs

    def __call__(self, batch: Batch) -> torch.Tensor | ExtraTargets:
        T = batch.x.size(1)
        positions = select_positions(batch.starts, T, self.settings.positions, self.seed)
        return self.positives(batch.x, batch.y, positions)

    def positives(
        self, x: torch.Tensor, y: torch.Tensor, positions: np.ndarray
    ) -> torch.Tensor | ExtraTargets:
        """(B, T, k) kept candidates at `positions` (B, n), -1 elsewhere (and their log-probs)."""
        return scatter_kept(self.propose(x, y, positions), x.size(1), self.with_log_probs)

    def propose(
        self, x: torch.Tensor, y: torch.Tensor, positions: np.ndarray, score_windows: bool = False
    ) -> Proposal:
        """The top-k candidates for y[:, t] at each t in `positions` and the filter's verdict.
        `score_windows` computes window perplexities under any filter (for the demo)."""
        s, teacher = self.settings, self.teacher
        B, n = positions.shape
        pos = to_device(positions, x.device)
        with teacher.context():
            hidden = teacher.hidden(x)  # (B, T, C): output t has read x[:, 0..t]
            chosen = hidden.gather(1, pos[:, :, None].expand(-1, -1, hidden.size(-1)))
            chosen = chosen.reshape(B * n, -1)
            # only the kept ones are needed; on the CPU, where a top-k over the vocabulary is
            # slow (on CUDA it is fast, and nonzero() would make the device wait for the host)
            if s.filter == "prob" and not score_windows and teacher.device.type == "cpu":
                log_probs, ids = probable_candidates(teacher, chosen, s.k, math.log(s.min_prob))
            else:
                log_probs, ids = top_candidates(teacher, chosen, s.k)
            log_probs, ids = log_probs.view(B, n, s.k), ids.view(B, n, s.k)
            perplexity = None
            if s.filter == "perplexity" or score_windows:
                perplexity = self.window_nll(x, y, positions, ids).exp()
        if s.filter == "perplexity":
            keep = perplexity < s.threshold
        elif s.filter == "prob":
            keep = (log_probs >= math.log(s.min_prob)) & (ids >= 0)
        else:
            keep = torch.ones_like(ids, dtype=torch.bool)
        return Proposal(pos, ids, log_probs, keep, perplexity)

    def window_nll(
        self, x: torch.Tensor, y: torch.Tensor, positions: np.ndarray, candidates: torch.Tensor
    ) -> torch.Tensor:
        """(B, n, k) mean teacher NLL of each candidate's window, every candidate of the batch
        in one batched pass over (B*n*k, L) windows, chunked only to bound memory."""
        teacher = self.teacher
        B, n, k = candidates.shape
        rows = torch.cat([x, y[:, -1:]], dim=1)  # (B, T+1): r in the module docstring
        lo, column, scored, length = window_geometry(positions, rows.size(1), self.settings.window)
        scored_max = self.settings.window - self.settings.window // 2
        device = x.device
        lo, column, scored = (to_device(a.reshape(-1), device) for a in (lo, column, scored))
        row_of = torch.arange(B, device=device).repeat_interleave(n)  # (B*n,)
        offsets = torch.arange(length, device=device)
        slots = torch.arange(scored_max, device=device)
        flat_candidates = candidates.reshape(-1)
        total = B * n * k
        step = max(1, WINDOW_CHUNK_TOKENS // length)
        nll = []
        for first in range(0, total, step):
            entry = torch.arange(first, min(first + step, total), device=device)
            place = entry // k  # which (row, position) the candidate belongs to
            windows = rows[row_of[place, None], lo[place, None] + offsets]  # (R, L)
            windows.scatter_(1, column[place, None], flat_candidates[entry, None])
            # scored window columns column + s (s < scored) are predicted by outputs one before
            cols = (column[place, None] + slots).clamp(max=length - 1)  # (R, S)
            valid = slots < scored[place, None]
            hidden = teacher.hidden(windows)
            hidden = hidden.gather(1, (cols - 1)[:, :, None].expand(-1, -1, hidden.size(-1)))
            token_lp = target_log_probs(
                teacher, hidden.reshape(-1, hidden.size(-1)), windows.gather(1, cols).reshape(-1)
            ).view(cols.shape)
            token_lp = torch.where(valid, token_lp, torch.zeros_like(token_lp))
            nll.append(-token_lp.sum(1) / scored[place])
        return torch.cat(nll).view(B, n, k)


def scatter_kept(
    proposal: Proposal, block_size: int, with_log_probs: bool = False
) -> torch.Tensor | ExtraTargets:
    """(B, T, k) int64: the kept candidate ids at their positions, -1 everywhere else; with
    `with_log_probs` also their (B, T, k) float32 log-probs, -inf everywhere else."""
    ids, keep, pos = proposal.ids, proposal.keep, proposal.positions
    B, n, k = ids.shape
    index = pos[:, :, None].expand(B, n, k)
    out = torch.full((B, block_size, k), -1, dtype=torch.long, device=ids.device)
    out.scatter_(1, index, torch.where(keep, ids, torch.full_like(ids, -1)))
    if not with_log_probs:
        return out
    log_probs = proposal.log_probs.float()
    out_log_probs = torch.full((B, block_size, k), -torch.inf, device=ids.device)
    out_log_probs.scatter_(1, index, torch.where(keep, log_probs, torch.full_like(log_probs, -torch.inf)))
    return ExtraTargets(out, out_log_probs)
