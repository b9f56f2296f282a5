"""The augmenter: a frozen teacher LM proposes further valid next tokens ("extra positives").

After "The boy went to the" the data says " park", but " store" is valid too. For each chosen
target position the teacher proposes k next tokens and a validity filter keeps some:

Alignment. The target at position t is y[:, t], the token after x[:, t]. Its candidates come
from the teacher's distribution after reading x[:, 0..t], i.e. the teacher's output at
position t on input x, never the output at t-1 (that would propose x[:, t] itself).

Candidates. The teacher's k most likely tokens (augment_sample_top_k=0, the default), or k
distinct tokens drawn without replacement from its distribution cut to its augment_sample_top_k
most likely tokens and their augment_sample_top_p nucleus (the source's "top-k sampling"),
most likely first. The draws are a pure function of (seed, the target's offset in the split,
the token), so online, a cache and a resumed run draw the same (teachers.sampled_candidates).

Filters.
  none        the candidates as they are.
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
log-probabilities anyway (the top-k's values), so they cost one more (B, T, K) scatter.

Object API (the source project's use, for a few sentences rather than training batches):

    augmenter = DataAugmenter()          # GPT-2 through transformers; or "ckpt:out/run", a model
    batch = augmenter.tokenizer(["The boy went to the park."], return_tensors="pt", padding=True)
    multi_hot, target_indices = augmenter.augment(batch.input_ids, target_indices=[5], do_filter=True,
                                                  attention_mask=batch.attention_mask)
    augmenter.substitutions(batch.input_ids, target_indices, multi_hot, batch.attention_mask)
    # e.g. [['The boy went to the area.', 'The boy went to the bench.', ...]]

multi_hot is (B, V) bool: row b is true at the original token input_ids[b, i] of its target
index i and at the candidates kept for it, proposed after reading tokens 0..i-1 (the source
read tokens 0..i, an off-by-one that proposes the token after i). do_filter applies the filter
(perplexity by default, the source's validity test); do_filter=False keeps every candidate."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nanoGPT.augment.settings import AugmentSettings, select_positions
from nanoGPT.augment.teachers import (
    Teacher,
    check_teacher_fits,
    open_teacher,
    probable_candidates,
    sampled_candidates,
    target_log_probs,
    teacher_tokenizer,
    top_candidates,
)
from nanoGPT.data import Batch
from nanoGPT.errors import UserError
from nanoGPT.runtime import resolve_device
from nanoGPT.tokenizer import Tokenizer
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
    positions: np.ndarray, row_length: int, window: int, ends: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """For target positions t in rows of `row_length` = T+1 tokens: the window start lo, the
    candidate's column p - lo inside the window, the number of scored tokens, and the window
    length L (see the module docstring). `ends` (B, 1): where each row's real tokens end, for
    right-padded rows: the geometry of the row without its padding (a causal teacher's output
    for a real token never reads the padding after it, which the window may hold)."""
    length = min(window, row_length)
    ends = row_length if ends is None else ends
    before, scored_max = window // 2, window - window // 2
    p = positions + 1
    lo = np.clip(p - before, 0, np.maximum(ends - length, 0))
    scored = np.minimum(p + scored_max, ends) - p
    return lo, p - lo, scored, length


class DataAugmenter:
    """A teacher's extra positives: for training, batch -> (B, T, k) ids padded with -1 (with
    `with_log_probs`, ExtraTargets(those ids, their teacher log-probs)); for a user, the object
    API of the source project (module docstring, "Object API").

    `teacher`: a Teacher, or what open_teacher takes: "gpt2" (the default: settings.teacher,
    through transformers from the local Hugging Face cache or the hub), a local HF folder,
    ckpt:<out_dir>, a GPT of this framework or a transformers causal LM. `device` places a
    teacher loaded here ("auto": CUDA when there is one). `settings` (default AugmentSettings():
    TrainConfig's augment_* defaults) with keyword `options` replacing some of them, e.g. k=10,
    filter="prob", sample_top_k=40. `tokenizer`: the teacher's vocabulary as a nanoGPT
    Tokenizer, needed only where it cannot be told (a model of another vocabulary than GPT-2's
    or a checkpoint's)."""

    def __init__(
        self,
        teacher: Teacher | str | torch.nn.Module | None = None,
        settings: AugmentSettings | None = None,
        seed: int = 0,
        with_log_probs: bool = False,
        *,
        device: str = "auto",
        tokenizer: Tokenizer | None = None,
        **options: Any,
    ):
        settings = with_options(settings or AugmentSettings(), options)
        if isinstance(teacher, str):  # the settings name the teacher they are used with
            settings = dataclasses.replace(settings, teacher=teacher)
        teacher = settings.teacher if teacher is None else teacher
        settings.validate()
        if not isinstance(teacher, Teacher):
            teacher = open_teacher(teacher, resolve_device(device))
        check_teacher_fits(teacher, settings)
        self.teacher, self.settings, self.seed = teacher, settings, seed
        self.with_log_probs = with_log_probs
        self._base_tokenizer = tokenizer
        self._batch_tokenizer: BatchTokenizer | None = None
        self._index_rng = np.random.default_rng(seed)  # augment()'s random target indices

    def __call__(self, batch: Batch) -> torch.Tensor | ExtraTargets:
        T = batch.x.size(1)
        positions = select_positions(batch.starts, T, self.settings.positions, self.seed)
        return self.positives(batch.x, batch.y, positions, batch.starts)

    def positives(
        self, x: torch.Tensor, y: torch.Tensor, positions: np.ndarray, starts: np.ndarray | None = None
    ) -> torch.Tensor | ExtraTargets:
        """(B, T, k) kept candidates at `positions` (B, n), -1 elsewhere (and their log-probs).
        `starts` (B,): each row's offset in its split, what drawn candidates are keyed by."""
        proposal = self.propose(x, y, positions, starts=starts)
        return scatter_kept(proposal, x.size(1), self.with_log_probs)

    def propose(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        positions: np.ndarray,
        score_windows: bool = False,
        starts: np.ndarray | None = None,
        ends: np.ndarray | None = None,
        apply_filter: bool = True,
    ) -> Proposal:
        """The candidates for y[:, t] at each t in `positions` and the filter's verdict.
        `score_windows` computes window perplexities under any filter (for the demo); `starts`
        key the draws of sampled candidates (default: row b starts at b * T); `ends` (B,): the
        length of each row's real tokens, padding after them (default: all T+1 of them);
        `apply_filter=False` keeps every candidate."""
        s, teacher = self.settings, self.teacher
        B, n = positions.shape
        pos = to_device(positions, x.device)
        with teacher.context():
            hidden = teacher.hidden(x)  # (B, T, C): output t has read x[:, 0..t]
            chosen = hidden.gather(1, pos[:, :, None].expand(-1, -1, hidden.size(-1)))
            log_probs, ids = self.candidates(chosen.reshape(B * n, -1), positions, starts, score_windows)
            log_probs, ids = log_probs.view(B, n, s.k), ids.view(B, n, s.k)
            perplexity = None
            if (apply_filter and s.filter == "perplexity") or score_windows:
                perplexity = self.window_nll(x, y, positions, ids.clamp(min=0), ends).exp()
        keep = ids >= 0  # slots a prob threshold or a small nucleus left empty hold -1
        if apply_filter and s.filter == "perplexity":
            keep &= perplexity < s.threshold
        elif apply_filter and s.filter == "prob":
            keep &= log_probs >= math.log(s.min_prob)
        return Proposal(pos, ids, log_probs, keep, perplexity)

    def candidates(
        self, hidden: torch.Tensor, positions: np.ndarray, starts: np.ndarray | None, score_windows: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B*n, C) hidden rows at `positions` -> (log-probs, ids), each (B*n, k): the teacher's
        top k, or k drawn from it (keyed by the target's offset starts[b] + t)."""
        s, teacher = self.settings, self.teacher
        if s.sampled:
            B, T = positions.shape[0], int(positions.max(initial=0)) + 1
            starts = np.arange(B, dtype=np.int64) * T if starts is None else np.asarray(starts, np.int64)
            keys = to_device((starts[:, None] + positions).reshape(-1), hidden.device)
            return sampled_candidates(teacher, hidden, s.k, s.sample_top_k, s.sample_top_p, keys, self.seed)
        # only the kept ones are needed; on the CPU, where a top-k over the vocabulary is
        # slow (on CUDA it is fast, and nonzero() would make the device wait for the host)
        if s.filter == "prob" and not score_windows and teacher.device.type == "cpu":
            return probable_candidates(teacher, hidden, s.k, math.log(s.min_prob))
        return top_candidates(teacher, hidden, s.k)

    def window_nll(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        positions: np.ndarray,
        candidates: torch.Tensor,
        ends: np.ndarray | None = None,
    ) -> torch.Tensor:
        """(B, n, k) mean teacher NLL of each candidate's window, every candidate of the batch
        in one batched pass over (B*n*k, L) windows, chunked only to bound memory. `ends`:
        as in propose (each window is then that of the row without its padding)."""
        teacher = self.teacher
        B, n, k = candidates.shape
        rows = torch.cat([x, y[:, -1:]], dim=1)  # (B, T+1): r in the module docstring
        ends = None if ends is None else np.asarray(ends).reshape(B, 1)
        lo, column, scored, length = window_geometry(positions, rows.size(1), self.settings.window, ends)
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

    # --- the object API -----------------------------------------------------------------

    @property
    def tokenizer(self) -> BatchTokenizer:
        """The teacher's tokenizer, called as a Hugging Face one (BatchTokenizer)."""
        if self._batch_tokenizer is None:
            self._batch_tokenizer = BatchTokenizer(self._base_tokenizer or teacher_tokenizer(self.teacher))
        return self._batch_tokenizer

    def augment(
        self,
        input_ids: torch.Tensor | list,
        target_indices: int | list[int] | torch.Tensor | np.ndarray | None = None,
        do_filter: bool = True,
        attention_mask: torch.Tensor | list | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, V) bool multi-hot targets for one token of each sentence, and the (B,) indices.

        `input_ids` (B, S): right-padded sentences (the `tokenizer`'s output), on any device;
        `attention_mask` marks their real tokens (default: all). `target_indices`: the index i
        of the token each sentence has augmented (one int for all, or one per sentence; None:
        a random one each, from the augmenter's seeded generator); i >= 1, as the teacher
        proposes token i after reading tokens 0..i-1. Row b is true at the original token
        input_ids[b, i] and at the candidates kept. `do_filter=True` applies the settings'
        filter (perplexity by default, the source's validity test: the sentence with the
        candidate in place must read with a window perplexity below `threshold`; or prob);
        False keeps all k candidates. Returned on the teacher's device."""
        ids, lengths = self._rows(input_ids, attention_mask)
        index = self._target_indices(target_indices, lengths)
        B = ids.size(0)
        proposal = self.propose(
            ids[:, :-1], ids[:, 1:], (index - 1)[:, None], ends=lengths, apply_filter=do_filter
        )
        rows = torch.arange(B, device=ids.device)
        index_t = torch.as_tensor(index, device=ids.device)
        multi_hot = torch.zeros(B, self.teacher.vocab_size, dtype=torch.bool, device=ids.device)
        kept_ids, keep = proposal.ids[:, 0], proposal.keep[:, 0]  # (B, k)
        multi_hot[rows[:, None].expand_as(kept_ids)[keep], kept_ids[keep]] = True
        multi_hot[rows, ids[rows, index_t]] = True
        return multi_hot, index_t

    def substitutions(
        self,
        input_ids: torch.Tensor | list,
        target_indices: torch.Tensor | list[int],
        multi_hot: torch.Tensor,
        attention_mask: torch.Tensor | list | None = None,
    ) -> list[list[str]]:
        """What `augment` returned as text: for each sentence, the sentence with each true
        token of its multi-hot row other than the original put at its target index (in
        vocabulary order), decoded without its padding."""
        ids, lengths = self._rows(input_ids, attention_mask)
        index = np.asarray(torch.as_tensor(target_indices).cpu(), dtype=np.int64).reshape(-1)
        sentences = []
        for b in range(ids.size(0)):
            row = ids[b, : lengths[b]].tolist()
            original = row[index[b]]
            variants = []
            for candidate in multi_hot[b].nonzero()[:, 0].tolist():
                if candidate != original:
                    row[index[b]] = candidate
                    variants.append(self.tokenizer.decode(row))
            sentences.append(variants)
        return sentences

    def _rows(
        self, input_ids: torch.Tensor | list, attention_mask: torch.Tensor | list | None
    ) -> tuple[torch.Tensor, np.ndarray]:
        """(B, S) int64 ids on the teacher's device and the (B,) lengths of their real tokens."""
        ids = torch.as_tensor(input_ids).long()
        ids = (ids[None] if ids.dim() == 1 else ids).to(self.teacher.device)
        if ids.dim() != 2 or ids.numel() == 0:
            raise UserError(f"input_ids must be (sentences, tokens), got shape {tuple(ids.shape)}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.teacher.vocab_size:
            raise UserError(f"input_ids must be in [0, {self.teacher.vocab_size}): the teacher's vocabulary")
        if ids.size(1) > self.teacher.block_size:
            raise UserError(
                f"sentences of {ids.size(1)} tokens > the teacher's context of {self.teacher.block_size}"
            )
        if attention_mask is None:
            return ids, np.full(ids.size(0), ids.size(1), dtype=np.int64)
        mask = torch.as_tensor(attention_mask).cpu().long().reshape(ids.shape)
        if not torch.equal(mask.cumprod(1), mask):
            raise UserError("attention_mask must mark a prefix of each row: pad sentences on the right")
        return ids, mask.sum(1).numpy()

    def _target_indices(self, target_indices: Any, lengths: np.ndarray) -> np.ndarray:
        """(B,) int64 indices, each in [1, length) of its sentence."""
        B = len(lengths)
        if target_indices is None:
            if (lengths < 2).any():
                raise UserError("every sentence needs at least 2 tokens: a context and a target")
            return self._index_rng.integers(1, lengths).astype(np.int64)
        index = np.asarray(torch.as_tensor(target_indices).cpu(), dtype=np.int64).reshape(-1)
        if index.size == 1:
            index = np.repeat(index, B)
        if index.size != B:
            raise UserError(f"target_indices has {index.size} entries for {B} sentences")
        bad = np.flatnonzero((index < 1) | (index >= lengths))
        if bad.size:
            b = int(bad[0])
            raise UserError(
                f"target index {index[b]} of sentence {b} must be in [1, {lengths[b] - 1}]: the teacher "
                "proposes token i after reading the tokens before it"
            )
        return index


def with_options(settings: AugmentSettings, options: dict[str, Any]) -> AugmentSettings:
    """`settings` with some fields replaced by keyword; UserError naming an unknown one."""
    known = {f.name for f in dataclasses.fields(AugmentSettings)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"unknown augmenter setting {unknown[0]}: one of {', '.join(sorted(known))}")
    return dataclasses.replace(settings, **options)


class Encoding(dict):
    """A tokenizer call's result: input_ids and attention_mask, as keys or as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: str | torch.device) -> Encoding:
        """The tensors moved to `device`, as a Hugging Face BatchEncoding's .to() does."""
        return Encoding({key: value.to(device) for key, value in self.items()})


class BatchTokenizer:
    """A nanoGPT Tokenizer called as a Hugging Face one: tokenizer(sentences,
    return_tensors="pt", padding=True) -> Encoding(input_ids, attention_mask). It pads on the
    right (with <|endoftext|> for GPT-2, id 0 otherwise; masked out): a causal teacher then
    reads each sentence's tokens before any padding, so its candidates do not depend on the
    padding, and target indices count from the sentence's first token."""

    padding_side = "right"

    def __init__(self, tokenizer: Tokenizer):
        self.base = tokenizer
        self.pad_token_id = tokenizer.eot_id if tokenizer.eot_id is not None else 0

    def __call__(
        self, text: str | list[str], return_tensors: str | None = None, padding: bool = False
    ) -> Encoding:
        rows = self.base.encode_batch([text] if isinstance(text, str) else list(text))
        longest = max(map(len, rows), default=0)
        if return_tensors not in (None, "pt"):
            raise UserError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        if not padding and return_tensors and len({len(r) for r in rows}) > 1:
            raise UserError("sentences of different lengths make a tensor only with padding=True")
        width = longest if padding else 0
        masks = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
        rows = [r + [self.pad_token_id] * (width - len(r)) for r in rows]
        if return_tensors == "pt":
            return Encoding(input_ids=torch.tensor(rows), attention_mask=torch.tensor(masks))
        if isinstance(text, str):
            return Encoding(input_ids=rows[0], attention_mask=masks[0])
        return Encoding(input_ids=rows, attention_mask=masks)

    def decode(self, ids: Any) -> str:
        return self.base.decode(ids)

    def batch_decode(self, rows: Any) -> list[str]:
        return [self.base.decode(row) for row in rows]


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
