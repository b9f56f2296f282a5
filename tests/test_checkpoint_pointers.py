"""ckpt.pt and best.pt are derived from the numbered checkpoints at every start: a save killed
in any phase, or a damaged link, is repaired to name the newest and the best valid ones. One
run per out_dir: a second one refuses, naming the first one's pid, and touches nothing."""

import os
import subprocess
import sys

import pytest

import sample  # the root script (pytest puts the repo root on sys.path)
from nanoGPT import checkpoint
from nanoGPT.checkpoint import (
    FORMAT,
    checkpoint_path,
    find_resume_checkpoint,
    load_checkpoint,
    lock_out_dir,
    remove_temp_files,
    repair_pointers,
    save_checkpoint,
)
from nanoGPT.errors import UserError
from nanoGPT.train import train
from tests.conftest import tiny_config


class Killed(BaseException):
    """What a monkeypatched step raises: the process dies there."""


def save(out_dir, it, loss, best):
    state = {"format": FORMAT, "iter_num": it, "best_val_loss": loss}
    return save_checkpoint(state, out_dir, it, best=best, keep=5)


def numbered(it):
    return f"ckpt-{it:06d}.pt"


def pointed(out_dir, which):
    return os.readlink(checkpoint_path(out_dir, which))


@pytest.fixture
def history(tmp_path):
    """Checkpoints 1 (best, 2.0), 2 (best, 1.5) and 3 (not better): best.pt names 2."""
    out_dir = str(tmp_path / "out")
    save(out_dir, 1, 2.0, True)
    save(out_dir, 2, 1.5, True)
    save(out_dir, 3, 1.5, False)
    return out_dir


def kill_at(monkeypatch, name, call=1):
    """Make checkpoint.<name> raise Killed on its `call`-th call (earlier calls run)."""
    real, calls = getattr(checkpoint, name), []

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise Killed(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, name, step)


# (step that dies, which call of it, newest valid checkpoint after the kill)
PHASES = [
    ("write_temp", 1, "ckpt-000003.pt"),  # while writing the checkpoint's temporary file
    ("atomic_write_bytes", 1, "ckpt-000003.pt"),  # while writing its checksum
    ("replace_with", 1, "ckpt-000003.pt"),  # checksum written, checkpoint not in place
    ("_point_link", 1, "ckpt-000004.pt"),  # checkpoint in place, neither link moved
    ("_point_link", 2, "ckpt-000004.pt"),  # best.pt moved, ckpt.pt not
    ("_remove_old_checkpoints", 1, "ckpt-000004.pt"),  # both moved, rotation not done
]


@pytest.mark.parametrize("step, call, newest", PHASES, ids=[f"{s}-{c}" for s, c, _ in PHASES])
def test_a_save_killed_in_any_phase_is_repaired(history, monkeypatch, step, call, newest):
    with monkeypatch.context() as patched:
        kill_at(patched, step, call)
        with pytest.raises(Killed):
            save(history, 4, 1.2, True)  # a new best
    best = "ckpt-000004.pt" if newest == "ckpt-000004.pt" else "ckpt-000002.pt"

    path, ckpt = find_resume_checkpoint(history)  # what training, compare and resume call first

    assert os.path.basename(path) == newest and ckpt["iter_num"] == int(newest[5:11])
    assert (pointed(history, "last"), pointed(history, "best")) == (newest, best)


def test_best_is_the_lowest_recorded_loss_not_the_newest_best(history):
    save(history, 4, 1.8, True)  # saved as best by a run that restarted from scratch: worse than 2
    os.remove(checkpoint_path(history, "best"))
    repair_pointers(history)
    assert (pointed(history, "last"), pointed(history, "best")) == ("ckpt-000004.pt", "ckpt-000002.pt")


@pytest.mark.parametrize("damaged, last, best", [(3, 2, 2), (2, 3, 1)])
def test_a_damaged_checkpoint_is_not_pointed_at(history, damaged, last, best):
    with open(os.path.join(history, numbered(damaged)), "ab") as f:
        f.write(b"x")  # no longer matches its checksum
    repair_pointers(history)
    assert (pointed(history, "last"), pointed(history, "best")) == (numbered(last), numbered(best))


def damage(link, how):
    os.remove(link)
    if how == "garbage":
        with open(link, "wb") as f:
            f.write(os.urandom(300))
    elif how == "dangling":
        os.symlink("ckpt-000099.pt", link)
    elif how == "loop":
        os.symlink(os.path.basename(link), link)
    elif how == "directory":
        os.makedirs(link)
        with open(os.path.join(link, "note.txt"), "w") as f:
            f.write("kept")
    elif how == "stale":
        os.symlink("ckpt-000001.pt", link)


@pytest.mark.parametrize("which", ["last", "best"])
@pytest.mark.parametrize("how", ["garbage", "dangling", "loop", "directory", "stale", "missing"])
def test_damaged_pointers_are_repaired_and_what_they_held_kept(history, which, how):
    link = checkpoint_path(history, which)
    damage(link, how)
    notes = []

    repair_pointers(history, report=notes.append)

    assert (pointed(history, "last"), pointed(history, "best")) == ("ckpt-000003.pt", "ckpt-000002.pt")
    assert load_checkpoint(link)["iter_num"] == (3 if which == "last" else 2)
    aside = [n for n in os.listdir(history) if n.startswith(os.path.basename(link) + ".invalid-")]
    assert len(aside) == len(notes) == (1 if how in ("garbage", "directory") else 0)
    if how == "directory":
        assert os.path.isfile(os.path.join(history, aside[0], "note.txt"))


def test_a_copy_where_links_are_missing_is_accepted(history):
    link = checkpoint_path(history, "last")
    os.remove(link)
    with open(os.path.join(history, "ckpt-000003.pt"), "rb") as src, open(link, "wb") as dst:
        dst.write(src.read())
    repair_pointers(history)
    assert not os.path.islink(link) and load_checkpoint(link)["iter_num"] == 3


def test_nothing_valid_leaves_the_links_alone(tmp_path):
    out_dir = str(tmp_path)
    with open(checkpoint_path(out_dir), "wb") as f:
        f.write(b"a hand-copied file")
    repair_pointers(out_dir)
    with open(checkpoint_path(out_dir), "rb") as f:
        assert f.read() == b"a hand-copied file"


def test_a_rerun_after_a_kill_before_the_links_repairs_them(char_data, tmp_path):
    """The issue's case: killed after the final checkpoint, before its links; the re-run
    resumes at max_iters and saves nothing, yet both links end up right."""
    cfg = tiny_config(char_data, tmp_path, max_iters=4, eval_interval=2, init_from="auto")
    train(cfg)
    assert load_checkpoint(os.path.join(cfg.out_dir, "ckpt-000004.pt"))["saved_as_best"] in (True, False)
    best = pointed(cfg.out_dir, "best")
    os.remove(checkpoint_path(cfg.out_dir, "best"))
    os.remove(checkpoint_path(cfg.out_dir, "last"))
    os.symlink("ckpt-000002.pt", checkpoint_path(cfg.out_dir, "last"))

    train(cfg)

    assert (pointed(cfg.out_dir, "last"), pointed(cfg.out_dir, "best")) == ("ckpt-000004.pt", best)


HOLD = (  # another run: holds the lock on argv[1] until its stdin closes
    "import sys\n"
    "from nanoGPT.checkpoint import lock_out_dir\n"
    "lock_out_dir(sys.argv[1])\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"
)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_second_lock_in_this_process_refuses_until_the_first_is_released(tmp_path):
    out_dir = str(tmp_path / "out")
    with lock_out_dir(out_dir):
        with pytest.raises(UserError, match=f"in use by another run \\(pid {os.getpid()}\\)"):
            lock_out_dir(out_dir)
    with lock_out_dir(out_dir):
        pass


def test_a_folder_that_cannot_be_locked_is_read_not_repaired(history, monkeypatch):
    os.remove(checkpoint_path(history, "last"))

    def read_only(path, *args, **kwargs):  # creating the lock file is refused, reading works
        if path.endswith("run.lock"):
            raise PermissionError(13, "Permission denied")
        return open(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "open", read_only, raising=False)  # lock_out_dir's open
    path, _ = find_resume_checkpoint(history)
    assert os.path.basename(path) == "ckpt-000003.pt"
    assert not os.path.lexists(checkpoint_path(history, "last"))
    with pytest.raises(UserError, match="cannot lock .*Permission denied"):
        lock_out_dir(history)


def test_a_second_run_refuses_with_the_holders_pid_and_touches_nothing(char_data, tmp_path):
    cfg = tiny_config(char_data, tmp_path, max_iters=2, eval_interval=2, init_from="auto")
    os.makedirs(cfg.out_dir)
    theirs = os.path.join(cfg.out_dir, ".tmp-99999-0123456789ab.pt")  # the live run's save in progress
    with open(theirs, "wb") as f:
        f.write(b"half a checkpoint")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, cfg.out_dir],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(UserError) as refused:
            train(cfg)
        assert f"pid {holder.pid}" in str(refused.value) and "\n" not in str(refused.value)
        assert remove_temp_files(cfg.out_dir) == [] and os.path.exists(theirs)
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the kernel drops the lock with the process
        holder.wait(timeout=60)

    train(cfg)  # the killed holder's lock is gone

    assert not os.path.exists(theirs)  # once the lock is held, leftovers are a dead run's
    with lock_out_dir(cfg.out_dir):  # and the run released its own when it ended
        pass


@pytest.mark.parametrize("which", ["last", "best"])
def test_sample_repairs_a_damaged_link_before_loading(char_data, tmp_path, which):
    cfg = tiny_config(char_data, tmp_path, max_iters=2, eval_interval=2, init_from="auto")
    train(cfg)
    damage(checkpoint_path(cfg.out_dir, which), "garbage")

    model, _ = sample.load_for_sampling(sample.SampleConfig(out_dir=cfg.out_dir, ckpt=which), "cpu")

    assert model.config.n_embd == cfg.n_embd and pointed(cfg.out_dir, which) == "ckpt-000002.pt"
