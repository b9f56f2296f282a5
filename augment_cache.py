"""Run the augmenter's teacher once over a prepared train.bin and cache its candidates.

    python augment_cache.py config/train_sigmoid_shakespeare_char.py   # the run's own config
    python augment_cache.py --dataset=shakespeare --teacher=gpt2 --augment_filter=prob

It takes the training configuration (config files, then --key=value), so the cache it writes is
the one that run reads with --augment_source=cache: <data_dir>/train.aug_<name>.bin + .json.
batch_size blocks of block_size tokens go through the teacher at a time. Interrupted, it
continues where it stopped when run again with the same settings. See nanoGPT/augment/cache.py.
"""

from __future__ import annotations

import sys

from nanoGPT.augment.cache import build_cache
from nanoGPT.config import TrainConfig, apply_config, validate_config
from nanoGPT.errors import cli


@cli
def main(argv: list[str] | None = None) -> str:
    cfg = apply_config(TrainConfig(), sys.argv[1:] if argv is None else argv)
    validate_config(cfg)  # the settings training will use, checked before the teacher runs
    try:
        return build_cache(cfg)
    except KeyboardInterrupt:
        print("progress is saved: run the same command again to continue", file=sys.stderr)
        raise


if __name__ == "__main__":
    main()
