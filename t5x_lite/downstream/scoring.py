"""Log-likelihoods of given continuations: the scores behind in-context classification
and cloze candidates.

One full (uncached) teacher-forced forward pass per batch of examples. Examples are
sorted by length so that each batch pads little; each batch is right-padded to
`batch_size` rows and to a bucketed length (`bucket_length`), so that a run over many
lengths compiles only a handful of shapes. Token log-probabilities come back to the host
and are summed there in float64.

Every log-probability is over the model's whole output vocabulary (as in training); no
ids are masked out.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite.errors import UserError
from t5x_lite.models.decoder_only import DecoderOnly
from t5x_lite.models.encoder_decoder import EncoderDecoder

MIN_BUCKET = 16  # shortest padded length: tiny inputs share one compile


def bucket_length(length: int, limit: int | None = None) -> int:
    """The padded length for `length` tokens: the next power of two >= max(length,
    MIN_BUCKET), capped at `limit` (None = no cap)."""
    bucket = max(MIN_BUCKET, 1 << max(0, length - 1).bit_length())
    return bucket if limit is None else min(bucket, limit)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size} must be at least 1")


def _batches(lengths: Sequence[int], batch_size: int):
    """Example indices grouped into batches of similar length (shortest first)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _gather_log_probs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """logits float [batch, length, vocab], targets int [batch, length] -> float32
    log p(target) [batch, length]."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


@functools.partial(jax.jit, static_argnames="model")
def _token_log_probs(model, params, batch, targets):
    """A model's features (decoder, or encoder + decoder) and targets int32 [batch,
    target_length] -> log p(targets) [batch, target_length] (garbage where
    decoder_segment_ids is 0)."""
    logits = model.apply({"params": params}, batch, deterministic=True)["logits"]
    return _gather_log_probs(logits, targets)


@functools.partial(jax.jit, static_argnames="model")
def _decoder_last_log_probs(model, params, batch):
    """Decoder features of right-padded rows [batch, length] -> float32 log-probs
    [batch, vocab] of the token after each row's last real token."""
    logits = model.apply({"params": params}, batch, deterministic=True)["logits"]
    last = jnp.sum(batch["decoder_segment_ids"], axis=1) - 1  # [batch]
    logits = jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def _right_pad(rows: Sequence[np.ndarray], num_rows: int, length: int) -> np.ndarray:
    """1-D int arrays -> int32 [num_rows, length], zero-padded (extra rows all zero)."""
    out = np.zeros((num_rows, length), np.int32)
    for row, ids in enumerate(rows):
        out[row, : len(ids)] = ids
    return out


def _as_ids(sequences: Sequence) -> list[np.ndarray]:
    return [np.asarray(ids, np.int64).reshape(-1) for ids in sequences]


def decoder_log_likelihoods(
    model: DecoderOnly,
    params,
    contexts: Sequence[np.ndarray],
    continuations: Sequence[np.ndarray],
    *,
    batch_size: int,
) -> np.ndarray:
    """float64 [n]: sum over each continuation's tokens of log p(token | context and the
    continuation tokens before it), under a DecoderOnly model.

    contexts / continuations: n 1-D int id arrays; each context is non-empty (it starts
    with BOS, say) and context + continuation must fit the model's max_len.
    """
    _check_batch_size(batch_size)
    contexts, continuations = _as_ids(contexts), _as_ids(continuations)
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    for index, (context, continuation) in enumerate(zip(contexts, continuations)):
        if not len(context):
            raise UserError(f"example {index} has an empty context; start it with BOS")
        length = len(context) + len(continuation)
        if length > model.max_len:
            raise UserError(
                f"example {index} is {length} tokens (context + continuation) but the model's "
                f"context is {model.max_len}; use a shorter prompt or fewer shots"
            )
    # The model reads every token but the last, and predicts every token but the first.
    sequences = [np.concatenate([c, t]) for c, t in zip(contexts, continuations)]
    totals = np.zeros(len(sequences), np.float64)
    for indices in _batches([len(s) for s in sequences], batch_size):
        length = bucket_length(max(len(sequences[i]) - 1 for i in indices), model.max_len)
        batch = padded_features("decoder", [sequences[i][:-1] for i in indices], batch_size, length)
        targets = _right_pad([sequences[i][1:] for i in indices], batch_size, length)
        log_probs = np.asarray(_token_log_probs(model, params, batch, targets), np.float64)
        for row, index in enumerate(indices):
            # Targets from position len(context) - 1 on are continuation tokens.
            start, stop = len(contexts[index]) - 1, len(sequences[index]) - 1
            totals[index] = log_probs[row, start:stop].sum()
    return totals


def decoder_next_log_probs(
    model: DecoderOnly, params, contexts: Sequence[np.ndarray], *, batch_size: int
) -> np.ndarray:
    """float32 [n, model vocab]: log p(next token | context) for n non-empty 1-D id
    arrays of at most max_len tokens."""
    _check_batch_size(batch_size)
    contexts = _as_ids(contexts)
    for index, context in enumerate(contexts):
        if not 0 < len(context) <= model.max_len:
            raise UserError(
                f"context {index} is {len(context)} tokens; it must be 1 to the model's "
                f"max_len {model.max_len}; use a shorter prompt"
            )
    out = np.zeros((len(contexts), model.vocab_size), np.float32)
    for indices in _batches([len(c) for c in contexts], batch_size):
        length = bucket_length(max(len(contexts[i]) for i in indices), model.max_len)
        batch = padded_features("decoder", [contexts[i] for i in indices], batch_size, length)
        # Padding rows have no real token; give them one so "last" stays in range.
        batch["decoder_segment_ids"][len(indices) :, 0] = 1
        log_probs = np.asarray(_decoder_last_log_probs(model, params, batch))
        out[indices] = log_probs[: len(indices)]
    return out


def encoder_decoder_log_likelihoods(
    model: EncoderDecoder,
    params,
    inputs: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    *,
    batch_size: int,
    decoder_start_id: int,
    max_input_length: int | None = None,
) -> np.ndarray:
    """float64 [n]: sum over each target's tokens of log p(token | inputs, the target
    tokens before it) under an EncoderDecoder, teacher-forced from `decoder_start_id`.

    inputs / targets: n non-empty 1-D int id arrays, as the model saw them in training
    (typically each ending with EOS). T5's relative positions set no length limit;
    `max_input_length` (None = none) rejects longer inputs, e.g. the length trained on.
    """
    _check_batch_size(batch_size)
    inputs, targets = _as_ids(inputs), _as_ids(targets)
    if len(inputs) != len(targets):
        raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
    for index, (input_ids, target) in enumerate(zip(inputs, targets)):
        if not len(input_ids) or not len(target):
            raise UserError(f"example {index} has an empty input or target")
        if max_input_length is not None and len(input_ids) > max_input_length:
            raise UserError(
                f"example {index}'s input is {len(input_ids)} tokens but max_input_length is "
                f"{max_input_length}; use a shorter prompt or fewer shots"
            )
    totals = np.zeros(len(inputs), np.float64)
    lengths = [max(len(i), len(t)) for i, t in zip(inputs, targets)]
    for indices in _batches(lengths, batch_size):
        input_length = bucket_length(max(len(inputs[i]) for i in indices))
        target_length = bucket_length(max(len(targets[i]) for i in indices))
        decoder_inputs = [np.concatenate([[decoder_start_id], targets[i][:-1]]) for i in indices]
        batch = padded_features(
            "encoder", [inputs[i] for i in indices], batch_size, input_length
        ) | padded_features("decoder", decoder_inputs, batch_size, target_length)
        target_ids = _right_pad([targets[i] for i in indices], batch_size, target_length)
        log_probs = np.asarray(_token_log_probs(model, params, batch, target_ids), np.float64)
        for row, index in enumerate(indices):
            totals[index] = log_probs[row, : len(targets[index])].sum()
    return totals


def padded_features(side: str, rows: Sequence[np.ndarray], num_rows: int, length: int) -> dict:
    """1-D id arrays -> {side}_input_tokens / _segment_ids (1 on tokens) / _positions,
    int32 [num_rows, length], right-padded with zeros (rows past len(rows) all zero)."""
    tokens = _right_pad(rows, num_rows, length)
    segment_ids = _right_pad([np.ones(len(ids)) for ids in rows], num_rows, length)
    positions = np.arange(length, dtype=np.int32)[None] * segment_ids
    return {
        f"{side}_input_tokens": tokens,
        f"{side}_segment_ids": segment_ids,
        f"{side}_positions": positions,
    }
