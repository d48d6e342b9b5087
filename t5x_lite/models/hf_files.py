"""Reading a Hugging Face `save_pretrained` directory: config.json and model.safetensors.

Shared by the BERT, T5 and GPT-2 importers; each then maps the tensors onto its own
model. No torch is needed: safetensors reads straight into numpy.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from t5x_lite.errors import UserError


def read_config(hf_dir: str, model_type: str) -> dict[str, Any]:
    """config.json as a dict; UserError if missing or of another `model_type`."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist; point at a directory written by save_pretrained")
    with open(path) as f:
        hf_config = json.load(f)
    if hf_config.get("model_type") != model_type:
        raise UserError(f"{path}: model_type={hf_config.get('model_type')!r} is not {model_type!r}")
    return hf_config


def read_tensors(hf_dir: str) -> dict[str, np.ndarray]:
    """model.safetensors -> {HF name: float32 array}."""
    path = os.path.join(hf_dir, "model.safetensors")
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist; re-save the model with save_pretrained")
    return {name: value.astype(np.float32) for name, value in load_file(path).items()}
