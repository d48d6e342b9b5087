"""GPT-style decoder-only Transformer (causal LM) over packed rows.

Learned absolute positions indexed by the per-token `decoder_positions` (so each packed
document starts at position 0), pre-LayerNorm blocks stacked with `nn.scan` (compile time
flat in depth; parameters get a leading 'layers' axis), optional per-layer remat, and an
output head tied to the token embedding or a separate ('embed', 'vocab') kernel.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_lite.models import layers, stack

# GPT-2's values; not config keys because no experiment varies them.
LAYER_NORM_EPSILON = 1e-5
ACTIVATION = "gelu_tanh"


class DecoderOnly(nn.Module):
    """Causal LM. Fields are `config.model` minus `arch`."""

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    head_dim: int
    d_ff: int
    max_len: int  # rows of the position table; positions must be < max_len
    dropout_rate: float
    tie_embeddings: bool
    dtype: str  # computation dtype: "float32" or "bfloat16"; params stay float32
    remat_policy: str  # one of stack.REMAT_POLICIES
    attention_impl: str  # one of layers.ATTENTION_IMPLS

    def __post_init__(self) -> None:
        stack.check_compute_options(
            dtype=self.dtype, remat_policy=self.remat_policy, attention_impl=self.attention_impl
        )
        super().__post_init__()

    def _layer_stack(self, deterministic: bool) -> nn.Module:
        """num_layers pre-LN blocks as one scanned module (params stacked on axis 0)."""
        return stack.scanned_stack(
            stack.TransformerBlock,
            num_layers=self.num_layers,
            remat_policy=self.remat_policy,
            num_broadcast_inputs=1,  # the mask
            name="layers",
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            d_ff=self.d_ff,
            dropout_rate=self.dropout_rate,
            layer_norm="pre",
            layer_norm_epsilon=LAYER_NORM_EPSILON,
            activation=ACTIVATION,
            dtype=self.dtype,
            attention_impl=self.attention_impl,
            deterministic=deterministic,
        )

    def _output_logits(self, x: jax.Array, token_embed: layers.Embed) -> jax.Array:
        """x [batch, length, embed] -> float32 logits [batch, length, vocab]."""
        if self.tie_embeddings:
            return token_embed.attend(x)
        kernel = self.param(
            "logits_kernel",
            # Same scale as the tied table, so tied and untied runs start alike.
            nn.with_logical_partitioning(layers.embedding_init, ("embed", "vocab")),
            (self.d_model, self.vocab_size),
            layers.PARAM_DTYPE,
        )
        # float32 accumulation, as in Embed.attend.
        return jnp.einsum(
            "ble,ev->blv",
            x,
            kernel.astype(jnp.dtype(self.dtype)),
            preferred_element_type=jnp.float32,
        )

    @nn.compact
    def __call__(
        self, batch: Mapping[str, jax.Array], *, deterministic: bool
    ) -> dict[str, jax.Array]:
        """Reads decoder_input_tokens / decoder_segment_ids / decoder_positions (int32
        [batch, length]; segment 0 = padding); other keys are ignored.

        Returns {'logits': float32 [batch, length, vocab]}.
        """
        tokens = batch["decoder_input_tokens"]
        segment_ids = batch["decoder_segment_ids"]
        positions = batch["decoder_positions"]

        token_embed = layers.Embed(
            self.vocab_size, self.d_model, ("vocab", "embed"), self.dtype, name="token_embed"
        )
        # Row dim unnamed: the table is small, and 'length' may be sharded (sequence
        # parallelism) in ways max_len need not divide.
        position_embed = layers.Embed(
            self.max_len, self.d_model, (None, "embed"), self.dtype, name="position_embed"
        )
        x = token_embed(tokens) + position_embed(positions)  # [batch, length, embed]
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)

        mask = layers.causal_segment_mask(segment_ids)  # [batch, 1, length, length]
        x, _ = self._layer_stack(deterministic)(x, mask)
        x = layers.LayerNorm(LAYER_NORM_EPSILON, self.dtype, name="final_norm")(x)

        logits = self._output_logits(x, token_embed)
        # [batch, length, vocab]
        logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
        return {"logits": logits}
