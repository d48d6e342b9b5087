"""Fine-tuning input formats, worked by hand: GPT-1, BERT and T5 on the same pair."""

import numpy as np
import pytest

from t5x_lite import tokenizer as tok_lib
from t5x_lite.data.labelled import TaskExample
from t5x_lite.errors import UserError
from t5x_lite.objectives import finetune_formats
from t5x_lite.objectives.registry import get_class

from .helpers import NumbersTokenizer


class Tokenizer(NumbersTokenizer):
    bos_id, eos_id = tok_lib.BOS_ID, tok_lib.EOS_ID  # 3, 1
    cls_id, sep_id = tok_lib.CLS_ID, tok_lib.SEP_ID  # 5, 6


TOK = Tokenizer()
# premise "21 22 23", hypothesis "31 32", label 2 (e.g. contradiction)
PAIR = TaskExample("21 22 23", "31 32", 2, "", 7)
SINGLE = TaskExample("21 22", None, 1, "", 2)


def build(arch, **knobs):
    return get_class("classification", arch).build(TOK, **knobs)


def example(objective, task_example):
    (features,) = objective.preprocess(objective.encode(TOK, task_example), rng=None)
    return features  # one example per labelled row, however long


def test_gpt1_format_on_a_pair():
    objective = build("decoder_only", seq_len=16, aux_lm_weight=0.5)
    features = example(objective, PAIR)
    # [START]=3 a [DELIM]=6 b [EXTRACT]=5
    np.testing.assert_array_equal(features["decoder_input_tokens"], [3, 21, 22, 23, 6, 31, 32, 5])
    # the auxiliary LM predicts the next token where it is text (not DELIM / EXTRACT)
    np.testing.assert_array_equal(features["decoder_target_tokens"], [21, 22, 23, 6, 31, 32, 5, 0])
    np.testing.assert_array_equal(features["decoder_loss_weights"], [1, 1, 1, 0, 1, 1, 0, 0])
    assert features["class_token_index"].tolist() == [7]  # the [EXTRACT] position
    assert features["class_labels"].tolist() == [2]
    assert features["class_weights"].tolist() == [1]
    assert [term.name for term in objective.loss_terms] == ["class", "lm"]
    assert objective.loss_terms[1].scale == 0.5


def test_gpt1_format_single_sentence_and_no_aux_loss():
    objective = build("decoder_only", seq_len=16, aux_lm_weight=0.0)
    features = example(objective, SINGLE)
    np.testing.assert_array_equal(features["decoder_input_tokens"], [3, 21, 22, 5])
    assert features["class_token_index"].tolist() == [3]
    assert [term.name for term in objective.loss_terms] == ["class"]


def test_bert_format_on_a_pair_with_token_types():
    objective = build("encoder_only", seq_len=16)
    features = example(objective, PAIR)
    # [CLS]=5 a [SEP]=6 b [SEP]
    np.testing.assert_array_equal(features["encoder_input_tokens"], [5, 21, 22, 23, 6, 31, 32, 6])
    np.testing.assert_array_equal(features["encoder_token_type_ids"], [0, 0, 0, 0, 0, 1, 1, 1])
    assert features["class_labels"].tolist() == [2]
    single = example(objective, SINGLE)
    np.testing.assert_array_equal(single["encoder_input_tokens"], [5, 21, 22, 6])
    np.testing.assert_array_equal(single["encoder_token_type_ids"], [0, 0, 0, 0])


def test_t5_text_to_text_with_a_template_and_label_words():
    objective = get_class("text_to_text", "encoder_decoder").build(
        TOK,
        inputs_length=16,
        targets_length=4,
        input_template="90 {a} 91 {b}",  # "mnli premise: {a} hypothesis: {b}" in numbers
        label_words=("41", "42", "43 44"),
    )
    features = example(objective, PAIR)
    np.testing.assert_array_equal(features["encoder_input_tokens"], [90, 21, 22, 23, 91, 31, 32, 1])
    # label 2 -> "43 44", then EOS; the decoder reads it shifted right by BOS
    np.testing.assert_array_equal(features["decoder_target_tokens"], [43, 44, 1])
    np.testing.assert_array_equal(features["decoder_input_tokens"], [3, 43, 44])
    np.testing.assert_array_equal(features["decoder_loss_weights"], [1, 1, 1])
    # a generation task's target text is used as is; a long one is cut before EOS
    qa = example(objective, TaskExample("21", "22", -1, "51 52 53 54 55", 3))
    np.testing.assert_array_equal(qa["decoder_target_tokens"], [51, 52, 53, 1])


@pytest.mark.parametrize(
    "len_a, len_b, budget, expected",
    [
        (3, 2, 5, (3, 2)),  # fits
        (6, 2, 5, (3, 2)),  # only the longer text loses tokens
        (5, 5, 7, (3, 4)),  # equal: a first, then in turn
        (9, 4, 6, (3, 3)),  # down to equal, then one each
        (10, 0, 4, (4, 0)),  # single sentence
    ],
)
def test_truncation_is_longest_first(len_a, len_b, budget, expected):
    assert finetune_formats.truncate_pair(len_a, len_b, budget) == expected


def test_long_pair_keeps_every_special_token():
    objective = build("encoder_only", seq_len=8)
    long_pair = TaskExample(" ".join(map(str, range(20, 30))), "31 32", 0, "", 2)
    features = example(objective, long_pair)
    # budget 8 - 3 = 5: a keeps 3, b keeps 2
    np.testing.assert_array_equal(features["encoder_input_tokens"], [5, 20, 21, 22, 6, 31, 32, 6])


def test_truncation_counts_the_rows_and_tokens_cut():
    long_pair = TaskExample(" ".join(map(str, range(20, 30))), "31 32", 0, "", 2)
    examples = [PAIR, SINGLE, long_pair]  # 3 + 2, 2 and 10 + 2 text tokens
    # BERT, seq_len 8: pairs have 8 - 3 = 5 text tokens, single sentences 8 - 2 = 6.
    bert = build("encoder_only", seq_len=8)
    assert [bert.dropped_tokens(bert.encode(TOK, e)) for e in examples] == [0, 0, 7]
    assert finetune_formats.truncation(bert, TOK, examples) == {
        "rows": 3,
        "truncated_rows": 1,
        "truncated_share": 1 / 3,
        "dropped_tokens": 7,
    }
    # GPT-1, seq_len 6: [START] a [DELIM] b [EXTRACT] leaves 3 for a pair, 4 alone.
    gpt = build("decoder_only", seq_len=6, aux_lm_weight=0.0)
    assert [gpt.dropped_tokens(gpt.encode(TOK, e)) for e in examples] == [2, 0, 9]
    assert finetune_formats.truncation(gpt, TOK, examples)["truncated_rows"] == 2
    # The count agrees with what make_example keeps.
    kept = len(example(gpt, long_pair)["decoder_input_tokens"]) - 3  # minus the specials
    assert kept == 12 - 9
    # T5: inputs "21 22 23 31 32" (5 tokens) and the target word, each keeping room for EOS.
    t5 = get_class("text_to_text", "encoder_decoder").build(
        TOK, inputs_length=4, targets_length=2, input_template="{a} {b}", label_words=("7 8",) * 3
    )
    assert t5.dropped_tokens(t5.encode(TOK, PAIR)) == (5 - 3) + (2 - 1)
    assert finetune_formats.truncation(t5, TOK, []) == {
        "rows": 0,
        "truncated_rows": 0,
        "truncated_share": 0.0,
        "dropped_tokens": 0,
    }


def test_bad_settings_fail_with_the_key_to_change():
    with pytest.raises(UserError, match="seq_len=4"):
        build("encoder_only", seq_len=4)
    with pytest.raises(UserError, match="aux_lm_weight"):
        build("decoder_only", seq_len=16, aux_lm_weight=-1.0)
    with pytest.raises(UserError, match="input_template"):
        get_class("text_to_text", "encoder_decoder").build(
            TOK, inputs_length=8, targets_length=4, input_template="{x}", label_words=()
        )
    objective = get_class("text_to_text", "encoder_decoder").build(
        TOK, inputs_length=8, targets_length=4, input_template="{a} {b}", label_words=("1",)
    )
    with pytest.raises(UserError, match="uses {b}"):
        objective.encode(TOK, SINGLE)
    with pytest.raises(UserError, match="no word"):
        objective.encode(TOK, PAIR)  # label 2, one word
