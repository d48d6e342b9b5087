"""Pretraining and fine-tuning objectives. Importing this package registers every
built-in objective."""

from t5x_lite.objectives import (  # noqa: F401  (registers)
    causal_lm,
    masked_lm,
    prefix_lm,
    span_corruption,
    t5_variants,
    tasks,
)
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
