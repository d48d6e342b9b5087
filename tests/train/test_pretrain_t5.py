"""A tiny T5 pretrained with span corruption on SST-2 sentences: the loss falls, and on
held-out sentences it fills every sentinel it is given, in order, with corpus words;
fine-tuned text-to-text on 2,000 labelled sentences, it beats the majority class on
SST-2 dev, both by the label it generates and by ranking the label likelihoods."""

import collections

import numpy as np
import pytest

from t5x_lite.data import inputs
from t5x_lite.downstream import search
from t5x_lite.train import trainer
from tests.train.test_finetune_sst2 import finetune_sst2, sst2_pretraining

INPUTS_LENGTH, TARGETS_LENGTH = 64, 16


def spans_of(tokens, sentinels, eos_id):
    """Target-style ids -> [(sentinel, [span ids])] up to EOS; ids before the first
    sentinel are dropped."""
    spans = []
    for token in tokens:
        if token == eos_id:
            break
        if token in sentinels:
            spans.append((token, []))
        elif spans:
            spans[-1][1].append(token)
    return spans


def corrupted_heldout(config, run, seeds=3):
    """Every held-out document corrupted `seeds` times -> (examples, encoder batch)."""
    _, eval_docs = inputs.load_documents(config.data)
    examples = [
        example
        for s in range(seeds)
        for i, doc in enumerate(eval_docs)
        for example in run.objective.preprocess(
            run.tokenizer.encode(doc), np.random.default_rng(1000 * s + i)
        )
    ]
    tokens = np.zeros((len(examples), INPUTS_LENGTH), np.int32)
    for row, example in enumerate(examples):
        tokens[row, : len(example["encoder_input_tokens"])] = example["encoder_input_tokens"]
    segment_ids = (tokens != 0).astype(np.int32)
    batch = {
        "encoder_input_tokens": tokens,
        "encoder_segment_ids": segment_ids,
        "encoder_positions": (np.cumsum(segment_ids, axis=1) - 1) * segment_ids,
    }
    return examples, batch


def filled_words(inputs_ids, output, tokenizer, sentinels):
    """The words of the input, with each sentinel replaced by its span from `output`,
    that contain filled-in tokens (words split at pieces that start with "▁")."""
    fills = dict(spans_of(output, sentinels, tokenizer.eos_id))
    tokens, is_fill = [], []
    for token in inputs_ids.tolist():
        if token == tokenizer.eos_id:
            break
        span = fills.get(token, []) if token in sentinels else [token]
        tokens += span
        is_fill += [token in sentinels] * len(span)
    word_start = tokenizer.word_start_mask()
    words, current = [], []
    for token, fill in zip(tokens + [None], is_fill + [False]):
        if token is None or (word_start[token] and current):
            if any(f for _, f in current):
                words.append(tokenizer.decode([t for t, _ in current]).strip())
            current = []
        if token is not None:
            current.append((token, fill))
    return words


def well_formed_share(examples, outputs, sentinels, eos_id):
    """Share of outputs, by number of input spans (1, 2, 3 or more), that give every
    sentinel of the input in order, each followed by a non-empty span, then EOS."""
    counts = collections.defaultdict(lambda: [0, 0])
    for example, output in zip(examples, outputs.tolist()):
        wanted = [s for s, _ in spans_of(example["decoder_target_tokens"], sentinels, eos_id)]
        got = spans_of(output, sentinels, eos_id)
        ok = [s for s, _ in got] == wanted and all(span for _, span in got) and eos_id in output
        counts[min(len(wanted), 3)][0] += ok
        counts[min(len(wanted), 3)][1] += 1
    return {spans: (good / total, total) for spans, (good, total) in sorted(counts.items())}


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.full_speed
def test_tiny_t5_on_sst2_fills_sentinels_then_classifies_text_to_text(tmp_path, shared_data_dir):
    # t5_tiny, inputs of 64 and targets of 16 tokens, 400 steps of 32 rows; scored on
    # held-out sentences every 100 steps (no change to the training).
    config = sst2_pretraining(
        "t5", shared_data_dir, tmp_path / "run", "--config.train.eval_every=100"
    )
    assert (config.objective.inputs_length, config.objective.targets_length) == (
        INPUTS_LENGTH,
        TARGETS_LENGTH,
    )
    result = trainer.train(config, str(tmp_path / "run"))
    run, params, tokenizer = result.run, result.state.params, result.run.tokenizer
    evals = [h["eval/lm/loss"] for h in result.history if "eval/lm/loss" in h]
    # ~3.5 after 100 steps, ~3.1 after 400 (ln 1000 = 6.9 at the start).
    assert len(evals) == 4 and evals[-1] < evals[0] - 0.2, evals

    examples, batch = corrupted_heldout(config, run)
    sentinels = set(run.objective.sentinel_ids.tolist())
    eos = tokenizer.eos_id
    ids = dict(max_length=TARGETS_LENGTH, eos_id=eos, bos_id=tokenizer.bos_id,
               num_ids=tokenizer.vocab_size)  # fmt: skip
    outputs, _ = search.greedy_decode(run.model, params, batch, **ids)
    outputs = np.asarray(outputs)
    # The count of sentinels varies with the input, so getting it right needs the encoder.
    shares = well_formed_share(examples, outputs, sentinels, eos)
    assert set(shares) == {1, 2, 3} and all(total >= 30 for _, total in shares.values()), shares
    assert all(share >= 0.9 for share, _ in shares.values()), shares

    # Put back into their inputs, the fills make words of the corpus (completing a
    # word cut by a sentinel counts), not stray pieces.
    train_docs, _ = inputs.load_documents(config.data)
    corpus_words = {word for doc in train_docs for word in doc.split()}
    filled = [
        word
        for example, output in zip(examples, outputs.tolist())
        for word in filled_words(example["encoder_input_tokens"], output, tokenizer, sentinels)
    ]
    # Baseline: the true spans' lengths filled with random non-special pieces.
    rng = np.random.default_rng(0)
    pieces = np.flatnonzero(~tokenizer.special_mask())
    random_outputs = [
        [t for s, span in spans_of(e["decoder_target_tokens"], sentinels, eos)
         for t in [s, *rng.choice(pieces, len(span))]] + [eos]
        for e in examples
    ]  # fmt: skip
    baseline = [
        word
        for example, output in zip(examples, random_outputs)
        for word in filled_words(example["encoder_input_tokens"], output, tokenizer, sentinels)
    ]
    known, baseline_known = (np.mean([w in corpus_words for w in ws]) for ws in (filled, baseline))
    print(f"filled words in the corpus: {known:.3f} (random pieces: {baseline_known:.3f})")
    # 0.52 against 0.22: more than twice as often as random pieces of the true lengths.
    assert len(filled) > len(examples) and known > 2 * baseline_known + 0.05

    # Beam search decodes the same model just as well.
    subset = {name: values[:200] for name, values in batch.items()}
    beams = search.beam_search(run.model, params, subset, beam_size=4, length_penalty_alpha=0.6,
                               **ids)  # fmt: skip
    shares = well_formed_share(examples[:200], np.asarray(beams.tokens), sentinels, eos)
    # Pooled over span counts: the first 200 hold too few 3-span inputs (8 in one run)
    # for a share per count to mean much.
    well_formed = sum(share * total for share, total in shares.values())
    assert well_formed / sum(total for _, total in shares.values()) >= 0.95, shares
    for example, output in list(zip(examples, outputs))[:5]:  # for `pytest -s`
        print(tokenizer.decode(example["encoder_input_tokens"]), "->", tokenizer.decode(output))

    # Then T5's format: "sst2 sentence: ..." -> "positive" / "negative": 0.62 both ways
    # against the majority class's 0.51, and every generated answer is a label word.
    metrics = finetune_sst2("t5", tmp_path / "run", shared_data_dir, tmp_path / "sst2")
    majority = metrics["ranked"]["majority_class_accuracy"]
    assert metrics["ranked"]["accuracy"] > majority + 0.05, metrics
    assert metrics["generated"]["accuracy"] > majority + 0.05, metrics
    assert metrics["generated"]["invalid"] < 0.05, metrics
