"""Weighted cross-entropy with optional z-loss and label smoothing.

Every function returns sums, not means, so that gradient accumulation and multi-host
reduction stay exact: the trainer divides by the summed weights once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(
    logits: jax.Array,  # [batch, length, vocab] float32
    targets: jax.Array,  # [batch, length] int32
    weights: jax.Array,  # [batch, length]
    *,
    label_smoothing: float,
    z_loss: float,
) -> dict[str, jax.Array]:
    """Summed loss terms over weighted positions.

    With smoothing s over V classes the target distribution is (1 - s) on the target and
    s / V everywhere (so the target gets 1 - s + s / V). The z-loss adds
    `z_loss * log(Z)^2` per position, pulling the log-partition towards 0.
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    vocab = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1)  # [batch, length]
    log_probs = logits - log_z[..., None]
    target_log_prob = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    nll = -target_log_prob
    if label_smoothing:
        smooth = -jnp.mean(log_probs, axis=-1)
        nll = (1.0 - label_smoothing) * nll + label_smoothing * smooth
        # Subtract the entropy of the smoothed target so a perfect model scores 0.
        on = 1.0 - label_smoothing + label_smoothing / vocab
        off = label_smoothing / vocab
        nll -= -(on * jnp.log(on) + (vocab - 1) * off * jnp.log(off))
    z_term = z_loss * jnp.square(log_z)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum((nll + z_term) * weights),
        "nll_sum": jnp.sum(-target_log_prob * weights),
        "z_loss_sum": jnp.sum(z_term * weights),
        "correct_sum": jnp.sum(correct * weights),
        "weight_sum": jnp.sum(weights),
    }
