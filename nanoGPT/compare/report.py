"""The comparison's tables: mean ± std per row over seeds, paired verdicts against the reference
and each row's control, a value in bold only when it is significantly best."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nanoGPT.stats import DIRECTIONS, Difference, WindowTable, paired_differences

# the control an alternative should be read against: it differs from the reference in the
# head's parametrisation the way the alternative does (an untied head; a bias on the logits)
CONTROLS = {"bayes": "baseline_untied", "bayes_sigmoid": "baseline_untied", "sigmoid": "baseline_bias"}


@dataclass(frozen=True)
class Column:
    key: str  # the metric's name in results.json
    header: str
    better: str  # "lower", "higher", or "" (no best value: a description, not a score)
    about: str


COLUMNS = [
    Column("nll", "NLL", "lower", "held-out negative log-likelihood, nats/token"),
    Column("ppl", "ppl", "lower", "held-out perplexity, exp(NLL)"),
    Column("bpb", "bits/byte", "lower", "held-out bits per UTF-8 byte of text"),
    Column("acc", "acc", "higher", "top-1 next-token accuracy"),
    Column("ece", "ECE", "lower", "expected calibration error, 15 bins of top-1 confidence"),
    Column("brier", "Brier", "lower", "multi-class Brier score"),
    Column("mutual_information", "MI", "", "Bayesian heads: mutual information (epistemic), nats/token"),
    Column("shifted_mutual_information", "MI shifted", "", "Bayesian heads: MI on the shifted text"),
    Column("shifted_nll", "NLL shifted", "", "NLL on the shifted text (nanoGPT/ood.py)"),
    Column("ood_auroc_max_prob", "OOD AUROC maxp", "", "AUROC, held-out vs shifted windows, by 1 - max prob"),
    Column("ood_auroc_entropy", "OOD AUROC ent", "", "AUROC of held-out vs shifted windows by entropy"),
    Column("ood_auroc_mutual_information", "OOD AUROC MI", "", "the same by mutual information"),
    Column("ood_auroc_set_size", "OOD AUROC set", "", "the same by the sigmoid set size"),
    Column("bce", "BCE", "lower", "sigmoid heads: BCE against the one-hot truth, summed over the vocabulary"),
    Column("set_size", "set size", "", "sigmoid heads: mean |{v: sigma(z_v) > 0.5}|"),
    Column("set_has_true", "set has true", "", "sigmoid heads: how often that set holds the truth"),
    Column("distinct_1", "dist-1", "higher", "samples: distinct unigrams / all (words)"),
    Column("distinct_2", "dist-2", "higher", "samples: distinct bigrams / all (words)"),
    Column("self_bleu", "self-BLEU", "lower", "samples: BLEU-4 of each against the others (words)"),
    Column("sample_ppl", "judge ppl", "lower", "samples: perplexity the judge (teacher) assigns them"),
    Column("ms_per_iter", "ms/iter", "lower", "training speed: median ms per iteration"),
    Column("infer_ms_per_token", "ms/token", "lower", "sampling speed: ms per token, one sequence, KV cache"),
]  # fmt: skip
# ppl and bpb are monotone in NLL: significantly best in NLL is significantly best in them
SAME_TEST = {"ppl": "nll", "bpb": "nll"}


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def summarize(
    per_seed: Mapping[str, Mapping[int, Mapping[str, float]]],
) -> dict[str, dict[str, dict[str, float]]]:
    """row -> seed -> metrics  =>  row -> metric -> {mean, std, n} over the seeds
    (std: sample standard deviation, 0 for one seed; non-finite values are left out)."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for row, seeds in per_seed.items():
        names = dict.fromkeys(k for metrics in seeds.values() for k in metrics)
        summary[row] = {}
        for name in names:
            values = [m[name] for m in seeds.values() if finite(m.get(name))]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                summary[row][name] = {"mean": statistics.fmean(values), "std": std, "n": len(values)}
    return summary


def format_cell(stats: Mapping[str, float] | None) -> str:
    if stats is None:
        return "–"
    text = f"{stats['mean']:.4g}"
    return f"{text} ± {stats['std']:.2g}" if stats["n"] > 1 else text


def shown_columns(
    summary: Mapping[str, Mapping[str, Mapping[str, float]]], columns: Sequence[Column] = COLUMNS
) -> list[Column]:
    """The columns that at least one row has a value for."""
    return [c for c in columns if any(c.key in s for s in summary.values())]


def format_table(
    summary: Mapping[str, Mapping[str, Mapping[str, float]]],
    best: Mapping[str, str],
    columns: Sequence[Column] = COLUMNS,
) -> str:
    """One markdown table: a row per row label, a column per metric any row has; a cell in
    bold when `best` (metric -> row, from `stats.significantly_best`) names it; ↓ lower is
    better, ↑ higher is better."""
    shown = shown_columns(summary, columns)
    arrow = {"lower": " ↓", "higher": " ↑", "": ""}
    lines = [
        "| row | " + " | ".join(c.header + arrow[c.better] for c in shown) + " |",
        "|---|" + "---:|" * len(shown),
    ]
    for label, stats in summary.items():
        cells = []
        for column in shown:
            cell = format_cell(stats.get(column.key))
            winner = best.get(SAME_TEST.get(column.key, column.key))
            cells.append(f"**{cell}**" if winner == label and cell != "–" else cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def references_of(label: str, variant: str, labels: Sequence[str]) -> list[str]:
    """What a row is compared with: the reference (first row), its control when the
    comparison has it, and for X+aug the row X (the augmenter's own effect)."""
    wanted = [labels[0], CONTROLS.get(variant, "")]
    if label.endswith("+aug"):
        wanted.append(label[: -len("+aug")])
    return [w for w in dict.fromkeys(wanted) if w in labels and w != label]


def verdicts(
    tables: Mapping[str, WindowTable],
    variants: Mapping[str, str],
    replicates: int,
    seed: int,
) -> dict[str, dict[str, dict[str, Difference]]]:
    """row -> compared-with row -> metric -> Difference (paired bootstrap)."""
    labels = list(tables)
    return {
        label: {
            other: paired_differences(tables[label], tables[other], replicates, seed)
            for other in references_of(label, variants[label], labels)
        }
        for label in labels[1:]
    }


def format_difference(diff: Difference) -> str:
    mark = {"better": "better", "worse": "worse"}.get(diff.verdict, "no detectable difference")
    return f"{diff.diff:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}] {mark}"


def format_verdicts(results: Mapping[str, Mapping[str, Mapping[str, Difference]]]) -> str:
    """One line per (row, compared-with): the difference row - other with its 95% interval
    and verdict, for NLL, accuracy and ECE (and Brier)."""
    metrics = list(DIRECTIONS)
    lines = [
        "| row | against | " + " | ".join(f"Δ {m}" for m in metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for label, against in results.items():
        for other, diffs in against.items():
            cells = " | ".join(format_difference(diffs[m]) for m in metrics)
            lines.append(f"| {label} | {other} | {cells} |")
    return "\n".join(lines)
