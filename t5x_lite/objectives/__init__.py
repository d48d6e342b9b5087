"""Pretraining and fine-tuning objectives. Importing this package registers every
built-in objective."""

from t5x_lite.objectives import (  # noqa: F401  (registers)
    causal_lm,
    finetune_formats,
    masked_lm,
    prefix_lm,
    span_corruption,
    t5_variants,
)
from t5x_lite.objectives.base import LossTerm, Objective
from t5x_lite.objectives.registry import build, check, get_class, names, register

__all__ = [
    "LossTerm",
    "Objective",
    "build",
    "check",
    "get_class",
    "names",
    "register",
]
