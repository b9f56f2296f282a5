"""Checkpoints: numbered, checksummed, written atomically, loaded without running code.

A run's out_dir holds

    ckpt-000120.pt           a checkpoint (here of iteration 120); the newest
                             `keep_checkpoints` of them are kept
    ckpt-000120.pt.sha256    its SHA-256 in `sha256sum` format (`sha256sum -c` checks it)
    run.lock                 locked (flock) by the one run using out_dir; holds its pid
    ckpt.pt -> ckpt-000120.pt    a symbolic link to the newest checkpoint
    best.pt -> ckpt-000100.pt    a symbolic link to the best evaluated one (never rotated away)

The numbered checkpoints are the record; the two links are derived from them (each checkpoint
records whether it was saved as the best, `saved_as_best`, and its `best_val_loss`), and
`repair_pointers` derives them again at every start: a save killed between the checkpoint and
its links, or a link damaged by hand, is put right rather than trusted.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so it loads with
`torch.load(weights_only=True)`: a crafted file cannot execute code. Every file is written to
a temporary file in the same folder and moved into place with `os.replace`, the checksum
before the checkpoint it describes, so a process killed at any moment leaves each name
either absent, or old and whole, or new and whole; a checkpoint is never without its checksum.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import torch

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, runs are not kept apart
    fcntl = None

from nanoGPT.atomic import TEMP_PREFIX, atomic_write, atomic_write_bytes, replace_with, write_temp
from nanoGPT.config import ModelConfig, config_from_dict
from nanoGPT.data import resolve_data_dir
from nanoGPT.errors import UserError, resource_faults
from nanoGPT.guard import finite_flags
from nanoGPT.model import GPT
from nanoGPT.tokenizer import load_tokenizer

FORMAT = "nanoGPT-objectives/1"
LAST, BEST = "ckpt.pt", "best.pt"
CHECKSUM_SUFFIX = ".sha256"
_NUMBERED = re.compile(r"ckpt-(\d+)\.pt")
LOCK_NAME = "run.lock"


def numbered_checkpoint_path(out_dir: str, iter_num: int) -> str:
    return os.path.join(out_dir, f"ckpt-{iter_num:06d}.pt")


def checkpoint_path(out_dir: str, which: str = "last") -> str:
    """out_dir/ckpt.pt (the newest checkpoint) or out_dir/best.pt."""
    return os.path.join(out_dir, BEST if which == "best" else LAST)


def list_checkpoints(out_dir: str) -> list[tuple[int, str]]:
    """(iteration, path) of the numbered checkpoints in out_dir, oldest first."""
    if not os.path.isdir(out_dir):
        return []
    found = [
        (int(m.group(1)), os.path.join(out_dir, name))
        for name in os.listdir(out_dir)
        if (m := _NUMBERED.fullmatch(name))
    ]
    return sorted(found)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_torch_save(obj: Any, path: str) -> None:
    """torch.save(obj, path) through a temporary file: `path` is never half-written."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _point_link(link: str, target: str) -> None:
    """Make `link` a symbolic link to `target` (same folder), atomically; a copy where the
    file system has no symbolic links."""
    _clear_way(link)
    folder = os.path.dirname(link)
    tmp = os.path.join(folder, f"{TEMP_PREFIX}link-{os.getpid()}-{os.path.basename(link)}")
    if os.path.lexists(tmp):
        os.remove(tmp)
    try:
        os.symlink(os.path.basename(target), tmp)
    except OSError:
        shutil.copyfile(target, tmp)
    os.replace(tmp, link)


def save_checkpoint(
    state: dict[str, Any],
    out_dir: str,
    iter_num: int,
    best: bool = False,
    keep: int = 3,
    pause_s: float = 0.0,
) -> str:
    """Write `state` as out_dir/ckpt-<iter_num>.pt with its checksum, point ckpt.pt (and
    best.pt when `best`) at it and delete numbered checkpoints beyond the newest `keep`
    (best.pt's is kept too). Returns the path written.

    `pause_s` pauses between the steps, a testing aid that lets a test kill the process in
    the middle of a save.

    A resource fault (disk full, a file-size limit, a read-only folder) is one UserError that
    says what to do; the checkpoints saved before are left as they were.
    """
    with resource_faults(
        f"saving the checkpoint of iteration {iter_num} in {out_dir}",
        "then rerun with init_from=auto (the checkpoints saved before are intact)",
    ):
        return _save_checkpoint(state, out_dir, iter_num, best, keep, pause_s)


def _save_checkpoint(
    state: dict[str, Any], out_dir: str, iter_num: int, best: bool, keep: int, pause_s: float
) -> str:
    def pause() -> None:
        if pause_s > 0:
            time.sleep(pause_s)

    _check_finite_weights(state.get("model", {}), iter_num)
    path = numbered_checkpoint_path(out_dir, iter_num)
    _clear_way(path)
    _clear_way(path + CHECKSUM_SUFFIX)
    state = {**state, "saved_as_best": best}  # what repair_pointers derives best.pt from
    tmp = write_temp(out_dir, lambda f: torch.save(state, f), suffix=".pt")
    try:
        pause()
        # the checksum goes first: a checkpoint name without its checksum never exists
        checksum_line = f"{sha256_of(tmp)}  {os.path.basename(path)}\n".encode()
        atomic_write_bytes(path + CHECKSUM_SUFFIX, checksum_line)
        pause()
    except BaseException:
        os.remove(tmp)
        raise
    replace_with(tmp, path)
    pause()
    if best:
        _point_link(checkpoint_path(out_dir, "best"), path)
        pause()
    _point_link(checkpoint_path(out_dir, "last"), path)
    pause()
    _remove_old_checkpoints(out_dir, keep)
    return path


def _clear_way(path: str) -> None:
    """Set aside a folder (or anything else that is not a file or link) standing where a
    checkpoint file goes, with one warning: os.replace cannot put a file over it, and leaving
    it would fail every later save the same way."""
    if os.path.lexists(path) and not (os.path.isfile(path) or os.path.islink(path)):
        warn(f"{path} was not a file; kept as {_set_aside(path)}")


def non_finite_tensors(weights: dict[str, Any]) -> list[str]:
    """The names of the floating-point tensors of `weights` that hold a NaN or inf."""
    floats = {k: v for k, v in weights.items() if torch.is_tensor(v) and v.is_floating_point()}
    return [k for k, ok in zip(floats, finite_flags(list(floats.values()))) if not ok]


def _names(names: list[str]) -> str:
    return f"{', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"


def _check_finite_weights(weights: dict[str, torch.Tensor], iter_num: int) -> None:
    """UserError if a floating-point tensor of `weights` holds a NaN or inf: a run resumes
    from its checkpoints, so one with broken weights is never written."""
    bad = non_finite_tensors(weights)
    if bad:
        raise UserError(
            f"refusing to save the checkpoint of iteration {iter_num}: non-finite values in {_names(bad)}"
        )


def _remove_old_checkpoints(out_dir: str, keep: int) -> None:
    numbered = list_checkpoints(out_dir)
    linked = {os.path.realpath(checkpoint_path(out_dir, which)) for which in ("last", "best")}
    for _, path in numbered[:-keep] if keep > 0 else numbered:
        if os.path.realpath(path) not in linked:
            os.remove(path)  # the checkpoint first: a leftover checksum alone is harmless
            if os.path.exists(path + CHECKSUM_SUFFIX):
                os.remove(path + CHECKSUM_SUFFIX)
    for name in os.listdir(out_dir):  # checksums whose save was killed before the checkpoint
        if name.endswith(CHECKSUM_SUFFIX) and _NUMBERED.fullmatch(name[: -len(CHECKSUM_SUFFIX)]):
            orphan = os.path.join(out_dir, name)
            if not os.path.exists(orphan[: -len(CHECKSUM_SUFFIX)]) and os.path.isfile(orphan):
                os.remove(orphan)


# --- one run per out_dir ------------------------------------------------------------------

_held: dict[str, IO[str]] = {}  # the out_dirs this process has locked (real paths): their lock files


class OutDirLock:
    """This process's lock on an out_dir; close() (or the process ending) releases it."""

    def __init__(self, key: str | None):
        self.key = key

    def close(self) -> None:
        lock_file = _held.pop(self.key, None) if self.key else None
        if lock_file is not None:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
            lock_file.close()

    def __enter__(self) -> OutDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def lock_out_dir(out_dir: str) -> OutDirLock:
    """Lock out_dir for one run (an advisory flock on out_dir/run.lock, which records the pid).

    Another run holding it, in this process or another, is a UserError naming its pid. The
    lock is released by close() or when the process ends, however it ends.
    """
    os.makedirs(out_dir, exist_ok=True)
    key = os.path.realpath(out_dir)
    if fcntl is None:
        return OutDirLock(None)
    try:
        lock_file = open(os.path.join(out_dir, LOCK_NAME), "a+")  # held past this call: no `with`
    except OSError as err:  # a read-only folder: a run could not save there; a reader leaves it be
        raise UserError(f"cannot lock {out_dir} ({err.strerror}): is it writable?") from None
    try:
        if key in _held:
            raise BlockingIOError
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "unknown"
        lock_file.close()
        raise UserError(
            f"{out_dir} is in use by another run (pid {holder}): wait for it to end or use another out_dir"
        ) from None
    except OSError as err:  # a file system without locks (some network mounts)
        lock_file.close()
        warn(f"cannot lock {out_dir} ({err.strerror}): nothing keeps a second run out of it")
        return OutDirLock(None)
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"{os.getpid()}\n")
    lock_file.flush()
    _held[key] = lock_file
    return OutDirLock(key)


@contextlib.contextmanager
def _ours(out_dir: str) -> Iterator[bool]:
    """True while no other run is using out_dir: this process holds its lock, or takes it for
    the block. False while another run holds it: that run's files are not ours to touch."""
    if not os.path.isdir(out_dir) or os.path.realpath(out_dir) in _held:
        yield True
        return
    try:
        lock = lock_out_dir(out_dir)
    except UserError:
        yield False
        return
    with lock:
        yield True


def remove_temp_files(out_dir: str) -> list[str]:
    """Delete the temporary files a killed save left in out_dir; returns their names. Nothing
    is deleted while another run holds out_dir (they may be its save in progress)."""
    with _ours(out_dir) as ours:
        return _remove_temp_files(out_dir) if ours else []


def _remove_temp_files(out_dir: str) -> list[str]:
    if not os.path.isdir(out_dir):
        return []
    stale = [name for name in os.listdir(out_dir) if name.startswith(TEMP_PREFIX)]
    for name in stale:
        os.remove(os.path.join(out_dir, name))
    return stale


def verify_checksum(path: str) -> bool:
    """Check `path` against the .sha256 file beside the file it resolves to.

    True if it matches, False if there is no checksum file; UserError if it does not match.
    """
    real = os.path.realpath(path)
    checksum_file = real + CHECKSUM_SUFFIX
    if not os.path.isfile(checksum_file):
        return False
    with open(checksum_file, "rb") as f:
        expected = f.read(64).decode("ascii", errors="replace").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise UserError(f"{checksum_file} is not a SHA-256 checksum file")
    if sha256_of(real) != expected:
        raise UserError(
            f"{path} fails its checksum ({checksum_file}): the file is damaged "
            "or was changed after it was written"
        )
    return True


def load_checkpoint(
    path: str, map_location: str | torch.device = "cpu", require_checksum: bool = False
) -> dict[str, Any]:
    """Load a checkpoint of this framework, as data only (never code).

    Its checksum is verified when it has one (and required with `require_checksum`). A
    missing, damaged, foreign or hostile file is a UserError naming it.
    """
    if not os.path.lexists(path):
        raise UserError(f"checkpoint {path} not found")
    if not os.path.exists(path):
        raise UserError(f"checkpoint {path} links to {os.readlink(path)}, which is missing")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} is not a file")
    if not verify_checksum(path) and require_checksum:
        raise UserError(f"{path} has no checksum file ({os.path.basename(path)}{CHECKSUM_SUFFIX}) beside it")
    return _read(path, map_location)


def _read(path: str, map_location: str | torch.device, mmap: bool = False) -> dict[str, Any]:
    """torch.load as data only; `mmap` leaves the tensors on disk (reading a few entries)."""
    try:
        # weights_only: tensors, numbers, strings and containers; any other object in the
        # pickle (the way a crafted file would run code) is refused before it is built
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # a damaged or foreign file can fail in many ways; all mean "not ours"
        text = str(err).strip()
        first = text.splitlines()[0][:160] if text else type(err).__name__
        raise UserError(f"{path} is not a readable checkpoint of this framework ({first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a checkpoint of this framework")
    return ckpt


def find_resume_checkpoint(
    out_dir: str, report: Callable[[str], None] | None = None, set_aside: bool = False
) -> tuple[str, dict[str, Any]] | None:
    """The newest valid checkpoint in out_dir as (path, checkpoint), or None if there is none.

    Numbered checkpoints are tried newest first; each must match its checksum, load and hold
    finite weights (one saved before save_checkpoint refused NaN or inf). One that does not
    is reported (one line through `report`) and skipped for the previous one,
    never used and never deleted: with `set_aside` it is renamed to <name>.invalid-<time>, so
    that a later save of the same iteration cannot overwrite the evidence. A plain ckpt.pt
    (copied in by hand, no checksum) is the last candidate.
    """
    candidates = [(path, True) for _, path in reversed(list_checkpoints(out_dir))]
    last = checkpoint_path(out_dir, "last")
    if os.path.isfile(last) and not os.path.islink(last):
        candidates.append((last, False))
    for path, numbered in candidates:
        try:
            found = path, load_checkpoint(path, "cpu", require_checksum=numbered)
            _check_resumable(*found)
        except UserError as err:
            note = "skipped"
            if set_aside:
                try:
                    note = f"skipped and kept as {_set_aside(path)}"
                except OSError as move_err:
                    note = f"skipped (could not rename it: {move_err.strerror})"
            if report is not None:
                report(f"{err}; {note}")
            continue
        _repair_pointers(out_dir, path if numbered else None, report)
        return found
    _repair_pointers(out_dir, None, report)
    return None


def _check_resumable(path: str, ckpt: dict[str, Any]) -> None:
    bad = non_finite_tensors(ckpt.get("model") or {})
    if bad:
        raise UserError(
            f"{path} holds non-finite weights (NaN or inf in {_names(bad)}): not resumed from (the "
            "newest finite checkpoint is; with none, start again with a lower learning_rate)"
        )


def _set_aside(path: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = f"{path}.invalid-{stamp}"
    os.replace(path, moved)
    if os.path.exists(path + CHECKSUM_SUFFIX):
        os.replace(path + CHECKSUM_SUFFIX, f"{path}{CHECKSUM_SUFFIX}.invalid-{stamp}")
    return moved


# --- ckpt.pt and best.pt, derived from the numbered checkpoints ---------------------------


def repair_pointers(out_dir: str, report: Callable[[str], None] | None = None) -> None:
    """Point ckpt.pt at the newest valid numbered checkpoint and best.pt at the valid one saved
    as the best with the lowest best_val_loss, whatever state the links are in (missing,
    dangling, a loop, stale after a killed save, a directory or garbage, which is set aside
    as <name>.invalid-<time> and reported). A link with nothing valid to name is left as it is,
    and so are both while another run holds out_dir: it keeps them itself."""
    newest = next((path for _, path in reversed(list_checkpoints(out_dir)) if _is_valid(path)), None)
    _repair_pointers(out_dir, newest, report)


def _repair_pointers(out_dir: str, newest: str | None, report: Callable[[str], None] | None) -> None:
    with _ours(out_dir) as ours:
        if ours:
            _repair_pointer(checkpoint_path(out_dir, "last"), newest, report)
            _repair_pointer(checkpoint_path(out_dir, "best"), _best_checkpoint(out_dir, newest), report)


def _is_valid(path: str) -> bool:
    """Does the numbered checkpoint match its checksum and load (tensors left on disk)?"""
    try:
        return verify_checksum(path) and bool(_read(path, "cpu", mmap=True))
    except (UserError, OSError):
        return False


def _best_checkpoint(out_dir: str, verified: str | None) -> str | None:
    """The valid checkpoint saved as the best with the lowest best_val_loss (the newest of
    equals). Checkpoints of before `saved_as_best` was recorded keep the best.pt they have.
    `verified`: a checkpoint the caller has just checked (not hashed a second time)."""
    ranked, recorded = [], False
    for it, path in list_checkpoints(out_dir):
        try:
            ckpt = _read(path, "cpu", mmap=True)
        except UserError:
            continue
        recorded = recorded or "saved_as_best" in ckpt
        if ckpt.get("saved_as_best"):
            ranked.append((float(ckpt.get("best_val_loss", math.inf)), -it, path))
    if not recorded:
        link = checkpoint_path(out_dir, "best")
        named = os.path.join(out_dir, os.readlink(link)) if os.path.islink(link) else ""
        ranked = [(0.0, 0, named)] if _NUMBERED.fullmatch(os.path.basename(named)) else []
    return next((path for _, _, path in sorted(ranked) if path == verified or _is_valid(path)), None)


def _repair_pointer(link: str, target: str | None, report: Callable[[str], None] | None) -> None:
    if target is None:
        return
    if os.path.islink(link):
        if os.readlink(link) == os.path.basename(target):
            return
    elif os.path.isfile(link) and _same_content(link, target):
        return  # a copy: the file system has no symbolic links
    elif os.path.lexists(link):  # a directory, or a file that is not the checkpoint it should be
        moved = _set_aside(link)
        if report is not None:
            report(f"{link} was not a link to {os.path.basename(target)}; kept as {moved}")
    _point_link(link, target)


def _same_content(path: str, target: str) -> bool:
    with open(target + CHECKSUM_SUFFIX, "rb") as f:
        return sha256_of(path) == f.read(64).decode("ascii", errors="replace")


def model_config_of(ckpt: dict[str, Any], expect_variant: str | None = None) -> ModelConfig:
    config = config_from_dict(ModelConfig, ckpt["model_args"])
    if expect_variant and config.variant != expect_variant:
        raise UserError(f"checkpoint was trained as variant {config.variant!r}, not {expect_variant!r}")
    return config


# ModelConfig keys that say how a run uses the model, not what the model is: a resumed model
# takes them from the run (dropout acts in training only, bayes_samples sets how many weight
# samples evaluation averages). Settings outside ModelConfig (loss_chunk_size, dtype, batch
# size, ...) are the run's anyway and never compared
RUN_SETTINGS = ("dropout", "bayes_samples")
# ...and the keys a resume does not compare: those, the vocabulary (from the data, compared by
# check_tokenizer) and the variant (compared by model_config_of)
RESUME_MAY_CHANGE = (*RUN_SETTINGS, "vocab_size", "variant")


def resumed_model_config(saved: ModelConfig, given: ModelConfig) -> ModelConfig:
    """The config a resumed model is built with: the checkpoint's, with the run's RUN_SETTINGS."""
    run = {key: getattr(given, key) for key in RUN_SETTINGS if hasattr(given, key)}
    return dataclasses.replace(saved, **run)


def check_model_settings(saved: ModelConfig, given: ModelConfig, every_key: bool) -> None:
    """UserError listing the model settings of `given` that differ from the checkpoint's
    (`saved`, "key old -> new"): resuming would train the checkpoint's model, not the one asked
    for, and save a config that contradicts its weights. `every_key` (init_from=auto, the same
    command run again) compares every setting; otherwise (init_from=resume, which takes the
    model from the checkpoint) only the settings given a value other than their default."""
    default = ModelConfig()
    differing = []
    for f in dataclasses.fields(ModelConfig):
        old, new = getattr(saved, f.name), getattr(given, f.name)
        if f.name in RESUME_MAY_CHANGE or old == new or (f.name == "kl_num_tokens" and new == 0):
            continue  # kl_num_tokens=0: the train tokens, resolved when the checkpoint's run started
        if every_key or new != getattr(default, f.name):
            differing.append(f"{f.name} {old!r} -> {new!r}")
    if differing:
        raise UserError(
            f"the checkpoint was trained with other model settings ({', '.join(differing)}): "
            "give the settings it was trained with, or use another out_dir for the new model"
        )


def load_model(path: str, device: str = "cpu", expect_variant: str | None = None, **overrides: Any):
    """Rebuild the GPT stored in a checkpoint (its own variant and config), in eval mode."""

    ckpt = load_checkpoint(path, map_location=device)
    config = dataclasses.replace(model_config_of(ckpt, expect_variant), **overrides)
    model = GPT(config)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


# --- the vocabulary a checkpoint was trained on -------------------------------------------


def tokenizer_record(tokenizer: Any) -> dict[str, Any]:
    """What identifies a tokenizer's ids, saved in a checkpoint: its kind and size; for a
    character vocabulary the characters in id order; for a SentencePiece model the SHA-256 of
    its file (two models of one size trained on other text give the same ids other meanings).
    A checkpoint is compared on the keys it saved, so older records without a key still load."""
    record: dict[str, Any] = {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size}
    if tokenizer.kind == "char":
        record["chars"] = "".join(tokenizer.itos[i] for i in range(tokenizer.vocab_size))
    if tokenizer.kind == "sentencepiece":
        with open(tokenizer.model_path, "rb") as f:
            record["model_sha256"] = hashlib.sha256(f.read()).hexdigest()
    return record


def _describe(record: dict[str, Any]) -> str:
    if record.get("kind") == "char":
        return f"{record['vocab_size']} characters"
    if record.get("kind") == "gpt2":
        return f"GPT-2 BPE ({record['vocab_size']} ids)"
    return f"{record['vocab_size']} token ids"


def check_tokenizer(ckpt: dict[str, Any], tokenizer: Any, data_dir: str) -> None:
    """UserError unless `tokenizer` (of data_dir) gives ids the meaning the checkpoint learned."""
    saved = ckpt.get("tokenizer") or {"vocab_size": ckpt["model_args"]["vocab_size"]}
    current = tokenizer_record(tokenizer)
    same = all(saved[key] == current.get(key) for key in saved)
    if not same:
        detail = ""
        if saved.get("kind") == current["kind"] == "char" and saved["vocab_size"] == current["vocab_size"]:
            detail = " (the same number, but other characters or another order)"
        if (
            saved.get("kind") == current["kind"] == "sentencepiece"
            and saved["vocab_size"] == current["vocab_size"]
        ):
            detail = " (the same size, but another SentencePiece model file)"
        raise UserError(
            f"the vocabulary of {data_dir} ({_describe(current)}) is not the one the "
            f"checkpoint was trained on ({_describe(saved)}){detail}: use the data "
            "folder the model was trained on (--data_dir), or prepare it again"
        )


def checkpoint_tokenizer(ckpt: dict[str, Any], data_dir: str = "") -> Any:
    """The tokenizer of the data the checkpoint was trained on (or of `data_dir`), checked to
    match the checkpoint's vocabulary: what sampling and comparison should decode with."""

    train_cfg = ckpt["config"]
    data_dir = data_dir or resolve_data_dir(train_cfg["dataset"], train_cfg["data_dir"])
    tokenizer = load_tokenizer(data_dir)
    check_tokenizer(ckpt, tokenizer, data_dir)
    return tokenizer


def warn(line: str) -> None:
    """A one-line warning on stderr."""
    print(f"warning: {line}", file=sys.stderr, flush=True)
