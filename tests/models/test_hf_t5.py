"""HF T5 import and relative position buckets, checked against transformers itself.

Every HF model here is built with random weights (torch.manual_seed) and saved to a
temporary directory; nothing is downloaded.
"""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from t5x_lite.errors import UserError
from t5x_lite.models import build_model
from t5x_lite.models.hf_t5 import load_hf_t5
from t5x_lite.models.t5_layers import relative_position_bucket
from tests.models.helpers import fast_jit

VOCAB, ENCODER_LENGTH, DECODER_LENGTH, PAD_FROM = 100, 9, 6, 6  # row 1 padded from PAD_FROM
KEY = jax.random.key(0, impl="rbg")
# T5 1.0 (ReLU, tied and scaled head) and T5 1.1 (gated GELU, unscaled head).
VARIANTS = {"t5_1_0": ("relu", True), "t5_1_1": ("gated-gelu", False)}


def hf_config(feed_forward_proj: str, tie_word_embeddings: bool) -> transformers.T5Config:
    return transformers.T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        dropout_rate=0.0,
        feed_forward_proj=feed_forward_proj,
        tie_word_embeddings=tie_word_embeddings,
    )


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, str]:
    dirs = {}
    for seed, (variant, (feed_forward_proj, tie)) in enumerate(VARIANTS.items()):
        torch.manual_seed(seed)
        model = transformers.T5ForConditionalGeneration(hf_config(feed_forward_proj, tie))
        directory = str(tmp_path_factory.mktemp(variant))
        model.eval().save_pretrained(directory)
        dirs[variant] = directory
    return dirs


def random_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    attention_mask = np.ones((2, ENCODER_LENGTH), np.int64)
    attention_mask[1, PAD_FROM:] = 0
    return {
        "input_ids": rng.integers(0, VOCAB, (2, ENCODER_LENGTH)),
        "attention_mask": attention_mask,
        "decoder_input_ids": rng.integers(0, VOCAB, (2, DECODER_LENGTH)),
    }


def hf_logits(hf_dir: str) -> np.ndarray:
    model = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        outputs = model(**{k: torch.tensor(v) for k, v in random_inputs().items()})
    return outputs.logits.numpy()


@functools.cache
def forward_for(config_items: tuple):
    model = build_model(dict(config_items))
    return fast_jit(
        lambda params, batch: model.apply({"params": params}, batch, deterministic=True)
    )


def our_logits(hf_dir: str, **overrides) -> np.ndarray:
    """HF's attention mask becomes encoder segment 1 (real) / 0 (padding)."""
    model_config, params = load_hf_t5(hf_dir, rng=KEY)
    inputs = random_inputs()
    batch = {
        "encoder_input_tokens": inputs["input_ids"],
        "encoder_segment_ids": inputs["attention_mask"],
        "encoder_positions": np.tile(np.arange(ENCODER_LENGTH), (2, 1)),
        "decoder_input_tokens": inputs["decoder_input_ids"],
        "decoder_segment_ids": np.ones((2, DECODER_LENGTH)),
        "decoder_positions": np.tile(np.arange(DECODER_LENGTH), (2, 1)),
    }
    batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
    forward = forward_for(tuple(sorted((model_config | overrides).items())))
    return np.asarray(forward(params, batch)["logits"])


@pytest.mark.parametrize(
    "variant, attention_impl", [("t5_1_0", "dot_product_attention"), ("t5_1_1", "einsum")]
)
def test_import_matches_hf_logits(hf_dirs, variant, attention_impl):
    """Encoder padding in one row; every decoder position compared."""
    ours = our_logits(hf_dirs[variant], attention_impl=attention_impl)
    assert np.max(np.abs(ours - hf_logits(hf_dirs[variant]))) < 1e-4


def test_config_reflects_mlp_and_head(hf_dirs):
    config_1_0, params_1_0 = load_hf_t5(hf_dirs["t5_1_0"], rng=KEY)
    config_1_1, params_1_1 = load_hf_t5(hf_dirs["t5_1_1"], rng=KEY)
    assert (config_1_0["mlp"], config_1_0["tie_embeddings"]) == ("relu", True)
    assert (config_1_1["mlp"], config_1_1["tie_embeddings"]) == ("gated_gelu", False)
    assert "logits_kernel" not in params_1_0["decoder"]
    assert params_1_1["decoder"]["logits_kernel"].shape == (32, VOCAB)
    assert params_1_0["encoder"]["relpos"]["rel_embedding"].shape == (8, 4)
    assert params_1_0["decoder"]["layers"]["cross_attention"]["query"]["kernel"].shape == (
        2,
        32,
        4,
        8,
    )


def edited_checkpoint(source: str, target: str, edit) -> str:
    shutil.copytree(source, target)
    tensors = load_file(os.path.join(source, "model.safetensors"))
    edit(tensors)
    save_file(tensors, os.path.join(target, "model.safetensors"))
    return target


def test_separate_lm_head_becomes_logits_kernel(hf_dirs, tmp_path):
    """Checkpoints saved before transformers 5 hold T5 1.1's own lm_head.weight."""
    head = np.random.default_rng(1).normal(size=(VOCAB, 32)).astype(np.float32)
    target = edited_checkpoint(
        hf_dirs["t5_1_1"], str(tmp_path / "old"), lambda t: t.update({"lm_head.weight": head})
    )
    _, params = load_hf_t5(target, rng=KEY)
    np.testing.assert_array_equal(params["decoder"]["logits_kernel"], head.T)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.pop("encoder.block.1.layer.1.DenseReluDense.wo.weight"), "lacks tensor"),
        (lambda t: t.update({"extra.weight": np.zeros(3, np.float32)}), "unused tensor"),
        (
            lambda t: t.update({"encoder.final_layer_norm.weight": np.ones(31, np.float32)}),
            "has shape",
        ),
    ],
)
def test_bad_checkpoints_are_one_line_user_errors(hf_dirs, tmp_path, edit, message):
    target = edited_checkpoint(hf_dirs["t5_1_0"], str(tmp_path / "bad"), edit)
    with pytest.raises(UserError, match=message) as raised:
        load_hf_t5(target, rng=KEY)
    assert "\n" not in str(raised.value)


def test_unknown_feed_forward_proj_is_a_user_error(hf_dirs, tmp_path):
    target = str(tmp_path / "silu")
    shutil.copytree(hf_dirs["t5_1_0"], target)
    path = os.path.join(target, "config.json")
    with open(path) as f:
        config = json.load(f)
    with open(path, "w") as f:
        json.dump(config | {"feed_forward_proj": "gated-silu"}, f)
    with pytest.raises(UserError, match="feed_forward_proj"):
        load_hf_t5(target, rng=KEY)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets, max_distance", [(8, 20), (32, 128)])
def test_relative_position_buckets_match_transformers(bidirectional, num_buckets, max_distance):
    relative = np.arange(-300, 301)
    ours = relative_position_bucket(
        jnp.asarray(relative),
        bidirectional=bidirectional,
        num_buckets=num_buckets,
        max_distance=max_distance,
    )
    theirs = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
        torch.tensor(relative),
        bidirectional=bidirectional,
        num_buckets=num_buckets,
        max_distance=max_distance,
    )
    np.testing.assert_array_equal(np.asarray(ours), theirs.numpy())
