"""Batches from nanoGPT-format token files (uint16 train.bin / val.bin / test.bin).

Every batch is a pure function of (seed, rank, split, step, micro_step): the position in the
data stream is the iteration number, so a resumed run reads exactly the batches an
uninterrupted run would have read, with no sampler state to save.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import numpy as np
import torch

from nanoGPT.atomic import finish_swaps
from nanoGPT.errors import UserError
from nanoGPT.tokenizer import META_FILE, SENTENCEPIECE_FILE, Tokenizer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def resolve_data_dir(dataset: str, data_dir: str = "") -> str:
    """`data_dir` if given, else data/<dataset> (relative to the working directory, then to the repo)."""
    if data_dir:
        return data_dir
    local = os.path.join("data", dataset)
    return local if os.path.isdir(local) else os.path.join(REPO_ROOT, "data", dataset)


def prepare_hint(data_dir: str) -> str:
    script = os.path.join(data_dir, "prepare.py")
    return f"; run python {script} first" if os.path.isfile(script) else ""


SCAN_ALL_TOKENS = 128 << 20  # token files up to this size (256 MB) are checked whole
SAMPLE_CHUNKS, CHUNK_TOKENS = 64, 1 << 20  # larger ones: 64 chunks of 2 MB, evenly spread
DTYPE_PROBE_TOKENS = 1 << 16
# GPT-2 BPE ids below 256 are its single bytes: text of this many tokens uses merges (" the" is
# 262, "\n\n" 628), so ids that all stay below 256 are a character vocabulary whose meta.pkl is gone
BYTE_IDS, BPE_EVIDENCE_TOKENS = 256, 1000


def _chunks(data: np.ndarray) -> list[np.ndarray]:
    if len(data) <= SCAN_ALL_TOKENS:
        return [data[i : i + CHUNK_TOKENS] for i in range(0, len(data), CHUNK_TOKENS)]
    starts = np.linspace(0, len(data) - CHUNK_TOKENS, SAMPLE_CHUNKS).astype(np.int64)
    return [data[s : s + CHUNK_TOKENS] for s in starts]


def vocabulary_name(tokenizer: Tokenizer, data_dir: str) -> str:
    """How an error names a data folder's tokenizer."""
    if tokenizer.kind == "char":
        return f"the character vocabulary of {os.path.join(data_dir, META_FILE)}"
    if tokenizer.kind == "gpt2":
        return f"GPT-2 BPE (no {META_FILE} in {data_dir})"
    return f"the {tokenizer.kind} tokenizer of {data_dir}"


def spread_window_starts(num_tokens: int, block_size: int, num_windows: int) -> np.ndarray:
    """Start offsets of up to `num_windows` windows of block_size + 1 tokens spread evenly over
    `num_tokens` tokens, never overlapping while there is room: the fixed evaluation windows
    (of a split here, of the shifted text in nanoGPT/ood.py)."""
    span = num_tokens - block_size - 1
    count = min(num_windows, max(1, span // block_size + 1))
    return np.linspace(0, span, num=count).astype(np.int64)


@dataclass
class Batch:
    x: torch.Tensor  # (B, T) input ids
    y: torch.Tensor  # (B, T) targets: y[:, t] = the token target_offset after x[:, t] (1: the next)
    starts: np.ndarray  # (B,) offset of x[:, 0] in the split, to look up cached extras


def train_prefix_tokens(num_tokens: int, train_fraction: float) -> int:
    """The tokens of train.bin a run with this train_fraction draws its windows from (the first
    ones): what TokenData trains on and what an augmenter cache covers."""
    return int(num_tokens * train_fraction)


def is_data_file(name: str) -> bool:
    """Is `name` one of the files a preparation writes (replaced together, prepare.py)?"""
    return name in (META_FILE, SENTENCEPIECE_FILE) or name in {f"{split}.bin" for split in SPLIT_CODES}


def _check_is_file(path: str) -> None:
    """UserError when `path` exists as something other than a file (reading a folder or a
    pipe would fail later, or block): what it is, rather than "not found"."""
    if not os.path.lexists(path) or os.path.isfile(path):
        return
    if os.path.islink(path) and not os.path.exists(path):
        what = f"a link to {os.readlink(path)}, which is missing"
    elif os.path.isdir(path):
        what = "a folder"
    else:
        mode = os.stat(path).st_mode
        what = "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "not a regular file"
    raise UserError(f"{path} is {what}, not a file of token ids")


class TokenData:
    """Random windows of a split for training, fixed evenly spread windows for evaluation.

    With train_fraction < 1 only the first train_fraction of train.bin is used (a data-limited
    regime: several epochs over the prefix within max_iters); every window lies inside it.
    """

    target_offset = 1  # targets are the next tokens unless set_target_offset says otherwise

    def __init__(
        self,
        data_dir: str,
        block_size: int,
        batch_size: int,
        device: str,
        seed: int = 0,
        rank: int = 0,
        train_fraction: float = 1.0,
    ):
        self.data_dir, self.block_size, self.batch_size = data_dir, block_size, batch_size
        self.device, self.seed, self.rank = device, seed, rank
        finish_swaps(data_dir, is_data_file)  # a preparation killed while moving its files in
        for split in SPLIT_CODES:
            _check_is_file(self.path(split))
        if not os.path.isfile(self.path("train")):
            raise UserError(f"no training data: {self.path('train')} not found{prepare_hint(data_dir)}")
        for split in self.splits():
            self._check_byte_count(split)
            if self.num_tokens(split) <= block_size:
                raise UserError(
                    f"{self.path(split)} has {self.num_tokens(split)} tokens, "
                    f"not more than block_size={block_size}"
                )
        self.train_tokens = train_prefix_tokens(self.num_tokens("train"), train_fraction)
        if self.train_tokens <= block_size:
            raise UserError(
                f"train_fraction={train_fraction} leaves {self.train_tokens} tokens of "
                f"{self.path('train')}, not more than block_size={block_size}"
            )

    def path(self, split: str) -> str:
        return os.path.join(self.data_dir, f"{split}.bin")

    def splits(self) -> list[str]:
        return [s for s in SPLIT_CODES if os.path.isfile(self.path(s))]

    def has_split(self, split: str) -> bool:
        return os.path.isfile(self.path(split))

    def tokens(self, split: str) -> np.memmap:
        # A fresh memmap per call: a long-lived one lets the page cache count against RSS.
        if not self.has_split(split):
            raise UserError(f"split {split!r} not found: {self.path(split)}{prepare_hint(self.data_dir)}")
        self._check_byte_count(split)
        return np.memmap(self.path(split), dtype=np.uint16, mode="r")

    def _check_byte_count(self, split: str) -> None:
        if os.path.getsize(self.path(split)) % 2:
            raise UserError(
                f"{self.path(split)} has an odd number of bytes: not uint16 token "
                f"ids{prepare_hint(self.data_dir)}"
            )

    def check_token_ids(self, vocab_size: int, vocabulary: str) -> None:
        """UserError if a split holds ids the tokenizer does not have (the .bin and meta.pkl come
        from different prepare runs) or looks written with a wider dtype than uint16.

        Files up to SCAN_ALL_TOKENS tokens are read whole; larger ones at SAMPLE_CHUNKS evenly
        spread chunks, so the check stays a second or two on a multi-GB train.bin.
        """
        largest_of_all, seen = 0, 0
        for split in self.splits():
            data = self.tokens(split)
            head = np.asarray(data[:DTYPE_PROBE_TOKENS])
            if len(head) >= 1024 and (head[1::2] == 0).mean() > 0.9 and (head[::2] == 0).mean() < 0.5:
                raise UserError(
                    f"{self.path(split)} looks like 32- or 64-bit token ids (every "
                    f"second uint16 is 0); .bin files hold uint16 ids"
                    f"{prepare_hint(self.data_dir)}"
                )
            largest = max(int(chunk.max()) for chunk in _chunks(data))
            largest_of_all, seen = max(largest_of_all, largest), seen + len(data)
            if largest >= vocab_size:
                raise UserError(
                    f"{self.path(split)} holds token id {largest}, but {vocabulary} has "
                    f"{vocab_size} ids: the .bin files and the tokenizer come from "
                    f"different prepare runs{prepare_hint(self.data_dir)}"
                )
        no_meta = not os.path.exists(os.path.join(self.data_dir, META_FILE))
        if no_meta and seen >= BPE_EVIDENCE_TOKENS and largest_of_all < BYTE_IDS:
            raise UserError(
                f"{self.data_dir} has no {META_FILE}, so its ids would be read as GPT-2 BPE, but all "
                f"{seen} are below {BYTE_IDS} (GPT-2 text uses merged tokens): they look like "
                f"character ids whose {META_FILE} is missing; restore it or prepare the data again"
                f"{prepare_hint(self.data_dir)}"
            )

    def num_tokens(self, split: str) -> int:
        return os.path.getsize(self.path(split)) // 2

    def window_tokens(self, split: str) -> int:
        """How many tokens of `split` windows are drawn from: the train_fraction prefix of train,
        all of the other splits."""
        return self.train_tokens if split == "train" else self.num_tokens(split)

    def _windows(self, data: np.ndarray, starts: np.ndarray) -> Batch:
        T, ahead = self.block_size, self.target_offset
        rows = np.stack([data[s : s + T + ahead] for s in starts]).astype(np.int64)
        x, y = torch.from_numpy(rows[:, :T]), torch.from_numpy(rows[:, ahead:])
        if self.device.startswith("cuda"):
            x, y = (
                x.pin_memory().to(self.device, non_blocking=True),
                y.pin_memory().to(self.device, non_blocking=True),
            )
        else:
            x, y = x.to(self.device), y.to(self.device)
        return Batch(x, y, starts)

    def train_batch(self, step: int, micro_step: int = 0, split: str = "train") -> Batch:
        data = self.tokens(split)
        rng = np.random.default_rng([self.seed, self.rank, SPLIT_CODES[split], step, micro_step])
        # a window is block_size + target_offset tokens (inputs and their targets): the last
        # one starts at window_tokens - block_size - target_offset; integers() excludes its end
        last_start = self.window_tokens(split) - self.block_size - self.target_offset
        starts = rng.integers(0, last_start + 1, size=self.batch_size)
        return self._windows(data, starts)

    def eval_batches(self, split: str, num_batches: int, world_size: int = 1) -> list[np.ndarray]:
        """Start offsets of this rank's share of `num_batches` batches of non-overlapping
        windows spread evenly over the split: the same tokens at every evaluation."""
        total = num_batches * self.batch_size * world_size
        # windows of block_size + target_offset tokens: as many fewer possible starts
        span = self.window_tokens(split) - (self.target_offset - 1)
        starts = spread_window_starts(span, self.block_size, total)
        mine = starts[self.rank :: world_size]
        return [mine[i : i + self.batch_size] for i in range(0, len(mine), self.batch_size)]

    def batch_at(self, split: str, starts: np.ndarray) -> Batch:
        return self._windows(self.tokens(split), starts)

    def set_target_offset(self, ahead: int) -> None:
        """Targets `ahead` tokens after each input position (predict_ahead; 1 = the next token):
        every window is then block_size + ahead tokens, and must fit in every split."""
        for split in self.splits():
            if self.window_tokens(split) < self.block_size + ahead:
                raise UserError(
                    f"{self.path(split)} has {self.window_tokens(split)} tokens to draw windows "
                    f"from, fewer than block_size + predict_ahead = {self.block_size + ahead}"
                )
        self.target_offset = ahead
