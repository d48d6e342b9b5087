"""Packing on hand-worked examples: exact rows, segment ids, positions, and resumption."""

import json

import grain
import numpy as np
import pytest

from t5x_lite.data.packing import pack, segments_and_positions, zero_batch
from t5x_lite.objectives.causal_lm import CausalLM


def decoder_example(tokens):
    tokens = np.asarray(tokens, np.int32)
    return {"decoder_tokens": tokens, "decoder_weights": np.ones_like(tokens)}


def enc_dec_example(encoder_tokens, decoder_tokens):
    return {
        "encoder_tokens": np.asarray(encoder_tokens, np.int32),
        "decoder_tokens": np.asarray(decoder_tokens, np.int32),
    }


def packed_rows(examples, feature_lengths, pack_mode, num_open_rows=2):
    dataset = grain.MapDataset.source(examples).to_iter_dataset()
    packed = pack(
        dataset, feature_lengths=feature_lengths, pack_mode=pack_mode, num_open_rows=num_open_rows
    )
    return [{k: v.tolist() for k, v in row.items()} for row in packed]


def test_segments_and_positions():
    segment_ids, positions = segments_and_positions([2, 0, 3], 7)
    assert segment_ids.tolist() == [1, 1, 3, 3, 3, 0, 0]  # id 2 is the empty example's
    assert positions.tolist() == [0, 1, 0, 1, 2, 0, 0]


def test_concat_splits_across_rows_and_pads_the_last():
    examples = [decoder_example([11, 12, 13]), decoder_example([21, 22, 23, 24]),
                decoder_example([31, 32])]  # fmt: skip
    rows = packed_rows(examples, {"decoder_tokens": 5, "decoder_weights": 5}, "concat")
    assert rows == [
        {
            "decoder_tokens": [11, 12, 13, 21, 22],
            "decoder_weights": [1, 1, 1, 1, 1],
            "decoder_segment_ids": [1, 1, 1, 2, 2],
            "decoder_positions": [0, 1, 2, 0, 1],
        },
        {  # the second example continues as a new segment, positions restart at 0
            "decoder_tokens": [23, 24, 31, 32, 0],
            "decoder_weights": [1, 1, 1, 1, 0],
            "decoder_segment_ids": [1, 1, 2, 2, 0],
            "decoder_positions": [0, 1, 0, 1, 0],
        },
    ]


def test_concat_long_example_spans_several_rows_and_skips_empty():
    examples = [decoder_example(range(1, 8)), decoder_example([]), decoder_example([9])]
    rows = packed_rows(examples, {"decoder_tokens": 3, "decoder_weights": 3}, "concat")
    assert [row["decoder_tokens"] for row in rows] == [[1, 2, 3], [4, 5, 6], [7, 9, 0]]
    assert [row["decoder_segment_ids"] for row in rows] == [[1, 1, 1], [1, 1, 1], [1, 2, 0]]
    assert [row["decoder_positions"] for row in rows] == [[0, 1, 2], [0, 1, 2], [0, 0, 0]]


def test_concat_with_causal_lm_examples():
    objective = CausalLM(seq_len=4, bos_id=3, eos_id=1)
    examples = [objective.make_example(np.array(t, np.int32), None) for t in ([7, 8], [9, 10, 11])]
    rows = packed_rows(examples, objective.feature_lengths(), objective.pack_mode)
    assert [row["decoder_input_tokens"] for row in rows] == [[3, 7, 8, 3], [9, 10, 11, 0]]
    assert [row["decoder_target_tokens"] for row in rows] == [[7, 8, 1, 9], [10, 11, 1, 0]]
    assert [row["decoder_loss_weights"] for row in rows] == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert [row["decoder_segment_ids"] for row in rows] == [[1, 1, 1, 2], [1, 1, 1, 0]]


def test_first_fit_two_groups():
    lengths = {"encoder_tokens": 6, "decoder_tokens": 4}
    examples = [
        enc_dec_example([11, 12, 13], [14, 15]),  # A: opens row 1
        enc_dec_example([21, 22], [23, 24, 25]),  # B: decoder does not fit row 1 -> row 2
        enc_dec_example([31, 32, 33], [34]),  # C: fits row 1, fills its encoder -> emitted
        enc_dec_example(range(41, 49), [49, 50]),  # D: truncated to 6, fits nowhere -> row 3, full
        enc_dec_example([51], [52]),  # E: fits row 2, fills its decoder -> emitted
    ]
    rows = packed_rows(examples, lengths, "first_fit", num_open_rows=2)
    assert rows == [
        {
            "encoder_tokens": [11, 12, 13, 31, 32, 33],
            "decoder_tokens": [14, 15, 34, 0],
            "encoder_segment_ids": [1, 1, 1, 2, 2, 2],
            "encoder_positions": [0, 1, 2, 0, 1, 2],
            "decoder_segment_ids": [1, 1, 2, 0],
            "decoder_positions": [0, 1, 0, 0],
        },
        {
            "encoder_tokens": [41, 42, 43, 44, 45, 46],
            "decoder_tokens": [49, 50, 0, 0],
            "encoder_segment_ids": [1, 1, 1, 1, 1, 1],
            "encoder_positions": [0, 1, 2, 3, 4, 5],
            "decoder_segment_ids": [1, 1, 0, 0],
            "decoder_positions": [0, 1, 0, 0],
        },
        {
            "encoder_tokens": [21, 22, 51, 0, 0, 0],
            "decoder_tokens": [23, 24, 25, 52],
            "encoder_segment_ids": [1, 1, 2, 0, 0, 0],
            "encoder_positions": [0, 1, 0, 0, 0, 0],
            "decoder_segment_ids": [1, 1, 1, 2],
            "decoder_positions": [0, 1, 2, 0],
        },
    ]


def test_first_fit_evicts_oldest_row_and_flushes_at_end():
    lengths = {"decoder_tokens": 4}
    examples = [{"decoder_tokens": np.array(t, np.int32)} for t in ([1, 2, 3], [4, 5], [6, 7], [8])]
    rows = packed_rows(examples, lengths, "first_fit", num_open_rows=1)
    # [4, 5] does not fit next to [1, 2, 3] and the only slot is taken: row 1 leaves.
    assert [row["decoder_tokens"] for row in rows] == [[1, 2, 3, 0], [4, 5, 6, 7], [8, 0, 0, 0]]
    segment_ids = [row["decoder_segment_ids"] for row in rows]
    assert segment_ids == [[1, 1, 1, 0], [1, 1, 2, 2], [1, 0, 0, 0]]


def test_none_mode_one_example_per_row():
    lengths = {"encoder_tokens": 4, "nsp_labels": 1}
    examples = [
        {"encoder_tokens": np.array([11, 12], np.int32), "nsp_labels": np.array([1], np.int32)},
        {
            "encoder_tokens": np.arange(21, 27, dtype=np.int32),
            "nsp_labels": np.array([0], np.int32),
        },
        {"encoder_tokens": np.zeros(0, np.int32), "nsp_labels": np.array([1], np.int32)},
    ]
    assert packed_rows(examples, lengths, "none") == [
        {  # short: padded, segment 1 over the example only
            "encoder_tokens": [11, 12, 0, 0],
            "nsp_labels": [1],
            "encoder_segment_ids": [1, 1, 0, 0],
            "encoder_positions": [0, 1, 0, 0],
            "nsp_segment_ids": [1],
            "nsp_positions": [0],
        },
        {  # long: truncated to the row length
            "encoder_tokens": [21, 22, 23, 24],
            "nsp_labels": [0],
            "encoder_segment_ids": [1, 1, 1, 1],
            "encoder_positions": [0, 1, 2, 3],
            "nsp_segment_ids": [1],
            "nsp_positions": [0],
        },
        {  # empty: still its own row, all padding in that group
            "encoder_tokens": [0, 0, 0, 0],
            "nsp_labels": [1],
            "encoder_segment_ids": [0, 0, 0, 0],
            "encoder_positions": [0, 0, 0, 0],
            "nsp_segment_ids": [1],
            "nsp_positions": [0],
        },
    ]


def test_zero_batch_has_the_packed_features_and_no_segments():
    lengths = {"encoder_tokens": 4, "nsp_labels": 1}
    batch = zero_batch(lengths, rows=2)
    assert {name: values.shape for name, values in batch.items()} == {
        "encoder_tokens": (2, 4),
        "nsp_labels": (2, 1),
        "encoder_segment_ids": (2, 4),
        "encoder_positions": (2, 4),
        "nsp_segment_ids": (2, 1),
        "nsp_positions": (2, 1),
    }
    assert all(values.dtype == np.int32 and not values.any() for values in batch.values())
    # The same features, in the same order, as a packed row of those lengths.
    example = {"encoder_tokens": np.array([11], np.int32), "nsp_labels": np.array([1], np.int32)}
    assert list(batch) == list(packed_rows([example], lengths, "none")[0])


def test_rejects_mismatched_features():
    with pytest.raises(ValueError, match="one feature group"):
        packed_rows([], {"encoder_tokens": 4, "decoder_tokens": 4}, "concat")
    with pytest.raises(ValueError, match="row length"):
        packed_rows([], {"decoder_tokens": 4, "decoder_weights": 5}, "concat")
    bad = {"decoder_tokens": np.arange(3, dtype=np.int32), "decoder_weights": np.ones(2, np.int32)}
    with pytest.raises(ValueError, match="values"):
        packed_rows([bad], {"decoder_tokens": 4, "decoder_weights": 4}, "concat")


def random_examples(count, seed):
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(count):
        encoder = rng.integers(10, 100, rng.integers(1, 12))
        examples.append(enc_dec_example(encoder, rng.integers(10, 100, rng.integers(1, 6))))
    return examples


@pytest.mark.parametrize("pack_mode", ["concat", "first_fit", "none"])
def test_state_restore_mid_stream_matches_uninterrupted(pack_mode):
    examples = random_examples(60, seed=0)
    if pack_mode == "concat":
        examples = [{"decoder_tokens": e["encoder_tokens"]} for e in examples]
        lengths = {"decoder_tokens": 7}
    else:  # first_fit and none
        lengths = {"encoder_tokens": 10, "decoder_tokens": 5}
    dataset = pack(
        grain.MapDataset.source(examples).to_iter_dataset(),
        feature_lengths=lengths,
        pack_mode=pack_mode,
        num_open_rows=3,
    )
    expected = list(dataset)
    iterator = iter(dataset)
    head = [next(iterator) for _ in range(5)]
    state = json.loads(json.dumps(iterator.get_state()))  # must survive a JSON checkpoint
    resumed = iter(dataset)
    resumed.set_state(state)
    for got, want in zip(head + list(resumed), expected, strict=True):
        assert got.keys() == want.keys()
        assert all(np.array_equal(got[k], want[k]) for k in want)
    # No token is lost or duplicated (first_fit and none truncate to the row length).
    feature = next(iter(lengths))
    limit = None if pack_mode == "concat" else lengths[feature]
    packed_tokens = np.concatenate([row[feature] for row in expected])
    source_tokens = np.concatenate([e[feature][:limit] for e in examples])
    assert sorted(packed_tokens[packed_tokens > 0]) == sorted(source_tokens)
