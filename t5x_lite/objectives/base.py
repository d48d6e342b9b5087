"""What an objective is: the contract between the data pipeline, the model and the loss.

An objective turns one tokenized document into one example (a dict of 1-D int32
arrays of any length). The packer then fits examples into fixed-length rows and adds,
for every feature group (the name prefix before the first underscore: `decoder`,
`encoder`, ...), `<group>_segment_ids` and `<group>_positions`.

The trainer never branches on the objective: it reads `loss_terms` to know which model
output is scored against which target feature with which weights.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping

import numpy as np

# Pack modes understood by `t5x_lite.data.packing`.
PACK_CONCAT = "concat"  # concatenate documents and cut into rows; documents may straddle rows
PACK_FIRST_FIT = "first_fit"  # whole examples placed into the first row with room; never split


@dataclasses.dataclass(frozen=True)
class LossTerm:
    """One cross-entropy term: `output` logits scored against `targets` with `weights`."""

    name: str  # metric prefix, e.g. "lm"
    output: str  # key of the model's output dict, e.g. "logits"
    targets: str  # batch feature with target ids, e.g. "decoder_target_tokens"
    weights: str  # batch feature with per-position loss weights


class Objective(abc.ABC):
    """A pretraining objective. Subclasses are registered with `objectives.register`."""

    name: str
    architectures: tuple[str, ...]  # model `arch` values this objective fits
    pack_mode: str
    loss_terms: tuple[LossTerm, ...]

    @abc.abstractmethod
    def feature_lengths(self) -> Mapping[str, int]:
        """Row length of every feature this objective produces."""

    @abc.abstractmethod
    def preprocess(self, tokens: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One document's token ids (int32, no EOS) -> one example of 1-D int32 arrays."""

    @classmethod
    def build(cls, tokenizer, **knobs) -> Objective:
        """Construct from the `config.objective` knobs; override to read special ids."""
        del tokenizer
        return cls(**knobs)

    def features(self) -> tuple[str, ...]:
        return tuple(self.feature_lengths())
