"""Reading a Hugging Face `save_pretrained` directory: config.json and model.safetensors.

Shared by the BERT, T5 and GPT-2 importers; each then maps the tensors onto its own
model. No torch is needed: safetensors reads straight into numpy.
"""

from __future__ import annotations

import json
import math
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


# torch Linear weights are [out, in]; ours are [*in_dims, *out_dims] with this many
# leading input dims.
_LINEAR_IN_AXES = {"linear": 1, "linear_from_heads": 2}


def convert_tensor(name: str, value: np.ndarray, layout: str, shape: tuple[int, ...]) -> np.ndarray:
    """One HF tensor -> our `shape`; UserError naming the tensor on a shape mismatch.

    layout: "linear" / "linear_from_heads" (transposed torch Linear weight), "table"
    (same shape), anything else (a vector reshaped to `shape`).
    """
    if layout in _LINEAR_IN_AXES:
        in_axes = _LINEAR_IN_AXES[layout]
        hf_shape = (math.prod(shape[in_axes:]), math.prod(shape[:in_axes]))
        converted = value.T
    elif layout == "table":
        hf_shape, converted = shape, value
    else:
        hf_shape, converted = (math.prod(shape),), value
    if value.shape != hf_shape:
        raise UserError(f"HF tensor {name} has shape {value.shape}; expected {hf_shape}")
    return converted.reshape(shape)
