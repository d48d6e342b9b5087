"""In-context learning: prompts on hand-worked examples, seeded demonstration draws, label
scores equal the scorer's on the same ids, params untouched, one-line UserErrors."""

from typing import NamedTuple

import numpy as np
import pytest

from t5x_lite.downstream import icl, scoring
from t5x_lite.errors import UserError
from tests.downstream.helpers import (
    DECODER,
    ENCODER,
    ENCODER_DECODER,
    checksum,
    random_params,
    train_tokenizer,
)


class Example(NamedTuple):  # the fields of t5x_lite.data.labelled.TaskExample
    text_a: str
    text_b: str | None
    label: int
    target: str
    line: int


TEMPLATE = "Review: {a}\nSentiment:"
WORDS = ["negative", "positive"]
TRAIN = [
    Example("great movie", None, 1, "", 2),
    Example("bad plot", None, 0, "", 3),
    Example("good acting", None, 1, "", 4),
    Example("terrible film", None, 0, "", 5),
]
TEST = [Example("great plot", None, 1, "", 2), Example("bad acting", None, 0, "", 3)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(str(tmp_path_factory.mktemp("icl_tok")))


def test_zero_shot_prompt_is_the_query():
    assert icl.build_prompt(TEMPLATE, [], TEST[0], WORDS) == "Review: great plot\nSentiment:"


def test_two_shot_prompt_by_hand():
    prompt = icl.build_prompt(TEMPLATE, TRAIN[:2], TEST[1], WORDS)
    assert prompt == (
        "Review: great movie\nSentiment: positive\n\n"
        "Review: bad plot\nSentiment: negative\n\n"
        "Review: bad acting\nSentiment:"
    )
    pair = Example("a cat", "a dog", 1, "", 7)
    assert icl.format_example("{a} ? {b} ->", pair, "yes") == "a cat ? a dog -> yes"
    assert icl.build_prompt("{a}=", [pair], pair, ["no", "yes"], separator=" | ") == (
        "a cat= yes | a cat="
    )


def test_template_errors():
    with pytest.raises(UserError, match=r"uses \{b\} but the task's examples have one sentence"):
        icl.format_example("{a} {b}", TRAIN[0], None)
    with pytest.raises(UserError, match=r"unknown field\(s\) \['c'\]"):
        icl.format_example("{a} {c}", TRAIN[0], None)


def test_choose_demonstrations_is_seeded_and_distinct():
    first = icl.choose_demonstrations(TRAIN, 3, np.random.default_rng([0, 3, 1]))
    again = icl.choose_demonstrations(TRAIN, 3, np.random.default_rng([0, 3, 1]))
    assert first == again and len(set(first)) == 3 and set(first) <= set(TRAIN)
    draws = {
        tuple(icl.choose_demonstrations(TRAIN, 2, np.random.default_rng(s))) for s in range(20)
    }
    assert len(draws) > 1
    assert icl.choose_demonstrations(TRAIN, 0, np.random.default_rng(0)) == []
    with pytest.raises(UserError, match="cannot draw 5 demonstrations from 4 train examples"):
        icl.choose_demonstrations(TRAIN, 5, np.random.default_rng(0))


def test_decoder_classify_equals_scorer_and_evaluate_reads_only(tokenizer):
    params = random_params(DECODER)
    before = checksum(params)
    prompts = [icl.build_prompt(TEMPLATE, TRAIN[:1], example, WORDS) for example in TEST]
    scores = icl.classify("decoder_only", DECODER, params, tokenizer, prompts, WORDS, batch_size=4)
    assert scores.shape == (2, 2)
    bos = [tokenizer.bos_id]
    for row, prompt in enumerate(prompts):
        context = np.concatenate([bos, tokenizer.encode(prompt)])
        expected = scoring.decoder_log_likelihoods(
            DECODER, params, [context] * 2, [tokenizer.encode(w) for w in WORDS], batch_size=4
        )
        # classify scores from the prompt's KV cache, the scorer by full forward passes.
        np.testing.assert_allclose(scores[row], expected, rtol=0, atol=1e-5)

    results = icl.evaluate_in_context(
        "decoder_only", DECODER, params, tokenizer, TRAIN, TEST,
        shots=[0, 1], template=TEMPLATE, label_words=WORDS, seed=0, batch_size=4,
    )  # fmt: skip
    assert sorted(results) == [0, 1]
    for result in results.values():
        predictions = np.argmax(result["log_likelihoods"], axis=1).tolist()
        assert result["predictions"] == predictions and result["num_examples"] == 2
        correct = [p == e.label for p, e in zip(predictions, TEST)]
        assert result["accuracy"] == np.mean(correct)
        assert 0 <= result["macro_f1"] <= 1
    # The 1-shot prompt of test example 1 is built from rng [seed, k, i] = [0, 1, 1].
    demos = icl.choose_demonstrations(TRAIN, 1, np.random.default_rng([0, 1, 1]))
    prompt = icl.build_prompt(TEMPLATE, demos, TEST[1], WORDS)
    alone = icl.classify("decoder_only", DECODER, params, tokenizer, [prompt], WORDS, batch_size=4)
    np.testing.assert_allclose(results[1]["log_likelihoods"][1], alone[0], rtol=0, atol=1e-9)
    assert checksum(params) == before


def test_fit_context_drops_the_first_demonstrations(tokenizer):
    # With BOS and the longest label word, 3 demonstrations and the query take 56 tokens
    # and 4 take 70: over DECODER's context of 64, so each 4-shot prompt loses its first.
    params = random_params(DECODER)
    lengths = [
        1 + len(tokenizer.encode(icl.build_prompt(TEMPLATE, TRAIN[:k], TEST[0], WORDS))) + 1
        for k in (3, 4)
    ]
    assert lengths == [56, 70] and [len(tokenizer.encode(w)) for w in WORDS] == [1, 1]
    options = dict(shots=[4], template=TEMPLATE, label_words=WORDS, seed=0, batch_size=4)
    with pytest.raises(UserError, match="or config.icl.fit_context=True$"):
        icl.evaluate_in_context("decoder_only", DECODER, params, tokenizer, TRAIN, TEST, **options)
    results = icl.evaluate_in_context(
        "decoder_only", DECODER, params, tokenizer, TRAIN, TEST, fit_context=True, **options
    )
    assert results[4]["mean_shots"] == 3.0
    prompts = [
        icl.build_prompt(
            TEMPLATE,
            icl.choose_demonstrations(TRAIN, 4, np.random.default_rng([0, 4, i]))[1:],
            example,
            WORDS,
        )
        for i, example in enumerate(TEST)
    ]
    expected = icl.classify(
        "decoder_only", DECODER, params, tokenizer, prompts, WORDS, batch_size=2
    )
    # Another batch size compiles another program: equal up to float32 rounding.
    np.testing.assert_allclose(results[4]["log_likelihoods"], expected, rtol=0, atol=1e-5)
    # Encoder-decoders have no fixed context: nothing is dropped.
    t5 = icl.evaluate_in_context(
        "encoder_decoder", ENCODER_DECODER, random_params(ENCODER_DECODER), tokenizer, TRAIN,
        TEST, fit_context=True, decoder_start_id=tokenizer.bos_id, **options,
    )  # fmt: skip
    assert t5[4]["mean_shots"] == 4.0


def test_encoder_decoder_classify_equals_scorer(tokenizer):
    params = random_params(ENCODER_DECODER)
    prompt = icl.build_prompt(TEMPLATE, TRAIN[:2], TEST[0], WORDS)
    scores = icl.classify(
        "encoder_decoder", ENCODER_DECODER, params, tokenizer, [prompt], WORDS,
        batch_size=2, decoder_start_id=tokenizer.bos_id,
    )  # fmt: skip
    eos = [tokenizer.eos_id]
    expected = scoring.encoder_decoder_log_likelihoods(
        ENCODER_DECODER, params,
        [np.concatenate([tokenizer.encode(prompt), eos])] * 2,
        [np.concatenate([tokenizer.encode(w), eos]) for w in WORDS],
        batch_size=2, decoder_start_id=tokenizer.bos_id,
    )  # fmt: skip
    # classify encodes the prompt once for both words, the scorer once per pair.
    np.testing.assert_allclose(scores[0], expected, rtol=0, atol=1e-5)
    with pytest.raises(UserError, match="needs decoder_start_id"):
        icl.classify("encoder_decoder", ENCODER_DECODER, params, tokenizer, [prompt], WORDS,
                     batch_size=2)  # fmt: skip


def test_user_errors(tokenizer):
    long_prompt = icl.build_prompt(TEMPLATE, TRAIN * 3, TEST[0], WORDS)
    with pytest.raises(
        UserError, match=r"^prompt 1 is \d+ tokens .* context is 64; use fewer shots"
    ):
        icl.classify(
            "decoder_only", DECODER, random_params(DECODER), tokenizer,
            ["Review: ok\nSentiment:", long_prompt], WORDS, batch_size=2,
        )  # fmt: skip
    with pytest.raises(UserError, match="needs a model that generates text"):
        icl.evaluate_in_context(
            "encoder_only", ENCODER, random_params(ENCODER), tokenizer, TRAIN, TEST,
            shots=[0], template=TEMPLATE, label_words=WORDS, seed=0, batch_size=2,
        )  # fmt: skip
    text_to_text = [Example("great plot", None, -1, "yes", 2)]
    with pytest.raises(UserError, match=r"test labels must be class indices in \[0, 2\)"):
        icl.evaluate_in_context(
            "decoder_only", DECODER, None, tokenizer, TRAIN, text_to_text,
            shots=[0], template=TEMPLATE, label_words=WORDS, seed=0, batch_size=2,
        )  # fmt: skip
    with pytest.raises(UserError, match="must be non-empty words"):
        icl.classify("decoder_only", DECODER, None, tokenizer, ["x"], ["yes", " "], batch_size=2)
