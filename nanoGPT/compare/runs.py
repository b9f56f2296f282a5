"""Training a comparison's runs: prepare the data, train / resume / reuse each run, build the
augmenter caches, and refuse a checkpoint that is not the run asked for."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import time
from collections.abc import Mapping

from nanoGPT.atomic import atomic_write_json
from nanoGPT.augment.cache import build_cache
from nanoGPT.checkpoint import find_resume_checkpoint, warn
from nanoGPT.compare.config import CompareConfig
from nanoGPT.compare.plan import NOT_THE_RUN, Run, has_split
from nanoGPT.config import TrainConfig
from nanoGPT.data import resolve_data_dir
from nanoGPT.errors import UserError
from nanoGPT.train import train

TRAIN_TIME = "compare_train.json"  # seconds spent training the run, over all invocations


def stage(message: str) -> None:
    print(f"== compare: {message}", flush=True)


def ensure_data(cfg: CompareConfig) -> str:
    """The data folder; prepared through data/<dataset>/prepare.py's `prepare()` if missing."""
    data_dir = resolve_data_dir(cfg.dataset, cfg.data_dir)
    script = os.path.join(data_dir, "prepare.py")
    prepared = has_split(data_dir, "train") and (has_split(data_dir, "val") or has_split(data_dir, "test"))
    if prepared or cfg.data_dir or not cfg.prepare_data or not os.path.isfile(script):
        return data_dir  # a missing folder is reported by the training loop in one line
    stage(f"preparing {data_dir} (python {script})")
    spec = importlib.util.spec_from_file_location(f"prepare_{cfg.dataset}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.prepare()
    return data_dir


def ignored_keys(cfg: TrainConfig) -> set[str]:
    """Keys of `cfg` that do not decide what this run learns."""
    ignored = set(NOT_THE_RUN)
    if not cfg.augment:  # the augmenter's settings do not touch a run that does not use it
        ignored |= {"teacher"} | {k for k in dataclasses.asdict(cfg) if k.startswith("augment_")}
    elif cfg.augment_source != "cache":  # the online augmenter reads no cache
        ignored.add("augment_cache")
    return ignored


def check_same_run(saved: Mapping, cfg: TrainConfig, path: str) -> None:
    """A checkpoint at the run's path must be this run: same model, data, budget and source of
    the augmenter's candidates (a cached run is not the online run)."""
    wanted = dataclasses.asdict(cfg)
    for key in sorted(wanted.keys() & saved.keys() - ignored_keys(cfg)):
        same = saved[key] == wanted[key]
        if key == "data_dir":  # the same folder, reached from another working directory
            same = os.path.realpath(saved[key]) == os.path.realpath(wanted[key])
        if not same:
            raise UserError(
                f"{path} was trained with {key}={saved[key]!r}, this comparison asks for "
                f"{wanted[key]!r}: delete {os.path.dirname(path)} or pick another --out_dir/--name"
            )


def train_or_reuse(run: Run) -> str:
    """Train the run, resume it from its newest valid checkpoint, or reuse it when finished.
    Returns what happened: trained | resumed | reused."""
    found = find_resume_checkpoint(run.cfg.out_dir, report=warn)
    if found is not None:
        path, ckpt = found
        check_same_run(ckpt["config"], run.cfg, path)
        finished = ckpt["iter_num"] >= run.cfg.max_iters
        del found, ckpt  # the weights: train() loads its own copy
        if finished:
            return "reused"
        status = "resumed"
    else:
        status = "trained"
    # init_from=auto resumes where a checkpoint is and trims the log to it, else starts afresh
    earlier = training_seconds(run) if status == "resumed" else 0.0
    started = time.time()
    try:
        train(dataclasses.replace(run.cfg, init_from="auto"))
    finally:  # an interrupted attempt's time counts too: its checkpoints are resumed from
        spent = time.time() - started + (earlier if math.isfinite(earlier) else 0.0)
        os.makedirs(run.log_path, exist_ok=True)
        atomic_write_json(os.path.join(run.log_path, TRAIN_TIME), {"train_s": spent})
    return status


def training_seconds(run: Run) -> float:
    """Wall seconds spent training the run so far (NaN when compare.py did not train it)."""
    path = os.path.join(run.log_path, TRAIN_TIME)
    if not os.path.isfile(path):
        return math.nan
    with open(path) as f:
        return json.load(f)["train_s"]


def build_run_cache(run: Run) -> str:
    """The augmenter cache an augment_source=cache run reads (built once, then up to date)."""
    started = time.time()
    path = build_cache(run.cfg, show_progress=False)
    stage(f"augmenter cache {os.path.basename(path)} ready ({time.time() - started:.0f} s)")
    return path
