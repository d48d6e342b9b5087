"""The grain pipeline: documents -> shard -> shuffle -> repeat -> tokenize -> objective
-> pack -> batch.

Everything is deterministic given the seed: the document order (a fresh permutation
each epoch), the objective's randomness (one rng per (seed, shard, element index), so
dynamic masking draws a new mask every epoch) and therefore every batch. `iter(ds)`
returns a grain iterator whose `get_state()` is JSON-serializable and whose
`set_state()` resumes with exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np

from t5x_lite.data.packing import pack
from t5x_lite.errors import UserError
from t5x_lite.objectives.base import Objective

# first_fit keeps this many partly filled rows: more packs tighter, but delays and
# reorders examples. Few rows already fill well for the short examples objectives make.
FIRST_FIT_OPEN_ROWS = 8
# Documents are in memory, so reading needs no thread pool (grain's advice for in-memory
# sources); a caller that wants batches made while the step runs can wrap the result in
# grain.experimental.ThreadPrefetchIterDataset.
_READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def _derived_seed(seed: int, *purpose: int) -> int:
    """A 32-bit seed for one use of `seed`.

    grain shuffles epoch e with seed + e, so seeds 0 and 1 would share all but one
    epoch's order; hashing the user seed first keeps different seeds unrelated.
    """
    return int(np.random.SeedSequence([seed, *purpose]).generate_state(1)[0])


def _has_tokens(tokens: np.ndarray) -> bool:
    """Objectives need at least one token; only an empty document has none."""
    return len(tokens) > 0


class _PadBatch:
    """Stacks rows into a batch [batch_size, length], adding all-zero rows if short."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size

    def __call__(self, rows: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        batch = {}
        for feature in rows[0]:
            stacked = np.zeros((self.batch_size, len(rows[0][feature])), np.int32)
            stacked[: len(rows)] = np.stack([row[feature] for row in rows])
            batch[feature] = stacked
        return batch


def _check_args(num_docs: int, batch_size: int, seed: int, shard_index: int, shard_count: int):
    if batch_size < 1:
        raise UserError(f"batch size {batch_size} must be >= 1")
    if not 0 <= seed < 2**32:
        raise UserError(f"seed {seed} must be in [0, 2**32)")
    if not 0 <= shard_index < shard_count:
        raise UserError(f"shard index {shard_index} is outside [0, {shard_count})")
    if num_docs < shard_count:
        raise UserError(
            f"{num_docs} documents cannot be split over {shard_count} data shards (processes);"
            " use a bigger corpus or fewer processes"
        )


def make_dataset(
    docs: Sequence[str],
    tokenizer,
    objective: Objective,
    *,
    batch_size: int,
    seed: int,
    shuffle: bool,
    num_epochs: int | None,
    shard_index: int,
    shard_count: int,
    pad_final_batch: bool,
) -> grain.IterDataset:
    """Batches of packed rows: dicts of int32 arrays [batch_size, row length].

    This process reads documents shard_index::shard_count. `num_epochs=None` repeats
    forever. With `pad_final_batch` (eval) a short last batch is filled with all-zero
    rows, which carry zero loss weight; otherwise it is dropped.
    """
    _check_args(len(docs), batch_size, seed, shard_index, shard_count)
    dataset = grain.MapDataset.source(docs)[shard_index::shard_count]
    if shuffle:
        dataset = dataset.shuffle(seed=_derived_seed(seed, 0))
    dataset = dataset.repeat(num_epochs)  # shuffle reseeds each epoch
    dataset = dataset.map(tokenizer.encode)  # str -> [num_tokens] int32
    dataset = dataset.filter(_has_tokens)
    dataset = dataset.random_map(objective.preprocess, seed=_derived_seed(seed, 1, shard_index))
    rows = pack(
        dataset.to_iter_dataset(_READ_OPTIONS),
        feature_lengths=objective.feature_lengths(),
        pack_mode=objective.pack_mode,
        num_open_rows=FIRST_FIT_OPEN_ROWS,
    )
    return rows.batch(
        batch_size, drop_remainder=not pad_final_batch, batch_fn=_PadBatch(batch_size)
    )
