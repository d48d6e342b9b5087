"""Attention and activation functions whose backward pass recomputes instead of keeping.

A training step's temporaries are mostly what the forward pass keeps for the backward
pass. XLA:CPU maps them afresh every step, so the kernel zeroes every page of them, every
step: at `gpt_small`'s benchmark shapes (batch 8, sequence 512) that was 4.3 GB, about a
third of the step's time. Autodiff keeps, per layer:

- of softmax attention, the masked scores, the probabilities and a per-head copy of the
  mask, three arrays of [batch, heads, q_length, kv_length] (144 MB a layer there);
- of a GELU between two matmuls, five arrays of [batch, length, mlp];
- of a LayerNorm, three arrays of [batch, length, embed] besides its input.

The custom gradients here keep only the inputs (and the softmax's row statistics) and
recompute the rest in the backward pass: for attention the one extra q k^T matmul that
flash attention also pays, for the activation and the norms elementwise work.

A recomputation must neither be merged with the forward pass's identical ops (CSE) nor
be scheduled before the backward pass reaches its layer: either keeps the array alive
from the forward pass after all. XLA:CPU drops optimization barriers before it
schedules, so the recomputation's inputs also take a data dependence on the incoming
gradient (`_tied`), which changes no value.

Einsum letters are those of `layers`: b batch, l query length, s key length, h heads,
d head_dim.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from t5x_lite.models import matmul

_MASKED = jnp.finfo(jnp.float32).min


def _tied(d_out: jax.Array, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """`arrays` unchanged in value, but computed only once `d_out` is: each plus 0 times
    one element of d_out (XLA does not fold a float x * 0, which may be NaN). A
    non-finite gradient stays non-finite either way."""
    arrays, d_out = jax.lax.optimization_barrier((arrays, d_out))
    zero = 0.0 * d_out.reshape(-1)[0].astype(jnp.float32)
    return tuple(x + zero.astype(x.dtype) for x in arrays)


# softmax(q k^T * scale + bias where mask) v


def _masked_scores(query, key, mask, bias, scale):
    """float32 [b, h, l, s]: q k^T * scale + bias, or a large negative number where masked."""
    scores = jnp.einsum("blhd,bshd->bhls", query, key, preferred_element_type=jnp.float32)
    if scale != 1.0:
        scores = scores * jnp.asarray(scale, jnp.float32)
    if bias is not None:
        scores = scores + bias
    return jnp.where(mask, scores, _MASKED)


def _attention_forward(query, key, value, mask, bias, scale):
    # The ops of jax.nn.softmax, so the outputs equal the autodiffed form's exactly.
    scores = _masked_scores(query, key, mask, bias, scale)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    unnormalized = jnp.exp(scores - row_max)
    row_sum = jnp.sum(unnormalized, axis=-1, keepdims=True)
    probs = unnormalized / row_sum
    # A float32 output: XLA:CPU runs this product in bf16 only so (`matmul`), ~4x faster.
    out = jnp.einsum(
        "bhls,bshd->blhd", probs.astype(value.dtype), value, preferred_element_type=jnp.float32
    ).astype(value.dtype)
    return out, (query, key, value, mask, bias, row_max, jnp.log(row_sum))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def softmax_attention(query, key, value, mask, bias, scale: float):
    """query [b, l, h, d], key and value [b, s, h, d], mask bool broadcastable to
    [b, h, l, s] (True = attend), bias float32 broadcastable to [b, h, l, s] or None,
    scale a Python float -> [b, l, h, d] in value's dtype.

    A row with no key to attend gets the mean of the values and no gradient through
    its scores, as autodiff of the same ops gives.
    """
    return _attention_forward(query, key, value, mask, bias, scale)[0]


def _sum_to_shape(x, shape):
    """x summed over the axes that `shape` broadcasts (size-1 or missing leading axes)."""
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, size in enumerate(shape) if size == 1 and x.shape[lead + i] != 1
    )
    return jnp.sum(x, axis=axes).reshape(shape) if axes else x


def _attention_backward(scale, residuals, d_out):
    query, key, value, mask, bias, row_max, log_sum = residuals
    query, row_max, log_sum = _tied(d_out, query, row_max, log_sum)
    scores = _masked_scores(query, key, mask, bias, scale)
    # The forward pass's exp(s - max) / sum up to rounding, without its division: XLA
    # would share the [b, h, l, s] broadcast of 1 / sum that it materializes there.
    probs = jnp.exp((scores - row_max) - log_sum)
    d_value = jnp.einsum(
        "bhls,blhd->bshd", probs.astype(value.dtype), d_out, preferred_element_type=jnp.float32
    ).astype(value.dtype)
    d_probs = jnp.einsum("blhd,bshd->bhls", d_out, value, preferred_element_type=jnp.float32)
    d_scores = probs * (d_probs - jnp.sum(probs * d_probs, axis=-1, keepdims=True))
    d_scores = jnp.where(mask, d_scores, 0.0)  # masked scores were replaced, not used
    d_bias = None if bias is None else _sum_to_shape(d_scores, bias.shape).astype(bias.dtype)
    if scale != 1.0:
        d_scores = d_scores * jnp.asarray(scale, jnp.float32)
    d_scores = d_scores.astype(query.dtype)
    d_query = jnp.einsum(
        "bhls,bshd->blhd", d_scores, key, preferred_element_type=jnp.float32
    ).astype(query.dtype)
    d_key = jnp.einsum(
        "bhls,blhd->bshd", d_scores, query, preferred_element_type=jnp.float32
    ).astype(key.dtype)
    return d_query, d_key, d_value, None, d_bias


softmax_attention.defvjp(
    lambda q, k, v, mask, bias, scale: _attention_forward(q, k, v, mask, bias, scale),
    _attention_backward,
)


# activation(*inputs) @ kernel


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def activated_matmul(
    activation: Callable[..., jax.Array], inputs: tuple[jax.Array, ...], kernel: jax.Array
) -> jax.Array:
    """activation(*inputs) [rows, k] @ kernel [k, n] -> [rows, n] in the inputs' dtype,
    the kernel (a float32 parameter) cast to that dtype; the backward pass keeps
    `inputs` and `kernel` and recomputes the activation. Its products are
    `matmul.product`'s, so in bf16 on CPU they take the bf16 path and the kernel's
    gradient comes out in float32."""
    return matmul.product(activation(*inputs), kernel.astype(inputs[0].dtype))


def _activated_matmul_forward(activation, inputs, kernel):
    return activated_matmul(activation, inputs, kernel), (inputs, kernel)


def _activated_matmul_backward(activation, residuals, d_out):
    inputs, kernel = residuals
    inputs = _tied(d_out, *inputs)
    hidden, activation_vjp = jax.vjp(activation, *inputs)
    d_out = d_out.astype(hidden.dtype)
    d_kernel = matmul.product(hidden, d_out, transpose_a=True, out_dtype=kernel.dtype)
    d_hidden = matmul.product(d_out, kernel.astype(hidden.dtype), transpose_b=True)
    return tuple(activation_vjp(d_hidden)), d_kernel


activated_matmul.defvjp(_activated_matmul_forward, _activated_matmul_backward)


# LayerNorm and RMSNorm over the last axis, in float32


def _normalize_forward(x, scale, bias, epsilon, center, dtype):
    # The ops of layers.LayerNorm and t5_layers.RMSNorm before they used this.
    x32 = x.astype(jnp.float32)
    if center:
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        inv = jax.lax.rsqrt(jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True) + epsilon)
        normed = (x32 - mean) * inv
    else:
        mean = None
        inv = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + epsilon)
        normed = x32 * inv
    y = normed * scale if bias is None else normed * scale + bias
    return y.astype(dtype), (x, scale, bias, mean, inv)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def normalize(x, scale, bias, epsilon: float, center: bool, dtype) -> jax.Array:
    """LayerNorm (center=True: (x - mean) / sqrt(var + eps) * scale + bias) or RMSNorm
    (center=False, bias None: x / sqrt(mean(x^2) + eps) * scale) over the last axis,
    computed in float32, returned in `dtype`. The backward pass keeps x and the per-row
    statistics and recomputes the normalized values."""
    return _normalize_forward(x, scale, bias, epsilon, center, dtype)[0]


def _normalize_backward(epsilon, center, dtype, residuals, d_y):
    x, scale, bias, mean, inv = residuals
    # The statistics and the scale too: XLA materializes their [..., embed] broadcasts
    # in the forward pass and would keep those for this one.
    x, inv, scale = _tied(d_y, x, inv, scale)
    if center:
        (mean,) = _tied(d_y, mean)
    x32 = x.astype(jnp.float32)
    normed = ((x32 - mean) if center else x32) * inv
    d_y = d_y.astype(jnp.float32)
    lead = tuple(range(x.ndim - 1))
    d_scale = jnp.sum(d_y * normed, axis=lead).astype(scale.dtype)
    d_bias = None if bias is None else jnp.sum(d_y, axis=lead).astype(bias.dtype)
    d_normed = d_y * scale
    d_x = d_normed - normed * jnp.mean(d_normed * normed, axis=-1, keepdims=True)
    if center:
        d_x = d_x - jnp.mean(d_normed, axis=-1, keepdims=True)
    return (inv * d_x).astype(x.dtype), d_scale, d_bias


normalize.defvjp(
    lambda x, scale, bias, epsilon, center, dtype: _normalize_forward(
        x, scale, bias, epsilon, center, dtype
    ),
    _normalize_backward,
)
