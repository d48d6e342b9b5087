"""The grain pipeline: documents -> shard -> shuffle -> repeat -> tokenize -> objective
(each document -> its examples) -> pack -> batch.

Everything is deterministic given the seed: the document order (a fresh permutation
each epoch), the objective's randomness and therefore every batch. The objective's rng
is seeded from (seed, shard, position in the repeated stream) when the objective has
`dynamic_randomness` (a new draw, e.g. a new mask, each time a document comes back),
and from (seed, document index in `docs`) otherwise (the same examples every epoch, and
on any number of shards). `iter(ds)` returns a grain iterator whose `get_state()` is
JSON-serializable and whose `set_state()` resumes with exactly the batches an
uninterrupted run would have seen: a state taken between two examples of one document
holds the document's place and the number of its examples already read, and resuming
reruns the objective on that document (a pure function of it and its rng) to continue.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import grain
import numpy as np

from t5x_lite.data import buckets
from t5x_lite.data.packing import pack
from t5x_lite.errors import UserError
from t5x_lite.objectives import Objective

# first_fit keeps this many partly filled rows: more packs tighter, but delays and
# reorders examples. Few rows already fill well for the short examples objectives make.
FIRST_FIT_OPEN_ROWS = 8
# Documents are in memory, so reading needs no thread pool (grain's advice for in-memory
# sources); a caller that wants batches made while the step runs can wrap the result in
# grain.experimental.ThreadPrefetchIterDataset.
_READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


# Purposes mixed with the seed, so each use of it draws unrelated numbers.
_SHUFFLE_PURPOSE = 0
_DYNAMIC_PURPOSE = 1
_STATIC_PURPOSE = 2


class _Document(NamedTuple):
    stream_index: int  # position in the shuffled, repeated stream of this shard
    doc_index: int  # index in `docs` (the unsharded source)
    tokens: np.ndarray  # [num_tokens] int32 (a tuple of arrays for fine-tuning examples)


class _WithDocIndex:
    """text -> (index in `docs`, text).

    Shuffle and repeat ask their parent for indices past its length (epoch e of a
    dataset of n reads indices e*n..), and only the source itself wraps them around, so
    the index must be reduced here, at the source, to name the document.
    """

    def __init__(self, num_docs: int):
        self.num_docs = num_docs

    def __call__(self, index: int, text: str) -> tuple[int, str]:
        return index % self.num_docs, text


class _Tokenize:
    """(stream index, (doc index, document)) -> _Document, encoded as the objective says
    (text: token ids; a fine-tuning example: its fields' ids); a class so it pickles."""

    def __init__(self, tokenizer, objective: Objective):
        self.tokenizer = tokenizer
        self.objective = objective

    def __call__(self, stream_index: int, indexed_doc: tuple[int, object]) -> _Document:
        doc_index, document = indexed_doc
        return _Document(stream_index, doc_index, self.objective.encode(self.tokenizer, document))


class _EpochShuffle(grain.MapDataset):
    """The parent's documents in a fresh random order each epoch: index e*n + i reads
    parent[e*n + permutation_e[i]], so the parent still sees which epoch it serves.

    grain's own shuffle needs no memory but is slow on small datasets (its index_shuffle
    takes ~12 ms per index for 2 documents, 3 ms for 10, 0.03 ms for 1,000), which made
    overfitting a two-sentence corpus spend most of its time shuffling. The documents are
    in memory anyway, so one int32 permutation per epoch (4 bytes a document, drawn from
    (seed, purpose, epoch)) costs little.
    """

    def __init__(self, parent: grain.MapDataset, seed: int):
        super().__init__(parent)
        self._seed = seed
        self._epoch, self._permutation = -1, np.zeros(0, np.int32)

    def __len__(self) -> int:
        return len(self._parent)

    def __str__(self) -> str:
        return "EpochShuffle"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        length = len(self._parent)
        epoch, position = divmod(index, length)
        if epoch != self._epoch:
            rng = np.random.default_rng([self._seed, _SHUFFLE_PURPOSE, epoch])
            self._epoch, self._permutation = epoch, rng.permutation(length).astype(np.int32)
        return self._parent[epoch * length + int(self._permutation[position])]


def _has_tokens(document: _Document) -> bool:
    """Objectives need at least one token; only an empty document has none (a task
    example's tuple of fields is never empty: its reader rejects empty cells)."""
    return len(document.tokens) > 0


class _ApplyObjective(grain.experimental.FlatMapTransform):
    """_Document -> its examples, with the rng (and other documents) the objective asks
    for. grain's FlatMapIterDataset reads no `max_fan_out`: a document may give any
    number of examples."""

    def __init__(
        self,
        objective: Objective,
        docs: Sequence[str],
        tokenizer,
        seed: int,
        shard_index: int,
        shard_count: int,
    ):
        self.objective = objective
        self.docs = docs
        self.tokenizer = tokenizer
        self.seed = seed
        self.shard_index = shard_index
        self.shard_count = shard_count
        self.num_shard_docs = len(range(shard_index, len(docs), shard_count))

    def rng(self, document: _Document) -> np.random.Generator:
        if self.objective.dynamic_randomness:
            purpose = (_DYNAMIC_PURPOSE, self.shard_index, document.stream_index)
        else:
            purpose = (_STATIC_PURPOSE, document.doc_index)
        return np.random.default_rng(np.random.SeedSequence([self.seed, *purpose]))

    def other_tokens(self, document: _Document, rng: np.random.Generator) -> np.ndarray:
        """Another document of this shard than `document`, uniformly; itself only if the
        shard has one."""
        own = (document.doc_index - self.shard_index) // self.shard_count
        other = int(rng.integers(max(self.num_shard_docs - 1, 1)))
        if self.num_shard_docs > 1 and other >= own:
            other += 1  # skip the document itself
        return self.tokenizer.encode(self.docs[self.shard_index + other * self.shard_count])

    def flat_map(self, document: _Document) -> list[dict[str, np.ndarray]]:
        rng = self.rng(document)
        if self.objective.uses_other_document:
            other_document = functools.partial(self.other_tokens, document)
            return self.objective.preprocess(document.tokens, rng, other_document)
        return self.objective.preprocess(document.tokens, rng)


class _PadBatch:
    """Stacks rows into a batch [batch_size, length], adding all-zero rows if short, then
    trims each feature group to its length bucket (`bucket_multiple` > 0; buckets.trim)."""

    def __init__(self, batch_size: int, bucket_multiple: int):
        self.batch_size, self.bucket_multiple = batch_size, bucket_multiple

    def __call__(self, rows: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        batch = {}
        for feature in rows[0]:
            stacked = np.zeros((self.batch_size, len(rows[0][feature])), np.int32)
            stacked[: len(rows)] = np.stack([row[feature] for row in rows])
            batch[feature] = stacked
        return buckets.trim(batch, self.bucket_multiple)


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
    bucket_multiple: int = 0,
    bucket_window: int = 0,
) -> grain.IterDataset:
    """Batches of packed rows: dicts of int32 arrays [batch_size, row length].

    This process reads documents shard_index::shard_count. `num_epochs=None` repeats
    forever. With `pad_final_batch` (eval) a short last batch is filled with all-zero
    rows, which carry zero loss weight; otherwise it is dropped. `bucket_multiple` > 0
    cuts each batch's feature groups to the multiple of it their longest row needs, and
    `bucket_window` > 0 first sorts that many batches' worth of rows by length and
    emits those batches in a random order (see `buckets`).
    """
    _check_args(len(docs), batch_size, seed, shard_index, shard_count)
    source = grain.MapDataset.source(docs)
    # The document index travels with the text through sharding, shuffling and repetition.
    dataset = source.map_with_index(_WithDocIndex(len(docs)))[shard_index::shard_count]
    if shuffle:
        dataset = _EpochShuffle(dataset, seed)
    dataset = dataset.repeat(num_epochs)  # a fresh order each epoch
    dataset = dataset.map_with_index(_Tokenize(tokenizer, objective))
    dataset = dataset.filter(_has_tokens)
    examples = grain.experimental.FlatMapIterDataset(
        dataset.to_iter_dataset(_READ_OPTIONS),
        _ApplyObjective(objective, docs, tokenizer, seed, shard_index, shard_count),
    )
    rows = pack(
        examples,
        feature_lengths=objective.feature_lengths(),
        pack_mode=objective.pack_mode,
        num_open_rows=FIRST_FIT_OPEN_ROWS,
    )
    if bucket_window:
        rows = buckets.SortedWindows(rows, batch_size=batch_size, window=bucket_window, seed=seed)
    return rows.batch(
        batch_size,
        drop_remainder=not pad_final_batch,
        batch_fn=_PadBatch(batch_size, bucket_multiple),
    )
