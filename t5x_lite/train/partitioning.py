"""Mesh and shardings from the config: `partitioning.mesh` sizes and logical-axis rules.

The same code runs on one CPU and on a pod: the mesh always has the axes
('data', 'fsdp', 'tensor'); on one device every axis has size 1 and every sharding is
trivial.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from t5x_lite.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
# The batch dimension of every input feature is split over these mesh axes.
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, ...]:
    """Resolve sizes (one may be -1 = the remaining devices) against the device count."""
    sizes = [int(mesh_config[axis]) for axis in MESH_AXES]
    if sizes.count(-1) > 1:
        raise UserError("config.partitioning.mesh: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes) or num_devices % known:
        raise UserError(
            f"config.partitioning.mesh={dict(zip(MESH_AXES, sizes))} does not divide the "
            f"{num_devices} available devices; make the product of the sizes {num_devices}"
        )
    sizes = [num_devices // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != num_devices:
        raise UserError(
            f"config.partitioning.mesh={dict(zip(MESH_AXES, sizes))} has "
            f"{math.prod(sizes)} devices but {num_devices} are available; set one axis to -1"
        )
    return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
    """The mesh over `devices` (default: all of them); tests pass a prefix to compare
    the same run on fewer devices within one process."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(mesh_config, len(devices))
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def rules(partitioning_config) -> tuple:
    return tuple((name, axes) for name, axes in partitioning_config.rules)


def logical_shardings(abstract_tree, mesh, logical_rules):
    """Shardings for a pytree of boxed (logically annotated) abstract values."""
    specs = nn.get_partition_spec(abstract_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, logical_rules)


# The config key that sets the size of a parameter dimension with this logical name.
_SIZE_KEYS = {
    "vocab": "config.tokenizer.vocab_size",
    "embed": "config.model.d_model",
    "heads": "config.model.num_heads",
    "kv": "config.model.head_dim",
    "mlp": "config.model.d_ff",
    "layers": "config.model.num_layers (T5: num_encoder_layers, num_decoder_layers)",
    "relpos_buckets": "config.model.relative_attention_num_buckets",
}


def check_divisible(boxed_params, param_shardings) -> None:
    """Each parameter dimension must split evenly over the mesh axes its rule maps it to;
    XLA would otherwise fail while compiling with a message that names neither."""
    shapes = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(boxed_params))[0]
    logical_specs = jax.tree.leaves(
        nn.get_partition_spec(boxed_params), is_leaf=lambda x: isinstance(x, PartitionSpec)
    )
    for (path, leaf), logical, sharding in zip(
        shapes, logical_specs, jax.tree.leaves(param_shardings), strict=True
    ):
        for dim, (size, name, axes) in enumerate(zip(leaf.shape, logical, sharding.spec)):
            axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
            parts = math.prod(sharding.mesh.shape[axis] for axis in axes)
            if size % parts:
                mesh_keys = ", ".join(
                    f"config.partitioning.mesh.{axis}={sharding.mesh.shape[axis]}" for axis in axes
                )
                raise UserError(
                    f"parameter {_path_name(path)} {tuple(leaf.shape)}: dimension {dim} "
                    f"(logical axis {name!r}, size {size}) is split over mesh axes {axes} "
                    f"({parts} parts), which does not divide it; make "
                    f"{_SIZE_KEYS.get(name, 'its size')} a multiple of {parts}, or change "
                    f"{mesh_keys}, or map {name!r} elsewhere in config.partitioning.rules"
                )


def _path_name(path) -> str:
    return "/".join(str(getattr(key, "key", key)) for key in path)


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh) -> int:
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def check_batch_size(global_batch: int, mesh) -> None:
    dp = data_parallel_size(mesh)
    if global_batch % dp or global_batch % jax.process_count():
        raise UserError(
            f"config.data.batch_size={global_batch} is not divisible by the data-parallel size "
            f"{dp} (mesh data x fsdp) and the {jax.process_count()} processes"
        )


def host_batch_to_global(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """This process's rows of the batch -> global arrays sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, value)
        for name, value in batch.items()
    }
