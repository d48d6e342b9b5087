"""Sampling through the KV cache: the filters on hand-worked numbers; greedy and
temperature sampling equal reference loops that rerun the full forward pass."""

import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from t5x_lite.downstream import sampling
from t5x_lite.errors import UserError
from t5x_lite.models.decoder_only import DecoderOnly
from tests.models.helpers import fast_jit

MAX_LEN, EOS = 12, 1


class _Ids:
    """Stands in for a tokenizer: text is space-separated ids."""

    bos_id, eos_id, vocab_size = 3, EOS, 40

    def encode(self, text):
        return np.array([int(t) for t in text.split()], np.int32)

    def decode(self, ids):
        return " ".join(str(i) for i in ids)


MODEL = DecoderOnly(
    vocab_size=40,
    d_model=16,
    num_layers=2,
    num_heads=2,
    head_dim=8,
    d_ff=32,
    max_len=MAX_LEN,
    dropout_rate=0.0,
    tie_embeddings=True,
    dtype="float32",
    remat_policy="none",
    attention_impl="einsum",
    num_classes=0,
)


@pytest.fixture(scope="module")
def params():
    batch = {
        k: jnp.zeros((1, MAX_LEN), jnp.int32)
        for k in ("decoder_input_tokens", "decoder_segment_ids", "decoder_positions")
    }
    init = fast_jit(lambda key: MODEL.init(key, batch, deterministic=True))
    return init(jax.random.key(0, impl="rbg"))["params"]


@fast_jit
def _full_forward_logits(params, tokens):
    """tokens [1, MAX_LEN] -> logits [1, MAX_LEN, vocab]; causal, so the tail is unseen."""
    batch = {
        "decoder_input_tokens": tokens,
        "decoder_segment_ids": jnp.ones_like(tokens),
        "decoder_positions": jnp.arange(MAX_LEN)[None],
    }
    return MODEL.apply({"params": params}, batch, deterministic=True)["logits"]


def _reference_generate(params, prompt, num_new, pick):
    """Reruns the full forward pass per token; pick(logits [vocab], step) -> id."""
    tokens = [_Ids.bos_id, *prompt]
    for step in range(num_new):
        padded = jnp.array([tokens + [0] * (MAX_LEN - len(tokens))], jnp.int32)
        logits = _full_forward_logits(params, padded)[0, len(tokens) - 1]
        tokens.append(int(pick(logits, step)))
        if tokens[-1] == EOS:
            tokens.pop()
            break
    return " ".join(map(str, tokens[1:]))


def _generate(params, prompts, **options):
    options = dict(dict(max_new_tokens=8, temperature=0.0, seed=0), **options)
    return sampling.generate_batch(MODEL, params, _Ids(), prompts, max_len=MAX_LEN, **options)


# ---------------------------------------------------------------------- filter_logits

PROBS = [0.5, 0.3, 0.15, 0.05]


def _kept(probs, **filters):
    logits = jnp.log(jnp.asarray(probs, jnp.float32))
    return np.isfinite(np.asarray(sampling.filter_logits(logits, **filters))).tolist()


@pytest.mark.parametrize(
    ("filters", "kept"),
    [
        (dict(top_k=0, top_p=0.8), [1, 1, 0, 0]),  # 0.5 + 0.3 reaches 0.8
        (dict(top_k=0, top_p=0.81), [1, 1, 1, 0]),
        (dict(top_k=0, top_p=0.5), [1, 0, 0, 0]),
        (dict(top_k=0, top_p=1e-6), [1, 0, 0, 0]),  # the top token always stays
        (dict(top_k=2, top_p=1.0), [1, 1, 0, 0]),
        (dict(top_k=9, top_p=1.0), [1, 1, 1, 1]),
        # top-k first, then top-p on the renormalized [0.625, 0.375]:
        (dict(top_k=2, top_p=0.6), [1, 0, 0, 0]),
        (dict(top_k=2, top_p=0.7), [1, 1, 0, 0]),
    ],
)
def test_filter_logits_hand_worked(filters, kept):
    assert _kept(PROBS, **filters) == [bool(k) for k in kept]


def test_filter_logits_works_in_id_order_over_batch_rows():
    shuffled = [[0.15, 0.5, 0.05, 0.3], [0.05, 0.15, 0.3, 0.5]]
    assert _kept(shuffled, top_k=0, top_p=0.8) == [[0, 1, 0, 1], [0, 0, 1, 1]]
    assert _kept(shuffled, top_k=1, top_p=1.0) == [[0, 1, 0, 0], [0, 0, 0, 1]]


def test_filter_logits_ties_go_to_the_lower_id_and_off_is_identity():
    logits = jnp.array([1.0, 2.0, 2.0, 0.0])
    kept = lambda **filters: np.isfinite(sampling.filter_logits(logits, **filters)).tolist()
    assert kept(top_k=1, top_p=1.0) == [False, True, False, False]  # argmax's choice
    assert kept(top_k=2, top_p=1.0) == [False, True, True, False]
    assert kept(top_k=0, top_p=0.3) == [False, True, False, False]
    np.testing.assert_array_equal(sampling.filter_logits(logits, top_k=2, top_p=1.0)[1:3], [2, 2])
    assert sampling.filter_logits(logits, top_k=0, top_p=1.0) is logits


def test_top_k_draws_are_always_among_the_k_most_likely():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=20), jnp.float32)
    draws = sampling.choose_tokens(
        jnp.tile(logits, (4000, 1)), jax.random.key(1), temperature=3.0, top_k=5, top_p=1.0
    )
    top5 = set(np.argsort(-np.asarray(logits))[:5].tolist())
    assert set(np.asarray(draws).tolist()) == top5  # all five drawn, nothing else


def test_top_p_draws_stay_in_the_nucleus():
    logits = jnp.log(jnp.asarray(PROBS, jnp.float32))
    draws = sampling.choose_tokens(
        jnp.tile(logits, (2000, 1)), jax.random.key(2), temperature=1.0, top_k=0, top_p=0.8
    )
    counts = np.bincount(np.asarray(draws), minlength=4)
    assert counts[2:].sum() == 0
    assert abs(counts[0] / counts.sum() - 0.5 / 0.8) < 0.05  # renormalized over the nucleus


# ---------------------------------------------------------------------- generation


# Tests share prompts and options where they can: each distinct set compiles once.
PROMPTS = ["7 8 9 10", "5"]  # different lengths: right-padded, per-row cache index


def test_cached_greedy_equals_full_forward_greedy_for_a_batch_of_prompts(params):
    texts = _generate(params, PROMPTS)
    prompts = [[7, 8, 9, 10], [5]]
    argmax = lambda logits, step: jnp.argmax(logits[: _Ids.vocab_size])
    # The batch budget is set by the longest prompt: MAX_LEN - 5 tokens.
    expected = [_reference_generate(params, p, min(8, MAX_LEN - 5), argmax) for p in prompts]
    assert texts == expected


def test_plain_temperature_sampling_equals_reference_with_the_same_seed(params):
    temperature, seed = 2.0, 4

    def draw(logits, step):  # the documented key schedule: fold_in(key(seed), step)
        rng = jax.random.fold_in(jax.random.key(seed), step)
        return jax.random.categorical(rng, logits[None] / temperature)[0]

    texts = _generate(params, ["7 8"], temperature=temperature, seed=seed, top_k=0, top_p=1.0)
    assert texts == [_reference_generate(params, [7, 8], 8, draw)]


def test_top_k_1_is_greedy_at_any_temperature(params):
    greedy = _generate(params, PROMPTS)
    assert _generate(params, PROMPTS, temperature=50.0, seed=3, top_k=1) == greedy


def test_temperature_sampling_is_seeded(params):
    run = lambda seed: _generate(params, ["7 8"], temperature=2.0, seed=seed)[0]
    assert run(0) == run(0)
    assert len({run(s) for s in range(4)}) > 1


def test_ids_past_the_tokenizer_vocabulary_are_never_sampled(params):
    class Small(_Ids):
        vocab_size = 10

    for seed in range(3):
        text = sampling.generate(
            MODEL,
            params,
            Small(),
            "7",
            max_len=MAX_LEN,
            max_new_tokens=10,
            temperature=50.0,
            seed=seed,
        )
        assert all(int(t) < 10 for t in text.split())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(prompt=" ".join(["7"] * MAX_LEN)), f"context is {MAX_LEN}"),
        (dict(temperature=-0.5), "temperature=-0.5 must be >= 0"),
        (dict(top_k=-1), "top_k=-1 must be >= 0"),
        (dict(top_p=0.0), r"top_p=0.0 must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p=1.5 must be in \(0, 1\]"),
    ],
)
def test_bad_options_are_one_line_user_errors(params, options, message):
    options = dict(dict(prompt="7", temperature=1.0, top_k=0, top_p=1.0), **options)
    with pytest.raises(UserError, match=message) as error:
        sampling.generate(
            MODEL, params, _Ids(), max_len=MAX_LEN, max_new_tokens=2, seed=0, **options
        )
    assert "\n" not in str(error.value)


def test_sample_from_config_describes_how_it_sampled(params):
    config = ml_collections.ConfigDict(
        dict(
            model=dict(max_len=MAX_LEN),
            sample=dict(prompt="7", max_new_tokens=3, temperature=0.7, top_k=5, top_p=0.9, seed=0),
        )
    )
    run = types.SimpleNamespace(config=config, model=MODEL, tokenizer=_Ids())
    text, how = sampling.sample_from_config(run, params)
    assert text.startswith("7")
    assert how == "temperature 0.7, top-k 5, top-p 0.9"
    assert sampling.describe(temperature=0.0, top_k=5, top_p=0.9) == "greedy"
    assert sampling.describe(temperature=1.0, top_k=0, top_p=1.0) == (
        "temperature 1.0, top-k off, top-p off"
    )
