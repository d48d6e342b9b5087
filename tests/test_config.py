"""Config loading, overrides and their errors; every shipped config and variant loads."""

import glob
import importlib.util
import json
import os

import pytest

from t5x_lite import config as config_lib
from t5x_lite.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(ROOT, "gin_configs", "pretrain.py")


def _variants(path):
    spec = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.VARIANTS)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "gin_configs", "*.py"))))
def test_every_shipped_config_and_variant_loads(path):
    variants = _variants(path)
    assert variants
    for variant in variants:
        config = config_lib.load(f"{path}:{variant}")
        assert config.is_locked
        with open(path) as f:
            assert "t5x-lite" in f.read().split('"""')[1], "docstring gives the launch command"


def test_overrides_are_typed_and_references_follow():
    config = config_lib.load(
        f"{PRETRAIN}:gpt_tiny",
        [
            ("train.num_steps", "7"),
            ("optimizer.learning_rate", "1"),
            ("train.progress_bar", "false"),
            ("tokenizer.vocab_size", "999"),
            ("data.train.path", "x.txt"),
            ("objective.seq_len", "64"),
        ],
    )
    assert config.train.num_steps == 7
    assert config.optimizer.learning_rate == 1.0 and isinstance(
        config.optimizer.learning_rate, float
    )
    assert config.train.progress_bar is False
    assert config.model.vocab_size == 999  # follows tokenizer.vocab_size
    assert config.model.max_len == 64  # follows objective.seq_len
    assert config.data.train.path == "x.txt"


def test_unknown_key_names_it_and_the_nearest():
    with pytest.raises(UserError) as e:
        config_lib.load(f"{PRETRAIN}:gpt_tiny", [("train.num_step", "3")])
    message = str(e.value)
    assert "'train.num_step'" in message and "train.num_steps" in message
    assert "\n" not in message


def test_unknown_leaf_under_other_section_is_suggested():
    with pytest.raises(UserError, match="model.d_model"):
        config_lib.load(f"{PRETRAIN}:gpt_tiny", [("model.dmodel", "3")])


@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("train.num_steps", "abc", "expects int"),
        ("train.num_steps", "1.5", "expects int"),
        ("train.progress_bar", "maybe", "expects a bool"),
        ("model.dropout_rate", "'x'", "expects float"),
    ],
)
def test_wrong_type_is_one_line(key, value, expected):
    with pytest.raises(UserError, match=expected) as e:
        config_lib.load(f"{PRETRAIN}:gpt_tiny", [(key, value)])
    assert key in str(e.value) and "\n" not in str(e.value)


def test_unknown_variant_and_missing_file():
    with pytest.raises(UserError, match="gpt_tiny"):
        config_lib.load(f"{PRETRAIN}:gpt_huge")
    with pytest.raises(UserError, match="does not exist"):
        config_lib.load("gin_configs/nope.py:x")


def test_save_writes_resolved_config(tmp_path):
    config = config_lib.load(f"{PRETRAIN}:gpt_small", [("train.num_steps", "3")])
    path = config_lib.save(config, str(tmp_path))
    saved = json.load(open(path))
    assert saved["train"]["num_steps"] == 3 and saved["model"]["d_model"] == 512
    assert config_lib.diff(saved, config, ["model"]) == []
    other = config_lib.load(f"{PRETRAIN}:gpt_tiny")
    assert "model.d_model: 512 -> 128" in config_lib.diff(saved, other, ["model"])
