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
them (the loss deduplicates it) and is always a positive there anyway.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from nanoGPT.data import Batch
from nanoGPT.errors import UserError
from nanoGPT.tokenizer import Tokenizer

FILTERS = ("perplexity", "prob", "none")
CKPT_PREFIX = "ckpt:"
# bounds the (rows x vocab) float32 log-prob temporaries of one head call: 256 MB on CUDA;
# 16 MB on the CPU, where a temporary under glibc's 32 MB mmap ceiling is reused from the heap
# instead of being mapped and page-faulted in afresh by every call, and stays in cache from
# the matmul through the log-softmax to the top-k (measured: 1.5x faster head at V=50257)
LOGIT_CHUNK_ELEMENTS = {"cuda": 2**26, "cpu": 2**22}
# bounds the tokens of one teacher forward pass over candidate windows
WINDOW_CHUNK_TOKENS = 2**16


# --- settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentSettings:
    """The augment_* config keys, validated (see the module docstring for their meaning)."""

    teacher: str = "gpt2"
    k: int = 50
    filter: str = "perplexity"
    threshold: float = 100.0
    min_prob: float = 0.01
    window: int = 64
    positions: str = "one"

    @classmethod
    def from_config(cls, cfg: Any) -> AugmentSettings:
        settings = cls(
            teacher=cfg.teacher,
            k=cfg.augment_k,
            filter=cfg.augment_filter,
            threshold=cfg.augment_threshold,
            min_prob=cfg.augment_min_prob,
            window=cfg.augment_window,
            positions=getattr(cfg, "augment_positions", "all"),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.filter not in FILTERS:
            raise UserError(f"augment_filter must be one of {', '.join(FILTERS)}, got {self.filter!r}")
        if self.k < 1:
            raise UserError(f"augment_k must be at least 1, got {self.k}")
        if self.filter == "perplexity" and not self.threshold > 0:
            raise UserError(f"augment_threshold must be > 0, got {self.threshold}")
        if self.filter == "perplexity" and self.window < 2:
            raise UserError(f"augment_window must be at least 2 tokens, got {self.window}")
        if self.filter == "prob" and not 0 < self.min_prob <= 1:
            raise UserError(f"augment_min_prob must be in (0, 1], got {self.min_prob}")
        positions_per_row(self.positions, 1)  # raises on a malformed value

    def candidate_settings(self) -> dict[str, Any]:
        """The keys that decide which candidates a position keeps (what a cache must match);
        a filter's parameters count only for that filter."""
        return {
            "teacher": normalise_teacher(self.teacher),
            "augment_k": self.k,
            "augment_filter": self.filter,
            "augment_threshold": self.threshold if self.filter == "perplexity" else None,
            "augment_window": self.window if self.filter == "perplexity" else None,
            "augment_min_prob": self.min_prob if self.filter == "prob" else None,
        }


def normalise_teacher(spec: str) -> str:
    if spec.startswith(CKPT_PREFIX):
        return CKPT_PREFIX + os.path.normpath(spec[len(CKPT_PREFIX) :])
    return spec


def positions_per_row(positions: str, block_size: int) -> int:
    """How many target positions of a row of `block_size` get extras: "one", "all", or a
    fraction in (0, 1] (at least one position)."""
    if positions == "one":
        return 1
    if positions == "all":
        return block_size
    try:
        fraction = float(positions)
    except ValueError:
        fraction = -1.0
    if not 0 < fraction <= 1:
        raise UserError(f"augment_positions must be one, all or a fraction in (0, 1], got {positions!r}")
    return max(1, min(block_size, round(fraction * block_size)))


def select_positions(starts: np.ndarray, block_size: int, positions: str, seed: int) -> np.ndarray:
    """(B,) row start offsets -> (B, n) sorted target positions that get extras.

    Each row's choice comes from its own numpy generator seeded by (seed, start): the same
    window always gets the same positions (online or from a cache, before or after a resume),
    and the global torch RNG, which drives dropout, is left untouched."""
    count = positions_per_row(positions, block_size)
    if count == block_size:
        return np.broadcast_to(np.arange(block_size, dtype=np.int64), (len(starts), block_size))
    rows = [
        np.random.default_rng([seed, int(start)]).choice(block_size, count, replace=False) for start in starts
    ]
    return np.sort(np.stack(rows), axis=1).astype(np.int64)


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array onto `device`, asynchronously on CUDA (pinned memory), as data.py does."""
    tensor = torch.from_numpy(np.array(array))  # a copy: views and memmaps may be read-only
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


# --- teachers -------------------------------------------------------------------------------


class Teacher:
    """A frozen LM as two steps, token ids -> hidden states -> normalised log-probs, so that
    log-probs are only ever computed for the rows that need them, in bounded chunks."""

    name: str
    vocab_size: int
    block_size: int
    device: torch.device

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """(N, L) ids -> (N, L, C) final hidden states."""
        raise NotImplementedError

    def head_log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., C) hidden states -> (..., V) float32 normalised log-probabilities."""
        raise NotImplementedError

    @contextlib.contextmanager
    def context(self):
        """What every teacher computation runs under: no gradients, bf16 on CUDA."""
        autocast = (
            torch.autocast(device_type="cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else contextlib.nullcontext()
        )
        with torch.no_grad(), autocast, self.private_rng():
            yield

    def private_rng(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def log_probs(self, idx: torch.Tensor) -> torch.Tensor:
        """(N, L) ids -> (N, L, V) log-probs, dense: for references and the demo only."""
        with self.context():
            return self.head_log_probs(self.hidden(idx))


def _freeze(model: nn.Module, device: str) -> nn.Module:
    model.to(device).eval()
    model.requires_grad_(False)
    return model


class CheckpointTeacher(Teacher):
    """A model trained by this framework, through its own variant's normalised log_probs,
    so any variant can teach. Works offline and for character-level data."""

    def __init__(self, path: str, device: str):
        from nanoGPT.checkpoint import load_model

        model, ckpt = load_model(path, device)
        self.model = _freeze(model, device)
        self.path = path
        self.name = f"{CKPT_PREFIX}{path}"
        # what identifies its vocabulary (see nanoGPT.checkpoint.check_tokenizer)
        self.record = {key: ckpt[key] for key in ("config", "model_args", "tokenizer") if key in ckpt}
        self.vocab_size = model.config.vocab_size
        self.block_size = model.config.block_size
        self.device = torch.device(device)

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model.hidden_states(idx)

    def head_log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.variant.log_probs(hidden).float()

    @contextlib.contextmanager
    def private_rng(self):
        if not self.model.variant.bayesian:
            yield
            return
        # a Bayesian head samples weights: from a fixed private stream, so the teacher neither
        # disturbs the training RNG (dropout, exact resume) nor varies between calls
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            yield


class HFTeacher(Teacher):
    """A causal LM through `transformers`: a hub name such as "gpt2", or a local folder."""

    def __init__(self, name_or_path: str, device: str):
        try:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(name_or_path)
        except (OSError, ValueError) as err:
            message = str(err).strip()
            first = message.splitlines()[0][:120] if message else type(err).__name__
            raise UserError(
                f"could not load teacher {name_or_path!r} ({first}); connect to the Hugging Face "
                "hub, or pass teacher=<local folder with config.json and model.safetensors> or "
                f"teacher={CKPT_PREFIX}<out_dir of a run trained here>"
            ) from None
        self.model = _freeze(model, device)
        self.body = model.base_model
        self.head = model.get_output_embeddings()
        self.name = name_or_path
        self.vocab_size = model.config.vocab_size
        config = model.config
        self.block_size = getattr(config, "n_positions", None) or config.max_position_embeddings
        self.device = torch.device(device)

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        return self.body(input_ids=idx, use_cache=False).last_hidden_state

    def head_log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden).float().log_softmax(dim=-1)


def checkpoint_file(path: str) -> str:
    """An out_dir (its last checkpoint, as sample.py reads) or a checkpoint file."""
    from nanoGPT.checkpoint import checkpoint_path

    return checkpoint_path(path) if os.path.isdir(path) else path


def load_teacher(spec: str, device: str, tokenizer: Tokenizer, data_name: str = "the data") -> Teacher:
    """The teacher named by `spec` ("gpt2", a local HF folder, or ckpt:<out_dir or .pt>) on
    `device`; UserError unless its vocabulary is that of the data (`tokenizer`, of the folder
    `data_name`)."""
    if spec.startswith(CKPT_PREFIX):
        teacher = CheckpointTeacher(checkpoint_file(spec[len(CKPT_PREFIX) :]), device)
        _check_checkpoint_vocabulary(teacher, tokenizer, data_name)
        return teacher
    if tokenizer.kind != "gpt2":
        raise UserError(
            f"teacher {spec!r} is a Hugging Face model, whose vocabulary is not this "
            f"data's {tokenizer.vocab_size}-token {tokenizer.kind} vocabulary: use "
            f"teacher={CKPT_PREFIX}<out_dir of a run trained on this data>"
        )
    teacher = HFTeacher(spec, device)
    if teacher.vocab_size != tokenizer.vocab_size:
        raise UserError(
            f"teacher {spec!r} has a vocabulary of {teacher.vocab_size} tokens, "
            f"the data has {tokenizer.vocab_size} (GPT-2 BPE): use a GPT-2 teacher"
        )
    return teacher


def _check_checkpoint_vocabulary(teacher: CheckpointTeacher, tokenizer: Tokenizer, data_name: str) -> None:
    from nanoGPT.checkpoint import check_tokenizer, tokenizer_record
    from nanoGPT.data import resolve_data_dir
    from nanoGPT.tokenizer import load_tokenizer

    record = teacher.record
    if "tokenizer" not in record:  # an older checkpoint: the record of its data, if it is here
        cfg = record.get("config", {})
        teacher_data = resolve_data_dir(cfg.get("dataset", ""), cfg.get("data_dir", ""))
        if os.path.isfile(os.path.join(teacher_data, "train.bin")):
            record = {**record, "tokenizer": tokenizer_record(load_tokenizer(teacher_data))}
    try:
        check_tokenizer(record, tokenizer, data_name)
    except UserError as err:
        raise UserError(
            f"teacher {teacher.name}: {err}; a teacher must be trained on the "
            "vocabulary of the data it augments"
        ) from None


def check_teacher_fits(teacher: Teacher, settings: AugmentSettings, block_size: int | None = None) -> None:
    """UserError unless training rows of `block_size`, the windows and k fit the teacher."""
    if block_size is not None and block_size > teacher.block_size:
        raise UserError(f"block_size {block_size} > the teacher's context of {teacher.block_size}")
    if settings.filter == "perplexity" and settings.window > teacher.block_size:
        raise UserError(f"augment_window {settings.window} > the teacher's context of {teacher.block_size}")
    if settings.k > teacher.vocab_size:
        raise UserError(f"augment_k {settings.k} > the vocabulary size {teacher.vocab_size}")


# --- chunked teacher head -------------------------------------------------------------------


def _rows_per_chunk(teacher: Teacher) -> int:
    elements = LOGIT_CHUNK_ELEMENTS.get(teacher.device.type, LOGIT_CHUNK_ELEMENTS["cpu"])
    return max(1, elements // teacher.vocab_size)


def top_candidates(teacher: Teacher, hidden: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) hidden rows -> the teacher's top-k (log-probs, ids), each (N, k)."""
    step = _rows_per_chunk(teacher)
    parts = [
        teacher.head_log_probs(hidden[i : i + step]).topk(k, dim=-1) for i in range(0, hidden.size(0), step)
    ]
    return torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])


def probable_candidates(
    teacher: Teacher, hidden: torch.Tensor, k: int, min_log_prob: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prob filter's result without a top-k over the vocabulary: (N, C) hidden rows ->
    (log-probs, ids), each (N, k), of the at most k most likely tokens whose log-prob is
    >= min_log_prob, most likely first; -1 ids (and -inf) fill the slots left over.

    The same as top_candidates followed by the threshold (up to how exact ties at the k-th place
    are broken): the tokens above a threshold are a prefix of the sorted top-k. But a top-k
    over 50257 entries per row costs twice the log-softmax on the CPU, while a threshold needs
    one comparison pass, and the few tokens above it (at most 1 / min_prob per row) are cheap
    to sort."""
    step = _rows_per_chunk(teacher)
    out_ids = torch.full((hidden.size(0), k), -1, dtype=torch.long, device=hidden.device)
    out_log_probs = torch.full((hidden.size(0), k), -math.inf, device=hidden.device)
    for first in range(0, hidden.size(0), step):
        log_probs = teacher.head_log_probs(hidden[first : first + step])
        rows, ids = (log_probs >= min_log_prob).nonzero(as_tuple=True)
        values = log_probs[rows, ids]
        # most likely first within each row: sort by value, then (stably) by row
        order = values.argsort(descending=True, stable=True)
        order = order[rows[order].argsort(stable=True)]
        rows, ids, values = rows[order], ids[order], values[order]
        row_start = torch.searchsorted(rows, rows, right=False)
        rank = torch.arange(rows.numel(), device=rows.device) - row_start
        top = rank < k
        rows, rank = rows[top] + first, rank[top]
        out_ids[rows, rank], out_log_probs[rows, rank] = ids[top], values[top]
    return out_log_probs, out_ids


def target_log_probs(teacher: Teacher, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, C) hidden rows and (N,) ids -> (N,) teacher log-prob of each id."""
    step = _rows_per_chunk(teacher)
    return torch.cat(
        [
            teacher.head_log_probs(hidden[i : i + step]).gather(1, targets[i : i + step, None])[:, 0]
            for i in range(0, hidden.size(0), step)
        ]
    )


# --- the augmenter --------------------------------------------------------------------------


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
    """batch -> (B, T, k) extra positive ids padded with -1, from a teacher, online."""

    def __init__(self, teacher: Teacher, settings: AugmentSettings, seed: int = 0):
        settings.validate()
        check_teacher_fits(teacher, settings)
        self.teacher, self.settings, self.seed = teacher, settings, seed

    def __call__(self, batch: Batch) -> torch.Tensor:
        T = batch.x.size(1)
        positions = select_positions(batch.starts, T, self.settings.positions, self.seed)
        return self.positives(batch.x, batch.y, positions)

    def positives(self, x: torch.Tensor, y: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
        """(B, T, k) kept candidates at `positions` (B, n), -1 elsewhere."""
        return scatter_kept(self.propose(x, y, positions), x.size(1))

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


def scatter_kept(proposal: Proposal, block_size: int) -> torch.Tensor:
    """(B, T, k) int64: the kept candidate ids at their positions, -1 everywhere else."""
    ids, keep, pos = proposal.ids, proposal.keep, proposal.positions
    B, n, k = ids.shape
    out = torch.full((B, block_size, k), -1, dtype=torch.long, device=ids.device)
    kept = torch.where(keep, ids, torch.full_like(ids, -1))
    return out.scatter_(1, pos[:, :, None].expand(B, n, k), kept)


def reference_window_perplexity(
    teacher: Teacher, row: list[int], position: int, candidate: int, window: int
) -> float:
    """One candidate, one forward pass, plain Python indices: the definition in the module
    docstring, written out directly. `row` holds the T+1 tokens x[b] + [y[b, -1]]; the
    candidate replaces row[position + 1]. For tests and bench.py, never for training."""
    p = position + 1
    substituted = list(row)
    substituted[p] = candidate
    length = min(window, len(row))
    lo = min(max(p - window // 2, 0), len(row) - length)
    hi = min(p + window - window // 2, len(row))
    idx = torch.tensor([substituted[lo : lo + length]], device=teacher.device)
    log_probs = teacher.log_probs(idx)[0]  # (L, V): output i predicts window token i + 1
    nll = [-log_probs[j - lo - 1, substituted[j]].item() for j in range(p, hi)]
    return math.exp(sum(nll) / len(nll))
