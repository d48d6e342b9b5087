"""The chunk of a document that one example is made from.

Objectives that must fit a document into fixed rows (span corruption, prefix LM, T5's
other denoising objectives) work out the longest raw chunk that still fits once
transformed, and cut a chunk of at most that length from each document.
"""

from __future__ import annotations

import numpy as np


def random_chunk(tokens: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """The whole document if it has <= length tokens, else `length` tokens from a
    uniformly random start."""
    if len(tokens) <= length:
        return tokens
    start = int(rng.integers(len(tokens) - length + 1))
    return tokens[start : start + length]


def largest_fitting_length(fits: np.ndarray) -> int:
    """[n] bool for lengths 1..n -> the largest L with every length 1..L fitting (0: none)."""
    failures = np.flatnonzero(~fits)
    return int(failures[0]) if len(failures) else len(fits)
