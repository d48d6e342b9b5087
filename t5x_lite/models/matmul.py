"""Matmuls of activations and weights whose every product, forward and backward, takes
the bf16 path of XLA:CPU.

XLA:CPU hands a dot to YNNPACK, whose bf16 x bf16 -> float32 kernels run at about twice
its float32 rate on a CPU with bf16 instructions (AVX512-BF16 or AMX), only when the left
operand is [m, k] and the right [k, n], both row-major (`IsDotSupportedByYnn` in XLA's
ynn_support.cc). Any other bf16 dot it first converts to float32 and runs at the float32
rate or below. Autodiff's backward of x @ w is d @ w^T and x^T @ d: XLA folds those
transposes into the dot, which then takes the slow path, so a bf16 step used to be
slower than a float32 one. Here, in bf16 on CPU, both products get their transposed
operand as a row-major copy (`transposed`, a few MB against a matmul's GFLOPs) and
accumulate in float32; the weight's gradient comes out in float32 as well (autodiff of a
bf16 cast of the weight rounded it to bf16 first). In float32, or on other backends, the
ops are those autodiff of `jnp.dot` gives, except where the caller asks for row-major
backward products (`matmul(..., row_major_backward=True)`): a float32 vocabulary head,
whose backward products with a transposed operand XLA:CPU ran at 95 and ~90 GFLOP/s
(the first on YNNPACK, the weight's gradient on its generic dot) where the same
products of row-major copies ran at ~210 (`t5_small`'s [912 x 512] x [512 x 32128]
head: 317 and ~340 ms -> 141 and 142 ms, the copies included; the kernel's copy is
64 MB against 30 GFLOP a product).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def bf16_path(dtype) -> bool:
    """Whether a matmul with inputs of `dtype` takes the bf16 route above (decided when
    the step is traced)."""
    return jnp.dtype(dtype) == jnp.bfloat16 and jax.default_backend() == "cpu"


def transposed(x: jax.Array) -> jax.Array:
    """x [m, n] -> x^T [n, m], laid out row-major in memory. XLA gives a plain 2-D
    transpose a column-major layout (no copy) and folds it into the dot that reads it;
    the transpose of a [1, m, n] view, reshaped back to 2-D, it materializes."""
    return jnp.swapaxes(x[None], 1, 2)[0]


def product(
    a, b, *, transpose_a=False, transpose_b=False, out_dtype=None, row_major=False
) -> jax.Array:
    """a @ b, a [m, k] (or [k, m] with transpose_a), b [k, n] (or [n, k] with
    transpose_b), both of one dtype -> [m, n] in out_dtype (default a's dtype).

    In bf16 on CPU it accumulates in float32 with row-major operands (module docstring);
    `row_major` asks for row-major operands on CPU in float32 too.
    """
    out_dtype = jnp.dtype(out_dtype or a.dtype)
    same = None if out_dtype == a.dtype else out_dtype
    if bf16_path(a.dtype):
        flip, accumulate = transposed, jnp.float32
    elif row_major and jax.default_backend() == "cpu":
        flip, accumulate = transposed, same
    else:
        flip, accumulate = (lambda x: x.T), same
    a = flip(a) if transpose_a else a
    b = flip(b) if transpose_b else b
    return jnp.dot(a, b, preferred_element_type=accumulate).astype(out_dtype)


def matmul(
    x: jax.Array,
    kernel: jax.Array,
    out_dtype=None,
    *,
    kernel_transposed=False,
    row_major_backward=False,
):
    """x [rows, k] in the compute dtype @ kernel [k, n] (a float32 parameter, cast to
    x's dtype) -> [rows, n] in out_dtype (default x's dtype). With kernel_transposed the
    kernel is [n, k] (a tied embedding table) and x @ kernel^T is computed.

    row_major_backward: on CPU in float32 as well, the backward products read row-major
    copies of their transposed operands (module docstring). Worth it where the copies are
    small against the products: the kernel, and x^T, of a wide head with few rows."""
    row_major = bf16_path(x.dtype) or (row_major_backward and jax.default_backend() == "cpu")
    if row_major:
        return _row_major_matmul(x, kernel, jnp.dtype(out_dtype or x.dtype), kernel_transposed)
    kernel = kernel.astype(x.dtype)
    return product(x, kernel, transpose_b=kernel_transposed, out_dtype=out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _row_major_matmul(x, kernel, out_dtype, kernel_transposed):
    kernel = kernel.astype(x.dtype)
    return product(x, kernel, transpose_b=kernel_transposed, out_dtype=out_dtype)


def _row_major_matmul_forward(x, kernel, out_dtype, kernel_transposed):
    return _row_major_matmul(x, kernel, out_dtype, kernel_transposed), (x, kernel)


def _row_major_matmul_backward(out_dtype, kernel_transposed, residuals, d_out):
    x, kernel = residuals
    d_out = d_out.astype(x.dtype)
    row_major_product = functools.partial(product, row_major=True)
    d_x = row_major_product(d_out, kernel.astype(x.dtype), transpose_b=not kernel_transposed)
    if kernel_transposed:  # d (x k^T) / d k = d^T x, [n, k]
        d_kernel = row_major_product(d_out, x, transpose_a=True, out_dtype=kernel.dtype)
    else:
        d_kernel = row_major_product(x, d_out, transpose_a=True, out_dtype=kernel.dtype)
    return d_x, d_kernel


_row_major_matmul.defvjp(_row_major_matmul_forward, _row_major_matmul_backward)
