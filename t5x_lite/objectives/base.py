"""What an objective is: the contract between the data pipeline, the model and the loss.

An objective turns one tokenized document into as many examples as its length allows
(`preprocess` returns a list of dicts of 1-D int32 arrays of any length), so that every
token of a long document is trained on once per epoch, as BERT and T5 cut their
documents. By default the document is cut into consecutive chunks of `chunk_length`
tokens (the last one shorter; None keeps the document whole, e.g. causal LM, whose
packer splits it across rows, and fine-tuning's one example per labelled row) and
`make_example` turns each chunk into one example; an objective whose examples do not
come from fixed chunks (BERT's sentence pairs) overrides `preprocess`. The packer then
fits examples into fixed-length rows and adds, for every feature group (the name prefix
before the first underscore: `decoder`, `encoder`, ...), `<group>_segment_ids` and
`<group>_positions`.

The trainer never branches on the objective: it reads `loss_terms` to know which model
output is scored against which target feature with which weights.

Randomness: `preprocess` must be a pure function of its arguments, drawing only from
the one `rng` it is given for the whole document (its chunks draw from it in turn, so a
short document draws exactly what its single chunk does). The pipeline seeds that rng
per element of the repeated stream when `dynamic_randomness` is True (a fresh draw
every epoch, e.g. RoBERTa's dynamic masking) and per source document when False (the
same examples every epoch, BERT's static masking); being pure, `preprocess` can be rerun
to resume from a checkpoint taken between two examples of one document. An objective
with `uses_other_document = True` (BERT's next sentence prediction) is called as
`preprocess(tokens, rng, other_document)`: `other_document(rng)` returns the token ids
of another document of the same data shard, picked uniformly with the rng it is passed
(the document itself only when the shard has one document; the result may be empty if
that document tokenizes to nothing), and may be called once per example that needs one.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping

import numpy as np

from t5x_lite.objectives.chunks import consecutive_chunks
from t5x_lite.tokenizer import NUM_SENTINELS

# Constructor arguments derived from a tokenizer other than by reading its attribute of
# the same name.
_TOKENIZER_VALUES = {
    "word_start": lambda tokenizer: tokenizer.word_start_mask(),  # [vocab] bool
    "special": lambda tokenizer: tokenizer.special_mask(),  # [vocab] bool
    "sentinel_ids": lambda tokenizer: np.array(  # [NUM_SENTINELS]
        [tokenizer.sentinel_id(i) for i in range(NUM_SENTINELS)]
    ),
    # The fine-tuning formats' delimiters, by id name.
    "special_ids": lambda tokenizer: {
        name: getattr(tokenizer, name) for name in ("bos_id", "cls_id", "sep_id")
    },
}


def _tokenizer_value(tokenizer, name: str):
    """The value of the tokenizer-derived constructor argument `name`."""
    if name in _TOKENIZER_VALUES:
        return _TOKENIZER_VALUES[name](tokenizer)
    return getattr(tokenizer, name)


@dataclasses.dataclass(frozen=True)
class LossTerm:
    """One cross-entropy term: `output` logits scored against `targets` with `weights`."""

    name: str  # metric prefix, e.g. "lm"
    output: str  # key of the model's output dict, e.g. "logits"
    targets: str  # batch feature with target ids, e.g. "decoder_target_tokens"
    weights: str  # batch feature with per-position loss weights
    # Multiplies this term's mean loss in the training objective (metrics stay unscaled),
    # e.g. GPT-1's auxiliary LM loss next to the classifier's.
    scale: float = 1.0
    # When `weights` is a selection of the positions of a full-length weight feature
    # (the masked LM scoring at most max_predictions positions per row), that feature:
    # the metrics then count the weighted positions left unscored (`<name>/unscored`).
    selected_from: str = ""


class Objective(abc.ABC):
    """A pretraining objective. Subclasses are registered with `objectives.register`."""

    name: str
    architectures: tuple[str, ...]  # model `arch` values this objective fits
    pack_mode: str  # one of t5x_lite.data.packing's PACK_* modes
    loss_terms: tuple[LossTerm, ...]
    # See the module docstring; subclasses (or instances) override these.
    uses_other_document: bool = False
    dynamic_randomness: bool = True
    # Document tokens per example (the default `preprocess` cuts consecutive chunks of
    # this length); None: the whole document makes one example.
    chunk_length: int | None = None

    @abc.abstractmethod
    def feature_lengths(self) -> Mapping[str, int]:
        """Row length of every feature this objective produces."""

    def encode(self, tokenizer, document) -> np.ndarray:
        """One source document -> what `preprocess` takes as `tokens`. Text objectives
        tokenize a string; task objectives (fine-tuning) encode a labelled example."""
        return tokenizer.encode(document)

    def preprocess(self, tokens, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
        """One document's token ids (int32, no EOS) -> its examples, in document order:
        one per consecutive chunk of `chunk_length` tokens, made by `make_example`.

        Objectives with `uses_other_document` take a third argument, `other_document`,
        and override this (see the module docstring).
        """
        return [
            self.make_example(chunk, rng) for chunk in consecutive_chunks(tokens, self.chunk_length)
        ]

    @abc.abstractmethod
    def make_example(self, tokens, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One chunk of a document (or, with `chunk_length` None, the whole document or
        labelled example that `encode` made) -> one example of 1-D int32 arrays."""

    # Constructor arguments that `build` fills from the tokenizer, not from the config:
    # names in _TOKENIZER_VALUES, or else a tokenizer attribute (`bos_id`, `mask_id`, ...).
    ids_from_tokenizer: tuple[str, ...] = ()

    @classmethod
    def build(cls, tokenizer, **knobs) -> Objective:
        """Construct from the `config.objective` knobs plus the `ids_from_tokenizer`
        arguments, read from `tokenizer`."""
        ids = {name: _tokenizer_value(tokenizer, name) for name in cls.ids_from_tokenizer}
        return cls(**ids, **knobs)

    def features(self) -> tuple[str, ...]:
        return tuple(self.feature_lengths())

    def device_features(self, batch: dict) -> dict:
        """The batch with features computed on device, inside the jitted train and eval
        steps, before the model and the loss terms read it (e.g. the masked LM's
        positions to score). Default: none."""
        return batch
