"""bench.py end to end on a tiny trunk: variants, the augmenter rows and the filter check."""

import pytest

import bench

TINY = [
    "--n_layer=1",
    "--n_head=2",
    "--n_embd=32",
    "--block_size=16",
    "--batch_size=2",
    "--iters=1",
    "--warmup=1",
]


@pytest.mark.slow  # a child process per row: ~45 s
def test_bench_reports_variants_and_the_augmenter_against_the_baseline(capsys):
    results = bench.main(
        [*TINY, "--variants=baseline,bayes", "--augmenter=True", "--augment_k=5", "--augment_window=8"]
    )
    rows = {r["variant"]: r for r in results if "variant" in r}
    assert list(rows) == [
        "baseline",
        "bayes",
        "sigmoid+aug online, every position",
        "sigmoid+aug online, one position",
        "sigmoid+aug cache",
    ]
    for row in rows.values():
        assert row["ms_per_iter"] > 0 and row["tokens_per_s"] > 0 and row["peak_mem_mb"] > 0
    speed = results[-1]["perplexity_filter"]
    assert speed["candidates"] == 2 * 5 and speed["same_kept"] and speed["max_rel_diff"] < 1e-4
    table = capsys.readouterr().out
    assert "| baseline |" in table and "| 1.00 | 1.00 |" in table and "perplexity filter" in table


def test_bench_takes_the_median_of_interleaved_rounds(monkeypatch):
    times = iter([30.0, 10.0, 20.0, 5.0, 7.0, 6.0])
    calls = []

    def fake_child(argv, variant):
        calls.append(variant)
        return {"variant": variant, "ms_per_iter": next(times)}

    monkeypatch.setattr(bench, "run_child", fake_child)
    medians = bench.measure_all([("baseline", []), ("bayes", [])], [], repeats=3)
    assert calls == ["baseline", "bayes"] * 3  # rounds interleave the runs
    assert [m["ms_per_iter"] for m in medians] == [20.0, 6.0]  # baseline 30,20,7; bayes 10,5,6
