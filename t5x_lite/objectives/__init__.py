"""Pretraining objectives. Importing this package registers every built-in objective."""

from t5x_lite.objectives import causal_lm, masked_lm  # noqa: F401  (registers)
from t5x_lite.objectives.base import (
    PACK_CONCAT,
    PACK_FIRST_FIT,
    PACK_NONE,
    LossTerm,
    Objective,
)
from t5x_lite.objectives.registry import get_class, names, register

__all__ = [
    "PACK_CONCAT",
    "PACK_FIRST_FIT",
    "PACK_NONE",
    "LossTerm",
    "Objective",
    "get_class",
    "names",
    "register",
]
