"""Sampling text from a decoder-only model through its key/value cache.

A batch of prompts is right-padded to the longest; one forward pass prefills the cache
with every prompt (each row's cache index then sits just past its own prompt), and a
jitted `lax.while_loop` decodes one token per row per step until every row has emitted
EOS or the budget is spent, so a generation compiles once.

Each step picks from the last logits: greedy (temperature 0), or a draw from
softmax(logits / temperature) truncated by `filter_logits` (top-k, then nucleus top-p).
Step i draws with `jax.random.fold_in(key(seed), i)`, one categorical over the batch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite.errors import UserError
from t5x_lite.models import decoder_only


def filter_logits(logits: jax.Array, *, top_k: int, top_p: float) -> jax.Array:
    """logits float [..., vocab] -> the same logits with every id outside the kept set
    at -inf.

    top_k > 0 keeps the k largest logits (0 = off). top_p < 1 then keeps the smallest
    set of most probable ids (under the softmax of what top-k kept) whose probabilities
    sum to >= top_p: an id is kept while the mass of the ids ranked above it is < top_p,
    so the most probable id always stays (1.0 = off). E.g. probabilities [0.5, 0.3, 0.15,
    0.05]: top_p=0.8 keeps 2 ids, top_p=0.81 keeps 3, top_k=2 keeps 2.

    Ties are ranked by a stable sort: the lower id ranks first, so exactly min(k, vocab)
    ids survive top_k, top_k=1 keeps `jnp.argmax`'s id, and at the top_p boundary the
    lower of equally probable ids is kept. With both filters off the logits are returned
    untouched.
    """
    if top_k == 0 and top_p >= 1.0:
        return logits
    order = jnp.argsort(-logits, axis=-1, stable=True)  # ids, most probable first
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    rank = jnp.arange(logits.shape[-1])
    keep_sorted = jnp.ones(sorted_logits.shape, bool)
    if top_k > 0:
        keep_sorted = jnp.broadcast_to(rank < top_k, sorted_logits.shape)
        sorted_logits = jnp.where(keep_sorted, sorted_logits, -jnp.inf)
    if top_p < 1.0:
        probs = jax.nn.softmax(sorted_logits.astype(jnp.float32), axis=-1)
        # Exclusive cumulative sum: the mass of the ids ranked above each id.
        cumulative = jnp.cumsum(probs, axis=-1)
        zero = jnp.zeros_like(cumulative[..., :1])
        mass_above = jnp.concatenate([zero, cumulative[..., :-1]], axis=-1)
        keep_sorted = keep_sorted & (mass_above < top_p)
    # Back from rank order to id order.
    keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)
    return jnp.where(keep, logits, -jnp.inf)


def choose_tokens(
    logits: jax.Array, rng: jax.Array, *, temperature: float, top_k: int, top_p: float
) -> jax.Array:
    """logits float [batch, vocab] -> int32 [batch]: argmax when temperature is 0, else a
    draw from softmax(filter_logits(logits / temperature)), one per row."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)


@functools.partial(
    jax.jit,
    static_argnames=("model", "num_new", "temperature", "top_k", "top_p", "num_ids", "eos_id"),
)
def _generate_ids(
    model,
    params,
    prompt_tokens,
    prompt_lengths,
    rng,
    *,
    num_new: int,
    temperature: float,
    top_k: int,
    top_p: float,
    num_ids: int,
    eos_id: int,
):
    """prompt_tokens int32 [batch, prompt_length] (right-padded), prompt_lengths int32
    [batch] -> new tokens int32 [batch, num_new]; a row is all EOS after its first EOS."""
    batch_size, prompt_length = prompt_tokens.shape
    cache = decoder_only.init_decode_cache(model, params, batch_size, prompt_length + num_new)

    def run(cache, tokens, segment_ids):
        """tokens [batch, length] -> (logits [batch, length, vocab], cache)."""
        batch = {"decoder_input_tokens": tokens, "decoder_segment_ids": segment_ids}
        outputs, mutated = model.apply(
            {"params": params, "cache": cache},
            batch,
            deterministic=True,
            decode=True,
            mutable=["cache"],
        )
        return outputs["logits"], mutated["cache"]

    def choose(logits, step):
        """logits [batch, vocab] -> int32 [batch]."""
        # The model's vocabulary may be padded past the tokenizer's: never emit those ids.
        logits = jnp.where(jnp.arange(logits.shape[-1]) < num_ids, logits, -jnp.inf)
        step_rng = jax.random.fold_in(rng, step)
        return choose_tokens(logits, step_rng, temperature=temperature, top_k=top_k, top_p=top_p)

    # Prefill: the whole prompt in one call; segment 0 marks each row's right padding.
    positions = jnp.arange(prompt_length, dtype=jnp.int32)[None]
    segment_ids = (positions < prompt_lengths[:, None]).astype(jnp.int32)
    logits, cache = run(cache, prompt_tokens, segment_ids)
    # [batch, vocab]: the logits after each row's last prompt token.
    last = jnp.take_along_axis(logits, (prompt_lengths - 1)[:, None, None], axis=1)[:, 0]
    first = choose(last, 0)
    new = jnp.full((batch_size, num_new), eos_id, jnp.int32).at[:, 0].set(first)
    one_token = jnp.ones((batch_size, 1), jnp.int32)

    def unfinished(state):
        step, _, _, done = state
        return (step < num_new) & ~jnp.all(done)

    def decode_step(state):
        step, new, cache, done = state
        previous = jax.lax.dynamic_slice_in_dim(new, step - 1, 1, axis=1)  # [batch, 1]
        logits, cache = run(cache, previous, one_token)
        token = jnp.where(done, eos_id, choose(logits[:, 0], step))
        new = jax.lax.dynamic_update_slice_in_dim(new, token[:, None], step, axis=1)
        return step + 1, new, cache, done | (token == eos_id)

    state = (jnp.ones((), jnp.int32), new, cache, first == eos_id)
    _, new, _, _ = jax.lax.while_loop(unfinished, decode_step, state)
    return new


def check_sampling_options(*, temperature: float, top_k: int, top_p: float) -> None:
    """One-line UserErrors for values no sampler accepts."""
    if temperature < 0:
        raise UserError(f"sampling temperature={temperature} must be >= 0 (0 = greedy)")
    if top_k < 0:
        raise UserError(f"sampling top_k={top_k} must be >= 0 (0 = off)")
    if not 0 < top_p <= 1:
        raise UserError(f"sampling top_p={top_p} must be in (0, 1] (1.0 = off)")


def generate_batch(
    model,
    params,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_len: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    top_k: int = 0,
    top_p: float = 1.0,
) -> list[str]:
    """Continue each prompt (BOS + its tokens) by up to `max_new_tokens` tokens, stopping
    a row at its EOS; returns prompt + continuation per prompt. Every row gets the same
    budget, min(max_new_tokens, max_len - longest prompt)."""
    check_sampling_options(temperature=temperature, top_k=top_k, top_p=top_p)
    prompt_ids = [
        np.concatenate([[tokenizer.bos_id], tokenizer.encode(prompt)]).astype(np.int32)
        for prompt in prompts
    ]
    longest = max((len(ids) for ids in prompt_ids), default=0)
    if longest >= max_len:
        raise UserError(
            f"the prompt is {longest} tokens but the model's context is {max_len}; "
            "shorten the prompt"
        )
    num_new = min(max_new_tokens, max_len - longest)
    if not prompt_ids or num_new <= 0:
        return [tokenizer.decode(ids[1:].tolist()) for ids in prompt_ids]
    tokens = np.zeros((len(prompt_ids), longest), np.int32)  # [batch, prompt_length]
    for row, ids in enumerate(prompt_ids):
        tokens[row, : len(ids)] = ids
    new = _generate_ids(
        model,
        params,
        jnp.asarray(tokens),
        jnp.asarray([len(ids) for ids in prompt_ids], jnp.int32),
        jax.random.key(seed),
        num_new=num_new,
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
        num_ids=tokenizer.vocab_size,
        eos_id=tokenizer.eos_id,
    )
    texts = []
    for ids, row in zip(prompt_ids, np.asarray(new)):
        eos = np.flatnonzero(row == tokenizer.eos_id)
        if eos.size:
            row = row[: eos[0]]
        # Decode prompt and continuation together so word boundaries come out right.
        texts.append(tokenizer.decode(ids[1:].tolist() + row.tolist()))
    return texts


def generate(
    model,
    params,
    tokenizer,
    prompt: str,
    *,
    max_len: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    top_k: int = 0,
    top_p: float = 1.0,
) -> str:
    """Continue one `prompt`; see `generate_batch`."""
    (text,) = generate_batch(
        model,
        params,
        tokenizer,
        [prompt],
        max_len=max_len,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        top_k=top_k,
        top_p=top_p,
    )
    return text


def describe(*, temperature: float, top_k: int, top_p: float) -> str:
    """How tokens are picked, in words: 'greedy' or 'temperature 0.8, top-k 40, top-p off'."""
    if temperature == 0:
        return "greedy"
    top_k_words = f"top-k {top_k}" if top_k > 0 else "top-k off"
    top_p_words = f"top-p {top_p}" if top_p < 1 else "top-p off"
    return f"temperature {temperature}, {top_k_words}, {top_p_words}"


def sample_from_config(run, params) -> tuple[str, str]:
    """(text, how it was sampled) for `config.sample` from a trained decoder run."""
    cfg = run.config.sample
    text = generate(
        run.model,
        params,
        run.tokenizer,
        cfg.prompt,
        max_len=run.config.model.max_len,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        seed=cfg.seed,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
    )
    how = describe(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
    return text, how
