"""causal_lm preprocessing on a hand-worked document, a long document through the
pipeline; the registry and its errors."""

import numpy as np
import pytest

from t5x_lite import objectives
from t5x_lite.data.pipeline import make_dataset
from t5x_lite.errors import UserError
from t5x_lite.objectives.causal_lm import CausalLM
from tests.objectives.helpers import NumbersTokenizer


def test_causal_lm_shifts_per_document():
    (example,) = CausalLM(seq_len=8, bos_id=3, eos_id=1).preprocess(
        np.array([11, 12, 13], np.int32), np.random.default_rng(0)
    )
    np.testing.assert_array_equal(example["decoder_target_tokens"], [11, 12, 13, 1])
    np.testing.assert_array_equal(example["decoder_input_tokens"], [3, 11, 12, 13])
    np.testing.assert_array_equal(example["decoder_loss_weights"], [1, 1, 1, 1])
    assert all(v.dtype == np.int32 for v in example.values())


def test_long_document_uses_every_token_once_per_epoch():
    objective = CausalLM(seq_len=8, bos_id=3, eos_id=1)
    long_doc = np.arange(100, 180, dtype=np.int32)  # 80 tokens: 10 rows' worth
    # One example, however long: concat packing cuts it across rows.
    (example,) = objective.preprocess(long_doc, np.random.default_rng(0))
    assert example["decoder_target_tokens"].tolist() == [*long_doc.tolist(), 1]
    docs = [" ".join(map(str, long_doc)), "7 8"]
    batches = list(make_dataset(docs, NumbersTokenizer(), objective, batch_size=1, seed=0,
                                shuffle=False, num_epochs=2, shard_index=0, shard_count=1,
                                pad_final_batch=True))  # fmt: skip
    assert len(batches) == 21  # (81 + 3 targets) x 2 epochs = 168 = 21 full rows
    rows = {name: np.concatenate([b[name][0] for b in batches]) for name in batches[0]}
    used = rows["decoder_segment_ids"] > 0
    assert used.all()
    epoch_targets = [*long_doc.tolist(), 1, 7, 8, 1]
    assert rows["decoder_target_tokens"].tolist() == epoch_targets * 2  # each once, in order
    # Inputs were shifted per document before packing: a row that continues a document
    # reads its previous token, not BOS.
    assert rows["decoder_input_tokens"].tolist() == [3, *long_doc.tolist(), 3, 7, 8] * 2
    assert rows["decoder_loss_weights"].all()


def test_causal_lm_contract():
    objective = CausalLM(seq_len=8, bos_id=3, eos_id=1)
    assert objective.name == "causal_lm" and objective.architectures == ("decoder_only",)
    assert objective.chunk_length is None and objective.pack_mode == "concat"
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
