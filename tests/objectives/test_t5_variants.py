"""bert_style and deshuffling for encoder-decoders: hand-worked examples, long documents
cut into consecutive chunks, rates, errors."""

import inspect
import re

import numpy as np
import pytest

from t5x_lite import objectives
from t5x_lite.errors import UserError
from t5x_lite.objectives.t5_variants import BertStyle, Deshuffling

BOS, EOS, MASK = 3, 1, 4
SPECIAL = np.arange(60) < 10  # ids 0..9 special (7 a user-typed sentinel), 10..59 text
BERT_KNOBS = dict(inputs_length=12, targets_length=12, noise_density=0.3, replace_with_mask=0.5,
                  replace_with_random=0.3, keep_original=0.2)  # fmt: skip
DOC = np.array([20, 21, 22, 7, 23, 24, 25, 26, 27, 28, 29], np.int32)  # 10 candidates


def bert(**overrides):
    return BertStyle(bos_id=BOS, eos_id=EOS, mask_id=MASK, special=SPECIAL,
                     **{**BERT_KNOBS, **overrides})  # fmt: skip


def as_lists(example):
    return {name: values.tolist() for name, values in example.items()}


def test_bert_style_hand_worked():
    # k = round(0.3 * 10) = 3: 20 -> random 50, 21 -> [MASK], 26 -> [MASK]; the target is
    # the whole original chunk.
    (example,) = bert().preprocess(DOC, np.random.default_rng(3))  # 11 tokens: one chunk
    assert as_lists(example) == {
        "encoder_input_tokens": [50, MASK, 22, 7, 23, 24, 25, MASK, 27, 28, 29, EOS],
        "decoder_input_tokens": [BOS, *DOC.tolist()],
        "decoder_target_tokens": [*DOC.tolist(), EOS],
        "decoder_loss_weights": [1] * 12,
    }
    (example,) = bert().preprocess(DOC, np.random.default_rng(2))  # 21 [MASK], 22, 26 random
    assert example["encoder_input_tokens"].tolist() == [20, MASK, 59, 7, 23, 24, 25, 19, 27, 28,
                                                        29, EOS]  # fmt: skip


def test_bert_style_rates():
    objective = bert(inputs_length=400, targets_length=400, noise_density=0.15,
                     replace_with_mask=0.8, replace_with_random=0.1, keep_original=0.1)  # fmt: skip
    rng = np.random.default_rng(0)
    inputs, targets = [], []
    for seed in range(200):
        doc = rng.integers(10, 60, 399).astype(np.int32)
        (example,) = objective.preprocess(doc, np.random.default_rng(seed))
        inputs.append(example["encoder_input_tokens"][:-1])
        targets.append(example["decoder_target_tokens"][:-1])
    inputs, targets = np.concatenate(inputs), np.concatenate(targets)
    changed = inputs != targets
    assert abs((inputs == MASK).mean() - 0.15 * 0.8) < 0.005
    # A random id equals the original 1 time in 50; kept tokens are invisible.
    assert abs((changed & (inputs != MASK)).mean() - 0.15 * 0.1 * 49 / 50) < 0.003
    assert not SPECIAL[inputs[inputs != MASK]].any()


def test_deshuffling_hand_worked():
    objective = Deshuffling(inputs_length=8, targets_length=8, bos_id=BOS, eos_id=EOS)
    # 12 tokens in chunks of 7: [20..26] and [27..31], each shuffled on its own.
    first, second = objective.preprocess(np.arange(20, 32, dtype=np.int32),
                                         np.random.default_rng(0))  # fmt: skip
    assert as_lists(first) == {
        "encoder_input_tokens": [22, 24, 23, 26, 25, 20, 21, EOS],
        "decoder_input_tokens": [BOS, 20, 21, 22, 23, 24, 25, 26],
        "decoder_target_tokens": [20, 21, 22, 23, 24, 25, 26, EOS],
        "decoder_loss_weights": [1] * 8,
    }
    assert second["encoder_input_tokens"].tolist() == [31, 28, 29, 27, 30, EOS]
    assert second["decoder_target_tokens"].tolist() == [27, 28, 29, 30, 31, EOS]


@pytest.mark.parametrize("name", ["bert_style", "deshuffling"])
def test_long_document_is_cut_into_chunks_of_the_shorter_row(name):
    if name == "bert_style":
        objective = bert(inputs_length=10, targets_length=6)
    else:
        objective = Deshuffling(inputs_length=10, targets_length=6, bos_id=BOS, eos_id=EOS)
    assert objective.chunk_length == 5  # + EOS fills the 6 target positions
    doc = np.random.default_rng(0).integers(10, 60, 52).astype(np.int32)  # 10 chunks and 2
    examples = objective.preprocess(doc, np.random.default_rng(0))
    assert [len(e["decoder_target_tokens"]) for e in examples] == [6] * 10 + [3]
    assert all(len(values) <= 10 for e in examples for values in e.values())
    targets = np.concatenate([e["decoder_target_tokens"][:-1] for e in examples])
    assert targets.tolist() == doc.tolist()  # every token once, in order
    short = np.array([20, 21], np.int32)
    (example,) = objective.preprocess(short, np.random.default_rng(0))
    assert example["decoder_target_tokens"].tolist() == [20, 21, EOS]


def test_contract_and_registry():
    deshuffling_knobs = dict(inputs_length=8, targets_length=8)
    for name, cls, knobs in [("bert_style", BertStyle, BERT_KNOBS),
                             ("deshuffling", Deshuffling, deshuffling_knobs)]:  # fmt: skip
        assert objectives.get_class(name) is cls
        assert set(inspect.signature(cls).parameters) == set(knobs) | set(cls.ids_from_tokenizer)
        assert cls.architectures == ("encoder_decoder",) and cls.pack_mode == "first_fit"
    assert bert().feature_lengths() == {"encoder_input_tokens": 12, "decoder_input_tokens": 12,
                                        "decoder_target_tokens": 12,
                                        "decoder_loss_weights": 12}  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(inputs_length=1), "config.objective.inputs_length=1 must be >= 2"),
        (dict(noise_density=0.0), "config.objective.noise_density=0.0 must be in (0, 1]"),
        (dict(keep_original=0.0), "replace_with_mask + replace_with_random + keep_original = 0.8"),
        (dict(replace_with_random=-0.1, keep_original=0.6), "replace_with_random=-0.1 must be"),
    ],
)
def test_bad_configs_are_one_line_user_errors(overrides, message):
    with pytest.raises(UserError, match=re.escape(message)) as error:
        bert(**overrides)
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="targets_length=1 must be >= 2"):
        Deshuffling(inputs_length=8, targets_length=1, bos_id=BOS, eos_id=EOS)
