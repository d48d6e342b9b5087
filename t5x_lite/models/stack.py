"""The residual Transformer block and the scanned, optionally rematerialized stack of them.

Shared by every architecture so that one place decides how layers are stacked with
`nn.scan` (every parameter gets a leading 'layers' axis), how far that loop is unrolled
on each backend (`layer_unroll`), what each remat policy keeps for the backward pass,
and which compute dtypes, remat policies and attention implementations a config may name.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import flax.linen as nn
import jax

from t5x_lite.errors import UserError
from t5x_lite.models import layers

COMPUTE_DTYPES = ("float32", "bfloat16")

# What each remat policy keeps from the forward pass for the backward pass. "full" saves
# nothing inside a layer (recomputes it all); "dots_saveable" keeps the weight matmuls
# (no batch dims) and recomputes the cheap elementwise ops and the attention scores.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

# Where a block's LayerNorms sit; see TransformerBlock.
LAYER_NORM_PLACEMENTS = ("pre", "post")


def check_choice(key: str, value: Any, choices: Collection[str]) -> None:
    """UserError naming `config.model.<key>` unless `value` is one of `choices`."""
    if value not in choices:
        raise UserError(f"model.{key}={value!r} is not one of {', '.join(choices)}")


def check_compute_options(*, dtype: str, remat_policy: str, attention_impl: str) -> None:
    """Validates the options every architecture shares; call from `__post_init__` so a
    bad config fails at construction, before any tracing."""
    check_choice("dtype", dtype, COMPUTE_DTYPES)
    check_choice("remat_policy", remat_policy, REMAT_POLICIES)
    check_choice("attention_impl", attention_impl, layers.ATTENTION_IMPLS)


class TransformerBlock(nn.Module):
    """Self-attention then MLP, each a residual sublayer with its LayerNorm placed by
    `layer_norm`:

      "pre"  (GPT-2):        x + Dropout(Sublayer(LN(x)))
      "post" (BERT, 2017):   LN(x + Dropout(Sublayer(x)))

    The norms are named `<layer_norm>_attention_norm` and `<layer_norm>_mlp_norm`, so a
    checkpoint of one placement cannot be loaded silently into the other.
    `deterministic` and `decode` are fields rather than call arguments so that `nn.scan`
    and `nn.remat` see only array inputs. `decode=True` caches the self-attention's keys
    and values (causal decoders only; see `layers.MultiHeadAttention`).
    """

    num_heads: int
    head_dim: int
    d_ff: int
    dropout_rate: float
    layer_norm: str  # one of LAYER_NORM_PLACEMENTS
    layer_norm_epsilon: float
    activation: str  # one of layers.ACTIVATIONS
    dtype: str
    attention_impl: str
    deterministic: bool
    decode: bool = False

    def _residual(self, x: jax.Array, sublayer, name: str) -> jax.Array:
        """x [batch, length, embed] -> x with `sublayer` added as a residual branch."""
        norm = layers.LayerNorm(
            self.layer_norm_epsilon, self.dtype, name=f"{self.layer_norm}_{name}_norm"
        )
        dropout = layers.Dropout(self.dropout_rate)
        if self.layer_norm == "pre":
            return x + dropout(sublayer(norm(x)), deterministic=self.deterministic)
        return norm(x + dropout(sublayer(x), deterministic=self.deterministic))

    @nn.compact
    def __call__(
        self, x: jax.Array, mask: jax.Array, cache_index: jax.Array | None = None
    ) -> tuple[jax.Array, None]:
        """x [batch, length, embed], mask bool [batch, 1, length, kv_length] -> (x, None).

        kv_length is `length`, or the cache's max_length when decoding, where cache_index
        int32 [batch] is the slot each row's chunk is written at. The (carry, output)
        return is the `nn.scan` body contract.
        """
        attention = layers.MultiHeadAttention(
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            use_bias=True,
            dtype=self.dtype,
            attention_impl=self.attention_impl,
            decode=self.decode,
            name="attention",
        )
        x = self._residual(
            x, lambda normed: attention(normed, normed, mask, cache_index), "attention"
        )
        mlp = layers.GeluMlp(
            d_ff=self.d_ff,
            use_bias=True,
            activation=self.activation,
            dtype=self.dtype,
            name="mlp",
        )
        x = self._residual(x, mlp, "mlp")
        # [batch, length, embed]
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), None


def layer_unroll(num_layers: int) -> int:
    """How many layers one iteration of the scanned stack runs, on the backend that
    traces the model.

    On accelerators 1: a loop over layers keeps compile time flat in depth. XLA:CPU
    instead runs the loop's bookkeeping as separate ops between the layers (zero-filled
    gradient buffers, copies of the carry, dynamic slices and updates of the stacked
    parameters): in gpt_tiny's fine-tuning step that was 30% of the op time, and
    unrolling every layer took the step from ~142 to ~111 ms; the fp32 step of
    `roberta_small` went from 4.7 to 3.6 s. The parameters keep their stacked layout
    either way, so checkpoints do not depend on it; compile time grows with depth
    (gpt_small, 8 layers: 4.1 -> 5.6 s).
    """
    return num_layers if jax.default_backend() == "cpu" else 1


def scanned_stack(
    block_cls: type[nn.Module],
    *,
    num_layers: int,
    remat_policy: str,
    num_broadcast_inputs: int,
    name: str,
    **block_fields: Any,
) -> nn.Module:
    """`num_layers` copies of `block_cls` as one module, parameters stacked on axis 0.

    The block is called as block(carry, *broadcast_inputs) -> (carry, None); the
    `num_broadcast_inputs` arrays after the carry (masks, encoder outputs) are the same
    for every layer. Create inside the parent's compact method.
    """
    if remat_policy != "none":
        # prevent_cse=False is safe (and faster) inside scan: the loop already keeps
        # XLA from merging the recomputation with the forward pass.
        block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[remat_policy], prevent_cse=False)
    scanned_cls = nn.scan(
        block_cls,
        # The decoding cache (DecoderOnly, EncoderDecoder) is per layer, like the params.
        variable_axes={"params": 0, "cache": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * num_broadcast_inputs,
        length=num_layers,
        unroll=layer_unroll(num_layers),
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    return scanned_cls(name=name, **block_fields)
