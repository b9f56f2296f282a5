"""The configurator: config files, --key=value overrides, type checks, clear errors."""

import pytest

from nanoGPT.config import TrainConfig, apply_config
from nanoGPT.errors import UserError


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
