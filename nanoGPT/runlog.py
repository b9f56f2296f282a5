"""What a run records: JSON lines in <log_dir>/<run>/metrics.jsonl, samples.txt, optional wandb."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

from nanoGPT.atomic import atomic_write_text
from nanoGPT.config import TrainConfig


class RunLog:
    """Progress lines on stdout, JSON lines in training_logs/<run>/metrics.jsonl, optional wandb."""

    def __init__(self, cfg: TrainConfig, active: bool):
        self.active = active
        self.dir = os.path.join(cfg.log_dir, cfg.run_name or os.path.basename(os.path.abspath(cfg.out_dir)))
        self.wandb = None
        if not active:
            return
        os.makedirs(self.dir, exist_ok=True)
        if cfg.wandb_log:
            import wandb  # reads WANDB_API_KEY / WANDB_MODE from the environment only

            self.wandb = wandb.init(
                project=cfg.wandb_project, name=cfg.wandb_run_name or None, config=dataclasses.asdict(cfg)
            )

    def write(self, record: dict) -> None:
        if not self.active:
            return
        with open(os.path.join(self.dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log(
                {k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["iter"]
            )

    def sample(self, it: int, text: str) -> None:
        if self.active:
            with open(os.path.join(self.dir, "samples.txt"), "a") as f:
                f.write(f"--- iter {it} ---\n{text}\n")

    def keep_through(self, iter_num: int) -> None:
        """Drop the records and samples of iterations after `iter_num`.

        A run killed after its last checkpoint had logged iterations the resumed run does again;
        without this they would appear twice. A line cut off by the kill is dropped too.
        """
        if not self.active:
            return
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

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN or infinity: a non-finite number is logged as null."""
    return value if math.isfinite(value) else None
