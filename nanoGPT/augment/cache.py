"""A cache of the augmenter's candidates: the teacher runs once over the part of train.bin a run
trains on (its first train_fraction), training reads.

    python augment_cache.py config/train_sigmoid_shakespeare_char.py     # the training config
    python augment_cache.py --dataset=shakespeare --teacher=gpt2 --augment_filter=prob

Files, next to train.bin (`<name>` = augment_cache, default "<teacher>-<filter>"):
  train.aug_<name>.bin   num_tokens rows, row j = the kept candidates for token j as a target:
                         k ids, uint16 with pad 65535 (int32 with pad -1 for vocabularies over
                         65535 ids), then their k teacher log-probs, float16 with -inf at pad
                         (for distill; the filters compute them anyway). Row 0 (no context) is
                         all pad. float16 keeps a log-prob to 2^-11 of its size: a probability
                         to within 0.5% at log-probs above -10.
  train.aug_<name>.json  the settings and data fingerprint that made it, and build progress.

Coverage. Only the first train_fraction of train.bin (data.train_prefix_tokens) gets candidates,
as a data-limited run draws no window beyond it; the rows past it stay zero and are never read.

Context. train.bin is cut into consecutive blocks of block_size + 1 tokens overlapping by one
(x = tokens[i*T : i*T+T], y = tokens[i*T+1 : i*T+T+1]) and every target of every block gets
its candidates, exactly as the online augmenter computes them for a training window that
starts at i*T. A training window starting elsewhere reads candidates computed with the cache
block's context rather than its own (the same tokens before it, cut at another place).

Positions. The cache holds candidates for every position; augment_positions (one, all, a
fraction) is applied when a batch is read, with the same choice the online augmenter makes.

A cache is refused, with what differs, when the run asks for other candidate settings (teacher,
k, filter and its parameters, block_size, the tokens covered), when train.bin is not the data it
was made from, or when the teacher checkpoint changed since. The build writes in chunks and records progress
after each, so an interrupted build continues where it stopped when run again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from typing import Any

import numpy as np
import torch

from nanoGPT.atomic import atomic_write_json
from nanoGPT.augment.augmenter import DataAugmenter, to_device
from nanoGPT.augment.settings import CKPT_PREFIX, AugmentSettings, select_positions
from nanoGPT.augment.teachers import check_teacher_fits, checkpoint_file, load_teacher
from nanoGPT.config import TrainConfig
from nanoGPT.data import Batch, prepare_hint, resolve_data_dir, train_prefix_tokens
from nanoGPT.errors import UserError
from nanoGPT.runtime import resolve_device
from nanoGPT.tokenizer import load_tokenizer
from nanoGPT.variants.base import ExtraTargets

CACHE_FORMAT = "nanoGPT-objectives/augment-cache/2"  # 2: the rows carry the teacher's log-probs
LOG_PROB_STORAGE = np.dtype(np.float16)
# fingerprint: the whole file up to this size, else this many evenly spaced samples
_HASH_WHOLE_BYTES = 1 << 22
_HASH_SAMPLES, _HASH_SAMPLE_BYTES = 64, 1 << 16
# seconds between progress records of a build: an fsync per teacher pass would dominate
# the build time of a small teacher; an interrupted build loses at most this much work
PROGRESS_EVERY_S = 5.0


def cache_name(cfg: TrainConfig) -> str:
    if cfg.augment_cache:
        return cfg.augment_cache
    teacher = cfg.teacher[len(CKPT_PREFIX) :] if cfg.teacher.startswith(CKPT_PREFIX) else cfg.teacher
    base = os.path.basename(os.path.normpath(teacher)) or "teacher"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{base}-{cfg.augment_filter}")


def cache_paths(data_dir: str, name: str) -> tuple[str, str]:
    """(train.aug_<name>.bin, train.aug_<name>.json) in `data_dir`."""
    stem = os.path.join(data_dir, f"train.aug_{name}")
    return stem + ".bin", stem + ".json"


def file_fingerprint(path: str) -> str:
    """ "<size>:<sha256 prefix>" of the whole file up to 4 MiB, else of 64 evenly spaced
    64 KiB samples (first and last included): cheap at every training start, and any
    re-tokenisation or other corpus changes it."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= _HASH_WHOLE_BYTES:
            digest.update(f.read())
        else:
            for offset in np.linspace(0, size - _HASH_SAMPLE_BYTES, _HASH_SAMPLES).astype(np.int64):
                f.seek(int(offset))
                digest.update(f.read(_HASH_SAMPLE_BYTES))
    return f"{size}:{digest.hexdigest()[:32]}"


def storage_of(vocab_size: int) -> tuple[np.dtype, int]:
    """The id dtype of a cache and its pad value."""
    if vocab_size <= np.iinfo(np.uint16).max:  # every id < 65535, so 65535 is free
        return np.dtype(np.uint16), int(np.iinfo(np.uint16).max)
    return np.dtype(np.int32), -1


def row_dtype(storage: dict[str, Any]) -> np.dtype:
    """One row of a cache (its JSON's "storage"): the k candidate ids, then their k log-probs."""
    k = storage["k"]
    return np.dtype([("ids", storage["dtype"], (k,)), ("log_probs", storage["log_probs"], (k,))])


def stored_rows(targets: ExtraTargets, storage: dict[str, Any]) -> np.ndarray:
    """(B, T, k) ExtraTargets -> B * T cache rows."""
    k, pad = storage["k"], storage["pad"]
    ids = targets.ids.reshape(-1, k).cpu().numpy()
    rows = np.empty(len(ids), row_dtype(storage))
    rows["ids"] = np.where(ids < 0, pad, ids)
    rows["log_probs"] = targets.log_probs.reshape(-1, k).cpu().numpy()
    return rows


def _teacher_fingerprint(teacher: str) -> str | None:
    """A checkpoint teacher's file fingerprint (None for hub/HF teachers, or when absent)."""
    if not teacher.startswith(CKPT_PREFIX):
        return None
    path = checkpoint_file(teacher[len(CKPT_PREFIX) :])
    return file_fingerprint(path) if os.path.isfile(path) else None


def cache_identity(
    cfg: TrainConfig, settings: AugmentSettings, vocab_size: int, train_path: str
) -> dict[str, Any]:
    """Everything that decides a cache's contents, as recorded in its JSON."""
    dtype, pad = storage_of(vocab_size)
    num_tokens = os.path.getsize(train_path) // 2
    covered = train_prefix_tokens(num_tokens, cfg.train_fraction)
    return {
        "settings": {
            **settings.candidate_settings(cfg.seed),
            "block_size": cfg.block_size,
            "train_tokens": covered,
        },
        "teacher_checkpoint": _teacher_fingerprint(settings.teacher),
        "vocab_size": vocab_size,
        "data": {
            "file": os.path.basename(train_path),
            "num_tokens": num_tokens,
            "fingerprint": file_fingerprint(train_path),
        },
        "storage": {"dtype": dtype.name, "pad": pad, "k": settings.k, "log_probs": LOG_PROB_STORAGE.name},
    }


def _read_json(path: str) -> dict[str, Any] | None:
    """A cache's record, of any format; None when absent or unreadable."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _train_path(data_dir: str) -> str:
    path = os.path.join(data_dir, "train.bin")
    if not os.path.isfile(path):
        raise UserError(f"no training data: {path} not found{prepare_hint(data_dir)}")
    return path


def _start_or_continue(
    bin_path: str, json_path: str, identity: dict[str, Any], num_blocks: int, num_tokens: int
) -> tuple[dict[str, Any], int]:
    """(the build record, blocks done): an interrupted or finished build made with `identity`
    continues; anything else is replaced by a fresh, empty file and record."""
    storage = identity["storage"]
    file_bytes = num_tokens * row_dtype(storage).itemsize
    record = _read_json(json_path)
    resumable = (
        record is not None
        and record.get("format") == CACHE_FORMAT
        and record.get("made_with") == identity
        and os.path.isfile(bin_path)
        and os.path.getsize(bin_path) == file_bytes
    )
    if resumable:
        done = int(record["blocks_done"])
        if not record["complete"]:
            print(f"{bin_path}: continuing an interrupted build at block {done} of {num_blocks}")
        return record, done
    if record is not None or os.path.exists(bin_path):
        print(f"{bin_path}: made with other settings or data, rebuilding")
    record = {
        "format": CACHE_FORMAT,
        "made_with": identity,
        "num_blocks": num_blocks,
        "blocks_done": 0,
        "complete": False,
    }
    with open(bin_path, "wb") as f:
        f.truncate(file_bytes)
        k = storage["k"]  # token 0 is never a target: its row is all pad
        f.write(
            stored_rows(
                ExtraTargets(torch.full((1, k), -1), torch.full((1, k), -torch.inf)), storage
            ).tobytes()
        )
    atomic_write_json(json_path, record)
    return record, 0


def build_cache(cfg: TrainConfig, show_progress: bool = True) -> str:
    """Run the teacher over the run's part of train.bin and write the cache; continue an interrupted
    build with the same settings, replace a cache made with other ones. Returns the .bin path."""
    from tqdm import tqdm

    settings = AugmentSettings.from_config(cfg)
    data_dir = resolve_data_dir(cfg.dataset, cfg.data_dir)
    train_path = _train_path(data_dir)
    tokenizer = load_tokenizer(data_dir)
    device = resolve_device(cfg.device)
    teacher = load_teacher(settings.teacher, device, tokenizer, data_dir)
    check_teacher_fits(teacher, settings, cfg.block_size)
    augmenter = DataAugmenter(teacher, settings, cfg.seed, with_log_probs=True)
    identity = cache_identity(cfg, settings, tokenizer.vocab_size, train_path)
    bin_path, json_path = cache_paths(data_dir, cache_name(cfg))

    tokens = np.memmap(train_path, dtype=np.uint16, mode="r")
    T, k = cfg.block_size, settings.k
    covered = identity["settings"]["train_tokens"]
    num_targets = covered - 1
    if num_targets < T:
        raise UserError(f"{train_path}: the run trains on {covered} tokens, not more than block_size={T}")
    num_blocks = math.ceil(num_targets / T)
    storage = identity["storage"]
    row_bytes = row_dtype(storage).itemsize

    record, done = _start_or_continue(bin_path, json_path, identity, num_blocks, len(tokens))
    if record["complete"]:
        print(f"{bin_path} is up to date")
        return bin_path

    all_positions = np.broadcast_to(np.arange(T, dtype=np.int64), (cfg.batch_size, T))
    progress = tqdm(
        total=num_targets,
        initial=min(done * T, num_targets),
        unit="tok",
        unit_scale=True,
        desc=f"teacher {settings.teacher}",
        disable=not show_progress,
    )
    last_record = time.monotonic()
    with open(bin_path, "r+b") as f, progress:
        while done < num_blocks:
            first = done * T
            # full blocks batch_size at a time; a last, shorter block on its own
            full = min(cfg.batch_size, (num_targets - first) // T)
            count, length = (full, T) if full else (1, num_targets - first)
            rows = np.stack(
                [tokens[first + i * T : first + i * T + length + 1] for i in range(count)]
            ).astype(np.int64)
            rows = torch.from_numpy(rows).to(device)
            starts = first + T * np.arange(count)  # what drawn candidates are keyed by, as online
            targets = augmenter.positives(rows[:, :-1], rows[:, 1:], all_positions[:count, :length], starts)
            f.seek((first + 1) * row_bytes)
            f.write(stored_rows(targets, storage).tobytes())
            done += count
            progress.update(count * length)
            if time.monotonic() - last_record >= PROGRESS_EVERY_S or done == num_blocks:
                f.flush()
                os.fsync(f.fileno())
                record["blocks_done"] = done
                atomic_write_json(json_path, record)  # after the rows are on disk, never ahead
                last_record = time.monotonic()
    record["complete"] = True
    atomic_write_json(json_path, record)
    print(f"{bin_path}: {num_targets:,} targets x {k} slots ({storage['dtype']} ids, float16 log-probs)")
    return bin_path


class CachedAugmenter:
    """batch -> (B, T, k) extra positive ids padded with -1, read from a cache; with
    `with_log_probs`, ExtraTargets(those ids, their teacher log-probs)."""

    def __init__(
        self,
        bin_path: str,
        record: dict[str, Any],
        positions: str,
        seed: int,
        device: str,
        with_log_probs: bool = False,
    ):
        self.storage = record["made_with"]["storage"]
        self.bin_path, self.positions, self.seed = bin_path, positions, seed
        self.num_tokens = record["made_with"]["data"]["num_tokens"]
        self.covered_tokens = record["made_with"]["settings"]["train_tokens"]
        self.device = torch.device(device)
        self.with_log_probs = with_log_probs

    def __call__(self, batch: Batch) -> torch.Tensor | ExtraTargets:
        T = batch.x.size(1)
        if max(batch.starts) + T + 1 > self.covered_tokens:  # the rows past it were never built
            raise ValueError(f"a window reaches past the {self.covered_tokens} tokens {self.bin_path} covers")
        # a fresh memmap per call, as data.py does: a long-lived one grows RSS
        table = np.memmap(self.bin_path, dtype=row_dtype(self.storage), mode="r", shape=(self.num_tokens,))
        # the target y[b, t] is token starts[b] + t + 1 of the split
        rows = np.stack([table[start + 1 : start + 1 + T] for start in batch.starts])
        ids = np.ascontiguousarray(rows["ids"])
        if ids.dtype == np.uint16:  # torch has few uint16 ops: move as int16, widen there
            ids = to_device(ids.view(np.int16), self.device).long() & 0xFFFF
        else:
            ids = to_device(ids, self.device).long()
        is_kept = ids != self.storage["pad"]
        chosen = select_positions(batch.starts, T, self.positions, self.seed)
        if chosen.shape[1] < T:
            mask = np.zeros((len(batch.starts), T), dtype=bool)
            np.put_along_axis(mask, chosen, True, axis=1)
            is_kept &= to_device(mask, self.device)[:, :, None]
        ids = torch.where(is_kept, ids, torch.full_like(ids, -1))
        if not self.with_log_probs:
            return ids
        log_probs = to_device(np.ascontiguousarray(rows["log_probs"]), self.device).float()
        return ExtraTargets(ids, torch.where(is_kept, log_probs, torch.full_like(log_probs, -torch.inf)))


def open_cache(cfg: TrainConfig, data_dir: str, device: str, with_log_probs: bool = False) -> CachedAugmenter:
    """The cache this run's settings ask for; UserError if it is missing, incomplete, in an
    older format, or was made with other settings, for other data, or by another state of the
    teacher. `with_log_probs`: it hands ExtraTargets (see CachedAugmenter)."""
    settings = AugmentSettings.from_config(cfg)
    train_path = _train_path(data_dir)
    bin_path, json_path = cache_paths(data_dir, cache_name(cfg))
    rebuild = "build it with: python augment_cache.py <this run's config and --key=value options>"
    record = _read_json(json_path)
    if record is None and os.path.lexists(json_path):  # there, but not a cache record: not "missing"
        raise UserError(f"{json_path} is invalid or damaged (not a JSON cache record); {rebuild}")
    if record is None or not os.path.isfile(bin_path):
        raise UserError(f"augment_source=cache but {bin_path} (or its .json) is missing; {rebuild}")
    if record.get("format") != CACHE_FORMAT:
        raise UserError(
            f"{bin_path} is in an older format ({record.get('format')}, not {CACHE_FORMAT}); {rebuild}"
        )
    expected = cache_identity(cfg, settings, load_tokenizer(data_dir).vocab_size, train_path)
    made_with = record.get("made_with", {})
    theirs, ours = made_with.get("settings", {}), expected["settings"]
    differ = [
        f"{key}={theirs.get(key)!r} (this run: {ours[key]!r})" for key in ours if theirs.get(key) != ours[key]
    ]
    if differ:
        raise UserError(
            f"{bin_path} was made with other settings: {', '.join(differ)}; "
            f"{rebuild}, or set augment_cache to another name"
        )
    same_vocabulary = made_with.get("vocab_size") == expected["vocab_size"]
    if made_with.get("data") != expected["data"] or not same_vocabulary:
        raise UserError(
            f"{bin_path} was made for other data than {train_path} "
            f"(fingerprint {made_with.get('data', {}).get('fingerprint')} vs "
            f"{expected['data']['fingerprint']}); {rebuild}"
        )
    ours_teacher = expected["teacher_checkpoint"]
    theirs_teacher = made_with.get("teacher_checkpoint")
    if ours_teacher is not None and theirs_teacher != ours_teacher:
        raise UserError(
            f"{bin_path} was made by another state of the teacher checkpoint "
            f"({settings.teacher} has changed since); {rebuild}"
        )
    if not record.get("complete"):
        done, total = record.get("blocks_done", 0), record.get("num_blocks", 1)
        raise UserError(
            f"{bin_path} is incomplete ({100 * done / max(1, total):.0f}% built); "
            "run the same augment_cache.py command again to finish it"
        )
    return CachedAugmenter(bin_path, record, settings.positions, cfg.seed, device, with_log_probs)
