"""nanoGPT/stats.py and the per-window sums it rests on: a planted difference is found, identical
runs differ in nothing, the bootstrap is deterministic, resampled ECE is recomputed from bins,
and per-window sums add up to the evaluation's totals."""

import numpy as np
import pytest
import torch

from nanoGPT.metrics import ECE_BINS, MetricAccumulator, WindowAccumulator, ece_from_bins
from nanoGPT.stats import (
    BETTER,
    NO_DIFFERENCE,
    WORSE,
    WindowTable,
    bootstrap_weights,
    metrics_under,
    paired_differences,
    significantly_best,
    verdict,
)


def window_table(nll_per_token, accuracy, seeds=(1, 2, 3), windows=200, tokens=64, noise=0.3, seed=0, run=0):
    """A table of per-window sums with seed and window noise around the given means; the window
    effect (some text is harder) is shared by every row built with the same `seed`."""
    rng = np.random.default_rng(seed)
    hardness = rng.normal(0, noise, size=windows)  # the same windows for every row
    per_seed = {}
    for s in seeds:
        own = np.random.default_rng([seed, s, int(nll_per_token * 1000), run])
        mean_nll = nll_per_token + hardness + own.normal(0, 0.02, size=windows)
        correct = own.binomial(tokens, accuracy, size=windows).astype(float)
        bins = np.zeros((windows, 3, ECE_BINS))
        bins[:, 0, 6] = tokens  # every token at confidence ~0.43
        bins[:, 1, 6] = tokens * 0.43
        bins[:, 2, 6] = correct
        per_seed[s] = {
            "nll": (mean_nll * tokens).tolist(),
            "correct": correct.tolist(),
            "brier": (np.full(windows, 0.7) * tokens).tolist(),
            "tokens": [float(tokens)] * windows,
            "bins": bins.tolist(),
        }
    return WindowTable.from_runs(per_seed)


def test_verdict_finds_a_planted_difference():
    reference = window_table(3.0, 0.40)
    better = window_table(2.9, 0.45)
    diffs = paired_differences(better, reference, replicates=500)
    assert diffs["nll"].diff == pytest.approx(-0.1, abs=0.01)
    assert diffs["nll"].verdict == BETTER and diffs["nll"].high < 0
    assert diffs["acc"].verdict == BETTER
    assert paired_differences(reference, better, replicates=500)["nll"].verdict == WORSE


def test_identical_runs_show_no_difference():
    reference = window_table(3.0, 0.40)
    same = paired_differences(reference, reference, replicates=300)
    for diff in same.values():
        assert diff.diff == 0.0 and diff.low == 0.0 and diff.high == 0.0 and diff.verdict == NO_DIFFERENCE
    # two rows drawn alike (other seed noise, same windows) are not told apart either
    twin = window_table(3.0, 0.40, run=1)
    assert paired_differences(twin, reference, replicates=300)["nll"].verdict == NO_DIFFERENCE


def test_bootstrap_is_seeded_and_deterministic():
    a, b = window_table(3.0, 0.40), window_table(2.98, 0.41)
    first = paired_differences(a, b, replicates=300, seed=7)
    assert paired_differences(a, b, replicates=300, seed=7) == first
    other = paired_differences(a, b, replicates=300, seed=8)
    assert other["nll"].low != first["nll"].low  # another seed, another resample
    seed_w, window_w = bootstrap_weights(3, 50, 10, seed=1)
    assert seed_w.sum(1).tolist() == [3] * 10 and window_w.sum(1).tolist() == [50] * 10


def test_metrics_under_unit_weights_are_the_pooled_metrics():
    table = window_table(3.0, 0.40)
    pooled = metrics_under(table, np.ones((1, 3)), np.ones((1, 200)))
    assert pooled["nll"][0] == pytest.approx(table.nll.sum() / table.tokens.sum())
    assert pooled["acc"][0] == pytest.approx(table.correct.sum() / table.tokens.sum())
    assert pooled["ece"][0] == pytest.approx(ece_from_bins(torch.tensor(table.bins.sum(axis=(0, 1)))))


def test_verdict_directions():
    assert verdict(-0.2, -0.1, "lower") == BETTER and verdict(-0.2, -0.1, "higher") == WORSE
    assert verdict(0.1, 0.2, "lower") == WORSE and verdict(-0.1, 0.1, "lower") == NO_DIFFERENCE


def test_significantly_best_needs_a_win_over_every_row():
    tables = {
        "baseline": window_table(3.0, 0.40),
        "good": window_table(2.8, 0.47),
        "close": window_table(2.8, 0.4, run=1),
    }
    best = significantly_best(tables, replicates=300)
    assert "nll" not in best  # good and close cannot be told apart
    assert best["acc"] == "good"
    del tables["close"]
    assert significantly_best(tables, replicates=300)["nll"] == "good"
    assert significantly_best({"one": tables["good"]}) == {}


def test_window_sums_add_up_to_the_accumulator():
    torch.manual_seed(0)
    log_probs = torch.randn(6 * 8, 11).log_softmax(-1)
    targets = torch.randint(0, 11, (6 * 8,))
    targets[5] = -1  # padding is in no window
    window = torch.arange(6 * 8) // 8
    totals, windows = MetricAccumulator(), WindowAccumulator()
    for rows in (slice(0, 20), slice(20, 48)):  # a chunk may straddle windows
        totals.update(log_probs[rows], targets[rows])
        windows.update(log_probs[rows], targets[rows], window[rows])
    expected, arrays = totals.compute(), windows.arrays()
    assert len(arrays["nll"]) == 6 and arrays["tokens"][0] == 7 and arrays["tokens"][1:] == [8] * 5
    assert sum(arrays["nll"]) / sum(arrays["tokens"]) == pytest.approx(expected["nll"])
    assert sum(arrays["correct"]) / sum(arrays["tokens"]) == pytest.approx(expected["acc"])
    assert sum(arrays["brier"]) / sum(arrays["tokens"]) == pytest.approx(expected["brier"])
    bins = torch.tensor(arrays["bins"], dtype=torch.float64).sum(0)
    assert torch.allclose(bins, totals.bins) and ece_from_bins(bins) == pytest.approx(expected["ece"])
