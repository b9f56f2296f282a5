"""User-facing errors: one clear line and a non-zero exit, never a traceback wall."""

from __future__ import annotations

import contextlib
import errno
import functools
import sys
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A mistake the user can fix (bad config, missing data, wrong checkpoint...)."""


def cli(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap an entry point so a UserError prints one line to stderr and exits with 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper


# what to do about an OSError that is the machine's state, not a bug: one line instead of a traceback
RESOURCE_FIXES = {
    errno.ENOSPC: "free some disk space",
    errno.EDQUOT: "free some space or raise the disk quota",
    errno.EFBIG: "raise the file-size limit (ulimit -f) or use a file system that allows larger files",
    errno.EROFS: "use a writable folder",
    errno.EACCES: "use a folder you can write to",
    errno.EPERM: "use a folder you can write to",
    errno.EISDIR: "move the folder out of the way",
    errno.ENOTDIR: "use a path whose parents are folders",
}


def os_error_in(err: BaseException | None) -> OSError | None:
    """The OSError behind `err`: itself, or what it was raised from or while handling (torch.save
    reports a failed write as a RuntimeError raised while handling the OSError)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno is not None:
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def resource_error(err: BaseException, doing: str, then: str) -> UserError | None:
    """One line for a resource fault (disk full, file-size limit, read-only, no permission, a
    folder where a file belongs) behind `err`: "<doing> failed: <reason>; <fix>, <then>".
    None for any other failure, which stays a traceback (a bug to see whole)."""
    found = os_error_in(err)
    if found is None or found.errno not in RESOURCE_FIXES:
        return None
    where = f" ({found.filename})" if found.filename else ""
    return UserError(f"{doing} failed: {found.strerror}{where}; {RESOURCE_FIXES[found.errno]}, {then}")


@contextlib.contextmanager
def resource_faults(doing: str, then: str) -> Iterator[None]:
    """Turn a resource fault inside the block into resource_error's one line; any other
    exception passes unchanged. (RuntimeError too: torch.save wraps a failed write in one.)"""
    try:
        yield
    except (OSError, RuntimeError) as err:
        problem = resource_error(err, doing, then)
        if problem is None:
            raise
        raise problem from None
