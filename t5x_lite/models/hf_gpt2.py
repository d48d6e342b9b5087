"""Import a Hugging Face GPT-2 checkpoint (config.json + model.safetensors) into DecoderOnly,
and export DecoderOnly params as a GPT2LMHeadModel (see `export_hf_gpt2`).

Reads GPT2LMHeadModel ('transformer.' prefix) and GPT2Model (no prefix), plus the GPT-1
classifier head that the export writes next to them. Only numpy and safetensors touch
the checkpoint; torch is never imported. Also a byte-level BPE tokenizer (vocab.json +
merges.txt) behind the interface of `tokenizer.Tokenizer`.

Layout changes: GPT-2's Conv1D weights are already [in, out], so they are only reshaped;
the fused c_attn projection [embed, 3 * embed] is split into query, key and value
kernels [embed, heads, kv]. Per-layer tensors are stacked on a leading 'layers' axis, as
`nn.scan` stores them.
"""

from __future__ import annotations

import json
import math
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

from t5x_lite import fileio, hf_tokenizer
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
# DecoderOnly's GPT-1 classifier (num_classes > 0), which transformers has no class for:
# our path -> (tensor name in CLASSIFIER_FILE, layout as in hf_bert).
_CLASSIFIER_TENSORS = {
    "classifier/dense/kernel": ("weight", "linear"),
    "classifier/dense/bias": ("bias", "vector"),
}
CLASSIFIER_FILE = "classifier.safetensors"
CLASSIFIER_README = "classifier_head.json"
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
        "attention_impl": "auto",
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
        for name in (
            "decoder_input_tokens",
            "decoder_segment_ids",
            "decoder_positions",
            "class_token_index",  # read by the classifier only
        )
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
    weight, if saved, must equal wte; untied, it becomes the logits kernel. A
    CLASSIFIER_FILE next to it (written by `export_hf_gpt2`) becomes the `classifier`
    params and its rows `num_classes`. A missing or unused tensor or a shape mismatch
    is a UserError naming the tensor.
    """
    model_config = model_config_from_hf(hf_files.read_config(hf_dir, "gpt2"))
    tensors, lm_head, prefix = _read_tensors(hf_dir)
    classifier = _read_classifier(hf_dir)
    if classifier:
        model_config["num_classes"] = classifier["weight"].shape[0]
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
    if classifier:
        for path, (name, layout) in _CLASSIFIER_TENSORS.items():
            flat[path] = hf_files.convert_tensor(name, classifier[name], layout, shapes[path])
    missing = sorted(set(shapes) - set(flat))
    assert not missing, missing  # _TENSORS out of step with DecoderOnly
    return model_config, traverse_util.unflatten_dict(flat, sep="/")


def _read_classifier(hf_dir: str) -> dict[str, np.ndarray]:
    """CLASSIFIER_FILE's {name: float32 array}, {} if there is none."""
    path = fileio.join(hf_dir, CLASSIFIER_FILE)
    if not fileio.isfile(path):
        return {}
    tensors = hf_files.load_tensors(path)
    expected = {name for name, _ in _CLASSIFIER_TENSORS.values()}
    if set(tensors) != expected:
        raise UserError(f"{path} holds {sorted(tensors)}; expected {sorted(expected)}")
    return {name: value.astype(np.float32) for name, value in tensors.items()}


def hf_config_from_model(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """`config.model` of a DecoderOnly -> HF GPT2Config dict; the inverse of
    `model_config_from_hf`. HF's attention-probability dropout, which DecoderOnly does
    not have, is 0; embd_pdrop and resid_pdrop are `dropout_rate`."""
    if model_config["num_heads"] * model_config["head_dim"] != model_config["d_model"]:
        raise UserError(
            f"config.model.head_dim={model_config['head_dim']} times num_heads="
            f"{model_config['num_heads']} is not d_model={model_config['d_model']}, "
            "which HF GPT-2 requires"
        )
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": model_config["vocab_size"],
        "n_embd": model_config["d_model"],
        "n_layer": model_config["num_layers"],
        "n_head": model_config["num_heads"],
        "n_inner": model_config["d_ff"],
        "n_positions": model_config["max_len"],
        "activation_function": _HF_ACTIVATIONS[0],
        "layer_norm_epsilon": decoder_only.LAYER_NORM_EPSILON,
        "embd_pdrop": model_config["dropout_rate"],
        "resid_pdrop": model_config["dropout_rate"],
        "attn_pdrop": 0.0,
        "tie_word_embeddings": model_config["tie_embeddings"],
        # GPT2Config's default ids are GPT-2's 50256; unknown ones stay unset.
        "bos_token_id": None,
        "eos_token_id": None,
        "dtype": "float32",
    }


def _export_one(value: np.ndarray, layout: str) -> np.ndarray:
    """One layer's param -> its HF tensor (or its third of c_attn); `_convert_one`'s
    inverse."""
    if layout in ("table", "vector"):
        return hf_files.export_tensor(value, layout)
    if layout == "conv1d":
        return value.reshape(-1, value.shape[-1])
    return value.reshape(value.shape[:-2] + (-1,))  # (heads, kv) flattened


def _export_tensors(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{our path: array} -> GPT2LMHeadModel's {HF name: tensor} through _TENSORS."""
    parts: dict[str, dict[str, np.ndarray]] = {}  # HF name -> {layout: part}
    for path, (template, layout) in _TENSORS.items():
        value = flat[path]
        per_layer = enumerate(value) if path.startswith("layers/") else [(None, value)]
        for i, layer in per_layer:
            name = "transformer." + template.format(i=i)
            parts.setdefault(name, {})[layout] = _export_one(layer, layout)
    tensors = {}
    for name, by_layout in parts.items():
        if set(by_layout) == set(_QKV):  # c_attn is [q | k | v] on its last axis
            tensors[name] = np.concatenate([by_layout[part] for part in _QKV], axis=-1)
        else:
            (tensors[name],) = by_layout.values()
    if "logits_kernel" in flat:
        tensors[_LM_HEAD] = hf_files.export_tensor(flat["logits_kernel"], "linear")
    return {name: np.ascontiguousarray(value, np.float32) for name, value in tensors.items()}


def _write_classifier(
    output_dir: str,
    flat: Mapping[str, np.ndarray],
    labels: tuple[str, ...],
    special_ids: Mapping[str, int] | None,
) -> list[str]:
    """CLASSIFIER_FILE and CLASSIFIER_README for a DecoderOnly with num_classes > 0."""
    tensors = hf_files.export_params(flat, _CLASSIFIER_TENSORS)
    weights_path = fileio.join(output_dir, CLASSIFIER_FILE)
    hf_files.save_tensors(weights_path, tensors)
    # The GPT-1 input format's tokens, as objectives/finetune_formats.py lays them out.
    format_ids = hf_files.token_ids(special_ids, start="bos_id", delim="sep_id", extract="cls_id")
    num_classes, d_model = tensors["weight"].shape
    readme = {
        "what": (
            "t5x_lite's GPT-1 classifier (Radford et al. 2018): a linear layer on the "
            "final hidden state (after ln_f) at the [EXTRACT] token. transformers has no "
            "class for it (GPT2ForSequenceClassification's score has no bias and reads "
            "the last non-pad token), so it is kept apart from the GPT2LMHeadModel body."
        ),
        "weights": {
            "file": CLASSIFIER_FILE,
            "weight": [num_classes, d_model],
            "bias": [num_classes],
        },
        "labels": list(labels) or None,
        "input": "[START] text_a [DELIM] text_b [EXTRACT], or [START] text [EXTRACT]",
        "token_ids": format_ids if len(format_ids) == 3 else None,
        "logits": (
            "hidden = GPT2LMHeadModel.from_pretrained(dir)(input_ids, "
            "output_hidden_states=True).hidden_states[-1]; "
            "logits = hidden[:, extract_position] @ weight.T + bias"
        ),
    }
    readme_path = fileio.join(output_dir, CLASSIFIER_README)
    fileio.write_text(readme_path, json.dumps(readme, indent=2))
    return [weights_path, readme_path]


def export_hf_gpt2(
    model_config: Mapping[str, Any],
    params: Any,
    output_dir: str,
    *,
    labels: tuple[str, ...] = (),
    special_ids: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """DecoderOnly params -> a GPT2LMHeadModel checkpoint in `output_dir` (config.json +
    model.safetensors), through the same table `load_hf_gpt2` reads: lm_head.weight
    only when the head is untied.

    A GPT-1 classifier (num_classes > 0) has no transformers class: it goes to
    CLASSIFIER_FILE (`weight` [num_classes, d_model], `bias`) with CLASSIFIER_README, a
    JSON that says how to compute the class logits from transformers' hidden states,
    naming the `labels` and the [START]/[DELIM]/[EXTRACT] ids. `special_ids` (the
    tokenizer's ids by attribute name: bos_id, eos_id, pad_id, sep_id, cls_id) give
    those and config.json's token ids. Returns {"hf_class": ..., "files": [paths]}.
    """
    hf_config = hf_config_from_model(model_config)
    hf_config |= hf_files.token_ids(
        special_ids, bos_token_id="bos_id", eos_token_id="eos_id", pad_token_id="pad_id"
    )
    hf_files.label_names(labels, model_config["num_classes"])  # checks them
    model = DecoderOnly(**{k: v for k, v in model_config.items() if k != "arch"})
    abstract = jax.eval_shape(_init_fn(model), jax.random.key(0))
    flat = hf_files.flat_params(params, {path: leaf.shape for path, leaf in abstract.items()})
    files = hf_files.write_checkpoint(output_dir, hf_config, _export_tensors(flat))
    if model_config["num_classes"]:
        files += _write_classifier(output_dir, flat, labels, special_ids)
    return {"hf_class": "GPT2LMHeadModel", "files": files}


END_OF_TEXT = "<|endoftext|>"


def read_merges_txt(text: str, path: str) -> list[tuple[str, str]]:
    """merges.txt -> BPE merges in rank order: one "left right" pair per line, after an
    optional "#version" line, blank lines skipped (as `BPE.from_file` reads it)."""
    merges = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.startswith("#version") or not line:
            continue
        pair = line.split(" ")
        if len(pair) != 2:
            raise UserError(f"{path}:{number}: expected two pieces separated by a space")
        merges.append((pair[0], pair[1]))
    return merges


class GPT2Tokenizer:
    """GPT-2's byte-level BPE from `hf_dir`'s vocab.json + merges.txt.

    Lossless: every string round-trips. GPT-2 has one special token, <|endoftext|>, which
    is both `bos_id` and `eos_id` (and decodes to nothing, as BOS and EOS do in
    `Tokenizer`); it is matched as one token where it appears in raw text.
    """

    def __init__(self, hf_dir: str):
        self.hf_dir = hf_dir
        vocab_path = fileio.join(hf_dir, "vocab.json")
        merges_path = fileio.join(hf_dir, "merges.txt")
        for path in (vocab_path, merges_path):
            if not fileio.isfile(path):
                raise UserError(f"{path} does not exist; not a GPT-2 tokenizer directory")
        vocab = json.loads(fileio.read_text(vocab_path))
        merges = read_merges_txt(fileio.read_text(merges_path), merges_path)
        self._tokenizer = tokenizers.Tokenizer(models.BPE(vocab, merges))
        self._tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        self._tokenizer.decoder = decoders.ByteLevel()
        if self._tokenizer.token_to_id(END_OF_TEXT) is None:
            raise UserError(f"{vocab_path} has no {END_OF_TEXT}; not a GPT-2 vocabulary")
        self._tokenizer.add_special_tokens([END_OF_TEXT])
        self.eos_id = self.bos_id = self._tokenizer.token_to_id(END_OF_TEXT)
        self.files = hf_tokenizer.tokenizer_files(hf_dir)  # what save_pretrained copies

    def save_pretrained(self, directory: str) -> list[str]:
        """Copies the tokenizer files of `hf_dir` (`files`) into `directory`, where this
        class and `AutoTokenizer` load them as from `hf_dir`; returns their paths."""
        return hf_tokenizer.copy_files(self.hf_dir, self.files, directory)

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
