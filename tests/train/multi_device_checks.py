"""Checks that need 8 devices, run together in one subprocess.

JAX splits the CPU into devices only when it starts, so the tests run this module with
JAX_NUM_CPU_DEVICES=8 (`results()` does) and read the one JSON object it prints: compiling
and starting JAX once for every case keeps the cost low.
"""

import fcntl
import functools
import json
import math
import os
import subprocess
import sys
import tempfile

import jax
import numpy as np

from t5x_lite import config as config_lib
from t5x_lite import tokenizer as tokenizer_lib
from t5x_lite.data import inputs, pipeline
from t5x_lite.errors import UserError
from t5x_lite.train import dry_run, partitioning, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRETRAIN = os.path.join(ROOT, "gin_configs", "pretrain.py")
NUM_DEVICES = 8
NUM_STEPS = 5
# (data, fsdp, tensor); the first runs on one device. Pure data parallelism is not a case
# of its own: (2, 4, 1) splits the batch 8 ways and all-reduces over `data` as it does.
MESHES = ((1, 1, 1), (2, 4, 1), (2, 2, 2))
# Tiny, float32, no dropout; every size divides every mesh axis it is sharded over.
TINY = {
    "data.batch_size": 8,
    "tokenizer.vocab_size": 256,
    "model.d_model": 32,
    "model.num_heads": 2,
    "model.head_dim": 16,
    "model.d_ff": 64,
    "model.dtype": "float32",
    "model.dropout_rate": 0.0,
    "optimizer.warmup_steps": 2,
}
ARCH_SIZES = {
    "gpt_tiny": {"model.num_layers": 2, "objective.seq_len": 32},
    "bert_tiny": {"model.num_layers": 2, "objective.seq_len": 32},
    "t5_tiny": {"objective.inputs_length": 32, "objective.targets_length": 8},
}
# A parameter per architecture whose PartitionSpec the test checks, besides the embedding.
MLP_KERNELS = {
    "gpt_tiny": "layers/mlp/wi/kernel",
    "bert_tiny": "layers/mlp/wi/kernel",
    "t5_tiny": "encoder/layers/mlp/wi_0/kernel",
}


@functools.cache
def results() -> dict:
    """This module's parsed output with 8 CPU devices, run once per test run: xdist
    workers of one run share it through a locked file keyed by the run's id."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run_id:
        return _run_subprocess()
    path = os.path.join(tempfile.gettempdir(), f"t5x_lite_multi_device_{run_id}.json")
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other workers wait for the first
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        result = _run_subprocess()
        with open(path, "w") as f:
            json.dump(result, f)
        return result


def _run_subprocess() -> dict:
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_NUM_CPU_DEVICES": str(NUM_DEVICES),
        # Compiling dominates; LLVM's optimizations change nothing that the checks compare
        # (the same flags hold for every mesh) and cost half the time.
        "XLA_FLAGS": " ".join(
            [
                os.environ.get("XLA_FLAGS", ""),
                "--xla_backend_optimization_level=0",
                "--xla_llvm_disable_expensive_passes=true",
            ]
        ),
    }
    # The dry run compiles gpt_tiny's (2, 4, 1) step first; the equivalence check reuses it.
    env.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="t5x_lite_jax_cache_"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    out = subprocess.run(
        [sys.executable, "-m", "tests.train.multi_device_checks"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


class _CharTokenizer(tokenizer_lib.SpecialIdsOnly):
    """Characters -> ids above the special pieces: real batches without training one."""

    def encode(self, text: str) -> np.ndarray:
        first = tokenizer_lib.NUM_SPECIAL_PIECES
        return np.array([first + ord(c) % (self.vocab_size - first) for c in text], np.int32)


def load(variant: str, **overrides):
    items = {**TINY, **ARCH_SIZES[variant], **overrides}
    return config_lib.load(f"{PRETRAIN}:{variant}", [(k, str(v)) for k, v in items.items()])


def mesh_overrides(mesh) -> dict:
    return {f"partitioning.mesh.{axis}": size for axis, size in zip(partitioning.MESH_AXES, mesh)}


def host_batches(config, tokenizer) -> list[dict]:
    """The first NUM_STEPS batches of a small corpus, the same for every mesh."""
    docs = [
        f"document {i}: the {word} fox jumps over the lazy dog {i % 7} times."
        for i, word in enumerate(["quick", "slow", "red", "brown", "small", "tall"] * 8)
    ]
    objective = inputs.build_objective(config, tokenizer)
    dataset = pipeline.make_dataset(
        docs,
        tokenizer,
        objective,
        batch_size=config.data.batch_size,
        seed=config.seed,
        shuffle=False,
        num_epochs=None,
        shard_index=0,
        shard_count=1,
        pad_final_batch=False,
    )
    batches = iter(dataset)
    return [next(batches) for _ in range(NUM_STEPS)]


def train_losses(run, state, batches) -> list[float]:
    """Total loss (the sum over loss terms) at each step."""
    train_step = trainer.make_train_step(run)
    losses = []
    for host_batch in batches:
        global_batch = partitioning.host_batch_to_global(host_batch, run.mesh)
        state, (sums, _) = train_step(state, global_batch)
        losses.append(
            sum(
                float(s["loss_sum"]) / max(float(s["weight_sum"]), 1.0)
                for s in jax.device_get(sums).values()
            )
        )
    return losses


def param_specs(run) -> dict[str, list]:
    paths = jax.tree_util.tree_flatten_with_path(run.state_shardings.params)[0]
    return {
        "/".join(key.key for key in path): [_axes_json(axes) for axes in sharding.spec]
        for path, sharding in paths
    }


def _axes_json(axes):
    return axes if axes is None or isinstance(axes, str) else list(axes)


def equivalence() -> dict:
    """Losses of every mesh, and two PartitionSpecs on (2, 2, 2), per architecture.

    Initializing compiles once per mesh, so two meshes start from the one-device state
    put onto their shardings; the (2, 2, 2) run initializes sharded itself, so its first
    loss also checks that a sharded initialization draws the same parameters."""
    out = {}
    for variant in ARCH_SIZES:
        config = load(variant)
        tokenizer = _CharTokenizer(config.model.vocab_size)
        batches = host_batches(config, tokenizer)
        out[variant] = {"losses": {}}
        one_device_state = None  # MESHES[0] is (1, 1, 1): it sets this first
        for mesh in MESHES:
            devices = jax.devices()[: math.prod(mesh)]
            run = trainer.build_run(load(variant, **mesh_overrides(mesh)), tokenizer, devices)
            if mesh in ((1, 1, 1), (2, 2, 2)):
                state = trainer.init_state(run, config.seed)
            else:
                state = jax.device_put(one_device_state, run.state_shardings)
            if mesh == (1, 1, 1):
                one_device_state = jax.device_get(state)  # a copy: the step donates state
            out[variant]["losses"][str(mesh)] = train_losses(run, state, batches)
            if mesh == (2, 2, 2):
                specs = param_specs(run)
                paths = ["token_embed/embedding", MLP_KERNELS[variant]]
                out[variant]["specs"] = {path: specs[path] for path in paths}
    return out


def user_errors() -> dict:
    """Settings that cannot shard on 8 devices -> the UserError message, or None."""
    cases = {
        "mesh_product": {**mesh_overrides((2, 2, 1))},
        "batch_size": {**mesh_overrides((4, 1, 2)), "data.batch_size": 6},
        "num_heads": {**mesh_overrides((4, 1, 2)), "model.num_heads": 3},
        "vocab_size": {
            **mesh_overrides((2, 1, 4)),
            "model.num_heads": 4,
            "tokenizer.vocab_size": 258,
        },
    }
    out = {}
    for name, overrides in cases.items():
        config = load("gpt_tiny", **overrides)
        try:
            trainer.build_run(config, tokenizer_lib.SpecialIdsOnly(config.model.vocab_size))
            out[name] = None
        except UserError as e:
            out[name] = str(e)
    return out


def dry_run_report() -> str:
    return dry_run.report(load("gpt_tiny", **mesh_overrides((2, 4, 1))))


def main() -> None:
    assert jax.device_count() == NUM_DEVICES, jax.devices()
    out = {"errors": user_errors(), "dry_run": dry_run_report(), "equivalence": equivalence()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
