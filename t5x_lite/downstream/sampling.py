"""Sampling text from a decoder-only model: greedy or temperature.

The whole generation is one jitted `lax.fori_loop` over a fixed [1, max_len] buffer, so
it compiles once. Each step runs the full forward pass; the causal mask makes the
not-yet-written tail of the buffer invisible to earlier positions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite.errors import UserError


@functools.partial(jax.jit, static_argnames=("model", "num_new", "temperature", "num_ids"))
def _generate(
    model, params, tokens, prompt_len, rng, *, num_new: int, temperature: float, num_ids: int
):
    length = tokens.shape[1]
    positions = jnp.arange(length, dtype=jnp.int32)[None]
    segment_ids = jnp.ones_like(tokens)

    def step(i, carry):
        tokens, rng = carry
        batch = {
            "decoder_input_tokens": tokens,
            "decoder_segment_ids": segment_ids,
            "decoder_positions": positions,
        }
        logits = model.apply({"params": params}, batch, deterministic=True)["logits"]
        last = jax.lax.dynamic_index_in_dim(logits[0], prompt_len + i - 1, keepdims=False)
        # The model's vocabulary may be padded past the tokenizer's: never emit those ids.
        last = jnp.where(jnp.arange(last.shape[-1]) < num_ids, last, -jnp.inf)
        rng, sample_rng = jax.random.split(rng)
        if temperature == 0.0:
            next_token = jnp.argmax(last)
        else:
            next_token = jax.random.categorical(sample_rng, last / temperature)
        tokens = tokens.at[0, prompt_len + i].set(next_token.astype(tokens.dtype))
        return tokens, rng

    tokens, _ = jax.lax.fori_loop(0, num_new, step, (tokens, rng))
    return tokens


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
) -> str:
    """Continue `prompt` by up to `max_new_tokens` tokens; stops at EOS."""
    prompt_ids = np.concatenate([[tokenizer.bos_id], tokenizer.encode(prompt)]).astype(np.int32)
    if len(prompt_ids) >= max_len:
        raise UserError(
            f"the prompt is {len(prompt_ids)} tokens but the model's context is {max_len}; "
            "shorten the prompt"
        )
    num_new = min(max_new_tokens, max_len - len(prompt_ids))
    tokens = np.zeros((1, max_len), np.int32)
    tokens[0, : len(prompt_ids)] = prompt_ids
    out = _generate(
        model,
        params,
        jnp.asarray(tokens),
        len(prompt_ids),
        jax.random.key(seed),
        num_new=num_new,
        temperature=float(temperature),
        num_ids=tokenizer.vocab_size,
    )
    new = np.asarray(out[0, len(prompt_ids) : len(prompt_ids) + num_new])
    eos = np.flatnonzero(new == tokenizer.eos_id)
    if eos.size:
        new = new[: eos[0]]
    # Decode prompt and continuation together so word boundaries come out right.
    return tokenizer.decode(prompt_ids[1:].tolist() + new.tolist())


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
    )
    return text, "greedy" if cfg.temperature == 0 else f"temperature {cfg.temperature}"
