"""Reading and writing a Hugging Face `save_pretrained` directory: config.json and
model.safetensors.

Shared by the BERT, T5 and GPT-2 importers and exporters; each maps the tensors onto its
own model through one table, read one way to import and the other way to export. No
torch is needed: safetensors reads and writes numpy arrays.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import numpy as np
import safetensors.numpy
from flax import traverse_util

from t5x_lite import fileio
from t5x_lite.errors import UserError


def read_config(hf_dir: str, model_type: str) -> dict[str, Any]:
    """config.json as a dict; UserError if missing or of another `model_type`."""
    path = fileio.join(hf_dir, "config.json")
    if not fileio.isfile(path):
        raise UserError(f"{path} does not exist; point at a directory written by save_pretrained")
    hf_config = json.loads(fileio.read_text(path))
    if hf_config.get("model_type") != model_type:
        raise UserError(f"{path}: model_type={hf_config.get('model_type')!r} is not {model_type!r}")
    return hf_config


def _tensors_path(hf_dir: str) -> str:
    path = fileio.join(hf_dir, "model.safetensors")
    if not fileio.isfile(path):
        raise UserError(f"{path} does not exist; re-save the model with save_pretrained")
    return path


def read_tensors(hf_dir: str) -> dict[str, np.ndarray]:
    """model.safetensors -> {HF name: float32 array}."""
    return {
        name: value.astype(np.float32)
        for name, value in load_tensors(_tensors_path(hf_dir)).items()
    }


def load_tensors(path: str) -> dict[str, np.ndarray]:
    """A safetensors file -> {name: array} (as stored), from any path `fileio` reads."""
    return safetensors.numpy.load(fileio.read_bytes(path))


def save_tensors(path: str, tensors: Mapping[str, np.ndarray], metadata=None) -> None:
    """{name: array} -> a safetensors file, written whole."""
    fileio.write_bytes(path, safetensors.numpy.save(dict(tensors), metadata=metadata))


def tensor_names(hf_dir: str) -> set[str]:
    """The tensor names in model.safetensors, read from its header only: an 8-byte
    little-endian length, then that many bytes of JSON {name: dtype, shape, offsets}
    plus an optional "__metadata__"."""
    path = _tensors_path(hf_dir)
    (header_size,) = struct.unpack("<Q", fileio.read_head(path, 8))
    header = json.loads(fileio.read_head(path, 8 + header_size)[8:])
    return set(header) - {"__metadata__"}


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


def export_tensor(value: np.ndarray, layout: str) -> np.ndarray:
    """Our param (one layer's) -> the HF tensor: the inverse of `convert_tensor`."""
    if layout in _LINEAR_IN_AXES:
        in_size = math.prod(value.shape[: _LINEAR_IN_AXES[layout]])
        value = value.reshape(in_size, -1).T  # torch Linear [out, in]
    elif layout != "table":
        value = value.reshape(-1)
    return np.ascontiguousarray(value, dtype=np.float32)


def export_params(
    flat: Mapping[str, np.ndarray], specs: Mapping[str, tuple[str, str]], **names: str
) -> dict[str, np.ndarray]:
    """{our path: array} -> {HF name: tensor} through an importer's table (our path ->
    (HF name template, layout)). A template with "{i}" is a stacked 'layers' param,
    written once per layer; `names` fill the template's other fields (a model prefix)."""
    tensors = {}
    for path, (template, layout) in specs.items():
        value = flat[path]
        if "{i}" not in template:
            tensors[template.format(**names)] = export_tensor(value, layout)
            continue
        for i, layer in enumerate(value):  # [layers, ...]
            tensors[template.format(i=i, **names)] = export_tensor(layer, layout)
    return tensors


def flat_params(params: Any, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """A params tree (numpy or jax arrays, boxed or not) -> {'a/b/c': float32 numpy
    array}, checked against the model's param `shapes` (from config.model)."""
    flat = {
        path: np.asarray(value, dtype=np.float32)
        for path, value in traverse_util.flatten_dict(nn.meta.unbox(params), sep="/").items()
    }
    if set(flat) != set(shapes):
        odd = sorted(set(flat) ^ set(shapes))
        raise UserError(
            f"params do not fit config.model (differing params: {', '.join(odd[:4])}); "
            "pass the model config the params were trained with"
        )
    for path, shape in shapes.items():
        if flat[path].shape != tuple(shape):
            raise UserError(
                f"param {path} has shape {flat[path].shape} but config.model gives "
                f"{tuple(shape)}; pass the model config the params were trained with"
            )
    return flat


def label_names(labels: tuple[str, ...], num_classes: int) -> dict[str, Any]:
    """HF's id2label / label2id for a classifier of `num_classes` (LABEL_i without
    `labels`); {} for a model without one."""
    if labels and len(labels) != num_classes:
        raise UserError(
            f"{len(labels)} labels given but config.model.num_classes={num_classes}; "
            "give one name per class"
        )
    if len(set(labels)) != len(labels):
        raise UserError(f"labels {list(labels)} repeat a name; give each class its own")
    names = list(labels) or [f"LABEL_{i}" for i in range(num_classes)]
    if not names:
        return {}
    return {
        "id2label": {str(i): name for i, name in enumerate(names)},
        "label2id": {name: i for i, name in enumerate(names)},
    }


def token_ids(special_ids: Mapping[str, int] | None, **hf_keys: str) -> dict[str, int]:
    """config.json's token ids: {HF key: special_ids[our name]} for each `HF key=our
    name` whose id `special_ids` (a tokenizer's ids by attribute: pad_id, bos_id, ...)
    has."""
    special_ids = special_ids or {}
    return {key: special_ids[ours] for key, ours in hf_keys.items() if ours in special_ids}


def write_checkpoint(
    output_dir: str, hf_config: Mapping[str, Any], tensors: Mapping[str, np.ndarray]
) -> list[str]:
    """config.json + model.safetensors, as `save_pretrained` writes them; their paths."""
    fileio.makedirs(output_dir)
    config_path = fileio.join(output_dir, "config.json")
    fileio.write_text(config_path, json.dumps(hf_config, indent=2, sort_keys=True))
    tensors_path = fileio.join(output_dir, "model.safetensors")
    # The mark save_pretrained writes; transformers 4 refuses any other "format".
    save_tensors(tensors_path, tensors, metadata={"format": "pt"})
    return [config_path, tensors_path]
