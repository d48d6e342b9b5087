"""Gradient accumulation equals one full-batch step; bf16 compute keeps fp32 master params."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite.data import inputs
from t5x_lite.errors import UserError
from t5x_lite.train import partitioning, trainer
from tests.train import test_trainer
from tests.train.test_trainer import T5_SMALL, t5_config, tiny_config

corpus = test_trainer.corpus  # the module-scoped text-file fixture

# Dropout off so every run computes the same function; no warmup so the first step moves
# the parameters. The same settings everywhere let tests share compiled programs.
EXACT = {"model.dropout_rate": 0.0, "optimizer.warmup_steps": 0, "train.num_steps": 3}
# Adam's first update is lr * g / (|g| + eps), about lr * sign(g): with the default eps it
# turns rounding noise in gradients that are exactly zero (attention key biases, which the
# softmax ignores) into full-size steps. A large eps makes the update proportional to the
# gradient, so equal parameters mean equal gradients.
LINEAR_ADAM = {"optimizer.eps": 1.0}


def _config(corpus, variant, **overrides):
    if variant.startswith("t5"):
        return t5_config(corpus, variant, **T5_SMALL, **EXACT, **overrides)
    return tiny_config(corpus, variant, **EXACT, **overrides)


def _run_and_batch(tmp_path, config):
    docs, _ = inputs.load_documents(config.data)
    run = trainer.build_run(config, inputs.load_or_train_tokenizer(config, str(tmp_path), docs))
    batch = next(iter(inputs.train_dataset(config, docs, run.tokenizer, run.objective)))
    return run, batch


def _steps(run, initial, host_batch, microbatches: int, num_steps: int = 1):
    """`num_steps` train steps on `host_batch` from `initial` -> (state, [sums, extras]...)."""
    run.config.train.microbatches = microbatches
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
        train_step = trainer.make_train_step(run)
        state = jax.device_put(initial, run.state_shardings)
        batch = partitioning.host_batch_to_global(host_batch, run.mesh)
        metrics = []
        for _ in range(num_steps):
            state, step_metrics = train_step(state, batch)
            metrics.append(step_metrics)
    return jax.device_get((state, metrics))


def _initial_state(run):
    return jax.device_get(trainer.init_state(run, run.config.seed))


def _loss(sums) -> float:
    return sum(float(s["loss_sum"] / max(s["weight_sum"], 1.0)) for s in sums.values())


@pytest.mark.parametrize("variant", ["gpt_tiny", "bert_tiny", "t5_tiny"])
def test_microbatches_step_equals_full_batch_step(tmp_path, corpus, variant):
    overrides = {} if variant.startswith("t5") else LINEAR_ADAM  # T5 uses Adafactor
    run, batch = _run_and_batch(tmp_path, _config(corpus, variant, **overrides))
    initial = _initial_state(run)
    full_state, [(full_sums, full_extras)] = _steps(run, initial, batch, 1)
    micro_state, [(micro_sums, micro_extras)] = _steps(run, initial, batch, 4)

    terms = [term.name for term in run.objective.loss_terms]
    assert sorted(micro_sums) == sorted(terms)
    if variant == "bert_tiny":
        # Per-micro-batch normalization would weight the terms wrongly: their weight sums
        # differ (masked tokens vs one NSP label per row).
        assert terms == ["mlm", "nsp"]
        assert full_sums["nsp"]["weight_sum"] == 4
        assert full_sums["mlm"]["weight_sum"] > 4
    for term in terms:
        for key, value in full_sums[term].items():
            np.testing.assert_allclose(micro_sums[term][key], value, rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(micro_extras["grad_norm"], full_extras["grad_norm"], rtol=1e-5)
    assert int(micro_state.step) == 1
    diff = jax.tree.map(lambda a, b: np.abs(a - b).max(), full_state.params, micro_state.params)
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), full_state.params, initial.params)
    assert max(jax.tree.leaves(diff)) < 1e-6, diff
    assert max(jax.tree.leaves(moved)) > 1e-4


@pytest.mark.parametrize("num_micro", [3, 8, 0])
def test_microbatches_must_split_batch_evenly(tmp_path, corpus, num_micro):
    # batch_size 4: 3 does not divide it, 8 leaves no rows, 0 is no micro-batch at all.
    run, _ = _run_and_batch(tmp_path, _config(corpus, "gpt_tiny"))
    run.config.train.microbatches = num_micro
    with pytest.raises(UserError, match=f"config.train.microbatches={num_micro} ") as error:
        trainer.make_train_step(run)
    assert "\n" not in str(error.value)


def test_microbatches_keep_every_data_parallel_device_busy():
    mesh = jax.sharding.AbstractMesh((2, 2, 1), partitioning.MESH_AXES)
    trainer.check_microbatches(8, 2, mesh)  # 4 rows per micro-batch, one per device
    with pytest.raises(UserError, match="data-parallel size 4 .*use a divisor of 2$"):
        trainer.check_microbatches(8, 4, mesh)


def _floating_dtypes(tree) -> set:
    return {
        leaf.dtype for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)
    }


def test_bfloat16_compute_keeps_float32_master_params(tmp_path, corpus):
    losses = {}
    for dtype in ("float32", "bfloat16"):
        config = _config(corpus, "gpt_tiny", **{"model.dtype": dtype})
        run, batch = _run_and_batch(tmp_path / dtype, config)
        # The second step's loss is the loss after one step (same batch, no dropout).
        state, [_, (sums, _)] = _steps(run, _initial_state(run), batch, 1, num_steps=2)
        assert _floating_dtypes(state.params) == {jnp.dtype(jnp.float32)}
        assert _floating_dtypes(state.opt_state) == {jnp.dtype(jnp.float32)}
        with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
            apply = functools.partial(run.model.apply, deterministic=True)
            outputs = jax.eval_shape(apply, {"params": state.params}, batch)
        assert outputs["logits"].dtype == jnp.float32
        losses[dtype] = _loss(sums)
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.02)
