"""Atomic file writes: the one way this project puts a file in place.

Everything is written to a temporary file in the destination's folder, flushed and fsynced,
then renamed over the destination with `os.replace` and the folder fsynced, so a kill or a
power cut at any moment leaves the old file or the new one, never half of one. A failure
removes the temporary file and leaves the destination as it was.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import IO, Any

TEMP_PREFIX = ".tmp-"  # what a temporary file's name starts with (checkpoint.py cleans them up)
STAGING_PREFIX = ".staging-"  # a folder of files that replace a folder's files together
_COMMITTED = ".committed"  # in a staging folder: it is complete, its files are moving in


def fsync_dir(folder: str) -> None:
    """Make the renames in `folder` durable; a platform that cannot open a folder skips it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_temp(folder: str, write: Callable[[IO[bytes]], Any], suffix: str = "") -> str:
    """A new temporary file in `folder` holding what `write(f)` wrote, on disk; its path."""
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}{suffix}")
    # mode 0o666 less the umask, the permissions a plain open() gives (mkstemp's are 0o600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.remove(tmp)
        raise
    return tmp


def replace_with(tmp: str, path: str) -> None:
    """Move the finished temporary file `tmp` over `path` and make the rename durable."""
    try:
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_write(path: str, write: Callable[[IO[bytes]], Any]) -> None:
    """Write `path` through `write(f)` on a binary file, atomically."""
    replace_with(write_temp(os.path.dirname(os.path.abspath(path)), write), path)


def atomic_write_bytes(path: str, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(value: Any) -> Any:
    """NaN and infinities are not JSON: they become null (recursively)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def atomic_write_json(path: str, obj: Any) -> None:
    """`obj` as indented JSON, non-finite numbers as null, atomically."""
    atomic_write_text(path, json.dumps(json_safe(obj), indent=1))


# --- a set of files replaced together ---------------------------------------------------


@contextlib.contextmanager
def staged_files(folder: str, owned: Callable[[str], bool]) -> Iterator[str]:
    """A staging folder inside `folder` to write a new set of files into; on success they
    replace `folder`'s files together, and those `owned` (a predicate on names) that the new
    set lacks are deleted. A failure deletes the staging folder: `folder` stays as it was.

    The swap is marked committed before its first rename, so one cut short by a kill is
    finished by the next `finish_swaps` (a reader's or a writer's) rather than left half done.
    """
    os.makedirs(folder, exist_ok=True)
    finish_swaps(folder, owned)
    staging = os.path.join(folder, f"{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}")
    os.makedirs(staging)
    try:
        yield staging
        atomic_write_text(os.path.join(staging, _COMMITTED), "\n".join(sorted(os.listdir(staging))))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _move_in(folder, staging, owned)


def destination(path: str) -> str:
    """Where a file of a staging folder will be once swapped in (other paths: themselves),
    the path to show a user."""
    staging = os.path.dirname(path)
    if os.path.basename(staging).startswith(STAGING_PREFIX):
        return os.path.join(os.path.dirname(staging), os.path.basename(path))
    return path


def finish_swaps(folder: str, owned: Callable[[str], bool]) -> None:
    """Finish the committed swaps a killed process left in `folder`; delete the staging
    folders of processes that died before committing theirs."""
    if not os.path.isdir(folder):
        return
    for name in sorted(os.listdir(folder)):
        staging = os.path.join(folder, name)
        if not name.startswith(STAGING_PREFIX) or not os.path.isdir(staging):
            continue
        if os.path.exists(os.path.join(staging, _COMMITTED)):
            _move_in(folder, staging, owned)
        elif not _alive(name[len(STAGING_PREFIX) :].partition("-")[0]):
            shutil.rmtree(staging, ignore_errors=True)


def _move_in(folder: str, staging: str, owned: Callable[[str], bool]) -> None:
    try:
        with open(os.path.join(staging, _COMMITTED)) as f:
            new = set(f.read().split("\n")) - {"", _COMMITTED}
    except FileNotFoundError:  # another process finished this swap
        return
    # FileNotFoundError: done already, by an earlier attempt or another process finishing it too
    for name in os.listdir(folder):
        if owned(name) and name not in new and os.path.isfile(os.path.join(folder, name)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))
    for name in sorted(new):
        with contextlib.suppress(FileNotFoundError):
            os.replace(os.path.join(staging, name), os.path.join(folder, name))
    fsync_dir(folder)
    shutil.rmtree(staging, ignore_errors=True)


def _alive(pid: str) -> bool:
    """Is the process `pid` running? (Not a pid: no.)"""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, owned by another user
        return True
    return True
