"""User-facing errors: one clear line and a non-zero exit, never a traceback wall."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
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
