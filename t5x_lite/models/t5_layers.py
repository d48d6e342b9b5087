"""T5-specific building blocks: RMS LayerNorm, relative position bias, biased attention with
an optional key/value cache, and the ReLU / gated-GELU MLPs.

Conventions follow `layers`: float32 parameters with logical axis names, computation in
`dtype`, einsum letters b batch, l query length, s key length, h heads, d kv, e embed.
T5 has no bias terms anywhere and does not scale q k^T by 1/sqrt(head_dim); the query
projection's init carries that factor instead (as in Mesh TensorFlow and HF).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_lite.models import layers, recompute

MLP_KINDS = ("relu", "gated_gelu")  # T5 1.0 | T5 1.1
CACHE_KINDS = ("none", "self", "cross")  # see T5Attention


def scaled_fan_in_init(num_in_axes: int, scale: float) -> layers.Initializer:
    """`layers.fan_in_init` with the variance multiplied by `scale`."""
    unscaled = layers.fan_in_init(num_in_axes)

    def init(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = layers.PARAM_DTYPE):
        return unscaled(key, shape, dtype) * jnp.sqrt(jnp.asarray(scale, dtype))

    return init


class RMSNorm(nn.Module):
    """T5's LayerNorm: x / rms(x) * scale; no mean subtraction, no bias. float32 inside."""

    epsilon: float
    dtype: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = layers.param(self, "scale", nn.initializers.ones_init(), ("embed",), (x.shape[-1],))
        return recompute.normalize(
            x, scale, None, self.epsilon, center=False, dtype=jnp.dtype(self.dtype)
        )


def relative_position_bucket(
    relative_position: jax.Array, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
    """Relative position (key - query, int) -> bucket id in [0, num_buckets), int32.

    Half the buckets (of the half each sign gets, when bidirectional) are exact distances
    0, 1, ...; the rest cover distances up to max_distance log-spaced; farther distances
    share the last bucket. Causal (not bidirectional): keys after the query (which the
    mask hides anyway) fall in bucket 0 with distance 0.
    """
    buckets = jnp.zeros_like(relative_position, jnp.int32)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).astype(jnp.int32) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = jnp.maximum(-relative_position, 0)
    max_exact = num_buckets // 2
    # max(distance, 1) keeps log() finite; those entries take the exact branch anyway.
    log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact) / math.log(
        max_distance / max_exact
    )
    log_bucket = max_exact + (log_ratio * (num_buckets - max_exact)).astype(jnp.int32)
    log_bucket = jnp.minimum(log_bucket, num_buckets - 1)
    return buckets + jnp.where(distance < max_exact, distance, log_bucket).astype(jnp.int32)


class RelativePositionBias(nn.Module):
    """A learned ('relpos_buckets', 'heads') table -> additive attention-logit bias."""

    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool

    @nn.compact
    def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
        """query_positions int [batch, q_length], key_positions int [batch, k_length]
        (batch may be 1 in either) -> float32 bias [batch, heads, q_length, k_length].

        Per-token positions (not row indices) so that every packed segment sees the
        distances it would see alone.
        """
        table = layers.param(
            self,
            "rel_embedding",
            layers.embedding_init,
            ("relpos_buckets", "heads"),
            (self.num_buckets, self.num_heads),
        )
        # [batch, q_length, k_length]
        relative = key_positions[:, None, :] - query_positions[:, :, None]
        buckets = relative_position_bucket(
            relative,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        bias = jnp.take(table, buckets, axis=0)  # [batch, q_length, k_length, heads]
        return jnp.transpose(bias, (0, 3, 1, 2))


def biased_attention_core(query, key, value, mask, bias, impl: str) -> jax.Array:
    """softmax(q k^T + bias where mask) v, unscaled (T5); layout [batch, length, heads, kv].

    mask bool [batch, 1, q_length, k_length]; bias float32 [batch or 1, heads, q, k].
    """
    if layers.resolve_attention_impl(impl) == "dot_product_attention":
        return jax.nn.dot_product_attention(
            query, key, value, bias=bias.astype(query.dtype), mask=mask, scale=1.0
        )
    return recompute.softmax_attention(query, key, value, mask, bias, 1.0)


class T5Attention(nn.Module):
    """Bias-free multi-head attention taking an additive logit bias.

    `cache_kind` says what incremental decoding keeps in the 'cache' collection:
      "none":  nothing (encoder, training, scoring).
      "self":  decoder self-attention. The first call (cache absent, full-length inputs)
               creates zero buffers [batch, max_length, heads, kv] and attends as usual;
               every later call takes one query token, writes its key/value at
               `cache_index` and attends over the whole buffer (the caller's mask hides
               slots after cache_index).
      "cross": cross-attention. The first call projects `inputs_kv` (the encoder output)
               and stores the keys/values [batch, kv_length, heads, kv]; later calls
               reuse them and never read `inputs_kv` (it may be None).
    """

    num_heads: int
    head_dim: int
    dtype: str
    attention_impl: str  # one of layers.ATTENTION_IMPLS
    cache_kind: str  # one of CACHE_KINDS

    def _project_in(self, inputs: jax.Array, name: str, init: layers.Initializer) -> jax.Array:
        projection = layers.DenseGeneral(
            features=(self.num_heads, self.head_dim),
            contract_axes=1,
            kernel_axes=("embed", "heads", "kv"),
            use_bias=False,
            dtype=self.dtype,
            kernel_init=init,
            name=name,
        )
        # [batch, length, heads, kv]
        return nn.with_logical_constraint(projection(inputs), ("batch", "length", "heads", "kv"))

    def _update_self_cache(self, key, value, cache_index):
        """Writes this step's key/value [batch, 1, heads, kv] into the cache; returns the
        full cached keys and values [batch, max_length, heads, kv]."""
        initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        if not initialized:
            return key, value
        start = (0, cache_index, 0, 0)
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, start)
        cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, start)
        return cached_key.value, cached_value.value

    def _cross_keys_values(self, inputs_kv):
        """Keys and values [batch, kv_length, heads, kv] of the encoder output: projected
        and stored by the cache-creating call, read back by every later one."""
        if self.has_variable("cache", "cached_key"):
            return self.get_variable("cache", "cached_key"), self.get_variable(
                "cache", "cached_value"
            )
        key = self._project_in(inputs_kv, "key", layers.fan_in_init(1))
        value = self._project_in(inputs_kv, "value", layers.fan_in_init(1))
        self.put_variable("cache", "cached_key", key)
        self.put_variable("cache", "cached_value", value)
        return key, value

    @nn.compact
    def __call__(self, inputs_q, inputs_kv, mask, bias, cache_index) -> jax.Array:
        """inputs_q [batch, q_length, embed], inputs_kv [batch, kv_length, embed], mask bool
        [batch, 1, q_length, kv_length], bias [batch or 1, heads, q_length, kv_length],
        cache_index int32 [] (read only by a "self" cache) -> [batch, q_length, embed]."""
        d_model = inputs_q.shape[-1]
        query_init = scaled_fan_in_init(1, 1.0 / self.head_dim)  # replaces 1/sqrt(d) scaling
        query = self._project_in(inputs_q, "query", query_init)
        if self.cache_kind == "cross":
            key, value = self._cross_keys_values(inputs_kv)
        else:
            key = self._project_in(inputs_kv, "key", layers.fan_in_init(1))
            value = self._project_in(inputs_kv, "value", layers.fan_in_init(1))
        if self.cache_kind == "self":
            key, value = self._update_self_cache(key, value, cache_index)
        attended = biased_attention_core(query, key, value, mask, bias, self.attention_impl)
        attended = nn.with_logical_constraint(attended, ("batch", "length", "heads", "kv"))
        out = layers.DenseGeneral(
            features=(d_model,),
            contract_axes=2,
            kernel_axes=("heads", "kv", "embed"),
            use_bias=False,
            dtype=self.dtype,
            kernel_init=layers.fan_in_init(2),
            name="out",
        )(attended)
        # [batch, q_length, embed]
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))


class T5Mlp(nn.Module):
    """Bias-free MLP. "relu": wo(relu(wi x)); "gated_gelu": wo(gelu_tanh(wi_0 x) * wi_1 x).

    Dropout on the hidden activations, as in T5 (and HF's DenseReluDense).
    """

    d_ff: int
    mlp: str  # one of MLP_KINDS
    dropout_rate: float
    dtype: str
    deterministic: bool

    def _dense(
        self, features: int, axes: layers.AxisNames, name: str, activation=None
    ) -> layers.DenseGeneral:
        return layers.DenseGeneral(
            features=(features,),
            contract_axes=1,
            kernel_axes=axes,
            use_bias=False,
            dtype=self.dtype,
            kernel_init=layers.fan_in_init(1),
            activation=activation,
            name=name,
        )

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [batch, length, embed] -> [batch, length, embed]."""
        if self.mlp == "relu":
            activation = jax.nn.relu
            pre_activations = (self._dense(self.d_ff, ("embed", "mlp"), "wi")(x),)
        else:
            activation = gated_gelu
            pre_activations = tuple(
                self._dense(self.d_ff, ("embed", "mlp"), name)(x) for name in ("wi_0", "wi_1")
            )
        # [batch, length, mlp] each
        pre_activations = tuple(
            nn.with_logical_constraint(h, ("batch", "length", "mlp")) for h in pre_activations
        )
        wo_axes = ("mlp", "embed")
        if self.deterministic or not self.dropout_rate:
            # `wo` applies the activation and recomputes it in the backward pass.
            out = self._dense(x.shape[-1], wo_axes, "wo", activation)(*pre_activations)
        else:
            hidden = layers.Dropout(self.dropout_rate)(
                activation(*pre_activations), deterministic=False
            )
            out = self._dense(x.shape[-1], wo_axes, "wo")(hidden)
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))


def gated_gelu(gate: jax.Array, linear: jax.Array) -> jax.Array:
    """T5 1.1's gated GELU: gelu_tanh(gate) * linear."""
    return layers.ACTIVATIONS["gelu_tanh"](gate) * linear
