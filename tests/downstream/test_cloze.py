"""Cloze probes: the file format and its errors, BERT's probabilities against the MLM
logits, T5's 1-beam answer against greedy decoding, GPT's candidate ranking, the table."""

import jax
import numpy as np
import pytest

from t5x_lite.downstream import cloze, scoring, search
from t5x_lite.errors import UserError
from tests.downstream.helpers import (
    DECODER,
    ENCODER,
    ENCODER_DECODER,
    random_params,
    train_tokenizer,
)
from tests.models.helpers import fast_jit

PROBES = [
    cloze.Probe("stanford university is located in ___, california.", ("palo alto", "paris"), 2),
    cloze.Probe("the capital of france is ___.", (), 3),
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(str(tmp_path_factory.mktemp("cloze_tok")))


def _write(tmp_path, data: bytes) -> str:
    path = tmp_path / "probes.txt"
    path.write_bytes(data)
    return str(path)


def test_read_probes(tmp_path):
    text = (
        "# where things are\n"
        "Stanford University is located in ___, California.\tPalo Alto| Berkeley\r\n"
        "\n"
        "  The capital of France is ___.  \n"
        "Zürich liegt in der ___.\n"
    )
    assert cloze.read_probes(_write(tmp_path, text.encode())) == [
        cloze.Probe(
            "Stanford University is located in ___, California.", ("Palo Alto", "Berkeley"), 2
        ),
        cloze.Probe("The capital of France is ___.", (), 4),
        cloze.Probe("Zürich liegt in der ___.", (), 5),
    ]


@pytest.mark.parametrize(
    "data, match",
    [
        (b"ok ___.\nno blank here\n", r"probes.txt:2: .* exactly one blank ___, this line has 0$"),
        (b"___ and ___\n", r"probes.txt:1: .* this line has 2$"),
        (b"a ___.\tx||y\n", r"probes.txt:1: candidates after the tab must be non-empty"),
        (b"# only a comment\n\n", r"probes.txt has no probes"),
        (b"", r"probes.txt has no probes"),
        (b"ok ___.\n\xff ___\n", r"probes.txt:2: not valid UTF-8"),
    ],
)
def test_read_probes_errors(tmp_path, data, match):
    with pytest.raises(UserError, match=match) as error:
        cloze.read_probes(_write(tmp_path, data))
    assert "\n" not in str(error.value)


def test_read_probes_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"cloze probes file .*nope.txt does not exist"):
        cloze.read_probes(str(tmp_path / "nope.txt"))


def test_fill_masks_probabilities_are_the_mlm_softmax(tokenizer):
    params = random_params(ENCODER)
    text = "[MASK] capital of france is [MASK]."
    answers = cloze.fill_masks(ENCODER, params, tokenizer, text, top_n=3)
    # The ids by hand: [CLS], the text without the lone "▁" before each [MASK], [SEP].
    space = tokenizer.piece_to_id("\u2581")
    ids = list(tokenizer.encode(text))
    ids = [i for j, i in enumerate(ids) if not (i == space and ids[j + 1] == tokenizer.mask_id)]
    ids = np.array([[tokenizer.cls_id, *ids, tokenizer.sep_id]], np.int32)
    assert (ids != space).all()
    batch = {
        "encoder_input_tokens": ids,
        "encoder_segment_ids": np.ones_like(ids),
        "encoder_positions": np.arange(ids.shape[1])[None],
        "encoder_token_type_ids": np.zeros_like(ids),
    }
    apply = fast_jit(lambda p, b: ENCODER.apply({"params": p}, b, deterministic=True))
    logits = apply(params, batch)["mlm_logits"][0]
    masks = np.flatnonzero(ids[0] == tokenizer.mask_id)
    assert len(answers) == len(masks) == 2
    for position, answer in zip(masks, answers):
        probs = np.asarray(jax.nn.softmax(logits[position]), np.float64)
        probs[: tokenizer.vocab_size][tokenizer.special_mask()] = -1  # never answers
        probs[tokenizer.vocab_size :] = -1  # nor are ids past the tokenizer's vocabulary
        best = np.argsort(-probs)[:3]
        assert [text for text, _ in answer] == [tokenizer.decode([i]) for i in best]
        np.testing.assert_allclose([p for _, p in answer], probs[best], rtol=1e-5, atol=1e-7)
    with pytest.raises(UserError, match=r"no \[MASK\] in 'no mask'"):
        cloze.fill_masks(ENCODER, params, tokenizer, "no mask", top_n=3)
    with pytest.raises(UserError, match="top_n=0 must be at least 1"):
        cloze.fill_masks(ENCODER, params, tokenizer, text, top_n=0)
    bert = cloze.answer_bert(ENCODER, params, tokenizer, PROBES, top_n=2)
    assert len(bert) == 2 and all(len(answer) == 2 for answer in bert)


def test_t5_one_beam_is_the_greedy_span(tokenizer):
    params = random_params(ENCODER_DECODER)
    answers = cloze.answer_t5(ENCODER_DECODER, params, tokenizer, PROBES, top_n=1)
    for probe, answer in zip(PROBES, answers):
        ids = tokenizer.encode(probe.text.replace("___", "<extra_id_0>"))
        ids = ids[ids != tokenizer.piece_to_id("\u2581")]  # no other lone "▁" in PROBES
        ids = np.append(ids, tokenizer.eos_id)[None].astype(np.int32)
        batch = {
            "encoder_input_tokens": ids,
            "encoder_segment_ids": np.ones_like(ids),
            "encoder_positions": np.arange(ids.shape[1], dtype=np.int32)[None],
        }
        tokens, score = search.greedy_decode(
            ENCODER_DECODER, params, batch, max_length=cloze.T5_MAX_ANSWER_TOKENS,
            eos_id=tokenizer.eos_id, bos_id=tokenizer.bos_id, num_ids=tokenizer.vocab_size,
        )  # fmt: skip
        ((text, prob),) = answer
        assert text == cloze.t5_span(tokenizer, np.asarray(tokens[0]))
        np.testing.assert_allclose(prob, np.exp(float(score[0])), rtol=1e-4)


def test_t5_span(tokenizer):
    s0, s1, eos = tokenizer.sentinel_id(0), tokenizer.sentinel_id(1), tokenizer.eos_id
    paris = list(tokenizer.encode("paris"))
    assert cloze.t5_span(tokenizer, [s0, *paris, s1, *paris, eos]) == "paris"
    assert cloze.t5_span(tokenizer, [*paris, eos, s1]) == "paris"
    assert cloze.t5_span(tokenizer, [s0, s1, eos]) == ""


def test_gpt_candidates_rank_by_sentence_likelihood(tokenizer):
    params = random_params(DECODER)
    answers = cloze.answer_gpt(DECODER, params, tokenizer, PROBES, top_n=3)
    probe = PROBES[0]
    sentences = [tokenizer.encode(probe.filled(c)) for c in probe.candidates]
    scores = scoring.decoder_log_likelihoods(
        DECODER, params, [[tokenizer.bos_id]] * 2, sentences, batch_size=2
    )
    ranked = answers[0]
    assert [c for c, _ in ranked] == [probe.candidates[i] for i in np.argsort(-scores)]
    assert sum(p for _, p in ranked) == pytest.approx(1.0, abs=1e-12)
    assert ranked[0][1] / ranked[1][1] == pytest.approx(np.exp(abs(scores[0] - scores[1])))
    # The open probe: top_n answers, best first, each at most as likely as its first piece.
    open_answers = answers[1]
    assert len(open_answers) == 3
    assert [p for _, p in open_answers] == sorted((p for _, p in open_answers), reverse=True)
    context = np.concatenate([[tokenizer.bos_id], tokenizer.encode("the capital of france is")])
    first = np.exp(scoring.decoder_next_log_probs(DECODER, params, [context], batch_size=8)[0])
    first[: tokenizer.vocab_size][tokenizer.special_mask()] = 0
    assert open_answers[0][1] <= first[: tokenizer.vocab_size].max()


def test_format_table_by_hand():
    answers = {
        "bert": [[("paris", 0.5), ("rome", 0.25)], [("x", 1.0)]],
        "t5": [[("palo alto", 0.1234)], [("", 0.05)]],
    }
    expected = (
        "stanford university is located in ___, california.  [candidates: palo alto | paris]\n"
        "  bert             t5\n"
        "  paris (p=0.500)  palo alto (p=0.123)\n"
        "  rome (p=0.250)\n"
        "\n"
        "the capital of france is ___.\n"
        "  bert         t5\n"
        "  x (p=1.000)  (empty) (p=0.050)\n"
    )
    assert cloze.format_table(PROBES, answers) == expected
