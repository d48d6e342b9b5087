"""causal_lm preprocessing on a hand-worked document; the registry and its errors."""

import numpy as np
import pytest

from t5x_lite import objectives
from t5x_lite.errors import UserError
from t5x_lite.objectives.causal_lm import CausalLM


def test_causal_lm_shifts_per_document():
    example = CausalLM(seq_len=8, bos_id=3, eos_id=1).preprocess(
        np.array([11, 12, 13], np.int32), np.random.default_rng(0)
    )
    np.testing.assert_array_equal(example["decoder_target_tokens"], [11, 12, 13, 1])
    np.testing.assert_array_equal(example["decoder_input_tokens"], [3, 11, 12, 13])
    np.testing.assert_array_equal(example["decoder_loss_weights"], [1, 1, 1, 1])
    assert all(v.dtype == np.int32 for v in example.values())


def test_causal_lm_contract():
    objective = CausalLM(seq_len=8, bos_id=3, eos_id=1)
    assert objective.name == "causal_lm" and objective.architectures == ("decoder_only",)
    assert objective.feature_lengths() == {
        "decoder_input_tokens": 8,
        "decoder_target_tokens": 8,
        "decoder_loss_weights": 8,
    }
    (term,) = objective.loss_terms
    assert (term.output, term.targets, term.weights) == (
        "logits",
        "decoder_target_tokens",
        "decoder_loss_weights",
    )


def test_registry():
    assert "causal_lm" in objectives.names()
    with pytest.raises(UserError, match="did you mean causal_lm"):
        objectives.get_class("casual_lm")
