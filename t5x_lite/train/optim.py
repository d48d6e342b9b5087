"""Optimizers and learning-rate schedules, built from `config.optimizer`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from t5x_lite.errors import UserError


def learning_rate_schedule(opt_config, num_steps: int) -> optax.Schedule:
    """Linear warmup to the peak, then cosine or linear decay to `end_lr_fraction` of it
    at `num_steps`, or constant; or T5's inverse square root."""
    peak = opt_config.learning_rate
    warmup = opt_config.warmup_steps
    if opt_config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak,
            warmup_steps=warmup,
            decay_steps=max(num_steps, warmup + 1),
            end_value=peak * opt_config.end_lr_fraction,
        )
    if opt_config.schedule == "linear":  # BERT's and GPT-1's fine-tuning schedule
        return optax.join_schedules(
            [
                optax.linear_schedule(0.0, peak, max(warmup, 1)),
                optax.linear_schedule(
                    peak, peak * opt_config.end_lr_fraction, max(num_steps - warmup, 1)
                ),
            ],
            [warmup],
        )
    if opt_config.schedule == "rsqrt":
        # T5: constant `peak` for `warmup` steps, then peak * sqrt(warmup / step) (with
        # peak 0.01 and warmup 10k this is T5's 1 / sqrt(max(step, 10k))).
        warmup_f = float(max(warmup, 1))
        return lambda step: peak * jnp.sqrt(warmup_f / jnp.maximum(step, warmup_f))
    if opt_config.schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, max(warmup, 1)), optax.constant_schedule(peak)],
            [warmup],
        )
    raise UserError(
        f"config.optimizer.schedule={opt_config.schedule!r} is unknown; "
        "use cosine, linear, constant or rsqrt"
    )


def decay_mask(params):
    """Weight decay on matrices (embeddings, kernels) only, not biases or norm scales."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: (
            "bias" not in jax.tree_util.keystr(path) and "scale" not in jax.tree_util.keystr(path)
        ),
        params,
    )


def make_optimizer(opt_config, num_steps: int) -> optax.GradientTransformation:
    """AdamW (decoupled weight decay) or Adafactor (T5: factored second moments, update
    clipping, updates scaled by the parameter's RMS, no momentum), after global-norm
    clipping of the gradient."""
    schedule = learning_rate_schedule(opt_config, num_steps)
    if opt_config.name == "adamw":
        update = optax.adamw(
            schedule,
            b1=opt_config.b1,
            b2=opt_config.b2,
            eps=opt_config.eps,
            weight_decay=opt_config.weight_decay,
            mask=decay_mask,
        )
    elif opt_config.name == "adafactor":
        update = optax.adafactor(
            schedule,
            decay_rate=opt_config.adafactor_decay_rate,
            clipping_threshold=opt_config.adafactor_clipping_threshold,
            multiply_by_parameter_scale=opt_config.adafactor_multiply_by_parameter_scale,
            weight_decay_rate=opt_config.weight_decay or None,
            weight_decay_mask=decay_mask,
        )
    else:
        raise UserError(
            f"config.optimizer.name={opt_config.name!r} is unknown; use adamw or adafactor"
        )
    if opt_config.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), update)
    return update
