"""Figures of finished runs: loss curves from metrics.jsonl, reliability diagrams, samples.

Figures are drawn on a bare `matplotlib.figure.Figure` (Agg canvas), never through pyplot,
so nothing here needs a display or changes the backend of a program that imports it.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from collections.abc import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

from nanoGPT.errors import UserError

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str) -> dict[str, list[dict]]:
    """The records of one run's metrics.jsonl by kind ("train", "eval"), sorted by iteration.

    A resumed run logs again the iterations between its last checkpoint and the interruption;
    the later record of an iteration wins, so every curve is the one the finished run followed.
    """
    by_kind: dict[str, dict[int, dict]] = {}
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a run killed mid-write leaves a partial line: the curve skips it
            if isinstance(record, dict) and "iter" in record:
                by_kind.setdefault(record.get("kind", "train"), {})[record["iter"]] = record
    return {kind: [records[i] for i in sorted(records)] for kind, records in by_kind.items()}


def find_metrics_files(paths: Sequence[str]) -> dict[str, str]:
    """Run label -> metrics.jsonl, from paths that are metrics.jsonl files, run folders (that
    hold one), or folders of run folders (a comparison). The label is the run folder's name."""
    found: dict[str, str] = {}
    for path in paths:
        if os.path.isfile(path):
            found[os.path.basename(os.path.dirname(os.path.abspath(path)))] = path
        elif os.path.isfile(os.path.join(path, METRICS_FILE)):
            found[os.path.basename(os.path.abspath(path))] = os.path.join(path, METRICS_FILE)
        elif os.path.isdir(path):
            runs = sorted(
                name for name in os.listdir(path) if os.path.isfile(os.path.join(path, name, METRICS_FILE))
            )
            if not runs:
                raise UserError(f"no run folders with a {METRICS_FILE} under {path}")
            for name in runs:
                found[name] = os.path.join(path, name, METRICS_FILE)
        else:
            raise UserError(f"{path} not found (give metrics.jsonl files or run folders)")
    return found


def _save(fig: Figure, out_path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out_path, dpi=120)
    return out_path


def _save_grid(fig: Figure, axes: Sequence, used: int, title: str, out_path: str) -> str:
    """Hide a grid's unused panels, add the title, lay out and save."""
    for ax in axes[used:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out_path)


def _colours(names: Sequence[str]) -> dict[str, str]:
    palette = [f"C{i}" for i in range(10)]
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def eval_split_of(records: list[dict]) -> str:
    """The held-out split a run evaluated on during training: val, or test if it had no val."""
    keys = set().union(*(r.keys() for r in records)) if records else set()
    return "val" if "val/nll" in keys or "test/nll" not in keys else "test"


def plot_loss_curves(
    runs: Mapping[str, str],
    out_path: str,
    groups: Mapping[str, str] | None = None,
    title: str = "",
) -> str:
    """Loss curves of runs (label -> metrics.jsonl) in one PNG with two panels.

    Left: NLL on the train and held-out split from the evaluations, computed from every
    variant's normalised predictive distribution, so the curves of different objectives are
    comparable. Right: each run's own training objective as logged by the loop (CE, BCE,
    ELBO...), which is not comparable across objectives. Runs with the same group (a
    variant's seeds) share a colour and one legend entry.
    """
    groups = groups or {label: label for label in runs}
    colour = _colours(list(dict.fromkeys(groups[label] for label in runs)))
    fig = Figure(figsize=(13, 5))
    ax_nll, ax_obj = fig.subplots(1, 2)
    labelled: set[str] = set()
    later_nll: list[float] = []  # NLL after each run's first evaluation, for the y range
    start_nll: list[float] = []
    for label, path in runs.items():
        records = read_metrics(path)
        group = groups[label]
        legend = group if group not in labelled else None
        labelled.add(group)
        evals = records.get("eval", [])
        split = eval_split_of(evals)
        held_out = [(r["iter"], r[f"{split}/nll"]) for r in evals if f"{split}/nll" in r]
        train_nll = [(r["iter"], r["train/nll"]) for r in evals if "train/nll" in r]
        for points in (held_out, train_nll):
            start_nll.extend(v for _, v in points[:1])
            later_nll.extend(v for _, v in points[1:])
        if held_out:
            ax_nll.plot(
                *zip(*held_out),
                "-o",
                ms=3,
                color=colour[group],
                label=f"{legend} ({split})" if legend else None,
            )
        if train_nll:
            ax_nll.plot(
                *zip(*train_nll),
                "--",
                color=colour[group],
                alpha=0.7,
                label=f"{legend} (train)" if legend else None,
            )
        objective = [(r["iter"], r["loss"]) for r in records.get("train", []) if "loss" in r]
        if objective:
            ax_obj.plot(*zip(*objective), color=colour[group], alpha=0.8, lw=1, label=legend)
    nll_title = "train (dashed) and held-out (solid) NLL of the predictive distribution"
    if later_nll and max(start_nll) > 1.5 * max(later_nll):
        # the untrained start (~ln V) would flatten the differences that matter: zoom past it
        low, high = min(later_nll), max(later_nll)
        pad = 0.08 * (high - low) or 0.05
        ax_nll.set_ylim(low - pad, high + pad)
        nll_title += "\n(zoomed: the first evaluation is above the top)"
    ax_nll.set(xlabel="iteration", ylabel="NLL (nats/token)", title=nll_title)
    ax_obj.set(
        xlabel="iteration",
        ylabel="training loss",
        yscale="log",
        title="each run's own training objective (not comparable across objectives)",
    )
    # plain numbers on the log axis, not 4.4 x 10^0
    ax_obj.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    ax_obj.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
    for ax in (ax_nll, ax_obj):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.title.set_fontsize(9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out_path)


def plot_reliability(
    reliability: Mapping[str, Mapping[str, list]],
    out_path: str,
    ece: Mapping[str, float] | None = None,
    title: str = "",
) -> str:
    """One reliability diagram per entry (label -> `MetricAccumulator.reliability()`), side by
    side: accuracy per confidence bin against the diagonal of perfect calibration, with the
    share of tokens in each bin underneath."""
    labels = list(reliability)
    if not labels:
        raise ValueError("plot_reliability: nothing to plot")
    columns = min(len(labels), 5)
    rows = math.ceil(len(labels) / columns)
    fig = Figure(figsize=(3.2 * columns, 3.6 * rows))
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, label in zip(axes, labels):
        bins = reliability[label]
        edges = bins["edges"]
        width = edges[1] - edges[0]
        total = sum(bins["count"]) or 1.0
        filled = [i for i, acc in enumerate(bins["accuracy"]) if acc is not None]
        ax.bar(
            [edges[i] for i in filled],
            [bins["accuracy"][i] for i in filled],
            width=width,
            align="edge",
            color="C0",
            edgecolor="white",
            label="accuracy",
        )
        ax.bar(
            [edges[i] for i in filled],
            [bins["confidence"][i] - bins["accuracy"][i] for i in filled],
            width=width,
            bottom=[bins["accuracy"][i] for i in filled],
            align="edge",
            color="C3",
            alpha=0.35,
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        share = ax.twinx()
        share.stairs([c / total for c in bins["count"]], edges, color="grey", lw=1, label="share of tokens")
        share.set_ylim(0, 4)  # the token share stays in the lower quarter of the panel
        share.set_yticks([])
        heading = label if ece is None or label not in ece else f"{label}  ECE {ece[label]:.4f}"
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-1)", title=heading)
        ax.title.set_fontsize(9)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=7, loc="upper left")
    return _save_grid(fig, axes, len(labels), title, out_path)


def plot_samples(
    samples: Mapping[str, Sequence[str]],
    out_path: str,
    width: int = 80,
    max_lines: int = 24,
    title: str = "",
) -> str:
    """Text samples rendered as a PNG, one panel per label (label -> texts; the first texts
    are shown, wrapped at `width` characters and cut after `max_lines` lines)."""
    labels = list(samples)
    if not labels:
        raise ValueError("plot_samples: nothing to plot")
    panels: dict[str, list[str]] = {}
    for label in labels:
        lines: list[str] = []
        for text in samples[label]:
            for paragraph in text.splitlines() or [""]:
                lines.extend(textwrap.wrap(paragraph, width) or [""])
            lines.append("-" * 8)
        panels[label] = lines if len(lines) <= max_lines else lines[: max_lines - 1] + ["..."]
    columns = min(len(labels), 3)
    rows = math.ceil(len(labels) / columns)
    tallest = max(len(lines) for lines in panels.values())
    # 7 pt monospace: a character is ~0.06 in wide, a line ~0.12 in high
    fig = Figure(figsize=(0.06 * width * columns + 0.3, (0.12 * tallest + 0.5) * rows))
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, (label, lines) in zip(axes, panels.items()):
        ax.text(
            0.0,
            1.0,
            "\n".join(lines),
            family="monospace",
            fontsize=7,
            va="top",
            ha="left",
            transform=ax.transAxes,
            parse_math=False,
        )
        ax.set_title(label, fontsize=10, loc="left")
        ax.axis("off")
    return _save_grid(fig, axes, len(labels), title, out_path)


def logged_values(path: str, key: str) -> list[tuple[int, float]]:
    """(iteration, value) of a key in one run's metrics.jsonl, from any kind of record."""
    records = read_metrics(path)
    points = {r["iter"]: r[key] for kind in records.values() for r in kind if r.get(key) is not None}
    return sorted(points.items())


def plot_logged_key(
    runs: Mapping[str, str],
    key: str,
    out_path: str,
    groups: Mapping[str, str] | None = None,
    title: str = "",
) -> str | None:
    """One logged key over training (e.g. the Bayesian head's `sigma_mean`) for every run that
    logged it (label -> metrics.jsonl), a colour per group; None when no run has the key."""
    groups = groups or {label: label for label in runs}
    curves = {label: logged_values(path, key) for label, path in runs.items()}
    curves = {label: points for label, points in curves.items() if points}
    if not curves:
        return None
    colour = _colours(list(dict.fromkeys(groups[label] for label in curves)))
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    labelled: set[str] = set()
    for label, points in curves.items():
        group = groups[label]
        ax.plot(*zip(*points), color=colour[group], lw=1, label=None if group in labelled else group)
        labelled.add(group)
    ax.set(xlabel="iteration", ylabel=key, title=title or f"{key} over training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_path)
