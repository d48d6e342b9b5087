"""Cross-entropy terms against hand-computed values; schedules at known steps."""

import math

import ml_collections
import numpy as np
import optax
import pytest

from t5x_lite import config as config_lib
from t5x_lite.errors import UserError
from t5x_lite.train import losses, optim
from tests.train.test_trainer import PRETRAIN


def _sums(**kwargs):
    # One row, two positions, vocabulary of 3; the second position has weight 0.
    logits = np.array([[[0.0, 1.0, 2.0], [5.0, 0.0, 0.0]]], np.float32)
    targets = np.array([[2, 1]], np.int32)
    weights = np.array([[1.0, 0.0]], np.float32)
    return {
        k: float(v) for k, v in losses.cross_entropy(logits, targets, weights, **kwargs).items()
    }


def test_cross_entropy_matches_hand_computation():
    log_z = math.log(1 + math.e + math.e**2)
    out = _sums(label_smoothing=0.0, z_loss=0.0)
    assert out["nll_sum"] == pytest.approx(log_z - 2.0, rel=1e-6)
    assert out["loss_sum"] == pytest.approx(log_z - 2.0, rel=1e-6)
    assert out["weight_sum"] == 1.0 and out["correct_sum"] == 1.0  # argmax 2 == target


def test_z_loss_adds_squared_log_partition():
    log_z = math.log(1 + math.e + math.e**2)
    out = _sums(label_smoothing=0.0, z_loss=1e-2)
    assert out["z_loss_sum"] == pytest.approx(1e-2 * log_z**2, rel=1e-6)
    assert out["loss_sum"] == pytest.approx(log_z - 2.0 + 1e-2 * log_z**2, rel=1e-6)
    assert out["nll_sum"] == pytest.approx(log_z - 2.0, rel=1e-6)


def test_label_smoothing_is_kl_to_smoothed_target():
    s = 0.3
    log_p = np.array([0.0, 1.0, 2.0]) - math.log(1 + math.e + math.e**2)
    q = np.full(3, s / 3)
    q[2] += 1 - s
    kl = float(np.sum(q * (np.log(q) - log_p)))
    assert _sums(label_smoothing=s, z_loss=0.0)["loss_sum"] == pytest.approx(kl, rel=1e-5)


def _opt(**overrides):
    """The shipped optimizer section (so every key the code reads exists), overridden."""
    base = config_lib.load(PRETRAIN).optimizer.to_dict()
    base.update(learning_rate=1.0, schedule="cosine", warmup_steps=10, end_lr_fraction=0.1)
    return ml_collections.ConfigDict({**base, **overrides})


def test_cosine_schedule_values():
    schedule = optim.learning_rate_schedule(_opt(), num_steps=110)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(0.5)
    assert float(schedule(10)) == pytest.approx(1.0)
    assert float(schedule(60)) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-5)  # halfway down
    assert float(schedule(110)) == pytest.approx(0.1, rel=1e-5)


def test_constant_schedule_values():
    schedule = optim.learning_rate_schedule(_opt(schedule="constant"), num_steps=100)
    assert [float(schedule(s)) for s in (0, 5, 10, 99)] == pytest.approx([0.0, 0.5, 1.0, 1.0])


def test_linear_schedule_values():
    # BERT's: warmup 0 -> 1 over 10 steps, then down to end_lr_fraction (0.1) at step 110.
    schedule = optim.learning_rate_schedule(_opt(schedule="linear"), num_steps=110)
    steps = (0, 5, 10, 35, 60, 110, 200)
    assert [float(schedule(s)) for s in steps] == pytest.approx(
        [0.0, 0.5, 1.0, 0.775, 0.55, 0.1, 0.1], rel=1e-6
    )
    no_warmup = optim.learning_rate_schedule(_opt(schedule="linear", warmup_steps=0), 10)
    assert [float(no_warmup(s)) for s in (0, 5, 10)] == pytest.approx([1.0, 0.55, 0.1])


def test_rsqrt_schedule_is_t5s():
    schedule = optim.learning_rate_schedule(
        _opt(schedule="rsqrt", learning_rate=0.01, warmup_steps=10_000), num_steps=10**6
    )
    for step in (0, 1, 5_000, 10_000, 40_000, 250_000):
        assert float(schedule(step)) == pytest.approx(1 / math.sqrt(max(step, 10_000)), rel=1e-6)


def test_adafactor_factors_second_moments_and_descends():
    import jax
    import jax.numpy as jnp

    params = {"kernel": jnp.ones((256, 192)), "bias": jnp.ones((192,))}
    tx = optim.make_optimizer(
        _opt(
            name="adafactor",
            schedule="constant",
            warmup_steps=0,
            learning_rate=0.1,
            weight_decay=0.0,
        ),
        10,
    )
    state = tx.init(params)
    shapes = {tuple(x.shape) for x in jax.tree.leaves(state)}
    assert (256,) in shapes and (192,) in shapes  # row and column statistics of the kernel
    assert (256, 192) not in shapes  # no full second-moment matrix
    loss = lambda p: jnp.sum((p["kernel"] - 3.0) ** 2) + jnp.sum((p["bias"] - 3.0) ** 2)
    before = loss(params)
    for _ in range(5):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    assert loss(params) < before


def test_unknown_optimizer_settings_fail_clearly():
    with pytest.raises(UserError, match="config.optimizer.schedule"):
        optim.learning_rate_schedule(_opt(schedule="step"), 10)
    with pytest.raises(UserError, match="config.optimizer.name"):
        optim.make_optimizer(_opt(name="sgd"), 10)


def test_weight_decay_skips_biases_and_scales():
    mask = optim.decay_mask({"dense": {"kernel": 1, "bias": 2}, "norm": {"scale": 3}})
    assert mask == {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False}}
