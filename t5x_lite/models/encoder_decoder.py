"""T5-style encoder-decoder over packed rows, with a key/value cache for decoding.

One token embedding shared by encoder, decoder and (when tied) the output head; no
absolute positions: each stack computes ONE relative position bias from its own
('relpos_buckets', 'heads') table (bidirectional in the encoder, causal in the decoder)
and adds it to the attention logits of every layer. Pre-RMSNorm residual blocks without
biases, stacked with `nn.scan`, a final RMSNorm per stack. q k^T is not scaled by
1/sqrt(head_dim) (the query init carries it), which is what T5 checkpoints expect.

Masks for packed rows: encoder self-attention within a segment, decoder self-attention
causal within a segment, cross-attention where decoder segment == encoder segment
(packing gives an example's inputs and targets the same id). Segment 0 is padding.

Incremental decoding (`decode(..., decode=True)`) is for unpacked rows whose target
starts at position 0; see `init_decode_cache` for the calling sequence. The cache holds
each decoder layer's self-attention keys/values, the cross-attention keys/values of the
encoder output (projected once, when the cache is created) and the encoder padding mask,
so decoding steps after the first read neither `encoded` nor `encoder_segment_ids`.
`repeat_cache` / `gather_cache` expand a cache per beam and reorder it by beam.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_lite.models import layers, matmul, stack, t5_layers


class EncoderBlock(nn.Module):
    """x + Dropout(SelfAttention(RMSNorm(x))), then x + Dropout(Mlp(RMSNorm(x)))."""

    num_heads: int
    head_dim: int
    d_ff: int
    mlp: str
    dropout_rate: float
    layer_norm_epsilon: float
    dtype: str
    attention_impl: str
    deterministic: bool

    def _residual(self, x, sublayer, name: str) -> jax.Array:
        normed = t5_layers.RMSNorm(self.layer_norm_epsilon, self.dtype, name=f"{name}_norm")(x)
        branch = layers.Dropout(self.dropout_rate)(
            sublayer(normed), deterministic=self.deterministic
        )
        return x + branch

    def _attention(self, name: str, cache_kind: str) -> t5_layers.T5Attention:
        return t5_layers.T5Attention(
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            dtype=self.dtype,
            attention_impl=self.attention_impl,
            cache_kind=cache_kind,
            name=name,
        )

    def _mlp(self, x: jax.Array) -> jax.Array:
        mlp = t5_layers.T5Mlp(
            self.d_ff, self.mlp, self.dropout_rate, self.dtype, self.deterministic, name="mlp"
        )
        x = self._residual(x, mlp, "mlp")
        # [batch, length, embed]
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))

    @nn.compact
    def __call__(self, x, mask, bias) -> tuple[jax.Array, None]:
        """x [batch, length, embed], mask bool [batch, 1, length, length], bias float32
        [batch, heads, length, length] -> (x, None), the `nn.scan` body contract."""
        attention = self._attention("attention", "none")
        no_index = jnp.zeros((), jnp.int32)
        x = self._residual(
            x, lambda normed: attention(normed, normed, mask, bias, no_index), "attention"
        )
        return self._mlp(x), None


class DecoderBlock(EncoderBlock):
    """Causal self-attention, cross-attention (both cached when `decode`), MLP; all
    pre-norm."""

    decode: bool

    @nn.compact
    def __call__(self, x, mask, bias, encoded, cross_mask, cache_index):
        """x [batch, length, embed]; mask [batch, 1, length, max_length] and bias
        [batch or 1, heads, length, max_length] for self-attention; encoded [batch,
        encoded_length, embed] (None on decoding steps after the cache-creating one),
        cross_mask [batch, 1, length, encoded_length]; cache_index int32 [] -> (x, None)."""
        attention = self._attention("attention", "self" if self.decode else "none")
        x = self._residual(
            x, lambda normed: attention(normed, normed, mask, bias, cache_index), "attention"
        )
        cross = self._attention("cross_attention", "cross" if self.decode else "none")
        # Cross-attention has no position bias in T5.
        zero_bias = jnp.zeros((1, self.num_heads, 1, 1), jnp.float32)
        x = self._residual(
            x,
            lambda normed: cross(normed, encoded, cross_mask, zero_bias, cache_index),
            "cross_attention",
        )
        return self._mlp(x), None


class Encoder(nn.Module):
    """Token embedding -> dropout -> scanned EncoderBlocks -> RMSNorm -> dropout."""

    config: Mapping[str, Any]  # the EncoderDecoder's fields
    token_embed: layers.Embed

    @nn.compact
    def __call__(self, batch: Mapping[str, jax.Array], *, deterministic: bool) -> jax.Array:
        """Reads encoder_input_tokens / encoder_segment_ids / encoder_positions (int32
        [batch, length]) -> encoded [batch, length, embed]."""
        cfg = self.config
        segment_ids = batch["encoder_segment_ids"]
        positions = batch["encoder_positions"]
        x = self.token_embed(batch["encoder_input_tokens"])  # [batch, length, embed]
        x = layers.Dropout(cfg["dropout_rate"])(x, deterministic=deterministic)
        mask = layers.segment_mask(segment_ids, segment_ids)  # [batch, 1, length, length]
        bias = _relpos(cfg, bidirectional=True)(positions, positions)
        x, _ = stack.scanned_stack(
            EncoderBlock,
            num_layers=cfg["num_encoder_layers"],
            remat_policy=cfg["remat_policy"],
            num_broadcast_inputs=2,  # mask, bias
            name="layers",
            deterministic=deterministic,
            **_block_fields(cfg),
        )(x, mask, bias)
        x = t5_layers.RMSNorm(cfg["layer_norm_epsilon"], cfg["dtype"], name="final_norm")(x)
        x = layers.Dropout(cfg["dropout_rate"])(x, deterministic=deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def _block_fields(cfg: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("num_heads", "head_dim", "d_ff", "mlp", "dropout_rate", "layer_norm_epsilon")
    return {key: cfg[key] for key in keys + ("dtype", "attention_impl")}


def _relpos(cfg: Mapping[str, Any], *, bidirectional: bool) -> t5_layers.RelativePositionBias:
    return t5_layers.RelativePositionBias(
        num_buckets=cfg["relative_attention_num_buckets"],
        max_distance=cfg["relative_attention_max_distance"],
        num_heads=cfg["num_heads"],
        bidirectional=bidirectional,
        name="relpos",
    )


class Decoder(nn.Module):
    """Token embedding -> scanned DecoderBlocks -> RMSNorm -> output logits."""

    config: Mapping[str, Any]  # the EncoderDecoder's fields
    token_embed: layers.Embed

    def _full_masks(self, batch, decoder_length: int):
        """Training / scoring: per-token segments and positions of packed rows."""
        segment_ids, positions = batch["decoder_segment_ids"], batch["decoder_positions"]
        mask = layers.causal_segment_mask(segment_ids)  # [batch, 1, length, length]
        bias = _relpos(self.config, bidirectional=False)(positions, positions)
        cross_mask = layers.segment_mask(segment_ids, batch["encoder_segment_ids"])
        return mask, bias, cross_mask, jnp.zeros((), jnp.int32)

    def _decode_masks(self, batch, decoder_length: int):
        """Incremental decoding of unpacked rows. The first call (no cache yet) sees the
        full-length target and creates the cache; later calls see one token at the cache
        index. Encoder padding (segment 0) is hidden from every decoder token; the
        first call stores that mask, so later calls need no encoder_segment_ids."""
        initialized = self.has_variable("cache", "index")
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        max_length = self.variable(
            "cache", "key_positions", lambda: jnp.arange(decoder_length, dtype=jnp.int32)
        ).value.shape[0]
        key_positions = jnp.arange(max_length, dtype=jnp.int32)[None]  # [1, max_length]
        if initialized:
            query_positions = index.value[None, None]  # [1, 1]
            cache_index = index.value
            index.value = index.value + 1
        else:
            query_positions, cache_index = key_positions, jnp.zeros((), jnp.int32)
        # [1, 1, q_length, max_length]
        mask = (key_positions[:, None, :] <= query_positions[:, :, None])[:, None]
        bias = _relpos(self.config, bidirectional=False)(query_positions, key_positions)
        encoder_mask = self.variable(
            "cache", "encoder_mask", lambda: batch["encoder_segment_ids"] != 0
        ).value  # bool [batch, encoder_length]
        return mask, bias, encoder_mask[:, None, None, :], cache_index

    def _output_logits(self, x: jax.Array) -> jax.Array:
        """x [batch, length, embed] -> float32 logits [batch, length, vocab]."""
        cfg = self.config
        if cfg["tie_embeddings"]:
            # T5 1.0 rescales before the tied (large-norm) embedding.
            return self.token_embed.attend(x * jnp.asarray(cfg["d_model"] ** -0.5, x.dtype))
        kernel = layers.param(
            self,
            "logits_kernel",
            layers.embedding_init,
            ("embed", "vocab"),
            (cfg["d_model"], cfg["vocab_size"]),
        )
        rows = x.reshape(-1, x.shape[-1])
        logits = matmul.matmul(rows, kernel, out_dtype=jnp.float32, row_major_backward=True)
        return logits.reshape(*x.shape[:-1], cfg["vocab_size"])

    @nn.compact
    def __call__(self, encoded, batch, *, deterministic: bool, decode: bool) -> jax.Array:
        cfg = self.config
        tokens = batch["decoder_input_tokens"]  # [batch, length]
        masks = (self._decode_masks if decode else self._full_masks)(batch, tokens.shape[1])
        mask, bias, cross_mask, cache_index = masks
        mask = jnp.broadcast_to(mask, (tokens.shape[0],) + mask.shape[1:])
        x = self.token_embed(tokens)  # [batch, length, embed]
        x = layers.Dropout(cfg["dropout_rate"])(x, deterministic=deterministic)
        x, _ = stack.scanned_stack(
            DecoderBlock,
            num_layers=cfg["num_decoder_layers"],
            remat_policy=cfg["remat_policy"],
            num_broadcast_inputs=5,  # mask, bias, encoded, cross_mask, cache_index
            name="layers",
            deterministic=deterministic,
            decode=decode,
            **_block_fields(cfg),
        )(x, mask, bias, encoded, cross_mask, cache_index)
        x = t5_layers.RMSNorm(cfg["layer_norm_epsilon"], cfg["dtype"], name="final_norm")(x)
        x = layers.Dropout(cfg["dropout_rate"])(x, deterministic=deterministic)
        logits = self._output_logits(x)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class EncoderDecoder(nn.Module):
    """T5 1.0 / 1.1 encoder-decoder. Fields are `config.model` minus `arch`."""

    vocab_size: int
    d_model: int
    num_encoder_layers: int
    num_decoder_layers: int
    num_heads: int
    head_dim: int
    d_ff: int
    relative_attention_num_buckets: int  # T5: 32
    relative_attention_max_distance: int  # T5: 128
    mlp: str  # one of t5_layers.MLP_KINDS: "relu" (T5 1.0) | "gated_gelu" (T5 1.1)
    tie_embeddings: bool  # True: T5 1.0 head (scaled by d_model**-0.5); False: T5 1.1
    dropout_rate: float
    layer_norm_epsilon: float  # T5: 1e-6
    dtype: str  # computation dtype: "float32" or "bfloat16"; params stay float32
    remat_policy: str  # one of stack.REMAT_POLICIES
    attention_impl: str  # one of layers.ATTENTION_IMPLS

    def __post_init__(self) -> None:
        stack.check_compute_options(
            dtype=self.dtype, remat_policy=self.remat_policy, attention_impl=self.attention_impl
        )
        stack.check_choice("mlp", self.mlp, t5_layers.MLP_KINDS)
        super().__post_init__()

    def setup(self) -> None:
        fields = {
            name: getattr(self, name)
            for name in self.__dataclass_fields__
            if name not in ("parent", "name")
        }
        self.token_embed = layers.Embed(
            self.vocab_size, self.d_model, ("vocab", "embed"), self.dtype
        )
        self.encoder = Encoder(fields, self.token_embed)
        self.decoder = Decoder(fields, self.token_embed)

    def encode(self, batch: Mapping[str, jax.Array], *, deterministic: bool) -> jax.Array:
        """-> encoded [batch, encoder_length, embed]; see Encoder."""
        return self.encoder(batch, deterministic=deterministic)

    def decode(
        self,
        encoded: jax.Array,
        batch: Mapping[str, jax.Array],
        *,
        deterministic: bool,
        decode: bool = False,
    ) -> jax.Array:
        """encoded [batch, encoder_length, embed] -> float32 logits [batch, length, vocab].

        decode=False reads decoder_input_tokens / decoder_segment_ids / decoder_positions
        and encoder_segment_ids. decode=True (mutable 'cache'): the cache-creating call
        reads `encoded`, decoder_input_tokens [batch, max_length] and encoder_segment_ids;
        every later call reads only decoder_input_tokens [batch, 1] (pass encoded=None).
        """
        return self.decoder(encoded, batch, deterministic=deterministic, decode=decode)

    def __call__(
        self, batch: Mapping[str, jax.Array], *, deterministic: bool
    ) -> dict[str, jax.Array]:
        """Teacher-forced forward pass -> {'logits': float32 [batch, target_length, vocab]}."""
        encoded = self.encode(batch, deterministic=deterministic)
        return {"logits": self.decode(encoded, batch, deterministic=deterministic)}


def init_decode_cache(
    model: EncoderDecoder,
    params: Any,
    encoded: jax.Array,
    encoder_segment_ids: jax.Array,
    max_length: int,
) -> Any:
    """The 'cache' collection for decoding up to `max_length` target tokens: empty
    self-attention buffers, plus the encoder output's cross-attention keys/values and
    padding mask, computed here once.

    Then, per step t = 0, 1, ...:
      logits, mutated = model.apply({'params': params, 'cache': cache}, None,
          {'decoder_input_tokens': tokens_t [batch, 1]},
          deterministic=True, decode=True, method='decode', mutable=['cache'])
      cache = mutated['cache']   # logits [batch, 1, vocab] for position t
    """
    batch = {
        "decoder_input_tokens": jnp.zeros((encoded.shape[0], max_length), jnp.int32),
        "encoder_segment_ids": encoder_segment_ids,
    }
    _, mutated = model.apply(
        {"params": params},
        encoded,
        batch,
        deterministic=True,
        decode=True,
        method="decode",
        mutable=["cache"],
    )
    return mutated["cache"]


def cache_batch_axis(path: tuple, leaf: jax.Array) -> int | None:
    """Which axis of a cache entry is the batch, or None for entries shared by all rows.

    Decided by rank and scope: rank 0 and 1 entries are not per row (the scalar step
    'index' and the [max_length] 'key_positions'); entries under a scanned 'layers' scope
    carry the layer axis first ([layers, batch, length, heads, kv]), so batch is axis 1;
    the rest ('encoder_mask' [batch, encoder_length]) are batch-major.
    """
    if leaf.ndim <= 1:
        return None
    in_layers = any(getattr(entry, "key", None) == "layers" for entry in path)
    return 1 if in_layers else 0


def _map_batched(fn, cache: Any) -> Any:
    """fn(leaf, batch_axis) on every per-row cache entry; shared entries unchanged."""

    def apply(path, leaf):
        axis = cache_batch_axis(path, leaf)
        return leaf if axis is None else fn(leaf, axis)

    return jax.tree_util.tree_map_with_path(apply, cache)


def repeat_cache(cache: Any, times: int) -> Any:
    """Each row repeated `times` times in place (row b -> rows b*times ... b*times+times-1),
    as jnp.repeat does: the layout beam search uses for [batch * beams]."""
    return _map_batched(lambda leaf, axis: jnp.repeat(leaf, times, axis=axis), cache)


def gather_cache(cache: Any, indices: jax.Array) -> Any:
    """Row i of the result is row indices[i] of `cache` (int32 [new_batch]); beam search
    reorders its flat [batch * beams] cache with it after picking each step's beams."""
    return _map_batched(lambda leaf, axis: jnp.take(leaf, indices, axis=axis), cache)
