"""Import a Hugging Face GPT-2 checkpoint (config.json + model.safetensors) into DecoderOnly.

Reads GPT2LMHeadModel ('transformer.' prefix) and GPT2Model (no prefix). Only numpy and
safetensors touch the checkpoint; torch is never imported. Also a byte-level BPE
tokenizer (vocab.json + merges.txt) behind the interface of `tokenizer.Tokenizer`.

Layout changes: GPT-2's Conv1D weights are already [in, out], so they are only reshaped;
the fused c_attn projection [embed, 3 * embed] is split into query, key and value
kernels [embed, heads, kv]. Per-layer tensors are stacked on a leading 'layers' axis, as
`nn.scan` stores them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
from flax import traverse_util
from tokenizers import decoders, models, pre_tokenizers

from t5x_lite.errors import UserError
from t5x_lite.models import decoder_only, hf_files
from t5x_lite.models.decoder_only import DecoderOnly

# HF activation_function values that are DecoderOnly's tanh-approximated GELU.
_HF_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")

# Our param path -> (HF tensor name, layout). "{i}" is the layer index of the stacked
# 'layers/' params; names follow the model prefix ('transformer.' or '').
# Layouts:
#   table    embedding [rows, embed], copied
#   vector   biases and norm params; flat in HF even where ours is (heads, kv)
#   conv1d   Conv1D weight [in, out] -> kernel of our shape, reshaped only
#   q/k/v    the first/second/third third of the fused c_attn (last axis)
_TENSORS = {
    "token_embed/embedding": ("wte.weight", "table"),
    "position_embed/embedding": ("wpe.weight", "table"),
    "layers/pre_attention_norm/scale": ("h.{i}.ln_1.weight", "vector"),
    "layers/pre_attention_norm/bias": ("h.{i}.ln_1.bias", "vector"),
    "layers/attention/query/kernel": ("h.{i}.attn.c_attn.weight", "q"),
    "layers/attention/query/bias": ("h.{i}.attn.c_attn.bias", "q"),
    "layers/attention/key/kernel": ("h.{i}.attn.c_attn.weight", "k"),
    "layers/attention/key/bias": ("h.{i}.attn.c_attn.bias", "k"),
    "layers/attention/value/kernel": ("h.{i}.attn.c_attn.weight", "v"),
    "layers/attention/value/bias": ("h.{i}.attn.c_attn.bias", "v"),
    "layers/attention/out/kernel": ("h.{i}.attn.c_proj.weight", "conv1d"),
    "layers/attention/out/bias": ("h.{i}.attn.c_proj.bias", "vector"),
    "layers/pre_mlp_norm/scale": ("h.{i}.ln_2.weight", "vector"),
    "layers/pre_mlp_norm/bias": ("h.{i}.ln_2.bias", "vector"),
    "layers/mlp/wi/kernel": ("h.{i}.mlp.c_fc.weight", "conv1d"),
    "layers/mlp/wi/bias": ("h.{i}.mlp.c_fc.bias", "vector"),
    "layers/mlp/wo/kernel": ("h.{i}.mlp.c_proj.weight", "conv1d"),
    "layers/mlp/wo/bias": ("h.{i}.mlp.c_proj.bias", "vector"),
    "final_norm/scale": ("ln_f.weight", "vector"),
    "final_norm/bias": ("ln_f.bias", "vector"),
}
_QKV = ("q", "k", "v")
# Attention-mask buffers that transformers < 4.x saved next to the weights.
_BUFFER = re.compile(r"^(transformer\.)?h\.\d+\.attn\.(masked_)?bias$")
_LM_HEAD = "lm_head.weight"


def model_config_from_hf(hf_config: Mapping[str, Any]) -> dict[str, Any]:
    """HF GPT2Config dict -> `config.model` dict for DecoderOnly (float32).

    `dropout_rate` is resid_pdrop (after each sublayer, and after the embeddings where HF
    uses embd_pdrop); HF's attention-probability dropout has no counterpart.
    """
    required = ["vocab_size", "n_embd", "n_layer", "n_head", "n_positions"]
    missing = [key for key in required if key not in hf_config]
    if missing:
        raise UserError(f"HF GPT-2 config.json lacks {', '.join(missing)}")
    epsilon = hf_config.get("layer_norm_epsilon", 1e-5)
    if not math.isclose(epsilon, decoder_only.LAYER_NORM_EPSILON):
        raise UserError(
            f"HF GPT-2 layer_norm_epsilon={epsilon} is not DecoderOnly's "
            f"{decoder_only.LAYER_NORM_EPSILON}"
        )
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in _HF_ACTIVATIONS:
        raise UserError(
            f"HF GPT-2 activation_function={activation!r} is not one of "
            f"{', '.join(_HF_ACTIVATIONS)}"
        )
    # Variants whose math DecoderOnly does not have (reorder_and_upcast_attn only
    # changes the float precision, so it is accepted).
    unsupported = {
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "add_cross_attention": False,
    }
    for key, supported in unsupported.items():
        if hf_config.get(key, supported) != supported:
            raise UserError(f"HF GPT-2 {key}={hf_config[key]!r} is not supported")
    d_model, num_heads = hf_config["n_embd"], hf_config["n_head"]
    if d_model % num_heads:
        raise UserError(f"HF GPT-2 n_embd={d_model} is not a multiple of {num_heads} heads")
    d_ff = hf_config.get("n_inner")
    return {
        "arch": "decoder_only",
        "vocab_size": hf_config["vocab_size"],
        "d_model": d_model,
        "num_layers": hf_config["n_layer"],
        "num_heads": num_heads,
        "head_dim": d_model // num_heads,
        "d_ff": 4 * d_model if d_ff is None else d_ff,
        "max_len": hf_config["n_positions"],
        "dropout_rate": hf_config.get("resid_pdrop", 0.1),
        "tie_embeddings": hf_config.get("tie_word_embeddings", True),
        "dtype": "float32",
        "remat_policy": "none",
        "attention_impl": "dot_product_attention",
        "num_classes": 0,
    }


def _read_tensors(hf_dir: str) -> tuple[dict[str, np.ndarray], np.ndarray | None, str]:
    """model.safetensors -> ({HF name: float32 array}, the lm_head weight or None, the
    model prefix), minus buffers."""
    tensors = {
        name: value
        for name, value in hf_files.read_tensors(hf_dir).items()
        if not _BUFFER.match(name)
    }
    lm_head = tensors.pop(_LM_HEAD, None)
    prefix = "transformer." if any(name.startswith("transformer.") for name in tensors) else ""
    return tensors, lm_head, prefix


def _convert_one(name: str, value: np.ndarray, layout: str, shape: tuple[int, ...]) -> np.ndarray:
    """One HF tensor (or a third of c_attn) -> our `shape`; UserError on a mismatch."""
    if layout in ("table", "vector"):
        return hf_files.convert_tensor(name, value, layout, shape)
    if layout == "conv1d":  # the kernel's leading dims flatten into Conv1D's rows
        hf_shape = (math.prod(shape[:-1]), shape[-1])
    else:  # a third of c_attn; the kernel is (embed, heads, kv), the bias (heads, kv)
        hf_shape = shape[:-2] + (3 * shape[-2] * shape[-1],)
    if value.shape != hf_shape:
        raise UserError(f"HF GPT-2 tensor {name} has shape {value.shape}; expected {hf_shape}")
    part = value
    if layout in _QKV:
        out = shape[-2] * shape[-1]
        index = _QKV.index(layout)
        part = value[..., index * out : (index + 1) * out]
    return part.reshape(shape)


def _take(tensors: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    if name not in tensors:
        raise UserError(f"HF GPT-2 checkpoint lacks tensor {name}")
    return tensors[name]


def _init_fn(model: DecoderOnly):
    """rng -> all of the model's params, unboxed, as a flat {'a/b/c': array} dict."""
    batch = {
        name: jnp.zeros((1, 1), jnp.int32)
        for name in ("decoder_input_tokens", "decoder_segment_ids", "decoder_positions")
    }

    def init(rng: jax.Array) -> dict[str, jax.Array]:
        variables = model.init({"params": rng}, batch, deterministic=True)
        return traverse_util.flatten_dict(nn.meta.unbox(variables["params"]), sep="/")

    return init


def load_hf_gpt2(
    hf_dir: str, *, rng: jax.Array | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A saved HF GPT-2 -> (`config.model` dict for DecoderOnly, params).

    `params` is exactly DecoderOnly's `init(...)["params"]` tree, unboxed, as float32
    numpy arrays; use it as `model.apply({"params": params}, ...)`. Every parameter comes
    from the checkpoint, so `rng` (accepted for symmetry with load_hf_bert) only traces
    the init for the param shapes. With tied embeddings (GPT-2's default) an lm_head
    weight, if saved, must equal wte; untied, it becomes the logits kernel. A missing or
    unused tensor or a shape mismatch is a UserError naming the tensor.
    """
    model_config = model_config_from_hf(hf_files.read_config(hf_dir, "gpt2"))
    tensors, lm_head, prefix = _read_tensors(hf_dir)
    model = DecoderOnly(**{k: v for k, v in model_config.items() if k != "arch"})
    rng = jax.random.key(0) if rng is None else rng
    shapes = {path: leaf.shape for path, leaf in jax.eval_shape(_init_fn(model), rng).items()}

    used = set()
    flat = {}
    for path, (template, layout) in _TENSORS.items():
        shape = shapes[path]
        if not path.startswith("layers/"):
            name = prefix + template
            used.add(name)
            flat[path] = _convert_one(name, _take(tensors, name), layout, shape)
            continue
        per_layer = []
        for i in range(model.num_layers):
            name = prefix + template.format(i=i)
            used.add(name)
            per_layer.append(_convert_one(name, _take(tensors, name), layout, shape[1:]))
        flat[path] = np.stack(per_layer)  # [layers, ...]
    unused = sorted(set(tensors) - used)
    if unused:
        raise UserError(f"HF GPT-2 checkpoint has unused tensor(s): {', '.join(unused)}")

    if model.tie_embeddings:
        if lm_head is not None and not np.array_equal(lm_head, flat["token_embed/embedding"]):
            raise UserError(f"HF GPT-2 {_LM_HEAD} is not tied to wte but tie_word_embeddings=true")
    else:
        if lm_head is None:
            raise UserError(
                f"HF GPT-2 checkpoint lacks tensor {_LM_HEAD} (tie_word_embeddings=false)"
            )
        # torch Linear [vocab, embed] -> kernel [embed, vocab]
        flat["logits_kernel"] = hf_files.convert_tensor(
            _LM_HEAD, lm_head, "linear", shapes["logits_kernel"]
        )
    missing = sorted(set(shapes) - set(flat))
    assert not missing, missing  # _TENSORS out of step with DecoderOnly
    return model_config, traverse_util.unflatten_dict(flat, sep="/")


END_OF_TEXT = "<|endoftext|>"


class GPT2Tokenizer:
    """GPT-2's byte-level BPE from `hf_dir`'s vocab.json + merges.txt.

    Lossless: every string round-trips. GPT-2 has one special token, <|endoftext|>, which
    is both `bos_id` and `eos_id` (and decodes to nothing, as BOS and EOS do in
    `Tokenizer`); it is matched as one token where it appears in raw text.
    """

    def __init__(self, hf_dir: str):
        self.hf_dir = hf_dir
        vocab_path = os.path.join(hf_dir, "vocab.json")
        merges_path = os.path.join(hf_dir, "merges.txt")
        for path in (vocab_path, merges_path):
            if not os.path.isfile(path):
                raise UserError(f"{path} does not exist; not a GPT-2 tokenizer directory")
        self._tokenizer = tokenizers.Tokenizer(models.BPE.from_file(vocab_path, merges_path))
        self._tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        self._tokenizer.decoder = decoders.ByteLevel()
        if self._tokenizer.token_to_id(END_OF_TEXT) is None:
            raise UserError(f"{vocab_path} has no {END_OF_TEXT}; not a GPT-2 vocabulary")
        self._tokenizer.add_special_tokens([END_OF_TEXT])
        self.eos_id = self.bos_id = self._tokenizer.token_to_id(END_OF_TEXT)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> np.ndarray:
        """Text -> token ids [num_tokens] int32, without <|endoftext|> added."""
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        return np.asarray(ids, dtype=np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        flat = np.asarray(ids, dtype=np.int64).reshape(-1)
        return self._tokenizer.decode(flat[flat != self.eos_id].tolist())
