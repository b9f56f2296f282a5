"""The configurator: config files, --key=value overrides, type checks, clear errors."""

import concurrent.futures
import math
import os
import sys
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanoGPT.config import TrainConfig, apply_config, check_writable, validate_config
from nanoGPT.errors import UserError
from nanoGPT.train import train
from tests.conftest import tiny_config
from tests.helpers import run_checked

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_file_then_overrides(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text("import math\nn_layer = 3\nlearning_rate = 1e-3\n_private = 5\n")
    cfg = apply_config(
        TrainConfig(),
        [str(path), "--n_layer=5", "--dropout=0.1", "--compile=True", "--sample_prompt=The boy went"],
    )
    assert (cfg.n_layer, cfg.learning_rate, cfg.dropout, cfg.compile) == (5, 1e-3, 0.1, True)
    assert cfg.sample_prompt == "The boy went"


def test_int_is_accepted_for_a_float_key():
    assert apply_config(TrainConfig(), ["--learning_rate=1"]).learning_rate == 1.0


def test_unknown_key_names_the_closest_valid_keys():
    with pytest.raises(UserError, match="unknown config key n_layers.*n_layer"):
        apply_config(TrainConfig(), ["--n_layers=4"])


def test_unknown_key_in_a_file(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text("learning_rat = 1e-3\n")
    with pytest.raises(UserError, match="learning_rate"):
        apply_config(TrainConfig(), [str(path)])


@pytest.mark.parametrize(
    "arg", ["--n_layer=four", "--n_layer=2.5", "--compile=maybe", "--learning_rate=fast"]
)
def test_wrong_type_is_an_error(arg):
    with pytest.raises(UserError, match="must be"):
        apply_config(TrainConfig(), [arg])


def test_wrong_type_in_a_file(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text("n_layer = '4'\n")
    with pytest.raises(UserError, match="n_layer must be int"):
        apply_config(TrainConfig(), [str(path)])


def test_missing_file_and_malformed_argument():
    with pytest.raises(UserError, match="not found"):
        apply_config(TrainConfig(), ["no/such/config.py"])
    with pytest.raises(UserError, match="--key=value"):
        apply_config(TrainConfig(), ["--n_layer"])


# --- validation: every key's type and range, before any work ----------------------------

ODD_INTS = st.one_of(
    st.integers(-3, 3), st.integers(-(2**70), 2**70), st.sampled_from([2**63 - 1, 2**63, 10**7])
)
ODD_FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([-0.0, 0.5, 1.0, 1.5]))
ODD_STRINGS = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["", "auto", "cpu", "cuda", "cuda:0", "cuda:-1", "mps", "a\0b", "val"]),
)
BY_TYPE = {int: ODD_INTS, float: ODD_FLOATS, str: ODD_STRINGS, bool: st.booleans()}
TYPES = typing.get_type_hints(TrainConfig)
ANY_VALUE = st.one_of(*BY_TYPE.values())


def as_source(value) -> str:
    """A config-file expression for `value` (repr gives nan and inf, which are not Python)."""
    return f"float({str(value)!r})" if isinstance(value, float) and not math.isfinite(value) else repr(value)


@st.composite
def settings_of(draw):
    """A few keys of TrainConfig with values of their type (now and then of another type)."""
    keys = draw(st.lists(st.sampled_from(sorted(TYPES)), min_size=1, max_size=5, unique=True))
    return {k: draw(ANY_VALUE if draw(st.integers(0, 9)) == 0 else BY_TYPE[TYPES[k]]) for k in keys}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=settings_of(), through_file=st.booleans())
def test_any_value_of_any_key_is_accepted_or_one_user_error(tmp_path, values, through_file):
    if through_file:
        path = tmp_path / "cfg.py"
        path.write_text("".join(f"{k} = {as_source(v)}\n" for k, v in values.items()))
        argv = [str(path)]
    else:
        argv = [f"--{k}={v}" for k, v in values.items()]
    try:
        validate_config(apply_config(TrainConfig(), argv))
    except UserError as err:
        assert "\n" not in str(err).strip() or "\n" in "".join(map(str, values.values()))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch_size=0"], r"batch_size must be in \[1, "),
        (["--n_head=0"], r"n_head must be in \[1, "),
        (["--n_embd=-8"], r"n_embd must be in \[1, "),
        (["--block_size=0"], r"block_size must be in \[1, "),
        (["--block_size=1000001"], r"block_size must be in \[1, 1000000\]"),
        (["--n_embd=30", "--n_head=4"], "n_embd=30 must be a multiple of n_head=4"),
        (["--eval_interval=0"], "eval_interval must be in"),
        (["--log_interval=-1"], "log_interval must be in"),
        (["--eval_iters=0"], "eval_iters must be in"),
        (["--learning_rate=nan"], "learning_rate must be a finite number"),
        (["--learning_rate=-0.1"], "learning_rate must be in"),
        (["--beta1=2"], r"beta1 must be in \[0, 1\)"),
        (["--beta2=-1"], r"beta2 must be in \[0, 1\)"),
        (["--dropout=1.5"], r"dropout must be in \[0, 1\)"),
        (["--dropout=nan"], "dropout must be a finite number"),
        (["--device=tpu"], "device must be auto, cpu, cuda or cuda:N"),
        (["--device=cuda:x"], "device must be auto, cpu, cuda or cuda:N"),
        (["--out_dir="], "out_dir must not be empty"),
        (["--seed=-1"], "seed must be in"),
        (["--seed=9223372036854775808"], "seed must be in"),
        (["--gradient_accumulation_steps=0"], "gradient_accumulation_steps must be in"),
        (["--max_iters=-1"], "max_iters must be in"),
        (["--n_layer=0"], r"n_layer must be in \[1, 10000\]"),
        (["--n_layer=10001"], r"n_layer must be in \[1, 10000\]"),
        (["--grad_clip=nan"], "grad_clip must be a finite number"),
        (["--label_smoothing=1"], r"label_smoothing must be in \[0, 1\)"),
        (["--rope_theta=0"], r"rope_theta must be in \(0, inf\)"),
        (["--checkpoint_minutes=nan"], "checkpoint_minutes must be a finite number"),
        (["--checkpoint_minutes=-1"], "checkpoint_minutes must be in"),
        (["--dtype=float64"], "dtype must be one of auto, float32, bfloat16, float16"),
        (["--backend=mpi"], "backend must be one of auto, nccl, gloo"),
        (["--norm=batchnorm"], "norm must be one of layernorm, rmsnorm"),
        (["--pos_emb=rope", "--n_head=32"], "pos_emb=rope needs an even head size"),
        (["--variant=nope"], "unknown variant 'nope'"),
    ],
)
def test_each_bad_setting_is_refused_before_anything_is_written(char_data, tmp_path, args, message):
    cfg = apply_config(tiny_config(char_data, tmp_path), args)
    with pytest.raises(UserError, match=message):
        train(cfg)
    assert not os.path.exists(tmp_path / "out") and not os.path.exists(cfg.log_dir)


@pytest.mark.parametrize("key", ["out_dir", "log_dir"])
def test_a_folder_that_cannot_be_created_is_refused_at_the_start(char_data, tmp_path, key):
    (tmp_path / "a_file").write_text("not a folder")
    cfg = apply_config(tiny_config(char_data, tmp_path), [f"--{key}={tmp_path / 'a_file' / 'run'}"])
    with pytest.raises(UserError, match=f"{key}=.*a_file is not a folder"):
        train(cfg)


@pytest.mark.skipif(
    not os.path.isdir("/proc/self"), reason="needs Linux's /proc, where mkdir fails even for root"
)
def test_a_folder_that_cannot_be_made_there_is_one_line_and_nothing_is_left(char_data, tmp_path):
    cfg = apply_config(tiny_config(char_data, tmp_path), ["--log_dir=/proc/self/nanoGPT-logs"])
    with pytest.raises(UserError, match="log_dir=/proc/self/nanoGPT-logs cannot be created"):
        train(cfg)
    assert os.listdir(tmp_path) == []  # nothing is created to find out


def test_a_folder_name_too_long_for_the_file_system_is_one_line(char_data, tmp_path):
    cfg = apply_config(tiny_config(char_data, tmp_path), [f"--out_dir={tmp_path / ('x' * 300) / 'run'}"])
    with pytest.raises(UserError, match=r"out_dir=.* cannot be created: a folder name is over \d+ bytes"):
        train(cfg)
    assert os.listdir(tmp_path) == []


def test_ranks_checking_the_same_missing_folder_at_once_all_pass(tmp_path):
    # a torchrun job's ranks check out_dir together; a check that created and removed the
    # folder pulled it from under another rank's check now and then (CI saw it)
    folder = str(tmp_path / "run" / "out")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        checks = [pool.submit(check_writable, folder, "out_dir") for _ in range(400)]
        for check in checks:
            check.result()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "config_text, message",
    [
        ("", "learning_rate must be a finite number, got inf"),
        ('dropout = float("nan")\n', "dropout must be a finite"),
    ],
)
def test_a_bad_value_through_the_real_cli_is_one_line(char_data, tmp_path, config_text, message):
    path = tmp_path / "cfg.py"
    path.write_text(config_text)
    extra = [] if config_text else ["--learning_rate=inf"]
    proc = run_checked(
        [sys.executable, "train_baseline.py", str(path), "--device=cpu", f"--data_dir={char_data}", *extra],
        cwd=REPO,
        expect_returncode=2,
    )
    assert proc.stderr.strip().count("\n") == 0 and f"error: {message}" in proc.stderr, proc.stderr
