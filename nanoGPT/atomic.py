"""Atomic file writes: the one way this project puts a file in place.

Everything is written to a temporary file in the destination's folder, flushed and fsynced,
then renamed over the destination with `os.replace` and the folder fsynced, so a kill or a
power cut at any moment leaves the old file or the new one, never half of one. A failure
removes the temporary file and leaves the destination as it was.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable
from typing import IO, Any

TEMP_PREFIX = ".tmp-"  # what a temporary file's name starts with (checkpoint.py cleans them up)


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
