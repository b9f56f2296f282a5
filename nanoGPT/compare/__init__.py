"""Which output objective wins? Every row (variant + overrides) x seed trained on one budget
through the one loop, measured on one yardstick, decided by paired statistics.

    config.py      CompareConfig: the shared budget + the comparison's keys
    plan.py        rows, seeds, the teacher, and the TrainConfig of every run
    runs.py        data preparation, train / resume / reuse a run, augmenter caches
    schedule.py    tasks in dependency order, in one process or `jobs` one-thread workers
    final_eval.py  held-out metrics per window, samples, judge perplexity (cached per run)
    report.py      summaries, verdicts against reference and controls, the tables
    document.py    report.md, samples.md, figures
    pipeline.py    compare(): all of the above in order
"""

from nanoGPT.compare.config import CompareConfig
from nanoGPT.compare.pipeline import compare

__all__ = ["CompareConfig", "compare"]
