"""Can a comparison decide? Paired bootstrap confidence intervals over seeds and windows.

Every run of a comparison is evaluated on the same held-out windows, and keeps per-window sums
(`nanoGPT.metrics.WindowAccumulator`). A row (variant + overrides) has one run per seed, so its
results are a seeds x windows table. Two rows are compared *paired*: seed s of one against seed
s of the other (same data order), window w against window w (same text). One bootstrap
replicate draws seeds with replacement and windows with replacement, the same draw for both
rows, recomputes each metric from the resampled sums (so ECE is recomputed from resampled bins,
not averaged), and takes the difference. The 2.5% and 97.5% quantiles of the differences are
the 95% interval; a difference is detected only when the interval excludes zero.

With few seeds the seed part of the resample is coarse (3 seeds: 10 distinct multisets), which
widens the interval: it is deliberately conservative about seed-to-seed variation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no detectable difference"
# metric -> which direction is better; all recomputable from per-window sums
DIRECTIONS = {"nll": "lower", "acc": "higher", "ece": "lower", "brier": "lower"}


@dataclass(frozen=True)
class WindowTable:
    """A row's per-window sums over its seeds: (S, W) arrays, bins (S, W, 3, n_bins)."""

    seeds: tuple[int, ...]
    nll: np.ndarray
    correct: np.ndarray
    brier: np.ndarray
    tokens: np.ndarray
    bins: np.ndarray

    @classmethod
    def from_runs(cls, per_seed: Mapping[int, Mapping[str, list]]) -> WindowTable:
        """seed -> `WindowAccumulator.arrays()` of that seed's run."""
        seeds = tuple(sorted(per_seed))
        stack = lambda key: np.asarray([per_seed[s][key] for s in seeds], dtype=np.float64)  # noqa: E731
        table = cls(seeds, stack("nll"), stack("correct"), stack("brier"), stack("tokens"), stack("bins"))
        if len({a.shape[:2] for a in (table.nll, table.correct, table.brier, table.tokens, table.bins)}) != 1:
            raise ValueError("per-window arrays of different shapes: not the same windows")
        return table

    def broadcast(self, seeds: Sequence[int]) -> WindowTable:
        """This one-run table as if it were the run of every seed in `seeds`: a fixed model
        (a teacher) compared against a row of several seeds, paired by window only."""
        if len(self.seeds) != 1:
            raise ValueError(f"broadcast needs a table of one run, this one has seeds {self.seeds}")
        repeat = lambda a: np.repeat(a, len(seeds), axis=0)  # noqa: E731
        return WindowTable(
            tuple(seeds), repeat(self.nll), repeat(self.correct), repeat(self.brier), repeat(self.tokens),
            repeat(self.bins),
        )  # fmt: skip

    def subset(self, seeds: Sequence[int]) -> WindowTable:
        rows = [self.seeds.index(s) for s in seeds]
        return WindowTable(
            tuple(seeds),
            self.nll[rows],
            self.correct[rows],
            self.brier[rows],
            self.tokens[rows],
            self.bins[rows],
        )


def metrics_under(table: WindowTable, seed_weights: np.ndarray, window_weights: np.ndarray) -> dict:
    """Each metric of DIRECTIONS under weights (R, S) over seeds and (R, W) over windows (how
    often a replicate drew each), one value per replicate: (R,) arrays."""
    weigh = lambda x: np.einsum("rs,rw,sw->r", seed_weights, window_weights, x)  # noqa: E731
    tokens = weigh(table.tokens)
    S, W = table.tokens.shape
    bins = np.einsum("rs,rw,swk->rk", seed_weights, window_weights, table.bins.reshape(S, W, -1))
    count, confidence, correct = np.split(bins.reshape(len(tokens), 3, -1), 3, axis=1)
    return {
        "nll": weigh(table.nll) / tokens,
        "acc": weigh(table.correct) / tokens,
        "brier": weigh(table.brier) / tokens,
        # ECE = sum_b |correct_b - confidence_b| / N, from the resampled bins
        "ece": np.abs(correct - confidence).sum(axis=(1, 2)) / count.sum(axis=(1, 2)),
    }


def bootstrap_weights(
    num_seeds: int, num_windows: int, replicates: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(R, S) and (R, W) draw counts: each replicate resamples seeds and windows with
    replacement. A fixed numpy generator: the same inputs give the same intervals."""
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, num_seeds, size=(replicates, num_seeds))
    window_draws = rng.integers(0, num_windows, size=(replicates, num_windows))
    counts = lambda draws, n: np.stack([np.bincount(d, minlength=n) for d in draws]).astype(float)  # noqa: E731
    return counts(seed_draws, num_seeds), counts(window_draws, num_windows)


@dataclass(frozen=True)
class Difference:
    """metric(row) - metric(reference): the point estimate, its 95% interval, the verdict."""

    metric: str
    row: float
    reference: float
    diff: float
    low: float
    high: float
    verdict: str


def verdict(low: float, high: float, better: str) -> str:
    """better / worse / no detectable difference, from the interval of row - reference."""
    if low <= 0.0 <= high or not (np.isfinite(low) and np.isfinite(high)):
        return NO_DIFFERENCE
    lower_wins = high < 0.0
    return BETTER if lower_wins == (better == "lower") else WORSE


def paired_differences(
    row: WindowTable, reference: WindowTable, replicates: int = 2000, seed: int = 0
) -> dict[str, Difference]:
    """metric -> Difference of `row` against `reference`, paired on their common seeds and on
    windows (the two must have been evaluated on the same windows)."""
    common = [s for s in row.seeds if s in reference.seeds]
    if not common:
        raise ValueError(f"no common seed: {row.seeds} vs {reference.seeds}")
    row, reference = row.subset(common), reference.subset(common)
    if row.tokens.shape != reference.tokens.shape or not np.array_equal(row.tokens, reference.tokens):
        raise ValueError("the two rows were not evaluated on the same windows")
    S, W = row.tokens.shape
    ones = (np.ones((1, S)), np.ones((1, W)))
    seed_weights, window_weights = bootstrap_weights(S, W, replicates, seed)
    point_row, point_ref = metrics_under(row, *ones), metrics_under(reference, *ones)
    boot_row = metrics_under(row, seed_weights, window_weights)
    boot_ref = metrics_under(reference, seed_weights, window_weights)
    out = {}
    for metric, better in DIRECTIONS.items():
        diffs = boot_row[metric] - boot_ref[metric]
        low, high = np.quantile(diffs, [0.025, 0.975])
        a, b = float(point_row[metric][0]), float(point_ref[metric][0])
        out[metric] = Difference(metric, a, b, a - b, float(low), float(high), verdict(low, high, better))
    return out


def significantly_best(
    tables: Mapping[str, WindowTable], replicates: int = 2000, seed: int = 0
) -> dict[str, str]:
    """metric -> the row that is best on it *and* detectably better than every other row
    (paired bootstrap against each); a metric with no such row is left out."""
    if len(tables) < 2:
        return {}
    ones = lambda t: (np.ones((1, len(t.seeds))), np.ones((1, t.tokens.shape[1])))  # noqa: E731
    points = {name: metrics_under(t, *ones(t)) for name, t in tables.items()}
    best = {}
    for metric, better in DIRECTIONS.items():
        pick = min if better == "lower" else max
        leader = pick(points, key=lambda name: float(points[name][metric][0]))
        if all(
            paired_differences(tables[leader], tables[other], replicates, seed)[metric].verdict == BETTER
            for other in tables
            if other != leader
        ):
            best[metric] = leader
    return best
