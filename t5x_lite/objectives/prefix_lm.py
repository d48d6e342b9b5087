"""Prefix language modeling for encoder-decoders (T5's "prefix LM" objective, Raffel et
al. 2020, section 3.3.1): the encoder reads the start of a text, the decoder predicts
the rest.

Split (`split`), for a chunk of n tokens:
  random  the prefix length is uniform in [1, n - 1] (T5's random_prefix_noise_mask at
          noise_density 0.5). The chunk has at most min(inputs_length, targets_length)
          tokens, so every split fits both rows with EOS.
  fixed   the prefix length is round(prefix_fraction * n) clipped to [1, n - 1]. The
          chunk is as long as possible: the largest L such that every length up to L
          splits into a prefix (+ EOS) <= inputs_length and a rest (+ EOS) <=
          targets_length. prefix_fraction is read only here, but is a required key like
          every other (no hidden defaults).
A longer document gives a chunk at a uniformly random start (one example per document,
as the objective contract says; the pipeline redraws it every epoch). A one-token
document has no split: the encoder reads EOS alone and the decoder predicts the token.
Inputs and targets each end in EOS; the decoder reads the targets shifted right by BOS.
"""

from __future__ import annotations

import numpy as np

from t5x_lite.errors import UserError
from t5x_lite.objectives import base
from t5x_lite.objectives.registry import register
from t5x_lite.objectives.span_corruption import (
    ENCODER_DECODER_LOSS,
    encoder_decoder_example,
    encoder_decoder_lengths,
    largest_fitting_length,
    random_chunk,
)

SPLIT_MODES = ("random", "fixed")


def fixed_split(length, prefix_fraction: float):
    """Chunk length(s) -> prefix length(s) in 'fixed' mode; works elementwise on arrays."""
    length = np.asarray(length)
    return np.clip(np.round(prefix_fraction * length), 1, length - 1).astype(np.int64)


def _validate_knobs(knobs: dict) -> None:
    """One-line UserErrors, each naming the config.objective key to change."""
    for key in ("inputs_length", "targets_length"):
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
    pack_mode = base.PACK_FIRST_FIT
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
        self.raw_length = self._raw_length()

    @classmethod
    def build(cls, tokenizer, **knobs):
        return cls(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, **knobs)

    def _raw_length(self) -> int:
        if self.split == "random":
            return min(self.inputs_length, self.targets_length)
        lengths = np.arange(2, self.inputs_length + self.targets_length - 1)  # [max_raw - 1]
        prefix = fixed_split(lengths, self.prefix_fraction)
        fits = (prefix < self.inputs_length) & (lengths - prefix < self.targets_length)
        # Length 1 always fits (EOS alone in, one token + EOS out), so offset by it.
        return 1 + largest_fitting_length(fits)

    def feature_lengths(self):
        return encoder_decoder_lengths(self.inputs_length, self.targets_length)

    def preprocess(self, tokens, rng):
        chunk = random_chunk(np.asarray(tokens, np.int32), self.raw_length, rng)
        if len(chunk) == 1:
            prefix_length = 0
        elif self.split == "random":
            prefix_length = int(rng.integers(1, len(chunk)))
        else:
            prefix_length = int(fixed_split(len(chunk), self.prefix_fraction))
        return encoder_decoder_example(
            chunk[:prefix_length], chunk[prefix_length:], bos_id=self.bos_id, eos_id=self.eos_id
        )
