"""Comparing trunks as well as objectives: rows that override the architecture (arch=conv,
progressive_group, n_head, n_embd, batch_size, block_size, ...) get a table of what each trunk
is and costs: heads, width, micro-batch, context, parameters, training ms per iteration, the
final training loss, the held-out NLL and inference ms per generated token (KV cache)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping, Sequence

import torch

from nanoGPT.compare.plan import Run
from nanoGPT.config import TrainConfig
from nanoGPT.model import GPT
from nanoGPT.plotting import read_metrics
from nanoGPT.runtime import Runtime, seeded
from nanoGPT.sampling import generate

# the keys that make a row's trunk (or its share of the budget) differ from another's
TRUNK_KEYS = (
    "arch", "conv_factor", "conv_levels", "progressive_group", "progressive_stage3_lora", "n_layer",
    "n_head", "n_embd", "norm", "mlp", "pos_emb", "batch_size", "block_size", "gradient_accumulation_steps",
)  # fmt: skip


def trunk_name(cfg: TrainConfig) -> str:
    """GPT-2, a LLaMA-style variant of it, the conv compressor, or progressive diverging."""
    if cfg.arch == "conv":
        levels = f"{cfg.conv_levels} level{'s' if cfg.conv_levels > 1 else ''}"
        return f"conv (÷{cfg.conv_factor}, {levels}: deeper levels 2x wider, 2x heads)"
    parts = (cfg.norm, cfg.mlp, cfg.pos_emb)
    name = "GPT-2" if parts == ("layernorm", "gelu", "learned") else "GPT (" + "/".join(parts) + ")"
    if cfg.progressive_group:
        name += f", progressive diverging (group {cfg.progressive_group})"
    return name


def varies_trunk(runs: Sequence[Run]) -> bool:
    """Do the rows differ in their trunk (not only in their objective)?"""
    return any(len({getattr(r.cfg, key) for r in runs}) > 1 for key in TRUNK_KEYS)


def describe(cfg: TrainConfig) -> dict:
    """What results.json records of a row's trunk."""
    return {"trunk": trunk_name(cfg), **{key: getattr(cfg, key) for key in TRUNK_KEYS}}


def final_train_loss(metrics_path: str) -> float:
    """The training objective's mean over the last progress line of the run (NaN without one)."""
    records = read_metrics(metrics_path).get("train", [])
    losses = [r["loss"] for r in records if r.get("loss") is not None]
    return losses[-1] if losses else math.nan


@torch.no_grad()
def inference_ms_per_token(
    model: GPT, prompt_ids: Sequence[int], tokens: int, rt: Runtime, repeats: int = 3
) -> float:
    """Milliseconds per generated token: one sequence, `generate` with its KV cache (arch=conv
    recomputes its sequence per token: compressed positions cannot be cached), within the
    block so every step is a cached one; the median of `repeats` after a warm-up."""
    tokens = min(tokens, model.config.block_size - len(prompt_ids))
    if tokens < 1:
        return math.nan
    idx = torch.tensor([list(prompt_ids)], dtype=torch.long, device=rt.device)

    def synchronize() -> None:
        if rt.device_type == "cuda":
            torch.cuda.synchronize()

    times = []
    with seeded(0, rt.device), rt.autocast():
        generate(model, idx, min(tokens, 4))  # first calls pay for allocations
        for _ in range(repeats):
            synchronize()
            started = time.perf_counter()
            generate(model, idx, tokens)
            synchronize()
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times) / tokens


def _number(value: float, digits: int) -> str:
    """`digits` significant digits, but whole numbers rather than 1.23e+03."""
    return f"{value:.0f}" if abs(value) >= 10 ** (digits - 1) else f"{value:.{digits}g}"


def _cell(stats: Mapping[str, Mapping[str, float]], key: str, scale: float = 1.0, digits: int = 4) -> str:
    """mean ± std over seeds; the mean alone for one seed or a value every seed shares (params)."""
    value = stats.get(key)
    if value is None:
        return "–"
    text = _number(value["mean"] * scale, digits)
    return f"{text} ± {_number(value['std'] * scale, 2)}" if value["n"] > 1 and value["std"] else text


def format_trunk_table(runs: Sequence[Run], summary: Mapping[str, Mapping], split: str) -> str:
    """One line per row: its trunk and its costs (mean ± std over seeds, as the main table)."""
    first = {}
    for run in runs:
        first.setdefault(run.label, run.cfg)
    lines = [
        f"| row | trunk | layers | heads | width | micro-batch | context | params M | ms/iter ↓ | "
        f"final train loss ↓ | {split} NLL ↓ | ms/token ↓ |",
        "|---|---|" + "---:|" * 10,
    ]
    for label, cfg in first.items():
        stats = summary.get(label, {})
        lines.append(
            f"| {label} | {trunk_name(cfg)} | {cfg.n_layer} | {cfg.n_head} | {cfg.n_embd} | "
            f"{cfg.batch_size} | {cfg.block_size} | {_cell(stats, 'params', 1e-6, 3)} | "
            f"{_cell(stats, 'ms_per_iter', digits=3)} | {_cell(stats, 'train_loss')} | "
            f"{_cell(stats, 'nll')} | {_cell(stats, 'infer_ms_per_token', digits=3)} |"
        )
    return "\n".join(lines)


def trunk_section(runs: Sequence[Run], summary: Mapping[str, Mapping], split: str) -> str:
    """The report's trunk table and its legend, or "" when every row has the same trunk."""
    if not varies_trunk(runs):
        return ""
    return (
        "\n\n### Trunks\n\n"
        + format_trunk_table(runs, summary, split)
        + "\n\nSame budget for every row (iterations, learning-rate schedule, data). params: all "
        "parameters but learned positions; ms/iter: median training iteration (micro-batch x "
        "gradient accumulation); final train loss: the training objective over the last log "
        f"interval; {split} NLL: the final evaluation above; ms/token: generating one sequence "
        "with the KV cache within the block (arch=conv recomputes its window per token). Times "
        "depend on what else ran on the machine (`jobs` runs at once)."
    )
