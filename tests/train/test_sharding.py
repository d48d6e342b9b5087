"""The same run on any mesh: equal losses, parameters sharded as the rules say, and
settings that cannot shard rejected before compiling, naming the key to change."""

import types

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType

from t5x_lite.errors import UserError
from t5x_lite.train import partitioning
from tests.train import multi_device_checks

VARIANTS = list(multi_device_checks.ARCH_SIZES)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_same_losses_on_every_mesh(variant):
    losses = multi_device_checks.results()["equivalence"][variant]["losses"]
    one_device = losses[str((1, 1, 1))]
    assert len(one_device) == multi_device_checks.NUM_STEPS
    assert one_device[-1] < one_device[0]  # the steps train, so equal losses mean something
    for mesh in multi_device_checks.MESHES[1:]:
        np.testing.assert_allclose(losses[str(mesh)], one_device, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_partition_specs_follow_the_default_rules(variant):
    specs = multi_device_checks.results()["equivalence"][variant]["specs"]
    # DEFAULT_RULES: vocab -> tensor, embed -> fsdp, mlp -> tensor, layers -> None.
    assert specs == {
        "token_embed/embedding": ["tensor", "fsdp"],
        multi_device_checks.MLP_KERNELS[variant]: [None, "fsdp", "tensor"],
    }


@pytest.mark.slow
def test_settings_that_cannot_shard_fail_naming_the_keys():
    errors = multi_device_checks.results()["errors"]
    assert "config.partitioning.mesh" in errors["mesh_product"]
    assert "has 4 devices but 8 are available" in errors["mesh_product"]
    assert "config.data.batch_size=6" in errors["batch_size"]
    assert "data-parallel size 4" in errors["batch_size"]
    for case, path, needles in [
        ("num_heads", "layers/attention/key/bias", ["'heads', size 3", "config.model.num_heads"]),
        ("vocab_size", "token_embed/embedding", ["'vocab', size 258", "tokenizer.vocab_size"]),
    ]:
        message = errors[case]
        assert "\n" not in message
        assert f"parameter {path}" in message
        assert "('tensor',)" in message and "config.partitioning.mesh.tensor" in message
        for needle in needles:
            assert needle in message


def test_mesh_must_use_every_device():
    with pytest.raises(UserError, match=r"config.partitioning.mesh=.* has 4 devices but 8"):
        partitioning.mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 8)
    with pytest.raises(UserError, match="does not divide the 8 available devices"):
        partitioning.mesh_shape({"data": -1, "fsdp": 3, "tensor": 1}, 8)
    assert partitioning.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)


def test_batch_must_split_over_data_and_fsdp():
    mesh = types.SimpleNamespace(shape={"data": 2, "fsdp": 2, "tensor": 2})
    partitioning.check_batch_size(8, mesh)
    with pytest.raises(UserError, match=r"config.data.batch_size=6 .* data-parallel size 4"):
        partitioning.check_batch_size(6, mesh)


def _boxed(shape, names):
    return nn.Partitioned(jax.ShapeDtypeStruct(shape, np.float32), names=names)


def test_parameter_dimension_must_split_over_its_mesh_axes():
    mesh = AbstractMesh((1, 2, 4), partitioning.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    rules = (("embed", "fsdp"), ("heads", "tensor"), ("mlp", ("fsdp", "tensor")))
    good = {"ok": {"kernel": _boxed((6, 4, 16), ("embed", "heads", "mlp"))}}
    partitioning.check_divisible(good, partitioning.logical_shardings(good, mesh, rules))

    bad = {**good, "attention": {"query": _boxed((8, 6), ("embed", "heads"))}}
    with pytest.raises(UserError) as error:
        partitioning.check_divisible(bad, partitioning.logical_shardings(bad, mesh, rules))
    message = str(error.value)
    assert message.startswith("parameter attention/query (8, 6): dimension 1 (logical axis")
    assert "'heads', size 6) is split over mesh axes ('tensor',) (4 parts)" in message
    assert "config.model.num_heads a multiple of 4" in message
    assert "config.partitioning.mesh.tensor=4" in message
    assert "'heads' elsewhere in config.partitioning.rules" in message

    # A dimension split over two mesh axes must divide by their product.
    bad = {"mlp": {"wi": {"bias": _boxed((12,), ("mlp",))}}}
    with pytest.raises(UserError, match=r"\('fsdp', 'tensor'\) \(8 parts\).*d_ff"):
        partitioning.check_divisible(bad, partitioning.logical_shardings(bad, mesh, rules))
