"""BERT-style encoder-only Transformer (masked LM + next-sentence prediction) over packed rows.

Token + learned position (indexed by the per-token `encoder_positions`, so every packed
example starts at 0) + token-type embeddings, summed; bidirectional self-attention
restricted to the packing segment; blocks stacked with `nn.scan` as in DecoderOnly.

LayerNorm placement (`layer_norm`):
  "post"  original BERT: LayerNorm after the embedding sum and after every residual add;
          the last block's output is already normalized.
  "pre"   no embedding LayerNorm (each block normalizes its own input) and one final
          LayerNorm after the stack, since pre-LN residual streams grow with depth; this
          is the placement of GPT-2 and of Megatron-LM's BERT.

Heads, on the final hidden states:
  MLM  dense(embed->embed) + activation + LayerNorm, then the token embedding transposed
       (tied, as BERT) plus an output bias.
  NSP  pooler = dense + tanh on the first token of each row ([CLS]), then dense(embed->2).
  classifier (fine-tuning, `num_classes` > 0): dropout on the pooled [CLS], then
       dense(embed->num_classes), as BERT's sequence classification; parameters under
       `classifier`, which a pretrained checkpoint does not have.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_lite.models import layers, stack

NUM_NSP_CLASSES = 2  # is-next, not-next


class EncoderOnly(nn.Module):
    """Masked LM + NSP. Fields are `config.model` minus `arch`."""

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    head_dim: int
    d_ff: int
    max_len: int  # rows of the position table; positions must be < max_len
    type_vocab_size: int  # rows of the token-type table (BERT: 2, sentence A / B)
    dropout_rate: float
    layer_norm: str  # one of stack.LAYER_NORM_PLACEMENTS; see the module docstring
    layer_norm_epsilon: float  # BERT: 1e-12
    activation: str  # one of layers.ACTIVATIONS; BERT: "gelu" (exact erf)
    dtype: str  # computation dtype: "float32" or "bfloat16"; params stay float32
    remat_policy: str  # one of stack.REMAT_POLICIES
    attention_impl: str  # one of layers.ATTENTION_IMPLS
    num_classes: int  # > 0 adds the fine-tuning classifier on the pooled [CLS]; 0 = none

    def __post_init__(self) -> None:
        stack.check_compute_options(
            dtype=self.dtype, remat_policy=self.remat_policy, attention_impl=self.attention_impl
        )
        stack.check_choice("layer_norm", self.layer_norm, stack.LAYER_NORM_PLACEMENTS)
        stack.check_choice("activation", self.activation, layers.ACTIVATIONS)
        super().__post_init__()

    def _norm(self, name: str) -> layers.LayerNorm:
        return layers.LayerNorm(self.layer_norm_epsilon, self.dtype, name=name)

    def _dense(
        self,
        features: int,
        kernel_axes: layers.AxisNames,
        kernel_init: layers.Initializer,
        name: str,
    ) -> nn.Module:
        """A biased embed -> features projection; kernel [embed, features]."""
        return layers.DenseGeneral(
            features=(features,),
            contract_axes=1,
            kernel_axes=kernel_axes,
            use_bias=True,
            dtype=self.dtype,
            kernel_init=kernel_init,
            name=name,
        )

    def _embed(
        self, batch: Mapping[str, jax.Array], deterministic: bool
    ) -> tuple[jax.Array, layers.Embed]:
        """-> (x [batch, length, embed], the token table for the tied MLM output)."""
        token_embed = layers.Embed(
            self.vocab_size, self.d_model, ("vocab", "embed"), self.dtype, name="token_embed"
        )
        # Row dims unnamed, as in DecoderOnly: the tables are small, and 'length' may be
        # sharded in ways max_len need not divide.
        position_embed = layers.Embed(
            self.max_len, self.d_model, (None, "embed"), self.dtype, name="position_embed"
        )
        token_type_embed = layers.Embed(
            self.type_vocab_size, self.d_model, (None, "embed"), self.dtype, name="token_type_embed"
        )
        x = (
            token_embed(batch["encoder_input_tokens"])
            + position_embed(batch["encoder_positions"])
            + token_type_embed(batch["encoder_token_type_ids"])
        )  # [batch, length, embed]
        if self.layer_norm == "post":
            x = self._norm("embed_norm")(x)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return layers.Dropout(self.dropout_rate)(x, deterministic=deterministic), token_embed

    def _layer_stack(self, deterministic: bool) -> nn.Module:
        """num_layers blocks as one scanned module (params stacked on axis 0)."""
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
            layer_norm=self.layer_norm,
            layer_norm_epsilon=self.layer_norm_epsilon,
            activation=self.activation,
            dtype=self.dtype,
            attention_impl=self.attention_impl,
            deterministic=deterministic,
        )

    def _mlm_logits(self, hidden: jax.Array, token_embed: layers.Embed) -> jax.Array:
        """hidden [batch, length, embed] -> float32 logits [batch, length, vocab]."""
        # A [d_model, d_model] kernel cannot name 'embed' twice (one mesh axis per dim);
        # its output dim takes 'mlp', as the MLP's hidden dim does.
        transformed = self._dense(
            self.d_model, ("embed", "mlp"), layers.fan_in_init(1), "mlm_transform"
        )(hidden)
        transformed = self._norm("mlm_norm")(layers.ACTIVATIONS[self.activation](transformed))
        bias = layers.param(
            self, "mlm_bias", nn.initializers.zeros_init(), ("vocab",), (self.vocab_size,)
        )
        logits = token_embed.attend(transformed) + bias  # float32, as Embed.attend returns
        # [batch, length, vocab]
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))

    def _pool_and_classify(self, hidden: jax.Array) -> tuple[jax.Array, jax.Array]:
        """hidden [batch, length, embed] -> (pooled [batch, embed], float32 NSP logits
        [batch, 1, 2]). The length-1 axis lets the loss score NSP like a sequence."""
        first_token = hidden[:, 0]  # [batch, embed]: the [CLS] position
        pooler = self._dense(self.d_model, ("embed", "mlp"), layers.fan_in_init(1), "pooler")
        pooled = nn.with_logical_constraint(jnp.tanh(pooler(first_token)), ("batch", "embed"))
        # The small init of the output heads (as the tied MLM table): NSP starts near
        # uniform, at a loss near ln 2, instead of with logits of std ~0.6.
        classifier = self._dense(NUM_NSP_CLASSES, ("embed", None), layers.embedding_init, "nsp")
        nsp_logits = classifier(pooled)
        return pooled, nsp_logits.astype(jnp.float32)[:, None, :]

    @nn.compact
    def __call__(
        self, batch: Mapping[str, jax.Array], *, deterministic: bool
    ) -> dict[str, jax.Array]:
        """Reads encoder_input_tokens / encoder_segment_ids / encoder_positions /
        encoder_token_type_ids (int32 [batch, length]; segment 0 = padding); other keys
        are ignored.

        With 'mlm_positions' (int32 [batch, P], from the masked LM objective's
        `device_features`) the MLM head runs only there: 'mlm_logits' is [batch, P, vocab].

        Returns {'mlm_logits': float32 [batch, length, vocab], 'nsp_logits': float32
        [batch, 1, 2], 'pooled': [batch, embed], 'hidden': [batch, length, embed]}, the
        last two in the compute dtype, and with num_classes > 0 'class_logits' float32
        [batch, 1, num_classes].
        """
        x, token_embed = self._embed(batch, deterministic)
        segment_ids = batch["encoder_segment_ids"]
        # Bidirectional within a segment; padding (segment 0) sees only padding, so no
        # query row is ever fully masked.
        mask = layers.segment_mask(segment_ids, segment_ids)  # [batch, 1, length, length]
        hidden, _ = self._layer_stack(deterministic)(x, mask)
        if self.layer_norm == "pre":
            hidden = self._norm("final_norm")(hidden)
        pooled, nsp_logits = self._pool_and_classify(hidden)
        mlm_hidden = hidden
        if "mlm_positions" in batch:  # [batch, P, embed]
            mlm_hidden = jnp.take_along_axis(hidden, batch["mlm_positions"][..., None], axis=1)
        outputs = {
            "mlm_logits": self._mlm_logits(mlm_hidden, token_embed),
            "nsp_logits": nsp_logits,
            "pooled": pooled,
            "hidden": hidden,
        }
        if self.num_classes:
            features = layers.Dropout(self.dropout_rate)(pooled, deterministic=deterministic)
            outputs["class_logits"] = layers.ClassifierHead(
                self.num_classes, self.dtype, name="classifier"
            )(features[:, None])  # [batch, 1, num_classes], scored like a sequence
        return outputs
