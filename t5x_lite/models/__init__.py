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
