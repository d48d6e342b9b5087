"""Cross-entropy terms against hand-computed values; schedules at known steps."""

import math

import jax
import jax.numpy as jnp
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


def _autodiff_cross_entropy(logits, targets, weights, *, label_smoothing, z_loss):
    """The loss written plainly (autodiff through log-softmax and the gather): the
    reference the custom gradient of losses.cross_entropy must match."""
    import jax
    import jax.numpy as jnp

    vocab = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    log_probs = logits - log_z[..., None]
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    if label_smoothing:
        on = 1.0 - label_smoothing + label_smoothing / vocab
        off = label_smoothing / vocab
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_probs, axis=-1)
        nll += on * jnp.log(on) + (vocab - 1) * off * jnp.log(off)
    return jnp.sum((nll + z_loss * jnp.square(log_z)) * weights)


@pytest.mark.parametrize("label_smoothing,z_loss", [(0.0, 0.0), (0.1, 1e-4), (0.3, 0.0)])
def test_cross_entropy_gradient_matches_autodiff(label_smoothing, z_loss):
    import jax

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2, 5, 11)).astype(np.float32)
    targets = rng.integers(0, 11, (2, 5)).astype(np.int32)
    weights = rng.integers(0, 2, (2, 5)).astype(np.float32)
    kwargs = dict(label_smoothing=label_smoothing, z_loss=z_loss)

    def ours(x):
        return losses.cross_entropy(x, targets, weights, **kwargs)["loss_sum"]

    def reference(x):
        return _autodiff_cross_entropy(x, targets, weights, **kwargs)

    assert float(ours(logits)) == pytest.approx(float(reference(logits)), rel=1e-6)
    np.testing.assert_allclose(
        jax.grad(ours)(logits), jax.grad(reference)(logits), rtol=1e-5, atol=1e-6
    )
    # Worked out: without smoothing or z-loss, d loss / d logits = (softmax - one-hot) * w.
    if not label_smoothing and not z_loss:
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        expected = (probs - np.eye(11)[targets]) * weights[..., None]
        np.testing.assert_allclose(jax.grad(ours)(logits), expected, rtol=1e-5, atol=1e-6)


def test_cross_entropy_gradient_jits_for_bfloat16_logits():
    import jax
    import jax.numpy as jnp

    logits = jnp.asarray(np.linspace(-2, 2, 2 * 3 * 7).reshape(2, 3, 7), jnp.bfloat16)
    targets = jnp.asarray([[0, 6, 3], [1, 2, 5]], jnp.int32)
    weights = jnp.ones((2, 3))

    def loss(x):
        return losses.cross_entropy(x, targets, weights, label_smoothing=0.0, z_loss=0.0)[
            "loss_sum"
        ]

    grad = jax.jit(jax.grad(loss))(logits)
    assert grad.dtype == jnp.bfloat16 and grad.shape == logits.shape
    # Each row's gradient sums to 0 (softmax sums to 1, minus one one-hot).
    np.testing.assert_allclose(np.asarray(grad, np.float32).sum(-1), 0.0, atol=2e-2)


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


def test_is_first_argmax_equals_argmax_with_ties_and_non_finite_rows():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, 50)).astype(np.float32)
    targets = rng.integers(0, 50, size=12)
    targets[::3] = logits.argmax(-1)[::3]  # some correct rows

    def check(logits, targets):
        logits, targets = jnp.asarray(logits), jnp.asarray(targets, jnp.int32)
        target_logit = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
        got = jax.jit(losses.is_first_argmax)(logits, targets, target_logit)
        np.testing.assert_array_equal(got, np.asarray(jnp.argmax(logits, axis=-1) == targets))
        return np.asarray(got)

    assert check(logits, targets).sum() >= 4  # the one-maximum path, some rows correct
    tied = logits.copy()
    tied[:, [5, 9]] = 10.0  # every row: two maxima, at 5 and 9
    assert check(tied, np.full(12, 5)).all()  # the first maximum is the argmax
    assert not check(tied, np.full(12, 9)).any()  # the second is not
    assert check(np.zeros((3, 50), np.float32), np.array([0, 1, 49])).tolist() == [
        True,
        False,
        False,
    ]
    odd = logits.copy()
    odd[0, 3], odd[1, 4], odd[2, 7] = np.nan, np.inf, -np.inf
    check(odd, np.array([3, 4, 7] + list(targets[3:])))
