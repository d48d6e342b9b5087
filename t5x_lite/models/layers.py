"""Transformer building blocks shared by the decoder, encoder and encoder-decoder models.

Every parameter is created boxed with logical axis names (`nn.with_logical_partitioning`)
from the one vocabulary `batch, length, embed, heads, kv, mlp, vocab, layers`; the
logical->mesh rules live in the config. Activations whose layout matters are pinned with
`nn.with_logical_constraint`, which is a no-op when no mesh and rules are set.

Einsum letters, fixed across the package:
  b batch, l length (query), s length (key/value), e embed, h heads, d kv (head_dim),
  m mlp, v vocab.

`dtype` fields are the computation dtype ("float32" or "bfloat16", anything `jnp.dtype`
accepts); parameters are always stored in float32 and cast at use.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import meta
from jax import lax

from t5x_lite.models import matmul, recompute

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]
AxisNames = tuple[str | None, ...]

PARAM_DTYPE = jnp.float32


def param(
    module: nn.Module, name: str, init: Initializer, axes: AxisNames, shape: Sequence[int]
) -> jax.Array:
    """`module.param(name, nn.with_logical_partitioning(init, axes), shape, PARAM_DTYPE)`:
    a float32 parameter created boxed with its logical axis names.

    When the parameter exists (every apply), Flax's `param` checks its shape by tracing
    the initializer under `jax.eval_shape`, 8-18% of the time to trace a train step
    (`t5_tiny_sst2`, two runs: 0.45-0.48 s against 0.50-0.52, and, with Flax's check
    patched out, 0.63-0.67 against 0.74-0.77 s per trace), paid again for every
    batch shape a fine-tuning run compiles. Here the stored shape is compared with
    `shape` directly, with Flax's error.
    """
    shape = tuple(shape)
    if not module.has_variable("params", name):
        return module.param(name, nn.with_logical_partitioning(init, axes), shape, PARAM_DTYPE)
    value = meta.unbox(module.get_variable("params", name))
    if tuple(value.shape) != shape:
        raise flax.errors.ScopeParamShapeError(name, module.scope.path_text, value.shape, shape)
    return value


# GPT-2/BERT-style embedding init. With the tied head the initial logits then have std
# 0.02 * sqrt(d_model), small enough that the initial loss starts near ln(vocab_size).
embedding_init = nn.initializers.normal(stddev=0.02)


def fan_in_init(num_in_axes: int) -> Initializer:
    """Truncated normal with variance 1/fan_in, where fan_in is the product of the first
    `num_in_axes` kernel dims (the contracted ones), whatever the number of output dims.

    `variance_scaling` alone would fold any unlisted output dim into the fan-in, so the
    in/out axes are spelled out from the kernel's actual rank.
    """

    def init(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = PARAM_DTYPE) -> jax.Array:
        in_axis = tuple(range(num_in_axes))
        out_axis = tuple(range(num_in_axes, len(shape)))
        scaled = nn.initializers.variance_scaling(
            1.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis
        )
        return scaled(key, shape, dtype)

    return init


# ---------------------------------------------------------------------------- masks


def causal_mask(length: int) -> jax.Array:
    """[1, 1, length, length] bool: query at row index l sees keys at row index s <= l."""
    row_index = jnp.arange(length)
    return (row_index[:, None] >= row_index[None, :])[None, None]


def segment_mask(query_segment_ids: jax.Array, key_segment_ids: jax.Array) -> jax.Array:
    """[batch, 1, q_length, kv_length] bool: query and key belong to the same packed segment.

    Padding has segment id 0, so padding queries attend to padding keys; this keeps every
    query row non-empty whenever the key row contains any padding (or, combined with the
    causal mask, always), so the softmax never sees an all-masked row.
    """
    # [batch, q_length, 1] == [batch, 1, kv_length] -> [batch, q_length, kv_length]
    same = query_segment_ids[:, :, None] == key_segment_ids[:, None, :]
    return same[:, None]


def causal_segment_mask(segment_ids: jax.Array) -> jax.Array:
    """Decoder self-attention mask [batch, 1, length, length] for packed rows.

    Causal within the row AND same segment. Every query sees at least itself (its own
    segment id equals itself, padding included), so no row is fully masked.
    """
    return causal_mask(segment_ids.shape[1]) & segment_mask(segment_ids, segment_ids)


def causal_prefix_mask(
    query_index: jax.Array, key_index: jax.Array, query_prefix: jax.Array, key_prefix: jax.Array
) -> jax.Array:
    """[batch, 1, q_length, kv_length] bool: key index <= query index, OR query and key both
    in the prefix (prefix LM: bidirectional attention over the prefix).

    query_index int [batch or 1, q_length] and key_index int [batch or 1, kv_length] are
    row (or cache slot) indices; query_prefix [batch, q_length] and key_prefix [batch,
    kv_length] are nonzero on prefix tokens. Segments are not checked here.
    """
    # [batch, q_length, kv_length]
    causal = key_index[:, None, :] <= query_index[:, :, None]
    both_prefix = (query_prefix[:, :, None] != 0) & (key_prefix[:, None, :] != 0)
    return (causal | both_prefix)[:, None]


def prefix_lm_segment_mask(segment_ids: jax.Array, prefix_mask: jax.Array) -> jax.Array:
    """Prefix-LM self-attention mask [batch, 1, length, length] for packed rows.

    segment_ids int [batch, length] (0 = padding); prefix_mask int [batch, length], 1 on
    tokens of a prefix. allowed(q, k) = same segment AND (k <= q OR (prefix[q] AND
    prefix[k])). With an all-zero prefix_mask this equals `causal_segment_mask`; every
    query still sees itself, so no row is fully masked.
    """
    row_index = jnp.arange(segment_ids.shape[1])[None]  # [1, length]
    causal_or_prefix = causal_prefix_mask(row_index, row_index, prefix_mask, prefix_mask)
    return causal_or_prefix & segment_mask(segment_ids, segment_ids)


def update_rows(buffer: jax.Array, chunk: jax.Array, index: jax.Array) -> jax.Array:
    """Writes chunk[b] into buffer[b, index[b] : index[b] + length] for every row b.

    buffer [batch, max_length, ...], chunk [batch, length, ...], index int32 [batch] ->
    the updated buffer. The caller keeps index + length <= max_length (a write past the
    end would be clamped onto earlier slots, as `lax.dynamic_update_slice` does).
    """

    def write(row: jax.Array, row_chunk: jax.Array, start: jax.Array) -> jax.Array:
        return jax.lax.dynamic_update_slice_in_dim(row, row_chunk.astype(row.dtype), start, 0)

    return jax.vmap(write)(buffer, chunk, index)


# ---------------------------------------------------------------------------- layers


class Embed(nn.Module):
    """A lookup table [num_embeddings, features] with `attend` for a tied output head."""

    num_embeddings: int
    features: int
    axis_names: AxisNames  # logical names of the table's two dims
    dtype: str

    def setup(self) -> None:
        self.embedding = param(
            self, "embedding", embedding_init, self.axis_names, (self.num_embeddings, self.features)
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        """ids int32 [batch, length] -> [batch, length, features] in `dtype`."""
        # ids >= num_embeddings give NaN rows (jnp.take's "fill" mode) instead of being
        # clamped, so a position beyond max_len shows up as a NaN loss, not a silent bug.
        return jnp.take(self.embedding, ids, axis=0).astype(jnp.dtype(self.dtype))

    def attend(self, query: jax.Array) -> jax.Array:
        """query [batch, length, embed] -> float32 logits [batch, length, vocab].

        Accumulating in float32 keeps bf16 runs from rounding the logits to bf16.
        """
        # 2-D matmul for the same reason as in DenseGeneral: a faster backward on CPU.
        rows = query.reshape(-1, query.shape[-1]).astype(jnp.dtype(self.dtype))
        logits = matmul.matmul(rows, self.embedding, jnp.float32, kernel_transposed=True)
        return logits.reshape(*query.shape[:-1], self.num_embeddings)


class DenseGeneral(nn.Module):
    """Contracts the trailing `contract_axes` input dims with a kernel [*in_dims, *features].

    E.g. embed -> (heads, kv) with contract_axes=1, or (heads, kv) -> embed with
    contract_axes=2. `kernel_axes` names every kernel dim, input dims first; the bias, if
    any, takes the names of the output dims.

    With `activation`, the layer computes activation(inputs, *activation_inputs) @ kernel
    and keeps only its inputs for the backward pass, which recomputes the activation
    (cheap elementwise work) instead of keeping the activated array and the
    intermediates of its derivative: autodiff kept five arrays of [batch, length, mlp]
    per GELU MLP, this keeps one.
    """

    features: tuple[int, ...]
    contract_axes: int
    kernel_axes: AxisNames
    use_bias: bool
    dtype: str
    kernel_init: Initializer
    activation: Callable[..., jax.Array] | None = None

    @nn.compact
    def __call__(self, inputs: jax.Array, *activation_inputs: jax.Array) -> jax.Array:
        in_dims = inputs.shape[inputs.ndim - self.contract_axes :]
        if len(self.kernel_axes) != len(in_dims) + len(self.features):
            raise ValueError(
                f"{self.name}: kernel_axes {self.kernel_axes} do not name a kernel of "
                f"shape {in_dims + tuple(self.features)}"
            )
        dtype = jnp.dtype(self.dtype)
        kernel = param(
            self, "kernel", self.kernel_init, self.kernel_axes, in_dims + tuple(self.features)
        )
        # One 2-D matmul [rows, in] @ [in, out]: XLA:CPU runs the transposed products of
        # the backward pass about 1.7x faster than for the equivalent rank-3 dot_general.
        lead = inputs.shape[: inputs.ndim - self.contract_axes]
        flat_in, flat_out = math.prod(in_dims), math.prod(self.features)

        rows = [x.reshape(-1, flat_in).astype(dtype) for x in (inputs, *activation_inputs)]
        kernel = kernel.reshape(flat_in, flat_out)  # float32: each product casts it
        if self.activation is None:
            outputs = matmul.matmul(rows[0], kernel)
        else:
            outputs = recompute.activated_matmul(self.activation, tuple(rows), kernel)
        outputs = outputs.reshape(*lead, *self.features)
        if self.use_bias:
            bias = param(
                self,
                "bias",
                nn.initializers.zeros_init(),
                self.kernel_axes[self.contract_axes :],
                self.features,
            )
            outputs = outputs + bias.astype(dtype)
        return outputs


def _mix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finalizer: a bijection of uint32 whose every output bit
    depends on every input bit. Written in `lax` ops, which trace faster than jnp's
    operators (no dtype promotion to resolve)."""
    h = lax.bitwise_xor(h, lax.shift_right_logical(h, jnp.uint32(16)))
    h = lax.mul(h, jnp.uint32(0x85EBCA6B))
    h = lax.bitwise_xor(h, lax.shift_right_logical(h, jnp.uint32(13)))
    h = lax.mul(h, jnp.uint32(0xC2B2AE35))
    return lax.bitwise_xor(h, lax.shift_right_logical(h, jnp.uint32(16)))


def dropout_keep_mask(rng: jax.Array, shape: Sequence[int], keep: float) -> jax.Array:
    """bool `shape`: each element True with probability round(keep * 2**32) / 2**32.

    The 32 bits per element come from a counter hash, not from `jax.random`: two seeds
    are drawn from `rng` (one threefry call of two words), and element i gets
    mix(mix(i * 0x9E3779B9 + seed0) ^ seed1), `mix` being MurmurHash3's finalizer. For
    fixed seeds that is a bijection of the index, so a call's bits are distinct and,
    over the key, uniform; calls differ by their keys (flax draws one per call, and per
    layer under `nn.scan`). JAX's threefry runs 20 rounds per 32 bits, as loops on CPU:
    `t5_tiny_sst2`'s step took 94-97 ms with flax's threefry masks, 72-75 ms with these.
    The index is uint32: an array of 2**32 elements or more is refused.

    The work is one jitted function per shape and rate (`_hashed_keep_mask`), so a model
    traces it once per shape, not at every dropout site.
    """
    shape = tuple(int(d) for d in shape)
    size = math.prod(shape)
    if size >= 2**32:
        raise ValueError(f"dropout over {size} elements: the mask's uint32 index tops at 2**32")
    return _hashed_keep_mask(rng, shape, min(round(keep * 2**32), 2**32 - 1))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _hashed_keep_mask(rng: jax.Array, shape: tuple[int, ...], threshold: int) -> jax.Array:
    seed = jax.random.bits(rng, (2,), jnp.uint32)
    index = lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)  # each element's flat index
    mixed = lax.add(lax.mul(index, jnp.uint32(0x9E3779B9)), seed[0])
    bits = _mix32(lax.bitwise_xor(_mix32(mixed), seed[1]))
    return bits < jnp.uint32(threshold)


class Dropout(nn.Module):
    """Inverted dropout, as `nn.Dropout` (zero each element with probability `rate`,
    scale the rest by 1 / (1 - rate)), with its masks from `dropout_keep_mask`."""

    rate: float
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, inputs: jax.Array, deterministic: bool | None = None) -> jax.Array:
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        keep = 1.0 - self.rate
        mask = dropout_keep_mask(self.make_rng(self.rng_collection), inputs.shape, keep)
        return lax.select(mask, inputs / keep, jnp.zeros_like(inputs))


class LayerNorm(nn.Module):
    """LayerNorm over the last ('embed') dim, computed in float32, returned in `dtype`."""

    epsilon: float
    dtype: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = param(self, "scale", nn.initializers.ones_init(), ("embed",), (features,))
        bias = param(self, "bias", nn.initializers.zeros_init(), ("embed",), (features,))
        # bf16 means/variances lose too much precision; normalize in float32.
        return recompute.normalize(
            x, scale, bias, self.epsilon, center=True, dtype=jnp.dtype(self.dtype)
        )


class ClassifierHead(nn.Module):
    """Fine-tuning classifier: features [..., embed] -> float32 logits [..., num_classes].

    Initialized small (std 0.02, zero bias), so training starts near the uniform
    prediction, at a loss near ln(num_classes)."""

    num_classes: int
    dtype: str

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        logits = DenseGeneral(
            features=(self.num_classes,),
            contract_axes=1,
            kernel_axes=("embed", None),
            use_bias=True,
            dtype=self.dtype,
            kernel_init=embedding_init,
            name="dense",
        )(features)
        return logits.astype(jnp.float32)


ATTENTION_IMPLS = ("auto", "dot_product_attention", "einsum")


def resolve_attention_impl(impl: str) -> str:
    """The implementation "auto" stands for on the backend that traces the model.

    XLA:CPU runs the einsum form's backward ~1.6x faster than the generic
    `jax.nn.dot_product_attention` path; on GPUs `dot_product_attention` can pick cuDNN's
    fused kernel, and on TPUs it lowers to the same XLA ops as einsum.
    """
    if impl != "auto":
        return impl
    return "einsum" if jax.default_backend() == "cpu" else "dot_product_attention"


def attention_core(query, key, value, mask, impl: str) -> jax.Array:
    """softmax(q k^T / sqrt(d) where mask) v, layout [batch, length, heads, head_dim].

    "dot_product_attention" is `jax.nn.dot_product_attention` (XLA, or cuDNN's fused
    kernel on GPUs that have it). "einsum" spells out the same math in two einsums, with
    a backward pass that recomputes the probabilities instead of keeping three
    [batch, heads, length, length] arrays per layer (`recompute.softmax_attention`); on
    XLA:CPU it runs about 1.6x faster because it skips the grouped-query reshapes of the
    generic path. "auto" is one of the two, per backend (`resolve_attention_impl`).
    """
    if resolve_attention_impl(impl) == "dot_product_attention":
        return jax.nn.dot_product_attention(query, key, value, mask=mask, implementation=None)
    return recompute.softmax_attention(query, key, value, mask, None, query.shape[-1] ** -0.5)


class MultiHeadAttention(nn.Module):
    """Multi-head dot-product attention; self-attention when inputs_q is inputs_kv.

    Projections go embed -> (heads, kv) and back, so num_heads * head_dim need not equal
    the model width. The scores are computed by `jax.nn.dot_product_attention`
    (layout [batch, length, heads, head_dim]), which picks a fused kernel where one exists.

    With `decode=True` (causal self-attention only) keys and values are kept in the
    'cache' collection: the first call (cache absent, full-length [batch, max_length]
    inputs) only creates zero buffers [batch, max_length, heads, kv] and attends as
    usual; every later call writes its chunk of keys/values ([batch, length, ...], a whole
    prompt or one token) at the per-row `cache_index` and attends over the whole buffer
    (the caller's mask hides slots not yet written).
    """

    num_heads: int
    head_dim: int
    use_bias: bool
    dtype: str
    attention_impl: str  # one of ATTENTION_IMPLS
    decode: bool = False

    def _project_in(self, inputs: jax.Array, name: str) -> jax.Array:
        projection = DenseGeneral(
            features=(self.num_heads, self.head_dim),
            contract_axes=1,
            kernel_axes=("embed", "heads", "kv"),
            use_bias=self.use_bias,
            dtype=self.dtype,
            kernel_init=fan_in_init(1),
            name=name,
        )
        # [batch, length, heads, kv]
        return nn.with_logical_constraint(projection(inputs), ("batch", "length", "heads", "kv"))

    def _update_cache(self, key, value, cache_index):
        """Writes this call's key/value [batch, length, heads, kv] at cache_index int32
        [batch]; returns the cached keys and values [batch, max_length, heads, kv]."""
        initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        if not initialized:
            return key, value
        cached_key.value = update_rows(cached_key.value, key, cache_index)
        cached_value.value = update_rows(cached_value.value, value, cache_index)
        return cached_key.value, cached_value.value

    @nn.compact
    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_kv: jax.Array,
        mask: jax.Array,
        cache_index: jax.Array | None = None,
    ) -> jax.Array:
        """inputs_q [batch, q_length, embed], inputs_kv [batch, kv_length, embed],
        mask bool [batch, 1, q_length, kv_length] (True = attend) -> [batch, q_length, embed].

        When decoding, kv_length in the mask is the cache's max_length and cache_index int32
        [batch] is where each row's chunk is written (read only when decoding).
        """
        query = self._project_in(inputs_q, "query")  # [batch, q_length, heads, kv]
        key = self._project_in(inputs_kv, "key")  # [batch, kv_length, heads, kv]
        value = self._project_in(inputs_kv, "value")  # [batch, kv_length, heads, kv]
        if self.decode:
            key, value = self._update_cache(key, value, cache_index)
        attended = attention_core(query, key, value, mask, self.attention_impl)
        # [batch, q_length, heads, kv]
        attended = nn.with_logical_constraint(attended, ("batch", "length", "heads", "kv"))
        out = DenseGeneral(
            features=(inputs_q.shape[-1],),
            contract_axes=2,
            kernel_axes=("heads", "kv", "embed"),
            use_bias=self.use_bias,
            dtype=self.dtype,
            kernel_init=fan_in_init(2),
            name="out",
        )(attended)
        # [batch, q_length, embed]
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))


# GELU variants by config name. "gelu" is the exact erf form (BERT as released, HF's
# hidden_act="gelu"); "gelu_tanh" is the tanh approximation (GPT-2, HF's "gelu_new").
# Converted checkpoints only match when the variant matches.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
}


class GeluMlp(nn.Module):
    """embed -> mlp -> GELU (`activation`, a key of ACTIVATIONS) -> embed."""

    d_ff: int
    use_bias: bool
    activation: str
    dtype: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [batch, length, embed] -> [batch, length, embed]."""
        hidden = DenseGeneral(
            features=(self.d_ff,),
            contract_axes=1,
            kernel_axes=("embed", "mlp"),
            use_bias=self.use_bias,
            dtype=self.dtype,
            kernel_init=fan_in_init(1),
            name="wi",
        )(x)
        # [batch, length, mlp], before the activation, which `wo` applies
        hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
        out = DenseGeneral(
            features=(x.shape[-1],),
            contract_axes=1,
            kernel_axes=("mlp", "embed"),
            activation=ACTIVATIONS[self.activation],
            use_bias=self.use_bias,
            dtype=self.dtype,
            kernel_init=fan_in_init(1),
            name="wo",
        )(hidden)
        # [batch, length, embed]
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))
