"""Log-likelihoods of given continuations: the scores behind in-context classification
and cloze candidates.

One full (uncached) teacher-forced forward pass per batch of examples. Examples are
sorted by length so that each batch pads little; each batch is right-padded to
`batch_size` rows and to a bucketed length (`bucket_length`), so that a run over many
lengths compiles only a handful of shapes. Token log-probabilities come back to the host
and are summed there in float64.

Where every context is scored with the same few continuations (in-context learning's
label words after a long prompt of demonstrations, a T5 classifier's label words), the
`*_every_*` functions run each context once: a decoder prefills its keys and values into
the KV cache and scores every continuation from copies of it; an encoder-decoder encodes
each input once and decodes every target against it. They equal the pairwise functions
over all (context, continuation) pairs, at about 1 / (number of continuations) of the
context's compute.

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
from t5x_lite.models.decoder_only import DecoderOnly, init_decode_cache
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
        _check_decoder_example(model, index, context, len(continuation))
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


def _check_decoder_example(model: DecoderOnly, index: int, context, continuation_length: int):
    if not len(context):
        raise UserError(f"example {index} has an empty context; start it with BOS")
    length = len(context) + continuation_length
    if length > model.max_len:
        raise UserError(
            f"example {index} is {length} tokens (context + continuation) but the model's "
            f"context is {model.max_len}; use a shorter prompt or fewer shots"
        )


def decoder_every_continuation_log_likelihoods(
    model: DecoderOnly,
    params,
    contexts: Sequence[np.ndarray],
    continuations: Sequence[np.ndarray],
    *,
    batch_size: int,
) -> np.ndarray:
    """float64 [len(contexts), len(continuations)]: decoder_log_likelihoods of every
    continuation after every context, each context run once (the module docstring).

    contexts: non-empty 1-D id arrays (starting with BOS, say); continuations: non-empty
    1-D id arrays; every context with the longest continuation must fit max_len.
    """
    _check_batch_size(batch_size)
    contexts, continuations = _as_ids(contexts), _as_ids(continuations)
    if not continuations or not all(len(c) for c in continuations):
        raise UserError("continuations must be non-empty id sequences")
    longest = max(len(c) for c in continuations)
    for index, context in enumerate(contexts):
        _check_decoder_example(model, index, context, longest)
    words = _right_pad(continuations, len(continuations), longest)
    word_lengths = np.array([len(c) for c in continuations], np.int32)
    totals = np.zeros((len(contexts), len(continuations)), np.float64)
    for indices in _batches([len(c) for c in contexts], batch_size):
        length = bucket_length(max(len(contexts[i]) for i in indices), model.max_len)
        batch = padded_features("decoder", [contexts[i] for i in indices], batch_size, length)
        # Padding rows have no real token; give them one so "last" stays in range.
        batch["decoder_segment_ids"][len(indices) :, 0] = 1
        # Every row writes its continuation at its own length: at most length - 1 +
        # longest - 1 slots, within max_len since each context fits with the longest.
        cache_length = min(model.max_len, length + longest - 1)
        first, rest = _every_continuation_log_probs(
            model, params, batch, words, word_lengths, cache_length
        )
        rest = np.asarray(rest, np.float64).reshape(batch_size, len(continuations), -1)
        scores = np.asarray(first, np.float64) + rest.sum(axis=-1)
        totals[indices] = scores[: len(indices)]
    return totals


@functools.partial(jax.jit, static_argnames=("model", "cache_length"))
def _every_continuation_log_probs(model, params, batch, words, word_lengths, cache_length):
    """Right-padded contexts [batch, length] and continuations int32 [n, longest] ->
    (log p(each continuation's first token | context) float32 [batch, n],
     log p of its later tokens, 0 past its end, float32 [batch * n, longest - 1])."""
    rows, (num_words, longest) = batch["decoder_input_tokens"].shape[0], words.shape
    cache = init_decode_cache(model, params, rows, cache_length)
    outputs, mutated = model.apply(
        {"params": params, "cache": cache}, batch, deterministic=True, decode=True,
        mutable=["cache"],
    )  # fmt: skip
    last = jnp.sum(batch["decoder_segment_ids"] != 0, axis=1) - 1  # [rows]
    logits = jnp.take_along_axis(outputs["logits"], last[:, None, None], axis=1)[:, 0]
    first = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)[:, words[:, 0]]
    if longest == 1:
        return first, jnp.zeros((rows * num_words, 0), jnp.float32)

    def repeat(path, leaf):  # row r -> rows r * n ... r * n + n - 1
        in_layers = any(getattr(entry, "key", None) == "layers" for entry in path)
        return jnp.repeat(leaf, num_words, axis=1 if in_layers else 0)

    cache = jax.tree_util.tree_map_with_path(repeat, mutated["cache"])
    real = (jnp.arange(longest - 1)[None] < word_lengths[:, None] - 1).astype(jnp.int32)
    chunk = {  # each continuation but its last token, written at each row's own index
        "decoder_input_tokens": jnp.tile(words[:, :-1], (rows, 1)),
        "decoder_segment_ids": jnp.tile(real, (rows, 1)),
    }
    outputs, _ = model.apply(
        {"params": params, "cache": cache}, chunk, deterministic=True, decode=True,
        mutable=["cache"],
    )  # fmt: skip
    later = _gather_log_probs(outputs["logits"], jnp.tile(words[:, 1:], (rows, 1)))
    return first, jnp.where(chunk["decoder_segment_ids"] != 0, later, 0.0)


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
        _check_encoder_decoder_example(index, input_ids, len(target), max_input_length)
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


def _check_encoder_decoder_example(index, input_ids, target_length, max_input_length):
    if not len(input_ids) or not target_length:
        raise UserError(f"example {index} has an empty input or target")
    if max_input_length is not None and len(input_ids) > max_input_length:
        raise UserError(
            f"example {index}'s input is {len(input_ids)} tokens but max_input_length is "
            f"{max_input_length}; use a shorter prompt or fewer shots"
        )


def encoder_decoder_every_target_log_likelihoods(
    model: EncoderDecoder,
    params,
    inputs: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    *,
    batch_size: int,
    decoder_start_id: int,
    max_input_length: int | None = None,
) -> np.ndarray:
    """float64 [len(inputs), len(targets)]: encoder_decoder_log_likelihoods of every
    target given every input, each input encoded once (the module docstring)."""
    _check_batch_size(batch_size)
    inputs, targets = _as_ids(inputs), _as_ids(targets)
    if not targets or not all(len(t) for t in targets):
        raise UserError("targets must be non-empty id sequences")
    for index, input_ids in enumerate(inputs):
        _check_encoder_decoder_example(index, input_ids, 1, max_input_length)
    target_length = bucket_length(max(len(t) for t in targets))
    decoder_inputs = [np.concatenate([[decoder_start_id], t[:-1]]) for t in targets]
    decoder = padded_features("decoder", decoder_inputs, len(targets), target_length)
    target_ids = _right_pad(targets, len(targets), target_length)
    real = decoder["decoder_segment_ids"] != 0  # [n targets, target_length]
    totals = np.zeros((len(inputs), len(targets)), np.float64)
    for indices in _batches([len(i) for i in inputs], batch_size):
        input_length = bucket_length(max(len(inputs[i]) for i in indices))
        encoder = padded_features("encoder", [inputs[i] for i in indices], batch_size, input_length)
        log_probs = _every_target_log_probs(model, params, encoder, decoder, target_ids)
        log_probs = np.asarray(log_probs, np.float64).reshape(batch_size, len(targets), -1)
        totals[indices] = np.where(real, log_probs, 0.0).sum(axis=-1)[: len(indices)]
    return totals


@functools.partial(jax.jit, static_argnames="model")
def _every_target_log_probs(model, params, encoder, decoder, targets):
    """Encoder features [batch, input_length]; every target's decoder features and ids
    [n, target_length] -> log p(target tokens) float32 [batch * n, target_length] (row
    b * n + t: target t given input b)."""
    rows, num_targets = encoder["encoder_input_tokens"].shape[0], targets.shape[0]
    encoded = model.apply({"params": params}, encoder, deterministic=True, method="encode")
    pairs = {name: jnp.tile(value, (rows, 1)) for name, value in decoder.items()}
    pairs["encoder_segment_ids"] = jnp.repeat(encoder["encoder_segment_ids"], num_targets, 0)
    logits = model.apply(
        {"params": params}, jnp.repeat(encoded, num_targets, axis=0), pairs,
        deterministic=True, method="decode",
    )  # fmt: skip
    return _gather_log_probs(logits, jnp.tile(targets, (rows, 1)))


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
