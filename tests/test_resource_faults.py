"""Resource faults and damaged inputs end in one line that says what to do, with the state on
disk intact: a full disk or a file-size limit during a save, a read-only out_dir, a folder
where a checkpoint goes, a damaged Hugging Face folder, a prepare script's impossible out_dir,
token files that are not files, too short or without their meta.pkl, a damaged augmenter
cache record, non-finite weights at resume, other model settings at resume, and a stuck DDP
rank (the collective timeout)."""

import dataclasses
import errno
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch

from nanoGPT import checkpoint
from nanoGPT.augment.cache import cache_name, cache_paths, open_cache
from nanoGPT.augment.teachers import open_teacher
from nanoGPT.checkpoint import CHECKSUM_SUFFIX, list_checkpoints, load_checkpoint, sha256_of
from nanoGPT.config import ModelConfig, TrainConfig
from nanoGPT.data import TokenData
from nanoGPT.errors import UserError
from nanoGPT.model import GPT
from nanoGPT.prepare import run_prepare
from nanoGPT.tokenizer import META_FILE, gpt2_tokenizer
from nanoGPT.train import train
from tests.conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = {"eval_iters": 1, "eval_interval": 2, "init_from": "auto"}


def link_target(cfg, which="ckpt.pt"):
    return os.readlink(os.path.join(cfg.out_dir, which))


@pytest.fixture(scope="module")
def two_saves(char_data, tmp_path_factory):
    """A finished run with checkpoints at iterations 2 and 4, to copy and damage."""
    cfg = tiny_config(char_data, tmp_path_factory.mktemp("two_saves"), max_iters=4, **FAST)
    train(cfg)
    return cfg


def copy_of(cfg, tmp_path, **overrides):
    out_dir = str(tmp_path / "out")
    shutil.copytree(cfg.out_dir, out_dir, symlinks=True)
    return dataclasses.replace(cfg, out_dir=out_dir, log_dir=str(tmp_path / "logs"), **overrides)


# --- a full disk, a file-size limit ---------------------------------------------------------


class FailingFile:
    """A file whose writes fail with `code` once `budget` bytes are written (a disk filling up)."""

    def __init__(self, f, code, budget=1000):
        self.f, self.code, self.budget = f, code, budget

    def write(self, data):
        self.budget -= len(data)
        if self.budget < 0:
            raise OSError(self.code, os.strerror(self.code))
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG])
def test_a_save_that_fills_the_disk_is_one_line_and_the_earlier_checkpoint_survives(
    char_data, tmp_path, monkeypatch, code
):
    cfg = tiny_config(char_data, tmp_path, max_iters=4, **FAST)
    real_write_temp, saves = checkpoint.write_temp, []

    def write_temp(folder, write, suffix=""):
        saves.append(suffix)
        fail = suffix == ".pt" and len(saves) > 1  # the second checkpoint (iteration 4)
        return real_write_temp(folder, (lambda f: write(FailingFile(f, code))) if fail else write, suffix)

    monkeypatch.setattr(checkpoint, "write_temp", write_temp)
    with pytest.raises(UserError) as err:
        train(cfg)
    line = str(err.value)
    assert "\n" not in line and os.strerror(code) in line and "iteration 4" in line
    assert "init_from=auto" in line and "ckpt-000002.pt" not in line
    assert [it for it, _ in list_checkpoints(cfg.out_dir)] == [2]  # intact, and no temp file left
    assert sorted(os.listdir(cfg.out_dir)) == [
        "best.pt",
        "ckpt-000002.pt",
        "ckpt-000002.pt.sha256",
        "ckpt.pt",
        "run.lock",
    ]
    assert load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"), require_checksum=True)["iter_num"] == 2
    monkeypatch.setattr(checkpoint, "write_temp", real_write_temp)  # space again: the advice works
    train(cfg)
    assert link_target(cfg) == "ckpt-000004.pt"


def test_a_full_disk_while_logging_is_one_line(char_data, tmp_path, monkeypatch):
    from nanoGPT import runlog

    def full(self, name, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(self.dir, name))

    monkeypatch.setattr(runlog.RunLog, "_append_unchecked", full)
    with pytest.raises(
        UserError, match=r"writing train.log .* No space left on device .* free some disk space"
    ):
        train(tiny_config(char_data, tmp_path, max_iters=2, **FAST))


@pytest.mark.slow  # a real file-size limit (RLIMIT_FSIZE) on a real training process: ~5 s
def test_a_real_file_size_limit_ends_the_cli_in_one_line(char_data, tmp_path):
    import resource

    out_dir = tmp_path / "out"
    args = [sys.executable, os.path.join(REPO, "train.py"), f"--data_dir={char_data}", f"--out_dir={out_dir}"]
    args += [f"--log_dir={tmp_path / 'logs'}", "--device=cpu", "--n_layer=2", "--n_head=2", "--n_embd=32"]
    args += ["--block_size=32", "--batch_size=4", "--max_iters=2", "--eval_iters=1", "--eval_interval=2"]

    def limit():  # 64 kB: the logs fit, a checkpoint (~300 kB) does not; SIGXFSZ is ignored by Python
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    done = subprocess.run(args, capture_output=True, text=True, preexec_fn=limit, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "File too large" in done.stderr
    assert not [n for n in os.listdir(out_dir) if n.startswith(".tmp-") or n.startswith("ckpt")]


# --- a read-only out_dir, a folder in a checkpoint's place -----------------------------------


def test_a_read_only_out_dir_is_found_before_any_work(char_data, tmp_path, monkeypatch):
    cfg = tiny_config(char_data, tmp_path, max_iters=2, **FAST)
    os.makedirs(cfg.out_dir)
    real = tempfile.TemporaryFile

    def read_only(*args, dir=None, **kwargs):
        if dir and os.path.realpath(dir) == os.path.realpath(cfg.out_dir):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), dir)
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(UserError, match=r"out_dir=.* is not writable \(Read-only file system\)"):
        train(cfg)
    assert not os.path.exists(cfg.log_dir) and os.listdir(cfg.out_dir) == []  # nothing ran


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder without write permission")
def test_an_out_dir_without_write_permission_is_found_before_any_work(char_data, tmp_path):
    cfg = tiny_config(char_data, tmp_path, max_iters=2, **FAST)
    os.makedirs(cfg.out_dir, mode=0o555)
    with pytest.raises(UserError, match="is not writable"):
        train(cfg)


@pytest.mark.parametrize("name", ["ckpt.pt", "best.pt", "ckpt-000006.pt", "ckpt-000006.pt.sha256"])
def test_a_folder_where_a_checkpoint_goes_is_set_aside_once(two_saves, tmp_path, capfd, name):
    cfg = copy_of(two_saves, tmp_path, max_iters=6)
    if os.path.lexists(os.path.join(cfg.out_dir, name)):
        os.remove(os.path.join(cfg.out_dir, name))
    os.makedirs(os.path.join(cfg.out_dir, name, "inside"))
    capfd.readouterr()
    train(cfg)
    warned = [line for line in capfd.readouterr().err.splitlines() if name in line]
    assert len(warned) == 1 and "kept as" in warned[0]
    assert link_target(cfg) == "ckpt-000006.pt" and link_target(cfg, "best.pt").startswith("ckpt-")
    assert len(glob.glob(os.path.join(cfg.out_dir, f"{name}.invalid-*", "inside"))) == 1  # kept whole
    train(dataclasses.replace(cfg, max_iters=8))  # the next run has nothing left to say about it
    assert name not in capfd.readouterr().err and link_target(cfg) == "ckpt-000008.pt"


# --- non-finite weights and other model settings at resume -----------------------------------


def poison(path):
    """Put a NaN in the weights of a checkpoint (as one saved before saves were checked), its
    checksum updated: a valid file whose weights cannot be trained on."""
    ckpt = load_checkpoint(path)
    next(iter(ckpt["model"].values())).view(-1)[0] = float("nan")
    checkpoint.atomic_torch_save(ckpt, path)
    with open(path + CHECKSUM_SUFFIX, "w") as f:
        f.write(f"{sha256_of(path)}  {os.path.basename(path)}\n")


def test_non_finite_weights_are_not_resumed_the_newest_finite_checkpoint_is(two_saves, tmp_path, capfd):
    cfg = copy_of(two_saves, tmp_path, max_iters=6)
    poison(os.path.join(cfg.out_dir, "ckpt-000004.pt"))
    capfd.readouterr()
    train(cfg)
    out, err = capfd.readouterr()
    assert "ckpt-000004.pt holds non-finite weights" in err and "kept as" in err
    assert "resuming from" in out and "ckpt-000002.pt (iteration 2)" in out
    assert glob.glob(os.path.join(cfg.out_dir, "ckpt-000004.pt.invalid-*"))
    for _, path in list_checkpoints(cfg.out_dir):
        assert all(torch.isfinite(t).all() for t in load_checkpoint(path)["model"].values())


def test_resume_with_only_non_finite_weights_is_one_line(two_saves, tmp_path):
    cfg = copy_of(two_saves, tmp_path, init_from="resume", max_iters=6)
    for _, path in list_checkpoints(cfg.out_dir):
        poison(path)
    with pytest.raises(UserError, match="init_from=resume: checkpoint not found"):
        train(cfg)


@pytest.mark.parametrize(
    "init_from, changes, refused",
    [
        ("auto", {"n_layer": 3}, "n_layer 2 -> 3"),
        ("auto", {"n_embd": 64, "n_head": 4}, "n_head 2 -> 4, n_embd 32 -> 64"),
        ("auto", {"mlp": "swiglu", "bias": False}, "bias True -> False, mlp 'gelu' -> 'swiglu'"),
        ("auto", {"label_smoothing": 0.2}, "label_smoothing 0.05 -> 0.2"),
        ("resume", {"block_size": 16}, "block_size 32 -> 16"),
        # not model settings: the run goes on
        (
            "auto",
            {
                "dropout": 0.1,
                "bayes_samples": 2,
                "loss_chunk_size": 0,
                "batch_size": 4,
                "learning_rate": 1e-3,
            },
            None,
        ),
        # init_from=resume takes the model from the checkpoint: settings left at their default count not
        ("resume", {"n_layer": ModelConfig.n_layer, "n_embd": ModelConfig.n_embd}, None),
    ],
)
def test_resuming_other_model_settings_is_refused_listing_them(
    two_saves, tmp_path, init_from, changes, refused
):
    cfg = copy_of(two_saves, tmp_path, init_from=init_from, max_iters=6, **changes)
    if refused is None:
        train(cfg)
        ckpt = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))
        assert ckpt["iter_num"] == 6
        # the settings of how the run uses the model are the run's, not the checkpoint's
        assert all(ckpt["model_args"][k] == changes[k] for k in checkpoint.RUN_SETTINGS if k in changes)
        return
    with pytest.raises(UserError, match="other model settings") as err:
        train(cfg)
    assert f"({refused})" in str(err.value)
    assert [it for it, _ in list_checkpoints(cfg.out_dir)] == [2, 4]  # nothing resumed nor saved


# --- damaged Hugging Face folders, a prepare script's out_dir ---------------------------------


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
@pytest.mark.parametrize("role", ["init_from", "teacher"])
def test_a_damaged_hugging_face_folder_is_one_line(hf_gpt2_folder, tmp_path, weights, role):
    folder = str(tmp_path / "hf")
    shutil.copytree(hf_gpt2_folder, folder)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.exists(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))
    with open(os.path.join(folder, weights), "wb") as f:
        f.write(b"not a tensor file " * 64)
    with pytest.raises(UserError, match=f"could not load '{folder}'") as err:
        if role == "init_from":
            GPT.from_pretrained(folder, ModelConfig())
        else:
            open_teacher(folder, "cpu")
    assert "\n" not in str(err.value)


def prepare_into(out_dir: str = "unused") -> None:
    """A prepare script's function: the data set goes to out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(out_dir, "train.bin"))


@pytest.mark.parametrize(
    "where, message",
    [
        ("a_file", "is not a folder"),
        ("a_file/below", "is not a folder"),
        ("/proc/no/such/folder", "cannot be created"),
        ("fine", "writing the data set failed: No space left on device"),
    ],
)
def test_a_prepare_scripts_impossible_out_dir_or_full_disk_is_one_line(tmp_path, capsys, where, message):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(SystemExit) as done:
        run_prepare(prepare_into, [f"--out_dir={tmp_path / where}"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err


# --- token files, the augmenter cache ------------------------------------------------------


def copy_data(char_data, tmp_path, meta=True):
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("train.bin", "val.bin") + ((META_FILE,) if meta else ()):
        shutil.copy(os.path.join(char_data, name), folder / name)
    return str(folder)


@pytest.mark.parametrize(
    "make, what",
    [
        (lambda path: os.mkdir(path), "is a folder"),
        (lambda path: os.mkfifo(path), "is a named pipe (FIFO)"),
        (lambda path: os.symlink("gone.bin", path), "is a link to gone.bin, which is missing"),
    ],
    ids=["folder", "fifo", "dangling-link"],
)
@pytest.mark.parametrize("split", ["train", "val"])
def test_a_token_file_that_is_not_a_file_says_what_it_is(char_data, tmp_path, make, what, split):
    folder = copy_data(char_data, tmp_path)
    path = os.path.join(folder, f"{split}.bin")
    os.remove(path)
    make(path)
    with pytest.raises(UserError, match=re.escape(f"{split}.bin {what}, not a file of token ids")):
        TokenData(folder, 32, 4, "cpu")


def test_a_train_bin_of_block_size_plus_one_tokens_trains(tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    np.arange(33, dtype=np.uint16).tofile(folder / "train.bin")
    data = TokenData(str(folder), 32, 4, "cpu")
    batch = data.train_batch(0)
    assert batch.x.tolist() == [list(range(32))] * 4 and batch.y.tolist() == [list(range(1, 33))] * 4
    np.arange(32, dtype=np.uint16).tofile(folder / "train.bin")
    with pytest.raises(UserError, match="has 32 tokens, not more than block_size=32"):
        TokenData(str(folder), 32, 4, "cpu")


def test_character_ids_without_their_meta_pkl_are_not_read_as_gpt2(char_data, tmp_path):
    folder = copy_data(char_data, tmp_path, meta=False)
    with pytest.raises(UserError, match=f"look like character ids whose {META_FILE} is missing"):
        TokenData(folder, 32, 4, "cpu").check_token_ids(50257, "GPT-2 BPE")
    # GPT-2 text without meta.pkl is what it should be
    bpe = tmp_path / "bpe"
    bpe.mkdir()
    text = open(os.path.join(REPO, "README.md")).read()[:20000]
    np.array(gpt2_tokenizer().encode(text), dtype=np.uint16).tofile(bpe / "train.bin")
    TokenData(str(bpe), 32, 4, "cpu").check_token_ids(50257, "GPT-2 BPE")


def test_a_damaged_augmenter_cache_record_is_invalid_not_missing(char_data, tmp_path):
    folder = copy_data(char_data, tmp_path)
    cfg = TrainConfig(data_dir=folder, variant="sigmoid", augment=True, augment_source="cache")
    bin_path, json_path = cache_paths(folder, cache_name(cfg))
    with pytest.raises(UserError, match="is missing"):
        open_cache(cfg, folder, "cpu")
    with open(json_path, "w") as f:
        f.write('{"format": 2, "comple')  # cut short
    with pytest.raises(UserError, match="is invalid or damaged"):
        open_cache(cfg, folder, "cpu")


# --- a stuck DDP rank -----------------------------------------------------------------------


def test_the_collective_timeout_reaches_the_process_group(monkeypatch):
    import torch.distributed as dist

    from nanoGPT.runtime import setup_runtime

    seen = {}
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: seen.update(kwargs))
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)
    setup_runtime(TrainConfig(device="cpu", collective_timeout_s=42))
    assert seen["backend"] == "gloo" and seen["timeout"].total_seconds() == 42
    with pytest.raises(UserError, match="collective_timeout_s must be in"):
        from nanoGPT.config import validate_config

        validate_config(TrainConfig(collective_timeout_s=0))


def test_a_timed_out_collective_is_one_line_other_errors_are_not_touched():
    from nanoGPT.runtime import Runtime
    from nanoGPT.train import collective_timeouts

    cfg, rt = TrainConfig(collective_timeout_s=3), Runtime("cpu", "cpu", torch.float32, 1, 1, 2, True)
    with pytest.raises(
        UserError, match="rank 1: another process did not answer within collective_timeout_s=3 s"
    ):
        with collective_timeouts(cfg, rt):
            raise RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 3000ms for recv")
    with pytest.raises(RuntimeError, match="shapes do not match"):
        with collective_timeouts(cfg, rt):
            raise RuntimeError("shapes do not match")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow  # two training processes joining a gloo group, then a 3 s timeout: ~15 s
def test_a_frozen_rank_ends_the_run_within_the_collective_timeout(char_data, tmp_path):
    args = [sys.executable, os.path.join(REPO, "train.py"), f"--data_dir={char_data}"]
    args += [f"--out_dir={tmp_path / 'out'}", f"--log_dir={tmp_path / 'logs'}", "--device=cpu", "--n_layer=1"]
    args += ["--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4", "--max_iters=100000"]
    args += ["--eval_iters=1", "--eval_interval=100000", "--log_interval=1", "--collective_timeout_s=3"]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    env["OMP_NUM_THREADS"] = "1"
    ranks = [
        subprocess.Popen(
            args,
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE if r == 0 else subprocess.DEVNULL,
            stderr=subprocess.PIPE if r == 0 else subprocess.DEVNULL,
            text=True,
        )
        for r in range(2)
    ]
    try:
        for line in ranks[0].stdout:  # training under way on both ranks: freeze rank 1
            if line.startswith("iter 3:"):
                break
        ranks[1].send_signal(signal.SIGSTOP)
        frozen_at = time.time()
        err = ranks[0].communicate(timeout=120)[1]
        assert ranks[0].returncode == 2 and time.time() - frozen_at < 60  # not PyTorch's 30 minutes
        assert err.strip().splitlines() == [
            "error: rank 0: another process did not answer within collective_timeout_s=3 s (it stopped, "
            "froze or is stuck); rerun with init_from=auto to resume from the last checkpoint"
        ]
    finally:
        for rank in ranks:
            rank.kill()
            rank.wait()
