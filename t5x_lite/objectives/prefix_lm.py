"""Prefix language modeling (T5's "prefix LM" objective, Raffel et al. 2020, sections
3.2.1 and 3.3.1): a model reads the start of a text and predicts the rest. One config
name, one class per architecture:

  encoder_decoder  (`PrefixLM`) the encoder reads the prefix, the decoder predicts the rest.
  decoder_only     (`DecoderPrefixLM`) one row holds prefix and rest; attention is
                   bidirectional within the prefix and causal after it, and only the
                   rest is scored.

Split (`split`), for a chunk of n tokens:
  random  the prefix length is uniform in [1, n - 1] (T5's random_prefix_noise_mask at
          noise_density 0.5). The chunk has at most min(inputs_length, targets_length)
          tokens, so every split fits both rows with EOS.
  fixed   the prefix length is round(prefix_fraction * n) clipped to [1, n - 1]. The
          chunk is as long as possible: the largest L such that every length up to L
          splits into a prefix (+ EOS) <= inputs_length and a rest (+ EOS) <=
          targets_length. prefix_fraction is read only here, but is a required key like
          every other (no hidden defaults).
For the decoder-only model the chunk has at most seq_len - 1 tokens (BOS + chunk fills
the input row, chunk + EOS the target row) and `split` works on it the same way.
A document is cut into consecutive chunks of that length (`chunk_length`; the last one
shorter, as T5's split_tokens), each split into one example. A one-token chunk has no
split: the encoder reads EOS alone and the decoder predicts the token.
Inputs and targets each end in EOS; the decoder reads the targets shifted right by BOS.
"""

from __future__ import annotations

import numpy as np

from t5x_lite.data import packing
from t5x_lite.errors import UserError
from t5x_lite.objectives import base
from t5x_lite.objectives.chunks import largest_fitting_length
from t5x_lite.objectives.encoder_decoder import (
    ENCODER_DECODER_LOSS,
    encoder_decoder_example,
    encoder_decoder_lengths,
)
from t5x_lite.objectives.registry import register

SPLIT_MODES = ("random", "fixed")


def fixed_split(length, prefix_fraction: float):
    """Chunk length(s) -> prefix length(s) in 'fixed' mode; works elementwise on arrays."""
    length = np.asarray(length)
    return np.clip(np.round(prefix_fraction * length), 1, length - 1).astype(np.int64)


def _validate_knobs(knobs: dict, length_keys=("inputs_length", "targets_length")) -> None:
    """One-line UserErrors, each naming the config.objective key to change."""
    for key in length_keys:
        if knobs[key] < 2:
            raise UserError(f"config.objective.{key}={knobs[key]} must be >= 2 (one token and EOS)")
    if knobs["split"] not in SPLIT_MODES:
        raise UserError(f"config.objective.split={knobs['split']!r} is not one of {SPLIT_MODES}")
    if not 0 < knobs["prefix_fraction"] < 1:
        raise UserError(
            f"config.objective.prefix_fraction={knobs['prefix_fraction']} must be in (0, 1)"
        )


@register("prefix_lm")
class PrefixLM(base.Objective):
    """Encoder reads a prefix, decoder predicts the continuation; see the module docstring."""

    architectures = ("encoder_decoder",)
    pack_mode = packing.PACK_FIRST_FIT
    loss_terms = ENCODER_DECODER_LOSS
    ids_from_tokenizer = ("bos_id", "eos_id")

    def __init__(
        self,
        *,
        inputs_length: int,
        targets_length: int,
        split: str,
        prefix_fraction: float,
        bos_id: int,
        eos_id: int,
    ):
        _validate_knobs(dict(locals()))
        self.inputs_length = inputs_length
        self.targets_length = targets_length
        self.split = split
        self.prefix_fraction = prefix_fraction
        self.bos_id, self.eos_id = bos_id, eos_id
        self.chunk_length = self._chunk_length()

    def _chunk_length(self) -> int:
        if self.split == "random":
            return min(self.inputs_length, self.targets_length)
        lengths = np.arange(2, self.inputs_length + self.targets_length - 1)  # [max_chunk - 1]
        prefix = fixed_split(lengths, self.prefix_fraction)
        fits = (prefix < self.inputs_length) & (lengths - prefix < self.targets_length)
        # Length 1 always fits (EOS alone in, one token + EOS out), so offset by it.
        return 1 + largest_fitting_length(fits)

    def feature_lengths(self):
        return encoder_decoder_lengths(self.inputs_length, self.targets_length)

    def make_example(self, tokens, rng):
        chunk = np.asarray(tokens, np.int32)
        prefix_length = split_point(len(chunk), self.split, self.prefix_fraction, rng)
        return encoder_decoder_example(
            chunk[:prefix_length], chunk[prefix_length:], bos_id=self.bos_id, eos_id=self.eos_id
        )


def split_point(chunk_length: int, split: str, prefix_fraction: float, rng) -> int:
    """How many of a chunk's tokens form the prefix: 0 for a one-token chunk, else in
    [1, chunk_length - 1], uniform ('random') or by prefix_fraction ('fixed')."""
    if chunk_length == 1:
        return 0
    if split == "random":
        return int(rng.integers(1, chunk_length))
    return int(fixed_split(chunk_length, prefix_fraction))


@register("prefix_lm")
class DecoderPrefixLM(base.Objective):
    """Prefix LM in one decoder row (T5's "prefix LM" architecture, Raffel et al. 2020,
    figure 4 right; UniLM's seq-to-seq mask).

    For a chunk x_1..x_n split after p tokens:
      decoder_input_tokens   BOS x_1 ... x_n
      decoder_target_tokens  x_1 ... x_n EOS
      decoder_prefix_mask    1 at positions 0..p (their input tokens are BOS, x_1..x_p),
                             0 after: the model attends bidirectionally among them
      decoder_loss_weights   1 at positions p..n: x_{p+1}, ..., x_n and EOS are scored
    Position p is in both sets: it reads x_p with the whole prefix in view and predicts
    x_{p+1}, which it cannot see. Examples are packed whole (first fit), so a prefix is
    never cut from its continuation.
    """

    architectures = ("decoder_only",)
    pack_mode = packing.PACK_FIRST_FIT
    loss_terms = (base.LossTerm("lm", "logits", "decoder_target_tokens", "decoder_loss_weights"),)
    ids_from_tokenizer = ("bos_id", "eos_id")

    def __init__(self, *, seq_len: int, split: str, prefix_fraction: float, bos_id: int,
                 eos_id: int):  # fmt: skip
        _validate_knobs(dict(locals()), length_keys=("seq_len",))
        self.seq_len = seq_len
        self.split = split
        self.prefix_fraction = prefix_fraction
        self.bos_id, self.eos_id = bos_id, eos_id
        self.chunk_length = seq_len - 1

    def feature_lengths(self):
        names = ("input_tokens", "target_tokens", "prefix_mask", "loss_weights")
        return {f"decoder_{name}": self.seq_len for name in names}

    def make_example(self, tokens, rng):
        chunk = np.asarray(tokens, np.int32)
        prefix_length = split_point(len(chunk), self.split, self.prefix_fraction, rng)
        targets = np.concatenate([chunk, [self.eos_id]]).astype(np.int32)
        position = np.arange(len(targets))
        return {
            "decoder_input_tokens": np.concatenate([[self.bos_id], chunk]).astype(np.int32),
            "decoder_target_tokens": targets,
            "decoder_prefix_mask": (position <= prefix_length).astype(np.int32),
            "decoder_loss_weights": (position >= prefix_length).astype(np.int32),
        }
