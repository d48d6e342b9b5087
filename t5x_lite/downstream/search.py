"""Decoding an EncoderDecoder: greedy search and beam search through the decoding cache.

Both encode the inputs once, build the decoding cache once (which also projects the
encoder output to cross-attention keys/values), then run one decoder step per token
inside a `lax.while_loop`, so each compiles once for a given shape. The decoder starts
from BOS, as `objectives.encoder_decoder.encoder_decoder_example` trains it to; a row's
output ends with EOS and is padded with 0 after it, or fills all `max_length` slots.

Length, everywhere here, counts generated tokens including the EOS (so "a b EOS" has
length 3), or `max_length` for a hypothesis that never emitted EOS.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite.errors import UserError
from t5x_lite.models.encoder_decoder import (
    EncoderDecoder,
    gather_cache,
    init_decode_cache,
    repeat_cache,
)

_STATIC = ("model", "max_length", "eos_id", "bos_id", "num_ids")


def length_penalty(length, alpha: float):
    """GNMT's lp(length) = ((5 + length) / 6) ** alpha; a finished hypothesis scores
    sum(log p) / lp(length). alpha = 0 gives lp = 1 (raw log-probability)."""
    return ((5.0 + length) / 6.0) ** alpha


def _check_settings(*, max_length: int, beam_size: int, alpha: float = 0.0) -> None:
    if beam_size < 1:
        raise UserError(f"beam_size={beam_size} must be at least 1 (1 = greedy)")
    if max_length < 1:
        raise UserError(f"max_length={max_length} must be at least 1 token")
    if alpha < 0:
        raise UserError(f"length_penalty_alpha={alpha} must be >= 0 (0 = raw log-prob)")


def _encode_and_cache(model: EncoderDecoder, params, batch, max_length: int) -> Any:
    """Reads encoder_input_tokens / encoder_segment_ids / encoder_positions [batch,
    inputs_length] -> the decoding cache for `max_length` target tokens."""
    encoded = model.apply({"params": params}, batch, deterministic=True, method="encode")
    return init_decode_cache(model, params, encoded, batch["encoder_segment_ids"], max_length)


def _step_log_probs(model, params, cache, tokens, num_ids: int):
    """tokens int32 [rows] at the cache index -> (float32 log-probs [rows, vocab] with
    ids >= num_ids at -inf, the advanced cache)."""
    logits, mutated = model.apply(
        {"params": params, "cache": cache},
        None,  # the cache holds everything decoding needs from the encoder
        {"decoder_input_tokens": tokens[:, None]},
        deterministic=True,
        decode=True,
        method="decode",
        mutable=["cache"],
    )
    logits = logits[:, 0]
    # The model's vocabulary may be padded past the tokenizer's: never emit those ids.
    logits = jnp.where(jnp.arange(logits.shape[-1]) < num_ids, logits, -jnp.inf)
    return jax.nn.log_softmax(logits), mutated["cache"]


def _resolve_num_ids(model: EncoderDecoder, num_ids: int | None) -> int:
    num_ids = model.vocab_size if num_ids is None else num_ids
    if not 1 <= num_ids <= model.vocab_size:
        raise UserError(f"num_ids={num_ids} must be in [1, model.vocab_size={model.vocab_size}]")
    return num_ids


@functools.partial(jax.jit, static_argnames=_STATIC)
def greedy_decode(
    model: EncoderDecoder,
    params: Any,
    batch: Mapping[str, jax.Array],
    *,
    max_length: int,
    eos_id: int,
    bos_id: int,
    num_ids: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Argmax decoding -> (tokens int32 [batch, max_length], scores float32 [batch]).

    `batch` holds encoder_input_tokens / encoder_segment_ids / encoder_positions. A score
    is the summed log-probability of the row's tokens up to and including EOS. The loop
    stops once every row has emitted EOS. num_ids: only ids below it are emitted (None:
    the whole model vocabulary).
    """
    _check_settings(max_length=max_length, beam_size=1)
    num_ids = _resolve_num_ids(model, num_ids)
    rows = batch["encoder_input_tokens"].shape[0]

    def running(state):
        step, _, _, _, finished, _ = state
        return (step < max_length) & ~jnp.all(finished)

    def step_fn(state):
        step, cache, last, tokens, finished, scores = state
        log_probs, cache = _step_log_probs(model, params, cache, last, num_ids)
        chosen = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)  # [batch]
        chosen_log_prob = jnp.take_along_axis(log_probs, chosen[:, None], axis=-1)[:, 0]
        scores = scores + jnp.where(finished, 0.0, chosen_log_prob)
        chosen = jnp.where(finished, 0, chosen)
        tokens = tokens.at[:, step].set(chosen)
        return step + 1, cache, chosen, tokens, finished | (chosen == eos_id), scores

    state = (
        jnp.zeros((), jnp.int32),
        _encode_and_cache(model, params, batch, max_length),
        jnp.full((rows,), bos_id, jnp.int32),
        jnp.zeros((rows, max_length), jnp.int32),
        jnp.zeros((rows,), bool),
        jnp.zeros((rows,), jnp.float32),
    )
    _, _, _, tokens, _, scores = jax.lax.while_loop(running, step_fn, state)
    return tokens, scores


class BeamSearchResult(NamedTuple):
    tokens: jax.Array  # int32 [batch, max_length]: the best finished hypothesis per row
    scores: jax.Array  # float32 [batch]: its sum(log p) / length_penalty(length, alpha)
    # All kept finished hypotheses, best first: int32 [batch, beams, max_length] and
    # float32 [batch, beams]; slots never filled score -inf.
    beam_tokens: jax.Array
    beam_scores: jax.Array


class _BeamSettings(NamedTuple):  # static (hashable) beam search settings
    beam_size: int
    max_length: int
    eos_id: int
    bos_id: int
    num_ids: int


class _BeamState(NamedTuple):
    step: jax.Array  # int32 []: the position being generated
    cache: Any  # decoding cache, rows [batch * beams] (beam-minor)
    alive_tokens: jax.Array  # int32 [batch, beams, max_length]; no EOS in them
    alive_log_probs: jax.Array  # float32 [batch, beams], sorted best first
    finished_tokens: jax.Array  # int32 [batch, beams, max_length]
    finished_scores: jax.Array  # float32 [batch, beams], sorted best first; -inf: empty


def _merge_finished(state, candidate_tokens, candidate_scores, beam_size: int):
    """Keeps the `beam_size` best of the finished hypotheses and the new candidates
    (candidates that did not finish score -inf)."""
    scores = jnp.concatenate([state.finished_scores, candidate_scores], axis=1)
    tokens = jnp.concatenate([state.finished_tokens, candidate_tokens], axis=1)
    scores, keep = jax.lax.top_k(scores, beam_size)
    return jnp.take_along_axis(tokens, keep[:, :, None], axis=1), scores


def _beam_step(state: _BeamState, model, params, settings, alpha) -> _BeamState:
    """Extends every alive hypothesis by every id, then keeps the best `beams` alive
    (no EOS) and the best `beams` finished hypotheses.

    Finishing follows fairseq: an EOS extension counts only if it ranks among the top
    `beams` extensions by log-prob, so beam_size = 1 is exactly greedy search. At the
    last position every top-`beams` extension finishes, EOS or not.
    """
    beams, max_length = settings.beam_size, settings.max_length
    rows = state.alive_tokens.shape[0]
    step = state.step
    previous = jax.lax.dynamic_index_in_dim(
        state.alive_tokens, jnp.maximum(step - 1, 0), axis=2, keepdims=False
    )
    last = jnp.where(step == 0, settings.bos_id, previous)  # [batch, beams]
    log_probs, cache = _step_log_probs(
        model, params, state.cache, last.reshape(-1), settings.num_ids
    )
    vocab = log_probs.shape[-1]
    # [batch, beams * vocab] -> the 2 * beams best, which hold >= beams non-EOS ones.
    extended = state.alive_log_probs[:, :, None] + log_probs.reshape(rows, beams, vocab)
    top_log_probs, top_index = jax.lax.top_k(extended.reshape(rows, -1), 2 * beams)
    parent, token = top_index // vocab, top_index % vocab  # [batch, 2 * beams]
    top_tokens = jnp.take_along_axis(state.alive_tokens, parent[:, :, None], axis=1)
    at_step = jnp.arange(max_length) == step
    top_tokens = jnp.where(at_step, token[:, :, None], top_tokens)
    is_eos = token == settings.eos_id

    ranks_finishing = (jnp.arange(2 * beams) < beams)[None]
    finishing = ranks_finishing & (is_eos | (step == max_length - 1))
    finishing &= top_log_probs > -jnp.inf
    lp = length_penalty((step + 1).astype(jnp.float32), alpha)
    candidate_scores = jnp.where(finishing, top_log_probs / lp, -jnp.inf)
    finished_tokens, finished_scores = _merge_finished(state, top_tokens, candidate_scores, beams)

    alive_log_probs, keep = jax.lax.top_k(jnp.where(is_eos, -jnp.inf, top_log_probs), beams)
    alive_tokens = jnp.take_along_axis(top_tokens, keep[:, :, None], axis=1)
    parent_rows = jnp.arange(rows)[:, None] * beams + jnp.take_along_axis(parent, keep, axis=1)
    cache = gather_cache(cache, parent_rows.reshape(-1))
    return _BeamState(
        step + 1, cache, alive_tokens, alive_log_probs, finished_tokens, finished_scores
    )


def _rows_done(state: _BeamState, max_length: int, alpha: jax.Array) -> jax.Array:
    """bool [batch]: no alive hypothesis can beat the worst of a full finished set.

    Log-probs only fall as a hypothesis grows and lp grows with length (alpha >= 0), so
    alive_log_prob / lp(max_length) bounds every score an alive hypothesis can reach.
    """
    best_reachable = state.alive_log_probs[:, 0] / length_penalty(float(max_length), alpha)
    return best_reachable <= state.finished_scores[:, -1]


def beam_search(
    model: EncoderDecoder,
    params: Any,
    batch: Mapping[str, jax.Array],
    *,
    beam_size: int,
    max_length: int,
    eos_id: int,
    bos_id: int,
    length_penalty_alpha: float,
    num_ids: int | None = None,
) -> BeamSearchResult:
    """Beam search with finished-hypothesis tracking -> BeamSearchResult.

    `batch` holds encoder_input_tokens / encoder_segment_ids / encoder_positions. A
    hypothesis finishes at EOS or at max_length tokens and scores sum(log p) /
    length_penalty(length, length_penalty_alpha), length as in the module docstring.
    The loop stops early once no row's alive hypotheses can change its finished set.
    num_ids: only ids below it are emitted (None: the whole model vocabulary).
    """
    _check_settings(max_length=max_length, beam_size=beam_size, alpha=length_penalty_alpha)
    settings = _BeamSettings(
        beam_size, max_length, eos_id, bos_id, _resolve_num_ids(model, num_ids)
    )
    # alpha is traced, not static: one compile serves every length penalty.
    alpha = jnp.asarray(length_penalty_alpha, jnp.float32)
    return _beam_search(model, params, batch, alpha, settings)


@functools.partial(jax.jit, static_argnames=("model", "settings"))
def _beam_search(model, params, batch, alpha, settings: _BeamSettings) -> BeamSearchResult:
    beam_size, max_length = settings.beam_size, settings.max_length
    rows = batch["encoder_input_tokens"].shape[0]
    cache = _encode_and_cache(model, params, batch, max_length)
    empty_tokens = jnp.zeros((rows, beam_size, max_length), jnp.int32)
    # All beams start as the same BOS prefix: only beam 0 is live, or the first step
    # would fill the beam with copies of one extension.
    first_live = jnp.where(jnp.arange(beam_size) == 0, 0.0, -jnp.inf)
    state = _BeamState(
        step=jnp.zeros((), jnp.int32),
        cache=repeat_cache(cache, beam_size),
        alive_tokens=empty_tokens,
        alive_log_probs=jnp.broadcast_to(first_live, (rows, beam_size)),
        finished_tokens=empty_tokens,
        finished_scores=jnp.full((rows, beam_size), -jnp.inf),
    )

    def running(state):
        done = _rows_done(state, max_length, alpha)
        return (state.step < max_length) & ~jnp.all(done)

    state = jax.lax.while_loop(
        running, lambda state: _beam_step(state, model, params, settings, alpha), state
    )
    return BeamSearchResult(
        state.finished_tokens[:, 0],
        state.finished_scores[:, 0],
        state.finished_tokens,
        state.finished_scores,
    )


def encoder_batch(tokenizer, texts: Sequence[str], inputs_length: int) -> dict[str, jax.Array]:
    """Texts -> encoder features [len(texts), inputs_length]: ids + EOS, zero-padded;
    segment id 1 on tokens and 0 on padding; positions 0, 1, ... (0 on padding)."""
    if not texts:
        raise UserError("generate_text got no texts")
    tokens = np.zeros((len(texts), inputs_length), np.int32)
    segment_ids = np.zeros_like(tokens)
    for row, text in enumerate(texts):
        ids = np.append(tokenizer.encode(text), tokenizer.eos_id)
        if len(ids) > inputs_length:
            raise UserError(
                f"input {row} is {len(ids)} tokens with EOS but inputs_length is "
                f"{inputs_length}; raise inputs_length or shorten the input"
            )
        tokens[row, : len(ids)] = ids
        segment_ids[row, : len(ids)] = 1
    positions = np.arange(inputs_length, dtype=np.int32)[None] * segment_ids
    return {
        "encoder_input_tokens": jnp.asarray(tokens),
        "encoder_segment_ids": jnp.asarray(segment_ids),
        "encoder_positions": jnp.asarray(positions),
    }


def generate_text(
    model: EncoderDecoder,
    params: Any,
    tokenizer,
    texts: Sequence[str],
    *,
    inputs_length: int,
    max_length: int,
    beam_size: int = 1,
    length_penalty_alpha: float = 0.6,
) -> list[str]:
    """One decoded output string per input text; beam_size 1 is greedy search (the
    length penalty then plays no part). Output stops before the first EOS."""
    _check_settings(max_length=max_length, beam_size=beam_size, alpha=length_penalty_alpha)
    batch = encoder_batch(tokenizer, texts, inputs_length)
    ids = {"max_length": max_length, "eos_id": tokenizer.eos_id, "bos_id": tokenizer.bos_id}
    ids["num_ids"] = tokenizer.vocab_size
    if beam_size == 1:
        tokens, _ = greedy_decode(model, params, batch, **ids)
    else:
        tokens = beam_search(
            model,
            params,
            batch,
            beam_size=beam_size,
            length_penalty_alpha=float(length_penalty_alpha),
            **ids,
        ).tokens
    texts_out = []
    for row in np.asarray(tokens):
        eos = np.flatnonzero(row == tokenizer.eos_id)
        texts_out.append(tokenizer.decode(row[: eos[0]] if eos.size else row))
    return texts_out


def sample_from_config(run, params) -> tuple[str, str]:
    """(text, how it was decoded) for `config.sample` from a trained encoder-decoder run:
    the prompt (sentinels allowed, e.g. "The <extra_id_0> of the play .") goes through
    the encoder; the decoder's output, up to max_new_tokens, is shown after "->"."""
    cfg = run.config.sample
    output = generate_text(
        run.model,
        params,
        run.tokenizer,
        [cfg.prompt],
        inputs_length=run.config.objective.inputs_length,
        max_length=cfg.max_new_tokens,
        beam_size=cfg.beam_size,
        length_penalty_alpha=cfg.length_penalty_alpha,
    )[0]
    return f"{cfg.prompt} -> {output}", describe(cfg.beam_size, cfg.length_penalty_alpha)


def describe(beam_size: int, length_penalty_alpha: float) -> str:
    """How outputs are searched, in words: 'greedy' or 'beam search, 4 beams, ...'."""
    if beam_size <= 1:
        return "greedy"
    return f"beam search, {beam_size} beams, length penalty {length_penalty_alpha}"
