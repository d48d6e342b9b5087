"""prefix_lm: hand-worked random and fixed splits, chunk lengths, config errors."""

import inspect
import re

import numpy as np
import pytest

from t5x_lite import objectives
from t5x_lite.errors import UserError
from t5x_lite.objectives.prefix_lm import PrefixLM

BOS, EOS = 3, 1
KNOBS = dict(inputs_length=6, targets_length=6, split="random", prefix_fraction=0.5)
DOC = np.arange(20, 32, dtype=np.int32)  # 12 tokens


def make(**overrides):
    return PrefixLM(bos_id=BOS, eos_id=EOS, **{**KNOBS, **overrides})


def as_lists(example):
    return {name: values.tolist() for name, values in example.items()}


def test_random_split_hand_worked():
    # Chunk of min(6, 6) = 6 tokens from start 3 ([23..28]), prefix of 3 of them.
    assert as_lists(make().preprocess(DOC, np.random.default_rng(1))) == {
        "encoder_input_tokens": [23, 24, 25, EOS],
        "decoder_input_tokens": [BOS, 26, 27, 28],
        "decoder_target_tokens": [26, 27, 28, EOS],
        "decoder_loss_weights": [1, 1, 1, 1],
    }
    # A short document is used whole.
    example = make().preprocess(np.array([40, 41, 42], np.int32), np.random.default_rng(0))
    assert example["encoder_input_tokens"].tolist() + example["decoder_target_tokens"].tolist() in (
        [40, EOS, 41, 42, EOS], [40, 41, EOS, 42, EOS])  # fmt: skip


def test_fixed_split_hand_worked():
    # 8 + 4: the longest chunk is 9 (round(0.75 * 9) = 7 in, 2 out; 10 would give 8 in).
    objective = make(inputs_length=8, targets_length=4, split="fixed", prefix_fraction=0.75)
    assert objective.raw_length == 9
    assert as_lists(objective.preprocess(DOC, np.random.default_rng(1))) == {
        "encoder_input_tokens": [21, 22, 23, 24, 25, 26, 27, EOS],
        "decoder_input_tokens": [BOS, 28, 29],
        "decoder_target_tokens": [28, 29, EOS],
        "decoder_loss_weights": [1, 1, 1],
    }
    # Halves round to even: 5 tokens at 0.5 -> round(2.5) = 2 in, 3 out.
    example = make(split="fixed").preprocess(np.arange(40, 45, dtype=np.int32),
                                             np.random.default_rng(0))  # fmt: skip
    assert example["encoder_input_tokens"].tolist() == [40, 41, EOS]
    assert example["decoder_target_tokens"].tolist() == [42, 43, 44, EOS]


def test_one_token_document_is_all_target():
    for split in ("random", "fixed"):
        example = make(split=split).preprocess(np.array([40], np.int32), np.random.default_rng(0))
        assert example["encoder_input_tokens"].tolist() == [EOS]
        assert example["decoder_target_tokens"].tolist() == [40, EOS]


@pytest.mark.parametrize(("split", "fraction"), [("random", 0.5), ("fixed", 0.1),
                                                 ("fixed", 0.5), ("fixed", 0.9)])  # fmt: skip
def test_every_example_fits_and_is_a_contiguous_chunk(split, fraction):
    objective = make(inputs_length=20, targets_length=12, split=split, prefix_fraction=fraction)
    rng = np.random.default_rng(0)
    prefixes = set()
    for seed in range(300):
        doc = np.arange(100, 100 + rng.integers(1, 60), dtype=np.int32)
        example = objective.preprocess(doc, np.random.default_rng(seed))
        inputs, targets = example["encoder_input_tokens"], example["decoder_target_tokens"]
        assert len(inputs) <= 20 and len(targets) <= 12
        assert len(targets) >= 2 and inputs[-1] == EOS and targets[-1] == EOS
        chunk = np.concatenate([inputs[:-1], targets[:-1]])
        assert np.array_equal(chunk, np.arange(chunk[0], chunk[0] + len(chunk)))
        assert len(chunk) == min(len(doc), objective.raw_length)
        assert example["decoder_input_tokens"].tolist() == [BOS, *targets[:-1].tolist()]
        prefixes.add(len(inputs) - 1)
    assert len(prefixes) > (5 if split == "random" else 1)


def test_contract_and_registry():
    objective = make()
    assert objectives.get_class("prefix_lm") is PrefixLM
    assert set(inspect.signature(PrefixLM).parameters) == set(KNOBS) | set(
        PrefixLM.ids_from_tokenizer)  # fmt: skip
    assert objective.architectures == ("encoder_decoder",) and objective.pack_mode == "first_fit"
    assert objective.feature_lengths() == {"encoder_input_tokens": 6, "decoder_input_tokens": 6,
                                           "decoder_target_tokens": 6,
                                           "decoder_loss_weights": 6}  # fmt: skip
    assert all(
        v.dtype == np.int32 for v in objective.preprocess(DOC, np.random.default_rng(0)).values()
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(inputs_length=1), "config.objective.inputs_length=1 must be >= 2"),
        (dict(targets_length=0), "config.objective.targets_length=0 must be >= 2"),
        (dict(split="half"), "config.objective.split='half' is not one of"),
        (dict(prefix_fraction=1.0), "config.objective.prefix_fraction=1.0 must be in (0, 1)"),
    ],
)
def test_bad_configs_are_one_line_user_errors(overrides, message):
    with pytest.raises(UserError, match=re.escape(message)) as error:
        make(**overrides)
    assert "\n" not in str(error.value)
