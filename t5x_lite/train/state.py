"""The train state: a plain pytree (step, params, optimizer state) that orbax saves as is."""

from __future__ import annotations

import flax.struct
import jax
import optax


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array
    params: dict
    opt_state: optax.OptState

    def apply_gradients(self, grads, tx: optax.GradientTransformation) -> TrainState:
        updates, opt_state = tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state)
