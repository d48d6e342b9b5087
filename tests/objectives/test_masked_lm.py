"""masked_lm: hand-worked masks, rates over many tokens, word/span structure, NSP pairs,
dynamic vs static masking through the pipeline, config errors, the real tokenizer."""

import inspect
import json
import re

import numpy as np
import pytest

from t5x_lite import objectives
from t5x_lite import tokenizer as tok_lib
from t5x_lite.data.pipeline import make_dataset
from t5x_lite.errors import UserError
from t5x_lite.objectives.masked_lm import (
    MaskedLM,
    default_max_predictions,
    select_spans,
    select_whole_words,
)
from tests.objectives.helpers import NumbersTokenizer

# A toy vocabulary whose ids say what they are: 0..9 special (4 [MASK], 5 [CLS],
# 6 [SEP]), 10..39 word starts, 40..49 continuation pieces.
MASK, CLS, SEP = 4, 5, 6
SMALL_SPECIAL = np.arange(50) < 10
SMALL_WORD_START = (np.arange(50) >= 10) & (np.arange(50) < 40)
# The same layout at scale for the statistics: 10..699 word starts, 700..999 pieces.
BIG_SPECIAL = np.arange(1000) < 10
BIG_WORD_START = (np.arange(1000) >= 10) & (np.arange(1000) < 700)

KNOBS = dict(seq_len=16, mask_rate=0.15, replace_with_mask=0.8, replace_with_random=0.1,
             keep_original=0.1, masking="token", span_geometric_p=0.2, span_max_length=10,
             dynamic_masking=True, next_sentence_prediction=False, max_predictions=-1)  # fmt: skip


def make(big=False, **overrides):
    knobs = {**KNOBS, **overrides}
    vocab = dict(word_start=BIG_WORD_START, special=BIG_SPECIAL) if big else dict(
        word_start=SMALL_WORD_START, special=SMALL_SPECIAL)  # fmt: skip
    return MaskedLM(mask_id=MASK, cls_id=CLS, sep_id=SEP, **vocab, **knobs)


def as_lists(example):
    return {name: values.tolist() for name, values in example.items()}


# Words: [11 40] [12] [13 41 42] [14] [15] [16 43]; 10 candidates.
DOC = np.array([11, 40, 12, 13, 41, 42, 14, 15, 16, 43], np.int32)
RATES = dict(mask_rate=0.3, replace_with_mask=0.5, replace_with_random=0.3, keep_original=0.2)


def test_token_masking_hand_worked():
    # k = round(0.3 * 10) = 3 tokens anywhere; each one decides mask/random/keep alone.
    (example,) = make(masking="token", **RATES).preprocess(DOC, np.random.default_rng(2))
    assert as_lists(example) == {
        "encoder_input_tokens": [CLS, 11, 42, MASK, 13, 41, 42, 17, 15, 16, 43, SEP],
        "encoder_target_tokens": [CLS, 11, 40, 12, 13, 41, 42, 14, 15, 16, 43, SEP],
        "encoder_loss_weights": [0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0],
        "encoder_token_type_ids": [0] * 12,
    }  # 40 -> random 42, 12 -> [MASK], 14 -> random 17


def test_whole_word_masking_hand_worked():
    # k = 3: the three-piece word [13 41 42] fills the budget; pieces decide alone.
    (example,) = make(masking="whole_word", **RATES).preprocess(DOC, np.random.default_rng(3))
    assert example["encoder_loss_weights"].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    inputs = [CLS, 11, 40, 12, 42, MASK, MASK, 14, 15, 16, 43, SEP]  # 13 -> random 42
    assert example["encoder_input_tokens"].tolist() == inputs
    assert example["encoder_target_tokens"].tolist() == [CLS, *DOC, SEP]


def test_span_masking_hand_worked():
    doc = np.array([*DOC, 17, 18, 19, 44, 20], np.int32)  # 15 tokens: k = round(3.75) = 4
    objective = make(masking="span", seq_len=32, **{**RATES, "mask_rate": 0.25})
    (example,) = objective.preprocess(doc, np.random.default_rng(2))
    # Two spans of two one-piece words: [14 15] all random, [17 18] all [MASK].
    weights = [0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0]
    inputs = [CLS, 11, 40, 12, 13, 41, 42, 45, 12, 16, 43, MASK, MASK, 19, 44, 20, SEP]
    assert example["encoder_loss_weights"].tolist() == weights
    assert example["encoder_input_tokens"].tolist() == inputs


def test_whole_words_take_one_word_even_if_longer_than_k():
    chosen = select_whole_words(np.array([3, 2]), 1, np.random.default_rng(0))
    assert chosen.sum() == 1
    # Skips a word that would overflow k and keeps looking: only the 1-piece words fit.
    chosen = select_whole_words(np.array([3, 1, 3, 1, 3]), 2, np.random.default_rng(0))
    assert chosen.tolist() == [False, True, False, True, False]


def test_all_candidates_masked_at_rate_one():
    objective = make(mask_rate=1.0, replace_with_mask=1.0, replace_with_random=0.0,
                     keep_original=0.0)  # fmt: skip
    (example,) = objective.preprocess(np.array([11, 4, 40, 7, 12], np.int32),
                                      np.random.default_rng(0))  # fmt: skip
    # The user-typed [MASK] (4) and sentinel (7) are special: never selected.
    assert example["encoder_input_tokens"].tolist() == [CLS, MASK, 4, MASK, 7, MASK, SEP]
    assert example["encoder_loss_weights"].tolist() == [0, 1, 0, 1, 0, 1, 0]


def test_long_document_is_cut_into_row_sized_chunks():
    objective = make()  # seq_len 16: [CLS] + 14 tokens + [SEP]
    doc = np.random.default_rng(0).integers(10, 50, 145).astype(np.int32)  # 10 rows and 5
    examples = objective.preprocess(doc, np.random.default_rng(0))
    chunks = [e["encoder_target_tokens"] for e in examples]
    assert [len(c) for c in chunks] == [16] * 10 + [7]
    assert all(c[0] == CLS and c[-1] == SEP for c in chunks)
    assert np.concatenate([c[1:-1] for c in chunks]).tolist() == doc.tolist()  # each token once
    # Each chunk is masked as an example of its own: k = round(0.15 * 14) = 2, then 1.
    assert [int(e["encoder_loss_weights"].sum()) for e in examples] == [2] * 10 + [1]
    # Through the pipeline: every epoch has every chunk, whole, once.
    batches = make_dataset([" ".join(map(str, doc))], NumbersTokenizer(), objective, batch_size=2,
                           seed=0, shuffle=True, num_epochs=2, shard_index=0, shard_count=1,
                           pad_final_batch=True)  # fmt: skip
    targets = np.concatenate([b["encoder_target_tokens"].reshape(-1) for b in batches])
    assert targets[targets > 0].tolist() == np.concatenate(chunks).tolist() * 2


def other_document(tokens):
    """What the pipeline passes an NSP objective: a function that draws another document."""
    return lambda rng: np.asarray(tokens, np.int32)


def test_nsp_true_continuation_hand_worked():
    objective = make(next_sentence_prediction=True, seq_len=12, mask_rate=0.2,
                     replace_with_mask=1.0, replace_with_random=0.0, keep_original=0.0)  # fmt: skip
    doc = np.array([11, 40, 12, 13, 41, 42, 14, 15], np.int32)
    other = other_document([20, 44, 21, 22, 45, 23, 24])
    # Split before 12: A = [11 40], B = the document's rest (label 0, IsNext); that
    # uses the whole document: one pair.
    (example,) = objective.preprocess(doc, np.random.default_rng(2), other)
    assert as_lists(example) == {
        "encoder_input_tokens": [CLS, 11, 40, SEP, MASK, MASK, 41, 42, 14, 15, SEP],
        "encoder_target_tokens": [CLS, 11, 40, SEP, 12, 13, 41, 42, 14, 15, SEP],
        "encoder_loss_weights": [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0],
        "encoder_token_type_ids": [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1],
        "nsp_labels": [0],
        "nsp_weights": [1],
    }
    # Same split, random B (label 1): the 6 tokens of `other` from its only word start
    # that leaves room for 6. The unused [12 ... 15] is put back: more pairs follow.
    example, *rest = objective.preprocess(doc, np.random.default_rng(5), other)
    assert example["encoder_target_tokens"].tolist() == [CLS, 11, 40, SEP, 20, 44, 21, 22, 45,
                                                         23, SEP]  # fmt: skip
    assert example["encoder_token_type_ids"].tolist() == [0] * 4 + [1] * 7
    assert example["nsp_labels"].tolist() == [1]
    assert rest and rest[0]["encoder_target_tokens"][1] == 12


def pairs_as_lists(objective, doc, seed, other):
    pairs = objective.sentence_pairs(doc, other_document(other), np.random.default_rng(seed))
    return [(a.tolist(), b.tolist(), label) for a, b, label in pairs]


def test_nsp_pair_packing_hand_worked():
    # seq_len 10: A + B hold at most 7 tokens. Words: [11 40] [12] [13 41 42] [14] [15] [16 43].
    objective = make(next_sentence_prediction=True, seq_len=10)
    other = [20, 44, 21, 22, 45, 23, 24]  # word starts at 0, 2, 3, 5, 6
    # Seed 0. The first chunk is the words that fit 7 tokens, [11 40 12 13 41 42 14]; A ends
    # at the word start 13 and B is random (label 1), 4 tokens from `other` as the true
    # [13 41 42 14] would be. That rest is put back: the next chunk starts at 13 and takes
    # the 7 tokens left; A = [13 41 42], B = its true rest (label 0). Nothing is left.
    assert pairs_as_lists(objective, DOC, 0, other) == [
        ([11, 40, 12], [20, 44, 21, 22], 1),
        ([13, 41, 42], [14, 15, 16, 43], 0),
    ]
    # Seed 2. IsNext on the same first chunk leaves [15 16 43]: A = [15] and a random B as
    # long as [16 43]; then the one word [16 43] has no true continuation (label 1).
    assert pairs_as_lists(objective, DOC, 2, other) == [
        ([11, 40], [12, 13, 41, 42, 14], 0),
        ([15], [21, 22], 1),
        ([16, 43], [21, 22], 1),
    ]
    # One 9-piece word: A takes (10 - 3) // 2 = 3 tokens at a time, so that a B as long
    # fits too; three pairs use all of it.
    word = np.array([11, *range(40, 48)], np.int32)
    pairs = pairs_as_lists(objective, word, 0, other)
    assert [a for a, _, _ in pairs] == [[11, 40, 41], [42, 43, 44], [45, 46, 47]]
    assert [(len(b), label) for _, b, label in pairs] == [(3, 1)] * 3
    # Each pair becomes one masked example before the next pair is drawn, so the first
    # example holds the first pair drawn alone; together the pairs use the document once.
    examples = objective.preprocess(DOC, np.random.default_rng(0), other_document(other))
    assert unpack_pairs(examples)[0] == pairs_as_lists(objective, DOC, 0, other)[0]
    assert used_tokens(unpack_pairs(examples)) == DOC.tolist()


def unpack_pairs(examples):
    """NSP examples -> (A, B, label) lists from their targets and token types."""
    pairs = []
    for example in examples:
        targets, types = example["encoder_target_tokens"], example["encoder_token_type_ids"]
        first_sep, last = np.flatnonzero(targets == SEP)  # documents hold no [SEP]
        assert targets[0] == CLS and last == len(targets) - 1
        assert np.array_equal(types, np.arange(len(targets)) > first_sep)
        a, b = targets[1:first_sep], targets[first_sep + 1 : last]
        pairs.append((a.tolist(), b.tolist(), int(example["nsp_labels"][0])))
    return pairs


def used_tokens(pairs):
    """The document tokens the pairs use, in order: every A and every IsNext B."""
    return [t for a, b, label in pairs for t in (a + b if label == 0 else a)]


def big_corpus(num_docs, seed, min_len=300, max_len=600):
    """Random documents over the big vocabulary, 70% word starts, a few special ids."""
    rng = np.random.default_rng(seed)
    docs = []
    for length in rng.integers(min_len, max_len, num_docs):
        starts = rng.integers(10, 700, length)
        pieces = rng.integers(700, 1000, length)
        doc = np.where(rng.random(length) < 0.7, starts, pieces)
        doc[rng.random(length) < 0.01] = 7  # user-typed sentinels: special, never masked
        docs.append(doc.astype(np.int32))
    return docs


def run_corpus(objective, docs):
    examples = [example for i, doc in enumerate(docs)
                for example in objective.preprocess(doc, np.random.default_rng(i))]  # fmt: skip
    return {name: np.concatenate([e[name] for e in examples]) for name in examples[0]}


@pytest.mark.parametrize(("masking", "rate_tolerance"), [("token", 0.0015), ("whole_word", 0.0015),
                                                         ("span", 0.01)])  # fmt: skip
def test_rates_over_many_tokens(masking, rate_tolerance):
    # Span mode stops only once k is reached, overshooting by about half a span per
    # example: one example a document here (seq_len 602), so short chunks do not add up.
    got = run_corpus(make(big=True, masking=masking, seq_len=602), big_corpus(250, seed=0))
    inputs, targets = got["encoder_input_tokens"], got["encoder_target_tokens"]
    selected = got["encoder_loss_weights"] == 1
    candidates = ~BIG_SPECIAL[targets]
    assert candidates.sum() > 100_000
    assert not (selected & ~candidates).any()  # specials, [CLS], [SEP] never
    assert np.array_equal(inputs[~selected], targets[~selected])
    assert abs(selected.sum() / candidates.sum() - 0.15) < rate_tolerance
    if masking == "span":
        return  # one decision per span: too few draws for a 1% check
    masked = (inputs == MASK)[selected].mean()
    kept = (inputs == targets)[selected].mean()  # a random id equal to the original: 1/990
    assert abs(masked - 0.8) < 0.01 and abs(kept - 0.1) < 0.01
    assert abs(1 - masked - kept - 0.1) < 0.01


ABLATIONS = [(1.0, 0.0, 0.0), (0.8, 0.0, 0.2), (0.8, 0.2, 0.0), (0.0, 0.2, 0.8), (0.0, 0.0, 1.0)]


@pytest.mark.parametrize("masking", ["token", "whole_word", "span"])
@pytest.mark.parametrize("rates", ABLATIONS)
def test_ablation_rates_give_their_extremes(masking, rates):
    to_mask, to_random, to_keep = rates
    objective = make(big=True, masking=masking, seq_len=512, replace_with_mask=to_mask,
                     replace_with_random=to_random, keep_original=to_keep)  # fmt: skip
    got = run_corpus(objective, big_corpus(20, seed=1))
    selected = got["encoder_loss_weights"] == 1
    inputs, targets = got["encoder_input_tokens"][selected], got["encoder_target_tokens"][selected]
    is_mask, is_kept = inputs == MASK, inputs == targets
    assert is_mask.any() == (to_mask > 0) and is_mask.all() == (to_mask == 1)
    assert is_kept.all() == (to_keep == 1)
    assert (~is_mask & ~is_kept).any() == (to_random > 0)  # a random id, not the original
    if to_keep == 0:  # only a random id that hits the original (1 in 990) is unchanged
        assert is_kept.mean() < 0.01


def word_ids(tokens, word_start):
    return np.cumsum(word_start[tokens]) - 1


def test_whole_words_are_selected_together():
    docs = big_corpus(40, seed=2)
    objective = make(big=True, masking="whole_word", seq_len=602)  # one example a document
    for i, doc in enumerate(docs):
        (example,) = objective.preprocess(doc, np.random.default_rng(i))
        weights = example["encoder_loss_weights"][1:-1]
        candidates = ~BIG_SPECIAL[doc]
        # A word: pieces after a word start, ending at the next word start or special.
        words = np.cumsum(BIG_WORD_START[doc] | np.concatenate([[True], ~candidates[:-1]]))
        words = words[candidates]
        per_word = np.bincount(words, weights[candidates])
        sizes = np.bincount(words)
        assert np.all((per_word == 0) | (per_word == sizes))
        assert weights.sum() == round(0.15 * candidates.sum())  # one-piece words fill any gap


def test_span_lengths_follow_clipped_geometric():
    p, max_length = 0.2, 10
    lengths = np.arange(1, max_length + 1)
    expected = np.sum(lengths * p * (1 - p) ** (lengths - 1)) / (1 - (1 - p) ** max_length)
    assert abs(expected - 3.797) < 1e-3  # SpanBERT's "mean span length 3.8 words"
    probs = p * (1 - p) ** (lengths - 1)
    probs /= probs.sum()
    rng = np.random.default_rng(0)
    spans = []
    for _ in range(300):
        word_lengths = rng.integers(1, 4, 400)  # 400 words of 1..3 pieces
        span_of_word = select_spans(word_lengths, 120, probs, rng)
        num_spans = span_of_word.max() + 1
        sizes = np.bincount(span_of_word[span_of_word >= 0], minlength=num_spans)
        first = np.array([np.flatnonzero(span_of_word == s)[0] for s in range(num_spans)])
        last = np.array([np.flatnonzero(span_of_word == s)[-1] for s in range(num_spans)])
        assert np.array_equal(last - first + 1, sizes)  # contiguous, so no overlaps
        total = word_lengths[span_of_word >= 0].sum()
        last_span = word_lengths[span_of_word == num_spans - 1].sum()
        assert total >= 120 and total - last_span < 120  # stops right after reaching k
        spans.append(sizes)
    assert abs(np.concatenate(spans).mean() / expected - 1) < 0.05


def test_span_shares_one_decision():
    objective = make(big=True, masking="span", seq_len=512)
    for i, doc in enumerate(big_corpus(30, seed=3)):
        targets = np.array([CLS, *doc, SEP], np.int32)
        groups = objective.select(targets, np.random.default_rng(i))
        inputs, weights = objective.corrupt(targets, np.random.default_rng(i))
        assert np.array_equal(weights, (groups >= 0).astype(np.int32))
        masked = np.bincount(groups[groups >= 0], inputs[groups >= 0] == MASK)
        sizes = np.bincount(groups[groups >= 0])
        assert np.all((masked == 0) | (masked == sizes))


def test_nsp_labels_balanced_and_pairs_exact():
    objective = make(big=True, next_sentence_prediction=True, seq_len=700)
    # >= 8 tokens: all but ~0.02% have the two words a true continuation needs.
    docs = big_corpus(2000, seed=4, min_len=8, max_len=40)
    first_labels = []
    for i, doc in enumerate(docs):
        other = docs[i - 1]
        pairs = unpack_pairs(objective.preprocess(doc, np.random.default_rng(i),
                                                  other_document(other)))  # fmt: skip
        # Short documents: nothing truncated, the pairs use the document exactly once.
        assert used_tokens(pairs) == doc.tolist()
        starts = np.flatnonzero(BIG_WORD_START[other])
        for _, b, label in pairs:
            if label == 1:  # a span of the other document from a word start
                assert any(other[s : s + len(b)].tolist() == b for s in starts)
        first_labels.append(pairs[0][2])
    # The first pair's chunk holds two words or more: IsNext half the time.
    assert abs(np.mean(first_labels) - 0.5) < 0.02


def test_nsp_long_document_gives_pairs_that_fit_and_use_it_whole():
    objective = make(big=True, next_sentence_prediction=True, seq_len=64)
    (doc,) = big_corpus(1, seed=5, min_len=610, max_len=611)  # 10 rows of A + B
    other = big_corpus(1, seed=6)[0]
    for seed in range(20):
        examples = objective.preprocess(doc, np.random.default_rng(seed), other_document(other))
        assert all(len(values) <= 64 for e in examples for values in e.values())
        pairs = unpack_pairs(examples)
        assert used_tokens(pairs) == doc.tolist()  # every token once: in an A or an IsNext B
        # An IsNext pair uses a chunk of whole words filling the row but for less than a
        # word; a NotNext pair uses its A only.
        is_next = [len(a) + len(b) for a, b, label in pairs if label == 0]
        assert len(pairs) >= 10 and min(is_next[:-1], default=61) > 50


def test_contract_and_registry():
    plain, nsp = make(), make(next_sentence_prediction=True, dynamic_masking=False)
    assert objectives.get_class("masked_lm") is MaskedLM
    # The config.objective keys are exactly KNOBS; the rest come from the tokenizer.
    parameters = set(inspect.signature(MaskedLM).parameters)
    assert parameters == set(KNOBS) | set(MaskedLM.ids_from_tokenizer)
    assert plain.architectures == ("encoder_only",)
    assert (plain.pack_mode, nsp.pack_mode) == ("concat", "none")
    assert (plain.uses_other_document, nsp.uses_other_document) == (False, True)
    assert (plain.dynamic_randomness, nsp.dynamic_randomness) == (True, False)
    assert (plain.chunk_length, nsp.chunk_length) == (14, None)  # [CLS] chunk [SEP]; pairs
    assert [t.name for t in plain.loss_terms] == ["mlm"]
    mlm, nsp_term = nsp.loss_terms
    assert (mlm.output, mlm.targets, mlm.weights, mlm.selected_from) == (
        "mlm_logits", "mlm_target_tokens", "mlm_loss_weights", "encoder_loss_weights")  # fmt: skip
    assert (nsp_term.output, nsp_term.targets, nsp_term.weights) == (
        "nsp_logits", "nsp_labels", "nsp_weights")  # fmt: skip
    assert nsp.feature_lengths() == {"encoder_input_tokens": 16, "encoder_target_tokens": 16,
                                     "encoder_loss_weights": 16, "encoder_token_type_ids": 16,
                                     "nsp_labels": 1, "nsp_weights": 1}  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(keep_original=0.0), "config.objective.replace_with_mask + replace_with_random"
                                  " + keep_original = 0.9, must be 1"),
        (dict(replace_with_random=-0.1, keep_original=0.3), "replace_with_random=-0.1 must be in"),
        (dict(mask_rate=0.0), "config.objective.mask_rate=0.0 must be in (0, 1]"),
        (dict(masking="words"), "config.objective.masking='words' is not one of"),
        (dict(next_sentence_prediction=True, seq_len=4), "raise config.objective.seq_len"),
        (dict(seq_len=2), "seq_len=2 is too short"),
        (dict(span_max_length=0), "config.objective.span_max_length=0 must be >= 1"),
    ],
)  # fmt: skip
def test_bad_configs_are_one_line_user_errors(overrides, message):
    with pytest.raises(UserError, match=re.escape(message)) as error:
        make(**overrides)
    assert "\n" not in str(error.value)


def test_seq_len_minimums_are_accepted():
    make(next_sentence_prediction=True, seq_len=5)
    make(seq_len=3)


def epoch_rows(objective, seed, shuffle, num_docs=6, epochs=2):
    """Rows of a 2-epoch pipeline keyed by (epoch, document): each doc fills one row."""
    rng = np.random.default_rng(100)
    docs = [" ".join(map(str, rng.integers(10, 1000, 14))) for _ in range(num_docs)]
    batches = make_dataset(docs, NumbersTokenizer(), objective, batch_size=1, seed=seed,
                           shuffle=shuffle, num_epochs=epochs, shard_index=0, shard_count=1,
                           pad_final_batch=False)  # fmt: skip
    rows = {}
    for index, batch in enumerate(batches):
        doc = docs.index(" ".join(map(str, batch["encoder_target_tokens"][0, 1:-1])))
        rows[index // num_docs, doc] = batch["encoder_input_tokens"][0]
    return rows


@pytest.mark.parametrize("shuffle", [False, True])
def test_dynamic_masking_changes_each_epoch_static_does_not(shuffle):
    dynamic = make(big=True, dynamic_masking=True, mask_rate=0.3)  # seq_len 16 = 14 + 2
    rows = epoch_rows(dynamic, seed=0, shuffle=shuffle)
    assert all(not np.array_equal(rows[0, d], rows[1, d]) for d in range(6))
    assert all(np.array_equal(rows[k], v) for k, v in epoch_rows(dynamic, 0, shuffle).items())
    static = make(big=True, dynamic_masking=False, mask_rate=0.3)
    rows = epoch_rows(static, seed=0, shuffle=shuffle)
    assert all(np.array_equal(rows[0, d], rows[1, d]) for d in range(6))
    other_seed = epoch_rows(static, seed=1, shuffle=shuffle)
    assert any(not np.array_equal(rows[0, d], other_seed[0, d]) for d in range(6))


def test_nsp_through_the_pipeline_uses_other_documents_and_resumes():
    # Document i holds ids 100*i + 10..19: B's ids tell which document it came from.
    docs = [" ".join(str(100 * i + 10 + j) for j in range(10)) for i in range(1, 7)]
    objective = make(big=True, next_sentence_prediction=True, seq_len=24)
    dataset = make_dataset(docs, NumbersTokenizer(), objective, batch_size=4, seed=0,
                           shuffle=True, num_epochs=5, shard_index=0, shard_count=1,
                           pad_final_batch=True)  # fmt: skip
    batches = list(dataset)
    batch = batches[0]
    assert batch["nsp_labels"].shape == (4, 1) and batch["encoder_input_tokens"].shape == (4, 24)
    # [CLS] A [SEP] B [SEP] with len(A) + len(B) = 10, padded to 24.
    assert batch["encoder_segment_ids"][0].tolist() == [1] * 13 + [0] * 11
    assert batch["nsp_segment_ids"].tolist() == [[1]] * 4
    targets = np.concatenate([b["encoder_target_tokens"] for b in batches])
    types = np.concatenate([b["encoder_token_type_ids"] for b in batches])
    labels = np.concatenate([b["nsp_labels"][:, 0] for b in batches])
    valid = targets[:, 0] == CLS  # the padded last batch has empty rows
    doc_a = targets[valid, 1] // 100
    doc_b = np.array([row[t == 1][0] // 100 for row, t in zip(targets[valid], types[valid])])
    assert np.array_equal(doc_a == doc_b, labels[valid] == 0)  # label 1: another document
    assert 0.3 < labels[valid].mean() < 0.7
    iterator = iter(dataset)
    next(iterator)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = [next(iterator) for _ in range(3)]
    resumed = iter(dataset)
    resumed.set_state(state)
    for got, want in zip([next(resumed) for _ in range(3)], expected, strict=True):
        assert all(np.array_equal(got[k], want[k]) for k in want)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    words = ["alpha", "beta", "gamma", "delta", "tasty", "model", "data", "token", "pack"]
    rng = np.random.default_rng(0)
    corpus = [" ".join(rng.choice(words, 20)) + "." for _ in range(80)]
    prefix = tmp_path_factory.mktemp("mlm_tok") / "tok"
    path = tok_lib.train_tokenizer(
        corpus, str(prefix), vocab_size=400, model_type="bpe", max_sentences=1000
    )
    return tok_lib.Tokenizer(path)


def test_tokenizer_masks_and_build(tokenizer):
    special, word_start = tokenizer.special_mask(), tokenizer.word_start_mask()
    assert special.shape == word_start.shape == (tokenizer.vocab_size,)
    assert special[:107].all() and not special[107:].any()
    assert not (word_start & special).any()
    assert not word_start[107:363].any()  # byte pieces
    pieces = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    assert word_start.tolist() == [p.startswith("\u2581") and i >= 107 for i, p in
                                   enumerate(pieces)]  # fmt: skip
    knobs = {**KNOBS, "masking": "whole_word", "mask_rate": 0.3, "seq_len": 64}
    objective = objectives.get_class("masked_lm").build(tokenizer, **knobs)
    words = ["alpha", "tasty", "xylophone", "gamma", "€uro", "data", "zebra", "beta"]
    tokens = tokenizer.encode(" ".join(words))  # unseen letters are spelled in bytes
    assert len(tokens) > 2 * len(words)
    for seed in range(20):
        (example,) = objective.preprocess(tokens, np.random.default_rng(seed))
        selected = example["encoder_loss_weights"][1:-1] == 1
        text = tokenizer.decode(np.where(selected, tokens, tokenizer.pad_id))
        assert text.split() and set(text.split()) <= set(words)  # whole words only


def test_default_max_predictions_hand_worked():
    # ceil(1.1 * rate * seq_len) + 8, up to a multiple of 8, at most seq_len.
    assert default_max_predictions(128, 0.15) == 32  # 22 + 8 = 30 -> 32 (BERT used 20)
    assert default_max_predictions(512, 0.15) == 96  # 85 + 8 = 93 -> 96 (BERT used 80)
    assert default_max_predictions(16, 0.5) == 16  # 9 + 8 = 17 -> 24, capped at seq_len
    assert make().max_predictions == 16
    assert make(max_predictions=5).max_predictions == 5
    assert make(max_predictions=99).max_predictions == 16


def test_device_features_take_the_selected_positions_in_row_order():
    weights = np.array([[0, 1, 0, 1, 1, 0], [1, 0, 0, 0, 0, 0]], np.int32)
    targets = np.arange(12, dtype=np.int32).reshape(2, 6) + 20
    batch = {"encoder_loss_weights": weights, "encoder_target_tokens": targets}
    features = make(max_predictions=3).device_features(batch)
    assert features["mlm_positions"].tolist() == [[1, 3, 4], [0, 1, 2]]
    assert features["mlm_target_tokens"].tolist() == [[21, 23, 24], [26, 27, 28]]
    assert features["mlm_loss_weights"].tolist() == [[1, 1, 1], [1, 0, 0]]
    # A cap below a row's selections keeps the first ones.
    assert make(max_predictions=2).device_features(batch)["mlm_positions"].tolist() == [
        [1, 3], [0, 1]
    ]  # fmt: skip
    full = make(max_predictions=0)
    assert full.device_features(batch) is batch
    assert full.loss_terms[0].weights == "encoder_loss_weights"


def test_max_predictions_below_minus_one_is_refused():
    with pytest.raises(UserError, match="config.objective.max_predictions=-2"):
        make(max_predictions=-2)
