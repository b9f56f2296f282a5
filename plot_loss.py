"""Plot the loss curves of finished runs from their metrics.jsonl files.

    python plot_loss.py training_logs/compare-shakespeare            # every run of a comparison
    python plot_loss.py training_logs/run-a training_logs/run-b/metrics.jsonl --out=loss.png

A path is a metrics.jsonl, a run folder holding one, or a folder of run folders. Runs named
<variant>-seed<N> (compare.py's) share a colour per variant.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

from nanoGPT.config import apply_config
from nanoGPT.errors import UserError, cli
from nanoGPT.plotting import find_metrics_files, plot_loss_curves


@dataclass
class PlotConfig:
    out: str = "loss.png"
    title: str = ""


@cli
def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    paths = [a for a in argv if not a.startswith("--")]
    cfg = apply_config(PlotConfig(), [a for a in argv if a.startswith("--")])
    if not paths:
        raise UserError("give the metrics.jsonl files or run folders to plot")
    runs = find_metrics_files(paths)
    groups = {label: re.sub(r"-seed\d+$", "", label) for label in runs}
    path = plot_loss_curves(runs, cfg.out, groups=groups, title=cfg.title)
    print(f"{path}: {len(runs)} run(s)")
    return path


if __name__ == "__main__":
    main()
