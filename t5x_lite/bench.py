"""`t5x-lite bench`: how fast one training step of a config runs on this machine.

Reports step time, tokens/s, model TFLOP/s and MFU, and memory. Model FLOPs per row
come from the family (`families/*.py`, after PaLM, Chowdhery et al. 2022, app. B): 6 N
for the N parameters used in matmuls (the tied or untied output projection included,
embedding lookups excluded) plus 12 L T d_attn for attention scores and values over the
full sequence length T. An encoder-decoder row counts its encoder tokens (encoder
layers, attention over the inputs) and its decoder tokens (decoder layers with
cross-attention over the inputs, the output projection) separately; its tokens are
inputs plus targets. MFU is that rate over a peak the user gives (`--peak_tflops`) or
a dense fp32 matmul probe measures on the same devices.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite import families
from t5x_lite import tokenizer as tokenizer_lib
from t5x_lite.bench_torch import timed  # torch-free: the PyTorch side times its steps too
from t5x_lite.errors import UserError
from t5x_lite.train import partitioning, trainer


@dataclasses.dataclass
class BenchResult:
    step_time_s: float
    tokens_per_s: float
    model_flops_per_token: float
    model_tflops: float
    peak_tflops: float
    peak_source: str
    mfu: float
    compile_s: float
    temp_memory_mb: float
    state_memory_mb: float
    peak_rss_mb: float


# Dense bf16 peak TFLOP/s per JAX device from the vendors' data sheets (no sparsity),
# matched by the first prefix of `device_kind` that fits, so a variant precedes its family.
PUBLISHED_BF16_PEAKS = (
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H100", 989.0),  # SXM
    ("NVIDIA H200", 989.0),
    ("NVIDIA GH200", 989.0),
    ("NVIDIA B200", 2250.0),
    ("NVIDIA A100", 312.0),
    ("NVIDIA L4", 121.0),
    ("TPU v4", 275.0),  # one device per chip (megacore)
    ("TPU v5 lite", 197.0),  # v5e
    ("TPU v5", 459.0),  # v5p
    ("TPU v6 lite", 918.0),  # v6e (Trillium)
)


def published_peak_tflops(device_kind: str | None = None) -> float:
    """The dense bf16 peak of all the job's devices (the step's tokens are global), from
    `PUBLISHED_BF16_PEAKS`."""
    kind = device_kind if device_kind is not None else jax.devices()[0].device_kind
    for prefix, peak in PUBLISHED_BF16_PEAKS:
        if kind.startswith(prefix):
            return peak * jax.device_count()
    raise UserError(
        f"no published bf16 peak for device kind {kind!r} (known: "
        f"{', '.join(p for p, _ in PUBLISHED_BF16_PEAKS)}); pass --peak_tflops=X instead"
    )


def matmul_peak_tflops(sizes=(1024, 2048), repeats: int = 10) -> float:
    """Best fp32 TFLOP/s that a square matmul reaches on the default devices.

    The best over sizes and repeats, so a busy moment on a shared machine does not lower
    the peak (and so inflate the MFU).
    """
    matmul = jax.jit(lambda a, b: a @ b)
    best = 0.0
    for size in sizes:
        a = jnp.ones((size, size), jnp.float32)
        matmul(a, a).block_until_ready()
        for _ in range(repeats):
            start = time.perf_counter()
            matmul(a, a).block_until_ready()
            best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best / 1e12 * jax.device_count()


def random_batch(run, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A full (unpadded) packed batch of random tokens, one document per row."""
    batch = run.dummy_batch(run.config.data.batch_size)
    for name, value in batch.items():
        if name.endswith("_positions"):
            value[:] = np.arange(value.shape[1])
        elif name.endswith(("_segment_ids", "_weights")):
            value[:] = 1
        elif name.endswith(("_type_ids", "_labels")):
            value[:] = 0  # small categorical inputs (token types, NSP labels)
        else:
            value[:] = rng.integers(7, run.config.model.vocab_size, value.shape)
    return batch


class CompiledStep:
    """The config's jitted train step, compiled for one batch of random tokens; a call
    runs one step and waits for it. `bench` and `bench --compare` time the same object."""

    def __init__(self, config):
        # The objective needs only the fixed special ids: the benchmark feeds random tokens.
        self.vocab = tokenizer_lib.SpecialIdsOnly(config.model.vocab_size)
        self.run = trainer.build_run(config, self.vocab)
        self.state = trainer.init_state(self.run, config.seed)
        self.host_batch = random_batch(self.run, np.random.default_rng(0))
        self.batch = partitioning.host_batch_to_global(self.host_batch, self.run.mesh)
        step = trainer.make_train_step(self.run)
        with jax.set_mesh(self.run.mesh):
            start = time.perf_counter()
            self.compiled = step.lower(self.state, self.batch).compile()
            self.compile_s = time.perf_counter() - start
        temp = self.compiled.memory_analysis()
        self.temp_memory_mb = (temp.temp_size_in_bytes if temp else 0) / 2**20
        self.state_memory_mb = sum(x.nbytes for x in jax.tree.leaves(self.state)) / 2**20

    def __call__(self) -> None:
        with jax.set_mesh(self.run.mesh):
            self.state, _ = self.compiled(self.state, self.batch)
            jax.block_until_ready(self.state)

    def tokens_and_flops(self) -> tuple[int, float]:
        """(tokens per row, model FLOPs per row), as the family counts them."""
        family = families.get(self.run.config.model.arch)
        return family.row_tokens_and_flops(
            self.run.config.model, self.run.objective.feature_lengths()
        )


def benchmark(config, *, steps: int, peak_tflops: float) -> BenchResult:
    step = CompiledStep(config)
    row_tokens, row_flops = step.tokens_and_flops()
    tokens = config.data.batch_size * row_tokens
    timed(step, 2)  # warm up caches and the allocator
    step_time = float(np.median(timed(step, steps)))
    source = "given"
    if not peak_tflops:
        peak_tflops, source = matmul_peak_tflops(), "fp32 matmul probe"
    per_token = row_flops / row_tokens
    achieved = tokens / step_time * per_token / 1e12
    return BenchResult(
        step_time_s=step_time,
        tokens_per_s=tokens / step_time,
        model_flops_per_token=per_token,
        model_tflops=achieved,
        peak_tflops=peak_tflops,
        peak_source=source,
        mfu=achieved / peak_tflops,
        compile_s=step.compile_s,
        temp_memory_mb=step.temp_memory_mb,
        state_memory_mb=step.state_memory_mb,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )


def run_and_report(config, *, steps: int, peak_tflops: float) -> BenchResult:
    result = benchmark(config, steps=steps, peak_tflops=peak_tflops)
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}")
    print(f"step time      {result.step_time_s * 1e3:10.1f} ms   (median of {steps})")
    print(f"tokens/s       {result.tokens_per_s:10.0f}")
    print(
        f"model TFLOP/s  {result.model_tflops:10.3f}   "
        f"({result.model_flops_per_token / 1e6:.1f} MFLOP/token)"
    )
    print(f"peak TFLOP/s   {result.peak_tflops:10.3f}   ({result.peak_source})")
    print(f"MFU            {result.mfu * 100:10.1f} %")
    print(f"compile        {result.compile_s:10.1f} s")
    print(
        f"memory         state {result.state_memory_mb:.0f} MB, step temporaries "
        f"{result.temp_memory_mb:.0f} MB, process peak RSS {result.peak_rss_mb:.0f} MB"
    )
    print(json.dumps(dataclasses.asdict(result)))
    return result
