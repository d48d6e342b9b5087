"""Hand a model to `transformers` users: `export_hf` writes a directory that
`AutoModel...from_pretrained` and `AutoTokenizer.from_pretrained` load.

The params go through the family's exporter in models/hf_*.py, which reads the same
name tables as the importer, so import -> export -> import is exact; the tokenizer
writes its own files (`save_pretrained`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from t5x_lite import families, fileio
from t5x_lite import tokenizer as tokenizer_lib
from t5x_lite.errors import UserError

# The special ids a tokenizer may have, by attribute; each exporter reads the ones it
# writes (pad / EOS / decoder start ids, GPT-1's [START] [DELIM] [EXTRACT]).
_SPECIAL_ID_NAMES = ("pad_id", "eos_id", "unk_id", "bos_id", "mask_id", "cls_id", "sep_id")


def export_hf(
    model_config: Mapping[str, Any],
    params: Any,
    tokenizer,
    output_dir: str,
    *,
    labels: tuple[str, ...] = (),
    special_ids: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Writes `params` (of `model_config`, our config.model) and `tokenizer`'s files
    into `output_dir`, which must not exist or be empty: BERT, GPT-2 or T5, by
    `model_config["arch"]` (see export_hf_bert, export_hf_gpt2, export_hf_t5 for what
    each writes and drops).

    `labels` name a classifier's classes. `special_ids` ({"bos_id": 3, ...}, by
    tokenizer attribute name) default to the tokenizer's own. Everything is written
    to a staging directory first, so a failed export leaves nothing behind (on an object
    store the files are then uploaded one by one: see `fileio.staged_directory`).

    Returns {"hf_class": the transformers class, "output_dir": ..., "files": [names]}.
    """
    if model_config.get("arch") not in families.FAMILIES:
        raise UserError(
            f"config.model.arch={model_config.get('arch')!r} cannot be exported; "
            f"valid: {', '.join(families.FAMILIES)}"
        )
    family = families.FAMILIES[model_config["arch"]]
    _check_output_dir(output_dir)
    if tokenizer.vocab_size > model_config["vocab_size"]:
        raise UserError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but config.model.vocab_size="
            f"{model_config['vocab_size']}; export with the tokenizer the model was trained with"
        )
    if special_ids is None:
        special_ids = {
            name: getattr(tokenizer, name) for name in _SPECIAL_ID_NAMES if hasattr(tokenizer, name)
        }
    with fileio.staged_directory(output_dir) as staging:
        summary = family.export_hf(
            model_config, params, staging, labels=tuple(labels), special_ids=special_ids
        )
        _save_tokenizer(tokenizer, staging, family.hf_tokenizer_template)
    return {
        "hf_class": summary["hf_class"],
        "output_dir": output_dir,
        "files": sorted(fileio.listdir(output_dir)),
    }


def _check_output_dir(output_dir: str) -> None:
    """Never write over someone's files."""
    if fileio.isdir(output_dir) and fileio.listdir(output_dir):
        raise UserError(f"{output_dir} is not empty; export into a new or empty directory")
    if fileio.exists(output_dir) and not fileio.isdir(output_dir):
        raise UserError(f"{output_dir} is a file; export into a new or empty directory")


def _save_tokenizer(tokenizer, directory: str, template: str) -> list[str]:
    if isinstance(tokenizer, tokenizer_lib.Tokenizer):
        # One vocabulary serves every family; the family says what goes around a text.
        return tokenizer.save_pretrained(directory, template=template)
    return tokenizer.save_pretrained(directory)  # read from HF files: copies them
