"""The chunks of a document that its examples are made from.

Objectives that must fit a document into fixed rows (masked LM, span corruption, prefix
LM, T5's other denoising objectives) work out the longest raw chunk that still fits
once transformed, and cut each document into consecutive chunks of that length, as T5
does: every token of a document lands in exactly one example per epoch.
"""

from __future__ import annotations

import numpy as np


def consecutive_chunks(tokens, length: int | None) -> list:
    """[num_tokens] -> consecutive pieces of `length` tokens (the last may be shorter);
    the whole document as one piece when `length` is None."""
    if length is None:
        return [tokens]
    return [tokens[start : start + length] for start in range(0, len(tokens), length)]


def largest_fitting_length(fits: np.ndarray) -> int:
    """[n] bool for lengths 1..n -> the largest L with every length 1..L fitting (0: none)."""
    failures = np.flatnonzero(~fits)
    return int(failures[0]) if len(failures) else len(fits)
