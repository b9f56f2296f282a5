"""What a comparison trains: rows (variant + overrides) x seeds, and the teacher.

A row is written VARIANT[+aug][(key=value;key=value)]:
    baseline                       the reference: every verdict is against the first row
    sigmoid+aug                    trained on the teacher's candidates (the augmenter)
    smooth(label_smoothing=0.1)    any TrainConfig keys on top of the shared budget
A variant whose class trains on the teacher's probabilities (`uses_teacher_probs`: distill) gets +aug
implicitly. Rows naming a variant that is not registered are skipped and reported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, fields
from typing import Any

from nanoGPT.augment.cache import file_fingerprint
from nanoGPT.compare.config import TEACHER_TRAINED, CompareConfig
from nanoGPT.config import TrainConfig, parse_value
from nanoGPT.errors import UserError
from nanoGPT.variants import VARIANTS

AUGMENT_SUFFIX = "+aug"
TEACHER_LABEL = "teacher"
# keys of a checkpoint's config that do not change what a run learns: a run that differs from
# the comparison's budget only in these is the same run (augment_source and augment_cache are
# NOT here: a cached candidate for a window that does not start on a cache block was computed
# from another context than the online augmenter's, so a cached run is another run)
NOT_THE_RUN = frozenset(
    {
        "out_dir",
        "log_dir",
        "run_name",
        "init_from",
        "eval_interval",
        "eval_iters",
        "log_interval",
        "eval_only",
        "eval_split",
        "sample_interval",
        "sample_tokens",
        "sample_prompt",
        "wandb_log",
        "wandb_project",
        "wandb_run_name",
        "device",
        "dtype",
        "compile",
        "backend",
        "peak_flops",
        "checkpoint_interval",
        "checkpoint_minutes",
        "keep_checkpoints",
        "max_bad_steps",
        "debug_nan_at_iter",
        "debug_nan_steps",
        "debug_save_pause_s",
    }
)
_TRAIN_KEYS = {f.name: f.type for f in fields(TrainConfig)}
_NOT_CANDIDATES = {"augment_positions", "augment_source", "augment_cache"}


@dataclass(frozen=True)
class Row:
    label: str  # as written in the rows key, e.g. "sigmoid+aug"
    variant: str
    augment: bool
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def slug(self) -> str:
        """The label as a folder name."""
        return re.sub(r"[^A-Za-z0-9_.+=-]+", "-", self.label).strip("-")


@dataclass
class Run:
    label: str  # the row's label, or "teacher"
    seed: int
    cfg: TrainConfig

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.cfg.out_dir))

    @property
    def variant(self) -> str:
        return self.cfg.variant

    @property
    def log_path(self) -> str:
        return os.path.join(self.cfg.log_dir, self.cfg.run_name)


def parse_overrides(text: str, where: str) -> dict[str, Any]:
    """'key=value;key=value' -> TrainConfig values, each parsed to its key's type."""
    overrides: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in _TRAIN_KEYS:
            raise UserError(f"{where}: {item!r} must be KEY=VALUE with KEY a training config key")
        expected = {"int": int, "float": float, "bool": bool, "str": str}[str(_TRAIN_KEYS[key])]
        overrides[key] = parse_value(key, value.strip(), expected)
    return overrides


def needs_teacher(variant: str) -> bool:
    """A variant that trains on the teacher's probabilities (distill) always has the augmenter."""
    return bool(getattr(VARIANTS.get(variant), "uses_teacher_probs", False))


def parse_row(item: str) -> Row:
    match = re.fullmatch(r"\s*([A-Za-z0-9_]+)(\+aug)?\s*(?:\((.*)\))?\s*", item)
    if not match:
        raise UserError(f"row {item!r} must look like VARIANT[+aug][(key=value;...)]")
    variant, aug, overrides = match.groups()
    parsed = parse_overrides(overrides or "", f"row {item.strip()!r}")
    return Row(item.strip(), variant, bool(aug) or needs_teacher(variant), tuple(parsed.items()))


def parse_rows(text: str) -> tuple[list[Row], list[str]]:
    """(rows of registered variants, labels of the rows skipped as not registered)."""
    items = [part for part in re.split(r",(?![^()]*\))", text) if part.strip()]
    rows = list({row.label: row for row in map(parse_row, items)}.values())
    if not rows:
        raise UserError("rows lists no row")
    kept = [row for row in rows if row.variant in VARIANTS]
    skipped = [row.label for row in rows if row.variant not in VARIANTS]
    if not kept or kept[0] is not rows[0]:
        raise UserError(
            f"the first row ({rows[0].label!r}) is the reference and must be a registered variant; "
            f"choose from {', '.join(VARIANTS)}"
        )
    if len({row.slug for row in kept}) < len(kept):
        raise UserError(f"two rows share a folder name: {', '.join(row.slug for row in kept)}")
    return kept, skipped


def parse_seeds(text: str, default: int) -> list[int]:
    if not text.strip():
        return [default]
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise UserError("seeds lists no seed")
    return list(dict.fromkeys(seeds))


def has_split(data_dir: str, split: str) -> bool:
    return os.path.isfile(os.path.join(data_dir, f"{split}.bin"))


def final_split(data_dir: str) -> str:
    """The split the final table is measured on: test when the data has one (val chose best.pt)."""
    return "test" if has_split(data_dir, "test") else "val"


def selection_split(data_dir: str) -> str:
    """The split training evaluates on and picks best.pt by: val when there is one."""
    return "val" if has_split(data_dir, "val") else "test"


def shared_budget(cfg: CompareConfig, data_dir: str) -> TrainConfig:
    base = TrainConfig(**{f.name: getattr(cfg, f.name) for f in fields(TrainConfig)})
    return dataclasses.replace(
        base, data_dir=data_dir, init_from="scratch", eval_split=selection_split(data_dir), augment=False
    )


def settings_hash(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:10]


def teacher_run(cfg: CompareConfig, data_dir: str) -> Run | None:
    """The teacher to train (teacher="train"): the shared budget on all of train.bin plus
    teacher_overrides, in teacher_dir/<data>-<hash of its settings and of train.bin>, so every
    comparison on the same data, tokenizer and settings reuses it."""
    if cfg.teacher != TEACHER_TRAINED:
        return None
    overrides = parse_overrides(cfg.teacher_overrides, "teacher_overrides")
    teacher_cfg = dataclasses.replace(
        shared_budget(cfg, data_dir), variant="baseline", train_fraction=1.0, teacher="", **overrides
    )
    # the keys that differ from TrainConfig's defaults: a key added to TrainConfig later (at a
    # default that keeps the old behaviour) leaves the hash, and so the kept teacher, as it was
    defaults = dataclasses.asdict(TrainConfig())
    identity = {
        k: v
        for k, v in dataclasses.asdict(teacher_cfg).items()
        if k not in NOT_THE_RUN and not k.startswith("augment_") and v != defaults.get(k)
    }
    identity["data_dir"] = os.path.basename(os.path.normpath(data_dir))
    identity["train.bin"] = file_fingerprint(os.path.join(data_dir, "train.bin"))
    name = f"{identity['data_dir']}-{settings_hash(identity)}"
    teacher_cfg = dataclasses.replace(
        teacher_cfg,
        out_dir=os.path.join(cfg.teacher_dir, name),
        log_dir=os.path.join(cfg.log_dir, "teachers"),
        run_name=name,
    )
    return Run(TEACHER_LABEL, teacher_cfg.seed, teacher_cfg)


def teacher_spec(cfg: CompareConfig, teacher: Run | None) -> str:
    return f"ckpt:{teacher.cfg.out_dir}" if teacher is not None else cfg.teacher


def augmented(run_cfg: TrainConfig, teacher: str, teacher_name: str) -> TrainConfig:
    """A row's config with the augmenter on; a cached source gets a cache named after the
    teacher and a hash of the settings that decide its candidates (one cache per setting)."""
    run_cfg = dataclasses.replace(run_cfg, augment=True, teacher=teacher)
    if run_cfg.augment_source == "cache" and not run_cfg.augment_cache:
        # which positions get extras is applied when a batch is read: not part of a cache
        decides = [k for k in _TRAIN_KEYS if k.startswith("augment_") and k not in _NOT_CANDIDATES]
        candidates = {k: getattr(run_cfg, k) for k in [*decides, "block_size", "train_fraction"]}
        run_cfg = dataclasses.replace(run_cfg, augment_cache=f"{teacher_name}-{settings_hash(candidates)}")
    return run_cfg


def plan_runs(cfg: CompareConfig, data_dir: str, rows: list[Row], teacher: Run | None) -> list[Run]:
    """Every row x seed as a TrainConfig of the shared budget, seed-major (an interrupted
    comparison has whole seeds done), the reference row of each seed first."""
    base = shared_budget(cfg, data_dir)
    spec = teacher_spec(cfg, teacher)
    teacher_name = teacher.name if teacher is not None else re.sub(r"[^A-Za-z0-9_.-]+", "-", spec)
    runs = []
    for seed in parse_seeds(cfg.seeds, cfg.seed):
        for row in rows:
            name = f"{row.slug}-seed{seed}"
            run_cfg = dataclasses.replace(
                base,
                variant=row.variant,
                seed=seed,
                out_dir=os.path.join(cfg.out_dir, name),
                log_dir=os.path.join(cfg.log_dir, cfg.name),
                run_name=name,
                teacher="",  # a run without the augmenter does not depend on any teacher
                **dict(row.overrides),
            )
            if row.augment:
                run_cfg = augmented(run_cfg, spec, teacher_name)
            runs.append(Run(row.label, seed, run_cfg))
    return runs
