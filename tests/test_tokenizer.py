"""Tokenizers: GPT-2 BPE built offline, char vocabularies, meta.pkl loaded as data only."""

import pickle

import numpy as np
import pytest

from nanoGPT.errors import UserError
from nanoGPT.prepare import shakespeare_text, write_meta
from nanoGPT.tokenizer import CharTokenizer, gpt2_tokenizer, load_tokenizer

MULTIBYTE = "Café déjà vu — naïve façade, 日本語 and 🙂 emoji.\n"


@pytest.fixture(scope="module")
def shakespeare_slice() -> str:
    text = shakespeare_text()
    start = text.index("BERNARDO:\nWho's there?")
    return text[start : start + 20_000]


def test_gpt2_matches_reference_ids():
    tok = gpt2_tokenizer()
    assert tok.encode("Hello World") == [15496, 2159]
    assert (tok.kind, tok.vocab_size, tok.eot_id) == ("gpt2", 50257, 50256)
    assert tok.encode("<|endoftext|>") == [50256]
    assert gpt2_tokenizer() is tok  # built once


def test_gpt2_round_trip_on_shakespeare(shakespeare_slice):
    tok = gpt2_tokenizer()
    ids = tok.encode(shakespeare_slice)
    assert len(ids) < len(shakespeare_slice) / 2.5  # BPE merges, not one id per character
    assert tok.decode(ids) == shakespeare_slice
    assert tok.decode(np.array(ids, dtype=np.uint16)) == shakespeare_slice


@pytest.mark.parametrize("make", [lambda text: gpt2_tokenizer(), CharTokenizer.from_text])
def test_token_byte_lengths_add_up_to_the_utf8_size(make, shakespeare_slice):
    for text in (shakespeare_slice, MULTIBYTE):
        tok = make(text)
        lengths = tok.token_byte_lengths()
        assert lengths.shape == (tok.vocab_size,)
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert int(lengths[ids].sum()) == len(text.encode("utf-8"))


def test_gpt2_end_of_text_counts_no_bytes():
    assert gpt2_tokenizer().token_byte_lengths()[50256] == 0


def test_char_round_trip_and_meta(shakespeare_slice):
    tok = CharTokenizer.from_text(shakespeare_slice)
    assert tok.kind == "char" and tok.eot_id is None
    assert list(tok.itos.values()) == sorted(set(shakespeare_slice))
    ids = tok.encode(shakespeare_slice)
    assert len(ids) == len(shakespeare_slice)
    assert tok.decode(ids) == shakespeare_slice
    meta = tok.to_meta()
    assert meta["vocab_size"] == len(set(shakespeare_slice))
    assert meta["stoi"]["\n"] == 0 and meta["itos"][0] == "\n"
    again = CharTokenizer.from_meta(meta)
    assert again.encode(shakespeare_slice) == ids


def test_char_unknown_character_is_named():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(UserError, match=r"'z'.*U\+007A"):
        tok.encode("abz")


def test_load_tokenizer_follows_the_meta_pkl_convention(tmp_path):
    assert load_tokenizer(str(tmp_path)).kind == "gpt2"
    write_meta(str(tmp_path / "meta.pkl"), CharTokenizer.from_text("hello\n").to_meta())
    tok = load_tokenizer(str(tmp_path))
    assert tok.kind == "char" and tok.decode(tok.encode("hole\n")) == "hole\n"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_meta_pkl_of_every_protocol_loads(tmp_path, protocol):
    meta = CharTokenizer.from_text("To be, or not").to_meta()
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps(meta, protocol=protocol))
    assert load_tokenizer(str(tmp_path)).to_meta() == meta


class _OpensAFile:
    """Unpickling this calls builtins.open(path, "w"): a stand-in for any code execution."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _RunsAShellCommand:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("payload", [_OpensAFile, _RunsAShellCommand])
def test_malicious_meta_pkl_is_refused_without_running(tmp_path, payload):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    witness = tmp_path / "pwned"
    hostile = {"vocab_size": 1, "itos": {0: "a"}, "stoi": {"a": 0}, "x": payload(str(witness))}
    (data_dir / "meta.pkl").write_bytes(pickle.dumps(hostile))
    with pytest.raises(UserError, match="meta.pkl"):
        load_tokenizer(str(data_dir))
    assert not witness.exists()
    # the payload is live: a plain pickle.loads does run it
    pickle.loads((data_dir / "meta.pkl").read_bytes())
    assert witness.exists()


@pytest.mark.parametrize(
    "content",
    [
        b"not a pickle at all",
        pickle.dumps({"vocab_size": 3})[:-5],  # truncated
        pickle.dumps(["a", "b"]),  # not a dict
        pickle.dumps({"vocab_size": 2, "itos": {0: "a", 1: "b"}, "stoi": {"a": 1, "b": 0}}),
        pickle.dumps({"vocab_size": 1, "itos": {0: "ab"}, "stoi": {"ab": 0}}),
    ],
)
def test_bad_meta_pkl_is_a_user_error(tmp_path, content):
    (tmp_path / "meta.pkl").write_bytes(content)
    with pytest.raises(UserError, match="meta.pkl"):
        load_tokenizer(str(tmp_path))
