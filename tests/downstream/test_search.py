"""Encoder-decoder search: cached greedy equals a full-forward argmax loop, beam search
equals brute force on a tiny vocabulary, scores equal rescoring by the full forward."""

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite.downstream import search
from t5x_lite.errors import UserError
from t5x_lite.models.encoder_decoder import EncoderDecoder
from tests.models.helpers import fast_jit

EOS, BOS = 1, 3


def tiny_model(vocab_size: int) -> EncoderDecoder:
    return EncoderDecoder(
        vocab_size=vocab_size,
        d_model=16,
        num_encoder_layers=1,
        num_decoder_layers=2,
        num_heads=2,
        head_dim=8,
        d_ff=32,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        mlp="gated_gelu",
        tie_embeddings=False,
        dropout_rate=0.1,  # decoding is deterministic: must not matter
        layer_norm_epsilon=1e-6,
        dtype="float32",
        remat_policy="none",
        attention_impl="einsum",
    )


MODEL, SMALL_MODEL = tiny_model(32), tiny_model(8)  # SMALL_MODEL: brute-forceable


def random_params(model: EncoderDecoder, seed: int = 0) -> dict:
    """Params of init's shapes drawn in numpy (no init compile), large enough that the
    next-token distributions are far from uniform."""
    names = [f"{side}_{feature}" for side in ("encoder", "decoder")
             for feature in ("input_tokens", "segment_ids", "positions")]  # fmt: skip
    batch = {name: jnp.ones((1, 4), jnp.int32) for name in names}
    init = functools.partial(model.init, deterministic=True)
    abstract = jax.eval_shape(init, jax.random.key(0), batch)
    leaves, treedef = jax.tree.flatten(nn.meta.unbox(abstract["params"]))
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(
        treedef, [rng.normal(0.0, 0.5, leaf.shape).astype(np.float32) for leaf in leaves]
    )


PARAMS, SMALL_PARAMS = random_params(MODEL, seed=3), random_params(SMALL_MODEL, seed=1)


def encoder_batch(rows, num_ids: int, length: int | None = None, seed: int = 0) -> dict:
    """rows: per-row input lengths (EOS included) -> zero-padded encoder features."""
    rng = np.random.default_rng(seed)
    length = length or max(rows)
    tokens = np.zeros((len(rows), length), np.int32)
    for row, row_length in enumerate(rows):
        tokens[row, : row_length - 1] = rng.integers(4, num_ids, row_length - 1)
        tokens[row, row_length - 1] = EOS
    segment_ids = (tokens != 0).astype(np.int32)
    positions = np.arange(length, dtype=np.int32)[None] * segment_ids
    return {
        "encoder_input_tokens": jnp.asarray(tokens),
        "encoder_segment_ids": jnp.asarray(segment_ids),
        "encoder_positions": jnp.asarray(positions),
    }


def full_log_probs(model, params, batch, targets, num_ids: int) -> np.ndarray:
    """Teacher-forced, uncached: log p(targets[:, t] | BOS, targets[:, :t]) [rows, length]
    with ids >= num_ids masked before the softmax, as the search functions do."""
    rows, length = targets.shape
    decoder = {
        "decoder_input_tokens": jnp.concatenate(
            [jnp.full((rows, 1), BOS, jnp.int32), targets[:, :-1]], axis=1
        ),
        "decoder_segment_ids": jnp.ones((rows, length), jnp.int32),
        "decoder_positions": jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (rows, length)),
    }
    logits = _full_logits(model, params, dict(batch) | decoder)
    logits = jnp.where(jnp.arange(logits.shape[-1]) < num_ids, logits, -jnp.inf)
    log_probs = jax.nn.log_softmax(logits)
    return np.asarray(jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0])


@functools.partial(fast_jit, static_argnums=0)
def _full_logits(model, params, batch):
    return model.apply({"params": params}, batch, deterministic=True)["logits"]


def reference_greedy(model, params, batch, max_length: int, eos_id: int, num_ids: int):
    """Argmax one token at a time, rerunning the full forward over the whole prefix."""
    rows = batch["encoder_input_tokens"].shape[0]
    tokens = np.zeros((rows, max_length), np.int32)
    finished = np.zeros(rows, bool)
    for step in range(max_length):
        decoder = {
            "decoder_input_tokens": jnp.asarray(
                np.concatenate([np.full((rows, 1), BOS), tokens[:, :-1]], axis=1)
            ),
            "decoder_segment_ids": jnp.ones((rows, max_length), jnp.int32),
            "decoder_positions": jnp.broadcast_to(jnp.arange(max_length), (rows, max_length)),
        }
        logits = np.asarray(_full_logits(model, params, dict(batch) | decoder))[:, step]
        chosen = np.argmax(logits[:, :num_ids], axis=-1)
        tokens[:, step] = np.where(finished, 0, chosen)
        finished |= tokens[:, step] == eos_id
    return tokens


@functools.cache
def _jitted(function, model, **settings):
    """One fast_jit per (search function, model, settings), so tests share compiles."""
    return fast_jit(functools.partial(function, model, **settings))


def run_greedy(model, params, batch, **settings):
    return _jitted(search.greedy_decode, model, **settings)(params, batch)


def run_beam(model, params, batch, **settings):
    return _jitted(search.beam_search, model, **settings)(params, batch)


def score_by_hand(model, params, batch, tokens, *, eos_id, alpha, num_ids) -> np.ndarray:
    """Full-forward log-probs summed up to and including the first EOS (all max_length
    tokens without one), divided by ((5 + length) / 6) ** alpha; tokens [rows, length]."""
    tokens = np.asarray(tokens)
    log_probs = full_log_probs(model, params, batch, jnp.asarray(tokens), num_ids)
    is_eos = tokens == eos_id
    lengths = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1) + 1, tokens.shape[1])
    within = np.arange(tokens.shape[1])[None] < lengths[:, None]
    return (log_probs * within).sum(axis=1) / ((5.0 + lengths) / 6.0) ** alpha


BATCH = encoder_batch([7, 4, 5], num_ids=32, length=8)
NUM_IDS, MAX_LENGTH = 30, 6


@pytest.fixture(scope="module")
def eos_id() -> int:
    """The id row 0 emits third when nothing stops it: as EOS it ends row 0 early while
    other rows may run on, so both paths get exercised."""
    never = reference_greedy(MODEL, PARAMS, BATCH, MAX_LENGTH, eos_id=-1, num_ids=NUM_IDS)
    assert never[0, 2] not in never[0, :2]
    return int(never[0, 2])


def decode_settings(eos_id: int) -> dict:
    return {"max_length": MAX_LENGTH, "eos_id": eos_id, "bos_id": BOS, "num_ids": NUM_IDS}


@pytest.fixture(scope="module")
def greedy(eos_id):
    """greedy_decode of BATCH: (tokens, scores)."""
    return run_greedy(MODEL, PARAMS, BATCH, **decode_settings(eos_id))


@pytest.fixture(scope="module")
def beams(eos_id) -> search.BeamSearchResult:
    """beam_search of BATCH, 4 beams, alpha 0.6."""
    return run_beam(
        MODEL, PARAMS, BATCH, beam_size=4, length_penalty_alpha=0.6, **decode_settings(eos_id)
    )


def test_length_penalty_by_hand():
    assert search.length_penalty(4, 0.6) == pytest.approx(1.2754245006257907, abs=1e-12)
    assert search.length_penalty(4, 0.0) == 1.0
    assert search.length_penalty(1, 0.6) == 1.0  # ((5 + 1) / 6) ** alpha


def test_cached_greedy_matches_full_forward_loop_and_stops_at_eos(eos_id, greedy):
    expected = reference_greedy(MODEL, PARAMS, BATCH, MAX_LENGTH, eos_id, NUM_IDS)
    tokens, scores = (np.asarray(x) for x in greedy)
    np.testing.assert_array_equal(tokens, expected)
    assert tokens[0, 2] == eos_id and not tokens[0, 3:].any()  # stopped, padded with 0
    assert (tokens != eos_id).all(axis=1).any()  # some row never stopped
    assert tokens.max() < NUM_IDS and tokens.dtype == np.int32
    hand = score_by_hand(MODEL, PARAMS, BATCH, tokens, eos_id=eos_id, alpha=0.0, num_ids=NUM_IDS)
    np.testing.assert_allclose(scores, hand, rtol=0, atol=1e-5)


def test_beam_size_one_is_greedy(eos_id, greedy):
    result = run_beam(
        MODEL, PARAMS, BATCH, beam_size=1, length_penalty_alpha=0.0, **decode_settings(eos_id)
    )
    np.testing.assert_array_equal(np.asarray(result.tokens), np.asarray(greedy[0]))
    np.testing.assert_allclose(np.asarray(result.scores), greedy[1], rtol=0, atol=1e-5)


def brute_force(batch, row: int, *, max_length: int, num_ids: int, alpha: float):
    """Every distinct hypothesis of one input row (id sequences cut after their first EOS,
    zero-padded) with its score, best first, scored by the full forward."""
    sequences = np.array(list(itertools.product(range(num_ids), repeat=max_length)), np.int32)
    one_row = {key: value[row : row + 1] for key, value in batch.items()}
    repeated = {key: jnp.repeat(value, len(sequences), axis=0) for key, value in one_row.items()}
    scores = score_by_hand(
        SMALL_MODEL, SMALL_PARAMS, repeated, sequences, eos_id=EOS, alpha=alpha, num_ids=num_ids
    )
    after_eos = np.cumsum(np.cumsum(sequences == EOS, axis=1), axis=1) > 1
    hypotheses = np.where(after_eos, 0, sequences)
    hypotheses, first = np.unique(hypotheses, axis=0, return_index=True)
    order = np.argsort(-scores[first], kind="stable")
    return hypotheses[order], scores[first][order]


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_beam_search_equals_exhaustive_search(alpha):
    """8-id model, 6 ids allowed, 3 tokens: a beam of 30 holds every step's extensions
    (6, then 5 * 6; the last step finishes 30 of 25 * 6 equal-length ones), so the kept
    hypotheses must be exactly the 30 best of all 156 distinct ones, scores included."""
    batch = encoder_batch([5, 3], num_ids=8, seed=4)
    result = run_beam(
        SMALL_MODEL, SMALL_PARAMS, batch, beam_size=30, length_penalty_alpha=alpha,
        max_length=3, eos_id=EOS, bos_id=BOS, num_ids=6,
    )  # fmt: skip
    for row in range(2):
        hypotheses, scores = brute_force(batch, row, max_length=3, num_ids=6, alpha=alpha)
        assert len(hypotheses) == 1 + 5 + 5 * 5 * 6
        np.testing.assert_array_equal(np.asarray(result.tokens[row]), hypotheses[0])
        np.testing.assert_allclose(float(result.scores[row]), scores[0], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(result.beam_tokens[row]), hypotheses[:30])
        np.testing.assert_allclose(
            np.asarray(result.beam_scores[row]), scores[:30], rtol=0, atol=1e-5
        )


def test_beam_scores_equal_full_forward_rescoring(eos_id, beams):
    """Every kept hypothesis' score is its full-forward log-prob over lp(length)."""
    beam_tokens = np.asarray(beams.beam_tokens)
    rows, beam_size, _ = beam_tokens.shape
    repeated = {key: jnp.repeat(value, beam_size, axis=0) for key, value in BATCH.items()}
    hand = score_by_hand(
        MODEL, PARAMS, repeated, beam_tokens.reshape(rows * beam_size, -1),
        eos_id=eos_id, alpha=0.6, num_ids=NUM_IDS,
    ).reshape(rows, beam_size)  # fmt: skip
    scores = np.asarray(beams.beam_scores)
    assert np.isfinite(scores).all() and (np.diff(scores, axis=1) <= 0).all()
    np.testing.assert_allclose(scores, hand, rtol=0, atol=1e-5)
    assert (beam_tokens == eos_id).any()  # some hypotheses finished before max_length
    np.testing.assert_array_equal(np.asarray(beams.tokens), beam_tokens[:, 0])


def test_each_row_decodes_as_if_alone(eos_id, beams):
    """Rows of different input lengths, padded together, decode as each does unpadded
    (beam search reorders one flat [rows * beams] cache: rows must not mix)."""
    for row, length in [(0, 7), (1, 4)]:
        alone = {key: value[row : row + 1, :length] for key, value in BATCH.items()}
        result = run_beam(
            MODEL, PARAMS, alone, beam_size=4, length_penalty_alpha=0.6, **decode_settings(eos_id)
        )
        np.testing.assert_array_equal(result.beam_tokens[0], beams.beam_tokens[row])
        np.testing.assert_allclose(result.beam_scores[0], beams.beam_scores[row], rtol=0, atol=1e-5)


class _Ids:
    """Stands in for a tokenizer: text is space-separated ids; the model's last 2 ids are
    padding past this vocabulary."""

    bos_id, vocab_size = BOS, NUM_IDS

    def __init__(self, eos_id: int = EOS):
        self.eos_id = eos_id

    def encode(self, text):
        return np.array([int(t) for t in text.split()], np.int32)

    def decode(self, ids):
        return " ".join(str(i) for i in ids)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_generate_text_builds_batch_and_decodes_until_eos(eos_id, beam_size):
    """BATCH's inputs as text: the outputs are the greedy / beam tokens before EOS."""
    inputs = np.asarray(BATCH["encoder_input_tokens"])
    texts = [" ".join(str(i) for i in row[: list(row).index(EOS)]) for row in inputs]
    tokenizer = _Ids(eos_id)
    batch = search.encoder_batch(tokenizer, texts, 8)
    # BATCH's rows, each ending with the tokenizer's EOS.
    np.testing.assert_array_equal(
        batch["encoder_input_tokens"], np.where(inputs == EOS, eos_id, inputs)
    )
    for key in ("encoder_segment_ids", "encoder_positions"):
        np.testing.assert_array_equal(batch[key], BATCH[key])
    out = search.generate_text(
        MODEL, PARAMS, tokenizer, texts, inputs_length=8, max_length=MAX_LENGTH,
        beam_size=beam_size, length_penalty_alpha=0.6,
    )  # fmt: skip
    if beam_size == 1:
        tokens, _ = run_greedy(MODEL, PARAMS, batch, **decode_settings(eos_id))
    else:
        tokens = run_beam(
            MODEL, PARAMS, batch, beam_size=4, length_penalty_alpha=0.6, **decode_settings(eos_id)
        ).tokens
    for text, row in zip(out, np.asarray(tokens), strict=True):
        until_eos = row[: list(row).index(eos_id)] if eos_id in row else row
        assert text == " ".join(str(i) for i in until_eos)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"inputs_length": 3}, "input 0 is 4 tokens with EOS but inputs_length is 3"),
        ({"beam_size": 0}, "beam_size=0"),
        ({"max_length": 0}, "max_length=0"),
        ({"length_penalty_alpha": -1.0}, "length_penalty_alpha"),
    ],
)
def test_bad_settings_raise_user_error(kwargs, match):
    text_settings = {"inputs_length": 8, "max_length": 4} | kwargs
    with pytest.raises(UserError, match=match):
        search.generate_text(MODEL, PARAMS, _Ids(), ["5 6 7"], **text_settings)
    if "inputs_length" not in kwargs:
        with pytest.raises(UserError, match=match):
            search.beam_search(
                MODEL, PARAMS, BATCH, eos_id=EOS, bos_id=BOS,
                **({"beam_size": 2, "max_length": 4, "length_penalty_alpha": 0.0} | kwargs),
            )  # fmt: skip
