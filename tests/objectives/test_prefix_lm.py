"""prefix_lm: hand-worked random and fixed splits, chunk lengths, long documents cut into
consecutive chunks, config errors."""

import inspect
import re

import numpy as np
import pytest

from t5x_lite import objectives
from t5x_lite.data.pipeline import make_dataset
from t5x_lite.errors import UserError
from t5x_lite.objectives.prefix_lm import DecoderPrefixLM, PrefixLM
from tests.objectives.helpers import NumbersTokenizer

BOS, EOS = 3, 1
KNOBS = dict(inputs_length=6, targets_length=6, split="random", prefix_fraction=0.5)
DOC = np.arange(20, 32, dtype=np.int32)  # 12 tokens


def make(**overrides):
    return PrefixLM(bos_id=BOS, eos_id=EOS, **{**KNOBS, **overrides})


def as_lists(example):
    return {name: values.tolist() for name, values in example.items()}


def test_random_split_hand_worked():
    # Chunks of min(6, 6) = 6 tokens: [20..25] and [26..31], each split on its own (rng(1)
    # draws a prefix of 3 for both).
    first, second = make().preprocess(DOC, np.random.default_rng(1))
    assert as_lists(first) == {
        "encoder_input_tokens": [20, 21, 22, EOS],
        "decoder_input_tokens": [BOS, 23, 24, 25],
        "decoder_target_tokens": [23, 24, 25, EOS],
        "decoder_loss_weights": [1, 1, 1, 1],
    }
    assert second["encoder_input_tokens"].tolist() == [26, 27, 28, EOS]
    assert second["decoder_target_tokens"].tolist() == [29, 30, 31, EOS]
    # A short document is one chunk, used whole.
    (example,) = make().preprocess(np.array([40, 41, 42], np.int32), np.random.default_rng(0))
    assert example["encoder_input_tokens"].tolist() + example["decoder_target_tokens"].tolist() in (
        [40, EOS, 41, 42, EOS], [40, 41, EOS, 42, EOS])  # fmt: skip


def test_fixed_split_hand_worked():
    # 8 + 4: the longest chunk is 9 (round(0.75 * 9) = 7 in, 2 out; 10 would give 8 in).
    objective = make(inputs_length=8, targets_length=4, split="fixed", prefix_fraction=0.75)
    assert objective.chunk_length == 9
    # 12 tokens: [20..28] splits 7 + 2; the last 3 split round(2.25) = 2 + 1.
    first, second = objective.preprocess(DOC, np.random.default_rng(1))
    assert as_lists(first) == {
        "encoder_input_tokens": [20, 21, 22, 23, 24, 25, 26, EOS],
        "decoder_input_tokens": [BOS, 27, 28],
        "decoder_target_tokens": [27, 28, EOS],
        "decoder_loss_weights": [1, 1, 1],
    }
    assert as_lists(second) == {
        "encoder_input_tokens": [29, 30, EOS],
        "decoder_input_tokens": [BOS, 31],
        "decoder_target_tokens": [31, EOS],
        "decoder_loss_weights": [1, 1],
    }
    # Halves round to even: 5 tokens at 0.5 -> round(2.5) = 2 in, 3 out.
    (example,) = make(split="fixed").preprocess(np.arange(40, 45, dtype=np.int32),
                                                np.random.default_rng(0))  # fmt: skip
    assert example["encoder_input_tokens"].tolist() == [40, 41, EOS]
    assert example["decoder_target_tokens"].tolist() == [42, 43, 44, EOS]


def test_one_token_document_is_all_target():
    for split in ("random", "fixed"):
        (example,) = make(split=split).preprocess(np.array([40], np.int32),
                                                  np.random.default_rng(0))  # fmt: skip
        assert example["encoder_input_tokens"].tolist() == [EOS]
        assert example["decoder_target_tokens"].tolist() == [40, EOS]


@pytest.mark.parametrize(("split", "fraction"), [("random", 0.5), ("fixed", 0.1),
                                                 ("fixed", 0.5), ("fixed", 0.9)])  # fmt: skip
def test_every_example_fits_and_documents_are_used_whole(split, fraction):
    objective = make(inputs_length=20, targets_length=12, split=split, prefix_fraction=fraction)
    rng = np.random.default_rng(0)
    prefixes = set()
    for seed in range(300):
        doc = np.arange(100, 100 + rng.integers(1, 200), dtype=np.int32)  # up to ~10 chunks
        examples = objective.preprocess(doc, np.random.default_rng(seed))
        assert len(examples) == -(-len(doc) // objective.chunk_length)
        chunks = []
        for example in examples:
            inputs, targets = example["encoder_input_tokens"], example["decoder_target_tokens"]
            assert len(inputs) <= 20 and len(targets) <= 12
            assert len(targets) >= 2 and inputs[-1] == EOS and targets[-1] == EOS
            assert example["decoder_input_tokens"].tolist() == [BOS, *targets[:-1].tolist()]
            chunks.append(np.concatenate([inputs[:-1], targets[:-1]]))
            prefixes.add(len(inputs) - 1)
        # Consecutive chunks of chunk_length (the last shorter): every token once, in order.
        assert [len(c) for c in chunks[:-1]] == [objective.chunk_length] * (len(chunks) - 1)
        assert np.concatenate(chunks).tolist() == doc.tolist()
    assert len(prefixes) > (5 if split == "random" else 1)


def test_contract_and_registry():
    objective = make()
    assert objectives.get_class("prefix_lm", "encoder_decoder") is PrefixLM
    assert set(inspect.signature(PrefixLM).parameters) == set(KNOBS) | set(
        PrefixLM.ids_from_tokenizer)  # fmt: skip
    assert objective.architectures == ("encoder_decoder",) and objective.pack_mode == "first_fit"
    assert objective.feature_lengths() == {"encoder_input_tokens": 6, "decoder_input_tokens": 6,
                                           "decoder_target_tokens": 6,
                                           "decoder_loss_weights": 6}  # fmt: skip
    examples = objective.preprocess(DOC, np.random.default_rng(0))
    assert all(v.dtype == np.int32 for example in examples for v in example.values())


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


# ------------------------------------------------------------------- decoder-only


def make_decoder(**overrides):
    knobs = dict(seq_len=8, split="random", prefix_fraction=0.5)
    return DecoderPrefixLM(bos_id=BOS, eos_id=EOS, **{**knobs, **overrides})


def test_decoder_random_split_hand_worked():
    # seq_len 8 -> chunks of 7 tokens: [20..26] and [27..31]; rng(1) draws a prefix of 3
    # for both.
    first, second = make_decoder().preprocess(DOC, np.random.default_rng(1))
    assert as_lists(first) == {
        "decoder_input_tokens": [BOS, 20, 21, 22, 23, 24, 25, 26],
        "decoder_target_tokens": [20, 21, 22, 23, 24, 25, 26, EOS],
        # Positions 0..3 read BOS, 20..22: the prefix, seen bidirectionally.
        "decoder_prefix_mask": [1, 1, 1, 1, 0, 0, 0, 0],
        # Position 3 reads 22 and predicts 23, the first token after the prefix.
        "decoder_loss_weights": [0, 0, 0, 1, 1, 1, 1, 1],
    }
    assert as_lists(second) == {
        "decoder_input_tokens": [BOS, 27, 28, 29, 30, 31],
        "decoder_target_tokens": [27, 28, 29, 30, 31, EOS],
        "decoder_prefix_mask": [1, 1, 1, 1, 0, 0],
        "decoder_loss_weights": [0, 0, 0, 1, 1, 1],
    }


def test_decoder_fixed_split_and_short_documents():
    # 5 tokens at 0.5 -> round(2.5) = 2 prefix tokens.
    (example,) = make_decoder(split="fixed").preprocess(np.arange(40, 45, dtype=np.int32),
                                                        np.random.default_rng(0))  # fmt: skip
    assert as_lists(example) == {
        "decoder_input_tokens": [BOS, 40, 41, 42, 43, 44],
        "decoder_target_tokens": [40, 41, 42, 43, 44, EOS],
        "decoder_prefix_mask": [1, 1, 1, 0, 0, 0],
        "decoder_loss_weights": [0, 0, 1, 1, 1, 1],
    }
    # One token: the prefix is BOS alone and everything is scored.
    (example,) = make_decoder().preprocess(np.array([40], np.int32), np.random.default_rng(0))
    assert as_lists(example)["decoder_prefix_mask"] == [1, 0]
    assert as_lists(example)["decoder_loss_weights"] == [1, 1]


def test_decoder_long_document_is_cut_into_row_sized_chunks():
    objective = make_decoder()  # chunk_length 7
    doc = np.arange(100, 173, dtype=np.int32)  # 10 chunks and 3 tokens
    examples = objective.preprocess(doc, np.random.default_rng(0))
    assert [len(e["decoder_target_tokens"]) for e in examples] == [8] * 10 + [4]
    targets = np.concatenate([e["decoder_target_tokens"][:-1] for e in examples])
    assert targets.tolist() == doc.tolist()  # every token once, in order


def test_decoder_examples_fit_and_split_uniformly():
    objective = make_decoder(seq_len=16)
    counts = np.zeros(16, int)
    for seed in range(2000):
        (example,) = objective.preprocess(DOC, np.random.default_rng(seed))
        assert all(len(values) == 13 for values in example.values())  # whole 12-token doc
        prefix = example["decoder_prefix_mask"]
        weights = example["decoder_loss_weights"]
        split = int(prefix.sum()) - 1  # prefix tokens after BOS
        assert prefix.tolist() == [1] * (split + 1) + [0] * (12 - split)
        assert weights.tolist() == [0] * split + [1] * (13 - split)
        counts[split] += 1
    # Uniform over 1..11: each about 2000 / 11 = 182.
    assert counts[0] == 0 and counts[12:].sum() == 0
    assert counts[1:12].min() > 130 and counts[1:12].max() < 240


def test_decoder_contract_registry_and_errors():
    assert objectives.get_class("prefix_lm", "decoder_only") is DecoderPrefixLM
    assert objectives.registry.architectures("prefix_lm") == ["encoder_decoder", "decoder_only"]
    with pytest.raises(UserError, match="does not fit config.model.arch='encoder_only'"):
        objectives.get_class("prefix_lm", "encoder_only")
    assert make_decoder().pack_mode == "first_fit"
    with pytest.raises(UserError, match=re.escape("config.objective.seq_len=1 must be >= 2")):
        make_decoder(seq_len=1)
    with pytest.raises(UserError, match="config.objective.split='half'"):
        make_decoder(split="half")


def test_decoder_packed_rows_keep_prefix_masks_aligned():
    rng = np.random.default_rng(0)
    docs = [" ".join(map(str, rng.integers(200, 900, n))) for n in rng.integers(2, 12, 20)]
    batches = list(make_dataset(docs, NumbersTokenizer(), make_decoder(seq_len=24), batch_size=2,
                                seed=0, shuffle=False, num_epochs=1, shard_index=0,
                                shard_count=1, pad_final_batch=False))  # fmt: skip
    segments_seen = 0
    for batch in batches:
        for row in range(2):
            segment_ids = batch["decoder_segment_ids"][row]
            for segment in set(segment_ids.tolist()) - {0}:
                at = segment_ids == segment
                prefix = batch["decoder_prefix_mask"][row][at]
                weights = batch["decoder_loss_weights"][row][at]
                split = int(prefix.sum()) - 1
                # One block of prefix, then the scored rest, overlapping at one position.
                assert prefix.tolist() == [1] * (split + 1) + [0] * (len(prefix) - split - 1)
                assert weights.tolist() == [0] * split + [1] * (len(prefix) - split)
                assert batch["decoder_input_tokens"][row][at][0] == BOS
                segments_seen += 1
            assert batch["decoder_prefix_mask"][row][segment_ids == 0].sum() == 0
    assert segments_seen == 20
