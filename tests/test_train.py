"""The one training loop: learning, exact resume, atomic checkpoints, DDP, sampling, errors."""

import dataclasses
import json
import os
import runpy
import sys
import time

import numpy as np
import pytest
import torch

import nanoGPT.checkpoint as checkpoint
from nanoGPT.checkpoint import load_checkpoint, load_model
from nanoGPT.data import TokenData
from nanoGPT.errors import UserError
from nanoGPT.train import learning_rate, main, train
from tests.conftest import tiny_config
from tests.helpers import run_checked

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# the keys by which tiny_config differs from the defaults, as command-line arguments
TINY_KEYS = """data_dir out_dir log_dir run_name device n_layer n_head n_embd block_size batch_size max_iters
eval_interval eval_iters log_interval learning_rate warmup_iters min_lr gradient_accumulation_steps""".split()


def tiny_args(cfg) -> list[str]:
    return [f"--{k}={getattr(cfg, k)}" for k in TINY_KEYS]


def read_log(cfg, kind):
    path = os.path.join(cfg.log_dir, cfg.run_name, "metrics.jsonl")
    with open(path) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def test_baseline_learns_saves_and_samples(char_data, tmp_path):
    cfg = tiny_config(char_data, tmp_path, max_iters=60, eval_interval=30, sample_interval=30)
    metrics = train(cfg)
    evals = read_log(cfg, "eval")
    assert [e["iter"] for e in evals] == [0, 30, 60]
    assert evals[-1]["val/nll"] < evals[0]["val/nll"] - 1.0  # from ~ln(80) down
    for key in ("val/ppl", "val/bpb", "val/acc", "val/ece", "val/brier", "train/nll"):
        assert key in metrics
    # characters are one byte here, so bits per byte is NLL in bits
    assert metrics["val/bpb"] == pytest.approx(metrics["val/nll"] / 0.6931471805599453, rel=0.02)
    samples = open(os.path.join(cfg.log_dir, "test", "samples.txt")).read()
    assert samples.count("--- iter") == 3
    model, ckpt = load_model(os.path.join(cfg.out_dir, "ckpt.pt"))
    assert ckpt["iter_num"] == 60 and ckpt["variant"] == "baseline"
    out = run_checked(
        [
            sys.executable,
            "sample.py",
            f"--out_dir={cfg.out_dir}",
            "--start=ROMEO:",
            "--num_samples=2",
            "--max_new_tokens=40",
            "--device=cpu",
        ],
        cwd=REPO,
    )
    assert out.stdout.count("ROMEO:") >= 2


def test_resume_equals_an_uninterrupted_run(char_data, tmp_path):
    # dropout on: the resumed run must also continue the RNG stream
    common = dict(dropout=0.1, lr_decay_iters=20, eval_interval=10, gradient_accumulation_steps=2)
    straight = tiny_config(char_data, tmp_path / "a", max_iters=20, **common)
    train(straight)
    half = tiny_config(char_data, tmp_path / "b", max_iters=10, **common)
    train(half)
    train(dataclasses.replace(half, max_iters=20, init_from="resume"))
    a = load_checkpoint(os.path.join(straight.out_dir, "ckpt.pt"))
    b = load_checkpoint(os.path.join(half.out_dir, "ckpt.pt"))
    assert a["iter_num"] == b["iter_num"] == 20
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    losses_a = [(r["iter"], r["loss"]) for r in read_log(straight, "train")]
    losses_b = [(r["iter"], r["loss"]) for r in read_log(half, "train")]
    assert losses_a == losses_b and len(losses_a) == 20


def test_interrupted_checkpoint_write_keeps_the_previous_one(char_data, tmp_path, monkeypatch):
    cfg = tiny_config(char_data, tmp_path, max_iters=10)
    train(cfg)
    path = os.path.join(cfg.out_dir, "ckpt.pt")
    before = load_checkpoint(path)["iter_num"]

    def dying_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(checkpoint.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_torch_save({"format": checkpoint.FORMAT}, path)
    assert load_checkpoint(path)["iter_num"] == before
    assert not [n for n in os.listdir(cfg.out_dir) if n.startswith(".tmp")]  # no temp file left


def test_resume_as_another_variant_is_a_clear_error(char_data, tmp_path):
    cfg = tiny_config(char_data, tmp_path, max_iters=10)
    train(cfg)
    with pytest.raises(UserError, match="trained as variant 'baseline'"):
        load_model(os.path.join(cfg.out_dir, "ckpt.pt"), expect_variant="sigmoid")


def test_learning_rate_schedule():
    cfg = tiny_config(
        "", __import__("pathlib").Path("/tmp"), learning_rate=1.0, min_lr=0.1, warmup_iters=10, max_iters=110
    )
    assert learning_rate(cfg, 0) < learning_rate(cfg, 5) < learning_rate(cfg, 10)
    assert learning_rate(cfg, 10) == pytest.approx(1.0, abs=1e-3)
    assert learning_rate(cfg, 60) == pytest.approx(0.55)
    assert learning_rate(cfg, 110) == learning_rate(cfg, 500) == 0.1


@pytest.mark.slow
def test_ddp_two_processes_stay_identical_and_learn(char_data, tmp_path):
    cfg = tiny_config(char_data, tmp_path, max_iters=30, eval_interval=15, gradient_accumulation_steps=2)
    args = tiny_args(cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_checked(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "train_baseline.py",
            *args,
        ],
        cwd=REPO,
        env=env,
        timeout=300,
    )
    evals = read_log(cfg, "eval")
    assert [e["iter"] for e in evals] == [0, 15, 30]
    assert all(e["ddp/param_spread"] == 0.0 for e in evals)
    assert evals[-1]["val/nll"] < evals[0]["val/nll"] - 0.5


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data_dir=/no/such/dir"], "no training data"),
        (["--n_layers=2"], "did you mean n_layer"),
        (["--variant=sigmoid"], "train_sigmoid.py"),
        (["--init_from=resume", "--out_dir=/no/such/out"], "not found"),
    ],
)
def test_cli_errors_are_one_line(args, message, char_data, monkeypatch, capsys):
    # in this process (a fresh interpreter per case costs seconds); the real process is checked below
    if not any(a.startswith("--data_dir") for a in args):
        args = [*args, f"--data_dir={char_data}"]
    monkeypatch.setattr(sys, "argv", ["train_baseline.py", "--device=cpu", *args])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(os.path.join(REPO, "train_baseline.py"), run_name="__main__")
    stderr = capsys.readouterr().err
    assert stopped.value.code == 2, stderr
    assert stderr.strip().count("\n") == 0 and message in stderr
    assert "Traceback" not in stderr


def test_cli_error_of_a_real_process_is_one_line_and_exit_code_2(char_data):
    proc = run_checked(
        [sys.executable, "train_baseline.py", "--device=cpu", "--n_layers=2", f"--data_dir={char_data}"],
        cwd=REPO,
        expect_returncode=2,
    )
    assert proc.stderr.strip().count("\n") == 0 and "did you mean n_layer" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# --- eval_only, train.log, wandb --------------------------------------------------------------


def test_eval_only_evaluates_once_and_writes_no_checkpoint(char_data, tmp_path, capsys):
    # a checkpoint at iteration 6, off the evaluation schedule (eval_interval=250)
    cfg = tiny_config(char_data, tmp_path, max_iters=6, eval_interval=250)
    train(cfg)
    saved = os.path.realpath(os.path.join(cfg.out_dir, "ckpt.pt"))
    before = (sorted(os.listdir(cfg.out_dir)), checkpoint.sha256_of(saved), os.stat(saved).st_mtime_ns)
    train_records = read_log(cfg, "train")
    capsys.readouterr()

    metrics = train(dataclasses.replace(cfg, eval_only=True, init_from="resume", max_iters=250))

    after = (sorted(os.listdir(cfg.out_dir)), checkpoint.sha256_of(saved), os.stat(saved).st_mtime_ns)
    assert after == before
    assert read_log(cfg, "train") == train_records
    assert [e["iter"] for e in read_log(cfg, "eval")] == [0, 6, 6]  # the run's two, then eval_only's
    assert metrics["val/nll"] == pytest.approx(read_log(cfg, "eval")[-1]["val/nll"])
    printed = capsys.readouterr().out
    assert "step 6:" in printed and "iter 7" not in printed


def test_train_log_holds_the_console_output_and_continues_on_resume(char_data, tmp_path, capsys):
    cfg = tiny_config(char_data, tmp_path, max_iters=4, eval_interval=2)
    train(cfg)
    printed = capsys.readouterr().out.splitlines()
    log_path = os.path.join(cfg.log_dir, cfg.run_name, "train.log")
    first = open(log_path).read().splitlines()
    assert first[0].startswith("=== ") and "baseline, init_from=scratch" in first[0]
    assert first[1:] == printed  # every line, in order
    assert [line.split(":")[0] for line in printed if line.startswith("iter")] == [
        f"iter {i}" for i in range(1, 5)
    ]
    assert [line.split(":")[0] for line in printed if line.startswith("step")] == [
        "step 0",
        "step 2",
        "step 4",
    ]

    train(dataclasses.replace(cfg, max_iters=6, init_from="resume"))
    resumed = capsys.readouterr().out.splitlines()
    lines = open(log_path).read().splitlines()
    assert lines[: len(first)] == first  # appended to
    assert lines[len(first)].startswith("=== ") and lines[len(first) + 1 :] == resumed
    assert resumed[0].startswith("resuming from") and "(iteration 4)" in resumed[0]
    assert "iter 6: loss" in resumed[-2] and resumed[-1].startswith("step 6:")
    # an error that ends a run is the log's last line, as the console shows it (through cli())
    with pytest.raises(UserError, match="trained as variant 'baseline'"):
        train(dataclasses.replace(cfg, max_iters=8, init_from="resume", variant="smooth"))
    assert "error: " in open(log_path).read().splitlines()[-1]


@pytest.mark.slow  # three wandb starts: ~9 s
def test_a_resumed_run_continues_its_wandb_run(char_data, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network, no login
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_config(char_data, tmp_path, max_iters=2, eval_interval=2, wandb_log=True)
    train(cfg)
    first_id = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))["run_state"]["wandb_id"]
    train(dataclasses.replace(cfg, max_iters=4, init_from="auto"))
    assert load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))["run_state"]["wandb_id"] == first_id
    runs = [name for name in os.listdir(tmp_path / "wandb") if name.startswith("offline-run-")]
    assert len(runs) == 2 and all(name.endswith("-" + first_id) for name in runs)
    # a fresh run in the same place starts another wandb run
    train(dataclasses.replace(cfg, max_iters=2, init_from="scratch"))
    assert load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))["run_state"]["wandb_id"] != first_id


def test_a_checkpoint_with_the_old_run_state_still_resumes(char_data, tmp_path):
    cfg = tiny_config(char_data, tmp_path, max_iters=4, eval_interval=2)
    train(cfg)
    path = os.path.realpath(os.path.join(cfg.out_dir, "ckpt.pt"))
    ckpt = load_checkpoint(path)
    del ckpt["run_state"]["wandb_id"]  # as written before wandb ids were kept
    checkpoint.atomic_torch_save(ckpt, path)
    with open(path + checkpoint.CHECKSUM_SUFFIX, "w") as f:
        f.write(f"{checkpoint.sha256_of(path)}  {os.path.basename(path)}\n")
    train(dataclasses.replace(cfg, max_iters=6, init_from="resume"))
    assert [r["iter"] for r in read_log(cfg, "train")] == list(range(1, 7))


# --- data windows, train_fraction -----------------------------------------------------------


def token_folder(tmp_path, num_tokens):
    """train.bin holding 0, 1, 2, ...: a token's id is its position."""
    folder = tmp_path / "positions"
    folder.mkdir()
    np.arange(num_tokens, dtype=np.uint16).tofile(folder / "train.bin")
    return str(folder)


def test_train_batches_reach_the_last_window(tmp_path):
    block_size = 8
    data = TokenData(token_folder(tmp_path, block_size + 2), block_size, 4, "cpu")
    starts = {int(s) for step in range(50) for s in data.train_batch(step).starts}
    assert starts == {0, 1}
    batch = data.train_batch(0)
    assert torch.equal(batch.y, batch.x + 1)


def test_train_fraction_draws_windows_from_the_prefix_only(tmp_path):
    block_size, prefix = 8, 40  # 10% of 400 tokens
    data = TokenData(token_folder(tmp_path, 400), block_size, 16, "cpu", train_fraction=0.1)
    assert data.window_tokens("train") == prefix and data.num_tokens("train") == 400
    batches = [data.train_batch(step, micro) for step in range(40) for micro in range(2)]
    assert max(int(b.y.max()) for b in batches) == prefix - 1  # the prefix's last token, never beyond
    assert {int(s) for b in batches for s in b.starts} == set(range(prefix - block_size))
    eval_starts = np.concatenate(data.eval_batches("train", 100))
    assert eval_starts.max() + block_size + 1 == prefix  # train/nll is measured on the prefix too
    with pytest.raises(UserError, match="train_fraction=0.02 leaves 8 tokens"):
        TokenData(data.data_dir, block_size, 4, "cpu", train_fraction=0.02)


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_train_fraction_outside_zero_one_is_refused(char_data, tmp_path, fraction):
    cfg = tiny_config(char_data, tmp_path, train_fraction=fraction)
    with pytest.raises(UserError, match="train_fraction must be in"):
        train(cfg)
    assert not os.path.exists(cfg.out_dir) and not os.path.exists(cfg.log_dir)


def test_bayes_elbo_counts_the_tokens_trained_on(char_data, tmp_path):
    cfg = tiny_config(char_data, tmp_path, variant="bayes", max_iters=1, eval_iters=1, train_fraction=0.25)
    train(cfg)
    ckpt = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))
    train_tokens = os.path.getsize(os.path.join(char_data, "train.bin")) // 2
    assert ckpt["model_args"]["kl_num_tokens"] == int(train_tokens * 0.25)


# --- entry points -----------------------------------------------------------------------------


def test_root_train_py_takes_the_variant_from_the_config(char_data, tmp_path, monkeypatch):
    cfg = tiny_config(char_data, tmp_path, max_iters=2, eval_interval=2)
    config_file = tmp_path / "train_tiny_smooth.py"
    config_file.write_text('variant = "smooth"\nlabel_smoothing = 0.1\n')
    args = tiny_args(cfg)
    monkeypatch.setattr(sys, "argv", ["train.py", str(config_file), *args])
    runpy.run_path(os.path.join(REPO, "train.py"), run_name="__main__")
    ckpt = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))
    assert ckpt["variant"] == "smooth" and ckpt["model_args"]["label_smoothing"] == 0.1
    # a train_<variant>.py entry point refuses a config asking for another variant
    with pytest.raises(SystemExit) as stopped:
        main("baseline", [str(config_file), *args])
    assert stopped.value.code == 2


def test_checkpoint_minutes_saves_when_the_time_is_up(char_data, tmp_path):
    # a limit of 60 microseconds: due after every iteration
    cfg = tiny_config(
        char_data, tmp_path, max_iters=5, eval_interval=100, checkpoint_minutes=1e-6, keep_checkpoints=9
    )
    train(cfg)
    assert [it for it, _ in checkpoint.list_checkpoints(cfg.out_dir)] == [1, 2, 3, 4, 5]


def test_ms_per_iter_times_training_steps_not_evaluations(char_data, tmp_path, monkeypatch):
    import nanoGPT.train as train_module

    real_evaluate_and_log = train_module.evaluate_and_log

    def slow_evaluation(training, state):
        time.sleep(0.5)  # an evaluation as slow as a Bayesian head's on a big vocabulary
        return real_evaluate_and_log(training, state)

    monkeypatch.setattr(train_module, "evaluate_and_log", slow_evaluation)
    cfg = tiny_config(char_data, tmp_path, max_iters=4, eval_interval=2, log_interval=2)
    train(cfg)
    times = [r["ms_per_iter"] for r in read_log(cfg, "train")]
    assert len(times) == 2 and max(times) < 200  # 500 ms of evaluation per 2 steps is not in it
