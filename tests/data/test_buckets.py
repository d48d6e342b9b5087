"""Length buckets, worked by hand: trimming, sorted windows, their resumption, and the
pipeline with the fine-tuning formats (every example once, batches of similar length)."""

import collections
import itertools
import json

import grain
import numpy as np
import pytest

from t5x_lite import tokenizer as tok_lib
from t5x_lite.data import buckets
from t5x_lite.data.labelled import TaskExample
from t5x_lite.data.pipeline import make_dataset
from t5x_lite.objectives.registry import get_class


def batch_of(used: dict[str, list[int]], row_lengths: dict[str, int]) -> dict[str, np.ndarray]:
    """A PACK_NONE-style batch: per group, rows whose first `used` positions are real
    (token i + 1 at position i, segment id 1); zeros after."""
    batch = {}
    for group, lengths in used.items():
        tokens = np.zeros((len(lengths), row_lengths[group]), np.int32)
        for row, n in enumerate(lengths):
            tokens[row, :n] = np.arange(1, n + 1)
        batch[f"{group}_input_tokens"] = tokens
        batch[f"{group}_segment_ids"] = (tokens > 0).astype(np.int32)
        batch[f"{group}_positions"] = np.where(tokens > 0, tokens - 1, 0)
    return batch


def test_trim_cuts_each_group_to_the_multiple_its_longest_row_needs():
    batch = batch_of({"encoder": [3, 9, 0], "decoder": [2, 2, 0]}, {"encoder": 32, "decoder": 8})
    batch["class_labels"] = np.array([[1], [0], [0]], np.int32)
    batch["class_segment_ids"] = np.array([[1], [1], [0]], np.int32)
    trimmed = buckets.trim(batch, 8)
    # encoder: longest row 9 -> 16; decoder: 2 -> 8 (its whole row); class: 1 stays 1
    assert {name: v.shape for name, v in trimmed.items()} == {
        "encoder_input_tokens": (3, 16),
        "encoder_segment_ids": (3, 16),
        "encoder_positions": (3, 16),
        "decoder_input_tokens": (3, 8),
        "decoder_segment_ids": (3, 8),
        "decoder_positions": (3, 8),
        "class_labels": (3, 1),
        "class_segment_ids": (3, 1),
    }
    # Only padding went: every real token is kept where it was.
    np.testing.assert_array_equal(trimmed["encoder_input_tokens"][1, :9], np.arange(1, 10))
    assert not batch["encoder_input_tokens"][:, 16:].any()
    assert buckets.trim(batch, 0) is batch  # 0: full rows


@pytest.mark.parametrize(
    "used, multiple, row, expected",
    [(1, 8, 64, 8), (8, 8, 64, 8), (9, 8, 64, 16), (60, 8, 64, 64), (0, 8, 64, 8), (9, 8, 12, 12)],
)
def test_bucket_length(used, multiple, row, expected):
    assert buckets.bucket_length(used, multiple, row) == expected


def test_shards_of_different_buckets_are_padded_to_one_length():
    a = batch_of({"encoder": [3]}, {"encoder": 16})
    b = batch_of({"encoder": [12]}, {"encoder": 16})
    a, b = buckets.pad_to_common([buckets.trim(a, 4), buckets.trim(b, 4)])
    assert a["encoder_input_tokens"].shape == b["encoder_input_tokens"].shape == (1, 12)
    np.testing.assert_array_equal(a["encoder_input_tokens"][0], [1, 2, 3] + [0] * 9)


def rows_of(lengths: list[int]) -> list[dict[str, np.ndarray]]:
    """One row per length (its decoder group that long), carrying its index as `id`."""
    rows = []
    for i, n in enumerate(lengths):
        row = {name: v[0] for name, v in batch_of({"decoder": [n]}, {"decoder": 16}).items()}
        rows.append(row | {"id": np.array([i])})
    return rows


LENGTHS = [5, 1, 9, 3, 7, 2, 8, 4, 6, 10, 11, 12, 13]


def windows(lengths=LENGTHS, batch_size=2, window=3, seed=0):
    source = grain.MapDataset.source(rows_of(lengths)).to_iter_dataset()
    return iter(buckets.SortedWindows(source, batch_size=batch_size, window=window, seed=seed))


def test_a_window_is_sorted_into_batches_emitted_in_random_order():
    ids = [int(row["id"][0]) for row in windows()]
    assert sorted(ids) == list(range(len(LENGTHS)))  # every row once
    # Window 1 = rows 0-5 (lengths 5 1 9 3 7 2): sorted 1 2 3 5 7 9 -> blocks (1,2) (3,5)
    # (7,9), emitted in a permuted order; window 2 = rows 6-11; window 3 = row 12 alone.
    first = [LENGTHS[i] for i in ids[:6]]
    blocks = sorted(tuple(sorted(first[i : i + 2])) for i in range(0, 6, 2))
    assert blocks == [(1, 2), (3, 5), (7, 9)]
    second = [LENGTHS[i] for i in ids[6:12]]
    assert sorted(tuple(sorted(second[i : i + 2])) for i in range(0, 6, 2)) == [
        (4, 6),
        (8, 10),
        (11, 12),
    ]
    assert ids[12] == 12
    # The order of the blocks depends on the seed, their content does not.
    orders = {tuple(int(r["id"][0]) for r in windows(seed=seed))[:6] for seed in range(8)}
    assert len(orders) > 1


@pytest.mark.parametrize("stop", [0, 1, 5, 6, 7, 12])
def test_a_restored_window_iterator_continues_with_the_same_rows(stop):
    expected = [int(row["id"][0]) for row in windows()]
    it = windows()
    seen = [int(next(it)["id"][0]) for _ in range(stop)]
    state = json.loads(json.dumps(it.get_state()))
    resumed = windows()
    resumed.set_state(state)
    assert seen + [int(row["id"][0]) for row in resumed] == expected


class Tokenizer:
    """'21 22' -> [21, 22], with the special ids the formats read."""

    bos_id, eos_id = tok_lib.BOS_ID, tok_lib.EOS_ID
    cls_id, sep_id = tok_lib.CLS_ID, tok_lib.SEP_ID

    def encode(self, text):
        return np.array([int(word) for word in text.split()], np.int32)


def task_examples(n: int) -> list[TaskExample]:
    rng = np.random.default_rng(0)
    return [
        TaskExample(
            " ".join(["20"] * int(rng.integers(1, 40)) + [str(100 + i)]), None, i % 2, "", i
        )
        for i in range(n)
    ]


def example_ids(batch) -> list[int]:
    """The example ids (the last text token, 100 + i) of a BERT-format batch's real rows."""
    ids = []
    for tokens, segments in zip(batch["encoder_input_tokens"], batch["encoder_segment_ids"]):
        if segments.any():
            ids.append(int(tokens[segments.sum() - 2]) - 100)  # before the final [SEP]
    return ids


def bert_dataset(examples, *, multiple, window, shuffle=True, epochs=None, pad_final=False):
    objective = get_class("classification", "encoder_only").build(Tokenizer(), seq_len=64)
    return make_dataset(
        examples,
        Tokenizer(),
        objective,
        batch_size=8,
        seed=1,
        shuffle=shuffle,
        num_epochs=epochs,
        shard_index=0,
        shard_count=1,
        pad_final_batch=pad_final,
        bucket_multiple=multiple,
        bucket_window=window,
    )


def test_bucketed_training_batches_hold_every_example_and_little_padding():
    examples = task_examples(96)  # 12 batches of 8 = 3 windows of 4 batches
    plain = list(itertools.islice(bert_dataset(examples, multiple=0, window=0), 24))
    bucketed = list(itertools.islice(bert_dataset(examples, multiple=8, window=4), 24))
    # Two epochs of 96 examples each: every example twice, in both.
    for batches in (plain, bucketed):
        counts = collections.Counter(i for b in batches for i in example_ids(b))
        assert set(counts) == set(range(96)) and set(counts.values()) == {2}

    def real_share(batches):
        segments = [b["encoder_segment_ids"] for b in batches]
        return sum(int((s > 0).sum()) for s in segments) / sum(s.size for s in segments)

    assert plain[0]["encoder_input_tokens"].shape == (8, 64)
    assert real_share(plain) < 0.4 and real_share(bucketed) > 0.7
    lengths = {b["encoder_input_tokens"].shape[1] for b in bucketed}
    assert lengths <= {8, 16, 24, 32, 40, 48} and len(lengths) > 2


def test_bucketed_eval_keeps_the_order_and_trims_each_batch():
    examples = task_examples(20)
    plain = list(
        bert_dataset(examples, multiple=0, window=0, shuffle=False, epochs=1, pad_final=True)
    )
    trimmed = list(
        bert_dataset(examples, multiple=8, window=0, shuffle=False, epochs=1, pad_final=True)
    )
    assert [example_ids(b) for b in trimmed] == [example_ids(b) for b in plain]
    assert [i for b in trimmed for i in example_ids(b)] == list(range(20))
    for full, cut in zip(plain, trimmed):
        length = cut["encoder_input_tokens"].shape[1]
        assert length % 8 == 0 and length < 64
        for name in full:
            np.testing.assert_array_equal(full[name][:, :length], cut[name])
            assert not full[name][:, length:].any()
