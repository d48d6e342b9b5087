"""Import a Hugging Face T5ForConditionalGeneration (config.json + model.safetensors) into
EncoderDecoder: T5 1.0 (ReLU MLP, head tied to the embedding and scaled by d_model**-0.5)
and T5 1.1 (gated-GELU MLP, unscaled head); and export EncoderDecoder params as one
(`export_hf_t5`). Only numpy and safetensors touch the checkpoint; torch is never
imported.

Layout changes: torch Linear weights [out, in] become kernels [in, out], attention
projections split into (heads, kv); per-block tensors are stacked on a leading 'layers'
axis as `nn.scan` stores them. HF keeps the relative position table in block 0 of each
stack and reuses its bias in every block, which is exactly our one table per stack.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from t5x_lite import fileio, hf_tokenizer
from t5x_lite.errors import UserError
from t5x_lite.models import hf_files
from t5x_lite.models.encoder_decoder import EncoderDecoder

_HF_MLPS = {"relu": "relu", "gated-gelu": "gated_gelu"}
_HF_MLP_NAMES = {ours: hf for hf, ours in _HF_MLPS.items()}

# Our path suffix under 'encoder/layers/' or 'decoder/layers/' -> (HF name under
# '<stack>.block.{i}.layer.', layout). Layouts as in hf_bert: "linear" torch [out, in]
# -> [in, *out_dims]; "linear_from_heads" [out, heads * kv] -> [heads, kv, out];
# "vector" copied (reshaped); "table" copied.
_ATTENTION = {"query": "q", "key": "k", "value": "v", "out": "o"}


def _attention_specs(ours: str, theirs: str, sublayer: int) -> dict[str, tuple[str, str]]:
    specs = {
        f"{ours}/{name}/kernel": (
            f"{sublayer}.{theirs}.{hf}.weight",
            "linear_from_heads" if name == "out" else "linear",
        )
        for name, hf in _ATTENTION.items()
    }
    specs[f"{ours}_norm/scale"] = (f"{sublayer}.layer_norm.weight", "vector")
    return specs


def _mlp_specs(mlp: str, sublayer: int) -> dict[str, tuple[str, str]]:
    inputs = ["wi"] if mlp == "relu" else ["wi_0", "wi_1"]
    specs = {
        f"mlp/{name}/kernel": (f"{sublayer}.DenseReluDense.{name}.weight", "linear")
        for name in inputs + ["wo"]
    }
    specs["mlp_norm/scale"] = (f"{sublayer}.layer_norm.weight", "vector")
    return specs


def _param_specs(mlp: str) -> dict[str, tuple[str, str]]:
    """Our full param path -> (HF tensor name, with {i} for stacked layers, layout)."""
    specs = {"token_embed/embedding": ("shared.weight", "table")}
    per_stack = {
        "encoder": _attention_specs("attention", "SelfAttention", 0) | _mlp_specs(mlp, 1),
        "decoder": _attention_specs("attention", "SelfAttention", 0)
        | _attention_specs("cross_attention", "EncDecAttention", 1)
        | _mlp_specs(mlp, 2),
    }
    for stack_name, layer_specs in per_stack.items():
        for path, (name, layout) in layer_specs.items():
            specs[f"{stack_name}/layers/{path}"] = (
                f"{stack_name}.block.{{i}}.layer.{name}",
                layout,
            )
        specs[f"{stack_name}/final_norm/scale"] = (
            f"{stack_name}.final_layer_norm.weight",
            "vector",
        )
        specs[f"{stack_name}/relpos/rel_embedding"] = (
            f"{stack_name}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            "table",
        )
    return specs


def scales_head(hf_config: Mapping[str, Any]) -> bool:
    """Whether HF multiplies the decoder output by d_model**-0.5 before the head.

    transformers >= 5 saves `scale_decoder_outputs`; older configs say it through
    `tie_word_embeddings` (absent means True, T5 1.0).
    """
    if "scale_decoder_outputs" in hf_config:
        return bool(hf_config["scale_decoder_outputs"])
    return hf_config.get("tie_word_embeddings", True) is not False


def model_config_from_hf(hf_config: Mapping[str, Any], *, tie_embeddings: bool) -> dict[str, Any]:
    """HF T5Config dict -> `config.model` dict for EncoderDecoder (float32).

    HF's dropout on attention probabilities has no counterpart here; `dropout_rate` is
    applied to the embeddings, every residual branch, MLP hidden units and stack outputs.
    """
    required = [
        "vocab_size",
        "d_model",
        "d_kv",
        "d_ff",
        "num_layers",
        "num_heads",
        "relative_attention_num_buckets",
        "dropout_rate",
        "layer_norm_epsilon",
        "feed_forward_proj",
    ]
    missing = [key for key in required if key not in hf_config]
    if missing:
        raise UserError(f"HF T5 config.json lacks {', '.join(missing)}")
    if hf_config["feed_forward_proj"] not in _HF_MLPS:
        raise UserError(
            f"HF T5 feed_forward_proj={hf_config['feed_forward_proj']!r} is not one of "
            f"{', '.join(_HF_MLPS)}"
        )
    return {
        "arch": "encoder_decoder",
        "vocab_size": hf_config["vocab_size"],
        "d_model": hf_config["d_model"],
        "num_encoder_layers": hf_config["num_layers"],
        # HF writes null for "same as the encoder".
        "num_decoder_layers": hf_config.get("num_decoder_layers") or hf_config["num_layers"],
        "num_heads": hf_config["num_heads"],
        "head_dim": hf_config["d_kv"],
        "d_ff": hf_config["d_ff"],
        "relative_attention_num_buckets": hf_config["relative_attention_num_buckets"],
        # Configs saved before HF made it a key (the original t5-* ones) used 128.
        "relative_attention_max_distance": hf_config.get("relative_attention_max_distance", 128),
        "mlp": _HF_MLPS[hf_config["feed_forward_proj"]],
        "tie_embeddings": tie_embeddings,
        "dropout_rate": hf_config["dropout_rate"],
        "layer_norm_epsilon": hf_config["layer_norm_epsilon"],
        "dtype": "float32",
        "remat_policy": "none",
        "attention_impl": "auto",
    }


def _read_tensors(hf_dir: str) -> dict[str, np.ndarray]:
    """model.safetensors -> {HF name: float32 array}, minus copies tied to shared.weight."""
    tensors = hf_files.read_tensors(hf_dir)
    # An unused table some old checkpoints carry; HF ignores it on load too.
    tensors.pop("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight", None)
    for name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        if name in tensors:
            copy = tensors.pop(name)
            if "shared.weight" not in tensors or not np.array_equal(copy, tensors["shared.weight"]):
                raise UserError(f"{hf_dir}: {name} is not tied to shared.weight")
    return tensors


def _head_kernel(tensors, hf_config, d_model: int) -> np.ndarray | None:
    """The untied logits kernel [embed, vocab], or None for a T5 1.0 tied, scaled head.

    A scaled separate head folds the scale into the kernel; an unscaled shared head
    (how transformers >= 5 saves T5 1.1 configs) becomes a copy of the embedding.
    """
    scale = d_model**-0.5 if scales_head(hf_config) else 1.0
    head = tensors.pop("lm_head.weight", None)
    if head is not None and np.array_equal(head, tensors.get("shared.weight")):
        head = None
    if head is None:
        if scale != 1.0:
            return None
        head = _take(tensors, "shared.weight", keep=True)
    return (head.T * np.float32(scale)).astype(np.float32)


def _take(tensors: dict[str, np.ndarray], name: str, keep: bool = False) -> np.ndarray:
    if name not in tensors:
        raise UserError(f"HF T5 checkpoint lacks tensor {name}")
    return tensors[name] if keep else tensors.pop(name)


def _convert_param(tensors, template: str, layout: str, shape, num_layers: int) -> np.ndarray:
    """Pops the HF tensor(s) behind one param (every layer's, for '{i}' templates)."""
    if "{i}" not in template:
        return hf_files.convert_tensor(template, _take(tensors, template), layout, shape)
    per_layer = []
    for i in range(num_layers):
        name = template.format(i=i)
        per_layer.append(hf_files.convert_tensor(name, _take(tensors, name), layout, shape[1:]))
    return np.stack(per_layer)  # [layers, ...]


def _param_shapes(model: EncoderDecoder, rng: jax.Array) -> dict[str, tuple[int, ...]]:
    batch = {
        name: jnp.zeros((1, 1), jnp.int32)
        for name in (
            "encoder_input_tokens",
            "encoder_segment_ids",
            "encoder_positions",
            "decoder_input_tokens",
            "decoder_segment_ids",
            "decoder_positions",
        )
    }
    variables = jax.eval_shape(lambda key: model.init(key, batch, deterministic=True), rng)
    flat = traverse_util.flatten_dict(nn.meta.unbox(variables["params"]), sep="/")
    return {path: leaf.shape for path, leaf in flat.items()}


def load_hf_t5(hf_dir: str, *, rng: jax.Array) -> tuple[dict[str, Any], dict[str, Any]]:
    """A saved HF T5ForConditionalGeneration -> (`config.model` dict, params).

    `params` is exactly EncoderDecoder's `init(...)["params"]` tree, unboxed, as float32
    numpy arrays. Every tensor must be present and used; a missing or unused tensor or a
    shape mismatch is a UserError naming it. `rng` only feeds the shape computation.
    """
    hf_config = hf_files.read_config(hf_dir, "t5")
    tensors = _read_tensors(hf_dir)
    model_config = model_config_from_hf(hf_config, tie_embeddings=True)
    head = _head_kernel(tensors, hf_config, model_config["d_model"])
    model_config["tie_embeddings"] = head is None
    model = EncoderDecoder(**{k: v for k, v in model_config.items() if k != "arch"})
    shapes = _param_shapes(model, rng)
    layer_counts = {"encoder": model.num_encoder_layers, "decoder": model.num_decoder_layers}
    flat = {
        path: _convert_param(tensors, template, layout, shapes[path], layer_counts.get(path[:7], 0))
        for path, (template, layout) in _param_specs(model.mlp).items()
    }
    if head is not None:
        flat["decoder/logits_kernel"] = hf_files.convert_tensor(
            "lm_head.weight", head.T, "linear", shapes["decoder/logits_kernel"]
        )
    if tensors:
        raise UserError(f"HF T5 checkpoint has unused tensor(s): {', '.join(sorted(tensors))}")
    if set(flat) != set(shapes):
        raise UserError(f"HF T5 import does not cover {', '.join(sorted(set(shapes) - set(flat)))}")
    return model_config, traverse_util.unflatten_dict(flat, sep="/")


def hf_config_from_model(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """`config.model` of an EncoderDecoder -> HF T5Config dict; the inverse of
    `model_config_from_hf`. (HF T5 also applies `dropout_rate` to attention
    probabilities in training, which EncoderDecoder does not; no key turns it off.)"""
    tied = model_config["tie_embeddings"]
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "is_encoder_decoder": True,
        "vocab_size": model_config["vocab_size"],
        "d_model": model_config["d_model"],
        "d_kv": model_config["head_dim"],
        "d_ff": model_config["d_ff"],
        "num_layers": model_config["num_encoder_layers"],
        "num_decoder_layers": model_config["num_decoder_layers"],
        "num_heads": model_config["num_heads"],
        "relative_attention_num_buckets": model_config["relative_attention_num_buckets"],
        "relative_attention_max_distance": model_config["relative_attention_max_distance"],
        "feed_forward_proj": _HF_MLP_NAMES[model_config["mlp"]],
        "dropout_rate": model_config["dropout_rate"],
        "layer_norm_epsilon": model_config["layer_norm_epsilon"],
        # T5 1.0's head is the embedding, scaled; T5 1.1's its own, unscaled.
        # transformers < 5 reads both from tie_word_embeddings; >= 5 reads the scale
        # from scale_decoder_outputs and keeps lm_head.weight apart from shared.weight
        # when the two differ.
        "tie_word_embeddings": tied,
        "scale_decoder_outputs": tied,
        "dtype": "float32",
    }


def export_hf_t5(
    model_config: Mapping[str, Any],
    params: Any,
    output_dir: str,
    *,
    labels: tuple[str, ...] = (),
    special_ids: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """EncoderDecoder params -> a T5ForConditionalGeneration checkpoint in `output_dir`
    (config.json + model.safetensors), through the table `load_hf_t5` reads; an untied
    head is lm_head.weight. Every EncoderDecoder option has an HF T5 counterpart.

    `labels` must be empty: T5 answers with label words, it has no classifier.
    `special_ids` (the tokenizer's ids by attribute name) give config.json's pad and
    EOS ids and the decoder start, which is our BOS. Returns {"hf_class": ...,
    "files": [paths]}.
    """
    if labels:
        raise UserError(
            "labels name a classifier's classes, but T5 answers with label words; "
            "export an encoder_decoder model without labels"
        )
    hf_config = hf_config_from_model(model_config)
    hf_config |= hf_files.token_ids(
        special_ids,
        pad_token_id="pad_id",
        eos_token_id="eos_id",
        decoder_start_token_id="bos_id",
    )
    model = EncoderDecoder(**{k: v for k, v in model_config.items() if k != "arch"})
    flat = hf_files.flat_params(params, _param_shapes(model, jax.random.key(0)))
    tensors = hf_files.export_params(flat, _param_specs(model.mlp))
    if not model.tie_embeddings:
        tensors["lm_head.weight"] = hf_files.export_tensor(flat["decoder/logits_kernel"], "linear")
    files = hf_files.write_checkpoint(output_dir, hf_config, tensors)
    return {"hf_class": "T5ForConditionalGeneration", "files": files}


SENTINEL_PATTERN = re.compile(r"<extra_id_(\d+)>")


class T5Tokenizer:
    """T5's sentencepiece vocabulary (`spiece.model` in an HF T5 directory) behind the
    interface of `tokenizer.Tokenizer`.

    Ids are T5's: pad 0, EOS 1, UNK 2, the sentencepiece pieces, then `extra_ids`
    sentinels counted down from the top (<extra_id_0> is the last id), as HF's
    T5Tokenizer numbers them. T5 has no BOS: its decoder starts from pad, so `bos_id`
    (the decoder start everywhere in t5x_lite) is 0. "<extra_id_N>" in text is the
    sentinel, and text between sentinels is encoded on its own, as HF does.
    """

    def __init__(self, hf_dir: str, extra_ids: int = 100):
        import sentencepiece as spm  # only importers of HF T5 need it here

        path = fileio.join(hf_dir, "spiece.model")
        if not fileio.isfile(path):
            raise UserError(f"{path} does not exist; not an HF T5 tokenizer directory")
        self.hf_dir = hf_dir
        self.files = hf_tokenizer.tokenizer_files(hf_dir)  # what save_pretrained copies
        self._sp = spm.SentencePieceProcessor(model_proto=fileio.read_bytes(path))
        expected = {0: "<pad>", 1: "</s>", 2: "<unk>"}
        found = {i: self._sp.id_to_piece(i) for i in expected}
        if found != expected:
            raise UserError(f"{path} has special pieces {found}; T5 needs {expected}")
        self.num_pieces = self._sp.get_piece_size()
        self.extra_ids = extra_ids

    pad_id = property(lambda self: 0)
    eos_id = property(lambda self: 1)
    unk_id = property(lambda self: 2)
    bos_id = property(lambda self: 0)  # the decoder start; see the class docstring

    @property
    def vocab_size(self) -> int:
        return self.num_pieces + self.extra_ids

    def save_pretrained(self, directory: str) -> list[str]:
        """Copies the tokenizer files of `hf_dir` (`files`) into `directory`, where this
        class and `AutoTokenizer` load them as from `hf_dir`; returns their paths."""
        return hf_tokenizer.copy_files(self.hf_dir, self.files, directory)

    def sentinel_id(self, i: int) -> int:
        if not 0 <= i < self.extra_ids:
            raise ValueError(f"sentinel index {i} is outside [0, {self.extra_ids})")
        return self.vocab_size - 1 - i

    def encode(self, text: str) -> np.ndarray:
        """Text -> token ids [num_tokens] int32, without EOS."""
        ids: list[int] = []
        parts = SENTINEL_PATTERN.split(text)  # text, index, text, index, ..., text
        for i, part in enumerate(parts):
            if i % 2:
                ids.append(self.sentinel_id(int(part)))
            elif part:
                ids.extend(self._sp.encode(part))
        return np.asarray(ids, dtype=np.int32)

    def decode(self, ids) -> str:
        """Ids -> text; pad and EOS vanish, sentinels print as "<extra_id_N>".

        As in HF, a word after a sentinel keeps its leading space. Unknown pieces print
        as sentencepiece's " ⁇ " (HF prints "<unk>").
        """
        flat = np.asarray(ids, dtype=np.int64).reshape(-1).tolist()
        parts: list[str] = []
        run: list[int] = []
        for token in flat + [None]:  # None flushes the last run
            if token is not None and token < self.num_pieces:
                if token not in (self.pad_id, self.eos_id):
                    run.append(token)
                continue
            if run:
                text = self._sp.decode(run)
                after_sentinel = bool(parts)
                if after_sentinel and self._sp.id_to_piece(run[0]).startswith("\u2581"):
                    text = " " + text
                parts.append(text)
                run = []
            if token is not None:
                parts.append(f"<extra_id_{self.vocab_size - 1 - token}>")
        return "".join(parts)
