"""Which output objective wins? Train every row on one budget, measure them on one yardstick.

    python compare.py config/compare_shakespeare.py            # SentencePiece pieces, 3 seeds
    python compare.py config/compare_shakespeare_char.py       # characters, a quick look
    python compare.py config/compare_shakespeare.py --rows=baseline,sigmoid,sigmoid+aug --seeds=1,2
    python compare.py config/compare_wikitext.py               # GPUs: GPT-2 124M on WikiText-103
    python compare.py config/compare_archs_shakespeare_char.py # trunks: GPT-2, conv, progressive

A teacher (bigger, longer, on all of train.bin) is trained once and reused; every row x seed is
trained through the one loop (nanoGPT/train.py) on the same budget, the +aug rows on the
teacher's candidates; every run is evaluated on the same held-out windows (test when the data
has a test split), and training_logs/<name>/report.md gets the table, the paired verdicts of
every row against the reference and its control, plots and samples. A rerun reuses finished
checkpoints and evaluations and resumes interrupted runs. The library is nanoGPT/compare/.
"""

from __future__ import annotations

import shlex
import sys

from nanoGPT.compare import CompareConfig, compare
from nanoGPT.config import apply_config
from nanoGPT.errors import cli


@cli
def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    cfg = apply_config(CompareConfig(), argv)
    return compare(cfg, command=shlex.join(["python", "compare.py", *argv]))


if __name__ == "__main__":
    main()
