"""Import a Hugging Face BERT checkpoint (config.json + model.safetensors) into EncoderOnly,
and export EncoderOnly params as one.

Reads BertModel (names without a prefix, pooler, no heads), BertForMaskedLM ('bert.'
prefix, MLM head, no pooler), BertForPreTraining ('bert.' prefix, pooler, MLM and NSP
heads) and BertForSequenceClassification ('bert.' prefix, pooler, classifier). Writes
BertForMaskedLM or BertForSequenceClassification (see `export_hf_bert`). Only numpy and
safetensors touch the checkpoint; torch is never imported.

Layout changes: torch Linear weights are [out, in] and become kernels [in, out], with the
attention projections split into (heads, kv); per-layer tensors are stacked on a leading
'layers' axis, as `nn.scan` stores them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from t5x_lite.errors import UserError
from t5x_lite.models import hf_files
from t5x_lite.models.encoder_only import EncoderOnly

# HF hidden_act -> our activation name; other HF activations have no counterpart here.
_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}

# Our param path -> (HF tensor name, layout). "{bert}" is the model prefix ('bert.' or
# ''), "{i}" the layer index of the stacked 'layers/' params. Layouts:
#   table              embedding [rows, embed], copied
#   vector             biases and norm params; flat in HF even where ours is (heads, kv)
#   linear             torch Linear weight [out, in] -> kernel [in, *out_dims]
#   linear_from_heads  torch Linear weight [out, heads * kv] -> kernel [heads, kv, out]
_BACKBONE_TENSORS = {
    "token_embed/embedding": ("{bert}embeddings.word_embeddings.weight", "table"),
    "position_embed/embedding": ("{bert}embeddings.position_embeddings.weight", "table"),
    "token_type_embed/embedding": ("{bert}embeddings.token_type_embeddings.weight", "table"),
    "embed_norm/scale": ("{bert}embeddings.LayerNorm.weight", "vector"),
    "embed_norm/bias": ("{bert}embeddings.LayerNorm.bias", "vector"),
    "layers/attention/query/kernel": (
        "{bert}encoder.layer.{i}.attention.self.query.weight",
        "linear",
    ),
    "layers/attention/query/bias": ("{bert}encoder.layer.{i}.attention.self.query.bias", "vector"),
    "layers/attention/key/kernel": ("{bert}encoder.layer.{i}.attention.self.key.weight", "linear"),
    "layers/attention/key/bias": ("{bert}encoder.layer.{i}.attention.self.key.bias", "vector"),
    "layers/attention/value/kernel": (
        "{bert}encoder.layer.{i}.attention.self.value.weight",
        "linear",
    ),
    "layers/attention/value/bias": ("{bert}encoder.layer.{i}.attention.self.value.bias", "vector"),
    "layers/attention/out/kernel": (
        "{bert}encoder.layer.{i}.attention.output.dense.weight",
        "linear_from_heads",
    ),
    "layers/attention/out/bias": ("{bert}encoder.layer.{i}.attention.output.dense.bias", "vector"),
    "layers/post_attention_norm/scale": (
        "{bert}encoder.layer.{i}.attention.output.LayerNorm.weight",
        "vector",
    ),
    "layers/post_attention_norm/bias": (
        "{bert}encoder.layer.{i}.attention.output.LayerNorm.bias",
        "vector",
    ),
    "layers/mlp/wi/kernel": ("{bert}encoder.layer.{i}.intermediate.dense.weight", "linear"),
    "layers/mlp/wi/bias": ("{bert}encoder.layer.{i}.intermediate.dense.bias", "vector"),
    "layers/mlp/wo/kernel": ("{bert}encoder.layer.{i}.output.dense.weight", "linear"),
    "layers/mlp/wo/bias": ("{bert}encoder.layer.{i}.output.dense.bias", "vector"),
    "layers/post_mlp_norm/scale": ("{bert}encoder.layer.{i}.output.LayerNorm.weight", "vector"),
    "layers/post_mlp_norm/bias": ("{bert}encoder.layer.{i}.output.LayerNorm.bias", "vector"),
}
# Heads a checkpoint may lack, each all-or-nothing; see load_hf_bert.
_HEAD_TENSORS = {
    "pooler": {
        "pooler/kernel": ("{bert}pooler.dense.weight", "linear"),
        "pooler/bias": ("{bert}pooler.dense.bias", "vector"),
    },
    "mlm": {
        "mlm_transform/kernel": ("cls.predictions.transform.dense.weight", "linear"),
        "mlm_transform/bias": ("cls.predictions.transform.dense.bias", "vector"),
        "mlm_norm/scale": ("cls.predictions.transform.LayerNorm.weight", "vector"),
        "mlm_norm/bias": ("cls.predictions.transform.LayerNorm.bias", "vector"),
        "mlm_bias": ("cls.predictions.bias", "vector"),
    },
    "nsp": {
        "nsp/kernel": ("cls.seq_relationship.weight", "linear"),
        "nsp/bias": ("cls.seq_relationship.bias", "vector"),
    },
}
# A fine-tuned BertForSequenceClassification's head; its rows are `num_classes`.
_CLASSIFIER_TENSORS = {
    "classifier/dense/kernel": ("classifier.weight", "linear"),
    "classifier/dense/bias": ("classifier.bias", "vector"),
}
_CLASSIFIER_WEIGHT = _CLASSIFIER_TENSORS["classifier/dense/kernel"][0]
# Our activation -> HF hidden_act: the first HF name of each in _HF_ACTIVATIONS.
_ACTIVATION_NAMES = {ours: hf for hf, ours in reversed(_HF_ACTIVATIONS.items())}


def model_config_from_hf(hf_config: Mapping[str, Any]) -> dict[str, Any]:
    """HF BertConfig dict -> `config.model` dict for EncoderOnly (post-LN, float32).

    HF's separate attention-probability dropout has no counterpart: `dropout_rate` is
    hidden_dropout_prob, applied after the embeddings and each sublayer.
    """
    required = [
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
        "type_vocab_size",
        "hidden_act",
        "hidden_dropout_prob",
        "layer_norm_eps",
    ]
    missing = [key for key in required if key not in hf_config]
    if missing:
        raise UserError(f"HF BERT config.json lacks {', '.join(missing)}")
    # Configs from transformers < 5 name the position scheme; only absolute is BERT's.
    position_type = hf_config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise UserError(f"HF BERT position_embedding_type={position_type!r} is not supported")
    if hf_config["hidden_act"] not in _HF_ACTIVATIONS:
        raise UserError(
            f"HF BERT hidden_act={hf_config['hidden_act']!r} is not one of "
            f"{', '.join(_HF_ACTIVATIONS)}"
        )
    d_model, num_heads = hf_config["hidden_size"], hf_config["num_attention_heads"]
    if d_model % num_heads:
        raise UserError(f"HF BERT hidden_size={d_model} is not a multiple of {num_heads} heads")
    return {
        "arch": "encoder_only",
        "vocab_size": hf_config["vocab_size"],
        "d_model": d_model,
        "num_layers": hf_config["num_hidden_layers"],
        "num_heads": num_heads,
        "head_dim": d_model // num_heads,
        "d_ff": hf_config["intermediate_size"],
        "max_len": hf_config["max_position_embeddings"],
        "type_vocab_size": hf_config["type_vocab_size"],
        "dropout_rate": hf_config["hidden_dropout_prob"],
        "layer_norm": "post",
        "layer_norm_epsilon": hf_config["layer_norm_eps"],
        "activation": _HF_ACTIVATIONS[hf_config["hidden_act"]],
        "dtype": "float32",
        "remat_policy": "none",
        "attention_impl": "auto",
        "num_classes": 0,
    }


def _model_prefix(names: Iterable[str]) -> str:
    """'bert.' for the task models (BertForMaskedLM, ...), '' for BertModel."""
    return "bert." if any(name.startswith("bert.") for name in names) else ""


def checkpoint_heads(hf_dir: str) -> frozenset[str]:
    """Which of "pooler", "mlm", "nsp", "classifier" the checkpoint holds every tensor
    of; read from the safetensors header only. `load_hf_bert` initializes the others
    (but the classifier) freshly."""
    names = hf_files.tensor_names(hf_dir)
    prefix = _model_prefix(names)
    heads = {**_HEAD_TENSORS, "classifier": _CLASSIFIER_TENSORS}
    return frozenset(
        head
        for head, specs in heads.items()
        if all(template.format(bert=prefix) in names for template, _ in specs.values())
    )


def _read_tensors(hf_dir: str) -> dict[str, np.ndarray]:
    """model.safetensors -> {HF name: float32 array}, minus buffers and tied copies."""
    tensors = hf_files.read_tensors(hf_dir)
    # A buffer, not a parameter; transformers < 5 saved it.
    for name in ("embeddings.position_ids", "bert.embeddings.position_ids"):
        tensors.pop(name, None)
    # Older versions also saved the MLM decoder, which BERT ties to the token embedding
    # and the output bias; accept such copies only when they really are tied.
    tied = {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }
    for name, source in tied.items():
        if name in tensors:
            copy = tensors.pop(name)
            if source not in tensors or not np.array_equal(copy, tensors[source]):
                raise UserError(
                    f"{hf_dir}: {name} is not tied to {source}; untied heads unsupported"
                )
    return tensors


def _take(tensors: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name not in tensors:
        raise UserError(f"HF BERT checkpoint lacks tensor {name}")
    return tensors.pop(name)


def _convert_param(tensors, path: str, spec, shape, prefix: str, num_layers: int) -> np.ndarray:
    """Pops the HF tensor(s) behind our param `path` (all layers for 'layers/' paths)."""
    template, layout = spec
    if not path.startswith("layers/"):
        name = template.format(bert=prefix)
        return hf_files.convert_tensor(name, _take(tensors, name), layout, shape)
    per_layer = []
    for i in range(num_layers):
        name = template.format(bert=prefix, i=i)
        per_layer.append(hf_files.convert_tensor(name, _take(tensors, name), layout, shape[1:]))
    return np.stack(per_layer)  # [layers, ...]


def _init_fn(model: EncoderOnly):
    """rng -> all of the model's params, unboxed, as a flat {'a/b/c': array} dict."""
    batch = {
        name: jnp.zeros((1, 1), jnp.int32)
        for name in (
            "encoder_input_tokens",
            "encoder_segment_ids",
            "encoder_positions",
            "encoder_token_type_ids",
        )
    }

    def init(rng: jax.Array) -> dict[str, jax.Array]:
        variables = model.init({"params": rng}, batch, deterministic=True)
        return traverse_util.flatten_dict(nn.meta.unbox(variables["params"]), sep="/")

    return init


def load_hf_bert(hf_dir: str, *, rng: jax.Array) -> tuple[dict[str, Any], dict[str, Any]]:
    """A saved HF BERT -> (`config.model` dict for EncoderOnly, params).

    `params` is exactly EncoderOnly's `init(...)["params"]` tree, unboxed, as float32
    numpy arrays; use it as `model.apply({"params": params}, ...)`. The embeddings and
    layers must all be in the checkpoint. A head the checkpoint lacks entirely (the MLM
    head of a BertModel, the pooler of a BertForMaskedLM, the NSP head of anything but
    BertForPreTraining) is freshly initialized from `rng`, as EncoderOnly.init would,
    so its outputs are meaningless until fine-tuned (`checkpoint_heads` says which
    heads are real). A BertForSequenceClassification's classifier becomes the
    `classifier` params, and its rows `num_classes`. A partial head, an unused tensor
    or a shape mismatch is a UserError naming the tensor.
    """
    model_config = model_config_from_hf(hf_files.read_config(hf_dir, "bert"))
    tensors = _read_tensors(hf_dir)
    prefix = _model_prefix(tensors)
    specs = dict(_BACKBONE_TENSORS)
    if _CLASSIFIER_WEIGHT in tensors:
        model_config["num_classes"] = tensors[_CLASSIFIER_WEIGHT].shape[0]
        specs.update(_CLASSIFIER_TENSORS)
    model = EncoderOnly(**{k: v for k, v in model_config.items() if k != "arch"})
    init = _init_fn(model)
    shapes = {path: leaf.shape for path, leaf in jax.eval_shape(init, rng).items()}

    fresh_paths = []
    for head in _HEAD_TENSORS.values():
        first_name = next(iter(head.values()))[0].format(bert=prefix)
        if first_name in tensors:
            specs.update(head)
        else:
            fresh_paths.extend(head)
    flat = {
        path: _convert_param(tensors, path, spec, shapes[path], prefix, model.num_layers)
        for path, spec in specs.items()
    }
    if tensors:
        raise UserError(f"HF BERT checkpoint has unused tensor(s): {', '.join(sorted(tensors))}")
    if fresh_paths:

        def init_missing(key: jax.Array) -> dict[str, jax.Array]:
            everything = init(key)
            return {path: everything[path] for path in fresh_paths}

        # Only the missing heads leave the jit, so XLA drops the rest of the init.
        fresh = jax.jit(init_missing)(rng)
        flat.update({path: np.asarray(value) for path, value in fresh.items()})
    return model_config, traverse_util.unflatten_dict(flat, sep="/")


def hf_config_from_model(
    model_config: Mapping[str, Any], labels: tuple[str, ...] = ()
) -> dict[str, Any]:
    """`config.model` of an EncoderOnly -> HF BertConfig dict; the inverse of
    `model_config_from_hf`. A UserError names an option HF BERT cannot express.

    HF's attention-probability dropout, which EncoderOnly does not have, is 0.
    """
    if model_config["layer_norm"] != "post":
        raise UserError(
            f"config.model.layer_norm={model_config['layer_norm']!r} has no HF BERT "
            "counterpart (BERT is post-LN); only layer_norm='post' models export"
        )
    if model_config["num_heads"] * model_config["head_dim"] != model_config["d_model"]:
        raise UserError(
            f"config.model.head_dim={model_config['head_dim']} times num_heads="
            f"{model_config['num_heads']} is not d_model={model_config['d_model']}, "
            "which HF BERT requires"
        )
    num_classes = model_config["num_classes"]
    hf_class = "BertForSequenceClassification" if num_classes else "BertForMaskedLM"
    hf_config = {
        "architectures": [hf_class],
        "model_type": "bert",
        "vocab_size": model_config["vocab_size"],
        "hidden_size": model_config["d_model"],
        "num_hidden_layers": model_config["num_layers"],
        "num_attention_heads": model_config["num_heads"],
        "intermediate_size": model_config["d_ff"],
        "max_position_embeddings": model_config["max_len"],
        "type_vocab_size": model_config["type_vocab_size"],
        "hidden_act": _ACTIVATION_NAMES[model_config["activation"]],
        "hidden_dropout_prob": model_config["dropout_rate"],
        "attention_probs_dropout_prob": 0.0,
        "layer_norm_eps": model_config["layer_norm_epsilon"],
        "position_embedding_type": "absolute",
        "dtype": "float32",
    }
    return hf_config | hf_files.label_names(labels, num_classes)


def export_hf_bert(
    model_config: Mapping[str, Any],
    params: Any,
    output_dir: str,
    *,
    labels: tuple[str, ...] = (),
    special_ids: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """EncoderOnly params -> an HF BERT checkpoint in `output_dir` (config.json +
    model.safetensors), through the same tables `load_hf_bert` reads.

    Without a classifier (num_classes 0) it is a BertForMaskedLM plus the pooler
    (which BertModel / AutoModel read and BertForMaskedLM skips with a warning); the
    NSP head is dropped. With one it is a BertForSequenceClassification, exactly its
    tensors: the pooler and the classifier, whose dropout is `dropout_rate` as ours;
    the MLM and NSP heads are dropped. `labels` name the classes (id2label); without
    them HF calls them LABEL_0, ... `special_ids` (the tokenizer's ids by attribute
    name) give config.json its pad_token_id. Returns {"hf_class": ..., "files": [paths]}.
    """
    hf_config = hf_config_from_model(model_config, labels)
    hf_config |= hf_files.token_ids(special_ids, pad_token_id="pad_id")
    model = EncoderOnly(**{k: v for k, v in model_config.items() if k != "arch"})
    abstract = jax.eval_shape(_init_fn(model), jax.random.key(0))
    flat = hf_files.flat_params(params, {path: leaf.shape for path, leaf in abstract.items()})
    head = _CLASSIFIER_TENSORS if model_config["num_classes"] else _HEAD_TENSORS["mlm"]
    specs = _BACKBONE_TENSORS | _HEAD_TENSORS["pooler"] | head
    tensors = hf_files.export_params(flat, specs, bert="bert.")
    files = hf_files.write_checkpoint(output_dir, hf_config, tensors)
    return {"hf_class": hf_config["architectures"][0], "files": files}
