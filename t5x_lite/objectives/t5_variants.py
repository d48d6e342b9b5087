"""The other rows of T5's objective table (Raffel et al. 2020, Tables 3-4), for
encoder-decoders: BERT-style denoising and deshuffling. With prefix_lm and
span_corruption (sentinel / drop modes, any density and span length) they rebuild it.

Both cut a document into consecutive chunks of min(inputs_length, targets_length) - 1
tokens (the last one shorter; T5's split_tokens), so inputs and targets, each + EOS, fit
their rows; each chunk is one example. The targets are the whole uncorrupted chunk +
EOS, every token scored; the decoder reads them shifted right by BOS.

  bert_style   k = max(1, round(noise_density * candidates)) of the chunk's non-special
               tokens (user-typed sentinels, [MASK] etc. are never picked) are chosen
               uniformly; each becomes [MASK] with probability replace_with_mask, a
               uniformly random non-special id with probability replace_with_random,
               else stays. T5's row uses 0.9 / 0.1 / 0.0, BERT's 0.8 / 0.1 / 0.1.
  deshuffling  the inputs are the chunk in a uniformly random order.
"""

from __future__ import annotations

import numpy as np

from t5x_lite.data import packing
from t5x_lite.errors import UserError
from t5x_lite.objectives import base
from t5x_lite.objectives.encoder_decoder import (
    ENCODER_DECODER_LOSS,
    encoder_decoder_example,
    encoder_decoder_lengths,
)
from t5x_lite.objectives.registry import register

_RATE_SUM_TOLERANCE = 1e-6


def _check_lengths(knobs: dict) -> None:
    for key in ("inputs_length", "targets_length"):
        if knobs[key] < 2:
            raise UserError(f"config.objective.{key}={knobs[key]} must be >= 2 (one token and EOS)")


def _check_rates(knobs: dict) -> None:
    if not 0 < knobs["noise_density"] <= 1:
        raise UserError(
            f"config.objective.noise_density={knobs['noise_density']} must be in (0, 1]"
        )
    rates = ("replace_with_mask", "replace_with_random", "keep_original")
    for key in rates:
        if not 0 <= knobs[key] <= 1:
            raise UserError(f"config.objective.{key}={knobs[key]} must be in [0, 1]")
    total = sum(knobs[key] for key in rates)
    if abs(total - 1) > _RATE_SUM_TOLERANCE:
        raise UserError(f"config.objective.{' + '.join(rates)} = {total:g}, must be 1")


class _ChunkToOriginal(base.Objective):
    """Shared shape of both objectives: corrupt a chunk, predict the chunk."""

    architectures = ("encoder_decoder",)
    pack_mode = packing.PACK_FIRST_FIT
    loss_terms = ENCODER_DECODER_LOSS
    inputs_length: int
    targets_length: int
    bos_id: int
    eos_id: int

    @property
    def chunk_length(self) -> int:
        return min(self.inputs_length, self.targets_length) - 1

    def feature_lengths(self):
        return encoder_decoder_lengths(self.inputs_length, self.targets_length)

    def make_example(self, tokens, rng):
        chunk = np.asarray(tokens, np.int32)
        inputs = self.corrupt(chunk, rng)
        return encoder_decoder_example(inputs, chunk, bos_id=self.bos_id, eos_id=self.eos_id)

    def corrupt(self, chunk: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


@register("bert_style")
class BertStyle(_ChunkToOriginal):
    """BERT's corruption, the whole original text as target; see the module docstring."""

    ids_from_tokenizer = ("bos_id", "eos_id", "mask_id", "special")

    def __init__(
        self,
        *,
        inputs_length: int,
        targets_length: int,
        noise_density: float,
        replace_with_mask: float,
        replace_with_random: float,
        keep_original: float,
        bos_id: int,
        eos_id: int,
        mask_id: int,
        special: np.ndarray,
    ):
        _check_lengths(dict(locals()))
        _check_rates(dict(locals()))
        self.inputs_length, self.targets_length = inputs_length, targets_length
        self.noise_density = noise_density
        self.replace_with_mask = replace_with_mask
        self.replace_with_random = replace_with_random
        self.bos_id, self.eos_id, self.mask_id = bos_id, eos_id, mask_id
        self.special = np.asarray(special, bool)  # [vocab]
        self.random_ids = np.flatnonzero(~self.special).astype(np.int32)  # [num_random_ids]
        if len(self.random_ids) == 0:
            raise ValueError("the vocabulary has no non-special ids to sample")

    def corrupt(self, chunk, rng):
        candidates = np.flatnonzero(~self.special[chunk])
        if len(candidates) == 0:
            return chunk
        k = max(1, round(self.noise_density * len(candidates)))
        chosen = np.sort(rng.choice(candidates, k, replace=False))  # [k]
        draw = rng.random(k)
        random_ids = self.random_ids[rng.integers(len(self.random_ids), size=k)]
        new_ids = np.where(draw < self.replace_with_mask, self.mask_id, chunk[chosen])
        to_random = (draw >= self.replace_with_mask) & (
            draw < self.replace_with_mask + self.replace_with_random
        )
        inputs = chunk.copy()
        inputs[chosen] = np.where(to_random, random_ids, new_ids)
        return inputs


@register("deshuffling")
class Deshuffling(_ChunkToOriginal):
    """Shuffled tokens in, the original order out; see the module docstring."""

    ids_from_tokenizer = ("bos_id", "eos_id")

    def __init__(self, *, inputs_length: int, targets_length: int, bos_id: int, eos_id: int):
        _check_lengths(dict(locals()))
        self.inputs_length, self.targets_length = inputs_length, targets_length
        self.bos_id, self.eos_id = bos_id, eos_id

    def corrupt(self, chunk, rng):
        return rng.permutation(chunk)
