"""A preparation replaces a data folder's files all together or not at all: a failure or a kill
before the end leaves the previous data set byte for byte; one cut short while moving its files
in is finished by the next reader (training) or preparation."""

import os
import subprocess
import sys

import pytest

from nanoGPT import atomic
from nanoGPT.atomic import STAGING_PREFIX
from nanoGPT.data import TokenData
from nanoGPT.errors import UserError
from nanoGPT.prepare import read_tokens, shakespeare_splits, staged_dataset, write_split, write_text_dataset
from nanoGPT.tokenizer import CharTokenizer, gpt2_tokenizer, load_tokenizer

PREVIOUS = {"train.bin", "val.bin", "test.bin", "meta.pkl"}


class Killed(BaseException):
    """What a monkeypatched step raises: the process dies there."""


def snapshot(folder):
    """Every file of `folder` (the prepare script beside them too) and its bytes."""
    found = {}
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                found[name] = f.read()
    return found


@pytest.fixture(scope="module")
def texts():
    text, splits = shakespeare_splits()
    return text, {"train": splits["train"][:50_000], "val": splits["val"][:10_000]}


@pytest.fixture
def previous(tmp_path, texts):
    """A character-level data set with train, val and test, and a prepare.py beside it."""
    text, splits = texts
    folder = str(tmp_path / "data")
    write_text_dataset(folder, CharTokenizer.from_text(text), {**splits, "test": splits["val"][:5000]})
    with open(os.path.join(folder, "prepare.py"), "w") as f:
        f.write("# the script that made it\n")
    assert PREVIOUS < set(snapshot(folder))
    return folder


def test_a_prepare_failing_after_one_split_leaves_the_previous_set_byte_identical(previous):
    before = snapshot(previous)
    with pytest.raises(UserError, match="token id 65536 does not fit"):
        with staged_dataset(previous) as folder:
            write_split(folder, "train", [[1, 2, 3] * 100])
            write_split(folder, "val", [[1, 65536]])
    assert snapshot(previous) == before
    assert not [n for n in os.listdir(previous) if n.startswith(STAGING_PREFIX)]


def test_write_text_dataset_failing_on_its_second_split_changes_nothing(previous, texts, monkeypatch):
    before = snapshot(previous)
    tokenizer, encoded = gpt2_tokenizer(), []
    real_encode = tokenizer.encode

    def encode(text):
        encoded.append(text)
        return real_encode(text) if len(encoded) == 1 else [70_000]

    monkeypatch.setattr(tokenizer, "encode", encode)
    with pytest.raises(UserError, match="token id 70000"):
        write_text_dataset(previous, tokenizer, texts[1])
    assert len(encoded) == 2 and snapshot(previous) == before


def test_a_successful_prepare_replaces_every_file_of_the_set(previous, texts):
    write_text_dataset(previous, gpt2_tokenizer(), texts[1])
    names = set(os.listdir(previous))
    # GPT-2 BPE is "no meta.pkl"; the old test.bin would be evaluated on with the new ids
    assert names == {"train.bin", "val.bin", "prepare.py"}
    assert load_tokenizer(previous).kind == "gpt2"
    assert load_tokenizer(previous).decode(read_tokens(os.path.join(previous, "val.bin"))) == texts[1]["val"]


def test_a_kill_while_moving_in_is_finished_by_the_next_reader(previous, texts, monkeypatch):
    moved = []
    real_replace = os.replace

    def replace(src, dst):  # dies moving the second file of the set into the folder
        if os.path.dirname(dst) == previous:
            if moved:
                raise Killed
            moved.append(dst)
        return real_replace(src, dst)

    with monkeypatch.context() as patched:
        patched.setattr(atomic.os, "replace", replace)
        with pytest.raises(Killed):
            write_text_dataset(previous, gpt2_tokenizer(), texts[1])
    assert len(moved) == 1 and [
        n for n in os.listdir(previous) if n.startswith(STAGING_PREFIX)
    ]  # half swapped

    TokenData(previous, block_size=8, batch_size=2, device="cpu")  # what training opens first

    assert set(os.listdir(previous)) == {"train.bin", "val.bin", "prepare.py"}
    assert (
        load_tokenizer(previous).decode(read_tokens(os.path.join(previous, "train.bin"))) == texts[1]["train"]
    )


def test_a_dead_prepares_staging_folder_is_removed_a_live_ones_kept(previous, texts):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    leftovers = {
        f"{STAGING_PREFIX}{dead.stdout.strip()}-0123456789ab": False,
        f"{STAGING_PREFIX}{os.getpid()}-0123456789ab": True,
    }
    for name in leftovers:
        os.makedirs(os.path.join(previous, name))
        with open(os.path.join(previous, name, "train.bin"), "wb") as f:
            f.write(b"\0\0" * 10)
    write_text_dataset(previous, gpt2_tokenizer(), texts[1])
    for name, kept in leftovers.items():
        assert os.path.isdir(os.path.join(previous, name)) == kept
