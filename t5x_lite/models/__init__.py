"""Model architectures, looked up by `config.model.arch`.

`build_model(config.model)` passes every other key of `config.model` to the
architecture's constructor, so the config's keys must be exactly the module's fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from t5x_lite.errors import UserError
from t5x_lite.models.decoder_only import DecoderOnly
from t5x_lite.models.encoder_decoder import EncoderDecoder
from t5x_lite.models.encoder_only import EncoderOnly

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "decoder_only": DecoderOnly,
    "encoder_only": EncoderOnly,
    "encoder_decoder": EncoderDecoder,
}

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


# Dataclass fields every flax Module has that are not model hyperparameters.
_MODULE_PLUMBING_FIELDS = frozenset({"parent", "name"})


def _hyperparameter_names(cls: type[nn.Module]) -> set[str]:
    return {field.name for field in dataclasses.fields(cls)} - _MODULE_PLUMBING_FIELDS


def build_model(model_config: Mapping[str, Any]) -> nn.Module:
    """`config.model` (ConfigDict or dict with 'arch' + the module's fields) -> module."""
    if "arch" not in model_config:
        raise UserError(f"config.model.arch is missing; valid: {', '.join(ARCHITECTURES)}")
    arch = model_config["arch"]
    if arch not in ARCHITECTURES:
        raise UserError(
            f"config.model.arch={arch!r} is not a known architecture; "
            f"valid: {', '.join(ARCHITECTURES)}"
        )
    cls = ARCHITECTURES[arch]
    kwargs = {key: value for key, value in model_config.items() if key != "arch"}
    expected = _hyperparameter_names(cls)
    unknown = sorted(set(kwargs) - expected)
    missing = sorted(expected - set(kwargs))
    if unknown:
        raise UserError(
            f"config.model has unknown field(s) {', '.join(unknown)} for arch {arch!r}; "
            f"valid: {', '.join(sorted(expected))}"
        )
    if missing:
        raise UserError(f"config.model is missing field(s) {', '.join(missing)} for {arch!r}")
    return cls(**kwargs)
