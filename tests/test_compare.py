"""compare.py / nanoGPT.compare: a tiny comparison resumes after a kill, writes its report, reuses
its runs; rows and seeds parse; test is the final split when there is one; a cached augmenter run
is never taken for the online one; the table bolds only a significantly best value; the judge
scores exactly the generated tokens; tasks run in dependency order."""

import dataclasses
import json
import math
import operator
import os

import pytest
import torch

import compare
import nanoGPT.compare.document
import nanoGPT.compare.final_eval
import nanoGPT.compare.runs
import nanoGPT.train
import plot_loss
from nanoGPT.checkpoint import load_checkpoint
from nanoGPT.compare import CompareConfig
from nanoGPT.compare.final_eval import judge_nll
from nanoGPT.compare.pipeline import build_tasks, eval_settings
from nanoGPT.compare.plan import final_split, parse_rows, plan_runs, selection_split, teacher_run
from nanoGPT.compare.report import Column, format_table
from nanoGPT.compare.runs import check_same_run, ensure_data
from nanoGPT.compare.schedule import Task, run_tasks
from nanoGPT.compare.trunks import final_train_loss, inference_ms_per_token, trunk_section
from nanoGPT.config import ModelConfig, apply_config
from nanoGPT.errors import UserError
from nanoGPT.model import GPT
from nanoGPT.plotting import read_metrics
from nanoGPT.prepare import shakespeare_splits, write_text_dataset
from nanoGPT.runtime import describe_machine
from nanoGPT.tokenizer import CharTokenizer
from nanoGPT.train import learning_rate, setup_runtime
from nanoGPT.variants import VARIANTS
from tests.conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> str:
    """A slice of the plays, character level, with train, val and test splits."""
    out_dir = str(tmp_path_factory.mktemp("small_char"))
    text, splits = shakespeare_splits()
    parts = {"train": splits["train"][:60_000], "val": splits["val"][:8_000], "test": splits["val"][-8_000:]}
    write_text_dataset(out_dir, CharTokenizer.from_text(text), parts)
    return out_dir


def tiny_compare(data_dir, tmp_path, **overrides) -> CompareConfig:
    train_cfg = tiny_config(data_dir, tmp_path, max_iters=20, eval_interval=10, log_interval=5)
    cfg = CompareConfig(**dataclasses.asdict(train_cfg))
    return dataclasses.replace(
        cfg,
        name="tiny",
        rows="baseline,smooth,sigmoid+aug",
        seeds="1,2",
        teacher="train",
        teacher_overrides="max_iters=30;n_embd=48",
        teacher_dir=str(tmp_path / "teachers"),
        train_fraction=0.5,
        final_eval_iters=3,
        bootstrap_replicates=200,
        prompts="ROMEO:|JULIET:",
        num_samples=2,
        sample_tokens=24,
        augment_k=4,
        augment_filter="prob",
        augment_positions="all",
        augment_source="cache",
        **overrides,
    )


def checkpoint_times(cfg: CompareConfig) -> dict[str, int]:
    return {
        run: os.stat(os.path.join(cfg.out_dir, run, "ckpt.pt")).st_mtime_ns
        for run in sorted(os.listdir(cfg.out_dir))
    }


@pytest.mark.slow
def test_compare_resumes_reports_then_reuses(small_data, tmp_path, monkeypatch):
    cfg = tiny_compare(small_data, tmp_path)
    report_dir = os.path.join(cfg.log_dir, cfg.name)
    runs = [f"{row}-seed{s}" for s in (1, 2) for row in ("baseline", "smooth", "sigmoid+aug")]

    # killed in smooth seed 2 (the last run to train) after its checkpoint of iteration 10
    def killed_at_15(train_cfg, it):
        if (train_cfg.variant, train_cfg.seed, it) == ("smooth", 2, 15):
            raise KeyboardInterrupt
        return learning_rate(train_cfg, it)

    monkeypatch.setattr(nanoGPT.train, "learning_rate", killed_at_15)
    with pytest.raises(KeyboardInterrupt):
        compare.compare(cfg)
    monkeypatch.undo()

    first = compare.compare(cfg, command="python compare.py --tiny")
    teacher = teacher_run(cfg, small_data)
    assert first["statuses"] == {
        teacher.name: "reused",
        **{r: "reused" for r in runs},
        "smooth-seed2": "resumed",
    }
    assert sorted(os.listdir(cfg.out_dir)) == sorted(runs)
    resumed_log = read_metrics(os.path.join(report_dir, "smooth-seed2", "metrics.jsonl"))
    assert [e["iter"] for e in resumed_log["eval"]] == [0, 10, 20]

    # the +aug runs learnt from the teacher's cached candidates
    aug_cfg = load_checkpoint(os.path.join(cfg.out_dir, "sigmoid+aug-seed2", "ckpt.pt"))["config"]
    assert aug_cfg["augment"] is True and aug_cfg["augment_source"] == "cache"
    assert aug_cfg["teacher"] == f"ckpt:{teacher.cfg.out_dir}" and aug_cfg["train_fraction"] == 0.5
    assert load_checkpoint(os.path.join(teacher.cfg.out_dir, "ckpt.pt"))["config"]["n_embd"] == 48

    report = open(os.path.join(report_dir, "report.md")).read()
    for row in ("baseline", "smooth", "sigmoid+aug", "teacher (not a contestant)"):
        assert f"| {row} | " in report
    assert "python compare.py --tiny" in report and "max_iters = 20" in report
    assert (
        "**test**" in report and "Teacher vs students" in report and "| sigmoid+aug | sigmoid |" not in report
    )
    assert "cache " in report and " ± " in report
    for png in ("loss.png", "reliability.png", "samples.png"):
        with open(os.path.join(report_dir, png), "rb") as f:
            assert f.read(8) == PNG_MAGIC, png
    samples = open(os.path.join(report_dir, "samples.md")).read()
    assert samples.count("ROMEO:") == 3 * 2 * 2  # rows x seeds x samples per prompt

    results = json.load(open(os.path.join(report_dir, "results.json")))
    run = results["runs"]["sigmoid+aug"]["2"]
    assert run["split"] == "test" and run["checkpoint"] == "best"
    for key in ("nll", "ppl", "bpb", "acc", "ece", "brier", "bce", "distinct_1", "sample_ppl", "ms_per_iter"):
        assert math.isfinite(run["metrics"][key]), key
    assert sum(run["reliability"]["count"]) == run["metrics"]["tokens"]
    # the shifted-text evaluation (nanoGPT/ood.py) is part of every run's final evaluation
    for key in ("ood_auroc_entropy", "ood_auroc_max_prob", "ood_auroc_set_size", "shifted_nll"):
        assert 0 <= run["metrics"][key] <= (1 if key.startswith("ood") else 100), key
    assert "OOD AUROC ent" in report
    verdict = results["verdicts"]["smooth"]["baseline"]["nll"]
    assert (
        verdict["verdict"] in ("better", "worse", "no detectable difference")
        and verdict["low"] <= verdict["high"]
    )
    assert results["teacher_gap"]["reference"] == pytest.approx(results["summary"]["baseline"]["nll"]["mean"])

    # a third invocation trains nothing and evaluates nothing
    before = checkpoint_times(cfg)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run was trained or evaluated again")

    monkeypatch.setattr(nanoGPT.compare.runs, "train", must_not_run)
    monkeypatch.setattr(nanoGPT.compare.final_eval, "measure", must_not_run)
    again = compare.compare(cfg)
    assert set(again["statuses"].values()) == {"reused"} and checkpoint_times(cfg) == before
    assert again["summary"] == first["summary"]

    # the same out_dir with another budget is refused, naming the difference
    with pytest.raises(UserError, match="max_iters=20"):
        compare.compare(dataclasses.replace(cfg, max_iters=30))

    out = str(tmp_path / "curves.png")
    plot_loss.main([report_dir, f"--out={out}"])
    with open(out, "rb") as f:
        assert f.read(8) == PNG_MAGIC


def test_rows_parse_variants_augmenter_and_overrides():
    rows, skipped = parse_rows("baseline, smooth(label_smoothing=0.1;dropout=0.1),sigmoid+aug,nope,sigmoid")
    assert [(r.label, r.variant, r.augment) for r in rows] == [
        ("baseline", "baseline", False),
        ("smooth(label_smoothing=0.1;dropout=0.1)", "smooth", False),
        ("sigmoid+aug", "sigmoid", True),
        ("sigmoid", "sigmoid", False),
    ]
    assert dict(rows[1].overrides) == {"label_smoothing": 0.1, "dropout": 0.1} and skipped == ["nope"]
    assert "(" not in rows[1].slug and rows[2].slug == "sigmoid+aug"
    if "distill" in VARIANTS:  # trains on the teacher's probabilities: the augmenter always
        assert parse_rows("baseline,distill")[0][1].augment
    with pytest.raises(UserError, match="reference"):
        parse_rows("nope,baseline")
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_rows("baseline,smooth(label_smooth=0.1)")


def test_final_split_is_test_when_the_data_has_one(small_data, char_data, tmp_path):
    assert (final_split(small_data), selection_split(small_data)) == ("test", "val")
    assert (final_split(char_data), selection_split(char_data)) == ("val", "val")
    cfg = tiny_compare(small_data, tmp_path)
    rows, _ = parse_rows(cfg.rows)
    runs = plan_runs(cfg, small_data, rows, teacher_run(cfg, small_data))
    assert {r.cfg.eval_split for r in runs} == {"val"}  # training picks best.pt on val, never test


def test_cached_and_online_runs_are_not_confused(small_data, tmp_path):
    cfg = tiny_compare(small_data, tmp_path)
    rows, _ = parse_rows("baseline,sigmoid+aug")
    teacher = teacher_run(cfg, small_data)
    cached = next(r for r in plan_runs(cfg, small_data, rows, teacher) if r.cfg.augment)
    online_cfg = dataclasses.replace(cfg, augment_source="online")
    online = next(r for r in plan_runs(online_cfg, small_data, rows, teacher) if r.cfg.augment)
    assert (
        cached.cfg.augment_cache and cached.cfg.teacher == online.cfg.teacher == f"ckpt:{teacher.cfg.out_dir}"
    )
    saved_online, saved_cached = dataclasses.asdict(online.cfg), dataclasses.asdict(cached.cfg)
    with pytest.raises(UserError, match="augment_(source|cache)="):
        check_same_run(saved_online, cached.cfg, "ckpt.pt")
    with pytest.raises(UserError, match="augment_(source|cache)="):
        check_same_run(saved_cached, online.cfg, "ckpt.pt")
    check_same_run(saved_cached, cached.cfg, "ckpt.pt")  # the same run is reused
    check_same_run({**saved_online, "augment_cache": "other"}, online.cfg, "ckpt.pt")  # online reads no cache
    other_cache = {**saved_cached, "augment_cache": "other"}
    with pytest.raises(UserError, match="augment_cache='other'"):
        check_same_run(other_cache, cached.cfg, "ckpt.pt")
    # a cache is named after the teacher and the candidate settings: another k, another cache
    more = next(
        r
        for r in plan_runs(dataclasses.replace(cfg, augment_k=8), small_data, rows, teacher)
        if r.cfg.augment
    )
    assert more.cfg.augment_cache != cached.cfg.augment_cache


def test_teacher_is_kept_by_data_and_settings(small_data, tmp_path):
    cfg = tiny_compare(small_data, tmp_path)
    teacher = teacher_run(cfg, small_data)
    assert teacher.cfg.train_fraction == 1.0 and teacher.cfg.n_embd == 48 and teacher.cfg.max_iters == 30
    assert teacher.cfg.out_dir.startswith(cfg.teacher_dir) and os.path.basename(small_data) in teacher.name
    assert teacher_run(dataclasses.replace(cfg, name="other", seeds="3"), small_data).name == teacher.name
    assert (
        teacher_run(dataclasses.replace(cfg, teacher_overrides="max_iters=31"), small_data).name
        != teacher.name
    )
    # a key at its default does not count: a key added to TrainConfig later keeps the teacher
    at_default = dataclasses.replace(cfg, teacher_overrides=cfg.teacher_overrides + ";beta1=0.9")
    assert teacher_run(at_default, small_data).name == teacher.name
    assert teacher_run(dataclasses.replace(cfg, teacher="gpt2"), small_data) is None


def test_bold_marks_only_the_significantly_best():
    columns = [
        Column("nll", "NLL", "lower", ""),
        Column("ppl", "ppl", "lower", ""),
        Column("acc", "acc", "higher", ""),
    ]
    stats = lambda mean: {"mean": mean, "std": 0.1, "n": 3}  # noqa: E731
    summary = {
        "baseline": {"nll": stats(2.5), "ppl": stats(12.2), "acc": stats(0.4)},
        "smooth": {"nll": stats(2.25), "ppl": stats(9.5), "acc": stats(0.41)},
    }
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in format_table(summary, {"nll": "smooth"}, columns).splitlines()[2:]
    }
    # nll decides ppl too; acc has no significantly best row, so nothing is bold there
    assert rows["smooth"] == ["**2.25 ± 0.1**", "**9.5 ± 0.1**", "0.41 ± 0.1"]
    assert rows["baseline"] == ["2.5 ± 0.1", "12.2 ± 0.1", "0.4 ± 0.1"]
    assert "NLL ↓" in format_table(summary, {}, columns).splitlines()[0]


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
    long_prompt = list(range(1, 11))  # longer than the block: only the windows after it
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


def test_tasks_run_after_what_they_need():
    tasks = [Task("a", operator.add, (1, 2)), Task("b", operator.mul, (3, 4), after=("a",))]
    assert run_tasks(tasks) == {"a": 3, "b": 12}
    with pytest.raises(ValueError, match="not listed before"):
        run_tasks(list(reversed(tasks)))


def test_only_runs_that_read_the_teacher_wait_for_it(small_data, tmp_path):
    """Runs without the augmenter train beside the teacher; +aug runs wait for it and their cache;
    every evaluation waits for the teacher, which judges the samples."""
    cfg = tiny_compare(small_data, tmp_path)
    rows, _ = parse_rows("baseline,sigmoid+aug")
    teacher = teacher_run(cfg, small_data)
    runs = plan_runs(cfg, small_data, rows, teacher)
    tasks = {task.key: task for task in build_tasks(teacher, runs, eval_settings(cfg))}
    teacher_key = f"train:{teacher.name}"
    for run in runs:
        after = tasks[f"train:{run.name}"].after
        if run.cfg.augment:
            assert after == (teacher_key, f"cache:{run.cfg.augment_cache}")
        else:
            assert after == ()
        assert teacher_key in tasks[f"eval:{run.name}"].after
    assert next(iter(tasks)) == teacher_key  # the longest task starts first


@pytest.mark.slow
def test_tasks_run_in_worker_processes():
    tasks = [Task(str(i), operator.mul, (i, i), after=(str(i - 1),) if i else ()) for i in range(4)]
    assert run_tasks(tasks, jobs=2) == {str(i): i * i for i in range(4)}


@pytest.mark.parametrize(
    "config",
    [
        "config/compare_shakespeare.py",
        "config/compare_shakespeare_char.py",
        "config/compare_wikitext.py",
        "config/compare_archs_shakespeare_char.py",
    ],
)
def test_config_files_load(config):
    cfg = apply_config(CompareConfig(), [os.path.join(REPO, config)])
    rows, _ = parse_rows(cfg.rows)
    assert rows[0].variant == "baseline" and len(rows) >= 2
    assert cfg.max_iters > 0 and cfg.num_samples >= 2 and len(cfg.prompts.split("|")) >= 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rows=nope,baseline"], "the first row ('nope') is the reference"),
        (["--rows=baseline,sigmoid+"], "must look like VARIANT"),
        (["--seeds=1,x"], "seeds must be comma-separated integers"),
        (["--n_layers=2"], "did you mean n_layer"),
    ],
)
def test_cli_errors_are_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--device=cpu", "--data_dir=/no/such/dir", "--teacher=gpt2", *args])
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
    monkeypatch.setattr(nanoGPT.compare.runs, "resolve_data_dir", lambda dataset, data_dir="": str(folder))
    assert ensure_data(CompareConfig(dataset="plays")) == str(folder)
    assert {"train.bin", "val.bin", "meta.pkl"} <= set(os.listdir(folder))


def test_trunks_compare_in_one_report_with_their_costs(small_data, tmp_path, monkeypatch):
    """Rows that vary the trunk (GPT-2, arch=conv, progressive diverging) train on the one
    budget; the report adds their trunk table, inference ms/token and one loss plot of all."""
    cfg = dataclasses.replace(
        tiny_compare(small_data, tmp_path, jobs=1),
        rows="baseline,baseline(arch=conv;n_layer=3),baseline(progressive_group=2)",
        seeds="1",
        teacher="",  # no teacher: the reference row judges the samples
        max_iters=12,
        eval_interval=6,
        log_interval=3,
        sample_tokens=8,
    )
    plotted = {}
    real_plot = nanoGPT.compare.document.plot_loss_curves

    def spy(logs, out_path, groups, title):
        plotted.update(groups)
        return real_plot(logs, out_path, groups=groups, title=title)

    monkeypatch.setattr(nanoGPT.compare.document, "plot_loss_curves", spy)
    results = compare.compare(cfg)
    labels = ["baseline", "baseline(arch=conv;n_layer=3)", "baseline(progressive_group=2)"]
    assert sorted(set(plotted.values())) == sorted(labels)  # every row's curves on one plot
    assert (
        results["trunks"][labels[1]]["arch"] == "conv"
        and results["trunks"][labels[2]]["progressive_group"] == 2
    )
    metrics = {label: results["runs"][label]["1"]["metrics"] for label in labels}
    for label, m in metrics.items():
        assert m["infer_ms_per_token"] > 0 and math.isfinite(m["train_loss"]), label
    assert metrics[labels[1]]["params"] > metrics[labels[0]]["params"]  # deeper levels are 2x wide
    report = open(os.path.join(cfg.log_dir, cfg.name, "report.md")).read()
    trunk_lines = report.split("### Trunks")[1].strip().splitlines()
    assert "| ms/token ↓ |" in trunk_lines[0] and "micro-batch" in trunk_lines[0]
    conv = next(line for line in trunk_lines if line.startswith(f"| {labels[1]} |"))
    assert "| conv (÷4, 1 level" in conv and "| 3 | 2 | 32 | 8 | 32 |" in conv  # layers heads width batch ctx
    assert "progressive diverging (group 2)" in report and "ms/token" in report.split("### Trunks")[0]
    assert f"- machine: {describe_machine('cpu')}; another CPU" in report  # digits depend on it
    assert results["machine"] == describe_machine("cpu")
    assert f"torch {torch.__version__}" in results["machine"]


def test_an_objective_comparison_has_no_trunk_table(small_data, tmp_path):
    cfg = tiny_compare(small_data, tmp_path)
    rows, _ = parse_rows("baseline,smooth,sigmoid")
    assert trunk_section(plan_runs(cfg, small_data, rows, None), {}, "test") == ""
    rows, _ = parse_rows("baseline,baseline(n_head=4)")
    assert "| baseline(n_head=4) | GPT-2 | 2 | 4 | 32 |" in trunk_section(
        plan_runs(cfg, small_data, rows, None), {}, "test"
    )


@pytest.mark.parametrize("trunk", [{}, {"arch": "conv"}, {"progressive_group": 2}])
def test_inference_time_per_token_of_every_trunk(trunk, tmp_path):
    model = GPT(ModelConfig(n_layer=4, n_head=2, n_embd=16, block_size=16, vocab_size=11, **trunk))
    model.eval()
    rt = setup_runtime(tiny_config("", tmp_path))
    assert 0 < inference_ms_per_token(model, [1, 2, 3], 50, rt, repeats=2) < 1000
    assert math.isnan(inference_ms_per_token(model, list(range(16)), 5, rt))  # no room in the block
    (tmp_path / "metrics.jsonl").write_text(
        '{"iter": 5, "kind": "train", "loss": 3.0}\n{"iter": 10, "kind": "train", "loss": 2.5}\n'
    )
    assert final_train_loss(str(tmp_path / "metrics.jsonl")) == 2.5
