"""The grain pipeline: shapes, coverage, determinism, resumption, sharding, epochs."""

import json

import numpy as np
import pytest

from t5x_lite import tokenizer as tok_lib
from t5x_lite.data import inputs
from t5x_lite.data.pipeline import make_dataset
from t5x_lite.errors import UserError
from t5x_lite.objectives.causal_lm import CausalLM

FEATURES = (
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
    "decoder_segment_ids",
    "decoder_positions",
)


def corpus(num_docs: int = 60) -> list[str]:
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "tasty", "model", "data", "token", "pack", "row"]
    return [" ".join(rng.choice(words, rng.integers(2, 30))) + "." for _ in range(num_docs)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("pipeline_tok") / "tok"
    path = tok_lib.train_tokenizer(
        corpus(), str(prefix), vocab_size=400, model_type="bpe", max_sentences=1000
    )
    return tok_lib.Tokenizer(path)


class NumberTokenizer:
    """Document "17" -> [17]: makes the document order readable from the batches."""

    def encode(self, text: str) -> np.ndarray:
        return np.array([int(text)], np.int32) if text else np.zeros(0, np.int32)


class RandomWeightCausalLM(CausalLM):
    """CausalLM whose loss weights are one draw from the rng: exposes the rng stream."""

    def make_example(self, tokens, rng):
        example = super().make_example(tokens, None)
        example["decoder_loss_weights"][:] = rng.integers(1, 2**30)
        return example


class StaticRandomWeightCausalLM(RandomWeightCausalLM):
    dynamic_randomness = False


class ChunkedRandomWeightLM(RandomWeightCausalLM):
    """Three tokens an example: with seq_len 4 (+ EOS) each example fills one row."""

    chunk_length = 3


class WordsTokenizer:
    """Document "101 102 103" -> [101, 102, 103]."""

    def encode(self, text: str) -> np.ndarray:
        return np.array([int(word) for word in text.split()], np.int32)


class OtherDocumentLM(CausalLM):
    """Appends the first token of an other document that the pipeline picks for it."""

    uses_other_document = True

    def preprocess(self, tokens, rng, other_document):
        return super().preprocess(np.concatenate([tokens, other_document(rng)[:1]]), rng)


def build(docs, tokenizer, objective=None, **overrides):
    kwargs = dict(batch_size=4, seed=0, shuffle=True, num_epochs=1, shard_index=0,
                  shard_count=1, pad_final_batch=True)  # fmt: skip
    kwargs.update(overrides)
    objective = objective or CausalLM(seq_len=32, bos_id=tok_lib.BOS_ID, eos_id=tok_lib.EOS_ID)
    return make_dataset(docs, tokenizer, objective, **kwargs)


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def doc_order(batches) -> list[int]:
    """Document numbers in order of appearance (NumberTokenizer, seq_len 2 per doc)."""
    targets = np.concatenate([batch["decoder_target_tokens"].reshape(-1) for batch in batches])
    return [int(t) for t in targets if t > tok_lib.EOS_ID]


def test_batch_shapes_and_token_coverage(tokenizer):
    docs = corpus()
    batches = list(build(docs, tokenizer, shuffle=False))
    for batch in batches:
        assert tuple(batch) == FEATURES
        assert all(v.shape == (4, 32) and v.dtype == np.int32 for v in batch.values())
    targets = np.concatenate([b["decoder_target_tokens"] for b in batches])  # [rows, 32]
    segment_ids = np.concatenate([b["decoder_segment_ids"] for b in batches])
    # Every document token and one EOS per document, in document order, nothing else.
    expected = np.concatenate([np.append(tokenizer.encode(d), tok_lib.EOS_ID) for d in docs])
    assert np.array_equal(targets[segment_ids > 0], expected)
    assert (targets[segment_ids == 0] == 0).all()
    assert np.array_equal(batches[0]["decoder_input_tokens"][0, :3],
                          [tok_lib.BOS_ID, *tokenizer.encode(docs[0])[:2]])  # fmt: skip


def test_final_batch_padded_or_dropped():
    docs = [str(i) for i in range(10, 20)]  # 10 docs x 2 tokens = 5 rows of 4
    objective = CausalLM(seq_len=4, bos_id=tok_lib.BOS_ID, eos_id=tok_lib.EOS_ID)
    padded = list(build(docs, NumberTokenizer(), objective, batch_size=2, pad_final_batch=True))
    assert len(padded) == 3
    assert (padded[-1]["decoder_loss_weights"][1] == 0).all()
    assert (padded[-1]["decoder_segment_ids"][1] == 0).all()
    dropped = list(build(docs, NumberTokenizer(), objective, batch_size=2, pad_final_batch=False))
    assert len(dropped) == 2
    assert_batches_equal(dropped, padded[:2])


def test_resume_from_saved_state(tokenizer):
    dataset = build(corpus(), tokenizer, num_epochs=None)
    iterator = iter(dataset)
    take(iterator, 3)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = take(iterator, 4)
    resumed = iter(dataset)
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 4), expected)


def test_documents_give_many_examples_and_resume_between_them():
    # Document d holds 100*d .. 100*d + 11: four examples of three tokens each.
    docs = [" ".join(str(100 * d + t) for t in range(12)) for d in range(1, 4)]
    objective = ChunkedRandomWeightLM(seq_len=4, bos_id=tok_lib.BOS_ID, eos_id=tok_lib.EOS_ID)
    dataset = build(docs, WordsTokenizer(), objective, batch_size=1, num_epochs=2)
    batches = list(dataset)
    assert len(batches) == 3 * 4 * 2
    rows = np.array([b["decoder_target_tokens"][0] for b in batches])  # [24, 4]
    assert (rows[:, 3] == tok_lib.EOS_ID).all()
    for epoch in rows[:12], rows[12:]:  # every token once per epoch, chunks in order
        assert sorted(epoch[:, :3].reshape(-1).tolist()) == sorted(
            int(t) for doc in docs for t in doc.split())  # fmt: skip
        for first in range(0, 12, 4):  # a document's chunks are consecutive examples
            assert epoch[first : first + 4, :3].reshape(-1).tolist() == list(
                range(epoch[first, 0], epoch[first, 0] + 12))  # fmt: skip
    # A state saved between two examples of one document (after 1, 2, 5, 13 rows)
    # resumes with the same rows, the rng's draws included.
    for consumed in (1, 2, 5, 13):
        iterator = iter(dataset)
        take(iterator, consumed)
        state = json.loads(json.dumps(iterator.get_state()))
        resumed = iter(dataset)
        resumed.set_state(state)
        assert_batches_equal(list(resumed), batches[consumed:])


def test_seed_determines_batches(tokenizer):
    docs = corpus()
    first = take(iter(build(docs, tokenizer, seed=3)), 3)
    assert_batches_equal(take(iter(build(docs, tokenizer, seed=3)), 3), first)
    other = take(iter(build(docs, tokenizer, seed=4)), 3)
    assert not np.array_equal(other[0]["decoder_target_tokens"], first[0]["decoder_target_tokens"])


def test_each_epoch_is_a_new_permutation():
    docs = [str(i) for i in range(10, 40)]
    objective = CausalLM(seq_len=60, bos_id=tok_lib.BOS_ID, eos_id=tok_lib.EOS_ID)
    order = doc_order(build(docs, NumberTokenizer(), objective, batch_size=1, num_epochs=3))
    epochs = [order[0:30], order[30:60], order[60:90]]
    assert all(sorted(epoch) == list(range(10, 40)) for epoch in epochs)
    assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != list(range(10, 40))
    # Two documents (overfitting a tiny corpus): each epoch has both, in either order.
    order = doc_order(build(["10", "11"], NumberTokenizer(), objective, batch_size=1,
                            num_epochs=40))  # fmt: skip
    epochs = {tuple(order[i : i + 2]) for i in range(0, 80, 2)}
    assert epochs == {(10, 11), (11, 10)}


def test_objective_rng_is_fresh_each_epoch_and_repeatable():
    docs = [str(i) for i in range(10, 16)]
    objective = RandomWeightCausalLM(seq_len=2, bos_id=tok_lib.BOS_ID, eos_id=tok_lib.EOS_ID)

    def weights_by_epoch(seed):
        batches = build(docs, NumberTokenizer(), objective, batch_size=1, shuffle=False,
                        num_epochs=2, seed=seed)  # fmt: skip
        return np.array([b["decoder_loss_weights"][0, 0] for b in batches]).reshape(2, 6)

    weights = weights_by_epoch(seed=0)
    assert (weights[0] != weights[1]).all()  # same document, new draw next epoch
    assert np.array_equal(weights_by_epoch(seed=0), weights)


def test_static_rng_follows_the_document_across_epochs_and_shards():
    docs = [str(i) for i in range(10, 16)]
    objective = StaticRandomWeightCausalLM(seq_len=2, bos_id=tok_lib.BOS_ID, eos_id=tok_lib.EOS_ID)

    def weight_by_doc(seed, shard_index=0, shard_count=1, num_epochs=2):
        batches = build(docs, NumberTokenizer(), objective, batch_size=1, seed=seed,
                        num_epochs=num_epochs, shard_index=shard_index,
                        shard_count=shard_count)  # fmt: skip
        pairs = [(int(b["decoder_target_tokens"][0, 0]), int(b["decoder_loss_weights"][0, 0]))
                 for b in batches]  # fmt: skip
        assert len(pairs) == len(docs) // shard_count * num_epochs
        weights = dict(pairs)
        assert len(set(pairs)) == len(weights)  # one weight per document, every epoch
        return weights

    weights = weight_by_doc(seed=0)
    assert len(set(weights.values())) == len(docs)  # but different documents differ
    sharded = {**weight_by_doc(0, 0, 2, num_epochs=1), **weight_by_doc(0, 1, 2, num_epochs=1)}
    assert sharded == weights  # seeded by the document, not by the shard or position
    assert weight_by_doc(seed=1) != weights


def test_other_document_is_another_of_the_same_shard():
    docs = [str(i) for i in range(10, 22)]
    objective = OtherDocumentLM(seq_len=3, bos_id=tok_lib.BOS_ID, eos_id=tok_lib.EOS_ID)
    for shard_index in range(2):
        batches = build(docs, NumberTokenizer(), objective, batch_size=1, num_epochs=16,
                        shard_index=shard_index, shard_count=2)  # fmt: skip
        pairs = np.array([b["decoder_target_tokens"][0, :2] for b in batches])  # [n, 2]
        shard = {int(d) for d in docs[shard_index::2]}
        assert set(pairs[:, 0]) == shard and set(pairs[:, 1]) == shard
        assert (pairs[:, 0] != pairs[:, 1]).all()
        counts = np.unique(pairs[:, 1], return_counts=True)[1]  # 16 epochs x 6 docs
        assert counts.min() > 6 and counts.max() < 26  # uniform: 16 each
    single = build(["7"], NumberTokenizer(), objective, batch_size=1, num_epochs=2)
    assert [b["decoder_target_tokens"][0, :2].tolist() for b in single] == [[7, 7], [7, 7]]


def test_shards_are_disjoint_and_cover_all_documents():
    docs = [str(i) for i in range(10, 33)]
    objective = CausalLM(seq_len=8, bos_id=tok_lib.BOS_ID, eos_id=tok_lib.EOS_ID)
    shards = [
        doc_order(build(docs, NumberTokenizer(), objective, shard_index=i, shard_count=3))
        for i in range(3)
    ]
    assert sorted(sum(shards, [])) == list(range(10, 33))
    assert [len(shard) for shard in shards] == [8, 8, 7]


def test_empty_documents_are_skipped():
    objective = CausalLM(seq_len=4, bos_id=tok_lib.BOS_ID, eos_id=tok_lib.EOS_ID)
    batches = list(build(["11", "", "12"], NumberTokenizer(), objective, shuffle=False))
    assert doc_order(batches) == [11, 12]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"shard_index": 3, "shard_count": 3}, "shard index"),
        ({"batch_size": 0}, "batch size"),
        ({"seed": -1}, "seed"),
        ({"shard_count": 5}, "cannot be split"),
    ],
)
def test_bad_arguments_are_user_errors(overrides, match):
    with pytest.raises(UserError, match=match):
        build(["11", "12", "13"], NumberTokenizer(), **overrides)


# Data shards (config.data.num_shards) spread over simulated processes: t5x_lite.data.inputs.


def shard_config(num_shards: int, batch_size: int = 8):
    from ml_collections import ConfigDict

    return ConfigDict(dict(seed=3, data=dict(batch_size=batch_size, num_shards=num_shards,
                                             shuffle=True, bucket_multiple=0,
                                             bucket_window=0)))  # fmt: skip


def process_iterators(config, docs, process_count: int):
    """One iterator per simulated process, as `inputs.train_dataset` builds it there."""
    objective = CausalLM(seq_len=6, bos_id=tok_lib.BOS_ID, eos_id=tok_lib.EOS_ID)
    return [
        iter(
            inputs.train_dataset(
                config,
                docs,
                NumberTokenizer(),
                objective,
                process_index=p,
                process_count=process_count,
            )
        )  # fmt: skip
        for p in range(process_count)
    ]


def global_batch(iterators) -> dict[str, np.ndarray]:
    """The processes' host batches joined in process order, as the global array holds them."""
    hosts = [next(it) for it in iterators]
    return {k: np.concatenate([h[k] for h in hosts]) for k in hosts[0]}


def row_multiset(batch) -> list:
    return sorted(tuple(np.concatenate([batch[k][i] for k in sorted(batch)])) for i in
                  range(len(batch["decoder_segment_ids"])))  # fmt: skip


def job_state(iterators) -> dict:
    """What a checkpoint holds: every process's {shard: state}, merged, through JSON."""
    merged = {s: v for it in iterators for s, v in it.get_state().items()}
    return json.loads(json.dumps(merged))


def test_global_batches_do_not_depend_on_the_process_count():
    docs = [str(i) for i in range(10, 90)]
    config = shard_config(num_shards=4)
    runs = {p: process_iterators(config, docs, p) for p in (1, 2, 4)}
    for _ in range(6):  # two epochs of the 4 shards (20 docs, 10 rows of 6, 2 rows a batch)
        batches = {p: global_batch(its) for p, its in runs.items()}
        for p in (2, 4):
            assert row_multiset(batches[p]) == row_multiset(batches[1])
            # Contiguous shard blocks per process: even the row order is the same.
            assert_batches_equal([batches[p]], [batches[1]])
    # A checkpoint made by any process count resumes on any other one.
    states = {p: job_state(its) for p, its in runs.items()}
    expected = [global_batch(runs[1]) for _ in range(4)]
    for saved_by, resumed_on in ((4, 2), (2, 1), (4, 1), (1, 4)):
        resumed = process_iterators(config, docs, resumed_on)
        for it in resumed:
            it.set_state(states[saved_by])
        assert_batches_equal([global_batch(resumed) for _ in expected], expected)


def test_eval_processes_agree_on_the_batch_count():
    # Shard s of 4 has 6 + (s < 2) docs, rows of 1 doc, 2 rows a shard batch: shards 0
    # and 1 need 4 batches (the last half padding), shards 2 and 3 only 3.
    docs = [str(i) for i in range(10, 36)]
    config = shard_config(num_shards=4)
    objective = CausalLM(seq_len=2, bos_id=tok_lib.BOS_ID, eos_id=tok_lib.EOS_ID)

    def passes(process_count, max_batches=0):
        datasets = [
            inputs.eval_dataset(
                config,
                docs,
                NumberTokenizer(),
                objective,
                max_batches=max_batches,
                process_index=p,
                process_count=process_count,
            )  # fmt: skip
            for p in range(process_count)
        ]
        agreed = max(ds.local_num_batches() for ds in datasets)  # what the trainer gathers
        for ds in datasets:
            ds.set_num_batches(agreed)
        return [list(ds) for ds in datasets]

    single = passes(1)[0]
    assert len(single) == 4
    for process_count in (2, 4):
        per_process = passes(process_count)
        assert [len(batches) for batches in per_process] == [4] * process_count
        # The last process's shards ran out after 3: it feeds a batch of empty rows.
        assert (per_process[-1][-1]["decoder_loss_weights"] == 0).all()
        joined = [{k: np.concatenate([b[i][k] for b in per_process]) for k in single[0]}
                  for i in range(4)]  # fmt: skip
        assert_batches_equal(joined, single)
    assert [len(batches) for batches in passes(2, max_batches=2)] == [2, 2]


@pytest.mark.parametrize(
    "num_shards, process_count, batch_size, match",
    [
        (3, 2, 12, r"config.data.num_shards=3 must be 0 .* multiple of the 2 processes"),
        (4, 1, 6, r"config.data.batch_size=6 is not divisible by the 4 data shards"),
        (0, 4, 6, r"config.data.batch_size=6 is not divisible by the 4 data shards"),
    ],
)
def test_bad_shard_settings_are_user_errors(num_shards, process_count, batch_size, match):
    config = shard_config(num_shards, batch_size)
    with pytest.raises(UserError, match=match):
        inputs.owned_shards(config.data, 0, process_count)


def test_resuming_with_other_shards_says_to_set_num_shards():
    docs = [str(i) for i in range(10, 30)]
    saved = job_state(process_iterators(shard_config(num_shards=0), docs, 2))  # 2 shards
    (resumed,) = process_iterators(shard_config(num_shards=0), docs, 1)
    with pytest.raises(UserError, match=r"has 2 data shards .* set --config.data.num_shards=2"):
        resumed.set_state(saved)
    (resumed,) = process_iterators(shard_config(num_shards=2), docs, 1)
    resumed.set_state(saved)


def test_eval_passes_replay_the_first_one(monkeypatch):
    """The first pass is kept (read-only) and later passes replay it without reading the
    pipelines again; a split over ShardedEval.REPLAY_BYTES is read anew, the same."""
    docs = [str(i) for i in range(10, 36)]
    objective = CausalLM(seq_len=2, bos_id=tok_lib.BOS_ID, eos_id=tok_lib.EOS_ID)

    def passes(num_shards):
        dataset = inputs.eval_dataset(
            shard_config(num_shards=num_shards), docs, NumberTokenizer(), objective,
            process_index=0, process_count=1,
        )  # fmt: skip
        reads = []
        for shard, pipeline in list(dataset.pipelines.items()):
            dataset.pipelines[shard] = _Counted(pipeline, reads)
        first, second = list(dataset), list(dataset)
        return first, second, len(reads)

    for num_shards in (1, 2):
        first, second, reads = passes(num_shards)
        assert reads == num_shards  # one pass per shard: the count, kept
        assert len(first) >= 3
        assert_batches_equal(second, first)
    with pytest.raises(ValueError, match="read-only"):  # one shard: the kept batch itself
        first_of_one = passes(1)[0]
        first_of_one[0]["decoder_input_tokens"][0, 0] = 7

    monkeypatch.setattr(inputs.ShardedEval, "REPLAY_BYTES", 10)
    big_first, big_second, big_reads = passes(2)
    assert big_reads == 2 * 3  # counted, then read by each of the two passes
    assert_batches_equal(big_first, first)
    assert_batches_equal(big_second, first)


class _Counted:
    """An iterable that records each iteration over the wrapped pipeline."""

    def __init__(self, pipeline, reads: list):
        self.pipeline, self.reads = pipeline, reads

    def __iter__(self):
        self.reads.append(1)
        return iter(self.pipeline)
