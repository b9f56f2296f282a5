"""Fault tolerance and safe inputs: kill-anywhere resume, skipped NaN steps, checkpoints that
cannot run code, damaged checkpoints skipped, bad data refused before training, no secrets."""

import dataclasses
import json
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from nanoGPT.checkpoint import (
    CHECKSUM_SUFFIX,
    FORMAT,
    checkpoint_path,
    checkpoint_tokenizer,
    list_checkpoints,
    load_checkpoint,
    sha256_of,
)
from nanoGPT.config import TrainConfig, apply_config
from nanoGPT.errors import UserError
from nanoGPT.prepare import write_meta
from nanoGPT.tokenizer import load_meta
from nanoGPT.train import move_aside_earlier_run, train
from tests.conftest import tiny_config
from tests.helpers import output_tail, run_checked

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# fake secrets, built at run time so that this file itself holds none
SECRETS = {
    "WANDB_API_KEY": "0123456789abcdef" * 2 + "deadbeef",
    "HF_TOKEN": "hf_" + "Qz7" * 12,
    "OPENAI_API_KEY": "sk-" + "Xy9" * 12,
}


def read_records(log_dir, run_name, kind):
    with open(os.path.join(log_dir, run_name, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def same_weights(a, b):
    return all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.fixture(scope="module")
def finished_run(char_data, tmp_path_factory):
    """A short run with interval checkpoints, trained with secrets in the environment."""
    tmp = tmp_path_factory.mktemp("finished")
    cfg = tiny_config(
        char_data,
        tmp,
        max_iters=10,
        eval_interval=5,
        checkpoint_interval=2,
        keep_checkpoints=2,
        init_from="auto",
    )
    with pytest.MonkeyPatch.context() as mp:
        for name, value in SECRETS.items():
            mp.setenv(name, value)
        train(cfg)
    return cfg


def copy_run(cfg, tmp_path, **overrides):
    """A copy of a run's out_dir and logs, to damage without touching the original."""
    out_dir, log_dir = str(tmp_path / "out"), str(tmp_path / "logs")
    shutil.copytree(cfg.out_dir, out_dir, symlinks=True)
    shutil.copytree(cfg.log_dir, log_dir)
    return dataclasses.replace(cfg, out_dir=out_dir, log_dir=log_dir, **overrides)


# --- checkpoints on disk ------------------------------------------------------------------


def test_checkpoints_are_numbered_checksummed_and_rotated(finished_run):
    out_dir = finished_run.out_dir
    numbered = [it for it, _ in list_checkpoints(out_dir)]
    best = os.path.realpath(checkpoint_path(out_dir, "best"))
    assert os.path.realpath(checkpoint_path(out_dir, "last")).endswith("ckpt-000010.pt")
    # the newest two (keep_checkpoints=2) plus the best one
    assert set(numbered) - {8, 10} <= {int(re.search(r"(\d+)\.pt$", best).group(1))}
    for it, path in list_checkpoints(out_dir):
        with open(path + CHECKSUM_SUFFIX) as f:
            digest, name = f.read().split()
        assert digest == sha256_of(path) and name == os.path.basename(path)
        assert load_checkpoint(path, require_checksum=True)["iter_num"] == it
    assert not [n for n in os.listdir(out_dir) if n.startswith(".tmp")]


def test_damaged_and_hostile_checkpoints_are_skipped_never_used_nor_deleted(finished_run, tmp_path, capfd):
    cfg = copy_run(finished_run, tmp_path, max_iters=12)
    newest = os.path.join(cfg.out_dir, "ckpt-000010.pt")
    with open(newest, "r+b") as f:  # one flipped byte
        f.seek(os.path.getsize(newest) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    marker = tmp_path / "code-ran"
    hostile = os.path.join(cfg.out_dir, "ckpt-000014.pt")
    torch.save({"format": FORMAT, "model": _RunsCode(str(marker))}, hostile)
    with open(hostile + CHECKSUM_SUFFIX, "w") as f:  # a valid checksum does not make it safe
        f.write(f"{sha256_of(hostile)}  ckpt-000014.pt\n")
    capfd.readouterr()

    train(cfg)

    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(warnings) == 2
    assert "ckpt-000014.pt" in warnings[0] and "not a readable checkpoint" in warnings[0]
    assert "ckpt-000010.pt fails its checksum" in warnings[1]
    assert not marker.exists()
    kept = os.listdir(cfg.out_dir)
    for name in ("ckpt-000014.pt", "ckpt-000010.pt"):  # set aside, not deleted
        assert any(n.startswith(name + ".invalid-") for n in kept), name
    # resumed from iteration 8, the newest valid one
    train_iters = [r["iter"] for r in read_records(cfg.log_dir, cfg.run_name, "train")]
    assert train_iters == list(range(1, 13))
    assert load_checkpoint(checkpoint_path(cfg.out_dir))["iter_num"] == 12


class _RunsCode:
    """Unpickling this creates a file: what a crafted checkpoint would do, harmlessly."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_crafted_pickle_checkpoint_is_refused_without_running_code(tmp_path, writer):
    marker = tmp_path / "code-ran"
    path = str(tmp_path / "ckpt.pt")
    crafted = {"format": FORMAT, "model": _RunsCode(str(marker))}
    with open(path, "wb") as f:
        torch.save(crafted, f) if writer == "torch.save" else pickle.dump(crafted, f)
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()
    # the file is really hostile: a plain unpickler runs its code
    if writer == "torch.save":
        torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as f:
            pickle.load(f)
    assert marker.exists()


def test_sample_refuses_a_crafted_checkpoint_in_one_line(tmp_path):
    marker = tmp_path / "code-ran"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    torch.save({"format": FORMAT, "x": _RunsCode(str(marker))}, str(out_dir / "ckpt.pt"))
    proc = run_checked(
        [sys.executable, "sample.py", f"--out_dir={out_dir}", "--device=cpu"], cwd=REPO, expect_returncode=2
    )
    assert proc.stderr.count("\n") == 1 and "not a readable checkpoint" in proc.stderr, output_tail(proc)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a readable checkpoint"),
        (b"just some text\n", "not a readable checkpoint"),
        (None, "not a checkpoint of this framework"),  # a torch file that is not ours
    ],
)
def test_foreign_files_are_a_clear_error(tmp_path, content, message):
    path = str(tmp_path / "x.pt")
    if content is None:
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        with open(path, "wb") as f:
            f.write(content)
    with pytest.raises(UserError, match=message):
        load_checkpoint(path)


def test_fresh_run_moves_an_earlier_runs_checkpoints_aside(tmp_path):
    for name in ("ckpt-000100.pt", "ckpt-000100.pt.sha256", "best.pt", "notes.txt"):
        (tmp_path / name).write_text("x")
    move_aside_earlier_run(str(tmp_path))
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("previous-")]
    assert sorted(os.listdir(aside)) == ["best.pt", "ckpt-000100.pt", "ckpt-000100.pt.sha256"]
    assert sorted(os.listdir(tmp_path)) == sorted(["notes.txt", aside.name])


# --- kill anywhere ------------------------------------------------------------------------

RUN_ARGS = [
    "--device=cpu",
    "--n_layer=2",
    "--n_head=2",
    "--n_embd=32",
    "--block_size=32",
    "--batch_size=8",
    "--max_iters=30",
    "--eval_interval=15",
    "--eval_iters=2",
    "--log_interval=1",
    "--learning_rate=3e-3",
    "--warmup_iters=5",
    "--min_lr=3e-4",
    "--dropout=0.1",
    "--checkpoint_interval=5",
    "--keep_checkpoints=2",
    "--init_from=auto",
    "--debug_save_pause_s=0.04",
    "--run_name=run",
]


def run_command(data_dir, root):
    return [
        sys.executable,
        "train_baseline.py",
        *RUN_ARGS,
        f"--data_dir={data_dir}",
        f"--out_dir={root}/out",
        f"--log_dir={root}/logs",
    ]


def newest_iter(out_dir):
    found = list_checkpoints(out_dir)
    return found[-1][0] if found else -1


def mid_save(out_dir, moment):
    """Is a save of out_dir at `moment`: a checkpoint being written (temp file), or its
    checksum written but the checkpoint not yet in place?"""
    names = os.listdir(out_dir) if os.path.isdir(out_dir) else []
    if moment == "temp file":
        return any(n.startswith(".tmp-") for n in names)
    return any(n.endswith(CHECKSUM_SUFFIX) and n[: -len(CHECKSUM_SUFFIX)] not in names for n in names)


def assert_all_checkpoints_readable(out_dir):
    for _, path in list_checkpoints(out_dir):
        load_checkpoint(path, require_checksum=True)
    for which in ("last", "best"):
        if os.path.lexists(checkpoint_path(out_dir, which)):
            load_checkpoint(checkpoint_path(out_dir, which))
    assert not [n for n in os.listdir(out_dir) if ".invalid" in n]


@pytest.mark.slow
def test_sigkilled_anywhere_and_rerun_equals_an_uninterrupted_run(char_data, tmp_path):
    # the uninterrupted run in this process, single-threaded like the killed ones
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(apply_config(TrainConfig(), run_command(char_data, tmp_path / "straight")[2:]))
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    root = tmp_path / "killed"
    out_dir = str(root / "out")
    rng = random.Random(1234)
    kills = 0
    for moment in ["temp file", "checksum first", "random"]:
        start_iter = newest_iter(out_dir)
        proc = subprocess.Popen(
            run_command(char_data, root), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.time() + 60
        delay = rng.uniform(0.0, 0.3)
        # let each run make some progress first, so the kills land all along the run
        while proc.poll() is None and time.time() < deadline:
            if newest_iter(out_dir) > start_iter and (moment == "random" or mid_save(out_dir, moment)):
                if moment == "random":
                    time.sleep(delay)
                proc.kill()  # SIGKILL: no handler, no cleanup
                kills += 1
                break
            time.sleep(0.002)
        proc.wait(timeout=30)
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
        assert proc.returncode in (0, -9), stderr
        assert_all_checkpoints_readable(out_dir)
    assert kills == 3
    run_checked(run_command(char_data, root), cwd=REPO, env=env, timeout=120)

    straight = load_checkpoint(checkpoint_path(str(tmp_path / "straight" / "out")))
    resumed = load_checkpoint(checkpoint_path(out_dir))
    assert straight["iter_num"] == resumed["iter_num"] == 30
    assert same_weights(straight, resumed)
    for kind, key in (("train", "loss"), ("eval", "val/nll")):
        a = [(r["iter"], r[key]) for r in read_records(tmp_path / "straight" / "logs", "run", kind)]
        b = [(r["iter"], r[key]) for r in read_records(root / "logs", "run", kind)]
        assert a == b
    assert [it for it, _ in a] == [0, 15, 30]
    assert not [n for n in os.listdir(out_dir) if n.startswith(".tmp")]


# --- numerical faults ---------------------------------------------------------------------


def test_nan_step_is_skipped_counted_and_the_run_goes_on(char_data, tmp_path):
    cfg = tiny_config(
        char_data,
        tmp_path,
        max_iters=10,
        eval_interval=100,
        debug_nan_at_iter=6,
        checkpoint_interval=1,
        keep_checkpoints=20,
    )
    metrics = train(cfg)
    assert np.isfinite(metrics["val/nll"])
    records = read_records(cfg.log_dir, cfg.run_name, "train")
    assert [r["iter"] for r in records] == list(range(1, 11))
    assert records[6]["loss"] is None and records[6]["bad_steps"] == 1  # the update to iter 7
    assert all(r["loss"] is not None for i, r in enumerate(records) if i != 6)
    assert [r["bad_steps"] for r in records] == [0] * 6 + [1] * 4
    (bad,) = read_records(cfg.log_dir, cfg.run_name, "bad_step")
    assert bad["iter"] == 7 and bad["loss"] is None
    ckpt = {it: load_checkpoint(path) for it, path in list_checkpoints(cfg.out_dir)}
    assert same_weights(ckpt[6], ckpt[7])  # skipped: no update, optimizer untouched
    assert ckpt[6]["optimizer"]["state"][0]["step"] == ckpt[7]["optimizer"]["state"][0]["step"]
    assert not same_weights(ckpt[7], ckpt[8])
    assert all(torch.isfinite(v).all() for v in ckpt[10]["model"].values())


def test_too_many_bad_steps_stop_with_a_checkpoint_of_the_last_good_state(char_data, tmp_path):
    cfg = tiny_config(
        char_data,
        tmp_path,
        max_iters=30,
        eval_interval=100,
        debug_nan_at_iter=4,
        debug_nan_steps=100,
        max_bad_steps=2,
        checkpoint_interval=4,
    )
    with pytest.raises(UserError, match=r"3 updates in a row .*max_bad_steps=2.*ckpt-000007\.pt"):
        train(cfg)
    stopped = load_checkpoint(os.path.join(cfg.out_dir, "ckpt-000007.pt"))
    assert same_weights(stopped, load_checkpoint(os.path.join(cfg.out_dir, "ckpt-000004.pt")))
    assert stopped["run_state"]["bad_steps"] == 3
    assert read_records(cfg.log_dir, cfg.run_name, "stopped")
    # fixed (here: no more injected NaN), the same command resumes and finishes
    train(dataclasses.replace(cfg, init_from="auto", debug_nan_at_iter=-1, max_iters=10))
    assert load_checkpoint(checkpoint_path(cfg.out_dir))["iter_num"] == 10


# --- bad data, refused before training ----------------------------------------------------


def data_copy(char_data, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(char_data, folder)
    return folder


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: open(d / "val.bin", "ab").write(b"\x01"), "odd number of bytes"),
        (lambda d: np.full(5000, 200, np.uint16).tofile(d / "train.bin"), "holds token id 200"),
        (
            lambda d: (
                np.fromfile(d / "train.bin", np.uint16)[:5000].astype(np.uint32).tofile(d / "train.bin")
            ),
            "32- or 64-bit token ids",
        ),
        (lambda d: np.zeros(10, np.uint16).tofile(d / "train.bin"), "not more than block_size"),
        (lambda d: open(d / "train.bin", "wb").close(), "not more than block_size"),
        (lambda d: open(d / "meta.pkl", "wb").write(b"\x80\x04garbage"), "not a valid meta.pkl"),
    ],
)
def test_bad_data_is_one_clear_error_before_training(char_data, tmp_path, damage, message):
    folder = data_copy(char_data, tmp_path)
    damage(folder)
    cfg = tiny_config(str(folder), tmp_path)
    with pytest.raises(UserError, match=message):
        train(cfg)
    assert not os.path.exists(cfg.out_dir)  # nothing started, nothing written


def test_meta_that_does_not_match_the_checkpoint_is_refused(finished_run, char_data, tmp_path):
    folder = data_copy(char_data, tmp_path)
    meta = load_meta(str(folder / "meta.pkl"))
    chars = [meta["itos"][i] for i in range(meta["vocab_size"])]
    chars[1], chars[2] = chars[2], chars[1]  # same size, two ids swapped
    write_meta(
        str(folder / "meta.pkl"),
        {
            "vocab_size": len(chars),
            "itos": dict(enumerate(chars)),
            "stoi": {c: i for i, c in enumerate(chars)},
        },
    )
    cfg = copy_run(finished_run, tmp_path, data_dir=str(folder), max_iters=12)
    with pytest.raises(UserError, match="not the one the checkpoint was trained on"):
        train(cfg)
    ckpt = load_checkpoint(checkpoint_path(cfg.out_dir))
    with pytest.raises(UserError, match="other characters or another order"):
        checkpoint_tokenizer(ckpt, str(folder))
    assert checkpoint_tokenizer(ckpt).vocab_size == len(chars)  # the data it was trained on


# --- secrets ------------------------------------------------------------------------------

SECRET_PATTERNS = [
    re.compile(r"WANDB_API_KEY\s*=\s*['\"]?[0-9a-f]{40}"),
    re.compile(r"\bhf_[A-Za-z0-9]{30,}"),
    re.compile(r"\bsk-[A-Za-z0-9]{32,}"),
    re.compile(r"wandb\.login\([^)]*key\s*="),
    re.compile(
        r"(api_key|apikey|token|secret|password)\s*[=:]\s*['\"][A-Za-z0-9_\-]{24,}['\"]", re.IGNORECASE
    ),
]


def test_no_secrets_in_code_configs_checkpoints_or_logs(finished_run):
    sources = []
    for root, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "out")]
        sources += [
            os.path.join(root, n)
            for n in names
            if n.endswith((".py", ".md", ".toml", ".txt", ".cfg", ".yaml", ".json"))
        ]
    assert len(sources) > 20
    for path in sources:
        if os.path.getsize(path) > 5_000_000:
            continue
        with open(path, errors="replace") as f:
            text = f.read()
        for pattern in SECRET_PATTERNS:
            assert not pattern.search(text), f"{path}: {pattern.pattern}"
    secret_words = re.compile(r"(api_?key|secret|password|passwd|credential|auth|access_token)")
    assert not [f.name for f in dataclasses.fields(TrainConfig) if secret_words.search(f.name)]
    # the run was made with secrets in its environment: none reached its files
    written = []
    for folder in (finished_run.out_dir, finished_run.log_dir):
        for root, _, names in os.walk(folder):
            written += [os.path.join(root, n) for n in names]
    for path in written:
        text = open(path, "rb").read()
        if path.endswith(".pt"):
            text = repr(load_checkpoint(path)["config"]).encode()
        for value in SECRETS.values():
            assert value.encode() not in text, path
