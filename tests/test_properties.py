"""Property-based tests: the configurator, the tokenizers and the prepare scripts, fed random
and odd inputs, give a correct result or a UserError, never another exception."""

import dataclasses
import importlib.util
import os
import pickle
import tempfile
import typing

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nanoGPT.config import TrainConfig, apply_config
from nanoGPT.errors import UserError
from nanoGPT.prepare import parse_args, read_tokens
from nanoGPT.tokenizer import GPT2_EOT, META_FILE, CharTokenizer, gpt2_tokenizer, load_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELD_TYPES = typing.get_type_hints(TrainConfig)
KEYS = sorted(FIELD_TYPES)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=12))
python_values = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(),
    st.booleans(),
    st.text(max_size=12),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def assert_config_or_user_error(argv: list[str]) -> None:
    try:
        cfg = apply_config(TrainConfig(), argv)
    except UserError as err:
        # one line, unless it quotes an argument that holds a line break itself
        assert str(err).strip()
        assert "\n" not in str(err).strip() or any("\n" in arg for arg in argv)
        return
    for key, expected in FIELD_TYPES.items():
        value = getattr(cfg, key)
        assert isinstance(value, expected), (key, value)
        assert expected is bool or not isinstance(value, bool), (key, value)


@SETTINGS
@given(st.lists(st.tuples(keys, st.text(max_size=24)), max_size=6))
def test_configurator_command_line(pairs):
    assert_config_or_user_error([f"--{key}={text}" for key, text in pairs])


@SETTINGS
@given(st.lists(st.text(max_size=30), max_size=4))
def test_configurator_raw_arguments(argv):
    assert_config_or_user_error(argv)


@SETTINGS
@given(
    st.lists(st.tuples(keys, python_values), max_size=6),
    st.lists(st.tuples(st.sampled_from(KEYS), st.text(max_size=10)), max_size=2),
)
def test_configurator_config_files(assignments, overrides):
    lines = [f"{key} = {value!r}" if key.isidentifier() else f"{key!r}" for key, value in assignments]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "config.py")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        assert_config_or_user_error([path, *(f"--{k}={v}" for k, v in overrides)])


@SETTINGS
@given(st.binary(max_size=200))
def test_configurator_config_file_of_random_bytes(content):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "config.py")
        with open(path, "wb") as f:
            f.write(content)
        assert_config_or_user_error([path])


def test_a_correct_config_file_and_overrides_apply():
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "config.py")
        with open(path, "w") as f:
            f.write("import math\nn_layer = 3\nlearning_rate = 1\ninit_from = 'auto'\n")
        cfg = apply_config(TrainConfig(), [path, "--n_layer=5", "--compile=yes"])
    assert (cfg.n_layer, cfg.learning_rate, cfg.init_from, cfg.compile) == (5, 1.0, "auto", True)


@SETTINGS
@given(st.lists(st.text(max_size=20), max_size=4))
def test_prepare_option_parsing(argv):
    defaults = {"input": "", "val_fraction": 0.1, "num_proc": 4, "shuffle": False}
    try:
        options = parse_args(argv, defaults)
    except UserError:
        return
    assert {key: type(value) for key, value in options.items()} == {
        key: type(value) for key, value in defaults.items()
    }


# --- tokenizers ---------------------------------------------------------------------------


@SETTINGS
@given(st.text(min_size=1, max_size=200), st.text(max_size=50))
def test_char_tokenizer_round_trip(corpus, other):
    tokenizer = CharTokenizer.from_text(corpus)
    ids = tokenizer.encode(corpus)
    assert tokenizer.decode(ids) == corpus
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.token_byte_lengths()[ids].sum() == len(corpus.encode("utf-8"))
    try:
        other_ids = tokenizer.encode(other)
    except UserError:
        assert set(other) - set(corpus)
    else:
        assert tokenizer.decode(other_ids) == other
    # through meta.pkl, the way a data folder stores it
    restored = CharTokenizer.from_meta(pickle.loads(pickle.dumps(tokenizer.to_meta())))
    assert restored.encode(corpus) == ids


@SETTINGS
@given(st.text(max_size=300))
def test_gpt2_tokenizer_round_trip(text):
    tokenizer = gpt2_tokenizer()
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    # <|endoftext|> is a document boundary and counts no bytes (bits per byte)
    expected_bytes = len(text.replace(GPT2_EOT, "").encode("utf-8"))
    assert tokenizer.token_byte_lengths()[ids].sum() == expected_bytes


def test_gpt2_tokenizer_is_the_real_one():
    assert gpt2_tokenizer().encode("Hello World") == [15496, 2159]


pickled_data = st.recursive(
    st.one_of(st.integers(-3, 70), st.text(max_size=2), st.none(), st.booleans()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.integers(-1, 4), st.text(max_size=2)), inner, max_size=4),
    ),
    max_leaves=12,
)
meta_like = st.fixed_dictionaries(
    {"vocab_size": st.integers(-1, 4), "itos": pickled_data, "stoi": pickled_data}
)


@SETTINGS
@given(st.one_of(st.binary(max_size=100), pickled_data.map(pickle.dumps), meta_like.map(pickle.dumps)))
@example(pickle.dumps({"vocab_size": 0, "itos": {0: None, "": None}, "stoi": []}))
def test_any_meta_pkl_gives_a_tokenizer_or_a_user_error(content):
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, META_FILE), "wb") as f:
            f.write(content)
        try:
            tokenizer = load_tokenizer(folder)
        except UserError:
            return
    chars = "".join(tokenizer.itos[i] for i in range(tokenizer.vocab_size))
    assert tokenizer.decode(tokenizer.encode(chars)) == chars


# --- prepare scripts ----------------------------------------------------------------------


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(
        f"prepare_{name}", os.path.join(REPO, "data", name, "prepare.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


text_prepare = _load_script("text")
odd_text = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda t: t.encode("utf-8")),
    st.text(alphabet=" \t\r\n\x0b\x0c\u00a0\u2028", max_size=40).map(lambda t: t.encode("utf-8")),
    st.text(min_size=1, max_size=60).map(lambda t: (t * 40).encode("utf-8")),  # long lines
)


def assert_prepared_or_user_error(content: bytes, tokenizer: str, val_fraction: float) -> None:
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "input.txt")
        with open(source, "wb") as f:
            f.write(content)
        out_dir = os.path.join(folder, "out")
        try:
            counts = text_prepare.prepare(
                input=source, tokenizer=tokenizer, val_fraction=val_fraction, out_dir=out_dir
            )
        except UserError as err:
            assert str(err) and "\n" not in str(err).strip()
            return
        # a result: the .bin files decode back to exactly the input text (read as text:
        # universal newlines, a final newline added where missing)
        text = content.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
        text = text if text.endswith("\n") else text + "\n"
        decoder = load_tokenizer(out_dir)
        decoded = ""
        for split in ("train", "val"):
            ids = read_tokens(os.path.join(out_dir, f"{split}.bin"))
            assert len(ids) == counts[split] > 0
            decoded += decoder.decode(ids)
        assert decoded == text


@SETTINGS
@given(odd_text, st.sampled_from(["char", "gpt2"]), st.floats(-0.5, 1.5))
def test_text_prepare_on_odd_inputs(content, tokenizer, val_fraction):
    assert_prepared_or_user_error(content, tokenizer, val_fraction)


def test_text_prepare_on_a_huge_line():
    assert_prepared_or_user_error(("x" * 1_000_000 + "y").encode(), "char", 0.1)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "holds no text"),
        (b" \n\t\n", "holds no text"),
        (b"caf\xe9 au lait\n", "not UTF-8"),
    ],
)
def test_text_prepare_refuses_empty_whitespace_and_non_utf8_files(content, message):
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "input.txt")
        with open(source, "wb") as f:
            f.write(content)
        with pytest.raises(UserError, match=message):
            text_prepare.prepare(input=source, out_dir=os.path.join(folder, "out"))


def test_config_dataclass_has_only_plain_field_types():
    # the configurator checks values with isinstance: every key must have a plain type
    for f in dataclasses.fields(TrainConfig):
        assert FIELD_TYPES[f.name] in (int, float, bool, str), f.name
