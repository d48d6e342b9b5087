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

# GPT-2's value; not a config key because no experiment varies it.
LAYER_NORM_EPSILON = 1e-5


class DecoderBlock(nn.Module):
    """Pre-LN block: x + Dropout(Attn(LN(x))), then x + Dropout(Mlp(LN(x))).

    `deterministic` is a field rather than a call argument so that `nn.scan` and `nn.remat`
    see only array inputs.
    """

    num_heads: int
    head_dim: int
    d_ff: int
    dropout_rate: float
    dtype: str
    attention_impl: str
    deterministic: bool

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, None]:
        """x [batch, length, embed], mask bool [batch, 1, length, length] -> (x, None).

        The (carry, output) return is the `nn.scan` body contract.
        """
        normed = layers.LayerNorm(LAYER_NORM_EPSILON, self.dtype, name="pre_attention_norm")(x)
        attended = layers.MultiHeadAttention(
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            use_bias=True,
            dtype=self.dtype,
            attention_impl=self.attention_impl,
            name="attention",
        )(normed, normed, mask)
        x = x + nn.Dropout(self.dropout_rate)(attended, deterministic=self.deterministic)

        normed = layers.LayerNorm(LAYER_NORM_EPSILON, self.dtype, name="pre_mlp_norm")(x)
        transformed = layers.GeluMlp(d_ff=self.d_ff, use_bias=True, dtype=self.dtype, name="mlp")(
            normed
        )
        x = x + nn.Dropout(self.dropout_rate)(transformed, deterministic=self.deterministic)
        # [batch, length, embed]
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), None


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
    remat_policy: str  # one of REMAT_POLICIES
    attention_impl: str  # one of layers.ATTENTION_IMPLS

    def __post_init__(self) -> None:
        # Checked at construction so a bad config fails before any tracing.
        if self.dtype not in COMPUTE_DTYPES:
            raise UserError(f"model.dtype={self.dtype!r} is not one of {', '.join(COMPUTE_DTYPES)}")
        if self.remat_policy not in REMAT_POLICIES:
            raise UserError(
                f"model.remat_policy={self.remat_policy!r} is not one of "
                f"{', '.join(REMAT_POLICIES)}"
            )
        if self.attention_impl not in layers.ATTENTION_IMPLS:
            raise UserError(
                f"model.attention_impl={self.attention_impl!r} is not one of "
                f"{', '.join(layers.ATTENTION_IMPLS)}"
            )
        super().__post_init__()

    def _layer_stack(self, deterministic: bool) -> nn.Module:
        """num_layers DecoderBlocks as one scanned module (params stacked on axis 0)."""
        block_cls = DecoderBlock
        policy = REMAT_POLICIES[self.remat_policy]
        if self.remat_policy != "none":
            # prevent_cse=False is safe (and faster) inside scan: the loop already keeps
            # XLA from merging the recomputation with the forward pass.
            block_cls = nn.remat(block_cls, policy=policy, prevent_cse=False)
        scanned_cls = nn.scan(
            block_cls,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,),
            length=self.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        return scanned_cls(
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            d_ff=self.d_ff,
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            attention_impl=self.attention_impl,
            deterministic=deterministic,
            name="layers",
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
