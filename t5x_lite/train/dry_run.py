"""`t5x-lite train ... --dry_run`: what a run would put on each device, before running it.

The run is built from the config alone: the model needs only `config.model.vocab_size`, so
no data is read and no tokenizer trained. The report shows the mesh; every parameter's
shape, logical axes, PartitionSpec and bytes per device; the per-device totals of
parameters and optimizer state; and XLA's memory analysis of the compiled train step.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec

from t5x_lite import tokenizer as tokenizer_lib
from t5x_lite.train import partitioning, trainer


def report(config, devices=None) -> str:
    """The dry-run text for `config` on `devices` (default: all of them)."""
    run = trainer.build_run(config, tokenizer_lib.SpecialIdsOnly(config.model.vocab_size), devices)
    mesh_sizes = " ".join(f"{axis}={size}" for axis, size in run.mesh.shape.items())
    device = run.mesh.devices.flat[0]
    lines = [f"mesh: {mesh_sizes} ({run.mesh.size} x {device.device_kind})"]
    lines += parameter_table(run)
    lines.append("")
    lines.append(_total_line("parameters", run.abstract_state.params))
    lines.append(_total_line("optimizer state", run.abstract_state.opt_state))
    lines.append(_total_line("train state", run.abstract_state))
    lines.append(compiled_memory_line(run))
    return "\n".join(lines)


def parameter_table(run) -> list[str]:
    """One row per parameter: path, shape, logical axes, PartitionSpec, bytes per device."""
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
        boxed = jax.eval_shape(trainer.params_initializer(run), jax.random.key(0))
    logical_specs = jax.tree.leaves(
        nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, PartitionSpec)
    )
    params = jax.tree_util.tree_flatten_with_path(run.abstract_state.params)[0]
    header = ("parameter", "shape", "logical axes", "partition spec", "bytes/device")
    rows = [
        (
            "/".join(str(getattr(key, "key", key)) for key in path),
            str(tuple(leaf.shape)),
            str(tuple(logical)),
            _spec_text(leaf.sharding.spec),
            f"{device_bytes(leaf):,}",
        )
        for (path, leaf), logical in zip(params, logical_specs, strict=True)
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [_format_row(row, widths) for row in [header, *rows]]


def _format_row(row, widths) -> str:
    """Left-aligned text columns, the last (a number) right-aligned."""
    cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths)]
    return "  ".join([*cells, row[-1].rjust(widths[-1])])


def total_bytes(leaf) -> int:
    return math.prod(leaf.shape) * leaf.dtype.itemsize


def device_bytes(leaf) -> int:
    """Bytes of `leaf` (a ShapeDtypeStruct with a sharding) that each device holds."""
    return math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize


def _total_line(what: str, tree) -> str:
    leaves = jax.tree.leaves(tree)
    total = sum(total_bytes(leaf) for leaf in leaves)
    per_device = sum(device_bytes(leaf) for leaf in leaves)
    count = sum(math.prod(leaf.shape) for leaf in leaves)
    return (
        f"{what}: {count:,} values, {total:,} bytes in all ({_mib(total)}), "
        f"{per_device:,} bytes per device ({_mib(per_device)})"
    )


def compiled_memory_line(run) -> str:
    """XLA's per-device sizes of the compiled train step, where the backend reports them."""
    batch_sharding = partitioning.batch_sharding(run.mesh)
    batch = {
        name: jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=batch_sharding)
        for name, value in run.dummy_batch(run.config.data.batch_size).items()
    }
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
        compiled = trainer.make_train_step(run).lower(run.abstract_state, batch).compile()
    memory = compiled.memory_analysis()
    if memory is None:
        return "compiled train step: this backend reports no memory analysis"
    sizes = {
        "arguments": memory.argument_size_in_bytes,
        "outputs": memory.output_size_in_bytes,
        "aliased (donated)": memory.alias_size_in_bytes,
        "temporaries": memory.temp_size_in_bytes,
        "generated code": memory.generated_code_size_in_bytes,
    }
    return "compiled train step per device: " + ", ".join(
        f"{name} {size:,} bytes ({_mib(size)})" for name, size in sizes.items()
    )


def _spec_text(spec: PartitionSpec) -> str:
    return f"P({', '.join(repr(axes) for axes in spec)})"


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
