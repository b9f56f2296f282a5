"""The comparison's probe table: what each row's trunk knows beyond its next-token predictive,
on the embedded Shakespeare tasks (nanoGPT/probe/), beside a randomly initialised trunk of the
same architecture (the floor) and chance.

Every run's final evaluation adds the probes of its checkpoint (`probe_examples` items per split
and task, the features of each text computed once); the floor is probed once per report."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from nanoGPT.compare.config import CompareConfig
from nanoGPT.compare.plan import Run
from nanoGPT.compare.report import Column, format_table, summarize
from nanoGPT.model import GPT
from nanoGPT.probe.evaluate import chance_levels, random_trunk, report_probes
from nanoGPT.probe.features import GPTFeatures
from nanoGPT.runtime import Runtime, setup_runtime
from nanoGPT.tokenizer import Tokenizer, load_tokenizer

FLOOR = "random trunk (floor)"
CHANCE = "chance"
PROBE_COLUMNS = [
    Column("probe_genre", "genre logreg", "higher",
           "which kind of play (3 classes; tested on plays it was not trained on): logistic regression"),
    Column("probe_genre_mlp", "genre MLP", "higher", "the same, a one-hidden-layer MLP"),
    Column("probe_next_line", "next line probe", "higher",
           "which of 4 lines follows 2 lines (held-out text): a linear scorer of the last hidden state"),
    Column("zero_shot_sum", "next line 0-shot", "higher",
           "the same items untrained: the choice of highest summed log-probability, the row's predictive"),
    Column("zero_shot_mean", "0-shot mean", "higher", "the same, mean log-probability per token"),
    Column("retrieval_r1", "continuation R@1", "higher",
           "which passage continues a passage (held-out text): cosine of centred mean-pooled states"),
    Column("retrieval_mrr", "continuation MRR", "higher", "the same, mean reciprocal rank"),
]  # fmt: skip


def checkpoint_probes(model: GPT, tokenizer: Tokenizer, rt: Runtime, examples: int) -> dict[str, float]:
    """The reported probe metrics of a model (nothing when examples is 0)."""
    if not examples:
        return {}
    with torch.random.fork_rng():  # the probes seed their fits: leave the caller's stream as it was
        return report_probes(GPTFeatures(model, tokenizer, rt.device, rt.autocast), examples)


def floor_probes(run: Run, examples: int) -> dict[str, float]:
    """The probes of `run`'s architecture, freshly initialised (seeded), on its tokenizer."""
    rt = setup_runtime(run.cfg)
    tokenizer = load_tokenizer(run.cfg.data_dir)
    config = dataclasses.replace(run.cfg.model_args(), vocab_size=tokenizer.vocab_size)
    return checkpoint_probes(random_trunk(config).to(rt.device), tokenizer, rt, examples)


def probe_section(cfg: CompareConfig, run: Run, shown: Mapping[str, Mapping]) -> tuple[str, dict[str, float]]:
    """The report's probe section (rows of `shown`, the floor of `run`'s architecture, chance)
    and the floor's numbers; ("", {}) when probe_examples is 0."""
    if not cfg.probe_examples:
        return "", {}
    floor = floor_probes(run, cfg.probe_examples)
    rows = {label: stats for label, stats in shown.items() if any(c.key in stats for c in PROBE_COLUMNS)}
    rows |= summarize({FLOOR: {0: floor}, CHANCE: {0: chance_levels(cfg.probe_examples)}})
    legend = "\n".join(f"- **{c.header}**: {c.about}" for c in PROBE_COLUMNS)
    text = (
        f"\n\n## Probes\n\nWhat the trunk's hidden states know beyond the next token, on the embedded plays "
        f"({cfg.probe_examples} items per split and task; probe train and test never share text: genre split "
        f"by play, next line and continuation by position, nanoGPT/probe/plays.py). The floor: the first "
        f"row's architecture, untrained.\n\n{format_table(rows, {}, PROBE_COLUMNS)}\n\n{legend}"
    )
    return text, floor
