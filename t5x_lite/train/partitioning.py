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


def make_mesh(mesh_config) -> jax.sharding.Mesh:
    shape = mesh_shape(mesh_config, jax.device_count())
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def rules(partitioning_config) -> tuple:
    return tuple((name, axes) for name, axes in partitioning_config.rules)


def logical_shardings(abstract_tree, mesh, logical_rules):
    """Shardings for a pytree of boxed (logically annotated) abstract values."""
    specs = nn.get_partition_spec(abstract_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, logical_rules)


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
