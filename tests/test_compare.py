"""compare.py: a tiny comparison resumes after a kill, writes its report, reuses its runs; the table
marks the right best values; the judge scores exactly the generated tokens; plotting."""

import dataclasses
import json
import math
import os

import pytest
import torch

import compare
import nanoGPT.train
import plot_loss
from compare import Column, CompareConfig, best_variants, format_table, judge_nll
from nanoGPT.checkpoint import load_checkpoint
from nanoGPT.config import ModelConfig, apply_config
from nanoGPT.errors import UserError
from nanoGPT.model import GPT
from nanoGPT.plotting import read_metrics
from nanoGPT.train import learning_rate, setup_runtime
from tests.conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_compare(char_data, tmp_path, **overrides) -> CompareConfig:
    train_cfg = tiny_config(char_data, tmp_path, max_iters=20, eval_interval=10, log_interval=5)
    cfg = CompareConfig(**dataclasses.asdict(train_cfg))
    return dataclasses.replace(
        cfg,
        name="tiny",
        variants="baseline,smooth,sigmoid",
        seeds="1,2",
        final_eval_iters=3,
        prompts="ROMEO:|JULIET:",
        num_samples=2,
        sample_tokens=24,
        augment=True,
        teacher="baseline",
        augment_k=4,
        augment_window=16,
        **overrides,
    )


def checkpoint_times(cfg: CompareConfig) -> dict[str, int]:
    return {
        run: os.stat(os.path.join(cfg.out_dir, run, "ckpt.pt")).st_mtime_ns
        for run in sorted(os.listdir(cfg.out_dir))
    }


def test_compare_resumes_reports_then_reuses(char_data, tmp_path, monkeypatch):
    cfg = tiny_compare(char_data, tmp_path)
    report_dir = os.path.join(cfg.log_dir, cfg.name)
    runs = [f"{v}-seed{s}" for s in (1, 2) for v in ("baseline", "smooth", "sigmoid")]

    # the comparison is killed in its fifth run (smooth, seed 2) after that run's checkpoint
    # of iteration 10
    def killed_at_15(train_cfg, it):
        if (train_cfg.variant, train_cfg.seed, it) == ("smooth", 2, 15):
            raise KeyboardInterrupt
        return learning_rate(train_cfg, it)

    monkeypatch.setattr(nanoGPT.train, "learning_rate", killed_at_15)
    with pytest.raises(KeyboardInterrupt):
        compare.compare(cfg)
    monkeypatch.undo()

    # run again: finished runs are reused, the killed one resumes, the rest train
    first = compare.compare(cfg, command="python compare.py --tiny")
    assert first["statuses"] == {
        **{run: "reused" for run in runs[:4]},
        "smooth-seed2": "resumed",
        "sigmoid-seed2": "trained",
    }
    assert sorted(os.listdir(cfg.out_dir)) == sorted(runs)
    resumed_log = read_metrics(os.path.join(report_dir, "smooth-seed2", "metrics.jsonl"))
    assert [e["iter"] for e in resumed_log["eval"]] == [0, 10, 20]

    # the sigmoid runs learnt from the first seed's baseline as the augmenter's teacher
    sigmoid_cfg = load_checkpoint(os.path.join(cfg.out_dir, "sigmoid-seed2", "ckpt.pt"))["config"]
    assert sigmoid_cfg["augment"] is True and sigmoid_cfg["max_iters"] == 20
    assert sigmoid_cfg["teacher"] == f"ckpt:{os.path.join(cfg.out_dir, 'baseline-seed1')}"

    report = open(os.path.join(report_dir, "report.md")).read()
    for variant in ("baseline", "smooth", "sigmoid"):
        assert f"| {variant} | " in report
    assert "python compare.py --tiny" in report and "max_iters = 20" in report
    assert " ± " in report and "**" in report  # two seeds, best values marked
    for png in ("loss.png", "reliability.png", "samples.png"):
        with open(os.path.join(report_dir, png), "rb") as f:
            assert f.read(8) == PNG_MAGIC, png
    samples = open(os.path.join(report_dir, "samples.md")).read()
    assert samples.count("ROMEO:") == 3 * 2 * 2  # variants x seeds x samples per prompt

    results = json.load(open(os.path.join(report_dir, "results.json")))
    assert set(results["runs"]) == {"baseline", "smooth", "sigmoid"}
    run = results["runs"]["sigmoid"]["2"]
    metrics = run["metrics"]
    for key in (
        "nll",
        "ppl",
        "bpb",
        "acc",
        "ece",
        "brier",
        "bce",
        "set_size",
        "distinct_1",
        "distinct_4",
        "self_bleu",
        "sample_ppl",
        "ms_per_iter",
    ):
        assert metrics[key] is not None and math.isfinite(metrics[key]), key
    assert metrics["ppl"] == pytest.approx(math.exp(metrics["nll"]))
    assert sum(run["reliability"]["count"]) == metrics["tokens"]
    # every run is measured on the same held-out windows
    assert {r["metrics"]["tokens"] for seeds in results["runs"].values() for r in seeds.values()} == {
        metrics["tokens"]
    }
    summary = results["summary"]["baseline"]["nll"]
    seed_nlls = [results["runs"]["baseline"][s]["metrics"]["nll"] for s in ("1", "2")]
    assert summary["mean"] == pytest.approx(sum(seed_nlls) / 2) and summary["n"] == 2

    # a third run trains nothing and evaluates nothing: checkpoints and evaluations are reused
    before = checkpoint_times(cfg)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run was trained or evaluated again")

    monkeypatch.setattr(compare, "train", must_not_run)
    monkeypatch.setattr(compare, "evaluate", must_not_run)
    again = compare.compare(cfg)
    assert set(again["statuses"].values()) == {"reused"}
    assert checkpoint_times(cfg) == before
    assert again["summary"] == first["summary"]

    # the same out_dir with another budget is refused, naming the difference
    with pytest.raises(UserError, match="max_iters=20"):
        compare.compare(dataclasses.replace(cfg, max_iters=30))

    # plot_loss.py draws any set of finished runs from their metrics.jsonl
    out = str(tmp_path / "curves.png")
    plot_loss.main([report_dir, f"--out={out}"])
    with open(out, "rb") as f:
        assert f.read(8) == PNG_MAGIC


def summary_of(**columns):
    """variant -> metric -> stats from {metric: {variant: (mean, std)}}."""
    summary: dict = {}
    for metric, values in columns.items():
        for variant, (mean, std) in values.items():
            summary.setdefault(variant, {})[metric] = {"mean": mean, "std": std, "n": 2}
    return summary


def test_best_values_respect_each_columns_direction():
    columns = [
        Column("nll", "NLL", "lower", ""),
        Column("acc", "acc", "higher", ""),
        Column("mutual_information", "MI", "", ""),
    ]
    summary = summary_of(
        nll={"baseline": (2.5, 0.1), "smooth": (2.25, 0.05), "bayes": (2.75, 0.2)},
        acc={"baseline": (0.4, 0.01), "smooth": (0.3, 0.02), "bayes": (0.4, 0.03)},
        mutual_information={"bayes": (0.5, 0.01)},
        distinct_1={"baseline": (1.0, 0.0), "smooth": (1.0, 0.0), "bayes": (1.0, 0.0)},
    )
    columns.append(Column("distinct_1", "dist-1", "higher", ""))
    # ties all win, unless every variant ties: then no cell is marked
    assert best_variants(summary, columns) == {"nll": {"smooth"}, "acc": {"baseline", "bayes"}}
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in format_table(summary, columns).splitlines()[2:]
    }
    assert rows["smooth"] == ["**2.25 ± 0.05**", "0.3 ± 0.02", "–", "1 ± 0"]
    assert rows["baseline"] == ["2.5 ± 0.1", "**0.4 ± 0.01**", "–", "1 ± 0"]
    assert rows["bayes"] == ["2.75 ± 0.2", "**0.4 ± 0.03**", "0.5 ± 0.01", "1 ± 0"]  # MI: no best
    header = format_table(summary, columns).splitlines()[0]
    assert "NLL ↓" in header and "acc ↑" in header


def test_judge_scores_each_generated_token_from_its_context():
    torch.manual_seed(0)
    judge = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11)).eval()
    rt = setup_runtime(tiny_config("", __import__("pathlib").Path("/tmp")))

    def reference(sequence, first):  # one forward per token, over the block before it
        total = 0.0
        for j in range(first, len(sequence)):
            context = torch.tensor([sequence[max(0, j - 8) : j]])
            log_probs = judge.variant.log_probs(judge.hidden_states(context))[0, -1]
            total -= log_probs[sequence[j]].item()
        return total

    prompt = [1, 2, 3]
    for generated in ([4, 5, 6, 7], [4, 5, 6, 7, 8, 9, 10, 1, 2, 3, 4, 5]):  # fits, slides
        nll, count = judge_nll(judge, prompt, generated, rt)
        assert count == len(generated)
        assert nll == pytest.approx(reference(prompt + generated, len(prompt)), rel=1e-5)
    # a prompt longer than the block: only the windows after it
    long_prompt = list(range(1, 11))
    nll, count = judge_nll(judge, long_prompt, [3, 4], rt)
    assert count == 2 and nll == pytest.approx(reference(long_prompt + [3, 4], 10), rel=1e-5)


def test_read_metrics_keeps_the_last_record_of_an_iteration(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"iter": 0, "kind": "eval", "val/nll": 4.0}\n'
        '{"iter": 10, "kind": "train", "loss": 3.0}\n'
        '{"iter": 10, "kind": "tr\n'  # killed mid-write, then resumed
        '{"iter": 10, "kind": "train", "loss": 2.5}\n'
        '{"iter": 5, "kind": "train", "loss": 3.5}\n'
    )
    records = read_metrics(str(path))
    assert [(r["iter"], r["loss"]) for r in records["train"]] == [(5, 3.5), (10, 2.5)]
    assert [r["iter"] for r in records["eval"]] == [0]


@pytest.mark.parametrize("config", ["config/compare_shakespeare.py", "config/compare_wikitext.py"])
def test_config_files_load(config):
    cfg = apply_config(CompareConfig(), [os.path.join(REPO, config)])
    assert set(compare.parse_variants(cfg.variants)) == set(compare.VARIANTS)
    assert cfg.max_iters > 0 and cfg.num_samples >= 2 and len(cfg.prompts.split("|")) >= 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--variants=baseline,nope"], "unknown variant 'nope'"),
        (["--seeds=1,x"], "seeds must be comma-separated integers"),
        (["--n_layers=2"], "did you mean n_layer"),
    ],
)
def test_cli_errors_are_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--device=cpu", "--data_dir=/no/such/dir", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0


def test_missing_data_is_prepared_by_its_script(char_data, tmp_path, monkeypatch):
    folder = tmp_path / "plays"
    folder.mkdir()
    (folder / "prepare.py").write_text(
        "import os, shutil\n"
        "def prepare():\n"
        "    for name in ('train.bin', 'val.bin', 'meta.pkl'):\n"
        f"        shutil.copy(os.path.join({char_data!r}, name), {str(folder)!r})\n"
    )
    monkeypatch.setattr(compare, "resolve_data_dir", lambda dataset, data_dir="": str(folder))
    assert compare.ensure_data(CompareConfig(dataset="plays")) == str(folder)
    assert {"train.bin", "val.bin", "meta.pkl"} <= set(os.listdir(folder))
