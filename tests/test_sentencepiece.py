"""SentencePiece tokenizers, and the TinyStories and math prepare scripts on local files.

The hub data sets cannot be reached here; their scripts run on small parquet and text files
through the same `load_dataset` code, and their offline failure is checked to be one line.
"""

import os
import pickle

import numpy as np
import pytest
import torch

from nanoGPT.errors import UserError
from nanoGPT.prepare import read_tokens, shakespeare_splits
from nanoGPT.tokenizer import GPT2_EOT, SentencePieceTokenizer, load_tokenizer
from nanoGPT.train import train
from tests.conftest import tiny_config
from tests.test_prepare import load_script, run_script

UNUSUAL = "Café — 日本語  two  spaces,\ttab, digits 1234\n\n\nand a last line without newline"


@pytest.fixture(scope="module")
def plays():
    _, splits = shakespeare_splits()
    return {"train": splits["train"][:300_000], "val": splits["val"][:20_000]}


@pytest.fixture(scope="module")
def sp_tokenizer(plays, tmp_path_factory) -> SentencePieceTokenizer:
    out_dir = tmp_path_factory.mktemp("sp")
    return SentencePieceTokenizer.train([plays["train"]], str(out_dir), vocab_size=700)


def test_round_trip_is_exact(sp_tokenizer, plays):
    for text in (plays["val"], UNUSUAL, " leading space", ""):
        ids = sp_tokenizer.encode(text)
        assert sp_tokenizer.decode(ids) == text
        assert max(ids, default=0) < sp_tokenizer.vocab_size == 700
    # it compresses: real pieces, not one byte per id
    assert len(sp_tokenizer.encode(plays["val"])) < 0.5 * len(plays["val"])


def test_end_of_text_is_one_special_id(sp_tokenizer):
    eot = sp_tokenizer.eot_id
    assert eot is not None and sp_tokenizer.processor.id_to_piece(eot) == GPT2_EOT
    ids = sp_tokenizer.encode(f"The end.{GPT2_EOT}Once upon")
    assert ids.count(eot) == 1
    assert sp_tokenizer.decode(ids) == f"The end.{GPT2_EOT}Once upon"
    assert sp_tokenizer.decode([eot]) == GPT2_EOT
    assert eot not in sp_tokenizer.encode("<|endof text|> <| endoftext |>")


def test_token_byte_lengths_add_up_to_the_utf8_bytes(sp_tokenizer, plays):
    lengths = sp_tokenizer.token_byte_lengths()
    for text in (plays["val"], UNUSUAL):
        ids = sp_tokenizer.encode(text)
        assert lengths[ids].sum() == len(text.encode("utf-8"))
    sp = sp_tokenizer.processor
    space_pieces = [i for i in range(sp_tokenizer.vocab_size) if sp.id_to_piece(i) == "\u2581the"]
    assert lengths[space_pieces].tolist() == [4]  # the meta space counts as one byte
    assert lengths[sp.piece_to_id("<0xE6>")] == 1  # byte fallback pieces
    assert lengths[sp_tokenizer.eot_id] == 0 and lengths[0] == 0  # separator and <unk>


def test_load_tokenizer_finds_the_model_through_meta_pkl(sp_tokenizer, tmp_path):
    from nanoGPT.documents import record_tokenizer

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "tokenizer.model").write_bytes(open(sp_tokenizer.model_path, "rb").read())
    record_tokenizer(str(data_dir), SentencePieceTokenizer(str(data_dir / "tokenizer.model")))
    loaded = load_tokenizer(str(data_dir))
    assert loaded.kind == "sentencepiece" and loaded.vocab_size == 700
    assert loaded.encode(UNUSUAL) == sp_tokenizer.encode(UNUSUAL)
    meta = pickle.loads((data_dir / "meta.pkl").read_bytes())
    for bad, message in (
        ({**meta, "vocab_size": 512}, "prepare the data again"),
        ({**meta, "model_file": "../tokenizer.model"}, "name of a file"),
        ({**meta, "model_file": "gone.model"}, "missing"),
    ):
        (data_dir / "meta.pkl").write_bytes(pickle.dumps(bad))
        with pytest.raises(UserError, match=message):
            load_tokenizer(str(data_dir))


def test_a_checkpoint_refuses_another_sentencepiece_model_of_the_same_size(sp_tokenizer, plays, tmp_path):
    from nanoGPT.checkpoint import check_tokenizer, tokenizer_record

    other = SentencePieceTokenizer.train([plays["train"][150_000:]], str(tmp_path), vocab_size=700)
    ckpt = {"tokenizer": tokenizer_record(sp_tokenizer), "model_args": {"vocab_size": 700}}
    check_tokenizer(ckpt, sp_tokenizer, "data/a")  # its own model passes
    with pytest.raises(UserError, match="same size, but another SentencePiece model file"):
        check_tokenizer(ckpt, other, "data/b")
    older = {**ckpt, "tokenizer": {"kind": "sentencepiece", "vocab_size": 700}}
    check_tokenizer(older, other, "data/b")  # a record from before the hash: size only


def test_too_large_a_vocabulary_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="SentencePiece training failed"):
        SentencePieceTokenizer.train(["a tiny text\n"], str(tmp_path), vocab_size=5000, model_type="unigram")


# --- TinyStories ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stories(plays, tmp_path_factory):
    """Paragraphs of the plays standing in for stories: parquet rows, and the raw text format
    (stories separated by <|endoftext|> lines)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path_factory.mktemp("stories")
    paragraphs = [p.strip("\n") for p in plays["train"].split("\n\n") if p.strip()]
    rows = {"train": paragraphs[:-60], "validation": paragraphs[-60:] + ["Café — 日本"]}
    files = {}
    for split, texts in rows.items():
        pq.write_table(pa.table({"text": texts}), folder / f"{split}.parquet")
        (folder / f"{split}.txt").write_text("".join(f"{t}\n{GPT2_EOT}\n" for t in texts), encoding="utf-8")
        files[split] = {ext: folder / f"{split}.{ext}" for ext in ("parquet", "txt")}
    return rows, files


def input_spec(files, ext, splits=("train", "validation")):
    return ",".join(f"{split}:{files[split][ext]}" for split in splits)


@pytest.mark.parametrize("tokenizer", ["sp", "gpt2"])
def test_tinystories_prepare_from_parquet(stories, tokenizer, tmp_path):
    rows, files = stories
    out = tmp_path / "out"
    counts = load_script("tinystories").prepare(
        out_dir=str(out),
        tokenizer=tokenizer,
        vocab_size=600,
        input=input_spec(files, "parquet"),
        cache_dir=str(tmp_path / "hf"),
    )
    tok = load_tokenizer(str(out))
    assert tok.kind == ("sentencepiece" if tokenizer == "sp" else "gpt2")
    expected_files = {"train.bin", "val.bin"} | (
        {"meta.pkl", "tokenizer.model"} if tokenizer == "sp" else set()
    )
    assert set(os.listdir(out)) == expected_files
    for split, bin_name in (("train", "train"), ("validation", "val")):
        ids = read_tokens(str(out / f"{bin_name}.bin"))
        assert counts[bin_name] == len(ids)
        assert int((ids == tok.eot_id).sum()) == len(rows[split])  # one separator per story
        assert tok.decode(ids) == "".join(t + GPT2_EOT for t in rows[split])


def test_tinystories_prepare_from_raw_text_keeps_the_files_separators(stories, tmp_path):
    rows, files = stories
    out = tmp_path / "out"
    load_script("tinystories").prepare(
        out_dir=str(out),
        tokenizer="sp",
        vocab_size=600,
        input=input_spec(files, "txt"),
        cache_dir=str(tmp_path / "hf"),
    )
    tok = load_tokenizer(str(out))
    val = read_tokens(str(out / "val.bin"))
    assert tok.decode(val) == files["validation"]["txt"].read_text(encoding="utf-8")
    assert int((val == tok.eot_id).sum()) == len(rows["validation"])


def test_llama_trunk_trains_on_sentencepiece_stories(stories, tmp_path):
    _, files = stories
    data = tmp_path / "data"
    load_script("tinystories").prepare(
        out_dir=str(data),
        tokenizer="sp",
        vocab_size=600,
        input=input_spec(files, "parquet"),
        cache_dir=str(tmp_path / "hf"),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small is faster on one thread
    cfg = tiny_config(
        str(data),
        tmp_path,
        max_iters=60,
        eval_interval=60,
        eval_iters=2,
        norm="rmsnorm",
        mlp="swiglu",
        pos_emb="rope",
        bias=False,
        learning_rate=1e-2,
    )
    try:
        metrics = train(cfg)
    finally:
        torch.set_num_threads(threads)
    assert metrics["val/nll"] < np.log(600) - 0.8  # from ~ln(vocab) down
    # bits per byte counts the pieces' bytes: a few bits per byte, not per piece
    assert 0.5 < metrics["val/bpb"] < metrics["val/nll"] / np.log(2)


@pytest.mark.parametrize("name, args", [("tinystories", ["--tokenizer=sp"]), ("math", [])])
def test_offline_cli_prints_one_error_line(name, args, tmp_path):
    result = run_script(
        name,
        f"--out_dir={tmp_path}",
        f"--cache_dir={tmp_path / 'hf'}",
        *args,
        returncode=2,
        HF_DATASETS_OFFLINE="1",
        HF_HUB_OFFLINE="1",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--input=" in lines[0]
    assert not [n for n in os.listdir(tmp_path) if n.endswith((".bin", ".pkl", ".model"))]


# --- math ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def math_files(plays, tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path_factory.mktemp("math")
    lines = [line for line in plays["train"].splitlines() if line.strip()]
    college = {
        "instruction": [f"Solve {i} + {i + 1} = ?" for i in range(40)],
        "output": lines[:40],
        "extra": ["x"] * 40,
    }
    web = {
        "text": ["\n".join(lines[i : i + 5]) + " $x^2$" for i in range(100, 300, 5)],
        "url": ["http://example.org"] * 40,
    }
    pq.write_table(pa.table(college), folder / "college.parquet")
    pq.write_table(pa.table(web), folder / "owm.parquet")
    pq.write_table(pa.table({"question": ["q"] * 3, "answer": ["a"] * 3}), folder / "other.parquet")
    return folder, college, web


def test_math_prepare_streams_both_sources_with_val_first(math_files, tmp_path):
    folder, college, web = math_files
    out = tmp_path / "out"
    counts = load_script("math").prepare(
        out_dir=str(out),
        input=f"college:{folder / 'college.parquet'},owm:{folder / 'owm.parquet'}",
        val_docs=4,
        college_docs=30,
        owm_docs=0,
        cache_dir=str(tmp_path / "hf"),
    )
    tok = load_tokenizer(str(out))
    documents = [f"{q}\n\n{a}" for q, a in zip(college["instruction"], college["output"])]
    val = documents[:4] + web["text"][:4]
    train_docs = documents[4:34] + web["text"][4:]
    assert tok.decode(read_tokens(str(out / "val.bin"))) == "".join(d + GPT2_EOT for d in val)
    assert tok.decode(read_tokens(str(out / "train.bin"))) == "".join(d + GPT2_EOT for d in train_docs)
    assert counts["val"] == len(read_tokens(str(out / "val.bin")))


def test_math_prepare_with_sentencepiece_on_one_source(math_files, tmp_path):
    folder, _, web = math_files
    out = tmp_path / "out"
    load_script("math").prepare(
        out_dir=str(out),
        sources="owm",
        tokenizer="sp",
        vocab_size=400,
        input=f"owm:{folder / 'owm.parquet'}",
        val_docs=2,
        cache_dir=str(tmp_path / "hf"),
    )
    tok = load_tokenizer(str(out))
    assert tok.kind == "sentencepiece"
    assert tok.decode(read_tokens(str(out / "val.bin"))) == "".join(d + GPT2_EOT for d in web["text"][:2])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sources="college,arxiv"), "--sources must name some of college, owm"),
        (dict(sources="college", input="college:{folder}/other.parquet"), "instruction and output"),
        (dict(sources="owm", input="owm:{folder}/college.parquet"), "no 'text' column"),
        (dict(sources="owm", input="owm:{folder}/owm.parquet", tokenizer="bpe"), "--tokenizer"),
    ],
)
def test_math_prepare_errors(math_files, tmp_path, kwargs, message):
    folder, _, _ = math_files
    kwargs = {k: v.format(folder=folder) for k, v in kwargs.items()}
    with pytest.raises(UserError, match=message):
        load_script("math").prepare(
            out_dir=str(tmp_path / "out"), val_docs=1, cache_dir=str(tmp_path / "hf"), **kwargs
        )


def test_prepare_scripts_run_as_commands(stories, tmp_path):
    _, files = stories
    out = tmp_path / "out"
    result = run_script(
        "tinystories",
        f"--out_dir={out}",
        f"--input={input_spec(files, 'parquet')}",
        "--tokenizer=sp",
        "--vocab_size=600",
        f"--cache_dir={tmp_path / 'hf'}",
    )
    assert "tokenizer.model: 600 pieces" in result.stdout and "meta.pkl" in result.stdout
