"""Data preparation: .bin/meta.pkl writing, the Shakespeare corpus, and each prepare script."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import nanoGPT.prepare as prep
from nanoGPT import hub
from nanoGPT.errors import UserError
from nanoGPT.prepare import read_tokens, split_text, write_meta, write_tokens
from nanoGPT.tokenizer import gpt2_tokenizer, load_tokenizer
from tests.helpers import run_checked

REPO = Path(__file__).resolve().parent.parent


def load_script(name: str):
    """data/<name>/prepare.py as a module (the scripts live outside any package)."""
    path = REPO / "data" / name / "prepare.py"
    spec = importlib.util.spec_from_file_location(f"prepare_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decoded(out_dir: Path, split: str) -> str:
    return load_tokenizer(str(out_dir)).decode(read_tokens(str(out_dir / f"{split}.bin")))


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return prep.shakespeare_text()


# --- helpers -----------------------------------------------------------------------------


def test_split_text_cuts_at_a_line_start():
    text = "".join(f"line {i}\n" for i in range(100))
    train, val = split_text(text, 0.1)
    assert train + val == text
    assert train.endswith("\n") and val.startswith("line ")
    assert 0.08 < len(val) / len(text) < 0.11
    one_line = "x" * 50
    assert split_text(one_line, 0.2) == ("x" * 40, "x" * 10)
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(UserError, match="val_fraction"):
            split_text(text, bad)


def test_write_tokens_round_trip_and_range(tmp_path):
    path = str(tmp_path / "x.bin")
    assert write_tokens(path, [[1, 2, 3], np.array([65535, 0])]) == 5
    assert read_tokens(path).tolist() == [1, 2, 3, 65535, 0]
    assert read_tokens(path).dtype == np.uint16
    with pytest.raises(UserError, match="65536"):
        write_tokens(str(tmp_path / "y.bin"), [[1, 65536]])
    assert os.listdir(tmp_path) == ["x.bin"]  # nothing half-written


def test_write_meta_is_atomic(tmp_path):
    write_meta(str(tmp_path / "meta.pkl"), {"vocab_size": 1, "itos": {0: "a"}, "stoi": {"a": 0}})
    assert os.listdir(tmp_path) == ["meta.pkl"]
    assert load_tokenizer(str(tmp_path)).vocab_size == 1


def test_parse_args_types_and_unknown_keys():
    defaults = {"out_dir": "here", "val_fraction": 0.1, "num_proc": 2}
    options = prep.parse_args(["--val_fraction=0.25", "--num_proc=4"], defaults)
    assert options == {"out_dir": "here", "val_fraction": 0.25, "num_proc": 4}
    with pytest.raises(UserError, match=r"--vl_fraction.*--out_dir, --val_fraction, --num_proc"):
        prep.parse_args(["--vl_fraction=0.2"], defaults)
    with pytest.raises(UserError, match="--key=value"):
        prep.parse_args(["input.txt"], defaults)
    with pytest.raises(UserError, match="--num_proc must be int"):
        prep.parse_args(["--num_proc=many"], defaults)


# "$" stands for a trailing space (Markdown's line break), kept out of the source file
PLAY_MARKDOWN = """# Hamlet

## ACT I

### SCENE I. Elsinore. A platform before the castle.

_FRANCISCO at his post. Enter to him BERNARDO_

**BERNARDO**$$
Who's there?


**FRANCISCO**$$
For this relief much thanks: 'tis bitter cold,$$
And I am sick at heart.

**LYSANDER**$$
__\\[Awaking]_$$
'Ladies,'\\--or 'Fair-ladies'

*Enter King Edward, Derby, and$
Artois.*
""".replace("$", " ")

PLAY_TEXT = """Hamlet

ACT I

SCENE I. Elsinore. A platform before the castle.

FRANCISCO at his post. Enter to him BERNARDO

BERNARDO:
Who's there?

FRANCISCO:
For this relief much thanks: 'tis bitter cold,
And I am sick at heart.

LYSANDER:
[Awaking]
'Ladies,'--or 'Fair-ladies'

Enter King Edward, Derby, and
Artois.
"""


def test_play_markdown_to_text():
    assert prep.play_markdown_to_text(PLAY_MARKDOWN) == PLAY_TEXT


def test_shakespeare_text_is_plain_play_text(shakespeare):
    assert shakespeare.startswith("A Midsummer Night's Dream\n\nACT I\n\nSCENE I.")
    assert "Hamlet\n\nACT I\n" in shakespeare
    assert "BERNARDO:\nWho's there?\n\nFRANCISCO:\nNay, answer me" in shakespeare
    assert shakespeare.count("\n\n\nThe Tempest\n") == 1  # plays apart by two blank lines
    assert len(re.findall(r"^ACT I$", shakespeare, flags=re.M)) >= 36
    assert not re.search(r"[*_#\\]| $", shakespeare, flags=re.M)  # no Markdown left over
    assert 4_500_000 < len(shakespeare) < 5_500_000


# --- the prepare scripts -----------------------------------------------------------------


def test_shakespeare_char_prepare_on_the_real_corpus(tmp_path, shakespeare):
    counts = load_script("shakespeare_char").prepare(out_dir=str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["meta.pkl", "train.bin", "val.bin"]
    train, val = decoded(tmp_path, "train"), decoded(tmp_path, "val")
    assert train + val == shakespeare
    assert counts == {"train": len(train), "val": len(val)}
    assert 0.09 < len(val) / len(shakespeare) < 0.11 and train.endswith("\n")


def test_shakespeare_gpt2_prepare(tmp_path, monkeypatch, shakespeare):
    part = shakespeare[:200_000]
    monkeypatch.setattr(prep, "shakespeare_text", lambda: part)
    (tmp_path / "meta.pkl").write_bytes(b"stale char vocabulary")
    counts = load_script("shakespeare").prepare(out_dir=str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["train.bin", "val.bin"]  # GPT-2: no meta.pkl
    train, val = decoded(tmp_path, "train"), decoded(tmp_path, "val")
    assert train + val == part
    assert read_tokens(str(tmp_path / "train.bin")).tolist() == gpt2_tokenizer().encode(train)
    assert counts["train"] > 9 * counts["val"] * 0.8


def test_text_prepare_char_and_gpt2(tmp_path, shakespeare):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text(shakespeare[:30_000].rstrip("\n"), encoding="utf-8")  # no final newline
    second.write_text("Café — done.\n", encoding="utf-8")
    whole = shakespeare[:30_000].rstrip("\n") + "\nCafé — done.\n"
    text_prepare = load_script("text").prepare
    for tokenizer in ("char", "gpt2"):
        out = tmp_path / tokenizer
        counts = text_prepare(
            input=f"{first},{second}", tokenizer=tokenizer, val_fraction=0.2, out_dir=str(out)
        )
        assert decoded(out, "train") + decoded(out, "val") == whole
        assert (out / "meta.pkl").exists() == (tokenizer == "char")
        assert decoded(out, "val").endswith("Café — done.\n")
        assert counts["val"] > 0


def test_text_prepare_rejects_bad_input(tmp_path):
    text_prepare = load_script("text").prepare
    empty, binary = tmp_path / "empty.txt", tmp_path / "latin1.txt"
    empty.write_text("\n\n")
    binary.write_bytes("déjà".encode("latin-1"))
    with pytest.raises(UserError, match="no text"):
        text_prepare(input=str(empty), out_dir=str(tmp_path / "o"))
    with pytest.raises(UserError, match="not UTF-8"):
        text_prepare(input=str(binary), out_dir=str(tmp_path / "o"))
    with pytest.raises(UserError, match="not found"):
        text_prepare(input=str(tmp_path / "missing.txt"), out_dir=str(tmp_path / "o"))
    with pytest.raises(UserError, match="char, gpt2"):
        text_prepare(input=str(binary), tokenizer="bpe", out_dir=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def wikitext_rows(text: str, lines: int, start: int = 0) -> list[str]:
    """WikiText-shaped rows: each a line ending in '\\n', with empty rows between."""
    rows = [""]
    for line in text.splitlines()[start : start + lines]:
        rows += [f" {line}\n", ""] if line else []
    return rows


@pytest.fixture
def wikitext_files(tmp_path, shakespeare):
    import pyarrow as pa
    import pyarrow.parquet as pq

    splits = {
        "train": wikitext_rows(shakespeare, 600),
        "validation": wikitext_rows(shakespeare, 60, start=600),
        "test": wikitext_rows(shakespeare, 60, start=660) + [" = Café — 日本 = \n"],
    }
    paths = {}
    for split, rows in splits.items():
        pq.write_table(pa.table({"text": rows}), tmp_path / f"{split}.parquet")
        (tmp_path / f"{split}.txt").write_text("".join(rows), encoding="utf-8")
        (tmp_path / f"{split}.jsonl").write_text(
            "".join(json.dumps({"text": row}) + "\n" for row in rows), encoding="utf-8"
        )
        paths[split] = {ext: tmp_path / f"{split}.{ext}" for ext in ("parquet", "txt", "jsonl")}
    return {split: "".join(rows) for split, rows in splits.items()}, paths


@pytest.mark.parametrize("ext", ["parquet", "txt", "jsonl"])
def test_wikitext_prepare_from_local_files(tmp_path, wikitext_files, ext, monkeypatch):
    texts, paths = wikitext_files
    spec = ",".join(f"{split}:{paths[split][ext]}" for split in ("train", "validation", "test"))
    # one row per worker so the parallel map really runs in 2 processes
    monkeypatch.setattr(prep, "_ROWS_PER_WORKER", 1)
    out = tmp_path / "out"
    counts = load_script("wikitext").prepare(
        out_dir=str(out), input=spec, num_proc=2, cache_dir=str(tmp_path / "hf")
    )
    assert sorted(os.listdir(out)) == ["test.bin", "train.bin", "val.bin"]
    for split, bin_name in (("train", "train"), ("validation", "val"), ("test", "test")):
        assert decoded(out, bin_name) == texts[split]
        assert counts[bin_name] == len(read_tokens(str(out / f"{bin_name}.bin")))
    assert counts["train"] > 5 * counts["val"]


def test_wikitext_input_errors(tmp_path, wikitext_files):
    _, paths = wikitext_files
    wikitext = load_script("wikitext")
    with pytest.raises(UserError, match="no file for test"):
        wikitext.prepare(
            input=f"train:{paths['train']['txt']},validation:{paths['validation']['txt']}",
            out_dir=str(tmp_path),
        )
    mixed = (
        f"train:{paths['train']['txt']},validation:{paths['validation']['parquet']},"
        f"test:{paths['test']['txt']}"
    )
    with pytest.raises(UserError, match="not a mix"):
        wikitext.prepare(input=mixed, out_dir=str(tmp_path))
    with pytest.raises(UserError, match="SPLIT:FILE"):
        wikitext.prepare(input=f"dev:{paths['train']['txt']}", out_dir=str(tmp_path))
    with pytest.raises(UserError, match="wikitext-2-raw-v1"):
        wikitext.prepare(config="wikitext-3", out_dir=str(tmp_path))


def unreachable_hub(monkeypatch) -> None:
    """Make the hub check see no network (and no proxy that would skip it)."""

    def no_network(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(hub.socket, "create_connection", no_network)
    for name in (
        "HF_HUB_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_ENDPOINT",
        *hub._PROXY_VARIABLES,
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("name", ["wikitext", "tinystories"])
def test_hub_data_set_unreachable_fails_fast(name, tmp_path, monkeypatch):
    unreachable_hub(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(UserError, match="cannot reach huggingface.co.*--input=train:FILE"):
        load_script(name).prepare(out_dir=str(tmp_path))
    assert time.perf_counter() - start < 8  # not the ~24 s of hub retries (slack for a loaded CI)
    assert not os.listdir(tmp_path)


def run_script(name: str, *args: str, returncode: int = 0, **env: str) -> subprocess.CompletedProcess:
    """data/<name>/prepare.py as a command; another exit code fails showing the script's output."""
    return run_checked(
        [sys.executable, str(REPO / "data" / name / "prepare.py"), *args],
        expect_returncode=returncode,
        timeout=120,
        env={**os.environ, **env},
        cwd=REPO,
    )


def test_wikitext_offline_cli_prints_one_error_line(tmp_path):
    start = time.perf_counter()
    result = run_script(
        "wikitext",
        f"--out_dir={tmp_path}",
        "--config=wikitext-2-raw-v1",
        f"--cache_dir={tmp_path / 'hf'}",
        returncode=2,
        HF_DATASETS_OFFLINE="1",
    )
    assert time.perf_counter() - start < 20  # not the ~24 s of hub retries
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--input=" in lines[0]
    assert not (tmp_path / "train.bin").exists()


def test_text_cli_end_to_end(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20)
    result = run_script("text", f"--input={source}", f"--out_dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr
    assert "train.bin:" in result.stdout and "val.bin:" in result.stdout
    bad = run_script("text", f"--input={source}", "--tokeniser=char", returncode=2)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: unknown option --tokeniser; valid options: --input, --tokenizer, --val_fraction, --out_dir"
    ]
