"""Building blocks: masks worked by hand, logical names, dtype handling."""

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite.models import layers
from tests.models.helpers import fast_jit

# Unoptimized CPU codegen: compile time, not compute, dominates these tiny checks.
KEY = jax.random.key(0, impl="rbg")  # cheaper to compile than threefry; same distributions


def test_causal_segment_mask_packed_row_by_hand():
    # Two documents and one padding token: [doc 1, doc 1, doc 2, doc 2, pad].
    segment_ids = jnp.array([[1, 1, 2, 2, 0]], jnp.int32)
    mask = layers.causal_segment_mask(segment_ids)
    expected = np.array(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 0, 1, 0, 0],
            [0, 0, 1, 1, 0],
            [0, 0, 0, 0, 1],  # padding sees only itself: never an all-masked row
        ],
        bool,
    )
    assert mask.shape == (1, 1, 5, 5)
    assert mask.dtype == jnp.bool_
    np.testing.assert_array_equal(mask[0, 0], expected)


def test_prefix_lm_segment_mask_packed_row_by_hand():
    # [doc 1: prefix, prefix, target | doc 2: prefix, prefix, target | pad]
    segment_ids = jnp.array([[1, 1, 1, 2, 2, 2, 0]], jnp.int32)
    prefix_mask = jnp.array([[1, 1, 0, 1, 1, 0, 0]], jnp.int32)
    mask = layers.prefix_lm_segment_mask(segment_ids, prefix_mask)
    expected = np.array(
        [
            [1, 1, 0, 0, 0, 0, 0],  # prefix sees the later prefix token of its doc ...
            [1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],  # ... targets stay causal
            [0, 0, 0, 1, 1, 0, 0],  # doc 2's prefix never sees doc 1's prefix
            [0, 0, 0, 1, 1, 0, 0],
            [0, 0, 0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 0, 1],
        ],
        bool,
    )
    assert mask.shape == (1, 1, 7, 7)
    assert mask.dtype == jnp.bool_
    np.testing.assert_array_equal(mask[0, 0], expected)
    no_prefix = layers.prefix_lm_segment_mask(segment_ids, jnp.zeros_like(prefix_mask))
    np.testing.assert_array_equal(no_prefix, layers.causal_segment_mask(segment_ids))


def test_causal_prefix_mask_over_cache_slots():
    # One query at slot 2 of row 0 and a 2-token prefix query chunk at slots 0-1 of row 1,
    # against 4 cache slots; row 1's prefix covers slots 0-1.
    query_index = jnp.array([[2, 2], [0, 1]], jnp.int32)
    query_prefix = jnp.array([[0, 0], [1, 1]], jnp.int32)
    key_prefix = jnp.array([[0, 0, 0, 0], [1, 1, 0, 0]], jnp.int32)
    mask = layers.causal_prefix_mask(query_index, jnp.arange(4)[None], query_prefix, key_prefix)
    np.testing.assert_array_equal(mask[0, 0], [[1, 1, 1, 0], [1, 1, 1, 0]])
    np.testing.assert_array_equal(mask[1, 0], [[1, 1, 0, 0], [1, 1, 0, 0]])


def test_update_rows_writes_each_row_at_its_own_index():
    buffer = jnp.zeros((2, 5), jnp.int32)
    chunk = jnp.array([[7, 8], [9, 10]], jnp.int32)
    updated = layers.update_rows(buffer, chunk, jnp.array([0, 3], jnp.int32))
    np.testing.assert_array_equal(updated, [[7, 8, 0, 0, 0], [0, 0, 0, 9, 10]])


def test_every_query_sees_a_key_even_in_an_all_padding_row():
    segment_ids = jnp.array([[0, 0, 0], [1, 0, 0]], jnp.int32)
    mask = layers.causal_segment_mask(segment_ids)
    assert bool(jnp.all(jnp.any(mask, axis=-1)))


def test_segment_mask_cross_lengths():
    query_segments = jnp.array([[1, 2]], jnp.int32)
    key_segments = jnp.array([[2, 1, 1]], jnp.int32)
    mask = layers.segment_mask(query_segments, key_segments)
    np.testing.assert_array_equal(mask[0, 0], [[0, 1, 1], [1, 0, 0]])


def test_dense_general_contracts_trailing_axes_with_fan_in_init():
    dense = layers.DenseGeneral(
        features=(16,),
        contract_axes=2,
        kernel_axes=("heads", "kv", "embed"),
        use_bias=True,
        dtype="float32",
        kernel_init=layers.fan_in_init(2),
    )
    x = jnp.ones((2, 3, 4, 50))  # [batch, length, heads, kv]
    variables = fast_jit(dense.init)(KEY, x)
    kernel = variables["params"]["kernel"]
    assert isinstance(kernel, nn.LogicallyPartitioned)
    assert kernel.names == ("heads", "kv", "embed")
    assert variables["params"]["bias"].names == ("embed",)
    # fan_in = heads * kv = 200, so the kernel std is about 1/sqrt(200).
    assert abs(float(jnp.std(kernel.value)) - 200**-0.5) < 0.01
    out = fast_jit(dense.apply)(variables, x)
    expected = jnp.einsum("blhd,hde->ble", x, kernel.value)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_param_applies_without_calling_the_initializer_and_checks_shapes():
    calls = []

    def counting_init(key, shape, dtype=jnp.float32):
        calls.append(tuple(shape))
        return jnp.full(shape, 0.5, dtype)

    dense = layers.DenseGeneral(
        features=(3,),
        contract_axes=1,
        kernel_axes=("embed", "mlp"),
        use_bias=True,
        dtype="float32",
        kernel_init=counting_init,
    )
    x = jnp.ones((2, 4))
    variables = dense.init(KEY, x)
    assert calls == [(4, 3)]  # created once, boxed with its axis names
    assert variables["params"]["kernel"].names == ("embed", "mlp")
    # Boxed or unboxed, the stored values are used; Flax's own `param` would trace the
    # initializer again (under jax.eval_shape) to check the shape.
    for params in (variables["params"], nn.unbox(variables["params"])):
        out = jax.jit(dense.apply)({"params": params}, x)
        np.testing.assert_allclose(out, np.full((2, 3), 2.0))
    assert calls == [(4, 3)]
    wrong = dict(nn.unbox(variables["params"]), kernel=jnp.zeros((5, 3)))
    with pytest.raises(flax.errors.ScopeParamShapeError, match="kernel"):
        dense.apply({"params": wrong}, x)


def test_embed_attend_is_matmul_with_table_in_float32():
    embed = layers.Embed(10, 4, ("vocab", "embed"), "bfloat16")
    ids = jnp.array([[1, 2, 3]], jnp.int32)
    variables = fast_jit(embed.init)(KEY, ids)
    table = variables["params"]["embedding"].value
    vectors = embed.apply(variables, ids)
    assert vectors.dtype == jnp.bfloat16
    logits = embed.apply(variables, vectors, method=layers.Embed.attend)
    assert logits.shape == (1, 3, 10)
    assert logits.dtype == jnp.float32
    expected = vectors.astype(jnp.float32) @ table.astype(jnp.bfloat16).astype(jnp.float32).T
    np.testing.assert_allclose(logits, expected, rtol=1e-2, atol=1e-4)


def test_layer_norm_normalizes_in_float32_and_returns_dtype():
    norm = layers.LayerNorm(epsilon=1e-5, dtype="bfloat16")
    x = jnp.arange(8, dtype=jnp.float32).reshape(1, 1, 8) * 100.0
    variables = fast_jit(norm.init)(KEY, x)
    assert variables["params"]["scale"].names == ("embed",)
    out = norm.apply(variables, x)
    assert out.dtype == jnp.bfloat16
    out32 = out.astype(jnp.float32)
    assert abs(float(jnp.mean(out32))) < 1e-2
    assert abs(float(jnp.std(out32)) - 1.0) < 1e-2


def test_logical_constraint_is_identity_without_mesh_or_rules():
    x = jnp.arange(6.0).reshape(1, 2, 3)
    assert nn.with_logical_constraint(x, ("batch", "length", "embed")) is x


def _mix32_by_hand(h: int) -> int:
    h ^= h >> 16
    h = h * 0x85EBCA6B % 2**32
    h ^= h >> 13
    h = h * 0xC2B2AE35 % 2**32
    return h ^ (h >> 16)


def test_dropout_mask_is_the_counter_hash_of_each_index():
    rng = jax.random.key(3)
    seed0, seed1 = (int(s) for s in jax.random.bits(rng, (2,), jnp.uint32))
    keep = 0.7
    mask = np.asarray(layers.dropout_keep_mask(rng, (3, 5), keep))
    threshold = round(keep * 2**32)
    for i in range(15):
        bits = _mix32_by_hand(_mix32_by_hand((i * 0x9E3779B9 + seed0) % 2**32) ^ seed1)
        assert mask.reshape(-1)[i] == (bits < threshold), i


def test_dropout_keeps_the_rate_scales_and_draws_fresh_masks_per_key():
    x = jnp.arange(1.0, 256 * 1024 + 1.0).reshape(256, 1024)
    dropout = layers.Dropout(rate=0.1)
    out = dropout.apply({}, x, deterministic=False, rngs={"dropout": KEY})
    kept = np.asarray(out) != 0
    # 262,144 draws at p = 0.9: the binomial std of the kept share is 0.0006.
    assert abs(kept.mean() - 0.9) < 0.003
    np.testing.assert_allclose(np.asarray(out)[kept], np.asarray(x)[kept] / 0.9, rtol=1e-6)
    again = dropout.apply({}, x, deterministic=False, rngs={"dropout": KEY})
    np.testing.assert_array_equal(out, again)  # the key decides the mask
    other = np.asarray(
        dropout.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)}) != 0
    )
    # Independent masks: both kept at ~0.81, and neighbours within a mask likewise.
    assert abs((kept & other).mean() - 0.81) < 0.004
    assert abs((kept[:, 1:] & kept[:, :-1]).mean() - 0.81) < 0.004
    assert abs((kept[1:] & kept[:-1]).mean() - 0.81) < 0.004
    grad = jax.grad(
        lambda v: dropout.apply({}, v, deterministic=False, rngs={"dropout": KEY}).sum()
    )(x)
    np.testing.assert_allclose(grad, kept / 0.9, rtol=1e-6)


def test_dropout_off_or_total():
    x = jnp.ones((4, 8), jnp.bfloat16)
    np.testing.assert_array_equal(layers.Dropout(rate=0.5).apply({}, x, deterministic=True), x)
    np.testing.assert_array_equal(
        layers.Dropout(rate=0.0).apply({}, x, deterministic=False, rngs={"dropout": KEY}), x
    )
    total = layers.Dropout(rate=1.0).apply({}, x, deterministic=False, rngs={"dropout": KEY})
    assert total.dtype == jnp.bfloat16 and not np.asarray(total, np.float32).any()
    half = layers.Dropout(rate=0.5).apply({}, x, deterministic=False, rngs={"dropout": KEY})
    assert half.dtype == jnp.bfloat16
    assert set(np.unique(np.asarray(half, np.float32))) == {0.0, 2.0}
