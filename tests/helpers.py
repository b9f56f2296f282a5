"""Test helpers shared by the test modules (conftest holds the fixtures)."""

import subprocess
from collections.abc import Sequence

TAIL_CHARS = 4000


def output_tail(proc: subprocess.CompletedProcess) -> str:
    """The end of a child's stdout and stderr, for an assertion message."""

    def tail(text: str | bytes | None) -> str:
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        return (text or "")[-TAIL_CHARS:]

    return (
        f"command: {' '.join(map(str, proc.args))}\nexit code: {proc.returncode}\n"
        f"--- stdout tail:\n{tail(proc.stdout)}\n--- stderr tail:\n{tail(proc.stderr)}"
    )


def run_checked(
    args: Sequence[str], expect_returncode: int | None = 0, **kwargs
) -> subprocess.CompletedProcess:
    """subprocess.run with captured text output; a wrong exit code fails with the child's output tail.
    expect_returncode=None accepts any exit code (the caller asserts on it with output_tail)."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    proc = subprocess.run(list(args), **kwargs)
    if expect_returncode is not None:
        assert proc.returncode == expect_returncode, output_tail(proc)
    return proc
