"""HF GPT-2 import and byte-level BPE tokenizer, checked against transformers itself.

The HF model is built with random weights (torch.manual_seed) and saved to a temporary
directory; nothing is downloaded.
"""

import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util
from safetensors.numpy import load_file, save_file
from tokenizers import pre_tokenizers

from t5x_lite.errors import UserError
from t5x_lite.models import build_model
from t5x_lite.models.hf_gpt2 import END_OF_TEXT, GPT2Tokenizer, load_hf_gpt2
from tests.models.helpers import fast_jit

VOCAB, LENGTH = 100, 12
# Unoptimized CPU codegen: compile time, not compute, dominates these tiny models.


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> str:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
    )
    directory = str(tmp_path_factory.mktemp("gpt2"))
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(directory)
    return directory


def random_tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(0, VOCAB, (2, LENGTH))


@pytest.fixture(scope="module")
def hf_logits(hf_dir) -> np.ndarray:
    model = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(random_tokens())).logits.numpy()


@pytest.mark.parametrize("attention_impl", ["dot_product_attention", "einsum"])
def test_logits_match_transformers(hf_dir, hf_logits, attention_impl):
    model_config, params = load_hf_gpt2(hf_dir)
    assert model_config["arch"] == "decoder_only"
    assert model_config["d_ff"] == 128 and model_config["tie_embeddings"]
    model_config["attention_impl"] = attention_impl
    model = build_model(model_config)

    # The imported tree is exactly the one init builds.
    batch = {
        "decoder_input_tokens": jnp.asarray(random_tokens(), jnp.int32),
        "decoder_segment_ids": jnp.ones((2, LENGTH), jnp.int32),
        "decoder_positions": jnp.tile(jnp.arange(LENGTH, dtype=jnp.int32), (2, 1)),
    }
    init = jax.eval_shape(
        lambda: model.init({"params": jax.random.key(0)}, batch, deterministic=True)
    )
    expected = traverse_util.flatten_dict(nn.meta.unbox(init["params"]), sep="/")
    got = traverse_util.flatten_dict(params, sep="/")
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in expected.items()}
    assert all(v.dtype == np.float32 for v in got.values())

    forward = fast_jit(lambda p, b: model.apply({"params": p}, b, deterministic=True))
    logits = np.asarray(forward(params, batch)["logits"])
    error = float(np.max(np.abs(logits - hf_logits)))
    assert error < 1e-4, error


def _resave(src: str, dst: str, edit) -> str:
    shutil.copytree(src, dst)
    path = os.path.join(dst, "model.safetensors")
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)
    return dst


def test_bad_tensors_name_the_tensor(hf_dir, tmp_path):
    name = "transformer.h.1.attn.c_attn.weight"
    missing = _resave(hf_dir, str(tmp_path / "missing"), lambda t: t.pop(name))
    with pytest.raises(UserError, match=f"lacks tensor {name}"):
        load_hf_gpt2(missing)

    def reshape(tensors):
        tensors[name] = tensors[name][:, :64].copy()

    misshaped = _resave(hf_dir, str(tmp_path / "misshaped"), reshape)
    with pytest.raises(UserError, match=rf"{name} has shape \(32, 64\); expected \(32, 96\)"):
        load_hf_gpt2(misshaped)

    def add(tensors):
        tensors["transformer.extra.weight"] = np.zeros(3, np.float32)

    extra = _resave(hf_dir, str(tmp_path / "extra"), add)
    with pytest.raises(UserError, match="unused tensor.*transformer.extra.weight"):
        load_hf_gpt2(extra)


def test_unsupported_config_is_user_error(hf_dir, tmp_path):
    for key, value, message in [
        ("layer_norm_epsilon", 1e-6, "layer_norm_epsilon"),
        ("activation_function", "relu", "activation_function='relu'"),
    ]:
        directory = str(tmp_path / key)
        shutil.copytree(hf_dir, directory)
        path = os.path.join(directory, "config.json")
        with open(path) as f:
            config = json.load(f)
        config[key] = value
        with open(path, "w") as f:
            json.dump(config, f)
        with pytest.raises(UserError, match=message):
            load_hf_gpt2(directory)


def test_tokenizer_matches_transformers(tmp_path):
    # Every byte, a few merges (so that some words are single pieces), and <|endoftext|>.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("Ġw", "o")]
    pieces = alphabet + ["".join(pair) for pair in merges] + [END_OF_TEXT]
    with open(tmp_path / "vocab.json", "w") as f:
        json.dump({piece: i for i, piece in enumerate(pieces)}, f)
    with open(tmp_path / "merges.txt", "w") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))

    ours = GPT2Tokenizer(str(tmp_path))
    theirs = transformers.GPT2Tokenizer.from_pretrained(str(tmp_path))
    assert ours.vocab_size == len(pieces)
    assert ours.bos_id == ours.eos_id == len(pieces) - 1
    for text in ["hello world", "  Héllo,\nwo wo! 😀", f"hello{END_OF_TEXT} wo"]:
        ids = ours.encode(text)
        assert ids.dtype == np.int32
        assert ids.tolist() == theirs.encode(text), text
        if END_OF_TEXT not in text:
            assert ours.decode(ids) == text
    assert ours.encode("hello").tolist() == [pieces.index("hello")]
    assert ours.decode(ours.encode(f"hello{END_OF_TEXT}")) == "hello"
