"""Everything that differs by architecture family outside the model itself, one module
per family, looked up by `config.model.arch` (as objectives are by name):

  decoder_only      GPT      families/decoder_only.py
  encoder_only      BERT     families/encoder_only.py
  encoder_decoder   T5       families/encoder_decoder.py

Each is a `Family` (families/base.py): generation, cloze answers, in-context scoring of
label words, FLOPs per row, the fine-tuning formats it takes, and Hugging Face import
and export. Nothing outside `models/` and this package tests `arch`.

Adding a family: its model in models/ (registered in models.ARCHITECTURES, its heads in
models.HEADS), a `Family` subclass here added to FAMILIES, its objectives registered
for the new arch, and tests.
"""

from __future__ import annotations

from t5x_lite.errors import UserError
from t5x_lite.families.base import Family
from t5x_lite.families.decoder_only import DecoderOnly
from t5x_lite.families.encoder_decoder import EncoderDecoder
from t5x_lite.families.encoder_only import EncoderOnly

FAMILIES: dict[str, Family] = {
    family.arch: family for family in (DecoderOnly(), EncoderOnly(), EncoderDecoder())
}
# config.json's model_type -> family, for Hugging Face directories.
BY_HF_MODEL_TYPE: dict[str, Family] = {f.hf_model_type: f for f in FAMILIES.values()}
BY_HF_FORMAT: dict[str, Family] = {f.hf_format: f for f in FAMILIES.values()}


def get(arch: str) -> Family:
    if arch not in FAMILIES:
        raise UserError(
            f"config.model.arch={arch!r} is not a known family; valid: {', '.join(FAMILIES)}"
        )
    return FAMILIES[arch]


__all__ = ["BY_HF_FORMAT", "BY_HF_MODEL_TYPE", "FAMILIES", "Family", "get"]
