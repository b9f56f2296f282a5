"""Teachers: frozen LMs that propose candidates (a checkpoint trained here, or a Hugging Face
causal LM), and their head run in bounded chunks so no (N, V) tensor of a whole batch is held."""

from __future__ import annotations

import contextlib
import math
import os

import torch
import torch.nn as nn

from nanoGPT.augment.settings import CKPT_PREFIX, AugmentSettings
from nanoGPT.checkpoint import (
    check_tokenizer,
    checkpoint_path,
    checkpoint_tokenizer,
    load_model,
    tokenizer_record,
)
from nanoGPT.data import resolve_data_dir
from nanoGPT.errors import UserError
from nanoGPT.hub import load_pretrained
from nanoGPT.runtime import seeded
from nanoGPT.tokenizer import Tokenizer, gpt2_tokenizer, load_tokenizer

# bounds the (rows x vocab) float32 log-prob temporaries of one head call: 256 MB on CUDA;
# 16 MB on the CPU, where a temporary under glibc's 32 MB mmap ceiling is reused from the heap
# instead of being mapped and page-faulted in afresh by every call, and stays in cache from
# the matmul through the log-softmax to the top-k (measured: 1.5x faster head at V=50257)
LOGIT_CHUNK_ELEMENTS = {"cuda": 2**26, "cpu": 2**22}


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


class ModelTeacher(Teacher):
    """A GPT of this framework, through its own variant's normalised log_probs, so any variant
    can teach. Works offline and for character-level data."""

    def __init__(self, model: nn.Module, device: str, name: str = "a GPT model"):
        target_offset = getattr(model.config, "target_offset", lambda: 1)()
        if target_offset != 1:
            raise UserError(
                f"teacher {name} predicts the token {target_offset} ahead (predict_ahead), "
                "not the next one: a teacher must be a next-token model"
            )
        self.model = _freeze(model, device)
        self.name = name
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
        with seeded(0, self.device):
            yield


class CheckpointTeacher(ModelTeacher):
    """A checkpoint trained by this framework (see ModelTeacher)."""

    def __init__(self, path: str, device: str):
        model, ckpt = load_model(path, device)
        super().__init__(model, device, f"{CKPT_PREFIX}{path}")
        self.path = path
        # what identifies its vocabulary (see nanoGPT.checkpoint.check_tokenizer)
        self.record = {key: ckpt[key] for key in ("config", "model_args", "tokenizer") if key in ckpt}


class HFTeacher(Teacher):
    """A causal LM through `transformers`: a hub name such as "gpt2", a local folder, or a
    model already loaded."""

    def __init__(self, name_or_path: str | nn.Module, device: str):
        if isinstance(name_or_path, nn.Module):
            model, name_or_path = name_or_path, getattr(name_or_path, "name_or_path", "") or "a HF model"
        else:
            model = load_pretrained(
                "AutoModelForCausalLM",
                name_or_path,
                "connect to the Hugging Face hub, or pass teacher=<local folder with config.json and "
                f"model.safetensors, saved with save_pretrained> or teacher={CKPT_PREFIX}<out_dir of a "
                "run trained here>",
            )
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

    return checkpoint_path(path) if os.path.isdir(path) else path


def load_teacher(spec: str, device: str, tokenizer: Tokenizer, data_name: str = "the data") -> Teacher:
    """The teacher named by `spec` ("gpt2", a local HF folder, or ckpt:<out_dir or .pt>) on
    `device`; UserError unless its vocabulary is that of the data (`tokenizer`, of the folder
    `data_name`)."""
    if spec.startswith(CKPT_PREFIX):
        teacher = open_teacher(spec, device)
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


def open_teacher(teacher: str | nn.Module, device: str) -> Teacher:
    """A teacher from what a user holds, on `device`: a spec ("gpt2", a local HF folder,
    ckpt:<out_dir or .pt>), a GPT of this framework, or a transformers causal LM (a model is
    put in eval mode and frozen where it is). Unlike load_teacher, no data to check it against."""
    if isinstance(teacher, str):
        if teacher.startswith(CKPT_PREFIX):
            return CheckpointTeacher(checkpoint_file(teacher[len(CKPT_PREFIX) :]), device)
        return HFTeacher(teacher, device)
    if isinstance(teacher, nn.Module) and hasattr(teacher, "hidden_states") and hasattr(teacher, "variant"):
        return ModelTeacher(teacher, device)
    if isinstance(teacher, nn.Module) and hasattr(teacher, "get_output_embeddings"):
        return HFTeacher(teacher, device)
    raise UserError(
        "a teacher is a hub name, a local folder, ckpt:<out_dir>, a GPT of this framework or a "
        f"transformers causal LM, not a {type(teacher).__name__}"
    )


def teacher_tokenizer(teacher: Teacher) -> Tokenizer:
    """The tokenizer of a teacher's vocabulary: its training data's for a checkpoint, GPT-2 BPE
    for a model with GPT-2's vocabulary; UserError when it cannot be known."""
    if isinstance(teacher, CheckpointTeacher):
        return checkpoint_tokenizer(teacher.record)
    if teacher.vocab_size == gpt2_tokenizer().vocab_size:
        return gpt2_tokenizer()
    raise UserError(
        f"the tokenizer of {teacher.name} ({teacher.vocab_size} ids) is unknown: pass tokenizer=<a "
        "nanoGPT.tokenizer.Tokenizer, e.g. load_tokenizer(<its data folder>)>"
    )


def _check_checkpoint_vocabulary(teacher: CheckpointTeacher, tokenizer: Tokenizer, data_name: str) -> None:

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


_MASK32 = 0xFFFFFFFF
_FNV_PRIME = 16777619


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash of int64 tensors holding values in [0, 2^32); every product stays
    below 2^59, so int64 arithmetic never overflows and CPU and CUDA give the same bits."""
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def _combine(h: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return _mix32(((h * _FNV_PRIME) & _MASK32) ^ _mix32(value & _MASK32))


def hashed_gumbel(seed: int, keys: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(N,) non-negative int64 keys and (N, M) token ids -> (N, M) float32 Gumbel(0, 1) noise,
    a pure function of (seed, key, id): the draw for a token at a position is the same in
    any batch, on any device, online or in a cache, before or after a resume."""
    h = torch.full_like(keys, seed & _MASK32)
    for part in (torch.full_like(keys, (seed >> 32) & _MASK32), keys, keys >> 32):
        h = _combine(h, part)
    h = _combine(h[:, None].expand_as(ids), ids)
    uniform = (h.double() + 0.5) / 2.0**32  # in (0, 1): the log of neither end
    return (-(-uniform.log()).log()).float()


def sampled_candidates(
    teacher: Teacher, hidden: torch.Tensor, k: int, top_k: int, top_p: float, keys: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) hidden rows -> (log-probs, ids), each (N, k): k distinct tokens drawn without
    replacement from the teacher's distribution cut to its `top_k` most likely tokens and, of
    those, the nucleus of `top_p` (the most likely tokens up to the first whose cumulative
    probability reaches top_p), most likely first; -1 ids (and -inf) fill the slots a nucleus
    of fewer than k tokens leaves. Drawn by Gumbel-top-k (the k largest log p + Gumbel noise
    are k successive draws without replacement) with the noise of hashed_gumbel, keyed by
    `keys` (N,), one per row."""
    step = _rows_per_chunk(teacher)
    out_log_probs, out_ids = [], []
    for first in range(0, hidden.size(0), step):
        pool = teacher.head_log_probs(hidden[first : first + step]).topk(top_k, dim=-1)
        probs = pool.values.exp()
        outside = probs.cumsum(-1) - probs >= top_p  # the mass before it already reaches top_p
        score = pool.values + hashed_gumbel(seed, keys[first : first + step], pool.indices)
        score = score.masked_fill(outside, -math.inf)
        drawn = score.topk(k, dim=-1)
        log_probs = pool.values.gather(1, drawn.indices).masked_fill(drawn.values == -math.inf, -math.inf)
        log_probs, order = log_probs.sort(dim=-1, descending=True)
        ids = pool.indices.gather(1, drawn.indices.gather(1, order))
        out_log_probs.append(log_probs)
        out_ids.append(ids.masked_fill(log_probs == -math.inf, -1))
    return torch.cat(out_log_probs), torch.cat(out_ids)


def target_log_probs(teacher: Teacher, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, C) hidden rows and (N,) ids -> (N,) teacher log-prob of each id."""
    step = _rows_per_chunk(teacher)
    return torch.cat(
        [
            teacher.head_log_probs(hidden[i : i + step]).gather(1, targets[i : i + step, None])[:, 0]
            for i in range(0, hidden.size(0), step)
        ]
    )
