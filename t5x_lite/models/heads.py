"""The output heads of each architecture: parameters outside the body that a checkpoint
may lack (a BertModel has no masked-LM head) or that an objective may leave untrained
(RoBERTa-style pretraining never trains NSP), and which model output needs which.
A run records the heads nothing trained in its heads.json (`train/checkpoints.py`), so
that commands refuse to run a random head without saying so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# Output heads: parameters outside the body that a checkpoint may lack or that an
# objective may leave untrained (their top-level param names), per architecture. The
# decoder's and the encoder-decoder's vocabulary logits belong to the body: GPT ties them
# to the token table and every checkpoint format carries T5's.
HEADS: dict[str, dict[str, tuple[str, ...]]] = {
    "decoder_only": {"classifier": ("classifier",)},
    "encoder_only": {
        "pooler": ("pooler",),
        "mlm": ("mlm_transform", "mlm_norm", "mlm_bias"),
        "nsp": ("nsp",),
        "classifier": ("classifier",),
    },
    "encoder_decoder": {},
}
# Model output -> the heads it is computed with.
OUTPUT_HEADS: dict[str, dict[str, tuple[str, ...]]] = {
    "decoder_only": {"logits": (), "class_logits": ("classifier",)},
    "encoder_only": {
        "mlm_logits": ("mlm",),
        "nsp_logits": ("pooler", "nsp"),
        "class_logits": ("pooler", "classifier"),
    },
    "encoder_decoder": {"logits": ()},
}


# The output that predicts tokens, per architecture (what generation and export use).
LM_OUTPUT = {"decoder_only": "logits", "encoder_only": "mlm_logits", "encoder_decoder": "logits"}


def head_of(arch: str, param_path: str) -> str | None:
    """The head a parameter ('a/b/c' path) belongs to, or None for the body."""
    top = param_path.split("/", 1)[0]
    return next((head for head, tops in HEADS[arch].items() if top in tops), None)


def of_model(model_config: Mapping[str, Any]) -> frozenset:
    """The heads a model built from `model_config` (config.model) has."""
    heads = set(HEADS[model_config["arch"]])
    if not model_config.get("num_classes"):  # the encoder-decoder has no classifier
        heads.discard("classifier")
    return frozenset(heads)


def trained_by(arch: str, outputs: Iterable[str]) -> frozenset:
    """The heads that losses on the model outputs `outputs` train."""
    return frozenset(head for output in outputs for head in OUTPUT_HEADS[arch].get(output, ()))
