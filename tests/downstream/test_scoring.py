"""Continuation log-likelihoods: batched, padded and bucketed scores equal a per-example
unpadded forward pass summed token by token; length limits are one-line UserErrors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite.downstream import scoring
from t5x_lite.errors import UserError
from tests.downstream.helpers import DECODER, ENCODER_DECODER, MODEL_VOCAB, random_params
from tests.models.helpers import fast_jit

BOS, EOS = 3, 1


@functools.partial(fast_jit, static_argnums=0)
def _logits(model, params, batch):
    return model.apply({"params": params}, batch, deterministic=True)["logits"]


def _unpadded(side: str, ids) -> dict:
    ids = np.asarray(ids, np.int32)[None]
    return {
        f"{side}_input_tokens": ids,
        f"{side}_segment_ids": np.ones_like(ids),
        f"{side}_positions": np.arange(ids.shape[1], dtype=np.int32)[None],
    }


def _manual_decoder(params, context, continuation) -> float:
    """One unpadded forward of context + continuation; the continuation's log-probs
    gathered one token at a time."""
    tokens = np.concatenate([context, continuation])
    log_probs = np.asarray(
        jax.nn.log_softmax(_logits(DECODER, params, _unpadded("decoder", tokens)))
    )
    total = 0.0
    for offset, token in enumerate(continuation):
        total += float(log_probs[0, len(context) + offset - 1, token])
    return total


def _manual_encoder_decoder(params, inputs, targets, start) -> float:
    decoder_inputs = np.concatenate([[start], targets[:-1]])
    batch = _unpadded("encoder", inputs) | _unpadded("decoder", decoder_inputs)
    log_probs = np.asarray(jax.nn.log_softmax(_logits(ENCODER_DECODER, params, batch)))
    return sum(float(log_probs[0, t, token]) for t, token in enumerate(targets))


def _random_ids(rng, length):
    return rng.integers(4, MODEL_VOCAB, length).astype(np.int32)


def test_bucket_length():
    assert [scoring.bucket_length(n) for n in (1, 16, 17, 33, 64, 65)] == [16, 16, 32, 64, 64, 128]
    assert scoring.bucket_length(40, 48) == 48 and scoring.bucket_length(3, 8) == 8


def test_decoder_scores_equal_manual_sums():
    """Five examples of different lengths in batches of 2 (the last one padded); one
    crosses a length bucket, one has a one-token continuation."""
    params = random_params(DECODER)
    rng = np.random.default_rng(0)
    shapes = [(1, 5), (7, 1), (3, 20), (12, 4), (30, 30)]  # (context, continuation) lengths
    contexts = [np.concatenate([[BOS], _random_ids(rng, c - 1)]) for c, _ in shapes]
    continuations = [_random_ids(rng, t) for _, t in shapes]
    scores = scoring.decoder_log_likelihoods(DECODER, params, contexts, continuations, batch_size=2)
    assert scores.dtype == np.float64 and scores.shape == (5,)
    manual = [_manual_decoder(params, c, t) for c, t in zip(contexts, continuations)]
    np.testing.assert_allclose(scores, manual, rtol=0, atol=1e-5)
    assert (scores < 0).all()


def test_encoder_decoder_scores_equal_manual_sums():
    params = random_params(ENCODER_DECODER)
    rng = np.random.default_rng(1)
    shapes = [(4, 2), (9, 6), (20, 1)]  # (inputs, targets) lengths, EOS included
    inputs = [np.append(_random_ids(rng, n - 1), EOS) for n, _ in shapes]
    targets = [np.append(_random_ids(rng, n - 1), EOS) for _, n in shapes]
    scores = scoring.encoder_decoder_log_likelihoods(
        ENCODER_DECODER, params, inputs, targets, batch_size=2, decoder_start_id=BOS
    )
    assert scores.dtype == np.float64 and scores.shape == (3,)
    manual = [_manual_encoder_decoder(params, i, t, BOS) for i, t in zip(inputs, targets)]
    np.testing.assert_allclose(scores, manual, rtol=0, atol=1e-5)


def test_decoder_next_log_probs_equal_last_position():
    params = random_params(DECODER)
    rng = np.random.default_rng(2)
    contexts = [np.concatenate([[BOS], _random_ids(rng, n)]) for n in (0, 6, 17)]
    got = scoring.decoder_next_log_probs(DECODER, params, contexts, batch_size=2)
    for row, context in enumerate(contexts):
        logits = _logits(DECODER, params, _unpadded("decoder", context))[0, -1]
        np.testing.assert_allclose(got[row], jax.nn.log_softmax(logits), rtol=0, atol=1e-5)


def test_length_limits_are_user_errors():
    params = random_params(DECODER)
    contexts = [np.array([BOS, 5]), np.full(60, 5)]
    with pytest.raises(UserError, match=r"^example 1 is 65 tokens .* context is 64; use a shorter"):
        scoring.decoder_log_likelihoods(
            DECODER, params, contexts, [np.array([6]), np.full(5, 6)], batch_size=2
        )
    with pytest.raises(UserError, match="example 0 has an empty context"):
        scoring.decoder_log_likelihoods(DECODER, params, [[]], [[5]], batch_size=2)
    with pytest.raises(UserError, match="example 0's input is 9 tokens but max_input_length is 8"):
        scoring.encoder_decoder_log_likelihoods(
            ENCODER_DECODER, random_params(ENCODER_DECODER), [np.full(9, 5)], [[EOS]],
            batch_size=1, decoder_start_id=BOS, max_input_length=8,
        )  # fmt: skip
    with pytest.raises(UserError, match="batch_size=0"):
        scoring.decoder_log_likelihoods(DECODER, params, [[BOS]], [[5]], batch_size=0)


def test_params_are_read_only():
    params = random_params(DECODER)
    before = jax.tree.map(jnp.copy, params)
    scoring.decoder_log_likelihoods(DECODER, params, [[BOS, 5]], [[6, 7]], batch_size=1)
    jax.tree.map(np.testing.assert_array_equal, params, before)


def test_decoder_every_continuation_equals_the_pairwise_scores():
    """Each context prefilled once into the KV cache and every continuation scored from
    a copy of it equals a forward pass per pair. Five contexts in batches of 2 (the last
    padded; lengths crossing buckets; one that fills max_len with the longest
    continuation), continuations of 1, 3 and 2 tokens."""
    params = random_params(DECODER)
    rng = np.random.default_rng(3)
    words = [_random_ids(rng, n) for n in (1, 3, 2)]
    lengths = [1, 7, 20, 12, DECODER.max_len - 3]
    contexts = [np.concatenate([[BOS], _random_ids(rng, n - 1)]) for n in lengths]
    got = scoring.decoder_every_continuation_log_likelihoods(
        DECODER, params, contexts, words, batch_size=2
    )
    assert got.dtype == np.float64 and got.shape == (5, 3)
    pairwise = scoring.decoder_log_likelihoods(
        DECODER,
        params,
        [context for context in contexts for _ in words],
        [word for _ in contexts for word in words],
        batch_size=2,
    )
    np.testing.assert_allclose(got, pairwise.reshape(5, 3), rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        got[1, 1], _manual_decoder(params, contexts[1], words[1]), rtol=0, atol=1e-5
    )
    with pytest.raises(UserError, match=r"example 0 is 65 tokens .* context is 64"):
        scoring.decoder_every_continuation_log_likelihoods(
            DECODER, params, [np.append(contexts[-1], 5)], words, batch_size=2
        )
    with pytest.raises(UserError, match="non-empty"):
        scoring.decoder_every_continuation_log_likelihoods(
            DECODER, params, contexts, [words[0], []], batch_size=2
        )


def test_encoder_decoder_every_target_equals_the_pairwise_scores():
    """Each input encoded once and every target decoded against it equals a forward
    pass per pair (three inputs in batches of 2, targets of 1, 4 and 2 tokens)."""
    params = random_params(ENCODER_DECODER)
    rng = np.random.default_rng(4)
    inputs = [np.append(_random_ids(rng, n - 1), EOS) for n in (4, 19, 9)]
    targets = [np.append(_random_ids(rng, n - 1), EOS) for n in (1, 4, 2)]
    got = scoring.encoder_decoder_every_target_log_likelihoods(
        ENCODER_DECODER, params, inputs, targets, batch_size=2, decoder_start_id=BOS
    )
    assert got.dtype == np.float64 and got.shape == (3, 3)
    pairwise = scoring.encoder_decoder_log_likelihoods(
        ENCODER_DECODER,
        params,
        [input_ids for input_ids in inputs for _ in targets],
        [target for _ in inputs for target in targets],
        batch_size=2,
        decoder_start_id=BOS,
    )
    np.testing.assert_allclose(got, pairwise.reshape(3, 3), rtol=0, atol=1e-5)
    with pytest.raises(UserError, match="input is 19 tokens but max_input_length is 10"):
        scoring.encoder_decoder_every_target_log_likelihoods(
            ENCODER_DECODER, params, inputs, targets, batch_size=2, decoder_start_id=BOS,
            max_input_length=10,
        )  # fmt: skip
