"""GPT-style decoder-only Transformer (causal or prefix LM) over packed rows.

Learned absolute positions indexed by the per-token `decoder_positions` (so each packed
document starts at position 0), pre-LayerNorm blocks stacked with `nn.scan` (parameters
get a leading 'layers' axis; unrolled on CPU, `stack.layer_unroll`), optional per-layer
remat, and an output head tied to the token embedding or a separate ('embed', 'vocab')
kernel.

An optional `decoder_prefix_mask` feature turns the causal LM into a prefix LM: prefix
tokens attend to each other in both directions (`layers.prefix_lm_segment_mask`).

Incremental decoding (`decode=True`) keeps every layer's keys and values in a 'cache'
collection, for unpacked rows that start at position 0; see `init_decode_cache` for the
calling sequence.

Fine-tuning (`num_classes` > 0, GPT-1's recipe): a linear classifier on the final hidden
state at the token that `class_token_index` points to ([EXTRACT], the row's last
token), after dropout; its parameters sit under `classifier`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_lite.models import layers, matmul, stack

# GPT-2's values; not config keys because no experiment varies them.
LAYER_NORM_EPSILON = 1e-5
ACTIVATION = "gelu_tanh"


class DecoderOnly(nn.Module):
    """Causal (or prefix) LM. Fields are `config.model` minus `arch`."""

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
    num_classes: int  # > 0 adds the classifier read at class_token_index; 0 = none

    def __post_init__(self) -> None:
        stack.check_compute_options(
            dtype=self.dtype, remat_policy=self.remat_policy, attention_impl=self.attention_impl
        )
        super().__post_init__()

    def _layer_stack(self, deterministic: bool, decode: bool) -> nn.Module:
        """num_layers pre-LN blocks as one scanned module (params stacked on axis 0)."""
        return stack.scanned_stack(
            stack.TransformerBlock,
            num_layers=self.num_layers,
            # Remat only pays off in a backward pass, which decoding never runs.
            remat_policy="none" if decode else self.remat_policy,
            num_broadcast_inputs=2 if decode else 1,  # the mask (and cache_index)
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
            decode=decode,
        )

    def _full_inputs(self, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """Training / scoring of packed rows -> (positions [batch, length], mask bool
        [batch, 1, length, length]): causal, or prefix LM if the batch has
        decoder_prefix_mask, and within a segment."""
        segment_ids = batch["decoder_segment_ids"]
        if "decoder_prefix_mask" in batch:
            mask = layers.prefix_lm_segment_mask(segment_ids, batch["decoder_prefix_mask"])
        else:
            mask = layers.causal_segment_mask(segment_ids)
        return batch["decoder_positions"], mask

    def _decode_inputs(self, batch: Mapping[str, jax.Array]):
        """Incremental decoding of unpacked rows -> (positions [batch, length], mask bool
        [batch, 1, length, kv_length], cache_index int32 [batch]).

        The first call (no cache yet) sees full-length [batch, max_length] rows, creates
        the cache and runs as `_full_inputs`. Each later call takes a chunk [batch, length]
        (a whole prompt, or one token) and writes it at the row's own cache index, which
        then advances by the row's count of nonzero decoder_segment_ids: rows of
        different lengths are right-padded (segment 0) and their padding slots are
        overwritten by the next call. Positions are the cache slots (index + 0, 1, ...);
        decoder_positions is not read. Slots after a query are hidden, and the prefix
        flags (decoder_prefix_mask of the chunk, zeros if absent) are kept per slot so a
        prefilled prefix stays bidirectional.
        """
        tokens = batch["decoder_input_tokens"]
        batch_size, length = tokens.shape
        initialized = self.has_variable("cache", "index")
        index = self.variable("cache", "index", jnp.zeros, (batch_size,), jnp.int32)
        # [batch, max_length]; its length is also the cache's max_length.
        key_prefix = self.variable("cache", "prefix_mask", jnp.zeros, tokens.shape, jnp.int32)
        if not initialized:
            positions, mask = self._full_inputs(batch)
            return positions, mask, index.value
        prefix = batch.get("decoder_prefix_mask", jnp.zeros_like(tokens))
        cache_index = index.value
        key_prefix.value = layers.update_rows(key_prefix.value, prefix, cache_index)
        positions = cache_index[:, None] + jnp.arange(length, dtype=jnp.int32)
        key_slots = jnp.arange(key_prefix.value.shape[1], dtype=jnp.int32)[None]
        mask = layers.causal_prefix_mask(positions, key_slots, prefix, key_prefix.value)
        index.value = cache_index + jnp.sum(batch["decoder_segment_ids"] != 0, axis=1)
        return positions, mask, cache_index

    def _output_logits(self, x: jax.Array, token_embed: layers.Embed) -> jax.Array:
        """x [batch, length, embed] -> float32 logits [batch, length, vocab]."""
        if self.tie_embeddings:
            return token_embed.attend(x)
        kernel = layers.param(
            self,
            "logits_kernel",
            layers.embedding_init,  # the tied table's scale: tied and untied runs start alike
            ("embed", "vocab"),
            (self.d_model, self.vocab_size),
        )
        # float32 accumulation, as in Embed.attend.
        rows = x.reshape(-1, x.shape[-1]).astype(jnp.dtype(self.dtype))
        logits = matmul.matmul(rows, kernel, out_dtype=jnp.float32)
        return logits.reshape(*x.shape[:-1], self.vocab_size)

    @nn.compact
    def __call__(
        self, batch: Mapping[str, jax.Array], *, deterministic: bool, decode: bool = False
    ) -> dict[str, jax.Array]:
        """Reads decoder_input_tokens / decoder_segment_ids / decoder_positions (int32
        [batch, length]; segment 0 = padding) and, if present, decoder_prefix_mask (int32
        [batch, length], 1 on prefix tokens; absent = causal LM); other keys are ignored.

        decode=True (mutable 'cache') is incremental decoding, see `_decode_inputs`; it
        does not read decoder_positions once the cache exists.

        With num_classes > 0 it also reads class_token_index (int32 [batch, 1]).

        Returns {'logits': float32 [batch, length, vocab]}, and with num_classes > 0
        'class_logits' float32 [batch, 1, num_classes].
        """
        tokens = batch["decoder_input_tokens"]
        if decode:
            positions, mask, cache_index = self._decode_inputs(batch)
            broadcast_inputs = (mask, cache_index)
        else:
            positions, mask = self._full_inputs(batch)
            broadcast_inputs = (mask,)

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
        x = layers.Dropout(self.dropout_rate)(x, deterministic=deterministic)

        x, _ = self._layer_stack(deterministic, decode)(x, *broadcast_inputs)
        x = layers.LayerNorm(LAYER_NORM_EPSILON, self.dtype, name="final_norm")(x)

        logits = self._output_logits(x, token_embed)
        # [batch, length, vocab]
        logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
        if not self.num_classes:
            return {"logits": logits}
        # [batch, 1, embed]: the hidden state at each row's [EXTRACT] token.
        extract = jnp.take_along_axis(x, batch["class_token_index"][:, :, None], axis=1)
        extract = layers.Dropout(self.dropout_rate)(extract, deterministic=deterministic)
        class_logits = layers.ClassifierHead(self.num_classes, self.dtype, name="classifier")(
            extract
        )
        return {"logits": logits, "class_logits": class_logits}


def init_decode_cache(model: DecoderOnly, params: Any, batch_size: int, max_length: int) -> Any:
    """The empty 'cache' collection for decoding `max_length` tokens per row (all zeros:
    per layer keys/values [layers, batch, max_length, heads, kv], per row 'index' and
    'prefix_mask'); shapes come from `jax.eval_shape`, so nothing is computed.

    Then prefill, and one token per call:
      outputs, mutated = model.apply({'params': params, 'cache': cache},
          {'decoder_input_tokens': tokens [batch, length],
           'decoder_segment_ids': 1 on tokens, 0 on right padding [batch, length]},
          deterministic=True, decode=True, mutable=['cache'])
      cache = mutated['cache']   # outputs['logits'] [batch, length, vocab]
    Each row's index advances by its number of real tokens and must stay <= max_length.
    """
    if max_length > model.max_len:
        raise ValueError(f"max_length {max_length} exceeds the model's max_len {model.max_len}")
    shape = (batch_size, max_length)
    batch = {
        "decoder_input_tokens": jnp.zeros(shape, jnp.int32),
        "decoder_segment_ids": jnp.ones(shape, jnp.int32),
        "decoder_positions": jnp.broadcast_to(jnp.arange(max_length, dtype=jnp.int32), shape),
    }

    def create(params):
        _, mutated = model.apply(
            {"params": params}, batch, deterministic=True, decode=True, mutable=["cache"]
        )
        return mutated["cache"]

    abstract = jax.eval_shape(create, params)
    return jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), abstract)
