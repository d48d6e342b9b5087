"""T5 span corruption for encoder-decoders (Raffel et al. 2020, sections 3.3 and 3.7).

Chunk. Corruption shortens the inputs and produces targets, so the raw chunk is the
longest that fits both rows once corrupted (T5's random_spans_helper, which fits the
inputs only; here both `inputs_length` and `targets_length` bind). `chunk_length` is
the largest length L such that every length up to L, corrupted, gives inputs (+ EOS)
<= inputs_length and targets (+ EOS) <= targets_length. As in T5 (split_tokens), a
document is cut into consecutive chunks of chunk_length tokens, the last one shorter,
and each chunk is corrupted into one example: a short document is one chunk.

Noise. With L the chunk length, num_noise = round(L * noise_density) clipped to
[1, L - 1] (a one-token chunk is all noise), num_spans = round(num_noise /
mean_noise_span_length), at least 1 and at most min(num_noise, L - num_noise) so that
every span is non-empty. Noise and non-noise tokens are each cut into num_spans parts
by a uniformly random composition (T5's _random_segmentation) and interleaved
non-noise first, so the chunk always ends in noise. round() is numpy's (halves go to
the even neighbour), as in T5. mean_noise_span_length = 1 gives num_noise isolated
noise tokens: T5's "i.i.d." setting, except that two noise tokens are never adjacent.

Corruption (`corrupted_span`):
  sentinel  inputs  = the chunk with noise span i replaced by sentinel i, then EOS;
            targets = sentinel 0, span 0, sentinel 1, span 1, ..., then EOS. As in T5's
            code, no sentinel follows the last span (the paper's Table 3 shows one).
  drop      T5's "drop corrupted tokens": inputs = the non-noise tokens, then EOS;
            targets = the noise tokens in order, then EOS; no sentinels.
The decoder reads the targets shifted right by BOS (T5 starts the decoder with pad,
id 0; we have a dedicated BOS id, and pad stays padding only).
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

CORRUPTED_SPAN_MODES = ("sentinel", "drop")


def noise_counts(length, noise_density: float, mean_noise_span_length: float):
    """Chunk length(s) -> (num_noise, num_spans); works elementwise on arrays."""
    length = np.asarray(length)
    num_noise = np.clip(np.round(length * noise_density), 1, np.maximum(length - 1, 1))
    num_spans = np.maximum(np.round(num_noise / mean_noise_span_length), 1)
    num_spans = np.minimum(num_spans, np.minimum(num_noise, np.maximum(length - num_noise, 1)))
    return num_noise.astype(np.int64), num_spans.astype(np.int64)


def corrupted_lengths(length, noise_density, mean_noise_span_length, corrupted_span):
    """Chunk length(s) -> (inputs length, targets length), EOS included."""
    length = np.asarray(length)
    num_noise, num_spans = noise_counts(length, noise_density, mean_noise_span_length)
    sentinels = num_spans if corrupted_span == "sentinel" else 0
    return length - num_noise + sentinels + 1, num_noise + sentinels + 1


def random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator):
    """[num_segments] lengths of a uniformly random composition of num_items into
    num_segments positive parts (one empty part when num_items is 0)."""
    cuts = np.zeros(0, np.int64)
    if num_segments > 1:  # distinct cut points among the num_items - 1 gaps
        cuts = np.sort(rng.choice(num_items - 1, num_segments - 1, replace=False)) + 1
    return np.diff(np.concatenate([[0], cuts, [num_items]]))


def random_spans_noise_mask(
    length: int, noise_density: float, mean_noise_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """[length] bool: True at noise tokens, in spans as the module docstring says."""
    num_noise, num_spans = (
        int(n) for n in noise_counts(length, noise_density, mean_noise_span_length)
    )
    noise_lengths = random_segmentation(num_noise, num_spans, rng)
    nonnoise_lengths = random_segmentation(length - num_noise, num_spans, rng)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    return np.repeat(np.tile([False, True], num_spans), interleaved)


def _validate_knobs(knobs: dict) -> None:
    """One-line UserErrors, each naming the config.objective key to change."""
    density = knobs["noise_density"]
    if not 0 < density < 1:
        raise UserError(f"config.objective.noise_density={density} must be in (0, 1)")
    if knobs["mean_noise_span_length"] < 1:
        raise UserError(
            f"config.objective.mean_noise_span_length={knobs['mean_noise_span_length']}"
            " must be >= 1"
        )
    if knobs["corrupted_span"] not in CORRUPTED_SPAN_MODES:
        raise UserError(
            f"config.objective.corrupted_span={knobs['corrupted_span']!r} is not one of"
            f" {CORRUPTED_SPAN_MODES}"
        )


@register("span_corruption")
class SpanCorruption(base.Objective):
    """T5's span corruption (and its "drop corrupted tokens" variant); see the module
    docstring."""

    architectures = ("encoder_decoder",)
    pack_mode = packing.PACK_FIRST_FIT
    loss_terms = ENCODER_DECODER_LOSS
    ids_from_tokenizer = ("bos_id", "eos_id", "sentinel_ids")

    def __init__(
        self,
        *,
        inputs_length: int,
        targets_length: int,
        noise_density: float,
        mean_noise_span_length: float,
        corrupted_span: str,
        bos_id: int,
        eos_id: int,
        sentinel_ids: np.ndarray,
    ):
        _validate_knobs(dict(locals()))
        self.inputs_length = inputs_length
        self.targets_length = targets_length
        self.noise_density = noise_density
        self.mean_noise_span_length = mean_noise_span_length
        self.corrupted_span = corrupted_span
        self.bos_id, self.eos_id = bos_id, eos_id
        self.sentinel_ids = np.asarray(sentinel_ids, np.int32)  # [num_sentinels]
        self.chunk_length = self._chunk_length()

    def _chunk_length(self) -> int:
        """The longest chunk that fits once corrupted; checks it can hold a span."""
        lengths = np.arange(1, self.inputs_length + self.targets_length + 1)  # [max_chunk]
        inputs, targets = self._corrupted_lengths(lengths)
        fits_inputs, fits_targets = inputs <= self.inputs_length, targets <= self.targets_length
        chunk_length = largest_fitting_length(fits_inputs & fits_targets)
        if chunk_length < 2:  # one kept token and one noise token
            key = "inputs_length" if not fits_inputs[1] else "targets_length"
            raise UserError(
                f"config.objective.{key}={getattr(self, key)} is too short to hold one kept"
                f" token and one noise span once corrupted ({self.corrupted_span} mode needs"
                f" inputs_length >= {inputs[1]}, targets_length >= {targets[1]}); raise it"
            )
        num_spans = int(
            noise_counts(chunk_length, self.noise_density, self.mean_noise_span_length)[1]
        )
        if self.corrupted_span == "sentinel" and num_spans > len(self.sentinel_ids):
            raise UserError(
                f"config.objective.inputs_length={self.inputs_length} with noise_density="
                f"{self.noise_density} and mean_noise_span_length={self.mean_noise_span_length}"
                f" makes {num_spans} noise spans but there are {len(self.sentinel_ids)}"
                " sentinels; raise mean_noise_span_length or lower noise_density / inputs_length"
            )
        return chunk_length

    def _corrupted_lengths(self, lengths):
        return corrupted_lengths(
            lengths, self.noise_density, self.mean_noise_span_length, self.corrupted_span
        )

    def feature_lengths(self):
        return encoder_decoder_lengths(self.inputs_length, self.targets_length)

    def make_example(self, tokens, rng):
        chunk = np.asarray(tokens, np.int32)
        is_noise = random_spans_noise_mask(
            len(chunk), self.noise_density, self.mean_noise_span_length, rng
        )
        inputs, targets = self.corrupt(chunk, is_noise)
        return encoder_decoder_example(inputs, targets, bos_id=self.bos_id, eos_id=self.eos_id)

    def corrupt(self, chunk: np.ndarray, is_noise: np.ndarray):
        """[length] tokens and noise mask -> (inputs, targets), neither with EOS."""
        if self.corrupted_span == "drop":
            return chunk[~is_noise], chunk[is_noise]
        span_start = is_noise & ~np.concatenate([[False], is_noise[:-1]])  # [length]
        num_spans = int(span_start.sum())
        sentinels = self.sentinel_ids[np.cumsum(span_start) - 1]  # [length], used at starts
        keep = ~is_noise | span_start  # a span's first token becomes its sentinel
        inputs = np.where(span_start, sentinels, chunk)[keep]
        # Span starts, counted among the noise tokens, are where the sentinels go.
        starts_in_noise = np.flatnonzero(span_start[is_noise])
        targets = np.insert(chunk[is_noise], starts_in_noise, self.sentinel_ids[:num_spans])
        return inputs, targets
