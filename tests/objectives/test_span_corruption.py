"""span_corruption: hand-worked examples, T5's chunk-length arithmetic, long documents cut
into consecutive chunks, noise statistics over 10k examples, the density / span-length
variants T5 sweeps, config errors."""

import inspect
import re

import numpy as np
import pytest

from t5x_lite import objectives
from t5x_lite.data.pipeline import make_dataset
from t5x_lite.errors import UserError
from t5x_lite.objectives.span_corruption import (
    SpanCorruption,
    random_segmentation,
    random_spans_noise_mask,
)
from tests.objectives.helpers import NumbersTokenizer

BOS, EOS = 3, 1
SENTINELS = np.arange(7, 107)  # <extra_id_0> is 7, as in t5x_lite.tokenizer
KNOBS = dict(inputs_length=16, targets_length=16, noise_density=0.3, mean_noise_span_length=1.5,
             corrupted_span="sentinel")  # fmt: skip
DOC = np.arange(20, 30, dtype=np.int32)  # 10 tokens: 3 noise in 2 spans, 7 kept


def make(**overrides):
    return SpanCorruption(bos_id=BOS, eos_id=EOS, sentinel_ids=SENTINELS, **{**KNOBS, **overrides})


def as_lists(example):
    return {name: values.tolist() for name, values in example.items()}


def test_sentinel_mode_hand_worked():
    # Seed 0 draws the noise mask 0 0 0 0 1 1 0 0 0 1: spans [24 25] and [29].
    (example,) = make().preprocess(DOC, np.random.default_rng(0))  # short: one chunk
    assert as_lists(example) == {
        "encoder_input_tokens": [20, 21, 22, 23, 7, 26, 27, 28, 8, EOS],
        "decoder_input_tokens": [BOS, 7, 24, 25, 8, 29],
        "decoder_target_tokens": [7, 24, 25, 8, 29, EOS],
        "decoder_loss_weights": [1, 1, 1, 1, 1, 1],
    }
    # Seed 2: spans [22 23] and [29]; sentinel 0 always goes to the first span.
    (example,) = make().preprocess(DOC, np.random.default_rng(2))
    assert example["encoder_input_tokens"].tolist() == [20, 21, 7, 24, 25, 26, 27, 28, 8, EOS]
    assert example["decoder_target_tokens"].tolist() == [7, 22, 23, 8, 29, EOS]


def test_drop_mode_hand_worked():
    # Same draws as seed 0 above: the noise tokens leave the inputs, no sentinels.
    (example,) = make(corrupted_span="drop").preprocess(DOC, np.random.default_rng(0))
    assert as_lists(example) == {
        "encoder_input_tokens": [20, 21, 22, 23, 26, 27, 28, EOS],
        "decoder_input_tokens": [BOS, 24, 25, 29],
        "decoder_target_tokens": [24, 25, 29, EOS],
        "decoder_loss_weights": [1, 1, 1, 1],
    }


def test_noise_mask_structure():
    mask = random_spans_noise_mask(10, 0.3, 1.5, np.random.default_rng(0))
    assert mask.astype(int).tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0, 1]
    # A one-token chunk is all noise; two tokens: one kept, then one noise.
    assert random_spans_noise_mask(1, 0.15, 3.0, np.random.default_rng(0)).tolist() == [True]
    two = random_spans_noise_mask(2, 0.15, 3.0, np.random.default_rng(0))
    assert two.tolist() == [False, True]


def test_random_segmentation_is_a_uniform_composition():
    rng = np.random.default_rng(0)
    draws = np.array([random_segmentation(5, 3, rng) for _ in range(6000)])
    assert (draws.sum(axis=1) == 5).all() and (draws >= 1).all()
    # 5 into 3 positive parts: C(4, 2) = 6 compositions, each 1/6 of the draws.
    _, counts = np.unique(draws, axis=0, return_counts=True)
    assert len(counts) == 6 and np.abs(counts / 6000 - 1 / 6).max() < 0.02
    assert random_segmentation(4, 1, rng).tolist() == [4]
    assert random_segmentation(0, 1, rng).tolist() == [0]


@pytest.mark.parametrize(
    ("inputs_length", "targets_length", "mode", "chunk_length"),
    # T5's 512 -> 568 raw / 114 targets. Targets bind at 60: 296 raw tokens give 44 noise
    # in 15 spans (44 + 15 + EOS = 60); 297 give 45 noise (61). Drop: 601 - 90 + EOS = 512.
    [(512, 114, "sentinel", 568), (512, 512, "sentinel", 568),
     (512, 60, "sentinel", 296), (512, 512, "drop", 601)],
)  # fmt: skip
def test_chunk_length_is_the_largest_that_fits(inputs_length, targets_length, mode, chunk_length):
    knobs = dict(inputs_length=inputs_length, targets_length=targets_length, noise_density=0.15,
                 mean_noise_span_length=3.0, corrupted_span=mode)  # fmt: skip
    assert make(**knobs).chunk_length == chunk_length
    doc = np.arange(1000, 3000, dtype=np.int32)
    longer = make(**knobs)
    longer.chunk_length = chunk_length + 1  # one more raw token overflows a row
    overflow = [e for seed in range(3) for e in longer.preprocess(doc, np.random.default_rng(seed))]
    assert any(len(e["encoder_input_tokens"]) > inputs_length
               or len(e["decoder_target_tokens"]) > targets_length for e in overflow)  # fmt: skip


def reconstruct(example):
    """Sentinel-mode example -> the raw chunk (inputs with each sentinel filled in)."""
    inputs = example["encoder_input_tokens"][:-1]
    targets = example["decoder_target_tokens"][:-1]
    is_sentinel = np.isin(targets, SENTINELS)
    spans = np.split(targets, np.flatnonzero(is_sentinel))[1:]  # each starts with its sentinel
    pieces = []
    for token in inputs.tolist():
        pieces.extend(spans.pop(0)[1:].tolist() if token in SENTINELS else [token])
    return pieces


def corpus(num_docs, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(200, 30000, n).astype(np.int32) for n in rng.integers(200, 900, num_docs)]


def test_long_document_is_cut_into_consecutive_chunks():
    objective = make()  # chunk_length 17
    doc = np.arange(1000, 1173, dtype=np.int32)  # 10 chunks and 3 tokens
    examples = objective.preprocess(doc, np.random.default_rng(0))
    chunks = [reconstruct(example) for example in examples]
    assert [len(chunk) for chunk in chunks] == [17] * 10 + [3]
    assert sum(chunks, []) == doc.tolist()  # every token in exactly one example, in order
    # Drop mode: the kept and the noise tokens of each example make up its chunk.
    drop = make(corrupted_span="drop")  # chunk_length 22
    examples = drop.preprocess(doc, np.random.default_rng(0))
    kept_and_noise = [(e["encoder_input_tokens"][:-1], e["decoder_target_tokens"][:-1])
                      for e in examples]  # fmt: skip
    chunks = [np.sort(np.concatenate(pair)) for pair in kept_and_noise]
    assert [len(chunk) for chunk in chunks] == [22] * 7 + [19]
    assert np.concatenate(chunks).tolist() == doc.tolist()


def test_noise_statistics_over_10k_examples():
    objective = make(inputs_length=512, targets_length=114, noise_density=0.15,
                     mean_noise_span_length=3.0)  # fmt: skip
    num_noise = num_tokens = num_spans = num_examples = 0
    for seed, doc in enumerate(corpus(8_000, seed=0)):
        examples = objective.preprocess(doc, np.random.default_rng(seed))
        if seed < 200:  # the chunks come back in order and cover the document
            assert sum((reconstruct(example) for example in examples), []) == doc.tolist()
        for example in examples:
            inputs, targets = example["encoder_input_tokens"], example["decoder_target_tokens"]
            assert len(inputs) <= 512 and len(targets) <= 114
            spans = int(np.isin(targets, SENTINELS).sum())
            num_spans += spans
            num_noise += len(targets) - 1 - spans
            num_tokens += len(inputs) - 1 - spans + len(targets) - 1 - spans
            num_examples += 1
    assert num_examples > 10_000
    assert abs(num_noise / num_tokens - 0.15) < 0.05 * 0.15
    assert abs(num_noise / num_spans - 3.0) < 0.05 * 3.0


@pytest.mark.parametrize("mode", ["sentinel", "drop"])
@pytest.mark.parametrize(("density", "mean_span"), [(0.1, 3.0), (0.15, 3.0), (0.25, 3.0),
                                                    (0.5, 3.0), (0.15, 2.0), (0.15, 5.0),
                                                    (0.15, 10.0), (0.15, 1.0)])  # fmt: skip
def test_t5_variants_are_valid(mode, density, mean_span):
    objective = make(inputs_length=128, targets_length=128, noise_density=density,
                     mean_noise_span_length=mean_span, corrupted_span=mode)  # fmt: skip
    examples = [example for seed, doc in enumerate(corpus(50, seed=1))
                for example in objective.preprocess(doc, np.random.default_rng(seed))]  # fmt: skip
    for example in examples:
        inputs, targets = example["encoder_input_tokens"], example["decoder_target_tokens"]
        assert len(inputs) <= 128 and len(targets) <= 128
        assert inputs[-1] == EOS and targets[-1] == EOS
        assert example["decoder_input_tokens"].tolist() == [BOS, *targets[:-1].tolist()]
        sentinels = targets[np.isin(targets, SENTINELS)]
        if mode == "drop":
            assert len(sentinels) == 0 and not np.isin(inputs, SENTINELS).any()
            continue
        assert sentinels.tolist() == SENTINELS[: len(sentinels)].tolist()
        assert inputs[np.isin(inputs, SENTINELS)].tolist() == sentinels.tolist()
        if mean_span == 1.0:  # every span is one token
            assert len(targets) - 1 == 2 * len(sentinels)


def test_contract_and_registry():
    objective = make()
    assert objectives.get_class("span_corruption") is SpanCorruption
    assert set(inspect.signature(SpanCorruption).parameters) == set(KNOBS) | set(
        SpanCorruption.ids_from_tokenizer)  # fmt: skip
    assert objective.architectures == ("encoder_decoder",) and objective.pack_mode == "first_fit"
    (term,) = objective.loss_terms
    assert (term.output, term.targets, term.weights) == (
        "logits", "decoder_target_tokens", "decoder_loss_weights")  # fmt: skip
    assert objective.feature_lengths() == {"encoder_input_tokens": 16, "decoder_input_tokens": 16,
                                           "decoder_target_tokens": 16,
                                           "decoder_loss_weights": 16}  # fmt: skip
    (example,) = objective.preprocess(DOC, np.random.default_rng(0))
    assert all(values.dtype == np.int32 for values in example.values())


def test_build_reads_the_tokenizer_ids():
    class FakeTokenizer:
        bos_id, eos_id = BOS, EOS

        def sentinel_id(self, i):
            return 7 + i

    objective = SpanCorruption.build(FakeTokenizer(), **KNOBS)
    assert objective.sentinel_ids.tolist() == SENTINELS.tolist()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(noise_density=0.0), "config.objective.noise_density=0.0 must be in (0, 1)"),
        (dict(noise_density=1.0), "config.objective.noise_density=1.0 must be in (0, 1)"),
        (dict(mean_noise_span_length=0.5), "config.objective.mean_noise_span_length=0.5 must be"),
        (dict(corrupted_span="mask"), "config.objective.corrupted_span='mask' is not one of"),
        (dict(inputs_length=2), "config.objective.inputs_length=2 is too short"),
        (dict(targets_length=2), "config.objective.targets_length=2 is too short"),
        (dict(corrupted_span="drop", targets_length=1), "targets_length=1 is too short"),
        (dict(inputs_length=2048, targets_length=2048, noise_density=0.5,
              mean_noise_span_length=3.0),
         "raise mean_noise_span_length or lower noise_density / inputs_length"),
    ],
)  # fmt: skip
def test_bad_configs_are_one_line_user_errors(overrides, message):
    with pytest.raises(UserError, match=re.escape(message)) as error:
        make(**overrides)
    assert "\n" not in str(error.value)


def test_shortest_lengths_are_accepted():
    assert make(inputs_length=3, targets_length=3).chunk_length == 2
    assert make(inputs_length=2, targets_length=2, corrupted_span="drop").chunk_length == 2
    # So many spans are fine when nothing needs a sentinel.
    make(inputs_length=2048, targets_length=2048, noise_density=0.5, corrupted_span="drop")


def test_through_the_pipeline_first_fit_packs_aligned_segments():
    rng = np.random.default_rng(0)
    docs = [" ".join(map(str, rng.integers(200, 900, n))) for n in rng.integers(5, 40, 30)]
    objective = make(inputs_length=48, targets_length=24)
    batches = list(make_dataset(docs, NumbersTokenizer(), objective, batch_size=4, seed=0,
                                shuffle=False, num_epochs=1, shard_index=0, shard_count=1,
                                pad_final_batch=True))  # fmt: skip
    assert batches[0]["encoder_input_tokens"].shape == (4, 48)
    assert batches[0]["decoder_target_tokens"].shape == (4, 24)
    num_examples = 0
    for batch in batches:
        for row in range(4):
            encoder_ids, decoder_ids = (
                batch["encoder_segment_ids"][row],
                batch["decoder_segment_ids"][row],
            )
            assert set(encoder_ids[encoder_ids > 0]) == set(decoder_ids[decoder_ids > 0])
            # Each packed example ends its encoder part and its decoder part with EOS.
            for segment in set(encoder_ids[encoder_ids > 0].tolist()):
                assert batch["encoder_input_tokens"][row][encoder_ids == segment][-1] == EOS
                assert batch["decoder_target_tokens"][row][decoder_ids == segment][-1] == EOS
                num_examples += 1
    assert num_examples == 30
