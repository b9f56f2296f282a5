"""What a run records in <log_dir>/<run>/: train.log (its console output), metrics.jsonl (JSON
lines), samples.txt, and optionally a wandb run."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import sys
import time

from nanoGPT import checkpoint
from nanoGPT.atomic import atomic_write_text
from nanoGPT.config import TrainConfig
from nanoGPT.errors import UserError, resource_faults


class RunLog:
    """Console lines mirrored to train.log, JSON lines in metrics.jsonl, optional wandb.

    Only rank 0's RunLog is active. Files are created at the first line written, so a run that
    fails on its configuration leaves nothing behind. Every file is appended to: a resumed run
    continues them (train.log keeps a run's earlier lines, headed by a line per start).
    """

    def __init__(self, cfg: TrainConfig, active: bool):
        self.active = active
        self.dir = os.path.join(cfg.log_dir, cfg.run_name or os.path.basename(os.path.abspath(cfg.out_dir)))
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        self.pending_header: str | None = f"=== {started} {cfg.variant}, init_from={cfg.init_from}"
        self.pending_header += ", eval_only" if cfg.eval_only else ""
        self.wandb = None
        self.held: list = []  # what the run holds until it ends (its out_dir lock), closed by close()

    def _append(self, name: str, text: str) -> None:
        # a full disk (or a file-size limit) while logging: one line, the checkpoints are intact
        with resource_faults(f"writing {name} in {self.dir}", "then rerun with init_from=auto"):
            self._append_unchecked(name, text)

    def _append_unchecked(self, name: str, text: str) -> None:
        if self.pending_header is not None:  # this process's first write: make the folder, head train.log
            os.makedirs(self.dir, exist_ok=True)
            header, self.pending_header = self.pending_header, None
            self._append("train.log", _after_a_cut_line(os.path.join(self.dir, "train.log")) + header + "\n")
        with open(os.path.join(self.dir, name), "a") as f:
            f.write(text)

    def print(self, line: str, err: bool = False, console: bool = True) -> None:
        """`print` for what rank 0 says: on stdout (stderr if `err`) and appended to train.log."""
        if not self.active:
            return
        if console:
            print(line, file=sys.stderr if err else sys.stdout, flush=True)
        self._append("train.log", line + "\n")

    def ended(self, line: str) -> None:
        """Append why the run ended (the console shows it already) to train.log, if this run
        wrote anything: a run refused before it began leaves no files."""
        if self.active and self.pending_header is None:
            with contextlib.suppress(UserError):  # a full disk: the console has the line
                self._append("train.log", line + "\n")

    def warn(self, line: str) -> None:
        """A one-line warning on stderr and in train.log."""
        self.print(f"warning: {line}", err=True)

    def start_wandb(self, cfg: TrainConfig, run_id: str = "") -> str:
        """Start the wandb run (wandb_log=True) and return its id; given the id of an earlier
        wandb run (a resumed training run), continue that one instead of starting another."""
        if not (self.active and cfg.wandb_log):
            return run_id
        import wandb  # reads WANDB_API_KEY / WANDB_MODE / WANDB_DIR from the environment only

        self.wandb = wandb.init(
            project=cfg.wandb_project,
            name=cfg.wandb_run_name or None,
            config=dataclasses.asdict(cfg),
            allow_val_change=True,  # a resumed run may change max_iters, init_from, ...
            **({"id": run_id, "resume": "allow"} if run_id else {}),
        )
        return self.wandb.id

    def write(self, record: dict) -> None:
        if not self.active:
            return
        self._append("metrics.jsonl", json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log(
                {k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["iter"]
            )

    def sample(self, it: int, text: str) -> None:
        if self.active:
            self._append("samples.txt", f"--- iter {it} ---\n{text}\n")

    def keep_through(self, iter_num: int) -> None:
        """Drop the records and samples of iterations after `iter_num`.

        A run killed after its last checkpoint had logged iterations the resumed run does again;
        without this they would appear twice. A line cut off by the kill is dropped too.
        """
        if not self.active:
            return
        with resource_faults(f"trimming the logs in {self.dir}", "then rerun with init_from=auto"):
            self._keep_through(iter_num)

    def _keep_through(self, iter_num: int) -> None:
        metrics_path = os.path.join(self.dir, "metrics.jsonl")
        if os.path.exists(metrics_path):
            kept = []
            with open(metrics_path) as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict) and record.get("iter", 0) <= iter_num:
                        kept.append(json.dumps(record) + "\n")
            atomic_write_text(metrics_path, "".join(kept))
        samples_path = os.path.join(self.dir, "samples.txt")
        if os.path.exists(samples_path):
            with open(samples_path) as f:
                text = f.read()
            later = [
                m.start()
                for m in re.finditer(r"^--- iter (\d+) ---$", text, re.MULTILINE)
                if int(m.group(1)) > iter_num
            ]
            if later:
                atomic_write_text(samples_path, text[: later[0]])

    def lock_out_dir(self, out_dir: str) -> None:
        """One run per out_dir: lock it until close() (checkpoint.lock_out_dir; a UserError
        naming the pid of another run holding it). Called before the run touches out_dir."""
        self.held.append(checkpoint.lock_out_dir(out_dir))

    def close(self) -> None:
        try:
            if self.wandb is not None:
                self.wandb.finish()
                self.wandb = None
        finally:
            while self.held:
                self.held.pop().close()


def _after_a_cut_line(path: str) -> str:
    """A newline if the file ends inside a line (its writer was killed mid-line), else ""."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return ""
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return "" if f.read(1) == b"\n" else "\n"


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN or infinity: a non-finite number is logged as null."""
    return value if math.isfinite(value) else None
