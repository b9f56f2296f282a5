"""bench.py end to end on a tiny trunk: variants, the augmenter rows and the filter check;
the comparison table (unchunked -> chunked, fp32 -> bf16, the GPT-2 and character rows)."""

import pytest

import bench
from nanoGPT import runtime

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
        + ["--compare=False"]
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


def fake_measure(argv, variant):
    """What a child would report, from the settings it was given: chunking saves 60% of the
    memory at 1.05x the time, bf16 halves the time, the bigger model costs more."""
    cfg = bench.apply_config(bench.BenchConfig(), argv)
    chunked, bf16 = cfg.loss_chunk_size != 0, cfg.dtype == "bfloat16"
    ms = cfg.n_layer * 10.0 * (1.05 if chunked else 1.0) * (0.5 if bf16 else 1.0)
    mem = cfg.n_layer * (40.0 if chunked else 100.0)
    return {
        "variant": variant,
        "model": bench.shape_name(cfg),
        "dtype": cfg.dtype,
        "loss_chunk_size": cfg.loss_chunk_size,
        "ms_per_iter": ms,
        "tokens_per_s": 1000 / ms,
        "peak_mem_mb": mem + 10,
        "step_mem_mb": mem,
    }


@pytest.mark.parametrize("has_bf16", [True, False])
def test_bench_compares_chunked_and_bf16_runs_from_one_run(monkeypatch, capsys, has_bf16):
    calls = []
    monkeypatch.setattr(bench, "run_child", lambda argv, v: calls.append(argv) or fake_measure(argv, v))
    monkeypatch.setattr(runtime, "cpu_has_bf16_matmul", lambda: has_bf16)
    monkeypatch.setattr(bench, "cpu_has_bf16_matmul", lambda: has_bf16)
    results = bench.main(["--variants=baseline,bayes", "--device=cpu"])
    rows = {(r["row"], r["comparison"]): r for r in results if "comparison" in r}
    expected = [(v, "unchunked -> chunked") for v in ("baseline", "bayes")]
    if has_bf16:
        expected += [(v, "fp32 -> bf16") for v in ("baseline", "bayes")] + [("GPT-2 124M", "fp32 -> bf16")]
    # the GPT-2 vocabulary row is the baseline's own (V=50257 already): listed once
    assert list(rows) == [*expected, ("char default", "fp32 -> auto")]
    out = capsys.readouterr().out
    # auto: bf16 for the 16M-weight trunk on a CPU with bf16 units, so it is chunked in bf16
    dtypes = "bfloat16 -> bfloat16" if has_bf16 else "float32 -> float32"
    for variant in ("baseline", "bayes"):  # time x 1.05, peak x 170/410, step x 0.40
        assert f"| {variant} | unchunked -> chunked | 4x256 V=50257, batch 8x128 | {dtypes} |" in out
    assert out.count("| 1.05 | 410 -> 170 | 0.41 | 400 -> 160 | 0.40 |") == 2
    if has_bf16:  # auto picks bf16 for GPT-2 124M, never for the character model
        assert "| GPT-2 124M | fp32 -> bf16 | 12x768 V=50257, batch 4x256 | float32 -> bfloat16 |" in out
        assert rows["GPT-2 124M", "fp32 -> bf16"]["b"]["ms_per_iter"] == pytest.approx(63.0)
    else:
        assert "no fp32 -> bf16 rows" in out and "bfloat16" not in out
    assert "| char default | fp32 -> auto | 4x128 V=65, batch 12x64 | float32 -> float32 | " in out
    # every run once: variants (chunked), unchunked, bf16 (+ GPT-2 124M's two), the char model
    assert len(calls) == 2 + 2 + (4 if has_bf16 else 0) + 1


def test_bench_gpt2_vocabulary_row_when_the_trunk_has_another(monkeypatch, capsys):
    monkeypatch.setattr(bench, "run_child", fake_measure)
    results = bench.main(["--variants=baseline", "--vocab_size=65", "--bf16=off", "--device=cpu"])
    rows = [r["row"] for r in results if "comparison" in r]
    assert rows == ["baseline", "GPT-2 vocabulary", "char default"]
    assert (
        "| GPT-2 vocabulary | unchunked -> chunked | 4x256 V=50257, batch 8x128 |" in capsys.readouterr().out
    )


@pytest.mark.slow  # a child process per run: ~1-2 min on a busy 2-core machine
def test_bench_tiny_mode_prints_every_comparison_row(capsys):
    results = bench.main(["--tiny=True", "--variants=baseline", "--bf16=on", "--device=cpu"])
    rows = [(r["row"], r["comparison"]) for r in results if "comparison" in r]
    assert rows == [
        ("baseline", "unchunked -> chunked"),
        ("baseline", "fp32 -> bf16"),
        ("GPT-2 124M", "fp32 -> bf16"),
        ("char default", "fp32 -> auto"),
    ]
    for r in results:
        for run in (r["a"], r["b"]) if "comparison" in r else (r,):
            assert run["ms_per_iter"] > 0 and run["peak_mem_mb"] > 0 and run["step_mem_mb"] >= 0
    out = capsys.readouterr().out
    assert "| GPT-2 124M | fp32 -> bf16 | 12x32 V=50257, batch 2x16 | float32 -> bfloat16 |" in out
    assert "| baseline | unchunked -> chunked | 4x32 V=50257, batch 2x16 |" in out
