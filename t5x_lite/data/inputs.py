"""From the config to ready inputs: documents, the data shards of each process, and
datasets of batches.

Shared by `train`, `bench` and the downstream commands so they all read data the same way.
The tokenizer and the objective come from `t5x_lite.tokenizer` and `t5x_lite.objectives`;
the config-level calls to them below are one line each.
"""

from __future__ import annotations

import itertools

import jax
import numpy as np

from t5x_lite import objectives
from t5x_lite import tokenizer as tokenizer_lib
from t5x_lite.data import buckets, labelled, packing, pipeline, sources
from t5x_lite.errors import UserError


def load_documents(data_config):
    """-> (train documents, eval documents or None) as the config's sources say."""
    train_docs = _load("train", data_config.train)
    kind = data_config.eval.kind
    if kind == "heldout":
        return sources.split_heldout(train_docs, data_config.heldout_docs)
    if kind == "none":
        return train_docs, None
    return train_docs, _load("eval", data_config.eval)


def _load(split: str, source_config):
    try:
        return sources.load_source(source_config)
    except UserError as e:  # say which source: its keys live under config.data.<split>
        raise UserError(f"config.data.{split}: {e}") from None


def load_or_train_tokenizer(config, workdir: str, train_docs) -> tokenizer_lib.Tokenizer:
    """`config.tokenizer`'s tokenizer, or one trained on the documents into workdir (see
    `t5x_lite.tokenizer.load_or_train`)."""
    return tokenizer_lib.load_or_train(
        config.tokenizer,
        workdir,
        labelled.texts(train_docs),
        model_vocab_size=config.model.vocab_size,
        process_count=jax.process_count(),
    )


def build_objective(config, tokenizer) -> objectives.Objective:
    return objectives.build(config.objective, config.model.arch, tokenizer)


def check_objective(config) -> None:
    """Fail on bad objective settings before any data is read (`objectives.check`)."""
    objectives.check(config.objective, config.model.arch, config.model.vocab_size)


def process_batch_size(global_batch: int) -> int:
    return global_batch // jax.process_count()


def owned_shards(data_config, process_index: int, process_count: int) -> tuple[int, range]:
    """-> (number of data shards, the shards this process reads).

    `config.data.num_shards` shards (0 = one per process), split into contiguous blocks:
    process p of P reads shards p*S/P .. (p+1)*S/P - 1, so that joining the processes' rows
    in process order gives the same global batch, row for row, for any P dividing S.
    """
    num_shards = data_config.num_shards or process_count
    if num_shards < 0 or num_shards % process_count:
        raise UserError(
            f"config.data.num_shards={data_config.num_shards} must be 0 (one shard per "
            f"process) or a multiple of the {process_count} processes"
        )
    if data_config.batch_size % num_shards:
        raise UserError(
            f"config.data.batch_size={data_config.batch_size} is not divisible by the "
            f"{num_shards} data shards (config.data.num_shards={data_config.num_shards})"
        )
    multiple, _ = bucketing(data_config)
    if multiple and process_count > 1:
        raise UserError(
            f"config.data.bucket_multiple={multiple} trims each process's "
            "batches to their own length, but the processes of a job must feed equal shapes: "
            "set --config.data.bucket_multiple=0 for multi-process runs"
        )
    per_process = num_shards // process_count
    return num_shards, range(process_index * per_process, (process_index + 1) * per_process)


def train_dataset(config, docs, tokenizer, objective, *, process_index=None, process_count=None):
    """Endless, shuffled (if configured) batches of this process's shards.

    `process_index`/`process_count` default to JAX's; tests pass them to play one
    process of a larger job.
    """
    num_shards, shards = _layout(config, process_index, process_count)
    pipelines = {
        s: _pipeline(config, docs, tokenizer, objective, s, num_shards, training=True)
        for s in shards
    }
    return ShardedDataset(num_shards, pipelines)


def eval_dataset(
    config, docs, tokenizer, objective, *, max_batches=0, process_index=None, process_count=None
):
    """One ordered pass over this process's shards, at most `max_batches` (0 = all)
    batches; short shards are filled with empty rows (zero loss weight).

    Every process must run the same number of batches: a multi-process caller agrees on
    `num_batches` with `set_num_batches` (the largest `local_num_batches()`).
    """
    num_shards, shards = _layout(config, process_index, process_count)
    pipelines = {
        s: _pipeline(config, docs, tokenizer, objective, s, num_shards, training=False)
        for s in shards
    }
    rows = config.data.batch_size // num_shards
    return ShardedEval(
        pipelines, packing.zero_batch(objective.feature_lengths(), rows), max_batches
    )


def _layout(config, process_index, process_count) -> tuple[int, range]:
    if process_count is None:
        process_index, process_count = jax.process_index(), jax.process_count()
    return owned_shards(config.data, process_index, process_count)


def _pipeline(config, docs, tokenizer, objective, shard, num_shards, *, training: bool):
    return pipeline.make_dataset(
        docs,
        tokenizer,
        objective,
        batch_size=config.data.batch_size // num_shards,
        seed=config.seed,
        shuffle=training and config.data.shuffle,
        num_epochs=None if training else 1,
        shard_index=shard,
        shard_count=num_shards,
        pad_final_batch=not training,
        bucket_multiple=bucketing(config.data)[0],
        bucket_window=bucketing(config.data)[1] if training else 0,
    )


def bucketing(data_config) -> tuple[int, int]:
    """(config.data.bucket_multiple, bucket_window); (0, 0) for a run saved before they
    existed, which then keeps its full rows."""
    return data_config.get("bucket_multiple", 0), data_config.get("bucket_window", 0)


def _read_only(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for value in batch.values():
        value.flags.writeable = False
    return batch


def _join(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-shard batches, in shard order -> this process's rows of the global batch."""
    if len(batches) == 1:
        return batches[0]
    batches = buckets.pad_to_common(batches)  # length buckets may differ between shards
    return {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}


class ShardedDataset:
    """The pipelines of this process's data shards; `iter()` gives a ShardedIterator."""

    def __init__(self, num_shards: int, pipelines: dict):
        self.num_shards, self.pipelines = num_shards, pipelines

    def __iter__(self) -> ShardedIterator:
        return ShardedIterator(self.num_shards, {s: iter(p) for s, p in self.pipelines.items()})


class ShardedIterator:
    """Host batches joining one batch of each owned shard. The state is JSON
    {str(shard): grain state}; `set_state` takes a state with every shard of the job
    (as a checkpoint holds it) and resumes the shards this process owns."""

    def __init__(self, num_shards: int, iterators: dict):
        self.num_shards, self.iterators = num_shards, iterators

    def __next__(self) -> dict[str, np.ndarray]:
        return _join([next(it) for it in self.iterators.values()])

    def __iter__(self):
        return self

    def get_state(self) -> dict:
        return {str(s): it.get_state() for s, it in self.iterators.items()}

    def set_state(self, state: dict) -> None:
        if len(state) != self.num_shards or any(str(s) not in state for s in self.iterators):
            raise UserError(
                f"the checkpoint's data position has {len(state)} data shards but this run "
                f"reads {self.num_shards}: set --config.data.num_shards={len(state)} (a "
                f"multiple of the process count) or use the original {len(state)} processes"
            )
        for s, it in self.iterators.items():
            it.set_state(state[str(s)])


class ShardedEval:
    """A pass of `num_batches` host batches over the owned shards' eval pipelines.

    The pipelines are deterministic, so the first pass (made by `local_num_batches`) keeps
    its batches when they total at most `REPLAY_BYTES`, and every evaluation replays them
    instead of tokenizing, masking and packing the split again (~0.65 s per evaluation
    of SST-2's dev set); a larger split is read anew each time."""

    REPLAY_BYTES = 256 * 2**20

    def __init__(self, pipelines: dict, empty_batch: dict, max_batches: int):
        self.pipelines, self.empty_batch, self.max_batches = pipelines, empty_batch, max_batches
        self.num_batches: int | None = None
        self._local: int | None = None
        self._kept: list[list[dict]] | None = None  # per shard, when they fit

    def local_num_batches(self) -> int:
        """Batches this process's longest shard yields (at most max_batches); one pass,
        made once."""
        if self._local is None:
            limit = self.max_batches or None
            kept: list[list[dict]] = [[] for _ in self.pipelines]
            size, keep = 0, True
            for shard_kept, pipeline in zip(kept, self.pipelines.values()):
                for batch in itertools.islice(pipeline, limit):
                    size += sum(value.nbytes for value in batch.values())
                    keep = keep and size <= self.REPLAY_BYTES
                    # Read-only, so a consumer that wrote into a batch would fail, not
                    # change what the next evaluation sees.
                    shard_kept.append(_read_only(batch) if keep else None)
            self._local = max(len(shard_kept) for shard_kept in kept)
            self._kept = kept if keep else None
        return self._local

    def set_num_batches(self, num_batches: int) -> None:
        self.num_batches = num_batches

    def __iter__(self):
        if self.num_batches is None and jax.process_count() > 1:
            raise RuntimeError("multi-process eval needs set_num_batches() agreed by all")
        local = self.local_num_batches()
        num_batches = local if self.num_batches is None else self.num_batches
        sources = self._kept if self._kept is not None else self.pipelines.values()
        iterators = [iter(source) for source in sources]
        for _ in range(num_batches):
            yield _join([next(it, None) or self.empty_batch for it in iterators])
