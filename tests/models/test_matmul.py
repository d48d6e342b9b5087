"""The bf16 matmul path: values and gradients match float32 math on the same bf16
inputs, the weight's gradient comes out in float32, float32 is unchanged, and in the
compiled step every product, forward and backward, reads bf16 operands (XLA:CPU converts
a dot it cannot run in bf16 to float32, silently)."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite.models import layers, matmul, recompute

ROWS, K, N = 48, 40, 24


def arrays(seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(ROWS, K)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(K, N)) * 0.2, jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(ROWS, N)), jnp.float32)
    return x, kernel, cotangent


def dot_operand_types(fn, *args) -> list[tuple[str, ...]]:
    """The operand element types of every dot in fn's compiled program: a dot inside a
    fusion reads that fusion's parameters, whose types its header spells."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    types = []
    for computation in re.split(r"\n(?=\S)", text):
        if " dot(" not in computation:
            continue
        header = computation.split("{", 1)[0]
        if header.startswith("ENTRY"):  # an unfused dot: look its operands up
            for operands in re.findall(r" dot\(([^)]*)\)", computation):
                types.append(
                    tuple(
                        re.search(rf"%{re.escape(name.strip()[1:])} = (\w+)\[", text).group(1)
                        for name in operands.split(",")
                    )
                )
        else:
            params = re.findall(r"param_[\w.]*: (\w+)\[", header)
            types.extend([tuple(params)] * computation.count(" dot("))
    return types


@pytest.mark.parametrize("transpose_a", [False, True])
@pytest.mark.parametrize("transpose_b", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_product_is_the_matmul_of_its_operands(transpose_a, transpose_b, dtype):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(K, ROWS) if transpose_a else (ROWS, K)).astype(np.float32)
    b = rng.normal(size=(N, K) if transpose_b else (K, N)).astype(np.float32)
    a, b = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    out = jax.jit(
        lambda a, b: matmul.product(
            a, b, transpose_a=transpose_a, transpose_b=transpose_b, out_dtype=jnp.float32
        )
    )(a, b)
    a32, b32 = (np.asarray(x, np.float32) for x in (a, b))
    expected = (a32.T if transpose_a else a32) @ (b32.T if transpose_b else b32)
    assert out.dtype == jnp.float32 and out.shape == (ROWS, N)
    # bf16 inputs are exact in float32, so only the accumulation order differs
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)


def test_transposed_is_a_transpose():
    x = jnp.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(jax.jit(matmul.transposed)(x), x.T)


@pytest.mark.parametrize("kernel_transposed", [False, True])
def test_float32_matmul_is_autodiff_of_jnp_dot(kernel_transposed):
    x, kernel, cotangent = arrays()
    kernel = kernel.T if kernel_transposed else kernel

    def ours(x, kernel):
        out = matmul.matmul(x, kernel, kernel_transposed=kernel_transposed)
        return jnp.sum(out * cotangent)

    def theirs(x, kernel):
        return jnp.sum(jnp.dot(x, kernel.T if kernel_transposed else kernel) * cotangent)

    a = jax.jit(jax.value_and_grad(ours, argnums=(0, 1)))(x, kernel)
    b = jax.jit(jax.value_and_grad(theirs, argnums=(0, 1)))(x, kernel)
    for left, right in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(left, right)


@pytest.mark.parametrize("kernel_transposed", [False, True])
@pytest.mark.parametrize("out_dtype", [None, jnp.float32])
def test_bfloat16_matmul_gradients_are_float32_math_on_bf16_values(out_dtype, kernel_transposed):
    x, kernel, cotangent = arrays()
    x16 = x.astype(jnp.bfloat16)

    def loss(x, kernel):
        out = matmul.matmul(x, kernel, out_dtype, kernel_transposed=kernel_transposed)
        return jnp.sum(out.astype(jnp.float32) * cotangent)

    given = kernel.T if kernel_transposed else kernel
    value, (d_x, d_kernel) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x16, given)
    assert d_x.dtype == jnp.bfloat16 and d_kernel.dtype == jnp.float32
    d_kernel = d_kernel.T if kernel_transposed else d_kernel

    # The same math in float32 numpy on the bf16-rounded operands: the product rounded
    # once (to the output dtype), the cotangent rounded to bf16 before each product.
    round16 = lambda a: np.asarray(jnp.asarray(a, jnp.bfloat16), np.float32)  # noqa: E731
    x32, k32 = round16(x), round16(kernel)
    out = x32 @ k32
    out = out if out_dtype == jnp.float32 else round16(out)
    np.testing.assert_allclose(value, np.sum(out * np.asarray(cotangent)), rtol=1e-4)
    d_out = round16(cotangent)
    np.testing.assert_allclose(np.asarray(d_x, np.float32), d_out @ k32.T, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(d_kernel, x32.T @ d_out, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kernel_transposed", [False, True])
def test_bfloat16_matmul_runs_every_product_on_bf16_operands(kernel_transposed):
    x, kernel, cotangent = arrays()
    kernel = kernel.T if kernel_transposed else kernel

    def step(matmul_fn, x, kernel):  # tanh: a loss that needs the forward product too
        def loss(x, kernel):
            return jnp.sum(jnp.tanh(matmul_fn(x, kernel)) * cotangent)

        return jax.grad(loss, argnums=(0, 1))(x, kernel)

    def ours_fn(x, kernel):
        return matmul.matmul(x, kernel, kernel_transposed=kernel_transposed)

    def plain(x, kernel):  # what autodiff of a bf16 dot gives
        kernel = kernel.astype(x.dtype)
        return jnp.dot(x, kernel.T if kernel_transposed else kernel)

    x16 = x.astype(jnp.bfloat16)
    ours = dot_operand_types(lambda x, k: step(ours_fn, x, k), x16, kernel)
    theirs = dot_operand_types(lambda x, k: step(plain, x, k), x16, kernel)
    assert len(ours) == 3 and all(t == ("bf16", "bf16") for t in ours), ours
    assert any(t != ("bf16", "bf16") for t in theirs), theirs  # the check above can fail


def test_activated_matmul_bfloat16_products_and_float32_kernel_gradient():
    x, kernel, cotangent = arrays()
    x16 = x.astype(jnp.bfloat16)
    gelu = layers.ACTIVATIONS["gelu_tanh"]

    def loss(x, kernel):
        out = recompute.activated_matmul(gelu, (x,), kernel)
        return jnp.sum(jnp.tanh(out.astype(jnp.float32)) * cotangent)

    grad = jax.grad(loss, argnums=(0, 1))
    d_x, d_kernel = jax.jit(grad)(x16, kernel)
    assert d_x.dtype == jnp.bfloat16 and d_kernel.dtype == jnp.float32
    # against float32 autodiff of the same function: bf16's rounding only
    f32_x, f32_kernel = jax.jit(grad)(x16.astype(jnp.float32), kernel)
    np.testing.assert_allclose(d_kernel, f32_kernel, rtol=0.05, atol=0.05)
    np.testing.assert_allclose(np.asarray(d_x, np.float32), f32_x, rtol=0.05, atol=0.05)
    types = dot_operand_types(grad, x16, kernel)
    assert len(types) == 3 and all(t == ("bf16", "bf16") for t in types), types


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_embed_attend_gradients_track_float32(dtype):
    embed = layers.Embed(N, K, ("vocab", "embed"), dtype)
    x, _, _ = arrays()
    params = nn.unbox(embed.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))
    target = jnp.asarray(np.random.default_rng(3).normal(size=(ROWS, N)), jnp.float32)

    def loss(embed, params, x):
        logits = embed.apply(params, x, method=layers.Embed.attend)
        assert logits.dtype == jnp.float32
        return jnp.sum(logits * target)

    x = x.astype(jnp.dtype(dtype))
    grads = jax.jit(jax.grad(functools.partial(loss, embed)))(params, x)
    embed32 = layers.Embed(N, K, ("vocab", "embed"), "float32")
    reference = jax.jit(jax.grad(functools.partial(loss, embed32)))(params, x.astype(jnp.float32))
    table = grads["params"]["embedding"]
    assert table.dtype == jnp.float32
    tolerance = 1e-5 if dtype == "float32" else 0.05
    np.testing.assert_allclose(
        table, reference["params"]["embedding"], rtol=tolerance, atol=tolerance
    )


def dot_contractions(fn, *args) -> list[tuple[str, str]]:
    """(lhs_contracting_dims, rhs_contracting_dims) of every dot in fn's compiled program."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    return re.findall(
        r" dot\([^)]*\), lhs_contracting_dims=\{(\d)\}, rhs_contracting_dims=\{(\d)\}", text
    )


def test_float32_row_major_backward_gradients_and_products():
    x, kernel, cotangent = arrays()

    def grads(matmul_fn):
        def loss(x, kernel):  # tanh: a loss that needs the forward product too
            return jnp.sum(jnp.tanh(matmul_fn(x, kernel)) * cotangent)

        return jax.value_and_grad(loss, argnums=(0, 1))

    ours = grads(lambda x, k: matmul.matmul(x, k, jnp.float32, row_major_backward=True))
    plain = grads(lambda x, k: jnp.dot(x, k))
    for left, right in zip(
        jax.tree.leaves(jax.jit(ours)(x, kernel)), jax.tree.leaves(jax.jit(plain)(x, kernel))
    ):
        assert left.dtype == jnp.float32
        np.testing.assert_allclose(left, right, rtol=1e-5, atol=1e-5)
    # On CPU every product reads [m, k] x [k, n] operands; autodiff's backward does not.
    assert dot_contractions(ours, x, kernel) == [("1", "0")] * 3
    assert len(set(dot_contractions(plain, x, kernel))) > 1
