"""The comparison's files: report.md, samples.md and the figures it shows."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

from nanoGPT.compare.config import CompareConfig
from nanoGPT.compare.plan import Run
from nanoGPT.compare.report import shown_columns
from nanoGPT.plotting import plot_logged_key, plot_loss_curves, plot_reliability, plot_samples


@dataclass
class ReportContext:
    """Everything report.md states beyond the tables."""

    command: str
    cfg: CompareConfig
    runs: Sequence[Run]
    teacher: Run | None
    statuses: Mapping[str, str]
    train_s: Mapping[str, float]
    split: str
    checkpoint: str  # best | last
    tokens_evaluated: float
    train_tokens: int  # tokens of train.bin the students draw windows from
    skipped: Sequence[str]
    wall_s: float
    machine: str = ""  # where this invocation ran (runs it reused may have trained elsewhere)


def write_samples_markdown(path: str, results: Mapping[str, Mapping[int, dict]]) -> None:
    with open(path, "w") as f:
        f.write("# Samples\n\nEvery run continues the same prompts under the same seeds.\n")
        for label, seeds in results.items():
            for seed, result in seeds.items():
                f.write(f"\n## {label}, seed {seed}\n")
                for i, sample in enumerate(result["samples"]):
                    text = sample["prompt"] + sample["text"]
                    f.write(f"\n### sample {i + 1}\n\n```\n{text}\n```\n")


def draw_figures(
    report_dir: str, runs: Sequence[Run], results: Mapping[str, Mapping[int, dict]], cfg
) -> list[str]:
    """loss.png, reliability.png, samples.png and, when Bayesian runs logged it, sigma.png;
    returns the file names drawn."""
    logs = {r.name: os.path.join(r.log_path, "metrics.jsonl") for r in runs}
    groups = {r.name: r.label for r in runs}
    plot_loss_curves(logs, os.path.join(report_dir, "loss.png"), groups=groups, title=cfg.name)
    first_seed = {label: seeds[min(seeds)] for label, seeds in results.items()}
    split = next(iter(first_seed.values()))["split"]
    plot_reliability(
        {label: r["reliability"] for label, r in first_seed.items()},
        os.path.join(report_dir, "reliability.png"),
        ece={label: r["metrics"]["ece"] for label, r in first_seed.items()},
        title=f"reliability on {split}, first seed of each row",
    )
    # one sample per prompt and row: the same prompt and seed side by side
    shown = {label: r["samples"][:: cfg.num_samples] for label, r in first_seed.items()}
    texts = {label: [s["prompt"] + s["text"] for s in samples] for label, samples in shown.items()}
    plot_samples(texts, os.path.join(report_dir, "samples.png"))
    drawn = ["loss.png", "reliability.png", "samples.png"]
    sigma = plot_logged_key(
        logs, "sigma_mean", os.path.join(report_dir, "sigma.png"), groups, "posterior σ mean"
    )
    return drawn + (["sigma.png"] if sigma else [])


def budget_lines(ctx: ReportContext) -> str:
    cfg, first = ctx.cfg, ctx.runs[0].cfg
    tokens_per_iter = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
    epochs = cfg.max_iters * tokens_per_iter / max(1, ctx.train_tokens)
    lines = [
        f"- data `{first.data_dir}`; final evaluation on **{ctx.split}** ({ctx.tokens_evaluated:,.0f} "
        f"tokens, the same windows for every run) of the **{ctx.checkpoint}** checkpoint (best.pt is "
        f"chosen on {first.eval_split})",
        f"- every student (but for its row's overrides): {cfg.n_layer} layers, {cfg.n_head} heads, "
        f"{cfg.n_embd} wide, block "
        f"{cfg.block_size}; {cfg.max_iters} iterations of {tokens_per_iter:,} tokens from the first "
        f"{first.train_fraction:g} of train.bin ({ctx.train_tokens:,} tokens: {epochs:.1f} epochs)",
    ]
    if ctx.teacher is not None:
        t = ctx.teacher.cfg
        lines.append(
            f"- teacher `{t.out_dir}`: {t.n_layer} layers, {t.n_embd} wide, {t.max_iters} iterations of "
            f"{t.batch_size * t.block_size * t.gradient_accumulation_steps:,} tokens from "
            f"{'all' if t.train_fraction == 1 else f'the first {t.train_fraction:g}'} of train.bin; "
            f"{ctx.statuses.get(ctx.teacher.name, '')}"
        )
    return "\n".join(lines)


def run_lines(ctx: ReportContext) -> str:
    def source(run: Run) -> str:
        if not run.cfg.augment:
            return "no augmenter"
        where = f"cache {run.cfg.augment_cache}" if run.cfg.augment_source == "cache" else "online"
        return f"augmenter {where}, positions {run.cfg.augment_positions}, k {run.cfg.augment_k}"

    def minutes(name: str) -> str:
        seconds = ctx.train_s.get(name, float("nan"))
        return f"trained in {seconds / 60:.1f} min" if seconds == seconds else "not trained by compare.py"

    runs = ([ctx.teacher] if ctx.teacher else []) + list(ctx.runs)
    return "\n".join(
        f"- {r.name}: {ctx.statuses[r.name]} ({r.cfg.out_dir}; {source(r)}), {minutes(r.name)}" for r in runs
    )


def write_report(
    path: str, ctx: ReportContext, table: str, gap: str, verdict_table: str, summary, figures
) -> None:
    cfg = ctx.cfg
    legend = "\n".join(f"- **{c.header}**: {c.about}" for c in shown_columns(summary))
    config_lines = "\n".join(f"{f.name} = {getattr(cfg, f.name)!r}" for f in fields(cfg))
    skipped = f"\nNot run (variant not registered): {', '.join(ctx.skipped)}.\n" if ctx.skipped else ""
    images = "\n\n".join(f"![{re.sub(r'[.]png$', '', name)}]({name})" for name in figures)
    total_train_s = sum(t for t in ctx.train_s.values() if t == t)
    text = f"""# Comparison `{cfg.name}`

```sh
{ctx.command}
```

{budget_lines(ctx)}
- seeds {cfg.seeds or cfg.seed}: mean ± std over them; **bold**: best in its column *and* detectably
  better than every other row (paired bootstrap, 95%); the teacher is not a contestant
- time: training took {total_train_s / 60:.1f} min of process time; this invocation {ctx.wall_s / 60:.1f} min
- machine: {ctx.machine}; another CPU or GPU sums floats in another order, so its runs end
  elsewhere and its digits differ (as if the seeds were drawn anew)
{skipped}
{table}

{gap}

## Verdicts

Each row minus the row it is read against: the reference, its control (untied head for the
Bayesian rows, a head with a bias for the sigmoid rows), and for X+aug the row X. 95% paired
bootstrap interval over seeds and windows; a difference is claimed only when the interval
excludes 0 (no correction for the number of comparisons).

{verdict_table}

{legend}

{images}

All samples: [samples.md](samples.md); every number: [results.json](results.json).

## Runs

{run_lines(ctx)}

## Config

```python
{config_lines}
```
"""
    with open(path, "w") as f:
        f.write(text)
