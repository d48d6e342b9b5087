"""What the model tests share."""

import functools

import jax

# Unoptimized CPU codegen halves XLA compile time, which dominates these tiny-model tests;
# every compared pair of results is compiled the same way.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

# Every logical axis name a parameter may carry (None = an unnamed dim).
LOGICAL_NAMES = {
    "batch",
    "length",
    "embed",
    "heads",
    "kv",
    "mlp",
    "vocab",
    "layers",
    "relpos_buckets",
    None,
}
